//! Delivering: queues a framed message to one session or to every session
//! of an audience the router names. No allocation or JSON work per
//! recipient and no socket write: the frame is built once (plain,
//! compressed once, or as a Server-Sent Event) and shared,
//! and the recipients join the write backlog. A recipient that cannot keep
//! up takes no more data and is closed (1013; an event stream's response
//! ends) by the close step once this one is over ([`Ending`]).
//!
//! [`Delivery`] is the view every delivering step works through (this file,
//! `resume.rs`, `stream.rs`, `remote.rs`, `remote_stream.rs`, the
//! membership and presence of `rooms.rs`, the pushes and holds of
//! `cluster.rs`): connections, hub, setup and metrics, the loop clock's
//! time and whether a shutdown began. It cannot run a hook, close a
//! session, or touch admission, the poll or the wheel: the compiler
//! holds these steps to that.
//!
//! With history on, each delivery is also appended once to its audience's
//! stream; sessions that asked to recover get that stamped form (with
//! `"pos"`), also encoded once and shared, while the others get exactly
//! the bytes they would get with history off. Event streams get the
//! stamped form too, as one event whose `id:` is the message's resume
//! token (`stream.rs`), also built once.

use super::connections::{Connections, Ending};
use super::hub::Hub;
use super::setup::Setup;
use super::EventLoop;
use crate::audience::{Audience, SessionKey};
use crate::deflate::{Codec, Encoded};
use crate::frame::{Kind, Wire};
use crate::history::remote::Remote;
use crate::history::StreamRef;
use crate::metrics::Metrics;
use crate::outbound::Overflow;
use crate::session::{Rules, Session};

/// One recipient of a fan-out, as its choice of frame sees it.
pub(super) struct Recipient<'a> {
    pub(super) key: SessionKey,
    pub(super) session: &'a Session,
    pub(super) codec: &'a mut Codec,
    /// History in a cluster: whose reads are still pending.
    pub(super) remote: Option<&'a Remote>,
}

/// What a recipient of a fan-out gets.
pub(super) enum Pick {
    /// This frame.
    Queue(Wire),
    /// Nothing now, and it counts as addressed: the message reaches it
    /// later (history in a cluster: with its position, from Redis).
    Later,
    /// Nothing.
    Skip,
}

/// The parts a delivery touches, borrowed from the loop for one step
/// ([`EventLoop::delivery`]).
pub(super) struct Delivery<'a> {
    /// The sessions, their queues and the write backlog; sessions to end.
    pub(super) conns: &'a mut Connections,
    /// The router, history, the cluster link, webhooks, the codec.
    pub(super) hub: &'a mut Hub,
    /// The queue bounds and the config.
    pub(super) setup: &'a Setup,
    /// The counters.
    pub(super) metrics: &'a mut Metrics,
    /// The loop clock, this pass.
    pub(super) now_ms: u64,
    /// A shutdown began: presence is quiet.
    pub(super) shutting_down: bool,
}

impl EventLoop {
    /// The delivering parts, for one step. What it ended, the close step
    /// closes (`EventLoop::close_ended`).
    pub(super) fn delivery(&mut self) -> Delivery<'_> {
        Delivery {
            conns: &mut self.conns,
            hub: &mut self.hub,
            setup: &self.setup,
            metrics: &mut self.metrics,
            now_ms: self.clock.now_ms,
            shutting_down: self.life.shutting_down(),
        }
    }
}

