//! Accepting: takes every waiting connection off the listener into a new
//! session (plain or TLS, as configured), refuses past
//! `max_http_connections` with a 503 (after closing the connection idle
//! the longest, if one is), and backs off when the process runs out of
//! descriptors instead of spinning.
//!
//! Joins [`Admission`] (the listener, the caps, the client's address) to
//! [`Connections`] (the new session), the clock (its handshake deadline)
//! and the poll (its registration).
//!
//! [`Admission`]: super::admission::Admission
//! [`Connections`]: super::connections::Connections

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::upkeep::Upkeep;
use super::FIRST_SESSION;
use crate::hooks::CloseReason;
use crate::transport::Transport;

impl Upkeep<'_> {
    pub(super) fn accept_all(&mut self) {
        while let Some((stream, peer)) = self.admission.accept(self.clock.now_ms) {
            self.add_session(stream, peer);
        }
    }

    fn add_session(&mut self, mut stream: TcpStream, peer: std::net::SocketAddr) {
        if self.admission.http_at_capacity() && !self.evict_idle_http() {
            let scratch = &mut self.conns.read_buf;
            return self
                .admission
                .refuse_http_connection(stream, peer, self.metrics, scratch);
        }
        self.admission.http_has_room();
        let scratch = &mut self.conns.read_buf;
        let Some(admitted) = self
            .admission
            .admit(&mut stream, peer, self.metrics, scratch)
        else {
            return;
        };
        // Small frames must not wait for Nagle: latency is the product.
        let _ = stream.set_nodelay(true);
        let tls = match self
            .admission
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
        let index = self.conns.next_index();
        let token = Token(FIRST_SESSION + index);
        if let Err(e) = self
            .registry
            .register(transport.socket_mut(), token, Interest::READABLE)
        {
            warn!("cannot register connection from {peer}: {e}");
            return;
        }
        let now = self.clock.now_ms;
        let session = self.conns.insert(transport, peer, now);
        admitted.apply(session);
        self.clock.arm(session, now + self.setup.rules.handshake_ms);
        self.admission.http_counted();
        self.admission.http_idle(&self.conns.sessions, index);
    }

    /// At `max_http_connections`: closes the connection idle the longest
    /// to make room (its slot is free at once). `false`: every slot is busy
    /// with a request in progress.
    fn evict_idle_http(&mut self) -> bool {
        loop {
            let Some(key) = self.admission.oldest_idle(&self.conns.sessions) else {
                return false;
            };
            let index = key.index as usize;
            let Some(session) = self.conns.sessions.get_mut(index) else {
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
            self.admission.http_released(session);
            self.metrics.http_evictions += 1;
            // Never upgraded, so no hook hears the reason.
            self.conns.drop_session(index, CloseReason::Server);
            return true;
        }
    }
}
