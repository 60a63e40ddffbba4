//! Delivery at scale through the coalescing write path: a burst of
//! broadcasts to 10,000 sessions reaches every session completely and in
//! order, while later broadcasts join the queues of sessions not yet written.
//!
//! The server runs as the real binary in a child process: 10,000 client
//! sockets here and 10,000 server sockets there would not fit one process's
//! 20,000-descriptor limit. The clients are raw non-blocking sockets on one
//! `mio::Poll`, spread over source addresses 127.0.0.2..=127.0.0.40 so the
//! ephemeral ports of one address are never the limit. Every wait is bounded.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use common::read_full_response;

/// Sessions that receive the burst.
const SESSIONS: usize = 10_000;
/// Broadcasts in the burst (within the default `message_buffer_size` of 256:
/// a burst that every socket takes is no slow consumer).
const BURST: usize = 120;
/// The burst goes out in this many pipelined writes of POSTs, a few
/// milliseconds apart, so later ones arrive while earlier ones are drained.
const CHUNKS: usize = 6;
/// Upgrades in flight at once.
const IN_FLIGHT: usize = 256;
/// The whole test must finish within this (it takes a few seconds).
const LIMIT: Duration = Duration::from_secs(60);
/// A fixed key: the test checks the 101 status, not the accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The wshub binary on a free loopback port; killed (by PID) on drop.
struct Binary {
    child: Child,
    addr: SocketAddr,
    config_path: std::path::PathBuf,
}

