//! Criterion micro-benches for wshub's CPU paths (issue 7, part 1): frame
//! encoding and decoding, broadcast fan-out to 10k sessions with mock
//! sockets, HTTP head parsing, JSON message routing, and the room join
//! check of each `rooms.join` mode (with its allocation count). The timer
//! wheel has its own file (`benches/wheel.rs`). Issue 24 adds the
//! client-address derivation (`client_ip`: header walks, PROXY header,
//! per-address count).
//!
//! Touches only the public `frame`, `http`, `message`, `router` and
//! `outbound` modules: no sockets, no threads. Every fixture is checked with
//! `assert!` before it is timed, and the fan-out benches check the byte
//! count of every broadcast, so no bench can quietly measure an empty path.
//!
//! `cargo bench --bench micro [-- FILTER]`; without `--bench` (as in
//! `cargo test --benches`) criterion runs each bench once as a test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;
use wshub::config::{Config, JoinMode};
use wshub::internals::deflate::{Codec, Encoded, Params};
use wshub::internals::frame::{self, Decoder, Inbound, Kind, Step, Wire};
use wshub::internals::http::{self, Method, Response};
use wshub::internals::jwt::Verifier;
use wshub::internals::message::{self, Outgoing};
use wshub::internals::outbound::{Flushed, Outbound};
use wshub::internals::rooms::Rooms;
use wshub::internals::router::{Route, Router};
use wshub::internals::Audience;
use wshub::SessionKey;

/// Counts allocations (not bytes), so a bench can show a path makes none.
struct CountingCalls;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; the counter is a relaxed atomic.
unsafe impl GlobalAlloc for CountingCalls {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingCalls = CountingCalls;

/// The server's default `max_message_size`.
const MAX_MESSAGE: usize = 1 << 20;
/// Per-session queue bounds used for every push.
const MAX_MESSAGES: usize = 256;
const MAX_BYTES: usize = 1 << 20;
/// Sessions in the fan-out hub; every tenth one is in [`ROOM`].
const SESSIONS: u32 = 10_000;
const ROOM: &str = "lobby";
/// Sessions `3 * n .. 3 * n + 3` belong to user `u{n}`; this one has three.
const USER: &str = "u1234";

/// A chat message of exactly `len` bytes, as clients receive it.
fn chat_json(len: usize) -> Vec<u8> {
    let head = br#"{"type":"chat","from":"user123","content":{"text":""#;
    let tail = br#""}}"#;
    let fill = len - head.len() - tail.len();
    let json = [&head[..], &vec![b'a'; fill], &tail[..]].concat();
    assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok());
    json
}

// ---- frames ----

/// A masked client frame, as a browser sends it; `first` is FIN + opcode.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            assert!(n <= 0xffff, "fixture frames stay under 64 KiB");
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// Decodes frames from the start of `buf` until a text message completes;
/// returns its length.
fn decode_text(decoder: &mut Decoder, buf: &mut [u8]) -> usize {
    let mut at = 0;
    while at < buf.len() {
        match decoder.decode(&mut buf[at..], MAX_MESSAGE) {
            Ok(Step::Frame {
                inbound: Some(Inbound::Text(text)),
                ..
            }) => return text.bytes().len(),
            Ok(Step::Frame {
                consumed,
                inbound: None,
            }) => at += consumed,
            other => panic!("unexpected decode step: {other:?}"),
        }
    }
    panic!("no complete text message in {} bytes", buf.len())
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    let json = chat_json(100);
    group.throughput(Throughput::Bytes(100));
    group.bench_function("encode_text_100B", |b| {
        b.iter(|| frame::encode(Kind::Text, black_box(&json)))
    });
    let big = vec![0x5a; 64 * 1024];
    assert_eq!(frame::encode(Kind::Binary, &big).len(), big.len() + 10);
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("encode_binary_64KiB", |b| {
        b.iter(|| frame::encode(Kind::Binary, black_box(&big)))
    });

    // Decoding unmasks in place, so each iteration restores the masked bytes
    // first (a memcpy of the input, included in the time).
    let single = client_frame(0x81, &json);
    let mut buf = single.clone();
    let mut decoder = Decoder::default();
    assert_eq!(decode_text(&mut decoder, &mut buf), 100);
    group.throughput(Throughput::Bytes(100));
    group.bench_function("decode_masked_text_100B", |b| {
        b.iter(|| {
            buf.copy_from_slice(&single);
            decode_text(&mut decoder, black_box(&mut buf))
        })
    });

    let fragmented = sixteen_fragments();
    let mut buf = fragmented.clone();
    assert_eq!(decode_text(&mut decoder, &mut buf), 16 * 256);
    assert!(!decoder.is_mid_message());
    group.throughput(Throughput::Bytes(16 * 256));
    group.bench_function("decode_16_fragments_4KiB", |b| {
        b.iter(|| {
            buf.copy_from_slice(&fragmented);
            decode_text(&mut decoder, black_box(&mut buf))
        })
    });
    group.finish();
}

