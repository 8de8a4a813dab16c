//! `bundle.yaml` for the policy server: `identity` (issuers), `providers`, `network`, `secrets`
//! (same keys as `.keyzero.toml`) and `policies`. Every CEL rule is compiled at load; a bundle
//! with any problem is rejected whole, with every problem listed.
//!
//! Longer than 400 lines because it validates one whole file format, every section reporting
//! its problems into one list.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::reader::{unknown_key_message, Problems};
use super::{Config, ConfigError};
use crate::policy::cel::Condition;
use crate::policy::decide::Effect;
use crate::policy::glob::Glob;
use crate::policy::jwt::Alg;

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    /// HS*: the environment variable holding the shared key.
    pub secret_env: Option<String>,
    pub public_key_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// A CA to trust for `jwks_url` besides the system roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// A file holding a bearer token sent with the JWKS request (read each time).
    pub jwks_token_file: Option<PathBuf>,
    /// Least time between two JWKS fetches triggered by unknown key ids.
    pub jwks_min_refresh: std::time::Duration,
}

#[derive(Debug)]
pub struct Rule {
    pub condition: Condition,
    pub effect: Effect,
}

#[derive(Debug)]
pub struct Policy {
    pub glob: Glob,
    /// `provider:`: the policy applies to this provider's refs only.
    pub provider: Option<crate::config::ProviderKind>,
    pub rules: Vec<Rule>,
}

#[derive(Debug)]
pub struct Bundle {
    /// First 12 hex digits of the SHA-256 of the file.
    pub revision: String,
    pub issuers: Vec<Issuer>,
    /// Providers, network and named secrets, validated as in `.keyzero.toml`.
    pub config: Config,
    pub policies: Vec<Policy>,
    /// Policies by the literal prefix of their `match`, so a decision only looks at policies
    /// that can apply (cost grows with the prefix lengths in use, not the number of policies).
    index: std::collections::HashMap<Vec<String>, Vec<usize>>,
    prefix_lengths: Vec<usize>,
}

impl Bundle {
    /// The policies whose `match` covers these canonical segments (and whose `provider:`, if
    /// any, is `provider`), in bundle order.
    pub fn applicable(
        &self,
        segments: &[&str],
        provider: Option<crate::config::ProviderKind>,
    ) -> Vec<&Policy> {
        let mut idx: Vec<usize> = Vec::new();
        for &len in &self.prefix_lengths {
            if len > segments.len() {
                continue;
            }
            let key: Vec<String> = segments[..len].iter().map(|s| s.to_string()).collect();
            if let Some(list) = self.index.get(&key) {
                idx.extend(list.iter().copied().filter(|&i| {
                    let p = &self.policies[i];
                    p.glob.matches(segments) && p.provider.map_or(true, |k| Some(k) == provider)
                }));
            }
        }
        idx.sort_unstable();
        idx.into_iter().map(|i| &self.policies[i]).collect()
    }
}

fn to_toml(v: &Value) -> Option<toml::Value> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(a) => toml::Value::Array(a.iter().filter_map(to_toml).collect()),
        Value::Object(m) => toml::Value::Table(
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), to_toml(v)?)))
                .collect(),
        ),
    })
}

fn strings(v: &Value, path: &str, p: &mut Problems) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .filter_map(|(i, x)| match x.as_str() {
                Some(s) => Some(s.to_string()),
                None => {
                    p.push(&format!("{path}[{i}]"), "expected a string");
                    None
                }
            })
            .collect(),
        _ => {
            p.push(path, "expected a list of strings");
            Vec::new()
        }
    }
}

fn check_keys(obj: &serde_json::Map<String, Value>, path: &str, known: &[&str], p: &mut Problems) {
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            let full = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            p.push(&full, unknown_key_message(k, known));
        }
    }
}

