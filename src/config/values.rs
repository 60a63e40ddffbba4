//! Leaf checks: one YAML value → one checked setting, or a message saying
//! what was expected and what was found (never a secret's value). Pure;
//! uses [`crate::auth`] for origin entries and `redis` to check a URL
//! without connecting.

use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;
use serde_norway::Value;

use super::{JoinMode, Secret};
use crate::client_ip::{ClientIpHeader, Trusted};
use crate::origin;

/// Durations above this are refused: the event loop adds them to `Instant`s,
/// and an absurd value would overflow instead of meaning "never".
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The highest `max_messages_per_second`: the token bucket counts in
/// thousandths of a message per millisecond, which this keeps far from overflow.
const MAX_RATE: u32 = 1_000_000;

/// The highest `max_bytes_per_second` (1 TiB/s, far above any link): the
/// byte bucket counts in thousandths of a byte per millisecond in a `u64`.
const MAX_BYTE_RATE: u64 = 1 << 40;

/// `cluster.presence_ttl`: a duration of at least one second.
pub(super) fn parse_ttl(v: &Value) -> Result<Duration, String> {
    match parse_duration(v)? {
        d if d < Duration::from_secs(1) => Err(format!("must be at least 1s, got {}", shown(v))),
        d => Ok(d),
    }
}

/// `cluster.channel_prefix`: a non-empty name.
pub(super) fn parse_prefix(v: &Value) -> Result<String, String> {
    match parse_name(v)? {
        s if s.is_empty() => Err("must not be empty".to_owned()),
        s => Ok(s),
    }
}

/// Empty, or a URL the Redis client accepts (checked without connecting).
pub(super) fn parse_redis_url(v: &Value) -> Result<Secret, String> {
    let Some(url) = v.as_str() else {
        return Err(format!(
            "expected a URL such as \"redis://127.0.0.1:6379/0\", got {}",
            kind(v)
        ));
    };
    if url.is_empty() || redis::Client::open(url).is_ok() {
        return Ok(url.into());
    }
    // The URL may hold a password: never echo it.
    Err("expected a URL such as \"redis://127.0.0.1:6379/0\" (redis:// or unix://)".to_owned())
}

/// The JWT algorithms `jwt.algorithms` may list (`none` is not one).
pub(super) const JWT_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// `jwt.algorithms`: a non-empty list of names from [`JWT_ALGORITHMS`]
/// (exact case, as they appear in token headers).
pub(super) fn parse_algorithms(v: &Value) -> Result<Vec<String>, String> {
    let expected = || {
        format!(
            "expected a list of algorithms such as [HS256, RS256], got {}",
            shown(v)
        )
    };
    let items = v.as_sequence().ok_or_else(expected)?;
    if items.is_empty() {
        return Err("must list at least one algorithm".to_owned());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_str() {
            Some(s) if JWT_ALGORITHMS.contains(&s) => Ok(s.to_owned()),
            _ => Err(format!(
                "item {i}: expected one of {}, got {}",
                JWT_ALGORITHMS.join(" "),
                shown(item)
            )),
        })
        .collect()
}

/// Empty, or an `http://` or `https://` URL with a host. Never echoed: it
/// may carry credentials.
pub(super) fn parse_http_url(v: &Value) -> Result<String, String> {
    let Some(url) = v.as_str() else {
        return Err(format!("expected an http(s) URL, got {}", kind(v)));
    };
    if url.is_empty() {
        return Ok(String::new());
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with(['/', '?', '#'])
                && !url.contains(char::is_whitespace) =>
        {
            Ok(url.to_owned())
        }
        _ => Err("expected an http:// or https:// URL with a host".to_owned()),
    }
}

/// `webhooks.url`: as [`parse_http_url`], kept secret (a URL may carry a token).
pub(super) fn parse_secret_url(v: &Value) -> Result<Secret, String> {
    parse_http_url(v).map(Secret::from)
}

/// `webhooks.events`: a list of event kinds (it may be empty: none sent).
pub(super) fn parse_events(v: &Value) -> Result<Vec<String>, String> {
    const KINDS: [&str; 4] = [
        "user_online",
        "user_offline",
        "room_occupied",
        "room_vacated",
    ];
    let items = v.as_sequence().ok_or_else(|| {
        format!(
            "expected a list such as [user_online, user_offline], got {}",
            shown(v)
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_str() {
            Some(s) if KINDS.contains(&s) => Ok(s.to_owned()),
            _ => Err(format!(
                "item {i}: expected one of {}, got {}",
                KINDS.join(" "),
                shown(item)
            )),
        })
        .collect()
}

/// Any string (an issuer or audience name).
pub(super) fn parse_text(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string, got {}", shown(v)))
}

/// A node id or channel prefix: printable, no spaces (they go into Redis
/// keys, channel names and message headers), at most 128 bytes.
pub(super) fn parse_name(v: &Value) -> Result<String, String> {
    match v.as_str() {
        Some(s)
            if s.len() <= 128
                && s.chars().all(|c| {
                    c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
                }) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(format!(
            "expected a name without spaces or control characters (at most 128 bytes), got {}",
            shown(v)
        )),
    }
}

/// A found value for an error message, on one line.
pub(super) fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => kind(v).to_owned(),
    }
}

