//! Presence: what one node tells the others it holds (sessions, users and
//! room members, counted, and which users are in which room), and the
//! [`View`] of the other live nodes that status, REST `sent`, room listings,
//! presence events and the handle's queries add to the local figures.
//!
//! Pure: the publisher thread encodes this node's entry (from the counts it
//! keeps, see [`super::presence`]), signs it with `cluster.secret`, and
//! parses the others' entries read from Redis, checked and bounded, into a
//! `View`.
//!
//! Size: an entry grows with the node's users and rooms (one counter each)
//! and with its distinct (room, user) pairs, of which it lists at most
//! [`MAX_MEMBERS`]; past that it lists rooms in name order until the cap
//! and says `members_truncated`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::wire::Key;
use crate::audience::Audience;

/// Most (room, user) pairs one node publishes: a bound on its entry, and on
/// what every other node holds for it.
pub const MAX_MEMBERS: usize = 20_000;

/// One node's presence entry, as stored in Redis.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Open chat sessions, anonymous ones included.
    pub sessions: usize,
    /// User id → open sessions.
    pub users: HashMap<String, usize>,
    /// Room → members.
    pub rooms: HashMap<String, usize>,
    /// Room → its distinct users on that node (anonymous members are only
    /// counted in `rooms`).
    #[serde(default)]
    pub members: HashMap<String, HashSet<String>>,
    /// The node had more than [`MAX_MEMBERS`] pairs and listed only some.
    #[serde(default)]
    pub members_truncated: bool,
}

/// Largest entry read from Redis (and so parsed): 64 MiB, eight times the
/// entry of a node with 64,000 rooms of 128-byte names.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;
/// Most sessions one entry may claim; every user's and room's count is
/// within its `sessions`.
pub const MAX_SESSIONS: usize = 1 << 24;

/// The first word of an entry's header line, `wshub-presence1 <version>[
/// <mac>]`, before the JSON.
const MAGIC: &str = "wshub-presence1";
/// Most bytes of an entry a reader looks at to learn its version (the
/// header line is shorter: the magic word, a 41-byte version at most, a
/// 43-byte MAC).
pub const HEADER_MAX: usize = 128;

/// Why another node's entry was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not signed, or not with our key, while `cluster.secret` is set.
    Unsigned,
    /// Not an entry, or claiming more than the bounds allow.
    Malformed,
    /// Larger than [`MAX_ENTRY_BYTES`].
    TooLarge,
    /// Older than what this node already read from that node: a signed
    /// entry or change written again by someone else.
    Replayed,
}

/// The value stored under `key_name` for `json`: a header line with
/// `version` (which readers compare to skip an entry they already hold),
/// signed with `key` when set.
pub fn seal(json: &[u8], version: &str, key: Option<&Key>, key_name: &str) -> Vec<u8> {
    let mut header = format!("{MAGIC} {version}");
    if let Some(key) = key {
        let mac = key.presence_mac(key_name, header.as_bytes(), json);
        header.push(' ');
        header.push_str(&mac);
    }
    let mut sealed = Vec::with_capacity(header.len() + 1 + json.len());
    sealed.extend_from_slice(header.as_bytes());
    sealed.push(b'\n');
    sealed.extend_from_slice(json);
    sealed
}

/// The header line of an entry (found in its first [`HEADER_MAX`] bytes),
/// and the rest.
fn split(raw: &[u8]) -> Option<(&str, &[u8])> {
    let newline = raw.iter().take(HEADER_MAX).position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&raw[..newline]).ok()?;
    header
        .strip_prefix(MAGIC)?
        .starts_with(' ')
        .then_some((header, &raw[newline + 1..]))
}

/// The version an entry's header names (given at least its first
/// [`HEADER_MAX`] bytes); `None` when it has no valid header.
pub fn version(head: &[u8]) -> Option<&str> {
    let (header, _) = split(head)?;
    header.split(' ').nth(1).filter(|v| !v.is_empty())
}

