//! A streaming multi-pattern replacer over byte chunks (Aho–Corasick, leftmost-longest): the one
//! engine behind output masking, token swapping and response scrubbing.
//!
//! After each chunk it releases everything except the longest tail that could still be the start
//! of a pattern, so a pattern split across chunks is still found and nothing else is delayed.
//! A pattern may be marked forbidden: meeting it stops the stream with its index.

use std::collections::HashSet;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use zeroize::{Zeroize, Zeroizing};

/// A pattern or replacement; may hold secret material, so it is wiped on drop.
pub type Bytes = Zeroizing<Vec<u8>>;

/// Compiled patterns and what each becomes (`None`: forbidden).
pub struct PatternSet {
    ac: AhoCorasick,
    replacements: Vec<Option<Zeroizing<Vec<u8>>>>,
    prefixes: PrefixSet,
    max_len: usize,
}

/// Proper prefixes of patterns (which may be secret values); wiped when dropped.
#[derive(Default)]
struct PrefixSet(HashSet<Vec<u8>>);

impl Drop for PrefixSet {
    fn drop(&mut self) {
        for mut p in std::mem::take(&mut self.0) {
            p.zeroize();
        }
    }
}

impl PatternSet {
    /// `None` when there is no non-empty pattern.
    pub fn new(pairs: Vec<(Bytes, Option<Bytes>)>) -> Option<Arc<PatternSet>> {
        let pairs: Vec<_> = pairs.into_iter().filter(|(p, _)| !p.is_empty()).collect();
        if pairs.is_empty() {
            return None;
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(pairs.iter().map(|(p, _)| p.as_slice()))
            .expect("patterns compile");
        let mut prefixes = PrefixSet::default();
        for (p, _) in &pairs {
            for n in 1..p.len() {
                prefixes.0.insert(p[..n].to_vec());
            }
        }
        let max_len = pairs.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        Some(Arc::new(PatternSet {
            ac,
            replacements: pairs.into_iter().map(|(_, r)| r).collect(),
            prefixes,
            max_len,
        }))
    }

    pub fn stream(self: &Arc<Self>) -> StreamReplacer {
        StreamReplacer {
            set: self.clone(),
            pending: Zeroizing::new(Vec::new()),
            seen: Default::default(),
        }
    }

    /// Indices of the patterns that occur in `data`.
    pub fn indices(&self, data: &[u8]) -> std::collections::BTreeSet<usize> {
        self.ac
            .find_iter(data)
            .map(|m| m.pattern().as_usize())
            .collect()
    }

    /// Whether any pattern occurs in `data`.
    pub fn is_match(&self, data: &[u8]) -> bool {
        self.ac.is_match(data)
    }

    /// Replaces every pattern in a complete buffer; `Err(index)` for a forbidden pattern.
    pub fn replace_all(&self, data: &[u8]) -> Result<Option<Vec<u8>>, usize> {
        if !self.ac.is_match(data) {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut last = 0;
        for m in self.ac.find_iter(data) {
            let rep = self.replacements[m.pattern().as_usize()]
                .as_ref()
                .ok_or(m.pattern().as_usize())?;
            out.extend_from_slice(&data[last..m.start()]);
            out.extend_from_slice(rep);
            last = m.end();
        }
        out.extend_from_slice(&data[last..]);
        Ok(Some(out))
    }

    /// Length of the longest suffix of `buf` that is a proper prefix of some pattern.
    fn overlap(&self, buf: &[u8]) -> usize {
        let longest = buf.len().min(self.max_len.saturating_sub(1));
        (1..=longest)
            .rev()
            .find(|&k| self.prefixes.0.contains(&buf[buf.len() - k..]))
            .unwrap_or(0)
    }
}

/// One stream's state.
pub struct StreamReplacer {
    set: Arc<PatternSet>,
    pending: Zeroizing<Vec<u8>>,
    seen: std::collections::BTreeSet<usize>,
}

impl StreamReplacer {
    /// Feeds a chunk; appends to `out` what can be released now. `Err(index)` when a
    /// forbidden pattern is met (nothing from that point on is released).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), usize> {
        self.pending.extend_from_slice(chunk);
        let boundary = self.pending.len() - self.set.overlap(&self.pending);
        self.release(boundary, out)
    }

    /// End of stream: releases everything still held.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), usize> {
        let len = self.pending.len();
        self.release(len, out)
    }

    /// Bytes held back, waiting to see whether they start a pattern.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Indices of the patterns replaced so far.
    pub fn seen(&self) -> &std::collections::BTreeSet<usize> {
        &self.seen
    }

    fn release(&mut self, boundary: usize, out: &mut Vec<u8>) -> Result<(), usize> {
        let mut emitted = 0;
        for m in self.set.ac.find_iter(&self.pending[..]) {
            // A match starting in the held tail may still grow; leave it for the next chunk.
            if m.start() >= boundary {
                break;
            }
            let idx = m.pattern().as_usize();
            let Some(rep) = self.set.replacements[idx].as_ref() else {
                out.extend_from_slice(&self.pending[emitted..m.start()]);
                self.pending.drain(..m.start());
                return Err(idx);
            };
            out.extend_from_slice(&self.pending[emitted..m.start()]);
            out.extend_from_slice(rep);
            self.seen.insert(idx);
            emitted = m.end();
        }
        let upto = boundary.max(emitted);
        if upto > emitted {
            out.extend_from_slice(&self.pending[emitted..upto]);
        }
        self.pending.drain(..upto);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(s: &str) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(s.as_bytes().to_vec())
    }

    #[test]
    fn forbidden_patterns_stop_the_stream_before_them() {
        let set = PatternSet::new(vec![
            (z("KZ_TOK_a"), Some(z("value-a"))),
            (z("KZ_TOK_b"), None),
        ])
        .unwrap();
        let mut r = set.stream();
        let mut out = Vec::new();
        r.push(b"x=KZ_TOK_a&y=KZ_T", &mut out).unwrap();
        assert_eq!(out, b"x=value-a&y=");
        assert_eq!(r.push(b"OK_b&z", &mut out), Err(1));
        assert_eq!(out, b"x=value-a&y=");
        assert_eq!(set.replace_all(b"KZ_TOK_a KZ_TOK_b"), Err(1));
        assert_eq!(set.replace_all(b"none").unwrap(), None);
        assert_eq!(
            set.replace_all(b"<KZ_TOK_a>").unwrap().unwrap(),
            b"<value-a>"
        );
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn token_split_in_small_pieces_is_replaced() {
        let tok = "KZ_TOK_p7nyN4JwZej1OX3aTU";
        let set = PatternSet::new(vec![
            (
                Zeroizing::new(tok.as_bytes().to_vec()),
                Some(Zeroizing::new(b"REAL".to_vec())),
            ),
            (
                Zeroizing::new(b"KZ_TOK_zzzzzzzzzzzzzzzzzzzzzz".to_vec()),
                None,
            ),
        ])
        .unwrap();
        let mut r = set.stream();
        let mut out = Vec::new();
        r.push(b"start ", &mut out).unwrap();
        for piece in tok.as_bytes().chunks(5) {
            r.push(piece, &mut out).unwrap();
        }
        r.push(b" end", &mut out).unwrap();
        r.finish(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "start REAL end");
    }
}
