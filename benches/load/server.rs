//! Servers under test as child processes: wshub (the binary cargo built for this
//! bench), the peers from shared/peers (node-ws and go-hub copied under the
//! target dir, since shared/ is read-only, and built there once; rust-axum
//! built into /tmp/peer-rust), and the built-in ceiling server
//! (this bench binary re-run with `--serve-ceiling`). Each child is pinned to
//! core 0 with `taskset -c 0`, dies with the bench (PR_SET_PDEATHSIG), and is
//! killed by its PID when its [`ServerProc`] drops. Touches only files under
//! the target dir and the bench's temp dir, and only processes it started.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};
use crate::stats;

/// Where the peers' sources live (read-only).
const PEERS_SRC: &str = "/work/shared/peers";
/// Cargo's target dir for the rust-axum peer.
const RUST_PEER_TARGET: &str = "/tmp/peer-rust";

/// Which server a column measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The crate's own `wshub` binary.
    Wshub,
    /// Another wshub binary (`--baseline PATH`, e.g. a build of main), for
    /// before/after figures taken in the same run.
    Baseline,
    /// The baseline binary with `websocket.compression: true` (`--baseline`
    /// with `--compression`): before/after figures for compression too.
    BaselineDeflate,
    /// The same binary with `websocket.compression: true` (`--compression`).
    WshubDeflate,
    /// The same binary and config, receivers over Server-Sent Events
    /// (`--sse`).
    WshubSse,
    /// The same binary with `history.size: 100` (`--history`).
    WshubHistory,
    /// shared/peers/node-ws (Node.js + ws).
    Node,
    /// shared/peers/go-hub (Go + gorilla/websocket).
    Go,
    /// shared/peers/rust-axum (axum + tokio-tungstenite).
    Rust,
    /// The bench's own trivial server: measures the client's ceiling.
    Ceiling,
}

impl Flavor {
    /// Column name.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Wshub => "wshub",
            Flavor::Baseline => "wshub-base",
            Flavor::BaselineDeflate => "wshub-base-deflate",
            Flavor::WshubDeflate => "wshub-deflate",
            Flavor::WshubSse => "wshub-sse",
            Flavor::WshubHistory => "wshub-history",
            Flavor::Node => "node-ws",
            Flavor::Go => "go-hub",
            Flavor::Rust => "rust-axum",
            Flavor::Ceiling => "ceiling",
        }
    }

    /// Parses a `--peer` value.
    pub fn parse_peer(s: &str) -> Option<Flavor> {
        match s {
            "node" | "node-ws" => Some(Flavor::Node),
            "go" | "go-hub" => Some(Flavor::Go),
            "rust" | "rust-axum" | "axum" => Some(Flavor::Rust),
            _ => None,
        }
    }
}

/// File-system places the bench uses.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Cargo's target dir (peers are copied and built under `peers/` in it).
    pub target_dir: PathBuf,
    /// This run's scratch dir (configs, server logs); removed at the end.
    pub work_dir: PathBuf,
    /// The wshub binary, when known.
    pub wshub_bin: Option<PathBuf>,
    /// The baseline wshub binary, if one is compared.
    pub baseline_bin: Option<PathBuf>,
    /// This bench binary, re-run as the ceiling server.
    pub self_exe: PathBuf,
}

impl Paths {
    /// Derives the places from the running executable (`<target>/release/deps/load-*`).
    pub fn discover(wshub_bin: Option<PathBuf>, baseline_bin: Option<PathBuf>) -> Result<Paths> {
        let self_exe =
            std::env::current_exe().map_err(|e| BenchError::io("locate the bench binary", e))?;
        let target_dir = self_exe
            .ancestors()
            .find(|p| p.file_name().is_some_and(|n| n == "deps"))
            .and_then(|deps| deps.parent()?.parent())
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("target"));
        let work_dir = std::env::temp_dir().join(format!("wshub-load-{}", std::process::id()));
        fs::create_dir_all(&work_dir)
            .map_err(|e| BenchError::io(format!("create {}", work_dir.display()), e))?;
        Ok(Paths {
            target_dir,
            work_dir,
            wshub_bin,
            baseline_bin,
            self_exe,
        })
    }
}

