//! The policy server end to end: the seed's bundle verbatim, JWT attacks (each 401), path
//! attacks, hot reload, metrics, and `kz run` in team mode, allowed and denied.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{fixture, kz_bin, python, run, start_script, Sandbox, Service};

const JWT_SECRET: &str = "dev-shared-secret-for-tests";
const ISS: &str = "https://issuer.example";

/// The seed's bundle verbatim, plus a staging policy, an RS256 issuer (PEM) and an ES256 issuer
/// (JWKS served locally).
fn bundle(dir: &Path, vault_url: &str, jwks_url: &str) -> String {
    format!(
        r#"
identity:
  issuers:
  - issuer: "https://issuer.example"
    audiences: ["keyzero"]
    algorithms: ["HS256"]          # pinned; never taken from the token header
    secret_env: "KZ_JWT_SECRET"    # HS*: shared key from this env var
  - issuer: "https://rs.example"
    audiences: ["keyzero"]
    algorithms: ["RS256"]
    public_key_file: "{rsa}"
  - issuer: "https://kubernetes.default.svc"
    audiences: ["keyzero"]
    algorithms: ["RS256", "ES256"]
    jwks_url: "{jwks_url}"
    jwks_min_refresh: "1s"
providers:
  vault: {{ address: "{vault_url}", auth: {{ method: "token" }} }}
network:
  allow_private: false
secrets:
  github: {{ provider: vault, ref: "secret/data/prod/github/token", hosts: ["api.github.com"] }}
policies:                          # the seed's form, verbatim
- match: "secret/data/prod/**"
  rules:
  - cel: "identity.service == 'data-pipeline-agent'"
    effect: allow
  - cel: "identity.service == 'support-agent'"
    effect: deny
- match: "secret/data/staging/**"
  rules:
  - cel: "identity.env == 'staging'"
    effect: allow
"#,
        rsa = dir.join("rsa_pub.pem").display()
    )
}

struct Pdp {
    /// Stopped first when the Pdp goes.
    _child: crate::util::Server,
    sb: Sandbox,
    url: String,
    /// Decision-log lines the server printed.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _vault: Service,
    _jwks: Child,
}

impl Drop for Pdp {
    fn drop(&mut self) {
        let _ = self._jwks.kill();
        let _ = self._jwks.wait();
    }
}

fn start() -> Pdp {
    let sb = Sandbox::new();
    let keys = Command::new(python())
        .arg(fixture("jwt_tool.py"))
        .arg("keys")
        .arg(sb.path())
        .status()
        .unwrap();
    assert!(keys.success());
    let vcfg = sb.write(
        "vault.json",
        &json!({"tokens": {"pdp-token": ["*"]}, "mounts": {"secret/": {"version": 2, "data": {
            "prod/github": [{"token": "ghp_from_vault_1234"}],
            "staging/db": [{"password": "staging-pw-5678"}]
        }}}})
        .to_string(),
    );
    let vault = start_script("vault_server.py", &[&vcfg]);
    let jwks_port = crate::util::free_port();
    let jwks = Command::new(python())
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &jwks_port.to_string(),
        ])
        .current_dir(sb.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    crate::util::wait_for_port(jwks_port, "jwks server");
    sb.write(
        "bundle.yaml",
        &bundle(
            sb.path(),
            &vault.url(),
            &format!("http://127.0.0.1:{jwks_port}/jwks.json"),
        ),
    );
    let mut cmd = sb.kz();
    cmd.env("KZ_JWT_SECRET", JWT_SECRET)
        .env("VAULT_TOKEN", "pdp-token")
        .stdout(Stdio::piped());
    let (mut child, port) = crate::util::start_kz_server(cmd, &[]);
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = BufReader::new(child.stdout.take().unwrap());
    let sink = log.clone();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    Pdp {
        _child: child,
        sb,
        url: format!("http://127.0.0.1:{port}"),
        log,
        _vault: vault,
        _jwks: jwks,
    }
}

/// Test keys from `jwt_tool.py keys` in `dir` (kid `kid`): rsa_key.pem, ec_key.pem, jwks.json.
fn jwt_keys(dir: &Path, kid: &str) {
    let ok = Command::new(python())
        .arg(fixture("jwt_tool.py"))
        .arg("keys")
        .arg(dir)
        .arg(kid)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A token signed by `jwt_tool.py sign` with `key` (a PEM file), `alg` and `kid` ("-": none).
fn jwt_sign(key: &Path, alg: &str, kid: &str, claims: &Value) -> String {
    let out = Command::new(python())
        .arg(fixture("jwt_tool.py"))
        .args(["sign", key.to_str().unwrap(), alg, kid, &claims.to_string()])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `GET {url}/readyz`: the body, a newline and the status code.
fn readyz(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", &format!("{url}/readyz")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs(claims: Value) -> String {
    kz::api::jwt::sign_hs256(&claims, JWT_SECRET.as_bytes())
}

fn identity(service: &str) -> String {
    hs(
        json!({"iss": ISS, "aud": "keyzero", "sub": service, "service": service, "exp": now() + 600}),
    )
}

/// POST with curl; returns (status, body).
fn post(url: &str, token: Option<&str>, body: Value) -> (u16, Value, String) {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "-D",
        "-",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data",
    ])
    .arg(body.to_string())
    .arg(url);
    if let Some(t) = token {
        c.arg("-H").arg(format!("authorization: Bearer {t}"));
    }
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        head.to_string(),
    )
}

