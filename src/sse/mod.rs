//! Server-Sent Events (`GET /api/ws/sse`): the bytes of the stream and the
//! query parameters that open it.
//!
//! An SSE session receives exactly what a WebSocket session of the same user
//! and rooms receives; only the framing differs. A message becomes one event
//! (`data: <the same JSON>` and a blank line), built once per fan-out and
//! shared like a WebSocket frame; a comment line is the heartbeat. The
//! response is close-delimited (HTTP/1.1 without `Content-Length` or
//! chunking, `Connection: close`): the stream's end is the connection's end,
//! which is what an `EventSource` reconnects on (README, "Server-Sent
//! Events").
//!
//! Pure: bytes in, bytes out. No sockets, no sessions.

use std::rc::Rc;

use crate::frame::Wire;

pub(crate) mod marks;

/// What a request for a stream asked for, besides who it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Open {
    /// Rooms to join at once (`?rooms=`), in order.
    pub rooms: Vec<String>,
    /// Where it resumes: `Last-Event-ID`, or `?last_event_id=`.
    pub last_event_id: Option<String>,
}

/// The heartbeat sent every `ping_period`: a comment line, which every
/// client ignores and every proxy sees as traffic.
pub(crate) const HEARTBEAT: &[u8] = b":\n\n";

/// The `200` that opens a stream. `origin`: the request's `Origin`, already
/// checked against `allowed_origins`, echoed so that an `EventSource` on
/// another origin may read the stream.
pub(crate) fn response_head(origin: Option<&str>) -> Vec<u8> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\n\
         Content-Type: text/event-stream\r\n\
         Cache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\n\
         Connection: close\r\n",
    );
    if let Some(origin) = origin {
        head.push_str("Access-Control-Allow-Origin: ");
        head.push_str(origin);
        head.push_str("\r\nVary: Origin\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One message as one event: every line of `json` behind `data: ` (JSON
/// keeps line breaks only as whitespace, which a client joins back with
/// `\n`), then the blank line that dispatches it.
pub fn event(json: &[u8]) -> Wire {
    let mut out = Vec::with_capacity(json.len() + 8);
    push_data(&mut out, json);
    out.push(b'\n');
    Rc::from(out)
}

/// One message as one event with an `id:` (the resume token, see
/// `marks`), which the browser sends back as `Last-Event-ID`.
pub fn event_with_id(id: &str, json: &[u8]) -> Wire {
    let mut out = Vec::with_capacity(id.len() + json.len() + 16);
    push_id(&mut out, id);
    push_data(&mut out, json);
    out.push(b'\n');
    Rc::from(out)
}

/// An event of a named type (`event: reset`), which `onmessage` does not
/// receive: a client listens for it by name.
pub fn named_event(name: &str, json: &[u8]) -> Wire {
    let mut out = Vec::with_capacity(name.len() + json.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    push_data(&mut out, json);
    out.push(b'\n');
    Rc::from(out)
}

/// An `id:` alone: sets the id the browser resumes from without
/// dispatching an event.
pub fn id_only(id: &str) -> Wire {
    let mut out = Vec::with_capacity(id.len() + 8);
    push_id(&mut out, id);
    out.push(b'\n');
    Rc::from(out)
}

fn push_id(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(b"id: ");
    // A line break would end the field early; NUL makes a browser ignore it.
    out.extend(id.bytes().filter(|b| !matches!(b, b'\n' | b'\r' | 0)));
    out.push(b'\n');
}

/// The payload of an unmasked, unfragmented WebSocket frame (what history
/// keeps), to send it again as an event.
pub(crate) fn frame_payload(frame: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = frame.split_first()?;
    let (&second, rest) = rest.split_first()?;
    if first & 0x80 == 0 || second & 0x80 != 0 {
        return None;
    }
    let (len, rest) = match second & 0x7f {
        126 => {
            let (bytes, rest) = rest.split_at_checked(2)?;
            (usize::from(u16::from_be_bytes([bytes[0], bytes[1]])), rest)
        }
        127 => {
            let (bytes, rest) = rest.split_at_checked(8)?;
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            (usize::try_from(u64::from_be_bytes(be)).ok()?, rest)
        }
        short => (usize::from(short), rest),
    };
    (rest.len() == len).then_some(rest)
}

/// A comment line: `text` on one line (line breaks become spaces).
pub(crate) fn comment(text: &str) -> Wire {
    let mut out = Vec::with_capacity(text.len() + 4);
    out.extend_from_slice(b": ");
    out.extend(
        text.bytes()
            .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\n\n");
    Rc::from(out)
}

/// `data: ` lines for `json`, each ending in `\n`. SSE ends a line at CRLF,
/// CR or LF; each is one break.
fn push_data(out: &mut Vec<u8>, json: &[u8]) {
    let mut rest = json;
    loop {
        out.extend_from_slice(b"data: ");
        let Some(at) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
            out.extend_from_slice(rest);
            out.push(b'\n');
            return;
        };
        out.extend_from_slice(&rest[..at]);
        out.push(b'\n');
        let skip = if rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[at + skip..];
    }
}

/// The rooms of `?rooms=a,b`, in order, without empty names or repeats.
/// Names are checked when they are joined, as a WebSocket `join` is.
pub(crate) fn rooms(list: &str) -> Vec<String> {
    let mut rooms: Vec<String> = Vec::new();
    for room in list.split(',').filter(|r| !r.is_empty()) {
        if !rooms.iter().any(|r| r == room) {
            rooms.push(room.to_owned());
        }
    }
    rooms
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an `EventSource` makes of a stream (the HTML standard's
    /// parsing): the data of each dispatched event and its type.
    fn parse(stream: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(stream).unwrap();
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let (mut events, mut data, mut kind) = (Vec::new(), Vec::<String>::new(), None);
        for line in text.split('\n') {
            if line.is_empty() {
                if !data.is_empty() {
                    let name = kind.take().unwrap_or_else(|| "message".to_owned());
                    events.push((name, data.join("\n")));
                }
                data.clear();
                kind = None;
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
            } else if let Some(value) = line.strip_prefix("event:") {
                kind = Some(value.trim_start().to_owned());
            }
        }
        events
    }

    #[test]
    fn an_event_carries_the_json_unchanged() {
        let json = br#"{"type":"chat","content":"a: b"}"#;
        let wire = event(json);
        assert_eq!(
            &wire[..],
            b"data: {\"type\":\"chat\",\"content\":\"a: b\"}\n\n"
        );
        assert_eq!(
            parse(&wire),
            [(
                "message".to_owned(),
                String::from_utf8(json.to_vec()).unwrap()
            )]
        );
    }

    #[test]
    fn line_breaks_in_the_json_become_data_lines_and_come_back_as_lf() {
        let json = b"{\"type\":\"x\",\r\n\"content\":\r[1,\n2]}";
        let wire = event(json);
        assert_eq!(
            &wire[..],
            b"data: {\"type\":\"x\",\ndata: \"content\":\ndata: [1,\ndata: 2]}\n\n"
        );
        let got = parse(&wire);
        assert_eq!(got[0].1, "{\"type\":\"x\",\n\"content\":\n[1,\n2]}");
        let value: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
        assert_eq!(value["content"], serde_json::json!([1, 2]));
        assert_eq!(parse(&event(b"x\n")), [("message".into(), "x\n".into())]);
    }

    #[test]
    fn ids_named_events_and_frames_kept_by_history() {
        let wire = event_with_id("run-7", b"{}");
        assert_eq!(&wire[..], b"id: run-7\ndata: {}\n\n");
        assert_eq!(&id_only("run-\n8")[..], b"id: run-8\n\n");
        let reset = named_event("reset", br#"{"streams":["a"]}"#);
        assert_eq!(
            parse(&reset),
            [("reset".into(), r#"{"streams":["a"]}"#.into())]
        );
        for len in [0, 5, 125, 126, 300, 70_000] {
            let payload = vec![b'x'; len];
            let frame = crate::frame::encode(crate::frame::Kind::Text, &payload);
            assert_eq!(frame_payload(&frame), Some(&payload[..]), "{len}");
            assert_eq!(frame_payload(&frame[..frame.len().saturating_sub(1)]), None);
        }
        assert_eq!(frame_payload(&[0x01, 0x00]), None, "a fragment");
        assert_eq!(frame_payload(&[]), None);
    }

    #[test]
    fn comments_are_not_events() {
        let all = [&comment("slow\nconsumer")[..], HEARTBEAT, &event(b"1")[..]].concat();
        assert_eq!(&comment("slow\nconsumer")[..], b": slow consumer\n\n");
        assert_eq!(parse(&all), [("message".into(), "1".into())]);
    }

    #[test]
    fn the_head_is_close_delimited_and_tells_proxies_not_to_buffer() {
        let head = String::from_utf8(response_head(None)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        for line in [
            "Content-Type: text/event-stream\r\n",
            "Cache-Control: no-cache\r\n",
            "X-Accel-Buffering: no\r\n",
            "Connection: close\r\n",
        ] {
            assert!(head.contains(line), "{line}");
        }
        assert!(!head.contains("Content-Length") && !head.contains("Transfer-Encoding"));
        assert!(!head.contains("Access-Control"));
        assert!(head.ends_with("\r\n\r\n"));
        let cors = String::from_utf8(response_head(Some("https://a.example"))).unwrap();
        assert!(cors.contains("Access-Control-Allow-Origin: https://a.example\r\n"));
    }

    #[test]
    fn rooms_skip_empty_names_and_repeats() {
        assert_eq!(rooms("a,b,,a,c"), ["a", "b", "c"]);
        assert!(rooms("").is_empty());
        assert!(rooms(",,").is_empty());
    }
}
