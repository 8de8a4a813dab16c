//! A loaded bundle, ready to answer: issuer keys resolved (env, PEM files, JWKS), providers
//! built, and the decision function that applies canonicalisation, globs, CEL and
//! deny-overrides.
//!
//! Longer than 400 lines because loading, key refresh, ref targeting and deciding share one
//! bundle state and are read together when reviewing a decision.

use std::sync::Arc;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::config::bundle::Bundle;
use crate::config::ProviderKind;
use crate::env::Env;
use crate::lru::Lru;
use crate::policy::decide::{decide, Decision, RuleOutcome};
use crate::policy::glob::canonicalize;
use crate::policy::jwt::{self, IssuerKeys, Key};
use crate::provider::{ErrorKind, ProviderSet};
use crate::refs::SecretRef;

/// An issuer's static keys and when its JWKS was last fetched.
type Refresh = (
    Vec<(Option<String>, Key)>,
    std::sync::Mutex<std::time::Instant>,
);

pub struct Engine {
    pub bundle: Bundle,
    /// Replaced when a JWKS is fetched again for an unknown key id.
    issuers: std::sync::RwLock<Vec<IssuerKeys>>,
    /// Per issuer: its static keys, and when its JWKS was last fetched.
    refresh: Vec<Refresh>,
    pub providers: ProviderSet,
    /// Issuers whose JWKS could not be fetched yet (index, reason); retried in the background.
    pending: std::sync::Mutex<Vec<(usize, String)>>,
    /// Tokens already verified, by their exact text: claims, `exp`, and when verified. A hit
    /// skips the signature check and parsing until `exp` (with the same leeway); emptied
    /// whenever an issuer's keys change, so a key that left a JWKS stops counting at once.
    verified: std::sync::Mutex<Lru<String, Verified>>,
}

/// A verified token's claims, the end of its lifetime and when it was verified.
type Verified = (Arc<Map<String, Value>>, i64, i64);

/// At most this many verified tokens are remembered (least recently used ones leave first).
const VERIFIED_CACHE: usize = 4096;

/// What a decision was about.
pub struct Subject<'a> {
    /// The ref as logged (canonical, `#key` and `?version=` included).
    pub reference: &'a str,
    /// The paths policies match; every one must be allowed (see `SecretRef::policy_paths`).
    pub paths: Vec<String>,
    pub provider: Option<ProviderKind>,
    pub name: Option<&'a str>,
    pub key: Option<&'a str>,
    pub action: &'a str,
}

impl<'a> Subject<'a> {
    /// A decision about a canonical ref (`shown` is `r.display()`).
    pub fn of(r: &'a SecretRef, shown: &'a str, name: Option<&'a str>, action: &'a str) -> Self {
        Subject {
            reference: shown,
            paths: r.policy_paths(),
            provider: Some(r.provider),
            name,
            key: r.key.as_deref(),
            action,
        }
    }
}

impl<'a> Subject<'a> {
    /// A ref with no canonical form: logged as given, and denied.
    pub fn refused(reference: &'a str, provider: Option<ProviderKind>, action: &'a str) -> Self {
        Subject {
            reference,
            paths: Vec::new(),
            provider,
            name: None,
            key: None,
            action,
        }
    }
}

/// Why a request for a secret is refused before or instead of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `denied`, `not_found` or `backend`, as `/v1/resolve` reports it.
    pub code: &'static str,
    pub message: String,
}

impl Refused {
    pub fn denied(m: impl Into<String>) -> Self {
        Refused {
            code: "denied",
            message: m.into(),
        }
    }
}

/// What a caller asked for: a bundle secret by name, or a provider ref.
pub enum Asked<'a> {
    Name(&'a str),
    Raw {
        provider: Option<&'a str>,
        reference: &'a str,
        key: Option<&'a str>,
        version: Option<&'a str>,
    },
}

