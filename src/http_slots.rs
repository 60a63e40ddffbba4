//! Which pre-upgrade connection gives up its slot at `max_http_connections`
//! (docs/protocol.md section 7a): the one idle the longest, where idle means a
//! keep-alive connection between requests or one that has sent nothing. Only
//! when none is idle does a new connection get 503.
//!
//! The loop reports each moment a connection becomes idle (accepted, or its
//! response written with no request pending) with a stamp, the loop-clock
//! ms it became idle; the queue keeps them in that order and checks each
//! candidate against the session when a slot is needed, so a connection
//! that got busy again, upgraded or went away is skipped then, not searched
//! for at every change. Stale entries are dropped as the queue grows, so it
//! holds at most about twice the connections it could name.
//!
//! Pure: keys and stamps in, a key out; the caller says what is still idle.

use std::collections::VecDeque;

use crate::audience::SessionKey;

/// A keep-alive connection serves at most this many requests, then its
/// last response says `Connection: close`.
pub(crate) const MAX_REQUESTS_PER_CONNECTION: u16 = 1000;

/// Pre-upgrade connections in the order they became idle.
#[derive(Debug, Default)]
pub(crate) struct IdleHttp {
    queue: VecDeque<(SessionKey, u64)>,
}

impl IdleHttp {
    /// `key` became idle at `stamp`. `live`: how many connections are
    /// counted now, which bounds how many entries can still be valid.
    pub(crate) fn push(
        &mut self,
        key: SessionKey,
        stamp: u64,
        live: usize,
        mut still_idle: impl FnMut(SessionKey, u64) -> bool,
    ) {
        if self.queue.len() >= 2 * live + 64 {
            self.queue.retain(|&(key, stamp)| still_idle(key, stamp));
            if self.queue.capacity() > 4 * (self.queue.len() + 64) {
                self.queue.shrink_to(2 * self.queue.len() + 64);
            }
        }
        self.queue.push_back((key, stamp));
    }

    /// The connection idle the longest that `still_idle` confirms (removed
    /// from the queue), or `None` when every connection is busy. Entries
    /// it passes over are stale and dropped.
    pub(crate) fn take_oldest(
        &mut self,
        mut still_idle: impl FnMut(SessionKey, u64) -> bool,
    ) -> Option<SessionKey> {
        while let Some((key, stamp)) = self.queue.pop_front() {
            if still_idle(key, stamp) {
                return Some(key);
            }
        }
        None
    }

    /// Entries held (valid or stale).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn key(index: u32) -> SessionKey {
        SessionKey {
            index,
            generation: index,
        }
    }

    #[test]
    fn the_longest_idle_goes_first_and_busy_ones_are_skipped() {
        // index → the stamp it is idle since (absent: busy or gone).
        let mut idle: HashMap<SessionKey, u64> = HashMap::new();
        let mut slots = IdleHttp::default();
        for (i, at) in [(1, 10), (2, 20), (3, 30)] {
            idle.insert(key(i), at);
            slots.push(key(i), at, 3, |k, s| idle.get(&k) == Some(&s));
        }
        // 1 got a request in progress; 2 was answered and is idle again later.
        idle.remove(&key(1));
        idle.insert(key(2), 40);
        slots.push(key(2), 40, 3, |k, s| idle.get(&k) == Some(&s));
        let check = |idle: &HashMap<SessionKey, u64>| {
            let idle = idle.clone();
            move |k: SessionKey, s: u64| idle.get(&k) == Some(&s)
        };
        assert_eq!(slots.take_oldest(check(&idle)), Some(key(3)));
        idle.remove(&key(3));
        assert_eq!(slots.take_oldest(check(&idle)), Some(key(2)));
        idle.remove(&key(2));
        assert_eq!(slots.take_oldest(check(&idle)), None, "1 is busy");
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        // One keep-alive connection answered a million times.
        let mut slots = IdleHttp::default();
        for stamp in 0..1_000_000u64 {
            slots.push(key(7), stamp, 1, |_, s| s == stamp);
            assert!(slots.len() <= 2 + 64 + 1);
        }
        assert_eq!(slots.take_oldest(|_, s| s == 999_999), Some(key(7)));
    }
}
