//! Keeping kz out of the agent's reach: kz makes itself non-dumpable with a zero core limit
//! before it holds a secret, and starts its child with a parent-death signal and, in blind
//! modes, with no capabilities at all (empty bounding set, `no_new_privs`).

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::libc;
use nix::sys::resource::{setrlimit, Resource};

use crate::NetnsError;

/// Makes this process non-dumpable and sets `RLIMIT_CORE` to 0 (soft and hard): a process of
/// the same uid can then neither read its memory or environment through `/proc`, nor ptrace
/// it, nor make it write a core file. Call before reading any secret.
pub fn protect_self() -> Result<(), NetnsError> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| NetnsError::Setup(format!("setting the core limit to 0: {e}")))?;
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| NetnsError::Setup(format!("making kz non-dumpable: {e}")))?;
    Ok(())
}

/// Whether this process is non-dumpable (for tests and `kz doctor`-style checks).
pub fn is_protected() -> bool {
    nix::sys::prctl::get_dumpable().is_ok_and(|d| !d)
}

/// How the child is started.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildLimits {
    /// Drop every capability (bounding, permitted, effective, inheritable, ambient) and set
    /// `no_new_privs`, so even a root child holds no privilege over kz.
    pub drop_caps: bool,
    /// Switch to this uid and gid (supplementary groups cleared) first; needs root.
    pub run_as: Option<(u32, u32)>,
}

/// The highest capability number any kernel defines today is 40; the loop goes further and
/// ignores numbers the kernel does not know.
const CAP_LIMIT: libc::c_ulong = 64;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Runs in the forked child before `exec`: only async-signal-safe system calls, no allocation.
fn confine_now(limits: ChildLimits, parent: libc::pid_t) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY: plain system calls on this process with constant or stack arguments; nothing
    // here allocates or takes a lock, as required between fork and exec.
    unsafe {
        if limits.drop_caps {
            for cap in 0..CAP_LIMIT {
                // EINVAL: no such capability on this kernel; EPERM: not ours to drop (not root),
                // in which case there is nothing in the bounding set to fear either.
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
        }
        if let Some((uid, gid)) = limits.run_as {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return fail();
            }
        }
        // After any uid change (which clears it): kill the child when kz dies, and close the
        // window in which kz died before the signal was armed.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return fail();
        }
        if libc::getppid() != parent {
            libc::_exit(125);
        }
        if limits.drop_caps {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail();
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            let mut header = CapHeader {
                version: CAP_VERSION_3,
                pid: 0,
            };
            let data = [CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            if libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            ) != 0
            {
                return fail();
            }
        }
    }
    Ok(())
}

/// Arranges for `cmd`'s child to die with this process (also on `SIGKILL`) and to run with
/// `limits`.
pub fn confine(cmd: &mut Command, limits: ChildLimits) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe system calls (see `confine_now`).
    unsafe {
        cmd.pre_exec(move || confine_now(limits, parent));
    }
}

/// For a process that has just changed its uid (which clears the parent-death signal): arm it
/// again, and exit if the parent is already gone.
pub fn rearm_parent_death(parent: u32) -> Result<(), NetnsError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| NetnsError::Setup(format!("arming the parent-death signal: {e}")))?;
    if nix::unistd::getppid().as_raw() as u32 != parent {
        std::process::exit(125);
    }
    Ok(())
}

/// Empties the capability bounding set (as far as this process may), for the helper before it
/// becomes the agent.
pub fn drop_bounding_set() {
    for cap in 0..CAP_LIMIT {
        // SAFETY: a prctl on this process with constant arguments.
        unsafe {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
    }
}
