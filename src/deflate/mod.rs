//! permessage-deflate (RFC 7692): negotiation, the loop's one compressor
//! and one inflater.
//!
//! Outbound, the server never takes context over (`server_no_context_takeover`)
//! and always uses the full window (a session that asked for less gets plain
//! frames), so a message is compressed from a fresh context at most once:
//! [`Encoded`] frames it once, and every compressing session gets the same
//! shared bytes.
//!
//! Inbound, the server answers `client_no_context_takeover` to every offer,
//! so each client message is compressed from a fresh context too: one
//! [`Codec`] inflates for every session, bounded while it inflates, and a
//! session keeps nothing between its messages. An idle compressed session
//! costs what a plain one does, after traffic as before (BENCHMARKS.md).
//!
//! Touches no sockets and no sessions: bytes in, bytes out.

use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::{self, Kind, Wire};

mod negotiate;

pub use negotiate::{negotiate, Params, MAX_WINDOW_BITS};

/// The empty stored block a sync flush ends with; RFC 7692 7.2.1 strips it
/// from every message and the receiver appends it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output grows by at most this much at a time while inflating, so a
/// message's buffer tracks what it really inflates to.
const INFLATE_STEP: usize = 16 * 1024;

/// Why an inbound message could not be inflated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past `max_message_size` (Close 1009).
    TooBig,
    /// Not a valid deflate stream (Close 1007).
    Corrupt(String),
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InflateError::TooBig => f.write_str("message too big once inflated"),
            InflateError::Corrupt(why) => write!(f, "invalid compressed data: {why}"),
        }
    }
}

/// The loop's one compressor and one inflater (each created on first use),
/// with a scratch buffer reused across messages.
#[derive(Default)]
pub struct Codec {
    compressor: Option<Compress>,
    /// Created on the first compressed message: a server without
    /// compressing clients holds no zlib state.
    inflater: Option<Decompress>,
    scratch: Vec<u8>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

impl Codec {
    /// Compresses `payload` from a fresh context with the full window,
    /// without the trailing empty block. `None` if compressing does not make
    /// it smaller: then it goes out plain.
    pub fn compress(&mut self, payload: &[u8]) -> Option<&[u8]> {
        let compressor = self.compressor.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::default(), false, MAX_WINDOW_BITS)
        });
        compressor.reset();
        let out = &mut self.scratch;
        out.clear();
        // Room for no more than the plain payload plus the flush's tail: a
        // message that would not shrink stops here, instead of being
        // compressed in full and then sent plain anyway.
        out.reserve_exact(payload.len() + TAIL.len());
        compressor
            .compress_vec(payload, out, FlushCompress::Sync)
            .ok()?;
        let finished = compressor.total_in() == payload.len() as u64 && out.len() < out.capacity();
        if !finished {
            return None;
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < payload.len()).then_some(&out[..])
    }

    /// Inflates one client message, compressed from a fresh context (every
    /// session agreed to `client_no_context_takeover`). `max` bounds the
    /// inflated size while inflating: the output never grows past `max + 1`
    /// bytes, so the work is bounded by `max` too.
    pub fn inflate(&mut self, compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let inflater = self
            .inflater
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        inflater.reset(false);
        let limit = max.saturating_add(1);
        let mut out: Vec<u8> = Vec::new();
        let mut input = compressed;
        let mut tail = &TAIL[..];
        loop {
            if out.len() == out.capacity() {
                if out.len() >= limit {
                    return Err(InflateError::TooBig);
                }
                let grow = out.len().clamp(INFLATE_STEP, 4 * INFLATE_STEP);
                out.reserve_exact(grow.min(limit - out.len()));
            }
            let feeding_tail = input.is_empty();
            let source = if feeding_tail { tail } else { input };
            let (in_before, out_before) = (inflater.total_in(), out.len());
            let status = inflater
                .decompress_vec(source, &mut out, FlushDecompress::Sync)
                .map_err(|e| InflateError::Corrupt(e.to_string()))?;
            let used = (inflater.total_in() - in_before) as usize;
            if feeding_tail {
                tail = &tail[used..];
            } else {
                input = &input[used..];
            }
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            let done = input.is_empty() && tail.is_empty();
            let room_left = out.len() < out.capacity();
            if status == Status::StreamEnd || (done && room_left) {
                break;
            }
            if used == 0 && out.len() == out_before && room_left {
                return Err(InflateError::Corrupt("deflate stream stalled".into()));
            }
        }
        Ok(out)
    }
}

/// One outbound message, framed at most once per form: plain for sessions
/// without compression (or messages under `compression_min_bytes`),
/// compressed once, and as a Server-Sent Event. Every recipient gets a
/// clone of the same [`Wire`].
#[derive(Debug)]
pub struct Encoded<'a> {
    kind: Kind,
    payload: &'a [u8],
    compress: bool,
    plain: Option<Wire>,
    /// `Some(frame)` once compressed (the plain frame when compressing did
    /// not pay off).
    deflated: Option<Wire>,
    /// The Server-Sent Events form, once an SSE session receives it.
    sse: Option<Wire>,
    /// The event's `id:` (history on: the resume token of this message).
    sse_id: Option<String>,
}

