//! What the cluster tests share: a private `redis-server` on a free
//! loopback port, stopped by PID on drop (the README's rule: tests start
//! what they need themselves), free ports, scratch directories and bounded
//! polling. Each test file keeps its own `Node` (their configs differ).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{http, WAIT};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A fresh directory under the temp dir, named after `tag` and the process.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wshub-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `wshub` process started by [`spawn_wshub`].
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its scratch directory: `config.yaml` and `stderr.log`.
    pub dir: PathBuf,
}

/// Starts the `wshub` binary on a free loopback port with the config
/// `config(port)` writes, its stderr in `stderr.log` of a fresh scratch
/// directory named after `tag`; returns once the port listens.
pub fn spawn_wshub(tag: &str, config: impl FnOnce(u16) -> String) -> Spawned {
    let dir = scratch_dir(tag);
    let port = free_port();
    let path = dir.join("config.yaml");
    std::fs::write(&path, config(port)).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("stderr.log")).expect("log file"))
        .spawn()
        .expect("start wshub");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for(WAIT, "the node to listen", || TcpStream::connect(addr).ok());
    Spawned { child, addr, dir }
}

/// The URL of the Redis on `port`, database 0.
pub fn redis_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/0")
}

/// A private redis-server, stopped by PID on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    /// With extra `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(port: u16, extra: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let redis = Redis {
            child: Some(child),
            port,
        };
        wait_for(WAIT, "redis-server to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        redis
    }

    /// A handle to the Redis on `port` that does not own it (for another
    /// thread): dropping it stops nothing.
    pub fn attach(port: u16) -> Redis {
        Redis { child: None, port }
    }

    pub fn url(&self) -> String {
        redis_url(self.port)
    }

    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.url())?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
        cmd.query(&mut con)
    }

    /// Subscribers of one channel (PUBSUB NUMSUB).
    pub fn subscribers(&self, channel: &str) -> i64 {
        let reply: (String, i64) = self
            .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
            .expect("PUBSUB NUMSUB");
        reply.1
    }

    /// A counter of `INFO stats` (e.g. `total_net_output_bytes`).
    pub fn stat(&self, field: &str) -> u64 {
        let info: String = self.query(redis::cmd("INFO").arg("stats")).expect("INFO");
        info.lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .strip_prefix(':')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {field} in INFO"))
    }

    pub fn channels(&self) -> Vec<String> {
        self.query(redis::cmd("PUBSUB").arg("CHANNELS"))
            .expect("PUBSUB CHANNELS")
    }

    /// SIGSTOP or SIGCONT: a hung Redis (connections stay open, nothing
    /// answers) and its return.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: kill(2) on the PID of a child we started and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A counter or gauge from a node's `/metrics` (panics when it is absent).
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (_, text) = http(addr, "GET", "/metrics", &[], "");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Part of the cluster: `/health?cluster=required` answers 200.
pub fn cluster_healthy(addr: SocketAddr) -> bool {
    http(addr, "GET", "/health?cluster=required", &[], "").0 == 200
}
