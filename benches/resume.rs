//! Mass reconnect bench (`cargo bench --bench resume [-- --sessions N
//! --missed M --runs R]`): the real `wshub` binary with `history.size` on;
//! N recovering sessions (default 10,000, spread over 127.0.0.1–8) read
//! their welcome, drop together with TCP resets, M broadcasts (default 100)
//! go out while they are gone, then all N resume at once with `?since=`.
//! Prints the time from the first reconnect until every session had its
//! `recovered` (with `ok:true` and M replayed), the server's CPU time over
//! that span (from `/proc/<pid>/stat`) and the client thread's, the
//! p50/p99 of each session's connect-to-recovered time, and the history's
//! bytes held.
//!
//! The server runs pinned to core 0 (`taskset -c 0`) and is killed by PID
//! when the bench ends. The resumes are driven by one non-blocking client
//! thread pinned to core 1 (requests built beforehand, frames counted
//! without JSON parsing; at most `--window` connections, default 1,000,
//! waiting for their upgrade), so the figure is the server's and not the
//! load tool's. Without `--bench` (as `cargo test --benches` runs it) it is
//! a smoke run of 200 sessions.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/args.rs"]
mod args;
#[path = "support/process.rs"]
mod process;

use args::value_of;
use process::{free_port, Process};

use socket2::{Domain, SockRef, Socket, Type};
use tungstenite::protocol::WebSocket;

const WORKERS: usize = 8;
const SOURCES: usize = 8;

struct Server {
    process: Process,
    addr: SocketAddr,
}

