//! The hub: who gets what. Owns the router (users, rooms, sessions), the
//! room rules and presence (`rooms:`), history and the marks of event
//! streams, the resumes waiting for Redis, the cluster link, webhooks, and
//! the encoders every delivery shares (the deflate codec, the heartbeat).
//!
//! Methods here touch only the hub (and what they are handed: the clock's
//! time, a count to share); the steps that join it to the sessions are
//! `deliver.rs` (fan-out), `rooms.rs`, `cluster.rs`, `remote.rs`,
//! `resume.rs`, `stream.rs` and `webhooks.rs` (whose decisions are `impl
//! Hub`).

use std::rc::Rc;
use std::time::Instant;

use crate::audience::{Audience, SessionKey};
use crate::cluster::Link;
use crate::config::Config;
use crate::deflate::Codec;
use crate::history::remote::Remote;
use crate::history::{History, StreamRef};
use crate::jwt::Verifier;
use crate::rooms::Rooms;
use crate::router::{Limits, Router};
use crate::session::Heartbeat;
use crate::sse::marks::{Marks, Stream};
use crate::wheel::millis;

/// Routing, rooms, history, the cluster link, webhooks, encoders.
pub(super) struct Hub {
    /// Who receives a message: user, room and session indexes.
    pub(super) router: Router,
    /// Join modes and presence (`rooms:`); see `rooms.rs`.
    pub(super) rooms: Rooms,
    /// The last messages per audience for resuming sessions; `None` while
    /// `history.size` is 0 (then nothing of it runs), or in a cluster.
    pub(super) history: Option<History>,
    /// With history on in a cluster (the streams live in Redis): resumes
    /// waiting for their read (`remote.rs`); `None` otherwise.
    pub(super) remote: Option<Remote>,
    /// With history on: the marks that make one `id:` per fan-out resume
    /// every stream of an event stream (`stream.rs`).
    pub(super) sse_marks: Option<Marks>,
    /// `None` unless `cluster.redis` is set.
    pub(super) cluster: Option<Link>,
    /// Presence events for the backend; `None` while `webhooks.url` is empty.
    pub(super) webhooks: Option<crate::webhooks::Webhooks>,
    /// permessage-deflate: one compression per message and window.
    pub(super) codec: Codec,
    /// The shared Ping frame and event-stream heartbeat.
    pub(super) heartbeat: Heartbeat,
}

