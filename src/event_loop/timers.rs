//! Timers: one wheel entry per session, re-armed lazily. On fire, the
//! session's phase decides: handshake deadline, Ping due, `pong_wait`
//! silence, `write_wait` stall, or the closing deadline.

use log::debug;

use super::EventLoop;
use crate::hooks::CloseReason;
use crate::metrics::HandshakeFailure;
use crate::session::Phase;

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

    pub(super) fn rearm_open(&mut self, index: usize) {
        let ws = &self.config.websocket;
        let (pong_wait, write_wait) = (
            ws.pong_wait.as_millis() as u64,
            ws.write_wait.as_millis() as u64,
        );
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        let mut next = session.next_ping_ms.min(session.last_seen_ms + pong_wait);
        if let Some(stalled) = session.stalled_since_ms {
            next = next.min(stalled + write_wait);
        }
        self.arm(index, next);
    }

    pub(super) fn fire_timers(&mut self) {
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

    pub(super) fn on_timer(&mut self, index: usize) {
        let ws = &self.config.websocket;
        let handshake = ws.handshake_timeout.as_millis() as u64;
        let pong_wait = ws.pong_wait.as_millis() as u64;
        let write_wait = ws.write_wait.as_millis() as u64;
        let ping_period = ws.ping_period.as_millis() as u64;
        let now = self.now_ms;
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        match &session.phase {
            Phase::Http if !session.out.is_empty() => {
                // Responses still going out: the request deadline waits for
                // them to finish, and a client that takes none of them for
                // `write_wait` is closed, as after the upgrade.
                match session.stalled_since_ms {
                    Some(since) if now >= since + write_wait => {
                        debug!("session {index}: responses unread for write_wait");
                        self.kill(index, CloseReason::WriteStalled);
                    }
                    Some(since) => self.arm(index, since + write_wait),
                    None => self.arm(index, now + write_wait),
                }
            }
            Phase::Http => {
                let deadline = session.last_seen_ms + handshake;
                if now < deadline {
                    return self.arm(index, deadline);
                }
                if !session.pending_input.is_empty() {
                    self.metrics.handshake_failed(HandshakeFailure::Timeout);
                }
                debug!("session {index}: no complete request within handshake_timeout");
                self.kill(index, CloseReason::Timeout);
            }
            Phase::Chat { .. } | Phase::Echo => {
                if now >= session.last_seen_ms + pong_wait {
                    self.metrics.pong_timeouts += 1;
                    return self.kill(index, CloseReason::Timeout);
                }
                if session
                    .stalled_since_ms
                    .is_some_and(|s| now >= s + write_wait)
                {
                    return self.kill(index, CloseReason::WriteStalled);
                }
                session.out.release_memory(0);
                if now >= session.next_ping_ms {
                    session.out.push_control(self.ping.clone());
                    session.next_ping_ms = now + ping_period;
                    self.schedule_write(index);
                }
                self.rearm_open(index);
            }
            Phase::Closing(closing) => {
                let deadline = closing.deadline_ms;
                if now >= deadline {
                    return self.kill(index, CloseReason::Finished);
                }
                self.arm(index, deadline);
            }
            Phase::Dead => {}
        }
    }
}
