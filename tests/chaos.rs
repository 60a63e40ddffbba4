//! Chaos: 1,000 recovering clients (each a user, each in one of 10 rooms)
//! under mixed broadcast / room / user traffic from in-process publishers,
//! while connections are cut with TCP resets (SO_LINGER 0) at random times
//! and resumed with `?since=` and join's `since`. Every message carries its
//! stream offset, and the publishers number each stream 1, 2, 3, … in the
//! content too, so the log to check against is the content itself: per
//! client and stream, every offset from its first welcome to the
//! publisher's last is seen exactly once and in order, or the gap is
//! covered by an explicit `ok:false`.
//!
//! The short form runs in the suite (60 msg/s, a cut per client every ~8 s,
//! until 1,500 cuts or 25 s); the bench form is
//! `WSHUB_CHAOS_RECONNECTS=10000 WSHUB_CHAOS_RATE=300 WSHUB_CHAOS_CUT_MS=3000
//! WSHUB_CHAOS_MAX_SECS=120 cargo test --release --test chaos -- --nocapture`
//! (BENCHMARKS.md).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chaos::{env, split_position, Rng, Tally, Track};
use common::{test_config, TestServer};
use serde_json::{json, Value};
use socket2::{Domain, SockRef, Socket, Type};
use tungstenite::protocol::WebSocket;
use tungstenite::Message as WsMessage;
use wshub::{Handle, Message};

const CLIENTS: usize = 1000;
const ROOMS: usize = 10;
const WORKERS: usize = 8;
/// Source addresses the clients spread over (127.0.0.1 ..= 127.0.0.N).
const SOURCES: u8 = 8;

struct Client {
    id: usize,
    ws: Option<WebSocket<TcpStream>>,
    /// a, u, r
    tracks: [Track; 3],
    tally: Tally,
}

impl Client {
    fn user(&self) -> String {
        format!("c{}", self.id)
    }

    fn room(&self) -> String {
        format!("room{}", self.id % ROOMS)
    }

    fn connect(&mut self, addr: SocketAddr) {
        let mut path = format!("/api/ws/connect?user_id={}&recover=1", self.user());
        let since: Vec<String> = self.tracks[..2]
            .iter()
            .zip(["a", "u"])
            .filter(|(t, _)| t.known)
            .map(|(t, kind)| format!("{kind}:{}:{}", t.epoch, t.last))
            .collect();
        if !since.is_empty() {
            path.push_str(&format!("&since={}", since.join(",")));
        }
        let source: SocketAddr = format!("127.0.0.{}:0", 1 + (self.id % SOURCES as usize))
            .parse()
            .unwrap();
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.bind(&source.into()).unwrap();
        socket.connect(&addr.into()).expect("connect");
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let url = format!("ws://{addr}{path}");
        let (mut ws, _) = tungstenite::client(url, stream).expect("handshake");
        let room_since = self.tracks[2].known.then(|| {
            let t = &self.tracks[2];
            format!("r:{}:{}", t.epoch, t.last)
        });
        let join = match &room_since {
            Some(since) => json!({"type": "join", "room": self.room(), "since": since}),
            None => json!({"type": "join", "room": self.room()}),
        };
        ws.send(WsMessage::text(join.to_string())).expect("join");
        ws.get_ref().set_nonblocking(true).unwrap();
        for (i, t) in self.tracks.iter_mut().enumerate() {
            t.welcome = None;
            t.resuming = t.known && (i < 2 || room_since.is_some());
        }
        self.ws = Some(ws);
    }

    /// Cuts the connection with a TCP reset.
    fn cut(&mut self) {
        if let Some(ws) = self.ws.take() {
            let _ = SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
            drop(ws);
            self.tally.reconnects += 1;
        }
    }

    fn stream_index(kind: &str) -> Option<usize> {
        match kind {
            "a" => Some(0),
            "u" => Some(1),
            "r" => Some(2),
            _ => None,
        }
    }

