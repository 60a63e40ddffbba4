//! The load client: many WebSocket or Server-Sent Events receivers (and a few
//! keep-alive HTTP connections) on one
//! raw, edge-triggered mio `Poll`. One shared read buffer for all connections;
//! per connection only its socket, a phase, and byte buffers that stay empty
//! unless a frame straddles two reads or a write is short. Client sockets are
//! bound to source addresses 127.0.0.2..=127.0.0.40 before a non-blocking
//! connect, so 19k connections never run out of ephemeral ports.
//! Touches only sockets it opened; reports what happens as [`Event`]s.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flate2::{Decompress, FlushDecompress};

use base64::Engine as _;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{BenchError, Result};
use crate::wire::{self, WireError};

/// Size of the one read buffer shared by every connection.
const SHARED_READ_BUF: usize = 256 * 1024;
/// `--sse`: the `wshub-sse` column's receivers are event streams.
pub static RECEIVE_SSE: AtomicBool = AtomicBool::new(false);

/// Source addresses used round-robin: 127.0.0.2 ..= 127.0.0.40.
const SOURCE_FIRST: u8 = 2;
const SOURCE_COUNT: u32 = 39;
/// A response head larger than this is not a server we talk to.
const MAX_HEAD: usize = 16 * 1024;

/// `--compression`: every WebSocket upgrade offers permessage-deflate the
/// way browsers do; servers that decline it send plain frames as before.
pub static OFFER_DEFLATE: AtomicBool = AtomicBool::new(false);

/// The offer, as Chromium sends it.
const DEFLATE_OFFER: &[u8] =
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// Inflated messages kept by compressed payload. A server that compresses a
/// broadcast once sends every receiver the same bytes, so the client
/// inflates each distinct message once instead of once per receiver (the
/// client, not the server, is the bottleneck of these runs).
const INFLATE_CACHE: usize = 1024;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseWhy {
    /// The server closed the TCP connection.
    Eof,
    /// A socket call failed.
    Io(io::ErrorKind),
    /// The upgrade was answered with this HTTP status instead of 101 (200
    /// for an event stream).
    Status(u16),
    /// The 101 response carried a wrong or no `Sec-WebSocket-Accept`.
    BadAccept,
    /// A compressed frame that does not inflate, or RSV1 without the extension.
    BadDeflate,
    /// The HTTP response could not be parsed.
    BadResponse,
    /// A malformed frame.
    Protocol(WireError),
    /// A masked frame from the server (RFC 6455 5.1 forbids it).
    MaskedFrame,
    /// An unknown opcode or a continuation without a start.
    BadOpcode(u8),
    /// The server sent a Close frame with this code.
    CloseFrame(Option<u16>),
}

impl fmt::Display for CloseWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseWhy::Eof => write!(f, "server closed the connection"),
            CloseWhy::Io(k) => write!(f, "socket error {k:?}"),
            CloseWhy::Status(s) => write!(f, "upgrade answered with HTTP {s}"),
            CloseWhy::BadAccept => write!(f, "wrong Sec-WebSocket-Accept"),
            CloseWhy::BadDeflate => write!(f, "bad permessage-deflate frame"),
            CloseWhy::BadResponse => write!(f, "unparsable HTTP response"),
            CloseWhy::Protocol(e) => write!(f, "{e}"),
            CloseWhy::MaskedFrame => write!(f, "masked frame from the server"),
            CloseWhy::BadOpcode(o) => write!(f, "unexpected opcode {o:#x}"),
            CloseWhy::CloseFrame(Some(c)) => write!(f, "Close frame {c}"),
            CloseWhy::CloseFrame(None) => write!(f, "Close frame without code"),
        }
    }
}

