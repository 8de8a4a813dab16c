//! `kz run --blind --isolate`: the supervisor side (start the helper, receive its listeners,
//! serve them) and the helper itself (`kz __isolate-helper`, see `kz_netns::sandbox`).

use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{CommandResult, Failure, EXIT_KZ};
use crate::child::{self, ChildSpec};
use crate::config::Config;
use crate::env::Env;
use crate::mask::MaskSet;
use crate::proxy::session::Session;
use crate::proxy::transparent::{FrontDoor, NAMESERVER};
use crate::secret::SecretValue;
use crate::serve::Stop;
use kz_netns::rules::{Backend, RuleSpec};

// The namespace's own ports (they cannot clash with the host): the same as in a pod.
use crate::net::{DNS_PORT, PROXY_PORT};
const SPEC_VAR: &str = "KZ_ISOLATE_SPEC";

/// What the supervisor tells the helper.
#[derive(Serialize, Deserialize)]
struct Spec {
    socket: PathBuf,
    dir: PathBuf,
    rootless: bool,
    uid: u32,
    gid: u32,
    nft: bool,
    command: Vec<String>,
    /// Run the command as this uid and gid (kz running as root).
    run_as: Option<(u32, u32)>,
    /// Credential files and directories to hide inside the namespace.
    hide: Vec<PathBuf>,
    /// Directories made private (each an empty tmpfs): `/tmp`, the user's runtime directory.
    private: Vec<PrivateDir>,
    /// Paths that stay visible whatever is mounted above them.
    keep: Vec<PathBuf>,
    /// The supervising kz, whose death ends the namespace.
    parent: u32,
}

/// A directory the helper makes private (an empty tmpfs with this mode and owner).
#[derive(Serialize, Deserialize)]
struct PrivateDir {
    path: PathBuf,
    mode: u32,
    owner: Option<(u32, u32)>,
}

/// The helper: enter the namespaces, set them up, hand over the listeners, become the agent.
pub fn helper() -> CommandResult {
    use kz_netns::sandbox;
    let raw = std::env::var(SPEC_VAR).map_err(|_| {
        Failure::new(
            crate::exit::EXIT_USAGE,
            "__isolate-helper is internal to kz run --isolate",
        )
    })?;
    let spec: Spec = serde_json::from_str(&raw)
        .map_err(|e| Failure::new(EXIT_KZ, format!("isolation: bad helper spec: {e}")))?;
    let setup = || -> Result<(), kz_netns::NetnsError> {
        sandbox::enter(spec.rootless, spec.uid, spec.gid)?;
        sandbox::setup_network()?;
        let rules = RuleSpec {
            proxy_port: PROXY_PORT,
            dns_port: DNS_PORT,
            exclude_uids: vec![],
            exclude_ports: vec![],
            exclude_cidrs: vec![],
        };
        sandbox::apply_rules(
            &rules,
            if spec.nft {
                Backend::Nft
            } else {
                Backend::Iptables
            },
        )?;
        let listeners = sandbox::Listeners::bind(PROXY_PORT, DNS_PORT)?;
        let sock = UnixStream::connect(&spec.socket)
            .map_err(|e| kz_netns::NetnsError::Setup(format!("connecting to kz: {e}")))?;
        listeners.send(&sock)?;
        drop(listeners);
        sandbox::bind_over(&spec.dir.join("resolv.conf"), Path::new("/etc/resolv.conf"))?;
        if Path::new("/etc/hosts").exists() {
            sandbox::bind_over(&spec.dir.join("hosts"), Path::new("/etc/hosts"))?;
        }
        // The hashed directory (with the bundle as ca-certificates.crt) over /etc/ssl/certs,
        // for clients that look CAs up by subject hash; then the bundle over every store file.
        let certs_dir = Path::new("/etc/ssl/certs");
        if certs_dir.is_dir() {
            sandbox::bind_over(&spec.dir.join("certs"), certs_dir)?;
        }
        for p in sandbox::TRUST_STORE_PATHS {
            if Path::new(p).exists() {
                sandbox::bind_over(&spec.dir.join("ca-bundle.pem"), Path::new(p))?;
            }
        }
        let private: Vec<sandbox::PrivateDir> = spec
            .private
            .iter()
            .map(|d| sandbox::PrivateDir {
                path: d.path.clone(),
                mode: d.mode,
                owner: d.owner,
            })
            .collect();
        sandbox::conceal(&private, &spec.hide, &spec.keep)?;
        kz_netns::contain::rearm_parent_death(spec.parent)?;
        sandbox::start_init()?;
        Ok(())
    };
    if let Err(e) = setup() {
        return Err(Failure::new(EXIT_KZ, e.to_string()));
    }
    let command: Vec<OsString> = spec.command.iter().map(OsString::from).collect();
    match sandbox::drop_and_exec(&command, &[SPEC_VAR, "SSH_AUTH_SOCK"], spec.run_as) {
        kz_netns::NetnsError::Exec(program, e) => {
            let (code, why) = crate::exit::of_spawn_error(&e);
            Err(Failure::new(code, format!("{program}: {why}")))
        }
        other => Err(Failure::new(EXIT_KZ, other.to_string())),
    }
}

