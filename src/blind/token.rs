//! Token shapes. A token keeps the well-known public prefix of the value it stands for (so an
//! SDK that checks a key's shape accepts it), then carries at least 22 random base62 characters
//! (130 bits) and a 6-character check (CRC-32 of everything before it, in base62), so kz can
//! tell one of its own tokens from any other string without keeping state. Values without a
//! known prefix get `KZ_TOK_`.
//!
//! Per-run tokens are random; stable tokens (`[blind] tokens = "stable"`) are derived with
//! HMAC-SHA-256 from a key kept with kz's local state, the project and the secret's name.

use ring::rand::{SecureRandom, SystemRandom};

pub const GENERIC_PREFIX: &str = "KZ_TOK_";
/// 22 base62 characters carry 130.9 bits.
pub const RANDOM_CHARS: usize = 22;
pub const CHECK_CHARS: usize = 6;
/// The longest token body kz makes (when matching a long value's length).
const MAX_BODY: usize = 200;

/// Public prefixes of well-known credentials, longest first where one extends another.
pub const KNOWN_PREFIXES: [&str; 18] = [
    "sk-ant-api03-",
    "sk-ant-",
    "sk-proj-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "sk-",
    "github_pat_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xapp-",
    "hf_",
    "AIza",
];

/// The length of the shortest token: the shortest prefix, the random characters and the check.
pub const MIN_TOKEN_LEN: usize = {
    let mut shortest = GENERIC_PREFIX.len();
    let mut i = 0;
    while i < KNOWN_PREFIXES.len() {
        if KNOWN_PREFIXES[i].len() < shortest {
            shortest = KNOWN_PREFIXES[i].len();
        }
        i += 1;
    }
    shortest + RANDOM_CHARS + CHECK_CHARS
};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Every prefix a token may start with.
pub fn all_prefixes() -> impl Iterator<Item = &'static str> {
    KNOWN_PREFIXES
        .iter()
        .copied()
        .chain(std::iter::once(GENERIC_PREFIX))
}

/// The prefix a token for `value` gets: the longest known prefix it starts with, else `KZ_TOK_`.
pub fn prefix_for(value: &str) -> &'static str {
    KNOWN_PREFIXES
        .iter()
        .filter(|p| value.starts_with(*p) && value.len() > p.len())
        .max_by_key(|p| p.len())
        .copied()
        .unwrap_or(GENERIC_PREFIX)
}

/// How many characters follow the prefix: a known shape keeps the value's length (within
/// bounds), so length checks pass too; `KZ_TOK_` tokens have 22 + 6. A stable token stays the
/// same while the value keeps its shape (prefix and length), as a rotated key of one kind does.
fn body_len(prefix: &str, value: &str) -> usize {
    let least = RANDOM_CHARS + CHECK_CHARS;
    if prefix == GENERIC_PREFIX {
        return least;
    }
    value
        .len()
        .saturating_sub(prefix.len())
        .clamp(least, MAX_BODY)
}

/// CRC-32 (IEEE), one table lookup per byte.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The CRC-32 of each byte value, worked out bit by bit at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn check(head: &[u8]) -> [u8; CHECK_CHARS] {
    let mut n = crc32(head);
    let mut out = [b'0'; CHECK_CHARS];
    for c in out.iter_mut().rev() {
        *c = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Fills `len` base62 characters from `next_byte`, each equally likely (rejection sampling).
fn base62_from(len: usize, mut next_byte: impl FnMut() -> u8) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let x = next_byte();
        // 248 = 4 * 62: bytes above it would make some characters likelier.
        if x < 248 {
            out.push(BASE62[(x % 62) as usize] as char);
        }
    }
    out
}

fn assemble(prefix: &str, random: String) -> String {
    let mut t = String::with_capacity(prefix.len() + random.len() + CHECK_CHARS);
    t.push_str(prefix);
    t.push_str(&random);
    let c = check(t.as_bytes());
    t.push_str(std::str::from_utf8(&c).expect("base62 is ascii"));
    t
}

