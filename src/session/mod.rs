//! One connection as a state machine over its [`Transport`]: the phase it is
//! in, the unfinished input it keeps between reads, its frame decoder, its
//! outbound queue and its deadlines.
//!
//! Phases: `Http` (reading request heads; keep-alive REST) → `Chat` or `Echo`
//! (an upgraded WebSocket) → `Closing` (flushing, waiting for the peer's
//! Close or FIN, bounded by a deadline) → `Dead` (reaped by the loop).
//!
//! The session makes every phase change itself and reports what happened as
//! a value ([`Next`], [`Unit`], [`Eof`], [`Wrote`], [`Fired`], [`Left`]); the
//! loop applies the results to what it owns (the router, the poll
//! registration, the wheel, metrics, hooks). `WouldBlock` becomes a value
//! here and never travels further up. Generic over the socket under the
//! transport, so `tests.rs` drives whole sessions over an in-memory stream.
//! Touches nothing outside its session.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::rc::Rc;

use log::debug;
use mio::net::TcpStream;
use mio::Interest;

use crate::audience::SessionKey;
use crate::config::WebSocketConfig;
use crate::deflate::{Codec, History, InflateError, Params};
use crate::frame::{DecodeError, Decoder, Inbound, Step, Wire};
use crate::http::{self, HttpError};
use crate::outbound::{Flushed, Outbound, Overflow};
use crate::rest::Endpoint;
use crate::transport::{Socket, Transport};
use crate::wheel::TimerId;

#[cfg(test)]
mod tests;

/// The smallest read into a session's unfinished input.
const MIN_READ: usize = 4096;

/// The limits and timeouts every session applies, in bytes and loop-clock
/// milliseconds: read from the config once, not converted per event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub handshake_ms: u64,
    pub ping_period_ms: u64,
    pub pong_wait_ms: u64,
    pub write_wait_ms: u64,
    pub max_header_bytes: usize,
    pub max_message_size: usize,
    pub message_buffer_size: usize,
    pub max_buffered_bytes: usize,
}

impl Rules {
    pub(crate) fn from_config(ws: &WebSocketConfig) -> Rules {
        Rules {
            handshake_ms: millis(ws.handshake_timeout),
            ping_period_ms: millis(ws.ping_period),
            pong_wait_ms: millis(ws.pong_wait),
            write_wait_ms: millis(ws.write_wait),
            max_header_bytes: ws.max_header_bytes,
            max_message_size: ws.max_message_size,
            message_buffer_size: ws.message_buffer_size,
            max_buffered_bytes: ws.max_buffered_bytes,
        }
    }
}

/// A config duration on the loop clock (saturating: no config is that long).
pub(crate) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Where a connection is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Reading HTTP request heads (REST with keep-alive, or an upgrade).
    Http,
    /// An upgraded `/api/ws/connect` session; `None` is anonymous.
    Chat {
        /// User id, shared with the router's index.
        user: Option<Rc<str>>,
    },
    /// An upgraded `/api/ws/echo` session.
    Echo,
    /// On its way out; see [`Closing`].
    Closing(Closing),
    /// Removed at the end of this loop pass; nothing more is read or written.
    Dead,
}

/// How a closing session ends: its queue is flushed; then, unless a Close
/// frame from the peer is still awaited, our side is half-closed and the
/// socket dropped at the peer's FIN or at the deadline, whichever is first.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Closing {
    /// We sent a Close first: read frames until the peer's Close arrives.
    await_close_frame: bool,
    /// The peer's FIN has arrived.
    eof: bool,
    /// Our FIN has been sent.
    fin_sent: bool,
    /// Loop-clock ms after which the socket is dropped.
    deadline_ms: u64,
}

/// What one read from the socket gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// `n` bytes arrived.
    Data(usize),
    /// Nothing more for now.
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

/// One read, and where its bytes went.
#[derive(Debug)]
pub(crate) struct Received {
    pub outcome: io::Result<ReadOutcome>,
    /// The read filled all it asked for: the socket may hold more.
    pub full: bool,
    /// The bytes are in the caller's shared buffer (the session kept no
    /// unfinished input), not appended to the session's own.
    pub into_shared: bool,
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

/// What the peer's FIN means in the current phase.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Eof {
    /// Closing already: write what is left, then drop.
    Flush,
    /// An HTTP response is still going out: closing, until this deadline.
    Closing(u64),
    /// Nothing left to say: drop the connection now.
    Drop,
}

/// Who left the indexes when an open session started closing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Left {
    /// A chat session, with its user id.
    Chat(Option<Rc<str>>),
    /// An echo session.
    Echo,
}

