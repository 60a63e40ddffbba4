//! Positions in a stream, as clients hold them: `"<kind>:<epoch>:<offset>"`
//! (`"a:x7Kq2mZp:42"`): parsing what a client sends (`?since=`, a join's
//! `since`), writing what the server sends (`welcome`, each message's
//! `pos`, `recovered`). Pure: text in, values or bytes out.

use std::fmt;

use serde_json::value::RawValue;

/// Longest epoch accepted from a client; the server's own are
/// [`EPOCH_LEN`] characters.
const MAX_EPOCH: usize = 16;

/// Characters in an epoch the server makes.
pub(crate) const EPOCH_LEN: usize = 8;

/// Which audience a stream follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// `a`: broadcasts to everyone.
    All,
    /// `u`: one user.
    User,
    /// `r`: one room (its name travels in the message's `room`).
    Room,
}

impl Kind {
    /// The letter a position starts with.
    pub(crate) fn letter(self) -> &'static str {
        match self {
            Kind::All => "a",
            Kind::User => "u",
            Kind::Room => "r",
        }
    }
}

/// A stream's epoch: new whenever the server can no longer vouch for the
/// stream's past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch([u8; EPOCH_LEN]);

impl Epoch {
    /// The epoch spelled from 64 random bits (base 62).
    pub(crate) fn from_bits(mut bits: u64) -> Epoch {
        const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut out = [0u8; EPOCH_LEN];
        for byte in &mut out {
            *byte = DIGITS[(bits % 62) as usize];
            bits /= 62;
        }
        Epoch(out)
    }

    /// The epoch a server wrote (exactly [`EPOCH_LEN`] ASCII letters or
    /// digits), read back from Redis; `None` for anything else.
    pub(crate) fn from_text(text: &str) -> Option<Epoch> {
        let bytes: [u8; EPOCH_LEN] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(Epoch(bytes))
    }

    /// The epoch's text.
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits and letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether a client's epoch text names this epoch.
    pub(crate) fn is(&self, text: &str) -> bool {
        self.as_str() == text
    }
}

/// A position as a client sent it; the epoch is kept as text, since it may
/// name an epoch this node never made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The stream kind.
    pub kind: Kind,
    /// The epoch as written.
    pub epoch: String,
    /// The last offset the client saw (0: none yet).
    pub offset: u64,
}

/// Why a position was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PositionError(String);

impl fmt::Display for PositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PositionError {}

fn refuse(text: &str, why: &str) -> PositionError {
    let shown: String = text
        .chars()
        .take(40)
        .flat_map(char::escape_default)
        .collect();
    PositionError(format!("\"{shown}\": {why}"))
}

impl Position {
    /// Parses `"<kind>:<epoch>:<offset>"`.
    pub(crate) fn parse(text: &str) -> Result<Position, PositionError> {
        let mut parts = text.splitn(3, ':');
        let kind = match parts.next() {
            Some("a") => Kind::All,
            Some("u") => Kind::User,
            Some("r") => Kind::Room,
            _ => return Err(refuse(text, "a position starts with a:, u: or r:")),
        };
        let (Some(epoch), Some(offset)) = (parts.next(), parts.next()) else {
            return Err(refuse(text, "expected <kind>:<epoch>:<offset>"));
        };
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH
            || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(refuse(text, "invalid epoch"));
        }
        // `u64::from_str` takes a leading '+': only digits here.
        if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse(text, "invalid offset"));
        }
        let offset = offset.parse().map_err(|_| refuse(text, "invalid offset"))?;
        Ok(Position {
            kind,
            epoch: epoch.to_owned(),
            offset,
        })
    }
}

/// What a connecting session asked to resume: its last `a` and `u`
/// positions (`?since=P1,P2`), each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Since {
    /// The broadcast stream's position.
    pub all: Option<Position>,
    /// The user stream's position.
    pub user: Option<Position>,
}

impl Since {
    /// Parses `?since=`: comma-separated positions, at most one per kind,
    /// `a` and `u` only (rooms resume on join). Empty: nothing to resume.
    pub(crate) fn parse(text: &str) -> Result<Since, PositionError> {
        let mut since = Since::default();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let position = Position::parse(part)?;
            let slot = match position.kind {
                Kind::All => &mut since.all,
                Kind::User => &mut since.user,
                Kind::Room => {
                    return Err(refuse(part, "rooms resume with join's \"since\""));
                }
            };
            if slot.is_some() {
                return Err(refuse(part, "one position per stream kind"));
            }
            *slot = Some(position);
        }
        Ok(since)
    }

    /// Whether nothing is to be resumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.all.is_none() && self.user.is_none()
    }
}

