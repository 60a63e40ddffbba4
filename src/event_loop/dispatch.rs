//! Dispatching: acts on each complete unit a session decoded. HTTP
//! requests go to `rest` (or the hooks), upgrades open a WebSocket, frames
//! go to the router (chat) or back (echo); what they produce is queued for
//! the write step: an answer to the session itself, or a fan-out through
//! [`EventLoop::deliver`].

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, info};

use super::EventLoop;
use crate::deflate::Encoded;
use crate::frame::{self, DecodeError, Inbound, Kind};
use crate::hooks::{CloseReason, SessionInfo, Verdict};
use crate::http::{self, HttpError, Response};
use crate::ids;
use crate::message;
use crate::metrics::HandshakeFailure;
use crate::rate::{self, Bucket};
use crate::rest::{self, Outcome};
use crate::rooms::Grants;
use crate::router::{JoinError, Route};
use crate::session::{Next, Phase, Unit};
use crate::upgrade::{Endpoint, Upgrade};

impl EventLoop {
    /// Acts on every complete unit at the start of `buf`; returns the bytes
    /// consumed (the rest is an unfinished unit, or input kept while paused).
    pub(super) fn dispatch(&mut self, index: usize, buf: &mut [u8]) -> usize {
        let mut at = 0;
        while at < buf.len() {
            if self.held(index) {
                // Waiting for the cluster (cluster.rs): keep the rest.
                return at;
            }
            let Some(session) = self.sessions.get_mut(index) else {
                return buf.len();
            };
            match session.next_unit(&mut buf[at..], &self.rules, self.now_ms) {
                Next::Unit(consumed, unit) => {
                    at += consumed;
                    self.on_unit(index, unit);
                }
                Next::Incomplete | Next::Paused => return at,
                Next::Discard => return buf.len(),
            }
        }
        at
    }

    fn on_unit(&mut self, index: usize, unit: Unit<'_>) {
        match unit {
            Unit::Request { request, body } => self.on_request(index, &request, body),
            Unit::BadRequest(error) => self.http_error(index, &error),
            Unit::Frame(inbound) => self.on_inbound(index, inbound),
            Unit::BadFrame(error) => self.protocol_close(index, &error),
            Unit::Nothing => {}
            Unit::CloseAnswered => self.mark_dirty(index),
            Unit::Broken => self.kill(index, CloseReason::Protocol(1002)),
        }
    }

    fn http_error(&mut self, index: usize, error: &HttpError) {
        if matches!(error, HttpError::HeadTooLarge | HttpError::BodyTooLarge) {
            self.metrics.handshake_failed(HandshakeFailure::TooLarge);
        }
        debug!("session {index}: {error}");
        let response = Response::error(error.status(), &error.to_string()).closing();
        self.respond(index, &response, false);
    }

