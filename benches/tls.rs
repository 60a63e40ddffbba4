//! Heap per idle session over TLS, beside plain TCP (`cargo bench --bench tls`).
//!
//! Starts the release `wshub` twice (plain, then with a certificate made by
//! `openssl` now), opens N chat sessions (default 10,000; `--conns N`) one
//! after another, lets them go idle, and reads the server's counting
//! allocator (`wshub_heap_allocated_bytes` in `/metrics`) before and after.
//! Prints one Markdown row per transport: heap per idle session in bytes.
//! `--deflate` adds two rows over plain TCP with `compression: true`:
//! sessions that negotiated permessage-deflate and sent one compressed
//! message before going idle, beside plain sessions that sent the same
//! message plain (issue 19: an idle compressed session costs what a plain
//! one does, after traffic too).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/process.rs"]
mod process;

use process::{free_port, Process};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

type Error = Box<dyn std::error::Error>;

/// Either kind of client stream, kept open while idle.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &mut **s,
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

struct Server {
    /// Stopped by its PID when the server is dropped.
    _process: Process,
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
}

impl Server {
    fn start(bin: &Path, dir: &Path, tls: Option<(&Path, &Path)>) -> Result<Server, Error> {
        Server::start_with(bin, dir, tls, "")
    }

    fn start_with(
        bin: &Path,
        dir: &Path,
        tls: Option<(&Path, &Path)>,
        websocket: &str,
    ) -> Result<Server, Error> {
        let port = free_port()?;
        let mut yaml = format!(
            "app:\n  host: 127.0.0.1\n  port: {port}\nlog:\n  level: warn\nwebsocket:\n  max_connections: 20000\n  max_http_connections: 20000\n{websocket}"
        );
        if let Some((cert, key)) = tls {
            yaml.push_str(&format!(
                "tls:\n  cert: \"{}\"\n  key: \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
        let config = dir.join(if tls.is_some() {
            "tls.yaml"
        } else {
            "plain.yaml"
        });
        std::fs::write(&config, yaml)?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let client = match tls {
            Some((cert, _)) => Some(client_config(cert)?),
            None => None,
        };
        let server = Server {
            _process: Process::new(child, None),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: client,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.heap().is_err() {
            if Instant::now() > deadline {
                return Err("server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn connect(&self) -> Result<Conn, Error> {
        let socket = TcpStream::connect(self.addr)?;
        socket.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(match &self.tls {
            None => Conn::Plain(socket),
            Some(config) => {
                let conn =
                    ClientConnection::new(config.clone(), ServerName::try_from("localhost")?)?;
                Conn::Tls(Box::new(StreamOwned::new(conn, socket)))
            }
        })
    }

    fn heap(&self) -> Result<u64, Error> {
        let mut conn = self.connect()?;
        let io = conn.io();
        io.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        let _ = io.read_to_string(&mut text);
        text.lines()
            .find_map(|l| l.strip_prefix("wshub_heap_allocated_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| "no heap figure in /metrics".into())
    }

    /// An upgraded chat session, its 101 read, left idle.
    fn open_session(&self, i: usize) -> Result<Conn, Error> {
        self.open_session_with(i, "")
    }

    /// [`Server::open_session`] with extra request headers.
    fn open_session_with(&self, i: usize, headers: &str) -> Result<Conn, Error> {
        let mut conn = self.connect()?;
        let io = conn.io();
        let request = format!(
            "GET /api/ws/connect?user_id=u{i} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        );
        io.write_all(request.as_bytes())?;
        let mut reader = BufReader::new(io);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 101") {
            return Err(format!("upgrade refused: {line:?}").into());
        }
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Ok(conn)
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

fn make_cert(dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
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

fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Heap per idle session, in bytes, for `n` sessions that each sent one
/// 94-byte ping (compressed when `deflate`) and read its pong.
fn measure_after_message(server: &Server, n: usize, deflate: bool) -> Result<f64, Error> {
    let ping =
        br#"{"type":"ping","content":"an idle session after one message, compressed or not....."}"#;
    let frame = if deflate {
        let mut z = flate2::Compress::new(flate2::Compression::default(), false);
        let mut out = Vec::with_capacity(256);
        z.compress_vec(ping, &mut out, flate2::FlushCompress::Sync)?;
        out.truncate(out.len() - 4);
        masked(0xC1, &out)
    } else {
        masked(0x81, ping)
    };
    let headers = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let before = server.heap()?;
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        let mut conn = server.open_session_with(i, headers)?;
        let io = conn.io();
        io.write_all(&frame)?;
        // The pong: 2-byte head, then the JSON echoing the content.
        let mut head = [0u8; 2];
        io.read_exact(&mut head)?;
        let mut body = vec![0u8; usize::from(head[1] & 0x7f)];
        io.read_exact(&mut body)?;
        sessions.push(conn);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = server.heap()?;
    drop(sessions);
    // Let the server reap them before the next round's baseline.
    std::thread::sleep(Duration::from_secs(2));
    Ok((after as f64 - before as f64) / n as f64)
}

/// A masked client frame of under 126 bytes.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}

/// Heap per idle session, in bytes, for `n` sessions.
fn measure(server: &Server, n: usize) -> Result<f64, Error> {
    let before = server.heap()?;
    let mut sessions = Vec::with_capacity(n);
    for i in 0..n {
        sessions.push(server.open_session(i)?);
    }
    // Let the loop finish every pass the opens caused.
    std::thread::sleep(Duration::from_millis(500));
    let after = server.heap()?;
    drop(sessions);
    Ok((after as f64 - before as f64) / n as f64)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs harness-less benches without `--bench`.
        return Ok(());
    }
    let n = args
        .iter()
        .position(|a| a == "--conns")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000usize);
    raise_descriptor_limit();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wshub"));
    let dir = std::env::temp_dir().join(format!("wshub-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = make_cert(&dir)?;
    println!("| transport | heap per idle session at {n} (bytes) |\n| --- | --- |");
    let plain = Server::start(&bin, &dir, None)?;
    println!("| plain TCP | {:.0} |", measure(&plain, n)?);
    drop(plain);
    let tls = Server::start(&bin, &dir, Some((&cert, &key)))?;
    println!("| TLS 1.3 | {:.0} |", measure(&tls, n)?);
    drop(tls);
    if args.iter().any(|a| a == "--deflate") {
        let server = Server::start_with(&bin, &dir, None, "  compression: true\n")?;
        // A first round makes the loop's one compressor and inflater and
        // grows its tables; then compressed, then plain, on the same server.
        measure_after_message(&server, n, true)?;
        let deflated = measure_after_message(&server, n, true)?;
        let plain = measure_after_message(&server, n, false)?;
        println!("| plain TCP, compression on, after one compressed message | {deflated:.0} |");
        println!("| plain TCP, compression on, after one plain message | {plain:.0} |");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
