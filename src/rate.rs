//! The per-session rate limit on client messages (PROTOCOL.md section 7,
//! `max_messages_per_second`): a token bucket whose burst is the per-second
//! figure, and the flood detector that closes a client sending at over ten
//! times the rate for five seconds.
//!
//! Pure: the loop passes the time in (milliseconds on its clock) and the
//! rate; nothing here reads a clock or touches a session.

/// Milli-tokens per message: with `rate` messages per second the bucket
/// refills `rate` milli-tokens per millisecond, in integers.
const COST: u64 = 1000;
/// A client over this many times the rate ...
pub const FLOOD_FACTOR: u64 = 10;
/// ... for this long is closed (1008).
pub const FLOOD_MS: u64 = 5000;
/// Length of the windows the flood detector counts in.
const WINDOW_MS: u64 = 1000;

/// What to do with one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: handle it.
    Allow,
    /// Over the rate: drop it with an error reply.
    Drop,
    /// Flooding for [`FLOOD_MS`]: close the session with 1008.
    Close,
}

/// One session's bucket and flood window. Starts full.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bucket {
    /// Milli-tokens spent below a full bucket (0 = full), so a new bucket
    /// needs no rate to start full.
    spent: u64,
    last_ms: u64,
    window_start_ms: u64,
    window_count: u64,
    flood_since_ms: Option<u64>,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn new(now_ms: u64) -> Bucket {
        Bucket {
            last_ms: now_ms,
            window_start_ms: now_ms,
            ..Bucket::default()
        }
    }

    /// Accounts for one message at `now_ms` under `rate` messages per second
    /// (`rate` > 0; 0 means the limit is off and the caller does not ask).
    pub fn take(&mut self, now_ms: u64, rate: u32) -> Verdict {
        let rate = u64::from(rate.max(1));
        if self.flooded(now_ms, rate) {
            return Verdict::Close;
        }
        let capacity = rate * COST;
        let refill = now_ms.saturating_sub(self.last_ms).saturating_mul(rate);
        self.last_ms = self.last_ms.max(now_ms);
        self.spent = self.spent.saturating_sub(refill);
        if self.spent + COST > capacity {
            return Verdict::Drop;
        }
        self.spent += COST;
        Verdict::Allow
    }

    /// Counts the message in its one-second window; true once every window
    /// for [`FLOOD_MS`] held more than [`FLOOD_FACTOR`] times the rate.
    fn flooded(&mut self, now_ms: u64, rate: u64) -> bool {
        let limit = rate * FLOOD_FACTOR;
        if now_ms >= self.window_start_ms + WINDOW_MS {
            let was_over = self.window_count > limit;
            // A quiet second between windows also ends a streak.
            let adjacent = now_ms < self.window_start_ms + 2 * WINDOW_MS;
            self.flood_since_ms = match (was_over && adjacent, self.flood_since_ms) {
                (false, _) => None,
                (true, Some(since)) => Some(since),
                (true, None) => Some(self.window_start_ms),
            };
            self.window_start_ms = now_ms;
            self.window_count = 0;
        }
        self.window_count += 1;
        if self.window_count <= limit {
            return false;
        }
        let since = self.flood_since_ms.unwrap_or(self.window_start_ms);
        now_ms.saturating_sub(since) >= FLOOD_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_the_rate_then_it_refills_steadily() {
        let mut bucket = Bucket::new(0);
        for _ in 0..5 {
            assert_eq!(bucket.take(0, 5), Verdict::Allow);
        }
        assert_eq!(bucket.take(0, 5), Verdict::Drop, "one past the burst");
        assert_eq!(bucket.take(199, 5), Verdict::Drop, "not yet a whole token");
        assert_eq!(
            bucket.take(200, 5),
            Verdict::Allow,
            "5/s refills one per 200 ms"
        );
        assert_eq!(bucket.take(200, 5), Verdict::Drop);
        // Idle for long: full again, never more than the burst.
        for _ in 0..5 {
            assert_eq!(bucket.take(60_000, 5), Verdict::Allow);
        }
        assert_eq!(bucket.take(60_000, 5), Verdict::Drop);
    }

    #[test]
    fn steady_traffic_at_the_rate_is_never_dropped() {
        let mut bucket = Bucket::new(0);
        for i in 0..1000 {
            assert_eq!(bucket.take(i * 100, 10), Verdict::Allow, "message {i}");
        }
    }

    #[test]
    fn ten_times_the_rate_for_five_seconds_closes() {
        // Rate 2/s: 40 messages a second is 20 times the rate.
        let mut bucket = Bucket::new(0);
        let mut closed_at = None;
        for i in 0..400u64 {
            let now = i * 25;
            if bucket.take(now, 2) == Verdict::Close {
                closed_at = Some(now);
                break;
            }
        }
        let at = closed_at.expect("a flood is closed");
        assert!(
            (FLOOD_MS..FLOOD_MS + 1500).contains(&at),
            "closed at {at} ms"
        );
    }

    #[test]
    fn bursts_below_ten_times_or_with_pauses_are_not_a_flood() {
        // Rate 2/s at 19 messages a second: dropped, never closed.
        let mut bucket = Bucket::new(0);
        for i in 0..19 * 20u64 {
            assert_ne!(bucket.take(i * 1000 / 19, 2), Verdict::Close, "message {i}");
        }
        // 4 s of flood, 2 s quiet, 4 s of flood: never 5 s in a row.
        let mut bucket = Bucket::new(0);
        for second in [0u64, 1, 2, 3, 6, 7, 8, 9] {
            for i in 0..100 {
                let now = second * 1000 + i * 10;
                assert_ne!(bucket.take(now, 2), Verdict::Close, "at {now} ms");
            }
        }
    }
}
