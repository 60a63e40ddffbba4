//! The loop's side of rooms (README "Rooms"): the check on a client's
//! `join` (mode, then the `on_join` hook), server-side membership (REST,
//! handle, other nodes' requests), and presence events.
//!
//! With `rooms.join: open`, no hook and `rooms.presence: false`, a join
//! costs what it did before: one hook call that allows, no allocation.
//!
//! The join check runs the `on_join` hook, so it is the loop's
//! (`impl EventLoop`); membership and presence only deliver, so they work
//! through the [`Delivery`] parts.

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::deliver::Delivery;
use super::EventLoop;
use crate::audience::{Audience, SessionKey};
use crate::cluster::view::View;
use crate::cluster::Held;
use crate::config::JoinMode;
use crate::deflate::Encoded;
use crate::frame::Kind;
use crate::hooks::{Admission, SessionInfo};
use crate::http::Response;
use crate::ids;
use crate::message::Incoming;
use crate::rooms::{self, presence::Event, Grants};
use crate::router::{Change, JoinError};

impl EventLoop {
    /// Whether a client's `join` may go on to the router; a refused one
    /// gets its error reply here. A join without a valid room name goes on
    /// (the router answers it as before).
    pub(super) fn may_join(
        &mut self,
        index: usize,
        info: &SessionInfo<'_>,
        message: &Incoming<'_>,
    ) -> bool {
        let Some(room) = message.room() else {
            return true;
        };
        if ids::check(room, self.setup.config.websocket.max_id_bytes).is_err() {
            return true;
        }
        // The grants stay in the session: checked here, before the hook
        // (which needs the loop mutably) runs.
        let admitted = self.hub.rooms.mode() == JoinMode::Open || {
            let grants = self.conns.sessions.get(index).and_then(|s| s.grants());
            self.hub
                .rooms
                .admits(grants, info.user, room, message.token(), unix_now())
        };
        self.decide(index, info, room, admitted)
    }

    /// [`EventLoop::may_join`] for a join the server makes on a session's
    /// behalf from what it asked at its upgrade (an event stream's rooms).
    pub(super) fn admit_join(
        &mut self,
        index: usize,
        info: &SessionInfo<'_>,
        room: &str,
        grants: Option<&Grants>,
        token: Option<&str>,
    ) -> bool {
        let admitted = self.hub.rooms.mode() == JoinMode::Open
            || self
                .hub
                .rooms
                .admits(grants, info.user, room, token, unix_now());
        self.decide(index, info, room, admitted)
    }

    /// The hook has the last word over an admitted join; a refusal is
    /// answered and counted.
    fn decide(&mut self, index: usize, info: &SessionInfo<'_>, room: &str, admitted: bool) -> bool {
        let allowed =
            admitted && self.hooks.on_join(info, room, &mut self.actions) == Admission::Allow;
        if !allowed {
            self.metrics.joins_refused += 1;
            self.delivery().reply(index, &rooms::refused(room));
        }
        allowed
    }
}