    fn on_message(&mut self, m: &Value) {
        match m["type"].as_str() {
            Some("welcome") => {
                for pos in m["content"]
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.values())
                {
                    let Some((kind, epoch, offset)) = pos.as_str().and_then(split_position) else {
                        continue;
                    };
                    let Some(i) = Client::stream_index(kind) else {
                        continue;
                    };
                    let t = &mut self.tracks[i];
                    t.welcome = Some((epoch.to_owned(), offset));
                    if !t.resuming {
                        (t.epoch, t.last, t.known) = (epoch.to_owned(), offset, true);
                    }
                }
            }
            Some("recovered") => {
                let results: Vec<(usize, &Value)> = if m["room"].is_string() {
                    vec![(2, &m["content"])]
                } else {
                    ["a", "u"]
                        .iter()
                        .enumerate()
                        .filter(|(_, k)| !m["content"][**k].is_null())
                        .map(|(i, k)| (i, &m["content"][*k]))
                        .collect()
                };
                for (i, result) in results {
                    let t = &mut self.tracks[i];
                    t.resuming = false;
                    let Some((epoch, offset)) = t.welcome.clone() else {
                        self.tally.wrong_content += 1;
                        continue;
                    };
                    if result["ok"] == true {
                        self.tally.resumed_ok += 1;
                        self.tally.replayed += result["replayed"].as_u64().unwrap_or(0);
                        // Replayed up to the welcome's position exactly.
                        if t.epoch != epoch || t.last != offset {
                            self.tally.lost += offset.saturating_sub(t.last);
                        }
                    } else {
                        self.tally.declared_failed += 1;
                    }
                    (t.epoch, t.last) = (epoch, offset);
                }
            }
            Some(kind @ ("a" | "u" | "r")) => {
                self.tally.received += 1;
                let Some((pkind, epoch, offset)) = m["pos"].as_str().and_then(split_position)
                else {
                    self.tally.wrong_content += 1;
                    return;
                };
                let i = Client::stream_index(pkind).unwrap_or(0);
                if pkind != kind
                    || m["content"].as_u64() != Some(offset)
                    || (kind == "r" && m["room"] != self.room().as_str())
                {
                    self.tally.wrong_content += 1;
                }
                let t = &mut self.tracks[i];
                if !t.known || t.epoch != epoch {
                    self.tally.wrong_content += 1;
                    return;
                }
                if offset <= t.last {
                    self.tally.duplicated += 1;
                    return;
                }
                if offset > t.last + 1 {
                    self.tally.lost += offset - t.last - 1;
                    self.tally.misordered += 1;
                }
                t.last = offset;
            }
            _ => {}
        }
    }

    /// Reads what is there; false when the connection ended (reconnect).
    fn poll(&mut self) -> Result<usize, ()> {
        let Some(ws) = self.ws.as_mut() else {
            return Err(());
        };
        let mut got = Vec::new();
        let ended = loop {
            match ws.read() {
                Ok(WsMessage::Text(t)) => got.push(t.as_str().to_owned()),
                Ok(WsMessage::Close(_)) => break true,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break false
                }
                Err(_) => break true,
            }
        };
        let n = got.len();
        for text in got {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            self.on_message(&value);
        }
        if ended {
            self.ws = None;
            self.tally.reconnects += 1;
            self.tally.ended += 1;
            return Err(());
        }
        Ok(n)
    }
}

/// Last offset per stream as published: a, then per user, then per room.
struct Published {
    all: AtomicU64,
    users: Vec<AtomicU64>,
    rooms: Vec<AtomicU64>,
}

