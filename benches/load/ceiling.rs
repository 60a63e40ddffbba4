//! The built-in trivial server that measures the load client's own ceiling:
//! the same endpoints as the servers under test, with nothing but the wire
//! work. `/api/ws/connect` relays every text message to every other connect
//! session, `POST /api/ws/broadcast` sends the body to all of them,
//! `/api/ws/echo` echoes at once, and `/flood` writes pre-framed text frames as
//! fast as the socket takes them. Outbound bytes are appended per session and
//! flushed once per loop pass. Runs as a child process (the bench binary with
//! `--serve-ceiling PORT`) so its sockets do not count against the client's
//! 20,000-file limit; it ends when the bench does (PR_SET_PDEATHSIG) or after
//! a fixed lifetime. Touches only its own sockets.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::error::{BenchError, Result};
use crate::wire;

const LISTENER: Token = Token(usize::MAX);
/// The server exits on its own after this long, whatever happens.
const LIFETIME: Duration = Duration::from_secs(3 * 3600);
/// A session with more unsent bytes than this is dropped (bounded memory).
const MAX_QUEUED: usize = 32 << 20;
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Head,
    Connect,
    Echo,
    Flood { off: usize },
}

struct SConn {
    stream: TcpStream,
    st: St,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    dirty: bool,
    /// Index in `Server::members` for connect sessions.
    member: usize,
}

/// What reading a session produced for others.
enum Outcome {
    Keep,
    Close,
}

struct Server {
    conns: Vec<Option<SConn>>,
    free: Vec<usize>,
    /// Ids of `/api/ws/connect` sessions.
    members: Vec<usize>,
    dirty: Vec<usize>,
    flooding: Vec<usize>,
    rbuf: Vec<u8>,
    scratch: Vec<u8>,
    relays: Vec<(usize, Vec<u8>)>,
    flood_buf: Vec<u8>,
}

/// Serves on 127.0.0.1:`port` until killed or [`LIFETIME`] ends; pins itself to core 0.
pub fn serve(port: u16) -> Result<()> {
    crate::pin_to_core(0);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut listener = bind(addr)?;
    let mut poll = Poll::new().map_err(|e| BenchError::io("ceiling: create poll", e))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| BenchError::io("ceiling: register listener", e))?;
    let mut events = Events::with_capacity(4096);
    let mut srv = Server::new();
    let end = Instant::now() + LIFETIME;
    while Instant::now() < end {
        let timeout = if srv.flooding.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BenchError::io("ceiling: poll", e)),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                srv.accept_all(&listener, &poll);
                continue;
            }
            let id = ev.token().0;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                srv.on_readable(id);
            }
            if ev.is_writable() {
                srv.on_writable(id);
            }
        }
        srv.apply_relays();
        srv.flush_dirty();
        srv.flood_pass();
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let ctx = |e| BenchError::io(format!("ceiling: listen on {addr}"), e);
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(ctx)?;
    s.set_reuse_address(true).map_err(ctx)?;
    s.bind(&addr.into()).map_err(ctx)?;
    s.listen(4096).map_err(ctx)?;
    s.set_nonblocking(true).map_err(ctx)?;
    Ok(TcpListener::from_std(s.into()))
}

impl Server {
    fn new() -> Server {
        let mut one = Vec::new();
        let content = wire::content_string(0, 0, 100);
        let msg = format!("{{\"type\":\"chat\",\"content\":\"{content}\"}}");
        wire::push_frame(&mut one, wire::OP_TEXT, msg.as_bytes(), None);
        let flood_buf = one.repeat((64 * 1024) / one.len());
        Server {
            conns: Vec::new(),
            free: Vec::new(),
            members: Vec::new(),
            dirty: Vec::new(),
            flooding: Vec::new(),
            rbuf: vec![0; 256 * 1024],
            scratch: Vec::new(),
            relays: Vec::new(),
            flood_buf,
        }
    }

