//! What travels through Redis: channel and key names, and the envelope
//! around each message published for other nodes.
//!
//! Pure: names and bytes in, names and bytes out. The envelope is one header
//! line, `wshub1 <node_id> <epoch> <seq>[ <verb>][ <mac>]`, then the body:
//! the message's JSON as clients receive it, or, for a membership change
//! (REST `join` / `leave`, sent on the user's channel), `<verb>` is `join`
//! or `leave` and the body is the room's name. `epoch` tells two runs of one
//! `node_id` apart;
//! `seq` grows by one per message a run publishes, so a receiver can drop
//! a message it has already seen from that run. With `cluster.secret` set,
//! `mac` is the HMAC-SHA256 (base64url) of the channel, the header before
//! it and the JSON, so an envelope cannot be forged or moved to another
//! channel; receivers then drop unsigned ones.
//!
//! Whatever arrives is rebuilt, never relayed as is: [`decode`] keeps only
//! the five keys clients receive and holds the result to the node's
//! `max_message_size` and `max_json_depth`.

use std::io::Write as _;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::audience::Audience;
use crate::ids;
use crate::message::{self, Outgoing};

type HmacSha256 = Hmac<Sha256>;

/// Length of a MAC in the header: 32 bytes in unpadded base64url.
const MAC_LEN: usize = 43;

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

    /// The prefix every channel and key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
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

    /// The stream of one node's presence changes since its entry was last
    /// written whole (see `changes`; expires with the entry).
    pub fn log_key(&self, node_id: &str) -> String {
        format!("{}:plog:{node_id}", self.prefix)
    }

    /// The key a live node holds so no second node runs with its id.
    pub fn lock_key(&self, node_id: &str) -> String {
        format!("{}:lock:{node_id}", self.prefix)
    }

    /// The set of node ids that may have a presence key.
    pub fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The channel on which a node's publisher wakes its own subscriber
    /// when the loop wants channels changed (an empty message).
    pub fn nudge_channel(&self, node_id: &str) -> String {
        format!("{}:nudge:{node_id}", self.prefix)
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

/// The shared secret of `cluster.secret`, ready to sign and check.
#[derive(Clone)]
pub struct Key(HmacSha256);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// The key for `secret` (any length).
    pub fn new(secret: &[u8]) -> Key {
        // HMAC takes keys of any length: the error case cannot happen.
        Key(HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable_key()))
    }

    fn mac(&self, channel: &[u8], header: &[u8], json: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(channel);
        mac.update(b"\n");
        mac.update(header);
        mac.update(b"\n");
        mac.update(json);
        mac
    }

    /// The MAC (base64url) of a presence entry stored under `key_name`
    /// (which names the node, so an entry cannot be copied to another
    /// node's key) with `header` (its line before the MAC).
    pub fn presence_mac(&self, key_name: &str, header: &[u8], json: &[u8]) -> String {
        let mac = self.mac(key_name.as_bytes(), header, json);
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Whether `mac` (base64url) is [`Key::presence_mac`] of the rest
    /// (compared in constant time).
    pub fn presence_mac_ok(&self, key_name: &str, header: &[u8], json: &[u8], mac: &[u8]) -> bool {
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        self.mac(key_name.as_bytes(), header, json)
            .verify_slice(&mac)
            .is_ok()
    }
}

#[cold]
fn unreachable_key() -> HmacSha256 {
    // `new_from_slice` never fails for HMAC; an empty key is still a key.
    <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default())
}

/// One PUBLISH: the channel and the enveloped message, in one allocation.
#[derive(Debug)]
pub struct Publication {
    bytes: Vec<u8>,
    channel_end: usize,
    /// Where the MAC goes in `bytes` (after the header's seq and a space),
    /// when it is to be signed; filled by [`Publication::sign`].
    mac_at: Option<usize>,
}

impl Publication {
    /// Wraps `json` from `origin` for `audience`; `signed` leaves room for
    /// a MAC that [`Publication::sign`] fills in (on the publisher thread,
    /// not the loop's).
    pub fn new(
        names: &Names,
        audience: Audience<&str>,
        origin: &Origin<'_>,
        json: &[u8],
        signed: bool,
    ) -> Self {
        Self::envelope(names, audience, origin, None, json, signed)
    }

