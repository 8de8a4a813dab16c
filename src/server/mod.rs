//! The policy decision point: `kz server start --bundle bundle.yaml`. Agents authenticate with
//! a JWT; `POST /v1/decide` explains a decision, `POST /v1/resolve` returns values the policy
//! allows; `GET /healthz`, `/readyz` (503 until a bundle is loaded), `/metrics` (Prometheus
//! text). One JSON decision-log line per decision on stdout. The bundle is reloaded on SIGHUP
//! and when its file changes; a bad new bundle keeps the old one.

pub mod decision_log;
pub mod engine;
pub mod inject;
pub mod mcp;
pub mod serving_cert;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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
use engine::{Asked, Engine, Subject};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Prometheus counters and a latency histogram.
#[derive(Default)]
pub struct Metrics {
    allow: AtomicU64,
    deny: AtomicU64,
    unauthorized: AtomicU64,
    backend_errors: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    buckets: [AtomicU64; 8],
    sum_us: AtomicU64,
    count: AtomicU64,
}

const BUCKETS_MS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, f64::INFINITY];

impl Metrics {
    fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        s.push_str(
            "# HELP kz_decisions_total Decisions by outcome.\n# TYPE kz_decisions_total counter\n",
        );
        s.push_str(&format!(
            "kz_decisions_total{{decision=\"allow\"}} {}\n",
            g(&self.allow)
        ));
        s.push_str(&format!(
            "kz_decisions_total{{decision=\"deny\"}} {}\n",
            g(&self.deny)
        ));
        s.push_str("# HELP kz_unauthorized_total Requests refused for a bad or missing token.\n# TYPE kz_unauthorized_total counter\n");
        s.push_str(&format!(
            "kz_unauthorized_total {}\n",
            g(&self.unauthorized)
        ));
        s.push_str("# HELP kz_backend_errors_total Secret backend failures.\n# TYPE kz_backend_errors_total counter\n");
        s.push_str(&format!(
            "kz_backend_errors_total {}\n",
            g(&self.backend_errors)
        ));
        s.push_str("# HELP kz_bundle_reloads_total Bundle reloads by result.\n# TYPE kz_bundle_reloads_total counter\n");
        s.push_str(&format!(
            "kz_bundle_reloads_total{{result=\"ok\"}} {}\n",
            g(&self.reloads_ok)
        ));
        s.push_str(&format!(
            "kz_bundle_reloads_total{{result=\"failed\"}} {}\n",
            g(&self.reloads_failed)
        ));
        s.push_str(
            "# HELP kz_decision_seconds Decision latency.\n# TYPE kz_decision_seconds histogram\n",
        );
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            let le = if b.is_infinite() {
                "+Inf".to_string()
            } else {
                format!("{}", b / 1000.0)
            };
            s.push_str(&format!(
                "kz_decision_seconds_bucket{{le=\"{le}\"}} {}\n",
                g(&self.buckets[i])
            ));
        }
        s.push_str(&format!(
            "kz_decision_seconds_sum {}\n",
            g(&self.sum_us) as f64 / 1e6
        ));
        s.push_str(&format!("kz_decision_seconds_count {}\n", g(&self.count)));
        s
    }
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

fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(full_body(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Reads a JSON request body of at most `limit` bytes.
async fn read_json(req: Request<Incoming>, limit: usize) -> Result<Value, Response<Body>> {
    let body = match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "body too large"}),
            ))
        }
    };
    serde_json::from_slice(&body).map_err(|_| {
        json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "message": "body is not json"}),
        )
    })
}

