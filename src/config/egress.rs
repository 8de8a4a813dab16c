//! `[network] upstream_proxy`: kz's own egress proxy, parsed (the proxy opens tunnels through
//! it).

/// Why an upstream proxy URL cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    #[error("expected an http:// proxy url (kz speaks CONNECT to it)")]
    Scheme,
    #[error("no host in the proxy url")]
    NoHost,
}

/// kz's own egress proxy (`[network] upstream_proxy`, else the `HTTPS_PROXY` kz was started
/// with): upstream connections are opened with `CONNECT` through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProxy {
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` value (Basic), from the URL's user and password.
    pub authorization: Option<String>,
    /// Names reached directly (`NO_PROXY` kz was started with).
    pub no_proxy: Vec<String>,
}

impl UpstreamProxy {
    /// Parses `http://[user:password@]host[:port]` (port 3128, the usual one, when none is
    /// given); `no_proxy` is a `NO_PROXY` list.
    pub fn parse(url: &str, no_proxy: Option<&str>) -> Result<Self, ProxyUrlError> {
        let rest = url.strip_prefix("http://").ok_or(ProxyUrlError::Scheme)?;
        let rest = rest.trim_end_matches('/');
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (host, port) =
            super::host::split_authority(hostport, 3128).ok_or(ProxyUrlError::NoHost)?;
        if host.is_empty() {
            return Err(ProxyUrlError::NoHost);
        }
        let authorization = auth.map(|a| {
            use base64::Engine;
            let decoded: String = percent_encoding::percent_decode_str(a)
                .decode_utf8_lossy()
                .into_owned();
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(decoded)
            )
        });
        let no_proxy = no_proxy
            .unwrap_or("")
            .split(',')
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        Ok(UpstreamProxy {
            host,
            port,
            authorization,
            no_proxy,
        })
    }

    pub(crate) fn bypassed(&self, host: &str) -> bool {
        let h = host
            .trim_matches(['[', ']'])
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.no_proxy.iter().any(|e| {
            let e = e.trim_start_matches("*.").trim_start_matches('.');
            e == "*" || h == e || h.ends_with(&format!(".{e}"))
        })
    }
}