/// What the client saw; `at` is taken once per `read` call.
#[derive(Debug)]
pub enum Event<'a> {
    /// A WebSocket got its 101 (or an HTTP connection got connected).
    Open {
        /// Connection id.
        id: usize,
    },
    /// A complete text or binary message.
    Message {
        /// Connection id.
        id: usize,
        /// When the read that completed it returned.
        at: Instant,
        /// The payload.
        data: &'a [u8],
    },
    /// A complete HTTP response on an HTTP connection.
    Response {
        /// Connection id.
        id: usize,
        /// Status code.
        status: u16,
        /// The body (by `Content-Length`).
        body: &'a [u8],
    },
    /// The connection is gone; its id will not be reused.
    Closed {
        /// Connection id.
        id: usize,
        /// Whether it had been open (upgraded / connected).
        was_open: bool,
        /// Why.
        why: CloseWhy,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshake,
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ws,
    Http,
    /// An event stream (`GET /api/ws/sse`): a 200 head, then events.
    Sse,
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    kind: Kind,
    /// Unparsed tail of earlier reads (empty unless a frame straddled reads).
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// A fragmented message being reassembled.
    frag: Option<Vec<u8>>,
    /// The fragmented message started with RSV1.
    frag_deflated: bool,
    /// The server accepted permessage-deflate.
    deflate: bool,
}

/// Word-wise multiply-xor hash for the inflate cache: a few ns for a
/// 200-byte key, where SipHash would cost the client more than the server
/// spends on the delivery.
#[derive(Default)]
struct WordHash(u64);

impl Hasher for WordHash {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0 ^ u64::from_ne_bytes(w)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// Inflates server messages (fresh context each: the server answers
/// `server_no_context_takeover`), each distinct payload once.
struct Inflater {
    z: Decompress,
    cache: HashMap<Vec<u8>, Vec<u8>, BuildHasherDefault<WordHash>>,
}

impl Inflater {
    fn new() -> Inflater {
        Inflater {
            z: Decompress::new(false),
            cache: HashMap::default(),
        }
    }

    fn inflate(&mut self, payload: &[u8]) -> Option<&[u8]> {
        if !self.cache.contains_key(payload) {
            if self.cache.len() >= INFLATE_CACHE {
                self.cache.clear();
            }
            self.z.reset(false);
            let mut input = payload.to_vec();
            input.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut out = Vec::with_capacity(payload.len() * 8 + 256);
            loop {
                let before = self.z.total_in();
                self.z
                    .decompress_vec(&input, &mut out, FlushDecompress::Sync)
                    .ok()?;
                input.drain(..(self.z.total_in() - before) as usize);
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
                out.reserve(out.capacity());
            }
            self.cache.insert(payload.to_vec(), out);
        }
        self.cache.get(payload).map(Vec::as_slice)
    }
}

/// A set of client connections to one server address, driven by [`Client::poll`].
pub struct Client {
    poll: Poll,
    events: Events,
    core: Core,
}

struct Core {
    conns: Vec<Option<Conn>>,
    live: usize,
    rbuf: Vec<u8>,
    target: SocketAddr,
    host: String,
    key: String,
    accept: String,
    src_next: u32,
    rng: u64,
    deferred: Vec<(usize, bool, CloseWhy)>,
    inflater: Inflater,
    /// Bytes of data frames received (heads included) and messages completed.
    rx_bytes: u64,
    rx_messages: u64,
}

impl Client {
    /// A client for the server at `target`.
    pub fn new(target: SocketAddr) -> Result<Client> {
        let poll = Poll::new().map_err(|e| BenchError::io("create mio Poll", e))?;
        let mut rng = seed();
        let mut raw = [0u8; 16];
        for chunk in raw.chunks_mut(8) {
            chunk.copy_from_slice(&next_rand(&mut rng).to_ne_bytes());
        }
        // One key for every connection: each server still derives and sends
        // the accept value, which we verify, without a SHA-1 per connection here.
        let key = base64::engine::general_purpose::STANDARD.encode(raw);
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        Ok(Client {
            poll,
            events: Events::with_capacity(4096),
            core: Core {
                conns: Vec::new(),
                live: 0,
                rbuf: vec![0; SHARED_READ_BUF],
                target,
                host: target.to_string(),
                key,
                accept,
                src_next: (next_rand(&mut rng) % u64::from(SOURCE_COUNT)) as u32,
                rng,
                deferred: Vec::new(),
                inflater: Inflater::new(),
                rx_bytes: 0,
                rx_messages: 0,
            },
        })
    }

    /// Points later connections at another server (a cluster's nodes share
    /// one client and one poll).
    pub fn set_target(&mut self, target: SocketAddr) {
        self.core.target = target;
        self.core.host = target.to_string();
    }

