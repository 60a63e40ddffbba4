//! Black-box tests of docs/protocol.md section 7 (issue 10): every byte a client
//! makes the server hold is bounded, and the abuse limits operators expect.
//! One test per finding of the review, each reproducing the attack over a
//! real loopback socket, and each new key at its limit and one past it.
//!
//! Memory is measured with the counting allocator (installed below), which
//! counts the whole test process: the in-process server and its clients.
//! Tests that measure it hold [`HEAP`] so that, under `cargo test`'s
//! threads, no other test of this file allocates meanwhile. Margins are wide:
//! each bound is an order of magnitude below what the attack cost before.
//! Touches only the servers it starts; every wait is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{
    client_frame, http, read_full_response, read_response, test_config, upgrade_request, Client,
    TestServer, WAIT,
};
use serde_json::{json, Value};
use tungstenite::Message as WsMessage;
use wshub::internals::jwt::sign_hs256;
use wshub::Config;

#[global_allocator]
static ALLOCATOR: wshub::alloc::Counting = wshub::alloc::Counting;

/// Held by every test that reads the heap counter.
static HEAP: Mutex<()> = Mutex::new(());

const MIB: usize = 1024 * 1024;

fn heap_lock() -> MutexGuard<'static, ()> {
    HEAP.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn heap() -> usize {
    wshub::alloc::heap_bytes().expect("the counting allocator is installed")
}

