//! Vault provider against `tests/fixtures/vault_server.py`, a stand-in that follows Vault's
//! documented KV v1/v2, mount preflight, login and error wire shapes (no Vault binary here).

use serde_json::json;

use crate::util::{fixture, run, start_script, Sandbox, Service};

fn vault(sb: &Sandbox, extra: serde_json::Value) -> Service {
    let mut cfg = json!({
        "tokens": {
            "root-token": ["*"],
            "limited-token": ["secret/data/prod/*"],
            "approle-token": ["*"], "jwt-token": ["*"], "k8s-token": ["*"]
        },
        "logins": {
            "approle": {"role_id": "role-1", "secret_id": "sid-1", "token": "approle-token"},
            "jwt": {"role": "agent", "jwt": "header.payload.sig", "token": "jwt-token"},
            "kubernetes": {"role": "keyzero", "jwt": "k8s.sa.jwt", "token": "k8s-token"}
        },
        "mounts": {
            "secret/": {"version": 2, "data": {
                "prod/github": [{"token": "ghp_old_v1"}, {"token": "ghp_current_v2"}],
                "prod/db": [{"username": "app", "password": "db-pw-9f8e"}],
                "prod/deleted": [{"x": "1"}, null],
                "staging/one": [{"only": "single-key-value"}]
            }},
            "kv1/": {"version": 1, "data": {"app/db": {"user": "legacy", "password": "kv1-pw-7d6c"}}}
        }
    });
    if let (Some(base), Some(more)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            base.insert(k.clone(), v.clone());
        }
    }
    let path = sb.write("vault.json", &cfg.to_string());
    start_script("vault_server.py", &[&path])
}

fn print_vars(names: &[&str]) -> Vec<String> {
    let body: Vec<String> = names.iter().map(|n| format!("{n}=${n}")).collect();
    vec![
        "run".into(),
        "--no-mask".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        format!("echo \"{}\"", body.join(" ")),
    ]
}

#[test]
fn kv2_ref_shapes_versions_and_kv1() {
    let sb = Sandbox::new();
    let v = vault(&sb, json!({}));
    sb.config(&format!(
        r#"
[secrets]
GITHUB_TOKEN = {{ provider = "vault", ref = "secret/data/prod/github/token" }}
SHORT = "vault://secret/data/prod/github#token"
CLI_STYLE = "vault://secret/prod/github#token"
OLD = {{ provider = "vault", ref = "secret/data/prod/github", key = "token", version = 1 }}
SINGLE = "vault://secret/data/staging/one"
LEGACY = "vault://kv1/app/db#password"
LEGACY_PATH = {{ provider = "vault", ref = "kv1/app/db/user" }}
[providers.vault]
address = "{}"
"#,
        v.url()
    ));
    let (code, out, err) = run(sb
        .kz()
        .env("VAULT_TOKEN", "root-token")
        .env("PATH_EXTRA", "1")
        .args(print_vars(&[
            "GITHUB_TOKEN",
            "SHORT",
            "CLI_STYLE",
            "OLD",
            "SINGLE",
            "LEGACY",
            "LEGACY_PATH",
        ])));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "GITHUB_TOKEN=ghp_current_v2 SHORT=ghp_current_v2 CLI_STYLE=ghp_current_v2 OLD=ghp_old_v1 \
         SINGLE=single-key-value LEGACY=kv1-pw-7d6c LEGACY_PATH=legacy"
    );
    // The secret at secret/data/prod/github is read once although three variables need it.
    let stats = v.get_json("/__stats");
    assert!(stats["reads"].as_u64().unwrap() <= 6, "{stats}");
}

