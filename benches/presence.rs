//! Presence at scale (`cargo bench --bench presence`): the real `wshub`
//! binary with `rooms.presence: true`, 10,000 members in one room and 1,000
//! users with two tabs each joining it and leaving it, over raw loopback
//! sockets. Prints, per round and as medians: the presence events the
//! server sent (`wshub_presence_events_total`), the deliveries they made,
//! the loop's busy time (`wshub_loop_iteration_seconds_sum`) and the wall
//! time until every member had every event, and checks that each member got
//! exactly one `joined` and one `left` per user (not one per tab).
//!
//! The 10,000 members are anonymous viewers, so filling the room makes no
//! events of its own. Rounds: 3 (`--rounds N`); `--members N`, `--users N`.
//! Run without `--bench` (as `cargo test --benches` does) it is a smoke
//! run: 200 members, 20 users, one round. The server is killed by PID at
//! the end, also on failure; every wait is bounded; traffic stays on
//! 127.0.0.1.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/process.rs"]
mod process;

use process::{free_port, Process};

const ROOM: &str = "big";
/// Longest any single wait may take.
const WAIT: Duration = Duration::from_secs(120);

struct Options {
    members: usize,
    users: usize,
    rounds: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let mut options = if bench {
        Options {
            members: 10_000,
            users: 1_000,
            rounds: 3,
        }
    } else {
        Options {
            members: 200,
            users: 20,
            rounds: 1,
        }
    };
    let value = |name: &str| {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1)?.parse().ok()
    };
    if let Some(n) = value("--members") {
        options.members = n;
    }
    if let Some(n) = value("--users") {
        options.users = n;
    }
    if let Some(n) = value("--rounds") {
        options.rounds = n;
    }
    options
}

struct Server {
    /// Stopped by its PID when the server is dropped.
    _process: Process,
    addr: SocketAddr,
}

