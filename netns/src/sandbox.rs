//! The helper side of `--isolate`: a freshly started, single-threaded kz process that moves into
//! new network and mount namespaces (and a user namespace when not root, mapping the invoking
//! user to itself), configures loopback and default routes over netlink, applies the redirect
//! rules, creates the listeners and hands them to the supervising kz over a Unix socket, hides
//! the host's resolver and trust store behind private copies, makes `/tmp` and the user's
//! runtime directory private, hides credential files, starts the namespace's init (pid 1 of a
//! new PID namespace, so the agent and everything it starts die with kz), drops every
//! capability, sets `no_new_privs`, and finally becomes the agent with `exec`.

use std::ffi::OsString;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::rules::{iptables_restore, nft_ruleset, Backend, RuleSpec};
use crate::NetnsError;

fn err(step: &str, e: impl std::fmt::Display) -> NetnsError {
    NetnsError::Setup(format!("{step}: {e}"))
}

/// Enters new network and mount namespaces; with `rootless`, a user namespace first, mapping
/// `uid`/`gid` to themselves. Must run while the process is single-threaded.
pub fn enter(rootless: bool, uid: u32, gid: u32) -> Result<(), NetnsError> {
    let mut flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS;
    if rootless {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(flags).map_err(|e| match e {
        nix::errno::Errno::EPERM | nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSPC if rootless => NetnsError::Setup(format!(
            "cannot create a user namespace ({e}); check sysctl kernel.unprivileged_userns_clone=1, \
             user.max_user_namespaces > 0 and, on Ubuntu, kernel.apparmor_restrict_unprivileged_userns=0"
        )),
        e => err("unshare(network, mount)", e),
    })?;
    if rootless {
        let write = |file: &str, data: &str| {
            std::fs::write(format!("/proc/self/{file}"), data)
                .map_err(|e| err(&format!("writing /proc/self/{file}"), e))
        };
        write("setgroups", "deny")?;
        write("uid_map", &format!("{uid} {uid} 1\n"))?;
        write("gid_map", &format!("{gid} {gid} 1\n"))?;
    }
    // From here on a same-uid process cannot read or trace the helper (the maps above needed
    // it dumpable).
    nix::sys::prctl::set_dumpable(false).map_err(|e| err("making the helper non-dumpable", e))?;
    // Mounts made from here on stay inside this namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| err("making mounts private", e))?;
    Ok(())
}

fn netlink_request(
    socket: &Socket,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<(), NetnsError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(|e| err("netlink send", e))?;
    let mut reply = vec![0u8; 8192];
    let n = socket
        .recv(&mut &mut reply[..], 0)
        .map_err(|e| err("netlink recv", e))?;
    let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
        .map_err(|e| err("netlink reply", e))?;
    match parsed.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(err("netlink", e.to_io())),
        _ => Ok(()),
    }
}

