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
//! One more hash, [`counter_key`], numbers every kept message cluster-wide
//! (the same script assigns the number, keeps it in the entry and in its
//! stream's hash, and publishes it in the header): that number is an event
//! stream's `id:`, and [`EVENTS_SCRIPT`] resumes every stream of an event
//! stream from it.
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

/// Appends one envelope; see the module doc. KEYS: hash, stream, the
/// cluster's event counter ([`counter_key`]). ARGV: a new epoch (used only
/// when the hash is gone), size, ttl ms, meta_ttl ms, channel, except,
/// envelope, a new counter epoch (used only when the counter is gone).
pub(crate) const APPEND_SCRIPT: &str = r"
local ge = redis.call('HGET', KEYS[3], 'e')
if not ge then
  ge = ARGV[8]
  redis.call('HSET', KEYS[3], 'e', ge, 'g', 0)
end
local g = redis.call('HINCRBY', KEYS[3], 'g', 1)
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0, 'g0', g)
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('HSET', KEYS[1], 'gl', g)
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], o .. '-0', 't', ms, 'm', ARGV[7], 'g', g)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], 'wshubh ' .. e .. ' ' .. o .. ' ' .. ARGV[6] .. ' ' .. ge .. '-' .. g .. '\n' .. ARGV[7])
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

/// Reads an event stream's resume from one token (`<counter epoch>-<n>`,
/// the [`counter_key`] when the stream's client last heard of it): per
/// stream, every entry appended after it. KEYS: the counter, then hash and
/// stream per stream. ARGV: marker channel, marker, ttl ms, meta_ttl ms,
/// most entries, a new counter epoch, the token's epoch ('' when the
/// stream opens without one) and number, then per stream a new epoch.
///
/// A stream's hash remembers the counter when its epoch began (`g0`, set
/// here for a hash that lacks it) and at its last append (`gl`); each entry
/// its own (`g`). Within an epoch both grow with the offset, so the
/// entries after the token are the newest ones down to the first entry at
/// or before it. Vouched for (status 1) only when the epoch existed at the
/// token (`g0` at or before it: no older epoch was lost since) and either
/// nothing came since (`gl`), or those entries are whole: the entry just
/// before them is still kept or they start at offset 1, none trimmed, the
/// oldest within ttl. Returns `{counter epoch, counter, per stream {epoch,
/// status, first offset, entries...}}`, status 0 (no token), 1 or -1.
pub(crate) const EVENTS_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ge = redis.call('HGET', KEYS[1], 'e')
if not ge then
  ge = ARGV[6]
  redis.call('HSET', KEYS[1], 'e', ge, 'g', 0)
