//! The loop's side of webhooks: turns the router's first-session /
//! last-session transitions and the cluster view's changes into
//! cluster-wide presence changes for [`Webhooks`], and fires due offline
//! deadlines. Every function is a no-op while `webhooks.url` is empty.
//!
//! A name (user or room) is present when this node or any other live node
//! holds it. A local transition counts only when no other node holds the
//! name; a change in the view counts only when this node does not hold it.
//! The view is read through [`remote_user`] and [`remote_room`] and diffed
//! in [`view_changed`] only, so a different presence model touches just
//! these functions. All of it is the hub's (`impl Hub`): the router, the
//! link and the webhooks; the loop hands in its clock.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;

use super::hub::Hub;
use crate::cluster::view::View;
use crate::cluster::Link;
use crate::router::{Change, Router};
use crate::webhooks::Webhooks;

fn remote_user(cluster: Option<&Link>, user: &str) -> bool {
    cluster
        .and_then(Link::view)
        .is_some_and(|v| v.has_user(user))
}

fn remote_room(cluster: Option<&Link>, room: &str) -> bool {
    cluster
        .and_then(Link::view)
        .is_some_and(|v| v.has_room(room))
}

impl Hub {
    /// A chat or SSE session of `user` was added to the router.
    pub(super) fn webhook_connected(&mut self, user: Option<&str>, peer: SocketAddr) {
        let (Some(webhooks), Some(user)) = (self.webhooks.as_mut(), user) else {
            return;
        };
        if self.router.user_sessions(user) == 1 && !remote_user(self.cluster.as_ref(), user) {
            webhooks.user_present(user, Some(peer.ip().to_string()));
        }
    }

    /// A session left the router; `rooms` are the rooms it was in.
    pub(super) fn webhook_disconnected(
        &mut self,
        user: Option<&str>,
        rooms: &[Rc<str>],
        now_ms: u64,
    ) {
        let Some(webhooks) = self.webhooks.as_mut() else {
            return;
        };
        let cluster = self.cluster.as_ref();
        if let Some(user) = user {
            if self.router.user_sessions(user) == 0 && !remote_user(cluster, user) {
                webhooks.user_absent(user, now_ms);
            }
        }
        for room in rooms {
            if self.router.room_size(room) == 0 && !remote_room(cluster, room) {
                webhooks.room_absent(room, now_ms);
            }
        }
    }

    /// The rooms a session is in, read before it leaves the router (only
    /// while room events are wanted).
    pub(super) fn webhook_rooms_of(&self, key: crate::audience::SessionKey) -> Vec<Rc<str>> {
        match &self.webhooks {
            Some(webhooks) if webhooks.rooms_wanted() => self.router.session_rooms(key),
            _ => Vec::new(),
        }
    }

    /// A join or leave changed `room` on this node.
    pub(super) fn webhook_room(&mut self, room: &str, change: Change, now_ms: u64) {
        let Some(webhooks) = self.webhooks.as_mut() else {
            return;
        };
        if remote_room(self.cluster.as_ref(), room) {
            return;
        }
        match change {
            Change::FirstMember => webhooks.room_present(room),
            Change::LastMember => webhooks.room_absent(room, now_ms),
            Change::Member | Change::Unchanged => {}
        }
    }

    /// Offline deadlines that are due: reported if still absent everywhere.
    pub(super) fn webhook_tick(&mut self, now_ms: u64) {
        let Some(webhooks) = self.webhooks.as_mut() else {
            return;
        };
        let (router, cluster) = (&self.router, self.cluster.as_ref());
        webhooks.fire_due(
            now_ms,
            |user| router.user_sessions(user) == 0 && !remote_user(cluster, user),
            |room| router.room_size(room) == 0 && !remote_room(cluster, room),
        );
    }

    /// A new view of the other nodes is about to replace the current one.
    pub(super) fn webhook_view(&mut self, new: &View, now_ms: u64) {
        let Some(webhooks) = self.webhooks.as_mut() else {
            return;
        };
        let Some(link) = self.cluster.as_ref() else {
            return;
        };
        view_changed(webhooks, &self.router, link, new, now_ms);
    }
}

/// Applies what changed between the link's current view and `new`: names
/// that appeared or vanished on other nodes, when this node holds none of
/// them, and who reports (the smallest live node id). Without a current
/// view (start, or after an outage) `new` is only the baseline: nothing is
/// reported for it.
fn view_changed(webhooks: &mut Webhooks, router: &Router, link: &Link, new: &View, now_ms: u64) {
    let me = link.node_id();
    webhooks.set_reporter(new.node_ids().all(|other| me <= other));
    let Some(old) = link.view() else {
        return;
    };
    let (old_users, old_rooms) = old.users_and_rooms();
    let (new_users, new_rooms) = new.users_and_rooms();
    let (old_users, new_users): (HashSet<&str>, HashSet<&str>) = (
        old_users.into_iter().collect(),
        new_users.into_iter().collect(),
    );
    for user in old_users.difference(&new_users) {
        if router.user_sessions(user) == 0 {
            webhooks.user_absent(user, now_ms);
        }
    }
    for user in new_users.difference(&old_users) {
        if router.user_sessions(user) == 0 {
            webhooks.user_present(user, None);
        }
    }
    if !webhooks.rooms_wanted() {
        return;
    }
    let (old_rooms, new_rooms): (HashSet<&str>, HashSet<&str>) = (
        old_rooms.into_iter().collect(),
        new_rooms.into_iter().collect(),
    );
    for room in old_rooms.difference(&new_rooms) {
        if router.room_size(room) == 0 {
            webhooks.room_absent(room, now_ms);
        }
    }
    for room in new_rooms.difference(&old_rooms) {
        if router.room_size(room) == 0 {
            webhooks.room_present(room);
        }
    }
}
