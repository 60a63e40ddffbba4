//! A session's input: reads from its transport (into the loop's shared
//! buffer, or appended to the session's own unfinished input) and decodes
//! the next complete unit as its phase reads it: an HTTP request, a
//! WebSocket frame, or what is wrong with them.

use std::io::{self, Read};

use log::debug;

use super::{Closing, Phase, Rules, Session, MIN_READ};
use crate::client_ip::proxy::{self, Parsed};
use crate::deflate::{Codec, InflateError};
use crate::frame::{DecodeError, Inbound, Step};
use crate::http::{self, HttpError};
use crate::transport::Socket;

/// What one read from the socket gave.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a report the loop must apply"]
pub(crate) enum ReadOutcome {
    /// `n` bytes arrived.
    Data(usize),
    /// Nothing more for now.
    WouldBlock,
    /// The peer closed its side.
    Eof,
    /// A whole PROXY header was read: `peer` is now the source it names
    /// (or stays the TCP peer for `LOCAL`/`UNKNOWN`), and HTTP follows.
    Proxied,
    /// Not a (valid) PROXY header: close without a response.
    NotProxied(&'static str),
}

/// One read, and where its bytes went.
#[derive(Debug)]
#[must_use = "a report the loop must apply"]
pub(crate) struct Received {
    pub outcome: io::Result<ReadOutcome>,
    /// The read filled all it asked for: the socket may hold more.
    pub full: bool,
    /// The bytes are in the caller's shared buffer (the session kept no
    /// unfinished input), not appended to the session's own.
    pub into_shared: bool,
    /// The read left output below the plaintext (TLS handshake records or
    /// an alert): the session must be written this pass.
    pub must_write: bool,
}

/// What the next bytes of input are, in the session's current phase.
#[derive(Debug)]
// Returned and matched at once, never stored: boxing the request would
// allocate per request for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Next<'a> {
    /// The first `usize` bytes were one unit.
    Unit(usize, Unit<'a>),
    /// The rest is an unfinished unit: keep it for the next read.
    Incomplete,
    /// Responses are owed beyond `max_buffered_bytes`: reading pauses
    /// until the client takes them; keep the rest.
    Paused,
    /// Nothing more is read in this phase: drop the rest.
    Discard,
}

/// One complete unit of input, for the loop to act on.
#[derive(Debug)]
// As `Next`: matched at once, never stored; no box per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Unit<'a> {
    /// An HTTP request with its body.
    Request {
        request: http::Request,
        body: &'a [u8],
    },
    /// An HTTP request that cannot be served: answer and close.
    BadRequest(HttpError),
    /// A WebSocket frame that completed something.
    Frame(Inbound<'a>),
    /// A WebSocket protocol violation: fail the connection.
    BadFrame(DecodeError),
    /// A frame with nothing to act on (a fragment, a frame while closing).
    Nothing,
    /// The peer's Close answered ours: the closing handshake can end.
    CloseAnswered,
    /// Garbage while awaiting the peer's Close: drop the connection.
    Broken,
}

impl<S: Socket> Session<S> {
    /// Reads once. With no unfinished input kept, the bytes land in
    /// `shared` (the loop's buffer: an idle session holds none); otherwise
    /// they are appended to the session's own input, which grows with what
    /// has arrived (at most doubling, at most `shared.len()` per read, never
    /// past what the pending unit still needs), not with what a header
    /// declared: a peer that announces 512 KiB and sends 2 bytes costs a
    /// few KiB.
    pub(crate) fn read(&mut self, shared: &mut [u8]) -> Received {
        if matches!(self.phase, Phase::Proxy) {
            return Received {
                outcome: self.read_proxy_header(shared),
                full: false,
                into_shared: true,
                must_write: false,
            };
        }
        let drain = self.transport.reads_to_block();
        if self.pending_input.is_empty() {
            let outcome = self.read_into(shared);
            let full = matches!(outcome, Ok(ReadOutcome::Data(n)) if n == shared.len());
            return Received {
                outcome,
                full: full || drain,
                into_shared: true,
                must_write: self.transport.has_pending(),
            };
        }
        let start = self.pending_input.len();
        let mut want = start.max(MIN_READ).min(shared.len());
        if self.input_needed > start {
            want = want.min(self.input_needed - start);
        }
        // Capacity already paid for is used as it is.
        want = want.max(self.pending_input.capacity() - start);
        self.pending_input.resize(start + want, 0);
        let mut own = std::mem::take(&mut self.pending_input);
        let outcome = self.read_into(&mut own[start..]);
        let filled = match outcome {
            Ok(ReadOutcome::Data(n)) => start + n,
            _ => start,
        };
        own.truncate(filled);
        self.pending_input = own;
        let full = matches!(outcome, Ok(ReadOutcome::Data(n)) if n == want);
        Received {
            outcome,
            full: full || drain,
            into_shared: false,
            must_write: self.transport.has_pending(),
        }
    }

