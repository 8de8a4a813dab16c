//! The `Provider` trait, one module per backend, and `resolve_all`, which resolves every secret
//! of a config concurrently (bounded, each with a timeout) and reports every failure.
//!
//! Longer than 400 lines because the trait, the provider set and the resolution loop that bounds,
//! times out, audits and reports every backend call belong together.

pub mod aws_sm;
pub mod cache;
pub mod env;
pub mod file;
pub mod local;
pub mod onepassword;
pub mod sigv4;
pub mod team;
pub mod vault;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::audit::Audit;
use crate::config::{Config, ProviderKind, SecretSpec};
use crate::env::Env;
use crate::secret::SecretValue;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What to fetch: the provider-specific ref plus the optional key and version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub reference: String,
    pub key: Option<String>,
    pub version: Option<String>,
    /// Read exactly this path: no Vault fallback to the parent with the last segment as key
    /// (the policy server decides on the parent separately before reading it).
    pub exact: bool,
}

impl From<&SecretSpec> for Request {
    fn from(s: &SecretSpec) -> Self {
        Request {
            reference: s.reference.clone(),
            key: s.key.clone(),
            version: s.version.clone(),
            exact: false,
        }
    }
}

impl From<&crate::refs::SecretRef> for Request {
    fn from(r: &crate::refs::SecretRef) -> Self {
        Request {
            reference: r.reference.clone(),
            key: r.key.clone(),
            version: r.version.clone(),
            exact: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Denied,
    /// The backend failed or answered something unexpected.
    Backend,
    /// kz's own configuration for the provider is incomplete or wrong.
    Config,
    Timeout,
}

/// A provider failure. The message is lower-case, names no value, and is what users see after
/// `NAME: provider: ref: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl std::fmt::Display) -> Self {
        ProviderError {
            kind,
            message: message.to_string(),
        }
    }
    pub fn not_found(m: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn denied(m: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Denied, m)
    }
    pub fn backend(m: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Backend, m)
    }
    pub fn config(m: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Config, m)
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProviderError {}

impl From<crate::http::HttpError> for ProviderError {
    fn from(e: crate::http::HttpError) -> Self {
        match e {
            crate::http::HttpError::Timeout(_) => {
                ProviderError::new(ErrorKind::Timeout, e.to_string())
            }
            other => ProviderError::backend(other.to_string()),
        }
    }
}

/// A secret backend.
pub trait Provider: Send + Sync {
    fn resolve<'a>(&'a self, req: &'a Request)
        -> BoxFuture<'a, Result<SecretValue, ProviderError>>;

