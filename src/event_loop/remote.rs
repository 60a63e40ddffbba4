//! History in a cluster (`history` on with `cluster.redis`; README
//! "History and resume"): the streams live in Redis, every message gets
//! its position there, and every node (the sender's too) receives it back
//! with that position, in stream order, as [`Event::Kept`].
//!
//! Sessions that did not ask to recover get each message as they would
//! with history off: on the sender's node at once, elsewhere when it
//! arrives. Recovering sessions get the stamped form when it comes back
//! from Redis. Their welcome, replay and `recovered` wait for a read on the
//! subscriber thread ([`Link::read_history`]); the session's input is held
//! and no message of a stream being read reaches it meanwhile, and the
//! answer arrives exactly after every message the read covers and before
//! every later one, so nothing is lost or repeated at the seam. A read
//! that fails or times out closes the session (1013) so its client
//! resumes again; while Redis is down a resume answers `ok:false` at once.
//!
//! Nothing here runs unless `self.hub.remote` is set (cluster and history on).
//!
//! [`Event::Kept`]: crate::cluster::Event::Kept
//! [`Link::read_history`]: crate::cluster::Link::read_history

use std::rc::Rc;

use serde_json::value::RawValue;

use super::connections::Ending;
use super::deliver::{Delivery, Pick};
use crate::audience::Audience;
use crate::cluster::history::{ReadFor, ReadResult, ReadStream, StreamRead};
use crate::deflate::Encoded;
use crate::frame::{self, Kind as FrameKind};
use crate::history::position::{self, Epoch, Kind, Outcome, Position, Since};
use crate::history::remote::{Pending, Wanted, UNKNOWN_EPOCH};
use crate::message;

/// What a client is told when its message reached this node only.
const LOCAL_ONLY: &str = "cluster unavailable: delivered on this node only";

