//! This node's presence, kept incrementally: the loop records what each
//! open, close, join and leave changed in [`Deltas`] (O(1) per change, no
//! walk of the router), and the publisher thread applies them to its
//! [`Counts`], the state its entry is encoded from (see [`super::view`]),
//! getting back the new values of the names that changed, which go to the
//! node's change log (see [`super::changes`]).
//!
//! Bounded: pending deltas coalesce per user, room and (room, user) pair,
//! so they never hold more names than changed since the publisher last
//! took them; past [`MAX_PENDING`] names the loop stops recording and
//! hands over one snapshot of the router at its next tick instead.
//!
//! Pure apart from [`Counts::from_router`]: the loop writes, the publisher
//! thread reads, through [`Pending`] behind the bridge's mutex.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::router::Router;

use super::changes::Delta;
use super::view::MAX_MEMBERS;

/// Most distinct names (users, rooms, pairs) pending at once; past it the
/// loop hands over a snapshot instead (rare: that many different names
/// changed within one refresh period).
pub const MAX_PENDING: usize = 100_000;

/// Net changes since the publisher last took them. Zero nets are dropped,
/// so a join followed by a leave leaves nothing behind.
#[derive(Debug, Default)]
pub struct Deltas {
    sessions: i64,
    users: HashMap<String, i64>,
    rooms: HashMap<String, i64>,
    /// Room → user → change of that user's sessions in the room.
    members: HashMap<String, HashMap<String, i64>>,
    /// Pairs in `members`, for the bound.
    pairs: usize,
    /// Past [`MAX_PENDING`]: nothing recorded until a snapshot replaces it.
    overflow: bool,
}

/// Adds `by` to `name`'s net change, dropping it at zero; returns how the
/// number of names changed (+1, 0, -1).
fn bump(map: &mut HashMap<String, i64>, name: &str, by: i64) -> isize {
    match map.get_mut(name) {
        Some(net) => {
            *net += by;
            if *net == 0 {
                map.remove(name);
                return -1;
            }
            0
        }
        None => {
            map.insert(name.to_owned(), by);
            1
        }
    }
}

impl Deltas {
    /// A session (of `user`, `None` if anonymous) opened (`by` 1) or
    /// closed (-1).
    pub fn session(&mut self, user: Option<&str>, by: i64) {
        if self.overflow {
            return;
        }
        self.sessions += by;
        if let Some(user) = user {
            bump(&mut self.users, user, by);
        }
        self.check();
    }

    /// A session of `user` joined (`by` 1) or left (-1) `room`.
    pub fn member(&mut self, user: Option<&str>, room: &str, by: i64) {
        if self.overflow {
            return;
        }
        bump(&mut self.rooms, room, by);
        if let Some(user) = user {
            let users = match self.members.get_mut(room) {
                Some(users) => users,
                None => self.members.entry(room.to_owned()).or_default(),
            };
            self.pairs = self.pairs.saturating_add_signed(bump(users, user, by));
            if users.is_empty() {
                self.members.remove(room);
            }
        }
        self.check();
    }

    /// How many names are pending.
    pub fn len(&self) -> usize {
        self.users.len() + self.rooms.len() + self.pairs
    }

    /// Nothing pending (and no snapshot needed).
    pub fn is_empty(&self) -> bool {
        self.sessions == 0 && self.len() == 0 && !self.overflow
    }

    /// Whether the loop must hand over a snapshot.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    fn check(&mut self) {
        if self.len() > MAX_PENDING {
            *self = Deltas {
                overflow: true,
                ..Deltas::default()
            };
        }
    }
}

/// What the loop hands the publisher: a snapshot (after an overflow, or
/// none) and the deltas recorded after it.
#[derive(Debug, Default)]
pub struct Pending {
    pub snapshot: Option<Counts>,
    pub deltas: Deltas,
}

impl Pending {
    /// What is ready for the publisher, leaving nothing behind; `None`
    /// when nothing changed or a snapshot is still owed.
    pub fn take(&mut self) -> Option<Pending> {
        if self.deltas.overflowed() || (self.snapshot.is_none() && self.deltas.is_empty()) {
            return None;
        }
        Some(std::mem::take(self))
    }
}

/// What applying the loop's changes made of this node's presence.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing changed.
    Nothing,
    /// What changed, for the log.
    Delta(Delta),
    /// A snapshot replaced everything: the entry is written whole.
    Whole,
}

/// This node's presence as the publisher keeps it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    sessions: usize,
    users: HashMap<String, usize>,
    rooms: HashMap<String, usize>,
    /// Room → user → that user's sessions in the room.
    members: HashMap<String, HashMap<String, usize>>,
}

