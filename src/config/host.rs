//! Host patterns (`api.example.com`, `*.example.com`, optional `:port`) used by `hosts` and
//! `[network] allow`: parsing and matching, both pure.

use std::fmt;

/// Why a host pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("empty host pattern")]
    Empty,
    #[error(
        "invalid host pattern {0:?}: give a host name, not a url (example: \"api.example.com\")"
    )]
    Url(String),
    #[error("invalid host pattern {0:?}: '*' is only allowed as a whole first label (\"*.example.com\")")]
    Star(String),
    #[error("invalid host pattern {0:?}")]
    Invalid(String),
    #[error("invalid port in host pattern {0:?}")]
    Port(String),
}

/// One host pattern. `*.example.com` matches any name with at least one more label, never
/// `example.com` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case host, without the `*.` prefix for wildcards.
    pub host: String,
    pub wildcard: bool,
    pub port: Option<u16>,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, HostPatternError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(HostPatternError::Empty);
        }
        if s.contains("://") || s.contains('/') {
            return Err(HostPatternError::Url(s.into()));
        }
        let (host, port) = split_port(s)?;
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        if host.contains('*') {
            return Err(HostPatternError::Star(s.into()));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let valid = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        let is_ipv6 = host.starts_with('[') && host.ends_with(']');
        if !valid && !is_ipv6 {
            return Err(HostPatternError::Invalid(s.into()));
        }
        Ok(HostPattern {
            host,
            wildcard,
            port,
        })
    }

    /// Whether `host` (any case, optional trailing dot) on `port` matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if let Some(p) = self.port {
            if p != port {
                return false;
            }
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

fn split_port(s: &str) -> Result<(&str, Option<u16>), HostPatternError> {
    if s.starts_with('[') {
        // [v6]:port
        if let Some(end) = s.find(']') {
            let rest = &s[end + 1..];
            if rest.is_empty() {
                return Ok((s, None));
            }
            if let Some(p) = rest.strip_prefix(':') {
                return parse_port(s, p).map(|p| (&s[..=end], Some(p)));
            }
        }
        return Err(HostPatternError::Invalid(s.into()));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => parse_port(s, p).map(|p| (h, Some(p))),
        None => Ok((s, None)),
    }
}

fn parse_port(whole: &str, p: &str) -> Result<u16, HostPatternError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(HostPatternError::Port(whole.into())),
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// Splits `host:port` / `[v6]:port`, with a default port.
pub fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    authority_parts(authority, default_port).map(|(h, p)| (h.to_ascii_lowercase(), p))
}

/// As `split_authority`, borrowing the host as written (brackets kept, case unchanged).
pub fn authority_parts(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &authority[..end + 2];
        match rest[end + 1..].strip_prefix(':') {
            Some(p) => (host, p.parse().ok()?),
            None => (host, default_port),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard() {
        let p = HostPattern::parse("api.example.com").unwrap();
        assert!(p.matches("API.example.com.", 443));
        assert!(!p.matches("example.com", 443));
        assert!(!p.matches("evilapi.example.com", 443));
        let w = HostPattern::parse("*.slack.com").unwrap();
        assert!(w.matches("hooks.slack.com", 443));
        assert!(w.matches("a.b.slack.com", 443));
        assert!(!w.matches("slack.com", 443));
        assert!(!w.matches("evilslack.com", 443));
        let ported = HostPattern::parse("api.kz.test:8443").unwrap();
        assert!(ported.matches("api.kz.test", 8443));
        assert!(!ported.matches("api.kz.test", 443));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "",
            "https://x.com",
            "a*.b.com",
            "x.com:0",
            "x.com:99999",
            "a..b",
            "x.com/p",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
