//! `.keyzero.toml`: discovery, the data model, and validation that reports every problem at
//! once with its key path. Parsing is pure (`parse_str`); `load` adds the file system.

pub mod bundle;
pub mod egress;
pub mod host;
pub mod reader;
pub mod uri;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::env::Env;
pub use crate::refs::{valid_env_name, ProviderKind};
pub use host::HostPattern;
use reader::{join, type_name, unknown_key_message, Problems, Reader};

pub const FILE_NAME: &str = ".keyzero.toml";

/// Where blind mode swaps a secret's token for its value (`swap = [...]`). Headers only by
/// default: a bound host that stores a query, path or body and shows it back would otherwise
/// hand the value to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Swap {
    pub headers: bool,
    pub query: bool,
    pub path: bool,
    pub body: bool,
    /// `sign = "aws-sigv4"`: an AWS secret access key. Its token is never swapped as text;
    /// kz checks the agent's SigV4 signature made with the token and signs again with the key.
    pub aws_sigv4: bool,
}

impl Default for Swap {
    fn default() -> Self {
        Swap {
            headers: true,
            query: false,
            path: false,
            body: false,
            aws_sigv4: false,
        }
    }
}

impl Swap {
    pub const WORDS: [&'static str; 4] = ["headers", "query", "path", "body"];

    /// Nowhere (the list is then filled word by word).
    pub fn none() -> Self {
        Swap {
            headers: false,
            query: false,
            path: false,
            body: false,
            aws_sigv4: false,
        }
    }

    fn set(&mut self, word: &str) -> bool {
        match word {
            "headers" => self.headers = true,
            "query" => self.query = true,
            "path" => self.path = true,
            "body" => self.body = true,
            _ => return false,
        }
        true
    }
}

/// One entry of `[secrets]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The environment variable the child sees.
    pub name: String,
    pub provider: ProviderKind,
    pub reference: String,
    pub key: Option<String>,
    pub version: Option<String>,
    pub optional: bool,
    pub hosts: Vec<HostPattern>,
    pub swap: Swap,
}

/// `[providers.local]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalConfig {
    pub path: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// How kz logs in to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// `VAULT_TOKEN`, then `~/.vault-token`, unless `token_env` names another variable.
    Token { token_env: Option<String> },
    AppRole {
        mount: String,
        role_id: String,
        secret_id_env: Option<String>,
        secret_id_file: Option<PathBuf>,
    },
    Jwt {
        mount: String,
        role: String,
        jwt_env: Option<String>,
        jwt_file: Option<PathBuf>,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
}

pub const K8S_SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `[providers.vault]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    pub address: Option<String>,
    pub namespace: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub auth: VaultAuth,
    /// Force a KV version instead of asking Vault about the mount.
    pub kv_version: Option<u8>,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            address: None,
            namespace: None,
            ca_cert: None,
            auth: VaultAuth::Token { token_env: None },
            kv_version: None,
        }
    }
}

/// `[providers.aws-sm]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsConfig {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub profile: Option<String>,
}

/// `[providers.1password]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnePasswordConfig {
    /// The `op` executable (default `op` on `PATH`).
    pub op_path: Option<PathBuf>,
    pub account: Option<String>,
    pub connect_host: Option<String>,
    pub connect_token_env: Option<String>,
}

/// Settings shared by every provider table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Providers {
    pub local: LocalConfig,
    pub vault: VaultConfig,
    pub aws: AwsConfig,
    pub onepassword: OnePasswordConfig,
    /// Per-request timeout for each provider.
    pub timeouts: BTreeMap<ProviderKind, Duration>,
    /// `cache_ttl` for each provider that sets one.
    pub cache_ttls: BTreeMap<ProviderKind, Duration>,
    /// Providers that have a section of their own (`[providers.NAME]`).
    pub configured: std::collections::BTreeSet<ProviderKind>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

impl Providers {
    pub fn timeout(&self, kind: ProviderKind) -> Duration {
        self.timeouts.get(&kind).copied().unwrap_or(DEFAULT_TIMEOUT)
    }

    /// How long a resolved value may be reused; `None` when unset (the caller's default).
    pub fn cache_ttl(&self, kind: ProviderKind) -> Option<Duration> {
        self.cache_ttls.get(&kind).copied()
    }
}

