//! Presence events (`rooms.presence: true`): `{"type":"joined","from":U,
//! "room":R}` when a user's first session enters R, `left` when the last one
//! leaves it, for the other members of R. One event per user, not per tab:
//! the loop asks the router (this node) and the cluster view (the others)
//! whether the user is still, or already, in R before it sends one.
//!
//! Pure: builds the event once per change; the loop shares the bytes with
//! every recipient.

use crate::message::Outgoing;

/// Which event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A user's first session entered the room.
    Joined,
    /// A user's last session left it.
    Left,
}

impl Event {
    /// The event's `type`.
    pub fn kind(self) -> &'static str {
        match self {
            Event::Joined => "joined",
            Event::Left => "left",
        }
    }

    /// The JSON members receive.
    pub fn json(self, room: &str, user: &str) -> Vec<u8> {
        Outgoing {
            kind: self.kind(),
            to: None,
            from: Some(user),
            room: Some(room),
            content: None,
        }
        .to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_room_and_user() {
        assert_eq!(
            Event::Joined.json("r", "amy"),
            br#"{"type":"joined","from":"amy","room":"r"}"#
        );
        assert_eq!(
            Event::Left.json("r\"", "b"),
            br#"{"type":"left","from":"b","room":"r\""}"#
        );
    }
}
