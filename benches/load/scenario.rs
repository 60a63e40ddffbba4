//! The measurements, run against one started server: upgrades/s and idle memory
//! at N1 and N2 connections, broadcast fan-out latency to N1 receivers, the
//! serial-trigger broadcast rate to N1 and to `sus_rx` receivers, sustained
//! broadcast deliveries/s, a lone push at low load, echo round trips, relay
//! between pairs, and (ceiling server only) the client's raw receive rate. Every loop is bounded in count and time.
//! Touches only the server through its sockets and /proc, and this thread's rusage.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::broadcast::{fanout, sustained, Fan};
use crate::client::Client;
use crate::echo::{echo, flood};
use crate::error::{BenchError, Result};
use crate::open::{open_http, open_many};
use crate::relay::relay;
use crate::serial::{lone, record, serial, serial_small};
use crate::server::{Flavor, ServerProc};
use crate::stats;

/// How the sustained-broadcast sender reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A WebSocket client sends `{"type":"chat","content":..}` (no `to`).
    Ws,
    /// `POST /api/ws/broadcast` on a keep-alive connection.
    Http,
}

/// Which phases run.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Upgrades/s, RSS and heap per idle connection.
    pub upgrade: bool,
    /// Broadcast fan-out latency to N1 receivers.
    pub fanout: bool,
    /// Serial-trigger broadcasts (one POST at a time) to N1 and `sus_rx` receivers.
    pub serial: bool,
    /// A lone push to one receiver at low load.
    pub lone: bool,
    /// Sustained broadcast deliveries/s.
    pub sustained: bool,
    /// Echo round trips.
    pub echo: bool,
    /// Pairs chatting with `to` (not against the ceiling server: it has no `to`).
    pub relay: bool,
    /// Raw receive rate against the ceiling server.
    pub flood: bool,
}

/// Sizes and durations of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// First connection count (also the fan-out receivers).
    pub n1: usize,
    /// Second connection count.
    pub n2: usize,
    /// Upgrade handshakes in flight at most.
    pub in_flight: usize,
    /// Broadcasts in the fan-out phase.
    pub fan_count: usize,
    /// Minimum spacing between fan-out broadcasts.
    pub fan_spacing: Duration,
    /// Receivers in the sustained phase.
    pub sus_rx: usize,
    /// Outstanding broadcasts at most in the sustained phase.
    pub window: usize,
    /// Sustained phase length.
    pub sus_time: Duration,
    /// Sustained sender path.
    pub via: Via,
    /// Broadcasts in a serial-trigger run.
    pub ser_count: usize,
    /// Serial trigger: broadcasts not yet received by everyone, at most.
    pub ser_window: usize,
    /// POSTs in the lone-push measurement.
    pub lone_count: usize,
    /// Relay: pairs of clients.
    pub relay_pairs: usize,
    /// Relay phase length.
    pub relay_time: Duration,
    /// Bytes of each broadcast/chat body (fan-out and sustained).
    pub msg_size: usize,
    /// Echo clients.
    pub echo_clients: usize,
    /// Echo phase length.
    pub echo_time: Duration,
    /// Echo message size.
    pub echo_size: usize,
    /// Flood phase length and connections.
    pub flood_time: Duration,
    /// Connections in the flood phase.
    pub flood_conns: usize,
    /// Wait for memory to settle before reading RSS.
    pub settle: Duration,
    /// Phases to run.
    pub phases: Phases,
}

/// Metric key → value for one server and one run.
pub type RunResult = BTreeMap<&'static str, f64>;

/// Runs every selected phase against `srv`; failures of one phase are noted
/// in `notes` and the others still run (unless the server died).
pub fn run_all(srv: &mut ServerProc, plan: &Plan, all_notes: &mut Vec<String>) -> RunResult {
    let mut notes = Vec::new();
    let res = run_phases(srv, plan, &mut notes);
    let name = srv.flavor.name();
    all_notes.extend(notes.into_iter().map(|n| format!("{name}: {n}")));
    res
}

