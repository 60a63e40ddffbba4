//! The write backlog: which sessions have output waiting for their turn, one
//! bit per slab slot, taken by a cursor that sweeps the slots in order and
//! wraps around.
//!
//! Why bits and a sweep rather than a FIFO of keys: a session joins once
//! however many frames it is owed (the bit is already set), waits at most one
//! sweep whoever joins after it, and the writes go out in slot order. Slots
//! follow accept order, and so do the kernel's socket structures and the
//! descriptor table: a 10k fan-out written in slot order instead of the
//! router's hash order spends measurably less time on cache misses, in the
//! kernel and here. A bit left by a session that closed is cleared when its
//! slot is reaped; a stale one would only cost an empty flush.
//!
//! Pure bookkeeping: touches nothing but its bits.

/// The sessions waiting to be written, by slab slot.
#[derive(Debug, Default)]
pub(in crate::event_loop) struct Backlog {
    words: Vec<u64>,
    len: usize,
    /// The next slot the sweep looks at.
    cursor: usize,
}

impl Backlog {
    /// Puts `slot` in the backlog; false when it was already waiting.
    pub(in crate::event_loop) fn insert(&mut self, slot: usize) -> bool {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & bit != 0 {
            return false;
        }
        self.words[word] |= bit;
        self.len += 1;
        true
    }

    /// Takes `slot` out (its session is gone).
    pub(in crate::event_loop) fn remove(&mut self, slot: usize) {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if let Some(w) = self.words.get_mut(word) {
            if *w & bit != 0 {
                *w &= !bit;
                self.len -= 1;
            }
        }
    }

    /// Nothing waiting.
    pub(in crate::event_loop) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends up to `max` waiting slots to `out`, in sweep order from the
    /// cursor (wrapping once), and leaves the cursor after the last one.
    pub(in crate::event_loop) fn take(&mut self, max: usize, out: &mut Vec<usize>) {
        let words = self.words.len();
        if self.len == 0 || words == 0 || max == 0 {
            return;
        }
        let stop = out.len() + max;
        let start = self.cursor.min(words * 64);
        let mut word = start / 64;
        // Bits below the cursor in its first word wait for the wrap.
        let mut mask = u64::MAX.checked_shl((start % 64) as u32).unwrap_or(0);
        // `words + 1` visits: the first word's low bits come last.
        for _ in 0..=words {
            if word == words {
                word = 0;
            }
            let mut bits = self.words[word] & mask;
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                self.words[word] &= !(1u64 << bit);
                self.len -= 1;
                let slot = word * 64 + bit;
                out.push(slot);
                if out.len() == stop || self.len == 0 {
                    self.cursor = slot + 1;
                    return;
                }
            }
            mask = u64::MAX;
            word += 1;
        }
        self.cursor = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Backlog;

    fn take(b: &mut Backlog, max: usize) -> Vec<usize> {
        let mut out = Vec::new();
        b.take(max, &mut out);
        out
    }

    #[test]
    fn slots_join_once_and_leave_in_slot_order() {
        let mut b = Backlog::default();
        for slot in [700, 3, 64, 65, 3, 129, 700] {
            b.insert(slot);
        }
        assert_eq!(b.len, 5);
        assert_eq!(take(&mut b, 3), vec![3, 64, 65]);
        assert_eq!(take(&mut b, 10), vec![129, 700]);
        assert!(b.is_empty());
        assert_eq!(take(&mut b, 10), Vec::<usize>::new());
    }

    #[test]
    fn the_sweep_wraps_so_a_slot_behind_the_cursor_waits_one_turn_at_most() {
        let mut b = Backlog::default();
        for slot in [10, 20, 30] {
            b.insert(slot);
        }
        assert_eq!(take(&mut b, 2), vec![10, 20]);
        // Joins behind the cursor (and one in the same word ahead of it).
        b.insert(5);
        b.insert(25);
        b.insert(200);
        assert_eq!(take(&mut b, 10), vec![25, 30, 200, 5]);
        b.insert(21);
        b.insert(4);
        assert_eq!(take(&mut b, 1), vec![21], "the cursor stayed after 5");
        assert_eq!(take(&mut b, 1), vec![4]);
    }

    #[test]
    fn a_removed_slot_is_not_taken_and_counts_are_kept() {
        let mut b = Backlog::default();
        b.insert(1);
        b.insert(2);
        b.remove(1);
        b.remove(1);
        b.remove(10_000);
        assert_eq!(b.len, 1);
        assert_eq!(take(&mut b, 10), vec![2]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_full_sweep_of_many_slots_takes_each_exactly_once() {
        let mut b = Backlog::default();
        for slot in (0..10_000).rev() {
            b.insert(slot);
        }
        let mut seen = Vec::new();
        for _ in 0..200 {
            let before = seen.len();
            b.take(64, &mut seen);
            assert!(seen.len() - before <= 64);
            if b.is_empty() {
                break;
            }
        }
        assert_eq!(seen, (0..10_000).collect::<Vec<_>>());
    }
}
