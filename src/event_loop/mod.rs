//! The single-threaded event loop: one `mio::Poll` and a few parts, each
//! owning its state; one pass: poll, then the steps below, in order.
//!
//! | part | file | owns |
//! | --- | --- | --- |
//! | setup | `setup.rs` | what the server started with: config, session rules, mode, JWT verifier (read-only) |
//! | clock | `clock.rs` | the loop clock (`now_ms`), the timer wheel, the sessions due this pass |
//! | admission | `admission.rs` | the listener and its back-off, `max_http_connections` and the idle pre-upgrade list, client addresses and `max_connections_per_ip`, the TLS handshake budget, the TLS config |
//! | connections | `connections.rs` | the session slab (each session with its own rate buckets), the shared read buffer, the lists of sessions to write (dirty, backlog, turn), to resume, to reap, to close once a delivering step is over (ended), the open count |
//! | hub | `hub.rs` | router, rooms and presence, history, stream marks, reads waiting for Redis, the cluster link, webhooks, the codec and heartbeat |
//! | lifecycle | `lifecycle.rs` | the handles' inbox, what they read without asking, signals, the shutdown deadline |
//!
//! [`EventLoop`] ties them with the poll, the metrics and the hooks. A
//! method that touches one part lives on that part. The steps of a pass
//! are of two kinds, and the compiler holds each to its kind:
//!
//! - **Delivering steps** work through [`Delivery`](deliver::Delivery): the
//!   connections, the hub, the setup and the metrics, with the pass's time
//!   and whether a shutdown began as values. They queue frames, read and
//!   write history, park work for the cluster, and change membership; they
//!   cannot run a hook, close a session, or touch admission, the poll or
//!   the wheel. A session they cannot serve they *end*
//!   ([`Ending`](connections::Ending)): it takes no more data at once, so
//!   its client never gets a message after one it missed, and the close
//!   step closes it when the step that ended it is over.
//! - **The loop's steps** (`impl EventLoop`) read sockets, run hooks,
//!   apply what a session or a part reported, and close sessions. Closing
//!   one runs `on_disconnect`, presence and the cluster, so these borrow the
//!   whole loop; each lists below the parts it touches.
//!
//! | step | file | what it does | parts |
//! | --- | --- | --- | --- |
//! | poll | `mod.rs` | waits for readiness, at most until the next deadline | all (deadlines) |
//! | read | `read.rs` | drains ready sockets through their sessions | loop: connections, hub (held sessions), then dispatch |
//! | (handshakes) | `handshakes.rs` | TLS handshake reads: a budget per pass, the rest wait in order | loop: admission, connections, then read |
//! | dispatch | `dispatch.rs` | acts on each complete unit: REST, upgrade, frames → rate limits → hooks → router → delivery | loop: all but lifecycle's inbox |
//! | deliver | `deliver.rs` | queues a frame built once to one session or an audience; the fan-out walk | `Delivery` |
//! | (resume) | `resume.rs` | with history on: welcome, replay and `recovered` at upgrade and join | `Delivery` |
//! | (resume) | `remote.rs` | with history on in a cluster: positions from Redis, resume reads | `Delivery` |
//! | (resume) | `stream.rs` | with history on: an event stream's `id:` tokens, and its resume at open | `Delivery` |
//! | (resume) | `remote_stream.rs` | with history on in a cluster: an event stream's resume at open, read from Redis | `Delivery` |
//! | rooms | `rooms.rs` | membership (REST, handle, other nodes), presence events | `Delivery`; the join check runs `on_join`: loop |
//! | cluster | `cluster.rs` | pushes and client messages to the other nodes, holds | `Delivery`; settling what Redis confirmed and messages from it: loop |
//! | accept | `accept.rs` | takes new connections, evicts an idle one at `max_http_connections` | loop: admission, connections, clock, poll |
//! | clients | `clients.rs` | who is behind a connection (proxies, PROXY header) and `max_connections_per_ip` | loop: admission, connections |
//! | commands | `commands.rs` | handle commands (bounded per pass), hook actions, signals, shutdown | loop: lifecycle, then any |
//! | timers | `timers.rs` | applies what each due session timer found; history expiry | loop: clock, connections, hub |
//! | webhooks | `webhooks.rs` | presence changes for the backend (`impl Hub`) | hub |
//! | write | `write/` | answers first, then a bounded share of the fan-out backlog | loop: connections, then admission, clock |
//! | close | `close.rs` | closes what delivering steps ended; leaving the indexes, closing handshakes, reaping | loop: all |
//!
//! A [`Session`](crate::session::Session) makes its own phase changes and reports them as values;
//! these files apply the reports to the parts (router, poll registration,
//! wheel, metrics, hooks, cluster link). A fan-out writes no
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
//! Time is the loop clock (`clock.rs`): u64 milliseconds since the loop
//! started, read once per pass (`now_ms`); the wheel and every session
//! deadline use it.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use mio::net::TcpListener;
use mio::{Events, Poll, Token};

