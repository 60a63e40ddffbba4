//! The configuration's unit tests: defaults, every key, every error message.

use std::path::Path;

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

/// The documented defaults of every section-2 key, verbatim.
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
            trusted_proxies: Default::default(),
            client_ip_header: Default::default(),
            proxy_protocol: false,
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
            admin_token: Secret::default(),
            allowed_origins: vec![],
            max_http_connections: 1024,
            max_id_bytes: 128,
            max_rooms_per_session: 64,
            max_json_depth: 32,
            max_messages_per_second: 0,
            max_bytes_per_second: 0,
            client_broadcast: true,
            compression: false,
            compression_min_bytes: 128,
            max_connections_per_ip: 0,
        },
        jwt: JwtConfig {
            secret: Secret::default(),
            required: false,
            algorithms: vec!["HS256".to_owned()],
            public_key: String::new(),
            jwks_url: String::new(),
            issuer: String::new(),
            audience: String::new(),
        },
        webhooks: WebhooksConfig {
            url: Secret::default(),
            secret: Secret::default(),
            events: vec!["user_online".to_owned(), "user_offline".to_owned()],
            offline_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        },
        cluster: ClusterConfig::default(),
        tls: TlsConfig::default(),
        history: HistoryConfig::default(),
        rooms: RoomsConfig {
            join: JoinMode::Open,
            presence: false,
        },
        files: Files::default(),
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
    let text =
        "app:\n  port: 9000\nwebsocket:\n  enable: false\n  port: \"9001\"\n  max_connections: 5\n";
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
  max_bytes_per_second: 14
  client_broadcast: false
  compression: true
  compression_min_bytes: 9
jwt:
  secret: "s3"
  required: true
  algorithms: [HS512, RS256, PS256, ES384, EdDSA]
  public_key: ""
  jwks_url: "https://idp.example/.well-known/jwks.json"
  issuer: "https://idp.example/"
  audience: "wshub"
rooms: {join: token, presence: true}
"#;
    let expected = Config {
        app: AppConfig {
            host: "127.0.0.1".to_owned(),
            port: 1,
            demo: false,
            reuse_port: false,
            trusted_proxies: Default::default(),
            client_ip_header: Default::default(),
            proxy_protocol: false,
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
            admin_token: "adm".into(),
            allowed_origins: vec!["https://a.example".to_owned(), "null".to_owned()],
            max_http_connections: 9,
            max_id_bytes: 10,
            max_rooms_per_session: 11,
            max_json_depth: 12,
            max_messages_per_second: 13,
            max_bytes_per_second: 14,
            client_broadcast: false,
            compression: true,
            compression_min_bytes: 9,
            max_connections_per_ip: 0,
        },
        jwt: JwtConfig {
            secret: "s3".into(),
            required: true,
            algorithms: ["HS512", "RS256", "PS256", "ES384", "EdDSA"]
                .map(str::to_owned)
                .to_vec(),
            public_key: String::new(),
            jwks_url: "https://idp.example/.well-known/jwks.json".to_owned(),
            issuer: "https://idp.example/".to_owned(),
            audience: "wshub".to_owned(),
        },
        webhooks: WebhooksConfig::default(),
        cluster: ClusterConfig::default(),
        tls: TlsConfig::default(),
        history: HistoryConfig::default(),
        rooms: RoomsConfig {
            join: JoinMode::Token,
            presence: true,
        },
        files: Files::default(),
    };
    assert_eq!(parse(text), expected);
}