impl Engine {
    /// Resolves issuer keys (fetching JWKS documents) and builds providers.
    pub async fn load(bundle: Bundle, env: Arc<dyn Env>) -> Result<Engine, Vec<String>> {
        let mut problems = Vec::new();
        let mut issuers = Vec::new();
        let mut refresh = Vec::new();
        let mut pending = Vec::new();
        for i in &bundle.issuers {
            let mut keys: Vec<(Option<String>, Key)> = Vec::new();
            if let Some(var) = &i.secret_env {
                match env.nonempty(var) {
                    Some(v) => keys.push((None, Key::Hmac(Zeroizing::new(v.into_bytes())))),
                    None => problems.push(format!(
                        "issuer {}: {var} is not set (the HS key)",
                        i.issuer
                    )),
                }
            }
            if let Some(f) = &i.public_key_file {
                match std::fs::read_to_string(f)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| jwt::key_from_pem(&pem).map_err(|e| e.to_string()))
                {
                    Ok(k) => keys.push((None, k)),
                    Err(e) => problems.push(format!("issuer {}: {}: {e}", i.issuer, f.display())),
                }
            }
            refresh.push((
                keys.clone(),
                std::sync::Mutex::new(std::time::Instant::now()),
            ));
            if let Some(url) = &i.jwks_url {
                // An unreachable JWKS does not stop the server: that issuer waits (503) while
                // its keys are fetched again in the background.
                match fetch_jwks(i).await {
                    Ok(k) => keys.extend(k),
                    Err(e) => pending.push((
                        issuers.len(),
                        format!("issuer {}: jwks {url}: {e}", i.issuer),
                    )),
                }
            }
            issuers.push(IssuerKeys {
                issuer: i.issuer.clone(),
                audiences: i.audiences.clone(),
                algorithms: i.algorithms.clone(),
                keys,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let providers = ProviderSet::build_for_server(&bundle.config, env);
        Ok(Engine {
            bundle,
            issuers: std::sync::RwLock::new(issuers),
            refresh,
            providers,
            pending: std::sync::Mutex::new(pending),
            verified: std::sync::Mutex::new(Lru::new(VERIFIED_CACHE)),
        })
    }

    /// Why the engine is not ready yet: issuers whose keys are still being fetched.
    pub fn waiting_for(&self) -> Vec<String> {
        self.pending
            .lock()
            .unwrap()
            .iter()
            .map(|(_, why)| why.clone())
            .collect()
    }

    /// Whether `token` names an issuer whose keys are not loaded yet (its callers get 503,
    /// not 401: the token may well be good).
    pub fn issuer_pending(&self, token: &str) -> bool {
        let Some(iss) = unverified_issuer(token) else {
            return false;
        };
        self.pending
            .lock()
            .unwrap()
            .iter()
            .any(|(i, _)| self.bundle.issuers[*i].issuer == iss)
    }

    /// Fetches pending JWKS documents again with backoff (1 s doubling to 30 s) until every
    /// issuer has its keys, or the engine is replaced.
    pub async fn retry_jwks(engine: std::sync::Weak<Engine>) {
        let mut delay = std::time::Duration::from_secs(1);
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(30));
            let Some(e) = engine.upgrade() else { return };
            let todo: Vec<usize> = e.pending.lock().unwrap().iter().map(|(i, _)| *i).collect();
            for idx in todo {
                let Some(url) = e.bundle.issuers[idx].jwks_url.clone() else {
                    continue;
                };
                match fetch_jwks(&e.bundle.issuers[idx]).await {
                    Ok(fresh) => {
                        let mut keys = e.refresh[idx].0.clone();
                        keys.extend(fresh);
                        e.set_keys(idx, keys);
                        e.pending.lock().unwrap().retain(|(i, _)| *i != idx);
                        eprintln!("kz: issuer {}: keys loaded", e.bundle.issuers[idx].issuer);
                    }
                    Err(err) => {
                        let why =
                            format!("issuer {}: jwks {url}: {err}", e.bundle.issuers[idx].issuer);
                        for p in e.pending.lock().unwrap().iter_mut().filter(|p| p.0 == idx) {
                            p.1 = why.clone();
                        }
                    }
                }
            }
            if e.pending.lock().unwrap().is_empty() {
                return;
            }
        }
    }

