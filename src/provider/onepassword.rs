//! The `1password` provider. With `OP_CONNECT_HOST` and `OP_CONNECT_TOKEN` (or
//! `connect_host`/`connect_token_env`) it uses a 1Password Connect server's REST API, looking
//! vaults and items up by name once per run; otherwise it runs `op read`, which works with a
//! service account (`OP_SERVICE_ACCOUNT_TOKEN`) or a signed-in desktop session.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{BoxFuture, Provider, ProviderError, Request};
use crate::config::OnePasswordConfig;
use crate::env::Env;
use crate::http::HttpClient;
use crate::secret::SecretValue;

/// `op://vault/item[/section]/field`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRef {
    pub vault: String,
    pub item: String,
    pub section: Option<String>,
    pub field: String,
}

impl OpRef {
    pub fn parse(s: &str) -> Result<Self, ProviderError> {
        let bad = || ProviderError::config("ref must look like op://vault/item[/section]/field");
        let rest = s.strip_prefix("op://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [v, i, f] => Ok(OpRef {
                vault: v.to_string(),
                item: i.to_string(),
                section: None,
                field: f.to_string(),
            }),
            [v, i, s, f] => Ok(OpRef {
                vault: v.to_string(),
                item: i.to_string(),
                section: Some(s.to_string()),
                field: f.to_string(),
            }),
            _ => Err(bad()),
        }
    }
}

enum Mode {
    Cli {
        op: PathBuf,
        account: Option<String>,
    },
    Connect(Box<Connect>),
}

pub struct OnePasswordProvider {
    mode: Mode,
}

/// Lookups shared by concurrent resolutions, kept for `cache_ttl` (failures never).
type Cache<K, V> = super::cache::TtlCache<K, V>;

struct Connect {
    host: String,
    token: Zeroizing<String>,
    client: HttpClient,
    vault_ids: Cache<String, String>,
    item_ids: Cache<(String, String), String>,
    items: Cache<(String, String), Arc<Value>>,
}

/// 1Password ids are 26 lower-case alphanumerics.
fn looks_like_id(s: &str) -> bool {
    s.len() == 26
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

impl OnePasswordProvider {
    pub fn from_config(
        cfg: &OnePasswordConfig,
        env: Arc<dyn Env>,
        cache_ttl: Option<std::time::Duration>,
    ) -> Result<Self, ProviderError> {
        let host = cfg
            .connect_host
            .clone()
            .or_else(|| env.nonempty("OP_CONNECT_HOST"));
        let token_var = cfg
            .connect_token_env
            .as_deref()
            .unwrap_or("OP_CONNECT_TOKEN");
        if let Some(host) = host {
            let token = env.nonempty(token_var).ok_or_else(|| {
                ProviderError::config(format!(
                    "1password connect at {host} needs a token in {token_var}"
                ))
            })?;
            return Ok(OnePasswordProvider {
                mode: Mode::Connect(Box::new(Connect {
                    host: host.trim_end_matches('/').to_string(),
                    token: Zeroizing::new(token),
                    client: HttpClient::new(&[]).map_err(ProviderError::config)?,
                    vault_ids: Cache::new(cache_ttl),
                    item_ids: Cache::new(cache_ttl),
                    items: Cache::new(cache_ttl),
                })),
            });
        }
        Ok(OnePasswordProvider {
            mode: Mode::Cli {
                op: cfg.op_path.clone().unwrap_or_else(|| PathBuf::from("op")),
                account: cfg.account.clone().or_else(|| env.nonempty("OP_ACCOUNT")),
            },
        })
    }
}

async fn op_read(
    op: &PathBuf,
    account: Option<&str>,
    reference: &str,
) -> Result<SecretValue, ProviderError> {
    let mut cmd = tokio::process::Command::new(op);
    cmd.arg("read").arg("--no-newline");
    if let Some(a) = account {
        cmd.arg("--account").arg(a);
    }
    cmd.arg(reference)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ProviderError::config(format!(
                "{} not found (install the 1password cli or set providers.1password.op_path)",
                op.display()
            ))
        } else {
            ProviderError::backend(format!("cannot run {}: {e}", op.display()))
        }
    })?;
    let stdout = Zeroizing::new(out.stdout);
    if out.status.success() {
        let text = std::str::from_utf8(&stdout)
            .map_err(|_| ProviderError::backend("op read returned non-utf-8 output"))?;
        return Ok(SecretValue::new(text));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("op read failed");
    // `[ERROR] 2024/01/01 12:00:00 message`: keep the message.
    let msg = match line.strip_prefix("[ERROR] ") {
        Some(rest) => rest.splitn(3, ' ').nth(2).unwrap_or(rest),
        None => line,
    };
    let lower = msg.to_lowercase();
    let text = format!("op read: {}", lower.trim());
    Err(
        if lower.contains("isn't an item")
            || lower.contains("isn't a vault")
            || lower.contains("isn't a field")
            || lower.contains("not found")
            || lower.contains("no item")
            || lower.contains("does not have a field")
        {
            ProviderError::not_found(text)
        } else if lower.contains("not signed in")
            || lower.contains("authoriz")
            || lower.contains("forbidden")
            || lower.contains("permission")
        {
            ProviderError::denied(text)
        } else {
            ProviderError::backend(text)
        },
    )
}

