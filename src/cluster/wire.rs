//! What travels through Redis: channel and key names, and the envelope
//! around each message published for other nodes.
//!
//! Pure: names and bytes in, names and bytes out. The envelope is one header
//! line, `wshub1 <node_id> <epoch> <seq>`, then the message's JSON exactly
//! as clients receive it. A membership change (REST `join` / `leave`, sent
//! on the user's channel) has a fifth word, `join` or `leave`, and the room
//! name as its body. `epoch` tells two runs of one `node_id` apart;
//! `seq` grows by one per message a run publishes, so a receiver can drop
//! anything it has already seen from that run (nothing is delivered twice,
//! whatever a connection does).

use std::io::Write as _;

use crate::audience::Audience;
use crate::message;

/// First word of every envelope: a message that lacks it is not ours.
const MAGIC: &str = "wshub1";

/// Channel and key names for one `channel_prefix`.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The channel a message for `audience` is published on (the sender a
    /// relayed message leaves out is on this node, so it does not matter).
    pub fn channel(&self, audience: Audience<&str>) -> String {
        self.channel_parts(audience).concat()
    }

    /// `channel`, in pieces to write wherever it is needed.
    fn channel_parts<'a>(&'a self, audience: Audience<&'a str>) -> [&'a str; 4] {
        let (kind, name) = match audience {
            Audience::Everyone { .. } => ("all", ""),
            Audience::User(user) => ("user:", user),
            Audience::Room { room, .. } => ("room:", room),
        };
        [&self.prefix, ":", kind, name]
    }

    /// Who a message on `channel` is for; `None` for a channel not ours.
    pub fn target(&self, channel: &str) -> Option<Audience<String>> {
        let rest = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(':')?;
        if rest == "all" {
            return Some(Audience::EVERYONE);
        }
        if let Some(user) = rest.strip_prefix("user:").filter(|u| !u.is_empty()) {
            return Some(Audience::User(user.to_owned()));
        }
        rest.strip_prefix("room:")
            .filter(|r| !r.is_empty())
            .map(|room| Audience::room(room.to_owned()))
    }

    /// The key holding one node's presence (expires after `presence_ttl`).
    pub fn node_key(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}", self.prefix)
    }

    /// The set of node ids that may have a presence key.
    pub fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

/// Who published a message: one run of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    /// `cluster.node_id`.
    pub node_id: &'a str,
    /// Distinguishes runs of one node id.
    pub epoch: u64,
    /// Position in that run's stream of published messages.
    pub seq: u64,
}

/// One PUBLISH: the channel and the enveloped message, in one allocation.
#[derive(Debug)]
pub struct Publication {
    bytes: Vec<u8>,
    channel_end: usize,
}

impl Publication {
    /// Wraps `json` from `origin` for `audience`.
    pub fn new(names: &Names, audience: Audience<&str>, origin: &Origin<'_>, json: &[u8]) -> Self {
        let channel = names.channel_parts(audience);
        // Three spaces, a newline, and at most 20 digits per number.
        let header = MAGIC.len() + origin.node_id.len() + 2 * 20 + 4;
        let channel_len: usize = channel.iter().map(|part| part.len()).sum();
        let mut bytes = Vec::with_capacity(channel_len + header + json.len());
        for part in channel {
            bytes.extend_from_slice(part.as_bytes());
        }
        let channel_end = bytes.len();
        // Writing into a Vec cannot fail.
        let _ = writeln!(
            bytes,
            "{MAGIC} {} {} {}",
            origin.node_id, origin.epoch, origin.seq
        );
        bytes.extend_from_slice(json);
        Publication { bytes, channel_end }
    }

    /// Asks the nodes holding sessions of `user` to add them to `room`
    /// (`join`) or remove them from it.
    pub fn membership(
        names: &Names,
        user: &str,
        room: &str,
        join: bool,
        origin: &Origin<'_>,
    ) -> Self {
        let mut bytes = Vec::new();
        for part in names.channel_parts(Audience::User(user)) {
            bytes.extend_from_slice(part.as_bytes());
        }
        let channel_end = bytes.len();
        let verb = if join { JOIN } else { LEAVE };
        // Writing into a Vec cannot fail.
        let _ = writeln!(
            bytes,
            "{MAGIC} {} {} {} {verb}",
            origin.node_id, origin.epoch, origin.seq
        );
        bytes.extend_from_slice(room.as_bytes());
        Publication { bytes, channel_end }
    }

    /// The channel it is published on.
    pub fn channel(&self) -> &[u8] {
        &self.bytes[..self.channel_end]
    }

    /// The payload: envelope header and JSON.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.channel_end..]
    }
}

/// The fifth header word of a membership change.
const JOIN: &str = "join";
const LEAVE: &str = "leave";

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// A message for the channel's audience, as clients receive it.
    Message(&'a [u8]),
    /// Add (`join`) the channel's user's sessions to `room`, or remove them.
    Membership {
        /// Join or leave.
        join: bool,
        /// The room.
        room: &'a str,
    },
}

