//! History in a cluster (docs/history.md, docs/protocol.md
//! section 12): real `wshub` processes over a private `redis-server` on a
//! free loopback port (stopped by PID), real clients. Resume on another
//! node (exact, in order, then `recovered`), the seam under continuous
//! traffic, `ok:false` for an overflowed stream, entries past the ttl, a
//! foreign position, a flushed Redis and a Redis that is down (a hung one:
//! `ok:false` or 1013, never silence), room `since` across nodes, and
//! the two-node chaos test in its short form: clients cut with TCP resets
//! and resumed on the other node lose and repeat nothing.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::chaos::{env, split_position, Rng, Tally, Track};
use common::cluster::{spawn_wshub, wait_for, Redis};
use common::sse::{request, Item, Stream};
use common::{http, Client, WAIT};
use serde_json::{json, Value};
use socket2::SockRef;
use tungstenite::protocol::WebSocket;
use tungstenite::Message as WsMessage;

/// One `wshub` process with history on.
struct Node {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Node {
    fn start(id: &str, redis: &Redis, size: usize) -> Node {
        Node::start_ttl(id, redis, size, "2m")
    }

    fn start_ttl(id: &str, redis: &Redis, size: usize, ttl: &str) -> Node {
        Node::start_with(id, redis, size, ttl, "", "")
    }

    /// A node with more config lines (`websocket`: keys of that section;
    /// `extra`: keys of `cluster`, or whole sections).
    fn start_with(
        id: &str,
        redis: &Redis,
        size: usize,
        ttl: &str,
        websocket: &str,
        extra: &str,
    ) -> Node {
        let spawned = spawn_wshub("chist", |port| {
            format!(
                "app:\n  host: \"127.0.0.1\"\n  port: {port}\n  demo: false\n\
                 log:\n  level: info\n\
                 websocket:\n  shutdown_timeout: 2s\n  max_connections: 2000\n{websocket}\
                 history:\n  size: {size}\n  ttl: {ttl}\n\
                 cluster:\n  redis: \"{}\"\n  node_id: \"{id}\"\n  presence_ttl: 2s\n  channel_prefix: \"h\"\n  secret: \"s3cret\"\n{extra}",
                redis.url()
            )
        });
        let node = Node {
            child: Some(spawned.child),
            addr: spawned.addr,
            dir: spawned.dir,
        };
        wait_for(WAIT, "the node to join", || node.healthy().then_some(()));
        node
    }

    fn healthy(&self) -> bool {
        common::cluster::cluster_healthy(self.addr)
    }

    fn post(&self, path: &str, body: Value) -> u16 {
        http(self.addr, "POST", path, &[], &body.to_string()).0
    }

    fn broadcast(&self, n: u64) {
        assert_eq!(
            self.post("/api/ws/broadcast", json!({"type": "news", "content": n})),
            200
        );
    }

    fn send(&self, user: &str, n: u64) {
        assert_eq!(
            self.post(
                "/api/ws/send",
                json!({"type": "dm", "to": user, "content": n})
            ),
            200
        );
    }

    fn to_room(&self, room: &str, n: u64) {
        assert_eq!(
            self.post(
                "/api/ws/broadcast",
                json!({"type": "talk", "room": room, "content": n})
            ),
            200
        );
    }

    fn metric(&self, name: &str) -> u64 {
        common::cluster::metric(self.addr, name)
    }

    fn connect(&self, query: &str) -> Client {
        common::connect_at(self.addr, &format!("/api/ws/connect?{query}"))
    }

    /// Opens an event stream (`/api/ws/sse?<query>`) with `headers`.
    fn sse(&self, query: &str, headers: &[(&str, &str)]) -> Stream<TcpStream> {
        let path = format!("/api/ws/sse?{query}");
        let stream = Stream::open(request(self.addr, &path, headers));
        assert_eq!(stream.status, 200, "{path}");
        stream
    }

    /// Connects with `query` and returns the client and its welcome.
    fn welcome(&self, query: &str) -> (Client, Value) {
        let mut client = self.connect(query);
        let welcome = client.recv_json();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (client, welcome)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads until `recovered`; returns the messages before it and it.
fn until_recovered(client: &mut Client) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let v = client.recv_json();
        if v["type"] == "recovered" {
            return (before, v);
        }
        before.push(v);
    }
}

/// Reads `n` messages.
fn take(client: &mut Client, n: usize) -> Vec<Value> {
    (0..n).map(|_| client.recv_json()).collect()
}

fn contents(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["content"].as_u64().unwrap_or(u64::MAX))
        .collect()
}

fn split(pos: &Value) -> (String, String, u64) {
    let text = pos
        .as_str()
        .unwrap_or_else(|| panic!("not a position: {pos}"));
    let mut parts = text.splitn(3, ':');
    let kind = parts.next().unwrap().to_owned();
    let epoch = parts.next().unwrap().to_owned();
    (kind, epoch, parts.next().unwrap().parse().unwrap())
}

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| split(&m["pos"]).2).collect()
}

/// The next event of a stream (comments skipped): its name, id and JSON.
fn next_event(stream: &mut Stream<TcpStream>) -> (String, Option<String>, Value) {
    loop {
        match stream.next_item() {
            Some(Item::Event { name, id, data }) => {
                let value = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {data}"));
                return (name, id, value);
            }
            Some(Item::Comment(_)) => continue,
            None => panic!("stream ended while an event was expected"),
        }
    }
}

