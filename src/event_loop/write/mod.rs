//! Writing: each pass, every session that owes its own client an answer
//! (a response, a reply, an echo, a Pong, a Close), then a bounded share of
//! the write backlog (fan-out recipients, in slot order: `backlog`), with
//! WRITABLE interest only while output is pending; after large drains,
//! freed queue memory goes back to the kernel (`trim`). The lists are
//! [`Connections`]'; this step applies what each write reported to the
//! other parts (the idle list of `Admission`, the clock, closing).
//!
//! [`Connections`]: super::connections::Connections

use super::upkeep::Upkeep;
use super::WRITE_BUDGET;
use crate::hooks::CloseReason;
use crate::session::AfterWrite;

pub(super) mod backlog;
pub(super) mod trim;

impl Upkeep<'_> {
    /// This pass's writes: every dirty session, then the next [`WRITE_BUDGET`]
    /// sessions of the backlog. Each writes everything the session has
    /// queued, in batches (one `writev` per [`crate::outbound::MAX_BATCH`]
    /// frames). One whose queue was already written as an answer costs no
    /// system call.
    pub(super) fn write_pass(&mut self) {
        let dirty = self.conns.take_dirty();
        for &index in &dirty {
            self.conns.unmark(index);
            self.write_one(index);
        }
        self.conns.dirty_done(dirty);
        let turn = self.conns.take_turn(WRITE_BUDGET);
        for &index in &turn {
            self.write_one(index);
        }
        self.conns.turn_done(turn, self.clock.now_ms);
    }

    /// Writes one session and applies what the write reported: the idle
    /// list, the stall deadline, the end of a close.
    fn write_one(&mut self, index: usize) {
        let Some(then) = self.conns.write_one(
            index,
            self.clock.now_ms,
            &self.setup.rules,
            self.registry,
            &mut self.metrics.bytes_out,
        ) else {
            return;
        };
        match then {
            AfterWrite::Idle => self.admission.http_idle(&self.conns.sessions, index),
            AfterWrite::Waiting { stall_deadline } => self.arm(index, stall_deadline),
            AfterWrite::Finished => self.conns.drop_session(index, CloseReason::Finished),
            AfterWrite::Failed(e) => self
                .conns
                .drop_session(index, CloseReason::Io(e.to_string())),
        }
    }
}
