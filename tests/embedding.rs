//! Embedding wshub as a library (docs/protocol.md section 5): the `Handle` pushed
//! from other threads, its errors (offline user, stopped server, full
//! command queue), and the hooks (connect, message, disconnect, and the
//! actions they request), all against a real server over loopback.

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use wshub::Incoming;
use wshub::COMMAND_QUEUE_CAPACITY;
use wshub::{
    Actions, CloseReason, Handle, HandleError, Hooks, Message, Mode, SessionInfo, SessionKey,
    Verdict,
};

/// What the scripted hooks saw: `(event, session)`.
type Events = Arc<Mutex<Vec<(String, SessionKey)>>>;

/// Hooks whose behaviour is keyed by user ids and message types, so each
/// test opts in by naming: user `banned` is refused; users `greet-*` get a
/// welcome on connect and are announced (`left`) on disconnect; message
/// `block` holds the loop at the gate; message `secret` is consumed and
/// acknowledged to its sender; message `kick` disconnects the user named
/// in its `content`.
#[derive(Clone, Default)]
struct Script {
    events: Events,
    gate: Gate,
}

impl Script {
    fn record(&self, what: String, session: &SessionInfo<'_>) {
        self.events.lock().unwrap().push((what, session.key));
    }

    /// The recorded event names, in order.
    fn names(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Waits (bounded) until `count` events were recorded.
    fn wait_events(&self, count: usize) -> Vec<(String, SessionKey)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events.lock().unwrap().clone();
            if events.len() >= count {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} hook events: {events:?}",
                events.len()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

fn user_name(session: &SessionInfo<'_>) -> String {
    session.user.unwrap_or("-").to_owned()
}

impl Hooks for Script {
    fn on_connect(
        &mut self,
        session: &SessionInfo<'_>,
        actions: &mut Actions,
    ) -> Result<(), String> {
        let user = user_name(session);
        self.record(format!("connect {user}"), session);
        if user == "banned" {
            return Err("banned user".into());
        }
        if user.starts_with("greet-") {
            actions.send_to_user(&user, &Message::new("welcome", json!({ "user": user })));
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        session: &SessionInfo<'_>,
        message: &Incoming<'_>,
        actions: &mut Actions,
    ) -> Verdict {
        let user = user_name(session);
        self.record(format!("message {user} {}", message.kind), session);
        match message.kind.as_ref() {
            "block" => {
                self.gate.hold();
                Verdict::Consume
            }
            "kick" => {
                let target = message
                    .content
                    .map(|c| c.get().trim_matches('"').to_owned());
                actions.disconnect_user(&target.unwrap_or_default());
                Verdict::Consume
            }
            "secret" => {
                actions.send_to_user(&user, &Message::new("ack", json!("secret")));
                Verdict::Consume
            }
            _ => Verdict::Relay,
        }
    }

    fn on_disconnect(
        &mut self,
        session: &SessionInfo<'_>,
        reason: &CloseReason,
        actions: &mut Actions,
    ) {
        let user = user_name(session);
        self.record(format!("disconnect {user} {reason}"), session);
        if user.starts_with("greet-") {
            actions.broadcast(&Message::new("left", json!(user)));
        }
    }
}

fn start_scripted(config: wshub::Config) -> (TestServer, Script) {
    let script = Script::default();
    let hooks = script.clone();
    let server = TestServer::start_with(config, Mode::Integrated, move |s| s.with_hooks(hooks));
    (server, script)
}

/// The next text message within `limit`, or `None` on silence.
fn recv_within(client: &mut Client, limit: Duration) -> Option<serde_json::Value> {
    client.ws.get_mut().set_read_timeout(Some(limit)).unwrap();
    let got = loop {
        match client.ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                break Some(serde_json::from_str(text.as_str()).expect("JSON"))
            }
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            Ok(other) => panic!("expected text, got {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    client.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    got
}

/// Closes with 1000 and waits for the server's answer.
fn close_normally(mut client: Client) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    client.ws.close(Some(frame)).expect("send Close");
    client.close();
}

/// Polls the published count until it is `count` (bounded).
fn wait_count(handle: &Handle, count: usize) {
    let deadline = Instant::now() + WAIT;
    while handle.online_count() != count {
        assert!(
            Instant::now() < deadline,
            "online_count stuck at {}, want {count}",
            handle.online_count()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn seq(n: usize) -> Message {
    Message::new("seq", json!({ "n": n }))
}

#[test]
fn the_handle_is_clone_send_and_sync() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<Handle>();
}

#[test]
fn ten_thousand_pushes_reach_both_sessions_of_the_user_in_order() {
    const COUNT: usize = 10_000;
    let mut config = test_config();
    // Up to 1024 commands are applied per loop pass before a flush.
    config.websocket.message_buffer_size = 4096;
    config.websocket.max_buffered_bytes = 16 << 20;
    let server = TestServer::start(config);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let mut client = server.connect(Some("bulk"));
            thread::spawn(move || {
                for n in 0..COUNT {
                    let got = client.recv_json();
                    assert_eq!(
                        got,
                        json!({"type": "seq", "content": {"n": n}}),
                        "message {n}"
                    );
                }
                client
            })
        })
        .collect();
    let handle = server.handle.clone();
    let pusher = thread::spawn(move || {
        for n in 0..COUNT {
            if (n + 1) % 500 == 0 {
                // Paces the pusher and checks the fan-out on the way.
                assert_eq!(
                    handle.send_to_user_counted("bulk", &seq(n)),
                    Ok(2),
                    "push {n}"
                );
            } else {
                assert_eq!(handle.send_to_user("bulk", &seq(n)), Ok(()), "push {n}");
            }
        }
    });
    pusher.join().expect("pusher");
    for reader in readers {
        let mut client = reader.join().expect("a reader saw a gap or a reorder");
        assert!(client.sync().is_empty(), "nothing after the last push");
    }
}

#[test]
fn offline_users_count_zero_and_raw_json_goes_out_verbatim() {
    let server = TestServer::start(test_config());
    let handle = &server.handle;
    assert_eq!(handle.send_to_user_counted("nobody", &seq(1)), Ok(0));
    assert_eq!(handle.send_to_user("nobody", &seq(2)), Ok(()));
    assert_eq!(handle.broadcast_to_room("empty-room", &seq(3)), Ok(()));
    assert_eq!(handle.disconnect_user("nobody"), Ok(()));

    let mut amy = server.connect(Some("amy"));
    let raw = br#"{"type":"raw", "content":[1, 2.50]}"#;
    assert_eq!(handle.send_json_to_user("amy", raw.to_vec()), Ok(()));
    assert_eq!(
        amy.recv_text().as_bytes(),
        raw,
        "pre-serialized JSON is sent byte for byte"
    );
    for bad in [&b"not json"[..], br#"{"type":""}"#, b"[1]"] {
        assert!(
            matches!(
                handle.send_json_to_user("amy", bad.to_vec()),
                Err(HandleError::InvalidMessage(_))
            ),
            "{}",
            String::from_utf8_lossy(bad)
        );
        assert!(matches!(
            handle.broadcast_json(bad.to_vec()),
            Err(HandleError::InvalidMessage(_))
        ));
    }
    assert!(amy.sync().is_empty(), "refused messages never reach anyone");
}

#[test]
fn broadcasts_from_the_handle_reach_everyone_or_the_room() {
    let server = TestServer::start(test_config());
    let mut amy = server.connect(Some("amy"));
    let mut anon = server.connect(None);
    amy.send_json(json!({"type": "join", "room": "r1"}));
    assert!(amy.sync().is_empty());
    server.handle.broadcast_to_room("r1", &seq(1)).unwrap();
    server.handle.broadcast(&seq(2)).unwrap();
    assert_eq!(amy.recv_json(), json!({"type": "seq", "content": {"n": 1}}));
    assert_eq!(amy.recv_json(), json!({"type": "seq", "content": {"n": 2}}));
    assert_eq!(
        anon.recv_json(),
        json!({"type": "seq", "content": {"n": 2}}),
        "the room push skips non-members"
    );
}

#[test]
fn pushes_after_shutdown_fail_with_closed() {
    let server = TestServer::start(test_config());
    let handle = server.handle.clone();
    let mut client = server.connect(Some("u"));
    assert_eq!(handle.shutdown(), Ok(()));
    assert_eq!(client.expect_close(), 1001);
    client.close();
    server.stop().expect("run returns Ok after a shutdown");

    assert_eq!(handle.send_to_user("u", &seq(1)), Err(HandleError::Closed));
    assert_eq!(
        handle.send_to_user_counted("u", &seq(1)),
        Err(HandleError::Closed)
    );
    assert_eq!(handle.broadcast(&seq(1)), Err(HandleError::Closed));
    assert_eq!(
        handle.broadcast_to_room("r", &seq(1)),
        Err(HandleError::Closed)
    );
    assert_eq!(
        handle.send_json_to_user("u", br#"{"type":"x"}"#.to_vec()),
        Err(HandleError::Closed)
    );
    assert_eq!(handle.disconnect_user("u"), Err(HandleError::Closed));
    assert_eq!(handle.online_users(), Err(HandleError::Closed));
    assert_eq!(handle.shutdown(), Err(HandleError::Closed));
    assert_eq!(handle.online_count(), 0);
}

#[test]
fn a_full_command_queue_fails_fast_and_the_loop_keeps_serving() {
    let (server, script) = start_scripted(test_config());
    let mut blocker = server.connect(Some("blocker"));
    let mut later = server.connect(Some("later"));
    blocker.send_json(json!({"type": "block"}));
    script.gate.wait_entered();

    // The loop is held inside a hook: nothing drains the queue.
    let handle = server.handle.clone();
    let pusher = thread::spawn(move || {
        let (mut queued, mut full) = (0, 0);
        for n in 0..COMMAND_QUEUE_CAPACITY + 100 {
            match handle.send_to_user("nobody", &seq(n)) {
                Ok(()) => queued += 1,
                Err(HandleError::QueueFull) => full += 1,
                Err(e) => panic!("push {n}: {e}"),
            }
        }
        (queued, full)
    });
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = done.send(pusher.join());
    });
    // Finishing while the gate is still closed proves no push waited for the loop.
    let outcome = finished.recv_timeout(GATE_LIMIT / 2);
    let handle = &server.handle;
    let refused_while_full = (
        handle.send_to_user_counted("later", &seq(0)),
        handle.online_users(),
        handle.disconnect_user("later"),
    );
    script.gate.open();
    waiter.join().unwrap();
    let (queued, full) = outcome
        .expect("pushes blocked while the loop was busy")
        .expect("pusher panicked");
    assert_eq!((queued, full), (COMMAND_QUEUE_CAPACITY, 100));
    assert_eq!(
        refused_while_full,
        (
            Err(HandleError::QueueFull),
            Err(HandleError::QueueFull),
            Err(HandleError::QueueFull)
        )
    );

    // Once the hook returns, the loop works through the backlog and serves.
    assert_eq!(http(server.addr, "GET", "/health", &[], "").0, 200);
    assert!(blocker.sync().is_empty());
    assert_eq!(handle.send_to_user_counted("later", &seq(7)), Ok(1));
    assert_eq!(
        later.recv_json(),
        json!({"type": "seq", "content": {"n": 7}})
    );
    assert_eq!(
        handle.online_users(),
        Ok(vec!["blocker".to_owned(), "later".to_owned()])
    );
    let (_, metrics) = http(server.addr, "GET", "/metrics", &[], "");
    assert!(
        metrics.contains("\nwshub_command_queue_depth 0\n"),
        "{metrics}"
    );
}

#[test]
fn hooks_see_connect_message_and_disconnect_in_order() {
    let (server, script) = start_scripted(test_config());
    let mut alice = server.connect(Some("alice"));
    let mut bob = server.connect(Some("bob"));
    alice.send_json(json!({"type": "chat", "to": "bob", "content": "hi"}));
    assert_eq!(
        bob.recv_json(),
        json!({"type": "chat", "to": "bob", "from": "alice", "content": "hi"})
    );
    close_normally(alice);
    script.wait_events(4);
    server.handle.disconnect_user("bob").unwrap();
    assert_eq!(bob.expect_close(), 1000);
    let anon = server.connect(None);
    anon.close();
    let events = script.wait_events(7);
    assert_eq!(
        script.names(),
        [
            "connect alice",
            "connect bob",
            "message alice chat",
            "disconnect alice client closed (1000)",
            "disconnect bob disconnected by server",
            "connect -",
            "disconnect - client closed",
        ]
    );
    let key = |at: usize| events[at].1;
    assert_eq!(
        (key(2), key(3)),
        (key(0), key(0)),
        "alice's events carry her session key"
    );
    assert_eq!(key(4), key(1), "bob's disconnect carries his key");
    assert_eq!(key(6), key(5));
    assert!(
        key(0) != key(1) && key(5) != key(0) && key(5) != key(1),
        "keys are distinct: {events:?}"
    );
}

#[test]
fn a_connect_hook_refusal_is_a_403_with_its_reason() {
    let (server, script) = start_scripted(test_config());
    let raw = raw_exchange(
        server.addr,
        upgrade_request("/api/ws/connect?user_id=banned").as_bytes(),
    );
    let (status, headers, body) = read_full_response(&mut &raw[..]);
    assert_eq!((status, body.as_str()), (403, r#"{"error":"banned user"}"#));
    assert!(
        headers.contains(&("content-type".into(), "application/json".into())),
        "{headers:?}"
    );
    assert_eq!(server.handle.online_count(), 0);
    let mut fine = server.connect(Some("fine"));
    assert!(fine.sync().is_empty());
    assert_eq!(server.handle.online_users(), Ok(vec!["fine".to_owned()]));
    assert_eq!(
        script.names()[..2],
        ["connect banned", "connect fine"],
        "a refused session never disconnects"
    );
}

#[test]
fn a_consuming_message_hook_stops_the_relay_and_its_actions_apply() {
    let (server, _script) = start_scripted(test_config());
    let mut alice = server.connect(Some("alice"));
    let mut bob = server.connect(Some("bob"));
    alice.send_json(json!({"type": "secret", "content": "x"}));
    assert_eq!(
        alice.recv_json(),
        json!({"type": "ack", "content": "secret"})
    );
    alice.send_json(json!({"type": "marker"}));
    // In order per sender and recipient: a relayed secret would come first.
    assert_eq!(bob.recv_json(), json!({"type": "marker", "from": "alice"}));
}

#[test]
fn connect_hook_actions_arrive_before_anything_else() {
    let (server, _script) = start_scripted(test_config());
    let mut ann = server.connect(Some("greet-ann"));
    assert_eq!(
        ann.recv_json(),
        json!({"type": "welcome", "content": {"user": "greet-ann"}})
    );
    assert!(ann.sync().is_empty());
}

#[test]
fn disconnect_hook_actions_apply_without_waiting_for_other_traffic() {
    let (server, script) = start_scripted(test_config());
    let ann = server.connect(Some("greet-ann"));
    let mut bo = server.connect(Some("greet-bo"));
    assert_eq!(bo.recv_json()["type"], "welcome");
    close_normally(ann);
    script.wait_events(3);
    assert_eq!(
        recv_within(&mut bo, WAIT),
        Some(json!({"type": "left", "content": "greet-ann"})),
        "the broadcast requested by on_disconnect never came (hook events: {:?})",
        script.names()
    );
}

#[test]
fn a_disconnect_requested_by_a_hook_runs_the_disconnect_hook_and_its_actions() {
    let (server, script) = start_scripted(test_config());
    let mut ann = server.connect(Some("greet-ann"));
    let mut bo = server.connect(Some("greet-bo"));
    assert_eq!(ann.recv_json()["type"], "welcome");
    assert_eq!(bo.recv_json()["type"], "welcome");
    bo.send_json(json!({"type": "kick", "content": "greet-ann"}));
    assert_eq!(ann.expect_close(), 1000);
    assert_eq!(
        recv_within(&mut bo, WAIT),
        Some(json!({"type": "left", "content": "greet-ann"})),
        "hook events: {:?}",
        script.names()
    );
    assert_eq!(
        server.handle.online_users(),
        Ok(vec!["greet-bo".to_owned()])
    );
}

#[test]
fn online_users_and_count_are_exact_across_connects_and_disconnects() {
    let server = TestServer::start(test_config());
    let handle = &server.handle;
    assert_eq!(
        (handle.online_count(), handle.online_users()),
        (0, Ok(vec![]))
    );
    let amy1 = server.connect(Some("amy"));
    let amy2 = server.connect(Some("amy"));
    let bob = server.connect(Some("bob"));
    let anon = server.connect(None);
    // Visible as soon as the server has seen the connect (before the 101 arrives).
    assert_eq!(handle.online_count(), 4);
    assert_eq!(
        handle.online_users(),
        Ok(vec!["amy".to_owned(), "bob".to_owned()])
    );
    let steps: [(Client, usize, &[&str]); 4] = [
        (amy1, 3, &["amy", "bob"]),
        (bob, 2, &["amy"]),
        (anon, 1, &["amy"]),
        (amy2, 0, &[]),
    ];
    for (client, count, users) in steps {
        client.close();
        wait_count(handle, count);
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        assert_eq!(handle.online_users(), Ok(users));
    }
}

#[test]
fn disconnect_user_closes_every_session_of_that_user_with_1000() {
    let server = TestServer::start(test_config());
    let mut tabs = [server.connect(Some("amy")), server.connect(Some("amy"))];
    let mut bob = server.connect(Some("bob"));
    server.handle.disconnect_user("amy").unwrap();
    for tab in &mut tabs {
        assert_eq!(tab.expect_close(), 1000);
    }
    assert_eq!(server.handle.online_count(), 1);
    assert_eq!(server.handle.online_users(), Ok(vec!["bob".to_owned()]));
    assert!(bob.sync().is_empty(), "other users are untouched");
}
