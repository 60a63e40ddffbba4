//! History and resume (docs/history.md), one test per promise,
//! over real sockets: welcome before the first message, positions only for
//! sessions that asked, replay exact and in order, the seam under
//! continuous traffic, `ok:false` (never a partial replay) for overflow,
//! ttl, restart and positions that are not the session's own, rooms with
//! `since`, offline users, and nothing new while history is off.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http, test_config, Client, TestServer};
use serde_json::{json, Value};
use wshub::{Config, Message};

fn history_config(size: usize) -> Config {
    let mut config = test_config();
    config.history.size = size;
    config
}

fn broadcast(server: &TestServer, n: u64) {
    let body = json!({"type": "news", "content": n}).to_string();
    let (status, _) = http(server.addr, "POST", "/api/ws/broadcast", &[], &body);
    assert_eq!(status, 200);
}

fn send(server: &TestServer, user: &str, n: u64) {
    let body = json!({"type": "dm", "to": user, "content": n}).to_string();
    let (status, _) = http(server.addr, "POST", "/api/ws/send", &[], &body);
    assert_eq!(status, 200);
}

fn to_room(server: &TestServer, room: &str, n: u64) {
    let body = json!({"type": "talk", "room": room, "content": n}).to_string();
    let (status, _) = http(server.addr, "POST", "/api/ws/broadcast", &[], &body);
    assert_eq!(status, 200);
}

/// Connects with `query` and returns the client and its welcome.
fn connect(server: &TestServer, query: &str) -> (Client, Value) {
    let mut client = server.connect_path(&format!("/api/ws/connect?{query}"));
    let welcome = client.recv_json();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
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

fn contents(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["content"].as_u64().unwrap())
        .collect()
}

