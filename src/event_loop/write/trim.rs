//! Giving freed queue memory back to the kernel after a large drain.
//!
//! A burst of broadcasts to thousands of receivers grows their queues; the
//! queues are freed as they drain, but glibc keeps the freed pages inside its
//! heap (only the top of the heap is trimmed by itself), so the process's RSS
//! stays at the burst's peak. Once the write backlog is empty again after a
//! drain of many sessions, [`Trim`] asks the allocator to return free pages,
//! at most once per [`MIN_INTERVAL_MS`] (a drain that ends sooner is trimmed
//! on a later pass). It touches nothing but the allocator.

/// Sessions drained since the backlog was last empty before a trim is worth it.
const MIN_DRAINED: usize = 1024;
/// At most one trim per this many loop-clock milliseconds.
const MIN_INTERVAL_MS: u64 = 1000;

/// Counts drained sessions and decides when to trim.
#[derive(Debug, Default)]
pub(in crate::event_loop) struct Trim {
    drained: usize,
    last_ms: Option<u64>,
}

impl Trim {
    /// Records `n` sessions written from the backlog this pass; `empty` says
    /// whether the backlog is empty now. Trims once a large drain has ended
    /// and the last trim is at least [`MIN_INTERVAL_MS`] old.
    pub(in crate::event_loop) fn after_pass(&mut self, n: usize, empty: bool, now_ms: u64) {
        self.drained = self.drained.saturating_add(n);
        if !self.due(empty, now_ms) {
            return;
        }
        self.drained = 0;
        self.last_ms = Some(now_ms);
        release_free_pages();
    }

    fn due(&self, empty: bool, now_ms: u64) -> bool {
        let rested = match self.last_ms {
            Some(last) => now_ms.saturating_sub(last) >= MIN_INTERVAL_MS,
            None => true,
        };
        empty && self.drained >= MIN_DRAINED && rested
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_pages() {
    // SAFETY: malloc_trim(3) takes a plain integer, has no preconditions, and
    // is thread-safe (it takes each arena's lock); it only returns free pages
    // to the kernel and never invalidates a live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_pages() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_drain_ends_and_at_most_once_a_second() {
        let mut t = Trim::default();
        assert!(!t.due(true, 0), "nothing drained yet");
        t.drained = MIN_DRAINED;
        assert!(!t.due(false, 0), "the backlog is not empty yet");
        assert!(t.due(true, 0));
        t.after_pass(0, true, 0);
        assert_eq!(t.drained, 0);
        t.drained = MIN_DRAINED;
        assert!(!t.due(true, MIN_INTERVAL_MS - 1), "too soon after the last");
        assert!(t.due(true, MIN_INTERVAL_MS));
    }
}