/// Adds `by` to `name`'s count, removing it at zero (a count never goes
/// below zero, whatever a bug upstream would make of it).
fn add(map: &mut HashMap<String, usize>, name: &str, by: i64) {
    let now = match map.get(name) {
        Some(count) => count.saturating_add_signed(by as isize),
        None if by > 0 => by as usize,
        None => return,
    };
    if now == 0 {
        map.remove(name);
    } else if let Some(count) = map.get_mut(name) {
        *count = now;
    } else {
        map.insert(name.to_owned(), now);
    }
}

impl Counts {
    /// The router's state, walked whole: only for a snapshot after an
    /// overflow (and tests).
    pub fn from_router(router: &Router) -> Counts {
        let mut members: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (room, users) in router.rooms_with_users() {
            for user in users {
                let users = members.entry(room.to_owned()).or_default();
                *users.entry(user.to_owned()).or_default() += 1;
            }
        }
        Counts {
            sessions: router.online_count(),
            users: router
                .users_counted()
                .map(|(u, n)| (u.to_owned(), n))
                .collect(),
            rooms: router
                .rooms_counted()
                .map(|(r, n)| (r.to_owned(), n))
                .collect(),
            members,
        }
    }

    /// Applies `pending` (a snapshot replaces everything first): what
    /// changed, as the new values of the names that changed, for the log.
    pub fn apply(&mut self, pending: Pending) -> Applied {
        let mut whole = false;
        if let Some(snapshot) = pending.snapshot {
            whole = *self != snapshot;
            *self = snapshot;
        }
        let deltas = pending.deltas;
        if deltas.is_empty() {
            return if whole {
                Applied::Whole
            } else {
                Applied::Nothing
            };
        }
        let sessions_before = self.sessions;
        self.sessions = self
            .sessions
            .saturating_add_signed(deltas.sessions as isize);
        let mut delta = Delta {
            sessions: self.sessions,
            ..Delta::default()
        };
        for (names, counts, changed) in [
            (&deltas.users, &mut self.users, &mut delta.users),
            (&deltas.rooms, &mut self.rooms, &mut delta.rooms),
        ] {
            for (name, by) in names {
                add(counts, name, *by);
                changed.insert(name.clone(), counts.get(name).copied().unwrap_or(0));
            }
        }
        for (room, users) in &deltas.members {
            let listed = match self.members.get_mut(room.as_str()) {
                Some(listed) => listed,
                None => self.members.entry(room.clone()).or_default(),
            };
            for (user, by) in users {
                let before = listed.contains_key(user);
                add(listed, user, *by);
                let change = match (before, listed.contains_key(user)) {
                    (false, true) => &mut delta.joined,
                    (true, false) => &mut delta.left,
                    _ => continue,
                };
                change.entry(room.clone()).or_default().push(user.clone());
            }
            if listed.is_empty() {
                self.members.remove(room.as_str());
            }
        }
        if whole {
            Applied::Whole
        } else if delta.is_empty(sessions_before) {
            Applied::Nothing
        } else {
            Applied::Delta(delta)
        }
    }

