//! Configuration: raw `config.yaml` text → a validated [`Config`].
//!
//! Holds the public settings structs, their defaults (PROTOCOL.md section 2),
//! and the private raw structs that mirror the YAML. Raw input never leaves
//! this module: every value is checked here, so the rest of the server can
//! trust a `Config` without re-validating it. Touches the file system only in
//! [`Config::load`]; everything else is pure. Uses [`crate::auth`] to check
//! `allowed_origins` entries, so an entry that could never match is refused.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;
use serde::de::{Deserialize, Deserializer, Error as _};
use serde_norway::Value;

use crate::auth;

/// The file read when no `--config` is given; its absence means built-in defaults.
pub const DEFAULT_CONFIG_PATH: &str = "./config.yaml";

/// Durations above this are refused: the event loop adds them to `Instant`s,
/// and an absurd value would overflow instead of meaning "never".
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The smallest useful `max_header_bytes`: below this not even a request
/// line with a short path fits.
const MIN_HEADER_BYTES: usize = 256;

/// The highest `max_messages_per_second`: the token bucket counts in
/// thousandths of a message per millisecond, which this keeps far from overflow.
const MAX_RATE: u32 = 1_000_000;

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
    /// `cluster:` — several nodes over Redis (PROTOCOL.md section 10).
    pub cluster: ClusterConfig,
}

/// `app:` — the integrated HTTP server.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// Address both modes bind. Default `"0.0.0.0"`.
    pub host: String,
    /// Integrated-mode port (0 = ephemeral). Default `8889`.
    pub port: u16,
    /// Integrated mode serves the demo page at `GET /`. Default `true`.
    pub demo: bool,
    /// Bind with `SO_REUSEPORT`, so several nodes on one machine share the
    /// port and the kernel spreads connections over them. Default `false`.
    pub reuse_port: bool,
}

