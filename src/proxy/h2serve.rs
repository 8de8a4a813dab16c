//! The HTTP/2 side towards the agent, on the `h2` crate directly: hyper's HTTP/2 server sends
//! no interim `100 Continue`, so a client that sends `Expect: 100-continue` and waits for it
//! before uploading (curl waits a second) would stall on every upload. Here the `100` goes out
//! at once, then the request is handled as any other. When the listener drains, the client gets
//! a GOAWAY: streams already open are answered, new ones are refused, and the connection closes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame};
use hyper::header::EXPECT;
use hyper::{Request, Response, StatusCode};

use super::upstream::{Body, BoxError, PolledFrame};
use crate::serve::Drain;

/// The most streams one client may have open at once.
const MAX_STREAMS: u32 = 256;

fn expects_continue<T>(req: &Request<T>) -> bool {
    req.headers()
        .get(EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// Serves HTTP/2 on `io` until the client goes away or a drain has wound it down, one task per
/// stream.
pub async fn serve<IO, F, Fut>(io: IO, handler: F, mut drain: Drain)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Body>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let Ok(mut conn) = h2::server::Builder::new()
        .max_concurrent_streams(MAX_STREAMS)
        .handshake::<_, Bytes>(io)
        .await
    else {
        return;
    };
    let drained = drain.requested();
    tokio::pin!(drained);
    let mut draining = false;
    loop {
        let (req, mut respond) = tokio::select! {
            next = conn.accept() => match next {
                Some(Ok(stream)) => stream,
                _ => break,
            },
            _ = &mut drained, if !draining => {
                conn.graceful_shutdown();
                draining = true;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if expects_continue(&req) {
                let mut cont = Response::new(());
                *cont.status_mut() = StatusCode::CONTINUE;
                let _ = respond.send_informational(cont);
            }
            let (mut parts, recv) = req.into_parts();
            parts.headers.remove(EXPECT);
            let body = RecvBody {
                inner: recv,
                done: false,
            }
            .boxed();
            let resp = handler(Request::from_parts(parts, body)).await;
            let (rparts, mut rbody) = resp.into_parts();
            let end = rbody.is_end_stream();
            let Ok(mut send) = respond.send_response(Response::from_parts(rparts, ()), end) else {
                return;
            };
            if end {
                return;
            }
            while let Some(frame) = rbody.frame().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(_) => {
                        send.send_reset(h2::Reason::INTERNAL_ERROR);
                        return;
                    }
                };
                match frame.into_data() {
                    Ok(data) => {
                        if send_data(&mut send, data).await.is_err() {
                            return;
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = send.send_trailers(trailers);
                            return;
                        }
                    }
                }
            }
            let _ = send.send_data(Bytes::new(), true);
        });
    }
}

/// Sends `data` as flow control allows.
async fn send_data(send: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let n = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n.min(data.len()));
        send.send_data(chunk, false)?;
    }
    Ok(())
}

/// A request body from an h2 stream, giving flow-control capacity back as it is read.
struct RecvBody {
    inner: h2::RecvStream,
    done: bool,
}

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = self.inner.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => match self.inner.poll_trailers(cx) {
                Poll::Ready(Ok(Some(t))) => {
                    self.done = true;
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                Poll::Ready(Ok(None)) => {
                    self.done = true;
                    Poll::Ready(None)
                }
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A stream open when the drain comes is answered in full; the client is told to go away,
    /// and the server returns once that stream is done.
    #[tokio::test]
    async fn a_drain_answers_open_streams_then_closes() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (stop, rx) = tokio::sync::watch::channel(false);
        let handler = |_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Response::new(super::super::body::full(Bytes::from_static(
                b"late but whole",
            )))
        };
        let server = tokio::spawn(serve(server_io, handler, Drain::from(rx)));
        let (mut send, conn) = h2::client::handshake(client_io).await.unwrap();
        let driver = tokio::spawn(conn);
        let req = Request::get("https://api.kz.test/").body(()).unwrap();
        let (answer, _) = send.send_request(req, true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        let resp = answer.await.expect("the open stream is answered");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"late but whole");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the connection closes after the drain")
            .unwrap();
        // The client connection has ended too: nothing more is served on it.
        let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
        assert!(ended.is_ok(), "the client saw the connection end");
    }
}
