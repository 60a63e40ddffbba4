//! Black-box tests of identity-provider tokens (docs/security.md,
//! "Identity providers"): every asymmetric algorithm with keys that `openssl` makes at
//! test time, HS384/HS512, JWKS served by a tiny HTTP server inside the test
//! (with key rotation and an unreachable start), `iss`/`aud`, `alg: none`,
//! algorithm confusion, oversized tokens and heads.
//!
//! Tokens are signed with `jsonwebtoken` from the private keys, or by hand
//! with `hmac` for the confusion cases. Every refusal asserts the exact
//! status and JSON body.

mod common;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::backend::{Backend, Reply};
use common::{http, read_full_response, test_config, upgrade_request, TestServer, WAIT};
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Sha256;
use wshub::Config;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A fresh directory for one test's keys.
fn key_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wshub-identity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("key dir");
    dir
}

/// A key pair made by openssl: PKCS#8 private key and SPKI public key files.
struct KeyPair {
    private: PathBuf,
    public: PathBuf,
}

impl KeyPair {
    fn signer(&self) -> EncodingKey {
        let pem = std::fs::read(&self.private).expect("read private key");
        EncodingKey::from_rsa_pem(&pem)
            .or_else(|_| EncodingKey::from_ec_pem(&pem))
            .or_else(|_| EncodingKey::from_ed_pem(&pem))
            .expect("usable private key")
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed for the identity tests");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `kind`: "rsa", "p256", "p384" or "ed25519".
fn make_key(dir: &Path, name: &str, kind: &str) -> KeyPair {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let out = private.to_str().expect("utf-8 path");
    match kind {
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            out,
        ]),
        "p256" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            out,
        ]),
        "p384" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            out,
        ]),
        "ed25519" => openssl(&["genpkey", "-algorithm", "ed25519", "-out", out]),
        other => panic!("unknown key kind {other}"),
    }
    openssl(&[
        "pkey",
        "-in",
        out,
        "-pubout",
        "-out",
        public.to_str().expect("utf-8 path"),
    ]);
    KeyPair { private, public }
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// A token with any header JSON, HMAC-SHA256-signed with `key` bytes.
fn hmac_token(header: &str, claims: &Value, key: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn jwt_config(algorithms: &[&str], edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    config.jwt.algorithms = algorithms.iter().map(|a| a.to_string()).collect();
    edit(&mut config);
    config
}

/// Upgrades with `Authorization: Bearer <token>`; status and body.
fn upgrade(server: &TestServer, token: &str) -> (u16, String) {
    let mut request = upgrade_request("/api/ws/connect");
    request.insert_str(
        request.len() - 2,
        &format!("Authorization: Bearer {token}\r\n"),
    );
    raw_upgrade(server, &request)
}

fn raw_upgrade(server: &TestServer, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write upgrade");
    let (status, _, body) = read_full_response(&mut BufReader::new(stream));
    (status, body)
}

#[track_caller]
fn assert_refused(server: &TestServer, token: &str, reason: &str) {
    let (status, body) = upgrade(server, token);
    let parsed: Value = serde_json::from_str(&body).unwrap_or_else(|_| json!(body));
    assert_eq!((status, parsed), (401, json!({ "error": reason })));
}

/// Connects with the token and checks the session speaks for `user`.
#[track_caller]
fn assert_accepted_as(server: &TestServer, token: &str, user: &str) {
    let path = format!("/api/ws/connect?token={token}");
    let client = server.connect_path(&path);
    let (_, body) = http(server.addr, "GET", "/api/ws/status", &[], "");
    let status: Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(status["online_users"], json!([user]), "{body}");
    client.close();
    server.wait_online(0);
}

#[test]
fn every_asymmetric_algorithm_with_a_public_key_file() {
    let dir = key_dir("algorithms");
    let cases = [
        ("RS256", Algorithm::RS256, "rsa"),
        ("RS384", Algorithm::RS384, "rsa"),
        ("RS512", Algorithm::RS512, "rsa"),
        ("PS256", Algorithm::PS256, "rsa"),
        ("ES256", Algorithm::ES256, "p256"),
        ("ES384", Algorithm::ES384, "p384"),
        ("EdDSA", Algorithm::EdDSA, "ed25519"),
    ];
    let claims = json!({"sub": "alice", "exp": now() + 300});
    for (name, alg, kind) in cases {
        let key = make_key(&dir, &format!("{name}-a"), kind);
        let other = make_key(&dir, &format!("{name}-b"), kind);
        let config = jwt_config(&[name], |c| {
            c.jwt.public_key = key.public.display().to_string();
        });
        let server = TestServer::start(config);
        assert_accepted_as(&server, &sign(alg, None, &claims, &key.signer()), "alice");
        // Same algorithm, another key: the signature is what fails.
        assert_refused(
            &server,
            &sign(alg, None, &claims, &other.signer()),
            "invalid token signature",
        );
        // Expiry rules are the same as for HS256.
        let expired = json!({"sub": "alice", "exp": now() - 3600});
        assert_refused(
            &server,
            &sign(alg, None, &expired, &key.signer()),
            "token expired",
        );
    }
}

#[test]
fn config_load_reads_the_public_key_once_and_the_server_checks_with_it() {
    let dir = key_dir("once");
    let first = make_key(&dir, "first", "ed25519");
    let second = make_key(&dir, "second", "ed25519");
    let live = dir.join("live.pub.pem");
    std::fs::copy(&first.public, &live).expect("copy key");
    let yaml = dir.join("config.yaml");
    std::fs::write(
        &yaml,
        format!(
            "app: {{host: 127.0.0.1, port: 0}}\nwebsocket: {{port: 0, echo: true}}\njwt: {{algorithms: [EdDSA], public_key: \"{}\"}}\n",
            live.display()
        ),
    )
    .expect("write config");
    let (loaded, _) = Config::load(Some(&yaml)).expect("load");
    let claims = json!({"sub": "alice", "exp": now() + 300});
    let by_first = sign(Algorithm::EdDSA, None, &claims, &first.signer());
    let by_second = sign(Algorithm::EdDSA, None, &claims, &second.signer());
    // The key changes between the load and the bind: the server checks
    // with the key the load read, not the file as it is now.
    std::fs::copy(&second.public, &live).expect("replace key");
    {
        let server = TestServer::start(loaded.clone());
        assert_accepted_as(&server, &by_first, "alice");
        assert_refused(&server, &by_second, "invalid token signature");
    }
    // The same settings made in code: the file is read at bind.
    let in_code = jwt_config(&["EdDSA"], |c| {
        c.jwt.public_key = live.display().to_string();
    });
    assert_eq!(in_code, loaded, "the same settings");
    {
        let server = TestServer::start(in_code.clone());
        assert_accepted_as(&server, &by_second, "alice");
        assert_refused(&server, &by_first, "invalid token signature");
    }
    // Gone after the load: the loaded config still starts, the one made
    // in code cannot.
    std::fs::remove_file(&live).expect("remove key");
    let server = TestServer::start(loaded);
    assert_accepted_as(&server, &by_first, "alice");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let error = wshub::Server::from_listener(listener, in_code, wshub::Mode::Integrated)
        .err()
        .map(|e| e.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.starts_with("config: jwt.public_key: cannot read")),
        "{error:?}"
    );
}

