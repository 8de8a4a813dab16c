//! `kz mcp`: the MCP tools over stdio for one identity.

use std::sync::Arc;

use super::{lines, now, process_env, runtime, CommandResult, Failure, EXIT_FAIL};
use crate::config::bundle;
use crate::server::engine::Engine;

/// `kz mcp`: MCP over stdio for the identity in `$KZ_IDENTITY_TOKEN` (or a file).
pub fn mcp_stdio(
    bundle_path: std::path::PathBuf,
    token_file: Option<std::path::PathBuf>,
) -> CommandResult {
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
