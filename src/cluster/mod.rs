//! Several wshub nodes acting as one server over Redis (docs/protocol.md
//! section 10): the loop's end of the bridge, [`Link`], and the two bridge
//! threads it starts.
//!
//! The event loop never touches Redis. It hands messages to publish to the
//! publisher thread over a bounded channel, records which user and room
//! channels it needs in a shared interest set that the subscriber thread
//! applies, and records what changed in its presence (O(1) per change)
//! for the publisher thread, which keeps and writes the entry. The threads
//! answer through the loop's own command queue and waker (the [`ToLoop`]
//! port, which the server's `Handle` fills):
//! messages from other nodes, the view of the other nodes, link up or down.
//!
//! | module | holds |
//! | --- | --- |
//! | [`wire`] | channel and key names, the envelope around each message |
//! | [`view`] | presence entries and the view of the other nodes |
//! | `event` | what the bridge threads tell the loop, and the port they tell it through |
//! | `channels` | which user and room channels this node receives, and when it lets go |
//! | `sides` | whether the node is up: each connection's generation |
//! | `presence` | this node's presence: the loop's deltas, the publisher's counts |
//! | `changes` | presence changes through Redis: the change log, following another node's |
//! | `gate` | work waiting for a subscription or a publish to be confirmed |
//! | `publisher` | the thread that publishes (pipelined) and keeps presence |
//! | `subscriber` | the thread that subscribes and forwards what arrives |
//! | `history` | with `history` on: the streams in Redis, appends and resume reads |
//!
//! Nothing here runs when `cluster.redis` is empty: the loop holds no
//! `Link` then, and its hot path is what it was.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::audience::Audience;
use crate::config::{ClusterConfig, HistoryConfig, WebSocketConfig};
use crate::metrics::{self, Single};
use crate::router::Router;

mod changes;
mod channels;
mod event;
pub(crate) mod gate;
pub(crate) mod history;
mod presence;
mod publisher;
mod sides;
mod subscriber;
pub mod view;
pub mod wire;

use channels::{Channels, Interest, Kind};
pub(crate) use event::{Event, Refused, Side, ToLoop};
use gate::{Gate, Outcome, Ticket, Waiter};
use sides::Sides;
use view::View;
use wire::{Key, Names, Origin, Publication};

/// Messages waiting for the publisher; a full queue refuses the next publish.
const PUBLISH_QUEUE: usize = 16_384;
/// Resume reads waiting for the subscriber thread; a full queue fails the
/// next resume (the session is closed and reconnects).
const READ_QUEUE: usize = 1024;
/// Publishes sent in one pipeline (one write, one read of the replies).
const PIPELINE_MAX: usize = 1024;
/// First pause between reconnect attempts; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts: well inside the 5 s in which
/// subscriptions and presence must be back after Redis returns.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connect, command and reply deadline on both connections. With presence
/// refreshed at least every `REFRESH_MAX`, a Redis that hangs (stopped, not
/// closed) is noticed within 1.5 s.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a REST push waits for Redis to accept its publish.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);
/// How long a connect or a join waits for its channel's subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);
/// How often presence is written and the other nodes' entries read; the
/// view is never older than about twice this.
const REFRESH_MAX: Duration = Duration::from_millis(500);
/// How long `start` waits for the first connection attempts.
const STARTUP_WAIT: Duration = Duration::from_secs(3);
/// How long a live node's `node_id` lock outlives its last refresh: a node
/// restarting after a crash waits at most this for it.
const LOCK_TTL: Duration = Duration::from_millis(1700);
/// How long a stopping node waits for its threads (presence removal).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// What waits in the gate for the cluster (see [`gate`]).
#[derive(Debug)]
pub(crate) enum Held {
    /// A chat upgrade: its 101 and `on_connect` wait for the user's channel.
    Upgrade(Box<crate::upgrade::Upgrade>),
    /// A join: the session's next message waits for the room's channel.
    Join,
    /// A REST push, delivered here and answered once Redis accepted it.
    Push {
        target: Audience<String>,
        json: Vec<u8>,
        keep_alive: bool,
    },
    /// A REST join or leave, applied here and answered once Redis
    /// accepted it.
    Membership {
        user: String,
        room: String,
        join: bool,
        keep_alive: bool,
    },
}

