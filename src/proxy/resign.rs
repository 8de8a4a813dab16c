//! SigV4 re-signing on the wire, for hosts bound to a `sign = "aws-sigv4"` secret: the
//! request the agent signed with the token is checked as sent, then signed again with the real
//! key over exactly what kz forwards (headers and query after token swapping, kz's own header
//! changes included). See `crate::blind::sigv4` for the pure parts.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Frame;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, HOST};

use super::upstream::{Body, BoxError, PolledFrame};
use crate::blind::sigv4::{self, ChunkResigner, Scope, Signed};
use crate::blind::BlindSecret;

const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";

/// How a request was signed.
pub enum Signature {
    Header(Scope),
    /// Presigned: the scope from the query.
    Query(Scope),
}

/// Why an AWS-signed request is refused rather than signed again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResignError {
    #[error("AWS signature version 2 cannot be signed again by kz; use SigV4 (for boto3 presigned S3 URLs: Config(signature_version=\"s3v4\"))")]
    Version2,
    #[error("an AWS SigV4 Authorization header kz cannot read")]
    Header,
    #[error("a presigned AWS SigV4 query kz cannot read")]
    Query,
    #[error("the AWS signature names a header the request does not carry")]
    MissingHeader,
    #[error("the AWS signature was not made with the token of {0} (kz signs again only requests the agent signed with that token; check that the SDK's secret access key is the token)")]
    NotTheToken(String),
    #[error("a signed header was dropped on the way")]
    Dropped,
    #[error("a key id kz cannot send")]
    KeyId,
}

/// Whether (and how) `parts` carries a SigV4 signature.
pub fn signature_of(headers: &HeaderMap, query: &str) -> Option<Result<Signature, ResignError>> {
    if let Some(auth) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if auth.starts_with("AWS ") {
            return Some(Err(ResignError::Version2));
        }
        if auth.starts_with("AWS4-HMAC-SHA256") {
            let date = headers
                .get("x-amz-date")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Some(
                sigv4::parse_authorization(auth, date)
                    .filter(|_| !date.is_empty())
                    .map(Signature::Header)
                    .ok_or(ResignError::Header),
            );
        }
    }
    let pairs = sigv4::query_pairs(query);
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    if get("AWSAccessKeyId").is_some() && get("Signature").is_some() {
        return Some(Err(ResignError::Version2));
    }
    let sig = get("X-Amz-Signature")?;
    let parsed = (|| {
        if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
            return None;
        }
        let cred = get("X-Amz-Credential")?;
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={}, Signature={sig}",
            get("X-Amz-SignedHeaders")?
        );
        sigv4::parse_authorization(&auth, &get("X-Amz-Date")?)
    })();
    Some(parsed.map(Signature::Query).ok_or(ResignError::Query))
}

/// `(lower-case name, value)` pairs, with `host` from the header or the authority.
pub fn header_pairs(headers: &HeaderMap, authority: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .filter(|(n, _)| **n != HOST)
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(authority)
        .to_string();
    out.push(("host".into(), host));
    out
}

/// The payload hash a request was signed with: `x-amz-content-sha256` when present (S3), a
/// presigned S3 request's `UNSIGNED-PAYLOAD`, else the hash of `body` (`None`: the body is
/// needed and was not read).
pub fn payload_hash(headers: &HeaderMap, sig: &Signature, body: Option<&[u8]>) -> Option<String> {
    if let Some(h) = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        return Some(h.to_string());
    }
    match sig {
        Signature::Query(s) if s.service == "s3" => Some("UNSIGNED-PAYLOAD".into()),
        _ => body.map(crate::provider::sigv4::sha256_hex),
    }
}

/// Whether the body is `aws-chunked` with signed chunks.
pub fn signed_chunks(headers: &HeaderMap) -> bool {
    headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == STREAMING_SIGNED || v == STREAMING_SIGNED_TRAILER)
}

/// The outcome of checking and re-signing one request.
pub struct Resigned {
    /// The query to send (with a new `X-Amz-Signature` when presigned).
    pub query: String,
    /// For signed `aws-chunked` bodies: the chunk re-signer.
    pub chunks: Option<ChunkResigner>,
    /// The secret whose key signed it.
    pub secret: usize,
}

