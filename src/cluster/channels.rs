//! Which user and room channels this node receives: the loop's book of
//! names wanted (with the interest version that asked for each), the pins
//! waiters hold, the names to look at again, and the [`Interest`] set the
//! subscriber thread applies. Pure bookkeeping (no Redis, no lock, no
//! clock), so its rules are tested here; `Link` applies them.

use std::collections::{HashMap, HashSet};

/// Whose channel a subscription is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    User,
    Room,
}

/// Which channels this node needs. The loop writes, the subscriber applies.
#[derive(Debug, Default)]
pub(super) struct Interest {
    pub(super) wanted: HashSet<String>,
    pub(super) changed: HashSet<String>,
    /// Bumped by every change: the subscriber confirms versions.
    pub(super) version: u64,
}

impl Interest {
    /// Wants `channel` (or lets it go); returns the version the subscriber
    /// confirms once the change is applied.
    pub(super) fn change(&mut self, channel: String, wanted: bool) -> u64 {
        if wanted {
            self.wanted.insert(channel.clone());
        } else {
            self.wanted.remove(&channel);
        }
        self.changed.insert(channel);
        self.version += 1;
        self.version
    }
}

/// The loop's side: which names it subscribed for, and when to let go.
#[derive(Debug, Default)]
pub(super) struct Channels {
    /// User and room names wanted, with the interest version that asked
    /// for them (confirmed once the subscriber reports it).
    users: HashMap<String, u64>,
    rooms: HashMap<String, u64>,
    /// Channels kept while a waiter for them is parked.
    pins: HashMap<String, usize>,
    /// Names whose channel may no longer be needed (a last session or
    /// member left, a pin dropped): looked at, and only they, at the next
    /// release. Never more than the names this node held.
    leaving: HashSet<(Kind, String)>,
}

impl Channels {
    fn versions(&mut self, kind: Kind) -> &mut HashMap<String, u64> {
        match kind {
            Kind::User => &mut self.users,
            Kind::Room => &mut self.rooms,
        }
    }

    /// The interest version that asked for `name`'s channel, while wanted.
    pub(super) fn version(&self, kind: Kind, name: &str) -> Option<u64> {
        match kind {
            Kind::User => self.users.get(name),
            Kind::Room => self.rooms.get(name),
        }
        .copied()
    }

    /// `name`'s channel was asked for at interest `version`.
    pub(super) fn wanted(&mut self, kind: Kind, name: &str, version: u64) {
        self.versions(kind).insert(name.to_owned(), version);
    }

    /// A parked waiter keeps `channels` until it settles.
    pub(super) fn pin(&mut self, channels: &[String]) {
        for channel in channels {
            *self.pins.entry(channel.clone()).or_default() += 1;
        }
    }

    /// A waiter that pinned `channel` settled; true when that was its last
    /// pin (the caller then looks at its name again).
    pub(super) fn unpin(&mut self, channel: &str) -> bool {
        let Some(count) = self.pins.get_mut(channel) else {
            return false;
        };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        self.pins.remove(channel);
        true
    }

    /// Looks at `name` at the next release.
    pub(super) fn look_at(&mut self, kind: Kind, name: String) {
        self.leaving.insert((kind, name));
    }

    /// A session or member of `name` is leaving: looked at at the next
    /// release if its channel is wanted (else there is nothing to let go).
    pub(super) fn may_leave(&mut self, kind: Kind, name: &str) {
        if self.version(kind, name).is_some() {
            self.leaving.insert((kind, name.to_owned()));
        }
    }

    /// Whether a release has anything to look at.
    pub(super) fn has_leaving(&self) -> bool {
        !self.leaving.is_empty()
    }