fn parse_issuer(v: &Value, path: &str, base: &Path, p: &mut Problems) -> Option<Issuer> {
    let Value::Object(o) = v else {
        p.push(path, "expected a mapping");
        return None;
    };
    check_keys(
        o,
        path,
        &[
            "issuer",
            "audiences",
            "algorithms",
            "secret_env",
            "public_key_file",
            "jwks_url",
            "jwks_ca_file",
            "jwks_token_file",
            "jwks_min_refresh",
        ],
        p,
    );
    let before = p.0.len();
    let issuer = o.get("issuer").and_then(Value::as_str).map(String::from);
    if issuer.is_none() {
        p.push(&format!("{path}.issuer"), "missing");
    }
    let audiences = o
        .get("audiences")
        .map(|a| strings(a, &format!("{path}.audiences"), p))
        .unwrap_or_default();
    if audiences.is_empty() {
        p.push(
            &format!("{path}.audiences"),
            "missing (list the audiences tokens must carry)",
        );
    }
    let mut algorithms = Vec::new();
    match o.get("algorithms") {
        None => p.push(
            &format!("{path}.algorithms"),
            "missing (pin the algorithms this issuer signs with)",
        ),
        Some(a) => {
            for (i, name) in strings(a, &format!("{path}.algorithms"), p)
                .iter()
                .enumerate()
            {
                match Alg::parse(name) {
                    Some(alg) => algorithms.push(alg),
                    None => p.push(
                        &format!("{path}.algorithms[{i}]"),
                        format!("unsupported algorithm {name:?}"),
                    ),
                }
            }
        }
    }
    let s = |k: &str| o.get(k).and_then(Value::as_str).map(String::from);
    let secret_env = s("secret_env");
    let public_key_file = s("public_key_file").map(|f| base.join(f));
    let jwks_url = s("jwks_url");
    let jwks_ca_file = s("jwks_ca_file").map(|f| base.join(f));
    let jwks_token_file = s("jwks_token_file").map(|f| base.join(f));
    if jwks_url.is_none() && (jwks_ca_file.is_some() || jwks_token_file.is_some()) {
        p.push(path, "jwks_ca_file and jwks_token_file need jwks_url");
    }
    if jwks_token_file.is_some()
        && jwks_url
            .as_ref()
            .is_some_and(|u| !u.starts_with("https://"))
    {
        p.push(
            &format!("{path}.jwks_token_file"),
            "a bearer token is only sent to an https jwks_url",
        );
    }
    let jwks_min_refresh = match s("jwks_min_refresh") {
        None => std::time::Duration::from_secs(30),
        Some(d) => humantime::parse_duration(&d).unwrap_or_else(|_| {
            p.push(
                &format!("{path}.jwks_min_refresh"),
                format!("invalid duration {d:?}"),
            );
            std::time::Duration::from_secs(30)
        }),
    };
    let hmac = algorithms.iter().any(|a| a.is_hmac());
    let asym = algorithms.iter().any(|a| !a.is_hmac());
    if hmac && asym {
        p.push(
            &format!("{path}.algorithms"),
            "mixes HMAC and public-key algorithms; use separate issuers",
        );
    }
    if hmac && secret_env.is_none() {
        p.push(path, "HS algorithms need secret_env");
    }
    if asym && public_key_file.is_none() && jwks_url.is_none() {
        p.push(
            path,
            "public-key algorithms need public_key_file or jwks_url",
        );
    }
    if p.0.len() > before {
        return None;
    }
    Some(Issuer {
        issuer: issuer?,
        audiences,
        algorithms,
        secret_env,
        public_key_file,
        jwks_url,
        jwks_ca_file,
        jwks_token_file,
        jwks_min_refresh,
    })
}