#[test]
fn hs384_and_hs512_with_the_secret() {
    let config = jwt_config(&["HS384", "HS512"], |c| c.jwt.secret = "hs-secret".into());
    let server = TestServer::start(config);
    let key = EncodingKey::from_secret(b"hs-secret").expect("key");
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let token = sign(alg, None, &json!({"id": 7}), &key);
        assert_accepted_as(&server, &token, "7");
    }
    let hs256 = sign(Algorithm::HS256, None, &json!({"id": 7}), &key);
    assert_refused(&server, &hs256, "unsupported token algorithm");
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let dir = key_dir("confusion");
    let rsa = make_key(&dir, "rsa", "rsa");
    let public_pem = std::fs::read(&rsa.public).expect("public key");
    let claims = json!({"sub": "mallory"});
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // The classic attack: HS256 keyed with the RSA public key PEM.
    let confused = hmac_token(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, &public_pem);

    // Only RS256 listed: HS256 is not even considered.
    let rs_only = TestServer::start(jwt_config(&["RS256"], |c| {
        c.jwt.public_key = rsa.public.display().to_string();
    }));
    assert_refused(&rs_only, &unsigned, "unsupported token algorithm");
    assert_refused(&rs_only, &confused, "unsupported token algorithm");
    drop(rs_only);

    // Both listed: HMAC tokens are checked with jwt.secret only.
    let both = TestServer::start(jwt_config(&["HS256", "RS256"], |c| {
        c.jwt.secret = "the-real-secret".into();
        c.jwt.public_key = rsa.public.display().to_string();
    }));
    assert_refused(&both, &unsigned, "unsupported token algorithm");
    assert_refused(&both, &confused, "invalid token signature");
    // RS256 header over an HMAC signature: the RSA check fails.
    let rs_header = hmac_token(r#"{"alg":"RS256","typ":"JWT"}"#, &claims, &public_pem);
    assert_refused(&both, &rs_header, "invalid token signature");
    assert_accepted_as(
        &both,
        &sign(Algorithm::RS256, None, &claims, &rsa.signer()),
        "mallory",
    );
    drop(both);

    // Only an RSA key and no secret: an HMAC algorithm listed has no key.
    let no_secret = TestServer::start(jwt_config(&["HS256", "RS256"], |c| {
        c.jwt.public_key = rsa.public.display().to_string();
    }));
    assert_refused(&no_secret, &confused, "unknown token key");
}

