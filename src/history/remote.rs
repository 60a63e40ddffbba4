//! History in a cluster, the loop's side (README "History and resume"):
//! the streams live in Redis (`cluster::history`), so this only remembers
//! which resumes wait for their Redis read, which sessions and rooms must
//! not receive live messages with positions until then, and what was
//! counted for `/metrics`.
//!
//! Owned by the event loop; touches no socket, no session and no Redis.

use std::collections::HashMap;
use std::rc::Rc;

use crate::audience::{Audience, SessionKey};
use crate::history::position::Position;
use crate::metrics::write_single;

/// How long a resume waits for its read before the session is closed
/// (1013): longer than the cluster's reply deadline, so a read the
/// subscriber could still answer is not given up.
pub(crate) const READ_WAIT_MS: u64 = 3000;

/// The epoch a welcome names while Redis cannot be asked: no stream has
/// it (the server's are 8 characters), so resuming from it answers
/// `ok:false`.
pub(crate) const UNKNOWN_EPOCH: &str = "0";

/// What a resume asked for, kept until its read answers.
#[derive(Debug)]
pub(crate) enum Wanted {
    /// A chat session that asked to recover: welcome, then the streams of
    /// `?since=` (`own`: the `u` position, `Some(None)` when the session has
    /// no user stream to resume).
    Session {
        user: Option<Rc<str>>,
        all: Option<Position>,
        own: Option<Option<Position>>,
    },
    /// A recovering session's join: the room's welcome, then with `since`
    /// (`Some(None)`: not a room position) its replay.
    Room {
        room: Rc<str>,
        since: Option<Option<Position>>,
    },
    /// An event stream that opened: its current token, and with
    /// `Last-Event-ID` (`resume`) what it missed on each of `streams`
    /// (`a`, `u`, `r:<room>`, in the order read).
    Events { resume: bool, streams: Vec<String> },
}

/// One resume waiting for Redis.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The session.
    pub key: SessionKey,
    /// Loop-clock ms after which the session is closed.
    pub deadline_ms: u64,
    /// What it asked.
    pub wanted: Wanted,
}

/// What was counted, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    /// Streams resumed with every missed message replayed.
    pub resumes_ok: u64,
    /// Streams that answered `ok:false`.
    pub resumes_failed: u64,
    /// Messages replayed.
    pub replayed: u64,
    /// Reads that failed or timed out (the session was closed with 1013),
    /// or could not be asked (Redis down, queue full: `ok:false`).
    pub reads_failed: u64,
    /// Recovering sessions closed (1013) because a message from Redis was
    /// dropped before the loop saw it: they resume and get it replayed.
    pub gap_closes: u64,
}

/// What one session waits for.
#[derive(Debug, Default)]
struct Waits {
    /// Session resumes (its welcome and `a`/`u` streams).
    whole: u32,
    /// Rooms whose welcome waits.
    rooms: Vec<Rc<str>>,
}

/// Resumes waiting for Redis, by read id.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    pending: HashMap<u64, Pending>,
    /// Sessions with a read waiting: their input is held, and no message
    /// with a position of a stream being read reaches them yet.
    waits: HashMap<SessionKey, Waits>,
    /// What was counted.
    pub stats: Stats,
    /// The link's count of dropped messages when last looked at.
    drops_seen: u64,
}

impl Remote {
    /// Remembers a read asked for `key`.
    pub(crate) fn wait(&mut self, id: u64, key: SessionKey, now_ms: u64, wanted: Wanted) {
        let waits = self.waits.entry(key).or_default();
        match &wanted {
            Wanted::Session { .. } | Wanted::Events { resume: true, .. } => waits.whole += 1,
            Wanted::Room { room, .. } => waits.rooms.push(room.clone()),
            // Live messages reach it meanwhile: the token read covers them.
            Wanted::Events { resume: false, .. } => {}
        }
        self.pending.insert(
            id,
            Pending {
                key,
                deadline_ms: now_ms + READ_WAIT_MS,
                wanted,
            },
        );
    }

