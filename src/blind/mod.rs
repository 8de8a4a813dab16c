//! Blind mode's pure core: opaque tokens, which secret may go to which host, and the swap and
//! scrub pattern sets built from them. The proxy (`crate::proxy`) wraps this with I/O.

pub mod env;
pub mod jsonesc;
pub mod sigv4;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use zeroize::Zeroizing;

use crate::conceal::forms::URL_ENCODE_SET;
use crate::conceal::replace::PatternSet;
use crate::config::{HostPattern, Swap};
use crate::secret::SecretValue;

pub use token::is_token;

/// A fresh `KZ_TOK_` token (for callers that do not know the value).
pub fn new_token() -> String {
    token::generic()
}

/// How tokens are made (`[blind] tokens`).
#[derive(Clone, Default)]
pub enum TokenMode {
    /// Fresh random tokens each run (the default).
    #[default]
    PerRun,
    /// Derived from `key`, the project and the secret's name: the same on every run.
    Stable {
        key: Zeroizing<Vec<u8>>,
        project: String,
    },
}

/// One secret in blind mode.
pub struct BlindSecret {
    pub name: String,
    pub token: String,
    pub value: SecretValue,
    pub hosts: Vec<HostPattern>,
    /// Where its token is swapped.
    pub swap: Swap,
}

/// A secret handed to blind mode: name, value, bound hosts, where to swap.
pub type BlindInput = (String, SecretValue, Vec<HostPattern>, Swap);

impl BlindSecret {
    pub fn bound_to(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|h| h.matches(host, port))
    }
}

/// The per-destination swap sets. Pattern `i` is secret `i`'s token in every set; tokens of
/// secrets not bound to the destination are forbidden.
///
/// In each set a bound secret whose `swap` leaves that place out maps its token to itself (it
/// passes unswapped), and a secret not bound here is forbidden (the request is refused).
pub struct HostSwap {
    /// Header values (including inside `Basic` credentials): the raw value.
    pub headers: Arc<PatternSet>,
    /// The path: the value percent-encoded.
    pub path: Arc<PatternSet>,
    /// The query: the value percent-encoded.
    pub query: Arc<PatternSet>,
    /// Bodies of other types: the raw value.
    pub body_raw: Arc<PatternSet>,
    /// `application/json` bodies: the value as JSON string content.
    pub body_json: Arc<PatternSet>,
    /// Form bodies: the value percent-encoded.
    pub body_form: Arc<PatternSet>,
}

/// All blind secrets of a run.
pub struct TokenTable {
    pub secrets: Vec<BlindSecret>,
    scrub: Option<Arc<PatternSet>>,
    /// Tokens to `{NAME}`, for audit lines.
    redact: Option<Arc<PatternSet>>,
    /// Keyed by `"<port> <host>"`, the host in lower case.
    hosts: Mutex<crate::lru::Lru<String, Arc<HostSwap>>>,
    finder: token::Finder,
    current: std::collections::HashSet<String>,
}

/// Destinations whose swap sets stay cached (each is rebuilt on demand once evicted).
pub const HOST_CACHE: usize = 256;

/// Forms an upstream may echo a value in, beyond the masker's (raw, base64, percent-encoded):
/// JSON string content (also with `/` written `\/`), hex in either case, and percent-encoding
/// with lower-case digits. Mixed `\uXXXX` escapes are undone before matching (`json_unescape`).
pub fn scrub_forms(v: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let json = json_content(v);
    let mut out = vec![Zeroizing::new(json.clone().into_bytes())];
    if json.contains('/') {
        out.push(Zeroizing::new(json.replace('/', "\\/").into_bytes()));
    }
    let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
    out.push(Zeroizing::new(hex.to_ascii_uppercase().into_bytes()));
    out.push(Zeroizing::new(hex.into_bytes()));
    for set in [URL_ENCODE_SET, percent_encoding::NON_ALPHANUMERIC] {
        let upper = percent_encoding::utf8_percent_encode(v, set).to_string();
        out.push(Zeroizing::new(lower_percent_digits(&upper).into_bytes()));
    }
    out
}

