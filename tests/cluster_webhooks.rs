//! Webhooks across a cluster (docs/webhooks.md): two real `wshub`
//! processes over a private `redis-server` (started on a free loopback port
//! and stopped by PID), both POSTing to one receiving server inside the
//! test. Node "a" has the smaller id, so it is the one that reports.
//!
//! Timing: presence_ttl 2 s (views refresh every 500 ms), offline_delay as
//! each test sets it; every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::backend::{Backend, Received, Reply};
use common::cluster::{spawn_wshub, Redis};
use common::{Client, WAIT};
use serde_json::Value;

fn wait_until(limit: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Node {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Node {
    fn start(id: &str, redis: &Redis, hook_url: &str, offline_delay: &str) -> Node {
        let spawned = spawn_wshub("cluster-webhooks", |port| {
            format!(
                "app:\n  host: \"127.0.0.1\"\n  port: {port}\n  demo: false\n\
                 websocket:\n  shutdown_timeout: 1s\n\
                 webhooks:\n  url: \"{hook_url}\"\n  secret: \"s\"\n  offline_delay: {offline_delay}\n\
                 cluster:\n  redis: \"{}\"\n  node_id: \"{id}\"\n  presence_ttl: 2s\n  channel_prefix: \"wh\"\n",
                redis.url()
            )
        });
        Node {
            child: Some(spawned.child),
            addr: spawned.addr,
            dir: spawned.dir,
        }
    }

    fn connect(&self, user: &str) -> Client {
        common::connect_at(self.addr, &format!("/api/ws/connect?user_id={user}"))
    }

    fn nodes(&self) -> u64 {
        let (_, body) = common::http(self.addr, "GET", "/api/ws/status", &[], "");
        let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        status["nodes"].as_u64().unwrap_or(0)
    }

    fn signal(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the PID of a child we started and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn events(received: &[Received]) -> Vec<Value> {
    received
        .iter()
        .flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn count(backend: &Backend, kind: &str, user: &str) -> usize {
    events(&backend.received())
        .iter()
        .filter(|e| e["type"] == kind && e["user"] == user)
        .count()
}

fn two_nodes(redis: &Redis, backend: &Backend, delay: &str) -> (Node, Node) {
    let a = Node::start("a", redis, &backend.url("/hook"), delay);
    let b = Node::start("b", redis, &backend.url("/hook"), delay);
    wait_until(WAIT, "both nodes in the cluster", || {
        a.nodes() == 2 && b.nodes() == 2
    });
    (a, b)
}

#[test]
fn one_online_and_one_offline_for_tabs_on_two_nodes() {
    let redis = Redis::start();
    let backend = Backend::start(|_| Reply::ok(""));
    let (a, b) = two_nodes(&redis, &backend, "1s");
    // First tab on b, which does not report: a reports it from the view.
    let on_b = b.connect("amy");
    wait_until(WAIT, "amy online", || {
        count(&backend, "user_online", "amy") == 1
    });
    let on_a = a.connect("amy");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        count(&backend, "user_online", "amy"),
        1,
        "one user, one online"
    );
    // One tab closes: amy is still online on the other node.
    on_b.close();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(&backend, "user_offline", "amy"), 0);
    on_a.close();
    wait_until(WAIT, "amy offline", || {
        count(&backend, "user_offline", "amy") == 1
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(&backend, "user_offline", "amy"), 1, "exactly one");
    assert_eq!(count(&backend, "user_online", "amy"), 1, "exactly one");
}

#[test]
fn a_killed_node_takes_its_users_offline_and_a_restart_with_quick_reconnects_does_not() {
    let redis = Redis::start();
    let backend = Backend::start(|_| Reply::ok(""));
    let (a, mut b) = two_nodes(&redis, &backend, "3s");
    let _bob = b.connect("bob");
    let carl = b.connect("carl");
    wait_until(WAIT, "bob and carl online", || {
        count(&backend, "user_online", "bob") == 1 && count(&backend, "user_online", "carl") == 1
    });
    // carl comes back on a within the delay; bob does not come back.
    let killed = Instant::now();
    b.signal(libc::SIGKILL);
    drop(carl);
    std::thread::sleep(Duration::from_millis(500));
    let _carl_again = a.connect("carl");
    // presence_ttl (2 s) + offline_delay (3 s), with slack.
    wait_until(Duration::from_secs(15), "bob offline", || {
        count(&backend, "user_offline", "bob") == 1
    });
    let took = killed.elapsed();
    assert!(took >= Duration::from_secs(3), "{took:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count(&backend, "user_offline", "carl"),
        0,
        "carl reconnected in time"
    );
    assert_eq!(
        count(&backend, "user_online", "carl"),
        1,
        "and is not online twice"
    );
    assert_eq!(count(&backend, "user_offline", "bob"), 1);
}

#[test]
fn clients_that_reconnect_after_a_graceful_restart_give_no_event() {
    let redis = Redis::start();
    let backend = Backend::start(|_| Reply::ok(""));
    let (a, mut b) = two_nodes(&redis, &backend, "3s");
    let users: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    let clients: Vec<Client> = users.iter().map(|u| b.connect(u)).collect();
    wait_until(WAIT, "20 onlines", || {
        users.iter().all(|u| count(&backend, "user_online", u) == 1)
    });
    // SIGTERM: b removes its presence at once; its clients come back on a.
    b.signal(libc::SIGTERM);
    drop(clients);
    let _back: Vec<Client> = users.iter().map(|u| a.connect(u)).collect();
    std::thread::sleep(Duration::from_secs(5));
    for user in &users {
        assert_eq!(count(&backend, "user_offline", user), 0, "{user}");
        assert_eq!(count(&backend, "user_online", user), 1, "{user}");
    }
}
