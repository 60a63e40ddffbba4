//! Rooms people can trust (docs/rooms.md): join modes with connect-token
//! grants and join tokens, the `on_join` hook, server-side membership over
//! REST and the handle, room listings and presence events, each over real
//! sockets, bad input included.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{http, test_config, Client, TestServer};
use serde_json::{json, Value};
use wshub::config::JoinMode;
use wshub::internals::jwt::sign_hs256;
use wshub::{Actions, Admission, Config, Hooks, Mode, SessionInfo};

const SECRET: &str = "rooms-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn config(mode: JoinMode) -> Config {
    let mut config = test_config();
    config.jwt.secret = SECRET.into();
    config.rooms.join = mode;
    config
}

fn token(claims: Value) -> String {
    sign_hs256(&claims, SECRET.as_bytes())
}

fn connect_with(server: &TestServer, claims: Value) -> Client {
    server.connect_path(&format!("/api/ws/connect?token={}", token(claims)))
}

/// Sends a join and returns what came back before the next pong.
fn join(client: &mut Client, room: &str, join_token: Option<&str>) -> Vec<Value> {
    let mut message = json!({"type": "join", "room": room});
    if let Some(t) = join_token {
        message["token"] = json!(t);
    }
    client.send_json(message);
    client.sync()
}

fn refused(room: &str) -> Vec<Value> {
    vec![json!({"type": "error", "content": format!("not allowed to join {room:?}")})]
}

