//! HS256 JSON Web Token verification for connect requests (PROTOCOL.md §3, §6 "JWT").
//!
//! Pure: no I/O and no clock (callers pass `now_unix`); touches nothing outside
//! this file but the `hmac`, `sha2`, `base64` and `serde_json` crates.
//!
//! Choices made here, where RFC 7515/7519 leave room:
//! - Segments are base64url **without** padding (RFC 7515 §2); `=`, `+`, `/`
//!   and non-canonical trailing bits are rejected as [`JwtError::Malformed`].
//! - The header's `alg` must be exactly `"HS256"`; the header's `typ` is
//!   ignored, because issuers legitimately send `"JWT"`, `"jwt"` or
//!   `"at+jwt"` (RFC 9068) and `alg` plus the signature is what protects us.
//!   A `crit` header is refused: we understand no extensions (RFC 7515 §4.1.11).
//! - The signature is checked (constant-time) before the claims are decoded.
//! - `exp`/`nbf` may be integers or finite floats (NumericDate); a float is
//!   floored. `null` counts as a wrong type.
//! - `id`/`sub`: a non-empty string, or an integer as its decimal string;
//!   `null` and `""` count as absent; any other type is [`JwtError::BadClaim`].

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Clock skew tolerated on `exp` and `nbf`, in seconds (the contract allows at most 60).
pub const LEEWAY_SECS: u64 = 30;

/// Longest token we look at, in bytes: longer ones are refused unread, so a
/// peer cannot make us decode, hash or parse unbounded input.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest algorithm name kept in [`JwtError::UnsupportedAlgorithm`], so a
/// hostile header cannot blow up log lines.
const MAX_ALG_LEN: usize = 16;

/// Why a token was refused. `Display` gives the short phrase used in 401
/// bodies; it never contains the token or the secret.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url segments with a JSON object header and payload,
    /// longer than [`MAX_TOKEN_LEN`], or a `crit` header.
    Malformed,
    /// The header's `alg` is not `"HS256"`; holds the (truncated) name given,
    /// empty when `alg` is missing or not a string.
    UnsupportedAlgorithm(String),
    /// The HMAC does not match the secret.
    BadSignature,
    /// `exp` is more than [`LEEWAY_SECS`] in the past.
    Expired,
    /// `nbf` is more than [`LEEWAY_SECS`] in the future.
    NotYetValid,
    /// Neither `id` nor `sub` names a user.
    MissingSubject,
    /// A claim we rely on has the wrong type; holds the claim's name.
    BadClaim(&'static str),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed => f.write_str("invalid token"),
            JwtError::UnsupportedAlgorithm(_) => f.write_str("unsupported token algorithm"),
            JwtError::BadSignature => f.write_str("invalid token signature"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not yet valid"),
            JwtError::MissingSubject => f.write_str("token has no id or sub claim"),
            JwtError::BadClaim(claim) => write!(f, "invalid token claim: {claim}"),
        }
    }
}

impl std::error::Error for JwtError {}

/// Verifies an HS256 JWT and returns the user id (claim `id`, else `sub`; a
/// numeric id as its decimal string; an empty string counts as absent).
///
/// `exp` and `nbf` are honoured with [`LEEWAY_SECS`] of slack against
/// `now_unix` (seconds since the Unix epoch). Never panics.
pub fn verify_hs256(token: &str, secret: &[u8], now_unix: u64) -> Result<String, JwtError> {
    subject(&verify_hs256_claims(token, secret, now_unix)?)
}

/// Verifies an HS256 JWT as [`verify_hs256`] does (header, signature,
/// `exp`, `nbf`) and returns all its claims, for callers that need more
/// than the user id (the `rooms` claim, join tokens).
pub fn verify_hs256_claims(
    token: &str,
    secret: &[u8],
    now_unix: u64,
) -> Result<Map<String, Value>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    check_header(&decode_object(header)?)?;
    check_signature(header, payload, signature, secret)?;
    let claims = decode_object(payload)?;
    check_time(&claims, now_unix)?;
    Ok(claims)
}

/// Signs `claims` (normally a JSON object) with HS256 under a
/// `{"alg":"HS256","typ":"JWT"}` header. Used by tests and examples to make tokens.
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = keyed_mac(secret);
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

// HMAC pads or hashes the key to the block size, so no key length fails;
// the error type exists only because `KeyInit` is shared with fixed-key MACs.
fn keyed_mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC-SHA256 accepts keys of any length")
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

fn check_header(header: &Map<String, Value>) -> Result<(), JwtError> {
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(alg)) => {
            let shown: String = alg.chars().take(MAX_ALG_LEN).collect();
            return Err(JwtError::UnsupportedAlgorithm(shown));
        }
        _ => return Err(JwtError::UnsupportedAlgorithm(String::new())),
    }
    if header.contains_key("crit") {
        return Err(JwtError::Malformed);
    }
    Ok(())
}

fn check_signature(
    header: &str,
    payload: &str,
    signature: &str,
    secret: &[u8],
) -> Result<(), JwtError> {
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::Malformed)?;
    let mut mac = keyed_mac(secret);
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| JwtError::BadSignature)
}

fn check_time(claims: &Map<String, Value>, now_unix: u64) -> Result<(), JwtError> {
    let now = i128::from(now_unix);
    let leeway = i128::from(LEEWAY_SECS);
    if let Some(exp) = numeric_date(claims, "exp")? {
        // RFC 7519 §4.1.4: valid only while now is before exp.
        if now >= exp + leeway {
            return Err(JwtError::Expired);
        }
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now + leeway < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    Ok(())
}

/// Reads a NumericDate claim as whole seconds; i128 so no value can overflow
/// the comparisons above.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i128>, JwtError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(number) = value else {
        return Err(JwtError::BadClaim(name));
    };
    if let Some(n) = number.as_i64() {
        return Ok(Some(i128::from(n)));
    }
    if let Some(n) = number.as_u64() {
        return Ok(Some(i128::from(n)));
    }
    match number.as_f64() {
        // The cast saturates, and ±1e38 seconds is past any real deadline.
        Some(f) if f.is_finite() => Ok(Some(f.floor() as i128)),
        _ => Err(JwtError::BadClaim(name)),
    }
}

fn subject(claims: &Map<String, Value>) -> Result<String, JwtError> {
    if let Some(id) = user_claim(claims, "id")? {
        return Ok(id);
    }
    user_claim(claims, "sub")?.ok_or(JwtError::MissingSubject)
}

fn user_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(JwtError::BadClaim(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let std_payload =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(claims.to_string());
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
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/";
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
}
