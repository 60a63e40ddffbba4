//! `GET /metrics` (docs/protocol.md section 3, issue 5): the Prometheus text is
//! well-formed (a small parser of exposition format 0.0.4 checks it, and
//! `promtool check metrics` too when it is installed), and after a scripted
//! session every counter and gauge has its exact expected value.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use wshub::Incoming;
use wshub::{Actions, Hooks, Message, Mode, SessionInfo, Verdict};

// ---- a parser for the Prometheus text format ----

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed and checked exposition.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name → its TYPE.
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Parses `text`, checking the rules a scraper relies on; `Err` names
    /// the first offending line.
    fn parse(text: &str) -> Result<Exposition, String> {
        if !text.ends_with('\n') {
            return Err("the text must end with a newline".into());
        }
        let mut out = Exposition::default();
        let mut seen = BTreeSet::new();
        for (number, line) in text.lines().enumerate() {
            let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                check_name(name).map_err(|e| fail(&e))?;
                if rest.len() <= name.len() + 1 {
                    return Err(fail("HELP without text"));
                }
                if !out.helps.insert(name.to_owned()) {
                    return Err(fail("second HELP for one family"));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| fail("TYPE without a type"))?;
                check_name(name).map_err(|e| fail(&e))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(fail("unknown type"));
                }
                if out
                    .samples
                    .iter()
                    .any(|s| family_of(&s.name, &out.types) == Some(name))
                {
                    return Err(fail("TYPE after the family's samples"));
                }
                if out.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(fail("second TYPE for one family"));
                }
            } else if line.starts_with('#') {
                continue;
            } else {
                let sample = parse_sample(line).map_err(|e| fail(&e))?;
                if family_of(&sample.name, &out.types).is_none() {
                    return Err(fail("sample without a TYPE line before it"));
                }
                if !seen.insert((sample.name.clone(), sample.labels.clone())) {
                    return Err(fail("duplicate sample"));
                }
                out.samples.push(sample);
            }
        }
        out.check_families()?;
        Ok(out)
    }

    /// Family-level rules: HELP for every family, counters named `_total`
    /// and never negative, histograms cumulative and ending in `+Inf`.
    fn check_families(&self) -> Result<(), String> {
        for (family, kind) in &self.types {
            if !self.helps.contains(family) {
                return Err(format!("{family}: no HELP"));
            }
            let samples: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|s| family_of(&s.name, &self.types) == Some(family))
                .collect();
            if samples.is_empty() {
                return Err(format!("{family}: TYPE without samples"));
            }
            match kind.as_str() {
                "counter" if !family.ends_with("_total") => {
                    return Err(format!("{family}: counter not named _total"))
                }
                "counter" if samples.iter().any(|s| s.value < 0.0) => {
                    return Err(format!("{family}: negative counter"))
                }
                "histogram" => check_histogram(family, &samples)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// The value of the sample `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
            .value
    }

    fn count(&self, name: &str) -> u64 {
        let value = self.value(name, &[]);
        assert!(value >= 0.0 && value.fract() == 0.0, "{name} = {value}");
        value as u64
    }
}

/// The family a sample belongs to (histogram samples carry suffixes).
fn family_of<'t>(name: &str, types: &'t BTreeMap<String, String>) -> Option<&'t str> {
    if let Some((family, _)) = types.get_key_value(name) {
        return Some(family);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let (family, kind) = types.get_key_value(name.strip_suffix(suffix)?)?;
        matches!(kind.as_str(), "histogram" | "summary").then_some(family.as_str())
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let close = body.find('}').ok_or("unclosed labels")?;
        for pair in body[..close].split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or("label without =")?;
            check_name(key)?;
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or("label value not quoted")?;
            if value.contains(['"', '\\', '\n']) {
                return Err("escapes in label values are not expected here".into());
            }
            if labels.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err("repeated label".into());
            }
        }
        rest = &body[close + 1..];
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = parse_value(fields.next().unwrap_or_default())?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