impl Connect {
    async fn get(&self, path_and_query: &str) -> Result<Value, ProviderError> {
        let req = hyper::Request::get(format!("{}{}", self.host, path_and_query))
            .header("authorization", format!("Bearer {}", self.token.as_str()))
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| ProviderError::config(format!("invalid connect host: {e}")))?;
        let resp = self
            .client
            .send(req, crate::config::DEFAULT_TIMEOUT)
            .await?;
        match resp.status {
            s if s.is_success() => resp.json().map_err(ProviderError::backend),
            StatusCode::UNAUTHORIZED => Err(ProviderError::denied("connect: invalid token (401)")),
            StatusCode::FORBIDDEN => Err(ProviderError::denied("connect: permission denied (403)")),
            StatusCode::NOT_FOUND => Err(ProviderError::not_found("connect: not found (404)")),
            s => Err(ProviderError::backend(format!(
                "connect: error ({})",
                s.as_u16()
            ))),
        }
    }

    fn filter(field: &str, value: &str) -> String {
        let f = format!("{field} eq \"{}\"", value.replace('"', "\\\""));
        percent_encoding::utf8_percent_encode(&f, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    /// Looks a vault or item up by name: exactly one match, or the name itself when it is an id.
    async fn find_id(
        &self,
        path: &str,
        field: &str,
        what: &str,
        name: &str,
    ) -> Result<String, ProviderError> {
        let list = self
            .get(&format!("{path}?filter={}", Self::filter(field, name)))
            .await?;
        match list.as_array().map(|a| a.as_slice()).unwrap_or_default() {
            [one] => one
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ProviderError::backend(format!("connect: {what} without id"))),
            [] if looks_like_id(name) => Ok(name.to_string()),
            [] => Err(ProviderError::not_found(format!(
                "connect: no {what} with {field} {name:?}"
            ))),
            _ => Err(ProviderError::backend(format!(
                "connect: several {what}s with {field} {name:?}; use its id"
            ))),
        }
    }

    async fn vault_id(&self, name: &str) -> Result<String, ProviderError> {
        self.vault_ids
            .get_or_fetch(name.to_string(), || {
                self.find_id("/v1/vaults", "name", "vault", name)
            })
            .await
    }

    async fn item_id(&self, vault_id: &str, title: &str) -> Result<String, ProviderError> {
        let path = format!("/v1/vaults/{vault_id}/items");
        self.item_ids
            .get_or_fetch((vault_id.to_string(), title.to_string()), || {
                self.find_id(&path, "title", "item", title)
            })
            .await
    }

    async fn item(&self, vault_id: &str, item_id: &str) -> Result<Arc<Value>, ProviderError> {
        self.items
            .get_or_fetch((vault_id.to_string(), item_id.to_string()), || async {
                self.get(&format!("/v1/vaults/{vault_id}/items/{item_id}"))
                    .await
                    .map(Arc::new)
            })
            .await
    }

    async fn read(&self, r: &OpRef) -> Result<SecretValue, ProviderError> {
        let vid = self.vault_id(&r.vault).await?;
        let iid = self.item_id(&vid, &r.item).await?;
        let item = self.item(&vid, &iid).await?;
        let section_id = match &r.section {
            None => None,
            Some(s) => {
                let sections = item
                    .get("sections")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let found = sections.iter().find(|sec| {
                    sec.get("id").and_then(Value::as_str) == Some(s.as_str())
                        || sec
                            .get("label")
                            .and_then(Value::as_str)
                            .is_some_and(|l| l.eq_ignore_ascii_case(s))
                });
                Some(
                    found
                        .and_then(|sec| sec.get("id").and_then(Value::as_str))
                        .ok_or_else(|| {
                            ProviderError::not_found(format!("connect: item has no section {s:?}"))
                        })?
                        .to_string(),
                )
            }
        };
        let fields = item
            .get("fields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let field = fields.iter().find(|f| {
            let name_ok = f.get("id").and_then(Value::as_str) == Some(r.field.as_str())
                || f.get("label")
                    .and_then(Value::as_str)
                    .is_some_and(|l| l.eq_ignore_ascii_case(&r.field));
            let section_ok = match &section_id {
                None => true,
                Some(sid) => f.pointer("/section/id").and_then(Value::as_str) == Some(sid.as_str()),
            };
            name_ok && section_ok
        });
        match field.and_then(|f| f.get("value")) {
            Some(Value::String(s)) => Ok(SecretValue::new(s.clone())),
            Some(_) | None => Err(ProviderError::not_found(format!(
                "connect: item has no field {:?}",
                r.field
            ))),
        }
    }
}

impl Provider for OnePasswordProvider {
    fn resolve<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(async move {
            let r = OpRef::parse(&req.reference)?;
            match &self.mode {
                Mode::Cli { op, account } => op_read(op, account.as_deref(), &req.reference).await,
                Mode::Connect(c) => c.read(&r).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        let r = OpRef::parse("op://Dev/OpenAI/api-key").unwrap();
        assert_eq!(
            (r.vault.as_str(), r.item.as_str(), r.field.as_str()),
            ("Dev", "OpenAI", "api-key")
        );
        let r = OpRef::parse("op://Dev/DB/conn/password").unwrap();
        assert_eq!(r.section.as_deref(), Some("conn"));
        assert!(OpRef::parse("op://Dev//x").is_err());
        assert!(OpRef::parse("vault://x").is_err());
    }
}
