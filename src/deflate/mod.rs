//! permessage-deflate (RFC 7692): negotiation, the loop's one compressor
//! and one inflater, and what a session keeps between its messages.
//!
//! Outbound, the server never takes context over (`server_no_context_takeover`),
//! so a message is compressed from a fresh context: [`Encoded`] compresses
//! it at most once per window size and frames it once, and every session
//! with that window gets the same shared bytes.
//!
//! Inbound, one [`Codec`] inflates for every session, bounded by
//! `max_message_size` while it inflates. A client that takes its context
//! over (the browser default) refers back to what it sent before; rather
//! than a zlib state per session (~40 KiB), a session keeps only the tail of
//! its own inflated messages (`Inflate::history`, at most the client's
//! window and usually far less), which primes the shared inflater as a
//! preset dictionary. A session that does not take context over, or has sent
//! nothing compressed, keeps nothing.
//!
//! Touches no sockets and no sessions: bytes in, bytes out.

use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::{self, Kind, Wire};

mod negotiate;

pub use negotiate::{negotiate, Agreement, Params, MAX_WINDOW_BITS};

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

/// The tail of what a client that takes its context over has sent, which
/// its next message may refer back into: at most its window. Nothing is
/// allocated until such a client sends a compressed message, so an idle
/// session holds no buffer here.
#[derive(Debug, Default)]
// Boxed: every session carries one, and a pointer is 8 bytes where a Vec is
// 24; the extra hop is taken only on an inbound compressed message.
#[allow(clippy::box_collection)]
pub struct History(Option<Box<Vec<u8>>>);

impl History {
    /// Bytes kept.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |h| h.len())
    }

    /// Nothing kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Keeps the end of `message` for the next one, if the client takes its
    /// context over. Never more than the window (zlib turns a window of 8
    /// bits into 9, so 9 bits are kept at least).
    fn remember(&mut self, params: &Params, message: &[u8]) {
        if params.client_no_context_takeover || message.is_empty() {
            return;
        }
        let window = 1 << params.client_window_bits.max(9);
        let history = self.0.get_or_insert_with(Box::default);
        if message.len() >= window {
            history.clear();
            history.extend_from_slice(&message[message.len() - window..]);
        } else {
            let excess = (history.len() + message.len()).saturating_sub(window);
            history.drain(..excess);
            history.extend_from_slice(message);
        }
        history.shrink_to(window);
    }
}

/// The loop's compressors (one per window size in use, created on first
/// use) and its one inflater, with a scratch buffer reused across messages.
#[derive(Default)]
pub struct Codec {
    compressors: [Option<Compress>; 7],
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
    /// Compresses `payload` from a fresh context with a window of
    /// `window_bits` (9..=15), without the trailing empty block. `None` if
    /// compressing does not make it smaller: then it goes out plain.
    pub fn compress(&mut self, payload: &[u8], window_bits: u8) -> Option<&[u8]> {
        let bits = window_bits.clamp(9, MAX_WINDOW_BITS);
        let slot = &mut self.compressors[usize::from(bits - 9)];
        let compressor = slot.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::default(), false, bits)
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

    /// Inflates one message from a session with these parameters. `max`
    /// bounds the inflated size while inflating: the output never grows past
    /// `max + 1` bytes. Updates the session's history when it takes its
    /// context over.
    pub fn inflate(
        &mut self,
        params: &Params,
        history: &mut History,
        compressed: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, InflateError> {
        let inflater = self
            .inflater
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        inflater.reset(false);
        if !params.client_no_context_takeover && !history.is_empty() {
            inflater
                .set_dictionary(history.bytes())
                .map_err(|e| InflateError::Corrupt(e.to_string()))?;
        }
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
        history.remember(params, &out);
        Ok(out)
    }
}

/// One outbound message, framed at most once per form: plain for sessions
/// without compression (or messages under `compression_min_bytes`),
/// compressed once per server window size, and as a Server-Sent Event.
/// Every recipient gets a clone of the same [`Wire`].
#[derive(Debug)]
pub struct Encoded<'a> {
    kind: Kind,
    payload: &'a [u8],
    compress: bool,
    plain: Option<Wire>,
    /// Per window size 9..=15: `Some(frame)` once compressed (the plain
    /// frame when compressing did not pay off).
    deflated: [Option<Wire>; 7],
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
            deflated: Default::default(),
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
        let Some(params) = params.filter(|_| self.compress) else {
            return self.plain();
        };
        let slot = usize::from(params.server_window_bits.clamp(9, MAX_WINDOW_BITS) - 9);
        if let Some(wire) = &self.deflated[slot] {
            return wire.clone();
        }
        let wire = match codec.compress(self.payload, params.server_window_bits) {
            Some(bytes) => frame::encode_compressed(self.kind, bytes),
            None => self.plain(),
        };
        self.deflated[slot] = Some(wire.clone());
        wire
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(server: u8, client: u8, no_context: bool) -> Params {
        Params {
            server_window_bits: server,
            client_window_bits: client,
            client_no_context_takeover: no_context,
        }
    }

