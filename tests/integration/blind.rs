//! Blind mode end to end: real clients (curl, Python requests/httpx/openai, Node fetch via
//! undici, git) through `kz run --blind` to a local TLS upstream with its own CA. The upstream
//! must see the real value; the child must only ever see tokens. Then the attacks.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use crate::upstream::{self, Upstream};
use crate::util::{fixture, python, run, Sandbox};

pub const REAL_GH: &str = "ghp_REALvalue_0123456789abcdef";
pub const REAL_OTHER: &str = "other-REAL-secret-9876";

pub struct Blind {
    pub sb: Sandbox,
    pub up: Upstream,
}

impl Blind {
    pub fn new() -> Self {
        Self::with_network("allow_private = true\n")
    }

    pub fn with_network(network: &str) -> Self {
        let sb = Sandbox::new();
        let up = upstream::start();
        let port = up.port;
        sb.config(&format!(
            r#"
[secrets]
GH = {{ provider = "env", ref = "REAL_GH", hosts = ["api.kz.test:{port}"], swap = ["headers", "query", "path", "body"] }}
OTHER = {{ provider = "env", ref = "REAL_OTHER", hosts = ["other.kz.test"] }}

[network]
hosts = {{ "api.kz.test" = "127.0.0.1", "other.kz.test" = "127.0.0.1", "evil.kz.test" = "127.0.0.1" }}
upstream_ca = {ca:?}
{network}
[audit]
path = "audit.jsonl"

# The checkout (test clients, the venv) may lie under /tmp, which --isolate makes private.
[isolate]
expose = [{repo:?}]
"#,
            ca = fixture("tls/ca.pem").to_str().unwrap(),
            repo = env!("CARGO_MANIFEST_DIR")
        ));
        Blind { sb, up }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.up.port)
    }

    /// `kz run --blind --no-mask -- sh -c SCRIPT` (no masking: scrubbing alone must protect).
    pub fn run_sh(&self, script: &str) -> (i32, String, String) {
        self.run_sh_with(script, &[])
    }

    /// `run_sh` with more variables in kz's own environment.
    pub fn run_sh_with(&self, script: &str, env: &[(&str, &str)]) -> (i32, String, String) {
        self.run_sh_via(&[], script, env)
    }

    /// `run_sh_with`, kz started through `wrapper` (see `Sandbox::kz_via`).
    pub fn run_sh_via(
        &self,
        wrapper: &[&str],
        script: &str,
        env: &[(&str, &str)],
    ) -> (i32, String, String) {
        let mut cmd = self.sb.kz_via(wrapper);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd
            .env("REAL_GH", REAL_GH)
            .env("REAL_OTHER", REAL_OTHER)
            .env("UP", self.url("api.kz.test", ""))
            .env("OTHER_UP", self.url("other.kz.test", ""))
            .env("EVIL_UP", self.url("evil.kz.test", ""))
            .env("PY", python())
            .env("TEST_CA", fixture("tls/ca.pem"))
            .env(
                "NODE_PATH",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules"),
            )
            .args(["run", "--blind", "--no-mask", "--", "sh", "-c", script]))
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.sb.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The audit line of a tunnel to `host`, which must have carried bytes both ways.
    pub fn assert_tunnel_audited(&self, host: &str) {
        let audit = self.audit();
        let tunnel = audit
            .iter()
            .find(|l| l["event"] == "tunnel" && l["host"] == host)
            .unwrap_or_else(|| panic!("no tunnel line for {host}: {audit:?}"));
        assert!(tunnel["bytes_out"].as_u64().unwrap() > 0, "{tunnel}");
        assert!(tunnel["bytes_in"].as_u64().unwrap() > 0, "{tunnel}");
    }
}

fn assert_no_real_value(out: &str, err: &str) {
    for v in [REAL_GH, REAL_OTHER] {
        assert!(
            !out.contains(v) && !err.contains(v),
            "the child saw a real value:\n{out}\n{err}"
        );
    }
}

