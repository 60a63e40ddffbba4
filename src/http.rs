//! HTTP/1.1 on the front door: parses one request head with `httparse` out of
//! a byte buffer, and formats responses.
//!
//! Pure functions over bytes: no sockets, no clock. The session feeds it what
//! it has read so far; a head that is not complete yet is a normal outcome
//! (`Ok(None)`), not an error. The session finds the end of a head with
//! [`find_head_end`] as bytes arrive, then parses it once with
//! [`parse_complete_head`]; REST requests and WebSocket upgrades alike.

use std::fmt;

/// Most headers a request may carry; more is treated like an oversized head.
const MAX_HEADERS: usize = 64;

/// The request methods wshub routes on; anything else is kept by name for 405.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// Any other method.
    Other(String),
}

/// The parts of a request head that wshub acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request method.
    pub method: Method,
    /// Path without the query string.
    pub path: String,
    /// Full request target (path and query), for query parameters.
    pub target: String,
    /// Bytes of the head, request line through the blank line.
    pub head_len: usize,
    /// Declared body length (0 without `Content-Length`).
    pub content_length: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// `Upgrade: websocket` was sent.
    pub upgrade_websocket: bool,
    /// `Connection` lists the `upgrade` token.
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Key`, when sent.
    pub websocket_key: Option<String>,
    /// `Sec-WebSocket-Version`, when sent.
    pub websocket_version: Option<String>,
    /// `Origin`, when sent.
    pub origin: Option<Vec<u8>>,
    /// Every `Sec-WebSocket-Extensions` value, joined by commas.
    pub websocket_extensions: Option<String>,
    /// `Authorization`, when sent.
    pub authorization: Option<Vec<u8>>,
    /// `Last-Event-ID` (an `EventSource` resuming), when sent as text.
    pub last_event_id: Option<Box<str>>,
}

/// Why a request head was refused; each maps to one status code.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The head is larger than `max_header_bytes` (431).
    HeadTooLarge,
    /// The declared body is larger than `max_message_size` (413).
    BodyTooLarge,
    /// `Transfer-Encoding` bodies are not accepted (411).
    LengthRequired,
    /// The bytes are not an HTTP/1.x request (400).
    Malformed(String),
}

impl HttpError {
    /// The status code this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::LengthRequired => 411,
            HttpError::Malformed(_) => 400,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadTooLarge => f.write_str("request header fields too large"),
            HttpError::BodyTooLarge => f.write_str("request body too large"),
            HttpError::LengthRequired => {
                f.write_str("chunked bodies are not supported: send Content-Length")
            }
            HttpError::Malformed(why) => write!(f, "malformed request: {why}"),
        }
    }
}

/// Index just past the first blank line (`\r\n\r\n`) in `buf`, searching from
/// `from` so that a head arriving byte by byte is scanned once, not
/// quadratically.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| start + at + 4)
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)`: the head is incomplete and still within `max_head` bytes.
/// The body is not looked at; the caller waits for `content_length` more bytes.
pub fn parse_head(
    buf: &[u8],
    max_head: usize,
    max_body: usize,
) -> Result<Option<Request>, HttpError> {
    match find_head_end(buf, 0) {
        Some(end) => parse_complete_head(&buf[..end], max_head, max_body).map(Some),
        None if buf.len() > max_head => Err(HttpError::HeadTooLarge),
        None => Ok(None),
    }
}