/// `cluster:` — several wshub nodes acting as one server over Redis.
#[derive(Clone, PartialEq)]
pub struct ClusterConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0`. Default `""`: a single
    /// node, no cluster code runs.
    pub redis: String,
    /// This node's name in presence, unique per cluster. Default `""`: the
    /// host name and process id.
    pub node_id: String,
    /// A node that stops refreshing its presence is forgotten after this.
    /// Default 30 s, at least 1 s.
    pub presence_ttl: Duration,
    /// Nodes with the same Redis and prefix form one cluster; channels and
    /// keys start with it. Default `"wshub"`.
    pub channel_prefix: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: String::new(),
            node_id: String::new(),
            presence_ttl: Duration::from_secs(30),
            channel_prefix: "wshub".to_owned(),
        }
    }
}

impl ClusterConfig {
    /// Whether a Redis URL is set.
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A Redis URL may carry a password.
        f.debug_struct("ClusterConfig")
            .field("redis", &redacted(&self.redis))
            .field("node_id", &self.node_id)
            .field("presence_ttl", &self.presence_ttl)
            .field("channel_prefix", &self.channel_prefix)
            .finish()
    }
}

/// `log:` — logging.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Maximum level logged; `RUST_LOG` overrides it (see
    /// [`Config::effective_log_level`]). Default `info`.
    pub level: LevelFilter,
}

/// `websocket:` — WebSocket sessions, limits and timeouts.
///
/// `Debug` is written by hand so that `admin_token` is never printed.
#[derive(Clone, PartialEq)]
pub struct WebSocketConfig {
    /// Integrated mode serves `/api/ws/*` (404 when false). Default `true`.
    pub enable: bool,
    /// Standalone-mode port (0 = ephemeral). Default `8081`.
    pub port: u16,
    /// Open sessions allowed; the next upgrade gets 503. Default `10000`.
    pub max_connections: usize,
    /// Interval between server Pings. Default 54 s; always < `pong_wait`.
    pub ping_period: Duration,
    /// A client silent (no frame at all) this long is closed. Default 60 s.
    pub pong_wait: Duration,
    /// A pending write making no progress this long closes the session. Default 10 s.
    pub write_wait: Duration,
    /// Largest reassembled client message in bytes; larger gets Close 1009.
    /// Also the largest REST body (else 413). Default `524288`.
    pub max_message_size: usize,
    /// Queued outbound messages per session; over it: Close 1013. Default `256`.
    pub message_buffer_size: usize,
    /// Queued outbound bytes per session; over it: Close 1013. Default `1048576`.
    pub max_buffered_bytes: usize,
    /// Deadline for a complete HTTP request after accept or the previous
    /// response. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest request head (request line, headers, final CRLF); larger gets
    /// 431. Default `16384`, at least 256.
    pub max_header_bytes: usize,
    /// On SIGINT/SIGTERM, how long to wait for clients to answer Close 1001. Default 5 s.
    pub shutdown_timeout: Duration,
    /// Serve `/api/ws/echo` (conformance and benchmarks). Default `false`.
    pub echo: bool,
    /// Non-empty: REST push/status and `/metrics` need
    /// `Authorization: Bearer <admin_token>`. Default `""` (open).
    pub admin_token: String,
    /// Non-empty: an upgrade whose `Origin` is not listed exactly gets 403.
    /// Default `[]` (any origin).
    pub allowed_origins: Vec<String>,
    /// Connections not (yet) upgraded (REST clients, handshakes in
    /// progress); the next one gets 503 and is closed. Default `1024`.
    pub max_http_connections: usize,
    /// Longest user id (query or JWT) and room name in bytes; longer gets
    /// 400 at the upgrade or an error reply on the socket. Default `128`.
    pub max_id_bytes: usize,
    /// Rooms one session may be in; the next `join` gets an error reply.
    /// Default `64`.
    pub max_rooms_per_session: usize,
    /// Deepest nesting of arrays and objects in a client message or REST
    /// body (the message object itself is level 1); deeper gets an error
    /// reply or 400. Default `32`.
    pub max_json_depth: usize,
    /// Client messages per second per session, with a burst of as many;
    /// over it a message is dropped with an error reply. `0` is off. Default `0`.
    pub max_messages_per_second: u32,
    /// Clients may broadcast (a message with neither `room` nor `to`); when
    /// false such a message gets an error reply. Default `true`.
    pub client_broadcast: bool,
}

/// `jwt:` — token checks on connect.
///
/// `Debug` is written by hand so that `secret` is never printed.
#[derive(Clone, PartialEq, Default)]
pub struct JwtConfig {
    /// Non-empty: HS256 tokens are verified on connect. Default `""` (no checks).
    pub secret: String,
    /// A connect without a valid token gets 401; needs a non-empty `secret`.
    /// Default `false`.
    pub required: bool,
}

/// Where a loaded [`Config`] came from, so the caller can log it once the
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

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".to_owned(),
            port: 8889,
            demo: true,
            reuse_port: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: LevelFilter::Info,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            enable: true,
            port: 8081,
            max_connections: 10_000,
            ping_period: Duration::from_secs(54),
            pong_wait: Duration::from_secs(60),
            write_wait: Duration::from_secs(10),
            max_message_size: 524_288,
            message_buffer_size: 256,
            max_buffered_bytes: 1_048_576,
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16_384,
            shutdown_timeout: Duration::from_secs(5),
            echo: false,
            admin_token: String::new(),
            allowed_origins: Vec::new(),
            max_http_connections: 1024,
            max_id_bytes: 128,
            max_rooms_per_session: 64,
            max_json_depth: 32,
            max_messages_per_second: 0,
            client_broadcast: true,
        }
    }
}

/// Shows whether a secret is set without showing it.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

impl fmt::Debug for WebSocketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketConfig")
            .field("enable", &self.enable)
            .field("port", &self.port)
            .field("max_connections", &self.max_connections)
            .field("ping_period", &self.ping_period)
            .field("pong_wait", &self.pong_wait)
            .field("write_wait", &self.write_wait)
            .field("max_message_size", &self.max_message_size)
            .field("message_buffer_size", &self.message_buffer_size)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("echo", &self.echo)
            .field("admin_token", &redacted(&self.admin_token))
            .field("allowed_origins", &self.allowed_origins)
            .field("max_http_connections", &self.max_http_connections)
            .field("max_id_bytes", &self.max_id_bytes)
            .field("max_rooms_per_session", &self.max_rooms_per_session)
            .field("max_json_depth", &self.max_json_depth)
            .field("max_messages_per_second", &self.max_messages_per_second)
            .field("client_broadcast", &self.client_broadcast)
            .finish()
    }
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &redacted(&self.secret))
            .field("required", &self.required)
            .finish()
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
        let config = raw.into_config();
        config.check_consistency(origin)?;
        Ok(config)
    }

    /// Load the configuration. `Some(path)`: that file must exist.
    /// `None`: [`DEFAULT_CONFIG_PATH`] if it exists, else built-in defaults.
    ///
    /// Logs nothing: the caller logs the returned [`ConfigSource`] once its
    /// logger runs at the configured level.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        Config::load_from(explicit, Path::new(DEFAULT_CONFIG_PATH))
    }

    /// [`Config::load`] with the default path passed in, so tests need not
    /// depend on the working directory.
    fn load_from(
        explicit: Option<&Path>,
        default: &Path,
    ) -> Result<(Config, ConfigSource), ConfigError> {
        let path = explicit.unwrap_or(default);
        let origin = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if explicit.is_none() && e.kind() == io::ErrorKind::NotFound => {
                return Ok((Config::default(), ConfigSource::BuiltInDefaults));
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    file: origin,
                    source,
                })
            }
        };
        let config = Config::from_yaml_str(&text, &origin)?;
        Ok((config, ConfigSource::File(path.to_path_buf())))
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
        if self.jwt.required && self.jwt.secret.is_empty() {
            return Err(invalid(
                origin,
                "jwt.required",
                "true needs a non-empty jwt.secret, or no connect could succeed".to_owned(),
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

// ---------------------------------------------------------------------------
// Raw YAML shape. Every field is optional; leaves are validated as they are
// deserialised so that serde_path_to_error can name the key that failed.
// ---------------------------------------------------------------------------

#[derive(serde::Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a mapping of sections (app, log, websocket, jwt, cluster)"
)]
struct RawConfig {
    app: Option<RawApp>,
    log: Option<RawLog>,
    websocket: Option<RawWebSocket>,
    jwt: Option<RawJwt>,
    cluster: Option<RawCluster>,
}

#[derive(serde::Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a mapping of cluster settings"
)]
struct RawCluster {
    #[serde(deserialize_with = "de_redis_url")]
    redis: Option<String>,
    #[serde(deserialize_with = "de_node_id")]
    node_id: Option<String>,
    #[serde(deserialize_with = "de_ttl")]
    presence_ttl: Option<Duration>,
    #[serde(deserialize_with = "de_prefix")]
    channel_prefix: Option<String>,
}

impl RawCluster {
    fn into_config(self, d: ClusterConfig) -> ClusterConfig {
        ClusterConfig {
            redis: self.redis.unwrap_or(d.redis),
            node_id: self.node_id.unwrap_or(d.node_id),
            presence_ttl: self.presence_ttl.unwrap_or(d.presence_ttl),
            channel_prefix: self.channel_prefix.unwrap_or(d.channel_prefix),
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of app settings")]
struct RawApp {
    #[serde(deserialize_with = "de_host")]
    host: Option<String>,
    #[serde(deserialize_with = "de_port")]
    port: Option<u16>,
    #[serde(deserialize_with = "de_flag")]
    demo: Option<bool>,
    #[serde(deserialize_with = "de_flag")]
    reuse_port: Option<bool>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of log settings")]
struct RawLog {
    #[serde(deserialize_with = "de_level")]
    level: Option<LevelFilter>,
}

#[derive(serde::Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a mapping of websocket settings"
)]
struct RawWebSocket {
    #[serde(deserialize_with = "de_flag")]
    enable: Option<bool>,
    #[serde(deserialize_with = "de_port")]
    port: Option<u16>,
    #[serde(deserialize_with = "de_count")]
    max_connections: Option<usize>,
    #[serde(deserialize_with = "de_duration")]
    ping_period: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    pong_wait: Option<Duration>,
    #[serde(deserialize_with = "de_duration")]
    write_wait: Option<Duration>,
    #[serde(deserialize_with = "de_count")]
    max_message_size: Option<usize>,
    #[serde(deserialize_with = "de_count")]
    message_buffer_size: Option<usize>,
    #[serde(deserialize_with = "de_count")]
    max_buffered_bytes: Option<usize>,
    #[serde(deserialize_with = "de_duration")]
    handshake_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_header_bytes")]
    max_header_bytes: Option<usize>,
    #[serde(deserialize_with = "de_duration")]
    shutdown_timeout: Option<Duration>,
    #[serde(deserialize_with = "de_flag")]
    echo: Option<bool>,
    #[serde(deserialize_with = "de_secret")]
    admin_token: Option<String>,
    #[serde(deserialize_with = "de_origins")]
    allowed_origins: Option<Vec<String>>,
    #[serde(deserialize_with = "de_count")]
    max_http_connections: Option<usize>,
    #[serde(deserialize_with = "de_count")]
    max_id_bytes: Option<usize>,
    #[serde(deserialize_with = "de_count")]
    max_rooms_per_session: Option<usize>,
    #[serde(deserialize_with = "de_count")]
    max_json_depth: Option<usize>,
    #[serde(deserialize_with = "de_rate")]
    max_messages_per_second: Option<u32>,
    #[serde(deserialize_with = "de_flag")]
    client_broadcast: Option<bool>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default, expecting = "a mapping of jwt settings")]
struct RawJwt {
    #[serde(deserialize_with = "de_secret")]
    secret: Option<String>,
    #[serde(deserialize_with = "de_flag")]
    required: Option<bool>,
}

impl RawConfig {
    fn into_config(self) -> Config {
        let d = Config::default();
        Config {
            app: self.app.unwrap_or_default().into_config(d.app),
            log: LogConfig {
                level: self.log.and_then(|l| l.level).unwrap_or(d.log.level),
            },
            websocket: self.websocket.unwrap_or_default().into_config(d.websocket),
            jwt: self.jwt.unwrap_or_default().into_config(d.jwt),
            cluster: self.cluster.unwrap_or_default().into_config(d.cluster),
        }
    }
}

impl RawApp {
    fn into_config(self, d: AppConfig) -> AppConfig {
        AppConfig {
            host: self.host.unwrap_or(d.host),
            port: self.port.unwrap_or(d.port),
            demo: self.demo.unwrap_or(d.demo),
            reuse_port: self.reuse_port.unwrap_or(d.reuse_port),
        }
    }
}

impl RawWebSocket {
    fn into_config(self, d: WebSocketConfig) -> WebSocketConfig {
        WebSocketConfig {
            enable: self.enable.unwrap_or(d.enable),
            port: self.port.unwrap_or(d.port),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            ping_period: self.ping_period.unwrap_or(d.ping_period),
            pong_wait: self.pong_wait.unwrap_or(d.pong_wait),
            write_wait: self.write_wait.unwrap_or(d.write_wait),
            max_message_size: self.max_message_size.unwrap_or(d.max_message_size),
            message_buffer_size: self.message_buffer_size.unwrap_or(d.message_buffer_size),
            max_buffered_bytes: self.max_buffered_bytes.unwrap_or(d.max_buffered_bytes),
            handshake_timeout: self.handshake_timeout.unwrap_or(d.handshake_timeout),
            max_header_bytes: self.max_header_bytes.unwrap_or(d.max_header_bytes),
            shutdown_timeout: self.shutdown_timeout.unwrap_or(d.shutdown_timeout),
            echo: self.echo.unwrap_or(d.echo),
            admin_token: self.admin_token.unwrap_or(d.admin_token),
            allowed_origins: self.allowed_origins.unwrap_or(d.allowed_origins),
            max_http_connections: self.max_http_connections.unwrap_or(d.max_http_connections),
            max_id_bytes: self.max_id_bytes.unwrap_or(d.max_id_bytes),
            max_rooms_per_session: self
                .max_rooms_per_session
                .unwrap_or(d.max_rooms_per_session),
            max_json_depth: self.max_json_depth.unwrap_or(d.max_json_depth),
            max_messages_per_second: self
                .max_messages_per_second
                .unwrap_or(d.max_messages_per_second),
            client_broadcast: self.client_broadcast.unwrap_or(d.client_broadcast),
        }
    }
}

impl RawJwt {
    fn into_config(self, d: JwtConfig) -> JwtConfig {
        JwtConfig {
            secret: self.secret.unwrap_or(d.secret),
            required: self.required.unwrap_or(d.required),
        }
    }
}

// ---------------------------------------------------------------------------
// Leaf parsers: one YAML value → one checked setting, or a message saying what
// was expected and what was found. `null` means "not set" (the default).
// ---------------------------------------------------------------------------

/// Deserialises any YAML value and checks it with `parse`.
fn leaf<'de, D, T>(d: D, parse: fn(&Value) -> Result<T, String>) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => parse(&v).map(Some).map_err(D::Error::custom),
    }
}

fn de_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    leaf(d, parse_flag)
}
fn de_host<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    leaf(d, parse_host)
}
fn de_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    leaf(d, parse_secret)
}
fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    leaf(d, parse_port)
}
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    leaf(d, parse_duration)
}
fn de_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    leaf(d, |v| parse_count(v, 1))
}
fn de_header_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    leaf(d, |v| parse_count(v, MIN_HEADER_BYTES))
}
fn de_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    leaf(d, parse_rate)
}
fn de_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LevelFilter>, D::Error> {
    leaf(d, parse_level)
}
fn de_origins<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    leaf(d, parse_origins)
}
fn de_redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    leaf(d, parse_redis_url)
}
fn de_node_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    leaf(d, parse_name)
}
fn de_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    leaf(d, |v| match parse_name(v)? {
        s if s.is_empty() => Err("must not be empty".to_owned()),
        s => Ok(s),
    })
}
fn de_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    leaf(d, |v| match parse_duration(v)? {
        d if d < Duration::from_secs(1) => Err(format!("must be at least 1s, got {}", shown(v))),
        d => Ok(d),
    })
}

/// Empty, or a URL the Redis client accepts (checked without connecting).
fn parse_redis_url(v: &Value) -> Result<String, String> {
    let Some(url) = v.as_str() else {
        return Err(format!(
            "expected a URL such as \"redis://127.0.0.1:6379/0\", got {}",
            kind(v)
        ));
    };
    if url.is_empty() || redis::Client::open(url).is_ok() {
        return Ok(url.to_owned());
    }
    // The URL may hold a password: never echo it.
    Err("expected a URL such as \"redis://127.0.0.1:6379/0\" (redis:// or unix://)".to_owned())
}

/// A node id or channel prefix: printable, no spaces (they go into Redis
/// keys, channel names and message headers), at most 128 bytes.
fn parse_name(v: &Value) -> Result<String, String> {
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
fn shown(v: &Value) -> String {
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

fn parse_flag(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, got {}", shown(v)))
}

fn parse_host(v: &Value) -> Result<String, String> {
    match v.as_str() {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(format!(
            "expected an address to bind such as \"0.0.0.0\", got {}",
            shown(v)
        )),
    }
}

fn parse_secret(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string, got {}", kind(v)))
}

/// Digits only: `u64::from_str` would also take a sign.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_port(v: &Value) -> Result<u16, String> {
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

fn parse_count(v: &Value, min: usize) -> Result<usize, String> {
    let n = v.as_u64().and_then(|n| usize::try_from(n).ok());
    match n {
        None => Err(format!("expected a non-negative integer, got {}", shown(v))),
        Some(n) if n < min => Err(format!("must be at least {min}, got {n}")),
        Some(n) => Ok(n),
    }
}

/// Messages per second: `0` (off) up to [`MAX_RATE`].
fn parse_rate(v: &Value) -> Result<u32, String> {
    match v.as_u64() {
        None => Err(format!(
            "expected a non-negative integer (0 = off), got {}",
            shown(v)
        )),
        Some(n) if n > u64::from(MAX_RATE) => Err(format!("must be at most {MAX_RATE}, got {n}")),
        Some(n) => Ok(n as u32),
    }
}

fn parse_duration(v: &Value) -> Result<Duration, String> {
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

fn parse_level(v: &Value) -> Result<LevelFilter, String> {
    v.as_str()
        .and_then(|s| LevelFilter::from_str(s).ok())
        .ok_or_else(|| {
            format!(
                "expected one of off, error, warn, info, debug, trace, got {}",
                shown(v)
            )
        })
}

fn parse_origins(v: &Value) -> Result<Vec<String>, String> {
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
            Some(s) if auth::origin_entry_valid(s) => Ok(s.to_owned()),
            _ => Err(format!(
                "item {i}: expected an origin such as \"https://example.com:8443\" \
                 (scheme://host[:port], no path) or \"null\", got {}",
                shown(item)
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        match Config::from_yaml_str(text, "config.yaml") {
            Ok(config) => config,
            Err(e) => panic!("{text:?} should parse, got: {e}"),
        }
    }

    fn error(text: &str) -> String {
        match Config::from_yaml_str(text, "config.yaml") {
            Ok(config) => panic!("{text:?} should fail, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn websocket(text: &str) -> WebSocketConfig {
        parse(&format!("websocket:\n{text}")).websocket
    }

    /// PROTOCOL.md section 2, verbatim.
    const PROTOCOL_YAML: &str = r#"
app:
  host: "0.0.0.0"
  port: "8889"              # string or integer
  demo: true                # integrated mode serves the demo page at GET /
log:
  level: info
websocket:
  enable: true
  port: "8081"              # standalone mode
  max_connections: 10000    # the next upgrade gets HTTP 503
  ping_period: 54s          # server Ping interval ("500ms", "54s", "2m" or integer seconds)
  pong_wait: 60s            # no frame at all from a client for this long: close it
  write_wait: 10s           # a pending write that makes no progress this long: close it
  max_message_size: 524288  # bytes; a larger client message: Close 1009
  message_buffer_size: 256  # queued outbound messages per session; over it: Close 1013 (slow consumer)
  max_buffered_bytes: 1048576 # queued outbound bytes per session; over it: Close 1013 as well
  handshake_timeout: 10s    # a connection that has not completed its HTTP request by then is closed
  max_header_bytes: 16384   # request line + headers; larger: 431 (REST and upgrade alike)
  shutdown_timeout: 5s
  echo: false               # true: serve /api/ws/echo (conformance and benchmarks)
  admin_token: ""           # non-empty: REST push/status/metrics need "Authorization: Bearer <admin_token>"
  allowed_origins: []       # non-empty: an upgrade whose Origin is not listed gets 403
  max_http_connections: 1024     # connections not (yet) upgraded: REST clients and handshakes in progress
  max_id_bytes: 128              # user ids (query, JWT) and room names
  max_rooms_per_session: 64
  max_json_depth: 32             # nesting of a client message or REST body
  max_messages_per_second: 0     # per session, token bucket with a burst of the same size; 0 = off
  client_broadcast: true         # false: a client message with neither room nor to gets an error reply
jwt:
  secret: ""                # non-empty: HS256 tokens are checked on connect
  required: false           # true: a connect without a valid token gets 401
"#;

    #[test]
    fn defaults_are_protocol_section_2() {
        let expected = Config {
            app: AppConfig {
                host: "0.0.0.0".to_owned(),
                port: 8889,
                demo: true,
                reuse_port: false,
            },
            log: LogConfig {
                level: LevelFilter::Info,
            },
            websocket: WebSocketConfig {
                enable: true,
                port: 8081,
                max_connections: 10000,
                ping_period: Duration::from_secs(54),
                pong_wait: Duration::from_secs(60),
                write_wait: Duration::from_secs(10),
                max_message_size: 524288,
                message_buffer_size: 256,
                max_buffered_bytes: 1048576,
                handshake_timeout: Duration::from_secs(10),
                max_header_bytes: 16384,
                shutdown_timeout: Duration::from_secs(5),
                echo: false,
                admin_token: String::new(),
                allowed_origins: vec![],
                max_http_connections: 1024,
                max_id_bytes: 128,
                max_rooms_per_session: 64,
                max_json_depth: 32,
                max_messages_per_second: 0,
                client_broadcast: true,
            },
            jwt: JwtConfig {
                secret: String::new(),
                required: false,
            },
            cluster: ClusterConfig::default(),
        };
        assert_eq!(Config::default(), expected);
        assert_eq!(parse(PROTOCOL_YAML), expected);
    }

    #[test]
    fn empty_comment_only_and_null_sections_give_defaults() {
        for text in [
            "",
            "\n",
            "# nothing here\n# at all\n",
            "---\n",
            "app:\nwebsocket:\n",
        ] {
            assert_eq!(parse(text), Config::default(), "{text:?}");
        }
        assert_eq!(websocket("  port:\n"), WebSocketConfig::default());
    }

    #[test]
    fn repo_style_file_parses() {
        let text = "app:\n  port: \"8889\"\nwebsocket:\n  enable: true\n  port: \"8081\"\n  max_connections: 10000\n";
        assert_eq!(parse(text), Config::default());
        let text = "app:\n  port: 9000\nwebsocket:\n  enable: false\n  port: \"9001\"\n  max_connections: 5\n";
        let config = parse(text);
        assert_eq!(config.app.port, 9000);
        assert!(!config.websocket.enable);
        assert_eq!(config.websocket.port, 9001);
        assert_eq!(config.websocket.max_connections, 5);
    }

    #[test]
    fn every_key_can_be_set() {
        let text = r#"
app: {host: "127.0.0.1", port: 1, demo: false}
log: {level: DEBUG}
websocket:
  enable: false
  port: 2
  max_connections: 3
  ping_period: 500ms
  pong_wait: 2m
  write_wait: 1h
  max_message_size: 4
  message_buffer_size: 5
  max_buffered_bytes: 6
  handshake_timeout: "7"
  max_header_bytes: 256
  shutdown_timeout: 8
  echo: true
  admin_token: "adm"
  allowed_origins: ["https://a.example", "null"]
  max_http_connections: 9
  max_id_bytes: 10
  max_rooms_per_session: 11
  max_json_depth: 12
  max_messages_per_second: 13
  client_broadcast: false
jwt: {secret: "s3", required: true}
"#;
        let expected = Config {
            app: AppConfig {
                host: "127.0.0.1".to_owned(),
                port: 1,
                demo: false,
                reuse_port: false,
            },
            log: LogConfig {
                level: LevelFilter::Debug,
            },
            websocket: WebSocketConfig {
                enable: false,
                port: 2,
                max_connections: 3,
                ping_period: Duration::from_millis(500),
                pong_wait: Duration::from_secs(120),
                write_wait: Duration::from_secs(3600),
                max_message_size: 4,
                message_buffer_size: 5,
                max_buffered_bytes: 6,
                handshake_timeout: Duration::from_secs(7),
                max_header_bytes: 256,
                shutdown_timeout: Duration::from_secs(8),
                echo: true,
                admin_token: "adm".to_owned(),
                allowed_origins: vec!["https://a.example".to_owned(), "null".to_owned()],
                max_http_connections: 9,
                max_id_bytes: 10,
                max_rooms_per_session: 11,
                max_json_depth: 12,
                max_messages_per_second: 13,
                client_broadcast: false,
            },
            jwt: JwtConfig {
                secret: "s3".to_owned(),
                required: true,
            },
            cluster: ClusterConfig::default(),
        };
        assert_eq!(parse(text), expected);
    }

    #[test]
    fn cluster_section_and_reuse_port() {
        let config = parse(
            "app:\n  reuse_port: true\ncluster:\n  redis: \"redis://127.0.0.1:6379/0\"\n  node_id: n1\n  presence_ttl: 5s\n  channel_prefix: chat\n",
        );
        assert!(config.app.reuse_port);
        assert!(config.cluster.enabled());
        assert_eq!(config.cluster.node_id, "n1");
        assert_eq!(config.cluster.presence_ttl, Duration::from_secs(5));
        assert_eq!(config.cluster.channel_prefix, "chat");
        assert!(!Config::default().cluster.enabled());
        assert_eq!(
            error("cluster:\n  presence_ttl: 500ms\n"),
            "config.yaml: cluster.presence_ttl: must be at least 1s, got \"500ms\""
        );
        assert_eq!(
            error("cluster:\n  node_id: \"a b\"\n"),
            "config.yaml: cluster.node_id: expected a name without spaces or control characters (at most 128 bytes), got \"a b\""
        );
        assert_eq!(
            error("cluster:\n  channel_prefix: \"\"\n"),
            "config.yaml: cluster.channel_prefix: must not be empty"
        );
        let bad = error("cluster:\n  redis: \"http://user:hunter2@x\"\n");
        assert!(
            bad.starts_with("config.yaml: cluster.redis: expected a URL"),
            "{bad}"
        );
        assert!(!bad.contains("hunter2"), "{bad}");
        assert!(
            !format!("{:?}", parse("cluster:\n  redis: \"redis://:pw@h/0\"\n")).contains("pw@")
        );
    }

    #[test]
    fn ports_as_string_or_integer() {
        for (yaml, port) in [
            ("\"8889\"", 8889),
            ("8889", 8889),
            ("0", 0),
            ("\"0\"", 0),
            ("65535", 65535),
            ("\"65535\"", 65535),
        ] {
            assert_eq!(parse(&format!("app:\n  port: {yaml}\n")).app.port, port);
            assert_eq!(websocket(&format!("  port: {yaml}\n")).port, port);
        }
    }

    #[test]
    fn every_duration_form() {
        for (yaml, expected) in [
            ("500ms", Duration::from_millis(500)),
            ("\"500ms\"", Duration::from_millis(500)),
            ("54s", Duration::from_secs(54)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("24h", Duration::from_secs(86400)),
            ("30", Duration::from_secs(30)),
            ("\"30\"", Duration::from_secs(30)),
            ("1ms", Duration::from_millis(1)),
        ] {
            let ws = websocket(&format!("  write_wait: {yaml}\n"));
            assert_eq!(ws.write_wait, expected, "{yaml}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        assert_eq!(error("bogus: 1\n"), r#"config.yaml: unknown key "bogus""#);
        assert_eq!(
            error("websocket:\n  foo: 1\n"),
            r#"config.yaml: unknown key "websocket.foo""#
        );
        assert_eq!(
            error("jwt:\n  secret: x\n  requierd: true\n"),
            r#"config.yaml: unknown key "jwt.requierd""#
        );
        assert_eq!(
            error("app:\n  \"po\\nrt\": 1\n"),
            r#"config.yaml: unknown key "app.po\nrt""#
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let cases = [
            (
                "websocket:\n  max_connections: abc\n",
                r#"config.yaml: websocket.max_connections: expected a non-negative integer, got "abc""#,
            ),
            (
                "websocket:\n  max_message_size: -1\n",
                "config.yaml: websocket.max_message_size: expected a non-negative integer, got -1",
            ),
            (
                "websocket:\n  enable: yes\n",
                r#"config.yaml: websocket.enable: expected true or false, got "yes""#,
            ),
            (
                "app:\n  host: 127\n",
                r#"config.yaml: app.host: expected an address to bind such as "0.0.0.0", got 127"#,
            ),
            (
                "websocket: 5\n",
                "config.yaml: websocket: invalid type: integer `5`, expected a mapping of websocket settings",
            ),
            (
                "just text\n",
                r#"config.yaml: invalid type: string "just text", expected a mapping of sections (app, log, websocket, jwt, cluster)"#,
            ),
            (
                "websocket:\n  allowed_origins: https://a.example\n",
                r#"config.yaml: websocket.allowed_origins: expected a list of origins such as ["https://example.com"], got "https://a.example""#,
            ),
            (
                "websocket:\n  allowed_origins: [\"https://a.example\", 7]\n",
                "config.yaml: websocket.allowed_origins: item 1: expected an origin such as \
                 \"https://example.com:8443\" (scheme://host[:port], no path) or \"null\", got 7",
            ),
            (
                "websocket:\n  allowed_origins: [\"https://a.example/\"]\n",
                "config.yaml: websocket.allowed_origins: item 0: expected an origin such as \
                 \"https://example.com:8443\" (scheme://host[:port], no path) or \"null\", \
                 got \"https://a.example/\"",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), expected);
        }
    }

    #[test]
    fn bad_yaml_is_one_line_with_location() {
        assert_eq!(
            error("websocket:\n  port: [1\n"),
            "config.yaml: invalid YAML at line 3 column 1: did not find expected ',' or ']', \
             while parsing a flow sequence at line 2 column 9"
        );
        assert_eq!(
            error("app:\n  port: 1\n    host: x\n"),
            "config.yaml: invalid YAML at line 3 column 9: mapping values are not allowed in this context"
        );
    }

    #[test]
    fn bad_durations_show_accepted_forms() {
        let forms = r#"expected a duration such as "500ms", "54s", "2m", "1h" or whole seconds"#;
        for (yaml, got) in [
            ("5x", r#""5x""#),
            ("1.5s", r#""1.5s""#),
            ("1.5", "1.5"),
            ("-3", "-3"),
            ("\"-3s\"", r#""-3s""#),
            ("s", r#""s""#),
            ("\"54 s\"", r#""54 s""#),
            ("54S", r#""54S""#),
            ("true", "true"),
            ("[1]", "a list"),
            ("99999999999999999999h", r#""99999999999999999999h""#),
        ] {
            assert_eq!(
                error(&format!("websocket:\n  pong_wait: {yaml}\n")),
                format!("config.yaml: websocket.pong_wait: {forms}, got {got}")
            );
        }
    }

    #[test]
    fn zero_and_huge_durations_are_refused() {
        assert_eq!(
            error("websocket:\n  shutdown_timeout: 0\n"),
            "config.yaml: websocket.shutdown_timeout: must be greater than zero, got 0"
        );
        assert_eq!(
            error("websocket:\n  handshake_timeout: 0ms\n"),
            r#"config.yaml: websocket.handshake_timeout: must be greater than zero, got "0ms""#
        );
        assert_eq!(
            error("websocket:\n  write_wait: 25h\n"),
            r#"config.yaml: websocket.write_wait: must be at most 24h, got "25h""#
        );
    }

    #[test]
    fn ping_period_must_be_shorter_than_pong_wait() {
        assert_eq!(
            error("websocket:\n  ping_period: 60s\n"),
            "config.yaml: websocket.ping_period: must be shorter than websocket.pong_wait (60s), \
             or healthy idle clients are dropped; got 60s"
        );
        assert_eq!(
            error("websocket:\n  pong_wait: 1500ms\n  ping_period: 2s\n"),
            "config.yaml: websocket.ping_period: must be shorter than websocket.pong_wait (1500ms), \
             or healthy idle clients are dropped; got 2s"
        );
        let ws = websocket("  ping_period: 999ms\n  pong_wait: 1s\n");
        assert_eq!(ws.ping_period, Duration::from_millis(999));
    }

    #[test]
    fn bad_ports_are_named() {
        let expected = "expected a port 0-65535 (integer or string of digits)";
        for (key, yaml, got) in [
            ("app.port", "65536", "65536"),
            ("app.port", "-1", "-1"),
            ("app.port", "80.5", "80.5"),
            ("app.port", "\"80a\"", r#""80a""#),
            ("app.port", "\"+80\"", r#""+80""#),
            ("app.port", "\"\"", r#""""#),
            ("app.port", "[80]", "a list"),
            ("websocket.port", "http", r#""http""#),
            (
                "websocket.port",
                "\"99999999999999999999\"",
                r#""99999999999999999999""#,
            ),
        ] {
            let (section, field) = key.split_once('.').unwrap_or_default();
            assert_eq!(
                error(&format!("{section}:\n  {field}: {yaml}\n")),
                format!("config.yaml: {key}: {expected}, got {got}")
            );
        }
    }

    #[test]
    fn sizes_and_counts_must_be_positive() {
        assert_eq!(
            error("websocket:\n  message_buffer_size: 0\n"),
            "config.yaml: websocket.message_buffer_size: must be at least 1, got 0"
        );
        assert_eq!(
            error("websocket:\n  max_header_bytes: 255\n"),
            "config.yaml: websocket.max_header_bytes: must be at least 256, got 255"
        );
        assert_eq!(websocket("  max_buffered_bytes: 1\n").max_buffered_bytes, 1);
    }

    #[test]
    fn abuse_bounds_at_their_limits_and_one_past() {
        for key in [
            "max_http_connections",
            "max_id_bytes",
            "max_rooms_per_session",
            "max_json_depth",
        ] {
            let ws = websocket(&format!("  {key}: 1\n"));
            let debug = format!("{ws:?}");
            assert!(debug.contains(&format!("{key}: 1,")), "{debug}");
            assert_eq!(
                error(&format!("websocket:\n  {key}: 0\n")),
                format!("config.yaml: websocket.{key}: must be at least 1, got 0")
            );
            assert_eq!(
                error(&format!("websocket:\n  {key}: -1\n")),
                format!("config.yaml: websocket.{key}: expected a non-negative integer, got -1")
            );
        }
        assert_eq!(
            websocket("  max_messages_per_second: 0\n").max_messages_per_second,
            0
        );
        assert_eq!(
            websocket("  max_messages_per_second: 1000000\n").max_messages_per_second,
            1_000_000
        );
        assert_eq!(
            error("websocket:\n  max_messages_per_second: 1000001\n"),
            "config.yaml: websocket.max_messages_per_second: must be at most 1000000, got 1000001"
        );
        assert_eq!(
            error("websocket:\n  max_messages_per_second: fast\n"),
            "config.yaml: websocket.max_messages_per_second: expected a non-negative integer \
             (0 = off), got \"fast\""
        );
        assert!(!websocket("  client_broadcast: false\n").client_broadcast);
        assert_eq!(
            error("websocket:\n  client_broadcast: no\n"),
            r#"config.yaml: websocket.client_broadcast: expected true or false, got "no""#
        );
    }

    #[test]
    fn log_level_names_any_case() {
        for (yaml, level) in [
            ("off", LevelFilter::Off),
            ("ERROR", LevelFilter::Error),
            ("Warn", LevelFilter::Warn),
            ("info", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("trace", LevelFilter::Trace),
        ] {
            assert_eq!(parse(&format!("log:\n  level: {yaml}\n")).log.level, level);
        }
        assert_eq!(
            error("log:\n  level: verbose\n"),
            r#"config.yaml: log.level: expected one of off, error, warn, info, debug, trace, got "verbose""#
        );
    }

    #[test]
    fn rust_log_plain_level_overrides_config() {
        let config = Config::default();
        assert_eq!(config.effective_log_level(None), LevelFilter::Info);
        assert_eq!(
            config.effective_log_level(Some("debug")),
            LevelFilter::Debug
        );
        assert_eq!(
            config.effective_log_level(Some(" TRACE ")),
            LevelFilter::Trace
        );
        assert_eq!(config.effective_log_level(Some("off")), LevelFilter::Off);
        assert_eq!(config.effective_log_level(Some("")), LevelFilter::Info);
        assert_eq!(
            config.effective_log_level(Some("wshub=debug")),
            LevelFilter::Info
        );
    }

    #[test]
    fn jwt_required_needs_a_secret() {
        assert_eq!(
            error("jwt:\n  required: true\n"),
            "config.yaml: jwt.required: true needs a non-empty jwt.secret, or no connect could succeed"
        );
    }

    #[test]
    fn secrets_never_printed() {
        let config = parse("websocket:\n  admin_token: hunter2\njwt:\n  secret: swordfish\n");
        assert_eq!(config.websocket.admin_token, "hunter2");
        assert_eq!(config.jwt.secret, "swordfish");
        let debug = format!("{config:?} {config:#?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("swordfish"),
            "{debug}"
        );
        assert!(debug.contains("admin_token: \"<redacted>\""), "{debug}");
        assert!(format!("{:?}", Config::default()).contains("secret: \"\""));
        // A mistyped secret is described, not shown.
        assert_eq!(
            error("jwt:\n  secret: 123456789\n"),
            "config.yaml: jwt.secret: expected a string, got a number"
        );
    }

    /// A unique path under the temp dir, so parallel test runs do not collide.
    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("wshub-config-test-{}-{name}", std::process::id()))
    }

    #[test]
    fn load_explicit_file_must_exist() {
        let e = Config::load(Some(Path::new("no-such-dir/cfg.yaml"))).map(|_| ());
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err(
                "no-such-dir/cfg.yaml: cannot read: No such file or directory (os error 2)"
                    .to_owned()
            )
        );
    }

    #[test]
    fn load_falls_back_to_defaults_only_without_explicit_path() {
        let missing = temp_path("missing.yaml");
        let loaded = Config::load_from(None, &missing).map_err(|e| e.to_string());
        assert_eq!(
            loaded,
            Ok((Config::default(), ConfigSource::BuiltInDefaults))
        );
        let loaded = Config::load_from(Some(&missing), &missing).map(|_| ());
        assert!(
            matches!(loaded, Err(ConfigError::Read { .. })),
            "{loaded:?}"
        );
    }

    #[test]
    fn load_reads_file_and_names_it_in_errors() -> io::Result<()> {
        let good = temp_path("good.yaml");
        let bad = temp_path("bad.yaml");
        std::fs::write(&good, "app:\n  port: 0\n")?;
        std::fs::write(&bad, "app:\n  prot: 0\n")?;
        let loaded = Config::load_from(None, &good).map_err(|e| e.to_string());
        let failed = Config::load(Some(&bad))
            .map(|_| ())
            .map_err(|e| e.to_string());
        std::fs::remove_file(&good)?;
        std::fs::remove_file(&bad)?;

        let expected = Config {
            app: AppConfig {
                port: 0,
                ..AppConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(loaded, Ok((expected, ConfigSource::File(good))));
        assert_eq!(
            failed,
            Err(format!("{}: unknown key \"app.prot\"", bad.display()))
        );
        Ok(())
    }
}