    /// Peeks at what has arrived (below TLS) and, once a whole PROXY header
    /// is there, consumes exactly its bytes. An unfinished header is left in
    /// the socket: more bytes raise a new readiness edge, and the peek sees
    /// them all again (at most [`proxy::MAX_HEADER`] bytes, in the shared
    /// buffer: the session keeps nothing).
    fn read_proxy_header(&mut self, shared: &mut [u8]) -> io::Result<ReadOutcome> {
        let window = shared.len().min(proxy::MAX_HEADER);
        let socket = self.transport.socket_mut();
        let seen = loop {
            match socket.peek(&mut shared[..window]) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome::WouldBlock)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        let (len, source) = match proxy::parse(&shared[..seen]) {
            Parsed::Incomplete => return Ok(ReadOutcome::WouldBlock),
            Parsed::Invalid(why) => return Ok(ReadOutcome::NotProxied(why)),
            Parsed::Header { len, source } => (len, source),
        };
        // Peeked, so present: these reads take exactly the header.
        let mut taken = 0;
        while taken < len {
            match socket.read(&mut shared[taken..len]) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => taken += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(source) = source {
            self.peer_ip = source.ip();
            self.peer_port = source.port();
            self.client = source.ip();
        }
        self.phase = Phase::Http;
        Ok(ReadOutcome::Proxied)
    }

    fn read_into(&mut self, buf: &mut [u8]) -> io::Result<ReadOutcome> {
        loop {
            match self.transport.read(buf) {
                Ok(0) => return Ok(ReadOutcome::Eof),
                Ok(n) => return Ok(ReadOutcome::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome::WouldBlock)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the session's own input out to be processed; give the rest
    /// back with [`Session::return_input`].
    pub(crate) fn take_input(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending_input)
    }

    /// Gives back what [`Session::take_input`] took, minus the `consumed`
    /// bytes at its start (freed when nothing is left).
    pub(crate) fn return_input(&mut self, mut input: Vec<u8>, consumed: usize) {
        input.drain(..consumed.min(input.len()));
        if input.is_empty() {
            self.keep_input(&[]);
        } else {
            self.pending_input = input;
        }
    }

    /// Keeps `rest` of the shared buffer as unfinished input (copied once),
    /// or frees the session's buffer.
    pub(crate) fn keep_input(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            self.pending_input = Vec::new();
            self.input_needed = 0;
        } else {
            self.pending_input.clear();
            self.pending_input.extend_from_slice(rest);
        }
    }

    /// Decodes the unit at the start of `buf` as the phase reads it.
    pub(crate) fn next_unit<'a>(&mut self, buf: &'a mut [u8], rules: &Rules, now: u64) -> Next<'a> {
        let len = buf.len();
        match self.phase {
            Phase::Http if self.out.owed_bytes() > rules.max_buffered_bytes => {
                // Responses are bounded like messages: read no further
                // request until the client has taken what it is owed.
                if !self.paused {
                    debug!(
                        "session {}: responses unread, pausing reads",
                        self.key.index
                    );
                    self.paused = true;
                }
                Next::Paused
            }
            Phase::Http => self.next_request(buf, rules),
            Phase::Chat { .. } | Phase::Echo => {
                match self.decoder.decode(buf, rules.max_message_size) {
                    Err(e) => Next::Unit(len, Unit::BadFrame(e)),
                    Ok(Step::Incomplete { needed }) => {
                        self.input_needed = needed.unwrap_or(0);
                        Next::Incomplete
                    }
                    Ok(Step::Frame { consumed, inbound }) => {
                        self.input_needed = 0;
                        // Only whole frames count as life: a peer trickling the
                        // bytes of a frame that never completes meets pong_wait.
                        self.last_seen_ms = now;
                        let unit = inbound.map_or(Unit::Nothing, Unit::Frame);
                        Next::Unit(consumed, unit)
                    }
                }
            }
            Phase::Closing(Closing {
                await_close_frame: true,
                ..
            }) => match self.decoder.decode(buf, rules.max_message_size) {
                Err(_) => Next::Unit(len, Unit::Broken),
                Ok(Step::Incomplete { needed }) => {
                    self.input_needed = needed.unwrap_or(0);
                    Next::Incomplete
                }
                Ok(Step::Frame { consumed, inbound }) => {
                    self.input_needed = 0;
                    let mut unit = Unit::Nothing;
                    if let (Some(Inbound::Close(_)), Phase::Closing(closing)) =
                        (inbound, &mut self.phase)
                    {
                        closing.await_close_frame = false;
                        unit = Unit::CloseAnswered;
                    }
                    Next::Unit(consumed, unit)
                }
            },
            // Read by `read_proxy_header`, never handed out as input.
            Phase::Proxy => Next::Incomplete,
            // An event stream's client has nothing more to say.
            Phase::Sse { .. } | Phase::Closing(_) | Phase::Dead => Next::Discard,
        }
    }

