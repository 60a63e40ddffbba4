//! Who receives a message: the indexes `user → sessions`, `room → sessions`,
//! `session → rooms`, and the routing rules of docs/protocol.md section 4.
//!
//! The router never sees a socket. It names an [`Audience`]; the event loop
//! resolves it with [`Router::for_each_member`] and writes the bytes. That
//! split is the seam for running several nodes over a broker: a node can
//! publish an audience and a payload instead of writing locally.
//!
//! Every index is cleaned in one place, [`Router::remove_session`].

use std::collections::HashSet;
use std::hash::{Hash, RandomState};
use std::rc::Rc;

use hashbrown::hash_map::{Entry, EntryRef};

use crate::audience::{Audience, SessionKey};
use crate::config::WebSocketConfig;
use crate::ids;
use crate::message::{self, Incoming, Outgoing};

/// What the loop must do with one client message.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a report the loop must apply"]
pub enum Route<'a> {
    /// Send this JSON back to the sending connection only.
    Reply(Vec<u8>),
    /// A join or leave: nothing is sent; says what it changed (the cluster
    /// subscribes to a room at its first member and releases it after its
    /// last).
    Done(Change),
    /// Send this JSON to the audience.
    Deliver(Audience<&'a str>, Vec<u8>),
}

/// What the router enforces on client messages (docs/protocol.md section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rooms one session may be in at once.
    pub max_rooms_per_session: usize,
    /// Longest room name or addressed user id, in bytes.
    pub max_id_bytes: usize,
    /// Whether a client may send to everyone.
    pub client_broadcast: bool,
}

impl Limits {
    /// The limits a configuration sets.
    pub fn from_config(ws: &WebSocketConfig) -> Limits {
        Limits {
            max_rooms_per_session: ws.max_rooms_per_session,
            max_id_bytes: ws.max_id_bytes,
            client_broadcast: ws.client_broadcast,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::from_config(&WebSocketConfig::default())
    }
}

/// What a successful [`Router::join`] or [`Router::leave`] changed. A node
/// that shares rooms with others (a cluster) subscribes on
/// [`Change::FirstMember`] and unsubscribes on [`Change::LastMember`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing: already a member (join), or not one (leave), or not open.
    Unchanged,
    /// The session joined or left; the room had and keeps other members.
    Member,
    /// The session is the room's first member on this node.
    FirstMember,
    /// The session was the room's last member on this node; the room is gone.
    LastMember,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The session is in `max_rooms_per_session` rooms already.
    TooManyRooms,
}

/// hashbrown's map for its `entry_ref`, which looks a borrowed name up once
/// and allocates the owned key only when it inserts; std's keyed hashing,
/// since names come from clients.
type Map<K, V> = hashbrown::HashMap<K, V, RandomState>;

/// The indexes. Every operation on one room costs O(1), and every map gives
/// its memory back once most of its entries are gone.
#[derive(Debug, Default)]
pub struct Router {
    limits: Limits,
    everyone: HashSet<SessionKey>,
    users: Map<Rc<str>, Vec<SessionKey>>,
    rooms: Map<Rc<str>, HashSet<SessionKey>>,
    memberships: Map<SessionKey, Membership>,
}

/// The rooms of one session that is in at least one, with its user id (the
/// router's own `Rc`), so a room can list its users.
#[derive(Debug, Default)]
struct Membership {
    user: Option<Rc<str>>,
    rooms: HashSet<Rc<str>>,
}

/// Maps and sets smaller than this keep their memory (no churn on small
/// hubs); larger ones shrink when three quarters of their room is unused.
const SHRINK_ABOVE: usize = 64;

