//! The event loop's timer wheel: one armed timer per session, fired in deadline order.
//!
//! Holds [`Wheel`] and [`TimerId`]. Pure bookkeeping: it never reads the clock
//! (`now_ms` is passed in), does no I/O and touches nothing outside itself; its
//! only dependency is `slab`.
//!
//! # Time
//!
//! The wheel keeps the event loop's clock: whole milliseconds (`u64`) since the
//! loop started, so time 0 is the loop's start and every deadline, `now_ms`
//! and [`Wheel::next_deadline`] is such a count. Tick boundaries are the
//! multiples of `tick_ms`; one that would pass `u64::MAX` saturates to it, so
//! arithmetic near the end of the clock never overflows and `u64::MAX` itself
//! is the last boundary.
//!
//! # Design
//!
//! A *hashed* wheel. Time is counted in ticks of `tick_ms` from 0; a deadline
//! becomes the first tick boundary at or after it (`ceil`), so a timer never
//! fires early.
//! Timers live as nodes of intrusive doubly-linked lists inside one
//! [`slab::Slab`]; list heads are one `usize` per slot. A timer due at tick `t`
//! sits in slot `t % slots` and keeps `t`, so a timer several revolutions away
//! simply stays in its slot until the walk reaches its own tick. Insert and
//! cancel are O(1) and allocate only when the slab has to grow. A one-level
//! hashed wheel was chosen over a hierarchy because our timeouts are a handful
//! of revolutions long (54 s is ~5 revolutions at 10 ms x 1024 slots, the
//! loop's setting): a far timer is looked at once per revolution, which is
//! cheaper and far simpler than cascading it between levels. A larger `slots` (e.g. 8192, 82 s per
//! revolution) makes nearly every session timer single-round.
//!
//! Deadlines on a tick boundary already passed (at or before the tick of the
//! last `poll`; tick 0, i.e. deadline 0, before any) go to a separate
//! *overdue* list that the next `poll` empties whatever its `now_ms`.
//!
//! # Costs
//!
//! - `insert`, `cancel`: O(1).
//! - `poll`: overdue timers, then the ticks from the last poll to `now_ms`. If
//!   that span is at most one revolution, each of its slots is walked once in
//!   tick order: O(span + nodes in those slots). The span starts at the cached
//!   lower bound of all deadlines, so waking exactly at the next deadline after
//!   a long sleep walks one slot. A longer span sweeps every slot once, then
//!   sorts what is due: O(slots + armed + due log due), never per tick.
//! - `next_deadline`: O(1) while the cached minimum is exact. It goes inexact
//!   when the earliest timer fires or is cancelled; the next call then walks
//!   forward from the old minimum and stops at the first slot holding a timer
//!   of that very tick: usually a few slots, at worst one revolution,
//!   O(slots + armed). The cache sits in a `Cell`, so `Wheel` is not `Sync`;
//!   it belongs to the loop's thread anyway.

use std::cell::Cell;
use std::mem;

use slab::Slab;

/// End of a list.
const NIL: usize = usize::MAX;
/// Upper bound for `slots`, so the heads vector stays a sane size.
const MAX_SLOTS: usize = 1 << 24;

/// A duration in loop-clock milliseconds (saturating: nothing the loop
/// waits for is that long).
pub(crate) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Identifies one armed timer; stale ids (after fire or cancel) are detected,
/// never hit another timer.
///
/// The generation is a per-wheel 64-bit counter, so a slab slot reused by a
/// later timer never carries the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerId {
    index: usize,
    generation: u64,
}

/// One timer: a link in the list of its slot (or of the overdue list).
#[derive(Debug)]
struct Node<T> {
    /// Tick at which it fires: `ceil(deadline_ms / tick_ms)`.
    tick: u64,
    generation: u64,
    prev: usize,
    next: usize,
    value: T,
}

/// Lower bound of the ticks of all timers in the slots (overdue excluded);
/// `exact` when some timer is known to sit at exactly that tick.
#[derive(Debug, Clone, Copy)]
struct Floor {
    tick: u64,
    exact: bool,
}

