//! Cluster presence under churn (`cargo bench --bench cluster_presence`),
//! issue 19 finding 6: two real `wshub` nodes over a private
//! `redis-server`; on node a one user holds `--sessions` sessions (1,000)
//! each in `--rooms` rooms (64) of 100-byte names (64,000 rooms), then one
//! more session joins and leaves a room at `--hz` (10) for `--seconds` (10)
//! while a victim session on a pings every 10 ms.
//!
//! Prints: node a's and b's loop busy share (`wshub_loop_iteration_seconds
//! _sum` over the window), the victim's ping p50/p99, node a's presence
//! entry size, each node's loop and publisher thread CPU, and the bytes through Redis (INFO `total_net_input_bytes` +
//! `total_net_output_bytes`) per second and per presence refresh (500 ms).
//! `--binary PATH` runs another build of wshub (to compare with an older
//! one); `--hz 0` measures an idle cluster. Without `--bench` (as `cargo
//! test --benches` does) it is a smoke run: 20 sessions × 4 rooms, 1 s. Every process is killed by PID at the
//! end, also on failure; every wait is bounded; traffic stays on 127.0.0.1.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/process.rs"]
mod process;

use process::{free_port, Process};

/// Longest any single wait may take.
const WAIT: Duration = Duration::from_secs(180);

struct Options {
    sessions: usize,
    rooms: usize,
    seconds: u64,
    hz: u64,
    binary: PathBuf,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let value = |name: &str| {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).cloned()
    };
    let number =
        |name: &str, default: u64| value(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    Options {
        sessions: number("--sessions", if bench { 1000 } else { 20 }) as usize,
        rooms: number("--rooms", if bench { 64 } else { 4 }) as usize,
        seconds: number("--seconds", if bench { 10 } else { 1 }),
        hz: number("--hz", 10),
        binary: value("--binary")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wshub")), PathBuf::from),
    }
}

fn wait_listening(addr: SocketAddr) -> io::Result<()> {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("{addr} did not listen")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn start_redis(port: u16) -> io::Result<Process> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let redis = Process::new(child, None);
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)))?;
    Ok(redis)
}

fn start_node(
    binary: &PathBuf,
    id: &str,
    redis: u16,
    sessions: usize,
) -> io::Result<(Process, SocketAddr)> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("wshub-cpresence-{}-{id}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "app:\n  host: \"127.0.0.1\"\n  port: {port}\n  demo: false\n\
             log:\n  level: warn\n\
             websocket:\n  max_connections: {n}\n  max_http_connections: {n}\n\
             cluster:\n  redis: \"redis://127.0.0.1:{redis}/0\"\n  node_id: \"{id}\"\n  presence_ttl: 2s\n",
            n = sessions + 100
        ),
    )?;
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let node = Process::new(child, Some(dir));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr)?;
    Ok((node, addr))
}

/// One masked client text frame.
fn frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    assert!(payload.len() < 65536, "bench frames are short");
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![0x81];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// Opens a chat session of `user`; the 101 is read, the socket blocking.
fn open(addr: SocketAddr, user: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    write!(
        stream,
        "GET /api/ws/connect?user_id={user} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(stream)
}

/// Reads one short server frame's payload.
fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let len = match head[1] {
        n @ 0..=125 => n as usize,
        126 => {
            let mut l = [0u8; 2];
            stream.read_exact(&mut l)?;
            u16::from_be_bytes(l) as usize
        }
        _ => return Err(io::Error::other("an unexpected large frame")),
    };
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

fn http_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn metric(addr: SocketAddr, name: &str) -> io::Result<f64> {
    let text = http_get(addr, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no metric {name}")))
}

/// CPU seconds (user + system) of the threads of process `pid` whose name
/// starts with `prefix` (`None`: the main thread, which runs the loop),
/// from /proc (Linux). CPU time, not wall time: other load on the machine
/// does not count.
fn thread_cpu(pid: u32, prefix: Option<&str>) -> io::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let stat = std::fs::read_to_string(task.path().join("stat"))?;
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let wanted = match prefix {
            Some(prefix) => stat[open + 1..close].starts_with(prefix),
            None => task.file_name().to_str() == Some(&pid.to_string()),
        };
        if !wanted {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime: fields 14 and 15 of stat(5), 12 and 13 here.
        let cpu: f64 =
            fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        total += cpu / ticks;
    }
    Ok(total)
}

/// One line of Redis's INFO, as a number.
fn redis_info(con: &mut redis::Connection, field: &str) -> io::Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("all")
        .query(con)
        .map_err(io::Error::other)?;
    info.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| io::Error::other(format!("no INFO {field}")))
}

fn redis_bytes(con: &mut redis::Connection) -> io::Result<f64> {
    Ok(redis_info(con, "total_net_input_bytes")? + redis_info(con, "total_net_output_bytes")?)
}

fn room(session: usize, k: usize) -> String {
    // 100 bytes, as in the finding's reproduction.
    format!("{:0<100}", format!("r{session}-{k}-"))
}