/// One 4 KiB text message in 16 masked fragments of 256 bytes.
fn sixteen_fragments() -> Vec<u8> {
    let text: Vec<u8> = (0..16 * 256).map(|i| b'a' + (i % 26) as u8).collect();
    let mut wire = Vec::new();
    for (i, chunk) in text.chunks(256).enumerate() {
        let opcode = if i == 0 { 0x1 } else { 0x0 };
        let fin = if i == 15 { 0x80 } else { 0x00 };
        wire.extend(client_frame(fin | opcode, chunk));
    }
    wire
}

// ---- fan-out ----

/// A socket that takes every byte it is offered; counts bytes and calls.
#[derive(Debug, Default)]
struct Sink {
    bytes: usize,
    calls: usize,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.iter().map(|b| b.len()).sum();
        self.bytes += n;
        self.calls += 1;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The event loop's delivery state without sockets: the router, one queue
/// per session slot, and which queues to flush at the end of the pass.
struct Hub {
    router: Router,
    outbounds: Vec<Outbound>,
    marked: Vec<bool>,
    dirty: Vec<usize>,
}

fn key(index: u32) -> SessionKey {
    SessionKey {
        index,
        generation: 1,
    }
}

/// 10,000 sessions of users `u0..u3333` (three each), every tenth in [`ROOM`].
fn hub() -> Hub {
    let mut router = Router::default();
    for i in 0..SESSIONS {
        let user: Rc<str> = Rc::from(format!("u{}", i / 3));
        router.add_session(key(i), Some(&user));
        if i % 10 == 0 {
            router
                .join(key(i), None, ROOM)
                .expect("one room per session");
        }
    }
    Hub {
        router,
        outbounds: (0..SESSIONS).map(|_| Outbound::default()).collect(),
        marked: vec![false; SESSIONS as usize],
        dirty: Vec::with_capacity(SESSIONS as usize),
    }
}

/// One loop pass as the event loop runs it: `times` deliveries of the shared
/// frame to every member (each session marked dirty once), then one flush
/// of each dirty queue into `sink`. Returns the number of sessions flushed.
/// Not inlined, so a profiler can count exactly this.
#[inline(never)]
fn broadcast(
    hub: &mut Hub,
    audience: Audience<&str>,
    wire: &Wire,
    times: usize,
    sink: &mut impl Write,
) -> usize {
    let Hub {
        router,
        outbounds,
        marked,
        dirty,
    } = hub;
    for _ in 0..times {
        router.for_each_member(audience, |k| {
            let index = k.index as usize;
            let pushed = outbounds[index].push_data(wire.clone(), MAX_MESSAGES, MAX_BYTES);
            assert!(pushed.is_ok(), "session {index} refused: {pushed:?}");
            if !marked[index] {
                marked[index] = true;
                dirty.push(index);
            }
        });
    }
    let recipients = dirty.len();
    for index in dirty.drain(..) {
        marked[index] = false;
        match outbounds[index].flush_to(sink) {
            Ok((Flushed::Drained, _)) => {}
            other => panic!("session {index} did not drain: {other:?}"),
        }
    }
    recipients
}

/// Delivers `times` frames with a recording socket per session and checks
/// that exactly the `expected` members received exactly those bytes.
fn verify_delivery(
    hub: &mut Hub,
    audience: Audience<&str>,
    wire: &Wire,
    times: usize,
    expected: usize,
) {
    let mut members = Vec::new();
    for _ in 0..times {
        hub.router.for_each_member(audience, |k| {
            members.push(k.index as usize);
            let pushed = hub.outbounds[k.index as usize].push_data(wire.clone(), times, MAX_BYTES);
            assert!(pushed.is_ok());
        });
    }
    members.sort_unstable();
    members.dedup();
    assert_eq!(members.len(), expected, "audience size");
    let want = wire.repeat(times);
    for &index in &members {
        let mut socket = Vec::new();
        let flushed = hub.outbounds[index].flush_to(&mut socket);
        assert_eq!(flushed.ok(), Some((Flushed::Drained, want.len())));
        assert_eq!(socket, want, "session {index} got other bytes");
    }
    assert!(hub.outbounds.iter().all(Outbound::is_empty));
    assert_eq!(Rc::strong_count(wire), 1, "every queue let go of the frame");
}

fn fanout(c: &mut Criterion) {
    let mut hub = hub();
    let wire = frame::encode(Kind::Text, &chat_json(100));
    let everyone = Audience::Everyone { except: None };
    let room = Audience::Room {
        room: ROOM,
        except: None,
    };
    // (name, audience, broadcasts per pass, recipients)
    let cases = [
        ("everyone_10k", everyone, 1, 10_000),
        ("room_1k", room, 1, 1_000),
        ("user_3_sessions", Audience::User(USER), 1, 3),
        // Sustained load: 8 broadcasts land in one pass, one writev each.
        ("everyone_10k_x8_per_pass", everyone, 8, 10_000),
    ];
    let mut group = c.benchmark_group("fanout");
    for (name, audience, times, expected) in cases {
        verify_delivery(&mut hub, audience, &wire, times, expected);
        let mut sink = Sink::default();
        group.throughput(Throughput::Elements((times * expected) as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let (bytes, calls) = (sink.bytes, sink.calls);
                let sent = broadcast(&mut hub, black_box(audience), &wire, times, &mut sink);
                let want = (expected, times * expected * wire.len(), expected);
                assert_eq!((sent, sink.bytes - bytes, sink.calls - calls), want);
            })
        });
    }
    // The router's share alone: walking the 10k-session index.
    group.throughput(Throughput::Elements(u64::from(SESSIONS)));
    group.bench_function("iterate_everyone_10k", |b| {
        b.iter(|| {
            let mut count = 0u32;
            hub.router
                .for_each_member(everyone, |k| count += black_box(k).generation);
            assert_eq!(count, SESSIONS);
        })
    });
    group.finish();
}