/// `[network]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `None`: every destination allowed.
    pub allow: Option<Vec<HostPattern>>,
    pub hosts: BTreeMap<String, IpAddr>,
    pub allow_private: bool,
    pub upstream_ca: Option<PathBuf>,
    /// kz's own egress proxy (`http://[user:pass@]host:port`); `None`: the `HTTPS_PROXY` kz
    /// was started with, if any.
    pub upstream_proxy: Option<String>,
    /// The longest an intercepted response may take in total (default 30 minutes: LLM calls
    /// run long; idle timeouts catch dead peers).
    pub response_timeout: Option<std::time::Duration>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub path: PathBuf,
}

/// `[isolate]`: adjustments to what `--isolate` hides (paths may start with `~/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IsolateConfig {
    pub hide: Vec<String>,
    pub expose: Vec<String>,
}

/// `[blind] tokens`: how blind mode makes tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenKind {
    /// Fresh each run (the default).
    #[default]
    PerRun,
    /// The same per project and secret on every run.
    Stable,
}

/// `[blind]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlindConfig {
    pub tokens: TokenKind,
}

/// A validated `.keyzero.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Where it was read from (`None` for an in-memory config).
    pub path: Option<PathBuf>,
    /// Secrets in name order.
    pub secrets: Vec<SecretSpec>,
    pub providers: Providers,
    pub network: NetworkConfig,
    pub server: Option<ServerConfig>,
    pub audit: Option<AuditConfig>,
    pub isolate: IsolateConfig,
    pub blind: BlindConfig,
}

impl Config {
    /// Every variable the config names as holding a backend credential (`*_env` keys), plus
    /// the source variable of each `env` secret.
    pub fn credential_variables(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.providers.vault.auth {
            VaultAuth::Token { token_env } => out.extend(token_env.clone()),
            VaultAuth::AppRole { secret_id_env, .. } => out.extend(secret_id_env.clone()),
            VaultAuth::Jwt { jwt_env, .. } => out.extend(jwt_env.clone()),
            VaultAuth::Kubernetes { .. } => {}
        }
        out.extend(self.providers.onepassword.connect_token_env.clone());
        if let Some(s) = &self.server {
            out.extend(s.token_env.clone());
        }
        out
    }

    /// Files the config reads credentials from: `file` secret sources, auth token files and the
    /// `[server]` identity token.
    pub fn credential_files(&self) -> Vec<PathBuf> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mut out: Vec<PathBuf> = self
            .secrets
            .iter()
            .filter(|s| s.provider == ProviderKind::File)
            .map(|s| cwd.join(&s.reference))
            .collect();
        match &self.providers.vault.auth {
            VaultAuth::AppRole { secret_id_file, .. } => out.extend(secret_id_file.clone()),
            VaultAuth::Jwt { jwt_file, .. } => out.extend(jwt_file.clone()),
            VaultAuth::Kubernetes { jwt_file, .. } => out.push(jwt_file.clone()),
            VaultAuth::Token { .. } => {}
        }
        if let Some(s) = &self.server {
            out.extend(s.token_file.clone());
        }
        out
    }
}

/// Every problem in one file; `Display` prints one per line, prefixed with the file name.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {p}", self.file)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(file: &str, msg: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            problems: vec![msg.into()],
        }
    }
}

/// Finds the config: `-c`, then `KZ_CONFIG`, then the nearest `.keyzero.toml` from `cwd` up.
pub fn discover(
    explicit: Option<&Path>,
    env: &dyn Env,
    cwd: &Path,
) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env.nonempty("KZ_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let mut dir = Some(cwd);
    while let Some(d) = dir {
        let candidate = d.join(FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(ConfigError::one(
        FILE_NAME,
        format!(
            "not found in {} or any parent directory (create one, or pass -c FILE / set KZ_CONFIG)",
            cwd.display()
        ),
    ))
}

/// Reads and validates a config file; relative paths inside it are resolved against its directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(&shown, format!("cannot read: {}", io_reason(&e))))?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut cfg = parse_str(&text, &shown, &base)?;
    cfg.path = Some(path.to_path_buf());
    Ok(cfg)
}

pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string().to_lowercase(),
    }
}

/// Parses and validates config text. `file` names it in errors; `base` anchors relative paths.
pub fn parse_str(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let msg = e.message().to_lowercase();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: ")
            })
            .unwrap_or_default();
        ConfigError::one(file, format!("{at}invalid toml: {msg}"))
    })?;
    let mut p = Problems::default();
    let cfg = parse_table(&table, base, &mut p);
    if p.0.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError {
            file: file.to_string(),
            problems: p.0,
        })
    }
}

