//! Containment: a hostile agent under kz's own uid (a script started by `kz run`) tries every
//! local trick — kz's memory, environment, ptrace, a forced core dump, its own environment,
//! `kz secret get`, a nested `kz run`, credential files, host Unix sockets, host loopback
//! services, the audit log — and must never get a real value. Each scenario runs as root and as
//! an ordinary user (uid 65534, rootless namespaces for `--isolate`); as root the tests need no
//! skipping, and with `KZ_REQUIRE_PRIVILEGED=1` a machine that cannot run them fails.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::util::{fixture, kz_bin, run, Sandbox};
use crate::util::{privileged, Needs};

const REAL_ENV: &str = "ghp_REALcontainmentValue_0123456789";
const REAL_LOCAL: &str = "local-REAL-store-value-55555";
const REAL_VAULT_TOKEN: &str = "hvs.REALvaultTokenForKz_777";
const REAL_AWS: &str = "awsREALsecretAccessKey/0123456789";
const FILE_MARK: &str = "FILE-REAL-CONTENT";
const NOBODY: u32 = 65534;
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether the suite runs as root (so both identities can be tried).
fn root() -> bool {
    nix::unistd::getuid().is_root()
}

/// The identities a scenario runs as: root and uid 65534 when the suite is root, else just the
/// current user.
fn identities() -> Vec<Option<u32>> {
    if privileged(Needs::Root) {
        vec![None, Some(NOBODY)]
    } else {
        vec![None]
    }
}

/// A project whose secrets come from kz's environment, the local store and a file, plus the
/// usual credential files in its HOME, all owned by the identity that runs kz.
struct Agent {
    sb: Sandbox,
    user: Option<u32>,
    kz: PathBuf,
}

impl Agent {
    fn new(user: Option<u32>, extra_config: &str) -> Self {
        let sb = Sandbox::new();
        let files = [
            ".vault-token",
            ".aws/credentials",
            ".config/op/config",
            ".docker/config.json",
            ".netrc",
            ".git-credentials",
            ".kube/config",
            ".config/gh/hosts.yml",
        ];
        for f in files {
            sb.write(&format!("home/{f}"), &format!("{FILE_MARK} {f}\n"));
        }
        sb.write(
            "secrets/db-password",
            &format!("{FILE_MARK} file-provider\n"),
        );
        sb.config(&format!(
            r#"
[secrets]
GH = {{ provider = "env", ref = "REAL_GH", hosts = ["api.kz.test"] }}
LOC = {{ provider = "local", ref = "loc", hosts = ["api.kz.test"] }}
DB = {{ provider = "file", ref = "secrets/db-password", hosts = ["db.kz.test"] }}

[providers.vault]
auth = {{ method = "token", token_env = "MY_VAULT_TOKEN" }}

[audit]
path = "audit.jsonl"
{extra_config}
"#
        ));
        // kz runs from its own copy, so an ordinary user can execute it wherever the checkout is.
        let kz = sb.path().join("bin/kz");
        std::fs::create_dir_all(kz.parent().unwrap()).unwrap();
        std::fs::copy(kz_bin(), &kz).unwrap();
        std::fs::copy(fixture("attack.py"), sb.path().join("bin/attack.py")).unwrap();
        let agent = Agent { sb, user, kz };
        if let Some(uid) = user {
            let st = Command::new("chown")
                .args(["-R", &format!("{uid}:{uid}")])
                .arg(agent.sb.path())
                .status()
                .unwrap();
            assert!(st.success());
        }
        std::fs::set_permissions(agent.sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A home directory as most systems create it: private to its owner.
        std::fs::set_permissions(agent.sb.home(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut c = agent.kz_cmd();
        c.args(["secret", "set", "loc"]);
        let (code, _, err) = crate::util::run_with_stdin(&mut c, REAL_LOCAL);
        assert_eq!(code, 0, "{err}");
        agent
    }

    /// `kz` as this scenario's identity, with backend credentials in its environment.
    fn kz_cmd(&self) -> Command {
        let mut c = match self.user {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                ])
                .arg(&self.kz);
                c
            }
            None => Command::new(&self.kz),
        };
        c.env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("HOME", self.sb.home())
            .env("REAL_GH", REAL_ENV)
            .env("MY_VAULT_TOKEN", REAL_VAULT_TOKEN)
            .env("VAULT_TOKEN", REAL_VAULT_TOKEN)
            .env("AWS_SECRET_ACCESS_KEY", REAL_AWS)
            .env("KZ", &self.kz)
            .env("ATTACK", self.sb.path().join("bin/attack.py"))
            .current_dir(self.sb.path())
            .stdin(std::process::Stdio::null());
        c
    }

