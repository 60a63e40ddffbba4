//! History: the last messages of every audience, so a session that
//! reconnects can take what it missed (README "History and resume").
//!
//! A **stream** follows one audience: everyone (`a`), one user (`u`), one
//! room (`r`). It has an epoch (random, new whenever its past can no longer
//! be vouched for) and offsets 1, 2, 3, … Each message delivered to an
//! audience is appended once, as the frame a recovering session receives
//! (the message with `"pos"` added), so a broadcast to 10k sessions is one
//! entry and a replay queues the stored frames themselves.
//!
//! Entries leave oldest first: past `size` per stream, past `ttl`, and past
//! `max_bytes` for the node (one queue, `order`, holds every entry in
//! append order). A stream without entries keeps its epoch and last offset
//! for `meta_ttl`, so a session that saw everything resumes with nothing
//! to replay rather than failing.
//!
//! Owned by the event loop; touches no socket and no session. Positions
//! and the JSON the server sends about them live in [`position`].

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::rc::Rc;

use slab::Slab;

use crate::audience::Audience;
use crate::config::HistoryConfig;
use crate::frame::{self, Wire};
use crate::metrics::write_single;
use crate::wheel::millis;
use position::{Epoch, Kind, Position};

pub(crate) mod position;
pub(crate) mod remote;

/// What each entry costs besides its frame bytes: the stream's slot for it
/// (a shared pointer, 16 bytes), the node's order record (24 bytes) and the
/// shared allocation's two counts (16 bytes). Counted against `max_bytes`.
pub(crate) const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<Wire>() + std::mem::size_of::<Record>() + 2 * std::mem::size_of::<usize>();

/// How often streams without entries are checked against `meta_ttl`.
const SWEEP_MS: u64 = 1000;

/// Stale order records (entries already gone by `size`) tolerated beyond
/// the live ones before the queue is compacted.
const STALE_SLACK: usize = 1024;

