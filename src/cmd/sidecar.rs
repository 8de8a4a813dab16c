//! `kz sidecar`: the transparent proxy of `--isolate` for a whole pod. `kz init-network` has
//! redirected every other uid's TCP and DNS to it; it resolves the secrets, shares its CA bundle
//! and the tokens with the agent containers through a volume, and answers `GET /ready`.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use super::{
    load_config, open_audit, process_env, resolve_config, runtime, CommandResult, Failure, EXIT_KZ,
};
use crate::cli::SidecarArgs;
use crate::fs::FileError;
use crate::proxy::session::{build_proxy, write_ca_files};
use crate::proxy::transparent::FrontDoor;
use crate::serve::{Limits, Stop};

/// Writes `text` to `path` atomically, readable by the agent containers.
fn publish(path: &std::path::Path, text: &str) -> Result<(), Failure> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Failure::new(EXIT_KZ, format!("{}: {e}", path.display())))
}

pub fn sidecar(a: SidecarArgs) -> CommandResult {
    let env = process_env();
    let mut cfg = load_config(a.config.config.as_deref(), &*env, EXIT_KZ)?;
    if let Some(url) = &a.server {
        if !url.starts_with("https://") && !url.starts_with("http://") {
            return Err(Failure::new(
                EXIT_KZ,
                format!("--server {url}: expected an http(s) URL"),
            ));
        }
        cfg.server = Some(crate::config::ServerConfig {
            url: url.clone(),
            token_file: a.server_token_file.clone(),
            token_env: None,
        });
    }
    let unbound: Vec<String> = cfg
        .secrets
        .iter()
        .filter(|s| s.hosts.is_empty())
        .map(|s| format!("{}: the sidecar needs hosts for this secret", s.name))
        .collect();
    if !unbound.is_empty() {
        return Err(Failure::many(EXIT_KZ, unbound));
    }
    let mut preset = HashMap::new();
    let mut bad = Vec::new();
    for s in &cfg.secrets {
        if let Some(t) = env.nonempty(&format!("KZ_TOKEN_{}", s.name)) {
            if crate::blind::is_token(&t) {
                preset.insert(s.name.clone(), t);
            } else {
                bad.push(format!(
                    "KZ_TOKEN_{}: not a token (KZ_TOK_ and at least 22 letters or digits)",
                    s.name
                ));
            }
        }
    }
    if !bad.is_empty() {
        return Err(Failure::many(EXIT_KZ, bad));
    }
    let audit = Arc::new(open_audit(&cfg, a.audit.as_deref())?);
    let mode = super::token_mode(&cfg, &*env, EXIT_KZ)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let results = resolve_config(&cfg, env.clone(), &audit).await;
        let errors: Vec<String> = results.iter().filter_map(|r| r.error_line()).collect();
        if !errors.is_empty() {
            return Err(Failure::many(EXIT_KZ, errors));
        }
        let vars = results
            .into_iter()
            .filter_map(|r| r.outcome.ok().flatten().map(|v| (r.spec.name, v)))
            .collect();
        let proxy = Arc::new(
            build_proxy(&cfg, vars, &preset, &mode, audit, true).map_err(|e| {
                Failure::many(EXIT_KZ, e.to_string().lines().map(String::from).collect())
            })?,
        );
        std::fs::create_dir_all(&a.share_dir)
            .map_err(|e| Failure::new(EXIT_KZ, FileError::new(&a.share_dir, &e).to_string()))?;
        write_ca_files(&proxy, &a.share_dir, 0o644, None, true)
            .map_err(|e| Failure::new(EXIT_KZ, e.to_string()))?;
        let tokens: String = proxy
            .table
            .secrets
            .iter()
            .map(|s| format!("{}={}\n", s.name, s.token))
            .collect();
        publish(&a.share_dir.join("tokens.env"), &tokens)?;
        let bind = |addr: String| async move {
            tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|e| Failure::new(EXIT_KZ, format!("listening on {addr}: {e}")))
        };
        let mut door = FrontDoor {
            tcp: vec![bind(format!("127.0.0.1:{}", a.proxy_port)).await?],
            dns_udp: vec![
                tokio::net::UdpSocket::bind(format!("127.0.0.1:{}", a.dns_port))
                    .await
                    .map_err(|e| {
                        Failure::new(EXIT_KZ, format!("dns on 127.0.0.1:{}: {e}", a.dns_port))
                    })?,
            ],
            dns_tcp: vec![bind(format!("127.0.0.1:{}", a.dns_port)).await?],
        };
        // IPv6 may be off in the pod; then there is nothing to redirect there either. IPv6 DNS
        // is redirected to ::1 (when the pod has IPv6 at all).
        if let Ok(l6) = tokio::net::TcpListener::bind(format!("[::1]:{}", a.proxy_port)).await {
            door.tcp.push(l6);
        }
        if let Ok(u6) = tokio::net::UdpSocket::bind(format!("[::1]:{}", a.dns_port)).await {
            door.dns_udp.push(u6);
        }
        if let Ok(t6) = tokio::net::TcpListener::bind(format!("[::1]:{}", a.dns_port)).await {
            door.dns_tcp.push(t6);
        }
        let stop = Stop::default();
        let mut tasks = door.start(&proxy, &stop);
        let ready = crate::net::bind_dual(&a.ready_listen).await.map_err(|e| {
            Failure::new(EXIT_KZ, format!("--ready-listen {}: {e}", a.ready_listen))
        })?;
        tasks.push(tokio::spawn(crate::serve::serve(
            ready,
            stop.stopped(),
            Limits::server(),
            |s, _| answer_ready(s),
        )));
        eprintln!(
            "kz: sidecar serving {} secret(s) on :{} (dns :{}), ready at {}",
            proxy.table.secrets.len(),
            a.proxy_port,
            a.dns_port,
            a.ready_listen
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Failure::new(EXIT_KZ, e.to_string()))?;
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
        // Stop accepting; requests in flight are answered within the drain time.
        stop.stop();
        for t in tasks {
            let _ = t.await;
        }
        Ok(0)
    })
}

/// The ready probe: `GET /ready` answers 200 once the sidecar serves.
async fn answer_ready(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf).await;
    let resp: &[u8] = if buf.starts_with(b"GET /ready ") {
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nready\n"
    } else {
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    };
    let _ = s.write_all(resp).await;
}
