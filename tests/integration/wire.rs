//! The HTTP/1.1 wire through blind mode, byte by byte: an origin that answers with scripted
//! bytes (chunked bodies with a real value split across chunks, trailers, interim answers,
//! bodies that end at close, kept connections it drops) and a client that writes raw requests
//! (pipelined, `HEAD`, `Expect`, large bodies) through the proxy. Every answer must arrive
//! whole and framed, with real values turned back into tokens, on a client connection that
//! stays usable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::blind::REAL_GH;
use crate::util::{fixture, python, run, Sandbox};

struct Origin {
    port: u16,
    _rt: tokio::runtime::Runtime,
}

/// Reads one request (head and `Content-Length` body) from `buf`/`io`: its path and whether
/// its `Authorization` carried the real value and its body contained it.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> Option<(String, bool, bool)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 16384];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut line = head.split(' ');
    let (method, path) = (line.next()?, line.next()?);
    // A HEAD answer has no body: the path says so, for the origin below.
    let path = if method == "HEAD" {
        format!("HEAD {path}")
    } else {
        path.to_string()
    };
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.trim().to_string())
    };
    let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 65536];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
    buf.drain(..head_end + len);
    let auth_real = header("authorization").as_deref() == Some(&format!("Bearer {REAL_GH}"));
    Some((path, auth_real, body.contains(REAL_GH)))
}

