//! The upstream side: name resolution with `[network] hosts` overrides and the private-address
//! rule (the resolved address is checked, then exactly that address is dialled), TLS verified
//! against the system roots plus `upstream_ca`, and a pooled HTTP/1.1 + HTTP/2 client.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

pub type Body = BoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What `poll_frame` of every body kz builds returns.
pub type PolledFrame = std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, BoxError>>>;

/// Whether kz may connect to `ip` without `allow_private`: public unicast only.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)   // 100.64.0.0/10 carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18)    // 198.18.0.0/15 benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b)) // NAT64 may reach private IPv4
        }
    }
}

/// Whether `ip` reaches this very host: loopback, or the unspecified address (which connects
/// to the local host too), in either family or IPv4-mapped.
pub fn is_local_host(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.octets()[0] == 0,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local_host(IpAddr::V4(v4)),
            None => v6.is_loopback() || v6.is_unspecified(),
        },
    }
}

/// Resolves names the way the proxy is allowed to reach them. A name mapped in `[network]
/// hosts` may use any address (the mapping is the consent); any other name or literal needs a
/// public address, or `allow_private`; with `loopback_only_when_mapped` (the transparent front
/// doors), not even `allow_private` opens the host's loopback to an unmapped name.
#[derive(Clone)]
pub struct Resolver {
    overrides: Arc<BTreeMap<String, IpAddr>>,
    allow_private: bool,
    loopback_only_when_mapped: bool,
    proxy: Option<Arc<UpstreamProxy>>,
}

pub use crate::config::egress::UpstreamProxy;

impl UpstreamProxy {
    /// Opens a tunnel to `host:port` through the proxy.
    async fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<TcpStream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let fail = |what: String| {
            std::io::Error::other(format!(
                "upstream proxy {}:{}: {what}",
                self.host, self.port
            ))
        };
        let work = async {
            let mut s = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let _ = s.set_nodelay(true);
            let target = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
            if let Some(a) = &self.authorization {
                head.push_str(&format!("Proxy-Authorization: {a}\r\n"));
            }
            head.push_str("\r\n");
            s.write_all(head.as_bytes()).await?;
            // Read the answer's head byte by byte: nothing of the tunnel may be consumed.
            let mut resp = Vec::new();
            let mut b = [0u8; 1];
            while !resp.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).await? == 0 || resp.len() > 16 * 1024 {
                    return Err(fail("closed during CONNECT".into()));
                }
                resp.push(b[0]);
            }
            let status = std::str::from_utf8(&resp)
                .ok()
                .and_then(|t| t.split_whitespace().nth(1))
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0);
            if status != 200 {
                return Err(fail(format!("CONNECT {target} answered {status}")));
            }
            Ok(s)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| fail("timed out".into()))?
    }
}

/// A refusal by the address rule; the message is user-facing.
#[derive(Debug)]
pub struct PrivateAddress(pub String);

impl std::fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for PrivateAddress {}

impl Resolver {
    pub fn new(overrides: BTreeMap<String, IpAddr>, allow_private: bool) -> Self {
        Resolver {
            overrides: Arc::new(overrides),
            allow_private,
            loopback_only_when_mapped: false,
            proxy: None,
        }
    }

    /// Upstream connections go through `proxy` (names mapped in `[network] hosts` and those in
    /// its `no_proxy` are reached directly).
    pub fn via(mut self, proxy: Option<UpstreamProxy>) -> Self {
        self.proxy = proxy.map(Arc::new);
        self
    }

    /// For `--isolate` and the sidecar: the agent's own loopback is its own, and the host's is
    /// reached only through a name mapped in `[network] hosts`.
    pub fn loopback_only_when_mapped(mut self) -> Self {
        self.loopback_only_when_mapped = true;
        self
    }

    fn permitted(&self, ip: IpAddr) -> bool {
        is_public(ip)
            || (self.allow_private && !(self.loopback_only_when_mapped && is_local_host(ip)))
    }

    /// Addresses for `host`, after overrides and the private-address rule.
    pub fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static>> {
        let this = self.clone();
        let host = host.to_string();
        Box::pin(async move { this.resolve_inner(&host, port).await })
    }