/// Counters the threads keep; rendered into `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    published: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
    garbage: AtomicU64,
    dropped: AtomicU64,
    duplicates: AtomicU64,
    /// Publishes refused at `max_queue_bytes`.
    publish_refused: AtomicU64,
    /// Received messages dropped at `max_queue_bytes` or a full loop queue.
    receive_dropped: AtomicU64,
    /// Other nodes' presence entries ignored: unsigned or forged (with
    /// `cluster.secret`), malformed, or past the bounds.
    presence_refused: AtomicU64,
    /// Live nodes left out past the most one node follows (counted at
    /// each refresh while there are too many).
    nodes_refused: AtomicU64,
}

/// Bytes in flight one way between the loop and Redis, bounded.
#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes `n` bytes; false (nothing taken) past the bound.
    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(n)?;
                (after <= self.max).then_some(after)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

/// What the loop and both threads share.
#[derive(Debug)]
struct Bridge {
    names: Names,
    node_id: String,
    epoch: u64,
    /// What received messages are held to (size, depth, MAC).
    rules: wire::Rules,
    /// Bytes queued for the publisher.
    outbound: Budget,
    /// Bytes handed to the loop, not yet delivered.
    inbound: Budget,
    url: String,
    presence_ttl: Duration,
    /// With `history` on: appends go through Redis's streams.
    history: Option<history::Settings>,
    interest: Mutex<Interest>,
    /// Set after each change to `interest`, so the subscriber looks at the
    /// set only when there is something to apply: receiving a message
    /// takes no lock.
    interest_changed: AtomicBool,
    /// What changed in this node's presence since the publisher last
    /// looked (bounded, see [`presence`]).
    presence: Mutex<presence::Pending>,
    stats: Stats,
    stop: AtomicBool,
    /// Bumped by the first side that sees its connection fail: the other
    /// side then reconnects too, and the loop counts the cluster up only
    /// when both connections belong to the same generation. One Redis
    /// outage is one outage, not one per connection noticing it.
    generation: AtomicU64,
}

impl Bridge {
    fn interest(&self) -> MutexGuard<'_, Interest> {
        // A thread that panicked holding the lock left a valid set behind.
        self.interest.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, presence::Pending> {
        // As for `interest`: the deltas are whole after a panic.
        self.presence.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self) -> Option<&Key> {
        self.rules.key.as_ref()
    }

    fn refresh_period(&self) -> Duration {
        (self.presence_ttl / 3).min(REFRESH_MAX)
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.url.as_str())
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let con = self.client()?.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }

    /// Sleeps `pause` in short slices; false once the node is stopping.
    fn pause(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= until {
                return true;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
        false
    }
}

/// A job for the publisher thread.
enum Job {
    /// `ack`: report the outcome (for `seq`), and do not send it at all
    /// past that deadline (the loop has answered 503 by then).
    Publish {
        publication: Publication,
        seq: u64,
        ack: Option<Instant>,
        /// A message for an audience, appended to its stream while history
        /// is on (`None`: a membership change, only published), with the
        /// session the sender's node leaves out (it receives its own
        /// messages back with their position).
        keep: Option<Option<crate::audience::SessionKey>>,
    },
    Leave,
    /// Wake the subscriber: the interest changed (see `Link::want`).
    Nudge,
}

/// A reconnecting side's state, reported once per change.
struct Reporter {
    side: Side,
    handle: Arc<dyn ToLoop>,
    ready: Option<SyncSender<(Side, Result<u64, String>)>>,
    up: Option<bool>,
    /// The generation of this side's current connection.
    generation: u64,
    bridge: Arc<Bridge>,
}

impl Reporter {
    /// A new connection works.
    fn connected(&mut self) {
        self.generation = self.bridge.generation.load(Ordering::SeqCst);
        self.report(Ok(self.generation));
    }

