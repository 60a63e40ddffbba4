//! Event streams with history on (README "Server-Sent Events"): every
//! message kept in history gets a mark (`sse::marks`) whose token its event
//! carries as `id:`, one token per fan-out; a stream opened with
//! `Last-Event-ID` (or `?last_event_id=`) gets, per stream of its own
//! (everyone, its user, its rooms), what it missed, after one
//! `event: reset` naming the streams that cannot be replayed whole; then
//! the current token, so a cut before the next message still resumes.
//! All of it is queued in the pass that opens the stream, before any later
//! delivery can reach it.

use super::EventLoop;
use crate::frame::Wire;
use crate::history::position::{Outcome, Position};
use crate::history::StreamRef;
use crate::sse::marks::Since;
use crate::sse::{self};

impl EventLoop {
    /// A stream just opened (its rooms joined): with history on, resume
    /// from `last_event_id` if given, then hand out the current token.
    pub(super) fn open_stream(&mut self, index: usize, last_event_id: Option<&str>) {
        if self.hub.remote.is_some() {
            return self.open_stream_remote(index, last_event_id);
        }
        let Some(marks) = self.hub.sse_marks.as_ref() else {
            return;
        };
        let current = marks.current();
        if let Some(token) = last_event_id {
            self.resume_stream(index, token);
        }
        self.queue_event(index, sse::id_only(&current));
    }

    /// Replays what the stream's client missed since `token`, all of a
    /// stream or none of it; names the others in one `event: reset`.
    fn resume_stream(&mut self, index: usize, token: &str) {
        let now = self.clock.now_ms;
        let (Some(marks), Some(history), Some(session)) = (
            self.hub.sse_marks.as_ref(),
            self.hub.history.as_mut(),
            self.conns.sessions.get(index),
        ) else {
            return;
        };
        let seq = marks.parse(token);
        let user = session.user().cloned();
        let mut streams = vec![('a', None)];
        if let Some(user) = &user {
            streams.push(('u', Some(user.clone())));
        }
        let key = session.key;
        for room in self.hub.router.rooms_of(key) {
            streams.push(('r', Some(room.clone())));
        }
        let mut replay: Vec<Wire> = Vec::new();
        let mut bytes = 0;
        let mut lost: Vec<String> = Vec::new();
        for (kind, name) in streams {
            let name = name.as_deref();
            let since = seq.map_or(Since::Lost, |seq| marks.since(seq, kind, name));
            let frames = match since {
                Since::Nothing => Some(Vec::new()),
                Since::After(position) => {
                    let stream = match (kind, name) {
                        ('u', Some(user)) => StreamRef::User(user),
                        ('r', Some(room)) => StreamRef::Room(room),
                        _ => StreamRef::All,
                    };
                    Position::parse(&position)
                        .ok()
                        .and_then(|p| history.replay(stream, &p, now))
                }
                Since::Lost => None,
            };
            let events: Option<Vec<Wire>> = frames.and_then(|frames| {
                frames
                    .iter()
                    .map(|f| sse::frame_payload(f).map(sse::event))
                    .collect()
            });
            let fits = |events: &[Wire]| {
                let more: usize = events.iter().map(|e| e.len()).sum();
                session_fits(
                    self.conns.sessions.get(index),
                    replay.len() + events.len() + 2,
                    bytes + more,
                    &self.setup.rules,
                )
            };
            match events {
                Some(events) if fits(&events) => {
                    history.count(Outcome {
                        ok: true,
                        replayed: events.len(),
                    });
                    bytes += events.iter().map(|e| e.len()).sum::<usize>();
                    replay.extend(events);
                }
                _ => {
                    history.count(Outcome::FAILED);
                    lost.push(match (kind, name) {
                        ('r', Some(room)) => format!("r:{room}"),
                        _ => kind.to_string(),
                    });
                }
            }
        }
        if !lost.is_empty() {
            let json = serde_json::json!({ "streams": lost }).to_string();
            self.queue_event(index, sse::named_event("reset", json.as_bytes()));
        }
        let replayed = replay.len();
        for event in replay {
            self.queue_event(index, event);
        }
        self.metrics.messages_out += replayed as u64;
    }

    /// Queues one event (checked to fit beforehand, or a small one).
    pub(super) fn queue_event(&mut self, index: usize, event: Wire) {
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        let key = session.key;
        if session
            .queue(event, &self.setup.rules, &mut self.metrics.bytes_out)
            .is_err()
        {
            self.slow_consumer(key);
        }
        self.conns.mark_dirty(index);
    }
}

/// Whether `count` more events of `bytes` fit the session's queue bounds.
fn session_fits(
    session: Option<&crate::session::Session>,
    count: usize,
    bytes: usize,
    rules: &crate::session::Rules,
) -> bool {
    session.is_some_and(|s| s.has_room(count, bytes, rules))
}
