//! Event streams with history on (README "Server-Sent Events"): every
//! message kept in history gets a mark (`sse::marks`) whose token its event
//! carries as `id:`, one token per fan-out; a stream opened with
//! `Last-Event-ID` (or `?last_event_id=`) gets, per stream of its own
//! (everyone, its user, its rooms), what it missed, after one
//! `event: reset` naming the streams that cannot be replayed whole; then
//! the current token, so a cut before the next message still resumes.
//! All of it is queued in the pass that opens the stream, before any later
//! delivery can reach it.

use super::connections::Ending;
use super::deliver::Delivery;
use crate::frame::Wire;
use crate::history::position::{Outcome, Position};
use crate::history::StreamRef;
use crate::outbound::Overflow;
use crate::session::{Rules, Session};
use crate::sse::marks::Since;
use crate::sse::{self};

impl Delivery<'_> {
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
        let now = self.now_ms;
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
        let mut replay = Replay::default();
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
            let session = self.conns.sessions.get(index);
            history.count(replay.offer(session, &self.setup.rules, events, || {
                match (kind, name) {
                    ('r', Some(room)) => format!("r:{room}"),
                    _ => kind.to_string(),
                }
            }));
        }
        self.queue_replay(index, replay);
    }

    /// Queues a resume's `event: reset` (if a stream was lost), then its
    /// replayed events.
    pub(super) fn queue_replay(&mut self, index: usize, replay: Replay) {
        if !replay.lost.is_empty() {
            let json = serde_json::json!({ "streams": replay.lost }).to_string();
            self.queue_event(index, sse::named_event("reset", json.as_bytes()));
        }
        self.metrics.messages_out += replay.events.len() as u64;
        for event in replay.events {
            self.queue_event(index, event);
        }
    }

    /// Queues one event (checked to fit beforehand, or a small one).
    pub(super) fn queue_event(&mut self, index: usize, event: Wire) {
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        match session.queue(event, &self.setup.rules, &mut self.metrics.bytes_out) {
            Ok(()) | Err(Overflow::Ending) => {}
            Err(_) => self.conns.end(index, Ending::SlowConsumer),
        }
        self.conns.mark_dirty(index);
    }
}

/// A stream's resume being put together (on one node or from Redis): per
/// stream, its whole replay when it fits the session's queue bounds with
/// what came before, or nothing and its name in `lost`.
#[derive(Default)]
pub(super) struct Replay {
    events: Vec<Wire>,
    bytes: usize,
    lost: Vec<String>,
}

impl Replay {
    /// Offers one stream's events (`None`: they cannot be vouched for);
    /// returns the outcome to count.
    pub(super) fn offer(
        &mut self,
        session: Option<&Session>,
        rules: &Rules,
        events: Option<Vec<Wire>>,
        name: impl FnOnce() -> String,
    ) -> Outcome {
        let fits = |events: &[Wire]| {
            let more: usize = events.iter().map(|e| e.len()).sum();
            // Two more: the `reset` and the `id:` line that follow.
            session.is_some_and(|s| {
                s.has_room(
                    self.events.len() + events.len() + 2,
                    self.bytes + more,
                    rules,
                )
            })
        };
        match events {
            Some(events) if fits(&events) => {
                self.bytes += events.iter().map(|e| e.len()).sum::<usize>();
                let replayed = events.len();
                self.events.extend(events);
                Outcome { ok: true, replayed }
            }
            _ => {
                self.lost.push(name());
                Outcome::FAILED
            }
        }
    }
}