/// A hashed timing wheel holding values of type `T` until their deadline.
///
/// Driven by the event loop: [`Wheel::next_deadline`] gives the poll timeout,
/// [`Wheel::poll`] hands over what is due.
#[derive(Debug)]
pub struct Wheel<T> {
    tick_ms: u64,
    /// `slots - 1`; `slots` is a power of two.
    mask: u64,
    /// One list head per slot, then the overdue list last.
    heads: Vec<usize>,
    nodes: Slab<Node<T>>,
    /// Tick of the last `poll`: every timer at or before it is overdue.
    cursor: u64,
    /// Timers in the slots, i.e. `nodes.len()` minus the overdue ones.
    in_slots: usize,
    floor: Cell<Floor>,
    next_generation: u64,
    /// Reused by `poll` for batches it must sort, so polling does not allocate.
    scratch: Vec<(u64, T)>,
}

impl<T: Copy> Wheel<T> {
    /// `tick_ms`: granularity in milliseconds (the loop uses 10); `slots`:
    /// number of buckets (power of two, e.g. 512). Time 0 is the loop's start.
    ///
    /// Time 0 counts as already reached: a deadline of 0 is overdue. `slots`
    /// is rounded up to a power of two within 1..=2^24; a zero `tick_ms` is
    /// taken as 1 ms.
    pub fn new(tick_ms: u64, slots: usize) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS).next_power_of_two();
        Wheel {
            tick_ms: tick_ms.max(1),
            mask: slots as u64 - 1,
            heads: vec![NIL; slots + 1],
            nodes: Slab::new(),
            cursor: 0,
            in_slots: 0,
            floor: Cell::new(Floor {
                tick: 0,
                exact: false,
            }),
            next_generation: 0,
            scratch: Vec::new(),
        }
    }

    /// Arms a timer. Deadlines in the past fire at the next `poll`. Never fires
    /// early: a timer fires at the first tick boundary >= deadline.
    ///
    /// "In the past" means on a tick boundary at or before the last `poll`'s
    /// `now_ms` (or at 0); later deadlines wait for their boundary.
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerId {
        let tick = self.deadline_tick(deadline_ms);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let list = self.list_of(tick);
        let next = self.heads[list];
        let index = self.nodes.insert(Node {
            tick,
            generation,
            prev: NIL,
            next,
            value,
        });
        if next != NIL {
            self.nodes[next].prev = index;
        }
        self.heads[list] = index;
        if list != self.overdue_list() {
            self.in_slots += 1;
            let floor = self.floor.get();
            if self.in_slots == 1 || tick <= floor.tick {
                self.floor.set(Floor { tick, exact: true });
            }
        }
        TimerId { index, generation }
    }

    /// Cancels; returns the value if the timer was still armed, None for a stale id.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let node = self.nodes.get(id.index)?;
        if node.generation != id.generation {
            return None;
        }
        let tick = node.tick;
        let list = self.list_of(tick);
        let value = self.remove(id.index, list);
        let floor = self.floor.get();
        if list != self.overdue_list() && tick == floor.tick {
            // Others may share the tick; the next `next_deadline` finds out.
            self.floor.set(Floor { tick, exact: false });
        }
        Some(value)
    }

    /// Moves every timer with deadline <= `now_ms` into `due` (in deadline
    /// order across ticks; within one tick any order), advancing the wheel.
    /// Never reads the clock.
    ///
    /// "Deadline" is the timer's tick boundary: a timer for 15 ms on a 10 ms
    /// tick is due from `now_ms` = 20. A `now_ms` earlier than a previous one
    /// only empties the overdue list.
    pub fn poll(&mut self, now_ms: u64, due: &mut Vec<T>) {
        let now_tick = self.now_tick(now_ms).max(self.cursor);
        let mut batch = mem::take(&mut self.scratch);
        self.drain_list(self.overdue_list(), u64::MAX, |tick, value| {
            batch.push((tick, value))
        });
        let from = self.cursor.saturating_add(1).max(self.floor.get().tick);
        let mut walk = self.in_slots > 0 && from <= now_tick;
        if walk && now_tick - from > self.mask {
            // More than a revolution to cover: one sweep, then sort.
            for slot in 0..self.overdue_list() {
                self.drain_list(slot, now_tick, |tick, value| batch.push((tick, value)));
            }
            walk = false;
        }
        // Overdue ticks precede every slot tick, so the batch goes first.
        batch.sort_unstable_by_key(|&(tick, _)| tick);
        due.extend(batch.iter().map(|&(_, value)| value));
        batch.clear();
        self.scratch = batch;
        if walk {
            self.walk(from, now_tick, due);
        }
        self.cursor = now_tick;
        if self.floor.get().tick <= now_tick {
            self.floor.set(Floor {
                tick: now_tick.saturating_add(1),
                exact: false,
            });
        }
    }

    /// Earliest loop-clock millisecond at which `poll` could return something
    /// (rounded up to the tick), or None if empty. Used as the poll timeout,
    /// so it must never be later than the true earliest deadline, and should
    /// not be much earlier (no busy spinning: if the earliest timer is 50 s
    /// away, the answer is ~50 s away, not the next tick).
    ///
    /// Overdue timers give their own (past) tick boundary, so the loop's
    /// timeout comes out as zero.
    pub fn next_deadline(&self) -> Option<u64> {
        let tick = match self.overdue_min() {
            Some(tick) => tick,
            None if self.in_slots > 0 => self.slots_min(),
            None => return None,
        };
        Some(self.boundary(tick))
    }

    /// Number of armed timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no timer is armed.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Index of the overdue list in `heads`.
    fn overdue_list(&self) -> usize {
        self.heads.len() - 1
    }

    /// The list a timer of `tick` lives in. Relies on `poll` having emptied
    /// every slot timer at or before `cursor`.
    fn list_of(&self, tick: u64) -> usize {
        if tick <= self.cursor {
            self.overdue_list()
        } else {
            // The mask keeps the value below `slots`, which is a usize.
            (tick & self.mask) as usize
        }
    }

    /// First tick whose boundary is at or after `deadline_ms`. The boundary
    /// saturates at `u64::MAX`, so the last tick always qualifies.
    fn deadline_tick(&self, deadline_ms: u64) -> u64 {
        deadline_ms.div_ceil(self.tick_ms)
    }

    /// Last tick whose boundary is at or before `now_ms`.
    fn now_tick(&self, now_ms: u64) -> u64 {
        if now_ms == u64::MAX {
            // The end of the clock is the saturated boundary of the last tick,
            // which `deadline_tick` may have handed out.
            now_ms.div_ceil(self.tick_ms)
        } else {
            now_ms / self.tick_ms
        }
    }

    /// Loop-clock millisecond at which `tick` begins, saturated.
    fn boundary(&self, tick: u64) -> u64 {
        tick.saturating_mul(self.tick_ms)
    }

    /// Unlinks and frees node `index` of list `list`, returning its value.
    fn remove(&mut self, index: usize, list: usize) -> T {
        let node = self.nodes.remove(index);
        if node.prev == NIL {
            self.heads[list] = node.next;
        } else {
            self.nodes[node.prev].next = node.next;
        }
        if node.next != NIL {
            self.nodes[node.next].prev = node.prev;
        }
        if list != self.overdue_list() {
            self.in_slots -= 1;
        }
        node.value
    }

    /// Removes every node of `list` whose tick is at most `upto`, handing
    /// `(tick, value)` to `out`.
    fn drain_list(&mut self, list: usize, upto: u64, mut out: impl FnMut(u64, T)) {
        let mut index = self.heads[list];
        while index != NIL {
            let node = &self.nodes[index];
            let (tick, next) = (node.tick, node.next);
            if tick <= upto {
                out(tick, self.remove(index, list));
            }
            index = next;
        }
    }

    /// Fires the ticks `from..=to` in order; the span is at most one revolution,
    /// so each slot holds only one of those ticks.
    fn walk(&mut self, from: u64, to: u64, due: &mut Vec<T>) {
        for tick in from..=to {
            if self.in_slots == 0 {
                break;
            }
            let slot = (tick & self.mask) as usize;
            self.drain_list(slot, tick, |_, value| due.push(value));
        }
    }

    /// Smallest tick on the overdue list.
    fn overdue_min(&self) -> Option<u64> {
        let mut index = self.heads[self.overdue_list()];
        let mut min = None;
        while index != NIL {
            let node = &self.nodes[index];
            min = Some(min.map_or(node.tick, |m: u64| m.min(node.tick)));
            index = node.next;
        }
        min
    }

    /// Smallest tick in the slots; the wheel must hold at least one slot timer.
    fn slots_min(&self) -> u64 {
        let floor = self.floor.get();
        if floor.exact {
            return floor.tick;
        }
        let tick = self.scan_from(floor.tick);
        self.floor.set(Floor { tick, exact: true });
        tick
    }

    /// Smallest slot tick, given that none is below `from`. Walking forward,
    /// the first slot holding a timer of the tick being looked at holds the
    /// minimum: any earlier slot's timers are a revolution or more later.
    fn scan_from(&self, from: u64) -> u64 {
        let mut lowest = u64::MAX;
        for tick in from..=from.saturating_add(self.mask) {
            let mut index = self.heads[(tick & self.mask) as usize];
            while index != NIL {
                let node = &self.nodes[index];
                if node.tick == tick {
                    return tick;
                }
                lowest = lowest.min(node.tick);
                index = node.next;
            }
        }
        lowest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const TICK_MS: u64 = 10;

    fn polled<T: Copy>(wheel: &mut Wheel<T>, now_ms: u64) -> Vec<T> {
        let mut due = Vec::new();
        wheel.poll(now_ms, &mut due);
        due
    }

    #[test]
    fn fires_in_deadline_order_across_ticks() {
        let mut wheel = Wheel::new(TICK_MS, 512);
        for (deadline, value) in [(30, 'c'), (10, 'a'), (45, 'd'), (20, 'b'), (11, 'x')] {
            wheel.insert(deadline, value);
        }
        let mut due = polled(&mut wheel, 50);
        // 11 ms and 20 ms share the 20 ms tick, where any order is fine.
        due[1..3].sort_unstable();
        assert_eq!(due, ['a', 'b', 'x', 'c', 'd']);
        assert!(wheel.is_empty());
    }

    #[test]
    fn never_fires_before_the_tick_boundary() {
        let mut wheel = Wheel::new(TICK_MS, 512);
        wheel.insert(15, 1);
        assert_eq!(wheel.next_deadline(), Some(20));
        assert!(polled(&mut wheel, 10).is_empty());
        assert!(polled(&mut wheel, 19).is_empty());
        assert_eq!(polled(&mut wheel, 20), [1]);
        wheel.insert(40, 2);
        assert!(polled(&mut wheel, 39).is_empty());
        assert_eq!(polled(&mut wheel, 40), [2]);
    }

    #[test]
    fn past_deadlines_fire_at_the_next_poll() {
        let mut wheel = Wheel::new(TICK_MS, 512);
        assert!(polled(&mut wheel, 100).is_empty());
        wheel.insert(70, 'b');
        wheel.insert(0, 'a');
        wheel.insert(100, 'c');
        assert_eq!(wheel.next_deadline(), Some(0));
        assert_eq!(polled(&mut wheel, 100), ['a', 'b', 'c']);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn cancel_before_fire() {
        let mut wheel = Wheel::new(TICK_MS, 512);
        let id = wheel.insert(30, 7);
        let kept = wheel.insert(30, 8);
        assert_eq!(wheel.cancel(id), Some(7));
        assert_eq!(wheel.cancel(id), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(polled(&mut wheel, 100), [8]);
        assert_eq!(wheel.cancel(kept), None);
    }

    #[test]
    fn cancel_of_an_overdue_timer() {
        let mut wheel = Wheel::new(TICK_MS, 512);
        assert!(polled(&mut wheel, 100).is_empty());
        let late = wheel.insert(50, 1);
        wheel.insert(60, 2);
        assert_eq!(wheel.cancel(late), Some(1));
        assert_eq!(wheel.next_deadline(), Some(60));
        assert_eq!(polled(&mut wheel, 100), [2]);
    }

    #[test]
    fn stale_id_does_not_touch_the_timer_reusing_its_slot() {
        let mut wheel = Wheel::new(TICK_MS, 512);
        let cancelled = wheel.insert(30, 1);
        assert_eq!(wheel.cancel(cancelled), Some(1));
        let second = wheel.insert(30, 2);
        assert_eq!(second.index, cancelled.index);
        assert_ne!(second, cancelled);
        assert_eq!(wheel.cancel(cancelled), None);
        assert_eq!(polled(&mut wheel, 30), [2]);

        let third = wheel.insert(50, 3);
        assert_eq!(third.index, second.index);
        assert_eq!(wheel.cancel(second), None);
        assert_eq!(wheel.len(), 1);
        assert_eq!(polled(&mut wheel, 50), [3]);
    }

    #[test]
    fn wraps_around_for_several_revolutions() {
        // 8 slots of 10 ms: one revolution is 80 ms; all of these share slot 3.
        let mut wheel = Wheel::new(TICK_MS, 8);
        for deadline in [350, 30, 190, 110, 270] {
            wheel.insert(deadline, deadline);
        }
        wheel.insert(120, 120);
        let mut fired = Vec::new();
        for step in 1..=40 {
            let now = step * 10;
            for value in polled(&mut wheel, now) {
                fired.push((value, step * 10));
            }
        }
        let expected = [30, 110, 120, 190, 270, 350].map(|d| (d, d));
        assert_eq!(fired, expected);
    }

    #[test]
    fn long_delay_of_one_hour() {
        let mut wheel = Wheel::new(TICK_MS, 512);
        let hour = 3_600_000;
        wheel.insert(hour, 'h');
        assert_eq!(wheel.next_deadline(), Some(hour));
        for second in 1..3600 {
            let now = second * 1000;
            assert!(polled(&mut wheel, now).is_empty(), "fired at {second} s");
            assert_eq!(wheel.next_deadline(), Some(hour));
        }
        assert!(polled(&mut wheel, hour - 1).is_empty());
        assert_eq!(polled(&mut wheel, hour), ['h']);
        assert!(wheel.is_empty());
    }

    #[test]
    fn poll_long_after_everything_was_due_returns_all_in_order() {
        let mut wheel = Wheel::new(TICK_MS, 64);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut deadlines = Vec::new();
        for _ in 0..2000 {
            let deadline = rng.below(600_000);
            wheel.insert(deadline, deadline);
            deadlines.push(deadline);
        }
        // A year of 10 ms ticks: only finishes if the gap is not walked tick by tick.
        let due = polled(&mut wheel, 365 * 86_400_000);
        assert_eq!(due.len(), 2000);
        let ticks: Vec<u64> = due.iter().map(|d| d.div_ceil(10)).collect();
        assert!(ticks.windows(2).all(|w| w[0] <= w[1]), "out of order");
        let mut got = due.clone();
        got.sort_unstable();
        deadlines.sort_unstable();
        assert_eq!(got, deadlines);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn next_deadline_is_exact_after_inserts_cancels_and_polls() {
        let mut wheel = Wheel::new(TICK_MS, 512);
        assert_eq!(wheel.next_deadline(), None);
        let far = wheel.insert(50_000, 'f');
        assert_eq!(wheel.next_deadline(), Some(50_000));
        let near = wheel.insert(20_000, 'n');
        let odd = wheel.insert(20_005, 'o');
        assert_eq!(wheel.next_deadline(), Some(20_000));
        assert_eq!(wheel.cancel(near), Some('n'));
        assert_eq!(wheel.next_deadline(), Some(20_010));
        assert_eq!(wheel.cancel(odd), Some('o'));
        // Nearly ten revolutions away: found by the fallback of the scan.
        assert_eq!(wheel.next_deadline(), Some(50_000));
        wheel.insert(30_000, 'm');
        wheel.insert(40_000, 'l');
        assert_eq!(polled(&mut wheel, 30_000), ['m']);
        assert_eq!(wheel.next_deadline(), Some(40_000));
        assert_eq!(wheel.cancel(far), Some('f'));
        assert_eq!(wheel.next_deadline(), Some(40_000));
        assert_eq!(polled(&mut wheel, 45_000), ['l']);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn poll_with_an_earlier_now_does_not_rewind() {
        let mut wheel = Wheel::new(TICK_MS, 8);
        assert!(polled(&mut wheel, 500).is_empty());
        wheel.insert(510, 1);
        assert!(polled(&mut wheel, 100).is_empty());
        assert_eq!(wheel.next_deadline(), Some(510));
        assert_eq!(polled(&mut wheel, 510), [1]);
    }

    #[test]
    fn odd_parameters_are_normalised() {
        let wheel = Wheel::<u8>::new(0, 100);
        assert_eq!(
            (wheel.tick_ms, wheel.mask, wheel.heads.len()),
            (1, 127, 129)
        );
        let wheel = Wheel::<u8>::new(TICK_MS, 0);
        assert_eq!((wheel.mask, wheel.heads.len()), (0, 2));
    }

    #[test]
    fn deadlines_at_the_end_of_the_clock_saturate() {
        const MAX: u64 = u64::MAX;
        // u64::MAX ends in 5: the last full 10 ms boundary is MAX - 5, and
        // the one after it saturates to MAX.
        let mut wheel = Wheel::new(TICK_MS, 8);
        wheel.insert(MAX, 'z');
        wheel.insert(MAX - 1, 'x');
        wheel.insert(MAX - 5, 'y');
        wheel.insert(MAX - 6, 'w');
        assert_eq!(wheel.next_deadline(), Some(MAX - 5));
        assert!(polled(&mut wheel, MAX - 6).is_empty());
        let mut first = polled(&mut wheel, MAX - 5);
        first.sort_unstable();
        assert_eq!(first, ['w', 'y']);
        assert_eq!(wheel.next_deadline(), Some(MAX));
        assert!(polled(&mut wheel, MAX - 1).is_empty());
        let mut last = polled(&mut wheel, MAX);
        last.sort_unstable();
        assert_eq!(last, ['x', 'z']);
        // The clock has ended: anything armed now is overdue, and stays so.
        wheel.insert(MAX, 'o');
        assert_eq!(wheel.next_deadline(), Some(MAX));
        assert_eq!(polled(&mut wheel, MAX), ['o']);
        assert!(polled(&mut wheel, MAX).is_empty());
        assert_eq!(wheel.next_deadline(), None);

        // A 1 ms tick, whose last tick is u64::MAX itself.
        let mut wheel = Wheel::new(1, 8);
        wheel.insert(MAX, 1);
        wheel.insert(MAX - 1, 0);
        assert_eq!(wheel.next_deadline(), Some(MAX - 1));
        assert_eq!(polled(&mut wheel, MAX), [0, 1]);
        assert!(wheel.is_empty());

        // A tick as long as the clock: every deadline above 0 is its end.
        let mut wheel = Wheel::new(MAX, 8);
        wheel.insert(1, 'a');
        assert_eq!(wheel.next_deadline(), Some(MAX));
        assert!(polled(&mut wheel, MAX - 1).is_empty());
        assert_eq!(polled(&mut wheel, MAX), ['a']);
    }

    /// Deterministic xorshift64, so the model check replays identically.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// The reference: timers keyed by their tick boundary in milliseconds.
    #[derive(Default)]
    struct Model {
        by_due: BTreeSet<(u64, u64)>,
        by_value: BTreeMap<u64, u64>,
    }

    impl Model {
        fn cancel(&mut self, value: u64) -> Option<u64> {
            let due = self.by_value.remove(&value)?;
            self.by_due.remove(&(due, value));
            Some(value)
        }

        /// Removes what is due at `now`, returning (due, value) sorted.
        fn poll(&mut self, now: u64) -> Vec<(u64, u64)> {
            let later = self.by_due.split_off(&(now + 1, 0));
            let due: Vec<(u64, u64)> = mem::replace(&mut self.by_due, later).into_iter().collect();
            for (_, value) in &due {
                self.by_value.remove(value);
            }
            due
        }
    }

    fn model_check(tick_ms: u64, slots: usize, seed: u64) {
        let mut wheel = Wheel::new(tick_ms, slots);
        let mut model = Model::default();
        let mut rng = XorShift(seed);
        let mut ids: Vec<(TimerId, u64)> = Vec::new();
        let (mut now, mut inserted, mut due) = (0u64, 0u64, Vec::new());
        while inserted < 100_000 {
            match rng.below(16) {
                0..=9 => {
                    let deadline = random_deadline(&mut rng, now);
                    let boundary = deadline.div_ceil(tick_ms) * tick_ms;
                    ids.push((wheel.insert(deadline, inserted), inserted));
                    model.by_due.insert((boundary, inserted));
                    model.by_value.insert(inserted, boundary);
                    inserted += 1;
                }
                10..=11 if !ids.is_empty() => {
                    let (id, value) = ids.swap_remove(rng.below(ids.len() as u64) as usize);
                    assert_eq!(wheel.cancel(id), model.cancel(value));
                    assert_eq!(wheel.cancel(id), None);
                }
                roll => {
                    now += random_step(&mut rng, roll == 15);
                    due.clear();
                    wheel.poll(now, &mut due);
                    check_due(&due, &model.poll(now));
                }
            }
            assert_eq!(wheel.len(), model.by_value.len());
            let expected = model.by_due.first().map(|&(due, _)| due);
            assert_eq!(wheel.next_deadline(), expected, "after {inserted} inserts");
        }
        now += 86_400_000;
        due.clear();
        wheel.poll(now, &mut due);
        check_due(&due, &model.poll(now));
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    /// Milliseconds: mostly within 2 s, some in the past, some up to an hour away.
    fn random_deadline(rng: &mut XorShift, now: u64) -> u64 {
        match rng.below(20) {
            0..=1 => now.saturating_sub(rng.below(1_000)),
            2..=16 => now + rng.below(2_000),
            17..=18 => now + rng.below(60_000),
            _ => now + rng.below(3_600_000),
        }
    }

    /// Milliseconds: usually up to three 10 ms ticks, now and then a long gap.
    fn random_step(rng: &mut XorShift, big: bool) -> u64 {
        match (big, rng.below(8)) {
            (true, 0) => rng.below(7_200_000),
            (true, _) => rng.below(20_000),
            (false, 0) => 0,
            (false, _) => rng.below(30),
        }
    }

    /// `got` must hold exactly the model's values, in nondecreasing due order.
    fn check_due(got: &[u64], expected: &[(u64, u64)]) {
        let due_of: BTreeMap<u64, u64> = expected.iter().map(|&(d, v)| (v, d)).collect();
        assert_eq!(got.len(), expected.len());
        let order: Vec<u64> = got.iter().map(|v| due_of[v]).collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "out of order");
        let mut got = got.to_vec();
        got.sort_unstable();
        let mut values: Vec<u64> = expected.iter().map(|&(_, v)| v).collect();
        values.sort_unstable();
        assert_eq!(got, values);
    }

    #[test]
    fn model_check_100k_small_wheel() {
        model_check(10, 64, 0x2545_f491_4f6c_dd1d);
    }

    #[test]
    fn model_check_100k_loop_sized_wheel() {
        model_check(10, 512, 0xdead_beef_cafe_f00d);
    }

    #[test]
    fn model_check_100k_odd_tick() {
        // A tick that divides none of the round step and deadline bounds.
        model_check(7, 128, 0x0123_4567_89ab_cdef);
    }
}
