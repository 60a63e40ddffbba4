//! Liveness, limits and backpressure (issue 3), tested black-box over real
//! loopback sockets: pong_wait, slow consumers (Close 1013) and write_wait,
//! max_connections (503), input bounds (431, 413, 1009), slowloris and idle
//! keep-alive connections (handshake_timeout), graceful shutdown (through the
//! handle and by SIGTERM to the real binary), and a bounded soak test
//! (`#[ignore]`d so the default suite stays fast; CI runs it explicitly).
//!
//! Touches only 127.0.0.0/8 sockets, a temp config file per binary test, and
//! the processes it spawns itself (signalled and killed by their own pid).
//! Every wait is bounded; timing bounds are generous upper limits (plus the
//! lower limits a deadline implies), never speed requirements.

mod common;

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    client_frame, http, read_full_response, test_config, upgrade_request, Client, TestServer, WAIT,
};
use serde_json::{json, Value};
use tungstenite::Message as WsMessage;

/// Added to every upper time bound: the machine is shared and noisy.
const SLACK: Duration = Duration::from_millis(2000);
/// Allowed earliness on lower bounds (the server's clock starts a little
/// after ours; the timer wheel ticks every 10 ms).
const EARLY: Duration = Duration::from_millis(50);

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// One server frame (servers never mask).
#[derive(Debug, Clone)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    /// The code of a Close frame (1005 when it carries none).
    fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, OP_CLOSE, "not a Close frame: {self:?}");
        match self.payload.as_slice() {
            [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
            _ => 1005,
        }
    }

    fn json(&self) -> Value {
        assert_eq!(self.opcode, OP_TEXT, "not a text frame: {self:?}");
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "text frame is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// How a raw connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Orderly FIN from the server.
    Eof,
    /// Nothing arrived before the wait ran out.
    Timeout,
    /// A socket error (a reset, usually).
    Error(io::ErrorKind),
}

impl End {
    /// The server dropped the connection (FIN or reset).
    fn is_dropped(self) -> bool {
        matches!(
            self,
            End::Eof
                | End::Error(io::ErrorKind::ConnectionReset)
                | End::Error(io::ErrorKind::BrokenPipe)
        )
    }
}

/// Parses one unmasked server frame at the start of `bytes`.
fn parse_frame(bytes: &[u8]) -> Option<(Frame, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    let fin = bytes[0] & 0x80 != 0;
    let opcode = bytes[0] & 0x0f;
    let mut len = (bytes[1] & 0x7f) as usize;
    let mut at = 2;
    if len == 126 {
        let ext = bytes.get(2..4)?;
        len = u16::from_be_bytes([ext[0], ext[1]]) as usize;
        at = 4;
    } else if len == 127 {
        let ext: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
        len = u64::from_be_bytes(ext) as usize;
        at = 10;
    }
    let payload = bytes.get(at..at + len)?.to_vec();
    Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        at + len,
    ))
}

/// A masked client frame header (with its mask key) that announces `len`
/// payload bytes, without the payload.
fn masked_header(first_byte: u8, len: usize) -> Vec<u8> {
    let mut out = vec![first_byte];
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    out
}

/// A hand-driven WebSocket client over raw TCP. It answers nothing by itself
/// (no Pong, no Close) and reads only when told to.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects and upgrades to `path`; panics unless the answer is 101.
    fn upgrade(addr: SocketAddr, path: &str) -> RawWs {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        RawWs::handshake(stream, path)
    }

    /// Upgrades an already connected stream.
    fn handshake(mut stream: TcpStream, path: &str) -> RawWs {
        stream
            .write_all(upgrade_request(path).as_bytes())
            .expect("send upgrade request");
        let mut raw = RawWs {
            stream,
            buf: Vec::new(),
        };
        let deadline = Instant::now() + WAIT;
        let head_end = loop {
            if let Some(at) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(
                raw.fill(deadline) == Ok(()),
                "no complete 101 head: {:?}",
                String::from_utf8_lossy(&raw.buf)
            );
        };
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101 "),
            "upgrade refused: {head:?}"
        );
        raw.buf.drain(..head_end);
        raw
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads once more into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), End> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(End::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set read timeout");
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(End::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Err(End::Timeout)
            }
            Err(e) => Err(End::Error(e.kind())),
        }
    }

    /// The next complete frame, waiting at most `wait`.
    fn next_frame(&mut self, wait: Duration) -> Result<Frame, End> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            self.fill(deadline)?;
        }
    }

    /// Every frame until the connection ends or `wait` runs out.
    fn read_until_end(&mut self, wait: Duration) -> (Vec<Frame>, End) {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Ok(frame) => frames.push(frame),
                Err(end) => return (frames, end),
            }
        }
    }
}

/// `GET /api/ws/status` as JSON.
fn status(addr: SocketAddr) -> Value {
    let (code, body) = http(addr, "GET", "/api/ws/status", &[], "");
    assert_eq!(code, 200, "status: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("status is not JSON ({e}): {body}"))
}

fn online_users(addr: SocketAddr) -> Vec<String> {
    let v = status(addr);
    v["online_users"]
        .as_array()
        .unwrap_or_else(|| panic!("no online_users: {v}"))
        .iter()
        .map(|u| u.as_str().expect("user id string").to_owned())
        .collect()
}

/// The value of an unlabelled (or exactly labelled) metric line.
fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let (code, text) = http(addr, "GET", "/metrics", &[], "");
    assert_eq!(code, 200, "metrics: {text}");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("{name}: {v:?}: {e}")) as u64
        })
}

/// Sends `request` on a fresh connection and reads one response.
fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.write_all(request).expect("send request");
    read_full_response(&mut BufReader::new(stream))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Asserts a JSON error response with exactly `status`.
fn assert_json_error(response: &(u16, Vec<(String, String)>, String), status: u16) -> Value {
    let (code, headers, body) = response;
    assert_eq!(*code, status, "body: {body}");
    assert_eq!(
        header(headers, "content-type"),
        Some("application/json"),
        "{headers:?}"
    );
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("error body not JSON ({e}): {body}"));
    assert!(v["error"].is_string(), "no error string: {body}");
    v
}

/// Reads whatever is left until the peer closes; returns how it ended.
fn read_to_close(stream: &mut impl Read, wait: Duration) -> (Vec<u8>, End) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if Instant::now() >= deadline {
            return (got, End::Timeout);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return (got, End::Eof),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(e) => return (got, End::Error(e.kind())),
        }
    }
}

/// A TCP connection with a small receive buffer (set before connect, so the
/// advertised window stays small): the kernel cannot hide a slow reader.
fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

/// Lets a client's blocking reads time out after `wait`.
fn set_client_timeout(client: &mut Client, wait: Duration) {
    client
        .ws
        .get_mut()
        .set_read_timeout(Some(wait))
        .expect("read timeout");
}

/// Reads a tungstenite client until the server's Close, then on until the
/// connection ends (so its automatic Close reply goes out). Returns the code.
fn close_code_then_drain(mut client: Client) -> u16 {
    let code = client.expect_close();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if client.ws.read().is_err() {
            break;
        }
    }
    code
}