fn start_origin() -> Origin {
    let (rt, listener, port, acceptor) = crate::upstream::tls_listener();
    let conns = Arc::new(AtomicUsize::new(0));
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let id = conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                while let Some((path, auth_real, body_real)) = read_request(&mut tls, &mut buf).await
                {
                    let facts = format!("conn={id} auth_real={auth_real} body_real={body_real}");
                    let ok = |body: String| {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let (wire, then_close) = match path.as_str() {
                        "/chunked" => {
                            let (a, b) = REAL_GH.split_at(9);
                            let wire = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
                                 {:x};note=1\r\nvalue {a}\r\n{:x}\r\n{b} {facts}\r\n0\r\nX-Trailer: t\r\n\r\n",
                                6 + a.len(),
                                b.len() + 1 + facts.len()
                            );
                            (wire, false)
                        }
                        "/early" => (
                            format!("HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n{}", ok(facts)),
                            false,
                        ),
                        "/close" => (
                            format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nvalue {REAL_GH} {facts}"),
                            true,
                        ),
                        "/drop" => (ok(facts), true),
                        // Past the coalescing size, and past the size scrubbed whole.
                        "/large" => (ok(format!("{}{REAL_GH} {facts}", "z".repeat(300_000))), false),
                        "/huge" => (ok(format!("{}{REAL_GH} {facts}", "z".repeat(1_500_000))), false),
                        p if p.starts_with("HEAD ") => (
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", facts.len()),
                            false,
                        ),
                        _ => (ok(facts), false),
                    };
                    if tls.write_all(wire.as_bytes()).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    if then_close {
                        let _ = tls.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    Origin { port, _rt: rt }
}

/// The raw client: CONNECT through kz's proxy, TLS with kz's CA, then scripted requests.
const CLIENT: &str = r#"
import base64, json, os, socket, ssl, sys, time, urllib.parse
p = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
HOST, PORT, TOK = "api.kz.test", int(os.environ["UPPORT"]), os.environ["GH"]

def connect():
    s = socket.create_connection((p.hostname, p.port))
    cred = base64.b64encode(("%s:%s" % (urllib.parse.unquote(p.username), urllib.parse.unquote(p.password))).encode()).decode()
    s.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\nProxy-Authorization: Basic %s\r\n\r\n" % (HOST, PORT, HOST, PORT, cred)).encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(1)
    assert b" 200" in got.split(b"\r\n")[0], got
    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    ctx.set_alpn_protocols(["http/1.1"])
    return Reader(ctx.wrap_socket(s, server_hostname=HOST))

class Reader:
    def __init__(self, s):
        self.s, self.buf = s, b""
    def fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("closed")
        self.buf += d
    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l
    def take(self, n):
        while len(self.buf) < n:
            self.fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d
    def response(self, head=False):
        while True:
            status = int(self.line().split(b" ")[1])
            headers = {}
            while True:
                l = self.line()
                if not l:
                    break
                k, v = l.split(b":", 1)
                headers[k.strip().lower().decode()] = v.strip().decode()
            if status >= 200:
                break
        body = b""
        if head or status in (204, 304):
            pass
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line():
                        pass
                    break
                body += self.take(size)
                assert self.take(2) == b"\r\n"
        elif "content-length" in headers:
            body = self.take(int(headers["content-length"]))
        else:
            raise AssertionError("unframed response to the client: %r" % headers)
        return {"status": status, "headers": headers, "body": body.decode()}
    def send(self, data):
        self.s.sendall(data.encode() if isinstance(data, str) else data)

def get(path, method="GET", extra=""):
    return "%s %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n%s\r\n" % (method, path, HOST, PORT, TOK, extra)

out = {"tok": TOK}
c = connect()
# Two requests in one write (pipelined), then the rest one by one on the same connection.
c.send(get("/a") + get("/b"))
out["pipelined"] = [c.response(), c.response()]
c.send(get("/chunked")); out["chunked"] = c.response()
c.send(get("/early")); out["early"] = c.response()
c.send(get("/a", "HEAD")); out["head"] = c.response(head=True)
c.send(get("/close")); out["close"] = c.response()
c.send(get("/after-close")); out["after_close"] = c.response()
for big in ("large", "huge"):
    c.send(get("/" + big)); r = c.response()
    r["length"], r["body"] = len(r["body"]), r["body"][-120:]
    out[big] = r
c.send(get("/drop")); out["drop"] = c.response()
time.sleep(0.5)
c.send(get("/after-drop")); out["after_drop"] = c.response()
body = "x" * 40 + TOK
c.send(get("/small-body", "POST", "Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)) + body)
out["small_body"] = c.response()
# Past the express path: Expect, then a body over 64 KiB; both swapped by the general path.
c.send(get("/expect", "POST", "Content-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: %d\r\n" % len(body)))
c.send(body); out["expect"] = c.response()
big = "y" * 70000 + TOK
c.send(get("/big", "POST", "Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(big)) + big)
out["big"] = c.response()
c.send(get("/after-big")); out["after_big"] = c.response()
# A header value with a byte no header may hold (DEL) is refused, never forwarded.
c = connect()
c.send("GET /del HTTP/1.1\r\nHost: %s:%d\r\nX-Pad: %s\x7fz\r\n\r\n" % (HOST, PORT, "p" * 80))
out["del"] = c.response()
print(json.dumps(out))
"#;

#[test]
fn http1_framing_survives_the_express_path_and_its_handover() {
    let origin = start_origin();
    let sb = Sandbox::new();
    sb.config(&format!(
        r#"
[secrets]
GH = {{ provider = "env", ref = "REAL_GH", hosts = ["api.kz.test:{port}"], swap = ["headers", "body"] }}

[network]
hosts = {{ "api.kz.test" = "127.0.0.1" }}
upstream_ca = {ca:?}
allow_private = true
"#,
        port = origin.port,
        ca = fixture("tls/ca.pem").to_str().unwrap(),
    ));
    let client = sb.write("client.py", CLIENT);
    let (code, out, err) = run(sb
        .kz()
        .env("REAL_GH", REAL_GH)
        .env("UPPORT", origin.port.to_string())
        .args(["run", "--blind", "--no-mask", "--"])
        .arg(python())
        .arg(client));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        !out.contains(REAL_GH),
        "a real value reached the client: {out}"
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let body = |k: &str| v[k]["body"].as_str().unwrap().to_string();
    for k in [
        "chunked",
        "early",
        "head",
        "close",
        "after_close",
        "drop",
        "after_drop",
        "small_body",
        "expect",
        "big",
        "after_big",
    ] {
        assert_eq!(v[k]["status"], 200, "{k}: {}", v[k]);
    }
    // Pipelined requests are both answered, in order, on one upstream connection.
    let (a, b) = (&v["pipelined"][0], &v["pipelined"][1]);
    assert!(
        a["body"]
            .as_str()
            .unwrap()
            .contains("conn=0 auth_real=true"),
        "{a}"
    );
    assert!(
        b["body"]
            .as_str()
            .unwrap()
            .contains("conn=0 auth_real=true"),
        "{b}"
    );
    // A real value split across two chunks is still scrubbed; the trailers end the body.
    let tok = v["tok"].as_str().unwrap();
    let scrubbed = format!("value {tok} ");
    assert!(
        body("chunked").starts_with(&scrubbed),
        "{}",
        body("chunked")
    );
    assert!(body("chunked").contains("conn=0"), "{}", body("chunked"));
    // The interim 103 is dropped; the final answer arrives.
    assert!(body("early").contains("auth_real=true"));
    // HEAD: the length is kept and no body follows (the next response parsed cleanly).
    assert!(v["head"]["headers"]["content-length"].as_str().is_some());
    // A body that ends at the origin's close reaches the client framed, scrubbed; the client
    // connection lives on with a new upstream connection.
    assert!(body("close").starts_with(&scrubbed), "{}", body("close"));
    assert!(
        body("after_close").contains("conn=1"),
        "{}",
        body("after_close")
    );
    // Large bodies: written without copying (kept length), and streamed (chunked), scrubbed.
    for (k, zs) in [("large", 300_000), ("huge", 1_500_000)] {
        assert_eq!(v[k]["status"], 200, "{k}");
        let want = zs + tok.len() + 1 + "conn=1 auth_real=true body_real=false".len();
        assert_eq!(v[k]["length"], want, "{k}");
        assert!(
            body(k).contains(&format!("z{tok} conn=1")),
            "{k}: {}",
            body(k)
        );
    }
    assert!(v["large"]["headers"]["content-length"].is_string());
    assert_eq!(v["huge"]["headers"]["transfer-encoding"], "chunked");
    // A kept connection the origin dropped is replaced without the client noticing.
    assert!(
        body("after_drop").contains("conn=2 auth_real=true"),
        "{}",
        body("after_drop")
    );
    for k in ["small_body", "expect", "big"] {
        assert!(body(k).contains("body_real=true"), "{k}: {}", body(k));
    }
    assert!(body("after_big").contains("auth_real=true"));
    // The origin answers 200 to anything: a 400 is kz's refusal (a DEL is no header byte).
    assert_eq!(v["del"]["status"], 400, "{}", v["del"]);
}
