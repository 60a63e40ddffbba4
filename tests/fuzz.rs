//! Property-based fuzzing on stable (proptest) of the three input paths a
//! peer controls (issue 4): HTTP request heads, WebSocket frames, and JSON
//! messages — each through the pure function and, for the first two, through
//! a live in-process server over loopback. Issue 10 adds pipelined requests
//! from a client that does not read its responses (live), and sequences of
//! room joins and leaves checked against a model (pure). Issue 24 adds the
//! forwarding-header walks (against a literal right-to-left model) and the
//! PROXY header parser (every cut, any tail, mutations).
//!
//! Each target runs at most `WSHUB_FUZZ_CASES` cases (default 256) and stops
//! early after `WSHUB_FUZZ_SECS` seconds (default 30). `WSHUB_FUZZ_SEED`
//! replays a run; the seed in use is printed on stderr. CI's long run:
//! `WSHUB_FUZZ_CASES=100000 WSHUB_FUZZ_SECS=60 cargo nextest run --test fuzz`.
//! Touches only the servers it starts; every read and wait is bounded.

mod common;

use std::fmt::Debug;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseResult, TestRunner};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use wshub::internals::frame::{Decoder, Inbound, Step};
use wshub::internals::http::{find_head_end, parse_head};
use wshub::internals::message::{self, Incoming, MessageError};
use wshub::internals::router::{Route, Router};
use wshub::internals::Audience;
use wshub::{Config, SessionKey};

use common::{http, test_config, upgrade_request, TestServer};

/// Counts heap bytes, so the pipelined target can bound what unread
/// responses cost.
#[global_allocator]
static ALLOCATOR: wshub::alloc::Counting = wshub::alloc::Counting;

// ------------------------------------------------------------ harness ----

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

/// Runs `test` on up to `WSHUB_FUZZ_CASES` values of `strategy`, stopping
/// after `WSHUB_FUZZ_SECS`. A failure (a panic included) is shrunk when
/// `shrink` is set and reported with the seed that reproduces it.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    shrink: bool,
    test: impl Fn(S::Value) -> TestCaseResult,
) where
    S::Value: Debug,
{
    fuzz_cases(name, 256, strategy, shrink, test);
}

/// [`fuzz`] with its own default number of cases, for targets whose cases
/// take long (`WSHUB_FUZZ_CASES` still wins).
fn fuzz_cases<S: Strategy>(
    name: &str,
    default_cases: u64,
    strategy: S,
    shrink: bool,
    test: impl Fn(S::Value) -> TestCaseResult,
) where
    S::Value: Debug,
{
    let cases = env_number("WSHUB_FUZZ_CASES", default_cases);
    let budget = Duration::from_secs(env_number("WSHUB_FUZZ_SECS", 30));
    let seed = std::env::var("WSHUB_FUZZ_SEED").map_or_else(
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        },
        |s| s.trim().parse().expect("WSHUB_FUZZ_SEED must be a u64"),
    );
    eprintln!("{name}: WSHUB_FUZZ_SEED={seed}");
    let config = ProptestConfig {
        cases: u32::try_from(cases).unwrap_or(u32::MAX),
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: if shrink { 4096 } else { 0 },
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    let deadline = start + budget;
    let mut ran = 0u64;
    while ran < cases && Instant::now() < deadline {
        let tree = strategy
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("{name}: strategy failed: {e}"));
        if let Err(failure) = runner.run_one(tree, &test) {
            panic!("{name}: {failure}\nreplay with WSHUB_FUZZ_SEED={seed}");
        }
        ran += 1;
    }
    eprintln!("{name}: {ran} cases in {:?}", start.elapsed());
}

/// A byte-level edit; positions are taken modulo the input length.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation(dictionary: &'static [&'static [u8]]) -> impl Strategy<Value = Mutation> {
    let token = prop_oneof![
        proptest::sample::select(dictionary).prop_map(<[u8]>::to_vec),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        (any::<usize>(), token).prop_map(|(at, t)| Mutation::Insert(at, t)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..32).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = bytes.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match m {
            Mutation::Flip(i, bit) if len > 0 => bytes[at(*i)] ^= 1 << bit,
            Mutation::Set(i, b) if len > 0 => bytes[at(*i)] = *b,
            Mutation::Insert(i, token) => {
                let i = if len == 0 { 0 } else { i % (len + 1) };
                bytes.splice(i..i, token.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let start = at(*i);
                bytes.drain(start..(start + n).min(len));
            }
            Mutation::Truncate(i) => bytes.truncate(if len == 0 { 0 } else { i % (len + 1) }),
            Mutation::Duplicate(i, n) if len > 0 => {
                let start = at(*i);
                let copy = bytes[start..(start + n).min(len)].to_vec();
                bytes.splice(start..start, copy);
            }
            _ => {}
        }
    }
}

/// Sorted cut points inside `len`, from arbitrary raw positions.
fn cuts(raw: &[usize], len: usize) -> Vec<usize> {
    let mut out: Vec<usize> = raw.iter().map(|r| r % (len + 1)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn chunks<'a>(bytes: &'a [u8], raw_cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts(raw_cuts, bytes.len()).into_iter().chain([bytes.len()]) {
        if cut > start {
            out.push(&bytes[start..cut]);
            start = cut;
        }
    }
    out
}

// --------------------------------------------------------------- HTTP ----

const HTTP_DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b"\0",
    b"\xff\xfe",
    b"%",
    b"%zz",
    b"?token=",
    b"&user_id=",
    b"Content-Length: 18446744073709551616\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: keep-alive, Upgrade\r\n",
    b"Upgrade: websocket\r\n",
    b"Sec-WebSocket-Version: 13\r\n",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    b"Origin: null\r\n",
    b"Authorization: Bearer a.b.c\r\n",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"GET ",
    b"POST ",
];

/// A well-formed request head (and its body), as `httparse` accepts it.
fn valid_request() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let method = proptest::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH",
    ]);
    let path = prop_oneof![
        proptest::sample::select(vec![
            "/health",
            "/metrics",
            "/api/ws/status",
            "/api/ws/broadcast",
            "/api/ws/send",
            "/api/ws/connect",
            "/api/ws/connect?user_id=u1",
            "/api/ws/connect?token=a.b.c&user_id=%41",
            "/api/ws/echo",
            "/",
            "/demo.js",
            "/nope",
        ])
        .prop_map(str::to_owned),
        "/[a-zA-Z0-9/?=&%._~-]{0,40}",
    ];
    let version = proptest::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]);
    let name = prop_oneof![
        proptest::sample::select(vec![
            "Host",
            "Connection",
            "Upgrade",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Origin",
            "Authorization",
            "Accept",
            "X-Custom",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z][A-Za-z0-9-]{0,20}".prop_filter("no framing headers", |n| {
            !n.eq_ignore_ascii_case("content-length")
                && !n.eq_ignore_ascii_case("transfer-encoding")
        }),
    ];
    let header = (name, "[ -~]{0,40}");
    let body = proptest::collection::vec(any::<u8>(), 0..64);
    (
        method,
        path,
        version,
        proptest::collection::vec(header, 0..10),
        body,
        any::<bool>(),
    )
        .prop_map(|(method, path, version, headers, body, declare)| {
            let mut head = format!("{method} {path} {version}\r\n");
            for (name, value) in headers {
                head.push_str(&format!("{name}: {}\r\n", value.trim()));
            }
            let body = if declare || !body.is_empty() {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
                body
            } else {
                Vec::new()
            };
            head.push_str("\r\n");
            (head.into_bytes(), body)
        })
}

/// Bytes that look like HTTP to a varying degree.
fn http_input() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        valid_request(),
        proptest::collection::vec(mutation(HTTP_DICTIONARY), 1..6),
    )
        .prop_map(|((mut head, body), mutations)| {
            head.extend_from_slice(&body);
            mutate(&mut head, &mutations);
            head
        });
    prop_oneof![
        3 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..1024),
        1 => valid_request().prop_map(|(mut head, body)| {
            head.extend_from_slice(&body);
            head
        }),
    ]
}

