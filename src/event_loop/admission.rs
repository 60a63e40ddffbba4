//! Admission: what stands between the listener and a session. Owns the
//! listener and its back-off (out of descriptors: retry after a pause,
//! logged once per streak), the count of connections not (yet) upgraded
//! for `max_http_connections` with the idle ones that give up their slot,
//! who is behind each connection (`client_ip`: trusted proxies, the
//! counts of `max_connections_per_ip`), the TLS handshake budget per pass
//! (`handshakes.rs`) and the TLS config new connections use.
//!
//! Touches the sessions only through what it is given: their
//! `counted_http`, idle time, `client`/`ip_counted` and handshake flag.
//! The steps that join it to the other parts are `accept.rs`,
//! `clients.rs` and `handshakes.rs`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use slab::Slab;

use super::handshakes::Handshakes;
use crate::audience::SessionKey;
use crate::client_ip::limit::Key;
use crate::client_ip::Clients;
use crate::config::Config;
use crate::http::{Request, Response};
use crate::http_slots::IdleHttp;
use crate::metrics::{HandshakeFailure, Metrics};
use crate::session::Session;

/// Pause before accepting again after the process ran out of descriptors.
const ACCEPT_BACKOFF_MS: u64 = 100;
/// The answer to a client over `max_connections_per_ip`.
pub(super) const TOO_MANY: &str = "too many connections from this address";

/// The listener, the connection caps and who is behind each connection.
pub(super) struct Admission {
    listener: TcpListener,
    /// Still accepting (false once shutdown began).
    accepting: bool,
    /// Out of descriptors: accept again at this loop-clock time.
    retry_ms: Option<u64>,
    /// The last accept failed (logged once per streak).
    failing: bool,
    /// `max_http_connections`: the cap, and the connections not (yet)
    /// upgraded that count against it.
    max_http: usize,
    http_connections: usize,
    /// The last accept was refused at `max_http_connections` (logged once per streak).
    http_full: bool,
    /// Pre-upgrade connections in the order they became idle: at
    /// `max_http_connections` the oldest gives up its slot.
    idle_http: IdleHttp,
    /// TLS handshake reads left this pass, and the sessions waiting for one.
    pub(super) handshakes: Handshakes,
    /// Who is behind each connection: the proxy policy and the counts of
    /// `max_connections_per_ip` (see `clients.rs`).
    pub(super) clients: Clients,
    /// What new connections' TLS uses; `None`: plain TCP. SIGHUP replaces it.
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
}

impl Admission {
    pub(super) fn new(
        listener: TcpListener,
        config: &Config,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Admission {
        Admission {
            listener,
            accepting: true,
            retry_ms: None,
            failing: false,
            max_http: config.websocket.max_http_connections,
            http_connections: 0,
            http_full: false,
            idle_http: IdleHttp::default(),
            handshakes: Handshakes::default(),
            clients: Clients::new(
                config.app.trusted_proxies.clone(),
                config.app.client_ip_header,
                config.app.proxy_protocol,
                config.websocket.max_connections_per_ip,
            ),
            tls,
        }
    }

    // ---- the listener ----

    /// Whether the accept step runs this pass: the listener was ready, or
    /// the back-off is over.
    pub(super) fn accept_due(&self, listener_ready: bool, now_ms: u64) -> bool {
        listener_ready || self.retry_ms.is_some_and(|at| at <= now_ms)
    }

    /// When to try accepting again after running out of descriptors.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.retry_ms
    }

    /// The next waiting connection, until the listener has none (or the
    /// process ran out of descriptors: then the back-off starts).
    pub(super) fn accept(&mut self, now_ms: u64) -> Option<(TcpStream, SocketAddr)> {
        self.retry_ms = None;
        while self.accepting {
            match self.listener.accept() {
                Ok(accepted) => {
                    if std::mem::take(&mut self.failing) {
                        info!("accepting connections again");
                    }
                    return Some(accepted);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // EMFILE/ENFILE and the like: the backlog keeps the
                    // connections; retry after a pause instead of spinning.
                    // Logged once per streak, not every 100 ms.
                    if !std::mem::replace(&mut self.failing, true) {
                        warn!("accept failed ({e}); retrying every {ACCEPT_BACKOFF_MS} ms, open sessions keep working");
                    }
                    self.retry_ms = Some(now_ms + ACCEPT_BACKOFF_MS);
                    return None;
                }
            }
        }
        None
    }

    /// Shutdown: no more connections.
    pub(super) fn stop(&mut self, registry: &mio::Registry) {
        self.accepting = false;
        let _ = registry.deregister(&mut self.listener);
    }

    // ---- max_http_connections ----

    /// Every slot is taken (an idle one may still be evicted).
    pub(super) fn http_at_capacity(&self) -> bool {
        self.http_connections >= self.max_http
    }

    /// A new connection found a slot: a streak of refusals ended.
    pub(super) fn http_has_room(&mut self) {
        self.http_full = false;
    }

    /// A new connection took a slot.
    pub(super) fn http_counted(&mut self) {
        self.http_connections += 1;
    }

    /// The session's slot is free (upgraded, evicted or reaped).
    pub(super) fn http_released(&mut self, session: &mut Session) {
        if session.uncount_http() {
            self.http_connections -= 1;
        }
    }

