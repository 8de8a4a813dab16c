//! Token shapes and lifetimes through `kz run --blind` with curl and a local TLS upstream:
//! every well-known prefix is kept (so SDKs checking the shape accept the token) and swapped;
//! `[blind] tokens = "stable"` gives the same token on the next run; a per-run token from an
//! earlier run is refused with a message saying so.

use crate::upstream;
use crate::util::{fixture, run, Sandbox};

fn project(sb: &Sandbox, secrets: &str, blind: &str) {
    sb.config(&format!(
        "[secrets]\n{secrets}\n[network]\nhosts = {{ \"api.kz.test\" = \"127.0.0.1\" }}\nupstream_ca = {ca:?}\n{blind}",
        ca = fixture("tls/ca.pem").to_str().unwrap(),
    ));
}

fn kz_sh(sb: &Sandbox, port: u16, env: &[(String, String)], script: &str) -> (i32, String, String) {
    let mut c = sb.kz();
    c.env("UP", format!("https://api.kz.test:{port}"));
    for (k, v) in env {
        c.env(k, v);
    }
    run(c.args(["run", "--blind", "--no-mask", "--", "sh", "-c", script]))
}

#[test]
fn every_known_prefix_is_kept_and_swapped() {
    let sb = Sandbox::new();
    let up = upstream::start();
    let port = up.port;
    let mut secrets = String::new();
    let mut env = Vec::new();
    let mut script = String::new();
    for (i, prefix) in kz::api::KNOWN_PREFIXES.iter().enumerate() {
        let value = format!("{prefix}REAL{i}value0123456789abcdefghijklmnop");
        secrets.push_str(&format!(
            "S{i} = {{ provider = \"env\", ref = \"REAL_{i}\", hosts = [\"api.kz.test:{port}\"] }}\n"
        ));
        env.push((format!("REAL_{i}"), value));
        script.push_str(&format!(
            "echo \"S{i}=$S{i}\"; curl -sS --fail -o /dev/null \"$UP/echo\" -H \"Authorization: Bearer $S{i}\" || exit 3\n"
        ));
    }
    project(&sb, &secrets, "");
    let (code, out, err) = kz_sh(&sb, port, &env, &script);
    assert_eq!(code, 0, "{out}{err}");
    let seen = up.requests();
    for (i, prefix) in kz::api::KNOWN_PREFIXES.iter().enumerate() {
        let token = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("S{i}=")))
            .unwrap();
        assert!(token.starts_with(prefix), "{prefix}: {token}");
        assert!(kz::api::is_token(token), "{token}");
        assert_eq!(
            token.len(),
            env[i].1.len(),
            "same length as the value: {token}"
        );
        let real = &env[i].1;
        assert!(
            seen.iter()
                .any(|r| r.header("authorization") == Some(format!("Bearer {real}").as_str())),
            "{prefix}: the upstream got the value"
        );
        assert!(!out.contains(real.as_str()));
    }
}

#[test]
fn stable_tokens_survive_a_rerun_and_earlier_per_run_tokens_are_refused() {
    let sb = Sandbox::new();
    let up = upstream::start();
    let port = up.port;
    let secret = format!(
        "GH = {{ provider = \"env\", ref = \"REAL_GH\", hosts = [\"api.kz.test:{port}\"] }}"
    );
    let env = vec![(
        "REAL_GH".to_string(),
        "ghp_REALstable0123456789abcdefghijklmnop".to_string(),
    )];
    let token_of = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("GH="))
            .unwrap()
            .to_string()
    };
    // Per run (the default): a new token each run; the old one is refused, with the reason.
    project(&sb, &secret, "");
    let (code, out, err) = kz_sh(&sb, port, &env, "echo \"GH=$GH\"");
    assert_eq!(code, 0, "{err}");
    let first = token_of(&out);
    sb.write("remote.txt", &first);
    let (code, out, err) = kz_sh(
        &sb,
        port,
        &env,
        "echo \"GH=$GH\"; curl -sS -w '\\n%{http_code}\\n' \"$UP/echo\" -H \"Authorization: Bearer $(cat remote.txt)\"",
    );
    assert_eq!(code, 0, "{err}");
    assert_ne!(token_of(&out), first, "per-run tokens change");
    assert!(out.contains("\n403\n"), "{out}");
    assert!(
        out.contains("token from an earlier kz run") && out.contains("tokens = \"stable\""),
        "the refusal says why and what to do: {out}"
    );
    assert!(
        up.requests().iter().all(|r| !r.all().contains(&first)),
        "an earlier token is not forwarded"
    );
    // Stable: the same token on every run, and it works on the next one.
    project(&sb, &secret, "[blind]\ntokens = \"stable\"\n");
    let (code, out, err) = kz_sh(&sb, port, &env, "echo \"GH=$GH\"");
    assert_eq!(code, 0, "{err}");
    let stable = token_of(&out);
    assert!(stable.starts_with("ghp_") && kz::api::is_token(&stable));
    sb.write("remote.txt", &stable);
    let (code, out, err) = kz_sh(
        &sb,
        port,
        &env,
        "echo \"GH=$GH\"; curl -sS --fail -o /dev/null -w '%{http_code}\\n' \"$UP/echo\" -H \"Authorization: Bearer $(cat remote.txt)\"",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(token_of(&out), stable, "the same token on the next run");
    assert!(out.contains("200"), "{out}");
    assert_eq!(
        up.last().header("authorization"),
        Some("Bearer ghp_REALstable0123456789abcdefghijklmnop")
    );
    // The key lives with kz's local state, not in the project.
    assert!(sb.home().join(".config/keyzero/local.key").exists());
    let mut files: Vec<String> = std::fs::read_dir(sb.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, [".keyzero.toml", "home", "remote.txt"]);
    // Another project gets other tokens for the same name.
    let other = Sandbox::new();
    std::fs::create_dir_all(other.home().join(".config/keyzero")).unwrap();
    std::fs::copy(
        sb.home().join(".config/keyzero/local.key"),
        other.home().join(".config/keyzero/local.key"),
    )
    .unwrap();
    project(&other, &secret, "[blind]\ntokens = \"stable\"\n");
    let (code, out, err) = kz_sh(&other, port, &env, "echo \"GH=$GH\"");
    assert_eq!(code, 0, "{err}");
    assert_ne!(token_of(&out), stable);
    // A bad mode is a config error naming the key.
    project(&sb, &secret, "[blind]\ntokens = \"forever\"\n");
    let (code, _, err) = kz_sh(&sb, port, &env, "true");
    assert_eq!(code, 125);
    assert!(
        err.contains("blind.tokens") && err.contains("forever"),
        "{err}"
    );
}