/// Invariants of one `parse_head` answer on `buf`.
fn check_head(buf: &[u8], max_head: usize, max_body: usize) -> TestCaseResult {
    match parse_head(buf, max_head, max_body) {
        Ok(None) => {
            prop_assert!(buf.len() <= max_head, "Partial over the limit");
            prop_assert!(
                find_head_end(buf, 0).is_none(),
                "Partial with a complete head"
            );
        }
        Ok(Some(request)) => {
            prop_assert!(request.head_len <= buf.len() && request.head_len <= max_head);
            // The head ends where the loop's scanner says it does, or one
            // request is framed two ways (see the bare-LF regression).
            prop_assert_eq!(
                Some(request.head_len),
                find_head_end(buf, 0),
                "head ends early"
            );
            prop_assert!(request.content_length <= max_body);
            prop_assert!(request.target.starts_with(request.path.as_str()));
        }
        Err(e) => {
            prop_assert!(
                [400, 411, 413, 431].contains(&e.status()),
                "status {}",
                e.status()
            );
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

#[test]
fn http_parse_head_never_panics_and_is_prefix_stable() {
    let strategy = (
        http_input(),
        proptest::collection::vec(any::<usize>(), 1..8),
        proptest::sample::select(vec![16usize, 64, 256, 16384]),
        proptest::sample::select(vec![0usize, 10, 1 << 20]),
    );
    fuzz(
        "http_parse_head",
        strategy,
        true,
        |(buf, raw_cuts, max_head, max_body)| {
            let mut settled = None;
            for cut in cuts(&raw_cuts, buf.len()).into_iter().chain([buf.len()]) {
                let prefix = &buf[..cut];
                check_head(prefix, max_head, max_body)?;
                let result = parse_head(prefix, max_head, max_body);
                // Once a prefix gives a verdict, more bytes cannot change it.
                if let Some(first) = &settled {
                    prop_assert_eq!(&result, first, "verdict changed at {}", cut);
                } else if !matches!(result, Ok(None)) {
                    settled = Some(result);
                }
                // Scanning on from where an earlier, headless prefix stopped finds
                // the same blank line as scanning from the start.
                for from in cuts(&raw_cuts, cut) {
                    if find_head_end(&prefix[..from], 0).is_none() {
                        prop_assert_eq!(find_head_end(prefix, from), find_head_end(prefix, 0));
                    }
                }
            }
            Ok(())
        },
    );
}

#[test]
fn http_valid_heads_parse_and_their_prefixes_are_partial() {
    let strategy = (
        valid_request(),
        proptest::collection::vec(any::<usize>(), 1..16),
    );
    fuzz(
        "http_valid_heads",
        strategy,
        true,
        |((head, body), raw_cuts)| {
            let mut full = head.clone();
            full.extend_from_slice(&body);
            let parsed = parse_head(&head, 16384, 1 << 20);
            let Ok(Some(request)) = &parsed else {
                return Err(TestCaseError::fail(format!(
                    "valid head refused: {parsed:?}"
                )));
            };
            prop_assert_eq!(request.head_len, head.len());
            prop_assert_eq!(request.content_length, body.len());
            let line_end = head.iter().position(|&b| b == b' ').unwrap_or(0);
            let method = std::str::from_utf8(&head[..line_end]).unwrap_or("");
            let method_matches = match &request.method {
                wshub::internals::http::Method::Get => method == "GET",
                wshub::internals::http::Method::Post => method == "POST",
                wshub::internals::http::Method::Other(m) => m == method,
            };
            prop_assert!(method_matches, "{:?} for {}", request.method, method);
            // The body does not change what the head says.
            prop_assert_eq!(&parse_head(&full, 16384, 1 << 20), &parsed);
            let mut points = cuts(&raw_cuts, head.len() - 1);
            points.extend([
                0,
                head.len().saturating_sub(3),
                head.len().saturating_sub(2),
                head.len() - 1,
            ]);
            for cut in points {
                let prefix = &head[..cut];
                prop_assert_eq!(
                    parse_head(prefix, 16384, 1 << 20),
                    Ok(None),
                    "prefix of {} bytes",
                    cut
                );
            }
            Ok(())
        },
    );
}

/// A live server whose own timeouts (10 s to read a request, 60 s of
/// silence on a WebSocket) are longer than [`LIVE_WAIT`]: a client that
/// half-closes must be let go because of its FIN, not a timer.
fn eof_config() -> Config {
    let mut config = test_config();
    config.websocket.max_message_size = 4096;
    config.websocket.max_header_bytes = 1024;
    config
}

/// A live server with short timeouts, for clients that never half-close.
fn timeout_config() -> Config {
    let mut config = eof_config();
    config.websocket.handshake_timeout = Duration::from_millis(200);
    config.websocket.ping_period = Duration::from_millis(500);
    config.websocket.pong_wait = Duration::from_secs(1);
    config.websocket.write_wait = Duration::from_secs(1);
    config
}

/// How long a live case may take before the server counts as stalled: well
/// over every timeout in [`timeout_config`], well under those of [`eof_config`].
const LIVE_WAIT: Duration = Duration::from_secs(5);

/// Writes `pieces` (tolerating a server that closes early), optionally
/// half-closes, and reads until the server closes. `Err` when it neither
/// closed nor reset within [`LIVE_WAIT`].
fn live_exchange(
    stream: &mut TcpStream,
    pieces: &[&[u8]],
    half_close: bool,
) -> Result<(Vec<u8>, bool), String> {
    stream
        .set_read_timeout(Some(LIVE_WAIT))
        .map_err(|e| e.to_string())?;
    // Pieces go out as written: Nagle plus delayed ACK would add ~40 ms each.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(LIVE_WAIT))
        .map_err(|e| e.to_string())?;
    for piece in pieces {
        if stream.write_all(piece).is_err() {
            break;
        }
    }
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok((out, false)),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                let after = if half_close {
                    " of the client's FIN"
                } else {
                    ""
                };
                return Err(format!(
                    "server did not close within {LIVE_WAIT:?}{after}; got {:?}",
                    String::from_utf8_lossy(&out)
                ));
            }
            Err(_) => return Ok((out, true)),
        }
    }
}

#[track_caller]
fn assert_healthy(addr: SocketAddr) -> TestCaseResult {
    let alive = std::panic::catch_unwind(|| http(addr, "GET", "/health", &[], ""));
    match alive {
        Ok(answer) => {
            prop_assert_eq!(answer, (200, r#"{"status":"ok"}"#.to_owned()));
            Ok(())
        }
        Err(_) => Err(TestCaseError::fail("server no longer serves /health")),
    }
}

#[test]
fn http_live_server_answers_or_closes_and_survives() {
    let eof_server = TestServer::start(eof_config());
    let timeout_server = TestServer::start(timeout_config());
    let strategy = (
        http_input(),
        proptest::collection::vec(any::<usize>(), 0..3),
        proptest::bool::weighted(0.94),
    );
    // No shrinking: after a server crash every candidate fails alike.
    fuzz(
        "http_live",
        strategy,
        false,
        |(bytes, raw_cuts, half_close)| {
            let addr = if half_close {
                eof_server.addr
            } else {
                timeout_server.addr
            };
            let mut stream = TcpStream::connect(addr)
                .map_err(|e| TestCaseError::fail(format!("connect: {e}")))?;
            let pieces = chunks(&bytes, &raw_cuts);
            let (answer, _) =
                live_exchange(&mut stream, &pieces, half_close).map_err(TestCaseError::fail)?;
            if !answer.is_empty() {
                prop_assert!(
                    answer.starts_with(b"HTTP/1.1 "),
                    "not an HTTP answer: {:?}",
                    String::from_utf8_lossy(&answer[..answer.len().min(80)])
                );
            }
            assert_healthy(addr)
        },
    );
}

// --------------------------------------------------------- WebSocket ----

/// One client-side unit of a valid frame sequence.
#[derive(Debug, Clone)]
enum Unit {
    /// A data message split at the given byte positions (fragments may cut
    /// UTF-8 sequences), with a Ping injected after the fragments marked.
    Data {
        text: bool,
        payload: Vec<u8>,
        cuts: Vec<usize>,
        pings: Vec<bool>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

/// What the decoder yields, owned, for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decoded {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<(u16, String)>),
}

const INJECTED_PING: &[u8] = b"inj";

fn owned(inbound: Inbound<'_>) -> Decoded {
    match inbound {
        Inbound::Text(p) => Decoded::Text(p.bytes().to_vec()),
        Inbound::Binary(p) => Decoded::Binary(p.bytes().to_vec()),
        Inbound::Ping(p) => Decoded::Ping(p.to_vec()),
        Inbound::Pong => Decoded::Pong,
        Inbound::Close(c) => Decoded::Close(c),
        // The fuzzed decoders never negotiate compression.
        Inbound::Compressed { .. } => unreachable!("compression was not negotiated"),
    }
}

/// One masked client frame.
fn frame(fin: bool, opcode: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    common::masked_frame(if fin { 0x80 } else { 0 } | opcode, mask, payload)
}

fn unit() -> impl Strategy<Value = Unit> {
    let text = (
        any::<String>().prop_map(String::into_bytes),
        proptest::collection::vec(any::<usize>(), 0..4),
        proptest::collection::vec(any::<bool>(), 0..4),
    )
        .prop_map(|(payload, cuts, pings)| Unit::Data {
            text: true,
            payload,
            cuts,
            pings,
        });
    let binary = (
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<usize>(), 0..4),
        proptest::collection::vec(any::<bool>(), 0..4),
    )
        .prop_map(|(payload, cuts, pings)| Unit::Data {
            text: false,
            payload,
            cuts,
            pings,
        });
    prop_oneof![
        3 => text,
        2 => binary,
        1 => proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Unit::Ping),
        1 => proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Unit::Pong),
    ]
}