/// What one write pass did.
#[derive(Debug)]
pub(crate) struct Wrote {
    /// Bytes of the queue written.
    pub bytes: usize,
    /// The poll interest changed to this: reregister the socket.
    pub interest: Option<Interest>,
    /// Reading was paused and the client has taken its responses: read again.
    pub resume: bool,
    /// What comes next.
    pub then: AfterWrite,
}

/// Where a write pass left the session.
#[derive(Debug)]
pub(crate) enum AfterWrite {
    /// Drained; the session goes on.
    Idle,
    /// Output is still pending: if none of it leaves by this loop-clock ms,
    /// the client is stalled.
    Waiting { stall_deadline: u64 },
    /// A closing session is done: drop it.
    Finished,
    /// The socket failed.
    Failed(io::Error),
}

/// What a session's timer found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fired {
    /// Nothing due yet: arm again for this loop-clock ms.
    Arm(u64),
    /// A Ping was queued (write it when its turn comes); arm for this ms.
    Ping(u64),
    /// A deadline passed: drop the connection.
    Expired(Expiry),
}

/// Which deadline passed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No complete request within `handshake_timeout`; `partial`: some of
    /// one had arrived.
    Handshake { partial: bool },
    /// Nothing heard for `pong_wait`.
    PongWait,
    /// Output made no progress for `write_wait`.
    WriteStalled,
    /// The closing handshake ran out of time.
    Closing,
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Session<S = TcpStream> {
    transport: Transport<S>,
    /// This session's key (slot and generation).
    pub key: SessionKey,
    /// Peer address, for logs.
    pub peer: SocketAddr,
    phase: Phase,
    /// Unfinished input kept between reads; empty (unallocated) when idle.
    pending_input: Vec<u8>,
    /// How far `pending_input` was already searched for the end of a head.
    head_scanned: usize,
    /// Bytes needed before the pending frame or request is complete, if known.
    input_needed: usize,
    decoder: Decoder,
    /// permessage-deflate parameters, when negotiated. Inline: a broadcast
    /// reads them for every recipient.
    deflate: Option<Params>,
    /// What a client that takes its context over sent last (unallocated
    /// until it sends a compressed message).
    history: History,
    out: Outbound,
    /// Loop-clock ms of the last complete frame (WebSocket) or of the start
    /// of the current request (HTTP).
    last_seen_ms: u64,
    /// Loop-clock ms when the next Ping is due.
    next_ping_ms: u64,
    /// Loop-clock ms since when a pending write has made no progress.
    stalled_since_ms: Option<u64>,
    /// WRITABLE interest is registered (only while output is pending).
    writable_interest: bool,
    /// Reading is paused: the session owes more than `max_buffered_bytes`
    /// of responses to a client that is not reading them.
    paused: bool,
    /// Counted against `max_http_connections` (until upgraded or reaped).
    counted_http: bool,
    /// The loop's bookkeeping: the session's one wheel timer and its deadline.
    pub timer: Option<(TimerId, u64)>,
    /// The loop's bookkeeping: already in this pass's list of answers to write.
    pub dirty: bool,
}

impl<S: Socket> Session<S> {
    /// A freshly accepted connection, counted as an HTTP connection.
    pub(crate) fn new(
        transport: Transport<S>,
        key: SessionKey,
        peer: SocketAddr,
        now_ms: u64,
    ) -> Session<S> {
        Session {
            transport,
            key,
            peer,
            phase: Phase::Http,
            pending_input: Vec::new(),
            head_scanned: 0,
            input_needed: 0,
            decoder: Decoder::default(),
            deflate: None,
            history: History::default(),
            out: Outbound::default(),
            last_seen_ms: now_ms,
            next_ping_ms: u64::MAX,
            stalled_since_ms: None,
            writable_interest: false,
            paused: false,
            counted_http: true,
            timer: None,
            dirty: false,
        }
    }

    // ---- what the loop reads ----

    pub(crate) fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The user id of a chat session.
    pub(crate) fn user(&self) -> Option<&Rc<str>> {
        match &self.phase {
            Phase::Chat { user } => user.as_ref(),
            _ => None,
        }
    }

    /// Upgraded and not closing.
    pub(crate) fn is_open_websocket(&self) -> bool {
        matches!(self.phase, Phase::Chat { .. } | Phase::Echo)
    }

    pub(crate) fn is_dead(&self) -> bool {
        matches!(self.phase, Phase::Dead)
    }

    /// The permessage-deflate parameters, when negotiated.
    pub(crate) fn deflate_params(&self) -> Option<&Params> {
        self.deflate.as_ref()
    }