    /// The resume read `id` answers, no longer waiting.
    pub(crate) fn take(&mut self, id: u64) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        if let Some(waits) = self.waits.get_mut(&pending.key) {
            match &pending.wanted {
                Wanted::Session { .. } | Wanted::Events { resume: true, .. } => {
                    waits.whole = waits.whole.saturating_sub(1);
                }
                Wanted::Events { resume: false, .. } => {}
                Wanted::Room { room, .. } => {
                    if let Some(at) = waits.rooms.iter().position(|r| r == room) {
                        waits.rooms.swap_remove(at);
                    }
                }
            }
            if waits.whole == 0 && waits.rooms.is_empty() {
                self.waits.remove(&pending.key);
            }
        }
        Some(pending)
    }

    /// Resumes whose read did not answer in time.
    pub(crate) fn expired(&mut self, now_ms: u64) -> Vec<Pending> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        late.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// The earliest deadline, for the loop's poll timeout.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline_ms).min()
    }

    /// Whether the session's input waits for a read.
    pub(crate) fn holds(&self, key: SessionKey) -> bool {
        !self.waits.is_empty() && self.waits.contains_key(&key)
    }

    /// Whether a live message with a position for `audience` must skip
    /// session `key`: its welcome for that stream has not been sent, and
    /// the read that sends it covers the message.
    pub(crate) fn skips(&self, key: SessionKey, audience: Audience<&str>) -> bool {
        if self.waits.is_empty() {
            return false;
        }
        let Some(waits) = self.waits.get(&key) else {
            return false;
        };
        waits.whole > 0
            || matches!(audience, Audience::Room { room, .. } if waits.rooms.iter().any(|r| &**r == room))
    }

    /// Whether messages from Redis were dropped since the last call
    /// (`drops`: the link's count so far).
    pub(crate) fn dropped_since(&mut self, drops: u64) -> bool {
        std::mem::replace(&mut self.drops_seen, drops) != drops
    }

    /// Counts one stream's answer.
    pub(crate) fn count(&mut self, ok: bool, replayed: usize) {
        if ok {
            self.stats.resumes_ok += 1;
            self.stats.replayed += replayed as u64;
        } else {
            self.stats.resumes_failed += 1;
        }
    }

    /// The history's lines of `/metrics` in a cluster (entries and bytes
    /// are Redis's: see its `MEMORY USAGE`).
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let s = &self.stats;
        write_single(
            out,
            &[
                (
                    "wshub_history_resumes_ok_total",
                    "counter",
                    "Streams resumed with every missed message replayed.",
                    s.resumes_ok,
                ),
                (
                    "wshub_history_resumes_failed_total",
                    "counter",
                    "Streams that answered ok:false (overflowed, expired, another epoch, not the session's own, Redis down, or too many to queue).",
                    s.resumes_failed,
                ),
                ("wshub_history_replayed_total", "counter", "Messages replayed to resuming sessions.", s.replayed),
                (
                    "wshub_history_reads_failed_total",
                    "counter",
                    "Resume reads from Redis that failed, timed out or could not be queued.",
                    s.reads_failed,
                ),
                (
                    "wshub_history_gap_closes_total",
                    "counter",
                    "Recovering sessions closed (1013) after a message from Redis was dropped (cluster.max_queue_bytes or the loop's queue full), so they resume it.",
                    s.gap_closes,
                ),
                (
                    "wshub_history_reads_waiting",
                    "gauge",
                    "Resumes waiting for their Redis read.",
                    self.pending.len() as u64,
                ),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u32) -> SessionKey {
        SessionKey {
            index,
            generation: 1,
        }
    }

    fn session() -> Wanted {
        Wanted::Session {
            user: None,
            all: None,
            own: None,
        }
    }

    fn room(name: &str) -> Wanted {
        Wanted::Room {
            room: Rc::from(name),
            since: None,
        }
    }

    #[test]
    fn a_waiting_session_skips_every_stream_until_answered() {
        let mut remote = Remote::default();
        remote.wait(1, key(1), 0, session());
        assert!(remote.holds(key(1)));
        assert!(!remote.holds(key(2)));
        assert!(remote.skips(key(1), Audience::EVERYONE));
        assert!(remote.skips(key(1), Audience::room("r")));
        assert!(!remote.skips(key(2), Audience::EVERYONE));
        assert!(remote.take(1).is_some());
        assert!(!remote.holds(key(1)));
        assert!(!remote.skips(key(1), Audience::EVERYONE));
        assert!(remote.take(1).is_none(), "answered once");
    }

    #[test]
    fn a_waiting_join_skips_only_its_room() {
        let mut remote = Remote::default();
        remote.wait(5, key(1), 0, room("r"));
        assert!(remote.holds(key(1)), "its next message waits");
        assert!(remote.skips(key(1), Audience::room("r")));
        assert!(!remote.skips(key(1), Audience::room("s")));
        assert!(!remote.skips(key(1), Audience::EVERYONE));
        assert!(!remote.skips(key(1), Audience::User("u")));
        remote.take(5);
        assert!(!remote.skips(key(1), Audience::room("r")));
        assert!(!remote.holds(key(1)));
    }

    #[test]
    fn drops_are_noticed_once() {
        let mut remote = Remote::default();
        assert!(!remote.dropped_since(0));
        assert!(remote.dropped_since(3));
        assert!(!remote.dropped_since(3));
        assert!(remote.dropped_since(4));
    }

    #[test]
    fn reads_expire_at_their_deadline() {
        let mut remote = Remote::default();
        remote.wait(1, key(1), 0, session());
        remote.wait(2, key(2), 1000, room("r"));
        assert_eq!(remote.next_deadline(), Some(READ_WAIT_MS));
        assert!(remote.expired(READ_WAIT_MS - 1).is_empty());
        let late = remote.expired(READ_WAIT_MS);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].key, key(1));
        assert!(!remote.holds(key(1)));
        assert!(remote.holds(key(2)));
        assert_eq!(remote.expired(READ_WAIT_MS + 1000).len(), 1);
        assert_eq!(remote.next_deadline(), None);
    }
}