/// Raises RLIMIT_NOFILE to its hard limit (the soak test needs ~4,000 fds).
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// VmRSS of this process in kB.
fn vm_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/self/status"))
}

// ---------------------------------------------------------------------------
// 1. pong_wait
// ---------------------------------------------------------------------------

fn ping_config() -> wshub::Config {
    let mut config = test_config();
    config.websocket.ping_period = Duration::from_secs(1);
    config.websocket.pong_wait = Duration::from_secs(2);
    config
}

#[test]
fn a_client_that_never_answers_pings_is_dropped_within_pong_wait_plus_ping_period() {
    let config = ping_config();
    let (ping_period, pong_wait) = (config.websocket.ping_period, config.websocket.pong_wait);
    let server = TestServer::start(config);
    let start = Instant::now();
    let mut silent = RawWs::upgrade(server.addr, "/api/ws/connect?user_id=silent");
    server.wait_online(1);
    assert_eq!(online_users(server.addr), ["silent"]);

    let (frames, end) = silent.read_until_end(pong_wait + ping_period + SLACK + WAIT);
    let gone_after = start.elapsed();

    assert!(
        end.is_dropped(),
        "connection not dropped: {end:?} after {gone_after:?}, frames {frames:?}"
    );
    assert!(
        frames.iter().any(|f| f.opcode == OP_PING),
        "no Ping arrived before the drop: {frames:?}"
    );
    assert!(
        frames
            .iter()
            .all(|f| f.opcode == OP_PING || f.opcode == OP_CLOSE),
        "unexpected frames: {frames:?}"
    );
    assert!(
        gone_after + EARLY >= pong_wait,
        "dropped after {gone_after:?}, before pong_wait {pong_wait:?}"
    );
    assert!(
        gone_after <= pong_wait + ping_period + SLACK,
        "dropped only after {gone_after:?}"
    );
    let v = status(server.addr);
    assert_eq!(v["online_count"], 0, "{v}");
    assert_eq!(v["online_users"], json!([]), "{v}");
    assert_eq!(metric(server.addr, "wshub_pong_timeouts_total"), Some(1));
}

#[test]
fn a_client_that_reads_answers_pings_and_stays_connected() {
    let server = TestServer::start(ping_config());
    let mut client = server.connect(Some("alive"));
    server.wait_online(1);
    set_client_timeout(&mut client, Duration::from_millis(100));
    let until = Instant::now() + Duration::from_secs(4);
    let mut pings = 0;
    while Instant::now() < until {
        match client.ws.read() {
            Ok(WsMessage::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected message {other:?}"),
            Err(tungstenite::Error::Io(e))
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(e) => panic!("connection lost after {pings} pings: {e}"),
        }
    }
    // 4 s at one Ping per second: a missing Ping schedule would show here.
    assert!(pings >= 2, "only {pings} Pings in 4 s");
    set_client_timeout(&mut client, WAIT);
    assert_eq!(client.sync(), Vec::<Value>::new());
    let v = status(server.addr);
    assert_eq!(v["online_count"], 1, "{v}");
    assert_eq!(v["online_users"], json!(["alive"]), "{v}");
    assert_eq!(metric(server.addr, "wshub_pong_timeouts_total"), Some(0));
}

// ---------------------------------------------------------------------------
// 2 and 6. Slow consumers and write_wait
// ---------------------------------------------------------------------------

const BROADCASTS: usize = 10_000;
/// Healthy clients are never more than this many messages behind the
/// producer (below message_buffer_size, so only a reader that stopped can
/// overflow its queue).
const WINDOW: usize = 128;

/// `message_buffer_size` and `max_buffered_bytes`.
#[derive(Clone, Copy)]
struct QueueBounds {
    messages: usize,
    bytes: usize,
}

/// The message count bound is the one that trips (256 messages of ~1 KiB).
const BY_COUNT: QueueBounds = QueueBounds {
    messages: 256,
    bytes: 1 << 20,
};

/// The byte bound is the one that trips (200 KiB, above WINDOW messages).
const BY_BYTES: QueueBounds = QueueBounds {
    messages: 100_000,
    bytes: 200 * 1024,
};

/// What one slow-consumer run observed.
struct SlowRun {
    /// When status first stopped listing the slow user.
    detected: Instant,
    /// The slow client's frames, read after the test chose to.
    frames: Vec<Frame>,
    end: End,
    /// When its connection ended.
    ended: Instant,
}

/// Three healthy readers and one raw client that never reads (a 4 KiB
/// receive buffer) get 10,000 broadcasts of ~1 KiB through the handle.
/// The slow client reads only `read_after` its removal from status was
/// seen. Asserts that every healthy client got everything, in order.
fn slow_consumer_run(
    bounds: QueueBounds,
    write_wait: Duration,
    read_after: Duration,
) -> (TestServer, Vec<Client>, SlowRun) {
    let mut config = test_config();
    config.websocket.message_buffer_size = bounds.messages;
    config.websocket.max_buffered_bytes = bounds.bytes;
    config.websocket.write_wait = write_wait;
    let server = TestServer::start(config);
    let slow_stream = connect_small_rcvbuf(server.addr, 4096);
    let mut slow = RawWs::handshake(slow_stream, "/api/ws/connect?user_id=slow");
    let healthy: Vec<Client> = (0..3)
        .map(|i| server.connect(Some(&format!("healthy{i}"))))
        .collect();
    server.wait_online(4);

    let progress: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
    let readers: Vec<_> = healthy
        .into_iter()
        .enumerate()
        .map(|(n, client)| {
            let progress = progress.clone();
            thread::spawn(move || {
                let mut client = client;
                let got = read_sequence(&mut client, &progress[n]);
                (client, got)
            })
        })
        .collect();

    let addr = server.addr;
    let watcher = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while online_users(addr).iter().any(|u| u == "slow") {
            assert!(Instant::now() < deadline, "slow client never closed");
            thread::sleep(Duration::from_millis(20));
        }
        let detected = Instant::now();
        thread::sleep(read_after);
        let (frames, end) = slow.read_until_end(write_wait + SLACK + WAIT);
        SlowRun {
            detected,
            frames,
            end,
            ended: Instant::now(),
        }
    });

    produce(&server, &progress);
    let mut healthy = Vec::new();
    for (n, reader) in readers.into_iter().enumerate() {
        let (client, got) = reader.join().expect("reader thread");
        assert_eq!(got, Ok(BROADCASTS), "healthy client {n}");
        healthy.push(client);
    }
    let run = watcher.join().expect("watcher thread");
    (server, healthy, run)
}