    fn on_request(&mut self, index: usize, request: &http::Request, body: &[u8]) {
        self.metrics.http_requests += 1;
        if !self.client_from_request(index, request) {
            return;
        }
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ctx = rest::Context {
            config: &self.config,
            mode: self.mode,
            router: &self.router,
            open_websockets: self.open_websockets,
            now_unix,
            jwt: &self.jwt,
            cluster: match self.cluster.as_ref() {
                None => rest::Cluster::Off,
                Some(link) => link.view().map_or(rest::Cluster::Down, rest::Cluster::Up),
            },
        };
        let keep_alive = request.keep_alive;
        if !request.upgrade_websocket {
            if let Some(response) = self.hooks.on_request(request, body, &mut self.actions) {
                self.respond(index, &response, keep_alive);
                return self.apply_actions();
            }
        }
        // A client that asked to upgrade has no use for the connection once
        // refused: answer and close it.
        let keep_alive = keep_alive && !request.upgrade_websocket;
        match rest::handle(request, body, &ctx) {
            Outcome::Respond(response) => self.respond(index, &response, keep_alive),
            Outcome::Refuse(response, why) => {
                self.metrics.handshake_failed(why);
                if let Some(session) = self.sessions.get(index) {
                    let reason = String::from_utf8_lossy(&response.body);
                    info!(
                        "refused {} from {}: {} {reason}",
                        request.path, session.client, response.status
                    );
                }
                self.respond(index, &response, keep_alive);
            }
            Outcome::Metrics => {
                let mut text = self
                    .metrics
                    .render(&self.shared, crate::alloc::heap_bytes());
                if let Some(link) = self.cluster.as_ref() {
                    link.render_metrics(&mut text);
                }
                if let Some(remote) = self.remote.as_ref() {
                    remote.render_metrics(&mut text);
                }
                if let Some(history) = self.history.as_ref() {
                    history.render_metrics(&mut text);
                }
                if let Some(webhooks) = self.webhooks.as_ref() {
                    webhooks.render_metrics(&mut text);
                }
                let response = Response::raw(200, "text/plain; version=0.0.4", text.into_bytes());
                self.respond(index, &response, keep_alive);
            }
            Outcome::Push { target, json } => {
                if let Some(response) = self.rest_push(index, target, json, keep_alive) {
                    self.respond(index, &response, keep_alive);
                }
            }
            Outcome::Membership { user, room, join } => {
                if let Some(response) = self.rest_membership(index, (user, room, join), keep_alive)
                {
                    self.respond(index, &response, keep_alive);
                }
            }
            Outcome::Upgrade(upgrade) => self.upgrade(index, upgrade),
        }
    }

    pub(super) fn respond(&mut self, index: usize, response: &Response, keep_alive: bool) {
        let (now, rules) = (self.now_ms, self.rules);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let mut keep = keep_alive && !response.close;
        if keep && !session.count_request() {
            // At most 1000 requests per connection: slots turn over.
            self.metrics.http_request_cap_closes += 1;
            keep = false;
        }
        let closing = session.respond(response.to_bytes(keep), keep, now, &rules);
        self.mark_dirty(index);
        if let Some(deadline) = closing {
            self.arm(index, deadline);
        }
    }

    fn upgrade(&mut self, index: usize, upgrade: Upgrade) {
        let mut upgrade = Some(upgrade);
        if upgrade
            .as_ref()
            .is_some_and(|u| u.endpoint != Endpoint::Echo)
            && self.hold_upgrade(index, &mut upgrade)
        {
            // Answered once the user's (and an event stream's rooms')
            // channels are subscribed (cluster.rs).
            return;
        }
        if let Some(upgrade) = upgrade {
            self.open_websocket(index, upgrade);
        }
    }

    /// Runs `on_connect`, then writes the 101 and opens the session.
    pub(super) fn open_websocket(&mut self, index: usize, mut upgrade: Upgrade) {
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        let (key, peer, client) = (session.key, session.peer(), session.client);
        let info = SessionInfo {
            key,
            user: upgrade.user.as_deref(),
            peer,
            client,
        };
        if upgrade.endpoint != Endpoint::Echo {
            if let Err(reason) = self.hooks.on_connect(&info, &mut self.actions) {
                self.metrics.handshake_failed(HandshakeFailure::Hook);
                let response = Response::error(403, &reason).closing();
                return self.respond(index, &response, false);
            }
        }
        let (now, rules) = (self.now_ms, self.rules);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let user: Option<Rc<str>> = upgrade.user.as_deref().map(Rc::from);
        if session.counted_http() {
            self.http_connections -= 1;
        }
        session.upgrade(
            upgrade.response,
            upgrade.endpoint,
            user.clone(),
            upgrade.compression,
            now,
            &rules,
        );
        // Kept compactly for the session (nothing in `open` mode); a
        // stream's rooms (below) are checked against them too.
        let grants = upgrade.claims.take().and_then(|c| self.rooms.grants(&c));
        self.open_websockets += 1;
        self.metrics.connections_total += 1;
        match upgrade.endpoint {
            Endpoint::Chat | Endpoint::Sse => {
                self.router.add_session(key, user.as_ref());
                if let Some(link) = self.cluster.as_ref() {
                    link.opened(user.as_deref());
                }
                if upgrade.endpoint == Endpoint::Sse {
                    self.metrics.open_sse += 1;
                } else {
                    self.metrics.open_chat += 1;
                }
                self.webhook_connected(user.as_deref(), peer);
                self.publish_online();
                info!(
                    "connect user={} peer={client} online={}",
                    ids::shown(user.as_deref()),
                    self.router.online_count()
                );
                if let Some(since) = upgrade.resume.take() {
                    self.resume_session(index, user.as_deref(), *since);
                }
            }
            Endpoint::Echo => self.metrics.open_echo += 1,
        }
        let stream = upgrade.stream.take().map(|open| *open).unwrap_or_default();
        for room in &stream.rooms {
            self.join_room(index, room, grants.as_deref());
        }
        if let Some(session) = self.sessions.get_mut(index) {
            session.grant(grants);
        }
        if upgrade.endpoint == Endpoint::Sse {
            self.open_stream(index, stream.last_event_id.as_deref());
        }
        self.mark_dirty(index);
        self.rearm_open(index);
        self.apply_actions();
    }

