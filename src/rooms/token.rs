//! Join tokens (`{"type":"join","room":R,"token":T}` in `token` mode): a JWT
//! checked with the connect token's keys and algorithms (the server's
//! [`Verifier`]), whose `room` must equal R, whose `sub` must equal the
//! session's user id, and which must carry `exp`.

use crate::jwt::Verifier;

/// Whether `token` lets `user` join `room`. Anonymous sessions cannot use
/// join tokens.
pub fn join_allowed(
    verifier: &Verifier,
    token: &str,
    user: Option<&str>,
    room: &str,
    now_unix: u64,
) -> bool {
    let Some(user) = user else {
        return false;
    };
    match verifier.verify_join(token, room, user, now_unix) {
        Ok(_) => true,
        Err(e) => {
            log::debug!("join token refused: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtConfig;
    use crate::jwt::sign_hs256;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::{json, Value};

    const NOW: u64 = 1_700_000_000;

    fn verifier() -> Verifier {
        let config = JwtConfig {
            secret: "k".into(),
            ..JwtConfig::default()
        };
        Verifier::from_config(&config).expect("an HS256 key")
    }

    fn allowed(claims: Value, user: Option<&str>, room: &str) -> bool {
        let token = sign_hs256(&claims, b"k");
        join_allowed(&verifier(), &token, user, room, NOW)
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
        assert!(!join_allowed(&verifier(), &forged, Some("u"), "r", NOW));
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let none = format!("{header}.{payload}.");
        assert!(!join_allowed(&verifier(), &none, Some("u"), "r", NOW));
        assert!(!join_allowed(&verifier(), "garbage", Some("u"), "r", NOW));
    }
}
