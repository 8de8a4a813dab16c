//! MCP with the official Python SDK as the client: tools listed with annotations and schemas,
//! each tool called, allowed and denied identities, the upstream receiving the real credential
//! while no tool result contains it (also when the upstream echoes it), and fetch attacks.

use serde_json::{json, Value};

use crate::upstream;
use crate::util::{fixture, kz_bin, python, Sandbox};

const SECRET: &str = "mcp-jwt-secret";
const REAL: &str = "ghp_mcp_REAL_value_777";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(service: &str) -> String {
    kz::api::jwt::sign_hs256(
        &json!({"iss": "https://issuer.example", "aud": "keyzero", "sub": service, "service": service, "exp": now() + 600}),
        SECRET.as_bytes(),
    )
}

fn setup() -> (Sandbox, upstream::Upstream) {
    let sb = Sandbox::new();
    let up = upstream::start();
    sb.write("secret/data/prod/github", REAL);
    sb.write("secret/data/prod/shown", "revealed-value-123");
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
network:
  hosts: {{ "api.kz.test": "127.0.0.1", "other.kz.test": "127.0.0.1" }}
  allow_private: true
  upstream_ca: "{ca}"
secrets:
  github: {{ provider: file, ref: "secret/data/prod/github", hosts: ["api.kz.test:{port}"] }}
  shown: {{ provider: file, ref: "secret/data/prod/shown", hosts: ["api.kz.test:{port}"] }}
policies:
- match: "secret/data/prod/**"
  rules:
  - cel: "identity.service == 'pipeline'"
    effect: allow
  - cel: "identity.service == 'pipeline' && secret.name == 'shown'"
    effect: reveal
"#,
            ca = fixture("tls/ca.pem").display(),
            port = up.port
        ),
    );
    (sb, up)
}

fn stdio(sb: &Sandbox, service: &str, script: Value) -> Value {
    stdio_with_log(sb, service, script).0
}

/// The calls' results and the decision log (kz's stderr).
fn stdio_with_log(sb: &Sandbox, service: &str, script: Value) -> (Value, String) {
    let path = sb.write("script.json", &script.to_string());
    let out = std::process::Command::new(python())
        .arg(fixture("mcp_client.py"))
        .arg("stdio")
        .arg(&path)
        .arg("--")
        .arg(kz_bin())
        .args(["mcp", "--bundle", "bundle.yaml"])
        .current_dir(sb.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", sb.home())
        .env("KZ_JWT_SECRET", SECRET)
        .env("KZ_IDENTITY_TOKEN", token(service))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every call is decided and logged (on stderr: stdout is the MCP channel), never a value.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("\"event\":\"decision\""), "{log}");
    assert!(!log.contains(REAL) && !log.contains("eyJ"), "{log}");
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        log.into_owned(),
    )
}

