//! The MCP `fetch` tool: kz makes the request with the credential injected, only to a host the
//! secret is bound to, over HTTPS, following no redirect, refusing caller-supplied
//! `Authorization`/`Cookie` and URL credentials, capping size and time, and scrubbing the
//! credential (and its encoded forms) out of the response.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use rmcp::model::CallToolResponse;
use serde_json::{json, Map, Value};

use super::mcp::KzMcp;

pub const MAX_RESPONSE: usize = 1 << 20;
pub const TIMEOUT: Duration = Duration::from_secs(30);

fn error(msg: impl Into<String>) -> CallToolResponse {
    rmcp::model::CallToolResult::error(vec![rmcp::model::ContentBlock::text(msg.into())]).into()
}

pub async fn fetch(mcp: &KzMcp, args: &Map<String, Value>) -> CallToolResponse {
    let Some(url) = args.get("url").and_then(Value::as_str) else {
        return error("fetch needs url");
    };
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return error(format!("{url:?} is not a url"));
    };
    if uri.scheme_str() != Some("https") {
        return error("fetch only makes https requests");
    }
    let Some(authority) = uri.authority() else {
        return error("the url has no host");
    };
    if authority.as_str().contains('@') {
        return error("credentials in the url are refused; use auth");
    }
    let host = authority.host().to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(443);
    let auth = args
        .get("auth")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let Some(name) = auth.get("ref").and_then(Value::as_str) else {
        return error("fetch needs auth.ref: a secret name from list_secrets");
    };
    let scheme = auth
        .get("scheme")
        .and_then(Value::as_str)
        .unwrap_or("bearer");
    let Some(secret) = mcp
        .engine
        .bundle
        .config
        .secrets
        .iter()
        .find(|s| s.name == name)
    else {
        return error(format!(
            "{name}: denied (not a secret you may use; see list_secrets)"
        ));
    };
    if !mcp.decide(secret, "fetch").allowed {
        return error(format!("{name}: denied by policy"));
    }
    if !secret.hosts.iter().any(|h| h.matches(&host, port)) {
        let bound: Vec<String> = secret.hosts.iter().map(|h| h.to_string()).collect();
        return error(format!(
            "{name} may not be sent to {host}:{port} (it is bound to {})",
            bound.join(", ")
        ));
    }
    let mut headers = Vec::new();
    if let Some(h) = args.get("headers").and_then(Value::as_object) {
        for (k, v) in h {
            let lk = k.to_ascii_lowercase();
            if matches!(
                lk.as_str(),
                "authorization" | "cookie" | "proxy-authorization" | "host"
            ) {
                return error(format!(
                    "header {k} is refused: kz sets credentials itself (use auth)"
                ));
            }
            headers.push((k.clone(), v.as_str().unwrap_or_default().to_string()));
        }
    }
    let value = match mcp.value_of(secret).await {
        Ok(v) => v,
        Err(e) => return error(format!("{name}: {e}")),
    };
    let mut target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    match scheme {
        "bearer" => headers.push(("authorization".into(), format!("Bearer {}", value.expose()))),
        "basic" => {
            let user = auth.get("name").and_then(Value::as_str).unwrap_or("");
            let enc = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", value.expose()));
            headers.push(("authorization".into(), format!("Basic {enc}")));
        }
        "header" => {
            let Some(h) = auth.get("name").and_then(Value::as_str) else {
                return error("scheme header needs auth.name (the header)");
            };
            headers.push((h.to_string(), value.expose().to_string()));
        }
        "query" => {
            let Some(p) = auth.get("name").and_then(Value::as_str) else {
                return error("scheme query needs auth.name (the parameter)");
            };
            let enc =
                percent_encoding::utf8_percent_encode(value.expose(), crate::blind::URL_ENCODE_SET);
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(&format!("{p}={enc}"));
        }
        other => {
            return error(format!(
                "unknown auth scheme {other:?} (bearer, basic, header or query)"
            ))
        }
    }
    let method = args
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let body = args
        .get("body")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let full_uri = format!("https://{}{}", authority.as_str(), target);
    let mut req = hyper::Request::builder()
        .method(method.as_str())
        .uri(&full_uri);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let Ok(req) = req.body(crate::proxy::body::full(Bytes::from(body))) else {
        return error("invalid request");
    };
    let net = &mcp.engine.bundle.config.network;
    let extra = match &net.upstream_ca {
        Some(p) => crate::http::read_pem_certs(p).unwrap_or_default(),
        None => Vec::new(),
    };
    let upstream = crate::proxy::upstream::Upstream::new(
        crate::proxy::upstream::Resolver::new(net.hosts.clone(), net.allow_private),
        &extra,
    );
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        if let Err(e) = upstream.resolver.resolve(&host, port).await {
            return error(e.to_string());
        }
    }
    let resp = match tokio::time::timeout(TIMEOUT, upstream.send(req)).await {
        Err(_) => {
            return error(format!(
                "{host} did not answer within {}s",
                TIMEOUT.as_secs()
            ))
        }
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = format!("{msg}: {s}");
                src = s.source();
            }
            return error(format!("request failed: {}", msg.to_lowercase()));
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut truncated = false;
    let read = tokio::time::timeout(TIMEOUT, async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(d) = frame.into_data() {
                let room = MAX_RESPONSE.saturating_sub(buf.len());
                if d.len() > room {
                    buf.extend_from_slice(&d[..room]);
                    truncated = true;
                    break;
                }
                buf.extend_from_slice(&d);
            }
        }
    })
    .await;
    if read.is_err() {
        truncated = true;
    }
    // Scrub the credential and its encoded forms out of everything returned.
    let mask = crate::mask::MaskSet::new([value.expose()]);
    let scrub = |data: &[u8]| -> String {
        let mut out = Vec::new();
        match &mask {
            Some(m) => {
                let mut s = m.masker();
                s.push(data, &mut out);
                s.finish(&mut out);
            }
            None => out.extend_from_slice(data),
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut result = json!({
        "status": status,
        "content_type": content_type,
        "body": scrub(&buf),
        "truncated": truncated,
    });
    if let Some(l) = location {
        // Redirects are not followed (a cross-origin one would carry the credential elsewhere).
        result["location"] = Value::String(scrub(l.as_bytes()));
    }
    let mut r = rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(
        result.to_string(),
    )]);
    r.structured_content = Some(result);
    r.into()
}
