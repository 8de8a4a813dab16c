//! One intercepted request: check the destination, swap tokens bound to it (target, headers,
//! Basic credentials, body), forward upstream, scrub real values out of the response, audit.
//! Tokens of secrets not bound to the destination are refused with 403 before anything is sent.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONNECTION,
    CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST, PROXY_AUTHORIZATION, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use super::body::{
    collect_limited, decode_all, empty, full, reserve_buffer, Coding, StreamReport, Transform,
    MAX_CODINGS,
};
use super::refusal::Refusal;
use super::upstream::{Body, BoxError, PrivateAddress};
use super::ws;
use super::{split_authority, Dest, Proxy};
use crate::blind::jsonesc::{is_json_like, JsonUnescape};
use crate::blind::{basic_decoded, swap_basic, HostSwap};
use crate::conceal::replace::Forbidden;

/// Bodies with a `Content-Length` up to this size are swapped whole, so the length stays exact.
pub const MAX_BUFFERED_REQUEST: u64 = 8 << 20;
/// Responses with a `Content-Length` up to this size are scrubbed whole, keeping the length.
pub const MAX_BUFFERED_RESPONSE: u64 = 1 << 20;
/// How long an upstream may take to send response headers.
/// How long an upstream may take to start its answer, by default: long reasoning calls send
/// nothing for many minutes (the SDKs themselves wait 10), so kz must not be the one to give up.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub fn incoming(b: Incoming) -> Body {
    b.map_err(|e| -> super::upstream::BoxError { Box::new(e) })
        .boxed()
}

fn hop_by_hop(name: &HeaderName) -> bool {
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
enum HeadRefusal {
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

const STALE_REASON: &str =
    "token from an earlier kz run; run again or use tokens = \"stable\" in [blind]";

/// A request head after swapping.
struct SwappedHead {
    path_and_query: String,
    /// The path as the agent sent it, tokens as `{NAME}`: what the audit line records.
    shown_path: String,
    headers: HeaderMap,
    seen: BTreeSet<usize>,
}

/// Swaps tokens in the target and every header value. `Err(index)`: a token not bound here.
fn swap_head(
    table: &crate::blind::TokenTable,
    swap: &HostSwap,
    parts: &hyper::http::request::Parts,
    keep_upgrade: bool,
) -> Result<SwappedHead, HeadRefusal> {
    let mut seen = BTreeSet::new();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
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
    let connection_tokens: Vec<String> = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        let keep = keep_upgrade && (name == UPGRADE || name == CONNECTION);
        if name == HOST
            || (!keep && (hop_by_hop(name) || connection_tokens.iter().any(|t| t == name.as_str())))
        {
            continue;
        }
        let raw = value.as_bytes();
        let basic = if name == AUTHORIZATION {
            basic_decoded(raw)
        } else {
            None
        };
        // Fast path: nothing token-like in this header, so it is forwarded as it is.
        if !table.may_hold_token(raw) && !basic.as_deref().is_some_and(|d| table.may_hold_token(d))
        {
            headers.append(name.clone(), value.clone());
            continue;
        }
        if table.has_stale_token(raw) || basic.as_deref().is_some_and(|d| table.has_stale_token(d))
        {
            return Err(HeadRefusal::Stale);
        }
        let mut bytes: Vec<u8> = raw.to_vec();
        if let Some(decoded) = &basic {
            seen.extend(swap.headers.indices(decoded));
            if let Some(v) = swap_basic(&bytes, &swap.headers)? {
                bytes = v;
            }
        }
        if let Some(v) = swap.headers.replace_noting(&bytes, &mut seen)? {
            bytes = v;
        }
        // A value with bytes a header cannot carry is refused rather than mangled.
        let value = HeaderValue::from_bytes(&bytes)
            .map_err(|_| HeadRefusal::Unbound(seen.iter().next().copied().unwrap_or(0)))?;
        headers.append(name.clone(), value);
    }
    Ok(SwappedHead {
        path_and_query,
        shown_path: String::new(),
        headers,
        seen,
    })
}

/// Reads a request body of announced length `l` whole, within the shared buffer ceiling;
/// returns the bytes and this request's share of the ceiling (held until the exchange ends).
async fn read_whole(
    proxy: &Proxy,
    dest: &Dest,
    body: Body,
    l: u64,
) -> Result<(Bytes, impl Sized), Response<Body>> {
    let Some(share) = reserve_buffer(l) else {
        return Err(proxy.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &dest.host,
            "too many large bodies in flight; try again",
        ));
    };
    match collect_limited(body, MAX_BUFFERED_REQUEST as usize).await {
        Ok(d) => Ok((d, share)),
        Err(e) => Err(proxy.answer(Refusal::bad_request(format!("reading request body: {e}")))),
    }
}