/// Waits until some node receives the room's channel.
fn room_subscribed(redis: &Redis, room: &str) {
    wait_for(WAIT, "the room's subscription", || {
        (redis.subscribers(&format!("h:room:{room}")) > 0).then_some(())
    });
}

#[test]
fn a_client_resumes_on_another_node_exactly_and_in_order() {
    let redis = Redis::start();
    let a = Node::start("a", &redis, 50);
    let b = Node::start("b", &redis, 50);
    let (mut ann, welcome) = a.welcome("user_id=ann&recover=1");
    let (_, epoch_a, start_a) = split(&welcome["content"]["a"]);
    let (_, epoch_u, start_u) = split(&welcome["content"]["u"]);
    // A session that did not ask sees messages as without history.
    let mut plain = a.connect("user_id=bob");
    b.broadcast(1);
    a.send("ann", 2);
    let live = take(&mut ann, 2);
    assert_eq!(contents(&live), [1, 2]);
    assert_eq!(
        split(&live[0]["pos"]),
        ("a".into(), epoch_a.clone(), start_a + 1)
    );
    assert_eq!(
        split(&live[1]["pos"]),
        ("u".into(), epoch_u.clone(), start_u + 1)
    );
    let seen = plain.recv_json();
    assert_eq!(seen, json!({"type": "news", "content": 1}), "no pos for it");
    ann.close();
    // Missed meanwhile, published on both nodes.
    for n in 3..8 {
        [&a, &b][n as usize % 2].broadcast(n);
    }
    for n in 8..11 {
        [&a, &b][n as usize % 2].send("ann", n);
    }
    let since = format!("a:{epoch_a}:{},u:{epoch_u}:{}", start_a + 1, start_u + 1);
    let (mut ann, welcome) = b.welcome(&format!("user_id=ann&since={since}"));
    assert_eq!(split(&welcome["content"]["a"]).2, start_a + 6);
    assert_eq!(split(&welcome["content"]["u"]).2, start_u + 4);
    let (replayed, recovered) = until_recovered(&mut ann);
    assert_eq!(contents(&replayed), [3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(
        offsets(&replayed),
        [
            start_a + 2,
            start_a + 3,
            start_a + 4,
            start_a + 5,
            start_a + 6,
            start_u + 2,
            start_u + 3,
            start_u + 4
        ]
    );
    assert_eq!(
        recovered["content"],
        json!({"a": {"ok": true, "replayed": 5}, "u": {"ok": true, "replayed": 3}})
    );
    // Then live traffic, from either node, continues the streams.
    a.broadcast(11);
    let next = ann.recv_json();
    assert_eq!(next["content"], 11);
    assert_eq!(split(&next["pos"]).2, start_a + 7);
    assert!(ann.sync().is_empty(), "nothing repeated");
    assert_eq!(b.metric("wshub_history_replayed_total"), 8);
    assert_eq!(b.metric("wshub_history_resumes_ok_total"), 2);
    // What Redis holds: one stream and one hash per audience.
    let len: i64 = redis.query(redis::cmd("XLEN").arg("h:h:all")).unwrap();
    assert_eq!(len, 7);
    let ttl: i64 = redis
        .query(redis::cmd("PTTL").arg("h:hm:user:ann"))
        .unwrap();
    assert!(ttl > 0, "the hash expires: {ttl}");
}

#[test]
fn the_seam_under_continuous_traffic_loses_and_repeats_nothing() {
    let redis = Redis::start();
    let nodes = [
        Node::start("a", &redis, 1000),
        Node::start("b", &redis, 1000),
    ];
    let (mut client, welcome) = nodes[0].welcome("recover=1");
    let (_, epoch, mut last) = split(&welcome["content"]["a"]);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    // The publisher stays at most 500 messages ahead of what the client has
    // seen, half of the 1,000 kept: under a loaded machine a resume may take
    // long enough for an unthrottled publisher to push the missed range out
    // of history (then `ok:false` would be the right answer, not a seam bug).
    let seen = Arc::new(AtomicU64::new(0));
    let addrs = [nodes[0].addr, nodes[1].addr];
    let publisher = {
        let (stop, sent, seen) = (stop.clone(), sent.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                if n >= seen.load(Ordering::Relaxed) + 500 {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                n += 1;
                let body = json!({"type": "news", "content": n}).to_string();
                let (status, _) = http(
                    addrs[n as usize % 2],
                    "POST",
                    "/api/ws/broadcast",
                    &[],
                    &body,
                );
                assert_eq!(status, 200);
                sent.store(n, Ordering::Relaxed);
            }
        })
    };
    let mut received = Vec::new();
    let started = Instant::now();
    let mut reconnects = 0;
    while started.elapsed() < Duration::from_secs(4) {
        // A few live messages, then resume on the other node.
        for m in take(&mut client, 5) {
            let (_, e, offset) = split(&m["pos"]);
            assert_eq!(e, epoch);
            received.push((offset, m["content"].as_u64().unwrap()));
            last = offset;
        }
        seen.store(last, Ordering::Relaxed);
        drop(client);
        reconnects += 1;
        let node = &nodes[reconnects % 2];
        let (next, welcome) = node.welcome(&format!("since=a:{epoch}:{last}"));
        client = next;
        let (replayed, recovered) = until_recovered(&mut client);
        assert_eq!(recovered["content"]["a"]["ok"], true, "{recovered}");
        for m in &replayed {
            received.push((split(&m["pos"]).2, m["content"].as_u64().unwrap()));
        }
        last = replayed.last().map_or(last, |m| split(&m["pos"]).2);
        seen.store(last, Ordering::Relaxed);
        assert_eq!(
            split(&welcome["content"]["a"]).2,
            last,
            "replayed up to the welcome"
        );
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let total = sent.load(Ordering::Relaxed);
    while received.last().map_or(0, |r| r.1) < total {
        let m = client.recv_json();
        received.push((split(&m["pos"]).2, m["content"].as_u64().unwrap()));
    }
    assert!(reconnects >= 5, "only {reconnects} resumes");
    // Offsets 1..=total, each once, in order, carrying message n at n.
    let want: Vec<(u64, u64)> = (1..=total).map(|n| (n, n)).collect();
    assert_eq!(received, want);
}

#[test]
fn streams_that_cannot_be_vouched_for_answer_ok_false() {
    let mut redis = Redis::start();
    let a = Node::start("a", &redis, 5);
    let b = Node::start("b", &redis, 5);
    let (ann, welcome) = a.welcome("user_id=ann&recover=1");
    let pos_a = welcome["content"]["a"].as_str().unwrap().to_owned();
    let pos_u = welcome["content"]["u"].as_str().unwrap().to_owned();
    ann.close();
    let (bob, welcome) = b.welcome("user_id=bob&recover=1");
    let bob_u = welcome["content"]["u"].as_str().unwrap().to_owned();
    bob.close();
    // Overflow: 10 broadcasts into a stream of 5.
    for n in 1..=10 {
        b.broadcast(n);
    }
    b.send("ann", 11);
    let (mut ann, _) = b.welcome(&format!("user_id=ann&since={pos_a},{pos_u}"));
    let (replayed, recovered) = until_recovered(&mut ann);
    assert_eq!(
        contents(&replayed),
        [11],
        "the user stream only: nothing partial"
    );
    assert_eq!(
        recovered["content"],
        json!({"a": {"ok": false, "replayed": 0}, "u": {"ok": true, "replayed": 1}})
    );
    ann.close();
    // Foreign positions: another user's stream, an epoch no stream has.
    let (mut ann, _) = a.welcome(&format!("user_id=ann&since={bob_u},a:zzzzzzzz:1"));
    let (replayed, recovered) = until_recovered(&mut ann);
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(
        recovered["content"],
        json!({"a": {"ok": false, "replayed": 0}, "u": {"ok": false, "replayed": 0}})
    );
    ann.close();
    // A flushed Redis: every stream has a new epoch.
    let (ann, welcome) = a.welcome("user_id=ann&recover=1");
    let pos_u = welcome["content"]["u"].as_str().unwrap().to_owned();
    ann.close();
    let () = redis.query(&mut redis::cmd("FLUSHALL")).unwrap();
    a.send("ann", 12);
    let (mut ann, welcome) = b.welcome(&format!("user_id=ann&since={pos_u}"));
    let (replayed, recovered) = until_recovered(&mut ann);
    assert!(replayed.is_empty());
    assert_eq!(
        recovered["content"]["u"],
        json!({"ok": false, "replayed": 0})
    );
    assert_ne!(split(&welcome["content"]["u"]).1, split(&json!(pos_u)).1);
    ann.close();
    let failed = a.metric("wshub_history_resumes_failed_total")
        + b.metric("wshub_history_resumes_failed_total");
    assert_eq!(failed, 4);
    // Redis down: the resume answers ok:false at once, nothing else moves.
    redis.stop();
    wait_for(WAIT, "the node to see Redis gone", || {
        (!a.healthy()).then_some(())
    });
    let (mut ann, welcome) = a.welcome(&format!("user_id=ann&since={pos_u}"));
    assert_eq!(welcome["content"]["a"], "a:0:0", "{welcome}");
    let (replayed, recovered) = until_recovered(&mut ann);
    assert!(replayed.is_empty());
    assert_eq!(
        recovered["content"]["u"],
        json!({"ok": false, "replayed": 0})
    );
    // Degraded as section 10 says: this node's sessions still get pushes.
    assert_eq!(
        a.post(
            "/api/ws/send",
            json!({"type": "dm", "to": "ann", "content": 13})
        ),
        503
    );
    let mut local = a.connect("user_id=cy");
    a.connect("user_id=dee")
        .send_json(json!({"type": "chat", "to": "cy", "content": 14}));
    assert_eq!(local.recv_json()["content"], 14);
}

#[test]
fn entries_older_than_the_ttl_answer_ok_false() {
    let redis = Redis::start();
    let a = Node::start_ttl("a", &redis, 10, "1s");
    let b = Node::start_ttl("b", &redis, 10, "1s");
    let (client, welcome) = a.welcome("recover=1");
    let pos = welcome["content"]["a"].as_str().unwrap().to_owned();
    client.close();
    b.broadcast(1);
    std::thread::sleep(Duration::from_millis(1300));
    let (mut client, welcome) = b.welcome(&format!("since={pos}"));
    let (replayed, recovered) = until_recovered(&mut client);
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(
        recovered["content"]["a"],
        json!({"ok": false, "replayed": 0})
    );
    // From the welcome's position, within the ttl, the resume replays.
    let pos = welcome["content"]["a"].as_str().unwrap().to_owned();
    client.close();
    a.broadcast(2);
    let (mut client, _) = b.welcome(&format!("since={pos}"));
    let (replayed, recovered) = until_recovered(&mut client);
    assert_eq!(contents(&replayed), [2]);
    assert_eq!(
        recovered["content"]["a"],
        json!({"ok": true, "replayed": 1})
    );
}

#[test]
fn a_room_resumes_with_since_on_another_node() {
    let redis = Redis::start();
    let a = Node::start("a", &redis, 50);
    let b = Node::start("b", &redis, 50);
    let (mut ann, _) = a.welcome("user_id=ann&recover=1");
    ann.send_json(json!({"type": "join", "room": "lobby"}));
    let welcome = ann.recv_json();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["room"], "lobby");
    let (_, epoch, start) = split(&welcome["content"]["r"]);
    assert!(ann.sync().is_empty());
    b.to_room("lobby", 1);
    let live = ann.recv_json();
    assert_eq!(live["content"], 1);
    assert_eq!(split(&live["pos"]), ("r".into(), epoch.clone(), start + 1));
    ann.close();
    for n in 2..=4 {
        [&a, &b][n as usize % 2].to_room("lobby", n);
    }
    let (mut ann, _) = b.welcome("user_id=ann&recover=1");
    let since = format!("r:{epoch}:{}", start + 1);
    ann.send_json(json!({"type": "join", "room": "lobby", "since": since}));
    let welcome = ann.recv_json();
    assert_eq!(split(&welcome["content"]["r"]).2, start + 4);
    let (replayed, recovered) = until_recovered(&mut ann);
    assert_eq!(contents(&replayed), [2, 3, 4]);
    assert_eq!(offsets(&replayed), [start + 2, start + 3, start + 4]);
    assert!(replayed.iter().all(|m| m["room"] == "lobby"));
    assert_eq!(recovered["room"], "lobby");
    assert_eq!(recovered["content"], json!({"ok": true, "replayed": 3}));
    // A member elsewhere talks: live after the replay, nothing repeated.
    let (mut cy, _) = a.welcome("user_id=cy&recover=1");
    cy.send_json(json!({"type": "join", "room": "lobby"}));
    assert_eq!(cy.recv_json()["type"], "welcome");
    assert!(cy.sync().is_empty());
    cy.send_json(json!({"type": "talk", "room": "lobby", "content": 5}));
    let next = ann.recv_json();
    assert_eq!(next["content"], 5);
    assert_eq!(split(&next["pos"]).2, start + 5);
    assert!(ann.sync().is_empty());
    // A position that is not a room's replays nothing.
    let (mut dee, _) = b.welcome("user_id=dee&recover=1");
    dee.send_json(json!({"type": "join", "room": "lobby", "since": format!("a:{epoch}:1")}));
    assert_eq!(dee.recv_json()["type"], "welcome");
    let (replayed, recovered) = until_recovered(&mut dee);
    assert!(replayed.is_empty());
    assert_eq!(recovered["content"], json!({"ok": false, "replayed": 0}));
}

#[test]
fn an_event_stream_resumes_on_another_node_exactly_and_in_order() {
    let redis = Redis::start();
    let a = Node::start("a", &redis, 50);
    let b = Node::start("b", &redis, 50);
    let query = "user_id=ann&rooms=lobby";
    let mut sse = a.sse(query, &[]);
    room_subscribed(&redis, "lobby");
    b.broadcast(1);
    a.send("ann", 2);
    b.to_room("lobby", 3);
    let mut ids = Vec::new();
    for n in 1..=3 {
        let (name, id, v) = next_event(&mut sse);
        assert_eq!(name, "message");
        assert_eq!(v["content"], n);
        assert!(v["pos"].is_string(), "{v}");
        ids.push(id.expect("a kept message has an id"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let token = sse.last_id.clone().unwrap();
    drop(sse);
    // Missed meanwhile, published on both nodes; and some that are not
    // ann's (another user, another room).
    a.broadcast(4);
    b.send("ann", 5);
    a.to_room("lobby", 6);
    b.broadcast(7);
    a.send("ann", 8);
    b.to_room("lobby", 9);
    a.send("bob", 90);
    b.to_room("other", 91);
    let mut back = b.sse(query, &[("Last-Event-ID", &token)]);
    let replayed: Vec<Value> = (0..6)
        .map(|_| {
            let (name, id, v) = next_event(&mut back);
            assert_eq!(name, "message", "no reset: {v}");
            assert_eq!(id, None, "replayed events carry no id of their own");
            v
        })
        .collect();
    // Per stream, in stream order: everyone, the user, then the room.
    assert_eq!(contents(&replayed), [4, 7, 5, 8, 6, 9]);
    let kinds: Vec<String> = replayed.iter().map(|m| split(&m["pos"]).0).collect();
    assert_eq!(kinds, ["a", "a", "u", "u", "r", "r"]);
    for pair in offsets(&replayed).chunks(2) {
        assert_eq!(pair[0] + 1, pair[1], "consecutive in its stream");
    }
    // Then live traffic from either node, with ids, nothing repeated.
    a.broadcast(10);
    let (_, id, v) = next_event(&mut back);
    assert_eq!(v["content"], 10);
    assert!(id.is_some_and(|id| id != token));
    assert_eq!(b.metric("wshub_history_replayed_total"), 6);
    assert_eq!(b.metric("wshub_history_resumes_ok_total"), 3);
    // The token the stream holds now covers all of it: back on the first
    // node, only what came after.
    let token = back.last_id.clone().unwrap();
    drop(back);
    a.send("ann", 11);
    let mut again = a.sse(&format!("{query}&last_event_id={token}"), &[]);
    let (name, id, v) = next_event(&mut again);
    assert_eq!((name.as_str(), id), ("message", None));
    assert_eq!(v["content"], 11);
    b.to_room("lobby", 12);
    let (_, id, v) = next_event(&mut again);
    assert_eq!(v["content"], 12);
    assert!(id.is_some());
}

#[test]
fn an_event_streams_seam_under_continuous_traffic_loses_and_repeats_nothing() {
    let redis = Redis::start();
    let nodes = [
        Node::start("a", &redis, 1000),
        Node::start("b", &redis, 1000),
    ];
    let query = "user_id=ann";
    let mut sse = nodes[0].sse(query, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let addrs = [nodes[0].addr, nodes[1].addr];
    let publisher = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                n += 1;
                // Odd to everyone, even to ann, from alternating nodes.
                let (path, body) = if n % 2 == 1 {
                    ("/api/ws/broadcast", json!({"type": "news", "content": n}))
                } else {
                    (
                        "/api/ws/send",
                        json!({"type": "dm", "to": "ann", "content": n}),
                    )
                };
                let addr = addrs[(n / 2) as usize % 2];
                let (status, _) = http(addr, "POST", path, &[], &body.to_string());
                assert_eq!(status, 200);
                sent.store(n, Ordering::Relaxed);
            }
        })
    };
    // The first message after the stream's first token: everything from
    // there must arrive exactly once, in order.
    let mut received: Vec<u64> = Vec::new();
    let started = Instant::now();
    let mut reconnects = 0;
    while started.elapsed() < Duration::from_secs(4) {
        // Past the replay (the live events carry ids), a few more, then
        // resume on the other node.
        let mut live = 0;
        while live < 5 {
            let (name, id, v) = next_event(&mut sse);
            assert_eq!(name, "message", "no reset: {v}");
            received.push(v["content"].as_u64().unwrap());
            live += usize::from(id.is_some());
        }
        let token = sse.last_id.clone().unwrap();
        drop(sse);
        reconnects += 1;
        sse = nodes[reconnects % 2].sse(query, &[("Last-Event-ID", &token)]);
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let total = sent.load(Ordering::Relaxed);
    // The last of each stream (a replay may bring the user's after
    // everyone's).
    let lasts = [total, total - 1];
    while !lasts.iter().all(|last| received.contains(last)) {
        let (_, _, v) = next_event(&mut sse);
        received.push(v["content"].as_u64().unwrap());
    }
    assert!(reconnects >= 5, "only {reconnects} resumes");
    // Per stream (a replay goes stream by stream): every message from the
    // first one received, once, in order.
    for parity in [1, 0] {
        let got: Vec<u64> = received
            .iter()
            .copied()
            .filter(|n| n % 2 == parity)
            .collect();
        let want: Vec<u64> = (got[0]..=total).filter(|n| n % 2 == parity).collect();
        assert_eq!(got, want, "stream {}", ["u", "a"][parity as usize]);
    }
    let replayed = nodes[0].metric("wshub_history_replayed_total")
        + nodes[1].metric("wshub_history_replayed_total");
    eprintln!("{reconnects} resumes, {replayed} replayed, {total} sent");
}

#[test]
fn event_streams_that_cannot_be_vouched_for_are_reset() {
    let mut redis = Redis::start();
    let a = Node::start("a", &redis, 3);
    let b = Node::start("b", &redis, 3);
    let query = "user_id=ann&rooms=lobby";
    let mut sse = a.sse(query, &[]);
    room_subscribed(&redis, "lobby");
    b.broadcast(1);
    assert_eq!(next_event(&mut sse).2["content"], 1);
    let token = sse.last_id.clone().unwrap();
    drop(sse);
    // Five to ann, past the three kept; one to everyone: kept.
    for n in 2..=6 {
        a.send("ann", n);
    }
    b.broadcast(7);
    let mut back = b.sse(query, &[("Last-Event-ID", &token)]);
    let (name, id, v) = next_event(&mut back);
    assert_eq!((name.as_str(), id), ("reset", None));
    assert_eq!(v, json!({"streams": ["u"]}));
    let (name, _, v) = next_event(&mut back);
    assert_eq!(name, "message");
    assert_eq!(v["content"], 7, "everyone's stream replayed whole");
    a.to_room("lobby", 8);
    assert_eq!(next_event(&mut back).2["content"], 8);
    let token = back.last_id.clone().unwrap();
    drop(back);
    // Not a token of this cluster's counter: every stream is named.
    for stranger in ["AAAAAAAA-1", "garbage", ""] {
        let mut other = a.sse(query, &[("Last-Event-ID", stranger)]);
        let (name, _, v) = next_event(&mut other);
        assert_eq!(name, "reset", "{stranger:?}");
        assert_eq!(v, json!({"streams": ["a", "u", "r:lobby"]}));
    }
    // A flushed Redis: the counter has a new epoch.
    let () = redis.query(&mut redis::cmd("FLUSHALL")).unwrap();
    a.broadcast(9);
    let mut flushed = b.sse(query, &[("Last-Event-ID", &token)]);
    let (name, _, v) = next_event(&mut flushed);
    assert_eq!(name, "reset");
    assert_eq!(v, json!({"streams": ["a", "u", "r:lobby"]}));
    drop(flushed);
    let failed = a.metric("wshub_history_resumes_failed_total")
        + b.metric("wshub_history_resumes_failed_total");
    assert_eq!(failed, 1 + 3 * 3 + 3);
    // Redis down: reset at once, live messages on this node continue, and
    // the id handed out resumes nothing later.
    redis.stop();
    wait_for(WAIT, "the node to see Redis gone", || {
        (!a.healthy()).then_some(())
    });
    let mut down = a.sse(query, &[("Last-Event-ID", &token)]);
    let (name, _, v) = next_event(&mut down);
    assert_eq!(name, "reset");
    assert_eq!(v, json!({"streams": ["a", "u", "r:lobby"]}));
    a.connect("user_id=dee")
        .send_json(json!({"type": "chat", "to": "ann", "content": 10}));
    let (_, id, v) = next_event(&mut down);
    assert_eq!((v["content"].as_u64(), id), (Some(10), None));
    assert_eq!(down.last_id.as_deref(), Some("0-0"));
}

#[test]
fn a_message_dropped_before_the_loop_closes_recovering_sessions_which_resume_it() {
    let redis = Redis::start();
    // Messages and queues of up to 2 and 4 MiB; b takes at most 1 MiB from
    // Redis at a time: a larger message is dropped before its loop sees it.
    let large = "  max_message_size: 2097152\n  max_buffered_bytes: 4194304\n";
    let a = Node::start_with("a", &redis, 50, "2m", large, "");
    let b = Node::start_with("b", &redis, 50, "2m", large, "  max_queue_bytes: 1048576\n");
    let (mut ann, welcome) = b.welcome("user_id=ann&recover=1");
    let (_, epoch, start) = split(&welcome["content"]["a"]);
    let mut sse = b.sse("user_id=ann", &[]);
    // Plain sessions are not closed: they never had positions.
    let mut plain = b.connect("user_id=bob");
    b.broadcast(1);
    assert_eq!(ann.recv_json()["content"], 1);
    assert_eq!(next_event(&mut sse).2["content"], 1);
    assert_eq!(plain.recv_json()["content"], 1);
    let token = sse.last_id.clone().unwrap();
    let big = "x".repeat(1_200_000);
    assert_eq!(
        a.post("/api/ws/broadcast", json!({"type": "news", "content": big})),
        200
    );
    a.broadcast(3);
    // The next message b sees finds the gap: both recovering sessions end.
    assert_eq!(ann.expect_close(), 1013);
    let rest = sse.read_to_end();
    assert_eq!(
        rest.last(),
        Some(&Item::Comment("missed a message, resume".into())),
        "{rest:?}"
    );
    assert!(
        !rest.iter().any(|item| matches!(item, Item::Event { .. })),
        "nothing after the gap: {rest:?}"
    );
    assert_eq!(plain.recv_json()["content"], 3, "the plain one stays");
    assert_eq!(b.metric("wshub_history_gap_closes_total"), 2);
    // Both resume (on the other node: b's budget could not take the
    // replay either) and get the missed message and the one after it.
    let (mut ann, _) = a.welcome(&format!("user_id=ann&since=a:{epoch}:{}", start + 1));
    let (replayed, recovered) = until_recovered(&mut ann);
    assert_eq!(replayed.len(), 2);
    assert_eq!(
        replayed[0]["content"].as_str().map(str::len),
        Some(big.len())
    );
    assert_eq!(replayed[1]["content"], 3);
    assert_eq!(offsets(&replayed), [start + 2, start + 3]);
    assert_eq!(
        recovered["content"]["a"],
        json!({"ok": true, "replayed": 2})
    );
    let mut back = a.sse("user_id=ann", &[("Last-Event-ID", &token)]);
    let (name, _, first) = next_event(&mut back);
    assert_eq!(name, "message");
    assert_eq!(first["content"].as_str().map(str::len), Some(big.len()));
    assert_eq!(next_event(&mut back).2["content"], 3);
}

#[test]
fn a_hung_redis_answers_a_resume_with_ok_false_or_1013_never_silence() {
    let redis = Redis::start();
    let a = Node::start("a", &redis, 10);
    let (client, welcome) = a.welcome("recover=1");
    let pos = welcome["content"]["a"].as_str().unwrap().to_owned();
    client.close();
    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    let mut client = a.connect(&format!("since={pos}"));
    // Either the node already knows Redis is gone (ok:false at once), or
    // the read in flight fails and the session is closed to resume later.
    let outcome = match client.ws.read().expect("read") {
        WsMessage::Text(text) => {
            let welcome: Value = serde_json::from_str(text.as_str()).unwrap();
            assert_eq!(welcome["content"]["a"], "a:0:0", "{welcome}");
            let (replayed, recovered) = until_recovered(&mut client);
            assert!(replayed.is_empty());
            assert_eq!(
                recovered["content"]["a"],
                json!({"ok": false, "replayed": 0})
            );
            "ok:false"
        }
        WsMessage::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1013, "{frame:?}");
            "1013"
        }
        other => panic!("unexpected {other:?}"),
    };
    eprintln!("hung Redis: {outcome} after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{outcome} after {:?}",
        started.elapsed()
    );
    redis.signal(libc::SIGCONT);
    wait_for(WAIT, "the node to be back", || a.healthy().then_some(()));
    a.broadcast(1);
    let (mut client, _) = a.welcome(&format!("since={pos}"));
    let (replayed, recovered) = until_recovered(&mut client);
    assert_eq!(contents(&replayed), [1]);
    assert_eq!(
        recovered["content"]["a"],
        json!({"ok": true, "replayed": 1})
    );
    assert!(a.metric("wshub_history_reads_failed_total") >= 1);
}