/// Loopback up, and default routes for IPv4 and IPv6 through it (preferring the loopback
/// addresses as source, so redirected connections have a loopback source), over netlink.
pub fn setup_network() -> Result<(), NetnsError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| err("netlink socket", e))?;
    socket.bind_auto().map_err(|e| err("netlink bind", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| err("netlink connect", e))?;
    let lo = nix::net::if_::if_nametoindex("lo").map_err(|e| err("finding lo", e))?;
    let mut link = LinkMessage::default();
    link.header.index = lo;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    netlink_request(&socket, RouteNetlinkMessage::SetLink(link), 0)?;
    for (family, src) in [
        (AddressFamily::Inet, RouteAddress::Inet(Ipv4Addr::LOCALHOST)),
        (
            AddressFamily::Inet6,
            RouteAddress::Inet6(Ipv6Addr::LOCALHOST),
        ),
    ] {
        let mut route = RouteMessage::default();
        route.header = RouteHeader {
            address_family: family,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Static,
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        route.attributes = vec![RouteAttribute::Oif(lo), RouteAttribute::PrefSource(src)];
        netlink_request(
            &socket,
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    Ok(())
}

/// Applies the rules with the given backend. In a user namespace the tool would lose its
/// capabilities on `exec`, so CAP_NET_ADMIN is passed to it as an ambient capability.
pub fn apply_rules(spec: &RuleSpec, backend: Backend) -> Result<(), NetnsError> {
    use caps::{CapSet, Capability};
    let _ = caps::raise(None, CapSet::Inheritable, Capability::CAP_NET_ADMIN);
    let _ = caps::raise(None, CapSet::Ambient, Capability::CAP_NET_ADMIN);
    let path = std::env::var("PATH").unwrap_or_default();
    let run = |cmd: &str, input: String| -> Result<(), NetnsError> {
        let tool = crate::rules::find_tool(&path, cmd)
            .ok_or_else(|| err(&format!("running {cmd}"), "not found"))?;
        let mut child = Command::new(tool)
            .args(if cmd == "nft" {
                &["-f", "-"][..]
            } else {
                // Only kz's own chains are replaced; other owners' rules stay.
                &["--noflush"][..]
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(&format!("running {cmd}"), e))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .map_err(|e| err(cmd, e))?;
        let out = child.wait_with_output().map_err(|e| err(cmd, e))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            return Err(err(
                cmd,
                why.lines().next().unwrap_or("failed").to_lowercase(),
            ));
        }
        Ok(())
    };
    // Whether `OUTPUT` of `table` already jumps to kz's chain (a second run adds no second jump).
    let jumps = |bin: &str, table: &str| -> bool {
        crate::rules::find_tool(&path, bin).is_some_and(|tool| {
            Command::new(tool)
                .args([
                    "-w",
                    "-t",
                    table,
                    "-C",
                    "OUTPUT",
                    "-j",
                    crate::rules::IPT_CHAIN,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    };
    let result = match backend {
        Backend::Nft => run("nft", nft_ruleset(spec)),
        Backend::Iptables => {
            let v4 = iptables_restore(
                spec,
                false,
                !jumps("iptables", "nat"),
                !jumps("iptables", "filter"),
            );
            let v6 = iptables_restore(
                spec,
                true,
                !jumps("ip6tables", "nat"),
                !jumps("ip6tables", "filter"),
            );
            run("iptables-restore", v4).and_then(|_| run("ip6tables-restore", v6))
        }
    };
    let _ = caps::clear(None, CapSet::Ambient);
    result
}

/// The listeners created inside the namespace.
pub struct Listeners {
    pub tcp4: TcpListener,
    pub tcp6: TcpListener,
    pub dns4: UdpSocket,
    pub dns_tcp4: TcpListener,
}

impl Listeners {
    pub fn bind(proxy_port: u16, dns_port: u16) -> Result<Self, NetnsError> {
        Ok(Listeners {
            tcp4: TcpListener::bind((Ipv4Addr::LOCALHOST, proxy_port))
                .map_err(|e| err("transparent listener", e))?,
            tcp6: TcpListener::bind((Ipv6Addr::LOCALHOST, proxy_port))
                .map_err(|e| err("transparent listener (ipv6)", e))?,
            dns4: UdpSocket::bind((Ipv4Addr::LOCALHOST, dns_port))
                .map_err(|e| err("dns listener", e))?,
            dns_tcp4: TcpListener::bind((Ipv4Addr::LOCALHOST, dns_port))
                .map_err(|e| err("dns listener (tcp)", e))?,
        })
    }

    /// Sends the four descriptors to the supervisor in one message.
    pub fn send(&self, to: &UnixStream) -> Result<(), NetnsError> {
        let fds = [
            self.tcp4.as_raw_fd(),
            self.tcp6.as_raw_fd(),
            self.dns4.as_raw_fd(),
            self.dns_tcp4.as_raw_fd(),
        ];
        let iov = [std::io::IoSlice::new(b"kz-listeners")];
        sendmsg::<()>(
            to.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| err("passing listeners to kz", e))?;
        Ok(())
    }
}

/// Receives the listeners the helper sent (supervisor side).
pub fn receive_listeners(from: &UnixStream) -> Result<Listeners, NetnsError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 32];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        from.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| err("receiving listeners", e))?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| err("receiving listeners", e))? {
        if let ControlMessageOwned::ScmRights(v) = c {
            fds.extend(v);
        }
    }
    if fds.len() != 4 {
        return Err(NetnsError::Setup(format!(
            "expected 4 listeners from the helper, got {}",
            fds.len()
        )));
    }
    // SAFETY: the kernel just installed these descriptors in this process for us (SCM_RIGHTS);
    // nothing else owns them, so each is wrapped exactly once.
    unsafe {
        Ok(Listeners {
            tcp4: TcpListener::from_raw_fd(fds[0]),
            tcp6: TcpListener::from_raw_fd(fds[1]),
            dns4: UdpSocket::from_raw_fd(fds[2]),
            dns_tcp4: TcpListener::from_raw_fd(fds[3]),
        })
    }
}

/// Bind-mounts `src` over `dst` (following a symlinked `dst` to its target).
pub fn bind_over(src: &Path, dst: &Path) -> Result<(), NetnsError> {
    let target: PathBuf =
        std::fs::canonicalize(dst).map_err(|e| err(&format!("resolving {}", dst.display()), e))?;
    mount(
        Some(src),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| err(&format!("bind-mounting over {}", target.display()), e))
}

/// System trust store files of common distributions.
pub const TRUST_STORE_PATHS: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Drops every capability, sets `no_new_privs` and replaces this process with `command`,
/// first switching to `run_as` (uid, gid; supplementary groups cleared) when given.
/// Returns only on failure.
pub fn drop_and_exec(
    command: &[OsString],
    remove_env: &[&str],
    run_as: Option<(u32, u32)>,
) -> NetnsError {
    use caps::CapSet;
    crate::contain::drop_bounding_set();
    if let Some((uid, gid)) = run_as {
        use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
        if let Err(e) = setgroups(&[])
            .and_then(|_| setgid(Gid::from_raw(gid)))
            .and_then(|_| setuid(Uid::from_raw(uid)))
        {
            return err(&format!("switching to uid {uid} gid {gid}"), e);
        }
    }
    // The namespace's init is the parent; a uid change cleared the signal, so arm it again.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        return err("arming the parent-death signal", e);
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        if let Err(e) = caps::clear(None, set) {
            return err("dropping capabilities", e);
        }
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        return err("setting no_new_privs", e);
    }
    let Some((program, args)) = command.split_first() else {
        return NetnsError::Setup("no command".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    for k in remove_env {
        cmd.env_remove(k);
    }
    let e = cmd.exec();
    NetnsError::Exec(program.to_string_lossy().into_owned(), e)
}

/// A directory made private: an empty tmpfs with this mode (and owner) over it.
pub struct PrivateDir {
    pub path: PathBuf,
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
}

/// A path kept visible at the same place after the mounts below (the working directory, the
/// CA files), opened before anything is mounted over it.
struct Kept {
    path: PathBuf,
    fd: std::fs::File,
    dir: bool,
}

fn open_path(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_CLOEXEC)
        .open(p)
}

fn mount_tmpfs(path: &Path, options: &str, readonly: bool) -> Result<(), NetnsError> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if readonly {
        flags |= MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC;
    }
    mount(Some("tmpfs"), path, Some("tmpfs"), flags, Some(options)).map_err(|e| {
        err(
            &format!("mounting an empty tmpfs over {}", path.display()),
            e,
        )
    })
}

/// Makes `dirs` private (each an empty tmpfs), hides `hide` (an empty read-only tmpfs over a
/// directory, `/dev/null` over anything else), and then puts each of `keep` back at its path,
/// so the working directory stays visible even under `/tmp`. Paths that do not exist are left
/// alone. Returns the paths actually hidden.
pub fn conceal(
    dirs: &[PrivateDir],
    hide: &[PathBuf],
    keep: &[PathBuf],
) -> Result<Vec<PathBuf>, NetnsError> {
    let mut kept = Vec::new();
    for p in keep {
        let Ok(meta) = std::fs::metadata(p) else {
            continue;
        };
        let path =
            std::fs::canonicalize(p).map_err(|e| err(&format!("resolving {}", p.display()), e))?;
        let fd = open_path(&path).map_err(|e| err(&format!("opening {}", path.display()), e))?;
        kept.push(Kept {
            path,
            fd,
            dir: meta.is_dir(),
        });
    }
    for d in dirs {
        let Ok(path) = std::fs::canonicalize(&d.path) else {
            continue;
        };
        let mut options = format!("mode={:o}", d.mode);
        if let Some((u, g)) = d.owner {
            options.push_str(&format!(",uid={u},gid={g}"));
        }
        mount_tmpfs(&path, &options, false)?;
    }
    let put_back = |k: &Kept| -> Result<(), NetnsError> {
        let present = if k.dir {
            std::fs::create_dir_all(&k.path)
        } else {
            k.path
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|_| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&k.path)
                        .map(drop)
                })
        };
        present.map_err(|e| err(&format!("keeping {} visible", k.path.display()), e))?;
        let src = format!("/proc/self/fd/{}", k.fd.as_raw_fd());
        mount(
            Some(src.as_str()),
            &k.path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| err(&format!("keeping {} visible", k.path.display()), e))
    };
    // What the private directories covered comes back first, so that hiding applies inside
    // the working directory too.
    for k in &kept {
        if dirs
            .iter()
            .any(|d| std::fs::canonicalize(&d.path).is_ok_and(|d| k.path.starts_with(d)))
        {
            put_back(k)?;
        }
    }
    let mut hidden = Vec::new();
    for p in hide {
        let Ok(path) = std::fs::canonicalize(p) else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            // Writable only when something kept must get a mount point inside it.
            let holds_kept = kept.iter().any(|k| k.path.starts_with(&path));
            mount_tmpfs(&path, "mode=755,size=64k", !holds_kept)?;
        } else {
            mount(
                Some("/dev/null"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| err(&format!("hiding {}", path.display()), e))?;
        }
        hidden.push(path);
    }
    // Kept files (the CA bundle) inside a hidden directory are put back once more.
    for k in kept.iter().filter(|k| !k.dir) {
        if hidden.iter().any(|h| k.path.starts_with(h) && *h != k.path) {
            put_back(k)?;
        }
    }
    // The working directory is looked up again so that it names the mount now at its path.
    if let Ok(cwd) = std::env::current_dir() {
        let _ = std::env::set_current_dir(cwd);
    }
    Ok(hidden)
}

