//! The data model of a validated `.keyzero.toml`: secrets, provider tables, `[network]`,
//! `[server]`, `[audit]`, `[isolate]`, `[blind]`.

use super::*;

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

    pub(super) fn set(&mut self, word: &str) -> bool {
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
    /// The tables that name where credentials come from: each provider's, and `[server]`.
    fn credential_sources(&self) -> Vec<&dyn CredentialSource> {
        let mut out: Vec<&dyn CredentialSource> =
            vec![&self.providers.vault, &self.providers.onepassword];
        out.extend(self.server.as_ref().map(|s| s as &dyn CredentialSource));
        out
    }

    /// Every variable the config names as holding a backend credential (`*_env` keys).
    pub fn credential_variables(&self) -> Vec<String> {
        self.credential_sources()
            .iter()
            .flat_map(|t| t.credential_variables())
            .collect()
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
        for t in self.credential_sources() {
            out.extend(t.credential_files());
        }
        out
    }
}

/// A table that says where credentials come from: the variables and files kz removes from the
/// child's environment and hides under `--isolate`. One implementation per provider table that
/// has credentials of its own, and `[server]`.
pub trait CredentialSource {
    fn credential_variables(&self) -> Vec<String> {
        Vec::new()
    }
    fn credential_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

impl CredentialSource for VaultConfig {
    fn credential_variables(&self) -> Vec<String> {
        match &self.auth {
            VaultAuth::Token { token_env } => token_env.iter().cloned().collect(),
            VaultAuth::AppRole { secret_id_env, .. } => secret_id_env.iter().cloned().collect(),
            VaultAuth::Jwt { jwt_env, .. } => jwt_env.iter().cloned().collect(),
            VaultAuth::Kubernetes { .. } => Vec::new(),
        }
    }

    fn credential_files(&self) -> Vec<PathBuf> {
        match &self.auth {
            VaultAuth::AppRole { secret_id_file, .. } => secret_id_file.iter().cloned().collect(),
            VaultAuth::Jwt { jwt_file, .. } => jwt_file.iter().cloned().collect(),
            VaultAuth::Kubernetes { jwt_file, .. } => vec![jwt_file.clone()],
            VaultAuth::Token { .. } => Vec::new(),
        }
    }
}

impl CredentialSource for OnePasswordConfig {
    fn credential_variables(&self) -> Vec<String> {
        self.connect_token_env.iter().cloned().collect()
    }
}

impl CredentialSource for ServerConfig {
    fn credential_variables(&self) -> Vec<String> {
        self.token_env.iter().cloned().collect()
    }

    fn credential_files(&self) -> Vec<PathBuf> {
        self.token_file.iter().cloned().collect()
    }
}