    /// Starts a WebSocket connection to `path` (with query); returns its id.
    pub fn connect_ws(&mut self, path: &str) -> Result<usize> {
        let mut out = Vec::with_capacity(192 + path.len());
        wire::push_upgrade_request(&mut out, &self.core.host, path, &self.core.key);
        if OFFER_DEFLATE.load(Ordering::Relaxed) {
            out.truncate(out.len() - 2);
            out.extend_from_slice(DEFLATE_OFFER);
            out.extend_from_slice(b"\r\n");
        }
        self.connect(Kind::Ws, out)
    }

    /// Starts an event stream (`GET` of `path`, e.g. `/api/ws/sse?user_id=u1`);
    /// each event is reported as a [`Event::Message`] with its data.
    pub fn connect_sse(&mut self, path: &str) -> Result<usize> {
        let out = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            self.core.host
        );
        self.connect(Kind::Sse, out.into_bytes())
    }

    /// Data-frame bytes on the wire (heads included) and messages received so far.
    pub fn rx_counts(&self) -> (u64, u64) {
        (self.core.rx_bytes, self.core.rx_messages)
    }

    /// Starts a plain keep-alive HTTP connection; returns its id.
    pub fn connect_http(&mut self) -> Result<usize> {
        self.connect(Kind::Http, Vec::new())
    }

    fn connect(&mut self, kind: Kind, out: Vec<u8>) -> Result<usize> {
        let mut stream = self.core.open_socket()?;
        let id = self.core.conns.len();
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(id),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| BenchError::io("register client socket", e))?;
        let conn = Conn {
            stream,
            phase: Phase::Connecting,
            kind,
            inbuf: Vec::new(),
            out,
            out_pos: 0,
            frag: None,
            frag_deflated: false,
            deflate: false,
        };
        self.core.conns.push(Some(conn));
        self.core.live += 1;
        Ok(id)
    }

    /// Queues one masked text frame; false when the connection is not open.
    pub fn send_text(&mut self, id: usize, payload: &[u8]) -> bool {
        let mask = next_rand(&mut self.core.rng).to_ne_bytes();
        let key = [mask[0], mask[1], mask[2], mask[3]];
        self.core.send_with(id, |out| {
            wire::push_frame(out, wire::OP_TEXT, payload, Some(key))
        })
    }

    /// Queues raw bytes (an HTTP request); false when the connection is not open.
    pub fn send_raw(&mut self, id: usize, bytes: &[u8]) -> bool {
        self.core.send_with(id, |out| out.extend_from_slice(bytes))
    }

    /// Connections not yet closed (connecting, handshaking or open).
    pub fn live(&self) -> usize {
        self.core.live
    }

    /// The `host:port` this client talks to.
    pub fn host(&self) -> &str {
        &self.core.host
    }

    /// Closes every connection without events (a TCP FIN from our side).
    pub fn close_all(&mut self) {
        self.core.conns.clear();
        self.core.live = 0;
        self.core.deferred.clear();
    }

    /// Waits up to `timeout` for readiness and reports what happened through `f`.
    pub fn poll<F: FnMut(Event<'_>)>(&mut self, timeout: Duration, mut f: F) -> Result<()> {
        let deferred = std::mem::take(&mut self.core.deferred);
        let wait = if deferred.is_empty() {
            Some(timeout)
        } else {
            Some(Duration::ZERO)
        };
        for (id, was_open, why) in deferred {
            f(Event::Closed { id, was_open, why });
        }
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(BenchError::io("mio poll", e)),
        }
        for ev in self.events.iter() {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let writable = ev.is_writable() || ev.is_error();
            self.core.on_ready(ev.token().0, readable, writable, &mut f);
        }
        Ok(())
    }
}

