//! permessage-deflate (docs/protocol.md section 9) over real loopback sockets.
//!
//! tungstenite does not speak permessage-deflate, so compressing clients
//! here are raw TCP with `flate2` on the client side: they offer the
//! extension, mask and compress their frames and inflate the server's.
//! Plain clients are tungstenite, as in the other tests.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{client_frame, http, TestServer, WAIT};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use wshub::Config;

const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

fn config(compression: bool) -> Config {
    let mut config = common::test_config();
    config.websocket.compression = compression;
    config
}

/// One server frame: first byte (FIN, RSV1, opcode) and payload.
type Frame = (u8, Vec<u8>);

/// A raw WebSocket client that may negotiate permessage-deflate.
struct Raw {
    stream: TcpStream,
    /// The server's `Sec-WebSocket-Extensions`, if any.
    extensions: Option<String>,
    /// The client's compressor: reset before each message, as the server
    /// answers `client_no_context_takeover` (docs/protocol.md section 7a),
    /// unless `keep_context` is set.
    compressor: Compress,
    /// Misbehave: keep the compressor's context across messages.
    keep_context: bool,
}

impl Raw {
    fn open(addr: SocketAddr, path: &str, offer: Option<&str>) -> Raw {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(offer) = offer {
            request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        // Byte by byte, so no frame bytes are read past the head.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            stream.read_exact(&mut byte).expect("101 head");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        Raw {
            stream,
            extensions,
            compressor: Compress::new(Compression::default(), false),
            keep_context: false,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn send_plain(&mut self, text: &str) {
        self.send_raw(&client_frame(0x81, text.as_bytes()));
    }

    /// Deflates `payload` (sync flush, tail removed), from a fresh context
    /// unless `keep_context`.
    fn deflate(&mut self, payload: &[u8]) -> Vec<u8> {
        if !self.keep_context {
            self.compressor.reset();
        }
        let mut out = Vec::with_capacity(payload.len() + 1024);
        let mut input = payload;
        loop {
            let before = self.compressor.total_in();
            self.compressor
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .unwrap();
            input = &input[(self.compressor.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    fn send_compressed(&mut self, text: &str) {
        let deflated = self.deflate(text.as_bytes());
        self.send_raw(&client_frame(0xC1, &deflated));
    }

    fn recv(&mut self) -> Frame {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).expect("frame head");
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut ext = [0u8; 2];
            self.stream.read_exact(&mut ext).unwrap();
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            self.stream.read_exact(&mut ext).unwrap();
            len = u64::from_be_bytes(ext);
        }
        let mut payload = vec![0; len as usize];
        self.stream.read_exact(&mut payload).unwrap();
        (head[0], payload)
    }

    /// The next data frame (Pings skipped), inflated if RSV1 is set; also
    /// says whether it was compressed.
    fn recv_message(&mut self) -> (bool, String) {
        loop {
            let (first, payload) = self.recv();
            match first & 0x0f {
                0x9 | 0xA => continue,
                0x1 => {}
                other => panic!("expected text, got opcode {other:#x}: {payload:?}"),
            }
            let compressed = first & 0x40 != 0;
            let bytes = if compressed {
                inflate(&payload)
            } else {
                payload
            };
            return (compressed, String::from_utf8(bytes).unwrap());
        }
    }

    fn recv_json(&mut self) -> (bool, Value) {
        let (compressed, text) = self.recv_message();
        (compressed, serde_json::from_str(&text).unwrap())
    }

    /// Reads until the server's Close; returns its code.
    fn expect_close(&mut self) -> u16 {
        for _ in 0..1000 {
            let (first, payload) = self.recv();
            if first & 0x0f == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
        panic!("no Close");
    }
}

/// Inflates one server message: a fresh context every time, since the
/// server answers `server_no_context_takeover`.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(64 * 1024 + payload.len() * 20);
    Decompress::new(false)
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("server sent valid deflate data");
    out
}

fn chat(content: &str, room: Option<&str>) -> String {
    let mut message = json!({"type": "chat", "content": content});
    if let Some(room) = room {
        message["room"] = json!(room);
    }
    message.to_string()
}

/// A round trip through the server proves everything before it was handled.
fn sync_raw(raw: &mut Raw) {
    raw.send_plain(r#"{"type":"ping","content":"sync"}"#);
    loop {
        let (_, v) = raw.recv_json();
        if v["type"] == "pong" {
            return;
        }
    }
}

#[test]
fn a_compressing_and_a_plain_client_share_one_room_and_one_broadcast() {
    let server = TestServer::start(config(true));
    let mut deflating = Raw::open(
        server.addr,
        "/api/ws/connect?user_id=deflating",
        Some(BROWSER_OFFER),
    );
    assert_eq!(
        deflating.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let mut plain = server.connect(Some("plain"));
    let mut sender = server.connect(Some("sender"));
    deflating.send_compressed(r#"{"type":"join","room":"lobby"}"#);
    sync_raw(&mut deflating);
    plain.send_json(json!({"type": "join", "room": "lobby"}));
    sender.send_json(json!({"type": "join", "room": "lobby"}));
    plain.sync();
    sender.sync();

    // A room message long enough to compress.
    let long = "the quick brown fox jumps over the lazy dog; ".repeat(8);
    sender.send_text(&chat(&long, Some("lobby")));
    let (compressed, got) = deflating.recv_json();
    assert!(compressed, "RSV1 set for the compressing client");
    assert_eq!(got["content"], long.as_str());
    assert_eq!(got["from"], "sender");
    assert_eq!(plain.recv_json()["content"], long.as_str());

    // Under compression_min_bytes (128): plain for everyone, RSV1 clear.
    sender.send_text(&chat("hi", Some("lobby")));
    let (compressed, got) = deflating.recv_json();
    assert!(!compressed, "short messages go out uncompressed");
    assert_eq!(got["content"], "hi");
    assert_eq!(plain.recv_json()["content"], "hi");

    // A REST broadcast reaches both, each in its own form.
    let body = json!({"type": "notice", "content": long}).to_string();
    let (status, reply) = http(server.addr, "POST", "/api/ws/broadcast", &[], &body);
    assert_eq!((status, reply.as_str()), (200, r#"{"sent":3}"#));
    let (compressed, got) = deflating.recv_json();
    assert!(compressed);
    assert_eq!(got, json!({"type": "notice", "content": long}));
    assert_eq!(
        plain.recv_json(),
        json!({"type": "notice", "content": long})
    );
    assert_eq!(
        sender.recv_json(),
        json!({"type": "notice", "content": long})
    );

    // The compressing client's own compressed room message reaches the
    // plain client as plain text.
    let from_deflating = "compressed upstream, ".repeat(10);
    deflating.send_compressed(&chat(&from_deflating, Some("lobby")));
    assert_eq!(plain.recv_json()["content"], from_deflating.as_str());
    assert_eq!(sender.recv_json()["from"], "deflating");
}

#[test]
fn a_compression_bomb_closes_with_1009_while_inflating() {
    let mut config = config(true);
    config.websocket.max_message_size = 1 << 20;
    let server = TestServer::start(config);
    let mut raw = Raw::open(server.addr, "/api/ws/echo", Some(BROWSER_OFFER));
    assert!(raw.extensions.is_some());
    // 4 MiB of one byte deflates to a few KiB: four times the limit.
    let bomb = raw.deflate(&vec![b'a'; 4 << 20]);
    assert!(bomb.len() < 30 * 1024, "bomb is {} bytes", bomb.len());
    raw.send_raw(&client_frame(0xC1, &bomb));
    assert_eq!(raw.expect_close(), 1009);
    // The server is unharmed.
    let mut next = server.connect_path("/api/ws/echo");
    next.send_text("still here");
    assert_eq!(next.recv_text(), "still here");
}

#[test]
fn fragmented_compressed_messages_inflate_and_no_context_is_kept() {
    let server = TestServer::start(config(true));
    let mut raw = Raw::open(server.addr, "/api/ws/echo", Some(BROWSER_OFFER));
    let text = "each message is compressed from a fresh context. ".repeat(6);
    for _ in 0..3 {
        raw.send_compressed(&text);
        assert_eq!(raw.recv_message(), (true, text.clone()));
    }
    // One compressed message in three fragments, RSV1 on the first only,
    // with a Ping between them.
    let long = "fragmented and compressed; ".repeat(40);
    let deflated = raw.deflate(long.as_bytes());
    let third = deflated.len() / 3;
    let mut bytes = client_frame(0x41, &deflated[..third]);
    bytes.extend(client_frame(0x89, b"mid"));
    bytes.extend(client_frame(0x00, &deflated[third..2 * third]));
    bytes.extend(client_frame(0x80, &deflated[2 * third..]));
    raw.send_raw(&bytes);
    assert_eq!(raw.recv(), (0x8A, b"mid".to_vec()), "Pong in between");
    assert_eq!(raw.recv_message(), (true, long.clone()));
    // RSV1 on a continuation frame is a protocol error.
    let mut bad = client_frame(0x41, &deflated[..third]);
    bad.extend(client_frame(0xC0, &deflated[third..]));
    raw.send_raw(&bad);
    assert_eq!(raw.expect_close(), 1002);

    // A client that takes its context over despite the answer refers back
    // into a message the server did not keep: invalid data, 1007.
    let mut raw = Raw::open(server.addr, "/api/ws/echo", Some(BROWSER_OFFER));
    raw.keep_context = true;
    raw.send_compressed(&text);
    assert_eq!(raw.recv_message(), (true, text.clone()));
    raw.send_compressed(&text);
    assert_eq!(raw.expect_close(), 1007);
}

#[test]
fn invalid_compressed_data_closes_with_1007() {
    let server = TestServer::start(config(true));
    let mut raw = Raw::open(server.addr, "/api/ws/echo", Some(BROWSER_OFFER));
    // Block type 3 is reserved in deflate.
    raw.send_raw(&client_frame(0xC1, &[0xff, 0xff, 0xff, 0xff]));
    assert_eq!(raw.expect_close(), 1007);
}

#[test]
fn offers_we_decline_and_a_disabled_server_proceed_uncompressed() {
    let server = TestServer::start(config(true));
    let payload = "x".repeat(500);
    for offer in [
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; client_max_window_bits=99",
        "x-webkit-deflate-frame",
    ] {
        let mut raw = Raw::open(server.addr, "/api/ws/echo", Some(offer));
        assert_eq!(raw.extensions, None, "{offer}");
        raw.send_plain(&payload);
        assert_eq!(raw.recv_message(), (false, payload.clone()), "{offer}");
        // Without the extension, RSV1 is a protocol error.
        let deflated = raw.deflate(payload.as_bytes());
        raw.send_raw(&client_frame(0xC1, &deflated));
        assert_eq!(raw.expect_close(), 1002, "{offer}");
    }
    // An unusable offer followed by a usable one: the second is taken.
    let raw = Raw::open(
        server.addr,
        "/api/ws/echo",
        Some("permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover; server_max_window_bits=15"),
    );
    assert_eq!(
        raw.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15")
    );

    // compression: false (the default) never negotiates.
    let plain_server = TestServer::start(config(false));
    let mut raw = Raw::open(plain_server.addr, "/api/ws/echo", Some(BROWSER_OFFER));
    assert_eq!(raw.extensions, None);
    raw.send_plain(&payload);
    assert_eq!(raw.recv_message(), (false, payload));
}

#[test]
fn a_small_server_window_gets_plain_frames_and_a_small_client_window_is_honoured() {
    let server = TestServer::start(config(true));
    // A smaller server window would mean a second compression of every
    // broadcast: that session is sent plain frames instead.
    let mut raw = Raw::open(
        server.addr,
        "/api/ws/echo",
        Some("permessage-deflate; server_max_window_bits=9; client_max_window_bits=9"),
    );
    assert_eq!(
        raw.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=9")
    );
    raw.compressor = Compress::new_with_window_bits(Compression::default(), false, 9);
    let text = "a small server window gets it plain. ".repeat(30);
    for _ in 0..2 {
        raw.send_compressed(&text);
        assert_eq!(raw.recv_message(), (false, text.clone()));
    }
    // The usual offer: compressed both ways.
    let mut raw = Raw::open(
        server.addr,
        "/api/ws/echo",
        Some("permessage-deflate; client_max_window_bits=9"),
    );
    assert_eq!(
        raw.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=9")
    );
    raw.compressor = Compress::new_with_window_bits(Compression::default(), false, 9);
    let text = "a small client window and a fresh context each time. ".repeat(30);
    for _ in 0..2 {
        raw.send_compressed(&text);
        assert_eq!(raw.recv_message(), (true, text.clone()));
    }
}
