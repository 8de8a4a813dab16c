//! Command-line types (clap derive only; behaviour lives in `cmd`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kz",
    version,
    about = "KeyZero: keep real credentials out of AI agents' reach",
    long_about = "KeyZero resolves secrets from 1Password, Vault, AWS Secrets Manager or its embedded \
                  local store at process start and hands them to the command it runs, so nothing \
                  sits in plaintext files or source control.",
    after_help = "Examples:\n  printf %s \"$OPENAI_KEY\" | kz secret set openai\n  kz run -- python agent.py\n  kz check"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve every secret in .keyzero.toml, then run a command with them in its environment
    #[command(
        after_help = "Examples:\n  kz run -- python agent.py\n  kz run -c ci.keyzero.toml --audit audit.jsonl -- ./deploy.sh\n  kz run --no-mask -- env | sort\n\n\
Exit status: the command's own; 128+N if it died of signal N; 125 if kz failed before starting it;\n\
126 if it is not executable; 127 if it was not found."
    )]
    Run(RunArgs),
    /// Resolve every secret and print NAME, provider, ref and status (never values)
    #[command(
        after_help = "Examples:\n  kz check\n  kz check -c ./deploy/.keyzero.toml\n\nExit status: 0 when every secret resolved, 125 otherwise."
    )]
    Check(CheckArgs),
    /// Manage the embedded local store (the default backend, no service needed)
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The policy decision point (agents authenticate with JWTs; CEL policies decide)
    #[command(subcommand)]
    Server(ServerCommand),
    /// Serve MCP over stdio (tools list_secrets, resolve, fetch) for a local agent
    #[command(
        after_help = "Example (an mcpServers entry):\n  {\"command\": \"kz\", \"args\": [\"mcp\", \"--bundle\", \"/etc/keyzero/bundle.yaml\"],\n   \"env\": {\"KZ_IDENTITY_TOKEN\": \"<the agent's JWT>\"}}"
    )]
    Mcp {
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        /// Read the identity JWT from FILE instead of $KZ_IDENTITY_TOKEN
        #[arg(long, value_name = "FILE")]
        identity_token_file: Option<PathBuf>,
    },
    /// Validate and test policy bundles
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Development identities
    #[command(subcommand)]
    Token(TokenCommand),
    /// Move a .env file's values into the local store and .keyzero.toml
    #[command(
        after_help = "Examples:\n  kz import\n  kz import config/dev.env --remove\n\nEach KEY=VALUE is stored in the local store as KEY and gets KEY = { provider = \"local\", ref = \"KEY\" }\nin .keyzero.toml (created or extended; existing entries are never overwritten, conflicts are listed).\nValues are never printed. --remove deletes the file once everything is stored and read back.\nExit status: 0 all imported, 1 something was not (listed), 2 usage error."
    )]
    Import(ImportArgs),
    /// Find resolved values (in any form kz scrubs) in files or a stream; names only
    #[command(
        after_help = "Examples:\n  kz scan\n  kz scan logs/ transcripts/\n  cat session.jsonl | kz scan --stdin\n\nReports path:line: NAME (form) for raw, base64, base64url, percent-encoded, JSON-escaped and hex\nforms; never the value. .gitignore is honoured and binary files are skipped (--binary to include).\nExit status: 0 nothing found, 1 found (or a secret did not resolve), 2 usage error."
    )]
    Scan(ScanArgs),
    /// What works on this machine and config: one line per check, with the fix
    #[command(
        after_help = "Examples:\n  kz doctor\n  kz doctor --json\n\nChecks: config, each provider (resolving, never printing values), the local store, user\nnamespaces (and why not), nftables/iptables in a namespace, the runtime directory, the CA\nvariables of blind mode, Node's proxy support. Exit status: 1 when a configured feature cannot work."
    )]
    Doctor(DoctorArgs),
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  kz completions bash > ~/.local/share/bash-completion/completions/kz\n  kz completions zsh > \"${fpath[1]}/_kz\"\n  kz completions fish > ~/.config/fish/completions/kz.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// The pod's transparent proxy (Kubernetes sidecar, runs as kz's uid)
    #[command(
        after_help = "Example:\n  kz sidecar -c /etc/keyzero/keyzero.toml --share-dir /var/run/keyzero\n\nTokens: KZ_TOKEN_<NAME>=KZ_TOK_... in the sidecar's environment fixes the token of secret NAME\n(the agent container gets the same value in its pod spec); others are generated. Either way\nNAME=TOKEN lines are written to <share-dir>/tokens.env, next to ca-bundle.pem and kz-ca.pem."
    )]
    Sidecar(SidecarArgs),
    /// Install the pod's redirect rules (Kubernetes init container; needs NET_ADMIN)
    #[command(
        name = "init-network",
        after_help = "Examples:\n  kz init-network --dry-run\n  kz init-network --kz-uid 17337 --exclude-uid 1337 --exclude-port 15020\n\nAll outbound TCP of every uid except kz's goes to kz's transparent port, DNS to kz's resolver,\nevery other egress is rejected (IPv4 and IPv6). Running it twice changes nothing."
    )]
    InitNetwork(InitNetworkArgs),
    /// Internal: the namespace helper of `kz run --isolate`
    #[command(name = "__isolate-helper", hide = true)]
    IsolateHelper,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file [default: $KZ_CONFIG, else the nearest .keyzero.toml from the working directory up]
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Give the command opaque tokens and swap them for real values on the wire (needs `hosts`)
    #[arg(long)]
    pub blind: bool,
    /// With --blind: run the command in its own network namespace (Linux)
    #[arg(long, requires = "blind")]
    pub isolate: bool,
    /// Do not conceal secret values in the command's output
    #[arg(long)]
    pub no_mask: bool,
    /// With --blind, as root: run the command as UID[:GID] (a container's agent user)
    #[arg(long, value_name = "UID[:GID]", requires = "blind")]
    pub user: Option<String>,
    /// With --blind: do not print the note that, without --isolate, the agent can read this
    /// user's files
    #[arg(long, short = 'q', requires = "blind")]
    pub quiet: bool,
    /// Append JSON audit lines to FILE (overrides [audit] path)
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// The command to run, after `--`
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Append JSON audit lines to FILE (overrides [audit] path)
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct StoreArg {
    /// Store file [default: [providers.local] path, $KZ_STORE, else ~/.local/share/keyzero/store.kz]
    #[arg(long, value_name = "FILE")]
    pub store: Option<PathBuf>,
    /// Config file whose [providers.local] settings to use
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret; the value is read from stdin (hidden when typed), never from arguments
    #[command(
        after_help = "Examples:\n  kz secret set openai            (type the value; it is not echoed)\n  printf %s \"$TOKEN\" | kz secret set github\n  kz secret set db --store ./team.kz < password.txt\n\nOne trailing newline is dropped from piped input."
    )]
    Set {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Print a secret's value
    #[command(after_help = "Example:\n  kz secret get openai")]
    Get {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List secret names (never values)
    #[command(after_help = "Example:\n  kz secret list")]
    List {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove a secret
    #[command(after_help = "Example:\n  kz secret rm openai")]
    Rm {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Print a new random key for KZ_LOCAL_KEY
    #[command(after_help = "Example:\n  export KZ_LOCAL_KEY=$(kz secret keygen)")]
    Keygen,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The dotenv file [default: .env]
    pub file: Option<PathBuf>,
    /// Delete the file once every value is stored and read back
    #[arg(long)]
    pub remove: bool,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Files or directories [default: .]
    pub paths: Vec<PathBuf>,
    /// Scan standard input instead (an agent transcript piped in)
    #[arg(long, conflicts_with = "paths")]
    pub stdin: bool,
    /// Also scan files that look binary
    #[arg(long)]
    pub binary: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Machine-readable output: a JSON array of {check, status, detail, fix}
    #[arg(long)]
    pub json: bool,
}

/// Shells `kz completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

#[derive(Debug, Args)]
pub struct SidecarArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The transparent listener port (on 127.0.0.1 and ::1)
    #[arg(long, default_value_t = crate::net::PROXY_PORT)]
    pub proxy_port: u16,
    /// The DNS port (UDP and TCP, on 127.0.0.1 and ::1)
    #[arg(long, default_value_t = crate::net::DNS_PORT)]
    pub dns_port: u16,
    /// Where GET /ready answers once the proxy serves (for a startupProbe; [::] is IPv4 and IPv6)
    #[arg(long, value_name = "ADDR", default_value_t = format!("[::]:{}", crate::net::READY_PORT))]
    pub ready_listen: String,
    /// Team mode: resolve through this policy server (as [server] url in the config does)
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The identity token for --server, read for every request (a projected service-account token)
    #[arg(long, value_name = "FILE", requires = "server")]
    pub server_token_file: Option<std::path::PathBuf>,
    /// Shared volume for the agent containers: ca-bundle.pem, kz-ca.pem, tokens.env
    #[arg(long, value_name = "DIR", default_value = "/var/run/keyzero")]
    pub share_dir: std::path::PathBuf,
    /// Append JSON audit lines to FILE
    #[arg(long, value_name = "FILE")]
    pub audit: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitNetworkArgs {
    /// kz's transparent listener port
    #[arg(long, default_value_t = crate::net::PROXY_PORT)]
    pub proxy_port: u16,
    /// kz's DNS port
    #[arg(long, default_value_t = crate::net::DNS_PORT)]
    pub dns_port: u16,
    /// The uid kz runs as; its own traffic is never redirected
    #[arg(long, default_value_t = crate::net::KZ_UID)]
    pub kz_uid: u32,
    /// More uids whose traffic is left alone (repeatable)
    #[arg(long = "exclude-uid", value_name = "UID")]
    pub exclude_uids: Vec<u32>,
    /// Outbound TCP destination ports left alone (repeatable)
    #[arg(long = "exclude-port", value_name = "PORT")]
    pub exclude_ports: Vec<u16>,
    /// Destination networks left alone, any protocol: 10.96.0.0/12, fd00::/8 (repeatable)
    #[arg(long = "exclude-cidr", value_name = "CIDR")]
    pub exclude_cidrs: Vec<kz_netns::rules::Cidr>,
    /// nft, iptables, or auto (nft when present)
    #[arg(long, default_value = "auto", value_parser = ["auto", "nft", "iptables"])]
    pub backend: String,
    /// Print exactly what would be applied, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// A Kubernetes `resources` object: only `requests`, `limits` and `claims`.
fn parse_resources(s: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))?;
    let o = v
        .as_object()
        .ok_or("expected an object with requests and limits")?;
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "requests" | "limits" | "claims"))
    {
        return Err(format!("unknown key {k:?} (requests, limits)"));
    }
    Ok(v)
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Serve /v1/resolve, /v1/decide, /healthz, /readyz and /metrics
    #[command(
        after_help = "Examples:\n  KZ_JWT_SECRET=dev-secret kz server start --bundle bundle.yaml\n  kz server start --bundle bundle.yaml --listen 0.0.0.0:8787 --tls-cert tls.crt --tls-key tls.key\n\nThe bundle is reloaded on SIGHUP and when the file changes; a bad bundle keeps the old one."
    )]
    Start {
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
        listen: String,
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Also serve MCP (Streamable HTTP) at /mcp: tools list_secrets, resolve, fetch
        #[arg(long)]
        mcp: bool,
        /// With --mcp: also accept this Host name (a Kubernetes Service, say) besides localhost
        /// and the --listen address; pages from it may call /mcp (repeatable)
        #[arg(long, value_name = "NAME", requires = "mcp")]
        allow_host: Vec<String>,
        /// Serve the sidecar injector at POST /inject with this kz image
        #[arg(long, value_name = "IMAGE")]
        inject_image: Option<String>,
        /// The ConfigMap with the sidecar's keyzero.toml, for injected pods
        #[arg(long, value_name = "NAME", default_value = "keyzero-agent")]
        inject_config_map: String,
        /// Injected sidecars resolve through this policy server with a projected token of their own
        #[arg(long, value_name = "URL", requires = "inject_image")]
        inject_server: Option<String>,
        /// The CA of --inject-server's certificate (read per pod; given to sidecars as KZ_SERVER_CA)
        #[arg(long, value_name = "FILE", requires = "inject_server")]
        inject_server_ca: Option<PathBuf>,
        /// Audience of the sidecar's projected service-account token
        #[arg(long, value_name = "AUD", default_value = "keyzero")]
        inject_token_audience: String,
        /// Lifetime of the sidecar's token in seconds (the kubelet renews it; at least 600)
        #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(i64).range(600..=86400))]
        inject_token_expiration: i64,
        /// resources of the injected sidecar, as JSON ({"requests":{"cpu":"50m"}})
        #[arg(long, value_name = "JSON", value_parser = parse_resources)]
        inject_sidecar_resources: Option<serde_json::Value>,
        /// resources of the injected init container, as JSON
        #[arg(long, value_name = "JSON", value_parser = parse_resources)]
        inject_init_resources: Option<serde_json::Value>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse a bundle and compile every CEL rule; every problem is listed
    #[command(after_help = "Example:\n  kz policy check bundle.yaml")]
    Check { bundle: PathBuf },
    /// Run YAML test cases (claims + ref -> expected decision); exit 1 when one fails
    #[command(
        after_help = "Example:\n  kz policy test bundle.yaml cases.yaml\n\ncases.yaml:\n  cases:\n  - name: pipeline reads prod\n    claims: { service: data-pipeline-agent }\n    ref: secret/data/prod/db\n    expect: allow"
    )]
    Test { bundle: PathBuf, cases: PathBuf },
    /// Explain one decision for a token and a ref
    #[command(
        after_help = "Example:\n  kz policy eval --bundle bundle.yaml --token \"$(cat agent.jwt)\" --ref secret/data/prod/db --provider vault"
    )]
    Eval {
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        #[arg(long, value_name = "JWT")]
        token: String,
        #[arg(long = "ref", value_name = "REF")]
        reference: String,
        #[arg(long, value_name = "PROVIDER")]
        provider: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint an HS256 development token signed with $KZ_JWT_SECRET
    #[command(
        after_help = "Example:\n  KZ_JWT_SECRET=dev-secret kz token mint --issuer https://issuer.example --audience keyzero \\\n    --claims '{\"sub\":\"agent-1\",\"service\":\"data-pipeline-agent\"}' --ttl 1h"
    )]
    Mint {
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        audience: String,
        #[arg(long, default_value = "{}")]
        claims: String,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

pub fn parse() -> Cli {
    Cli::parse()
}