end
local G = tonumber(redis.call('HGET', KEYS[1], 'g'))
local asked = ARGV[7] ~= ''
local tg = tonumber(ARGV[8])
local valid = asked and ARGV[7] == ge and tg <= G
local out = {ge, G}
for i = 1, (#KEYS - 1) / 2 do
  local meta, stream = KEYS[2 * i], KEYS[2 * i + 1]
  local e = redis.call('HGET', meta, 'e')
  if not e then
    e = ARGV[8 + i]
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', e, 'o', 0, 'g0', G)
  end
  redis.call('HSETNX', meta, 'g0', G)
  redis.call('PEXPIRE', meta, ARGV[4])
  local o = tonumber(redis.call('HGET', meta, 'o'))
  local r = {e, 0, o + 1}
  if asked then
    r[2] = -1
    local g0 = tonumber(redis.call('HGET', meta, 'g0'))
    if valid and g0 <= tg then
      local gl = tonumber(redis.call('HGET', meta, 'gl') or '0')
      if gl <= tg then
        r[2] = 1
      else
        local got = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', tonumber(ARGV[5]) + 1)
        local n, whole = 0, false
        for j = 1, #got do
          local g = tonumber(got[j][2][6])
          if not g then break end
          if g <= tg then
            whole = true
            break
          end
          n = j
        end
        if n > 0 then
          local first = tonumber(string.match(got[n][1], '^%d+'))
          if first == 1 then whole = true end
          local fresh = tonumber(got[n][2][2]) + tonumber(ARGV[3]) > now
          if whole and fresh and o - first + 1 == n then
            r[2] = 1
            r[3] = first
            for j = n, 1, -1 do r[#r + 1] = got[j][2][4] end
          end
        end
      end
    end
  end
  out[#out + 1] = r
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return out
";

/// First word of a published envelope that carries its position.
pub(crate) const KEPT_MAGIC: &str = "wshubh";

/// Most streams read for one resume (`a`, `u`; or one room).
const MAX_STREAMS: usize = 2;

/// Most streams read for one event stream (everyone, its user, its rooms;
/// `max_rooms_per_session` bounds the rooms well below this).
const MAX_EVENT_STREAMS: usize = 1024;

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

/// The cluster's event counter: a hash with its epoch (`e`) and the number
/// of the last message kept in any stream (`g`). An event stream's `id:` is
/// `<epoch>-<number>`, the same on every node (docs/sse.md).
/// It never expires (one small key); a flushed Redis gives it a
/// new epoch, and older tokens then cannot be vouched for.
pub(crate) fn counter_key(names: &Names) -> String {
    format!("{}:hg", names.prefix())
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
    /// The counter's `<epoch>-<number>` for this message: an event
    /// stream's `id:` ([`counter_key`]); `None` from a node that does not
    /// send it.
    pub token: Option<&'a str>,
    /// The envelope (`wshub1 …\n<json>`).
    pub envelope: &'a [u8],
}

/// Splits `wshubh <epoch> <offset> <except> [<token>]\n<envelope>`; `None` when the
/// payload does not start that way (a plain envelope).
pub(crate) fn split_kept(payload: &[u8]) -> Option<Result<KeptHeader<'_>, ()>> {
    let rest = payload
        .strip_prefix(KEPT_MAGIC.as_bytes())?
        .strip_prefix(b" ")?;
    let parse = || {
        let newline = rest.iter().position(|b| *b == b'\n').ok_or(())?;
        let header = std::str::from_utf8(&rest[..newline]).map_err(|_| ())?;
        let mut words = header.split(' ');
        let (Some(epoch), Some(offset), Some(except), token, None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            return Err(());
        };
        if token.is_some_and(|token| parse_token(token).is_none()) {
            return Err(());
        }
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
            token,
            envelope: &rest[newline + 1..],
        })
    };
    Some(parse())
}

/// An event stream's token, `<counter epoch>-<number>`: the epoch's text
/// and the number; `None` for anything else.
pub(crate) fn parse_token(token: &str) -> Option<(&str, u64)> {
    let (epoch, number) = token.trim().split_once('-')?;
    Epoch::from_text(epoch)?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((epoch, number.parse().ok()?))
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

/// What a read is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadFor {
    /// A WebSocket resume or join: each stream from its own position.
    Positions,
    /// An event stream: every stream of the connection from one token
    /// (epoch text, number); `None` when it opens without one (only the
    /// current token is wanted). The streams' `since` is not used.
    Events(Option<(String, u64)>),
}

/// A resume's read, from the loop to the subscriber thread.
#[derive(Debug)]
pub(crate) struct Read {
    /// Names the answer.
    pub id: u64,
    /// At most [`MAX_STREAMS`] for positions; an event stream's everyone,
    /// user and rooms.
    pub streams: Vec<ReadStream>,
    /// How the streams are read.
    pub reads: ReadFor,
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

/// A read's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// One per stream asked.
    pub streams: Vec<StreamRead>,
    /// An event stream's read: the current token (`<epoch>-<number>`).
    pub token: Option<String>,
}