#[test]
fn curl_gets_tokens_and_the_upstream_gets_the_value() {
    let b = Blind::new();
    let (code, out, err) = b.run_sh(
        r#"echo "env=$GH"; case "$GH" in ghp_*) ;; *) exit 9;; esac
           curl -sS --fail -i "$UP/echo" -H "Authorization: Bearer $GH""#,
    );
    assert_eq!(code, 0, "{out}{err}");
    let token = out
        .lines()
        .next()
        .unwrap()
        .strip_prefix("env=")
        .unwrap()
        .to_string();
    assert!(
        token.starts_with("ghp_") && token.len() >= REAL_GH.len() && kz::api::is_token(&token),
        "the token keeps the value's shape: {token}"
    );
    let seen = b.up.last();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {REAL_GH}").as_str())
    );
    assert!(
        crate::util::tokens_in(&seen.all()).is_empty(),
        "no token reaches a bound host"
    );
    // The upstream echoed the credential in a header and the body: both scrubbed to the token.
    let lower = out.to_ascii_lowercase();
    assert!(
        lower.contains(&format!(
            "x-echo-authorization: bearer {}",
            token.to_ascii_lowercase()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("authorization: Bearer {token}")),
        "{out}"
    );
    assert_no_real_value(&out, &err);
    // Audit: one line for the request, names only.
    let audit = b.audit();
    let req = audit
        .iter()
        .find(|l| l["event"] == "request")
        .expect("request audited");
    assert_eq!(req["host"], "api.kz.test");
    assert_eq!(req["method"], "GET");
    assert_eq!(req["path"], "/echo");
    assert_eq!(req["secrets"], serde_json::json!(["GH"]));
    assert_eq!(req["status"], 200);
    let text = std::fs::read_to_string(b.sb.path().join("audit.jsonl")).unwrap();
    assert!(
        !text.contains(REAL_GH) && crate::util::tokens_in(&text).is_empty(),
        "{text}"
    );
}

#[test]
fn child_environment_has_proxy_and_ca_variables() {
    let b = Blind::new();
    let (code, out, err) = run(b
        .sb
        .kz()
        .env("REAL_GH", REAL_GH)
        .env("REAL_OTHER", REAL_OTHER)
        .env("NO_PROXY", "corp.internal")
        .args(["run", "--blind", "--", "sh", "-c", "env | sort; stat -c '%a %n' \"$SSL_CERT_FILE\" \"$KZ_CA_CERT\" \"$(dirname $KZ_CA_CERT)\"; grep -c BEGIN \"$SSL_CERT_FILE\"; echo dir=$(dirname $KZ_CA_CERT)"]));
    assert_eq!(code, 0, "{err}");
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing:\n{out}"))
            .to_string()
    };
    let proxy = get("HTTPS_PROXY");
    assert!(
        proxy.starts_with("http://kz:") && proxy.contains("@127.0.0.1:"),
        "{proxy}"
    );
    for k in ["HTTP_PROXY", "http_proxy", "https_proxy"] {
        assert_eq!(get(k), proxy);
    }
    assert_eq!(get("NO_PROXY"), "corp.internal,localhost,127.0.0.1,::1");
    assert_eq!(get("NODE_USE_ENV_PROXY"), "1");
    let bundle = get("SSL_CERT_FILE");
    for k in [
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "AWS_CA_BUNDLE",
        "PIP_CERT",
        "CARGO_HTTP_CAINFO",
        "DENO_CERT",
    ] {
        assert_eq!(get(k), bundle, "{k}");
    }
    assert!(out.contains(&format!("600 {bundle}")), "{out}");
    assert!(out.contains("700 "), "private directory: {out}");
    let certs: usize = out.lines().find_map(|l| l.parse().ok()).unwrap();
    assert!(certs > 10, "system roots plus kz's CA: {certs}");
    assert!(get("GH").starts_with("ghp_") && get("OTHER").starts_with("KZ_TOK_"));
    assert!(kz::api::is_token(&get("GH")) && kz::api::is_token(&get("OTHER")));
    assert_ne!(get("GH"), get("OTHER"));
    assert!(!out.contains(REAL_GH));
    // The temporary directory is gone after the run.
    let dir = get("dir");
    assert!(!Path::new(&dir).exists(), "{dir} left behind");
}