/// Signals the helper and the init pass on to their child (as `kz run` does).
const FORWARDED: [nix::sys::signal::Signal; 6] = [
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
    nix::sys::signal::Signal::SIGUSR1,
    nix::sys::signal::Signal::SIGUSR2,
];

fn supervised_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(nix::sys::signal::Signal::SIGCHLD);
    set
}

/// Waits for `child`, passing on signals that another process sent (a terminal's signals reach
/// the whole process group already) and reaping every other process that ends; returns the
/// shell-style status of `child`.
fn supervise(child: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let set = supervised_set();
    loop {
        // SAFETY: `info` is a plain C struct the kernel fills in; the set lives on the stack.
        let (signo, code) = unsafe {
            let mut info: nix::libc::siginfo_t = std::mem::zeroed();
            let n = nix::libc::sigwaitinfo(set.as_ref(), &mut info);
            (n, info.si_code)
        };
        if signo < 0 {
            continue;
        }
        if signo == nix::libc::SIGCHLD {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, c)) if pid == child => return c,
                    Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => return 128 + s as i32,
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        } else if code <= 0 {
            // SI_USER, SI_QUEUE, SI_TKILL: sent by a process (kz), not by the terminal.
            if let Ok(sig) = nix::sys::signal::Signal::try_from(signo) {
                let _ = nix::sys::signal::kill(child, sig);
            }
        }
    }
}