/// One stream, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamRef<'a> {
    /// Everyone.
    All,
    /// One user.
    User(&'a str),
    /// One room.
    Room(&'a str),
}

impl<'a> StreamRef<'a> {
    /// The stream an audience's messages are kept in (whoever is left out).
    pub(crate) fn of(audience: Audience<&'a str>) -> StreamRef<'a> {
        match audience {
            Audience::Everyone { .. } => StreamRef::All,
            Audience::User(user) => StreamRef::User(user),
            Audience::Room { room, .. } => StreamRef::Room(room),
        }
    }

    fn kind(self) -> Kind {
        match self {
            StreamRef::All => Kind::All,
            StreamRef::User(_) => Kind::User,
            StreamRef::Room(_) => Kind::Room,
        }
    }
}

#[derive(Debug)]
struct Stream {
    kind: Kind,
    /// The user or room name (`None` for everyone).
    name: Option<Rc<str>>,
    /// Tells this stream's order records from those of an earlier stream
    /// in the same slot.
    generation: u32,
    epoch: Epoch,
    /// The offset of the newest message (0: none yet).
    last: u64,
    /// Frames of offsets `last - len + 1 ..= last`.
    entries: VecDeque<Wire>,
    /// Loop-clock ms of the last append or position handed out.
    touched_ms: u64,
}

impl Stream {
    fn first(&self) -> u64 {
        self.last + 1 - self.entries.len() as u64
    }
}

/// One entry in the node's append order.
#[derive(Debug, Clone, Copy)]
struct Record {
    slot: u32,
    generation: u32,
    offset: u64,
    at_ms: u64,
}

/// What the history counted, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    /// Streams resumed with every missed message replayed.
    pub resumes_ok: u64,
    /// Streams that answered `ok:false`.
    pub resumes_failed: u64,
    /// Messages replayed.
    pub replayed: u64,
    /// Entries dropped by `size`, `ttl` or `max_bytes`.
    pub evicted: u64,
}

/// A message just appended: its JSON with `"pos"` and the frame of that
/// (what a recovering session receives, and what a replay sends).
#[derive(Debug)]
pub(crate) struct Appended {
    /// The message with `"pos"` as its last key.
    pub json: Vec<u8>,
    /// `json` as one uncompressed text frame (the stored entry).
    pub wire: Wire,
}

/// Every stream of this node.
#[derive(Debug)]
pub(crate) struct History {
    size: usize,
    ttl_ms: u64,
    max_bytes: usize,
    meta_ttl_ms: u64,
    streams: Slab<Stream>,
    all: Option<usize>,
    users: HashMap<Rc<str>, usize>,
    rooms: HashMap<Rc<str>, usize>,
    order: VecDeque<Record>,
    /// Records in `order` whose entry is already gone.
    stale: usize,
    entries: usize,
    bytes: usize,
    next_generation: u32,
    random: RandomState,
    epochs_made: u64,
    next_sweep_ms: u64,
    stats: Stats,
}

impl History {
    /// A history with these bounds; `None` when `size` is 0 (off).
    pub(crate) fn new(config: &HistoryConfig) -> Option<History> {
        config.enabled().then(|| History {
            size: config.size,
            ttl_ms: millis(config.ttl),
            max_bytes: config.max_bytes,
            meta_ttl_ms: millis(config.meta_ttl),
            streams: Slab::new(),
            all: None,
            users: HashMap::new(),
            rooms: HashMap::new(),
            order: VecDeque::new(),
            stale: 0,
            entries: 0,
            bytes: 0,
            next_generation: 0,
            random: RandomState::new(),
            epochs_made: 0,
            next_sweep_ms: SWEEP_MS,
            stats: Stats::default(),
        })
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    /// Bytes held: frames plus [`ENTRY_OVERHEAD`] per entry.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Streams known (with entries or only their epoch and offset).
    #[cfg(test)]
    pub(crate) fn streams(&self) -> usize {
        self.streams.len()
    }

    /// What was counted so far.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    /// Appends the history's lines to the `/metrics` text.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let s = &self.stats;
        write_single(
            out,
            &[
                ("wshub_history_entries", "gauge", "Messages held in history.", self.entries as u64),
                (
                    "wshub_history_bytes",
                    "gauge",
                    "Bytes held in history: frames plus a fixed header per entry.",
                    self.bytes as u64,
                ),
                ("wshub_history_streams", "gauge", "Streams known (entries or epoch only).", self.streams.len() as u64),
                (
                    "wshub_history_resumes_ok_total",
                    "counter",
                    "Streams resumed with every missed message replayed.",
                    s.resumes_ok,
                ),
                (
                    "wshub_history_resumes_failed_total",
                    "counter",
                    "Streams that answered ok:false (overflowed, expired, another epoch, not the session's own, or too many to queue).",
                    s.resumes_failed,
                ),
                ("wshub_history_replayed_total", "counter", "Messages replayed to resuming sessions.", s.replayed),
                (
                    "wshub_history_evicted_total",
                    "counter",
                    "Entries dropped by history.size, ttl or max_bytes.",
                    s.evicted,
                ),
            ],
        );
    }

    /// Counts one stream's answer to a resume.
    pub(crate) fn count(&mut self, outcome: position::Outcome) {
        if outcome.ok {
            self.stats.resumes_ok += 1;
            self.stats.replayed += outcome.replayed as u64;
        } else {
            self.stats.resumes_failed += 1;
        }
    }

    fn slot(&self, stream: StreamRef<'_>) -> Option<usize> {
        match stream {
            StreamRef::All => self.all,
            StreamRef::User(user) => self.users.get(user).copied(),
            StreamRef::Room(room) => self.rooms.get(room).copied(),
        }
    }

    /// The stream's slot, made (with a new epoch) if it is not known.
    fn slot_or_new(&mut self, stream: StreamRef<'_>, now: u64) -> usize {
        if let Some(slot) = self.slot(stream) {
            return slot;
        }
        self.epochs_made += 1;
        let epoch = Epoch::from_bits(self.random.hash_one(self.epochs_made));
        self.next_generation = self.next_generation.wrapping_add(1);
        let name = match stream {
            StreamRef::All => None,
            StreamRef::User(name) | StreamRef::Room(name) => Some(Rc::<str>::from(name)),
        };
        let slot = self.streams.insert(Stream {
            kind: stream.kind(),
            name: name.clone(),
            generation: self.next_generation,
            epoch,
            last: 0,
            entries: VecDeque::new(),
            touched_ms: now,
        });
        match (stream, name) {
            (StreamRef::User(_), Some(name)) => {
                self.users.insert(name, slot);
            }
            (StreamRef::Room(_), Some(name)) => {
                self.rooms.insert(name, slot);
            }
            _ => self.all = Some(slot),
        }
        slot
    }

    /// The stream's current position, `"<kind>:<epoch>:<last>"`: what a
    /// welcome hands out. Makes the stream if it is not known, so a
    /// session always has a position before its first message.
    pub(crate) fn position(&mut self, stream: StreamRef<'_>, now: u64) -> String {
        let slot = self.slot_or_new(stream, now);
        let s = &mut self.streams[slot];
        s.touched_ms = now;
        position::format(s.kind, &s.epoch, s.last)
    }

    /// Appends one message (`json`, an object) to the stream at the next
    /// offset. `None` if it is not an object (nothing is kept).
    pub(crate) fn append(
        &mut self,
        stream: StreamRef<'_>,
        json: &[u8],
        now: u64,
    ) -> Option<Appended> {
        let slot = self.slot_or_new(stream, now);
        let s = &mut self.streams[slot];
        let offset = s.last + 1;
        let room = match stream {
            StreamRef::Room(room) => Some(room),
            StreamRef::All | StreamRef::User(_) => None,
        };
        let stamped = position::stamp(json, s.kind, room, &s.epoch, offset)?;
        let wire = frame::encode(frame::Kind::Text, &stamped);
        s.last = offset;
        s.touched_ms = now;
        s.entries.push_back(wire.clone());
        let mut dropped = 0;
        if s.entries.len() > self.size {
            if let Some(old) = s.entries.pop_front() {
                dropped = old.len() + ENTRY_OVERHEAD;
                self.stale += 1;
            }
        }
        self.order.push_back(Record {
            slot: slot as u32,
            generation: s.generation,
            offset,
            at_ms: now,
        });
        self.entries += 1;
        self.bytes += wire.len() + ENTRY_OVERHEAD;
        if dropped > 0 {
            self.release(dropped);
        }
        while self.bytes > self.max_bytes && self.pop_oldest() {}
        self.compact();
        Some(Appended {
            json: stamped,
            wire,
        })
    }

    fn release(&mut self, bytes: usize) {
        self.entries -= 1;
        self.bytes -= bytes;
        self.stats.evicted += 1;
    }

    /// Drops the node's oldest record and its entry, if still held.
    /// Returns false when nothing was left.
    fn pop_oldest(&mut self) -> bool {
        let Some(record) = self.order.pop_front() else {
            return false;
        };
        let held = self
            .streams
            .get_mut(record.slot as usize)
            .filter(|s| s.generation == record.generation && !s.entries.is_empty())
            .filter(|s| s.first() == record.offset)
            .and_then(|s| s.entries.pop_front());
        match held {
            Some(wire) => self.release(wire.len() + ENTRY_OVERHEAD),
            None => self.stale = self.stale.saturating_sub(1),
        }
        true
    }

    /// Keeps `order` within twice the live entries (plus slack): records
    /// of entries that `size` dropped are removed in one pass, amortized.
    fn compact(&mut self) {
        if self.stale <= self.entries + STALE_SLACK {
            return;
        }
        let streams = &self.streams;
        self.order.retain(|r| {
            streams
                .get(r.slot as usize)
                .is_some_and(|s| s.generation == r.generation && r.offset >= s.first())
        });
        self.order.shrink_to(self.order.len() * 2);
        self.stale = 0;
    }

    /// Drops entries older than `ttl`.
    fn expire(&mut self, now: u64) {
        while self
            .order
            .front()
            .is_some_and(|r| r.at_ms.saturating_add(self.ttl_ms) <= now)
        {
            self.pop_oldest();
        }
    }

    /// Drops expired entries; once a second, also streams that have had no
    /// entries and no use for `meta_ttl`.
    pub(crate) fn tick(&mut self, now: u64) {
        self.expire(now);
        if now < self.next_sweep_ms {
            return;
        }
        self.next_sweep_ms = now + SWEEP_MS;
        let meta_ttl = self.meta_ttl_ms;
        let gone: Vec<usize> = self
            .streams
            .iter()
            .filter(|(_, s)| s.entries.is_empty() && s.touched_ms.saturating_add(meta_ttl) <= now)
            .map(|(slot, _)| slot)
            .collect();
        for slot in gone {
            let stream = self.streams.remove(slot);
            match (stream.kind, stream.name) {
                (Kind::User, Some(name)) => {
                    self.users.remove(&name);
                }
                (Kind::Room, Some(name)) => {
                    self.rooms.remove(&name);
                }
                _ => self.all = None,
            }
        }
        if self.streams.is_empty() {
            self.streams.shrink_to_fit();
        }
    }

    /// When [`History::tick`] next has work: the oldest entry's expiry or
    /// the next sweep while streams are known.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let expiry = self
            .order
            .front()
            .map(|r| r.at_ms.saturating_add(self.ttl_ms));
        let sweep = (!self.streams.is_empty()).then_some(self.next_sweep_ms);
        expiry.into_iter().chain(sweep).min()
    }

    /// Every held frame of `stream` after `since`, in stream order, or
    /// `None` when the stream cannot vouch for that range: unknown (this
    /// node never made it, or forgot it), another epoch, an offset past its
    /// last, or entries already dropped. Never a part of the range.
    pub(crate) fn replay(
        &mut self,
        stream: StreamRef<'_>,
        since: &Position,
        now: u64,
    ) -> Option<Vec<Wire>> {
        self.expire(now);
        let s = &self.streams[self.slot(stream)?];
        if since.kind != s.kind || !s.epoch.is(&since.epoch) || since.offset > s.last {
            return None;
        }
        let first = s.first();
        if since.offset + 1 < first {
            return None;
        }
        let skip = (since.offset + 1 - first) as usize;
        Some(s.entries.range(skip..).cloned().collect())
    }
}

#[cfg(test)]
mod tests;
