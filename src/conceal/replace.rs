//! A streaming multi-pattern replacer over byte chunks (Aho–Corasick, leftmost-longest): the one
//! engine behind output masking, token swapping and response scrubbing.
//!
//! After each chunk it releases everything except the longest tail that could still be the start
//! of a pattern, so a pattern split across chunks is still found and nothing else is delayed.
//! A pattern may be marked forbidden: meeting it stops the stream with its index.
//!
//! Longer than 400 lines because the whole-buffer and streaming paths must find exactly the same
//! matches, which is easiest to check side by side.

use std::cmp::Reverse;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use zeroize::Zeroizing;

/// A pattern or replacement; may hold secret material, so it is wiped on drop.
pub type Bytes = Zeroizing<Vec<u8>>;

/// A forbidden pattern was found (a token of secret `.0` where that secret is not bound): the
/// replacer stops rather than pass it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pattern {0} may not pass here")]
pub struct Forbidden(pub usize);

/// Compiled patterns and what each becomes (`None`: forbidden).
pub struct PatternSet {
    main: Layer,
    /// Patterns also found with line breaks anywhere inside them (see `unwrap_lines`); pattern
    /// `i` here is pattern `wrapped_base + i` of `main`.
    wrapped: Option<Layer>,
    wrapped_base: usize,
    /// Bytes that occur in some wrapped pattern: a break with none of them beside it cannot be
    /// inside a wrapped match, which spares the flat scan for most text.
    wrap_bytes: [bool; 256],
    replacements: Vec<Option<Zeroizing<Vec<u8>>>>,
    /// The length of the shortest pattern: shorter text holds none.
    min_len: usize,
}

/// One automaton and what the stream must hold back for it.
struct Layer {
    ac: AhoCorasick,
    /// The patterns, sorted (they may be secret values; wiped when dropped).
    sorted: Vec<Bytes>,
    max_len: usize,
}

impl Layer {
    fn new<'a>(patterns: impl Iterator<Item = &'a [u8]> + Clone) -> Layer {
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.clone())
            .expect("patterns compile");
        let mut sorted: Vec<Bytes> = patterns.map(|p| Zeroizing::new(p.to_vec())).collect();
        sorted.sort_unstable_by(|a, b| a.as_slice().cmp(b.as_slice()));
        sorted.dedup_by(|a, b| a.as_slice() == b.as_slice());
        let max_len = sorted.iter().map(|p| p.len()).max().unwrap_or(0);
        Layer {
            ac,
            sorted,
            max_len,
        }
    }

    /// Whether `s` is a proper prefix of some pattern. Patterns starting with `s` sort right
    /// after `s` itself, so the first two at or after it decide.
    fn extends(&self, s: &[u8]) -> bool {
        let i = self.sorted.partition_point(|p| p.as_slice() < s);
        self.sorted[i..]
            .iter()
            .take(2)
            .any(|p| p.len() > s.len() && p.starts_with(s))
    }

    /// Length of the longest suffix of `buf` that is a proper prefix of some pattern.
    fn overlap(&self, buf: &[u8]) -> usize {
        let longest = buf.len().min(self.max_len.saturating_sub(1));
        (1..=longest)
            .rev()
            .find(|&k| self.extends(&buf[buf.len() - k..]))
            .unwrap_or(0)
    }
}

/// A match: bytes `start..end` of the input are pattern `idx`.
#[derive(Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    idx: usize,
}

/// `buf` without its line breaks, and where they were: `removed[i] = (p, n)` says that before
/// byte `p` of the flat text, `n` bytes were removed in all. A backslash at the very end (maybe the
/// start of an escaped break) is dropped too and reported as `dangling`.
struct Flat {
    text: Zeroizing<Vec<u8>>,
    removed: Vec<(usize, usize)>,
    dangling: Option<usize>,
}

impl Flat {
    fn new(buf: &[u8]) -> Flat {
        let mut text = Zeroizing::new(Vec::with_capacity(buf.len()));
        let mut removed = Vec::new();
        let mut dangling = None;
        let mut total = 0;
        let mut i = 0;
        while let Some(off) = memchr::memchr3(b'\n', b'\r', b'\\', &buf[i..]) {
            let at = i + off;
            text.extend_from_slice(&buf[i..at]);
            let skip = match (buf[at], buf.get(at + 1)) {
                (b'\\', Some(b'n' | b'r')) => 2,
                (b'\\', None) => {
                    dangling = Some(at);
                    1
                }
                (b'\\', Some(_)) => {
                    // An ordinary escape: keep both bytes (the second may be a backslash).
                    text.extend_from_slice(&buf[at..at + 2]);
                    i = at + 2;
                    continue;
                }
                _ => 1,
            };
            total += skip;
            removed.push((text.len(), total));
            i = at + skip;
        }
        text.extend_from_slice(&buf[i.min(buf.len())..]);
        Flat {
            text,
            removed,
            dangling,
        }
    }

    /// Where byte `f` of the flat text is in the original.
    fn original(&self, f: usize) -> usize {
        let i = self.removed.partition_point(|&(p, _)| p <= f);
        f + if i == 0 { 0 } else { self.removed[i - 1].1 }
    }
}