fn shrink_map<K: Eq + Hash, V>(map: &mut Map<K, V>) {
    if map.capacity() > SHRINK_ABOVE && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

fn shrink_set<K: Eq + Hash>(set: &mut HashSet<K>) {
    if set.capacity() > SHRINK_ABOVE && set.len() * 4 < set.capacity() {
        set.shrink_to(set.len() * 2);
    }
}

impl Router {
    /// An empty router enforcing `limits`.
    pub fn with_limits(limits: Limits) -> Router {
        Router {
            limits,
            ..Router::default()
        }
    }

    /// Registers an open chat session, anonymous when `user` is `None`.
    pub fn add_session(&mut self, key: SessionKey, user: Option<&Rc<str>>) {
        self.everyone.insert(key);
        if let Some(user) = user {
            self.users.entry(user.clone()).or_default().push(key);
        }
    }

    /// Removes a session from every index, in O(1) per room it was in.
    /// Returns `Unchanged` if it was not there, `LastMember` if that emptied
    /// its user or one of its rooms (the cluster may release a channel),
    /// else `Member`.
    pub fn remove_session(&mut self, key: SessionKey, user: Option<&str>) -> Change {
        if !self.everyone.remove(&key) {
            return Change::Unchanged;
        }
        shrink_set(&mut self.everyone);
        let mut change = Change::Member;
        if let Some(user) = user {
            if let Some(sessions) = self.users.get_mut(user) {
                sessions.retain(|k| *k != key);
                if sessions.is_empty() {
                    self.users.remove(user);
                    shrink_map(&mut self.users);
                    change = Change::LastMember;
                }
            }
        }
        if let Some(membership) = self.memberships.remove(&key) {
            shrink_map(&mut self.memberships);
            for room in membership.rooms {
                if self.drop_member(&room, key) == Change::LastMember {
                    change = Change::LastMember;
                }
            }
        }
        change
    }

    /// The rooms `key` is in (before it leaves them, for webhooks).
    pub fn session_rooms(&self, key: SessionKey) -> Vec<Rc<str>> {
        self.memberships
            .get(&key)
            .map(|m| m.rooms.iter().cloned().collect())
            .unwrap_or_default()
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

    /// Rooms with at least one member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The rooms `key` is in, in no order.
    pub fn rooms_of(&self, key: SessionKey) -> impl Iterator<Item = &Rc<str>> {
        self.memberships
            .get(&key)
            .into_iter()
            .flat_map(|m| m.rooms.iter())
    }

    /// Distinct user ids among the members of `room`, sorted (anonymous
    /// members counted by [`Router::room_size`], not listed).
    pub fn room_users(&self, room: &str) -> Vec<&str> {
        let mut users: Vec<&str> = self
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|key| self.memberships.get(key)?.user.as_deref())
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Every room with its distinct user ids (unsorted, possibly repeated),
    /// in no order: what presence tells other nodes.
    pub fn rooms_with_users(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &str>)> {
        self.rooms.iter().map(|(room, members)| {
            let users = members
                .iter()
                .filter_map(|key| self.memberships.get(key)?.user.as_deref());
            (&**room, users)
        })
    }

    /// Whether a session of `user` other than `except` is in `room`: O(the
    /// user's sessions).
    pub fn user_in_room(&self, user: &str, room: &str, except: Option<SessionKey>) -> bool {
        let (Some(sessions), Some(members)) = (self.users.get(user), self.rooms.get(room)) else {
            return false;
        };
        sessions
            .iter()
            .any(|key| Some(*key) != except && members.contains(key))
    }

    /// Adds `key` (a session of `user`, `None` if anonymous) to `room`
    /// (idempotent), unless that would put the session in more than
    /// `max_rooms_per_session` rooms. Each index is looked up once.
    pub fn join(
        &mut self,
        key: SessionKey,
        user: Option<&str>,
        room: &str,
    ) -> Result<Change, JoinError> {
        if !self.everyone.contains(&key) {
            return Ok(Change::Unchanged);
        }
        let membership = self.memberships.entry(key);
        let joined = match &membership {
            Entry::Occupied(m) => m.get().rooms.len(),
            Entry::Vacant(_) => 0,
        };
        let full = joined >= self.limits.max_rooms_per_session;
        let (name, change) = match self.rooms.entry_ref(room) {
            EntryRef::Occupied(mut members) => {
                // Already a member is no change, even at the limit.
                if full && !members.get().contains(&key) {
                    return Err(JoinError::TooManyRooms);
                }
                if !members.get_mut().insert(key) {
                    return Ok(Change::Unchanged);
                }
                (members.key().clone(), Change::Member)
            }
            EntryRef::Vacant(_) if full => return Err(JoinError::TooManyRooms),
            EntryRef::Vacant(vacant) => {
                let name = Rc::<str>::from(room);
                vacant.insert_entry_with_key(name.clone(), HashSet::from([key]));
                (name, Change::FirstMember)
            }
        };
        let users = &self.users;
        membership
            .or_insert_with(|| Membership {
                // The index's own Rc: no allocation for the name.
                user: user.map(|u| {
                    users
                        .get_key_value(u)
                        .map_or_else(|| Rc::from(u), |(name, _)| name.clone())
                }),
                rooms: HashSet::new(),
            })
            .rooms
            .insert(name);
        Ok(change)
    }

    /// Removes `key` from `room` (idempotent), in O(1).
    pub fn leave(&mut self, key: SessionKey, room: &str) -> Change {
        let Some(membership) = self.memberships.get_mut(&key) else {
            return Change::Unchanged;
        };
        if !membership.rooms.remove(room) {
            return Change::Unchanged;
        }
        if membership.rooms.is_empty() {
            self.memberships.remove(&key);
            shrink_map(&mut self.memberships);
        } else {
            shrink_set(&mut membership.rooms);
        }
        self.drop_member(room, key)
    }

    fn drop_member(&mut self, room: &str, key: SessionKey) -> Change {
        let Some(members) = self.rooms.get_mut(room) else {
            return Change::Unchanged;
        };
        if !members.remove(&key) {
            return Change::Unchanged;
        }
        if members.is_empty() {
            self.rooms.remove(room);
            shrink_map(&mut self.rooms);
            return Change::LastMember;
        }
        shrink_set(members);
        Change::Member
    }

    /// Calls `visit` once for every session in the audience.
    pub fn for_each_member(&self, audience: Audience<&str>, mut visit: impl FnMut(SessionKey)) {
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
        // A ping is answered whatever else it carries: its `room` and `to`
        // name nothing, so they are not judged (docs/protocol.md §4).
        if &*message.kind != "ping" {
            if let Err(reason) = self.check_names(message) {
                return Route::Reply(message::error_json(&reason));
            }
        }
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
            // A client's "error" would arrive byte-identical to the server's
            // own; "joined"/"left" would forge presence; welcome and
            // recovered speak for the server's history.
            kind @ ("error" | "pong" | "joined" | "left" | "welcome" | "recovered") => {
                Route::Reply(message::error_json(&format!(
                    "type \"{kind}\" is reserved for the server"
                )))
            }
            "join" | "leave" => match message.room() {
                None => Route::Reply(message::error_json(&format!(
                    "{} needs a \"room\"",
                    message.kind
                ))),
                Some(room) if message.kind == "join" => {
                    match self.join(sender, sender_user, room) {
                        Ok(change) => Route::Done(change),
                        Err(JoinError::TooManyRooms) => {
                            Route::Reply(message::error_json("too many rooms"))
                        }
                    }
                }
                Some(room) => Route::Done(self.leave(sender, room)),
            },
            kind => self.relay(sender, sender_user, kind, message),
        }
    }

    /// Where a relayed message goes: room, user or everyone.
    fn relay<'m>(
        &self,
        sender: SessionKey,
        sender_user: Option<&'m str>,
        kind: &'m str,
        message: &'m Incoming<'m>,
    ) -> Route<'m> {
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
        } else if self.limits.client_broadcast {
            Audience::Everyone {
                except: Some(sender),
            }
        } else {
            return Route::Reply(message::error_json(
                "broadcast is not allowed: send to a \"room\" or \"to\" a user",
            ));
        };
        let outgoing = Outgoing {
            kind,
            to: message.to(),
            from: sender_user,
            room: message.room(),
            content: message.content,
        };
        Route::Deliver(audience, outgoing.to_json())
    }

    /// `room` and `to` within `max_id_bytes` and free of control characters.
    fn check_names(&self, message: &Incoming<'_>) -> Result<(), String> {
        let fields = [("room", message.room()), ("to", message.to())];
        ids::check_fields(fields, self.limits.max_id_bytes).map_err(|e| e.to_string())
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

    fn members(router: &Router, audience: Audience<&str>) -> Vec<u32> {
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
            Route::Done(_) => (None, String::new()),
            Route::Deliver(audience, json) => {
                let to = members(r, audience);
                (Some(to), String::from_utf8(json).unwrap())
            }
        }
    }

    #[test]
    fn joins_and_leaves_say_what_they_changed() {
        let mut r = setup();
        let mut change = |sender, text: &str| {
            let msg = message::parse(text.as_bytes()).unwrap();
            match r.route(key(sender), None, &msg) {
                Route::Done(change) => change,
                other => panic!("{other:?}"),
            }
        };
        let join = r#"{"type":"join","room":"r"}"#;
        let leave = r#"{"type":"leave","room":"r"}"#;
        assert_eq!(change(1, join), Change::FirstMember);
        assert_eq!(change(2, join), Change::Member);
        assert_eq!(change(2, join), Change::Unchanged);
        assert_eq!(change(1, leave), Change::Member);
        assert_eq!(change(1, leave), Change::Unchanged);
        assert_eq!(change(2, leave), Change::LastMember);
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
        route_text(&mut r, 2, None, r#"{"type":"join","room":"r1"}"#);
        assert_eq!(
            r.remove_session(key(1), Some("alice")),
            Change::LastMember,
            "r2 emptied"
        );
        assert_eq!(
            r.remove_session(key(1), Some("alice")),
            Change::Unchanged,
            "second removal is a no-op"
        );
        assert_eq!(r.online_users(), ["alice", "bob"]);
        assert_eq!(
            r.remove_session(key(2), Some("alice")),
            Change::LastMember,
            "alice's last session, r1's last member"
        );
        assert_eq!(r.remove_session(key(4), None), Change::Member);
        assert_eq!(r.online_users(), ["bob"]);
        assert!(r.rooms.is_empty() && r.memberships.is_empty());
        assert_eq!(r.online_count(), 1);
    }

    #[test]
    fn a_stale_key_is_not_a_member() {
        let mut r = setup();
        assert_eq!(r.join(key(1), None, "r"), Ok(Change::FirstMember));
        let stale = SessionKey {
            index: 1,
            generation: 0,
        };
        assert!(!r.is_member(stale, "r"));
        assert_eq!(r.join(stale, None, "r"), Ok(Change::Unchanged));
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

    #[test]
    fn joins_and_leaves_say_what_changed() {
        let mut r = setup();
        assert_eq!(r.join(key(1), None, "r"), Ok(Change::FirstMember));
        assert_eq!(r.join(key(1), None, "r"), Ok(Change::Unchanged));
        assert_eq!(r.join(key(2), None, "r"), Ok(Change::Member));
        assert_eq!(r.leave(key(3), "r"), Change::Unchanged, "never joined");
        assert_eq!(r.leave(key(1), "r"), Change::Member);
        assert_eq!(r.leave(key(1), "r"), Change::Unchanged);
        assert_eq!(r.leave(key(2), "r"), Change::LastMember);
        assert_eq!(r.room_count(), 0);
        assert_eq!(r.join(key(9), None, "r"), Ok(Change::Unchanged), "not open");
    }

    #[test]
    fn rooms_per_session_are_capped_at_the_limit() {
        let mut r = Router::with_limits(Limits {
            max_rooms_per_session: 3,
            ..Limits::default()
        });
        r.add_session(key(1), None);
        for room in ["a", "b", "c"] {
            assert!(r.join(key(1), None, room).is_ok(), "{room}");
        }
        assert_eq!(r.join(key(1), None, "d"), Err(JoinError::TooManyRooms));
        assert_eq!(
            r.join(key(1), None, "a"),
            Ok(Change::Unchanged),
            "rejoin is fine"
        );
        r.add_session(key(2), None);
        assert_eq!(r.join(key(2), None, "e"), Ok(Change::FirstMember));
        assert_eq!(
            r.join(key(1), None, "e"),
            Err(JoinError::TooManyRooms),
            "an existing room too"
        );
        assert_eq!(r.room_size("e"), 1);
        let (_, err) = route_text(&mut r, 1, None, r#"{"type":"join","room":"d"}"#);
        assert_eq!(err, r#"{"type":"error","content":"too many rooms"}"#);
        r.leave(key(1), "b");
        assert!(r.join(key(1), None, "d").is_ok(), "a slot was freed");
    }

    #[test]
    fn indexes_shrink_back_when_sessions_and_rooms_go() {
        let mut r = Router::with_limits(Limits {
            max_rooms_per_session: 100_000,
            ..Limits::default()
        });
        r.add_session(key(1), Some(&Rc::from("u")));
        for i in 0..20_000 {
            assert!(r.join(key(1), None, &format!("room-{i}")).is_ok());
        }
        let grown = r.rooms.capacity();
        assert!(grown >= 20_000);
        for i in 0..20_000 {
            r.leave(key(1), &format!("never-{i}"));
        }
        assert_eq!(
            r.room_count(),
            20_000,
            "leaving unjoined rooms changes nothing"
        );
        assert_ne!(r.remove_session(key(1), Some("u")), Change::Unchanged);
        assert!(
            r.rooms.capacity() <= SHRINK_ABOVE * 2,
            "{}",
            r.rooms.capacity()
        );
        assert!(r.memberships.capacity() <= SHRINK_ABOVE * 2);
        for i in 0..1000 {
            r.add_session(key(i), None);
        }
        for i in 0..1000 {
            r.remove_session(key(i), None);
        }
        assert!(r.everyone.capacity() <= SHRINK_ABOVE * 2);
    }

    #[test]
    fn server_types_cannot_be_sent_by_clients() {
        let mut r = setup();
        for kind in ["error", "pong"] {
            let (to, err) = route_text(
                &mut r,
                1,
                Some("alice"),
                &format!(r#"{{"type":"{kind}","to":"bob","content":"x"}}"#),
            );
            assert_eq!(to, None, "not relayed");
            assert_eq!(
                err,
                format!(
                    r#"{{"type":"error","content":"type \"{kind}\" is reserved for the server"}}"#
                )
            );
        }
    }

    #[test]
    fn client_broadcast_can_be_switched_off() {
        let mut r = Router::with_limits(Limits {
            client_broadcast: false,
            ..Limits::default()
        });
        r.add_session(key(1), Some(&Rc::from("alice")));
        r.add_session(key(2), Some(&Rc::from("bob")));
        let (to, err) = route_text(&mut r, 1, Some("alice"), r#"{"type":"shout"}"#);
        assert_eq!(to, None);
        assert_eq!(
            err,
            r#"{"type":"error","content":"broadcast is not allowed: send to a \"room\" or \"to\" a user"}"#
        );
        let (to, _) = route_text(&mut r, 1, Some("alice"), r#"{"type":"dm","to":"bob"}"#);
        assert_eq!(to, Some(vec![2]));
    }

    #[test]
    fn a_ping_is_answered_whatever_its_room_and_to_hold() {
        let mut r = Router::with_limits(Limits {
            max_id_bytes: 4,
            ..Limits::default()
        });
        r.add_session(key(1), None);
        for text in [
            r#"{"type":"ping","to":"\n"}"#,
            r#"{"type":"ping","room":"abcdefgh"}"#,
        ] {
            let (to, reply) = route_text(&mut r, 1, None, text);
            assert_eq!(to, None, "{text}");
            assert_eq!(reply, r#"{"type":"pong"}"#, "{text}");
        }
    }

    #[test]
    fn room_names_and_addressees_are_bounded_and_free_of_controls() {
        let mut r = Router::with_limits(Limits {
            max_id_bytes: 4,
            ..Limits::default()
        });
        r.add_session(key(1), None);
        let (_, reply) = route_text(&mut r, 1, None, r#"{"type":"join","room":"abcd"}"#);
        assert_eq!(reply, "", "at the limit");
        assert!(r.is_member(key(1), "abcd"));
        for (text, field, why) in [
            (
                r#"{"type":"join","room":"abcde"}"#,
                "room",
                "longer than 4 bytes",
            ),
            (
                r#"{"type":"join","room":"a\u000ab"}"#,
                "room",
                "contains a control character",
            ),
            (r#"{"type":"dm","to":"abcde"}"#, "to", "longer than 4 bytes"),
            (
                r#"{"type":"dm","to":"\u001b[2J"}"#,
                "to",
                "contains a control character",
            ),
        ] {
            let (to, reply) = route_text(&mut r, 1, None, text);
            assert_eq!(to, None, "{text}");
            assert_eq!(
                reply,
                format!(r#"{{"type":"error","content":"invalid \"{field}\": {why}"}}"#),
                "{text}"
            );
        }
        assert_eq!(r.room_count(), 1);
    }
}
