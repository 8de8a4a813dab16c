//! Reading the destination of a connection before answering it: the server name from a TLS
//! ClientHello, or the `Host` of a plain HTTP request. Pure functions over the bytes peeked from
//! the socket; the transparent front door (`--isolate`, the sidecar) uses them.

/// What the first bytes of a connection say about its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// A TLS ClientHello; `None` when it carries no server name.
    Tls(Option<String>),
    /// A plain HTTP request with this `Host` (port included when given).
    Http(Option<String>),
    /// More bytes are needed to decide.
    Incomplete,
    /// Neither TLS nor HTTP.
    Other,
}

/// Classifies the first bytes of a client's stream.
pub fn peek(data: &[u8]) -> Peeked {
    match data.first() {
        None => Peeked::Incomplete,
        Some(0x16) => match client_hello_sni(data) {
            Ok(name) => Peeked::Tls(name),
            Err(Incomplete) => Peeked::Incomplete,
        },
        Some(b) if b.is_ascii_uppercase() => http_host(data),
        Some(_) => Peeked::Other,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Incomplete;

/// A cursor that reports running out of bytes as `Incomplete`.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Incomplete> {
        let end = self.pos.checked_add(n).ok_or(Incomplete)?;
        let s = self.data.get(self.pos..end).ok_or(Incomplete)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Incomplete> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, Incomplete> {
        let b = self.take(2)?;
        Ok(usize::from(b[0]) << 8 | usize::from(b[1]))
    }
    fn u24(&mut self) -> Result<usize, Incomplete> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// The `server_name` of a ClientHello in `data` (a TLS record stream). Only the first
/// handshake record is read; a ClientHello spread over several records is treated as having no
/// name (clients do not do that in practice).
pub fn client_hello_sni(data: &[u8]) -> Result<Option<String>, Incomplete> {
    let mut rec = Reader { data, pos: 0 };
    if rec.u8()? != 0x16 {
        return Ok(None);
    }
    rec.take(2)?; // legacy record version
    let len = rec.u16()?;
    let body = rec.take(len)?;
    let mut r = Reader { data: body, pos: 0 };
    let parse = |r: &mut Reader<'_>| -> Result<Option<String>, Incomplete> {
        if r.u8()? != 0x01 {
            return Ok(None); // not a ClientHello
        }
        let hs_len = r.u24()?;
        let hs = r.take(hs_len)?;
        let mut h = Reader { data: hs, pos: 0 };
        h.take(2 + 32)?; // client version, random
        let sid = usize::from(h.u8()?);
        h.take(sid)?;
        let suites = h.u16()?;
        h.take(suites)?;
        let comp = usize::from(h.u8()?);
        h.take(comp)?;
        if h.pos == hs.len() {
            return Ok(None); // no extensions
        }
        let ext_len = h.u16()?;
        let exts = h.take(ext_len)?;
        let mut e = Reader { data: exts, pos: 0 };
        while e.pos < exts.len() {
            let ty = e.u16()?;
            let len = e.u16()?;
            let ext = e.take(len)?;
            if ty != 0 {
                continue;
            }
            let mut s = Reader { data: ext, pos: 0 };
            let list_len = s.u16()?;
            let list = s.take(list_len)?;
            let mut l = Reader { data: list, pos: 0 };
            while l.pos < list.len() {
                let name_type = l.u8()?;
                let n = l.u16()?;
                let name = l.take(n)?;
                if name_type == 0 {
                    return Ok(std::str::from_utf8(name).ok().map(host_of_sni));
                }
            }
        }
        Ok(None)
    };
    // Inside a complete record, running short means a malformed hello, not a short read.
    Ok(parse(&mut r).unwrap_or(None))
}

fn http_host(data: &[u8]) -> Peeked {
    let Some(end) = find(data, b"\r\n\r\n") else {
        return if data.len() > 16 * 1024 {
            Peeked::Http(None)
        } else {
            Peeked::Incomplete
        };
    };
    let head = &data[..end + 2];
    let mut lines = head.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    if !first.ends_with(b"\r") || !first.windows(5).any(|w| w == b"HTTP/") {
        return Peeked::Other;
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            if line[..colon].eq_ignore_ascii_case(b"host") {
                let v = String::from_utf8_lossy(&line[colon + 1..])
                    .trim()
                    .to_ascii_lowercase();
                return Peeked::Http((!v.is_empty()).then_some(v));
            }
        }
    }
    Peeked::Http(None)
}

/// The host a server name stands for, lower-cased: some clients (Go programs given
/// `host:port` as their TLS server name) send the port along; it is not part of the name.
pub fn host_of_sni(name: &str) -> String {
    let name = match name.rsplit_once(':') {
        Some((h, p))
            if !h.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        _ => name,
    };
    name.to_ascii_lowercase()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls sends it, captured in-process.
    fn real_client_hello(name: &str) -> Vec<u8> {
        let cfg = crate::http::tls_client_config(&[]);
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn a_port_in_the_server_name_is_not_part_of_the_host() {
        assert_eq!(host_of_sni("API.example.com:443"), "api.example.com");
        assert_eq!(host_of_sni("api.example.com"), "api.example.com");
        assert_eq!(host_of_sni("2001:db8::1"), "2001:db8::1");
        assert_eq!(host_of_sni("host:"), "host:");
    }

    #[test]
    fn sni_from_a_real_client_hello() {
        let hello = real_client_hello("api.github.com");
        assert_eq!(peek(&hello), Peeked::Tls(Some("api.github.com".into())));
        // Every truncation is "need more", never a wrong answer or a panic.
        for n in 0..hello.len() {
            assert_eq!(peek(&hello[..n]), Peeked::Incomplete, "{n}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let hello = real_client_hello("x.example");
        for i in 5..hello.len() {
            let mut bad = hello.clone();
            bad[i] ^= 0xff;
            let _ = peek(&bad);
        }
        assert_eq!(peek(b"\x16\x03\x01\x00\x02\x02\x00"), Peeked::Tls(None));
    }

    #[test]
    fn http_host_header() {
        assert_eq!(
            peek(b"GET / HTTP/1.1\r\nHost: API.x.com:8080\r\n\r\n"),
            Peeked::Http(Some("api.x.com:8080".into()))
        );
        assert_eq!(peek(b"GET / HTTP/1.1\r\nHo"), Peeked::Incomplete);
        assert_eq!(peek(b"GET / HTTP/1.0\r\n\r\n"), Peeked::Http(None));
        assert_eq!(peek(b"SSH-2.0-OpenSSH\r\n\r\n"), Peeked::Other);
        assert_eq!(peek(b"\x00\x01"), Peeked::Other);
    }
}
