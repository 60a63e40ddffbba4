//! What the bridge threads tell the loop ([`Event`]), and the port they
//! tell it through ([`ToLoop`]): the server hands in the loop's handle, so
//! the cluster needs nothing above it to reach the loop.

use crate::audience::Audience;
use crate::history::position::Epoch;

use super::history::ReadResult;
use super::view::View;

/// Which connection an [`Event::Link`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Publisher,
    Subscriber,
}

/// What the bridge threads tell the loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message another node published for sessions here.
    Deliver {
        target: Audience<String>,
        json: Vec<u8>,
    },
    /// With history on: a message for sessions here with its position in
    /// its stream (from any node; `own`: from this one, whose sessions
    /// that did not ask to recover already have it).
    Kept {
        target: Audience<String>,
        json: Vec<u8>,
        epoch: Epoch,
        offset: u64,
        own: bool,
        /// Its event-stream `id:` (`history::counter_key`).
        token: Option<String>,
    },
    /// The answer to [`Link::read_history`], in stream order with the
    /// live messages; `bytes` go back to the inbound budget once used.
    HistoryRead {
        id: u64,
        result: ReadResult,
        bytes: usize,
    },
    /// Another node asks to add `user`'s sessions here to `room` (REST
    /// join), or to remove them (`join` false).
    Membership {
        user: String,
        room: String,
        join: bool,
    },
    /// A fresh view of the other nodes.
    View(View),
    /// A connection came up in a generation (the bridge's generation)
    /// or went down (`Err` holds why).
    Link {
        side: Side,
        state: Result<u64, String>,
    },
    /// Every interest change up to this version is applied: Redis sends
    /// this node what is published on those channels from now on.
    Subscribed(u64),
    /// Redis accepted (`ok`) or refused every acknowledged publish up to
    /// this sequence number.
    Published { upto: u64, ok: bool },
}

/// Why the loop did not take an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its command queue is full.
    Full,
    /// It has stopped.
    Gone,
}

/// The loop's command queue as the bridge threads see it.
pub(crate) trait ToLoop: Send + Sync {
    /// For control events (link state, view, confirmations: few and
    /// small): waits while the queue is full instead of failing. Fails
    /// once the loop is gone.
    fn send_from_bridge(&self, event: Event) -> Result<(), Refused>;

    /// For a message from another node: never waits (the subscriber must
    /// keep reading its Redis connection); [`Refused::Full`] drops it.
    fn try_send_from_bridge(&self, event: Event) -> Result<(), Refused>;
}
