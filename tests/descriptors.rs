//! Running out of file descriptors (EMFILE): the binary, started with a tiny
//! open-file limit, keeps its sessions, does not spin the CPU while accept
//! fails, and accepts the waiting connections once descriptors free up.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{upgrade_request, WAIT};

/// Descriptors the server may hold: a few for itself, the rest connections.
const FD_LIMIT: u64 = 40;

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_with_fd_limit() -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("wshub-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!("app:\n  host: \"127.0.0.1\"\n  port: {port}\nlog:\n  level: warn\nwebsocket:\n  echo: true\n");
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wshub"));
    command
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches only this child.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FD_LIMIT,
                rlim_max: FD_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawn wshub");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, addr, dir }
}

/// True if a complete 101 head arrives within `wait` (read up to its end).
fn upgraded(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).is_err() {
            return false;
        }
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 101")
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn accept_backs_off_on_emfile_and_recovers() {
    let server = start_with_fd_limit();
    // The probe connection above was accepted and closed; open more sessions
    // than the limit allows.
    let mut open = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..FD_LIMIT + 10 {
        let mut stream = TcpStream::connect(server.addr).expect("kernel accepts into the backlog");
        stream
            .write_all(upgrade_request("/api/ws/echo?x=1").as_bytes())
            .unwrap();
        if upgraded(&mut stream, Duration::from_millis(300)) {
            open.push(stream);
        } else {
            waiting.push(stream);
        }
    }
    assert!(open.len() >= 20, "only {} sessions opened", open.len());
    assert!(
        waiting.len() >= 10,
        "the limit was never reached ({} open)",
        open.len()
    );

    // While accept keeps failing, the loop sleeps between retries.
    let pid = server.child.id();
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(1));
    let busy = cpu_seconds(pid) - before;
    assert!(
        busy < 0.5,
        "server spun for {busy} s of CPU in 1 s while out of descriptors"
    );

    // Existing sessions keep working: an echo round trip on one of them.
    let echo = &mut open[0];
    let frame = common::client_frame(0x81, b"still here");
    echo.write_all(&frame).unwrap();
    echo.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = [0u8; 12];
    echo.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[2..], b"still here");

    // Free descriptors: the waiting connections get their 101.
    let freed = 15.min(open.len());
    open.drain(..freed);
    let mut upgraded_later = 0;
    for stream in waiting.iter_mut().take(freed - 3) {
        if upgraded(stream, WAIT) {
            upgraded_later += 1;
        }
    }
    assert_eq!(
        upgraded_later,
        freed - 3,
        "waiting connections were not accepted after descriptors freed up"
    );
}
