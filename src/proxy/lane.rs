//! A lane: one upstream HTTP/1.1 connection owned by one intercepted client connection, and
//! the HTTP/1.1 handshake kz uses for lanes and WebSocket upgrades.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::upstream::{Body, BoxError};
use super::{Dest, Proxy};

/// A connection kz speaks HTTP/1.1 over: TLS or plain TCP.
pub(super) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

pub(super) type H1Sender = hyper::client::conn::http1::SendRequest<Body>;
type BoxFut<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// HTTP/1.1 handshake on a fresh connection, its driver spawned with upgrades enabled. Plain
/// functions returning boxed futures keep hyper's body bounds out of the callers' state machines.
pub(super) fn h1_handshake(io: Box<dyn Io>) -> BoxFut<hyper::Result<H1Sender>> {
    Box::pin(async move {
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io)).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(sender)
    })
}

pub(super) fn h1_send(
    sender: &mut H1Sender,
    req: Request<Body>,
) -> BoxFut<hyper::Result<Response<Incoming>>> {
    Box::pin(sender.send_request(req))
}

/// An upstream HTTP/1.1 connection owned by one intercepted client connection and driven in the
/// same task, so a request and its response never cross threads. Opened on first use, reopened
/// when the upstream closes it.
pub struct Lane {
    sender: tokio::sync::Mutex<Option<H1Sender>>,
    driver: tokio::sync::mpsc::UnboundedSender<BoxFut<()>>,
}

impl Lane {
    /// A lane and the receiver of its connection futures, which the caller must poll.
    pub fn new() -> (Arc<Lane>, tokio::sync::mpsc::UnboundedReceiver<BoxFut<()>>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Arc::new(Lane {
                sender: tokio::sync::Mutex::new(None),
                driver: tx,
            }),
            rx,
        )
    }

    /// Sends `req` (origin-form target, `Host` set) on this lane's connection.
    pub(super) fn send<'a>(
        &'a self,
        proxy: &'a Proxy,
        dest: &'a Dest,
        req: Request<Body>,
    ) -> BoxFutRef<'a, Result<Response<Incoming>, BoxError>> {
        Box::pin(async move {
            let mut guard = self.sender.lock().await;
            let mut req = req;
            // One retry: an idle upstream connection may close just as a request is sent, and a
            // request that was never written can safely go on a fresh connection.
            for attempt in 0..2 {
                let reusable = guard.as_ref().is_some_and(|s| !s.is_closed());
                if !reusable || attempt > 0 {
                    *guard = Some(self.connect(proxy, dest).await?);
                }
                let sender = guard.as_mut().expect("set above");
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(resp),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if attempt == 0 => req = unsent,
                        _ => return Err(Box::new(e.into_error()) as BoxError),
                    },
                }
            }
            Err("upstream connection closed".into())
        })
    }

    async fn connect(&self, proxy: &Proxy, dest: &Dest) -> Result<H1Sender, BoxError> {
        let tls = proxy.upstream.connect_tls_h1(&dest.host, dest.port).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tls)).await?;
        let _ = self.driver.send(Box::pin(async move {
            let _ = conn.await;
        }));
        Ok(sender)
    }
}

type BoxFutRef<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
