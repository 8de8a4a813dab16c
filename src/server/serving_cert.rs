//! The server's TLS certificate, reloaded when its files change: a Kubernetes Secret volume
//! (cert-manager renewals, a regenerated webhook certificate) is updated in place, and the
//! server must pick up the new pair without a restart. A bad pair on disk keeps the old one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::fs::FileError;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct ServingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents `current` came from (or the last bad contents reported).
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

/// Why a certificate and key pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Pem(#[from] crate::http::PemError),
    #[error("{0}: {1}")]
    Key(String, String),
    #[error("{0}: no private key found")]
    NoKey(String),
    #[error("{key}: the key does not match {cert}")]
    Mismatch { key: String, cert: String },
    #[error("tls config: {0}")]
    Tls(rustls::Error),
}

fn read(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), FileError> {
    let r = |p: &Path| std::fs::read(p).map_err(FileError::at(p));
    Ok((r(cert)?, r(key)?))
}

fn parse(cert: &Path, key: &Path, pem: &(Vec<u8>, Vec<u8>)) -> Result<CertifiedKey, CertError> {
    let certs = crate::http::parse_pem_certs(&pem.0, &cert.display().to_string())?;
    let shown = || key.display().to_string();
    let der = rustls_pemfile::private_key(&mut pem.1.as_slice())
        .map_err(|e| CertError::Key(shown(), e.to_string()))?
        .ok_or_else(|| CertError::NoKey(shown()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| CertError::Key(shown(), e.to_string()))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|_| CertError::Mismatch {
        key: shown(),
        cert: cert.display().to_string(),
    })?;
    Ok(ck)
}

impl ServingCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, CertError> {
        let pem = read(cert, key)?;
        let ck = parse(cert, key, &pem)?;
        Ok(Arc::new(ServingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(ck)),
            seen: Mutex::new(pem),
        }))
    }

    /// Looks at the files once; true when a new pair was taken.
    pub fn refresh(&self) -> bool {
        let Ok(pem) = read(&self.cert, &self.key) else {
            return false;
        };
        let mut seen = self.seen.lock().unwrap();
        if *seen == pem {
            return false;
        }
        // A renewal writes the two files one after the other: a pair that does not match yet
        // is left for the next look, reported once.
        let outcome = parse(&self.cert, &self.key, &pem);
        *seen = pem;
        match outcome {
            Ok(ck) => {
                *self.current.write().unwrap() = Arc::new(ck);
                eprintln!(
                    "kz: serving certificate reloaded from {}",
                    self.cert.display()
                );
                true
            }
            Err(e) => {
                eprintln!("kz: serving certificate not reloaded (keeping the old one): {e}");
                false
            }
        }
    }

    /// Refreshes every `POLL` for as long as the server holds a reference.
    pub async fn watch(me: std::sync::Weak<Self>) {
        loop {
            tokio::time::sleep(POLL).await;
            let Some(me) = me.upgrade() else { return };
            me.refresh();
        }
    }

    /// A rustls server configuration answering with the current pair (h2 and http/1.1).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(CertError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn subject(s: &ServingCert) -> Vec<u8> {
        s.current.read().unwrap().cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_new_pair_is_taken_and_a_bad_or_half_written_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = pair("one.example");
        std::fs::write(&c, &c1).unwrap();
        std::fs::write(&k, &k1).unwrap();
        let s = ServingCert::load(&c, &k).unwrap();
        let first = subject(&s);
        assert!(!s.refresh(), "unchanged files change nothing");
        // Half a renewal: the new certificate with the old key.
        let (c2, k2) = pair("two.example");
        std::fs::write(&c, &c2).unwrap();
        assert!(!s.refresh());
        assert_eq!(subject(&s), first, "a mismatched pair keeps the old one");
        std::fs::write(&k, &k2).unwrap();
        assert!(s.refresh());
        assert_ne!(subject(&s), first);
        std::fs::write(&c, "garbage").unwrap();
        assert!(!s.refresh());
        assert!(!subject(&s).is_empty());
    }
}
