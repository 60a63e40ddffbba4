//! The JSON messages on the socket and in REST bodies (docs/protocol.md section 4).
//!
//! [`Incoming`] is what a client or a REST caller sent, validated: a JSON
//! object with a non-empty string `type`, optional string `to`/`room`/`from`,
//! and `content` kept as raw JSON so it is relayed without being re-parsed.
//! [`Outgoing`] is the only shape the server ever sends: `type`, `to`,
//! `from`, `room`, `content`, the empty ones omitted. [`Message`] is the owned
//! form that embedding code pushes through the handle.
//!
//! Pure: bytes in, values or bytes out.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A validated inbound message; borrows the bytes it was parsed from.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    /// Message type (non-empty).
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    /// Target user, if any (empty counts as absent).
    #[serde(default, borrow)]
    pub to: Option<std::borrow::Cow<'a, str>>,
    /// Target room, if any (empty counts as absent).
    #[serde(default, borrow)]
    pub room: Option<std::borrow::Cow<'a, str>>,
    /// Claimed sender: honoured only on the REST `send` endpoint.
    #[serde(default, borrow)]
    pub from: Option<std::borrow::Cow<'a, str>>,
    /// Any JSON value, relayed verbatim.
    #[serde(default, borrow)]
    pub content: Option<&'a RawValue>,
    /// A join token (`join` in `rooms.join: token` mode); never relayed.
    #[serde(default, borrow)]
    pub token: Option<std::borrow::Cow<'a, str>>,
    /// On a `join` with history on: the last position the client saw in
    /// the room (any JSON here, so other messages parse as before).
    #[serde(default, borrow)]
    pub since: Option<&'a RawValue>,
}

impl Incoming<'_> {
    /// `token`, with an empty string treated as absent.
    pub fn token(&self) -> Option<&str> {
        non_empty(&self.token)
    }

    /// `to`, with an empty string treated as absent.
    pub fn to(&self) -> Option<&str> {
        non_empty(&self.to)
    }

    /// `room`, with an empty string treated as absent.
    pub fn room(&self) -> Option<&str> {
        non_empty(&self.room)
    }

    /// `from`, with an empty string treated as absent.
    pub fn from(&self) -> Option<&str> {
        non_empty(&self.from)
    }
}

fn non_empty<'s>(field: &'s Option<std::borrow::Cow<'_, str>>) -> Option<&'s str> {
    field.as_deref().filter(|s| !s.is_empty())
}

/// Why a message was refused; the text is what the sender is told.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// Not parseable JSON.
    InvalidJson,
    /// Valid JSON but not an object.
    NotAnObject,
    /// No `type`, or an empty one.
    MissingType,
    /// A known field has the wrong JSON type.
    BadField(String),
    /// Arrays and objects nested deeper than `max_json_depth`.
    TooDeep {
        /// The bound.
        max: usize,
    },
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::InvalidJson => f.write_str("invalid JSON"),
            MessageError::NotAnObject => f.write_str("message must be a JSON object"),
            MessageError::MissingType => f.write_str("message needs a non-empty string \"type\""),
            MessageError::BadField(why) => write!(f, "invalid message: {why}"),
            MessageError::TooDeep { max } => {
                write!(f, "JSON nested deeper than {max} levels")
            }
        }
    }
}

/// [`parse`], refusing first any text that nests arrays and objects deeper
/// than `max_depth` (the message object itself is level 1), so deep
/// `content` is never relayed.
pub fn parse_limited(bytes: &[u8], max_depth: usize) -> Result<Incoming<'_>, MessageError> {
    if nests_deeper_than(bytes, max_depth) {
        return Err(MessageError::TooDeep { max: max_depth });
    }
    parse(bytes)
}

/// Whether JSON text opens more than `max` arrays or objects at once. One
/// pass, no allocation; strings are skipped with their escapes. Text that is
/// not JSON is left for the parser to refuse.
pub fn nests_deeper_than(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses and validates one message.
pub fn parse(bytes: &[u8]) -> Result<Incoming<'_>, MessageError> {
    // serde's derived struct visitor also accepts a JSON array, positionally.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => MessageError::NotAnObject,
                Err(_) => MessageError::InvalidJson,
            },
        );
    }
    match serde_json::from_slice::<Incoming<'_>>(bytes) {
        Ok(message) if message.kind.is_empty() => Err(MessageError::MissingType),
        Ok(message) => Ok(message),
        Err(e) => Err(classify(bytes, &e)),
    }
}

/// Turns serde's error into the reason the sender sees. Only the failure path
/// pays for the second look at the bytes.
fn classify(bytes: &[u8], error: &serde_json::Error) -> MessageError {
    if error.is_syntax() || error.is_eof() {
        return MessageError::InvalidJson;
    }
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Err(_) => MessageError::InvalidJson,
        Ok(serde_json::Value::Object(map)) => match map.get("type") {
            None | Some(serde_json::Value::Null) => MessageError::MissingType,
            Some(serde_json::Value::String(s)) if s.is_empty() => MessageError::MissingType,
            Some(serde_json::Value::String(_)) => {
                let text = error.to_string();
                let short = text.split(" at line ").next().unwrap_or(&text);
                MessageError::BadField(short.to_owned())
            }
            Some(_) => MessageError::MissingType,
        },
        Ok(_) => MessageError::NotAnObject,
    }
}