fn listing(server: &TestServer, room: &str) -> Value {
    let (status, body) = http(
        server.addr,
        "GET",
        &format!("/api/ws/rooms/{room}"),
        &[],
        "",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn post(server: &TestServer, path: &str, body: &str) -> (u16, Value) {
    let (status, body) = http(server.addr, "POST", path, &[], body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn claims_grant_exact_names_and_prefixes_and_nothing_else() {
    let server = TestServer::start(config(JoinMode::Claims));
    let mut amy = connect_with(
        &server,
        json!({"sub": "amy", "rooms": ["team:42", "chat:*"]}),
    );
    assert_eq!(join(&mut amy, "team:42", None), Vec::<Value>::new());
    assert_eq!(join(&mut amy, "chat:lobby", None), Vec::<Value>::new());
    assert_eq!(join(&mut amy, "team:4", None), refused("team:4"));
    assert_eq!(join(&mut amy, "order:1234", None), refused("order:1234"));
    assert_eq!(listing(&server, "team:42")["users"], json!(["amy"]));
    assert_eq!(listing(&server, "order:1234")["count"], 0);

    let mut all = connect_with(&server, json!({"sub": "root", "rooms": ["*"]}));
    assert_eq!(join(&mut all, "order:1234", None), Vec::<Value>::new());

    // No token, or a token without the claim: nothing.
    let mut anon = server.connect(Some("bob"));
    assert_eq!(join(&mut anon, "team:42", None), refused("team:42"));
    let mut no_claim = connect_with(&server, json!({"sub": "cat"}));
    assert_eq!(join(&mut no_claim, "team:42", None), refused("team:42"));
    // A join token does not help in claims mode.
    let join_token = token(json!({"sub": "cat", "room": "team:42", "exp": now() + 60}));
    assert_eq!(
        join(&mut no_claim, "team:42", Some(&join_token)),
        refused("team:42")
    );
    // Refused joins keep the connection, and the sender is no member.
    no_claim.send_json(json!({"type": "say", "room": "team:42"}));
    assert_eq!(
        no_claim.sync(),
        [json!({"type": "error", "content": "not a member of room \"team:42\""})]
    );
    let (_, metrics) = http(server.addr, "GET", "/metrics", &[], "");
    assert!(
        metrics.contains("\nwshub_joins_refused_total 5\n"),
        "{metrics}"
    );
}

#[test]
fn bad_rooms_claims_grant_nothing() {
    let mut config = config(JoinMode::Claims);
    config.websocket.max_id_bytes = 16;
    let server = TestServer::start(config);
    // Not an array of strings: no grant at all.
    for claim in [
        json!("team:42"),
        json!(["team:42", 7]),
        json!({"team:42": true}),
    ] {
        let mut c = connect_with(&server, json!({"sub": "amy", "rooms": claim}));
        assert_eq!(join(&mut c, "team:42", None), refused("team:42"), "{claim}");
    }
    // '*' anywhere but the end: that entry grants nothing.
    let mut c = connect_with(&server, json!({"sub": "amy", "rooms": ["a*b", "*x", "ok"]}));
    for room in ["a*b", "axb", "x", "*x"] {
        assert_eq!(join(&mut c, room, None), refused(room));
    }
    assert_eq!(join(&mut c, "ok", None), Vec::<Value>::new());
    // Names past max_id_bytes are ignored; the rest of the claim holds.
    let long = "l".repeat(17);
    let mut c = connect_with(
        &server,
        json!({"sub": "amy", "rooms": [long.clone(), format!("{long}*"), "short"]}),
    );
    assert_eq!(join(&mut c, "short", None), Vec::<Value>::new());
    assert_eq!(
        join(&mut c, &"l".repeat(16), None),
        refused(&"l".repeat(16))
    );
    let reply = join(&mut c, &long, None);
    assert_eq!(
        reply,
        [json!({"type": "error", "content": "invalid \"room\": longer than 16 bytes"})]
    );
}

#[test]
fn join_tokens_are_checked_for_key_user_room_and_expiry() {
    let server = TestServer::start(config(JoinMode::Token));
    let mut amy = connect_with(&server, json!({"sub": "amy"}));
    let exp = now() + 60;
    let good = token(json!({"sub": "amy", "room": "order:1", "exp": exp}));
    let cases = [
        (
            "forged",
            sign_hs256(
                &json!({"sub": "amy", "room": "order:1", "exp": exp}),
                b"wrong-key",
            ),
        ),
        (
            "expired",
            token(json!({"sub": "amy", "room": "order:1", "exp": now() - 3600})),
        ),
        (
            "another user",
            token(json!({"sub": "bob", "room": "order:1", "exp": exp})),
        ),
        (
            "another room",
            token(json!({"sub": "amy", "room": "order:2", "exp": exp})),
        ),
        ("no exp", token(json!({"sub": "amy", "room": "order:1"}))),
        ("alg none", {
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
            let claims = json!({"sub": "amy", "room": "order:1", "exp": exp});
            format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
        }),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, bad) in &cases {
        assert_eq!(
            join(&mut amy, "order:1", Some(bad)),
            refused("order:1"),
            "{what}"
        );
    }
    assert_eq!(listing(&server, "order:1")["count"], 0);
    assert_eq!(join(&mut amy, "order:1", Some(&good)), Vec::<Value>::new());
    assert_eq!(listing(&server, "order:1")["users"], json!(["amy"]));
    // The token is never relayed, and the claim still works in token mode.
    let mut granted = connect_with(&server, json!({"sub": "bob", "rooms": ["order:*"]}));
    assert_eq!(join(&mut granted, "order:1", None), Vec::<Value>::new());
    granted.send_json(json!({"type": "say", "room": "order:1", "token": "x"}));
    assert_eq!(
        amy.recv_json(),
        json!({"type": "say", "from": "bob", "room": "order:1"})
    );
    // Anonymous sessions cannot use join tokens.
    let mut anon = server.connect(None);
    assert_eq!(join(&mut anon, "order:1", Some(&good)), refused("order:1"));
}

struct NoVip;

impl Hooks for NoVip {
    fn on_join(&mut self, session: &SessionInfo<'_>, room: &str, _: &mut Actions) -> Admission {
        if room == "vip" && session.user != Some("boss") {
            Admission::Deny
        } else {
            Admission::Allow
        }
    }
}

#[test]
fn the_on_join_hook_decides_after_the_mode() {
    let server = TestServer::start_with(test_config(), Mode::Integrated, |s| s.with_hooks(NoVip));
    let mut amy = server.connect(Some("amy"));
    assert_eq!(join(&mut amy, "vip", None), refused("vip"));
    assert_eq!(join(&mut amy, "lobby", None), Vec::<Value>::new());
    let mut boss = server.connect(Some("boss"));
    assert_eq!(join(&mut boss, "vip", None), Vec::<Value>::new());
    // REST joins are the server's own: the hook is not asked.
    let (status, body) = post(&server, "/api/ws/join", r#"{"user":"amy","room":"vip"}"#);
    assert_eq!((status, body), (200, json!({"sessions": 1})));
}

#[test]
fn server_types_are_refused_from_clients() {
    let server = TestServer::start(test_config());
    let mut amy = server.connect(Some("amy"));
    let mut bob = server.connect(Some("bob"));
    for kind in ["joined", "left", "welcome", "recovered"] {
        amy.send_json(json!({"type": kind, "to": "bob", "room": "", "content": 1}));
        assert_eq!(
            amy.sync(),
            [
                json!({"type": "error", "content": format!("type {kind:?} is reserved for the server")})
            ]
        );
    }
    bob.expect_silence(200);
}

#[test]
fn rest_membership_acts_on_every_session_of_the_user() {
    let mut config = test_config();
    config.websocket.admin_token = "adm".into();
    config.websocket.max_rooms_per_session = 2;
    let server = TestServer::start(config);
    let admin = [("Authorization", "Bearer adm")];
    let call = |path: &str, body: &str| {
        let (status, body) = http(server.addr, "POST", path, &admin, body);
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    let mut tab1 = server.connect(Some("amy"));
    let mut tab2 = server.connect(Some("amy"));
    let mut bob = server.connect(Some("bob"));
    assert_eq!(join(&mut bob, "ticket:7", None), Vec::<Value>::new());
    let body = r#"{"user":"amy","room":"ticket:7"}"#;
    assert_eq!(call("/api/ws/join", body), (200, json!({"sessions": 2})));
    assert_eq!(
        call("/api/ws/join", body),
        (200, json!({"sessions": 0})),
        "no change"
    );
    bob.send_json(json!({"type": "say", "room": "ticket:7", "content": "hi"}));
    let said = json!({"type": "say", "from": "bob", "room": "ticket:7", "content": "hi"});
    assert_eq!(tab1.recv_json(), said);
    assert_eq!(tab2.recv_json(), said);
    let (status, body) = http(server.addr, "GET", "/api/ws/rooms/ticket%3A7", &admin, "");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"room": "ticket:7", "count": 3, "users": ["amy", "bob"]})
    );
    assert_eq!(
        call("/api/ws/leave", body_of("amy", "ticket:7")),
        (200, json!({"sessions": 2}))
    );
    let (_, body) = http(server.addr, "GET", "/api/ws/rooms/ticket:7", &admin, "");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"room": "ticket:7", "count": 1, "users": ["bob"]})
    );

    // max_rooms_per_session: a full session is skipped and not counted.
    assert_eq!(join(&mut tab1, "a", None), Vec::<Value>::new());
    assert_eq!(join(&mut tab1, "b", None), Vec::<Value>::new());
    assert_eq!(
        call("/api/ws/join", body_of("amy", "c")),
        (200, json!({"sessions": 1}))
    );
    let (_, metrics) = http(server.addr, "GET", "/metrics", &admin, "");
    assert!(
        metrics.contains("\nwshub_joins_skipped_full_total 1\n"),
        "{metrics}"
    );

    // An offline user: nothing to change.
    assert_eq!(
        call("/api/ws/join", body_of("nobody", "r")),
        (200, json!({"sessions": 0}))
    );
    // Without the admin token: 401, for the listing too.
    let (status, _) = http(
        server.addr,
        "POST",
        "/api/ws/join",
        &[],
        body_of("amy", "r"),
    );
    assert_eq!(status, 401);
    let (status, _) = http(server.addr, "GET", "/api/ws/rooms/r", &[], "");
    assert_eq!(status, 401);
    // Bad bodies: 400.
    for bad in [
        "",
        "{",
        "[]",
        r#"{"user":"amy"}"#,
        r#"{"user":"","room":"r"}"#,
        r#"{"user":5,"room":"r"}"#,
    ] {
        assert_eq!(call("/api/ws/join", bad).0, 400, "{bad}");
        assert_eq!(call("/api/ws/leave", bad).0, 400, "{bad}");
    }
    let (status, _) = http(server.addr, "GET", "/api/ws/join", &admin, "");
    assert_eq!(status, 405);
}

