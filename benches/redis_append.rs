//! What the history's append costs Redis against a plain PUBLISH
//! (`cargo bench --bench redis_append [-- --messages N --runs R]`).
//!
//! Starts a private `redis-server` on a free loopback port (pinned to core
//! 1, stopped by PID), keeps one subscriber on the channel (a node always
//! has one), and sends N messages (default 50,000) of the same ~130-byte
//! envelope from one connection in pipelines of 256, as the cluster's
//! publisher thread does, in three ways: `PUBLISH` (history off), `EVAL`
//! of the append script with its text each time (what the publisher sends
//! today), and `EVALSHA` of the same script; and two for comparison:
//! the script with `MAXLEN ~` instead of exact trimming, and a script that
//! only PUBLISHes (the cost of running a script at all). Prints per way the messages/s
//! through that one connection, Redis's CPU time per message (`INFO cpu`,
//! user + system) and the round trip of one message alone (p50/p99 of
//! 2,000), then the medians of R runs (default 3) and Redis's own time per
//! command (`INFO commandstats`, the commands a script runs included).
//!
//! The script is read from `src/cluster/history.rs` at build time, so the
//! bench always measures the script the server runs. Without `--bench` (as
//! `cargo test --benches` runs it) it is a smoke run of 2,000 messages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/args.rs"]
mod args;
#[path = "support/process.rs"]
mod process;

use args::value_of;
use process::{free_port, Process};

const PIPELINE: usize = 256;
const CHANNEL: &str = "b:all";

/// The append script, as `src/cluster/history.rs` defines it.
fn append_script() -> &'static str {
    let source = include_str!("../src/cluster/history.rs");
    let start = source
        .find("pub(crate) const APPEND_SCRIPT: &str = r\"")
        .expect("APPEND_SCRIPT in src/cluster/history.rs")
        + "pub(crate) const APPEND_SCRIPT: &str = r\"".len();
    let len = source[start..].find("\n\";").expect("end of APPEND_SCRIPT") + 1;
    &source[start..start + len]
}

struct RedisServer {
    /// Stopped by its PID when the server is dropped.
    _process: Process,
    port: u16,
}

fn start_redis() -> RedisServer {
    let port = free_port().expect("free port");
    let dir = std::env::temp_dir().join(format!("wshub-redis-append-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let child = Command::new("taskset")
        .args(["-c", "1", "redis-server", "--port"])
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (apt-get install redis-server)");
    let server = RedisServer {
        _process: Process::new(child, Some(dir)),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// Redis's CPU time so far (user + system, `INFO cpu`).
fn redis_cpu(con: &mut redis::Connection) -> Duration {
    let info: String = redis::cmd("INFO").arg("cpu").query(con).expect("INFO cpu");
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Duration::from_secs_f64(field("used_cpu_user") + field("used_cpu_sys"))
}

/// Reads and drops everything published on the channel until stopped.
fn subscriber(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("subscriber");
    let subscribe = format!(
        "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{CHANNEL}\r\n",
        CHANNEL.len()
    );
    stream.write_all(subscribe.as_bytes()).expect("subscribe");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(_) => {}
            }
        }
        bytes
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Publish,
    Eval,
    EvalSha,
    /// The same script with `MAXLEN ~` (trimming by whole nodes): what
    /// exact trimming costs.
    Approximate,
    /// `PUBLISH` from a script of one call: what running a script costs.
    ScriptedPublish,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Publish => "PUBLISH",
            Way::Eval => "EVAL (script text)",
            Way::EvalSha => "EVALSHA",
            Way::Approximate => "EVALSHA, MAXLEN ~",
            Way::ScriptedPublish => "EVALSHA of PUBLISH",
        }
    }
}

/// The scripts other than the append: its `MAXLEN ~` twin and a PUBLISH.
fn approximate_script() -> String {
    append_script().replace("'MAXLEN', ARGV[2]", "'MAXLEN', '~', ARGV[2]")
}

const PUBLISH_SCRIPT: &str = "return redis.call('PUBLISH', KEYS[1], ARGV[1])";