/// What the namespace hides: kz's local store and key, the usual credential files of the user
/// (or of `--user`'s home), every `file` source and token file the config names, the audit log,
/// and `[isolate] hide`, minus `[isolate] expose`.
pub fn hidden_paths(cfg: &Config, audit: Option<&Path>, env: &dyn Env) -> Vec<PathBuf> {
    let home = env.home();
    let mut out: Vec<PathBuf> = Vec::new();
    if let Ok(paths) = crate::provider::local::StorePaths::resolve(&cfg.providers.local, None, env)
    {
        for f in [paths.store, paths.key_file] {
            if let Some(d) = f.parent().filter(|d| d.ends_with("keyzero")) {
                out.push(d.to_path_buf());
            }
            out.push(f);
        }
    }
    if let Some(h) = &home {
        for rel in DEFAULT_HIDDEN {
            out.push(h.join(rel));
        }
    }
    out.extend(SYSTEM_HIDDEN.iter().map(PathBuf::from));
    out.extend(cfg.credential_files());
    out.extend(audit.map(Path::to_path_buf));
    out.extend(
        cfg.isolate
            .hide
            .iter()
            .map(|p| expand_home(p, home.as_deref())),
    );
    let expose = exposed_paths(cfg, env);
    out.retain(|p| !expose.iter().any(|e| p.starts_with(e)));
    out.sort();
    out.dedup();
    out
}

fn expand_home(p: &str, home: Option<&Path>) -> PathBuf {
    match (p.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(p),
    }
}

/// `[isolate] expose`: paths taken off the hidden list, and kept visible inside the private
/// `/tmp` and runtime directory too (a tool installed under `/tmp`, say).
pub fn exposed_paths(cfg: &Config, env: &dyn Env) -> Vec<PathBuf> {
    let home = env.home();
    cfg.isolate
        .expose
        .iter()
        .map(|p| expand_home(p, home.as_deref()))
        .collect()
}

/// Credential files under the home directory that every isolated run hides.
pub const DEFAULT_HIDDEN: [&str; 9] = [
    ".vault-token",
    ".aws",
    ".config/op",
    ".op",
    ".docker/config.json",
    ".netrc",
    ".git-credentials",
    ".kube",
    ".config/gh/hosts.yml",
];

/// Host sockets outside `/tmp` and the runtime directory that would let the agent out.
const SYSTEM_HIDDEN: [&str; 3] = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
];