impl Delivery<'_> {
    /// A handle or hook push with history in Redis: published first, so
    /// the sessions here that recover wait for it to come back with its
    /// position (down: everyone here gets it plain).
    pub(super) fn push_kept(&mut self, target: &Audience<String>, json: &[u8]) -> usize {
        let Some(link) = self.hub.cluster.as_mut() else {
            return 0;
        };
        let published = link.publish(target.as_deref(), json);
        let local = self.deliver_here(target.as_deref(), json, published);
        if !published {
            return local;
        }
        local + self.hub.addressed_elsewhere(target)
    }

    /// A client's message with history in Redis: as [`Self::push_kept`],
    /// and its sender is told when it stayed on this node.
    pub(super) fn relay_kept(&mut self, index: usize, audience: Audience<&str>, json: &[u8]) {
        let published = self
            .hub
            .cluster
            .as_mut()
            .is_some_and(|link| link.publish(audience, json));
        self.deliver_here(audience, json, published);
        if !published {
            self.reply(index, &message::error_json(LOCAL_ONLY));
        }
    }

    /// Delivers a message published here (`published`: Redis will send it
    /// back with its position, which recovering sessions wait for).
    pub(super) fn deliver_here(
        &mut self,
        audience: Audience<&str>,
        json: &[u8],
        published: bool,
    ) -> usize {
        let min_bytes = self.setup.compression_min_bytes();
        let mut plain = Encoded::new(FrameKind::Text, json, min_bytes);
        self.fan_out_kept(audience, Some(&mut plain), None, published)
    }

    /// A message from Redis was dropped before the loop saw it (bounded
    /// queue): recovering sessions here may have missed it, and a later
    /// message would move their position past it. They are closed (1013)
    /// and resume, which replays it. Runs before each kept message.
    pub(super) fn check_drops(&mut self) {
        let drops = self
            .hub
            .cluster
            .as_ref()
            .map_or(0, |link| link.receive_drops());
        if !self
            .hub
            .remote
            .as_mut()
            .is_some_and(|r| r.dropped_since(drops))
        {
            return;
        }
        let gapped: Vec<usize> = self
            .conns
            .sessions
            .iter()
            .filter(|(_, s)| s.is_open() && wants_position(s))
            .map(|(index, _)| index)
            .collect();
        if gapped.is_empty() {
            return;
        }
        log::warn!(
            "history: messages from Redis were dropped (queue full); closing {} recovering session(s) with 1013 so they resume",
            gapped.len()
        );
        if let Some(remote) = self.hub.remote.as_mut() {
            remote.stats.gap_closes += gapped.len() as u64;
        }
        for index in gapped {
            self.conns
                .end(index, Ending::Resume("missed a message, resume"));
        }
    }

    /// A message with its position from Redis.
    pub(super) fn on_kept(
        &mut self,
        target: &Audience<String>,
        json: &[u8],
        epoch: &Epoch,
        offset: u64,
        own: bool,
        token: Option<String>,
    ) {
        self.check_drops();
        let audience = target.as_deref();
        let (kind, room) = match audience {
            Audience::Everyone { .. } => (Kind::All, None),
            Audience::User(_) => (Kind::User, None),
            Audience::Room { room, .. } => (Kind::Room, Some(room)),
        };
        let min_bytes = self.setup.compression_min_bytes();
        let stamped = position::stamp(json, kind, room, epoch, offset);
        let mut stamped = stamped
            .as_deref()
            .map(|s| Encoded::new(FrameKind::Text, s, min_bytes).with_sse_id(token));
        if own {
            // The others here had it when it was published.
            self.fan_out_kept(audience, None, stamped.as_mut(), false);
        } else {
            let mut plain = Encoded::new(FrameKind::Text, json, min_bytes);
            self.fan_out_kept(audience, Some(&mut plain), stamped.as_mut(), false);
        }
    }

    /// Queues to the audience's sessions: `stamped` to those that recover
    /// (unless their read covers it), `plain` to the others. Without
    /// `stamped`, recovering sessions get `plain`, or nothing when
    /// `echo_follows` (they are counted: the message reaches them later).
    /// Encoded once per form, whatever the audience size.
    fn fan_out_kept(
        &mut self,
        audience: Audience<&str>,
        mut plain: Option<&mut Encoded<'_>>,
        mut stamped: Option<&mut Encoded<'_>>,
        echo_follows: bool,
    ) -> usize {
        let broadcast = plain.is_some() && !matches!(audience, Audience::User(_));
        let (addressed, _) = self.fan_out_with(audience, broadcast, |r| {
            let session = r.session;
            if wants_position(session) {
                if let Some(encoded) = stamped.as_deref_mut() {
                    if r.remote.is_some_and(|remote| remote.skips(r.key, audience)) {
                        return Pick::Skip;
                    }
                    if session.is_sse() {
                        return Pick::Queue(encoded.sse());
                    }
                    return Pick::Queue(encoded.for_session(session.deflate_params(), r.codec));
                }
                if echo_follows {
                    return Pick::Later;
                }
            }
            match plain.as_deref_mut() {
                Some(encoded) if session.is_sse() => Pick::Queue(encoded.sse()),
                Some(encoded) => {
                    Pick::Queue(encoded.for_session(session.deflate_params(), r.codec))
                }
                None => Pick::Skip,
            }
        });
        addressed
    }

    /// After a chat upgrade that asked to recover: ask Redis for the
    /// welcome's positions and the streams of `?since=`.
    pub(super) fn resume_remote(&mut self, index: usize, user: Option<&str>, since: Since) {
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        session.set_recovering();
        let key = session.key;
        // An anonymous session has no user stream of its own.
        let own = since.user.map(|p| user.and(Some(p)));
        let mut streams = vec![ReadStream {
            audience: Audience::EVERYONE,
            since: since.all.as_ref().map(|p| (p.epoch.clone(), p.offset)),
        }];
        if let Some(user) = user {
            streams.push(ReadStream {
                audience: Audience::User(user.to_owned()),
                since: own
                    .as_ref()
                    .and_then(|p| p.as_ref())
                    .map(|p| (p.epoch.clone(), p.offset)),
            });
        }
        let wanted = Wanted::Session {
            user: user.map(Rc::from),
            all: since.all,
            own,
        };
        self.ask(index, key, streams, wanted, ReadFor::Positions);
    }

    /// After a recovering session's join passed: ask Redis for the room's
    /// position and, with `since`, what the session missed there.
    pub(super) fn joined_remote(&mut self, index: usize, room: &str, since: Option<&RawValue>) {
        let Some(session) = self.conns.sessions.get(index) else {
            return;
        };
        if !session.recovering() {
            return;
        }
        let key = session.key;
        // Not a string, not a position, or not a room's: nothing replayed.
        let since = since.map(|raw| {
            serde_json::from_str::<String>(raw.get())
                .ok()
                .and_then(|text| Position::parse(&text).ok())
                .filter(|p| p.kind == Kind::Room)
        });
        let streams = vec![ReadStream {
            audience: Audience::room(room.to_owned()),
            since: since
                .as_ref()
                .and_then(|p| p.as_ref())
                .map(|p| (p.epoch.clone(), p.offset)),
        }];
        let wanted = Wanted::Room {
            room: Rc::from(room),
            since,
        };
        self.ask(index, key, streams, wanted, ReadFor::Positions);
    }

    /// Queues the read, or answers at once without Redis (down, or the
    /// read queue full): positions of an unknown epoch and `ok:false`.
    pub(super) fn ask(
        &mut self,
        index: usize,
        key: crate::audience::SessionKey,
        streams: Vec<ReadStream>,
        wanted: Wanted,
        reads: ReadFor,
    ) {
        let now = self.now_ms;
        let id = self
            .hub
            .cluster
            .as_mut()
            .and_then(|link| link.read_history(streams, reads));
        let Some(remote) = self.hub.remote.as_mut() else {
            return;
        };
        match id {
            Some(id) => remote.wait(id, key, now, wanted),
            None => {
                remote.stats.reads_failed += 1;
                self.answer(index, wanted, None);
            }
        }
    }

    /// A read's answer, right after every live message it covers.
    /// Returns the session whose hold ends (once what this ended is
    /// closed, its input is read again: `EventLoop::release_held`).
    #[must_use = "the session's hold ends: its input must be read again"]
    pub(super) fn on_history_read(&mut self, id: u64, result: ReadResult) -> Option<usize> {
        let pending = self.hub.remote.as_mut().and_then(|r| r.take(id))?;
        let index = pending.key.index as usize;
        if !self
            .conns
            .sessions
            .get(index)
            .is_some_and(|s| s.key == pending.key && s.is_open())
        {
            return None;
        }
        match result {
            Ok(answer) => match pending.wanted {
                Wanted::Events { resume, streams } => {
                    self.answer_events(index, resume, &streams, Some(&answer));
                }
                wanted => self.answer(index, wanted, Some(&answer.streams)),
            },
            Err(why) => self.read_failed(&pending, &why),
        }
        Some(index)
    }

    /// Reads that did not answer in time close their sessions.
    pub(super) fn remote_tick(&mut self) {
        let now = self.now_ms;
        let Some(remote) = self.hub.remote.as_mut() else {
            return;
        };
        for pending in remote.expired(now) {
            self.read_failed(&pending, "no answer from Redis in time");
        }
    }

    /// The session missed live messages while its read waited and cannot
    /// be told which: it is ended, then closed (1013), and its client
    /// resumes again.
    fn read_failed(&mut self, pending: &Pending, why: &str) {
        if let Some(remote) = self.hub.remote.as_mut() {
            remote.stats.reads_failed += 1;
        }
        let index = pending.key.index as usize;
        if !self
            .conns
            .sessions
            .get(index)
            .is_some_and(|s| s.key == pending.key && s.is_open())
        {
            return;
        }
        log::warn!("session {index}: history read failed ({why}); closing with 1013");
        self.conns.end(index, Ending::Resume("history unavailable"));
    }

    /// Welcome, replay and `recovered` for what was asked; `reads` `None`:
    /// Redis could not be asked.
    fn answer(&mut self, index: usize, wanted: Wanted, reads: Option<&[StreamRead]>) {
        let at = |i: usize, kind: Kind| match reads.and_then(|r| r.get(i)) {
            Some(read) => position::format(kind, &read.epoch, read.last),
            None => format!("{}:{UNKNOWN_EPOCH}:0", kind.letter()),
        };
        match wanted {
            Wanted::Session { user, all, own } => {
                let own_position = user.as_ref().map(|_| at(1, Kind::User));
                self.reply(
                    index,
                    &position::welcome_json(&at(0, Kind::All), own_position.as_deref()),
                );
                if all.is_none() && own.is_none() {
                    return;
                }
                let all = all.map(|_| self.replay_remote(index, reads.and_then(|r| r.first())));
                let own = own.map(|p| match (p, &user) {
                    (Some(_), Some(_)) => self.replay_remote(index, reads.and_then(|r| r.get(1))),
                    _ => self.replay_remote(index, None),
                });
                self.reply(index, &position::recovered_json(all, own));
            }
            Wanted::Events { resume, streams } => {
                self.answer_events(index, resume, &streams, None);
            }
            Wanted::Room { room, since } => {
                self.reply(
                    index,
                    &position::room_welcome_json(&room, &at(0, Kind::Room)),
                );
                let Some(since) = since else {
                    return;
                };
                let read = since.and(reads.and_then(|r| r.first()));
                let outcome = self.replay_remote(index, read);
                self.reply(index, &position::room_recovered_json(&room, outcome));
            }
        }
    }

    /// Counts one stream's resume outcome.
    pub(super) fn count_remote(&mut self, outcome: Outcome) {
        if let Some(remote) = self.hub.remote.as_mut() {
            remote.count(outcome.ok, outcome.replayed);
        }
    }

    /// Queues a stream's replay, all or none (within the session's queue
    /// bounds); counts the outcome.
    fn replay_remote(&mut self, index: usize, read: Option<&StreamRead>) -> Outcome {
        let frames = read.and_then(|r| r.replay.as_ref());
        let outcome = match (frames, self.conns.sessions.get_mut(index)) {
            (Some(frames), Some(session)) => {
                let bytes = frames.iter().map(|f| f.len() + 14).sum();
                // One more for the `recovered` that follows.
                if session.has_room(frames.len() + 1, bytes, &self.setup.rules) {
                    for json in frames {
                        let wire = frame::encode(FrameKind::Text, json);
                        // Room was checked for all of them together.
                        let _ = session.queue(wire, &self.setup.rules, &mut self.metrics.bytes_out);
                    }
                    self.metrics.messages_out += frames.len() as u64;
                    self.conns.mark_dirty(index);
                    Outcome {
                        ok: true,
                        replayed: frames.len(),
                    }
                } else {
                    Outcome::FAILED
                }
            }
            _ => Outcome::FAILED,
        };
        self.count_remote(outcome);
        outcome
    }
}

/// Whether a session gets the stamped form of kept messages, from Redis:
/// recovering chat sessions, and event streams (their `id:`).
fn wants_position(session: &crate::session::Session) -> bool {
    session.recovering() || session.is_sse()
}
