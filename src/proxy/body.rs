//! Streaming body transforms for the proxy: token swapping on request bodies and scrubbing (with
//! gzip/deflate/br/zstd decoding, up to two layers) on response bodies, frame by frame, without
//! buffering the stream; trailers get the same treatment as the data. Also the global ceiling on
//! bodies buffered whole.
//!
//! Longer than 400 lines because every body transform shares one frame-by-frame state machine
//! (decode, replace, hold back a possible pattern start, trailers).

use std::collections::BTreeSet;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::upstream::{Body, BoxError, PolledFrame};
use crate::conceal::replace::{Forbidden, PatternSet, StreamReplacer};

/// Shared between a streamed body and the request handler: what was found in the stream.
#[derive(Default)]
pub struct StreamReport {
    /// Index of a forbidden pattern met in the stream (the body was cut there).
    pub refused: Mutex<Option<usize>>,
    /// Bytes that passed through (after the transform).
    pub bytes: AtomicU64,
}

/// A content coding kz does not undo (its name, lower-case).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}")]
pub struct UnknownCoding(pub String);

/// A content coding kz can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// The codings of a `Content-Encoding` value list, in the order they were applied
    /// (`identity` dropped). `Err(name)`: one kz cannot undo.
    pub fn parse_list<'a>(
        values: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<Coding>, UnknownCoding> {
        let mut out = Vec::new();
        for v in values.flat_map(|v| v.split(',')) {
            match v.trim().to_ascii_lowercase().as_str() {
                "" | "identity" => {}
                "gzip" | "x-gzip" => out.push(Coding::Gzip),
                "deflate" => out.push(Coding::Deflate),
                "br" => out.push(Coding::Brotli),
                "zstd" => out.push(Coding::Zstd),
                other => return Err(UnknownCoding(other.to_string())),
            }
        }
        Ok(out)
    }
}

/// At most this many layers of compression are undone; more is refused.
pub const MAX_CODINGS: usize = 2;

/// Decompressed bytes one input frame may turn into; past it the response is cut (a
/// compression bomb). Input is fed in small slices so no single step inflates much more.
pub const MAX_INFLATE_PER_FRAME: usize = 16 << 20;
const INFLATE_SLICE: usize = 4096;

enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Vec<u8>>>),
}

impl Decoder {
    fn new(c: Coding) -> Self {
        match c {
            Coding::Gzip => Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            Coding::Deflate => Decoder::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
            Coding::Brotli => Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Vec::new(), 4096),
            )),
            Coding::Zstd => match zstd::stream::write::Decoder::new(Vec::new()) {
                Ok(d) => Decoder::Zstd(Box::new(d)),
                // Only fails when memory runs out; the response is then refused as unreadable.
                Err(_) => Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            },
        }
    }

    fn push(&mut self, data: &[u8], end: bool) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => step(d, data, end, |d| d.try_finish(), |d| d.get_mut()),
            Decoder::Deflate(d) => step(d, data, end, |d| d.try_finish(), |d| d.get_mut()),
            Decoder::Brotli(d) => step(&mut **d, data, end, |d| d.flush(), |d| d.get_mut()),
            Decoder::Zstd(d) => step(&mut **d, data, end, |d| d.flush(), |d| d.get_mut()),
        }
    }
}

/// Feeds one decoder: writes `data`, finishes the stream at the end, and takes what came out.
fn step<D: Write>(
    d: &mut D,
    data: &[u8],
    end: bool,
    finish: fn(&mut D) -> std::io::Result<()>,
    output: fn(&mut D) -> &mut Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    d.write_all(data)?;
    if end {
        finish(d)?;
    }
    Ok(std::mem::take(output(d)))
}

/// Undoes `layers` (outermost first) on `data`, slice by slice, refusing to grow past the
/// per-frame ceiling.
fn inflate(layers: &mut [Decoder], data: &[u8], end: bool) -> Result<Vec<u8>, BoxError> {
    let Some((outer, inner)) = layers.split_first_mut() else {
        return Ok(data.to_vec());
    };
    let mut out = Vec::new();
    let mut chunks: Vec<&[u8]> = data.chunks(INFLATE_SLICE).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, c) in chunks.into_iter().enumerate() {
        let step = outer.push(c, end && i == last)?;
        out.extend(inflate(inner, &step, end && i == last)?);
        if out.len() > MAX_INFLATE_PER_FRAME {
            return Err(format!(
                "decompressed data grew past {} MiB from one frame (a compression bomb?)",
                MAX_INFLATE_PER_FRAME >> 20
            )
            .into());
        }
    }
    Ok(out)
}

/// Undoes `codings` (in the order they were applied) on a whole body, within the same ceiling.
pub fn decode_all(codings: &[Coding], data: &[u8]) -> Result<Vec<u8>, BoxError> {
    let mut layers: Vec<Decoder> = codings.iter().rev().map(|c| Decoder::new(*c)).collect();
    inflate(&mut layers, data, true)
}

