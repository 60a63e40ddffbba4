//! Unit tests of the verifier's rules (HMAC keys; asymmetric keys are
//! exercised in tests/identity.rs with keys made by openssl).

use super::*;
use crate::config::JwtConfig;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn keyed_mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).unwrap()
}

fn verifier_with(config: JwtConfig) -> Verifier {
    Verifier::from_config(&config).unwrap()
}

fn hs(secret: &[u8]) -> Verifier {
    verifier_with(JwtConfig {
        secret: std::str::from_utf8(secret).unwrap().into(),
        ..Default::default()
    })
}

/// The user a token names under `secret`, as the connect path asks.
fn verify_hs256(token: &str, secret: &[u8], now: u64) -> Result<String, JwtError> {
    hs(secret).verify(token, now)?.user()
}

const SECRET: &[u8] = b"test-secret";
const NOW: u64 = 1_700_000_000;

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// A token with an arbitrary header, signed with HS256 under `SECRET`.
fn with_header(header: &str, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header), b64(&claims.to_string()));
    let mut mac = keyed_mac(SECRET);
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn verify(claims: Value) -> Result<String, JwtError> {
    verify_hs256(&sign_hs256(&claims, SECRET), SECRET, NOW)
}

#[test]
fn known_vector_from_rfc_examples_verifies() {
    // The widely published jwt.io example, signed by a third party, so a
    // bug shared by sign_hs256 and verify_hs256 cannot hide.
    let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
        SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    assert_eq!(
        verify_hs256(token, b"your-256-bit-secret", NOW),
        Ok("1234567890".to_string())
    );
    assert_eq!(
        verify_hs256(token, b"another-secret", NOW),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn valid_token_yields_id() {
    assert_eq!(
        verify(json!({"id": "u1", "exp": NOW + 60})),
        Ok("u1".into())
    );
}

#[test]
fn exp_is_enforced_with_leeway() {
    assert_eq!(
        verify(json!({"id": "u", "exp": NOW - 31})),
        Err(JwtError::Expired)
    );
    assert_eq!(
        verify(json!({"id": "u", "exp": NOW - 30})),
        Err(JwtError::Expired)
    );
    assert_eq!(verify(json!({"id": "u", "exp": NOW - 29})), Ok("u".into()));
    assert_eq!(verify(json!({"id": "u", "exp": 0})), Err(JwtError::Expired));
    assert_eq!(
        verify(json!({"id": "u", "exp": -5})),
        Err(JwtError::Expired)
    );
    assert_eq!(verify(json!({"id": "u", "exp": u64::MAX})), Ok("u".into()));
}

#[test]
fn float_exp_is_floored() {
    let exp = (NOW - 30) as f64 + 0.9;
    assert_eq!(
        verify(json!({"id": "u", "exp": exp})),
        Err(JwtError::Expired)
    );
    let exp = (NOW - 29) as f64 + 0.5;
    assert_eq!(verify(json!({"id": "u", "exp": exp})), Ok("u".into()));
}

#[test]
fn nbf_is_enforced_with_leeway() {
    assert_eq!(
        verify(json!({"id": "u", "nbf": NOW + 31})),
        Err(JwtError::NotYetValid)
    );
    assert_eq!(verify(json!({"id": "u", "nbf": NOW + 30})), Ok("u".into()));
    assert_eq!(verify(json!({"id": "u", "nbf": NOW - 100})), Ok("u".into()));
}

#[test]
fn wrong_signature_is_refused() {
    let token = sign_hs256(&json!({"id": "u"}), b"other-secret");
    assert_eq!(
        verify_hs256(&token, SECRET, NOW),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn tampered_payload_is_refused() {
    let token = sign_hs256(&json!({"id": "alice"}), SECRET);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(r#"{"id":"admin"}"#), parts[2]);
    assert_eq!(
        verify_hs256(&forged, SECRET, NOW),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn signature_is_checked_before_claims() {
    // Bad claims under a wrong key must report the signature, not the claim.
    let token = sign_hs256(&json!({"exp": "soon"}), b"other-secret");
    assert_eq!(
        verify_hs256(&token, SECRET, NOW),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn alg_none_is_refused() {
    let token = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"id":"u"}"#)
    );
    assert_eq!(
        verify_hs256(&token, SECRET, NOW),
        Err(JwtError::UnsupportedAlgorithm("none".into()))
    );
}

#[test]
fn other_algorithms_are_refused() {
    let claims = json!({"id": "u"});
    for alg in ["RS256", "HS512", "hs256", "HS256 "] {
        let token = with_header(&format!(r#"{{"alg":"{alg}"}}"#), &claims);
        assert_eq!(
            verify_hs256(&token, SECRET, NOW),
            Err(JwtError::UnsupportedAlgorithm(alg.into()))
        );
    }
}

#[test]
fn missing_or_non_string_alg_is_refused() {
    let claims = json!({"id": "u"});
    for header in [r#"{"typ":"JWT"}"#, r#"{"alg":256}"#, r#"{"alg":null}"#] {
        assert_eq!(
            verify_hs256(&with_header(header, &claims), SECRET, NOW),
            Err(JwtError::UnsupportedAlgorithm(String::new()))
        );
    }
}

#[test]
fn long_alg_is_truncated() {
    let token = with_header(&format!(r#"{{"alg":"{}"}}"#, "X".repeat(500)), &json!({}));
    assert_eq!(
        verify_hs256(&token, SECRET, NOW),
        Err(JwtError::UnsupportedAlgorithm("X".repeat(MAX_ALG_LEN)))
    );
}

#[test]
fn typ_is_ignored_and_crit_refused() {
    let claims = json!({"id": "u"});
    let at_jwt = with_header(r#"{"alg":"HS256","typ":"at+jwt"}"#, &claims);
    assert_eq!(verify_hs256(&at_jwt, SECRET, NOW), Ok("u".into()));
    let crit = with_header(r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, &claims);
    assert_eq!(verify_hs256(&crit, SECRET, NOW), Err(JwtError::Malformed));
}

#[test]
fn wrong_claim_types_are_refused() {
    assert_eq!(
        verify(json!({"id": "u", "exp": "later"})),
        Err(JwtError::BadClaim("exp"))
    );
    assert_eq!(
        verify(json!({"id": "u", "exp": null})),
        Err(JwtError::BadClaim("exp"))
    );
    assert_eq!(
        verify(json!({"id": "u", "nbf": [1]})),
        Err(JwtError::BadClaim("nbf"))
    );
    assert_eq!(
        verify(json!({"id": {"n": 1}})),
        Err(JwtError::BadClaim("id"))
    );
    assert_eq!(verify(json!({"id": ["u"]})), Err(JwtError::BadClaim("id")));
    assert_eq!(verify(json!({"id": 1.5})), Err(JwtError::BadClaim("id")));
    assert_eq!(verify(json!({"sub": true})), Err(JwtError::BadClaim("sub")));
    // A valid sub does not excuse a malformed id.
    assert_eq!(
        verify(json!({"id": false, "sub": "s"})),
        Err(JwtError::BadClaim("id"))
    );
}

#[test]
fn id_wins_over_sub() {
    assert_eq!(verify(json!({"id": "i", "sub": "s"})), Ok("i".into()));
    assert_eq!(verify(json!({"sub": "s"})), Ok("s".into()));
    assert_eq!(verify(json!({"id": "", "sub": "s"})), Ok("s".into()));
    assert_eq!(verify(json!({"id": null, "sub": "s"})), Ok("s".into()));
}

#[test]
fn numeric_id_is_decimal_string() {
    assert_eq!(verify(json!({"id": 42})), Ok("42".into()));
    assert_eq!(
        verify(json!({"sub": 18446744073709551615u64})),
        Ok("18446744073709551615".into())
    );
    assert_eq!(verify(json!({"id": -7})), Ok("-7".into()));
}

#[test]
fn missing_subject_is_refused() {
    assert_eq!(
        verify(json!({"exp": NOW + 60})),
        Err(JwtError::MissingSubject)
    );
    assert_eq!(
        verify(json!({"id": "", "sub": ""})),
        Err(JwtError::MissingSubject)
    );
}

#[test]
fn malformed_tokens_are_refused() {
    let good = sign_hs256(&json!({"id": "u"}), SECRET);
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        String::new(),
        "..".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.x"),
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
        format!("{}.{}.{}", b64("[1,2]"), parts[1], parts[2]),
        "a".repeat(MAX_TOKEN_LEN + 1),
    ];
    for token in &cases {
        assert_eq!(
            verify_hs256(token, SECRET, NOW),
            Err(JwtError::Malformed),
            "{token:.40}"
        );
    }
}

#[test]
fn non_object_payload_is_malformed_after_signature() {
    let token = with_header(r#"{"alg":"HS256"}"#, &json!(["id", "u"]));
    assert_eq!(verify_hs256(&token, SECRET, NOW), Err(JwtError::Malformed));
}

#[test]
fn padded_or_standard_alphabet_is_refused() {
    // Claims chosen so the payload encodes with '+'/'/' in standard base64;
    // signed correctly, so only the alphabet can be the reason for refusal.
    let claims = json!({"id": "??>>~~"});
    let std_payload = base64::engine::general_purpose::STANDARD_NO_PAD.encode(claims.to_string());
    assert!(std_payload.contains(['+', '/']), "{std_payload}");
    let input = format!("{}.{std_payload}", b64(r#"{"alg":"HS256"}"#));
    let mut mac = keyed_mac(SECRET);
    mac.update(input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    let std_token = format!("{input}.{signature}");
    assert_eq!(
        verify_hs256(&std_token, SECRET, NOW),
        Err(JwtError::Malformed)
    );
    let parts: Vec<String> = sign_hs256(&claims, SECRET)
        .split('.')
        .map(String::from)
        .collect();
    // 32 signature bytes take 43 characters: "=" is exactly its padding.
    assert_eq!(parts[2].len(), 43);
    let padded = format!("{}.{}.{}=", parts[0], parts[1], parts[2]);
    assert_eq!(verify_hs256(&padded, SECRET, NOW), Err(JwtError::Malformed));
}

#[test]
fn oversized_but_validly_signed_token_is_refused() {
    let token = sign_hs256(
        &json!({"id": "u", "pad": "p".repeat(MAX_TOKEN_LEN)}),
        SECRET,
    );
    assert_eq!(verify_hs256(&token, SECRET, NOW), Err(JwtError::Malformed));
}

#[test]
fn display_never_echoes_token_material() {
    assert_eq!(
        JwtError::UnsupportedAlgorithm("evil".into()).to_string(),
        "unsupported token algorithm"
    );
    assert_eq!(
        JwtError::BadClaim("exp").to_string(),
        "invalid token claim: exp"
    );
    assert_eq!(
        JwtError::MissingSubject.to_string(),
        "token has no id or sub claim"
    );
}

/// xorshift64: deterministic, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_input_never_verifies_or_panics() {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/";
    let header = b64(r#"{"alg":"HS256"}"#);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in 0..10_000 {
        let len = (rng.next() % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = rng.next();
                // Mostly token characters, so many inputs get past the split.
                if i % 2 == 0 {
                    ALPHABET[(r % ALPHABET.len() as u64) as usize]
                } else {
                    r as u8
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        assert!(verify_hs256(&text, SECRET, NOW).is_err(), "{text:?}");
        // With a valid header in front, inputs reach the signature check.
        let deeper = format!("{header}.{text}");
        assert!(verify_hs256(&deeper, SECRET, NOW).is_err(), "{deeper:?}");
    }
}

fn signed(claims: &Value) -> String {
    sign_hs256(claims, SECRET)
}

#[test]
fn issuer_and_audience_are_checked_when_set() {
    let v = verifier_with(JwtConfig {
        secret: "test-secret".into(),
        issuer: "https://idp.example/".into(),
        audience: "wshub".into(),
        ..Default::default()
    });
    let iss = "https://idp.example/";
    let ok = |c: Value| v.verify(&signed(&c), NOW).and_then(|c| c.user());
    assert_eq!(
        ok(json!({"sub": "u", "iss": iss, "aud": "wshub"})),
        Ok("u".into())
    );
    assert_eq!(
        ok(json!({"sub": "u", "iss": iss, "aud": ["other", "wshub"]})),
        Ok("u".into())
    );
    assert_eq!(
        ok(json!({"sub": "u", "aud": "wshub"})),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        ok(json!({"sub": "u", "iss": "https://evil.example/", "aud": "wshub"})),
        Err(JwtError::WrongIssuer)
    );
    assert_eq!(
        ok(json!({"sub": "u", "iss": iss})),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        ok(json!({"sub": "u", "iss": iss, "aud": ["other"]})),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        ok(json!({"sub": "u", "iss": iss, "aud": 5})),
        Err(JwtError::WrongAudience)
    );
    assert_eq!(
        ok(json!({"sub": "u", "iss": ["x"], "aud": "wshub"})),
        Err(JwtError::WrongIssuer)
    );
}

#[test]
fn without_issuer_or_audience_those_claims_are_ignored() {
    let claims = json!({"sub": "u", "iss": "anyone", "aud": ["anything"]});
    assert_eq!(
        hs(SECRET)
            .verify(&signed(&claims), NOW)
            .and_then(|c| c.user()),
        Ok("u".into())
    );
}

#[test]
fn hs384_and_hs512_only_when_listed() {
    let claims = json!({"id": "u"});
    let sign = |alg| {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).unwrap()
    };
    let default = hs(SECRET);
    let all = verifier_with(JwtConfig {
        secret: "test-secret".into(),
        algorithms: vec!["HS384".into(), "HS512".into()],
        ..Default::default()
    });
    for (alg, name) in [(Algorithm::HS384, "HS384"), (Algorithm::HS512, "HS512")] {
        let token = sign(alg);
        assert_eq!(
            default.verify(&token, NOW),
            Err(JwtError::UnsupportedAlgorithm(name.into()))
        );
        assert_eq!(
            all.verify(&token, NOW).and_then(|c| c.user()),
            Ok("u".into())
        );
    }
    // HS256 is no longer listed there.
    assert_eq!(
        all.verify(&signed(&claims), NOW),
        Err(JwtError::UnsupportedAlgorithm("HS256".into()))
    );
}

#[test]
fn asymmetric_algorithm_without_its_key_is_unknown_key() {
    let v = verifier_with(JwtConfig {
        secret: "test-secret".into(),
        algorithms: vec!["HS256".into(), "RS256".into()],
        ..Default::default()
    });
    let token = with_header(r#"{"alg":"RS256","kid":"k"}"#, &json!({"id": "u"}));
    assert_eq!(v.verify(&token, NOW), Err(JwtError::UnknownKey));
    let bad_kid = with_header(r#"{"alg":"RS256","kid":7}"#, &json!({"id": "u"}));
    assert_eq!(v.verify(&bad_kid, NOW), Err(JwtError::Malformed));
}

#[test]
fn claims_are_returned_whole() {
    let claims = json!({"sub": "u", "rooms": ["team:1", "chat:*"], "exp": NOW + 60});
    let got = hs(SECRET).verify(&signed(&claims), NOW).unwrap();
    assert_eq!(got.get("rooms"), Some(&json!(["team:1", "chat:*"])));
    assert_eq!(Value::Object(got.as_map().clone()), claims);
}

#[test]
fn join_tokens_need_room_sub_and_exp() {
    let v = hs(SECRET);
    let join = |c: Value| v.verify_join(&signed(&c), "team:1", "alice", NOW);
    assert_eq!(
        join(json!({"room": "team:1", "sub": "alice", "exp": NOW + 60})),
        Ok(JoinGrant {
            room: "team:1".into(),
            sub: "alice".into()
        })
    );
    assert_eq!(
        join(json!({"room": "team:1", "sub": "alice"})),
        Err(JwtError::BadClaim("exp"))
    );
    assert_eq!(
        join(json!({"room": "team:2", "sub": "alice", "exp": NOW + 60})),
        Err(JwtError::BadClaim("room"))
    );
    assert_eq!(
        join(json!({"sub": "alice", "exp": NOW + 60})),
        Err(JwtError::BadClaim("room"))
    );
    assert_eq!(
        join(json!({"room": "team:1", "sub": "bob", "exp": NOW + 60})),
        Err(JwtError::BadClaim("sub"))
    );
    assert_eq!(
        join(json!({"room": "team:1", "exp": NOW + 60})),
        Err(JwtError::MissingSubject)
    );
    assert_eq!(
        join(json!({"room": "team:1", "sub": "alice", "exp": NOW - 3600})),
        Err(JwtError::Expired)
    );
    let numeric = v.verify_join(
        &signed(&json!({"room": "r", "sub": 42, "exp": NOW + 60})),
        "r",
        "42",
        NOW,
    );
    assert_eq!(numeric.map(|g| g.sub), Ok("42".into()));
}

#[test]
fn config_errors_name_the_key() {
    let error = |config: JwtConfig| Verifier::from_config(&config).unwrap_err().key;
    assert_eq!(
        error(JwtConfig {
            public_key: "/nonexistent/key.pem".into(),
            algorithms: vec!["RS256".into()],
            ..Default::default()
        }),
        "jwt.public_key"
    );
    assert_eq!(
        error(JwtConfig {
            jwks_url: "http://127.0.0.1:9/jwks".into(),
            ..Default::default()
        }),
        "jwt.algorithms"
    );
}

#[test]
fn disabled_without_any_key() {
    assert!(!verifier_with(JwtConfig::default()).enabled());
    assert!(hs(SECRET).enabled());
}