fn close_unit() -> impl Strategy<Value = Option<(u16, String)>> {
    let code = prop_oneof![1000u16..=1003, 1007u16..=1011, 3000u16..=4999];
    proptest::option::of((code, "[ -~é]{0,30}"))
}

/// Encodes `units` (and a Close when `close` is `Some`) and returns the bytes
/// with what a correct decoder yields for them.
fn encode_units(
    units: &[Unit],
    close: Option<&Option<(u16, String)>>,
    mask: [u8; 4],
) -> (Vec<u8>, Vec<Decoded>) {
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for unit in units {
        match unit {
            Unit::Ping(p) => {
                bytes.extend(frame(true, 0x9, mask, p));
                expected.push(Decoded::Ping(p.clone()));
            }
            Unit::Pong(p) => {
                bytes.extend(frame(true, 0xA, mask, p));
                expected.push(Decoded::Pong);
            }
            Unit::Data {
                text,
                payload,
                cuts: raw,
                pings,
            } => {
                let points = cuts(raw, payload.len());
                let mut start = 0;
                let pieces: Vec<&[u8]> = points
                    .iter()
                    .chain([&payload.len()])
                    .map(|&end| {
                        let piece = &payload[start..end.max(start)];
                        start = end.max(start);
                        piece
                    })
                    .collect();
                let last = pieces.len() - 1;
                for (i, piece) in pieces.iter().enumerate() {
                    let opcode = match (i, text) {
                        (0, true) => 0x1,
                        (0, false) => 0x2,
                        _ => 0x0,
                    };
                    bytes.extend(frame(i == last, opcode, mask, piece));
                    if i < last && pings.get(i).copied().unwrap_or(false) {
                        bytes.extend(frame(true, 0x9, mask, INJECTED_PING));
                        expected.push(Decoded::Ping(INJECTED_PING.to_vec()));
                    }
                }
                expected.push(if *text {
                    Decoded::Text(payload.clone())
                } else {
                    Decoded::Binary(payload.clone())
                });
            }
        }
    }
    if let Some(close) = close {
        let mut payload = Vec::new();
        if let Some((code, reason)) = close {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
        }
        bytes.extend(frame(true, 0x8, mask, &payload));
        expected.push(Decoded::Close(close.clone()));
    }
    (bytes, expected)
}

/// How a decode run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Every byte was consumed.
    Clean,
    /// Bytes of an unfinished frame remain.
    Incomplete,
    /// A protocol error with this close code.
    Error(u16),
}

/// Feeds `pieces` to a fresh decoder as a session would (appending each to
/// a pending buffer and decoding what is complete); checks the per-step
/// invariants and returns what was decoded and how it ended.
fn decode_pieces(
    pieces: &[&[u8]],
    max_message: usize,
) -> Result<(Vec<Decoded>, End), TestCaseError> {
    let mut decoder = Decoder::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        loop {
            let len = pending.len();
            match decoder.decode(&mut pending, max_message) {
                Ok(Step::Incomplete { needed }) => {
                    if let Some(needed) = needed {
                        prop_assert!(needed > len, "needed {} with {} buffered", needed, len);
                        prop_assert!(
                            needed <= max_message.max(125) + 14,
                            "needed {} over the limit",
                            needed
                        );
                    }
                    break;
                }
                Ok(Step::Frame { consumed, inbound }) => {
                    prop_assert!(
                        consumed > 0 && consumed <= len,
                        "consumed {} of {}",
                        consumed,
                        len
                    );
                    if let Some(inbound) = inbound {
                        let decoded = owned(inbound);
                        check_decoded(&decoded, max_message)?;
                        out.push(decoded);
                    }
                    pending.drain(..consumed);
                }
                Err(e) => {
                    let code = e.close_code();
                    prop_assert!(
                        [1002, 1007, 1009].contains(&code),
                        "close code {} for {}",
                        code,
                        e
                    );
                    return Ok((out, End::Error(code)));
                }
            }
        }
    }
    let end = if pending.is_empty() {
        End::Clean
    } else {
        End::Incomplete
    };
    Ok((out, end))
}

fn check_decoded(decoded: &Decoded, max_message: usize) -> TestCaseResult {
    match decoded {
        Decoded::Text(bytes) => {
            prop_assert!(std::str::from_utf8(bytes).is_ok(), "text not UTF-8");
            prop_assert!(bytes.len() <= max_message);
        }
        Decoded::Binary(bytes) => prop_assert!(bytes.len() <= max_message),
        Decoded::Ping(bytes) => prop_assert!(bytes.len() <= 125),
        Decoded::Pong | Decoded::Close(None) => {}
        Decoded::Close(Some((code, reason))) => {
            let legal = (1000..=1003).contains(code)
                || (1007..=1014).contains(code)
                || (3000..=4999).contains(code);
            prop_assert!(legal, "close code {} accepted", code);
            prop_assert!(reason.len() <= 123);
        }
    }
    Ok(())
}

const FRAME_DICTIONARY: &[&[u8]] = &[
    &[0x80 | 126],
    &[0x80 | 127],
    &[0xff; 8],
    &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x88, 0x80],
    &[0x88, 0x81],
    &[0x89, 0xfe],
    &[0x00, 0x80],
    &[0x81, 0x00],
    &[0xc1],
    &[0x83],
    &[0x8b],
    &[0x03, 0xe8],
    &[0x03, 0xed],
    &[0xed, 0xa0, 0x80],
    &[0xf4, 0x90, 0x80, 0x80],
    &[0xc0, 0xaf],
];

fn valid_units() -> impl Strategy<Value = Vec<Unit>> {
    proptest::collection::vec(unit(), 0..8)
}

fn mask() -> impl Strategy<Value = [u8; 4]> {
    any::<[u8; 4]>()
}

#[test]
fn frames_valid_sequences_decode_exactly_in_any_chunking() {
    let strategy = (
        valid_units(),
        close_unit(),
        mask(),
        proptest::collection::vec(any::<usize>(), 0..12),
    );
    fuzz(
        "frames_valid",
        strategy,
        true,
        |(units, close, mask, raw_cuts)| {
            let (bytes, expected) = encode_units(&units, Some(&close), mask);
            let (decoded, end) = decode_pieces(&chunks(&bytes, &raw_cuts), 1 << 16)?;
            prop_assert_eq!(end, End::Clean);
            prop_assert_eq!(decoded, expected);
            Ok(())
        },
    );
}