fn offset(pos: &Value) -> u64 {
    pos.as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn metric(server: &TestServer, name: &str) -> u64 {
    let (_, text) = http(server.addr, "GET", "/metrics", &[], "");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

#[test]
fn history_off_changes_nothing() {
    let server = TestServer::start(test_config());
    let mut plain = server.connect(Some("ann"));
    let mut asking = server.connect_path("/api/ws/connect?user_id=bob&recover=1&since=a:x:1");
    server.wait_online(2);
    broadcast(&server, 1);
    let expected = r#"{"type":"news","content":1}"#;
    assert_eq!(plain.recv_text(), expected);
    assert_eq!(asking.recv_text(), expected, "no welcome, no pos");
    let (_, text) = http(server.addr, "GET", "/metrics", &[], "");
    assert!(!text.contains("wshub_history"), "{text}");
}

#[test]
fn welcome_first_and_positions_only_for_sessions_that_asked() {
    let server = TestServer::start(history_config(100));
    let (mut recovering, welcome) = connect(&server, "user_id=ann&recover=1");
    let content = &welcome["content"];
    assert!(
        content["a"].as_str().unwrap().starts_with("a:"),
        "{welcome}"
    );
    assert!(
        content["u"].as_str().unwrap().starts_with("u:"),
        "{welcome}"
    );
    let (mut anonymous, anon_welcome) = connect(&server, "recover=1");
    assert_eq!(anon_welcome["content"]["u"], Value::Null, "{anon_welcome}");
    let mut plain = server.connect(Some("bob"));
    server.wait_online(3);
    broadcast(&server, 7);
    assert_eq!(plain.recv_text(), r#"{"type":"news","content":7}"#);
    let got = recovering.recv_json();
    assert_eq!(got["content"], 7);
    assert_eq!(offset(&got["pos"]), offset(&content["a"]) + 1);
    assert_eq!(
        anonymous.recv_json()["pos"],
        got["pos"],
        "one stream, one position"
    );
    // Replies carry no position; a user message carries the user stream's.
    assert!(recovering.sync().is_empty());
    send(&server, "ann", 8);
    let dm = recovering.recv_json();
    assert!(dm["pos"].as_str().unwrap().starts_with("u:"), "{dm}");
    assert_eq!(offset(&dm["pos"]), 1);
    plain.expect_silence(50);
}

#[test]
fn replay_is_exact_and_in_order_then_live() {
    let server = TestServer::start(history_config(100));
    let (mut first, welcome) = connect(&server, "user_id=ann&recover=1");
    server.wait_online(1);
    broadcast(&server, 1);
    let seen = first.recv_json();
    let (a, u) = (seen["pos"].clone(), welcome["content"]["u"].clone());
    first.close();
    server.wait_online(0);
    for n in 2..=6 {
        broadcast(&server, n);
    }
    send(&server, "ann", 100);
    send(&server, "ann", 101);
    let since = format!("{},{}", a.as_str().unwrap(), u.as_str().unwrap());
    let (mut back, welcome) = connect(&server, &format!("user_id=ann&since={since}"));
    assert_eq!(offset(&welcome["content"]["a"]), 6);
    let (replayed, recovered) = until_recovered(&mut back);
    let (all, own): (Vec<Value>, Vec<Value>) = replayed
        .into_iter()
        .partition(|m| m["pos"].as_str().unwrap().starts_with("a:"));
    assert_eq!(contents(&all), [2, 3, 4, 5, 6]);
    assert_eq!(contents(&own), [100, 101]);
    assert_eq!(
        recovered["content"],
        json!({"a": {"ok": true, "replayed": 5}, "u": {"ok": true, "replayed": 2}})
    );
    broadcast(&server, 7);
    let live = back.recv_json();
    assert_eq!(
        (live["content"].as_u64(), offset(&live["pos"])),
        (Some(7), 7)
    );
    assert_eq!(metric(&server, "wshub_history_replayed_total"), 7);
    assert_eq!(metric(&server, "wshub_history_resumes_ok_total"), 2);
    assert_eq!(metric(&server, "wshub_history_entries"), 9);
}

/// A publisher pushes numbered broadcasts without pause while a client
/// drops and resumes again and again: the numbers it sees are 1, 2, 3, …
/// with none missing and none twice, across every seam.
#[test]
fn seam_under_continuous_traffic_loses_and_repeats_nothing() {
    let mut config = history_config(10_000);
    // A replay is queued whole: the queue must hold the longest gap.
    config.websocket.message_buffer_size = 10_000;
    config.websocket.max_buffered_bytes = 16 << 20;
    let server = TestServer::start(config);
    let (mut client, welcome) = connect(&server, "recover=1");
    server.wait_online(1);
    let mut last = welcome["content"]["a"].as_str().unwrap().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (handle, stop) = (server.handle.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                n += 1;
                while handle.broadcast(&Message::new("seq", json!(n))).is_err() {
                    std::thread::sleep(Duration::from_micros(200));
                }
                if n.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            n
        })
    };
    let mut expected = 1u64;
    for round in 0..20 {
        // Read a few live messages, then drop without a Close.
        for _ in 0..(5 + round * 7) {
            let m = client.recv_json();
            assert_eq!(m["content"].as_u64(), Some(expected), "{m}");
            expected += 1;
            last = m["pos"].as_str().unwrap().to_owned();
        }
        drop(client);
        let (next, _) = connect(&server, &format!("since={last}"));
        client = next;
        let (replayed, recovered) = until_recovered(&mut client);
        for m in &replayed {
            assert_eq!(m["content"].as_u64(), Some(expected), "replay {m}");
            expected += 1;
            last = m["pos"].as_str().unwrap().to_owned();
        }
        assert_eq!(recovered["content"]["a"]["ok"], true, "{recovered}");
        assert_eq!(
            recovered["content"]["a"]["replayed"].as_u64(),
            Some(replayed.len() as u64)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    while expected <= published {
        let m = client.recv_json();
        assert_eq!(m["content"].as_u64(), Some(expected), "{m}");
        expected += 1;
    }
    client.expect_silence(100);
}

#[test]
fn overflow_answers_ok_false_and_replays_nothing() {
    let server = TestServer::start(history_config(3));
    let (first, welcome) = connect(&server, "recover=1");
    let a = welcome["content"]["a"].as_str().unwrap().to_owned();
    first.close();
    server.wait_online(0);
    for n in 1..=4 {
        broadcast(&server, n);
    }
    let (mut back, welcome) = connect(&server, &format!("since={a}"));
    let (replayed, recovered) = until_recovered(&mut back);
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(
        recovered["content"],
        json!({"a": {"ok": false, "replayed": 0}})
    );
    // The welcome's position is where the reloaded app continues from.
    assert_eq!(offset(&welcome["content"]["a"]), 4);
    // Exactly within size: all of it.
    // Only the offset changes: the random epoch may itself start with "0".
    let at1 = format!(
        "{}:1",
        a.strip_suffix(":0").expect("the welcome is at offset 0")
    );
    let (mut again, _) = connect(&server, &format!("since={at1}"));
    let (replayed, recovered) = until_recovered(&mut again);
    assert_eq!(contents(&replayed), [2, 3, 4]);
    assert_eq!(recovered["content"]["a"]["ok"], true);
    assert_eq!(metric(&server, "wshub_history_resumes_failed_total"), 1);
}

#[test]
fn a_replay_larger_than_the_queue_answers_ok_false() {
    let mut config = history_config(1000);
    config.websocket.message_buffer_size = 8;
    let server = TestServer::start(config);
    let (first, welcome) = connect(&server, "recover=1");
    let a = welcome["content"]["a"].as_str().unwrap().to_owned();
    first.close();
    server.wait_online(0);
    for n in 1..=20 {
        broadcast(&server, n);
    }
    let (mut back, _) = connect(&server, &format!("since={a}"));
    let (replayed, recovered) = until_recovered(&mut back);
    assert!(replayed.is_empty());
    assert_eq!(recovered["content"]["a"]["ok"], false);
    broadcast(&server, 21);
    assert_eq!(back.recv_json()["content"], 21, "the session stays open");
}

#[test]
fn ttl_answers_ok_false() {
    let mut config = history_config(100);
    config.history.ttl = Duration::from_secs(1);
    let server = TestServer::start(config);
    let (first, welcome) = connect(&server, "recover=1");
    let a = welcome["content"]["a"].as_str().unwrap().to_owned();
    first.close();
    server.wait_online(0);
    broadcast(&server, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&server, "wshub_history_entries") > 0 {
        assert!(Instant::now() < deadline, "entry never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut back, _) = connect(&server, &format!("since={a}"));
    let (replayed, recovered) = until_recovered(&mut back);
    assert!(replayed.is_empty());
    assert_eq!(recovered["content"]["a"]["ok"], false);
    assert_eq!(metric(&server, "wshub_history_bytes"), 0);
}

#[test]
fn a_restart_answers_ok_false() {
    let config = history_config(100);
    let server = TestServer::start(config.clone());
    let (first, welcome) = connect(&server, "user_id=ann&recover=1");
    let since = format!(
        "{},{}",
        welcome["content"]["a"].as_str().unwrap(),
        welcome["content"]["u"].as_str().unwrap()
    );
    first.close();
    server.stop().unwrap();
    let server = TestServer::start(config);
    broadcast(&server, 1);
    let (mut back, _) = connect(&server, &format!("user_id=ann&since={since}"));
    let (replayed, recovered) = until_recovered(&mut back);
    assert!(replayed.is_empty());
    assert_eq!(
        recovered["content"],
        json!({"a": {"ok": false, "replayed": 0}, "u": {"ok": false, "replayed": 0}})
    );
}

#[test]
fn positions_that_are_not_the_sessions_own_replay_nothing() {
    let server = TestServer::start(history_config(100));
    let (bob, bob_welcome) = connect(&server, "user_id=bob&recover=1");
    let bobs = bob_welcome["content"]["u"].as_str().unwrap().to_owned();
    let a = bob_welcome["content"]["a"].as_str().unwrap().to_owned();
    bob.close();
    server.wait_online(0);
    send(&server, "bob", 1);
    broadcast(&server, 2);
    // Ann presents Bob's user position: nothing of Bob's.
    let (mut ann, _) = connect(&server, &format!("user_id=ann&since={bobs}"));
    let (replayed, recovered) = until_recovered(&mut ann);
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(
        recovered["content"],
        json!({"u": {"ok": false, "replayed": 0}})
    );
    // Anonymous: no user stream at all.
    let (mut anon, _) = connect(&server, &format!("since={bobs}"));
    assert!(until_recovered(&mut anon).0.is_empty());
    // An epoch this server never made, an offset past the last.
    let bad_epoch = format!("a:Zz9Zz9Zz:{}", offset(&json!(a)));
    let ahead = format!(
        "{}:99",
        a.strip_suffix(":0").expect("the welcome is at offset 0")
    );
    for since in [bad_epoch, ahead] {
        let (mut c, _) = connect(&server, &format!("since={since}"));
        let (replayed, recovered) = until_recovered(&mut c);
        assert!(replayed.is_empty());
        assert_eq!(recovered["content"]["a"]["ok"], false, "{since}");
    }
}

#[test]
fn malformed_since_is_refused_at_the_upgrade() {
    let server = TestServer::start(history_config(100));
    for since in [
        "x:1:1",
        "a:e:1,a:e:2",
        "a:e",
        "a:e:-1",
        "r:e:1",
        "a:e%2Fx:1",
    ] {
        let request = common::upgrade_request(&format!("/api/ws/connect?since={since}"));
        let reply = String::from_utf8_lossy(&common::raw_exchange(server.addr, request.as_bytes()))
            .into_owned();
        assert!(reply.starts_with("HTTP/1.1 400"), "{since}: {reply}");
        assert!(reply.contains("invalid since"), "{since}: {reply}");
    }
}

#[test]
fn offline_user_gets_what_was_sent_meanwhile() {
    let server = TestServer::start(history_config(100));
    let (phone, welcome) = connect(&server, "user_id=ann&recover=1");
    let u = welcome["content"]["u"].as_str().unwrap().to_owned();
    phone.close();
    server.wait_online(0);
    for n in 1..=3 {
        send(&server, "ann", n);
    }
    // Another user's chat to her counts too, as does one she sent herself
    // from another session.
    let mut bob = server.connect(Some("bob"));
    bob.send_json(json!({"type": "chat", "to": "ann", "content": 4}));
    bob.sync();
    let mut tab = server.connect(Some("ann"));
    tab.send_json(json!({"type": "note", "to": "ann", "content": 5}));
    tab.sync();
    let (mut back, _) = connect(&server, &format!("user_id=ann&since={u}"));
    let (replayed, recovered) = until_recovered(&mut back);
    assert_eq!(contents(&replayed), [1, 2, 3, 4, 5]);
    assert_eq!(replayed[3]["from"], "bob");
    assert_eq!(
        recovered["content"]["u"],
        json!({"ok": true, "replayed": 5})
    );
}

#[test]
fn room_join_with_since_replays_the_room() {
    let server = TestServer::start(history_config(100));
    let (mut first, _) = connect(&server, "user_id=ann&recover=1");
    first.send_json(json!({"type": "join", "room": "lobby"}));
    let room_welcome = first.recv_json();
    assert_eq!(room_welcome["type"], "welcome");
    assert_eq!(room_welcome["room"], "lobby");
    let r = room_welcome["content"]["r"].as_str().unwrap().to_owned();
    assert!(r.starts_with("r:") && r.ends_with(":0"), "{r}");
    to_room(&server, "lobby", 1);
    let live = first.recv_json();
    assert_eq!(
        (live["room"].as_str(), offset(&live["pos"])),
        (Some("lobby"), 1)
    );
    let seen = live["pos"].as_str().unwrap().to_owned();
    first.close();
    server.wait_online(0);
    for n in 2..=4 {
        to_room(&server, "lobby", n);
    }
    to_room(&server, "other", 99);
    let (mut back, _) = connect(&server, "user_id=ann&recover=1");
    back.send_json(json!({"type": "join", "room": "lobby", "since": seen}));
    assert_eq!(offset(&back.recv_json()["content"]["r"]), 4);
    let (replayed, recovered) = until_recovered(&mut back);
    assert_eq!(contents(&replayed), [2, 3, 4]);
    assert_eq!(
        recovered,
        json!({"type": "recovered", "room": "lobby", "content": {"ok": true, "replayed": 3}})
    );
    // Another room's position, a non-string, garbage: ok:false, nothing.
    back.send_json(json!({"type": "leave", "room": "lobby"}));
    for since in [
        json!(r.replace(":0", ":1")),
        json!(5),
        json!("nope"),
        json!(seen.replace("r:", "a:")),
    ] {
        let mut c = connect(&server, "recover=1").0;
        c.send_json(json!({"type": "join", "room": "other", "since": since}));
        assert_eq!(c.recv_json()["type"], "welcome");
        let (replayed, recovered) = until_recovered(&mut c);
        assert!(replayed.is_empty(), "{since}: {replayed:?}");
        assert_eq!(recovered["content"]["ok"], false, "{since}");
    }
}

#[test]
fn a_refused_join_with_since_replays_nothing() {
    let mut config = history_config(100);
    config.websocket.max_rooms_per_session = 1;
    let server = TestServer::start(config);
    let (mut c, _) = connect(&server, "recover=1");
    c.send_json(json!({"type": "join", "room": "one"}));
    let since = c.recv_json()["content"]["r"].as_str().unwrap().to_owned();
    to_room(&server, "two", 1);
    c.send_json(json!({"type": "join", "room": "two", "since": since}));
    let reply = c.recv_json();
    assert_eq!(reply, json!({"type": "error", "content": "too many rooms"}));
    assert!(c.sync().is_empty());
}

#[test]
fn join_since_is_ignored_by_sessions_that_did_not_ask_to_recover() {
    let server = TestServer::start(history_config(100));
    let mut c = server.connect(Some("ann"));
    c.send_json(json!({"type": "join", "room": "r", "since": "r:abc:0"}));
    assert!(c.sync().is_empty());
    to_room(&server, "r", 1);
    assert_eq!(c.recv_text(), r#"{"type":"talk","room":"r","content":1}"#);
}

#[test]
fn clients_may_not_send_welcome_or_recovered() {
    let server = TestServer::start(history_config(100));
    let (mut c, _) = connect(&server, "recover=1");
    let mut other = server.connect(None);
    server.wait_online(2);
    for kind in ["welcome", "recovered"] {
        c.send_json(json!({"type": kind, "content": {"a": "a:x:1"}}));
        let reply = c.recv_json();
        assert_eq!(reply["type"], "error");
        assert_eq!(
            reply["content"],
            format!("type \"{kind}\" is reserved for the server")
        );
    }
    assert!(other.sync().is_empty());
}

#[test]
fn presence_events_reach_recovering_members_but_are_not_kept() {
    let mut config = history_config(100);
    config.rooms.presence = true;
    let server = TestServer::start(config);
    let (mut watcher, _) = connect(&server, "user_id=wat&recover=1");
    watcher.send_json(json!({"type": "join", "room": "r"}));
    let welcome = watcher.recv_json();
    let room_pos = welcome["content"]["r"].as_str().unwrap().to_owned();
    assert!(watcher.sync().is_empty());
    let mut amy = server.connect(Some("amy"));
    amy.send_json(json!({"type": "join", "room": "r"}));
    // Part of no stream: no position, and nothing to replay.
    assert_eq!(
        watcher.recv_json(),
        json!({"type": "joined", "from": "amy", "room": "r"})
    );
    watcher.close();
    let (mut again, _) = connect(&server, "user_id=wat&recover=1");
    again.send_json(json!({"type": "join", "room": "r", "since": room_pos}));
    assert_eq!(again.recv_json()["content"]["r"], room_pos.as_str());
    let (replayed, recovered) = until_recovered(&mut again);
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(recovered["content"], json!({"ok": true, "replayed": 0}));
}

/// Pushes `{"n": n, "pad": 16 KiB}` to `user` until no session of it is
/// online any more (its queue overflowed and it was closed), then one
/// more; returns how many were pushed.
fn push_until_offline(server: &TestServer, user: &str) -> u64 {
    let pad = "x".repeat(16 * 1024);
    let push = |n: u64| {
        let body = json!({"type": "dm", "to": user, "content": {"n": n, "pad": pad}});
        let (status, text) = http(server.addr, "POST", "/api/ws/send", &[], &body.to_string());
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["sent"].as_u64() == Some(0)
    };
    let deadline = Instant::now() + common::WAIT;
    let mut pushed = 0;
    loop {
        pushed += 1;
        if push(pushed) {
            break;
        }
        assert!(Instant::now() < deadline, "still online after {pushed}");
    }
    pushed += 1;
    push(pushed);
    pushed
}

fn numbers(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["content"]["n"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_session_whose_queue_overflows_is_closed_1013_and_resumes_what_it_missed() {
    // History keeps it all (size 1000): the resume replays the rest. History
    // keeps one (size 1): it cannot vouch for the rest, ok:false.
    for size in [1000, 1] {
        let mut config = history_config(size);
        config.websocket.message_buffer_size = 8;
        let server = TestServer::start(config);
        let (mut slow, _) = connect(&server, "user_id=slow&recover=1");
        // It reads nothing while the pushes fill the socket buffers and
        // then its queue.
        let pushed = push_until_offline(&server, "slow");
        let mut got = Vec::new();
        let code = loop {
            match slow.ws.read().expect("read") {
                tungstenite::Message::Text(text) => {
                    got.push(serde_json::from_str::<Value>(text.as_str()).unwrap());
                }
                tungstenite::Message::Close(frame) => {
                    break frame.map_or(1005, |f| u16::from(f.code));
                }
                _ => {}
            }
        };
        assert_eq!(code, 1013, "closed as a slow consumer");
        // What was queued arrived whole and in order; nothing after a gap.
        let received = numbers(&got);
        let m = received.len() as u64;
        assert_eq!(received, (1..=m).collect::<Vec<_>>());
        assert!(m >= 1 && pushed - m >= 2, "{m} of {pushed}");
        let last = got.last().unwrap()["pos"].as_str().unwrap().to_owned();
        assert_eq!(offset(&json!(last)), m);
        let (mut back, _) = connect(&server, &format!("user_id=slow&since={last}"));
        let (replayed, recovered) = until_recovered(&mut back);
        if size == 1 {
            assert!(replayed.is_empty());
            assert_eq!(
                recovered["content"],
                json!({"u": {"ok": false, "replayed": 0}})
            );
        } else {
            assert_eq!(numbers(&replayed), (m + 1..=pushed).collect::<Vec<_>>());
            assert_eq!(
                recovered["content"],
                json!({"u": {"ok": true, "replayed": pushed - m}})
            );
        }
        assert_eq!(metric(&server, "wshub_slow_consumer_closes_total"), 1);
    }
}

#[test]
fn an_event_stream_whose_queue_overflows_ends_and_resumes_what_it_missed() {
    use common::sse::{request, Item, Stream};
    let mut config = history_config(1000);
    config.websocket.message_buffer_size = 8;
    let server = TestServer::start(config);
    let stream = request(server.addr, "/api/ws/sse?user_id=slow", &[]);
    server.wait_online(1);
    let pushed = push_until_offline(&server, "slow");
    let mut stream = Stream::open(stream);
    assert_eq!(stream.status, 200);
    let items = stream.read_to_end();
    assert_eq!(
        items.last(),
        Some(&Item::Comment("slow consumer".into())),
        "the response ends, saying why"
    );
    let got: Vec<Value> = items
        .iter()
        .filter_map(|item| match item {
            Item::Event { data, .. } => Some(serde_json::from_str(data).unwrap()),
            Item::Comment(_) => None,
        })
        .collect();
    let received = numbers(&got);
    let m = received.len() as u64;
    assert_eq!(received, (1..=m).collect::<Vec<_>>());
    assert!(m >= 1 && pushed - m >= 2, "{m} of {pushed}");
    let last = stream.last_id.clone().expect("events carry ids");
    let mut back = Stream::open(request(
        server.addr,
        "/api/ws/sse?user_id=slow",
        &[("Last-Event-ID", &last)],
    ));
    let replayed: Vec<Value> = (m + 1..=pushed).map(|_| back.next_json()).collect();
    assert_eq!(numbers(&replayed), (m + 1..=pushed).collect::<Vec<_>>());
    send(&server, "slow", 9999);
    assert_eq!(
        back.next_json()["content"],
        9999,
        "then live, nothing repeated"
    );
}

#[test]
fn escaped_recover_and_since_keys_still_resume() {
    let server = TestServer::start(history_config(10));
    // `%72ecover` is `recover`, `%73ince` is `since`.
    let (first, welcome) = connect(&server, "%72ecover=1");
    let a = welcome["content"]["a"].as_str().unwrap().to_owned();
    first.close();
    server.wait_online(0);
    broadcast(&server, 1);
    let (mut back, _) = connect(&server, &format!("%73ince={a}"));
    let (replayed, recovered) = until_recovered(&mut back);
    assert_eq!(contents(&replayed), [1]);
    assert_eq!(recovered["content"]["a"]["ok"], true);
    // Neither named: nothing new, as with history off.
    let mut plain = server.connect_path("/api/ws/connect?user_id=recovery");
    broadcast(&server, 2);
    assert_eq!(plain.recv_json(), json!({"type": "news", "content": 2}));
}