// ---- permessage-deflate ----

/// A chat message of about `len` bytes with natural text, as compression sees it.
fn chat_text_json(len: usize) -> Vec<u8> {
    let text = "Running ten minutes late, the train stopped outside the station. \
Can you order for me? The usual, and a coffee with oat milk please. ";
    let mut content = String::new();
    while content.len() + 60 < len {
        content.push_str(text);
    }
    content.truncate(len.saturating_sub(60));
    let json =
        serde_json::json!({"type": "chat", "from": "user123", "room": "lobby", "content": content});
    json.to_string().into_bytes()
}

/// What a browser negotiates.
const BROWSER: Params = Params {
    client_window_bits: 15,
    plain_output: false,
};

/// One broadcast pass as the loop runs it with compression: the message is
/// framed per form on first use (compressed once), each member gets the
/// frame for its parameters, then every queue is flushed.
#[inline(never)]
fn broadcast_encoded(
    hub: &mut Hub,
    params: &[Option<Params>],
    codec: &mut Codec,
    json: &[u8],
    sink: &mut impl Write,
) -> usize {
    let mut message = Encoded::new(Kind::Text, json, 128);
    let Hub {
        router,
        outbounds,
        marked,
        dirty,
    } = hub;
    router.for_each_member(Audience::Everyone { except: None }, |k| {
        let index = k.index as usize;
        let wire = message.for_session(params[index].as_ref(), codec);
        let pushed = outbounds[index].push_data(wire, MAX_MESSAGES, MAX_BYTES);
        assert!(pushed.is_ok(), "session {index} refused: {pushed:?}");
        if !marked[index] {
            marked[index] = true;
            dirty.push(index);
        }
    });
    let recipients = dirty.len();
    for index in dirty.drain(..) {
        marked[index] = false;
        match outbounds[index].flush_to(sink) {
            Ok((Flushed::Drained, _)) => {}
            other => panic!("session {index} did not drain: {other:?}"),
        }
    }
    recipients
}