#[test]
fn stdio_tools_for_an_allowed_identity() {
    let (sb, up) = setup();
    let url = format!("https://api.kz.test:{}/echo", up.port);
    let v = stdio(
        &sb,
        "pipeline",
        json!([
            {"tool": "list_secrets"},
            {"tool": "resolve", "args": {"ref": "github"}},
            {"tool": "resolve", "args": {"ref": "shown"}},
            {"tool": "resolve", "args": {"ref": "secret/data/prod/anything"}},
            {"tool": "fetch", "args": {"url": url, "auth": {"ref": "github", "scheme": "bearer"}}},
            {"tool": "fetch", "args": {"url": format!("{url}?x=1"), "auth": {"ref": "github", "scheme": "query", "name": "key"}}}
        ]),
    );
    let names: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["list_secrets", "resolve", "fetch"]);
    assert_eq!(v["tools"][0]["annotations"]["readOnlyHint"], true);
    assert_eq!(v["tools"][1]["annotations"]["readOnlyHint"], true);
    assert_eq!(v["tools"][2]["annotations"]["openWorldHint"], true);
    assert!(v["tools"][2]["input_schema"]["properties"]["auth"].is_object());
    for t in v["tools"].as_array().unwrap() {
        assert!(t["output_schema"]["properties"].is_object(), "{t}");
    }
    let calls = v["calls"].as_array().unwrap();
    let secrets = &calls[0]["structured"]["secrets"];
    assert_eq!(secrets.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(calls[1]["structured"]["allowed"], true);
    assert!(
        calls[1]["structured"].get("value").is_none(),
        "no value without reveal"
    );
    assert_eq!(
        calls[2]["structured"]["value"], "revealed-value-123",
        "reveal rule"
    );
    assert_eq!(
        calls[3]["structured"],
        json!({"allowed": true, "handle": "secret/data/prod/anything", "hosts": []})
    );
    let calls = &calls[1..];
    assert_eq!(calls[3]["is_error"], false, "{}", calls[3]);
    assert_eq!(calls[3]["structured"]["status"], 200);
    let reqs = up.requests();
    assert!(
        reqs.iter()
            .any(|r| r.header("authorization") == Some(format!("Bearer {REAL}").as_str())),
        "upstream got the value"
    );
    assert!(
        reqs.iter()
            .any(|r| r.target.ends_with(&format!("key={REAL}"))),
        "query scheme"
    );
    // The upstream echoed the credential; no tool result carries it.
    let all = v.to_string();
    assert!(
        !all.contains(REAL),
        "a tool result leaked the credential: {all}"
    );
    assert!(
        calls[3]["structured"]["body"]
            .as_str()
            .unwrap()
            .contains("concealed"),
        "{}",
        calls[3]
    );
    // The body is sent once: the text block only summarises it.
    assert!(
        calls[3]["text"].as_str().unwrap().starts_with("HTTP 200"),
        "{}",
        calls[3]
    );
}

#[test]
fn stdio_denied_identity_and_fetch_attacks() {
    let (sb, up) = setup();
    let url = format!("https://api.kz.test:{}/echo", up.port);
    let v = stdio(
        &sb,
        "support",
        json!([
            {"tool": "list_secrets"},
            {"tool": "resolve", "args": {"ref": "github"}},
            {"tool": "fetch", "args": {"url": url, "auth": {"ref": "github", "scheme": "bearer"}}}
        ]),
    );
    let calls = v["calls"].as_array().unwrap();
    assert_eq!(
        calls[0]["structured"]["secrets"],
        json!([]),
        "the list depends on policy"
    );
    assert_eq!(calls[1]["structured"]["allowed"], false);
    assert_eq!(calls[2]["is_error"], true);
    assert!(
        calls[2]["text"].as_str().unwrap().contains("denied"),
        "{}",
        calls[2]
    );
    let other = format!("https://other.kz.test:{}/echo", up.port);
    let v = stdio(
        &sb,
        "pipeline",
        json!([
            {"tool": "fetch", "args": {"url": other, "auth": {"ref": "github", "scheme": "bearer"}}},
            {"tool": "fetch", "args": {"url": url, "headers": {"Authorization": "Bearer x"}, "auth": {"ref": "github", "scheme": "bearer"}}},
            {"tool": "fetch", "args": {"url": format!("https://user:pw@api.kz.test:{}/echo", up.port), "auth": {"ref": "github", "scheme": "bearer"}}},
            {"tool": "fetch", "args": {"url": format!("http://api.kz.test:{}/echo", up.port), "auth": {"ref": "github", "scheme": "bearer"}}}
        ]),
    );
    for (i, want) in [
        "may not be sent to other.kz.test",
        "header Authorization is refused",
        "credentials in the url",
        "only makes https",
    ]
    .iter()
    .enumerate()
    {
        let c = &v["calls"][i];
        assert_eq!(c["is_error"], true, "{c}");
        assert!(c["text"].as_str().unwrap().contains(want), "{want}: {c}");
    }
    assert!(up.requests().is_empty(), "no attack reached the upstream");
}

