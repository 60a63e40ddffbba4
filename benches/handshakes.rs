//! What a TLS handshake flood does to an established chat client
//! (`cargo bench --bench handshakes`; docs/tls.md, BENCHMARKS.md).
//!
//! For an RSA 2048 and an ECDSA P-256 certificate (made by `openssl` now),
//! starts the release `wshub` (or `--bin PATH`, e.g. a build of main) with
//! TLS, opens one `wss://` chat session that sends a ping every 10 ms and
//! times each pong, first quietly, then while one thread replays a recorded
//! ClientHello over fresh connections at `--rate` hellos a second (default
//! 2000; paced, so the flooder itself does not take the machine's cores)
//! for `--secs` seconds (default 3). Prints one Markdown row per
//! certificate: the chat client's round trip p50/p99/max without and with
//! the flood, hellos sent (and their bytes), and the server's CPU time.
//! Bounded: fixed durations, every process stopped by PID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/process.rs"]
mod process;

use process::{free_port, Process};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

type Error = Box<dyn std::error::Error>;

struct Server {
    process: Process,
    addr: SocketAddr,
}

impl Server {
    fn start(bin: &Path, dir: &Path, cert: &Path, key: &Path) -> Result<Server, Error> {
        let port = free_port()?;
        let yaml = format!(
            "app:\n  host: 127.0.0.1\n  port: {port}\nlog:\n  level: error\n\
             tls:\n  cert: \"{}\"\n  key: \"{}\"\n",
            cert.display(),
            key.display()
        );
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml)?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = Server {
            process: Process::new(child, None),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(server.addr).is_err() {
            if Instant::now() > deadline {
                return Err("server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.process.id())) else {
            return 0.0;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / 100.0
    }
}

fn client_config(cert: &Path) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(cert)?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn make_cert(dir: &Path, kind: &str) -> Result<(PathBuf, PathBuf), Error> {
    let (cert, key) = (
        dir.join(format!("{kind}-cert.pem")),
        dir.join(format!("{kind}-key.pem")),
    );
    let mut command = Command::new("openssl");
    command.args(["req", "-x509", "-newkey"]);
    match kind {
        "rsa" => command.args(["rsa:2048"]),
        _ => command.args(["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
    };
    let status = command
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err("openssl failed".into());
    }
    Ok((cert, key))
}

/// A masked client text frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}

/// An upgraded `wss://` chat session.
fn chat_session(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<StreamOwned<ClientConnection, TcpStream>, Error> {
    let socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    socket.set_nodelay(true)?;
    let conn = ClientConnection::new(config.clone(), ServerName::try_from("localhost")?)?;
    let mut tls = StreamOwned::new(conn, socket);
    tls.write_all(b"GET /api/ws/connect?user_id=chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err("upgrade refused".into());
    }
    Ok(tls)
}

/// Round trips (ms) of pings every 10 ms for `for_time`.
fn chat_rtts(
    tls: &mut StreamOwned<ClientConnection, TcpStream>,
    for_time: Duration,
) -> Result<Vec<f64>, Error> {
    let ping = frame(br#"{"type":"ping"}"#);
    let mut rtts = Vec::new();
    let start = Instant::now();
    while start.elapsed() < for_time {
        let sent = Instant::now();
        tls.write_all(&ping)?;
        // The pong: a 2-byte head and `{"type":"pong"}`.
        let mut reply = [0u8; 2 + 15];
        tls.read_exact(&mut reply)?;
        rtts.push(sent.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(10));
    }
    rtts.sort_by(f64::total_cmp);
    Ok(rtts)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One recorded ClientHello (what a client sends first).
fn client_hello(config: &Arc<ClientConfig>) -> Result<Vec<u8>, Error> {
    let mut conn = ClientConnection::new(config.clone(), ServerName::try_from("localhost")?)?;
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello)?;
    }
    Ok(hello)
}

fn run(bin: &Path, dir: &Path, kind: &str, rate: u64, secs: u64) -> Result<(), Error> {
    let (cert, key) = make_cert(dir, kind)?;
    let server = Server::start(bin, dir, &cert, &key)?;
    let config = client_config(&cert)?;
    let mut chat = chat_session(server.addr, &config)?;
    let quiet = chat_rtts(&mut chat, Duration::from_secs(1))?;
    let hello = Arc::new(client_hello(&config)?);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let cpu_before = server.cpu_seconds();
    let flooder = {
        let (hello, stop, sent, addr) = (hello.clone(), stop.clone(), sent.clone(), server.addr);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // Paced: as many as the rate allows by now, then a pause.
                let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
                if sent.load(Ordering::Relaxed) >= due {
                    std::thread::sleep(Duration::from_micros(500));
                    continue;
                }
                let Ok(mut socket) = TcpStream::connect(addr) else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                if socket.write_all(&hello).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let flood = chat_rtts(&mut chat, Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let _ = flooder.join();
    let cpu = server.cpu_seconds() - cpu_before;
    let flood = flood?;
    let hellos = sent.load(Ordering::Relaxed);
    println!(
        "| {kind} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {hellos} ({} KiB) | {:.2} s of {secs} s |",
        pct(&quiet, 0.5),
        pct(&quiet, 0.99),
        pct(&quiet, 1.0),
        pct(&flood, 0.5),
        pct(&flood, 0.99),
        pct(&flood, 1.0),
        hellos * hello.len() as u64 / 1024,
        cpu
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs harness-less benches without `--bench`.
        return Ok(());
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rate = value("--rate")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000u64);
    let secs = value("--secs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3u64)
        .min(30);
    let bin =
        value("--bin").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wshub")), PathBuf::from);
    let dir = std::env::temp_dir().join(format!("wshub-bench-handshakes-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("binary: {}, {rate} hellos/s for {secs} s", bin.display());
    println!("| certificate | chat round trip quiet p50 / p99 / max (ms) | during the flood p50 / p99 / max (ms) | hellos replayed | server CPU |");
    println!("| --- | --- | --- | --- | --- |");
    for kind in ["rsa", "ecdsa"] {
        run(&bin, &dir, kind, rate, secs)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
