//! What to do with one intercepted request and its response, decided without I/O: which tokens
//! to swap in the target and headers, which request to refuse and why, which patterns a body is
//! swapped with, which response encodings kz can scrub, and how response headers are scrubbed.
//! `intercept` does the forwarding around these.

use std::collections::BTreeSet;
use std::sync::Arc;

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_TYPE,
    HOST, PROXY_AUTHORIZATION, UPGRADE,
};
use hyper::{Request, StatusCode, Version};

use super::body::{Coding, UnknownCoding, MAX_CODINGS};
use super::refusal::Refusal;
use super::Dest;
use crate::blind::jsonesc::{contains_ignore_case, starts_with_ignore_case};
use crate::blind::{basic_decoded, swap_basic, HostSwap, TokenTable};
use crate::conceal::replace::{Forbidden, PatternSet};

pub(super) fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "proxy-connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    ) || name == PROXY_AUTHORIZATION
}

/// Why a request head is refused.
pub(super) enum HeadRefusal {
    /// A token of secret `i`, which is not bound to the destination.
    Unbound(usize),
    /// A token of kz's that is not one of this run's.
    Stale,
}

impl From<Forbidden> for HeadRefusal {
    fn from(f: Forbidden) -> Self {
        HeadRefusal::Unbound(f.0)
    }
}

pub(super) const STALE_REASON: &str =
    "token from an earlier kz run; run again or use tokens = \"stable\" in [blind]";

/// A request head after swapping.
pub(super) struct SwappedHead {
    pub path_and_query: String,
    /// The path as the agent sent it, tokens as `{NAME}`: what the audit line records.
    pub shown_path: String,
    pub headers: HeaderMap,
    pub seen: BTreeSet<usize>,
}

/// Swaps tokens in the target and every header value, in place in `headers` (which it
/// returns, less `Host` and the hop-by-hop headers); a token not bound here, or of an earlier
/// run, refuses the request.
pub(super) fn swap_head(
    table: &crate::blind::TokenTable,
    swap: &HostSwap,
    uri: &hyper::Uri,
    mut headers: HeaderMap,
    keep_upgrade: bool,
) -> Result<SwappedHead, HeadRefusal> {
    let mut seen = BTreeSet::new();
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if table.has_stale_token(pq.as_bytes()) {
        return Err(HeadRefusal::Stale);
    }
    // The path and the query each swap only the secrets that opted in to them.
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    let mut path_and_query = match swap.path.replace_noting(path.as_bytes(), &mut seen)? {
        Some(v) => String::from_utf8(v).expect("percent-encoded values are ascii"),
        None => path.to_string(),
    };
    if let Some(q) = query {
        path_and_query.push('?');
        match swap.query.replace_noting(q.as_bytes(), &mut seen)? {
            Some(v) => path_and_query
                .push_str(&String::from_utf8(v).expect("percent-encoded values are ascii")),
            None => path_and_query.push_str(q),
        }
    }
    drop_hop_by_hop(&mut headers, keep_upgrade);
    for (name, value) in headers.iter_mut() {
        let raw = value.as_bytes();
        let basic = if name == AUTHORIZATION {
            basic_decoded(raw)
        } else {
            None
        };
        // Fast path: nothing token-like in this header, so it is forwarded as it is.
        if !table.may_hold_token(raw) && !basic.as_deref().is_some_and(|d| table.may_hold_token(d))
        {
            continue;
        }
        if table.has_stale_token(raw) || basic.as_deref().is_some_and(|d| table.has_stale_token(d))
        {
            return Err(HeadRefusal::Stale);
        }
        let mut bytes: Option<Vec<u8>> = None;
        if let Some(decoded) = &basic {
            seen.extend(swap.headers.indices(decoded));
            bytes = swap_basic(raw, &swap.headers)?;
        }
        let current = bytes.as_deref().unwrap_or(raw);
        if let Some(v) = swap.headers.replace_noting(current, &mut seen)? {
            bytes = Some(v);
        }
        if let Some(bytes) = bytes {
            // A value with bytes a header cannot carry is refused rather than mangled.
            *value = HeaderValue::from_bytes(&bytes)
                .map_err(|_| HeadRefusal::Unbound(seen.iter().next().copied().unwrap_or(0)))?;
        }
    }
    Ok(SwappedHead {
        path_and_query,
        shown_path: String::new(),
        headers,
        seen,
    })
}