/// The version and JSON of a value sealed under `key_name` (an entry, or
/// a change in a log, see [`super::changes`]): its MAC checked when `key`
/// is set (an unsigned one is refused then).
pub fn unseal<'a>(
    raw: &'a [u8],
    key: Option<&Key>,
    key_name: &str,
) -> Result<(&'a str, &'a [u8]), Refused> {
    if raw.len() > MAX_ENTRY_BYTES {
        return Err(Refused::TooLarge);
    }
    let (header, json) = split(raw).ok_or(Refused::Malformed)?;
    let words: Vec<&str> = header.split(' ').collect();
    if let Some(key) = key {
        let [_, _, mac] = words[..] else {
            return Err(Refused::Unsigned);
        };
        let signed = &header[..header.len() - mac.len() - 1];
        if !key.presence_mac_ok(key_name, signed.as_bytes(), json, mac.as_bytes()) {
            return Err(Refused::Unsigned);
        }
    } else if !(2..=3).contains(&words.len()) {
        return Err(Refused::Malformed);
    }
    Ok((words.get(1).copied().unwrap_or_default(), json))
}

/// Another node's entry as read from `key_name`: its MAC checked when
/// `key` is set (an unsigned one is refused then), its counts held to the
/// bounds.
pub fn open(raw: &[u8], key: Option<&Key>, key_name: &str) -> Result<Entry, Refused> {
    let (_, json) = unseal(raw, key, key_name)?;
    let entry: Entry = serde_json::from_slice(json).map_err(|_| Refused::Malformed)?;
    let within = |count: &usize| *count <= entry.sessions;
    let pairs = entry
        .members
        .values()
        .try_fold(0usize, |sum, users| sum.checked_add(users.len()));
    let users = entry
        .users
        .values()
        .try_fold(0usize, |sum, n| sum.checked_add(*n));
    let bounded = entry.sessions <= MAX_SESSIONS
        && users.is_some_and(|n| n <= entry.sessions)
        && entry.rooms.values().all(within)
        && pairs.is_some_and(|n| n <= MAX_MEMBERS);
    if bounded {
        Ok(entry)
    } else {
        Err(Refused::Malformed)
    }
}

/// The other live nodes, as last read from Redis.
#[derive(Debug, Default)]
pub struct View {
    nodes: Vec<(String, Arc<Entry>)>,
}

impl View {
    /// A view of `nodes` (node id, entry), this node left out by the caller.
    #[cfg(test)]
    pub fn new(nodes: Vec<(String, Entry)>) -> View {
        View::shared(nodes.into_iter().map(|(id, e)| (id, Arc::new(e))).collect())
    }

    /// [`View::new`] of entries the caller keeps too (the publisher, so a
    /// new view shares what did not change with the last one).
    pub fn shared(mut nodes: Vec<(String, Arc<Entry>)>) -> View {
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        View { nodes }
    }

    /// How many other nodes are live.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Sessions open on the other nodes.
    pub fn sessions(&self) -> usize {
        self.nodes.iter().map(|(_, e)| e.sessions).sum()
    }

    /// Sessions on the other nodes that a message for `target` reaches.
    pub fn addressed(&self, target: &Audience<String>) -> usize {
        match target {
            Audience::Everyone { .. } => self.sessions(),
            Audience::User(user) => self.count(|e| e.users.get(user.as_str())),
            Audience::Room { room, .. } => self.count(|e| e.rooms.get(room.as_str())),
        }
    }

    fn count(&self, get: impl Fn(&Entry) -> Option<&usize>) -> usize {
        self.nodes.iter().filter_map(|(_, e)| get(e)).sum()
    }

    /// Whether any other node holds a session of `user`.
    pub fn has_user(&self, user: &str) -> bool {
        self.nodes.iter().any(|(_, e)| e.users.contains_key(user))
    }

    /// Whether any other node holds a member of `room`.
    pub fn has_room(&self, room: &str) -> bool {
        self.nodes.iter().any(|(_, e)| e.rooms.contains_key(room))
    }