/// The one shape the server sends.
#[derive(Debug, Serialize)]
pub struct Outgoing<'a> {
    /// Message type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Addressed user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a str>,
    /// Sender's user id, stamped by the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
    /// Room the message went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    /// Content, verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a RawValue>,
}

impl Outgoing<'_> {
    /// The JSON text of this message.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing strings and already-valid raw JSON cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `{"type":"error","content":reason}`.
pub fn error_json(reason: &str) -> Vec<u8> {
    let content = serde_json::to_string(reason)
        .ok()
        .and_then(|text| RawValue::from_string(text).ok());
    Outgoing {
        kind: "error",
        to: None,
        from: None,
        room: None,
        content: content.as_deref(),
    }
    .to_json()
}

/// An owned message, for pushing from application code through the handle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Message type, e.g. `"order_status"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Addressed user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Any JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<serde_json::Value>,
}

impl Message {
    /// A message of `kind` carrying `content`.
    pub fn new(kind: impl Into<String>, content: serde_json::Value) -> Message {
        Message {
            kind: kind.into(),
            to: None,
            from: None,
            room: None,
            content: Some(content),
        }
    }

    /// The JSON text as clients receive it (empty fields omitted).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_messages_keep_content_verbatim() {
        let m = parse(br#"{"type":"chat","to":"u2","content":{"text":"hi", "n": 1.50},"x":1}"#)
            .unwrap();
        assert_eq!(m.kind, "chat");
        assert_eq!(m.to(), Some("u2"));
        assert_eq!(m.room(), None);
        assert_eq!(
            m.content.map(RawValue::get),
            Some(r#"{"text":"hi", "n": 1.50}"#)
        );
    }

    #[test]
    fn empty_to_and_room_count_as_absent() {
        let m = parse(br#"{"type":"chat","to":"","room":""}"#).unwrap();
        assert_eq!((m.to(), m.room()), (None, None));
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let m = parse(br#"{"type":"c\u0068at","to":"\u00e9"}"#).unwrap();
        assert_eq!((m.kind.as_ref(), m.to()), ("chat", Some("é")));
    }

    #[test]
    fn each_bad_input_has_its_reason() {
        let cases: [(&[u8], MessageError); 8] = [
            (b"{not json", MessageError::InvalidJson),
            (b"", MessageError::InvalidJson),
            (b"[1,2]", MessageError::NotAnObject),
            (b"\"chat\"", MessageError::NotAnObject),
            (b"{}", MessageError::MissingType),
            (br#"{"type":""}"#, MessageError::MissingType),
            (br#"{"type":5}"#, MessageError::MissingType),
            (br#"{"type":"chat"} trailing"#, MessageError::InvalidJson),
        ];
        // serde would fill a struct from an array positionally: refused.
        let array = br#"["chat","b",null,null,{"text":"hi"}]"#;
        assert_eq!(parse(array).unwrap_err(), MessageError::NotAnObject);
        assert_eq!(parse(br#"[""]"#).unwrap_err(), MessageError::NotAnObject);
        assert_eq!(parse(b" [1").unwrap_err(), MessageError::InvalidJson);
        for (input, want) in cases {
            assert_eq!(
                parse(input).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let bad = parse(br#"{"type":"chat","to":5}"#).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "invalid message: invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        let nested = |depth: usize| {
            let inner = "[".repeat(depth - 1) + &"]".repeat(depth - 1);
            format!(r#"{{"type":"x","content":{inner}}}"#)
        };
        assert!(parse_limited(nested(32).as_bytes(), 32).is_ok());
        assert_eq!(
            parse_limited(nested(33).as_bytes(), 32).unwrap_err(),
            MessageError::TooDeep { max: 32 }
        );
        assert_eq!(
            MessageError::TooDeep { max: 32 }.to_string(),
            "JSON nested deeper than 32 levels"
        );
        let in_string = r#"{"type":"x","content":"[[[[{{{{\"[[[["}"#;
        assert!(parse_limited(in_string.as_bytes(), 1).is_ok());
        assert!(!nests_deeper_than(br#"[1,[2],{"a":[3]}]"#, 3));
        assert!(nests_deeper_than(br#"[1,[2],{"a":[[3]]}]"#, 3));
        // 100,000 levels: refused in one pass, no recursion.
        let deep = "[".repeat(100_000);
        assert!(nests_deeper_than(deep.as_bytes(), 32));
    }

    #[test]
    fn outgoing_omits_empty_fields_in_a_fixed_order() {
        let content = RawValue::from_string("[1, 2]".into()).unwrap();
        let out = Outgoing {
            kind: "chat",
            to: Some("b"),
            from: Some("a"),
            room: None,
            content: Some(&content),
        };
        assert_eq!(
            out.to_json(),
            br#"{"type":"chat","to":"b","from":"a","content":[1, 2]}"#
        );
        let bare = Outgoing {
            kind: "x",
            to: None,
            from: None,
            room: None,
            content: None,
        };
        assert_eq!(bare.to_json(), br#"{"type":"x"}"#);
        assert_eq!(
            error_json("bad \"x\""),
            br#"{"type":"error","content":"bad \"x\""}"#
        );
    }
}