/// Broadcasts 0..BROADCASTS, never more than WINDOW ahead of the slowest
/// healthy reader.
fn produce(server: &TestServer, progress: &[AtomicUsize]) {
    let pad = "x".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..BROADCASTS {
        while progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
            + WINDOW
            <= i
        {
            assert!(Instant::now() < deadline, "healthy readers stalled at {i}");
            thread::sleep(Duration::from_millis(1));
        }
        let message = wshub::Message::new("n", json!({"i": i, "pad": pad}));
        loop {
            match server.handle.broadcast(&message) {
                Ok(()) => break,
                Err(wshub::HandleError::QueueFull) => {
                    assert!(Instant::now() < deadline, "command queue stayed full");
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("broadcast {i}: {e}"),
            }
        }
    }
}

/// Reads broadcasts 0..BROADCASTS in order; `Ok(count)` or what went wrong.
fn read_sequence(client: &mut Client, progress: &AtomicUsize) -> Result<usize, String> {
    for expected in 0..BROADCASTS {
        let message = match client.ws.read() {
            Ok(WsMessage::Text(text)) => text,
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
            Ok(other) => return Err(format!("at {expected}: got {other:?}")),
            Err(e) => return Err(format!("at {expected}: {e}")),
        };
        let v: Value = serde_json::from_str(message.as_str())
            .map_err(|e| format!("at {expected}: not JSON: {e}"))?;
        if v["type"] != "n" || v["content"]["i"] != expected {
            return Err(format!("expected {expected}, got {}", v["content"]["i"]));
        }
        progress.store(expected + 1, Ordering::Relaxed);
    }
    Ok(BROADCASTS)
}

/// The slow client's data frames are broadcasts 0, 1, 2, ... in order.
fn assert_in_order_prefix(frames: &[Frame]) -> usize {
    let data: Vec<&Frame> = frames.iter().filter(|f| f.opcode != OP_PING).collect();
    let mut count = 0;
    for frame in data.iter().take_while(|f| f.opcode == OP_TEXT) {
        assert!(frame.fin, "fragmented broadcast");
        assert_eq!(frame.json()["content"]["i"], count, "out of order");
        count += 1;
    }
    count
}

#[test]
fn a_slow_consumer_gets_1013_while_three_healthy_clients_get_all_10000_in_order() {
    let write_wait = Duration::from_secs(2);
    let (server, mut healthy, run) = slow_consumer_run(BY_COUNT, write_wait, Duration::ZERO);

    let received = assert_in_order_prefix(&run.frames);
    let rest: Vec<&Frame> = run
        .frames
        .iter()
        .filter(|f| f.opcode != OP_PING)
        .skip(received)
        .collect();
    assert!(received > 0, "the slow client got nothing before its Close");
    assert!(received < BROADCASTS, "the slow client got everything");
    assert_eq!(rest.len(), 1, "after {received} broadcasts: {rest:?}");
    assert_eq!(rest[0].close_code(), 1013, "{:?}", rest[0]);
    assert!(run.end.is_dropped(), "not dropped: {:?}", run.end);
    let closed_after = run.ended.duration_since(run.detected);
    assert!(
        closed_after <= write_wait + SLACK,
        "socket dropped {closed_after:?} after the slow consumer left status (write_wait {write_wait:?})"
    );

    let v = status(server.addr);
    assert_eq!(v["online_count"], 3, "{v}");
    assert_eq!(
        v["online_users"],
        json!(["healthy0", "healthy1", "healthy2"]),
        "{v}"
    );
    assert_eq!(
        metric(server.addr, "wshub_slow_consumer_closes_total"),
        Some(1)
    );
    assert_eq!(
        metric(server.addr, "wshub_close_codes_sent_total{code=\"1013\"}"),
        Some(1)
    );
    for client in &mut healthy {
        assert_eq!(client.sync(), Vec::<Value>::new());
    }
}

#[test]
fn a_slow_consumer_that_never_reads_is_dropped_within_write_wait() {
    let write_wait = Duration::from_secs(2);
    // Read only once write_wait (plus slack) has passed since it was closed.
    let (server, healthy, run) = slow_consumer_run(BY_COUNT, write_wait, write_wait + SLACK);

    let received = assert_in_order_prefix(&run.frames);
    assert!(received > 0, "nothing reached the kernel buffers");
    // Its Close 1013 sat behind a full queue that could not be written: a
    // socket still open now would hand over all of that queue and the Close.
    let after: Vec<&Frame> = run
        .frames
        .iter()
        .filter(|f| f.opcode != OP_PING)
        .skip(received)
        .collect();
    assert!(
        after.is_empty(),
        "the socket was still being written after write_wait: {} broadcasts then {:?}",
        received,
        after.first()
    );
    assert!(run.end.is_dropped(), "not dropped: {:?}", run.end);
    assert_eq!(
        metric(server.addr, "wshub_slow_consumer_closes_total"),
        Some(1)
    );
    assert_eq!(status(server.addr)["online_count"], healthy.len());
}

#[test]
fn a_slow_consumer_over_max_buffered_bytes_gets_1013_as_well() {
    let write_wait = Duration::from_secs(2);
    let (server, mut healthy, run) = slow_consumer_run(BY_BYTES, write_wait, Duration::ZERO);

    let received = assert_in_order_prefix(&run.frames);
    let rest: Vec<&Frame> = run
        .frames
        .iter()
        .filter(|f| f.opcode != OP_PING)
        .skip(received)
        .collect();
    assert!(received > 0 && received < BROADCASTS, "received {received}");
    assert_eq!(rest.len(), 1, "after {received} broadcasts: {rest:?}");
    assert_eq!(rest[0].close_code(), 1013, "{:?}", rest[0]);
    assert!(run.end.is_dropped(), "not dropped: {:?}", run.end);
    assert_eq!(
        metric(server.addr, "wshub_slow_consumer_closes_total"),
        Some(1)
    );
    for client in &mut healthy {
        assert_eq!(client.sync(), Vec::<Value>::new());
    }
}

#[test]
fn one_message_larger_than_max_buffered_bytes_still_reaches_an_idle_session() {
    let mut config = test_config();
    config.websocket.max_buffered_bytes = 1000;
    let server = TestServer::start(config);
    let mut client = server.connect(Some("big"));
    server.wait_online(1);
    let content = "L".repeat(5000);
    server
        .handle
        .send_to_user("big", &wshub::Message::new("large", json!(content)))
        .expect("send");
    assert_eq!(
        client.recv_json(),
        json!({"type": "large", "content": content})
    );
    assert_eq!(client.sync(), Vec::<Value>::new());
    assert_eq!(
        metric(server.addr, "wshub_slow_consumer_closes_total"),
        Some(0)
    );
}

/// A burst of pushes that the readers' socket buffers can take at once
/// (2,000 messages of ~30 bytes, 60 KB per reader) is not a slow consumer,
/// whatever the loop's batching: message_buffer_size bounds what waits
/// behind a socket that takes no more, not how many pushes arrive together.
#[test]
fn a_burst_that_fits_the_socket_buffers_closes_no_reader() {
    const BURST: usize = 2_000;
    let mut config = test_config();
    config.websocket.message_buffer_size = 256;
    let server = TestServer::start(config);
    let clients: Vec<Client> = (0..3)
        .map(|i| server.connect(Some(&format!("reader{i}"))))
        .collect();
    server.wait_online(3);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            thread::spawn(move || {
                for expected in 0..BURST {
                    match client.ws.read() {
                        Ok(WsMessage::Text(t)) => {
                            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                            if v != json!({"type": "b", "content": expected}) {
                                return Err(format!("expected {expected}, got {v}"));
                            }
                        }
                        other => return Err(format!("at {expected}/{BURST}: {other:?}")),
                    }
                }
                Ok(client)
            })
        })
        .collect();
    for i in 0..BURST {
        server
            .handle
            .broadcast(&wshub::Message::new("b", json!(i)))
            .unwrap_or_else(|e| panic!("broadcast {i}: {e}"));
    }
    let mut kept = Vec::new();
    for (n, reader) in readers.into_iter().enumerate() {
        match reader.join().expect("reader thread") {
            Ok(client) => kept.push(client),
            Err(e) => panic!("reader {n}: {e}"),
        }
    }
    assert_eq!(
        metric(server.addr, "wshub_slow_consumer_closes_total"),
        Some(0)
    );
    assert_eq!(status(server.addr)["online_count"], kept.len());
}