/// A body passed through optional decoders and an optional replacer.
pub struct Transform {
    inner: Body,
    decoders: Vec<Decoder>,
    replacer: Option<StreamReplacer>,
    /// JSON escapes of printable ASCII undone before matching (JSON responses).
    unescape: Option<crate::blind::jsonesc::JsonUnescape>,
    set: Option<Arc<PatternSet>>,
    /// Check only: the decoded data goes through the patterns (a forbidden one stops the
    /// stream), but the original bytes are passed on.
    scan: bool,
    report: Arc<StreamReport>,
    seen: Option<Arc<Mutex<BTreeSet<usize>>>>,
    on_end: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
    done: bool,
}

impl Drop for Transform {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.report.bytes.load(Ordering::Relaxed));
        }
    }
}

#[derive(Debug)]
pub struct Refused(pub usize);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "token of secret #{} refused for this destination",
            self.0
        )
    }
}
impl std::error::Error for Refused {}

impl Transform {
    /// `codings` in the order they were applied (as `Content-Encoding` lists them).
    pub fn new(
        inner: Body,
        set: Option<&Arc<PatternSet>>,
        codings: &[Coding],
        report: Arc<StreamReport>,
    ) -> Self {
        Transform {
            inner,
            decoders: codings.iter().rev().map(|c| Decoder::new(*c)).collect(),
            replacer: set.map(|s| s.stream()),
            unescape: None,
            set: set.cloned(),
            scan: false,
            report,
            seen: None,
            on_end: None,
            done: false,
        }
    }

    /// Passes the original bytes on, after checking their decoded form (compressed requests).
    pub fn scan_only(mut self) -> Self {
        self.scan = true;
        self
    }

    /// Undoes JSON escapes of printable ASCII before matching (the body is JSON text).
    pub fn json(mut self) -> Self {
        self.unescape = Some(Default::default());
        self
    }

    /// Records which patterns matched (for audit lines).
    pub fn with_seen(mut self, seen: Arc<Mutex<BTreeSet<usize>>>) -> Self {
        self.seen = Some(seen);
        self
    }

    /// Called once with the byte count when the body ends or is dropped.
    pub fn on_end(mut self, f: Box<dyn FnOnce(u64) + Send + Sync>) -> Self {
        self.on_end = Some(f);
        self
    }

    pub fn boxed(self) -> Body {
        BoxBody::new(self)
    }

    fn process(&mut self, data: &[u8], end: bool) -> Result<Vec<u8>, BoxError> {
        let mut plain: Vec<u8> = inflate(&mut self.decoders, data, end)?;
        if let Some(u) = &mut self.unescape {
            let mut unescaped = Vec::with_capacity(plain.len());
            u.push(&plain, end, &mut unescaped);
            plain = unescaped;
        }
        let Some(r) = &mut self.replacer else {
            return Ok(plain);
        };
        let mut out = Vec::with_capacity(plain.len() + 64);
        let res = r
            .push(&plain, &mut out)
            .and_then(|_| if end { r.finish(&mut out) } else { Ok(()) });
        if let Some(seen) = &self.seen {
            seen.lock().unwrap().extend(r.seen().iter().copied());
        }
        match res {
            Ok(()) if self.scan => Ok(data.to_vec()),
            Ok(()) => Ok(out),
            Err(Forbidden(idx)) => {
                *self.report.refused.lock().unwrap() = Some(idx);
                Err(Box::new(Refused(idx)))
            }
        }
    }
}

impl Transform {
    /// Runs each trailer value through the same patterns as the data (scrubbed in responses;
    /// refused for a token of another host in requests).
    fn trailers(&mut self, trailers: &mut hyper::HeaderMap) -> Result<(), BoxError> {
        let Some(set) = &self.set else {
            return Ok(());
        };
        for v in trailers.values_mut() {
            match set.replace_all(v.as_bytes()) {
                Ok(Some(new)) => {
                    *v = hyper::header::HeaderValue::from_bytes(&new)
                        .map_err(|_| -> BoxError { "a trailer kz cannot rewrite".into() })?
                }
                Ok(None) => {}
                Err(Forbidden(idx)) => {
                    *self.report.refused.lock().unwrap() = Some(idx);
                    return Err(Box::new(Refused(idx)));
                }
            }
        }
        Ok(())
    }
}

use http_body_util::combinators::BoxBody;