#[test]
fn streamable_http_with_bearer_identities() {
    let (sb, up) = setup();
    let mut cmd = sb.kz();
    cmd.env("KZ_JWT_SECRET", SECRET)
        .stdout(std::process::Stdio::null());
    let (mut server, port) =
        crate::util::start_kz_server(cmd, &["--mcp", "--allow-host", "keyzero.agents.svc"]);
    let url = format!("https://api.kz.test:{}/echo", up.port);
    let script = sb.write(
        "http-script.json",
        &json!([
            {"tool": "list_secrets"},
            {"tool": "fetch", "args": {"url": url, "auth": {"ref": "github", "scheme": "header", "name": "X-Api-Key"}}},
            {"tool": "fetch", "args": {"url": format!("https://api.kz.test:{}/big", up.port), "auth": {"ref": "github", "scheme": "bearer"}}}
        ])
        .to_string(),
    );
    let call = |service: &str| {
        let out = std::process::Command::new(python())
            .arg(fixture("mcp_client.py"))
            .args([
                "http",
                &format!("http://127.0.0.1:{port}/mcp"),
                &token(service),
            ])
            .arg(&script)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = call("pipeline");
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["protocol"], "2025-11-25",
        "the Python SDK negotiates the current revision"
    );
    assert_eq!(
        v["calls"][0]["structured"]["secrets"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(v["calls"][1]["structured"]["status"], 200, "{v}");
    // A body of more than 1 MB arrives over HTTP, in the result once: the official client's
    // 1 MiB message limit is kept (an upstream 3 MiB body is cut to fit, and says so).
    let big = &v["calls"][2];
    assert_eq!(big["structured"]["truncated"], true);
    let len = big["structured"]["body"].as_str().unwrap().len();
    assert!((1_000_000..1 << 20).contains(&len), "{len}");
    assert!(
        big["text"].as_str().unwrap().len() < 4096,
        "the body is not repeated in text"
    );
    assert!(up
        .requests()
        .iter()
        .any(|r| r.header("x-api-key") == Some(REAL)));
    assert!(!out.contains(REAL), "{out}");
    let (ok, out, err) = call("support");
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["calls"][0]["structured"]["secrets"], json!([]));
    assert_eq!(v["calls"][1]["is_error"], true);
    // A bad token never reaches MCP.
    let status = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "authorization: Bearer nope",
            &format!("http://127.0.0.1:{port}/mcp"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&status.stdout), "401");
    // What the SDK hides: server identity, unknown tools, Origin and Host checks, session end.
    let raw = crate::util::python_json(
        "mcp_raw.py",
        &[&format!("http://127.0.0.1:{port}/mcp"), &token("pipeline")],
    );
    assert_eq!(
        raw["initialize"]["result"]["serverInfo"]["name"], "kz",
        "{raw}"
    );
    assert_eq!(
        raw["initialize"]["result"]["serverInfo"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(raw["unknown_tool"]["error"]["code"], -32602, "{raw}");
    assert_eq!(raw["foreign_origin"], 403, "{raw}");
    assert_eq!(raw["local_origin"], 200, "{raw}");
    assert_eq!(raw["foreign_host"], 403, "{raw}");
    assert_eq!(
        raw["service_host"], 200,
        "--allow-host admits the Service name: {raw}"
    );
    assert_eq!(raw["delete"], 204, "{raw}");
    // The official TypeScript SDK as the client too: it negotiates the current protocol,
    // calls the tools, receives a body over 1 MB, and ends its session cleanly.
    let ts = std::process::Command::new("node")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/mcp_client.mjs"))
        .args([&format!("http://127.0.0.1:{port}/mcp"), &token("pipeline")])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        ts.status.success(),
        "{}",
        String::from_utf8_lossy(&ts.stderr)
    );
    let ts: Value = serde_json::from_slice(&ts.stdout).unwrap();
    assert_eq!(ts["server"]["name"], "kz", "{ts}");
    assert_eq!(ts["protocol"], "2025-11-25", "{ts}");
    assert_eq!(ts["tools"], json!(["list_secrets", "resolve", "fetch"]));
    assert_eq!(ts["calls"][1]["structured"]["status"], 200, "{ts}");
    let len = ts["calls"][2]["structured"]["body"].as_str().unwrap().len();
    assert!((1_000_000..1 << 20).contains(&len), "{len}");
    assert!(!ts.to_string().contains(REAL));
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn fetch_follows_no_redirect_caps_size_and_refuses_private_addresses() {
    let (sb, up) = setup();
    let base = format!("https://api.kz.test:{}", up.port);
    let v = stdio(
        &sb,
        "pipeline",
        json!([
            {"tool": "fetch", "args": {"url": format!("{base}/redirect"), "auth": {"ref": "github", "scheme": "bearer"}}},
            {"tool": "fetch", "args": {"url": format!("{base}/big"), "auth": {"ref": "github", "scheme": "bearer"}}}
        ]),
    );
    let redirect = &v["calls"][0]["structured"];
    assert_eq!(redirect["status"], 302, "{v}");
    assert!(redirect["location"]
        .as_str()
        .unwrap()
        .contains("other.kz.test"));
    assert!(
        !up.requests().iter().any(|r| r.target == "/stolen"),
        "the redirect was not followed"
    );
    let big = &v["calls"][1]["structured"];
    assert_eq!(big["truncated"], true);
    assert!(big["body"].as_str().unwrap().len() <= 1 << 20);
    // The same bundle without allow_private: a loopback upstream whose name is not mapped in
    // network.hosts is refused (a mapped name is consent).
    let text = std::fs::read_to_string(sb.path().join("bundle.yaml")).unwrap();
    let bound = format!("hosts: [\"api.kz.test:{}\"]", up.port);
    std::fs::write(
        sb.path().join("bundle.yaml"),
        text.replace("allow_private: true", "allow_private: false")
            .replace(&bound, &format!("hosts: [\"localhost:{}\"]", up.port)),
    )
    .unwrap();
    let before = up.requests().len();
    let v = stdio(
        &sb,
        "pipeline",
        json!([
            {"tool": "fetch", "args": {"url": format!("https://localhost:{}/echo", up.port), "auth": {"ref": "github", "scheme": "bearer"}}}
        ]),
    );
    assert_eq!(v["calls"][0]["is_error"], true, "{v}");
    assert!(
        v["calls"][0]["text"]
            .as_str()
            .unwrap()
            .contains("non-public address"),
        "{v}"
    );
    assert_eq!(up.requests().len(), before);
}

#[test]
fn fetch_is_the_proxy_engine_every_field_scrubbed() {
    let (sb, up) = setup();
    let base = format!("https://api.kz.test:{}", up.port);
    let v = stdio(
        &sb,
        "pipeline",
        json!([
            {"tool": "fetch", "args": {"url": format!("{base}/echo-forms"), "auth": {"ref": "github", "scheme": "bearer"}}},
            {"tool": "fetch", "args": {"url": format!("{base}/echo-forms?enc=gzip,gzip"), "auth": {"ref": "github", "scheme": "bearer"}}},
            {"tool": "fetch", "args": {"url": format!("{base}/echo-ct"), "auth": {"ref": "github", "scheme": "bearer"}}},
            {"tool": "fetch", "args": {"url": format!("{base}/echo-forms?enc=gzip,gzip,gzip"), "auth": {"ref": "github", "scheme": "bearer"}}}
        ]),
    );
    // The upstream got the real value every time.
    let got: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.header("authorization") == Some(format!("Bearer {REAL}").as_str()))
        .collect();
    assert!(got.len() >= 3, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, call) in v["calls"].as_array().unwrap().iter().enumerate().take(3) {
        assert_eq!(call["is_error"], false, "{call}");
        let r = &call["structured"];
        assert_eq!(r["status"], 200, "{r}");
        for (field, text) in [
            ("body", r["body"].as_str().unwrap().to_string()),
            (
                "content_type",
                r["content_type"].as_str().unwrap().to_string(),
            ),
            ("headers", r["headers"].to_string()),
            ("whole", call.to_string()),
        ] {
            let f = dir.path().join(format!("{i}-{field}"));
            std::fs::write(&f, text).unwrap();
            files.push(f);
        }
    }
    let ct = v["calls"][2]["structured"]["content_type"]
        .as_str()
        .unwrap();
    assert!(ct.contains("echo=<concealed by kz>"), "{ct}");
    let check = std::process::Command::new(python())
        .arg(fixture("leak_check.py"))
        .arg(REAL)
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "clean");
    // Three layers of compression: refused, as in blind mode.
    let refused = &v["calls"][3];
    assert_eq!(refused["is_error"], true, "{refused}");
    assert!(
        refused["text"]
            .as_str()
            .unwrap()
            .contains("does not unwrap"),
        "{refused}"
    );
}