/// `%2F` → `%2f`, leaving everything else as it is.
fn lower_percent_digits(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut digits = 0;
    for c in s.chars() {
        if c == '%' {
            digits = 2;
            out.push(c);
        } else if digits > 0 {
            digits -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn json_content(v: &str) -> String {
    let quoted = serde_json::to_string(v).expect("strings serialise");
    quoted[1..quoted.len() - 1].to_string()
}

impl TokenTable {
    /// Tokens are generated here, unique per run.
    pub fn new(secrets: Vec<BlindInput>) -> Self {
        Self::with_tokens(secrets, &HashMap::new(), &TokenMode::PerRun)
    }

    /// Like `new`, but a secret named in `preset` keeps that token (the sidecar, whose agent
    /// containers got their tokens in their pod spec; presets must be valid, distinct tokens),
    /// and the others are made as `mode` says.
    pub fn with_tokens(
        secrets: Vec<BlindInput>,
        preset: &HashMap<String, String>,
        mode: &TokenMode,
    ) -> Self {
        let mut seen: std::collections::HashSet<String> = preset.values().cloned().collect();
        let secrets: Vec<BlindSecret> = secrets
            .into_iter()
            .map(|(name, value, hosts, swap)| {
                let token = match (preset.get(&name), mode) {
                    (Some(t), _) => t.clone(),
                    (None, TokenMode::Stable { key, project }) => {
                        token::stable(key, project, &name, value.expose())
                    }
                    (None, TokenMode::PerRun) => loop {
                        let t = token::per_run(value.expose());
                        if seen.insert(t.clone()) {
                            break t;
                        }
                    },
                };
                BlindSecret {
                    name,
                    token,
                    value,
                    hosts,
                    swap,
                }
            })
            .collect();
        let mut scrub = Vec::new();
        let mut wrapped = Vec::new();
        for s in &secrets {
            let mut forms = crate::conceal::forms::forms(s.value.expose());
            forms.extend(scrub_forms(s.value.expose()));
            let token = || Some(Zeroizing::new(s.token.as_bytes().to_vec()));
            for f in forms {
                if f.len() >= crate::conceal::forms::MIN_UNALIGNED_LEN {
                    wrapped.push((f, token()));
                } else if f.len() >= crate::conceal::forms::MIN_MASK_LEN {
                    scrub.push((f, token()));
                }
            }
        }
        // Host names reach the audit log lower-cased; a token is named in any of these cases.
        let redact = PatternSet::new(
            secrets
                .iter()
                .flat_map(|s| {
                    let name = format!("{{{}}}", s.name);
                    [
                        s.token.clone(),
                        s.token.to_ascii_lowercase(),
                        s.token.to_ascii_uppercase(),
                    ]
                    .into_iter()
                    .map(move |t| {
                        (
                            Zeroizing::new(t.into_bytes()),
                            Some(Zeroizing::new(name.clone().into_bytes())),
                        )
                    })
                })
                .collect(),
        );
        TokenTable {
            scrub: PatternSet::with_wrapped(scrub, wrapped),
            redact,
            current: secrets.iter().map(|s| s.token.clone()).collect(),
            secrets,
            hosts: Mutex::new(crate::lru::Lru::new(HOST_CACHE)),
            finder: token::Finder::default(),
        }
    }

    /// Whether some secret is bound to this destination (so kz terminates TLS for it).
    pub fn intercepts(&self, host: &str, port: u16) -> bool {
        self.secrets.iter().any(|s| s.bound_to(host, port))
    }

    pub fn name(&self, index: usize) -> &str {
        &self.secrets[index].name
    }

    /// The `sign = "aws-sigv4"` secrets bound to this destination, with their indices.
    pub fn signers(&self, host: &str, port: u16) -> Vec<(usize, &BlindSecret)> {
        self.secrets
            .iter()
            .enumerate()
            .filter(|(_, s)| s.swap.aws_sigv4 && s.bound_to(host, port))
            .collect()
    }

    /// Whether `data` (a whole value, not a piece of a stream) may hold a token: long enough
    /// for one, with a token prefix. A cheap pre-check.
    pub fn may_hold_token(&self, data: &[u8]) -> bool {
        data.len() >= token::MIN_TOKEN_LEN && self.finder.may_hold(data)
    }

    /// Whether `data` holds a token of kz's that is not one of this run's: a token from an
    /// earlier run (or another project), which no upstream could use.
    pub fn has_stale_token(&self, data: &[u8]) -> bool {
        data.len() >= token::MIN_TOKEN_LEN
            && self.finder.each(data, |r| {
                std::str::from_utf8(&data[r]).map_or(true, |t| !self.current.contains(t))
            })
    }

    /// Swap sets in which every token is forbidden (for plain HTTP).
    pub fn nowhere(&self) -> Arc<HostSwap> {
        // No host pattern matches an empty name.
        self.for_host("", 0)
    }

    /// The swap sets for one destination, built once and cached.
    pub fn for_host(&self, host: &str, port: u16) -> Arc<HostSwap> {
        // The key is written on the stack when it can be (this runs for every request).
        let mut room = [0u8; 128];
        let built;
        let key = match host_key(host, port, &mut room) {
            Some(k) => k,
            None => {
                built = format!("{port} {}", host.to_ascii_lowercase());
                built.as_str()
            }
        };
        if let Some(h) = self.hosts.lock().unwrap().get(key) {
            return h;
        }
        let build = |place: fn(&Swap) -> bool, encode: &dyn Fn(&str) -> String| {
            let pairs = self
                .secrets
                .iter()
                .map(|s| {
                    let rep = match (s.bound_to(host, port), place(&s.swap)) {
                        (true, true) => Some(encode(s.value.expose())),
                        (true, false) => Some(s.token.clone()),
                        (false, _) => None,
                    };
                    (
                        Zeroizing::new(s.token.as_bytes().to_vec()),
                        rep.map(|r| Zeroizing::new(r.into_bytes())),
                    )
                })
                .collect();
            PatternSet::new(pairs).expect("tokens are never empty")
        };
        let raw = |v: &str| v.to_string();
        let url = |v: &str| percent_encoding::utf8_percent_encode(v, URL_ENCODE_SET).to_string();
        let swap = Arc::new(HostSwap {
            headers: build(|s| s.headers, &raw),
            path: build(|s| s.path, &url),
            query: build(|s| s.query, &url),
            body_raw: build(|s| s.body, &raw),
            body_json: build(|s| s.body, &json_content),
            body_form: build(|s| s.body, &url),
        });
        self.hosts
            .lock()
            .unwrap()
            .insert(key.to_string(), swap.clone());
        swap
    }

    /// `text` as the agent sent it, with every token replaced by `{NAME}`: what audit lines
    /// record (never a value, never a token).
    pub fn redact(&self, text: &str) -> String {
        match self.redact.as_ref().map(|r| r.replace_all(text.as_bytes())) {
            Some(Ok(Some(v))) => String::from_utf8_lossy(&v).into_owned(),
            _ => text.to_string(),
        }
    }

    /// `text` with every real value (in any scrubbed form) and every token as `{NAME}`.
    pub fn conceal(&self, text: &str) -> String {
        let scrubbed = match self.scrub.as_ref().map(|s| s.replace_all(text.as_bytes())) {
            Some(Ok(Some(v))) => String::from_utf8_lossy(&v).into_owned(),
            _ => text.to_string(),
        };
        self.redact(&scrubbed)
    }

    /// Real values (and encoded forms) back to tokens, for responses.
    pub fn scrubber(&self) -> Option<&Arc<PatternSet>> {
        self.scrub.as_ref()
    }
}

/// `"<port> <host>"` written into `room`, when `host` is already in lower case and fits.
fn host_key<'a>(host: &str, port: u16, room: &'a mut [u8]) -> Option<&'a str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut digits = [0u8; 20];
    let port = crate::http::decimal(u64::from(port), &mut digits);
    let len = port.len() + 1 + host.len();
    let key = room.get_mut(..len)?;
    key[..port.len()].copy_from_slice(port);
    key[port.len()] = b' ';
    key[port.len() + 1..].copy_from_slice(host.as_bytes());
    std::str::from_utf8(key).ok()
}

/// The decoded credentials of a `Basic` authorization value, if it is one.
pub fn basic_decoded(value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, cred) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(cred.trim())
        .ok()
        .map(Zeroizing::new)
}