impl HttpBody for Transform {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = match self.process(&data, false) {
                            Ok(o) => o,
                            Err(e) => {
                                self.done = true;
                                return Poll::Ready(Some(Err(e)));
                            }
                        };
                        if out.is_empty() {
                            continue;
                        }
                        self.report
                            .bytes
                            .fetch_add(out.len() as u64, Ordering::Relaxed);
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    // Trailers follow whatever is still held back, treated like the data.
                    Err(frame) => {
                        let frame = match frame.into_trailers() {
                            Ok(mut trailers) => {
                                if let Err(e) = self.trailers(&mut trailers) {
                                    self.done = true;
                                    return Poll::Ready(Some(Err(e)));
                                }
                                Frame::trailers(trailers)
                            }
                            Err(other) => other,
                        };
                        let rest = match self.process(&[], true) {
                            Ok(o) => o,
                            Err(e) => {
                                self.done = true;
                                return Poll::Ready(Some(Err(e)));
                            }
                        };
                        self.done = true;
                        if !rest.is_empty() {
                            // Trailers are rare on intercepted traffic; the held bytes matter more.
                            self.report
                                .bytes
                                .fetch_add(rest.len() as u64, Ordering::Relaxed);
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    let rest = match self.process(&[], true) {
                        Ok(o) => o,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    };
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    self.report
                        .bytes
                        .fetch_add(rest.len() as u64, Ordering::Relaxed);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Reads a whole body up to `limit` bytes. (A boxed future, so the body's error bounds are
/// checked here rather than inside callers' async state machines.)
pub fn collect_limited(
    body: Body,
    limit: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, BoxError>> + Send>> {
    Box::pin(async move {
        let mut body = body;
        // A body that comes in one piece is kept as it came; only a second piece is copied.
        let mut first = Bytes::new();
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if first.len() + buf.len() + data.len() > limit {
                    return Err(format!("body larger than {limit} bytes").into());
                }
                if first.is_empty() && buf.is_empty() {
                    first = data;
                } else {
                    if buf.is_empty() {
                        buf.extend_from_slice(&std::mem::take(&mut first));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
        Ok(if buf.is_empty() { first } else { buf.freeze() })
    })
}

pub fn full(data: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    // Zero-sized: boxing it allocates nothing.
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Bodies buffered whole (to keep an exact `Content-Length`) share this many KiB across all
/// connections; a request that would pass it is answered `503` instead of growing kz.
pub const BUFFER_CEILING_KIB: usize = 64 << 10;
static BUFFERED: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BUFFER_CEILING_KIB);

/// A body as hyper received it, with its error boxed like every body kz forwards.
pub fn incoming(b: hyper::body::Incoming) -> Body {
    b.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// A share of the buffer ceiling, held while a body of `len` bytes is in memory; `None` when
/// the ceiling is reached.
pub fn reserve_buffer(len: u64) -> Option<tokio::sync::SemaphorePermit<'static>> {
    let kib = u32::try_from(len.div_ceil(1024)).ok()?;
    BUFFERED.try_acquire_many(kib.max(1)).ok()
}

/// A body that fails once no frame has arrived for `limit` (a peer gone silent), however long
/// the whole body takes: long answers are fine as long as bytes keep coming.
pub struct Idle {
    inner: Body,
    limit: std::time::Duration,
    /// Armed only while the body waits for data (most bodies never wait: no timer at all).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Idle {
    pub fn wrap(inner: Body, limit: std::time::Duration) -> Body {
        Idle {
            inner,
            limit,
            timer: None,
        }
        .boxed()
    }
}

impl HttpBody for Idle {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> PolledFrame {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.timer = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match std::future::Future::poll(timer.as_mut(), cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(
                            Err(format!("no data for {}s", limit.as_secs()).into()),
                        ))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn stacked_codings_are_undone_in_reverse_and_bombs_are_cut() {
        assert_eq!(
            Coding::parse_list(["identity, gzip", "deflate"].into_iter()),
            Ok(vec![Coding::Gzip, Coding::Deflate])
        );
        assert_eq!(
            Coding::parse_list(["gzip, br", "zstd"].into_iter()),
            Ok(vec![Coding::Gzip, Coding::Brotli, Coding::Zstd])
        );
        assert_eq!(
            Coding::parse_list(["gzip, compress"].into_iter()),
            Err(UnknownCoding("compress".into()))
        );
        // A brotli stream written by hand (RFC 7932): window 16, one uncompressed meta-block of
        // 5 bytes, then an empty last meta-block.
        let br = [&[0x40, 0x00, 0x10][..], b"hello", &[0x03]].concat();
        assert_eq!(decode_all(&[Coding::Brotli], &br).unwrap(), b"hello");
        let z = zstd::encode_all(&gzip(b"zstd outside")[..], 3).unwrap();
        let mut layers: Vec<Decoder> = [Coding::Gzip, Coding::Zstd]
            .iter()
            .rev()
            .map(|c| Decoder::new(*c))
            .collect();
        assert_eq!(inflate(&mut layers, &z, true).unwrap(), b"zstd outside");
        let twice = gzip(&gzip(b"hello world"));
        let mut layers: Vec<Decoder> = [Coding::Gzip, Coding::Gzip]
            .iter()
            .rev()
            .map(|c| Decoder::new(*c))
            .collect();
        assert_eq!(inflate(&mut layers, &twice, true).unwrap(), b"hello world");
        // 200 MiB of zeros compress to about 200 KiB; inflating must stop at the ceiling.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..200 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        let mut layers = vec![Decoder::new(Coding::Gzip)];
        let err = inflate(&mut layers, &bomb, true).unwrap_err();
        assert!(err.to_string().contains("compression bomb"), "{err}");
    }

    #[test]
    fn the_buffer_ceiling_is_shared() {
        let a = reserve_buffer((BUFFER_CEILING_KIB as u64 - 1) * 1024).unwrap();
        assert!(reserve_buffer(4096).is_none());
        drop(a);
        assert!(reserve_buffer(4096).is_some());
    }
}