/// Starts the PID namespace's init and, under it, the agent's process. Returns only in the
/// agent's process (which then calls `drop_and_exec`). The helper waits for the init and exits
/// with its status; the init mounts a `/proc` of the new namespace, waits for the agent and
/// exits with its status, taking every process the agent left behind with it. Both die with
/// their parent, so a `SIGKILL`ed kz takes the whole namespace down.
pub fn start_init() -> Result<(), NetnsError> {
    use nix::sys::signal::{sigprocmask, SigmaskHow};
    use nix::unistd::{fork, ForkResult};
    // Only now: the first child after this call is the namespace's pid 1, and the rule tools
    // run earlier must not be it.
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| err("unshare(pid)", e))?;
    let set = supervised_set();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(|e| err("blocking signals", e))?;
    // SAFETY: the helper is single-threaded (a fresh exec of kz that started no threads), so
    // the child may run any code after fork.
    match unsafe { fork() }.map_err(|e| err("starting the namespace's init", e))? {
        ForkResult::Parent { child } => std::process::exit(supervise(child)),
        ForkResult::Child => {}
    }
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| err("arming the parent-death signal", e))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| err("mounting /proc for the new pid namespace", e))?;
    // SAFETY: still single-threaded, as above.
    match unsafe { fork() }.map_err(|e| err("starting the agent", e))? {
        ForkResult::Parent { child } => {
            // The init keeps no privilege the agent could borrow.
            let _ = caps::clear(None, caps::CapSet::Effective);
            let _ = caps::clear(None, caps::CapSet::Permitted);
            std::process::exit(supervise(child))
        }
        ForkResult::Child => {
            sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)
                .map_err(|e| err("unblocking signals", e))?;
            Ok(())
        }
    }
}
