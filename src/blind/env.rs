//! The environment a blind-mode child gets: proxy variables in both cases, `NO_PROXY` merged,
//! and the CA bundle in every variable common clients read.

/// Variables that point clients at a CA bundle (system roots + kz's CA).
pub const CA_BUNDLE_VARS: [&str; 9] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "DENO_CERT",
];

const LOCAL_NO_PROXY: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Builds the child's proxy and CA variables. `user_no_proxy` is the user's own `NO_PROXY`
/// (or `no_proxy`), kept and extended with loopback.
pub fn child_env(
    proxy_url: &str,
    ca_bundle: &str,
    ca_only: &str,
    user_no_proxy: Option<&str>,
) -> Vec<(String, String)> {
    let mut no_proxy: Vec<String> = user_no_proxy
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    for l in LOCAL_NO_PROXY {
        if !no_proxy.iter().any(|n| n == l) {
            no_proxy.push(l.to_string());
        }
    }
    let no_proxy = no_proxy.join(",");
    let mut out = Vec::new();
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        out.push((k.to_string(), proxy_url.to_string()));
    }
    out.push(("NO_PROXY".into(), no_proxy.clone()));
    out.push(("no_proxy".into(), no_proxy));
    out.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    for k in CA_BUNDLE_VARS {
        out.push((k.to_string(), ca_bundle.to_string()));
    }
    out.push(("KZ_CA_CERT".into(), ca_only.to_string()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_no_proxy_and_sets_every_ca_variable() {
        let env = child_env(
            "http://kz:c@127.0.0.1:1",
            "/t/bundle.pem",
            "/t/ca.pem",
            Some("corp.internal, localhost"),
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("NO_PROXY"),
            Some("corp.internal,localhost,127.0.0.1,::1")
        );
        assert_eq!(get("no_proxy"), get("NO_PROXY"));
        assert_eq!(get("https_proxy"), Some("http://kz:c@127.0.0.1:1"));
        assert_eq!(get("NODE_USE_ENV_PROXY"), Some("1"));
        for k in CA_BUNDLE_VARS {
            assert_eq!(get(k), Some("/t/bundle.pem"), "{k}");
        }
        assert_eq!(get("KZ_CA_CERT"), Some("/t/ca.pem"));
    }
}