/// A read's answer, or why it failed.
pub(crate) type ReadResult = Result<Answer, String>;

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
                Ok(answer) => answer
                    .streams
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
                Ok(answer) => {
                    self.waiting.insert(read.id, (Ok(answer), bytes));
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
            let script = match &read.reads {
                ReadFor::Positions => READ_SCRIPT,
                ReadFor::Events(since) => {
                    keys.push(counter_key(&bridge.names));
                    args.push(self.new_epoch().as_str().as_bytes().to_vec());
                    let (epoch, number) = since.clone().unwrap_or_default();
                    args.push(epoch.into_bytes());
                    args.push(number.to_string().into_bytes());
                    EVENTS_SCRIPT
                }
            };
            let most = match read.reads {
                ReadFor::Positions => MAX_STREAMS,
                ReadFor::Events(_) => MAX_EVENT_STREAMS,
            };
            for stream in read.streams.iter().take(most) {
                let (meta, entries) = keys_of(&bridge.names, &stream.audience);
                keys.push(meta);
                keys.push(entries);
                args.push(self.new_epoch().as_str().as_bytes().to_vec());
                if read.reads != ReadFor::Positions {
                    continue;
                }
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
                .arg(script)
                .arg(keys.len())
                .arg(keys)
                .arg(args);
        }
        let Some(con) = self.con.as_mut() else {
            return Ok(Vec::new());
        };
        pipe.query(con)
    }

    fn new_epoch(&mut self) -> Epoch {
        self.epochs += 1;
        new_epoch(&self.random, self.epochs)
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
    let mut streams = streams.into_iter();
    let (token, most) = match read.reads {
        ReadFor::Positions => (None, MAX_STREAMS),
        ReadFor::Events(_) => {
            let epoch = match streams.next() {
                Some(Value::BulkString(bytes)) => String::from_utf8(bytes).ok(),
                _ => None,
            };
            let (Some(epoch), Some(Value::Int(number))) = (epoch, streams.next()) else {
                return Err("an event stream's read lacks the counter".to_owned());
            };
            let token = format!("{epoch}-{number}");
            if parse_token(&token).is_none() {
                return Err(
                    "the counter in Redis has an epoch this server does not write".to_owned(),
                );
            }
            (Some(token), MAX_EVENT_STREAMS)
        }
    };
    if streams.len() != read.streams.len().min(most) {
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
        // Positions: last offset, status; events: status, first offset.
        let (Some(Value::Int(a)), Some(Value::Int(b))) = (fields.next(), fields.next()) else {
            return Err("a read's reply lacks the offset or status".to_owned());
        };
        let (offset, status) = match read.reads {
            ReadFor::Positions => (a, b),
            ReadFor::Events(_) => (b, a),
        };
        let offset = u64::try_from(offset).map_err(|_| "a negative offset in Redis".to_owned())?;
        let first = match read.reads {
            ReadFor::Positions => asked.since.as_ref().map_or(0, |(_, offset)| *offset) + 1,
            ReadFor::Events(_) => offset,
        };
        let replay = match status {
            1 => stamp_all(bridge, &asked.audience, &epoch, first, fields),
            _ => None,
        };
        let last = match (&read.reads, &replay) {
            (ReadFor::Positions, _) => offset,
            (ReadFor::Events(_), Some(replay)) => first + replay.len() as u64 - 1,
            (ReadFor::Events(_), None) => 0,
        };
        out.push(StreamRead {
            epoch,
            last,
            replay,
        });
    }
    Ok(Answer {
        streams: out,
        token,
    })
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
        let with_token = format!("wshubh {e} 17 - {e}-99\nwshub1 n 1 2\n{{}}");
        let kept = split_kept(with_token.as_bytes()).unwrap().unwrap();
        assert_eq!(kept.token, Some(format!("{e}-99").as_str()));
        assert_eq!(kept.envelope, b"wshub1 n 1 2\n{}");
        assert_eq!(parse_token(&format!("{e}-99")), Some((e, 99)));
        for bad in ["", "-", "x-1", &format!("{e}-"), &format!("{e}-+1"), e] {
            assert_eq!(parse_token(bad), None, "{bad:?}");
        }
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
            &format!("wshubh {e} 1 - {e}-1 more\nx"),
            &format!("wshubh {e} 1 -"),
        ] {
            assert_eq!(split_kept(bad.as_bytes()), Some(Err(())), "{bad}");
        }
    }

    #[test]
    fn the_scripts_take_what_the_callers_pass() {
        // APPEND: 3 keys, 8 args; READ: 5 args then 3 per stream; EVENTS:
        // 8 args then 1 per stream.
        assert!(APPEND_SCRIPT.contains("ARGV[8]") && !APPEND_SCRIPT.contains("ARGV[9]"));
        assert!(APPEND_SCRIPT.contains("KEYS[3]") && !APPEND_SCRIPT.contains("KEYS[4]"));
        assert!(EVENTS_SCRIPT.contains("ARGV[8 + i]"));
        assert!(READ_SCRIPT.contains("local a = 5 + 3 * (i - 1)"));
        assert!(APPEND_SCRIPT.contains(KEPT_MAGIC));
        assert_eq!(except_text(None), "-");
    }
}
