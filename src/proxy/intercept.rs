//! One intercepted request, forwarded: check the destination, swap tokens bound to it (target,
//! headers, Basic credentials, body), send it upstream, scrub real values out of the response,
//! audit. What to swap, refuse and scrub is decided in `decide`; this module does the I/O around
//! it. Tokens of secrets not bound to the destination are refused with 403 before anything is
//! sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode, Version};

use super::body::{
    collect_limited, empty, full, incoming, reserve_buffer, StreamReport, Transform,
};
use super::decide::{
    authority, head_refusal, host_agrees, is_websocket, misdirected, response_codings,
    scrub_headers, swap_head, token_refusal, SwappedHead,
};
use super::lane::Lane;
use super::outgoing::{content_length, length_reads, request_body, Outgoing};
use super::refusal::Refusal;
use super::upstream::{Body, BoxError, PrivateAddress};
use super::{Dest, Proxy};
use crate::blind::jsonesc::{is_json_like, JsonUnescape};

/// Responses with a `Content-Length` up to this size are scrubbed whole, keeping the length.
pub const MAX_BUFFERED_RESPONSE: u64 = 1 << 20;
/// How long an upstream may take to start its answer, by default: long reasoning calls send
/// nothing for many minutes (the SDKs themselves wait 10), so kz must not be the one to give up.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Handles one request towards `dest` (intercepted TLS, or plain HTTP through the proxy).
/// `misdirected` is a TLS server name that differed from the CONNECT target; `lane` is the
/// client connection's own upstream connection, when it has one; `handover` is where a
/// WebSocket upgrade leaves its frame pumps, to run in the client connection's task (without
/// one, they run in a task of their own, outside any drain).
pub fn forward(
    proxy: Arc<Proxy>,
    dest: Dest,
    misdirected: Option<String>,
    lane: Option<Arc<Lane>>,
    handover: Option<super::Handover>,
    req: Request<Body>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>> {
    Box::pin(async move {
        match exchange(&proxy, dest, misdirected, lane, handover, req).await {
            Ok(r) => r,
            Err(refusal) => proxy.answer(refusal),
        }
    })
}

async fn exchange(
    proxy: &Arc<Proxy>,
    dest: Dest,
    misdirected_sni: Option<String>,
    lane: Option<Arc<Lane>>,
    handover: Option<super::Handover>,
    mut req: Request<Body>,
) -> Result<Response<Body>, Refusal> {
    let start = Instant::now();
    let ws = is_websocket(&req);
    let client_upgrade = ws.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    match prepare(proxy, &dest, misdirected_sni, &mut parts, body, ws, start).await? {
        Prepared::Upgrade(head) => {
            let on_client = client_upgrade.expect("prepared for an upgrade");
            let method = parts.method;
            let upgrade = super::upgrade::Upgrade {
                on_client,
                handover,
                start,
            };
            Ok(super::upgrade::websocket(proxy.clone(), dest, method, head, upgrade).await)
        }
        Prepared::Send(mut out, asked) => {
            let sent = send(proxy, &dest, lane.as_deref(), &asked.method, &mut out).await?;
            respond(proxy, dest, asked, out, sent.map(incoming)).await
        }
    }
}

/// A request that passed every check, ready to go upstream.
pub(super) enum Prepared {
    /// A WebSocket upgrade, its head swapped.
    Upgrade(SwappedHead),
    /// Everything else: target, headers and body swapped.
    Send(Outgoing, Asked),
}

/// Every check and swap a request gets before it is sent, whichever codec carried it: the TLS
/// server name and `Host` agree with the destination, an IP literal passes the address rules,
/// tokens are swapped in the target, headers and body or the request is refused.
///
/// The headers are swapped where they are and move into the outgoing request; `parts` keeps
/// them as the agent sent them only towards a host an AWS secret is bound to, where the
/// agent's signature is checked against them.
pub(super) async fn prepare(
    proxy: &Arc<Proxy>,
    dest: &Dest,
    misdirected_sni: Option<String>,
    parts: &mut hyper::http::request::Parts,
    body: Body,
    ws: bool,
    start: Instant,
) -> Result<Prepared, Refusal> {
    if let Some(sni) = misdirected_sni {
        return Err(misdirected(&sni, dest));
    }
    host_agrees(&parts.uri, &parts.headers, dest)?;
    // IP literals bypass name resolution in the pooled client, so check them here.
    if looks_like_ip(&dest.host)
        && dest
            .host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok()
    {
        if let Err(e) = proxy.upstream.resolver.resolve(&dest.host, dest.port).await {
            return Err(Refusal::denied(
                StatusCode::FORBIDDEN,
                &dest.host,
                e.to_string(),
            ));
        }
    }
    // Secrets never travel in clear text: over plain HTTP every token is refused.
    let swap = if dest.tls {
        proxy.table.for_host(&dest.host, dest.port)
    } else {
        proxy.table.nowhere()
    };
    // Secrets whose AWS signatures are checked and made again towards this host (over TLS).
    let signers = if dest.tls {
        proxy.table.signers(&dest.host, dest.port)
    } else {
        Vec::new()
    };
    let headers = if !signers.is_empty() {
        parts.headers.clone()
    } else {
        std::mem::take(&mut parts.headers)
    };
    let mut head = swap_head(&proxy.table, &swap, &parts.uri, headers, ws)
        .map_err(|why| head_refusal(&proxy.table, dest, why))?;
    // Only an audit line shows the path (tokens as `{NAME}`): no work for it otherwise.
    if proxy.audit.enabled() {
        head.shown_path = proxy.table.redact(parts.uri.path());
    }
    if ws {
        return Ok(Prepared::Upgrade(head));
    }
    let SwappedHead {
        path_and_query,
        shown_path,
        headers,
        seen,
    } = head;
    let mut out = Outgoing {
        path_and_query,
        headers,
        seen: Arc::new(Mutex::new(seen)),
        body: empty(),
        bytes_out: None,
        report: Arc::new(StreamReport::default()),
        buffered: None,
    };
    request_body(proxy, dest, &swap, &signers, parts, body, &mut out).await?;
    let asked = Asked {
        method: parts.method.clone(),
        shown_path,
        start,
    };
    Ok(Prepared::Send(out, asked))
}

/// Whether `host` could be an IP literal (an IPv6 one has a colon, an IPv4 one only digits
/// and dots): names skip the parse.
fn looks_like_ip(host: &str) -> bool {
    host.contains(':') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// What the audit line says about the request.
pub(super) struct Asked {
    pub method: Method,
    shown_path: String,
    start: Instant,
}

/// Sends the request on the lane's own connection, or the pooled client, within the response
/// timeout.
async fn send(
    proxy: &Proxy,
    dest: &Dest,
    lane: Option<&Lane>,
    method: &Method,
    out: &mut Outgoing,
) -> Result<Response<Incoming>, Refusal> {
    let mut headers = std::mem::take(&mut out.headers);
    let authority = authority(dest);
    // A lane's own connection sends the target as given, so it gets the origin form and a
    // `Host`; the pooled client takes the absolute form.
    let target = match lane {
        Some(_) => {
            let host = HeaderValue::from_str(&authority)
                .map_err(|_| Refusal::bad_request("bad request target"))?;
            headers.insert(HOST, host);
            out.path_and_query.parse()
        }
        None => {
            let scheme = if dest.tls { "https" } else { "http" };
            format!("{scheme}://{authority}{}", out.path_and_query).parse()
        }
    };
    let mut up = Request::new(std::mem::replace(&mut out.body, empty()));
    *up.method_mut() = method.clone();
    *up.uri_mut() = target.map_err(|_| Refusal::bad_request("bad request target"))?;
    *up.headers_mut() = headers;
    let sent = async {
        match lane {
            Some(l) => l.send(proxy, dest, up).await,
            None => proxy
                .upstream
                .send(up)
                .await
                .map_err(|e| -> BoxError { Box::new(e) }),
        }
    };
    match tokio::time::timeout(proxy.response_timeout, sent).await {
        Err(_) => Err(too_slow(dest)),
        Ok(Err(e)) => Err(send_failure(proxy, dest, out, &*e)),
        Ok(Ok(r)) => Ok(r),
    }
}

/// The answer when sending failed: the request body's refusal when it held a token that may
/// not go here, a refusal by rule for a private address, else a 502 naming the cause.
pub(super) fn send_failure(
    proxy: &Proxy,
    dest: &Dest,
    out: &Outgoing,
    e: &(dyn std::error::Error + 'static),
) -> Refusal {
    if let Some(i) = *out.report.refused.lock().unwrap() {
        return token_refusal(&proxy.table, dest, i);
    }
    if let Some(p) = find_cause::<PrivateAddress>(e) {
        return Refusal::denied(StatusCode::FORBIDDEN, &dest.host, p.0.clone());
    }
    Refusal::upstream(
        StatusCode::BAD_GATEWAY,
        format!("upstream {}: {}", dest.host, error_chain(e)),
    )
}

/// The answer when the upstream did not start its response within the response timeout.
pub(super) fn too_slow(dest: &Dest) -> Refusal {
    Refusal::upstream(
        StatusCode::GATEWAY_TIMEOUT,
        format!("{} did not answer in time", dest.host),
    )
}

/// The response: headers scrubbed, the body decoded and scrubbed (whole when its length is
/// modest, else streamed), and the audit line written once the body has passed.
pub(super) async fn respond(
    proxy: &Arc<Proxy>,
    dest: Dest,
    asked: Asked,
    out: Outgoing,
    resp: Response<Body>,
) -> Result<Response<Body>, Refusal> {
    let (mut rparts, rbody) = resp.into_parts();
    // Idle, not total: a long answer may take as long as it needs while bytes keep coming.
    let rbody = super::body::Idle::wrap(rbody, proxy.response_timeout);
    scrub_headers(&proxy.table, &mut rparts.headers);
    rparts.version = Version::HTTP_11;
    let codings = response_codings(&rparts.headers, &dest)?;
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
    let no_body = asked.method == Method::HEAD
        || rparts.status == StatusCode::NO_CONTENT
        || rparts.status == StatusCode::NOT_MODIFIED;
    let rlength = content_length(&rparts.headers);
    let audit_line = audit_line(proxy, dest.clone(), asked, &out, rparts.status.as_u16());
    // Held until the response is built: the request's share of the buffer ceiling.
    let _request_share = out.buffered;
    let body: Body = if no_body {
        audit_line(0);
        rbody
    } else if let Some(share) = rlength
        .filter(|l| !gzip && *l <= MAX_BUFFERED_RESPONSE)
        .and_then(reserve_buffer)
    {
        // Buffered whole (within the shared ceiling; past it the response streams instead).
        let _share = share;
        let data = collect_limited(rbody, MAX_BUFFERED_RESPONSE as usize)
            .await
            .map_err(|e| {
                Refusal::upstream(
                    StatusCode::BAD_GATEWAY,
                    format!("reading response from {}: {e}", dest.host),
                )
            })?;
        // Unescaping is needed only where there is an escape.
        let data = if json_body && memchr::memchr(b'\\', &data).is_some() {
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
        if !length_reads(&rparts.headers, data.len()) {
            rparts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
        }
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
    Ok(Response::from_parts(rparts, body))
}

/// The `request` audit line, written with the response's byte count once the body has passed.
/// Its facts are gathered only when there is an audit log to write them to.
fn audit_line(
    proxy: &Arc<Proxy>,
    dest: Dest,
    asked: Asked,
    out: &Outgoing,
    status: u16,
) -> impl FnOnce(u64) + Send + 'static {
    let ctx = proxy.audit.enabled().then(|| {
        (
            proxy.clone(),
            dest,
            asked,
            out.seen.clone(),
            out.report.clone(),
            out.bytes_out,
        )
    });
    move |bytes_in: u64| {
        let Some((proxy, dest, asked, seen, report, bytes_out)) = ctx else {
            return;
        };
        let seen = seen.lock().unwrap();
        let record = crate::audit::Request {
            host: &dest.host,
            port: dest.port,
            method: asked.method.as_str(),
            path: &asked.shown_path,
            secrets: seen.iter().map(|i| proxy.table.name(*i)).collect(),
            status,
            upgrade: None,
            bytes_out: Some(
                bytes_out
                    .unwrap_or_else(|| report.bytes.load(std::sync::atomic::Ordering::Relaxed)),
            ),
            bytes_in: Some(bytes_in),
            latency_ms: crate::audit::millis(asked.start.elapsed()),
        };
        proxy.audit.record("request", &record);
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