fn parse_policy(v: &Value, path: &str, p: &mut Problems) -> Option<Policy> {
    let Value::Object(o) = v else {
        p.push(path, "expected a mapping with match and rules");
        return None;
    };
    check_keys(o, path, &["match", "provider", "rules"], p);
    let mut provider = match o.get("provider") {
        None => None,
        Some(v) => match v.as_str().and_then(crate::config::ProviderKind::parse) {
            Some(k) => Some(k),
            None => {
                p.push(
                    &format!("{path}.provider"),
                    format!("unknown provider {v} (vault, aws-sm, 1password, local, env or file)"),
                );
                None
            }
        },
    };
    let glob = match o.get("match").and_then(Value::as_str) {
        // 1Password patterns may keep the `op://` of the refs they cover.
        Some(m) => match m.strip_prefix("op://") {
            Some(rest)
                if provider.map_or(true, |k| k == crate::config::ProviderKind::OnePassword) =>
            {
                provider = Some(crate::config::ProviderKind::OnePassword);
                Glob::parse(rest)
            }
            _ => Glob::parse(m),
        }
        .map_err(|e| p.push(&format!("{path}.match"), e))
        .ok(),
        None => {
            p.push(&format!("{path}.match"), "missing");
            None
        }
    };
    let mut rules = Vec::new();
    match o.get("rules") {
        Some(Value::Array(list)) => {
            for (i, r) in list.iter().enumerate() {
                let rpath = format!("{path}.rules[{i}]");
                let Value::Object(ro) = r else {
                    p.push(&rpath, "expected a mapping with cel and effect");
                    continue;
                };
                check_keys(ro, &rpath, &["cel", "effect"], p);
                let condition = match ro.get("cel").and_then(Value::as_str) {
                    Some(src) => Condition::compile(src)
                        .map_err(|e| p.push(&format!("{rpath}.cel"), e))
                        .ok(),
                    None => {
                        p.push(&format!("{rpath}.cel"), "missing");
                        None
                    }
                };
                let effect = match ro.get("effect").and_then(Value::as_str) {
                    Some(e) => Effect::parse(e)
                        .ok_or_else(|| {
                            p.push(
                                &format!("{rpath}.effect"),
                                format!("unknown effect {e:?} (allow, reveal or deny)"),
                            )
                        })
                        .ok(),
                    None => {
                        p.push(&format!("{rpath}.effect"), "missing");
                        None
                    }
                };
                if let (Some(condition), Some(effect)) = (condition, effect) {
                    rules.push(Rule { condition, effect });
                }
            }
        }
        _ => p.push(
            &format!("{path}.rules"),
            "missing (a list of {cel, effect})",
        ),
    }
    Some(Policy {
        glob: glob?,
        provider,
        rules,
    })
}

