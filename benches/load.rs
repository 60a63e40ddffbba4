//! Load bench for wshub (`cargo bench --bench load [-- OPTIONS]`): drives the real
//! `wshub` binary, and optionally the peer servers from shared/peers, with a
//! raw-mio WebSocket client and prints the raw per-run numbers followed by one
//! markdown table (medians over runs, a wshub/peer ratio column per peer, and a
//! column for the built-in ceiling server that shows the client's own limit).
//!
//! Options: `--peer node|go|rust|none` (repeatable or comma-separated; default
//! node and rust), `--runs N`, `--quick` (small N, short phases: a smoke run),
//! `--only upgrade,fanout,serial,lone,sustained,echo,relay,flood`, `--no-wshub`,
//! `--wshub PATH`, `--baseline PATH` (a second wshub binary measured in the
//! same run, e.g. a build of main: before/after ratios), `--no-ceiling`,
//! `--window W`, `--via ws|http` (sustained sender path), `--conns N1,N2`
//! (connection counts instead of 10,000 and 19,000), `--compression` (clients
//! offer permessage-deflate like a browser, and a `wshub-deflate` column runs
//! the binary with `compression: true`; with `--baseline` also a
//! `wshub-base-deflate` column), `--sse` (a `wshub-sse` column: the
//! same binary, its receivers Server-Sent Events streams instead of
//! WebSockets), `--history` (a `wshub-history` column: the same binary with
//! `history.size: 100`, its receivers not recovering: the cost of keeping
//! history), `--size B` (broadcast body bytes,
//! default 100), `--sus-rx N` (sustained receivers, default 1,000),
//! `--cluster` (instead of the above: one node against three nodes over a
//! private `redis-server`; relay and REST broadcast, see `load/cluster.rs`).
//!
//! The servers run pinned to core 0 (`taskset -c 0`), the bench on core 1. Every
//! child is killed by PID when the bench ends, also on error. Traffic goes to
//! 127.0.0.0/8 only. Run without `--bench` (as `cargo test --benches` does),
//! the binary runs its self-checks and a short smoke against the ceiling server.
//!
//! # Layout
//! - `load/client.rs`: the mio client; `load/wire.rs`: frames and message format;
//! - `load/scenario.rs`: the run of phases and memory figures; `load/open.rs`:
//!   upgrades; `load/broadcast.rs`: fan-out and sustained; `load/serial.rs`: the
//!   serial HTTP trigger and the lone push; `load/echo.rs`: echo, flood;
//!   `load/relay.rs`: pairs chatting with `to`;
//! - `load/server.rs`: child servers;
//! - `load/cluster.rs`: the cluster scenario (three nodes, one Redis);
//! - `load/ceiling.rs`: the trivial server; `load/stats.rs`: percentiles, rusage, RSS;
//! - `load/report.rs`: the table; `load/error.rs`: the error type.

#[path = "load/broadcast.rs"]
mod broadcast;
#[path = "load/ceiling.rs"]
mod ceiling;
#[path = "load/client.rs"]
mod client;
#[path = "load/cluster.rs"]
mod cluster;
#[path = "load/echo.rs"]
mod echo;
#[path = "load/error.rs"]
mod error;
#[path = "load/open.rs"]
mod open;
#[path = "load/relay.rs"]
mod relay;
#[path = "load/report.rs"]
mod report;
#[path = "load/scenario.rs"]
mod scenario;
#[path = "load/serial.rs"]
mod serial;
#[path = "load/server.rs"]
mod server;
#[path = "load/stats.rs"]
mod stats;
#[path = "load/wire.rs"]
mod wire;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use error::{BenchError, Result};
use scenario::{Phases, Plan, Via};
use server::{Flavor, Paths, ServerProc};