fn check_histogram(family: &str, samples: &[&Sample]) -> Result<(), String> {
    let bucket_name = format!("{family}_bucket");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for sample in samples.iter().filter(|s| s.name == bucket_name) {
        let le = sample
            .labels
            .get("le")
            .ok_or_else(|| format!("{family}: bucket without le"))?;
        buckets.push((parse_value(le)?, sample.value));
    }
    let ordered = buckets
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
    let last = buckets.last().copied();
    let count = samples
        .iter()
        .find(|s| s.name == format!("{family}_count"))
        .map(|s| s.value);
    let has_sum = samples.iter().any(|s| s.name == format!("{family}_sum"));
    match (ordered, last, count, has_sum) {
        (true, Some((le, total)), Some(count), true) if le == f64::INFINITY && total == count => {
            Ok(())
        }
        _ => Err(format!(
            "{family}: buckets must rise to +Inf = _count, with _sum: {buckets:?} count {count:?}"
        )),
    }
}

/// `promtool check metrics` on `text`, when promtool is installed
/// (Debian: `apt-get install prometheus`); `None` when it is not.
fn promtool_problems(text: &str) -> Option<String> {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        static NOTE: std::sync::Once = std::sync::Once::new();
        NOTE.call_once(|| eprintln!("promtool not installed: relying on the test's parser"));
        return None;
    };
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(text.as_bytes()) {
            let _ = child.kill();
            let _ = child.wait();
            return Some(format!("writing to promtool: {e}"));
        }
    }
    let output = match child.wait_with_output() {
        Ok(output) => output,
        Err(e) => return Some(format!("running promtool: {e}")),
    };
    let report = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    Some(if output.status.success() {
        report.trim().to_owned()
    } else {
        format!("{}: {report}", output.status)
    })
}

#[test]
fn the_parser_accepts_good_text_and_names_bad_lines() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
    let parsed = Exposition::parse(good).unwrap();
    assert_eq!(parsed.value("a_total", &[]), 3.0);
    assert_eq!(parsed.value("h_bucket", &[("le", "+Inf")]), 2.0);
    let bad = [
        ("a_total 3\n", "sample without a TYPE"),
        ("# HELP a_total A.\n# TYPE a_total counter\na_total 3", "end with a newline"),
        ("# HELP a A.\n# TYPE a counter\na 3\n", "not named _total"),
        ("# TYPE a_total counter\na_total 3\n", "no HELP"),
        ("# HELP a_total A.\n# TYPE a_total counter\na_total 3\na_total 4\n", "duplicate"),
        ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=1} 3\n", "not quoted"),
        ("# HELP a_total A.\n# TYPE a_total counter\na_total three\n", "bad value"),
        ("# HELP g G.\n# TYPE g gauge\ng 1\n# TYPE g gauge\n", "TYPE after"),
        ("# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n", "buckets must rise"),
    ];
    for (text, why) in bad {
        let error = Exposition::parse(text).expect_err(text);
        assert!(error.contains(why), "{text:?}: {error}");
    }
    // The optional promtool check is not vacuous either.
    if let Some(problems) = promtool_problems("# TYPE a counter\na 1\n") {
        assert!(problems.contains("_total"), "{problems}");
    }
}

// ---- the scripted session ----

/// Refuses user `banned`; holds the loop on message `block`.
#[derive(Clone, Default)]
struct Script {
    gate: Gate,
}

impl Hooks for Script {
    fn on_connect(
        &mut self,
        session: &SessionInfo<'_>,
        _actions: &mut Actions,
    ) -> Result<(), String> {
        match session.user {
            Some("banned") => Err("banned user".into()),
            _ => Ok(()),
        }
    }