/// Makes a peer runnable once (copy out of shared/, `npm ci`, `go build`, `cargo build`).
pub fn prepare(flavor: Flavor, paths: &Paths) -> Result<()> {
    let peers = paths.target_dir.join("peers");
    match flavor {
        Flavor::Wshub | Flavor::WshubDeflate | Flavor::WshubSse | Flavor::WshubHistory => match &paths.wshub_bin {
            Some(p) if p.exists() => Ok(()),
            Some(p) => Err(BenchError::Server(format!("wshub binary {} does not exist", p.display()))),
            None => Err(BenchError::Server("no wshub binary (run through `cargo bench` in the wshub crate or pass --wshub PATH)".into())),
        },
        Flavor::Baseline | Flavor::BaselineDeflate => match &paths.baseline_bin {
            Some(p) if p.exists() => Ok(()),
            Some(p) => Err(BenchError::Server(format!("baseline binary {} does not exist", p.display()))),
            None => Err(BenchError::Server("no baseline binary (--baseline PATH)".into())),
        },
        Flavor::Ceiling => Ok(()),
        Flavor::Node => {
            let dir = peers.join("node-ws");
            copy_tree(&Path::new(PEERS_SRC).join("node-ws"), &dir)?;
            if !dir.join("node_modules").exists() {
                run_tool(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir), "npm ci in node-ws")?;
            }
            Ok(())
        }
        Flavor::Go => {
            let dir = peers.join("go-hub");
            copy_tree(&Path::new(PEERS_SRC).join("go-hub"), &dir)?;
            let mut cmd = Command::new("go");
            cmd.args(["build", "-o", "peer-go", "."])
                .current_dir(&dir)
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode");
            run_tool(&mut cmd, "go build of go-hub (needs: apt-get install -y golang-go golang-github-gorilla-websocket-dev)")
        }
        Flavor::Rust => {
            // Built straight from the read-only sources (the lock file is
            // complete) into a target dir under /tmp, as the peers' README says.
            let manifest = Path::new(PEERS_SRC).join("rust-axum").join("Cargo.toml");
            let mut cmd = Command::new("cargo");
            cmd.args(["build", "--release", "--locked", "--manifest-path"])
                .arg(&manifest)
                .arg("--target-dir")
                .arg(RUST_PEER_TARGET);
            run_tool(&mut cmd, "cargo build of rust-axum")
        }
    }
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("[load] preparing: {what}");
    let status = cmd
        .status()
        .map_err(|e| BenchError::io(what.to_string(), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Server(format!("{what} failed with {status}")))
    }
}

/// Copies regular files and folders (not `target/`, `node_modules/`), keeping newer copies.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst).map_err(|e| BenchError::io(format!("create {}", dst.display()), e))?;
    let entries =
        fs::read_dir(src).map_err(|e| BenchError::io(format!("read {}", src.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BenchError::io(format!("read {}", src.display()), e))?;
        let name = entry.file_name();
        if name == "target" || name == "node_modules" {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(&name));
        if from.is_dir() {
            copy_tree(&from, &to)?;
        } else if fs::read(&from).ok() != fs::read(&to).ok() {
            fs::copy(&from, &to)
                .map_err(|e| BenchError::io(format!("copy {}", from.display()), e))?;
        }
    }
    Ok(())
}

/// A running server under test.
pub struct ServerProc {
    /// Which server.
    pub flavor: Flavor,
    /// Its listening address.
    pub addr: SocketAddr,
    /// Its PID (taskset execs the server, so this is the server itself).
    pub pid: u32,
    child: Child,
    log: PathBuf,
}

