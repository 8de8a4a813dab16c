//! JWT verification for agent identities, with `ring`: the issuer is looked up from the
//! (unverified) `iss` claim, the algorithm must be one that issuer pins (the header never picks
//! the algorithm on its own, and `none` is never accepted), the key must be of that algorithm's
//! type, and `exp` (required, numeric), `nbf`, `iat`, `iss` and `aud` are checked with a small
//! leeway. Every failure is one error; the server answers them all with 401.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

/// Clock leeway for `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "HS256" => Alg::HS256,
            "HS384" => Alg::HS384,
            "HS512" => Alg::HS512,
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }
}

/// A verification key.
#[derive(Clone)]
pub enum Key {
    Hmac(Zeroizing<Vec<u8>>),
    /// PKCS#1 `RSAPublicKey` DER.
    RsaDer(Vec<u8>),
    /// Modulus and exponent, big-endian (from a JWK).
    RsaParts {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point, with its curve.
    Ec {
        p384: bool,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Key::Hmac(_) => "Key::Hmac(<redacted>)",
            Key::RsaDer(_) | Key::RsaParts { .. } => "Key::Rsa",
            Key::Ec { .. } => "Key::Ec",
            Key::Ed25519(_) => "Key::Ed25519",
        })
    }
}

/// What one issuer accepts.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    /// `(kid, key)`; a key without a kid is tried for any token.
    pub keys: Vec<(Option<String>, Key)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("unknown issuer")]
    UnknownIssuer,
    #[error("algorithm {0} is not accepted for this issuer")]
    Algorithm(String),
    #[error("unknown key id")]
    UnknownKid,
    #[error("bad signature")]
    Signature,
    #[error("token has no numeric exp")]
    NoExp,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("audience not accepted")]
    Audience,
}

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)
}

fn verify_signature(alg: Alg, key: &Key, msg: &[u8], sig: &[u8]) -> bool {
    use signature::*;
    let rsa: Option<&'static RsaParameters> = match alg {
        Alg::RS256 => Some(&RSA_PKCS1_2048_8192_SHA256),
        Alg::RS384 => Some(&RSA_PKCS1_2048_8192_SHA384),
        Alg::RS512 => Some(&RSA_PKCS1_2048_8192_SHA512),
        Alg::PS256 => Some(&RSA_PSS_2048_8192_SHA256),
        Alg::PS384 => Some(&RSA_PSS_2048_8192_SHA384),
        Alg::PS512 => Some(&RSA_PSS_2048_8192_SHA512),
        _ => None,
    };
    match (alg, key) {
        (a, Key::Hmac(secret)) if a.is_hmac() => {
            let h = match a {
                Alg::HS256 => ring::hmac::HMAC_SHA256,
                Alg::HS384 => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            ring::hmac::verify(&ring::hmac::Key::new(h, secret), msg, sig).is_ok()
        }
        (_, Key::RsaDer(der)) if rsa.is_some() => UnparsedPublicKey::new(rsa.unwrap(), der)
            .verify(msg, sig)
            .is_ok(),
        (_, Key::RsaParts { n, e }) if rsa.is_some() => RsaPublicKeyComponents { n, e }
            .verify(rsa.unwrap(), msg, sig)
            .is_ok(),
        (Alg::ES256, Key::Ec { p384: false, point }) => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(msg, sig)
                .is_ok()
        }
        (Alg::ES384, Key::Ec { p384: true, point }) => {
            UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
                .verify(msg, sig)
                .is_ok()
        }
        (Alg::EdDSA, Key::Ed25519(pk)) => UnparsedPublicKey::new(&ED25519, pk)
            .verify(msg, sig)
            .is_ok(),
        _ => false,
    }
}