    fn on_message(
        &mut self,
        _session: &SessionInfo<'_>,
        message: &Incoming<'_>,
        _actions: &mut Actions,
    ) -> Verdict {
        if message.kind == "block" {
            self.gate.hold();
            return Verdict::Consume;
        }
        Verdict::Relay
    }
}

/// One scrape over a raw connection, so its exact bytes are known.
struct Scrape {
    metrics: Exposition,
    request_bytes: u64,
    response_bytes: u64,
}

fn scrape(addr: SocketAddr) -> Scrape {
    let request = b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let (status, headers, body) = read_full_response(&mut &raw[..]);
    assert_eq!(status, 200, "{body}");
    assert!(
        headers.contains(&("content-type".into(), "text/plain; version=0.0.4".into())),
        "{headers:?}"
    );
    let metrics = Exposition::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    if let Some(problems) = promtool_problems(&body) {
        assert_eq!(problems, "", "promtool check metrics:\n{body}");
    }
    Scrape {
        metrics,
        request_bytes: request.len() as u64,
        response_bytes: raw.len() as u64,
    }
}

/// The counters a step of the script is expected to reach.
#[derive(Debug, Default, Clone, PartialEq)]
struct Expected {
    open: u64,
    echo_open: u64,
    connections: u64,
    messages_in: u64,
    messages_out: u64,
    broadcasts: u64,
    slow_closes: u64,
    http_requests: u64,
    refused: [u64; 7],
    closes: [u64; 10],
}

const REASONS: [&str; 7] = [
    "bad_request",
    "origin",
    "auth",
    "capacity",
    "too_large",
    "timeout",
    "hook",
];
const CODES: [&str; 10] = [
    "1000", "1001", "1002", "1003", "1007", "1008", "1009", "1011", "1013", "other",
];

impl Expected {
    fn read(metrics: &Exposition) -> Expected {
        let labelled = |name: &str, label: &str, values: &[&str]| -> Vec<u64> {
            values
                .iter()
                .map(|v| metrics.value(name, &[(label, v)]) as u64)
                .collect()
        };
        Expected {
            open: metrics.count("wshub_connections_open"),
            echo_open: metrics.count("wshub_echo_connections_open"),
            connections: metrics.count("wshub_connections_total"),
            messages_in: metrics.count("wshub_messages_in_total"),
            messages_out: metrics.count("wshub_messages_out_total"),
            broadcasts: metrics.count("wshub_broadcasts_total"),
            slow_closes: metrics.count("wshub_slow_consumer_closes_total"),
            http_requests: metrics.count("wshub_http_requests_total"),
            refused: labelled("wshub_handshake_failures_total", "reason", &REASONS)
                .try_into()
                .unwrap(),
            closes: labelled("wshub_close_codes_sent_total", "code", &CODES)
                .try_into()
                .unwrap(),
        }
    }

    fn refuse(&mut self, reason: &str) {
        let at = REASONS.iter().position(|r| *r == reason).unwrap();
        self.refused[at] += 1;
    }

    fn close(&mut self, code: &str) {
        let at = CODES.iter().position(|c| *c == code).unwrap();
        self.closes[at] += 1;
    }
}

/// Closes with 1000 and reads until the server has answered and gone.
fn close_normally(client: &mut Client) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    client.ws.close(Some(frame)).expect("send Close");
    let deadline = Instant::now() + WAIT;
    while client.ws.read().is_ok() {
        assert!(Instant::now() < deadline, "the server never closed");
    }
}

/// Sends an upgrade request with one extra header; reads the one response.
fn refused_upgrade(server: &TestServer, extra_header: &str, path: &str) -> (u16, String) {
    let request =
        upgrade_request(path).replacen("\r\n\r\n", &format!("\r\n{extra_header}\r\n\r\n"), 1);
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    read_response(&mut std::io::BufReader::new(stream))
}

fn push(n: u64) -> Message {
    Message::new("push", json!(n))
}