fn deflate(c: &mut Criterion) {
    let mut hub = hub();
    let mut codec = Codec::default();
    let json = chat_text_json(300);
    let plain_len = frame::encode(Kind::Text, &json).len();
    let deflated_len = codec
        .compress(&json)
        .map(|d| frame::encode_compressed(Kind::Text, d).len())
        .unwrap_or(0);
    assert!(
        deflated_len > 0 && deflated_len < plain_len,
        "{deflated_len} vs {plain_len}"
    );
    let n = SESSIONS as usize;
    // (name, parameters per session, bytes the sink must see per pass)
    let none: Vec<Option<Params>> = vec![None; n];
    let all: Vec<Option<Params>> = vec![Some(BROWSER); n];
    let half: Vec<Option<Params>> = (0..n).map(|i| (i % 2 == 0).then_some(BROWSER)).collect();
    let cases = [
        ("fanout_10k_plain_300B", &none, n * plain_len),
        ("fanout_10k_deflate_300B", &all, n * deflated_len),
        (
            "fanout_10k_half_deflate_300B",
            &half,
            n / 2 * (plain_len + deflated_len),
        ),
    ];
    let mut group = c.benchmark_group("deflate");
    for (name, params, bytes_per_pass) in cases {
        let mut sink = Sink::default();
        group.throughput(Throughput::Elements(u64::from(SESSIONS)));
        group.bench_function(name, |b| {
            b.iter(|| {
                let before = sink.bytes;
                let sent =
                    broadcast_encoded(&mut hub, params, &mut codec, black_box(&json), &mut sink);
                assert_eq!((sent, sink.bytes - before), (n, bytes_per_pass));
            })
        });
    }
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("compress_300B", |b| {
        b.iter(|| black_box(codec.compress(black_box(&json)).map(<[u8]>::len)))
    });
    let deflated = codec
        .compress(&json)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    group.bench_function("inflate_300B", |b| {
        b.iter(|| {
            let out = codec.inflate(black_box(&deflated), MAX_MESSAGE);
            assert_eq!(out.as_deref().ok(), Some(&json[..]));
        })
    });
    group.finish();
}

// ---- HTTP ----

/// What Chrome sends to open a WebSocket: 13 headers, about 500 bytes.
const BROWSER_UPGRADE: &[u8] = b"GET /api/ws/connect?user_id=user123 HTTP/1.1\r\n\
Host: chat.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://chat.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: sid=8f14e45fceea167a5a36dedd4bea2543\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// A backend's push through the REST API (head only; the body follows).
const REST_POST: &[u8] = b"POST /api/ws/send HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
Authorization: Bearer 3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\
Content-Type: application/json\r\n\
Content-Length: 62\r\n\r\n";

/// A 16 KiB head: a request line, filler headers, the blank line at the end.
fn big_head() -> Vec<u8> {
    let mut head = b"GET /api/ws/connect HTTP/1.1\r\n".to_vec();
    let mut n = 0;
    while head.len() < 16 * 1024 - 64 {
        head.extend_from_slice(format!("X-Filler-{n:04}: {}\r\n", "v".repeat(40)).as_bytes());
        n += 1;
    }
    let pad = 16 * 1024 - head.len() - "X-Pad: \r\n\r\n".len();
    head.extend_from_slice(format!("X-Pad: {}\r\n\r\n", "p".repeat(pad)).as_bytes());
    assert_eq!(head.len(), 16 * 1024);
    head
}

/// Feeds `head` one byte at a time, resuming the scan where it stopped, as
/// the session does; returns where the head ends.
fn scan_bytewise(head: &[u8]) -> usize {
    let mut scanned = 0;
    for len in 1..=head.len() {
        if let Some(end) = http::find_head_end(&head[..len], scanned) {
            return end;
        }
        scanned = len;
    }
    panic!("no blank line in {} bytes", head.len())
}

