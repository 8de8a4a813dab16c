//! The MCP server: tools `list_secrets`, `resolve` and `fetch` for agents that speak the Model
//! Context Protocol, on the official Rust SDK (`rmcp`). Every call is decided by the policy
//! engine for the caller's verified identity; values are never returned except through a
//! `reveal` rule, and `fetch` injects the credential itself, only towards the secret's hosts.

mod fetch;
mod tools;

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use crate::policy::decide::Decision;
use crate::server::decision_log::Record;
use crate::server::engine::{Asked, Engine, Subject};
use tools::tools;

/// One MCP session: the engine and, over stdio, the caller's verified claims. Over HTTP the
/// claims come with each request (the server verified its bearer token).
#[derive(Clone)]
pub struct KzMcp {
    pub engine: Arc<Engine>,
    pub claims: std::sync::Arc<Map<String, Value>>,
    /// Over HTTP, the server: decisions go to its decision log and metrics. Over stdio (where
    /// stdout is the MCP channel) decision-log lines go to stderr.
    pub server: Option<Arc<crate::server::Server>>,
}

/// The verified claims of an HTTP request to `/mcp`, carried in its extensions.
#[derive(Clone, Debug)]
pub struct McpIdentity(pub std::sync::Arc<Map<String, Value>>);

impl KzMcp {
    /// The bundle's secret called `name`, if there is one.
    fn named_secret(&self, name: &str) -> Option<&crate::config::SecretSpec> {
        self.engine
            .bundle
            .config
            .secrets
            .iter()
            .find(|s| s.name == name)
    }

    /// This call's identity: the request's (HTTP) or the session's (stdio).
    fn for_call(&self, ctx: &RequestContext<RoleServer>) -> KzMcp {
        let from_http = ctx
            .extensions
            .get::<hyper::http::request::Parts>()
            .and_then(|p| p.extensions.get::<McpIdentity>())
            .map(|i| i.0.clone());
        match from_http {
            Some(claims) => KzMcp {
                engine: self.engine.clone(),
                claims,
                server: self.server.clone(),
            },
            None => self.clone(),
        }
    }
}

impl KzMcp {
    /// Decides on a bundle secret (canonical ref), logging the decision like every other one;
    /// a secret whose ref has no canonical form is denied.
    pub(crate) async fn decide_named(&self, name: &str, action: &str) -> Decision {
        match self.engine.target(&Asked::Name(name)).await {
            Ok((target, name)) => {
                let shown = target.display();
                self.decide_subject(&Subject::of(&target, &shown, name.as_deref(), action))
            }
            Err(_) => self.decide_subject(&Subject::refused(name, None, action)),
        }
    }

    /// The value of a bundle secret, after a logged decision (the one path `/v1/resolve` takes).
    pub(crate) async fn value_of(
        &self,
        asked: &Asked<'_>,
        action: &str,
    ) -> Result<(crate::secret::SecretValue, Decision), crate::server::engine::Refused> {
        let decide = |s: &Subject<'_>| self.decide_subject(s);
        crate::server::resolve_authorized(&self.engine, asked, action, &decide).await
    }

    /// Decides and writes the decision-log line (a bundle secret or a raw ref alike).
    fn decide_subject(&self, subject: &Subject<'_>) -> Decision {
        match &self.server {
            Some(server) => server.decide_logged(&self.engine, &self.claims, subject).0,
            None => {
                let start = std::time::Instant::now();
                let d = self.engine.decide(&self.claims, subject);
                let record = Record::decision(&self.claims, subject, &d, start.elapsed());
                self.log(record.line());
                d
            }
        }
    }

    /// A decision-log line: the server's log over HTTP, stderr over stdio.
    fn log(&self, line: String) {
        match &self.server {
            Some(server) => server.log.write(line),
            None => eprintln!("{line}"),
        }
    }

    /// An allowed call that kz refused all the same (a `fetch` to a host the secret is not
    /// bound to, a value too short to scrub): logged as `refused`, with the reason.
    pub(crate) fn log_refused(&self, name: &str, action: &str, reason: &str) {
        self.log(Record::refused(&self.claims, name, action, reason).line());
    }
}

impl ServerHandler for KzMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(rmcp::model::Implementation::new(
                "kz",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
            "KeyZero: use list_secrets to see which credentials you may use, and fetch to call an API with one; you never see the credential itself.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let me = self.for_call(&context);
        Ok(match request.name.as_ref() {
            "list_secrets" => me.list_secrets().await,
            "resolve" => me.resolve(&args).await,
            "fetch" => fetch::fetch(&me, &args).await,
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool {other:?} (list_secrets, resolve, fetch)"),
                    None,
                ))
            }
        })
    }
}