/// Verifies `token` against the configured issuers; returns its claims.
pub fn verify(
    token: &str,
    issuers: &[IssuerKeys],
    now: i64,
) -> Result<Map<String, Value>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Value = serde_json::from_slice(&b64(h)?).map_err(|_| JwtError::Malformed)?;
    let claims: Value = serde_json::from_slice(&b64(p)?).map_err(|_| JwtError::Malformed)?;
    let Value::Object(claims) = claims else {
        return Err(JwtError::Malformed);
    };
    let sig = b64(s)?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(JwtError::UnknownIssuer)?;
    let issuer = issuers
        .iter()
        .find(|i| i.issuer == iss)
        .ok_or(JwtError::UnknownIssuer)?;
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("none");
    let alg = Alg::parse(alg_name)
        .filter(|a| issuer.algorithms.contains(a))
        .ok_or_else(|| JwtError::Algorithm(alg_name.to_string()))?;
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Key> = issuer
        .keys
        .iter()
        .filter(|(k, _)| kid.is_none() || k.is_none() || k.as_deref() == kid)
        .map(|(_, key)| key)
        .collect();
    if candidates.is_empty() {
        return Err(JwtError::UnknownKid);
    }
    let msg = &token.as_bytes()[..h.len() + 1 + p.len()];
    if !candidates
        .iter()
        .any(|k| verify_signature(alg, k, msg, &sig))
    {
        return Err(JwtError::Signature);
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(JwtError::NoExp)?;
    if now > exp + LEEWAY_SECS {
        return Err(JwtError::Expired);
    }
    for claim in ["nbf", "iat"] {
        match claims.get(claim) {
            None => {}
            Some(v) => match v.as_i64() {
                Some(t) if t <= now + LEEWAY_SECS => {}
                _ => return Err(JwtError::NotYetValid),
            },
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => issuer.audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| issuer.audiences.iter().any(|x| x == a)),
        _ => false,
    };
    if !aud_ok {
        return Err(JwtError::Audience);
    }
    Ok(claims)
}

/// Signs an HS256 token (development identities, `kz token mint`).
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let msg = format!("{header}.{payload}");
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        msg.as_bytes(),
    );
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Why a public key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM public key")]
    NotPem,
    #[error("malformed public key")]
    Malformed,
    #[error("unsupported elliptic curve (use P-256 or P-384)")]
    Curve,
    #[error("unsupported public key type (use RSA, EC P-256/P-384 or Ed25519)")]
    Type,
}

/// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) into a verification key.
pub fn key_from_pem(pem: &str) -> Result<Key, KeyError> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| KeyError::NotPem)?;
    key_from_spki(&der)
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Result<(u8, &[u8], &[u8]), KeyError> {
    let bad = || KeyError::Malformed;
    let tag = *input.first().ok_or_else(bad)?;
    let first = *input.get(1).ok_or_else(bad)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 3 {
            return Err(bad());
        }
        let mut len = 0usize;
        for i in 0..n {
            len = len << 8 | *input.get(2 + i).ok_or_else(bad)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr
        .checked_add(len)
        .filter(|e| *e <= input.len())
        .ok_or_else(bad)?;
    Ok((tag, &input[hdr..end], &input[end..]))
}

fn key_from_spki(spki: &[u8]) -> Result<Key, KeyError> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let (_, seq, _) = der(spki)?;
    let (_, alg_id, rest) = der(seq)?;
    let (_, oid, params) = der(alg_id)?;
    let (tag, bits, _) = der(rest)?;
    if tag != 0x03 || bits.first() != Some(&0) {
        return Err(KeyError::Malformed);
    }
    let pk = bits[1..].to_vec();
    if oid == RSA {
        Ok(Key::RsaDer(pk))
    } else if oid == EC {
        let (_, curve, _) = der(params)?;
        match curve {
            c if c == P256 => Ok(Key::Ec {
                p384: false,
                point: pk,
            }),
            c if c == P384 => Ok(Key::Ec {
                p384: true,
                point: pk,
            }),
            _ => Err(KeyError::Curve),
        }
    } else if oid == ED25519 {
        Ok(Key::Ed25519(pk))
    } else {
        Err(KeyError::Type)
    }
}

