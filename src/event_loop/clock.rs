//! The loop clock and the session timers: u64 milliseconds since the loop
//! started, read once per pass, and the one wheel every session deadline
//! sits in (one entry per session, re-armed lazily: a later deadline
//! leaves the earlier entry in place; it fires, finds nothing due and arms
//! again). Touches the sessions' `timer` field and nothing else of them;
//! what a due timer means is applied by `timers.rs`.

use std::time::{Duration, Instant};

use crate::audience::SessionKey;
use crate::session::Session;
use crate::wheel::{millis, Wheel};

/// Timer granularity and wheel size: ~10 s per revolution.
const TICK_MS: u64 = 10;
const SLOTS: usize = 1024;

/// Time and the wheel.
pub(super) struct Clock {
    /// When the loop started: millisecond 0 of the loop clock.
    pub(super) start: Instant,
    /// The loop clock, read at the start of each pass.
    pub(super) now_ms: u64,
    /// Every session's next deadline.
    wheel: Wheel<SessionKey>,
    /// The sessions whose timer fired this pass (capacity kept).
    due: Vec<SessionKey>,
}

impl Clock {
    pub(super) fn new() -> Clock {
        Clock {
            start: Instant::now(),
            now_ms: 0,
            wheel: Wheel::new(TICK_MS, SLOTS),
            due: Vec::new(),
        }
    }

    /// A new pass began at `at`: the clock reads it.
    pub(super) fn pass(&mut self, at: Instant) {
        self.now_ms = millis(at.saturating_duration_since(self.start));
    }

    /// Makes sure the session's timer fires no later than `at_ms`.
    pub(super) fn arm(&mut self, session: &mut Session, at_ms: u64) {
        if let Some((timer, armed_at)) = session.timer {
            if armed_at <= at_ms {
                return;
            }
            self.wheel.cancel(timer);
        }
        let timer = self.wheel.insert(at_ms, session.key);
        session.timer = Some((timer, at_ms));
    }

    /// A reaped session's timer goes.
    pub(super) fn disarm(&mut self, session: &Session) {
        if let Some((timer, _)) = session.timer {
            self.wheel.cancel(timer);
        }
    }

    /// The sessions whose deadline has come, for `timers.rs`; hand the
    /// list back with [`Clock::done`] to keep its capacity.
    pub(super) fn take_due(&mut self) -> Vec<SessionKey> {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.poll(self.now_ms, &mut due);
        due
    }

    pub(super) fn done(&mut self, mut due: Vec<SessionKey>) {
        due.clear();
        self.due = due;
    }

    /// The earliest session deadline.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.wheel.next_deadline()
    }

    /// How long until loop-clock `at_ms`, measured from the precise start,
    /// so the pass that wakes reads a loop clock at or past it.
    pub(super) fn until(&self, at_ms: u64) -> Option<Duration> {
        let at = self.start.checked_add(Duration::from_millis(at_ms))?;
        Some(at.saturating_duration_since(Instant::now()))
    }
}