impl Delivery<'_> {
    /// Queues the same bytes to every session of the audience; returns how
    /// many sessions got them. No allocation or JSON work per recipient.
    /// Each recipient gets the plain frame or the compressed one for its
    /// window: both built at most once, whatever the audience size. The
    /// writes happen later, from the backlog (a recipient already waiting
    /// there takes this frame with the earlier ones).
    pub(super) fn deliver(&mut self, audience: Audience<&str>, message: &mut Encoded<'_>) -> usize {
        let now = self.now_ms;
        let appended = self
            .hub
            .history
            .as_mut()
            .and_then(|h| h.append(StreamRef::of(audience), message.payload(), now));
        let min_bytes = self.setup.compression_min_bytes();
        let id = match appended {
            Some(_) => self.hub.mark_kept(audience, now),
            None => None,
        };
        let mut stamped = appended.as_ref().map(|a| {
            Encoded::new(Kind::Text, &a.json, min_bytes)
                .with_plain(a.wire.clone())
                .with_sse_id(id)
        });
        self.fan_out(audience, message, stamped.as_mut())
    }

    /// Queues `message` to every session of the audience (`stamped`, the
    /// same message with its position, to recovering sessions), without
    /// keeping it in history: what a message that is not part of any
    /// stream uses (e.g. presence).
    pub(super) fn fan_out(
        &mut self,
        audience: Audience<&str>,
        message: &mut Encoded<'_>,
        mut stamped: Option<&mut Encoded<'_>>,
    ) -> usize {
        let broadcast = !matches!(audience, Audience::User(_));
        let (sent, _) = self.fan_out_with(audience, broadcast, |r| {
            let session = r.session;
            // An event stream with history on always gets the stamped
            // form: its `id:` is how it resumes.
            Pick::Queue(match stamped.as_deref_mut() {
                Some(stamped) if session.is_sse() => stamped.sse(),
                Some(stamped) if session.recovering() => {
                    stamped.for_session(session.deflate_params(), r.codec)
                }
                _ if session.is_sse() => message.sse(),
                _ => message.for_session(session.deflate_params(), r.codec),
            })
        });
        sent
    }

    /// The one fan-out: `pick` chooses each recipient's frame (built once
    /// per form and shared), which is queued and the recipient put in the
    /// write backlog; recipients that cannot keep up are ended. Returns
    /// (addressed, queued); `broadcast` counts one broadcast.
    pub(super) fn fan_out_with(
        &mut self,
        audience: Audience<&str>,
        broadcast: bool,
        pick: impl FnMut(Recipient<'_>) -> Pick,
    ) -> (usize, u64) {
        walk(
            self.conns,
            self.hub,
            &self.setup.rules,
            self.metrics,
            (audience, broadcast),
            pick,
        )
    }

    pub(super) fn reply(&mut self, index: usize, json: &[u8]) {
        self.queue_message(index, Kind::Text, json);
    }

    /// Frames a message for one session (compressed if it negotiated that
    /// and the message is large enough) and queues it.
    pub(super) fn queue_message(&mut self, index: usize, kind: Kind, payload: &[u8]) {
        let min_bytes = self.setup.compression_min_bytes();
        let Some(session) = self.conns.sessions.get(index) else {
            return;
        };
        let mut encoded = Encoded::new(kind, payload, min_bytes);
        let wire = if session.is_sse() {
            encoded.sse()
        } else {
            encoded.for_session(session.deflate_params(), &mut self.hub.codec)
        };
        self.queue_data(index, wire);
    }

    /// Queues one data frame to one session, ending it if it cannot keep up.
    fn queue_data(&mut self, index: usize, wire: Wire) {
        let Some(session) = self.conns.sessions.get_mut(index) else {
            return;
        };
        match session.queue(wire, &self.setup.rules, &mut self.metrics.bytes_out) {
            Ok(()) => {
                self.metrics.messages_out += 1;
                self.conns.mark_dirty(index);
            }
            Err(Overflow::Ending) => {}
            Err(_) => self.conns.end(index, Ending::SlowConsumer),
        }
    }
}

/// The walk of a fan-out, borrowing exactly what it touches: the router,
/// the codec and the reads waiting for Redis (hub), the sessions, the
/// backlog and the sessions to end (connections), the queue bounds and
/// the counters. No socket is written and nothing is closed here.
fn walk(
    conns: &mut Connections,
    hub: &mut Hub,
    rules: &Rules,
    metrics: &mut Metrics,
    (audience, broadcast): (Audience<&str>, bool),
    mut pick: impl FnMut(Recipient<'_>) -> Pick,
) -> (usize, u64) {
    let sessions = &mut conns.sessions;
    let backlog = &mut conns.backlog;
    let ending = &mut conns.ending;
    let codec = &mut hub.codec;
    let bytes_out = &mut metrics.bytes_out;
    let remote = hub.remote.as_ref();
    let (mut addressed, mut queued) = (0, 0u64);
    hub.router.for_each_member(audience, |key| {
        let Some(session) = sessions.get_mut(key.index as usize) else {
            return;
        };
        if session.key != key {
            return;
        }
        let recipient = Recipient {
            key,
            session,
            codec,
            remote,
        };
        let wire = match pick(recipient) {
            Pick::Queue(wire) => wire,
            Pick::Later => {
                addressed += 1;
                return;
            }
            Pick::Skip => return,
        };
        match session.queue(wire, rules, bytes_out) {
            Ok(()) => {
                addressed += 1;
                queued += 1;
                backlog.insert(key.index as usize);
            }
            // Already ending: the close step was asked once.
            Err(Overflow::Ending) => {}
            // `queue` ended the session's data: it takes nothing more.
            Err(_) => ending.push((key, Ending::SlowConsumer)),
        }
    });
    metrics.messages_out += queued;
    if broadcast {
        metrics.broadcasts += 1;
    }
    (addressed, queued)
}