    /// The connection failed (or could not be made).
    fn failed(&mut self, why: String) {
        if self.up == Some(true) {
            // Only the first side to notice starts a new generation.
            let _ = self.bridge.generation.compare_exchange(
                self.generation,
                self.generation + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        self.report(Err(why));
    }

    /// The other side saw Redis fail since this connection was made.
    fn stale(&self) -> bool {
        self.bridge.generation.load(Ordering::SeqCst) != self.generation
    }

    fn report(&mut self, state: Result<u64, String>) {
        let up = state.is_ok();
        if self.up == Some(up) {
            return;
        }
        if up && self.up == Some(false) {
            self.bridge.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.up = Some(up);
        if let Some(ready) = self.ready.take() {
            let _ = ready.try_send((self.side, state.clone()));
        }
        let _ = self.handle.send_from_bridge(Event::Link {
            side: self.side,
            state,
        });
    }
}

/// The loop's end of the cluster: publishing, interest, presence, state.
pub(crate) struct Link {
    bridge: Arc<Bridge>,
    jobs: SyncSender<Job>,
    /// Resume reads for the subscriber thread (history on).
    reads: SyncSender<history::Read>,
    next_read: u64,
    threads: Vec<JoinHandle<()>>,
    done: Receiver<()>,
    seq: u64,
    /// Each side's working connection.
    sides: Sides,
    outage_since: Option<Instant>,
    address: String,
    view: View,
    /// The user and room channels wanted, pinned and leaving.
    channels: Channels,
    gate: Gate<Held>,
    /// The sessions whose input waits in the gate.
    held: HashSet<crate::audience::SessionKey>,
    /// Waiters out of the gate, for the loop to act on.
    settled: Vec<(Waiter<Held>, Outcome)>,
    /// Waiters refused (timeout, failed publish, outage), for `/metrics`.
    refused: u64,
    next_tick_ms: u64,
}

impl Link {
    /// Starts the bridge threads and waits (bounded) for their first
    /// connection, so a node whose Redis is up starts up, not degraded.
    /// Refuses to start (the error names `cluster.node_id`) while another
    /// live node holds this `node_id`.
    pub(crate) fn start(
        config: &ClusterConfig,
        ws: &WebSocketConfig,
        kept: &HistoryConfig,
        handle: Arc<dyn ToLoop>,
    ) -> Result<Link, String> {
        let node_id = if config.node_id.is_empty() {
            default_node_id()
        } else {
            config.node_id.clone()
        };
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let bridge = Arc::new(Bridge {
            names: Names::new(&config.channel_prefix),
            node_id,
            epoch,
            rules: wire::Rules {
                max_message_size: ws.max_message_size,
                max_json_depth: ws.max_json_depth,
                max_id_bytes: ws.max_id_bytes,
                key: (!config.secret.is_empty())
                    .then(|| Key::new(config.secret.expose().as_bytes())),
            },
            outbound: Budget::new(config.max_queue_bytes),
            inbound: Budget::new(config.max_queue_bytes),
            url: config.redis.expose().to_owned(),
            presence_ttl: config.presence_ttl,
            history: kept.enabled().then(|| history::Settings {
                size: kept.size,
                ttl_ms: crate::wheel::millis(kept.ttl),
                meta_ttl_ms: crate::wheel::millis(kept.meta_ttl),
            }),
            interest: Mutex::default(),
            interest_changed: AtomicBool::new(false),
            presence: Mutex::default(),
            stats: Stats::default(),
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        });
        let address = bridge.client().map_or_else(
            |_| "?".to_owned(),
            |c| c.get_connection_info().addr.to_string(),
        );
        claim_node_id(&bridge)?;
        let (jobs, job_queue) = mpsc::sync_channel(PUBLISH_QUEUE);
        let (reads, read_queue) = mpsc::sync_channel(READ_QUEUE);
        let (ready_tx, ready) = mpsc::sync_channel(2);
        let (done_tx, done) = mpsc::sync_channel(2);
        let reporter = |side| Reporter {
            side,
            handle: handle.clone(),
            ready: Some(ready_tx.clone()),
            up: None,
            generation: 0,
            bridge: bridge.clone(),
        };
        let mut threads = Vec::new();
        let (b, r, d) = (bridge.clone(), reporter(Side::Publisher), done_tx.clone());
        threads.push(spawn("wshub-cluster-pub", move || {
            publisher::run(&b, r, &job_queue);
            drop(d);
        }));
        let (b, r, d) = (bridge.clone(), reporter(Side::Subscriber), done_tx);
        threads.push(spawn("wshub-cluster-sub", move || {
            subscriber::run(&b, r, &read_queue);
            drop(d);
        }));
        drop(ready_tx);
        let mut link = Link {
            bridge,
            jobs,
            reads,
            next_read: 0,
            threads: threads.into_iter().flatten().collect(),
            done,
            seq: 0,
            sides: Sides::default(),
            outage_since: None,
            address,
            view: View::default(),
            channels: Channels::default(),
            gate: Gate::default(),
            settled: Vec::new(),
            held: HashSet::new(),
            refused: 0,
            next_tick_ms: 0,
        };
        let deadline = Instant::now() + STARTUP_WAIT;
        for _ in 0..2 {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Ok((side, state)) = ready.recv_timeout(wait) else {
                break;
            };
            link.on_link(side, state);
        }
        if !link.up() && link.outage_since.is_none() {
            link.on_link(Side::Publisher, Err("no answer within 3 s".to_owned()));
        }
        if link.up() {
            log::info!(
                "cluster: node {} joined via Redis at {}",
                link.bridge.node_id,
                link.address
            );
        }
        Ok(link)
    }

    /// When [`Link::tick`] wants to run next (ms since the loop started).
    pub(crate) fn next_tick_ms(&self) -> u64 {
        self.gate
            .next_deadline()
            .map_or(self.next_tick_ms, |at| at.min(self.next_tick_ms))
    }

    /// Both connections are up: the node is part of the cluster.
    pub(crate) fn up(&self) -> bool {
        self.sides.up()
    }

    /// This node's id in presence.
    pub(crate) fn node_id(&self) -> &str {
        &self.bridge.node_id
    }

    /// The other live nodes; `None` while down (the node then answers for
    /// its own sessions only).
    pub(crate) fn view(&self) -> Option<&View> {
        self.up().then_some(&self.view)
    }

    /// Whether history is kept in Redis (`history` on).
    pub(crate) fn keeps_history(&self) -> bool {
        self.bridge.history.is_some()
    }

    /// Asks the subscriber thread to read a resume's streams; returns the
    /// id its [`Event::HistoryRead`] will carry. `None` (nothing asked)
    /// while the cluster is down or the read queue is full.
    pub(crate) fn read_history(
        &mut self,
        streams: Vec<history::ReadStream>,
        reads: history::ReadFor,
    ) -> Option<u64> {
        if !self.up() || self.bridge.history.is_none() {
            return None;
        }
        self.next_read += 1;
        let read = history::Read {
            id: self.next_read,
            streams,
            reads,
        };
        match self.reads.try_send(read) {
            Ok(()) => {
                // Woken now rather than at its next 10-12 ms poll (see
                // `Link::want`); nudges queued together cost one PUBLISH.
                let _ = self.jobs.try_send(Job::Nudge);
                Some(self.next_read)
            }
            Err(_) => None,
        }
    }

    /// Messages from Redis dropped so far (`cluster.max_queue_bytes`, or
    /// the loop's queue full): a recovering session may have missed one.
    pub(crate) fn receive_drops(&self) -> u64 {
        self.bridge.stats.receive_dropped.load(Ordering::Relaxed)
    }

    /// Hands `json` for `target` to the publisher. False when the cluster
    /// is down or the queue is full: nothing was published.
    pub(crate) fn publish(&mut self, audience: Audience<&str>, json: &[u8]) -> bool {
        let signed = self.bridge.key().is_some();
        let make = |names: &Names, origin: &Origin<'_>| {
            Publication::new(names, audience, origin, json, signed)
        };
        self.enqueue(make, None, Some(except_of(audience)))
            .is_some()
    }

    /// Like [`Link::publish`], for a message that is part of no stream
    /// (presence events): never kept in history, even with history on.
    pub(crate) fn publish_event(&mut self, audience: Audience<&str>, json: &[u8]) -> bool {
        let signed = self.bridge.key().is_some();
        let make = |names: &Names, origin: &Origin<'_>| {
            Publication::new(names, audience, origin, json, signed)
        };
        self.enqueue(make, None, None).is_some()
    }

    /// Asks every node holding sessions of `user` to add them to `room`
    /// (`join`) or remove them. `acked`: the publisher reports when Redis
    /// accepted it, as for [`Link::publish_acked`]. `None` when the cluster
    /// is down or the queue is full: nothing was published.
    pub(crate) fn publish_membership(
        &mut self,
        user: &str,
        room: &str,
        join: bool,
        acked: bool,
    ) -> Option<Ticket> {
        let signed = self.bridge.key().is_some();
        let make = |names: &Names, origin: &Origin<'_>| {
            Publication::membership(names, user, room, join, origin, signed)
        };
        let ack = acked.then(|| Instant::now() + PUBLISH_WAIT);
        self.enqueue(make, ack, None).map(Ticket::Published)
    }

