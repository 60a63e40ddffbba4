//! Ending sessions and writing: leaving the indexes (once), the closing
//! handshake, half-close and reaping; each pass, flushing every session that
//! owes its own client an answer, then a bounded share of the write backlog
//! (in slot order), with WRITABLE interest only while output is pending.

use log::{debug, info, warn};
use mio::{Interest, Token};

use super::{EventLoop, FIRST_SESSION, WRITE_BUDGET};
use crate::audience::SessionKey;
use crate::frame::{self, DecodeError, Kind};
use crate::hooks::{CloseReason, SessionInfo};
use crate::ids;
use crate::outbound::Flushed;
use crate::session::{Closing, Phase};

impl EventLoop {
    /// Takes an open session out of every index (once); status changes now.
    pub(super) fn unindex(&mut self, index: usize, reason: &CloseReason) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let key = session.key;
        let peer = session.peer;
        let user = match &session.phase {
            Phase::Chat { user } => Some(user.clone()),
            Phase::Echo => None,
            _ => return,
        };
        session.phase = Phase::Closing(Closing::default());
        self.open_websockets -= 1;
        let Some(user) = user else {
            self.metrics.open_echo -= 1;
            return;
        };
        self.router.remove_session(key, user.as_deref());
        self.metrics.open_chat -= 1;
        if let Some(link) = self.cluster.as_mut() {
            link.departed();
        }
        self.publish_online();
        info!(
            "disconnect user={} peer={peer} reason={reason} online={}",
            ids::shown(user.as_deref()),
            self.router.online_count()
        );
        let info = SessionInfo {
            key,
            user: user.as_deref(),
            peer,
        };
        self.hooks.on_disconnect(&info, reason, &mut self.actions);
    }

    /// Enters the closing phase: flush, then wait (bounded) for the peer.
    pub(super) fn begin_closing(&mut self, index: usize, await_close_frame: bool) {
        let deadline = self.now_ms + self.config.websocket.write_wait.as_millis() as u64;
        self.begin_closing_until(index, await_close_frame, deadline);
    }

    pub(super) fn begin_closing_until(
        &mut self,
        index: usize,
        await_close_frame: bool,
        deadline_ms: u64,
    ) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session.phase = Phase::Closing(Closing {
            await_close_frame,
            deadline_ms,
            ..Closing::default()
        });
        self.mark_dirty(index);
        self.arm(index, deadline_ms);
    }

    /// A protocol violation: Close with the RFC's code, then half-close.
    pub(super) fn protocol_close(&mut self, index: usize, error: &DecodeError) {
        debug!("session {index}: {error}");
        let code = error.close_code();
        self.unindex(index, &CloseReason::Protocol(code));
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session.decoder = frame::Decoder::default();
        // Behind what is already queued (the 101 itself may still be there).
        session
            .out
            .push_unbounded(frame::encode_close(code, &error.to_string()));
        self.metrics.close_sent(code);
        // RFC 6455 7.1.7: after failing the connection, stop processing the
        // peer's data (its Close included): flush, half-close, drain to EOF.
        self.begin_closing(index, false);
    }

    /// The server ends a session: what is queued goes first, then Close.
    pub(super) fn server_close(
        &mut self,
        index: usize,
        code: u16,
        text: &str,
        reason: CloseReason,
    ) {
        self.unindex(index, &reason);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session.out.push_unbounded(frame::encode_close(code, text));
        self.metrics.close_sent(code);
        let deadline = match reason {
            CloseReason::Shutdown => self.shutdown_deadline_ms,
            _ => None,
        };
        let deadline =
            deadline.unwrap_or(self.now_ms + self.config.websocket.write_wait.as_millis() as u64);
        self.begin_closing_until(index, true, deadline);
    }

    pub(super) fn slow_consumer(&mut self, key: SessionKey) {
        let index = key.index as usize;
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        if session.key != key || !session.is_open_websocket() {
            return;
        }
        warn!(
            "slow consumer user={} peer={}: {} messages / {} bytes queued; closing with 1013",
            ids::shown(session.user().map(|u| &**u)),
            session.peer,
            session.out.queued_messages(),
            session.out.queued_bytes()
        );
        self.metrics.slow_consumer_closes += 1;
        self.server_close(index, 1013, "slow consumer", CloseReason::SlowConsumer);
    }

    /// Over ten times `max_messages_per_second` for 5 s: Close 1008.
    pub(super) fn rate_limit_close(&mut self, index: usize) {
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        warn!(
            "rate limit: user={} peer={} kept sending at over 10x max_messages_per_second; closing with 1008",
            ids::shown(session.user().map(|u| &**u)),
            session.peer
        );
        self.metrics.rate_limited_messages += 1;
        self.metrics.rate_limit_closes += 1;
        self.server_close(index, 1008, "rate limit exceeded", CloseReason::RateLimited);
    }

    /// Stops reading a connection that owes more than `max_buffered_bytes`
    /// of responses; `flush_one` resumes it once the client has read them.
    pub(super) fn pause(&mut self, index: usize) {
        if let Some(session) = self.sessions.get_mut(index) {
            if !session.paused {
                debug!("session {index}: responses unread, pausing reads");
                session.paused = true;
            }
        }
    }

    pub(super) fn peer_closed(&mut self, index: usize, close: Option<(u16, String)>) {
        let code = close.as_ref().map(|(code, _)| *code);
        self.unindex(index, &CloseReason::Client(code));
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        // What was queued before their Close still goes out, then ours;
        // nothing follows it because the session left every index.
        let reply = match code {
            Some(code) => frame::encode_close(code, ""),
            None => frame::encode(Kind::Close, b""),
        };
        session.out.push_unbounded(reply);
        self.metrics.close_sent(code.unwrap_or(1000));
        self.begin_closing(index, false);
    }

    pub(super) fn on_eof(&mut self, index: usize) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        match &mut session.phase {
            Phase::Closing(closing) => {
                closing.eof = true;
                closing.await_close_frame = false;
                self.mark_dirty(index);
            }
            Phase::Http if !session.out.is_empty() => {
                // A request followed by FIN still gets its response.
                self.begin_closing(index, false);
                if let Some(Phase::Closing(closing)) =
                    self.sessions.get_mut(index).map(|s| &mut s.phase)
                {
                    closing.eof = true;
                }
            }
            _ => self.kill(index, CloseReason::Client(None)),
        }
    }

    /// Drops the connection at the end of this pass.
    pub(super) fn kill(&mut self, index: usize, reason: CloseReason) {
        self.unindex(index, &reason);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        if !matches!(session.phase, Phase::Dead) {
            session.phase = Phase::Dead;
            self.reap.push(index);
        }
    }

    pub(super) fn reap_closed(&mut self) {
        for index in std::mem::take(&mut self.reap) {
            self.backlog.remove(index);
            if let Some(session) = self.sessions.try_remove(index) {
                if session.counted_http {
                    self.http_connections -= 1;
                }
                if self.rates.remove(&index).is_some()
                    && self.rates.capacity() > 64
                    && self.rates.len() * 4 < self.rates.capacity()
                {
                    self.rates.shrink_to(self.rates.len() * 2);
                }
                if let Some((timer, _)) = session.timer {
                    self.wheel.cancel(timer);
                }
                // Dropping the stream closes the descriptor, which also
                // removes it from the poll.
            }
        }
    }

    /// The session owes its own client an answer (a response, a reply, an
    /// echo, a Pong, a Close): written at the end of this pass, ahead of the
    /// backlog, so the client's next request is not held up by fan-outs.
    pub(super) fn mark_dirty(&mut self, index: usize) {
        if let Some(session) = self.sessions.get_mut(index) {
            if !session.dirty {
                session.dirty = true;
                self.dirty.push(index);
            }
        }
    }

    /// The session has output that can wait its turn in the backlog.
    pub(super) fn schedule_write(&mut self, index: usize) {
        if self.sessions.contains(index) {
            self.backlog.insert(index);
        }
    }

    /// This pass's writes: every dirty session, then the next [`WRITE_BUDGET`]
    /// sessions of the backlog. Each flush writes everything the session has
    /// queued, in batches (one `writev` per [`crate::outbound::MAX_BATCH`]
    /// frames).
    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            if let Some(session) = self.sessions.get_mut(index) {
                session.dirty = false;
            }
            // This flush writes everything queued: a backlog turn would be
            // an empty one, taken from recipients still waiting.
            self.backlog.remove(index);
            self.flush_one(index);
        }
        dirty.clear();
        // Keep the list's capacity for the next pass.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        self.flush_backlog();
    }

    /// Writes the next [`WRITE_BUDGET`] sessions of the backlog's sweep. One
    /// whose queue was already written as an answer costs no system call.
    fn flush_backlog(&mut self) {
        let mut turn = std::mem::take(&mut self.turn);
        self.backlog.take(WRITE_BUDGET, &mut turn);
        for &index in &turn {
            self.flush_one(index);
        }
        // Every pass, not only those that wrote: a trim that was too soon
        // after the last one happens on a later (idle) pass.
        self.trim
            .after_pass(turn.len(), self.backlog.is_empty(), self.now_ms);
        turn.clear();
        self.turn = turn;
    }

    pub(super) fn flush_one(&mut self, index: usize) {
        let write_wait = self.config.websocket.write_wait.as_millis() as u64;
        let max_owed = self.config.websocket.max_buffered_bytes;
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        if matches!(session.phase, Phase::Dead) {
            return;
        }
        match session.flush() {
            Ok((Flushed::Drained, n)) => {
                self.metrics.bytes_out += n as u64;
                session.stalled_since_ms = None;
                if matches!(session.phase, Phase::Http) {
                    // The next request's deadline runs from the end of this response.
                    session.last_seen_ms = self.now_ms;
                }
                if std::mem::take(&mut session.paused) {
                    self.resume.push(index);
                }
                if session.writable_interest {
                    session.writable_interest = false;
                    let token = Token(FIRST_SESSION + index);
                    let _ = self.poll.registry().reregister(
                        session.transport.socket_mut(),
                        token,
                        Interest::READABLE,
                    );
                }
                self.after_drain(index);
            }
            Ok((Flushed::Pending, n)) => {
                self.metrics.bytes_out += n as u64;
                if session.paused && session.out.owed_bytes() <= max_owed / 2 {
                    session.paused = false;
                    self.resume.push(index);
                }
                if n > 0 || session.stalled_since_ms.is_none() {
                    session.stalled_since_ms = Some(self.now_ms);
                }
                if !session.writable_interest {
                    session.writable_interest = true;
                    let token = Token(FIRST_SESSION + index);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    let _ = self.poll.registry().reregister(
                        session.transport.socket_mut(),
                        token,
                        interest,
                    );
                }
                let stall_deadline = self.now_ms + write_wait;
                self.arm(index, stall_deadline);
            }
            Err(e) => self.kill(index, CloseReason::Io(e.to_string())),
        }
    }

    /// A closing session whose queue is empty moves on: half-close, or drop.
    pub(super) fn after_drain(&mut self, index: usize) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let Phase::Closing(closing) = &mut session.phase else {
            return;
        };
        if closing.await_close_frame {
            return;
        }
        if closing.eof {
            return self.kill(index, CloseReason::Finished);
        }
        if !closing.fin_sent {
            closing.fin_sent = true;
            // Half-close and wait for the peer's FIN: closing with unread
            // input would send RST and could destroy the response in flight.
            if session.transport.shutdown_write().is_err() {
                self.kill(index, CloseReason::Finished);
            }
        }
    }
}
