//! History in Redis, for a cluster with `history` on (README "History and
//! resume"): the scripts that append a message and read a resume, the key
//! names, and the subscriber's reader that runs those reads.
//!
//! A stream lives in two keys: a hash `<prefix>:hm:<stream>` holding its
//! epoch (`e`) and last offset (`o`), and a Redis stream `<prefix>:h:<stream>`
//! whose entry ids are `<offset>-0` and whose fields are the append time
//! (`t`, Redis clock, ms) and the signed envelope (`m`) as published. One
//! Lua script per message assigns the offset, adds the entry (`MAXLEN` =
//! `history.size`), refreshes both expiries and publishes the envelope with
//! the position in front (`wshubh <epoch> <offset> <except>`), so every
//! node, the sender's included, receives each message with its position
//! and in stream order. A hash that is gone (expired after `meta_ttl`, or a
//! flushed Redis) gets a new epoch from the next script that touches it:
//! older positions then answer `ok:false`.
//!
//! A resume's read is one script too: per stream the epoch, the last offset
//! and the entries after the client's position (all of them or none), then
//! a marker published on this node's own channel. The reader (on the
//! subscriber thread) keeps the answer until the marker arrives on the
//! subscription: everything published before the read has then been
//! forwarded to the loop, and everything after comes after the answer, so
//! the loop merges replay and live traffic without loss or duplicates.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering;

use redis::{Connection, RedisResult, Value};

use super::wire::{self, Names};
use super::Bridge;
use crate::audience::{Audience, SessionKey};
use crate::history::position::{self, Epoch, Kind};

/// Appends one envelope; see the module doc. KEYS: hash, stream. ARGV: a
/// new epoch (used only when the hash is gone), size, ttl ms, meta_ttl ms,
/// channel, except, envelope.
pub(crate) const APPEND_SCRIPT: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], o .. '-0', 't', ms, 'm', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], 'wshubh ' .. e .. ' ' .. o .. ' ' .. ARGV[6] .. '\n' .. ARGV[7])
return o
";

/// Reads a resume; see the module doc. KEYS: hash and stream per stream.
/// ARGV: marker channel, marker, ttl ms, meta_ttl ms, most entries, then
/// per stream a new epoch, the client's epoch ('' when it named none) and
/// offset. Returns per stream `{epoch, last, status, entries...}`, status 0
/// (not asked), 1 (every entry after the offset follows) or -1 (cannot be
/// vouched for: another epoch, an offset past the last, entries trimmed or
/// older than ttl).
pub(crate) const READ_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for i = 1, #KEYS / 2 do
  local meta, stream = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 5 + 3 * (i - 1)
  local e = redis.call('HGET', meta, 'e')
  if not e then
    e = ARGV[a + 1]
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', e, 'o', 0)
  end
  redis.call('PEXPIRE', meta, ARGV[4])
  local o = tonumber(redis.call('HGET', meta, 'o'))
  local r = {e, o, 0}
  if ARGV[a + 2] ~= '' then
    local s = tonumber(ARGV[a + 3])
    r[3] = -1
    if ARGV[a + 2] == e and s <= o and o - s <= tonumber(ARGV[5]) then
      if s == o then
        r[3] = 1
      else
        local got = redis.call('XRANGE', stream, (s + 1) .. '-0', o .. '-0')
        if #got == o - s and tonumber(got[1][2][2]) + tonumber(ARGV[3]) > now then
          r[3] = 1
          for j = 1, #got do r[3 + j] = got[j][2][4] end
        end
      end
    end
  end
  out[i] = r
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return out
";

/// First word of a published envelope that carries its position.
pub(crate) const KEPT_MAGIC: &str = "wshubh";

/// Most streams read for one resume (`a`, `u`; or one room).
const MAX_STREAMS: usize = 2;

/// What the cluster's history is held to (from `history`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// `history.size`: entries per stream (`MAXLEN`), and the most a
    /// resume replays per stream.
    pub size: usize,
    /// `history.ttl` in ms.
    pub ttl_ms: u64,
    /// `history.meta_ttl` in ms.
    pub meta_ttl_ms: u64,
}

/// The hash and stream keys of the stream that follows `audience`.
pub(crate) fn keys(names: &Names, audience: Audience<&str>) -> (String, String) {
    let channel = names.channel(audience);
    let prefix = names.prefix();
    // The channel is `<prefix>:<rest>`; keys insert `h` or `hm` after it.
    let rest = channel.get(prefix.len()..).unwrap_or_default();
    (format!("{prefix}:hm{rest}"), format!("{prefix}:h{rest}"))
}

