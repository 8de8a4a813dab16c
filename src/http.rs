//! The small HTTPS client the providers share: hyper over rustls, verified against the system
//! roots plus any extra CA files, with a per-request timeout and a cap on response size.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;

/// Largest response body a provider will read.
pub const MAX_BODY: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("response larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("invalid json in response: {0}")]
    Json(String),
    #[error("{0}")]
    Other(String),
}

/// Why certificates could not be read; `what` names their source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("{0}: invalid pem: {1}")]
    Invalid(String, String),
    #[error("{0}: no certificates found")]
    Empty(String),
    #[error("{0}: cannot read ca file: {1}")]
    Read(String, String),
}

/// A response with its body read.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Json(e.to_string()))
    }
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The machine's trust roots, loaded once per process.
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(crate::roots::load)
}

/// Every certificate in PEM text; `what` names its source in errors.
pub fn parse_pem_certs(data: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &data[..]).collect();
    let certs = certs.map_err(|e| PemError::Invalid(what.into(), e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::Empty(what.into()));
    }
    Ok(certs)
}

/// Reads every certificate in a PEM file.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let data = std::fs::read(path)
        .map_err(|e| PemError::Read(path.display().to_string(), crate::fs::io_reason(&e)))?;
    parse_pem_certs(&data, &path.display().to_string())
}

pub fn tls_client_config(extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(system_roots().iter().cloned());
    roots.add_parsable_certificates(extra.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// TLS (HTTP/1.1 and HTTP/2 by ALPN) over `connector`, plain HTTP for `http://` URLs.
pub fn https_connector<C>(
    tls: rustls::ClientConfig,
    connector: C,
) -> hyper_rustls::HttpsConnector<C> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(connector)
}

impl HttpClient {
    /// A client trusting the system roots plus `extra_ca` files.
    pub fn new(extra_ca: &[&Path]) -> Result<Self, PemError> {
        let mut extra = Vec::new();
        for p in extra_ca {
            extra.extend(read_pem_certs(p)?);
        }
        Ok(Self::with_certs(&extra))
    }

    /// A client trusting the system roots plus `extra` certificates.
    pub fn with_certs(extra: &[CertificateDer<'static>]) -> Self {
        let tls = tls_client_config(extra);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let https = https_connector(tls, http);
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                HttpError::Connect(msg.to_lowercase())
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        HttpError::TooLarge
                    } else {
                        HttpError::Other(format!("reading response: {e}"))
                    }
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                body,
            })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }
}

/// The decimal digits of `n`, written into `room` (no allocation: content lengths and cache
/// keys on every request).
pub fn decimal(n: u64, room: &mut [u8; 20]) -> &[u8] {
    let mut at = room.len();
    let mut n = n;
    loop {
        at -= 1;
        room[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &room[at..]
}