    fn run(&self, mode: &[&str], script: &str) -> (i32, String, String) {
        let mut c = self.kz_cmd();
        c.arg("run")
            .args(mode)
            .args(["--no-mask", "--", "sh", "-c", script]);
        run(&mut c)
    }

    /// Fails if any real value (or a credential file's content) is anywhere the agent could
    /// have put what it read: its output and every file under the project.
    fn assert_nothing_leaked(&self, what: &str, out: &str, err: &str) {
        let mut places = vec![("stdout".to_string(), out.as_bytes().to_vec())];
        places.push(("stderr".into(), err.as_bytes().to_vec()));
        for f in walk(self.sb.path()) {
            if f.file_name().is_some_and(|n| n == "kz")
                || f.starts_with(self.sb.home())
                || f.starts_with(self.sb.path().join("secrets"))
            {
                continue;
            }
            if let Ok(data) = std::fs::read(&f) {
                places.push((f.display().to_string(), data));
            }
        }
        for (place, data) in places {
            for v in [REAL_ENV, REAL_LOCAL, REAL_VAULT_TOKEN, REAL_AWS, FILE_MARK] {
                assert!(
                    !contains(&data, v.as_bytes()),
                    "{what}: {v:?} reached {place}\n{out}\n{err}"
                );
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn label(user: Option<u32>) -> &'static str {
    if user.is_some() {
        "as uid 65534"
    } else if root() {
        "as root"
    } else {
        "as this user"
    }
}

#[test]
fn blind_kz_is_out_of_reach_of_a_same_uid_agent() {
    for user in identities() {
        let a = Agent::new(user, "");
        let (code, out, err) = a.run(
            &["--blind", "-q"],
            r#"KZPID=$PPID
python3 "$ATTACK" loot.bin "$KZPID"
echo "env-source=${REAL_GH:-removed} vault=${VAULT_TOKEN:-removed}${MY_VAULT_TOKEN:-removed} aws=${AWS_SECRET_ACCESS_KEY:-removed}"
prlimit --core=unlimited --pid "$KZPID" 2>/dev/null && echo "core-limit RAISED" || echo "core-limit DENIED"
grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status
"#,
        );
        let who = label(user);
        assert_eq!(code, 0, "{who}: {out}{err}");
        for door in ["environ", "mem", "ptrace", "root"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(door) && l.contains(" DENIED")),
                "{who}: {door} of kz was not refused:\n{out}"
            );
            assert!(
                !out.lines()
                    .any(|l| l.starts_with(door) && l.contains(" OPEN")),
                "{who}: {door} of kz was open:\n{out}"
            );
        }
        assert!(
            out.contains("env-source=removed vault=removedremoved aws=removed"),
            "{who}: {out}"
        );
        assert!(out.contains("core-limit DENIED"), "{who}: {out}");
        // Even a root child holds no capability, nor can it regain one.
        assert!(out.contains("CapEff:\t0000000000000000"), "{who}: {out}");
        if user.is_none() && root() {
            assert!(out.contains("CapBnd:\t0000000000000000"), "{who}: {out}");
        }
        assert!(out.contains("NoNewPrivs:\t1"), "{who}: {out}");
        a.assert_nothing_leaked(who, &out, &err);
    }
}

#[test]
fn a_forced_core_dump_of_kz_writes_nothing() {
    for user in identities() {
        let a = Agent::new(user, "");
        let (code, out, err) = a.run(
            &["--blind", "-q"],
            r#"KZPID=$PPID; cd /; kill -ABRT "$KZPID"; sleep 2; kill -SEGV "$KZPID" 2>/dev/null; sleep 1"#,
        );
        // kz died of the signal (no core); its child was killed with it.
        assert_ne!(code, 0, "{out}{err}");
        let cores: Vec<PathBuf> = walk(a.sb.path())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("core"))
            })
            .collect();
        assert!(cores.is_empty(), "{}: core files {cores:?}", label(user));
        a.assert_nothing_leaked(label(user), &out, &err);
    }
}