fn decide(pdp: &Pdp, token: &str, r: &str) -> String {
    let (status, v, _) = post(
        &format!("{}/v1/decide", pdp.url),
        Some(token),
        json!({"ref": r, "provider": "vault"}),
    );
    assert_eq!(status, 200, "{v}");
    v["decision"].as_str().unwrap().to_string()
}

#[test]
fn the_seed_bundle_decides_as_written() {
    let pdp = start();
    assert_eq!(
        decide(
            &pdp,
            &identity("data-pipeline-agent"),
            "secret/data/prod/github/token"
        ),
        "allow"
    );
    assert_eq!(
        decide(
            &pdp,
            &identity("support-agent"),
            "secret/data/prod/github/token"
        ),
        "deny"
    );
    assert_eq!(
        decide(
            &pdp,
            &identity("someone-else"),
            "secret/data/prod/github/token"
        ),
        "deny"
    );
    let staging =
        hs(json!({"iss": ISS, "aud": "keyzero", "sub": "s", "env": "staging", "exp": now() + 600}));
    let prod =
        hs(json!({"iss": ISS, "aud": "keyzero", "sub": "s", "env": "prod", "exp": now() + 600}));
    assert_eq!(decide(&pdp, &staging, "secret/data/staging/db"), "allow");
    assert_eq!(decide(&pdp, &prod, "secret/data/staging/db"), "deny");
    let (_, v, _) = post(
        &format!("{}/v1/decide", pdp.url),
        Some(&identity("data-pipeline-agent")),
        json!({"ref": "secret/data/prod/x"}),
    );
    assert!(v["decision_id"].as_str().unwrap().len() > 4);
    assert_eq!(v["bundle_revision"].as_str().unwrap().len(), 12);
    assert_eq!(v["matched"], json!(["secret/data/prod/**#0"]));
    // One decision-log line per decision: id, time, issuer, subject, ref, decision, matched.
    // Six requests; for two of them the path does not exist in Vault, so its parent (with the
    // last segment as the key) is decided too, and logged in its canonical form.
    std::thread::sleep(Duration::from_millis(200));
    let log = pdp.log.lock().unwrap().clone();
    assert_eq!(log.len(), 8, "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("\"ref\":\"secret/data/prod/github#token\"")),
        "{log:?}"
    );
    let line: Value =
        serde_json::from_str(log.iter().find(|l| l.contains("support-agent")).unwrap()).unwrap();
    for k in [
        "decision_id",
        "time",
        "issuer",
        "subject",
        "ref",
        "decision",
        "matched",
        "latency_ms",
    ] {
        assert!(line.get(k).is_some(), "{k} missing in {line}");
    }
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["matched"], json!(["secret/data/prod/**#1"]));
    assert!(
        log.iter().all(|l| !l.contains("eyJ")),
        "no token in the decision log"
    );
}

#[test]
fn resolve_returns_values_only_after_an_allow() {
    let pdp = start();
    let url = format!("{}/v1/resolve", pdp.url);
    let body = json!({"secrets": [{"name": "github"}, {"provider": "vault", "ref": "secret/data/prod/missing"}, {"name": "nope"}]});
    let (status, v, _) = post(&url, Some(&identity("data-pipeline-agent")), body.clone());
    assert_eq!(status, 200);
    assert_eq!(v["results"][0]["value"], "ghp_from_vault_1234");
    assert_eq!(v["results"][1]["error"]["code"], "not_found");
    assert_eq!(
        v["results"][2]["error"]["code"], "denied",
        "unknown names are not disclosed"
    );
    let (_, v, _) = post(&url, Some(&identity("support-agent")), body);
    assert_eq!(v["results"][0]["error"]["code"], "denied");
    assert_eq!(
        v["results"][1]["error"]["code"], "denied",
        "not_found is never said before an allow"
    );
    assert!(!v.to_string().contains("ghp_"));
}

