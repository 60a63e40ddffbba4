//! Presence changes as they travel through Redis, so that a join, a leave
//! or a connect costs Redis traffic in proportion to what changed, not to
//! what a node holds (docs/cluster.md, "What presence costs Redis").
//!
//! Each refresh in which a node's presence changed appends one [`Delta`]
//! (the new values of the names that changed, numbered with the run's next
//! sequence number and signed like an entry) to the node's change log, a
//! stream whose ids are `0-<seq>`. The whole entry is written again only
//! now and then ([`Log`] decides when, so those writes cost at most about
//! twice the changes they stand for), and the log keeps what came after the
//! entry before last. Another node follows the log from the sequence number
//! it holds ([`step`]) and reads the whole entry again only when it missed
//! part of the log (a gap: it was away longer than the log keeps, the node
//! restarted, Redis lost its data).
//!
//! Pure: the publisher thread makes the Redis calls.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::view::{unseal, Entry, Refused, MAX_ENTRY_BYTES, MAX_MEMBERS, MAX_SESSIONS};
use super::wire::Key;

/// The log may grow by this many bytes at least before the entry is
/// written whole again (below it, the entry is so small that rewriting it
/// is cheaper than looking).
pub const MIN_LOG_BYTES: usize = 64 << 10;
/// At most this many changes between two whole writes (so the log stays
/// short in entries, not only in bytes).
pub const MAX_LOG_ENTRIES: u64 = 4096;
/// Most log entries one read returns; a reader further behind continues at
/// its next refresh.
pub const READ_COUNT: usize = 4096;

/// Returns the log entries after `ARGV[1]` (an exclusive start, `(0-<seq>`),
/// at most `ARGV[2]` of them and `ARGV[3]` bytes in all, each as
/// `{id, payload}`; an entry past the byte bound comes as `{id, 0}` and
/// ends the reply, so a forged giant entry is never sent whole.
pub const READ_SCRIPT: &str =
    "local r = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2]) \
local out, total, max = {}, 0, tonumber(ARGV[3]) \
for _, e in ipairs(r) do \
local v = e[2][2] or '' \
total = total + #v \
if total > max then out[#out + 1] = {e[1], 0} break end \
out[#out + 1] = {e[1], v} \
end \
return out";

/// What changed in one node's presence during one refresh period: the
/// new values of the names that changed.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delta {
    /// Open sessions now.
    pub sessions: usize,
    /// User id → its open sessions now (0: gone).
    #[serde(default)]
    pub users: HashMap<String, usize>,
    /// Room → its members now (0: gone).
    #[serde(default)]
    pub rooms: HashMap<String, usize>,
    /// Room → users now listed among its members.
    #[serde(default)]
    pub joined: HashMap<String, Vec<String>>,
    /// Room → users no longer listed among its members.
    #[serde(default)]
    pub left: HashMap<String, Vec<String>>,
}

impl Delta {
    /// Whether nothing but the session count changed, and not even that.
    pub fn is_empty(&self, sessions_before: usize) -> bool {
        self.sessions == sessions_before
            && self.users.is_empty()
            && self.rooms.is_empty()
            && self.joined.is_empty()
            && self.left.is_empty()
    }

