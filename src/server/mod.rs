//! The policy decision point: `kz server start --bundle bundle.yaml`. Agents authenticate with
//! a JWT; `POST /v1/decide` explains a decision, `POST /v1/resolve` returns values the policy
//! allows; `GET /healthz`, `/readyz` (503 until a bundle is loaded), `/metrics` (Prometheus
//! text). One JSON decision-log line per decision on stdout. The bundle is reloaded on SIGHUP
//! and when its file changes; a bad new bundle keeps the old one.

mod api;
pub mod decision_log;
pub mod engine;
pub mod inject;
pub mod mcp;
mod metrics;
mod reload;
pub mod serving_cert;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};

use crate::config::ProviderKind;
use crate::env::Env;
use crate::provider::ErrorKind;
use crate::serve::{until_drained, Limits};
pub(crate) use api::resolve_authorized;
use api::{json_response, unauthorized};
use engine::{Asked, Engine, Subject};
use metrics::Metrics;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

pub struct Server {
    pub bundle_path: PathBuf,
    engine: RwLock<Option<Arc<Engine>>>,
    pub metrics: Metrics,
    env: Arc<dyn Env>,
    next_id: AtomicU64,
    /// Where decision-log lines go.
    pub(crate) log: decision_log::DecisionLog,
    /// The sidecar injector (`POST /inject`), when configured.
    pub inject: Option<inject::InjectConfig>,
    /// MCP over Streamable HTTP at `/mcp`, when enabled.
    mcp: std::sync::OnceLock<McpService>,
}

type McpService = rmcp::transport::streamable_http_server::StreamableHttpService<
    mcp::KzMcp,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
>;

impl Server {
    pub fn with_injector(
        bundle_path: PathBuf,
        env: Arc<dyn Env>,
        inject: Option<inject::InjectConfig>,
    ) -> Arc<Server> {
        Arc::new(Server {
            bundle_path,
            engine: RwLock::new(None),
            metrics: Metrics::default(),
            env,
            next_id: AtomicU64::new(1),
            log: decision_log::DecisionLog::stdout(),
            inject,
            mcp: std::sync::OnceLock::new(),
        })
    }

    /// Serves MCP at `/mcp` (Streamable HTTP); `hosts` are the Host values accepted besides
    /// localhost (DNS-rebinding protection).
    pub fn enable_mcp(self: &Arc<Self>, hosts: Vec<String>) {
        let server = self.clone();
        let mut cfg =
            rmcp::transport::streamable_http_server::StreamableHttpServerConfig::default();
        // Browsers send `Origin`: only pages served from an admitted host may call (others
        // get 403); clients that send no `Origin` (agents, SDKs) are not affected.
        let mut origins = Vec::new();
        for h in ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(String::from)
            .chain(hosts.iter().cloned())
        {
            // Entries may carry a port (`--listen host:port`); origins take the host.
            let h = match (h.rfind(']'), h.matches(':').count()) {
                (Some(end), _) => h[..=end].to_string(),
                (None, 1) => h.split(':').next().unwrap_or_default().to_string(),
                (None, 0) => h,
                (None, _) => format!("[{h}]"),
            };
            origins.push(format!("http://{h}:*"));
            origins.push(format!("https://{h}:*"));
        }
        cfg.allowed_hosts.extend(hosts);
        cfg = cfg
            .with_allowed_origins(origins)
            .enforce_origin_validation();
        let service = rmcp::transport::streamable_http_server::StreamableHttpService::new(
            move || {
                let engine = server
                    .engine()
                    .ok_or_else(|| std::io::Error::other("bundle not loaded"))?;
                Ok(mcp::KzMcp {
                    engine,
                    claims: Default::default(),
                    server: Some(server.clone()),
                })
            },
            Default::default(),
            cfg,
        );
        let _ = self.mcp.set(service);
    }

    /// Loads (or reloads) the bundle; on failure the current one stays and the reasons return.
    pub async fn reload(&self) -> Result<String, Vec<String>> {
        let bundle = crate::config::bundle::load(&self.bundle_path)
            .map_err(|e| e.to_string().lines().map(String::from).collect::<Vec<_>>());
        let result = match bundle {
            Ok(b) => Engine::load(b, self.env.clone()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(engine) => {
                let rev = engine.bundle.revision.clone();
                let engine = Arc::new(engine);
                for why in engine.waiting_for() {
                    eprintln!("kz: {why}; retrying (not ready until it loads)");
                }
                if !engine.waiting_for().is_empty() {
                    tokio::spawn(Engine::retry_jwks(Arc::downgrade(&engine)));
                }
                *self.engine.write().unwrap() = Some(engine);
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(rev)
            }
            Err(e) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.read().unwrap().clone()
    }

    /// The loaded engine and the caller's verified claims, or the response refusing the call.
    async fn identify(
        &self,
        req: &Request<Incoming>,
    ) -> Result<(Arc<Engine>, Arc<Map<String, Value>>), Response<Body>> {
        let Some(engine) = self.engine() else {
            return Err(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "loading"}),
            ));
        };
        let bearer = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.get(7..))
            .unwrap_or("");
        if engine.issuer_pending(bearer.trim()) {
            return Err(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "keys_unavailable", "message": "this token's issuer keys are not loaded yet; retry"}),
            ));
        }
        match self.authenticate(&engine, req).await {
            Ok(c) => Ok((engine, c)),
            Err(reason) => {
                self.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
                Err(unauthorized(&reason.to_string()))
            }
        }
    }

    async fn authenticate(
        &self,
        engine: &Engine,
        req: &Request<Incoming>,
    ) -> Result<Arc<Map<String, Value>>, crate::policy::jwt::JwtError> {
        use crate::policy::jwt::JwtError;
        let h = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(JwtError::Missing)?;
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or(JwtError::Missing)?
            .trim()
            .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        engine.verify(&token, now).await
    }

    /// Decides and writes the decision-log line.
    pub(crate) fn decide_logged(
        &self,
        engine: &Engine,
        claims: &Map<String, Value>,
        s: &Subject<'_>,
    ) -> (crate::policy::decide::Decision, String) {
        let start = Instant::now();
        let d = engine.decide(claims, s);
        let elapsed = start.elapsed();
        self.metrics.observe(elapsed);
        let counter = if d.allowed {
            &self.metrics.allow
        } else {
            &self.metrics.deny
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{}-{}",
            engine.bundle.revision,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let record = decision_log::Record {
            decision_id: Some(&id),
            ..decision_log::Record::decision(claims, s, &d, elapsed)
        };
        self.log.write(record.line());
        (d, id)
    }
}

/// Serves the API on `listener` (TLS when `tls` is given) until `shutdown` resolves, reloading
/// on SIGHUP and when the bundle file changes.
pub async fn run(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let server_for_conns = server.clone();
    let watcher = reload::watch(server.clone());
    crate::serve::serve(
        listener,
        shutdown,
        Limits::server(),
        move |stream, drain| {
            let server = server_for_conns.clone();
            let tls = tls.clone();
            async move {
                let svc = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await {
                            let conn = builder.serve_connection(TokioIo::new(s), svc);
                            let _ = until_drained(conn, drain, |c| c.graceful_shutdown()).await;
                        }
                    }
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), svc);
                        let _ = until_drained(conn, drain, |c| c.graceful_shutdown()).await;
                    }
                }
            }
        },
    )
    .await;
    watcher.abort();
    // Every decision made so far is on stdout before the process goes.
    server.log.flush();
}
