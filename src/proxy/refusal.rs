//! Answers kz writes itself instead of the upstream's: one [`Refusal`] type, and one function,
//! [`Proxy::answer`], that turns it into the one-line response and, for a refusal by rule, the
//! audit line. Every front door (explicit, `--isolate`, sidecar, DNS) and MCP `fetch` use them.

use hyper::header::{HeaderValue, PROXY_AUTHENTICATE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::upstream::Body;
use super::{text_response, Proxy};

/// Why kz answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A rule forbids the request (a destination outside `[network] allow`, a token sent to a
    /// host its secret is not bound to, a stale token, a private address): audited as `refused`.
    Denied {
        status: StatusCode,
        host: String,
        reason: String,
    },
    /// Missing or wrong per-run proxy credentials (407 with a challenge): audited.
    ProxyAuth,
    /// A request kz cannot read as given (400); the one line says what.
    BadRequest(String),
    /// The upstream could not be reached, failed, or did not answer in time; not a rule, so not
    /// audited as a refusal.
    Upstream { status: StatusCode, message: String },
}

/// The audit record of a refusal by rule: the `refused` event's fields.
#[derive(Debug, Serialize)]
pub struct Refused<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub reason: &'a str,
}

impl Refusal {
    pub fn denied(status: StatusCode, host: &str, reason: impl std::fmt::Display) -> Self {
        Refusal::Denied {
            status,
            host: host.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn bad_request(what: impl std::fmt::Display) -> Self {
        Refusal::BadRequest(what.to_string())
    }

    pub fn upstream(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Refusal::Upstream {
            status,
            message: message.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Denied { status, .. } | Refusal::Upstream { status, .. } => *status,
            Refusal::ProxyAuth => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Why, in one line: the reason of a refusal by rule, or what went wrong.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::Denied { reason, .. } => reason,
            Refusal::ProxyAuth => "missing or wrong proxy credentials",
            Refusal::BadRequest(what) => what,
            Refusal::Upstream { message, .. } => message,
        }
    }

    /// The one line of the response body (after `kz: `); it never holds a secret value.
    pub fn line(&self) -> String {
        match self {
            Refusal::Denied { reason, .. } => format!("refused: {reason}"),
            Refusal::ProxyAuth => {
                "proxy credentials required (this proxy serves one kz run)".into()
            }
            Refusal::BadRequest(what) => what.clone(),
            Refusal::Upstream { message, .. } => message.clone(),
        }
    }

    /// What the audit log records, for a refusal by rule.
    pub fn record(&self) -> Option<Refused<'_>> {
        match self {
            Refusal::Denied {
                status,
                host,
                reason,
            } => Some(Refused {
                host: Some(host),
                status: Some(status.as_u16()),
                reason,
            }),
            Refusal::ProxyAuth => Some(Refused {
                host: None,
                status: Some(407),
                reason: self.reason(),
            }),
            Refusal::BadRequest(_) | Refusal::Upstream { .. } => None,
        }
    }
}

impl Proxy {
    /// Writes a refusal: its audit line (when it is one by rule) and its one-line response.
    pub fn answer(&self, refusal: Refusal) -> Response<Body> {
        if let Some(record) = refusal.record() {
            self.audit.record("refused", &record);
        }
        let mut r = text_response(refusal.status(), &format!("kz: {}\n", refusal.line()));
        if refusal == Refusal::ProxyAuth {
            r.headers_mut().insert(
                PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kz\""),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_by_rule_are_audited_and_every_line_is_one_line() {
        let cases = [
            Refusal::denied(StatusCode::FORBIDDEN, "evil.example", "not in allow"),
            Refusal::ProxyAuth,
            Refusal::bad_request("bad request target"),
            Refusal::upstream(StatusCode::BAD_GATEWAY, "upstream x: reset"),
        ];
        let audited: Vec<bool> = cases.iter().map(|c| c.record().is_some()).collect();
        assert_eq!(audited, [true, true, false, false]);
        for c in &cases {
            assert!(!c.line().contains('\n'), "{c:?}");
        }
        let r = serde_json::to_value(cases[0].record().unwrap()).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"host": "evil.example", "status": 403, "reason": "not in allow"})
        );
        assert_eq!(cases[0].line(), "refused: not in allow");
        assert_eq!(cases[1].status(), 407);
    }
}
