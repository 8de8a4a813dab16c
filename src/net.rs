//! Listening sockets. An address on `[::]` listens on IPv6 and IPv4 at once (`IPV6_V6ONLY`
//! off, whatever the host's default), and falls back to `0.0.0.0` where the kernel has no
//! IPv6, so one default serves single-stack and dual-stack clusters alike.

use std::net::SocketAddr;

/// kz's transparent listener port, where redirected connections arrive (`--isolate`, pods).
pub const PROXY_PORT: u16 = 15001;
/// kz's DNS port (UDP and TCP), where redirected lookups arrive.
pub const DNS_PORT: u16 = 15053;
/// Where a pod's sidecar answers `GET /ready`.
pub const READY_PORT: u16 = 15021;
/// The uid kz's sidecar runs as in a pod: its own traffic is never redirected.
pub const KZ_UID: u32 = 17337;

fn dual(addr: &str) -> Option<SocketAddr> {
    let a: SocketAddr = addr.parse().ok()?;
    (a.is_ipv6() && a.ip().is_unspecified()).then_some(a)
}

fn v6_only_off(fd: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::Ipv6V6Only, &false)
        .map_err(std::io::Error::from)
}

/// A TCP listener on `addr` (`host:port`); `[::]:port` is dual-stack.
pub async fn bind_dual(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let Some(a) = dual(addr) else {
        return tokio::net::TcpListener::bind(addr).await;
    };
    let v6 = || -> std::io::Result<tokio::net::TcpListener> {
        let s = tokio::net::TcpSocket::new_v6()?;
        v6_only_off(&s)?;
        s.set_reuseaddr(true)?;
        s.bind(a)?;
        s.listen(1024)
    };
    match v6() {
        Ok(l) => Ok(l),
        Err(e) if no_ipv6(&e) => {
            tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], a.port()))).await
        }
        Err(e) => Err(e),
    }
}

/// The kernel has no IPv6 (module absent or disabled).
fn no_ipv6(e: &std::io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(nix::errno::Errno::EAFNOSUPPORT as i32)
        || code == Some(nix::errno::Errno::EADDRNOTAVAIL as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unspecified_v6_accepts_both_families() {
        let l = bind_dual("[::]:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        for target in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
            if target.starts_with('[') && std::net::TcpListener::bind("[::1]:0").is_err() {
                continue; // no IPv6 on this host: the v4 half is what matters
            }
            let c = tokio::net::TcpStream::connect(&target).await.unwrap();
            let (_s, peer) = l.accept().await.unwrap();
            assert_eq!(peer.port(), c.local_addr().unwrap().port(), "{target}");
        }
        // Other addresses bind as given.
        let l4 = bind_dual("127.0.0.1:0").await.unwrap();
        assert!(l4.local_addr().unwrap().is_ipv4());
    }
}
