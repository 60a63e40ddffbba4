//! Configuration: raw `config.yaml` text → a validated [`Config`].
//!
//! Every key is declared once, in its section's `section!` block below:
//! doc comment (with the default), type, default and the function that
//! checks a YAML value. The macro writes the public struct, its `Default`,
//! the raw struct that mirrors the YAML (unknown keys refused) and the
//! conversion that names the failing key. **A new key is one line** in its
//! section's block (plus a row in docs/configuration.md, which a unit test
//! checks); a new section is
//! one `section!` block and one line in each of [`Config`] and `RawConfig`.
//! Secrets are [`Secret`], whose `Debug` never shows the value, so every
//! settings struct derives `Debug`.
//!
//! Raw input never leaves this module: every value is checked here, so the
//! rest of the server can trust a `Config` without re-validating it. Plain
//! values and pure: reading `config.yaml` and the files it names
//! ([`Config::load`]) is `crate::startup`'s, which leaves the files'
//! contents in [`Config::files`] (a `crate::files` leaf) so nothing reads
//! them twice, and `crate::tls`, `crate::jwt` and `crate::client_ip` turn
//! their sections into runtime objects. The
//! leaf checks live in `values`; they use `crate::origin` to check
//! `allowed_origins` entries, so an entry that could never match is refused.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;
use serde_norway::Value;

use values::{
    parse_algorithms, parse_byte_rate, parse_client_ip_header, parse_count, parse_duration,
    parse_events, parse_flag, parse_host, parse_http_url, parse_join_mode, parse_level, parse_name,
    parse_origins, parse_path, parse_port, parse_prefix, parse_rate, parse_redis_url, parse_secret,
    parse_secret_url, parse_text, parse_trusted, parse_ttl,
};

pub use crate::client_ip::{ClientIpHeader, Trusted};
pub use crate::files::Files;

mod values;

/// The file read when no `--config` is given; its absence means built-in defaults.
pub const DEFAULT_CONFIG_PATH: &str = "./config.yaml";

/// The smallest useful `max_header_bytes`: below this not even a request
/// line with a short path fits.
const MIN_HEADER_BYTES: usize = 256;

/// A setting that must never be printed (tokens, keys, URLs with passwords).
///
/// `Debug` shows `""` when empty and `"<redacted>"` otherwise, so structs
/// holding one can derive `Debug` and still be logged safely. There is no
/// `Display`: reading the value takes an explicit [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.0.is_empty() { "" } else { "<redacted>" };
        fmt::Debug::fmt(shown, f)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Declares one section, one line per key:
///
/// ```text
/// /// doc, saying the default
/// pub key: Type = default, parse checker;
/// ```
///
/// and writes the public struct, its `Default`, the raw struct (each key an
/// optional YAML value; unknown keys refused by serde) and `into_config`,
/// which checks each present, non-null value and names `section.key` when
/// the check fails. Absent and `null` keys keep their default.
macro_rules! section {
    (
        $(#[$doc:meta])*
        pub struct $name:ident as $key:literal, raw $raw:ident, expecting $expecting:literal {
            $(
                $(#[$field_doc:meta])*
                pub $field:ident: $ty:ty = $default:expr, parse $parse:expr;
            )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $(
                $(#[$field_doc])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $($field: $default,)*
                }
            }
        }

        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields, default, expecting = $expecting)]
        struct $raw {
            $($field: Option<Value>,)*
        }

        impl $raw {
            /// Every key of the section, dotted as users write it.
            #[cfg(test)]
            const KEYS: &'static [&'static str] = &[$(concat!($key, ".", stringify!($field))),*];

            fn into_config(self, origin: &str) -> Result<$name, ConfigError> {
                let mut section = $name::default();
                $(
                    if let Some(value) = self.$field {
                        let key = concat!($key, ".", stringify!($field));
                        section.$field = ($parse)(&value).map_err(|m| invalid(origin, key, m))?;
                    }
                )*
                Ok(section)
            }
        }
    };
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// `app:` — the integrated HTTP server.
    pub app: AppConfig,
    /// `log:` — logging.
    pub log: LogConfig,
    /// `websocket:` — WebSocket sessions, limits and timeouts.
    pub websocket: WebSocketConfig,
    /// `jwt:` — token checks on connect.
    pub jwt: JwtConfig,
    /// `webhooks:` — presence events for your backend.
    pub webhooks: WebhooksConfig,
    /// `cluster:` — several nodes over Redis (docs/protocol.md section 10).
    pub cluster: ClusterConfig,
    /// `tls:` — the listener speaks TLS (docs/protocol.md section 8).
    pub tls: TlsConfig,
    /// `history:` — messages kept per audience for resuming sessions.
    pub history: HistoryConfig,
    /// `rooms:` — who may join, presence events (docs/protocol.md section 11).
    pub rooms: RoomsConfig,
    /// Not a section: what [`Config::load`] read of the files named above,
    /// so that the server builds from it rather than reading them again
    /// (docs/embedding.md, "When the files are read"). Empty in a config
    /// made in code or by [`Config::from_yaml_str`]; `==` ignores it.
    // Public because a private field would forbid `Config { app,
    // ..Config::default() }` outside this crate.
    pub files: Files,
}