/// Validates a parsed config table, adding every problem to `p` (also used for the
/// `providers`, `network` and `secrets` sections of a policy bundle).
pub fn parse_table(table: &toml::Table, base: &Path, p: &mut Problems) -> Config {
    let mut root = Reader::new("", table);
    let mut cfg = Config::default();

    if let Some(t) = root.table("providers", p) {
        cfg.providers = parse_providers(t, base, p);
    }
    if let Some(t) = root.table("secrets", p) {
        for (name, value) in t {
            if let Some(spec) = parse_secret(name, value, p) {
                cfg.secrets.push(spec);
            }
        }
    }
    if let Some(t) = root.table("network", p) {
        cfg.network = parse_network(t, base, p);
    }
    if let Some(t) = root.table("server", p) {
        cfg.server = parse_server(t, base, p);
    }
    if let Some(t) = root.table("isolate", p) {
        let mut r = Reader::new("isolate", t);
        cfg.isolate.hide = r.string_list("hide", p).unwrap_or_default();
        cfg.isolate.expose = r.string_list("expose", p).unwrap_or_default();
        r.finish(p);
    }
    if let Some(t) = root.table("blind", p) {
        let mut r = Reader::new("blind", t);
        match r.nonempty_string("tokens", p).as_deref() {
            None | Some("per-run") => {}
            Some("stable") => cfg.blind.tokens = TokenKind::Stable,
            Some(other) => p.push(
                "blind.tokens",
                format!("unknown mode {other:?} (expected \"per-run\" or \"stable\")"),
            ),
        }
        r.finish(p);
    }
    if let Some(t) = root.table("audit", p) {
        let mut r = Reader::new("audit", t);
        if let Some(path) = r.nonempty_string("path", p) {
            cfg.audit = Some(AuditConfig {
                path: base.join(path),
            });
        } else if !t.contains_key("path") {
            p.push("audit.path", "missing (the file to append audit lines to)");
        }
        r.finish(p);
    }
    root.finish(p);
    cfg
}

fn t_has(v: &toml::Value, key: &str) -> bool {
    v.as_table().is_some_and(|t| t.contains_key(key))
}