fn run_phases(srv: &mut ServerProc, plan: &Plan, notes: &mut Vec<String>) -> RunResult {
    let mut res = RunResult::new();
    if let Some(b) = srv.listen_backlog() {
        res.insert("backlog", b as f64);
    }
    let name = srv.flavor.name();
    let note = |phase: &str, e: BenchError, notes: &mut Vec<String>| {
        eprintln!("[load] {name}: {phase} failed: {e}");
        notes.push(format!("{phase}: {e}"));
    };
    if let Err(e) = warm_up(srv.addr, plan) {
        note("warm-up", e, notes);
    }
    srv.settle(plan.settle, plan.settle * 5);
    let p = plan.phases;
    if p.upgrade || p.fanout || p.serial {
        if let Err(e) = conn_phases(srv, plan, &mut res, notes) {
            note("upgrade/fan-out", e, notes);
        }
    }
    let no_to = srv.flavor == Flavor::Ceiling;
    let steps: [(bool, &str, PhaseFn); 6] = [
        (p.serial, "serial (small)", serial_small),
        (p.sustained, "sustained", sustained),
        (p.lone, "lone push", lone),
        (p.echo, "echo", echo),
        (p.relay && !no_to, "relay", relay),
        (p.flood && srv.flavor == Flavor::Ceiling, "flood", flood),
    ];
    for (on, phase, f) in steps {
        if !on {
            continue;
        }
        srv.settle(Duration::from_millis(300), Duration::from_secs(5));
        if let Err(e) = srv.check_alive() {
            note(phase, e, notes);
            break;
        }
        if let Err(e) = f(srv.addr, plan, &mut res, notes) {
            note(phase, e, notes);
        }
    }
    if let Err(e) = srv.check_alive() {
        note("end of run", e, notes);
    }
    if let Some(l) = stats::load_avg() {
        res.insert("loadavg", l);
    }
    res
}

type PhaseFn = fn(SocketAddr, &Plan, &mut RunResult, &mut Vec<String>) -> Result<()>;

fn warm_up(addr: SocketAddr, plan: &Plan) -> Result<()> {
    let mut small = plan.clone();
    small.fan_count = 3;
    small.fan_spacing = Duration::from_millis(20);
    let mut c = Client::new(addr)?;
    let opened = open_many(&mut c, 100.min(plan.n1), 64, &mut Vec::new())?;
    let http = open_http(&mut c)?;
    fanout(&mut c, opened.opened, http, &small, &mut Vec::new())?;
    drop(c);
    let mut res = RunResult::new();
    small.echo_clients = 10;
    small.echo_time = Duration::from_millis(200);
    echo(addr, &small, &mut res, &mut Vec::new())
}