    /// The outbound queue, for figures.
    pub(crate) fn out(&self) -> &Outbound {
        &self.out
    }

    /// Still counted against `max_http_connections`.
    pub(crate) fn counted_http(&self) -> bool {
        self.counted_http
    }

    /// Not read until its client takes the responses it owes.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Some unfinished input is kept.
    pub(crate) fn has_input(&self) -> bool {
        !self.pending_input.is_empty()
    }

    /// The socket, for the poll registration.
    pub(crate) fn socket_mut(&mut self) -> &mut S {
        self.transport.socket_mut()
    }

    /// Output is waiting below the plaintext (TLS handshake records).
    pub(crate) fn transport_has_pending(&self) -> bool {
        self.transport.has_pending()
    }

    /// Loop-clock ms at which an open session's timer must next fire:
    /// the next Ping, `pong_wait` silence or a `write_wait` stall.
    pub(crate) fn open_deadline(&self, rules: &Rules) -> u64 {
        let mut next = self
            .next_ping_ms
            .min(self.last_seen_ms.saturating_add(rules.pong_wait_ms));
        if let Some(stalled) = self.stalled_since_ms {
            next = next.min(stalled.saturating_add(rules.write_wait_ms));
        }
        next
    }

    // ---- input ----

    /// Reads once. With no unfinished input kept, the bytes land in
    /// `shared` (the loop's buffer: an idle session holds none); otherwise
    /// they are appended to the session's own input, which grows with what
    /// has arrived (at most doubling, at most `shared.len()` per read, never
    /// past what the pending unit still needs), not with what a header
    /// declared: a peer that announces 512 KiB and sends 2 bytes costs a
    /// few KiB.
    pub(crate) fn read(&mut self, shared: &mut [u8]) -> Received {
        let drain = self.transport.reads_to_block();
        if self.pending_input.is_empty() {
            let outcome = self.read_into(shared);
            let full = matches!(outcome, Ok(ReadOutcome::Data(n)) if n == shared.len());
            return Received {
                outcome,
                full: full || drain,
                into_shared: true,
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
        }
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
            Phase::Closing(_) | Phase::Dead => Next::Discard,
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
        &mut self,
        codec: &mut Codec,
        text: bool,
        compressed: &[u8],
        max: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let Some(params) = self.deflate else {
            return Err(DecodeError::Protocol(
                "compressed message without the extension",
            ));
        };
        let inflated = match codec.inflate(&params, &mut self.history, compressed, max) {
            Ok(bytes) => bytes,
            Err(InflateError::TooBig) => return Err(DecodeError::TooBig),
            Err(InflateError::Corrupt(_)) => return Err(DecodeError::BadCompression),
        };
        if text && std::str::from_utf8(&inflated).is_err() {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(inflated)
    }

    // ---- phase changes ----

    /// Queues an HTTP response. The next request's deadline runs from the
    /// end of this one. Without keep-alive the session starts closing:
    /// returns the closing deadline.
    pub(crate) fn respond(
        &mut self,
        bytes: Vec<u8>,
        keep: bool,
        now: u64,
        rules: &Rules,
    ) -> Option<u64> {
        // Bounded by the reading side: see the pause in `next_unit`.
        self.out.push_unbounded(Rc::from(bytes));
        self.last_seen_ms = now;
        if keep {
            return None;
        }
        Some(self.begin_closing(false, now.saturating_add(rules.write_wait_ms)))
    }

    /// The upgrade succeeded: queues the 101 and opens the WebSocket, with
    /// its first Ping due within `ping_period` (minus a per-session jitter).
    pub(crate) fn upgrade(
        &mut self,
        response: Vec<u8>,
        endpoint: Endpoint,
        user: Option<Rc<str>>,
        compression: Option<Params>,
        now: u64,
        rules: &Rules,
    ) {
        self.out.push_response(Rc::from(response));
        if let Some(params) = compression {
            self.deflate = Some(params);
            self.decoder.allow_compression();
        }
        self.counted_http = false;
        self.phase = match endpoint {
            Endpoint::Chat => Phase::Chat { user },
            Endpoint::Echo => Phase::Echo,
        };
        self.last_seen_ms = now;
        let period = rules.ping_period_ms;
        self.next_ping_ms = now + period - ping_jitter(self.key, period);
    }

    /// An open session starts closing (with a default deadline, set by the
    /// close that follows); returns who left, so the loop updates its
    /// indexes once. `None` if it was not open.
    pub(crate) fn leave(&mut self) -> Option<Left> {
        let left = match &mut self.phase {
            Phase::Chat { user } => Left::Chat(user.take()),
            Phase::Echo => Left::Echo,
            _ => return None,
        };
        self.phase = Phase::Closing(Closing::default());
        Some(left)
    }

    /// Enters the closing phase until `deadline_ms`; returns the deadline.
    fn begin_closing(&mut self, await_close_frame: bool, deadline_ms: u64) -> u64 {
        self.phase = Phase::Closing(Closing {
            await_close_frame,
            deadline_ms,
            ..Closing::default()
        });
        deadline_ms
    }

    /// A protocol violation: Close with the RFC's code behind what is
    /// queued (the 101 itself may still be there), then half-close without
    /// reading the peer's frames (RFC 6455 7.1.7). Returns the deadline.
    pub(crate) fn fail(&mut self, error: &DecodeError, now: u64, rules: &Rules) -> u64 {
        self.decoder = Decoder::default();
        self.out.push_unbounded(crate::frame::encode_close(
            error.close_code(),
            &error.to_string(),
        ));
        self.begin_closing(false, now.saturating_add(rules.write_wait_ms))
    }

    /// The server ends the session: what is queued goes first, then Close;
    /// the peer's Close is awaited until `deadline_ms`.
    pub(crate) fn close(&mut self, code: u16, text: &str, deadline_ms: u64) -> u64 {
        self.out
            .push_unbounded(crate::frame::encode_close(code, text));
        self.begin_closing(true, deadline_ms)
    }

    /// The peer sent Close: what was queued before it still goes out, then
    /// our Close (echoing its code); nothing follows. Returns the deadline.
    pub(crate) fn answer_close(&mut self, code: Option<u16>, now: u64, rules: &Rules) -> u64 {
        let reply = match code {
            Some(code) => crate::frame::encode_close(code, ""),
            None => crate::frame::encode(crate::frame::Kind::Close, b""),
        };
        self.out.push_unbounded(reply);
        self.begin_closing(false, now.saturating_add(rules.write_wait_ms))
    }

    /// The peer's FIN arrived.
    pub(crate) fn on_eof(&mut self, now: u64, rules: &Rules) -> Eof {
        match &mut self.phase {
            Phase::Closing(closing) => {
                closing.eof = true;
                closing.await_close_frame = false;
                Eof::Flush
            }
            Phase::Http if !self.out.is_empty() => {
                // A request followed by FIN still gets its response.
                let deadline = now.saturating_add(rules.write_wait_ms);
                self.phase = Phase::Closing(Closing {
                    eof: true,
                    deadline_ms: deadline,
                    ..Closing::default()
                });
                Eof::Closing(deadline)
            }
            _ => Eof::Drop,
        }
    }

    /// Marks the session for reaping; `true` the first time.
    pub(crate) fn kill(&mut self) -> bool {
        !matches!(std::mem::replace(&mut self.phase, Phase::Dead), Phase::Dead)
    }

    // ---- output ----

    /// Queues a data frame within the bounds. A full queue first lets the
    /// socket take what it can: a burst that arrives within one loop pass
    /// is not a slow consumer, a socket that takes nothing more is.
    /// What that early write sent is added to `bytes_out`.
    pub(crate) fn queue(
        &mut self,
        frame: Wire,
        rules: &Rules,
        bytes_out: &mut u64,
    ) -> Result<(), Overflow> {
        let (max_messages, max_bytes) = (rules.message_buffer_size, rules.max_buffered_bytes);
        if self
            .out
            .check_room(frame.len(), max_messages, max_bytes)
            .is_err()
        {
            // A write error surfaces again at the pass's write, which drops the session.
            if let Ok((_, written)) = self.flush() {
                *bytes_out += written as u64;
            }
        }
        self.out.push_data(frame, max_messages, max_bytes)
    }

    /// Queues a Pong (ahead of data; only the most recent ones are kept).
    pub(crate) fn queue_pong(&mut self, frame: Wire) {
        self.out.push_control(frame);
    }

    /// Writes what the socket takes, then moves the phase on: a drained
    /// closing session half-closes, or is finished once the peer's FIN came.
    pub(crate) fn write(&mut self, now: u64, rules: &Rules) -> Wrote {
        let (flushed, bytes) = match self.flush() {
            Ok(result) => result,
            Err(e) => {
                return Wrote {
                    bytes: 0,
                    interest: None,
                    resume: false,
                    then: AfterWrite::Failed(e),
                }
            }
        };
        let mut wrote = Wrote {
            bytes,
            interest: None,
            resume: false,
            then: AfterWrite::Idle,
        };
        match flushed {
            Flushed::Drained => {
                self.stalled_since_ms = None;
                if matches!(self.phase, Phase::Http) {
                    // The next request's deadline runs from the end of this response.
                    self.last_seen_ms = now;
                }
                wrote.resume = std::mem::take(&mut self.paused);
                if std::mem::take(&mut self.writable_interest) {
                    wrote.interest = Some(Interest::READABLE);
                }
                wrote.then = self.after_drain();
            }
            Flushed::Pending => {
                if self.paused && self.out.owed_bytes() <= rules.max_buffered_bytes / 2 {
                    self.paused = false;
                    wrote.resume = true;
                }
                if bytes > 0 || self.stalled_since_ms.is_none() {
                    self.stalled_since_ms = Some(now);
                }
                if !std::mem::replace(&mut self.writable_interest, true) {
                    wrote.interest = Some(Interest::READABLE | Interest::WRITABLE);
                }
                wrote.then = AfterWrite::Waiting {
                    stall_deadline: now.saturating_add(rules.write_wait_ms),
                };
            }
        }
        wrote
    }

    /// Writes the queue, then what is waiting below it (TLS records).
    fn flush(&mut self) -> io::Result<(Flushed, usize)> {
        let (flushed, written) = self.out.flush_to(&mut self.transport)?;
        if flushed == Flushed::Drained && self.transport.push_pending()? {
            return Ok((Flushed::Pending, written));
        }
        Ok((flushed, written))
    }

    /// A closing session whose queue is empty moves on: half-close, or done.
    fn after_drain(&mut self) -> AfterWrite {
        let Phase::Closing(closing) = &mut self.phase else {
            return AfterWrite::Idle;
        };
        if closing.await_close_frame {
            return AfterWrite::Idle;
        }
        if closing.eof {
            return AfterWrite::Finished;
        }
        if !closing.fin_sent {
            closing.fin_sent = true;
            // Half-close and wait for the peer's FIN: closing with unread
            // input would send RST and could destroy the response in flight.
            if self.transport.shutdown_write().is_err() {
                return AfterWrite::Finished;
            }
        }
        AfterWrite::Idle
    }

    // ---- time ----

    /// The session's timer fired at `now`: the phase decides which
    /// deadline that was. `ping` is the shared Ping frame.
    pub(crate) fn on_timer(&mut self, now: u64, rules: &Rules, ping: &Wire) -> Fired {
        let write_wait = rules.write_wait_ms;
        match &self.phase {
            Phase::Http if !self.out.is_empty() => {
                // Responses still going out: the request deadline waits for
                // them to finish, and a client that takes none of them for
                // `write_wait` is closed, as after the upgrade.
                match self.stalled_since_ms {
                    Some(since) if now >= since.saturating_add(write_wait) => {
                        Fired::Expired(Expiry::WriteStalled)
                    }
                    Some(since) => Fired::Arm(since.saturating_add(write_wait)),
                    None => Fired::Arm(now.saturating_add(write_wait)),
                }
            }
            Phase::Http => {
                let deadline = self.last_seen_ms.saturating_add(rules.handshake_ms);
                if now < deadline {
                    return Fired::Arm(deadline);
                }
                Fired::Expired(Expiry::Handshake {
                    partial: !self.pending_input.is_empty(),
                })
            }
            Phase::Chat { .. } | Phase::Echo => {
                if now >= self.last_seen_ms.saturating_add(rules.pong_wait_ms) {
                    return Fired::Expired(Expiry::PongWait);
                }
                if self
                    .stalled_since_ms
                    .is_some_and(|s| now >= s.saturating_add(write_wait))
                {
                    return Fired::Expired(Expiry::WriteStalled);
                }
                self.out.release_memory(0);
                if now >= self.next_ping_ms {
                    self.out.push_control(ping.clone());
                    self.next_ping_ms = now.saturating_add(rules.ping_period_ms);
                    return Fired::Ping(self.open_deadline(rules));
                }
                Fired::Arm(self.open_deadline(rules))
            }
            Phase::Closing(closing) if now >= closing.deadline_ms => {
                Fired::Expired(Expiry::Closing)
            }
            Phase::Closing(closing) => Fired::Arm(closing.deadline_ms),
            // Reaped this pass: every deadline it had is over.
            Phase::Dead => Fired::Expired(Expiry::Closing),
        }
    }
}

/// Up to a tenth of the ping period, fixed per session: sessions that
/// connected in the same instant (a reconnect wave after a restart) do not
/// all get their Pings in the same loop pass, period after period.
fn ping_jitter(key: SessionKey, ping_period: u64) -> u64 {
    let spread = ping_period / 10;
    if spread == 0 {
        return 0;
    }
    // Fibonacci hashing (high bits) scatters consecutive generations.
    (u64::from(key.generation).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % spread
}
