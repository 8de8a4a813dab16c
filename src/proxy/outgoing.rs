//! A request on its way out of the proxy: its body swapped whole when its length is known and
//! modest, else streamed; a compressed body checked on the side; a SigV4-signed request towards
//! a host bound to an AWS secret signed again instead of swapped.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_LENGTH};
use hyper::StatusCode;

use super::body::{
    collect_limited, decode_all, empty, full, reserve_buffer, StreamReport, Transform,
};
use super::decide::{authority, body_patterns, request_codings, token_refusal};
use super::refusal::Refusal;
use super::resign;
use super::upstream::Body;
use super::{Dest, Proxy};
use crate::blind::{BlindSecret, HostSwap};
use crate::conceal::replace::Forbidden;

/// Bodies with a `Content-Length` up to this size are swapped whole, so the length stays exact.
pub const MAX_BUFFERED_REQUEST: u64 = 8 << 20;
/// A request on its way out: target and headers after swapping, its body, and what the audit
/// line needs of it.
pub(super) struct Outgoing {
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// Indices of the secrets swapped in so far.
    pub seen: Arc<Mutex<BTreeSet<usize>>>,
    pub body: Body,
    /// Bytes sent, when known before sending (else the stream report counts them).
    pub bytes_out: Option<u64>,
    pub report: Arc<StreamReport>,
    /// This request's share of the buffer ceiling, held until the exchange ends.
    pub buffered: Option<tokio::sync::SemaphorePermit<'static>>,
}

/// The request body: swapped whole when its length is known and modest (exact Content-Length),
/// else streamed chunk by chunk; a compressed body passes as it came, checked on the side; a
/// SigV4-signed request towards a host bound to an AWS secret (`signers`, with `parts` holding
/// the headers as the agent sent them) is signed again instead.
pub(super) async fn request_body(
    proxy: &Proxy,
    dest: &Dest,
    swap: &HostSwap,
    signers: &[(usize, &BlindSecret)],
    parts: &hyper::http::request::Parts,
    body: Body,
    out: &mut Outgoing,
) -> Result<(), Refusal> {
    // Towards a host bound to an AWS secret, a SigV4-signed request is checked and signed
    // again with the real key instead of having its text swapped.
    if !signers.is_empty() {
        match resign::signature_of(&parts.headers, parts.uri.query().unwrap_or("")) {
            None => {}
            Some(Err(reason)) => {
                return Err(Refusal::denied(StatusCode::FORBIDDEN, &dest.host, reason))
            }
            Some(Ok(sig)) => return resigned_body(dest, signers, &sig, parts, body, out).await,
        }
    }
    let set = body_patterns(swap, &out.headers);
    // A compressed request body is passed as it is (kz does not re-compress), but it is decoded
    // on the side and checked: a token of a secret not bound here is refused there too.
    let codings = match request_codings(&out.headers, dest) {
        Ok(c) => c,
        Err(refusal) => {
            // Read (a bounded part of) the body first, so HTTP/2 clients see a clean answer.
            let _ = collect_limited(body, 1 << 20).await;
            return Err(refusal);
        }
    };
    let encoded = !codings.is_empty();
    let length = content_length(&out.headers);
    out.body = if body.is_end_stream() {
        out.bytes_out = Some(0);
        empty()
    } else if let Some(l) = length.filter(|l| *l <= MAX_BUFFERED_REQUEST) {
        // Known and modest length: read whole (within the shared ceiling), so the length stays
        // exact and nothing is sent before the body is checked.
        let (data, share) = read_whole(dest, body, l).await?;
        out.buffered = Some(share);
        let data = if encoded {
            // Compressed: decoded and checked on the side, then passed as it came.
            match decode_all(&codings, &data).map(|plain| set.replace_all(&plain)) {
                Ok(Err(Forbidden(i))) => return Err(token_refusal(&proxy.table, dest, i)),
                Ok(Ok(_)) => data,
                Err(e) => {
                    return Err(Refusal::denied(
                        StatusCode::BAD_REQUEST,
                        &dest.host,
                        format!("a compressed request body kz cannot decode: {e}"),
                    ))
                }
            }
        } else {
            match set.replace_noting(&data, &mut out.seen.lock().unwrap()) {
                Err(Forbidden(i)) => return Err(token_refusal(&proxy.table, dest, i)),
                Ok(Some(v)) => Bytes::from(v),
                Ok(None) => data,
            }
        };
        out.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
        out.bytes_out = Some(data.len() as u64);
        full(data)
    } else if encoded {
        out.headers.remove(CONTENT_LENGTH);
        Transform::new(body, Some(set), &codings, out.report.clone())
            .scan_only()
            .boxed()
    } else {
        out.headers.remove(CONTENT_LENGTH);
        Transform::new(body, Some(set), &[], out.report.clone())
            .with_seen(out.seen.clone())
            .boxed()
    };
    // kz must read responses to scrub them, so ask bound hosts for uncompressed ones.
    out.headers
        .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    Ok(())
}

