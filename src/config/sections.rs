//! Validating the `[providers.*]`, `[network]` and `[server]` tables.

use super::*;

pub(super) fn parse_providers(t: &toml::Table, base: &Path, p: &mut Problems) -> Providers {
    let mut out = Providers::default();
    for (name, value) in t {
        let path = join("providers", name);
        let Some(kind) = ProviderKind::parse(name) else {
            let names: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
            p.push(
                &path,
                unknown_key_message(name, &names).replace("key", "provider"),
            );
            continue;
        };
        let toml::Value::Table(table) = value else {
            p.push(
                &path,
                format!("expected a table, found {}", type_name(value)),
            );
            continue;
        };
        let mut r = Reader::new(path, table);
        out.configured.insert(kind);
        if let Some(d) = r.duration("timeout", p) {
            out.timeouts.insert(kind, d);
        }
        if let Some(d) = r.duration("cache_ttl", p) {
            out.cache_ttls.insert(kind, d);
        }
        match kind {
            ProviderKind::Local => {
                out.local.path = r.nonempty_string("path", p).map(|s| base.join(s));
                out.local.key_file = r.nonempty_string("key_file", p).map(|s| base.join(s));
            }
            ProviderKind::Vault => out.vault = parse_vault(&mut r, base, p),
            ProviderKind::AwsSm => {
                out.aws.region = r.nonempty_string("region", p);
                out.aws.endpoint = r.nonempty_string("endpoint", p);
                out.aws.profile = r.nonempty_string("profile", p);
                if let Some(e) = &out.aws.endpoint {
                    check_url(e, &r.key_path("endpoint"), p);
                }
            }
            ProviderKind::OnePassword => {
                out.onepassword.op_path = r.nonempty_string("op_path", p).map(PathBuf::from);
                out.onepassword.account = r.nonempty_string("account", p);
                out.onepassword.connect_host = r.nonempty_string("connect_host", p);
                out.onepassword.connect_token_env = r.nonempty_string("connect_token_env", p);
                if let Some(h) = &out.onepassword.connect_host {
                    check_url(h, &r.key_path("connect_host"), p);
                }
            }
            ProviderKind::Env | ProviderKind::File => {}
        }
        r.finish(p);
    }
    out
}

fn check_url(url: &str, path: &str, p: &mut Problems) {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        p.push(path, format!("{url:?} must be an http:// or https:// url"));
    }
}

fn parse_vault(r: &mut Reader<'_>, base: &Path, p: &mut Problems) -> VaultConfig {
    let mut v = VaultConfig {
        address: r.nonempty_string("address", p),
        namespace: r.nonempty_string("namespace", p),
        ca_cert: r.nonempty_string("ca_cert", p).map(|s| base.join(s)),
        ..VaultConfig::default()
    };
    if let Some(a) = &v.address {
        check_url(a, &r.key_path("address"), p);
    }
    match r.raw("kv_version") {
        Some(toml::Value::Integer(n)) if *n == 1 || *n == 2 => v.kv_version = Some(*n as u8),
        Some(_) => p.push(&r.key_path("kv_version"), "must be 1 or 2"),
        None => {}
    }
    if let Some(auth) = r.table("auth", p) {
        let mut a = Reader::new(r.key_path("auth"), auth);
        let method = a.string("method", p).unwrap_or_else(|| "token".into());
        let mount = |a: &mut Reader<'_>, p: &mut Problems, default: &str| {
            a.nonempty_string("mount", p)
                .unwrap_or_else(|| default.to_string())
        };
        let required = |a: &mut Reader<'_>, p: &mut Problems, key: &'static str| {
            let got = a.nonempty_string(key, p);
            if got.is_none() && a.raw(key).is_none() {
                p.push(
                    &a.key_path(key),
                    format!("missing (needed by method {method:?})"),
                );
            }
            got.unwrap_or_default()
        };
        v.auth = match method.as_str() {
            "token" => VaultAuth::Token {
                token_env: a.nonempty_string("token_env", p),
            },
            "approle" => {
                let m = mount(&mut a, p, "approle");
                let role_id = required(&mut a, p, "role_id");
                let secret_id_env = a.nonempty_string("secret_id_env", p);
                let secret_id_file = a.nonempty_string("secret_id_file", p).map(|s| base.join(s));
                VaultAuth::AppRole {
                    mount: m,
                    role_id,
                    secret_id_env,
                    secret_id_file,
                }
            }
            "jwt" => {
                let m = mount(&mut a, p, "jwt");
                let role = required(&mut a, p, "role");
                let jwt_env = a.nonempty_string("jwt_env", p);
                let jwt_file = a.nonempty_string("jwt_file", p).map(|s| base.join(s));
                if jwt_env.is_none() && jwt_file.is_none() {
                    p.push(&a.path, "method \"jwt\" needs jwt_env or jwt_file");
                }
                VaultAuth::Jwt {
                    mount: m,
                    role,
                    jwt_env,
                    jwt_file,
                }
            }
            "kubernetes" => {
                let m = mount(&mut a, p, "kubernetes");
                let role = required(&mut a, p, "role");
                let jwt_file = a
                    .nonempty_string("jwt_file", p)
                    .map(|s| base.join(s))
                    .unwrap_or_else(|| PathBuf::from(K8S_SA_TOKEN));
                VaultAuth::Kubernetes {
                    mount: m,
                    role,
                    jwt_file,
                }
            }
            other => {
                let hint = reader::suggest(other, ["token", "approle", "jwt", "kubernetes"])
                    .map(|m| format!(" (did you mean {m:?}?)"))
                    .unwrap_or_else(|| " (expected token, approle, jwt or kubernetes)".into());
                p.push(
                    &a.key_path("method"),
                    format!("unknown auth method {other:?}{hint}"),
                );
                // Read the other keys so they are not reported as unknown on top.
                for k in [
                    "mount",
                    "role",
                    "role_id",
                    "secret_id_env",
                    "secret_id_file",
                    "jwt_env",
                    "jwt_file",
                    "token_env",
                ] {
                    a.raw(k);
                }
                VaultAuth::Token { token_env: None }
            }
        };
        a.finish(p);
    }
    v
}