    /// A session joins `room` as a WebSocket `join` message would make it
    /// (name bounds, `max_rooms_per_session`); a refused join is answered
    /// with the same error message. For the rooms an event stream names.
    /// `rooms.join` and `on_join` decide as for a `join` message.
    fn join_room(&mut self, index: usize, room: &str, grants: Option<&Grants>) {
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        let (key, peer, client) = (session.key, session.peer(), session.client);
        let user = session.user().cloned();
        let refused = |reason: &str| message::error_json(reason);
        let max = self.config.websocket.max_id_bytes;
        if let Err(e) = ids::check_fields([("room", Some(room))], max) {
            return self.reply(index, &refused(&e.to_string()));
        }
        let info = SessionInfo {
            key,
            user: user.as_deref(),
            peer,
            client,
        };
        if !self.admit_join(index, &info, room, grants, None) {
            return;
        }
        match self.router.join(key, user.as_deref(), room) {
            Ok(change) => self.member_changed(key, user.as_deref(), room, true, change, false),
            Err(JoinError::TooManyRooms) => self.reply(index, &refused("too many rooms")),
        }
    }

    fn on_inbound(&mut self, index: usize, inbound: Inbound<'_>) {
        match inbound {
            Inbound::Text(payload) => self.on_plain(index, Kind::Text, payload.bytes()),
            Inbound::Binary(payload) => self.on_plain(index, Kind::Binary, payload.bytes()),
            Inbound::Ping(data) => {
                let pong = frame::encode(Kind::Pong, data);
                if let Some(session) = self.sessions.get_mut(index) {
                    session.queue_pong(pong);
                    self.mark_dirty(index);
                }
            }
            Inbound::Pong => {}
            Inbound::Close(close) => self.peer_closed(index, close),
            Inbound::Compressed { text, payload } => {
                self.on_compressed(index, text, payload.bytes())
            }
        }
    }

    /// An uncompressed data message: counted by the rate limits, then handled.
    fn on_plain(&mut self, index: usize, kind: Kind, bytes: &[u8]) {
        if self.rate_admit(index, bytes.len()).is_some() && self.rate_spend(index, bytes.len()) {
            self.on_data(index, kind, bytes);
        }
    }

    /// A permessage-deflate message takes its rate-limit token first, then
    /// inflates within `max_message_size` and the bytes its session has
    /// left (both checked while inflating), and is handled like a plain one.
    fn on_compressed(&mut self, index: usize, text: bool, compressed: &[u8]) {
        let Some(allowed) = self.rate_admit(index, compressed.len()) else {
            return;
        };
        let max = self.rules.max_message_size;
        let limit = max.min(allowed);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let inflated = match session.inflate(&mut self.codec, text, compressed, limit) {
            Ok(bytes) => bytes,
            // Past the bytes left, not past the size limit: over the rate.
            Err(DecodeError::TooBig) if limit < max => {
                self.rate_spend(index, limit.saturating_add(1));
                return;
            }
            Err(error) => return self.protocol_close(index, &error),
        };
        if self.rate_spend(index, inflated.len()) {
            let kind = if text { Kind::Text } else { Kind::Binary };
            self.on_data(index, kind, &inflated);
        }
    }