#[test]
fn presence_events_arrive_once_and_are_not_kept() {
    let redis = Redis::start();
    let presence = "rooms:\n  presence: true\n";
    let a = Node::start_with("a", &redis, 50, "2m", "", presence);
    let b = Node::start_with("b", &redis, 50, "2m", "", presence);
    let (mut watcher, _) = a.welcome("user_id=wat&recover=1");
    watcher.send_json(json!({"type": "join", "room": "r"}));
    assert_eq!(watcher.recv_json()["type"], "welcome");
    assert!(watcher.sync().is_empty());
    // A join on the watcher's node and one on the other: one event each.
    for (node, user) in [(&a, "amy"), (&b, "bob")] {
        let mut member = node.connect(&format!("user_id={user}"));
        member.send_json(json!({"type": "join", "room": "r"}));
        assert!(member.sync().is_empty());
        assert_eq!(
            watcher.recv_json(),
            json!({"type": "joined", "from": user, "room": "r"})
        );
        std::mem::forget(member);
    }
    watcher.expect_silence(300);
    let len: i64 = redis.query(redis::cmd("XLEN").arg("h:h:room:r")).unwrap();
    assert_eq!(len, 0, "presence events are part of no stream");
}

// ---- the two-node chaos test ------------------------------------------

/// Clients in the short form (each a user, each in one of `ROOMS` rooms).
const CHAOS_CLIENTS: usize = 40;
const ROOMS: usize = 4;

