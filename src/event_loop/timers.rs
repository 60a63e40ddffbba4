//! Timers: one wheel entry per session, re-armed lazily (a later deadline
//! leaves the earlier entry in place; it fires, finds nothing due and arms
//! again). On fire the session says which of its deadlines passed
//! (`Session::on_timer`); this file applies that: arm again, write a Ping,
//! or drop the connection.

use log::debug;

use super::EventLoop;
use crate::hooks::CloseReason;
use crate::metrics::HandshakeFailure;
use crate::session::{Expiry, Fired};

impl EventLoop {
    /// Makes sure the session's timer fires no later than `at_ms`.
    pub(super) fn arm(&mut self, index: usize, at_ms: u64) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        if let Some((timer, armed_at)) = session.timer {
            if armed_at <= at_ms {
                return;
            }
            self.wheel.cancel(timer);
        }
        let timer = self.wheel.insert(at_ms, session.key);
        session.timer = Some((timer, at_ms));
    }

    /// Arms an open session for its next Ping, silence or stall deadline.
    pub(super) fn rearm_open(&mut self, index: usize) {
        if let Some(session) = self.sessions.get(index) {
            let at = session.open_deadline(&self.rules);
            self.arm(index, at);
        }
    }

    pub(super) fn fire_timers(&mut self) {
        if let Some(history) = self.history.as_mut() {
            history.tick(self.now_ms);
        }
        if let Some(marks) = self.sse_marks.as_mut() {
            marks.tick(self.now_ms);
        }
        let mut due = std::mem::take(&mut self.due);
        self.wheel.poll(self.now_ms, &mut due);
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
        let (now, rules) = (self.now_ms, self.rules);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        match session.on_timer(now, &rules, &self.heartbeat) {
            Fired::Arm(at) => self.arm(index, at),
            Fired::Ping(at) => {
                self.schedule_write(index);
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
