//! The single-threaded event loop: one `mio::Poll`, the session slab, and
//! one pass as STYLE.md describes it:
//!
//! poll (timeout from the wheel) → dispatch events (listener, waker,
//! signals, sessions: read and process input) → accept → drain handle
//! commands (bounded per pass) → fire due timers → write: every session that
//! owes its own client an answer, then a bounded share of the write backlog
//! → reap closed sessions.
//!
//! Input flows one way: bytes → [`crate::http`] / [`crate::frame`] →
//! [`crate::rest`] / [`crate::router`] → outbound queues → writes. No socket
//! is written during a fan-out: deliveries only queue a shared frame and put
//! the recipient in the backlog, which drains [`WRITE_BUDGET`] sessions per
//! pass in slot order (see `backlog`); while it drains the loop keeps
//! polling, so new requests are read and later broadcasts join the queues of
//! recipients not yet written, which then take them all in one `writev`.
//! This module is the only one that wires the others together; it owns the
//! sockets through the sessions.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::audience::SessionKey;
use crate::cluster::Link;
use crate::config::Config;
use crate::deflate::Codec;
use crate::frame::{self, Kind, Wire};
use crate::handle::Inbox;
use crate::hooks::{Actions, Hooks};
use crate::http::Response;
use crate::metrics::{HandshakeFailure, Metrics, Shared};
use crate::rate::Bucket;
use crate::router::{Limits, Router};
use crate::server::Mode;
use crate::session::Session;
use crate::transport::{Tls, Transport};
use crate::wheel::Wheel;
use backlog::Backlog;

mod backlog;
mod closing;
mod cluster;
mod delivery;
mod input;
mod timers;
mod trim;

/// The listening socket.
pub(crate) const LISTENER: Token = Token(0);
/// The handles' waker.
pub(crate) const WAKER: Token = Token(1);
/// SIGINT/SIGTERM, when the server handles signals.
pub(crate) const SIGNALS: Token = Token(2);
/// Session `i` is registered as `Token(FIRST_SESSION + i)`.
const FIRST_SESSION: usize = 3;

/// Size of the loop's one shared read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Handle commands taken per pass, so pushes cannot starve the sockets.
const COMMAND_BUDGET: usize = 1024;
/// Sessions written from the backlog per pass before polling again: a few
/// hundred microseconds of loopback writes. Small on purpose: the sooner the
/// loop reads the next request, the more broadcasts each waiting recipient
/// takes per `writev` (measured with the serial POST trigger to 10k: 64
/// made ~2.3x fewer write calls for the same deliveries and ~1.7x the rate
/// of 512; 16 to 64 were alike). A lone message still leaves in its pass.
const WRITE_BUDGET: usize = 64;
/// Rounds of hook actions that cause more hook actions, applied in one go.
const ACTION_ROUNDS: usize = 8;
/// Pause before accepting again after the process ran out of descriptors.
const ACCEPT_BACKOFF_MS: u64 = 100;
/// Timer granularity and wheel size: ~10 s per revolution.
const TICK_MS: u64 = 10;
const SLOTS: usize = 1024;