#[test]
fn jwt_attacks_are_401() {
    let pdp = start();
    let url = format!("{}/v1/decide", pdp.url);
    let body = json!({"ref": "secret/data/prod/github/token"});
    let c = |extra: Value| {
        let mut base = json!({"iss": ISS, "aud": "keyzero", "sub": "a", "service": "data-pipeline-agent", "exp": now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    };
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let rsa_pub = std::fs::read(pdp.sb.path().join("rsa_pub.pem")).unwrap();
    let sign = |key: &str, alg: &str, kid: &str, claims: Value| {
        let out = Command::new(python())
            .arg(fixture("jwt_tool.py"))
            .args([
                "sign",
                pdp.sb.path().join(key).to_str().unwrap(),
                alg,
                kid,
                &claims.to_string(),
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // Sanity: the asymmetric issuers accept their own keys.
    let rs_ok = sign(
        "rsa_key.pem",
        "RS256",
        "-",
        c(json!({"iss": "https://rs.example"})),
    );
    assert_eq!(
        post(&url, Some(&rs_ok), body.clone()).0,
        200,
        "RS256 via public_key_file"
    );
    let es_ok = sign(
        "ec_key.pem",
        "ES256",
        "k1",
        c(json!({"iss": "https://kubernetes.default.svc"})),
    );
    assert_eq!(
        post(&url, Some(&es_ok), body.clone()).0,
        200,
        "ES256 via JWKS"
    );
    let attacks: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(&json!({"alg": "none"})),
                b64(&c(json!({})))
            )),
        ),
        (
            "hs256 with an rs issuer's public key",
            Some(kz::api::jwt::sign_hs256(
                &c(json!({"iss": "https://rs.example"})),
                &rsa_pub,
            )),
        ),
        (
            "wrong key",
            Some(kz::api::jwt::sign_hs256(&c(json!({})), b"not-the-key")),
        ),
        ("expired", Some(hs(c(json!({"exp": now() - 3600}))))),
        (
            "string exp",
            Some(hs(c(json!({"exp": (now() + 600).to_string()})))),
        ),
        ("wrong aud", Some(hs(c(json!({"aud": "someone-else"}))))),
        (
            "wrong iss",
            Some(hs(c(json!({"iss": "https://evil.example"})))),
        ),
        (
            "unknown kid",
            Some(sign(
                "ec_key.pem",
                "ES256",
                "k9",
                c(json!({"iss": "https://kubernetes.default.svc"})),
            )),
        ),
        (
            "algorithm not pinned",
            Some(sign("rsa_key.pem", "RS256", "-", c(json!({})))),
        ),
    ];
    for (name, token) in attacks {
        let (status, _, head) = post(&url, token.as_deref(), body.clone());
        assert_eq!(status, 401, "{name}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{name}: {head}"
        );
    }
}

#[test]
fn rotated_jwks_keys_are_fetched_on_an_unknown_kid() {
    let pdp = start();
    let url = format!("{}/v1/decide", pdp.url);
    let rotated = pdp.sb.path().join("rotated");
    std::fs::create_dir_all(&rotated).unwrap();
    let ok = Command::new(python())
        .arg(fixture("jwt_tool.py"))
        .arg("keys")
        .arg(&rotated)
        .arg("k2")
        .status()
        .unwrap();
    assert!(ok.success());
    let claims = json!({"iss": "https://kubernetes.default.svc", "aud": "keyzero", "sub": "pod", "service": "data-pipeline-agent", "exp": now() + 600});
    let out = Command::new(python())
        .arg(fixture("jwt_tool.py"))
        .args([
            "sign",
            rotated.join("ec_key.pem").to_str().unwrap(),
            "ES256",
            "k2",
            &claims.to_string(),
        ])
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let body = json!({"ref": "secret/data/prod/x"});
    assert_eq!(
        post(&url, Some(&token), body.clone()).0,
        401,
        "k2 is not published yet"
    );
    // The issuer rotates: its JWKS now has k2. After the minimum refresh interval, an unknown
    // kid makes kz fetch the JWKS again.
    std::fs::copy(rotated.join("jwks.json"), pdp.sb.path().join("jwks.json")).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let (status, v, _) = post(&url, Some(&token), body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["decision"], "allow");
}

#[test]
fn path_attacks_are_denied() {
    let pdp = start();
    let t = identity("data-pipeline-agent");
    for r in [
        "secret/data/prod/../staging/db",
        "secret/data/staging/../prod/x",
        "secret%2Fdata%2Fprod/x",
        "secret/data/prod%2Fx",
        "secret//data/prod/x",
        "secret/data/prod/x/",
        "Secret/Data/Prod/x",
        "/secret/data/prod/x",
    ] {
        assert_eq!(decide(&pdp, &t, r), "deny", "{r}");
    }
}

#[test]
fn reload_keeps_the_old_bundle_when_the_new_one_is_bad() {
    let pdp = start();
    let t = identity("data-pipeline-agent");
    assert_eq!(decide(&pdp, &t, "secret/data/prod/x"), "allow");
    let path = pdp.sb.path().join("bundle.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("effect: deny", "effect: dney")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        decide(&pdp, &t, "secret/data/prod/x"),
        "allow",
        "old bundle kept"
    );
    std::fs::write(
        &path,
        good.replace(
            "identity.service == 'data-pipeline-agent'",
            "identity.service == 'nobody'",
        ),
    )
    .unwrap();
    let start = Instant::now();
    while decide(&pdp, &t, "secret/data/prod/x") == "allow" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "fixed bundle never took effect"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = Command::new("curl")
        .args(["-sS", &format!("{}/metrics", pdp.url)])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        m.contains("kz_bundle_reloads_total{result=\"failed\"} 1"),
        "{m}"
    );
    assert!(m.contains("kz_decisions_total{decision=\"allow\"}"), "{m}");
    assert!(m.contains("kz_decision_seconds_bucket"), "{m}");
}

#[test]
fn health_and_readiness() {
    let pdp = start();
    for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let out = Command::new("curl")
            .args(["-sS", &format!("{}{path}", pdp.url)])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(want),
            "{path}"
        );
    }
}

