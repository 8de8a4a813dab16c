//! `kz server start`: the policy server (and its MCP endpoint with `--mcp`).

use std::sync::Arc;

use super::{lines, process_env, runtime, CommandResult, Failure, EXIT_FAIL};
use crate::cli::ServerCommand;
use crate::config::bundle;
use crate::server::Server;

pub fn server(cmd: ServerCommand) -> CommandResult {
    let ServerCommand::Start {
        bundle,
        listen,
        tls_cert,
        tls_key,
        mcp,
        allow_host,
        inject_image,
        inject_config_map,
        inject_server,
        inject_server_ca,
        inject_token_audience,
        inject_token_expiration,
        inject_sidecar_resources,
        inject_init_resources,
    } = cmd;
    if let Some(u) = &inject_server {
        if !u.starts_with("https://") && !u.starts_with("http://") {
            return Err(Failure::new(
                2,
                format!("--inject-server {u}: expected an http(s) URL"),
            ));
        }
    }
    let inject = inject_image.map(|image| crate::server::inject::InjectConfig {
        image,
        config_map: inject_config_map,
        sidecar_resources: inject_sidecar_resources,
        init_resources: inject_init_resources,
        server: inject_server.map(|url| crate::server::inject::ServerIdentity {
            url,
            ca_file: inject_server_ca,
            ca_pem: None,
            audience: inject_token_audience,
            expiration_seconds: inject_token_expiration,
        }),
    });

    let cert = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some(
            crate::server::serving_cert::ServingCert::load(&c, &k)
                .map_err(|e| Failure::new(EXIT_FAIL, e))?,
        ),
        _ => None,
    };
    let tls = match &cert {
        Some(c) => Some(c.server_config().map_err(|e| Failure::new(EXIT_FAIL, e))?),
        None => None,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        // Fail fast on a bundle that does not parse; its keys (JWKS) load after the listener is
        // up, so /readyz answers 503 until they have.
        bundle::load(&bundle).map_err(|e| Failure::many(EXIT_FAIL, lines(e)))?;
        let server = Server::with_injector(bundle, process_env(), inject);
        if mcp {
            let host = listen.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string()).unwrap_or_default();
            let mut hosts = vec![host.clone(), listen.clone()];
            hosts.extend(allow_host);
            server.enable_mcp(hosts);
        }
        let listener = crate::net::bind_dual(&listen)
            .await
            .map_err(|e| Failure::new(EXIT_FAIL, format!("--listen {listen}: {e}")))?;
        if let Some(c) = &cert {
            tokio::spawn(crate::server::serving_cert::ServingCert::watch(Arc::downgrade(c)));
        }
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(listen);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("signal handler");
            tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {}, _ = stopped => {} }
        };
        let serving = tokio::spawn(crate::server::run(listener, server.clone(), tls.clone(), shutdown));
        if let Err(errors) = server.reload().await {
            let _ = stop.send(());
            let _ = serving.await;
            return Err(Failure::many(EXIT_FAIL, errors));
        }
        eprintln!(
            "kz: policy server listening on {}://{addr}",
            if tls.is_some() { "https" } else { "http" }
        );
        let _ = serving.await;
        Ok(0)
    })
}
