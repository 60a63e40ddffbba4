//! The `wshub-webhooks` thread: takes events from the bounded queue,
//! batches them (at most [`MAX_BATCH`] events, at most [`MAX_WAIT`] after
//! the first), signs the body and POSTs it with `ureq`, retrying the same
//! body with backoff until the backend answers 2xx.
//!
//! Never runs on the event loop; shares only the queue's receiving end and
//! the atomic counters in [`Stats`]. A batch being retried holds up the
//! ones behind it (order is kept); meanwhile the queue fills and overflow
//! is counted by the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// Events in one POST, at most.
pub const MAX_BATCH: usize = 100;
/// An event waits at most this long for others to join its batch.
pub const MAX_WAIT: Duration = Duration::from_millis(250);
/// The first retry comes after this; each next one after twice as long.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Retries are never further apart than this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One event, as it appears in the body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    /// `user_online`, `user_offline`, `room_occupied` or `room_vacated`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The user, for user events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The room, for room events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// When it was decided, RFC 3339 UTC.
    pub at: String,
    /// The client's address, for `user_online` seen on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// Counters shared with the loop (rendered in `/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Events handed to the thread.
    pub queued: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Events delivered (a 2xx for their batch).
    pub delivered: AtomicU64,
    /// POSTs that failed (non-2xx, timeout, connection error); each is retried.
    pub failed_attempts: AtomicU64,
}

/// Where and how to send.
pub struct Target {
    /// `webhooks.url`.
    pub url: String,
    /// `webhooks.secret`, the HMAC key (may be empty).
    pub secret: Vec<u8>,
    /// `webhooks.timeout`, per attempt.
    pub timeout: Duration,
}

/// The HMAC-SHA256 of `body` under `secret`, as the header value
/// `sha256=<lowercase hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, an empty one included.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The body of one POST.
pub fn body(events: &[Event]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        events: &'a [Event],
    }
    serde_json::to_vec(&Body { events }).unwrap_or_default()
}

/// Runs until the loop drops its end of the queue and what is left is sent.
pub fn run(target: &Target, events: &Receiver<Event>, stats: &Arc<Stats>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(target.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    while open {
        match events.recv() {
            Ok(first) => batch.push(first),
            Err(_) => return,
        }
        let deadline = Instant::now() + MAX_WAIT;
        while batch.len() < MAX_BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(event) => batch.push(event),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        deliver(&agent, target, &batch, stats, open);
        batch.clear();
    }
}

/// POSTs one batch until a 2xx; once the server is stopping (`!retry_forever`)
/// it gives up after a few tries so the process can exit.
fn deliver(
    agent: &ureq::Agent,
    target: &Target,
    batch: &[Event],
    stats: &Stats,
    retry_forever: bool,
) {
    let body = body(batch);
    let signature = signature(&target.secret, &body);
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let result = agent
            .post(&target.url)
            .header("Content-Type", "application/json")
            .header("X-Wshub-Signature", &signature)
            .send(&body[..]);
        let error = match result {
            Ok(response) if response.status().is_success() => {
                stats
                    .delivered
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if attempts > 1 {
                    log::info!("webhooks: delivered after {attempts} attempts");
                }
                return;
            }
            Ok(response) => format!("HTTP {}", response.status().as_u16()),
            Err(e) => e.to_string(),
        };
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        if attempts == 1 {
            log::warn!(
                "webhooks: POST failed ({error}); retrying {} events with backoff",
                batch.len()
            );
        }
        if !retry_forever && attempts >= 3 {
            log::warn!(
                "webhooks: shutting down, {} events not delivered",
                batch.len()
            );
            return;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn body_shape() {
        let events = [
            Event {
                kind: "user_online",
                user: Some("amy".into()),
                room: None,
                at: "2026-12-07T18:00:00Z".into(),
                ip: Some("127.0.0.1".into()),
            },
            Event {
                kind: "room_vacated",
                user: None,
                room: Some("r".into()),
                at: "2026-12-07T18:00:01Z".into(),
                ip: None,
            },
        ];
        assert_eq!(
            String::from_utf8(body(&events)).unwrap(),
            r#"{"events":[{"type":"user_online","user":"amy","at":"2026-12-07T18:00:00Z","ip":"127.0.0.1"},{"type":"room_vacated","room":"r","at":"2026-12-07T18:00:01Z"}]}"#
        );
    }
}
