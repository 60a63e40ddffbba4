//! Webhooks (docs/webhooks.md): the loop's side. Decides events from
//! presence changes, cheaply, and hands them to the `wshub-webhooks` thread
//! with `try_send` on a bounded queue; the thread batches, signs and POSTs
//! (see `sender`). Nothing here blocks or does I/O.
//!
//! The loop reports cluster-wide presence changes (a user's or room's
//! first session anywhere, its last one gone, node death included); a
//! [`Tracker`] per kind applies `offline_delay` on the loop clock. In a
//! cluster only the *reporting node* (the live node with the smallest node
//! id, see [`Webhooks::set_reporter`]) sends events; every node tracks, so a
//! successor carries on with the same state. Touches only its submodules.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::WebhooksConfig;
use sender::{Event, Stats, Target};
pub use tracker::Tracker;

pub mod sender;
pub mod tracker;

/// Events the loop may hand over before the thread takes them; beyond it
/// events are dropped and counted (`wshub_webhook_events_dropped_total`).
pub const QUEUE_CAPACITY: usize = 10_000;

/// The kinds of event `webhooks.events` may list.
pub const EVENT_KINDS: [&str; 4] = [
    "user_online",
    "user_offline",
    "room_occupied",
    "room_vacated",
];

/// The loop's webhook state: two trackers, the queue, the counters.
#[derive(Debug)]
pub struct Webhooks {
    users: Tracker,
    rooms: Tracker,
    wanted: [bool; 4],
    queue: SyncSender<Event>,
    stats: Arc<Stats>,
    /// Whether this node sends (always, on a single node).
    reporter: bool,
}

impl Webhooks {
    /// Starts the sender thread; `None` when `webhooks.url` is empty.
    pub fn start(config: &WebhooksConfig) -> Option<Webhooks> {
        if config.url.is_empty() {
            return None;
        }
        let (queue, events) = sync_channel(QUEUE_CAPACITY);
        let stats = Arc::new(Stats::default());
        let target = Target {
            url: config.url.expose().to_owned(),
            secret: config.secret.expose().as_bytes().to_vec(),
            timeout: config.timeout,
        };
        let thread_stats = stats.clone();
        let spawned = std::thread::Builder::new()
            .name("wshub-webhooks".to_owned())
            .spawn(move || sender::run(&target, &events, &thread_stats));
        if let Err(e) = spawned {
            log::error!("webhooks: cannot start the sender thread: {e}; webhooks are off");
            return None;
        }
        let delay_ms = crate::wheel::millis(config.offline_delay);
        let wanted = EVENT_KINDS.map(|kind| config.events.iter().any(|e| e == kind));
        Some(Webhooks {
            users: Tracker::new(delay_ms),
            rooms: Tracker::new(delay_ms),
            wanted,
            queue,
            stats,
            reporter: true,
        })
    }

    /// Whether room events are wanted (the loop then tracks rooms).
    pub fn rooms_wanted(&self) -> bool {
        self.wanted[2] || self.wanted[3]
    }

    /// In a cluster: whether this node is the one that sends.
    pub fn set_reporter(&mut self, reporter: bool) {
        self.reporter = reporter;
    }

    /// `user` has a session somewhere again (`ip`: its address, when the
    /// session is on this node).
    pub fn user_present(&mut self, user: &str, ip: Option<String>) {
        if self.users.present(user) {
            self.emit(0, Some(user), None, ip);
        }
    }

    /// `user` has no session anywhere now.
    pub fn user_absent(&mut self, user: &str, now_ms: u64) {
        self.users.absent(user, now_ms);
    }

    /// `room` has a member somewhere again.
    pub fn room_present(&mut self, room: &str) {
        if self.rooms_wanted() && self.rooms.present(room) {
            self.emit(2, None, Some(room), None);
        }
    }

    /// `room` has no member anywhere now.
    pub fn room_absent(&mut self, room: &str, now_ms: u64) {
        if self.rooms_wanted() {
            self.rooms.absent(room, now_ms);
        }
    }

    /// The earliest offline deadline (loop clock).
    pub fn next_deadline(&self) -> Option<u64> {
        [self.users.next_deadline(), self.rooms.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Reports users and rooms whose delay ran out and that are still
    /// absent (the callers look at the router and the cluster view).
    pub fn fire_due(
        &mut self,
        now_ms: u64,
        user_absent: impl Fn(&str) -> bool,
        room_absent: impl Fn(&str) -> bool,
    ) {
        for user in self.users.due(now_ms, user_absent) {
            self.emit(1, Some(&user), None, None);
        }
        for room in self.rooms.due(now_ms, room_absent) {
            self.emit(3, None, Some(&room), None);
        }
    }

    fn emit(&mut self, kind: usize, user: Option<&str>, room: Option<&str>, ip: Option<String>) {
        if !self.wanted[kind] || !self.reporter {
            return;
        }
        let event = Event {
            kind: EVENT_KINDS[kind],
            user: user.map(str::to_owned),
            room: room.map(str::to_owned),
            at: rfc3339_now(),
            ip,
        };
        match self.queue.try_send(event) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let s = &self.stats;
        let rows = [
            (
                "wshub_webhook_events_queued_total",
                "Webhook events handed to the sender thread.",
                &s.queued,
            ),
            (
                "wshub_webhook_events_dropped_total",
                "Webhook events dropped because the queue was full.",
                &s.dropped,
            ),
            (
                "wshub_webhook_events_delivered_total",
                "Webhook events delivered (2xx).",
                &s.delivered,
            ),
            (
                "wshub_webhook_failed_attempts_total",
                "Webhook POSTs that failed and were retried.",
                &s.failed_attempts,
            ),
        ];
        for (name, help, value) in rows {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::from(SystemTime::now());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
