//! WebSocket frames after the handshake, parsed in both directions: from the upstream every real
//! value is scrubbed back to its token; from the agent a token of a secret not bound here ends
//! the connection (close code 1008). Masked or not, fragmented or not: a value split across
//! fragments of one message is still found. Compression extensions are never negotiated (kz
//! removes `Sec-WebSocket-Extensions` from the handshake), so a compressed frame is refused.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::conceal::replace::{Forbidden, PatternSet, StreamReplacer};

/// Frames larger than this end the connection rather than being buffered.
pub const MAX_FRAME: u64 = 16 << 20;

/// One parsed frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
}

/// Why a direction stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The stream ended or broke.
    Closed,
    /// A forbidden pattern (a token of another host's secret), with its index.
    Refused(Forbidden),
    /// Something kz will not pass on: a compressed or oversized frame.
    Unreadable(&'static str),
}

/// Parses one frame from the front of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, Stop> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let mut at = 2;
    let len = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            at = 4;
            u16::from_be_bytes([buf[2], buf[3]]) as u64
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            at = 10;
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"))
        }
        n => n as u64,
    };
    if len > MAX_FRAME {
        return Err(Stop::Unreadable("frame larger than 16 MiB"));
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m: [u8; 4] = buf[at..at + 4].try_into().expect("4 bytes");
        at += 4;
        Some(m)
    } else {
        None
    };
    let end = at + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let mut payload = buf[at..end].to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Ok(Some((
        Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x07,
            opcode: b0 & 0x0f,
            mask,
            payload,
        },
        end,
    )))
}

/// Serialises a frame (masking the payload with its key, if it has one).
pub fn encode(f: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.payload.len() + 14);
    out.push(((f.fin as u8) << 7) | (f.rsv << 4) | f.opcode);
    let mask_bit = if f.mask.is_some() { 0x80 } else { 0 };
    let len = f.payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match f.mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(f.payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(&f.payload),
    }
    out
}

/// The per-direction rewriter: data frames of one message go through one streaming replacer,
/// control frames (never fragmented) are rewritten whole.
pub struct Rewriter {
    set: Option<Arc<PatternSet>>,
    message: Option<StreamReplacer>,
}

impl Rewriter {
    pub fn new(set: Option<Arc<PatternSet>>) -> Self {
        Rewriter { set, message: None }
    }

    /// The frame to send on for `f`.
    pub fn rewrite(&mut self, mut f: Frame) -> Result<Frame, Stop> {
        let Some(set) = &self.set else {
            return Ok(f);
        };
        if f.rsv != 0 {
            return Err(Stop::Unreadable("compressed or extended frame"));
        }
        let mut out = Vec::with_capacity(f.payload.len() + 32);
        if f.opcode >= 0x8 {
            match set.replace_all(&f.payload) {
                Ok(Some(v)) => out = v,
                Ok(None) => out = std::mem::take(&mut f.payload),
                Err(f) => return Err(Stop::Refused(f)),
            }
        } else {
            let r = self.message.get_or_insert_with(|| set.stream());
            r.push(&f.payload, &mut out).map_err(Stop::Refused)?;
            if f.fin {
                r.finish(&mut out).map_err(Stop::Refused)?;
                self.message = None;
            }
        }
        f.payload = out;
        Ok(f)
    }
}

/// Copies frames from `from` to `to` through `rw` until either side stops.
pub async fn pump<R, W>(mut from: R, mut to: W, mut rw: Rewriter) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        loop {
            let (frame, used) = match parse(&buf) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(stop) => return stop,
            };
            buf.drain(..used);
            let close = frame.opcode == 0x8;
            let frame = match rw.rewrite(frame) {
                Ok(f) => f,
                Err(stop) => return stop,
            };
            if to.write_all(&encode(&frame)).await.is_err() || to.flush().await.is_err() {
                return Stop::Closed;
            }
            if close {
                return Stop::Closed;
            }
        }
        match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return Stop::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A close frame with a status code and reason (sent unmasked, as a server would).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(120)]);
    encode(&Frame {
        fin: true,
        rsv: 0,
        opcode: 0x8,
        mask: None,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn set(pairs: &[(&str, Option<&str>)]) -> Arc<PatternSet> {
        PatternSet::new(
            pairs
                .iter()
                .map(|(p, r)| {
                    (
                        Zeroizing::new(p.as_bytes().to_vec()),
                        r.map(|r| Zeroizing::new(r.as_bytes().to_vec())),
                    )
                })
                .collect(),
        )
        .unwrap()
    }

    fn frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Frame {
        Frame {
            fin,
            rsv: 0,
            opcode,
            mask,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn frames_round_trip_at_every_length_masked_or_not() {
        for len in [0, 1, 125, 126, 65535, 65536] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let f = frame(true, 2, mask, &vec![7u8; len]);
                let bytes = encode(&f);
                assert_eq!(parse(&bytes).unwrap(), Some((f, bytes.len())));
                assert_eq!(parse(&bytes[..bytes.len() - 1]).unwrap(), None);
            }
        }
    }

    #[test]
    fn a_value_split_across_fragments_is_scrubbed_and_a_foreign_token_refused() {
        let mut rw = Rewriter::new(Some(set(&[("SECRETVALUE", Some("KZ_TOK_a"))])));
        let a = rw.rewrite(frame(false, 1, None, b"x SECRET")).unwrap();
        let b = rw.rewrite(frame(true, 0, None, b"VALUE y")).unwrap();
        let text = [a.payload, b.payload].concat();
        assert_eq!(text, b"x KZ_TOK_a y");
        let ping = rw.rewrite(frame(true, 9, None, b"SECRETVALUE")).unwrap();
        assert_eq!(ping.payload, b"KZ_TOK_a");
        let mut guard = Rewriter::new(Some(set(&[("KZ_TOK_other", None)])));
        assert_eq!(
            guard.rewrite(frame(true, 1, Some([9, 9, 9, 9]), b"send KZ_TOK_other")),
            Err(Stop::Refused(Forbidden(0)))
        );
        let mut compressed = frame(true, 1, None, b"..");
        compressed.rsv = 4;
        assert!(matches!(
            Rewriter::new(Some(set(&[("x", None)]))).rewrite(compressed),
            Err(Stop::Unreadable(_))
        ));
    }
}