    fn next_request<'a>(&mut self, buf: &'a mut [u8], rules: &Rules) -> Next<'a> {
        let (max_head, max_body) = (rules.max_header_bytes, rules.max_message_size);
        if buf.len() < self.input_needed {
            // A body still arriving: the head was parsed already.
            return Next::Incomplete;
        }
        let Some(head_end) = http::find_head_end(buf, self.head_scanned) else {
            if buf.len() > max_head {
                return Next::Unit(buf.len(), Unit::BadRequest(HttpError::HeadTooLarge));
            }
            self.head_scanned = buf.len();
            return Next::Incomplete;
        };
        let request = match http::parse_complete_head(&buf[..head_end], max_head, max_body) {
            Ok(request) => request,
            Err(e) => return Next::Unit(buf.len(), Unit::BadRequest(e)),
        };
        let total = request.head_len + request.content_length;
        self.head_scanned = 0;
        if buf.len() < total {
            self.input_needed = total;
            return Next::Incomplete;
        }
        self.input_needed = 0;
        let body = &buf[request.head_len..total];
        Next::Unit(total, Unit::Request { request, body })
    }

    /// Inflates a permessage-deflate message within `max` bytes (checked
    /// while inflating); text must be UTF-8 once inflated.
    pub(crate) fn inflate(
        &self,
        codec: &mut Codec,
        text: bool,
        compressed: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        if self.deflate.is_none() {
            return Err(DecodeError::Protocol(
                "compressed message without the extension",
            ));
        }
        let inflated = match codec.inflate(compressed, max) {
            Ok(bytes) => bytes,
            Err(InflateError::TooBig) => return Err(DecodeError::TooBig),
            Err(InflateError::Corrupt(_)) => return Err(DecodeError::BadCompression),
        };
        if text && std::str::from_utf8(&inflated).is_err() {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(inflated)
    }
}
