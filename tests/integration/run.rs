//! `kz run` and `kz check`: exit codes, signals, masking, failure reporting, config errors, audit.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

use crate::util::{python, run, Sandbox};

const VALUE: &str = "sk-live-Zq9vX2pL7mN4";

fn sandbox_with_secret() -> Sandbox {
    let sb = Sandbox::new();
    sb.store("openai", VALUE);
    sb.config("[secrets]\nOPENAI_API_KEY = { provider = \"local\", ref = \"openai\" }\n");
    sb
}

#[test]
fn child_gets_the_value_and_its_exit_code_passes_through() {
    let sb = sandbox_with_secret();
    let (code, out, _) = run(sb.kz().args([
        "run",
        "--no-mask",
        "--",
        "sh",
        "-c",
        "printf %s \"$OPENAI_API_KEY\"; exit 7",
    ]));
    assert_eq!(code, 7);
    assert_eq!(out, VALUE);
}

#[test]
fn signal_death_is_128_plus_n() {
    let sb = sandbox_with_secret();
    let (code, _, _) = run(sb.kz().args(["run", "--", "sh", "-c", "kill -KILL $$"]));
    assert_eq!(code, 128 + 9);
    let (code, _, _) = run(sb.kz().args(["run", "--", "sh", "-c", "kill -TERM $$"]));
    assert_eq!(code, 128 + 15);
}

#[test]
fn not_found_is_127_and_not_executable_is_126() {
    let sb = sandbox_with_secret();
    let (code, _, err) = run(sb.kz().args(["run", "--", "definitely-not-a-command-kz"]));
    assert_eq!(code, 127);
    assert_eq!(
        err.trim(),
        "kz: definitely-not-a-command-kz: command not found"
    );
    let script = sb.write("script.sh", "#!/bin/sh\necho hi\n");
    let (code, _, err) = run(sb.kz().arg("run").arg("--").arg(&script));
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("not executable"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let sb = sandbox_with_secret();
    let (code, _, _) = run(sb.kz().args(["run"]));
    assert_eq!(code, 2);
    let (code, _, _) = run(sb.kz().args(["frobnicate"]));
    assert_eq!(code, 2);
}

#[test]
fn every_failure_is_listed_and_the_child_never_starts() {
    let sb = Sandbox::new();
    sb.store("present", VALUE);
    sb.write("plain.txt", "file-secret-not-json-XY12");
    sb.config(
        r#"
[secrets]
OK = "local://present"
A = "local://absent"
B = { provider = "env", ref = "KZ_TEST_UNSET_VAR" }
C = { provider = "file", ref = "plain.txt", key = "password" }
D = { provider = "file", ref = "/nonexistent/kz/secret" }
E = { provider = "vault", ref = "secret/data/x" }
OPT = { provider = "env", ref = "KZ_TEST_ALSO_UNSET", optional = true }
"#,
    );
    // Relative file refs resolve against the working directory of kz.
    let marker = sb.path().join("started");
    let (code, out, err) = run(sb.kz().args(["run", "--", "touch"]).arg(&marker));
    assert_eq!(code, 125, "{out}{err}");
    assert!(!marker.exists(), "child must not start");
    let lines: Vec<&str> = err.lines().collect();
    for want in [
        "kz: A: local: absent: not in local store",
        "kz: B: env: KZ_TEST_UNSET_VAR: variable not set",
        "kz: C: file: plain.txt#password: value is not json, so key \"password\" cannot be taken from it",
        "kz: D: file: /nonexistent/kz/secret: no such file",
        "kz: E: vault: secret/data/x: no vault address (set providers.vault.address or VAULT_ADDR)",
        "kz: command not started: 5 secret(s) failed to resolve",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "missing {want:?} in\n{err}");
    }
    assert!(
        !err.contains("OPT"),
        "optional missing secret is not an error: {err}"
    );
    assert!(
        !err.contains("file-secret-not-json") && !err.contains(VALUE),
        "a value leaked: {err}"
    );
}

#[test]
fn config_problems_are_all_reported_before_anything_runs() {
    let sb = Sandbox::new();
    sb.config("[secrets]\nA = { provider = \"vualt\", ref = \"x\" }\nB = { provider = \"env\", ref = \"X\", hostz = [] }\n[audit]\n");
    let (code, _, err) = run(sb.kz().args(["run", "--", "true"]));
    assert_eq!(code, 125);
    let n = err
        .lines()
        .filter(|l| l.starts_with("kz: ") && l.contains(".keyzero.toml: "))
        .count();
    assert_eq!(n, 3, "{err}");
    assert!(
        err.contains("did you mean \"vault\"")
            && err.contains("did you mean \"hosts\"")
            && err.contains("audit.path: missing"),
        "{err}"
    );
}

