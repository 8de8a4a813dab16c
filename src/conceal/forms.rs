//! The forms a secret value takes in text besides itself — base64 in each alphabet, with and
//! without padding and at each byte alignment, and percent-encoded — which masking conceals and
//! blind mode scrubs alike.

use std::collections::HashSet;

use base64::Engine;
use zeroize::Zeroizing;

/// Unreserved characters stay, everything else is percent-encoded.
pub const URL_ENCODE_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Values shorter than this are not masked: concealing every `a` or `42` would garble output.
pub const MIN_MASK_LEN: usize = 4;

/// The encoded forms of a value that are concealed along with it.
pub fn forms(value: &str) -> Vec<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out: Vec<Zeroizing<Vec<u8>>> = vec![Zeroizing::new(value.as_bytes().to_vec())];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        out.push(Zeroizing::new(engine.encode(value).into_bytes()));
    }
    out.push(Zeroizing::new(
        percent_encoding::utf8_percent_encode(value, URL_ENCODE_SET)
            .to_string()
            .into_bytes(),
    ));
    out.push(Zeroizing::new(
        percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .into_bytes(),
    ));
    // The value inside a longer base64 text (such as `user:value` in Basic credentials) starts
    // at any of three byte alignments; the characters it alone determines are the same there.
    if value.len() >= MIN_UNALIGNED_LEN {
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            out.extend(base64_fragments(engine, value));
        }
    }
    let mut seen = HashSet::new();
    out.retain(|f| f.len() >= MIN_MASK_LEN && seen.insert(f.to_vec()));
    out
}

/// The base64 characters `value` alone determines when it starts at each of the three byte
/// alignments inside a longer encoded text.
pub fn base64_fragments(
    engine: &base64::engine::GeneralPurpose,
    value: &str,
) -> Vec<Zeroizing<Vec<u8>>> {
    use base64::Engine;
    let mut out = Vec::new();
    for shift in 0..3usize {
        let mut shifted = Zeroizing::new(vec![0u8; shift]);
        shifted.extend_from_slice(value.as_bytes());
        let enc = Zeroizing::new(engine.encode(&shifted[..]).into_bytes());
        let first = (8 * shift).div_ceil(6);
        let last = (8 * (shift + value.len())) / 6;
        if last > first {
            out.push(Zeroizing::new(enc[first..last].to_vec()));
        }
    }
    out
}

/// Values at least this long are also found inside longer base64 texts.
pub const MIN_UNALIGNED_LEN: usize = 8;
