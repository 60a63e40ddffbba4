//! Resuming, with history on: a session that connected with `?recover=1`
//! or `?since=` gets its `welcome` before any message, then per stream the
//! messages it missed (the stored frames, in stream order) and one
//! `recovered`; a recovering session's `join` gets the room's position,
//! and with `since` the room's missed messages and its `recovered`.
//!
//! All of it is queued in the pass that upgrades or joins, before any
//! later delivery can reach the session, so the replay meets live traffic
//! with nothing lost or repeated. A stream is replayed whole or not at all
//! (`ok:false`): when the history cannot vouch for it, or when the whole
//! replay would not fit the session's queue bounds.

use serde_json::value::RawValue;

use super::deliver::Delivery;
use crate::history::position::{self, Kind, Outcome, Position, Since};
use crate::history::StreamRef;

impl Delivery<'_> {
    /// After a chat upgrade that asked to recover: welcome, replay,
    /// `recovered` (only when `since` named a stream).
    pub(super) fn resume_session(&mut self, index: usize, user: Option<&str>, since: Since) {
        if self.hub.remote.is_some() {
            return self.resume_remote(index, user, since);
        }
        let now = self.now_ms;
        let Some(history) = self.hub.history.as_mut() else {
            return;
        };
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        session.set_recovering();
        let all = history.position(StreamRef::All, now);
        let own = user.map(|u| history.position(StreamRef::User(u), now));
        self.reply(index, &position::welcome_json(&all, own.as_deref()));
        if since.is_empty() {
            return;
        }
        let all = since
            .all
            .map(|p| self.replay_stream(index, StreamRef::All, Some(&p)));
        let own = since.user.map(|p| {
            // An anonymous session has no user stream of its own.
            let stream = user.map(StreamRef::User);
            match stream {
                Some(stream) => self.replay_stream(index, stream, Some(&p)),
                None => self.replay_stream(index, StreamRef::All, None),
            }
        });
        self.reply(index, &position::recovered_json(all, own));
    }

    /// After a join passed: a recovering session learns its position in
    /// the room, and with `since` gets what it missed there. Sessions that
    /// did not ask to recover see nothing new.
    pub(super) fn joined(&mut self, index: usize, room: &str, since: Option<&RawValue>) {
        if self.hub.remote.is_some() {
            return self.joined_remote(index, room, since);
        }
        let now = self.now_ms;
        let Some(history) = self.hub.history.as_mut() else {
            return;
        };
        if !self
            .conns
            .sessions
            .get(index)
            .is_some_and(|s| s.recovering())
        {
            return;
        }
        let current = history.position(StreamRef::Room(room), now);
        self.reply(index, &position::room_welcome_json(room, &current));
        let Some(since) = since else {
            return;
        };
        // Not a string, not a position, or not a room's: nothing replayed.
        let position = serde_json::from_str::<String>(since.get())
            .ok()
            .and_then(|text| Position::parse(&text).ok())
            .filter(|p| p.kind == Kind::Room);
        let outcome = self.replay_stream(index, StreamRef::Room(room), position.as_ref());
        self.reply(index, &position::room_recovered_json(room, outcome));
    }

    /// Queues every message of `stream` after `since` to the session, all
    /// or none; counts the outcome. `since` `None`: not this session's
    /// position (fails).
    fn replay_stream(
        &mut self,
        index: usize,
        stream: StreamRef<'_>,
        since: Option<&Position>,
    ) -> Outcome {
        let now = self.now_ms;
        let Some(history) = self.hub.history.as_mut() else {
            return Outcome::FAILED;
        };
        let frames = since.and_then(|p| history.replay(stream, p, now));
        let outcome = match (frames, self.conns.sessions.get_mut(index)) {
            (Some(frames), Some(session)) => {
                let bytes = frames.iter().map(|f| f.len()).sum();
                // One more for the `recovered` that follows.
                if session.has_room(frames.len() + 1, bytes, &self.setup.rules) {
                    let replayed = frames.len();
                    for frame in frames {
                        // Room was checked for all of them together.
                        let _ =
                            session.queue(frame, &self.setup.rules, &mut self.metrics.bytes_out);
                    }
                    self.metrics.messages_out += replayed as u64;
                    Outcome { ok: true, replayed }
                } else {
                    Outcome::FAILED
                }
            }
            _ => Outcome::FAILED,
        };
        history.count(outcome);
        outcome
    }
}
