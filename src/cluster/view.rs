//! Presence: what one node tells the others it holds (sessions, users and
//! room members, counted, and which users are in which room), and the
//! [`View`] of the other live nodes that status, REST `sent`, room listings,
//! presence events and the handle's queries add to the local figures.
//!
//! Pure: the loop encodes its own entry from the router; the publisher
//! thread parses the others' entries read from Redis into a `View`.
//!
//! Size: an entry grows with the node's users and rooms (one counter each)
//! and with its distinct (room, user) pairs, of which it lists at most
//! [`MAX_MEMBERS`]; past that it lists rooms in name order until the cap
//! and says `members_truncated`.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::audience::Audience;
use crate::router::Router;

/// Most (room, user) pairs one node publishes: a bound on its entry, and on
/// what every other node holds for it.
pub const MAX_MEMBERS: usize = 20_000;

/// One node's presence entry, as stored in Redis.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
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

/// The JSON of this node's entry, from the router's indexes.
pub fn encode_local(router: &Router) -> Vec<u8> {
    #[derive(Serialize)]
    struct Local<'a> {
        sessions: usize,
        users: BTreeMap<&'a str, usize>,
        rooms: BTreeMap<&'a str, usize>,
        members: BTreeMap<&'a str, Vec<&'a str>>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        members_truncated: bool,
    }
    let mut all: Vec<(&str, Vec<&str>)> = router
        .rooms_with_users()
        .map(|(room, users)| {
            let mut users: Vec<&str> = users.collect();
            users.sort_unstable();
            users.dedup();
            (room, users)
        })
        .filter(|(_, users)| !users.is_empty())
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
        sessions: router.online_count(),
        users: router.users_counted().collect(),
        rooms: router.rooms_counted().collect(),
        members,
        members_truncated,
    };
    serde_json::to_vec(&local).unwrap_or_default()
}

/// The other live nodes, as last read from Redis.
#[derive(Debug, Default)]
pub struct View {
    nodes: Vec<(String, Entry)>,
}

impl View {
    /// A view of `nodes` (node id, entry), this node left out by the caller.
    pub fn new(mut nodes: Vec<(String, Entry)>) -> View {
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
        let json = String::from_utf8(encode_local(&router)).unwrap();
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
        let entry: Entry = serde_json::from_slice(&encode_local(&router)).unwrap();
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
}
