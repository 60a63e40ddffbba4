//! Reading: drains a ready socket into the loop's shared buffer (or the
//! session's unfinished input), then turns complete units into actions:
//! HTTP requests go to `rest`, WebSocket frames to the router or the echo.
//! A short read ends the drain; an unfinished unit is kept per session.

use std::io;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, info};

use super::{EventLoop, READ_CHUNK};
use crate::deflate::{Encoded, InflateError};
use crate::frame::{self, DecodeError, Inbound, Kind, Payload, Step, Wire};
use crate::hooks::{CloseReason, SessionInfo, Verdict};
use crate::http::{self, HttpError, Response};
use crate::ids;
use crate::message;
use crate::metrics::HandshakeFailure;
use crate::rate::{self, Bucket};
use crate::rest::{self, Endpoint, Outcome, Upgrade};
use crate::router::Route;
use crate::session::{Phase, ReadOutcome};

impl EventLoop {
    pub(super) fn on_session_event(&mut self, index: usize, event: &mio::event::Event) {
        if !self.sessions.contains(index) {
            return;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.on_readable(index, event.is_read_closed() || event.is_error());
        }
        if event.is_writable() {
            self.schedule_write(index);
        }
    }

    /// Reads until the socket is drained. `peer_closed`: the event also
    /// reported the peer's FIN (or an error), which must be read to the end
    /// because no further edge will announce it.
    pub(super) fn on_readable(&mut self, index: usize, peer_closed: bool) {
        loop {
            let Some(session) = self.sessions.get_mut(index) else {
                return;
            };
            if matches!(session.phase, Phase::Dead) || session.paused {
                return;
            }
            let drain = session.transport.reads_to_block();
            let (outcome, full) = if session.pending_input.is_empty() {
                self.read_fresh(index)
            } else {
                self.read_more(index)
            };
            if self
                .sessions
                .get(index)
                .is_some_and(|s| s.transport.has_pending())
            {
                // TLS handshake records (or an alert) are waiting for the socket.
                self.mark_dirty(index);
            }
            let full = full || drain;
            match outcome {
                // A short read drained the socket: with edge-triggered epoll,
                // any byte that arrives later raises a new event, so the
                // extra read that would only return WouldBlock is skipped,
                // unless a FIN already came with this event.
                Ok(ReadOutcome::Data(_)) if full || peer_closed => continue,
                Ok(ReadOutcome::Data(_)) | Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => return self.on_eof(index),
                Err(e) => return self.kill(index, CloseReason::Io(e.to_string())),
            }
        }
    }

    /// Reads into the loop's shared buffer; keeps only an unfinished rest.
    pub(super) fn read_fresh(&mut self, index: usize) -> (io::Result<ReadOutcome>, bool) {
        let mut buf = std::mem::take(&mut self.read_buf);
        let Some(session) = self.sessions.get_mut(index) else {
            self.read_buf = buf;
            return (Ok(ReadOutcome::WouldBlock), false);
        };
        let outcome = session.read_into(&mut buf);
        let mut full = false;
        if let Ok(ReadOutcome::Data(n)) = outcome {
            full = n == buf.len();
            self.saw_input(n);
            let consumed = self.process(index, &mut buf[..n]);
            if let Some(session) = self.sessions.get_mut(index) {
                session.keep_input(&buf[consumed..n]);
            }
        }
        self.read_buf = buf;
        (outcome, full)
    }

    /// Appends to the session's unfinished input (a large frame or request
    /// arriving in pieces is read in place, never copied back and forth).
    pub(super) fn read_more(&mut self, index: usize) -> (io::Result<ReadOutcome>, bool) {
        let Some(session) = self.sessions.get_mut(index) else {
            return (Ok(ReadOutcome::WouldBlock), false);
        };
        let before = session.pending_input.len();
        let (outcome, requested) = session.read_pending(READ_CHUNK);
        let mut full = false;
        if let Ok(ReadOutcome::Data(n)) = outcome {
            full = n == requested;
            let mut buf = std::mem::take(&mut session.pending_input);
            debug_assert_eq!(buf.len(), before + n);
            self.saw_input(n);
            let consumed = self.process(index, &mut buf);
            if let Some(session) = self.sessions.get_mut(index) {
                buf.drain(..consumed);
                if buf.is_empty() {
                    session.keep_input(&[]);
                } else {
                    session.pending_input = buf;
                }
            }
        }
        (outcome, full)
    }

