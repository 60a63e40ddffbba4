//! Server-Sent Events (`GET /api/ws/sse`, docs/protocol.md section 13) over raw
//! loopback sockets, plain and TLS: the response head, events byte-equal to
//! what a WebSocket session of the same user and rooms receives, `?rooms=`,
//! the heartbeat comment, authentication and Origin, `max_connections` and
//! status, and the bounds that end a stream (`message_buffer_size`,
//! `max_buffered_bytes`, `write_wait`).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::sse::{request, Item, Stream};
use common::tls;
use common::{http, test_config, TestServer, WAIT};
use serde_json::{json, Value};
use wshub::internals::jwt::sign_hs256;
use wshub::{Config, Message};

const SECRET: &str = "sse-jwt-secret-for-tests";
const ADMIN: &str = "sse-admin-token";

fn open(addr: SocketAddr, path: &str) -> Stream<TcpStream> {
    let stream = Stream::open(request(addr, path, &[]));
    assert_eq!(stream.status, 200, "{path}");
    stream
}

fn admin_config() -> Config {
    let mut config = test_config();
    config.websocket.admin_token = ADMIN.into();
    config
}

fn post(server: &TestServer, path: &str, body: Value) -> Value {
    let auth = format!("Bearer {ADMIN}");
    let (status, text) = http(
        server.addr,
        "POST",
        path,
        &[("Authorization", &auth)],
        &body.to_string(),
    );
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Waits until `online_count` is `count` (status needs the admin token here).
fn wait_online(server: &TestServer, count: usize) {
    let auth = format!("Bearer {ADMIN}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = http(
            server.addr,
            "GET",
            "/api/ws/status",
            &[("Authorization", &auth)],
            "",
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["online_count"] == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "online_count never {count}: {body}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_head_says_event_stream_no_cache_and_no_proxy_buffering() {
    let server = TestServer::start(admin_config());
    let stream = open(server.addr, "/api/ws/sse?user_id=alice");
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("cache-control"), Some("no-cache"));
    assert_eq!(stream.header("x-accel-buffering"), Some("no"));
    assert_eq!(stream.header("connection"), Some("close"));
    assert_eq!(stream.header("content-length"), None, "close-delimited");
    assert_eq!(stream.header("transfer-encoding"), None);
    wait_online(&server, 1);
    // A POST is not a stream.
    let (status, _) = http(server.addr, "POST", "/api/ws/sse", &[], "");
    assert_eq!(status, 405);
}

#[test]
fn events_are_byte_equal_to_what_a_websocket_of_the_same_user_and_rooms_gets() {
    let server = TestServer::start(admin_config());
    let mut sse = open(server.addr, "/api/ws/sse?user_id=alice&rooms=lobby,team");
    let mut ws = server.connect(Some("alice"));
    ws.send_json(json!({"type": "join", "room": "lobby"}));
    ws.send_json(json!({"type": "join", "room": "team"}));
    ws.sync();
    let mut bob = server.connect(Some("bob"));
    bob.send_json(json!({"type": "join", "room": "lobby"}));
    bob.sync();
    wait_online(&server, 3);
    // A REST push to the user, a broadcast, a room push, a client's room
    // message and a client's direct message, with content that has line
    // breaks as JSON whitespace.
    assert_eq!(
        post(
            &server,
            "/api/ws/send",
            json!({"type": "note", "to": "alice", "content": {"n": 1}})
        ),
        json!({"sent": 2})
    );
    post(
        &server,
        "/api/ws/broadcast",
        json!({"type": "news", "content": "all"}),
    );
    post(
        &server,
        "/api/ws/broadcast",
        json!({"type": "t", "room": "team", "content": [1, 2]}),
    );
    bob.send_json(json!({"type": "chat", "room": "lobby", "content": "hi: there"}));
    bob.send_text("{\"type\":\"dm\",\"to\":\"alice\",\"content\":{\n  \"multi\": \"line\"\n}}");
    for _ in 0..5 {
        let from_ws = ws.recv_text();
        let from_sse = sse.next_data();
        assert_eq!(from_sse, from_ws, "the same JSON, byte for byte");
    }
    // Neither is in "other": nothing from there; the next thing both get
    // is the next push to alice.
    post(
        &server,
        "/api/ws/broadcast",
        json!({"type": "x", "room": "other"}),
    );
    post(
        &server,
        "/api/ws/send",
        json!({"type": "last", "to": "alice"}),
    );
    assert_eq!(sse.next_data(), ws.recv_text());
    // A handle push reaches it too.
    let mut message = Message::new("from_handle", json!(7));
    message.to = Some("alice".into());
    server.handle.send_to_user("alice", &message).unwrap();
    let from_ws = ws.recv_json();
    assert_eq!(from_ws["type"], "from_handle");
    assert_eq!(sse.next_json(), from_ws);
}

#[test]
fn rooms_are_joined_as_a_websocket_join_and_refusals_arrive_as_error_events() {
    let mut config = admin_config();
    config.websocket.max_rooms_per_session = 2;
    config.websocket.max_id_bytes = 16;
    let server = TestServer::start(config);
    let long = "r".repeat(17);
    let path = format!("/api/ws/sse?rooms=a,b%2Cc,,a,{long},d");
    let mut sse = open(server.addr, &path);
    // The list is decoded, then split: a, b, c, a (again), the long name, d.
    // a and b fill the session; c and d are too many, the long name invalid.
    let first = sse.next_json();
    assert_eq!(first["type"], "error");
    assert_eq!(first["content"], "too many rooms", "{first}");
    let second = sse.next_json();
    assert_eq!(second["type"], "error");
    assert!(
        second["content"]
            .as_str()
            .unwrap()
            .contains("longer than 16 bytes"),
        "{second}"
    );
    assert_eq!(sse.next_json()["content"], "too many rooms");
    let auth = format!("Bearer {ADMIN}");
    for (room, sent) in [("a", 1), ("b", 1), ("c", 0), ("d", 0)] {
        let body = json!({"type": "r", "room": room, "content": room}).to_string();
        let (_, text) = http(
            server.addr,
            "POST",
            "/api/ws/broadcast",
            &[("Authorization", &auth)],
            &body,
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["sent"], sent, "room {room}");
    }
    assert_eq!(sse.next_json()["content"], "a");
    assert_eq!(sse.next_json()["content"], "b");
}

#[test]
fn a_comment_line_every_ping_period() {
    let mut config = admin_config();
    config.websocket.ping_period = Duration::from_millis(200);
    config.websocket.pong_wait = Duration::from_millis(300);
    let server = TestServer::start(config);
    let mut sse = open(server.addr, "/api/ws/sse?user_id=quiet");
    let start = Instant::now();
    let mut comments = 0;
    // Well past pong_wait: a client that never speaks is not timed out.
    while comments < 5 {
        match sse.next_item() {
            Some(Item::Comment(_)) => comments += 1,
            other => panic!("expected a heartbeat, got {other:?}"),
        }
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(600), "{took:?}");
    wait_online(&server, 1);
}

#[test]
fn authentication_and_origin_follow_the_websocket_rules() {
    let mut config = admin_config();
    config.jwt.secret = SECRET.into();
    config.jwt.required = true;
    config.websocket.allowed_origins = vec!["https://app.example".into()];
    config.websocket.max_id_bytes = 8;
    let server = TestServer::start(config);
    let exp = SystemTimeExt::now_secs() + 300;
    let token = sign_hs256(&json!({"id": "carol", "exp": exp}), SECRET.as_bytes());
    // No token: 401.
    let refused = Stream::open(request(server.addr, "/api/ws/sse?user_id=carol", &[]));
    assert_eq!(refused.status, 401);
    // A bad token: 401.
    let bad = Stream::open(request(server.addr, "/api/ws/sse?token=x.y.z", &[]));
    assert_eq!(bad.status, 401);
    // Token in the query, and in the header.
    let mut by_query = open(server.addr, &format!("/api/ws/sse?token={token}"));
    let bearer = format!("Bearer {token}");
    let mut by_header = Stream::open(request(
        server.addr,
        "/api/ws/sse",
        &[("Authorization", &bearer)],
    ));
    assert_eq!(by_header.status, 200);
    wait_online(&server, 2);
    post(
        &server,
        "/api/ws/send",
        json!({"type": "hi", "to": "carol"}),
    );
    assert_eq!(by_query.next_json()["to"], "carol");
    assert_eq!(by_header.next_json()["to"], "carol");
    // A listed Origin is echoed for cross-origin EventSource; another is 403.
    let listed = Stream::open(request(
        server.addr,
        &format!("/api/ws/sse?token={token}"),
        &[("Origin", "https://app.example")],
    ));
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let other = Stream::open(request(
        server.addr,
        &format!("/api/ws/sse?token={token}"),
        &[("Origin", "https://evil.example")],
    ));
    assert_eq!(other.status, 403);
    // user_id rules: too long is 400 (without the JWT requirement).
    let mut config = admin_config();
    config.websocket.max_id_bytes = 8;
    let open_server = TestServer::start(config);
    let long = Stream::open(request(
        open_server.addr,
        "/api/ws/sse?user_id=waytoolongid",
        &[],
    ));
    assert_eq!(long.status, 400);
    let escaped = Stream::open(request(open_server.addr, "/api/ws/sse?user_id=a%0Ab", &[]));
    assert_eq!(escaped.status, 400);
}

/// Seconds since the Unix epoch.
struct SystemTimeExt;

impl SystemTimeExt {
    fn now_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }
}