/// The YAML document: each section optional.
#[derive(serde::Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a mapping of sections (app, log, websocket, jwt, webhooks, cluster, tls, history, rooms)"
)]
struct RawConfig {
    app: Option<RawApp>,
    log: Option<RawLog>,
    websocket: Option<RawWebSocket>,
    jwt: Option<RawJwt>,
    webhooks: Option<RawWebhooks>,
    cluster: Option<RawCluster>,
    tls: Option<RawTls>,
    history: Option<RawHistory>,
    rooms: Option<RawRooms>,
}

impl RawConfig {
    /// Every key of every section (docs/configuration.md has a row for each).
    #[cfg(test)]
    fn keys() -> impl Iterator<Item = &'static str> {
        [
            RawApp::KEYS,
            RawLog::KEYS,
            RawWebSocket::KEYS,
            RawJwt::KEYS,
            RawWebhooks::KEYS,
            RawCluster::KEYS,
            RawTls::KEYS,
            RawHistory::KEYS,
            RawRooms::KEYS,
        ]
        .into_iter()
        .flatten()
        .copied()
    }

    fn into_config(self, origin: &str) -> Result<Config, ConfigError> {
        Ok(Config {
            app: self.app.unwrap_or_default().into_config(origin)?,
            log: self.log.unwrap_or_default().into_config(origin)?,
            websocket: self.websocket.unwrap_or_default().into_config(origin)?,
            jwt: self.jwt.unwrap_or_default().into_config(origin)?,
            webhooks: self.webhooks.unwrap_or_default().into_config(origin)?,
            cluster: self.cluster.unwrap_or_default().into_config(origin)?,
            tls: self.tls.unwrap_or_default().into_config(origin)?,
            history: self.history.unwrap_or_default().into_config(origin)?,
            rooms: self.rooms.unwrap_or_default().into_config(origin)?,
            files: Files::default(),
        })
    }
}

section! {
    /// `app:` — the integrated HTTP server.
    pub struct AppConfig as "app", raw RawApp, expecting "a mapping of app settings" {
        /// Address both modes bind. Default `"0.0.0.0"`.
        pub host: String = "0.0.0.0".to_owned(), parse parse_host;
        /// Integrated-mode port (0 = ephemeral). Default `8889`.
        pub port: u16 = 8889, parse parse_port;
        /// Integrated mode serves the demo page at `GET /`. Default `true`.
        pub demo: bool = true, parse parse_flag;
        /// Bind with `SO_REUSEPORT`, so several nodes on one machine share the
        /// port and the kernel spreads connections over them. Default `false`.
        pub reuse_port: bool = false, parse parse_flag;
        /// CIDR blocks (or single addresses) of the proxies whose forwarding
        /// headers and PROXY headers are believed. Default `[]`: none, the
        /// client is the TCP peer.
        pub trusted_proxies: Trusted = Trusted::default(), parse parse_trusted;
        /// The header trusted proxies name the client in: `x-forwarded-for`,
        /// `forwarded` (RFC 7239) or `x-real-ip`. Default `x-forwarded-for`.
        pub client_ip_header: ClientIpHeader = ClientIpHeader::XForwardedFor,
            parse parse_client_ip_header;
        /// Every connection starts with a PROXY protocol header (v1 or v2)
        /// from a trusted proxy; needs `trusted_proxies`. Default `false`.
        pub proxy_protocol: bool = false, parse parse_flag;
    }
}

section! {
    /// `log:` — logging.
    pub struct LogConfig as "log", raw RawLog, expecting "a mapping of log settings" {
        /// Maximum level logged; `RUST_LOG` overrides it (see
        /// [`Config::effective_log_level`]). Default `info`.
        pub level: LevelFilter = LevelFilter::Info, parse parse_level;
    }
}

