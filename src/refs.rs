//! Secret refs: one parser per provider, used wherever a ref is read (the config's table form
//! and URI shorthand, the policy server's `/v1/resolve`, MCP) and by policy matching.
//!
//! A ref is parsed into one canonical spelling (`SecretRef`): the provider's path with `#key`
//! and `?version=` taken out into their own fields, every segment checked. Anything that could
//! make two spellings name one secret is refused rather than repaired: empty, `.` or `..`
//! segments, percent-encoding, backslashes, control characters, and `?` or `#` outside their
//! structured meaning. Providers build their URLs from these parts, so what a policy decided on
//! is exactly what is read. (Vault's CLI spelling of a KV v2 path is normalised to the API form
//! by the Vault provider, which knows the mount; see `provider::vault`.)

use std::fmt;

/// The backends a secret can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProviderKind {
    Local,
    Env,
    File,
    Vault,
    AwsSm,
    OnePassword,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::Local,
        ProviderKind::Env,
        ProviderKind::File,
        ProviderKind::Vault,
        ProviderKind::AwsSm,
        ProviderKind::OnePassword,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Env => "env",
            ProviderKind::File => "file",
            ProviderKind::Vault => "vault",
            ProviderKind::AwsSm => "aws-sm",
            ProviderKind::OnePassword => "1password",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `name` can be an environment variable (letters, digits and `_`, not starting with a
/// digit).
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A parsed, canonical ref.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretRef {
    pub provider: ProviderKind,
    /// What the provider reads, without `#` or `?` parts: a Vault path, an AWS secret name or
    /// ARN, `op://vault/item[/section]/field`, a local store name, a variable, a file path.
    pub reference: String,
    pub key: Option<String>,
    pub version: Option<String>,
}

/// Why a ref is refused; the message names the part at fault, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRef {
    #[error("empty ref")]
    Empty,
    #[error("ref contains a control character")]
    Control,
    #[error("{0} refs take no '#' part")]
    NoKeyPart(ProviderKind),
    #[error("empty key after '#'")]
    EmptyKey,
    #[error("{0} refs take no '?' part")]
    NoQueryPart(ProviderKind),
    #[error("unexpected query {0:?} (only ?version=... is understood)")]
    Query(String),
    #[error("the ref's {0} {1:?} and {0} = {2:?} disagree")]
    Disagree(&'static str, String, String),
    #[error("key {0:?} contains '#', '?' or a control character")]
    Key(String),
    #[error("vault version {0:?} must be a number")]
    VaultVersion(String),
    #[error("aws-sm version {0:?} must be a version id or a staging label")]
    AwsVersion(String),
    #[error("1password ref {0:?} must look like op://vault/item[/section]/field")]
    OnePasswordShape(String),
    #[error("{0} secrets do not take a version")]
    NoVersion(ProviderKind),
    #[error("{0} secrets take neither key nor version")]
    NeitherKeyNorVersion(ProviderKind),
    #[error("env ref {0:?} is not a variable name")]
    EnvName(String),
    #[error("{0}")]
    Path(crate::policy::glob::RefError),
    #[error("ref contains '?' or '#' outside its key or version")]
    StrayQueryOrKey,
    #[error("aws-sm ref {0:?} is not a secretsmanager arn (arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME)")]
    Arn(String),
    #[error("aws-sm name {0:?} may only hold letters, digits and /_+=.@-")]
    AwsName(String),
}

/// Parses `reference` as `provider` spells it; `key` and `version` are the table form's own
/// fields, which must agree with a `#key` or `?version=` inside the ref.
pub fn parse(
    provider: ProviderKind,
    reference: &str,
    key: Option<&str>,
    version: Option<&str>,
) -> Result<SecretRef, BadRef> {
    if reference.is_empty() {
        return Err(BadRef::Empty);
    }
    if reference.chars().any(|c| c.is_control()) {
        return Err(BadRef::Control);
    }
    let structured = matches!(
        provider,
        ProviderKind::Vault | ProviderKind::AwsSm | ProviderKind::File
    );
    let (rest, inline_key) = match reference.split_once('#') {
        Some(_) if !structured => {
            return Err(BadRef::NoKeyPart(provider));
        }
        Some((_, "")) => return Err(BadRef::EmptyKey),
        Some((r, k)) => (r, Some(k)),
        None => (reference, None),
    };
    let (path, inline_version) = match rest.split_once('?') {
        Some(_) if !matches!(provider, ProviderKind::Vault | ProviderKind::AwsSm) => {
            return Err(BadRef::NoQueryPart(provider));
        }
        Some((p, q)) => match q.split_once('=') {
            Some(("version", v)) if !v.is_empty() && !v.contains(['&', '=', '?']) => (p, Some(v)),
            _ => return Err(BadRef::Query(q.into())),
        },
        None => (rest, None),
    };
    let key = agree("key", inline_key, key)?;
    let version = agree("version", inline_version, version)?;
    if let Some(k) = &key {
        if k.contains(['#', '?']) || k.chars().any(|c| c.is_control()) {
            return Err(BadRef::Key(k.clone()));
        }
    }
    match provider {
        ProviderKind::Vault => {
            segments(path)?;
            if let Some(v) = &version {
                if !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<u64>().is_err() {
                    return Err(BadRef::VaultVersion(v.clone()));
                }
            }
        }
        ProviderKind::AwsSm => {
            aws_name(path)?;
            if let Some(v) = &version {
                if v.len() > 64
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(BadRef::AwsVersion(v.clone()));
                }
            }
        }
        ProviderKind::OnePassword => {
            let op_shape = || BadRef::OnePasswordShape(path.into());
            let rest = path.strip_prefix("op://").ok_or_else(op_shape)?;
            let parts = segments(rest).map_err(|_| op_shape())?;
            if !(3..=4).contains(&parts.len()) {
                return Err(op_shape());
            }
            if version.is_some() {
                return Err(BadRef::NoVersion(provider));
            }
        }
        ProviderKind::Local => {
            segments(path)?;
            if key.is_some() || version.is_some() {
                return Err(BadRef::NeitherKeyNorVersion(provider));
            }
        }
        ProviderKind::Env => {
            if !valid_env_name(path) {
                return Err(BadRef::EnvName(path.into()));
            }
            if key.is_some() || version.is_some() {
                return Err(BadRef::NeitherKeyNorVersion(provider));
            }
        }
        ProviderKind::File => {
            if version.is_some() {
                return Err(BadRef::NoVersion(provider));
            }
        }
    }
    Ok(SecretRef {
        provider,
        reference: path.to_string(),
        key,
        version,
    })
}