/// Why a payload on one of our channels was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// No `wshub1` header line.
    Header,
    /// The body is not a message clients may receive.
    Body,
}

/// Splits a payload into its origin and body, validating both: only a
/// message of the shape clients receive, or a membership change naming a
/// room, gets through.
pub fn decode(payload: &[u8]) -> Result<(Origin<'_>, Body<'_>), Garbage> {
    let newline = payload
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(Garbage::Header)?;
    let header = std::str::from_utf8(&payload[..newline]).map_err(|_| Garbage::Header)?;
    let mut words = header.split(' ');
    let (Some(MAGIC), Some(node_id), Some(epoch), Some(seq), verb, None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err(Garbage::Header);
    };
    let origin = Origin {
        node_id,
        epoch: epoch.parse().map_err(|_| Garbage::Header)?,
        seq: seq.parse().map_err(|_| Garbage::Header)?,
    };
    let body = &payload[newline + 1..];
    let join = match verb {
        None => {
            message::parse(body).map_err(|_| Garbage::Body)?;
            return Ok((origin, Body::Message(body)));
        }
        Some(JOIN) => true,
        Some(LEAVE) => false,
        Some(_) => return Err(Garbage::Header),
    };
    let room = std::str::from_utf8(body).map_err(|_| Garbage::Body)?;
    if room.is_empty() {
        return Err(Garbage::Body);
    }
    Ok((origin, Body::Membership { join, room }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_trip_and_foreign_ones_are_refused() {
        let names = Names::new("wshub");
        for target in [
            Audience::EVERYONE,
            Audience::User("alice:x".to_owned()),
            Audience::room("r 1".to_owned()),
        ] {
            assert_eq!(
                names.target(&names.channel(target.as_deref())),
                Some(target)
            );
        }
        assert_eq!(names.channel(Audience::User("u")), "wshub:user:u");
        assert_eq!(names.channel(Audience::room("r")), "wshub:room:r");
        assert_eq!(names.channel(Audience::EVERYONE), "wshub:all");
        assert_eq!(names.target("other:all"), None);
        assert_eq!(names.target("wshubx:all"), None);
        assert_eq!(names.target("wshub:user:"), None);
        assert_eq!(names.target("wshub:nodes"), None);
        assert_eq!(names.node_key("n1"), "wshub:node:n1");
    }

    #[test]
    fn envelopes_round_trip() {
        let sent = Origin {
            node_id: "n1",
            epoch: u64::MAX,
            seq: u64::MAX,
        };
        let names = Names::new("wshub");
        let json = br#"{"type":"chat","content":"a\nb"}"#;
        let publication = Publication::new(&names, Audience::room("r"), &sent, json);
        assert_eq!(publication.channel(), b"wshub:room:r");
        // Allocated once, to the size: the longest numbers fill it exactly.
        assert_eq!(publication.bytes.capacity(), publication.bytes.len());
        let (origin, json) = decode(publication.payload()).unwrap();
        assert_eq!(origin, sent);
        assert_eq!(json, Body::Message(br#"{"type":"chat","content":"a\nb"}"#));
    }

    #[test]
    fn membership_changes_round_trip() {
        let sent = Origin {
            node_id: "n1",
            epoch: 7,
            seq: 9,
        };
        let names = Names::new("wshub");
        for join in [true, false] {
            let publication = Publication::membership(&names, "amy", "r 1", join, &sent);
            assert_eq!(publication.channel(), b"wshub:user:amy");
            let (origin, body) = decode(publication.payload()).unwrap();
            assert_eq!(origin, sent);
            assert_eq!(body, Body::Membership { join, room: "r 1" });
        }
    }

    #[test]
    fn each_kind_of_garbage_is_refused() {
        let cases: [(&[u8], Garbage); 10] = [
            (b"wshub1 n1 7 1 kick\nr", Garbage::Header),
            (b"wshub1 n1 7 1 join\n", Garbage::Body),
            (b"wshub1 n1 7 1 join x\nr", Garbage::Header),
            (b"hello", Garbage::Header),
            (b"{\"type\":\"x\"}", Garbage::Header),
            (b"wshub1 n1 7\n{\"type\":\"x\"}", Garbage::Header),
            (b"wshub1 n1 7 x\n{\"type\":\"x\"}", Garbage::Header),
            (b"wshub2 n1 7 1\n{\"type\":\"x\"}", Garbage::Header),
            (b"wshub1 n1 7 1\nnot json", Garbage::Body),
            (b"wshub1 n1 7 1\n{\"content\":1}", Garbage::Body),
        ];
        for (payload, why) in cases {
            assert_eq!(
                decode(payload).map(|_| ()),
                Err(why),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}