fn wait_until(what: &str, mut check: impl FnMut() -> io::Result<bool>) -> io::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !check()? {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let o = options();
    let redis_port = free_port()?;
    let _redis = start_redis(redis_port)?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/0"))
        .map_err(io::Error::other)?;
    let mut con = client.get_connection().map_err(io::Error::other)?;
    let (a_process, a) = start_node(&o.binary, "a", redis_port, o.sessions)?;
    let (b_process, b) = start_node(&o.binary, "b", redis_port, o.sessions)?;
    wait_until("both nodes", || {
        Ok(http_get(a, "/api/ws/status")?.contains("\"nodes\":2"))
    })?;

    // The big user: every session in its own `rooms` rooms.
    let mut big = Vec::with_capacity(o.sessions);
    for s in 0..o.sessions {
        let mut stream = open(a, "big")?;
        let mut joins = Vec::new();
        for k in 0..o.rooms {
            joins.extend(frame(&format!(
                r#"{{"type":"join","room":"{}"}}"#,
                room(s, k)
            )));
        }
        stream.write_all(&joins)?;
        big.push(stream);
    }
    let last = room(o.sessions - 1, o.rooms - 1);
    wait_until("every room in b's view", || {
        Ok(http_get(b, &format!("/api/ws/rooms/{last}"))?.contains("\"count\":1,"))
    })?;
    let entry: usize = redis::cmd("STRLEN")
        .arg("wshub:node:a")
        .query(&mut con)
        .map_err(io::Error::other)?;

    let mut victim = open(a, "victim")?;
    let mut churn = open(a, "churn")?;
    // Settle, then measure a window of churn.
    std::thread::sleep(Duration::from_secs(2));
    let (loop_a0, loop_b0) = (
        metric(a, "wshub_loop_iteration_seconds_sum")?,
        metric(b, "wshub_loop_iteration_seconds_sum")?,
    );
    let bytes0 = redis_bytes(&mut con)?;
    let (pid_a, pid_b) = (a_process.id(), b_process.id());
    let cpu_now = || -> io::Result<[f64; 4]> {
        Ok([
            thread_cpu(pid_a, None)?,
            thread_cpu(pid_a, Some("wshub-cluster-p"))?,
            thread_cpu(pid_b, None)?,
            thread_cpu(pid_b, Some("wshub-cluster-p"))?,
        ])
    };
    let cpu0 = cpu_now()?;
    eprintln!(
        "cluster presence: measuring for {} s (node a is pid {pid_a})",
        o.seconds
    );
    let started = Instant::now();
    let window = Duration::from_secs(o.seconds);
    let period = Duration::from_millis(1000 / o.hz.max(1));
    let (mut next_churn, mut joined, mut churns) = (started, false, 0u64);
    let mut pings = Vec::new();
    let ping = frame(r#"{"type":"ping"}"#);
    while started.elapsed() < window {
        if o.hz > 0 && Instant::now() >= next_churn {
            let kind = if joined { "leave" } else { "join" };
            churn.write_all(&frame(&format!(
                r#"{{"type":"{kind}","room":"churn-room"}}"#
            )))?;
            joined = !joined;
            churns += 1;
            next_churn += period;
        }
        let sent = Instant::now();
        victim.write_all(&ping)?;
        let pong = read_frame(&mut victim)?;
        if !pong.starts_with(br#"{"type":"pong""#) {
            return Err(io::Error::other(
                String::from_utf8_lossy(&pong).into_owned(),
            ));
        }
        pings.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = started.elapsed().as_secs_f64();
    let bytes = redis_bytes(&mut con)? - bytes0;
    let cpu1 = cpu_now()?;
    let cpu: Vec<f64> = cpu1
        .iter()
        .zip(cpu0)
        .map(|(c1, c0)| (c1 - c0) / wall * 100.0)
        .collect();
    let (loop_a, loop_b) = (
        metric(a, "wshub_loop_iteration_seconds_sum")? - loop_a0,
        metric(b, "wshub_loop_iteration_seconds_sum")? - loop_b0,
    );
    pings.sort_unstable();
    let at = |q: f64| pings[((pings.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "cluster presence: {} sessions x {} rooms on node a, entry {:.2} MiB; {churns} joins/leaves at {} Hz over {wall:.1} s",
        o.sessions,
        o.rooms,
        entry as f64 / (1 << 20) as f64,
        o.hz
    );
    println!(
        "  loop busy: node a {:.1} %, node b {:.1} %; victim ping p50 {:.2} ms, p99 {:.2} ms ({} pings)",
        loop_a / wall * 100.0,
        loop_b / wall * 100.0,
        at(0.5),
        at(0.99),
        pings.len()
    );
    println!(
        "  CPU: node a's loop thread {:.1} %, its publisher thread {:.1} %, node b's loop thread {:.1} %, its publisher thread {:.1} %",
        cpu[0], cpu[1], cpu[2], cpu[3]
    );
    println!(
        "  through Redis: {:.3} MiB/s, {:.1} KiB per 500 ms refresh period",
        bytes / wall / (1 << 20) as f64,
        bytes / wall / 2.0 / 1024.0
    );
    drop(big);
    Ok(())
}