#[test]
fn the_agent_dies_with_a_sigkilled_kz() {
    if !privileged(Needs::Namespaces) {
        return;
    }
    for user in identities() {
        for mode in [&["--blind", "-q"][..], &["--blind", "--isolate"][..]] {
            let a = Agent::new(user, "");
            let tmp = tempfile::tempdir().unwrap();
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            // The direct child becomes `sleep N`; it started `sleep N+1` first.
            let n = 100_000 + std::process::id() % 100_000;
            let (direct, detached) = (format!("sleep\0{n}\0"), format!("sleep\0{}\0", n + 1));
            let mut c = a.kz_cmd();
            c.env("TMPDIR", tmp.path())
                .arg("run")
                .args(mode)
                .args(["--", "sh", "-c"])
                .arg(format!("sleep {} & exec sleep {n}", n + 1))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut kz = c.spawn().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while (count(&direct) < 1 || count(&detached) < 1)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            assert_eq!(count(&direct) + count(&detached), 2, "agent did not start");
            // setpriv execs kz, so this is kz itself.
            kz.kill().unwrap();
            kz.wait().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(500));
            let (left_direct, left_detached) = (count(&direct), count(&detached));
            for k in [n, n + 1] {
                let _ = Command::new("pkill")
                    .args(["-x", "-f", &format!("sleep {k}")])
                    .status();
            }
            assert_eq!(
                left_direct,
                0,
                "{} {mode:?}: the agent outlived kz",
                label(user)
            );
            if mode.contains(&"--isolate") {
                assert_eq!(
                    left_detached,
                    0,
                    "{} {mode:?}: a process the agent started outlived kz",
                    label(user)
                );
            }
            // The killed kz could not remove its runtime directory; the next run does.
            let stale = |p: &Path| std::fs::read_dir(p).unwrap().count();
            assert_eq!(stale(tmp.path()), 1, "the killed run's directory");
            let mut next = a.kz_cmd();
            next.env("TMPDIR", tmp.path())
                .args(["run", "--blind", "-q", "--", "true"]);
            let (code, _, err) = run(&mut next);
            assert_eq!(code, 0, "{err}");
            assert_eq!(
                stale(tmp.path()),
                0,
                "{} {mode:?}: stale directory kept",
                label(user)
            );
        }
    }
}

fn count(cmdline: &str) -> usize {
    procs().iter().filter(|c| c.as_str() == cmdline).count()
}

fn procs() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
        .collect()
}

/// A host loopback service the agent must not reach: it counts connections.
fn loopback_service() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            use std::io::Write;
            let _ = (&s).write_all(b"HTTP/1.0 200 OK\r\n\r\nHOST-LOOPBACK-SECRET\n");
        }
    });
    (port, hits)
}

