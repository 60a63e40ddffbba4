//! The resume log of event streams, with history on: the `id:` of an event
//! is one token for every stream of the connection, the same for every
//! recipient of a fan-out, so the event is still built once.
//!
//! Every message kept in history gets the next number of this log (`seq`)
//! and a mark: its stream and its position there. A token
//! `"<run>-<seq>"` says "everything up to `seq` was received": an event
//! stream's client holds every message of its streams appended before it,
//! since each was queued to it in order. On resume, the first mark after
//! `seq` of each of its streams tells where that stream stood at `seq`
//! (its position minus one), which history can replay from; a stream with
//! no mark after `seq` missed nothing. Marks older than history's `ttl`
//! (or past [`MAX_MARKS`]) are dropped; a token from before them, or from
//! another run of the server, cannot be vouched for.
//!
//! Pure: no sockets, no clock (time is passed in).

use std::collections::VecDeque;
use std::rc::Rc;

/// Marks kept at most (about 100 bytes each); the oldest go first.
pub(crate) const MAX_MARKS: usize = 65_536;

/// Characters of a run id.
const RUN_LEN: usize = 8;

/// A stream, as the log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Everyone (`a`).
    All,
    /// One user (`u`).
    User(Rc<str>),
    /// One room (`r`).
    Room(Rc<str>),
}