/// Drops `Host` (the sender sets it), the hop-by-hop headers and those `Connection` names;
/// an upgrade keeps `Upgrade` and `Connection`.
fn drop_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    headers.remove(HOST);
    let connection_tokens: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let dropped = |name: &HeaderName| {
        let keep = keep_upgrade && (name == UPGRADE || name == CONNECTION);
        !keep && (hop_by_hop(name) || connection_tokens.iter().any(|t| t == name.as_str()))
    };
    // Most requests have none: nothing is collected for them.
    if headers.keys().any(dropped) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| dropped(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// The refusal for a token of secret `index` sent to `dest`, where it may not go.
pub(super) fn token_refusal(table: &TokenTable, dest: &Dest, index: usize) -> Refusal {
    let s = &table.secrets[index];
    let reason = if !dest.tls && s.bound_to(&dest.host, dest.port) {
        format!(
            "token of secret {} may not be sent to {}:{} over plain http (kz sends secrets only over https)",
            s.name, dest.host, dest.port
        )
    } else {
        let bound: Vec<String> = s.hosts.iter().map(|h| h.to_string()).collect();
        format!(
            "token of secret {} may not be sent to {}:{} (it is bound to {})",
            s.name,
            dest.host,
            dest.port,
            bound.join(", ")
        )
    };
    Refusal::denied(StatusCode::FORBIDDEN, &dest.host, reason)
}

/// The refusal for a request head `swap_head` would not pass.
pub(super) fn head_refusal(table: &TokenTable, dest: &Dest, why: HeadRefusal) -> Refusal {
    match why {
        HeadRefusal::Unbound(i) => token_refusal(table, dest, i),
        HeadRefusal::Stale => Refusal::denied(StatusCode::FORBIDDEN, &dest.host, STALE_REASON),
    }
}

/// An upstream kz could not connect to: refused by rule when the address rules forbid it
/// (`PermissionDenied`), else a 502.
pub(super) fn unreachable(host: &str, port: u16, e: &std::io::Error) -> Refusal {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        return Refusal::denied(StatusCode::FORBIDDEN, host, e.to_string());
    }
    Refusal::upstream(
        StatusCode::BAD_GATEWAY,
        format!("cannot reach {host}:{port}: {e}"),
    )
}

/// A TLS server name that differs from the CONNECT target.
pub(super) fn misdirected(sni: &str, dest: &Dest) -> Refusal {
    Refusal::denied(
        StatusCode::MISDIRECTED_REQUEST,
        &dest.host,
        format!(
            "tls server name {sni} does not match the CONNECT target {}",
            dest.host
        ),
    )
}

/// The `Host` (or `:authority`) must name the destination.
pub(super) fn host_agrees(
    uri: &hyper::Uri,
    headers: &HeaderMap,
    dest: &Dest,
) -> Result<(), Refusal> {
    let claimed = match uri.authority() {
        Some(a) => a.as_str(),
        None => match headers.get(HOST).and_then(|h| h.to_str().ok()) {
            Some(h) => h,
            None => return Ok(()),
        },
    };
    let has_port = claimed
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        && !claimed.ends_with(']');
    match crate::config::host::authority_parts(claimed, dest.port) {
        Some((h, p))
            if h.trim_end_matches('.')
                .eq_ignore_ascii_case(dest.host.trim_end_matches('.'))
                && (!has_port || p == dest.port) =>
        {
            Ok(())
        }
        _ => Err(Refusal::denied(
            StatusCode::MISDIRECTED_REQUEST,
            &dest.host,
            format!(
                "host {claimed} does not match the connection's destination {}:{}",
                dest.host, dest.port
            ),
        )),
    }
}

pub(super) fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `host`, or `host:port` when the port is not the scheme's default: the `Host` kz sends.
pub(super) fn authority(dest: &Dest) -> String {
    let default_port = if dest.tls { 443 } else { 80 };
    if dest.port == default_port {
        dest.host.clone()
    } else {
        format!("{}:{}", dest.host, dest.port)
    }
}