#[test]
fn streams_count_in_max_connections_status_and_metrics() {
    let mut config = admin_config();
    config.websocket.max_connections = 2;
    let server = TestServer::start(config);
    let _a = open(server.addr, "/api/ws/sse?user_id=a");
    let _ws = server.connect(Some("b"));
    wait_online(&server, 2);
    let full = Stream::open(request(server.addr, "/api/ws/sse?user_id=c", &[]));
    assert_eq!(full.status, 503);
    let auth = format!("Bearer {ADMIN}");
    let (_, status) = http(
        server.addr,
        "GET",
        "/api/ws/status",
        &[("Authorization", &auth)],
        "",
    );
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["online_users"], json!(["a", "b"]));
    let (_, metrics) = http(
        server.addr,
        "GET",
        "/metrics",
        &[("Authorization", &auth)],
        "",
    );
    assert!(
        metrics.contains("\nwshub_sse_connections_open 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nwshub_connections_open 1\n"),
        "{metrics}"
    );
    // The client goes away: its place is free again.
    drop(_a);
    wait_online(&server, 1);
    let _c = open(server.addr, "/api/ws/sse?user_id=c");
    wait_online(&server, 2);
}

#[test]
fn a_stream_over_message_buffer_size_or_max_buffered_bytes_ends() {
    for (messages, bytes) in [(4, 1 << 20), (10_000, 8 * 1024)] {
        let mut config = admin_config();
        config.websocket.message_buffer_size = messages;
        config.websocket.max_buffered_bytes = bytes;
        let server = TestServer::start(config);
        let stream = request(server.addr, "/api/ws/sse?user_id=slow", &[]);
        // The client reads nothing while pushes fill the socket buffers and
        // then the queue.
        stream.set_read_timeout(Some(WAIT)).unwrap();
        wait_online(&server, 1);
        let content = "x".repeat(16 * 1024);
        let mut pushed = 0;
        let deadline = Instant::now() + WAIT;
        loop {
            let auth = format!("Bearer {ADMIN}");
            let body = json!({"type": "big", "to": "slow", "content": content}).to_string();
            let (_, text) = http(
                server.addr,
                "POST",
                "/api/ws/send",
                &[("Authorization", &auth)],
                &body,
            );
            pushed += 1;
            if serde_json::from_str::<Value>(&text).unwrap()["sent"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never ended after {pushed} pushes"
            );
        }
        wait_online(&server, 0);
        // What was queued still arrives, then a comment says why, then the end.
        let mut stream = Stream::open(stream);
        assert_eq!(stream.status, 200);
        let items = stream.read_to_end();
        let events = items
            .iter()
            .filter(|i| matches!(i, Item::Event { .. }))
            .count();
        assert!(events > 0 && events < pushed, "{events} of {pushed}");
        assert_eq!(
            items.last(),
            Some(&Item::Comment("slow consumer".into())),
            "({messages}, {bytes})"
        );
        let (_, metrics) = http(
            server.addr,
            "GET",
            "/metrics",
            &[("Authorization", &format!("Bearer {ADMIN}"))],
            "",
        );
        assert!(
            metrics.contains("\nwshub_slow_consumer_closes_total 1\n"),
            "{metrics}"
        );
    }
}

