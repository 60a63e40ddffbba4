//! The publisher thread: owns one Redis connection, publishes what the loop
//! queued, and keeps presence: this node's counts (applying the loop's
//! deltas, see [`super::presence`]), its change log and entry, and the
//! others' view, following their logs (see [`super::changes`]).
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

use super::changes::{self, Followed, Log, Position, Step};
use super::history;
use super::presence::{Applied, Counts};
use super::view::{self, Entry, View};
use super::wire::Publication;
use super::{Bridge, Event, Job, Reporter, BACKOFF_MAX, BACKOFF_MIN, PIPELINE_MAX};

/// Most other nodes one node follows (a bound on what a forged node set
/// costs); past it, nodes are left out and counted.
const MAX_NODES: usize = 1000;
/// Node ids looked at in the node set per refresh (ids without a presence
/// key are removed as they are found, so a forged set shrinks).
const NODES_SCANNED: usize = 10 * MAX_NODES;
/// Lists at most `ARGV[2]` ids of the set `KEYS[1]` that have a presence
/// key (`ARGV[1]` .. id), looking at no more than `ARGV[3]` of them and
/// removing those without one; returns `{ids, live ids left out}`.
const NODES_SCRIPT: &str = "local cap, budget = tonumber(ARGV[2]), tonumber(ARGV[3]) \
local live, over, seen, cursor = {}, 0, 0, '0' \
repeat \
local r = redis.call('SSCAN', KEYS[1], cursor, 'COUNT', 100) \
cursor = r[1] \
for _, id in ipairs(r[2]) do \
seen = seen + 1 \
if redis.call('EXISTS', ARGV[1] .. id) == 1 then \
if #live < cap then live[#live + 1] = id else over = over + 1 end \
else redis.call('SREM', KEYS[1], id) end \
end \
until cursor == '0' or seen >= budget \
return {live, over}";
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
        state.known.clear();
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
        .arg(names.log_key(&bridge.node_id))
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
    /// This run's change log: sequence numbers, and when to write the
    /// entry whole.
    log: Log,
    /// A new connection: the entry is written whole, the log deleted
    /// first (Redis may have lost it, or kept a stale one).
    fresh_connection: bool,
    /// The other nodes as last read.
    known: HashMap<String, Known>,
    /// The newest version of each node id's whole entry read, kept after
    /// it goes (a bounded memory): an older one is a replay.
    newest: HashMap<String, Position>,
    /// Entries the last view replaced: dropped here, at the next refresh,
    /// rather than on the loop thread (which by then holds the new view).
    retired: Vec<Arc<Entry>>,
    /// The other live nodes' ids, kept across reconnects: logged as they
    /// appear and go.
    peers: BTreeSet<String>,
    /// Another run held our node_id lock at the last refresh (logged once).
    lock_lost: bool,
    /// The hashes of the scripts loaded on this connection.
    scripts: Scripts,
}

/// The hashes of [`NODES_SCRIPT`] and [`changes::READ_SCRIPT`] (`SCRIPT
/// LOAD`), run with `EVALSHA`.
#[derive(Default)]
struct Scripts {
    nodes: String,
    read: String,
}

/// What this node knows of another one.
#[derive(Default)]
struct Known {
    /// Its presence, followed through its log.
    followed: Option<Followed>,
    /// The version of its whole entry last refused: not read again until
    /// it changes.
    refused: Option<String>,
    /// The sequence number of a change in its log last refused (counted
    /// once).
    bad_change: Option<u64>,
}