/// The patterns a request body is swapped with, by its `Content-Type`: JSON string content,
/// form encoding, or the raw value.
pub(super) fn body_patterns<'a>(swap: &'a HostSwap, headers: &HeaderMap) -> &'a Arc<PatternSet> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .as_bytes();
    if contains_ignore_case(content_type, b"json") {
        &swap.body_json
    } else if starts_with_ignore_case(content_type, b"application/x-www-form-urlencoded") {
        &swap.body_form
    } else {
        &swap.body_raw
    }
}

/// Every `Content-Encoding` header and every entry of each; `None` when kz cannot undo one of
/// them or there are more layers than it undoes.
fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, CodingProblem> {
    let values = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    match Coding::parse_list(values) {
        Ok(c) if c.len() <= MAX_CODINGS => Ok(c),
        Ok(c) => Err(CodingProblem::Layers(c.len())),
        Err(UnknownCoding(name)) => Err(CodingProblem::Unknown(name)),
    }
}

enum CodingProblem {
    Layers(usize),
    Unknown(String),
}

/// The codings of a request body; a body kz cannot decode is refused (it could hide a token).
pub(super) fn request_codings(headers: &HeaderMap, dest: &Dest) -> Result<Vec<Coding>, Refusal> {
    codings(headers).map_err(|_| {
        Refusal::denied(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &dest.host,
            "a request body encoded in a way kz cannot read (it could hide a token)",
        )
    })
}

/// The codings of a response body; one kz cannot undo is refused rather than passed unscrubbed.
pub(super) fn response_codings(headers: &HeaderMap, dest: &Dest) -> Result<Vec<Coding>, Refusal> {
    codings(headers).map_err(|p| {
        let reason = match p {
            CodingProblem::Layers(n) => format!(
                "{} sent a response compressed {n} times, which kz does not unwrap",
                dest.host
            ),
            CodingProblem::Unknown(enc) => format!(
                "{} sent a {enc:?}-encoded response, which kz cannot scrub",
                dest.host
            ),
        };
        Refusal::denied(StatusCode::BAD_GATEWAY, &dest.host, reason)
    })
}

/// Real values in response headers become tokens again; hop-by-hop headers are dropped.
pub(super) fn scrub_headers(table: &TokenTable, headers: &mut HeaderMap) {
    let needs_work = headers.iter().any(|(n, _)| hop_by_hop(n))
        || table.scrubber().is_some_and(|s| {
            let mut room = [0u8; 2048];
            match joined_values(headers, &mut room) {
                Some(all) => s.is_match(all),
                None => headers.values().any(|v| s.is_match(v.as_bytes())),
            }
        });
    if !needs_work {
        return;
    }
    let old = std::mem::take(headers);
    let mut last: Option<HeaderName> = None;
    for (name, value) in old {
        let name = match name {
            Some(n) => {
                last = Some(n.clone());
                n
            }
            None => last.clone().expect("first header has a name"),
        };
        if hop_by_hop(&name) {
            continue;
        }
        headers.append(name, scrub_value(table, value));
    }
}

/// Every value of `headers`, each followed by a NUL (a byte no value holds), written into
/// `room` to be searched in one pass (whatever a search finds in one value it finds here too);
/// `None` when they do not fit.
fn joined_values<'a>(headers: &HeaderMap, room: &'a mut [u8]) -> Option<&'a [u8]> {
    let mut at = 0;
    for value in headers.values() {
        let end = at + value.len() + 1;
        let slot = room.get_mut(at..end)?;
        slot[..value.len()].copy_from_slice(value.as_bytes());
        slot[value.len()] = 0;
        at = end;
    }
    Some(&room[..at])
}

