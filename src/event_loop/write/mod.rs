//! Writing: each pass, every session that owes its own client an answer
//! (a response, a reply, an echo, a Pong, a Close), then a bounded share of
//! the write backlog (fan-out recipients, in slot order: `backlog`), with
//! WRITABLE interest only while output is pending; after large drains,
//! freed queue memory goes back to the kernel (`trim`).

use mio::Token;

use super::{EventLoop, FIRST_SESSION, WRITE_BUDGET};
use crate::hooks::CloseReason;
use crate::session::AfterWrite;

pub(super) mod backlog;
pub(super) mod trim;

impl EventLoop {
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
    /// sessions of the backlog. Each writes everything the session has
    /// queued, in batches (one `writev` per [`crate::outbound::MAX_BATCH`]
    /// frames).
    pub(super) fn write_pass(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &index in &dirty {
            if let Some(session) = self.sessions.get_mut(index) {
                session.dirty = false;
            }
            // This flush writes everything queued: a backlog turn would be
            // an empty one, taken from recipients still waiting.
            self.backlog.remove(index);
            self.write_one(index);
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
            self.write_one(index);
        }
        // Every pass, not only those that wrote: a trim that was too soon
        // after the last one happens on a later (idle) pass.
        self.trim
            .after_pass(turn.len(), self.backlog.is_empty(), self.now_ms);
        turn.clear();
        self.turn = turn;
    }

    /// Writes one session and applies what the write reported: the poll
    /// interest, resumed reading, the stall deadline, the end of a close.
    fn write_one(&mut self, index: usize) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        if session.is_dead() {
            return;
        }
        let wrote = session.write(self.now_ms, &self.rules);
        self.metrics.bytes_out += wrote.bytes as u64;
        if let Some(interest) = wrote.interest {
            let token = Token(FIRST_SESSION + index);
            let _ = self
                .poll
                .registry()
                .reregister(session.socket_mut(), token, interest);
        }
        if wrote.resume {
            self.resume.push(index);
        }
        match wrote.then {
            AfterWrite::Idle => self.http_idle(index),
            AfterWrite::Waiting { stall_deadline } => self.arm(index, stall_deadline),
            AfterWrite::Finished => self.kill(index, CloseReason::Finished),
            AfterWrite::Failed(e) => self.kill(index, CloseReason::Io(e.to_string())),
        }
    }
}
