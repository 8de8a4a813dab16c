//! The MCP tools `list_secrets` and `resolve`: their definitions (schemas, annotations) and
//! what they do; `fetch` is in `fetch.rs`.

use super::*;

fn schema(v: Value) -> Arc<Map<String, Value>> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

fn read_only() -> ToolAnnotations {
    let mut a = ToolAnnotations::new();
    a.read_only_hint = Some(true);
    a
}

pub(super) fn tools() -> Vec<Tool> {
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

pub(super) fn tool_error(msg: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(msg.into())]).into()
}

pub(super) fn tool_ok(v: Value) -> CallToolResponse {
    let mut r = CallToolResult::success(vec![ContentBlock::text(v.to_string())]);
    r.structured_content = Some(v);
    r.into()
}

impl KzMcp {
    pub(super) async fn list_secrets(&self) -> CallToolResponse {
        let mut secrets = Vec::new();
        for s in &self.engine.bundle.config.secrets {
            let d = self.decide_named(&s.name, "list").await;
            if d.allowed {
                secrets.push(json!({"name": s.name, "hosts": s.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(), "revealable": d.reveal}));
            }
        }
        tool_ok(json!({"secrets": secrets}))
    }

    pub(super) async fn resolve(&self, args: &Map<String, Value>) -> CallToolResponse {
        let Some(r) = args.get("ref").and_then(Value::as_str) else {
            return tool_error("resolve needs ref: a secret name from list_secrets");
        };
        let denied = || tool_ok(json!({"allowed": false, "handle": Value::Null, "hosts": []}));
        let Some(s) = self.named_secret(r) else {
            // A provider ref (`vault://…`, or a plain path) rather than a bundle name: decided
            // on its canonical form, never revealed here. A denied identity learns nothing.
            let target = match crate::config::uri::parse_shorthand(r) {
                Ok(parts) => self
                    .engine
                    .explain_ref(Some(parts.provider), &parts.reference)
                    .await
                    .map(|mut t| {
                        t.key = parts.key;
                        t.version = parts.version;
                        t
                    }),
                Err(_) => self.engine.explain_ref(None, r).await,
            };
            let Ok(target) = target else {
                self.decide_subject(&Subject::refused(r, None, "resolve"));
                return denied();
            };
            let shown = target.display();
            let mut subject = Subject::of(&target, &shown, None, "resolve");
            if !r.contains("://") {
                subject.provider = None;
            }
            return if self.decide_subject(&subject).allowed {
                tool_ok(json!({"allowed": true, "handle": r, "hosts": []}))
            } else {
                denied()
            };
        };
        let d = self.decide_named(&s.name, "resolve").await;
        if !d.allowed {
            return denied();
        }
        let hosts: Vec<String> = s.hosts.iter().map(|h| h.to_string()).collect();
        let mut out = json!({"allowed": true, "handle": s.name, "hosts": hosts});
        if d.reveal {
            match self.value_of(&Asked::Name(&s.name), "reveal").await {
                Ok((v, d)) if d.reveal => out["value"] = Value::String(v.expose().to_string()),
                Ok(_) => return tool_error(format!("{}: denied by policy", s.name)),
                Err(e) => return tool_error(format!("{}: {}", s.name, e.message)),
            }
        }
        tool_ok(out)
    }
}