fn command(way: Way, script: &str, sha: &str, envelope: &[u8]) -> redis::Cmd {
    let mut cmd = match way {
        Way::ScriptedPublish => {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha).arg(1).arg(CHANNEL).arg(envelope);
            return cmd;
        }
        Way::Publish => {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(CHANNEL).arg(envelope);
            return cmd;
        }
        Way::Eval => {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(script);
            cmd
        }
        Way::EvalSha | Way::Approximate => {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha);
            cmd
        }
    };
    // KEYS: hash, stream, counter. ARGV: epoch, size, ttl ms, meta_ttl ms,
    // channel, except, envelope, counter epoch (as the publisher passes).
    cmd.arg(3)
        .arg("b:hm:all")
        .arg("b:h:all")
        .arg("b:hg")
        .arg("AAAAAAAA")
        .arg(100)
        .arg(120_000)
        .arg(86_400_000)
        .arg(CHANNEL)
        .arg("-")
        .arg(envelope)
        .arg("BBBBBBBB");
    cmd
}

struct Figures {
    per_second: f64,
    cpu_us: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
}

fn measure(con: &mut redis::Connection, way: Way, messages: usize, envelope: &[u8]) -> Figures {
    let approximate = approximate_script();
    let script = match way {
        Way::Approximate => approximate.as_str(),
        Way::ScriptedPublish => PUBLISH_SCRIPT,
        _ => append_script(),
    };
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query(con)
        .expect("SCRIPT LOAD");
    let cpu_before = redis_cpu(con);
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = PIPELINE.min(messages - sent);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.add_command(command(way, script, &sha, envelope))
                .ignore();
        }
        let () = pipe.query(con).expect("pipeline");
        sent += n;
    }
    let elapsed = started.elapsed();
    let cpu = redis_cpu(con).saturating_sub(cpu_before);
    let mut rtts: Vec<Duration> = (0..2000)
        .map(|_| {
            let at = Instant::now();
            let _: redis::Value = command(way, script, &sha, envelope)
                .query(con)
                .expect("one");
            at.elapsed()
        })
        .collect();
    rtts.sort();
    Figures {
        per_second: messages as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / messages as f64,
        rtt_p50_us: rtts[rtts.len() / 2].as_secs_f64() * 1e6,
        rtt_p99_us: rtts[rtts.len() * 99 / 100].as_secs_f64() * 1e6,
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let messages = value_of("--messages", if bench { 50_000 } else { 2_000 });
    let runs = value_of("--runs", if bench { 3 } else { 1 });
    let redis = start_redis();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = subscriber(redis.port, stop.clone());
    let addr: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let client = redis::Client::open(format!("redis://{addr}/")).expect("client");
    let mut con = client.get_connection().expect("connection");
    // A node's envelope: header, node id, run, sequence, the message JSON.
    let envelope = format!(
        "wshub1 node-a 5f3c9e1a 123456\n{{\"type\":\"news\",\"content\":\"{}\"}}",
        "x".repeat(80)
    )
    .into_bytes();
    let ways = [
        Way::Publish,
        Way::Eval,
        Way::EvalSha,
        Way::Approximate,
        Way::ScriptedPublish,
    ];
    let mut all: Vec<Vec<Figures>> = ways.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (k, way) in ways.iter().enumerate() {
            let f = measure(&mut con, *way, messages, &envelope);
            println!(
                "run {run} {:<20} {:>9.0} msg/s  Redis CPU {:>5.2} µs/msg  one alone p50 {:>5.1} µs p99 {:>6.1} µs",
                way.name(),
                f.per_second,
                f.cpu_us,
                f.rtt_p50_us,
                f.rtt_p99_us
            );
            all[k].push(f);
        }
    }
    let median = |v: &[Figures], pick: &dyn Fn(&Figures) -> f64| {
        let mut x: Vec<f64> = v.iter().map(pick).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    println!(
        "median of {runs}, {messages} messages of {} bytes, pipelines of {PIPELINE}:",
        envelope.len()
    );
    for (k, way) in ways.iter().enumerate() {
        println!(
            "  {:<20} {:>9.0} msg/s  Redis CPU {:>5.2} µs/msg  one alone p50 {:>5.1} µs p99 {:>6.1} µs",
            way.name(),
            median(&all[k], &|f| f.per_second),
            median(&all[k], &|f| f.cpu_us),
            median(&all[k], &|f| f.rtt_p50_us),
            median(&all[k], &|f| f.rtt_p99_us),
        );
    }
    // Where Redis's time goes, per command (those a script runs included).
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .expect("INFO commandstats");
    println!("Redis commandstats (all runs):");
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        println!("  {line}");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
}
