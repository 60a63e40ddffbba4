//! The per-session rate limits on client data messages (docs/protocol.md
//! section 7 and 7a): a token bucket by count (`max_messages_per_second`)
//! and one by bytes (`max_bytes_per_second`, charged by the inflated size),
//! each with a burst of its per-second figure, and the flood detector that
//! closes a client sending at over ten times either rate for five seconds.
//!
//! A message is admitted in two steps, so a compressed one is bounded before
//! it is inflated: [`Bucket::admit`] takes its count token and says how many
//! bytes it may inflate to; [`Bucket::spend`] charges its size once known.
//!
//! Pure: the loop passes the time in (milliseconds on its clock) and the
//! limits; nothing here reads a clock or touches a session.

/// Milli-tokens per message (or per byte): with `rate` per second the
/// bucket refills `rate` milli-tokens per millisecond, in integers.
const COST: u64 = 1000;
/// A client over this many times the rate ...
pub const FLOOD_FACTOR: u64 = 10;
/// ... for this long is closed (1008).
pub const FLOOD_MS: u64 = 5000;
/// Length of the windows the flood detector counts in.
const WINDOW_MS: u64 = 1000;

/// The per-second limits of one session; 0 is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Data messages per second (`max_messages_per_second`).
    pub messages: u32,
    /// Bytes per second, inflated (`max_bytes_per_second`).
    pub bytes: u64,
}

impl Limits {
    /// Neither limit is set: no bucket is kept at all.
    pub fn is_off(&self) -> bool {
        self.messages == 0 && self.bytes == 0
    }
}

/// What to do with one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: handle it, inflating it to at most this many bytes
    /// (`usize::MAX` without a byte limit).
    Allow(usize),
    /// Over the message rate (or no byte left): drop it with an error reply.
    Drop,
    /// Flooding for [`FLOOD_MS`]: close the session with 1008.
    Close,
}