/// Frame bytes from arbitrary to nearly valid.
fn frame_input() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        valid_units(),
        close_unit(),
        mask(),
        proptest::collection::vec(mutation(FRAME_DICTIONARY), 1..5),
    )
        .prop_map(|(units, close, mask, mutations)| {
            let (mut bytes, _) = encode_units(&units, Some(&close), mask);
            mutate(&mut bytes, &mutations);
            bytes
        });
    prop_oneof![
        3 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

#[test]
fn frames_arbitrary_bytes_never_panic_and_chunking_does_not_matter() {
    let strategy = (
        frame_input(),
        proptest::sample::select(vec![0usize, 1, 125, 126, 200, 4096, 1 << 16]),
        proptest::collection::vec(any::<usize>(), 0..12),
    );
    fuzz(
        "frames_arbitrary",
        strategy,
        true,
        |(bytes, max_message, raw_cuts)| {
            let whole = decode_pieces(&[&bytes], max_message)?;
            let chunked = decode_pieces(&chunks(&bytes, &raw_cuts), max_message)?;
            prop_assert_eq!(chunked, whole);
            Ok(())
        },
    );
}

/// A parsed server frame: FIN, opcode, payload.
type ServerFrame = (bool, u8, Vec<u8>);

/// Parses what the server sent after its 101 head, checking that every frame
/// is unmasked, has no reserved bits, and that control frames are final and
/// short. A truncated last frame is allowed only when the connection reset.
fn server_frames(bytes: &[u8], reset: bool) -> Result<Vec<ServerFrame>, String> {
    let mut at = 0;
    let mut frames = Vec::new();
    while at < bytes.len() {
        let rest = &bytes[at..];
        let (Some(&b0), Some(&b1)) = (rest.first(), rest.get(1)) else {
            return if reset {
                Ok(frames)
            } else {
                Err(format!("truncated frame header at {at}"))
            };
        };
        let (fin, rsv, opcode) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f);
        if b1 & 0x80 != 0 || rsv != 0 {
            return Err(format!(
                "masked or reserved-bit server frame at {at}: {b0:#x} {b1:#x}"
            ));
        }
        let (len, header) = match b1 & 0x7f {
            126 => match rest.get(2..4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => {
                    return if reset {
                        Ok(frames)
                    } else {
                        Err("truncated length".into())
                    }
                }
            },
            127 => match rest.get(2..10) {
                Some(l) => (u64::from_be_bytes(l.try_into().map_err(|_| "length")?), 10),
                None => {
                    return if reset {
                        Ok(frames)
                    } else {
                        Err("truncated length".into())
                    }
                }
            },
            n => (u64::from(n), 2),
        };
        if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
            return Err(format!("server sent reserved opcode {opcode:#x}"));
        }
        if opcode >= 0x8 && (!fin || len > 125) {
            return Err(format!("bad server control frame {b0:#x} len {len}"));
        }
        let end = header as u64 + len;
        if end > rest.len() as u64 {
            return if reset {
                Ok(frames)
            } else {
                Err(format!("truncated payload at {at}"))
            };
        }
        frames.push((fin, opcode, rest[header..end as usize].to_vec()));
        at += end as usize;
    }
    Ok(frames)
}

/// Opens a raw WebSocket session on `path`: the stream and any bytes read
/// past the 101 head.
fn open_ws(addr: SocketAddr, path: &str) -> Result<(TcpStream, Vec<u8>), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(LIVE_WAIT))
        .map_err(|e| format!("timeout: {e}"))?;
    stream
        .write_all(upgrade_request(path).as_bytes())
        .map_err(|e| format!("write upgrade: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(end) = find_head_end(&head, 0) {
            break end;
        }
        if head.len() > 4096 {
            return Err("endless upgrade answer".into());
        }
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("read 101: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed during upgrade: {:?}",
                String::from_utf8_lossy(&head)
            ));
        }
        head.extend_from_slice(&buf[..n]);
    };
    if !head.starts_with(b"HTTP/1.1 101 ") {
        return Err(format!("no upgrade: {:?}", String::from_utf8_lossy(&head)));
    }
    Ok((stream, head[end..].to_vec()))
}

#[test]
fn frames_live_echo_session_echoes_or_closes_and_survives() {
    let server = TestServer::start(eof_config());
    let addr = server.addr;
    let strategy = (
        valid_units(),
        mask(),
        proptest::option::of(proptest::collection::vec(mutation(FRAME_DICTIONARY), 1..5)),
        proptest::collection::vec(any::<usize>(), 0..4),
    );
    fuzz(
        "frames_live",
        strategy,
        false,
        |(units, mask, mutations, raw_cuts)| {
            let (mut stream, early) = open_ws(addr, "/api/ws/echo").map_err(TestCaseError::fail)?;
            let valid = mutations.is_none();
            let close = Some(Some((1000, String::new())));
            let (mut bytes, expected) =
                encode_units(&units, if valid { close.as_ref() } else { None }, mask);
            if let Some(mutations) = &mutations {
                mutate(&mut bytes, mutations);
            }
            let (answer, reset) = live_exchange(&mut stream, &chunks(&bytes, &raw_cuts), true)
                .map_err(TestCaseError::fail)?;
            let mut received = early;
            received.extend_from_slice(&answer);
            let frames = server_frames(&received, reset).map_err(TestCaseError::fail)?;
            for (fin, opcode, payload) in &frames {
                prop_assert!(*fin, "the server fragments nothing");
                if *opcode == 0x8 && payload.len() >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let legal = (1000..=1003).contains(&code)
                        || (1007..=1014).contains(&code)
                        || (3000..=4999).contains(&code);
                    prop_assert!(legal, "server sent close code {}", code);
                }
            }
            if valid {
                check_echoes(&frames, &expected).map_err(|e| {
                let seen: Vec<(u8, usize, String)> = frames
                    .iter()
                    .map(|(_, op, p)| (*op, p.len(), String::from_utf8_lossy(&p[p.len().min(2)..]).into_owned()))
                    .collect();
                let close = frames.iter().find(|(_, op, p)| *op == 0x8 && p.len() >= 2).map(|(_, _, p)| u16::from_be_bytes([p[0], p[1]]));
                TestCaseError::fail(format!(
                    "{e}\nserver frames (opcode, length, text after 2 bytes): {seen:?}; close code {close:?}; reset: {reset}"
                ))
            })?;
            }
            assert_healthy(addr)
        },
    );
}

/// For an unmutated sequence: every data message echoed in order with its
/// opcode, every Ping answered with its payload, then Close 1000.
fn check_echoes(frames: &[ServerFrame], expected: &[Decoded]) -> TestCaseResult {
    let data: Vec<(u8, Vec<u8>)> = frames
        .iter()
        .filter(|(_, op, _)| *op == 0x1 || *op == 0x2)
        .map(|(_, op, p)| (*op, p.clone()))
        .collect();
    let want_data: Vec<(u8, Vec<u8>)> = expected
        .iter()
        .filter_map(|d| match d {
            Decoded::Text(p) => Some((0x1, p.clone())),
            Decoded::Binary(p) => Some((0x2, p.clone())),
            _ => None,
        })
        .collect();
    prop_assert_eq!(data, want_data);
    let pongs: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|(_, op, _)| *op == 0xA)
        .map(|(_, _, p)| p)
        .collect();
    let pings: Vec<&Vec<u8>> = expected
        .iter()
        .filter_map(|d| match d {
            Decoded::Ping(p) => Some(p),
            _ => None,
        })
        .collect();
    prop_assert_eq!(pongs, pings);
    let last = frames
        .last()
        .map(|(_, op, p)| (*op, p.get(..2).map(<[u8]>::to_vec)));
    prop_assert_eq!(last, Some((0x8, Some(1000u16.to_be_bytes().to_vec()))));
    Ok(())
}

// --------------------------------------------------------------- JSON ----

/// JSON text, mostly valid, with the edge cases serde handles differently
/// from one path to another: huge numbers, escapes, lone surrogates.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        proptest::sample::select(vec![
            "null", "true", "false", "0", "-0", "1e400", "-1e400", "1.5", "[]", "{}", "\"\""
        ])
        .prop_map(str::to_owned),
        "-?(0|[1-9][0-9]{0,22})(\\.[0-9]{1,6})?([eE][+-]?[0-9]{1,4})?",
        any::<String>().prop_map(|s| Value::String(s).to_string()),
        "\"([a-z ]|\\\\[\"\\\\/bfnrt]|\\\\u[0-9a-fA-F]{4}|\\\\ud83d\\\\ude00|\\\\ud800)*\"",
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            proptest::sample::select(vec![
                "type", "to", "from", "room", "content", "extra", "Type", ""
            ])
            .prop_map(|k| format!("\"{k}\"")),
            any::<String>().prop_map(|s| Value::String(s).to_string()),
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| format!("[{}]", items.join(","))),
            proptest::collection::vec((key, inner), 0..6).prop_map(|entries| {
                let body: Vec<String> = entries
                    .into_iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

/// A message-shaped object: the known keys with values of any type.
fn message_text() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        proptest::sample::select(vec![
            "\"ping\"",
            "\"join\"",
            "\"leave\"",
            "\"chat\"",
            "\"error\"",
            "\"pong\"",
            "\"\""
        ])
        .prop_map(str::to_owned),
        json_text(),
    ];
    let name = prop_oneof![
        proptest::sample::select(vec![
            "\"alice\"",
            "\"bob\"",
            "\"r1\"",
            "\"r2\"",
            "\"\"",
            "null"
        ])
        .prop_map(str::to_owned),
        json_text(),
    ];
    let field = |key: &'static str, value: BoxedStrategy<String>| {
        proptest::option::of(value).prop_map(move |v| v.map(|v| format!("\"{key}\":{v}")))
    };
    (
        field("type", kind.boxed()),
        field("to", name.clone().boxed()),
        field("room", name.clone().boxed()),
        field("from", name.boxed()),
        field("content", json_text().boxed()),
        proptest::option::of(json_text().prop_map(|v| format!("\"extra\":{v}"))),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(a, b, c, d, e, f, dup)| {
            let mut fields: Vec<String> = [a, b, c, d, e, f].into_iter().flatten().collect();
            if dup && !fields.is_empty() {
                fields.push(fields[0].clone());
            }
            format!("{{{}}}", fields.join(","))
        })
}

