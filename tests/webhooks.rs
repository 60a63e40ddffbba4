//! Webhooks (docs/webhooks.md), black-box: a real server POSTs to a
//! receiving HTTP server inside the test (loopback, no internet). Covers the
//! signature, batching, one `user_online` for three tabs, `user_offline`
//! after the delay and not before, no event for a quick reconnect, room
//! events, retries after 500s and timeouts, and the queue's overflow
//! counted in `/metrics`. The cluster cases are in tests/cluster_webhooks.rs.

mod common;

use std::time::{Duration, Instant};

use common::backend::{Backend, Received, Reply};
use common::{http, test_config, TestServer};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use wshub::Config;

const SECRET: &str = "webhook-secret-for-tests";

fn config(backend: &Backend, edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    config.webhooks.url = backend.url("/hooks/wshub").into();
    config.webhooks.secret = SECRET.into();
    config.webhooks.offline_delay = Duration::from_secs(1);
    edit(&mut config);
    config
}

/// Every event received so far, in order.
fn events(received: &[Received]) -> Vec<Value> {
    received
        .iter()
        .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn of(events: &[Value], kind: &str, name: &str) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == kind && (e["user"] == name || e["room"] == name))
        .count()
}

fn expected_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

fn metric(server: &TestServer, name: &str) -> u64 {
    let (_, text) = http(server.addr, "GET", "/metrics", &[], "");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

#[test]
fn signed_batched_one_online_for_three_tabs() {
    let backend = Backend::start(|_| Reply::ok("{}"));
    let server = TestServer::start(config(&backend, |_| {}));
    let tabs: Vec<_> = (0..3).map(|_| server.connect(Some("amy"))).collect();
    let _bob = server.connect(Some("bob"));
    let _anonymous = server.connect(None);
    let got = backend.wait_for(Duration::from_secs(5), "both onlines", |r| {
        of(&events(r), "user_online", "bob") == 1
    });
    // Nothing else arrives: three tabs are one user_online.
    std::thread::sleep(Duration::from_millis(600));
    let got = backend.received().len().max(got.len());
    let all = backend.received();
    assert_eq!(got, all.len());
    let evs = events(&all);
    assert_eq!(of(&evs, "user_online", "amy"), 1, "{evs:?}");
    assert_eq!(of(&evs, "user_online", "bob"), 1, "{evs:?}");
    assert_eq!(evs.len(), 2, "{evs:?}");
    // Both fit in one batch: they were decided within 250 ms.
    assert_eq!(all.len(), 1, "one POST for both events");
    let post = &all[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, "/hooks/wshub");
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(
        post.header("x-wshub-signature"),
        Some(expected_signature(&post.body).as_str())
    );
    let amy = evs.iter().find(|e| e["user"] == "amy").expect("amy");
    assert_eq!(amy["ip"], "127.0.0.1");
    let at = amy["at"].as_str().expect("at");
    assert!(
        at.len() >= 20 && at.as_bytes()[10] == b'T' && at.ends_with('Z'),
        "RFC 3339 UTC: {at}"
    );
    drop(tabs);
}

#[test]
fn offline_after_the_delay_and_not_before() {
    let backend = Backend::start(|_| Reply::ok(""));
    let server = TestServer::start(config(&backend, |_| {}));
    let tabs: Vec<_> = (0..2).map(|_| server.connect(Some("amy"))).collect();
    backend.wait_for(Duration::from_secs(5), "online", |r| {
        of(&events(r), "user_online", "amy") == 1
    });
    let mut tabs = tabs.into_iter();
    tabs.next().expect("tab").close();
    server.wait_online(1);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        of(&events(&backend.received()), "user_offline", "amy"),
        0,
        "one tab is still open"
    );
    let closed = Instant::now();
    tabs.next().expect("tab").close();
    server.wait_online(0);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        of(&events(&backend.received()), "user_offline", "amy"),
        0,
        "not before offline_delay"
    );
    let got = backend.wait_for(Duration::from_secs(5), "offline", |r| {
        of(&events(r), "user_offline", "amy") == 1
    });
    let post = got
        .iter()
        .find(|r| of(&events(std::slice::from_ref(r)), "user_offline", "amy") == 1)
        .expect("the offline POST");
    let after = post.at.duration_since(closed);
    assert!(after >= Duration::from_millis(1000), "{after:?}");
    let offline = events(&got)
        .into_iter()
        .find(|e| e["type"] == "user_offline")
        .expect("offline");
    assert!(offline.get("ip").is_none(), "{offline}");
}

#[test]
fn a_quick_reconnect_gives_no_event() {
    let backend = Backend::start(|_| Reply::ok(""));
    let server = TestServer::start(config(&backend, |c| {
        c.webhooks.offline_delay = Duration::from_secs(2);
    }));
    let tab = server.connect(Some("amy"));
    backend.wait_for(Duration::from_secs(5), "online", |r| {
        of(&events(r), "user_online", "amy") == 1
    });
    tab.close();
    server.wait_online(0);
    std::thread::sleep(Duration::from_millis(300));
    let _again = server.connect(Some("amy"));
    std::thread::sleep(Duration::from_millis(3000));
    let evs = events(&backend.received());
    assert_eq!(of(&evs, "user_offline", "amy"), 0, "{evs:?}");
    assert_eq!(of(&evs, "user_online", "amy"), 1, "{evs:?}");
}

