//! The core contract over real loopback sockets: endpoints, routing rules,
//! status, keep-alive, bad input and modes (docs/protocol.md sections 1, 3, 4).

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use common::*;
use serde_json::json;
use wshub::Mode;

#[test]
fn health_and_unknown_paths() {
    let server = TestServer::start(test_config());
    assert_eq!(
        http(server.addr, "GET", "/health", &[], ""),
        (200, r#"{"status":"ok"}"#.into())
    );
    assert_eq!(
        http(server.addr, "GET", "/nope", &[], ""),
        (404, r#"{"error":"not found"}"#.into())
    );
    assert_eq!(
        http(server.addr, "POST", "/health", &[], ""),
        (405, r#"{"error":"method not allowed"}"#.into())
    );
    assert_eq!(http(server.addr, "GET", "/api/ws/send", &[], "").0, 405);
    assert_eq!(http(server.addr, "POST", "/api/ws/connect", &[], "").0, 405);
}

#[test]
fn chat_from_user123_reaches_user456_with_from_stamped() {
    let server = TestServer::start(test_config());
    let mut alice = server.connect(Some("user123"));
    let mut bob = server.connect(Some("user456"));
    server.wait_online(2);
    alice.send_json(json!({"type": "chat", "to": "user456", "from": "forged", "content": "Hello World!", "extra": 1}));
    assert_eq!(
        bob.recv_json(),
        json!({"type": "chat", "to": "user456", "from": "user123", "content": "Hello World!"})
    );
    assert!(alice.sync().is_empty(), "the sender gets nothing back");
}

#[test]
fn every_session_of_a_user_receives_and_to_self_includes_the_sender() {
    let server = TestServer::start(test_config());
    let mut tab1 = server.connect(Some("amy"));
    let mut tab2 = server.connect(Some("amy"));
    let mut other = server.connect(Some("bob"));
    server.wait_online(3);
    tab1.send_json(json!({"type": "note", "to": "amy", "content": {"k": [1, 2]}}));
    let expected = json!({"type": "note", "to": "amy", "from": "amy", "content": {"k": [1, 2]}});
    assert_eq!(tab1.recv_json(), expected);
    assert_eq!(tab2.recv_json(), expected);
    assert!(other.sync().is_empty());
}

#[test]
fn broadcast_reaches_every_other_session_including_anonymous() {
    let server = TestServer::start(test_config());
    let mut sender = server.connect(Some("s"));
    let mut anon = server.connect(None);
    let mut named = server.connect(Some("n"));
    server.wait_online(3);
    sender.send_json(json!({"type": "shout", "content": 1}));
    assert_eq!(
        anon.recv_json(),
        json!({"type": "shout", "from": "s", "content": 1})
    );
    assert_eq!(
        named.recv_json(),
        json!({"type": "shout", "from": "s", "content": 1})
    );
    assert!(sender.sync().is_empty(), "a broadcast skips its sender");
    // Anonymous senders get no `from`; a message without content has none.
    anon.send_json(json!({"type": "hi"}));
    assert_eq!(named.recv_json(), json!({"type": "hi"}));
}

#[test]
fn rooms_join_leave_and_membership_errors() {
    let server = TestServer::start(test_config());
    let mut a = server.connect(Some("a"));
    let mut b = server.connect(Some("b"));
    let mut c = server.connect(Some("c"));
    server.wait_online(3);
    a.send_json(json!({"type": "say", "room": "r1", "content": "x"}));
    assert_eq!(
        a.recv_json(),
        json!({"type": "error", "content": "not a member of room \"r1\""})
    );
    for client in [&mut a, &mut b] {
        client.send_json(json!({"type": "join", "room": "r1"}));
        assert!(client.sync().is_empty(), "join sends no reply");
    }
    // room wins over to; only other members receive it.
    a.send_json(json!({"type": "say", "room": "r1", "to": "c", "content": "x"}));
    assert_eq!(
        b.recv_json(),
        json!({"type": "say", "to": "c", "from": "a", "room": "r1", "content": "x"})
    );
    assert!(a.sync().is_empty());
    assert!(c.sync().is_empty());
    b.send_json(json!({"type": "leave", "room": "r1"}));
    b.sync();
    a.send_json(json!({"type": "say", "room": "r1"}));
    assert!(a.sync().is_empty());
    assert!(b.sync().is_empty(), "left the room");
    a.send_json(json!({"type": "join"}));
    assert_eq!(
        a.recv_json(),
        json!({"type": "error", "content": "join needs a \"room\""})
    );
    a.send_json(json!({"type": "leave", "room": ""}));
    assert_eq!(
        a.recv_json(),
        json!({"type": "error", "content": "leave needs a \"room\""})
    );
}

#[test]
fn empty_to_and_room_mean_broadcast() {
    let server = TestServer::start(test_config());
    let mut a = server.connect(Some("a"));
    let mut b = server.connect(Some("b"));
    server.wait_online(2);
    a.send_json(json!({"type": "t", "to": "", "room": ""}));
    assert_eq!(b.recv_json(), json!({"type": "t", "from": "a"}));
}

#[test]
fn ping_answers_in_order_with_its_content() {
    let server = TestServer::start(test_config());
    let mut a = server.connect(Some("a"));
    a.send_json(json!({"type": "ping", "content": {"t": 5}}));
    assert_eq!(a.recv_json(), json!({"type": "pong", "content": {"t": 5}}));
    a.send_json(json!({"type": "ping"}));
    assert_eq!(a.recv_json(), json!({"type": "pong"}));
}

#[test]
fn bad_messages_get_error_replies_and_keep_the_connection() {
    let server = TestServer::start(test_config());
    let mut a = server.connect(Some("a"));
    let cases = [
        ("{oops", "invalid JSON"),
        ("[1,2,3]", "message must be a JSON object"),
        ("42", "message must be a JSON object"),
        (
            r#"{"content":1}"#,
            "message needs a non-empty string \"type\"",
        ),
        (
            r#"{"type":""}"#,
            "message needs a non-empty string \"type\"",
        ),
        (
            r#"{"type":"x","to":5}"#,
            "invalid message: invalid type: integer `5`, expected a string",
        ),
    ];
    for (input, reason) in cases {
        a.send_text(input);
        assert_eq!(
            a.recv_json(),
            json!({"type": "error", "content": reason}),
            "input {input}"
        );
    }
    a.ws.send(tungstenite::Message::binary(vec![1, 2, 3]))
        .unwrap();
    assert_eq!(
        a.recv_json(),
        json!({"type": "error", "content": "binary messages are not supported"})
    );
    a.send_json(json!({"type": "ping"}));
    assert_eq!(a.recv_json(), json!({"type": "pong"}), "still open");
}

#[test]
fn status_is_exact_across_connects_and_disconnects() {
    let server = TestServer::start(test_config());
    let status = || {
        let (code, body) = http(server.addr, "GET", "/api/ws/status", &[], "");
        assert_eq!(code, 200);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    assert_eq!(status(), json!({"online_count": 0, "online_users": []}));
    let zed = server.connect(Some("zed"));
    let amy1 = server.connect(Some("amy"));
    let amy2 = server.connect(Some("amy"));
    let anon = server.connect(None);
    let _echo = server.connect_path("/api/ws/echo");
    server.wait_online(4);
    assert_eq!(
        status(),
        json!({"online_count": 4, "online_users": ["amy", "zed"]})
    );
    amy1.close();
    server.wait_online(3);
    assert_eq!(
        status(),
        json!({"online_count": 3, "online_users": ["amy", "zed"]})
    );
    amy2.close();
    anon.close();
    server.wait_online(1);
    assert_eq!(
        status(),
        json!({"online_count": 1, "online_users": ["zed"]})
    );
    drop(zed); // TCP drop without a Close frame
    server.wait_online(0);
}

#[test]
fn rest_broadcast_and_send() {
    let server = TestServer::start(test_config());
    let mut a = server.connect(Some("a"));
    let mut b = server.connect(Some("b"));
    let mut anon = server.connect(None);
    server.wait_online(3);
    let body = r#"{"type":"notification","content":"系统维护通知"}"#;
    assert_eq!(
        http(server.addr, "POST", "/api/ws/broadcast", &[], body),
        (200, r#"{"sent":3}"#.into())
    );
    for client in [&mut a, &mut b, &mut anon] {
        assert_eq!(
            client.recv_json(),
            json!({"type": "notification", "content": "系统维护通知"})
        );
    }
    a.send_json(json!({"type": "join", "room": "ops"}));
    a.sync();
    let room = r#"{"type":"alert","content":1,"room":"ops"}"#;
    assert_eq!(
        http(server.addr, "POST", "/api/ws/broadcast", &[], room),
        (200, r#"{"sent":1}"#.into())
    );
    assert_eq!(
        a.recv_json(),
        json!({"type": "alert", "room": "ops", "content": 1})
    );
    let send = r#"{"type":"private_message","to":"b","content":"Hello!","from":"system"}"#;
    assert_eq!(
        http(server.addr, "POST", "/api/ws/send", &[], send),
        (200, r#"{"sent":1}"#.into())
    );
    assert_eq!(
        b.recv_json(),
        json!({"type": "private_message", "to": "b", "from": "system", "content": "Hello!"})
    );
    let offline = r#"{"type":"pm","to":"nobody","content":1}"#;
    assert_eq!(
        http(server.addr, "POST", "/api/ws/send", &[], offline),
        (200, r#"{"sent":0}"#.into())
    );
    assert!(anon.sync().is_empty());
}

#[test]
fn rest_bad_bodies_get_400_with_reasons() {
    let server = TestServer::start(test_config());
    let cases = [
        ("/api/ws/broadcast", "{", r#"{"error":"invalid JSON"}"#),
        ("/api/ws/broadcast", "", r#"{"error":"invalid JSON"}"#),
        (
            "/api/ws/broadcast",
            "[1]",
            r#"{"error":"message must be a JSON object"}"#,
        ),
        (
            "/api/ws/broadcast",
            r#"{"content":1}"#,
            r#"{"error":"message needs a non-empty string \"type\""}"#,
        ),
        (
            "/api/ws/send",
            r#"{"type":"x","content":1}"#,
            r#"{"error":"message needs a non-empty string \"to\""}"#,
        ),
        (
            "/api/ws/send",
            r#"{"type":"x","to":""}"#,
            r#"{"error":"message needs a non-empty string \"to\""}"#,
        ),
    ];
    for (path, body, error) in cases {
        assert_eq!(
            http(server.addr, "POST", path, &[], body),
            (400, error.to_owned()),
            "{path} {body}"
        );
    }
}

#[test]
fn keep_alive_serves_several_requests_and_pipelining() {
    let server = TestServer::start(test_config());
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let body = r#"{"type":"n"}"#;
    let pipelined = format!(
        "GET /health HTTP/1.1\r\n\r\nPOST /api/ws/broadcast HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /api/ws/status HTTP/1.1\r\n\r\n",
        body.len()
    );
    // Split at an awkward point so the second request arrives in two pieces.
    let (first, second) = pipelined.split_at(40);
    stream.write_all(first.as_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    stream.write_all(second.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (status, headers, body) = read_full_response(&mut reader);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert!(headers.contains(&("connection".into(), "keep-alive".into())));
    assert!(headers.contains(&("content-type".into(), "application/json".into())));
    assert_eq!(read_response(&mut reader), (200, r#"{"sent":0}"#.into()));
    assert_eq!(
        read_response(&mut reader),
        (200, r#"{"online_count":0,"online_users":[]}"#.into())
    );
    // Connection: close is honoured.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (_, headers, _) = read_full_response(&mut reader);
    assert!(headers.contains(&("connection".into(), "close".into())));
    let mut rest = Vec::new();
    assert_eq!(
        reader.read_to_end(&mut rest).unwrap(),
        0,
        "server closed after Connection: close"
    );
}

#[test]
fn malformed_requests_get_400_and_close() {
    let server = TestServer::start(test_config());
    let reply = raw_exchange(server.addr, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("Connection: close\r\n"));
    assert!(text.contains(r#"{"error":"malformed request: "#));
    let chunked = raw_exchange(
        server.addr,
        b"POST /api/ws/broadcast HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&chunked);
    assert!(
        text.starts_with("HTTP/1.1 411 Length Required\r\n"),
        "{text}"
    );
    assert!(text.ends_with(r#"{"error":"chunked bodies are not supported: send Content-Length"}"#));
    assert_eq!(
        http(server.addr, "GET", "/health", &[], "").0,
        200,
        "server unaffected"
    );
}

#[test]
fn plain_get_on_connect_is_400_and_bad_versions_are_426() {
    let server = TestServer::start(test_config());
    assert_eq!(
        http(server.addr, "GET", "/api/ws/connect?user_id=u", &[], ""),
        (400, r#"{"error":"WebSocket upgrade required"}"#.into())
    );
    let v8 = upgrade_request("/api/ws/connect").replace("Version: 13", "Version: 8");
    let reply = String::from_utf8(raw_exchange(server.addr, v8.as_bytes())).unwrap();
    assert!(reply.starts_with("HTTP/1.1 426 "), "{reply}");
    assert!(reply.contains("Sec-WebSocket-Version: 13\r\n"));
    let no_key = upgrade_request("/api/ws/connect")
        .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    let reply = String::from_utf8(raw_exchange(server.addr, no_key.as_bytes())).unwrap();
    assert!(
        reply.ends_with(r#"{"error":"invalid Sec-WebSocket-Key"}"#),
        "{reply}"
    );
}

#[test]
fn bytes_pipelined_after_the_upgrade_are_frames() {
    let server = TestServer::start(test_config());
    let mut bytes = upgrade_request("/api/ws/echo").into_bytes();
    bytes.extend(client_frame(0x81, b"first"));
    bytes.extend(client_frame(0x82, &[1, 2, 3]));
    bytes.extend(client_frame(0x88, &1000u16.to_be_bytes()));
    let reply = raw_exchange(server.addr, &bytes);
    let head = String::from_utf8_lossy(&reply[..reply.len().min(200)]).to_string();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_eq!(
        server_frames(&reply),
        vec![
            (1, b"first".to_vec()),
            (2, vec![1, 2, 3]),
            (8, 1000u16.to_be_bytes().to_vec())
        ]
    );
}

#[test]
fn protocol_violations_close_with_their_rfc_codes() {
    let server = TestServer::start(test_config());
    let cases: [(Vec<u8>, u16); 4] = [
        (vec![0x81, 0x02, b'h', b'i'], 1002), // unmasked client frame
        (client_frame(0xC1, b"x"), 1002),     // reserved bit
        (client_frame(0x81, &[0xff]), 1007),  // invalid UTF-8
        (client_frame(0x80, b"x"), 1002),     // continuation first
    ];
    for (frame, code) in cases {
        let mut bytes = upgrade_request("/api/ws/connect?user_id=v").into_bytes();
        bytes.extend(&frame);
        // Answer the server's Close so it can finish the handshake at once.
        bytes.extend(client_frame(0x88, &code.to_be_bytes()));
        let frames = server_frames(&raw_exchange(server.addr, &bytes));
        let close = frames
            .iter()
            .find(|(op, _)| *op == 8)
            .expect("a Close frame");
        assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), code);
    }
    server.wait_online(0);
}

#[test]
fn echo_endpoint_only_when_enabled() {
    let mut config = test_config();
    let server = TestServer::start(config.clone());
    let mut echo = server.connect_path("/api/ws/echo");
    echo.send_text("same text");
    assert_eq!(echo.recv_text(), "same text");
    echo.ws
        .send(tungstenite::Message::binary(vec![0, 159, 146, 150]))
        .unwrap();
    assert_eq!(
        echo.ws.read().unwrap(),
        tungstenite::Message::binary(vec![0, 159, 146, 150])
    );
    drop(echo);
    drop(server);
    config.websocket.echo = false;
    let server = TestServer::start(config);
    let reply = String::from_utf8(raw_exchange(
        server.addr,
        upgrade_request("/api/ws/echo").as_bytes(),
    ))
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
}

#[test]
fn integrated_mode_with_websocket_disabled_serves_404_for_the_api() {
    let mut config = test_config();
    config.websocket.enable = false;
    let server = TestServer::start(config.clone());
    assert_eq!(http(server.addr, "GET", "/api/ws/status", &[], "").0, 404);
    assert_eq!(
        http(server.addr, "POST", "/api/ws/broadcast", &[], "{}").0,
        404
    );
    let reply = String::from_utf8(raw_exchange(
        server.addr,
        upgrade_request("/api/ws/connect").as_bytes(),
    ))
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
    assert_eq!(http(server.addr, "GET", "/health", &[], "").0, 200);
    assert_eq!(
        http(server.addr, "GET", "/", &[], "").0,
        404,
        "no demo page without the API"
    );
    drop(server);
    // Standalone mode always serves the API.
    let server = TestServer::start_mode(config, Mode::Standalone);
    assert_eq!(http(server.addr, "GET", "/api/ws/status", &[], "").0, 200);
    let mut client = server.connect(Some("u"));
    client.send_json(json!({"type": "ping"}));
    assert_eq!(client.recv_json(), json!({"type": "pong"}));
}

#[test]
fn metrics_are_prometheus_text() {
    let server = TestServer::start(test_config());
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (status, headers, body) = read_full_response(&mut BufReader::new(stream));
    assert_eq!(status, 200);
    assert!(headers.contains(&("content-type".into(), "text/plain; version=0.0.4".into())));
    for name in [
        "wshub_connections_open",
        "wshub_connections_total",
        "wshub_messages_in_total",
        "wshub_bytes_out_total",
        "wshub_slow_consumer_closes_total",
        "wshub_handshake_failures_total",
    ] {
        assert!(body.contains(&format!("# TYPE {name} ")), "missing {name}");
    }
}

/// Runs a binary with `args` in a fresh temp dir; returns (exit code, stdout, stderr).
fn run_binary(binary: &str, args: &[&str], config: Option<&str>) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "wshub-cli-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(text) = config {
        std::fs::write(dir.join("bad.yaml"), text).unwrap();
    }
    let out = std::process::Command::new(binary)
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run binary");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_exit_non_zero_with_one_line_naming_file_and_key() {
    let bin = env!("CARGO_BIN_EXE_wshub");
    let cases = [
        (
            "websocket:\n  ping_periodd: 5s\n",
            "bad.yaml: unknown key \"websocket.ping_periodd\"",
        ),
        (
            "websocket:\n  max_connections: lots\n",
            "bad.yaml: websocket.max_connections:",
        ),
        (
            "websocket:\n  ping_period: soon\n",
            "bad.yaml: websocket.ping_period:",
        ),
        ("app: [unclosed\n", "bad.yaml: invalid YAML"),
    ];
    for (yaml, start) in cases {
        let (code, stdout, stderr) = run_binary(bin, &["--config", "bad.yaml"], Some(yaml));
        assert_eq!(code, 1, "{yaml}: {stderr}");
        assert!(stdout.is_empty());
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with(start), "{yaml}: {stderr}");
    }
    let (code, _, stderr) = run_binary(bin, &["--config", "missing.yaml"], None);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("missing.yaml: cannot read:"), "{stderr}");
}

#[test]
fn help_and_version_work_for_both_binaries() {
    for bin in [
        env!("CARGO_BIN_EXE_wshub"),
        env!("CARGO_BIN_EXE_wshub-standalone"),
    ] {
        let (code, stdout, stderr) = run_binary(bin, &["--version"], None);
        assert_eq!((code, stdout.as_str()), (0, ""));
        assert!(stderr.contains(env!("CARGO_PKG_VERSION")), "{stderr}");
        let (code, _, stderr) = run_binary(bin, &["--help"], None);
        assert_eq!(code, 0);
        assert!(stderr.contains("--config"), "{stderr}");
        let (code, _, stderr) = run_binary(bin, &["--bogus"], None);
        assert_eq!(code, 2, "{stderr}");
    }
}

#[test]
fn a_body_arriving_in_pieces_is_waited_for() {
    let server = TestServer::start(test_config());
    let mut listener = server.connect(Some("l"));
    server.wait_online(1);
    let body = format!(r#"{{"type":"big","content":"{}"}}"#, "x".repeat(200_000));
    let head = format!(
        "POST /api/ws/broadcast HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    for piece in body.as_bytes().chunks(70_000) {
        std::thread::sleep(std::time::Duration::from_millis(30));
        stream.write_all(piece).unwrap();
    }
    assert_eq!(
        read_response(&mut BufReader::new(stream)),
        (200, r#"{"sent":1}"#.into())
    );
    assert_eq!(
        listener.recv_json()["content"].as_str().map(str::len),
        Some(200_000)
    );
}