section! {
    /// `websocket:` — WebSocket sessions, limits and timeouts.
    pub struct WebSocketConfig as "websocket", raw RawWebSocket,
        expecting "a mapping of websocket settings"
    {
        /// Integrated mode serves `/api/ws/*` (404 when false). Default `true`.
        pub enable: bool = true, parse parse_flag;
        /// Standalone-mode port (0 = ephemeral). Default `8081`.
        pub port: u16 = 8081, parse parse_port;
        /// Open sessions allowed; the next upgrade gets 503. Default `10000`.
        pub max_connections: usize = 10_000, parse |v| parse_count(v, 1);
        /// Interval between server Pings. Default 54 s; always < `pong_wait`.
        pub ping_period: Duration = Duration::from_secs(54), parse parse_duration;
        /// A client silent (no frame at all) this long is closed. Default 60 s.
        pub pong_wait: Duration = Duration::from_secs(60), parse parse_duration;
        /// A pending write making no progress this long closes the session. Default 10 s.
        pub write_wait: Duration = Duration::from_secs(10), parse parse_duration;
        /// Largest reassembled client message in bytes; larger gets Close 1009.
        /// Also the largest REST body (else 413). Default `524288`.
        pub max_message_size: usize = 524_288, parse |v| parse_count(v, 1);
        /// Queued outbound messages per session; over it: Close 1013. Default `256`.
        pub message_buffer_size: usize = 256, parse |v| parse_count(v, 1);
        /// Queued outbound bytes per session; over it: Close 1013. Default `1048576`.
        pub max_buffered_bytes: usize = 1_048_576, parse |v| parse_count(v, 1);
        /// Deadline for a complete HTTP request after accept or the previous
        /// response. Default 10 s.
        pub handshake_timeout: Duration = Duration::from_secs(10), parse parse_duration;
        /// Largest request head (request line, headers, final CRLF); larger gets
        /// 431. Default `16384`, at least 256.
        pub max_header_bytes: usize = 16_384, parse |v| parse_count(v, MIN_HEADER_BYTES);
        /// On SIGINT/SIGTERM, how long to wait for clients to answer Close 1001. Default 5 s.
        pub shutdown_timeout: Duration = Duration::from_secs(5), parse parse_duration;
        /// Serve `/api/ws/echo` (conformance and benchmarks). Default `false`.
        pub echo: bool = false, parse parse_flag;
        /// Non-empty: REST push/status and `/metrics` need
        /// `Authorization: Bearer <admin_token>`. Default `""` (open).
        pub admin_token: Secret = Secret::default(), parse parse_secret;
        /// Non-empty: an upgrade whose `Origin` is not listed exactly gets 403.
        /// Default `[]` (any origin).
        pub allowed_origins: Vec<String> = Vec::new(), parse parse_origins;
        /// Connections not (yet) upgraded (REST clients, handshakes in
        /// progress); the next one gets 503 and is closed. Default `1024`.
        pub max_http_connections: usize = 1024, parse |v| parse_count(v, 1);
        /// Longest user id (query or JWT) and room name in bytes; longer gets
        /// 400 at the upgrade or an error reply on the socket. Default `128`.
        pub max_id_bytes: usize = 128, parse |v| parse_count(v, 1);
        /// Rooms one session may be in; the next `join` gets an error reply.
        /// Default `64`.
        pub max_rooms_per_session: usize = 64, parse |v| parse_count(v, 1);
        /// Deepest nesting of arrays and objects in a client message or REST
        /// body (the message object itself is level 1); deeper gets an error
        /// reply or 400. Default `32`.
        pub max_json_depth: usize = 32, parse |v| parse_count(v, 1);
        /// Client messages per second per session, with a burst of as many;
        /// over it a message is dropped with an error reply. `0` is off. Default `0`.
        pub max_messages_per_second: u32 = 0, parse parse_rate;
        /// Bytes of client data messages per second per session, charged by
        /// their inflated size, with a burst of as many; over it a message is
        /// dropped with an error reply. `0` is off. Default `0`.
        pub max_bytes_per_second: usize = 0, parse parse_byte_rate;
        /// Clients may broadcast (a message with neither `room` nor `to`); when
        /// false such a message gets an error reply. Default `true`.
        pub client_broadcast: bool = true, parse parse_flag;
        /// Accept permessage-deflate (RFC 7692) when a client offers it.
        /// Default `false`: never negotiated.
        pub compression: bool = false, parse parse_flag;
        /// Outbound messages shorter than this many bytes go out uncompressed
        /// even to sessions that negotiated compression. Default `128`.
        pub compression_min_bytes: usize = 128, parse |v| parse_count(v, 0);
        /// Open connections (HTTP and WebSocket) per client address, IPv6
        /// per /64; the next gets 503. `0` is off. Default `0`.
        pub max_connections_per_ip: usize = 0, parse |v| parse_count(v, 0);
    }
}