pub(super) fn parse_network(t: &toml::Table, base: &Path, p: &mut Problems) -> NetworkConfig {
    let mut r = Reader::new("network", t);
    let mut n = NetworkConfig::default();
    if let Some(list) = r.string_list("allow", p) {
        let mut pats = Vec::new();
        for (i, h) in list.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(h) => pats.push(h),
                Err(e) => p.push(&format!("network.allow[{i}]"), e),
            }
        }
        n.allow = Some(pats);
    }
    if let Some(hosts) = r.table("hosts", p) {
        for (name, v) in hosts {
            let path = join("network.hosts", name);
            match v {
                toml::Value::String(s) => match s.parse::<IpAddr>() {
                    Ok(ip) => {
                        n.hosts.insert(name.to_ascii_lowercase(), ip);
                    }
                    Err(_) => p.push(&path, format!("{s:?} is not an ip address")),
                },
                other => p.push(
                    &path,
                    format!("expected an ip address string, found {}", type_name(other)),
                ),
            }
        }
    }
    n.allow_private = r.bool("allow_private", p).unwrap_or(false);
    n.upstream_ca = r.nonempty_string("upstream_ca", p).map(|s| base.join(s));
    n.upstream_proxy = r.nonempty_string("upstream_proxy", p);
    if let Some(u) = &n.upstream_proxy {
        if let Err(e) = egress::UpstreamProxy::parse(u, None) {
            p.push("network.upstream_proxy", e);
        }
    }
    n.response_timeout = r.duration("response_timeout", p);
    if n.response_timeout
        .is_some_and(|d| d < std::time::Duration::from_secs(1))
    {
        p.push("network.response_timeout", "must be at least 1s");
    }
    r.finish(p);
    n
}

pub(super) fn parse_server(t: &toml::Table, base: &Path, p: &mut Problems) -> Option<ServerConfig> {
    let mut r = Reader::new("server", t);
    let url = r.nonempty_string("url", p);
    if url.is_none() && !t.contains_key("url") {
        p.push("server.url", "missing");
    }
    if let Some(u) = &url {
        check_url(u, "server.url", p);
    }
    let token_file = r.nonempty_string("token_file", p).map(|s| base.join(s));
    let token_env = r.nonempty_string("token_env", p);
    if token_file.is_some() && token_env.is_some() {
        p.push("server", "set token_file or token_env, not both");
    }
    r.finish(p);
    Some(ServerConfig {
        url: url?,
        token_file,
        token_env,
    })
}
