//! The publisher thread: owns one Redis connection, publishes what the loop
//! queued, and keeps presence: this node's counts (applying the loop's
//! deltas, see [`super::presence`]) and entry, and the others' view.
//!
//! Batching: the thread blocks for the first queued message, then takes
//! whatever else is already queued (up to `PIPELINE_MAX`) and sends them as
//! one pipeline: one write, one read of all replies. Under load, messages
//! pile up while a pipeline is in flight, so the next one carries them all;
//! when idle, a lone message goes out at once. A batch that fails is dropped
//! (counted), never re-sent: delivery stays at-most-once.
//!
//! With history on, each message is appended by `history`'s script
//! instead of a bare PUBLISH (offset, stream entry and publish in one step).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult};

use super::history;
use super::presence::Counts;
use super::view::{self, Entry, View};
use super::wire::Publication;
use super::{Bridge, Event, Job, Reporter, BACKOFF_MAX, BACKOFF_MIN, PIPELINE_MAX};

/// Longest idle wait before looking whether the other side saw a failure.
const STALE_CHECK: Duration = Duration::from_millis(50);

/// The thread's body; returns when the loop leaves or goes away.
pub(super) fn run(bridge: &Bridge, mut reporter: Reporter, jobs: &Receiver<Job>) {
    let mut state = Presence::default();
    let mut backoff = BACKOFF_MIN;
    let mut batch = Batch::default();
    loop {
        state.fresh_connection = true;
        // Resend the view: the loop may have ignored the last one while down.
        state.seen.clear();
        let mut next_refresh = Instant::now();
        // Presence first, so the node is visible as soon as it is up. A
        // Redis that accepts connections but refuses commands (no AUTH,
        // read-only replica) backs off like one that refuses connections.
        let connected = bridge.connect().and_then(|mut con| {
            state.refresh(bridge, &mut con, &reporter)?;
            Ok(con)
        });
        let mut con = match connected {
            Ok(con) => con,
            Err(e) => {
                reporter.failed(e.to_string());
                if !wait_dropping(bridge, jobs, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        reporter.connected();
        next_refresh += bridge.refresh_period();
        loop {
            // Short waits, so a failure the subscriber saw is noticed soon.
            let wait = next_refresh
                .saturating_duration_since(Instant::now())
                .min(STALE_CHECK);
            let leave = match jobs.recv_timeout(wait) {
                Ok(job) => take(bridge, job, &mut batch, jobs),
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            if !batch.publications.is_empty() {
                let sent = batch.publications.len() as u64;
                if let Some(key) = bridge.key() {
                    for publication in &mut batch.publications {
                        publication.sign(key);
                    }
                }
                let result = publish(bridge, &mut con, &mut batch);
                let bytes = batch.publications.iter().map(Publication::len).sum();
                bridge.outbound.give_back(bytes);
                batch.publications.clear();
                batch.keeps.clear();
                let acked = batch.acked.take();
                if let Some(upto) = acked {
                    let ok = result.is_ok();
                    let _ = reporter
                        .handle
                        .send_from_bridge(Event::Published { upto, ok });
                }
                if let Err(e) = result {
                    bridge.stats.dropped.fetch_add(sent, Ordering::Relaxed);
                    reporter.failed(e.to_string());
                    break;
                }
                bridge.stats.published.fetch_add(sent, Ordering::Relaxed);
            }
            if std::mem::take(&mut batch.nudge) {
                let channel = bridge.names.nudge_channel(&bridge.node_id);
                if let Err(e) = redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg("")
                    .query::<i64>(&mut con)
                {
                    reporter.failed(e.to_string());
                    break;
                }
            }
            if leave || bridge.stop.load(Ordering::Relaxed) {
                remove_presence(bridge, &mut con);
                return;
            }
            if reporter.stale() {
                reporter.failed("the subscriber's connection failed".to_owned());
                break;
            }
            if Instant::now() >= next_refresh {
                if let Err(e) = state.refresh(bridge, &mut con, &reporter) {
                    reporter.failed(e.to_string());
                    break;
                }
                next_refresh = Instant::now() + bridge.refresh_period();
            }
        }
    }
}

/// One pipeline's publications, and the highest acknowledged sequence
/// number among them.
struct Batch {
    publications: Vec<Publication>,
    /// Per publication, whether it is kept in history (with the session
    /// its node leaves out); `None`: only published.
    keeps: Vec<Option<Option<crate::audience::SessionKey>>>,
    acked: Option<u64>,
    /// The subscriber is to be woken ([`Job::Nudge`]).
    nudge: bool,
    /// New epochs for streams Redis does not know (history only).
    random: std::hash::RandomState,
    epochs: u64,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            publications: Vec::with_capacity(PIPELINE_MAX),
            keeps: Vec::with_capacity(PIPELINE_MAX),
            acked: None,
            nudge: false,
            random: std::hash::RandomState::new(),
            epochs: 0,
        }
    }
}

/// Adds `first` and whatever else is queued to the batch; true on `Leave`.
/// An acknowledged publish whose deadline passed is not sent: its REST
/// client has had its 503 ("delivered nothing").
fn take(bridge: &Bridge, first: Job, batch: &mut Batch, jobs: &Receiver<Job>) -> bool {
    let mut job = first;
    let now = Instant::now();
    loop {
        match job {
            Job::Publish {
                publication,
                seq,
                ack,
                keep,
            } => match ack {
                Some(deadline) if deadline <= now => {
                    bridge.outbound.give_back(publication.len());
                    bridge.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Some(_) => {
                    batch.acked = Some(seq);
                    batch.publications.push(publication);
                    batch.keeps.push(keep);
                }
                None => {
                    batch.publications.push(publication);
                    batch.keeps.push(keep);
                }
            },
            Job::Leave => return true,
            Job::Nudge => batch.nudge = true,
        }
        if batch.publications.len() >= PIPELINE_MAX {
            return false;
        }
        match jobs.try_recv() {
            Ok(next) => job = next,
            Err(_) => return false,
        }
    }
}

fn publish(bridge: &Bridge, con: &mut Connection, batch: &mut Batch) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    let Some(settings) = bridge.history else {
        for publication in &batch.publications {
            pipe.cmd("PUBLISH")
                .arg(publication.channel())
                .arg(publication.payload())
                .ignore();
        }
        return pipe.query(con);
    };
    for (publication, keep) in batch.publications.iter().zip(&batch.keeps) {
        let target = std::str::from_utf8(publication.channel())
            .ok()
            .and_then(|channel| bridge.names.target(channel));
        let (Some(except), Some(target)) = (keep, target) else {
            pipe.cmd("PUBLISH")
                .arg(publication.channel())
                .arg(publication.payload())
                .ignore();
            continue;
        };
        let (meta, stream) = history::keys(&bridge.names, target.as_deref());
        batch.epochs += 1;
        let epoch = history::new_epoch(&batch.random, batch.epochs);
        batch.epochs += 1;
        let counter_epoch = history::new_epoch(&batch.random, batch.epochs);
        pipe.cmd("EVAL")
            .arg(history::APPEND_SCRIPT)
            .arg(3)
            .arg(meta)
            .arg(stream)
            .arg(history::counter_key(&bridge.names))
            .arg(epoch.as_str())
            .arg(settings.size)
            .arg(settings.ttl_ms)
            .arg(settings.meta_ttl_ms)
            .arg(publication.channel())
            .arg(history::except_text(*except))
            .arg(publication.payload())
            .arg(counter_epoch.as_str())
            .ignore();
    }
    pipe.query(con)
}

/// While Redis is unreachable: waits `pause`, dropping (and counting) what
/// the loop queued before it learnt the cluster is down. False to exit.
fn wait_dropping(bridge: &Bridge, jobs: &Receiver<Job>, pause: Duration) -> bool {
    let until = Instant::now() + pause;
    loop {
        if bridge.stop.load(Ordering::Relaxed) {
            return false;
        }
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return true;
        }
        match jobs.recv_timeout(wait.min(Duration::from_millis(50))) {
            Ok(Job::Publish { publication, .. }) => {
                bridge.outbound.give_back(publication.len());
                bridge.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Job::Leave) | Err(RecvTimeoutError::Disconnected) => return false,
            Ok(Job::Nudge) | Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

fn remove_presence(bridge: &Bridge, con: &mut Connection) {
    let names = &bridge.names;
    let _: RedisResult<()> = redis::pipe()
        .cmd("DEL")
        .arg(names.node_key(&bridge.node_id))
        .ignore()
        .cmd("DEL")
        .arg(names.lock_key(&bridge.node_id))
        .ignore()
        .cmd("SREM")
        .arg(names.nodes_key())
        .arg(&bridge.node_id)
        .ignore()
        .query(con);
}

/// What the presence side remembers between refreshes.
#[derive(Default)]
struct Presence {
    /// This node's presence, with every delta the loop handed over.
    counts: Counts,
    /// `counts` changed since `written` was encoded.
    dirty: bool,
    /// Our entry (signed) as last written; `fresh_connection` asks to write
    /// it again.
    written: Option<Vec<u8>>,
    /// A new connection: write the entry even if unchanged.
    fresh_connection: bool,
    /// Entries this run wrote: the counter in their version.
    writes: u64,
    /// The other nodes' entries at the last view sent to the loop: the
    /// version each header named, and the entry (`None`: refused).
    seen: HashMap<String, (String, Option<Arc<Entry>>)>,
    /// The other live nodes' ids, kept across reconnects: logged as they
    /// appear and go.
    peers: BTreeSet<String>,
    /// Another run held our node_id lock at the last refresh (logged once).
    lock_lost: bool,
}

impl Presence {
    /// Writes our entry (or extends its expiry), lists the live nodes,
    /// reads their entries and sends the loop a view when it changed.
    fn refresh(
        &mut self,
        bridge: &Bridge,
        con: &mut Connection,
        reporter: &Reporter,
    ) -> RedisResult<()> {
        let names = &bridge.names;
        // The key outlives our last refresh by the TTL less one refresh
        // period, the period in which the others notice it is gone: a dead
        // node leaves every view within presence_ttl.
        let ttl_ms = bridge
            .presence_ttl
            .saturating_sub(bridge.refresh_period())
            .as_millis() as u64;
        let key = names.node_key(&bridge.node_id);
        // Taken under the lock, applied and encoded outside it.
        let pending = bridge.pending().take();
        if let Some(pending) = pending {
            self.dirty |= self.counts.apply(pending);
        }
        let write = if self.dirty || self.written.is_none() {
            self.writes += 1;
            let version = format!("{}.{}", bridge.epoch, self.writes);
            Some(view::seal(
                &self.counts.encode(),
                &version,
                bridge.key(),
                &key,
            ))
        } else if self.fresh_connection {
            self.written.clone()
        } else {
            None
        };
        let mut pipe = redis::pipe();
        match &write {
            Some(entry) => pipe.cmd("SET").arg(&key).arg(entry).arg("PX").arg(ttl_ms),
            None => pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms),
        };
        pipe.cmd("SADD")
            .arg(names.nodes_key())
            .arg(&bridge.node_id)
            .ignore();
        // Keeps this run's node_id lock (see `claim_node_id`).
        pipe.cmd("EVAL")
            .arg(super::LOCK_SCRIPT)
            .arg(1)
            .arg(names.lock_key(&bridge.node_id))
            .arg(bridge.epoch)
            .arg(super::LOCK_TTL.as_millis() as u64);
        pipe.cmd("PEXPIRE")
            .arg(names.nodes_key())
            .arg(ttl_ms * 2)
            .ignore();
        pipe.cmd("SMEMBERS").arg(names.nodes_key());
        // Not written on error: `dirty` or `fresh_connection` try again.
        let (first, locked, members): (redis::Value, i64, Vec<String>) = pipe.query(con)?;
        self.fresh_connection = false;
        if locked != 1 && !self.lock_lost {
            log::error!(
                "cluster: another live node runs with node_id {:?}; give each node its own cluster.node_id",
                bridge.node_id
            );
        }
        self.lock_lost = locked != 1;
        match write {
            Some(entry) => {
                self.written = Some(entry);
                self.dirty = false;
            }
            None if first == redis::Value::Int(0) => {
                // Our key vanished (Redis restarted or evicted it): write again.
                let entry = self.written.clone().unwrap_or_default();
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&entry)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query::<()>(con)?;
            }
            None => {}
        }
        let others: Vec<String> = members
            .into_iter()
            .filter(|id| *id != bridge.node_id)
            .collect();
        let reads = read_entries(bridge, con, &others, &self.seen)?;
        let mut live = HashMap::with_capacity(others.len());
        let mut stale = Vec::new();
        let mut changed = false;
        for (id, read) in others.into_iter().zip(reads) {
            let (version, entry) = match read {
                Read::Missing => {
                    stale.push(id);
                    continue;
                }
                Read::Unchanged => match self.seen.remove(&id) {
                    Some(seen) => {
                        live.insert(id, seen);
                        continue;
                    }
                    None => continue,
                },
                Read::Refused(version, why) => (version, Err(why)),
                Read::Fetched(raw) => {
                    let version = view::version(&raw).unwrap_or_default().to_owned();
                    let entry = view::open(&raw, bridge.key(), &names.node_key(&id));
                    (version, entry)
                }
            };
            changed = true;
            let entry = match entry {
                Ok(entry) => Some(Arc::new(entry)),
                Err(why) => {
                    log::debug!("cluster: presence of node {id:?} ignored: {why:?}");
                    bridge
                        .stats
                        .presence_refused
                        .fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            live.insert(id, (version, entry));
        }
        if !stale.is_empty() {
            redis::cmd("SREM")
                .arg(names.nodes_key())
                .arg(stale)
                .query::<()>(con)?;
        }
        self.log_peers(&live);
        // Whatever is left of the last view is gone now.
        changed |= !self.seen.is_empty();
        self.seen = live;
        if changed {
            let nodes = self
                .seen
                .iter()
                .filter_map(|(id, (_, entry))| Some((id.clone(), entry.clone()?)))
                .collect();
            let _ = reporter
                .handle
                .send_from_bridge(Event::View(View::shared(nodes)));
        }
        Ok(())
    }
}

impl Presence {
    /// One log line per node that joined or left since the last look.
    fn log_peers<V>(&mut self, live: &HashMap<String, V>) {
        if live.len() == self.peers.len() && live.keys().all(|id| self.peers.contains(id)) {
            return;
        }
        let now: BTreeSet<String> = live.keys().cloned().collect();
        for id in now.difference(&self.peers) {
            log::info!("cluster: node {id} appeared ({} live nodes)", now.len() + 1);
        }
        for id in self.peers.difference(&now) {
            log::warn!(
                "cluster: node {id} is gone (presence expired or removed; {} live nodes)",
                now.len() + 1
            );
        }
        self.peers = now;
    }
}

/// One other node's entry, as read.
enum Read {
    /// Read whole: it is new or its version changed.
    Fetched(Vec<u8>),
    /// Its version is the one last read: not read again.
    Unchanged,
    /// Not read (with the version its header names, if any).
    Refused(String, view::Refused),
    /// Expired or removed: the node is gone.
    Missing,
}

/// The entries of `others`: first each one's length and header (one
/// pipeline), then, in one `MGET`, only those whose version is not the one
/// in `seen` and that are within [`view::MAX_ENTRY_BYTES`]. An idle
/// cluster reads headers only.
fn read_entries(
    bridge: &Bridge,
    con: &mut Connection,
    others: &[String],
    seen: &HashMap<String, (String, Option<Arc<Entry>>)>,
) -> RedisResult<Vec<Read>> {
    if others.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = others.iter().map(|id| bridge.names.node_key(id)).collect();
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("STRLEN").arg(key);
        pipe.cmd("GETRANGE")
            .arg(key)
            .arg(0)
            .arg(view::HEADER_MAX - 1);
    }
    let replies: Vec<(usize, Vec<u8>)> = pipe
        .query::<Vec<redis::Value>>(con)?
        .chunks(2)
        .map(|pair| {
            let len = redis::from_redis_value(&pair[0]).unwrap_or(0);
            let head = pair
                .get(1)
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            (len, head)
        })
        .collect();
    let mut reads = Vec::with_capacity(others.len());
    let mut wanted = Vec::new();
    for ((id, key), (len, head)) in others.iter().zip(&keys).zip(replies) {
        // No header: "" (refused, and not counted again until it changes).
        let version = view::version(&head).unwrap_or_default();
        let read = match len {
            0 => Read::Missing,
            _ if seen.get(id).is_some_and(|(seen, _)| seen == version) => Read::Unchanged,
            _ if version.is_empty() => Read::Refused(String::new(), view::Refused::Malformed),
            len if len > view::MAX_ENTRY_BYTES => {
                Read::Refused(version.to_owned(), view::Refused::TooLarge)
            }
            _ => {
                wanted.push(key);
                Read::Fetched(Vec::new())
            }
        };
        reads.push(read);
    }
    if !wanted.is_empty() {
        let got: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(wanted).query(con)?;
        let mut got = got.into_iter();
        for read in &mut reads {
            if let Read::Fetched(raw) = read {
                match got.next().flatten() {
                    Some(value) => *raw = value,
                    None => *read = Read::Missing,
                }
            }
        }
    }
    Ok(reads)
}
