//! The transparent front door (`--isolate`, and later the sidecar): connections redirected by
//! the kernel arrive here with their original destination (`SO_ORIGINAL_DST`); kz reads the TLS
//! server name or the HTTP `Host` before answering, then handles the connection exactly as the
//! explicit proxy would: bound hosts intercepted, everything else tunnelled, `[network] allow`
//! enforced. Also kz's DNS resolver for the namespace, which answers with synthetic addresses
//! (198.18.0.0/15) so that even a raw TCP connect to a name can be traced back to the name.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::sni::{peek, Peeked};
use super::{intercept, serve_intercepted, upstream, Dest, Proxy};
use crate::serve::{until_drained, Drain, Limits, Stop};

/// The address the namespace's `resolv.conf` points at (redirected to kz's resolver).
pub const NAMESERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 53);

/// Names handed out by kz's resolver and the synthetic addresses standing for them.
pub struct NameMap {
    inner: Mutex<Names>,
    /// How many addresses the pool holds (from 198.18.1.0 on).
    pool: u32,
}

#[derive(Default)]
struct Names {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// The next pool slot to hand out; wraps around.
    next: u32,
}

/// 198.18.1.0 up to 198.19.255.254: the rest of the benchmarking range, never public space.
const POOL_FIRST: u32 = 256;
const POOL_LEN: u32 = (1 << 17) - 1 - POOL_FIRST;

impl Default for NameMap {
    fn default() -> Self {
        NameMap::with_pool(POOL_LEN)
    }
}

impl NameMap {
    /// A map handing out at most `pool` addresses (tests use a small one).
    pub fn with_pool(pool: u32) -> Self {
        NameMap {
            inner: Mutex::new(Names::default()),
            pool: pool.clamp(1, POOL_LEN),
        }
    }

    /// The synthetic address for `name`, allocated on first use from 198.18.1.0 upwards; when
    /// the pool is used up, the oldest allocation is recycled, so addresses never leave
    /// 198.18.0.0/15 and the map never grows past the pool.
    pub fn address_for(&self, name: &str) -> Ipv4Addr {
        let mut g = self.inner.lock().unwrap();
        if let Some(a) = g.by_name.get(name) {
            return *a;
        }
        let slot = g.next;
        g.next = (g.next + 1) % self.pool;
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + POOL_FIRST + slot);
        if let Some(old) = g.by_addr.insert(addr, name.to_string()) {
            g.by_name.remove(&old);
        }
        g.by_name.insert(name.to_string(), addr);
        addr
    }

    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        match addr {
            IpAddr::V4(v4) => self.inner.lock().unwrap().by_addr.get(&v4).cloned(),
            IpAddr::V6(_) => None,
        }
    }
}

fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    if let Ok(a) = getsockopt(stream, sockopt::OriginalDst) {
        let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
        return Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)));
    }
    if let Ok(a) = getsockopt(stream, sockopt::Ip6tOriginalDst) {
        let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
        return Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)));
    }
    None
}

/// Waits until the first bytes say what the connection is (or 5 s pass).
async fn classify(stream: &TcpStream) -> Peeked {
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = match tokio::time::timeout_at(deadline.into(), stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Peeked::Other,
        };
        if n == 0 {
            return Peeked::Other;
        }
        match peek(&buf[..n]) {
            Peeked::Incomplete if n < buf.len() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Peeked::Incomplete => return Peeked::Other,
            other => return other,
        }
    }
}

/// The listeners of a transparent front door (`--isolate`'s namespace, a sidecar's pod):
/// redirected TCP, and DNS over UDP and TCP.
#[derive(Default)]
pub struct FrontDoor {
    pub tcp: Vec<TcpListener>,
    pub dns_udp: Vec<UdpSocket>,
    pub dns_tcp: Vec<TcpListener>,
}

impl FrontDoor {
    /// Serves every listener until `stop` fires.
    pub fn start(self, proxy: &Arc<Proxy>, stop: &Stop) -> Vec<tokio::task::JoinHandle<()>> {
        let names = Arc::new(NameMap::default());
        let mut tasks = Vec::new();
        for l in self.tcp {
            tasks.push(tokio::spawn(serve(
                l,
                proxy.clone(),
                names.clone(),
                stop.stopped(),
            )));
        }
        for u in self.dns_udp {
            tasks.push(tokio::spawn(serve_dns(
                u,
                proxy.clone(),
                names.clone(),
                stop.stopped(),
            )));
        }
        for l in self.dns_tcp {
            tasks.push(tokio::spawn(serve_dns_tcp(
                l,
                proxy.clone(),
                names.clone(),
                stop.stopped(),
            )));
        }
        tasks
    }
}