impl Binary {
    fn start() -> Binary {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("probe port");
            probe.local_addr().expect("probe address").port()
        };
        let config_path =
            std::env::temp_dir().join(format!("wshub-fanout-{}-{port}.yaml", std::process::id()));
        let yaml = format!(
            "app:\n  host: \"127.0.0.1\"\n  port: {port}\n  demo: false\nlog:\n  level: warn\n\
             websocket:\n  max_connections: 12000\n  ping_period: 60s\n  pong_wait: 120s\n"
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
        let deadline = Instant::now() + common::WAIT;
        while TcpStream::connect(binary.addr).is_err() {
            assert!(Instant::now() < deadline, "wshub never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        binary
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let mut stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(common::WAIT))
            .expect("timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("request");
        let (_, _, body) = read_full_response(&mut BufReader::new(stream));
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// Lets this process hold 10,000 sockets (the soft limit may be 1,024).
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a struct owned here.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        assert!(
            lim.rlim_cur >= (SESSIONS + 100) as libc::rlim_t,
            "the descriptor limit {} is too low for {SESSIONS} sockets",
            lim.rlim_cur
        );
    }
}

/// A non-blocking connect from 127.0.0.`2 + n % 39`.
fn connect_from(n: usize, to: SocketAddr) -> mio::net::TcpStream {
    let ip = Ipv4Addr::new(127, 0, 0, 2 + (n % 39) as u8);
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    sock.set_nonblocking(true).expect("non-blocking");
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and an int option that outlives the call. Lets
    // connect() pick the port per 4-tuple instead of bind() per address.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(&SocketAddr::from((ip, 0)).into()).expect("bind");
    match sock.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => panic!("connect from {ip}: {e}"),
    }
    mio::net::TcpStream::from_std(sock.into())
}

/// One receiving session.
struct Conn {
    stream: mio::net::TcpStream,
    /// The upgrade request is written.
    sent: bool,
    /// The 101 arrived.
    open: bool,
    /// Unparsed input.
    input: Vec<u8>,
    /// The next broadcast number this session must see.
    next: usize,
}

/// Reads everything `conn` has; returns whether it is still healthy.
fn read_ready(conn: &mut Conn, buf: &mut [u8]) -> Result<(), String> {
    loop {
        match conn.stream.read(buf) {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(n) => conn.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let mut at = 0;
    if !conn.open {
        let Some(end) = find(&conn.input, b"\r\n\r\n") else {
            return Ok(());
        };
        if !conn.input.starts_with(b"HTTP/1.1 101 ") {
            return Err(String::from_utf8_lossy(&conn.input[..end]).into_owned());
        }
        conn.open = true;
        at = end + 4;
    }
    while let Some((payload, used)) = frame(&conn.input[at..])? {
        let seq = content_number(payload)
            .ok_or_else(|| format!("unexpected message {:?}", String::from_utf8_lossy(payload)))?;
        if seq != conn.next {
            return Err(format!("got broadcast {seq}, expected {}", conn.next));
        }
        conn.next += 1;
        at += used;
    }
    conn.input.drain(..at);
    Ok(())
}

/// One complete unmasked text frame at the start of `buf`: payload and size.
fn frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] != 0x81 {
        return Err(format!("expected a final text frame, got {:#04x}", buf[0]));
    }
    let (len, head) = match buf[1] {
        n @ 0..=125 => (usize::from(n), 2),
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        126 => return Ok(None),
        other => return Err(format!("unexpected length byte {other:#04x}")),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    Ok(Some((&buf[head..head + len], head + len)))
}

/// `N` in `..."content":N...`.
fn content_number(json: &[u8]) -> Option<usize> {
    let at = find(json, b"\"content\":")? + b"\"content\":".len();
    let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Opens `SESSIONS` chat sessions, at most `IN_FLIGHT` handshakes at a time.
fn open_all(poll: &mut Poll, addr: SocketAddr, deadline: Instant) -> Vec<Conn> {
    let mut conns: Vec<Conn> = Vec::with_capacity(SESSIONS);
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; 64 * 1024];
    let mut opened = 0;
    while opened < SESSIONS {
        assert!(
            Instant::now() < deadline,
            "only {opened} of {SESSIONS} sessions opened"
        );
        while conns.len() < SESSIONS && conns.len() - opened < IN_FLIGHT {
            let n = conns.len();
            let mut stream = connect_from(n, addr);
            poll.registry()
                .register(
                    &mut stream,
                    Token(n),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .expect("register");
            conns.push(Conn {
                stream,
                sent: false,
                open: false,
                input: Vec::new(),
                next: 0,
            });
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .expect("poll");
        for event in events.iter() {
            let n = event.token().0;
            let conn = &mut conns[n];
            if event.is_writable() && !conn.sent {
                if conn.stream.peer_addr().is_err() {
                    continue;
                }
                let request = format!(
                    "GET /api/ws/connect?user_id=u{n} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                );
                // A fresh socket's send buffer takes ~150 bytes whole.
                conn.stream
                    .write_all(request.as_bytes())
                    .unwrap_or_else(|e| panic!("upgrade request {n}: {e}"));
                conn.sent = true;
            }
            if event.is_readable() && !conn.open {
                read_ready(conn, &mut buf).unwrap_or_else(|e| panic!("session {n}: {e}"));
                opened += usize::from(conn.open);
            }
        }
    }
    conns
}

#[test]
fn a_burst_of_broadcasts_reaches_10k_sessions_completely_and_in_order() {
    raise_fd_limit();
    let deadline = Instant::now() + LIMIT;
    let server = Binary::start();
    let mut poll = Poll::new().expect("poll");
    let mut conns = open_all(&mut poll, server.addr, deadline);
    assert_eq!(
        server.metric("wshub_connections_open").map(|v| v as usize),
        Some(SESSIONS)
    );

    // The trigger: one keep-alive connection, POSTs pipelined in chunks.
    let mut pusher = TcpStream::connect(server.addr).expect("pusher");
    pusher
        .set_read_timeout(Some(common::WAIT))
        .expect("timeout");
    let mut reader = BufReader::new(pusher.try_clone().expect("clone"));
    let mut responses = Vec::new();
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; 64 * 1024];
    let mut complete = 0;
    let mut posted = 0;
    while complete < SESSIONS {
        assert!(
            Instant::now() < deadline,
            "after {posted} broadcasts only {complete} of {SESSIONS} sessions had all {BURST}; \
             slowest at {}",
            conns.iter().map(|c| c.next).min().unwrap_or(0)
        );
        if posted < BURST {
            let mut requests = String::new();
            let end = (posted + BURST / CHUNKS).min(BURST);
            for seq in posted..end {
                let body = format!(r#"{{"type":"burst","content":{seq}}}"#);
                requests.push_str(&format!(
                    "POST /api/ws/broadcast HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            posted = end;
            pusher.write_all(requests.as_bytes()).expect("POSTs");
        }
        poll.poll(&mut events, Some(Duration::from_millis(5)))
            .expect("poll");
        for event in events.iter() {
            let n = event.token().0;
            let conn = &mut conns[n];
            let before = conn.next;
            read_ready(conn, &mut buf).unwrap_or_else(|e| panic!("session {n}: {e}"));
            if before < BURST && conn.next == BURST {
                complete += 1;
            }
        }
        if responses.len() < posted && posted == BURST {
            while responses.len() < posted {
                let (status, _, body) = read_full_response(&mut reader);
                responses.push((status, body));
            }
        }
    }
    let want = (200, format!(r#"{{"sent":{SESSIONS}}}"#));
    assert!(
        responses.iter().all(|r| *r == want),
        "every POST answered {want:?}: {:?}",
        responses.iter().find(|r| **r != want)
    );
    assert_eq!(
        server
            .metric("wshub_slow_consumer_closes_total")
            .map(|v| v as u64),
        Some(0)
    );
    // Nothing beyond the burst arrived, and every session is still open.
    for (n, conn) in conns.iter_mut().enumerate() {
        read_ready(conn, &mut buf).unwrap_or_else(|e| panic!("session {n}: {e}"));
        assert_eq!(conn.next, BURST, "session {n}");
    }
}
