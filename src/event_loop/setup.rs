//! The loop's fixed setup: what the server was started with and no step
//! changes (the config, the session rules derived from it, the mode, the
//! JWT verifier). Every step may read it; none writes it.

use crate::config::Config;
use crate::jwt::Verifier;
use crate::mode::Mode;
use crate::session::Rules;

/// Read-only for the whole run.
pub(super) struct Setup {
    /// The whole configuration, as loaded.
    pub(super) config: Config,
    /// The session limits and timeouts, on the loop clock.
    pub(super) rules: Rules,
    /// Integrated or standalone (which endpoints answer).
    pub(super) mode: Mode,
    /// Checks connect tokens; its JWKS keys (if any) refresh on their own thread.
    pub(super) jwt: Verifier,
}

impl Setup {
    /// The per-session rate limits (`max_messages_per_second`,
    /// `max_bytes_per_second`).
    pub(super) fn rate_limits(&self) -> crate::rate::Limits {
        let ws = &self.config.websocket;
        crate::rate::Limits {
            messages: ws.max_messages_per_second,
            bytes: ws.max_bytes_per_second as u64,
        }
    }

    /// Messages shorter than this are never compressed.
    pub(super) fn compression_min_bytes(&self) -> usize {
        self.config.websocket.compression_min_bytes
    }
}
