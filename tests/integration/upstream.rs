//! A local HTTPS upstream for blind-mode tests, with its own test CA (`tests/fixtures/tls`):
//! HTTP/1.1 and HTTP/2 (ALPN), and endpoints that record, echo (plain and gzip), stream
//! server-sent events, speak enough git smart HTTP for `git ls-remote`, answer like the OpenAI
//! chat API, and echo WebSocket frames.

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::fixture;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: String,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Everything the upstream received, as text, for "contains" checks.
    pub fn all(&self) -> String {
        let mut s = format!("{} {} {}\n", self.method, self.target, self.version);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }
}

pub struct Upstream {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn last(&self) -> Seen {
        self.requests()
            .last()
            .cloned()
            .expect("upstream received a request")
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut std::fs::read(fixture("tls/server.pem")).unwrap().as_slice())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pemfile::private_key(
        &mut std::fs::read(fixture("tls/server.key")).unwrap().as_slice(),
    )
    .unwrap()
    .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A runtime for a test server, a listener on a loopback port, that port, and a TLS acceptor
/// with the test CA's server certificate.
pub fn tls_listener() -> (
    tokio::runtime::Runtime,
    tokio::net::TcpListener,
    u16,
    tokio_rustls::TlsAcceptor,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    (
        rt,
        listener,
        port,
        tokio_rustls::TlsAcceptor::from(tls_config()),
    )
}

pub fn start() -> Upstream {
    let (rt, listener, port, acceptor) = tls_listener();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| handle(req, seen.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Upstream {
        port,
        seen,
        _rt: rt,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A brotli stream (RFC 7932) holding `data` in one uncompressed meta-block: window 16,
/// MLEN in four nibbles, then an empty last meta-block. Enough to test decoding without an
/// encoder.
fn brotli_stored(data: &[u8]) -> Vec<u8> {
    assert!(!data.is_empty() && data.len() <= 1 << 16);
    let header = (((data.len() - 1) as u32) << 4) | (1 << 20);
    let mut out = header.to_le_bytes()[..3].to_vec();
    out.extend_from_slice(data);
    out.push(0x03);
    out
}

/// The `Sec-WebSocket-Accept` answer to a client key.
fn ws_accept(key: &str) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// A `101` accepting a WebSocket upgrade.
fn switching_protocols(accept: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert("upgrade", "websocket".parse().unwrap());
    r.headers_mut()
        .insert("connection", "Upgrade".parse().unwrap());
    r.headers_mut()
        .insert("sec-websocket-accept", accept.parse().unwrap());
    r
}

fn hex(v: &str) -> String {
    v.bytes().map(|b| format!("{b:02x}")).collect()
}

fn percent_lower(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// Every form of `v` an echoing upstream might use, keyed by the form's name.
pub fn echo_corpus(v: &str) -> serde_json::Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Every other character as a \uXXXX escape, and every character escaped.
    let mixed: String = v
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect();
    let all_escaped: String = v.chars().map(|c| format!("\\u{:04X}", c as u32)).collect();
    serde_json::json!({
        "raw": v,
        "hex": hex(v),
        "hex_upper": hex(v).to_ascii_uppercase(),
        "pct_lower": percent_lower(v),
        "b64": b64.encode(v),
        "b64url": url.encode(v),
        "b64_inside": b64.encode(format!("user:{v}")),
        "json_mixed": serde_json::Value::String(format!("RAWJSON:{mixed}")),
        "json_all": serde_json::Value::String(format!("RAWJSON:{all_escaped}")),
        "slash": v.replace('/', "\\/"),
        "b64_wrapped60": wrap(&b64.encode(format!("some file content {v} more content")), 60, "\n"),
        "b64_wrapped76": wrap(&b64.encode(format!("x{v}")), 76, "\r\n"),
        "b64_wrapped64": wrap(&b64.encode(format!("ab{v}")), 64, "\n"),
        "b64_wrapped17": wrap(&b64.encode(v), 17, "\r\n"),
        "hex_wrapped60": wrap(&hex(&format!("xxd -p {v}")), 60, "\n"),
        "raw_wrapped": wrap(v, 40, "\n"),
    })
}

/// Base64 text broken into lines of `width`, as MIME, PEM and file-content APIs do.
fn wrap(text: &str, width: usize, sep: &str) -> String {
    text.as_bytes()
        .chunks(width)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(sep)
}

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

async fn handle(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Body>, Infallible> {
    let ws_upgrade = hyper::upgrade::on(&mut req);
    let version = format!("{:?}", req.version());
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Some(a) = req.uri().authority() {
        headers.push((":authority".into(), a.to_string()));
    }
    let ws_key = req
        .headers()
        .get("sec-websocket-key")
        .map(|v| v.to_str().unwrap().to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let s = Seen {
        version,
        method,
        target,
        headers,
        body,
    };
    seen.lock().unwrap().push(s.clone());
    let echo = || {
        let mut dump = s.all();
        dump.push('\n');
        dump
    };
    let resp = match path.as_str() {
        "/echo" => {
            let mut r = Response::new(full(echo()));
            if let Some(a) = s.header("authorization") {
                r.headers_mut()
                    .insert("x-echo-authorization", a.parse().unwrap());
            }
            r
        }
        // The credential echoed in the content type, the status line's neighbours and a
        // custom header, upper-cased and in hex.
        "/echo-ct" => {
            let v = s
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("")
                .to_string();
            let mut r = Response::new(full(format!(
                "{} {}\n",
                v.to_ascii_uppercase(),
                hex(&v).to_ascii_uppercase()
            )));
            r.headers_mut().insert(
                "content-type",
                format!("text/plain; charset=utf-8; echo={v}")
                    .parse()
                    .unwrap(),
            );
            r.headers_mut()
                .insert("x-echo-hex", hex(&v).parse().unwrap());
            r
        }
        "/redirect" => {
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::FOUND;
            let port = s
                .header(":authority")
                .or(s.header("host"))
                .and_then(|h| h.rsplit(':').next())
                .unwrap_or("443")
                .to_string();
            r.headers_mut().insert(
                "location",
                format!("https://other.kz.test:{port}/stolen")
                    .parse()
                    .unwrap(),
            );
            r
        }
        "/big" => Response::new(full(vec![b'x'; 3 << 20])),
        "/close" => {
            let mut r = Response::new(full("closing\n"));
            r.headers_mut()
                .insert("connection", "close".parse().unwrap());
            r
        }
        "/echo-gzip" => {
            let mut r = Response::new(full(gzip(echo().as_bytes())));
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r
        }
        // The bearer value echoed back in every form a scrubber must know, in headers, a
        // JSON body (mixed `\uXXXX` escapes, `\/`), hex, lower-case percent-encoding and
        // base64, then in trailers; `?enc=` wraps the body in stacked codings.
        "/echo-forms" => {
            let v = s
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("")
                .to_string();
            let corpus = echo_corpus(&v);
            // Serialised, then the escapes put in as JSON escapes rather than as text.
            let mut body = serde_json::to_string(&corpus)
                .unwrap()
                .replace("RAWJSON:", "")
                .replace("\\\\u", "\\u")
                .replace("\\\\/", "\\/")
                .into_bytes();
            let encodings: Vec<String> = s
                .target
                .split_once("enc=")
                .map(|(_, e)| e.split(',').map(String::from).collect())
                .unwrap_or_default();
            for e in &encodings {
                match e.as_str() {
                    "gzip" => body = gzip(&body),
                    "deflate" => {
                        let mut z = flate2::write::ZlibEncoder::new(
                            Vec::new(),
                            flate2::Compression::default(),
                        );
                        z.write_all(&body).unwrap();
                        body = z.finish().unwrap();
                    }
                    "zstd" => body = zstd::encode_all(&body[..], 3).unwrap(),
                    "br" => body = brotli_stored(&body),
                    // Anything else is only a label.
                    _ => {}
                }
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            let trailer_value = v.clone();
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from(body)))).await;
                let mut t = hyper::HeaderMap::new();
                t.insert("x-trailer-echo", trailer_value.parse().unwrap());
                t.insert("x-trailer-hex", hex(&trailer_value).parse().unwrap());
                let _ = tx.send(Ok(Frame::trailers(t))).await;
            });
            let mut r = Response::new(BodyExt::boxed(ChannelBody(rx)));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut()
                .insert("trailer", "x-trailer-echo, x-trailer-hex".parse().unwrap());
            r.headers_mut()
                .insert("x-echo-hex", hex(&v).to_ascii_uppercase().parse().unwrap());
            r.headers_mut()
                .insert("x-echo-pct", percent_lower(&v).parse().unwrap());
            // A first `identity` header, then the real codings: every header counts.
            if !encodings.is_empty() {
                r.headers_mut()
                    .append("content-encoding", "identity".parse().unwrap());
                for e in &encodings {
                    r.headers_mut()
                        .append("content-encoding", e.parse().unwrap());
                }
            }
            r
        }
        // 200 MiB of zeros in about 200 KiB of gzip.
        "/bomb" => {
            static BOMB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let data = BOMB.get_or_init(|| {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                let zeros = vec![0u8; 1 << 20];
                for _ in 0..200 {
                    e.write_all(&zeros).unwrap();
                }
                e.finish().unwrap()
            });
            let mut r = Response::new(full(data.clone()));
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r
        }
        "/slow-body" => {
            // Headers now, the body after 20 s of silence (a long reasoning call that streams).
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(20)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("late answer\n")))).await;
            });
            Response::new(BodyExt::boxed(ChannelBody(rx)))
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from("data: first\n\n"))))
                    .await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from("data: second\n\n"))))
                    .await;
            });
            let mut r = Response::new(BodyExt::boxed(ChannelBody(rx)));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        "/v1/chat/completions" => {
            // Echoes the bearer credential inside the completion, like a careless upstream.
            let auth = s.header("authorization").unwrap_or("").to_string();
            let body = serde_json::json!({
                "id": "chatcmpl-kz", "object": "chat.completion", "created": 0, "model": "kz-test",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": format!("you sent: {auth}")}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            });
            let mut r = Response::new(full(body.to_string()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        "/git/repo.git/info/refs" => {
            if s.header("authorization").is_none() {
                let mut r = Response::new(full("auth required\n"));
                *r.status_mut() = StatusCode::UNAUTHORIZED;
                r.headers_mut()
                    .insert("www-authenticate", "Basic realm=\"git\"".parse().unwrap());
                r
            } else {
                let sha = "1111111111111111111111111111111111111111";
                let body = format!(
                    "{}0000{}{}0000",
                    pkt("# service=git-upload-pack\n"),
                    pkt(&format!(
                        "{sha} HEAD\0symref=HEAD:refs/heads/main agent=kz-test\n"
                    )),
                    pkt(&format!("{sha} refs/heads/main\n"))
                );
                let mut r = Response::new(full(body));
                r.headers_mut().insert(
                    "content-type",
                    "application/x-git-upload-pack-advertisement"
                        .parse()
                        .unwrap(),
                );
                r
            }
        }
        // A chatty WebSocket peer: for each text frame it answers in two fragments that echo the
        // payload and the handshake's Authorization (swapped by kz: the real value), split in
        // the middle, then in hex; every frame it receives is recorded as a `/ws-frame` request.
        "/ws-echo-auth" => {
            let Some(key) = ws_key else {
                return Ok(Response::new(full("not a websocket request")));
            };
            let accept = ws_accept(&key);
            let auth = s.header("authorization").unwrap_or("").to_string();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(up) = ws_upgrade.await else { return };
                let mut io = TokioIo::new(up);
                loop {
                    let mut head = [0u8; 2];
                    if io.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let mut len = (head[1] & 0x7f) as usize;
                    if len == 126 {
                        let mut l = [0u8; 2];
                        io.read_exact(&mut l).await.unwrap();
                        len = u16::from_be_bytes(l) as usize;
                    }
                    let mut mask = [0u8; 4];
                    io.read_exact(&mut mask).await.unwrap();
                    let mut payload = vec![0u8; len];
                    io.read_exact(&mut payload).await.unwrap();
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                    seen.lock().unwrap().push(Seen {
                        version: "ws".into(),
                        method: "FRAME".into(),
                        target: "/ws-frame".into(),
                        headers: vec![],
                        body: payload.clone(),
                    });
                    if head[0] & 0x0f == 0x8 {
                        return;
                    }
                    let half = auth.len() / 2;
                    let mut one = b"echo:".to_vec();
                    one.extend_from_slice(&payload);
                    one.extend_from_slice(format!(" auth:{}", &auth[..half]).as_bytes());
                    let two = format!("{} hex:{}", &auth[half..], hex(&auth)).into_bytes();
                    let mut out = Vec::new();
                    for (first, fin, data) in [(true, false, one), (false, true, two)] {
                        let op = if first { 0x01 } else { 0x00 };
                        out.push(if fin { 0x80 | op } else { op });
                        out.push(126);
                        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
                        out.extend_from_slice(&data);
                    }
                    let _ = io.write_all(&out).await;
                    let _ = io.flush().await;
                }
            });
            switching_protocols(&accept)
        }
        "/ws" => {
            let Some(key) = ws_key else {
                return Ok(Response::new(full("not a websocket request")));
            };
            let accept = ws_accept(&key);
            tokio::spawn(async move {
                let Ok(up) = ws_upgrade.await else { return };
                let mut io = TokioIo::new(up);
                // One small masked text frame in, "echo:" + payload out (unmasked).
                let mut head = [0u8; 2];
                if io.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = (head[1] & 0x7f) as usize;
                let mut mask = [0u8; 4];
                io.read_exact(&mut mask).await.unwrap();
                let mut payload = vec![0u8; len];
                io.read_exact(&mut payload).await.unwrap();
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&payload);
                let mut frame = vec![0x81, reply.len() as u8];
                frame.extend_from_slice(&reply);
                let _ = io.write_all(&frame).await;
                let _ = io.flush().await;
            });
            switching_protocols(&accept)
        }
        _ => {
            let mut r = Response::new(full("{\"ok\":true}\n"));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
    };
    Ok(resp)
}

/// A body fed by a channel: each message is sent as soon as it arrives.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}
