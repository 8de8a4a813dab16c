//! The policy server's HTTP API: routing (`/healthz`, `/readyz`, `/metrics`, `/v1/decide`,
//! `/v1/resolve`, `/inject`, `/mcp`), JSON bodies and answers, and the one path from a request
//! for a secret to its value, shared with MCP.

use super::*;

pub(super) fn json_response(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(full_body(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Reads a JSON request body of at most `limit` bytes.
pub(super) async fn read_json(
    req: Request<Incoming>,
    limit: usize,
) -> Result<Value, Response<Body>> {
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

pub(super) fn unauthorized(reason: &str) -> Response<Body> {
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
    pub(super) async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
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
                _ => engine
                    .explain_ref(provider, r)
                    .await
                    .map(|t| (t, None))
                    .map_err(|e| e.to_string()),
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