/// The scripted session: a server with three chat clients and one echo
/// client, and the counters expected after each step.
struct Run {
    gate: Gate,
    want: Expected,
    alice: Client,
    bob: Client,
    slow: Client,
    echo: Client,
    /// Last, so the clients are dropped (and gone) before it shuts down.
    server: TestServer,
}

impl Run {
    /// A fresh server (checked: only the scrape itself), then four sessions.
    fn start() -> Run {
        let mut config = test_config();
        config.websocket.message_buffer_size = 4;
        config.websocket.allowed_origins = vec!["http://app.example".into()];
        let script = Script::default();
        let gate = script.gate.clone();
        let server =
            TestServer::start_with(config, Mode::Integrated, move |s| s.with_hooks(script));
        let first = scrape(server.addr);
        let want = Expected {
            http_requests: 1,
            ..Expected::default()
        };
        assert_eq!(Expected::read(&first.metrics), want);
        let count = |name| first.metrics.count(name);
        assert_eq!(count("wshub_bytes_in_total"), first.request_bytes);
        assert_eq!(count("wshub_bytes_out_total"), 0);
        assert_eq!(count("wshub_command_queue_depth"), 0);
        let mut run = Run {
            alice: server.connect(Some("alice")),
            bob: server.connect(Some("bob")),
            slow: server.connect(Some("slowpoke")),
            echo: server.connect_path("/api/ws/echo"),
            server,
            gate,
            want,
        };
        run.want.connections += 4;
        run.want.http_requests += 4;
        run.want.open = 3;
        run.want.echo_open = 1;
        run
    }

    /// Scrapes and checks every counter against what the script expects.
    fn check(&mut self) -> Scrape {
        let scraped = scrape(self.server.addr);
        self.want.http_requests += 1;
        assert_eq!(Expected::read(&scraped.metrics), self.want);
        scraped
    }

    /// Client messages of each kind, and what they cause out.
    fn messages(&mut self) {
        self.alice
            .send_json(json!({"type": "chat", "to": "bob", "content": "hi"}));
        assert_eq!(self.bob.recv_json()["content"], "hi");
        self.bob.send_json(json!({"type": "shout"}));
        assert_eq!(self.alice.recv_json()["type"], "shout");
        assert_eq!(self.slow.recv_json()["type"], "shout");
        self.alice.send_text("not json");
        assert_eq!(self.alice.recv_json()["type"], "error");
        self.alice.send_json(json!({"type": "join", "room": "r1"}));
        assert!(self.alice.sync().is_empty());
        self.echo.send_text("hello");
        assert_eq!(self.echo.recv_text(), "hello");
        self.want.messages_in += 6; // chat, shout, bad JSON, join, ping, echo
        self.want.messages_out += 1 + 2 + 1 + 1 + 1; // chat, shout x2, error, pong, echo
        self.want.broadcasts += 1; // shout
    }

