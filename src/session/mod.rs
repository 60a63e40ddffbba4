//! One connection as a state machine over its [`Transport`]: the phase it is
//! in, the unfinished input it keeps between reads, its frame decoder, its
//! outbound queue and its deadlines.
//!
//! Phases: `Proxy` (only with `app.proxy_protocol`: reading the PROXY
//! header, straight from the socket, below TLS) → `Http` (reading request
//! heads; keep-alive REST) → `Chat` or `Echo` (an upgraded WebSocket) or
//! `Sse` (an event stream: written, never read) → `Closing` (flushing,
//! waiting for the peer's Close or FIN, bounded by a deadline) → `Dead`
//! (reaped by the loop).
//!
//! The session makes every phase change itself and reports what happened as
//! a value ([`Next`], [`Unit`], [`Eof`], [`output::Wrote`], [`Fired`],
//! [`Left`]); the loop applies the results to what it owns (the router, the
//! poll registration, the wheel, metrics, hooks). `WouldBlock` becomes a
//! value here and never travels further up. Generic over the socket under
//! the transport, so `tests.rs` drives whole sessions over an in-memory
//! stream. Touches nothing outside its session.
//!
//! Here: the phases, their changes and the deadlines; `input.rs`: reading
//! and decoding units; `output.rs`: queueing and writing.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use mio::net::TcpStream;

use crate::audience::SessionKey;
use crate::config::WebSocketConfig;
use crate::deflate::Params;
use crate::frame::{DecodeError, Decoder, Wire};
use crate::http_slots::MAX_REQUESTS_PER_CONNECTION;
use crate::outbound::Outbound;
use crate::rate::Bucket;
use crate::rooms::Grants;
use crate::transport::{Socket, Transport};
use crate::upgrade::Endpoint;
use crate::wheel::{millis, TimerId};

mod input;
mod output;
#[cfg(test)]
mod tests;

pub(crate) use input::{Next, ReadOutcome, Unit};
pub(crate) use output::AfterWrite;

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

/// Where a connection is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Waiting for the PROXY header (`app.proxy_protocol`); counts against
    /// `handshake_timeout` like the request that follows.
    Proxy,
    /// Reading HTTP request heads (REST with keep-alive, or an upgrade).
    Http,
    /// An upgraded `/api/ws/connect` session; `None` is anonymous.
    Chat {
        /// User id, shared with the router's index.
        user: Option<Rc<str>>,
        /// Rooms its connect token lets it join (`rooms.join: claims` or
        /// `token`); `None` in `open` mode and without a grant.
        grants: Option<Box<Grants>>,
        /// Asked to resume (`?recover=1` or `?since=`, history on): its
        /// messages carry their position. Kept in the phase, where the
        /// enum has room for it, so a session grows by nothing.
        recovering: bool,
    },
    /// An upgraded `/api/ws/echo` session.
    Echo,
    /// An `/api/ws/sse` event stream; `None` is anonymous. Nothing more is
    /// read; the peer's FIN ends it.
    Sse {
        /// User id, shared with the router's index.
        user: Option<Rc<str>>,
    },
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

/// What the peer's FIN means in the current phase.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a report the loop must apply"]
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
#[must_use = "a report the loop must apply"]
pub(crate) enum Left {
    /// A chat session, with its user id.
    Chat(Option<Rc<str>>),
    /// An echo session.
    Echo,
    /// An event stream, with its user id.
    Sse(Option<Rc<str>>),
}

/// What a session's timer found.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a report the loop must apply"]
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
    /// Nothing heard for `pong_wait` (WebSocket only: an event stream's
    /// client says nothing; a dead one shows as a stalled write).
    PongWait,
    /// Output made no progress for `write_wait`.
    WriteStalled,
    /// The closing handshake ran out of time.
    Closing,
}

/// The shared heartbeats, one per kind of session.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// The WebSocket Ping frame.
    pub ping: Wire,
    /// The Server-Sent Events comment line.
    pub comment: Wire,
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat {
            ping: crate::frame::encode(crate::frame::Kind::Ping, b""),
            comment: Rc::from(crate::sse::HEARTBEAT),
        }
    }
}

/// Loop-clock ms since when a pending write has made no progress, or
/// none: an `Option<u64>` in 8 bytes instead of 16 (the loop clock never
/// reaches `u64::MAX`), which pays for the pointer to the rate buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stalled(u64);

impl Stalled {
    const NOT: Stalled = Stalled(u64::MAX);

    fn since(now: u64) -> Stalled {
        Stalled(now.min(u64::MAX - 1))
    }