const JSON_DICTIONARY: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\\u",
    b"\\ud800",
    b"1e999",
    b"\xff",
    b"\0",
    b"null",
    b"\"type\":\"x\"",
];

fn json_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => message_text().prop_map(String::into_bytes),
        2 => (message_text(), proptest::collection::vec(mutation(JSON_DICTIONARY), 1..4)).prop_map(|(text, m)| {
            let mut bytes = text.into_bytes();
            mutate(&mut bytes, &m);
            bytes
        }),
        1 => json_text().prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

/// The entries of a JSON object in order, duplicates kept, values raw.
struct Entries(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// A server message, checked to be an object with only the five keys, each
/// once, `type` non-empty and `to`/`from`/`room` non-empty strings.
#[derive(Debug, Default, PartialEq)]
struct Sent {
    kind: String,
    to: Option<String>,
    from: Option<String>,
    room: Option<String>,
    content: Option<String>,
}

fn check_sent(json: &[u8]) -> Result<Sent, TestCaseError> {
    let text = String::from_utf8_lossy(json);
    let entries: Entries = serde_json::from_slice(json)
        .map_err(|e| TestCaseError::fail(format!("not a JSON object ({e}): {text}")))?;
    let mut sent = Sent::default();
    let mut seen = Vec::new();
    for (key, value) in entries.0 {
        prop_assert!(!seen.contains(&key), "duplicate {} in {}", key, text);
        seen.push(key.clone());
        let string = || -> Result<String, TestCaseError> {
            let s: String = serde_json::from_str(value.get())
                .map_err(|_| TestCaseError::fail(format!("{key} is not a string in {text}")))?;
            prop_assert!(!s.is_empty(), "empty {} in {}", key, text);
            Ok(s)
        };
        match key.as_str() {
            "type" => sent.kind = string()?,
            "to" => sent.to = Some(string()?),
            "from" => sent.from = Some(string()?),
            "room" => sent.room = Some(string()?),
            "content" => sent.content = Some(value.get().to_owned()),
            other => {
                return Err(TestCaseError::fail(format!(
                    "unexpected key {other:?} in {text}"
                )))
            }
        }
    }
    prop_assert!(seen.iter().any(|k| k == "type"), "no type in {}", text);
    Ok(sent)
}

fn key(index: u32) -> SessionKey {
    SessionKey {
        index,
        generation: 1,
    }
}

/// Sessions 0–1 are alice, 2 is bob, 3 is anonymous.
fn router(sender: u32, joined: &[&str]) -> Router {
    let mut router = Router::default();
    let alice: Rc<str> = Rc::from("alice");
    let bob: Rc<str> = Rc::from("bob");
    router.add_session(key(0), Some(&alice));
    router.add_session(key(1), Some(&alice));
    router.add_session(key(2), Some(&bob));
    router.add_session(key(3), None);
    router.join(key(2), None, "r1").expect("room r1");
    for room in joined {
        router
            .join(key(sender), None, room)
            .expect("within max_rooms_per_session");
    }
    router
}

/// What a parse failure must be, judged from a generic JSON parse.
fn check_parse_error(bytes: &[u8], error: &MessageError) -> TestCaseResult {
    prop_assert!(!error.to_string().is_empty());
    check_sent(&message::error_json(&error.to_string()))?;
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) if map.get("type").is_none_or(Value::is_null) => {
            prop_assert_eq!(error, &MessageError::MissingType)
        }
        Ok(Value::Object(_)) => {}
        Ok(_) => prop_assert_eq!(error, &MessageError::NotAnObject),
        Err(_) => {}
    }
    Ok(())
}

fn check_route(message: &Incoming<'_>, sender: u32, joined: &[&str]) -> TestCaseResult {
    let sender_user = match sender {
        0 | 1 => Some("alice"),
        2 => Some("bob"),
        _ => None,
    };
    let mut router = router(sender, joined);
    let was_member = message.room().map(|r| router.is_member(key(sender), r));
    let route = router.route(key(sender), sender_user, message);
    let content = message.content.map(|c| c.get().to_owned());
    match route {
        Route::Reply(json) => {
            let sent = check_sent(&json)?;
            if message.kind == "ping" {
                prop_assert_eq!(
                    sent,
                    Sent {
                        kind: "pong".into(),
                        content,
                        ..Sent::default()
                    }
                );
            } else {
                prop_assert_eq!(&sent.kind, "error");
                prop_assert!(
                    sent.content.is_some_and(|c| c.starts_with('"')),
                    "error content not a string"
                );
                let bad_name = [message.room(), message.to()]
                    .into_iter()
                    .flatten()
                    .any(|id| {
                        wshub::internals::ids::check(id, Config::default().websocket.max_id_bytes)
                            .is_err()
                    });
                prop_assert!(
                    ["join", "leave", "error", "pong"].contains(&&*message.kind)
                        || was_member == Some(false)
                        || bad_name
                );
            }
        }
        Route::Done(_) => {
            let room = message.room();
            prop_assert!(room.is_some() && ["join", "leave"].contains(&&*message.kind));
            let member = room.is_some_and(|r| router.is_member(key(sender), r));
            prop_assert_eq!(member, message.kind == "join");
        }
        Route::Deliver(audience, json) => {
            let sent = check_sent(&json)?;
            let want = Sent {
                kind: message.kind.to_string(),
                to: message.to().map(str::to_owned),
                from: sender_user.map(str::to_owned),
                room: message.room().map(str::to_owned),
                content,
            };
            prop_assert_eq!(sent, want);
            prop_assert!(!["ping", "join", "leave", "error", "pong"].contains(&&*message.kind));
            let expected_audience = match (message.room(), message.to()) {
                (Some(room), _) => {
                    prop_assert_eq!(was_member, Some(true));
                    Audience::Room {
                        room,
                        except: Some(key(sender)),
                    }
                }
                (None, Some(user)) => Audience::User(user),
                (None, None) => Audience::Everyone {
                    except: Some(key(sender)),
                },
            };
            prop_assert_eq!(audience, expected_audience);
        }
    }
    Ok(())
}

#[test]
fn json_messages_parse_and_route_to_the_five_keys_only() {
    let strategy = (
        json_input(),
        0u32..4,
        proptest::sample::subsequence(vec!["r1", "r2"], 0..=2),
    );
    fuzz(
        "json_route",
        strategy,
        true,
        |(bytes, sender, joined)| match message::parse(&bytes) {
            Err(error) => check_parse_error(&bytes, &error),
            Ok(message) => {
                prop_assert!(
                    bytes.trim_ascii_start().starts_with(b"{"),
                    "non-object accepted"
                );
                prop_assert!(!message.kind.is_empty());
                for field in [message.to(), message.room(), message.from()] {
                    prop_assert!(field.is_none_or(|f| !f.is_empty()));
                }
                check_route(&message, sender, &joined)
            }
        },
    );
}

// ------------------------------------------- pipelined, unread side ----

/// One pipelined request and the status it must get.
fn pipelined_request() -> impl Strategy<Value = (Vec<u8>, u16)> {
    let body = r#"{"type":"n","content":[1,{"a":"b"}]}"#;
    let post = format!(
        "POST /api/ws/broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    proptest::sample::select(vec![
        (b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 200),
        (
            b"GET /api/ws/status HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            200,
        ),
        (b"GET /nope HTTP/1.1\r\n\r\n".to_vec(), 404),
        (
            b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
        ),
        (b"GET /metrics HTTP/1.1\r\n\r\n".to_vec(), 200),
        (post.into_bytes(), 200),
    ])
}

/// Statuses of the complete responses at the start of `bytes`, and the
/// bytes they took.
fn response_statuses(bytes: &[u8]) -> Result<(Vec<u16>, usize), String> {
    let mut at = 0;
    let mut statuses = Vec::new();
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some(head_end) = find_head_end(rest, 0) else {
            break;
        };
        let head = std::str::from_utf8(&rest[..head_end]).map_err(|e| e.to_string())?;
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not a response: {head:?}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("no Content-Length: {head:?}"))?;
        if rest.len() < head_end + length {
            break;
        }
        statuses.push(status);
        at += head_end + length;
    }
    Ok((statuses, at))
}

