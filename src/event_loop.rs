//! The single-threaded event loop: one `mio::Poll`, the session slab, and
//! one pass as STYLE.md describes it:
//!
//! poll (timeout from the wheel) → dispatch events (listener, waker,
//! signals, sessions: read and process input) → accept → drain handle
//! commands (bounded per pass) → fire due timers → flush each dirty session
//! once → reap closed sessions.
//!
//! Input flows one way: bytes → [`crate::http`] / [`crate::frame`] →
//! [`crate::rest`] / [`crate::router`] → outbound queues → one flush per
//! session per pass. This module is the only one that wires the others
//! together; it owns the sockets through the sessions.

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::config::Config;
use crate::frame::{self, DecodeError, Inbound, Kind, Step, Wire};
use crate::handle::{Command, Inbox, Target};
use crate::hooks::{Actions, CloseReason, Hooks, SessionInfo, Verdict};
use crate::http::{self, HttpError, Response};
use crate::message;
use crate::metrics::{HandshakeFailure, Metrics, Shared};
use crate::outbound::Flushed;
use crate::rest::{self, Endpoint, Mode, Outcome, Upgrade};
use crate::router::{Audience, Route, Router, SessionKey};
use crate::session::{Closing, Phase, ReadOutcome, Session};
use crate::wheel::Wheel;

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
/// Pause before accepting again after the process ran out of descriptors.
const ACCEPT_BACKOFF_MS: u64 = 100;
/// Timer granularity and wheel size: ~10 s per revolution.
const TICK: Duration = Duration::from_millis(10);
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
    dirty: Vec<usize>,
    reap: Vec<usize>,
    slow: Vec<SessionKey>,
    due: Vec<SessionKey>,
    open_websockets: usize,
    accept_retry_ms: Option<u64>,
    commands_left: bool,
    shutdown_deadline_ms: Option<u64>,
    ping: Wire,
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
}

impl EventLoop {
    pub(crate) fn new(parts: Parts) -> EventLoop {
        let start = Instant::now();
        EventLoop {
            poll: parts.poll,
            listener: parts.listener,
            accepting: true,
            config: parts.config,
            mode: parts.mode,
            sessions: Slab::new(),
            router: Router::default(),
            wheel: Wheel::new(TICK, SLOTS, start),
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
            reap: Vec::new(),
            slow: Vec::new(),
            due: Vec::new(),
            open_websockets: 0,
            accept_retry_ms: None,
            commands_left: false,
            shutdown_deadline_ms: None,
            ping: frame::encode(Kind::Ping, b""),
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
            if accept || self.accept_retry_ms.is_some_and(|at| at <= self.now_ms) {
                self.accept_all();
            }
            if commands {
                self.drain_commands();
            }
            self.fire_timers(pass_start);
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

    fn instant_at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.commands_left {
            return Some(Duration::ZERO);
        }
        let mut next = self.wheel.next_deadline();
        for ms in [self.accept_retry_ms, self.shutdown_deadline_ms]
            .into_iter()
            .flatten()
        {
            let at = self.instant_at(ms);
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next.map(|at| at.saturating_duration_since(Instant::now()))
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
                Ok((stream, peer)) => self.add_session(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // EMFILE/ENFILE and the like: the backlog keeps the
                    // connections; retry after a pause instead of spinning.
                    warn!("accept failed ({e}); retrying in {ACCEPT_BACKOFF_MS} ms");
                    self.accept_retry_ms = Some(self.now_ms + ACCEPT_BACKOFF_MS);
                    return;
                }
            }
        }
    }

    fn add_session(&mut self, stream: TcpStream, peer: std::net::SocketAddr) {
        // Small frames must not wait for Nagle: latency is the product.
        let _ = stream.set_nodelay(true);
        let entry = self.sessions.vacant_entry();
        let index = entry.key();
        let mut stream = stream;
        let token = Token(FIRST_SESSION + index);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            warn!("cannot register connection from {peer}: {e}");
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = SessionKey {
            index: index as u32,
            generation: self.next_generation,
        };
        entry.insert(Session::new(stream, key, peer, self.now_ms));
        let deadline = self.now_ms + self.config.websocket.handshake_timeout.as_millis() as u64;
        self.arm(index, deadline);
    }

