//! The keys of `jwt.jwks_url` (docs/security.md): a parsed key
//! set, and the thread that fetches it at start and keeps it fresh.
//!
//! The event loop never waits here: [`Jwks::snapshot`] clones an `Arc`
//! under a lock held for that clone only, and [`Jwks::request_refresh`]
//! sets a flag. All HTTP happens on the `wshub-jwks` thread, with `ureq`.
//! Touches nothing else in the crate.
//!
//! Choices:
//! - Fetches are at least [`MIN_FETCH_INTERVAL`] apart, whatever asks
//!   (start, an unknown `kid`, the [`REFRESH_PERIOD`] timer, a failure).
//! - A failed fetch keeps the last good set (an empty one before the
//!   first success: tokens that need it get 401, never a pass) and is
//!   retried every [`MIN_FETCH_INTERVAL`]; an outage is logged when it
//!   starts and when it ends, not on every try.
//! - Only asymmetric keys are taken (`kty` RSA, EC, OKP); keys with
//!   `"use": "enc"` and keys the crate cannot read are skipped, so one odd
//!   key does not hide the others. A key's `alg`, when given, binds it to
//!   that algorithm.

use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

/// At most one fetch per this interval (the contract's 10 s).
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(10);
/// A loaded set is fetched again after this, to pick up rotations that no
/// token has asked for yet.
pub const REFRESH_PERIOD: Duration = Duration::from_secs(300);
/// One fetch may take this long, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS larger than this is refused (real ones are a few kilobytes).
const MAX_JWKS_BYTES: u64 = 1 << 20;
/// How often the waiting thread checks that its verifier still exists.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// One usable key.
struct Entry {
    kid: Option<String>,
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

impl Entry {
    fn fits(&self, algorithm: Algorithm) -> bool {
        self.key.family() == algorithm.family() && self.algorithm.is_none_or(|a| a == algorithm)
    }
}

/// A parsed JWKS: the keys a token may name by `kid`.
#[derive(Default)]
pub struct KeySet {
    entries: Vec<Entry>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`), keeping the usable keys.
    /// Errors only when the document itself is not a JWKS.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let document: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Some(Value::Array(keys)) = document.get("keys") else {
            return Err("no \"keys\" array".to_owned());
        };
        let entries = keys
            .iter()
            .filter_map(|raw| {
                let jwk: Jwk = serde_json::from_value(raw.clone()).ok()?;
                if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                    return None;
                }
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                if key.family() == AlgorithmFamily::Hmac {
                    return None;
                }
                let algorithm = match jwk.common.key_algorithm {
                    Some(alg) => Some(Algorithm::try_from(alg).ok()?),
                    None => None,
                };
                Some(Entry {
                    kid: jwk.common.key_id,
                    algorithm,
                    key,
                })
            })
            .collect();
        Ok(KeySet { entries })
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key named `kid` that may check `algorithm`.
    pub(crate) fn by_kid(&self, kid: &str, algorithm: Algorithm) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.kid.as_deref() == Some(kid) && e.fits(algorithm))
    }

    /// For a token without `kid`: the key for `algorithm` when exactly one fits.
    pub(crate) fn only_key_for(&self, algorithm: Algorithm) -> Option<usize> {
        let mut fitting = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.fits(algorithm));
        match (fitting.next(), fitting.next()) {
            (Some((index, _)), None) => Some(index),
            _ => None,
        }
    }

    /// The key at an index returned by [`KeySet::by_kid`] or [`KeySet::only_key_for`].
    pub(crate) fn key(&self, index: usize) -> &DecodingKey {
        &self.entries[index].key
    }
}

/// The current key set of one JWKS URL, shared by the verifier's clones
/// and the refresh thread.
pub struct Jwks {
    url: String,
    current: Mutex<Arc<KeySet>>,
    refresh_wanted: Mutex<bool>,
    wake: Condvar,
}

impl Jwks {
    /// An empty set for `url`; nothing is fetched until [`Jwks::start`].
    pub fn new(url: &str) -> Jwks {
        Jwks {
            url: url.to_owned(),
            current: Mutex::new(Arc::new(KeySet::default())),
            refresh_wanted: Mutex::new(false),
            wake: Condvar::new(),
        }
    }

    /// The keys as last fetched (empty before the first success).
    pub fn snapshot(&self) -> Arc<KeySet> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks the thread for a fetch (a token named an unknown `kid`); it
    /// happens once [`MIN_FETCH_INTERVAL`] has passed since the last one.
    pub fn request_refresh(&self) {
        *self
            .refresh_wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }

    /// Starts the refresh thread; it holds only a weak reference, so it
    /// ends within [`LIVENESS_CHECK`] of the last verifier being dropped.
    pub fn start(this: &Arc<Jwks>) {
        let weak = Arc::downgrade(this);
        let spawned = std::thread::Builder::new()
            .name("wshub-jwks".to_owned())
            .spawn(move || refresh_loop(&weak));
        if let Err(e) = spawned {
            log::error!("jwt.jwks_url: cannot start the refresh thread: {e}");
        }
    }

    fn install(&self, set: KeySet) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }

    /// Waits until a refresh is wanted or `deadline` passes; `false` when
    /// the verifier is gone.
    fn wait(weak: &Weak<Jwks>, deadline: Instant) -> bool {
        loop {
            let Some(jwks) = weak.upgrade() else {
                return false;
            };
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            let wanted = jwks
                .refresh_wanted
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *wanted {
                return true;
            }
            let pause = (deadline - now).min(LIVENESS_CHECK);
            let (wanted, _) = jwks
                .wake
                .wait_timeout(wanted, pause)
                .unwrap_or_else(PoisonError::into_inner);
            if *wanted {
                return true;
            }
        }
    }
}

fn refresh_loop(weak: &Weak<Jwks>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .build()
        .into();
    let mut failing = false;
    loop {
        let Some(jwks) = weak.upgrade() else {
            return;
        };
        *jwks
            .refresh_wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
        let fetched_at = Instant::now();
        match fetch(&agent, &jwks.url) {
            Ok(set) => {
                if set.is_empty() {
                    log::warn!("jwt.jwks_url: the key set holds no usable RSA, EC or Ed25519 key");
                } else if failing {
                    log::info!("jwt.jwks_url: reachable again, {} keys", set.len());
                } else {
                    log::debug!("jwt.jwks_url: fetched, {} keys", set.len());
                }
                failing = false;
                jwks.install(set);
            }
            Err(e) => {
                if !failing {
                    log::warn!(
                        "jwt.jwks_url: cannot load keys ({e}); tokens that need them get 401 \
                         until they load; retrying every {}s",
                        MIN_FETCH_INTERVAL.as_secs()
                    );
                }
                failing = true;
            }
        }
        drop(jwks);
        let next = if failing {
            MIN_FETCH_INTERVAL
        } else {
            REFRESH_PERIOD
        };
        if !Jwks::wait(weak, fetched_at + next) {
            return;
        }
        // Woken early by an unknown kid: still never sooner than the interval.
        let earliest = fetched_at + MIN_FETCH_INTERVAL;
        while Instant::now() < earliest {
            if weak.strong_count() == 0 {
                return;
            }
            std::thread::sleep((earliest - Instant::now()).min(LIVENESS_CHECK));
        }
    }
}

fn fetch(agent: &ureq::Agent, url: &str) -> Result<KeySet, String> {
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    KeySet::parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_usable_asymmetric_keys_only() {
        let text = r#"{"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "XYZ", "kid": "odd"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "bound", "alg": "EdDSA", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let set = KeySet::parse(text).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.by_kid("ed", Algorithm::EdDSA), Some(0));
        assert_eq!(set.by_kid("bound", Algorithm::EdDSA), Some(1));
        assert_eq!(set.by_kid("ed", Algorithm::RS256), None);
        assert_eq!(set.by_kid("enc", Algorithm::EdDSA), None);
        assert_eq!(set.by_kid("hmac", Algorithm::HS256), None);
        // Two Ed25519 keys: a token without kid cannot pick one.
        assert_eq!(set.only_key_for(Algorithm::EdDSA), None);
        assert_eq!(set.only_key_for(Algorithm::ES256), None);
    }

    #[test]
    fn parse_refuses_what_is_not_a_jwks() {
        assert!(KeySet::parse("not json").is_err());
        assert!(KeySet::parse("{}").is_err());
        assert!(KeySet::parse(r#"{"keys": {}}"#).is_err());
        assert!(KeySet::parse(r#"{"keys": []}"#).unwrap().is_empty());
    }
}
