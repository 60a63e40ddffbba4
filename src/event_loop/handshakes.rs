//! TLS handshakes per pass: a ClientHello costs the loop a signature (about
//! 0.7 ms with RSA 2048, 0.1 ms with ECDSA P-256; BENCHMARKS.md), so a flood
//! of them would stall every established session. Each pass reads at most
//! [`HANDSHAKES_PER_PASS`] sessions whose handshake is in progress; the
//! others wait, oldest first, for the next passes (the loop polls without
//! sleeping meanwhile), while established sessions are read every pass.
//! `handshake_timeout` and `max_http_connections` bound how many wait.

use std::collections::VecDeque;

use super::EventLoop;
use crate::audience::SessionKey;

/// Handshake reads per pass: with RSA about 3 ms of signatures at most
/// between two reads of an established session.
pub(super) const HANDSHAKES_PER_PASS: usize = 4;

/// This pass's handshake budget and the sessions waiting for one.
#[derive(Debug, Default)]
pub(super) struct Handshakes {
    left: usize,
    waiting: VecDeque<SessionKey>,
}

impl Handshakes {
    /// Sessions wait: the next pass must not sleep.
    pub(super) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }
}

impl EventLoop {
    /// A new pass: a fresh budget, spent first on the sessions that waited
    /// longest.
    pub(super) fn handshakes_pass(&mut self) {
        self.handshakes.left = HANDSHAKES_PER_PASS;
        while self.handshakes.left > 0 {
            let Some(key) = self.handshakes.waiting.pop_front() else {
                return;
            };
            let index = key.index as usize;
            let Some(session) = self.sessions.get_mut(index) else {
                continue;
            };
            if session.key != key {
                continue;
            }
            session.handshake_waiting = false;
            self.handshakes.left -= 1;
            // The edge that announced its bytes has passed: read to the end.
            self.read_ready(index, true);
        }
    }

    /// Whether a readable session may be read now; a session in its TLS
    /// handshake past this pass's budget waits (queued once).
    pub(super) fn may_read_now(&mut self, index: usize) -> bool {
        let Some(session) = self.sessions.get_mut(index) else {
            return false;
        };
        if session.handshake_waiting {
            return false;
        }
        if !session.tls_handshaking() {
            return true;
        }
        if self.handshakes.left > 0 {
            self.handshakes.left -= 1;
            return true;
        }
        session.handshake_waiting = true;
        self.handshakes.waiting.push_back(session.key);
        self.metrics.handshakes_deferred += 1;
        false
    }
}
