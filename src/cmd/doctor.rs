//! `kz doctor [--json]`: what works on this machine with this config, one line per check
//! (`ok` / `warn` / `fail`) with the fix. Never a value. Exit 1 when something configured
//! cannot work.

use std::process::{Command, Stdio};

use serde_json::json;

use super::{process_env, resolve_config, runtime, CommandResult, Failure};
use crate::cli::DoctorArgs;
use crate::config::{self, ProviderKind};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

struct Check {
    name: String,
    status: Status,
    detail: String,
    fix: String,
}

fn check(name: &str, status: Status, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: fix.into(),
    }
}

fn runs(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether user namespaces can be created, and if not, the likely reason.
fn userns() -> Check {
    let root = nix::unistd::geteuid().is_root();
    let works = runs(Command::new("unshare").args(["--user", "--map-root-user", "true"]));
    if works {
        let how = if root {
            "root: --isolate uses namespaces directly"
        } else {
            "--isolate runs rootless"
        };
        return check("user namespaces", Status::Ok, how, "");
    }
    let mut why = Vec::new();
    if read_trimmed("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        why.push("kernel.unprivileged_userns_clone = 0");
    }
    if read_trimmed("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        why.push("user.max_user_namespaces = 0");
    }
    if read_trimmed("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref()
        == Some("1")
    {
        why.push("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)");
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        why.push("unshare (util-linux) is not installed, so this could not be tested");
    }
    if why.is_empty() {
        why.push("refused, probably by a seccomp profile (containers) or a security module");
    }
    let status = if root { Status::Warn } else { Status::Fail };
    check(
        "user namespaces",
        status,
        why.join("; "),
        "run kz as root (for example in the container entrypoint), or allow user namespaces (sysctl, an AppArmor profile for kz, a seccomp profile allowing unshare)",
    )
}

fn firewall() -> Check {
    let root = nix::unistd::geteuid().is_root();
    let prefix: Vec<&str> = if root {
        vec!["-n"]
    } else {
        vec!["-U", "-r", "-n"]
    };
    let try_tool = |tool: &[&str]| {
        let mut c = Command::new("unshare");
        c.args(&prefix).args(tool);
        runs(&mut c)
    };
    if try_tool(&["nft", "list", "tables"]) {
        check("firewall in a namespace", Status::Ok, "nftables", "")
    } else if try_tool(&["iptables-restore", "--version"]) {
        check(
            "firewall in a namespace",
            Status::Ok,
            "iptables (nft missing)",
            "",
        )
    } else {
        check(
            "firewall in a namespace",
            Status::Fail,
            "neither nft nor iptables-restore runs in a new network namespace",
            "install nftables (or iptables); --isolate needs one of them",
        )
    }
}

fn node() -> Check {
    let Ok(out) = Command::new("node").arg("--version").output() else {
        return check("node", Status::Ok, "not installed", "");
    };
    let v = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches('v')
        .to_string();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if major >= 24 || (major == 22 && minor >= 21) {
        check(
            "node",
            Status::Ok,
            format!("v{v} honours NODE_USE_ENV_PROXY=1 (set by kz)"),
            "",
        )
    } else {
        check(
            "node",
            Status::Warn,
            format!("v{v}: fetch ignores the proxy variables, so plain --blind cannot see Node's traffic"),
            "use --isolate, Node 24+ (or 22.21+), or undici's EnvHttpProxyAgent",
        )
    }
}

pub fn doctor(a: DoctorArgs) -> CommandResult {
    let env = process_env();
    let mut checks = Vec::new();
    let cwd = std::env::current_dir().unwrap_or_default();
    let cfg = match config::discover(a.config.config.as_deref(), &*env, &cwd) {
        Err(e) => {
            checks.push(check(
                "config",
                Status::Warn,
                e.to_string().replace('\n', "; "),
                "create .keyzero.toml (kz import turns a .env into one)",
            ));
            None
        }
        Ok(path) => match config::load(&path) {
            Ok(c) => {
                checks.push(check(
                    "config",
                    Status::Ok,
                    format!("{} ({} secrets)", path.display(), c.secrets.len()),
                    "",
                ));
                Some(c)
            }
            Err(e) => {
                checks.push(check(
                    "config",
                    Status::Fail,
                    e.to_string().replace('\n', "; "),
                    "fix the lines named",
                ));
                None
            }
        },
    };
    if let Some(cfg) = &cfg {
        // Providers: resolve everything once (as kz check does) and report per provider.
        let rt = runtime()?;
        let audit = crate::audit::Audit::disabled();
        let results = rt.block_on(resolve_config(cfg, env.clone(), &audit));
        let mut kinds: Vec<ProviderKind> = cfg.secrets.iter().map(|s| s.provider).collect();
        kinds.sort_by_key(|k| k.name());
        kinds.dedup();
        for kind in kinds {
            let mine: Vec<_> = results.iter().filter(|r| r.spec.provider == kind).collect();
            let errors: Vec<String> = mine.iter().filter_map(|r| r.error_line()).collect();
            let name = format!("provider {}", kind.name());
            if errors.is_empty() {
                checks.push(check(
                    &name,
                    Status::Ok,
                    format!("{} secret(s) resolved", mine.len()),
                    "",
                ));
            } else {
                checks.push(check(
                    &name,
                    Status::Fail,
                    errors.join("; "),
                    "see kz check; credentials and addresses are in the README's provider sections",
                ));
            }
        }
        let unbound: Vec<&str> = cfg
            .secrets
            .iter()
            .filter(|s| s.hosts.is_empty())
            .map(|s| s.name.as_str())
            .collect();
        if unbound.is_empty() {
            checks.push(check(
                "blind mode",
                Status::Ok,
                "every secret has hosts",
                "",
            ));
        } else {
            checks.push(check(
                "blind mode",
                Status::Warn,
                format!("no hosts: {}", unbound.join(", ")),
                "add hosts = [...] to use --blind",
            ));
        }
    }
    let local_cfg = cfg
        .as_ref()
        .map(|c| c.providers.local.clone())
        .unwrap_or_default();
    match crate::provider::local::StorePaths::resolve(&local_cfg, None, &*env)
        .map_err(|e| e.to_string())
        .and_then(|p| crate::provider::local::read_only(&p).map_err(|e| e.to_string()))
    {
        Ok(s) => checks.push(check(
            "local store",
            Status::Ok,
            format!("{} secret(s)", s.secrets.len()),
            "",
        )),
        Err(e) => checks.push(check(
            "local store",
            Status::Fail,
            e,
            "check KZ_LOCAL_KEY / the key file named",
        )),
    }
    checks.push(userns());
    checks.push(firewall());
    let tmp = std::env::temp_dir();
    match tempfile::Builder::new()
        .prefix("kz-doctor-")
        .tempdir_in(&tmp)
    {
        Ok(_) => checks.push(check(
            "runtime directory",
            Status::Ok,
            tmp.display().to_string(),
            "",
        )),
        Err(e) => checks.push(check(
            "runtime directory",
            Status::Fail,
            format!("{}: {e}", tmp.display()),
            "set TMPDIR to a writable directory",
        )),
    }
    let mut vars: Vec<&str> = crate::blind::env::CA_BUNDLE_VARS.to_vec();
    vars.extend(["SSL_CERT_DIR", "WGETRC", "KZ_CA_CERT"]);
    checks.push(check(
        "CA variables (blind)",
        Status::Ok,
        vars.join(" "),
        "",
    ));
    checks.push(node());

    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    if a.json {
        let list: Vec<_> = checks
            .iter()
            .map(|c| json!({"check": c.name, "status": c.status.word(), "detail": c.detail, "fix": c.fix}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list)
                .map_err(|e| Failure::new(crate::exit::EXIT_FAIL, e.to_string()))?
        );
    } else {
        for c in &checks {
            let fix = if c.fix.is_empty() {
                String::new()
            } else {
                format!(" — fix: {}", c.fix)
            };
            println!("{:<4}  {}: {}{fix}", c.status.word(), c.name, c.detail);
        }
    }
    Ok(if worst == Status::Fail { 1 } else { 0 })
}
