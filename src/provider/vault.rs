//! The `vault` provider: HashiCorp Vault / OpenBao KV v2 and v1 over Vault's HTTP API.
//!
//! The mount and its KV version come from `GET /v1/sys/internal/ui/mounts/<path>` (as Vault's
//! own CLI does), unless `kv_version` is configured. A ref such as `secret/data/prod/github/token`
//! is read as a path; when that path does not exist, its parent is read and the last segment
//! taken as the key. Every URL is built from checked segments, each percent-encoded.
//!
//! Tokens: a token obtained by login (AppRole, JWT, Kubernetes) is renewed (`renew-self`) once
//! two thirds of its lease have passed, obtained again by login when renewal fails, it has
//! expired, or Vault answers 403, and revoked when `kz run` is done with it. A token from
//! `VAULT_TOKEN` or `~/.vault-token` is read again after a 403 (an agent may have rotated it).
//! Reads are cached for `cache_ttl`; errors and not-found answers never are.
//!
//! Longer than 400 lines because it is one backend's whole wire contract (mount discovery, KV v1
//! and v2, four login methods, token lifecycle), which reads best in one place.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::cache::TtlCache;
use super::{json_to_secret, BoxFuture, ErrorKind, Provider, ProviderError, Request};
use crate::config::{VaultAuth, VaultConfig};
use crate::env::Env;
use crate::http::{HttpClient, Response};
use crate::refs::SecretRef;
use crate::secret::SecretValue;

/// A KV mount: its path with trailing slash, and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    path: String,
    version: u8,
}

type ReadKey = (String, Option<String>);
type Data = Arc<serde_json::Map<String, Value>>;

/// The token kz holds, and what it knows of its lease.
struct Token {
    value: Zeroizing<String>,
    obtained: Instant,
    /// `None`: no known expiry (a token the user gave).
    ttl: Option<Duration>,
    renewable: bool,
    /// Obtained by kz's own login, so kz revokes it when done.
    from_login: bool,
}

impl Token {
    fn fresh(&self) -> bool {
        self.ttl
            .map_or(true, |ttl| self.obtained.elapsed() < ttl * 2 / 3)
    }
    fn expired(&self) -> bool {
        self.ttl.is_some_and(|ttl| self.obtained.elapsed() >= ttl)
    }
}

pub struct VaultProvider {
    address: String,
    namespace: Option<String>,
    auth: VaultAuth,
    kv_version: Option<u8>,
    env: Arc<dyn Env>,
    client: HttpClient,
    token: tokio::sync::Mutex<Option<Token>>,
    mounts: Mutex<Vec<Mount>>,
    /// One read per (api path, version) at a time, reused for the cache's TTL.
    reads: TtlCache<ReadKey, Data>,
}

/// Path characters sent as they are; everything else is percent-encoded.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `a/b c/d` → `a/b%20c/d`: every segment encoded on its own.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

impl VaultProvider {
    pub fn from_config(
        cfg: &VaultConfig,
        env: Arc<dyn Env>,
        cache_ttl: Option<Duration>,
    ) -> Result<Self, ProviderError> {
        let address = cfg
            .address
            .clone()
            .or_else(|| env.nonempty("VAULT_ADDR"))
            .ok_or_else(|| {
                ProviderError::config(
                    "no vault address (set providers.vault.address or VAULT_ADDR)",
                )
            })?;
        let ca: Option<PathBuf> = cfg
            .ca_cert
            .clone()
            .or_else(|| env.nonempty("VAULT_CACERT").map(PathBuf::from));
        let ca_list: Vec<&std::path::Path> = ca.iter().map(|p| p.as_path()).collect();
        let client = HttpClient::new(&ca_list).map_err(ProviderError::config)?;
        Ok(VaultProvider {
            address: address.trim_end_matches('/').to_string(),
            namespace: cfg
                .namespace
                .clone()
                .or_else(|| env.nonempty("VAULT_NAMESPACE")),
            auth: cfg.auth.clone(),
            kv_version: cfg.kv_version,
            env,
            client,
            token: tokio::sync::Mutex::new(None),
            mounts: Mutex::new(Vec::new()),
            reads: TtlCache::new(cache_ttl),
        })
    }

