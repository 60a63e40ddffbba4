//! The subscriber thread: owns one Redis connection in subscribe mode,
//! keeps its subscriptions equal to the loop's interest (the broadcast
//! channel always, user and room channels while this node holds members),
//! and forwards each valid message from another node to the loop.
//!
//! It reads with a short timeout, so interest changes are applied within
//! `POLL` even when no message arrives. After a reconnect it subscribes to
//! the whole interest again. Malformed payloads are dropped and counted,
//! with at most one warning per `WARN_EVERY`. A message whose (node, run,
//! seq) is not newer than the last one seen from that run is a duplicate
//! and dropped: nothing reaches a session twice.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::{PubSub, RedisResult};

use super::wire::{self, Garbage};
use super::{Bridge, Event, Reporter, BACKOFF_MAX, BACKOFF_MIN, IO_TIMEOUT};
use crate::audience::Audience;

/// Longest wait for a message before interest changes are looked at.
const POLL: Duration = Duration::from_millis(20);
/// Channels per SUBSCRIBE command when (re)subscribing to everything.
const CHUNK: usize = 512;
/// At most one warning about malformed payloads this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Runs remembered for duplicate detection; forgotten all at once past it.
const MAX_RUNS: usize = 1024;

/// The thread's body; returns when the node stops or the loop goes away.
pub(super) fn run(bridge: &Bridge, mut reporter: Reporter) {
    let mut state = Receiving::default();
    let mut backoff = BACKOFF_MIN;
    while !bridge.stop.load(Ordering::Relaxed) {
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
        if let Err(e) = subscribe_all(bridge, &mut pubsub) {
            reporter.failed(e.to_string());
            drop(pubsub);
            if !bridge.pause(backoff) {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = BACKOFF_MIN;
        reporter.connected();
        match receive(bridge, &mut pubsub, &mut state, &reporter) {
            Ok(Exit::Stop) => return,
            Err(e) => reporter.failed(e.to_string()),
        }
    }
}

enum Exit {
    Stop,
}

fn subscribe_all(bridge: &Bridge, pubsub: &mut PubSub<'_>) -> RedisResult<()> {
    bridge.interest_changed.store(false, Ordering::Relaxed);
    let mut channels: Vec<String> = {
        let mut interest = bridge.interest();
        interest.changed.clear();
        interest.wanted.iter().cloned().collect()
    };
    channels.push(bridge.names.channel(Audience::EVERYONE));
    pubsub.set_read_timeout(Some(IO_TIMEOUT))?;
    for chunk in channels.chunks(CHUNK) {
        pubsub.subscribe(chunk)?;
    }
    Ok(())
}

/// Applies interest changes made since the last look.
fn apply_interest(bridge: &Bridge, pubsub: &mut PubSub<'_>) -> RedisResult<()> {
    let (subscribe, unsubscribe): (Vec<String>, Vec<String>) = {
        let mut interest = bridge.interest();
        if interest.changed.is_empty() {
            return Ok(());
        }
        let changed = std::mem::take(&mut interest.changed);
        changed
            .into_iter()
            .partition(|channel| interest.wanted.contains(channel))
    };
    // Replies may take longer than a poll on a loaded machine.
    pubsub.set_read_timeout(Some(IO_TIMEOUT))?;
    for chunk in subscribe.chunks(CHUNK) {
        pubsub.subscribe(chunk)?;
    }
    for chunk in unsubscribe.chunks(CHUNK) {
        pubsub.unsubscribe(chunk)?;
    }
    Ok(())
}

fn receive(
    bridge: &Bridge,
    pubsub: &mut PubSub<'_>,
    state: &mut Receiving,
    reporter: &Reporter,
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
            apply_interest(bridge, pubsub)?;
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
        if let Some(event) = state.accept(bridge, channel, payload) {
            if reporter.handle.send_from_bridge(event).is_err() {
                // The loop is gone.
                return Ok(Exit::Stop);
            }
        }
    }
}

/// What the receiving side remembers across messages and reconnects.
#[derive(Default)]
struct Receiving {
    /// node id → (run, last seq seen).
    last: HashMap<String, (u64, u64)>,
    garbage_since_warning: u64,
    last_warning: Option<Instant>,
}

impl Receiving {
    /// The event for one message, or `None` when it is dropped.
    fn accept(&mut self, bridge: &Bridge, channel: &str, payload: &[u8]) -> Option<Event> {
        let Some(target) = bridge.names.target(channel) else {
            self.garbage(bridge, channel, "not a wshub channel");
            return None;
        };
        let (origin, body) = match wire::decode(payload) {
            Ok(decoded) => decoded,
            Err(Garbage::Header) => {
                self.garbage(bridge, channel, "no wshub1 header");
                return None;
            }
            Err(Garbage::Body) => {
                self.garbage(bridge, channel, "body is not a wshub message");
                return None;
            }
        };
        if origin.node_id == bridge.node_id && origin.epoch == bridge.epoch {
            // Our own: delivered locally when it was published.
            return None;
        }
        match self.last.get_mut(origin.node_id) {
            Some((epoch, seq)) if *epoch == origin.epoch => {
                if origin.seq <= *seq {
                    bridge.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                *seq = origin.seq;
            }
            Some(run) => *run = (origin.epoch, origin.seq),
            None => {
                if self.last.len() >= MAX_RUNS {
                    self.last.clear();
                }
                self.last
                    .insert(origin.node_id.to_owned(), (origin.epoch, origin.seq));
            }
        }
        bridge.stats.received.fetch_add(1, Ordering::Relaxed);
        match (body, target) {
            (wire::Body::Message(json), target) => Some(Event::Deliver {
                target,
                json: json.to_vec(),
            }),
            (wire::Body::Membership { join, room }, Audience::User(user)) => {
                Some(Event::Membership {
                    user,
                    room: room.to_owned(),
                    join,
                })
            }
            (wire::Body::Membership { .. }, _) => {
                self.garbage(bridge, channel, "a membership change not on a user channel");
                None
            }
        }
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