    // ---- reading ----

    fn on_session_event(&mut self, index: usize, event: &mio::event::Event) {
        if !self.sessions.contains(index) {
            return;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.on_readable(index);
        }
        if event.is_writable() {
            self.mark_dirty(index);
        }
    }

    fn on_readable(&mut self, index: usize) {
        loop {
            let Some(session) = self.sessions.get_mut(index) else {
                return;
            };
            if matches!(session.phase, Phase::Dead) {
                return;
            }
            let (outcome, full) = if session.pending_input.is_empty() {
                self.read_fresh(index)
            } else {
                self.read_more(index)
            };
            match outcome {
                // A short read drained the socket: with edge-triggered epoll,
                // any byte that arrives later raises a new event, so the
                // extra read that would only return WouldBlock is skipped.
                Ok(ReadOutcome::Data(_)) if full => continue,
                Ok(ReadOutcome::Data(_)) | Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => return self.on_eof(index),
                Err(e) => return self.kill(index, CloseReason::Io(e.to_string())),
            }
        }
    }

    /// Reads into the loop's shared buffer; keeps only an unfinished rest.
    fn read_fresh(&mut self, index: usize) -> (io::Result<ReadOutcome>, bool) {
        let mut buf = std::mem::take(&mut self.read_buf);
        let Some(session) = self.sessions.get_mut(index) else {
            self.read_buf = buf;
            return (Ok(ReadOutcome::WouldBlock), false);
        };
        let outcome = session.read_into(&mut buf);
        let mut full = false;
        if let Ok(ReadOutcome::Data(n)) = outcome {
            full = n == buf.len();
            self.saw_input(index, n);
            let consumed = self.process(index, &mut buf[..n]);
            if let Some(session) = self.sessions.get_mut(index) {
                session.keep_input(&buf[consumed..n]);
            }
        }
        self.read_buf = buf;
        (outcome, full)
    }

    /// Appends to the session's unfinished input (a large frame or request
    /// arriving in pieces is read in place, never copied back and forth).
    fn read_more(&mut self, index: usize) -> (io::Result<ReadOutcome>, bool) {
        let Some(session) = self.sessions.get_mut(index) else {
            return (Ok(ReadOutcome::WouldBlock), false);
        };
        let before = session.pending_input.len();
        let (outcome, requested) = session.read_pending(READ_CHUNK);
        let mut full = false;
        if let Ok(ReadOutcome::Data(n)) = outcome {
            full = n == requested;
            let mut buf = std::mem::take(&mut session.pending_input);
            debug_assert_eq!(buf.len(), before + n);
            self.saw_input(index, n);
            let consumed = self.process(index, &mut buf);
            if let Some(session) = self.sessions.get_mut(index) {
                buf.drain(..consumed);
                if buf.is_empty() {
                    session.keep_input(&[]);
                } else {
                    session.pending_input = buf;
                }
            }
        }
        (outcome, full)
    }

    fn saw_input(&mut self, index: usize, n: usize) {
        self.metrics.bytes_in += n as u64;
        if let Some(session) = self.sessions.get_mut(index) {
            if session.is_open_websocket() {
                session.last_seen_ms = self.now_ms;
            }
        }
    }

    /// Acts on every complete unit at the start of `buf`; returns the bytes
    /// consumed (the rest is an unfinished unit).
    fn process(&mut self, index: usize, buf: &mut [u8]) -> usize {
        let mut at = 0;
        while at < buf.len() {
            let Some(session) = self.sessions.get(index) else {
                return buf.len();
            };
            let step = match &session.phase {
                Phase::Http => self.process_http(index, &mut buf[at..]),
                Phase::Chat { .. } | Phase::Echo => self.process_frame(index, &mut buf[at..]),
                Phase::Closing(c) if c.await_close_frame => {
                    self.process_closing_frame(index, &mut buf[at..])
                }
                Phase::Closing(_) | Phase::Dead => return buf.len(),
            };
            match step {
                Some(consumed) => at += consumed,
                None => return at,
            }
        }
        at
    }

