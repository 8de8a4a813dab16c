//! `kz run`: resolve every secret first; start the child only when all required ones resolved.

use std::collections::BTreeSet;

use super::{
    agent_runtime, load_config, open_audit, process_env, resolve_config, CommandResult, Failure,
    EXIT_KZ,
};
use crate::child::{self, ChildSpec, Limits};
use crate::cli::RunArgs;
use crate::conceal::forms::MIN_MASK_LEN;
use crate::config::{Config, ProviderKind};
use crate::env::ProcessEnv;
use crate::mask::MaskSet;

/// Variables that hold kz's own keys or a backend's credentials. The child never inherits them
/// (in every mode, whichever providers the config uses) unless the config hands one over as a
/// secret of its own.
const CREDENTIAL_VARIABLES: [&str; 14] = [
    "KZ_LOCAL_KEY",
    "KZ_JWT_SECRET",
    "KZ_IDENTITY_TOKEN",
    "VAULT_TOKEN",
    "BAO_TOKEN",
    "VAULT_SECRET_ID",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "OP_SERVICE_ACCOUNT_TOKEN",
    "OP_CONNECT_TOKEN",
    "OP_SESSION",
];

/// Prefixes of credential variables with a per-account suffix (`op signin` sessions).
const CREDENTIAL_PREFIXES: [&str; 1] = ["OP_SESSION_"];

/// The variables removed from the child's environment: the fixed names above, every variable
/// the config names with a `*_env` key, and each `env` secret's source variable (in standard
/// mode that one stays when the child gets it under the same name anyway).
pub fn removed_variables(cfg: &Config, blind: bool, inherited: &[String]) -> Vec<String> {
    let declared: BTreeSet<&str> = cfg.secrets.iter().map(|s| s.name.as_str()).collect();
    let mut out: BTreeSet<String> = CREDENTIAL_VARIABLES.iter().map(|s| s.to_string()).collect();
    out.extend(cfg.credential_variables());
    out.extend(
        inherited
            .iter()
            .filter(|k| CREDENTIAL_PREFIXES.iter().any(|p| k.starts_with(p)))
            .cloned(),
    );
    for s in cfg
        .secrets
        .iter()
        .filter(|s| s.provider == ProviderKind::Env)
    {
        if blind || s.reference != s.name {
            out.insert(s.reference.clone());
        }
    }
    // A secret's own variable is set for the child (a token in blind mode), never removed.
    out.into_iter()
        .filter(|v| !declared.contains(v.as_str()))
        .collect()
}

fn inherited_names() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
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

pub fn run(args: RunArgs) -> CommandResult {
    super::protect_self()?;
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
        Some(Err(e)) => return Err(Failure::new(crate::exit::EXIT_USAGE, e)),
        None => None,
    };
    if run_as.is_some() && !nix::unistd::getuid().is_root() {
        return Err(Failure::new(EXIT_KZ, "--user needs kz to run as root"));
    }
    let mut removed = removed_variables(&cfg, args.blind, &inherited_names());
    if args.isolate {
        // Every connection reaches kz anyway; an inherited proxy would only be a detour (its
        // CONNECT still lands on kz's transparent port, which accepts it as a fallback).
        removed.extend(
            crate::blind::env::PROXY_VARS
                .iter()
                .chain(&["NO_PROXY", "no_proxy"])
                .map(|v| v.to_string()),
        );
    }
    let audit = open_audit(&cfg, args.audit.as_deref())?;
    let rt = agent_runtime()?;
    let results = rt.block_on(resolve_config(&cfg, env.clone(), &audit));
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
            if !args.blind && !args.no_mask && !v.is_empty() && v.len() < MIN_MASK_LEN {
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
            remove: removed,
            mask,
            limits: Limits::default(),
        };
        return rt
            .block_on(child::run(spec))
            .map_err(|e| Failure::new(e.code, e.message));
    }
    let audit_path = args
        .audit
        .clone()
        .or_else(|| cfg.audit.as_ref().map(|a| a.path.clone()));
    let audit = std::sync::Arc::new(audit);
    let mode = super::token_mode(&cfg, &*env, EXIT_KZ)?;
    rt.block_on(async move {
        let session = crate::proxy::session::start(&cfg, vars, &mode, audit, args.isolate)
            .await
            .map_err(|e| Failure::many(EXIT_KZ, e.to_string().lines().map(String::from).collect()))?;
        if let Some((u, g)) = run_as {
            session.share_with(u, g);
        }
        if !args.isolate && !args.quiet {
            eprintln!(
                "kz: note: without --isolate the agent can still read every file this user can \
                 (the local store, ~/.vault-token, ~/.aws, the audit log); add --isolate to hide them"
            );
        }
        if args.isolate {
            let env = session.child_env_isolated(&ProcessEnv);
            let hide = super::isolate::hidden_paths(&cfg, audit_path.as_deref(), &ProcessEnv);
            let expose = super::isolate::exposed_paths(&cfg, &ProcessEnv);
            return super::isolate::run(
                session,
                args.command,
                env,
                removed,
                mask,
                run_as,
                hide,
                expose,
            )
            .await;
        }
        let spec = ChildSpec {
            command: args.command,
            env: session.child_env(&ProcessEnv),
            remove: removed,
            mask,
            limits: Limits {
                drop_caps: true,
                run_as,
            },
        };
        let result = child::run(spec).await;
        session.stop().await;
        result.map_err(|e| Failure::new(e.code, e.message))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_credential_and_env_source_is_removed() {
        let cfg = crate::config::parse_str(
            r#"
[secrets]
GH = { provider = "env", ref = "CI_GH" }
SAME = { provider = "env", ref = "SAME" }
VAULT_TOKEN = { provider = "local", ref = "vt" }
[providers.vault]
auth = { method = "approle", role_id = "r", secret_id_env = "MY_SECRET_ID" }
[providers.1password]
connect_token_env = "MY_OP"
"#,
            ".keyzero.toml",
            std::path::Path::new("/p"),
        )
        .unwrap();
        let inherited = vec!["OP_SESSION_my".to_string(), "HOME".to_string()];
        let standard = removed_variables(&cfg, false, &inherited);
        for v in [
            "CI_GH",
            "MY_SECRET_ID",
            "MY_OP",
            "OP_SESSION_my",
            "AWS_SECRET_ACCESS_KEY",
            "KZ_LOCAL_KEY",
        ] {
            assert!(standard.iter().any(|r| r == v), "{v} kept: {standard:?}");
        }
        // Declared secrets are set for the child, never removed; HOME is not a credential.
        for v in ["VAULT_TOKEN", "SAME", "HOME", "GH"] {
            assert!(!standard.iter().any(|r| r == v), "{v} removed");
        }
        let blind = removed_variables(&cfg, true, &inherited);
        assert!(blind.iter().any(|r| r == "CI_GH"));
    }
}