#[test]
fn issuer_and_audience() {
    let dir = key_dir("iss-aud");
    let ec = make_key(&dir, "ec", "p256");
    let server = TestServer::start(jwt_config(&["ES256"], |c| {
        c.jwt.public_key = ec.public.display().to_string();
        c.jwt.issuer = "https://idp.example/realms/main".into();
        c.jwt.audience = "wshub".into();
    }));
    let iss = "https://idp.example/realms/main";
    let token = |claims: Value| sign(Algorithm::ES256, None, &claims, &ec.signer());
    assert_accepted_as(
        &server,
        &token(json!({"sub": "u1", "iss": iss, "aud": "wshub"})),
        "u1",
    );
    assert_accepted_as(
        &server,
        &token(json!({"sub": "u2", "iss": iss, "aud": ["account", "wshub"]})),
        "u2",
    );
    assert_refused(
        &server,
        &token(json!({"sub": "u", "aud": "wshub"})),
        "invalid token issuer",
    );
    assert_refused(
        &server,
        &token(json!({"sub": "u", "iss": "https://idp.example/realms/other", "aud": "wshub"})),
        "invalid token issuer",
    );
    assert_refused(
        &server,
        &token(json!({"sub": "u", "iss": iss})),
        "invalid token audience",
    );
    assert_refused(
        &server,
        &token(json!({"sub": "u", "iss": iss, "aud": ["account"]})),
        "invalid token audience",
    );
}

/// A JWKS document for `keys` (kid, algorithm, key pair).
fn jwks(keys: &[(&str, Algorithm, &KeyPair)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, alg, pair)| {
            let mut jwk = Jwk::from_encoding_key(&pair.signer(), *alg).expect("jwk");
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).expect("jwks JSON")
}