    /// The other live nodes' ids, in order.
    pub fn node_ids(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|(id, _)| id.as_str())
    }

    /// Every (node, user) and (node, room) pair, for diffing two views.
    pub fn users_and_rooms(&self) -> (Vec<&str>, Vec<&str>) {
        let mut users = Vec::new();
        let mut rooms = Vec::new();
        for (_, entry) in &self.nodes {
            users.extend(entry.users.keys().map(String::as_str));
            rooms.extend(entry.rooms.keys().map(String::as_str));
        }
        (users, rooms)
    }

    /// Distinct user ids online here (`local`) or on any other node, sorted.
    pub fn merged_users<'a>(&'a self, local: Vec<&'a str>) -> Vec<&'a str> {
        let mut users = local;
        for (_, entry) in &self.nodes {
            users.extend(entry.users.keys().map(String::as_str));
        }
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Distinct users of `room` here (`local`) or on any other node, sorted.
    pub fn merged_room_users<'a>(&'a self, room: &str, local: Vec<&'a str>) -> Vec<&'a str> {
        let mut users = local;
        for (_, entry) in &self.nodes {
            users.extend(
                entry
                    .members
                    .get(room)
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Whether some node listed only part of its room members.
    pub fn members_truncated(&self) -> bool {
        self.nodes.iter().any(|(_, e)| e.members_truncated)
    }

    /// Whether another node has a session of `user` in `room`.
    pub fn user_in_room(&self, user: &str, room: &str) -> bool {
        self.nodes
            .iter()
            .any(|(_, e)| e.members.get(room).is_some_and(|m| m.contains(user)))
    }

    /// The (room, user) pairs of the nodes in this view that are gone from
    /// `next` and that no node of `next` holds: the users a vanished node
    /// (dead, or shut down) took out of their rooms.
    pub fn vanished<'a>(&'a self, next: &'a View) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.nodes
            .iter()
            .filter(|(id, _)| next.nodes.binary_search_by(|(n, _)| n.cmp(id)).is_err())
            .flat_map(|(_, entry)| {
                entry.members.iter().flat_map(|(room, users)| {
                    users.iter().map(move |user| (room.as_str(), user.as_str()))
                })
            })
            .filter(|(room, user)| !next.user_in_room(user, room))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::SessionKey;
    use crate::cluster::presence::Counts;
    use crate::router::Router;
    use std::rc::Rc;

    fn entry(json: &str) -> Entry {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_local_entry_counts_sessions_users_and_rooms() {
        let mut router = Router::default();
        let key = |i| SessionKey {
            index: i,
            generation: 1,
        };
        router.add_session(key(1), Some(&Rc::from("amy")));
        router.add_session(key(2), Some(&Rc::from("amy")));
        router.add_session(key(3), None);
        router
            .join(key(1), Some("amy"), "r")
            .expect("within the room cap");
        router
            .join(key(2), Some("amy"), "r")
            .expect("within the room cap");
        router.join(key(3), None, "r").expect("within the room cap");
        router
            .join(key(3), None, "anon")
            .expect("within the room cap");
        let json = String::from_utf8(Counts::from_router(&router).encode()).unwrap();
        assert_eq!(
            json,
            r#"{"sessions":3,"users":{"amy":2},"rooms":{"anon":1,"r":3},"members":{"r":["amy"]}}"#
        );
        assert_eq!(entry(&json).users["amy"], 2);
    }

    #[test]
    fn the_view_adds_up_the_other_nodes() {
        let view = View::new(vec![
            (
                "b".into(),
                entry(r#"{"sessions":3,"users":{"amy":1,"bob":1},"rooms":{"r":2}}"#),
            ),
            (
                "a".into(),
                entry(r#"{"sessions":1,"users":{"amy":1},"rooms":{}}"#),
            ),
        ]);
        assert_eq!(view.nodes(), 2);
        assert_eq!(view.addressed(&Audience::EVERYONE), 4);
        assert_eq!(view.addressed(&Audience::User("amy".into())), 2);
        assert_eq!(view.addressed(&Audience::User("zed".into())), 0);
        assert_eq!(view.addressed(&Audience::room("r".into())), 2);
        assert_eq!(view.merged_users(vec!["cat", "amy"]), ["amy", "bob", "cat"]);
    }

    #[test]
    fn room_members_merge_and_vanished_nodes_show_who_left() {
        let before = View::new(vec![
            (
                "a".into(),
                entry(
                    r#"{"sessions":2,"users":{"amy":1,"bob":1},"rooms":{"r":2},"members":{"r":["amy","bob"]}}"#,
                ),
            ),
            (
                "b".into(),
                entry(
                    r#"{"sessions":1,"users":{"bob":1},"rooms":{"r":1},"members":{"r":["bob"]}}"#,
                ),
            ),
        ]);
        assert_eq!(
            before.merged_room_users("r", vec!["cat"]),
            ["amy", "bob", "cat"]
        );
        assert!(before.user_in_room("amy", "r") && !before.user_in_room("amy", "s"));
        assert!(!before.members_truncated());
        let after = View::new(vec![(
            "b".into(),
            entry(r#"{"sessions":1,"users":{"bob":1},"rooms":{"r":1},"members":{"r":["bob"]}}"#),
        )]);
        let gone: Vec<_> = before.vanished(&after).collect();
        assert_eq!(gone, [("r", "amy")], "bob is still in r on b");
        assert_eq!(after.vanished(&after).count(), 0);
    }

    #[test]
    fn a_node_lists_at_most_max_members_pairs() {
        let mut router = Router::with_limits(crate::router::Limits {
            max_rooms_per_session: MAX_MEMBERS + 1,
            ..Default::default()
        });
        let amy = Rc::from("amy");
        let key = SessionKey {
            index: 1,
            generation: 1,
        };
        router.add_session(key, Some(&amy));
        for i in 0..=MAX_MEMBERS {
            router.join(key, Some("amy"), &format!("r{i:06}")).unwrap();
        }
        let entry: Entry = serde_json::from_slice(&Counts::from_router(&router).encode()).unwrap();
        assert_eq!(entry.members.len(), MAX_MEMBERS);
        assert!(entry.members_truncated);
        assert_eq!(
            entry.rooms.len(),
            MAX_MEMBERS + 1,
            "every room still counted"
        );
        let view = View::new(vec![("a".into(), entry)]);
        assert!(view.members_truncated());
    }

    #[test]
    fn with_a_secret_only_entries_signed_for_their_key_are_read() {
        let json = br#"{"sessions":1,"users":{"amy":1},"rooms":{}}"#;
        let key = Key::new(b"k");
        let sealed = seal(json, "7.1", Some(&key), "t:node:a");
        assert_eq!(
            version(&sealed[..HEADER_MAX.min(sealed.len())]),
            Some("7.1")
        );
        assert_eq!(open(&sealed, Some(&key), "t:node:a").unwrap().sessions, 1);
        // Without a secret, signed or not, the entry is read.
        let plain = seal(json, "7.1", None, "t:node:a");
        assert_eq!(version(&plain), Some("7.1"));
        assert_eq!(open(&sealed, None, "t:node:a").unwrap().sessions, 1);
        assert_eq!(open(&plain, None, "t:node:a").unwrap().sessions, 1);
        let renumbered = String::from_utf8(sealed.clone())
            .unwrap()
            .replacen("7.1", "7.2", 1)
            .into_bytes();
        for (raw, name, why) in [
            (plain.clone(), "t:node:a", "unsigned"),
            (json.to_vec(), "t:node:a", "no header"),
            (sealed.clone(), "t:node:fake", "moved to another node's key"),
            (
                seal(json, "7.1", Some(&Key::new(b"other")), "t:node:a"),
                "t:node:a",
                "another key",
            ),
            (
                [&sealed[..sealed.len() - 2], b"9}"].concat(),
                "t:node:a",
                "changed after signing",
            ),
            (renumbered, "t:node:a", "another version"),
        ] {
            let refused = open(&raw, Some(&key), name);
            assert!(
                matches!(refused, Err(Refused::Unsigned | Refused::Malformed)),
                "{why}: {refused:?}"
            );
        }
    }

    #[test]
    fn an_entry_claiming_past_the_bounds_is_refused() {
        let big = format!(
            r#"{{"sessions":{},"users":{{}},"rooms":{{}}}}"#,
            MAX_SESSIONS + 1
        );
        let many_members: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("u{i}")).collect();
        let members = serde_json::json!({
            "sessions": 1, "users": {}, "rooms": {}, "members": {"r": many_members}
        })
        .to_string();
        for (json, why) in [
            (big.as_str(), "too many sessions"),
            (
                r#"{"sessions":1,"users":{"a":1,"b":1},"rooms":{}}"#,
                "users past sessions",
            ),
            (
                r#"{"sessions":1,"users":{},"rooms":{"r":2}}"#,
                "a room past sessions",
            ),
            (
                r#"{"sessions":1,"users":{"a":18446744073709551615,"b":2},"rooms":{}}"#,
                "a sum that overflows",
            ),
            (members.as_str(), "too many pairs"),
            ("[]", "not an entry"),
        ] {
            let raw = seal(json.as_bytes(), "1.1", None, "k");
            assert_eq!(open(&raw, None, "k"), Err(Refused::Malformed), "{why}");
        }
        for raw in [
            "wshub-presence1 no newline",
            "wshub-presence1\n{}",
            "{\"sessions\":0,\"users\":{},\"rooms\":{}}",
        ] {
            assert_eq!(
                open(raw.as_bytes(), None, "k"),
                Err(Refused::Malformed),
                "{raw}"
            );
            assert_eq!(version(raw.as_bytes()), None, "{raw}");
        }
        let huge = vec![b' '; MAX_ENTRY_BYTES + 1];
        assert_eq!(open(&huge, None, "k"), Err(Refused::TooLarge));
    }
}
