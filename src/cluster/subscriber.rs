//! The subscriber thread: owns one Redis connection in subscribe mode,
//! keeps its subscriptions equal to the loop's interest (the broadcast
//! channel always, user and room channels while this node holds members),
//! and forwards each valid message from another node to the loop.
//!
//! It reads with a short timeout, so interest changes are applied within
//! `POLL` even when no message arrives. After a reconnect it subscribes to
//! the whole interest again. Malformed, oversized or (with a secret)
//! unsigned payloads are dropped and counted, with at most one warning per
//! `WARN_EVERY`. A message whose (node, run, seq) was among the last
//! `WINDOW` seen from that run is a duplicate and dropped; the window is a
//! set, not a high-water mark, so one forged sequence number cannot hide
//! a node's later messages.
//!
//! It never waits for the loop: what it hands over is bounded in bytes
//! (`Bridge::inbound`), and past that bound, or with the loop's queue
//! full, a message is dropped and counted, so Redis never sees a slow
//! subscriber (and never disconnects it at its output-buffer limit).
//!
//! With history on it also runs resume reads (`history::Reader`, on a
//! second connection) and forwards each answer when its marker arrives on
//! the subscription, so answers and live messages reach the loop in the
//! order Redis ran them. Messages with a position are delivered on every
//! node, this one included.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use redis::{PubSub, RedisResult};

use super::history::{self, Read, Reader};
use super::wire::{self, Garbage};
use super::{Bridge, Event, Reporter, BACKOFF_MAX, BACKOFF_MIN, IO_TIMEOUT};
use crate::audience::Audience;

/// Longest wait for a message before interest changes are looked at. A
/// connect or a join waits for its subscription (docs/protocol.md 10a), so this
/// is part of their latency; an idle node wakes 200 times a second for it.
const POLL: Duration = Duration::from_millis(5);
/// Channels per SUBSCRIBE command when (re)subscribing to everything.
const CHUNK: usize = 512;
/// At most one warning about malformed payloads this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Runs remembered for duplicate detection; forgotten all at once past it.
const MAX_RUNS: usize = 64;
/// Sequence numbers remembered per run for duplicate detection.
const WINDOW: usize = 1024;
/// Resume reads run in one pipeline.
const READS_MAX: usize = 256;