#[test]
fn a_secret_without_hosts_is_a_startup_error() {
    let sb = Sandbox::new();
    sb.config("[secrets]\nA = { provider = \"env\", ref = \"X\" }\nB = { provider = \"env\", ref = \"Y\", hosts = [\"b.example\"] }\nC = \"env://Z\"\n");
    let marker = sb.path().join("ran");
    let (code, _, err) = run(sb
        .kz()
        .env("X", "1")
        .args(["run", "--blind", "--", "touch"])
        .arg(&marker));
    assert_eq!(code, 125);
    assert!(!marker.exists());
    assert!(
        err.contains("kz: A: blind mode needs hosts")
            && err.contains("kz: C: blind mode needs hosts"),
        "{err}"
    );
    assert!(!err.contains("kz: B:"), "{err}");
}

#[test]
fn python_requests_httpx_and_the_openai_sdk() {
    let b = Blind::new();
    let script = r#"
import os, requests, httpx, openai
up, tok = os.environ["UP"], os.environ["GH"]
r = requests.post(up + "/echo", json={"token": tok, "n": 1}, headers={"X-Api-Key": tok})
print("requests", r.status_code, r.text.count(tok))
r = httpx.get(up + "/echo", params={"key": tok})
print("httpx", r.status_code, r.text.count(tok))
client = openai.OpenAI(base_url=up + "/v1", api_key=tok)
c = client.chat.completions.create(model="kz-test", messages=[{"role": "user", "content": "hi"}])
print("openai", c.choices[0].message.content == "you sent: Bearer " + tok)
"#;
    let (code, out, err) = b.run_sh(&format!("\"$PY\" -c '{}'", script.replace('\'', "'\\''")));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("requests 200 2"),
        "json body and header echoed back as the token: {out}"
    );
    assert!(out.contains("httpx 200 1"), "{out}");
    assert!(
        out.contains("openai True"),
        "the echoed bearer came back as the token: {out}"
    );
    assert_no_real_value(&out, &err);
    let reqs = b.up.requests();
    let post = reqs.iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(post.header("x-api-key"), Some(REAL_GH));
    let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(body["token"], REAL_GH);
    assert_eq!(
        post.header("content-length"),
        Some(post.body.len().to_string().as_str()),
        "content-length kept exact"
    );
    assert!(
        reqs.iter()
            .any(|r| r.target == format!("/echo?key={REAL_GH}")),
        "query swapped"
    );
    let chat = reqs
        .iter()
        .find(|r| r.target == "/v1/chat/completions")
        .unwrap();
    assert_eq!(
        chat.header("authorization"),
        Some(format!("Bearer {REAL_GH}").as_str())
    );
}

#[test]
fn node_fetch_with_undici_env_proxy_agent() {
    let b = Blind::new();
    let script = r#"
const { EnvHttpProxyAgent, setGlobalDispatcher } = require("undici");
setGlobalDispatcher(new EnvHttpProxyAgent());
const { fetch } = require("undici");
fetch(process.env.UP + "/echo", { headers: { authorization: "token " + process.env.GH } })
  .then(r => r.text().then(t => console.log("node", r.status, t.includes(process.env.GH))))
  .catch(e => { console.error(e); process.exit(3); });
"#;
    let (code, out, err) = b.run_sh(&format!("node -e '{}'", script.replace('\'', "'\\''")));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("node 200 true"), "{out}");
    assert_eq!(
        b.up.last().header("authorization"),
        Some(format!("token {REAL_GH}").as_str())
    );
    assert_no_real_value(&out, &err);
}

#[test]
fn git_over_https_with_basic_credentials() {
    let b = Blind::new();
    let (code, out, err) = b.run_sh(
        r#"git -c credential.helper= ls-remote "https://x-access-token:$GH@api.kz.test:${UP##*:}/git/repo.git""#,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("refs/heads/main"), "{out}");
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{REAL_GH}"))
    );
    assert!(
        b.up.requests()
            .iter()
            .any(|r| r.header("authorization") == Some(expected.as_str())),
        "upstream saw the real value inside Basic credentials"
    );
    assert_no_real_value(&out, &err);
}