/// Everything the loop owns.
pub(crate) struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    accepting: bool,
    config: Config,
    mode: Mode,
    sessions: Slab<Session>,
    router: Router,
    wheel: Wheel<SessionKey>,
    inbox: Inbox,
    shared: Arc<Shared>,
    metrics: Metrics,
    hooks: Box<dyn Hooks>,
    actions: Actions,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    start: Instant,
    now_ms: u64,
    next_generation: u32,
    read_buf: Box<[u8]>,
    /// Sessions that owe their own client an answer: written this pass.
    dirty: Vec<usize>,
    /// Sessions with deliveries (or a freed socket) to write when their
    /// turn comes, `WRITE_BUDGET` per pass.
    backlog: Backlog,
    /// The backlog slots being written this pass (capacity kept).
    turn: Vec<usize>,
    /// Returns freed queue memory to the kernel after large drains.
    trim: trim::Trim,
    reap: Vec<usize>,
    slow: Vec<SessionKey>,
    due: Vec<SessionKey>,
    open_websockets: usize,
    /// Connections not (yet) upgraded, for `max_http_connections`.
    http_connections: usize,
    /// The last accept was refused at `max_http_connections` (logged once per streak).
    http_full: bool,
    /// Paused sessions whose client has taken its responses: read on next pass.
    resume: Vec<usize>,
    /// Rate-limit buckets by session index, only while
    /// `max_messages_per_second` is set and only for sessions that sent
    /// something: an idle session pays nothing for the limit.
    rates: HashMap<usize, Bucket>,
    accept_retry_ms: Option<u64>,
    accept_failing: bool,
    commands_left: bool,
    shutdown_deadline_ms: Option<u64>,
    ping: Wire,
    codec: Codec,
    /// `None` unless `cluster.redis` is set.
    cluster: Option<Link>,
    /// What new connections' TLS uses; `None`: plain TCP. SIGHUP replaces it.
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// What the server was built with.
pub(crate) struct Parts {
    pub poll: Poll,
    pub listener: TcpListener,
    pub config: Config,
    pub mode: Mode,
    pub inbox: Inbox,
    pub shared: Arc<Shared>,
    pub hooks: Box<dyn Hooks>,
    pub signals: Option<signal_hook_mio::v1_0::Signals>,
    pub cluster: Option<Link>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl EventLoop {
    pub(crate) fn new(parts: Parts) -> EventLoop {
        let start = Instant::now();
        let limits = Limits::from_config(&parts.config.websocket);
        EventLoop {
            poll: parts.poll,
            listener: parts.listener,
            accepting: true,
            config: parts.config,
            mode: parts.mode,
            sessions: Slab::new(),
            router: Router::with_limits(limits),
            wheel: Wheel::new(TICK_MS, SLOTS),
            inbox: parts.inbox,
            shared: parts.shared,
            metrics: Metrics::default(),
            hooks: parts.hooks,
            actions: Actions::default(),
            signals: parts.signals,
            start,
            now_ms: 0,
            next_generation: 0,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            dirty: Vec::new(),
            backlog: Backlog::default(),
            turn: Vec::with_capacity(WRITE_BUDGET),
            trim: trim::Trim::default(),
            reap: Vec::new(),
            slow: Vec::new(),
            due: Vec::new(),
            open_websockets: 0,
            http_connections: 0,
            http_full: false,
            resume: Vec::new(),
            rates: HashMap::new(),
            accept_retry_ms: None,
            accept_failing: false,
            commands_left: false,
            shutdown_deadline_ms: None,
            ping: frame::encode(Kind::Ping, b""),
            codec: Codec::default(),
            cluster: parts.cluster,
            tls: parts.tls,
        }
    }

    /// Runs until a shutdown completes.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let pass_start = Instant::now();
            self.now_ms = self.ms_since_start(pass_start);
            let mut accept = false;
            let mut commands = self.commands_left;
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    WAKER => commands = true,
                    SIGNALS => self.on_signals(),
                    Token(token) => self.on_session_event(token - FIRST_SESSION, event),
                }
            }
            self.resume_paused();
            if accept || self.accept_retry_ms.is_some_and(|at| at <= self.now_ms) {
                self.accept_all();
            }
            if commands {
                self.drain_commands();
            }
            self.fire_timers();
            self.cluster_tick();
            // Disconnect hooks run wherever a session closes (a peer's Close,
            // a timer, a handle command): what they asked for applies here.
            self.apply_actions();
            self.flush_dirty();
            self.reap_closed();
            self.metrics.iteration(pass_start.elapsed());
            if self.finished() {
                info!("shutdown complete");
                return Ok(());
            }
        }
    }

    fn ms_since_start(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.commands_left
            || !self.actions.is_empty()
            || !self.resume.is_empty()
            || !self.backlog.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let mut next = self.wheel.next_deadline();
        let cluster_tick_ms = self.cluster.as_ref().map(Link::next_tick_ms);
        for ms in [
            self.accept_retry_ms,
            self.shutdown_deadline_ms,
            cluster_tick_ms,
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(ms, |n| n.min(ms)));
        }
        let now_ms = self.ms_since_start(Instant::now());
        next.map(|at| Duration::from_millis(at.saturating_sub(now_ms)))
    }

    fn finished(&self) -> bool {
        self.shutdown_deadline_ms
            .is_some_and(|deadline| self.sessions.is_empty() || self.now_ms >= deadline)
    }

    // ---- accept ----

    fn accept_all(&mut self) {
        self.accept_retry_ms = None;
        while self.accepting {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if std::mem::take(&mut self.accept_failing) {
                        info!("accepting connections again");
                    }
                    self.add_session(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // EMFILE/ENFILE and the like: the backlog keeps the
                    // connections; retry after a pause instead of spinning.
                    // Logged once per streak, not every 100 ms.
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        warn!("accept failed ({e}); retrying every {ACCEPT_BACKOFF_MS} ms, open sessions keep working");
                    }
                    self.accept_retry_ms = Some(self.now_ms + ACCEPT_BACKOFF_MS);
                    return;
                }
            }
        }
    }

    fn add_session(&mut self, stream: TcpStream, peer: std::net::SocketAddr) {
        if self.http_connections >= self.config.websocket.max_http_connections {
            return self.refuse_http_connection(stream, peer);
        }
        self.http_full = false;
        // Small frames must not wait for Nagle: latency is the product.
        let _ = stream.set_nodelay(true);
        let entry = self.sessions.vacant_entry();
        let index = entry.key();
        let mut transport = match &self.tls {
            None => Transport::Plain(stream),
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(conn) => Transport::Tls(Box::new(Tls::new(stream, conn))),
                Err(e) => {
                    warn!("cannot start TLS for {peer}: {e}");
                    return;
                }
            },
        };
        let token = Token(FIRST_SESSION + index);
        if let Err(e) =
            self.poll
                .registry()
                .register(transport.socket_mut(), token, Interest::READABLE)
        {
            warn!("cannot register connection from {peer}: {e}");
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = SessionKey {
            index: index as u32,
            generation: self.next_generation,
        };
        let session = entry.insert(Session::new(transport, key, peer, self.now_ms));
        session.counted_http = true;
        self.http_connections += 1;
        let deadline = self.now_ms + self.config.websocket.handshake_timeout.as_millis() as u64;
        self.arm(index, deadline);
    }
}

