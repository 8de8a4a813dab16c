//! The `aws-sm` provider: one SigV4-signed `GetSecretValue` call per secret, with credentials
//! from the standard chain (environment, shared credentials/config profile, web-identity token
//! file via STS) and the region and endpoint from config or the usual AWS variables.
//!
//! Longer than 400 lines because it is one backend with its own credential chain; the signing
//! itself is in `sigv4`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::sigv4::{self, Credentials};
use super::{pick_key, BoxFuture, Provider, ProviderError, Request};
use crate::config::AwsConfig;
use crate::env::Env;
use crate::http::HttpClient;
use crate::secret::SecretValue;

pub struct AwsSmProvider {
    region: String,
    endpoint: String,
    profile: String,
    env: Arc<dyn Env>,
    client: HttpClient,
    /// Credentials, and when temporary (STS) ones must be fetched again.
    creds: tokio::sync::Mutex<Option<(Credentials, Option<std::time::Instant>)>>,
    values: super::cache::TtlCache<Request, SecretValue>,
}

/// STS credentials are fetched again this long before they expire.
const STS_REFRESH_MARGIN: std::time::Duration = std::time::Duration::from_secs(300);

/// Seconds from now until an ISO 8601 UTC time such as `2026-11-28T18:00:00Z`.
fn seconds_until(iso: &str) -> Option<i64> {
    let b = iso.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| iso.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, s) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days since 1970-01-01 of a Gregorian date, counted in 400-year eras from March 1st.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let at = days * 86400 + h * 3600 + mi * 60 + s;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(at - now)
}

/// A parsed INI file: section → key → value.
type Ini = HashMap<String, HashMap<String, String>>;

fn parse_ini(text: &str) -> Ini {
    let mut out: Ini = HashMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            out.entry(section.clone()).or_default();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

fn read_ini(path: Option<PathBuf>) -> Ini {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| parse_ini(&t))
        .unwrap_or_default()
}

/// Looks a profile up in the config file, where non-default profiles are `[profile NAME]`.
fn config_profile<'a>(config: &'a Ini, profile: &str) -> Option<&'a HashMap<String, String>> {
    config
        .get(&format!("profile {profile}"))
        .or_else(|| config.get(profile))
}

/// Whether `v` looks like a VersionId (a UUID) rather than a staging label.
fn is_version_id(v: &str) -> bool {
    v.len() == 36
        && v.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim().to_string())
}