/// The same from the socket side: one client's burst of 1,000 small chat
/// broadcasts in one write (40 KB per reader) closes no reader.
#[test]
fn a_sender_burst_that_fits_the_socket_buffers_closes_no_reader() {
    const BURST: usize = 1_000;
    let mut config = test_config();
    config.websocket.message_buffer_size = 256;
    let server = TestServer::start(config);
    let mut sender = server.connect(Some("sender"));
    let clients: Vec<Client> = (0..3)
        .map(|i| server.connect(Some(&format!("reader{i}"))))
        .collect();
    server.wait_online(4);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            thread::spawn(move || {
                for expected in 0..BURST {
                    let want = json!({"type": "chat", "from": "sender", "content": expected});
                    match client.ws.read() {
                        Ok(WsMessage::Text(t)) => {
                            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                            if v != want {
                                return Err(format!("expected {want}, got {v}"));
                            }
                        }
                        other => return Err(format!("at {expected}/{BURST}: {other:?}")),
                    }
                }
                Ok(client)
            })
        })
        .collect();
    for i in 0..BURST {
        let text = json!({"type": "chat", "content": i}).to_string();
        sender.ws.write(WsMessage::text(text)).expect("queue");
    }
    sender.ws.flush().expect("one write");
    let mut kept = Vec::new();
    for (n, reader) in readers.into_iter().enumerate() {
        match reader.join().expect("reader thread") {
            Ok(client) => kept.push(client),
            Err(e) => panic!("reader {n}: {e}"),
        }
    }
    assert_eq!(sender.sync(), Vec::<Value>::new());
    assert_eq!(
        metric(server.addr, "wshub_slow_consumer_closes_total"),
        Some(0)
    );
    assert_eq!(status(server.addr)["online_count"], kept.len() + 1);
}

// ---------------------------------------------------------------------------
// 3. max_connections
// ---------------------------------------------------------------------------

fn assert_at_capacity(addr: SocketAddr, path: &str) {
    let response = raw_http(addr, upgrade_request(path).as_bytes());
    let v = assert_json_error(&response, 503);
    assert_eq!(v, json!({"error": "server at capacity"}), "{path}");
}

#[test]
fn the_sixth_upgrade_gets_503_and_the_seventh_succeeds_after_one_closes() {
    let mut config = test_config();
    config.websocket.max_connections = 5;
    let server = TestServer::start(config);
    let mut chats: Vec<Client> = (0..4)
        .map(|i| server.connect(Some(&format!("u{i}"))))
        .collect();
    // Echo sessions count against max_connections too.
    let mut echo = server.connect_path("/api/ws/echo");
    echo.send_text("counted");
    assert_eq!(echo.recv_text(), "counted");
    server.wait_online(4);

    assert_at_capacity(server.addr, "/api/ws/connect?user_id=sixth");
    assert_at_capacity(server.addr, "/api/ws/echo");
    assert_at_capacity(server.addr, "/api/ws/connect");
    assert!(
        tungstenite::client(
            server.url("/api/ws/connect?user_id=sixth"),
            TcpStream::connect(server.addr).expect("connect"),
        )
        .is_err(),
        "tungstenite got a session past max_connections"
    );
    // Refused upgrades hold no slot, and REST still works at capacity.
    assert_eq!(status(server.addr)["online_count"], 4);

    chats.pop().expect("a chat client").close();
    server.wait_online(3);
    let mut seventh = server.connect(Some("seventh"));
    server.wait_online(4);
    assert_eq!(seventh.sync(), Vec::<Value>::new());
    assert_eq!(online_users(server.addr), ["seventh", "u0", "u1", "u2"]);
    assert_at_capacity(server.addr, "/api/ws/connect?user_id=eighth");

    // Closing the echo session frees a slot as well.
    echo.close();
    let mut echo2 = server.connect_path("/api/ws/echo");
    echo2.send_text("again");
    assert_eq!(echo2.recv_text(), "again");
    assert_at_capacity(server.addr, "/api/ws/echo");
    assert_eq!(
        metric(
            server.addr,
            "wshub_handshake_failures_total{reason=\"capacity\"}"
        ),
        Some(6)
    );
    for client in chats.iter_mut().chain([&mut seventh, &mut echo2]) {
        client.expect_silence(50);
    }
}

// ---------------------------------------------------------------------------
// 4. Input bounds
// ---------------------------------------------------------------------------

const MAX_HEAD: usize = 1024;
const MAX_MESSAGE: usize = 4096;

fn bounds_server() -> TestServer {
    let mut config = test_config();
    config.websocket.max_header_bytes = MAX_HEAD;
    config.websocket.max_message_size = MAX_MESSAGE;
    // Far longer than any read below: an answer cannot be a timeout's.
    config.websocket.handshake_timeout = Duration::from_secs(60);
    TestServer::start(config)
}

/// `GET path` padded with an `X-Pad` header to exactly `len` head bytes.
fn head_of_len(request_line_and_headers: &str, len: usize) -> String {
    let prefix = format!("{request_line_and_headers}X-Pad: ");
    let pad = len - prefix.len() - "\r\n\r\n".len();
    let head = format!("{prefix}{}\r\n\r\n", "a".repeat(pad));
    assert_eq!(head.len(), len);
    head
}

#[test]
fn a_head_of_exactly_max_header_bytes_passes_and_one_byte_more_gets_431() {
    let server = bounds_server();
    let base = "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n";
    let (code, headers, body) = raw_http(server.addr, head_of_len(base, MAX_HEAD).as_bytes());
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"status":"ok"}"#),
        "{headers:?}"
    );

    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(head_of_len(base, MAX_HEAD + 1).as_bytes())
        .expect("send");
    let mut reader = BufReader::new(stream);
    assert_json_error(&read_full_response(&mut reader), 431);
    let (rest, end) = read_to_close(&mut reader, WAIT);
    assert_eq!(
        (rest.len(), end),
        (0, End::Eof),
        "connection kept after 431"
    );

    // Upgrades are bounded alike.
    let upgrade = upgrade_request("/api/ws/connect?user_id=big");
    let upgrade_headers = upgrade
        .strip_suffix("\r\n")
        .expect("head ends in a blank line");
    let big_upgrade = head_of_len(upgrade_headers, MAX_HEAD + 1);
    assert_json_error(&raw_http(server.addr, big_upgrade.as_bytes()), 431);
    assert_eq!(status(server.addr)["online_count"], 0);
}

