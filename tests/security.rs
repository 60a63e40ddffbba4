//! Black-box security tests over loopback (docs/protocol.md §3, §6; issue 4): JWT
//! on connect, the admin token on the push API, the Origin allow-list, the
//! upgrade rejection order, and that no secret reaches a log line.
//!
//! Tokens are made here with `wshub::internals::jwt::sign_hs256` or signed by hand with
//! `hmac`/`sha2`, so a bug shared by the server's signer and verifier cannot
//! hide the algorithm-confusion cases. Every refusal asserts the exact status
//! and the exact JSON body. Touches only servers it starts: in-process ones
//! through `tests/common`, and one `wshub` binary that it stops by its PID.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{http, read_full_response, test_config, upgrade_request, Client, TestServer, WAIT};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::{HeaderName, HeaderValue};
use wshub::internals::jwt::sign_hs256;
use wshub::Config;

const SECRET: &str = "jwt-secret-Qx7-for-tests";
const ADMIN: &str = "admin-Tok-42-for-tests";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn token(claims: Value) -> String {
    sign_hs256(&claims, SECRET.as_bytes())
}

/// A JWT with an arbitrary header JSON, HMAC-SHA256-signed with `secret`.
fn token_with_header(header: &str, claims: &Value, secret: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{signature}")
}

fn jwt_config(required: bool) -> Config {
    let mut config = test_config();
    config.jwt.secret = SECRET.into();
    config.jwt.required = required;
    config
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Sends a WebSocket upgrade for `path` with `headers` added; returns status,
/// lower-cased headers and body of the answer (the socket is dropped).
fn upgrade_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut request = upgrade_request(path);
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    request.insert_str(request.len() - 2, &extra);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write upgrade");
    read_full_response(&mut BufReader::new(stream))
}

/// Asserts that the upgrade is refused with exactly `status` and `{"error": reason}`.
#[track_caller]
fn assert_refused(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    status: u16,
    reason: &str,
) {
    let (got, response_headers, body) = upgrade_with(server.addr, path, headers);
    let parsed: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("body not JSON ({e}): {body:?}"));
    assert_eq!(
        (got, parsed),
        (status, json!({ "error": reason })),
        "upgrade {path} with {headers:?}"
    );
    let content_type = response_headers.iter().find(|(n, _)| n == "content-type");
    assert_eq!(
        content_type.map(|(_, v)| v.as_str()),
        Some("application/json"),
        "{path}"
    );
}

/// Asserts that the upgrade is accepted (101); the session stays open until
/// the returned stream is dropped.
#[track_caller]
fn assert_upgraded(server: &TestServer, path: &str, headers: &[(&str, &str)]) {
    let (status, _, body) = upgrade_with(server.addr, path, headers);
    assert_eq!(status, 101, "upgrade {path} with {headers:?}: {body}");
}

/// Opens a chat session through tungstenite with extra request headers.
fn connect_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Client {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = HeaderValue::from_str(value).expect("header value");
        request.headers_mut().insert(name, value);
    }
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let (ws, _) = tungstenite::client(request, stream).expect("websocket handshake");
    Client { ws }
}

fn status_users(server: &TestServer, headers: &[(&str, &str)]) -> (Value, Value) {
    let (code, body) = http(server.addr, "GET", "/api/ws/status", headers, "");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("status JSON");
    (v["online_count"].clone(), v["online_users"].clone())
}

