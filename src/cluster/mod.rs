//! Several wshub nodes acting as one server over Redis (PROTOCOL.md
//! section 10): the loop's end of the bridge, [`Link`], and the two bridge
//! threads it starts.
//!
//! The event loop never touches Redis. It hands messages to publish to the
//! publisher thread over a bounded channel, records which user and room
//! channels it needs in a shared interest set that the subscriber thread
//! applies, and leaves its presence entry in a one-slot mailbox. The threads
//! answer through the loop's own command queue and waker ([`crate::handle`]):
//! messages from other nodes, the view of the other nodes, link up or down.
//!
//! | module | holds |
//! | --- | --- |
//! | [`wire`] | channel and key names, the envelope around each message |
//! | [`view`] | presence entries and the view of the other nodes |
//! | `publisher` | the thread that publishes (pipelined) and keeps presence |
//! | `subscriber` | the thread that subscribes and forwards what arrives |
//!
//! Nothing here runs when `cluster.redis` is empty: the loop holds no
//! `Link` then, and its hot path is what it was.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::audience::Audience;
use crate::config::ClusterConfig;
use crate::handle::Handle;
use crate::metrics::{self, Single};
use crate::router::Router;

mod publisher;
mod subscriber;
pub mod view;
pub mod wire;

use view::View;
use wire::{Names, Origin, Publication};

/// Messages waiting for the publisher; a full queue refuses the next publish.
const PUBLISH_QUEUE: usize = 16_384;
/// Publishes sent in one pipeline (one write, one read of the replies).
const PIPELINE_MAX: usize = 1024;
/// First pause between reconnect attempts; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts: well inside the 5 s in which
/// subscriptions and presence must be back after Redis returns.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connect, command and reply deadline on both connections.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often presence is written and the other nodes' entries read; the
/// view is never older than about twice this.
const REFRESH_MAX: Duration = Duration::from_millis(500);
/// How long `start` waits for the first connection attempts.
const STARTUP_WAIT: Duration = Duration::from_secs(3);
/// How long a stopping node waits for its threads (presence removal).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Which connection an [`Event::Link`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Publisher,
    Subscriber,
}

/// What the bridge threads tell the loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message another node published for sessions here.
    Deliver {
        target: Audience<String>,
        json: Vec<u8>,
    },
    /// Another node asks to add `user`'s sessions here to `room` (REST
    /// join), or to remove them (`join` false).
    Membership {
        user: String,
        room: String,
        join: bool,
    },
    /// A fresh view of the other nodes.
    View(View),
    /// A connection came up in a generation (see [`Bridge::generation`])
    /// or went down (`Err` holds why).
    Link {
        side: Side,
        state: Result<u64, String>,
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
}

/// Which channels this node needs. The loop writes, the subscriber applies.
#[derive(Debug, Default)]
struct Interest {
    wanted: HashSet<String>,
    changed: HashSet<String>,
}

/// What the loop and both threads share.
#[derive(Debug)]
struct Bridge {
    names: Names,
    node_id: String,
    epoch: u64,
    url: String,
    presence_ttl: Duration,
    interest: Mutex<Interest>,
    /// Set after each change to `interest`, so the subscriber looks at the
    /// set only when there is something to apply: receiving a message
    /// takes no lock.
    interest_changed: AtomicBool,
    /// The loop's latest presence entry, not yet written.
    presence: Mutex<Option<Vec<u8>>>,
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
    Publish(Publication),
    Leave,
}

/// A reconnecting side's state, reported once per change.
struct Reporter {
    side: Side,
    handle: Handle,
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
    threads: Vec<JoinHandle<()>>,
    done: Receiver<()>,
    seq: u64,
    /// Generation of each side's working connection, `None` while down.
    publisher: Option<u64>,
    subscriber: Option<u64>,
    outage_since: Option<Instant>,
    address: String,
    view: View,
    users: HashSet<String>,
    rooms: HashSet<String>,
    presence_dirty: bool,
    departures: bool,
    next_tick_ms: u64,
}