/// One session's buckets and flood window. Starts full.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bucket {
    /// Milli-tokens spent below a full bucket (0 = full), so a new bucket
    /// needs no rate to start full.
    spent: u64,
    /// The same for bytes.
    bytes_spent: u64,
    last_ms: u64,
    window_start_ms: u64,
    window_count: u64,
    window_bytes: u64,
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

    /// Accounts for one data message of `wire` bytes (as received, before
    /// inflating) at `now_ms` (`limits` not off: the caller does not ask
    /// then). Takes its count token; its bytes are charged by [`spend`].
    ///
    /// [`spend`]: Bucket::spend
    pub fn admit(&mut self, now_ms: u64, limits: Limits, wire: usize) -> Verdict {
        if self.flooded(now_ms, limits, wire as u64) {
            return Verdict::Close;
        }
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        if limits.bytes > 0 {
            let refill = elapsed.saturating_mul(limits.bytes);
            self.bytes_spent = self.bytes_spent.saturating_sub(refill);
        }
        if limits.messages > 0 {
            let rate = u64::from(limits.messages);
            self.spent = self.spent.saturating_sub(elapsed.saturating_mul(rate));
            if self.spent + COST > rate * COST {
                return Verdict::Drop;
            }
        }
        let left = match self.bytes_left(limits) {
            None => usize::MAX,
            Some(0) => return Verdict::Drop,
            Some(left) => left,
        };
        if limits.messages > 0 {
            self.spent += COST;
        }
        Verdict::Allow(left)
    }

    /// Whole bytes left in the byte bucket; `None` without a byte limit.
    fn bytes_left(&self, limits: Limits) -> Option<usize> {
        if limits.bytes == 0 {
            return None;
        }
        let capacity = limits.bytes.saturating_mul(COST);
        let left = capacity.saturating_sub(self.bytes_spent) / COST;
        Some(usize::try_from(left).unwrap_or(usize::MAX))
    }

    /// Charges an admitted message's size (inflated, when it was
    /// compressed). `false`: it does not fit; the bucket is emptied all the
    /// same (the work was done), and the message is dropped.
    pub fn spend(&mut self, limits: Limits, bytes: usize) -> bool {
        let Some(left) = self.bytes_left(limits) else {
            return true;
        };
        let fits = bytes <= left;
        let charged = (bytes.min(left) as u64).saturating_mul(COST);
        self.bytes_spent = self.bytes_spent.saturating_add(charged);
        fits
    }

    /// Counts the message in its one-second window; true once every window
    /// for [`FLOOD_MS`] held more than [`FLOOD_FACTOR`] times a rate (the
    /// message rate, or the byte rate in bytes as received).
    fn flooded(&mut self, now_ms: u64, limits: Limits, wire: u64) -> bool {
        let over = |count: u64, bytes: u64| {
            (limits.messages > 0 && count > u64::from(limits.messages) * FLOOD_FACTOR)
                || (limits.bytes > 0 && bytes > limits.bytes.saturating_mul(FLOOD_FACTOR))
        };
        if now_ms >= self.window_start_ms + WINDOW_MS {
            let was_over = over(self.window_count, self.window_bytes);
            // A quiet second between windows also ends a streak.
            let adjacent = now_ms < self.window_start_ms + 2 * WINDOW_MS;
            self.flood_since_ms = match (was_over && adjacent, self.flood_since_ms) {
                (false, _) => None,
                (true, Some(since)) => Some(since),
                (true, None) => Some(self.window_start_ms),
            };
            self.window_start_ms = now_ms;
            self.window_count = 0;
            self.window_bytes = 0;
        }
        self.window_count += 1;
        self.window_bytes = self.window_bytes.saturating_add(wire);
        if !over(self.window_count, self.window_bytes) {
            return false;
        }
        let since = self.flood_since_ms.unwrap_or(self.window_start_ms);
        now_ms.saturating_sub(since) >= FLOOD_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By count only, as `max_messages_per_second` alone.
    fn messages(rate: u32) -> Limits {
        Limits {
            messages: rate,
            bytes: 0,
        }
    }

    impl Bucket {
        /// One small message under `limits`, charged one byte.
        fn take(&mut self, now_ms: u64, rate: u32) -> Verdict {
            match self.admit(now_ms, messages(rate), 1) {
                Verdict::Allow(_) => Verdict::Allow(usize::MAX),
                other => other,
            }
        }
    }

    #[test]
    fn the_burst_is_the_rate_then_it_refills_steadily() {
        let mut bucket = Bucket::new(0);
        for _ in 0..5 {
            assert_eq!(bucket.take(0, 5), Verdict::Allow(usize::MAX));
        }
        assert_eq!(bucket.take(0, 5), Verdict::Drop, "one past the burst");
        assert_eq!(bucket.take(199, 5), Verdict::Drop, "not yet a whole token");
        assert_eq!(
            bucket.take(200, 5),
            Verdict::Allow(usize::MAX),
            "5/s refills one per 200 ms"
        );
        assert_eq!(bucket.take(200, 5), Verdict::Drop);
        // Idle for long: full again, never more than the burst.
        for _ in 0..5 {
            assert_eq!(bucket.take(60_000, 5), Verdict::Allow(usize::MAX));
        }
        assert_eq!(bucket.take(60_000, 5), Verdict::Drop);
    }

    #[test]
    fn steady_traffic_at_the_rate_is_never_dropped() {
        let mut bucket = Bucket::new(0);
        for i in 0..1000 {
            assert_eq!(
                bucket.take(i * 100, 10),
                Verdict::Allow(usize::MAX),
                "message {i}"
            );
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

    #[test]
    fn bytes_are_charged_by_size_with_a_burst_of_the_rate() {
        let limits = Limits {
            messages: 0,
            bytes: 1000,
        };
        let mut bucket = Bucket::new(0);
        assert_eq!(bucket.admit(0, limits, 10), Verdict::Allow(1000));
        assert!(bucket.spend(limits, 600));
        assert_eq!(
            bucket.admit(0, limits, 10),
            Verdict::Allow(400),
            "what is left"
        );
        assert!(!bucket.spend(limits, 401), "one past what is left");
        assert_eq!(
            bucket.admit(0, limits, 10),
            Verdict::Drop,
            "emptied all the same"
        );
        // 1000 bytes/s refills one byte per millisecond.
        assert_eq!(bucket.admit(250, limits, 10), Verdict::Allow(250));
        assert!(bucket.spend(limits, 250));
        assert_eq!(
            bucket.admit(60_000, limits, 10),
            Verdict::Allow(1000),
            "never more than the burst"
        );
    }

    #[test]
    fn both_limits_apply_and_a_dropped_message_spends_no_byte() {
        let limits = Limits {
            messages: 2,
            bytes: 100,
        };
        let mut bucket = Bucket::new(0);
        assert_eq!(bucket.admit(0, limits, 5), Verdict::Allow(100));
        assert!(bucket.spend(limits, 30));
        assert_eq!(bucket.admit(0, limits, 5), Verdict::Allow(70));
        assert!(bucket.spend(limits, 30));
        assert_eq!(
            bucket.admit(0, limits, 5),
            Verdict::Drop,
            "third message in the burst of 2"
        );
        assert_eq!(bucket.admit(500, limits, 5), Verdict::Allow(90));
    }

    #[test]
    fn ten_times_the_byte_rate_for_five_seconds_closes() {
        // 100 bytes/s; 2,000 bytes a second in 20 messages is 20 times it.
        let limits = Limits {
            messages: 0,
            bytes: 100,
        };
        let mut bucket = Bucket::new(0);
        let closed_at = (0..400u64)
            .map(|i| i * 50)
            .find(|&now| bucket.admit(now, limits, 100) == Verdict::Close)
            .expect("a flood is closed");
        assert!(
            (FLOOD_MS..FLOOD_MS + 1500).contains(&closed_at),
            "closed at {closed_at} ms"
        );
        // At 9 times the byte rate: dropped, never closed.
        let mut bucket = Bucket::new(0);
        for i in 0..9 * 20u64 {
            assert_ne!(
                bucket.admit(i * 1000 / 9, limits, 100),
                Verdict::Close,
                "message {i}"
            );
        }
    }
}
