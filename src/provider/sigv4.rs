//! AWS Signature Version 4, just what one signed JSON POST needs: canonical request, string to
//! sign, derived key, `Authorization` header. Pure: time and credentials are arguments.

use ring::{digest, hmac};
use zeroize::Zeroizing;

use crate::time::Utc;

/// Static or temporary AWS credentials.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The SigV4 signing key for one day, region and service.
pub fn signing_key(secret: &str, day: &str, region: &str, service: &str) -> hmac::Key {
    let k_secret = Zeroizing::new(format!("AWS4{secret}"));
    let k_date = hmac_sha256(k_secret.as_bytes(), day.as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), service.as_bytes());
    hmac::Key::new(
        hmac::HMAC_SHA256,
        hmac_sha256(k_service.as_ref(), b"aws4_request").as_ref(),
    )
}

/// The hex signature of `string_to_sign` under `key`.
pub fn signature(key: &hmac::Key, string_to_sign: &str) -> String {
    hex(hmac::sign(key, string_to_sign.as_bytes()).as_ref())
}

/// What to sign. Header names must be lower-case; `host` must be among them.
pub struct SignRequest<'a> {
    pub method: &'a str,
    /// Already URI-encoded path, e.g. `/`.
    pub path: &'a str,
    /// Already encoded `k=v` pairs.
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub region: &'a str,
    pub service: &'a str,
}

/// Returns the headers to add: `x-amz-date`, `x-amz-security-token` when present, and
/// `authorization`.
pub fn sign(req: &SignRequest<'_>, creds: &Credentials, now: Utc) -> Vec<(&'static str, String)> {
    let amz_date = now.amz_date();
    let day = now.amz_day();
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.push(("x-amz-date".into(), amz_date.clone()));
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token".into(), t.to_string()));
    }
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut query: Vec<(&str, &str)> = req.query.to_vec();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        canonical_query,
        canonical_headers,
        signed_headers,
        sha256_hex(req.body)
    );
    let scope = format!("{day}/{}/{}/aws4_request", req.region, req.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let key = signing_key(&creds.secret_access_key, &day, req.region, req.service);
    let signature = signature(&key, &string_to_sign);
    let mut out = vec![("x-amz-date", amz_date)];
    if let Some(t) = &creds.session_token {
        out.push(("x-amz-security-token", t.to_string()));
    }
    out.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
            session_token: None,
        }
    }

    /// AWS's published SigV4 test suite, case `get-vanilla`.
    /// The `Authorization` of the test suite's `GET /` with `query`, at its fixed time.
    fn vanilla_get(query: &[(&str, &str)]) -> String {
        let req = SignRequest {
            method: "GET",
            path: "/",
            query,
            headers: &[("host", "example.amazonaws.com")],
            body: b"",
            region: "us-east-1",
            service: "service",
        };
        let out = sign(&req, &example_creds(), Utc::from_unix(1_440_938_160, 0));
        out.into_iter()
            .find(|(k, _)| *k == "authorization")
            .unwrap()
            .1
    }

    #[test]
    fn aws_test_suite_get_vanilla() {
        let auth = vanilla_get(&[]);
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// AWS's published SigV4 test suite, case `get-vanilla-query-order-key-case`.
    #[test]
    fn aws_test_suite_query_order() {
        let auth = vanilla_get(&[("Param2", "value2"), ("Param1", "value1")]);
        assert!(
            auth.ends_with(
                "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
            ),
            "{auth}"
        );
    }

    #[test]
    fn session_token_is_signed() {
        let mut c = example_creds();
        c.session_token = Some(Zeroizing::new("tok".into()));
        let req = SignRequest {
            method: "POST",
            path: "/",
            query: &[],
            headers: &[
                ("host", "h"),
                ("x-amz-target", "secretsmanager.GetSecretValue"),
            ],
            body: b"{}",
            region: "eu-west-1",
            service: "secretsmanager",
        };
        let out = sign(&req, &c, Utc::from_unix(0, 0));
        let auth = &out.iter().find(|(k, _)| *k == "authorization").unwrap().1;
        assert!(
            auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token;x-amz-target"),
            "{auth}"
        );
        assert!(!format!("{c:?}").contains("wJalr"));
    }
}
