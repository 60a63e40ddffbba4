//! Client addresses on connections (README "Behind a proxy"): where the
//! loop learns who is behind a connection and applies
//! `max_connections_per_ip`, using the pure policy in `crate::client_ip`.
//!
//! When the address is known, and so when the limit applies:
//!
//! - **no trusted proxy in front** (the peer is not in `trusted_proxies`):
//!   the TCP peer, at accept, before a session exists (refused: 503 and
//!   close; over TLS, close);
//! - **`proxy_protocol`**: once the PROXY header is read (refused: 503 and
//!   close; over TLS, close, as the handshake has not happened); a header
//!   from an untrusted peer, a missing or broken one: closed at once;
//! - **a trusted peer that forwards in a header** (also when the PROXY
//!   header named a trusted address): once each request head is parsed,
//!   since a proxy may carry several clients' requests on one keep-alive
//!   connection; the count moves with the client (refused: 503, close).
//!
//! A connection is counted from then until it is reaped, upgraded or not.
//! Touches the sessions' `client`, `peer` and `ip_counted`, the per-address
//! counts and the refusal metrics; nothing else.

use std::io::{Read, Write};
use std::net::SocketAddr;

use log::debug;
use mio::net::TcpStream;

use super::EventLoop;
use crate::client_ip::limit::Key;
use crate::hooks::CloseReason;
use crate::http::{Request, Response};
use crate::metrics::HandshakeFailure;
use crate::session::Session;

/// The answer to a client over `max_connections_per_ip`.
const TOO_MANY: &str = "too many connections from this address";

/// What a new connection must do before its client is known.
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

impl Admitted {
    /// Sets up a new session accordingly.
    pub(super) fn apply(self, session: &mut Session) {
        match self {
            Admitted::Uncounted | Admitted::AwaitHead => {}
            Admitted::Counted => session.ip_counted = true,
            Admitted::AwaitProxyHeader => session.await_proxy_header(),
        }
    }
}

impl EventLoop {
    /// At accept: `None` when the connection was refused (and answered, if
    /// an answer is possible); dropping `stream` then closes it.
    pub(super) fn admit(&mut self, stream: &mut TcpStream, peer: SocketAddr) -> Option<Admitted> {
        let ip = peer.ip().to_canonical();
        let clients = &mut self.clients;
        if clients.proxy_protocol {
            if clients.trusted.contains(ip) {
                return Some(Admitted::AwaitProxyHeader);
            }
            self.metrics.handshake_failed(HandshakeFailure::ProxyHeader);
            debug!("{peer} is not in app.trusted_proxies and may not send a PROXY header: closed");
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
        self.metrics.handshake_failed(HandshakeFailure::IpLimit);
        debug!("peer={ip}: {TOO_MANY}");
        if self.tls.is_none() {
            // One write into a fresh socket's buffer, as at
            // `max_http_connections`.
            let response = Response::error(503, TOO_MANY).closing().to_bytes(false);
            let _ = stream.write(&response);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            // Unread input would turn the close into a reset that can
            // destroy the 503 in flight.
            let _ = stream.read(&mut self.read_buf);
        }
        None
    }

    /// A whole PROXY header was read: the client is its source, unless
    /// that is a trusted proxy forwarding in a header.
    pub(super) fn on_proxy_header(&mut self, index: usize) {
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        if self.clients.reads_headers_from(session.peer().ip()) {
            return;
        }
        // Over TLS nothing can be answered before the handshake.
        let answer = self.tls.is_none();
        self.count_client(index, answer);
    }

    /// No valid PROXY header where one is required: closed unanswered.
    pub(super) fn refuse_proxy_header(&mut self, index: usize, why: &'static str) {
        self.metrics.handshake_failed(HandshakeFailure::ProxyHeader);
        if let Some(session) = self.sessions.get(index) {
            debug!("peer={}: {why}: closed", session.peer());
        }
        self.kill(index, CloseReason::Server);
    }

    /// A request head from a trusted proxy names the client: take it, and
    /// move the connection's count to it. `false`: refused (503 queued).
    pub(super) fn client_from_request(&mut self, index: usize, request: &Request) -> bool {
        let Some(session) = self.sessions.get_mut(index) else {
            return false;
        };
        let peer = session.peer().ip();
        if !self.clients.reads_headers_from(peer) {
            return true;
        }
        let client = self.clients.client_of(peer, request);
        if session.ip_counted {
            if Key::of(client) == Key::of(session.client) {
                session.client = client;
                return true;
            }
            self.clients.per_ip.release(session.client);
            session.ip_counted = false;
        }
        session.client = client;
        self.count_client(index, true)
    }

    /// Counts the session's client; over the limit it is refused, with a
    /// 503 when `answer`, else closed. `false`: refused.
    fn count_client(&mut self, index: usize, answer: bool) -> bool {
        let Some(session) = self.sessions.get_mut(index) else {
            return false;
        };
        if !self.clients.per_ip.enabled() {
            return true;
        }
        if self.clients.per_ip.admit(session.client) {
            session.ip_counted = true;
            return true;
        }
        debug!("peer={}: {TOO_MANY}", session.client);
        self.metrics.handshake_failed(HandshakeFailure::IpLimit);
        if answer {
            let response = Response::error(503, TOO_MANY).closing();
            self.respond(index, &response, false);
        } else {
            self.kill(index, CloseReason::Server);
        }
        false
    }

    /// A reaped session's count goes.
    pub(super) fn release_client(&mut self, session: &Session) {
        if session.ip_counted {
            self.clients.per_ip.release(session.client);
        }
    }
}