    /// Like [`Link::publish`], and the publisher reports when Redis
    /// accepted it ([`Event::Published`]): returns the ticket to wait for,
    /// until `now_ms` + 1 s.
    pub(crate) fn publish_acked(
        &mut self,
        audience: Audience<&str>,
        json: &[u8],
    ) -> Option<Ticket> {
        let deadline = Instant::now() + PUBLISH_WAIT;
        let signed = self.bridge.key().is_some();
        let make = |names: &Names, origin: &Origin<'_>| {
            Publication::new(names, audience, origin, json, signed)
        };
        self.enqueue(make, Some(deadline), Some(except_of(audience)))
            .map(Ticket::Published)
    }

    /// Hands the next publication of this run (numbered in one sequence)
    /// to the publisher, within the outbound byte budget.
    fn enqueue(
        &mut self,
        make: impl FnOnce(&Names, &Origin<'_>) -> Publication,
        ack: Option<Instant>,
        keep: Option<Option<crate::audience::SessionKey>>,
    ) -> Option<u64> {
        if !self.up() {
            return None;
        }
        self.seq += 1;
        let b = &self.bridge;
        let origin = Origin {
            node_id: &b.node_id,
            epoch: b.epoch,
            seq: self.seq,
        };
        let publication = make(&b.names, &origin);
        let bytes = publication.len();
        if !b.outbound.try_take(bytes) {
            b.stats.publish_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let job = Job::Publish {
            publication,
            seq: self.seq,
            ack,
            keep,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Some(self.seq),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                b.outbound.give_back(bytes);
                b.stats.publish_refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// A chat session (of `user`, if not anonymous) is about to open here:
    /// receive that user's channel. Returns what to wait for, and the
    /// channel to pin meanwhile, while the subscription is not confirmed
    /// and the cluster is up (down, the node serves its own sessions).
    pub(crate) fn want_user(&mut self, user: Option<&str>) -> Option<(Ticket, String)> {
        let user = user?;
        let channel = self.bridge.names.channel(Audience::User(user));
        let version = match self.channels.version(Kind::User, user) {
            Some(version) => version,
            None => self.subscribe(Kind::User, user, channel.clone()),
        };
        self.wait_for(version, channel)
    }

    /// A session here joined `room`: receive that room's channel. Returns
    /// what the session's next message waits for, as [`Link::want_user`].
    pub(crate) fn want_room(&mut self, room: &str) -> Option<(Ticket, String)> {
        let channel = self.bridge.names.channel(Audience::room(room));
        let version = match self.channels.version(Kind::Room, room) {
            Some(version) => version,
            None => self.subscribe(Kind::Room, room, channel.clone()),
        };
        self.wait_for(version, channel)
    }

    /// Asks for `channel` (the first local user or room member needs it)
    /// and records the version that confirms it.
    fn subscribe(&mut self, kind: Kind, name: &str, channel: String) -> u64 {
        let version = self.want(channel, true);
        self.channels.wanted(kind, name, version);
        version
    }

    fn wait_for(&self, version: u64, channel: String) -> Option<(Ticket, String)> {
        let ticket = Ticket::Subscribed(version);
        (self.up() && !self.gate.confirmed(ticket)).then_some((ticket, channel))
    }

    /// Parks work until its ticket is confirmed (or refused; see
    /// [`Link::take_settled`]). A subscription wait gives up after 2 s, a
    /// publish after 1 s.
    pub(crate) fn park(
        &mut self,
        now_ms: u64,
        key: crate::audience::SessionKey,
        ticket: Ticket,
        pins: Vec<String>,
        what: Held,
    ) {
        let wait = match ticket {
            Ticket::Subscribed(_) => SUBSCRIBE_WAIT,
            Ticket::Published(_) => PUBLISH_WAIT,
        };
        self.channels.pin(&pins);
        self.held.insert(key);
        self.gate.park(Waiter {
            ticket,
            deadline_ms: now_ms + crate::wheel::millis(wait),
            key,
            pins,
            what,
        });
    }

    /// Whether session `key` waits in the gate.
    pub(crate) fn holds(&self, key: crate::audience::SessionKey) -> bool {
        !self.held.is_empty() && self.held.contains(&key)
    }

    /// Parked work that was confirmed or refused since the last call.
    pub(crate) fn take_settled(&mut self) -> Vec<(Waiter<Held>, Outcome)> {
        let settled = std::mem::take(&mut self.settled);
        for (waiter, outcome) in &settled {
            self.held.remove(&waiter.key);
            if *outcome == Outcome::Failed {
                self.refused += 1;
            }
            for channel in &waiter.pins {
                if !self.channels.unpin(channel) {
                    continue;
                }
                // Its session may never have opened: look again.
                match self.bridge.names.target(channel) {
                    Some(Audience::User(user)) => self.channels.look_at(Kind::User, user),
                    Some(Audience::Room { room, .. }) => self.channels.look_at(Kind::Room, room),
                    _ => {}
                }
            }
        }
        settled
    }

    /// A confirmation from the bridge threads.
    pub(crate) fn on_confirmed(&mut self, upto: Ticket, ok: bool) {
        match (upto, ok) {
            (_, true) => self.gate.confirm(upto, &mut self.settled),
            (Ticket::Published(seq), false) => self.gate.fail_published(seq, &mut self.settled),
            (Ticket::Subscribed(_), false) => {}
        }
    }

    /// A chat session or event stream of `user` (`None`: anonymous) was
    /// added to the router: presence counts it (O(1)).
    pub(crate) fn opened(&self, user: Option<&str>) {
        self.bridge.pending().deltas.session(user, 1);
    }

    /// A session of `user` in `rooms` is about to leave the router:
    /// presence forgets it, and the user's and rooms' channels are looked
    /// at in the next tick (O(its rooms)).
    pub(crate) fn closing<'a>(&mut self, user: Option<&str>, rooms: impl Iterator<Item = &'a str>) {
        let mut pending = self.bridge.pending();
        for room in rooms {
            pending.deltas.member(user, room, -1);
            self.channels.may_leave(Kind::Room, room);
        }
        pending.deltas.session(user, -1);
        if let Some(user) = user {
            self.channels.may_leave(Kind::User, user);
        }
    }

    /// A session of `user` joined (`joined`) or left `room`: presence
    /// follows (O(1)).
    pub(crate) fn member(&self, user: Option<&str>, room: &str, joined: bool) {
        let by = if joined { 1 } else { -1 };
        self.bridge.pending().deltas.member(user, room, by);
    }

    /// A room's last member here left: its channel may be released at the
    /// next tick (unless someone came back by then).
    pub(crate) fn departed(&mut self, room: &str) {
        self.channels.look_at(Kind::Room, room.to_owned());
    }

    /// Changes the interest; returns the version the subscriber will
    /// confirm once the change is applied.
    fn want(&self, channel: String, wanted: bool) -> u64 {
        let mut interest = self.bridge.interest();
        let version = interest.change(channel, wanted);
        // The subscriber sees the flag at its next look, which a blocking
        // read with a 5 ms timeout makes 10-12 ms on a kernel with coarse
        // timer ticks (measured, BENCHMARKS.md issue 20); a message on its
        // own nudge channel wakes it at once. Once per change batch: the
        // flag stays set until the subscriber takes the changes. A full
        // queue only loses the shortcut.
        if !self.bridge.interest_changed.swap(true, Ordering::Release) {
            let _ = self.jobs.try_send(Job::Nudge);
        }
        version
    }

    /// Periodic work, when due (see [`Link::next_tick_ms`]): releases
    /// channels no local session needs, and hands over a snapshot of
    /// presence if its deltas overflowed (the only walk of the router).
    pub(crate) fn tick(&mut self, now_ms: u64, router: &Router) {
        if !self.gate.is_empty() {
            self.gate.expire(now_ms, &mut self.settled);
        }
        if now_ms < self.next_tick_ms {
            return;
        }
        self.next_tick_ms = now_ms + crate::wheel::millis(self.bridge.refresh_period()) / 2;
        if self.channels.has_leaving() {
            self.release(router);
        }
        if self.bridge.pending().deltas.overflowed() {
            let snapshot = presence::Counts::from_router(router);
            *self.bridge.pending() = presence::Pending {
                snapshot: Some(snapshot),
                deltas: presence::Deltas::default(),
            };
        }
    }

    /// Unsubscribes the channels that no local session needs any more
    /// (see [`Channels::release`]).
    fn release(&mut self, router: &Router) {
        let needed = |kind, name: &str| match kind {
            Kind::User => router.user_sessions(name) > 0,
            Kind::Room => router.room_size(name) > 0,
        };
        let names = &self.bridge.names;
        let channel = |kind, name: &str| match kind {
            Kind::User => names.channel(Audience::User(name)),
            Kind::Room => names.channel(Audience::room(name)),
        };
        for channel in self.channels.release(needed, channel) {
            self.want(channel, false);
        }
    }

    /// Applies a link event; the outage is logged once, when it starts and
    /// when it ends. Returns true when the node's state (up or down) changed.
    pub(crate) fn on_link(&mut self, side: Side, state: Result<u64, String>) -> bool {
        let was_up = self.up();
        let generation = state.as_ref().ok().copied();
        self.sides.set(side, generation);
        if was_up && !self.up() {
            // Nothing parked will be confirmed now: refuse it at once.
            self.gate.fail_all(&mut self.settled);
        }
        if let Err(why) = state {
            if self.outage_since.is_none() {
                self.outage_since = Some(Instant::now());
                log::warn!(
                    "cluster down: Redis at {} unreachable ({why}); serving this node's sessions only, retrying",
                    self.address
                );
            }
        }
        if self.up() {
            self.next_tick_ms = 0;
            if let Some(since) = self.outage_since.take() {
                log::info!(
                    "cluster up again: Redis at {} reachable after {:.1} s",
                    self.address,
                    since.elapsed().as_secs_f64()
                );
            }
        }
        was_up != self.up()
    }

    /// A message from another node of `bytes` was taken off the queue.
    pub(crate) fn delivered(&mut self, bytes: usize) {
        self.bridge.inbound.give_back(bytes);
    }

    /// Replaces the view of the other nodes; returns the one it replaced.
    pub(crate) fn on_view(&mut self, view: View) -> View {
        std::mem::replace(&mut self.view, view)
    }

    /// Removes this node's presence now (a graceful shutdown).
    pub(crate) fn leave(&mut self) {
        self.sides.clear();
        self.gate.fail_all(&mut self.settled);
        self.view = View::default();
        let _ = self.jobs.try_send(Job::Leave);
    }

    /// The cluster's lines of `/metrics`.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let s = &self.bridge.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lines: [Single<'_>; 14] = [
            (
                "wshub_cluster_up",
                "gauge",
                "1 while both Redis connections are up.",
                u64::from(self.up()),
            ),
            (
                "wshub_cluster_nodes",
                "gauge",
                "Live nodes in the cluster, this one included.",
                if self.up() {
                    1 + self.view.nodes() as u64
                } else {
                    1
                },
            ),
            (
                "wshub_cluster_messages_published_total",
                "counter",
                "Messages published to Redis for other nodes.",
                load(&s.published),
            ),
            (
                "wshub_cluster_messages_received_total",
                "counter",
                "Messages received from other nodes and delivered here.",
                load(&s.received),
            ),
            (
                "wshub_cluster_reconnects_total",
                "counter",
                "Redis connections re-established after a failure.",
                load(&s.reconnects),
            ),
            (
                "wshub_cluster_garbage_total",
                "counter",
                "Malformed payloads on the cluster's channels, dropped.",
                load(&s.garbage),
            ),
            (
                "wshub_cluster_publish_dropped_total",
                "counter",
                "Messages not published: queue full or Redis failed mid-batch.",
                load(&s.dropped),
            ),
            (
                "wshub_cluster_duplicates_total",
                "counter",
                "Messages from other nodes dropped as already seen.",
                load(&s.duplicates),
            ),
            (
                "wshub_cluster_publish_refused_total",
                "counter",
                "Messages not published: cluster.max_queue_bytes (or the queue's count) reached.",
                load(&s.publish_refused),
            ),
            (
                "wshub_cluster_receive_dropped_total",
                "counter",
                "Messages from other nodes dropped: cluster.max_queue_bytes reached or the loop's queue full.",
                load(&s.receive_dropped),
            ),
            (
                "wshub_cluster_presence_refused_total",
                "counter",
                "Other nodes' presence entries ignored: unsigned or forged with cluster.secret set, malformed, or past the bounds.",
                load(&s.presence_refused),
            ),
            (
                "wshub_cluster_nodes_refused_total",
                "counter",
                "Live nodes in Redis left out of the view past the most a node follows (1000), at each refresh.",
                load(&s.nodes_refused),
            ),
            (
                "wshub_cluster_waiting",
                "gauge",
                "Connects, joins and REST pushes waiting for Redis to confirm a subscription or publish.",
                self.gate.len() as u64,
            ),
            (
                "wshub_cluster_wait_refused_total",
                "counter",
                "Waits that ended without Redis confirming (503, or an error to the session).",
                self.refused,
            ),
        ];
        metrics::write_single(out, &lines);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.jobs.try_send(Job::Leave);
        self.bridge.stop.store(true, Ordering::Relaxed);
        // Both threads hold a `done` sender; it disconnects once both ended.
        let _ = self.done.recv_timeout(STOP_WAIT);
        for thread in self.threads.drain(..) {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// The session a message for `audience` leaves out, if any.
fn except_of(audience: Audience<&str>) -> Option<crate::audience::SessionKey> {
    match audience {
        Audience::Everyone { except } | Audience::Room { except, .. } => except,
        Audience::User(_) => None,
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    match std::thread::Builder::new().name(name.to_owned()).spawn(f) {
        Ok(thread) => Some(thread),
        Err(e) => {
            log::error!("cluster: cannot start thread {name}: {e}");
            None
        }
    }
}

/// Sets or extends the `node_id` lock when it is free or ours (`ARGV[1]`
/// is this run's epoch): one live run per id.
pub(crate) const LOCK_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
return 0";

/// Takes this run's `node_id` lock, waiting out a crashed run's (at most
/// `LOCK_TTL`). With Redis unreachable the node starts degraded and the
/// publisher takes the lock once it connects.
fn claim_node_id(bridge: &Bridge) -> Result<(), String> {
    let Ok(mut con) = bridge.connect() else {
        return Ok(());
    };
    let key = bridge.names.lock_key(&bridge.node_id);
    let deadline = Instant::now() + LOCK_TTL + Duration::from_millis(200);
    loop {
        let taken: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(LOCK_SCRIPT)
            .arg(1)
            .arg(&key)
            .arg(bridge.epoch)
            .arg(LOCK_TTL.as_millis() as u64)
            .query(&mut con);
        match taken {
            Ok(1) => return Ok(()),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(_) => {
                return Err(format!(
                    "cluster.node_id: node id {:?} is in use by a live node (Redis key {key} is held); give each node its own id",
                    bridge.node_id
                ))
            }
            // Redis misbehaving: the publisher's backoff deals with it.
            Err(_) => return Ok(()),
        }
    }
}

/// Host name and process id: unique per machine, readable in presence.
fn default_node_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end])
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect()
    } else {
        String::new()
    };
    let host = if host.is_empty() {
        "wshub".to_owned()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_past_its_bound_and_refills() {
        let budget = Budget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(41), "past the bound: nothing taken");
        assert!(budget.try_take(40));
        assert!(!budget.try_take(1));
        budget.give_back(60);
        assert!(budget.try_take(60));
        // Giving back more than was taken cannot wrap around.
        budget.give_back(1000);
        assert!(budget.try_take(100));
        assert!(!budget.try_take(usize::MAX));
    }

    #[test]
    fn the_node_id_lock_script_is_one_eval_line() {
        // Sent as EVAL's body: Lua statements, one run's epoch as ARGV[1].
        assert!(LOCK_SCRIPT.contains("ARGV[1]") && LOCK_SCRIPT.contains("'PX'"));
    }
}