#[test]
fn fetch_refuses_a_value_too_short_to_scrub() {
    let (sb, up) = setup();
    sb.write("secret/data/prod/github", "abc");
    let v = stdio(
        &sb,
        "pipeline",
        json!([
            {"tool": "fetch", "args": {"url": format!("https://api.kz.test:{}/echo", up.port), "auth": {"ref": "github", "scheme": "bearer"}}}
        ]),
    );
    assert_eq!(v["calls"][0]["is_error"], true, "{v}");
    assert!(v["calls"][0]["text"]
        .as_str()
        .unwrap()
        .contains("too short to scrub"));
    assert!(up.requests().is_empty(), "nothing was sent");
}

#[test]
fn resolve_of_a_raw_ref_is_decided_and_logged() {
    let (sb, _up) = setup();
    let (v, log) = stdio_with_log(
        &sb,
        "pipeline",
        json!([{"tool": "resolve", "args": {"ref": "secret/data/prod/raw-thing"}}]),
    );
    assert_eq!(v["calls"][0]["structured"]["allowed"], true, "{v}");
    let line = log
        .lines()
        .find(|l| l.contains("secret/data/prod/raw-thing"))
        .unwrap_or_else(|| panic!("raw ref not in the decision log: {log}"));
    assert!(line.contains("\"action\":\"resolve\""), "{line}");
}