impl<'a> Encoded<'a> {
    /// A message of `kind`; compressed for sessions that negotiated it when
    /// it has at least `min_bytes` bytes.
    pub fn new(kind: Kind, payload: &'a [u8], min_bytes: usize) -> Encoded<'a> {
        Encoded {
            kind,
            payload,
            compress: payload.len() >= min_bytes,
            plain: None,
            deflated: None,
            sse: None,
            sse_id: None,
        }
    }

    /// The same message whose uncompressed frame is already built.
    pub fn with_plain(mut self, plain: Wire) -> Encoded<'a> {
        self.plain = Some(plain);
        self
    }

    /// The message's payload (the JSON text).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The uncompressed frame, built on first use.
    pub fn plain(&mut self) -> Wire {
        self.plain
            .get_or_insert_with(|| frame::encode(self.kind, self.payload))
            .clone()
    }

    /// The same message whose Server-Sent Event carries `id` (history on).
    pub fn with_sse_id(mut self, id: Option<String>) -> Encoded<'a> {
        self.sse_id = id;
        self
    }

    /// The event for a Server-Sent Events session, built on first use.
    pub fn sse(&mut self) -> Wire {
        let (payload, id) = (self.payload, self.sse_id.as_deref());
        self.sse
            .get_or_insert_with(|| match id {
                Some(id) => crate::sse::event_with_id(id, payload),
                None => crate::sse::event(payload),
            })
            .clone()
    }

    /// The frame for a session with these parameters (`None`: no
    /// compression negotiated).
    pub fn for_session(&mut self, params: Option<&Params>, codec: &mut Codec) -> Wire {
        if params.is_none_or(|p| p.plain_output) || !self.compress {
            return self.plain();
        }
        if let Some(wire) = &self.deflated {
            return wire.clone();
        }
        let wire = match codec.compress(self.payload) {
            Some(bytes) => frame::encode_compressed(self.kind, bytes),
            None => self.plain(),
        };
        self.deflated = Some(wire.clone());
        wire
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: Params = Params {
        client_window_bits: 15,
        plain_output: false,
    };

    #[test]
    fn compressed_messages_round_trip_through_a_fresh_context() {
        let mut codec = Codec::default();
        let text =
            br#"{"type":"chat","room":"lobby","content":"hello hello hello hello hello hello"}"#;
        let compressed = codec.compress(text).unwrap().to_vec();
        assert!(compressed.len() < text.len());
        assert_eq!(codec.inflate(&compressed, 1000).unwrap(), text);
        assert_eq!(codec.compress(b"abc"), None, "incompressible");
    }

    #[test]
    fn a_message_that_refers_back_to_an_earlier_one_is_corrupt() {
        // A client that kept its context despite client_no_context_takeover:
        // its second message points into the first, which nobody kept.
        let first = br#"{"type":"chat","content":"the same words again and again"}"#;
        let mut client = Compress::new_with_window_bits(Compression::default(), false, 15);
        let mut stream = Vec::new();
        for _ in 0..2 {
            let mut out = Vec::with_capacity(256);
            client
                .compress_vec(first, &mut out, FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - TAIL.len());
            stream.push(out);
        }
        let mut codec = Codec::default();
        assert_eq!(codec.inflate(&stream[0], 1000).unwrap(), first);
        assert!(matches!(
            codec.inflate(&stream[1], 1000),
            Err(InflateError::Corrupt(_))
        ));
    }

    #[test]
    fn the_size_limit_holds_while_inflating() {
        let bomb_source = vec![b'a'; 4 << 20];
        let mut codec = Codec::default();
        let bomb = codec.compress(&bomb_source).unwrap().to_vec();
        assert!(bomb.len() < 30_000, "{}", bomb.len());
        assert_eq!(codec.inflate(&bomb, 1 << 20), Err(InflateError::TooBig));
        assert_eq!(codec.inflate(&bomb, 4 << 20).unwrap().len(), 4 << 20);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let mut codec = Codec::default();
        for junk in [&[0xff_u8; 40][..], &[0x07], &[]] {
            let got = codec.inflate(junk, 1000);
            assert!(
                matches!(got, Err(InflateError::Corrupt(_)) | Ok(_)),
                "{got:?}"
            );
        }
        assert!(matches!(
            codec.inflate(&[0xff; 40], 1000),
            Err(InflateError::Corrupt(_))
        ));
    }

    #[test]
    fn one_compression_per_message_and_plain_below_the_minimum() {
        let mut codec = Codec::default();
        let payload = vec![b'x'; 500];
        let mut encoded = Encoded::new(Kind::Text, &payload, 128);
        let a = encoded.for_session(Some(&PARAMS), &mut codec);
        let b = encoded.for_session(
            Some(&Params {
                client_window_bits: 9,
                plain_output: false,
            }),
            &mut codec,
        );
        let plain = encoded.for_session(None, &mut codec);
        let small_window = encoded.for_session(
            Some(&Params {
                client_window_bits: 15,
                plain_output: true,
            }),
            &mut codec,
        );
        assert!(std::rc::Rc::ptr_eq(&a, &b), "one compressed copy");
        assert!(std::rc::Rc::ptr_eq(&plain, &small_window), "and one plain");
        assert_eq!(a[0], 0xC1, "FIN + RSV1 + text");
        assert_eq!(plain[0], 0x81);
        let small = b"short";
        let mut encoded = Encoded::new(Kind::Text, small, 128);
        assert_eq!(encoded.for_session(Some(&PARAMS), &mut codec)[0], 0x81);
    }
}