/// The thread's body; returns when the node stops or the loop goes away.
pub(super) fn run(bridge: &Bridge, mut reporter: Reporter, reads: &Receiver<Read>) {
    let mut state = Receiving {
        reader: bridge.history.map(|_| Reader::new(bridge)),
        nudge: bridge.names.nudge_channel(&bridge.node_id),
        ..Receiving::default()
    };
    let mut backoff = BACKOFF_MIN;
    while !bridge.stop.load(Ordering::Relaxed) {
        // Reads asked for while down, or whose marker can no longer come.
        fail_reads(bridge, &mut state, &reporter, reads);
        let mut con = match bridge.connect() {
            Ok(con) => con,
            Err(e) => {
                reporter.failed(e.to_string());
                if !bridge.pause(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut pubsub = con.as_pubsub();
        let marker = state.reader.as_ref().map(|r| r.marker().to_owned());
        let version = match subscribe_all(bridge, &mut pubsub, marker) {
            Ok(version) => version,
            Err(e) => {
                reporter.failed(e.to_string());
                drop(pubsub);
                if !bridge.pause(backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        reporter.connected();
        let _ = reporter.handle.send_from_bridge(Event::Subscribed(version));
        match receive(bridge, &mut pubsub, &mut state, &reporter, reads) {
            Ok(Exit::Stop) => return,
            Err(e) => reporter.failed(e.to_string()),
        }
    }
}

enum Exit {
    Stop,
}

/// Subscribes to the whole interest; returns the version it applied.
/// Answers every read that cannot complete: queued ones, and those
/// whose marker is lost with the subscription.
fn fail_reads(bridge: &Bridge, state: &mut Receiving, reporter: &Reporter, reads: &Receiver<Read>) {
    let Some(reader) = state.reader.as_mut() else {
        return;
    };
    let mut ids = reader.fail_waiting(bridge);
    ids.extend(reads.try_iter().map(|read| read.id));
    for id in ids {
        let _ = reporter.handle.try_send_from_bridge(Event::HistoryRead {
            id,
            result: Err("the cluster's connection to Redis failed".to_owned()),
            bytes: 0,
        });
    }
}

/// Runs the reads queued since the last look, after the interest changes
/// made before them (a join's room is subscribed before its read runs).
fn run_reads(
    bridge: &Bridge,
    pubsub: &mut PubSub<'_>,
    state: &mut Receiving,
    reporter: &Reporter,
    reads: &Receiver<Read>,
) -> RedisResult<bool> {
    let Some(reader) = state.reader.as_mut() else {
        return Ok(false);
    };
    let batch: Vec<Read> = reads.try_iter().take(READS_MAX).collect();
    if batch.is_empty() {
        return Ok(false);
    }
    if bridge.interest_changed.swap(false, Ordering::Acquire) {
        if let Some(version) = apply_interest(bridge, pubsub)? {
            let _ = reporter.handle.send_from_bridge(Event::Subscribed(version));
        }
    }
    for (id, result) in reader.run(bridge, batch) {
        let _ = reporter.handle.try_send_from_bridge(Event::HistoryRead {
            id,
            result,
            bytes: 0,
        });
    }
    Ok(true)
}

fn subscribe_all(
    bridge: &Bridge,
    pubsub: &mut PubSub<'_>,
    marker: Option<String>,
) -> RedisResult<u64> {
    bridge.interest_changed.store(false, Ordering::Relaxed);
    let (mut channels, version): (Vec<String>, u64) = {
        let mut interest = bridge.interest();
        interest.changed.clear();
        (interest.wanted.iter().cloned().collect(), interest.version)
    };
    channels.push(bridge.names.channel(Audience::EVERYONE));
    channels.push(bridge.names.nudge_channel(&bridge.node_id));
    channels.extend(marker);
    pubsub.set_read_timeout(Some(IO_TIMEOUT))?;
    for chunk in channels.chunks(CHUNK) {
        pubsub.subscribe(chunk)?;
    }
    Ok(version)
}

/// Applies interest changes made since the last look; returns the version
/// applied. Everything changed meanwhile goes in one go (one SUBSCRIBE per
/// `CHUNK` channels), so a connect storm costs a few round trips, not one
/// per session. Redis executes a SUBSCRIBE whole before it answers, so its
/// first reply means every channel in it is live.
fn apply_interest(bridge: &Bridge, pubsub: &mut PubSub<'_>) -> RedisResult<Option<u64>> {
    let (subscribe, unsubscribe, version): (Vec<String>, Vec<String>, u64) = {
        let mut interest = bridge.interest();
        if interest.changed.is_empty() {
            return Ok(None);
        }
        let changed = std::mem::take(&mut interest.changed);
        let (subscribe, unsubscribe) = changed
            .into_iter()
            .partition(|channel| interest.wanted.contains(channel));
        (subscribe, unsubscribe, interest.version)
    };
    // Replies may take longer than a poll on a loaded machine.
    pubsub.set_read_timeout(Some(IO_TIMEOUT))?;
    for chunk in subscribe.chunks(CHUNK) {
        pubsub.subscribe(chunk)?;
    }
    for chunk in unsubscribe.chunks(CHUNK) {
        pubsub.unsubscribe(chunk)?;
    }
    Ok(Some(version))
}

fn receive(
    bridge: &Bridge,
    pubsub: &mut PubSub<'_>,
    state: &mut Receiving,
    reporter: &Reporter,
    reads: &Receiver<Read>,
) -> RedisResult<Exit> {
    let mut polling = false;
    loop {
        if bridge.stop.load(Ordering::Relaxed) {
            return Ok(Exit::Stop);
        }
        if reporter.stale() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "the publisher's connection failed",
            )));
        }
        // Cleared before the set is read: a change made meanwhile sets it
        // again and is applied on the next turn.
        if bridge.interest_changed.swap(false, Ordering::Acquire) {
            if let Some(version) = apply_interest(bridge, pubsub)? {
                if reporter
                    .handle
                    .send_from_bridge(Event::Subscribed(version))
                    .is_err()
                {
                    return Ok(Exit::Stop);
                }
            }
            polling = false;
        }
        if run_reads(bridge, pubsub, state, reporter, reads)? {
            polling = false;
        }
        if !polling {
            pubsub.set_read_timeout(Some(POLL))?;
            polling = true;
        }
        let message = match pubsub.get_message() {
            Ok(message) => message,
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e),
        };
        let channel = message.get_channel_name();
        let payload = message.get_payload_bytes();
        if channel == state.nudge {
            // Only to wake this loop: the interest is read at its top.
            continue;
        }
        if let Some(event) = state.marker(channel, payload) {
            let bytes = event_bytes(&event);
            if reporter.handle.try_send_from_bridge(event).is_err() {
                // The loop fails the read at its deadline.
                bridge.inbound.give_back(bytes);
                bridge.stats.receive_dropped.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        if let Some(event) = state.accept(bridge, channel, payload) {
            let bytes = event_bytes(&event);
            if !bridge.inbound.try_take(bytes) {
                bridge.stats.receive_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match reporter.handle.try_send_from_bridge(event) {
                Ok(()) => {}
                Err(super::Refused::Full) => {
                    bridge.inbound.give_back(bytes);
                    bridge.stats.receive_dropped.fetch_add(1, Ordering::Relaxed);
                }
                // The loop is gone.
                Err(_) => return Ok(Exit::Stop),
            }
        }
    }
}

fn event_bytes(event: &Event) -> usize {
    match event {
        Event::Deliver { json, .. } | Event::Kept { json, .. } => json.len(),
        Event::HistoryRead { bytes, .. } => *bytes,
        _ => 0,
    }
}

/// The sequence numbers last seen from one run of one node.
#[derive(Debug, Default)]
pub(super) struct Window {
    run: u64,
    order: VecDeque<u64>,
    seen: HashSet<u64>,
}

impl Window {
    /// True the first time `seq` of `run` is offered (within the window).
    /// A new run of the node starts a new window.
    pub(super) fn first_time(&mut self, run: u64, seq: u64) -> bool {
        if run != self.run {
            self.run = run;
            self.order.clear();
            self.seen.clear();
        }
        if !self.seen.insert(seq) {
            return false;
        }
        self.order.push_back(seq);
        if self.order.len() > WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// What the receiving side remembers across messages and reconnects.
#[derive(Default)]
struct Receiving {
    /// node id → the window of its current run.
    windows: HashMap<String, Window>,
    garbage_since_warning: u64,
    last_warning: Option<Instant>,
    /// With history on: resume reads waiting for their marker.
    reader: Option<Reader>,
    /// This node's nudge channel (see `Names::nudge_channel`).
    nudge: String,
}

impl Receiving {
    /// The answer a read marker releases (its bytes already taken from the
    /// inbound budget); `None` for any other channel.
    fn marker(&mut self, channel: &str, payload: &[u8]) -> Option<Event> {
        let reader = self.reader.as_mut().filter(|r| r.marker() == channel)?;
        let (id, result, bytes) = reader.on_marker(payload)?;
        Some(Event::HistoryRead { id, result, bytes })
    }

    /// The event for one message, or `None` when it is dropped.
    fn accept(&mut self, bridge: &Bridge, channel: &str, payload: &[u8]) -> Option<Event> {
        let Some(target) = bridge.names.target(channel) else {
            self.garbage(bridge, channel, "not a wshub channel");
            return None;
        };
        let kept = match history::split_kept(payload) {
            Some(Ok(kept)) => Some(kept),
            Some(Err(())) => {
                self.garbage(bridge, channel, "bad wshubh position header");
                return None;
            }
            None => None,
        };
        let envelope = kept.as_ref().map_or(payload, |k| k.envelope);
        let (origin, body) = match wire::decode(channel, envelope, &bridge.rules) {
            Ok(decoded) => decoded,
            Err(why) => {
                let why = match why {
                    Garbage::Header => "no wshub1 header",
                    Garbage::Body => "body is not a wshub message",
                    Garbage::TooLarge => "larger than max_message_size or max_json_depth",
                    Garbage::Unsigned => "no valid MAC for cluster.secret",
                };
                self.garbage(bridge, channel, why);
                return None;
            }
        };
        let own = origin.node_id == bridge.node_id && origin.epoch == bridge.epoch;
        if own && kept.is_none() {
            // Our own: delivered locally when it was published.
            return None;
        }
        if !self.windows.contains_key(origin.node_id) && self.windows.len() >= MAX_RUNS {
            self.windows.clear();
        }
        let window = self.windows.entry(origin.node_id.to_owned()).or_default();
        if !window.first_time(origin.epoch, origin.seq) {
            bridge.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        bridge.stats.received.fetch_add(1, Ordering::Relaxed);
        let json = match body {
            wire::Body::Message(json) => json,
            wire::Body::Membership { join, room } => {
                return match (target, &kept) {
                    (Audience::User(user), None) => Some(Event::Membership {
                        user,
                        room: room.to_owned(),
                        join,
                    }),
                    _ => {
                        self.garbage(bridge, channel, "a membership change not on a user channel");
                        None
                    }
                };
            }
        };
        let Some(kept) = kept else {
            return Some(Event::Deliver { target, json });
        };
        // Only the sender's node knows the session it leaves out.
        let except = kept.except.filter(|_| own);
        let target = match target {
            Audience::Everyone { .. } => Audience::Everyone { except },
            Audience::Room { room, .. } => Audience::Room { room, except },
            user => user,
        };
        Some(Event::Kept {
            target,
            json,
            epoch: kept.epoch,
            offset: kept.offset,
            own,
            token: kept.token.map(str::to_owned),
        })
    }

    /// Counts a malformed payload; warns at most once per `WARN_EVERY`.
    fn garbage(&mut self, bridge: &Bridge, channel: &str, why: &str) {
        bridge.stats.garbage.fetch_add(1, Ordering::Relaxed);
        self.garbage_since_warning += 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        self.last_warning = Some(now);
        log::warn!(
            "cluster: dropped {} malformed message(s) on our channels (latest on {:?}: {why}); is another program publishing under this prefix?",
            std::mem::take(&mut self.garbage_since_warning),
            channel
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_sequence_number_hides_no_later_message() {
        let mut window = Window::default();
        assert!(window.first_time(7, 1));
        assert!(!window.first_time(7, 1), "a duplicate");
        // A forged "last" sequence number...
        assert!(window.first_time(7, u64::MAX));
        // ...and the node's real messages still get through, once.
        assert!(window.first_time(7, 2));
        assert!(window.first_time(7, 3));
        assert!(!window.first_time(7, 3));
        // A new run of the node starts afresh.
        assert!(window.first_time(8, 1));
    }

    #[test]
    fn the_window_is_bounded() {
        let mut window = Window::default();
        for seq in 0..(WINDOW as u64 * 3) {
            assert!(window.first_time(1, seq));
        }
        assert_eq!(window.seen.len(), WINDOW);
        assert_eq!(window.order.len(), WINDOW);
        // Recent ones are still known, the oldest forgotten.
        assert!(!window.first_time(1, WINDOW as u64 * 3 - 1));
        assert!(window.first_time(1, 0));
    }
}