#[test]
fn history_section_defaults_off_and_checks_its_bounds() {
    let default = Config::default().history;
    assert!(!default.enabled());
    assert_eq!(default.ttl, Duration::from_secs(120));
    assert_eq!(default.max_bytes, 64 << 20);
    assert_eq!(default.meta_ttl, Duration::from_secs(86_400));
    let config = parse("history:\n  size: 100\n  ttl: 30s\n  max_bytes: 4096\n  meta_ttl: 1h\n");
    assert!(config.history.enabled());
    assert_eq!(config.history.size, 100);
    assert_eq!(config.history.ttl, Duration::from_secs(30));
    assert_eq!(config.history.max_bytes, 4096);
    assert_eq!(config.history.meta_ttl, Duration::from_secs(3600));
    assert_eq!(
        error("history:\n  ttl: 10ms\n"),
        "config.yaml: history.ttl: must be at least 1s, got \"10ms\""
    );
    assert_eq!(
        error("history:\n  max_bytes: 10\n"),
        "config.yaml: history.max_bytes: must be at least 1024, got 10"
    );
    assert_eq!(
        error("history:\n  size: -1\n"),
        "config.yaml: history.size: expected a non-negative integer, got -1"
    );
    // In a cluster the streams live in Redis (docs/history.md).
    let both = parse("history:\n  size: 10\ncluster:\n  redis: \"redis://127.0.0.1:6379/0\"\n");
    assert!(both.history.enabled() && both.cluster.enabled());
    assert_eq!(
        error("history:\n  sizes: 1\n"),
        "config.yaml: unknown key \"history.sizes\""
    );
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
    let config = parse("cluster:\n  secret: \"s3\"\n  max_queue_bytes: 2097152\n");
    assert_eq!(config.cluster.secret, "s3");
    assert_eq!(config.cluster.max_queue_bytes, 2 << 20);
    assert_eq!(Config::default().cluster.max_queue_bytes, 64 << 20);
    assert!(Config::default().cluster.secret.is_empty());
    let small = error("cluster:\n  max_queue_bytes: 1000\n");
    assert!(
        small.starts_with("config.yaml: cluster.max_queue_bytes: "),
        "{small}"
    );
    let bad = error("cluster:\n  redis: \"http://user:hunter2@x\"\n");
    assert!(
        bad.starts_with("config.yaml: cluster.redis: expected a URL"),
        "{bad}"
    );
    assert!(!bad.contains("hunter2"), "{bad}");
    assert!(!format!("{:?}", parse("cluster:\n  redis: \"redis://:pw@h/0\"\n")).contains("pw@"));
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
                r#"config.yaml: invalid type: string "just text", expected a mapping of sections (app, log, websocket, jwt, webhooks, cluster, tls, history, rooms)"#,
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
    assert_eq!(
        websocket("  max_bytes_per_second: 1099511627776\n").max_bytes_per_second,
        1 << 40
    );
    assert_eq!(
        error("websocket:\n  max_bytes_per_second: 1099511627777\n"),
        "config.yaml: websocket.max_bytes_per_second: must be at most 1099511627776, got 1099511627777"
    );
    assert_eq!(
        error("websocket:\n  max_bytes_per_second: -1\n"),
        "config.yaml: websocket.max_bytes_per_second: expected a non-negative integer (0 = off), got -1"
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
fn jwt_required_needs_a_key() {
    assert_eq!(
        error("jwt:\n  required: true\n"),
        "config.yaml: jwt.required: true needs a key (jwt.secret, jwt.public_key or \
         jwt.jwks_url), or no connect could succeed"
    );
    let with_jwks = "jwt:\n  required: true\n  algorithms: [RS256]\n  jwks_url: http://idp/k\n";
    assert!(parse(with_jwks).jwt.required);
}

#[test]
fn jwt_algorithms_and_urls_are_checked() {
    assert_eq!(
        parse("jwt: {algorithms: [EdDSA, PS512]}\n").jwt.algorithms,
        ["EdDSA", "PS512"]
    );
    assert_eq!(
        error("jwt:\n  algorithms: [none]\n"),
        "config.yaml: jwt.algorithms: item 0: expected one of HS256 HS384 HS512 RS256 RS384 \
         RS512 PS256 PS384 PS512 ES256 ES384 EdDSA, got \"none\""
    );
    assert_eq!(
        error("jwt:\n  algorithms: []\n"),
        "config.yaml: jwt.algorithms: must list at least one algorithm"
    );
    assert_eq!(
        error("jwt:\n  algorithms: hs256\n"),
        "config.yaml: jwt.algorithms: expected a list of algorithms such as [HS256, RS256], got \"hs256\""
    );
    for bad in [
        "ftp://idp/k",
        "http://",
        "https:///path",
        "idp.example/jwks",
        "http://a b",
    ] {
        assert_eq!(
            error(&format!("jwt:\n  jwks_url: \"{bad}\"\n")),
            "config.yaml: jwt.jwks_url: expected an http:// or https:// URL with a host",
            "{bad}"
        );
    }
    assert_eq!(
        error("jwt:\n  issuer: [a]\n"),
        "config.yaml: jwt.issuer: expected a string, got a list"
    );
}

#[test]
fn webhooks_section() {
    let defaults = Config::default().webhooks;
    assert!(defaults.url.is_empty());
    assert_eq!(defaults.events, ["user_online", "user_offline"]);
    assert_eq!(defaults.offline_delay, Duration::from_secs(5));
    assert_eq!(defaults.timeout, Duration::from_secs(5));
    let config = parse(
        "webhooks:\n  url: \"https://backend.example/hooks?key=k\"\n  secret: whsec\n  \
         events: [room_occupied, room_vacated, user_online]\n  offline_delay: 500ms\n  timeout: 2\n",
    );
    let w = &config.webhooks;
    assert_eq!(w.url, "https://backend.example/hooks?key=k");
    assert_eq!(w.secret, "whsec");
    assert_eq!(w.events, ["room_occupied", "room_vacated", "user_online"]);
    assert_eq!(w.offline_delay, Duration::from_millis(500));
    assert_eq!(w.timeout, Duration::from_secs(2));
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("key=k") && !debug.contains("whsec"),
        "{debug}"
    );
    assert_eq!(
        error("webhooks:\n  events: [user_joined]\n"),
        "config.yaml: webhooks.events: item 0: expected one of user_online user_offline \
         room_occupied room_vacated, got \"user_joined\""
    );
    assert_eq!(
        error("webhooks:\n  url: \"backend.example/hooks\"\n"),
        "config.yaml: webhooks.url: expected an http:// or https:// URL with a host"
    );
    assert_eq!(
        error("webhooks:\n  offline_delay: 0\n"),
        "config.yaml: webhooks.offline_delay: must be greater than zero, got 0"
    );
    assert!(parse("webhooks:\n  events: []\n")
        .webhooks
        .events
        .is_empty());
}

#[test]
fn jwt_public_key_is_read_at_load() -> io::Result<()> {
    let path = temp_path("jwt-key.yaml");
    std::fs::write(
        &path,
        "jwt:\n  algorithms: [RS256]\n  public_key: /nonexistent/key.pem\n",
    )?;
    let message = Config::load(Some(&path)).unwrap_err().to_string();
    let _ = std::fs::remove_file(&path);
    assert!(
        message.starts_with(&format!(
            "{}: jwt.public_key: cannot read /nonexistent/key.pem",
            path.display()
        )),
        "{message}"
    );
    Ok(())
}

#[test]
fn rooms_join_modes_and_their_key() {
    assert_eq!(parse("").rooms.join, JoinMode::Open);
    assert!(!parse("").rooms.presence);
    let with_key = |mode: &str| parse(&format!("jwt: {{secret: s}}\nrooms: {{join: {mode}}}\n"));
    assert_eq!(with_key("open").rooms.join, JoinMode::Open);
    assert_eq!(with_key("claims").rooms.join, JoinMode::Claims);
    assert_eq!(with_key("token").rooms.join, JoinMode::Token);
    let jwks = "jwt: {algorithms: [RS256], jwks_url: \"https://idp.example/jwks\"}\nrooms: {join: claims}\n";
    assert_eq!(
        parse(jwks).rooms.join,
        JoinMode::Claims,
        "a JWKS is a key too"
    );
    for mode in ["claims", "token"] {
        assert_eq!(
            error(&format!("rooms:\n  join: {mode}\n")),
            "config.yaml: rooms.join: claims and token need a JWT key (jwt.secret, jwt.public_key or jwt.jwks_url) to check tokens with"
        );
    }
    assert_eq!(
        error("rooms:\n  join: closed\n"),
        "config.yaml: rooms.join: expected open, claims or token, got \"closed\""
    );
    assert_eq!(
        error("rooms:\n  presence: 1\n"),
        "config.yaml: rooms.presence: expected true or false, got 1"
    );
    assert_eq!(
        error("rooms:\n  joins: open\n"),
        "config.yaml: unknown key \"rooms.joins\""
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
        Err("no-such-dir/cfg.yaml: cannot read: No such file or directory (os error 2)".to_owned())
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

#[test]
fn tls_keys_come_in_pairs() {
    let config = parse("tls:\n  cert: c.pem\n  key: k.pem\n");
    assert_eq!(config.tls.cert, "c.pem");
    assert!(config.tls.enabled());
    assert!(!Config::default().tls.enabled());
    assert_eq!(
        error("tls:\n  cert: c.pem\n"),
        "config.yaml: tls.key: must be set when tls.cert is (TLS needs both files)"
    );
    assert_eq!(
        error("tls:\n  key: k.pem\n"),
        "config.yaml: tls.cert: must be set when tls.key is (TLS needs both files)"
    );
}

#[test]
fn client_address_keys() {
    let config = parse(
        "app:\n  trusted_proxies: [\"10.0.0.0/8\", \"::1\"]\n  client_ip_header: Forwarded\n  proxy_protocol: true\nwebsocket:\n  max_connections_per_ip: 20\n",
    );
    assert!(config
        .app
        .trusted_proxies
        .contains("10.1.2.3".parse().unwrap()));
    assert!(config.app.trusted_proxies.contains("::1".parse().unwrap()));
    assert!(!config
        .app
        .trusted_proxies
        .contains("11.0.0.1".parse().unwrap()));
    assert_eq!(config.app.client_ip_header, ClientIpHeader::Forwarded);
    assert!(config.app.proxy_protocol);
    assert_eq!(config.websocket.max_connections_per_ip, 20);
    assert!(Config::default().app.trusted_proxies.is_empty());
    assert_eq!(
        error("app:\n  trusted_proxies: [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n"),
        "config.yaml: app.trusted_proxies: \"10.0.0.0/33\" is not a CIDR block or an IP address"
    );
    assert_eq!(
        error("app:\n  trusted_proxies: \"10.0.0.0/8\"\n"),
        "config.yaml: app.trusted_proxies: expected a list of CIDR blocks such as [\"10.0.0.0/8\", \"::1/128\"], got \"10.0.0.0/8\""
    );
    assert_eq!(
        error("app:\n  trusted_proxies: [8]\n"),
        "config.yaml: app.trusted_proxies: item 0: expected a CIDR block, got 8"
    );
    assert_eq!(
        error("app:\n  client_ip_header: x-client-ip\n"),
        "config.yaml: app.client_ip_header: expected one of x-forwarded-for, forwarded, x-real-ip, got \"x-client-ip\""
    );
    assert_eq!(
        error("app:\n  proxy_protocol: true\n"),
        "config.yaml: app.proxy_protocol: true needs app.trusted_proxies (the balancers allowed to send the header), or every connection would be refused"
    );
    assert_eq!(
        error("websocket:\n  max_connections_per_ip: -1\n"),
        "config.yaml: websocket.max_connections_per_ip: expected a non-negative integer, got -1"
    );
}

#[test]
fn every_key_has_a_row_in_docs_configuration_and_every_row_is_a_key() {
    let docs = include_str!("../../docs/configuration.md");
    let rows: Vec<&str> = docs
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(key, _)| key))
        .collect();
    let keys: Vec<&str> = RawConfig::keys().collect();
    let undocumented: Vec<&&str> = keys.iter().filter(|k| !rows.contains(k)).collect();
    assert!(
        undocumented.is_empty(),
        "keys without a row in docs/configuration.md: {undocumented:?}"
    );
    let unknown: Vec<&&str> = rows.iter().filter(|r| !keys.contains(r)).collect();
    assert!(
        unknown.is_empty(),
        "rows in docs/configuration.md that are no key: {unknown:?}"
    );
    assert!(keys.len() > 50, "only {} keys found", keys.len());
}