/// Parses a head already known to end at `head.len()` (just past its blank
/// line, as [`find_head_end`] found it), so the loop scans each head once.
pub fn parse_complete_head(
    head: &[u8],
    max_head: usize,
    max_body: usize,
) -> Result<Request, HttpError> {
    if head.len() > max_head {
        return Err(HttpError::HeadTooLarge);
    }
    // httparse also ends lines (and the head) at a bare LF; find_head_end
    // does not. Accepting both would frame one request two ways.
    if has_bare_lf(head) {
        return Err(malformed("bare LF in request head: lines end with CRLF"));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(malformed("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(malformed(&e.to_string())),
    };
    let method = match parsed.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some(other) => Method::Other(other.to_owned()),
        None => return Err(malformed("missing method")),
    };
    let target = parsed.path.ok_or_else(|| malformed("missing target"))?;
    let minor_version = parsed.version.ok_or_else(|| malformed("missing version"))?;
    let mut request = Request {
        method,
        path: target.split('?').next().unwrap_or_default().to_owned(),
        target: target.to_owned(),
        head_len,
        content_length: 0,
        keep_alive: minor_version >= 1,
        upgrade_websocket: false,
        connection_upgrade: false,
        websocket_key: None,
        websocket_version: None,
        origin: None,
        websocket_extensions: None,
        authorization: None,
        last_event_id: None,
    };
    let mut content_length: Option<usize> = None;
    for header in parsed.headers.iter() {
        apply_header(&mut request, &mut content_length, header)?;
    }
    request.content_length = content_length.unwrap_or(0);
    if request.content_length > max_body {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(request)
}

fn apply_header(
    request: &mut Request,
    content_length: &mut Option<usize>,
    header: &httparse::Header<'_>,
) -> Result<(), HttpError> {
    let name = header.name;
    let value = header.value;
    if name.eq_ignore_ascii_case("content-length") {
        let length = content_length_value(value).ok_or_else(|| malformed("bad Content-Length"))?;
        if content_length.is_some_and(|seen| seen != length) {
            return Err(malformed("conflicting Content-Length headers"));
        }
        *content_length = Some(length);
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        return Err(HttpError::LengthRequired);
    } else if name.eq_ignore_ascii_case("connection") {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                request.keep_alive = false;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                request.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                request.connection_upgrade = true;
            }
        }
    } else if name.eq_ignore_ascii_case("upgrade") {
        request.upgrade_websocket = value.trim_ascii().eq_ignore_ascii_case(b"websocket");
    } else if name.eq_ignore_ascii_case("sec-websocket-key") {
        request.websocket_key = Some(String::from_utf8_lossy(value.trim_ascii()).into_owned());
    } else if name.eq_ignore_ascii_case("sec-websocket-version") {
        request.websocket_version = Some(String::from_utf8_lossy(value.trim_ascii()).into_owned());
    } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
        let value = String::from_utf8_lossy(value.trim_ascii());
        match &mut request.websocket_extensions {
            Some(all) => {
                all.push_str(", ");
                all.push_str(&value);
            }
            None => request.websocket_extensions = Some(value.into_owned()),
        }
    } else if name.eq_ignore_ascii_case("origin") {
        request.origin = Some(value.trim_ascii().to_vec());
    } else if name.eq_ignore_ascii_case("authorization") {
        request.authorization = Some(value.to_vec());
    } else if name.eq_ignore_ascii_case("last-event-id") {
        request.last_event_id = std::str::from_utf8(value.trim_ascii()).ok().map(Box::from);
    }
    Ok(())
}

