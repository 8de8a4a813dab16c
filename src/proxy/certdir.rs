//! A hashed certificate directory (what `SSL_CERT_DIR` and `/etc/ssl/certs` hold): one PEM file
//! per certificate, named by the OpenSSL subject-name hash (`<8 hex>.<n>`), which is how
//! OpenSSL-based clients look a CA up there. The hash is SHA-1 over the subject name in
//! OpenSSL's canonical form (string values as UTF-8, lower-cased ASCII, whitespace trimmed and
//! collapsed; the outer SEQUENCE header left out), its first four bytes read little-endian.

use std::path::Path;

use crate::fs::FileError;

use rustls::pki_types::CertificateDer;

/// One DER element: (tag, header length, total length) at the start of `d`.
fn element(d: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *d.first()?;
    let first = *d.get(1)?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || d.len() < 2 + n {
            return None;
        }
        let len = d[2..2 + n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, 2 + n)
    };
    (d.len() >= head + len).then_some((tag, head, head + len))
}

/// The children of a constructed element's contents.
fn children(mut d: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let (_, _, total) = element(d)?;
        out.push(&d[..total]);
        d = &d[total..];
    }
    Some(out)
}

fn contents(el: &[u8]) -> Option<&[u8]> {
    let (_, head, total) = element(el)?;
    Some(&el[head..total])
}

fn encode(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(body);
    out
}

/// A string value in OpenSSL's canonical form, or `None` when the type is not a string type
/// it canonicalises.
fn canonical_string(tag: u8, body: &[u8]) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = match tag {
        // UTF8String
        0x0c => body.to_vec(),
        // PrintableString, T61String, IA5String, VisibleString: one byte per character
        0x13 | 0x14 | 0x16 | 0x1a => body
            .iter()
            .map(|b| *b as char)
            .collect::<String>()
            .into_bytes(),
        // BMPString (UCS-2 big-endian)
        0x1e => char::decode_utf16(
            body.chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])),
        )
        .map(|c| c.unwrap_or('\u{fffd}'))
        .collect::<String>()
        .into_bytes(),
        // UniversalString (UCS-4 big-endian)
        0x1c => body
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('\u{fffd}')
            })
            .collect::<String>()
            .into_bytes(),
        _ => return None,
    };
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let trimmed: &[u8] = {
        let start = bytes
            .iter()
            .position(|b| !is_space(*b))
            .unwrap_or(bytes.len());
        let end = bytes
            .iter()
            .rposition(|b| !is_space(*b))
            .map_or(start, |e| e + 1);
        &bytes[start..end]
    };
    let mut out = Vec::with_capacity(trimmed.len());
    let mut in_space = false;
    for &b in trimmed {
        if is_space(b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            in_space = false;
            out.push(b.to_ascii_lowercase());
        }
    }
    Some(out)
}

/// The certificate's subject Name element (with its header).
fn subject(der: &[u8]) -> Option<&[u8]> {
    let cert = contents(der)?;
    let tbs = contents(children(cert)?.first()?)?;
    let fields = children(tbs)?;
    // An explicit [0] version comes first when present.
    let skip = usize::from(fields.first()?.first() == Some(&0xa0));
    // serialNumber, signature, issuer, validity, subject
    fields.get(skip + 4).copied()
}

/// The OpenSSL subject-name hash of a DER certificate.
pub fn subject_hash(der: &[u8]) -> Option<u32> {
    let name = subject(der)?;
    let mut canon = Vec::new();
    for rdn in children(contents(name)?)? {
        let mut set = Vec::new();
        for ava in children(contents(rdn)?)? {
            let parts = children(contents(ava)?)?;
            let (oid, value) = (parts.first()?, parts.get(1)?);
            let (tag, head, total) = element(value)?;
            let value = match canonical_string(tag, &value[head..total]) {
                Some(s) => encode(0x0c, &s),
                None => value.to_vec(),
            };
            let mut seq = oid.to_vec();
            seq.extend(value);
            set.extend(encode(0x30, &seq));
        }
        canon.extend(encode(0x31, &set));
    }
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &canon);
    let h = d.as_ref();
    Some(u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
}

/// Writes `certs` into `dir` as `<hash>.<n>` PEM files (and `ca-certificates.crt`, the whole
/// bundle, so the directory can stand in for `/etc/ssl/certs`), files with `mode` and the
/// directory readable the same way.
pub fn write(
    dir: &Path,
    certs: &[CertificateDer<'_>],
    bundle_pem: &str,
    mode: u32,
) -> Result<(), FileError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = FileError::at(dir);
    let dir_mode = if mode & 0o044 != 0 { 0o755 } else { 0o700 };
    std::fs::DirBuilder::new()
        .mode(dir_mode)
        .create(dir)
        .map_err(&io)?;
    // Shared with other users (the sidecar's volume): set the modes outright, whatever the
    // umask; private files only ever lose bits to it.
    let shared = mode & 0o044 != 0;
    if shared {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).map_err(&io)?;
    }
    let put = |name: &str, text: &[u8]| -> Result<(), FileError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(dir.join(name))
            .map_err(&io)?;
        if shared {
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(&io)?;
        }
        f.write_all(text).map_err(&io)
    };
    let mut used = std::collections::HashMap::<u32, u32>::new();
    for c in certs {
        let Some(h) = subject_hash(c.as_ref()) else {
            continue;
        };
        let n = used.entry(h).or_insert(0);
        let pem = super::ca::pem_encode(std::slice::from_ref(c));
        put(&format!("{h:08x}.{n}"), pem.as_bytes())?;
        *n += 1;
    }
    put("ca-certificates.crt", bundle_pem.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn hashes_match_openssl() {
        // `openssl x509 -hash -noout -in tests/fixtures/tls/ca.pem`
        let ca = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tls/ca.pem"
        ))
        .unwrap();
        assert_eq!(
            format!("{:08x}", subject_hash(&der_of(&ca)).unwrap()),
            CA_HASH
        );
        // Every system root, where openssl is installed to ask.
        let roots = crate::http::system_roots();
        let Ok(probe) = std::process::Command::new("openssl")
            .arg("version")
            .output()
        else {
            return;
        };
        assert!(probe.status.success());
        let mut checked = 0;
        for r in roots.iter().take(40) {
            let pem = super::super::ca::pem_encode(std::slice::from_ref(r));
            let mut child = std::process::Command::new("openssl")
                .args(["x509", "-hash", "-noout"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(pem.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let want = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(format!("{:08x}", subject_hash(r.as_ref()).unwrap()), want);
            checked += 1;
        }
        assert!(checked > 0 || roots.is_empty());
    }

    const CA_HASH: &str = "7570ace9";
}