fn body_of(user: &str, room: &str) -> &'static str {
    Box::leak(
        json!({"user": user, "room": room})
            .to_string()
            .into_boxed_str(),
    )
}

#[test]
fn the_handle_joins_and_leaves_like_rest() {
    let server = TestServer::start(test_config());
    let mut amy = server.connect(Some("amy"));
    let mut bob = server.connect(Some("bob"));
    server.wait_online(2);
    assert_eq!(server.handle.join("amy", "r"), Ok(1));
    assert_eq!(server.handle.join("nobody", "r"), Ok(0));
    assert_eq!(server.handle.join("amy", "bad\nroom"), Ok(0));
    assert_eq!(join(&mut bob, "r", None), Vec::<Value>::new());
    bob.send_json(json!({"type": "say", "room": "r"}));
    assert_eq!(
        amy.recv_json(),
        json!({"type": "say", "from": "bob", "room": "r"})
    );
    assert_eq!(server.handle.leave("amy", "r"), Ok(1));
    assert_eq!(listing(&server, "r")["users"], json!(["bob"]));
}

#[test]
fn presence_is_one_event_per_user_not_per_tab() {
    let mut config = test_config();
    config.rooms.presence = true;
    let server = TestServer::start(config);
    let mut watcher = server.connect(Some("wat"));
    assert_eq!(join(&mut watcher, "r", None), Vec::<Value>::new());
    let mut tab1 = server.connect(Some("amy"));
    let mut tab2 = server.connect(Some("amy"));
    let joined = json!({"type": "joined", "from": "amy", "room": "r"});
    let left = json!({"type": "left", "from": "amy", "room": "r"});

    assert_eq!(join(&mut tab1, "r", None), Vec::<Value>::new());
    assert_eq!(watcher.recv_json(), joined);
    assert_eq!(
        join(&mut tab2, "r", None),
        Vec::<Value>::new(),
        "the joiner gets no event"
    );
    // Leaving with one tab still in: nothing. The last one leaves: left.
    tab1.send_json(json!({"type": "leave", "room": "r"}));
    tab1.sync();
    assert_eq!(watcher.sync(), Vec::<Value>::new());
    tab2.close();
    assert_eq!(watcher.recv_json(), left);

    // Anonymous sessions make none.
    let mut anon = server.connect(None);
    assert_eq!(join(&mut anon, "r", None), Vec::<Value>::new());
    anon.close();
    assert_eq!(watcher.sync(), Vec::<Value>::new());

    // REST join and leave make them too, once per user.
    let _t3 = server.connect(Some("amy"));
    let _t4 = server.connect(Some("amy"));
    server.wait_online(4);
    let (status, body) = post(&server, "/api/ws/join", r#"{"user":"amy","room":"r"}"#);
    assert_eq!(
        (status, body),
        (200, json!({"sessions": 3})),
        "tab1, t3, t4"
    );
    assert_eq!(watcher.recv_json(), joined);
    let (status, body) = post(&server, "/api/ws/leave", r#"{"user":"amy","room":"r"}"#);
    assert_eq!((status, body), (200, json!({"sessions": 3})));
    assert_eq!(watcher.recv_json(), left);
    assert_eq!(watcher.sync(), Vec::<Value>::new(), "exactly one of each");
}

#[test]
fn presence_is_off_by_default() {
    let server = TestServer::start(test_config());
    let mut watcher = server.connect(Some("wat"));
    assert_eq!(join(&mut watcher, "r", None), Vec::<Value>::new());
    let mut amy = server.connect(Some("amy"));
    assert_eq!(join(&mut amy, "r", None), Vec::<Value>::new());
    amy.close();
    watcher.expect_silence(300);
}
