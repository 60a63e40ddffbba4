//! The single-threaded event loop: one `mio::Poll`, the session slab, and
//! one pass: poll, then the steps below, in order. Each step of a pass has its file:
//!
//! | step | file | what it does |
//! | --- | --- | --- |
//! | poll | `mod.rs` | waits for readiness, at most until the next deadline |
//! | read | `read.rs` | drains ready sockets through their sessions (TLS handshakes: a budget per pass, `handshakes.rs`) |
//! | dispatch | `dispatch.rs` | acts on each complete unit: REST, upgrade, frames → router → queues |
//! | (resume) | `resume.rs` | with history on: welcome, replay and `recovered` at upgrade and join |
//! | (resume) | `remote.rs` | with history on in a cluster: positions from Redis, resume reads |
//! | (resume) | `stream.rs` | with history on: an event stream's `id:` tokens, and its resume at open |
//! | accept | `accept.rs` | takes new connections |
//! | clients | `clients.rs` | who is behind a connection (proxies, PROXY header) and `max_connections_per_ip` |
//! | commands | `commands.rs` | handle commands (bounded per pass), hook actions, signals |
//! | timers | `timers.rs` | applies what each due session timer found; history expiry |
//! | cluster | `cluster.rs` | presence and channels of the other nodes |
//! | rooms | `rooms.rs` | who may join, server-side membership, presence events |
//! | write | `write/` | answers first, then a bounded share of the fan-out backlog |
//! | close | `close.rs` | leaving the indexes, closing handshakes, reaping |
//!
//! A [`Session`] makes its own phase changes and reports them as values;
//! these files apply the reports to what the loop owns (router, poll
//! registration, wheel, metrics, hooks, cluster link). A fan-out writes no
//! socket but one whose queue is full: deliveries queue a shared frame and
//! put the recipient in the backlog, which drains [`WRITE_BUDGET`] sessions
//! per pass in slot order; while it drains the loop keeps polling, so new
//! requests are read and later broadcasts join the queues of recipients not
//! yet written, which then take them all in one `writev`. A recipient whose
//! queue is full (`message_buffer_size` or `max_buffered_bytes`) is written
//! at once, before it is judged a slow consumer (`Session::queue`): a burst
//! within one pass is not slowness. Measured: 300 REST broadcasts pipelined
//! into one pass to a client reading at full speed all arrive; without that
//! write the client was closed with 1013 after 257 of them.
//!
//! Time is the loop clock: u64 milliseconds since the loop started, read
//! once per pass (`now_ms`); the wheel and every session deadline use it.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use mio::net::TcpListener;
use mio::{Events, Poll, Token};
use slab::Slab;

use crate::audience::SessionKey;
use crate::client_ip::Clients;
use crate::cluster::Link;
use crate::config::Config;
use crate::deflate::Codec;
use crate::handle::Inbox;
use crate::history::History;
use crate::hooks::{Actions, Hooks};
use crate::http_slots::IdleHttp;
use crate::jwt::Verifier;
use crate::metrics::{Metrics, Shared};
use crate::rate::Bucket;
use crate::rooms::Rooms;
use crate::router::{Limits, Router};
use crate::server::Mode;
use crate::session::{Heartbeat, Rules, Session};

use crate::wheel::{millis, Wheel};
use write::backlog::Backlog;

mod accept;
mod clients;
mod close;
mod cluster;
mod commands;
mod deliver;
mod dispatch;
mod handshakes;
mod read;
mod remote;
mod remote_stream;
mod resume;
mod rooms;
mod stream;
mod timers;
mod webhooks;
mod write;

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
    /// The session limits and timeouts, on the loop clock.
    rules: Rules,
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
    trim: write::trim::Trim,
    reap: Vec<usize>,
    slow: Vec<SessionKey>,
    due: Vec<SessionKey>,
    open_websockets: usize,
    /// Connections not (yet) upgraded, for `max_http_connections`.
    http_connections: usize,
    /// The last accept was refused at `max_http_connections` (logged once per streak).
    http_full: bool,
    /// TLS handshake reads left this pass, and the sessions waiting for one.
    handshakes: handshakes::Handshakes,
    /// Pre-upgrade connections in the order they became idle: at
    /// `max_http_connections` the oldest gives up its slot.
    idle_http: IdleHttp,
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
    /// The shared Ping frame and event-stream heartbeat.
    heartbeat: Heartbeat,
    codec: Codec,
    /// `None` unless `cluster.redis` is set.
    cluster: Option<Link>,
    /// Join modes and presence (`rooms:`); see `rooms.rs`.
    rooms: Rooms,
    /// What new connections' TLS uses; `None`: plain TCP. SIGHUP replaces it.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Checks connect tokens; its JWKS keys (if any) refresh on their own thread.
    jwt: Verifier,
    /// Presence events for the backend; `None` while `webhooks.url` is empty.
    webhooks: Option<crate::webhooks::Webhooks>,
    /// The last messages per audience for resuming sessions; `None` while
    /// `history.size` is 0 (then nothing of it runs).
    history: Option<History>,
    /// With history on in a cluster (the streams live in Redis): resumes
    /// waiting for their read (`remote.rs`); `None` otherwise.
    remote: Option<crate::history::remote::Remote>,
    /// Who is behind each connection: the proxy policy and the counts of
    /// `max_connections_per_ip` (see `clients.rs`).
    clients: Clients,
    /// With history on: the marks that make one `id:` per fan-out resume
    /// every stream of an event stream (`stream.rs`).
    sse_marks: Option<crate::sse::marks::Marks>,
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
    pub jwt: Verifier,
}