    fn accept_all(&mut self, listener: &TcpListener, poll: &Poll) {
        // Bounded per event; the listener stays readable-edge until drained, so
        // stopping early only delays the rest to the next event from new SYNs.
        for _ in 0..4096 {
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            let _ = stream.set_nodelay(true);
            let id = self.free.pop().unwrap_or(self.conns.len());
            if poll
                .registry()
                .register(
                    &mut stream,
                    Token(id),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            let c = SConn {
                stream,
                st: St::Head,
                inbuf: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                dirty: false,
                member: usize::MAX,
            };
            if id == self.conns.len() {
                self.conns.push(Some(c));
            } else {
                self.conns[id] = Some(c);
            }
        }
    }

    fn close(&mut self, id: usize) {
        if let Some(c) = self.conns.get_mut(id).and_then(Option::take) {
            if c.st == St::Connect && c.member < self.members.len() {
                self.members.swap_remove(c.member);
                if let Some(&moved) = self.members.get(c.member) {
                    if let Some(Some(m)) = self.conns.get_mut(moved) {
                        m.member = c.member;
                    }
                }
            }
            self.free.push(id);
        }
    }

    fn on_readable(&mut self, id: usize) {
        for _ in 0..64 {
            let Some(Some(c)) = self.conns.get_mut(id) else {
                return;
            };
            let n = match c.stream.read(&mut self.rbuf) {
                Ok(0) => return self.close(id),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(id),
            };
            c.inbuf.extend_from_slice(&self.rbuf[..n]);
            let mut inbuf = std::mem::take(&mut c.inbuf);
            let (used, outcome) = self.process(id, &inbuf);
            inbuf.drain(..used);
            if let Outcome::Close = outcome {
                return self.close(id);
            }
            if let Some(Some(c)) = self.conns.get_mut(id) {
                c.inbuf = inbuf;
            }
            if n < self.rbuf.len() {
                return;
            }
        }
    }

    fn on_writable(&mut self, id: usize) {
        match self.conns.get(id) {
            Some(Some(SConn {
                st: St::Flood { .. },
                ..
            })) if !self.flooding.contains(&id) => self.flooding.push(id),
            Some(Some(SConn {
                st: St::Flood { .. },
                ..
            })) => {}
            Some(Some(_)) => self.mark_dirty(id),
            _ => {}
        }
    }

    fn mark_dirty(&mut self, id: usize) {
        if let Some(Some(c)) = self.conns.get_mut(id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Parses what `id` sent; replies go to its own `out`, relays to `self.relays`.
    fn process(&mut self, id: usize, buf: &[u8]) -> (usize, Outcome) {
        let mut pos = 0;
        loop {
            let st = match self.conns.get(id) {
                Some(Some(c)) => c.st,
                _ => return (pos, Outcome::Close),
            };
            let step = match st {
                St::Head => self.process_head(id, &buf[pos..]),
                St::Connect | St::Echo => self.process_frame(id, st, &buf[pos..]),
                St::Flood { .. } => Ok(Some(buf.len() - pos)),
            };
            match step {
                Ok(Some(n)) if n > 0 => pos += n,
                Ok(_) => return (pos, Outcome::Keep),
                Err(()) => return (pos, Outcome::Close),
            }
        }
    }

    /// `Ok(Some(bytes used))`, `Ok(None)` for more input, `Err` to close.
    fn process_head(&mut self, id: usize, buf: &[u8]) -> std::result::Result<Option<usize>, ()> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(()),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(()),
        };
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let path = req.path.unwrap_or("");
        let key = header("sec-websocket-key").map(<[u8]>::to_vec);
        let clen: usize = header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
            .unwrap_or(0);
        let is_post = req.method == Some("POST");
        let route = path.split('?').next().unwrap_or("");
        if let Some(key) = key {
            let st = match route {
                "/api/ws/connect" => St::Connect,
                "/api/ws/echo" => St::Echo,
                "/flood" => St::Flood { off: 0 },
                _ => return Err(()),
            };
            let accept = tungstenite::handshake::derive_accept_key(&key);
            self.upgrade(id, st, &accept);
            return Ok(Some(head_len));
        }
        if is_post && route == "/api/ws/broadcast" {
            let Some(body) = buf.get(head_len..head_len + clen) else {
                return if clen > 1 << 20 { Err(()) } else { Ok(None) };
            };
            let mut frame = Vec::with_capacity(body.len() + 4);
            wire::push_frame(&mut frame, wire::OP_TEXT, body, None);
            let sent = self.members.len();
            self.relays.push((usize::MAX, frame));
            self.reply(id, 200, &format!("{{\"sent\":{sent}}}"));
            return Ok(Some(head_len + clen));
        }
        self.reply(id, 404, "{\"error\":\"not found\"}");
        Ok(Some(head_len + clen))
    }

    fn upgrade(&mut self, id: usize, st: St, accept: &str) {
        let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
        let member = self.members.len();
        if let Some(Some(c)) = self.conns.get_mut(id) {
            c.st = st;
            c.out.extend_from_slice(resp.as_bytes());
            if st == St::Connect {
                c.member = member;
            }
        }
        match st {
            St::Connect => self.members.push(id),
            St::Flood { .. } => self.flooding.push(id),
            _ => {}
        }
        self.mark_dirty(id);
    }

    fn reply(&mut self, id: usize, status: u16, body: &str) {
        let reason = if status == 200 { "OK" } else { "Not Found" };
        let resp = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if let Some(Some(c)) = self.conns.get_mut(id) {
            c.out.extend_from_slice(resp.as_bytes());
        }
        self.mark_dirty(id);
    }

    fn process_frame(
        &mut self,
        id: usize,
        st: St,
        buf: &[u8],
    ) -> std::result::Result<Option<usize>, ()> {
        let Some(h) = wire::parse_head(buf).map_err(|_| ())? else {
            return Ok(None);
        };
        let end = h.head_len + h.payload_len;
        if end > buf.len() {
            return Ok(None);
        }
        let key = h.mask.ok_or(())?;
        self.scratch.clear();
        self.scratch.extend_from_slice(&buf[h.head_len..end]);
        wire::apply_mask(&mut self.scratch, key);
        let reply_op = match (h.opcode, st) {
            (wire::OP_TEXT | wire::OP_BINARY, St::Echo) => Some(h.opcode),
            (wire::OP_TEXT, St::Connect) => {
                let mut frame = Vec::with_capacity(self.scratch.len() + 4);
                wire::push_frame(&mut frame, wire::OP_TEXT, &self.scratch, None);
                self.relays.push((id, frame));
                None
            }
            (wire::OP_PING, _) => Some(wire::OP_PONG),
            (wire::OP_CLOSE, _) => return Err(()),
            _ => None,
        };
        if let Some(op) = reply_op {
            if let Some(Some(c)) = self.conns.get_mut(id) {
                wire::push_frame(&mut c.out, op, &self.scratch, None);
            }
            self.mark_dirty(id);
        }
        Ok(Some(end))
    }

    fn apply_relays(&mut self) {
        let relays = std::mem::take(&mut self.relays);
        for (from, frame) in &relays {
            for i in 0..self.members.len() {
                let m = self.members[i];
                if m == *from {
                    continue;
                }
                if let Some(Some(c)) = self.conns.get_mut(m) {
                    c.out.extend_from_slice(frame);
                    if !c.dirty {
                        c.dirty = true;
                        self.dirty.push(m);
                    }
                }
            }
        }
        self.relays = relays;
        self.relays.clear();
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let Some(Some(c)) = self.conns.get_mut(id) else {
                continue;
            };
            c.dirty = false;
            let broken = write_out(c).is_err() || c.out.len() - c.out_pos > MAX_QUEUED;
            if broken {
                self.close(id);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn flood_pass(&mut self) {
        let ids = std::mem::take(&mut self.flooding);
        for &id in &ids {
            let Some(Some(c)) = self.conns.get_mut(id) else {
                continue;
            };
            let St::Flood { off } = c.st else { continue };
            if write_out(c).is_err() {
                self.close(id);
                continue;
            }
            if c.out_pos < c.out.len() {
                continue;
            }
            match flood(&mut c.stream, &self.flood_buf, off) {
                Ok((off, more)) => {
                    c.st = St::Flood { off };
                    if more {
                        self.flooding.push(id);
                    }
                }
                Err(()) => self.close(id),
            }
        }
    }
}

/// Writes pre-framed bytes from `off`, at most 16 writes; `(new off, still writable)`.
fn flood(
    stream: &mut TcpStream,
    buf: &[u8],
    mut off: usize,
) -> std::result::Result<(usize, bool), ()> {
    for _ in 0..16 {
        match stream.write(&buf[off..]) {
            Ok(0) => return Err(()),
            Ok(n) => off = (off + n) % buf.len(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((off, false)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok((off, true))
}

fn write_out(c: &mut SConn) -> std::result::Result<(), ()> {
    while c.out_pos < c.out.len() {
        match c.stream.write(&c.out[c.out_pos..]) {
            Ok(0) => return Err(()),
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    c.out.clear();
    c.out_pos = 0;
    Ok(())
}