    /// The JSON stored in the log (after the header line).
    pub fn encode(&self) -> Vec<u8> {
        // Maps of strings and numbers always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One run's place in its own log, and when to write the entry whole.
#[derive(Debug, Default)]
pub struct Log {
    /// The last sequence number given out.
    seq: u64,
    /// The sequence number of the entry as last written whole.
    whole_seq: u64,
    /// Its size.
    whole_len: usize,
    /// Log bytes and entries appended since.
    bytes_since: usize,
    entries_since: u64,
    /// A change was not logged: the entry must be written whole.
    owed: bool,
}

impl Log {
    /// The last sequence number given out (the version of the entry when
    /// written whole now).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Numbers a delta of `bytes` appended to the log.
    pub fn append(&mut self, bytes: usize) -> u64 {
        self.seq += 1;
        self.bytes_since = self.bytes_since.saturating_add(bytes);
        self.entries_since += 1;
        self.seq
    }

    /// A change too large for the log (the loop handed over a snapshot):
    /// numbered, so readers see a gap, and owed as a whole write.
    pub fn unlogged(&mut self) {
        self.seq += 1;
        self.owed = true;
    }

    /// Whether the entry is to be written whole now: a change was not
    /// logged, or the log since the last whole write reached half the
    /// entry's size (at least [`MIN_LOG_BYTES`]) or [`MAX_LOG_ENTRIES`].
    pub fn whole_due(&self) -> bool {
        self.owed
            || self.entries_since >= MAX_LOG_ENTRIES
            || self.bytes_since >= (self.whole_len / 2).max(MIN_LOG_BYTES)
    }

    /// The entry was written whole (`len` bytes) at [`Log::seq`]; `fresh`:
    /// the log was deleted first. Returns the first sequence number the
    /// log must still keep: what follows the previous whole entry, for a
    /// reader that read that one just before it was replaced.
    pub fn written_whole(&mut self, len: usize, fresh: bool) -> u64 {
        let keep = if fresh { self.seq } else { self.whole_seq } + 1;
        self.whole_seq = self.seq;
        self.whole_len = len;
        self.bytes_since = 0;
        self.entries_since = 0;
        self.owed = false;
        keep
    }
}

/// One run of one node (`epoch`) and a sequence number in its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

impl Position {
    /// Parses a version (`<epoch>.<seq>`, as in entry headers).
    pub fn parse(version: &str) -> Option<Position> {
        let (epoch, seq) = version.split_once('.')?;
        Some(Position {
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The version text of this position.
    pub fn version(&self) -> String {
        format!("{}.{}", self.epoch, self.seq)
    }

    /// The log entry id of this sequence number.
    pub fn stream_id(seq: u64) -> String {
        format!("0-{seq}")
    }

    /// The sequence number of a log entry id (`0-<seq>`).
    pub fn seq_of(stream_id: &[u8]) -> Option<u64> {
        std::str::from_utf8(stream_id)
            .ok()?
            .strip_prefix("0-")?
            .parse()
            .ok()
    }
}

/// What a reader does with one node at a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing new.
    InSync,
    /// Apply the log entries read, in order.
    Apply,
    /// Part of the log was missed: read the whole entry again.
    Gap,
}

/// Given where a reader stands (`at`), the version of the node's entry as
/// it stands in Redis (`whole`) and the sequence numbers of the log
/// entries read after `at` (in order): whether those entries carry on
/// exactly from `at`.
pub fn step(at: Position, whole: Position, logged: &[u64]) -> Step {
    if whole.epoch != at.epoch {
        // Another run of the node: its log starts afresh.
        return Step::Gap;
    }
    if logged.is_empty() {
        // The entry was written whole past `at` with nothing logged in
        // between (a change too large for the log, or Redis lost the log).
        return if whole.seq > at.seq {
            Step::Gap
        } else {
            Step::InSync
        };
    }
    let mut wanted = at.seq;
    let consecutive = logged.iter().all(|seq| {
        let next = wanted.checked_add(1);
        wanted = *seq;
        next == Some(*seq)
    });
    if consecutive {
        Step::Apply
    } else {
        Step::Gap
    }
}

/// One other node's presence as a reader follows it.
#[derive(Debug, Clone)]
pub struct Followed {
    /// The last change applied.
    pub at: Position,
    pub entry: Arc<Entry>,
    /// The sum of `entry.users` (held within `entry.sessions`).
    users_total: usize,
    /// The (room, user) pairs listed in `entry.members`.
    pairs: usize,
}

impl Followed {
    /// Starts following from an entry read whole (already checked by
    /// [`super::view::open`]).
    pub fn new(at: Position, entry: Entry) -> Followed {
        let users_total = entry
            .users
            .values()
            .fold(0usize, |t, n| t.saturating_add(*n));
        let pairs = entry.members.values().map(|users| users.len()).sum();
        Followed {
            at,
            entry: Arc::new(entry),
            users_total,
            pairs,
        }
    }

    /// Applies the delta numbered `seq`, held to the bounds an entry is
    /// held to; on refusal nothing changed. Past [`MAX_MEMBERS`] listed
    /// pairs, further joins are not listed and the entry says
    /// `members_truncated`, as a node's own entry would.
    pub fn apply(&mut self, seq: u64, delta: &Delta) -> Result<(), Refused> {
        let mut users_total = self.users_total;
        for (user, now) in &delta.users {
            let before = self.entry.users.get(user).copied().unwrap_or(0);
            users_total = users_total
                .checked_sub(before)
                .and_then(|t| t.checked_add(*now))
                .ok_or(Refused::Malformed)?;
        }
        let within = delta.sessions <= MAX_SESSIONS
            && users_total <= delta.sessions
            && delta.rooms.values().all(|n| *n <= delta.sessions);
        if !within {
            return Err(Refused::Malformed);
        }
        // Copied here if the loop still holds the previous view.
        let entry = Arc::make_mut(&mut self.entry);
        entry.sessions = delta.sessions;
        for (names, counts) in [
            (&delta.users, &mut entry.users),
            (&delta.rooms, &mut entry.rooms),
        ] {
            for (name, now) in names {
                if *now == 0 {
                    counts.remove(name);
                } else {
                    counts.insert(name.clone(), *now);
                }
            }
        }
        for (room, users) in &delta.left {
            if let Some(listed) = entry.members.get_mut(room) {
                for user in users {
                    if listed.remove(user) {
                        self.pairs -= 1;
                    }
                }
                if listed.is_empty() {
                    entry.members.remove(room);
                }
            }
        }
        for (room, users) in &delta.joined {
            for user in users {
                let listed = entry.members.get(room).is_some_and(|l| l.contains(user));
                if listed {
                    continue;
                }
                if self.pairs >= MAX_MEMBERS {
                    entry.members_truncated = true;
                    continue;
                }
                entry
                    .members
                    .entry(room.clone())
                    .or_default()
                    .insert(user.clone());
                self.pairs += 1;
            }
        }
        self.users_total = users_total;
        self.at.seq = seq;
        Ok(())
    }
}

/// A change read from the log under `log_key` as the delta numbered
/// `wanted`: its MAC checked when `key` is set, its version that position
/// (so a change cannot be moved to another place in the log, or another
/// run's).
pub fn open_delta(
    raw: &[u8],
    key: Option<&Key>,
    log_key: &str,
    wanted: Position,
) -> Result<Delta, Refused> {
    let (version, json) = unseal(raw, key, log_key)?;
    if Position::parse(version) != Some(wanted) {
        return Err(Refused::Replayed);
    }
    serde_json::from_slice(json).map_err(|_| Refused::Malformed)
}

/// One entry of a log as the read script returns it: its sequence number
/// and payload (`None`: past the read's byte bound, or not ours).
pub type Logged = (u64, Option<Vec<u8>>);

/// The entries in the read script's reply; an entry whose id is not
/// `0-<seq>` ends the list with `u64::MAX`, which never follows on.
pub fn logged(reply: &redis::Value) -> Vec<Logged> {
    let redis::Value::Array(entries) = reply else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let (id, payload) = match entry {
            redis::Value::Array(pair) if pair.len() == 2 => (&pair[0], &pair[1]),
            _ => {
                out.push((u64::MAX, None));
                break;
            }
        };
        let seq = match id {
            redis::Value::BulkString(id) => Position::seq_of(id),
            _ => None,
        };
        let payload = match payload {
            redis::Value::BulkString(bytes) if bytes.len() <= MAX_ENTRY_BYTES => {
                Some(bytes.clone())
            }
            _ => None,
        };
        out.push((seq.unwrap_or(u64::MAX), payload));
        if out
            .last()
            .is_some_and(|(seq, p)| *seq == u64::MAX || p.is_none())
        {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn at(epoch: u64, seq: u64) -> Position {
        Position { epoch, seq }
    }

    #[test]
    fn a_reader_applies_only_what_carries_on_from_where_it_stands() {
        // Nothing new, the whole entry as old as what it holds or older.
        assert_eq!(step(at(7, 5), at(7, 5), &[]), Step::InSync);
        assert_eq!(step(at(7, 5), at(7, 2), &[]), Step::InSync);
        // The next entries, in order.
        assert_eq!(step(at(7, 5), at(7, 2), &[6, 7, 8]), Step::Apply);
        assert_eq!(step(at(7, 5), at(7, 8), &[6]), Step::Apply);
        // Missed entries (trimmed away, or a hole), or out of order.
        assert_eq!(step(at(7, 5), at(7, 9), &[8, 9]), Step::Gap);
        assert_eq!(step(at(7, 5), at(7, 9), &[6, 8]), Step::Gap);
        assert_eq!(step(at(7, 5), at(7, 9), &[6, 6]), Step::Gap);
        // Written whole past what it holds with nothing logged: Redis
        // lost the log, or a change was too large for it.
        assert_eq!(step(at(7, 5), at(7, 6), &[]), Step::Gap);
        // Another run of the node.
        assert_eq!(step(at(7, 5), at(8, 0), &[]), Step::Gap);
        assert_eq!(step(at(7, 5), at(8, 9), &[6]), Step::Gap);
        // An id that is not ours never carries on.
        assert_eq!(step(at(7, 5), at(7, 5), &[u64::MAX]), Step::Gap);
        assert_eq!(step(at(7, u64::MAX), at(7, 5), &[0]), Step::Gap);
    }

    #[test]
    fn versions_and_stream_ids_round_trip() {
        let p = at(1_700_000_000_000_000_000, 42);
        assert_eq!(Position::parse(&p.version()), Some(p));
        assert_eq!(
            Position::seq_of(Position::stream_id(42).as_bytes()),
            Some(42)
        );
        for bad in ["", "1", "1.", ".1", "a.1", "1.-1", "1.2.3"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
        for bad in ["1-42", "42", "0-x", "0-"] {
            assert_eq!(Position::seq_of(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn the_entry_is_written_whole_once_the_log_reaches_half_its_size() {
        let mut log = Log::default();
        // The first write of a run: whole, the log deleted before it.
        assert_eq!(log.written_whole(1 << 20, true), 1);
        assert!(!log.whole_due());
        let mut seq = 0;
        let mut logged = 0;
        while !log.whole_due() {
            seq = log.append(1000);
            logged += 1000;
        }
        // Half of a 1 MiB entry, give or take one delta.
        assert!(
            (512 << 10..(512 << 10) + 1000).contains(&logged),
            "{logged}"
        );
        assert_eq!(log.seq(), seq);
        // Readers that read the first whole entry still find what followed.
        assert_eq!(log.written_whole(1 << 20, false), 1);
        log.append(10);
        assert!(!log.whole_due());
        // A small entry is rewritten only past MIN_LOG_BYTES...
        assert_eq!(log.written_whole(100, false), seq + 1);
        log.append(MIN_LOG_BYTES - 1);
        assert!(!log.whole_due());
        log.append(1);
        assert!(log.whole_due());
        log.written_whole(100, false);
        // ...or MAX_LOG_ENTRIES changes.
        for _ in 0..MAX_LOG_ENTRIES - 1 {
            log.append(1);
        }
        assert!(!log.whole_due());
        log.append(1);
        assert!(log.whole_due());
        log.written_whole(100, false);
        // A change that is not logged is owed as a whole write.
        let before = log.seq();
        log.unlogged();
        assert_eq!(log.seq(), before + 1);
        assert!(log.whole_due());
    }

    fn entry(json: &str) -> Entry {
        serde_json::from_str(json).unwrap()
    }

    fn delta(json: &str) -> Delta {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn deltas_round_trip_and_apply_as_new_values() {
        let mut followed = Followed::new(
            at(1, 3),
            entry(r#"{"sessions":2,"users":{"amy":2},"rooms":{"r":2},"members":{"r":["amy"]}}"#),
        );
        let d = delta(
            r#"{"sessions":3,"users":{"amy":0,"bob":3},"rooms":{"r":0,"s":1},"joined":{"s":["bob"]},"left":{"r":["amy"]}}"#,
        );
        assert_eq!(serde_json::from_slice::<Delta>(&d.encode()).unwrap(), d);
        let shared = followed.entry.clone();
        followed.apply(4, &d).unwrap();
        assert_eq!(followed.at, at(1, 4));
        assert_eq!(
            *followed.entry,
            entry(r#"{"sessions":3,"users":{"bob":3},"rooms":{"s":1},"members":{"s":["bob"]}}"#)
        );
        // A view still holding the old entry keeps it as it was.
        assert_eq!(shared.sessions, 2);
        // Only the sessions count changed.
        let d = delta(r#"{"sessions":4}"#);
        assert!(!d.is_empty(3) && delta(r#"{"sessions":3}"#).is_empty(3));
        followed.apply(5, &d).unwrap();
        assert_eq!(followed.entry.sessions, 4);
        assert_eq!(followed.entry.users["bob"], 3);
    }

    #[test]
    fn a_delta_past_the_bounds_changes_nothing() {
        let start = r#"{"sessions":2,"users":{"amy":2},"rooms":{"r":2}}"#;
        for (json, why) in [
            (r#"{"sessions":2,"users":{"bob":1}}"#, "users past sessions"),
            (r#"{"sessions":1}"#, "sessions below the users"),
            (r#"{"sessions":2,"rooms":{"s":3}}"#, "a room past sessions"),
            (
                r#"{"sessions":99999999999,"users":{"amy":99999999999}}"#,
                "past MAX_SESSIONS",
            ),
            (
                r#"{"sessions":2,"users":{"a":18446744073709551615,"b":2}}"#,
                "a sum that overflows",
            ),
        ] {
            let mut followed = Followed::new(at(1, 1), entry(start));
            assert_eq!(
                followed.apply(2, &delta(json)),
                Err(Refused::Malformed),
                "{why}"
            );
            assert_eq!(*followed.entry, entry(start), "{why}");
            assert_eq!(followed.at, at(1, 1), "{why}");
        }
    }

    #[test]
    fn joins_past_max_members_are_not_listed() {
        let users: Vec<String> = (0..MAX_MEMBERS).map(|i| format!("u{i}")).collect();
        let mut followed = Followed::new(at(1, 1), Entry::default());
        let mut d = Delta {
            sessions: MAX_MEMBERS + 1,
            ..Delta::default()
        };
        d.joined.insert("r".into(), users);
        followed.apply(2, &d).unwrap();
        assert!(!followed.entry.members_truncated);
        let mut d = Delta {
            sessions: MAX_MEMBERS + 1,
            ..Delta::default()
        };
        d.joined.insert("s".into(), vec!["late".into()]);
        followed.apply(3, &d).unwrap();
        assert!(followed.entry.members_truncated);
        assert!(!followed.entry.members.contains_key("s"));
        // A leave makes room again.
        let mut d = Delta {
            sessions: MAX_MEMBERS + 1,
            ..Delta::default()
        };
        d.left.insert("r".into(), vec!["u0".into()]);
        d.joined.insert("s".into(), vec!["late".into()]);
        followed.apply(4, &d).unwrap();
        assert_eq!(
            followed.entry.members["s"],
            HashSet::from(["late".to_owned()])
        );
        assert_eq!(followed.entry.members["r"].len(), MAX_MEMBERS - 1);
    }

    #[test]
    fn a_change_opens_only_signed_for_its_log_and_place() {
        use super::super::view::seal;
        let key = Key::new(b"k");
        let json = delta(r#"{"sessions":1,"users":{"amy":1}}"#).encode();
        let sealed = seal(&json, "7.3", Some(&key), "t:plog:a");
        let d = open_delta(&sealed, Some(&key), "t:plog:a", at(7, 3)).unwrap();
        assert_eq!(d.users["amy"], 1);
        assert_eq!(open_delta(&sealed, None, "t:plog:a", at(7, 3)).unwrap(), d);
        for (raw, log, place, refused, why) in [
            (
                sealed.clone(),
                "t:plog:a",
                at(7, 4),
                Refused::Replayed,
                "another place",
            ),
            (
                sealed.clone(),
                "t:plog:a",
                at(8, 3),
                Refused::Replayed,
                "another run",
            ),
            (
                sealed.clone(),
                "t:plog:b",
                at(7, 3),
                Refused::Unsigned,
                "another node's log",
            ),
            (
                seal(&json, "7.3", None, "t:plog:a"),
                "t:plog:a",
                at(7, 3),
                Refused::Unsigned,
                "unsigned",
            ),
            (
                seal(&json, "7.3", Some(&Key::new(b"x")), "t:plog:a"),
                "t:plog:a",
                at(7, 3),
                Refused::Unsigned,
                "another key",
            ),
            (
                seal(b"[]", "7.3", Some(&key), "t:plog:a"),
                "t:plog:a",
                at(7, 3),
                Refused::Malformed,
                "not a change",
            ),
        ] {
            assert_eq!(
                open_delta(&raw, Some(&key), log, place),
                Err(refused),
                "{why}"
            );
        }
    }

    #[test]
    fn the_read_scripts_reply_is_bounded_and_checked() {
        use redis::Value::{Array, BulkString, Int};
        let item = |id: &str, payload: redis::Value| Array(vec![BulkString(id.into()), payload]);
        let reply = Array(vec![
            item("0-6", BulkString(b"a".to_vec())),
            item("0-7", BulkString(b"b".to_vec())),
        ]);
        assert_eq!(
            logged(&reply),
            [(6, Some(b"a".to_vec())), (7, Some(b"b".to_vec()))]
        );
        // Past the byte bound: marked, and the list ends there.
        let reply = Array(vec![
            item("0-6", BulkString(b"a".to_vec())),
            item("0-7", Int(0)),
            item("0-8", BulkString(b"c".to_vec())),
        ]);
        assert_eq!(logged(&reply), [(6, Some(b"a".to_vec())), (7, None)]);
        // Ids that are not ours.
        let reply = Array(vec![item("1700-0", BulkString(b"a".to_vec()))]);
        assert_eq!(logged(&reply), [(u64::MAX, Some(b"a".to_vec()))]);
        assert_eq!(logged(&Array(vec![Int(3)])), [(u64::MAX, None)]);
        assert_eq!(logged(&redis::Value::Nil), []);
    }
}