/// Parsed command line.
#[derive(Debug)]
struct Opts {
    servers: Vec<Flavor>,
    runs: usize,
    quick: bool,
    plan: Plan,
    wshub: Option<PathBuf>,
    baseline: Option<PathBuf>,
    serve_ceiling: Option<u16>,
    cluster: bool,
}

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the bench started (the timestamp put into `content`).
pub fn nanos_since_start() -> u64 {
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Pins the calling thread to one core (ignored when the machine has only one).
pub fn pin_to_core(core: usize) {
    // SAFETY: the cpu_set_t is zero-initialised and owned here; pid 0 is this thread.
    unsafe {
        if libc::sysconf(libc::_SC_NPROCESSORS_ONLN) <= core as libc::c_long {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Raises RLIMIT_NOFILE to its hard limit (19k client sockets need it).
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on a struct owned here.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

fn full_plan() -> Plan {
    Plan {
        n1: 10_000,
        n2: 19_000,
        in_flight: 512,
        fan_count: 20,
        fan_spacing: Duration::from_millis(250),
        sus_rx: 1000,
        window: 16,
        sus_time: Duration::from_secs(5),
        via: Via::Ws,
        ser_count: 200,
        ser_window: 64,
        lone_count: 50,
        relay_pairs: 500,
        relay_time: Duration::from_secs(5),
        msg_size: 100,
        echo_clients: 100,
        echo_time: Duration::from_secs(5),
        echo_size: 64,
        flood_time: Duration::from_secs(2),
        flood_conns: 100,
        settle: Duration::from_secs(1),
        phases: Phases {
            upgrade: true,
            fanout: true,
            serial: true,
            lone: true,
            sustained: true,
            echo: true,
            relay: true,
            flood: true,
        },
    }
}

fn quick_plan() -> Plan {
    Plan {
        n1: 500,
        n2: 1000,
        in_flight: 128,
        fan_count: 5,
        fan_spacing: Duration::from_millis(100),
        sus_rx: 100,
        sus_time: Duration::from_secs(1),
        echo_clients: 20,
        echo_time: Duration::from_secs(1),
        ser_count: 40,
        lone_count: 10,
        relay_pairs: 50,
        relay_time: Duration::from_secs(1),
        flood_time: Duration::from_millis(500),
        flood_conns: 10,
        settle: Duration::from_millis(300),
        ..full_plan()
    }
}

/// The command line as given, before defaults and checks.
#[derive(Default)]
struct Flags {
    quick: bool,
    cluster: bool,
    no_wshub: bool,
    no_ceiling: bool,
    peers: Vec<String>,
    runs: Option<String>,
    window: Option<String>,
    only: Option<String>,
    conns: Option<String>,
    via: Option<String>,
    wshub: Option<String>,
    baseline: Option<String>,
    serve_ceiling: Option<String>,
    compression: bool,
    sse: bool,
    history: bool,
    size: Option<String>,
    sus_rx: Option<String>,
}

fn read_flags(args: &[String]) -> Result<Flags> {
    let mut f = Flags::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| BenchError::Usage(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--bench" => {}
            "--quick" => f.quick = true,
            "--cluster" => f.cluster = true,
            "--no-wshub" => f.no_wshub = true,
            "--no-ceiling" => f.no_ceiling = true,
            "--compression" => f.compression = true,
            "--sse" => f.sse = true,
            "--history" => f.history = true,
            "--size" => f.size = Some(value()?),
            "--sus-rx" => f.sus_rx = Some(value()?),
            "--peer" => f.peers.push(value()?),
            "--runs" => f.runs = Some(value()?),
            "--window" => f.window = Some(value()?),
            "--only" => f.only = Some(value()?),
            "--conns" => f.conns = Some(value()?),
            "--via" => f.via = Some(value()?),
            "--wshub" => f.wshub = Some(value()?),
            "--baseline" => f.baseline = Some(value()?),
            "--serve-ceiling" => f.serve_ceiling = Some(value()?),
            other => return Err(BenchError::Usage(format!("unknown option {other:?}"))),
        }
    }
    Ok(f)
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let f = read_flags(args)?;
    let mut plan = if f.quick { quick_plan() } else { full_plan() };
    if let Some(s) = &f.size {
        plan.msg_size = parse_num(s, "--size")?.clamp(60, 60_000);
    }
    if let Some(n) = &f.sus_rx {
        plan.sus_rx = parse_num(n, "--sus-rx")?.clamp(1, 19_000);
    }
    if f.compression {
        client::OFFER_DEFLATE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(w) = &f.window {
        plan.window = parse_num(w, "--window")?.clamp(1, 256);
    }
    if let Some(c) = &f.conns {
        let (a, b) = c.split_once(',').unwrap_or((c, c));
        plan.n1 = parse_num(a, "--conns")?.clamp(1, 19_500);
        plan.n2 = parse_num(b, "--conns")?.clamp(plan.n1, 19_500);
    }
    plan.via = match f.via.as_deref() {
        None | Some("ws") => Via::Ws,
        Some("http") => Via::Http,
        Some(v) => return Err(BenchError::Usage(format!("--via {v}: use ws or http"))),
    };
    if let Some(list) = &f.only {
        plan.phases = parse_phases(list)?;
    }
    let serve_ceiling = match &f.serve_ceiling {
        Some(p) => Some(
            p.parse()
                .map_err(|_| BenchError::Usage(format!("--serve-ceiling {p:?}: not a port")))?,
        ),
        None => None,
    };
    Ok(Opts {
        servers: server_list(&f)?,
        runs: f
            .runs
            .as_deref()
            .map_or(Ok(1), |r| parse_num(r, "--runs"))?
            .clamp(1, 9),
        quick: f.quick,
        plan,
        wshub: f
            .wshub
            .map(PathBuf::from)
            .or_else(|| option_env!("CARGO_BIN_EXE_wshub").map(PathBuf::from)),
        baseline: f.baseline.map(PathBuf::from),
        serve_ceiling,
        cluster: f.cluster,
    })
}

/// wshub first, then the peers in the order given, then the ceiling server.
fn server_list(f: &Flags) -> Result<Vec<Flavor>> {
    let mut servers = Vec::new();
    if !f.no_wshub {
        servers.push(Flavor::Wshub);
        if f.compression {
            servers.push(Flavor::WshubDeflate);
        }
        if f.sse {
            servers.push(Flavor::WshubSse);
        }
        if f.history {
            servers.push(Flavor::WshubHistory);
        }
    }
    if f.baseline.is_some() {
        servers.push(Flavor::Baseline);
        if f.compression {
            servers.push(Flavor::BaselineDeflate);
        }
    }
    // Node `ws` and rust-axum unless told otherwise (`--peer none`).
    let default_peers = ["node".to_string(), "rust".to_string()];
    let peers = if f.peers.is_empty() {
        &default_peers[..]
    } else {
        &f.peers[..]
    };
    for p in peers.iter().flat_map(|p| p.split(',')) {
        if p == "none" {
            continue;
        }
        let flavor = Flavor::parse_peer(p)
            .ok_or_else(|| BenchError::Usage(format!("unknown peer {p:?} (node, go, rust)")))?;
        if !servers.contains(&flavor) {
            servers.push(flavor);
        }
    }
    if !f.no_ceiling {
        servers.push(Flavor::Ceiling);
    }
    Ok(servers)
}

fn parse_num(s: &str, flag: &str) -> Result<usize> {
    s.parse()
        .map_err(|_| BenchError::Usage(format!("{flag} {s:?}: not a number")))
}

fn parse_phases(list: &str) -> Result<Phases> {
    let mut p = Phases {
        upgrade: false,
        fanout: false,
        serial: false,
        lone: false,
        sustained: false,
        echo: false,
        relay: false,
        flood: false,
    };
    for name in list.split(',') {
        match name.trim() {
            "upgrade" | "upgrades" | "memory" => p.upgrade = true,
            "fanout" | "broadcast" => p.fanout = true,
            "serial" => p.serial = true,
            "lone" => p.lone = true,
            "sustained" => p.sustained = true,
            "echo" => p.echo = true,
            "relay" => p.relay = true,
            "flood" => p.flood = true,
            other => {
                return Err(BenchError::Usage(format!(
                    "--only: unknown phase {other:?} (upgrade, fanout, serial, lone, sustained, echo, relay, flood)"
                )))
            }
        }
    }
    Ok(p)
}

fn main() {
    START.get_or_init(Instant::now);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let is = |flag: &str| args.iter().any(|a| a == flag);
    // `cargo bench` passes --bench; `cargo test --benches` does not, and may
    // pass test-harness flags this binary does not know: run the self-test then.
    if !is("--bench") && !is("--serve-ceiling") {
        std::process::exit(self_test());
    }
    let code = match parse_args(&args) {
        Ok(Opts {
            serve_ceiling: Some(port),
            ..
        }) => match ceiling::serve(port) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ceiling server: {e}");
                1
            }
        },
        Ok(o) => match bench(&o) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("load bench: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("load bench: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn bench(o: &Opts) -> Result<()> {
    let nofile = raise_nofile();
    pin_to_core(1);
    let wall = Instant::now();
    let paths = Paths::discover(o.wshub.clone(), o.baseline.clone())?;
    if o.cluster {
        let wshub = paths
            .wshub_bin
            .clone()
            .filter(|p| p.exists())
            .ok_or_else(|| BenchError::Server("no wshub binary".into()))?;
        let plan = if o.quick {
            cluster::ClusterPlan::quick()
        } else {
            cluster::ClusterPlan::full()
        };
        eprintln!(
            "[load] cluster scenario; RLIMIT_NOFILE {nofile}; runs {}",
            o.runs
        );
        let result = cluster::bench(&paths, &wshub, &plan, o.runs);
        println!("total wall time: {:.0} s", wall.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&paths.work_dir);
        return result;
    }
    let mut servers = Vec::new();
    for &f in &o.servers {
        match server::prepare(f, &paths) {
            Ok(()) => servers.push(f),
            Err(e) => eprintln!("[load] skipping {}: {e}", f.name()),
        }
    }
    if servers.is_empty() {
        return Err(BenchError::Server("no server to measure".into()));
    }
    eprintln!(
        "[load] RLIMIT_NOFILE {nofile}; servers {:?}; runs {}; quick {}",
        servers.iter().map(|f| f.name()).collect::<Vec<_>>(),
        o.runs,
        o.quick
    );
    let mut results: Vec<(Flavor, Vec<scenario::RunResult>)> =
        servers.iter().map(|&f| (f, Vec::new())).collect();
    let mut notes = Vec::new();
    for run in 1..=o.runs {
        for (flavor, per_run) in results.iter_mut() {
            let t = Instant::now();
            let res = measure_one(*flavor, &paths, &o.plan, &mut notes);
            println!(
                "raw run {run}/{} {:<9} ({:.0} s): {}",
                o.runs,
                flavor.name(),
                t.elapsed().as_secs_f64(),
                report::raw_line(&res)
            );
            per_run.push(res);
        }
    }
    println!();
    println!("{}", report::table(&results, &o.plan, o.runs));
    if !notes.is_empty() {
        println!("notes:");
        notes.dedup();
        for n in notes.iter().take(40) {
            println!("- {n}");
        }
    }
    println!("total wall time: {:.0} s", wall.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&paths.work_dir);
    Ok(())
}

fn measure_one(
    flavor: Flavor,
    paths: &Paths,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> scenario::RunResult {
    let sse = flavor == Flavor::WshubSse;
    client::RECEIVE_SSE.store(sse, std::sync::atomic::Ordering::Relaxed);
    let mut srv = match ServerProc::start(flavor, paths) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("[load] {}: {e}", flavor.name());
            notes.push(format!("{}: start: {e}", flavor.name()));
            return scenario::RunResult::new();
        }
    };
    eprintln!(
        "[load] {} started, pid {} on {}",
        flavor.name(),
        srv.pid,
        srv.addr
    );
    let res = scenario::run_all(&mut srv, plan, notes);
    for line in srv.log_complaints() {
        notes.push(format!("{} log: {line}", flavor.name()));
    }
    res
}

/// Pure checks plus a tiny run against the ceiling server.
fn self_test() -> i32 {
    let mut passed = 0;
    let mut failed = 0;
    for r in [wire::self_test(), stats::self_test()] {
        match r {
            Ok(n) => passed += n,
            Err(e) => {
                eprintln!("{e}");
                failed += 1;
            }
        }
    }
    match smoke() {
        Ok(()) => passed += 1,
        Err(e) => {
            eprintln!("load smoke against the ceiling server failed: {e}");
            failed += 1;
        }
    }
    println!("load bench self-test (wire, stats, smoke against the ceiling server)");
    println!("self-test: {passed} passed, {failed} failed");
    i32::from(failed > 0)
}

fn smoke() -> Result<()> {
    let paths = Paths::discover(None, None)?;
    let mut plan = quick_plan();
    plan.n1 = 50;
    plan.n2 = 60;
    plan.fan_count = 2;
    plan.sus_rx = 10;
    plan.echo_clients = 4;
    plan.sus_time = Duration::from_millis(200);
    plan.echo_time = Duration::from_millis(200);
    plan.flood_time = Duration::from_millis(200);
    plan.flood_conns = 2;
    plan.settle = Duration::from_millis(50);
    let mut notes = Vec::new();
    let res = measure_one(Flavor::Ceiling, &paths, &plan, &mut notes);
    let _ = std::fs::remove_dir_all(&paths.work_dir);
    let want = [
        "upg10k",
        "fan_all_p99",
        "ser10k_dps",
        "ser1k_dps",
        "sus_dps",
        "lone_p99",
        "echo_rps",
        "flood_mps",
    ];
    match want.iter().find(|k| !res.contains_key(*k)) {
        None => Ok(()),
        Some(k) => Err(BenchError::Scenario(format!("no {k}; notes: {notes:?}"))),
    }
}