/// Buffers longer than this are replaced chunk by chunk (bounded scratch space).
const WHOLE_BUFFER: usize = 1 << 20;

impl PatternSet {
    /// `None` when there is no non-empty pattern.
    pub fn new(pairs: Vec<(Bytes, Option<Bytes>)>) -> Option<Arc<PatternSet>> {
        Self::with_wrapped(pairs, Vec::new())
    }

    /// Like `new`; `wrapped` patterns are also found with line breaks (`\n`, `\r\n`, or
    /// JSON-escaped) anywhere inside them, at any width: base64 or hex wrapped by MIME, PEM,
    /// `base64`, `xxd` or a file-content API.
    pub fn with_wrapped(
        pairs: Vec<(Bytes, Option<Bytes>)>,
        wrapped: Vec<(Bytes, Option<Bytes>)>,
    ) -> Option<Arc<PatternSet>> {
        // A pattern holding a break itself is only matched as it is.
        let (wrapped, broken): (Vec<_>, Vec<_>) = wrapped
            .into_iter()
            .filter(|(p, _)| !p.is_empty())
            .partition(|(p, _)| {
                let flat = Flat::new(p);
                flat.removed.is_empty() && flat.dangling.is_none()
            });
        let mut pairs: Vec<_> = pairs.into_iter().filter(|(p, _)| !p.is_empty()).collect();
        pairs.extend(broken);
        if pairs.is_empty() && wrapped.is_empty() {
            return None;
        }
        let wrapped_base = pairs.len();
        let all = pairs.iter().chain(&wrapped);
        let main = Layer::new(all.clone().map(|(p, _)| p.as_slice()));
        let wrapped_layer =
            (!wrapped.is_empty()).then(|| Layer::new(wrapped.iter().map(|(p, _)| p.as_slice())));
        let mut wrap_bytes = [false; 256];
        for (p, _) in &wrapped {
            for &b in p.iter() {
                wrap_bytes[b as usize] = true;
            }
        }
        let min_len = all.clone().map(|(p, _)| p.len()).min().unwrap_or(0);
        Some(Arc::new(PatternSet {
            min_len,
            main,
            wrapped: wrapped_layer,
            wrapped_base,
            wrap_bytes,
            replacements: all.map(|(_, r)| r.clone()).collect(),
        }))
    }

    pub fn stream(self: &Arc<Self>) -> StreamReplacer {
        StreamReplacer {
            set: self.clone(),
            pending: Zeroizing::new(Vec::new()),
            seen: Default::default(),
        }
    }

    /// Non-overlapping matches in `buf`, leftmost first and longest at each start.
    fn hits(&self, buf: &[u8]) -> Vec<Hit> {
        // Shorter than every pattern (a wrapped match is longer still): nothing to find.
        if buf.len() < self.min_len {
            return Vec::new();
        }
        let mut hits: Vec<Hit> = self
            .main
            .ac
            .find_iter(buf)
            .map(|m| Hit {
                start: m.start(),
                end: m.end(),
                idx: m.pattern().as_usize(),
            })
            .collect();
        let Some(w) = self
            .wrapped
            .as_ref()
            .filter(|_| self.break_between_pattern_bytes(buf, false))
        else {
            return hits;
        };
        let flat = Flat::new(buf);
        let before = hits.len();
        for m in w.ac.find_iter(&flat.text[..]) {
            let start = flat.original(m.start());
            let end = flat.original(m.end() - 1) + 1;
            // Unbroken occurrences are already matches of `main`.
            if end - start > m.end() - m.start() {
                hits.push(Hit {
                    start,
                    end,
                    idx: self.wrapped_base + m.pattern().as_usize(),
                });
            }
        }
        if hits.len() > before {
            hits.sort_unstable_by_key(|h| (h.start, Reverse(h.end)));
            let mut last_end = 0;
            hits.retain(|h| {
                let keep = h.start >= last_end;
                if keep {
                    last_end = h.end;
                }
                keep
            });
        }
        hits
    }

    /// Where the held tail of a stream starts: nothing from there on can be released yet,
    /// because it may be the start of a pattern (broken across lines, for wrapped ones).
    fn boundary(&self, buf: &[u8]) -> usize {
        let mut boundary = buf.len() - self.main.overlap(buf);
        if let Some(w) = &self.wrapped {
            // Every wrapped pattern is also in `main`, so only a tail with breaks adds anything;
            // a break is at most 4 bytes, so a pattern's prefix spans at most 5 bytes per byte.
            let from = buf.len().saturating_sub(5 * w.max_len);
            let tail = &buf[from..];
            if self.break_between_pattern_bytes(tail, true) {
                let flat = Flat::new(tail);
                let k = w.overlap(&flat.text);
                let held = if k > 0 {
                    Some(flat.original(flat.text.len() - k))
                } else {
                    flat.dangling
                };
                if let Some(h) = held {
                    boundary = boundary.min(from + h);
                }
            }
        }
        boundary
    }