/// Serves redirected connections from `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    names: Arc<NameMap>,
    stop: impl std::future::Future<Output = ()>,
) {
    crate::serve::serve(listener, stop, Limits::proxy(), move |stream, drain| {
        handle(stream, proxy.clone(), names.clone(), drain)
    })
    .await;
}

async fn handle(stream: TcpStream, proxy: Arc<Proxy>, names: Arc<NameMap>, drain: Drain) {
    let Some(orig) = original_dst(&stream) else {
        return;
    };
    let kind = classify(&stream).await;
    let claimed = match &kind {
        Peeked::Tls(Some(sni)) => Some(sni.clone()),
        Peeked::Http(Some(host)) => super::split_authority(host, orig.port()).map(|(h, _)| h),
        _ => None,
    };
    // The name: what the client said, else what kz's resolver handed out for this address.
    let name = claimed
        .or_else(|| names.name_of(orig.ip()))
        .unwrap_or_else(|| match orig.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        });
    let port = orig.port();
    if !proxy.allowed(&name, port) {
        let reason = format!("{name}:{port} is not in [network] allow");
        let _ = proxy.refuse(hyper::StatusCode::FORBIDDEN, &name, &reason);
        return;
    }
    match kind {
        Peeked::Tls(_) if proxy.table.intercepts(&name, port) => {
            let Ok(cfg) = proxy.ca.server_config(&name) else {
                return;
            };
            let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
            let Ok(Ok(tls)) = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, accept).await else {
                return;
            };
            let dest = Dest {
                host: name,
                port,
                tls: true,
            };
            serve_intercepted(proxy, dest, None, tls, drain).await;
        }
        Peeked::Http(_) if speaks_to_a_proxy(&stream).await => {
            // A client configured with a proxy (an inherited HTTPS_PROXY, a tool's own proxy
            // setting) sends CONNECT or absolute-form requests to it; whatever address it
            // dialled, it is answered as kz's explicit proxy would.
            super::serve_proxy_connection(stream, proxy, false, drain).await;
        }
        Peeked::Http(_) => {
            // Plain HTTP goes through the swap engine, which refuses tokens towards hosts
            // they are not bound to.
            let dest = Dest {
                host: name,
                port,
                tls: false,
            };
            let handover = super::Handover::new(drain.clone());
            let left = handover.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                plain(proxy.clone(), dest.clone(), handover.clone(), req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let _ = until_drained(conn, drain, |c| c.graceful_shutdown()).await;
            left.carry_on().await;
        }
        _ => tunnel(stream, proxy, name, port, drain).await,
    }
}

/// Whether the first request is a proxy request: `CONNECT host:port` or an absolute-form
/// target (`GET http://host/...`).
async fn speaks_to_a_proxy(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 32];
    let Ok(n) = stream.peek(&mut buf).await else {
        return false;
    };
    let head = &buf[..n];
    head.starts_with(b"CONNECT ")
        || head
            .splitn(2, |b| *b == b' ')
            .nth(1)
            .is_some_and(|t| t.starts_with(b"http://") || t.starts_with(b"https://"))
}

async fn tunnel(client: TcpStream, proxy: Arc<Proxy>, host: String, port: u16, drain: Drain) {
    let start = Instant::now();
    let upstream = match proxy.dial(&host, port).await {
        Ok(s) => s,
        Err(e) => {
            let _ = proxy.refuse(
                hyper::StatusCode::FORBIDDEN,
                &host,
                &format!("cannot reach {host}:{port}: {e}"),
            );
            return;
        }
    };
    super::tunnel::relay(client, upstream, &host, port, &proxy.audit, start, drain).await;
}

