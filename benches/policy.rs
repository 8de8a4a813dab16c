//! Policy server benchmark: decisions per second and p99 latency, in-process (JWT verify + CEL
//! decide) and over HTTP keep-alive against `kz server start` with 1,000 distinct identities,
//! for bundles of 100, 1,000 and 10,000 policies. Baseline in the same run: the in-process cost
//! of verifying the JWT alone. Run with `cargo bench --bench policy` (or `scripts/bench`);
//! `KZ_BENCH_ROUNDS` rounds (default 3), each printed, then the worst of each figure. `KZ_BIN`
//! serves the HTTP rounds from another kz binary (a profile-guided build, say).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

const SECRET: &str = "bench-shared-secret";

fn bundle(policies: usize) -> String {
    let mut s = String::from(
        "identity:\n  issuers:\n  - issuer: \"https://issuer.example\"\n    audiences: [\"keyzero\"]\n    algorithms: [\"HS256\"]\n    secret_env: \"KZ_JWT_SECRET\"\npolicies:\n",
    );
    for i in 0..policies {
        s.push_str(&format!(
            "- match: \"secret/data/team{i}/**\"\n  rules:\n  - cel: \"identity.team == 'team{i}'\"\n    effect: allow\n  - cel: \"identity.role == 'suspended'\"\n    effect: deny\n"
        ));
    }
    s
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn tokens(n: usize, teams: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            kz::api::jwt::sign_hs256(
                &json!({"iss": "https://issuer.example", "aud": "keyzero", "sub": format!("agent-{i}"), "team": format!("team{}", i % teams), "role": "agent", "exp": now() + 3600}),
                SECRET.as_bytes(),
            )
        })
        .collect()
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn in_process(policies: usize, dir: &std::path::Path) -> (f64, f64) {
    let path = dir.join(format!("b{policies}.yaml"));
    std::fs::write(&path, bundle(policies)).unwrap();
    let b = kz::api::load_bundle(&path).unwrap();
    let env: Arc<dyn kz::api::Env> =
        Arc::new(kz::api::MapEnv::from_pairs([("KZ_JWT_SECRET", SECRET)]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(kz::api::Engine::load(b, env)).unwrap();
    let toks = tokens(1000, policies);
    let n = 20_000;
    // Baseline: JWT verification alone.
    let t0 = Instant::now();
    for i in 0..n {
        rt.block_on(engine.verify(&toks[i % toks.len()], now()))
            .unwrap();
    }
    let verify_only = t0.elapsed();
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let s = Instant::now();
        let k = i % toks.len();
        let claims = rt.block_on(engine.verify(&toks[k], now())).unwrap();
        let r = format!("secret/data/team{}/db", k % policies);
        // The canonical parser is in the path, as on the server.
        let target = kz::api::parse_ref(kz::api::ProviderKind::Vault, &r, None, None).unwrap();
        let shown = target.display();
        let d = engine.decide(
            &claims,
            &kz::api::Subject::of(&target, &shown, None, "decide"),
        );
        assert!(d.allowed, "{r}: {d:?} {claims:?}");
        lat.push(s.elapsed());
    }
    let total = t0.elapsed();
    let rate = n as f64 / total.as_secs_f64();
    let p99 = percentile(lat, 0.99).as_secs_f64() * 1000.0;
    println!(
        "in-process, {policies:>5} policies: {rate:>8.0} decisions/s (jwt verify alone {:>8.0}/s, ratio {:.2}), p99 {p99:.3} ms",
        n as f64 / verify_only.as_secs_f64(),
        verify_only.as_secs_f64() / total.as_secs_f64(),
    );
    (rate, p99)
}

fn over_http(policies: usize, dir: &std::path::Path) -> (f64, f64) {
    let path = dir.join(format!("b{policies}.yaml"));
    std::fs::write(&path, bundle(policies)).unwrap();
    // KZ_BIN: another kz binary to serve (scripts/build-pgo trains its instrumented build here).
    let kz = std::env::var_os("KZ_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_kz").into());
    let mut server = Command::new(kz)
        .args(["server", "start", "--bundle"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("KZ_JWT_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("://").next().unwrap().to_string();
    let toks = Arc::new(tokens(1000, policies));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (count, lat, elapsed) = rt.block_on(async move {
        use http_body_util::{BodyExt, Full};
        let conns = 16;
        let per_conn = 3000;
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..conns {
            let toks = toks.clone();
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut sender, conn) = hyper::client::conn::http1::handshake::<
                    _,
                    Full<bytes::Bytes>,
                >(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
                tokio::spawn(conn);
                let mut lat = Vec::with_capacity(per_conn);
                for i in 0..per_conn {
                    let k = (c * per_conn + i) % toks.len();
                    let body =
                        json!({"ref": format!("secret/data/team{}/db", k % policies), "provider": "vault"}).to_string();
                    let req = hyper::Request::post("/v1/decide")
                        .header("host", "kz")
                        .header("authorization", format!("Bearer {}", toks[k % toks.len()]))
                        .header("content-type", "application/json")
                        .body(Full::new(bytes::Bytes::from(body)))
                        .unwrap();
                    let s = Instant::now();
                    let resp = sender.send_request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    let _ = resp.into_body().collect().await.unwrap();
                    lat.push(s.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        (all.len(), all, t0.elapsed())
    });
    let rate = count as f64 / elapsed.as_secs_f64();
    let p99 = percentile(lat, 0.99).as_secs_f64() * 1000.0;
    println!(
        "http keep-alive, {policies:>5} policies: {rate:>8.0} decisions/s, p99 {p99:.3} ms   (target >= 20000/s, p99 < 2 ms)",
    );
    stop(&mut server);
    (rate, p99)
}

/// Stops the server as an operator would (SIGTERM, then its drain), so an instrumented build
/// (scripts/build-pgo) writes its profile at exit; killed if it has not ended within 10 s.
fn stop(server: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Every target must hold in every round: the summary gives the worst of them.
    let rounds: usize = std::env::var("KZ_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let (mut local, mut http) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        println!("round {r} of {rounds}");
        for p in [100, 1000, 10_000] {
            local.push(in_process(p, dir.path()));
        }
        for p in [100, 1000, 10_000] {
            http.push(over_http(p, dir.path()));
        }
    }
    let worst = |v: &[(f64, f64)]| {
        (
            v.iter().map(|x| x.0).fold(f64::INFINITY, f64::min),
            v.iter().map(|x| x.1).fold(0.0, f64::max),
        )
    };
    let (lr, lp) = worst(&local);
    let (hr, hp) = worst(&http);
    println!(
        "worst of {rounds} rounds: in-process {lr:.0} decisions/s (target >= 100000), p99 {lp:.3} ms; http {hr:.0} decisions/s (target >= 20000), p99 {hp:.3} ms (target < 2)"
    );
}