/// Swaps tokens inside `Basic` credentials: decode, swap, re-encode. `Ok(None)`: not Basic or
/// nothing to swap.
pub fn swap_basic(
    value: &[u8],
    swap: &Arc<PatternSet>,
) -> Result<Option<Vec<u8>>, crate::conceal::replace::Forbidden> {
    let Some(decoded) = basic_decoded(value) else {
        return Ok(None);
    };
    match swap.replace_all(&decoded)? {
        Some(swapped) => {
            let swapped = Zeroizing::new(swapped);
            let scheme = &value[..value.iter().position(|b| *b == b' ').unwrap_or(0)];
            let mut out = scheme.to_vec();
            out.push(b' ');
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(&swapped[..])
                    .as_bytes(),
            );
            Ok(Some(out))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TokenTable {
        TokenTable::new(vec![
            (
                "GH".into(),
                SecretValue::new("ghp_real&v/1"),
                vec![HostPattern::parse("api.github.com").unwrap()],
                Swap {
                    query: true,
                    ..Swap::default()
                },
            ),
            (
                "SL".into(),
                SecretValue::new("xoxb-\"slack\""),
                vec![HostPattern::parse("*.slack.com").unwrap()],
                Swap {
                    body: true,
                    ..Swap::default()
                },
            ),
        ])
    }

    #[test]
    fn swap_sets_are_cached_per_host_whatever_its_case_or_length() {
        let t = table();
        let a = t.for_host("api.github.com", 443);
        assert!(Arc::ptr_eq(&a, &t.for_host("API.GitHub.com", 443)));
        assert!(!Arc::ptr_eq(&a, &t.for_host("api.github.com", 8443)));
        let long = format!("{}.example.com", "a".repeat(200));
        let b = t.for_host(&long, 443);
        assert!(Arc::ptr_eq(&b, &t.for_host(&long.to_uppercase(), 443)));
    }
    #[test]
    fn tokens_keep_the_shape_and_earlier_tokens_are_recognised() {
        let t = table();
        assert!(t.secrets[0].token.starts_with("ghp_"));
        assert!(t.secrets[1].token.starts_with("xoxb-"));
        let earlier = token::per_run("ghp_real&v/1");
        let now = &t.secrets[0].token;
        assert!(!t.has_stale_token(format!("token {now}").as_bytes()));
        assert!(t.has_stale_token(format!("token {earlier}").as_bytes()));
        assert!(!t.has_stale_token(b"token ghp_16C7e42F292c6912E7710c838347Ae178B4a"));
        let key = Zeroizing::new(b"k".to_vec());
        let mode = TokenMode::Stable {
            key,
            project: "/p".into(),
        };
        let input = || {
            vec![(
                "GH".to_string(),
                SecretValue::new("ghp_real&v/1"),
                vec![],
                Swap::default(),
            )]
        };
        let a = TokenTable::with_tokens(input(), &HashMap::new(), &mode);
        let b = TokenTable::with_tokens(input(), &HashMap::new(), &mode);
        assert_eq!(a.secrets[0].token, b.secrets[0].token);
        let c = TokenTable::new(input());
        assert_ne!(a.secrets[0].token, c.secrets[0].token);
    }

    #[test]
    fn only_bound_tokens_are_swapped_with_context_encoding() {
        let t = table();
        let gh = &t.secrets[0].token;
        let sl = &t.secrets[1].token;
        let h = t.for_host("api.github.com", 443);
        assert!(t.intercepts("api.github.com", 443));
        let target = format!("token={gh}");
        assert_eq!(
            h.query.replace_all(target.as_bytes()).unwrap().unwrap(),
            b"token=ghp_real%26v%2F1"
        );
        // Not opted in: the path and the body keep the token, unswapped.
        let path = format!("/repos/{gh}");
        assert_eq!(
            h.path.replace_all(path.as_bytes()).unwrap().as_deref(),
            Some(path.as_bytes())
        );
        assert_eq!(
            h.body_raw.replace_all(gh.as_bytes()).unwrap().as_deref(),
            Some(gh.as_bytes())
        );
        assert_eq!(
            h.headers
                .replace_all(format!("token {gh}").as_bytes())
                .unwrap()
                .unwrap(),
            b"token ghp_real&v/1"
        );
        assert_eq!(
            h.headers.replace_all(format!("x {sl}").as_bytes()),
            Err(crate::conceal::replace::Forbidden(1))
        );
        assert_eq!(
            h.body_raw.replace_all(format!("x {sl}").as_bytes()),
            Err(crate::conceal::replace::Forbidden(1))
        );
        let slack = t.for_host("hooks.slack.com", 443);
        let body = format!("{{\"t\":\"{sl}\"}}");
        assert_eq!(
            slack
                .body_json
                .replace_all(body.as_bytes())
                .unwrap()
                .unwrap(),
            br#"{"t":"xoxb-\"slack\""}"#
        );
        assert!(!t.intercepts("evil.example", 443));
        assert_eq!(
            t.for_host("evil.example", 443)
                .headers
                .replace_all(gh.as_bytes()),
            Err(crate::conceal::replace::Forbidden(0))
        );
    }

    /// `text` broken into lines of `width` after the first `phase` characters.
    fn wrap(text: &str, width: usize, phase: usize, sep: &str) -> String {
        let (head, rest) = text.split_at(phase.min(text.len()));
        let mut out = head.to_string();
        for (i, line) in rest.as_bytes().chunks(width).enumerate() {
            if i > 0 || !head.is_empty() {
                out.push_str(sep);
            }
            out.push_str(std::str::from_utf8(line).unwrap());
        }
        out
    }

    #[test]
    fn wrapped_encodings_of_a_value_are_scrubbed_at_any_width_and_break() {
        use base64::engine::general_purpose::STANDARD;
        let long: String = (0..150)
            .map(|i| (b'A' + (i * 7 % 26) as u8) as char)
            .collect();
        let t = TokenTable::new(vec![(
            "K".into(),
            SecretValue::new(&long),
            vec![HostPattern::parse("api.example").unwrap()],
            Swap::default(),
        )]);
        let tok = t.secrets[0].token.clone();
        let scrub = t.scrubber().unwrap();
        for prefix in ["", "u:", "ab:"] {
            let whole = format!("{prefix}{long} tail");
            let enc = STANDARD.encode(&whole);
            // Characters only the value determines, wherever it starts in the text.
            let first = (8 * prefix.len()).div_ceil(6);
            let last = (8 * (prefix.len() + long.len())) / 6;
            let middle = &enc[first + 40..first + 60];
            let hex: String = whole.bytes().map(|b| format!("{b:02x}")).collect();
            for (text_form, marker) in
                [(&enc, middle.to_string()), (&hex, hex[80..120].to_string())]
            {
                for sep in ["\n", "\r\n", "\\n", "\\r\\n"] {
                    for width in [60, 64, 76, 17] {
                        for phase in [0, 1, 5, 33] {
                            let text = wrap(text_form, width, phase, sep);
                            let out = scrub.replace_all(text.as_bytes()).unwrap().unwrap();
                            let out = String::from_utf8(out).unwrap();
                            let flat: String = out.replace(sep, "");
                            assert!(out.contains(&tok), "{prefix:?} {width} {phase} {sep:?}");
                            assert!(
                                !flat.contains(&marker),
                                "{prefix:?} {width} {phase} {sep:?}: {out}"
                            );
                            // The same, fed a few bytes at a time.
                            let mut r = scrub.stream();
                            let mut streamed = Vec::new();
                            for piece in text.as_bytes().chunks(7) {
                                r.push(piece, &mut streamed).unwrap();
                            }
                            r.finish(&mut streamed).unwrap();
                            assert_eq!(String::from_utf8(streamed).unwrap(), out);
                        }
                    }
                }
            }
            assert!(last > first + 60);
        }
        // Text around a wrapped value is left as it was, breaks included.
        let text = format!(
            "line one\n{}\nline three\n",
            wrap(&STANDARD.encode(&long), 64, 0, "\n")
        );
        let out = String::from_utf8(scrub.replace_all(text.as_bytes()).unwrap().unwrap()).unwrap();
        assert!(
            out.starts_with("line one\n") && out.ends_with("\nline three\n"),
            "{out}"
        );
        // Unrelated wrapped base64 is untouched.
        let other = wrap(&STANDARD.encode("x".repeat(200)), 64, 0, "\n");
        assert_eq!(scrub.replace_all(other.as_bytes()).unwrap(), None);
    }

    #[test]
    fn basic_credentials_are_swapped_inside() {
        let t = table();
        let gh = &t.secrets[0].token;
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{gh}"))
        );
        let h = t.for_host("api.github.com", 443);
        let out = swap_basic(header.as_bytes(), &h.headers).unwrap().unwrap();
        let expect = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("x-access-token:ghp_real&v/1")
        );
        assert_eq!(out, expect.as_bytes());
        let evil = t.for_host("evil.example", 443);
        assert_eq!(
            swap_basic(header.as_bytes(), &evil.headers),
            Err(crate::conceal::replace::Forbidden(0))
        );
    }

    #[test]
    fn scrubber_turns_values_and_encodings_back_into_tokens() {
        let t = table();
        let gh = t.secrets[0].token.clone();
        let echoed = format!(
            "v=ghp_real&v/1 b64={} url=ghp_real%26v%2F1",
            base64::engine::general_purpose::STANDARD.encode("ghp_real&v/1")
        );
        let out = t
            .scrubber()
            .unwrap()
            .replace_all(echoed.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("v={gh} b64={gh} url={gh}")
        );
    }
}
