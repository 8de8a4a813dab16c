//! A WebSocket upgrade through the proxy: the handshake is swapped like any request and sent on
//! its own HTTP/1.1 connection; after `101` the two upgraded streams are joined, the agent's
//! frames checked for tokens and the upstream's scrubbed (`ws`). The frame pumps run in the
//! client connection's task (its `Handover`), so the listener's drain and connection cap count
//! them: on a drain the agent gets a close frame (1001) after at most `tunnel::GRACE`.

use std::sync::Arc;
use std::time::Instant;

use hyper::header::{HeaderValue, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::body::{empty, incoming};
use super::decide::unreachable;
use super::decide::{authority, scrub_headers, scrub_value, SwappedHead};
use super::lane::{h1_handshake, h1_send, Io};
use super::refusal::Refusal;
use super::upstream::Body;
use super::ws;
use super::{Dest, Handover, Proxy};
use crate::conceal::replace::Forbidden;

/// The client's side of an upgrade request.
pub(super) struct Upgrade {
    /// The client connection once upgraded.
    pub on_client: hyper::upgrade::OnUpgrade,
    /// Where the frame pumps go (with the drain they heed); `None`: a task of their own.
    pub handover: Option<Handover>,
    /// When the request arrived.
    pub start: Instant,
}

/// A WebSocket handshake: swapped like any request, sent on its own HTTP/1.1 connection; after
/// `101` the two upgraded streams are joined and frames pass unchanged.
pub(super) async fn websocket(
    proxy: Arc<Proxy>,
    dest: Dest,
    method: Method,
    head: SwappedHead,
    upgrade: Upgrade,
) -> Response<Body> {
    let Upgrade {
        on_client,
        handover,
        start,
    } = upgrade;
    let io: Box<dyn Io> = if dest.tls {
        match proxy.upstream.connect_tls_h1(&dest.host, dest.port).await {
            Ok(s) => Box::new(s),
            Err(e) => return proxy.answer(unreachable(&dest.host, dest.port, &e)),
        }
    } else {
        match proxy.dial(&dest.host, dest.port).await {
            Ok(s) => Box::new(s),
            Err(e) => return proxy.answer(unreachable(&dest.host, dest.port, &e)),
        }
    };
    let mut sender = match h1_handshake(io).await {
        Ok(x) => x,
        Err(e) => {
            return proxy.answer(Refusal::upstream(
                StatusCode::BAD_GATEWAY,
                format!("upstream {}: {e}", dest.host),
            ))
        }
    };
    let mut up = Request::new(empty());
    *up.method_mut() = method.clone();
    *up.uri_mut() = head
        .path_and_query
        .parse()
        .unwrap_or_else(|_| "/".parse().expect("valid"));
    *up.headers_mut() = head.headers;
    // No compression extension: kz must read every frame to scrub it.
    up.headers_mut().remove("sec-websocket-extensions");
    if let Ok(v) = HeaderValue::from_str(&authority(&dest)) {
        up.headers_mut().insert(HOST, v);
    }
    let mut resp = match h1_send(&mut sender, up).await {
        Ok(r) => r,
        Err(e) => {
            return proxy.answer(Refusal::upstream(
                StatusCode::BAD_GATEWAY,
                format!("upstream {}: {e}", dest.host),
            ))
        }
    };
    let status = resp.status();
    let record = crate::audit::Request {
        host: &dest.host,
        port: dest.port,
        method: method.as_str(),
        path: &head.shown_path,
        secrets: head.seen.iter().map(|i| proxy.table.name(*i)).collect(),
        status: status.as_u16(),
        upgrade: Some("websocket"),
        bytes_out: None,
        bytes_in: None,
        latency_ms: crate::audit::millis(start.elapsed()),
    };
    proxy.audit.record("request", &record);
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        scrub_headers(&proxy.table, &mut parts.headers);
        return Response::from_parts(parts, incoming(body));
    }
    let on_upstream = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in resp.headers() {
        let value = scrub_value(&proxy.table, value.clone());
        out.headers_mut().append(name.clone(), value);
    }
    // The agent's frames may carry tokens (swapped where the secret opted in to "body", refused
    // for another host's secret); the upstream's are scrubbed.
    let outbound = proxy.table.for_host(&dest.host, dest.port).body_raw.clone();
    let inbound = proxy.table.scrubber().cloned();
    let mut drain = handover.as_ref().map(Handover::drain);
    let pumps = async move {
        let (Ok(client), Ok(upstream)) = tokio::join!(on_client, on_upstream) else {
            return;
        };
        use tokio::io::AsyncWriteExt;
        let (client_r, mut client_w) = tokio::io::split(TokioIo::new(client));
        let (up_r, up_w) = tokio::io::split(TokioIo::new(upstream));
        let stop = {
            let down = ws::pump(up_r, &mut client_w, ws::Rewriter::new(inbound));
            let up = ws::pump(client_r, up_w, ws::Rewriter::new(Some(outbound)));
            // On a drain, messages in flight get `GRACE` to pass.
            let drained = async {
                match drain.as_mut() {
                    Some(d) => d.requested().await,
                    None => std::future::pending().await,
                }
                tokio::time::sleep(super::tunnel::GRACE).await;
            };
            tokio::select! {
                s = down => Some(s),
                s = up => Some(s),
                () = drained => None,
            }
        };
        // Both directions have stopped; the agent gets one close frame saying why.
        match stop {
            None => {
                let _ = client_w
                    .write_all(&ws::close_frame(1001, "kz: shutting down"))
                    .await;
            }
            Some(ws::Stop::Refused(Forbidden(i))) => {
                let reason = format!(
                    "token of secret {} may not be sent to {} in a websocket message",
                    proxy.table.name(i),
                    dest.host
                );
                let _ = proxy.refuse(StatusCode::FORBIDDEN, &dest.host, &reason);
                let _ = client_w
                    .write_all(&ws::close_frame(1008, "kz: refused"))
                    .await;
            }
            Some(ws::Stop::Unreadable(why)) => {
                let reason = format!("{}: {why}; kz cannot scrub it", dest.host);
                let _ = proxy.refuse(StatusCode::BAD_GATEWAY, &dest.host, &reason);
                let _ = client_w
                    .write_all(&ws::close_frame(1011, "kz: unreadable frame"))
                    .await;
            }
            Some(ws::Stop::Closed) => {}
        }
        let _ = client_w.shutdown().await;
    };
    match handover {
        Some(h) => h.leave(Box::pin(pumps)),
        None => {
            tokio::spawn(pumps);
        }
    }
    out
}
