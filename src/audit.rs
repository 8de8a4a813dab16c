//! The audit log: one JSON object per line, appended to a file created `0600`. Callers pass
//! names, refs and outcomes; nothing here ever receives a secret value.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Map, Value};

/// Rewrites a finished line before it is written (blind mode: real values and tokens become
/// `{NAME}`).
pub type LineFilter = Box<dyn Fn(&str) -> String + Send + Sync>;

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

    pub fn open(path: &Path) -> Result<Self, String> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                format!(
                    "audit log {}: cannot open: {}",
                    path.display(),
                    crate::config::io_reason(&e)
                )
            })?;
        Ok(Audit {
            file: Some(Mutex::new(file)),
            filter: std::sync::OnceLock::new(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends one event; `time` and `event` are added first. Write failures go to stderr
    /// once per line rather than failing the caller.
    pub fn record(&self, event: &str, fields: Map<String, Value>) {
        let Some(file) = &self.file else { return };
        let mut obj = Map::new();
        obj.insert("time".into(), crate::time::Utc::now().rfc3339().into());
        obj.insert("event".into(), event.into());
        obj.extend(fields);
        let mut line = Value::Object(obj).to_string();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn appends_json_lines_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let a = Audit::open(&path).unwrap();
        let mut m = Map::new();
        m.insert("name".into(), "X".into());
        a.record("resolve", m.clone());
        a.record("resolve", m);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["event"], "resolve");
        assert_eq!(v["name"], "X");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