/// Proves that `client` is the only session and speaks for `user`: status
/// lists exactly that user, and a REST send to the user reaches the client.
#[track_caller]
fn assert_session_user(server: &TestServer, client: &mut Client, user: &str) {
    assert_eq!(status_users(server, &[]), (json!(1), json!([user])));
    let body = json!({"type": "probe", "to": user, "content": {"n": 1}}).to_string();
    assert_eq!(
        http(server.addr, "POST", "/api/ws/send", &[], &body),
        (200, r#"{"sent":1}"#.to_owned())
    );
    assert_eq!(
        client.recv_json(),
        json!({"type": "probe", "to": user, "content": {"n": 1}})
    );
}

// ---------------------------------------------------------------- JWT ----

#[test]
fn valid_token_in_header_names_the_session() {
    let server = TestServer::start(jwt_config(false));
    let t = token(json!({"id": "alice", "exp": now() + 300}));
    let mut client = connect_with(
        server.addr,
        "/api/ws/connect",
        &[("Authorization", &bearer(&t))],
    );
    assert_session_user(&server, &mut client, "alice");
}

#[test]
fn valid_token_in_query_names_the_session() {
    let server = TestServer::start(jwt_config(false));
    let t = token(json!({"id": "bob", "exp": now() + 300}));
    let mut client = server.connect_path(&format!("/api/ws/connect?token={t}"));
    assert_session_user(&server, &mut client, "bob");
}

#[test]
fn header_token_wins_over_query_token() {
    let server = TestServer::start(jwt_config(false));
    let alice = token(json!({"id": "alice"}));
    let bob = token(json!({"id": "bob"}));
    let mut client = connect_with(
        server.addr,
        &format!("/api/ws/connect?token={bob}"),
        &[("Authorization", &bearer(&alice))],
    );
    assert_session_user(&server, &mut client, "alice");
    client.close();
    server.wait_online(0);
    // An invalid header token is not rescued by a valid query token.
    let forged = sign_hs256(&json!({"id": "alice"}), b"not-the-secret");
    assert_refused(
        &server,
        &format!("/api/ws/connect?token={bob}"),
        &[("Authorization", &bearer(&forged))],
        401,
        "invalid token signature",
    );
}

#[test]
fn non_bearer_authorization_leaves_the_query_token_in_charge() {
    let server = TestServer::start(jwt_config(false));
    let bob = token(json!({"id": "bob"}));
    let mut client = connect_with(
        server.addr,
        &format!("/api/ws/connect?token={bob}"),
        &[("Authorization", "Basic dXNlcjpwYXNz")],
    );
    assert_session_user(&server, &mut client, "bob");
}

#[test]
fn token_user_overrides_query_user_id() {
    let server = TestServer::start(jwt_config(false));
    let t = token(json!({"id": "alice"}));
    let mut client = server.connect_path(&format!("/api/ws/connect?user_id=mallory&token={t}"));
    assert_session_user(&server, &mut client, "alice");
    let body = json!({"type": "probe", "to": "mallory", "content": 1}).to_string();
    assert_eq!(
        http(server.addr, "POST", "/api/ws/send", &[], &body),
        (200, r#"{"sent":0}"#.to_owned())
    );
    let header_client = connect_with(
        server.addr,
        "/api/ws/connect?user_id=mallory",
        &[("Authorization", &bearer(&token(json!({"sub": "carol"}))))],
    );
    let (count, users) = status_users(&server, &[]);
    assert_eq!((count, users), (json!(2), json!(["alice", "carol"])));
    header_client.close();
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    let server = TestServer::start(jwt_config(false));
    let now = now();
    // The contract allows at most 60 s of leeway, so 61 s is already out.
    let cases = [
        (json!({"id": "u", "exp": now - 3600}), "token expired"),
        (json!({"id": "u", "exp": now - 61}), "token expired"),
        (json!({"id": "u", "nbf": now + 3600}), "token not yet valid"),
        (json!({"id": "u", "nbf": now + 61}), "token not yet valid"),
        (
            json!({"id": "u", "nbf": now - 10, "exp": now - 3600}),
            "token expired",
        ),
    ];
    for (claims, reason) in cases {
        let t = token(claims);
        assert_refused(
            &server,
            &format!("/api/ws/connect?token={t}"),
            &[],
            401,
            reason,
        );
        assert_refused(
            &server,
            "/api/ws/connect",
            &[("Authorization", &bearer(&t))],
            401,
            reason,
        );
    }
    // Both claims inside their window: accepted.
    let t = token(json!({"id": "u", "nbf": now - 10, "exp": now + 300}));
    assert_upgraded(&server, &format!("/api/ws/connect?token={t}"), &[]);
}

#[test]
fn bad_signatures_are_refused() {
    let server = TestServer::start(jwt_config(false));
    let claims = json!({"id": "alice", "exp": now() + 300});
    let other_key = sign_hs256(&claims, b"some-other-secret");
    let good = token(claims);
    let parts: Vec<&str> = good.split('.').collect();
    let forged_payload = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(r#"{"id":"admin"}"#),
        parts[2]
    );
    // The signature's first character: all six of its bits are significant
    // (the last one's low bits are padding, and changing those is malformed).
    let first = parts[2].chars().next().expect("non-empty signature");
    let flipped = format!(
        "{}.{}.{}{}",
        parts[0],
        parts[1],
        if first == 'A' { 'B' } else { 'A' },
        &parts[2][1..]
    );
    for t in [other_key, forged_payload, flipped] {
        assert_refused(
            &server,
            &format!("/api/ws/connect?token={t}"),
            &[],
            401,
            "invalid token signature",
        );
    }
}

#[test]
fn other_algorithms_are_refused() {
    let server = TestServer::start(jwt_config(false));
    let claims = json!({"id": "alice"});
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let tokens = [
        unsigned,
        // "none" but carrying a valid HMAC: the header alone must refuse it.
        token_with_header(r#"{"alg":"none","typ":"JWT"}"#, &claims, SECRET),
        // Algorithm confusion: RS256 header, HMAC keyed with the secret.
        token_with_header(r#"{"alg":"RS256","typ":"JWT"}"#, &claims, SECRET),
        token_with_header(r#"{"alg":"HS512","typ":"JWT"}"#, &claims, SECRET),
        token_with_header(r#"{"typ":"JWT"}"#, &claims, SECRET),
    ];
    for t in tokens {
        assert_refused(
            &server,
            &format!("/api/ws/connect?token={t}"),
            &[],
            401,
            "unsupported token algorithm",
        );
        assert_refused(
            &server,
            "/api/ws/connect",
            &[("Authorization", &bearer(&t))],
            401,
            "unsupported token algorithm",
        );
    }
    // The same claims under an explicit HS256 header are fine.
    let hs256 = token_with_header(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, SECRET);
    assert_upgraded(&server, &format!("/api/ws/connect?token={hs256}"), &[]);
}

#[test]
fn wrong_claim_types_are_refused() {
    let server = TestServer::start(jwt_config(false));
    let cases = [
        (
            json!({"id": "u", "exp": "tomorrow"}),
            "invalid token claim: exp",
        ),
        (json!({"id": "u", "exp": null}), "invalid token claim: exp"),
        (json!({"id": "u", "nbf": [1]}), "invalid token claim: nbf"),
        (json!({"id": {"n": 1}}), "invalid token claim: id"),
        (json!({"id": ["u"]}), "invalid token claim: id"),
        (json!({"id": 1.5}), "invalid token claim: id"),
        (json!({"id": true}), "invalid token claim: id"),
        (json!({"sub": false}), "invalid token claim: sub"),
        // A good sub does not excuse a malformed id.
        (json!({"id": false, "sub": "s"}), "invalid token claim: id"),
        (json!({"exp": now() + 300}), "token has no id or sub claim"),
        (json!({"id": "", "sub": ""}), "token has no id or sub claim"),
        (json!(["id", "u"]), "invalid token"),
    ];
    for (claims, reason) in cases {
        let t = token(claims);
        assert_refused(
            &server,
            &format!("/api/ws/connect?token={t}"),
            &[],
            401,
            reason,
        );
    }
    for garbage in ["not-a-token", "a.b.c", "..", "x.y"] {
        assert_refused(
            &server,
            &format!("/api/ws/connect?token={garbage}"),
            &[],
            401,
            "invalid token",
        );
    }
    assert_refused(
        &server,
        "/api/ws/connect?token=%zz",
        &[],
        400,
        "query parameter token: invalid percent-escape",
    );
}

#[test]
fn id_wins_over_sub_and_empty_id_falls_back() {
    let cases = [
        (json!({"id": "i", "sub": "s"}), "i"),
        (json!({"sub": "s"}), "s"),
        (json!({"id": "", "sub": "s"}), "s"),
        (json!({"id": null, "sub": "s"}), "s"),
    ];
    for (claims, user) in cases {
        let server = TestServer::start(jwt_config(false));
        let mut client = server.connect_path(&format!("/api/ws/connect?token={}", token(claims)));
        assert_session_user(&server, &mut client, user);
    }
}

#[test]
fn numeric_id_is_its_decimal_string() {
    let cases = [
        (json!({"id": 42}), "42"),
        (json!({"sub": 7}), "7"),
        (json!({"id": -3, "sub": "s"}), "-3"),
        (
            json!({"id": 18446744073709551615u64}),
            "18446744073709551615",
        ),
    ];
    for (claims, user) in cases {
        let server = TestServer::start(jwt_config(false));
        let mut client = server.connect_path(&format!("/api/ws/connect?token={}", token(claims)));
        assert_session_user(&server, &mut client, user);
    }
}

#[test]
fn required_token_refuses_connects_without_one() {
    let server = TestServer::start(jwt_config(true));
    let refusals: [(&str, &[(&str, &str)]); 5] = [
        ("/api/ws/connect", &[]),
        ("/api/ws/connect?user_id=bob", &[]),
        ("/api/ws/connect?token=", &[]),
        (
            "/api/ws/connect?user_id=bob",
            &[("Authorization", "Bearer ")],
        ),
        (
            "/api/ws/connect",
            &[("Authorization", "Basic dXNlcjpwYXNz")],
        ),
    ];
    for (path, headers) in refusals {
        assert_refused(&server, path, headers, 401, "token required");
    }
    assert_eq!(status_users(&server, &[]), (json!(0), json!([])));
    let t = token(json!({"id": "dora"}));
    let mut client = server.connect_path(&format!("/api/ws/connect?user_id=bob&token={t}"));
    assert_session_user(&server, &mut client, "dora");
}

#[test]
fn optional_token_keeps_user_id_and_anonymous_connects() {
    let server = TestServer::start(jwt_config(false));
    let mut carol = server.connect(Some("carol"));
    assert_session_user(&server, &mut carol, "carol");
    let _anonymous = server.connect(None);
    assert_eq!(status_users(&server, &[]), (json!(2), json!(["carol"])));
}

#[test]
fn without_a_secret_tokens_are_ignored() {
    let server = TestServer::start(test_config());
    let signed = sign_hs256(&json!({"id": "alice"}), b"whatever");
    let mut bob = server.connect_path(&format!("/api/ws/connect?user_id=bob&token={signed}"));
    assert_session_user(&server, &mut bob, "bob");
    bob.close();
    server.wait_online(0);
    let mut carol = connect_with(
        server.addr,
        "/api/ws/connect?user_id=carol&token=garbage",
        &[("Authorization", "Bearer also-garbage")],
    );
    assert_session_user(&server, &mut carol, "carol");
    carol.close();
    server.wait_online(0);
    // A valid-looking token does not name the session either: anonymous.
    let _anonymous = connect_with(
        server.addr,
        "/api/ws/connect",
        &[("Authorization", &bearer(&signed))],
    );
    assert_eq!(status_users(&server, &[]), (json!(1), json!([])));
}

// -------------------------------------------------------- admin token ----

const PROTECTED: [(&str, &str, &str); 4] = [
    ("GET", "/api/ws/status", ""),
    (
        "POST",
        "/api/ws/broadcast",
        r#"{"type":"note","content":"hi"}"#,
    ),
    (
        "POST",
        "/api/ws/send",
        r#"{"type":"pm","to":"bob","content":"hi"}"#,
    ),
    ("GET", "/metrics", ""),
];

fn admin_config() -> Config {
    let mut config = test_config();
    config.websocket.admin_token = ADMIN.into();
    config
}

#[test]
fn admin_token_guards_every_protected_endpoint() {
    let server = TestServer::start(admin_config());
    let mut bob = server.connect(Some("bob"));
    let wrong = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {ADMIN} extra")),
        Some(format!("Bearer {ADMIN}x")),
        Some(format!("Bearer {}", &ADMIN[..ADMIN.len() - 1])),
        Some(format!("Bearer  {ADMIN}")),
        Some(format!("Bearer{ADMIN}")),
        Some(ADMIN.to_owned()),
        Some(format!("Basic {ADMIN}")),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
    ];
    for (method, path, body) in PROTECTED {
        for header in &wrong {
            let headers: Vec<(&str, &str)> = header
                .iter()
                .map(|h| ("Authorization", h.as_str()))
                .collect();
            let (status, text) = http(server.addr, method, path, &headers, body);
            let parsed: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
            assert_eq!(
                (status, parsed),
                (401, json!({"error": "admin token required"})),
                "{method} {path} with {header:?}"
            );
        }
    }
    // Nothing was pushed by the refused requests.
    assert_eq!(bob.sync(), Vec::<Value>::new());

    let right = bearer(ADMIN);
    let auth = [("Authorization", right.as_str())];
    assert_eq!(status_users(&server, &auth), (json!(1), json!(["bob"])));
    let (method, path, body) = PROTECTED[1];
    assert_eq!(
        http(server.addr, method, path, &auth, body),
        (200, r#"{"sent":1}"#.to_owned())
    );
    assert_eq!(bob.recv_json(), json!({"type": "note", "content": "hi"}));
    let (method, path, body) = PROTECTED[2];
    assert_eq!(
        http(server.addr, method, path, &auth, body),
        (200, r#"{"sent":1}"#.to_owned())
    );
    assert_eq!(
        bob.recv_json(),
        json!({"type": "pm", "to": "bob", "content": "hi"})
    );
    let (status, text) = http(server.addr, "GET", "/metrics", &auth, "");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("# TYPE"), "{text}");
}

#[test]
fn admin_token_never_guards_health_or_upgrades() {
    let server = TestServer::start(admin_config());
    for headers in [vec![], vec![("Authorization", "Bearer wrong")]] {
        assert_eq!(
            http(server.addr, "GET", "/health", &headers, ""),
            (200, r#"{"status":"ok"}"#.to_owned())
        );
    }
    let mut chat = server.connect(Some("eve"));
    chat.send_json(json!({"type": "ping", "content": 1}));
    assert_eq!(chat.recv_json(), json!({"type": "pong", "content": 1}));
    let mut echo = server.connect_path("/api/ws/echo");
    echo.send_text("hello");
    assert_eq!(echo.recv_text(), "hello");
    assert_upgraded(
        &server,
        "/api/ws/connect?user_id=x",
        &[("Authorization", "Bearer wrong")],
    );
}

#[test]
fn without_admin_token_the_push_api_is_open() {
    let server = TestServer::start(test_config());
    for (method, path, body) in PROTECTED {
        let (status, text) = http(server.addr, method, path, &[], body);
        assert_eq!(status, 200, "{method} {path}: {text}");
    }
}

// -------------------------------------------------------------- Origin ----

fn origin_config(allowed: &[&str]) -> Config {
    let mut config = test_config();
    config.websocket.allowed_origins = allowed.iter().map(|s| (*s).to_owned()).collect();
    config
}

#[test]
fn listed_origins_pass_and_others_get_403() {
    let server = TestServer::start(origin_config(&[
        "https://app.example",
        "http://localhost:3000",
    ]));
    for path in ["/api/ws/connect?user_id=u", "/api/ws/echo"] {
        assert_upgraded(&server, path, &[("Origin", "https://app.example")]);
        assert_upgraded(&server, path, &[("Origin", "http://localhost:3000")]);
        assert_upgraded(&server, path, &[]);
        for evil in [
            "https://evil.example",
            "https://app.example.evil.example",
            "http://app.example",
            "https://app.example:8443",
            "http://localhost:3001",
            "http://localhost",
            "null",
            "",
        ] {
            assert_refused(
                &server,
                path,
                &[("Origin", evil)],
                403,
                "origin not allowed",
            );
        }
    }
}

#[test]
fn null_origin_passes_only_when_listed() {
    let server = TestServer::start(origin_config(&["null"]));
    assert_upgraded(&server, "/api/ws/connect", &[("Origin", "null")]);
    assert_refused(
        &server,
        "/api/ws/connect",
        &[("Origin", "https://app.example")],
        403,
        "origin not allowed",
    );
}

#[test]
fn empty_allow_list_allows_any_origin() {
    let server = TestServer::start(test_config());
    for origin in ["https://evil.example", "null"] {
        assert_upgraded(&server, "/api/ws/connect", &[("Origin", origin)]);
    }
}

// ---------------------------------------------------- rejection order ----

#[test]
fn origin_is_checked_after_upgrade_headers_and_before_jwt() {
    let mut config = jwt_config(true);
    config.websocket.allowed_origins = vec!["https://app.example".into()];
    let server = TestServer::start(config);
    let forged = sign_hs256(&json!({"id": "u"}), b"wrong");
    let evil = ("Origin", "https://evil.example");
    assert_refused(
        &server,
        &format!("/api/ws/connect?token={forged}"),
        &[evil],
        403,
        "origin not allowed",
    );
    assert_refused(
        &server,
        "/api/ws/connect",
        &[evil],
        403,
        "origin not allowed",
    );
    // Method and upgrade headers come before the Origin.
    let (status, body) = http(server.addr, "POST", "/api/ws/connect", &[evil], "");
    assert_eq!(
        (status, body.as_str()),
        (405, r#"{"error":"method not allowed"}"#)
    );
    let (status, body) = http(server.addr, "GET", "/api/ws/connect", &[evil], "");
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"error":"WebSocket upgrade required"}"#)
    );
}

#[test]
fn auth_is_checked_before_capacity() {
    let mut config = jwt_config(true);
    config.websocket.max_connections = 1;
    config.websocket.allowed_origins = vec!["https://app.example".into()];
    let server = TestServer::start(config);
    let good = token(json!({"id": "first"}));
    let _first = server.connect_path(&format!("/api/ws/connect?token={good}"));
    let forged = sign_hs256(&json!({"id": "u"}), b"wrong");
    let expired = token(json!({"id": "u", "exp": now() - 3600}));
    assert_refused(
        &server,
        &format!("/api/ws/connect?token={forged}"),
        &[],
        401,
        "invalid token signature",
    );
    assert_refused(
        &server,
        &format!("/api/ws/connect?token={expired}"),
        &[],
        401,
        "token expired",
    );
    assert_refused(&server, "/api/ws/connect", &[], 401, "token required");
    assert_refused(
        &server,
        "/api/ws/connect",
        &[("Origin", "https://evil.example")],
        403,
        "origin not allowed",
    );
    let second = token(json!({"id": "second"}));
    assert_refused(
        &server,
        &format!("/api/ws/connect?token={second}"),
        &[("Origin", "https://app.example")],
        503,
        "server at capacity",
    );
}

// ---------------------------------------------------- secrets in logs ----

const LOG_JWT_SECRET: &str = "JWT-sekrit-91bc-do-not-log";
const LOG_ADMIN: &str = "ADMIN-sekrit-7f3a-do-not-log";
const LOG_WRONG_ADMIN: &str = "WRONG-admin-55e1-do-not-log";

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Waits (bounded) until the binary answers `/health`.
fn wait_for_health(addr: SocketAddr, child: &mut std::process::Child) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("wshub exited early: {status}");
        }
        if TcpStream::connect(addr).is_ok() {
            let (status, _) = http(addr, "GET", "/health", &[], "");
            assert_eq!(status, 200);
            return;
        }
        assert!(Instant::now() < deadline, "wshub never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Drives one request of every kind that carries a secret; returns every
/// token string used, for the log scan.
fn exercise_secrets(addr: SocketAddr) -> Vec<String> {
    let secret = LOG_JWT_SECRET.as_bytes();
    let now = now();
    let valid_header = sign_hs256(&json!({"id": "alice", "exp": now + 300}), secret);
    let valid_query = sign_hs256(&json!({"sub": "bob", "exp": now + 300}), secret);
    let forged = sign_hs256(&json!({"id": "mallory"}), b"guessed-secret");
    let expired = sign_hs256(&json!({"id": "old", "exp": now - 3600}), secret);
    let bad_claim = sign_hs256(&json!({"id": {"x": 1}}), secret);
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"id":"nobody-garbage-Zz9"}"#)
    );
    let garbage = "garbage-token-Zz9-do-not-log".to_owned();

    let mut alice = connect_with(
        addr,
        "/api/ws/connect",
        &[("Authorization", &bearer(&valid_header))],
    );
    let mut bob = connect_with(
        addr,
        &format!("/api/ws/connect?user_id=x&token={valid_query}"),
        &[],
    );
    for t in [&forged, &expired, &bad_claim, &none, &garbage] {
        assert_eq!(
            upgrade_with(addr, &format!("/api/ws/connect?token={t}"), &[]).0,
            401
        );
        assert_eq!(
            upgrade_with(addr, "/api/ws/connect", &[("Authorization", &bearer(t))]).0,
            401
        );
    }
    let right = bearer(LOG_ADMIN);
    let wrong = bearer(LOG_WRONG_ADMIN);
    let body = json!({"type": "pm", "to": "alice", "content": "x"}).to_string();
    assert_eq!(
        http(
            addr,
            "GET",
            "/api/ws/status",
            &[("Authorization", &right)],
            ""
        )
        .0,
        200
    );
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/ws/send",
            &[("Authorization", &right)],
            &body
        )
        .0,
        200
    );
    assert_eq!(
        http(addr, "GET", "/metrics", &[("Authorization", &wrong)], "").0,
        401
    );
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/ws/broadcast",
            &[("Authorization", &wrong)],
            &body
        )
        .0,
        401
    );
    // A malformed head that carries the admin token must not be echoed either.
    let malformed =
        format!("GET /health HTTP/1.1\r\nAuthorization: {right}\r\nno colon here\r\n\r\n");
    let answer = common::raw_exchange(addr, malformed.as_bytes());
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(alice.recv_json()["to"], "alice");
    bob.send_json(json!({"type": "chat", "to": "alice", "content": "hi"}));
    assert_eq!(alice.recv_json()["from"], "bob");
    alice.close();
    bob.close();
    vec![
        valid_header,
        valid_query,
        forged,
        expired,
        bad_claim,
        none,
        garbage,
    ]
}

