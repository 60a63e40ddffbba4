//! Black-box tests of docs/protocol.md section 7a, the second round of bounds
//! (issue 19): one test per finding of the review that is not about the
//! cluster, each reproducing the attack over real loopback sockets.
//!
//! CPU is the server's own CPU time (`/proc/<pid>/stat` of a `wshub` child
//! process); memory is the counting allocator's heap (installed below; it
//! counts this whole test process, so tests that read it hold [`HEAP`]).
//! Margins are wide: each bound sits far below what the attack cost before.
//! Every process started here is stopped by PID; every wait is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{client_frame, read_full_response, test_config, TestServer, WAIT};
use flate2::{Compress, Compression, FlushCompress};
use serde_json::{json, Value};

#[global_allocator]
static ALLOCATOR: wshub::alloc::Counting = wshub::alloc::Counting;

/// Held by every test that reads the heap counter.
static HEAP: Mutex<()> = Mutex::new(());

const KIB: usize = 1024;
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

fn heap_lock() -> MutexGuard<'static, ()> {
    HEAP.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn heap() -> usize {
    wshub::alloc::heap_bytes().expect("the counting allocator is installed")
}

// ------------------------------------------------------------ the binary

/// The wshub binary on a free loopback port with `websocket` settings added
/// to a test config; killed (by PID) on drop.
struct Binary {
    child: Child,
    addr: SocketAddr,
    config_path: std::path::PathBuf,
}