fn unauthorized(reason: &str) -> Response<Body> {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "unauthorized", "message": reason}),
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"keyzero\", error=\"invalid_token\""),
    );
    r
}

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
                Err(unauthorized(&reason))
            }
        }
    }

    async fn authenticate(
        &self,
        engine: &Engine,
        req: &Request<Incoming>,
    ) -> Result<Arc<Map<String, Value>>, String> {
        let h = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("no bearer token")?;
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or("no bearer token")?
            .trim()
            .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        engine.verify(&token, now).await.map_err(|e| e.to_string())
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

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => {
                return json_response(StatusCode::OK, json!({"status": "ok"}))
            }
            (&Method::GET, "/readyz") => {
                return match self.engine() {
                    Some(e) if !e.waiting_for().is_empty() => json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"status": "waiting for keys", "reasons": e.waiting_for()}),
                    ),
                    Some(e) => json_response(
                        StatusCode::OK,
                        json!({"status": "ready", "bundle_revision": e.bundle.revision}),
                    ),
                    None => json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"status": "loading"}),
                    ),
                }
            }
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(full_body(self.metrics.render()));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                return r;
            }
            (&Method::POST, "/inject") => {
                // Called by the Kubernetes API server (authenticated by the webhook's TLS).
                let Some(cfg) = self.inject.as_ref().map(|c| c.with_current_ca()) else {
                    return json_response(
                        StatusCode::NOT_FOUND,
                        json!({"error": "injector not configured"}),
                    );
                };
                return match read_json(req, 4 << 20).await {
                    Ok(v) => json_response(StatusCode::OK, inject::review(&v, &cfg)),
                    Err(r) => r,
                };
            }
            (_, "/mcp") if self.mcp.get().is_some() => {
                let claims = match self.identify(&req).await {
                    Ok((_, c)) => c,
                    Err(r) => return r,
                };
                let mut req = req;
                let delete = req.method() == Method::DELETE;
                req.extensions_mut().insert(mcp::McpIdentity(claims));
                let mut resp = self.mcp.get().expect("checked").handle(req).await;
                // A session ended by DELETE: answered 204, as clients of the spec expect.
                if delete && resp.status() == StatusCode::ACCEPTED {
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                }
                return resp;
            }
            (&Method::POST, "/v1/decide") | (&Method::POST, "/v1/resolve") => {}
            _ => return json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        }
        let (engine, claims) = match self.identify(&req).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let path = req.uri().path().to_string();
        let v = match read_json(req, 1 << 20).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        if path == "/v1/decide" {
            let Some(r) = v.get("ref").and_then(Value::as_str) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "bad_request", "message": "ref is required"}),
                );
            };
            let str_of = |k: &str| v.get(k).and_then(Value::as_str);
            let provider = str_of("provider").and_then(ProviderKind::parse);
            // Decided on the canonical form (a bundle name: its secret's); a ref that has none
            // is denied, and logged as given.
            let target = match (
                provider,
                engine.bundle.config.secrets.iter().find(|s| s.name == r),
            ) {
                (None, Some(_)) => engine.target(&Asked::Name(r)).await.map_err(|e| e.message),
                _ => engine.explain_ref(provider, r).await.map(|t| (t, None)),
            };
            // A Vault ref without a key may be read as its parent's key: answered the way
            // `/v1/resolve` would decide it (the parent is decided too when the path is absent).
            if let Ok((t, None)) = &target {
                if t.provider == ProviderKind::Vault
                    && t.key.is_none()
                    && engine.providers.has(ProviderKind::Vault)
                {
                    let last = std::sync::Mutex::new(None);
                    let decide = |s: &Subject<'_>| {
                        let (d, id) = self.decide_logged(&engine, &claims, s);
                        *last.lock().unwrap() = Some((d.clone(), id));
                        d
                    };
                    let asked = Asked::Raw {
                        provider: Some("vault"),
                        reference: &t.reference,
                        key: None,
                        version: t.version.as_deref(),
                    };
                    let outcome = resolve_authorized(&engine, &asked, "decide", &decide).await;
                    if let Some((mut d, id)) = last.into_inner().unwrap() {
                        d.allowed = !matches!(&outcome, Err(e) if e.code == "denied");
                        return json_response(
                            StatusCode::OK,
                            json!({"decision": if d.allowed {"allow"} else {"deny"}, "decision_id": id, "bundle_revision": engine.bundle.revision, "matched": d.matched}),
                        );
                    }
                }
            }
            let (d, id) = match target {
                Ok((target, name)) => {
                    let shown = target.display();
                    let mut subject = Subject::of(&target, &shown, name.as_deref(), "decide");
                    subject.provider = provider.or(name.as_ref().map(|_| target.provider));
                    self.decide_logged(&engine, &claims, &subject)
                }
                Err(_) => {
                    self.decide_logged(&engine, &claims, &Subject::refused(r, provider, "decide"))
                }
            };
            return json_response(
                StatusCode::OK,
                json!({"decision": if d.allowed {"allow"} else {"deny"}, "decision_id": id, "bundle_revision": engine.bundle.revision, "matched": d.matched}),
            );
        }
        let Some(items) = v.get("secrets").and_then(Value::as_array) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": "secrets is required"}),
            );
        };
        if items.len() > MAX_BATCH {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": format!("at most {MAX_BATCH} secrets per request")}),
            );
        }
        // Concurrently (bounded), answered in request order.
        let sem = tokio::sync::Semaphore::new(BATCH_CONCURRENCY);
        let me = &self;
        let results = crate::provider::futures_join_all(items.iter().map(|item| {
            let (engine, claims, sem) = (&engine, &claims, &sem);
            async move {
                let _permit = sem.acquire().await.expect("never closed");
                me.resolve_one(engine, claims, item).await
            }
        }))
        .await;
        json_response(StatusCode::OK, json!({"results": results}))
    }

    async fn resolve_one(
        &self,
        engine: &Engine,
        claims: &Map<String, Value>,
        item: &Value,
    ) -> Value {
        let str_of = |k: &str| item.get(k).and_then(Value::as_str);
        let (asked, shown) = match str_of("name") {
            Some(n) => (Asked::Name(n), n.to_string()),
            None => {
                let r = str_of("ref").unwrap_or("");
                (
                    Asked::Raw {
                        provider: str_of("provider"),
                        reference: r,
                        key: str_of("key"),
                        version: str_of("version"),
                    },
                    r.to_string(),
                )
            }
        };
        let decide = |s: &Subject<'_>| self.decide_logged(engine, claims, s).0;
        match resolve_authorized(engine, &asked, "resolve", &decide).await {
            Ok((v, _)) => json!({"ref": shown, "value": v.expose()}),
            Err(e) => {
                if e.code == "backend" {
                    self.metrics.backend_errors.fetch_add(1, Ordering::Relaxed);
                }
                json!({"ref": shown, "error": {"code": e.code, "message": e.message}})
            }
        }
    }
}