/// The channel this node's read markers arrive on (one run of one node).
pub(crate) fn marker_channel(names: &Names, node_id: &str, epoch: u64) -> String {
    format!("{}:hdone:{node_id}:{epoch}", names.prefix())
}

/// A fresh random epoch for a stream Redis does not know.
pub(crate) fn new_epoch(random: &RandomState, n: u64) -> Epoch {
    Epoch::from_bits(random.hash_one(n))
}

/// `except` as it travels in the kept header: `-` or `<index>.<generation>`.
pub(crate) fn except_text(except: Option<SessionKey>) -> String {
    match except {
        Some(key) => format!("{}.{}", key.index, key.generation),
        None => "-".to_owned(),
    }
}

/// A kept envelope's position header, split from the envelope itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeptHeader<'a> {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// The message's offset.
    pub offset: u64,
    /// The session the sender's node leaves out.
    pub except: Option<SessionKey>,
    /// The envelope (`wshub1 …\n<json>`).
    pub envelope: &'a [u8],
}

/// Splits `wshubh <epoch> <offset> <except>\n<envelope>`; `None` when the
/// payload does not start that way (a plain envelope).
pub(crate) fn split_kept(payload: &[u8]) -> Option<Result<KeptHeader<'_>, ()>> {
    let rest = payload
        .strip_prefix(KEPT_MAGIC.as_bytes())?
        .strip_prefix(b" ")?;
    let parse = || {
        let newline = rest.iter().position(|b| *b == b'\n').ok_or(())?;
        let header = std::str::from_utf8(&rest[..newline]).map_err(|_| ())?;
        let mut words = header.split(' ');
        let (Some(epoch), Some(offset), Some(except), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(());
        };
        let epoch = Epoch::from_text(epoch).ok_or(())?;
        let offset = offset.parse().map_err(|_| ())?;
        let except = match except {
            "-" => None,
            text => {
                let (index, generation) = text.split_once('.').ok_or(())?;
                Some(SessionKey {
                    index: index.parse().map_err(|_| ())?,
                    generation: generation.parse().map_err(|_| ())?,
                })
            }
        };
        Ok(KeptHeader {
            epoch,
            offset,
            except,
            envelope: &rest[newline + 1..],
        })
    };
    Some(parse())
}

/// One stream a resume reads.
#[derive(Debug, Clone)]
pub(crate) struct ReadStream {
    /// Whose stream (`except` is ignored).
    pub audience: Audience<String>,
    /// The client's position (epoch as written, offset); `None`: only the
    /// current position is wanted.
    pub since: Option<(String, u64)>,
}

/// A resume's read, from the loop to the subscriber thread.
#[derive(Debug)]
pub(crate) struct Read {
    /// Names the answer.
    pub id: u64,
    /// At most [`MAX_STREAMS`].
    pub streams: Vec<ReadStream>,
}

/// One stream's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamRead {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// Its last offset when the read ran: the welcome's position.
    pub last: u64,
    /// The messages after the client's position, stamped, in order; `None`
    /// when it named one that cannot be vouched for (or named none).
    pub replay: Option<Vec<Vec<u8>>>,
}

/// A read's answer: one [`StreamRead`] per stream asked, or why it failed.
pub(crate) type ReadResult = Result<Vec<StreamRead>, String>;

/// The subscriber's side of resumes: a second connection for the reads,
/// and the answers waiting for their marker.
pub(super) struct Reader {
    con: Option<Connection>,
    marker: String,
    waiting: HashMap<u64, (ReadResult, usize)>,
    random: RandomState,
    epochs: u64,
}

impl Reader {
    pub(super) fn new(bridge: &Bridge) -> Reader {
        Reader {
            con: None,
            marker: marker_channel(&bridge.names, &bridge.node_id, bridge.epoch),
            waiting: HashMap::new(),
            random: RandomState::new(),
            epochs: 0,
        }
    }

    /// The channel the markers arrive on.
    pub(super) fn marker(&self) -> &str {
        &self.marker
    }

