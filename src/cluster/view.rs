//! Presence: what one node tells the others it holds (sessions, users and
//! room members, counted), and the [`View`] of the other live nodes that
//! status, REST `sent` and the handle's queries add to the local figures.
//!
//! Pure: the loop encodes its own entry from the router; the publisher
//! thread parses the others' entries read from Redis into a `View`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::audience::Audience;
use crate::router::Router;

/// One node's presence entry, as stored in Redis.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Open chat sessions, anonymous ones included.
    pub sessions: usize,
    /// User id → open sessions.
    pub users: HashMap<String, usize>,
    /// Room → members.
    pub rooms: HashMap<String, usize>,
}

/// The JSON of this node's entry, from the router's indexes.
pub fn encode_local(router: &Router) -> Vec<u8> {
    #[derive(Serialize)]
    struct Local<'a> {
        sessions: usize,
        users: BTreeMap<&'a str, usize>,
        rooms: BTreeMap<&'a str, usize>,
    }
    let local = Local {
        sessions: router.online_count(),
        users: router.users_counted().collect(),
        rooms: router.rooms_counted().collect(),
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
        router.join(key(1), "r").expect("within the room cap");
        router.join(key(3), "r").expect("within the room cap");
        let json = String::from_utf8(encode_local(&router)).unwrap();
        assert_eq!(json, r#"{"sessions":3,"users":{"amy":2},"rooms":{"r":2}}"#);
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
}
