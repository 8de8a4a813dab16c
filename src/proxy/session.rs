//! A blind-mode session: tokens generated, the proxy listening on loopback with a per-run
//! credential, the CA bundle written to a private temporary directory, and the child's
//! environment built from all of that. Stopping it shuts the proxy down and removes the files.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::upstream::{Resolver, Upstream};
use super::{ca, Proxy};
use crate::audit::Audit;
use crate::blind::{env::child_env, TokenTable};
use crate::config::Config;
use crate::env::Env;
use crate::fs::FileError;
use crate::secret::SecretValue;

pub struct Session {
    pub proxy: Arc<Proxy>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// `SSL_CERT_DIR` for the child.
    cert_dirs: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// A random per-run proxy password.
fn credential() -> String {
    crate::blind::new_token()[crate::blind::token::GENERIC_PREFIX.len()..].to_string()
}

fn write_private(path: &std::path::Path, data: &str, mode: u32) -> Result<(), FileError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(FileError::at(path))?;
    f.write_all(data.as_bytes()).map_err(FileError::at(path))
}

/// Why blind mode could not start; one line per problem, never a value.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Secrets whose values are too short to scrub from responses.
    #[error("{}", too_short(.0))]
    TooShort(Vec<String>),
    #[error("proxy: cannot listen on 127.0.0.1: {0}")]
    Listen(std::io::Error),
    #[error("cannot create a private temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("network.upstream_ca: {0}")]
    UpstreamCa(crate::http::PemError),
    /// The proxy's URL is shown without its password.
    #[error("upstream proxy {url}: {reason}")]
    UpstreamProxy {
        url: String,
        reason: crate::config::egress::ProxyUrlError,
    },
}