struct ChaosClient {
    id: usize,
    ws: Option<WebSocket<TcpStream>>,
    tracks: [Track; 3],
    tally: Tally,
    connects: usize,
}

impl ChaosClient {
    fn room(&self) -> String {
        format!("room{}", self.id % ROOMS)
    }

    /// Connects to the node after the last one (resumes move across nodes).
    fn connect(&mut self, addrs: &[SocketAddr; 2]) {
        self.connects += 1;
        let addr = addrs[(self.id + self.connects) % 2];
        let mut path = format!("/api/ws/connect?user_id=c{}&recover=1", self.id);
        let since: Vec<String> = self.tracks[..2]
            .iter()
            .zip(["a", "u"])
            .filter(|(t, _)| t.known)
            .map(|(t, kind)| format!("{kind}:{}:{}", t.epoch, t.last))
            .collect();
        if !since.is_empty() {
            path.push_str(&format!("&since={}", since.join(",")));
        }
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (mut ws, _) =
            tungstenite::client(format!("ws://{addr}{path}"), stream).expect("handshake");
        let room_since = self.tracks[2]
            .known
            .then(|| format!("r:{}:{}", self.tracks[2].epoch, self.tracks[2].last));
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

    fn cut(&mut self) {
        if let Some(ws) = self.ws.take() {
            let _ = SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
            drop(ws);
            self.tally.reconnects += 1;
        }
    }

    fn on_message(&mut self, m: &Value) {
        let index = |kind: &str| match kind {
            "a" => Some(0),
            "u" => Some(1),
            "r" => Some(2),
            _ => None,
        };
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
                    let Some(i) = index(kind) else {
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
                        self.tally.replayed += result["replayed"].as_u64().unwrap_or(0);
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
                let i = index(pkind).unwrap_or(0);
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
            self.on_message(&serde_json::from_str(&text).unwrap_or(Value::Null));
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

/// Last offset published per stream: a, per user, per room. One
/// publisher, each REST push answered (Redis took it) before the next, so
/// stream offsets follow the publisher's numbering: the content is the log.
struct Published {
    all: AtomicU64,
    users: Vec<AtomicU64>,
    rooms: Vec<AtomicU64>,
}

fn chaos_publisher(
    addrs: [SocketAddr; 2],
    published: Arc<Published>,
    stop: Arc<AtomicBool>,
    rate: u64,
) {
    let mut rng = Rng(7);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next = Instant::now();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let addr = addrs[i % 2];
        let (path, body) = match rng.below(4) {
            0 => {
                let n = published.all.load(Ordering::Relaxed) + 1;
                ("/api/ws/broadcast", json!({"type": "a", "content": n}))
            }
            1 => {
                let r = rng.below(ROOMS as u64) as usize;
                let n = published.rooms[r].load(Ordering::Relaxed) + 1;
                (
                    "/api/ws/broadcast",
                    json!({"type": "r", "room": format!("room{r}"), "content": n}),
                )
            }
            _ => {
                let u = rng.below(CHAOS_CLIENTS as u64) as usize;
                let n = published.users[u].load(Ordering::Relaxed) + 1;
                (
                    "/api/ws/send",
                    json!({"type": "u", "to": format!("c{u}"), "content": n}),
                )
            }
        };
        let (status, answer) = http(addr, "POST", path, &[], &body.to_string());
        assert_eq!(status, 200, "{answer}");
        let counter = match (body.get("room"), body.get("to")) {
            (Some(room), _) => {
                let r: usize = room.as_str().unwrap()[4..].parse().unwrap();
                &published.rooms[r]
            }
            (_, Some(to)) => {
                let u: usize = to.as_str().unwrap()[1..].parse().unwrap();
                &published.users[u]
            }
            _ => &published.all,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

#[test]
fn chaos_across_two_nodes_loses_and_repeats_nothing() {
    let reconnect_target = env("WSHUB_CLUSTER_CHAOS_RECONNECTS", 400);
    let rate = env("WSHUB_CLUSTER_CHAOS_RATE", 100);
    let max_secs = env("WSHUB_CLUSTER_CHAOS_MAX_SECS", 15);
    let cut_ms = env("WSHUB_CLUSTER_CHAOS_CUT_MS", 1000);
    let redis = Redis::start();
    let nodes = [
        Node::start("a", &redis, 2000),
        Node::start("b", &redis, 2000),
    ];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let published = Arc::new(Published {
        all: AtomicU64::new(0),
        users: (0..CHAOS_CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        rooms: (0..ROOMS).map(|_| AtomicU64::new(0)).collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicU64::new(0));
    let draining = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (published, cuts, draining, ready, results) = (
                published.clone(),
                cuts.clone(),
                draining.clone(),
                ready.clone(),
                results.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(1000 + w as u64);
                let mut clients: Vec<ChaosClient> = (w..CHAOS_CLIENTS)
                    .step_by(2)
                    .map(|id| ChaosClient {
                        id,
                        ws: None,
                        tracks: Default::default(),
                        tally: Tally::default(),
                        connects: 0,
                    })
                    .collect();
                for c in &mut clients {
                    c.connect(&addrs);
                }
                let mut next_cut: Vec<Instant> = clients
                    .iter()
                    .map(|_| Instant::now() + Duration::from_millis(rng.below(2 * cut_ms)))
                    .collect();
                let mut counted = false;
                let drain_deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let mut busy = 0;
                    for (c, cut_at) in clients.iter_mut().zip(next_cut.iter_mut()) {
                        match c.poll() {
                            Ok(n) => busy += n,
                            Err(()) => {
                                c.connect(&addrs);
                                busy += 1;
                                continue;
                            }
                        }
                        if !draining.load(Ordering::Relaxed)
                            && *cut_at <= Instant::now()
                            && c.tracks.iter().all(|t| t.known && !t.resuming)
                        {
                            *cut_at = Instant::now() + Duration::from_millis(rng.below(2 * cut_ms));
                            c.cut();
                            cuts.fetch_add(1, Ordering::Relaxed);
                            c.connect(&addrs);
                        }
                    }
                    if !counted && clients.iter().all(|c| c.tracks.iter().all(|t| t.known)) {
                        counted = true;
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                    if draining.load(Ordering::Relaxed) {
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
    // Every client has its welcomes before traffic starts.
    wait_for(Duration::from_secs(30), "every client's welcome", || {
        (ready.load(Ordering::Relaxed) == 2).then_some(())
    });
    let publisher = {
        let (published, stop) = (published.clone(), stop.clone());
        std::thread::spawn(move || chaos_publisher(addrs, published, stop, rate))
    };
    let traffic_start = Instant::now();
    while cuts.load(Ordering::Relaxed) < reconnect_target
        && traffic_start.elapsed() < Duration::from_secs(max_secs)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    draining.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let mut total = Tally::default();
    for t in results.lock().unwrap().iter() {
        total.add(t);
    }
    let report: HashMap<&str, Value> = HashMap::from([
        ("reset_cuts", json!(cuts.load(Ordering::Relaxed))),
        ("reconnects", json!(total.reconnects)),
        ("server_ended", json!(total.ended)),
        (
            "published_all",
            json!(published.all.load(Ordering::Relaxed)),
        ),
        ("received", json!(total.received)),
        ("replayed", json!(total.replayed)),
        ("declared_failed_streams", json!(total.declared_failed)),
        ("lost", json!(total.lost)),
        ("duplicated", json!(total.duplicated)),
        ("misordered", json!(total.misordered)),
        ("wrong_content", json!(total.wrong_content)),
        ("total_secs", json!(started.elapsed().as_secs())),
    ]);
    eprintln!("cluster chaos: {}", serde_json::to_string(&report).unwrap());
    assert!(
        cuts.load(Ordering::Relaxed) >= reconnect_target.min(100),
        "too few cuts: {report:?}"
    );
    assert!(total.replayed > 0, "nothing was ever replayed: {report:?}");
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