fn publish(handle: &Handle, what: impl Fn() -> Result<(), wshub::HandleError>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while what().is_err() {
        assert!(Instant::now() < deadline, "command queue stuck");
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = handle;
}

fn publisher(handle: Handle, published: Arc<Published>, stop: Arc<AtomicBool>, rate: u64) {
    let mut rng = Rng(7);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // A quarter broadcasts, a quarter rooms, half users.
        match rng.below(4) {
            0 => {
                let n = published.all.fetch_add(1, Ordering::Relaxed) + 1;
                publish(&handle, || handle.broadcast(&Message::new("a", json!(n))));
            }
            1 => {
                let r = rng.below(ROOMS as u64) as usize;
                let n = published.rooms[r].fetch_add(1, Ordering::Relaxed) + 1;
                let room = format!("room{r}");
                publish(&handle, || {
                    handle.broadcast_to_room(&room, &Message::new("r", json!(n)))
                });
            }
            _ => {
                let u = rng.below(CLIENTS as u64) as usize;
                let n = published.users[u].fetch_add(1, Ordering::Relaxed) + 1;
                let user = format!("c{u}");
                publish(&handle, || {
                    handle.send_to_user(&user, &Message::new("u", json!(n)))
                });
            }
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

#[test]
fn chaos_resets_lose_and_repeat_nothing() {
    let reconnect_target = env("WSHUB_CHAOS_RECONNECTS", 1500);
    let rate = env("WSHUB_CHAOS_RATE", 60);
    let max_secs = env("WSHUB_CHAOS_MAX_SECS", 25);
    let cut_ms = env("WSHUB_CHAOS_CUT_MS", 8000);
    let mut config = test_config();
    config.history.size = 2000;
    config.websocket.max_connections = CLIENTS + 100;
    let server = TestServer::start(config);
    let addr = server.addr;
    let published = Arc::new(Published {
        all: AtomicU64::new(0),
        users: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        rooms: (0..ROOMS).map(|_| AtomicU64::new(0)).collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicU64::new(0));
    let draining = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicU64::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (published, cuts, draining, connected, results) = (
                published.clone(),
                cuts.clone(),
                draining.clone(),
                connected.clone(),
                results.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(1000 + w as u64);
                let mut clients: Vec<Client> = (w..CLIENTS)
                    .step_by(WORKERS)
                    .map(|id| Client {
                        id,
                        ws: None,
                        tracks: Default::default(),
                        tally: Tally::default(),
                    })
                    .collect();
                for c in &mut clients {
                    c.connect(addr);
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                // Cut each client about every `cut_ms` on average.
                let mut next_cut: Vec<Instant> = clients
                    .iter()
                    .map(|_| Instant::now() + Duration::from_millis(rng.below(2 * cut_ms)))
                    .collect();
                let drain_deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let mut busy = 0;
                    for (c, cut_at) in clients.iter_mut().zip(next_cut.iter_mut()) {
                        match c.poll() {
                            Ok(n) => busy += n,
                            Err(()) => {
                                c.connect(addr);
                                busy += 1;
                                continue;
                            }
                        }
                        if !draining.load(Ordering::Relaxed)
                            && *cut_at <= Instant::now()
                            && c.tracks.iter().all(|t| t.known)
                        {
                            *cut_at = Instant::now() + Duration::from_millis(rng.below(2 * cut_ms));
                            c.cut();
                            cuts.fetch_add(1, Ordering::Relaxed);
                            c.connect(addr);
                        }
                    }
                    if draining.load(Ordering::Relaxed) {
                        // Done when every stream reached the published end.
                        let done = clients.iter().all(|c| {
                            let want = [
                                published.all.load(Ordering::Relaxed),
                                published.users[c.id].load(Ordering::Relaxed),
                                published.rooms[c.id % ROOMS].load(Ordering::Relaxed),
                            ];
                            c.tracks
                                .iter()
                                .zip(want)
                                .all(|(t, w)| !t.resuming && t.last >= w)
                        });
                        if done || Instant::now() > drain_deadline {
                            break;
                        }
                    }
                    if busy == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                let mut out = Vec::new();
                for c in clients {
                    let want = [
                        published.all.load(Ordering::Relaxed),
                        published.users[c.id].load(Ordering::Relaxed),
                        published.rooms[c.id % ROOMS].load(Ordering::Relaxed),
                    ];
                    let short: u64 = c
                        .tracks
                        .iter()
                        .zip(want)
                        .map(|(t, w)| w.saturating_sub(t.last))
                        .sum();
                    let mut tally = c.tally;
                    tally.lost += short;
                    out.push(tally);
                }
                results.lock().unwrap().extend(out);
            })
        })
        .collect();
    // Everyone connected before traffic starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Relaxed) < CLIENTS as u64 {
        assert!(Instant::now() < deadline, "clients never all connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let publisher = {
        let (handle, published, stop) = (server.handle.clone(), published.clone(), stop.clone());
        std::thread::spawn(move || publisher(handle, published, stop, rate))
    };
    let traffic_start = Instant::now();
    while cuts.load(Ordering::Relaxed) < reconnect_target
        && traffic_start.elapsed() < Duration::from_secs(max_secs)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let traffic_secs = traffic_start.elapsed().as_secs_f64();
    draining.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let mut total = Tally::default();
    for t in results.lock().unwrap().iter() {
        total.add(t);
    }
    let users: u64 = published
        .users
        .iter()
        .map(|u| u.load(Ordering::Relaxed))
        .sum();
    let rooms: u64 = published
        .rooms
        .iter()
        .map(|r| r.load(Ordering::Relaxed))
        .sum();
    let report: HashMap<&str, Value> = HashMap::from([
        ("reset_cuts", json!(cuts.load(Ordering::Relaxed))),
        ("reconnects", json!(total.reconnects)),
        ("server_ended", json!(total.ended)),
        ("traffic_secs", json!((traffic_secs * 10.0).round() / 10.0)),
        (
            "published_all",
            json!(published.all.load(Ordering::Relaxed)),
        ),
        ("published_users", json!(users)),
        ("published_rooms", json!(rooms)),
        ("received", json!(total.received)),
        ("replayed", json!(total.replayed)),
        ("resumed_ok_streams", json!(total.resumed_ok)),
        ("declared_failed_streams", json!(total.declared_failed)),
        ("lost", json!(total.lost)),
        ("duplicated", json!(total.duplicated)),
        ("misordered", json!(total.misordered)),
        ("wrong_content", json!(total.wrong_content)),
        ("total_secs", json!(started.elapsed().as_secs())),
    ]);
    eprintln!("chaos: {}", serde_json::to_string(&report).unwrap());
    assert!(
        cuts.load(Ordering::Relaxed) >= reconnect_target.min(500),
        "too few cuts"
    );
    assert!(total.replayed > 0, "nothing was ever replayed: {report:?}");
    // Lost counts only gaps not covered by an explicit ok:false.
    assert_eq!(
        (
            total.lost,
            total.duplicated,
            total.misordered,
            total.wrong_content
        ),
        (0, 0, 0, 0),
        "{report:?}"
    );
}