fn start_server(sessions: usize) -> io::Result<Server> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("wshub-presence-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "app:\n  host: \"127.0.0.1\"\n  port: {port}\n  demo: false\n\
             log:\n  level: warn\n\
             websocket:\n  max_connections: {}\n  max_http_connections: {}\n  \
             message_buffer_size: 16384\n  max_buffered_bytes: 67108864\n\
             rooms:\n  presence: true\n",
            sessions + 100,
            sessions + 100
        ),
    )?;
    let child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let server = Server {
        _process: Process::new(child, Some(dir)),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(server.addr).is_err() {
        if Instant::now() > deadline {
            return Err(io::Error::other("the server did not listen"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// One masked client text frame.
fn frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    assert!(payload.len() < 126, "bench frames are short");
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// Opens a chat session; the 101 is read and the socket left blocking.
fn open(addr: SocketAddr, user: Option<&str>) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    let query = user.map_or(String::new(), |u| format!("?user_id={u}"));
    write!(
        stream,
        "GET /api/ws/connect{query} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\n\
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

fn wait_room_count(addr: SocketAddr, count: usize) -> io::Result<()> {
    let deadline = Instant::now() + WAIT;
    let want = format!("\"count\":{count},");
    loop {
        if http_get(addr, &format!("/api/ws/rooms/{ROOM}"))?.contains(&want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("the room never held {count}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads server frames from `stream` until `events` presence events came;
/// returns (joined, left). Other frames (none expected) are an error.
fn read_events(
    stream: &mut TcpStream,
    events: usize,
    buf: &mut Vec<u8>,
) -> io::Result<(usize, usize)> {
    let (mut joined, mut left) = (0, 0);
    let mut chunk = [0u8; 65536];
    buf.clear();
    let mut at = 0;
    while joined + left < events {
        // Parse what is buffered.
        while buf.len() - at >= 2 {
            let len = match buf[at + 1] {
                n @ 0..=125 => (n as usize, 2),
                126 if buf.len() - at >= 4 => {
                    (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
                }
                126 => break,
                _ => return Err(io::Error::other("an unexpected large frame")),
            };
            if buf.len() - at < len.1 + len.0 {
                break;
            }
            let payload = &buf[at + len.1..at + len.1 + len.0];
            if buf[at] == 0x89 {
                // A server Ping: answered by nobody, harmless in a short run.
            } else if payload.starts_with(br#"{"type":"joined""#) {
                joined += 1;
            } else if payload.starts_with(br#"{"type":"left""#) {
                left += 1;
            } else {
                return Err(io::Error::other(format!(
                    "unexpected frame: {}",
                    String::from_utf8_lossy(payload)
                )));
            }
            at += len.1 + len.0;
        }
        if joined + left >= events {
            break;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("closed by the server"));
        }
        buf.drain(..at);
        at = 0;
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((joined, left))
}

struct Round {
    events: f64,
    deliveries: f64,
    loop_s: f64,
    wall_s: f64,
}

fn round(
    addr: SocketAddr,
    members: &mut [TcpStream],
    tabs: &mut [TcpStream],
    users: usize,
) -> io::Result<Round> {
    let events0 = metric(addr, "wshub_presence_events_total")?;
    let out0 = metric(addr, "wshub_messages_out_total")?;
    let loop0 = metric(addr, "wshub_loop_iteration_seconds_sum")?;
    let start = Instant::now();
    let join = frame(&format!(r#"{{"type":"join","room":"{ROOM}"}}"#));
    let leave = frame(&format!(r#"{{"type":"leave","room":"{ROOM}"}}"#));
    for tab in tabs.iter_mut() {
        tab.write_all(&join)?;
    }
    wait_room_count(addr, members.len() + tabs.len())?;
    for tab in tabs.iter_mut() {
        tab.write_all(&leave)?;
    }
    let mut buf = Vec::new();
    for (i, member) in members.iter_mut().enumerate() {
        let (joined, left) = read_events(member, 2 * users, &mut buf)?;
        if (joined, left) != (users, users) {
            return Err(io::Error::other(format!(
                "member {i} got {joined} joined and {left} left for {users} users"
            )));
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    // The tabs got events too while in the room: drain what came.
    for tab in tabs.iter_mut() {
        tab.set_nonblocking(true)?;
        let mut sink = [0u8; 65536];
        while matches!(tab.read(&mut sink), Ok(n) if n > 0) {}
        tab.set_nonblocking(false)?;
    }
    // Settle: the loop finished the fan-out once every member had it all.
    Ok(Round {
        events: metric(addr, "wshub_presence_events_total")? - events0,
        deliveries: metric(addr, "wshub_messages_out_total")? - out0,
        loop_s: metric(addr, "wshub_loop_iteration_seconds_sum")? - loop0,
        wall_s,
    })
}

fn raise_descriptor_limit() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> io::Result<()> {
    let o = options();
    raise_descriptor_limit();
    let server = start_server(o.members + 2 * o.users)?;
    let addr = server.addr;
    let mut members = Vec::with_capacity(o.members);
    let viewer = frame(&format!(r#"{{"type":"join","room":"{ROOM}"}}"#));
    for _ in 0..o.members {
        let mut s = open(addr, None)?;
        s.write_all(&viewer)?;
        members.push(s);
    }
    let mut tabs = Vec::with_capacity(2 * o.users);
    for u in 0..o.users {
        for _ in 0..2 {
            tabs.push(open(addr, Some(&format!("u{u}")))?);
        }
    }
    wait_room_count(addr, o.members)?;
    println!(
        "presence: {} anonymous members in one room, {} users x 2 tabs join and leave it",
        o.members, o.users
    );
    let mut rounds = Vec::new();
    for r in 0..o.rounds {
        let got = round(addr, &mut members, &mut tabs, o.users)?;
        println!(
            "round {}: {} events, {} deliveries, loop {:.3} s ({:.1} us/event), wall {:.3} s",
            r + 1,
            got.events,
            got.deliveries,
            got.loop_s,
            got.loop_s * 1e6 / got.events.max(1.0),
            got.wall_s
        );
        if got.events != (2 * o.users) as f64 {
            return Err(io::Error::other(format!(
                "{} events for {} users: not one joined and one left per user",
                got.events, o.users
            )));
        }
        rounds.push(got);
    }
    let m = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    println!(
        "median: {} events, {} deliveries, loop {:.3} s ({:.1} us per event, {:.1} ns per delivery), wall {:.3} s; every member got exactly one joined and one left per user",
        m(|r| r.events),
        m(|r| r.deliveries),
        m(|r| r.loop_s),
        m(|r| r.loop_s) * 1e6 / m(|r| r.events),
        m(|r| r.loop_s) * 1e9 / m(|r| r.deliveries),
        m(|r| r.wall_s)
    );
    drop(server);
    Ok(())
}