use crate::cluster::Link;
use crate::config::Config;
use crate::handle::Inbox;
use crate::hooks::{Actions, Hooks};
use crate::jwt::Verifier;
use crate::metrics::{Metrics, Shared};
use crate::mode::Mode;
use crate::router::Limits;
use crate::session::Rules;

use admission::Admission;
use clock::Clock;
use connections::Connections;
use hub::Hub;
use lifecycle::Lifecycle;
use setup::Setup;

// The parts: each owns its state.
mod admission;
mod clock;
mod connections;
mod hub;
mod lifecycle;
mod setup;

// The steps of a pass.
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

/// Sessions written from the backlog per pass before polling again: a few
/// hundred microseconds of loopback writes. Small on purpose: the sooner the
/// loop reads the next request, the more broadcasts each waiting recipient
/// takes per `writev` (measured with the serial POST trigger to 10k: 64
/// made ~2.3x fewer write calls for the same deliveries and ~1.7x the rate
/// of 512; 16 to 64 were alike). A lone message still leaves in its pass.
const WRITE_BUDGET: usize = 64;
/// Rounds of hook actions that cause more hook actions, applied in one go.
const ACTION_ROUNDS: usize = 8;

/// The loop: its parts, and the poll that wakes it. Each part owns its
/// state and documents it; a step borrows the parts it needs (methods that
/// touch one part live on it, steps that join parts name them).
pub(crate) struct EventLoop {
    /// Readiness of the listener, the waker, the signals and every session.
    poll: Poll,
    /// What the server was started with and never changes: config, rules,
    /// mode, the JWT verifier.
    setup: Setup,
    /// The counters `/metrics` renders; every step adds to them.
    metrics: Metrics,
    /// The application's callbacks, run on the loop thread.
    hooks: Box<dyn Hooks>,
    /// What hooks asked for, applied after the event that ran them.
    actions: Actions,
    /// The loop clock and the session timers.
    clock: Clock,
    /// New connections: the listener, its back-off, the connection caps,
    /// client addresses and the TLS handshake budget.
    admission: Admission,
    /// The sessions and the bookkeeping of their reads and writes.
    conns: Connections,
    /// Who gets what: the router, rooms, history, the cluster link,
    /// webhooks and the shared encoders.
    hub: Hub,
    /// Commands from other threads, signals, and shutdown.
    life: Lifecycle,
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
        let clock = Clock::new();
        let limits = Limits::from_config(&parts.config.websocket);
        let hub = Hub::new(
            &parts.config,
            parts.cluster,
            &parts.jwt,
            clock.start,
            limits,
        );
        let admission = Admission::new(parts.listener, &parts.config, parts.tls);
        EventLoop {
            poll: parts.poll,
            setup: Setup {
                rules: Rules::from_config(&parts.config.websocket),
                config: parts.config,
                mode: parts.mode,
                jwt: parts.jwt,
            },
            metrics: Metrics::default(),
            hooks: parts.hooks,
            actions: Actions::default(),
            clock,
            admission,
            conns: Connections::new(),
            hub,
            life: Lifecycle::new(parts.inbox, parts.shared, parts.signals),
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
            self.clock.pass(pass_start);
            let mut listener_ready = false;
            let mut commands = self.life.commands_left;
            // read (and dispatch what was read): TLS handshakes that waited
            // first, within this pass's budget
            self.handshakes_pass();
            for event in events.iter() {
                match event.token() {
                    LISTENER => listener_ready = true,
                    WAKER => commands = true,
                    SIGNALS => self.on_signals(),
                    Token(token) => self.on_session_event(token - FIRST_SESSION, event),
                }
            }
            self.resume_paused();
            // accept
            if self.admission.accept_due(listener_ready, self.clock.now_ms) {
                self.accept_all();
            }
            // commands
            if commands {
                self.drain_commands();
            }
            // timers, cluster
            self.fire_timers();
            self.hub.webhook_tick(self.clock.now_ms);
            self.cluster_tick();
            // Disconnect hooks run wherever a session closes (a peer's Close,
            // a timer, a handle command): what they asked for applies here.
            self.close_ended();
            self.apply_actions();
            // write, close
            self.write_pass();
            self.close_ended();
            self.reap_closed();
            self.metrics.iteration(pass_start.elapsed());
            if self.finished() {
                info!("shutdown complete");
                return Ok(());
            }
        }
    }

    /// Until the earliest deadline on the loop clock (none: wait for events).
    fn poll_timeout(&self) -> Option<Duration> {
        if self.life.commands_left
            || !self.actions.is_empty()
            || !self.conns.resume.is_empty()
            || !self.conns.backlog.is_empty()
            || self.admission.handshakes.has_waiting()
        {
            return Some(Duration::ZERO);
        }
        let next_ms = [
            self.clock.next_deadline(),
            self.admission.next_deadline(),
            self.life.shutdown_deadline_ms,
            self.hub.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()?;
        self.clock.until(next_ms)
    }

    fn finished(&self) -> bool {
        self.life
            .shutdown_deadline_ms
            .is_some_and(|deadline| self.conns.sessions.is_empty() || self.clock.now_ms >= deadline)
    }
}