/// Pipelined keep-alive requests from a client that reads its responses
/// late or never: every response it does read is complete and in order, a
/// reader gets all of them, and one that never reads is closed by
/// `write_wait` (the server's request deadline is longer than the case, so
/// only `write_wait` can end it).
#[test]
fn http_pipelined_requests_with_an_unread_response_side() {
    let mut config = test_config();
    config.websocket.max_buffered_bytes = 2048;
    config.websocket.handshake_timeout = Duration::from_secs(30);
    // Readers get a write_wait no busy test machine can hit between reads.
    let reading_server = TestServer::start(config.clone());
    config.websocket.write_wait = Duration::from_millis(200);
    let server = TestServer::start(config);
    // Fifty users with ids of max_id_bytes make each status ~7 KiB: enough
    // unread responses to overflow what the kernel's buffers absorb.
    let users: Vec<String> = (0..50).map(|i| format!("{i:0>128}")).collect();
    let _listed: Vec<_> = users.iter().map(|u| server.connect(Some(u))).collect();
    let _also_listed = reading_server.connect(Some("listed-user"));
    let strategy = (
        proptest::collection::vec((pipelined_request(), 1usize..400), 1..24),
        any::<bool>(),
    );
    fuzz_cases(
        "http_pipelined_unread",
        32,
        strategy,
        false,
        |(requests, reads)| {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for ((request, status), repeat) in &requests {
                for _ in 0..*repeat {
                    bytes.extend_from_slice(request);
                    expected.push(*status);
                }
            }
            // One keep-alive connection serves at most 1000 requests: the
            // 1000th response closes it.
            expected.truncate(1000);
            let addr = if reads {
                reading_server.addr
            } else {
                server.addr
            };
            // A small receive window: the kernel cannot absorb the responses.
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .map_err(|e| TestCaseError::fail(format!("socket: {e}")))?;
            socket
                .set_recv_buffer_size(4096)
                .map_err(|e| TestCaseError::fail(format!("SO_RCVBUF: {e}")))?;
            socket
                .connect(&addr.into())
                .map_err(|e| TestCaseError::fail(format!("connect: {e}")))?;
            let mut stream: TcpStream = socket.into();
            stream
                .set_read_timeout(Some(LIVE_WAIT))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let baseline = wshub::alloc::heap_bytes().unwrap_or(0);
            let writer = {
                let mut stream = stream
                    .try_clone()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                std::thread::spawn(move || stream.write_all(&bytes))
            };
            if !reads {
                // Reading nothing for several write_waits: the server must
                // give up on this client, and hold about max_buffered_bytes
                // of its responses meanwhile (the heap counts this whole
                // process: a wide margin for other targets' threads).
                let mut peak = 0;
                for _ in 0..50 {
                    std::thread::sleep(Duration::from_millis(10));
                    let now = wshub::alloc::heap_bytes().unwrap_or(0);
                    peak = peak.max(now.saturating_sub(baseline));
                }
                prop_assert!(peak < 1 << 20, "unread responses held {} KiB", peak >> 10);
            }
            let mut got = Vec::new();
            let mut statuses = Vec::new();
            let mut buf = [0u8; 16384];
            let ended = loop {
                match stream.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break false
                    }
                    Err(_) => break true,
                }
                let (complete, used) = response_statuses(&got).map_err(TestCaseError::fail)?;
                statuses.extend(complete);
                got.drain(..used);
                // Every response arrived: the keep-alive connection may stay.
                if statuses.len() == expected.len() {
                    break false;
                }
            };
            let _ = stream.shutdown(Shutdown::Both);
            let _ = writer.join();
            prop_assert_eq!(&statuses[..], &expected[..statuses.len()], "out of order");
            if reads {
                prop_assert_eq!(
                    statuses.len(),
                    expected.len(),
                    "a reader gets every response"
                );
            } else {
                let owed = expected.len() - statuses.len();
                prop_assert!(ended || owed == 0, "an unread client was never closed");
            }
            assert_healthy(addr)
        },
    );
}

// ------------------------------------------------- client addresses ----

/// One hop of a forwarding header, as the fuzzer builds it.
#[derive(Debug, Clone)]
enum Hop {
    /// An address (`port`: written with one).
    Addr(std::net::IpAddr, bool),
    /// Something that is not an address (the model knows it).
    NotAddr(String),
}

fn hop() -> impl Strategy<Value = Hop> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v4 = (prop_oneof![Just(10u8), 1u8..10], any::<[u8; 3]>())
        .prop_map(|(first, rest)| IpAddr::V4(Ipv4Addr::new(first, rest[0], rest[1], rest[2])));
    let v6 = (prop_oneof![Just(0xffffu16), 1u16..4], any::<u16>()).prop_map(|(third, last)| {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, third, 0, 0, 0, 0, last))
    });
    let not_addr = prop_oneof![
        Just("unknown".to_owned()),
        Just("_hidden".to_owned()),
        Just(String::new()),
        Just("fe80::1%eth0".to_owned()),
        Just("1.2.3.4:99999999".to_owned()),
        "[a-z_]{1,12}",
    ];
    prop_oneof![
        4 => (prop_oneof![v4, v6], any::<bool>()).prop_map(|(ip, port)| Hop::Addr(ip, port)),
        1 => not_addr.prop_map(Hop::NotAddr),
    ]
}

fn walk_trusted() -> wshub::internals::client_ip::Trusted {
    wshub::internals::client_ip::Trusted::parse(&["10.0.0.0/8", "2001:db8:ffff::/48", "127.0.0.2"])
        .unwrap()
}

/// The contract, literally: from the peer leftwards, skip trusted hops;
/// the first untrusted is the client; a non-address stops at the proxy
/// right of it; all trusted: the leftmost.
fn walk_model(peer: std::net::IpAddr, hops: &[Hop]) -> std::net::IpAddr {
    let trusted = walk_trusted();
    let mut answer = peer;
    for hop in hops.iter().rev() {
        match hop {
            Hop::NotAddr(_) => return answer,
            Hop::Addr(ip, _) if !trusted.contains(*ip) => return *ip,
            Hop::Addr(ip, _) => answer = *ip,
        }
    }
    answer
}

fn xff_text(hop: &Hop) -> String {
    match hop {
        Hop::Addr(ip @ std::net::IpAddr::V6(_), true) => format!("[{ip}]:4711"),
        Hop::Addr(ip, true) => format!("{ip}:4711"),
        Hop::Addr(ip, false) => ip.to_string(),
        Hop::NotAddr(text) => text.clone(),
    }
}

fn forwarded_text(hop: &Hop, extra: bool) -> String {
    let node = match hop {
        Hop::Addr(ip @ std::net::IpAddr::V6(_), port) => {
            format!("\"[{ip}]{}\"", if *port { ":4711" } else { "" })
        }
        Hop::Addr(ip, true) => format!("\"{ip}:4711\""),
        Hop::Addr(ip, false) => ip.to_string(),
        Hop::NotAddr(text) if text.is_empty() => return "proto=http".to_owned(),
        Hop::NotAddr(text) => format!("\"{text}\""),
    };
    if extra {
        format!("proto=https;for={node};host=\"a.example,b;c\"")
    } else {
        format!("for={node}")
    }
}

/// Both header walks give the model's answer on any chain of trusted,
/// untrusted and broken hops, in any number of header lines; and a
/// forwarding header is never read from an untrusted peer.
#[test]
fn client_ip_header_walks_match_the_right_to_left_model() {
    use wshub::internals::client_ip::{client_address, ClientIpHeader};
    let strategy = (
        proptest::collection::vec(hop(), 0..10),
        any::<bool>(),
        proptest::collection::vec(any::<bool>(), 10),
    );
    fuzz(
        "client_ip_walks",
        strategy,
        true,
        |(hops, extra, line_breaks)| {
            let trusted = walk_trusted();
            let peer: std::net::IpAddr = "127.0.0.2".parse().unwrap();
            let expected = walk_model(peer, &hops);
            // Several header lines arrive joined by ", ", as http.rs joins them.
            let xff: Vec<String> = hops.iter().map(xff_text).collect();
            let xff = xff.join(", ");
            let got = client_address(
                peer,
                &trusted,
                ClientIpHeader::XForwardedFor,
                Some(xff.as_bytes()),
            );
            prop_assert_eq!(got, expected, "X-Forwarded-For: {}", xff);
            let mut fwd = String::new();
            for (i, hop) in hops.iter().enumerate() {
                if i > 0 {
                    fwd.push_str(if line_breaks[i] { ", " } else { "," });
                }
                fwd.push_str(&forwarded_text(hop, extra && i % 2 == 0));
            }
            let got = client_address(
                peer,
                &trusted,
                ClientIpHeader::Forwarded,
                Some(fwd.as_bytes()),
            );
            prop_assert_eq!(got, expected, "Forwarded: {}", fwd);
            let untrusted: std::net::IpAddr = "127.0.0.3".parse().unwrap();
            for header in [ClientIpHeader::XForwardedFor, ClientIpHeader::Forwarded] {
                let got = client_address(untrusted, &trusted, header, Some(xff.as_bytes()));
                prop_assert_eq!(got, untrusted);
            }
            Ok(())
        },
    );
}