section! {
    /// `jwt:` — token checks on connect (docs/security.md).
    /// Tokens are looked at once any key is set: `secret`, `public_key` or
    /// `jwks_url`.
    pub struct JwtConfig as "jwt", raw RawJwt, expecting "a mapping of jwt settings" {
        /// Non-empty: the HMAC key for HS256/384/512 tokens. Default `""`.
        pub secret: Secret = Secret::default(), parse parse_secret;
        /// A connect without a valid token gets 401; needs a key. Default `false`.
        pub required: bool = false, parse parse_flag;
        /// The only algorithms accepted. Default `[HS256]`.
        pub algorithms: Vec<String> = vec!["HS256".to_owned()], parse parse_algorithms;
        /// PEM public key file (RSA, EC or Ed25519) for the asymmetric
        /// algorithms, read at start. Default `""`.
        pub public_key: String = String::new(), parse parse_path;
        /// The identity provider's JWKS URL (http or https), fetched at
        /// start and refreshed off the event loop. Default `""`.
        pub jwks_url: String = String::new(), parse parse_http_url;
        /// Non-empty: `iss` must equal it. Default `""`.
        pub issuer: String = String::new(), parse parse_text;
        /// Non-empty: `aud` must be it or a list containing it. Default `""`.
        pub audience: String = String::new(), parse parse_text;
    }
}

section! {
    /// `cluster:` — several wshub nodes acting as one server over Redis.
    pub struct ClusterConfig as "cluster", raw RawCluster,
        expecting "a mapping of cluster settings"
    {
        /// Redis URL, e.g. `redis://127.0.0.1:6379/0` (a secret: it may hold a
        /// password). Default `""`: a single node, no cluster code runs.
        pub redis: Secret = Secret::default(), parse parse_redis_url;
        /// This node's name in presence, unique per cluster. Default `""`: the
        /// host name and process id.
        pub node_id: String = String::new(), parse parse_name;
        /// A node that stops refreshing its presence is forgotten after this.
        /// Default 30 s, at least 1 s.
        pub presence_ttl: Duration = Duration::from_secs(30), parse parse_ttl;
        /// Nodes with the same Redis and prefix form one cluster; channels and
        /// keys start with it. Default `"wshub"`.
        pub channel_prefix: String = "wshub".to_owned(), parse parse_prefix;
        /// Shared secret: envelopes on Redis carry its HMAC and unsigned or
        /// wrongly signed ones are dropped. Default `""`: not signed.
        pub secret: Secret = Secret::default(), parse parse_secret;
        /// Bytes of messages queued for Redis, and bytes received from it
        /// not yet delivered (each way). Past it a publish is refused
        /// ("cluster unavailable") and a received message dropped (counted).
        /// Default 64 MiB, at least 1 MiB.
        pub max_queue_bytes: usize = 64 << 20, parse |v| parse_count(v, 1 << 20);
    }
}

section! {
    /// `tls:` — certificate and key files; both empty: plain TCP. The files
    /// are read by `crate::tls` once at start (at config load in the
    /// binary, at bind when embedding) and again on SIGHUP.
    pub struct TlsConfig as "tls", raw RawTls, expecting "a mapping of tls settings" {
        /// PEM certificate chain file, leaf first. Default `""`.
        pub cert: String = String::new(), parse parse_path;
        /// PEM private key file (PKCS#8, PKCS#1 or SEC1). Default `""`.
        pub key: String = String::new(), parse parse_path;
    }
}

section! {
    /// `history:` — what is kept so a session can resume without losing
    /// messages (docs/history.md). Off while `size` is 0.
    pub struct HistoryConfig as "history", raw RawHistory,
        expecting "a mapping of history settings"
    {
        /// Messages kept per stream (everyone, each user, each room); 0 turns
        /// history off and nothing changes. Default `0`.
        pub size: usize = 0, parse |v| parse_count(v, 0);
        /// Entries older than this are dropped. Default 2 min, at least 1 s.
        pub ttl: Duration = Duration::from_secs(120), parse parse_ttl;
        /// Bytes of all entries of this node together; the oldest go first.
        /// Default `67108864` (64 MiB), at least 1024.
        pub max_bytes: usize = 64 << 20, parse |v| parse_count(v, 1024);
        /// How long a stream's epoch and last offset outlive its entries.
        /// Default 24 h, at least 1 s.
        pub meta_ttl: Duration = Duration::from_secs(24 * 3600), parse parse_ttl;
    }
}