/// What was sent (checked with the token) and what kz forwards (signed with the key): the same
/// request, with the path and query swapped.
pub struct Exchange<'a> {
    pub sent: Signed<'a>,
    pub path: &'a str,
    pub query: &'a str,
}

/// Checks the signature against each candidate secret's token; on a match, signs what kz
/// forwards with that secret's key, writing the new `Authorization` into `forward_headers`
/// (or returning the new query). `Err`: the reason to refuse.
pub fn resign(
    sig: &Signature,
    candidates: &[(usize, &BlindSecret)],
    ex: &Exchange,
    forward_headers: &mut HeaderMap,
    authority: &str,
) -> Result<Resigned, ResignError> {
    let scope = match sig {
        Signature::Header(s) | Signature::Query(s) => s,
    };
    let canonical = sigv4::canonical_request(&ex.sent, scope).ok_or(ResignError::MissingHeader)?;
    let Some((index, secret, seed_token)) = candidates.iter().find_map(|(i, s)| {
        let t = sigv4::sign(&canonical, scope, &s.token);
        sigv4::same(&t, &scope.signature).then_some((*i, *s, t))
    }) else {
        let names: Vec<&str> = candidates.iter().map(|(_, s)| s.name.as_str()).collect();
        return Err(ResignError::NotTheToken(names.join(" or ")));
    };
    // What kz forwards, signed with the key. The key id in the scope is the forwarded one
    // (a token there has been swapped already).
    let fwd_pairs = header_pairs(forward_headers, authority);
    let mut fwd_scope = scope.clone();
    let forward_query_scope = match sig {
        Signature::Query(_) => {
            let pairs = sigv4::query_pairs(ex.query);
            pairs
                .iter()
                .find(|(k, _)| k == b"X-Amz-Credential")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        }
        Signature::Header(_) => forward_headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| sigv4::parse_authorization(a, &scope.amz_date))
            .map(|s| format!("{}/{}", s.key_id, s.scope())),
    };
    if let Some(c) = forward_query_scope {
        if let Some((key_id, _)) = c.split_once('/') {
            fwd_scope.key_id = key_id.to_string();
        }
    }
    let fwd = Signed {
        method: ex.sent.method,
        path: ex.path,
        query: ex.query,
        headers: &fwd_pairs,
        payload_hash: ex.sent.payload_hash,
    };
    let fwd_canonical = sigv4::canonical_request(&fwd, &fwd_scope).ok_or(ResignError::Dropped)?;
    let real = secret.value.expose();
    let seed_real = sigv4::sign(&fwd_canonical, &fwd_scope, real);
    let query = match sig {
        Signature::Header(_) => {
            let value = format!(
                "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={seed_real}",
                fwd_scope.key_id,
                fwd_scope.scope(),
                fwd_scope.signed_headers.join(";")
            );
            forward_headers.insert(
                AUTHORIZATION,
                HeaderValue::from_str(&value).map_err(|_| ResignError::KeyId)?,
            );
            ex.query.to_string()
        }
        Signature::Query(_) => ex
            .query
            .split('&')
            .map(|p| {
                if p.starts_with("X-Amz-Signature=") {
                    format!("X-Amz-Signature={seed_real}")
                } else {
                    p.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("&"),
    };
    let chunks = signed_chunks(forward_headers).then(|| {
        ChunkResigner::new(
            fwd_scope.clone(),
            &secret.token,
            real,
            seed_token.clone(),
            seed_real.clone(),
        )
    });
    Ok(Resigned {
        query,
        chunks,
        secret: index,
    })
}

/// A request body whose `aws-chunked` signatures are replaced as it streams.
pub struct ChunkedBody {
    inner: Body,
    resigner: ChunkResigner,
}

impl ChunkedBody {
    pub fn new(inner: Body, resigner: ChunkResigner) -> Self {
        ChunkedBody { inner, resigner }
    }
}

impl hyper::body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let mut out = Vec::new();
                        if let Err(e) = self.resigner.push(&data, &mut out) {
                            return Poll::Ready(Some(Err(format!(
                                "kz: cannot re-sign the aws-chunked body: {e:?}"
                            )
                            .into())));
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) if !self.resigner.finished() => {
                    return Poll::Ready(Some(Err("kz: the aws-chunked body ended early".into())))
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}
