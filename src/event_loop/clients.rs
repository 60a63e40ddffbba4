//! Client addresses on connections (docs/proxies.md): where the
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
//! The decisions and the counts are [`Admission`]'s; this step applies a
//! refusal to the session (503 or close) and counts it.
//!
//! [`Admission`]: super::admission::Admission

use log::debug;

use super::admission::{Admitted, TOO_MANY};
use super::upkeep::Upkeep;
use crate::hooks::CloseReason;
use crate::http::{Request, Response};
use crate::metrics::HandshakeFailure;
use crate::session::Session;

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

impl Upkeep<'_> {
    /// A whole PROXY header was read: the client is its source, unless
    /// that is a trusted proxy forwarding in a header.
    pub(super) fn on_proxy_header(&mut self, index: usize) {
        let Some(session) = self.conns.sessions.get(index) else {
            return;
        };
        if !self.admission.client_from_proxy_header(session) {
            return;
        }
        // Over TLS nothing can be answered before the handshake.
        let answer = self.admission.tls.is_none();
        self.count_client(index, answer);
    }

    /// No valid PROXY header where one is required: closed unanswered.
    pub(super) fn refuse_proxy_header(&mut self, index: usize, why: &'static str) {
        self.metrics.handshake_failed(HandshakeFailure::ProxyHeader);
        if let Some(session) = self.conns.sessions.get(index) {
            debug!("peer={}: {why}: closed", session.peer());
        }
        self.conns.drop_session(index, CloseReason::Server);
    }

    /// A request head from a trusted proxy names the client: take it, and
    /// move the connection's count to it. `false`: refused (503 queued).
    pub(super) fn client_from_request(&mut self, index: usize, request: &Request) -> bool {
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return false;
        };
        if !self.admission.client_from_request(session, request) {
            return true;
        }
        self.count_client(index, true)
    }

    /// Counts the session's client; over the limit it is refused, with a
    /// 503 when `answer`, else closed. `false`: refused.
    fn count_client(&mut self, index: usize, answer: bool) -> bool {
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return false;
        };
        if self.admission.count(session) {
            return true;
        }
        debug!("peer={}: {TOO_MANY}", session.client);
        self.metrics.handshake_failed(HandshakeFailure::IpLimit);
        if answer {
            let response = Response::error(503, TOO_MANY).closing();
            self.respond(index, &response, false);
        } else {
            self.conns.drop_session(index, CloseReason::Server);
        }
        false
    }
}