/// Runs `command` isolated, with the blind-mode `session` behind the transparent listener.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    session: Session,
    command: Vec<OsString>,
    mut env: Vec<(String, SecretValue)>,
    remove: Vec<String>,
    mask: Option<Arc<MaskSet>>,
    run_as: Option<(u32, u32)>,
    hide: Vec<PathBuf>,
    expose: Vec<PathBuf>,
) -> Result<u8, Failure> {
    if !kz_netns::supported() {
        return Err(Failure::new(
            EXIT_KZ,
            kz_netns::NetnsError::Unsupported.to_string(),
        ));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let nft =
        match kz_netns::rules::detect(&format!("{path}:/usr/sbin:/sbin")) {
            Some(Backend::Nft) => true,
            Some(Backend::Iptables) => false,
            None => return Err(Failure::new(
                EXIT_KZ,
                "isolation: needs nft (nftables) or iptables, iptables-restore, ip6tables and ip6tables-restore on PATH",
            )),
        };
    let dir = session.dir().to_path_buf();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| Failure::new(EXIT_KZ, format!("isolation: writing {name}: {e}")))
    };
    write(
        "resolv.conf",
        &format!("nameserver {NAMESERVER}\noptions ndots:0 attempts:1\n"),
    )?;
    write(
        "hosts",
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    )?;
    let socket = dir.join("helper.sock");
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| Failure::new(EXIT_KZ, format!("isolation: {e}")))?;
    let uid = nix::unistd::getuid();
    // /tmp and the user's runtime directory become private; the working directory and the CA
    // files stay where they are.
    let (owner_uid, owner_gid) = run_as.unwrap_or((uid.as_raw(), nix::unistd::getgid().as_raw()));
    let mut private = vec![PrivateDir {
        path: PathBuf::from("/tmp"),
        mode: 0o1777,
        owner: None,
    }];
    let mut runtime_dirs = vec![PathBuf::from(format!("/run/user/{owner_uid}"))];
    runtime_dirs.extend(std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from));
    for d in runtime_dirs {
        if d.is_dir() && !private.iter().any(|p| p.path == d) {
            private.push(PrivateDir {
                path: d,
                mode: 0o700,
                owner: Some((owner_uid, owner_gid)),
            });
        }
    }
    let mut keep: Vec<PathBuf> = std::env::current_dir().into_iter().collect();
    keep.extend(expose);
    keep.push(dir.join("ca-bundle.pem"));
    keep.push(dir.join("kz-ca.pem"));
    let mut hide = hide;
    hide.push(dir.clone());
    let spec = Spec {
        hide,
        private,
        keep,
        parent: std::process::id(),
        socket,
        dir: dir.clone(),
        rootless: !uid.is_root(),
        uid: uid.as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        nft,
        command: command
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect(),
        run_as,
    };
    env.push((
        SPEC_VAR.into(),
        SecretValue::new(serde_json::to_string(&spec).expect("spec serialises")),
    ));
    let proxy = session.proxy.clone();
    let stop = Stop::default();
    let door_stop = stop.clone();
    let serving = tokio::spawn(async move {
        let received = async {
            let (stream, _) = listener.accept().await.ok()?;
            let std_stream = stream.into_std().ok()?;
            let _ = std_stream.set_nonblocking(false);
            tokio::task::spawn_blocking(move || kz_netns::sandbox::receive_listeners(&std_stream))
                .await
                .ok()?
                .ok()
        };
        let l = tokio::select! {
            _ = door_stop.stopped() => return,
            l = received => l,
        };
        let Some(l) = l else { return };
        let tcp = |s: std::net::TcpListener| {
            let _ = s.set_nonblocking(true);
            tokio::net::TcpListener::from_std(s).ok()
        };
        let _ = l.dns4.set_nonblocking(true);
        let door = FrontDoor {
            tcp: [l.tcp4, l.tcp6].into_iter().filter_map(tcp).collect(),
            dns_udp: tokio::net::UdpSocket::from_std(l.dns4)
                .into_iter()
                .collect(),
            dns_tcp: tcp(l.dns_tcp4).into_iter().collect(),
        };
        for t in door.start(&proxy, &door_stop) {
            let _ = t.await;
        }
    });
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(EXIT_KZ, format!("isolation: cannot find kz itself: {e}")))?;
    let spec = ChildSpec {
        command: vec![exe.into_os_string(), "__isolate-helper".into()],
        env,
        remove,
        mask,
        // The helper needs its privileges to build the namespace; it drops them itself.
        limits: child::Limits::default(),
    };
    let result = child::run(spec).await;
    // The namespace is gone with its init: connections still open are drained, then cut.
    stop.stop();
    let _ = serving.await;
    session.stop().await;
    result.map_err(|e| Failure::new(e.code, e.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;

    #[test]
    fn the_hidden_list_covers_credentials_and_follows_hide_and_expose() {
        let cfg = crate::config::parse_str(
            r#"
[secrets]
DB = { provider = "file", ref = "/run/secrets/db" }
[server]
url = "https://pdp.test"
token_file = "/var/run/tokens/kz"
[isolate]
hide = ["~/.config/gcloud", "/srv/keys"]
expose = ["~/.kube"]
"#,
            ".keyzero.toml",
            Path::new("/p"),
        )
        .unwrap();
        let env = MapEnv::from_pairs([("HOME", "/home/u")]);
        let hidden = hidden_paths(&cfg, Some(Path::new("/p/audit.jsonl")), &env);
        for p in [
            "/home/u/.vault-token",
            "/home/u/.aws",
            "/home/u/.config/op",
            "/home/u/.docker/config.json",
            "/home/u/.netrc",
            "/home/u/.git-credentials",
            "/home/u/.local/share/keyzero/store.kz",
            "/home/u/.config/keyzero/local.key",
            "/run/secrets/db",
            "/var/run/tokens/kz",
            "/p/audit.jsonl",
            "/home/u/.config/gcloud",
            "/srv/keys",
        ] {
            assert!(
                hidden.iter().any(|h| h == Path::new(p)),
                "{p} not hidden: {hidden:?}"
            );
        }
        assert!(
            !hidden.iter().any(|h| h.starts_with("/home/u/.kube")),
            "exposed: {hidden:?}"
        );
    }
}
