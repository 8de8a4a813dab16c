//! The MCP server: tools `list_secrets`, `resolve` and `fetch` for agents that speak the Model
//! Context Protocol, on the official Rust SDK (`rmcp`). Every call is decided by the policy
//! engine for the caller's verified identity; values are never returned except through a
//! `reveal` rule, and `fetch` injects the credential itself, only towards the secret's hosts.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use super::engine::{Engine, Subject};

/// One MCP session: the engine and, over stdio, the caller's verified claims. Over HTTP the
/// claims come with each request (the server verified its bearer token).
#[derive(Clone)]
pub struct KzMcp {
    pub engine: Arc<Engine>,
    pub claims: Map<String, Value>,
    /// Over HTTP, the server: decisions go to its decision log and metrics. Over stdio (where
    /// stdout is the MCP channel) decision-log lines go to stderr.
    pub server: Option<Arc<super::Server>>,
}

/// The verified claims of an HTTP request to `/mcp`, carried in its extensions.
#[derive(Clone, Debug)]
pub struct McpIdentity(pub Map<String, Value>);

impl KzMcp {
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

fn schema(v: Value) -> Arc<Map<String, Value>> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

fn read_only() -> ToolAnnotations {
    let mut a = ToolAnnotations::new();
    a.read_only_hint = Some(true);
    a
}

fn tools() -> Vec<Tool> {
    let mut list_secrets = Tool::new(
        "list_secrets",
        "The secrets this identity may use, with the hosts each is bound to and whether its value may be revealed.",
        schema(json!({"type": "object", "properties": {}})),
    );
    list_secrets.annotations = Some(read_only());
    list_secrets.output_schema = Some(schema(json!({
        "type": "object",
        "properties": {"secrets": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "hosts": {"type": "array", "items": {"type": "string"}}, "revealable": {"type": "boolean"}
        }}}},
        "required": ["secrets"]
    })));
    let mut resolve = Tool::new(
        "resolve",
        "Check access to a secret (bundle name or ref). Returns allowed, a handle for fetch and the bound hosts; the value only where policy says reveal.",
        schema(json!({"type": "object", "properties": {"ref": {"type": "string", "description": "bundle secret name or provider ref"}}, "required": ["ref"]})),
    );
    resolve.annotations = Some(read_only());
    resolve.output_schema = Some(schema(json!({
        "type": "object",
        "properties": {
            "allowed": {"type": "boolean"},
            "handle": {"type": ["string", "null"]},
            "hosts": {"type": "array", "items": {"type": "string"}},
            "value": {"type": "string"}
        },
        "required": ["allowed", "handle", "hosts"]
    })));
    let mut fetch = Tool::new(
        "fetch",
        "Make an HTTPS request with a secret injected by kz (never shown to you). Only to a host the secret is bound to.",
        schema(json!({
            "type": "object",
            "properties": {
                "url": {"type": "string"},
                "method": {"type": "string", "default": "GET"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "body": {"type": "string"},
                "auth": {
                    "type": "object",
                    "properties": {
                        "ref": {"type": "string"},
                        "scheme": {"type": "string", "enum": ["bearer", "basic", "header", "query"]},
                        "name": {"type": "string"}
                    },
                    "required": ["ref", "scheme"]
                }
            },
            "required": ["url", "auth"]
        })),
    );
    let mut open = ToolAnnotations::new();
    open.open_world_hint = Some(true);
    fetch.annotations = Some(open);
    fetch.output_schema = Some(schema(json!({
        "type": "object",
        "properties": {
            "status": {"type": "integer"},
            "content_type": {"type": "string"},
            "body": {"type": "string"},
            "truncated": {"type": "boolean"},
            "location": {"type": "string"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}}
        },
        "required": ["status", "content_type", "body", "truncated"]
    })));
    vec![list_secrets, resolve, fetch]
}

fn tool_error(msg: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(msg.into())]).into()
}

fn tool_ok(v: Value) -> CallToolResponse {
    let mut r = CallToolResult::success(vec![ContentBlock::text(v.to_string())]);
    r.structured_content = Some(v);
    r.into()
}