    /// The JSON entry (see [`super::view::Entry`]): counts, and each room's
    /// users, in name order up to [`MAX_MEMBERS`] pairs (then
    /// `members_truncated`).
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Local<'a> {
            sessions: usize,
            users: BTreeMap<&'a str, usize>,
            rooms: BTreeMap<&'a str, usize>,
            members: BTreeMap<&'a str, Vec<&'a str>>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            members_truncated: bool,
        }
        let mut all: Vec<(&str, Vec<&str>)> = self
            .members
            .iter()
            .map(|(room, users)| {
                let mut users: Vec<&str> = users.keys().map(String::as_str).collect();
                users.sort_unstable();
                (room.as_str(), users)
            })
            .collect();
        all.sort_unstable_by_key(|(room, _)| *room);
        let mut members = BTreeMap::new();
        let (mut listed, mut members_truncated) = (0, false);
        for (room, users) in all {
            if listed + users.len() > MAX_MEMBERS {
                members_truncated = true;
                break;
            }
            listed += users.len();
            members.insert(room, users);
        }
        let local = Local {
            sessions: self.sessions,
            users: self.users.iter().map(|(u, n)| (u.as_str(), *n)).collect(),
            rooms: self.rooms.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
            members,
            members_truncated,
        };
        serde_json::to_vec(&local).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::SessionKey;
    use std::rc::Rc;

    fn key(i: u32) -> SessionKey {
        SessionKey {
            index: i,
            generation: 1,
        }
    }

    fn applied(counts: &mut Counts, deltas: Deltas) -> bool {
        counts.apply(Pending {
            snapshot: None,
            deltas,
        }) != Applied::Nothing
    }

    #[test]
    fn deltas_applied_match_the_router_walked_whole() {
        let mut router = Router::default();
        let mut counts = Counts::default();
        let mut deltas = Deltas::default();
        let amy: Rc<str> = Rc::from("amy");
        // Two tabs of amy and an anonymous session, in two rooms.
        for (i, user) in [(1, Some(&amy)), (2, Some(&amy)), (3, None)] {
            router.add_session(key(i), user);
            deltas.session(user.map(|u| &**u), 1);
        }
        for (i, user, room) in [
            (1, Some("amy"), "r"),
            (2, Some("amy"), "r"),
            (3, None, "r"),
            (3, None, "s"),
        ] {
            router.join(key(i), user, room).unwrap();
            deltas.member(user, room, 1);
        }
        assert!(applied(&mut counts, deltas));
        assert_eq!(counts, Counts::from_router(&router));
        assert_eq!(
            String::from_utf8(counts.encode()).unwrap(),
            r#"{"sessions":3,"users":{"amy":2},"rooms":{"r":3,"s":1},"members":{"r":["amy"]}}"#
        );
        // One tab leaves r: amy stays listed; the other closes: she goes.
        let mut deltas = Deltas::default();
        router.leave(key(1), "r");
        deltas.member(Some("amy"), "r", -1);
        assert!(applied(&mut counts, deltas));
        assert_eq!(counts, Counts::from_router(&router));
        assert!(String::from_utf8(counts.encode())
            .unwrap()
            .contains(r#""members":{"r":["amy"]}"#));
        let mut deltas = Deltas::default();
        for room in router.session_rooms(key(2)) {
            deltas.member(Some("amy"), &room, -1);
        }
        deltas.session(Some("amy"), -1);
        router.remove_session(key(2), Some("amy"));
        assert!(applied(&mut counts, deltas));
        assert_eq!(counts, Counts::from_router(&router));
        assert_eq!(
            String::from_utf8(counts.encode()).unwrap(),
            r#"{"sessions":2,"users":{"amy":1},"rooms":{"r":1,"s":1},"members":{}}"#
        );
    }

    #[test]
    fn changes_that_cancel_out_leave_nothing_pending() {
        let mut deltas = Deltas::default();
        for _ in 0..1000 {
            deltas.member(Some("amy"), "r", 1);
            deltas.member(Some("amy"), "r", -1);
        }
        deltas.session(Some("bob"), 1);
        deltas.session(Some("bob"), -1);
        assert!(deltas.is_empty(), "{deltas:?}");
        let mut pending = Pending {
            snapshot: None,
            deltas,
        };
        assert!(pending.take().is_none(), "nothing for the publisher");
        // A churn of one user through one room is a handful of names.
        let mut deltas = Deltas::default();
        for i in 0..1000 {
            deltas.member(Some("amy"), "r", if i % 2 == 0 { 1 } else { -1 });
        }
        assert!(deltas.len() <= 2);
    }

    #[test]
    fn past_the_bound_a_snapshot_replaces_the_deltas() {
        let mut pending = Pending::default();
        for i in 0..=MAX_PENDING {
            pending.deltas.member(None, &format!("r{i}"), 1);
        }
        assert!(pending.deltas.overflowed());
        assert_eq!(pending.deltas.len(), 0, "the names were let go");
        pending.deltas.member(None, "late", 1);
        assert_eq!(pending.deltas.len(), 0, "nothing recorded while owed");
        assert!(pending.take().is_none(), "nothing handed over until then");
        // The loop's tick hands over the router's state.
        let mut router = Router::default();
        router.add_session(key(1), None);
        router.join(key(1), None, "late").unwrap();
        pending.snapshot = Some(Counts::from_router(&router));
        pending.deltas = Deltas::default();
        pending.deltas.session(None, 1);
        let mut counts = Counts::default();
        assert_eq!(
            counts.apply(pending.take().expect("a snapshot is ready")),
            Applied::Whole
        );
        assert_eq!(counts.sessions, 2);
        assert_eq!(counts.rooms["late"], 1);
        assert!(pending.take().is_none(), "taken once");
    }

    #[test]
    fn counts_never_go_below_zero() {
        let mut counts = Counts::default();
        let mut deltas = Deltas::default();
        deltas.session(Some("amy"), -1);
        deltas.member(Some("amy"), "r", -1);
        applied(&mut counts, deltas);
        assert_eq!(counts, Counts::default());
    }

    #[test]
    fn at_most_max_members_pairs_are_listed() {
        let mut deltas = Deltas::default();
        for i in 0..=MAX_MEMBERS {
            deltas.member(Some("amy"), &format!("r{i:06}"), 1);
        }
        let mut counts = Counts::default();
        applied(&mut counts, deltas);
        let entry: super::super::view::Entry = serde_json::from_slice(&counts.encode()).unwrap();
        assert_eq!(entry.members.len(), MAX_MEMBERS);
        assert!(entry.members_truncated);
        assert_eq!(entry.rooms.len(), MAX_MEMBERS + 1, "every room counted");
    }
}
