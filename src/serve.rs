//! One serving skeleton for every TCP listener kz runs (the explicit proxy, the transparent
//! front door of `--isolate` and the sidecar, DNS over TCP, the sidecar's ready probe, the
//! policy server): `serve` accepts with a backoff when descriptors run out, serves at most a
//! fixed number of connections at once (the rest wait in the listen backlog), stops accepting
//! when told to, and then drains: connections get a signal to finish what they are doing (HTTP
//! connections answer the request in flight and close), and whatever still runs after the drain
//! time is cut.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// How many connections one listener serves at once, and how long a stop waits for them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub drain: Duration,
}

impl Limits {
    /// For a listener whose connections each open one upstream connection: half the descriptors
    /// kz may open, less a reserve, so accepting never starves the upstream side.
    pub fn proxy() -> Limits {
        Limits {
            connections: (descriptor_limit().saturating_sub(RESERVED_FDS) / 2).max(MIN_CONNECTIONS),
            drain: Duration::from_secs(2),
        }
    }

    /// For a listener that answers by itself (the policy server, DNS, the ready probe).
    pub fn server() -> Limits {
        Limits {
            connections: descriptor_limit()
                .saturating_sub(RESERVED_FDS)
                .max(MIN_CONNECTIONS),
            drain: Duration::from_secs(5),
        }
    }
}

/// Descriptors kept free for files, the audit log, provider calls and the runtime.
const RESERVED_FDS: usize = 64;
/// The cap never goes below this, whatever the descriptor limit.
const MIN_CONNECTIONS: usize = 64;

/// kz's soft limit on open descriptors (1024, the usual default, when it cannot be read).
fn descriptor_limit() -> usize {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(1024)
}

/// Tells a connection that the listener is stopping; `requested` resolves then.
#[derive(Clone)]
pub struct Drain(watch::Receiver<bool>);

impl From<watch::Receiver<bool>> for Drain {
    /// A drain requested once `true` is sent.
    fn from(rx: watch::Receiver<bool>) -> Drain {
        Drain(rx)
    }
}

impl Drain {
    /// Resolves once the listener has stopped accepting (never, when its sender is gone
    /// without asking).
    pub async fn requested(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_ok() {
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Runs a connection future until it ends; when a drain is requested first, `finish` asks it
/// to wind down (hyper's `graceful_shutdown`: the request in flight is answered, then the
/// connection closes) and it runs to its end.
pub async fn until_drained<C: Future>(
    conn: C,
    mut drain: Drain,
    finish: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    tokio::pin!(conn);
    tokio::select! {
        out = conn.as_mut() => return out,
        _ = drain.requested() => {}
    }
    finish(conn.as_mut());
    conn.await
}

/// Accepts the next connection. When accepting fails (out of descriptors: `EMFILE`, `ENFILE`,
/// or out of memory) it waits, doubling from 5 ms up to 1 s, instead of spinning.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    let mut pause = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((s, _)) => return s,
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Serves `listener` until `stop` resolves: each accepted connection (TCP_NODELAY set) goes to
/// `handle` in a task of its own, at most `limits.connections` at once; then drains (see the
/// module comment) and returns.
pub async fn serve<H, F>(
    listener: TcpListener,
    stop: impl Future<Output = ()>,
    limits: Limits,
    mut handle: H,
) where
    H: FnMut(TcpStream, Drain) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            slot = slots.clone().acquire_owned() => {
                let slot = slot.expect("the semaphore is never closed");
                let stream = tokio::select! {
                    _ = &mut stop => break,
                    s = accept(&listener) => s,
                };
                let _ = stream.set_nodelay(true);
                let conn = handle(stream, Drain(drain_rx.clone()));
                conns.spawn(async move {
                    conn.await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(limits.drain, drained).await;
    conns.abort_all();
}

/// A stop signal shared by the listeners of one front door: `stop()` once, `stopped()` for each.
#[derive(Clone)]
pub struct Stop(Arc<watch::Sender<bool>>);

impl Default for Stop {
    fn default() -> Self {
        Stop(Arc::new(watch::channel(false).0))
    }
}

impl Stop {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }

    /// Resolves once `stop` has been called.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener() -> (TcpListener, std::net::SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[tokio::test]
    async fn at_most_the_cap_is_served_at_once_and_the_rest_wait() {
        let (l, addr) = listener().await;
        let stop = Stop::default();
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let limits = Limits {
            connections: 2,
            drain: Duration::from_secs(1),
        };
        let (a, p) = (active.clone(), peak.clone());
        let server = tokio::spawn(serve(l, stop.stopped(), limits, move |mut s, _| {
            let (a, p) = (a.clone(), p.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = a.fetch_add(1, SeqCst) + 1;
                p.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = s.write_all(b"x").await;
                a.fetch_sub(1, SeqCst);
            }
        }));
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(tokio::spawn(async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b).await.unwrap();
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
        stop.stop();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_stop_closes_the_listener_signals_the_drain_and_cuts_what_stays() {
        let (l, addr) = listener().await;
        let stop = Stop::default();
        let limits = Limits {
            connections: 8,
            drain: Duration::from_millis(200),
        };
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = drained.clone();
        let server = tokio::spawn(serve(l, stop.stopped(), limits, move |s, mut drain| {
            let d = d.clone();
            async move {
                let _hold = s;
                drain.requested().await;
                d.store(true, std::sync::atomic::Ordering::SeqCst);
                // Ignores the drain from here on: cut after the drain time.
                std::future::pending::<()>().await;
            }
        }));
        let _c = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = std::time::Instant::now();
        stop.stop();
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("serve returns after the drain time")
            .unwrap();
        assert!(drained.load(std::sync::atomic::Ordering::SeqCst));
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }

    #[test]
    fn the_proxy_cap_leaves_room_for_upstream_connections() {
        let l = Limits::proxy();
        assert!(l.connections >= MIN_CONNECTIONS);
        assert!(l.connections * 2 <= descriptor_limit().max(2 * MIN_CONNECTIONS + RESERVED_FDS));
    }
}
