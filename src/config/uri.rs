//! The URI shorthand for a secret: `vault://secret/data/app#token`, `aws-sm://prod/db?version=AWSPREVIOUS#password`,
//! `op://Dev/OpenAI/api-key`, `local://openai`, `env://CI_KEY`, `file:///run/secrets/db.json#/password`.

use super::ProviderKind;

#[derive(Debug, PartialEq, Eq)]
pub struct Parts {
    pub provider: ProviderKind,
    pub reference: String,
    pub key: Option<String>,
    pub version: Option<String>,
    pub optional: bool,
}

/// Why a string is not a secret URI (or names a ref that is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShorthandError {
    #[error("{0:?} is not a secret uri (examples: \"vault://secret/data/app#token\", \"op://Dev/OpenAI/api-key\")")]
    NotUri(String),
    #[error("unknown provider {0:?} in {1:?} (expected vault, aws-sm, op, local, env or file)")]
    Provider(String, String),
    #[error("unknown query parameter {0:?} in {1:?} (expected version=... or optional=true)")]
    Parameter(String, String),
    #[error("{0:?} has no path after {1}://")]
    NoPath(String, String),
    #[error(transparent)]
    Ref(#[from] crate::refs::BadRef),
}

pub fn parse_shorthand(s: &str) -> Result<Parts, ShorthandError> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(ShorthandError::NotUri(s.into()));
    };
    // 1Password's own reference syntax is already a uri; keep it whole.
    if scheme == "op" || scheme == "1password" {
        return Ok(Parts {
            provider: ProviderKind::OnePassword,
            reference: format!("op://{rest}"),
            key: None,
            version: None,
            optional: false,
        });
    }
    let provider = ProviderKind::parse(scheme)
        .ok_or_else(|| ShorthandError::Provider(scheme.into(), s.into()))?;
    let (rest, key) = match rest.split_once('#') {
        Some((r, k)) if !k.is_empty() => (r, Some(k.to_string())),
        Some((r, _)) => (r, None),
        None => (rest, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut version = None;
    let mut optional = false;
    for pair in query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("version", v)) if !v.is_empty() => version = Some(v.to_string()),
            Some(("optional", "true")) => optional = true,
            Some(("optional", "false")) => optional = false,
            _ => return Err(ShorthandError::Parameter(pair.into(), s.into())),
        }
    }
    if path.is_empty() {
        return Err(ShorthandError::NoPath(s.into(), scheme.into()));
    }
    Ok(Parts {
        provider,
        reference: path.to_string(),
        key,
        version,
        optional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthand_forms() {
        let p = parse_shorthand("vault://secret/data/prod/github#token").unwrap();
        assert_eq!(p.provider, ProviderKind::Vault);
        assert_eq!(p.reference, "secret/data/prod/github");
        assert_eq!(p.key.as_deref(), Some("token"));
        let p = parse_shorthand("op://Dev/OpenAI/api-key").unwrap();
        assert_eq!(p.reference, "op://Dev/OpenAI/api-key");
        let p = parse_shorthand("file:///run/secrets/db.json#/password").unwrap();
        assert_eq!(p.reference, "/run/secrets/db.json");
        assert_eq!(p.key.as_deref(), Some("/password"));
        let p = parse_shorthand("aws-sm://prod/db?version=AWSPREVIOUS&optional=true#pw").unwrap();
        assert_eq!(p.version.as_deref(), Some("AWSPREVIOUS"));
        assert!(p.optional);
        assert!(parse_shorthand("nope").is_err());
        assert!(parse_shorthand("s3://bucket/x").is_err());
        assert!(parse_shorthand("vault://x?ttl=3").is_err());
    }
}
