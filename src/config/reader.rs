//! A checked view of a TOML table: typed getters that record errors with the key path instead
//! of stopping at the first one, and an unknown-key report with "did you mean" suggestions.

use std::collections::BTreeSet;
use toml::{Table, Value};

/// Collects every problem found in one configuration file.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn push(&mut self, path: &str, msg: impl std::fmt::Display) {
        if path.is_empty() {
            self.0.push(msg.to_string());
        } else {
            self.0.push(format!("{path}: {msg}"));
        }
    }
}

/// Joins a key path, quoting keys that are not bare TOML keys.
pub fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Reads known keys out of a table; `finish` reports the keys nobody asked for.
pub struct Reader<'a> {
    pub path: String,
    table: &'a Table,
    used: BTreeSet<&'static str>,
}

impl<'a> Reader<'a> {
    pub fn new(path: impl Into<String>, table: &'a Table) -> Self {
        Reader {
            path: path.into(),
            table,
            used: BTreeSet::new(),
        }
    }

    pub fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.table.get(key)
    }

    pub fn string(&mut self, key: &'static str, p: &mut Problems) -> Option<String> {
        match self.raw(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                p.push(
                    &self.key_path(key),
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn nonempty_string(&mut self, key: &'static str, p: &mut Problems) -> Option<String> {
        let s = self.string(key, p)?;
        if s.trim().is_empty() {
            p.push(&self.key_path(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn bool(&mut self, key: &'static str, p: &mut Problems) -> Option<bool> {
        match self.raw(key)? {
            Value::Boolean(b) => Some(*b),
            other => {
                p.push(
                    &self.key_path(key),
                    format!("expected true or false, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn string_list(&mut self, key: &'static str, p: &mut Problems) -> Option<Vec<String>> {
        match self.raw(key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => p.push(
                            &format!("{}[{i}]", self.key_path(key)),
                            format!("expected a string, found {}", type_name(other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                p.push(
                    &self.key_path(key),
                    format!("expected an array of strings, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn table(&mut self, key: &'static str, p: &mut Problems) -> Option<&'a Table> {
        match self.raw(key)? {
            Value::Table(t) => Some(t),
            other => {
                p.push(
                    &self.key_path(key),
                    format!("expected a table, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A duration such as `"10s"` or `"1m 30s"`, or an integer number of seconds.
    pub fn duration(&mut self, key: &'static str, p: &mut Problems) -> Option<std::time::Duration> {
        match self.raw(key)? {
            Value::Integer(n) if *n > 0 => Some(std::time::Duration::from_secs(*n as u64)),
            Value::String(s) => match humantime::parse_duration(s) {
                Ok(d) if !d.is_zero() => Some(d),
                _ => {
                    p.push(
                        &self.key_path(key),
                        format!("invalid duration {s:?} (examples: \"10s\", \"2m\")"),
                    );
                    None
                }
            },
            other => {
                p.push(
                    &self.key_path(key),
                    format!(
                        "expected a duration such as \"10s\", found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    /// Reports every key of the table that was never read.
    pub fn finish(self, p: &mut Problems) {
        let known: Vec<&str> = self.used.iter().copied().collect();
        for key in self.table.keys() {
            if !self.used.contains(key.as_str()) {
                p.push(&self.key_path(key), unknown_key_message(key, &known));
            }
        }
    }
}

pub fn unknown_key_message(key: &str, known: &[&str]) -> String {
    match suggest(key, known.iter().copied()) {
        Some(s) => format!("unknown key (did you mean {s:?}?)"),
        None if known.is_empty() => "unknown key".to_string(),
        None => format!("unknown key (expected one of: {})", known.join(", ")),
    }
}

/// The closest candidate within a small edit distance, if any.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("hostz", ["hosts", "ref", "key"]), Some("hosts"));
        assert_eq!(suggest("provder", ["provider", "ref"]), Some("provider"));
        assert_eq!(suggest("zzzzzz", ["hosts", "ref"]), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn join_quotes_odd_keys() {
        assert_eq!(
            join("network.hosts", "api.kz.test"),
            "network.hosts.\"api.kz.test\""
        );
        assert_eq!(join("", "secrets"), "secrets");
    }
}