impl AwsSmProvider {
    pub fn from_config(
        cfg: &AwsConfig,
        env: Arc<dyn Env>,
        cache_ttl: Option<std::time::Duration>,
    ) -> Result<Self, ProviderError> {
        let profile = cfg
            .profile
            .clone()
            .or_else(|| env.nonempty("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        let config_file = env
            .nonempty("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| env.home().map(|h| h.join(".aws/config")));
        let region = cfg
            .region
            .clone()
            .or_else(|| env.nonempty("AWS_REGION"))
            .or_else(|| env.nonempty("AWS_DEFAULT_REGION"))
            .or_else(|| {
                let ini = read_ini(config_file);
                config_profile(&ini, &profile).and_then(|p| p.get("region").cloned())
            })
            .ok_or_else(|| {
                ProviderError::config(
                    "no aws region (set providers.aws-sm.region, AWS_REGION, or region in the profile)",
                )
            })?;
        let endpoint = cfg
            .endpoint
            .clone()
            .or_else(|| env.nonempty("AWS_ENDPOINT_URL_SECRETS_MANAGER"))
            .or_else(|| env.nonempty("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"));
        let ca = env.nonempty("AWS_CA_BUNDLE").map(PathBuf::from);
        let ca_list: Vec<&std::path::Path> = ca.iter().map(|p| p.as_path()).collect();
        Ok(AwsSmProvider {
            region,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            profile,
            env,
            client: HttpClient::new(&ca_list).map_err(ProviderError::config)?,
            creds: tokio::sync::Mutex::new(None),
            values: super::cache::TtlCache::new(cache_ttl),
        })
    }

    /// The held credentials, fetched again when temporary ones are close to expiry. Failures
    /// are not kept.
    async fn credentials(&self) -> Result<Credentials, ProviderError> {
        let mut held = self.creds.lock().await;
        if let Some((c, refresh)) = held.as_ref() {
            if refresh.map_or(true, |at| std::time::Instant::now() < at) {
                return Ok(c.clone());
            }
        }
        let (c, expires_in) = self.load_credentials().await?;
        let refresh = expires_in.map(|secs| {
            let left = std::time::Duration::from_secs(secs.max(0) as u64);
            std::time::Instant::now() + left.saturating_sub(STS_REFRESH_MARGIN).max(left / 2)
        });
        *held = Some((c.clone(), refresh));
        Ok(c)
    }

    /// Credentials and, for temporary ones, seconds until they expire.
    async fn load_credentials(&self) -> Result<(Credentials, Option<i64>), ProviderError> {
        let env = &*self.env;
        if let (Some(id), Some(secret)) = (
            env.nonempty("AWS_ACCESS_KEY_ID"),
            env.nonempty("AWS_SECRET_ACCESS_KEY"),
        ) {
            return Ok((
                Credentials {
                    access_key_id: id,
                    secret_access_key: Zeroizing::new(secret),
                    session_token: env.nonempty("AWS_SESSION_TOKEN").map(Zeroizing::new),
                },
                None,
            ));
        }
        let creds_file = env
            .nonempty("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| env.home().map(|h| h.join(".aws/credentials")));
        let config_file = env
            .nonempty("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| env.home().map(|h| h.join(".aws/config")));
        let creds_ini = read_ini(creds_file);
        let config_ini = read_ini(config_file);
        let from_creds = creds_ini.get(&self.profile);
        let from_config = config_profile(&config_ini, &self.profile);
        for section in [from_creds, from_config].into_iter().flatten() {
            if let (Some(id), Some(secret)) = (
                section.get("aws_access_key_id"),
                section.get("aws_secret_access_key"),
            ) {
                return Ok((
                    Credentials {
                        access_key_id: id.clone(),
                        secret_access_key: Zeroizing::new(secret.clone()),
                        session_token: section
                            .get("aws_session_token")
                            .cloned()
                            .map(Zeroizing::new),
                    },
                    None,
                ));
            }
        }
        let web_identity = env
            .nonempty("AWS_WEB_IDENTITY_TOKEN_FILE")
            .zip(env.nonempty("AWS_ROLE_ARN"))
            .or_else(|| {
                let p = from_config?;
                Some((
                    p.get("web_identity_token_file")?.clone(),
                    p.get("role_arn")?.clone(),
                ))
            });
        if let Some((token_file, role_arn)) = web_identity {
            return self
                .assume_role_with_web_identity(&token_file, &role_arn)
                .await;
        }
        Err(ProviderError::config(format!(
            "no aws credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, configure profile {:?}, or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN)",
            self.profile
        )))
    }

    async fn assume_role_with_web_identity(
        &self,
        token_file: &str,
        role_arn: &str,
    ) -> Result<(Credentials, Option<i64>), ProviderError> {
        let token = Zeroizing::new(
            std::fs::read_to_string(token_file)
                .map_err(|e| {
                    ProviderError::config(format!(
                        "web identity token {token_file}: {}",
                        crate::config::io_reason(&e)
                    ))
                })?
                .trim()
                .to_string(),
        );
        let sts = self
            .env
            .nonempty("AWS_ENDPOINT_URL_STS")
            .or_else(|| self.env.nonempty("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", self.region));
        let session = self
            .env
            .nonempty("AWS_ROLE_SESSION_NAME")
            .unwrap_or_else(|| format!("keyzero-{}", std::process::id()));
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let body = Zeroizing::new(format!(
            "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn={}&RoleSessionName={}&WebIdentityToken={}",
            enc(role_arn),
            enc(&session),
            enc(&token)
        ));
        let req = hyper::Request::post(format!("{}/", sts.trim_end_matches('/')))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body.as_bytes().to_vec())))
            .map_err(|e| ProviderError::config(format!("invalid sts endpoint {sts:?}: {e}")))?;
        let resp = self
            .client
            .send(req, crate::config::DEFAULT_TIMEOUT)
            .await?;
        let text = String::from_utf8_lossy(&resp.body);
        if !resp.status.is_success() {
            let code = xml_field(&text, "Code").unwrap_or_default();
            return Err(ProviderError::denied(format!(
                "sts AssumeRoleWithWebIdentity for {role_arn} failed ({}{}{code})",
                resp.status.as_u16(),
                if code.is_empty() { "" } else { ": " }
            )));
        }
        match (
            xml_field(&text, "AccessKeyId"),
            xml_field(&text, "SecretAccessKey"),
            xml_field(&text, "SessionToken"),
        ) {
            (Some(id), Some(secret), token) => Ok((
                Credentials {
                    access_key_id: id,
                    secret_access_key: Zeroizing::new(secret),
                    session_token: token.map(Zeroizing::new),
                },
                // STS's default session is an hour.
                Some(
                    xml_field(&text, "Expiration")
                        .and_then(|e| seconds_until(&e))
                        .unwrap_or(3600),
                ),
            )),
            _ => Err(ProviderError::backend("sts response has no credentials")),
        }
    }

    async fn get_secret_value(&self, req: &Request) -> Result<SecretValue, ProviderError> {
        self.values
            .get_or_fetch(req.clone(), || self.fetch(req))
            .await
    }

    async fn fetch(&self, req: &Request) -> Result<SecretValue, ProviderError> {
        let creds = self.credentials().await?;
        let mut payload = json!({ "SecretId": req.reference });
        if let Some(v) = &req.version {
            let field = if is_version_id(v) {
                "VersionId"
            } else {
                "VersionStage"
            };
            payload[field] = Value::String(v.clone());
        }
        let body = payload.to_string();
        let uri: hyper::Uri = format!("{}/", self.endpoint)
            .parse()
            .map_err(|_| ProviderError::config(format!("invalid endpoint {:?}", self.endpoint)))?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| {
                ProviderError::config(format!("endpoint {:?} has no host", self.endpoint))
            })?;
        let content_type = "application/x-amz-json-1.1";
        let target = "secretsmanager.GetSecretValue";
        let signed = sigv4::sign(
            &sigv4::SignRequest {
                method: "POST",
                path: "/",
                query: &[],
                headers: &[
                    ("content-type", content_type),
                    ("host", &host),
                    ("x-amz-target", target),
                ],
                body: body.as_bytes(),
                region: &self.region,
                service: "secretsmanager",
            },
            &creds,
            crate::time::Utc::now(),
        );
        let mut b = hyper::Request::post(uri)
            .header("content-type", content_type)
            .header("host", &host)
            .header("x-amz-target", target);
        for (k, v) in signed {
            b = b.header(k, v);
        }
        let http_req = b
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProviderError::config(e.to_string()))?;
        let resp = self
            .client
            .send(http_req, crate::config::DEFAULT_TIMEOUT)
            .await?;
        if !resp.status.is_success() {
            return Err(aws_error(&resp));
        }
        let v: Value = resp.json().map_err(ProviderError::backend)?;
        let text = match (
            v.get("SecretString").and_then(Value::as_str),
            v.get("SecretBinary").and_then(Value::as_str),
        ) {
            (Some(s), _) => Zeroizing::new(s.to_string()),
            (None, Some(b64)) => {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| ProviderError::backend("SecretBinary is not base64"))?;
                Zeroizing::new(
                    String::from_utf8(raw)
                        .map_err(|_| ProviderError::backend("SecretBinary is not utf-8 text"))?,
                )
            }
            _ => {
                return Err(ProviderError::backend(
                    "response has neither SecretString nor SecretBinary",
                ))
            }
        };
        match &req.key {
            Some(k) => pick_key(&text, k),
            None => Ok(SecretValue::new(text.as_str())),
        }
    }
}

