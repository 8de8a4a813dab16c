//! Blind mode under hostile load: distinct hosts and ports, silent CONNECTs, a gzip bomb,
//! concurrent large uploads and running out of descriptors. kz's peak memory stays under a
//! stated ceiling, nothing spins, and an ordinary request still works afterwards.

use std::process::{Command, Stdio};

use crate::util::{fixture, python, Sandbox};

/// What kz's peak resident memory must stay under through the whole run.
const RSS_CEILING_MB: u64 = 240;

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_load_stays_bounded_and_kz_keeps_serving() {
    let sb = Sandbox::new();
    let up = crate::upstream::start();
    sb.config(&format!(
        r#"
[secrets]
GH = {{ provider = "env", ref = "REAL_GH", hosts = ["api.kz.test", "*.wild.kz.test"] }}
[network]
hosts = {{ "api.kz.test" = "127.0.0.1" }}
upstream_ca = {ca:?}
"#,
        ca = fixture("tls/ca.pem").to_str().unwrap()
    ));
    let script = format!(
        r#"KZPID=$PPID
for phase in hosts silent bomb uploads fds normal; do
  "$PY" "$LOAD" "$KZPID" {port} "$phase" || echo "$phase FAILED"
done
"#,
        port = up.port
    );
    let child = Command::new(crate::util::kz_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", sb.home())
        .env("REAL_GH", "ghp_loadREALvalue_0123456789")
        .env("PY", python())
        .env("LOAD", fixture("hostile_load.py"))
        .current_dir(sb.path())
        .args([
            "run",
            "--blind",
            "-q",
            "--no-mask",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p2 = peak.clone();
    let watcher = std::thread::spawn(move || loop {
        let hwm = status_kb(pid, "VmHWM:");
        if hwm == 0 {
            return;
        }
        p2.fetch_max(hwm, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    let out = child.wait_with_output().unwrap();
    let _ = watcher.join();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    assert!(!text.contains("FAILED"), "{text}{err}");
    let line = |p: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{p} ok")))
            .unwrap_or_else(|| panic!("{p} did not report: {text}{err}"))
            .to_string()
    };
    eprintln!("{text}");
    // Every distinct host and port was intercepted and answered (502: nothing listens there).
    assert!(line("hosts").contains("answered=23000"), "{text}");
    // Silent CONNECTs are closed by the handshake timeout, all of them.
    let silent = line("silent");
    assert!(silent.contains("opened=1000 closed=1000"), "{silent}");
    // The bomb is cut, not inflated in memory.
    let bomb = line("bomb");
    assert!(bomb.contains("HTTP/1.1 200"), "{bomb}");
    // Uploads: each either went through or was told 503; none was dropped.
    let uploads = line("uploads");
    let codes: Vec<&str> = uploads.split("codes=").nth(1).unwrap().split(',').collect();
    assert_eq!(codes.len(), 32, "{uploads}");
    assert!(
        codes.iter().all(|c| *c == "200" || *c == "503"),
        "{uploads}"
    );
    // At the descriptor limit kz waits instead of spinning (2 s of spinning is ~200 ticks).
    let fds = line("fds");
    let ticks: u64 = fds
        .split("cpu_ticks_in_2s=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ticks < 40, "kz spun at the descriptor limit: {fds}");
    assert!(line("normal").contains("HTTP/1.1 200"), "{text}");
    let peak_mb = peak.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    eprintln!("kz peak RSS {peak_mb} MB (ceiling {RSS_CEILING_MB} MB)");
    assert!(
        peak_mb > 0 && peak_mb < RSS_CEILING_MB,
        "kz peak RSS {peak_mb} MB"
    );
}