fn refuse_token(proxy: &Proxy, dest: &Dest, index: usize) -> Response<Body> {
    let s = &proxy.table.secrets[index];
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
    proxy.refuse(StatusCode::FORBIDDEN, &dest.host, &reason)
}

/// The `Host` (or `:authority`) must name the destination.
fn host_agrees(req: &Request<Body>, dest: &Dest) -> Result<(), Refusal> {
    let claimed = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        });
    let Some(claimed) = claimed else {
        return Ok(());
    };
    let has_port = claimed
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        && !claimed.ends_with(']');
    match split_authority(&claimed, dest.port) {
        Some((h, p))
            if h.trim_end_matches('.') == dest.host.trim_end_matches('.')
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

fn is_websocket(req: &Request<Body>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Handles one request towards `dest` (intercepted TLS, or plain HTTP through the proxy).
pub fn intercepted(
    proxy: Arc<Proxy>,
    dest: Dest,
    misdirected: Option<String>,
    lane: Option<Arc<Lane>>,
    req: Request<Body>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>> {
    Box::pin(intercepted_inner(proxy, dest, misdirected, lane, req))
}

async fn intercepted_inner(
    proxy: Arc<Proxy>,
    dest: Dest,
    misdirected: Option<String>,
    lane: Option<Arc<Lane>>,
    mut req: Request<Body>,
) -> Response<Body> {
    let start = Instant::now();
    if let Some(sni) = misdirected {
        let reason = format!(
            "tls server name {sni} does not match the CONNECT target {}",
            dest.host
        );
        return proxy.refuse(StatusCode::MISDIRECTED_REQUEST, &dest.host, &reason);
    }
    if let Err(refusal) = host_agrees(&req, &dest) {
        return proxy.answer(refusal);
    }
    // IP literals bypass name resolution in the pooled client, so check them here.
    if dest
        .host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok()
    {
        if let Err(e) = proxy.upstream.resolver.resolve(&dest.host, dest.port).await {
            return proxy.refuse(StatusCode::FORBIDDEN, &dest.host, &e.to_string());
        }
    }
    // Secrets never travel in clear text: over plain HTTP every token is refused.
    let swap = if dest.tls {
        proxy.table.for_host(&dest.host, dest.port)
    } else {
        proxy.table.nowhere()
    };
    let ws = is_websocket(&req);
    let client_upgrade = ws.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut head = match swap_head(&proxy.table, &swap, &parts, ws) {
        Ok(h) => h,
        Err(HeadRefusal::Unbound(i)) => return refuse_token(&proxy, &dest, i),
        Err(HeadRefusal::Stale) => {
            return proxy.refuse(StatusCode::FORBIDDEN, &dest.host, STALE_REASON)
        }
    };
    // Only an audit line shows the path (tokens as `{NAME}`): no work for it otherwise.
    if proxy.audit.enabled() {
        head.shown_path = proxy.table.redact(parts.uri.path());
    }
    if let Some(on_client) = client_upgrade {
        return websocket(proxy, dest, parts.method, head, on_client, start).await;
    }
    let SwappedHead {
        mut path_and_query,
        shown_path,
        mut headers,
        seen,
    } = head;
    let seen = Arc::new(Mutex::new(seen));
    let scheme = if dest.tls { "https" } else { "http" };
    let default_port = if dest.tls { 443 } else { 80 };
    let authority = if dest.port == default_port {
        dest.host.clone()
    } else {
        format!("{}:{}", dest.host, dest.port)
    };
    // Towards a host bound to an AWS secret, a SigV4-signed request is checked and signed
    // again with the real key instead of having its text swapped.
    let signers = if dest.tls {
        proxy.table.signers(&dest.host, dest.port)
    } else {
        Vec::new()
    };
    let aws = if signers.is_empty() {
        None
    } else {
        match super::resign::signature_of(&parts.headers, parts.uri.query().unwrap_or("")) {
            None => None,
            Some(Err(reason)) => return proxy.refuse(StatusCode::FORBIDDEN, &dest.host, &reason),
            Some(Ok(sig)) => Some(sig),
        }
    };

    // Body: swapped whole when its length is known and modest (exact Content-Length), else
    // streamed chunk by chunk. Compressed request bodies pass unchanged (kz cannot see into them).
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let set = if content_type.contains("json") {
        &swap.body_json
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        &swap.body_form
    } else {
        &swap.body_raw
    };
    // A compressed request body is passed as it is (kz does not re-compress), but it is decoded
    // on the side and checked: a token of a secret not bound here is refused there too.
    // (A re-signed AWS request passes its body as signed: `aws-chunked` included.)
    let resigned = aws.is_some();
    let request_codings = match Coding::parse_list(
        headers
            .get_all(CONTENT_ENCODING)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}")),
    ) {
        _ if resigned => Vec::new(),
        Ok(c) if c.len() <= MAX_CODINGS => c,
        Ok(_) | Err(_) => {
            // Read (a bounded part of) the body first, so HTTP/2 clients see a clean answer.
            let _ = collect_limited(body, 1 << 20).await;
            return proxy.refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &dest.host,
                "a request body encoded in a way kz cannot read (it could hide a token)",
            );
        }
    };
    let encoded = !request_codings.is_empty();
    let length: Option<u64> = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let req_report = Arc::new(StreamReport::default());
    let mut bytes_out: Option<u64> = None;
    // Held until the exchange ends: this request's share of the buffer ceiling.
    let mut _buffered = None;
    let body: Body = if let Some(sig) = aws {
        // Passed as the agent signed it (no text swapping: that would break the payload hash);
        // read whole only when the signature covers a hash of it that was not sent.
        let (body, hash) = match super::resign::payload_hash(&parts.headers, &sig, None) {
            Some(h) => (body, h),
            None => {
                let Some(l) = length.filter(|l| *l <= MAX_BUFFERED_REQUEST) else {
                    return proxy.refuse(
                        StatusCode::FORBIDDEN,
                        &dest.host,
                        "an AWS-signed body kz cannot hash to check the signature (no x-amz-content-sha256, and no modest Content-Length)",
                    );
                };
                let (data, share) = match read_whole(&proxy, &dest, body, l).await {
                    Ok(r) => r,
                    Err(resp) => return resp,
                };
                _buffered = Some(share);
                let h = crate::provider::sigv4::sha256_hex(&data);
                (full(data), h)
            }
        };
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path_and_query.clone(), String::new()),
        };
        let sent_authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| authority.clone());
        let sent_headers = super::resign::header_pairs(&parts.headers, &sent_authority);
        let ex = super::resign::Exchange {
            method: parts.method.as_str(),
            sent_path: parts.uri.path(),
            sent_query: parts.uri.query().unwrap_or(""),
            sent_headers: &sent_headers,
            path: &path,
            query: &query,
            payload_hash: &hash,
        };
        match super::resign::resign(&sig, &signers, &ex, &mut headers, &authority) {
            Err(reason) => return proxy.refuse(StatusCode::FORBIDDEN, &dest.host, &reason),
            Ok(r) => {
                seen.lock().unwrap().insert(r.secret);
                path_and_query = if r.query.is_empty() {
                    path
                } else {
                    format!("{path}?{}", r.query)
                };
                match r.chunks {
                    Some(c) => super::resign::ChunkedBody::new(body, c).boxed(),
                    None => body,
                }
            }
        }
    } else if body.is_end_stream() {
        bytes_out = Some(0);
        empty()
    } else if let Some(l) = length.filter(|l| *l <= MAX_BUFFERED_REQUEST) {
        // Known and modest length: read whole (within the shared ceiling), so the length stays
        // exact and nothing is sent before the body is checked.
        let (data, share) = match read_whole(&proxy, &dest, body, l).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        _buffered = Some(share);
        let data = if encoded {
            // Compressed: decoded and checked on the side, then passed as it came.
            match decode_all(&request_codings, &data).map(|plain| set.replace_all(&plain)) {
                Ok(Err(Forbidden(i))) => return refuse_token(&proxy, &dest, i),
                Ok(Ok(_)) => data,
                Err(e) => {
                    return proxy.refuse(
                        StatusCode::BAD_REQUEST,
                        &dest.host,
                        &format!("a compressed request body kz cannot decode: {e}"),
                    )
                }
            }
        } else {
            match set.replace_noting(&data, &mut seen.lock().unwrap()) {
                Err(Forbidden(i)) => return refuse_token(&proxy, &dest, i),
                Ok(Some(v)) => Bytes::from(v),
                Ok(None) => data,
            }
        };
        headers.insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
        bytes_out = Some(data.len() as u64);
        full(data)
    } else if encoded {
        headers.remove(CONTENT_LENGTH);
        Transform::new(body, Some(set), &request_codings, req_report.clone())
            .scan_only()
            .boxed()
    } else {
        headers.remove(CONTENT_LENGTH);
        Transform::new(body, Some(set), &[], req_report.clone())
            .with_seen(seen.clone())
            .boxed()
    };
    // kz must read responses to scrub them, so ask bound hosts for uncompressed ones (a
    // re-signed request has it already, under its signature).
    if !resigned {
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }

    let mut up = Request::new(body);
    *up.method_mut() = parts.method.clone();
    // A lane's own connection sends the target as given, so it gets the origin form and a
    // `Host`; the pooled client takes the absolute form.
    let target = match &lane {
        Some(_) => match HeaderValue::from_str(&authority) {
            Ok(h) => {
                headers.insert(HOST, h);
                path_and_query.parse()
            }
            Err(_) => return proxy.answer(Refusal::bad_request("bad request target")),
        },
        None => format!("{scheme}://{authority}{path_and_query}").parse(),
    };
    *up.uri_mut() = match target {
        Ok(u) => u,
        Err(_) => return proxy.answer(Refusal::bad_request("bad request target")),
    };
    *up.headers_mut() = headers;

    let sent = async {
        match &lane {
            Some(l) => l.send(&proxy, &dest, up).await,
            None => proxy
                .upstream
                .send(up)
                .await
                .map_err(|e| -> BoxError { Box::new(e) }),
        }
    };
    let resp = match tokio::time::timeout(proxy.response_timeout, sent).await {
        Err(_) => {
            return proxy.answer(Refusal::upstream(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{} did not answer in time", dest.host),
            ))
        }
        Ok(Err(e)) => {
            if let Some(i) = *req_report.refused.lock().unwrap() {
                return refuse_token(&proxy, &dest, i);
            }
            if let Some(p) = find_cause::<PrivateAddress>(&*e) {
                return proxy.refuse(StatusCode::FORBIDDEN, &dest.host, &p.0);
            }
            return proxy.answer(Refusal::upstream(
                StatusCode::BAD_GATEWAY,
                format!("upstream {}: {}", dest.host, error_chain(&*e)),
            ));
        }
        Ok(Ok(r)) => r,
    };
    let (mut rparts, rbody) = resp.into_parts();
    // Idle, not total: a long answer may take as long as it needs while bytes keep coming.
    let rbody = super::body::Idle::wrap(incoming(rbody), proxy.response_timeout);
    scrub_headers(&proxy, &mut rparts.headers);
    rparts.version = Version::HTTP_11;
    // Every Content-Encoding header and every entry of each: a coding kz cannot undo, or more
    // layers than it undoes, is refused rather than passed unscrubbed.
    let values: Vec<&str> = rparts
        .headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect();
    let codings = match Coding::parse_list(values.iter().copied()) {
        Ok(c) if c.len() <= MAX_CODINGS => c,
        Ok(c) => {
            return proxy.refuse(
                StatusCode::BAD_GATEWAY,
                &dest.host,
                &format!(
                    "{} sent a response compressed {} times, which kz does not unwrap",
                    dest.host,
                    c.len()
                ),
            )
        }
        Err(enc) => {
            return proxy.refuse(
                StatusCode::BAD_GATEWAY,
                &dest.host,
                &format!(
                    "{} sent a {enc:?}-encoded response, which kz cannot scrub",
                    dest.host
                ),
            )
        }
    };
    let gzip = !codings.is_empty();
    let json_body = rparts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_like);
    if gzip {
        rparts.headers.remove(CONTENT_ENCODING);
        rparts.headers.remove(CONTENT_LENGTH);
    }
    let no_body = parts.method == Method::HEAD
        || rparts.status == StatusCode::NO_CONTENT
        || rparts.status == StatusCode::NOT_MODIFIED;
    let rlength: Option<u64> = rparts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // The audit line's facts are gathered only when there is an audit log to write them to.
    let audit_ctx = proxy.audit.enabled().then(|| {
        (
            proxy.clone(),
            dest.clone(),
            parts.method.to_string(),
            shown_path,
            seen.clone(),
            req_report.clone(),
        )
    });
    let audit_line = {
        let status = rparts.status.as_u16();
        move |bytes_in: u64| {
            let Some((proxy, dest, method, path, seen, req_report)) = audit_ctx else {
                return;
            };
            let seen = seen.lock().unwrap();
            let record = crate::audit::Request {
                host: &dest.host,
                port: dest.port,
                method: &method,
                path: &path,
                secrets: seen.iter().map(|i| proxy.table.name(*i)).collect(),
                status,
                upgrade: None,
                bytes_out: Some(bytes_out.unwrap_or_else(|| {
                    req_report.bytes.load(std::sync::atomic::Ordering::Relaxed)
                })),
                bytes_in: Some(bytes_in),
                latency_ms: crate::audit::millis(start.elapsed()),
            };
            proxy.audit.record("request", &record);
        }
    };
    let body: Body = if no_body {
        audit_line(0);
        rbody
    } else if let Some(share) = rlength
        .filter(|l| !gzip && *l <= MAX_BUFFERED_RESPONSE)
        .and_then(reserve_buffer)
    {
        // Buffered whole (within the shared ceiling; past it the response streams instead).
        let _share = share;
        let data = match collect_limited(rbody, MAX_BUFFERED_RESPONSE as usize).await {
            Ok(d) => d,
            Err(e) => {
                return proxy.answer(Refusal::upstream(
                    StatusCode::BAD_GATEWAY,
                    format!("reading response from {}: {e}", dest.host),
                ))
            }
        };
        let data = if json_body {
            let mut out = Vec::with_capacity(data.len());
            JsonUnescape::default().push(&data, true, &mut out);
            Bytes::from(out)
        } else {
            data
        };
        let data = match proxy.table.scrubber().map(|s| s.replace_all(&data)) {
            Some(Ok(Some(v))) => Bytes::from(v),
            _ => data,
        };
        rparts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
        audit_line(data.len() as u64);
        full(data)
    } else {
        rparts.headers.remove(CONTENT_LENGTH);
        let report = Arc::new(StreamReport::default());
        let mut t = Transform::new(rbody, proxy.table.scrubber(), &codings, report);
        if json_body {
            t = t.json();
        }
        t.on_end(Box::new(audit_line)).boxed()
    };
    Response::from_parts(rparts, body)
}