    /// Notes that a pre-upgrade connection is idle now (accepted, or its
    /// response written with no request pending), for [`Admission::oldest_idle`].
    pub(super) fn http_idle(&mut self, sessions: &Slab<Session>, index: usize) {
        let Some(session) = sessions.get(index) else {
            return;
        };
        let (key, Some(since)) = (session.key, session.http_idle_since()) else {
            return;
        };
        self.idle_http
            .push(key, since, self.http_connections, |key, since| {
                still_idle(sessions, key, since)
            });
    }

    /// The pre-upgrade connection idle the longest, still idle.
    pub(super) fn oldest_idle(&mut self, sessions: &Slab<Session>) -> Option<SessionKey> {
        self.idle_http
            .take_oldest(|key, since| still_idle(sessions, key, since))
    }

    /// At `max_http_connections`: 503 and close, without a session. The
    /// answer fits any fresh socket's send buffer, so one write suffices.
    pub(super) fn refuse_http_connection(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        metrics: &mut Metrics,
        scratch: &mut [u8],
    ) {
        metrics.handshake_failed(HandshakeFailure::HttpCapacity);
        let max = self.max_http;
        if self.tls.is_some() {
            // A 503 would need a TLS handshake first: the close says it.
            if !std::mem::replace(&mut self.http_full, true) {
                warn!(
                    "max_http_connections ({max}) reached: closing new connections (first: {peer})"
                );
            }
            return;
        }
        if !std::mem::replace(&mut self.http_full, true) {
            warn!("max_http_connections ({max}) reached: refusing connections with 503 (first: {peer})");
        }
        answer_and_close(&mut stream, "too many connections", scratch);
    }

    // ---- client addresses and max_connections_per_ip ----

    /// At accept, before a session exists: how its client will be known;
    /// `None` when the connection was refused (and answered, if an answer
    /// is possible); dropping `stream` then closes it.
    pub(super) fn admit(
        &mut self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        metrics: &mut Metrics,
        scratch: &mut [u8],
    ) -> Option<Admitted> {
        let ip = peer.ip().to_canonical();
        let clients = &mut self.clients;
        if clients.proxy_protocol {
            if clients.trusted.contains(ip) {
                return Some(Admitted::AwaitProxyHeader);
            }
            metrics.handshake_failed(HandshakeFailure::ProxyHeader);
            log::debug!(
                "{peer} is not in app.trusted_proxies and may not send a PROXY header: closed"
            );
            return None;
        }
        if clients.reads_headers_from(ip) {
            return Some(Admitted::AwaitHead);
        }
        if !clients.per_ip.enabled() {
            return Some(Admitted::Uncounted);
        }
        if clients.per_ip.admit(ip) {
            return Some(Admitted::Counted);
        }
        metrics.handshake_failed(HandshakeFailure::IpLimit);
        log::debug!("peer={ip}: {TOO_MANY}");
        if self.tls.is_none() {
            // One write into a fresh socket's buffer, as at
            // `max_http_connections`.
            answer_and_close(stream, TOO_MANY, scratch);
        }
        None
    }

    /// A request head from a trusted proxy names the session's client:
    /// takes it, moving the connection's count to it when it changed.
    /// `true`: the client must be counted now ([`Admission::count`]).
    pub(super) fn client_from_request(&mut self, session: &mut Session, request: &Request) -> bool {
        let peer = session.peer().ip();
        if !self.clients.reads_headers_from(peer) {
            return false;
        }
        let client = self.clients.client_of(peer, request);
        if session.ip_counted {
            if Key::of(client) == Key::of(session.client) {
                session.client = client;
                return false;
            }
            self.clients.per_ip.release(session.client);
            session.ip_counted = false;
        }
        session.client = client;
        true
    }

    /// The PROXY header named the session's client: `true` when it must
    /// be counted now (it is not a trusted proxy forwarding in a header).
    pub(super) fn client_from_proxy_header(&self, session: &Session) -> bool {
        !self.clients.reads_headers_from(session.peer().ip())
    }

    /// Counts the session's client against `max_connections_per_ip`;
    /// `false`: over the limit (the caller refuses it).
    pub(super) fn count(&mut self, session: &mut Session) -> bool {
        if !self.clients.per_ip.enabled() {
            return true;
        }
        if self.clients.per_ip.admit(session.client) {
            session.ip_counted = true;
            return true;
        }
        false
    }

    /// A reaped session gives back its slot and its client's count.
    pub(super) fn release(&mut self, session: &mut Session) {
        self.http_released(session);
        if session.ip_counted {
            self.clients.per_ip.release(session.client);
        }
    }
}

/// Writes a closing 503 to a fresh socket and half-closes it.
fn answer_and_close(stream: &mut TcpStream, why: &str, scratch: &mut [u8]) {
    let response = Response::error(503, why).closing().to_bytes(false);
    let _ = stream.write(&response);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Whatever the client sent already: dropping unread input would
    // reset the connection and could destroy the 503 in flight.
    let _ = stream.read(scratch);
}

/// `key` is still the same pre-upgrade connection, idle since `since`.
fn still_idle(sessions: &Slab<Session>, key: SessionKey, since: u64) -> bool {
    sessions
        .get(key.index as usize)
        .is_some_and(|s| s.key == key && s.http_idle_since() == Some(since))
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What a new connection must do before its client is known (applied to
/// the session by `clients.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admitted {
    /// The client is the peer and is not counted (the limit is off).
    Uncounted,
    /// The client is the peer and was counted.
    Counted,
    /// Read the PROXY header first.
    AwaitProxyHeader,
    /// A trusted proxy: the client comes with each request head.
    AwaitHead,
}