    /// Asks the nodes holding sessions of `user` to add them to `room`
    /// (`join`) or remove them from it.
    pub fn membership(
        names: &Names,
        user: &str,
        room: &str,
        join: bool,
        origin: &Origin<'_>,
        signed: bool,
    ) -> Self {
        let verb = if join { JOIN } else { LEAVE };
        let audience = Audience::User(user);
        Self::envelope(names, audience, origin, Some(verb), room.as_bytes(), signed)
    }

    fn envelope(
        names: &Names,
        audience: Audience<&str>,
        origin: &Origin<'_>,
        verb: Option<&str>,
        body: &[u8],
        signed: bool,
    ) -> Self {
        let channel = names.channel_parts(audience);
        // Three spaces, a newline, at most 20 digits per number, the verb
        // and the MAC with a space before each.
        let verb_len = verb.map_or(0, |v| 1 + v.len());
        let header = MAGIC.len() + origin.node_id.len() + 2 * 20 + 4 + verb_len + 1 + MAC_LEN;
        let channel_len: usize = channel.iter().map(|part| part.len()).sum();
        let mut bytes = Vec::with_capacity(channel_len + header + body.len());
        for part in channel {
            bytes.extend_from_slice(part.as_bytes());
        }
        let channel_end = bytes.len();
        // Writing into a Vec cannot fail.
        let _ = write!(
            bytes,
            "{MAGIC} {} {} {}",
            origin.node_id, origin.epoch, origin.seq
        );
        if let Some(verb) = verb {
            bytes.push(b' ');
            bytes.extend_from_slice(verb.as_bytes());
        }
        let mac_at = signed.then(|| {
            bytes.push(b' ');
            let at = bytes.len();
            bytes.extend_from_slice(&[b'-'; MAC_LEN]);
            at
        });
        bytes.push(b'\n');
        bytes.extend_from_slice(body);
        Publication {
            bytes,
            channel_end,
            mac_at,
        }
    }

    /// Fills in the MAC (a no-op unless made `signed`).
    pub fn sign(&mut self, key: &Key) {
        let Some(at) = self.mac_at else {
            return;
        };
        let header_end = at - 1;
        let json_start = at + MAC_LEN + 1;
        let (head, json) = self.bytes.split_at_mut(json_start);
        let mac = key
            .mac(
                &head[..self.channel_end],
                &head[self.channel_end..header_end],
                json,
            )
            .finalize()
            .into_bytes();
        // 32 bytes are exactly MAC_LEN characters of unpadded base64.
        let _ = URL_SAFE_NO_PAD.encode_slice(mac, &mut head[at..at + MAC_LEN]);
    }

    /// The channel it is published on.
    pub fn channel(&self) -> &[u8] {
        &self.bytes[..self.channel_end]
    }

    /// The payload: envelope header and JSON.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.channel_end..]
    }

    /// Bytes held, for the publish queue's byte bound.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// The fifth header word of a membership change.
const JOIN: &str = "join";
const LEAVE: &str = "leave";

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    /// A message for the channel's audience, rebuilt as clients receive it.
    Message(Vec<u8>),
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
    /// Larger than `max_message_size` (or nested deeper than allowed).
    TooLarge,
    /// No MAC, or a wrong one, while `cluster.secret` is set.
    Unsigned,
}

/// What a receiving node holds messages from Redis to.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `websocket.max_message_size`: of the rebuilt JSON.
    pub max_message_size: usize,
    /// `websocket.max_json_depth`.
    pub max_json_depth: usize,
    /// `websocket.max_id_bytes`: of a membership change's room.
    pub max_id_bytes: usize,
    /// `cluster.secret`: envelopes must carry its MAC.
    pub key: Option<Key>,
}

