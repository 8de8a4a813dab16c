//! The `vault` provider: HashiCorp Vault / OpenBao KV v2 and v1 over Vault's HTTP API.
//!
//! The mount and its KV version come from `GET /v1/sys/internal/ui/mounts/<path>` (as Vault's
//! own CLI does), unless `kv_version` is configured. A ref such as `secret/data/prod/github/token`
//! is read as a path; when that path does not exist, its parent is read and the last segment
//! taken as the key. Login (token, AppRole, JWT, Kubernetes) happens once per run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::{json_to_secret, BoxFuture, ErrorKind, Provider, ProviderError, Request};
use crate::config::{VaultAuth, VaultConfig};
use crate::env::Env;
use crate::http::{HttpClient, Response};
use crate::secret::SecretValue;

/// A KV mount: its path with trailing slash, and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    path: String,
    version: u8,
}

type ReadKey = (String, Option<String>);
type ReadResult = Result<Option<Arc<serde_json::Map<String, Value>>>, ProviderError>;

pub struct VaultProvider {
    address: String,
    namespace: Option<String>,
    auth: VaultAuth,
    kv_version: Option<u8>,
    env: Arc<dyn Env>,
    client: HttpClient,
    token: OnceCell<Result<Zeroizing<String>, ProviderError>>,
    mounts: Mutex<Vec<Mount>>,
    /// One read per (api path, version), shared by every secret that needs it.
    reads: Mutex<HashMap<ReadKey, Arc<OnceCell<ReadResult>>>>,
}

impl VaultProvider {
    pub fn from_config(cfg: &VaultConfig, env: Arc<dyn Env>) -> Result<Self, ProviderError> {
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
            token: OnceCell::new(),
            mounts: Mutex::new(Vec::new()),
            reads: Mutex::new(HashMap::new()),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Response, ProviderError> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}/v1/{}", self.address, path))
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

    async fn token(&self) -> Result<Zeroizing<String>, ProviderError> {
        self.token.get_or_init(|| self.login()).await.clone()
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

    async fn login(&self) -> Result<Zeroizing<String>, ProviderError> {
        let (mount, body) = match &self.auth {
            VaultAuth::Token { token_env } => {
                let var = token_env.as_deref().unwrap_or("VAULT_TOKEN");
                if let Some(t) = self.env.nonempty(var) {
                    return Ok(Zeroizing::new(t));
                }
                if token_env.is_none() {
                    if let Some(home) = self.env.home() {
                        if let Ok(t) = std::fs::read_to_string(home.join(".vault-token")) {
                            if !t.trim().is_empty() {
                                return Ok(Zeroizing::new(t.trim().to_string()));
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
        let resp = self.call(Method::POST, &path, None, Some(body)).await?;
        if !resp.status.is_success() {
            let e = status_error(&resp);
            return Err(ProviderError::new(
                e.kind,
                format!("login at {path} failed: {}", e.message),
            ));
        }
        let v = resp.json().map_err(ProviderError::backend)?;
        v.pointer("/auth/client_token")
            .and_then(Value::as_str)
            .map(|t| Zeroizing::new(t.to_string()))
            .ok_or_else(|| {
                ProviderError::backend(format!(
                    "login at {path}: response has no auth.client_token"
                ))
            })
    }

    async fn mount_for(&self, reference: &str, token: &str) -> Result<Mount, ProviderError> {
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
            return Ok(self.with_forced_version(m));
        }
        let resp = self
            .call(
                Method::GET,
                &format!("sys/internal/ui/mounts/{reference}"),
                Some(token),
                None,
            )
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
            Mount {
                path: format!("{first}/"),
                version,
            }
        } else {
            return Err(status_error(&resp));
        };
        self.mounts.lock().unwrap().push(mount.clone());
        Ok(self.with_forced_version(mount))
    }

    fn with_forced_version(&self, mut m: Mount) -> Mount {
        if let Some(v) = self.kv_version {
            m.version = v;
        }
        m
    }

    /// Reads one KV path; `Ok(None)` when it does not exist.
    async fn read(
        &self,
        api_path: String,
        version: Option<String>,
        v2: bool,
        token: &str,
    ) -> ReadResult {
        let cell = self
            .reads
            .lock()
            .unwrap()
            .entry((api_path.clone(), version.clone()))
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let url = match &version {
                Some(v) => format!("{api_path}?version={v}"),
                None => api_path.clone(),
            };
            let resp = self.call(Method::GET, &url, Some(token), None).await?;
            if resp.status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
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
                Some(Value::Object(m)) => Ok(Some(Arc::new(m.clone()))),
                Some(Value::Null) | None => Ok(None),
                Some(_) => Err(ProviderError::backend(
                    "unexpected response shape: data is not an object",
                )),
            }
        })
        .await
        .clone()
    }

    async fn resolve_inner(&self, req: &Request) -> Result<SecretValue, ProviderError> {
        let token = self.token().await?;
        let reference = req.reference.trim_matches('/');
        let mount = self.mount_for(reference, &token).await?;
        let rel = &reference[mount.path.len().min(reference.len())..];
        let v2 = mount.version == 2;
        if !v2 && req.version.is_some() {
            return Err(ProviderError::config(
                "version is only supported on kv version 2 mounts",
            ));
        }
        let api = |p: &str| {
            if v2 {
                let data_rel = p.strip_prefix("data/").unwrap_or(p);
                format!("{}data/{}", mount.path, data_rel)
            } else {
                format!("{}{}", mount.path, p)
            }
        };
        if rel.is_empty() || (v2 && (rel == "data" || rel == "data/")) {
            return Err(ProviderError::config(
                "ref names a mount, not a secret path",
            ));
        }
        if let Some(key) = &req.key {
            let data = self.read(api(rel), req.version.clone(), v2, &token).await?;
            return match data {
                Some(d) => take_key(&d, key),
                None => Err(ProviderError::not_found("not found (404)")),
            };
        }
        match self.read(api(rel), req.version.clone(), v2, &token).await? {
            Some(d) => single_value(&d),
            None => {
                let Some((parent, key)) = rel.rsplit_once('/') else {
                    return Err(ProviderError::not_found("not found (404)"));
                };
                if v2 && parent == "data" {
                    return Err(ProviderError::not_found("not found (404)"));
                }
                match self.read(api(parent), req.version.clone(), v2, &token).await? {
                    Some(d) => take_key(&d, key).map_err(|e| {
                        if e.kind == ErrorKind::NotFound {
                            ProviderError::not_found(format!(
                                "not found (no secret at this path, and the secret at its parent has no key {key:?})"
                            ))
                        } else {
                            e
                        }
                    }),
                    None => Err(ProviderError::not_found("not found (404)")),
                }
            }
        }
    }
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
}