    /// The one spelling of a parsed ref this provider reads (Vault: the API path, once the
    /// mount and its KV version are known). Policies decide on this form.
    fn canonical<'a>(
        &'a self,
        r: &'a crate::refs::SecretRef,
    ) -> BoxFuture<'a, Result<crate::refs::SecretRef, ProviderError>> {
        Box::pin(async move { Ok(r.clone()) })
    }

    /// Called once resolution is over (`kz run`): give back what was borrowed, such as a Vault
    /// token obtained by login.
    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The providers a config uses, built once. A provider that cannot be built (for example Vault
/// without an address) fails every secret that uses it, with the reason.
pub struct ProviderSet {
    built: HashMap<ProviderKind, Result<Arc<dyn Provider>, ProviderError>>,
    timeouts: HashMap<ProviderKind, Duration>,
}

impl ProviderSet {
    /// The providers `kz run` needs: those its secrets use. Values are kept for the run.
    pub fn build(cfg: &Config, env: Arc<dyn Env>) -> Self {
        let kinds: Vec<ProviderKind> = cfg.secrets.iter().map(|s| s.provider).collect();
        Self::build_kinds(cfg, env, &kinds, None)
    }

    /// The providers a long-running server needs: those its named secrets use and those with a
    /// section under `providers:` (raw refs are served for these only). Values are kept for
    /// each provider's `cache_ttl`, `DEFAULT_SERVER_TTL` when unset.
    pub fn build_for_server(cfg: &Config, env: Arc<dyn Env>) -> Self {
        let mut kinds: Vec<ProviderKind> = cfg.secrets.iter().map(|s| s.provider).collect();
        kinds.extend(cfg.providers.configured.iter().copied());
        Self::build_kinds(cfg, env, &kinds, Some(DEFAULT_SERVER_TTL))
    }

    fn build_kinds(
        cfg: &Config,
        env: Arc<dyn Env>,
        kinds: &[ProviderKind],
        default_ttl: Option<Duration>,
    ) -> Self {
        let mut built = HashMap::new();
        let mut timeouts = HashMap::new();
        // Team mode: every provider kind goes through the policy server.
        let team = cfg
            .server
            .as_ref()
            .map(|s| team::ServerClient::new(s, &*env));
        for &kind in kinds {
            if built.contains_key(&kind) {
                continue;
            }
            let ttl = cfg.providers.cache_ttl(kind).or(default_ttl);
            timeouts.insert(kind, cfg.providers.timeout(kind));
            if let Some(team) = &team {
                let p: Result<Arc<dyn Provider>, ProviderError> = team.clone().map(|client| {
                    Arc::new(team::TeamProvider { kind, client }) as Arc<dyn Provider>
                });
                built.insert(kind, p);
                continue;
            }
            let p: Result<Arc<dyn Provider>, ProviderError> = match kind {
                ProviderKind::Env => Ok(Arc::new(env::EnvProvider::new(env.clone()))),
                ProviderKind::File => Ok(Arc::new(file::FileProvider)),
                ProviderKind::Local => {
                    local::LocalProvider::from_config(&cfg.providers.local, &*env, ttl)
                        .map(|p| Arc::new(p) as Arc<dyn Provider>)
                }
                ProviderKind::Vault => {
                    vault::VaultProvider::from_config(&cfg.providers.vault, env.clone(), ttl)
                        .map(|p| Arc::new(p) as Arc<dyn Provider>)
                }
                ProviderKind::AwsSm => {
                    aws_sm::AwsSmProvider::from_config(&cfg.providers.aws, env.clone(), ttl)
                        .map(|p| Arc::new(p) as Arc<dyn Provider>)
                }
                ProviderKind::OnePassword => onepassword::OnePasswordProvider::from_config(
                    &cfg.providers.onepassword,
                    env.clone(),
                    ttl,
                )
                .map(|p| Arc::new(p) as Arc<dyn Provider>),
            };
            built.insert(kind, p);
        }
        ProviderSet { built, timeouts }
    }

    /// The provider for `kind`, or why there is none.
    pub fn get(&self, kind: ProviderKind) -> Result<&Arc<dyn Provider>, ProviderError> {
        match self.built.get(&kind) {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(e.clone()),
            None => Err(ProviderError::config(format!(
                "provider {kind} is not configured"
            ))),
        }
    }

    /// Whether `kind` was built (successfully or not).
    pub fn has(&self, kind: ProviderKind) -> bool {
        self.built.contains_key(&kind)
    }

    /// The canonical form of a parsed ref, bounded by the provider's timeout.
    pub async fn canonical(
        &self,
        r: &crate::refs::SecretRef,
    ) -> Result<crate::refs::SecretRef, ProviderError> {
        let p = self.get(r.provider)?;
        self.timed(r.provider, p.canonical(r)).await
    }

    /// Reads exactly a canonical ref (no fallback), bounded by the provider's timeout.
    pub async fn resolve_exact(
        &self,
        r: &crate::refs::SecretRef,
    ) -> Result<SecretValue, ProviderError> {
        let p = self.get(r.provider)?;
        let req = Request::from(r);
        self.timed(r.provider, p.resolve(&req)).await
    }

    async fn timed<T>(
        &self,
        kind: ProviderKind,
        f: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let timeout = self
            .timeouts
            .get(&kind)
            .copied()
            .unwrap_or(crate::config::DEFAULT_TIMEOUT);
        match tokio::time::timeout(timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::new(
                ErrorKind::Timeout,
                format!("timed out after {}", humantime::format_duration(timeout)),
            )),
        }
    }

    /// Lets every provider give back what it borrowed (Vault login tokens are revoked).
    pub async fn finish(&self) {
        for p in self.built.values().flatten() {
            p.finish().await;
        }
    }

    /// Replaces one provider, for tests and for team mode.
    pub fn insert(&mut self, kind: ProviderKind, p: Arc<dyn Provider>, timeout: Duration) {
        self.built.insert(kind, Ok(p));
        self.timeouts.insert(kind, timeout);
    }
}

/// The outcome for one secret.
#[derive(Debug)]
pub struct Resolved {
    pub spec: SecretSpec,
    /// `Ok(None)`: an optional secret that does not exist.
    pub outcome: Result<Option<SecretValue>, ProviderError>,
    pub latency: Duration,
}

impl Resolved {
    /// `NAME: provider: ref: message`, the one-line form users see.
    pub fn error_line(&self) -> Option<String> {
        let e = self.outcome.as_ref().err()?;
        Some(format!(
            "{}: {}: {}: {}",
            self.spec.name,
            self.spec.provider,
            display_ref(&self.spec),
            e
        ))
    }
}

/// The ref as users wrote it, with `#key` when a key was picked.
pub fn display_ref(spec: &SecretSpec) -> String {
    match &spec.key {
        Some(k) if spec.provider != ProviderKind::OnePassword => format!("{}#{k}", spec.reference),
        _ => spec.reference.clone(),
    }
}

/// How long the policy server reuses a value when its provider sets no `cache_ttl`.
pub const DEFAULT_SERVER_TTL: Duration = Duration::from_secs(60);