    /// Runs `reads` (one pipeline). Answers that failed outright are
    /// returned at once; the others wait for their marker. Their bytes are
    /// taken from the bridge's inbound budget (refused past it: failed).
    pub(super) fn run(&mut self, bridge: &Bridge, reads: Vec<Read>) -> Vec<(u64, ReadResult)> {
        let mut failed = Vec::new();
        let answers = match self.query(bridge, &reads) {
            Ok(answers) => answers,
            Err(e) => {
                self.con = None;
                let why = format!("Redis read failed: {e}");
                return reads
                    .into_iter()
                    .map(|r| (r.id, Err(why.clone())))
                    .collect();
            }
        };
        for (read, answer) in reads.into_iter().zip(answers) {
            let result = parse_answer(bridge, &read, answer);
            let bytes = match &result {
                Ok(streams) => streams
                    .iter()
                    .flat_map(|s| s.replay.iter().flatten())
                    .map(Vec::len)
                    .sum(),
                Err(_) => 0,
            };
            if !bridge.inbound.try_take(bytes) {
                bridge.stats.receive_dropped.fetch_add(1, Ordering::Relaxed);
                failed.push((read.id, Err("cluster.max_queue_bytes reached".to_owned())));
                continue;
            }
            match result {
                Ok(streams) => {
                    self.waiting.insert(read.id, (Ok(streams), bytes));
                }
                Err(why) => failed.push((read.id, Err(why))),
            }
        }
        failed
    }

    fn query(&mut self, bridge: &Bridge, reads: &[Read]) -> RedisResult<Vec<Value>> {
        let settings = bridge.history.unwrap_or(Settings {
            size: 0,
            ttl_ms: 1,
            meta_ttl_ms: 1,
        });
        if self.con.is_none() {
            self.con = Some(bridge.connect()?);
        }
        let mut pipe = redis::pipe();
        for read in reads {
            let mut keys = Vec::new();
            let mut args: Vec<Vec<u8>> = vec![
                self.marker.clone().into_bytes(),
                read.id.to_string().into_bytes(),
                settings.ttl_ms.to_string().into_bytes(),
                settings.meta_ttl_ms.to_string().into_bytes(),
                settings.size.to_string().into_bytes(),
            ];
            for stream in read.streams.iter().take(MAX_STREAMS) {
                let (meta, entries) = keys_of(&bridge.names, &stream.audience);
                keys.push(meta);
                keys.push(entries);
                self.epochs += 1;
                let epoch = new_epoch(&self.random, self.epochs);
                args.push(epoch.as_str().as_bytes().to_vec());
                match &stream.since {
                    Some((epoch, offset)) => {
                        args.push(epoch.clone().into_bytes());
                        args.push(offset.to_string().into_bytes());
                    }
                    None => {
                        args.push(Vec::new());
                        args.push(b"0".to_vec());
                    }
                }
            }
            pipe.cmd("EVAL")
                .arg(READ_SCRIPT)
                .arg(keys.len())
                .arg(keys)
                .arg(args);
        }
        let Some(con) = self.con.as_mut() else {
            return Ok(Vec::new());
        };
        pipe.query(con)
    }

    /// A marker arrived: the answer it releases, in stream order with the
    /// live messages around it.
    pub(super) fn on_marker(&mut self, payload: &[u8]) -> Option<(u64, ReadResult, usize)> {
        let id = std::str::from_utf8(payload).ok()?.parse().ok()?;
        let (result, bytes) = self.waiting.remove(&id)?;
        Some((id, result, bytes))
    }

    /// The subscription failed: no waiting answer's marker can arrive.
    pub(super) fn fail_waiting(&mut self, bridge: &Bridge) -> Vec<u64> {
        self.con = None;
        let ids = self.waiting.keys().copied().collect();
        for (_, (_, bytes)) in self.waiting.drain() {
            bridge.inbound.give_back(bytes);
        }
        ids
    }
}

fn keys_of(names: &Names, audience: &Audience<String>) -> (String, String) {
    let audience = match audience.as_deref() {
        Audience::Everyone { .. } => Audience::EVERYONE,
        Audience::User(user) => Audience::User(user),
        Audience::Room { room, .. } => Audience::room(room),
    };
    keys(names, audience)
}

