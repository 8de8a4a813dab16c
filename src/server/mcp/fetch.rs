//! The MCP `fetch` tool, a front door of the blind-mode proxy engine: the request carries a
//! token where the credential goes, and `proxy::intercept` swaps it (only towards a host the
//! secret is bound to, over HTTPS), forwards, follows no redirect, and scrubs the response in
//! every form it knows, exactly as for a blind agent. Here kz also refuses caller-supplied
//! `Authorization`/`Cookie` and URL credentials, caps size and time, and shows the caller
//! `<concealed by kz>` wherever the credential was echoed, in every field of the result.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use rmcp::model::CallToolResponse;
use serde_json::{json, Map, Value};

use super::KzMcp;
use crate::proxy::refusal::Refusal;
use hyper::StatusCode;

/// Most body bytes read from the upstream.
pub const MAX_RESPONSE: usize = 1 << 20;

/// The largest message the official MCP clients accept (one server-sent event): the result,
/// with its body sent once, is kept under it.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Room in a message for the JSON-RPC envelope and the summary text.
const ENVELOPE: usize = 2048;
pub const TIMEOUT: Duration = Duration::from_secs(30);

fn error(msg: impl Into<String>) -> CallToolResponse {
    rmcp::model::CallToolResult::error(vec![rmcp::model::ContentBlock::text(msg.into())]).into()
}