#[test]
fn errors_name_variable_ref_and_status_never_values() {
    let sb = Sandbox::new();
    let v = vault(&sb, json!({}));
    sb.config(&format!(
        r#"
[secrets]
DENIED = "vault://kv1/app/db#password"
MISSING = {{ provider = "vault", ref = "secret/data/prod/nothing/here" }}
SEVERAL = {{ provider = "vault", ref = "secret/data/prod/db" }}
NOKEY = "vault://secret/data/prod/db#nope"
DELETED = "vault://secret/data/prod/deleted#x"
OK = "vault://secret/data/prod/github#token"
[providers.vault]
address = "{}"
"#,
        v.url()
    ));
    let (code, _, err) = run(sb
        .kz()
        .env("VAULT_TOKEN", "limited-token")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    for want in [
        "kz: DENIED: vault: kv1/app/db#password: permission denied (403)",
        "kz: MISSING: vault: secret/data/prod/nothing/here: not found (404)",
        "kz: SEVERAL: vault: secret/data/prod/db: secret has several keys, choose one with #key or key = (keys: password, username)",
        "kz: NOKEY: vault: secret/data/prod/db#nope: key \"nope\" not found (keys: password, username)",
        "kz: DELETED: vault: secret/data/prod/deleted#x: not found (404)",
    ] {
        assert!(err.lines().any(|l| l == want), "missing {want:?} in\n{err}");
    }
    assert!(!err.contains("OK:"), "{err}");
    for value in ["db-pw-9f8e", "kv1-pw-7d6c", "ghp_"] {
        assert!(!err.contains(value), "value leaked: {err}");
    }
    let (code, _, err) = run(sb.kz().env("VAULT_TOKEN", "bogus").args(["check"]));
    assert_eq!(code, 125);
    assert!(err.contains("failed to resolve"));
}

#[test]
fn token_sources_and_login_methods() {
    let sb = Sandbox::new();
    let v = vault(&sb, json!({}));
    let base = format!("[secrets]\nT = \"vault://secret/data/prod/github#token\"\n[providers.vault]\naddress = \"{}\"\n", v.url());
    // ~/.vault-token
    std::fs::write(sb.home().join(".vault-token"), "root-token\n").unwrap();
    sb.config(&base);
    let (code, out, err) = run(sb.kz().args(print_vars(&["T"])));
    assert_eq!((code, out.trim()), (0, "T=ghp_current_v2"), "{err}");
    std::fs::remove_file(sb.home().join(".vault-token")).unwrap();
    let (code, _, err) = run(sb.kz().args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("no vault token (set VAULT_TOKEN, write ~/.vault-token"),
        "{err}"
    );

    // AppRole with the secret id from an env var; the agent never sees it.
    sb.config(&format!(
        "{base}auth = {{ method = \"approle\", role_id = \"role-1\", secret_id_env = \"SID\" }}\n"
    ));
    let (code, out, err) = run(sb.kz().env("SID", "sid-1").args(print_vars(&["T"])));
    assert_eq!((code, out.trim()), (0, "T=ghp_current_v2"), "{err}");
    let (code, _, err) = run(sb.kz().env("SID", "wrong").args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains(
            "login at auth/approle/login failed: vault error (400): invalid role or secret id"
        ),
        "{err}"
    );

    // JWT from a file, Kubernetes from the service-account token file.
    sb.write("agent.jwt", "header.payload.sig\n");
    sb.config(&format!(
        "{base}auth = {{ method = \"jwt\", role = \"agent\", jwt_file = \"agent.jwt\" }}\n"
    ));
    let (code, out, err) = run(sb.kz().args(print_vars(&["T"])));
    assert_eq!((code, out.trim()), (0, "T=ghp_current_v2"), "{err}");
    sb.write("sa/token", "k8s.sa.jwt");
    sb.config(&format!(
        "{base}auth = {{ method = \"kubernetes\", role = \"keyzero\", jwt_file = \"sa/token\" }}\n"
    ));
    let (code, out, err) = run(sb.kz().args(print_vars(&["T"])));
    assert_eq!((code, out.trim()), (0, "T=ghp_current_v2"), "{err}");
    assert_eq!(v.get_json("/__stats")["logins"], 3);
}

#[test]
fn vault_token_is_not_inherited_by_the_child() {
    let sb = Sandbox::new();
    let v = vault(&sb, json!({}));
    sb.config(&format!("[secrets]\nT = \"vault://secret/data/prod/github#token\"\n[providers.vault]\naddress = \"{}\"\n", v.url()));
    let (code, out, _) = run(sb.kz().env("VAULT_TOKEN", "root-token").args([
        "run",
        "--no-mask",
        "--",
        "sh",
        "-c",
        "echo \"[$VAULT_TOKEN][$T]\"",
    ]));
    assert_eq!((code, out.trim()), (0, "[][ghp_current_v2]"));
}

#[test]
fn namespace_header_and_env_address() {
    let sb = Sandbox::new();
    let v = vault(&sb, json!({"namespace": "team-a"}));
    sb.config("[secrets]\nT = \"vault://secret/data/prod/github#token\"\n");
    let (code, out, err) = run(sb
        .kz()
        .env("VAULT_ADDR", v.url())
        .env("VAULT_TOKEN", "root-token")
        .env("VAULT_NAMESPACE", "team-a")
        .args(print_vars(&["T"])));
    assert_eq!((code, out.trim()), (0, "T=ghp_current_v2"), "{err}");
    let (code, _, err) = run(sb
        .kz()
        .env("VAULT_ADDR", v.url())
        .env("VAULT_TOKEN", "root-token")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(err.contains("permission denied (403)"), "{err}");
}

#[test]
fn tls_with_vault_cacert() {
    let sb = Sandbox::new();
    let tls = json!({"tls": {"cert": fixture("tls/server.pem"), "key": fixture("tls/server.key")}});
    let v = vault(&sb, tls);
    let url = format!("https://localhost:{}", v.port);
    sb.config(&format!("[secrets]\nT = \"vault://secret/data/prod/github#token\"\n[providers.vault]\naddress = \"{url}\"\n"));
    let (code, out, err) = run(sb
        .kz()
        .env("VAULT_TOKEN", "root-token")
        .env("VAULT_CACERT", fixture("tls/ca.pem"))
        .args(print_vars(&["T"])));
    assert_eq!((code, out.trim()), (0, "T=ghp_current_v2"), "{err}");
    let (code, _, err) = run(sb
        .kz()
        .env("VAULT_TOKEN", "root-token")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("certificate"),
        "an unknown CA must fail verification: {err}"
    );
}

#[test]
fn slow_backend_hits_the_configured_timeout() {
    let sb = Sandbox::new();
    let v = vault(&sb, json!({"delay_ms": 3000}));
    sb.config(&format!(
        "[secrets]\nT = \"vault://secret/data/prod/github#token\"\n[providers.vault]\naddress = \"{}\"\nkv_version = 2\ntimeout = \"300ms\"\n",
        v.url()
    ));
    let start = std::time::Instant::now();
    let (code, _, err) = run(sb
        .kz()
        .env("VAULT_TOKEN", "root-token")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("kz: T: vault: secret/data/prod/github#token: timed out after 300ms"),
        "{err}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
}
