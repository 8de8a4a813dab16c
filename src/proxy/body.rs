//! Streaming body transforms for the proxy: token swapping on request bodies and scrubbing (with
//! gzip decoding) on response bodies, frame by frame, without buffering the stream.

use std::collections::BTreeSet;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::upstream::{Body, BoxError};
use crate::blind::replace::{PatternSet, StreamReplacer};

/// Shared between a streamed body and the request handler: what was found in the stream.
#[derive(Default)]
pub struct StreamReport {
    /// Index of a forbidden pattern met in the stream (the body was cut there).
    pub refused: Mutex<Option<usize>>,
    /// Bytes that passed through (after the transform).
    pub bytes: AtomicU64,
}

/// A body passed through an optional gunzip and an optional replacer.
pub struct Transform {
    inner: Body,
    gunzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    replacer: Option<StreamReplacer>,
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
    pub fn new(
        inner: Body,
        set: Option<&Arc<PatternSet>>,
        gunzip: bool,
        report: Arc<StreamReport>,
    ) -> Self {
        Transform {
            inner,
            gunzip: gunzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            replacer: set.map(|s| s.stream()),
            report,
            seen: None,
            on_end: None,
            done: false,
        }
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
        let plain: Vec<u8> = match &mut self.gunzip {
            Some(d) => {
                if let Err(e) = d.write_all(data) {
                    return Err(Box::new(e));
                }
                if end {
                    if let Err(e) = d.try_finish() {
                        return Err(Box::new(e));
                    }
                }
                std::mem::take(d.get_mut())
            }
            None => data.to_vec(),
        };
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
            Ok(()) => Ok(out),
            Err(idx) => {
                *self.report.refused.lock().unwrap() = Some(idx);
                Err(Box::new(Refused(idx)))
            }
        }
    }
}

use http_body_util::combinators::BoxBody;

impl HttpBody for Transform {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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
                    // Trailers pass through after whatever is still held back.
                    Err(frame) => {
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
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(format!("body larger than {limit} bytes").into());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    })
}

pub fn full(data: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}