#[test]
fn an_oversized_head_gets_431_before_its_blank_line_arrives() {
    let server = bounds_server();
    for start in [
        "GET /health HTTP/1.1\r\nHost: t\r\n".to_owned(),
        upgrade_request("/api/ws/connect?user_id=big").replace("\r\n\r\n", "\r\n"),
    ] {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.write_all(start.as_bytes()).expect("send");
        // Header lines, never a blank line: the head only grows.
        let mut sent = start.len();
        let mut n = 0;
        while sent <= MAX_HEAD + 100 {
            let line = format!("X-Filler-{n}: {}\r\n", "b".repeat(40));
            stream.write_all(line.as_bytes()).expect("send header line");
            sent += line.len();
            n += 1;
        }
        let mut reader = BufReader::new(stream);
        assert_json_error(&read_full_response(&mut reader), 431);
        let (_, end) = read_to_close(&mut reader, WAIT);
        assert!(end.is_dropped(), "connection kept after 431: {end:?}");
    }
    assert_eq!(
        metric(
            server.addr,
            "wshub_handshake_failures_total{reason=\"too_large\"}"
        ),
        Some(2)
    );
}

#[test]
fn a_body_over_max_message_size_gets_413_before_it_is_sent() {
    let server = bounds_server();
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let head = format!(
        "POST /api/ws/broadcast HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        MAX_MESSAGE + 1
    );
    stream.write_all(head.as_bytes()).expect("send head");
    let mut reader = BufReader::new(stream);
    assert_json_error(&read_full_response(&mut reader), 413);
    let (_, end) = read_to_close(&mut reader, WAIT);
    assert!(end.is_dropped(), "connection kept after 413: {end:?}");

    // A body of exactly max_message_size is read and acted on.
    let mut listener = server.connect(Some("listener"));
    server.wait_online(1);
    let overhead = r#"{"type":"t","content":""}"#.len();
    let content = "c".repeat(MAX_MESSAGE - overhead);
    let body = json!({"type": "t", "content": content}).to_string();
    assert_eq!(body.len(), MAX_MESSAGE);
    let (code, reply) = http(server.addr, "POST", "/api/ws/broadcast", &[], &body);
    assert_eq!((code, reply.as_str()), (200, r#"{"sent":1}"#));
    assert_eq!(
        listener.recv_json(),
        json!({"type": "t", "content": content})
    );
}

/// Reads until the server's Close; answers it and expects the server's FIN.
fn expect_close_code(raw: &mut RawWs) -> u16 {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match raw.next_frame(left) {
            Ok(frame) if frame.opcode == OP_CLOSE => {
                let code = frame.close_code();
                raw.send(&client_frame(0x88, &code.to_be_bytes()))
                    .expect("send Close reply");
                let (frames, end) = raw.read_until_end(WAIT);
                assert!(frames.is_empty(), "frames after Close: {frames:?}");
                assert!(
                    end.is_dropped(),
                    "no FIN after the close handshake: {end:?}"
                );
                return code;
            }
            Ok(frame) if frame.opcode == OP_PING => continue,
            Ok(frame) => panic!("expected Close, got {frame:?}"),
            Err(end) => panic!("connection ended without Close: {end:?}"),
        }
    }
}

#[test]
fn a_websocket_message_over_max_message_size_gets_1009_from_its_header() {
    let server = bounds_server();
    for path in ["/api/ws/echo", "/api/ws/connect?user_id=big"] {
        let mut raw = RawWs::upgrade(server.addr, path);
        // Only the header: the limit is checked before any payload.
        raw.send(&masked_header(0x80 | OP_TEXT, MAX_MESSAGE + 1))
            .expect("send header");
        assert_eq!(expect_close_code(&mut raw), 1009, "{path}");
    }
    // A 64-bit length far past the limit is refused the same way.
    let mut raw = RawWs::upgrade(server.addr, "/api/ws/echo");
    raw.send(&masked_header(0x80 | 0x2, 1 << 40))
        .expect("send header");
    assert_eq!(expect_close_code(&mut raw), 1009);
    assert_eq!(status(server.addr)["online_count"], 0);
}

#[test]
fn fragments_adding_up_past_max_message_size_get_1009() {
    let server = bounds_server();
    let mut raw = RawWs::upgrade(server.addr, "/api/ws/echo");
    raw.send(&client_frame(OP_TEXT, &[b'a'; 3000]))
        .expect("first fragment");
    raw.send(&client_frame(OP_CONTINUATION, &[b'a'; 1000]))
        .expect("second fragment");
    // 4,000 so far; 97 more make 4,097.
    raw.send(&masked_header(0x80 | OP_CONTINUATION, 97))
        .expect("last fragment header");
    assert_eq!(expect_close_code(&mut raw), 1009);
}

#[test]
fn a_message_of_exactly_max_message_size_is_accepted() {
    let server = bounds_server();
    let text = "e".repeat(MAX_MESSAGE);
    let mut echo = server.connect_path("/api/ws/echo");
    echo.send_text(&text);
    assert_eq!(echo.recv_text(), text);
    echo.ws
        .send(WsMessage::binary(vec![7u8; MAX_MESSAGE]))
        .expect("send binary");
    match echo.ws.read().expect("read") {
        WsMessage::Binary(b) => assert_eq!(&b[..], &[7u8; MAX_MESSAGE][..]),
        other => panic!("expected binary, got {other:?}"),
    }

    // Reassembled from fragments, exactly at the limit.
    let mut raw = RawWs::upgrade(server.addr, "/api/ws/echo");
    raw.send(&client_frame(OP_TEXT, &[b'f'; 3000]))
        .expect("send");
    raw.send(&client_frame(
        0x80 | OP_CONTINUATION,
        &[b'f'; MAX_MESSAGE - 3000],
    ))
    .expect("send");
    let frame = raw
        .next_frame(WAIT)
        .expect("echo of the fragmented message");
    assert_eq!((frame.fin, frame.opcode), (true, OP_TEXT));
    assert_eq!(frame.payload, vec![b'f'; MAX_MESSAGE]);

    // A chat message of exactly the limit is processed.
    let mut chat = server.connect(Some("max"));
    let overhead = r#"{"type":"ping","content":""}"#.len();
    let content = "p".repeat(MAX_MESSAGE - overhead);
    let ping = json!({"type": "ping", "content": content}).to_string();
    assert_eq!(ping.len(), MAX_MESSAGE);
    chat.send_text(&ping);
    assert_eq!(
        chat.recv_json(),
        json!({"type": "pong", "content": content})
    );
}

// ---------------------------------------------------------------------------
// 5. Slowloris and idle keep-alive (handshake_timeout)
// ---------------------------------------------------------------------------

fn handshake_config() -> wshub::Config {
    let mut config = test_config();
    config.websocket.handshake_timeout = Duration::from_secs(1);
    config
}

/// Sends a partial upgrade head, then one byte every 200 ms, never the blank
/// line. Returns how long after `connect` the server ended it, what it sent,
/// and how it ended.
fn slowloris(addr: SocketAddr) -> (Duration, Vec<u8>, End) {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(b"GET /api/ws/connect?user_id=loris HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .expect("send partial head");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    while start.elapsed() < WAIT {
        match stream.read(&mut chunk) {
            Ok(0) => return (start.elapsed(), received, End::Eof),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if let Err(e) = stream.write_all(b"z") {
                    return (start.elapsed(), received, End::Error(e.kind()));
                }
            }
            Err(e) => return (start.elapsed(), received, End::Error(e.kind())),
        }
    }
    (start.elapsed(), received, End::Timeout)
}