impl Delivery<'_> {
    /// A session of `user` joined (`joined`) or left `room` with `change`:
    /// the cluster's channels and presence follow, and so do the events.
    /// With `hold`, a joining session's next message waits until the
    /// room's channel is subscribed (docs/protocol.md §10a), as after a
    /// `join` message; server-side joins do not hold anything.
    pub(super) fn member_changed(
        &mut self,
        key: SessionKey,
        user: Option<&str>,
        room: &str,
        joined: bool,
        change: Change,
        hold: bool,
    ) {
        if change == Change::Unchanged {
            return;
        }
        if let Some(link) = self.hub.cluster.as_mut() {
            link.member(user, room, joined);
            match change {
                Change::FirstMember | Change::Member if joined => {
                    if hold {
                        self.hold_after_join(key.index as usize, room);
                    } else {
                        let _ = link.want_room(room);
                    }
                }
                Change::LastMember => link.departed(room),
                _ => {}
            }
        }
        self.hub.webhook_room(room, change, self.now_ms);
        let event = if joined { Event::Joined } else { Event::Left };
        self.presence(Some(key), user, room, event);
    }

    /// Sends `event` for `user` in `room` to the room's other members, here
    /// and on the other nodes, unless another session of the user (here, or
    /// on another node as the view knows it) is still, or already, in it.
    fn presence(&mut self, key: Option<SessionKey>, user: Option<&str>, room: &str, event: Event) {
        let Some(user) = user else {
            return;
        };
        if !self.hub.presence_due(key, user, room, self.shutting_down) {
            return;
        }
        let json = event.json(room, user);
        self.deliver_event(room, key, &json);
        if let Some(link) = self.hub.cluster.as_mut() {
            // Down: the other nodes' members miss it, as any room message.
            // Part of no stream: never kept in history (docs/protocol.md 12).
            link.publish_event(Audience::room(room), &json);
        }
    }

    fn deliver_event(&mut self, room: &str, except: Option<SessionKey>, json: &[u8]) {
        let min_bytes = self.setup.compression_min_bytes();
        let audience = Audience::Room { room, except };
        // Part of no stream: never kept in history (docs/protocol.md 12).
        self.fan_out(
            audience,
            &mut Encoded::new(Kind::Text, json, min_bytes),
            None,
        );
        self.metrics.presence_events += 1;
    }

    /// After a session of `user` closed: `left` for each of `rooms` it was
    /// the user's last session in.
    pub(super) fn left_rooms(&mut self, key: SessionKey, user: Option<&str>, rooms: Vec<Rc<str>>) {
        for room in rooms {
            self.presence(Some(key), user, &room, Event::Left);
        }
    }

    /// `POST /api/ws/join` / `leave`: every session of `user` here, and the
    /// other nodes asked to do the same. In a cluster the answer waits
    /// until Redis took the change (`None`: parked, see
    /// [`Delivery::membership_settled`]); 503 if it cannot be published,
    /// and then nothing changes here either (so a retry does not act twice
    /// here only).
    pub(super) fn rest_membership(
        &mut self,
        index: usize,
        membership: (String, String, bool),
        keep_alive: bool,
    ) -> Option<Response> {
        let (user, room, join) = membership;
        let Some(link) = self.hub.cluster.as_mut() else {
            let local = self.apply_membership(&user, &room, join);
            return Some(Response::json(200, &json!({ "sessions": local })));
        };
        let Some(ticket) = link.publish_membership(&user, &room, join, true) else {
            return Some(Response::error(503, "cluster unavailable"));
        };
        let session = self.conns.sessions.get_mut(index)?;
        let what = Held::Membership {
            user,
            room,
            join,
            keep_alive,
        };
        link.park(self.now_ms, session.key, ticket, Vec::new(), what);
        None
    }

    /// Redis took a parked REST join or leave: applied here, answered with
    /// the sessions changed cluster-wide.
    pub(super) fn membership_settled(&mut self, user: &str, room: &str, join: bool) -> Response {
        let local = self.apply_membership(user, room, join);
        let remote = remote_sessions(self.hub.cluster.as_ref().and_then(|l| l.view()), user);
        Response::json(200, &json!({ "sessions": local + remote }))
    }

    /// The handle's `join` / `leave`: like REST, but a cluster that is down
    /// leaves it to this node (as the handle's pushes do).
    pub(super) fn handle_membership(&mut self, user: &str, room: &str, join: bool) -> usize {
        let max = self.setup.config.websocket.max_id_bytes;
        let fields = [("user", Some(user)), ("room", Some(room))];
        if user.is_empty() || room.is_empty() || ids::check_fields(fields, max).is_err() {
            log::debug!("handle membership refused: invalid user or room");
            return 0;
        }
        let published = self
            .hub
            .cluster
            .as_mut()
            .is_some_and(|link| link.publish_membership(user, room, join, false).is_some());
        let remote = match self.hub.cluster.as_ref() {
            Some(link) if published => remote_sessions(link.view(), user),
            _ => 0,
        };
        remote + self.apply_membership(user, room, join)
    }

    /// Another node's REST or handle membership change, for the sessions
    /// of `user` here.
    pub(super) fn cluster_membership(&mut self, user: &str, room: &str, join: bool) {
        let max = self.setup.config.websocket.max_id_bytes;
        if ids::check(user, max).is_ok() && ids::check(room, max).is_ok() {
            self.apply_membership(user, room, join);
        }
    }

    /// Adds every session of `user` here to `room` (a session already in
    /// `max_rooms_per_session` rooms is skipped), or removes them; returns
    /// how many changed.
    fn apply_membership(&mut self, user: &str, room: &str, join: bool) -> usize {
        let mut keys = Vec::new();
        self.hub
            .router
            .for_each_member(Audience::User(user), |key| keys.push(key));
        let mut changed = 0;
        for key in keys {
            let change = if join {
                match self.hub.router.join(key, Some(user), room) {
                    Ok(change) => change,
                    Err(JoinError::TooManyRooms) => {
                        self.metrics.joins_skipped_full += 1;
                        continue;
                    }
                }
            } else {
                self.hub.router.leave(key, room)
            };
            if change != Change::Unchanged {
                changed += 1;
                self.member_changed(key, Some(user), room, join, change, false);
            }
        }
        changed
    }

    /// A fresh view replaced `old`: the users that nodes gone since took
    /// out of rooms with members here get `left` (each node tells its own
    /// members, so nothing is published).
    pub(super) fn presence_after_view(&mut self, old: &View) {
        if !self.hub.rooms.presence() || self.shutting_down {
            return;
        }
        let Some(view) = self.hub.cluster.as_ref().and_then(|link| link.view()) else {
            return;
        };
        let router = &self.hub.router;
        let gone: Vec<(String, String)> = old
            .vanished(view)
            .filter(|(room, user)| {
                router.room_size(room) > 0 && !router.user_in_room(user, room, None)
            })
            .map(|(room, user)| (room.to_owned(), user.to_owned()))
            .collect();
        for (room, user) in gone {
            let json = Event::Left.json(&room, &user);
            self.deliver_event(&room, None, &json);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sessions of `user` on the other nodes, as the view counts them.
fn remote_sessions(view: Option<&View>, user: &str) -> usize {
    view.map_or(0, |v| v.addressed(&Audience::User(user.to_owned())))
}