/// Parses and validates bundle text; `file` names it in errors, `base` anchors relative paths.
pub fn parse_str(text: &str, file: &str, base: &Path) -> Result<Bundle, ConfigError> {
    let err = |m: String| ConfigError {
        file: file.to_string(),
        problems: vec![m],
    };
    let root: Value = serde_yaml::from_str(text)
        .map_err(|e| err(format!("invalid yaml: {}", e.to_string().to_lowercase())))?;
    let Value::Object(root) = root else {
        return Err(err("expected a mapping at the top".into()));
    };
    let mut p = Problems::default();
    check_keys(
        &root,
        "",
        &["identity", "providers", "network", "secrets", "policies"],
        &mut p,
    );
    let mut issuers = Vec::new();
    match root.get("identity").and_then(|i| i.get("issuers")) {
        Some(Value::Array(list)) => {
            for (i, v) in list.iter().enumerate() {
                if let Some(iss) = parse_issuer(v, &format!("identity.issuers[{i}]"), base, &mut p)
                {
                    issuers.push(iss);
                }
            }
        }
        _ => p.push(
            "identity.issuers",
            "missing (at least one trusted token issuer)",
        ),
    }
    if let Some(Value::Object(id)) = root.get("identity") {
        check_keys(id, "identity", &["issuers"], &mut p);
    }
    let mut table = toml::Table::new();
    for key in ["providers", "network", "secrets"] {
        if let Some(v) = root.get(key).and_then(to_toml) {
            table.insert(key.to_string(), v);
        }
    }
    let config = super::parse_table(&table, base, &mut p);
    let mut policies = Vec::new();
    match root.get("policies") {
        Some(Value::Array(list)) => {
            for (i, v) in list.iter().enumerate() {
                if let Some(pol) = parse_policy(v, &format!("policies[{i}]"), &mut p) {
                    policies.push(pol);
                }
            }
        }
        None => {}
        Some(_) => p.push("policies", "expected a list"),
    }
    if !p.0.is_empty() {
        return Err(ConfigError {
            file: file.to_string(),
            problems: p.0,
        });
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut index: std::collections::HashMap<Vec<String>, Vec<usize>> =
        std::collections::HashMap::new();
    for (i, p) in policies.iter().enumerate() {
        index.entry(p.glob.literal_prefix()).or_default().push(i);
    }
    let mut prefix_lengths: Vec<usize> = index.keys().map(Vec::len).collect();
    prefix_lengths.sort_unstable();
    prefix_lengths.dedup();
    Ok(Bundle {
        revision: digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        issuers,
        config,
        policies,
        index,
        prefix_lengths,
    })
}

pub fn load(path: &Path) -> Result<Bundle, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: shown.clone(),
        problems: vec![format!("cannot read: {}", super::io_reason(&e))],
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    parse_str(&text, &shown, &base)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SEED: &str = r#"
identity:
  issuers:
  - issuer: "https://issuer.example"
    audiences: ["keyzero"]
    algorithms: ["HS256"]
    secret_env: "KZ_JWT_SECRET"
  - issuer: "https://kubernetes.default.svc"
    audiences: ["keyzero"]
    algorithms: ["RS256", "ES256"]
    jwks_url: "https://kubernetes.default.svc/openid/v1/jwks"
providers:
  vault: { address: "https://vault.internal:8200", auth: { method: "kubernetes", role: "keyzero" } }
network:
  allow_private: false
secrets:
  github: { provider: vault, ref: "secret/data/prod/github/token", hosts: ["api.github.com"] }
policies:
- match: "secret/data/prod/**"
  rules:
  - cel: "identity.service == 'data-pipeline-agent'"
    effect: allow
  - cel: "identity.service == 'support-agent'"
    effect: deny
"#;

    #[test]
    fn the_seed_bundle_loads() {
        let b = parse_str(SEED, "bundle.yaml", Path::new("/b")).unwrap();
        assert_eq!(b.issuers.len(), 2);
        assert_eq!(b.config.secrets[0].name, "github");
        assert_eq!(b.policies[0].rules.len(), 2);
        assert_eq!(b.revision.len(), 12);
    }

    #[test]
    fn every_problem_listed() {
        let bad = SEED
            .replace("effect: deny", "effect: dney")
            .replace("identity.service == 'support-agent'", "env.x == 1")
            .replace("secret_env: \"KZ_JWT_SECRET\"", "secret_envv: x")
            .replace("match: \"secret/data/prod/**\"", "match: \"secret//prod\"");
        let e = parse_str(&bad, "bundle.yaml", Path::new("/b"))
            .unwrap_err()
            .to_string();
        for want in [
            "policies[0].rules[1].effect: unknown effect \"dney\"",
            "policies[0].rules[1].cel: rule references env",
            "identity.issuers[0].secret_envv: unknown key (did you mean \"secret_env\"?)",
            "identity.issuers[0]: HS algorithms need secret_env",
            "policies[0].match: pattern \"secret//prod\" has an empty segment",
        ] {
            assert!(e.contains(want), "missing {want:?} in\n{e}");
        }
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;
    use crate::policy::glob::canonicalize;

    /// The prefix index finds exactly the policies a full scan would, in the same order.
    #[test]
    fn index_agrees_with_a_full_scan() {
        let globs = [
            "**",
            "secret/**",
            "secret/*/prod/**",
            "secret/data/prod/**",
            "secret/data/prod/db",
            "kv/*",
            "*/data/**",
            "secret/data/**/token",
        ];
        let mut text = String::from("identity:\n  issuers:\n  - issuer: i\n    audiences: [a]\n    algorithms: [HS256]\n    secret_env: X\npolicies:\n");
        for g in globs {
            text.push_str(&format!(
                "- match: \"{g}\"\n  rules:\n  - cel: \"true\"\n    effect: allow\n"
            ));
        }
        let b = parse_str(&text, "b.yaml", Path::new("/")).unwrap();
        for r in [
            "secret/data/prod/db",
            "secret/data/staging/token",
            "kv/x",
            "kv/x/y",
            "other",
            "secret",
            "a/data/b",
        ] {
            let segs = canonicalize(r).unwrap();
            let scan: Vec<&str> = b
                .policies
                .iter()
                .filter(|p| p.glob.matches(&segs))
                .map(|p| p.glob.source.as_str())
                .collect();
            let indexed: Vec<&str> = b
                .applicable(&segs, None)
                .iter()
                .map(|p| p.glob.source.as_str())
                .collect();
            assert_eq!(scan, indexed, "{r}");
        }
    }
}
