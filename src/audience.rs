//! Who a message is for, named once for every path: a client message routed
//! by the [`crate::router`], a REST push, a [`crate::Handle`] push, a hook's
//! action and a cluster relay all say it with [`Audience`], owned
//! (`Audience<String>`, crossing threads) or borrowed (`Audience<&str>`,
//! inside one loop pass). Also [`SessionKey`], the name of one session.
//! Pure data: touches nothing.

/// A session's slab index plus the generation it was created with, so a key
/// kept across events never reaches a later session reusing the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// Slot in the session slab.
    pub index: u32,
    /// Distinguishes successive sessions in one slot.
    pub generation: u32,
}

/// The set of sessions a message goes to. `S` is how a user id or room
/// name is held: `String` when the audience travels (handle commands,
/// cluster events), `&str` while the loop resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<S> {
    /// Every chat session, optionally except the sender.
    Everyone {
        /// Left out (the sender of a relayed broadcast).
        except: Option<SessionKey>,
    },
    /// Every session of one user.
    User(S),
    /// Every member of a room, optionally except the sender.
    Room {
        /// Room name.
        room: S,
        /// Left out (the sender).
        except: Option<SessionKey>,
    },
}

impl<S> Audience<S> {
    /// Everyone, leaving no one out (pushes from outside the loop).
    pub const EVERYONE: Self = Audience::Everyone { except: None };

    /// Every member of `room`, leaving no one out.
    pub fn room(room: S) -> Self {
        Audience::Room { room, except: None }
    }
}

impl<S: AsRef<str>> Audience<S> {
    /// The same audience, borrowing its names.
    pub fn as_deref(&self) -> Audience<&str> {
        match self {
            Audience::Everyone { except } => Audience::Everyone { except: *except },
            Audience::User(user) => Audience::User(user.as_ref()),
            Audience::Room { room, except } => Audience::Room {
                room: room.as_ref(),
                except: *except,
            },
        }
    }
}
