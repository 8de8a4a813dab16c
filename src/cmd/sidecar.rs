//! `kz sidecar`: the transparent proxy of `--isolate` for a whole pod. `kz init-network` has
//! redirected every other uid's TCP and DNS to it; it resolves the secrets, shares its CA bundle
//! and the tokens with the agent containers through a volume, and answers `GET /ready`.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use super::{
    load_config, open_audit, process_env, resolve_config, runtime, Failure, Outcome, EXIT_KZ,
};
use crate::cli::SidecarArgs;
use crate::proxy::session::{build_proxy, write_ca_files};
use crate::proxy::transparent::{self, NameMap};

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

pub fn sidecar(a: SidecarArgs) -> Outcome {
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
            build_proxy(&cfg, vars, &preset, &mode, audit, true)
                .map_err(|e| Failure::new(EXIT_KZ, e))?,
        );
        std::fs::create_dir_all(&a.share_dir)
            .map_err(|e| Failure::new(EXIT_KZ, format!("{}: {e}", a.share_dir.display())))?;
        write_ca_files(&proxy, &a.share_dir, 0o644, None, true)
            .map_err(|e| Failure::new(EXIT_KZ, e))?;
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
        let names = Arc::new(NameMap::default());
        let mut tasks = vec![tokio::spawn(transparent::serve(
            bind(format!("127.0.0.1:{}", a.proxy_port)).await?,
            proxy.clone(),
            names.clone(),
        ))];
        // IPv6 may be off in the pod; then there is nothing to redirect there either.
        if let Ok(l6) = tokio::net::TcpListener::bind(format!("[::1]:{}", a.proxy_port)).await {
            tasks.push(tokio::spawn(transparent::serve(
                l6,
                proxy.clone(),
                names.clone(),
            )));
        }
        let udp = tokio::net::UdpSocket::bind(format!("127.0.0.1:{}", a.dns_port))
            .await
            .map_err(|e| Failure::new(EXIT_KZ, format!("dns on 127.0.0.1:{}: {e}", a.dns_port)))?;
        tasks.push(tokio::spawn(transparent::serve_dns(
            udp,
            proxy.clone(),
            names.clone(),
        )));
        let dns_tcp = bind(format!("127.0.0.1:{}", a.dns_port)).await?;
        tasks.push(tokio::spawn(transparent::serve_dns_tcp(
            dns_tcp,
            proxy.clone(),
            names.clone(),
        )));
        // IPv6 DNS is redirected to ::1 (when the pod has IPv6 at all).
        if let Ok(u6) = tokio::net::UdpSocket::bind(format!("[::1]:{}", a.dns_port)).await {
            tasks.push(tokio::spawn(transparent::serve_dns(
                u6,
                proxy.clone(),
                names.clone(),
            )));
        }
        if let Ok(t6) = tokio::net::TcpListener::bind(format!("[::1]:{}", a.dns_port)).await {
            tasks.push(tokio::spawn(transparent::serve_dns_tcp(
                t6,
                proxy.clone(),
                names.clone(),
            )));
        }
        let ready = crate::net::bind_dual(&a.ready_listen).await.map_err(|e| {
            Failure::new(EXIT_KZ, format!("--ready-listen {}: {e}", a.ready_listen))
        })?;
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = ready.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let ok = buf.starts_with(b"GET /ready ");
                    let resp: &[u8] = if ok {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nready\n"
                    } else {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    };
                    let _ = s.write_all(resp).await;
                });
            }
        }));
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
        for t in tasks {
            t.abort();
        }
        Ok(0)
    })
}