    /// Whether `buf` has a line break with a byte of some wrapped pattern right before it and
    /// right after it (`open_end`: or the buffer ending there, more text may follow). Only such
    /// a break can be inside a wrapped match. Errs towards yes (an escaped backslash followed by
    /// `n` counts as a break here).
    fn break_between_pattern_bytes(&self, buf: &[u8], open_end: bool) -> bool {
        let mut i = 0;
        while let Some(off) = memchr::memchr3(b'\n', b'\r', b'\\', &buf[i..]) {
            let at = i + off;
            let mut end = at;
            loop {
                match (buf.get(end), buf.get(end + 1)) {
                    (Some(b'\n' | b'\r'), _) => end += 1,
                    (Some(b'\\'), Some(b'n' | b'r')) => end += 2,
                    (Some(b'\\'), None) => end += 1,
                    _ => break,
                }
            }
            if end > at {
                let left = at
                    .checked_sub(1)
                    .is_some_and(|p| self.wrap_bytes[buf[p] as usize]);
                let right = match buf.get(end) {
                    Some(&b) => self.wrap_bytes[b as usize],
                    None => open_end,
                };
                if left && right {
                    return true;
                }
            }
            i = end.max(at + 1);
        }
        false
    }

    /// Indices of the patterns that occur in `data`.
    pub fn indices(&self, data: &[u8]) -> std::collections::BTreeSet<usize> {
        self.hits(data).into_iter().map(|h| h.idx).collect()
    }

    /// Whether any pattern occurs in `data`. A wrapped match needs a line break between pattern
    /// bytes, so text without one is settled by the main automaton alone (one pass).
    pub fn is_match(&self, data: &[u8]) -> bool {
        if data.len() < self.min_len {
            return false;
        }
        self.main.ac.is_match(data)
            || (self.wrapped.is_some()
                && self.break_between_pattern_bytes(data, false)
                && !self.hits(data).is_empty())
    }

    /// Replaces every pattern in a complete buffer; `Err` for a forbidden pattern.
    pub fn replace_all(self: &Arc<Self>, data: &[u8]) -> Result<Option<Vec<u8>>, Forbidden> {
        self.replace_inner(data, None)
    }

    /// As `replace_all`, and adds the index of every pattern replaced to `seen` (one pass,
    /// where `replace_all` followed by `indices` would scan twice).
    pub fn replace_noting(
        self: &Arc<Self>,
        data: &[u8],
        seen: &mut std::collections::BTreeSet<usize>,
    ) -> Result<Option<Vec<u8>>, Forbidden> {
        self.replace_inner(data, Some(seen))
    }

    fn replace_inner(
        self: &Arc<Self>,
        data: &[u8],
        mut seen: Option<&mut std::collections::BTreeSet<usize>>,
    ) -> Result<Option<Vec<u8>>, Forbidden> {
        if self.wrapped.is_some() && data.len() > WHOLE_BUFFER {
            let mut s = self.stream();
            let mut out = Vec::with_capacity(data.len() + 64);
            for chunk in data.chunks(WHOLE_BUFFER / 4) {
                s.push(chunk, &mut out)?;
            }
            s.finish(&mut out)?;
            if let Some(seen) = seen {
                seen.extend(s.seen.iter().copied());
            }
            return Ok((!s.seen.is_empty()).then_some(out));
        }
        let hits = self.hits(data);
        if hits.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut last = 0;
        for h in hits {
            let rep = self.replacements[h.idx].as_ref().ok_or(Forbidden(h.idx))?;
            if let Some(seen) = seen.as_deref_mut() {
                seen.insert(h.idx);
            }
            out.extend_from_slice(&data[last..h.start]);
            out.extend_from_slice(rep);
            last = h.end;
        }
        out.extend_from_slice(&data[last..]);
        Ok(Some(out))
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
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), Forbidden> {
        self.pending.extend_from_slice(chunk);
        let boundary = self.set.boundary(&self.pending);
        self.release(boundary, out)
    }

    /// End of stream: releases everything still held.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Forbidden> {
        let len = self.pending.len();
        self.release(len, out)
    }

    /// Indices of the patterns replaced so far.
    pub fn seen(&self) -> &std::collections::BTreeSet<usize> {
        &self.seen
    }

    fn release(&mut self, boundary: usize, out: &mut Vec<u8>) -> Result<(), Forbidden> {
        let mut emitted = 0;
        for m in self.set.hits(&self.pending[..]) {
            // A match starting in the held tail may still grow; leave it for the next chunk.
            if m.start >= boundary {
                break;
            }
            let idx = m.idx;
            let Some(rep) = self.set.replacements[idx].as_ref() else {
                out.extend_from_slice(&self.pending[emitted..m.start]);
                self.pending.drain(..m.start);
                return Err(Forbidden(idx));
            };
            out.extend_from_slice(&self.pending[emitted..m.start]);
            out.extend_from_slice(rep);
            self.seen.insert(idx);
            emitted = m.end;
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
        assert_eq!(r.push(b"OK_b&z", &mut out), Err(Forbidden(1)));
        assert_eq!(out, b"x=value-a&y=");
        assert_eq!(set.replace_all(b"KZ_TOK_a KZ_TOK_b"), Err(Forbidden(1)));
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