/// Maps an AWS error response (JSON `__type`, or an XML `<Code>`) to a provider error.
fn aws_error(resp: &crate::http::Response) -> ProviderError {
    let ty = match resp.json() {
        Ok(v) => v
            .get("__type")
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            .unwrap_or_default(),
        Err(_) => xml_field(&String::from_utf8_lossy(&resp.body), "Code").unwrap_or_default(),
    };
    let code = resp.status.as_u16();
    match ty.as_str() {
        "ResourceNotFoundException" => ProviderError::not_found(format!("not found ({ty})")),
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "ExpiredTokenException"
        | "IncompleteSignature" => ProviderError::denied(format!("access denied ({code} {ty})")),
        "" if code == 403 => ProviderError::denied(format!("access denied ({code})")),
        "" => ProviderError::backend(format!("aws error ({code})")),
        _ => ProviderError::backend(format!("aws error ({code} {ty})")),
    }
}

impl Provider for AwsSmProvider {
    fn resolve<'a>(
        &'a self,
        req: &'a Request,
    ) -> BoxFuture<'a, Result<SecretValue, ProviderError>> {
        Box::pin(self.get_secret_value(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_and_version_ids() {
        let ini =
            parse_ini("[default]\naws_access_key_id = A\n# c\n[profile dev]\nregion=eu-west-1\n");
        assert_eq!(ini["default"]["aws_access_key_id"], "A");
        assert_eq!(config_profile(&ini, "dev").unwrap()["region"], "eu-west-1");
        assert!(is_version_id("01234567-89ab-cdef-0123-456789abcdef"));
        assert!(!is_version_id("AWSPREVIOUS"));
        let later = crate::time::Utc::from_system(
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        )
        .rfc3339();
        let left = seconds_until(&later).unwrap();
        assert!((3590..=3601).contains(&left), "{later}: {left}");
        assert_eq!(
            xml_field("<a><Code>X</Code></a>", "Code").as_deref(),
            Some("X")
        );
    }
}