#[test]
fn kz_run_in_team_mode_allowed_and_denied() {
    let pdp = start();
    let sb = Sandbox::new();
    sb.config(&format!(
        "[secrets]\nGITHUB_TOKEN = {{ provider = \"vault\", ref = \"secret/data/prod/github/token\" }}\n[server]\nurl = \"{}\"\ntoken_env = \"AGENT_JWT\"\n",
        pdp.url
    ));
    let (code, out, err) = run(sb
        .kz()
        .env("AGENT_JWT", identity("data-pipeline-agent"))
        .args(["run", "--no-mask", "--", "sh", "-c", "echo $GITHUB_TOKEN"]));
    assert_eq!((code, out.trim()), (0, "ghp_from_vault_1234"), "{err}");
    let (code, _, err) = run(sb
        .kz()
        .env("AGENT_JWT", identity("support-agent"))
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains(
            "kz: GITHUB_TOKEN: vault: secret/data/prod/github/token: policy server: denied"
        ),
        "{err}"
    );
    let _ = kz_bin();
}

#[test]
fn policy_tooling() {
    let sb = Sandbox::new();
    sb.write("rsa_pub.pem", "");
    let b = bundle(
        sb.path(),
        "http://127.0.0.1:9",
        "http://127.0.0.1:9/jwks.json",
    );
    sb.write("bundle.yaml", &b);
    let (code, out, err) = run(sb.kz().args(["policy", "check", "bundle.yaml"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (revision"), "{out}");
    sb.write(
        "bad.yaml",
        &b.replace("effect: deny", "effect: dney")
            .replace("identity.env", "env"),
    );
    let (code, _, err) = run(sb.kz().args(["policy", "check", "bad.yaml"]));
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 2, "{err}");
    sb.write(
        "cases.yaml",
        "cases:\n- name: pipeline reads prod\n  claims: { service: data-pipeline-agent }\n  ref: secret/data/prod/db\n  expect: allow\n- name: support denied\n  claims: { service: support-agent }\n  ref: secret/data/prod/db\n  expect: deny\n",
    );
    let (code, out, _) = run(sb
        .kz()
        .args(["policy", "test", "bundle.yaml", "cases.yaml"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    sb.write("wrong.yaml", "cases:\n- name: wrong expectation\n  claims: { service: support-agent }\n  ref: secret/data/prod/db\n  expect: allow\n");
    let (code, out, _) = run(sb
        .kz()
        .args(["policy", "test", "bundle.yaml", "wrong.yaml"]));
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL  wrong expectation: expected allow, got deny"),
        "{out}"
    );
    let (code, token, err) = run(sb.kz().env("KZ_JWT_SECRET", JWT_SECRET).args([
        "token",
        "mint",
        "--issuer",
        ISS,
        "--audience",
        "keyzero",
        "--claims",
        "{\"service\":\"data-pipeline-agent\"}",
        "--ttl",
        "10m",
    ]));
    assert_eq!(code, 0, "{err}");
    let claims = kz::api::jwt::verify(
        token.trim(),
        &[kz::api::jwt::IssuerKeys {
            issuer: ISS.into(),
            audiences: vec!["keyzero".into()],
            algorithms: vec![kz::api::jwt::Alg::HS256],
            keys: vec![(
                None,
                kz::api::jwt::Key::Hmac(zeroize::Zeroizing::new(JWT_SECRET.as_bytes().to_vec())),
            )],
        }],
        now(),
    )
    .unwrap();
    assert_eq!(claims["service"], "data-pipeline-agent");
    assert!(claims["exp"].as_i64().unwrap() <= now() + 600);
}

#[test]
fn tls_and_team_mode_over_https() {
    let pdp = start();
    // A second server on the same bundle, with TLS.
    let mut cmd = pdp.sb.kz();
    cmd.env("KZ_JWT_SECRET", JWT_SECRET)
        .env("VAULT_TOKEN", "pdp-token")
        .stdout(Stdio::null());
    let (cert, key) = (fixture("tls/server.pem"), fixture("tls/server.key"));
    let (mut tls, port) = crate::util::start_kz_server(
        cmd,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let sb = Sandbox::new();
    sb.config(&format!(
        "[secrets]\nGH = {{ provider = \"vault\", ref = \"secret/data/prod/github/token\" }}\n[server]\nurl = \"https://localhost:{port}\"\n"
    ));
    let (code, out, err) = run(sb
        .kz()
        .env("KZ_IDENTITY_TOKEN", identity("data-pipeline-agent"))
        .env("KZ_SERVER_CA", fixture("tls/ca.pem"))
        .args([
            "run",
            "--no-mask",
            "--",
            "sh",
            "-c",
            "echo \"$GH [$KZ_IDENTITY_TOKEN]\"",
        ]));
    let _ = tls.kill();
    let _ = tls.wait();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "ghp_from_vault_1234 []",
        "value delivered, identity token not inherited"
    );
}

#[test]
fn policy_eval_explains_one_decision() {
    let pdp = start();
    let (code, out, err) = run(pdp.sb.kz().env("KZ_JWT_SECRET", JWT_SECRET).args([
        "policy",
        "eval",
        "--bundle",
        "bundle.yaml",
        "--token",
        &identity("support-agent"),
        "--ref",
        "secret/data/prod/github/token",
        "--provider",
        "vault",
    ]));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["matched"], json!(["secret/data/prod/**#1"]));
    assert_eq!(v["identity"]["service"], "support-agent");
    assert_eq!(
        v["rules"],
        json!([
            {"rule": "secret/data/prod/**#0", "effect": "allow", "result": false},
            {"rule": "secret/data/prod/**#1", "effect": "deny", "result": true}
        ])
    );
    let (code, _, err) = run(pdp.sb.kz().env("KZ_JWT_SECRET", "wrong").args([
        "policy",
        "eval",
        "--bundle",
        "bundle.yaml",
        "--token",
        &identity("support-agent"),
        "--ref",
        "secret/data/prod/x",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("token: bad signature"), "{err}");
}

#[test]
fn readiness_waits_for_keys_and_a_bad_start_exits() {
    let sb = Sandbox::new();
    // A JWKS endpoint that answers after 2 s (the Vault stand-in's delay; its stats document
    // parses as a JWKS without keys).
    let slow = sb.write(
        "slow.json",
        &json!({"delay_ms": 2000, "mounts": {}}).to_string(),
    );
    let jwks = start_script("vault_server.py", &[&slow]);
    sb.write(
        "bundle.yaml",
        &format!(
            "identity:\n  issuers:\n  - issuer: k\n    audiences: [keyzero]\n    algorithms: [ES256]\n    jwks_url: \"{}/__stats\"\npolicies: []\n",
            jwks.url()
        ),
    );
    let port = crate::util::free_port();
    let mut child = sb
        .kz()
        .args([
            "server",
            "start",
            "--bundle",
            "bundle.yaml",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    crate::util::wait_for_port(port, "policy server");
    let readyz = || {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://127.0.0.1:{port}/readyz"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(readyz(), "503", "not ready while the JWKS loads");
    let start = Instant::now();
    while readyz() != "200" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    // An HS issuer whose key variable is unset: the server says why and exits 1.
    sb.write("hs.yaml", "identity:\n  issuers:\n  - issuer: h\n    audiences: [keyzero]\n    algorithms: [HS256]\n    secret_env: KZ_TEST_UNSET_SECRET\n");
    let (code, _, err) = run(sb.kz().args([
        "server",
        "start",
        "--bundle",
        "hs.yaml",
        "--listen",
        "127.0.0.1:0",
    ]));
    assert_eq!(code, 1);
    assert!(
        err.contains("issuer h: KZ_TEST_UNSET_SECRET is not set"),
        "{err}"
    );
}

#[test]
fn an_unreachable_jwks_keeps_the_server_up_and_unready_until_it_loads() {
    let sb = Sandbox::new();
    jwt_keys(sb.path(), "k1");
    let jwks_port = crate::util::free_port();
    sb.write(
        "bundle.yaml",
        &format!(
            "identity:\n  issuers:\n  - issuer: k8s\n    audiences: [keyzero]\n    algorithms: [ES256]\n    jwks_url: \"http://127.0.0.1:{jwks_port}/jwks.json\"\npolicies:\n- match: \"**\"\n  rules:\n  - cel: \"true\"\n    effect: allow\n"
        ),
    );
    // Nothing listens on the JWKS port: the server still starts (no crash loop).
    let (mut child, port) = crate::util::start_kz_server(sb.kz(), &[]);
    let url = format!("http://127.0.0.1:{port}");
    let claims = json!({"iss": "k8s", "aud": "keyzero", "sub": "pod", "exp": now() + 600});
    let token = jwt_sign(&sb.path().join("ec_key.pem"), "ES256", "k1", &claims);
    let readyz = || readyz(&url);
    let r = readyz();
    assert!(r.ends_with("503"), "{r}");
    assert!(
        r.contains("jwks") && r.contains(&jwks_port.to_string()),
        "{r}"
    );
    let body = json!({"ref": "secret/data/x"});
    let (status, v, _) = post(&format!("{url}/v1/decide"), Some(&token), body.clone());
    assert_eq!(status, 503, "decisions for that issuer wait: {v}");
    // The JWKS comes up: within the backoff the server loads it and is ready.
    let mut jwks = Command::new(python())
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &jwks_port.to_string(),
        ])
        .current_dir(sb.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !readyz().ends_with("200") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never became ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, v, _) = post(&format!("{url}/v1/decide"), Some(&token), body);
    assert_eq!(
        (status, v["decision"].as_str()),
        (200, Some("allow")),
        "{v}"
    );
    let _ = jwks.kill();
    let _ = jwks.wait();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn no_spelling_reaches_a_denied_aws_or_1password_secret() {
    let sb = Sandbox::new();
    let moto = crate::util::start_moto(&[]);
    crate::util::python_json("aws_setup.py", &[&moto.url(), "open"]);
    let arn = Command::new(python())
        .args([
            "-c",
            "import boto3,sys; print(boto3.client('secretsmanager', endpoint_url=sys.argv[1], region_name='eu-west-1', aws_access_key_id='t', aws_secret_access_key='t').describe_secret(SecretId='prod/db')['ARN'])",
            &moto.url(),
        ])
        .output()
        .unwrap();
    let arn = String::from_utf8(arn.stdout).unwrap().trim().to_string();
    assert!(arn.starts_with("arn:aws:secretsmanager:"), "{arn}");
    let op = sb.write(
        "connect.json",
        &json!({"token": "connect-token", "vaults": {"Dev": {
            "OpenAI": {"fields": {"api-key": "sk-op-DENIED-1a2b", "username": "bot-DENIED"}},
            "DB": {"fields": {}, "sections": {"conn": {"password": "op-db-allowed-4d5e"}}}
        }}})
        .to_string(),
    );
    let connect = start_script("connect_server.py", &[&op]);
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
  aws-sm: {{ region: eu-west-1, endpoint: "{}" }}
  1password: {{ connect_host: "{}", connect_token_env: "OPC" }}
policies:
- match: "**"
  rules:
  - cel: "identity.service == 'data-pipeline-agent'"
    effect: allow
- match: "prod/db"
  provider: aws-sm
  rules:
  - cel: "identity.service == 'data-pipeline-agent'"
    effect: deny
- match: "op://Dev/OpenAI"
  rules:
  - cel: "identity.service == 'data-pipeline-agent'"
    effect: deny
"#,
            moto.url(),
            connect.url()
        ),
    );
    let mut cmd = sb.kz();
    cmd.env("KZ_JWT_SECRET", JWT_SECRET)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("OPC", "connect-token")
        .stdout(Stdio::null());
    let (mut child, port) = crate::util::start_kz_server(cmd, &[]);
    let url = format!("http://127.0.0.1:{port}/v1/resolve");
    let partial = arn.rsplit_once('-').unwrap().0.to_string();
    let aws = [
        "prod/db".to_string(),
        "prod/db#password".into(),
        "prod/db?version=AWSCURRENT#password".into(),
        "prod/db#".into(),
        "prod//db".into(),
        "prod/./db".into(),
        "prod/db?versionId=x".into(),
        format!("{arn}#password"),
        arn.clone(),
        format!("{partial}#password"),
    ];
    let one = [
        "op://Dev/OpenAI/api-key",
        "op://Dev/OpenAI/username",
        "op://Dev/OpenAI/api-key?attribute=otp",
        "op://Dev//OpenAI/api-key",
        "op://Dev/./OpenAI/api-key",
        "op://Dev/OpenAI/x/api-key",
    ];
    let mut items: Vec<Value> = aws
        .iter()
        .map(|r| json!({"provider": "aws-sm", "ref": r}))
        .collect();
    items.extend(
        one.iter()
            .map(|r| json!({"provider": "1password", "ref": r})),
    );
    let (status, v, _) = post(
        &url,
        Some(&identity("data-pipeline-agent")),
        json!({"secrets": items}),
    );
    assert_eq!(status, 200, "{v}");
    let text = v.to_string();
    for leaked in ["db-pass-3333", "sk-op-DENIED", "bot-DENIED"] {
        assert!(!text.contains(leaked), "{leaked}: {text}");
    }
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["error"]["code"], "denied", "{r}");
    }
    // The same identity reads what the denials do not cover.
    let (_, v, _) = post(
        &url,
        Some(&identity("data-pipeline-agent")),
        json!({"secrets": [
            {"provider": "aws-sm", "ref": "prod/slack-bot-token"},
            {"provider": "1password", "ref": "op://Dev/DB/conn/password"}
        ]}),
    );
    assert_eq!(v["results"][0]["value"], "xoxb-slack-new-2222", "{v}");
    assert_eq!(v["results"][1]["value"], "op-db-allowed-4d5e", "{v}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_bundle_caught_half_written_is_never_loaded() {
    let sb = Sandbox::new();
    let policy = |n: usize| {
        format!(
            "- match: \"secret/data/p{n}/**\"\n  rules:\n  - cel: \"true\"\n    effect: allow\n"
        )
    };
    let head = "identity:\n  issuers:\n  - issuer: i\n    audiences: [a]\n    algorithms: [HS256]\n    secret_env: KZ_JWT_SECRET\npolicies:\n";
    let initial = format!("{head}{}", policy(0));
    // The half a slow writer has written so far parses on its own (one policy fewer).
    let half = format!("{head}{}{}", policy(1), policy(2));
    let full = format!("{half}{}", policy(3));
    let revision = |text: &str| {
        let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        d.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let path = sb.write("bundle.yaml", &initial);
    let mut cmd = sb.kz();
    cmd.env("KZ_JWT_SECRET", JWT_SECRET).stdout(Stdio::null());
    let (mut child, port) = crate::util::start_kz_server(cmd, &[]);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, done) = (seen.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("curl")
                    .args(["-s", &format!("http://127.0.0.1:{port}/readyz")])
                    .output()
                    .unwrap();
                if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
                    if let Some(r) = v["bundle_revision"].as_str() {
                        seen.lock().unwrap().insert(r.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // A slow writer: half the file, a pause, the rest, several times over (3 s, so the
    // once-a-second check lands in a half-written moment more than once).
    for _ in 0..10 {
        std::fs::write(&path, &half).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        std::fs::write(&path, &full).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    let start = Instant::now();
    while !seen.lock().unwrap().contains(&revision(&full)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the full bundle never loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.contains(&revision(&half)),
        "a half-written bundle was loaded: {seen:?}"
    );
    assert!(seen.contains(&revision(&initial)), "{seen:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// The identity flow of pod mode: the sidecar presents its projected service-account token
/// (audience keyzero); the policy server fetches the cluster's keys from the API server with
/// its own token and the cluster CA (as the chart's default bundle does), and policies match
/// the `kubernetes.io` claims. Without the server's own token the keys stay unloaded (401).
#[test]
fn in_cluster_issuer_loads_keys_with_a_bearer_token_and_matches_service_accounts() {
    let sb = Sandbox::new();
    jwt_keys(sb.path(), "k1");
    let sa_token = sb.write("server-sa-token", "server-sa-token-value\n");
    let api = start_script(
        "k8s_jwks.py",
        &[
            &sb.path().join("jwks.json"),
            &sa_token,
            &fixture("tls/server.pem"),
            &fixture("tls/server.key"),
        ],
    );
    let iss = "https://kubernetes.default.svc.cluster.local";
    let bundle = |token_line: &str| {
        format!(
            "identity:\n  issuers:\n  - issuer: \"{iss}\"\n    audiences: [keyzero]\n    algorithms: [ES256]\n    jwks_url: \"https://127.0.0.1:{}/openid/v1/jwks\"\n    jwks_ca_file: \"{}\"\n{token_line}policies:\n- match: \"secret/data/agents/**\"\n  rules:\n  - cel: \"identity['kubernetes.io'].namespace == 'agents' && identity['kubernetes.io'].serviceaccount.name == 'research'\"\n    effect: allow\n",
            api.port,
            fixture("tls/ca.pem").display()
        )
    };
    let sign = |ns: &str, sa: &str| {
        let claims = json!({
            "iss": iss, "aud": ["keyzero"], "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "exp": now() + 600, "iat": now(), "nbf": now(),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u-1"},
                              "pod": {"name": "agent-0", "uid": "p-1"}}
        });
        jwt_sign(&sb.path().join("ec_key.pem"), "ES256", "k1", &claims)
    };
    let wait_ready = |url: &str| {
        let start = Instant::now();
        loop {
            let r = readyz(url);
            if r.ends_with("200") {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "not ready: {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // Without the server's own token the API server refuses the keys: not ready, says why.
    sb.write("bundle.yaml", &bundle(""));
    let (mut child, port) = crate::util::start_kz_server(sb.kz(), &[]);
    let r = readyz(&format!("http://127.0.0.1:{port}"));
    assert!(r.ends_with("503") && r.contains("http 401"), "{r}");
    let _ = child.kill();
    let _ = child.wait();

    let token_line = format!("    jwks_token_file: \"{}\"\n", sa_token.display());
    sb.write("bundle.yaml", &bundle(&token_line));
    let (mut child, port) = crate::util::start_kz_server(sb.kz(), &[]);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url);
    let body = json!({"ref": "secret/data/agents/openai"});
    let decide = |token: &str| post(&format!("{url}/v1/decide"), Some(token), body.clone());
    let (status, v, _) = decide(&sign("agents", "research"));
    assert_eq!(
        (status, v["decision"].as_str()),
        (200, Some("allow")),
        "{v}"
    );
    let (status, v, _) = decide(&sign("agents", "intern"));
    assert_eq!((status, v["decision"].as_str()), (200, Some("deny")), "{v}");
    let (status, v, _) = decide(&sign("other", "research"));
    assert_eq!((status, v["decision"].as_str()), (200, Some("deny")), "{v}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_jwks_bearer_token_is_never_sent_over_plain_http() {
    let sb = Sandbox::new();
    sb.write(
        "bundle.yaml",
        "identity:\n  issuers:\n  - issuer: k\n    audiences: [keyzero]\n    algorithms: [RS256]\n    jwks_url: \"http://127.0.0.1:9/jwks\"\n    jwks_token_file: tok\npolicies: []\n",
    );
    let (code, _, err) = run(sb.kz().args(["policy", "check", "bundle.yaml"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("jwks_token_file") && err.contains("https"),
        "{err}"
    );
}

/// Pod mode's default: `kz sidecar --server URL --server-token-file F` resolves through the
/// policy server with the sidecar's own token (read from the file, as a projected token is),
/// so the pod holds no backend credential; a token of another service account is denied and
/// the sidecar does not start.
#[test]
fn the_sidecar_resolves_through_the_policy_server_with_its_own_token() {
    let sb = Sandbox::new();
    let moto = crate::util::start_moto(&[]);
    crate::util::python_json("aws_setup.py", &[&moto.url(), "open"]);
    sb.write(
        "bundle.yaml",
        &format!(
            "identity:\n  issuers:\n  - issuer: \"{ISS}\"\n    audiences: [keyzero]\n    algorithms: [HS256]\n    secret_env: KZ_JWT_SECRET\nproviders:\n  aws-sm: {{ region: eu-west-1, endpoint: \"{}\" }}\npolicies:\n- match: \"prod/**\"\n  rules:\n  - cel: \"identity.sub == 'system:serviceaccount:agents:research'\"\n    effect: allow\n",
            moto.url()
        ),
    );
    let mut cmd = sb.kz();
    cmd.env("KZ_JWT_SECRET", JWT_SECRET)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(Stdio::piped());
    let (mut server, port) = crate::util::start_kz_server(cmd, &[]);
    let decisions = BufReader::new(server.stdout.take().unwrap());
    sb.write(
        "agent.toml",
        "[secrets]\nSLACK = { provider = \"aws-sm\", ref = \"prod/slack-bot-token\", hosts = [\"slack.com\"] }\n",
    );
    let token_for = |sa: &str| {
        hs(
            json!({"iss": ISS, "aud": "keyzero", "sub": format!("system:serviceaccount:agents:{sa}"), "exp": now() + 600}),
        )
    };
    let sidecar = |token: &str| {
        let tok = sb.write("sa-token", token);
        let share = sb.path().join("share");
        let _ = std::fs::create_dir(&share);
        // Serving means its tokens are written and its ready port answers (a port alone could
        // be another test's, taken after free_port let it go).
        let _ = std::fs::remove_file(share.join("tokens.env"));
        let (p, d, r) = (
            crate::util::free_port(),
            crate::util::free_port(),
            crate::util::free_port(),
        );
        let mut c = Command::new(kz_bin());
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .current_dir(sb.path())
            .args(["sidecar", "-c", "agent.toml", "--server"])
            .arg(format!("http://127.0.0.1:{port}"))
            .arg("--server-token-file")
            .arg(&tok)
            .args(["--proxy-port", &p.to_string(), "--dns-port", &d.to_string()])
            .args(["--ready-listen", &format!("127.0.0.1:{r}")])
            .arg("--share-dir")
            .arg(&share)
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                return (Some(status.code().unwrap_or(-1)), err, share);
            }
            if share.join("tokens.env").exists()
                && std::net::TcpStream::connect(("127.0.0.1", r)).is_ok()
            {
                let _ = child.kill();
                let _ = child.wait();
                return (None, String::new(), share);
            }
            assert!(start.elapsed() < Duration::from_secs(20), "sidecar hung");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (exit, err, share) = sidecar(&token_for("research"));
    assert_eq!(exit, None, "the sidecar serves: {err}");
    let tokens = std::fs::read_to_string(share.join("tokens.env")).unwrap();
    assert!(
        tokens.starts_with("SLACK=xoxb-") && kz::api::is_token(tokens[6..].trim()),
        "{tokens}"
    );
    let (exit, err, _) = sidecar(&token_for("intern"));
    assert_eq!(exit, Some(125), "{err}");
    assert!(err.contains("SLACK") && err.contains("denied"), "{err}");
    assert!(!err.contains("xoxb"), "{err}");
    let _ = server.kill();
    let _ = server.wait();
    let log: Vec<String> = decisions.lines().map_while(Result::ok).collect();
    let subjects: Vec<(String, String)> = log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["subject"].as_str().unwrap_or("").to_string(),
                v["decision"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        subjects.contains(&(
            "system:serviceaccount:agents:research".into(),
            "allow".into()
        )) && subjects.contains(&("system:serviceaccount:agents:intern".into(), "deny".into())),
        "{log:?}"
    );
}

/// The serving certificate is reloaded when its files change (a Secret volume updated by
/// cert-manager or by a chart upgrade), without a restart; a half-written pair is not taken.
#[test]
fn the_server_reloads_its_tls_certificate_when_the_files_change() {
    let sb = Sandbox::new();
    sb.write("bundle.yaml", "identity:\n  issuers:\n  - issuer: i\n    audiences: [a]\n    algorithms: [HS256]\n    secret_env: KZ_JWT_SECRET\n");
    let cert = sb.path().join("tls.crt");
    let key = sb.path().join("tls.key");
    std::fs::copy(fixture("tls/server.pem"), &cert).unwrap();
    std::fs::copy(fixture("tls/server.key"), &key).unwrap();
    let mut cmd = sb.kz();
    cmd.env("KZ_JWT_SECRET", "x").stdout(Stdio::null());
    let (mut child, port) =
        crate::util::start_kz_server(cmd, &["--tls-cert", "tls.crt", "--tls-key", "tls.key"]);
    let healthz = |ca: &Path| {
        Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--cacert"])
            .arg(ca)
            .arg(format!("https://127.0.0.1:{port}/healthz"))
            .status()
            .unwrap()
            .success()
    };
    assert!(healthz(&fixture("tls/ca.pem")));
    let new_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let new_cert = params.self_signed(&new_key).unwrap();
    let new_ca = sb.write("new-ca.pem", &new_cert.pem());
    // Half a renewal (new certificate, old key): still the old pair.
    std::fs::write(&cert, new_cert.pem()).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        healthz(&fixture("tls/ca.pem")),
        "a mismatched pair is not taken"
    );
    std::fs::write(&key, new_key.serialize_pem()).unwrap();
    let start = Instant::now();
    while !healthz(&new_ca) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!healthz(&fixture("tls/ca.pem")));
    let _ = child.kill();
    let _ = child.wait();
}
