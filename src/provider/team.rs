//! Team mode: with `[server]` in `.keyzero.toml`, every secret is resolved through the policy
//! server's `POST /v1/resolve`, authenticated with the identity token from `token_file` or
//! `token_env`. A denial is an error naming the policy, never a value.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{BoxFuture, ErrorKind, Provider, ProviderError, Request};
use crate::config::{ProviderKind, ServerConfig};
use crate::env::Env;
use crate::http::HttpClient;
use crate::secret::SecretValue;

pub struct ServerClient {
    url: String,
    token: TokenSource,
    client: HttpClient,
}

/// Where the identity token comes from. A file is read again for every request, so a
/// projected service-account token that the kubelet rotates is always current.
enum TokenSource {
    File(std::path::PathBuf),
    Value(Zeroizing<String>),
    Missing(ProviderError),
}

impl TokenSource {
    fn get(&self) -> Result<Zeroizing<String>, ProviderError> {
        match self {
            TokenSource::File(f) => std::fs::read_to_string(f)
                .map(|t| Zeroizing::new(t.trim().to_string()))
                .map_err(|e| {
                    ProviderError::config(format!(
                        "server.token_file {}: {}",
                        f.display(),
                        crate::config::io_reason(&e)
                    ))
                }),
            TokenSource::Value(v) => Ok(v.clone()),
            TokenSource::Missing(e) => Err(e.clone()),
        }
    }
}

impl ServerClient {
    pub fn new(cfg: &ServerConfig, env: &dyn Env) -> Result<Arc<Self>, ProviderError> {
        let token = match (&cfg.token_file, &cfg.token_env) {
            (Some(f), _) => TokenSource::File(f.clone()),
            (None, Some(var)) => match env.nonempty(var) {
                Some(v) => TokenSource::Value(Zeroizing::new(v)),
                None => TokenSource::Missing(ProviderError::config(format!(
                    "server.token_env: {var} is not set"
                ))),
            },
            (None, None) => match env.nonempty("KZ_IDENTITY_TOKEN") {
                Some(v) => TokenSource::Value(Zeroizing::new(v)),
                None => TokenSource::Missing(ProviderError::config(
                    "no identity token (set server.token_file, server.token_env or KZ_IDENTITY_TOKEN)",
                )),
            },
        };
        // KZ_SERVER_CA: a PEM file, or the PEM text itself (the injector passes it that way,
        // since a pod cannot mount a Secret from the server's namespace).
        let extra = match env.nonempty("KZ_SERVER_CA") {
            None => Vec::new(),
            Some(v) if v.trim_start().starts_with("-----BEGIN") => {
                crate::http::parse_pem_certs(v.as_bytes(), "KZ_SERVER_CA")
                    .map_err(ProviderError::config)?
            }
            Some(path) => crate::http::read_pem_certs(std::path::Path::new(&path))
                .map_err(|e| ProviderError::config(format!("KZ_SERVER_CA: {e}")))?,
        };
        Ok(Arc::new(ServerClient {
            url: cfg.url.trim_end_matches('/').to_string(),
            token,
            client: HttpClient::with_certs(&extra),
        }))
    }

    async fn resolve(
        &self,
        kind: ProviderKind,
        req: &Request,
    ) -> Result<SecretValue, ProviderError> {
        let token = self.token.get()?;
        let body = json!({"secrets": [{"provider": kind.name(), "ref": req.reference, "key": req.key, "version": req.version}]});
        let http = hyper::Request::post(format!("{}/v1/resolve", self.url))
            .header("authorization", format!("Bearer {}", token.as_str()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| ProviderError::config(format!("server.url: {e}")))?;
        let resp = self
            .client
            .send(http, crate::config::DEFAULT_TIMEOUT)
            .await?;
        if resp.status == hyper::StatusCode::UNAUTHORIZED {
            return Err(ProviderError::denied(
                "policy server rejected the identity token (401)",
            ));
        }
        if !resp.status.is_success() {
            return Err(ProviderError::backend(format!(
                "policy server error ({})",
                resp.status.as_u16()
            )));
        }
        let v = resp.json().map_err(ProviderError::backend)?;
        let first = v.pointer("/results/0").cloned().unwrap_or(Value::Null);
        if let Some(value) = first.get("value").and_then(Value::as_str) {
            return Ok(SecretValue::new(value));
        }
        let code = first
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("backend");
        let message = first
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no result");
        Err(ProviderError::new(
            match code {
                "denied" => ErrorKind::Denied,
                "not_found" => ErrorKind::NotFound,
                _ => ErrorKind::Backend,
            },
            format!("policy server: {code}: {}", message.to_lowercase()),
        ))
    }
}

/// One provider kind, resolved through the policy server.
pub struct TeamProvider {
    pub kind: ProviderKind,
    pub client: Arc<ServerClient>,
}

impl Provider for TeamProvider {
    fn resolve<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(self.client.resolve(self.kind, req))
    }
}
