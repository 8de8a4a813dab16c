//! Running the child: spawn with extra environment, forward signals, optionally pipe its
//! stdout/stderr through the masker, and map its exit status to kz's exit code.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::mask::MaskSet;
use crate::secret::SecretValue;

pub const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// What to run.
pub struct ChildSpec {
    pub command: Vec<OsString>,
    /// Variables added to (or replacing) kz's environment.
    pub env: Vec<(String, SecretValue)>,
    /// Variables removed from the inherited environment.
    pub remove: Vec<String>,
    /// Values to conceal in output, when masking is on.
    pub mask: Option<Arc<MaskSet>>,
    /// Privileges and identity of the child.
    pub limits: Limits,
}

/// How much the child may hold. It always dies with kz (parent-death signal, also when kz is
/// killed with `SIGKILL`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// No capabilities at all (empty bounding set, `no_new_privs`): blind modes.
    pub drop_caps: bool,
    /// Run as this uid and gid (kz running as root).
    pub run_as: Option<(u32, u32)>,
}

/// Why the child could not be started, with the exit code kz reports.
#[derive(Debug)]
pub struct SpawnError {
    pub code: u8,
    pub message: String,
}

/// Spawns the child and waits for it (and for its masked output to drain).
pub async fn run(spec: ChildSpec) -> Result<u8, SpawnError> {
    let program = spec.command.first().cloned().ok_or(SpawnError {
        code: crate::exit::EXIT_USAGE,
        message: "no command given".into(),
    })?;
    let shown = program.to_string_lossy().to_string();
    let mut std_cmd = std::process::Command::new(&program);
    #[cfg(target_os = "linux")]
    kz_netns::contain::confine(
        &mut std_cmd,
        kz_netns::contain::ChildLimits {
            drop_caps: spec.limits.drop_caps,
            run_as: spec.limits.run_as,
        },
    );
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.args(&spec.command[1..]);
    for k in &spec.remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v.expose());
    }
    let mask_out = spec
        .mask
        .as_ref()
        .filter(|_| !std::io::stdout().is_terminal());
    let mask_err = spec
        .mask
        .as_ref()
        .filter(|_| !std::io::stderr().is_terminal());
    cmd.stdin(Stdio::inherit());
    cmd.stdout(if mask_out.is_some() {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });
    cmd.stderr(if mask_err.is_some() {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });

    // Handlers go in before the spawn so no signal is lost in between; the child's exec
    // resets them to their defaults.
    let mut signals = SignalsInfo::<WithOrigin>::new(FORWARDED).map_err(|e| SpawnError {
        code: crate::exit::EXIT_KZ,
        message: format!("cannot install signal handlers: {e}"),
    })?;
    let handle = signals.handle();

    let mut child = cmd.spawn().map_err(|e| {
        let (code, why) = crate::exit::of_spawn_error(&e);
        handle.close();
        SpawnError {
            code,
            message: format!("{shown}: {why}"),
        }
    })?;
    let pid = child.id().map(|p| Pid::from_raw(p as i32));

    let forwarder = std::thread::spawn(move || {
        for info in signals.forever() {
            // A terminal delivers Ctrl-C (and friends) to the whole foreground process group,
            // which includes the child: forwarding those would deliver them twice.
            if matches!(info.cause, Cause::Kernel) {
                continue;
            }
            if let (Some(pid), Ok(sig)) = (pid, Signal::try_from(info.signal)) {
                let _ = kill(pid, sig);
            }
        }
    });

    let out_task = match (child.stdout.take(), mask_out) {
        (Some(r), Some(set)) => Some(tokio::spawn(pump(r, tokio::io::stdout(), set.clone()))),
        _ => None,
    };
    let err_task = match (child.stderr.take(), mask_err) {
        (Some(r), Some(set)) => Some(tokio::spawn(pump(r, tokio::io::stderr(), set.clone()))),
        _ => None,
    };
    let status = child.wait().await;
    for t in [out_task, err_task].into_iter().flatten() {
        let _ = t.await;
    }
    handle.close();
    let _ = forwarder.join();
    let status = status.map_err(|e| SpawnError {
        code: crate::exit::EXIT_KZ,
        message: format!("waiting for {shown}: {e}"),
    })?;
    Ok(crate::exit::of_status(status))
}

/// Copies `r` to `w` through a masker until EOF. Stops reading when `w` is closed, so the
/// child sees a broken pipe just as it would without kz.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut r: R, mut w: W, set: Arc<MaskSet>) {
    let mut masker = set.masker();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(buf.len() + 64);
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        out.clear();
        masker.push(&buf[..n], &mut out);
        if !out.is_empty() && (w.write_all(&out).await.is_err() || w.flush().await.is_err()) {
            return;
        }
    }
    out.clear();
    masker.finish(&mut out);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
}