    fn get(self) -> Option<u64> {
        (self != Stalled::NOT).then_some(self.0)
    }
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Session<S = TcpStream> {
    transport: Transport<S>,
    /// This session's key (slot and generation).
    pub key: SessionKey,
    /// The address that connected (see [`Session::peer`]), kept as its
    /// parts: a `SocketAddr` would take 32 bytes per idle connection.
    peer_ip: IpAddr,
    peer_port: u16,
    /// The client behind the proxies (README "Behind a proxy"): for logs,
    /// hooks and `max_connections_per_ip`. The peer until derived.
    pub client: IpAddr,
    /// `client` is counted against `max_connections_per_ip` (the loop's
    /// count; released when the session is reaped or its client changes).
    pub ip_counted: bool,
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
    out: Outbound,
    /// Loop-clock ms of the last complete frame (WebSocket) or of the start
    /// of the current request (HTTP).
    last_seen_ms: u64,
    /// Loop-clock ms when the next Ping is due.
    next_ping_ms: u64,
    /// Loop-clock ms since when a pending write has made no progress.
    stalled_since_ms: Stalled,
    /// WRITABLE interest is registered (only while output is pending).
    writable_interest: bool,
    /// Reading is paused: the session owes more than `max_buffered_bytes`
    /// of responses to a client that is not reading them.
    paused: bool,
    /// Counted against `max_http_connections` (until upgraded or reaped).
    counted_http: bool,
    /// Requests answered on this connection (keep-alive is capped).
    requests: u16,
    /// An event stream: messages go out as events, and it ends without a
    /// Close frame (kept through `Closing`, unlike the phase).
    sse: bool,
    /// Takes no more data frames: one did not fit, or it missed one, and
    /// the loop closes it at the end of the step (see [`Session::queue`]).
    ending: bool,
    /// The loop's bookkeeping: the session's one wheel timer and its deadline.
    pub timer: Option<(TimerId, u64)>,
    /// The loop's bookkeeping: already in this pass's list of answers to write.
    pub dirty: bool,
    /// The loop's bookkeeping: its handshake read waits for a later pass.
    pub handshake_waiting: bool,
    /// The loop's bookkeeping: its rate buckets (`crate::rate`), only
    /// while `max_messages_per_second` or `max_bytes_per_second` is set
    /// and once it sent something; out of line, so an idle session pays
    /// one pointer for them.
    pub rate: Option<Box<Bucket>>,
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
            peer_ip: peer.ip(),
            peer_port: peer.port(),
            client: peer.ip().to_canonical(),
            ip_counted: false,
            phase: Phase::Http,
            pending_input: Vec::new(),
            head_scanned: 0,
            input_needed: 0,
            decoder: Decoder::default(),
            deflate: None,
            out: Outbound::default(),
            last_seen_ms: now_ms,
            next_ping_ms: u64::MAX,
            stalled_since_ms: Stalled::NOT,
            writable_interest: false,
            paused: false,
            counted_http: true,
            requests: 0,
            sse: false,
            ending: false,
            timer: None,
            dirty: false,
            handshake_waiting: false,
            rate: None,
        }
    }

    /// Reads a PROXY header before anything else (`app.proxy_protocol`).
    pub(crate) fn await_proxy_header(&mut self) {
        if matches!(self.phase, Phase::Http) {
            self.phase = Phase::Proxy;
        }
    }

    // ---- what the loop reads ----

    /// The address that connected: the TCP peer, or the source a PROXY
    /// header from a trusted balancer named.
    pub(crate) fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.peer_ip, self.peer_port)
    }

    pub(crate) fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The user id of a chat session or an event stream.
    pub(crate) fn user(&self) -> Option<&Rc<str>> {
        match &self.phase {
            Phase::Chat { user, .. } | Phase::Sse { user } => user.as_ref(),
            _ => None,
        }
    }

    /// The rooms a chat session's connect token granted.
    pub(crate) fn grants(&self) -> Option<&Grants> {
        match &self.phase {
            Phase::Chat { grants, .. } => grants.as_deref(),
            _ => None,
        }
    }

    /// Upgraded (WebSocket or event stream) and not closing.
    pub(crate) fn is_open(&self) -> bool {
        matches!(
            self.phase,
            Phase::Chat { .. } | Phase::Echo | Phase::Sse { .. }
        )
    }

    /// An event stream (open or closing): messages go out as events.
    pub(crate) fn is_sse(&self) -> bool {
        self.sse
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
    #[cfg(test)]
    pub(crate) fn counted_http(&self) -> bool {
        self.counted_http
    }

    /// A pre-upgrade connection between requests (or that has sent
    /// nothing): no request partly read, no response being written. Returns
    /// the loop-clock ms it has been idle since (`None`: busy, or upgraded).
    pub(crate) fn http_idle_since(&self) -> Option<u64> {
        let idle = matches!(self.phase, Phase::Http)
            && self.pending_input.is_empty()
            && self.out.is_empty()
            && !self.transport.has_pending();
        idle.then_some(self.last_seen_ms)
    }

    /// No longer counted against `max_http_connections` (its slot was
    /// given to a new connection); `true` if it was counted.
    pub(crate) fn uncount_http(&mut self) -> bool {
        std::mem::replace(&mut self.counted_http, false)
    }

    /// Counts a request answered; `false` once the connection has served
    /// [`MAX_REQUESTS_PER_CONNECTION`]: this response closes it.
    pub(crate) fn count_request(&mut self) -> bool {
        self.requests = self.requests.saturating_add(1);
        self.requests < MAX_REQUESTS_PER_CONNECTION
    }

    /// Its TLS handshake is still in progress.
    pub(crate) fn tls_handshaking(&self) -> bool {
        self.transport.is_handshaking()
    }

    /// Whether this session receives positions (and may resume).
    pub(crate) fn recovering(&self) -> bool {
        matches!(
            self.phase,
            Phase::Chat {
                recovering: true,
                ..
            }
        )
    }

    /// From now on this chat session's messages carry their position.
    pub(crate) fn set_recovering(&mut self) {
        if let Phase::Chat { recovering, .. } = &mut self.phase {
            *recovering = true;
        }
    }

    /// Whether `count` more data frames of `bytes` in all fit the queue's
    /// bounds (a replay is queued whole or not at all).
    pub(crate) fn has_room(&self, count: usize, bytes: usize, rules: &Rules) -> bool {
        !self.ending
            && self.out.queued_messages() + count <= rules.message_buffer_size
            && (count == 0 || self.out.queued_bytes() + bytes <= rules.max_buffered_bytes)
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

    /// Loop-clock ms at which an open session's timer must next fire:
    /// the next Ping, `pong_wait` silence (not for an event stream, whose
    /// client never speaks) or a `write_wait` stall.
    pub(crate) fn open_deadline(&self, rules: &Rules) -> u64 {
        let mut next = self.next_ping_ms;
        if !self.sse {
            next = next.min(self.last_seen_ms.saturating_add(rules.pong_wait_ms));
        }
        if let Some(stalled) = self.stalled_since_ms.get() {
            next = next.min(stalled.saturating_add(rules.write_wait_ms));
        }
        next
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

    /// The upgrade succeeded: queues the 101 (or the head of the event
    /// stream) and opens the session, with its first Ping (or heartbeat
    /// comment) due within `ping_period` (minus a per-session jitter).
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
            Endpoint::Chat => Phase::Chat {
                user,
                recovering: false,
                grants: None,
            },
            Endpoint::Echo => Phase::Echo,
            Endpoint::Sse => {
                self.sse = true;
                Phase::Sse { user }
            }
        };
        self.last_seen_ms = now;
        let period = rules.ping_period_ms;
        self.next_ping_ms = now + period - ping_jitter(self.key, period);
    }

    /// Keeps the rooms a chat session's connect token granted.
    pub(crate) fn grant(&mut self, rooms: Option<Box<Grants>>) {
        if let Phase::Chat { grants, .. } = &mut self.phase {
            *grants = rooms;
        }
    }

    /// An open session starts closing (with a default deadline, set by the
    /// close that follows); returns who left, so the loop updates its
    /// indexes once. `None` if it was not open.
    pub(crate) fn leave(&mut self) -> Option<Left> {
        let left = match &mut self.phase {
            Phase::Chat { user, .. } => Left::Chat(user.take()),
            Phase::Echo => Left::Echo,
            Phase::Sse { user } => Left::Sse(user.take()),
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
    /// the peer's Close is awaited until `deadline_ms`. An event stream ends
    /// its response instead: a comment saying why, then our FIN.
    pub(crate) fn close(&mut self, code: u16, text: &str, deadline_ms: u64) -> u64 {
        if self.sse {
            self.out.push_unbounded(crate::sse::comment(text));
            return self.begin_closing(false, deadline_ms);
        }
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

    // ---- time ----

    /// The session's timer fired at `now`: the phase decides which
    /// deadline that was. `beat` holds the shared Ping frame and comment.
    pub(crate) fn on_timer(&mut self, now: u64, rules: &Rules, beat: &Heartbeat) -> Fired {
        let write_wait = rules.write_wait_ms;
        match &self.phase {
            Phase::Http if !self.out.is_empty() => {
                // Responses still going out: the request deadline waits for
                // them to finish, and a client that takes none of them for
                // `write_wait` is closed, as after the upgrade.
                match self.stalled_since_ms.get() {
                    Some(since) if now >= since.saturating_add(write_wait) => {
                        Fired::Expired(Expiry::WriteStalled)
                    }
                    Some(since) => Fired::Arm(since.saturating_add(write_wait)),
                    None => Fired::Arm(now.saturating_add(write_wait)),
                }
            }
            Phase::Http | Phase::Proxy => {
                let deadline = self.last_seen_ms.saturating_add(rules.handshake_ms);
                if now < deadline {
                    return Fired::Arm(deadline);
                }
                Fired::Expired(Expiry::Handshake {
                    partial: !self.pending_input.is_empty(),
                })
            }
            Phase::Chat { .. } | Phase::Echo | Phase::Sse { .. } => {
                if !self.sse && now >= self.last_seen_ms.saturating_add(rules.pong_wait_ms) {
                    return Fired::Expired(Expiry::PongWait);
                }
                if self
                    .stalled_since_ms
                    .get()
                    .is_some_and(|s| now >= s.saturating_add(write_wait))
                {
                    return Fired::Expired(Expiry::WriteStalled);
                }
                self.out.release_memory(0);
                if now >= self.next_ping_ms {
                    let beat = if self.sse { &beat.comment } else { &beat.ping };
                    self.out.push_control(beat.clone());
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
