//! Accepting: takes every waiting connection off the listener into a new
//! session (plain or TLS, as configured), refuses past
//! `max_http_connections` with a 503, and backs off when the process runs
//! out of descriptors instead of spinning.

use std::io;

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{EventLoop, ACCEPT_BACKOFF_MS, FIRST_SESSION};
use crate::audience::SessionKey;
use crate::hooks::CloseReason;
use crate::http::Response;
use crate::metrics::HandshakeFailure;
use crate::session::Session;
use crate::transport::Transport;

impl EventLoop {
    pub(super) fn accept_all(&mut self) {
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

    fn add_session(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr) {
        if self.http_connections >= self.config.websocket.max_http_connections
            && !self.evict_idle_http()
        {
            return self.refuse_http_connection(stream, peer);
        }
        self.http_full = false;
        let Some(admitted) = self.admit(&mut stream, peer) else {
            return;
        };
        // Small frames must not wait for Nagle: latency is the product.
        let _ = stream.set_nodelay(true);
        let entry = self.sessions.vacant_entry();
        let index = entry.key();
        let tls = match self
            .tls
            .as_ref()
            .map(|c| rustls::ServerConnection::new(c.clone()))
        {
            None => None,
            Some(Ok(conn)) => Some(conn),
            Some(Err(e)) => {
                warn!("cannot start TLS for {peer}: {e}");
                return;
            }
        };
        let mut transport = Transport::new(stream, tls);
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
        let mut session = Session::new(transport, key, peer, self.now_ms);
        admitted.apply(&mut session);
        entry.insert(session);
        self.http_connections += 1;
        self.http_idle(index);
        self.arm(index, self.now_ms + self.rules.handshake_ms);
    }

    /// Notes that a pre-upgrade connection is idle now (accepted, or its
    /// response written with no request pending), for [`evict_idle_http`].
    ///
    /// [`evict_idle_http`]: EventLoop::evict_idle_http
    pub(super) fn http_idle(&mut self, index: usize) {
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        let (key, Some(since)) = (session.key, session.http_idle_since()) else {
            return;
        };
        let sessions = &self.sessions;
        self.idle_http
            .push(key, since, self.http_connections, |key, since| {
                still_idle(sessions, key, since)
            });
    }

    /// At `max_http_connections`: closes the connection idle the longest
    /// to make room (its slot is free at once). `false`: every slot is busy
    /// with a request in progress.
    fn evict_idle_http(&mut self) -> bool {
        loop {
            let sessions = &self.sessions;
            let Some(key) = self
                .idle_http
                .take_oldest(|key, since| still_idle(sessions, key, since))
            else {
                return false;
            };
            let index = key.index as usize;
            let Some(session) = self.sessions.get_mut(index) else {
                continue;
            };
            // Bytes the loop has not read yet (they arrived in this pass):
            // a request is starting, so this connection is busy.
            if session
                .socket_mut()
                .peek(&mut [0u8; 1])
                .is_ok_and(|n| n > 0)
            {
                continue;
            }
            debug!(
                "max_http_connections: closing idle connection from {}",
                session.peer()
            );
            if session.uncount_http() {
                self.http_connections -= 1;
            }
            self.metrics.http_evictions += 1;
            // Never upgraded, so no hook hears the reason.
            self.kill(index, CloseReason::Server);
            return true;
        }
    }

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
}

/// `key` is still the same pre-upgrade connection, idle since `since`.
fn still_idle(sessions: &slab::Slab<Session>, key: SessionKey, since: u64) -> bool {
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