impl EventLoop {
    pub(crate) fn new(parts: Parts) -> EventLoop {
        let start = Instant::now();
        let limits = Limits::from_config(&parts.config.websocket);
        let rules = Rules::from_config(&parts.config.websocket);
        let rooms = Rooms::new(&parts.config, parts.jwt.clone());
        let webhooks = crate::webhooks::Webhooks::start(&parts.config.webhooks);
        // Config::load refuses the pair; a Config built in code is told here.
        // In a cluster the streams live in Redis (`remote.rs`).
        let history = History::new(&parts.config.history).filter(|_| parts.cluster.is_none());
        let remote = parts
            .cluster
            .as_ref()
            .is_some_and(Link::keeps_history)
            .then(crate::history::remote::Remote::default);
        let sse_marks = history.as_ref().map(|_| {
            let bits = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), start);
            crate::sse::marks::Marks::new(bits, millis(parts.config.history.ttl))
        });
        let clients = Clients::from_config(&parts.config);
        EventLoop {
            poll: parts.poll,
            listener: parts.listener,
            accepting: true,
            config: parts.config,
            rules,
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
            trim: write::trim::Trim::default(),
            reap: Vec::new(),
            slow: Vec::new(),
            due: Vec::new(),
            open_websockets: 0,
            http_connections: 0,
            http_full: false,
            idle_http: IdleHttp::default(),
            handshakes: handshakes::Handshakes::default(),
            resume: Vec::new(),
            rates: HashMap::new(),
            accept_retry_ms: None,
            accept_failing: false,
            commands_left: false,
            shutdown_deadline_ms: None,
            heartbeat: Heartbeat::default(),
            codec: Codec::default(),
            cluster: parts.cluster,
            rooms,
            tls: parts.tls,
            sse_marks,
            jwt: parts.jwt,
            webhooks,
            history,
            remote,
            clients,
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
            // read (and dispatch what was read): TLS handshakes that waited
            // first, within this pass's budget
            self.handshakes_pass();
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    WAKER => commands = true,
                    SIGNALS => self.on_signals(),
                    Token(token) => self.on_session_event(token - FIRST_SESSION, event),
                }
            }
            self.resume_paused();
            // accept
            if accept || self.accept_retry_ms.is_some_and(|at| at <= self.now_ms) {
                self.accept_all();
            }
            // commands
            if commands {
                self.drain_commands();
            }
            // timers, cluster
            self.fire_timers();
            self.webhook_tick();
            self.cluster_tick();
            // Disconnect hooks run wherever a session closes (a peer's Close,
            // a timer, a handle command): what they asked for applies here.
            self.apply_actions();
            // write, close
            self.write_pass();
            self.reap_closed();
            self.metrics.iteration(pass_start.elapsed());
            if self.finished() {
                info!("shutdown complete");
                return Ok(());
            }
        }
    }

    fn ms_since_start(&self, at: Instant) -> u64 {
        millis(at.saturating_duration_since(self.start))
    }

    /// Until the earliest deadline on the loop clock (none: wait for events).
    fn poll_timeout(&self) -> Option<Duration> {
        if self.commands_left
            || !self.actions.is_empty()
            || !self.resume.is_empty()
            || !self.backlog.is_empty()
            || self.handshakes.has_waiting()
        {
            return Some(Duration::ZERO);
        }
        let cluster_tick_ms = self.cluster.as_ref().map(Link::next_tick_ms);
        let next_ms = [
            self.wheel.next_deadline(),
            self.accept_retry_ms,
            self.shutdown_deadline_ms,
            cluster_tick_ms,
            self.history.as_ref().and_then(History::next_deadline),
            self.remote.as_ref().and_then(|r| r.next_deadline()),
            self.webhook_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()?;
        // Measured from the precise start, so the pass that wakes reads a
        // loop clock at or past the deadline.
        let at = self.start.checked_add(Duration::from_millis(next_ms))?;
        Some(at.saturating_duration_since(Instant::now()))
    }

    fn finished(&self) -> bool {
        self.shutdown_deadline_ms
            .is_some_and(|deadline| self.sessions.is_empty() || self.now_ms >= deadline)
    }
}