    // ---- HTTP ----

    fn process_http(&mut self, index: usize, buf: &mut [u8]) -> Option<usize> {
        let ws = &self.config.websocket;
        let (max_head, max_body) = (ws.max_header_bytes, ws.max_message_size);
        let session = self.sessions.get_mut(index)?;
        if http::find_head_end(buf, session.head_scanned).is_none() {
            if buf.len() > max_head {
                self.http_error(index, &HttpError::HeadTooLarge);
                return Some(buf.len());
            }
            session.head_scanned = buf.len();
            return None;
        }
        let request = match http::parse_head(buf, max_head, max_body) {
            Ok(Some(request)) => request,
            Ok(None) => return None,
            Err(e) => {
                self.http_error(index, &e);
                return Some(buf.len());
            }
        };
        let total = request.head_len + request.content_length;
        if buf.len() < total {
            session.head_scanned = 0;
            session.input_needed = total;
            return None;
        }
        session.head_scanned = 0;
        session.input_needed = 0;
        self.on_request(index, &request, &buf[request.head_len..total]);
        Some(total)
    }

    fn http_error(&mut self, index: usize, error: &HttpError) {
        if matches!(error, HttpError::HeadTooLarge | HttpError::BodyTooLarge) {
            self.metrics.handshake_failed(HandshakeFailure::TooLarge);
        }
        debug!("session {index}: {error}");
        let response = Response::error(error.status(), &error.to_string()).closing();
        self.respond(index, &response, false);
    }

    fn on_request(&mut self, index: usize, request: &http::Request, body: &[u8]) {
        self.metrics.http_requests += 1;
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ctx = rest::Context {
            config: &self.config,
            mode: self.mode,
            router: &self.router,
            open_websockets: self.open_websockets,
            now_unix,
        };
        let keep_alive = request.keep_alive;
        if !request.upgrade_websocket {
            if let Some(response) = self.hooks.on_request(request, body, &mut self.actions) {
                self.respond(index, &response, keep_alive);
                return self.apply_actions();
            }
        }
        // A client that asked to upgrade has no use for the connection once
        // refused: answer and close it.
        let keep_alive = keep_alive && !request.upgrade_websocket;
        match rest::handle(request, body, &ctx) {
            Outcome::Respond(response) => self.respond(index, &response, keep_alive),
            Outcome::Refuse(response, why) => {
                self.metrics.handshake_failed(why);
                if let Some(session) = self.sessions.get(index) {
                    let reason = String::from_utf8_lossy(&response.body);
                    info!(
                        "refused {} from {}: {} {reason}",
                        request.path, session.peer, response.status
                    );
                }
                self.respond(index, &response, keep_alive);
            }
            Outcome::Metrics => {
                let text = self
                    .metrics
                    .render(&self.shared, crate::alloc::heap_bytes());
                let response = Response::raw(200, "text/plain; version=0.0.4", text.into_bytes());
                self.respond(index, &response, keep_alive);
            }
            Outcome::Push { target, json } => {
                let sent = self.push(&target, &json);
                let response = Response::json(200, &serde_json::json!({ "sent": sent }));
                self.respond(index, &response, keep_alive);
            }
            Outcome::Upgrade(upgrade) => self.upgrade(index, upgrade),
        }
    }

    fn respond(&mut self, index: usize, response: &Response, keep_alive: bool) {
        let keep = keep_alive && !response.close;
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session
            .out
            .push_unbounded(Rc::from(response.to_bytes(keep)));
        // The next request's deadline runs from the end of this response.
        session.last_seen_ms = self.now_ms;
        self.mark_dirty(index);
        if !keep {
            self.begin_closing(index, false);
        }
    }