impl Stream {
    fn is(&self, kind: char, name: Option<&str>) -> bool {
        match (self, kind, name) {
            (Stream::All, 'a', None) => true,
            (Stream::User(user), 'u', Some(name)) => &**user == name,
            (Stream::Room(room), 'r', Some(name)) => &**room == name,
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Mark {
    seq: u64,
    at_ms: u64,
    stream: Stream,
    /// The message's position in its stream, `"<kind>:<epoch>:<offset>"`.
    position: Box<str>,
}

/// Where one stream of a resuming connection stood at its token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Since {
    /// Nothing was appended to it since: nothing to replay.
    Nothing,
    /// Replay everything after this position.
    After(String),
    /// The log cannot say (another run, or marks already dropped).
    Lost,
}

/// The log.
#[derive(Debug)]
pub(crate) struct Marks {
    run: String,
    ttl_ms: u64,
    /// The number the last mark got (0: none yet).
    last: u64,
    marks: VecDeque<Mark>,
    /// Marks up to this number were dropped.
    dropped_upto: u64,
}

impl Marks {
    /// An empty log whose run id is spelled from `run_bits`; marks live
    /// for `ttl_ms`.
    pub(crate) fn new(run_bits: u64, ttl_ms: u64) -> Marks {
        const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut bits = run_bits;
        let run = (0..RUN_LEN)
            .map(|_| {
                let digit = DIGITS[(bits % 62) as usize] as char;
                bits /= 62;
                digit
            })
            .collect();
        Marks {
            run,
            ttl_ms,
            last: 0,
            marks: VecDeque::new(),
            dropped_upto: 0,
        }
    }

    /// Marks one message kept in history; returns its number.
    pub(crate) fn record(&mut self, stream: Stream, position: &str, now: u64) -> u64 {
        self.last += 1;
        if self.marks.len() >= MAX_MARKS {
            self.drop_oldest();
        }
        self.marks.push_back(Mark {
            seq: self.last,
            at_ms: now,
            stream,
            position: position.into(),
        });
        self.last
    }

    /// Drops marks older than the ttl.
    pub(crate) fn tick(&mut self, now: u64) {
        while self
            .marks
            .front()
            .is_some_and(|m| m.at_ms.saturating_add(self.ttl_ms) <= now)
        {
            self.drop_oldest();
        }
        if self.marks.is_empty() && self.marks.capacity() > 64 {
            self.marks = VecDeque::new();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(mark) = self.marks.pop_front() {
            self.dropped_upto = mark.seq;
        }
    }

    /// The token of mark `seq`.
    pub(crate) fn token(&self, seq: u64) -> String {
        format!("{}-{seq}", self.run)
    }

    /// The token of everything marked so far.
    pub(crate) fn current(&self) -> String {
        self.token(self.last)
    }

    /// The number in a token of this run; `None` for anything else.
    pub(crate) fn parse(&self, token: &str) -> Option<u64> {
        let (run, seq) = token.trim().split_once('-')?;
        if run != self.run || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        seq.parse().ok().filter(|seq| *seq <= self.last)
    }

    /// Where `stream` (`kind` `a`, `u` or `r`, and its name) stood at mark
    /// `seq` of this run.
    pub(crate) fn since(&self, seq: u64, kind: char, name: Option<&str>) -> Since {
        if seq < self.dropped_upto {
            return Since::Lost;
        }
        let first_after = self
            .marks
            .iter()
            .skip_while(|m| m.seq <= seq)
            .find(|m| m.stream.is(kind, name));
        let Some(mark) = first_after else {
            return Since::Nothing;
        };
        match before(&mark.position) {
            Some(position) => Since::After(position),
            None => Since::Lost,
        }
    }
}

/// The position just before `position` in the same stream and epoch.
fn before(position: &str) -> Option<String> {
    let (stream, offset) = position.rsplit_once(':')?;
    let offset: u64 = offset.parse().ok()?;
    Some(format!("{stream}:{}", offset.checked_sub(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> Stream {
        Stream::Room(Rc::from(name))
    }

    #[test]
    fn tokens_belong_to_their_run_and_never_point_past_the_log() {
        let mut marks = Marks::new(42, 60_000);
        let other = Marks::new(43, 60_000);
        assert_eq!(marks.current(), format!("{}-0", marks.run));
        let seq = marks.record(Stream::All, "a:ep:1", 0);
        assert_eq!(seq, 1);
        let token = marks.token(seq);
        assert_eq!(marks.parse(&token), Some(1));
        assert_eq!(other.parse(&token), None, "another run");
        for bad in [
            "",
            "-",
            "x",
            &format!("{}-", marks.run),
            &format!("{}-+1", marks.run),
        ] {
            assert_eq!(marks.parse(bad), None, "{bad:?}");
        }
        assert_eq!(marks.parse(&marks.token(2)), None, "not handed out yet");
    }

    #[test]
    fn each_stream_resumes_from_its_first_mark_after_the_token() {
        let mut marks = Marks::new(1, 60_000);
        marks.record(Stream::All, "a:E:1", 0);
        marks.record(Stream::User(Rc::from("amy")), "u:U:7", 0);
        let seen = marks.record(room("lobby"), "r:R:3", 0);
        marks.record(Stream::All, "a:E:2", 0);
        marks.record(room("other"), "r:O:1", 0);
        marks.record(room("lobby"), "r:R:4", 0);
        marks.record(Stream::All, "a:E:3", 0);
        assert_eq!(marks.since(seen, 'a', None), Since::After("a:E:1".into()));
        assert_eq!(
            marks.since(seen, 'r', Some("lobby")),
            Since::After("r:R:3".into())
        );
        assert_eq!(marks.since(seen, 'u', Some("amy")), Since::Nothing);
        assert_eq!(marks.since(seen, 'u', Some("bob")), Since::Nothing);
        assert_eq!(
            marks.since(0, 'u', Some("amy")),
            Since::After("u:U:6".into())
        );
        assert_eq!(
            marks.since(0, 'r', Some("other")),
            Since::After("r:O:0".into())
        );
    }

    #[test]
    fn dropped_marks_make_older_tokens_lost() {
        let mut marks = Marks::new(1, 1_000);
        let old = marks.record(Stream::All, "a:E:1", 0);
        let kept = marks.record(Stream::All, "a:E:2", 900);
        marks.record(Stream::All, "a:E:3", 1_500);
        marks.tick(1_000);
        assert_eq!(marks.since(old - 1, 'a', None), Since::Lost);
        assert_eq!(marks.since(old, 'a', None), Since::After("a:E:1".into()));
        marks.tick(1_900);
        assert_eq!(marks.since(old, 'a', None), Since::Lost);
        assert_eq!(marks.since(kept, 'a', None), Since::After("a:E:2".into()));
        let mut full = Marks::new(1, u64::MAX);
        for i in 0..MAX_MARKS as u64 + 10 {
            full.record(Stream::All, &format!("a:E:{}", i + 1), 0);
        }
        assert_eq!(full.marks.len(), MAX_MARKS);
        assert_eq!(full.since(5, 'a', None), Since::Lost);
        assert_eq!(full.since(10, 'a', None), Since::After("a:E:10".into()));
    }
}
