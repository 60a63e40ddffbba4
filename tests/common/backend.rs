//! A tiny HTTP/1.1 server standing in for the user's backend or identity
//! provider: it records every request and answers what the test's
//! responder says (status, body, optional delay). Loopback only, one
//! request per connection, every wait bounded; stopped on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What to answer.
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Wait this long before answering (to make the client time out).
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

type Responder = Box<dyn Fn(&Received) -> Reply + Send + Sync>;

pub struct Backend {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    responder: Arc<Mutex<Responder>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Listens on a fresh loopback port.
    pub fn start(responder: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        Backend::on(listener, responder)
    }

    /// Serves on an already bound listener.
    pub fn on(
        listener: TcpListener,
        responder: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Backend {
        let addr = listener.local_addr().expect("backend address");
        listener.set_nonblocking(true).expect("non-blocking");
        let received = Arc::new(Mutex::new(Vec::new()));
        let responder: Arc<Mutex<Responder>> = Arc::new(Mutex::new(Box::new(responder)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, responder, stop) = (received.clone(), responder.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (received, responder) = (received.clone(), responder.clone());
                            std::thread::spawn(move || serve(stream, &received, &responder));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Backend {
            addr,
            received,
            responder,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces what the backend answers from now on.
    pub fn respond_with(&self, responder: impl Fn(&Received) -> Reply + Send + Sync + 'static) {
        *self.responder.lock().unwrap() = Box::new(responder);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (bounded by `within`) until `pred` holds for the requests so far.
    #[track_caller]
    pub fn wait_for(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "backend never saw {what}; got {} requests: {:?}",
                got.len(),
                got.iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, received: &Mutex<Vec<Received>>, responder: &Mutex<Responder>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length.min(16 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request = Received {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    };
    let reply = (responder.lock().unwrap())(&request);
    received.lock().unwrap().push(request);
    std::thread::sleep(reply.delay);
    let response = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.status,
        reply.body.len(),
        reply.body
    );
    let mut stream = reader.into_inner();
    let _ = stream.write_all(response.as_bytes());
}
