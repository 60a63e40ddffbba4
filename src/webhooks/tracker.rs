//! When a name (a user or a room) goes online or offline for webhooks:
//! presence changes in, events out, with the `offline_delay` grace period.
//!
//! Pure: the loop reports each change of cluster-wide presence (a first
//! session anywhere, a last one gone) with the loop clock; deadlines are
//! loop-clock milliseconds. One tracker per kind of name.
//!
//! A name that goes absent is *pending* until its deadline; coming back
//! before it cancels the pending offline and makes no event (a reconnect).
//! At the deadline the caller confirms the name is still absent (the
//! cluster view may have changed since) and gets the offline event.
//! All names share one delay, so deadlines arrive in insertion order and a
//! FIFO holds them; a cancelled or renewed entry is skipped when popped.

use std::collections::{HashMap, VecDeque};

/// Presence changes in, events out, for one kind of name.
#[derive(Debug)]
pub struct Tracker {
    delay_ms: u64,
    /// Name → the deadline of its live pending entry.
    pending: HashMap<String, u64>,
    /// Deadlines in order; entries whose deadline no longer matches
    /// `pending` are stale and skipped.
    queue: VecDeque<(u64, String)>,
}

impl Tracker {
    /// A tracker reporting offline after `delay_ms` of absence.
    pub fn new(delay_ms: u64) -> Tracker {
        Tracker {
            delay_ms,
            pending: HashMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// `name` is present again (its first session anywhere). `true`: report
    /// it as online; `false`: it was pending offline, so it never went.
    pub fn present(&mut self, name: &str) -> bool {
        self.pending.remove(name).is_none()
    }

    /// `name` is absent now (its last session anywhere is gone); its
    /// offline is due at `now_ms + delay`.
    pub fn absent(&mut self, name: &str, now_ms: u64) {
        let deadline = now_ms.saturating_add(self.delay_ms);
        self.pending.insert(name.to_owned(), deadline);
        self.queue.push_back((deadline, name.to_owned()));
    }

    /// Whether `name` is waiting out its delay.
    #[cfg(test)]
    pub fn is_pending(&self, name: &str) -> bool {
        self.pending.contains_key(name)
    }

    /// The earliest deadline, for the loop's poll timeout.
    pub fn next_deadline(&self) -> Option<u64> {
        self.queue.front().map(|(deadline, _)| *deadline)
    }

    /// Names whose delay ran out by `now_ms` and that `still_absent`
    /// confirms: report them offline.
    pub fn due(&mut self, now_ms: u64, still_absent: impl Fn(&str) -> bool) -> Vec<String> {
        let mut offline = Vec::new();
        while let Some((deadline, _)) = self.queue.front() {
            if *deadline > now_ms {
                break;
            }
            let Some((deadline, name)) = self.queue.pop_front() else {
                break;
            };
            if self.pending.get(&name) != Some(&deadline) {
                continue;
            }
            self.pending.remove(&name);
            if still_absent(&name) {
                offline.push(name);
            }
        }
        offline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_only_after_the_delay() {
        let mut t = Tracker::new(5_000);
        assert!(t.present("amy"));
        t.absent("amy", 1_000);
        assert_eq!(t.next_deadline(), Some(6_000));
        assert!(t.due(5_999, |_| true).is_empty());
        assert_eq!(t.due(6_000, |_| true), ["amy"]);
        assert!(!t.is_pending("amy"));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_quick_return_makes_no_event() {
        let mut t = Tracker::new(5_000);
        t.absent("amy", 0);
        assert!(!t.present("amy"), "back within the delay: no online");
        assert!(t.due(10_000, |_| true).is_empty(), "and no offline");
        // After the delay it is a new online.
        t.absent("amy", 20_000);
        assert_eq!(t.due(25_000, |_| true), ["amy"]);
        assert!(t.present("amy"));
    }

    #[test]
    fn a_renewed_absence_counts_from_the_last_one() {
        let mut t = Tracker::new(5_000);
        t.absent("amy", 0);
        assert!(!t.present("amy"));
        t.absent("amy", 3_000);
        assert!(t.due(5_000, |_| true).is_empty());
        assert_eq!(t.due(8_000, |_| true), ["amy"]);
    }

    #[test]
    fn the_caller_confirms_absence_at_the_deadline() {
        let mut t = Tracker::new(1_000);
        t.absent("amy", 0);
        t.absent("bob", 0);
        assert_eq!(t.due(1_000, |name| name == "bob"), ["bob"]);
        assert!(!t.is_pending("amy"));
    }
}
