//! The loop's side of the cluster: pushes and client messages that also go
//! to other nodes, messages that come from them, and the figures (status,
//! `sent`, `online_count`) that add the other nodes' presence.
//!
//! Every function here is a no-op or the single-node path when
//! `cluster.redis` is empty (`self.hub.cluster` is `None`).
//!
//! Pushes, relays and holds only deliver and park, through the
//! [`Delivery`] parts; settling what the cluster confirmed opens sessions,
//! answers requests and reads held input, which is the loop's.

use serde_json::json;

use super::deliver::Delivery;
use super::EventLoop;
use crate::audience::Audience;
use crate::cluster::gate::{Outcome, Ticket};
use crate::cluster::{Event, Held};
use crate::deflate::Encoded;
use crate::frame::Kind;
use crate::http::Response;
use crate::message;

/// What a client is told when its message reached this node only.
const LOCAL_ONLY: &str = "cluster unavailable: delivered on this node only";
/// What a session is told when its room's channel was not confirmed.
const JOINED_LOCALLY: &str = "cluster unavailable: room joined on this node only";

impl Delivery<'_> {
    /// A handle or hook push: here, and to the other nodes when the
    /// cluster is up. Returns the sessions addressed (cluster-wide).
    pub(super) fn push(&mut self, target: &Audience<String>, json: &[u8]) -> usize {
        if self.hub.remote.is_some() {
            return self.push_kept(target, json);
        }
        let local = self.push_local(target, json);
        let Some(link) = self.hub.cluster.as_mut() else {
            return local;
        };
        if !link.publish(target.as_deref(), json) {
            return local;
        }
        local + link.view().map_or(0, |v| v.addressed(target))
    }

    /// A REST push: refused whole (503) unless it can reach every node, so
    /// a retry cannot duplicate it. In a cluster the answer (and the
    /// delivery here) waits, session held, until Redis accepted the
    /// publish: `None` then, and [`EventLoop::settle_cluster`] answers.
    pub(super) fn rest_push(
        &mut self,
        index: usize,
        target: Audience<String>,
        json: Vec<u8>,
        keep_alive: bool,
    ) -> Option<Response> {
        let Some(link) = self.hub.cluster.as_mut() else {
            let sent = self.push_local(&target, &json);
            return Some(Response::json(200, &json!({ "sent": sent })));
        };
        let Some(ticket) = link.publish_acked(target.as_deref(), &json) else {
            return Some(Response::error(503, "cluster unavailable"));
        };
        let session = self.conns.sessions.get_mut(index)?;
        let what = Held::Push {
            target,
            json,
            keep_alive,
        };
        link.park(self.now_ms, session.key, ticket, Vec::new(), what);
        None
    }

    /// A chat session or event stream of `user` is about to open: `true`
    /// when its answer must wait for the user's channel (and an event
    /// stream's rooms'); the session is then held, and the upgrade parked
    /// until [`EventLoop::settle_cluster`].
    pub(super) fn hold_upgrade(
        &mut self,
        index: usize,
        upgrade: &mut Option<crate::upgrade::Upgrade>,
    ) -> bool {
        let Some(link) = self.hub.cluster.as_mut() else {
            return false;
        };
        let Some(parked) = upgrade.as_ref() else {
            return false;
        };
        let mut wait = link
            .want_user(parked.user.as_deref())
            .into_iter()
            .collect::<Vec<_>>();
        for room in parked.stream.iter().flat_map(|s| s.rooms.iter()) {
            wait.extend(link.want_room(room));
        }
        let Some(ticket) = wait
            .iter()
            .map(|(ticket, _)| *ticket)
            .max_by_key(|t| match t {
                Ticket::Subscribed(v) | Ticket::Published(v) => *v,
            })
        else {
            return false;
        };
        let (Some(session), Some(parked)) = (self.conns.sessions.get_mut(index), upgrade.take())
        else {
            return false;
        };
        let pins = wait.into_iter().map(|(_, channel)| channel).collect();
        let what = Held::Upgrade(Box::new(parked));
        link.park(self.now_ms, session.key, ticket, pins, what);
        true
    }

    /// A session joined `room` here: its next message waits (session
    /// held) until the room's channel is confirmed.
    pub(super) fn hold_after_join(&mut self, index: usize, room: &str) {
        let Some(link) = self.hub.cluster.as_mut() else {
            return;
        };
        let Some((ticket, pin)) = link.want_room(room) else {
            return;
        };
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        link.park(self.now_ms, session.key, ticket, vec![pin], Held::Join);
    }

    /// After a client message was delivered here: publish it for the
    /// other nodes, or tell the sender it stayed on this node.
    pub(super) fn relay_to_cluster(&mut self, index: usize, audience: Audience<&str>, json: &[u8]) {
        let Some(link) = self.hub.cluster.as_mut() else {
            return;
        };
        if !link.publish(audience, json) {
            self.reply(index, &message::error_json(LOCAL_ONLY));
        }
    }

    pub(super) fn push_local(&mut self, target: &Audience<String>, json: &[u8]) -> usize {
        let min_bytes = self.setup.compression_min_bytes();
        self.deliver(
            target.as_deref(),
            &mut Encoded::new(Kind::Text, json, min_bytes),
        )
    }
}