impl Binary {
    fn start(name: &str, websocket: &str) -> Binary {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .expect("probe port")
            .port();
        let config_path = std::env::temp_dir().join(format!(
            "wshub-bounds-{name}-{}-{port}.yaml",
            std::process::id()
        ));
        let yaml = format!(
            "app:\n  host: \"127.0.0.1\"\n  port: {port}\n  demo: false\nlog:\n  level: error\n\
             websocket:\n  echo: true\n{websocket}"
        );
        std::fs::write(&config_path, yaml).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_wshub"))
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wshub");
        let binary = Binary {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            config_path,
        };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(binary.addr).is_err() {
            assert!(Instant::now() < deadline, "wshub never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        binary
    }

    /// The server's CPU time so far (user + system), in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("stat");
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat format")
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 =
            fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
        ticks / 100.0
    }

    fn metric(&self, name: &str) -> u64 {
        metric(self.addr, name)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// One sample from `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("request");
    let (_, _, body) = read_full_response(&mut std::io::BufReader::new(stream));
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics")) as u64
}

/// Waits (bounded) until `name` reaches `at_least`.
fn wait_metric(addr: SocketAddr, name: &str, at_least: u64) {
    let deadline = Instant::now() + WAIT;
    while metric(addr, name) < at_least {
        assert!(Instant::now() < deadline, "{name} never reached {at_least}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------ raw clients

/// A raw WebSocket client over TCP that may negotiate permessage-deflate
/// (tungstenite does not), compressing each message from a fresh context.
struct Raw {
    stream: TcpStream,
    compressed: bool,
}

impl Raw {
    fn open(addr: SocketAddr, path: &str, offer: Option<&str>) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        Raw::upgrade(stream, path, offer)
    }

    fn upgrade(mut stream: TcpStream, path: &str, offer: Option<&str>) -> Raw {
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut request = common::upgrade_request(path);
        if let Some(offer) = offer {
            request = request.replacen(
                "\r\n\r\n",
                &format!("\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"),
                1,
            );
        }
        stream.write_all(request.as_bytes()).expect("upgrade");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).expect("101 head");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("head");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let compressed = head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate");
        assert_eq!(compressed, offer.is_some(), "{head}");
        Raw { stream, compressed }
    }

    /// `payload` deflated from a fresh context, tail removed.
    fn deflate(&mut self, payload: &[u8]) -> Vec<u8> {
        deflate(payload)
    }

    /// A text message, compressed if negotiated.
    fn send(&mut self, text: &str) {
        let frame = if self.compressed {
            client_frame(0xC1, &self.deflate(text.as_bytes()))
        } else {
            client_frame(0x81, text.as_bytes())
        };
        self.stream.write_all(&frame).expect("send");
    }

    /// The next frame: first byte and payload (inflated if RSV1).
    fn recv(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        read_frame(&mut self.stream)
    }

    /// The next text message as JSON (Pings skipped).
    fn recv_json(&mut self) -> Value {
        loop {
            let (first, payload) = self.recv().expect("a frame");
            match first & 0x0f {
                0x1 => return serde_json::from_slice(&payload).expect("JSON"),
                0x9 | 0xA => {}
                other => panic!("opcode {other:#x}: {payload:?}"),
            }
        }
    }
}

thread_local! {
    /// One compressor per test thread: a zlib state is hundreds of KiB,
    /// which would drown the server's figures in the heap test.
    static COMPRESSOR: std::cell::RefCell<Compress> =
        std::cell::RefCell::new(Compress::new(Compression::default(), false));
}

/// `payload` deflated from a fresh context, tail removed.
fn deflate(payload: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|c| deflate_with(&mut c.borrow_mut(), payload))
}

fn deflate_with(compressor: &mut Compress, payload: &[u8]) -> Vec<u8> {
    compressor.reset();
    let mut out = Vec::with_capacity(payload.len() / 2 + 1024);
    let mut input = payload;
    loop {
        let before = compressor.total_in();
        compressor
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .expect("deflate");
        input = &input[(compressor.total_in() - before) as usize..];
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    out.truncate(out.len() - 4);
    out
}

/// Reads one server frame; a compressed payload is inflated.
fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut ext = [0u8; 2];
        stream.read_exact(&mut ext)?;
        len = u64::from(u16::from_be_bytes(ext));
    } else if len == 127 {
        let mut ext = [0u8; 8];
        stream.read_exact(&mut ext)?;
        len = u64::from_be_bytes(ext);
    }
    let mut payload = vec![0; len as usize];
    stream.read_exact(&mut payload)?;
    if head[0] & 0x40 != 0 {
        let mut input = payload;
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(input.len() * 8 + 1024);
        let mut inflater = flate2::Decompress::new(false);
        loop {
            let before = inflater.total_in() as usize;
            inflater
                .decompress_vec(&input[before..], &mut out, flate2::FlushDecompress::Sync)
                .expect("inflate");
            if inflater.total_in() as usize == input.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        payload = out;
    }
    Ok((head[0], payload))
}

/// A close code from a Close frame's payload.
fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

fn chat(content: &str, field: &str, to: &str) -> String {
    json!({"type": "chat", field: to, "content": content}).to_string()
}

// ------------------------------------------------- 1. work per byte

/// Finding 1: 579 bytes of compressed upload inflated to 512 KiB, were
/// re-serialized, deflated once per window size and sent whole to every
/// plain member: 7.6 ms of loop time per message. Now the message takes its
/// token before it is inflated and is charged by its inflated size.
#[test]
fn compression_bombs_within_max_message_size_cost_the_loop_little_and_reach_no_one() {
    let server = Binary::start(
        "bombs",
        "  compression: true\n  max_message_size: 1048576\n  max_bytes_per_second: 65536\n",
    );
    // Members of one room: plain, and compressing with every window size
    // a client may ask for.
    let mut plain = Raw::open(server.addr, "/api/ws/connect?user_id=plain", None);
    let mut members = vec![];
    for bits in 9..=15 {
        let offer = format!("permessage-deflate; server_max_window_bits={bits}");
        members.push(Raw::open(
            server.addr,
            &format!("/api/ws/connect?user_id=w{bits}"),
            Some(&offer),
        ));
    }
    let mut attacker = Raw::open(
        server.addr,
        "/api/ws/connect?user_id=attacker",
        Some(BROWSER_OFFER),
    );
    for raw in members.iter_mut().chain([&mut plain, &mut attacker]) {
        raw.send(r#"{"type":"join","room":"r"}"#);
        raw.send(r#"{"type":"ping"}"#);
        assert_eq!(raw.recv_json()["type"], "pong");
    }
    let bomb = chat(&"x".repeat(512 * KIB), "room", "r");
    let deflated = attacker.deflate(bomb.as_bytes());
    assert!(deflated.len() < 1024, "{} bytes", deflated.len());
    let frame = client_frame(0xC1, &deflated);
    let count = 300;
    let messages_before = server.metric("wshub_messages_in_total");
    let cpu_before = server.cpu_seconds();
    // Someone must read the attacker's error replies, or it is closed as a
    // slow consumer before its bombs are all read.
    let mut replies = attacker.stream.try_clone().expect("clone");
    let reader = std::thread::spawn(move || {
        let mut errors = 0;
        while let Ok((first, payload)) = read_frame(&mut replies) {
            if first & 0x0f == 0x1 {
                let v: Value = serde_json::from_slice(&payload).expect("JSON");
                if v == json!({"type": "error", "content": "rate limit exceeded"}) {
                    errors += 1;
                }
            }
            if first & 0x0f == 0x8 {
                break;
            }
        }
        errors
    });
    for _ in 0..count {
        attacker.stream.write_all(&frame).expect("send");
    }
    wait_metric(
        server.addr,
        "wshub_messages_in_total",
        messages_before + count,
    );
    let cpu = server.cpu_seconds() - cpu_before;
    // 300 bombs of 512 KiB cost seconds before; the bucket lets 64 KiB a
    // second through.
    assert!(
        cpu < 0.5,
        "the server spent {cpu:.3} s of CPU on {count} bombs"
    );
    assert!(server.metric("wshub_byte_limited_messages_total") >= 1);
    // Nobody got a 512 KiB message; the members are still there.
    plain.send(r#"{"type":"ping"}"#);
    let reply = plain.recv_json();
    assert_eq!(reply["type"], "pong", "{reply}");
    for raw in &mut members {
        raw.send(r#"{"type":"ping"}"#);
        assert_eq!(raw.recv_json()["type"], "pong");
    }
    attacker.stream.shutdown(std::net::Shutdown::Both).ok();
    let errors = reader.join().expect("reader");
    assert!(errors >= count as usize - 10, "{errors} rate-limit replies");
}

/// Within the byte rate, a compressed message goes through as before,
/// and a plain one over what is left is dropped like a compressed one.
#[test]
fn max_bytes_per_second_at_the_burst_and_one_past() {
    let mut config = test_config();
    config.websocket.compression = true;
    config.websocket.max_bytes_per_second = 4000;
    let server = TestServer::start(config);
    let mut raw = Raw::open(server.addr, "/api/ws/echo", Some(BROWSER_OFFER));
    let big = "y".repeat(3000);
    raw.send(&big);
    let (first, payload) = raw.recv().expect("echo");
    assert_eq!((first, payload.len()), (0xC1, 3000), "within the burst");
    // 1000 bytes left (plus what refilled meanwhile, well under 1000).
    raw.send(&big);
    let reply = raw.recv_json();
    assert_eq!(
        reply,
        json!({"type": "error", "content": "rate limit exceeded"})
    );
    assert!(metric(server.addr, "wshub_byte_limited_messages_total") >= 1);
    // Plain data counts the same: binary too.
    let mut plain = Raw::open(server.addr, "/api/ws/echo", None);
    plain
        .stream
        .write_all(&client_frame(0x82, &[7u8; 3900]))
        .expect("send");
    let (first, payload) = plain.recv().expect("echo");
    assert_eq!((first, payload.len()), (0x82, 3900));
    plain
        .stream
        .write_all(&client_frame(0x82, &[7u8; 3900]))
        .expect("send");
    assert_eq!(
        plain.recv_json(),
        json!({"type": "error", "content": "rate limit exceeded"})
    );
}

// ------------------------------------------------- 4. no inflate history

/// Heap per session of `n` idle sessions that each sent one message.
fn heap_per_session(server: &TestServer, n: usize, offer: Option<&str>, message: &str) -> usize {
    let before = heap();
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let mut raw = Raw::open(server.addr, &format!("/api/ws/connect?user_id=i{i}"), offer);
        raw.send(message);
        assert_eq!(raw.recv_json()["type"], "pong");
        sessions.push(raw);
    }
    // The replies were read: what is left is what the server keeps (and
    // the clients' sockets, the same in both runs).
    std::thread::sleep(Duration::from_millis(100));
    let per = heap().saturating_sub(before) / n;
    drop(sessions);
    server.wait_online(0);
    per
}

/// Finding 4: with context takeover a compressed session kept what it had
/// sent (up to 32 KiB) after one message. Now it keeps nothing.
#[test]
fn an_idle_compressed_session_costs_what_a_plain_one_does_after_traffic() {
    let _heap = heap_lock();
    let mut config = test_config();
    config.websocket.compression = true;
    let server = TestServer::start(config);
    // One message of 94 bytes, and one of 8 KiB that deflates well.
    for content in ["y".repeat(60), "z".repeat(8 * KIB)] {
        let message = json!({"type": "ping", "content": content}).to_string();
        // A first run grows the server's tables to size and makes the
        // loop's one compressor and inflater (shared by every session);
        // then compressed before plain, so any growth left is charged to
        // the compressed run.
        heap_per_session(&server, 300, Some(BROWSER_OFFER), &message);
        let compressed = heap_per_session(&server, 300, Some(BROWSER_OFFER), &message);
        let plain = heap_per_session(&server, 300, None, &message);
        assert!(
            compressed <= plain + 64,
            "{} bytes: compressed {compressed} B per session, plain {plain} B",
            message.len()
        );
    }
}

// ------------------------------------------------- 8. binary frames count

/// Finding 8: binary frames were not counted by the rate limit (20,000
/// frames, 20,000 error replies, never closed). Now they count, and a
/// client at over ten times the rate for 5 s is closed with 1008.
#[test]
fn binary_frames_count_and_a_binary_flood_is_closed_with_1008() {
    let mut config = test_config();
    config.websocket.max_messages_per_second = 5;
    let server = TestServer::start(config);
    let mut raw = Raw::open(server.addr, "/api/ws/connect?user_id=flood", None);
    let mut replies = raw.stream.try_clone().expect("clone");
    let reader = std::thread::spawn(move || {
        let (mut unsupported, mut limited) = (0u32, 0u32);
        loop {
            match read_frame(&mut replies) {
                Ok((first, payload)) if first & 0x0f == 0x8 => {
                    return (unsupported, limited, close_code(&payload))
                }
                Ok((_, payload)) => {
                    let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                    match v["content"].as_str() {
                        Some("binary messages are not supported") => unsupported += 1,
                        Some("rate limit exceeded") => limited += 1,
                        _ => {}
                    }
                }
                Err(_) => return (unsupported, limited, 0),
            }
        }
    });
    // About 100 frames a second, 20 times the rate, until the server closes.
    let start = Instant::now();
    let frame = client_frame(0x82, &[1, 2, 3]);
    let mut sent = 0u32;
    while start.elapsed() < Duration::from_secs(12) {
        if raw.stream.write_all(&frame).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(10));
        if reader.is_finished() {
            break;
        }
    }
    let took = start.elapsed();
    let (unsupported, limited, code) = reader.join().expect("reader");
    assert_eq!(
        code, 1008,
        "after {took:?}: {sent} sent, {unsupported} answered, {limited} limited"
    );
    assert!(took >= Duration::from_millis(4500), "closed after {took:?}");
    // Only the frames within the rate were handled (5 a second, burst 5).
    let within = 5 + 5 * (took.as_secs() as u32 + 1);
    assert!(
        unsupported <= within,
        "{unsupported} of {sent} frames handled"
    );
    assert!(limited > sent / 2, "{limited} of {sent} frames dropped");
    assert_eq!(metric(server.addr, "wshub_rate_limit_closes_total"), 1);
}

// ------------------------------------------------- 7. the targeted kick

/// Finding 7: with the production checklist applied, 6.9 KB of compressed
/// `to: victim` messages closed a victim on a 64 KiB/s link with 1013
/// within a second. Charged by inflated size, an attacker's session can
/// send the victim no more than `max_bytes_per_second`, and the victim's
/// link keeps up.
#[test]
fn compressed_messages_to_one_victim_cannot_outrun_its_link() {
    let mut config = test_config();
    config.websocket.compression = true;
    // The production checklist (docs/security.md).
    config.websocket.max_message_size = 65536;
    config.websocket.max_buffered_bytes = 262_144;
    config.websocket.max_bytes_per_second = 16384;
    config.websocket.max_messages_per_second = 20;
    let server = TestServer::start(config);
    let victim_stream = {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.connect(&server.addr.into()).expect("connect");
        TcpStream::from(socket)
    };
    let mut victim = Raw::upgrade(victim_stream, "/api/ws/connect?user_id=victim", None);
    let mut attacker = Raw::open(
        server.addr,
        "/api/ws/connect?user_id=attacker",
        Some(BROWSER_OFFER),
    );
    // The victim reads at about 64 KiB/s: 4 KiB every 62 ms.
    let mut link = victim.stream.try_clone().expect("clone");
    let reader = std::thread::spawn(move || {
        link.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let (mut bytes, mut buf) = (0usize, [0u8; 4096]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            match link.read(&mut buf) {
                Ok(0) => return (bytes, true),
                Ok(n) => bytes += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return (bytes, true),
            }
            std::thread::sleep(Duration::from_millis(62));
        }
        (bytes, false)
    });
    // 12 KiB messages, each deflating to a few dozen bytes, as fast as the
    // attacker likes for 3 s (before: 6.9 KB of them closed the victim).
    let message = chat(&"k".repeat(12 * KIB), "to", "victim");
    let deflated = attacker.deflate(message.as_bytes());
    let frame = client_frame(0xC1, &deflated);
    let mut uploaded = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        attacker.stream.write_all(&frame).expect("send");
        uploaded += frame.len();
        std::thread::sleep(Duration::from_millis(5));
    }
    let (received, closed) = reader.join().expect("reader");
    assert!(!closed, "the victim was closed after {received} bytes");
    assert_eq!(metric(server.addr, "wshub_slow_consumer_closes_total"), 0);
    // What reached the victim was paid for from the attacker's byte budget
    // (16 KiB burst + 16 KiB/s), not multiplied from its upload.
    assert!(
        received <= 16 * KIB * 5,
        "victim got {received} bytes for {uploaded} uploaded"
    );
    assert!(
        received >= 12 * KIB,
        "the first message arrived: {received} bytes"
    );
    victim.send(r#"{"type":"ping"}"#);
}

// ------------------------------------------------- 3. connection slots

/// Sends `GET /health` on a keep-alive connection and reads the answer.
fn health(stream: &mut TcpStream) -> (u16, Vec<(String, String)>) {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("request");
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    let (status, headers, _) = read_full_response(&mut reader);
    (status, headers)
}

/// Whether the server has closed `stream` within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Finding 3: 1,024 keep-alive connections that each sent `GET /health`
/// every 5 s, or silent ones, made every upgrade get 503. Now the one idle
/// the longest makes room; only requests in progress hold their slot.
#[test]
fn idle_pre_upgrade_connections_give_up_their_slots_oldest_first() {
    let mut config = test_config();
    config.websocket.max_http_connections = 6;
    let server = TestServer::start(config);
    // Oldest: two silent connections; then four keep-alive ones between
    // requests.
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    let mut keep_alive: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            assert_eq!(health(&mut stream).0, 200);
            std::thread::sleep(Duration::from_millis(15));
            stream
        })
        .collect();
    // Every slot is taken: new connections still get through, and each
    // one closes the connection idle the longest.
    let mut newer: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            assert_eq!(health(&mut stream).0, 200);
            stream
        })
        .collect();
    assert!(closed_within(&mut silent[0], WAIT), "oldest silent closed");
    assert!(closed_within(&mut silent[1], WAIT));
    assert!(
        closed_within(&mut keep_alive[0], WAIT),
        "then the oldest idle keep-alive"
    );
    assert!(!closed_within(
        &mut keep_alive[3],
        Duration::from_millis(100)
    ));
    assert_eq!(health(&mut keep_alive[3]).0, 200, "the others are served");
    assert_eq!(health(&mut newer[0]).0, 200);
    // A legitimate upgrade gets through too (keep_alive[1] makes room).
    let mut client = server.connect(Some("legit"));
    assert!(closed_within(&mut keep_alive[1], WAIT));
    assert_eq!(metric(server.addr, "wshub_http_evictions_total"), 4);
    // (The /metrics connection holds its slot until it has closed.)
    std::thread::sleep(Duration::from_millis(100));
    // The other connections are each in the middle of a request: busy, so
    // a new connection gets 503 (after two more evictions).
    let mut busy: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            stream
                .write_all(b"GET /health HTTP/1.1\r\n")
                .expect("partial");
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let (status, body) = common::http(server.addr, "GET", "/health", &[], "");
    assert_eq!(status, 503, "{body}");
    // Finishing a request frees its connection's turn to be evicted later.
    busy[5].write_all(b"Host: t\r\n\r\n").expect("finish");
    let mut reader = std::io::BufReader::new(busy[5].try_clone().expect("clone"));
    assert_eq!(read_full_response(&mut reader).0, 200);
    let (status, _) = common::http(server.addr, "GET", "/health", &[], "");
    assert_eq!(status, 200, "the answered connection made room");
    assert!(closed_within(&mut busy[5], WAIT));
    client.send_json(json!({"type": "ping"}));
    assert_eq!(client.recv_json()["type"], "pong");
}

/// A keep-alive connection serves at most 1000 requests: the 1000th
/// response says `Connection: close`, and the connection ends.
#[test]
fn a_keep_alive_connection_serves_at_most_1000_requests() {
    let server = TestServer::start(test_config());
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    for i in 1..=1000 {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("request");
        let (status, headers, _) = read_full_response(&mut reader);
        assert_eq!(status, 200, "request {i}");
        let close = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close"));
        assert_eq!(close, i == 1000, "request {i}");
    }
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).expect("EOF"), 0);
    assert_eq!(
        metric(server.addr, "wshub_http_request_cap_closes_total"),
        1
    );
}
