//! Secret refs as paths: canonicalisation that refuses every ambiguous spelling, and globs where
//! `*` matches one segment and `**` any number of segments (including none).

/// Why a ref was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("empty ref")]
    Empty,
    #[error("ref contains a NUL byte")]
    Nul,
    #[error("ref contains an empty segment")]
    EmptySegment,
    #[error("ref contains a '.' or '..' segment")]
    DotSegment,
    #[error("ref contains a percent-encoded byte")]
    Encoded,
    #[error("ref contains a backslash")]
    Backslash,
}

/// The canonical form of a ref: its segments, checked. A ref is refused rather than repaired,
/// so two different spellings can never name the same secret.
pub fn canonicalize(r: &str) -> Result<Vec<&str>, RefError> {
    if r.is_empty() {
        return Err(RefError::Empty);
    }
    if r.contains('\0') {
        return Err(RefError::Nul);
    }
    if r.contains('%') {
        return Err(RefError::Encoded);
    }
    if r.contains('\\') {
        return Err(RefError::Backslash);
    }
    let segments: Vec<&str> = r.split('/').collect();
    for s in &segments {
        if s.is_empty() {
            return Err(RefError::EmptySegment);
        }
        if *s == "." || *s == ".." {
            return Err(RefError::DotSegment);
        }
    }
    Ok(segments)
}

/// A compiled `match` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    segments: Vec<GlobSegment>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobSegment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: any number of segments.
    Any,
}

/// Why a policy path pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("pattern {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("pattern {0:?}: '*' must be a whole segment (\"*\" or \"**\")")]
    PartialStar(String),
    #[error("pattern {0:?} has a '.', '..' or encoded segment")]
    DotOrEncoded(String),
}

impl Glob {
    pub fn parse(pattern: &str) -> Result<Glob, GlobError> {
        let mut segments = Vec::new();
        for s in pattern.split('/') {
            segments.push(match s {
                "" => return Err(GlobError::EmptySegment(pattern.into())),
                "*" => GlobSegment::One,
                "**" => GlobSegment::Any,
                s if s.contains('*') => return Err(GlobError::PartialStar(pattern.into())),
                s if s == "." || s == ".." || s.contains('%') => {
                    return Err(GlobError::DotOrEncoded(pattern.into()))
                }
                s => GlobSegment::Literal(s.to_string()),
            });
        }
        Ok(Glob {
            segments,
            source: pattern.to_string(),
        })
    }

    /// The literal segments before the first wildcard (every ref this glob matches starts with
    /// them), for indexing.
    pub fn literal_prefix(&self) -> Vec<String> {
        self.segments
            .iter()
            .map_while(|s| match s {
                GlobSegment::Literal(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether the canonical `segments` of a ref match (case-sensitively).
    pub fn matches(&self, segments: &[&str]) -> bool {
        fn go(p: &[GlobSegment], s: &[&str]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some((GlobSegment::Any, rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
                Some((GlobSegment::One, rest)) => !s.is_empty() && go(rest, &s[1..]),
                Some((GlobSegment::Literal(l), rest)) => {
                    s.first().is_some_and(|x| x == l) && go(rest, &s[1..])
                }
            }
        }
        go(&self.segments, segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_refs_and_attacks() {
        assert_eq!(
            canonicalize("secret/data/prod/db").unwrap(),
            vec!["secret", "data", "prod", "db"]
        );
        for (bad, err) in [
            ("", RefError::Empty),
            ("secret/data/prod/../staging/db", RefError::DotSegment),
            ("secret/./data", RefError::DotSegment),
            ("secret/data%2Fprod/db", RefError::Encoded),
            ("secret//data/prod", RefError::EmptySegment),
            ("secret/data/prod/", RefError::EmptySegment),
            ("/secret/data", RefError::EmptySegment),
            ("secret/data\0/x", RefError::Nul),
            ("secret\\data", RefError::Backslash),
        ] {
            assert_eq!(canonicalize(bad), Err(err), "{bad:?}");
        }
    }

    #[test]
    fn globs() {
        let g = Glob::parse("secret/data/prod/**").unwrap();
        let m = |r: &str| g.matches(&canonicalize(r).unwrap());
        assert!(m("secret/data/prod/db"));
        assert!(m("secret/data/prod/a/b/c"));
        assert!(m("secret/data/prod"), "** also matches no segment");
        assert!(!m("secret/data/production/db"));
        assert!(!m("secret/data/Prod/db"), "case matters");
        let one = Glob::parse("secret/*/prod").unwrap();
        assert!(one.matches(&["secret", "data", "prod"]));
        assert!(!one.matches(&["secret", "a", "b", "prod"]));
        let mid = Glob::parse("kv/**/token").unwrap();
        assert!(mid.matches(&["kv", "token"]));
        assert!(mid.matches(&["kv", "a", "b", "token"]));
        assert!(!mid.matches(&["kv", "a", "tokens"]));
        for bad in ["a//b", "a/b*/c", "a/../b", "a/%2e/b"] {
            assert!(Glob::parse(bad).is_err(), "{bad}");
        }
    }
}
