//! Startup benchmarks for `kz run`, each measured against a baseline in the same run:
//! 1. `kz run -- true` with 10 local secrets versus a plain exec of `true` (added milliseconds).
//! 2. 8 Vault secrets from a backend that answers each request after 500 ms: total time versus
//!    one round trip, showing resolution is concurrent (about 1x, not 8x).
//!
//! Run with `cargo bench --bench startup` (or `scripts/bench`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kz() -> &'static str {
    env!("CARGO_BIN_EXE_kz")
}

fn time_it(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let d = start.elapsed();
    assert!(status.success(), "{cmd:?} failed");
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn local_startup(dir: &Path) {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cfg = String::from("[secrets]\n");
    for i in 0..10 {
        let mut c = Command::new(kz());
        c.args(["secret", "set", &format!("s{i}")])
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stderr(Stdio::null());
        let mut ch = c.spawn().unwrap();
        ch.stdin
            .take()
            .unwrap()
            .write_all(format!("value-{i}-0123456789abcdef").as_bytes())
            .unwrap();
        assert!(ch.wait().unwrap().success());
        cfg.push_str(&format!("S{i} = \"local://s{i}\"\n"));
    }
    std::fs::write(dir.join(".keyzero.toml"), cfg).unwrap();
    let rounds = 60;
    let (mut plain, mut with_kz) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(time_it(Command::new("true")));
        let mut c = Command::new(kz());
        c.args(["run", "--", "true"])
            .env("HOME", &home)
            .current_dir(dir);
        with_kz.push(time_it(c));
    }
    let (p, k) = (median(plain), median(with_kz));
    println!("startup: plain exec of true        median {:7.2} ms", ms(p));
    println!("startup: kz run -- true, 10 local  median {:7.2} ms", ms(k));
    println!(
        "startup: kz adds {:.2} ms ({:.1}x the plain exec)",
        ms(k) - ms(p),
        ms(k) / ms(p).max(0.001)
    );
}

fn vault_fanout(dir: &Path) {
    let mut data = serde_json::Map::new();
    let mut cfg = String::from("[secrets]\n");
    for i in 0..8 {
        data.insert(
            format!("app/s{i}"),
            serde_json::json!([{ "v": format!("value-{i}") }]),
        );
        cfg.push_str(&format!("S{i} = \"vault://secret/data/app/s{i}#v\"\n"));
    }
    let server_cfg = serde_json::json!({
        "tokens": {"t": ["*"]},
        "delay_ms": 500,
        "mounts": {"secret/": {"version": 2, "data": data}}
    });
    let cfg_path = dir.join("vault.json");
    std::fs::write(&cfg_path, server_cfg.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vault_server.py");
    let mut server = Command::new("python3")
        .arg(script)
        .arg(&cfg_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
    let round_trip = Duration::from_millis(500);
    for (label, extra) in [
        ("kv_version = 2 (no preflight)", "kv_version = 2\n"),
        ("mount auto-detection", ""),
    ] {
        std::fs::write(
            dir.join("vault.toml"),
            format!("{cfg}[providers.vault]\naddress = \"http://127.0.0.1:{port}\"\n{extra}"),
        )
        .unwrap();
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut c = Command::new(kz());
            c.args(["run", "-c"])
                .arg(dir.join("vault.toml"))
                .args(["--", "true"])
                .env("VAULT_TOKEN", "t");
            times.push(time_it(c));
        }
        let t = median(times);
        println!(
            "fan-out: 8 vault secrets, 500 ms per request, {label}: {:.0} ms = {:.2} round trips (sequential would be {} ms)",
            ms(t),
            ms(t) / ms(round_trip),
            8 * 500 * if extra.is_empty() { 2 } else { 1 }
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    local_startup(dir.path());
    vault_fanout(dir.path());
}
