//! The cluster scenario (`--cluster`): the same three measurements against
//! one wshub node (cluster off) and against three nodes over one private
//! Redis, side by side in one run:
//!
//! - relay at max rate: P pairs (sender → `to` its receiver), each pair's
//!   receiver on another node than its sender, at most W messages in flight
//!   per pair; completed messages/s, latency p50/p99, loss;
//! - relay at a steady 10k messages/s over the same pairs: p50/p99, loss;
//! - a REST broadcast (posted to the first node) to 10k sessions spread over
//!   the nodes, timed until every session has it: p50/p99;
//! - connects to the first node, each for a new user: latency p50/p99 of
//!   one at a time (request written → 101 read), then a storm of 10k with
//!   512 in flight: upgrades/s and the time until the last 101. In the
//!   cluster a 101 is written only once the user's channel is subscribed,
//!   so that last 101 is the moment every session is subscribed.
//!
//! Every server (nodes and Redis) is pinned to core 0 like the single node,
//! the client to core 1, so the columns compare the same CPU budget; Redis's
//! and the nodes' CPU share per phase come from /proc. Children die with the
//! bench (PR_SET_PDEATHSIG) and are killed by PID on drop. Loopback only.

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broadcast::fanout;
use crate::client::{Client, Event};
use crate::error::{BenchError, Result};
use crate::open::{open_http, open_path};
use crate::scenario::{drain_until, Plan, RunResult};
use crate::server::{http_get, Paths};
use crate::stats::{self, Samples};
use crate::wire;

/// Sizes and durations of the cluster scenario.
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// Sender/receiver pairs in the relay phases.
    pub pairs: usize,
    /// Messages in flight per pair at max rate.
    pub window: usize,
    /// Length of each relay phase.
    pub relay_time: Duration,
    /// Messages per second in the steady phase.
    pub steady_rate: u64,
    /// Sessions the REST broadcast reaches.
    pub fan_sessions: usize,
    /// Broadcasts timed.
    pub fan_count: usize,
    /// Connects timed one at a time.
    pub connect_one: usize,
    /// Connects in the storm.
    pub storm: usize,
}

impl ClusterPlan {
    /// The figures BENCHMARKS.md quotes.
    pub fn full() -> ClusterPlan {
        ClusterPlan {
            pairs: 300,
            window: 4,
            relay_time: Duration::from_secs(5),
            steady_rate: 10_000,
            fan_sessions: 10_000,
            fan_count: 20,
            connect_one: 300,
            storm: 10_000,
        }
    }

    /// A smoke run.
    pub fn quick() -> ClusterPlan {
        ClusterPlan {
            pairs: 30,
            relay_time: Duration::from_secs(1),
            steady_rate: 2_000,
            fan_sessions: 600,
            fan_count: 5,
            connect_one: 50,
            storm: 1000,
            ..ClusterPlan::full()
        }
    }
}

