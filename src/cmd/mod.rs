//! Subcommands. Each returns an exit code or a `Failure` carrying every error line.

pub mod check;
pub mod doctor;
pub mod import;
pub mod init_network;
#[cfg(target_os = "linux")]
pub mod isolate;
pub mod mcp;
pub mod policy;
pub mod scan;
pub mod server;
pub mod token;
#[cfg(not(target_os = "linux"))]
pub mod isolate {
    //! `--isolate` needs Linux namespaces; elsewhere it is a clear error.
    use super::{CommandResult, Failure, EXIT_KZ};

    pub fn helper() -> CommandResult {
        Err(Failure::new(
            EXIT_KZ,
            kz_netns::NetnsError::Unsupported.to_string(),
        ))
    }

    pub async fn run(
        session: crate::proxy::session::Session,
        _command: Vec<std::ffi::OsString>,
        _env: Vec<(String, crate::secret::SecretValue)>,
        _remove: Vec<String>,
        _mask: Option<std::sync::Arc<crate::mask::MaskSet>>,
        _run_as: Option<(u32, u32)>,
        _hide: Vec<std::path::PathBuf>,
        _expose: Vec<std::path::PathBuf>,
    ) -> Result<u8, Failure> {
        session.stop().await;
        Err(Failure::new(
            EXIT_KZ,
            kz_netns::NetnsError::Unsupported.to_string(),
        ))
    }
}
pub mod run;
pub mod secret;
#[cfg(target_os = "linux")]
pub mod sidecar;
#[cfg(not(target_os = "linux"))]
pub mod sidecar {
    //! The sidecar needs Linux (original destinations of redirected connections).
    pub fn sidecar(_: crate::cli::SidecarArgs) -> super::CommandResult {
        Err(super::Failure::new(
            super::EXIT_KZ,
            kz_netns::NetnsError::Unsupported.to_string(),
        ))
    }
}

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::Audit;
use crate::cli::{Cli, Command};
use crate::config::{self, Config};
use crate::env::{Env, ProcessEnv};
use crate::provider::{resolve_all, ProviderSet, Resolved};

pub use crate::exit::{EXIT_FAIL, EXIT_KZ};

/// A failed command: one line per problem, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub lines: Vec<String>,
}

impl Failure {
    pub fn new(code: u8, line: impl std::fmt::Display) -> Self {
        Failure {
            code,
            lines: vec![line.to_string()],
        }
    }
    pub fn many(code: u8, lines: Vec<String>) -> Self {
        Failure { code, lines }
    }
}

pub type CommandResult = Result<u8, Failure>;

pub fn dispatch(cli: Cli) -> CommandResult {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::check(args),
        Command::Import(a) => import::import(a),
        Command::Scan(a) => scan::scan(a),
        Command::Doctor(a) => doctor::doctor(a),
        Command::Completions { shell } => completions(shell),
        Command::Secret(cmd) => secret::secret(cmd),
        Command::IsolateHelper => isolate::helper(),
        Command::InitNetwork(a) => init_network::init_network(a),
        Command::Sidecar(a) => {
            protect_self()?;
            sidecar::sidecar(a)
        }
        Command::Server(c) => {
            protect_self()?;
            server::server(c)
        }
        Command::Mcp {
            bundle,
            identity_token_file,
        } => {
            protect_self()?;
            mcp::mcp_stdio(bundle, identity_token_file)
        }
        Command::Policy(c) => policy::policy(c),
        Command::Token(c) => token::token(c),
    }
}

/// An error's text as lines (each becomes one `kz: ` line).
fn lines(e: impl ToString) -> Vec<String> {
    e.to_string().lines().map(String::from).collect()
}

/// Seconds since the epoch.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

/// Makes kz non-dumpable with a zero core limit (before it reads any secret), so a process of
/// the same uid cannot read its memory or environment, ptrace it, or make it dump core.
pub fn protect_self() -> Result<(), Failure> {
    #[cfg(target_os = "linux")]
    kz_netns::contain::protect_self().map_err(|e| Failure::new(EXIT_KZ, e.to_string()))?;
    Ok(())
}

