//! Timers: the wheel is the clock's (`clock.rs`); when a session's entry
//! fires, the session says which of its deadlines passed
//! (`Session::on_timer`) and this step applies that: arm again, write a
//! Ping, or drop the connection (an open one through the close step).
//! Works through [`Upkeep`]; history and stream marks expire just before
//! (`Hub::expire`).

use log::debug;

use super::upkeep::Upkeep;
use crate::hooks::CloseReason;
use crate::metrics::HandshakeFailure;
use crate::session::{Expiry, Fired};

impl Upkeep<'_> {
    pub(super) fn fire_timers(&mut self) {
        let (now, rules) = (self.clock.now_ms, self.setup.rules);
        let due = self.clock.take_due();
        for &key in &due {
            let Some(session) = self.conns.get_key(key) else {
                continue;
            };
            session.timer = None;
            let fired = session.on_timer(now, &rules, self.heartbeat);
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
                self.conns.drop_session(index, CloseReason::Timeout);
            }
            Fired::Expired(Expiry::PongWait) => {
                self.metrics.pong_timeouts += 1;
                self.conns.drop_session(index, CloseReason::Timeout);
            }
            Fired::Expired(Expiry::WriteStalled) => {
                debug!("session {index}: output unread for write_wait");
                self.conns.drop_session(index, CloseReason::WriteStalled);
            }
            Fired::Expired(Expiry::Closing) => {
                self.conns.drop_session(index, CloseReason::Finished)
            }
        }
    }
}
