//! `kz run`: resolve every secret first; start the child only when all required ones resolved.

use std::collections::BTreeSet;

use super::{
    load_config, open_audit, process_env, resolve_config, runtime, Failure, Outcome, EXIT_KZ,
};
use crate::child::{self, ChildSpec};
use crate::cli::RunArgs;
use crate::config::{Config, ProviderKind};
use crate::env::ProcessEnv;
use crate::mask::{MaskSet, MIN_MASK_LEN};
use crate::proxy::session as blind;

/// Variables that hold kz's own keys: never passed to the child.
const KZ_KEYS: [&str; 3] = ["KZ_LOCAL_KEY", "KZ_JWT_SECRET", "KZ_IDENTITY_TOKEN"];

/// The credentials kz used to reach a backend; the child does not inherit them unless the
/// config hands them over as secrets of their own.
fn backend_credentials(kind: ProviderKind) -> &'static [&'static str] {
    match kind {
        ProviderKind::Vault => &["VAULT_TOKEN", "VAULT_SECRET_ID"],
        ProviderKind::AwsSm => &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ],
        ProviderKind::OnePassword => &["OP_SERVICE_ACCOUNT_TOKEN", "OP_CONNECT_TOKEN"],
        ProviderKind::Local | ProviderKind::Env | ProviderKind::File => &[],
    }
}

pub fn removed_variables(cfg: &Config) -> Vec<String> {
    let declared: BTreeSet<&str> = cfg.secrets.iter().map(|s| s.name.as_str()).collect();
    let mut out: BTreeSet<&str> = KZ_KEYS.into_iter().collect();
    for s in &cfg.secrets {
        out.extend(backend_credentials(s.provider));
    }
    out.into_iter()
        .filter(|v| !declared.contains(v))
        .map(String::from)
        .collect()
}

/// `UID[:GID]`, numeric (the gid defaults to the uid).
fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => Ok((u, g)),
        _ => Err(format!("--user {s:?}: expected numeric UID[:GID]")),
    }
}

pub fn run(args: RunArgs) -> Outcome {
    let env = process_env();
    let cfg = load_config(args.config.config.as_deref(), &*env, EXIT_KZ)?;
    if args.blind {
        let unbound: Vec<String> = cfg
            .secrets
            .iter()
            .filter(|s| s.hosts.is_empty())
            .map(|s| {
                format!(
                    "{}: blind mode needs hosts for this secret (where may kz send it? e.g. hosts = [\"api.example.com\"])",
                    s.name
                )
            })
            .collect();
        if !unbound.is_empty() {
            return Err(Failure::many(EXIT_KZ, unbound));
        }
    }
    let run_as = match args.user.as_deref().map(parse_user) {
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => return Err(Failure::new(2, e)),
        None => None,
    };
    let audit = open_audit(&cfg, args.audit.as_deref())?;
    let rt = runtime()?;
    let results = rt.block_on(resolve_config(&cfg, env, &audit));
    let errors: Vec<String> = results.iter().filter_map(|r| r.error_line()).collect();
    if !errors.is_empty() {
        let mut lines = errors;
        lines.push(format!(
            "command not started: {} secret(s) failed to resolve",
            lines.len()
        ));
        return Err(Failure::many(EXIT_KZ, lines));
    }
    let mut vars = Vec::new();
    for r in results {
        if let Ok(Some(v)) = r.outcome {
            if !args.no_mask && !v.is_empty() && v.len() < MIN_MASK_LEN {
                eprintln!(
                    "kz: warning: {} is shorter than {MIN_MASK_LEN} characters and will not be masked in output",
                    r.spec.name
                );
            }
            vars.push((r.spec.name, v));
        }
    }
    let mask = if args.no_mask {
        None
    } else {
        MaskSet::new(vars.iter().map(|(_, v)| v.expose()))
    };
    if !args.blind {
        let spec = ChildSpec {
            command: args.command,
            env: vars,
            remove: removed_variables(&cfg),
            mask,
        };
        return rt
            .block_on(child::run(spec))
            .map_err(|e| Failure::new(e.code, e.message));
    }
    let audit = std::sync::Arc::new(audit);
    rt.block_on(async move {
        let session = blind::start(&cfg, vars, audit)
            .await
            .map_err(|e| Failure::new(EXIT_KZ, e))?;
        if args.isolate {
            let env = session.child_env_isolated(&ProcessEnv);
            let removed = removed_variables(&cfg);
            return super::isolate::run(session, args.command, env, removed, mask, run_as).await;
        }
        let spec = ChildSpec {
            command: args.command,
            env: session.child_env(&ProcessEnv),
            remove: removed_variables(&cfg),
            mask,
        };
        let result = child::run(spec).await;
        session.stop().await;
        result.map_err(|e| Failure::new(e.code, e.message))
    })
}