impl EventLoop {
    /// At `max_http_connections`: 503 and close, without a session. The
    /// answer fits any fresh socket's send buffer, so one write suffices.
    fn refuse_http_connection(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr) {
        use std::io::{Read, Write};
        self.metrics
            .handshake_failed(HandshakeFailure::HttpCapacity);
        if self.tls.is_some() {
            // A 503 would need a TLS handshake first: the close says it.
            if !std::mem::replace(&mut self.http_full, true) {
                warn!(
                    "max_http_connections ({}) reached: closing new connections (first: {peer})",
                    self.config.websocket.max_http_connections
                );
            }
            return;
        }
        if !std::mem::replace(&mut self.http_full, true) {
            warn!(
                "max_http_connections ({}) reached: refusing connections with 503 (first: {peer})",
                self.config.websocket.max_http_connections
            );
        }
        let response = Response::error(503, "too many connections")
            .closing()
            .to_bytes(false);
        let _ = stream.write(&response);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Whatever the client sent already: dropping unread input would
        // reset the connection and could destroy the 503 in flight.
        let _ = stream.read(&mut self.read_buf);
    }

    /// Reads again from sessions that were paused and have been drained.
    fn resume_paused(&mut self) {
        for index in std::mem::take(&mut self.resume) {
            self.resume_reading(index);
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