#[test]
fn http2_end_to_end() {
    let b = Blind::new();
    let (code, out, err) = b.run_sh(r#"curl -sS --fail --http2 -o /dev/null -w '%{http_version}\n' "$UP/h2" -H "Authorization: Bearer $GH""#);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "2", "client side spoke HTTP/2");
    let seen = b.up.last();
    assert_eq!(seen.version, "HTTP/2.0", "upstream side spoke HTTP/2");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {REAL_GH}").as_str())
    );
}

#[test]
fn server_sent_events_arrive_as_they_are_sent() {
    let b = Blind::new();
    let mut child =
        b.sb.kz()
            .env("REAL_GH", REAL_GH)
            .env("REAL_OTHER", REAL_OTHER)
            .env("UP", b.url("api.kz.test", ""))
            .args([
                "run",
                "--blind",
                "--",
                "sh",
                "-c",
                "curl -sS -N \"$UP/sse\" -H \"Authorization: Bearer $GH\"",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut first = None;
    let mut second = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line == "data: first" {
            first = Some(Instant::now());
        }
        if line == "data: second" {
            second = Some(Instant::now());
        }
    }
    assert!(child.wait().unwrap().success());
    let gap = second.unwrap() - first.expect("first event arrived");
    assert!(
        gap.as_millis() >= 1200,
        "first event must arrive before the stream ends (gap {gap:?})"
    );
}

#[test]
fn websocket_handshake_is_swapped_then_frames_pass() {
    let b = Blind::new();
    let script = r#"
import os, socket, ssl, base64, re
p = os.environ["HTTPS_PROXY"]
cred, hostport = p[len("http://"):].split("@")
ph, pp = hostport.split(":")
port = int(os.environ["UP"].rsplit(":", 1)[1])
s = socket.create_connection((ph, int(pp)))
s.sendall(("CONNECT api.kz.test:%d HTTP/1.1\r\nHost: api.kz.test:%d\r\nProxy-Authorization: Basic %s\r\n\r\n" % (port, port, base64.b64encode(cred.encode()).decode())).encode())
assert s.recv(4096).startswith(b"HTTP/1.1 200"), "connect"
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.set_alpn_protocols(["http/1.1"])
t = ctx.wrap_socket(s, server_hostname="api.kz.test")
t.sendall(("GET /ws HTTP/1.1\r\nHost: api.kz.test:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n" % (port, os.environ["GH"])).encode())
head = b""
while b"\r\n\r\n" not in head:
    head += t.recv(4096)
print(head.split(b"\r\n")[0].decode())
print("accept-ok", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head)
payload = b"hello " + os.environ["GH"].encode()[:8]
mask = b"\x01\x02\x03\x04"
t.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
data = head.split(b"\r\n\r\n", 1)[1]
while len(data) < 2 or len(data) < 2 + data[1]:
    data += t.recv(4096)
print("frame", data[2:2 + data[1]].decode())
"#;
    let (code, out, err) = b.run_sh(&format!("\"$PY\" -c '{}'", script.replace('\'', "'\\''")));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("HTTP/1.1 101"), "{out}");
    assert!(out.contains("accept-ok True"), "{out}");
    assert!(
        out.contains("frame echo:hello ghp_"),
        "frames pass unchanged: {out}"
    );
    assert_eq!(
        b.up.last().header("authorization"),
        Some(format!("Bearer {REAL_GH}").as_str())
    );
}