    /// Lets go of the names looked at that no local session needs
    /// (`needed`) and no waiter pins (a pinned one is looked at again when
    /// its pin drops); returns their channels (named by `channel`), to be
    /// unsubscribed. O(names looked at), never a walk of every channel.
    pub(super) fn release(
        &mut self,
        needed: impl Fn(Kind, &str) -> bool,
        channel: impl Fn(Kind, &str) -> String,
    ) -> Vec<String> {
        let mut released = Vec::new();
        for (kind, name) in std::mem::take(&mut self.leaving) {
            if needed(kind, &name) || self.version(kind, &name).is_none() {
                continue;
            }
            let channel = channel(kind, &name);
            if self.pins.contains_key(&channel) {
                continue;
            }
            self.versions(kind).remove(&name);
            released.push(channel);
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(kind: Kind, name: &str) -> String {
        match kind {
            Kind::User => format!("u:{name}"),
            Kind::Room => format!("r:{name}"),
        }
    }

    fn release(channels: &mut Channels, needed: &[&str]) -> Vec<String> {
        let mut released = channels.release(|_, name| needed.contains(&name), channel);
        released.sort();
        released
    }

    #[test]
    fn every_interest_change_is_a_new_version() {
        let mut interest = Interest::default();
        assert_eq!(interest.change("a".to_owned(), true), 1);
        assert_eq!(interest.change("b".to_owned(), true), 2);
        assert_eq!(interest.change("a".to_owned(), false), 3);
        assert_eq!(interest.wanted, HashSet::from(["b".to_owned()]));
        assert_eq!(
            interest.changed,
            HashSet::from(["a".to_owned(), "b".to_owned()]),
            "the subscriber applies each changed channel once"
        );
    }

    #[test]
    fn a_name_keeps_the_version_that_asked_for_it() {
        let mut channels = Channels::default();
        assert_eq!(channels.version(Kind::User, "amy"), None);
        channels.wanted(Kind::User, "amy", 3);
        assert_eq!(channels.version(Kind::User, "amy"), Some(3));
        assert_eq!(
            channels.version(Kind::Room, "amy"),
            None,
            "a user and a room of the same name are different channels"
        );
    }

    #[test]
    fn only_names_no_session_needs_are_let_go() {
        let mut channels = Channels::default();
        channels.wanted(Kind::User, "amy", 1);
        channels.wanted(Kind::User, "bob", 2);
        channels.wanted(Kind::Room, "lobby", 3);
        channels.may_leave(Kind::User, "amy");
        channels.may_leave(Kind::User, "bob");
        channels.may_leave(Kind::Room, "lobby");
        assert_eq!(release(&mut channels, &["bob"]), ["r:lobby", "u:amy"]);
        assert_eq!(channels.version(Kind::User, "amy"), None);
        assert_eq!(channels.version(Kind::User, "bob"), Some(2));
        assert!(!channels.has_leaving(), "each name is looked at once");
        assert!(release(&mut channels, &[]).is_empty());
    }

    #[test]
    fn a_name_not_wanted_is_not_looked_at() {
        let mut channels = Channels::default();
        channels.may_leave(Kind::User, "zed");
        assert!(!channels.has_leaving());
        // Looked at on purpose (a room's last member left), it releases
        // nothing it never held.
        channels.look_at(Kind::Room, "r".to_owned());
        assert!(channels.has_leaving());
        assert!(release(&mut channels, &[]).is_empty());
    }

    #[test]
    fn a_pinned_channel_stays_until_its_last_pin_drops() {
        let mut channels = Channels::default();
        channels.wanted(Kind::Room, "r", 1);
        channels.pin(&["r:r".to_owned()]);
        channels.pin(&["r:r".to_owned()]);
        channels.may_leave(Kind::Room, "r");
        assert!(release(&mut channels, &[]).is_empty(), "pinned twice");
        assert_eq!(channels.version(Kind::Room, "r"), Some(1));
        assert!(!channels.unpin("r:r"), "one pin left");
        assert!(channels.unpin("r:r"), "the last pin");
        assert!(!channels.unpin("r:r"), "no pin left to drop");
        channels.look_at(Kind::Room, "r".to_owned());
        assert_eq!(release(&mut channels, &[]), ["r:r"]);
    }
}