#[test]
fn a_stream_whose_client_takes_nothing_for_write_wait_is_dropped() {
    let mut config = admin_config();
    config.websocket.write_wait = Duration::from_millis(300);
    config.websocket.max_buffered_bytes = 256 << 20;
    config.websocket.message_buffer_size = 100_000;
    let server = TestServer::start(config);
    let stream = request(server.addr, "/api/ws/sse?user_id=stuck", &[]);
    wait_online(&server, 1);
    let content = "y".repeat(64 * 1024);
    let auth = format!("Bearer {ADMIN}");
    // Enough to fill both socket buffers, well within the queue bounds.
    for _ in 0..256 {
        let body = json!({"type": "big", "to": "stuck", "content": content}).to_string();
        let (status, _) = http(
            server.addr,
            "POST",
            "/api/ws/send",
            &[("Authorization", &auth)],
            &body,
        );
        assert_eq!(status, 200);
        if server_dropped(&server) {
            break;
        }
    }
    wait_online(&server, 0);
    let (_, metrics) = http(
        server.addr,
        "GET",
        "/metrics",
        &[("Authorization", &auth)],
        "",
    );
    assert!(
        metrics.contains("\nwshub_slow_consumer_closes_total 0\n"),
        "ended by write_wait, not by the queue bounds: {metrics}"
    );
    drop(stream);
}