/// Upgrades to N1 (RSS, heap), fan-out to them, then up to N2 (RSS, heap).
fn conn_phases(
    srv: &mut ServerProc,
    plan: &Plan,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let (rss0, heap0) = (srv.rss_kib(), srv.heap_bytes());
    let mut c = Client::new(srv.addr)?;
    let cpu0 = stats::thread_cpu();
    let drops0 = stats::listen_drops();
    let t0 = Instant::now();
    let first = open_many(&mut c, plan.n1, plan.in_flight, notes)?;
    let cpu_share = stats::cpu_share(cpu0, stats::thread_cpu(), t0.elapsed());
    res.insert("upg10k", first.rate());
    insert_drops(res, "drops10k", drops0);
    if let Some(v) = cpu_share {
        res.insert("upg_cpu", v);
    }
    srv.settle(plan.settle, plan.settle * 5);
    srv.check_alive()?;
    memory_at(srv, first.opened, (rss0, heap0), ("rss10k", "heap10k"), res);
    if plan.phases.fanout || plan.phases.serial {
        let http = open_http(&mut c)?;
        if plan.phases.fanout {
            let ticks = stats::proc_cpu_ticks(srv.pid);
            let mut fan = fanout(&mut c, first.opened, http, plan, notes)?;
            record_fan(&mut fan, res);
            let deliveries = plan.fan_count * first.opened;
            insert_server_cpu(srv, ticks, deliveries, "fan_srv_us", res);
        }
        if plan.phases.serial {
            let ticks = stats::proc_cpu_ticks(srv.pid);
            let s = serial(&mut c, http, first.opened, plan, notes)?;
            record(&s, ["ser10k_dps", "ser10k_p99", "ser10k_cpu"], res);
            let deliveries = plan.ser_count * first.opened;
            insert_server_cpu(srv, ticks, deliveries, "ser10k_srv_us", res);
        }
    }
    if plan.phases.upgrade && plan.n2 > plan.n1 {
        let drops0 = stats::listen_drops();
        let more = open_many(&mut c, plan.n2 - plan.n1, plan.in_flight, notes)?;
        res.insert("upg19k", more.rate());
        insert_drops(res, "drops19k", drops0);
        srv.settle(plan.settle, plan.settle * 5);
        srv.check_alive()?;
        let http_conns = plan.phases.fanout || plan.phases.serial;
        let total = c.live().saturating_sub(usize::from(http_conns));
        memory_at(srv, total, (rss0, heap0), ("rss19k", "heap19k"), res);
    }
    c.close_all();
    Ok(())
}

fn record_fan(fan: &mut Fan, res: &mut RunResult) {
    if let Some(v) = stats::cpu_share(Duration::ZERO, fan.busy_cpu, fan.busy_wall) {
        res.insert("fan_cpu", v);
    }
    if let Some(v) = fan.wire_bytes {
        res.insert("fan_bytes", v);
    }
    let quantiles = [("fan_all_p50", 0.5), ("fan_all_p99", 0.99)];
    for (key, p) in quantiles {
        if let Some(v) = fan.all.pct_ms(p) {
            res.insert(key, v);
        }
    }
    for (key, p) in [("fan_rx_p50", 0.5), ("fan_rx_p99", 0.99)] {
        if let Some(v) = fan.rx.pct_ms(p) {
            res.insert(key, v);
        }
    }
}

/// The server's CPU time per delivery in µs since `ticks_before` (clock
/// ticks of 10 ms, so only phases of a second or more give a useful figure).
fn insert_server_cpu(
    srv: &ServerProc,
    ticks_before: Option<u64>,
    deliveries: usize,
    key: &'static str,
    res: &mut RunResult,
) {
    if let (Some(a), Some(b)) = (ticks_before, stats::proc_cpu_ticks(srv.pid)) {
        if deliveries > 0 {
            res.insert(
                key,
                b.saturating_sub(a) as f64 * 10_000.0 / deliveries as f64,
            );
        }
    }
}

fn insert_drops(res: &mut RunResult, key: &'static str, before: Option<u64>) {
    if let (Some(a), Some(b)) = (before, stats::listen_drops()) {
        res.insert(key, b.saturating_sub(a) as f64);
    }
}

fn memory_at(
    srv: &ServerProc,
    n: usize,
    base: (Option<u64>, Option<u64>),
    keys: (&'static str, &'static str),
    res: &mut RunResult,
) {
    if n == 0 {
        return;
    }
    if let (Some(before), Some(after)) = (base.0, srv.rss_kib()) {
        res.insert(keys.0, (after as f64 - before as f64) / n as f64);
    }
    if let (Some(before), Some(after)) = (base.1, srv.heap_bytes()) {
        res.insert(keys.1, (after as f64 - before as f64) / n as f64);
    }
}

/// Keeps reading (and discarding) until `until`.
pub fn drain_until(c: &mut Client, until: Instant) -> Result<()> {
    for _ in 0..10_000 {
        let now = Instant::now();
        if now >= until {
            break;
        }
        c.poll(until - now, |_| {})?;
    }
    Ok(())
}