/// A SigV4-signed request: passed as the agent signed it (no text swapping: that would break the
/// payload hash), checked, and signed again with the real key.
async fn resigned_body(
    dest: &Dest,
    signers: &[(usize, &BlindSecret)],
    sig: &resign::Signature,
    parts: &hyper::http::request::Parts,
    body: Body,
    out: &mut Outgoing,
) -> Result<(), Refusal> {
    // Read whole only when the signature covers a hash of the body that was not sent.
    let (body, hash) = match resign::payload_hash(&parts.headers, sig, None) {
        Some(h) => (body, h),
        None => {
            let Some(l) = content_length(&out.headers).filter(|l| *l <= MAX_BUFFERED_REQUEST)
            else {
                return Err(Refusal::denied(
                    StatusCode::FORBIDDEN,
                    &dest.host,
                    "an AWS-signed body kz cannot hash to check the signature (no x-amz-content-sha256, and no modest Content-Length)",
                ));
            };
            let (data, share) = read_whole(dest, body, l).await?;
            out.buffered = Some(share);
            let h = crate::provider::sigv4::sha256_hex(&data);
            (full(data), h)
        }
    };
    let authority = authority(dest);
    out.headers
        .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    let (path, query) = match out.path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (out.path_and_query.clone(), String::new()),
    };
    let sent_authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| authority.clone());
    let sent_headers = resign::header_pairs(&parts.headers, &sent_authority);
    let ex = resign::Exchange {
        sent: crate::blind::sigv4::Signed {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &sent_headers,
            payload_hash: &hash,
        },
        path: &path,
        query: &query,
    };
    let r = resign::resign(sig, signers, &ex, &mut out.headers, &authority)
        .map_err(|reason| Refusal::denied(StatusCode::FORBIDDEN, &dest.host, reason))?;
    out.seen.lock().unwrap().insert(r.secret);
    out.path_and_query = if r.query.is_empty() {
        path
    } else {
        format!("{path}?{}", r.query)
    };
    out.body = match r.chunks {
        Some(c) => resign::ChunkedBody::new(body, c).boxed(),
        None => body,
    };
    Ok(())
}

/// Whether `headers` hold one `Content-Length`, written as `len` is (so it need not be set
/// again).
pub(super) fn length_reads(headers: &HeaderMap, len: usize) -> bool {
    let mut all = headers.get_all(CONTENT_LENGTH).iter();
    let mut digits = [0u8; 20];
    let digits = crate::http::decimal(len as u64, &mut digits);
    matches!((all.next(), all.next()), (Some(v), None) if v.as_bytes() == digits)
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads a request body of announced length `l` whole, within the shared buffer ceiling;
/// returns the bytes and this request's share of the ceiling (held until the exchange ends).
async fn read_whole(
    dest: &Dest,
    body: Body,
    l: u64,
) -> Result<(Bytes, tokio::sync::SemaphorePermit<'static>), Refusal> {
    let Some(share) = reserve_buffer(l) else {
        return Err(Refusal::denied(
            StatusCode::SERVICE_UNAVAILABLE,
            &dest.host,
            "too many large bodies in flight; try again",
        ));
    };
    match collect_limited(body, MAX_BUFFERED_REQUEST as usize).await {
        Ok(d) => Ok((d, share)),
        Err(e) => Err(Refusal::bad_request(format!("reading request body: {e}"))),
    }
}