#[test]
fn jwks_keys_by_kid_with_rotation_at_most_once_per_ten_seconds() {
    let dir = key_dir("jwks-rotation");
    let a = make_key(&dir, "a", "rsa");
    let b = make_key(&dir, "b", "p256");
    let served = Arc::new(Mutex::new(jwks(&[("key-a", Algorithm::RS256, &a)])));
    let backend = {
        let served = served.clone();
        Backend::start(move |_| Reply::ok(served.lock().unwrap().clone()))
    };
    let server = TestServer::start(jwt_config(&["RS256", "ES256"], |c| {
        c.jwt.jwks_url = backend.url("/.well-known/jwks.json");
    }));
    let claims = json!({"sub": "kim", "exp": now() + 300});
    let token_a = sign(Algorithm::RS256, Some("key-a"), &claims, &a.signer());
    let token_b = sign(Algorithm::ES256, Some("key-b"), &claims, &b.signer());
    // Fetched at start: key-a works as soon as it has loaded.
    let first = backend.wait_for(WAIT, "the first JWKS fetch", |r| !r.is_empty());
    assert_eq!(first[0].method, "GET");
    assert_eq!(first[0].path, "/.well-known/jwks.json");
    let deadline = Instant::now() + WAIT;
    while upgrade(&server, &token_a).0 != 101 {
        assert!(Instant::now() < deadline, "key-a never accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_accepted_as(&server, &token_a, "kim");
    // A key the set does not hold: 401, never a pass.
    assert_refused(&server, &token_b, "unknown token key");
    // A kid that matches but for another algorithm family does not pass either.
    let wrong_family = sign(Algorithm::ES256, Some("key-a"), &claims, &b.signer());
    assert_refused(&server, &wrong_family, "unknown token key");

    // The provider rotates: key-b appears. Tokens naming it trigger a
    // refetch, but the fetches stay at least 10 s apart however many come.
    *served.lock().unwrap() = jwks(&[
        ("key-a", Algorithm::RS256, &a),
        ("key-b", Algorithm::ES256, &b),
    ]);
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let (status, body) = upgrade(&server, &token_b);
        if status == 101 {
            break;
        }
        assert_eq!(
            (status, body.as_str()),
            (401, r#"{"error":"unknown token key"}"#)
        );
        assert!(Instant::now() < deadline, "key-b never accepted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let fetches = backend.received();
    assert_eq!(fetches.len(), 2, "one fetch at start, one for the new kid");
    let gap = fetches[1].at.duration_since(fetches[0].at);
    assert!(gap >= Duration::from_millis(9_900), "fetches {gap:?} apart");
    assert_accepted_as(&server, &token_b, "kim");
    assert_accepted_as(&server, &token_a, "kim");
}

#[test]
fn unreachable_jwks_refuses_until_the_keys_load() {
    let dir = key_dir("jwks-down");
    let key = make_key(&dir, "k", "ed25519");
    // A port nobody listens on yet; the provider comes up later on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let server = TestServer::start(jwt_config(&["HS256", "EdDSA"], |c| {
        c.jwt.secret = "still-works".into();
        c.jwt.jwks_url = format!("http://127.0.0.1:{port}/jwks");
    }));
    let token = sign(
        Algorithm::EdDSA,
        Some("ed"),
        &json!({"sub": "ed-user"}),
        &key.signer(),
    );
    for _ in 0..5 {
        assert_refused(&server, &token, "unknown token key");
        std::thread::sleep(Duration::from_millis(100));
    }
    // HS256 with the secret does not depend on the JWKS.
    assert_accepted_as(
        &server,
        &wshub::internals::jwt::sign_hs256(&json!({"id": "h"}), b"still-works"),
        "h",
    );
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("rebind the JWKS port");
    let backend = Backend::on(listener, {
        let body = jwks(&[("ed", Algorithm::EdDSA, &key)]);
        move |_| Reply::ok(body.clone())
    });
    // Retried every 10 s while failing.
    let deadline = Instant::now() + Duration::from_secs(25);
    while upgrade(&server, &token).0 != 101 {
        assert!(Instant::now() < deadline, "the keys never loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!backend.received().is_empty());
    assert_accepted_as(&server, &token, "ed-user");
}

#[test]
fn oversized_tokens_and_heads_are_refused() {
    let dir = key_dir("oversized");
    let rsa = make_key(&dir, "rsa", "rsa");
    let server = TestServer::start(jwt_config(&["RS256"], |c| {
        c.jwt.public_key = rsa.public.display().to_string();
    }));
    // Validly signed, but over the 8 KiB token bound: refused unread.
    let big = sign(
        Algorithm::RS256,
        None,
        &json!({"sub": "u", "pad": "p".repeat(9 * 1024)}),
        &rsa.signer(),
    );
    assert!(big.len() > 8 * 1024 && big.len() < 16 * 1024);
    assert_refused(&server, &big, "invalid token");
    // A huge header segment (kid) is just as refused.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k".repeat(9 * 1024));
    let big_header =
        jsonwebtoken::encode(&header, &json!({"sub": "u"}), &rsa.signer()).expect("sign");
    assert_refused(&server, &big_header, "invalid token");
    // A token that makes the request head exceed max_header_bytes: 431.
    let huge = sign(
        Algorithm::RS256,
        None,
        &json!({"sub": "u", "pad": "p".repeat(20 * 1024)}),
        &rsa.signer(),
    );
    let (status, _) = upgrade(&server, &huge);
    assert_eq!(status, 431);
}

#[test]
fn bad_public_key_files_are_config_errors() {
    let dir = key_dir("bad-key");
    let not_a_key = dir.join("not-a-key.pem");
    std::fs::write(
        &not_a_key,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let config = jwt_config(&["RS256"], |c| {
        c.jwt.public_key = not_a_key.display().to_string();
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let error = wshub::Server::from_listener(listener, config, wshub::Mode::Integrated)
        .expect_err("a bad key must not start");
    assert!(
        error.to_string().starts_with("config: jwt.public_key: "),
        "{error}"
    );
    // An RSA key with only EC algorithms listed can never verify anything.
    let rsa = make_key(&dir, "rsa", "rsa");
    let config = jwt_config(&["ES256"], |c| {
        c.jwt.public_key = rsa.public.display().to_string();
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let error = wshub::Server::from_listener(listener, config, wshub::Mode::Integrated)
        .expect_err("a key no algorithm can use must not start");
    assert!(
        error.to_string().starts_with("config: jwt.algorithms: "),
        "{error}"
    );
}