#[test]
fn refusals_are_logged_as_refused_and_tell_a_denied_identity_nothing() {
    let (sb, up) = setup();
    let (v, log) = stdio_with_log(
        &sb,
        "pipeline",
        json!([
            {"tool": "fetch", "args": {"url": format!("https://other.kz.test:{}/echo", up.port), "auth": {"ref": "github", "scheme": "bearer"}}}
        ]),
    );
    assert_eq!(v["calls"][0]["is_error"], true, "{v}");
    let refused = log
        .lines()
        .find(|l| l.contains("\"decision\":\"refused\""))
        .unwrap_or_else(|| panic!("the refused fetch is not logged as refused: {log}"));
    assert!(refused.contains("other.kz.test"), "{refused}");
    // A denied identity: the same answer for a secret that exists and one that does not, and
    // no bound hosts.
    let (v, _) = stdio_with_log(
        &sb,
        "support",
        json!([
            {"tool": "resolve", "args": {"ref": "github"}},
            {"tool": "resolve", "args": {"ref": "no-such-secret"}},
            {"tool": "fetch", "args": {"url": format!("https://api.kz.test:{}/echo", up.port), "auth": {"ref": "github", "scheme": "bearer"}}},
            {"tool": "fetch", "args": {"url": format!("https://api.kz.test:{}/echo", up.port), "auth": {"ref": "no-such-secret", "scheme": "bearer"}}}
        ]),
    );
    let calls = v["calls"].as_array().unwrap();
    assert_eq!(calls[0]["structured"], calls[1]["structured"], "{v}");
    assert_eq!(calls[0]["structured"]["hosts"], json!([]));
    assert_eq!(
        calls[2]["text"].as_str().unwrap().replace("github", "X"),
        calls[3]["text"]
            .as_str()
            .unwrap()
            .replace("no-such-secret", "X"),
        "{v}"
    );
    assert!(!v.to_string().contains("api.kz.test:"), "{v}");
}