/// A fresh random token for `value`.
pub fn per_run(value: &str) -> String {
    let prefix = prefix_for(value);
    let rng = SystemRandom::new();
    let mut buf = [0u8; 64];
    let mut at = buf.len();
    let random = base62_from(body_len(prefix, value) - CHECK_CHARS, || {
        if at == buf.len() {
            rng.fill(&mut buf).expect("system random source");
            at = 0;
        }
        at += 1;
        buf[at - 1]
    });
    assemble(prefix, random)
}

/// A fresh `KZ_TOK_` token (for callers that do not know the value, such as the injector).
pub fn generic() -> String {
    per_run("")
}

/// The stable token of secret `name` in `project`, derived from `key`. The same inputs give
/// the same token on every run; without the key nobody can compute it.
pub fn stable(key: &[u8], project: &str, name: &str, value: &str) -> String {
    let prefix = prefix_for(value);
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut block = 0u32;
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0;
    let random = base62_from(body_len(prefix, value) - CHECK_CHARS, || {
        if at == buf.len() {
            let mut ctx = ring::hmac::Context::with_key(&k);
            for part in [
                b"keyzero stable token v1".as_slice(),
                project.as_bytes(),
                name.as_bytes(),
                prefix.as_bytes(),
            ] {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
            ctx.update(&block.to_be_bytes());
            buf = ctx.sign().as_ref().to_vec();
            block += 1;
            at = 0;
        }
        at += 1;
        buf[at - 1]
    });
    assemble(prefix, random)
}

/// Whether `t` is exactly one of kz's tokens (prefix, base62 body, valid check).
pub fn is_token(t: &str) -> bool {
    all_prefixes().any(|p| {
        t.strip_prefix(p).is_some_and(|body| {
            body.len() >= RANDOM_CHARS + CHECK_CHARS
                && body.bytes().all(|b| b.is_ascii_alphanumeric())
                && check(&t.as_bytes()[..t.len() - CHECK_CHARS])
                    == t.as_bytes()[t.len() - CHECK_CHARS..]
        })
    })
}

/// Finds kz tokens in `data`: every prefix followed by a run of base62 characters that ends
/// in a valid check. Yields byte ranges.
pub struct Finder {
    prefixes: aho_corasick::AhoCorasick,
}

impl Default for Finder {
    fn default() -> Self {
        let names: Vec<&'static str> = all_prefixes().collect();
        // Leftmost-longest finds what an overlapping search would, for prefixes that neither
        // overlap one another nor extend one another with token characters (the test
        // `prefixes_never_hide_one_another` keeps it so), and is several times cheaper.
        Finder {
            prefixes: aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(names)
                .expect("static prefixes"),
        }
    }
}

impl Finder {
    /// Whether `data` holds any token prefix (cheap pre-check).
    pub fn may_hold(&self, data: &[u8]) -> bool {
        self.prefixes.is_match(data)
    }

    /// The tokens in `data`, as ranges.
    pub fn find(&self, data: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        self.each(data, |r| {
            out.push(r);
            false
        });
        out
    }

    /// Calls `f` with each token in `data`, in order, until it returns `true`; whether it did.
    pub fn each(&self, data: &[u8], mut f: impl FnMut(std::ops::Range<usize>) -> bool) -> bool {
        // Tokens found so far end by here: a prefix inside one is part of it, not another token
        // (prefixes are found left to right, so only the last token can hold the next one).
        let mut taken = 0;
        for m in self.prefixes.find_iter(data) {
            let run = data[m.end()..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            let end = m.end() + run;
            if run < RANDOM_CHARS + CHECK_CHARS || m.start() < taken {
                continue;
            }
            let t = &data[m.start()..end];
            if check(&t[..t.len() - CHECK_CHARS]) == t[t.len() - CHECK_CHARS..] {
                taken = end;
                if f(m.start()..end) {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_prefixes_are_kept_with_enough_randomness_and_a_check() {
        for p in KNOWN_PREFIXES {
            let value = format!("{p}{}", "x".repeat(40));
            let t = per_run(&value);
            assert!(t.starts_with(p), "{t}");
            assert_eq!(prefix_for(&value), p);
            assert_eq!(t.len(), value.len(), "the shape keeps the length: {t}");
            assert!(is_token(&t), "{t}");
            let body = &t[p.len()..];
            assert!(body.len() >= RANDOM_CHARS + CHECK_CHARS);
            assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        // Longest prefix wins; an unknown value gets the generic prefix.
        assert!(per_run("sk-proj-abcdefghijklmnopqrstuvwxyz0123456789").starts_with("sk-proj-"));
        assert!(per_run("sk-ant-api03-abcdefghijklmnopqrstuvwxyz").starts_with("sk-ant-api03-"));
        let g = per_run("hunter2-but-longer");
        assert!(g.starts_with(GENERIC_PREFIX) && g.len() == 7 + 28, "{g}");
        // A short value with a known prefix still gets the full randomness.
        assert_eq!(per_run("ghp_short").len(), 4 + 28);
        // No token is shorter than MIN_TOKEN_LEN (what lets shorter text skip the search).
        assert_eq!(per_run("sk-x").len(), MIN_TOKEN_LEN);
        // A prefix alone is not a shape.
        assert_eq!(prefix_for("sk-"), GENERIC_PREFIX);
    }

    #[test]
    fn prefixes_never_hide_one_another() {
        let all: Vec<&str> = all_prefixes().collect();
        for b in &all {
            for a in &all {
                // A shorter prefix at the same start: what extends it must end any token.
                if a != b && b.starts_with(a) {
                    let rest = &b[a.len()..];
                    assert!(
                        !rest.bytes().all(|c| c.is_ascii_alphanumeric()),
                        "{b} extends {a} with token characters"
                    );
                }
                // A prefix starting inside another (within it, or running past its end).
                for k in 1..b.len() {
                    let tail = &b[k..];
                    assert!(
                        !a.starts_with(tail) && !tail.starts_with(a),
                        "{a} starts inside {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_check_is_standard_crc32() {
        // The check value of CRC-32 (IEEE): tokens made by earlier versions stay valid.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn tokens_are_distinct_and_the_check_catches_changes() {
        let many: std::collections::HashSet<String> = (0..2000)
            .map(|_| per_run("ghp_0123456789abcdef0123456789abcdef0123"))
            .collect();
        assert_eq!(many.len(), 2000);
        let t = per_run("xoxb-1234-5678-abcdefghijklmnop");
        assert!(is_token(&t));
        let mut bad = t.clone().into_bytes();
        let i = bad.len() - 10;
        bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
        assert!(!is_token(std::str::from_utf8(&bad).unwrap()));
        // Real-looking keys are not tokens.
        assert!(!is_token("ghp_16C7e42F292c6912E7710c838347Ae178B4a"));
        assert!(!is_token("KZ_TOK_not_a_token_at_all_here"));
    }

    #[test]
    fn stable_tokens_depend_on_key_project_and_name_only() {
        let v = "sk-proj-0123456789abcdefghijklmnopqrstuvwxyz";
        let a = stable(b"key-1", "/p", "OPENAI", v);
        assert_eq!(a, stable(b"key-1", "/p", "OPENAI", v));
        assert!(a.starts_with("sk-proj-") && is_token(&a));
        assert_ne!(a, stable(b"key-2", "/p", "OPENAI", v));
        assert_ne!(a, stable(b"key-1", "/q", "OPENAI", v));
        assert_ne!(a, stable(b"key-1", "/p", "OTHER", v));
        // A rotated value of the same shape (prefix and length) keeps the token.
        let rotated = "sk-proj-ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210";
        assert_eq!(a, stable(b"key-1", "/p", "OPENAI", rotated));
    }

    #[test]
    fn the_finder_sees_tokens_in_text_and_nothing_else() {
        let f = Finder::default();
        let a = per_run("sk-ant-api03-0123456789abcdefghijklmnopqrstuvwxyz");
        let b = generic();
        let text = format!("Bearer {a}, url=https://x:{b}@github.com/r.git task-runner sk-nope");
        let found: Vec<&str> = f
            .find(text.as_bytes())
            .into_iter()
            .map(|r| &text[r])
            .collect();
        assert_eq!(found, [a.as_str(), b.as_str()]);
        assert!(f.find(b"sk-0123456789012345678901234567890123").is_empty());
        assert!(f.may_hold(b"xx KZ_TOK_") && !f.may_hold(b"plain header"));
    }
}
