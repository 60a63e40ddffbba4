//! Connections: the session slab and the bookkeeping of reading and
//! writing it. Owns every [`Session`] (its token is `FIRST_SESSION` plus
//! its slot; its key adds a generation so a stale key misses), the loop's
//! one shared read buffer, which sessions owe their own client an answer
//! this pass (`dirty`), which wait in the write backlog (`write/backlog.rs`)
//! and which are written this turn, the sessions to resume reading, to
//! reap at the end of the pass, or to close once the step that found them
//! ends ([`Ending`]), and the count of open WebSocket sessions.
//!
//! A session's own state (phase, queues, deadlines, its rate buckets)
//! lives in the session; this part only keeps the lists that point at
//! sessions, so removing one is [`Connections::remove`] here.

use std::net::SocketAddr;

use mio::{Registry, Token};
use slab::Slab;

use super::write::backlog::Backlog;
use super::write::trim::Trim;
use super::{FIRST_SESSION, WRITE_BUDGET};
use crate::audience::SessionKey;
use crate::session::{AfterWrite, Rules, Session};
use crate::transport::Transport;

/// Size of the loop's one shared read buffer.
const READ_CHUNK: usize = 64 * 1024;

/// The sessions and the lists that point at them.
pub(super) struct Connections {
    /// Every connection, upgraded or not, by slot.
    pub(super) sessions: Slab<Session>,
    /// The last generation handed out: a reused slot gets a new key.
    next_generation: u32,
    /// The one buffer every socket is read into (a session keeps only an
    /// unfinished rest of its own).
    pub(super) read_buf: Box<[u8]>,
    /// Sessions that owe their own client an answer: written this pass.
    dirty: Vec<usize>,
    /// Sessions with deliveries (or a freed socket) to write when their
    /// turn comes, `WRITE_BUDGET` per pass.
    pub(super) backlog: Backlog,
    /// The backlog slots being written this pass (capacity kept).
    turn: Vec<usize>,
    /// Returns freed queue memory to the kernel after large drains.
    trim: Trim,
    /// Sessions dropped at the end of this pass.
    reap: Vec<usize>,
    /// Sessions a delivery step ended (they take no more data), closed by
    /// the close step when that step is over (`close.rs`).
    pub(super) ending: Vec<(SessionKey, Ending)>,
    /// Paused sessions whose client has taken its responses: read on next pass.
    pub(super) resume: Vec<usize>,
    /// Upgraded sessions (chat, echo, event streams) not yet closing.
    pub(super) open_websockets: usize,
}

/// Why a delivery step ended a session. Closing runs hooks, presence and
/// the cluster, so the step that delivers only asks for it; the session
/// takes no more data meanwhile (`Session::queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// Its queue was full: a slow consumer (1013; an event stream ends).
    SlowConsumer,
    /// It missed a message it cannot be told of: closed with 1013 and this
    /// text, so its client resumes.
    Resume(&'static str),
}

impl Connections {
    pub(super) fn new() -> Connections {
        Connections {
            sessions: Slab::new(),
            next_generation: 0,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            dirty: Vec::new(),
            backlog: Backlog::default(),
            turn: Vec::with_capacity(WRITE_BUDGET),
            trim: Trim::default(),
            reap: Vec::new(),
            ending: Vec::new(),
            resume: Vec::new(),
            open_websockets: 0,
        }
    }

    /// Ends `index`'s data now and asks the close step to close it.
    pub(super) fn end(&mut self, index: usize, why: Ending) {
        if let Some(session) = self.sessions.get_mut(index) {
            session.end_data();
            self.ending.push((session.key, why));
        }
    }

    /// The slot the next [`Connections::insert`] takes.
    pub(super) fn next_index(&self) -> usize {
        self.sessions.vacant_key()
    }

    /// A new session for an accepted connection, under a fresh key.
    pub(super) fn insert(
        &mut self,
        transport: Transport<mio::net::TcpStream>,
        peer: SocketAddr,
        now_ms: u64,
    ) -> &mut Session {
        let entry = self.sessions.vacant_entry();
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = SessionKey {
            index: entry.key() as u32,
            generation: self.next_generation,
        };
        entry.insert(Session::new(transport, key, peer, now_ms))
    }

    /// The session `key` names, if it is still that one.
    pub(super) fn get_key(&mut self, key: SessionKey) -> Option<&mut Session> {
        self.sessions
            .get_mut(key.index as usize)
            .filter(|s| s.key == key)
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

    /// The sessions that owe their own client an answer, written first
    /// this pass; each is [`Connections::unmark`]ed as its turn comes.
    /// Hand the list back with [`Connections::dirty_done`].
    pub(super) fn take_dirty(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.dirty)
    }

    /// A dirty session is being written: the flush writes everything
    /// queued, so a backlog turn would be an empty one, taken from
    /// recipients still waiting.
    pub(super) fn unmark(&mut self, index: usize) {
        if let Some(session) = self.sessions.get_mut(index) {
            session.dirty = false;
        }
        self.backlog.remove(index);
    }

    pub(super) fn dirty_done(&mut self, mut dirty: Vec<usize>) {
        dirty.clear();
        // Keep the list's capacity for the next pass.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// The next `budget` sessions of the backlog's sweep. Hand the list
    /// back with [`Connections::turn_done`].
    pub(super) fn take_turn(&mut self, budget: usize) -> Vec<usize> {
        let mut turn = std::mem::take(&mut self.turn);
        self.backlog.take(budget, &mut turn);
        turn
    }

    /// The turn is written: trims after a large drain (every pass, not
    /// only those that wrote: a trim that was too soon after the last one
    /// happens on a later, idle pass).
    pub(super) fn turn_done(&mut self, mut turn: Vec<usize>, now_ms: u64) {
        self.trim
            .after_pass(turn.len(), self.backlog.is_empty(), now_ms);
        turn.clear();
        self.turn = turn;
    }

    /// Writes one session: its poll interest follows, a paused session
    /// whose client took its responses is resumed next pass. `None`: no
    /// such session, or a dead one. `bytes_out` counts what was written.
    pub(super) fn write_one(
        &mut self,
        index: usize,
        now_ms: u64,
        rules: &Rules,
        registry: &Registry,
        bytes_out: &mut u64,
    ) -> Option<AfterWrite> {
        let session = self.sessions.get_mut(index)?;
        if session.is_dead() {
            return None;
        }
        let wrote = session.write(now_ms, rules);
        *bytes_out += wrote.bytes as u64;
        if let Some(interest) = wrote.interest {
            let token = Token(FIRST_SESSION + index);
            let _ = registry.reregister(session.socket_mut(), token, interest);
        }
        if wrote.resume {
            self.resume.push(index);
        }
        Some(wrote.then)
    }

    /// The session is dead: removed at the end of this pass.
    pub(super) fn kill(&mut self, index: usize) {
        if self.sessions.get_mut(index).is_some_and(|s| s.kill()) {
            self.reap.push(index);
        }
    }

    /// The sessions to reap now.
    pub(super) fn take_reaped(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.reap)
    }

    /// Takes a reaped session out of the slab and every list.
    pub(super) fn remove(&mut self, index: usize) -> Option<Session> {
        self.backlog.remove(index);
        self.sessions.try_remove(index)
    }
}
