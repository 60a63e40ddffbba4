//! Who receives a message: the indexes `user → sessions`, `room → sessions`,
//! `session → rooms`, and the routing rules of PROTOCOL.md section 4.
//!
//! The router never sees a socket. It names an [`Audience`]; the event loop
//! resolves it with [`Router::for_each_member`] and writes the bytes. That
//! split is the seam for running several nodes over a broker: a node can
//! publish an audience and a payload instead of writing locally.
//!
//! Every index is cleaned in one place, [`Router::remove_session`].

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::message::{self, Incoming, Outgoing};

/// A session's slab index plus the generation it was created with, so a key
/// kept across events never reaches a later session reusing the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// Slot in the session slab.
    pub index: u32,
    /// Distinguishes successive sessions in one slot.
    pub generation: u32,
}

/// The set of sessions a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    /// Every chat session, optionally except the sender.
    Everyone {
        /// Left out (the sender of a relayed broadcast).
        except: Option<SessionKey>,
    },
    /// Every session of one user.
    User(&'a str),
    /// Every member of a room, optionally except the sender.
    Room {
        /// Room name.
        room: &'a str,
        /// Left out (the sender).
        except: Option<SessionKey>,
    },
}

/// What the loop must do with one client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Send this JSON back to the sending connection only.
    Reply(Vec<u8>),
    /// Membership changed; nothing is sent.
    Done,
    /// Send this JSON to the audience.
    Deliver(Audience<'a>, Vec<u8>),
}

/// The indexes.
#[derive(Debug, Default)]
pub struct Router {
    everyone: HashSet<SessionKey>,
    users: HashMap<Rc<str>, Vec<SessionKey>>,
    rooms: HashMap<Rc<str>, HashSet<SessionKey>>,
    memberships: HashMap<SessionKey, Vec<Rc<str>>>,
}

impl Router {
    /// Registers an open chat session, anonymous when `user` is `None`.
    pub fn add_session(&mut self, key: SessionKey, user: Option<&Rc<str>>) {
        self.everyone.insert(key);
        if let Some(user) = user {
            self.users.entry(user.clone()).or_default().push(key);
        }
    }

    /// Removes a session from every index. Returns whether it was present.
    pub fn remove_session(&mut self, key: SessionKey, user: Option<&str>) -> bool {
        if !self.everyone.remove(&key) {
            return false;
        }
        if let Some(user) = user {
            if let Some(sessions) = self.users.get_mut(user) {
                sessions.retain(|k| *k != key);
                if sessions.is_empty() {
                    self.users.remove(user);
                }
            }
        }
        for room in self.memberships.remove(&key).unwrap_or_default() {
            self.drop_member(&room, key);
        }
        true
    }

    /// Open chat sessions, anonymous ones included.
    pub fn online_count(&self) -> usize {
        self.everyone.len()
    }

    /// Distinct user ids with at least one open session, sorted.
    pub fn online_users(&self) -> Vec<&str> {
        let mut users: Vec<&str> = self.users.keys().map(|u| &**u).collect();
        users.sort_unstable();
        users
    }