fn too_short(names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "{n}: its value is shorter than {} characters, too short to scrub from responses; blind mode refuses it",
                crate::conceal::forms::MIN_MASK_LEN
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `url` with the password of its user part replaced by `***`.
fn without_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Starts the proxy for `vars` (name → real value) as configured in `cfg`.
/// With `transparent` (`--isolate`), the host's loopback is reachable only through names
/// mapped in `[network] hosts`.
pub async fn start(
    cfg: &Config,
    vars: Vec<(String, SecretValue)>,
    mode: &crate::blind::TokenMode,
    audit: Arc<Audit>,
    transparent: bool,
) -> Result<Session, StartError> {
    let proxy = Arc::new(build_proxy(
        cfg,
        vars,
        &std::collections::HashMap::new(),
        mode,
        audit,
        transparent,
    )?);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(StartError::Listen)?;
    let port = listener.local_addr().map_err(StartError::Listen)?.port();
    let tmp = std::env::temp_dir();
    remove_stale_dirs(&tmp);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&tmp)
        .map_err(StartError::TempDir)?;
    // Under --isolate the hashed directory stands in for /etc/ssl/certs, so it holds every
    // root; otherwise it holds kz's CA alone and SSL_CERT_DIR lists the system's directory
    // after it (a colon-separated list, as OpenSSL and Go read it), which spares writing a
    // file per root on every run.
    let system_dir = if transparent {
        None
    } else {
        system_cert_dir(&crate::env::ProcessEnv)
    };
    write_ca_files(
        &proxy,
        dir.path(),
        0o600,
        user_wgetrc(&crate::env::ProcessEnv).as_deref(),
        system_dir.is_none(),
    )?;
    let own = dir.path().join("certs").to_string_lossy().into_owned();
    let cert_dirs = match system_dir {
        Some(sys) => format!("{own}:{}", sys.display()),
        None => own,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(super::run(listener, proxy.clone(), async move {
        let _ = stopped.await;
    }));
    Ok(Session {
        cert_dirs,
        proxy,
        port,
        dir,
        stop,
        task,
    })
}

/// Runtime directories are named `kz-blind-<pid>-<random>`, so the next run can tell the ones
/// a killed kz left behind.
const DIR_PREFIX: &str = "kz-blind-";

/// Removes runtime directories of this user whose kz is no longer running (a kz killed with
/// `SIGKILL` cannot clean up after itself).
fn remove_stale_dirs(tmp: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::getuid().as_raw();
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let dead = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        let mine = std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.uid() == me && m.is_dir());
        if dead && mine {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The system's hashed certificate directory: the user's `SSL_CERT_DIR`, else the usual
/// places (Debian, Fedora/RHEL).
pub fn system_cert_dir(env: &dyn Env) -> Option<std::path::PathBuf> {
    env.nonempty("SSL_CERT_DIR")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(["/etc/ssl/certs", "/etc/pki/tls/certs"].map(std::path::PathBuf::from))
        .find(|d| d.is_dir())
}

/// Writes `ca-bundle.pem` (system roots + kz's CA), `kz-ca.pem`, the hashed directory
/// `certs/` (for `SSL_CERT_DIR` and `/etc/ssl/certs`: every root with `all_roots`, else kz's CA
/// alone) and a `wgetrc` naming the bundle into `dir`. `user_wgetrc` (the user's own
/// settings) is kept in front.
pub fn write_ca_files(
    proxy: &Proxy,
    dir: &std::path::Path,
    mode: u32,
    user_wgetrc: Option<&str>,
    all_roots: bool,
) -> Result<(), FileError> {
    let ca_pem = proxy.ca.cert_pem();
    let mut bundle = ca::pem_encode(crate::http::system_roots());
    bundle.push_str(&ca_pem);
    let bundle_path = dir.join("ca-bundle.pem");
    let wgetrc = crate::blind::env::wgetrc(user_wgetrc, &bundle_path.to_string_lossy());
    for (name, text) in [
        ("ca-bundle.pem", bundle.as_str()),
        ("kz-ca.pem", ca_pem.as_str()),
        ("wgetrc", wgetrc.as_str()),
    ] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        write_private(&path, text, mode)?;
    }
    let mut certs: Vec<_> = if all_roots {
        crate::http::system_roots().to_vec()
    } else {
        Vec::new()
    };
    certs.push(proxy.ca.cert_der());
    let cert_dir = dir.join("certs");
    // A sidecar writes again into the same shared volume after a restart.
    let _ = std::fs::remove_dir_all(&cert_dir);
    super::certdir::write(&cert_dir, &certs, &bundle, mode)
}

/// The user's own wget settings (`$WGETRC`, else `~/.wgetrc`), kept in the generated one.
pub fn user_wgetrc(env: &dyn Env) -> Option<String> {
    let path = env
        .nonempty("WGETRC")
        .map(std::path::PathBuf::from)
        .or_else(|| env.home().map(|h| h.join(".wgetrc")))?;
    std::fs::read_to_string(path).ok()
}

/// The proxy state for `vars` (name → real value) as configured in `cfg`; `preset` fixes
/// the tokens of some secrets.
pub fn build_proxy(
    cfg: &Config,
    vars: Vec<(String, SecretValue)>,
    preset: &std::collections::HashMap<String, String>,
    mode: &crate::blind::TokenMode,
    audit: Arc<Audit>,
    transparent: bool,
) -> Result<Proxy, StartError> {
    // A value this short cannot be told apart from ordinary response bytes, so it could not be
    // scrubbed from what the upstream echoes: refuse it rather than pass it.
    let short: Vec<String> = vars
        .iter()
        .filter(|(_, v)| v.expose().len() < crate::conceal::forms::MIN_MASK_LEN)
        .map(|(n, _)| n.clone())
        .collect();
    if !short.is_empty() {
        return Err(StartError::TooShort(short));
    }
    let mut secrets = Vec::new();
    for (name, value) in vars {
        let (hosts, swap) = cfg
            .secrets
            .iter()
            .find(|s| s.name == name)
            .map(|s| (s.hosts.clone(), s.swap))
            .unwrap_or_default();
        secrets.push((name, value, hosts, swap));
    }
    let table = Arc::new(TokenTable::with_tokens(secrets, preset, mode));
    // Whatever a line holds (a host, a path, a refusal's reason), never a value or a token.
    let filter_table = table.clone();
    audit.set_filter(Box::new(move |line| filter_table.conceal(line)));
    let ca = ca::Ca::generate()?;
    let mut extra = Vec::new();
    if let Some(p) = &cfg.network.upstream_ca {
        extra = crate::http::read_pem_certs(p).map_err(StartError::UpstreamCa)?;
    }
    let mut resolver = Resolver::new(cfg.network.hosts.clone(), cfg.network.allow_private);
    if transparent {
        resolver = resolver.loopback_only_when_mapped();
    }
    let proxy_url = cfg.network.upstream_proxy.clone().or_else(|| {
        ["HTTPS_PROXY", "https_proxy"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    });
    let no_proxy = ["NO_PROXY", "no_proxy"]
        .iter()
        .find_map(|k| std::env::var(k).ok());
    let via = match proxy_url {
        Some(u) => Some(
            super::upstream::UpstreamProxy::parse(&u, no_proxy.as_deref()).map_err(|reason| {
                StartError::UpstreamProxy {
                    url: without_password(&u),
                    reason,
                }
            })?,
        ),
        None => None,
    };
    Ok(Proxy {
        table,
        ca,
        upstream: Upstream::new(resolver.via(via), &extra),
        allow: cfg.network.allow.clone(),
        credential: credential(),
        audit,
        response_timeout: cfg
            .network
            .response_timeout
            .unwrap_or(super::intercept::RESPONSE_TIMEOUT),
    })
}

impl Session {
    pub fn proxy_url(&self) -> String {
        format!(
            "http://kz:{}@127.0.0.1:{}",
            self.proxy.credential, self.port
        )
    }

    /// Lets `uid`/`gid` (`--user`) read the CA files.
    pub fn share_with(&self, uid: u32, gid: u32) {
        let (u, g) = (
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        );
        for f in ["ca-bundle.pem", "kz-ca.pem"] {
            let _ = nix::unistd::chown(&self.dir.path().join(f), u, g);
        }
        let _ = nix::unistd::chown(self.dir.path(), u, g);
    }

    /// The private directory holding the CA files (removed by `stop`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Tokens for every secret plus the proxy and CA variables.
    pub fn child_env(&self, env: &dyn Env) -> Vec<(String, SecretValue)> {
        self.child_env_with(env, true)
    }

    /// For `--isolate`: tokens and CA variables, no proxy variables (the namespace's loopback is
    /// its own; every connection reaches kz transparently).
    pub fn child_env_isolated(&self, env: &dyn Env) -> Vec<(String, SecretValue)> {
        self.child_env_with(env, false)
    }

    fn child_env_with(&self, env: &dyn Env, with_proxy: bool) -> Vec<(String, SecretValue)> {
        let mut out: Vec<(String, SecretValue)> = self
            .proxy
            .table
            .secrets
            .iter()
            .map(|s| (s.name.clone(), SecretValue::new(s.token.clone())))
            .collect();
        let user_no_proxy = env.var("NO_PROXY").or_else(|| env.var("no_proxy"));
        let bound: Vec<crate::config::HostPattern> = self
            .proxy
            .table
            .secrets
            .iter()
            .flat_map(|s| s.hosts.iter().cloned())
            .collect();
        let (no_proxy, dropped) = crate::blind::env::no_proxy(user_no_proxy.as_deref(), &bound);
        if with_proxy && !dropped.is_empty() {
            eprintln!(
                "kz: note: NO_PROXY entries {} left out for the agent: they would send bound hosts around kz",
                dropped.join(", ")
            );
        }
        let path = |f: &str| self.dir.path().join(f).to_string_lossy().into_owned();
        let (bundle, ca_only, cert_dir, wgetrc) = (
            path("ca-bundle.pem"),
            path("kz-ca.pem"),
            self.cert_dirs.clone(),
            path("wgetrc"),
        );
        let files = crate::blind::env::CaFiles {
            bundle: &bundle,
            ca_only: &ca_only,
            cert_dir: &cert_dir,
            wgetrc: &wgetrc,
        };
        for (k, v) in child_env(&self.proxy_url(), &files, &no_proxy) {
            let proxy_var = k.to_ascii_lowercase().ends_with("_proxy") || k == "NODE_USE_ENV_PROXY";
            if with_proxy || !proxy_var {
                out.push((k, SecretValue::new(v)));
            }
        }
        out
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        drop(self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_proxy_url_is_shown_without_its_password() {
        assert_eq!(
            without_password("http://alice:s3cr3t-pw@proxy.corp:3128"),
            "http://alice:***@proxy.corp:3128"
        );
        assert_eq!(
            without_password("http://proxy.corp:3128"),
            "http://proxy.corp:3128"
        );
        let e = StartError::UpstreamProxy {
            url: without_password("socks5://bob:hunter22@p"),
            reason: crate::config::egress::ProxyUrlError::Scheme,
        };
        assert!(!e.to_string().contains("hunter22"), "{e}");
    }

    #[test]
    fn every_too_short_secret_gets_its_own_line() {
        let e = StartError::TooShort(vec!["A".into(), "B".into()]);
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("A: its value is shorter than"));
        assert!(lines[1].starts_with("B: "));
    }
}