    /// One call to `/v1/<path>[?query]`; `path` is made of checked segments and is encoded here.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Response, ProviderError> {
        let query = query.map(|q| format!("?{q}")).unwrap_or_default();
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}/v1/{}{query}", self.address, encode_path(path)))
            .header("accept", "application/json");
        if let Some(t) = token {
            b = b.header("x-vault-token", t);
        }
        if let Some(ns) = &self.namespace {
            b = b.header("x-vault-namespace", ns);
        }
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = b
            .body(body)
            .map_err(|e| ProviderError::config(format!("invalid vault request: {e}")))?;
        Ok(self
            .client
            .send(req, crate::config::DEFAULT_TIMEOUT)
            .await?)
    }

    /// A GET with the current token; after a 403 the token is obtained again (expired, revoked
    /// or rotated) and the call made once more.
    async fn get(&self, path: &str, query: Option<&str>) -> Result<Response, ProviderError> {
        let token = self.token().await?;
        let resp = self
            .call(Method::GET, path, query, Some(&token), None)
            .await?;
        if resp.status != StatusCode::FORBIDDEN {
            return Ok(resp);
        }
        self.forget(&token).await;
        let again = self.token().await?;
        if again == token {
            return Ok(resp);
        }
        self.call(Method::GET, path, query, Some(&again), None)
            .await
    }

    /// The token to use: the held one while fresh; renewed near the end of its lease; obtained
    /// again once renewal fails or it has expired.
    async fn token(&self) -> Result<Zeroizing<String>, ProviderError> {
        let mut held = self.token.lock().await;
        if let Some(t) = held.as_ref() {
            if t.fresh() {
                return Ok(t.value.clone());
            }
            if t.renewable && !t.expired() {
                if let Ok(renewed) = self.renew(&t.value).await {
                    let value = renewed.value.clone();
                    *held = Some(renewed);
                    return Ok(value);
                }
            }
        }
        let t = self.login().await?;
        let value = t.value.clone();
        *held = Some(t);
        Ok(value)
    }

    /// Drops `token` if it is still the held one.
    async fn forget(&self, token: &str) {
        let mut held = self.token.lock().await;
        if held.as_ref().is_some_and(|t| t.value.as_str() == token) {
            *held = None;
        }
    }

    async fn renew(&self, token: &str) -> Result<Token, ProviderError> {
        let resp = self
            .call(
                Method::POST,
                "auth/token/renew-self",
                None,
                Some(token),
                Some(json!({})),
            )
            .await?;
        if !resp.status.is_success() {
            return Err(status_error(&resp));
        }
        lease(&resp, "auth/token/renew-self")
    }

    fn read_source(
        &self,
        env_name: Option<&str>,
        file: Option<&PathBuf>,
        what: &str,
    ) -> Result<Zeroizing<String>, ProviderError> {
        if let Some(v) = env_name.and_then(|n| self.env.nonempty(n)) {
            return Ok(Zeroizing::new(v));
        }
        if let Some(f) = file {
            let text = std::fs::read_to_string(f).map_err(|e| {
                ProviderError::config(format!(
                    "{what}: {}: {}",
                    f.display(),
                    crate::config::io_reason(&e)
                ))
            })?;
            return Ok(Zeroizing::new(text.trim().to_string()));
        }
        Err(ProviderError::config(format!(
            "no {what} (set {})",
            env_name.unwrap_or("the file in the auth config")
        )))
    }

    async fn login(&self) -> Result<Token, ProviderError> {
        let user_token = |value: String| Token {
            value: Zeroizing::new(value),
            obtained: Instant::now(),
            ttl: None,
            renewable: false,
            from_login: false,
        };
        let (mount, body) = match &self.auth {
            VaultAuth::Token { token_env } => {
                let var = token_env.as_deref().unwrap_or("VAULT_TOKEN");
                if let Some(t) = self.env.nonempty(var) {
                    return Ok(user_token(t));
                }
                if token_env.is_none() {
                    if let Some(home) = self.env.home() {
                        if let Ok(t) = std::fs::read_to_string(home.join(".vault-token")) {
                            if !t.trim().is_empty() {
                                return Ok(user_token(t.trim().to_string()));
                            }
                        }
                    }
                }
                return Err(ProviderError::config(format!(
                    "no vault token (set {var}, write ~/.vault-token, or configure providers.vault.auth)"
                )));
            }
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id_env,
                secret_id_file,
            } => {
                let env_name = secret_id_env.as_deref().or(Some("VAULT_SECRET_ID"));
                let sid =
                    self.read_source(env_name, secret_id_file.as_ref(), "approle secret_id")?;
                (
                    mount,
                    json!({"role_id": role_id, "secret_id": sid.as_str()}),
                )
            }
            VaultAuth::Jwt {
                mount,
                role,
                jwt_env,
                jwt_file,
            } => {
                let jwt = self.read_source(jwt_env.as_deref(), jwt_file.as_ref(), "jwt")?;
                (mount, json!({"role": role, "jwt": jwt.as_str()}))
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt =
                    self.read_source(None, Some(jwt_file), "kubernetes service account token")?;
                (mount, json!({"role": role, "jwt": jwt.as_str()}))
            }
        };
        let path = format!("auth/{}/login", mount.trim_matches('/'));
        let resp = self
            .call(Method::POST, &path, None, None, Some(body))
            .await?;
        if !resp.status.is_success() {
            let e = status_error(&resp);
            return Err(ProviderError::new(
                e.kind,
                format!("login at {path} failed: {}", e.message),
            ));
        }
        let mut t = lease(&resp, &path)?;
        t.from_login = true;
        Ok(t)
    }

    async fn mount_for(&self, reference: &str) -> Result<Mount, ProviderError> {
        // A configured KV version skips the preflight: the mount is the first path segment.
        if let Some(version) = self.kv_version {
            let first = reference.split('/').next().unwrap_or(reference);
            return Ok(Mount {
                path: format!("{first}/"),
                version,
            });
        }
        if let Some(m) = self
            .mounts
            .lock()
            .unwrap()
            .iter()
            .find(|m| reference.starts_with(&m.path))
            .cloned()
        {
            return Ok(m);
        }
        let resp = self
            .get(&format!("sys/internal/ui/mounts/{reference}"), None)
            .await?;
        let mount = if resp.status.is_success() {
            let v = resp.json().map_err(ProviderError::backend)?;
            let path = v
                .pointer("/data/path")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let version = match v.pointer("/data/options/version").and_then(Value::as_str) {
                Some("2") => 2,
                _ => 1,
            };
            if path.is_empty() || !reference.starts_with(&path) {
                return Err(ProviderError::backend(
                    "vault did not report the mount for this path",
                ));
            }
            Mount { path, version }
        } else if resp.status == StatusCode::FORBIDDEN || resp.status == StatusCode::NOT_FOUND {
            // No permission on the preflight endpoint (or an old server): infer from the ref.
            let (first, rest) = reference.split_once('/').unwrap_or((reference, ""));
            let version = if rest.starts_with("data/") { 2 } else { 1 };
            return Ok(Mount {
                path: format!("{first}/"),
                version,
            });
        } else {
            return Err(status_error(&resp));
        };
        self.mounts.lock().unwrap().push(mount.clone());
        Ok(mount)
    }

    /// The API path of `reference` on its mount: KV v2 paths get `data/` after the mount, so
    /// the CLI spelling (`secret/prod/x`) and the API spelling (`secret/data/prod/x`) are one.
    /// Also returns the KV version and the part every secret path starts with (`secret/data/`).
    async fn api_path(&self, reference: &str) -> Result<(String, bool, String), ProviderError> {
        let mount = self.mount_for(reference).await?;
        let rel = &reference[mount.path.len().min(reference.len())..];
        let v2 = mount.version == 2;
        let data_rel = if v2 {
            rel.strip_prefix("data/").unwrap_or(rel)
        } else {
            rel
        };
        if data_rel.is_empty() || (v2 && rel == "data") {
            return Err(ProviderError::config(
                "ref names a mount, not a secret path",
            ));
        }
        let prefix = format!("{}{}", mount.path, if v2 { "data/" } else { "" });
        Ok((format!("{prefix}{data_rel}"), v2, prefix))
    }

    /// Reads one KV path; a missing path or a deleted version is `NotFound`.
    async fn read(
        &self,
        api_path: &str,
        version: Option<&str>,
        v2: bool,
    ) -> Result<Data, ProviderError> {
        let key = (api_path.to_string(), version.map(String::from));
        self.reads
            .get_or_fetch(key, || async {
                let query = version.map(|v| format!("version={v}"));
                let resp = self.get(api_path, query.as_deref()).await?;
                if !resp.status.is_success() {
                    return Err(status_error(&resp));
                }
                let v = resp.json().map_err(ProviderError::backend)?;
                let data = if v2 {
                    v.pointer("/data/data")
                } else {
                    v.get("data")
                };
                match data {
                    Some(Value::Object(m)) => Ok(Arc::new(m.clone())),
                    Some(Value::Null) | None => Err(ProviderError::not_found("not found (404)")),
                    Some(_) => Err(ProviderError::backend(
                        "unexpected response shape: data is not an object",
                    )),
                }
            })
            .await
    }

    async fn resolve_inner(&self, req: &Request) -> Result<SecretValue, ProviderError> {
        let reference = req.reference.trim_matches('/');
        let (api, v2, prefix) = self.api_path(reference).await?;
        if !v2 && req.version.is_some() {
            return Err(ProviderError::config(
                "version is only supported on kv version 2 mounts",
            ));
        }
        let version = req.version.as_deref();
        if let Some(key) = &req.key {
            return take_key(&*self.read(&api, version, v2).await?, key);
        }
        match self.read(&api, version, v2).await {
            Ok(d) => single_value(&d),
            Err(e) if e.kind == ErrorKind::NotFound && !req.exact => {
                let Some((parent, key)) = api.rsplit_once('/') else {
                    return Err(e);
                };
                if parent.len() < prefix.len() {
                    return Err(e);
                }
                match self.read(parent, version, v2).await {
                    Ok(d) => take_key(&d, key).map_err(|e| {
                        if e.kind == ErrorKind::NotFound {
                            ProviderError::not_found(format!(
                                "not found (no secret at this path, and the secret at its parent has no key {key:?})"
                            ))
                        } else {
                            e
                        }
                    }),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The parent of a canonical ref with its last segment as the key, when that can name a
    /// secret (not the mount itself).
    pub fn parent_with_key(r: &SecretRef) -> Option<SecretRef> {
        if r.key.is_some() {
            return None;
        }
        let (parent, key) = r.reference.rsplit_once('/')?;
        let segments = parent.split('/').count();
        if segments < 2 || (segments == 2 && parent.ends_with("/data")) {
            return None;
        }
        Some(SecretRef {
            provider: r.provider,
            reference: parent.to_string(),
            key: Some(key.to_string()),
            version: r.version.clone(),
        })
    }
}

/// A token and its lease from a login or renewal response.
fn lease(resp: &Response, path: &str) -> Result<Token, ProviderError> {
    let v = resp.json().map_err(ProviderError::backend)?;
    let value = v
        .pointer("/auth/client_token")
        .and_then(Value::as_str)
        .map(|t| Zeroizing::new(t.to_string()))
        .ok_or_else(|| {
            ProviderError::backend(format!("{path}: response has no auth.client_token"))
        })?;
    let secs = v
        .pointer("/auth/lease_duration")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(Token {
        value,
        obtained: Instant::now(),
        ttl: (secs > 0).then(|| Duration::from_secs(secs)),
        renewable: v
            .pointer("/auth/renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        from_login: false,
    })
}

fn take_key(d: &serde_json::Map<String, Value>, key: &str) -> Result<SecretValue, ProviderError> {
    match d.get(key) {
        Some(v) => Ok(json_to_secret(v)),
        None => Err(ProviderError::not_found(format!(
            "key {key:?} not found (keys: {})",
            d.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn single_value(d: &serde_json::Map<String, Value>) -> Result<SecretValue, ProviderError> {
    let mut it = d.values();
    match (it.next(), it.next()) {
        (Some(v), None) => Ok(json_to_secret(v)),
        (None, _) => Err(ProviderError::not_found("secret has no keys")),
        _ => Err(ProviderError::config(format!(
            "secret has several keys, choose one with #key or key = (keys: {})",
            d.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Maps a Vault error response to a message: Vault's own `errors` strings never carry values.
fn status_error(resp: &Response) -> ProviderError {
    let detail = resp
        .json()
        .ok()
        .and_then(|v| v.get("errors").cloned())
        .and_then(|e| e.as_array().cloned())
        .map(|errs| {
            errs.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty());
    let code = resp.status.as_u16();
    match resp.status {
        StatusCode::FORBIDDEN => ProviderError::denied(format!("permission denied ({code})")),
        StatusCode::UNAUTHORIZED => ProviderError::denied(format!("unauthorized ({code})")),
        StatusCode::NOT_FOUND => ProviderError::not_found(format!("not found ({code})")),
        _ => ProviderError::backend(match detail {
            Some(d) => format!("vault error ({code}): {}", d.to_lowercase()),
            None => format!("vault error ({code})"),
        }),
    }
}

impl Provider for VaultProvider {
    fn resolve<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(self.resolve_inner(req))
    }

    fn canonical<'a>(
        &'a self,
        r: &'a SecretRef,
    ) -> BoxFuture<'a, Result<SecretRef, ProviderError>> {
        Box::pin(async move {
            let (api, v2, _) = self.api_path(&r.reference).await?;
            if !v2 && r.version.is_some() {
                return Err(ProviderError::config(
                    "version is only supported on kv version 2 mounts",
                ));
            }
            Ok(SecretRef {
                reference: api,
                ..r.clone()
            })
        })
    }

    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let held = self.token.lock().await.take();
            if let Some(t) = held.filter(|t| t.from_login && !t.expired()) {
                let _ = self
                    .call(
                        Method::POST,
                        "auth/token/revoke-self",
                        None,
                        Some(&t.value),
                        None,
                    )
                    .await;
            }
        })
    }
}
