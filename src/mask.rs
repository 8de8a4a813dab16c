//! Streaming masker for a child's output: every secret value, and its base64 and URL-encoded
//! forms, becomes `<concealed by kz>`, also when a value is split across writes. Pure over byte
//! chunks; the caller does the I/O.
//!
//! Built on the streaming replacer in `conceal::replace`: output is delayed only while it might be
//! the start of a value, and a value that contains another is concealed whole.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::conceal::forms::{forms, MIN_MASK_LEN, MIN_UNALIGNED_LEN};
use crate::conceal::replace::{PatternSet, StreamReplacer};

pub const CONCEALED: &[u8] = CONCEALED_TEXT.as_bytes();
pub const CONCEALED_TEXT: &str = "<concealed by kz>";

/// The compiled patterns, shared by the stdout and stderr maskers.
pub struct MaskSet(Arc<PatternSet>);

impl MaskSet {
    /// `None` when no value is long enough to mask.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Arc<MaskSet>> {
        let (mut pairs, mut wrapped) = (Vec::new(), Vec::new());
        for v in values {
            if v.len() >= MIN_MASK_LEN {
                for f in forms(v) {
                    // Long forms are also concealed when the output wraps them across lines.
                    let list = if f.len() >= MIN_UNALIGNED_LEN {
                        &mut wrapped
                    } else {
                        &mut pairs
                    };
                    list.push((f, Some(Zeroizing::new(CONCEALED.to_vec()))));
                }
            }
        }
        PatternSet::with_wrapped(pairs, wrapped).map(|p| Arc::new(MaskSet(p)))
    }

    pub fn masker(self: &Arc<Self>) -> Masker {
        Masker(self.0.stream())
    }
}

/// One output stream's masking state.
pub struct Masker(StreamReplacer);

impl Masker {
    /// Feeds a chunk; appends to `out` what can be released now.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        // Every mask pattern has a replacement, so nothing is ever refused.
        let _ = self.0.push(chunk, out);
    }

    /// End of stream: releases everything still held.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let _ = self.0.finish(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use proptest::prelude::*;

    fn mask_chunks(set: &Arc<MaskSet>, chunks: &[&[u8]]) -> Vec<u8> {
        let mut m = set.masker();
        let mut out = Vec::new();
        for c in chunks {
            m.push(c, &mut out);
        }
        m.finish(&mut out);
        out
    }

    #[test]
    fn conceals_value_and_encodings() {
        let set = MaskSet::new(["s3cr3t/val+ue"]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t/val+ue");
        let input = format!("a s3cr3t/val+ue b {b64} c s3cr3t%2Fval%2Bue d");
        let out = mask_chunks(&set, &[input.as_bytes()]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a <concealed by kz> b <concealed by kz> c <concealed by kz> d"
        );
    }

    #[test]
    fn output_that_wraps_a_long_value_is_concealed_too() {
        // `base64` wraps at 76 columns; a value printed across terminal lines wraps anywhere.
        let value =
            "sk-live-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ-9876543210";
        let set = MaskSet::new([value]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(value);
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let input = format!(
            "$ base64 key\n{}\n$ cat key\n{}\n{}\n$ ",
            wrapped.join("\n"),
            &value[..50],
            &value[50..]
        );
        let chunks: Vec<&[u8]> = input.as_bytes().chunks(9).collect();
        let out = String::from_utf8(mask_chunks(&set, &chunks)).unwrap();
        assert_eq!(
            out,
            "$ base64 key\n<concealed by kz>\n$ cat key\n<concealed by kz>\n$ "
        );
    }

    #[test]
    fn split_across_writes_and_partial_prefixes_released() {
        let set = MaskSet::new(["hunter2hunter2"]).unwrap();
        let out = mask_chunks(&set, &[b"x hun", b"ter2hu", b"nter2 y"]);
        assert_eq!(out, b"x <concealed by kz> y");
        // A prefix that never completes comes out unchanged, and text that cannot start a
        // value is released at once.
        let mut m = set.masker();
        let mut out = Vec::new();
        m.push(b"prompt> hunt", &mut out);
        assert_eq!(out, b"prompt> ");
        m.push(b"ing", &mut out);
        assert_eq!(out, b"prompt> hunting");
    }

    #[test]
    fn longest_match_first() {
        let set = MaskSet::new(["abcd", "abcdefgh"]).unwrap();
        assert_eq!(
            mask_chunks(&set, &[b"abcd", b"efgh!"]),
            b"<concealed by kz>!"
        );
        assert_eq!(mask_chunks(&set, &[b"abcdX"]), b"<concealed by kz>X");
    }

    #[test]
    fn value_inside_longer_base64_is_found_at_every_alignment() {
        let v = "s3cr3t-value-42";
        let set = MaskSet::new([v]).unwrap();
        for prefix in ["", "u:", "us:", "use:", "user:"] {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{v}"));
            let out = String::from_utf8(mask_chunks(&set, &[b64.as_bytes()])).unwrap();
            assert!(out.contains("<concealed by kz>"), "{prefix:?}: {out}");
        }
    }

    #[test]
    fn short_values_are_not_masked() {
        assert!(MaskSet::new(["abc"]).is_none());
    }

    proptest! {
        /// However the output is split into writes, no value survives and the rest is intact.
        #[test]
        fn any_split_conceals(
            secret in "[a-zA-Z0-9+/=]{4,24}",
            noise in proptest::collection::vec("[ -~]{0,12}", 1..6),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let set = MaskSet::new([secret.as_str()]).unwrap();
            let text = noise.join(&secret);
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points { chunks.push(&bytes[last..p]); last = p; }
            chunks.push(&bytes[last..]);
            let whole = mask_chunks(&set, &[bytes]);
            let split = mask_chunks(&set, &chunks);
            prop_assert_eq!(&whole, &split);
            let s = String::from_utf8(split).unwrap().replace("<concealed by kz>", "\0");
            prop_assert!(!s.contains(&secret));
        }
    }
}
