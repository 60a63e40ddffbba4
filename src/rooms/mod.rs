//! Rooms people can trust (docs/rooms.md): who may join a room, and the
//! presence events members see.
//!
//! | module | holds |
//! | --- | --- |
//! | [`grants`] | the connect token's `rooms` claim, parsed once at the upgrade into [`Grants`] |
//! | [`token`] | join tokens, checked with the server's JWT verifier |
//! | [`presence`] | the `joined` / `left` events and who they are for |
//!
//! Pure: [`Rooms`] decides a join from what the loop passes in (the
//! session's grants, the message's token, the time); the loop applies the
//! decision (`src/event_loop/rooms.rs`). With `rooms.join: open` the check
//! is one comparison and the session holds no grants.

use crate::config::{Config, JoinMode};
use crate::jwt::{Claims, Verifier};

pub mod grants;
pub mod presence;
pub mod token;

pub use grants::Grants;

/// The rooms feature's settings, owned by the event loop.
#[derive(Debug, Clone)]
pub struct Rooms {
    mode: JoinMode,
    presence: bool,
    /// Checks join tokens with the connect token's keys (a clone of the
    /// server's verifier: one `Arc`).
    verifier: Verifier,
    max_id_bytes: usize,
}

impl Rooms {
    /// The settings a configuration makes; join tokens are checked with
    /// `verifier`, the one connect tokens are.
    pub fn new(config: &Config, verifier: Verifier) -> Rooms {
        Rooms {
            mode: config.rooms.join,
            presence: config.rooms.presence,
            verifier,
            max_id_bytes: config.websocket.max_id_bytes,
        }
    }

    /// `rooms.join`.
    pub fn mode(&self) -> JoinMode {
        self.mode
    }

    /// Whether members get `joined` / `left` events.
    pub fn presence(&self) -> bool {
        self.presence
    }

    /// The grants of a verified connect token, read at the upgrade; `None`
    /// in `open` mode (nothing is kept per session) and without a grant.
    pub fn grants(&self, claims: &Claims) -> Option<Box<Grants>> {
        if self.mode == JoinMode::Open {
            return None;
        }
        Grants::from_claim(claims.get("rooms"), self.max_id_bytes).map(Box::new)
    }

    /// Whether the mode lets a session of `user` holding `grants` join
    /// `room`, with the join `token` it sent, if any. Allocates nothing
    /// unless a join token has to be checked.
    pub fn admits(
        &self,
        grants: Option<&Grants>,
        user: Option<&str>,
        room: &str,
        join_token: Option<&str>,
        now_unix: u64,
    ) -> bool {
        match self.mode {
            JoinMode::Open => true,
            JoinMode::Claims => grants.is_some_and(|g| g.allows(room)),
            JoinMode::Token => {
                grants.is_some_and(|g| g.allows(room))
                    || join_token.is_some_and(|t| {
                        token::join_allowed(&self.verifier, t, user, room, now_unix)
                    })
            }
        }
    }
}

/// The reply to a refused join.
pub fn refused(room: &str) -> Vec<u8> {
    crate::message::error_json(&format!("not allowed to join {room:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::sign_hs256;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn rooms(mode: JoinMode) -> Rooms {
        let mut config = Config::default();
        config.rooms.join = mode;
        config.jwt.secret = "k".into();
        let verifier = Verifier::from_config(&config.jwt).expect("an HS256 key");
        Rooms::new(&config, verifier)
    }

    /// The grants of `token`, verified as a connect token would be.
    fn grants_of(rooms: &Rooms, token: &str) -> Option<Box<Grants>> {
        rooms
            .verifier
            .verify(token, NOW)
            .ok()
            .and_then(|c| rooms.grants(&c))
    }

    #[test]
    fn open_admits_everything_and_keeps_no_grants() {
        let open = rooms(JoinMode::Open);
        let token = sign_hs256(&json!({"sub": "u", "rooms": ["a"]}), b"k");
        assert!(grants_of(&open, &token).is_none());
        assert!(open.admits(None, None, "any", None, NOW));
    }

    #[test]
    fn claims_admit_what_the_connect_token_grants() {
        let claims = rooms(JoinMode::Claims);
        let token = sign_hs256(&json!({"sub": "u", "rooms": ["a", "chat:*"]}), b"k");
        let grants = grants_of(&claims, &token);
        let grants = grants.as_deref();
        assert!(claims.admits(grants, Some("u"), "a", None, NOW));
        assert!(claims.admits(grants, Some("u"), "chat:1", None, NOW));
        assert!(!claims.admits(grants, Some("u"), "b", None, NOW));
        assert!(!claims.admits(None, Some("u"), "a", None, NOW), "no token");
        let forged = sign_hs256(&json!({"sub": "u", "rooms": ["*"]}), b"other");
        assert!(grants_of(&claims, &forged).is_none());
        let join = sign_hs256(&json!({"sub": "u", "room": "b", "exp": NOW + 60}), b"k");
        assert!(
            !claims.admits(grants, Some("u"), "b", Some(&join), NOW),
            "join tokens only in token mode"
        );
    }

    #[test]
    fn token_mode_admits_the_claim_or_a_join_token() {
        let mode = rooms(JoinMode::Token);
        let join = sign_hs256(&json!({"sub": "u", "room": "b", "exp": NOW + 60}), b"k");
        assert!(mode.admits(None, Some("u"), "b", Some(&join), NOW));
        assert!(!mode.admits(None, Some("u"), "c", Some(&join), NOW));
        assert!(!mode.admits(None, Some("v"), "b", Some(&join), NOW));
        assert!(!mode.admits(None, None, "b", Some(&join), NOW));
        assert!(!mode.admits(None, Some("u"), "b", None, NOW));
    }

    #[test]
    fn the_refusal_names_the_room() {
        assert_eq!(
            refused("team:42"),
            br#"{"type":"error","content":"not allowed to join \"team:42\""}"#
        );
    }
}
