//! An event-stream client for the tests (tests/sse.rs on one node,
//! tests/cluster_history.rs across two): the response head, then items as
//! an `EventSource` parses them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::WAIT;

/// What one read of the stream gave: an event, or a comment line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// An event: its type (`message` unless named), its id and its data.
    Event {
        name: String,
        id: Option<String>,
        data: String,
    },
    /// A `:` line.
    Comment(String),
}

/// A client of an event stream: the response head, then items as an
/// `EventSource` parses them (the HTML standard's rules, simplified to LF).
pub struct Stream<R: Read> {
    pub reader: BufReader<R>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The id an `EventSource` would resume from (set by `id:` lines, even
    /// in a block without data).
    pub last_id: Option<String>,
}

impl<R: Read> Stream<R> {
    /// Reads the head; the body is whatever follows.
    pub fn open(stream: R) -> Stream<R> {
        let mut reader = BufReader::new(stream);
        let (status, headers) = super::read_head(&mut reader);
        Stream {
            reader,
            status,
            headers,
            last_id: None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event or comment; `None` at the end of the stream.
    pub fn next_item(&mut self) -> Option<Item> {
        let (mut name, mut id, mut data) = (None, None, Vec::<String>::new());
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => panic!("stream read failed: {e}"),
            }
            assert!(line.ends_with('\n'), "stream ended inside a line: {line:?}");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if id.is_some() {
                    self.last_id.clone_from(&id);
                }
                if data.is_empty() {
                    name = None;
                    id = None;
                    continue;
                }
                return Some(Item::Event {
                    name: name.unwrap_or_else(|| "message".to_owned()),
                    id,
                    data: data.join("\n"),
                });
            }
            if let Some(text) = line.strip_prefix(':') {
                if data.is_empty() && name.is_none() {
                    return Some(Item::Comment(text.trim_start().to_owned()));
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => data.push(value.to_owned()),
                "event" => name = Some(value.to_owned()),
                "id" => id = Some(value.to_owned()),
                other => panic!("unexpected field {other:?}"),
            }
        }
    }

    /// The next event's data (comments skipped), as raw text.
    pub fn next_data(&mut self) -> String {
        loop {
            match self.next_item() {
                Some(Item::Event { data, .. }) => return data,
                Some(Item::Comment(_)) => continue,
                None => panic!("stream ended while an event was expected"),
            }
        }
    }

    pub fn next_json(&mut self) -> Value {
        let data = self.next_data();
        serde_json::from_str(&data).unwrap_or_else(|e| panic!("not JSON ({e}): {data}"))
    }
}

impl Stream<TcpStream> {
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
    }

    /// Reads until the server ends the stream; returns what came before.
    pub fn read_to_end(&mut self) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(item) = self.next_item() {
            items.push(item);
        }
        items
    }
}

/// Sends a GET for `path` with `headers` on a fresh connection.
pub fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut text = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).unwrap();
    stream
}