impl HistoryConfig {
    /// Whether history is kept.
    pub fn enabled(&self) -> bool {
        self.size > 0
    }
}

section! {
    /// `rooms:` — who may join a room, and presence events.
    pub struct RoomsConfig as "rooms", raw RawRooms, expecting "a mapping of rooms settings" {
        /// Who may join a room: `open` (anyone), `claims` (the connect
        /// token's `rooms` claim) or `token` (the claim, or a join token).
        /// Default `open`; `claims` and `token` need a JWT key.
        pub join: JoinMode = JoinMode::Open, parse parse_join_mode;
        /// Members receive `joined` / `left` when a user's first session
        /// enters a room or its last one leaves. Default `false`.
        pub presence: bool = false, parse parse_flag;
    }
}

/// `rooms.join`: who may join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JoinMode {
    /// Any session may join any room (the default).
    #[default]
    Open,
    /// Only rooms the connect token's `rooms` claim grants.
    Claims,
    /// As `Claims`, or with a join token for that user and room.
    Token,
}

impl TlsConfig {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }
}

section! {
    /// `webhooks:` — presence events POSTed to your backend (docs/webhooks.md).
    pub struct WebhooksConfig as "webhooks", raw RawWebhooks,
        expecting "a mapping of webhooks settings"
    {
        /// `http://` or `https://` URL to POST to. Default `""`: off.
        pub url: Secret = Secret::default(), parse parse_secret_url;
        /// HMAC-SHA256 key of `X-Wshub-Signature`. Default `""`.
        pub secret: Secret = Secret::default(), parse parse_secret;
        /// The events sent. Default `[user_online, user_offline]`.
        pub events: Vec<String> = vec!["user_online".to_owned(), "user_offline".to_owned()],
            parse parse_events;
        /// `user_offline` (and `room_vacated`) only after this long gone. Default 5 s.
        pub offline_delay: Duration = Duration::from_secs(5), parse parse_duration;
        /// One POST may take this long. Default 5 s.
        pub timeout: Duration = Duration::from_secs(5), parse parse_duration;
    }
}

impl JwtConfig {
    /// Whether any key is set, so that tokens are verified.
    pub fn has_key(&self) -> bool {
        !self.secret.is_empty() || !self.public_key.is_empty() || !self.jwks_url.is_empty()
    }
}

impl ClusterConfig {
    /// Whether a Redis URL is set.
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }
}

/// Where a configuration came from, for the caller to log once its
/// logger (whose level the config decides) is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Read from this file.
    File(PathBuf),
    /// No `--config` and no `./config.yaml`: built-in defaults.
    BuiltInDefaults,
}