    /// Open sessions of `user`.
    pub fn user_sessions(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, Vec::len)
    }

    /// Members of `room`.
    pub fn room_size(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, HashSet::len)
    }

    /// Every online user with its number of sessions, in no order.
    pub fn users_counted(&self) -> impl Iterator<Item = (&str, usize)> {
        self.users.iter().map(|(u, s)| (&**u, s.len()))
    }

    /// Every room with its number of members, in no order.
    pub fn rooms_counted(&self) -> impl Iterator<Item = (&str, usize)> {
        self.rooms.iter().map(|(r, m)| (&**r, m.len()))
    }

    /// Whether `key` is a member of `room`.
    pub fn is_member(&self, key: SessionKey, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|m| m.contains(&key))
    }

    /// Adds `key` to `room` (idempotent).
    pub fn join(&mut self, key: SessionKey, room: &str) {
        if !self.everyone.contains(&key) || self.is_member(key, room) {
            return;
        }
        let name: Rc<str> = match self.rooms.get_key_value(room) {
            Some((name, _)) => name.clone(),
            None => Rc::from(room),
        };
        self.rooms.entry(name.clone()).or_default().insert(key);
        self.memberships.entry(key).or_default().push(name);
    }

    /// Removes `key` from `room` (idempotent).
    pub fn leave(&mut self, key: SessionKey, room: &str) {
        if let Some(rooms) = self.memberships.get_mut(&key) {
            rooms.retain(|r| &**r != room);
            if rooms.is_empty() {
                self.memberships.remove(&key);
            }
        }
        self.drop_member(room, key);
    }

    fn drop_member(&mut self, room: &str, key: SessionKey) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&key);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Calls `visit` once for every session in the audience.
    pub fn for_each_member(&self, audience: Audience<'_>, mut visit: impl FnMut(SessionKey)) {
        match audience {
            Audience::Everyone { except } => self
                .everyone
                .iter()
                .filter(|k| Some(**k) != except)
                .for_each(|k| visit(*k)),
            Audience::User(user) => self
                .users
                .get(user)
                .into_iter()
                .flatten()
                .for_each(|k| visit(*k)),
            Audience::Room { room, except } => self
                .rooms
                .get(room)
                .into_iter()
                .flatten()
                .filter(|k| Some(**k) != except)
                .for_each(|k| visit(*k)),
        }
    }

    /// Applies the routing table to one message from `sender` (user id
    /// `sender_user`, `None` if anonymous).
    pub fn route<'m>(
        &mut self,
        sender: SessionKey,
        sender_user: Option<&'m str>,
        message: &'m Incoming<'m>,
    ) -> Route<'m> {
        match &*message.kind {
            "ping" => {
                let pong = Outgoing {
                    kind: "pong",
                    to: None,
                    from: None,
                    room: None,
                    content: message.content,
                };
                Route::Reply(pong.to_json())
            }
            "join" | "leave" => match message.room() {
                None => Route::Reply(message::error_json(&format!(
                    "{} needs a \"room\"",
                    message.kind
                ))),
                Some(room) if message.kind == "join" => {
                    self.join(sender, room);
                    Route::Done
                }
                Some(room) => {
                    self.leave(sender, room);
                    Route::Done
                }
            },
            kind => {
                let outgoing = Outgoing {
                    kind,
                    to: message.to(),
                    from: sender_user,
                    room: message.room(),
                    content: message.content,
                };
                let audience = if let Some(room) = message.room() {
                    if !self.is_member(sender, room) {
                        return Route::Reply(message::error_json(&format!(
                            "not a member of room \"{room}\""
                        )));
                    }
                    Audience::Room {
                        room,
                        except: Some(sender),
                    }
                } else if let Some(user) = message.to() {
                    Audience::User(user)
                } else {
                    Audience::Everyone {
                        except: Some(sender),
                    }
                };
                Route::Deliver(audience, outgoing.to_json())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> SessionKey {
        SessionKey {
            index: i,
            generation: 1,
        }
    }

    fn members(router: &Router, audience: Audience<'_>) -> Vec<u32> {
        let mut out = Vec::new();
        router.for_each_member(audience, |k| out.push(k.index));
        out.sort_unstable();
        out
    }

    fn setup() -> Router {
        let mut r = Router::default();
        r.add_session(key(1), Some(&Rc::from("alice")));
        r.add_session(key(2), Some(&Rc::from("alice")));
        r.add_session(key(3), Some(&Rc::from("bob")));
        r.add_session(key(4), None);
        r
    }

    fn route_text(
        r: &mut Router,
        sender: u32,
        user: Option<&str>,
        text: &str,
    ) -> (Option<Vec<u32>>, String) {
        let msg = message::parse(text.as_bytes()).unwrap();
        match r.route(key(sender), user, &msg) {
            Route::Reply(json) => (None, String::from_utf8(json).unwrap()),
            Route::Done => (None, String::new()),
            Route::Deliver(audience, json) => {
                let to = members(r, audience);
                (Some(to), String::from_utf8(json).unwrap())
            }
        }
    }

    #[test]
    fn status_counts_sessions_and_lists_distinct_sorted_users() {
        let r = setup();
        assert_eq!(r.online_count(), 4);
        assert_eq!(r.online_users(), ["alice", "bob"]);
    }

    #[test]
    fn broadcast_reaches_every_other_session_with_from_stamped() {
        let mut r = setup();
        let (to, json) = route_text(
            &mut r,
            3,
            Some("bob"),
            r#"{"type":"chat","from":"mallory","content":"hi","x":1}"#,
        );
        assert_eq!(to, Some(vec![1, 2, 4]));
        assert_eq!(json, r#"{"type":"chat","from":"bob","content":"hi"}"#);
    }

    #[test]
    fn anonymous_senders_get_no_from() {
        let mut r = setup();
        let (_, json) = route_text(&mut r, 4, None, r#"{"type":"chat","from":"x"}"#);
        assert_eq!(json, r#"{"type":"chat"}"#);
    }

    #[test]
    fn to_reaches_every_session_of_the_user_including_the_sender() {
        let mut r = setup();
        let (to, json) = route_text(
            &mut r,
            3,
            Some("bob"),
            r#"{"type":"dm","to":"alice","content":1}"#,
        );
        assert_eq!(to, Some(vec![1, 2]));
        assert_eq!(
            json,
            r#"{"type":"dm","to":"alice","from":"bob","content":1}"#
        );
        let (to, _) = route_text(&mut r, 1, Some("alice"), r#"{"type":"dm","to":"alice"}"#);
        assert_eq!(to, Some(vec![1, 2]));
        let (to, _) = route_text(&mut r, 1, Some("alice"), r#"{"type":"dm","to":"nobody"}"#);
        assert_eq!(to, Some(vec![]));
    }

    #[test]
    fn rooms_need_membership_and_win_over_to() {
        let mut r = setup();
        let (_, err) = route_text(&mut r, 1, Some("alice"), r#"{"type":"say","room":"r1"}"#);
        assert_eq!(
            err,
            r#"{"type":"error","content":"not a member of room \"r1\""}"#
        );
        for sender in [1, 3, 4] {
            route_text(&mut r, sender, None, r#"{"type":"join","room":"r1"}"#);
        }
        let (to, json) = route_text(
            &mut r,
            1,
            Some("alice"),
            r#"{"type":"say","room":"r1","to":"bob"}"#,
        );
        assert_eq!(to, Some(vec![3, 4]));
        assert_eq!(
            json,
            r#"{"type":"say","to":"bob","from":"alice","room":"r1"}"#
        );
        route_text(&mut r, 4, None, r#"{"type":"leave","room":"r1"}"#);
        let (to, _) = route_text(&mut r, 1, Some("alice"), r#"{"type":"say","room":"r1"}"#);
        assert_eq!(to, Some(vec![3]));
    }

    #[test]
    fn join_without_room_is_an_error_and_ping_echoes_content() {
        let mut r = setup();
        let (_, err) = route_text(&mut r, 1, None, r#"{"type":"join"}"#);
        assert_eq!(err, r#"{"type":"error","content":"join needs a \"room\""}"#);
        let (_, pong) = route_text(&mut r, 1, None, r#"{"type":"ping","content":{"n":7}}"#);
        assert_eq!(pong, r#"{"type":"pong","content":{"n":7}}"#);
        let (_, pong) = route_text(&mut r, 1, None, r#"{"type":"ping"}"#);
        assert_eq!(pong, r#"{"type":"pong"}"#);
    }

    #[test]
    fn removal_cleans_every_index() {
        let mut r = setup();
        route_text(&mut r, 1, None, r#"{"type":"join","room":"r1"}"#);
        route_text(&mut r, 1, None, r#"{"type":"join","room":"r2"}"#);
        assert!(r.remove_session(key(1), Some("alice")));
        assert!(
            !r.remove_session(key(1), Some("alice")),
            "second removal is a no-op"
        );
        assert_eq!(r.online_users(), ["alice", "bob"]);
        assert!(r.remove_session(key(2), Some("alice")));
        assert_eq!(r.online_users(), ["bob"]);
        assert!(r.rooms.is_empty() && r.memberships.is_empty());
        assert_eq!(r.online_count(), 2);
    }

    #[test]
    fn a_stale_key_is_not_a_member() {
        let mut r = setup();
        r.join(key(1), "r");
        let stale = SessionKey {
            index: 1,
            generation: 0,
        };
        assert!(!r.is_member(stale, "r"));
        r.join(stale, "r");
        assert_eq!(
            members(
                &r,
                Audience::Room {
                    room: "r",
                    except: None
                }
            ),
            vec![1]
        );
    }
}