fn server_dropped(server: &TestServer) -> bool {
    let auth = format!("Bearer {ADMIN}");
    let (_, body) = http(
        server.addr,
        "GET",
        "/api/ws/status",
        &[("Authorization", &auth)],
        "",
    );
    serde_json::from_str::<Value>(&body).unwrap()["online_count"] == 0
}

#[test]
fn disconnecting_the_user_and_shutting_down_end_the_stream() {
    let server = TestServer::start(admin_config());
    let mut sse = open(server.addr, "/api/ws/sse?user_id=dave");
    wait_online(&server, 1);
    server.handle.disconnect_user("dave").unwrap();
    assert_eq!(
        sse.read_to_end(),
        [Item::Comment("disconnected by server".into())]
    );
    wait_online(&server, 0);
    drop(sse);
    let mut sse = open(server.addr, "/api/ws/sse?user_id=erin");
    wait_online(&server, 1);
    server.handle.shutdown().unwrap();
    assert_eq!(
        sse.read_to_end(),
        [Item::Comment("server shutting down".into())]
    );
    drop(sse);
    server.stop().unwrap();
}

#[test]
fn input_after_the_request_is_ignored_and_fin_ends_the_session() {
    let server = TestServer::start(admin_config());
    let mut stream = request(server.addr, "/api/ws/sse?user_id=talker", &[]);
    stream
        .write_all(b"GET /health HTTP/1.1\r\n\r\njunk\x00\xff")
        .unwrap();
    let mut sse = Stream::open(stream.try_clone().unwrap());
    assert_eq!(sse.status, 200);
    wait_online(&server, 1);
    post(
        &server,
        "/api/ws/send",
        json!({"type": "still", "to": "talker"}),
    );
    assert_eq!(
        sse.next_json()["type"],
        "still",
        "no response to the pipelined GET"
    );
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    wait_online(&server, 0);
    sse.set_timeout(WAIT);
    assert!(sse.read_to_end().is_empty());
}

