//! A minimal DNS codec for kz's resolver inside an isolated namespace: parse one question,
//! answer it with A/AAAA records, or refuse it. Pure over byte slices; the UDP/TCP server around
//! it and the policy (`[network] allow`, `hosts`) live with the transparent front door.

use std::net::IpAddr;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

/// Response codes kz uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    NxDomain = 3,
    Refused = 5,
}

/// One parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Recursion desired, echoed back.
    pub rd: bool,
    /// Lower-case, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as received, echoed in the answer.
    question: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Too short to hold even a header: drop it.
    Truncated,
    /// A header but no usable single question: answer FORMERR with this id.
    Malformed(u16),
}

/// Parses a query message (no compression is allowed in questions, as resolvers send them).
pub fn parse_query(msg: &[u8]) -> Result<Query, ParseError> {
    if msg.len() < 12 {
        return Err(ParseError::Truncated);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let bad = ParseError::Malformed(id);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if is_response || opcode != 0 || qdcount != 1 {
        return Err(bad);
    }
    let mut pos = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = *msg.get(pos).ok_or(ParseError::Malformed(id))? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Err(ParseError::Malformed(id));
        }
        let label = msg.get(pos..pos + len).ok_or(ParseError::Malformed(id))?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
        if labels.iter().map(|l| l.len() + 1).sum::<usize>() > 255 {
            return Err(ParseError::Malformed(id));
        }
    }
    let tail = msg.get(pos..pos + 4).ok_or(ParseError::Malformed(id))?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        name: labels.join("."),
        qtype,
        qclass,
        question: msg[12..pos + 4].to_vec(),
    })
}

fn header(id: u16, rd: bool, rcode: Rcode, qd: u16, an: u16) -> Vec<u8> {
    let mut flags: u16 = 0x8000 | 0x0080 | rcode as u16; // response, recursion available
    if rd {
        flags |= 0x0100;
    }
    let mut h = Vec::with_capacity(12);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&qd.to_be_bytes());
    h.extend_from_slice(&an.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// An answer with the addresses that fit the question's type (others are skipped; none left is
/// an empty NOERROR answer, as for a name without records of that type).
pub fn answer(q: &Query, addrs: &[IpAddr], ttl: u32) -> Vec<u8> {
    let fitting: Vec<&IpAddr> = addrs
        .iter()
        .filter(|a| {
            matches!(
                (q.qtype, a),
                (TYPE_A, IpAddr::V4(_)) | (TYPE_AAAA, IpAddr::V6(_))
            )
        })
        .collect();
    let mut out = header(q.id, q.rd, Rcode::NoError, 1, fitting.len() as u16);
    out.extend_from_slice(&q.question);
    for a in fitting {
        out.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        match a {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    out
}

/// A reply with no answers and `rcode` (REFUSED for names outside `[network] allow`).
pub fn error(q: &Query, rcode: Rcode) -> Vec<u8> {
    let mut out = header(q.id, q.rd, rcode, 1, 0);
    out.extend_from_slice(&q.question);
    out
}

/// FORMERR for a message that had a header but no usable question.
pub fn format_error(id: u16) -> Vec<u8> {
    header(id, false, Rcode::FormErr, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn parse_and_answer() {
        let q = parse_query(&query("API.Example.com", TYPE_A)).unwrap();
        assert_eq!(
            (q.id, q.rd, q.name.as_str(), q.qtype),
            (0x1234, true, "api.example.com", TYPE_A)
        );
        let addrs: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap()];
        let a = answer(&q, &addrs, 60);
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0x0f, 0, "noerror");
        assert_eq!(
            u16::from_be_bytes([a[6], a[7]]),
            1,
            "only the A record fits"
        );
        assert_eq!(&a[a.len() - 4..], &[192, 0, 2, 7]);
        let q6 = parse_query(&query("x.test", TYPE_AAAA)).unwrap();
        let a6 = answer(&q6, &addrs, 60);
        assert_eq!(
            &a6[a6.len() - 16..],
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        let r = error(&q, Rcode::Refused);
        assert_eq!(r[3] & 0x0f, 5);
        assert_eq!(u16::from_be_bytes([r[4], r[5]]), 1);
    }

    #[test]
    fn malformed_queries() {
        assert_eq!(parse_query(&[0; 5]), Err(ParseError::Truncated));
        let mut q = query("a.b", TYPE_A);
        q.truncate(q.len() - 2);
        assert_eq!(parse_query(&q), Err(ParseError::Malformed(0x1234)));
        let mut resp = query("a.b", TYPE_A);
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), Err(ParseError::Malformed(0x1234)));
        let mut bad_label = query("a.b", TYPE_A);
        bad_label[12] = 64;
        assert!(parse_query(&bad_label).is_err());
        for n in 0..q.len() {
            let _ = parse_query(&q[..n]);
        }
        assert_eq!(format_error(7)[3] & 0x0f, 1);
    }

    /// Each answer record names its owner by a pointer to the question's name at offset 12.
    #[test]
    fn answer_uses_a_name_pointer_to_the_question() {
        let q = parse_query(&query("api.kz.test", TYPE_A)).unwrap();
        let a = answer(&q, &["198.51.100.1".parse().unwrap()], 30);
        let qlen = q.question.len();
        assert_eq!(&a[12 + qlen..12 + qlen + 2], &[0xc0, 0x0c]);
    }
}
