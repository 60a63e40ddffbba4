//! Event streams with history in a cluster (docs/sse.md):
//! an event's `id:` is the cluster's counter at that message
//! (`<epoch>-<number>`, assigned in Redis with its position and the same on
//! every node, so still one event per fan-out), and a stream that opens
//! with `Last-Event-ID` on any node reads, in one script, every message of
//! its streams (everyone, its user, its rooms) appended after that number.
//!
//! The read goes through the same path as a WebSocket resume
//! (`remote.rs`): while it waits, no live message with a position of the
//! stream's streams reaches it, and the answer arrives exactly after every
//! message the read covers, so the replay meets live traffic with nothing
//! lost or repeated. Then, as on one node: one `event: reset` naming the
//! streams that cannot be replayed whole, the replayed events (no `id:` of
//! their own), and the current token as an `id:` line. A stream that opens
//! without a token reads only the current token; live messages reach it
//! meanwhile (each with its own `id:`, all covered by that token). While
//! Redis cannot be asked every stream of a resume is reset, and the `id:`
//! handed out is one no server vouches for, so a later resume from it
//! resets too rather than replay what the client already reloaded. A read
//! that fails or times out ends the stream (`remote.rs`): its client
//! resumes again.

use crate::audience::Audience;
use crate::cluster::history::{self, Answer, ReadFor, ReadStream};
use crate::frame::Wire;
use crate::history::remote::{Wanted, UNKNOWN_EPOCH};
use crate::sse;

use super::deliver::Delivery;
use super::stream::Replay;

impl Delivery<'_> {
    /// A stream just opened (its rooms joined) with history in Redis: ask
    /// for the current token and, with `last_event_id`, what it missed.
    pub(super) fn open_stream_remote(&mut self, index: usize, last_event_id: Option<&str>) {
        let Some(session) = self.conns.sessions.get(index) else {
            return;
        };
        let key = session.key;
        let mut streams = vec![ReadStream {
            audience: Audience::EVERYONE,
            since: None,
        }];
        let mut names = vec!["a".to_owned()];
        if let Some(user) = session.user() {
            streams.push(ReadStream {
                audience: Audience::User(user.to_string()),
                since: None,
            });
            names.push("u".to_owned());
        }
        for room in self.hub.router.rooms_of(key) {
            streams.push(ReadStream {
                audience: Audience::room(room.to_string()),
                since: None,
            });
            names.push(format!("r:{room}"));
        }
        // A token that is not one of ours still asks: nothing is vouched for.
        let since = last_event_id.map(|token| {
            history::parse_token(token).map_or_else(
                || (UNKNOWN_EPOCH.to_owned(), 0),
                |(epoch, number)| (epoch.to_owned(), number),
            )
        });
        let wanted = Wanted::Events {
            resume: since.is_some(),
            streams: names,
        };
        self.ask(index, key, streams, wanted, ReadFor::Events(since));
    }

    /// The read's answer (`None`: Redis could not be asked): `reset`,
    /// replay and the current token, all or none per stream.
    pub(super) fn answer_events(
        &mut self,
        index: usize,
        resume: bool,
        names: &[String],
        answer: Option<&Answer>,
    ) {
        let unknown = format!("{UNKNOWN_EPOCH}-0");
        let token = answer.and_then(|a| a.token.as_deref()).unwrap_or(&unknown);
        let id = sse::id_only(token);
        if !resume {
            return self.queue_event(index, id);
        }
        let mut replay = Replay::default();
        for (i, name) in names.iter().enumerate() {
            let frames = answer
                .and_then(|a| a.streams.get(i))
                .and_then(|read| read.replay.as_ref());
            let events: Option<Vec<Wire>> =
                frames.map(|frames| frames.iter().map(|json| sse::event(json)).collect());
            let session = self.conns.sessions.get(index);
            let outcome = replay.offer(session, &self.setup.rules, events, || name.clone());
            self.count_remote(outcome);
        }
        self.queue_replay(index, replay);
        self.queue_event(index, id);
    }
}