/// Answers DNS queries from the namespace: names outside `[network] allow` are refused, names
/// that do not resolve (through `[network] hosts` or the host's resolvers) get NXDOMAIN, others a
/// synthetic IPv4 address and no IPv6 address. `None`: too short to answer.
async fn dns_reply(query: &[u8], proxy: &Proxy, names: &NameMap) -> Option<Vec<u8>> {
    use super::dns::{answer, error, format_error, parse_query, ParseError, Rcode, TYPE_A};
    Some(match parse_query(query) {
        Err(ParseError::Truncated) => return None,
        Err(ParseError::Malformed(id)) => format_error(id),
        Ok(q) => {
            if !proxy.allowed(&q.name, 443) && !proxy.allowed(&q.name, 80) {
                let record = super::refusal::Refused {
                    host: Some(&q.name),
                    status: None,
                    reason: "dns query for a name outside [network] allow",
                };
                proxy.audit.record("refused", &record);
                error(&q, Rcode::Refused)
            } else if proxy.upstream.resolver.exists(&q.name).await {
                let addrs: Vec<IpAddr> = if q.qtype == TYPE_A {
                    vec![IpAddr::V4(names.address_for(&q.name))]
                } else {
                    Vec::new()
                };
                answer(&q, &addrs, 30)
            } else {
                error(&q, Rcode::NxDomain)
            }
        }
    })
}

/// One plain-HTTP request through the swap engine.
async fn plain(
    proxy: Arc<Proxy>,
    dest: Dest,
    handover: super::Handover,
    req: Request<Incoming>,
) -> Result<hyper::Response<upstream::Body>, Infallible> {
    let req = req.map(super::body::incoming);
    Ok(intercept::forward(proxy, dest, None, None, Some(handover), req).await)
}

/// DNS over UDP, until `stop`.
pub async fn serve_dns(
    socket: UdpSocket,
    proxy: Arc<Proxy>,
    names: Arc<NameMap>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut buf = vec![0u8; 1500];
    tokio::pin!(stop);
    loop {
        let received = tokio::select! {
            _ = &mut stop => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let Ok((n, peer)) = received else {
            continue;
        };
        if let Some(reply) = dns_reply(&buf[..n], &proxy, &names).await {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

/// DNS over TCP: two-byte length-prefixed messages, several per connection, until `stop`.
pub async fn serve_dns_tcp(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    names: Arc<NameMap>,
    stop: impl std::future::Future<Output = ()>,
) {
    crate::serve::serve(listener, stop, Limits::server(), move |stream, drain| {
        dns_tcp_connection(stream, proxy.clone(), names.clone(), drain)
    })
    .await;
}

/// Answers queries until the client is done, idle for 10 s, or the listener drains (a query
/// already read is answered first).
async fn dns_tcp_connection(
    mut stream: TcpStream,
    proxy: Arc<Proxy>,
    names: Arc<NameMap>,
    mut drain: Drain,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            _ = drain.requested() => return,
            r = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len)) => r,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(reply) = dns_reply(&query, &proxy, &names).await else {
            return;
        };
        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_pool_recycles_inside_the_benchmarking_range() {
        let range =
            |a: Ipv4Addr| (u32::from(a) >> 17) == (u32::from(Ipv4Addr::new(198, 18, 0, 0)) >> 17);
        let full = NameMap::default();
        let first = full.address_for("a.test");
        assert_eq!(first, Ipv4Addr::new(198, 18, 1, 0));
        assert_eq!(
            full.address_for("a.test"),
            first,
            "stable while in the pool"
        );
        let small = NameMap::with_pool(3);
        let addrs: Vec<Ipv4Addr> = (0..10)
            .map(|i| small.address_for(&format!("h{i}.test")))
            .collect();
        assert!(addrs.iter().all(|a| range(*a)), "{addrs:?}");
        assert_eq!(addrs[0], addrs[3], "recycled");
        assert_eq!(small.inner.lock().unwrap().by_name.len(), 3);
        assert_eq!(
            small.name_of(IpAddr::V4(addrs[9])).as_deref(),
            Some("h9.test")
        );
        assert_eq!(
            small.name_of(IpAddr::V4(addrs[9])),
            small.name_of(IpAddr::V4(addrs[0]))
        );
        // The last address of the full pool is still inside 198.18.0.0/15.
        let last =
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + POOL_FIRST + POOL_LEN - 1);
        assert_eq!(last, Ipv4Addr::new(198, 19, 255, 254));
    }
}