/// ASCII digits only (RFC 9110 8.6), around them at most ASCII whitespace: no sign, no Unicode spaces, nothing inside. A proxy in front must
/// not read a length this server reads differently (request smuggling).
fn content_length_value(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Digits only by now, so `parse` sees no sign; it refuses overflow.
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

fn malformed(why: &str) -> HttpError {
    HttpError::Malformed(why.to_owned())
}

/// One HTTP response, formatted by [`Response::to_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type` value.
    pub content_type: &'static str,
    /// Extra headers, already validated names and values.
    pub headers: Vec<(&'static str, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Close the connection after this response whatever the request asked.
    pub close: bool,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
            close: false,
        }
    }

    /// A JSON error `{"error": reason}`.
    pub fn error(status: u16, reason: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": reason }))
    }

    /// A non-JSON body (the metrics text and the demo page's static files).
    pub fn raw(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
            close: false,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }

    /// Marks the response as the last one on its connection.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// Status line, headers and body as sent on the wire.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(160 + self.body.len());
        let connection = if keep_alive && !self.close {
            "keep-alive"
        } else {
            "close"
        };
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len(),
            connection
        );
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// The 101 answer to a valid upgrade request.
pub fn switching_protocols(accept_key: &str, extensions: Option<&str>) -> Vec<u8> {
    let extensions = extensions
        .map(|value| format!("Sec-WebSocket-Extensions: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n{extensions}\r\n"
    )
    .into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /api/ws/connect?user_id=u1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://a.example\r\n\r\n";

    #[test]
    fn parses_an_upgrade_request() {
        let req = parse_head(UPGRADE, 16384, 1024).unwrap().unwrap();
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.path, "/api/ws/connect");
        assert_eq!(req.target, "/api/ws/connect?user_id=u1");
        assert_eq!(req.head_len, UPGRADE.len());
        assert!(req.upgrade_websocket && req.connection_upgrade && req.keep_alive);
        assert_eq!(
            req.websocket_key.as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(req.websocket_version.as_deref(), Some("13"));
        assert_eq!(req.origin.as_deref(), Some(&b"http://a.example"[..]));
        assert_eq!(req.last_event_id, None);
        let resuming = b"GET /api/ws/sse HTTP/1.1\r\nLast-Event-ID:  ab-12 \r\n\r\n";
        let req = parse_head(resuming, 1024, 0).unwrap().unwrap();
        assert_eq!(req.last_event_id.as_deref(), Some("ab-12"));
        assert!(
            std::mem::size_of::<Request>() < 256,
            "a unit of input stays small"
        );
    }

    #[test]
    fn every_split_of_the_head_is_partial_until_the_blank_line() {
        for cut in 0..UPGRADE.len() {
            assert_eq!(parse_head(&UPGRADE[..cut], 16384, 0), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn head_end_search_resumes_across_splits() {
        let buf = b"GET / HTTP/1.1\r\n\r\nrest";
        // `from` is how much was scanned before without finding the end, so
        // at most the terminator's first three bytes were seen.
        for from in 0..=17 {
            assert_eq!(find_head_end(buf, from), Some(18), "from {from}");
        }
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
    }

    #[test]
    fn oversized_heads_are_refused_before_and_after_the_blank_line() {
        let long = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 400]].concat();
        assert_eq!(parse_head(&long, 256, 0), Err(HttpError::HeadTooLarge));
        let complete = [long.as_slice(), b"\r\n\r\n"].concat();
        assert_eq!(parse_head(&complete, 256, 0), Err(HttpError::HeadTooLarge));
        let exact = b"GET / HTTP/1.1\r\n\r\n";
        assert!(parse_head(exact, exact.len(), 0).unwrap().is_some());
        assert_eq!(
            parse_head(exact, exact.len() - 1, 0),
            Err(HttpError::HeadTooLarge)
        );
    }

    #[test]
    fn bodies_are_bounded_and_chunked_is_refused() {
        let post = b"POST /api/ws/send HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(
            parse_head(post, 1024, 11).unwrap().unwrap().content_length,
            11
        );
        assert_eq!(parse_head(post, 1024, 10), Err(HttpError::BodyTooLarge));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_head(chunked, 1024, 10),
            Err(HttpError::LengthRequired)
        );
        let conflicting = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(
            parse_head(conflicting, 1024, 10),
            Err(HttpError::Malformed(_))
        ));
        let bad = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(
            parse_head(bad, 1024, 10),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn a_bare_lf_cannot_end_a_line_or_smuggle_a_request() {
        let smuggled = b"GET /health HTTP/1.1\r\nHost: t\r\n\nPOST /x HTTP/1.1\r\n\r\n";
        assert!(matches!(
            parse_head(smuggled, 1024, 0),
            Err(HttpError::Malformed(_))
        ));
        let header = b"GET / HTTP/1.1\r\nX: a\nContent-Length: 5\r\n\r\n";
        assert!(matches!(
            parse_head(header, 1024, 10),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let err = parse_head(b"\x16\x03\x01\x02\r\n\r\n", 1024, 0).unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let h10 = parse_head(b"GET / HTTP/1.0\r\n\r\n", 1024, 0)
            .unwrap()
            .unwrap();
        assert!(!h10.keep_alive);
        let h10ka = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert!(parse_head(h10ka, 1024, 0).unwrap().unwrap().keep_alive);
        let close = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert!(!parse_head(close, 1024, 0).unwrap().unwrap().keep_alive);
    }

    #[test]
    fn content_length_is_ascii_digits_only() {
        let with = |value: &[u8]| {
            let head = [
                b"POST / HTTP/1.1\r\nContent-Length: ".as_slice(),
                value,
                b"\r\n\r\n",
            ]
            .concat();
            parse_head(&head, 1024, 1 << 20).map(|r| r.map(|r| r.content_length))
        };
        assert_eq!(with(b"24"), Ok(Some(24)));
        assert_eq!(with(b"0"), Ok(Some(0)));
        assert_eq!(with(b"0024"), Ok(Some(24)));
        assert_eq!(with(b"24 \t"), Ok(Some(24)));
        for bad in [
            b"+24".as_slice(),
            b"-0",
            b"\xc2\xa024",
            b"24\xc2\xa0",
            b"2 4",
            b"24a",
            b"0x18",
            b"",
            b"99999999999999999999999",
        ] {
            assert_eq!(
                with(bad),
                Err(malformed("bad Content-Length")),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn responses_carry_length_and_connection() {
        let text = Response::error(404, "not found").to_bytes(true);
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 21\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"not found\"}"));
        let closing = Response::error(400, "x").closing().to_bytes(true);
        assert!(String::from_utf8(closing)
            .unwrap()
            .contains("Connection: close\r\n"));
    }
}
