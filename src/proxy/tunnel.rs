//! Opaque tunnels: bytes copied both ways between the agent and a destination kz does not
//! decrypt, with one audit line per tunnel however it ends — both sides closing, an error, or
//! the listener draining (kz run's child has exited, the sidecar got SIGTERM). On a drain a
//! tunnel ends as soon as the agent has closed its side, and after `GRACE` at the latest, so its
//! line is written before the listener cuts what is left.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::audit::Audit;
use crate::serve::Drain;

/// How long a draining listener lets a tunnel the agent still holds open carry on. Shorter than
/// the proxy listener's drain time (`Limits::proxy`), which cuts whatever is left.
pub const GRACE: Duration = Duration::from_secs(1);

/// A reader that counts what it hands out, so a tunnel cut short still knows its bytes.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.bytes += read as u64;
        polled
    }
}

/// Copies one direction until its reader ends or either side fails, then closes the writer's
/// sending side so the peer sees the end too.
async fn one_way<R, W>(from: &mut Counted<R>, to: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::io::copy(from, to).await;
    let _ = to.shutdown().await;
}

/// Relays `client` and `upstream` until both directions have ended (or the drain rule above
/// applies), then writes the tunnel's audit line.
pub async fn relay(
    client: impl AsyncRead + AsyncWrite + Unpin,
    upstream: TcpStream,
    host: &str,
    port: u16,
    audit: &Audit,
    start: Instant,
    mut drain: Drain,
) {
    let (client_r, mut client_w) = tokio::io::split(client);
    let (up_r, mut up_w) = upstream.into_split();
    let mut out = Counted {
        inner: client_r,
        bytes: 0,
    };
    let mut back = Counted {
        inner: up_r,
        bytes: 0,
    };
    {
        let sending = one_way(&mut out, &mut up_w);
        let answering = one_way(&mut back, &mut client_w);
        tokio::pin!(sending, answering);
        let (mut sent, mut answered, mut draining) = (false, false, false);
        // Armed when a drain is requested; polled only then.
        let cut = tokio::time::sleep(GRACE);
        tokio::pin!(cut);
        let drained = drain.requested();
        tokio::pin!(drained);
        while !(sent && answered) {
            tokio::select! {
                _ = &mut sending, if !sent => {
                    sent = true;
                    if draining { break; }
                }
                _ = &mut answering, if !answered => answered = true,
                _ = &mut drained, if !draining => {
                    if sent { break; }
                    draining = true;
                    cut.as_mut().reset(tokio::time::Instant::now() + GRACE);
                }
                _ = &mut cut, if draining => break,
            }
        }
    }
    let record = crate::audit::Tunnel {
        host,
        port,
        bytes_out: out.bytes,
        bytes_in: back.bytes,
        latency_ms: crate::audit::millis(start.elapsed()),
    };
    audit.record("tunnel", &record);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    struct Run {
        agent: TcpStream,
        dest: TcpStream,
        stop: tokio::sync::watch::Sender<bool>,
        done: tokio::task::JoinHandle<()>,
        log: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    /// A tunnel between an "agent" socket and a "destination" socket, relayed by kz.
    async fn tunnel() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let audit = Audit::open(&log).unwrap();
        let (agent, kz_client) = pair().await;
        let (kz_upstream, dest) = pair().await;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let done = tokio::spawn(async move {
            relay(
                kz_client,
                kz_upstream,
                "dest.kz.test",
                443,
                &audit,
                Instant::now(),
                Drain::from(rx),
            )
            .await
        });
        Run {
            agent,
            dest,
            stop,
            done,
            log,
            _dir: dir,
        }
    }

    async fn exchange(r: &mut Run) {
        r.agent.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        r.dest.read_exact(&mut got).await.unwrap();
        r.dest.write_all(b"world!!").await.unwrap();
        let mut got = [0u8; 7];
        r.agent.read_exact(&mut got).await.unwrap();
    }

    fn assert_one_line(log: &std::path::Path) {
        let l = lines(log);
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(l[0]["event"], "tunnel");
        assert_eq!(l[0]["host"], "dest.kz.test");
        assert_eq!(l[0]["bytes_out"], 5);
        assert_eq!(l[0]["bytes_in"], 7);
    }

    #[tokio::test]
    async fn a_tunnel_both_sides_closed_is_audited_with_its_bytes() {
        let mut r = tunnel().await;
        exchange(&mut r).await;
        r.agent.shutdown().await.unwrap();
        let mut rest = Vec::new();
        r.dest.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the agent's end reaches the destination");
        drop(r.dest);
        tokio::time::timeout(Duration::from_secs(5), r.done)
            .await
            .expect("ends once both sides are closed")
            .unwrap();
        assert_one_line(&r.log);
    }

    #[tokio::test]
    async fn a_drain_ends_a_tunnel_the_agent_has_closed_at_once() {
        let mut r = tunnel().await;
        exchange(&mut r).await;
        // The agent is gone; the destination keeps its side open (an idle keep-alive).
        drop(r.agent);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        r.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), r.done)
            .await
            .expect("a drain ends it")
            .unwrap();
        assert!(started.elapsed() < GRACE / 2, "{:?}", started.elapsed());
        assert_one_line(&r.log);
        drop(r.dest);
    }

    #[tokio::test]
    async fn a_drain_cuts_a_tunnel_still_in_use_after_the_grace_and_audits_it() {
        let mut r = tunnel().await;
        exchange(&mut r).await;
        let started = Instant::now();
        r.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), r.done)
            .await
            .expect("the grace ends it")
            .unwrap();
        let took = started.elapsed();
        assert!(took >= GRACE && took < GRACE * 2, "{took:?}");
        assert_one_line(&r.log);
        // Both sides see the tunnel closed.
        let mut rest = Vec::new();
        r.agent.read_to_end(&mut rest).await.unwrap();
        r.dest.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
