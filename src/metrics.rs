//! Counters of the event loop and their Prometheus text rendering.
//!
//! Plain integers owned by the loop thread: counting costs no syscall, no
//! lock and no atomic. Only the values other threads read without asking the
//! loop ([`Shared`]) are atomics, written once per connect or disconnect.
//! Rendering happens on the loop when `/metrics` is requested.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Why an upgrade or request was refused before a session opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not a valid WebSocket upgrade request.
    BadRequest,
    /// Origin not allowed.
    Origin,
    /// Token missing or invalid.
    Auth,
    /// `max_connections` reached.
    Capacity,
    /// Head over `max_header_bytes` or body over `max_message_size`.
    TooLarge,
    /// Request not complete within `handshake_timeout`.
    Timeout,
    /// Refused by the application's connect hook.
    Hook,
    /// A new connection at `max_http_connections` (503).
    HttpCapacity,
    /// A client address at `max_connections_per_ip` (503, or closed).
    IpLimit,
    /// `proxy_protocol`: no valid PROXY header, or one from an untrusted peer.
    ProxyHeader,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 10] = [
        HandshakeFailure::BadRequest,
        HandshakeFailure::Origin,
        HandshakeFailure::Auth,
        HandshakeFailure::Capacity,
        HandshakeFailure::TooLarge,
        HandshakeFailure::Timeout,
        HandshakeFailure::Hook,
        HandshakeFailure::HttpCapacity,
        HandshakeFailure::IpLimit,
        HandshakeFailure::ProxyHeader,
    ];

    fn label(self) -> &'static str {
        match self {
            HandshakeFailure::BadRequest => "bad_request",
            HandshakeFailure::Origin => "origin",
            HandshakeFailure::Auth => "auth",
            HandshakeFailure::Capacity => "capacity",
            HandshakeFailure::TooLarge => "too_large",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Hook => "hook",
            HandshakeFailure::HttpCapacity => "http_capacity",
            HandshakeFailure::IpLimit => "ip_limit",
            HandshakeFailure::ProxyHeader => "proxy_header",
        }
    }
}

/// Close codes counted individually; others fall under "other".
const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1013];

/// Upper bounds (seconds) of the loop-iteration histogram buckets.
const ITERATION_BUCKETS: [f64; 8] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 1.0];

/// A metric with one value: name, type (`gauge`, `counter`), help, value.
pub(crate) type Single<'a> = (&'a str, &'a str, &'a str, u64);

