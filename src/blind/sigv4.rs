//! Re-signing AWS SigV4 requests for `sign = "aws-sigv4"` secrets. The agent's SDK signs with
//! the token standing in for the secret access key; kz rebuilds the canonical request from what
//! was sent, checks that the signature is the token's, and signs the request again with the
//! real key: the `Authorization` header, a presigned query (`X-Amz-Signature`), and the chunk
//! signatures of an `aws-chunked` upload. Pure: requests in, signatures out.

use crate::provider::sigv4::{sha256_hex, signature, signing_key};

/// The parts of a SigV4 signature that say how it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub key_id: String,
    /// `YYYYMMDD`
    pub day: String,
    pub region: String,
    pub service: String,
    /// `YYYYMMDDTHHMMSSZ`
    pub amz_date: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Scope {
    pub fn scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.day, self.region, self.service)
    }
}

fn parse_credential(c: &str) -> Option<(String, String, String, String)> {
    // key id may itself hold '/'? AWS key ids never do; split from the right.
    let mut parts = c.rsplitn(5, '/');
    let term = parts.next()?;
    let service = parts.next()?;
    let region = parts.next()?;
    let day = parts.next()?;
    let key_id = parts.next()?;
    (term == "aws4_request").then(|| (key_id.into(), day.into(), region.into(), service.into()))
}

/// Parses `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`; `amz_date` comes from
/// the `x-amz-date` (or `date`) header.
pub fn parse_authorization(value: &str, amz_date: &str) -> Option<Scope> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256")?.trim_start();
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => cred = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => sig = Some(v),
            _ => {}
        }
    }
    let (key_id, day, region, service) = parse_credential(cred?)?;
    Some(Scope {
        key_id,
        day,
        region,
        service,
        amz_date: amz_date.to_string(),
        signed_headers: signed?.split(';').map(str::to_ascii_lowercase).collect(),
        signature: sig?.to_string(),
    })
}

/// AWS's URI encoding: unreserved characters stay, every other byte is `%XX` upper-case.
pub fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// The query's `(name, value)` pairs, decoded (`+` is not a space in SigV4).
pub fn query_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), Vec::new()),
        })
        .collect()
}

/// The canonical query string, leaving out `X-Amz-Signature` (presigned requests).
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .into_iter()
        .filter(|(k, _)| k != b"X-Amz-Signature")
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical URI: S3 signs the path as sent; the other services encode it once more.
pub fn canonical_path(path: &str, service: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    if service == "s3" {
        // Normalise the encoding the SDK used (it encoded each byte the same way).
        uri_encode(&decode(path), true)
    } else {
        uri_encode(path.as_bytes(), true)
    }
}

/// One header value as SigV4 canonicalises it: trimmed, inner runs of spaces collapsed.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What is signed, besides the scope.
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The raw query (without `?`).
    pub query: &'a str,
    /// `(lower-case name, value)` of the request's headers, `host` included.
    pub headers: &'a [(String, String)],
    pub payload_hash: &'a str,
}

/// The canonical request for `req` under `scope`. `None`: a signed header is missing.
pub fn canonical_request(req: &Signed, scope: &Scope) -> Option<String> {
    let mut lines = String::new();
    for name in &scope.signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| canonical_value(v))
            .collect();
        if values.is_empty() {
            return None;
        }
        lines.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    Some(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_path(req.path, &scope.service),
        canonical_query(req.query),
        lines,
        scope.signed_headers.join(";"),
        req.payload_hash
    ))
}

/// The signature of `canonical` under `scope` with `secret`.
pub fn sign(canonical: &str, scope: &Scope, secret: &str) -> String {
    let sts = format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        scope.amz_date,
        scope.scope(),
        sha256_hex(canonical.as_bytes())
    );
    let key = signing_key(secret, &scope.day, &scope.region, &scope.service);
    signature(&key, &sts)
}

/// Constant-time comparison of two signatures.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The signature of one `aws-chunked` chunk.
pub fn chunk_signature(scope: &Scope, secret: &str, previous: &str, data: &[u8]) -> String {
    let sts = format!(
        "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{previous}\n{}\n{}",
        scope.amz_date,
        scope.scope(),
        sha256_hex(b""),
        sha256_hex(data)
    );
    let key = signing_key(secret, &scope.day, &scope.region, &scope.service);
    signature(&key, &sts)
}

/// The signature of an `aws-chunked` upload's trailer (`name:value\n` lines).
pub fn trailer_signature(scope: &Scope, secret: &str, previous: &str, trailer: &[u8]) -> String {
    let sts = format!(
        "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{previous}\n{}",
        scope.amz_date,
        scope.scope(),
        sha256_hex(trailer)
    );
    let key = signing_key(secret, &scope.day, &scope.region, &scope.service);
    signature(&key, &sts)
}