impl Core {
    fn open_socket(&mut self) -> Result<TcpStream> {
        let mut last_err = None;
        // A source address whose ports are used up (TIME_WAIT) is skipped.
        for _ in 0..SOURCE_COUNT {
            let ip = Ipv4Addr::new(
                127,
                0,
                0,
                SOURCE_FIRST + (self.src_next % SOURCE_COUNT) as u8,
            );
            self.src_next = self.src_next.wrapping_add(1);
            match connect_from(ip, self.target) {
                Ok(s) => return Ok(s),
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        || e.kind() == io::ErrorKind::AddrNotAvailable =>
                {
                    last_err = Some(e)
                }
                Err(e) => {
                    return Err(BenchError::io(
                        format!("connect from {ip} to {}", self.target),
                        e,
                    ))
                }
            }
        }
        let e = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable));
        Err(BenchError::io("no source address has a free port", e))
    }

    fn send_with(&mut self, id: usize, push: impl FnOnce(&mut Vec<u8>)) -> bool {
        let Some(Some(conn)) = self.conns.get_mut(id) else {
            return false;
        };
        if conn.phase != Phase::Open {
            return false;
        }
        let was_idle = conn.out_pos == conn.out.len();
        push(&mut conn.out);
        if was_idle {
            if let Err(why) = flush(conn) {
                self.drop_conn(id, why);
                return false;
            }
        }
        true
    }

    /// Removes a connection found broken outside `poll`; reported at the next poll.
    fn drop_conn(&mut self, id: usize, why: CloseWhy) {
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::take) {
            self.live -= 1;
            self.deferred.push((id, conn.phase == Phase::Open, why));
        }
    }

    fn close<F: FnMut(Event<'_>)>(&mut self, id: usize, why: CloseWhy, f: &mut F) {
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::take) {
            self.live -= 1;
            f(Event::Closed {
                id,
                was_open: conn.phase == Phase::Open,
                why,
            });
        }
    }

    fn on_ready<F: FnMut(Event<'_>)>(
        &mut self,
        id: usize,
        readable: bool,
        writable: bool,
        f: &mut F,
    ) {
        let Some(Some(conn)) = self.conns.get_mut(id) else {
            return;
        };
        if conn.phase == Phase::Connecting {
            match connect_result(&conn.stream) {
                Ok(false) => return,
                Ok(true) => {
                    if conn.kind != Kind::Http {
                        conn.phase = Phase::Handshake;
                    } else {
                        conn.phase = Phase::Open;
                        f(Event::Open { id });
                    }
                }
                Err(why) => return self.close(id, why, f),
            }
        }
        if writable || conn.out_pos < conn.out.len() {
            if let Err(why) = flush(conn) {
                return self.close(id, why, f);
            }
        }
        if readable {
            self.read_ready(id, f);
        }
    }

    fn read_ready<F: FnMut(Event<'_>)>(&mut self, id: usize, f: &mut F) {
        // Bounded: a server that floods faster than we parse still yields to others.
        for _ in 0..64 {
            let Some(Some(conn)) = self.conns.get_mut(id) else {
                return;
            };
            let n = match conn.stream.read(&mut self.rbuf) {
                Ok(0) => return self.close(id, CloseWhy::Eof, f),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(id, CloseWhy::Io(e.kind()), f),
            };
            let at = Instant::now();
            if let Err(why) = self.consume(id, n, at, f) {
                return self.close(id, why, f);
            }
            // A short read drained the socket; epoll (edge) fires again on new data.
            if n < self.rbuf.len() {
                return;
            }
        }
    }

    fn consume<F: FnMut(Event<'_>)>(
        &mut self,
        id: usize,
        n: usize,
        at: Instant,
        f: &mut F,
    ) -> std::result::Result<(), CloseWhy> {
        let Some(Some(conn)) = self.conns.get_mut(id) else {
            return Ok(());
        };
        let mut cx = Cx {
            id,
            at,
            accept: &self.accept,
            rng: &mut self.rng,
            inflater: &mut self.inflater,
            rx_bytes: &mut self.rx_bytes,
            rx_messages: &mut self.rx_messages,
        };
        if conn.inbuf.is_empty() {
            let data = &self.rbuf[..n];
            let used = process(conn, data, &mut cx, f)?;
            conn.inbuf.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut conn.inbuf);
            buf.extend_from_slice(&self.rbuf[..n]);
            let used = process(conn, &buf, &mut cx, f)?;
            buf.drain(..used);
            conn.inbuf = buf;
        }
        if conn.out_pos < conn.out.len() {
            flush(conn)?;
        }
        Ok(())
    }
}