#[test]
fn no_secret_or_token_reaches_the_logs() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let config_path = dir.join(format!("security-logs-{}.yaml", std::process::id()));
    let yaml = format!(
        "app:\n  host: \"127.0.0.1\"\n  port: {port}\n  demo: false\nlog:\n  level: trace\n\
         websocket:\n  admin_token: \"{LOG_ADMIN}\"\n  shutdown_timeout: 2s\n\
         jwt:\n  secret: \"{LOG_JWT_SECRET}\"\n"
    );
    std::fs::write(&config_path, yaml).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .arg("--config")
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wshub");
    let mut stderr = child.stderr.take().expect("stderr pipe");
    let mut stdout = child.stdout.take().expect("stdout pipe");
    let err_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let out_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });

    wait_for_health(addr, &mut child);
    let tokens = exercise_secrets(addr);

    let pid = i32::try_from(child.id()).expect("pid fits i32");
    // SAFETY: kill(2) on the PID of the child this test spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wshub did not exit within {WAIT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&config_path);
    let stderr = String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned();
    let stdout = String::from_utf8_lossy(&out_reader.join().expect("stdout reader")).into_owned();
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    // The scan means something only if the requests were logged at all.
    assert!(stderr.contains("connect user=alice"), "stderr:\n{stderr}");
    assert!(stderr.contains("connect user=bob"), "stderr:\n{stderr}");

    let mut forbidden: Vec<String> = vec![
        LOG_JWT_SECRET.into(),
        LOG_ADMIN.into(),
        LOG_WRONG_ADMIN.into(),
        "garbage-Zz9".into(),
    ];
    for t in &tokens {
        forbidden.push(t.clone());
        // Each segment of a real token alone would leak it; the common
        // header segment is not a secret.
        forbidden.extend(
            t.split('.')
                .skip(1)
                .filter(|s| s.len() >= 8)
                .map(str::to_owned),
        );
    }
    for secret in &forbidden {
        assert!(
            !stderr.contains(secret.as_str()),
            "stderr leaks {secret:?}:\n{stderr}"
        );
        assert!(
            !stdout.contains(secret.as_str()),
            "stdout leaks {secret:?}:\n{stdout}"
        );
    }
}