/// Why a chunked body cannot be re-signed.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkError {
    Malformed(&'static str),
    BadSignature,
}

/// Re-signs an `aws-chunked` body as it streams: each chunk's signature is checked against the
/// token's chain and replaced by the real key's (same length, so framing is unchanged).
pub struct ChunkResigner {
    scope: Scope,
    token: zeroize::Zeroizing<String>,
    real: zeroize::Zeroizing<String>,
    prev_token: String,
    prev_real: String,
    buf: Vec<u8>,
    /// Bytes of chunk data still to pass before the next chunk header.
    data_left: usize,
    data: Vec<u8>,
    pending_sig: Option<(String, usize)>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Data,
    DataEnd,
    Trailer,
    Done,
}

impl ChunkResigner {
    /// `seed_token` / `seed_real`: the request signatures with the token and with the key.
    pub fn new(
        scope: Scope,
        token: &str,
        real: &str,
        seed_token: String,
        seed_real: String,
    ) -> Self {
        ChunkResigner {
            scope,
            token: zeroize::Zeroizing::new(token.to_string()),
            real: zeroize::Zeroizing::new(real.to_string()),
            prev_token: seed_token,
            prev_real: seed_real,
            buf: Vec::new(),
            data_left: 0,
            data: Vec::new(),
            pending_sig: None,
            state: State::Header,
        }
    }