/// A header value with real values turned back into tokens.
pub(super) fn scrub_value(table: &TokenTable, value: HeaderValue) -> HeaderValue {
    match table.scrubber().map(|s| s.replace_all(value.as_bytes())) {
        Some(Ok(Some(v))) => HeaderValue::from_bytes(&v).unwrap_or(value),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostPattern, Swap};
    use crate::secret::SecretValue;

    const GH: &str = "ghp_realvalue_0123456789abcdef";
    const SL: &str = "xoxb-realslack-0123456789";

    fn table() -> TokenTable {
        TokenTable::new(vec![
            (
                "GH".into(),
                SecretValue::new(GH),
                vec![HostPattern::parse("api.github.com").unwrap()],
                Swap::default(),
            ),
            (
                "SL".into(),
                SecretValue::new(SL),
                vec![HostPattern::parse("slack.com").unwrap()],
                Swap::default(),
            ),
        ])
    }

    fn dest(host: &str, tls: bool) -> Dest {
        Dest {
            host: host.into(),
            port: if tls { 443 } else { 80 },
            tls,
        }
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> hyper::http::request::Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_bound_token_is_swapped_in_headers_and_basic_credentials_only() {
        let t = table();
        let gh = t.secrets[0].token.clone();
        let swap = t.for_host("api.github.com", 443);
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("x:{gh}"),
        );
        let p = parts(
            &format!("/repos/{gh}?t={gh}"),
            &[
                ("authorization", &format!("Basic {basic}")),
                ("x-token", &format!("token {gh}")),
                ("host", "api.github.com"),
            ],
        );
        let h = swap_head(&t, &swap, &p.uri, p.headers.clone(), false)
            .ok()
            .unwrap();
        // The target is not opted in: the token stays, unswapped.
        assert_eq!(h.path_and_query, format!("/repos/{gh}?t={gh}"));
        assert_eq!(h.headers["x-token"], format!("token {GH}").as_str());
        let sent = h.headers["authorization"].to_str().unwrap();
        let decoded = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            sent.trim_start_matches("Basic "),
        )
        .unwrap();
        assert_eq!(decoded, format!("x:{GH}").as_bytes());
        assert!(h.headers.get(HOST).is_none(), "Host is set by the sender");
        assert_eq!(h.seen, BTreeSet::from([0]));
    }

    #[test]
    fn another_hosts_token_and_a_stale_token_refuse_the_head() {
        let t = table();
        let sl = t.secrets[1].token.clone();
        let swap = t.for_host("api.github.com", 443);
        let p = parts("/", &[("x-token", &sl)]);
        let why = swap_head(&t, &swap, &p.uri, p.headers.clone(), false)
            .err()
            .unwrap();
        let r = head_refusal(&t, &dest("api.github.com", true), why);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            r.reason(),
            "token of secret SL may not be sent to api.github.com:443 (it is bound to slack.com)"
        );
        let stale = crate::blind::token::per_run(GH);
        let p = parts(&format!("/?q={stale}"), &[]);
        let why = swap_head(&t, &swap, &p.uri, p.headers.clone(), false)
            .err()
            .unwrap();
        assert_eq!(
            head_refusal(&t, &dest("api.github.com", true), why).reason(),
            STALE_REASON
        );
    }

    #[test]
    fn over_plain_http_even_a_bound_token_is_refused() {
        let t = table();
        let r = token_refusal(&t, &dest("api.github.com", false), 0);
        assert!(r.reason().contains("over plain http"), "{}", r.reason());
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped_unless_upgrading() {
        let t = table();
        let swap = t.for_host("example.com", 443);
        let p = parts(
            "/",
            &[
                ("connection", "upgrade, x-secret-hop"),
                ("upgrade", "websocket"),
                ("x-secret-hop", "1"),
                ("proxy-authorization", "Basic a3o6eA=="),
                ("te", "trailers"),
                ("accept", "*/*"),
            ],
        );
        let h = swap_head(&t, &swap, &p.uri, p.headers.clone(), false)
            .ok()
            .unwrap();
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
        let h = swap_head(&t, &swap, &p.uri, p.headers.clone(), true)
            .ok()
            .unwrap();
        assert!(h.headers.contains_key(UPGRADE) && h.headers.contains_key(CONNECTION));
        assert!(!h.headers.contains_key(PROXY_AUTHORIZATION));
    }

    #[test]
    fn the_host_header_must_name_the_destination() {
        let d = dest("api.github.com", true);
        let req = |host: &str| Request::builder().header(HOST, host).body(()).unwrap();
        let agrees = |r: &Request<()>, d: &Dest| host_agrees(r.uri(), r.headers(), d);
        assert!(agrees(&req("api.github.com"), &d).is_ok());
        assert!(agrees(&req("API.github.com."), &d).is_ok());
        assert!(agrees(&req("api.github.com:443"), &d).is_ok());
        let r = agrees(&req("evil.example"), &d).unwrap_err();
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(agrees(&req("api.github.com:8443"), &d).is_err());
        let none = Request::builder().body(()).unwrap();
        assert!(agrees(&none, &d).is_ok(), "HTTP/1.0 without Host");
        let r = misdirected("evil.example", &d);
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    }

    #[test]
    fn body_patterns_follow_the_content_type() {
        let t = table();
        let swap = t.for_host("api.github.com", 443);
        let mut h = HeaderMap::new();
        assert!(Arc::ptr_eq(body_patterns(&swap, &h), &swap.body_raw));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.api+json"),
        );
        assert!(Arc::ptr_eq(body_patterns(&swap, &h), &swap.body_json));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        assert!(Arc::ptr_eq(body_patterns(&swap, &h), &swap.body_form));
    }

    #[test]
    fn encodings_kz_cannot_undo_are_refused_both_ways() {
        let d = dest("api.github.com", true);
        let with = |v: &[&str]| {
            let mut h = HeaderMap::new();
            for e in v {
                h.append(CONTENT_ENCODING, HeaderValue::from_str(e).unwrap());
            }
            h
        };
        assert_eq!(response_codings(&with(&["gzip"]), &d).unwrap().len(), 1);
        assert!(response_codings(&with(&[]), &d).unwrap().is_empty());
        let r = response_codings(&with(&["compress"]), &d).unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let layers = vec!["gzip"; MAX_CODINGS + 1];
        assert!(response_codings(&with(&layers), &d)
            .unwrap_err()
            .reason()
            .contains("compressed"));
        let r = request_codings(&with(&["x-unknown"]), &d).unwrap_err();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn real_values_in_response_headers_become_tokens_and_hop_headers_go() {
        let t = table();
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo",
            HeaderValue::from_str(&format!("got {GH}")).unwrap(),
        );
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("server", HeaderValue::from_static("origin"));
        scrub_headers(&t, &mut h);
        assert_eq!(h["x-echo"], format!("got {}", t.secrets[0].token).as_str());
        assert!(!h.contains_key("transfer-encoding"));
        assert_eq!(h["server"], "origin");
    }

    #[test]
    fn a_real_value_in_any_response_header_is_found_in_small_and_large_heads() {
        let t = table();
        let token = t.secrets[1].token.clone();
        for pad in [10, 5000] {
            let mut h = HeaderMap::new();
            h.insert("server", HeaderValue::from_static("origin"));
            h.insert("x-pad", HeaderValue::from_str(&"p".repeat(pad)).unwrap());
            h.append("x-echo", HeaderValue::from_static("first"));
            h.append(
                "x-echo",
                HeaderValue::from_str(&format!("last {SL}")).unwrap(),
            );
            scrub_headers(&t, &mut h);
            let echoed: Vec<&str> = h
                .get_all("x-echo")
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(echoed, ["first", &format!("last {token}")], "pad {pad}");
            assert_eq!(h["server"], "origin");
        }
        // Halves of a value in two headers are no value, and are left as they came.
        let (a, b) = SL.split_at(10);
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static(a));
        h.insert("x-b", HeaderValue::from_static(b));
        scrub_headers(&t, &mut h);
        assert_eq!(
            (&h["x-a"], &h["x-b"]),
            (&HeaderValue::from_static(a), &HeaderValue::from_static(b))
        );
    }

    #[test]
    fn the_sent_authority_omits_the_default_port() {
        assert_eq!(authority(&dest("a.example", true)), "a.example");
        let mut d = dest("a.example", true);
        d.port = 8443;
        assert_eq!(authority(&d), "a.example:8443");
        assert_eq!(authority(&dest("a.example", false)), "a.example");
    }
}