impl Hub {
    pub(super) fn new(
        config: &Config,
        cluster: Option<Link>,
        jwt: &Verifier,
        start: Instant,
        limits: Limits,
    ) -> Hub {
        // Config::load refuses the pair; a Config built in code is told here.
        // In a cluster the streams live in Redis (`remote.rs`).
        let history = History::new(&config.history).filter(|_| cluster.is_none());
        let remote = cluster
            .as_ref()
            .is_some_and(Link::keeps_history)
            .then(Remote::default);
        let sse_marks = history.as_ref().map(|_| {
            let bits = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), start);
            Marks::new(bits, millis(config.history.ttl))
        });
        Hub {
            router: Router::with_limits(limits),
            rooms: Rooms::new(config, jwt.clone()),
            history,
            remote,
            sse_marks,
            cluster,
            webhooks: crate::webhooks::Webhooks::start(&config.webhooks),
            codec: Codec::default(),
            heartbeat: Heartbeat::default(),
        }
    }

    /// The earliest deadline of the hub's own clocks (the link's tick,
    /// history expiry, reads waiting for Redis, webhook offline deadlines).
    pub(super) fn next_deadline(&self) -> Option<u64> {
        [
            self.cluster.as_ref().map(Link::next_tick_ms),
            self.history.as_ref().and_then(History::next_deadline),
            self.remote.as_ref().and_then(Remote::next_deadline),
            self.webhooks
                .as_ref()
                .and_then(crate::webhooks::Webhooks::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// History and stream marks expire what is past its time.
    pub(super) fn expire(&mut self, now_ms: u64) {
        if let Some(history) = self.history.as_mut() {
            history.tick(now_ms);
        }
        if let Some(marks) = self.sse_marks.as_mut() {
            marks.tick(now_ms);
        }
    }

    /// Whether session `key` waits for the cluster: its input is then
    /// neither read nor handled (what was read stays kept, in order).
    pub(super) fn holds(&self, key: SessionKey) -> bool {
        let Some(link) = self.cluster.as_ref() else {
            return false;
        };
        link.holds(key) || self.remote.as_ref().is_some_and(|r| r.holds(key))
    }

    /// Open sessions on every live node (this one's, plus the other
    /// nodes' while the cluster is up): what `Handle::online_count` reads.
    pub(super) fn online_count(&self) -> usize {
        let local = self.router.online_count();
        let remote = self
            .cluster
            .as_ref()
            .and_then(|link| link.view())
            .map_or(0, |v| v.sessions());
        local + remote
    }

    /// Sessions of `target` on the other live nodes, as the view counts
    /// them (0 while the cluster is off or down).
    pub(super) fn addressed_elsewhere(&self, target: &Audience<String>) -> usize {
        self.cluster
            .as_ref()
            .and_then(|link| link.view())
            .map_or(0, |v| v.addressed(target))
    }

    /// The link's periodic work (presence, channel release); `false`
    /// without a cluster.
    pub(super) fn cluster_tick(&mut self, now_ms: u64) -> bool {
        let Some(link) = self.cluster.as_mut() else {
            return false;
        };
        link.tick(now_ms, &self.router);
        true
    }

    /// Distinct user ids online on any live node, sorted.
    pub(super) fn online_users(&self) -> Vec<String> {
        let local = self.router.online_users();
        let users = match self.cluster.as_ref().and_then(|link| link.view()) {
            Some(view) => view.merged_users(local),
            None => local,
        };
        users.into_iter().map(str::to_owned).collect()
    }

    /// The cluster as `rest` reports it.
    pub(super) fn rest_cluster(&self) -> crate::rest::Cluster<'_> {
        match self.cluster.as_ref() {
            None => crate::rest::Cluster::Off,
            Some(link) => link
                .view()
                .map_or(crate::rest::Cluster::Down, crate::rest::Cluster::Up),
        }
    }

    /// Appends the hub's figures to the `/metrics` text.
    pub(super) fn render_metrics(&self, text: &mut String) {
        if let Some(link) = self.cluster.as_ref() {
            link.render_metrics(text);
        }
        if let Some(remote) = self.remote.as_ref() {
            remote.render_metrics(text);
        }
        if let Some(history) = self.history.as_ref() {
            history.render_metrics(text);
        }
        if let Some(webhooks) = self.webhooks.as_ref() {
            webhooks.render_metrics(text);
        }
    }

    /// Whether presence events go out for `user` in `room` now: they are
    /// on, no shutdown is under way, and no other session of the user
    /// (here, other than `key`, or on another node as the view knows it)
    /// is still, or already, in it.
    pub(super) fn presence_due(
        &self,
        key: Option<SessionKey>,
        user: &str,
        room: &str,
        shutting_down: bool,
    ) -> bool {
        self.rooms.presence()
            && !shutting_down
            && !self.router.user_in_room(user, room, key)
            && !self
                .cluster
                .as_ref()
                .and_then(|l| l.view())
                .is_some_and(|v| v.user_in_room(user, room))
    }

    /// A session of `user` leaves the router (it is closing): the cluster
    /// link and webhooks hear of it. Returns the rooms it was in while
    /// presence events are on and it has a user (each may owe a `left`).
    pub(super) fn remove_session(
        &mut self,
        key: SessionKey,
        user: Option<&str>,
        now_ms: u64,
    ) -> Vec<Rc<str>> {
        let rooms = self.rooms_before_leaving(key, user);
        let webhook_rooms = self.webhook_rooms_of(key);
        if let Some(link) = self.cluster.as_mut() {
            link.closing(user, self.router.rooms_of(key).map(|r| &**r));
        }
        self.router.remove_session(key, user);
        self.webhook_disconnected(user, &webhook_rooms, now_ms);
        rooms
    }

    /// The rooms a session is in, before it leaves them all (closing):
    /// empty unless presence events are on and it has a user.
    fn rooms_before_leaving(&self, key: SessionKey, user: Option<&str>) -> Vec<Rc<str>> {
        if !self.rooms.presence() || user.is_none() {
            return Vec::new();
        }
        self.router.rooms_of(key).cloned().collect()
    }

    /// Marks the message just kept in history for `audience`; returns the
    /// token its event carries (`stream.rs`). `None` while history is off.
    pub(super) fn mark_kept(&mut self, audience: Audience<&str>, now_ms: u64) -> Option<String> {
        let (marks, history) = (self.sse_marks.as_mut()?, self.history.as_mut()?);
        let stream = StreamRef::of(audience);
        let position = history.position(stream, now_ms);
        let named = match stream {
            StreamRef::All => Stream::All,
            StreamRef::User(user) => Stream::User(Rc::from(user)),
            StreamRef::Room(room) => Stream::Room(Rc::from(room)),
        };
        let seq = marks.record(named, &position, now_ms);
        Some(marks.token(seq))
    }
}
