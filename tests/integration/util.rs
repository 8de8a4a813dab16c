//! Test harness: a sandbox with its own HOME and config, a `kz` command builder, and helpers
//! that start the stand-in servers and moto on loopback and stop them on drop.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The kz under test: `KZ_TEST_BIN` when set (`scripts/test` runs these tests a second time on
/// the shipped build that `scripts/build-pgo` makes), else this checkout's build.
pub fn kz_bin() -> PathBuf {
    match std::env::var_os("KZ_TEST_BIN") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "KZ_TEST_BIN={}: no such file", p.display());
            p
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_kz")),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The Python with the test dependencies (`moto[server]`): `KZ_TEST_PYTHON`, else the venv that
/// `scripts/test` creates.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("KZ_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "test python not found at {}: run scripts/test (it creates the venv) or set KZ_TEST_PYTHON",
        venv.display()
    );
    venv
}

/// A temporary project directory with its own HOME.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        p
    }

    pub fn config(&self, content: &str) -> PathBuf {
        self.write(".keyzero.toml", content)
    }

    /// `kz` with a clean environment: PATH, HOME and nothing else.
    pub fn kz(&self) -> Command {
        self.kz_via(&[])
    }

    /// `kz` started through `wrapper` (a program and its arguments, kz's path appended), with
    /// the same environment.
    pub fn kz_via(&self, wrapper: &[&str]) -> Command {
        let mut c = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(kz_bin());
                c
            }
            None => Command::new(kz_bin()),
        };
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .current_dir(self.path())
            .stdin(Stdio::null());
        c
    }

    /// Stores `value` as `name` in this sandbox's local store.
    pub fn store(&self, name: &str, value: &str) {
        let mut c = self.kz();
        c.args(["secret", "set", name]);
        let (code, _, err) = run_with_stdin(&mut c, value);
        assert_eq!(code, 0, "secret set failed: {err}");
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `start(cmd)`, tried again while the program is "busy" (ETXTBSY): a binary a test has just
/// copied stays busy until another test thread's fork, which still holds the copy's open
/// descriptor, has exec'd.
fn retry_busy<T>(cmd: &mut Command, start: impl Fn(&mut Command) -> std::io::Result<T>) -> T {
    for _ in 0..100 {
        match start(cmd) {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r.unwrap(),
        }
    }
    panic!("{cmd:?}: text file stayed busy");
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = retry_busy(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()), |c| {
        c.output()
    });
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Runs a command with `input` on its stdin; returns (exit code, stdout, stderr).
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = retry_busy(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        |c| c.spawn(),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// A background server, killed on drop.
pub struct Service {
    child: Child,
    pub port: u16,
}

impl Service {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a fixture script that prints `PORT <n>` once it listens.
pub fn start_script(script: &str, args: &[&Path]) -> Service {
    let mut child = Command::new(python())
        .arg(fixture(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{script} did not start: {line:?}"));
    Service { child, port }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real moto server (AWS wire protocol) on loopback.
pub fn start_moto(env: &[(&str, &str)]) -> Service {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.args([
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let svc = Service { child, port };
    wait_for_port(port, "moto");
    svc
}

/// Runs a fixture Python script to completion and parses its JSON output.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(fixture(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts `kz server start --bundle bundle.yaml --listen 127.0.0.1:<free port>` from `cmd` (a
/// `Sandbox::kz()` with its environment set; stdout as the caller chose, else discarded) plus
/// `extra` arguments, waits for the "listening" line and keeps draining stderr.
pub fn start_kz_server(mut cmd: Command, extra: &[&str]) -> (Server, u16) {
    let port = free_port();
    cmd.args([
        "server",
        "start",
        "--bundle",
        "bundle.yaml",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .args(extra)
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    // Notes (such as keys still loading) may come before the "listening" line.
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("server did not start: {seen}");
        }
        seen.push_str(&line);
        if line.contains("listening") {
            break;
        }
    }
    std::thread::spawn(move || for _ in err.lines() {});
    (Server(child), port)
}

/// A started `kz server`: the process, stopped when the handle goes (also when a test fails).
pub struct Server(pub Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Checks Kubernetes objects against the schemas of a current Kubernetes release
/// (`tests/fixtures/k8s_validate.py`, PyPI kubernetes-validate, strict); panics with the problems.
pub fn k8s_validate(docs: &[serde_json::Value]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    std::fs::write(&file, text.join("\n---\n")).unwrap();
    let out = Command::new(python())
        .arg(fixture("k8s_validate.py"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text_of(&out.stdout),
        text_of(&out.stderr)
    );
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// kz tokens (any shape, valid check) found in `text`.
pub fn tokens_in(text: &str) -> Vec<String> {
    kz::api::Finder::default()
        .find(text.as_bytes())
        .into_iter()
        .map(|r| text[r].to_string())
        .collect()
}

/// What a privileged test needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Needs {
    /// uid 0.
    Root,
    /// User and network namespaces for this user (`unshare -U -r -n`) and `nft`.
    Namespaces,
    /// uid 0, network namespaces and `setpriv` (a simulated pod).
    RootNamespaces,
}

fn succeeds(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The one gate of privileged tests: whether this machine has what `needs` names. Without it a
/// test returns early, except with `KZ_REQUIRE_PRIVILEGED=1` (CI, as root), where it fails.
pub fn privileged(needs: Needs) -> bool {
    let root = nix::unistd::getuid().is_root();
    let ok = match needs {
        Needs::Root => root,
        Needs::Namespaces => {
            succeeds("unshare", &["-U", "-r", "-n", "true"]) && succeeds("nft", &["--version"])
        }
        Needs::RootNamespaces => {
            root && succeeds("unshare", &["-n", "true"]) && succeeds("setpriv", &["--version"])
        }
    };
    if !ok && std::env::var("KZ_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("this test needs {needs:?}, which this machine lacks, and KZ_REQUIRE_PRIVILEGED=1");
    }
    ok
}