fn http_heads(c: &mut Criterion) {
    let mut group = c.benchmark_group("http");
    let upgrade = http::parse_head(BROWSER_UPGRADE, 16384, 0);
    let upgrade = upgrade.ok().flatten().expect("the upgrade fixture parses");
    assert!(upgrade.upgrade_websocket && upgrade.connection_upgrade);
    assert_eq!(
        upgrade.websocket_key.as_deref(),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert!((450..=600).contains(&BROWSER_UPGRADE.len()));
    group.throughput(Throughput::Bytes(BROWSER_UPGRADE.len() as u64));
    group.bench_function("parse_browser_upgrade", |b| {
        b.iter(|| http::parse_head(black_box(BROWSER_UPGRADE), 16384, 0))
    });

    let post = http::parse_head(REST_POST, 16384, MAX_MESSAGE);
    let post = post.ok().flatten().expect("the POST fixture parses");
    assert_eq!((post.method, post.content_length), (Method::Post, 62));
    assert!(post.authorization.is_some());
    group.throughput(Throughput::Bytes(REST_POST.len() as u64));
    group.bench_function("parse_rest_post", |b| {
        b.iter(|| http::parse_head(black_box(REST_POST), 16384, MAX_MESSAGE))
    });

    let head = big_head();
    assert_eq!(scan_bytewise(&head), head.len());
    group.throughput(Throughput::Bytes(head.len() as u64));
    group.bench_function("find_head_end_16KiB_bytewise", |b| {
        b.iter(|| scan_bytewise(black_box(&head)))
    });
    group.bench_function("find_head_end_16KiB_at_once", |b| {
        b.iter(|| http::find_head_end(black_box(&head), 0))
    });

    let response = Response::json(200, &serde_json::json!({ "sent": 3 }));
    assert!(response.to_bytes(true).ends_with(br#"{"sent":3}"#));
    group.throughput(Throughput::Elements(1));
    group.bench_function("response_to_bytes", |b| {
        b.iter(|| black_box(&response).to_bytes(true))
    });
    group.finish();
}

// ---- JSON routing ----

const CONTENT: &str = r#"{"text":"hello there, are we still on for lunch?","ts":1718000000}"#;

/// Parses `json` and routes it from session 30 (user `u10`, in [`ROOM`]).
fn parse_and_route(router: &mut Router, json: &[u8]) -> usize {
    let incoming = match message::parse(json) {
        Ok(incoming) => incoming,
        Err(e) => panic!("fixture refused: {e}"),
    };
    match router.route(key(30), Some("u10"), &incoming) {
        Route::Reply(out) | Route::Deliver(_, out) => out.len(),
        Route::Done(_) => 0,
    }
}

/// Checks what one fixture routes to, before it is timed.
fn check_route(router: &mut Router, json: &str, audience: Option<Audience<&str>>, out: &str) {
    let incoming = message::parse(json.as_bytes()).expect("fixture parses");
    let (got_audience, got) = match router.route(key(30), Some("u10"), &incoming) {
        Route::Deliver(audience, out) => (Some(audience), out),
        Route::Reply(out) => (None, out),
        Route::Done(_) => panic!("{json} changed membership"),
    };
    assert_eq!(got_audience, audience, "{json}");
    assert_eq!(String::from_utf8_lossy(&got), out);
}

/// One routing fixture: name, message, the audience it must reach (`None`
/// for a reply to the sender) and the exact JSON that goes out.
type RouteCase = (&'static str, String, Option<Audience<&'static str>>, String);

/// A direct message, a room message, a broadcast and a ping, sent by session
/// 30 (user `u10`, a member of [`ROOM`]).
fn route_cases() -> [RouteCase; 4] {
    let sender = Some(key(30));
    let chat = |field: &str| format!(r#"{{"type":"chat",{field}"content":{CONTENT}}}"#);
    [
        (
            "to_user",
            chat(&format!(r#""to":"{USER}","#)),
            Some(Audience::User(USER)),
            chat(&format!(r#""to":"{USER}","from":"u10","#)),
        ),
        (
            "room",
            chat(&format!(r#""room":"{ROOM}","#)),
            Some(Audience::Room {
                room: ROOM,
                except: sender,
            }),
            chat(&format!(r#""from":"u10","room":"{ROOM}","#)),
        ),
        (
            "broadcast",
            chat(""),
            Some(Audience::Everyone { except: sender }),
            chat(r#""from":"u10","#),
        ),
        (
            "ping",
            r#"{"type":"ping","content":{"n":7}}"#.to_owned(),
            None,
            r#"{"type":"pong","content":{"n":7}}"#.to_owned(),
        ),
    ]
}

fn json_routing(c: &mut Criterion) {
    let mut router = hub().router;
    let cases = route_cases();
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Elements(1));
    for (name, json, audience, out) in &cases {
        check_route(&mut router, json, *audience, out);
        group.bench_function(format!("parse_route_{name}"), |b| {
            b.iter(|| parse_and_route(&mut router, black_box(json.as_bytes())))
        });
    }
    let to = cases[0].1.as_bytes();
    group.bench_function("parse_only_to_user", |b| {
        b.iter(|| message::parse(black_box(to)).map(|m| m.kind.len()))
    });
    let content = RawValue::from_string(CONTENT.to_owned()).expect("valid JSON");
    let outgoing = Outgoing {
        kind: "chat",
        to: Some(USER),
        from: Some("u10"),
        room: None,
        content: Some(&content),
    };
    assert_eq!(String::from_utf8_lossy(&outgoing.to_json()), cases[0].3);
    group.bench_function("outgoing_to_json", |b| {
        b.iter(|| black_box(&outgoing).to_json())
    });
    group.finish();
}

// ---- room joins ----

fn rooms_for(mode: JoinMode) -> Rooms {
    let mut config = Config::default();
    config.rooms.join = mode;
    config.jwt.secret = "bench-key".into();
    let verifier = Verifier::from_config(&config.jwt).expect("an HS256 key");
    Rooms::new(&config, verifier)
}

/// Allocations made by `runs` calls of `check`.
fn allocations(runs: usize, mut check: impl FnMut() -> bool) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..runs {
        black_box(check());
    }
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// The check a client's `join` goes through: nothing in `open` mode, a
/// binary search and prefix compares over the session's grants in
/// `claims`, and a JWT verification only when a join token is sent.
fn room_joins(c: &mut Criterion) {
    const NOW: u64 = 1_700_000_000;
    let open = rooms_for(JoinMode::Open);
    let claims = rooms_for(JoinMode::Claims);
    let token_mode = rooms_for(JoinMode::Token);
    // A realistic claim: 20 exact rooms and 4 prefixes.
    let mut entries: Vec<String> = (0..20).map(|i| format!("team:{i:03}")).collect();
    entries.extend(["chat:*", "order:77*", "support:*", "news:*"].map(str::to_owned));
    let connect = wshub::internals::jwt::sign_hs256(
        &serde_json::json!({"sub": "amy", "rooms": entries}),
        b"bench-key",
    );
    let verifier = Verifier::from_config(
        &Config {
            jwt: wshub::config::JwtConfig {
                secret: "bench-key".into(),
                ..Default::default()
            },
            ..Config::default()
        }
        .jwt,
    )
    .expect("an HS256 key");
    let connect_claims = verifier
        .verify(&connect, NOW)
        .expect("a valid connect token");
    let grants = claims
        .grants(&connect_claims)
        .expect("the claim grants rooms");
    let join_token = wshub::internals::jwt::sign_hs256(
        &serde_json::json!({"sub": "amy", "room": "order:1", "exp": NOW + 60}),
        b"bench-key",
    );
    type Check<'a> = Box<dyn Fn() -> bool + 'a>;
    let cases: [(&str, Check<'_>, bool); 5] = [
        (
            "open",
            Box::new(|| open.admits(None, Some("amy"), black_box("team:019"), None, NOW)),
            true,
        ),
        (
            "claims_exact",
            Box::new(|| {
                claims.admits(Some(&grants), Some("amy"), black_box("team:019"), None, NOW)
            }),
            true,
        ),
        (
            "claims_prefix",
            Box::new(|| {
                claims.admits(
                    Some(&grants),
                    Some("amy"),
                    black_box("news:today"),
                    None,
                    NOW,
                )
            }),
            true,
        ),
        (
            "claims_refused",
            Box::new(|| {
                claims.admits(
                    Some(&grants),
                    Some("amy"),
                    black_box("private:1"),
                    None,
                    NOW,
                )
            }),
            false,
        ),
        (
            "token_join_token",
            Box::new(|| {
                token_mode.admits(
                    None,
                    Some("amy"),
                    black_box("order:1"),
                    Some(&join_token),
                    NOW,
                )
            }),
            true,
        ),
    ];
    let mut group = c.benchmark_group("rooms");
    group.throughput(Throughput::Elements(1));
    for (name, check, expected) in &cases {
        assert_eq!(check(), *expected, "{name}");
        let made = allocations(10_000, check);
        println!("rooms/join_check_{name}: {made} allocations in 10000 checks");
        if !name.starts_with("token") {
            assert_eq!(made, 0, "{name}: a join check must not allocate");
        }
        group.bench_function(format!("join_check_{name}"), |b| b.iter(check));
    }
    group.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

// ---- client addresses ----

/// What deriving a connection's client costs (issue 24): the check every
/// connection pays (an untrusted peer: its own address), the header walks
/// a request from a trusted proxy pays, the PROXY header a balancer's
/// connection pays, and one admit/release of `max_connections_per_ip`.
fn client_addresses(c: &mut Criterion) {
    use std::net::IpAddr;
    use wshub::internals::client_ip::proxy::{self, Parsed};
    use wshub::internals::client_ip::{ClientIpHeader, Clients, PerIp, Trusted};

    let mut group = c.benchmark_group("client_ip");
    let trusted = Trusted::parse(&["10.0.0.0/8", "172.16.0.0/12", "fd00::/8"]).expect("blocks");
    let clients = |header| Clients {
        trusted: trusted.clone(),
        header,
        proxy_protocol: false,
        per_ip: PerIp::new(0),
    };
    let head = b"GET /api/ws/connect?user_id=u1 HTTP/1.1\r\nHost: x\r\n\
X-Forwarded-For: 198.51.100.9, 203.0.113.7, 10.0.0.2, 10.0.0.3\r\n\
Forwarded: for=198.51.100.9, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.2, for=10.0.0.3\r\n\r\n";
    let request = http::parse_head(head, 16384, 0)
        .expect("valid")
        .expect("whole");
    let proxy: IpAddr = "10.0.0.4".parse().expect("ip");
    let stranger: IpAddr = "192.0.2.1".parse().expect("ip");

    let xff = clients(ClientIpHeader::XForwardedFor);
    assert_eq!(xff.client_of(stranger, &request), stranger);
    group.bench_function("untrusted_peer", |b| {
        b.iter(|| xff.client_of(black_box(stranger), black_box(&request)))
    });
    assert_eq!(xff.client_of(proxy, &request).to_string(), "203.0.113.7");
    group.bench_function("x_forwarded_for_4_hops", |b| {
        b.iter(|| xff.client_of(black_box(proxy), black_box(&request)))
    });
    let fwd = clients(ClientIpHeader::Forwarded);
    assert_eq!(fwd.client_of(proxy, &request).to_string(), "2001:db8::7");
    group.bench_function("forwarded_4_hops", |b| {
        b.iter(|| fwd.client_of(black_box(proxy), black_box(&request)))
    });

    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 4660 443\r\nGET / HTTP/1.1\r\n";
    assert!(matches!(
        proxy::parse(v1),
        Parsed::Header {
            len: 42,
            source: Some(_)
        }
    ));
    group.bench_function("proxy_v1", |b| b.iter(|| proxy::parse(black_box(v1))));
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x12".to_vec();
    v2.extend([203, 0, 113, 7, 10, 0, 0, 1, 0x12, 0x34, 0x01, 0xbb]);
    v2.extend([0xEA, 0x00, 0x03, b'v', b'p', b'c']);
    assert!(matches!(
        proxy::parse(&v2),
        Parsed::Header {
            len: 34,
            source: Some(_)
        }
    ));
    group.bench_function("proxy_v2", |b| b.iter(|| proxy::parse(black_box(&v2))));

    let mut limit = PerIp::new(16);
    for i in 0..10_000u32 {
        assert!(limit.admit(IpAddr::from(i.to_be_bytes())));
    }
    let client: IpAddr = "203.0.113.7".parse().expect("ip");
    group.bench_function("per_ip_admit_release_10k_addresses", |b| {
        b.iter(|| {
            let admitted = limit.admit(black_box(client));
            limit.release(client);
            admitted
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick();
    targets = frames, fanout, deflate, http_heads, json_routing, client_addresses, room_joins
}
criterion_main!(benches);
