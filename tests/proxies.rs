//! Client addresses behind proxies (issue 24), over real loopback sockets:
//! forwarding headers from trusted and untrusted peers, the PROXY protocol
//! (v1, v2, split, broken, untrusted, before TLS) and
//! `max_connections_per_ip`. Client sockets are bound to different
//! 127.0.0.x source addresses (socket2) to play different clients and
//! proxies; the derived address is read back from the connect hook.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use wshub::config::{ClientIpHeader, Trusted};
use wshub::{Actions, Config, Hooks, Mode, SessionInfo};

use common::tls::{client_config, make_cert, temp_dir};
use common::{read_full_response, test_config, TestServer, WAIT};

const PROXY_IP: &str = "127.0.0.2";
const CLIENT_IP: &str = "127.0.0.3";
const OTHER_IP: &str = "127.0.0.4";
const TOO_MANY: &str = r#"{"error":"too many connections from this address"}"#;

/// What the connect hook saw: `(client, peer)` per upgrade.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(IpAddr, SocketAddr)>>>);

impl Hooks for Seen {
    fn on_connect(&mut self, info: &SessionInfo<'_>, _: &mut Actions) -> Result<(), String> {
        self.0.lock().unwrap().push((info.client, info.peer));
        Ok(())
    }
}

impl Seen {
    fn last(&self) -> (IpAddr, SocketAddr) {
        *self.0.lock().unwrap().last().expect("a connect was seen")
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn start(config: Config) -> (TestServer, Seen) {
    let seen = Seen::default();
    let hooks = seen.clone();
    let server = TestServer::start_with(config, Mode::Integrated, move |s| s.with_hooks(hooks));
    (server, seen)
}

fn behind(trusted: &[&str], header: ClientIpHeader) -> Config {
    let mut config = test_config();
    config.app.trusted_proxies = Trusted::parse(trusted).unwrap();
    config.app.client_ip_header = header;
    config
}

/// A TCP connection to `to` from source address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let source: SocketAddr = format!("{from}:0").parse().unwrap();
    socket
        .bind(&source.into())
        .expect("bind a 127.0.0.x source");
    socket.connect(&to.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// An upgrade request with extra header lines.
fn upgrade(headers: &[&str]) -> String {
    let mut request = String::from(
        "GET /api/ws/connect?user_id=u HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// Sends `prelude` then an upgrade with `headers` from `from`; the status
/// and body of the answer, and the connection (open after a 101).
fn upgrade_from(
    server: &TestServer,
    from: &str,
    prelude: &[u8],
    headers: &[&str],
) -> (u16, String, BufReader<TcpStream>) {
    let mut stream = connect_from(from, server.addr);
    stream.write_all(prelude).unwrap();
    stream.write_all(upgrade(headers).as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let (status, _, body) = read_full_response(&mut reader);
    (status, body, reader)
}

/// The client the server derived for an upgrade with these headers.
fn client_for(server: &TestServer, seen: &Seen, from: &str, headers: &[&str]) -> IpAddr {
    let (status, body, _) = upgrade_from(server, from, b"", headers);
    assert_eq!(status, 101, "{body}");
    seen.last().0
}

/// The server closes without writing a byte.
fn closed_silently(stream: &mut impl Read) {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("expected a close, got {e} after {got:?}"),
        }
    }
    assert!(
        got.is_empty(),
        "expected no response, got {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// One GET, read to the end of its response.
fn get(stream: &mut BufReader<TcpStream>, path: &str, close: bool) -> (u16, String) {
    let connection = if close { "close" } else { "keep-alive" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes()).unwrap();
    let (status, _, body) = read_full_response(stream);
    (status, body)
}

fn proxy_v1(client: &str, port: u16) -> Vec<u8> {
    let family = if client.contains(':') { "TCP6" } else { "TCP4" };
    let destination = if client.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    format!("PROXY {family} {client} {destination} {port} 80\r\n").into_bytes()
}

fn proxy_v2(command: u8, source: Option<SocketAddr>, tlvs: &[u8]) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match source {
        None => 0x00,
        Some(SocketAddr::V4(a)) => {
            addresses.extend(a.ip().octets());
            addresses.extend([127, 0, 0, 1]);
            addresses.extend(a.port().to_be_bytes());
            addresses.extend(80u16.to_be_bytes());
            0x11
        }
        Some(SocketAddr::V6(a)) => {
            addresses.extend(a.ip().octets());
            addresses.extend(std::net::Ipv6Addr::LOCALHOST.octets());
            addresses.extend(a.port().to_be_bytes());
            addresses.extend(80u16.to_be_bytes());
            0x21
        }
    };
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend(((addresses.len() + tlvs.len()) as u16).to_be_bytes());
    out.extend(addresses);
    out.extend(tlvs);
    out
}

fn proxied_config() -> Config {
    let mut config = behind(&[PROXY_IP, "10.0.0.0/8"], ClientIpHeader::XForwardedFor);
    config.app.proxy_protocol = true;
    config
}

/// `/metrics` through a proxied connection when `proxy` is set.
fn metrics(server: &TestServer, proxy: bool) -> String {
    let mut stream = connect_from(PROXY_IP, server.addr);
    if proxy {
        stream.write_all(&proxy_v1("192.0.2.250", 1)).unwrap();
    }
    let mut reader = BufReader::new(stream);
    let (status, body) = get(&mut reader, "/metrics", true);
    assert_eq!(status, 200);
    body
}

fn failures(metrics: &str, reason: &str) -> u64 {
    let key = format!("wshub_handshake_failures_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in metrics"))
}

// ------------------------------------------------------ forwarding headers

#[test]
fn headers_from_untrusted_peers_are_ignored() {
    let (server, seen) = start(behind(&[PROXY_IP], ClientIpHeader::XForwardedFor));
    for spoof in [
        "X-Forwarded-For: 1.2.3.4",
        "Forwarded: for=1.2.3.4",
        "X-Real-IP: 1.2.3.4",
    ] {
        assert_eq!(
            client_for(&server, &seen, CLIENT_IP, &[spoof]),
            ip(CLIENT_IP)
        );
    }
    // Trust nothing by default: even the "proxy" address is a client.
    let (server, seen) = start(test_config());
    let xff = ["X-Forwarded-For: 1.2.3.4"];
    assert_eq!(client_for(&server, &seen, PROXY_IP, &xff), ip(PROXY_IP));
}

#[test]
fn chains_of_trusted_and_untrusted_hops() {
    let (server, seen) = start(behind(
        &[PROXY_IP, "10.0.0.0/8"],
        ClientIpHeader::XForwardedFor,
    ));
    let from_proxy = |headers: &[&str]| client_for(&server, &seen, PROXY_IP, headers);
    assert_eq!(from_proxy(&["X-Forwarded-For: 1.2.3.4"]), ip("1.2.3.4"));
    // The client's own spoofed entry (leftmost) never wins.
    assert_eq!(
        from_proxy(&["X-Forwarded-For: 6.6.6.6, 1.2.3.4, 10.0.0.9"]),
        ip("1.2.3.4")
    );
    // Several lines are one list, in order.
    assert_eq!(
        from_proxy(&[
            "X-Forwarded-For: 6.6.6.6",
            "x-forwarded-for: 10.0.0.1, 10.0.0.2"
        ]),
        ip("6.6.6.6")
    );
    assert_eq!(
        from_proxy(&["X-Forwarded-For: 10.0.0.1", "X-Forwarded-For: 6.6.6.6"]),
        ip("6.6.6.6")
    );
    // Every hop trusted: the leftmost.
    assert_eq!(
        from_proxy(&["X-Forwarded-For: 10.0.0.7, 10.0.0.9"]),
        ip("10.0.0.7")
    );
    assert_eq!(
        from_proxy(&["X-Forwarded-For: [2001:db8::5]:4711, 10.0.0.9"]),
        ip("2001:db8::5")
    );
    assert_eq!(from_proxy(&[]), ip(PROXY_IP), "no header: the proxy itself");
}

#[test]
fn garbage_empty_oversized_and_zoned_values_stop_at_the_proxy() {
    let (server, seen) = start(behind(
        &[PROXY_IP, "10.0.0.0/8"],
        ClientIpHeader::XForwardedFor,
    ));
    let from_proxy = |headers: &[&str]| client_for(&server, &seen, PROXY_IP, headers);
    for bad in [
        "X-Forwarded-For: garbage",
        "X-Forwarded-For:",
        "X-Forwarded-For: ,",
        "X-Forwarded-For: 1.2.3.4,",
        "X-Forwarded-For: unknown",
        "X-Forwarded-For: fe80::1%eth0",
        "X-Forwarded-For: [fe80::1%25eth0]:80",
        "X-Forwarded-For: 1.2.3.4:99999999",
        "X-Forwarded-For: 300.1.1.1",
    ] {
        assert_eq!(from_proxy(&[bad]), ip(PROXY_IP), "{bad}");
    }
    // Stopped at the trusted hop that reported the garbage.
    assert_eq!(
        from_proxy(&["X-Forwarded-For: 1.2.3.4, junk, 10.0.0.9"]),
        ip("10.0.0.9")
    );
    // A value of 12 KB (within the head bound): one entry, not an address.
    let long = format!("X-Forwarded-For: 1.2.3.4, {}", "7".repeat(12_000));
    assert_eq!(from_proxy(&[&long]), ip(PROXY_IP));
    // Thousands of trusted hops are walked to the client.
    let hops = vec!["10.1.2.3"; 1000].join(",");
    let many = format!("X-Forwarded-For: 1.2.3.4,{hops}");
    assert_eq!(from_proxy(&[&many]), ip("1.2.3.4"));
    // Over max_header_bytes: 431 as for any head.
    let huge = format!("X-Forwarded-For: {}", "1".repeat(20_000));
    let (status, _, _) = upgrade_from(&server, PROXY_IP, b"", &[&huge]);
    assert_eq!(status, 431);
    // Bytes that are not UTF-8 (obs-text, which HTTP allows in values).
    let mut stream = connect_from(PROXY_IP, server.addr);
    let request = upgrade(&["X-Forwarded-For: 1.2.3.4, @"]);
    let bytes: Vec<u8> = request
        .bytes()
        .map(|b| if b == b'@' { 0xff } else { b })
        .collect();
    stream.write_all(&bytes).unwrap();
    let (status, _, _) = read_full_response(&mut BufReader::new(stream));
    assert_eq!(status, 101);
    assert_eq!(seen.last().0, ip(PROXY_IP));
}

#[test]
fn forwarded_and_x_real_ip() {
    let (server, seen) = start(behind(&[PROXY_IP, "10.0.0.0/8"], ClientIpHeader::Forwarded));
    let from_proxy = |headers: &[&str]| client_for(&server, &seen, PROXY_IP, headers);
    assert_eq!(
        from_proxy(&["Forwarded: for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\""]),
        ip("2001:db8:cafe::17")
    );
    assert_eq!(
        from_proxy(&[
            "Forwarded: for=192.0.2.43",
            "Forwarded: for=10.0.0.5;by=10.0.0.1"
        ]),
        ip("192.0.2.43")
    );
    assert_eq!(
        from_proxy(&["Forwarded: For=\"192.0.2.9:80\""]),
        ip("192.0.2.9")
    );
    for stop in [
        "Forwarded: for=unknown",
        "Forwarded: for=_hidden",
        "Forwarded: for=\"_SEVKISEK:4711\"",
        "Forwarded: proto=https",
        "Forwarded: for=\"[fe80::1%25eth0]\"",
        "Forwarded: for=\"1.2.3.4",
    ] {
        assert_eq!(from_proxy(&[stop]), ip(PROXY_IP), "{stop}");
    }
    // The configured header only.
    assert_eq!(from_proxy(&["X-Forwarded-For: 1.2.3.4"]), ip(PROXY_IP));

    let (server, seen) = start(behind(&[PROXY_IP], ClientIpHeader::XRealIp));
    let from_proxy = |headers: &[&str]| client_for(&server, &seen, PROXY_IP, headers);
    assert_eq!(from_proxy(&["X-Real-IP: 203.0.113.9"]), ip("203.0.113.9"));
    assert_eq!(
        from_proxy(&["X-Real-IP: 203.0.113.9", "X-Real-IP: 6.6.6.6"]),
        ip(PROXY_IP),
        "two lines are no address"
    );
    assert_eq!(from_proxy(&["X-Real-IP: nonsense"]), ip(PROXY_IP));
}

// ------------------------------------------------- max_connections_per_ip

#[test]
fn per_ip_limit_counts_http_and_websocket_together() {
    let mut config = test_config();
    config.websocket.max_connections_per_ip = 2;
    let (server, _) = start(config);
    let (status, _, ws) = upgrade_from(&server, CLIENT_IP, b"", &[]);
    assert_eq!(status, 101);
    let mut idle = BufReader::new(connect_from(CLIENT_IP, server.addr));
    assert_eq!(get(&mut idle, "/health", false).0, 200);
    // The third, from the same address: 503 and closed.
    let mut third = BufReader::new(connect_from(CLIENT_IP, server.addr));
    let (status, _, body) = read_full_response(&mut third);
    assert_eq!((status, body.as_str()), (503, TOO_MANY));
    closed_silently(&mut third);
    // Another address is not affected.
    let (status, _, _) = upgrade_from(&server, OTHER_IP, b"", &[]);
    assert_eq!(status, 101);
    // A closed connection frees its place.
    drop(ws);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut again = BufReader::new(connect_from(CLIENT_IP, server.addr));
        let (status, _) = get(&mut again, "/health", true);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = metrics(&server, false);
    assert!(failures(&text, "ip_limit") >= 1, "{text}");
    assert!(
        !text.contains(CLIENT_IP),
        "an address in the metrics: {text}"
    );
}

#[test]
fn per_ip_limit_behind_a_proxy_counts_the_forwarded_client() {
    let mut config = behind(&[PROXY_IP], ClientIpHeader::XForwardedFor);
    config.websocket.max_connections_per_ip = 1;
    let (server, _) = start(config);
    // The proxy itself is not limited, its clients are.
    let (status, _, _first) = upgrade_from(&server, PROXY_IP, b"", &["X-Forwarded-For: 1.2.3.4"]);
    assert_eq!(status, 101);
    let (status, body, mut refused) =
        upgrade_from(&server, PROXY_IP, b"", &["X-Forwarded-For: 1.2.3.4"]);
    assert_eq!((status, body.as_str()), (503, TOO_MANY));
    closed_silently(&mut refused);
    let (status, _, _other) = upgrade_from(&server, PROXY_IP, b"", &["X-Forwarded-For: 5.6.7.8"]);
    assert_eq!(status, 101);
    // One keep-alive connection carrying two clients' requests moves its
    // count: the second client is over the limit.
    let mut shared = BufReader::new(connect_from(PROXY_IP, server.addr));
    let request = "GET /health HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n";
    shared.get_mut().write_all(request.as_bytes()).unwrap();
    assert_eq!(read_full_response(&mut shared).0, 200);
    let request = "GET /health HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
    shared.get_mut().write_all(request.as_bytes()).unwrap();
    let (status, _, body) = read_full_response(&mut shared);
    assert_eq!((status, body.as_str()), (503, TOO_MANY));
}

// --------------------------------------------------------- PROXY protocol

#[test]
fn proxy_v1_and_v2_name_the_client() {
    let (server, seen) = start(proxied_config());
    let (status, _, _a) = upgrade_from(&server, PROXY_IP, &proxy_v1("203.0.113.7", 4660), &[]);
    assert_eq!(status, 101);
    assert_eq!(
        seen.last(),
        (ip("203.0.113.7"), "203.0.113.7:4660".parse().unwrap())
    );

    let v6: SocketAddr = "[2001:db8::7]:4661".parse().unwrap();
    let (status, _, _b) = upgrade_from(&server, PROXY_IP, &proxy_v1("2001:db8::7", 4661), &[]);
    assert_eq!(status, 101);
    assert_eq!(seen.last(), (v6.ip(), v6));

    let v4: SocketAddr = "198.51.100.1:9".parse().unwrap();
    let tlvs = [0xEA, 0x00, 0x03, b'v', b'p', b'c'];
    let (status, _, _c) = upgrade_from(&server, PROXY_IP, &proxy_v2(1, Some(v4), &tlvs), &[]);
    assert_eq!(status, 101);
    assert_eq!(seen.last(), (v4.ip(), v4));

    let (status, _, _d) = upgrade_from(&server, PROXY_IP, &proxy_v2(1, Some(v6), &[]), &[]);
    assert_eq!(status, 101);
    assert_eq!(seen.last().0, v6.ip());

    // LOCAL (a balancer's health check): the peer's own address.
    let (status, _, _e) = upgrade_from(&server, PROXY_IP, &proxy_v2(0, None, &[]), &[]);
    assert_eq!(status, 101);
    assert_eq!(seen.last().0, ip(PROXY_IP));
    // v1 UNKNOWN likewise.
    let (status, _, _f) = upgrade_from(&server, PROXY_IP, b"PROXY UNKNOWN\r\n", &[]);
    assert_eq!(status, 101);
    assert_eq!(seen.last().0, ip(PROXY_IP));

    // A trusted source then walks the forwarding header as usual.
    let headers = ["X-Forwarded-For: 1.2.3.4"];
    let (status, _, _g) = upgrade_from(&server, PROXY_IP, &proxy_v1("10.0.0.5", 1), &headers);
    assert_eq!(status, 101);
    assert_eq!(seen.last().0, ip("1.2.3.4"));
    let (status, _, _h) = upgrade_from(&server, PROXY_IP, &proxy_v1("198.51.100.2", 1), &headers);
    assert_eq!(status, 101);
    assert_eq!(
        seen.last().0,
        ip("198.51.100.2"),
        "an untrusted source's header is ignored"
    );
}

#[test]
fn proxy_header_split_over_many_reads() {
    let (server, seen) = start(proxied_config());
    for header in [
        proxy_v1("203.0.113.8", 1),
        proxy_v2(
            1,
            Some("203.0.113.8:1".parse().unwrap()),
            &[0xEA, 0, 1, b'x'],
        ),
    ] {
        let mut stream = connect_from(PROXY_IP, server.addr);
        for byte in &header {
            stream.write_all(&[*byte]).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
        // The request in pieces too, right behind the header's last byte.
        let request = upgrade(&[]);
        let (a, b) = request.as_bytes().split_at(7);
        stream.write_all(a).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        stream.write_all(b).unwrap();
        let (status, _, _) = read_full_response(&mut BufReader::new(stream));
        assert_eq!(status, 101);
        assert_eq!(seen.last().0, ip("203.0.113.8"));
    }
    // Header and request in one write.
    let mut both = proxy_v1("203.0.113.9", 1);
    both.extend(upgrade(&[]).as_bytes());
    let (status, _, _) = upgrade_from(&server, PROXY_IP, &both, &[]);
    assert_eq!(status, 101);
    assert_eq!(seen.last().0, ip("203.0.113.9"));
}

#[test]
fn bad_missing_long_or_untrusted_proxy_headers_close_without_a_response() {
    let mut config = proxied_config();
    config.websocket.handshake_timeout = Duration::from_millis(300);
    let (server, _) = start(config);
    let too_long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120], b"\r\n"].concat();
    let mut v2_huge = proxy_v2(1, Some("192.0.2.1:1".parse().unwrap()), &[]);
    v2_huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
    let mut v2_bad_version = proxy_v2(1, Some("192.0.2.1:1".parse().unwrap()), &[]);
    v2_bad_version[12] = 0x11;
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("missing", PROXY_IP, upgrade(&[]).into_bytes()),
        (
            "bad signature",
            PROXY_IP,
            b"PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ),
        ("garbage", PROXY_IP, b"\x00\x01\x02\x03 hello\r\n".to_vec()),
        ("v1 over 107 bytes", PROXY_IP, too_long),
        (
            "v1 bad address",
            PROXY_IP,
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "v1 without CR",
            PROXY_IP,
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
        ),
        ("v2 over its bound", PROXY_IP, v2_huge),
        ("v2 bad version", PROXY_IP, v2_bad_version),
        (
            "TLS ClientHello",
            PROXY_IP,
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
        ),
        ("untrusted peer", CLIENT_IP, proxy_v1("203.0.113.7", 1)),
        (
            "partial, then silence",
            PROXY_IP,
            b"PROXY TCP4 203.0.".to_vec(),
        ),
    ];
    for (name, from, bytes) in &cases {
        let mut stream = connect_from(from, server.addr);
        // A peer may be closed before it writes: that is a close too.
        let _ = stream.write_all(bytes);
        eprintln!("case: {name}");
        closed_silently(&mut stream);
    }
    let text = metrics(&server, true);
    assert!(
        failures(&text, "proxy_header") >= cases.len() as u64 - 1,
        "{text}"
    );
}

#[test]
fn proxy_header_then_tls() {
    let dir = temp_dir("proxy");
    let cert = make_cert(&dir, "proxy");
    let mut config = proxied_config();
    config.tls.cert = cert.cert.to_string_lossy().into_owned();
    config.tls.key = cert.key.to_string_lossy().into_owned();
    let (server, seen) = start(config);
    let client = client_config(&[&cert]);

    let mut socket = connect_from(PROXY_IP, server.addr);
    socket.write_all(&proxy_v1("203.0.113.20", 7)).unwrap();
    let conn =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, socket);
    tls.write_all(upgrade(&[]).as_bytes()).unwrap();
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    assert_eq!(seen.last().0, ip("203.0.113.20"));

    // v2 header and the ClientHello in one write.
    let mut socket = connect_from(PROXY_IP, server.addr);
    let header = proxy_v2(1, Some("203.0.113.21:7".parse().unwrap()), &[]);
    let mut conn =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut first = header.clone();
    conn.write_tls(&mut first).unwrap();
    socket.write_all(&first).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, socket);
    tls.write_all(upgrade(&[]).as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(tls).read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    assert_eq!(seen.last().0, ip("203.0.113.21"));

    // A ClientHello without the header: closed, no handshake.
    let socket = connect_from(PROXY_IP, server.addr);
    let conn = rustls::ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, socket);
    let result = tls.write_all(b"GET /health HTTP/1.1\r\n\r\n");
    let mut buf = [0u8; 16];
    let read = result.and_then(|_| tls.read(&mut buf));
    assert!(
        !matches!(read, Ok(n) if n > 0),
        "the handshake must fail: {read:?}"
    );
}

#[test]
fn proxy_header_and_per_ip_limit_count_ipv6_per_64() {
    let mut config = proxied_config();
    config.websocket.max_connections_per_ip = 1;
    let (server, _) = start(config);
    let a: SocketAddr = "[2001:db8:0:1::1]:1".parse().unwrap();
    let same_64: SocketAddr = "[2001:db8:0:1:ffff::2]:1".parse().unwrap();
    let other_64: SocketAddr = "[2001:db8:0:2::1]:1".parse().unwrap();
    let (status, _, _first) = upgrade_from(&server, PROXY_IP, &proxy_v2(1, Some(a), &[]), &[]);
    assert_eq!(status, 101);
    // Refused right after the header, before any request.
    let mut stream = connect_from(PROXY_IP, server.addr);
    stream.write_all(&proxy_v2(1, Some(same_64), &[])).unwrap();
    let mut reader = BufReader::new(stream);
    let (status, _, body) = read_full_response(&mut reader);
    assert_eq!((status, body.as_str()), (503, TOO_MANY));
    let (status, _, _) = upgrade_from(&server, PROXY_IP, &proxy_v2(1, Some(other_64), &[]), &[]);
    assert_eq!(status, 101);
}