    /// The session's bucket admits one data message of `wire` bytes as
    /// received: `Some(bytes it may inflate to)`, or `None` when it was
    /// dropped (with an error reply) or the session closed for flooding.
    fn rate_admit(&mut self, index: usize, wire: usize) -> Option<usize> {
        self.metrics.messages_in += 1;
        let limits = self.rate_limits();
        if limits.is_off() {
            return Some(usize::MAX);
        }
        let now = self.now_ms;
        let bucket = self.rates.entry(index).or_insert_with(|| Bucket::new(now));
        match bucket.admit(now, limits, wire) {
            rate::Verdict::Allow(bytes) => Some(bytes),
            rate::Verdict::Drop => {
                self.metrics.rate_limited_messages += 1;
                self.reply(index, &message::error_json("rate limit exceeded"));
                None
            }
            rate::Verdict::Close => {
                self.rate_limit_close(index);
                None
            }
        }
    }

    /// Charges an admitted message's (inflated) size; `false`: over
    /// `max_bytes_per_second`, dropped with an error reply.
    fn rate_spend(&mut self, index: usize, bytes: usize) -> bool {
        let limits = self.rate_limits();
        let Some(bucket) = self.rates.get_mut(&index) else {
            return true;
        };
        if bucket.spend(limits, bytes) {
            return true;
        }
        self.metrics.rate_limited_messages += 1;
        self.metrics.byte_limited_messages += 1;
        self.reply(index, &message::error_json("rate limit exceeded"));
        false
    }

    fn rate_limits(&self) -> rate::Limits {
        let ws = &self.config.websocket;
        rate::Limits {
            messages: ws.max_messages_per_second,
            bytes: ws.max_bytes_per_second as u64,
        }
    }

    /// A data message within the limits: echoed, routed, or refused.
    fn on_data(&mut self, index: usize, kind: Kind, bytes: &[u8]) {
        let echo = matches!(
            self.sessions.get(index).map(|s| s.phase()),
            Some(Phase::Echo)
        );
        match kind {
            _ if echo => self.queue_message(index, kind, bytes),
            Kind::Text => self.on_chat_message(index, bytes),
            _ => self.reply(
                index,
                &message::error_json("binary messages are not supported"),
            ),
        }
    }

    fn on_chat_message(&mut self, index: usize, bytes: &[u8]) {
        let max_depth = self.config.websocket.max_json_depth;
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        let key = session.key;
        let (peer, client) = (session.peer(), session.client);
        let user = session.user().cloned();
        let message = match message::parse_limited(bytes, max_depth) {
            Ok(message) => message,
            Err(e) => return self.reply(index, &message::error_json(&e.to_string())),
        };
        let info = SessionInfo {
            key,
            user: user.as_deref(),
            peer,
            client,
        };
        if self.hooks.on_message(&info, &message, &mut self.actions) == Verdict::Consume {
            return self.apply_actions();
        }
        if message.kind == "join" && !self.may_join(index, &info, &message) {
            return self.apply_actions();
        }
        match self.router.route(key, user.as_deref(), &message) {
            Route::Reply(json) => self.reply(index, &json),
            Route::Done(change) => {
                if let Some(room) = message.room() {
                    let joined = message.kind == "join";
                    self.member_changed(key, user.as_deref(), room, joined, change, true);
                }
                if let ("join", Some(room)) = (&*message.kind, message.room()) {
                    self.joined(index, room, message.since);
                }
            }
            Route::Deliver(audience, json) => {
                let min_bytes = self.config.websocket.compression_min_bytes;
                if self.remote.is_some() {
                    self.relay_kept(index, audience, &json);
                } else {
                    self.deliver(audience, &mut Encoded::new(Kind::Text, &json, min_bytes));
                    self.relay_to_cluster(index, audience, &json);
                }
            }
        }
        self.apply_actions();
    }
}
