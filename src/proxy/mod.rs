//! The credential-swapping proxy: one engine, several front doors. This module holds the shared
//! state and the explicit HTTP proxy front door (CONNECT and absolute-form requests, with a
//! per-run credential); `intercept` does the swapping, forwarding and scrubbing.

pub mod body;
pub mod ca;
pub mod certdir;
pub mod decide;
pub mod dns;
mod express;
pub mod h2serve;
pub mod intercept;
pub mod lane;
pub mod outgoing;
pub mod refusal;
pub mod resign;
pub mod session;
pub mod sni;
#[cfg(target_os = "linux")]
pub mod transparent;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
pub mod ws;

use std::convert::Infallible;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, PROXY_AUTHORIZATION};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::audit::Audit;
use crate::blind::TokenTable;
use crate::config::HostPattern;
use crate::serve::{until_drained, Drain, Limits};
use body::{empty, full};
use refusal::Refusal;
use upstream::{Body, Upstream};

/// Everything the proxy needs; shared by every connection.
pub struct Proxy {
    pub table: Arc<TokenTable>,
    pub ca: ca::Ca,
    pub upstream: Upstream,
    /// `[network] allow`; `None` allows every destination.
    pub allow: Option<Vec<HostPattern>>,
    /// The per-run proxy password (user `kz`).
    pub credential: String,
    pub audit: Arc<Audit>,
    /// How long an upstream may take to start its answer (`[network] response_timeout`).
    pub response_timeout: Duration,
}

/// Where an intercepted or forwarded request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Proxy {
    pub fn allowed(&self, host: &str, port: u16) -> bool {
        match &self.allow {
            None => true,
            Some(list) => list.iter().any(|p| p.matches(host, port)),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(v) = req
            .headers()
            .get(PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, cred)) = v.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(cred.trim()) else {
            return false;
        };
        let expected = format!("kz:{}", self.credential);
        constant_time_eq(&decoded, expected.as_bytes())
    }

    /// Opens a TCP connection to `host:port` under the address rules (`[network] hosts`,
    /// private addresses only with consent).
    pub async fn dial(&self, host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        self.upstream
            .resolver
            .dial(host, port, upstream::CONNECT_TIMEOUT)
            .await
    }

    /// Refuses by rule: an audit line and a one-line response.
    pub fn refuse(&self, status: StatusCode, host: &str, reason: &str) -> Response<Body> {
        self.answer(Refusal::denied(status, host, reason))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(full(text.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(KZ_ANSWER, HeaderValue::from_static("refused"));
    r
}

/// Marks a response kz wrote itself (a refusal or an upstream failure), not the upstream's.
pub const KZ_ANSWER: &str = "x-kz-answer";

pub use crate::config::host::split_authority;

/// How long a client may take to finish a TLS handshake on an intercepted connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the explicit proxy on `listener` until `shutdown` resolves.
pub async fn run(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    crate::serve::serve(listener, shutdown, Limits::proxy(), move |stream, drain| {
        serve_proxy_connection(stream, proxy.clone(), true, drain)
    })
    .await;
}

/// What a connection carries on with once its HTTP exchange is over: after a CONNECT, the
/// tunnel or the intercepted TLS session; after a WebSocket upgrade, the frame pumps. It runs in
/// the connection's own task, so the listener's drain and connection cap cover it (an HTTP/1.1
/// connection carries nothing else after a CONNECT or an upgrade).
pub type Carry = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The slot a handler leaves its `Carry` in, with the connection's drain, which what it leaves
/// must heed.
#[derive(Clone)]
pub struct Handover {
    slot: Arc<std::sync::Mutex<Option<Carry>>>,
    drain: Drain,
}

impl Handover {
    fn new(drain: Drain) -> Handover {
        Handover {
            slot: Arc::default(),
            drain,
        }
    }

    fn leave(&self, rest: Carry) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(rest);
    }

    /// The drain of the connection this slot belongs to.
    fn drain(&self) -> Drain {
        self.drain.clone()
    }

    /// Runs what a handler left, if anything.
    async fn carry_on(self) {
        let rest = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rest) = rest {
            rest.await;
        }
    }
}

/// One connection of the explicit proxy. `authenticate`: require the run's proxy credential
/// (off for a client inside `--isolate` whose proxy setting led it to kz's transparent port:
/// every connection there is the agent's own).
pub async fn serve_proxy_connection(
    stream: tokio::net::TcpStream,
    proxy: Arc<Proxy>,
    authenticate: bool,
    drain: Drain,
) {
    let handover = Handover::new(drain.clone());
    let svc = {
        let handover = handover.clone();
        service_fn(move |req| handle(proxy.clone(), req, authenticate, handover.clone()))
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    let _ = until_drained(conn, drain, |c| c.graceful_shutdown()).await;
    handover.carry_on().await;
}

async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    authenticate: bool,
    handover: Handover,
) -> Result<Response<Body>, Infallible> {
    if authenticate && !proxy.authorized(&req) {
        return Ok(proxy.answer(Refusal::ProxyAuth));
    }
    if req.method() == Method::CONNECT {
        return Ok(connect(proxy, req, handover).await);
    }
    let uri = req.uri().clone();
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Ok(proxy.answer(Refusal::bad_request(
            "this is an http proxy: send absolute-form requests or CONNECT",
        )));
    };
    let tls = match scheme {
        "http" => false,
        "https" => true,
        other => {
            return Ok(proxy.answer(Refusal::bad_request(format!("unsupported scheme {other}"))))
        }
    };
    let Some((host, port)) = split_authority(authority.as_str(), if tls { 443 } else { 80 }) else {
        return Ok(proxy.answer(Refusal::bad_request("bad request target")));
    };
    if !proxy.allowed(&host, port) {
        let reason = format!("{host}:{port} is not in [network] allow");
        return Ok(proxy.refuse(StatusCode::FORBIDDEN, &host, &reason));
    }
    let dest = Dest { host, port, tls };
    let req = req.map(body::incoming);
    Ok(intercept::forward(proxy, dest, None, None, Some(handover), req).await)
}