#[test]
fn isolated_agent_finds_no_credential_anywhere() {
    if !privileged(Needs::Namespaces) {
        return;
    }
    let (port, hits) = loopback_service();
    for user in identities() {
        let a = Agent::new(
            user,
            "[network]\nallow_private = true\nhosts = { \"api.kz.test\" = \"127.0.0.1\" }\n",
        );
        // A host Unix socket in /tmp and one in the user's runtime directory.
        let sock_dir = tempfile::Builder::new()
            .prefix("kz-host-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let sock_path = sock_dir.path().join("agent.sock");
        let sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        sock.set_nonblocking(true).unwrap();
        let script = format!(
            r#"
python3 "$ATTACK" loot.bin all
env >> loot.bin
for f in ~/.vault-token ~/.aws/credentials ~/.config/op/config ~/.docker/config.json ~/.netrc \
         ~/.git-credentials ~/.kube/config ~/.config/gh/hosts.yml secrets/db-password audit.jsonl \
         ~/.config/keyzero/local.key ~/.local/share/keyzero/store.kz; do
  cat "$f" >> loot.bin 2>/dev/null; [ -s "$f" ] && echo "read $f" || echo "hidden $f"
done
"$KZ" secret get loc >> loot.bin 2>&1; echo "secret-get=$?"
"$KZ" run -- sh -c 'echo "nested=$LOC $DB"' >> loot.bin 2>&1; echo "nested-run=$?"
echo "ssh=${{SSH_AUTH_SOCK:-unset}}"
python3 -c '
import socket, sys
for p in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(p); print("unix CONNECTED", p)
    except OSError as e:
        print("unix refused", p, type(e).__name__)
' {sock} "${{SSH_AUTH_SOCK:-/nonexistent}}"
for target in "http://localhost:{port}/" "http://127.0.0.1:{port}/" "http://[::1]:{port}/"; do
  curl -sS -m 5 --noproxy '*' "$target" >> loot.bin 2>&1; echo "direct $target=$?"
done
for host in "localhost:{port}" "127.0.0.1:{port}" "0.0.0.0:{port}" "[::1]:{port}" "2130706433:{port}" "localtest.me:{port}"; do
  curl -sS -m 5 --noproxy '*' -H "Host: $host" "http://192.0.2.10:{port}/" >> loot.bin 2>&1
  echo "host-trick $host"
done
python3 -c '
import socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
try:
    s = ctx.wrap_socket(socket.create_connection(("192.0.2.10", int(sys.argv[1])), timeout=5), server_hostname="localhost")
    print("sni-trick CONNECTED")
except Exception as e:
    print("sni-trick refused", type(e).__name__)
' {port}
"#,
            sock = sock_path.display()
        );
        let mut c = a.kz_cmd();
        c.env("SSH_AUTH_SOCK", &sock_path)
            .env("XDG_RUNTIME_DIR", sock_dir.path())
            .arg("run")
            .args([
                "--blind",
                "--isolate",
                "--no-mask",
                "--",
                "sh",
                "-c",
                &script,
            ]);
        let (code, out, err) = run(&mut c);
        let who = label(user);
        assert_eq!(code, 0, "{who}: {out}{err}");
        assert!(
            !out.lines().any(|l| l.starts_with("read ")),
            "{who}: a credential file was readable:\n{out}"
        );
        for d in ["environ", "mem", "ptrace"] {
            assert!(
                !out.lines().any(|l| l.starts_with(d) && l.contains(" OPEN")),
                "{who}: {d} of a process in the namespace was open:\n{out}"
            );
        }
        assert!(out.contains("secret-get=1"), "{who}: {out}");
        assert!(out.contains("nested-run=125"), "{who}: {out}");
        assert!(out.contains("ssh=unset"), "{who}: {out}");
        assert!(!out.contains("unix CONNECTED"), "{who}: {out}");
        assert!(
            out.contains(&format!("unix refused {}", sock_path.display())),
            "{who}: {out}"
        );
        assert!(!out.contains("sni-trick CONNECTED"), "{who}: {out}");
        assert!(
            sock.accept().is_err(),
            "{who}: the host socket got a connection"
        );
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "{who}: a host loopback service was reached:\n{out}"
        );
        let loot = std::fs::read(a.sb.path().join("loot.bin")).unwrap_or_default();
        assert!(!contains(&loot, b"HOST-LOOPBACK-SECRET"), "{who}");
        a.assert_nothing_leaked(who, &out, &err);
    }
}

#[test]
fn plain_blind_as_another_user_cannot_read_the_owners_files() {
    if !privileged(Needs::Root) {
        return;
    }
    let a = Agent::new(None, "");
    // The agent user may write its loot into the project, as an agent would.
    std::fs::set_permissions(a.sb.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, out, err) = a.run(
        &["--blind", "-q", "--user", "65534"],
        r#"id -u
python3 "$ATTACK" loot.bin $PPID
for f in ~/.vault-token ~/.aws/credentials audit.jsonl ~/.config/keyzero/local.key; do
  [ -s "$f" ] && cat "$f" >/dev/null 2>&1 && echo "read $f" || echo "denied $f"
done
"$KZ" secret get loc 2>&1; echo "secret-get=$?"
"#,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("65534\n"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("read ")), "{out}");
    assert!(out.contains("secret-get=1"), "{out}");
    a.assert_nothing_leaked("--user", &out, &err);
}

#[test]
fn plain_blind_warns_that_files_stay_readable_unless_quiet() {
    let a = Agent::new(None, "");
    let (code, _, err) = a.run(&["--blind"], "true");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("--isolate")).count(),
        1,
        "{err}"
    );
    let (_, _, err) = a.run(&["--blind", "--quiet"], "true");
    assert!(err.is_empty(), "{err}");
    let (_, _, err) = a.run(&[], "true");
    assert!(err.is_empty(), "standard mode says nothing: {err}");
}

#[test]
fn standard_mode_passes_no_backend_credential() {
    let a = Agent::new(None, "");
    let (code, out, err) = a.run(
        &[],
        r#"echo "gh=$GH loc=$LOC src=${REAL_GH:-removed} vt=${VAULT_TOKEN:-removed} mvt=${MY_VAULT_TOKEN:-removed} aws=${AWS_SECRET_ACCESS_KEY:-removed}""#,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("gh={REAL_ENV} loc={REAL_LOCAL} src=removed vt=removed mvt=removed aws=removed")
    );
}