/// One read's reply, checked: epochs as the server writes them, offsets,
/// and each entry a valid envelope for its channel (MAC, size), stamped
/// with its position. A stream with an entry that fails is not vouched for.
fn parse_answer(bridge: &Bridge, read: &Read, answer: Value) -> ReadResult {
    let Value::Array(streams) = answer else {
        return Err(format!("unexpected reply to a read: {answer:?}"));
    };
    if streams.len() != read.streams.len().min(MAX_STREAMS) {
        return Err("a read's reply has the wrong number of streams".to_owned());
    }
    let mut out = Vec::with_capacity(streams.len());
    for (asked, stream) in read.streams.iter().zip(streams) {
        let Value::Array(fields) = stream else {
            return Err("a read's stream reply is not an array".to_owned());
        };
        let mut fields = fields.into_iter();
        let epoch = match fields.next() {
            Some(Value::BulkString(bytes)) => {
                std::str::from_utf8(&bytes).ok().and_then(Epoch::from_text)
            }
            _ => None,
        };
        let Some(epoch) = epoch else {
            return Err("a stream in Redis has an epoch this server does not write".to_owned());
        };
        let (Some(Value::Int(last)), Some(Value::Int(status))) = (fields.next(), fields.next())
        else {
            return Err("a read's reply lacks the offset or status".to_owned());
        };
        let last = u64::try_from(last).map_err(|_| "a negative offset in Redis".to_owned())?;
        let replay = match status {
            1 => {
                let first = asked.since.as_ref().map_or(0, |(_, offset)| *offset) + 1;
                stamp_all(bridge, &asked.audience, &epoch, first, fields)
            }
            _ => None,
        };
        out.push(StreamRead {
            epoch,
            last,
            replay,
        });
    }
    Ok(out)
}

fn stamp_all(
    bridge: &Bridge,
    audience: &Audience<String>,
    epoch: &Epoch,
    first: u64,
    entries: impl Iterator<Item = Value>,
) -> Option<Vec<Vec<u8>>> {
    let target = audience.as_deref();
    let channel = bridge.names.channel(target);
    let (kind, room) = match target {
        Audience::Everyone { .. } => (Kind::All, None),
        Audience::User(_) => (Kind::User, None),
        Audience::Room { room, .. } => (Kind::Room, Some(room)),
    };
    let mut out = Vec::new();
    for (offset, entry) in (first..).zip(entries) {
        let Value::BulkString(envelope) = entry else {
            return None;
        };
        let wire::Body::Message(json) = wire::decode(&channel, &envelope, &bridge.rules).ok()?.1
        else {
            return None;
        };
        out.push(position::stamp(&json, kind, room, epoch, offset)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_channel_and_never_meet_it() {
        let names = Names::new("ws");
        assert_eq!(
            keys(&names, Audience::User("u:1")),
            ("ws:hm:user:u:1".to_owned(), "ws:h:user:u:1".to_owned())
        );
        assert_eq!(keys(&names, Audience::EVERYONE).1, "ws:h:all");
        assert_eq!(keys(&names, Audience::room("r")).0, "ws:hm:room:r");
        assert_eq!(marker_channel(&names, "n1", 7), "ws:hdone:n1:7");
        // A marker channel is no audience's channel.
        assert_eq!(names.target("ws:hdone:n1:7"), None);
    }

    #[test]
    fn a_kept_header_splits_or_says_why_not() {
        let epoch = Epoch::from_bits(42);
        let e = epoch.as_str();
        let payload = format!("wshubh {e} 17 3.9\nwshub1 n 1 2\n{{}}");
        let kept = split_kept(payload.as_bytes()).unwrap().unwrap();
        assert_eq!(kept.epoch, epoch);
        assert_eq!(kept.offset, 17);
        assert_eq!(
            kept.except,
            Some(SessionKey {
                index: 3,
                generation: 9
            })
        );
        assert_eq!(kept.envelope, b"wshub1 n 1 2\n{}");
        let none = format!("wshubh {e} 1 -\nx");
        assert_eq!(split_kept(none.as_bytes()).unwrap().unwrap().except, None);
        assert!(
            split_kept(b"wshub1 n 1 2\n{}").is_none(),
            "a plain envelope"
        );
        for bad in [
            "wshubh short 1 -\nx",
            &format!("wshubh {e} x -\nx"),
            &format!("wshubh {e} 1 3\nx"),
            &format!("wshubh {e} 1 - extra\nx"),
            &format!("wshubh {e} 1 -"),
        ] {
            assert_eq!(split_kept(bad.as_bytes()), Some(Err(())), "{bad}");
        }
    }

    #[test]
    fn the_scripts_take_what_the_callers_pass() {
        // APPEND: 2 keys, 7 args; READ: 5 args then 3 per stream.
        assert!(APPEND_SCRIPT.contains("ARGV[7]") && !APPEND_SCRIPT.contains("ARGV[8]"));
        assert!(READ_SCRIPT.contains("local a = 5 + 3 * (i - 1)"));
        assert!(APPEND_SCRIPT.contains(KEPT_MAGIC));
        assert_eq!(except_text(None), "-");
    }
}