/// Appends `"<kind>:<epoch>:<offset>"` to `out`.
pub(crate) fn write(out: &mut Vec<u8>, kind: Kind, epoch: &Epoch, offset: u64) {
    out.extend_from_slice(kind.letter().as_bytes());
    out.push(b':');
    out.extend_from_slice(&epoch.0);
    out.push(b':');
    out.extend_from_slice(offset.to_string().as_bytes());
}

/// The position as a string.
pub(crate) fn format(kind: Kind, epoch: &Epoch, offset: u64) -> String {
    let mut out = Vec::with_capacity(32);
    write(&mut out, kind, epoch, offset);
    String::from_utf8(out).unwrap_or_default()
}

/// `json` (an object, as the server encodes messages) with `"pos":P` added
/// as its last key; `None` if it is not an object. A room stream's message
/// that does not name its room (a handle push may not) gets `"room":R`
/// too, since an `r` position means nothing without it.
pub(crate) fn stamp(
    json: &[u8],
    kind: Kind,
    room: Option<&str>,
    epoch: &Epoch,
    offset: u64,
) -> Option<Vec<u8>> {
    let body = json.strip_suffix(b"}")?;
    if json.first() != Some(&b'{') {
        return None;
    }
    let room = room.filter(|_| !names_room(json));
    let mut out = Vec::with_capacity(json.len() + 40 + room.map_or(0, |r| r.len() + 10));
    out.extend_from_slice(body);
    // `{}` has no key yet to follow.
    if body.len() > 1 {
        out.push(b',');
    }
    if let Some(room) = room {
        out.extend_from_slice(b"\"room\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, room);
        out.push(b',');
    }
    out.extend_from_slice(b"\"pos\":\"");
    write(&mut out, kind, epoch, offset);
    out.extend_from_slice(b"\"}");
    Some(out)
}

/// Whether a JSON object has a top-level `room` key (once per room
/// message, not per recipient).
fn names_room(json: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Room {
        room: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Room>(json).is_ok_and(|r| r.room.is_some())
}

/// One stream's answer to a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Every missed message was replayed.
    pub ok: bool,
    /// How many.
    pub replayed: usize,
}

impl Outcome {
    /// The stream cannot be vouched for: nothing replayed.
    pub(crate) const FAILED: Outcome = Outcome {
        ok: false,
        replayed: 0,
    };

    fn json(&self) -> String {
        format!(r#"{{"ok":{},"replayed":{}}}"#, self.ok, self.replayed)
    }
}

/// `{"type":"welcome","content":{"a":P,"u":P}}` (`u` for identified
/// sessions).
pub(crate) fn welcome_json(all: &str, user: Option<&str>) -> Vec<u8> {
    let mut content = serde_json::Map::new();
    content.insert("a".into(), all.into());
    if let Some(user) = user {
        content.insert("u".into(), user.into());
    }
    serde_json::json!({"type": "welcome", "content": content})
        .to_string()
        .into_bytes()
}

/// `{"type":"welcome","room":R,"content":{"r":P}}`: a recovering session's
/// position in a room it just joined.
pub(crate) fn room_welcome_json(room: &str, position: &str) -> Vec<u8> {
    serde_json::json!({"type": "welcome", "room": room, "content": {"r": position}})
        .to_string()
        .into_bytes()
}

/// `{"type":"recovered","content":{"a":{...},"u":{...}}}`, the streams the
/// session asked to resume.
pub(crate) fn recovered_json(all: Option<Outcome>, user: Option<Outcome>) -> Vec<u8> {
    let mut content = String::from("{");
    for (letter, outcome) in [("a", all), ("u", user)] {
        if let Some(outcome) = outcome {
            if content.len() > 1 {
                content.push(',');
            }
            content.push_str(&format!(r#""{letter}":{}"#, outcome.json()));
        }
    }
    content.push('}');
    recovered(None, &content)
}

/// `{"type":"recovered","room":R,"content":{"ok":..,"replayed":N}}`.
pub(crate) fn room_recovered_json(room: &str, outcome: Outcome) -> Vec<u8> {
    recovered(Some(room), &outcome.json())
}

fn recovered(room: Option<&str>, content: &str) -> Vec<u8> {
    let content = RawValue::from_string(content.to_owned()).ok();
    crate::message::Outgoing {
        kind: "recovered",
        to: None,
        from: None,
        room,
        content: content.as_deref(),
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let epoch = Epoch::from_bits(0x1234_5678_9abc_def0);
        let text = format(Kind::User, &epoch, 42);
        let parsed = Position::parse(&text).unwrap();
        assert_eq!(parsed.kind, Kind::User);
        assert!(epoch.is(&parsed.epoch));
        assert_eq!(parsed.offset, 42);
        assert_eq!(text.len(), 2 + EPOCH_LEN + 3);
        assert!(!Epoch::from_bits(1).is(&parsed.epoch));
        assert_eq!(Epoch::from_text(&parsed.epoch), Some(epoch));
        assert_eq!(Epoch::from_text("abc"), None);
        assert_eq!(Epoch::from_text("abcd-fgh"), None);
    }

    #[test]
    fn each_bad_position_has_its_reason() {
        for (text, why) in [
            ("", "starts with"),
            ("x:abc:1", "starts with"),
            ("a:abc", "expected"),
            ("a::1", "invalid epoch"),
            ("a:ab-c:1", "invalid epoch"),
            ("a:abcdefghijklmnopq:1", "invalid epoch"),
            ("a:abc:", "invalid offset"),
            ("a:abc:+1", "invalid offset"),
            ("a:abc:1:2", "invalid offset"),
            ("a:abc:-1", "invalid offset"),
            ("a:abc:99999999999999999999", "invalid offset"),
        ] {
            let error = Position::parse(text).unwrap_err().to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
        assert_eq!(
            Position::parse("a:abc:18446744073709551615")
                .unwrap()
                .offset,
            u64::MAX
        );
    }

    #[test]
    fn since_takes_one_a_and_one_u() {
        let since = Since::parse("a:e1:5,u:e2:7").unwrap();
        assert_eq!(since.all.as_ref().map(|p| p.offset), Some(5));
        assert_eq!(since.user.as_ref().map(|p| p.offset), Some(7));
        assert!(Since::parse("").unwrap().is_empty());
        assert_eq!(Since::parse("u:e2:7").unwrap().all, None);
        let error = |text| Since::parse(text).unwrap_err().to_string();
        assert!(error("a:e:1,a:e:2").contains("one position per stream kind"));
        assert!(error("r:e:1").contains("join"));
        assert!(error("a:e:1,zzz").contains("starts with"));
    }

    #[test]
    fn stamping_adds_pos_as_the_last_key() {
        let epoch = Epoch::from_bits(7);
        let stamped = stamp(br#"{"type":"x","content":1}"#, Kind::All, None, &epoch, 3).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&stamped).unwrap();
        assert_eq!(value["pos"], format(Kind::All, &epoch, 3));
        assert_eq!(value["content"], 1);
        assert!(stamped.ends_with(b"\"}"));
        assert_eq!(
            stamp(b"{}", Kind::All, None, &epoch, 1).unwrap().len(),
            10 + 2 + EPOCH_LEN + 2
        );
        assert_eq!(stamp(b"[1]", Kind::All, None, &epoch, 1), None);
        assert_eq!(stamp(b"", Kind::All, None, &epoch, 1), None);
        // A room message without its room gets it; one with it keeps its own.
        let named = stamp(
            br#"{"type":"x","room":"r1"}"#,
            Kind::Room,
            Some("r1"),
            &epoch,
            2,
        );
        let named = named.unwrap();
        assert_eq!(named.windows(6).filter(|w| w == b"\"room\"").count(), 1);
        let unnamed = stamp(br#"{"type":"x"}"#, Kind::Room, Some("a\"b"), &epoch, 2).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&unnamed).unwrap();
        assert_eq!(value["room"], "a\"b");
        assert_eq!(value["type"], "x");
        assert_eq!(value["pos"], format(Kind::Room, &epoch, 2));
    }

    #[test]
    fn server_messages_are_json() {
        let value = |bytes: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
        let welcome = value(welcome_json("a:E:1", Some("u:F:0")));
        assert_eq!(
            welcome,
            serde_json::json!({"type":"welcome","content":{"a":"a:E:1","u":"u:F:0"}})
        );
        let failed = Some(Outcome::FAILED);
        let ok = Some(Outcome {
            ok: true,
            replayed: 3,
        });
        assert_eq!(
            value(recovered_json(ok, failed)),
            serde_json::json!({"type":"recovered","content":{"a":{"ok":true,"replayed":3},"u":{"ok":false,"replayed":0}}})
        );
        assert_eq!(
            value(recovered_json(None, ok)),
            serde_json::json!({"type":"recovered","content":{"u":{"ok":true,"replayed":3}}})
        );
        assert_eq!(
            value(room_recovered_json("r\"1", Outcome::FAILED)),
            serde_json::json!({"type":"recovered","room":"r\"1","content":{"ok":false,"replayed":0}})
        );
        assert_eq!(
            value(room_welcome_json("lobby", "r:E:2")),
            serde_json::json!({"type":"welcome","room":"lobby","content":{"r":"r:E:2"}})
        );
    }
}