    /// An engine for offline evaluation (`kz policy test`): no keys, no providers.
    pub fn offline(bundle: Bundle, env: Arc<dyn Env>) -> Engine {
        let providers = ProviderSet::build(&crate::config::Config::default(), env);
        Engine {
            bundle,
            issuers: std::sync::RwLock::new(Vec::new()),
            refresh: Vec::new(),
            providers,
            pending: std::sync::Mutex::new(Vec::new()),
            verified: std::sync::Mutex::new(Lru::new(VERIFIED_CACHE)),
        }
    }

    /// Verifies a token. A key id the issuer's JWKS does not (yet) have triggers one refetch,
    /// at most once per `jwks_min_refresh`, then one more try.
    pub async fn verify(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Arc<Map<String, Value>>, jwt::JwtError> {
        if let Some((claims, exp, at)) = self.verified.lock().unwrap().get(token) {
            // A clock that went back re-verifies (nbf and iat were checked at `at`).
            if now >= at && now <= exp + jwt::LEEWAY_SECS {
                return Ok(claims);
            }
        }
        let claims = Arc::new(self.verify_uncached(token, now).await?);
        if let Some(exp) = claims.get("exp").and_then(Value::as_i64) {
            self.verified
                .lock()
                .unwrap()
                .insert(token.to_string(), (claims.clone(), exp, now));
        }
        Ok(claims)
    }

    /// Replaces an issuer's keys and forgets every verified token.
    fn set_keys(&self, idx: usize, keys: Vec<(Option<String>, Key)>) {
        let mut issuers = self.issuers.write().unwrap();
        issuers[idx].keys = keys;
        self.verified.lock().unwrap().clear();
    }

    async fn verify_uncached(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Map<String, Value>, jwt::JwtError> {
        let first = jwt::verify(token, &self.issuers.read().unwrap(), now);
        if first != Err(jwt::JwtError::UnknownKid) {
            return first;
        }
        let iss = unverified_issuer(token);
        let Some(idx) = self
            .bundle
            .issuers
            .iter()
            .position(|i| Some(&i.issuer) == iss.as_ref())
        else {
            return first;
        };
        let cfg = &self.bundle.issuers[idx];
        if cfg.jwks_url.is_none() {
            return first;
        }
        {
            let mut last = self.refresh[idx].1.lock().unwrap();
            if last.elapsed() < cfg.jwks_min_refresh {
                return first;
            }
            *last = std::time::Instant::now();
        }
        let Ok(fresh) = fetch_jwks(cfg).await else {
            return first;
        };
        let mut keys = self.refresh[idx].0.clone();
        keys.extend(fresh);
        self.set_keys(idx, keys);
        jwt::verify(token, &self.issuers.read().unwrap(), now)
    }

    /// The canonical ref of what was asked for, or why it is refused before any decision:
    /// unknown names, malformed refs, and raw refs to `env`, `file` or `local` (served only as
    /// named secrets) or to a provider without a section under `providers:`.
    pub async fn target(&self, asked: &Asked<'_>) -> Result<(SecretRef, Option<String>), Refused> {
        let (parsed, name) = match asked {
            Asked::Name(n) => {
                let Some(s) = self.bundle.config.secrets.iter().find(|s| s.name == *n) else {
                    // Existence is not disclosed: an unknown name is denied, never "not found".
                    return Err(Refused::denied("denied by policy"));
                };
                let r = SecretRef {
                    provider: s.provider,
                    reference: s.reference.clone(),
                    key: s.key.clone(),
                    version: s.version.clone(),
                };
                (r, Some(s.name.clone()))
            }
            Asked::Raw {
                provider,
                reference,
                key,
                version,
            } => {
                let Some(kind) = provider.and_then(ProviderKind::parse) else {
                    return Err(Refused::denied(
                        "unknown provider (vault, aws-sm or 1password)",
                    ));
                };
                if matches!(
                    kind,
                    ProviderKind::Env | ProviderKind::File | ProviderKind::Local
                ) {
                    return Err(Refused::denied(format!(
                        "{kind} secrets are served only as named secrets"
                    )));
                }
                if !self.bundle.config.providers.configured.contains(&kind) {
                    return Err(Refused::denied(format!(
                        "provider {kind} is not configured on this server"
                    )));
                }
                let r = crate::refs::parse(kind, reference, *key, *version)
                    .map_err(|e| Refused::denied(format!("invalid ref: {e}")))?;
                (r, None)
            }
        };
        match self.providers.canonical(&parsed).await {
            Ok(r) => Ok((r, name)),
            Err(e) if matches!(e.kind, ErrorKind::Config) => {
                Err(Refused::denied(format!("invalid ref: {e}")))
            }
            Err(e) => Err(Refused {
                code: "backend",
                message: e.message,
            }),
        }
    }

    /// The canonical ref for decisions that serve no value (`/v1/decide`, MCP `resolve` of a
    /// raw ref, `kz policy test` and `eval`): through the provider when the bundle configures
    /// it and the backend answers, else offline (a Vault ref without `data/` after the mount is read as the
    /// CLI spelling of a KV v2 path, unless `providers.vault.kv_version` is 1). Without a
    /// provider the ref is taken as a plain path.
    pub async fn explain_ref(
        &self,
        provider: Option<ProviderKind>,
        reference: &str,
    ) -> Result<SecretRef, crate::refs::BadRef> {
        let Some(kind) = provider else {
            return Ok(SecretRef {
                provider: ProviderKind::Vault,
                reference: reference.to_string(),
                key: None,
                version: None,
            });
        };
        let mut r = crate::refs::parse(kind, reference, None, None)?;
        if self.providers.has(kind) {
            // When the backend cannot say (no token, unreachable), explained offline.
            if let Ok(c) = self.providers.canonical(&r).await {
                return Ok(c);
            }
        }
        if kind == ProviderKind::Vault && self.bundle.config.providers.vault.kv_version != Some(1) {
            if let Some((mount, rest)) = r.reference.split_once('/') {
                if !rest.starts_with("data/") {
                    r.reference = format!("{mount}/data/{rest}");
                }
            }
        }
        Ok(r)
    }

    pub fn decide(&self, claims: &Map<String, Value>, s: &Subject<'_>) -> Decision {
        let deny = Decision {
            allowed: false,
            reveal: false,
            matched: Vec::new(),
        };
        if s.paths.is_empty() {
            return deny;
        }
        // Every path the ref may name must be allowed; rules matched on any are reported.
        let mut out: Option<Decision> = None;
        for path in &s.paths {
            let d = match self.outcomes(claims, s, path) {
                Some(outcomes) => decide(&outcomes),
                None => deny.clone(),
            };
            out = Some(match out {
                None => d,
                Some(mut acc) => {
                    acc.allowed &= d.allowed;
                    acc.reveal &= d.reveal;
                    acc.matched.extend(d.matched);
                    acc
                }
            });
        }
        out.unwrap_or(deny)
    }

    /// Every applicable rule's evaluation for one policy path (`None`: not canonical, which
    /// denies). Policies with `provider:` apply to that provider's refs only.
    pub fn outcomes(
        &self,
        claims: &Map<String, Value>,
        s: &Subject<'_>,
        path: &str,
    ) -> Option<Vec<RuleOutcome>> {
        let segments = canonicalize(path).ok()?;
        let applicable = self.bundle.applicable(&segments, s.provider);
        if applicable.is_empty() {
            return Some(Vec::new());
        }
        use crate::policy::cel::{scope, string_map};
        let secret = string_map([
            ("ref", path.to_string()),
            ("provider", s.provider.map_or("", |p| p.name()).to_string()),
            ("name", s.name.unwrap_or("").to_string()),
            ("key", s.key.unwrap_or("").to_string()),
        ]);
        let request = string_map([
            ("action", s.action.to_string()),
            ("time", crate::time::Utc::now().rfc3339()),
        ]);
        let ctx = scope(claims, secret, request);
        let mut outcomes = Vec::new();
        for p in applicable {
            for (i, r) in p.rules.iter().enumerate() {
                outcomes.push(RuleOutcome {
                    rule: format!("{}#{i}", p.glob.source),
                    effect: r.effect,
                    result: match &ctx {
                        Ok(ctx) => r.condition.eval_in(ctx),
                        Err(e) => Err(e.clone()),
                    },
                });
            }
        }
        Some(outcomes)
    }
}

fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(String::from)
}

/// Fetches an issuer's JWKS, trusting `jwks_ca_file` besides the system roots and sending the
/// bearer token in `jwks_token_file` (read each time: a Kubernetes API server serves its keys
/// only to authenticated callers, and the projected token rotates).
/// Why an issuer's keys could not be fetched.
#[derive(Debug, thiserror::Error)]
enum JwksError {
    #[error("no jwks_url")]
    NoUrl,
    #[error(transparent)]
    Ca(#[from] crate::http::PemError),
    #[error(transparent)]
    Token(#[from] crate::fs::FileError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("http {0}")]
    Status(u16),
}

async fn fetch_jwks(
    issuer: &crate::config::bundle::Issuer,
) -> Result<Vec<(Option<String>, Key)>, JwksError> {
    let url = issuer.jwks_url.as_deref().ok_or(JwksError::NoUrl)?;
    let extra = match &issuer.jwks_ca_file {
        Some(f) => crate::http::read_pem_certs(f)?,
        None => Vec::new(),
    };
    let client = crate::http::HttpClient::with_certs(&extra);
    let mut req = hyper::Request::get(url);
    if let Some(f) = &issuer.jwks_token_file {
        let token = std::fs::read_to_string(f).map_err(crate::fs::FileError::at(f))?;
        req = req.header("authorization", format!("Bearer {}", token.trim()));
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| crate::http::HttpError::Other(e.to_string()))?;
    let resp = client.send(req, std::time::Duration::from_secs(10)).await?;
    if !resp.status.is_success() {
        return Err(JwksError::Status(resp.status.as_u16()));
    }
    Ok(jwt::keys_from_jwks(&resp.json()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const GLOBS: [&str; 5] = [
        "secret/data/prod/**",
        "secret/*/prod/db",
        "secret/**",
        "kv/**",
        "secret/data/prod/db",
    ];
    const CONDS: [&str; 5] = [
        "identity.service == 'pipeline'",
        "identity.service == 'support'",
        "identity.env == 'prod'",
        "identity.missing == 1",
        "secret.ref.endsWith('db')",
    ];
    const EFFECTS: [&str; 3] = ["allow", "deny", "reveal"];

    fn yaml(policies: &[(usize, Vec<(usize, usize)>)]) -> String {
        let mut s = String::from("identity:\n  issuers:\n  - issuer: i\n    audiences: [a]\n    algorithms: [HS256]\n    secret_env: X\npolicies:\n");
        for (g, rules) in policies {
            s.push_str(&format!("- match: \"{}\"\n  rules:\n", GLOBS[*g]));
            for (c, e) in rules {
                s.push_str(&format!(
                    "  - cel: \"{}\"\n    effect: {}\n",
                    CONDS[*c], EFFECTS[*e]
                ));
            }
        }
        s
    }

    fn engine(text: &str) -> Engine {
        let b =
            crate::config::bundle::parse_str(text, "b.yaml", std::path::Path::new("/")).unwrap();
        Engine::offline(b, Arc::new(crate::env::MapEnv::default()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Reordering policies, and rules inside them, never changes any decision.
        #[test]
        fn bundle_order_never_matters(
            policies in proptest::collection::vec((0..GLOBS.len(), proptest::collection::vec((0..CONDS.len(), 0..EFFECTS.len()), 1..4)), 1..6),
            seed in any::<u64>(),
        ) {
            let mut shuffled = policies.clone();
            let mut s = seed;
            let mut next = |n: usize| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (s >> 33) as usize % n };
            for i in (1..shuffled.len()).rev() { let j = next(i + 1); shuffled.swap(i, j); }
            for (_, rules) in shuffled.iter_mut() {
                for i in (1..rules.len()).rev() { let j = next(i + 1); rules.swap(i, j); }
            }
            let a = engine(&yaml(&policies));
            let b = engine(&yaml(&shuffled));
            for id in [json!({"service": "pipeline", "env": "prod"}), json!({"service": "support"}), json!({})] {
                let claims = id.as_object().unwrap().clone();
                for r in ["secret/data/prod/db", "secret/x/prod/db", "kv/a/b", "secret/data/staging/token", "other"] {
                    let s = Subject { reference: r, paths: vec![r.to_string()], provider: None, name: None, key: None, action: "resolve" };
                    let (da, db) = (a.decide(&claims, &s), b.decide(&claims, &s));
                    prop_assert_eq!((da.allowed, da.reveal), (db.allowed, db.reveal), "{} for {}", r, id);
                }
            }
        }
    }

    /// A verified token is remembered only while it is valid: past `exp` (and the leeway) it is
    /// refused again, and new keys for its issuer make it verify again from scratch.
    #[test]
    fn verified_tokens_are_remembered_only_while_valid_and_until_keys_change() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = "identity:\n  issuers:\n  - issuer: i\n    audiences: [a]\n    algorithms: [HS256]\n    secret_env: X\npolicies: []\n";
        let b =
            crate::config::bundle::parse_str(text, "b.yaml", std::path::Path::new("/")).unwrap();
        let env: Arc<dyn Env> = Arc::new(crate::env::MapEnv::from_pairs([("X", "k1")]));
        let e = rt.block_on(Engine::load(b, env)).unwrap();
        let now = 1_800_000_000;
        let token = jwt::sign_hs256(
            &json!({"iss": "i", "aud": "a", "sub": "s", "exp": now + 600}),
            b"k1",
        );
        let first = rt.block_on(e.verify(&token, now)).unwrap();
        assert_eq!(first["sub"], "s");
        assert_eq!(e.verified.lock().unwrap().len(), 1);
        let again = rt.block_on(e.verify(&token, now + 10)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "second check answered from the cache"
        );
        // The same claims under another signature are not the cached token.
        let forged = jwt::sign_hs256(
            &json!({"iss": "i", "aud": "a", "sub": "s", "exp": now + 600}),
            b"wrong",
        );
        assert_eq!(
            rt.block_on(e.verify(&forged, now)),
            Err(jwt::JwtError::Signature)
        );
        // Expired: refused although it is cached.
        let late = now + 600 + jwt::LEEWAY_SECS + 1;
        assert_eq!(
            rt.block_on(e.verify(&token, late)),
            Err(jwt::JwtError::Expired)
        );
        // A clock that went back does not trust the cache either (verified again: still good).
        assert!(rt.block_on(e.verify(&token, now - 5)).is_ok());
        // The issuer's key changes: the cached token no longer counts.
        e.set_keys(0, vec![(None, Key::Hmac(Zeroizing::new(b"k2".to_vec())))]);
        assert_eq!(
            rt.block_on(e.verify(&token, now + 20)),
            Err(jwt::JwtError::Signature)
        );
    }
}