    /// REST to everyone, handle to everyone, handle to a room; one user push.
    fn broadcasts(&mut self) {
        let notice = r#"{"type":"notice"}"#;
        let (status, body) = http(self.server.addr, "POST", "/api/ws/broadcast", &[], notice);
        assert_eq!((status, body.as_str()), (200, r#"{"sent":3}"#));
        let handle = &self.server.handle;
        handle.broadcast(&push(1)).unwrap();
        handle.broadcast_to_room("r1", &push(2)).unwrap();
        handle.send_to_user("bob", &push(3)).unwrap();
        for (client, count) in [
            (&mut self.alice, 3),
            (&mut self.bob, 3),
            (&mut self.slow, 2),
        ] {
            for _ in 0..count {
                client.recv_json();
            }
        }
        self.want.messages_out += 3 + 3 + 1 + 1;
        self.want.broadcasts += 3;
        self.want.http_requests += 1;
    }

    /// Exactly one message in and one out between two scrapes, so the byte
    /// counters move by known amounts: the frames, the later scrape's
    /// request, and the earlier scrape's response (written after it rendered).
    fn exact_bytes(&mut self) {
        let before = self.check();
        let text = r#"{"type":"chat","to":"bob","content":"bytes"}"#;
        self.alice.send_text(text);
        let relayed = self.bob.recv_text();
        self.want.messages_in += 1;
        self.want.messages_out += 1;
        let after = self.check();
        let delta = |name| after.metrics.count(name) - before.metrics.count(name);
        // A masked client frame: 2 header + 4 mask bytes; a server frame: 2 header bytes.
        assert_eq!(
            delta("wshub_bytes_in_total"),
            (2 + 4 + text.len() as u64) + after.request_bytes
        );
        assert_eq!(
            delta("wshub_bytes_out_total"),
            before.response_bytes + (2 + relayed.len() as u64)
        );
    }

    /// With the loop held, seven pushes arrive in one pass for a session
    /// with message_buffer_size 4: the queue fills, the socket takes what
    /// is queued, and all seven arrive — a burst is not a slow consumer
    /// (tests/liveness.rs covers real slow consumers and their counter).
    /// Then the session closes normally.
    fn burst_then_close(&mut self) {
        self.alice.send_json(json!({"type": "block"}));
        self.gate.wait_entered();
        for n in 0..7 {
            self.server
                .handle
                .send_to_user("slowpoke", &push(n))
                .unwrap();
        }
        self.gate.open();
        for n in 0..7 {
            assert_eq!(self.slow.recv_json(), json!({"type": "push", "content": n}));
        }
        close_normally(&mut self.slow);
        self.want.messages_in += 1;
        self.want.messages_out += 7;
        self.want.close("1000");
        self.want.open -= 1;
    }

    /// One refused upgrade for each of three reasons.
    fn refusals(&mut self) {
        let addr = self.server.addr;
        assert_eq!(http(addr, "GET", "/api/ws/connect", &[], "").0, 400);
        let origin = "Origin: http://evil.example";
        let (status, _) = refused_upgrade(&self.server, origin, "/api/ws/connect?user_id=x");
        assert_eq!(status, 403);
        let path = "/api/ws/connect?user_id=banned";
        let (status, body) = refused_upgrade(&self.server, "X-Test: 1", path);
        assert_eq!((status, body.as_str()), (403, r#"{"error":"banned user"}"#));
        self.want.refuse("bad_request");
        self.want.refuse("origin");
        self.want.refuse("hook");
        self.want.http_requests += 3;
    }

    /// Two clients close with 1000 (answered with 1000); one user is
    /// disconnected by the application (1000).
    fn disconnects(&mut self) {
        close_normally(&mut self.alice);
        close_normally(&mut self.echo);
        self.server.handle.disconnect_user("bob").unwrap();
        assert_eq!(self.bob.expect_close(), 1000);
        for _ in 0..3 {
            self.want.close("1000");
        }
        self.want.open = 0;
        self.want.echo_open = 0;
        let deadline = Instant::now() + WAIT;
        while self.server.handle.online_count() != 0 {
            assert!(Instant::now() < deadline, "sessions never left");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn metrics_after_a_scripted_session_are_exact() {
    let mut run = Run::start();
    run.messages();
    run.broadcasts();
    let middle = run.check();
    run.exact_bytes();
    run.burst_then_close();
    run.refusals();
    run.disconnects();
    let last = run.check();
    let count = |s: &Scrape, name| s.metrics.count(name);
    assert_eq!(count(&last, "wshub_pong_timeouts_total"), 0);
    assert_eq!(count(&last, "wshub_command_queue_depth"), 0);
    for name in ["wshub_bytes_in_total", "wshub_bytes_out_total"] {
        assert!(count(&last, name) > count(&middle, name), "{name}");
    }
    let passes = |s: &Scrape| s.metrics.value("wshub_loop_iteration_seconds_count", &[]);
    assert!(passes(&last) > passes(&middle));
}
