//! The audit log: one JSON object per line, appended to a file created `0600`. Callers pass
//! names, refs and outcomes; nothing here ever receives a secret value.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// Rewrites a finished line before it is written (blind mode: real values and tokens become
/// `{NAME}`).
pub type LineFilter = Box<dyn Fn(&str) -> String + Send + Sync>;

/// The audit log could not be opened (it is not created when it cannot be written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log {0}: cannot open: {1}")]
pub struct OpenError(String, String);

/// An open audit log, or a no-op when auditing is off.
#[derive(Default)]
pub struct Audit {
    file: Option<Mutex<File>>,
    filter: std::sync::OnceLock<LineFilter>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.file.is_some())
            .finish()
    }
}

impl Audit {
    pub fn disabled() -> Self {
        Audit::default()
    }

    /// Every line from now on passes through `filter` (set once; later calls are ignored).
    pub fn set_filter(&self, filter: LineFilter) {
        let _ = self.filter.set(filter);
    }

    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| OpenError(path.display().to_string(), crate::fs::io_reason(&e)))?;
        Ok(Audit {
            file: Some(Mutex::new(file)),
            filter: std::sync::OnceLock::new(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends one event: `time` and `event`, then the record's fields. Write failures go to
    /// stderr once per line rather than failing the caller.
    pub fn record(&self, event: &str, fields: &impl Serialize) {
        let Some(file) = &self.file else { return };
        let line = Line {
            time: crate::time::Utc::now().rfc3339(),
            event,
            fields,
        };
        let mut line = match serde_json::to_string(&line) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("kz: audit log: cannot write a {event} line: {e}");
                return;
            }
        };
        if let Some(filter) = self.filter.get() {
            line = filter(&line);
        }
        line.push('\n');
        // One write call per line, so concurrent writers with O_APPEND never interleave.
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            eprintln!("kz: audit log: write failed: {e}");
        }
    }
}

#[derive(Serialize)]
struct Line<'a, T> {
    time: String,
    event: &'a str,
    #[serde(flatten)]
    fields: &'a T,
}

/// Milliseconds with microsecond precision, as every `latency_ms` field has.
pub fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `resolve`: one secret's resolution by `kz run` and the commands that resolve.
#[derive(Serialize)]
pub struct Resolve<'a> {
    pub name: &'a str,
    pub provider: &'a str,
    #[serde(rename = "ref")]
    pub reference: String,
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    pub latency_ms: f64,
}

/// `request`: one request forwarded by the blind proxy (paths with tokens shown as `{NAME}`).
#[derive(Serialize)]
pub struct Request<'a> {
    pub host: &'a str,
    pub port: u16,
    pub method: &'a str,
    pub path: &'a str,
    /// The names of the secrets swapped in.
    pub secrets: Vec<&'a str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    pub latency_ms: f64,
}

/// `tunnel`: a CONNECT to a host no secret is bound to, passed through undecrypted.
#[derive(Serialize)]
pub struct Tunnel<'a> {
    pub host: &'a str,
    pub port: u16,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub latency_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn appends_json_lines_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let a = Audit::open(&path).unwrap();
        let m = serde_json::json!({"name": "X"});
        a.record("resolve", &m);
        a.record("resolve", &m);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["event"], "resolve");
        assert_eq!(v["name"], "X");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