#[test]
fn room_events_when_listed() {
    let backend = Backend::start(|_| Reply::ok(""));
    let server = TestServer::start(config(&backend, |c| {
        c.webhooks.events = ["room_occupied", "room_vacated"].map(String::from).to_vec();
    }));
    let mut a = server.connect(Some("amy"));
    let mut b = server.connect(Some("bob"));
    a.send_json(json!({"type": "join", "room": "lobby"}));
    b.send_json(json!({"type": "join", "room": "lobby"}));
    a.sync();
    b.sync();
    backend.wait_for(Duration::from_secs(5), "occupied", |r| {
        of(&events(r), "room_occupied", "lobby") == 1
    });
    a.send_json(json!({"type": "leave", "room": "lobby"}));
    a.sync();
    b.close();
    let got = backend.wait_for(Duration::from_secs(5), "vacated", |r| {
        of(&events(r), "room_vacated", "lobby") == 1
    });
    let evs = events(&got);
    assert_eq!(of(&evs, "room_occupied", "lobby"), 1, "{evs:?}");
    // Only the listed kinds are sent.
    assert_eq!(of(&evs, "user_online", "amy"), 0, "{evs:?}");
}

#[test]
fn at_most_100_events_per_post() {
    let backend = Backend::start(|_| Reply::ok(""));
    let server = TestServer::start(config(&backend, |_| {}));
    let clients: Vec<_> = (0..150)
        .map(|i| server.connect(Some(&format!("u{i}"))))
        .collect();
    let got = backend.wait_for(Duration::from_secs(10), "150 onlines", |r| {
        events(r).len() >= 150
    });
    assert!(got.len() >= 2, "{} POSTs", got.len());
    for post in &got {
        let n = post.json()["events"].as_array().map_or(0, Vec::len);
        assert!((1..=100).contains(&n), "{n} events in one POST");
    }
    let evs = events(&got);
    for i in 0..150 {
        assert_eq!(of(&evs, "user_online", &format!("u{i}")), 1);
    }
    drop(clients);
}

#[test]
fn retried_after_500s_and_timeouts_with_the_same_body() {
    let backend = Backend::start(|_| Reply::status(500));
    let server = TestServer::start(config(&backend, |c| {
        c.webhooks.timeout = Duration::from_millis(300);
    }));
    let _amy = server.connect(Some("amy"));
    backend.wait_for(Duration::from_secs(5), "two failed tries", |r| r.len() >= 2);
    // Now the backend is slow: the client times out and tries again.
    backend.respond_with(|_| Reply {
        status: 200,
        body: String::new(),
        delay: Duration::from_millis(1500),
    });
    let before = backend.received().len();
    backend.wait_for(Duration::from_secs(10), "a timed-out try", |r| {
        r.len() > before
    });
    backend.respond_with(|_| Reply::ok(""));
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&server, "wshub_webhook_events_delivered_total") < 1 {
        assert!(Instant::now() < deadline, "never delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = backend.received();
    assert!(all.len() >= 4, "{} tries", all.len());
    // At least once: the same signed body every time.
    for post in &all {
        assert_eq!(post.body, all[0].body);
        assert_eq!(
            post.header("x-wshub-signature"),
            Some(expected_signature(&post.body).as_str())
        );
    }
    assert!(metric(&server, "wshub_webhook_failed_attempts_total") >= 3);
    // Backoff: the tries are spread out, not a tight loop.
    let span = all[all.len() - 1].at.duration_since(all[0].at);
    assert!(span >= Duration::from_millis(700), "{span:?}");
}

#[test]
fn queue_overflow_is_counted() {
    // A backend that never answers in time holds the sender on its first
    // batch, so the bounded queue fills and the rest is dropped.
    let backend = Backend::start(|_| Reply {
        status: 200,
        body: String::new(),
        delay: Duration::from_secs(30),
    });
    let server = TestServer::start(config(&backend, |c| {
        c.webhooks.events = vec!["room_occupied".to_owned()];
        c.webhooks.timeout = Duration::from_secs(60);
    }));
    let mut client = server.connect(Some("amy"));
    let rooms = 10_400;
    for i in 0..rooms {
        client.send_json(json!({"type": "join", "room": format!("r{i}")}));
        client.send_json(json!({"type": "leave", "room": format!("r{i}")}));
    }
    client.sync();
    let queued = metric(&server, "wshub_webhook_events_queued_total");
    let dropped = metric(&server, "wshub_webhook_events_dropped_total");
    assert_eq!(queued + dropped, rooms as u64);
    assert!(dropped >= 200, "queued {queued}, dropped {dropped}");
    assert!(queued <= 10_000 + 100, "queued {queued}");
}

#[test]
fn https_urls_speak_tls() {
    // A plain TCP listener standing in for an https backend: what arrives
    // first must be a TLS handshake record (0x16), never plaintext HTTP.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}/hooks", listener.local_addr().expect("addr"));
    let mut config = test_config();
    config.webhooks.url = url.into();
    config.webhooks.timeout = Duration::from_millis(500);
    let server = TestServer::start(config);
    let _amy = server.connect(Some("amy"));
    let (mut stream, _) = listener.accept().expect("the webhook connection");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut stream, &mut first).expect("first byte");
    assert_eq!(first[0], 0x16, "a TLS ClientHello");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "wshub_webhook_failed_attempts_total") < 1 {
        assert!(
            Instant::now() < deadline,
            "the failed handshake was not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&server, "wshub_webhook_events_delivered_total"), 0);
}
