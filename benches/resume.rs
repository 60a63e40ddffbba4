//! Mass reconnect bench (`cargo bench --bench resume [-- --sessions N
//! --missed M --runs R]`): the real `wshub` binary with `history.size` on;
//! N recovering sessions (default 10,000, spread over 127.0.0.1–8) read
//! their welcome, drop together with TCP resets, M broadcasts (default 100)
//! go out while they are gone, then all N resume at once with `?since=`.
//! Prints the time from the first reconnect until every session had its
//! `recovered` (with `ok:true` and M replayed), the p50/p99 of each
//! session's upgrade-to-recovered time, and the history's bytes held.
//!
//! The server runs pinned to core 0 (`taskset -c 0`) and is killed by PID
//! when the bench ends. Without `--bench` (as `cargo test --benches` runs
//! it) it is a smoke run of 200 sessions.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};
use tungstenite::protocol::{Role, WebSocket};
use tungstenite::Message as WsMessage;

const WORKERS: usize = 8;
const SOURCES: usize = 8;

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Kills exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(sessions: usize, missed: usize) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
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
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "wshub did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, addr, dir }
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

/// One resuming session, driven without blocking.
struct Resume {
    stream: Option<TcpStream>,
    head: Vec<u8>,
    ws: Option<WebSocket<TcpStream>>,
    started: Instant,
    done: Option<(Duration, bool, u64)>,
}

impl Resume {
    /// Reads what is there; true once `recovered` arrived.
    fn poll(&mut self) -> bool {
        if self.done.is_some() {
            return true;
        }
        if let Some(stream) = self.stream.as_mut() {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => panic!("server closed during the upgrade"),
                    Ok(n) => self.head.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("upgrade read: {e}"),
                }
            }
            let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
                return false;
            };
            assert!(self.head.starts_with(b"HTTP/1.1 101"), "refused");
            let rest = self.head.split_off(end + 4);
            let stream = self.stream.take().unwrap();
            self.ws = Some(WebSocket::from_partially_read(
                stream,
                rest,
                Role::Client,
                None,
            ));
        }
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        loop {
            match ws.read() {
                Ok(WsMessage::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "recovered" {
                        let a = &v["content"]["a"];
                        self.done = Some((
                            self.started.elapsed(),
                            a["ok"] == true,
                            a["replayed"].as_u64().unwrap_or(0),
                        ));
                        return true;
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return false
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(sessions: usize, missed: usize) -> (Duration, Duration, Duration, u64, u64) {
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
    // Everyone resumes at once: all upgrades written first, then read.
    let start = Instant::now();
    let mut parts: Vec<Vec<(usize, String)>> = vec![Vec::new(); WORKERS];
    for (k, item) in since.into_iter().enumerate() {
        parts[k % WORKERS].push(item);
    }
    let results: Vec<(Duration, bool, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                s.spawn(move || {
                    // Upgrades go out as fast as they can be written; what
                    // arrived is read every 50 of them, so a session's time
                    // is not its thread's time to write all the others.
                    let mut resumes: Vec<Resume> = Vec::with_capacity(part.len());
                    for (k, (i, a)) in part.into_iter().enumerate() {
                        let started = Instant::now();
                        let mut stream = tcp(addr, i);
                        let path = format!("/api/ws/connect?user_id=u{i}&since={a}");
                        stream.write_all(upgrade_request(&path).as_bytes()).unwrap();
                        stream.set_nonblocking(true).unwrap();
                        resumes.push(Resume {
                            stream: Some(stream),
                            head: Vec::new(),
                            ws: None,
                            started,
                            done: None,
                        });
                        if k % 50 == 49 {
                            for r in &mut resumes {
                                r.poll();
                            }
                        }
                    }
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let mut pending = 0;
                        for r in &mut resumes {
                            if !r.poll() {
                                pending += 1;
                            }
                        }
                        if pending == 0 {
                            break;
                        }
                        assert!(Instant::now() < deadline, "{pending} never recovered");
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    resumes
                        .into_iter()
                        .filter_map(|r| r.done)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let all = start.elapsed();
    let failed = results
        .iter()
        .filter(|(_, ok, n)| !ok || *n != missed as u64)
        .count();
    assert_eq!(failed, 0, "sessions not fully recovered");
    let mut times: Vec<Duration> = results.iter().map(|r| r.0).collect();
    times.sort();
    let replayed = metric(addr, "wshub_history_replayed_total");
    (
        all,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        held,
        replayed,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let value = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let sessions = value("--sessions", if bench { 10_000 } else { 200 });
    let missed = value("--missed", if bench { 100 } else { 20 });
    let runs = value("--runs", if bench { 3 } else { 1 });
    let mut rows = Vec::new();
    for run_no in 0..runs {
        let (all, p50, p99, held, replayed) = run(sessions, missed);
        println!(
            "run {run_no}: {sessions} sessions x {missed} missed: all recovered in {:.0} ms, \
             upgrade-to-recovered p50 {:.1} ms p99 {:.1} ms, history {held} bytes, replayed {replayed}",
            all.as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        );
        rows.push((all, p50, p99, held));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median of {runs}: all recovered {:.0} ms, p50 {:.1} ms, p99 {:.1} ms, history {:.0} bytes",
        median(rows.iter().map(|r| r.0.as_secs_f64() * 1e3).collect()),
        median(rows.iter().map(|r| r.1.as_secs_f64() * 1e3).collect()),
        median(rows.iter().map(|r| r.2.as_secs_f64() * 1e3).collect()),
        median(rows.iter().map(|r| r.3 as f64).collect()),
    );
}