const FORWARDING_DICTIONARY: &[&[u8]] = &[
    b",",
    b";",
    b"\"",
    b"\\",
    b"[",
    b"]",
    b":",
    b"=",
    b"for=",
    b"For=",
    b"%",
    b"unknown",
    b"_x",
    b"10.0.0.1",
    b"::1",
    b"2001:db8::1",
    b" ",
    b"\t",
];

/// Arbitrary and mutated header values: no panic, and the answer is the
/// peer or an address written somewhere in the value.
#[test]
fn client_ip_header_walks_survive_arbitrary_values() {
    use wshub::internals::client_ip::{client_address, ClientIpHeader};
    let strategy = (
        proptest::collection::vec(hop(), 0..6),
        proptest::collection::vec(mutation(FORWARDING_DICTIONARY), 0..6),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    );
    fuzz(
        "client_ip_arbitrary",
        strategy,
        true,
        |(hops, mutations, noise, use_noise)| {
            let trusted = walk_trusted();
            let peer: std::net::IpAddr = "127.0.0.2".parse().unwrap();
            let mut value = if use_noise {
                noise
            } else {
                let text: Vec<String> = hops.iter().map(|h| forwarded_text(h, false)).collect();
                text.join(", ").into_bytes()
            };
            mutate(&mut value, &mutations);
            for header in [
                ClientIpHeader::XForwardedFor,
                ClientIpHeader::Forwarded,
                ClientIpHeader::XRealIp,
            ] {
                let got = client_address(peer, &trusted, header, Some(&value));
                if got != peer {
                    // Its text (in some spelling) is in the value.
                    let text = String::from_utf8_lossy(&value).to_ascii_lowercase();
                    let v4_mapped = format!("::ffff:{got}");
                    prop_assert!(
                        text.contains(&got.to_string())
                            || text.contains(&v4_mapped)
                            || got.is_ipv6(),
                        "{:?} from {:?}",
                        got,
                        text
                    );
                }
            }
            Ok(())
        },
    );
}

/// A PROXY header as a balancer writes it, and the source it names.
fn proxy_header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v4 = (any::<[u8; 4]>(), any::<u16>())
        .prop_map(|(o, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port));
    let v6 = (any::<[u8; 16]>(), any::<u16>())
        .prop_map(|(o, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)).to_canonical(), port));
    let source = prop_oneof![v4, v6];
    let v1 = proptest::option::of(source.clone()).prop_map(|source| {
        let line = match source {
            None => "PROXY UNKNOWN\r\n".to_owned(),
            Some(SocketAddr::V4(a)) => {
                format!("PROXY TCP4 {} 127.0.0.1 {} 80\r\n", a.ip(), a.port())
            }
            Some(SocketAddr::V6(a)) => {
                // A v4-mapped source reads back as IPv4.
                format!("PROXY TCP6 {} ::1 {} 80\r\n", a.ip(), a.port())
            }
        };
        let source = source.map(|s| SocketAddr::new(s.ip().to_canonical(), s.port()));
        (line.into_bytes(), source)
    });
    let v2 = (
        proptest::option::of(source),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(source, local, tlvs)| {
            let mut addresses = Vec::new();
            let family = match source {
                None => 0x00,
                Some(SocketAddr::V4(a)) => {
                    addresses.extend(a.ip().octets());
                    addresses.extend([127, 0, 0, 1]);
                    addresses.extend(a.port().to_be_bytes());
                    addresses.extend([0, 80]);
                    0x11
                }
                Some(SocketAddr::V6(a)) => {
                    addresses.extend(a.ip().octets());
                    addresses.extend([0; 15]);
                    addresses.push(1);
                    addresses.extend(a.port().to_be_bytes());
                    addresses.extend([0, 80]);
                    0x21
                }
            };
            let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            out.push(if local { 0x20 } else { 0x21 });
            out.push(family);
            out.extend(((addresses.len() + tlvs.len()) as u16).to_be_bytes());
            out.extend(addresses);
            out.extend(tlvs);
            (out, if local { None } else { source })
        });
    prop_oneof![v1, v2]
}

const PROXY_DICTIONARY: &[&[u8]] = &[
    b"PROXY ",
    b"TCP4 ",
    b"TCP6 ",
    b"UNKNOWN",
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"\r\n\r\n\0\r\nQUIT\n",
    b"\x21\x11",
    b"\xff\xff",
    b"\x16\x03\x01",
];

/// The PROXY parser: a valid header is `Incomplete` at every cut, then
/// whole with its exact length and source, whatever follows it; any input
/// (mutated headers, noise) never panics, never claims more bytes than it
/// saw or than the bound, and more bytes never change a verdict.
#[test]
fn proxy_header_parser_is_total_and_split_stable() {
    use wshub::internals::client_ip::proxy::{parse, Parsed, MAX_HEADER};
    let strategy = (
        proxy_header(),
        proptest::collection::vec(any::<u8>(), 0..32),
        proptest::collection::vec(mutation(PROXY_DICTIONARY), 0..4),
    );
    fuzz(
        "proxy_header",
        strategy,
        true,
        |((header, source), tail, mutations)| {
            for cut in 0..header.len() {
                prop_assert_eq!(parse(&header[..cut]), Parsed::Incomplete, "cut {}", cut);
            }
            let mut input = header.clone();
            input.extend(&tail);
            let whole = Parsed::Header {
                len: header.len(),
                source,
            };
            prop_assert_eq!(parse(&input), whole);
            mutate(&mut input, &mutations);
            let mut before = Parsed::Incomplete;
            for end in 0..=input.len() {
                let now = parse(&input[..end]);
                if let Parsed::Header { len, .. } = now {
                    prop_assert!(len <= end && len <= MAX_HEADER);
                }
                if before != Parsed::Incomplete {
                    prop_assert_eq!(now, before, "a verdict changed at {}", end);
                }
                before = now;
            }
            Ok(())
        },
    );
}

// ------------------------------------------------- room join / leave ----

#[derive(Debug, Clone)]
enum RoomOp {
    Connect(u32),
    Disconnect(u32),
    Join(u32, u8),
    Leave(u32, u8),
}

fn room_op() -> impl Strategy<Value = RoomOp> {
    let session = 0u32..6;
    let room = 0u8..8;
    prop_oneof![
        1 => session.clone().prop_map(RoomOp::Connect),
        1 => session.clone().prop_map(RoomOp::Disconnect),
        4 => (session.clone(), room.clone()).prop_map(|(s, r)| RoomOp::Join(s, r)),
        3 => (session, room).prop_map(|(s, r)| RoomOp::Leave(s, r)),
    ]
}

