//! A session driven over an in-memory stream, as the loop drives it over a
//! socket: bytes in, units out, phase changes and writes reported as values.

use std::io::{Read as _, Write as _};
use std::rc::Rc;

use mio::Interest;

use super::*;
use crate::frame::{client_frame, Inbound, Kind};
use crate::http;
use crate::outbound::Overflow;
use crate::transport::mock::{client, server_config, MockStream};

const KEY: SessionKey = SessionKey {
    index: 7,
    generation: 3,
};

fn rules() -> Rules {
    Rules {
        handshake_ms: 10_000,
        ping_period_ms: 54_000,
        pong_wait_ms: 60_000,
        write_wait_ms: 10_000,
        max_header_bytes: 16_384,
        max_message_size: 65_536,
        message_buffer_size: 4,
        max_buffered_bytes: 1_024,
    }
}

fn plain(stream: MockStream) -> Session<MockStream> {
    let peer = "127.0.0.1:40000".parse().unwrap();
    Session::new(Transport::new(stream, None), KEY, peer, 0)
}

fn feed(session: &mut Session<MockStream>, bytes: &[u8]) {
    session.socket_mut().input.extend(bytes);
}

/// A unit, owned, so a test can collect what one read produced.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Request {
        path: String,
        body: Vec<u8>,
        upgrade: bool,
    },
    BadRequest(u16),
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
    BadFrame(u16),
    Nothing,
    CloseAnswered,
    Broken,
    Paused,
}

fn owned(unit: Unit<'_>) -> Seen {
    match unit {
        Unit::Request { request, body } => Seen::Request {
            path: request.path,
            body: body.to_vec(),
            upgrade: request.upgrade_websocket,
        },
        Unit::BadRequest(e) => Seen::BadRequest(e.status()),
        Unit::Frame(Inbound::Text(p)) => Seen::Text(String::from_utf8(p.bytes().to_vec()).unwrap()),
        Unit::Frame(Inbound::Binary(p)) => Seen::Binary(p.bytes().to_vec()),
        Unit::Frame(Inbound::Ping(p)) => Seen::Ping(p.to_vec()),
        Unit::Frame(Inbound::Pong) => Seen::Pong,
        Unit::Frame(Inbound::Close(c)) => Seen::Close(c.map(|(code, _)| code)),
        Unit::Frame(Inbound::Compressed { .. }) => panic!("no compression negotiated"),
        Unit::BadFrame(e) => Seen::BadFrame(e.close_code()),
        Unit::Nothing => Seen::Nothing,
        Unit::CloseAnswered => Seen::CloseAnswered,
        Unit::Broken => Seen::Broken,
    }
}

/// What the loop's read step does: one read, every complete unit decoded,
/// the unfinished rest kept. Returns the units and the read's outcome.
fn read_units(session: &mut Session<MockStream>, now: u64) -> (Vec<Seen>, ReadOutcome) {
    let rules = rules();
    let mut shared = vec![0u8; 64 * 1024];
    let read = session.read(&mut shared);
    let outcome = read.outcome.expect("mock reads do not fail");
    let mut seen = Vec::new();
    let ReadOutcome::Data(n) = outcome else {
        return (seen, outcome);
    };
    let decode = |session: &mut Session<MockStream>, buf: &mut [u8], seen: &mut Vec<Seen>| {
        let mut at = 0;
        while at < buf.len() {
            match session.next_unit(&mut buf[at..], &rules, now) {
                Next::Unit(consumed, unit) => {
                    at += consumed;
                    seen.push(owned(unit));
                }
                Next::Paused => {
                    seen.push(Seen::Paused);
                    return at;
                }
                Next::Incomplete => return at,
                Next::Discard => return buf.len(),
            }
        }
        at
    };
    if read.into_shared {
        let consumed = decode(session, &mut shared[..n], &mut seen);
        session.keep_input(&shared[consumed..n]);
    } else {
        let mut input = session.take_input();
        let consumed = decode(session, &mut input, &mut seen);
        session.return_input(input, consumed);
    }
    (seen, outcome)
}

fn written(session: &mut Session<MockStream>) -> Vec<u8> {
    std::mem::take(&mut session.socket_mut().output)
}