    /// Feeds body bytes; appends what may be sent on to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
        self.buf.extend_from_slice(input);
        loop {
            match self.state {
                State::Header => {
                    let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        if self.buf.len() > 4096 {
                            return Err(ChunkError::Malformed("chunk header too long"));
                        }
                        return Ok(());
                    };
                    let line = String::from_utf8(self.buf[..end].to_vec())
                        .map_err(|_| ChunkError::Malformed("chunk header is not text"))?;
                    let (size, sig) =
                        line.split_once(";chunk-signature=")
                            .ok_or(ChunkError::Malformed(
                                "chunk header without chunk-signature",
                            ))?;
                    let size = usize::from_str_radix(size.trim(), 16)
                        .map_err(|_| ChunkError::Malformed("bad chunk size"))?;
                    if sig.len() != 64 {
                        return Err(ChunkError::Malformed("bad chunk signature"));
                    }
                    self.pending_sig = Some((sig.to_string(), size));
                    self.buf.drain(..end + 2);
                    self.data_left = size;
                    self.data.clear();
                    self.state = State::Data;
                }
                State::Data => {
                    let take = self.data_left.min(self.buf.len());
                    self.data.extend(self.buf.drain(..take));
                    self.data_left -= take;
                    if self.data_left > 0 {
                        return Ok(());
                    }
                    // The whole chunk is here: check, re-sign, emit header and data.
                    let (sig, size) = self.pending_sig.take().expect("set with the header");
                    let want =
                        chunk_signature(&self.scope, &self.token, &self.prev_token, &self.data);
                    if !same(&want, &sig) {
                        return Err(ChunkError::BadSignature);
                    }
                    let real =
                        chunk_signature(&self.scope, &self.real, &self.prev_real, &self.data);
                    out.extend_from_slice(
                        format!("{size:x};chunk-signature={real}\r\n").as_bytes(),
                    );
                    out.extend_from_slice(&self.data);
                    self.prev_token = want;
                    self.prev_real = real;
                    self.state = if size == 0 {
                        State::Trailer
                    } else {
                        State::DataEnd
                    };
                }
                State::DataEnd => {
                    if self.buf.len() < 2 {
                        return Ok(());
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(ChunkError::Malformed("chunk data not followed by CRLF"));
                    }
                    self.buf.drain(..2);
                    out.extend_from_slice(b"\r\n");
                    self.state = State::Header;
                }
                State::Trailer => {
                    // Either "\r\n" (no trailer) or trailer lines ending in a signature line
                    // and an empty line.
                    let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if self.buf == b"\r\n" {
                            out.extend_from_slice(b"\r\n");
                            self.buf.clear();
                            self.state = State::Done;
                        }
                        if self.buf.len() > 16 * 1024 {
                            return Err(ChunkError::Malformed("trailer too long"));
                        }
                        return Ok(());
                    };
                    let block = self.buf[..end + 4].to_vec();
                    self.buf.drain(..end + 4);
                    if block == b"\r\n\r\n" {
                        out.extend_from_slice(&block);
                        self.state = State::Done;
                        continue;
                    }
                    let text = String::from_utf8(block)
                        .map_err(|_| ChunkError::Malformed("trailer is not text"))?;
                    let mut signed = String::new();
                    let mut given = None;
                    for l in text.split("\r\n").filter(|l| !l.is_empty()) {
                        match l.split_once(':') {
                            Some(("x-amz-trailer-signature", v)) => {
                                given = Some(v.trim().to_string())
                            }
                            Some((k, v)) => signed.push_str(&format!("{k}:{}\n", v.trim())),
                            None => return Err(ChunkError::Malformed("bad trailer line")),
                        }
                    }
                    let given = given.ok_or(ChunkError::Malformed("trailer without signature"))?;
                    let want = trailer_signature(
                        &self.scope,
                        &self.token,
                        &self.prev_token,
                        signed.as_bytes(),
                    );
                    if !same(&want, &given) {
                        return Err(ChunkError::BadSignature);
                    }
                    let real = trailer_signature(
                        &self.scope,
                        &self.real,
                        &self.prev_real,
                        signed.as_bytes(),
                    );
                    out.extend_from_slice(text.replace(&given, &real).as_bytes());
                    self.state = State::Done;
                }
                State::Done => {
                    if !self.buf.is_empty() {
                        return Err(ChunkError::Malformed("bytes after the last chunk"));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Whether the body ended where it may.
    pub fn finished(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    /// AWS's worked example for a chunked upload (S3 documentation, "Signature Calculations
    /// for the Authorization Header: Transferring Payload in Multiple Chunks"): 66560 bytes of
    /// 'a' in 64 KiB chunks.
    fn example_scope(signature: &str) -> Scope {
        Scope {
            key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            day: "20130524".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            amz_date: "20130524T000000Z".into(),
            signed_headers: "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class"
                .split(';')
                .map(String::from)
                .collect(),
            signature: signature.into(),
        }
    }

    fn example_headers() -> Vec<(String, String)> {
        [
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn aws_chunked_example_seed_and_chunks() {
        let headers = example_headers();
        let req = Signed {
            method: "PUT",
            path: "/examplebucket/chunkObject.txt",
            query: "",
            headers: &headers,
            payload_hash: "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        };
        let scope = example_scope("");
        let seed = sign(&canonical_request(&req, &scope).unwrap(), &scope, SECRET);
        assert_eq!(
            seed,
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
        );
        let c1 = chunk_signature(&scope, SECRET, &seed, &[b'a'; 65536]);
        assert_eq!(
            c1,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let c2 = chunk_signature(&scope, SECRET, &c1, &[b'a'; 1024]);
        assert_eq!(
            c2,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        let c3 = chunk_signature(&scope, SECRET, &c2, b"");
        assert_eq!(
            c3,
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
    }

    fn chunked_body(scope: &Scope, secret: &str, seed: &str, sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = seed.to_string();
        for &n in sizes.iter().chain(std::iter::once(&0)) {
            let data = vec![b'z'; n];
            let sig = chunk_signature(scope, secret, &prev, &data);
            out.extend(format!("{n:x};chunk-signature={sig}\r\n").as_bytes());
            out.extend(&data);
            out.extend(b"\r\n");
            prev = sig;
        }
        out
    }

    #[test]
    fn a_chunked_body_signed_with_the_token_comes_out_signed_with_the_key() {
        let scope = example_scope("");
        let token = "KZ_TOK_0123456789abcdefghijklmnop";
        let resigner = || {
            ChunkResigner::new(
                scope.clone(),
                token,
                SECRET,
                "seedtoken".into(),
                "seedreal".into(),
            )
        };
        let body = chunked_body(&scope, token, "seedtoken", &[10, 7000, 3]);
        let want = chunked_body(&scope, SECRET, "seedreal", &[10, 7000, 3]);
        for piece in [1, 5, 64, 100_000] {
            let mut r = resigner();
            let mut out = Vec::new();
            for part in body.chunks(piece) {
                r.push(part, &mut out).unwrap();
            }
            assert!(r.finished(), "{piece}");
            assert_eq!(out, want, "{piece}");
        }
        // A chunk signed with anything else is refused.
        let forged = chunked_body(&scope, "other-key", "seedtoken", &[10]);
        let mut r = resigner();
        assert_eq!(
            r.push(&forged, &mut Vec::new()),
            Err(ChunkError::BadSignature)
        );
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(
            canonical_query("b=2&a=1&a=0&X-Amz-Signature=x&c"),
            "a=0&a=1&b=2&c="
        );
        assert_eq!(canonical_query("k=a%2Fb+c"), "k=a%2Fb%2Bc");
        assert_eq!(
            canonical_path("/my%20bucket/a b", "s3"),
            "/my%20bucket/a%20b"
        );
        assert_eq!(canonical_path("/a%20b", "secretsmanager"), "/a%2520b");
        let s = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=abc",
            "20150830T123600Z",
        )
        .unwrap();
        assert_eq!(
            (s.key_id.as_str(), s.service.as_str(), s.signature.as_str()),
            ("AKID", "iam", "abc")
        );
        assert_eq!(s.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert!(parse_authorization("Bearer x", "").is_none());
    }
}
