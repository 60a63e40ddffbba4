//! The loop's side of the cluster: pushes and client messages that also go
//! to other nodes, messages that come from them, and the figures (status,
//! `sent`, `online_count`) that add the other nodes' presence.
//!
//! Every function here is a no-op or the single-node path when
//! `cluster.redis` is empty (`self.cluster` is `None`).

use std::sync::atomic::Ordering;

use serde_json::json;

use super::EventLoop;
use crate::audience::Audience;
use crate::cluster::Event;
use crate::deflate::Encoded;
use crate::frame::Kind;
use crate::http::Response;
use crate::message;

/// What a client is told when its message reached this node only.
const LOCAL_ONLY: &str = "cluster unavailable: delivered on this node only";

impl EventLoop {
    /// A handle or hook push: here, and to the other nodes when the
    /// cluster is up. Returns the sessions addressed (cluster-wide).
    pub(super) fn push(&mut self, target: &Audience<String>, json: &[u8]) -> usize {
        let local = self.push_local(target, json);
        let Some(link) = self.cluster.as_mut() else {
            return local;
        };
        if !link.publish(target.as_deref(), json) {
            return local;
        }
        local + link.view().map_or(0, |v| v.addressed(target))
    }

    /// A REST push: refused whole (503) unless it can reach every node, so
    /// a retry cannot duplicate it.
    pub(super) fn rest_push(&mut self, target: &Audience<String>, json: &[u8]) -> Response {
        let sent = match self.cluster.as_mut() {
            None => self.push_local(target, json),
            Some(link) => {
                if !link.publish(target.as_deref(), json) {
                    return Response::error(503, "cluster unavailable");
                }
                let remote = link.view().map_or(0, |v| v.addressed(target));
                remote + self.push_local(target, json)
            }
        };
        Response::json(200, &json!({ "sent": sent }))
    }

    /// After a client message was delivered here: publish it for the
    /// other nodes, or tell the sender it stayed on this node.
    pub(super) fn relay_to_cluster(&mut self, index: usize, audience: Audience<&str>, json: &[u8]) {
        let Some(link) = self.cluster.as_mut() else {
            return;
        };
        if !link.publish(audience, json) {
            self.reply(index, &message::error_json(LOCAL_ONLY));
        }
    }

    pub(super) fn on_cluster(&mut self, event: Event) {
        if let Event::View(view) = &event {
            self.webhook_view(view);
        }
        let Some(link) = self.cluster.as_mut() else {
            return;
        };
        match event {
            Event::Deliver { target, json } => {
                self.push_local(&target, &json);
            }
            Event::Membership { user, room, join } => {
                self.cluster_membership(&user, &room, join);
            }
            Event::View(view) => {
                let old = link.on_view(view);
                self.publish_online();
                self.presence_after_view(&old);
            }
            Event::Link { side, state } => {
                link.on_link(side, state);
                self.publish_online();
            }
        }
    }

    fn push_local(&mut self, target: &Audience<String>, json: &[u8]) -> usize {
        let min_bytes = self.config.websocket.compression_min_bytes;
        self.deliver(
            target.as_deref(),
            &mut Encoded::new(Kind::Text, json, min_bytes),
        )
    }

    /// Stores the open-session count that `Handle::online_count` reads:
    /// cluster-wide while the cluster is up.
    pub(super) fn publish_online(&mut self) {
        let local = self.router.online_count();
        let remote = self
            .cluster
            .as_ref()
            .and_then(|link| link.view())
            .map_or(0, |v| v.sessions());
        self.shared.online.store(local + remote, Ordering::Relaxed);
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

    /// Presence, channel release: runs when the link's tick is due.
    pub(super) fn cluster_tick(&mut self) {
        if let Some(link) = self.cluster.as_mut() {
            link.tick(self.now_ms, &self.router);
        }
    }
}