/// What `process` needs besides the connection and the bytes.
struct Cx<'a> {
    id: usize,
    at: Instant,
    accept: &'a str,
    rng: &'a mut u64,
    inflater: &'a mut Inflater,
    rx_bytes: &'a mut u64,
    rx_messages: &'a mut u64,
}

fn process<F: FnMut(Event<'_>)>(
    conn: &mut Conn,
    buf: &[u8],
    cx: &mut Cx<'_>,
    f: &mut F,
) -> std::result::Result<usize, CloseWhy> {
    let mut pos = 0;
    if conn.phase == Phase::Handshake && conn.kind == Kind::Sse {
        match parse_stream_head(buf)? {
            None => return Ok(0),
            Some(head_len) => {
                conn.phase = Phase::Open;
                f(Event::Open { id: cx.id });
                pos = head_len;
            }
        }
    } else if conn.phase == Phase::Handshake {
        match parse_upgrade_response(buf, cx.accept)? {
            None => return Ok(0),
            Some((head_len, deflate)) => {
                conn.phase = Phase::Open;
                conn.deflate = deflate;
                f(Event::Open { id: cx.id });
                pos = head_len;
            }
        }
    }
    match conn.kind {
        Kind::Ws => process_frames(conn, buf, pos, cx, f),
        Kind::Http => process_responses(buf, pos, cx.id, f),
        Kind::Sse => process_events(buf, pos, cx, f),
    }
}

/// The head length of a complete `200` event-stream response.
fn parse_stream_head(buf: &[u8]) -> std::result::Result<Option<usize>, CloseWhy> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if resp.code == Some(200) => Ok(Some(n)),
        Ok(httparse::Status::Complete(_)) => Err(CloseWhy::Status(resp.code.unwrap_or(0))),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(CloseWhy::BadResponse),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(CloseWhy::BadResponse),
    }
}

/// Complete events (up to a blank line): the data of each, comments
/// skipped. wshub sends one `data:` line per message for these payloads.
fn process_events<F: FnMut(Event<'_>)>(
    buf: &[u8],
    mut pos: usize,
    cx: &mut Cx<'_>,
    f: &mut F,
) -> std::result::Result<usize, CloseWhy> {
    while let Some(len) = buf[pos..].windows(2).position(|w| w == b"\n\n") {
        let block = &buf[pos..pos + len];
        pos += len + 2;
        if let Some(data) = block.strip_prefix(b"data: ") {
            *cx.rx_bytes += (len + 2) as u64;
            *cx.rx_messages += 1;
            f(Event::Message {
                id: cx.id,
                at: cx.at,
                data,
            });
        }
    }
    Ok(pos)
}

/// `Some(head length)` for a complete, valid 101 response.
/// The head length and whether permessage-deflate was accepted.
fn parse_upgrade_response(
    buf: &[u8],
    accept: &str,
) -> std::result::Result<Option<(usize, bool)>, CloseWhy> {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(CloseWhy::BadResponse),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(CloseWhy::BadResponse),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(CloseWhy::Status(code));
    }
    let ok = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == accept.as_bytes()
    });
    let deflate = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-extensions")
            && h.value.starts_with(b"permessage-deflate")
    });
    if ok {
        Ok(Some((head_len, deflate)))
    } else {
        Err(CloseWhy::BadAccept)
    }
}