/// Keys from a JWKS document; `oct` (symmetric) keys are ignored, as are unknown types.
pub fn keys_from_jwks(jwks: &Value) -> Vec<(Option<String>, Key)> {
    let mut out = Vec::new();
    for k in jwks
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kid = k.get("kid").and_then(Value::as_str).map(String::from);
        let field = |name: &str| {
            k.get(name)
                .and_then(Value::as_str)
                .and_then(|v| b64(v).ok())
        };
        let key = match k.get("kty").and_then(Value::as_str) {
            Some("RSA") => match (field("n"), field("e")) {
                (Some(n), Some(e)) => Some(Key::RsaParts { n, e }),
                _ => None,
            },
            Some("EC") => match (k.get("crv").and_then(Value::as_str), field("x"), field("y")) {
                (Some(crv @ ("P-256" | "P-384")), Some(x), Some(y)) => {
                    let mut point = vec![4u8];
                    point.extend(x);
                    point.extend(y);
                    Some(Key::Ec {
                        p384: crv == "P-384",
                        point,
                    })
                }
                _ => None,
            },
            Some("OKP") if k.get("crv").and_then(Value::as_str) == Some("Ed25519") => {
                field("x").map(Key::Ed25519)
            }
            _ => None,
        };
        if let Some(key) = key {
            out.push((kid, key));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn hs_issuer() -> IssuerKeys {
        IssuerKeys {
            issuer: "https://issuer.example".into(),
            audiences: vec!["keyzero".into()],
            algorithms: vec![Alg::HS256],
            keys: vec![(None, Key::Hmac(Zeroizing::new(b"dev-secret".to_vec())))],
        }
    }

    fn claims() -> Value {
        json!({"iss": "https://issuer.example", "aud": "keyzero", "sub": "agent-1", "exp": NOW + 600, "iat": NOW})
    }

    fn forge(header: Value, payload: Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            URL_SAFE_NO_PAD.encode(sig)
        )
    }

    #[test]
    fn valid_and_attacks() {
        let iss = [hs_issuer()];
        let good = sign_hs256(&claims(), b"dev-secret");
        assert_eq!(verify(&good, &iss, NOW).unwrap()["sub"], "agent-1");
        assert_eq!(
            verify(&sign_hs256(&claims(), b"wrong"), &iss, NOW),
            Err(JwtError::Signature)
        );
        assert_eq!(
            verify(&forge(json!({"alg": "none"}), claims(), b""), &iss, NOW),
            Err(JwtError::Algorithm("none".into()))
        );
        let mut c = claims();
        c["exp"] = json!(NOW - 3600);
        assert_eq!(
            verify(&sign_hs256(&c, b"dev-secret"), &iss, NOW),
            Err(JwtError::Expired)
        );
        c["exp"] = json!(format!("{}", NOW + 600));
        assert_eq!(
            verify(&sign_hs256(&c, b"dev-secret"), &iss, NOW),
            Err(JwtError::NoExp)
        );
        let mut c = claims();
        c["aud"] = json!("other");
        assert_eq!(
            verify(&sign_hs256(&c, b"dev-secret"), &iss, NOW),
            Err(JwtError::Audience)
        );
        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        assert_eq!(
            verify(&sign_hs256(&c, b"dev-secret"), &iss, NOW),
            Err(JwtError::UnknownIssuer)
        );
        let mut c = claims();
        c["nbf"] = json!(NOW + 3600);
        assert_eq!(
            verify(&sign_hs256(&c, b"dev-secret"), &iss, NOW),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(verify("a.b", &iss, NOW), Err(JwtError::Malformed));
    }

    #[test]
    fn hs256_with_an_rs_issuers_public_key_is_refused() {
        // An RS issuer: the attacker signs HS256 with the (public) key bytes as the HMAC secret.
        let pem_body = b"-----BEGIN PUBLIC KEY-----\nMIIB...\n-----END PUBLIC KEY-----\n";
        let rs = IssuerKeys {
            issuer: "https://issuer.example".into(),
            audiences: vec!["keyzero".into()],
            algorithms: vec![Alg::RS256],
            keys: vec![(None, Key::RsaDer(pem_body.to_vec()))],
        };
        let token = sign_hs256(&claims(), pem_body);
        assert_eq!(
            verify(&token, std::slice::from_ref(&rs), NOW),
            Err(JwtError::Algorithm("HS256".into()))
        );
        // Even if HS256 were pinned too, an RSA key never verifies an HMAC.
        let mut both = rs;
        both.algorithms.push(Alg::HS256);
        assert_eq!(verify(&token, &[both], NOW), Err(JwtError::Signature));
    }

    #[test]
    fn ecdsa_and_jwks_with_kids() {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = kp.public_key().as_ref().to_vec();
        let jwks = json!({"keys": [
            {"kty": "oct", "kid": "sym", "k": URL_SAFE_NO_PAD.encode("secret")},
            {"kty": "EC", "crv": "P-256", "kid": "k1", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}
        ]});
        let keys = keys_from_jwks(&jwks);
        assert_eq!(keys.len(), 1, "oct keys are ignored");
        let issuer = IssuerKeys {
            issuer: "https://issuer.example".into(),
            audiences: vec!["keyzero".into()],
            algorithms: vec![Alg::ES256],
            keys,
        };
        let sign = |kid: &str| {
            let h = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": kid}).to_string());
            let p = URL_SAFE_NO_PAD.encode(claims().to_string());
            let sig = kp.sign(&rng, format!("{h}.{p}").as_bytes()).unwrap();
            format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        };
        assert!(verify(&sign("k1"), std::slice::from_ref(&issuer), NOW).is_ok());
        assert_eq!(
            verify(&sign("k9"), &[issuer], NOW),
            Err(JwtError::UnknownKid)
        );
    }
}