fn parse_secret(name: &str, value: &toml::Value, p: &mut Problems) -> Option<SecretSpec> {
    let path = join("secrets", name);
    if !valid_env_name(name) {
        p.push(
            &path,
            "not a valid environment variable name (letters, digits and '_', not starting with a digit)",
        );
    }
    let table = match value {
        toml::Value::String(s) => {
            let parsed = uri::parse_shorthand(s).and_then(|parts| {
                let r = crate::refs::parse(
                    parts.provider,
                    &parts.reference,
                    parts.key.as_deref(),
                    parts.version.as_deref(),
                )?;
                Ok((r, parts.optional))
            });
            return match parsed {
                Ok((r, optional)) => Some(SecretSpec {
                    name: name.to_string(),
                    provider: r.provider,
                    reference: r.reference,
                    key: r.key,
                    version: r.version,
                    optional,
                    hosts: Vec::new(),
                    swap: Swap::default(),
                }),
                Err(e) => {
                    p.push(&path, e);
                    None
                }
            };
        }
        toml::Value::Table(t) => t,
        other => {
            p.push(
                &path,
                format!(
                    "expected a table {{ provider = ..., ref = ... }} or a uri string, found {}",
                    type_name(other)
                ),
            );
            return None;
        }
    };
    let mut r = Reader::new(path.clone(), table);
    let before = p.0.len();
    let provider = match r.string("provider", p) {
        Some(s) => match ProviderKind::parse(&s) {
            Some(k) => Some(k),
            None => {
                let names: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
                let hint = match reader::suggest(&s, names.iter().copied()) {
                    Some(m) => format!(" (did you mean {m:?}?)"),
                    None => format!(" (expected one of: {})", names.join(", ")),
                };
                p.push(
                    &r.key_path("provider"),
                    format!("unknown provider {s:?}{hint}"),
                );
                None
            }
        },
        None => {
            if !table.contains_key("provider") {
                p.push(&r.key_path("provider"), "missing");
            }
            None
        }
    };
    let reference = r.nonempty_string("ref", p);
    if reference.is_none() && !table.contains_key("ref") {
        p.push(&r.key_path("ref"), "missing");
    }
    let key = r.nonempty_string("key", p);
    let version = match r.raw("version") {
        Some(toml::Value::Integer(n)) => Some(n.to_string()),
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(other) => {
            p.push(
                &r.key_path("version"),
                format!("expected a string or integer, found {}", type_name(other)),
            );
            None
        }
        None => None,
    };
    let optional = r.bool("optional", p).unwrap_or(false);
    let mut hosts = Vec::new();
    if let Some(list) = r.string_list("hosts", p) {
        for (i, h) in list.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(h) => hosts.push(h),
                Err(e) => p.push(&format!("{}[{i}]", r.key_path("hosts")), e),
            }
        }
    }
    let mut swap = Swap::default();
    if let Some(list) = r.string_list("swap", p) {
        swap = Swap::none();
        for (i, w) in list.iter().enumerate() {
            if !swap.set(w) {
                let hint = match reader::suggest(w, Swap::WORDS.iter().copied()) {
                    Some(m) => format!(" (did you mean {m:?}?)"),
                    None => format!(" (expected any of: {})", Swap::WORDS.join(", ")),
                };
                p.push(
                    &format!("{}[{i}]", r.key_path("swap")),
                    format!("unknown place {w:?}{hint}"),
                );
            }
        }
    }
    match r.nonempty_string("sign", p).as_deref() {
        None => {}
        Some("aws-sigv4") => {
            if t_has(value, "swap") {
                p.push(
                    &r.key_path("sign"),
                    "sign replaces swap (a signing key is never swapped as text); remove swap",
                );
            }
            swap = Swap::none();
            swap.aws_sigv4 = true;
        }
        Some(other) => p.push(
            &r.key_path("sign"),
            format!("unknown signing scheme {other:?} (expected \"aws-sigv4\")"),
        ),
    }
    r.finish(p);
    let parsed = match (provider, &reference) {
        (Some(kind), Some(reference)) => {
            match crate::refs::parse(kind, reference, key.as_deref(), version.as_deref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    p.push(&path, e);
                    None
                }
            }
        }
        _ => None,
    };
    if p.0.len() > before {
        return None;
    }
    let parsed = parsed?;
    Some(SecretSpec {
        name: name.to_string(),
        provider: parsed.provider,
        reference: parsed.reference,
        key: parsed.key,
        version: parsed.version,
        optional,
        hosts,
        swap,
    })
}