fn process_frames<F: FnMut(Event<'_>)>(
    conn: &mut Conn,
    buf: &[u8],
    mut pos: usize,
    cx: &mut Cx<'_>,
    f: &mut F,
) -> std::result::Result<usize, CloseWhy> {
    while let Some(h) = wire::parse_head(&buf[pos..]).map_err(CloseWhy::Protocol)? {
        let start = pos + h.head_len;
        let end = start + h.payload_len;
        if end > buf.len() {
            break;
        }
        if h.mask.is_some() {
            return Err(CloseWhy::MaskedFrame);
        }
        let payload = &buf[start..end];
        if h.rsv1 && (!conn.deflate || h.opcode == wire::OP_CONT || h.opcode >= 0x8) {
            return Err(CloseWhy::BadDeflate);
        }
        if h.opcode < 0x8 {
            *cx.rx_bytes += (h.head_len + h.payload_len) as u64;
        }
        match (h.opcode, h.fin, conn.frag.as_mut()) {
            (wire::OP_TEXT | wire::OP_BINARY, true, None) => {
                *cx.rx_messages += 1;
                let data = if h.rsv1 {
                    cx.inflater.inflate(payload).ok_or(CloseWhy::BadDeflate)?
                } else {
                    payload
                };
                f(Event::Message {
                    id: cx.id,
                    at: cx.at,
                    data,
                })
            }
            (wire::OP_TEXT | wire::OP_BINARY, false, None) => {
                conn.frag = Some(payload.to_vec());
                conn.frag_deflated = h.rsv1;
            }
            (wire::OP_CONT, fin, Some(acc)) => {
                acc.extend_from_slice(payload);
                if fin {
                    *cx.rx_messages += 1;
                    let data = if conn.frag_deflated {
                        cx.inflater.inflate(acc).ok_or(CloseWhy::BadDeflate)?
                    } else {
                        acc
                    };
                    f(Event::Message {
                        id: cx.id,
                        at: cx.at,
                        data,
                    });
                    conn.frag = None;
                }
            }
            (wire::OP_PING, _, _) => {
                let m = next_rand(cx.rng).to_ne_bytes();
                wire::push_frame(
                    &mut conn.out,
                    wire::OP_PONG,
                    payload,
                    Some([m[0], m[1], m[2], m[3]]),
                );
            }
            (wire::OP_PONG, _, _) => {}
            (wire::OP_CLOSE, _, _) => {
                let code = payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                return Err(CloseWhy::CloseFrame(code));
            }
            (op, _, _) => return Err(CloseWhy::BadOpcode(op)),
        }
        pos = end;
    }
    Ok(pos)
}

fn process_responses<F: FnMut(Event<'_>)>(
    buf: &[u8],
    mut pos: usize,
    id: usize,
    f: &mut F,
) -> std::result::Result<usize, CloseWhy> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 24];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&buf[pos..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() - pos > MAX_HEAD => {
                return Err(CloseWhy::BadResponse)
            }
            Ok(httparse::Status::Partial) => return Ok(pos),
            Err(_) => return Err(CloseWhy::BadResponse),
        };
        let body_len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let end = pos + head_len + body_len;
        if end > buf.len() {
            return Ok(pos);
        }
        let status = resp.code.unwrap_or(0);
        f(Event::Response {
            id,
            status,
            body: &buf[pos + head_len..end],
        });
        pos = end;
    }
}

/// Writes queued bytes until done or `WouldBlock` (a short write only moves the cursor).
fn flush(conn: &mut Conn) -> std::result::Result<(), CloseWhy> {
    if conn.phase == Phase::Connecting {
        return Ok(());
    }
    while conn.out_pos < conn.out.len() {
        match conn.stream.write(&conn.out[conn.out_pos..]) {
            Ok(0) => return Err(CloseWhy::Eof),
            Ok(n) => conn.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CloseWhy::Io(e.kind())),
        }
    }
    conn.out.clear();
    conn.out_pos = 0;
    Ok(())
}

/// `Ok(true)` connected, `Ok(false)` still connecting.
fn connect_result(stream: &TcpStream) -> std::result::Result<bool, CloseWhy> {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Err(CloseWhy::Io(e.kind())),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(CloseWhy::Io(e.kind())),
    }
}

fn connect_from(ip: Ipv4Addr, target: SocketAddr) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    no_port_at_bind(&sock);
    sock.bind(&SocketAddr::from((ip, 0)).into())?;
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(libc::EINPROGRESS)
                || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let std_stream: std::net::TcpStream = sock.into();
    std_stream.set_nodelay(true)?;
    Ok(TcpStream::from_std(std_stream))
}

/// IP_BIND_ADDRESS_NO_PORT: choose the source port at connect() from the full
/// 4-tuple instead of searching the per-address port space at bind(). Best
/// effort: without it bind() still works, only slower with many sockets.
fn no_port_at_bind(sock: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value that outlives the call.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A non-cryptographic seed: masking keys must vary, not be secret, in a load tool.
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// xorshift64.
fn next_rand(s: &mut u64) -> u64 {
    let mut x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    x
}