impl Presence {
    /// Logs what changed in our presence (or writes it whole when due),
    /// extends its expiry, lists the live nodes, follows their changes and
    /// sends the loop a view when something changed.
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
        let log_key = names.log_key(&bridge.node_id);
        let fresh = self.fresh_connection;
        if fresh {
            // Run by their hash from now on: their text costs Redis once
            // per connection (a Redis that forgot them fails the refresh,
            // and the next connection loads them again).
            let mut load = |script: &str| -> RedisResult<String> {
                redis::cmd("SCRIPT").arg("LOAD").arg(script).query(con)
            };
            self.scripts = Scripts {
                nodes: load(NODES_SCRIPT)?,
                read: load(changes::READ_SCRIPT)?,
            };
        }
        let mut pipe = redis::pipe();
        if fresh {
            pipe.cmd("DEL").arg(&log_key).ignore();
        }
        // Taken under the lock, applied and encoded outside it.
        let pending = bridge.pending().take();
        match pending.map(|p| self.counts.apply(p)) {
            Some(Applied::Delta(delta)) => {
                let seq = self.log.seq() + 1;
                let at = Position {
                    epoch: bridge.epoch,
                    seq,
                };
                let sealed = view::seal(&delta.encode(), &at.version(), bridge.key(), &log_key);
                self.log.append(sealed.len());
                // Before the whole entry: a reader that sees the entry's
                // new version finds the change that led to it.
                pipe.cmd("XADD")
                    .arg(&log_key)
                    .arg(Position::stream_id(seq))
                    .arg("d")
                    .arg(sealed)
                    .ignore();
            }
            Some(Applied::Whole) => self.log.unlogged(),
            Some(Applied::Nothing) | None => {}
        }
        let whole = fresh || self.log.whole_due();
        if whole {
            self.write_whole(bridge, &mut pipe, fresh, ttl_ms);
        } else {
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms);
        }
        pipe.cmd("PEXPIRE").arg(&log_key).arg(ttl_ms).ignore();
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
        pipe.cmd("EVALSHA")
            .arg(&self.scripts.nodes)
            .arg(1)
            .arg(names.nodes_key())
            .arg(names.node_key(""))
            .arg(MAX_NODES + 1)
            .arg(NODES_SCANNED);
        // On error the connection is made again, and a new connection
        // writes the entry whole: nothing is lost with a failed write.
        let (first, locked, (members, left_out)): (redis::Value, i64, (Vec<String>, u64)) =
            pipe.query(con)?;
        if left_out > 0 {
            log::debug!("cluster: {left_out} live nodes past {MAX_NODES} left out");
            bridge
                .stats
                .nodes_refused
                .fetch_add(left_out, Ordering::Relaxed);
        }
        self.fresh_connection = false;
        if locked != 1 && !self.lock_lost {
            log::error!(
                "cluster: another live node runs with node_id {:?}; give each node its own cluster.node_id",
                bridge.node_id
            );
        }
        self.lock_lost = locked != 1;
        if !whole && first == redis::Value::Int(0) {
            // Our key vanished (Redis restarted, flushed or evicted it):
            // write it whole again, the log with it.
            let mut pipe = redis::pipe();
            pipe.cmd("DEL").arg(&log_key).ignore();
            self.write_whole(bridge, &mut pipe, true, ttl_ms);
            pipe.query::<()>(con)?;
        }
        let others: Vec<String> = members
            .into_iter()
            .filter(|id| *id != bridge.node_id)
            .collect();
        let changed = self.follow(bridge, con, &others)?;
        self.log_peers();
        // What the previous view held, now surely replaced on the loop.
        self.retired.clear();
        if changed {
            let nodes = self
                .known
                .iter()
                .filter_map(|(id, known)| {
                    Some((id.clone(), known.followed.as_ref()?.entry.clone()))
                })
                .collect();
            let _ = reporter
                .handle
                .send_from_bridge(Event::View(View::shared(nodes)));
        }
        Ok(())
    }

    /// Adds writing our entry whole to `pipe` (at the log's sequence
    /// number), and trimming the log to what readers of the previous whole
    /// entry may still need.
    fn write_whole(
        &mut self,
        bridge: &Bridge,
        pipe: &mut redis::Pipeline,
        fresh: bool,
        ttl_ms: u64,
    ) {
        let names = &bridge.names;
        let key = names.node_key(&bridge.node_id);
        let at = Position {
            epoch: bridge.epoch,
            seq: self.log.seq(),
        };
        let sealed = view::seal(&self.counts.encode(), &at.version(), bridge.key(), &key);
        let keep = self.log.written_whole(sealed.len(), fresh);
        pipe.cmd("SET").arg(&key).arg(sealed).arg("PX").arg(ttl_ms);
        if !fresh {
            pipe.cmd("XTRIM")
                .arg(names.log_key(&bridge.node_id))
                .arg("MINID")
                .arg(Position::stream_id(keep))
                .ignore();
        }
    }

    /// Reads what changed in the other nodes' presence: for each, its
    /// entry's length and version and, for one followed, its log after
    /// the last change applied (one pipeline); then, in one `MGET`, the
    /// entries to read whole (new nodes, gaps) within
    /// [`view::MAX_ENTRY_BYTES`]. True when the view changed.
    fn follow(
        &mut self,
        bridge: &Bridge,
        con: &mut Connection,
        others: &[String],
    ) -> RedisResult<bool> {
        let names = &bridge.names;
        let stats = &bridge.stats;
        let refused = |why: view::Refused, id: &str| {
            log::debug!("cluster: presence of node {id:?} ignored: {why:?}");
            stats.presence_refused.fetch_add(1, Ordering::Relaxed);
        };
        let mut pipe = redis::pipe();
        for id in others {
            let key = names.node_key(id);
            pipe.cmd("STRLEN").arg(&key);
            pipe.cmd("GETRANGE")
                .arg(&key)
                .arg(0)
                .arg(view::HEADER_MAX - 1);
            if let Some(at) = self.at(id) {
                pipe.cmd("EVALSHA")
                    .arg(&self.scripts.read)
                    .arg(1)
                    .arg(names.log_key(id))
                    .arg(format!("({}", Position::stream_id(at.seq)))
                    .arg(changes::READ_COUNT)
                    .arg(view::MAX_ENTRY_BYTES);
            }
        }
        let replies: Vec<redis::Value> = if others.is_empty() {
            Vec::new()
        } else {
            pipe.query(con)?
        };
        let mut replies = replies.iter();
        let mut changed = false;
        let mut live = HashMap::with_capacity(others.len());
        let mut wanted: Vec<(String, String)> = Vec::new();
        for id in others {
            let len: usize = replies
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or(0);
            let head: Vec<u8> = replies
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            let logged = match self.at(id) {
                Some(_) => replies.next().map(changes::logged).unwrap_or_default(),
                None => Vec::new(),
            };
            let mut known = self.known.remove(id).unwrap_or_default();
            if len == 0 {
                // Expired or removed: the node is gone.
                changed |= known.followed.is_some();
                if let Some(followed) = known.followed {
                    self.retired.push(followed.entry);
                }
                continue;
            }
            // No header: "" (refused, and not counted again until it changes).
            let version = view::version(&head).unwrap_or_default().to_owned();
            let whole = Position::parse(&version);
            let mut reread = true;
            if let (Some(followed), Some(whole)) = (known.followed.as_mut(), whole) {
                let seqs: Vec<u64> = logged.iter().map(|(seq, _)| *seq).collect();
                reread = match changes::step(followed.at, whole, &seqs) {
                    Step::InSync => false,
                    Step::Gap => true,
                    Step::Apply => {
                        let before = Arc::clone(&followed.entry);
                        let log_key = names.log_key(id);
                        let mut failed = false;
                        for (seq, raw) in &logged {
                            let place = Position {
                                epoch: followed.at.epoch,
                                seq: *seq,
                            };
                            let applied = raw
                                .as_deref()
                                .ok_or(view::Refused::TooLarge)
                                .and_then(|raw| {
                                    changes::open_delta(raw, bridge.key(), &log_key, place)
                                })
                                .and_then(|delta| followed.apply(*seq, &delta));
                            if let Err(why) = applied {
                                // Counted once, however often it is met.
                                if known.bad_change != Some(*seq) {
                                    refused(why, id);
                                    known.bad_change = Some(*seq);
                                }
                                failed = true;
                                break;
                            }
                            known.bad_change = None;
                        }
                        if !Arc::ptr_eq(&before, &followed.entry) {
                            changed = true;
                            self.retired.push(before);
                        }
                        // Past a refused change, only a whole entry written
                        // since helps; an older one would lose what was
                        // applied (the node writes it whole again when its
                        // own next change finds that place taken).
                        failed && whole.seq > followed.at.seq
                    }
                };
            }
            if reread && known.refused.as_deref() != Some(version.as_str()) {
                let why = match (whole, len) {
                    (None, _) => Some(view::Refused::Malformed),
                    (_, len) if len > view::MAX_ENTRY_BYTES => Some(view::Refused::TooLarge),
                    _ => None,
                };
                match why {
                    Some(why) => {
                        refused(why, id);
                        known.refused = Some(version);
                        changed |= known.followed.is_some();
                        if let Some(followed) = known.followed.take() {
                            self.retired.push(followed.entry);
                        }
                    }
                    None => wanted.push((id.clone(), version)),
                }
            }
            live.insert(id.clone(), known);
        }
        if !wanted.is_empty() {
            let keys: Vec<String> = wanted.iter().map(|(id, _)| names.node_key(id)).collect();
            let got: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(keys).query(con)?;
            for ((id, version), raw) in wanted.into_iter().zip(got) {
                let Some(known) = live.get_mut(&id) else {
                    continue;
                };
                let Some(raw) = raw else {
                    // Gone since its length was read.
                    changed |= known.followed.is_some();
                    live.remove(&id);
                    continue;
                };
                let opened =
                    view::open(&raw, bridge.key(), &names.node_key(&id)).and_then(|entry| {
                        // The version read with the entry (it may have changed
                        // since its header was read).
                        let at = view::version(&raw)
                            .and_then(Position::parse)
                            .ok_or(view::Refused::Malformed)?;
                        // A node writes its whole entry at growing versions.
                        if self.newest.get(&id).is_some_and(|newest| at < *newest) {
                            return Err(view::Refused::Replayed);
                        }
                        Ok(Followed::new(at, entry))
                    });
                match opened {
                    Ok(followed) => {
                        self.newest.insert(id.clone(), followed.at);
                        if let Some(old) = known.followed.replace(followed) {
                            self.retired.push(old.entry);
                        }
                        known.refused = None;
                        changed = true;
                    }
                    Err(why) => {
                        refused(why, &id);
                        known.refused = Some(version);
                        // A replay leaves what was read before in place; an
                        // entry that is not one takes the node out of the view.
                        if why != view::Refused::Replayed {
                            if let Some(old) = known.followed.take() {
                                self.retired.push(old.entry);
                                changed = true;
                            }
                        }
                    }
                }
            }
        }
        let stale: Vec<&String> = others.iter().filter(|id| !live.contains_key(*id)).collect();
        if !stale.is_empty() {
            redis::cmd("SREM")
                .arg(names.nodes_key())
                .arg(stale)
                .query::<()>(con)?;
        }
        // Whatever is left of the last look is gone now.
        for (_, known) in self.known.drain() {
            if let Some(followed) = known.followed {
                changed = true;
                self.retired.push(followed.entry);
            }
        }
        self.known = live;
        if self.newest.len() > 4 * MAX_NODES {
            self.newest.clear();
        }
        Ok(changed)
    }

    /// Where this node stands in `id`'s log, if it follows it.
    fn at(&self, id: &str) -> Option<Position> {
        Some(self.known.get(id)?.followed.as_ref()?.at)
    }

    /// One log line per node that joined or left since the last look.
    fn log_peers(&mut self) {
        let live = &self.known;
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