impl EventLoop {
    /// Acts on parked work the cluster confirmed or refused: opens the
    /// WebSocket or answers 503, lets a joined session go on, answers a
    /// REST push or membership change (acting on it here first when Redis
    /// took it).
    pub(super) fn settle_cluster(&mut self) {
        let Some(link) = self.hub.cluster.as_mut() else {
            return;
        };
        for (waiter, outcome) in link.take_settled() {
            let index = waiter.key.index as usize;
            if !self
                .conns
                .sessions
                .get(index)
                .is_some_and(|s| s.key == waiter.key && !s.is_dead())
            {
                // Gone meanwhile (a push already published is not undone).
                continue;
            }
            match (waiter.what, outcome) {
                (Held::Upgrade(upgrade), Outcome::Confirmed) => {
                    self.open_websocket(index, *upgrade)
                }
                (Held::Upgrade(_), Outcome::Failed) => {
                    log::warn!("session {index}: the user's channel was not subscribed in time; answered 503");
                    let response = Response::error(503, "cluster unavailable").closing();
                    self.respond(index, &response, false);
                }
                (Held::Join, Outcome::Confirmed) => {}
                (Held::Join, Outcome::Failed) => {
                    self.delivery()
                        .reply(index, &message::error_json(JOINED_LOCALLY));
                }
                (
                    Held::Push {
                        target,
                        json,
                        keep_alive,
                    },
                    Outcome::Confirmed,
                ) => {
                    let local = match self.hub.remote {
                        Some(_) => self.delivery().deliver_here(target.as_deref(), &json, true),
                        None => self.delivery().push_local(&target, &json),
                    };
                    let remote = self.hub.addressed_elsewhere(&target);
                    let response = Response::json(200, &json!({ "sent": local + remote }));
                    self.respond(index, &response, keep_alive);
                }
                (
                    Held::Membership {
                        user,
                        room,
                        join,
                        keep_alive,
                    },
                    Outcome::Confirmed,
                ) => {
                    let response = self.delivery().membership_settled(&user, &room, join);
                    self.respond(index, &response, keep_alive);
                }
                (
                    Held::Push { keep_alive, .. } | Held::Membership { keep_alive, .. },
                    Outcome::Failed,
                ) => {
                    let response = Response::error(503, "cluster unavailable");
                    self.respond(index, &response, keep_alive);
                }
            }
            self.close_ended();
            self.release_held(index);
        }
        self.apply_actions();
    }

    pub(super) fn on_cluster(&mut self, event: Event) {
        if let Event::View(view) = &event {
            self.hub.webhook_view(view, self.clock.now_ms);
        }
        let Some(link) = self.hub.cluster.as_mut() else {
            return;
        };
        match event {
            Event::Deliver { target, json } => {
                link.delivered(json.len());
                self.delivery().push_local(&target, &json);
            }
            Event::Kept {
                target,
                json,
                epoch,
                offset,
                own,
                token,
            } => {
                link.delivered(json.len());
                self.delivery()
                    .on_kept(&target, &json, &epoch, offset, own, token);
            }
            Event::HistoryRead { id, result, bytes } => {
                link.delivered(bytes);
                if let Some(index) = self.delivery().on_history_read(id, result) {
                    self.close_ended();
                    self.release_held(index);
                }
            }
            Event::Membership { user, room, join } => {
                self.delivery().cluster_membership(&user, &room, join);
            }
            Event::View(view) => {
                let old = link.on_view(view);
                self.publish_online();
                self.delivery().presence_after_view(&old);
            }
            Event::Link { side, state } => {
                link.on_link(side, state);
                self.publish_online();
            }
            Event::Subscribed(version) => link.on_confirmed(Ticket::Subscribed(version), true),
            Event::Published { upto, ok } => link.on_confirmed(Ticket::Published(upto), ok),
        }
        self.settle_cluster();
    }

    /// Stores the open-session count that `Handle::online_count` reads:
    /// cluster-wide while the cluster is up.
    pub(super) fn publish_online(&mut self) {
        self.life.publish_online(self.hub.online_count());
    }

    /// Presence, channel release: runs when the link's tick is due.
    pub(super) fn cluster_tick(&mut self) {
        if self.hub.cluster_tick(self.clock.now_ms) {
            self.delivery().remote_tick();
            self.settle_cluster();
        }
    }
}