fn start(sessions: usize, missed: usize) -> Server {
    let port = free_port().expect("free port");
    let dir = std::env::temp_dir().join(format!("wshub-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let config = dir.join("config.yaml");
    // max_http_connections: all N upgrades are written at once, and past the
    // default cap (1024 connections not yet upgraded) the server answers 503.
    std::fs::write(
        &config,
        format!(
            "app:\n  host: \"127.0.0.1\"\n  port: {port}\nlog:\n  level: warn\nwebsocket:\n  max_connections: {}\n  max_http_connections: {}\n  message_buffer_size: {}\nhistory:\n  size: {}\n",
            sessions + 100,
            sessions + 100,
            missed + 64,
            missed + 50
        ),
    )
    .expect("write config");
    let bin = env!("CARGO_BIN_EXE_wshub");
    let child = Command::new("taskset")
        .args(["-c", "0", bin, "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wshub");
    let process = Process::new(child, Some(dir));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "wshub did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { process, addr }
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = http(addr, "GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn tcp(addr: SocketAddr, i: usize) -> TcpStream {
    let source: SocketAddr = format!("127.0.0.{}:0", 1 + i % SOURCES).parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.bind(&source.into()).expect("bind source");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    stream
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// One resuming session of the single client thread: its socket, the
/// upgrade request still to write, and what arrived so far.
struct Resume {
    stream: mio::net::TcpStream,
    request: Vec<u8>,
    written: usize,
    upgraded: bool,
    buf: Vec<u8>,
    frames: u64,
    started: Instant,
    done: Option<Duration>,
}

/// What every `recovered` must be, byte for byte.
fn recovered_json(missed: usize) -> Vec<u8> {
    format!(r#"{{"type":"recovered","content":{{"a":{{"ok":true,"replayed":{missed}}}}}}}"#)
        .into_bytes()
}

impl Resume {
    /// Writes what is left of the request, reads what is there and takes
    /// the whole frames out of it (no allocation per frame, no JSON
    /// parsing: the client must cost far less than the server). True once
    /// `recovered` arrived.
    fn drive(&mut self, recovered: &[u8], chunk: &mut [u8]) -> bool {
        if self.done.is_some() {
            return true;
        }
        while self.written < self.request.len() {
            match self.stream.write(&self.request[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return false,
                Err(e) => panic!("upgrade write: {e}"),
            }
        }
        loop {
            match self.stream.read(chunk) {
                Ok(0) => panic!("server closed the session"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        let mut at = 0;
        if !self.upgraded {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return false;
            };
            assert!(self.buf.starts_with(b"HTTP/1.1 101"), "refused");
            self.upgraded = true;
            at = end + 4;
        }
        loop {
            let rest = &self.buf[at..];
            if rest.len() < 2 {
                break;
            }
            let (len, head) = match rest[1] & 0x7f {
                126 if rest.len() >= 4 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 if rest.len() >= 10 => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&rest[2..10]);
                    (u64::from_be_bytes(be) as usize, 10)
                }
                126 | 127 => break,
                short => (usize::from(short), 2),
            };
            if rest.len() < head + len {
                break;
            }
            let payload = &rest[head..head + len];
            if rest[0] & 0x0f == 1 {
                self.frames += 1;
                if payload.starts_with(br#"{"type":"recovered""#) {
                    assert_eq!(payload, recovered, "not a full recovery");
                    self.done = Some(self.started.elapsed());
                }
            }
            at += head + len;
        }
        self.buf.drain(..at);
        self.done.is_some()
    }
}

/// A socket bound to source `i` (127.0.0.1–8), connecting without waiting.
fn connect_nonblocking(addr: SocketAddr, i: usize) -> mio::net::TcpStream {
    let source: SocketAddr = format!("127.0.0.{}:0", 1 + i % SOURCES).parse().unwrap();
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.bind(&source.into()).expect("bind source");
    socket.set_nonblocking(true).unwrap();
    socket.set_tcp_nodelay(true).unwrap();
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => panic!("connect: {e}"),
    }
    mio::net::TcpStream::from_std(socket.into())
}

/// Pins the calling thread to `core` (the server has core 0).
fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// What the scheduler says about process `pid` so far: its user and
/// system CPU time (`/proc/<pid>/stat`, all threads) and how long its main
/// thread (the event loop) waited for a CPU while runnable
/// (`/proc/<pid>/schedstat`).
#[derive(Clone, Copy, Default)]
struct Sched {
    user: Duration,
    system: Duration,
    waited: Duration,
}

impl std::ops::Sub for Sched {
    type Output = Sched;
    fn sub(self, before: Sched) -> Sched {
        Sched {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
            waited: self.waited.saturating_sub(before.waited),
        }
    }
}

fn sched_of(pid: u32) -> Sched {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th, in clock ticks.
    let after = &stat[stat.rfind(')').expect("stat") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = |i: usize| Duration::from_millis(fields[i].parse::<u64>().unwrap() * 1000 / hz);
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    let waited = schedstat
        .split(' ')
        .nth(1)
        .and_then(|ns| ns.trim().parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos);
    Sched {
        user: ticks(11),
        system: ticks(12),
        waited,
    }
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Everyone resumes: one non-blocking client thread on core 1, requests
/// built beforehand, at most `window` connections not yet upgraded at a
/// time (the listen backlog's share; more only turns into SYN retries).
/// Returns each session's connect-to-recovered time and the thread's CPU.
fn resume_all(
    addr: SocketAddr,
    since: Vec<(usize, String)>,
    missed: usize,
    window: usize,
) -> (Vec<Duration>, Duration) {
    let requests: Vec<(usize, Vec<u8>)> = since
        .into_iter()
        .map(|(i, a)| {
            let path = format!("/api/ws/connect?user_id=u{i}&since={a}");
            (i, upgrade_request(&path).into_bytes())
        })
        .collect();
    std::thread::scope(|s| {
        s.spawn(move || {
            pin(1);
            let cpu_before = thread_cpu();
            let recovered = recovered_json(missed);
            let mut poll = mio::Poll::new().expect("poll");
            let mut events = mio::Events::with_capacity(4096);
            let mut chunk = vec![0u8; 64 * 1024];
            let mut sessions: Vec<Resume> = Vec::with_capacity(requests.len());
            let mut next = requests.into_iter();
            let (mut upgrading, mut left) = (0usize, next.len());
            let deadline = Instant::now() + Duration::from_secs(120);
            while left > 0 {
                while upgrading < window {
                    let Some((i, request)) = next.next() else {
                        break;
                    };
                    let started = Instant::now();
                    let mut stream = connect_nonblocking(addr, i);
                    let token = mio::Token(sessions.len());
                    poll.registry()
                        .register(
                            &mut stream,
                            token,
                            mio::Interest::READABLE | mio::Interest::WRITABLE,
                        )
                        .expect("register");
                    sessions.push(Resume {
                        stream,
                        request,
                        written: 0,
                        upgraded: false,
                        buf: Vec::new(),
                        frames: 0,
                        started,
                        done: None,
                    });
                    upgrading += 1;
                }
                poll.poll(&mut events, Some(Duration::from_millis(100)))
                    .expect("poll");
                for event in events.iter() {
                    let r = &mut sessions[event.token().0];
                    let was_upgraded = r.upgraded;
                    if r.done.is_some() {
                        continue;
                    }
                    let finished = r.drive(&recovered, &mut chunk);
                    if r.upgraded && !was_upgraded {
                        upgrading -= 1;
                    }
                    if finished {
                        assert_eq!(r.frames, missed as u64 + 2, "welcome, replay, recovered");
                        left -= 1;
                        let _ = poll.registry().deregister(&mut r.stream);
                    }
                }
                assert!(Instant::now() < deadline, "{left} never recovered");
            }
            let cpu = thread_cpu() - cpu_before;
            let times = sessions.iter().filter_map(|r| r.done).collect();
            (times, cpu)
        })
        .join()
        .expect("client thread")
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One run's figures.
struct Figures {
    all: Duration,
    p50: Duration,
    p99: Duration,
    held: u64,
    replayed: u64,
    server: Sched,
    client_cpu: Duration,
}

fn run(sessions: usize, missed: usize) -> Figures {
    let server = start(sessions, missed);
    let addr = server.addr;
    // Connect everyone, keep the broadcast position from the welcome.
    let chunks: Vec<Vec<usize>> = (0..WORKERS)
        .map(|w| (w..sessions).step_by(WORKERS).collect())
        .collect();
    let positions: Vec<Vec<(usize, String, WebSocket<TcpStream>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|ids| {
                s.spawn(move || {
                    ids.iter()
                        .map(|&i| {
                            let stream = tcp(addr, i);
                            let url = format!("ws://{addr}/api/ws/connect?user_id=u{i}&recover=1");
                            let (mut ws, _) = tungstenite::client(url, stream).expect("upgrade");
                            let welcome = ws.read().expect("welcome");
                            let v: serde_json::Value =
                                serde_json::from_str(welcome.to_text().unwrap()).unwrap();
                            let a = v["content"]["a"].as_str().expect("welcome").to_owned();
                            (i, a, ws)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Drop together, with resets.
    let mut since = Vec::with_capacity(sessions);
    for (i, a, ws) in positions.into_iter().flatten() {
        let _ = SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
        drop(ws);
        since.push((i, a));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(addr, "wshub_connections_open") > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in 0..missed {
        let body = format!(r#"{{"type":"news","content":{n}}}"#);
        let reply = http(addr, "POST", "/api/ws/broadcast", &body);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    let held = metric(addr, "wshub_history_bytes");
    // Everyone resumes at once.
    let window = value_of("--window", 1000);
    let before = sched_of(server.process.id());
    let start = Instant::now();
    let (mut times, client_cpu) = resume_all(addr, since, missed, window);
    let all = start.elapsed();
    let server = sched_of(server.process.id()) - before;
    assert_eq!(times.len(), sessions, "sessions not fully recovered");
    times.sort();
    let replayed = metric(addr, "wshub_history_replayed_total");
    Figures {
        all,
        p50: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        held,
        replayed,
        server,
        client_cpu,
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sessions = value_of("--sessions", if bench { 10_000 } else { 200 });
    let missed = value_of("--missed", if bench { 100 } else { 20 });
    let runs = value_of("--runs", if bench { 3 } else { 1 });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut rows = Vec::new();
    for run_no in 0..runs {
        let f = run(sessions, missed);
        println!(
            "run {run_no}: {sessions} sessions x {missed} missed: all recovered in {:.0} ms \
             (server CPU {:.0} ms = user {:.0} + sys {:.0}, its loop waited {:.0} ms for a CPU; \
             client thread CPU {:.0} ms), \
             connect-to-recovered p50 {:.1} ms p99 {:.1} ms, history {} bytes, replayed {}",
            ms(f.all),
            ms(f.server.user + f.server.system),
            ms(f.server.user),
            ms(f.server.system),
            ms(f.server.waited),
            ms(f.client_cpu),
            ms(f.p50),
            ms(f.p99),
            f.held,
            f.replayed,
        );
        rows.push(f);
    }
    let median = |pick: &dyn Fn(&Figures) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median of {runs}: all recovered {:.0} ms, server CPU {:.0} ms, server waited {:.0} ms, \
         client CPU {:.0} ms, p50 {:.1} ms, p99 {:.1} ms, history {:.0} bytes",
        median(&|f| ms(f.all)),
        median(&|f| ms(f.server.user + f.server.system)),
        median(&|f| ms(f.server.waited)),
        median(&|f| ms(f.client_cpu)),
        median(&|f| ms(f.p50)),
        median(&|f| ms(f.p99)),
        median(&|f| f.held as f64),
    );
}
