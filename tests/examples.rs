//! The examples as real processes: each is started with `cargo run --example`
//! on a free loopback port (from a scratch directory holding its own
//! `config.yaml`), driven over HTTP and WebSocket like a user would, stopped
//! with SIGINT and expected to exit 0. A guard kills the child by its PID if a
//! test fails first. Every wait is bounded.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http, Client, WAIT};
use serde_json::json;

/// Starting may include compiling the example: allow for a busy machine.
const START_WAIT: Duration = Duration::from_secs(300);

/// A running example process, killed (by PID) and cleaned up on drop.
struct Example {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Example {
    /// Runs `cargo run --example name` with `env`, and waits for `/health`.
    fn start(name: &str, env: &[(&str, &str)]) -> Example {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wshub-example-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        // A config.yaml in the working directory is what the examples read:
        // loopback only, and no demo page (so the test can see it was read).
        std::fs::write(
            dir.join("config.yaml"),
            "app:\n  host: \"127.0.0.1\"\n  port: 1\n  demo: false\n",
        )
        .expect("write config.yaml");
        let mut command = Command::new(env!("CARGO"));
        command
            .args(["run", "--quiet", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .args(["--example", name])
            .current_dir(&dir)
            .env("WSHUB_PORT", port.to_string())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn cargo run");
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            // Drained continuously so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let example = Example {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            log,
        };
        example.wait_ready();
        example
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if TcpStream::connect(self.addr).is_ok()
                && http(self.addr, "GET", "/health", &[], "").0 == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "example never served /health:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn connect(&self, user: &str) -> Client {
        common::connect_at(self.addr, &format!("/api/ws/connect?user_id={user}"))
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains `needle`.
    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
        {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Sends SIGINT (what Ctrl-C sends) to the example.
    fn interrupt(&self) {
        // `cargo run` execs the example on Unix, so this PID is the example.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a PID this test spawned and has not reaped.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGINT) },
            0,
            "kill -INT {pid}"
        );
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + 2 * WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "example did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// Reads the next message, failing with the example's log on a timeout.
fn recv(example: &Example, client: &mut Client) -> serde_json::Value {
    match client.ws.read() {
        Ok(tungstenite::Message::Text(text)) => serde_json::from_str(text.as_str()).expect("JSON"),
        other => panic!(
            "expected a text message, got {other:?}\nlog:\n{}",
            example.log_text()
        ),
    }
}

#[test]
fn order_status_pushes_its_updates_in_order_then_stops_on_sigint() {
    let mut example = Example::start(
        "order_status",
        &[("ORDER_UPDATES", "4"), ("ORDER_INTERVAL_MS", "50")],
    );
    // The config.yaml in the working directory was read: no demo page.
    assert_eq!(http(example.addr, "GET", "/", &[], "").0, 404);
    let mut user = example.connect("user123");
    let expected = [
        ("ORD100001", "paid"),
        ("ORD100001", "shipped"),
        ("ORD100001", "delivered"),
        ("ORD100002", "paid"),
    ];
    for (order_id, status) in expected {
        assert_eq!(
            recv(&example, &mut user),
            json!({"type": "order_status", "content": {"order_id": order_id, "status": status}})
        );
    }
    example.wait_log("order service: all 4 updates pushed");
    let pushed = example.log_lines_with("pushed order_status");
    assert_eq!(pushed.len(), 4, "{pushed:#?}");
    assert!(
        pushed[0].contains("ORD100001 paid to user123: 1 session(s)"),
        "{}",
        pushed[0]
    );
    user.expect_silence(300);
    example.interrupt();
    assert_eq!(user.expect_close(), 1001, "Ctrl-C closes clients with 1001");
    drop(user);
    let status = example.wait_exit();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        example.log_text()
    );
}

#[test]
fn custom_routes_serve_next_to_wshub_and_pay_pushes_to_the_user() {
    let mut example = Example::start("custom_routes", &[]);
    let addr = example.addr;
    let mut user = example.connect("user123");

    let (status, body) = http(addr, "GET", "/api/orders/1001", &[], "");
    assert_eq!(status, 200);
    let order: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        order,
        json!({"order_id": "1001", "user_id": "user123", "amount": 99.5, "status": "pending"})
    );
    let (status, body) = http(addr, "GET", "/api/orders", &[], "");
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["orders"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(
        http(addr, "GET", "/api/orders/9999", &[], ""),
        (404, r#"{"error":"no such order"}"#.into())
    );
    assert_eq!(http(addr, "GET", "/api/orders/1001/pay", &[], "").0, 405);
    assert_eq!(http(addr, "GET", "/api/orders/1001/refund", &[], "").0, 404);

    let (status, body) = http(addr, "POST", "/api/orders/1001/pay", &[], "");
    assert_eq!(status, 200, "{body}");
    let paid: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(paid["status"], "paid");
    assert_eq!(
        recv(&example, &mut user),
        json!({"type": "order_paid", "content": {"order_id": "1001", "amount": 99.5}})
    );
    assert_eq!(
        http(addr, "POST", "/api/orders/1001/pay", &[], ""),
        (409, r#"{"error":"order already paid"}"#.into())
    );
    // Paying user456's order reaches user456 only.
    assert_eq!(http(addr, "POST", "/api/orders/1002/pay", &[], "").0, 200);
    assert!(
        user.sync().is_empty(),
        "user123 got another user's notification"
    );

    // wshub's own routes are still served on the same port.
    assert_eq!(
        http(addr, "GET", "/health", &[], ""),
        (200, r#"{"status":"ok"}"#.into())
    );
    let (status, body) = http(addr, "GET", "/api/ws/status", &[], "");
    assert_eq!(status, 200);
    let online: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(online["online_users"], json!(["user123"]));
    let (status, body) = http(
        addr,
        "POST",
        "/api/ws/send",
        &[],
        r#"{"type":"note","to":"user123","content":1}"#,
    );
    assert_eq!((status, body.as_str()), (200, r#"{"sent":1}"#));
    assert_eq!(
        recv(&example, &mut user),
        json!({"type": "note", "to": "user123", "content": 1})
    );
    assert_eq!(http(addr, "GET", "/nope", &[], "").0, 404);

    example.interrupt();
    assert_eq!(user.expect_close(), 1001);
    drop(user);
    let status = example.wait_exit();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        example.log_text()
    );
}
