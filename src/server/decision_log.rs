//! The decision log on stdout, written by one thread of its own: request handlers only queue a
//! line (a blocking write to a slow pipe never holds a worker thread), and lines queued while a
//! write was under way go out together in the next one. The queue is bounded; when it is full a
//! handler waits for room, so no line is ever dropped. `flush` returns once every line queued
//! before it is written.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};

/// Lines that may wait in the queue before handlers wait for the writer.
const QUEUE: usize = 16 * 1024;

/// One decision-log line: a decision about one ref or name, or an allowed call that kz refused
/// all the same. Built here only, for the HTTP API, the MCP tools and `kz mcp`.
#[derive(Debug, serde::Serialize)]
pub struct Record<'a> {
    pub time: String,
    pub event: &'static str,
    /// Only the HTTP server numbers its decisions (the id is also in its answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<&'a str>,
    pub issuer: Option<&'a serde_json::Value>,
    pub subject: Option<&'a serde_json::Value>,
    #[serde(rename = "ref")]
    pub reference: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub name: Option<&'a str>,
    pub action: &'a str,
    /// `allow`, `deny`, or `refused`.
    pub decision: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

impl<'a> Record<'a> {
    /// The fields every line has; the rest empty.
    fn base(
        claims: &'a serde_json::Map<String, serde_json::Value>,
        action: &'a str,
        decision: &'a str,
    ) -> Self {
        Record {
            time: crate::time::Utc::now().rfc3339(),
            event: "decision",
            decision_id: None,
            issuer: claims.get("iss"),
            subject: claims.get("sub"),
            reference: None,
            provider: None,
            name: None,
            action,
            decision,
            matched: None,
            reason: None,
            latency_ms: None,
        }
    }

    /// A decision about `subject` by the holder of `claims`.
    pub fn decision(
        claims: &'a serde_json::Map<String, serde_json::Value>,
        subject: &'a crate::server::engine::Subject<'a>,
        d: &'a crate::policy::decide::Decision,
        latency: std::time::Duration,
    ) -> Self {
        let decision = if d.allowed { "allow" } else { "deny" };
        Record {
            reference: Some(subject.reference),
            provider: subject.provider.map(|p| p.name()),
            name: subject.name,
            matched: Some(&d.matched),
            latency_ms: Some(crate::audit::millis(latency)),
            ..Record::base(claims, subject.action, decision)
        }
    }

    /// An allowed call on secret `name` that kz refused all the same, and why.
    pub fn refused(
        claims: &'a serde_json::Map<String, serde_json::Value>,
        name: &'a str,
        action: &'a str,
        reason: &'a str,
    ) -> Self {
        Record {
            name: Some(name),
            reason: Some(reason),
            ..Record::base(claims, action, "refused")
        }
    }

    /// The line, without its newline.
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("a decision record serializes")
    }
}

enum Msg {
    Line(String),
    Flush(Sender<()>),
}

pub struct DecisionLog {
    tx: SyncSender<Msg>,
}

impl DecisionLog {
    /// A log writing to stdout.
    pub fn stdout() -> DecisionLog {
        DecisionLog::to(std::io::stdout())
    }

    /// A log writing to `out` (tests use a pipe or a buffer).
    pub fn to(out: impl Write + Send + 'static) -> DecisionLog {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("kz-decision-log".into())
            .spawn(move || write_all(rx, out))
            .expect("spawn the decision-log writer");
        DecisionLog { tx }
    }

    /// Queues one line (without its newline).
    pub fn write(&self, line: String) {
        let _ = self.tx.send(Msg::Line(line));
    }

    /// Waits until every line queued so far has been written out.
    pub fn flush(&self) {
        let (ack, done) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

fn write_all(rx: Receiver<Msg>, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Everything already queued joins this write.
        while let Some(m) = next {
            match m {
                Msg::Line(mut l) => {
                    l.push('\n');
                    if out.write_all(l.as_bytes()).is_err() {
                        eprintln!("kz: decision log: write failed");
                    }
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            eprintln!("kz: decision log: write failed");
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_whole_and_in_order_from_many_threads() {
        let out = Shared::default();
        let log = Arc::new(DecisionLog::to(out.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        log.write(format!("{{\"thread\":{t},\"i\":{i}}}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.flush();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000, "no line lost");
        for t in 0..4 {
            let own: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("{{\"thread\":{t},")))
                .collect();
            let want: Vec<String> = (0..5000)
                .map(|i| format!("{{\"thread\":{t},\"i\":{i}}}"))
                .collect();
            assert_eq!(own, want, "thread {t}'s lines whole and in order");
        }
    }
}
