//! Undoing the JSON escapes that can hide characters (`\u0041`, `\u00e9`, `\ud83d\ude00`,
//! `\/`) in responses, so a value echoed with any mix of escaped and literal characters is still
//! found by the scrubber. The result is the same JSON: every `\uXXXX` escape (a surrogate pair
//! as one) is rewritten the way a serialiser writes that character: itself (UTF-8), or `\"`,
//! `\\`, `\n`, … A lone surrogate stays as it is.

/// Streaming state: the tail of the previous chunk that may be an unfinished escape.
#[derive(Default)]
pub struct JsonUnescape {
    held: Vec<u8>,
}

fn hex4(b: &[u8]) -> Option<u32> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
}

/// An ASCII character written the way a JSON serialiser writes it (as `serde_json` does, and
/// so as kz's own JSON form of each value): itself, a short escape, or `\u00xx`.
fn canonical(c: u8, out: &mut Vec<u8>) {
    match c {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        c if c < 0x20 => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
        c => out.push(c),
    }
}

fn push_char(ch: char, out: &mut Vec<u8>) {
    let mut b = [0u8; 4];
    out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
}

impl JsonUnescape {
    /// Appends `data`, unescaped, to `out`; with `end`, also whatever is still held.
    pub fn push(&mut self, data: &[u8], end: bool, out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        let mut i = 0;
        while i < buf.len() {
            if buf[i] != b'\\' {
                let next = buf[i..]
                    .iter()
                    .position(|b| *b == b'\\')
                    .map_or(buf.len(), |p| i + p);
                out.extend_from_slice(&buf[i..next]);
                i = next;
                continue;
            }
            let high = buf.get(i + 1) == Some(&b'u')
                && buf
                    .get(i + 2..i + 6)
                    .and_then(hex4)
                    .is_some_and(|c| (0xd800..0xdc00).contains(&c));
            let need = match buf.get(i + 1) {
                // A high surrogate needs its low half (the next escape) to become a character.
                Some(b'u') if high => 12,
                Some(b'u') => 6,
                Some(_) => 2,
                None => 2,
            };
            if i + need > buf.len() {
                if end {
                    out.extend_from_slice(&buf[i..]);
                } else {
                    self.held = buf[i..].to_vec();
                }
                return;
            }
            match buf[i + 1] {
                b'/' => out.push(b'/'),
                b'u' => {
                    let c = hex4(&buf[i + 2..i + 6]).unwrap_or(u32::MAX);
                    let pair = (need == 12 && buf[i + 6] == b'\\' && buf[i + 7] == b'u')
                        .then(|| hex4(&buf[i + 8..i + 12]))
                        .flatten()
                        .filter(|lo| (0xdc00..0xe000).contains(lo))
                        .and_then(|lo| {
                            char::from_u32(0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00))
                        });
                    match (c, pair) {
                        (_, Some(ch)) => push_char(ch, out),
                        (c, _) if c < 0x80 => canonical(c as u8, out),
                        (c, _) => match char::from_u32(c) {
                            Some(ch) => push_char(ch, out),
                            None => {
                                // A lone surrogate or a bad escape: kept, and only its own six
                                // bytes consumed.
                                out.extend_from_slice(&buf[i..i + 6]);
                                i += 6;
                                continue;
                            }
                        },
                    }
                }
                // Any other escape, `\\` included, is kept whole, so the byte after it is
                // never taken for the start of another escape.
                _ => out.extend_from_slice(&buf[i..i + 2]),
            }
            i += need;
        }
    }
}

/// Whether a response of this content type is JSON text (or carries JSON, as server-sent events
/// of LLM APIs do), so that undoing escapes keeps its meaning.
pub fn is_json_like(content_type: &str) -> bool {
    contains_ignore_case(content_type.as_bytes(), b"json")
        || starts_with_ignore_case(content_type.as_bytes(), b"text/event-stream")
}

/// Whether `text` holds `needle` (lower case), in any case; no copy made.
pub fn contains_ignore_case(text: &[u8], needle: &[u8]) -> bool {
    text.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether `text` starts with `prefix`, in any case.
pub fn starts_with_ignore_case(text: &[u8], prefix: &[u8]) -> bool {
    text.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        JsonUnescape::default().push(data, true, &mut out);
        out
    }

    #[test]
    fn printable_escapes_become_characters_and_the_json_keeps_its_meaning() {
        assert_eq!(
            all(br#"{"k":"s\u006b-\u0061b\/c \"q\" \\u0041 \u0022 \u005c \n \u00e9"}"#),
            r#"{"k":"sk-ab/c \"q\" \\u0041 \" \\ \n é"}"#.as_bytes().to_vec()
        );
    }

    #[test]
    fn non_ascii_escapes_and_surrogate_pairs_become_utf8() {
        assert_eq!(
            all(br#""\u00e9\ud83d\ude00 \ud83d x \udc00 \u4e2d""#),
            r#""é😀 \ud83d x \udc00 中""#.as_bytes().to_vec()
        );
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let text = br#"x \u0073\u006B-\u0041\/\\\u0042 \\\/ \u00e9\ud83d\ude00 \ud83d! y"#;
        let whole = all(text);
        for cut in 0..text.len() {
            let mut u = JsonUnescape::default();
            let mut out = Vec::new();
            u.push(&text[..cut], false, &mut out);
            u.push(&text[cut..], true, &mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
    }
}