/// Waits (bounded) until the heap is back within `margin` of `baseline`.
fn wait_heap_back(baseline: usize, margin: usize, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = heap();
        if now <= baseline + margin {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: heap stayed at {} KiB over the baseline",
            (now - baseline) / 1024
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One counter or labelled sample from `/metrics`.
fn metric(addr: SocketAddr, sample: &str) -> u64 {
    let (status, body) = http(addr, "GET", "/metrics", &[], "");
    assert_eq!(status, 200, "{body}");
    sample_of(&body, sample)
}

/// One sample of a scraped text.
fn sample_of(body: &str, sample: &str) -> u64 {
    body.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {sample} in /metrics"))
        .parse::<f64>()
        .expect("a number") as u64
}

/// Waits until the server has read at least `bytes` in total.
fn wait_bytes_in(addr: SocketAddr, bytes: u64) {
    let deadline = Instant::now() + WAIT;
    while metric(addr, "wshub_bytes_in_total") < bytes {
        assert!(
            Instant::now() < deadline,
            "the server never read {bytes} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `text` and returns the first reply (a pong, or an error).
fn ask(client: &mut Client, text: &str) -> Value {
    client.send_text(text);
    client.recv_json()
}

fn error(reason: &str) -> Value {
    json!({"type": "error", "content": reason})
}

/// A TCP connection whose receive window stays small, so the kernel cannot
/// absorb what the server writes to a client that does not read.
fn connect_small_rcvbuf(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

/// Whether the server has closed `stream` (EOF or reset), reading for at
/// most `within` and discarding what arrives.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 65536];
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

// ------------------------------------------- 1. unread pipelined responses

/// Pipelines `request` for up to `for_ms` on a connection that never reads;
/// returns how many bytes the server let in and the heap's peak growth.
fn pipeline_unread(addr: SocketAddr, request: &[u8], baseline: usize) -> (usize, usize, TcpStream) {
    let mut stream = connect_small_rcvbuf(addr);
    stream.set_nonblocking(true).expect("nonblocking");
    let batch = request.repeat(64 * 1024 / request.len());
    let deadline = Instant::now() + Duration::from_millis(1500);
    let (mut sent, mut peak) = (0, 0);
    while Instant::now() < deadline && sent < 8 * MIB {
        match stream.write(&batch) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            // write_wait has closed it already (reset: its input was unread).
            Err(_) => break,
        }
        peak = peak.max(heap().saturating_sub(baseline));
    }
    // Let the loop catch up with what it has read, then look again.
    std::thread::sleep(Duration::from_millis(300));
    peak = peak.max(heap().saturating_sub(baseline));
    stream.set_nonblocking(false).expect("blocking");
    (sent, peak, stream)
}

#[test]
fn unread_pipelined_responses_hold_about_max_buffered_bytes_then_write_wait_closes() {
    let _heap = heap_lock();
    let mut config = test_config();
    config.websocket.max_buffered_bytes = 64 * 1024;
    config.websocket.write_wait = Duration::from_secs(1);
    config.websocket.handshake_timeout = Duration::from_secs(30);
    let server = TestServer::start(config);
    // Twenty sessions with ids at max_id_bytes make each status response ~3 KiB.
    let users: Vec<String> = (0..20).map(|i| format!("{i:0>128}")).collect();
    let _sessions: Vec<Client> = users.iter().map(|u| server.connect(Some(u))).collect();
    server.wait_online(20);
    for path in ["/health", "/api/ws/status"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let baseline = heap();
        let (sent, peak, mut stream) = pipeline_unread(server.addr, request.as_bytes(), baseline);
        // Before: 8 MB of /health requests grew the heap by ~48 MB. Usually
        // well under 1 MiB now; under heavy parallel load one run in ~20 saw
        // a transient 5.9 MiB (cause not yet found, see the issue notes), so
        // the bound is set to catch the unbounded queue, not that excursion.
        assert!(
            peak < 16 * MIB,
            "{path}: {sent} bytes of requests grew the heap by {} KiB",
            peak / 1024
        );
        assert!(
            closed_within(&mut stream, Duration::from_secs(8)),
            "{path}: a client taking no response was not closed after write_wait"
        );
        wait_heap_back(baseline, 512 * 1024, path);
    }
    assert_eq!(http(server.addr, "GET", "/health", &[], "").0, 200);
}

#[test]
fn a_pipelining_client_that_reads_gets_every_response_in_order() {
    let mut config = test_config();
    config.websocket.max_buffered_bytes = 4096;
    let server = TestServer::start(config);
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    // Far more than 4 KiB of responses: reading pauses and resumes many
    // times. 1000: all one keep-alive connection serves (section 7a).
    let count = 1000;
    let mut requests = Vec::new();
    for i in 0..count {
        let path = if i % 2 == 0 { "/health" } else { "/nope" };
        requests.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    let writer = {
        let mut stream = stream.try_clone().expect("clone");
        std::thread::spawn(move || stream.write_all(&requests))
    };
    let mut reader = std::io::BufReader::new(&mut stream);
    for i in 0..count {
        let (status, _) = read_response(&mut reader);
        assert_eq!(status, if i % 2 == 0 { 200 } else { 404 }, "response {i}");
    }
    writer.join().expect("writer").expect("write requests");
}

// --------------------------------------------- 2. declared lengths, caps

#[test]
fn declared_body_and_frame_lengths_reserve_nothing_until_bytes_arrive() {
    let _heap = heap_lock();
    let server = TestServer::start(test_config());
    let baseline = heap();
    let mut sent = metric(server.addr, "wshub_bytes_in_total") as usize;
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut body = TcpStream::connect(server.addr).expect("connect");
        let head = b"POST /api/ws/broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: 524288\r\n\r\n";
        body.write_all(head).expect("write");
        sent += head.len();
        held.push(body);
        let mut frame = TcpStream::connect(server.addr).expect("connect");
        frame.set_read_timeout(Some(WAIT)).expect("timeout");
        let upgrade = upgrade_request("/api/ws/echo");
        frame.write_all(upgrade.as_bytes()).expect("upgrade");
        let mut head = [0u8; 129];
        frame.read_exact(&mut head).expect("101");
        assert!(head.starts_with(b"HTTP/1.1 101"));
        // A masked text frame header declaring 512 KiB.
        let mut declared = vec![0x81, 0x80 | 127];
        declared.extend_from_slice(&(512u64 * 1024).to_be_bytes());
        declared.extend_from_slice(&[1, 2, 3, 4]);
        frame.write_all(&declared).expect("frame");
        sent += upgrade.len() + declared.len();
        held.push(frame);
    }
    // Once the server knows every declared length, 2 bytes of each arrive.
    wait_bytes_in(server.addr, sent as u64);
    for stream in &mut held {
        stream.write_all(b"ab").expect("2 bytes");
        sent += 2;
    }
    wait_bytes_in(server.addr, sent as u64);
    let grown = heap().saturating_sub(baseline);
    // Before: ~105 MB (each declared length reserved and zero-filled).
    assert!(
        grown < 10 * MIB,
        "200 connections hold {} KiB",
        grown / 1024
    );
    drop(held);
}

#[test]
fn max_http_connections_at_the_limit_and_one_past() {
    let mut config = test_config();
    config.websocket.max_http_connections = 3;
    let server = TestServer::start(config);
    // Every slot busy with a request in progress (idle ones would give up
    // their slot: see tests/bounds.rs).
    let busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            stream
                .write_all(b"GET /health HTTP/1.1\r\n")
                .expect("partial");
            stream
        })
        .collect();
    // The third is at the limit: served, and kept open, and starts its
    // next request (an upgrade).
    let mut third = TcpStream::connect(server.addr).expect("connect");
    third.set_read_timeout(Some(WAIT)).expect("timeout");
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut reader = std::io::BufReader::new(third.try_clone().expect("clone"));
    assert_eq!(read_response(&mut reader).0, 200);
    let upgrade = upgrade_request("/api/ws/connect?user_id=u");
    let (line, rest) = upgrade.split_at(upgrade.find("\r\n").expect("request line") + 2);
    third.write_all(line.as_bytes()).expect("partial upgrade");
    std::thread::sleep(Duration::from_millis(50));
    // One past: 503 and closed.
    let mut fourth = TcpStream::connect(server.addr).expect("connect");
    fourth.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut raw = Vec::new();
    fourth.read_to_end(&mut raw).expect("read to the close");
    let (status, _, body) = read_full_response(&mut &raw[..]);
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"error":"too many connections"}"#)
    );
    // An upgraded connection no longer counts: its slot is free again.
    third.write_all(rest.as_bytes()).expect("upgrade");
    let mut head = [0u8; 12];
    reader.read_exact(&mut head).expect("101");
    assert_eq!(&head, b"HTTP/1.1 101");
    let refused = metric(
        server.addr,
        "wshub_handshake_failures_total{reason=\"http_capacity\"}",
    );
    assert_eq!(refused, 1);
    drop(busy);
}

// ------------------------------------------------------------- 3. rooms

#[test]
fn rooms_per_session_are_capped_and_their_memory_comes_back() {
    let _heap = heap_lock();
    let server = TestServer::start(test_config());
    let mut probe = server.connect(Some("probe"));
    let baseline = heap();
    let mut client = server.connect(Some("joiner"));
    let long = "r".repeat(100);
    let mut errors = 0;
    for batch in 0..50 {
        for i in 0..200 {
            let room = format!("{long}-{}", batch * 200 + i);
            client.send_json(json!({"type": "join", "room": room}));
        }
        for reply in client.sync() {
            assert_eq!(reply, error("too many rooms"));
            errors += 1;
        }
    }
    // 64 (max_rooms_per_session) joined; every join past it refused.
    assert_eq!(errors, 10_000 - 64);
    let grown = heap().saturating_sub(baseline);
    // Before: 100k joins cost +18 MB; 10k rooms of 100-byte names several MB.
    assert!(grown < MIB, "64 rooms hold {} KiB", grown / 1024);
    // Leaving rooms never joined costs O(1) each: no pass of the loop stalls.
    for i in 0..20_000 {
        client.send_json(json!({"type": "leave", "room": format!("never-{i}")}));
    }
    assert!(client.sync().is_empty());
    assert_eq!(ask(&mut probe, r#"{"type":"ping"}"#)["type"], "pong");
    let (_, text) = http(server.addr, "GET", "/metrics", &[], "");
    let passes = sample_of(&text, "wshub_loop_iteration_seconds_count");
    let under_a_second = sample_of(&text, "wshub_loop_iteration_seconds_bucket{le=\"1\"}");
    assert!(
        passes - under_a_second <= 1,
        "{} passes took over a second",
        passes - under_a_second
    );
    client.close();
    server.wait_online(1);
    wait_heap_back(baseline, 256 * 1024, "after the joiner left");
}

#[test]
fn max_rooms_per_session_at_the_limit_and_one_past() {
    let mut config = test_config();
    config.websocket.max_rooms_per_session = 2;
    let server = TestServer::start(config);
    let mut a = server.connect(Some("a"));
    let mut b = server.connect(Some("b"));
    a.send_json(json!({"type": "join", "room": "r1"}));
    a.send_json(json!({"type": "join", "room": "r2"}));
    assert!(a.sync().is_empty(), "two rooms are within the limit");
    assert_eq!(
        ask(&mut a, r#"{"type":"join","room":"r3"}"#),
        error("too many rooms")
    );
    b.send_json(json!({"type": "join", "room": "r3"}));
    assert!(b.sync().is_empty());
    b.send_json(json!({"type": "say", "room": "r3"}));
    assert!(a.sync().is_empty(), "a is not in r3");
    a.send_json(json!({"type": "leave", "room": "r1"}));
    a.send_json(json!({"type": "join", "room": "r3"}));
    assert!(a.sync().is_empty(), "a slot was freed by leave");
    b.send_json(json!({"type": "say", "room": "r3"}));
    assert_eq!(a.recv_json()["type"], "say");
}

// --------------------------------------------------------------- 4. ids

fn upgrade_status(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(upgrade_request(path).as_bytes())
        .expect("write");
    let mut reader = std::io::BufReader::new(stream);
    let (status, _, body) = read_full_response(&mut reader);
    (status, body)
}

#[test]
fn user_ids_are_bounded_and_control_characters_refused_at_the_upgrade() {
    let mut config = test_config();
    config.websocket.max_id_bytes = 16;
    config.jwt.secret = "hardening-secret".into();
    let server = TestServer::start(config);
    let at_limit = "u".repeat(16);
    let path = format!("/api/ws/connect?user_id={at_limit}");
    assert_eq!(upgrade_status(server.addr, &path).0, 101);
    let refusals = [
        ("u".repeat(17), "longer than 16 bytes"),
        (
            "eve%0A2026-01-01%20INFO%20connect".to_owned(),
            "contains a control character",
        ),
        ("%1B[2J".to_owned(), "contains a control character"),
        ("a%7Fb".to_owned(), "contains a control character"),
    ];
    for (id, why) in refusals {
        let path = format!("/api/ws/connect?user_id={id}");
        let (status, body) = upgrade_status(server.addr, &path);
        let expected = json!({ "error": format!("invalid user id: {why}") }).to_string();
        assert_eq!((status, body), (400, expected), "{id}");
    }
    // The same bound holds for an id from a token.
    let token = sign_hs256(&json!({"id": "eve\nroot"}), b"hardening-secret");
    let (status, body) = upgrade_status(server.addr, &format!("/api/ws/connect?token={token}"));
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            r#"{"error":"invalid user id: contains a control character"}"#
        )
    );
}

#[test]
fn room_names_and_addressees_are_bounded_on_the_socket() {
    let mut config = test_config();
    config.websocket.max_id_bytes = 8;
    let server = TestServer::start(config);
    let mut client = server.connect(Some("alice"));
    client.send_json(json!({"type": "join", "room": "r".repeat(8)}));
    assert!(client.sync().is_empty(), "a name of max_id_bytes is fine");
    for (message, reason) in [
        (
            json!({"type": "join", "room": "r".repeat(9)}),
            "invalid \"room\": longer than 8 bytes",
        ),
        (
            json!({"type": "join", "room": "a\nb"}),
            "invalid \"room\": contains a control character",
        ),
        (
            json!({"type": "dm", "to": "\u{1b}[2J"}),
            "invalid \"to\": contains a control character",
        ),
    ] {
        assert_eq!(ask(&mut client, &message.to_string()), error(reason));
    }
    let body = json!({"type": "n", "to": "x".repeat(9)}).to_string();
    assert_eq!(
        http(server.addr, "POST", "/api/ws/send", &[], &body),
        (
            400,
            r#"{"error":"invalid \"to\": longer than 8 bytes"}"#.to_owned()
        )
    );
}

// ---------------------------------------------------- 5. Content-Length

#[test]
fn content_length_is_ascii_digits_only() {
    let server = TestServer::start(test_config());
    let body = br#"{"type":"n","content":1}"#;
    let send = |length: &[u8]| {
        let mut request =
            b"POST /api/ws/broadcast HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
                .to_vec();
        request.extend_from_slice(length);
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);
        let raw = common::raw_exchange(server.addr, &request);
        read_full_response(&mut &raw[..]).0
    };
    assert_eq!(send(b"24"), 200);
    for bad in [&b"+24"[..], b"\xc2\xa024", b"24\xc2\xa0", b"2 4", b"-24"] {
        assert_eq!(send(bad), 400, "{}", String::from_utf8_lossy(bad));
    }
}

// ---------------------------------------- 6. server types, client_broadcast

#[test]
fn clients_cannot_send_the_servers_own_types() {
    let server = TestServer::start(test_config());
    let mut eve = server.connect(Some("eve"));
    let mut bob = server.connect(Some("bob"));
    for kind in ["error", "pong"] {
        let forged = json!({"type": kind, "to": "bob", "content": "session expired"});
        let reason = format!("type \"{kind}\" is reserved for the server");
        assert_eq!(ask(&mut eve, &forged.to_string()), error(&reason));
        let broadcast = json!({"type": kind, "content": "x"});
        assert_eq!(ask(&mut eve, &broadcast.to_string()), error(&reason));
    }
    assert!(bob.sync().is_empty(), "nothing forged reached bob");
}

#[test]
fn client_broadcast_false_refuses_messages_to_everyone() {
    let mut config = test_config();
    config.websocket.client_broadcast = false;
    let server = TestServer::start(config);
    let mut alice = server.connect(Some("alice"));
    let mut bob = server.connect(Some("bob"));
    assert_eq!(
        ask(&mut alice, r#"{"type":"shout","content":"all"}"#),
        error("broadcast is not allowed: send to a \"room\" or \"to\" a user")
    );
    assert!(bob.sync().is_empty());
    alice.send_json(json!({"type": "dm", "to": "bob"}));
    assert_eq!(
        bob.recv_json(),
        json!({"type": "dm", "to": "bob", "from": "alice"})
    );
    // The server's own pushes are not client broadcasts.
    let (status, body) = http(
        server.addr,
        "POST",
        "/api/ws/broadcast",
        &[],
        r#"{"type":"n"}"#,
    );
    assert_eq!((status, body.as_str()), (200, r#"{"sent":2}"#));
}

// ------------------------------------------------------ 7. JSON nesting

fn nested(depth: usize) -> String {
    // The message object is level 1.
    let inner = "[".repeat(depth - 1) + &"]".repeat(depth - 1);
    format!(r#"{{"type":"deep","content":{inner}}}"#)
}

#[test]
fn max_json_depth_at_the_limit_and_one_past() {
    let server = TestServer::start(test_config());
    let mut alice = server.connect(Some("alice"));
    let mut bob = server.connect(Some("bob"));
    alice.send_text(&nested(32));
    assert_eq!(bob.recv_json()["type"], "deep");
    let too_deep = error("JSON nested deeper than 32 levels");
    assert_eq!(ask(&mut alice, &nested(33)), too_deep);
    // The review's 100,000 levels: refused, never relayed.
    assert_eq!(ask(&mut alice, &nested(100_000)), too_deep);
    assert!(bob.sync().is_empty());
    let post = |body: &str| http(server.addr, "POST", "/api/ws/broadcast", &[], body);
    assert_eq!(post(&nested(32)).0, 200);
    assert_eq!(
        post(&nested(33)),
        (
            400,
            r#"{"error":"JSON nested deeper than 32 levels"}"#.to_owned()
        )
    );
}

// --------------------------------------------------------- 8. liveness

#[test]
fn a_frame_trickled_byte_by_byte_does_not_keep_a_client_alive() {
    let mut config = test_config();
    config.websocket.ping_period = Duration::from_millis(500);
    config.websocket.pong_wait = Duration::from_secs(2);
    let server = TestServer::start(config);
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(upgrade_request("/api/ws/echo").as_bytes())
        .expect("upgrade");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).expect("101");
    // A 125-byte masked frame, one byte every 250 ms: it would take 33 s.
    let frame = client_frame(0x81, &[b'x'; 125]);
    let start = Instant::now();
    for byte in &frame {
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
        if closed_within(&mut stream, Duration::from_millis(250)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still open {:?} after the last whole frame (pong_wait 2 s)",
            start.elapsed()
        );
    }
    assert!(start.elapsed() < Duration::from_secs(10));
}

// --------------------------------------------------------- rate limit

#[test]
fn max_messages_per_second_at_the_burst_and_one_past() {
    let mut config = test_config();
    config.websocket.max_messages_per_second = 5;
    let server = TestServer::start(config);
    let mut client = server.connect(Some("u"));
    for i in 0..5 {
        client.send_json(json!({"type": "ping", "content": i}));
    }
    client.send_json(json!({"type": "ping", "content": 5}));
    for i in 0..5 {
        assert_eq!(
            client.recv_json(),
            json!({"type": "pong", "content": i}),
            "within the burst"
        );
    }
    assert_eq!(client.recv_json(), error("rate limit exceeded"));
    assert!(metric(server.addr, "wshub_rate_limited_messages_total") >= 1);
}

#[test]
fn a_client_at_over_ten_times_the_rate_for_five_seconds_is_closed_with_1008() {
    let mut config = test_config();
    config.websocket.max_messages_per_second = 2;
    let server = TestServer::start(config);
    let mut client = server.connect(Some("flood"));
    let start = Instant::now();
    let (mut pongs, mut dropped) = (0, 0);
    let code = loop {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never closed ({pongs} pongs, {dropped} dropped)"
        );
        // About 60 a second: 30 times the rate.
        std::thread::sleep(Duration::from_millis(15));
        if client
            .ws
            .send(WsMessage::text(r#"{"type":"ping"}"#))
            .is_err()
        {
            break client.expect_close();
        }
        match client.ws.read().expect("read") {
            WsMessage::Text(text) if text.as_str() == r#"{"type":"pong"}"# => pongs += 1,
            WsMessage::Text(text) => {
                let reply: Value = serde_json::from_str(text.as_str()).expect("JSON");
                assert_eq!(reply, error("rate limit exceeded"));
                dropped += 1;
            }
            WsMessage::Close(frame) => break frame.map_or(1005, |f| f.code.into()),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 1008);
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(4), "closed after {took:?}");
    assert!(dropped > pongs, "{pongs} pongs, {dropped} dropped");
    assert_eq!(metric(server.addr, "wshub_rate_limit_closes_total"), 1);
    assert!(metric(server.addr, "wshub_rate_limited_messages_total") >= dropped);
}

// ------------------------------------------------------ bytes_out truth

/// `wshub_bytes_out_total` as rendered, and the size of the whole response
/// that carried it (written after it was rendered).
fn scrape_bytes_out(addr: SocketAddr) -> (u64, u64) {
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let raw = common::raw_exchange(addr, request);
    let (status, _, body) = read_full_response(&mut &raw[..]);
    assert_eq!(status, 200);
    let value = body
        .lines()
        .find_map(|l| l.strip_prefix("wshub_bytes_out_total "))
        .expect("bytes_out in /metrics")
        .parse()
        .expect("a number");
    (value, raw.len() as u64)
}

#[test]
fn bytes_written_in_the_middle_of_a_fan_out_are_counted() {
    let mut config = test_config();
    config.websocket.message_buffer_size = 1;
    let server = TestServer::start(config);
    let mut client = server.connect(Some("u"));
    let (before, before_response) = scrape_bytes_out(server.addr);
    // Six broadcasts pipelined in one write reach the loop in one pass: with
    // message_buffer_size 1 the queue is written out between them.
    let body = r#"{"type":"n","content":"0123456789"}"#;
    let request = format!(
        "POST /api/ws/broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(request.repeat(6).as_bytes())
        .expect("write");
    let mut reader = std::io::BufReader::new(stream);
    let mut responses = 0;
    for _ in 0..6 {
        let (status, headers, body) = read_full_response(&mut reader);
        assert_eq!((status, body.as_str()), (200, r#"{"sent":1}"#));
        let head: usize = headers.iter().map(|(n, v)| n.len() + 2 + v.len() + 2).sum();
        responses += "HTTP/1.1 200 OK\r\n".len() + head + 2 + body.len();
    }
    let mut frames = 0;
    for _ in 0..6 {
        // A server frame under 126 bytes has a 2-byte header.
        frames += 2 + client.recv_text().len();
    }
    let (after, _) = scrape_bytes_out(server.addr);
    assert_eq!(
        after - before,
        before_response + (responses + frames) as u64
    );
}

#[test]
fn config_keys_reach_the_server() {
    // Every new key parses from YAML and takes effect on a running server.
    let yaml = "websocket:\n  max_http_connections: 7\n  max_id_bytes: 9\n  max_rooms_per_session: 3\n  max_json_depth: 4\n  max_messages_per_second: 100\n  client_broadcast: false\n";
    let parsed = Config::from_yaml_str(yaml, "test.yaml").expect("valid");
    let mut config = test_config();
    config.websocket = parsed.websocket.clone();
    config.websocket.echo = true;
    let server = TestServer::start(config);
    let mut client = server.connect(Some("u"));
    assert_eq!(
        ask(&mut client, &nested(5)),
        error("JSON nested deeper than 4 levels")
    );
    assert_eq!(
        ask(&mut client, r#"{"type":"dm","to":"0123456789"}"#),
        error("invalid \"to\": longer than 9 bytes")
    );
}
