//! Timers: the wheel is the clock's (`clock.rs`); when a session's entry
//! fires, the session says which of its deadlines passed
//! (`Session::on_timer`) and this step applies that: arm again, write a
//! Ping, or drop the connection. History and stream marks expire here too.

use log::debug;

use super::EventLoop;
use crate::hooks::CloseReason;
use crate::metrics::HandshakeFailure;
use crate::session::{Expiry, Fired};

impl EventLoop {
    /// Makes sure the session's timer fires no later than `at_ms`.
    pub(super) fn arm(&mut self, index: usize, at_ms: u64) {
        if let Some(session) = self.conns.sessions.get_mut(index) {
            self.clock.arm(session, at_ms);
        }
    }

    /// Arms an open session for its next Ping, silence or stall deadline.
    pub(super) fn rearm_open(&mut self, index: usize) {
        if let Some(session) = self.conns.sessions.get_mut(index) {
            let at = session.open_deadline(&self.setup.rules);
            self.clock.arm(session, at);
        }
    }

    pub(super) fn fire_timers(&mut self) {
        self.hub.expire(self.clock.now_ms);
        let (now, rules) = (self.clock.now_ms, self.setup.rules);
        let due = self.clock.take_due();
        for &key in &due {
            let Some(session) = self.conns.get_key(key) else {
                continue;
            };
            session.timer = None;
            let fired = session.on_timer(now, &rules, &self.hub.heartbeat);
            self.on_timer(key.index as usize, fired);
        }
        self.clock.done(due);
    }

    /// Applies what the session's timer found.
    fn on_timer(&mut self, index: usize, fired: Fired) {
        match fired {
            Fired::Arm(at) => self.arm(index, at),
            Fired::Ping(at) => {
                self.conns.schedule_write(index);
                self.arm(index, at);
            }
            Fired::Expired(Expiry::Handshake { partial }) => {
                if partial {
                    self.metrics.handshake_failed(HandshakeFailure::Timeout);
                }
                debug!("session {index}: no complete request within handshake_timeout");
                self.kill(index, CloseReason::Timeout);
            }
            Fired::Expired(Expiry::PongWait) => {
                self.metrics.pong_timeouts += 1;
                self.kill(index, CloseReason::Timeout);
            }
            Fired::Expired(Expiry::WriteStalled) => {
                debug!("session {index}: output unread for write_wait");
                self.kill(index, CloseReason::WriteStalled);
            }
            Fired::Expired(Expiry::Closing) => self.kill(index, CloseReason::Finished),
        }
    }
}