/// Real values in response headers become tokens again; hop-by-hop headers are dropped.
fn scrub_headers(proxy: &Proxy, headers: &mut HeaderMap) {
    let needs_work = headers.iter().any(|(n, v)| {
        hop_by_hop(n)
            || proxy
                .table
                .scrubber()
                .is_some_and(|s| s.is_match(v.as_bytes()))
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
        let value = match proxy
            .table
            .scrubber()
            .map(|s| s.replace_all(value.as_bytes()))
        {
            Some(Ok(Some(v))) => HeaderValue::from_bytes(&v).unwrap_or(value),
            _ => value,
        };
        headers.append(name, value);
    }
}

fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(t) = inner.downcast_ref::<T>() {
                    return Some(t);
                }
            }
        }
        cur = err.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg.to_lowercase()
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket handshake: swapped like any request, sent on its own HTTP/1.1 connection; after
/// `101` the two upgraded streams are joined and frames pass unchanged.
async fn websocket(
    proxy: Arc<Proxy>,
    dest: Dest,
    method: Method,
    head: SwappedHead,
    on_client: hyper::upgrade::OnUpgrade,
    start: Instant,
) -> Response<Body> {
    let io: Box<dyn Io> = if dest.tls {
        match proxy.upstream.connect_tls_h1(&dest.host, dest.port).await {
            Ok(s) => Box::new(s),
            Err(e) => return upstream_error(&proxy, &dest, e),
        }
    } else {
        match proxy
            .upstream
            .resolver
            .dial(&dest.host, dest.port, super::upstream::CONNECT_TIMEOUT)
            .await
        {
            Ok(s) => Box::new(s),
            Err(e) => return upstream_error(&proxy, &dest, e),
        }
    };
    let mut sender = match h1_handshake(io).await {
        Ok(x) => x,
        Err(e) => {
            return proxy.answer(Refusal::upstream(
                StatusCode::BAD_GATEWAY,
                format!("upstream {}: {e}", dest.host),
            ))
        }
    };
    let mut up = Request::new(empty());
    *up.method_mut() = method.clone();
    *up.uri_mut() = head
        .path_and_query
        .parse()
        .unwrap_or_else(|_| "/".parse().expect("valid"));
    *up.headers_mut() = head.headers;
    // No compression extension: kz must read every frame to scrub it.
    up.headers_mut().remove("sec-websocket-extensions");
    let default_port = if dest.tls { 443 } else { 80 };
    let host_value = if dest.port == default_port {
        dest.host.clone()
    } else {
        format!("{}:{}", dest.host, dest.port)
    };
    if let Ok(v) = HeaderValue::from_str(&host_value) {
        up.headers_mut().insert(HOST, v);
    }
    let mut resp = match h1_send(&mut sender, up).await {
        Ok(r) => r,
        Err(e) => {
            return proxy.answer(Refusal::upstream(
                StatusCode::BAD_GATEWAY,
                format!("upstream {}: {e}", dest.host),
            ))
        }
    };
    let status = resp.status();
    let record = crate::audit::Request {
        host: &dest.host,
        port: dest.port,
        method: method.as_str(),
        path: &head.shown_path,
        secrets: head.seen.iter().map(|i| proxy.table.name(*i)).collect(),
        status: status.as_u16(),
        upgrade: Some("websocket"),
        bytes_out: None,
        bytes_in: None,
        latency_ms: crate::audit::millis(start.elapsed()),
    };
    proxy.audit.record("request", &record);
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        scrub_headers(&proxy, &mut parts.headers);
        return Response::from_parts(parts, incoming(body));
    }
    let on_upstream = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in resp.headers() {
        let value = match proxy
            .table
            .scrubber()
            .map(|s| s.replace_all(value.as_bytes()))
        {
            Some(Ok(Some(v))) => HeaderValue::from_bytes(&v).unwrap_or_else(|_| value.clone()),
            _ => value.clone(),
        };
        out.headers_mut().append(name.clone(), value);
    }
    // The agent's frames may carry tokens (swapped where the secret opted in to "body", refused
    // for another host's secret); the upstream's are scrubbed.
    let outbound = proxy.table.for_host(&dest.host, dest.port).body_raw.clone();
    let inbound = proxy.table.scrubber().cloned();
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = tokio::join!(on_client, on_upstream) else {
            return;
        };
        use tokio::io::AsyncWriteExt;
        let (client_r, mut client_w) = tokio::io::split(TokioIo::new(client));
        let (up_r, up_w) = tokio::io::split(TokioIo::new(upstream));
        let stop = {
            let down = ws::pump(up_r, &mut client_w, ws::Rewriter::new(inbound));
            let up = ws::pump(client_r, up_w, ws::Rewriter::new(Some(outbound)));
            tokio::select! {
                s = down => s,
                s = up => s,
            }
        };
        // Both directions have stopped; the agent gets one close frame saying why.
        match stop {
            ws::Stop::Refused(Forbidden(i)) => {
                let reason = format!(
                    "token of secret {} may not be sent to {} in a websocket message",
                    proxy.table.name(i),
                    dest.host
                );
                let _ = proxy.refuse(StatusCode::FORBIDDEN, &dest.host, &reason);
                let _ = client_w
                    .write_all(&ws::close_frame(1008, "kz: refused"))
                    .await;
            }
            ws::Stop::Unreadable(why) => {
                let reason = format!("{}: {why}; kz cannot scrub it", dest.host);
                let _ = proxy.refuse(StatusCode::BAD_GATEWAY, &dest.host, &reason);
                let _ = client_w
                    .write_all(&ws::close_frame(1011, "kz: unreadable frame"))
                    .await;
            }
            ws::Stop::Closed => {}
        }
        let _ = client_w.shutdown().await;
    });
    out
}

