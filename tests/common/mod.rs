//! Shared test harness: a real wshub server on an ephemeral loopback port
//! (in-process, on its own thread), real tungstenite clients, raw TCP and a
//! tiny HTTP/1.1 client. Every wait is bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocket;
use tungstenite::Message as WsMessage;
use wshub::{Config, Handle, Mode, Server};

pub mod backend;
pub mod chaos;
pub mod cluster;
pub mod sse;
pub mod tls;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config for tests: loopback, port 0, echo on.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.app.host = "127.0.0.1".into();
    config.app.port = 0;
    config.websocket.port = 0;
    config.websocket.echo = true;
    config
}

/// A running server; shut down (and joined) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub handle: Handle,
    thread: Option<JoinHandle<Result<(), wshub::ServerError>>>,
}

impl TestServer {
    pub fn start(config: Config) -> TestServer {
        TestServer::start_with(config, Mode::Integrated, |s| s)
    }

    pub fn start_mode(config: Config, mode: Mode) -> TestServer {
        TestServer::start_with(config, mode, |s| s)
    }

    /// Starts with a customised server (hooks, ...).
    pub fn start_with(
        config: Config,
        mode: Mode,
        customise: impl FnOnce(Server) -> Server,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let server = Server::from_listener(listener, config, mode).expect("server");
        TestServer::run(customise(server))
    }

    /// Runs a server bound some other way (`Server::bind`, ...).
    pub fn run(server: Server) -> TestServer {
        let addr = server.local_addr();
        let handle = server.handle();
        let thread = std::thread::spawn(move || server.run());
        TestServer {
            addr,
            handle,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Opens a chat session as `user` (anonymous with `None`).
    pub fn connect(&self, user: Option<&str>) -> Client {
        let path = match user {
            Some(u) => format!("/api/ws/connect?user_id={u}"),
            None => "/api/ws/connect".to_owned(),
        };
        self.connect_path(&path)
    }

    pub fn connect_path(&self, path: &str) -> Client {
        connect_at(self.addr, path)
    }

    /// Waits until `/api/ws/status` shows `count` sessions.
    pub fn wait_online(&self, count: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, body) = http(self.addr, "GET", "/api/ws/status", &[], "");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["online_count"] == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "online_count never reached {count}: {body}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Shuts down and waits for `run` to return.
    pub fn stop(mut self) -> Result<(), wshub::ServerError> {
        let _ = self.handle.shutdown();
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("server thread panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.shutdown();
            let _ = thread.join();
        }
    }
}

/// Opens a WebSocket to `path` (with its query) on the server at `addr`,
/// reads time out after [`WAIT`]: what every test's server or node
/// connects through.
pub fn connect_at(addr: SocketAddr, path: &str) -> Client {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let (ws, _) =
        tungstenite::client(format!("ws://{addr}{path}"), stream).expect("websocket handshake");
    Client { ws }
}

/// A tungstenite client over a blocking socket with a read timeout.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text)).expect("send");
    }

    pub fn send_json(&mut self, value: serde_json::Value) {
        self.send_text(&value.to_string());
    }

    /// Next text message as JSON (Pings are answered by tungstenite itself).
    pub fn recv_json(&mut self) -> serde_json::Value {
        let text = self.recv_text();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    pub fn recv_text(&mut self) -> String {
        loop {
            match self.ws.read().expect("read") {
                WsMessage::Text(t) => return t.as_str().to_owned(),
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// Sends an app-level ping and returns everything received before its pong:
    /// proves the server processed all earlier messages from this client.
    pub fn sync(&mut self) -> Vec<serde_json::Value> {
        let nonce = format!("sync-{:?}", Instant::now());
        self.send_json(serde_json::json!({"type": "ping", "content": nonce}));
        let mut before = Vec::new();
        loop {
            let v = self.recv_json();
            if v["type"] == "pong" && v["content"] == nonce.as_str() {
                return before;
            }
            before.push(v);
        }
    }

    /// Asserts nothing arrives within `for_ms`.
    pub fn expect_silence(&mut self, for_ms: u64) {
        self.ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(for_ms)))
            .unwrap();
        match self.ws.read() {
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    }

    /// Reads until the server's Close; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.ws.read() {
                Ok(WsMessage::Close(Some(frame))) => return frame.code.into(),
                Ok(WsMessage::Close(None)) => return 1005,
                Ok(_) => continue,
                Err(e) => panic!("connection ended without Close: {e}"),
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.ws.read().is_err() {
                return;
            }
        }
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns
/// status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    read_response(&mut reader)
}

/// Reads one response (status line, headers, Content-Length body) from `reader`.
pub fn read_response(reader: &mut impl BufRead) -> (u16, String) {
    let (status, _headers, body) = read_full_response(reader);
    (status, body)
}

/// Status and lower-cased headers of one response head.
pub fn read_head(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    (status, headers)
}

/// Status, lower-cased headers and body of one response.
pub fn read_full_response(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>, String) {
    let (status, headers) = read_head(reader);
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (
        status,
        headers,
        String::from_utf8(body).expect("utf-8 body"),
    )
}

/// Raw TCP: sends `bytes` and reads until the server closes (or `WAIT`).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// A masked client frame, built by hand for malformed-input tests.
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(first_byte, [0x12, 0x34, 0x56, 0x78], payload)
}

/// A client frame with the given first byte (FIN, RSV, opcode) and mask.
pub fn masked_frame(first_byte: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
    out
}

/// The upgrade request for `path`, as raw bytes.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Parses the server frames in `bytes` after a 101 head: `(opcode, payload)`.
pub fn server_frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let start = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| p + 4);
    let mut at = start;
    let mut frames = Vec::new();
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let mut len = (bytes[at + 1] & 0x7f) as usize;
        at += 2;
        if len == 126 {
            len = u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
            at += 2;
        } else if len == 127 {
            len = u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            at += 8;
        }
        if at + len > bytes.len() {
            break;
        }
        frames.push((opcode, bytes[at..at + len].to_vec()));
        at += len;
    }
    frames
}

/// Holds the event loop inside a hook until the test opens it, so a test
/// can act while the loop is provably busy. Every wait is bounded: a hook
/// left closed gives up after `GATE_LIMIT`, so a failing test cannot hang
/// the server.
#[derive(Clone, Default)]
pub struct Gate {
    state: std::sync::Arc<(std::sync::Mutex<(bool, bool)>, std::sync::Condvar)>,
}

/// Longest a hook waits in [`Gate::hold`].
pub const GATE_LIMIT: Duration = Duration::from_secs(30);

impl Gate {
    /// On the loop thread: says it has entered, then waits until opened.
    pub fn hold(&self) {
        let (lock, changed) = &*self.state;
        let mut state = lock.lock().unwrap();
        state.0 = true;
        changed.notify_all();
        let (_state, _) = changed
            .wait_timeout_while(state, GATE_LIMIT, |(_, open)| !*open)
            .unwrap();
    }

    /// Waits (at most `WAIT`) until the loop is inside [`Gate::hold`].
    pub fn wait_entered(&self) {
        let (lock, changed) = &*self.state;
        let state = lock.lock().unwrap();
        let (state, _) = changed
            .wait_timeout_while(state, WAIT, |(entered, _)| !*entered)
            .unwrap();
        assert!(state.0, "the loop never entered the gate");
    }

    /// Lets the held hook return (and every later `hold` pass at once).
    pub fn open(&self) {
        let (lock, changed) = &*self.state;
        lock.lock().unwrap().1 = true;
        changed.notify_all();
    }
}