    /// A client compressor that keeps its context, as browsers do.
    fn client_stream(messages: &[&[u8]], bits: u8) -> Vec<Vec<u8>> {
        let mut c = Compress::new_with_window_bits(Compression::default(), false, bits);
        messages
            .iter()
            .map(|m| {
                let mut out = Vec::with_capacity(m.len() + 64);
                c.compress_vec(m, &mut out, FlushCompress::Sync).unwrap();
                assert!(out.ends_with(&TAIL));
                out.truncate(out.len() - 4);
                out
            })
            .collect()
    }

    #[test]
    fn compressed_messages_round_trip_through_a_fresh_context() {
        let mut codec = Codec::default();
        let text =
            br#"{"type":"chat","room":"lobby","content":"hello hello hello hello hello hello"}"#;
        let compressed = codec.compress(text, 15).unwrap().to_vec();
        assert!(compressed.len() < text.len());
        let (p, mut history) = (params(15, 15, true), History::default());
        assert_eq!(
            codec.inflate(&p, &mut history, &compressed, 1000).unwrap(),
            text
        );
        assert!(history.0.is_none(), "no context kept");
        assert_eq!(codec.compress(b"abc", 15), None, "incompressible");
    }

    #[test]
    fn context_takeover_is_followed_through_the_session_history() {
        let messages: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                format!(r#"{{"type":"chat","to":"bob","content":"message number {i} of many"}}"#)
                    .into_bytes()
            })
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
        let stream = client_stream(&refs, 10);
        let mut codec = Codec::default();
        let (p, mut history) = (params(15, 10, false), History::default());
        for (message, compressed) in messages.iter().zip(&stream) {
            // Another session's message in between must not disturb it.
            let mut other = History::default();
            let noise = codec.compress(&[b'z'; 300], 15).unwrap().to_vec();
            codec
                .inflate(&params(15, 15, false), &mut other, &noise, 1000)
                .unwrap();
            assert_eq!(
                &codec.inflate(&p, &mut history, compressed, 1000).unwrap(),
                message
            );
            assert!(history.len() <= 1024);
        }
        assert_eq!(history.len(), 1024, "the window, not more");
        assert!(stream[19].len() < messages[19].len() / 2, "context helped");
    }

    #[test]
    fn the_size_limit_holds_while_inflating() {
        let bomb_source = vec![b'a'; 4 << 20];
        let mut codec = Codec::default();
        let bomb = codec.compress(&bomb_source, 15).unwrap().to_vec();
        assert!(bomb.len() < 30_000, "{}", bomb.len());
        let (p, mut history) = (params(15, 15, false), History::default());
        assert_eq!(
            codec.inflate(&p, &mut history, &bomb, 1 << 20),
            Err(InflateError::TooBig)
        );
        assert!(history.0.is_none());
        assert_eq!(
            codec
                .inflate(&p, &mut history, &bomb, 4 << 20)
                .unwrap()
                .len(),
            4 << 20
        );
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let mut codec = Codec::default();
        let (p, mut history) = (params(15, 15, false), History::default());
        for junk in [&[0xff_u8; 40][..], &[0x07], &[]] {
            let got = codec.inflate(&p, &mut history, junk, 1000);
            assert!(
                matches!(got, Err(InflateError::Corrupt(_)) | Ok(_)),
                "{got:?}"
            );
        }
        assert!(matches!(
            codec.inflate(&p, &mut history, &[0xff; 40], 1000),
            Err(InflateError::Corrupt(_))
        ));
    }

    #[test]
    fn one_compression_per_window_size_and_plain_below_the_minimum() {
        let mut codec = Codec::default();
        let payload = vec![b'x'; 500];
        let mut encoded = Encoded::new(Kind::Text, &payload, 128);
        let a = encoded.for_session(Some(&params(15, 15, false)), &mut codec);
        let b = encoded.for_session(Some(&params(15, 9, true)), &mut codec);
        let c = encoded.for_session(Some(&params(10, 15, false)), &mut codec);
        let plain = encoded.for_session(None, &mut codec);
        assert!(std::rc::Rc::ptr_eq(&a, &b), "same window: same bytes");
        assert!(!std::rc::Rc::ptr_eq(&a, &c));
        assert_eq!(a[0], 0xC1, "FIN + RSV1 + text");
        assert_eq!(plain[0], 0x81);
        let small = b"short";
        let mut encoded = Encoded::new(Kind::Text, small, 128);
        assert_eq!(
            encoded.for_session(Some(&params(15, 15, false)), &mut codec)[0],
            0x81
        );
    }
}