type H1Sender = hyper::client::conn::http1::SendRequest<Body>;
type BoxFut<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// HTTP/1.1 handshake on a fresh connection, its driver spawned with upgrades enabled. Plain
/// functions returning boxed futures keep hyper's body bounds out of the callers' state machines.
fn h1_handshake(io: Box<dyn Io>) -> BoxFut<hyper::Result<H1Sender>> {
    Box::pin(async move {
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io)).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(sender)
    })
}

fn h1_send(sender: &mut H1Sender, req: Request<Body>) -> BoxFut<hyper::Result<Response<Incoming>>> {
    Box::pin(sender.send_request(req))
}

/// An upstream HTTP/1.1 connection owned by one intercepted client connection and driven in the
/// same task, so a request and its response never cross threads. Opened on first use, reopened
/// when the upstream closes it.
pub struct Lane {
    sender: tokio::sync::Mutex<Option<H1Sender>>,
    driver: tokio::sync::mpsc::UnboundedSender<BoxFut<()>>,
}

impl Lane {
    /// A lane and the receiver of its connection futures, which the caller must poll.
    pub fn new() -> (Arc<Lane>, tokio::sync::mpsc::UnboundedReceiver<BoxFut<()>>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Arc::new(Lane {
                sender: tokio::sync::Mutex::new(None),
                driver: tx,
            }),
            rx,
        )
    }

    /// Sends `req` (origin-form target, `Host` set) on this lane's connection.
    fn send<'a>(
        &'a self,
        proxy: &'a Proxy,
        dest: &'a Dest,
        req: Request<Body>,
    ) -> BoxFutRef<'a, Result<Response<Incoming>, BoxError>> {
        Box::pin(async move {
            let mut guard = self.sender.lock().await;
            let mut req = req;
            // One retry: an idle upstream connection may close just as a request is sent, and a
            // request that was never written can safely go on a fresh connection.
            for attempt in 0..2 {
                let reusable = guard.as_ref().is_some_and(|s| !s.is_closed());
                if !reusable || attempt > 0 {
                    *guard = Some(self.connect(proxy, dest).await?);
                }
                let sender = guard.as_mut().expect("set above");
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok(resp),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) if attempt == 0 => req = unsent,
                        _ => return Err(Box::new(e.into_error()) as BoxError),
                    },
                }
            }
            Err("upstream connection closed".into())
        })
    }

    async fn connect(&self, proxy: &Proxy, dest: &Dest) -> Result<H1Sender, BoxError> {
        let tls = proxy.upstream.connect_tls_h1(&dest.host, dest.port).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tls)).await?;
        let _ = self.driver.send(Box::pin(async move {
            let _ = conn.await;
        }));
        Ok(sender)
    }
}

type BoxFutRef<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

fn upstream_error(proxy: &Proxy, dest: &Dest, e: std::io::Error) -> Response<Body> {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        return proxy.refuse(StatusCode::FORBIDDEN, &dest.host, &e.to_string());
    }
    proxy.answer(Refusal::upstream(
        StatusCode::BAD_GATEWAY,
        format!("cannot reach {}:{}: {e}", dest.host, dest.port),
    ))
}