/// `KZ_WORKER_THREADS`, when set to a number.
fn worker_threads() -> Option<usize> {
    std::env::var("KZ_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// The runtime of the servers (`kz server`, `kz sidecar`, `kz mcp`): two worker threads, or
/// `KZ_WORKER_THREADS`.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    build_runtime(Some(worker_threads().unwrap_or(2)))
}

/// The runtime of `kz run`, which serves one agent: one thread (its proxy costs less per
/// request without a work-stealing scheduler), or `KZ_WORKER_THREADS` worker threads.
pub fn agent_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    build_runtime(worker_threads())
}

fn build_runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = match workers {
        Some(n) if n > 0 => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| Failure::new(EXIT_KZ, format!("cannot start runtime: {e}")))
}

/// Finds and validates the config; every problem becomes one line.
pub fn load_config(explicit: Option<&Path>, env: &dyn Env, code: u8) -> Result<Config, Failure> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let path = config::discover(explicit, env, &cwd)
        .map_err(|e| Failure::many(code, e.to_string().lines().map(String::from).collect()))?;
    config::load(&path)
        .map_err(|e| Failure::many(code, e.to_string().lines().map(String::from).collect()))
}

pub fn open_audit(cfg: &Config, flag: Option<&Path>) -> Result<Audit, Failure> {
    match flag
        .map(Path::to_path_buf)
        .or_else(|| cfg.audit.as_ref().map(|a| a.path.clone()))
    {
        Some(p) => Audit::open(&p).map_err(|e| Failure::new(EXIT_KZ, e)),
        None => Ok(Audit::disabled()),
    }
}

/// Resolves every secret of `cfg` concurrently, then lets the providers give back what they
/// borrowed (a Vault token kz obtained by login is revoked: nothing later needs it).
pub async fn resolve_config(cfg: &Config, env: Arc<dyn Env>, audit: &Audit) -> Vec<Resolved> {
    let set = ProviderSet::build(cfg, env);
    let resolved = resolve_all(&cfg.secrets, &set, audit).await;
    set.finish().await;
    resolved
}

pub fn process_env() -> Arc<dyn Env> {
    Arc::new(ProcessEnv)
}

/// How blind mode makes tokens for `cfg` (`[blind] tokens`). Stable tokens are keyed with a
/// key derived from kz's local store key (created on first use), never kept in the project;
/// the project is the directory of the config file.
pub fn token_mode(
    cfg: &Config,
    env: &dyn Env,
    code: u8,
) -> Result<crate::blind::TokenMode, Failure> {
    use crate::provider::local::{StoreKey, StorePaths};
    if cfg.blind.tokens != config::TokenKind::Stable {
        return Ok(crate::blind::TokenMode::PerRun);
    }
    let fail =
        |e: &dyn std::fmt::Display| Failure::new(code, format!("blind.tokens = \"stable\": {e}"));
    let paths = StorePaths::resolve(&cfg.providers.local, None, env).map_err(|e| fail(&e))?;
    let key = StoreKey::load(&paths, true)
        .map_err(|e| fail(&e))?
        .ok_or_else(|| fail(&"no local key"))?;
    let project = cfg
        .path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok())
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .unwrap_or_default();
    Ok(crate::blind::TokenMode::Stable {
        key: key.derive("keyzero stable tokens v1"),
        project: project.to_string_lossy().into_owned(),
    })
}

/// `kz completions SHELL`: the completion script on stdout.
fn completions(shell: crate::cli::CompletionShell) -> CommandResult {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let shell = match shell {
        crate::cli::CompletionShell::Bash => Shell::Bash,
        crate::cli::CompletionShell::Zsh => Shell::Zsh,
        crate::cli::CompletionShell::Fish => Shell::Fish,
        crate::cli::CompletionShell::Powershell => Shell::PowerShell,
    };
    let mut cmd = crate::cli::Cli::command();
    clap_complete::generate(shell, &mut cmd, "kz", &mut std::io::stdout());
    Ok(0)
}