#[test]
fn config_discovery_flag_env_and_parents() {
    let sb = sandbox_with_secret();
    let nested = sb.path().join("a/b/c");
    std::fs::create_dir_all(&nested).unwrap();
    let (code, out, _) = run(sb.kz().current_dir(&nested).args([
        "run",
        "--no-mask",
        "--",
        "sh",
        "-c",
        "printf %s \"$OPENAI_API_KEY\"",
    ]));
    assert_eq!((code, out.as_str()), (0, VALUE));
    let other = sb.write("other.toml", "[secrets]\nOTHER = \"local://openai\"\n");
    let (code, out, _) = run(sb.kz().env("KZ_CONFIG", &other).args([
        "run",
        "--no-mask",
        "--",
        "sh",
        "-c",
        "printf %s \"$OTHER\"",
    ]));
    assert_eq!((code, out.as_str()), (0, VALUE));
    let (code, _, err) = run(sb.kz().args(["run", "-c", "missing.toml", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("missing.toml: cannot read: no such file"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run(sb.kz().current_dir(empty.path()).args(["check"]));
    assert_eq!(code, 125);
    assert!(err.contains(".keyzero.toml: not found"), "{err}");
}

#[test]
fn kz_keys_and_backend_credentials_do_not_reach_the_child() {
    let sb = sandbox_with_secret();
    let key = {
        let (_, k, _) = run(sb.kz().args(["secret", "keygen"]));
        k.trim().to_string()
    };
    sb.config("[secrets]\nX = \"env://SOURCE\"\n");
    let (code, out, _) = run(sb
        .kz()
        .env("SOURCE", "from-env-value")
        .env("KZ_LOCAL_KEY", &key)
        .args([
            "run",
            "--no-mask",
            "--",
            "sh",
            "-c",
            "echo \"[$KZ_LOCAL_KEY][$X]\"",
        ]));
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[][from-env-value]");
}

#[test]
fn output_is_masked_when_not_a_terminal_even_split_across_writes() {
    let sb = sandbox_with_secret();
    let script = format!(
        "import sys,time,base64,urllib.parse\n\
         v='{VALUE}'\n\
         sys.stdout.write('start '+v[:5]); sys.stdout.flush(); time.sleep(0.2)\n\
         sys.stdout.write(v[5:]+' mid '); sys.stdout.flush()\n\
         sys.stdout.write(base64.b64encode(v.encode()).decode()+' '+urllib.parse.quote(v+'/x', safe='')+' end\\n')\n\
         sys.stderr.write('err '+v+'\\n')\n"
    );
    let (code, out, err) = run(sb
        .kz()
        .args(["run", "--"])
        .arg(python())
        .args(["-c", &script]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "start <concealed by kz> mid <concealed by kz> <concealed by kz>%2Fx end\n"
    );
    assert_eq!(err, "err <concealed by kz>\n");
    let (_, out, _) =
        run(sb
            .kz()
            .args(["run", "--no-mask", "--", "sh", "-c", "echo $OPENAI_API_KEY"]));
    assert_eq!(out.trim(), VALUE);
}

#[test]
fn partial_output_is_not_held_back() {
    // A prompt without a newline reaches the reader while the child is still running.
    let sb = sandbox_with_secret();
    let mut child = sb
        .kz()
        .args(["run", "--", "sh", "-c", "printf 'name? '; sleep 3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    let start = std::time::Instant::now();
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"name? ");
    assert!(start.elapsed() < Duration::from_secs(2));
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_trapping(
    sb: &Sandbox,
    trap: &str,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let script = format!("{trap}; echo ready; while :; do sleep 0.05; done");
    let mut child = sb
        .kz()
        .args(["run", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (child, reader)
}

#[test]
fn signals_are_forwarded_to_the_child() {
    let sb = sandbox_with_secret();
    for (sig, name) in [
        (nix::sys::signal::Signal::SIGUSR1, "USR1"),
        (nix::sys::signal::Signal::SIGUSR2, "USR2"),
        (nix::sys::signal::Signal::SIGHUP, "HUP"),
        (nix::sys::signal::Signal::SIGINT, "INT"),
        (nix::sys::signal::Signal::SIGTERM, "TERM"),
        (nix::sys::signal::Signal::SIGQUIT, "QUIT"),
    ] {
        let (mut child, mut reader) =
            spawn_trapping(&sb, &format!("trap 'echo got-{name}; exit 42' {name}"));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(rest.trim(), format!("got-{name}"));
        assert_eq!(status.code(), Some(42), "{name}");
    }
}

#[test]
fn terminal_ctrl_c_reaches_the_child_once_and_terminals_are_not_masked() {
    // A real pseudo-terminal: ^C makes the kernel signal the whole foreground process group.
    let sb = sandbox_with_secret();
    let driver = format!(
        r#"
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execv({kz:?}, [{kz:?}, "run", "--", "sh", "-c",
        "n=0; trap 'n=$((n+1))' INT; echo ready $OPENAI_API_KEY; i=0; while [ $i -lt 20 ]; do sleep 0.05; i=$((i+1)); done; echo count=$n"])
out = b""
def pump(t):
    global out
    end = time.time() + t
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                out += os.read(fd, 1024)
            except OSError:
                return
while b"ready" not in out:
    pump(0.1)
os.write(fd, b"\x03")
pump(3)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.stdout.write("exit=%d\n" % os.waitstatus_to_exitcode(status))
"#,
        kz = crate::util::kz_bin().to_str().unwrap()
    );
    let (code, out, err) = run(sb
        .kz()
        .arg("run")
        .arg("--no-mask")
        .arg("--")
        .arg(python())
        .args(["-c", &driver]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("ready {VALUE}")),
        "terminal output must be untouched: {out}"
    );
    assert!(
        out.contains("count=1"),
        "child must see exactly one SIGINT: {out}"
    );
    assert!(out.contains("exit=0"), "{out}");
}

#[test]
fn check_prints_a_table_without_values() {
    let sb = sandbox_with_secret();
    sb.config("[secrets]\nOPENAI_API_KEY = \"local://openai\"\nGONE = \"local://gone\"\nMAYBE = \"local://maybe?optional=true\"\n");
    let (code, out, err) = run(sb.kz().arg("check"));
    assert_eq!(code, 125);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("PROVIDER")
            && lines[0].contains("STATUS")
    );
    assert!(
        out.contains("OPENAI_API_KEY  local     openai  ok"),
        "{out}"
    );
    assert!(
        out.contains("MAYBE") && out.contains("missing (optional)"),
        "{out}"
    );
    assert!(
        out.contains("GONE") && out.contains("error: not in local store"),
        "{out}"
    );
    assert!(!out.contains(VALUE) && !err.contains(VALUE));
    sb.config("[secrets]\nOPENAI_API_KEY = \"local://openai\"\n");
    let (code, _, _) = run(sb.kz().arg("check"));
    assert_eq!(code, 0);
}

#[test]
fn audit_log_has_one_line_per_resolution_and_no_values() {
    let sb = sandbox_with_secret();
    sb.config("[secrets]\nOPENAI_API_KEY = \"local://openai\"\nGONE = { provider = \"local\", ref = \"gone\", optional = true }\n[audit]\npath = \"audit.jsonl\"\n");
    let (code, _, _) = run(sb.kz().args(["run", "--", "true"]));
    assert_eq!(code, 0);
    let flag_log = sb.path().join("flag.jsonl");
    let (code, _, _) = run(sb.kz().args(["check", "--audit"]).arg(&flag_log));
    assert_eq!(code, 0);
    for file in [sb.path().join("audit.jsonl"), flag_log] {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(VALUE));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let ok = lines
            .iter()
            .find(|l| l["name"] == "OPENAI_API_KEY")
            .unwrap();
        assert_eq!(ok["event"], "resolve");
        assert_eq!(ok["provider"], "local");
        assert_eq!(ok["ref"], "openai");
        assert_eq!(ok["outcome"], "ok");
        assert!(ok["latency_ms"].as_f64().unwrap() >= 0.0);
        assert!(ok["time"].as_str().unwrap().ends_with('Z'));
        let gone = lines.iter().find(|l| l["name"] == "GONE").unwrap();
        assert_eq!(gone["outcome"], "missing_optional");
    }
}

#[test]
fn help_has_examples_and_version_prints() {
    let sb = Sandbox::new();
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
        vec!["secret", "set", "--help"],
        vec!["secret", "list", "--help"],
    ] {
        let (code, out, _) = run(sb.kz().args(&args));
        assert_eq!(code, 0);
        assert!(out.contains("Example"), "{args:?}: {out}");
    }
    let (code, out, _) = run(sb.kz().arg("--version"));
    assert_eq!(code, 0);
    assert!(out.starts_with("kz "), "{out}");
}