fn parse_providers(t: &toml::Table, base: &Path, p: &mut Problems) -> Providers {
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

fn parse_network(t: &toml::Table, base: &Path, p: &mut Problems) -> NetworkConfig {
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

fn parse_server(t: &toml::Table, base: &Path, p: &mut Problems) -> Option<ServerConfig> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, ".keyzero.toml", Path::new("/proj"))
    }

    #[test]
    fn the_seed_form_parses_verbatim() {
        let cfg = parse(
            r#"
[secrets]
OPENAI_API_KEY  = { provider = "1password", ref = "op://Dev/OpenAI/api-key" }
GITHUB_TOKEN    = { provider = "vault",     ref = "secret/data/prod/github/token", hosts = ["api.github.com", "github.com"] }
SLACK_BOT_TOKEN = { provider = "aws-sm",    ref = "prod/slack-bot-token", hosts = ["slack.com", "*.slack.com"] }
LOCAL_KEY       = { provider = "local",     ref = "openai" }
FROM_ENV        = { provider = "env",       ref = "CI_OPENAI_KEY" }
FROM_FILE       = { provider = "file",      ref = "/run/secrets/db.json", key = "/password" }
SHORT           = "vault://secret/data/prod/github#token"

[providers.vault]
address = "https://vault.internal:8200"
auth = { method = "token" }

[providers.aws-sm]
region = "eu-west-1"
endpoint = "http://127.0.0.1:5000"

[providers.1password]

[network]
allow = ["api.openai.com", "*.github.com"]
hosts = { "api.kz.test" = "127.0.0.1" }
allow_private = false
upstream_ca = "certs/corp-ca.pem"

[server]
url = "https://keyzero.internal:8787"
token_file = "/var/run/secrets/tokens/keyzero"

[audit]
path = "kz-audit.jsonl"
"#,
        )
        .unwrap();
        assert_eq!(cfg.secrets.len(), 7);
        let gh = cfg
            .secrets
            .iter()
            .find(|s| s.name == "GITHUB_TOKEN")
            .unwrap();
        assert_eq!(gh.provider, ProviderKind::Vault);
        assert_eq!(gh.hosts.len(), 2);
        let short = cfg.secrets.iter().find(|s| s.name == "SHORT").unwrap();
        assert_eq!(short.reference, "secret/data/prod/github");
        assert_eq!(short.key.as_deref(), Some("token"));
        assert_eq!(cfg.providers.aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            cfg.network.upstream_ca,
            Some(PathBuf::from("/proj/certs/corp-ca.pem"))
        );
        assert_eq!(
            cfg.audit.unwrap().path,
            PathBuf::from("/proj/kz-audit.jsonl")
        );
        assert_eq!(cfg.network.hosts["api.kz.test"].to_string(), "127.0.0.1");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let err = parse(
            r#"
[secrets]
A = { provider = "vualt", ref = "x" }
B = { provider = "env", ref = "X", hostz = ["a.com"] }
C = { provider = "local" }
"1BAD" = "env://X"
D = { provider = "aws-sm", ref = "x", hosts = ["https://x.com"] }

[providers.vault]
adress = "https://v"

[netwrk]
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 6, "{text}");
        for want in [
            ".keyzero.toml: secrets.A.provider: unknown provider \"vualt\" (did you mean \"vault\"?)",
            ".keyzero.toml: secrets.B.hostz: unknown key (did you mean \"hosts\"?)",
            ".keyzero.toml: secrets.C.ref: missing",
            ".keyzero.toml: secrets.1BAD: not a valid environment variable name",
            ".keyzero.toml: secrets.D.hosts[0]: invalid host pattern",
            ".keyzero.toml: providers.vault.adress: unknown key (did you mean \"address\"?)",
            ".keyzero.toml: netwrk: unknown key (did you mean \"network\"?)",
        ] {
            assert!(lines.iter().any(|l| l.starts_with(want)), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse("[secrets]\nA = { provider = \n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with(".keyzero.toml: line 2: invalid toml"),
            "{err}"
        );
    }

    #[test]
    fn vault_auth_methods() {
        let cfg = parse(
            "[providers.vault]\nauth = { method = \"approle\", role_id = \"r\", secret_id_env = \"SID\" }\n",
        )
        .unwrap();
        assert!(
            matches!(cfg.providers.vault.auth, VaultAuth::AppRole { ref mount, .. } if mount == "approle")
        );
        let err = parse("[providers.vault]\nauth = { method = \"kubernetes\" }\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("providers.vault.auth.role: missing"),
            "{err}"
        );
        let err = parse("[providers.vault]\nauth = { method = \"aprole\" }\n").unwrap_err();
        assert!(
            err.to_string().contains("did you mean \"approle\""),
            "{err}"
        );
    }

    #[test]
    fn discovery_walks_up() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "").unwrap();
        let env = crate::env::MapEnv::default();
        assert_eq!(
            discover(None, &env, &nested).unwrap(),
            dir.path().join(FILE_NAME)
        );
        let env = crate::env::MapEnv::from_pairs([("KZ_CONFIG", "/x.toml")]);
        assert_eq!(
            discover(None, &env, &nested).unwrap(),
            PathBuf::from("/x.toml")
        );
        assert_eq!(
            discover(Some(Path::new("/y.toml")), &env, &nested).unwrap(),
            PathBuf::from("/y.toml")
        );
    }
}

#[cfg(test)]
mod swap_tests {
    use super::*;

    #[test]
    fn swap_defaults_to_headers_and_names_unknown_words() {
        let cfg = parse_str(
            "[secrets]\nA = { provider = \"env\", ref = \"X\" }\nB = { provider = \"env\", ref = \"X\", swap = [\"headers\", \"query\", \"body\"] }\n",
            ".keyzero.toml",
            Path::new("/p"),
        )
        .unwrap();
        assert_eq!(cfg.secrets[0].swap, Swap::default());
        assert!(cfg.secrets[0].swap.headers && !cfg.secrets[0].swap.body);
        let b = cfg.secrets[1].swap;
        assert!(b.headers && b.query && b.body && !b.path);
        let err = parse_str(
            "[secrets]\nA = { provider = \"env\", ref = \"X\", swap = [\"bodyy\", \"cookies\"] }\n",
            ".keyzero.toml",
            Path::new("/p"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("secrets.A.swap[0]: unknown place \"bodyy\" (did you mean \"body\"?)"),
            "{err}"
        );
        assert!(
            err.contains("secrets.A.swap[1]: unknown place \"cookies\""),
            "{err}"
        );
    }
}