    fn upgrade(&mut self, index: usize, upgrade: Upgrade) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let key = session.key;
        let peer = session.peer;
        let info = SessionInfo {
            key,
            user: upgrade.user.as_deref(),
            peer,
        };
        if upgrade.endpoint == Endpoint::Chat {
            if let Err(reason) = self.hooks.on_connect(&info, &mut self.actions) {
                self.metrics.handshake_failed(HandshakeFailure::Hook);
                let response = Response::error(403, &reason).closing();
                return self.respond(index, &response, false);
            }
        }
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session.out.push_response(Rc::from(upgrade.response));
        let user: Option<Rc<str>> = upgrade.user.as_deref().map(Rc::from);
        session.phase = match upgrade.endpoint {
            Endpoint::Chat => Phase::Chat { user: user.clone() },
            Endpoint::Echo => Phase::Echo,
        };
        session.last_seen_ms = self.now_ms;
        let ws = &self.config.websocket;
        session.next_ping_ms = self.now_ms + ws.ping_period.as_millis() as u64;
        self.open_websockets += 1;
        self.metrics.connections_total += 1;
        match upgrade.endpoint {
            Endpoint::Chat => {
                self.router.add_session(key, user.as_ref());
                self.metrics.open_chat += 1;
                self.shared
                    .online
                    .store(self.router.online_count(), Ordering::Relaxed);
                info!(
                    "connect user={} peer={peer} online={}",
                    user.as_deref().unwrap_or("-"),
                    self.router.online_count()
                );
            }
            Endpoint::Echo => self.metrics.open_echo += 1,
        }
        self.mark_dirty(index);
        self.rearm_open(index);
        self.apply_actions();
    }

    // ---- WebSocket input ----

    fn process_frame(&mut self, index: usize, buf: &mut [u8]) -> Option<usize> {
        let max = self.config.websocket.max_message_size;
        let session = self.sessions.get_mut(index)?;
        match session.decoder.decode(buf, max) {
            Err(e) => {
                self.protocol_close(index, &e);
                Some(buf.len())
            }
            Ok(Step::Incomplete { needed }) => {
                session.input_needed = needed.unwrap_or(0);
                None
            }
            Ok(Step::Frame { consumed, inbound }) => {
                session.input_needed = 0;
                if let Some(inbound) = inbound {
                    self.on_inbound(index, inbound);
                }
                Some(consumed)
            }
        }
    }

    fn process_closing_frame(&mut self, index: usize, buf: &mut [u8]) -> Option<usize> {
        let max = self.config.websocket.max_message_size;
        let session = self.sessions.get_mut(index)?;
        match session.decoder.decode(buf, max) {
            Err(_) => {
                self.kill(index, CloseReason::Protocol(1002));
                Some(buf.len())
            }
            Ok(Step::Incomplete { needed }) => {
                session.input_needed = needed.unwrap_or(0);
                None
            }
            Ok(Step::Frame { consumed, inbound }) => {
                if let (Some(Inbound::Close(_)), Phase::Closing(closing)) =
                    (inbound, &mut session.phase)
                {
                    closing.await_close_frame = false;
                    self.mark_dirty(index);
                }
                Some(consumed)
            }
        }
    }

    fn on_inbound(&mut self, index: usize, inbound: Inbound<'_>) {
        let echo = matches!(
            self.sessions.get(index).map(|s| &s.phase),
            Some(Phase::Echo)
        );
        match inbound {
            Inbound::Text(payload) if echo => self.echo(index, Kind::Text, payload.bytes()),
            Inbound::Binary(payload) if echo => self.echo(index, Kind::Binary, payload.bytes()),
            Inbound::Text(payload) => self.on_chat_message(index, payload.bytes()),
            Inbound::Binary(_) => {
                self.metrics.messages_in += 1;
                self.reply(
                    index,
                    &message::error_json("binary messages are not supported"),
                );
            }
            Inbound::Ping(data) => {
                let pong = frame::encode(Kind::Pong, data);
                if let Some(session) = self.sessions.get_mut(index) {
                    session.out.push_control(pong);
                    self.mark_dirty(index);
                }
            }
            Inbound::Pong => {}
            Inbound::Close(close) => self.peer_closed(index, close),
        }
    }

    fn echo(&mut self, index: usize, kind: Kind, payload: &[u8]) {
        self.metrics.messages_in += 1;
        self.queue_data(index, frame::encode(kind, payload));
    }

    fn on_chat_message(&mut self, index: usize, bytes: &[u8]) {
        self.metrics.messages_in += 1;
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        let key = session.key;
        let peer = session.peer;
        let user = session.user().cloned();
        let message = match message::parse(bytes) {
            Ok(message) => message,
            Err(e) => return self.reply(index, &message::error_json(&e.to_string())),
        };
        let info = SessionInfo {
            key,
            user: user.as_deref(),
            peer,
        };
        if self.hooks.on_message(&info, &message, &mut self.actions) == Verdict::Consume {
            return self.apply_actions();
        }
        match self.router.route(key, user.as_deref(), &message) {
            Route::Reply(json) => self.reply(index, &json),
            Route::Done => {}
            Route::Deliver(audience, json) => {
                self.deliver(audience, &frame::encode(Kind::Text, &json));
            }
        }
        self.apply_actions();
    }

    fn reply(&mut self, index: usize, json: &[u8]) {
        self.queue_data(index, frame::encode(Kind::Text, json));
    }

    /// Queues one data frame to one session, closing it if it cannot keep up.
    fn queue_data(&mut self, index: usize, wire: Wire) {
        let ws = &self.config.websocket;
        let (max_messages, max_bytes) = (ws.message_buffer_size, ws.max_buffered_bytes);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let key = session.key;
        match session.out.push_data(wire, max_messages, max_bytes) {
            Ok(()) => {
                self.metrics.messages_out += 1;
                self.mark_dirty(index);
            }
            Err(_) => self.slow_consumer(key),
        }
    }

    // ---- delivery ----

    /// Queues the same bytes to every session of the audience; returns how
    /// many sessions got them. No allocation or JSON work per recipient.
    fn deliver(&mut self, audience: Audience<'_>, wire: &Wire) -> usize {
        let ws = &self.config.websocket;
        let (max_messages, max_bytes) = (ws.message_buffer_size, ws.max_buffered_bytes);
        let sessions = &mut self.sessions;
        let dirty = &mut self.dirty;
        let slow = &mut self.slow;
        let mut sent = 0;
        self.router.for_each_member(audience, |key| {
            let Some(session) = sessions.get_mut(key.index as usize) else {
                return;
            };
            if session.key != key {
                return;
            }
            match session.out.push_data(wire.clone(), max_messages, max_bytes) {
                Ok(()) => {
                    sent += 1;
                    if !session.dirty {
                        session.dirty = true;
                        dirty.push(key.index as usize);
                    }
                }
                Err(_) => slow.push(key),
            }
        });
        self.metrics.messages_out += sent as u64;
        if !matches!(audience, Audience::User(_)) {
            self.metrics.broadcasts += 1;
        }
        for key in std::mem::take(&mut self.slow) {
            self.slow_consumer(key);
        }
        sent
    }

    fn push(&mut self, target: &Target, json: &[u8]) -> usize {
        let audience = match target {
            Target::Everyone => Audience::Everyone { except: None },
            Target::User(user) => Audience::User(user),
            Target::Room(room) => Audience::Room { room, except: None },
        };
        self.deliver(audience, &frame::encode(Kind::Text, json))
    }

    // ---- commands from handles and hooks ----

    fn drain_commands(&mut self) {
        self.inbox.rearm();
        self.commands_left = false;
        for _ in 0..COMMAND_BUDGET {
            let Some(command) = self.inbox.next() else {
                return;
            };
            self.on_command(command);
        }
        self.commands_left = true;
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Push {
                target,
                json,
                reply,
            } => {
                let sent = self.push(&target, &json);
                if let Some(reply) = reply {
                    let _ = reply.try_send(sent);
                }
            }
            Command::DisconnectUser(user) => self.disconnect_user(&user),
            Command::OnlineUsers(reply) => {
                let users = self
                    .router
                    .online_users()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                let _ = reply.try_send(users);
            }
            Command::Shutdown => self.begin_shutdown(),
        }
    }

    /// Runs what hooks asked for, after the event that ran them.
    fn apply_actions(&mut self) {
        if self.actions.is_empty() {
            return;
        }
        for command in self.actions.take() {
            self.on_command(command);
        }
    }

    fn disconnect_user(&mut self, user: &str) {
        let mut keys = Vec::new();
        self.router
            .for_each_member(Audience::User(user), |key| keys.push(key));
        for key in keys {
            self.server_close(
                key.index as usize,
                1000,
                "disconnected by server",
                CloseReason::Server,
            );
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline_ms.is_some() {
            return;
        }
        let timeout = self.config.websocket.shutdown_timeout.as_millis() as u64;
        self.shutdown_deadline_ms = Some(self.now_ms + timeout);
        self.accepting = false;
        let _ = self.poll.registry().deregister(&mut self.listener);
        info!(
            "shutting down: closing {} WebSocket sessions",
            self.open_websockets
        );
        let indexes: Vec<usize> = self.sessions.iter().map(|(i, _)| i).collect();
        for index in indexes {
            match self.sessions.get(index).map(|s| &s.phase) {
                Some(Phase::Chat { .. } | Phase::Echo) => {
                    self.server_close(index, 1001, "server shutting down", CloseReason::Shutdown)
                }
                Some(Phase::Http) => self.kill(index, CloseReason::Shutdown),
                _ => {}
            }
        }
    }

    fn on_signals(&mut self) {
        let mut count = 0;
        if let Some(signals) = self.signals.as_mut() {
            count = signals.pending().count();
        }
        if count == 0 {
            return;
        }
        if self.shutdown_deadline_ms.is_some() || count > 1 {
            info!("second signal: exiting now");
            self.shutdown_deadline_ms = Some(self.now_ms);
            self.sessions.clear();
            return;
        }
        info!("signal received: shutting down");
        self.begin_shutdown();
    }

    // ---- closing ----

    /// Takes an open session out of every index (once); status changes now.
    fn unindex(&mut self, index: usize, reason: &CloseReason) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let key = session.key;
        let peer = session.peer;
        let user = match &session.phase {
            Phase::Chat { user } => Some(user.clone()),
            Phase::Echo => None,
            _ => return,
        };
        session.phase = Phase::Closing(Closing::default());
        self.open_websockets -= 1;
        let Some(user) = user else {
            self.metrics.open_echo -= 1;
            return;
        };
        self.router.remove_session(key, user.as_deref());
        self.metrics.open_chat -= 1;
        self.shared
            .online
            .store(self.router.online_count(), Ordering::Relaxed);
        info!(
            "disconnect user={} peer={peer} reason={reason} online={}",
            user.as_deref().unwrap_or("-"),
            self.router.online_count()
        );
        let info = SessionInfo {
            key,
            user: user.as_deref(),
            peer,
        };
        self.hooks.on_disconnect(&info, reason, &mut self.actions);
    }

    /// Enters the closing phase: flush, then wait (bounded) for the peer.
    fn begin_closing(&mut self, index: usize, await_close_frame: bool) {
        let deadline = self.now_ms + self.config.websocket.write_wait.as_millis() as u64;
        self.begin_closing_until(index, await_close_frame, deadline);
    }

    fn begin_closing_until(&mut self, index: usize, await_close_frame: bool, deadline_ms: u64) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session.phase = Phase::Closing(Closing {
            await_close_frame,
            deadline_ms,
            ..Closing::default()
        });
        self.mark_dirty(index);
        self.arm(index, deadline_ms);
    }

    /// A protocol violation: Close with the RFC's code, then half-close.
    fn protocol_close(&mut self, index: usize, error: &DecodeError) {
        debug!("session {index}: {error}");
        let code = error.close_code();
        self.unindex(index, &CloseReason::Protocol(code));
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session.decoder = frame::Decoder::default();
        // Behind what is already queued (the 101 itself may still be there).
        session
            .out
            .push_unbounded(frame::encode_close(code, &error.to_string()));
        self.metrics.close_sent(code);
        // RFC 6455 7.1.7: after failing the connection, stop processing the
        // peer's data (its Close included): flush, half-close, drain to EOF.
        self.begin_closing(index, false);
    }

    /// The server ends a session: what is queued goes first, then Close.
    fn server_close(&mut self, index: usize, code: u16, text: &str, reason: CloseReason) {
        self.unindex(index, &reason);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session.out.push_unbounded(frame::encode_close(code, text));
        self.metrics.close_sent(code);
        let deadline = match reason {
            CloseReason::Shutdown => self.shutdown_deadline_ms,
            _ => None,
        };
        let deadline =
            deadline.unwrap_or(self.now_ms + self.config.websocket.write_wait.as_millis() as u64);
        self.begin_closing_until(index, true, deadline);
    }

    fn slow_consumer(&mut self, key: SessionKey) {
        let index = key.index as usize;
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        if session.key != key || !session.is_open_websocket() {
            return;
        }
        warn!(
            "slow consumer user={} peer={}: {} messages / {} bytes queued; closing with 1013",
            session.user().map_or("-", |u| &**u),
            session.peer,
            session.out.queued_messages(),
            session.out.queued_bytes()
        );
        self.metrics.slow_consumer_closes += 1;
        self.server_close(index, 1013, "slow consumer", CloseReason::SlowConsumer);
    }

    fn peer_closed(&mut self, index: usize, close: Option<(u16, String)>) {
        let code = close.as_ref().map(|(code, _)| *code);
        self.unindex(index, &CloseReason::Client(code));
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        // What was queued before their Close still goes out, then ours;
        // nothing follows it because the session left every index.
        let reply = match code {
            Some(code) => frame::encode_close(code, ""),
            None => frame::encode(Kind::Close, b""),
        };
        session.out.push_unbounded(reply);
        self.metrics.close_sent(code.unwrap_or(1000));
        self.begin_closing(index, false);
    }

    fn on_eof(&mut self, index: usize) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        match &mut session.phase {
            Phase::Closing(closing) => {
                closing.eof = true;
                closing.await_close_frame = false;
                self.mark_dirty(index);
            }
            Phase::Http if !session.out.is_empty() => {
                // A request followed by FIN still gets its response.
                self.begin_closing(index, false);
                if let Some(Phase::Closing(closing)) =
                    self.sessions.get_mut(index).map(|s| &mut s.phase)
                {
                    closing.eof = true;
                }
            }
            _ => self.kill(index, CloseReason::Client(None)),
        }
    }

    /// Drops the connection at the end of this pass.
    fn kill(&mut self, index: usize, reason: CloseReason) {
        self.unindex(index, &reason);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        if !matches!(session.phase, Phase::Dead) {
            session.phase = Phase::Dead;
            self.reap.push(index);
        }
    }

    fn reap_closed(&mut self) {
        for index in std::mem::take(&mut self.reap) {
            if let Some(session) = self.sessions.try_remove(index) {
                if let Some((timer, _)) = session.timer {
                    self.wheel.cancel(timer);
                }
                // Dropping the stream closes the descriptor, which also
                // removes it from the poll.
            }
        }
    }

    // ---- writing ----

    fn mark_dirty(&mut self, index: usize) {
        if let Some(session) = self.sessions.get_mut(index) {
            if !session.dirty {
                session.dirty = true;
                self.dirty.push(index);
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            self.flush_one(index);
        }
        dirty.clear();
        // Keep the list's capacity for the next pass.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush_one(&mut self, index: usize) {
        let write_wait = self.config.websocket.write_wait.as_millis() as u64;
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session.dirty = false;
        if matches!(session.phase, Phase::Dead) {
            return;
        }
        match session.flush() {
            Ok((Flushed::Drained, n)) => {
                self.metrics.bytes_out += n as u64;
                session.stalled_since_ms = None;
                if session.writable_interest {
                    session.writable_interest = false;
                    let token = Token(FIRST_SESSION + index);
                    let _ = self.poll.registry().reregister(
                        &mut session.socket,
                        token,
                        Interest::READABLE,
                    );
                }
                self.after_drain(index);
            }
            Ok((Flushed::Pending, n)) => {
                self.metrics.bytes_out += n as u64;
                if n > 0 || session.stalled_since_ms.is_none() {
                    session.stalled_since_ms = Some(self.now_ms);
                }
                if !session.writable_interest {
                    session.writable_interest = true;
                    let token = Token(FIRST_SESSION + index);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    let _ = self
                        .poll
                        .registry()
                        .reregister(&mut session.socket, token, interest);
                }
                let stall_deadline = self.now_ms + write_wait;
                self.arm(index, stall_deadline);
            }
            Err(e) => self.kill(index, CloseReason::Io(e.to_string())),
        }
    }

    /// A closing session whose queue is empty moves on: half-close, or drop.
    fn after_drain(&mut self, index: usize) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let Phase::Closing(closing) = &mut session.phase else {
            return;
        };
        if closing.await_close_frame {
            return;
        }
        if closing.eof {
            return self.kill(index, CloseReason::Finished);
        }
        if !closing.fin_sent {
            closing.fin_sent = true;
            // Half-close and wait for the peer's FIN: closing with unread
            // input would send RST and could destroy the response in flight.
            if session.socket.shutdown(std::net::Shutdown::Write).is_err() {
                self.kill(index, CloseReason::Finished);
            }
        }
    }

    // ---- timers ----

    /// Makes sure the session's timer fires no later than `at_ms`.
    fn arm(&mut self, index: usize, at_ms: u64) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        if let Some((timer, armed_at)) = session.timer {
            if armed_at <= at_ms {
                return;
            }
            self.wheel.cancel(timer);
        }
        let timer = self
            .wheel
            .insert(self.start + Duration::from_millis(at_ms), session.key);
        session.timer = Some((timer, at_ms));
    }

    fn rearm_open(&mut self, index: usize) {
        let ws = &self.config.websocket;
        let (pong_wait, write_wait) = (
            ws.pong_wait.as_millis() as u64,
            ws.write_wait.as_millis() as u64,
        );
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        let mut next = session.next_ping_ms.min(session.last_seen_ms + pong_wait);
        if let Some(stalled) = session.stalled_since_ms {
            next = next.min(stalled + write_wait);
        }
        self.arm(index, next);
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.poll(now, &mut due);
        for key in due.drain(..) {
            let index = key.index as usize;
            match self.sessions.get_mut(index) {
                Some(session) if session.key == key => {
                    session.timer = None;
                    self.on_timer(index);
                }
                _ => {}
            }
        }
        self.due = due;
    }

    fn on_timer(&mut self, index: usize) {
        let ws = &self.config.websocket;
        let handshake = ws.handshake_timeout.as_millis() as u64;
        let pong_wait = ws.pong_wait.as_millis() as u64;
        let write_wait = ws.write_wait.as_millis() as u64;
        let ping_period = ws.ping_period.as_millis() as u64;
        let now = self.now_ms;
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        match &session.phase {
            Phase::Http => {
                let deadline = session.last_seen_ms + handshake;
                if now < deadline {
                    return self.arm(index, deadline);
                }
                if !session.pending_input.is_empty() {
                    self.metrics.handshake_failed(HandshakeFailure::Timeout);
                }
                debug!("session {index}: no complete request within handshake_timeout");
                self.kill(index, CloseReason::Timeout);
            }
            Phase::Chat { .. } | Phase::Echo => {
                if now >= session.last_seen_ms + pong_wait {
                    self.metrics.pong_timeouts += 1;
                    return self.kill(index, CloseReason::Timeout);
                }
                if session
                    .stalled_since_ms
                    .is_some_and(|s| now >= s + write_wait)
                {
                    return self.kill(index, CloseReason::WriteStalled);
                }
                if now >= session.next_ping_ms {
                    session.out.push_control(self.ping.clone());
                    session.next_ping_ms = now + ping_period;
                    self.mark_dirty(index);
                }
                self.rearm_open(index);
            }
            Phase::Closing(closing) => {
                let deadline = closing.deadline_ms;
                if now >= deadline {
                    return self.kill(index, CloseReason::Finished);
                }
                self.arm(index, deadline);
            }
            Phase::Dead => {}
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