/// An allowed `fetch` that kz refuses all the same: its decision-log line and the tool error.
fn refuse(mcp: &KzMcp, name: &str, refusal: Refusal) -> CallToolResponse {
    mcp.log_refused(name, "fetch", refusal.reason());
    error(refusal.reason())
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
    // Decided (and logged) and read first, so a denied identity learns nothing about the
    // secret, not even whether it exists or where it is bound.
    let value = match mcp
        .value_of(&crate::server::engine::Asked::Name(name), "fetch")
        .await
    {
        Ok((v, _)) => v,
        Err(e) => return error(format!("{name}: {}", e.message)),
    };
    let Some(secret) = mcp.named_secret(name) else {
        return error(format!("{name}: denied by policy"));
    };
    if !secret.hosts.iter().any(|h| h.matches(&host, port)) {
        let bound: Vec<String> = secret.hosts.iter().map(|h| h.to_string()).collect();
        let reason = format!(
            "{name} may not be sent to {host}:{port} (it is bound to {})",
            bound.join(", ")
        );
        return refuse(
            mcp,
            name,
            Refusal::denied(StatusCode::FORBIDDEN, &host, reason),
        );
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
    if value.expose().len() < crate::conceal::forms::MIN_MASK_LEN {
        let reason = format!(
            "{name}: its value is shorter than {} characters, too short to scrub from responses",
            crate::conceal::forms::MIN_MASK_LEN
        );
        return refuse(
            mcp,
            name,
            Refusal::denied(StatusCode::FORBIDDEN, &host, reason),
        );
    }
    // The request carries a token where the credential goes; the proxy engine swaps it (towards
    // a bound host only), forwards, and scrubs the response, exactly as for a blind agent.
    let swap = crate::config::Swap {
        query: scheme == "query",
        ..crate::config::Swap::default()
    };
    let table = Arc::new(crate::blind::TokenTable::new(vec![(
        name.to_string(),
        value,
        secret.hosts.clone(),
        swap,
    )]));
    let token = table.secrets[0].token.clone();
    let mut target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    match scheme {
        "bearer" => headers.push(("authorization".into(), format!("Bearer {token}"))),
        "basic" => {
            let user = auth.get("name").and_then(Value::as_str).unwrap_or("");
            let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
            headers.push(("authorization".into(), format!("Basic {enc}")));
        }
        "header" => {
            let Some(h) = auth.get("name").and_then(Value::as_str) else {
                return error("scheme header needs auth.name (the header)");
            };
            headers.push((h.to_string(), token.clone()));
        }
        "query" => {
            let Some(p) = auth.get("name").and_then(Value::as_str) else {
                return error("scheme query needs auth.name (the parameter)");
            };
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(&format!("{p}={token}"));
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
    let mut req = hyper::Request::builder()
        .method(method.as_str())
        .uri(&target)
        .header("host", authority.as_str());
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
    let ca = match crate::proxy::ca::Ca::generate() {
        Ok(c) => c,
        Err(e) => return error(e.to_string()),
    };
    let proxy = Arc::new(crate::proxy::Proxy {
        table: table.clone(),
        ca,
        upstream: crate::proxy::upstream::Upstream::new(
            crate::proxy::upstream::Resolver::new(net.hosts.clone(), net.allow_private),
            &extra,
        ),
        allow: net.allow.clone(),
        credential: String::new(),
        audit: Arc::new(crate::audit::Audit::disabled()),
        // The fetch tool has its own overall time cap.
        response_timeout: crate::proxy::intercept::RESPONSE_TIMEOUT,
    });
    let dest = crate::proxy::Dest {
        host: host.clone(),
        port,
        tls: true,
    };
    let exchange = async {
        let resp = crate::proxy::intercept::forward(proxy, dest, None, None, None, req).await;
        let (parts, mut body) = resp.into_parts();
        let mut buf = Vec::new();
        let mut truncated = false;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                truncated = true;
                break;
            };
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
        (parts, buf, truncated)
    };
    let Ok((parts, buf, truncated)) = tokio::time::timeout(TIMEOUT, exchange).await else {
        return error(format!(
            "{host} did not answer within {}s",
            TIMEOUT.as_secs()
        ));
    };
    // The engine left the token where a value was echoed; the caller sees neither.
    let conceal = |data: &[u8]| -> String {
        String::from_utf8_lossy(data).replace(&token, crate::mask::CONCEALED_TEXT)
    };
    if parts.headers.contains_key(crate::proxy::KZ_ANSWER) {
        let text = conceal(&buf);
        let text = text.trim().trim_start_matches("kz: ");
        return error(format!("{name}: {text}"));
    }
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .map(|v| conceal(v.as_bytes()))
            .unwrap_or_default()
    };
    let mut shown = Map::new();
    for (k, v) in &parts.headers {
        shown.insert(k.to_string(), Value::String(conceal(v.as_bytes())));
    }
    let mut result = json!({
        "status": parts.status.as_u16(),
        "content_type": header("content-type"),
        "headers": shown,
        "body": "",
        "truncated": truncated,
    });
    if parts.headers.contains_key("location") {
        // Redirects are not followed (a cross-origin one would carry the credential elsewhere).
        result["location"] = Value::String(header("location"));
    }
    let room = MAX_MESSAGE.saturating_sub(result.to_string().len() + ENVELOPE);
    let (body, cut) = fit_json(conceal(&buf), room);
    result["body"] = Value::String(body);
    result["truncated"] = Value::Bool(truncated || cut);
    // The body goes once, in the structured result; the text block summarises it.
    let summary = format!(
        "HTTP {} {}, {} bytes{}; the body is in the structured result",
        parts.status.as_u16(),
        header("content-type"),
        result["body"].as_str().map(str::len).unwrap_or(0),
        if result["truncated"] == true {
            " (truncated)"
        } else {
            ""
        }
    );
    let mut r =
        rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(summary)]);
    r.structured_content = Some(result);
    r.into()
}

/// `text`, cut on a character boundary so that it takes at most `limit` bytes as a JSON string;
/// whether it was cut.
fn fit_json(text: String, limit: usize) -> (String, bool) {
    let escaped = |s: &str| {
        serde_json::to_string(s)
            .map(|j| j.len())
            .unwrap_or(usize::MAX)
    };
    if escaped(&text) <= limit {
        return (text, false);
    }
    let floor = |mut n: usize| {
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        n
    };
    // The longest prefix that fits (fitting is monotonic in the prefix length).
    let (mut lo, mut hi) = (0usize, text.len());
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if escaped(&text[..floor(mid)]) <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let at = floor(lo);
    (text[..at].to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::fit_json;

    #[test]
    fn bodies_are_cut_to_fit_as_json() {
        assert_eq!(fit_json("short".into(), 100), ("short".into(), false));
        let (cut, was) = fit_json("\"é".repeat(1000), 101);
        assert!(was);
        assert!(serde_json::to_string(&cut).unwrap().len() <= 101);
        assert!(serde_json::to_string(&cut).unwrap().len() >= 97, "{cut}");
    }
}