    /// Counts bytes read. Liveness is not refreshed here: only whole
    /// frames count (see `process_frame`), so a peer trickling the bytes of
    /// a frame that never completes still meets `pong_wait`.
    pub(super) fn saw_input(&mut self, n: usize) {
        self.metrics.bytes_in += n as u64;
    }

    /// Continues a session whose reading was paused, once the client has
    /// taken its responses: first the requests already read, then the socket
    /// (to its end: the edge that announced those bytes has passed).
    pub(super) fn resume_reading(&mut self, index: usize) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        if session.paused || !matches!(session.phase, Phase::Http) {
            return;
        }
        let mut buf = std::mem::take(&mut session.pending_input);
        if !buf.is_empty() {
            let consumed = self.process(index, &mut buf);
            let Some(session) = self.sessions.get_mut(index) else {
                return;
            };
            buf.drain(..consumed);
            if buf.is_empty() {
                session.keep_input(&[]);
            } else {
                session.pending_input = buf;
            }
        }
        self.on_readable(index, true);
    }

    /// Acts on every complete unit at the start of `buf`; returns the bytes
    /// consumed (the rest is an unfinished unit).
    pub(super) fn process(&mut self, index: usize, buf: &mut [u8]) -> usize {
        let mut at = 0;
        while at < buf.len() {
            let Some(session) = self.sessions.get(index) else {
                return buf.len();
            };
            let step = match &session.phase {
                Phase::Http
                    if session.out.owed_bytes() > self.config.websocket.max_buffered_bytes =>
                {
                    // Responses are bounded like messages: read no further
                    // request until the client has taken what it is owed.
                    self.pause(index);
                    return at;
                }
                Phase::Http => self.process_http(index, &mut buf[at..]),
                Phase::Chat { .. } | Phase::Echo => self.process_frame(index, &mut buf[at..]),
                Phase::Closing(c) if c.await_close_frame => {
                    self.process_closing_frame(index, &mut buf[at..])
                }
                Phase::Closing(_) | Phase::Dead => return buf.len(),
            };
            match step {
                Some(consumed) => at += consumed,
                None => return at,
            }
        }
        at
    }

    pub(super) fn process_http(&mut self, index: usize, buf: &mut [u8]) -> Option<usize> {
        let ws = &self.config.websocket;
        let (max_head, max_body) = (ws.max_header_bytes, ws.max_message_size);
        let session = self.sessions.get_mut(index)?;
        if buf.len() < session.input_needed {
            // A body still arriving: the head was parsed already.
            return None;
        }
        let Some(head_end) = http::find_head_end(buf, session.head_scanned) else {
            if buf.len() > max_head {
                self.http_error(index, &HttpError::HeadTooLarge);
                return Some(buf.len());
            }
            session.head_scanned = buf.len();
            return None;
        };
        let request = match http::parse_complete_head(&buf[..head_end], max_head, max_body) {
            Ok(request) => request,
            Err(e) => {
                self.http_error(index, &e);
                return Some(buf.len());
            }
        };
        let total = request.head_len + request.content_length;
        if buf.len() < total {
            session.head_scanned = 0;
            session.input_needed = total;
            return None;
        }
        session.head_scanned = 0;
        session.input_needed = 0;
        self.on_request(index, &request, &buf[request.head_len..total]);
        Some(total)
    }

    pub(super) fn http_error(&mut self, index: usize, error: &HttpError) {
        if matches!(error, HttpError::HeadTooLarge | HttpError::BodyTooLarge) {
            self.metrics.handshake_failed(HandshakeFailure::TooLarge);
        }
        debug!("session {index}: {error}");
        let response = Response::error(error.status(), &error.to_string()).closing();
        self.respond(index, &response, false);
    }

    pub(super) fn on_request(&mut self, index: usize, request: &http::Request, body: &[u8]) {
        self.metrics.http_requests += 1;
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ctx = rest::Context {
            config: &self.config,
            mode: self.mode,
            router: &self.router,
            open_websockets: self.open_websockets,
            now_unix,
            cluster: self
                .cluster
                .as_ref()
                .map(|link| rest::ClusterState { view: link.view() }),
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
                        request.path, session.peer, response.status
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
                let response = Response::raw(200, "text/plain; version=0.0.4", text.into_bytes());
                self.respond(index, &response, keep_alive);
            }
            Outcome::Push { target, json } => {
                let response = self.rest_push(&target, &json);
                self.respond(index, &response, keep_alive);
            }
            Outcome::Upgrade(upgrade) => self.upgrade(index, upgrade),
        }
    }

    pub(super) fn respond(&mut self, index: usize, response: &Response, keep_alive: bool) {
        let keep = keep_alive && !response.close;
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        // Bounded by the reading side: see the pause in `process`.
        session
            .out
            .push_unbounded(Rc::from(response.to_bytes(keep)));
        // The next request's deadline runs from the end of this response.
        session.last_seen_ms = self.now_ms;
        self.mark_dirty(index);
        if !keep {
            self.begin_closing(index, false);
        }
    }

    pub(super) fn upgrade(&mut self, index: usize, upgrade: Upgrade) {
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let key = session.key;
        let peer = session.peer;
        let info = SessionInfo {
            key,
            user: upgrade.user.as_deref(),
            peer,
        };
        if upgrade.endpoint == Endpoint::Chat {
            if let Err(reason) = self.hooks.on_connect(&info, &mut self.actions) {
                self.metrics.handshake_failed(HandshakeFailure::Hook);
                let response = Response::error(403, &reason).closing();
                return self.respond(index, &response, false);
            }
        }
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        session.out.push_response(Rc::from(upgrade.response));
        if let Some(params) = upgrade.compression {
            session.deflate = Some(params);
            session.decoder.allow_compression();
        }
        if std::mem::take(&mut session.counted_http) {
            self.http_connections -= 1;
        }
        let user: Option<Rc<str>> = upgrade.user.as_deref().map(Rc::from);
        session.phase = match upgrade.endpoint {
            Endpoint::Chat => Phase::Chat { user: user.clone() },
            Endpoint::Echo => Phase::Echo,
        };
        session.last_seen_ms = self.now_ms;
        let ws = &self.config.websocket;
        let ping_period = ws.ping_period.as_millis() as u64;
        session.next_ping_ms = self.now_ms + ping_period - ping_jitter(key, ping_period);
        self.open_websockets += 1;
        self.metrics.connections_total += 1;
        match upgrade.endpoint {
            Endpoint::Chat => {
                self.router.add_session(key, user.as_ref());
                self.metrics.open_chat += 1;
                if let Some(link) = self.cluster.as_mut() {
                    link.connected(user.as_deref());
                }
                self.publish_online();
                info!(
                    "connect user={} peer={peer} online={}",
                    ids::shown(user.as_deref()),
                    self.router.online_count()
                );
            }
            Endpoint::Echo => self.metrics.open_echo += 1,
        }
        self.mark_dirty(index);
        self.rearm_open(index);
        self.apply_actions();
    }

    pub(super) fn process_frame(&mut self, index: usize, buf: &mut [u8]) -> Option<usize> {
        let max = self.config.websocket.max_message_size;
        let session = self.sessions.get_mut(index)?;
        match session.decoder.decode(buf, max) {
            Err(e) => {
                self.protocol_close(index, &e);
                Some(buf.len())
            }
            Ok(Step::Incomplete { needed }) => {
                session.input_needed = needed.unwrap_or(0);
                None
            }
            Ok(Step::Frame { consumed, inbound }) => {
                session.input_needed = 0;
                session.last_seen_ms = self.now_ms;
                if let Some(inbound) = inbound {
                    self.on_inbound(index, inbound);
                }
                Some(consumed)
            }
        }
    }

    pub(super) fn process_closing_frame(&mut self, index: usize, buf: &mut [u8]) -> Option<usize> {
        let max = self.config.websocket.max_message_size;
        let session = self.sessions.get_mut(index)?;
        match session.decoder.decode(buf, max) {
            Err(_) => {
                self.kill(index, CloseReason::Protocol(1002));
                Some(buf.len())
            }
            Ok(Step::Incomplete { needed }) => {
                session.input_needed = needed.unwrap_or(0);
                None
            }
            Ok(Step::Frame { consumed, inbound }) => {
                if let (Some(Inbound::Close(_)), Phase::Closing(closing)) =
                    (inbound, &mut session.phase)
                {
                    closing.await_close_frame = false;
                    self.mark_dirty(index);
                }
                Some(consumed)
            }
        }
    }

    pub(super) fn on_inbound(&mut self, index: usize, inbound: Inbound<'_>) {
        let echo = matches!(
            self.sessions.get(index).map(|s| &s.phase),
            Some(Phase::Echo)
        );
        match inbound {
            Inbound::Text(payload) if echo => self.echo(index, Kind::Text, payload.bytes()),
            Inbound::Binary(payload) if echo => self.echo(index, Kind::Binary, payload.bytes()),
            Inbound::Text(payload) => self.on_chat_message(index, payload.bytes()),
            Inbound::Binary(_) => {
                self.metrics.messages_in += 1;
                self.reply(
                    index,
                    &message::error_json("binary messages are not supported"),
                );
            }
            Inbound::Ping(data) => {
                let pong = frame::encode(Kind::Pong, data);
                if let Some(session) = self.sessions.get_mut(index) {
                    session.out.push_control(pong);
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

    /// Inflates a permessage-deflate message within `max_message_size`
    /// (checked while inflating), then handles it like a plain one.
    pub(super) fn on_compressed(&mut self, index: usize, text: bool, compressed: &[u8]) {
        let max = self.config.websocket.max_message_size;
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let Some(params) = session.deflate else {
            let error = DecodeError::Protocol("compressed message without the extension");
            return self.protocol_close(index, &error);
        };
        let inflated = match self
            .codec
            .inflate(&params, &mut session.history, compressed, max)
        {
            Ok(bytes) => bytes,
            Err(InflateError::TooBig) => return self.protocol_close(index, &DecodeError::TooBig),
            Err(InflateError::Corrupt(_)) => {
                return self.protocol_close(index, &DecodeError::BadCompression)
            }
        };
        if text && std::str::from_utf8(&inflated).is_err() {
            return self.protocol_close(index, &DecodeError::InvalidUtf8);
        }
        let payload = Payload::Owned(inflated);
        self.on_inbound(
            index,
            if text {
                Inbound::Text(payload)
            } else {
                Inbound::Binary(payload)
            },
        );
    }

    pub(super) fn echo(&mut self, index: usize, kind: Kind, payload: &[u8]) {
        self.metrics.messages_in += 1;
        self.queue_message(index, kind, payload);
    }

    pub(super) fn on_chat_message(&mut self, index: usize, bytes: &[u8]) {
        self.metrics.messages_in += 1;
        let ws = &self.config.websocket;
        let (rate, max_depth) = (ws.max_messages_per_second, ws.max_json_depth);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        if rate > 0 {
            let now = self.now_ms;
            let bucket = self.rates.entry(index).or_insert_with(|| Bucket::new(now));
            match bucket.take(now, rate) {
                rate::Verdict::Allow => {}
                rate::Verdict::Drop => {
                    self.metrics.rate_limited_messages += 1;
                    return self.reply(index, &message::error_json("rate limit exceeded"));
                }
                rate::Verdict::Close => return self.rate_limit_close(index),
            }
        }
        let key = session.key;
        let peer = session.peer;
        let user = session.user().cloned();
        let message = match message::parse_limited(bytes, max_depth) {
            Ok(message) => message,
            Err(e) => return self.reply(index, &message::error_json(&e.to_string())),
        };
        let info = SessionInfo {
            key,
            user: user.as_deref(),
            peer,
        };
        if self.hooks.on_message(&info, &message, &mut self.actions) == Verdict::Consume {
            return self.apply_actions();
        }
        match self.router.route(key, user.as_deref(), &message) {
            Route::Reply(json) => self.reply(index, &json),
            Route::Done => {
                if let (Some(link), Some(room)) = (self.cluster.as_mut(), message.room()) {
                    if self.router.is_member(key, room) {
                        link.joined_room(room);
                    } else {
                        link.departed();
                    }
                }
            }
            Route::Deliver(audience, json) => {
                let min_bytes = self.config.websocket.compression_min_bytes;
                self.deliver(audience, &mut Encoded::new(Kind::Text, &json, min_bytes));
                self.relay_to_cluster(index, audience, &json);
            }
        }
        self.apply_actions();
    }

    pub(super) fn reply(&mut self, index: usize, json: &[u8]) {
        self.queue_message(index, Kind::Text, json);
    }

    /// Frames a message for one session (compressed if it negotiated that
    /// and the message is large enough) and queues it.
    pub(super) fn queue_message(&mut self, index: usize, kind: Kind, payload: &[u8]) {
        let min_bytes = self.config.websocket.compression_min_bytes;
        let Some(session) = self.sessions.get(index) else {
            return;
        };
        let wire = Encoded::new(kind, payload, min_bytes)
            .for_session(session.deflate_params(), &mut self.codec);
        self.queue_data(index, wire);
    }

    /// Queues one data frame to one session, closing it if it cannot keep up.
    pub(super) fn queue_data(&mut self, index: usize, wire: Wire) {
        let ws = &self.config.websocket;
        let (max_messages, max_bytes) = (ws.message_buffer_size, ws.max_buffered_bytes);
        let Some(session) = self.sessions.get_mut(index) else {
            return;
        };
        let key = session.key;
        match session.queue(wire, max_messages, max_bytes, &mut self.metrics.bytes_out) {
            Ok(()) => {
                self.metrics.messages_out += 1;
                self.mark_dirty(index);
            }
            Err(_) => self.slow_consumer(key),
        }
    }
}

/// Up to a tenth of the ping period, fixed per session: sessions that
/// connected in the same instant (a reconnect wave after a restart) do not
/// all get their Pings in the same loop pass, period after period.
fn ping_jitter(key: crate::audience::SessionKey, ping_period: u64) -> u64 {
    let spread = ping_period / 10;
    if spread == 0 {
        return 0;
    }
    // Fibonacci hashing (high bits) scatters consecutive generations.
    (u64::from(key.generation).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % spread
}

#[cfg(test)]
mod tests {
    use super::ping_jitter;
    use crate::audience::SessionKey;

    #[test]
    fn ping_jitter_stays_within_a_tenth_and_spreads_consecutive_sessions() {
        let key = |generation| SessionKey {
            index: 0,
            generation,
        };
        let period = 54_000;
        let jitters: Vec<u64> = (1..=1000).map(|g| ping_jitter(key(g), period)).collect();
        assert!(jitters.iter().all(|j| *j < period / 10));
        let mut distinct = jitters.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() > 900,
            "only {} distinct offsets",
            distinct.len()
        );
        assert_eq!(
            ping_jitter(key(7), 5),
            0,
            "periods under 10 ms get no jitter"
        );
    }
}