async fn connect(proxy: Arc<Proxy>, req: Request<Incoming>, handover: Handover) -> Response<Body> {
    let drain = handover.drain();
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| split_authority(a.as_str(), 443))
    else {
        return proxy.answer(Refusal::bad_request("CONNECT needs host:port"));
    };
    if !proxy.allowed(&host, port) {
        let reason = format!("{host}:{port} is not in [network] allow");
        return proxy.refuse(StatusCode::FORBIDDEN, &host, &reason);
    }
    if proxy.table.intercepts(&host, port) {
        let cfg = match proxy.ca.server_config(&host) {
            Ok(c) => c,
            Err(e) => {
                return proxy.answer(Refusal::upstream(StatusCode::BAD_GATEWAY, e.to_string()))
            }
        };
        handover.leave(Box::pin(async move {
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(TokioIo::new(upgraded));
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
            let misdirected =
                sni.filter(|s| s.trim_end_matches('.') != host.trim_matches(['[', ']']));
            let dest = Dest {
                host,
                port,
                tls: true,
            };
            serve_intercepted(proxy, dest, misdirected, tls, drain).await;
        }));
        return Response::new(empty());
    }
    // Not bound to any secret: a plain tunnel, never decrypted.
    let upstream = match proxy.dial(&host, port).await {
        Ok(s) => s,
        Err(e) => return proxy.answer(decide::unreachable(&host, port, &e)),
    };
    handover.leave(Box::pin(async move {
        let start = std::time::Instant::now();
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let client = TokioIo::new(upgraded);
        tunnel::relay(client, upstream, &host, port, &proxy.audit, start, drain).await;
    }));
    Response::new(empty())
}

/// Serves HTTP on an intercepted TLS connection with the protocol ALPN chose (HTTP/1.1 when the
/// client offered none). HTTP/1.1 connections get their own upstream lane, driven in this task.
pub async fn serve_intercepted<IO>(
    proxy: Arc<Proxy>,
    dest: Dest,
    misdirected: Option<String>,
    tls: tokio_rustls::server::TlsStream<IO>,
    drain: Drain,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        let handler = move |req: Request<Body>| {
            intercept::forward(
                proxy.clone(),
                dest.clone(),
                misdirected.clone(),
                None,
                None,
                req,
            )
        };
        h2serve::serve(tls, handler, drain).await;
        return;
    }
    if misdirected.is_none() {
        express::serve(proxy, dest, tls, drain).await;
    } else {
        serve_h1(proxy, dest, misdirected, tls, drain).await;
    }
}

/// Serves HTTP/1.1 with hyper on an intercepted connection, with its own upstream lane driven
/// in this task: the general path, for whatever the express path does not carry.
async fn serve_h1<C>(
    proxy: Arc<Proxy>,
    dest: Dest,
    misdirected: Option<String>,
    client: C,
    mut drain: Drain,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(client);
    let (lane, mut conns) = lane::Lane::new();
    let handover = Handover::new(drain.clone());
    let left = handover.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let fut = intercept::forward(
            proxy.clone(),
            dest.clone(),
            misdirected.clone(),
            Some(lane.clone()),
            Some(handover.clone()),
            req.map(body::incoming),
        );
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let server = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(300))
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(server);
    let mut upstream: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    // Made once: the loop wakes several times per request.
    let drained = drain.requested();
    tokio::pin!(drained);
    let mut draining = false;
    loop {
        tokio::select! {
            _ = &mut server => break,
            _ = &mut drained, if !draining => {
                // Answer the request in flight, then close.
                server.as_mut().graceful_shutdown();
                draining = true;
            }
            Some(c) = conns.recv() => upstream = Some(c),
            _ = async { upstream.as_mut().expect("guarded").await }, if upstream.is_some() => upstream = None,
        }
    }
    // After a WebSocket upgrade, its frames.
    left.carry_on().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            split_authority("api.x.com:8443", 443),
            Some(("api.x.com".into(), 8443))
        );
        assert_eq!(
            split_authority("API.x.com", 443),
            Some(("api.x.com".into(), 443))
        );
        assert_eq!(split_authority("[::1]:80", 443), Some(("[::1]".into(), 80)));
        assert_eq!(split_authority("x:notaport", 443), None);
    }
}