impl ServerProc {
    /// Starts `flavor` on a free port, pinned to core 0, and waits until it accepts.
    pub fn start(flavor: Flavor, paths: &Paths) -> Result<ServerProc> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = paths.work_dir.join(format!("{}-{port}.log", flavor.name()));
        let mut cmd = command(flavor, paths, port)?;
        let out = fs::File::create(&log)
            .map_err(|e| BenchError::io(format!("create {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| BenchError::io("dup log file", e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe; the child dies when the bench does.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::io(format!("start {}", flavor.name()), e))?;
        let mut proc = ServerProc {
            flavor,
            addr,
            pid: child.id(),
            child,
            log,
        };
        proc.wait_ready(Duration::from_secs(20))?;
        Ok(proc)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            self.check_alive()?;
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(BenchError::Server(format!(
            "{} did not listen on {} within {limit:?}; log: {}",
            self.flavor.name(),
            self.addr,
            self.log_tail()
        )))
    }

    /// Errors when the server has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(BenchError::Server(format!(
                "{} exited ({st}); log: {}",
                self.flavor.name(),
                self.log_tail()
            ))),
            Err(e) => Err(BenchError::io(
                format!("wait for {}", self.flavor.name()),
                e,
            )),
        }
    }

    /// Sleeps at least `min`, then until the server used under 10% of a core
    /// over 200 ms (finished closing sockets, collecting garbage), at most `max`.
    pub fn settle(&self, min: Duration, max: Duration) {
        std::thread::sleep(min);
        let deadline = Instant::now() + max.saturating_sub(min);
        let tick = Duration::from_millis(200);
        // Clock ticks are 10 ms (USER_HZ 100): 2 ticks in 200 ms is 10%.
        while Instant::now() < deadline {
            let Some(a) = stats::proc_cpu_ticks(self.pid) else {
                return;
            };
            std::thread::sleep(tick);
            let Some(b) = stats::proc_cpu_ticks(self.pid) else {
                return;
            };
            if b.saturating_sub(a) <= 2 {
                return;
            }
        }
    }

    /// The listen backlog the server asked for (the accept-queue limit, `ss`'s
    /// Send-Q for a listener); `None` when `ss` is missing.
    pub fn listen_backlog(&self) -> Option<u64> {
        let filter = format!("sport = :{}", self.addr.port());
        let out = Command::new("ss").args(["-ltnH", &filter]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next()?;
        line.split_ascii_whitespace().nth(2)?.parse().ok()
    }

    /// The server's VmRSS in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        stats::rss_kib(self.pid)
    }

    /// `wshub_heap_allocated_bytes` from `GET /metrics`, when the server exposes it.
    pub fn heap_bytes(&self) -> Option<u64> {
        let (status, body) = http_get(self.addr, "/metrics").ok()?;
        if status != 200 {
            return None;
        }
        body.lines()
            .find_map(|l| l.strip_prefix("wshub_heap_allocated_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// Last lines of the server's stdout/stderr.
    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        let from = lines.len().saturating_sub(5);
        lines[from..].join(" | ")
    }

    /// Lines of the server's log that look like warnings or errors.
    pub fn log_complaints(&self) -> Vec<String> {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        s.lines()
            .filter(|l| ["WARN", "ERROR", "panick"].iter().any(|w| l.contains(w)))
            .take(5)
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taskset -c 0 <server> <args>` for `flavor` on `port`.
fn command(flavor: Flavor, paths: &Paths, port: u16) -> Result<Command> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"]);
    let peers = paths.target_dir.join("peers");
    match flavor {
        Flavor::Wshub
        | Flavor::WshubDeflate
        | Flavor::WshubSse
        | Flavor::WshubHistory
        | Flavor::Baseline
        | Flavor::BaselineDeflate => {
            let bin = match flavor {
                Flavor::Baseline | Flavor::BaselineDeflate => paths.baseline_bin.clone(),
                _ => paths.wshub_bin.clone(),
            }
            .ok_or_else(|| BenchError::Server(format!("no {} binary", flavor.name())))?;
            let cfg = paths.work_dir.join(format!("wshub-{port}.yaml"));
            let compression = matches!(flavor, Flavor::WshubDeflate | Flavor::BaselineDeflate);
            let history = if flavor == Flavor::WshubHistory {
                100
            } else {
                0
            };
            fs::write(&cfg, wshub_config(port, compression, history))
                .map_err(|e| BenchError::io(format!("write {}", cfg.display()), e))?;
            cmd.arg(bin).arg("--config").arg(cfg);
        }
        Flavor::Node => {
            cmd.args(["node", "server.js", &port.to_string()])
                .current_dir(peers.join("node-ws"));
        }
        Flavor::Go => {
            cmd.arg(peers.join("go-hub").join("peer-go"))
                .args(["-port", &port.to_string()]);
        }
        Flavor::Rust => {
            cmd.arg(
                Path::new(RUST_PEER_TARGET)
                    .join("release")
                    .join("peer-rust"),
            )
            .arg(port.to_string());
        }
        Flavor::Ceiling => {
            cmd.arg(&paths.self_exe)
                .args(["--serve-ceiling", &port.to_string()]);
        }
    }
    Ok(cmd)
}

fn wshub_config(port: u16, compression: bool, history: usize) -> String {
    let mut config = format!(
        "app:\n  host: \"127.0.0.1\"\n  port: {port}\nlog:\n  level: warn\nwebsocket:\n  echo: true\n  max_connections: 20000\n  ping_period: 50s\n  pong_wait: 60s\n  message_buffer_size: 1024\n  compression: {compression}\n"
    );
    // Only when on: a --baseline binary from before history still starts.
    if history > 0 {
        config.push_str(&format!("history:\n  size: {history}\n"));
    }
    config
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::io("bind a free port", e))?;
    let port = l
        .local_addr()
        .map_err(|e| BenchError::io("read the free port", e))?
        .port();
    Ok(port)
}

/// A blocking `GET path` with a 3 s deadline; returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let ctx = |what: &str| format!("GET {path} from {addr}: {what}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| BenchError::io(ctx("connect"), e))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| BenchError::io(ctx("timeout"), e))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| BenchError::io(ctx("write"), e))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(3);
    while buf.len() < (4 << 20) && Instant::now() < deadline {
        let n = s
            .read(&mut chunk)
            .map_err(|e| BenchError::io(ctx("read"), e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((status, body_at, len)) = response_frame(&buf) {
            if body_at.checked_add(len).is_some_and(|end| buf.len() >= end) {
                let body = String::from_utf8_lossy(&buf[body_at..body_at + len]).into_owned();
                return Ok((status, body));
            }
        }
    }
    match response_frame(&buf) {
        Some((status, body_at, _)) => Ok((
            status,
            String::from_utf8_lossy(&buf[body_at..]).into_owned(),
        )),
        None => Err(BenchError::Server(ctx("no complete response"))),
    }
}

/// `(status, body offset, content length or usize::MAX)` once the head is complete.
fn response_frame(buf: &[u8]) -> Option<(u16, usize, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(n) = resp.parse(buf).ok()? else {
        return None;
    };
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(usize::MAX);
    Some((resp.code?, n, len))
}