#[test]
fn over_tls_too() {
    let dir = tls::temp_dir("sse");
    let cert = tls::make_cert(&dir, "sse");
    let client = tls::client_config(&[&cert]);
    let mut config = admin_config();
    config.tls.cert = cert.cert.to_string_lossy().into_owned();
    config.tls.key = cert.key.to_string_lossy().into_owned();
    let server = TestServer::start(config);
    let mut stream = tls::connect(server.addr, &client).expect("TLS handshake");
    stream
        .write_all(b"GET /api/ws/sse?user_id=tina&rooms=r HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut sse = Stream::open(stream);
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    let auth = format!("Bearer {ADMIN}");
    let deadline = Instant::now() + WAIT;
    loop {
        let body = json!({"type": "t", "room": "r", "content": "secure"}).to_string();
        let (_, text) = tls::https(
            server.addr,
            &client,
            "POST",
            "/api/ws/broadcast",
            &[("Authorization", &auth)],
            &body,
        );
        if serde_json::from_str::<Value>(&text).unwrap()["sent"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the stream never joined r");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        sse.next_json(),
        json!({"type": "t", "room": "r", "content": "secure"})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn history_config(size: usize) -> Config {
    let mut config = admin_config();
    config.history.size = size;
    config
}

/// The next event (comments skipped): its name, id and data.
fn next_event(stream: &mut Stream<TcpStream>) -> (String, Option<String>, String) {
    loop {
        match stream.next_item() {
            Some(Item::Event { name, id, data }) => return (name, id, data),
            Some(Item::Comment(_)) => continue,
            None => panic!("stream ended while an event was expected"),
        }
    }
}

/// Pushes `content` to alice (`u`), the lobby (`r`) or everyone (`a`).
fn push_to(server: &TestServer, stream: char, content: i64) {
    let (path, body) = match stream {
        'u' => (
            "/api/ws/send",
            json!({"type": "n", "to": "alice", "content": content}),
        ),
        'r' => (
            "/api/ws/broadcast",
            json!({"type": "n", "room": "lobby", "content": content}),
        ),
        _ => (
            "/api/ws/broadcast",
            json!({"type": "n", "content": content}),
        ),
    };
    post(server, path, body);
}

#[test]
fn with_history_ids_resume_every_stream_of_the_connection_with_nothing_lost_or_repeated() {
    let server = TestServer::start(history_config(100));
    let path = "/api/ws/sse?user_id=alice&rooms=lobby";
    let mut sse = open(server.addr, path);
    let mut ws = server.connect_path("/api/ws/connect?user_id=alice&recover=1");
    ws.send_json(json!({"type": "join", "room": "lobby"}));
    ws.sync();
    wait_online(&server, 2);
    for (n, stream) in [(1, 'u'), (2, 'r'), (3, 'a')] {
        push_to(&server, stream, n);
    }
    let mut ids = Vec::new();
    for n in 1..=3 {
        let (name, id, data) = next_event(&mut sse);
        assert_eq!(name, "message");
        // What a recovering WebSocket of the same user and rooms gets.
        let from_ws = loop {
            let v = ws.recv_json();
            if v["type"] == "n" {
                break v;
            }
        };
        let from_sse: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(from_sse, from_ws, "same JSON, \"pos\" included");
        assert_eq!(from_sse["content"], n);
        assert!(from_sse["pos"].is_string(), "{data}");
        ids.push(id.expect("every kept message has an id"));
    }
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );
    let last = sse.last_id.clone().unwrap();
    assert_eq!(last, ids[2]);
    drop(sse);
    wait_online(&server, 1);
    // Missed while away: two per stream, interleaved.
    for (n, stream) in (4..).zip(['u', 'r', 'a', 'a', 'r', 'u']) {
        push_to(&server, stream, n);
    }
    let mut back = Stream::open(request(server.addr, path, &[("Last-Event-ID", &last)]));
    assert_eq!(back.status, 200);
    let mut replayed = Vec::new();
    for _ in 0..6 {
        let (name, id, data) = next_event(&mut back);
        assert_eq!(name, "message", "no reset: {data}");
        assert_eq!(id, None, "replayed events carry no id of their own");
        let v: Value = serde_json::from_str(&data).unwrap();
        replayed.push(v["content"].as_i64().unwrap());
    }
    // Per stream, in stream order: everyone, the user, then the room.
    assert_eq!(replayed, [6, 7, 4, 9, 5, 8]);
    push_to(&server, 'a', 10);
    let (_, id, data) = next_event(&mut back);
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["content"], 10);
    assert!(id.is_some());
    // The token handed out after the replay already covered 4..9: a cut
    // right after the replay resumes with nothing repeated.
    let now = back.last_id.clone().unwrap();
    drop(back);
    wait_online(&server, 1);
    let query = format!("{path}&last_event_id={now}");
    let mut again = open(server.addr, &query);
    push_to(&server, 'u', 11);
    let (_, _, data) = next_event(&mut again);
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["content"], 11);
    let (_, metrics) = http(
        server.addr,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        "",
    );
    assert!(
        metrics.contains("\nwshub_history_replayed_total 6\n"),
        "{metrics}"
    );
}

#[test]
fn streams_that_cannot_be_replayed_are_named_in_a_reset_before_live_events() {
    let server = TestServer::start(history_config(2));
    let path = "/api/ws/sse?user_id=alice&rooms=lobby";
    let mut sse = open(server.addr, path);
    push_to(&server, 'a', 1);
    next_event(&mut sse);
    let last = sse.last_id.clone().unwrap();
    drop(sse);
    wait_online(&server, 0);
    // Three to alice: one more than history keeps. One to everyone: kept.
    for n in 2..=4 {
        push_to(&server, 'u', n);
    }
    push_to(&server, 'a', 5);
    let mut back = Stream::open(request(server.addr, path, &[("Last-Event-ID", &last)]));
    let (name, id, data) = next_event(&mut back);
    assert_eq!((name.as_str(), id), ("reset", None));
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"streams": ["u"]})
    );
    let (name, _, data) = next_event(&mut back);
    assert_eq!(name, "message");
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["content"], 5);
    push_to(&server, 'r', 6);
    let (_, _, data) = next_event(&mut back);
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["content"], 6);
    drop(back);
    // A token of another run (or garbage) cannot be vouched for: every
    // stream of the connection is named.
    wait_online(&server, 0);
    for token in ["AAAAAAAA-1", "garbage", ""] {
        let mut stranger = Stream::open(request(server.addr, path, &[("Last-Event-ID", token)]));
        let (name, _, data) = next_event(&mut stranger);
        assert_eq!(name, "reset", "{token:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&data).unwrap(),
            json!({"streams": ["a", "u", "r:lobby"]})
        );
    }
}

#[test]
fn without_history_events_have_no_id_and_last_event_id_is_ignored() {
    let server = TestServer::start(admin_config());
    let mut sse = Stream::open(request(
        server.addr,
        "/api/ws/sse?user_id=alice",
        &[("Last-Event-ID", "x-1")],
    ));
    assert_eq!(sse.status, 200);
    wait_online(&server, 1);
    push_to(&server, 'u', 1);
    let (name, id, data) = next_event(&mut sse);
    assert_eq!((name.as_str(), id), ("message", None));
    assert_eq!(data, r#"{"type":"n","to":"alice","content":1}"#);
    assert_eq!(sse.last_id, None);
}