fn agree(
    what: &'static str,
    inline: Option<&str>,
    field: Option<&str>,
) -> Result<Option<String>, BadRef> {
    match (inline, field) {
        (Some(a), Some(b)) if a != b => Err(BadRef::Disagree(what, a.into(), b.into())),
        (a, b) => Ok(a.or(b).map(String::from)),
    }
}

/// The `/`-separated segments of a path, each checked.
pub fn segments(path: &str) -> Result<Vec<&str>, BadRef> {
    crate::policy::glob::canonicalize(path)
        .map_err(BadRef::Path)
        .and_then(|s| {
            if path.contains(['?', '#']) {
                Err(BadRef::StrayQueryOrKey)
            } else {
                Ok(s)
            }
        })
}

/// An AWS secret name (`[A-Za-z0-9/_+=.@-]`) or a Secrets Manager ARN.
fn aws_name(path: &str) -> Result<(), BadRef> {
    let name = match path.strip_prefix("arn:") {
        Some(rest) => {
            let parts: Vec<&str> = rest.splitn(6, ':').collect();
            match parts.as_slice() {
                [_, "secretsmanager", _, _, "secret", name] if !name.is_empty() => *name,
                _ => return Err(BadRef::Arn(path.into())),
            }
        }
        None => path,
    };
    if name.len() > 512
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
    {
        return Err(BadRef::AwsName(name.into()));
    }
    segments(name).map(|_| ())
}

