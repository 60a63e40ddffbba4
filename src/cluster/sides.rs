//! Whether this node is part of the cluster: the generation of each Redis
//! connection's working link (`None` while down). Up only when both sides
//! work in the same generation, so a Redis outage that both connections
//! notice is one outage, not one per connection. Pure; `Link` logs the
//! outage and acts on the changes.

use super::event::Side;

/// Each side's working generation.
#[derive(Debug, Default)]
pub(super) struct Sides {
    publisher: Option<u64>,
    subscriber: Option<u64>,
}

impl Sides {
    /// Both connections work, in the same generation.
    pub(super) fn up(&self) -> bool {
        self.publisher.is_some() && self.publisher == self.subscriber
    }

    /// `side` works in `generation`, or (`None`) is down.
    pub(super) fn set(&mut self, side: Side, generation: Option<u64>) {
        match side {
            Side::Publisher => self.publisher = generation,
            Side::Subscriber => self.subscriber = generation,
        }
    }

    /// Both sides down (the node leaves).
    pub(super) fn clear(&mut self) {
        *self = Sides::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_only_with_both_sides_in_one_generation() {
        let mut sides = Sides::default();
        assert!(!sides.up(), "starts down");
        sides.set(Side::Publisher, Some(0));
        assert!(!sides.up(), "the subscriber is not connected yet");
        sides.set(Side::Subscriber, Some(0));
        assert!(sides.up());
        // The subscriber saw Redis fail and reconnected in a new
        // generation; the publisher has not noticed yet.
        sides.set(Side::Subscriber, Some(1));
        assert!(!sides.up(), "one side still on the old connection");
        sides.set(Side::Publisher, Some(1));
        assert!(sides.up());
    }

    #[test]
    fn either_side_down_is_down_and_clear_is_both() {
        let mut sides = Sides::default();
        sides.set(Side::Publisher, Some(3));
        sides.set(Side::Subscriber, Some(3));
        sides.set(Side::Publisher, None);
        assert!(!sides.up());
        sides.set(Side::Publisher, Some(3));
        assert!(sides.up());
        sides.clear();
        assert!(!sides.up());
        sides.set(Side::Publisher, Some(3));
        assert!(!sides.up(), "clear forgot the subscriber's generation too");
    }
}
