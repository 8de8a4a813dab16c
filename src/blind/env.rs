//! The environment a blind-mode child gets: proxy variables, `NO_PROXY` merged (minus every
//! entry that would send a bound host around kz), and the CA bundle in every variable common
//! clients read, a hashed certificate directory and a `WGETRC` naming the bundle.

use crate::config::HostPattern;

/// Variables that point clients at a CA bundle file (system roots + kz's CA).
pub const CA_BUNDLE_VARS: [&str; 12] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "DENO_CERT",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "NIX_SSL_CERT_FILE",
    "HTTPLIB2_CA_CERTS",
];

/// Proxy variables kz sets (and replaces when inherited).
pub const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

const LOCAL_NO_PROXY: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The files a blind run shares with the child.
pub struct CaFiles<'a> {
    /// System roots + kz's CA.
    pub bundle: &'a str,
    /// kz's CA alone.
    pub ca_only: &'a str,
    /// The hashed certificate directory.
    pub cert_dir: &'a str,
    /// The generated wgetrc.
    pub wgetrc: &'a str,
}

/// Whether a `NO_PROXY` entry would exempt some host that `pattern` covers (so that traffic
/// would go around kz, carrying a token nobody can use).
fn exempts(entry: &str, pattern: &HostPattern) -> bool {
    let e = entry.trim().to_ascii_lowercase();
    if e == "*" {
        return true;
    }
    // "host:port" entries: the host part decides.
    let e = match e.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => e,
    };
    let e = e.trim_start_matches("*.").trim_start_matches('.');
    if e.is_empty() {
        return false;
    }
    let h = pattern.host.as_str();
    let under = |a: &str, b: &str| a == b || a.ends_with(&format!(".{b}"));
    // The entry covers the pattern's host or a parent of it; for a wildcard pattern, also any
    // name below it.
    under(h, e) || (pattern.wildcard && under(e, h))
}

/// The child's `NO_PROXY`: loopback plus the user's own entries, minus those that would
/// exempt a bound host. Returns the list and the entries dropped.
pub fn no_proxy(user: Option<&str>, bound: &[HostPattern]) -> (String, Vec<String>) {
    let mut keep: Vec<String> = Vec::new();
    let mut dropped = Vec::new();
    for e in user
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if bound.iter().any(|b| exempts(e, b)) {
            dropped.push(e.to_string());
        } else if !keep.iter().any(|k| k == e) {
            keep.push(e.to_string());
        }
    }
    for l in LOCAL_NO_PROXY {
        if !keep.iter().any(|n| n == l) {
            keep.push(l.to_string());
        }
    }
    (keep.join(","), dropped)
}

/// The contents of the child's `WGETRC`: the user's own settings (`user_wgetrc`), then the
/// CA bundle (a later line wins in wget).
pub fn wgetrc(user_wgetrc: Option<&str>, bundle: &str) -> String {
    let mut out = String::new();
    if let Some(u) = user_wgetrc {
        out.push_str(u);
        if !u.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&format!("ca_certificate = {bundle}\n"));
    out
}

/// Builds the child's proxy and CA variables. `no_proxy` comes from [`no_proxy`].
pub fn child_env(proxy_url: &str, files: &CaFiles, no_proxy: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for k in PROXY_VARS {
        out.push((k.to_string(), proxy_url.to_string()));
    }
    out.push(("NO_PROXY".into(), no_proxy.to_string()));
    out.push(("no_proxy".into(), no_proxy.to_string()));
    out.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    for k in CA_BUNDLE_VARS {
        out.push((k.to_string(), files.bundle.to_string()));
    }
    out.push(("SSL_CERT_DIR".into(), files.cert_dir.to_string()));
    out.push(("WGETRC".into(), files.wgetrc.to_string()));
    out.push(("KZ_CA_CERT".into(), files.ca_only.to_string()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn no_proxy_keeps_the_users_entries_but_never_a_bound_host() {
        let bound = [hp("api.github.com"), hp("*.slack.com")];
        let (np, dropped) = no_proxy(
            Some("corp.internal, localhost, github.com, .slack.com,hooks.slack.com, api.github.com:443, 10.0.0.0/8, other.com"),
            &bound,
        );
        assert_eq!(
            np,
            "corp.internal,localhost,10.0.0.0/8,other.com,127.0.0.1,::1"
        );
        assert_eq!(
            dropped,
            [
                "github.com",
                ".slack.com",
                "hooks.slack.com",
                "api.github.com:443"
            ]
        );
        let (np, dropped) = no_proxy(Some("*"), &bound);
        assert_eq!((np.as_str(), dropped.len()), ("localhost,127.0.0.1,::1", 1));
        // A sibling or a longer name that merely ends the same is kept.
        let (np, _) = no_proxy(Some("hub.com,notgithub.com,gist.github.com"), &bound);
        assert_eq!(
            np,
            "hub.com,notgithub.com,gist.github.com,localhost,127.0.0.1,::1"
        );
    }

    #[test]
    fn every_ca_variable_names_the_bundle() {
        let files = CaFiles {
            bundle: "/t/bundle.pem",
            ca_only: "/t/ca.pem",
            cert_dir: "/t/certs",
            wgetrc: "/t/wgetrc",
        };
        let env = child_env("http://kz:c@127.0.0.1:1", &files, "localhost");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("no_proxy"), Some("localhost"));
        assert_eq!(get("https_proxy"), Some("http://kz:c@127.0.0.1:1"));
        assert_eq!(get("ALL_PROXY"), Some("http://kz:c@127.0.0.1:1"));
        assert_eq!(get("NODE_USE_ENV_PROXY"), Some("1"));
        for k in CA_BUNDLE_VARS {
            assert_eq!(get(k), Some("/t/bundle.pem"), "{k}");
        }
        assert_eq!(get("SSL_CERT_DIR"), Some("/t/certs"));
        assert_eq!(get("WGETRC"), Some("/t/wgetrc"));
        assert_eq!(get("KZ_CA_CERT"), Some("/t/ca.pem"));
        assert_eq!(
            wgetrc(Some("timeout = 5"), "/t/bundle.pem"),
            "timeout = 5\nca_certificate = /t/bundle.pem\n"
        );
    }
}
