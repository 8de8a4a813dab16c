//! `kz server start`, `kz policy check|test|eval` and `kz token mint`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{process_env, runtime, Failure, Outcome};
use crate::cli::{PolicyCommand, ServerCommand, TokenCommand};
use crate::config::{bundle, ProviderKind};
use crate::server::engine::{Engine, Subject};
use crate::server::Server;

const EXIT_FAIL: u8 = 1;

fn lines(e: impl ToString) -> Vec<String> {
    e.to_string().lines().map(String::from).collect()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

pub fn server(cmd: ServerCommand) -> Outcome {
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

/// `kz mcp`: MCP over stdio for the identity in `$KZ_IDENTITY_TOKEN` (or a file).
pub fn mcp_stdio(
    bundle_path: std::path::PathBuf,
    token_file: Option<std::path::PathBuf>,
) -> Outcome {
    use rmcp::ServiceExt;
    let token = match token_file {
        Some(f) => std::fs::read_to_string(&f)
            .map_err(|e| Failure::new(EXIT_FAIL, format!("{}: {e}", f.display())))?,
        None => std::env::var("KZ_IDENTITY_TOKEN").map_err(|_| {
            Failure::new(
                EXIT_FAIL,
                "no identity: set KZ_IDENTITY_TOKEN or --identity-token-file",
            )
        })?,
    };
    let b = bundle::load(&bundle_path).map_err(|e| Failure::many(EXIT_FAIL, lines(e)))?;
    let rt = runtime()?;
    rt.block_on(async move {
        let engine = Engine::load(b, process_env())
            .await
            .map_err(|e| Failure::many(EXIT_FAIL, e))?;
        let claims = engine
            .verify(token.trim(), now())
            .await
            .map_err(|e| Failure::new(EXIT_FAIL, format!("identity token: {e}")))?;
        let handler = crate::server::mcp::KzMcp {
            engine: Arc::new(engine),
            claims,
            server: None,
        };
        let service = handler
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| Failure::new(EXIT_FAIL, format!("mcp: {e}")))?;
        let _ = service.waiting().await;
        Ok(0)
    })
}

pub fn policy(cmd: PolicyCommand) -> Outcome {
    match cmd {
        PolicyCommand::Check { bundle } => {
            let b = bundle::load(&bundle).map_err(|e| Failure::many(EXIT_FAIL, lines(e)))?;
            let rules: usize = b.policies.iter().map(|p| p.rules.len()).sum();
            println!(
                "{}: ok (revision {}, {} issuers, {} secrets, {} policies, {rules} rules)",
                bundle.display(),
                b.revision,
                b.issuers.len(),
                b.config.secrets.len(),
                b.policies.len()
            );
            Ok(0)
        }
        PolicyCommand::Test { bundle, cases } => {
            let b = bundle::load(&bundle).map_err(|e| Failure::many(EXIT_FAIL, lines(e)))?;
            let text = std::fs::read_to_string(&cases)
                .map_err(|e| Failure::new(EXIT_FAIL, format!("{}: {e}", cases.display())))?;
            let doc: Value = serde_yaml::from_str(&text).map_err(|e| {
                Failure::new(EXIT_FAIL, format!("{}: invalid yaml: {e}", cases.display()))
            })?;
            let list = doc
                .get("cases")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if list.is_empty() {
                return Err(Failure::new(
                    EXIT_FAIL,
                    format!("{}: no cases (expected a cases: list)", cases.display()),
                ));
            }
            let engine = Engine::offline(b, process_env());
            let rt = runtime()?;
            let (mut passed, mut failed) = (0, 0);
            for (i, c) in list.iter().enumerate() {
                let name = c
                    .get("name")
                    .and_then(Value::as_str)
                    .map(String::from)
                    .unwrap_or_else(|| format!("case {}", i + 1));
                let claims = c
                    .get("claims")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let r = c.get("ref").and_then(Value::as_str).unwrap_or("");
                let provider = c
                    .get("provider")
                    .and_then(Value::as_str)
                    .and_then(ProviderKind::parse);
                let expect = c.get("expect").and_then(Value::as_str).unwrap_or("");
                if expect != "allow" && expect != "deny" {
                    println!("FAIL  {name}: expect must be allow or deny");
                    failed += 1;
                    continue;
                }
                let d = match rt.block_on(engine.explain_ref(provider, r)) {
                    Ok(target) => {
                        let shown = target.display();
                        let mut subject = Subject::of(&target, &shown, None, "resolve");
                        subject.provider = provider;
                        engine.decide(&claims, &subject)
                    }
                    Err(_) => engine.decide(&claims, &Subject::refused(r, provider, "resolve")),
                };
                let got = if d.allowed { "allow" } else { "deny" };
                if got == expect {
                    println!("ok    {name}");
                    passed += 1;
                } else {
                    println!(
                        "FAIL  {name}: expected {expect}, got {got} (matched: {})",
                        d.matched.join(", ")
                    );
                    failed += 1;
                }
            }
            println!("{passed} passed, {failed} failed");
            Ok(if failed > 0 { EXIT_FAIL } else { 0 })
        }
        PolicyCommand::Eval {
            bundle,
            token,
            reference,
            provider,
        } => {
            let b = bundle::load(&bundle).map_err(|e| Failure::many(EXIT_FAIL, lines(e)))?;
            let rt = runtime()?;
            let engine = rt
                .block_on(Engine::load(b, process_env()))
                .map_err(|e| Failure::many(EXIT_FAIL, e))?;
            let claims = rt
                .block_on(engine.verify(&token, now()))
                .map_err(|e| Failure::new(EXIT_FAIL, format!("token: {e}")))?;
            let provider = provider.as_deref().and_then(ProviderKind::parse);
            let target = rt.block_on(engine.explain_ref(provider, &reference));
            let shown = target.as_ref().map(|t| t.display()).unwrap_or_default();
            let subject = match &target {
                Ok(t) => {
                    let mut s = Subject::of(t, &shown, None, "decide");
                    s.provider = provider;
                    s
                }
                Err(_) => Subject::refused(&reference, provider, "decide"),
            };
            let d = engine.decide(&claims, &subject);
            let outcomes = subject
                .paths
                .iter()
                .map(|p| engine.outcomes(&claims, &subject, p))
                .collect::<Option<Vec<_>>>()
                .filter(|o| !o.is_empty())
                .map(|o| o.concat());
            let rules: Vec<Value> = match outcomes {
                None => vec![json!({"reason": match &target {
                    Err(e) => format!("the ref is not canonical ({e}): denied"),
                    Ok(_) => "the ref is not canonical (.., empty or encoded segments): denied".into(),
                }})],
                Some(o) => o
                    .iter()
                    .map(|o| {
                        let result = match &o.result {
                            Ok(b) => json!(b),
                            Err(e) => json!({ "error": e }),
                        };
                        json!({"rule": o.rule, "effect": o.effect.name(), "result": result})
                    })
                    .collect(),
            };
            let out = json!({
                "decision": if d.allowed { "allow" } else { "deny" },
                "bundle_revision": engine.bundle.revision,
                "matched": d.matched,
                "rules": rules,
                "identity": claims,
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("json"));
            Ok(0)
        }
    }
}

pub fn token(cmd: TokenCommand) -> Outcome {
    let TokenCommand::Mint {
        issuer,
        audience,
        claims,
        ttl,
    } = cmd;
    let secret = std::env::var("KZ_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Failure::new(EXIT_FAIL, "KZ_JWT_SECRET is not set (the HS256 key)"))?;
    let ttl = humantime::parse_duration(&ttl).map_err(|_| {
        Failure::new(
            2,
            format!("--ttl {ttl:?}: invalid duration (examples: 15m, 1h)"),
        )
    })?;
    let mut c: Value = serde_json::from_str(&claims)
        .map_err(|e| Failure::new(2, format!("--claims: invalid json: {e}")))?;
    let Some(obj) = c.as_object_mut() else {
        return Err(Failure::new(2, "--claims must be a json object"));
    };
    let now = now();
    obj.insert("iss".into(), issuer.into());
    obj.insert("aud".into(), audience.into());
    obj.insert("iat".into(), now.into());
    obj.insert("exp".into(), (now + ttl.as_secs() as i64).into());
    println!("{}", crate::policy::jwt::sign_hs256(&c, secret.as_bytes()));
    Ok(0)
}