impl Link {
    /// Starts the bridge threads and waits (bounded) for their first
    /// connection, so a node whose Redis is up starts up, not degraded.
    pub(crate) fn start(config: &ClusterConfig, handle: Handle) -> Link {
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
            url: config.redis.expose().to_owned(),
            presence_ttl: config.presence_ttl,
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
        let (jobs, job_queue) = mpsc::sync_channel(PUBLISH_QUEUE);
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
            subscriber::run(&b, r);
            drop(d);
        }));
        drop(ready_tx);
        let mut link = Link {
            bridge,
            jobs,
            threads: threads.into_iter().flatten().collect(),
            done,
            seq: 0,
            publisher: None,
            subscriber: None,
            outage_since: None,
            address,
            view: View::default(),
            users: HashSet::new(),
            rooms: HashSet::new(),
            presence_dirty: true,
            departures: false,
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
        link
    }

    /// When [`Link::tick`] wants to run next (ms since the loop started).
    pub(crate) fn next_tick_ms(&self) -> u64 {
        self.next_tick_ms
    }

    /// Both connections are up: the node is part of the cluster.
    pub(crate) fn up(&self) -> bool {
        self.publisher.is_some() && self.publisher == self.subscriber
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

    /// Hands `json` for `target` to the publisher. False when the cluster
    /// is down or the queue is full: nothing was published.
    pub(crate) fn publish(&mut self, audience: Audience<&str>, json: &[u8]) -> bool {
        self.send(|names, origin| Publication::new(names, audience, origin, json))
    }

    /// Asks every node holding sessions of `user` to add them to `room`
    /// (`join`) or remove them. False when the cluster is down or the
    /// queue is full: nothing was published.
    pub(crate) fn publish_membership(&mut self, user: &str, room: &str, join: bool) -> bool {
        self.send(|names, origin| Publication::membership(names, user, room, join, origin))
    }

    /// Hands the next publication of this run (numbered in one sequence)
    /// to the publisher.
    fn send(&mut self, make: impl FnOnce(&Names, &Origin<'_>) -> Publication) -> bool {
        if !self.up() {
            return false;
        }
        self.seq += 1;
        let b = &self.bridge;
        let origin = Origin {
            node_id: &b.node_id,
            epoch: b.epoch,
            seq: self.seq,
        };
        match self.jobs.try_send(Job::Publish(make(&b.names, &origin))) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                b.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// A session (of `user`, if not anonymous) opened here: receive that
    /// user's channel.
    pub(crate) fn connected(&mut self, user: Option<&str>) {
        self.presence_dirty = true;
        let Some(user) = user else {
            return;
        };
        if !self.users.contains(user) {
            self.users.insert(user.to_owned());
            self.want(self.bridge.names.channel(Audience::User(user)), true);
        }
    }

    /// A session here joined `room`: receive that room's channel.
    pub(crate) fn joined_room(&mut self, room: &str) {
        self.presence_dirty = true;
        if !self.rooms.contains(room) {
            self.rooms.insert(room.to_owned());
            self.want(self.bridge.names.channel(Audience::room(room)), true);
        }
    }

    /// Sessions or room members changed here without a first or last
    /// member: the presence entry (counts, room members) is written again.
    pub(crate) fn touched(&mut self) {
        self.presence_dirty = true;
    }

    /// A user's last session here closed, or a room's last member here
    /// left: its channel may be released at the next tick (unless someone
    /// came back by then).
    pub(crate) fn departed(&mut self) {
        self.presence_dirty = true;
        self.departures = true;
    }

    fn want(&self, channel: String, wanted: bool) {
        let mut interest = self.bridge.interest();
        if wanted {
            interest.wanted.insert(channel.clone());
        } else {
            interest.wanted.remove(&channel);
        }
        interest.changed.insert(channel);
        self.bridge.interest_changed.store(true, Ordering::Release);
    }

    /// Periodic work, when due (see [`Link::next_tick_ms`]): hands over the
    /// presence entry when it changed and releases channels no local
    /// session needs.
    pub(crate) fn tick(&mut self, now_ms: u64, router: &Router) {
        if now_ms < self.next_tick_ms {
            return;
        }
        self.next_tick_ms = now_ms + crate::wheel::millis(self.bridge.refresh_period()) / 2;
        if std::mem::take(&mut self.departures) {
            self.release(router);
        }
        if std::mem::take(&mut self.presence_dirty) {
            let entry = view::encode_local(router);
            *self
                .bridge
                .presence
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(entry);
        }
    }

    fn release(&mut self, router: &Router) {
        let names = &self.bridge.names;
        let mut gone = Vec::new();
        self.users.retain(|user| {
            let keep = router.user_sessions(user) > 0;
            if !keep {
                gone.push(names.channel(Audience::User(user)));
            }
            keep
        });
        self.rooms.retain(|room| {
            let keep = router.room_size(room) > 0;
            if !keep {
                gone.push(names.channel(Audience::room(room)));
            }
            keep
        });
        for channel in gone {
            self.want(channel, false);
        }
    }

    /// Applies a link event; the outage is logged once, when it starts and
    /// when it ends. Returns true when the node's state (up or down) changed.
    pub(crate) fn on_link(&mut self, side: Side, state: Result<u64, String>) -> bool {
        let was_up = self.up();
        let generation = state.as_ref().ok().copied();
        match side {
            Side::Publisher => self.publisher = generation,
            Side::Subscriber => self.subscriber = generation,
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
            // A fresh Redis has no presence of ours: write it again.
            self.presence_dirty = true;
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

    /// Replaces the view of the other nodes; returns the one it replaced.
    pub(crate) fn on_view(&mut self, view: View) -> View {
        std::mem::replace(&mut self.view, view)
    }

    /// Removes this node's presence now (a graceful shutdown).
    pub(crate) fn leave(&mut self) {
        self.publisher = None;
        self.subscriber = None;
        self.view = View::default();
        let _ = self.jobs.try_send(Job::Leave);
    }

    /// The cluster's lines of `/metrics`.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let s = &self.bridge.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lines: [Single<'_>; 8] = [
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

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    match std::thread::Builder::new().name(name.to_owned()).spawn(f) {
        Ok(thread) => Some(thread),
        Err(e) => {
            log::error!("cluster: cannot start thread {name}: {e}");
            None
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
