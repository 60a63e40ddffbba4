//! Work that waits for the cluster (docs/protocol.md section 10a): a 101 until
//! the user's channel is subscribed, a session's next message until its
//! room's channel is, a REST answer until Redis accepted the publish.
//!
//! Pure bookkeeping, no I/O: the loop holds the session's input, parks
//! what it owes here with a [`Ticket`] and a deadline, and takes it back
//! when the subscriber or publisher confirms the ticket, when the deadline
//! passes, or when the cluster goes down. Tickets of one kind are
//! confirmed in order, so "confirmed up to N" releases every ticket <= N.

use std::collections::VecDeque;

use crate::audience::SessionKey;

/// What a waiter waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// The subscriber applied the interest up to this version.
    Subscribed(u64),
    /// The publisher had Redis accept every publish up to this sequence.
    Published(u64),
}

/// One parked piece of work.
#[derive(Debug)]
pub(crate) struct Waiter<T> {
    pub ticket: Ticket,
    /// Loop-clock ms after which it gives up.
    pub deadline_ms: u64,
    pub key: SessionKey,
    /// The channels this waiter keeps subscribed while it waits.
    pub pins: Vec<String>,
    pub what: T,
}

/// How a waiter ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Its ticket was confirmed.
    Confirmed,
    /// Refused: the publish failed, the deadline passed or the cluster
    /// went down first.
    Failed,
}

/// The waiters, in the order they were parked (so by deadline: every
/// waiter of one kind waits as long).
#[derive(Debug)]
pub(crate) struct Gate<T> {
    waiting: VecDeque<Waiter<T>>,
    subscribed: u64,
    published: u64,
}

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Gate {
            waiting: VecDeque::new(),
            subscribed: 0,
            published: 0,
        }
    }
}

impl<T> Gate<T> {
    /// Waiting: nothing to look at when empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// How many wait.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// The earliest deadline, for the loop's poll timeout.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.waiting.iter().map(|w| w.deadline_ms).min()
    }

    /// True when `ticket` is already confirmed: no need to wait.
    pub(crate) fn confirmed(&self, ticket: Ticket) -> bool {
        match ticket {
            Ticket::Subscribed(v) => v <= self.subscribed,
            Ticket::Published(s) => s <= self.published,
        }
    }

    /// Parks a waiter.
    pub(crate) fn park(&mut self, waiter: Waiter<T>) {
        self.waiting.push_back(waiter);
    }

    /// Records a confirmation and takes out every waiter it releases.
    pub(crate) fn confirm(&mut self, upto: Ticket, out: &mut Vec<(Waiter<T>, Outcome)>) {
        match upto {
            Ticket::Subscribed(v) => self.subscribed = self.subscribed.max(v),
            Ticket::Published(s) => self.published = self.published.max(s),
        }
        self.take_where(out, Outcome::Confirmed, |w, gate| gate.confirmed(w.ticket));
    }

    /// Publishes up to `upto` failed: their waiters are refused.
    pub(crate) fn fail_published(&mut self, upto: u64, out: &mut Vec<(Waiter<T>, Outcome)>) {
        self.take_where(
            out,
            Outcome::Failed,
            |w, _| matches!(w.ticket, Ticket::Published(s) if s <= upto),
        );
    }

    /// Takes out every waiter whose deadline passed.
    pub(crate) fn expire(&mut self, now_ms: u64, out: &mut Vec<(Waiter<T>, Outcome)>) {
        self.take_where(out, Outcome::Failed, |w, _| w.deadline_ms <= now_ms);
    }

    /// The cluster went down: nothing waiting will be confirmed.
    pub(crate) fn fail_all(&mut self, out: &mut Vec<(Waiter<T>, Outcome)>) {
        out.extend(self.waiting.drain(..).map(|w| (w, Outcome::Failed)));
    }

    fn take_where(
        &mut self,
        out: &mut Vec<(Waiter<T>, Outcome)>,
        outcome: Outcome,
        done: impl Fn(&Waiter<T>, &Self) -> bool,
    ) {
        if self.waiting.iter().all(|w| !done(w, self)) {
            return;
        }
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        for waiter in std::mem::take(&mut self.waiting) {
            if done(&waiter, self) {
                out.push((waiter, outcome));
            } else {
                keep.push_back(waiter);
            }
        }
        self.waiting = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(ticket: Ticket, deadline_ms: u64, what: u32) -> Waiter<u32> {
        Waiter {
            ticket,
            deadline_ms,
            key: SessionKey {
                index: what,
                generation: 1,
            },
            pins: Vec::new(),
            what,
        }
    }

    fn whats(out: &mut Vec<(Waiter<u32>, Outcome)>) -> Vec<(u32, Outcome)> {
        out.drain(..).map(|(w, o)| (w.what, o)).collect()
    }

    #[test]
    fn a_confirmation_releases_every_ticket_up_to_it_and_no_other() {
        let mut gate = Gate::default();
        let mut out = Vec::new();
        gate.park(waiter(Ticket::Subscribed(3), 100, 1));
        gate.park(waiter(Ticket::Subscribed(1), 100, 2));
        gate.park(waiter(Ticket::Published(1), 100, 3));
        gate.park(waiter(Ticket::Subscribed(5), 100, 4));
        gate.confirm(Ticket::Subscribed(3), &mut out);
        assert_eq!(
            whats(&mut out),
            [(1, Outcome::Confirmed), (2, Outcome::Confirmed)]
        );
        assert!(gate.confirmed(Ticket::Subscribed(2)));
        assert!(!gate.confirmed(Ticket::Subscribed(4)));
        // An older confirmation arriving late changes nothing.
        gate.confirm(Ticket::Subscribed(2), &mut out);
        assert!(out.is_empty());
        gate.confirm(Ticket::Published(1), &mut out);
        assert_eq!(whats(&mut out), [(3, Outcome::Confirmed)]);
        assert_eq!(gate.len(), 1);
    }

    #[test]
    fn deadlines_failures_and_outages_refuse_what_waits() {
        let mut gate = Gate::default();
        let mut out = Vec::new();
        gate.park(waiter(Ticket::Published(1), 100, 1));
        gate.park(waiter(Ticket::Published(2), 200, 2));
        gate.park(waiter(Ticket::Subscribed(1), 150, 3));
        gate.park(waiter(Ticket::Published(3), 300, 4));
        assert_eq!(gate.next_deadline(), Some(100));
        gate.expire(99, &mut out);
        assert!(out.is_empty());
        gate.expire(150, &mut out);
        assert_eq!(
            whats(&mut out),
            [(1, Outcome::Failed), (3, Outcome::Failed)]
        );
        gate.fail_published(2, &mut out);
        assert_eq!(whats(&mut out), [(2, Outcome::Failed)]);
        // A failure is not a confirmation.
        assert!(!gate.confirmed(Ticket::Published(2)));
        gate.fail_all(&mut out);
        assert_eq!(whats(&mut out), [(4, Outcome::Failed)]);
        assert!(gate.is_empty() && gate.next_deadline().is_none());
    }
}