/// Why a configuration was refused. `Display` is one line naming the file
/// and, where there is one, the dotted key.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing explicit file, permissions, not UTF-8).
    Read {
        /// The file as named by the user.
        file: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The text is not valid YAML.
    Yaml {
        /// The file as named by the user.
        file: String,
        /// 1-based line and column of the problem, when the parser knows it.
        location: Option<(usize, usize)>,
        /// The parser's message, on one line, without its location.
        message: String,
    },
    /// A key this version does not know (often a typo).
    UnknownKey {
        /// The file as named by the user.
        file: String,
        /// Dotted path of the key, e.g. `websocket.foo`.
        key: String,
    },
    /// A known key with a wrong type or a value out of range.
    Invalid {
        /// The file as named by the user.
        file: String,
        /// Dotted path of the key; empty for the document itself.
        key: String,
        /// What was expected and what was found (never a secret's value).
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { file, source } => write!(f, "{file}: cannot read: {source}"),
            Self::Yaml {
                file,
                location: Some((line, column)),
                message,
            } => write!(
                f,
                "{file}: invalid YAML at line {line} column {column}: {message}"
            ),
            Self::Yaml {
                file,
                location: None,
                message,
            } => write!(f, "{file}: invalid YAML: {message}"),
            // Debug quoting keeps a key with a line break on one line.
            Self::UnknownKey { file, key } => write!(f, "{file}: unknown key {key:?}"),
            Self::Invalid { file, key, message } if key.is_empty() => {
                write!(f, "{file}: {message}")
            }
            Self::Invalid { file, key, message } => write!(f, "{file}: {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Config {
    /// Parse YAML text; `origin` is the file name used in error messages.
    ///
    /// Empty text (or only comments) gives the defaults; absent keys and
    /// `null` values keep their defaults.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let value: Value = serde_norway::from_str(text).map_err(|e| yaml_error(origin, &e))?;
        if value.is_null() {
            return Ok(Config::default());
        }
        let raw: RawConfig =
            serde_path_to_error::deserialize(value).map_err(|e| shape_error(origin, &e))?;
        let config = raw.into_config(origin)?;
        config.check_consistency(origin)?;
        Ok(config)
    }

    /// The level to log at: `RUST_LOG`, when it is a plain level name
    /// (`off`, `error`, `warn`, `info`, `debug`, `trace`, any case), wins
    /// over `log.level`; anything else in `RUST_LOG` is ignored.
    pub fn effective_log_level(&self, rust_log: Option<&str>) -> LevelFilter {
        rust_log
            .and_then(|s| LevelFilter::from_str(s.trim()).ok())
            .unwrap_or(self.log.level)
    }

    /// Rules that span several keys; single values were checked while parsing.
    fn check_consistency(&self, origin: &str) -> Result<(), ConfigError> {
        let ws = &self.websocket;
        if ws.ping_period >= ws.pong_wait {
            return Err(invalid(
                origin,
                "websocket.ping_period",
                format!(
                    "must be shorter than websocket.pong_wait ({}), or healthy idle clients \
                     are dropped; got {}",
                    show_duration(ws.pong_wait),
                    show_duration(ws.ping_period)
                ),
            ));
        }
        if self.app.proxy_protocol && self.app.trusted_proxies.is_empty() {
            return Err(invalid(
                origin,
                "app.proxy_protocol",
                "true needs app.trusted_proxies (the balancers allowed to send the header), \
                 or every connection would be refused"
                    .to_owned(),
            ));
        }
        let jwt = &self.jwt;
        if jwt.required && !jwt.has_key() {
            return Err(invalid(
                origin,
                "jwt.required",
                "true needs a key (jwt.secret, jwt.public_key or jwt.jwks_url), or no connect \
                 could succeed"
                    .to_owned(),
            ));
        }
        let jwt = &self.jwt;
        let no_key = jwt.secret.is_empty() && jwt.public_key.is_empty() && jwt.jwks_url.is_empty();
        if self.rooms.join != JoinMode::Open && no_key {
            return Err(invalid(
                origin,
                "rooms.join",
                "claims and token need a JWT key (jwt.secret, jwt.public_key or jwt.jwks_url) \
                 to check tokens with"
                    .to_owned(),
            ));
        }
        let tls = &self.tls;
        if tls.cert.is_empty() != tls.key.is_empty() {
            let (missing, set) = if tls.key.is_empty() {
                ("tls.key", "tls.cert")
            } else {
                ("tls.cert", "tls.key")
            };
            return Err(invalid(
                origin,
                missing,
                format!("must be set when {set} is (TLS needs both files)"),
            ));
        }
        Ok(())
    }
}

fn invalid(origin: &str, key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        file: origin.to_owned(),
        key: key.to_owned(),
        message,
    }
}

/// A syntax error, on one line, with the location moved to the front.
fn yaml_error(origin: &str, e: &serde_norway::Error) -> ConfigError {
    let location = e.location().map(|l| (l.line(), l.column()));
    let mut message = e.to_string().replace(['\r', '\n'], " ");
    if let Some((line, column)) = location {
        message = message.replacen(&format!(" at line {line} column {column}"), "", 1);
    }
    ConfigError::Yaml {
        file: origin.to_owned(),
        location,
        message,
    }
}

/// An unknown key or a bad value, found while mapping YAML onto the raw structs.
fn shape_error(origin: &str, e: &serde_path_to_error::Error<serde_norway::Error>) -> ConfigError {
    let path = e.path().to_string();
    let key = if path == "." { String::new() } else { path };
    let message = e.inner().to_string().replace(['\r', '\n'], " ");
    // serde's wording for `deny_unknown_fields`; the path already ends with the key.
    if message.starts_with("unknown field `") {
        return ConfigError::UnknownKey {
            file: origin.to_owned(),
            key,
        };
    }
    ConfigError::Invalid {
        file: origin.to_owned(),
        key,
        message,
    }
}

/// Whole seconds as `54s`, anything finer as `500ms`.
fn show_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests;