#[test]
fn a_slowloris_connection_is_closed_after_handshake_timeout_while_chat_keeps_working() {
    let config = handshake_config();
    let timeout = config.websocket.handshake_timeout;
    let server = TestServer::start(config);
    let mut a = server.connect(Some("a"));
    let mut b = server.connect(Some("b"));
    server.wait_online(2);

    let addr = server.addr;
    let loris = thread::spawn(move || slowloris(addr));
    let mut exchanged = 0;
    let deadline = Instant::now() + WAIT;
    while !loris.is_finished() && Instant::now() < deadline {
        a.send_json(json!({"type": "chat", "to": "b", "content": exchanged}));
        assert_eq!(
            b.recv_json(),
            json!({"type": "chat", "to": "b", "from": "a", "content": exchanged})
        );
        exchanged += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let (closed_after, received, end) = loris.join().expect("slowloris thread");
    assert!(
        end.is_dropped(),
        "slowloris not closed: {end:?} after {closed_after:?}"
    );
    assert!(
        closed_after + EARLY >= timeout,
        "closed after {closed_after:?}, before handshake_timeout"
    );
    assert!(
        closed_after <= timeout + SLACK,
        "closed only after {closed_after:?}"
    );
    assert!(
        received.is_empty() || received.starts_with(b"HTTP/1.1 408 "),
        "unexpected answer: {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        exchanged >= 1,
        "no chat exchange while the slowloris was open"
    );
    // handshake_timeout never applies to the upgraded sessions.
    assert_eq!(online_users(server.addr), ["a", "b"]);
    assert_eq!(a.sync(), Vec::<Value>::new());
    assert_eq!(
        metric(
            server.addr,
            "wshub_handshake_failures_total{reason=\"timeout\"}"
        ),
        Some(1)
    );
}

#[test]
fn an_idle_keep_alive_rest_connection_is_closed_after_handshake_timeout() {
    let config = handshake_config();
    let timeout = config.websocket.handshake_timeout;
    let server = TestServer::start(config);
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let request = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    // Four requests 400 ms apart (1.6 s > handshake_timeout): the deadline
    // restarts at the end of each response.
    let mut last_sent = Instant::now();
    for n in 0..4 {
        if n > 0 {
            thread::sleep(Duration::from_millis(400));
        }
        last_sent = Instant::now();
        writer.write_all(request).expect("send request");
        let (code, headers, body) = read_full_response(&mut reader);
        assert_eq!(
            (code, body.as_str()),
            (200, r#"{"status":"ok"}"#),
            "request {n}"
        );
        assert_eq!(header(&headers, "connection"), Some("keep-alive"));
    }
    let (rest, end) = read_to_close(&mut reader, timeout + SLACK + WAIT);
    let closed_after = last_sent.elapsed();
    assert!(end.is_dropped(), "idle connection kept: {end:?}");
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408 "),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        closed_after + EARLY >= timeout,
        "closed {closed_after:?} after the last request"
    );
    assert!(
        closed_after <= timeout + SLACK,
        "closed only {closed_after:?} after the last request"
    );
}

// ---------------------------------------------------------------------------
// Data and FIN in one segment
// ---------------------------------------------------------------------------

/// Sends `bytes` and the FIN in the same TCP segment (TCP_CORK holds the
/// data until `shutdown` adds the FIN), so the server sees both in one
/// readiness event.
fn send_with_fin(stream: &TcpStream, bytes: &[u8]) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on our own socket with a valid c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_CORK");
    (&*stream).write_all(bytes).expect("send");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
}

/// A client that sends its last message and closes its side at once (no
/// Close frame: a tab killed, a process exiting) leaves status as soon as
/// the server has read that FIN, not at pong_wait.
#[test]
fn a_last_message_and_fin_together_end_the_session_at_once() {
    let server = TestServer::start(test_config());
    let mut peer = server.connect(Some("peer"));
    let mut leaver = RawWs::upgrade(server.addr, "/api/ws/connect?user_id=leaver");
    server.wait_online(2);
    let message = json!({"type": "chat", "to": "peer", "content": "bye"}).to_string();
    send_with_fin(
        &leaver.stream,
        &client_frame(0x80 | OP_TEXT, message.as_bytes()),
    );
    assert_eq!(
        peer.recv_json(),
        json!({"type": "chat", "to": "peer", "from": "leaver", "content": "bye"})
    );
    // pong_wait is 60 s here: only the FIN can end the session this soon.
    let deadline = Instant::now() + SLACK;
    while online_users(server.addr) != ["peer"] {
        assert!(
            Instant::now() < deadline,
            "the leaver's FIN was not seen: {}",
            status(server.addr)
        );
        thread::sleep(Duration::from_millis(20));
    }
    let (_, end) = leaver.read_until_end(WAIT);
    assert!(
        end.is_dropped(),
        "server kept the half-closed socket: {end:?}"
    );
}