/// How many resolutions may be in flight at once.
pub const MAX_CONCURRENT: usize = 32;

/// Resolves every secret concurrently; results come back in `specs` order. Identical requests
/// are fetched once.
pub async fn resolve_all(specs: &[SecretSpec], set: &ProviderSet, audit: &Audit) -> Vec<Resolved> {
    let sem = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let mut unique: Vec<(ProviderKind, Request)> = Vec::new();
    let mut index_of: Vec<usize> = Vec::with_capacity(specs.len());
    for s in specs {
        let key = (s.provider, Request::from(s));
        match unique.iter().position(|u| *u == key) {
            Some(i) => index_of.push(i),
            None => {
                index_of.push(unique.len());
                unique.push(key);
            }
        }
    }
    let futures = unique.iter().map(|(kind, req)| {
        let sem = sem.clone();
        async move {
            let _permit = sem.acquire().await.expect("semaphore never closed");
            let start = Instant::now();
            let outcome = match set.built.get(kind) {
                Some(Ok(p)) => {
                    let timeout = set
                        .timeouts
                        .get(kind)
                        .copied()
                        .unwrap_or(crate::config::DEFAULT_TIMEOUT);
                    match tokio::time::timeout(timeout, p.resolve(req)).await {
                        Ok(r) => r,
                        Err(_) => Err(ProviderError::new(
                            ErrorKind::Timeout,
                            format!("timed out after {}", humantime::format_duration(timeout)),
                        )),
                    }
                }
                Some(Err(e)) => Err(e.clone()),
                None => Err(ProviderError::config("provider not configured")),
            };
            (outcome, start.elapsed())
        }
    });
    let results = futures_join_all(futures).await;
    specs
        .iter()
        .zip(index_of)
        .map(|(spec, i)| {
            let (outcome, latency) = &results[i];
            let outcome = match outcome {
                Ok(v) => Ok(Some(v.clone())),
                Err(e) if spec.optional && e.kind == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.clone()),
            };
            let r = Resolved {
                spec: spec.clone(),
                outcome,
                latency: *latency,
            };
            audit_resolution(audit, &r);
            r
        })
        .collect()
}

/// Drives futures concurrently on the current task, keeping their order.
pub async fn futures_join_all<F: Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

fn audit_resolution(audit: &Audit, r: &Resolved) {
    if !audit.enabled() {
        return;
    }
    let (outcome, error) = match &r.outcome {
        Ok(Some(_)) => ("ok", None),
        Ok(None) => ("missing_optional", None),
        Err(e) => (
            match e.kind {
                ErrorKind::NotFound => "not_found",
                ErrorKind::Denied => "denied",
                ErrorKind::Timeout => "timeout",
                ErrorKind::Config => "config_error",
                ErrorKind::Backend => "backend_error",
            },
            Some(e.message.as_str()),
        ),
    };
    let record = crate::audit::Resolve {
        name: &r.spec.name,
        provider: r.spec.provider.name(),
        reference: display_ref(&r.spec),
        outcome,
        error,
        latency_ms: crate::audit::millis(r.latency),
    };
    audit.record("resolve", &record);
}

/// Picks `key` out of a JSON value: a JSON pointer when it starts with `/`, else a top-level
/// key. Strings come out as-is, other JSON as its text. Errors never include the value.
pub fn pick_key(value: &str, key: &str) -> Result<SecretValue, ProviderError> {
    let json: Value = serde_json::from_str(value).map_err(|_| {
        ProviderError::backend(format!(
            "value is not json, so key {key:?} cannot be taken from it"
        ))
    })?;
    let picked = if key.starts_with('/') {
        json.pointer(key)
    } else {
        json.get(key)
    };
    match picked {
        Some(v) => Ok(json_to_secret(v)),
        None => {
            let keys = match &json {
                Value::Object(m) => format!(
                    " (keys: {})",
                    m.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                _ => String::new(),
            };
            Err(ProviderError::not_found(format!(
                "key {key:?} not found{keys}"
            )))
        }
    }
}

pub fn json_to_secret(v: &Value) -> SecretValue {
    match v {
        Value::String(s) => SecretValue::new(s.clone()),
        other => SecretValue::new(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_key_forms() {
        let doc = r#"{"password":"p4ss","nested":{"port":5432},"list":["a","b"]}"#;
        assert_eq!(pick_key(doc, "password").unwrap().expose(), "p4ss");
        assert_eq!(pick_key(doc, "/nested/port").unwrap().expose(), "5432");
        assert_eq!(pick_key(doc, "/list/1").unwrap().expose(), "b");
        let e = pick_key(doc, "user").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("keys: list, nested, password"), "{e}");
        assert!(!e.message.contains("p4ss"));
        let e = pick_key("plain-secret-text", "k").unwrap_err();
        assert!(!e.message.contains("plain-secret-text"), "{e}");
    }
}