/// Python that opens `t`, TLS to api.kz.test (HTTP/1.1) through kz's explicit proxy, and sets
/// `port` (the test upstream's) and `res` (the first argument); `get` sends a request and reads
/// its head, `UPGRADE` holds a WebSocket handshake's headers.
const TLS_TO_API: &str = r#"
import os, socket, ssl, base64, sys
res = sys.argv[1]
cred, hostport = os.environ["HTTPS_PROXY"][len("http://"):].split("@")
ph, pp = hostport.split(":")
port = int(os.environ["UP"].rsplit(":", 1)[1])
s = socket.create_connection((ph, int(pp)))
s.sendall(("CONNECT api.kz.test:%d HTTP/1.1\r\nProxy-Authorization: Basic %s\r\n\r\n" % (port, base64.b64encode(cred.encode()).decode())).encode())
assert s.recv(4096).startswith(b"HTTP/1.1 200"), "connect"
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.set_alpn_protocols(["http/1.1"])
t = ctx.wrap_socket(s, server_hostname="api.kz.test")
UPGRADE = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
def get(t, path, extra, status):
    t.sendall(("GET %s HTTP/1.1\r\nHost: api.kz.test:%d\r\n%s\r\n" % (path, port, extra)).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += t.recv(4096)
    assert data.startswith(b"HTTP/1.1 " + status), data
    return data.split(b"\r\n\r\n", 1)[1]
"#;

/// Runs `script` (Python, after `TLS_TO_API`) in the background of an agent that exits once the
/// script has created `$res.open`. Returns how long `kz run` took and what the script wrote to
/// `res` after that (it keeps running past the agent); `None` if it wrote nothing in 10 s.
fn outlive_the_agent(b: &Blind, name: &str, script: &str) -> (std::time::Duration, Option<String>) {
    let result = b.sb.path().join(name);
    let script = format!("{TLS_TO_API}{script}").replace('\'', "'\\''");
    let started = std::time::Instant::now();
    let (code, out, err) = b.run_sh_with(
        &format!(
            "\"$PY\" -c '{script}' \"$RES\" >\"$RES.log\" 2>&1 &\nfor i in $(seq 200); do [ -e \"$RES.open\" ] && break; sleep 0.05; done\n[ -e \"$RES.open\" ] || echo not-open\ntouch \"$RES.exiting\""
        ),
        &[("RES", result.to_str().unwrap())],
    );
    let took = started.elapsed();
    let log = std::fs::read_to_string(result.with_extension("log")).unwrap_or_default();
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("not-open"), "{out}{err}{log}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !result.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (took, std::fs::read_to_string(&result).ok())
}

#[test]
fn a_websocket_open_when_the_agent_exits_gets_a_going_away_close() {
    let b = Blind::new();
    // A background client holds a WebSocket open when the agent's shell exits. Its frame pumps
    // run under the connection's drain: kz tells it it is going away (close 1001) and ends.
    let (took, seen) = outlive_the_agent(
        &b,
        "ws",
        r#"
data = get(t, "/ws", UPGRADE, b"101")
open(res + ".open", "w").close()
t.settimeout(20)
result = "eof"
try:
    while True:
        while len(data) < 2 or len(data) < 2 + (data[1] & 0x7f):
            chunk = t.recv(4096)
            if not chunk:
                raise EOFError
            data += chunk
        op, n = data[0] & 0x0f, data[1] & 0x7f
        body, data = data[2:2 + n], data[2 + n:]
        if op == 8:
            result = "close %d %s" % (int.from_bytes(body[:2], "big"), body[2:].decode())
            break
except EOFError:
    pass
except Exception as e:
    result = "error %r" % e
with open(res + ".tmp", "w") as f:
    f.write(result)
os.rename(res + ".tmp", res)
"#,
    );
    assert!(
        took < std::time::Duration::from_secs(8),
        "kz run took {took:?}"
    );
    assert_eq!(seen.as_deref(), Some("close 1001 kz: shutting down"));
}

#[test]
fn upgraded_websockets_count_against_the_connection_cap() {
    let b = Blind::new();
    // kz with 256 descriptors serves at most (256 - 64) / 2 = 96 connections at once (see
    // src/serve.rs); an upgraded WebSocket is still one of them. The agent opens WebSockets
    // until one is not answered within 5 s, closes one, and the waiting one is then served.
    let script = format!(
        "{TLS_TO_API}{}",
        r#"
socks = [t]
def upgrade(t, wait):
    t.settimeout(wait)
    get(t, "/ws", UPGRADE, b"101")
upgrade(t, 10)
waiting = None
while len(socks) < 150:
    try:
        s = socket.create_connection((ph, int(pp)), timeout=5)
        s.sendall(("CONNECT api.kz.test:%d HTTP/1.1\r\nProxy-Authorization: Basic %s\r\n\r\n" % (port, base64.b64encode(cred.encode()).decode())).encode())
        s.recv(4096)
    except socket.timeout:
        waiting = s
        break
    w = ctx.wrap_socket(s, server_hostname="api.kz.test")
    upgrade(w, 10)
    socks.append(w)
print("served", len(socks))
socks.pop().close()
waiting.settimeout(10)
assert waiting.recv(4096).startswith(b"HTTP/1.1 200"), "the waiting connection"
print("then served")
"#
    );
    let (code, out, err) = b.run_sh_via(
        &["prlimit", "--nofile=256:256"],
        &format!("\"$PY\" -c '{}' x", script.replace('\'', "'\\''")),
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("served 96\n"), "{out}{err}");
    assert!(out.contains("then served"), "{out}{err}");
}

#[test]
fn an_idle_keep_alive_connection_closes_as_soon_as_the_agent_exits() {
    let b = Blind::new();
    // A background client keeps its connection open after one request (the express path).
    // When the agent's shell exits, kz's drain closes the idle connection at once rather than
    // at the end of the drain time (2 s).
    let (_, seen) = outlive_the_agent(
        &b,
        "idle",
        &format!(
            "import time{}",
            r#"
get(t, "/echo", "", b"200")
open(res + ".open", "w").close()
while not os.path.exists(res + ".exiting"):
    time.sleep(0.01)
t0 = time.monotonic()
t.settimeout(20)
try:
    while t.recv(4096):
        pass
except (ssl.SSLError, OSError):
    pass
with open(res + ".tmp", "w") as f:
    f.write("%.3f" % (time.monotonic() - t0))
os.rename(res + ".tmp", res)
"#
        ),
    );
    let closed_after: f64 = seen.expect("the client wrote no result").parse().unwrap();
    assert!(
        closed_after < 1.5,
        "the idle connection closed {closed_after} s after the agent exited"
    );
}

#[test]
fn streamed_request_bodies_are_swapped_across_chunks() {
    let b = Blind::new();
    // A chunked upload (HTTP/1.1) whose token straddles chunk boundaries: 5-byte chunks.
    let script = r#"
import os, time, requests
tok = os.environ["GH"]
def gen():
    yield b"start "
    for i in range(0, len(tok), 5):
        yield tok[i:i + 5].encode()
        time.sleep(0.02)
    yield b" end"
r = requests.post(os.environ["UP"] + "/upload", data=gen(), headers={"Content-Type": "text/plain"})
print(r.status_code)
"#;
    let (code, out, err) = b.run_sh(&format!("\"$PY\" -c '{}'", script.replace('\'', "'\\''")));
    assert_eq!(code, 0, "{out}{err}");
    let seen = b.up.last();
    assert_eq!(
        String::from_utf8_lossy(&seen.body),
        format!("start {REAL_GH} end"),
        "{err}"
    );
    assert!(seen.header("content-length").is_none());
}

#[test]
fn upstream_tls_is_verified() {
    // Without upstream_ca the test upstream's certificate is not trusted: kz refuses to send.
    let sb = Sandbox::new();
    let up = upstream::start();
    sb.config(
        "[secrets]\nGH = { provider = \"env\", ref = \"REAL_GH\", hosts = [\"api.kz.test\"] }\n[network]\nhosts = { \"api.kz.test\" = \"127.0.0.1\" }\nallow_private = true\n",
    );
    let (code, out, err) = run(sb
        .kz()
        .env("REAL_GH", REAL_GH)
        .env("UP", format!("https://api.kz.test:{}", up.port))
        .args([
            "run",
            "--blind",
            "--",
            "sh",
            "-c",
            "curl -sS -w '\\n%{http_code}\\n' \"$UP/x\" -H \"Authorization: Bearer $GH\"",
        ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("502") && out.contains("certificate"), "{out}");
    assert!(up.requests().is_empty());
}

#[test]
fn keep_alive_survives_an_upstream_that_closes_its_connection() {
    let b = Blind::new();
    // One client connection, three requests; the upstream closes its side after the first.
    let (code, out, err) = b.run_sh(
        r#"curl -sS --fail -H "Authorization: Bearer $GH" "$UP/close" "$UP/echo" "$UP/echo" -w '%{num_connects}\n'"#,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("closing"), "{out}");
    assert_eq!(out.matches("GET /echo").count(), 2, "{out}");
    let connects: Vec<&str> = out.lines().filter(|l| l.len() == 1).collect();
    assert_eq!(
        connects,
        vec!["1", "0", "0"],
        "the client kept its one connection: {out}"
    );
    assert_eq!(b.up.requests().len(), 3);
}