impl KzMcp {
    fn secret_by_name(&self, name: &str) -> Option<&crate::config::SecretSpec> {
        self.engine
            .bundle
            .config
            .secrets
            .iter()
            .find(|s| s.name == name)
    }

    /// Decides, and logs the decision like every other one.
    pub(crate) fn decide(
        &self,
        s: &crate::config::SecretSpec,
        action: &str,
    ) -> crate::policy::decide::Decision {
        self.decide_subject(&Subject {
            reference: &s.reference,
            provider: Some(s.provider),
            name: Some(&s.name),
            action,
        })
    }

    /// Decides and writes the decision-log line (a bundle secret or a raw ref alike).
    fn decide_subject(&self, subject: &Subject<'_>) -> crate::policy::decide::Decision {
        match &self.server {
            Some(server) => server.decide_logged(&self.engine, &self.claims, subject).0,
            None => {
                let start = std::time::Instant::now();
                let d = self.engine.decide(&self.claims, subject);
                let line = json!({
                    "time": crate::time::Utc::now().rfc3339(), "event": "decision",
                    "issuer": self.claims.get("iss"), "subject": self.claims.get("sub"),
                    "ref": subject.reference, "name": subject.name, "action": subject.action,
                    "decision": if d.allowed { "allow" } else { "deny" }, "matched": d.matched,
                    "latency_ms": (start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
                });
                eprintln!("{line}");
                d
            }
        }
    }

    fn list_secrets(&self) -> CallToolResponse {
        let secrets: Vec<Value> = self
            .engine
            .bundle
            .config
            .secrets
            .iter()
            .filter_map(|s| {
                let d = self.decide(s, "list");
                d.allowed.then(|| {
                    json!({"name": s.name, "hosts": s.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(), "revealable": d.reveal})
                })
            })
            .collect();
        tool_ok(json!({"secrets": secrets}))
    }

    async fn resolve(&self, args: &Map<String, Value>) -> CallToolResponse {
        let Some(r) = args.get("ref").and_then(Value::as_str) else {
            return tool_error("resolve needs ref: a secret name from list_secrets");
        };
        let Some(s) = self.secret_by_name(r) else {
            // A provider ref rather than a bundle name: decided as such, never revealed here.
            let d = self.decide_subject(&Subject {
                reference: r,
                provider: None,
                name: None,
                action: "resolve",
            });
            return tool_ok(
                json!({"allowed": d.allowed, "handle": if d.allowed { Value::from(r) } else { Value::Null }, "hosts": []}),
            );
        };
        let d = self.decide(s, "resolve");
        let hosts: Vec<String> = s.hosts.iter().map(|h| h.to_string()).collect();
        if !d.allowed {
            return tool_ok(json!({"allowed": false, "handle": Value::Null, "hosts": hosts}));
        }
        let mut out = json!({"allowed": true, "handle": s.name, "hosts": hosts});
        if d.reveal {
            match self.value_of(s).await {
                Ok(v) => out["value"] = Value::String(v.expose().to_string()),
                Err(e) => return tool_error(format!("{}: {e}", s.name)),
            }
        }
        tool_ok(out)
    }

    pub(crate) async fn value_of(
        &self,
        s: &crate::config::SecretSpec,
    ) -> Result<crate::secret::SecretValue, String> {
        let audit = crate::audit::Audit::disabled();
        let r =
            crate::provider::resolve_all(std::slice::from_ref(s), &self.engine.providers, &audit)
                .await;
        match r.into_iter().next().map(|r| r.outcome) {
            Some(Ok(Some(v))) => Ok(v),
            Some(Err(e)) => Err(e.message),
            _ => Err("not found".into()),
        }
    }
}

impl ServerHandler for KzMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
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
            "list_secrets" => me.list_secrets(),
            "resolve" => me.resolve(&args).await,
            "fetch" => super::mcp_fetch::fetch(&me, &args).await,
            other => tool_error(format!("unknown tool {other}")),
        })
    }
}