    async fn resolve_inner(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if let Some(ip) = self.overrides.get(bare.trim_end_matches('.')) {
            // Mapped in [network] hosts: the mapping is the consent, whatever the address.
            return Ok(vec![SocketAddr::new(*ip, port)]);
        }
        let addrs: Vec<SocketAddr> = if let Ok(ip) = bare.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else {
            tokio::net::lookup_host((bare.as_str(), port))
                .await?
                .collect()
        };
        let (public, private): (Vec<_>, Vec<_>) =
            addrs.into_iter().partition(|a| self.permitted(a.ip()));
        if public.is_empty() {
            if let Some(p) = private.first() {
                let why = if self.allow_private {
                    "the host's loopback is reachable only through a name mapped in [network] hosts"
                } else {
                    "map the name in [network] hosts, or set [network] allow_private = true, to permit"
                };
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    PrivateAddress(format!(
                        "{host} resolves to non-public address {} ({why})",
                        p.ip()
                    )),
                ));
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host}: no addresses"),
            ));
        }
        Ok(public)
    }

    /// Whether `host` resolves at all (overrides, literals, then the host's resolvers), regardless
    /// of the private-address rule (which applies when connecting).
    pub async fn exists(&self, host: &str) -> bool {
        let bare = host.trim_end_matches('.').to_ascii_lowercase();
        self.overrides.contains_key(&bare)
            || bare.parse::<IpAddr>().is_ok()
            || tokio::net::lookup_host((bare.as_str(), 0))
                .await
                .is_ok_and(|mut a| a.next().is_some())
    }

    /// Connects to the first reachable allowed address (through the upstream proxy when one is
    /// set: a name that resolves here must still resolve to an allowed address; one that does
    /// not is left to the proxy, which may see names this host cannot).
    pub async fn dial(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> std::io::Result<TcpStream> {
        let bare = host
            .trim_matches(['[', ']'])
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if let Some(p) = self
            .proxy
            .as_ref()
            .filter(|p| !self.overrides.contains_key(&bare) && !p.bypassed(host))
        {
            match self.resolve(host, port).await {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(e),
                _ => return p.connect(host, port, timeout).await,
            }
        }
        let addrs = self.resolve(host, port).await?;
        let mut last = None;
        for a in addrs {
            match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
    }
}

type Addrs = std::vec::IntoIter<SocketAddr>;

/// The pooled client's connector: every upstream TCP connection goes through
/// [`Resolver::dial`] (the address rule, and the upstream proxy when set).
#[derive(Clone)]
pub struct DialConnector(pub Resolver);

impl tower_service::Service<hyper::Uri> for DialConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let resolver = self.0.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other("no host in uri"))?
                .to_string();
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
            resolver
                .dial(&host, port, CONNECT_TIMEOUT)
                .await
                .map(TokioIo::new)
        })
    }
}

impl tower_service::Service<Name> for Resolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Addrs>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        // The connector sets the port; resolving with 0 keeps this service port-agnostic.
        Box::pin(async move { this.resolve(name.as_str(), 0).await.map(|v| v.into_iter()) })
    }
}

/// The pooled upstream client and what raw connections need.
#[derive(Clone)]
pub struct Upstream {
    pub client: Client<hyper_rustls::HttpsConnector<DialConnector>, Body>,
    pub resolver: Resolver,
    /// For connections made by hand (WebSocket): HTTP/1.1 only.
    pub tls_h1: Arc<rustls::ClientConfig>,
}

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Upstream {
    pub fn new(
        resolver: Resolver,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Self {
        let http = DialConnector(resolver.clone());
        let tls = crate::http::tls_client_config(extra_roots);
        let mut tls_h1 = tls.clone();
        tls_h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let https = crate::http::https_connector(tls, http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(https);
        Upstream {
            client,
            resolver,
            tls_h1: Arc::new(tls_h1),
        }
    }

    /// Sends a request on a pooled connection. (A plain function, so the request future's
    /// bounds are checked here and not inside callers' async state machines.)
    pub fn send(&self, req: hyper::Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(req)
    }

    /// A TLS connection to `host:port` offering only HTTP/1.1 (for upgrades).
    pub async fn connect_tls_h1(
        &self,
        host: &str,
        port: u16,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = self.resolver.dial(host, port, CONNECT_TIMEOUT).await?;
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(self.tls_h1.clone())
            .connect(name, tcp)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "192.0.2.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "140.82.112.3", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn a_mapping_is_consent_and_everything_else_needs_allow_private() {
        let mut o = BTreeMap::new();
        o.insert("api.kz.test".to_string(), "127.0.0.1".parse().unwrap());
        let strict = Resolver::new(o.clone(), false);
        assert_eq!(
            strict.resolve("API.kz.test", 8443).await.unwrap(),
            vec!["127.0.0.1:8443".parse().unwrap()]
        );
        for refused in [
            "127.0.0.1",
            "169.254.169.254",
            "localhost",
            "0.0.0.0",
            "[::1]",
        ] {
            let err = strict.resolve(refused, 80).await.unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{refused}"
            );
            assert!(err.to_string().contains("allow_private"), "{err}");
        }
        let open = Resolver::new(o.clone(), true);
        assert!(open.resolve("127.0.0.1", 80).await.is_ok());
        assert!(open.resolve("10.0.0.1", 80).await.is_ok());
        // The transparent front doors: allow_private opens private ranges, never the host's
        // loopback, under any spelling.
        let transparent = Resolver::new(o, true).loopback_only_when_mapped();
        assert!(transparent.resolve("10.0.0.1", 80).await.is_ok());
        assert!(transparent.resolve("api.kz.test", 6379).await.is_ok());
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "localhost",
            "0.0.0.0",
            "[::1]",
            "::ffff:127.0.0.1",
            "[::]",
            "2130706433",
        ] {
            let err = transparent.resolve(refused, 6379).await.unwrap_err();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{refused}"
            );
            assert!(err.to_string().contains("loopback"), "{refused}: {err}");
        }
    }
}