/// Writes metrics of one value each, with their HELP and TYPE lines.
pub(crate) fn write_single(out: &mut String, metrics: &[Single<'_>]) {
    for (name, kind, help, value) in metrics {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
}

/// Values other threads read without a round trip through the loop.
#[derive(Debug, Default)]
pub struct Shared {
    /// Open chat sessions.
    pub online: AtomicUsize,
    /// Commands sent through handles and not yet taken by the loop.
    pub queued_commands: AtomicUsize,
}

impl Shared {
    /// Open chat sessions.
    pub fn online(&self) -> usize {
        self.online.load(Ordering::Relaxed)
    }
}

/// The loop's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Sessions upgraded since start.
    pub connections_total: u64,
    /// Chat sessions open now.
    pub open_chat: u64,
    /// Echo sessions open now.
    pub open_echo: u64,
    /// Server-Sent Events streams open now.
    pub open_sse: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Bytes read from sockets.
    pub bytes_in: u64,
    /// Data messages queued to sessions.
    pub messages_out: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Broadcasts (REST, handle or client) fanned out.
    pub broadcasts: u64,
    /// Sessions closed with 1013.
    pub slow_consumer_closes: u64,
    /// Sessions closed for silence past `pong_wait`.
    pub pong_timeouts: u64,
    /// REST requests answered.
    pub http_requests: u64,
    /// Client messages dropped over `max_messages_per_second`.
    pub rate_limited_messages: u64,
    /// Sessions closed with 1008 for flooding.
    pub rate_limit_closes: u64,
    /// Client messages dropped over `max_bytes_per_second` (also counted
    /// in `rate_limited_messages`).
    pub byte_limited_messages: u64,
    /// Idle pre-upgrade connections closed to make room for a new one at
    /// `max_http_connections`.
    pub http_evictions: u64,
    /// Keep-alive connections closed after their 1000th request.
    pub http_request_cap_closes: u64,
    /// TLS handshake reads put off to a later pass (over the per-pass budget).
    pub handshakes_deferred: u64,
    /// Client joins refused by `rooms.join` or the `on_join` hook.
    pub joins_refused: u64,
    /// Server-side joins skipped: the session was in `max_rooms_per_session` rooms.
    pub joins_skipped_full: u64,
    /// `joined` / `left` events fanned out (each once, whatever the audience).
    pub presence_events: u64,
    handshake_failures: [u64; HandshakeFailure::ALL.len()],
    close_codes: [u64; CLOSE_CODES.len() + 1],
    iterations: u64,
    iteration_buckets: [u64; ITERATION_BUCKETS.len()],
    iteration_seconds: f64,
}

impl Metrics {
    /// Counts one refused handshake.
    pub fn handshake_failed(&mut self, why: HandshakeFailure) {
        let at = HandshakeFailure::ALL
            .iter()
            .position(|w| *w == why)
            .unwrap_or(0);
        self.handshake_failures[at] += 1;
    }

    /// Counts one Close frame sent.
    pub fn close_sent(&mut self, code: u16) {
        let at = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.close_codes[at] += 1;
    }

    /// Records how long one pass of the loop took.
    pub fn iteration(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        self.iterations += 1;
        self.iteration_seconds += seconds;
        if let Some(at) = ITERATION_BUCKETS.iter().position(|b| seconds <= *b) {
            self.iteration_buckets[at] += 1;
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, shared: &Shared, heap_bytes: Option<usize>) -> String {
        let mut out = String::with_capacity(4096);
        let simple: [Single<'_>; 22] = [
            (
                "wshub_connections_open",
                "gauge",
                "Open chat sessions.",
                self.open_chat,
            ),
            (
                "wshub_echo_connections_open",
                "gauge",
                "Open echo sessions.",
                self.open_echo,
            ),
            (
                "wshub_sse_connections_open",
                "gauge",
                "Open Server-Sent Events streams.",
                self.open_sse,
            ),
            (
                "wshub_connections_total",
                "counter",
                "Sessions opened since start (WebSocket and Server-Sent Events).",
                self.connections_total,
            ),
            (
                "wshub_messages_in_total",
                "counter",
                "Data messages received from clients.",
                self.messages_in,
            ),
            (
                "wshub_bytes_in_total",
                "counter",
                "Bytes read from client sockets.",
                self.bytes_in,
            ),
            (
                "wshub_messages_out_total",
                "counter",
                "Data messages queued to clients.",
                self.messages_out,
            ),
            (
                "wshub_bytes_out_total",
                "counter",
                "Bytes written to client sockets.",
                self.bytes_out,
            ),
            (
                "wshub_broadcasts_total",
                "counter",
                "Broadcasts fanned out.",
                self.broadcasts,
            ),
            (
                "wshub_slow_consumer_closes_total",
                "counter",
                "Sessions closed with 1013 because their queue was full.",
                self.slow_consumer_closes,
            ),
            (
                "wshub_pong_timeouts_total",
                "counter",
                "Sessions closed after pong_wait of silence.",
                self.pong_timeouts,
            ),
            (
                "wshub_rate_limited_messages_total",
                "counter",
                "Client messages dropped over max_messages_per_second or max_bytes_per_second (the 1008 closes included).",
                self.rate_limited_messages,
            ),
            (
                "wshub_byte_limited_messages_total",
                "counter",
                "Client messages dropped over max_bytes_per_second (also in wshub_rate_limited_messages_total).",
                self.byte_limited_messages,
            ),
            (
                "wshub_http_evictions_total",
                "counter",
                "Idle pre-upgrade connections closed to make room at max_http_connections.",
                self.http_evictions,
            ),
            (
                "wshub_http_request_cap_closes_total",
                "counter",
                "Keep-alive connections closed after serving 1000 requests.",
                self.http_request_cap_closes,
            ),
            (
                "wshub_tls_handshakes_deferred_total",
                "counter",
                "TLS handshake reads put off to a later loop pass (over the per-pass budget).",
                self.handshakes_deferred,
            ),
            (
                "wshub_rate_limit_closes_total",
                "counter",
                "Sessions closed with 1008 for sending at over 10x the rate for 5 s.",
                self.rate_limit_closes,
            ),
            (
                "wshub_http_requests_total",
                "counter",
                "HTTP requests answered (upgrades included).",
                self.http_requests,
            ),
            (
                "wshub_joins_refused_total",
                "counter",
                "Client joins refused by rooms.join or the on_join hook.",
                self.joins_refused,
            ),
            (
                "wshub_joins_skipped_full_total",
                "counter",
                "Sessions a REST or handle join skipped: already in max_rooms_per_session rooms.",
                self.joins_skipped_full,
            ),
            (
                "wshub_presence_events_total",
                "counter",
                "Presence events (joined, left) sent to a room.",
                self.presence_events,
            ),
            (
                "wshub_command_queue_depth",
                "gauge",
                "Handle commands waiting for the loop.",
                shared.queued_commands.load(Ordering::Relaxed) as u64,
            ),
        ];
        write_single(&mut out, &simple);
        out.push_str("# HELP wshub_handshake_failures_total Upgrades and requests refused, by reason.\n# TYPE wshub_handshake_failures_total counter\n");
        for (why, count) in HandshakeFailure::ALL.iter().zip(self.handshake_failures) {
            let _ = writeln!(
                out,
                "wshub_handshake_failures_total{{reason=\"{}\"}} {count}",
                why.label()
            );
        }
        out.push_str("# HELP wshub_close_codes_sent_total Close frames sent, by code.\n# TYPE wshub_close_codes_sent_total counter\n");
        for (at, count) in self.close_codes.iter().enumerate() {
            match CLOSE_CODES.get(at) {
                Some(code) => {
                    let _ = writeln!(
                        out,
                        "wshub_close_codes_sent_total{{code=\"{code}\"}} {count}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "wshub_close_codes_sent_total{{code=\"other\"}} {count}"
                    );
                }
            }
        }
        self.render_histogram(&mut out);
        if let Some(bytes) = heap_bytes {
            write_single(
                &mut out,
                &[(
                    "wshub_heap_allocated_bytes",
                    "gauge",
                    "Heap bytes allocated now (counting allocator).",
                    bytes as u64,
                )],
            );
        }
        out
    }

    fn render_histogram(&self, out: &mut String) {
        let name = "wshub_loop_iteration_seconds";
        let _ = write!(out, "# HELP {name} Time spent in one pass of the event loop (excluding the wait in poll).\n# TYPE {name} histogram\n");
        let mut cumulative = 0;
        for (bound, count) in ITERATION_BUCKETS.iter().zip(self.iteration_buckets) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.iterations);
        let _ = writeln!(out, "{name}_sum {}", self.iteration_seconds);
        let _ = writeln!(out, "{name}_count {}", self.iterations);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_a_cumulative_histogram() {
        let mut m = Metrics {
            connections_total: 3,
            ..Metrics::default()
        };
        m.handshake_failed(HandshakeFailure::Auth);
        m.handshake_failed(HandshakeFailure::Auth);
        m.handshake_failed(HandshakeFailure::HttpCapacity);
        m.rate_limited_messages = 9;
        m.rate_limit_closes = 1;
        m.joins_refused = 4;
        m.close_sent(1013);
        m.close_sent(4000);
        m.iteration(Duration::from_micros(50));
        m.iteration(Duration::from_millis(3));
        m.iteration(Duration::from_secs(2));
        let text = m.render(&Shared::default(), Some(1234));
        assert!(text.contains("\nwshub_connections_total 3\n"));
        assert!(text.contains("wshub_handshake_failures_total{reason=\"auth\"} 2\n"));
        assert!(text.contains("wshub_handshake_failures_total{reason=\"http_capacity\"} 1\n"));
        assert!(text.contains("\nwshub_rate_limited_messages_total 9\n"));
        assert!(text.contains("\nwshub_rate_limit_closes_total 1\n"));
        assert!(text.contains("\nwshub_joins_refused_total 4\n"));
        assert!(text.contains("wshub_close_codes_sent_total{code=\"1013\"} 1\n"));
        assert!(text.contains("wshub_close_codes_sent_total{code=\"other\"} 1\n"));
        assert!(text.contains("wshub_loop_iteration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("wshub_loop_iteration_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("wshub_loop_iteration_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("wshub_loop_iteration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("wshub_heap_allocated_bytes 1234\n"));
    }
}