/// Most secrets in one `/v1/resolve` request, and how many of them are read at once.
pub const MAX_BATCH: usize = 256;
const BATCH_CONCURRENCY: usize = 16;

/// The one path from a request for a secret to its value, for `/v1/resolve` and MCP alike:
/// canonical ref, a logged decision on it, then a read of exactly that ref. A Vault ref without
/// a key whose path does not exist may name the key of its parent: that parent is decided on
/// separately before it is read, so no spelling reaches a secret its own path is denied.
/// `not_found` is only said after an allow.
pub(crate) async fn resolve_authorized(
    engine: &Engine,
    asked: &Asked<'_>,
    action: &str,
    decide: &(dyn Fn(&Subject<'_>) -> crate::policy::decide::Decision + Sync),
) -> Result<(crate::secret::SecretValue, crate::policy::decide::Decision), engine::Refused> {
    let (target, name) = engine.target(asked).await?;
    let shown = target.display();
    let d = decide(&Subject::of(&target, &shown, name.as_deref(), action));
    if !d.allowed {
        return Err(engine::Refused::denied("denied by policy"));
    }
    let refused = |e: crate::provider::ProviderError| engine::Refused {
        code: match e.kind {
            ErrorKind::NotFound => "not_found",
            _ => "backend",
        },
        message: e.message,
    };
    match engine.providers.resolve_exact(&target).await {
        Ok(v) => Ok((v, d)),
        Err(e) if e.kind == ErrorKind::NotFound && target.provider == ProviderKind::Vault => {
            let Some(parent) = crate::provider::vault::VaultProvider::parent_with_key(&target)
            else {
                return Err(refused(e));
            };
            let shown = parent.display();
            let pd = decide(&Subject::of(&parent, &shown, name.as_deref(), action));
            if !pd.allowed {
                return Err(engine::Refused::denied("denied by policy"));
            }
            match engine.providers.resolve_exact(&parent).await {
                Ok(v) => Ok((v, pd)),
                Err(pe) if pe.kind == ErrorKind::NotFound => Err(refused(e)),
                Err(pe) => Err(refused(pe)),
            }
        }
        Err(e) => Err(refused(e)),
    }
}

/// How long a changed bundle must stay unchanged before it is loaded.
const SETTLE: Duration = Duration::from_millis(300);

/// Whether the file's content and modification time stay the same over `SETTLE`.
async fn settled(path: &std::path::Path) -> bool {
    let look = || {
        (
            std::fs::read(path).ok(),
            std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        )
    };
    let before = look();
    tokio::time::sleep(SETTLE).await;
    before == look()
}

/// Serves the API on `listener` (TLS when `tls` is given) until `shutdown` resolves, reloading
/// on SIGHUP and when the bundle file changes.
pub async fn run(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let watcher = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let mut last = modified(&server.bundle_path);
            loop {
                let by_signal = tokio::select! {
                    _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => false,
                };
                let now = modified(&server.bundle_path);
                if by_signal || now != last {
                    // A file still being written may parse by chance: reload only once it has
                    // stayed the same for a moment (the next tick tries again otherwise).
                    if !settled(&server.bundle_path).await {
                        continue;
                    }
                    last = modified(&server.bundle_path);
                    match server.reload().await {
                        Ok(rev) => eprintln!("kz: bundle reloaded (revision {rev})"),
                        Err(errors) => {
                            eprintln!("kz: bundle reload failed; keeping the previous bundle:");
                            for e in errors {
                                eprintln!("kz: {e}");
                            }
                        }
                    }
                }
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        }
    }
    watcher.abort();
    // Every decision made so far is on stdout before the process goes.
    server.log.flush();
}
