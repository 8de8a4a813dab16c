//! A loaded bundle, ready to answer: issuer keys resolved (env, PEM files, JWKS), providers
//! built, and the decision function that applies canonicalisation, globs, CEL and
//! deny-overrides.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use crate::config::bundle::Bundle;
use crate::config::ProviderKind;
use crate::env::Env;
use crate::policy::decide::{decide, Decision, Outcome};
use crate::policy::glob::canonicalize;
use crate::policy::jwt::{self, IssuerKeys, Key};
use crate::provider::ProviderSet;

pub struct Engine {
    pub bundle: Bundle,
    pub issuers: Vec<IssuerKeys>,
    pub providers: ProviderSet,
}

/// What a decision was about.
pub struct Subject<'a> {
    pub reference: &'a str,
    pub provider: Option<ProviderKind>,
    pub name: Option<&'a str>,
    pub action: &'a str,
}

impl Engine {
    /// Resolves issuer keys (fetching JWKS documents) and builds providers.
    pub async fn load(bundle: Bundle, env: Arc<dyn Env>) -> Result<Engine, Vec<String>> {
        let mut problems = Vec::new();
        let mut issuers = Vec::new();
        let client = crate::http::HttpClient::new(&[]).map_err(|e| vec![e])?;
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
                    .and_then(|pem| jwt::key_from_pem(&pem))
                {
                    Ok(k) => keys.push((None, k)),
                    Err(e) => problems.push(format!("issuer {}: {}: {e}", i.issuer, f.display())),
                }
            }
            if let Some(url) = &i.jwks_url {
                match fetch_jwks(&client, url).await {
                    Ok(k) => keys.extend(k),
                    Err(e) => problems.push(format!("issuer {}: jwks {url}: {e}", i.issuer)),
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
        let providers = ProviderSet::build(&bundle.config, env);
        Ok(Engine {
            bundle,
            issuers,
            providers,
        })
    }

    pub fn decide(&self, claims: &Map<String, Value>, s: &Subject<'_>) -> Decision {
        let Ok(segments) = canonicalize(s.reference) else {
            return Decision {
                allowed: false,
                reveal: false,
                matched: Vec::new(),
            };
        };
        let identity = Value::Object(claims.clone());
        let secret = json!({
            "ref": s.reference,
            "provider": s.provider.map(|p| p.name()).unwrap_or(""),
            "name": s.name.unwrap_or(""),
        });
        let request = json!({"action": s.action, "time": crate::time::Utc::now().rfc3339()});
        let mut outcomes = Vec::new();
        for p in &self.bundle.policies {
            if !p.glob.matches(&segments) {
                continue;
            }
            for (i, r) in p.rules.iter().enumerate() {
                outcomes.push(Outcome {
                    rule: format!("{}#{i}", p.glob.source),
                    effect: r.effect,
                    result: r.condition.eval(&identity, &secret, &request),
                });
            }
        }
        decide(&outcomes)
    }
}

async fn fetch_jwks(
    client: &crate::http::HttpClient,
    url: &str,
) -> Result<Vec<(Option<String>, Key)>, String> {
    let req = hyper::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = client
        .send(req, std::time::Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status.is_success() {
        return Err(format!("http {}", resp.status.as_u16()));
    }
    Ok(jwt::keys_from_jwks(&resp.json()?))
}