/// Any sequence of connects, joins, leaves and disconnects leaves the
/// router's indexes equal to a plain model: membership, the per-session cap,
/// what each join and leave reports, and no room left behind once empty.
#[test]
fn rooms_join_leave_sequences_match_a_model() {
    use std::collections::{BTreeMap, BTreeSet};
    use wshub::internals::router::{Change, JoinError, Limits};
    const MAX_ROOMS: usize = 3;
    let strategy = proptest::collection::vec(room_op(), 0..200);
    fuzz("rooms_join_leave", strategy, true, |ops| {
        let mut router = Router::with_limits(Limits {
            max_rooms_per_session: MAX_ROOMS,
            ..Limits::default()
        });
        let mut model: BTreeMap<u32, BTreeSet<u8>> = BTreeMap::new();
        let name = |room: u8| format!("room-{room}");
        let members = |model: &BTreeMap<u32, BTreeSet<u8>>, room: u8| -> Vec<u32> {
            model
                .iter()
                .filter(|(_, rooms)| rooms.contains(&room))
                .map(|(s, _)| *s)
                .collect()
        };
        for op in &ops {
            match *op {
                RoomOp::Connect(s) => {
                    if let std::collections::btree_map::Entry::Vacant(slot) = model.entry(s) {
                        router.add_session(key(s), None);
                        slot.insert(BTreeSet::new());
                    }
                }
                RoomOp::Disconnect(s) => {
                    let want = match model.get(&s) {
                        None => Change::Unchanged,
                        Some(rooms) if rooms.iter().any(|r| members(&model, *r).len() == 1) => {
                            Change::LastMember
                        }
                        Some(_) => Change::Member,
                    };
                    model.remove(&s);
                    prop_assert_eq!(router.remove_session(key(s), None), want);
                }
                RoomOp::Join(s, r) => {
                    let before = members(&model, r).len();
                    let got = router.join(key(s), None, &name(r));
                    let want = match model.get_mut(&s) {
                        None => Ok(Change::Unchanged),
                        Some(rooms) if rooms.contains(&r) => Ok(Change::Unchanged),
                        Some(rooms) if rooms.len() >= MAX_ROOMS => Err(JoinError::TooManyRooms),
                        Some(rooms) => {
                            rooms.insert(r);
                            Ok(if before == 0 {
                                Change::FirstMember
                            } else {
                                Change::Member
                            })
                        }
                    };
                    prop_assert_eq!(got, want, "{:?}", op);
                }
                RoomOp::Leave(s, r) => {
                    let got = router.leave(key(s), &name(r));
                    let was = model.get_mut(&s).is_some_and(|rooms| rooms.remove(&r));
                    let want = match (was, members(&model, r).is_empty()) {
                        (false, _) => Change::Unchanged,
                        (true, true) => Change::LastMember,
                        (true, false) => Change::Member,
                    };
                    prop_assert_eq!(got, want, "{:?}", op);
                }
            }
            let rooms_in_use: BTreeSet<u8> = model.values().flatten().copied().collect();
            prop_assert_eq!(router.room_count(), rooms_in_use.len());
            prop_assert_eq!(router.online_count(), model.len());
        }
        for room in 0..8 {
            let mut got = Vec::new();
            router.for_each_member(
                Audience::Room {
                    room: &name(room),
                    except: None,
                },
                |k| got.push(k.index),
            );
            got.sort_unstable();
            prop_assert_eq!(got, members(&model, room), "room {}", room);
        }
        for s in model.keys() {
            prop_assert_ne!(router.remove_session(key(*s), None), Change::Unchanged);
        }
        prop_assert_eq!(router.room_count(), 0, "an empty room was left behind");
        Ok(())
    });
}

// -------------------------------------------------------- regressions ----
// Minimal replays of what the targets above found; see the issue report.

/// httparse ends the head at a bare-LF blank line (`\r\n\n`), the loop's
/// scanner only at `\r\n\r\n`: the bytes between were run as a second
/// request, here a broadcast hidden inside what any CRLF-strict intermediary
/// sees as one `GET /health`.
#[test]
fn regression_bare_lf_cannot_smuggle_a_second_request() {
    let head =
        "GET /health HTTP/1.1\r\nHost: t\r\n\nPOST /api/ws/broadcast HTTP/1.1\r\nHost: t\r\n\
                Content-Length: 31\r\n\r\n{\"type\":\"smuggled\",\"content\":1}";
    let parsed = parse_head(head.as_bytes(), 16384, 1 << 20);
    assert!(matches!(&parsed, Err(e) if e.status() == 400), "{parsed:?}");
    for bare in [
        "GET / HTTP/1.1\nHost: t\r\n\r\n",
        "GET / HTTP/1.1\r\nX: a\nContent-Length: 5\r\n\r\n",
    ] {
        let parsed = parse_head(bare.as_bytes(), 16384, 1 << 20);
        assert!(
            matches!(&parsed, Err(e) if e.status() == 400),
            "{bare:?}: {parsed:?}"
        );
    }
    let server = TestServer::start(test_config());
    let mut victim = server.connect(Some("victim"));
    let answer = common::raw_exchange(server.addr, head.as_bytes());
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert_eq!(
        victim.sync(),
        Vec::<Value>::new(),
        "the hidden broadcast was run"
    );
}

/// serde's derived visitor accepts a JSON array for a struct, positionally:
/// `["chat","bob"]` was routed like `{"type":"chat","to":"bob"}`, on the
/// socket and in REST bodies alike.
#[test]
fn regression_json_array_is_not_a_message() {
    for array in [
        &br#"["chat","b",null,null,{"text":"hi"}]"#[..],
        br#"[""]"#,
        b" [\"x\"]",
    ] {
        assert_eq!(message::parse(array).err(), Some(MessageError::NotAnObject));
    }
    let server = TestServer::start(test_config());
    let mut a = server.connect(Some("a"));
    let mut b = server.connect(Some("b"));
    a.send_text(r#"["chat","b",null,null,{"text":"hi"}]"#);
    assert_eq!(
        a.recv_json(),
        serde_json::json!({"type": "error", "content": "message must be a JSON object"})
    );
    let (status, body) = http(
        server.addr,
        "POST",
        "/api/ws/broadcast",
        &[],
        r#"["note",null,null,null,1]"#,
    );
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"error":"message must be a JSON object"}"#)
    );
    assert_eq!(b.sync(), Vec::<Value>::new(), "an array was delivered");
}

// ------------------------------------------- permessage-deflate (issue 19)

/// Words offers are made of, for the mutator.
const OFFER_WORDS: &[&[u8]] = &[
    b"permessage-deflate",
    b"; ",
    b", ",
    b"server_no_context_takeover",
    b"client_no_context_takeover",
    b"server_max_window_bits",
    b"client_max_window_bits",
    b"=",
    b"\"",
    b"8",
    b"9",
    b"14",
    b"15",
    b"16",
    b"010",
    b"x-webkit-deflate-frame",
];

fn offer_input() -> impl Strategy<Value = String> {
    let seeds = vec![
        "permessage-deflate; client_max_window_bits".to_owned(),
        "permessage-deflate; server_max_window_bits=10; client_no_context_takeover".to_owned(),
        "permessage-deflate; server_max_window_bits=8, permessage-deflate".to_owned(),
        "permessage-deflate; client_max_window_bits=\"12\"; server_max_window_bits=15".to_owned(),
    ];
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(OFFER_WORDS), 0..6),
    )
        .prop_map(|(seed, mutations)| {
            let mut bytes = seed.into_bytes();
            mutate(&mut bytes, &mutations);
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

/// Every offer either is declined or gets an answer that takes no context
/// over either way (no inflate history: section 7a), sends plain frames to
/// a client that limited the server's window, and repeats only parameters
/// the client offered.
#[test]
fn deflate_offers_are_declined_or_answered_without_context_takeover() {
    fuzz("deflate_negotiate", offer_input(), true, |header| {
        let Some(agreement) = wshub::internals::deflate::negotiate(&header) else {
            return Ok(());
        };
        let response = &agreement.response;
        prop_assert!(
            response.starts_with(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            ),
            "{}",
            response
        );
        let lower = header.to_ascii_lowercase();
        let limited =
            (9..15).any(|bits| response.contains(&format!("server_max_window_bits={bits}")));
        prop_assert_eq!(agreement.params.plain_output, limited, "{}", response);
        prop_assert!(
            !response.contains("server_max_window_bits=8"),
            "{}",
            response
        );
        for name in ["server_max_window_bits", "client_max_window_bits"] {
            if response.contains(name) {
                prop_assert!(lower.contains(name), "{} answered but not offered", name);
            }
        }
        prop_assert!((8..=15).contains(&agreement.params.client_window_bits));
        Ok(())
    });
}

/// Arbitrary bytes as a compressed message: inflated, refused as corrupt or
/// as too big, never past the limit and never a panic; a valid message
/// inflates to exactly what was compressed.
#[test]
fn deflate_inflate_holds_its_limit_on_any_input() {
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..2048),
        proptest::collection::vec(mutation(&[b"\x00\x00\xff\xff", b"\x03\x00"]), 0..4),
        proptest::sample::select(vec![0usize, 1, 100, 4096, 1 << 20]),
    );
    fuzz(
        "deflate_inflate",
        strategy,
        true,
        |(plain, mutations, max)| {
            let mut codec = wshub::internals::deflate::Codec::default();
            let mut bytes = codec
                .compress(&plain)
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            let valid = mutations.is_empty() && !bytes.is_empty();
            mutate(&mut bytes, &mutations);
            match codec.inflate(&bytes, max) {
                Ok(out) => {
                    prop_assert!(out.len() <= max);
                    if valid {
                        prop_assert_eq!(out, plain);
                    }
                }
                Err(wshub::internals::deflate::InflateError::TooBig) => {
                    prop_assert!(!valid || plain.len() > max);
                }
                Err(wshub::internals::deflate::InflateError::Corrupt(_)) => prop_assert!(!valid),
            }
            Ok(())
        },
    );
}
