//! WebSocket and HTTP wire helpers shared by the load client and the built-in
//! ceiling server: frame heads, masking, frame encoding, the upgrade request and
//! the payload format the load scenarios put into `content`. Pure functions over
//! byte slices; no I/O, no clock.

use std::fmt;

/// Opcode of a continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a Ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Largest frame payload the load tool accepts; the scenarios never send or
/// expect more than a few hundred bytes, so anything bigger is a broken peer.
pub const MAX_PAYLOAD: u64 = 16 << 20;

/// A frame head that does not follow RFC 6455 (or exceeds [`MAX_PAYLOAD`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// RSV1..3 set although no extension was negotiated.
    ReservedBits,
    /// Payload length over [`MAX_PAYLOAD`].
    TooLarge(u64),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::ReservedBits => write!(f, "frame with reserved bits set"),
            WireError::TooLarge(n) => write!(f, "frame payload of {n} bytes is over the limit"),
        }
    }
}

/// A parsed frame head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// FIN bit.
    pub fin: bool,
    /// RSV1: a permessage-deflate message (only valid once negotiated).
    pub rsv1: bool,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Bytes taken by the head itself.
    pub head_len: usize,
    /// Payload bytes following the head.
    pub payload_len: usize,
}

/// Parses a frame head at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<FrameHead>, WireError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x30 != 0 {
        return Err(WireError::ReservedBits);
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge(len));
    }
    let mask = if masked {
        let Some(b) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([b[0], b[1], b[2], b[3]])
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin: buf[0] & 0x80 != 0,
        rsv1: buf[0] & 0x40 != 0,
        opcode: buf[0] & 0x0F,
        mask,
        head_len: at,
        // MAX_PAYLOAD fits in usize on every target this bench runs on.
        payload_len: len as usize,
    }))
}

/// XORs `data` with `key` in place, the key phase starting at byte 0.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let wide = u64::from(word) | (u64::from(word) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(a) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Appends one complete (FIN) frame to `out`, masked when `mask` is given.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | (opcode & 0x0F));
    match payload.len() {
        n if n < 126 => out.push(mbit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mbit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mbit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], key);
        }
        None => out.extend_from_slice(payload),
    }
}

/// Appends an HTTP/1.1 WebSocket upgrade request for `path` to `out`.
pub fn push_upgrade_request(out: &mut Vec<u8>, host: &str, path: &str, key: &str) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends an HTTP/1.1 keep-alive POST with a JSON body to `out`.
pub fn push_post(out: &mut Vec<u8>, host: &str, path: &str, body: &[u8]) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
}

/// Builds the `content` string the scenarios send: `"<seq>:<nanos>:<padding>"`,
/// padded so that the whole JSON message is about `total` bytes.
pub fn content_string(seq: u64, nanos: u64, total: usize) -> String {
    let mut s = format!("{seq}:{nanos}:");
    // About 40 bytes of JSON framing surround the content. Chat-like text,
    // not one repeated byte, so compressed sizes are realistic.
    let mut filler = FILLER.bytes().cycle();
    while s.len() + 40 < total {
        s.push(char::from(filler.next().unwrap_or(b' ')));
    }
    s
}

/// Padding text for `content`: plain ASCII without quotes or backslashes.
const FILLER: &str = "Running ten minutes late, the train stopped outside the station. \
Can you order for me? The usual, and a coffee with oat milk please. \
Thanks! See you at the corner table by the window in a bit. ";

/// Finds `"content":"<seq>:<nanos>:` in a delivered JSON message and returns
/// `(seq, nanos)`; `None` for any other message (errors, pongs, foreign traffic).
pub fn parse_content_seq(msg: &[u8]) -> Option<(u64, u64)> {
    const KEY: &[u8] = b"\"content\":\"";
    let at = find(msg, KEY)? + KEY.len();
    let (seq, rest) = parse_u64_until_colon(&msg[at..])?;
    let (nanos, _) = parse_u64_until_colon(rest)?;
    Some((seq, nanos))
}

fn parse_u64_until_colon(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' if i < 20 => v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?,
            b':' if i > 0 => return Some((v, &b[i + 1..])),
            _ => return None,
        }
    }
    None
}

/// Position of the first occurrence of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks of the functions above; run by the bench binary's self-test mode
/// (`cargo test --benches` runs harness-less benches without `--bench`).
pub fn self_test() -> Result<usize, String> {
    let mut n = 0;
    let mut check = |ok: bool, what: &str| -> Result<(), String> {
        n += 1;
        if ok {
            Ok(())
        } else {
            Err(format!("wire self-test failed: {what}"))
        }
    };
    for len in [0usize, 5, 125, 126, 300, 65535, 65536] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let key = [1, 2, 3, 4];
        push_frame(&mut out, OP_TEXT, &payload, Some(key));
        let head = parse_head(&out).map_err(|e| e.to_string())?;
        let expect_head = 2
            + 4
            + if len < 126 {
                0
            } else if len <= 0xFFFF {
                2
            } else {
                8
            };
        check(
            head == Some(FrameHead {
                fin: true,
                rsv1: false,
                opcode: OP_TEXT,
                mask: Some(key),
                head_len: expect_head,
                payload_len: len,
            }),
            "masked head round trip",
        )?;
        let mut body = out[expect_head..].to_vec();
        apply_mask(&mut body, key);
        check(body == payload, "mask round trip")?;
        check(
            parse_head(&out[..expect_head - 1]) == Ok(None),
            "short head is partial",
        )?;
    }
    check(
        parse_head(&[0xA1, 0]) == Err(WireError::ReservedBits),
        "rsv bits",
    )?;
    check(
        parse_head(&[0xC1, 0]).is_ok_and(|h| h.is_some_and(|h| h.rsv1)),
        "rsv1 is reported",
    )?;
    let c = content_string(17, 123456, 100);
    let msg = format!("{{\"type\":\"notification\",\"content\":\"{c}\",\"seq\":17}}");
    check(
        parse_content_seq(msg.as_bytes()) == Some((17, 123456)),
        "content parse",
    )?;
    check(
        (95..=105).contains(&msg.len()),
        "content padding gives ~100 bytes",
    )?;
    check(
        parse_content_seq(b"{\"type\":\"pong\"}").is_none(),
        "foreign message",
    )?;
    check(
        parse_content_seq(b"{\"content\":\":1:\"}").is_none(),
        "empty seq",
    )?;
    Ok(n)
}