/// A found value's kind only, for secrets.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// `rooms.join`: `open`, `claims` or `token`.
pub(super) fn parse_join_mode(v: &Value) -> Result<JoinMode, String> {
    match v.as_str() {
        Some("open") => Ok(JoinMode::Open),
        Some("claims") => Ok(JoinMode::Claims),
        Some("token") => Ok(JoinMode::Token),
        _ => Err(format!("expected open, claims or token, got {}", shown(v))),
    }
}

pub(super) fn parse_flag(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, got {}", shown(v)))
}

pub(super) fn parse_host(v: &Value) -> Result<String, String> {
    match v.as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(format!(
            "expected an address to bind such as \"0.0.0.0\", got {}",
            shown(v)
        )),
    }
}

/// A file name; empty means unset.
pub(super) fn parse_path(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a file name, got {}", shown(v)))
}

/// Any string; a wrong type is described, never shown.
pub(super) fn parse_secret(v: &Value) -> Result<Secret, String> {
    v.as_str()
        .map(Secret::from)
        .ok_or_else(|| format!("expected a string, got {}", kind(v)))
}

/// Digits only: `u64::from_str` would also take a sign.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub(super) fn parse_port(v: &Value) -> Result<u16, String> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => digits(s),
        _ => None,
    };
    n.and_then(|n| u16::try_from(n).ok()).ok_or_else(|| {
        format!(
            "expected a port 0-65535 (integer or string of digits), got {}",
            shown(v)
        )
    })
}

pub(super) fn parse_count(v: &Value, min: usize) -> Result<usize, String> {
    let n = v.as_u64().and_then(|n| usize::try_from(n).ok());
    match n {
        None => Err(format!("expected a non-negative integer, got {}", shown(v))),
        Some(n) if n < min => Err(format!("must be at least {min}, got {n}")),
        Some(n) => Ok(n),
    }
}

/// Messages per second: `0` (off) up to [`MAX_RATE`].
pub(super) fn parse_rate(v: &Value) -> Result<u32, String> {
    match v.as_u64() {
        None => Err(format!(
            "expected a non-negative integer (0 = off), got {}",
            shown(v)
        )),
        Some(n) if n > u64::from(MAX_RATE) => Err(format!("must be at most {MAX_RATE}, got {n}")),
        Some(n) => Ok(n as u32),
    }
}

/// Bytes per second: `0` (off) up to [`MAX_BYTE_RATE`].
pub(super) fn parse_byte_rate(v: &Value) -> Result<usize, String> {
    match v.as_u64() {
        None => Err(format!(
            "expected a non-negative integer (0 = off), got {}",
            shown(v)
        )),
        Some(n) if n > MAX_BYTE_RATE => Err(format!("must be at most {MAX_BYTE_RATE}, got {n}")),
        Some(n) => Ok(n as usize),
    }
}

pub(super) fn parse_duration(v: &Value) -> Result<Duration, String> {
    let parsed = match v {
        Value::Number(n) => n.as_u64().map(Duration::from_secs),
        Value::String(s) => duration_from_str(s),
        _ => None,
    };
    match parsed {
        None => Err(format!(
            "expected a duration such as \"500ms\", \"54s\", \"2m\", \"1h\" or whole seconds, got {}",
            shown(v)
        )),
        Some(d) if d.is_zero() => Err(format!("must be greater than zero, got {}", shown(v))),
        Some(d) if d > MAX_DURATION => Err(format!("must be at most 24h, got {}", shown(v))),
        Some(d) => Ok(d),
    }
}

/// `"500ms"`, `"54s"`, `"2m"`, `"1h"` or `"54"` (seconds).
fn duration_from_str(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n = digits(number)?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

pub(super) fn parse_level(v: &Value) -> Result<LevelFilter, String> {
    v.as_str()
        .and_then(|s| LevelFilter::from_str(s).ok())
        .ok_or_else(|| {
            format!(
                "expected one of off, error, warn, info, debug, trace, got {}",
                shown(v)
            )
        })
}

pub(super) fn parse_origins(v: &Value) -> Result<Vec<String>, String> {
    let not_a_list = || {
        format!(
            "expected a list of origins such as [\"https://example.com\"], got {}",
            shown(v)
        )
    };
    let items = v.as_sequence().ok_or_else(not_a_list)?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_str() {
            Some(s) if origin::entry_valid(s) => Ok(s.to_owned()),
            _ => Err(format!(
                "item {i}: expected an origin such as \"https://example.com:8443\" \
                 (scheme://host[:port], no path) or \"null\", got {}",
                shown(item)
            )),
        })
        .collect()
}

/// `app.trusted_proxies`: a list of CIDR blocks or addresses.
pub(super) fn parse_trusted(v: &Value) -> Result<Trusted, String> {
    let not_a_list = || {
        format!(
            "expected a list of CIDR blocks such as [\"10.0.0.0/8\", \"::1/128\"], got {}",
            shown(v)
        )
    };
    let items = v.as_sequence().ok_or_else(not_a_list)?;
    let entries = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .ok_or_else(|| format!("item {i}: expected a CIDR block, got {}", shown(item)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Trusted::parse(&entries)
}

/// `app.client_ip_header`: one of the three header names.
pub(super) fn parse_client_ip_header(v: &Value) -> Result<ClientIpHeader, String> {
    v.as_str()
        .and_then(ClientIpHeader::from_name)
        .ok_or_else(|| {
            format!(
                "expected one of x-forwarded-for, forwarded, x-real-ip, got {}",
                shown(v)
            )
        })
}
