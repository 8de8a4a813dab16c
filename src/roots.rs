//! The machine's trust roots, found where OpenSSL looks: `SSL_CERT_FILE` and `SSL_CERT_DIR`
//! when either is set, else the system bundle and certificate directories that
//! `openssl-probe` finds. Each file is read once, however many links in a directory point at
//! it. Every `kz run --blind` reads them (the agent's CA bundle is these roots plus kz's CA), so
//! the PEM text is decoded with a plain base64 decoder: the certificates are public, and a
//! constant-time decoder spends about 25 instructions per byte on a system's bundle and
//! directory, a third of the whole start of `kz run --blind`.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rustls::pki_types::CertificateDer;

/// The trust roots of this machine, sorted and without duplicates (none when nothing is
/// found; unreadable files and blocks that are not valid base64 are skipped).
pub fn load() -> Vec<CertificateDer<'static>> {
    let file = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let dirs: Vec<PathBuf> = std::env::var_os("SSL_CERT_DIR")
        .map(|d| {
            std::env::split_paths(&d)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if file.is_none() && dirs.is_empty() {
        let probed = openssl_probe::probe();
        return load_from(probed.cert_file.as_deref(), &probed.cert_dir);
    }
    load_from(file.as_deref(), &dirs)
}

/// The certificates in `file` and in the files directly inside `dirs`.
pub fn load_from(file: Option<&Path>, dirs: &[PathBuf]) -> Vec<CertificateDer<'static>> {
    let mut seen = HashSet::new();
    let mut certs = Vec::new();
    let mut read = |path: &Path| {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
            if let Ok(data) = std::fs::read(path) {
                pem_certs(&data, &mut certs);
            }
        }
    };
    if let Some(file) = file {
        read(file);
    }
    for dir in dirs {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            read(&entry.path());
        }
    }
    certs.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
    certs.dedup();
    certs
}

/// Appends every `CERTIFICATE` block of PEM text to `out`, decoded.
fn pem_certs(data: &[u8], out: &mut Vec<CertificateDer<'static>>) {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let mut rest = data;
    let mut text = Vec::new();
    while let Some(at) = memchr::memmem::find(rest, BEGIN) {
        let body = &rest[at + BEGIN.len()..];
        let Some(end) = memchr::memmem::find(body, END) else {
            return;
        };
        let block = &body[..end];
        // Line by line first (whole lines copied at once); whitespace inside a line is rare
        // enough to be handled by a second, byte by byte, pass.
        text.clear();
        let mut from = 0;
        for nl in memchr::memchr_iter(b'\n', block).chain([block.len()]) {
            text.extend_from_slice(block[from..nl].trim_ascii());
            from = nl + 1;
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .or_else(|_| {
                text.clear();
                text.extend(block.iter().filter(|b| !b.is_ascii_whitespace()));
                base64::engine::general_purpose::STANDARD.decode(&text)
            });
        if let Ok(der) = der {
            out.push(CertificateDer::from(der));
        }
        rest = &body[end + END.len()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/tls")
                .join(name),
        )
        .unwrap()
    }

    fn strict(data: &[u8]) -> Vec<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut &data[..])
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn blocks_decode_as_the_strict_parser_does() {
        let ca = fixture("ca.pem");
        let server = fixture("server.pem");
        let mut both = b"leading text\n".to_vec();
        both.extend(&ca);
        both.extend(b"\nbetween\n");
        // CRLF line ends, as a bundle written on Windows has them.
        both.extend(
            String::from_utf8(server.clone())
                .unwrap()
                .replace('\n', "\r\n")
                .as_bytes(),
        );
        let mut got = Vec::new();
        pem_certs(&both, &mut got);
        let mut want = strict(&ca);
        want.extend(strict(&server));
        assert_eq!(got, want);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn bad_and_cut_blocks_are_skipped() {
        let ca = fixture("ca.pem");
        let mut data =
            b"-----BEGIN CERTIFICATE-----\nnot*base64!\n-----END CERTIFICATE-----\n".to_vec();
        data.extend(&ca);
        data.extend(b"-----BEGIN CERTIFICATE-----\nMIIB");
        let mut got = Vec::new();
        pem_certs(&data, &mut got);
        assert_eq!(got, strict(&ca));
        // Whitespace inside a line (a tab, a space) is still whitespace.
        let spaced = String::from_utf8(ca.clone())
            .unwrap()
            .replacen("\n", "\n \t", 3);
        let mut got = Vec::new();
        pem_certs(spaced.as_bytes(), &mut got);
        assert_eq!(got, strict(&ca));
        // Other PEM blocks (a key) are not certificates.
        let mut got = Vec::new();
        pem_certs(&fixture("server.key"), &mut got);
        assert!(got.is_empty());
    }

    #[test]
    fn each_file_is_read_once_and_duplicates_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        let mut text = fixture("ca.pem");
        text.extend(fixture("server.pem"));
        std::fs::write(&bundle, &text).unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        std::fs::write(certs.join("ca.pem"), fixture("ca.pem")).unwrap();
        std::os::unix::fs::symlink(&bundle, certs.join("bundle-link.pem")).unwrap();
        std::os::unix::fs::symlink(certs.join("gone.pem"), certs.join("dangling.pem")).unwrap();
        let got = load_from(Some(&bundle), &[certs]);
        let mut want = strict(&fixture("ca.pem"));
        want.extend(strict(&fixture("server.pem")));
        want.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
        assert_eq!(got, want);
    }

    #[test]
    fn the_same_roots_as_rustls_native_certs_on_this_machine() {
        let ours = load();
        let theirs = {
            let mut c = rustls_native_certs::load_native_certs().certs;
            c.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
            c.dedup();
            c
        };
        assert_eq!(ours.len(), theirs.len());
        assert!(ours == theirs, "the two loaders found different roots");
        // Not two empty lists where the system has a bundle.
        let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if std::env::var_os("SSL_CERT_FILE").is_none() && bundle.exists() {
            assert!(ours.len() > 10, "{} roots", ours.len());
        }
    }
}
