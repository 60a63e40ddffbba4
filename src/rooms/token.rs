//! Join tokens (`{"type":"join","room":R,"token":T}` in `token` mode): a JWT
//! checked with the connect token's key, whose `room` must equal R, whose
//! `sub` must equal the session's user id, and which must carry `exp`.
//!
//! [`claims`] is the one place this feature reads a token: the `rooms`
//! claim at the upgrade and join tokens both go through it.

use serde_json::{Map, Value};

use crate::config::Secret;
use crate::jwt::{self, JwtError};

/// A verified token's claims (signature, algorithm, `exp` and `nbf`
/// checked against `now_unix`).
pub fn claims(token: &str, secret: &Secret, now_unix: u64) -> Result<Map<String, Value>, JwtError> {
    jwt::verify_hs256_claims(token, secret.expose().as_bytes(), now_unix)
}

/// Whether `token` lets `user` join `room`. Anonymous sessions cannot use
/// join tokens.
pub fn join_allowed(
    token: &str,
    secret: &Secret,
    user: Option<&str>,
    room: &str,
    now_unix: u64,
) -> bool {
    let Some(user) = user else {
        return false;
    };
    let claims = match claims(token, secret, now_unix) {
        Ok(claims) => claims,
        Err(e) => {
            log::debug!("join token refused: {e}");
            return false;
        }
    };
    let text = |name| claims.get(name).and_then(Value::as_str);
    claims.get("exp").is_some_and(Value::is_number)
        && text("room") == Some(room)
        && text("sub") == Some(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::sign_hs256;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn allowed(claims: Value, user: Option<&str>, room: &str) -> bool {
        let token = sign_hs256(&claims, b"k");
        join_allowed(&token, &"k".into(), user, room, NOW)
    }

    #[test]
    fn room_sub_and_exp_must_all_hold() {
        let good = json!({"sub": "u", "room": "r", "exp": NOW + 60});
        assert!(allowed(good.clone(), Some("u"), "r"));
        assert!(!allowed(good.clone(), Some("v"), "r"), "another user");
        assert!(!allowed(good.clone(), Some("u"), "s"), "another room");
        assert!(!allowed(good, None, "r"), "anonymous");
        assert!(
            !allowed(json!({"sub": "u", "room": "r"}), Some("u"), "r"),
            "no exp"
        );
        let expired = json!({"sub": "u", "room": "r", "exp": NOW - 3600});
        assert!(!allowed(expired, Some("u"), "r"));
        let id_only = json!({"id": "u", "room": "r", "exp": NOW + 60});
        assert!(!allowed(id_only, Some("u"), "r"), "sub, not id");
    }

    #[test]
    fn forged_and_unsigned_tokens_are_refused() {
        let claims = json!({"sub": "u", "room": "r", "exp": NOW + 60});
        let forged = sign_hs256(&claims, b"not-the-key");
        assert!(!join_allowed(&forged, &"k".into(), Some("u"), "r", NOW));
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let none = format!("{header}.{payload}.");
        assert!(!join_allowed(&none, &"k".into(), Some("u"), "r", NOW));
        assert!(!join_allowed("garbage", &"k".into(), Some("u"), "r", NOW));
    }
}