const UPGRADE: &[u8] = b"GET /api/ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// An echo session past its upgrade, with the 101 written.
fn open_echo(stream: MockStream) -> Session<MockStream> {
    let mut session = plain(stream);
    feed(&mut session, UPGRADE);
    let (seen, _) = read_units(&mut session, 0);
    assert!(matches!(seen[..], [Seen::Request { upgrade: true, .. }]));
    let response = http::switching_protocols("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None);
    session.upgrade(response, Endpoint::Echo, None, None, 0, &rules());
    let wrote = session.write(0, &rules());
    assert!(matches!(wrote.then, AfterWrite::Idle));
    assert!(written(&mut session).starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    session
}

#[test]
fn handshake_upgrades_and_the_first_frame_follows_in_the_same_read() {
    let mut session = plain(MockStream::default());
    assert!(session.counted_http());
    // The client's first frame right behind its request head.
    let mut bytes = UPGRADE.to_vec();
    bytes.extend(client_frame(0x81, b"hi"));
    feed(&mut session, &bytes);
    let rules = rules();
    let mut shared = vec![0u8; 4096];
    let read = session.read(&mut shared);
    let Ok(ReadOutcome::Data(n)) = read.outcome else {
        panic!("{:?}", read.outcome)
    };
    let Next::Unit(head, Unit::Request { request, .. }) =
        session.next_unit(&mut shared[..n], &rules, 5)
    else {
        panic!("no request")
    };
    assert_eq!(request.path, "/api/ws/echo");
    let response = http::switching_protocols("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None);
    session.upgrade(response, Endpoint::Echo, None, None, 5, &rules);
    assert!(session.is_open() && !session.counted_http());
    // The first Ping is due within ping_period, jittered by at most a tenth.
    let deadline = session.open_deadline(&rules);
    assert!(
        (5 + 54_000 - 5_400..=5 + 54_000).contains(&deadline),
        "{deadline}"
    );
    // The bytes after the head are frames now.
    let Next::Unit(_, unit) = session.next_unit(&mut shared[head..n], &rules, 6) else {
        panic!("no frame")
    };
    assert_eq!(owned(unit), Seen::Text("hi".into()));
    let _ = session.write(6, &rules);
    assert!(written(&mut session).starts_with(b"HTTP/1.1 101 "));
}

#[test]
fn tls_handshake_and_a_request_over_the_session() {
    let Some(config) = server_config() else {
        eprintln!("openssl not found: skipped");
        return;
    };
    let conn = rustls::ServerConnection::new(config).unwrap();
    let peer = "127.0.0.1:40000".parse().unwrap();
    let mut session = Session::new(
        Transport::new(MockStream::default(), Some(conn)),
        KEY,
        peer,
        0,
    );
    let mut tls_client = client();
    tls_client
        .writer()
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut units = Vec::new();
    for _ in 0..16 {
        while tls_client.wants_write() {
            let mut out = Vec::new();
            tls_client.write_tls(&mut out).unwrap();
            feed(&mut session, &out);
        }
        let (seen, _) = read_units(&mut session, 0);
        units.extend(seen);
        // Handshake records the socket did not take yet: the loop writes
        // them (the read reports `must_write`).
        let _ = session.write(0, &rules());
        let out = written(&mut session);
        if out.is_empty() && !tls_client.wants_write() {
            break;
        }
        let mut slice = &out[..];
        while !slice.is_empty() {
            tls_client.read_tls(&mut slice).unwrap();
        }
        tls_client.process_new_packets().unwrap();
    }
    assert!(!tls_client.is_handshaking());
    assert!(
        matches!(&units[..], [Seen::Request { path, .. }] if path == "/health"),
        "{units:?}"
    );
    session.respond(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        true,
        1,
        &rules(),
    );
    let _ = session.write(1, &rules());
    let out = written(&mut session);
    let mut slice = &out[..];
    while !slice.is_empty() {
        tls_client.read_tls(&mut slice).unwrap();
    }
    tls_client.process_new_packets().unwrap();
    let mut plain = Vec::new();
    let _ = tls_client.reader().read_to_end(&mut plain);
    assert!(
        plain.ends_with(b"\r\n\r\nok"),
        "{}",
        String::from_utf8_lossy(&plain)
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_and_a_split_one_waits() {
    let mut session = plain(MockStream::default());
    feed(
        &mut session,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
POST /api/ws/broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /api/ws/sta",
    );
    let (seen, _) = read_units(&mut session, 0);
    assert_eq!(
        seen,
        [
            Seen::Request {
                path: "/health".into(),
                body: vec![],
                upgrade: false
            },
            Seen::Request {
                path: "/api/ws/broadcast".into(),
                body: b"hello".to_vec(),
                upgrade: false
            },
        ]
    );
    assert!(session.has_input(), "the unfinished head is kept");
    feed(&mut session, b"tus HTTP/1.1\r\nHost: x\r\n\r\n");
    let (seen, _) = read_units(&mut session, 0);
    assert!(matches!(&seen[..], [Seen::Request { path, .. }] if path == "/api/ws/status"));
    assert!(!session.has_input(), "no buffer kept between requests");
    let response = |body: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{body}");
    for (i, body) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(
            session.respond(response(body).into_bytes(), true, i as u64, &rules()),
            None
        );
    }
    let _ = session.write(3, &rules());
    let out = String::from_utf8(written(&mut session)).unwrap();
    assert_eq!(out, response("a") + &response("b") + &response("c"));
}

#[test]
fn a_client_that_reads_no_responses_is_paused_then_resumed() {
    let mut session = plain(MockStream {
        capacity: Some(0),
        ..MockStream::default()
    });
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    feed(&mut session, &request.repeat(3));
    let rules = rules();
    let big = vec![b'x'; rules.max_buffered_bytes + 1];
    // The first request is answered past the bound: the next ones wait.
    let mut shared = vec![0u8; 4096];
    let Ok(ReadOutcome::Data(n)) = session.read(&mut shared).outcome else {
        panic!()
    };
    let Next::Unit(first, Unit::Request { .. }) = session.next_unit(&mut shared[..n], &rules, 0)
    else {
        panic!()
    };
    session.respond(big, true, 0, &rules);
    assert!(matches!(
        session.next_unit(&mut shared[first..n], &rules, 0),
        Next::Paused
    ));
    assert!(session.is_paused());
    session.keep_input(&shared[first..n]);
    let wrote = session.write(0, &rules);
    assert!(!wrote.resume);
    assert_eq!(
        wrote.interest,
        Some(Interest::READABLE | Interest::WRITABLE)
    );
    // The client reads: the session says to read again, and the kept
    // requests come out whole.
    session.socket_mut().capacity = None;
    let wrote = session.write(1, &rules);
    assert!(wrote.resume && !session.is_paused());
    assert_eq!(wrote.interest, Some(Interest::READABLE));
    let mut input = session.take_input();
    let mut at = 0;
    let mut requests = 0;
    while let Next::Unit(consumed, Unit::Request { .. }) =
        session.next_unit(&mut input[at..], &rules, 1)
    {
        at += consumed;
        requests += 1;
    }
    assert_eq!(requests, 2);
}

#[test]
fn bad_requests_are_reported_with_their_status() {
    let mut session = plain(MockStream::default());
    feed(
        &mut session,
        b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
    );
    let (seen, _) = read_units(&mut session, 0);
    assert_eq!(seen, [Seen::BadRequest(400)]);
    let mut session = plain(MockStream::default());
    feed(&mut session, &vec![b'a'; rules().max_header_bytes + 1]);
    let (seen, _) = read_units(&mut session, 0);
    assert_eq!(seen, [Seen::BadRequest(431)]);
}

#[test]
fn a_frame_trickling_in_byte_by_byte_arrives_whole_and_counts_as_life_only_then() {
    let mut session = open_echo(MockStream::default());
    let frame = client_frame(0x81, "héllo".as_bytes());
    let (last, head) = frame.split_last().unwrap();
    for (i, byte) in head.iter().enumerate() {
        feed(&mut session, &[*byte]);
        let (seen, _) = read_units(&mut session, 100 + i as u64);
        assert!(seen.is_empty(), "{seen:?}");
    }
    assert!(session.has_input());
    let ping = Heartbeat::default();
    assert_eq!(
        session.on_timer(60_000, &rules(), &ping),
        Fired::Expired(Expiry::PongWait),
        "a frame's bytes are not life until the frame is whole"
    );
    feed(&mut session, &[*last]);
    let (seen, _) = read_units(&mut session, 500);
    assert_eq!(seen, [Seen::Text("héllo".into())]);
    assert!(!session.has_input());
    assert_eq!(
        session.on_timer(60_000, &rules(), &ping),
        Fired::Ping(60_500),
        "the whole frame moved pong_wait on (the overdue Ping is queued)"
    );
}

#[test]
fn a_fragmented_message_is_reassembled_around_a_ping() {
    let mut session = open_echo(MockStream::default());
    let mut bytes = client_frame(0x01, b"ab");
    bytes.extend(client_frame(0x89, b"p"));
    bytes.extend(client_frame(0x00, b"c"));
    bytes.extend(client_frame(0x80, b"d"));
    feed(&mut session, &bytes);
    let (seen, _) = read_units(&mut session, 1);
    assert_eq!(
        seen,
        [
            Seen::Nothing,
            Seen::Ping(b"p".to_vec()),
            Seen::Nothing,
            Seen::Text("abcd".into())
        ]
    );
}

#[test]
fn a_protocol_violation_fails_the_connection_with_its_code() {
    let mut session = open_echo(MockStream::default());
    // Unmasked client frame: 1002.
    feed(&mut session, &[0x81, 0x02, b'h', b'i']);
    let (seen, _) = read_units(&mut session, 1);
    assert_eq!(seen, [Seen::BadFrame(1002)]);
    assert_eq!(session.leave(), Some(Left::Echo));
    let deadline = session.fail(&DecodeError::Protocol("unmasked"), 1, &rules());
    assert_eq!(deadline, 10_001);
    assert!(matches!(session.write(1, &rules()).then, AfterWrite::Idle));
    let out = written(&mut session);
    assert_eq!(&out[..4], &[0x88, out[1], 0x03, 0xea]);
    assert!(
        session.socket_mut().shut_write,
        "half-closed after the Close"
    );
    // Whatever the peer sends now is not read.
    feed(&mut session, &client_frame(0x81, b"more"));
    let (seen, _) = read_units(&mut session, 2);
    assert!(seen.is_empty());
}

#[test]
fn close_handshake_started_by_the_peer() {
    let mut session = open_echo(MockStream::default());
    feed(&mut session, &client_frame(0x88, &1000u16.to_be_bytes()));
    let (seen, _) = read_units(&mut session, 1);
    assert_eq!(seen, [Seen::Close(Some(1000))]);
    assert_eq!(session.leave(), Some(Left::Echo));
    assert_eq!(session.leave(), None, "leaves the indexes once");
    session.answer_close(Some(1000), 1, &rules());
    assert!(matches!(session.write(1, &rules()).then, AfterWrite::Idle));
    assert_eq!(written(&mut session), [0x88, 0x02, 0x03, 0xe8]);
    assert!(session.socket_mut().shut_write);
    // The peer's FIN ends it.
    session.socket_mut().eof = true;
    let (_, outcome) = read_units(&mut session, 2);
    assert_eq!(outcome, ReadOutcome::Eof);
    assert_eq!(session.on_eof(2, &rules()), Eof::Flush);
    assert!(matches!(
        session.write(2, &rules()).then,
        AfterWrite::Finished
    ));
    assert!(session.kill());
    assert!(!session.kill(), "killed once");
}

#[test]
fn close_handshake_started_by_the_server_waits_for_the_answer_within_the_deadline() {
    let mut session = open_echo(MockStream::default());
    assert_eq!(session.leave(), Some(Left::Echo));
    session.close(1001, "going away", 5_000);
    let _ = session.write(1, &rules());
    assert_eq!(&written(&mut session)[..4], &[0x88, 12, 0x03, 0xe9]);
    assert!(
        !session.socket_mut().shut_write,
        "the peer's Close is awaited first"
    );
    // Data frames still arriving are skipped; the Close answers ours.
    let mut bytes = client_frame(0x81, b"late");
    bytes.extend(client_frame(0x88, &1001u16.to_be_bytes()));
    feed(&mut session, &bytes);
    let (seen, _) = read_units(&mut session, 2);
    assert_eq!(seen, [Seen::Nothing, Seen::CloseAnswered]);
    let _ = session.write(2, &rules());
    assert!(session.socket_mut().shut_write);
    assert_eq!(
        session.on_timer(4_999, &rules(), &Heartbeat::default()),
        Fired::Arm(5_000)
    );
    assert_eq!(
        session.on_timer(5_000, &rules(), &Heartbeat::default()),
        Fired::Expired(Expiry::Closing)
    );
    // Garbage instead of an answer drops the connection at once.
    let mut session = open_echo(MockStream::default());
    session.leave();
    session.close(1000, "", 5_000);
    feed(&mut session, &[0x81, 0x02, b'h', b'i']);
    let (seen, _) = read_units(&mut session, 1);
    assert_eq!(seen, [Seen::Broken]);
}

#[test]
fn a_slow_writer_is_bounded_then_stalled() {
    let mut session = open_echo(MockStream::default());
    session.socket_mut().write_limit = Some(3);
    session.socket_mut().capacity = Some(10);
    let rules = rules();
    let frame: Wire = crate::frame::encode(Kind::Text, b"0123456789abcdef");
    let mut bytes_out = 0;
    session
        .queue(frame.clone(), &rules, &mut bytes_out)
        .unwrap();
    let wrote = session.write(100, &rules);
    assert_eq!(wrote.bytes, 10, "short writes up to the socket's capacity");
    assert_eq!(
        wrote.interest,
        Some(Interest::READABLE | Interest::WRITABLE)
    );
    assert!(matches!(
        wrote.then,
        AfterWrite::Waiting {
            stall_deadline: 10_100
        }
    ));
    // The queue holds message_buffer_size frames behind the one in flight.
    for _ in 0..rules.message_buffer_size {
        session
            .queue(frame.clone(), &rules, &mut bytes_out)
            .unwrap();
    }
    assert_eq!(
        session.queue(frame.clone(), &rules, &mut bytes_out),
        Err(Overflow::Messages)
    );
    // Nothing leaves for write_wait: stalled.
    let ping = Heartbeat::default();
    assert_eq!(session.on_timer(10_099, &rules, &ping), Fired::Arm(10_100));
    assert_eq!(
        session.on_timer(10_100, &rules, &ping),
        Fired::Expired(Expiry::WriteStalled)
    );
    // A socket that drains in time is not stalled.
    let mut session = open_echo(MockStream::default());
    session.socket_mut().capacity = Some(0);
    session.queue(frame, &rules, &mut bytes_out).unwrap();
    assert!(matches!(
        session.write(100, &rules).then,
        AfterWrite::Waiting { .. }
    ));
    session.socket_mut().capacity = None;
    let wrote = session.write(200, &rules);
    assert!(matches!(wrote.then, AfterWrite::Idle));
    assert_eq!(wrote.interest, Some(Interest::READABLE));
    assert!(matches!(
        session.on_timer(10_100, &rules, &ping),
        Fired::Arm(_)
    ));
}

#[test]
fn an_http_connection_without_a_whole_request_expires() {
    let mut session = plain(MockStream::default());
    feed(&mut session, b"GET / HT");
    let _ = read_units(&mut session, 0);
    let ping = Heartbeat::default();
    assert_eq!(session.on_timer(9_999, &rules(), &ping), Fired::Arm(10_000));
    assert_eq!(
        session.on_timer(10_000, &rules(), &ping),
        Fired::Expired(Expiry::Handshake { partial: true })
    );
    // FIN with nothing owed: dropped at once; with a response owed: sent first.
    assert_eq!(session.on_eof(1, &rules()), Eof::Drop);
    let mut session = plain(MockStream::default());
    session.respond(b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), true, 0, &rules());
    assert_eq!(session.on_eof(1, &rules()), Eof::Closing(10_001));
    assert!(matches!(
        session.write(1, &rules()).then,
        AfterWrite::Finished
    ));
}

#[test]
fn ping_jitter_stays_within_a_tenth_and_spreads_consecutive_sessions() {
    let key = |generation| SessionKey {
        index: 0,
        generation,
    };
    let period = 54_000;
    let jitters: Vec<u64> = (1..=1000).map(|g| ping_jitter(key(g), period)).collect();
    assert!(jitters.iter().all(|j| *j < period / 10));
    let mut distinct = jitters.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > 900,
        "only {} distinct offsets",
        distinct.len()
    );
    assert_eq!(
        ping_jitter(key(7), 5),
        0,
        "periods under 10 ms get no jitter"
    );
}

#[test]
fn a_session_stays_small() {
    // Every idle connection pays this in the slab (BENCHMARKS.md).
    // 304 before permessage-deflate, whose RSV1 flag in the decoder and
    // parameters take 8 more (no inflate history is kept since issue 19);
    // the request count and flags of issue 19 and SSE fill the last 8; the
    // client address behind proxies 8 more (the peer is kept as address
    // and port, not a 32-byte SocketAddr).
    let size = std::mem::size_of::<Session>();
    assert!(size <= 328, "{size} bytes");
}

#[test]
fn proxy_header_in_pieces_then_the_request_behind_it() {
    let mut session = plain(MockStream::default());
    session.await_proxy_header();
    let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 4660 80\r\n";
    for byte in &header[..header.len() - 1] {
        feed(&mut session, &[*byte]);
        let (seen, outcome) = read_units(&mut session, 0);
        assert_eq!((seen, outcome), (vec![], ReadOutcome::WouldBlock));
        assert!(matches!(session.phase(), Phase::Proxy));
    }
    // The last byte and the request in one read: only the header is taken.
    feed(&mut session, &header[header.len() - 1..]);
    feed(&mut session, b"GET /health HTTP/1.1\r\n\r\n");
    let (_, outcome) = read_units(&mut session, 0);
    assert_eq!(outcome, ReadOutcome::Proxied);
    assert_eq!(session.peer(), "203.0.113.7:4660".parse().unwrap());
    assert_eq!(session.client, "203.0.113.7".parse::<IpAddr>().unwrap());
    assert_eq!(session.socket_mut().input.len(), 24);
    let (seen, _) = read_units(&mut session, 0);
    assert!(matches!(&seen[..], [Seen::Request { path, .. }] if path == "/health"));
}

#[test]
fn proxy_header_refusals_and_deadline() {
    let mut session = plain(MockStream::default());
    session.await_proxy_header();
    feed(&mut session, b"GET / HTTP/1.1\r\n\r\n");
    let (_, outcome) = read_units(&mut session, 0);
    assert!(matches!(outcome, ReadOutcome::NotProxied(_)), "{outcome:?}");

    // An unfinished header meets handshake_timeout like a request.
    let mut session = plain(MockStream::default());
    session.await_proxy_header();
    feed(&mut session, b"PROXY TCP4 ");
    assert_eq!(read_units(&mut session, 0).1, ReadOutcome::WouldBlock);
    let beat = Heartbeat::default();
    assert_eq!(session.on_timer(9_999, &rules(), &beat), Fired::Arm(10_000));
    assert!(matches!(
        session.on_timer(10_000, &rules(), &beat),
        Fired::Expired(Expiry::Handshake { .. })
    ));

    // The peer goes away mid-header.
    let mut session = plain(MockStream::default());
    session.await_proxy_header();
    session.socket_mut().eof = true;
    assert_eq!(read_units(&mut session, 0).1, ReadOutcome::Eof);
}

#[test]
fn an_event_stream_discards_input_beats_with_comments_and_ends_without_a_close_frame() {
    let rules = rules();
    let mut session = plain(MockStream::default());
    feed(&mut session, b"GET /api/ws/sse HTTP/1.1\r\nHost: x\r\n\r\n");
    let (seen, _) = read_units(&mut session, 0);
    assert!(
        matches!(&seen[..], [Seen::Request { path, upgrade: false, .. }] if path == "/api/ws/sse")
    );
    let head = crate::sse::response_head(None);
    session.upgrade(
        head.clone(),
        Endpoint::Sse,
        Some(Rc::from("u1")),
        None,
        0,
        &rules,
    );
    assert!(session.is_open() && session.is_sse() && !session.counted_http());
    assert_eq!(session.user().map(|u| &**u), Some("u1"));
    let _ = session.write(0, &rules);
    assert_eq!(written(&mut session), head);
    // Whatever the client sends now is not a request: it is dropped.
    feed(&mut session, b"GET /health HTTP/1.1\r\n\r\n");
    let (seen, _) = read_units(&mut session, 1);
    assert!(seen.is_empty(), "{seen:?}");
    assert!(!session.has_input());
    // No pong_wait for a client that never speaks: the next deadline is the
    // heartbeat, and past pong_wait the stream is still open.
    let beat = Heartbeat::default();
    let first = session.open_deadline(&rules);
    assert!(first <= rules.ping_period_ms, "{first}");
    assert!(matches!(
        session.on_timer(first, &rules, &beat),
        Fired::Ping(_)
    ));
    let second = first + rules.ping_period_ms;
    assert_eq!(session.open_deadline(&rules), second);
    let _ = session.write(first, &rules);
    assert_eq!(written(&mut session), crate::sse::HEARTBEAT);
    assert!(matches!(
        session.on_timer(second, &rules, &beat),
        Fired::Ping(_)
    ));
    assert!(second > rules.pong_wait_ms);
    let _ = session.write(second, &rules);
    assert_eq!(written(&mut session), crate::sse::HEARTBEAT);
    // The server ends it: a comment, then FIN; no WebSocket Close frame.
    let mut bytes_out = 0;
    session
        .queue(crate::sse::event(b"{}"), &rules, &mut bytes_out)
        .unwrap();
    assert!(matches!(session.leave(), Some(Left::Sse(Some(user))) if &*user == "u1"));
    session.close(1013, "slow consumer", second + 10);
    assert!(matches!(
        session.write(second, &rules).then,
        AfterWrite::Idle
    ));
    assert_eq!(written(&mut session), b"data: {}\n\n: slow consumer\n\n");
    assert!(session.socket_mut().shut_write);
    assert_eq!(session.on_eof(second + 1, &rules), Eof::Flush);
    assert!(matches!(
        session.write(second + 1, &rules).then,
        AfterWrite::Finished
    ));
}

#[test]
fn a_session_whose_queue_overflowed_takes_no_more_data_until_closed() {
    // A recipient that missed a frame must not get a later one (its client
    // would resume after the one it missed): the loop closes it when the
    // delivering step is over, and meanwhile every data frame is refused,
    // even one that would fit again.
    let mut session = open_echo(MockStream::default());
    session.socket_mut().capacity = Some(0);
    let rules = rules();
    let frame: Wire = crate::frame::encode(Kind::Text, b"x");
    let mut bytes_out = 0;
    // The first frame waits in flight, `message_buffer_size` behind it.
    for _ in 0..=rules.message_buffer_size {
        session
            .queue(frame.clone(), &rules, &mut bytes_out)
            .unwrap();
    }
    assert_eq!(
        session.queue(frame.clone(), &rules, &mut bytes_out),
        Err(Overflow::Messages)
    );
    // The socket takes everything now: there would be room again.
    session.socket_mut().capacity = None;
    let _ = session.write(100, &rules);
    assert_eq!(session.out().queued_messages(), 0);
    assert_eq!(
        session.queue(frame.clone(), &rules, &mut bytes_out),
        Err(Overflow::Ending)
    );
    assert!(!session.has_room(1, 1, &rules), "a replay is refused too");
    // Its Close still goes out.
    let _ = session.close(1013, "slow consumer", 1_000);
    assert!(!session.out().is_empty());

    // Ended without an overflow (it missed a message another way).
    let mut session = open_echo(MockStream::default());
    session.end_data();
    assert_eq!(
        session.queue(frame, &rules, &mut bytes_out),
        Err(Overflow::Ending)
    );
}