impl SecretRef {
    /// The paths policies match for this ref (a decision must allow every one): the secret's
    /// path, never its key, so a pattern covering a secret covers all its keys.
    /// - Vault: the canonical API path (`secret/data/prod/github`).
    /// - AWS: the secret's name; for an ARN the name in it, and, when it ends like AWS's random
    ///   suffix (`-` and six characters), also the name without it (either may be meant).
    /// - 1Password: `vault/item` (the item is the secret; its fields are keys).
    /// - local, env, file: the name, variable or path.
    pub fn policy_paths(&self) -> Vec<String> {
        match self.provider {
            ProviderKind::AwsSm => {
                let name = self
                    .reference
                    .strip_prefix("arn:")
                    .and_then(|r| r.splitn(6, ':').nth(5))
                    .unwrap_or(&self.reference);
                let mut out = vec![name.to_string()];
                if self.reference.starts_with("arn:") {
                    if let Some((base, suffix)) = name.rsplit_once('-') {
                        if suffix.len() == 6
                            && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
                            && !base.is_empty()
                        {
                            out.insert(0, base.to_string());
                        }
                    }
                }
                out
            }
            ProviderKind::OnePassword => {
                let rest = self.reference.trim_start_matches("op://");
                let mut it = rest.split('/');
                let vault = it.next().unwrap_or_default();
                let item = it.next().unwrap_or_default();
                vec![format!("{vault}/{item}")]
            }
            _ => vec![self.reference.clone()],
        }
    }

    /// The ref as users write it: `path#key` (`?version=` shown too).
    pub fn display(&self) -> String {
        let mut s = self.reference.clone();
        if let Some(v) = &self.version {
            s.push_str(&format!("?version={v}"));
        }
        if let Some(k) = &self.key {
            s.push('#');
            s.push_str(k);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProviderKind::*;

    #[test]
    fn key_and_version_come_out_of_the_ref_and_must_agree() {
        let r = parse(Vault, "secret/data/prod/github#token", None, Some("1")).unwrap();
        assert_eq!(r.reference, "secret/data/prod/github");
        assert_eq!(r.key.as_deref(), Some("token"));
        assert_eq!(r.version.as_deref(), Some("1"));
        let r = parse(
            Vault,
            "secret/data/prod/github?version=2#token",
            Some("token"),
            None,
        )
        .unwrap();
        assert_eq!(
            (r.key.as_deref(), r.version.as_deref()),
            (Some("token"), Some("2"))
        );
        assert_eq!(
            parse(Vault, "secret/data/x#a", Some("b"), None).unwrap_err(),
            BadRef::Disagree("key", "a".into(), "b".into())
        );
        assert!(parse(Vault, "secret/data/x?version=1", None, Some("2")).is_err());
    }

    #[test]
    fn every_ambiguous_spelling_is_refused() {
        for bad in [
            "secret/data/prod/github#",
            "secret/data/prod/github?",
            "secret/data/prod/github?v=1",
            "secret/data/prod/github?version=1&x=2",
            "secret/data/prod/github?version=one",
            "secret/data/prod/../prod/github",
            "secret/data/prod/./github",
            "secret/data//prod/github",
            "/secret/data/prod/github",
            "secret/data/prod/github/",
            "secret/data/prod/%67ithub",
            "secret/data/prod\\github",
            "secret/data/prod/git\nhub",
            "secret/data/prod/github#to?ken",
        ] {
            assert!(
                parse(Vault, bad, None, None).is_err(),
                "{bad:?} was accepted"
            );
        }
        for bad in [
            "op://Dev/Item",
            "op://Dev/Item/f?attribute=otp",
            "op://Dev//f",
            "op://Dev/../f",
        ] {
            assert!(parse(OnePassword, bad, None, None).is_err(), "{bad:?}");
        }
        for bad in [
            "prod/db#",
            "prod/db?x",
            "prod db",
            "prod/../db",
            "arn:aws:s3:::bucket",
        ] {
            assert!(parse(AwsSm, bad, None, None).is_err(), "{bad:?}");
        }
        assert!(parse(Local, "openai#k", None, None).is_err());
        assert!(parse(Env, "A-B", None, None).is_err());
    }

    #[test]
    fn policy_paths_name_the_secret_not_its_key() {
        let r = parse(Vault, "secret/data/prod/github#/public", None, None).unwrap();
        assert_eq!(r.policy_paths(), ["secret/data/prod/github"]);
        let r = parse(OnePassword, "op://Prod/Stripe/live/key", None, None).unwrap();
        assert_eq!(r.policy_paths(), ["Prod/Stripe"]);
        let r = parse(
            AwsSm,
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf#password",
            None,
            None,
        )
        .unwrap();
        assert_eq!(r.policy_paths(), ["prod/db", "prod/db-AbCdEf"]);
        assert_eq!(
            parse(AwsSm, "prod/db", None, None).unwrap().policy_paths(),
            ["prod/db"]
        );
    }
}