/// A child server pinned to core 0, killed by PID on drop.
struct Proc {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proc {
    fn spawn(program: &Path, args: &[&str], port: u16, log: PathBuf) -> Result<Proc> {
        let out = fs::File::create(&log)
            .map_err(|e| BenchError::io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| BenchError::io("dup log file", e))?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).arg(program).args(args);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe; the child dies when the bench does.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::io(format!("start {}", program.display()), e))?;
        let proc = Proc {
            pid: child.id(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&proc.addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                let log = fs::read_to_string(&proc.log).unwrap_or_default();
                return Err(BenchError::Server(format!(
                    "{} did not listen on {}: {log}",
                    program.display(),
                    proc.addr
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proc)
    }

    fn cpu_ticks(&self) -> u64 {
        stats::proc_cpu_ticks(self.pid).unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers of one column: nodes, and Redis for the cluster.
struct Setup {
    nodes: Vec<Proc>,
    redis: Option<Proc>,
}

impl Setup {
    fn start(paths: &Paths, wshub: &Path, node_count: usize) -> Result<Setup> {
        let redis = if node_count > 1 {
            let port = free_port()?;
            let log = paths.work_dir.join(format!("redis-{port}.log"));
            let p = port.to_string();
            let args = [
                "--port",
                &p,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ];
            Some(Proc::spawn(Path::new("redis-server"), &args, port, log)?)
        } else {
            None
        };
        let mut nodes = Vec::new();
        for k in 0..node_count {
            let port = free_port()?;
            let cfg = paths.work_dir.join(format!("node-{port}.yaml"));
            let mut text = format!(
                "app:\n  host: \"127.0.0.1\"\n  port: {port}\nlog:\n  level: warn\nwebsocket:\n  max_connections: 20000\n  ping_period: 50s\n  pong_wait: 60s\n  message_buffer_size: 1024\n"
            );
            if let Some(r) = &redis {
                text.push_str(&format!(
                    "cluster:\n  redis: \"redis://{}/0\"\n  node_id: \"n{k}\"\n  presence_ttl: 10s\n",
                    r.addr
                ));
            }
            fs::write(&cfg, text).map_err(|e| BenchError::io("write node config", e))?;
            let log = paths.work_dir.join(format!("node-{port}.log"));
            let cfg = cfg.to_string_lossy().into_owned();
            nodes.push(Proc::spawn(wshub, &["--config", &cfg], port, log)?);
        }
        let setup = Setup { nodes, redis };
        setup.wait_status(0, Duration::from_secs(10))?;
        Ok(setup)
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Waits until every node's (cluster-wide) status counts `sessions`
    /// and, for a cluster, every node is live.
    fn wait_status(&self, sessions: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        for node in &self.nodes {
            loop {
                let (_, body) = http_get(node.addr, "/api/ws/status")?;
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let nodes_ok = self.redis.is_none() || v["nodes"] == self.nodes.len();
                if v["online_count"] == sessions && nodes_ok {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(BenchError::Scenario(format!(
                        "status never showed {sessions} sessions: {body}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// CPU ticks of (Redis, all nodes) so far.
    fn ticks(&self) -> (u64, u64) {
        let redis = self.redis.as_ref().map_or(0, Proc::cpu_ticks);
        (redis, self.nodes.iter().map(Proc::cpu_ticks).sum())
    }

    /// Records Redis's and the nodes' CPU share (cores) since `before`.
    fn record_cpu(
        &self,
        before: (u64, u64),
        wall: Duration,
        keys: (&'static str, &'static str),
        res: &mut RunResult,
    ) {
        let (r, n) = self.ticks();
        // USER_HZ is 100 ticks per second.
        let share = |ticks: u64| ticks as f64 / 100.0 / wall.as_secs_f64().max(1e-3);
        if self.redis.is_some() {
            res.insert(keys.0, share(r.saturating_sub(before.0)));
        }
        res.insert(keys.1, share(n.saturating_sub(before.1)));
    }
}

/// Runs the scenario `runs` times; prints raw lines and the table.
pub fn bench(paths: &Paths, wshub: &Path, plan: &ClusterPlan, runs: usize) -> Result<()> {
    let mut single = Vec::new();
    let mut cluster = Vec::new();
    let mut notes = Vec::new();
    for run in 1..=runs {
        for (nodes, out) in [(1, &mut single), (3, &mut cluster)] {
            let t = Instant::now();
            let res = measure(paths, wshub, nodes, plan, &mut notes)?;
            println!(
                "raw run {run}/{runs} {} node(s) ({:.0} s): {}",
                nodes,
                t.elapsed().as_secs_f64(),
                crate::report::raw_line(&res)
            );
            out.push(res);
        }
    }
    println!();
    println!("{}", table(&single, &cluster, plan, runs));
    if !notes.is_empty() {
        println!("notes:");
        notes.dedup();
        for n in notes.iter().take(40) {
            println!("- {n}");
        }
    }
    Ok(())
}

fn measure(
    paths: &Paths,
    wshub: &Path,
    nodes: usize,
    plan: &ClusterPlan,
    notes: &mut Vec<String>,
) -> Result<RunResult> {
    let setup = Setup::start(paths, wshub, nodes)?;
    let mut res = RunResult::new();
    connects(&setup, plan, &mut res, notes)?;
    std::thread::sleep(Duration::from_millis(500));
    relay(&setup, plan, Pace::Max, &mut res, notes)?;
    std::thread::sleep(Duration::from_millis(500));
    relay(&setup, plan, Pace::Steady, &mut res, notes)?;
    std::thread::sleep(Duration::from_millis(500));
    broadcast(&setup, plan, &mut res, notes)?;
    for node in &setup.nodes {
        let log = fs::read_to_string(&node.log).unwrap_or_default();
        for line in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(3)
        {
            notes.push(format!("{nodes} node(s) log: {line}"));
        }
    }
    if let Some(l) = stats::load_avg() {
        res.insert("loadavg", l);
    }
    Ok(res)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pace {
    Max,
    Steady,
}

/// The pairs' connections: sender ids, and receiver id → pair.
struct Pairs {
    senders: Vec<usize>,
    pair_of: HashMap<usize, usize>,
}

fn open_pairs(c: &mut Client, nodes: &[SocketAddr], pairs: usize, tag: &str) -> Result<Pairs> {
    let n = nodes.len();
    let mut senders = Vec::with_capacity(pairs);
    let mut pair_of = HashMap::with_capacity(pairs);
    for i in 0..pairs {
        c.set_target(nodes[i % n]);
        senders.push(c.connect_ws(&format!("/api/ws/connect?user_id={tag}s{i}"))?);
        c.set_target(nodes[(i + 1) % n]);
        pair_of.insert(
            c.connect_ws(&format!("/api/ws/connect?user_id={tag}r{i}"))?,
            i,
        );
    }
    let mut open = 0;
    let mut failed = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while open < 2 * pairs && failed.is_none() && Instant::now() < deadline {
        c.poll(Duration::from_millis(20), |ev| match ev {
            Event::Open { .. } => open += 1,
            Event::Closed { why, .. } => failed = Some(why.to_string()),
            _ => {}
        })?;
    }
    if open < 2 * pairs {
        return Err(BenchError::Scenario(format!(
            "opened {open} of {} relay connections ({failed:?})",
            2 * pairs
        )));
    }
    Ok(Pairs { senders, pair_of })
}

/// Nanoseconds from the bench's start to `at`.
fn nanos_at(at: Instant) -> u64 {
    let start = *crate::START.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

fn relay(
    setup: &Setup,
    plan: &ClusterPlan,
    pace: Pace,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let tag = if pace == Pace::Max { "m" } else { "q" };
    let nodes = setup.addrs();
    let mut c = Client::new(nodes[0])?;
    let pairs = open_pairs(&mut c, &nodes, plan.pairs, tag)?;
    setup.wait_status(2 * plan.pairs, Duration::from_secs(10))?;
    let mut outstanding = vec![0usize; plan.pairs];
    let mut lat = Samples::with_capacity(1 << 20);
    let (mut sent, mut got) = (0u64, 0u64);
    let mut lost_conn = None;
    let cpu0 = setup.ticks();
    let t0 = Instant::now();
    let end = t0 + plan.relay_time;
    let mut last_receipt = t0;
    let mut body = String::with_capacity(160);
    while Instant::now() < end {
        let due = match pace {
            Pace::Max => u64::MAX,
            Pace::Steady => (t0.elapsed().as_secs_f64() * plan.steady_rate as f64) as u64,
        };
        let mut i = (sent % plan.pairs as u64) as usize;
        let mut idle_pairs = 0;
        while sent < due && idle_pairs < plan.pairs {
            if pace == Pace::Max && outstanding[i] >= plan.window {
                idle_pairs += 1;
            } else {
                idle_pairs = 0;
                body.clear();
                let content = wire::content_string(sent, crate::nanos_since_start(), 100);
                body.push_str(&format!(
                    "{{\"type\":\"chat\",\"to\":\"{tag}r{i}\",\"content\":\"{content}\"}}"
                ));
                if !c.send_text(pairs.senders[i], body.as_bytes()) {
                    return Err(BenchError::Scenario("relay: a sender closed".into()));
                }
                outstanding[i] += 1;
                sent += 1;
            }
            i = (i + 1) % plan.pairs;
        }
        c.poll(Duration::from_millis(1), |ev| match ev {
            Event::Message { id, at, data } => {
                if let (Some(&p), Some((_, nanos))) =
                    (pairs.pair_of.get(&id), wire::parse_content_seq(data))
                {
                    lat.push(Duration::from_nanos(nanos_at(at).saturating_sub(nanos)));
                    outstanding[p] = outstanding[p].saturating_sub(1);
                    got += 1;
                    last_receipt = at;
                }
            }
            Event::Closed { why, .. } => lost_conn = Some(why.to_string()),
            _ => {}
        })?;
        if let Some(why) = lost_conn.take() {
            return Err(BenchError::Scenario(format!(
                "relay: connection closed: {why}"
            )));
        }
        if last_receipt.elapsed() > Duration::from_secs(5) {
            return Err(BenchError::Scenario(format!(
                "relay: nothing received for 5 s ({got} of {sent})"
            )));
        }
    }
    let wall = t0.elapsed();
    let got_in_time = got;
    // Stragglers: whatever has not arrived 2 s after the last send is lost.
    let drain_end = Instant::now() + Duration::from_secs(2);
    while got < sent && Instant::now() < drain_end {
        c.poll(Duration::from_millis(20), |ev| {
            if let Event::Message { id, at, data } = ev {
                if let (Some(_), Some((_, nanos))) =
                    (pairs.pair_of.get(&id), wire::parse_content_seq(data))
                {
                    lat.push(Duration::from_nanos(nanos_at(at).saturating_sub(nanos)));
                    got += 1;
                }
            }
        })?;
    }
    let keys: [&'static str; 6] = match pace {
        Pace::Max => [
            "max_rate",
            "max_p50",
            "max_p99",
            "max_loss",
            "max_redis_cpu",
            "max_nodes_cpu",
        ],
        Pace::Steady => [
            "steady_rate",
            "steady_p50",
            "steady_p99",
            "steady_loss",
            "steady_redis_cpu",
            "steady_nodes_cpu",
        ],
    };
    res.insert(keys[0], got_in_time as f64 / wall.as_secs_f64());
    if let Some(v) = lat.pct_ms(0.5) {
        res.insert(keys[1], v);
    }
    if let Some(v) = lat.pct_ms(0.99) {
        res.insert(keys[2], v);
    }
    res.insert(keys[3], sent.saturating_sub(got) as f64);
    if got > sent {
        notes.push(format!(
            "relay: {got} received for {sent} sent (duplicates)"
        ));
    }
    setup.record_cpu(cpu0, wall, (keys[4], keys[5]), res);
    c.close_all();
    setup.wait_status(0, Duration::from_secs(10))?;
    Ok(())
}

/// Connect latency one at a time, then a storm (see the module doc).
fn connects(
    setup: &Setup,
    plan: &ClusterPlan,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let node = setup.addrs()[0];
    let mut c = Client::new(node)?;
    let mut lat = Samples::with_capacity(plan.connect_one);
    for i in 0..plan.connect_one {
        let t = Instant::now();
        let id = c.connect_ws(&format!("/api/ws/connect?user_id=c1x{i}"))?;
        let (mut open, mut closed) = (None, None);
        while open.is_none() && closed.is_none() && t.elapsed() < Duration::from_secs(5) {
            c.poll(Duration::from_millis(1), |ev| match ev {
                Event::Open { id: i } if i == id => open = Some(Instant::now()),
                Event::Closed { why, .. } => closed = Some(why.to_string()),
                _ => {}
            })?;
        }
        let Some(at) = open else {
            return Err(BenchError::Scenario(format!(
                "connect {i} did not open in 5 s ({closed:?})"
            )));
        };
        lat.push(at - t);
    }
    for (key, p) in [("conn_p50", 0.5), ("conn_p99", 0.99)] {
        if let Some(v) = lat.pct_ms(p) {
            res.insert(key, v);
        }
    }
    c.close_all();
    setup.wait_status(0, Duration::from_secs(10))?;
    let cpu0 = setup.ticks();
    let t0 = Instant::now();
    let opened = open_path(&mut c, plan.storm, 512, notes, |j| {
        format!("/api/ws/connect?user_id=c2x{j}")
    })?;
    setup.record_cpu(
        cpu0,
        t0.elapsed(),
        ("storm_redis_cpu", "storm_nodes_cpu"),
        res,
    );
    if opened.secs > 0.0 {
        res.insert("storm_rate", opened.opened as f64 / opened.secs);
        res.insert("storm_all_ms", opened.secs * 1000.0);
    }
    c.close_all();
    setup.wait_status(0, Duration::from_secs(20))?;
    Ok(())
}

fn broadcast(
    setup: &Setup,
    plan: &ClusterPlan,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let nodes = setup.addrs();
    let mut c = Client::new(nodes[0])?;
    let per_node = plan.fan_sessions.div_ceil(nodes.len());
    let mut opened = 0;
    for (k, node) in nodes.iter().enumerate() {
        let n = per_node.min(plan.fan_sessions - opened);
        c.set_target(*node);
        opened += open_path(&mut c, n, 512, notes, |j| {
            format!("/api/ws/connect?user_id=b{k}x{j}")
        })?
        .opened;
    }
    c.set_target(nodes[0]);
    let http = open_http(&mut c)?;
    setup.wait_status(opened, Duration::from_secs(20))?;
    let mut fan_plan = crate::quick_plan();
    fan_plan.fan_count = plan.fan_count;
    fan_plan.fan_spacing = Duration::from_millis(250);
    let cpu0 = setup.ticks();
    let t0 = Instant::now();
    let mut fan = fanout(&mut c, opened, http, &fan_plan as &Plan, notes)?;
    setup.record_cpu(cpu0, t0.elapsed(), ("fan_redis_cpu", "fan_nodes_cpu"), res);
    for (key, p) in [("fan_p50", 0.5), ("fan_p99", 0.99)] {
        if let Some(v) = fan.all.pct_ms(p) {
            res.insert(key, v);
        }
    }
    res.insert("fan_sessions", opened as f64);
    drain_until(&mut c, Instant::now() + Duration::from_millis(100))?;
    c.close_all();
    Ok(())
}

fn table(single: &[RunResult], cluster: &[RunResult], plan: &ClusterPlan, runs: usize) -> String {
    let med = |rs: &[RunResult], key: &str| {
        let vals: Vec<f64> = rs.iter().filter_map(|r| r.get(key).copied()).collect();
        stats::median(&vals)
    };
    let show = |v: Option<f64>| v.map_or("—".to_owned(), crate::report::fmt_val);
    let rows: [(&str, &str, &str); 9] = [
        (
            "connect one at a time: p50 / p99 ms",
            "conn_p50",
            "conn_p99",
        ),
        ("connect storm: upgrades/s", "storm_rate", ""),
        (
            "connect storm: ms until the last 101 (all subscribed)",
            "storm_all_ms",
            "",
        ),
        ("relay at max rate: messages/s", "max_rate", ""),
        ("relay at max rate: p50 / p99 ms", "max_p50", "max_p99"),
        ("steady relay: messages/s achieved", "steady_rate", ""),
        ("steady relay: p50 / p99 ms", "steady_p50", "steady_p99"),
        ("REST broadcast to all: p50 / p99 ms", "fan_p50", "fan_p99"),
        ("lost messages (max / steady)", "max_loss", "steady_loss"),
    ];
    let mut out = format!(
        "## Cluster scenario (median of {runs}; {} pairs, window {}, steady {}/s, broadcast to {} sessions, {} + {} connects)\n\n| metric | 1 node | 3 nodes + Redis | 3 nodes / 1 node |\n| --- | --- | --- | --- |\n",
        plan.pairs, plan.window, plan.steady_rate, plan.fan_sessions, plan.connect_one, plan.storm
    );
    for (name, a, b) in rows {
        let cell = |rs: &[RunResult]| match b {
            "" => show(med(rs, a)),
            b => format!("{} / {}", show(med(rs, a)), show(med(rs, b))),
        };
        let ratio = match (med(single, a), med(cluster, a)) {
            (Some(s), Some(c)) if s > 0.0 => format!("{:.2}", c / s),
            _ => "—".to_owned(),
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {ratio} |\n",
            cell(single),
            cell(cluster)
        ));
    }
    let cpu = |rs: &[RunResult], redis: &str, nodes: &str| {
        format!(
            "Redis {} + nodes {}",
            show(med(rs, redis)),
            show(med(rs, nodes))
        )
    };
    for (name, redis, nodes) in [
        (
            "CPU (cores) during the storm",
            "storm_redis_cpu",
            "storm_nodes_cpu",
        ),
        ("CPU (cores) at max rate", "max_redis_cpu", "max_nodes_cpu"),
        (
            "CPU (cores) at steady rate",
            "steady_redis_cpu",
            "steady_nodes_cpu",
        ),
        (
            "CPU (cores) during the broadcasts",
            "fan_redis_cpu",
            "fan_nodes_cpu",
        ),
    ] {
        out.push_str(&format!(
            "| {name} | {} | {} | |\n",
            show(med(single, nodes)),
            cpu(cluster, redis, nodes)
        ));
    }
    out.push_str(&format!(
        "| load average at the end | {} | {} | |\n",
        show(med(single, "loadavg")),
        show(med(cluster, "loadavg"))
    ));
    out
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::io("bind a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| BenchError::io("read the free port", e))?
        .port())
}