/// A REST request sent with the FIN gets its response, then the connection
/// ends at once (not after handshake_timeout).
#[test]
fn a_request_and_fin_together_get_the_response_then_the_end() {
    let mut config = test_config();
    config.websocket.handshake_timeout = Duration::from_secs(60);
    let server = TestServer::start(config);
    let stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    send_with_fin(&stream, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let sent = Instant::now();
    let mut reader = BufReader::new(stream);
    let (code, _, body) = read_full_response(&mut reader);
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (rest, end) = read_to_close(&mut reader, WAIT);
    assert_eq!((rest.len(), end), (0, End::Eof));
    assert!(
        sent.elapsed() < SLACK,
        "the connection ended only {:?} after the request and FIN (handshake_timeout 60 s)",
        sent.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 7. Shutdown
// ---------------------------------------------------------------------------

#[test]
fn shutdown_sends_1001_to_every_client_and_run_returns_ok() {
    let mut config = test_config();
    config.websocket.shutdown_timeout = Duration::from_secs(20);
    let shutdown_timeout = config.websocket.shutdown_timeout;
    let server = TestServer::start(config);
    let clients = vec![
        server.connect(Some("a")),
        server.connect(None),
        server.connect_path("/api/ws/echo"),
    ];
    server.wait_online(2);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|c| thread::spawn(move || close_code_then_drain(c)))
        .collect();
    let addr = server.addr;
    let started = Instant::now();
    let result = server.stop();
    let took = started.elapsed();
    assert!(result.is_ok(), "run returned {result:?}");
    for reader in readers {
        assert_eq!(reader.join().expect("reader"), 1001);
    }
    // Every client answered: run() does not wait out shutdown_timeout.
    assert!(took < shutdown_timeout, "run returned after {took:?}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after run returned"
    );
}

#[test]
fn shutdown_returns_within_shutdown_timeout_when_a_client_never_answers() {
    let mut config = test_config();
    config.websocket.shutdown_timeout = Duration::from_secs(2);
    let shutdown_timeout = config.websocket.shutdown_timeout;
    let server = TestServer::start(config);
    let mut deaf = RawWs::upgrade(server.addr, "/api/ws/connect?user_id=deaf");
    let polite = server.connect(Some("polite"));
    server.wait_online(2);
    let addr = server.addr;

    let started = Instant::now();
    let stopper = thread::spawn(move || server.stop());
    // Once the polite client has its 1001 the shutdown has begun: while the
    // server waits for the deaf client, nothing new is served.
    assert_eq!(close_code_then_drain(polite), 1001);
    let mut late = TcpStream::connect(addr).ok();
    if let Some(late) = late.as_mut() {
        late.set_read_timeout(Some(WAIT)).expect("timeout");
        let _ = late.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    let result = stopper.join().expect("stopper thread");
    let took = started.elapsed();
    assert!(result.is_ok(), "run returned {result:?}");
    assert!(
        took <= shutdown_timeout + SLACK,
        "run returned only after {took:?}"
    );

    let (frames, end) = deaf.read_until_end(WAIT);
    let close = frames
        .iter()
        .find(|f| f.opcode == OP_CLOSE)
        .unwrap_or_else(|| panic!("no Close for the deaf client: {frames:?}"));
    assert_eq!(close.close_code(), 1001);
    assert!(end.is_dropped(), "deaf client kept: {end:?}");
    if let Some(mut late) = late {
        let (bytes, _) = read_to_close(&mut late, WAIT);
        assert!(
            bytes.is_empty(),
            "served during shutdown: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

/// The real binary, killed (by its own pid) if a test fails before it exits.
struct Binary {
    child: Child,
    addr: SocketAddr,
    config_path: std::path::PathBuf,
    log_path: std::path::PathBuf,
}

impl Binary {
    /// Starts `wshub --config <temp>` on a free loopback port and waits for
    /// `/health`.
    fn start(name: &str, websocket_yaml: &str) -> Binary {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("bind probe");
            probe.local_addr().expect("probe address").port()
        };
        let dir = std::env::temp_dir();
        let stem = format!("wshub-liveness-{}-{name}", std::process::id());
        let config_path = dir.join(format!("{stem}.yaml"));
        let log_path = dir.join(format!("{stem}.log"));
        let yaml = format!(
            "app:\n  host: \"127.0.0.1\"\n  port: {port}\n  demo: false\nlog:\n  level: info\nwebsocket:\n{websocket_yaml}"
        );
        std::fs::write(&config_path, yaml).expect("write config");
        let log = std::fs::File::create(&log_path).expect("create log");
        let child = Command::new(env!("CARGO_BIN_EXE_wshub"))
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn wshub");
        let mut binary = Binary {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            config_path,
            log_path,
        };
        binary.wait_health();
        binary
    }

    fn wait_health(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut stream) = TcpStream::connect(self.addr) {
                stream.set_read_timeout(Some(WAIT)).expect("timeout");
                if stream
                    .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .is_ok()
                {
                    let (code, _, body) = read_full_response(&mut BufReader::new(stream));
                    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("wshub exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "no /health: {}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn connect(&self, path: &str) -> Client {
        common::connect_at(self.addr, path)
    }

    fn sigterm(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill -TERM");
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(&self.log_path);
    }
}

#[test]
fn sigterm_sends_1001_to_every_client_and_exits_0() {
    let shutdown_timeout = Duration::from_secs(3);
    let mut binary = Binary::start("sigterm", "  shutdown_timeout: 3s\n  echo: true\n");
    let clients = vec![
        binary.connect("/api/ws/connect?user_id=one"),
        binary.connect("/api/ws/connect?user_id=two"),
    ];
    let v = status(binary.addr);
    assert_eq!(v["online_users"], json!(["one", "two"]), "{v}");
    let readers: Vec<_> = clients
        .into_iter()
        .map(|c| thread::spawn(move || close_code_then_drain(c)))
        .collect();
    let signalled = Instant::now();
    binary.sigterm();
    for reader in readers {
        assert_eq!(reader.join().expect("reader"), 1001);
    }
    let status = binary.wait_exit(shutdown_timeout + SLACK);
    let log = binary.log();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {:?} after SIGTERM: {log}",
            signalled.elapsed()
        )
    });
    assert_eq!(status.code(), Some(0), "{status}: {log}");
    assert!(
        TcpStream::connect(binary.addr).is_err(),
        "port still open after exit"
    );
}

#[test]
fn a_second_sigterm_exits_at_once_even_with_a_client_that_ignores_close() {
    // Far longer than the wait below: exiting proves the second signal.
    let mut binary = Binary::start("sigterm2", "  shutdown_timeout: 60s\n");
    let mut deaf = RawWs::upgrade(binary.addr, "/api/ws/connect?user_id=deaf");
    let mut polite = binary.connect("/api/ws/connect?user_id=polite");
    assert_eq!(status(binary.addr)["online_count"], 2);

    binary.sigterm();
    // The first signal began a graceful shutdown...
    assert_eq!(polite.expect_close(), 1001);
    assert_eq!(
        binary.wait_exit(Duration::from_millis(500)),
        None,
        "exited without waiting for the deaf client: {}",
        binary.log()
    );
    // ...and the second one ends it now.
    let signalled = Instant::now();
    binary.sigterm();
    let status = binary.wait_exit(SLACK + Duration::from_secs(3));
    let log = binary.log();
    assert!(
        status.is_some(),
        "still running {:?} after the second SIGTERM: {log}",
        signalled.elapsed()
    );
    let (frames, end) = deaf.read_until_end(WAIT);
    assert!(end.is_dropped(), "deaf client still connected: {end:?}");
    assert!(
        frames
            .iter()
            .any(|f| f.opcode == OP_CLOSE && f.close_code() == 1001),
        "deaf client got no Close 1001: {frames:?}"
    );
}

// ---------------------------------------------------------------------------
// 8. Soak
// ---------------------------------------------------------------------------

mod soak {
    //! 2,000 raw WebSocket clients driven by one mio poll in the test thread:
    //! they answer every Ping with a Pong and check every broadcast.

    use super::*;
    use mio::net::TcpStream as MioStream;
    use mio::{Events, Interest, Poll, Token};

    pub const CLIENTS: usize = 2_000;
    const CONNECT_BATCH: usize = 100;

    pub struct Conn {
        stream: MioStream,
        upgraded: bool,
        inbuf: Vec<u8>,
        out: Vec<u8>,
        pub next_seq: u64,
        pub pongs: u64,
        pub failed: Option<String>,
    }

    pub struct Driver {
        poll: Poll,
        events: Events,
        pub conns: Vec<Conn>,
        scratch: Vec<u8>,
    }

    impl Driver {
        pub fn new() -> Driver {
            Driver {
                poll: Poll::new().expect("poll"),
                events: Events::with_capacity(4096),
                conns: Vec::with_capacity(CLIENTS),
                scratch: vec![0; 64 * 1024],
            }
        }

        /// Opens all clients, from 127.0.0.2..=127.0.0.9, in batches, and
        /// waits (bounded) until each has its 101.
        pub fn connect_all(&mut self, server: SocketAddr) {
            let deadline = Instant::now() + Duration::from_secs(120);
            while self.conns.len() < CLIENTS {
                let batch_end = (self.conns.len() + CONNECT_BATCH).min(CLIENTS);
                for i in self.conns.len()..batch_end {
                    self.open(i, server);
                }
                while self.conns.iter().any(|c| !c.upgraded && c.failed.is_none()) {
                    assert!(
                        Instant::now() < deadline,
                        "connecting took too long: {} upgraded",
                        self.conns.iter().filter(|c| c.upgraded).count()
                    );
                    self.pump(Duration::from_millis(50));
                }
                self.assert_healthy();
            }
        }

        fn open(&mut self, i: usize, server: SocketAddr) {
            use socket2::{Domain, Socket, Type};
            let source = SocketAddr::from(([127, 0, 0, 2 + (i % 8) as u8], 0));
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            socket.bind(&source.into()).expect("bind source address");
            socket.set_nonblocking(true).expect("nonblocking");
            match socket.connect(&server.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => panic!("connect {i}: {e}"),
            }
            let mut stream = MioStream::from_std(socket.into());
            self.poll
                .registry()
                .register(
                    &mut stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .expect("register");
            self.conns.push(Conn {
                stream,
                upgraded: false,
                inbuf: Vec::new(),
                out: upgrade_request(&format!("/api/ws/connect?user_id=soak{i}")).into_bytes(),
                next_seq: 0,
                pongs: 0,
                failed: None,
            });
        }

        /// One poll: reads, answers Pings, writes what is pending.
        pub fn pump(&mut self, timeout: Duration) {
            self.poll
                .poll(&mut self.events, Some(timeout))
                .expect("poll");
            let ready: Vec<(usize, bool, bool)> = self
                .events
                .iter()
                .map(|e| {
                    (
                        e.token().0,
                        e.is_readable() || e.is_read_closed(),
                        e.is_writable(),
                    )
                })
                .collect();
            for (i, readable, _writable) in ready {
                if readable {
                    self.read(i);
                }
                flush(&mut self.conns[i]);
            }
        }

        fn read(&mut self, i: usize) {
            let conn = &mut self.conns[i];
            loop {
                match conn.stream.read(&mut self.scratch) {
                    Ok(0) => {
                        conn.failed.get_or_insert_with(|| "server closed".into());
                        return;
                    }
                    Ok(n) => conn.inbuf.extend_from_slice(&self.scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        conn.failed.get_or_insert_with(|| format!("read: {e}"));
                        return;
                    }
                }
            }
            conn.process();
        }

        pub fn assert_healthy(&self) {
            let failed: Vec<(usize, &String)> = self
                .conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.failed.as_ref().map(|f| (i, f)))
                .collect();
            assert!(
                failed.is_empty(),
                "{} clients failed, first: {:?}",
                failed.len(),
                failed.first()
            );
        }
    }

    impl Conn {
        fn process(&mut self) {
            if !self.upgraded {
                let Some(at) = self.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return;
                };
                if !self.inbuf.starts_with(b"HTTP/1.1 101 ") {
                    let head = String::from_utf8_lossy(&self.inbuf[..at]).into_owned();
                    self.failed = Some(format!("upgrade refused: {head}"));
                    return;
                }
                self.inbuf.drain(..at + 4);
                self.upgraded = true;
            }
            let mut at = 0;
            while let Some((frame, used)) = parse_frame(&self.inbuf[at..]) {
                at += used;
                match frame.opcode {
                    OP_PING => {
                        self.out
                            .extend_from_slice(&client_frame(0x8A, &frame.payload));
                        self.pongs += 1;
                    }
                    OP_TEXT => {
                        let v = frame.json();
                        if v != json!({"type": "tick", "content": self.next_seq}) {
                            self.failed.get_or_insert_with(|| {
                                format!("expected tick {}, got {v}", self.next_seq)
                            });
                        }
                        self.next_seq += 1;
                    }
                    OP_CLOSE => {
                        self.failed
                            .get_or_insert_with(|| format!("Close {}", frame.close_code()));
                    }
                    other => {
                        self.failed
                            .get_or_insert_with(|| format!("unexpected opcode {other}"));
                    }
                }
            }
            self.inbuf.drain(..at);
        }
    }

    fn flush(conn: &mut Conn) {
        while !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::NotConnected =>
                {
                    return
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    conn.failed.get_or_insert_with(|| format!("write: {e}"));
                    return;
                }
            }
        }
    }
}

#[test]
#[ignore = "soak: ~45 s; CI runs it with --run-ignored"]
fn soak_2000_connections_30s() {
    let fd_limit = raise_fd_limit();
    assert!(
        fd_limit >= 4 * soak::CLIENTS as u64 + 100,
        "fd limit {fd_limit}"
    );
    let mut config = test_config();
    config.websocket.ping_period = Duration::from_secs(1);
    config.websocket.pong_wait = Duration::from_secs(3);
    let server = TestServer::start(config);
    let mut driver = soak::Driver::new();
    driver.connect_all(server.addr);

    // Confirm the count between pumps, so Pings keep being answered.
    let deadline = Instant::now() + WAIT;
    while status(server.addr)["online_count"] != soak::CLIENTS {
        assert!(Instant::now() < deadline, "not all clients online");
        driver.pump(Duration::from_millis(50));
    }

    let start = Instant::now();
    let run_for = Duration::from_secs(30);
    let mut sent = 0u64;
    let mut rss_at_10s = None;
    while start.elapsed() < run_for {
        if start.elapsed() >= Duration::from_secs(sent) {
            server
                .handle
                .broadcast(&wshub::Message::new("tick", json!(sent)))
                .unwrap_or_else(|e| panic!("broadcast {sent}: {e}"));
            sent += 1;
        }
        if rss_at_10s.is_none() && start.elapsed() >= Duration::from_secs(10) {
            rss_at_10s = Some(vm_rss_kb());
        }
        driver.pump(Duration::from_millis(20));
        driver.assert_healthy();
    }
    let rss_at_30s = vm_rss_kb();
    let rss_at_10s = rss_at_10s.expect("RSS at 10 s");

    let deadline = Instant::now() + WAIT;
    while driver.conns.iter().any(|c| c.next_seq < sent) {
        assert!(Instant::now() < deadline, "broadcasts not delivered");
        driver.pump(Duration::from_millis(20));
    }
    driver.assert_healthy();
    let v = status(server.addr);
    assert_eq!(v["online_count"], soak::CLIENTS, "sessions lost");
    for (i, conn) in driver.conns.iter().enumerate() {
        assert_eq!(conn.next_seq, sent, "client {i} broadcasts");
        assert!(conn.pongs >= 10, "client {i} saw only {} Pings", conn.pongs);
    }
    assert_eq!(metric(server.addr, "wshub_pong_timeouts_total"), Some(0));
    assert_eq!(
        metric(server.addr, "wshub_slow_consumer_closes_total"),
        Some(0)
    );
    assert!(
        rss_at_30s * 10 < rss_at_10s * 11,
        "RSS grew from {rss_at_10s} kB at 10 s to {rss_at_30s} kB at 30 s"
    );
}
