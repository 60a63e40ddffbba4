//! TLS handshakes per pass: a ClientHello costs the loop a signature (about
//! 0.7 ms with RSA 2048, 0.1 ms with ECDSA P-256; BENCHMARKS.md), so a flood
//! of them would stall every established session. Each pass reads at most
//! [`HANDSHAKES_PER_PASS`] sessions whose handshake is in progress; the
//! others wait, oldest first, for the next passes (the loop polls without
//! sleeping meanwhile), while established sessions are read every pass.
//! `handshake_timeout` and `max_http_connections` bound how many wait.
//! [`Handshakes`] is part of `Admission`; the step here reads the sessions
//! whose turn came.

use std::collections::VecDeque;

use slab::Slab;

use super::EventLoop;
use crate::audience::SessionKey;
use crate::metrics::Metrics;
use crate::session::Session;

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

    /// A new pass: a fresh budget.
    pub(super) fn new_pass(&mut self) {
        self.left = HANDSHAKES_PER_PASS;
    }

    /// The session that waited longest, if the budget allows one more
    /// read (spent here).
    pub(super) fn next_waiting(&mut self, sessions: &mut Slab<Session>) -> Option<usize> {
        while self.left > 0 {
            let key = self.waiting.pop_front()?;
            let index = key.index as usize;
            let Some(session) = sessions.get_mut(index) else {
                continue;
            };
            if session.key != key {
                continue;
            }
            session.handshake_waiting = false;
            self.left -= 1;
            return Some(index);
        }
        None
    }

    /// Whether a readable session may be read now; a session in its TLS
    /// handshake past this pass's budget waits (queued once).
    pub(super) fn may_read_now(&mut self, session: &mut Session, metrics: &mut Metrics) -> bool {
        if session.handshake_waiting {
            return false;
        }
        if !session.tls_handshaking() {
            return true;
        }
        if self.left > 0 {
            self.left -= 1;
            return true;
        }
        session.handshake_waiting = true;
        self.waiting.push_back(session.key);
        metrics.handshakes_deferred += 1;
        false
    }
}

impl EventLoop {
    /// A new pass: a fresh budget, spent first on the sessions that waited
    /// longest.
    pub(super) fn handshakes_pass(&mut self) {
        self.admission.handshakes.new_pass();
        while let Some(index) = self
            .admission
            .handshakes
            .next_waiting(&mut self.conns.sessions)
        {
            // The edge that announced its bytes has passed: read to the end.
            self.read_ready(index, true);
        }
    }
}