/// Splits a payload on `channel` into its origin and body, checked (MAC
/// when a key is set, shape, size): a message is rebuilt from the five keys
/// clients receive; a membership change must name a valid room.
pub fn decode<'a>(
    channel: &str,
    payload: &'a [u8],
    rules: &Rules,
) -> Result<(Origin<'a>, Body<'a>), Garbage> {
    let newline = payload
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(Garbage::Header)?;
    let header = std::str::from_utf8(&payload[..newline]).map_err(|_| Garbage::Header)?;
    let mut words = header.split(' ');
    let (Some(MAGIC), Some(node_id), Some(epoch), Some(seq)) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(Garbage::Header);
    };
    let mut next = words.next();
    // A MAC is 43 characters, so it is never taken for a verb.
    let verb = match next {
        Some(JOIN) => Some(true),
        Some(LEAVE) => Some(false),
        _ => None,
    };
    if verb.is_some() {
        next = words.next();
    }
    let mac = next;
    if mac.is_some_and(|m| m.len() != MAC_LEN) || words.next().is_some() {
        return Err(Garbage::Header);
    }
    let origin = Origin {
        node_id,
        epoch: epoch.parse().map_err(|_| Garbage::Header)?,
        seq: seq.parse().map_err(|_| Garbage::Header)?,
    };
    let body = &payload[newline + 1..];
    if let Some(key) = &rules.key {
        let text = mac.ok_or(Garbage::Unsigned)?;
        let mac = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| Garbage::Unsigned)?;
        // The header before " <mac>" (the MAC is its last word).
        let signed_header = &header.as_bytes()[..header.len() - text.len() - 1];
        key.mac(channel.as_bytes(), signed_header, body)
            .verify_slice(&mac)
            .map_err(|_| Garbage::Unsigned)?;
    }
    if let Some(join) = verb {
        let room = std::str::from_utf8(body).map_err(|_| Garbage::Body)?;
        if room.is_empty() || ids::check(room, rules.max_id_bytes).is_err() {
            return Err(Garbage::Body);
        }
        return Ok((origin, Body::Membership { join, room }));
    }
    if body.len() > rules.max_message_size.saturating_mul(2) {
        // Not worth parsing: even rebuilt it cannot shrink under the bound
        // by half (only whitespace and extra keys go).
        return Err(Garbage::TooLarge);
    }
    let message = message::parse_limited(body, rules.max_json_depth).map_err(|e| match e {
        message::MessageError::TooDeep { .. } => Garbage::TooLarge,
        _ => Garbage::Body,
    })?;
    let rebuilt = Outgoing {
        kind: &message.kind,
        to: message.to(),
        from: message.from(),
        room: message.room(),
        content: message.content,
    }
    .to_json();
    if rebuilt.len() > rules.max_message_size {
        return Err(Garbage::TooLarge);
    }
    Ok((origin, Body::Message(rebuilt)))
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
        assert_eq!(names.log_key("n1"), "wshub:plog:n1");
        assert_eq!(names.target("wshub:plog:n1"), None);
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
        for signed in [false, true] {
            let mut publication =
                Publication::new(&names, Audience::room("r"), &sent, json, signed);
            assert_eq!(publication.channel(), b"wshub:room:r");
            // Allocated once: the longest numbers fill it exactly when signed.
            assert!(publication.bytes.capacity() >= publication.bytes.len());
            let key = Key::new(b"k");
            publication.sign(&key);
            if signed {
                assert_eq!(publication.bytes.capacity(), publication.bytes.len());
            }
            let rules = Rules {
                key: signed.then_some(key),
                ..rules()
            };
            let (origin, body) = decode("wshub:room:r", publication.payload(), &rules).unwrap();
            assert_eq!(origin, sent);
            assert_eq!(
                body,
                Body::Message(br#"{"type":"chat","content":"a\nb"}"#.to_vec())
            );
        }
    }

    fn rules() -> Rules {
        Rules {
            max_message_size: 64,
            max_json_depth: 4,
            max_id_bytes: 8,
            key: None,
        }
    }

    #[test]
    fn what_arrives_is_rebuilt_and_held_to_the_bounds() {
        let rules = rules();
        let decode = |payload: &[u8]| match decode("wshub:all", payload, &rules) {
            Ok((_, Body::Message(json))) => Ok(json),
            Ok((_, body)) => panic!("{body:?}"),
            Err(e) => Err(e),
        };
        // Extra keys and spacing go; the five keys stay, in one order.
        assert_eq!(
            decode(b"wshub1 n 1 1\n{ \"x\":1,\"content\":[1, 2],\"type\":\"t\",\"from\":\"f\"}")
                .unwrap(),
            br#"{"type":"t","from":"f","content":[1, 2]}"#
        );
        let big = format!(
            "wshub1 n 1 1\n{{\"type\":\"t\",\"content\":\"{}\"}}",
            "a".repeat(60)
        );
        assert_eq!(decode(big.as_bytes()), Err(Garbage::TooLarge));
        let huge = format!(
            "wshub1 n 1 1\n{{\"type\":\"t\",\"content\":\"{}\"}}",
            "a".repeat(1000)
        );
        assert_eq!(decode(huge.as_bytes()), Err(Garbage::TooLarge));
        assert_eq!(
            decode(b"wshub1 n 1 1\n{\"type\":\"t\",\"content\":[[[[[1]]]]]}"),
            Err(Garbage::TooLarge)
        );
    }

    #[test]
    fn with_a_secret_unsigned_forged_and_moved_envelopes_are_refused() {
        let names = Names::new("wshub");
        let origin = Origin {
            node_id: "n1",
            epoch: 1,
            seq: 2,
        };
        let json = br#"{"type":"chat"}"#;
        let mut good = Publication::new(&names, Audience::User("u"), &origin, json, true);
        good.sign(&Key::new(b"right"));
        let mut wrong = Publication::new(&names, Audience::User("u"), &origin, json, true);
        wrong.sign(&Key::new(b"wrong"));
        let unsigned = Publication::new(&names, Audience::User("u"), &origin, json, false);
        let rules = Rules {
            key: Some(Key::new(b"right")),
            ..rules()
        };
        assert!(decode("wshub:user:u", good.payload(), &rules).is_ok());
        for (channel, payload) in [
            ("wshub:user:u", wrong.payload()),
            ("wshub:user:u", unsigned.payload()),
            // A signed envelope replayed on another channel.
            ("wshub:all", good.payload()),
        ] {
            assert_eq!(
                decode(channel, payload, &rules).map(|_| ()),
                Err(Garbage::Unsigned)
            );
        }
        // A changed body breaks the MAC too.
        let mut tampered = good.payload().to_vec();
        let last = tampered.len() - 2;
        tampered[last] = b'X';
        assert_eq!(
            decode("wshub:user:u", &tampered, &rules).map(|_| ()),
            Err(Garbage::Unsigned)
        );
    }

    #[test]
    fn membership_changes_round_trip_signed_or_not() {
        let sent = Origin {
            node_id: "n1",
            epoch: 7,
            seq: 9,
        };
        let names = Names::new("wshub");
        for (join, signed) in [(true, false), (false, false), (true, true)] {
            let mut publication =
                Publication::membership(&names, "amy", "r 1", join, &sent, signed);
            assert_eq!(publication.channel(), b"wshub:user:amy");
            let key = Key::new(b"k");
            publication.sign(&key);
            let rules = Rules {
                key: signed.then_some(key),
                ..rules()
            };
            let (origin, body) = decode("wshub:user:amy", publication.payload(), &rules).unwrap();
            assert_eq!(origin, sent);
            assert_eq!(body, Body::Membership { join, room: "r 1" });
        }
        // A forged membership change is refused like a forged message.
        let forged = Publication::membership(&names, "amy", "r", true, &sent, false);
        let rules = Rules {
            key: Some(Key::new(b"k")),
            ..rules()
        };
        assert_eq!(
            decode("wshub:user:amy", forged.payload(), &rules).map(|_| ()),
            Err(Garbage::Unsigned)
        );
    }

    #[test]
    fn each_kind_of_garbage_is_refused() {
        let cases: [(&[u8], Garbage); 12] = [
            (b"wshub1 n1 7 1 kick\nr", Garbage::Header),
            (b"wshub1 n1 7 1 join\nroom name too long", Garbage::Body),
            (b"wshub1 n1 7 1 join\na\x07b", Garbage::Body),
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
                decode("wshub:all", payload, &rules()).map(|_| ()),
                Err(why),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}
