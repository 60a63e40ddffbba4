//! Closing: an open session leaves the router and the other indexes once
//! (status, hooks and the cluster hear of it), then the session runs its
//! closing handshake (see `Session::fail`, `close`, `answer_close`) within a
//! deadline; dead sessions are reaped at the end of the pass.

use log::{debug, info, warn};

use super::connections::Ending;
use super::EventLoop;
use crate::audience::SessionKey;
use crate::frame::DecodeError;
use crate::hooks::{CloseReason, SessionInfo};
use crate::ids;
use crate::session::Left;

impl EventLoop {
    /// Takes an open session out of every index (once); status changes now.
    fn unindex(&mut self, index: usize, reason: &CloseReason) {
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let (key, peer, client) = (session.key, session.peer(), session.client);
        let user = match session.leave() {
            None => return,
            Some(Left::Echo) => {
                self.conns.open_websockets -= 1;
                self.metrics.open_echo -= 1;
                return;
            }
            Some(Left::Chat(user)) => {
                self.metrics.open_chat -= 1;
                user
            }
            Some(Left::Sse(user)) => {
                self.metrics.open_sse -= 1;
                user
            }
        };
        self.conns.open_websockets -= 1;
        let rooms = self
            .hub
            .remove_session(key, user.as_deref(), self.clock.now_ms);
        self.delivery().left_rooms(key, user.as_deref(), rooms);
        self.publish_online();
        info!(
            "disconnect user={} peer={client} reason={reason} online={}",
            ids::shown(user.as_deref()),
            self.hub.router.online_count()
        );
        let info = SessionInfo {
            key,
            user: user.as_deref(),
            peer,
            client,
        };
        self.hooks.on_disconnect(&info, reason, &mut self.actions);
    }

    /// The session started closing: write its Close now, and give up at
    /// `deadline`.
    fn closing_until(&mut self, index: usize, deadline: u64) {
        self.conns.mark_dirty(index);
        self.arm(index, deadline);
    }

    /// A protocol violation: Close with the RFC's code, then half-close.
    pub(super) fn protocol_close(&mut self, index: usize, error: &DecodeError) {
        debug!("session {index}: {error}");
        let code = error.close_code();
        self.unindex(index, &CloseReason::Protocol(code));
        let (now, rules) = (self.clock.now_ms, self.setup.rules);
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let deadline = session.fail(error, now, &rules);
        self.metrics.close_sent(code);
        self.closing_until(index, deadline);
    }

    /// The server ends a session: what is queued goes first, then Close.
    pub(super) fn server_close(
        &mut self,
        index: usize,
        code: u16,
        text: &str,
        reason: CloseReason,
    ) {
        let shutdown = matches!(reason, CloseReason::Shutdown);
        self.unindex(index, &reason);
        let deadline = match self.life.shutdown_deadline_ms {
            Some(deadline) if shutdown => deadline,
            _ => self
                .clock
                .now_ms
                .saturating_add(self.setup.rules.write_wait_ms),
        };
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let sse = session.is_sse();
        let deadline = session.close(code, text, deadline);
        if !sse {
            self.metrics.close_sent(code);
        }
        self.closing_until(index, deadline);
    }

    /// Closes the sessions the last steps ended ([`Ending`]): closing runs
    /// hooks, presence and the cluster, which a delivering step may not.
    /// Presence sent here can end more sessions; each closes once.
    pub(super) fn close_ended(&mut self) {
        while !self.conns.ending.is_empty() {
            for (key, why) in std::mem::take(&mut self.conns.ending) {
                match why {
                    Ending::SlowConsumer => self.slow_consumer(key),
                    Ending::Resume(text) => self.resume_close(key, text),
                }
            }
        }
    }

    /// A session that missed a message it cannot be told of (history in a
    /// cluster): 1013, and its client resumes.
    fn resume_close(&mut self, key: SessionKey, text: &str) {
        let index = key.index as usize;
        if self
            .conns
            .sessions
            .get(index)
            .is_some_and(|s| s.key == key && s.is_open())
        {
            self.server_close(index, 1013, text, CloseReason::Server);
        }
    }

    fn slow_consumer(&mut self, key: SessionKey) {
        let index = key.index as usize;
        let Some(session) = self.conns.sessions.get(index) else {
            return;
        };
        if session.key != key || !session.is_open() {
            return;
        }
        let ending = if session.is_sse() {
            "ending the event stream"
        } else {
            "closing with 1013"
        };
        warn!(
            "slow consumer user={} peer={}: {} messages / {} bytes queued; {ending}",
            ids::shown(session.user().map(|u| &**u)),
            session.client,
            session.out().queued_messages(),
            session.out().queued_bytes()
        );
        self.metrics.slow_consumer_closes += 1;
        self.server_close(index, 1013, "slow consumer", CloseReason::SlowConsumer);
    }

    /// Over ten times `max_messages_per_second` for 5 s: Close 1008.
    pub(super) fn rate_limit_close(&mut self, index: usize) {
        let Some(session) = self.conns.sessions.get(index) else {
            return;
        };
        warn!(
            "rate limit: user={} peer={} kept sending at over 10x max_messages_per_second; closing with 1008",
            ids::shown(session.user().map(|u| &**u)),
            session.client
        );
        self.metrics.rate_limited_messages += 1;
        self.metrics.rate_limit_closes += 1;
        self.server_close(index, 1008, "rate limit exceeded", CloseReason::RateLimited);
    }

    pub(super) fn peer_closed(&mut self, index: usize, close: Option<(u16, String)>) {
        let code = close.as_ref().map(|(code, _)| *code);
        self.unindex(index, &CloseReason::Client(code));
        let (now, rules) = (self.clock.now_ms, self.setup.rules);
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let deadline = session.answer_close(code, now, &rules);
        self.metrics.close_sent(code.unwrap_or(1000));
        self.closing_until(index, deadline);
    }

    /// Drops the connection at the end of this pass.
    pub(super) fn kill(&mut self, index: usize, reason: CloseReason) {
        self.unindex(index, &reason);
        self.conns.kill(index);
    }

    /// The sessions killed this pass leave the slab, their slot and
    /// client count, and the wheel.
    pub(super) fn reap_closed(&mut self) {
        for index in self.conns.take_reaped() {
            if let Some(mut session) = self.conns.remove(index) {
                self.admission.release(&mut session);
                self.clock.disarm(&session);
                // Dropping the stream closes the descriptor, which also
                // removes it from the poll.
            }
        }
    }
}
