//! Dispatching: acts on each complete unit a session decoded. HTTP
//! requests go to `rest` (or the hooks), upgrades open a WebSocket, frames
//! go to the router (chat) or back (echo); what they produce is queued for
//! the write step: an answer to the session itself, or a fan-out through
//! `Delivery::deliver` (`deliver.rs`).

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, info};

use super::EventLoop;
use crate::audience::SessionKey;
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
use crate::session::{Next, Phase, Session, Unit};
use crate::upgrade::{Endpoint, Upgrade};

impl EventLoop {
    /// Acts on every complete unit at the start of `buf`; returns the bytes
    /// consumed (the rest is an unfinished unit, or input kept while paused).
    pub(super) fn dispatch(&mut self, index: usize, buf: &mut [u8]) -> usize {
        let mut at = 0;
        while at < buf.len() {
            let Some(session) = self.conns.sessions.get_mut(index) else {
                return buf.len();
            };
            if self.hub.holds(session.key) {
                // Waiting for the cluster (cluster.rs): keep the rest.
                return at;
            }
            match session.next_unit(&mut buf[at..], &self.setup.rules, self.clock.now_ms) {
                Next::Unit(consumed, unit) => {
                    at += consumed;
                    self.on_unit(index, unit);
                    // What the unit's deliveries ended closes before the next
                    // unit is read (the session read may be one of them).
                    self.close_ended();
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
            Unit::CloseAnswered => self.conns.mark_dirty(index),
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
            config: &self.setup.config,
            mode: self.setup.mode,
            router: &self.hub.router,
            open_websockets: self.conns.open_websockets,
            now_unix,
            jwt: &self.setup.jwt,
            cluster: self.hub.rest_cluster(),
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
                if let Some(session) = self.conns.sessions.get(index) {
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
                    .render(self.life.shared(), crate::alloc::heap_bytes());
                self.hub.render_metrics(&mut text);
                let response = Response::raw(200, "text/plain; version=0.0.4", text.into_bytes());
                self.respond(index, &response, keep_alive);
            }
            Outcome::Push { target, json } => {
                if let Some(response) = self.delivery().rest_push(index, target, json, keep_alive) {
                    self.respond(index, &response, keep_alive);
                }
            }
            Outcome::Membership { user, room, join } => {
                if let Some(response) =
                    self.delivery()
                        .rest_membership(index, (user, room, join), keep_alive)
                {
                    self.respond(index, &response, keep_alive);
                }
            }
            Outcome::Upgrade(upgrade) => self.upgrade(index, upgrade),
        }
    }

    pub(super) fn respond(&mut self, index: usize, response: &Response, keep_alive: bool) {
        let (now, rules) = (self.clock.now_ms, self.setup.rules);
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let mut keep = keep_alive && !response.close;
        if keep && !session.count_request() {
            // At most 1000 requests per connection: slots turn over.
            self.metrics.http_request_cap_closes += 1;
            keep = false;
        }
        let closing = session.respond(response.to_bytes(keep), keep, now, &rules);
        self.conns.mark_dirty(index);
        if let Some(deadline) = closing {
            self.arm(index, deadline);
        }
    }

    fn upgrade(&mut self, index: usize, upgrade: Upgrade) {
        let mut upgrade = Some(upgrade);
        if upgrade
            .as_ref()
            .is_some_and(|u| u.endpoint != Endpoint::Echo)
            && self.delivery().hold_upgrade(index, &mut upgrade)
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
        let Some(session) = self.conns.sessions.get(index) else {
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
        let (now, rules) = (self.clock.now_ms, self.setup.rules);
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let user: Option<Rc<str>> = upgrade.user.as_deref().map(Rc::from);
        self.admission.http_released(session);
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
        let grants = upgrade
            .claims
            .take()
            .and_then(|c| self.hub.rooms.grants(&c));
        self.conns.open_websockets += 1;
        self.metrics.connections_total += 1;
        match upgrade.endpoint {
            Endpoint::Chat | Endpoint::Sse => {
                self.hub.router.add_session(key, user.as_ref());
                if let Some(link) = self.hub.cluster.as_ref() {
                    link.opened(user.as_deref());
                }
                if upgrade.endpoint == Endpoint::Sse {
                    self.metrics.open_sse += 1;
                } else {
                    self.metrics.open_chat += 1;
                }
                self.hub.webhook_connected(user.as_deref(), peer);
                self.publish_online();
                info!(
                    "connect user={} peer={client} online={}",
                    ids::shown(user.as_deref()),
                    self.hub.router.online_count()
                );
                if let Some(since) = upgrade.resume.take() {
                    self.delivery()
                        .resume_session(index, user.as_deref(), *since);
                }
            }
            Endpoint::Echo => self.metrics.open_echo += 1,
        }
        let stream = upgrade.stream.take().map(|open| *open).unwrap_or_default();
        for room in &stream.rooms {
            self.join_room(index, room, grants.as_deref());
        }
        if let Some(session) = self.conns.sessions.get_mut(index) {
            session.grant(grants);
        }
        if upgrade.endpoint == Endpoint::Sse {
            self.delivery()
                .open_stream(index, stream.last_event_id.as_deref());
        }
        self.conns.mark_dirty(index);
        self.rearm_open(index);
        self.apply_actions();
    }

    /// A session joins `room` as a WebSocket `join` message would make it
    /// (name bounds, `max_rooms_per_session`); a refused join is answered
    /// with the same error message. For the rooms an event stream names.
    /// `rooms.join` and `on_join` decide as for a `join` message.
    fn join_room(&mut self, index: usize, room: &str, grants: Option<&Grants>) {
        let Some(session) = self.conns.sessions.get(index) else {
            return;
        };
        let (key, peer, client) = (session.key, session.peer(), session.client);
        let user = session.user().cloned();
        let refused = |reason: &str| message::error_json(reason);
        let max = self.setup.config.websocket.max_id_bytes;
        if let Err(e) = ids::check_fields([("room", Some(room))], max) {
            return self.delivery().reply(index, &refused(&e.to_string()));
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
        match self.hub.router.join(key, user.as_deref(), room) {
            Ok(change) => {
                self.delivery()
                    .member_changed(key, user.as_deref(), room, true, change, false)
            }
            Err(JoinError::TooManyRooms) => {
                self.delivery().reply(index, &refused("too many rooms"))
            }
        }
    }

    fn on_inbound(&mut self, index: usize, inbound: Inbound<'_>) {
        match inbound {
            Inbound::Text(payload) => self.on_plain(index, Kind::Text, payload.bytes()),
            Inbound::Binary(payload) => self.on_plain(index, Kind::Binary, payload.bytes()),
            Inbound::Ping(data) => {
                let pong = frame::encode(Kind::Pong, data);
                if let Some(session) = self.conns.sessions.get_mut(index) {
                    session.queue_pong(pong);
                    self.conns.mark_dirty(index);
                }
            }
            Inbound::Pong => {}
            Inbound::Close(close) => self.peer_closed(index, close),
            Inbound::Compressed { text, payload } => {
                self.on_compressed(index, text, payload.bytes())
            }
        }
    }

    /// An uncompressed data message: counted by the rate limits, then
    /// handled. The one lookup of its session on the way to the router.
    fn on_plain(&mut self, index: usize, kind: Kind, bytes: &[u8]) {
        self.metrics.messages_in += 1;
        let (limits, now) = (self.setup.rate_limits(), self.clock.now_ms);
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let refused = match rate_admit(session, limits, now, bytes.len()) {
            rate::Verdict::Allow(_) if rate_spend(session, limits, bytes.len()) => None,
            rate::Verdict::Allow(_) => Some(OverRate::Bytes),
            rate::Verdict::Drop => Some(OverRate::Messages),
            rate::Verdict::Close => Some(OverRate::Flood),
        };
        if let Some(over) = refused {
            return self.over_rate(index, over);
        }
        let sender = Sender::of(index, session);
        self.on_data(&sender, kind, bytes);
    }

    /// A permessage-deflate message takes its rate-limit token first, then
    /// inflates within `max_message_size` and the bytes its session has
    /// left (both checked while inflating), and is handled like a plain one.
    fn on_compressed(&mut self, index: usize, text: bool, compressed: &[u8]) {
        self.metrics.messages_in += 1;
        let (limits, now) = (self.setup.rate_limits(), self.clock.now_ms);
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let allowed = match rate_admit(session, limits, now, compressed.len()) {
            rate::Verdict::Allow(bytes) => bytes,
            rate::Verdict::Drop => return self.over_rate(index, OverRate::Messages),
            rate::Verdict::Close => return self.over_rate(index, OverRate::Flood),
        };
        let max = self.setup.rules.max_message_size;
        let limit = max.min(allowed);
        let inflated = match session.inflate(&mut self.hub.codec, text, compressed, limit) {
            Ok(bytes) => bytes,
            // Past the bytes left, not past the size limit: over the rate.
            Err(DecodeError::TooBig) if limit < max => {
                if !rate_spend(session, limits, limit.saturating_add(1)) {
                    self.over_rate(index, OverRate::Bytes);
                }
                return;
            }
            Err(error) => return self.protocol_close(index, &error),
        };
        if !rate_spend(session, limits, inflated.len()) {
            return self.over_rate(index, OverRate::Bytes);
        }
        let sender = Sender::of(index, session);
        let kind = if text { Kind::Text } else { Kind::Binary };
        self.on_data(&sender, kind, &inflated);
    }

    /// A message over the session's rate: dropped with an error reply, or
    /// the session closed for flooding.
    fn over_rate(&mut self, index: usize, over: OverRate) {
        if over == OverRate::Flood {
            return self.rate_limit_close(index);
        }
        self.metrics.rate_limited_messages += 1;
        if over == OverRate::Bytes {
            self.metrics.byte_limited_messages += 1;
        }
        self.delivery()
            .reply(index, &message::error_json("rate limit exceeded"));
    }

    /// A data message within the limits: echoed, routed, or refused.
    fn on_data(&mut self, sender: &Sender, kind: Kind, bytes: &[u8]) {
        match kind {
            _ if sender.echo => self.delivery().queue_message(sender.index, kind, bytes),
            Kind::Text => self.on_chat_message(sender, bytes),
            _ => self.delivery().reply(
                sender.index,
                &message::error_json("binary messages are not supported"),
            ),
        }
    }

    fn on_chat_message(&mut self, sender: &Sender, bytes: &[u8]) {
        let max_depth = self.setup.config.websocket.max_json_depth;
        let Sender {
            index,
            key,
            peer,
            client,
            ref user,
            ..
        } = *sender;
        let message = match message::parse_limited(bytes, max_depth) {
            Ok(message) => message,
            Err(e) => {
                return self
                    .delivery()
                    .reply(index, &message::error_json(&e.to_string()))
            }
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
        match self.hub.router.route(key, user.as_deref(), &message) {
            Route::Reply(json) => self.delivery().reply(index, &json),
            Route::Done(change) => {
                if let Some(room) = message.room() {
                    let joined = message.kind == "join";
                    self.delivery().member_changed(
                        key,
                        user.as_deref(),
                        room,
                        joined,
                        change,
                        true,
                    );
                }
                if let ("join", Some(room)) = (&*message.kind, message.room()) {
                    self.delivery().joined(index, room, message.since);
                }
            }
            Route::Deliver(audience, json) => {
                let min_bytes = self.setup.compression_min_bytes();
                if self.hub.remote.is_some() {
                    self.delivery().relay_kept(index, audience, &json);
                } else {
                    self.delivery()
                        .deliver(audience, &mut Encoded::new(Kind::Text, &json, min_bytes));
                    self.delivery().relay_to_cluster(index, audience, &json);
                }
            }
        }
        self.apply_actions();
    }
}

/// Who sent a data message: read from its session once, on the way in.
struct Sender {
    index: usize,
    key: SessionKey,
    peer: SocketAddr,
    client: IpAddr,
    user: Option<Rc<str>>,
    /// An echo session: the message goes back as it came.
    echo: bool,
}

impl Sender {
    fn of(index: usize, session: &Session) -> Sender {
        Sender {
            index,
            key: session.key,
            peer: session.peer(),
            client: session.client,
            user: session.user().cloned(),
            echo: matches!(session.phase(), Phase::Echo),
        }
    }
}

/// Why a data message was refused by the rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OverRate {
    /// Over `max_messages_per_second`: dropped.
    Messages,
    /// Over `max_bytes_per_second`: dropped.
    Bytes,
    /// Flooding for 5 s: the session closes (1008).
    Flood,
}

/// The session's bucket admits one data message of `wire` bytes as
/// received: `Allow(bytes it may inflate to)`. Without limits no bucket is
/// made and everything is allowed.
fn rate_admit(session: &mut Session, limits: rate::Limits, now: u64, wire: usize) -> rate::Verdict {
    if limits.is_off() {
        return rate::Verdict::Allow(usize::MAX);
    }
    let bucket = session
        .rate
        .get_or_insert_with(|| Box::new(Bucket::new(now)));
    bucket.admit(now, limits, wire)
}

/// Charges an admitted message's (inflated) size; `false`: over
/// `max_bytes_per_second`.
fn rate_spend(session: &mut Session, limits: rate::Limits, bytes: usize) -> bool {
    session
        .rate
        .as_mut()
        .is_none_or(|bucket| bucket.spend(limits, bytes))
}
