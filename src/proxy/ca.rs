//! The per-run certificate authority: generated in memory when kz starts (its private key never
//! touches disk), minting a leaf certificate per intercepted host on first use and caching the
//! resulting TLS server configuration (ALPN `h2`, `http/1.1`).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Leaf certificates kept minted (a hostile client can ask for any number of wildcard names).
pub const LEAF_CACHE: usize = 512;

/// Why a certificate or a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}: {1}")]
    Cert(String, rcgen::Error),
    #[error("leaf name {0:?}: {1}")]
    Name(String, rcgen::Error),
    #[error("tls config for {0}: {1}")]
    Tls(String, rustls::Error),
}

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    leaves: Mutex<crate::lru::Lru<String, Arc<rustls::ServerConfig>>>,
}

impl Ca {
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Cert("ca key".into(), e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("KeyZero per-run CA {}", std::process::id()),
        );
        dn.push(DnType::OrganizationName, "KeyZero");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time_now();
        params.not_before = now - std::time::Duration::from_secs(3600);
        params.not_after = now + std::time::Duration::from_secs(30 * 86_400);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Cert("ca certificate".into(), e))?;
        Ok(Ca {
            cert,
            key,
            leaves: Mutex::new(crate::lru::Lru::new(LEAF_CACHE)),
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The TLS server config presenting a certificate for `host`, minted on first use.
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let host = host.to_ascii_lowercase();
        if let Some(c) = self.leaves.lock().unwrap().get(&host) {
            return Ok(c);
        }
        let key = KeyPair::generate().map_err(|e| CaError::Cert("leaf key".into(), e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host.clone());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|e| CaError::Name(host.clone(), e))?,
            ),
        }];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = time_now();
        params.not_before = now - std::time::Duration::from_secs(3600);
        params.not_after = now + std::time::Duration::from_secs(7 * 86_400);
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| CaError::Cert(format!("leaf certificate for {host}"), e))?;
        let chain = vec![leaf.der().clone(), self.cert.der().clone()];
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, der)
        .map_err(|e| CaError::Tls(host.clone(), e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        self.leaves.lock().unwrap().insert(host, cfg.clone());
        Ok(cfg)
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// PEM-encodes DER certificates (for the CA bundle file).
pub fn pem_encode(ders: &[CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}
