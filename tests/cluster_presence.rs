//! Cluster presence through the change log (issue 19, finding 6, and the
//! smaller holes of its second round): real `wshub` nodes over a private
//! `redis-server` on a free loopback port, stopped by PID.
//!
//! A node appends what changed in its presence to its log (`t:plog:<id>`)
//! and writes its whole entry (`t:node:<id>`) only now and then; the others
//! follow the log and read the whole entry again only when they missed part
//! of it. These tests check that what the other node shows is right after
//! joins and leaves, after it missed part of the log (paused while the log
//! was trimmed, Redis flushed), that forged and replayed entries and changes
//! are refused and counted, and that the node set is bounded.
//!
//! Timing: the view refreshes every 500 ms; every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use common::cluster::{redis_url, spawn_wshub, wait_for, Redis};
use common::{http, Client, WAIT};
use serde_json::{json, Value};

const PREFIX: &str = "t";
const SECRET: &str = "  secret: \"s3cret\"\n";

/// One `wshub` process with its own config.
struct Node {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Node {
    /// A node with `presence_ttl` `ttl_ms` and extra `cluster:` lines.
    fn start(id: &str, redis_port: u16, ttl_ms: u64, cluster_extra: &str) -> Node {
        let node = spawn_wshub("presence", |port| {
            format!(
                "app:\n  host: \"127.0.0.1\"\n  port: {port}\n  demo: false\n\
                 log:\n  level: info\n\
                 websocket:\n  shutdown_timeout: 2s\n  max_rooms_per_session: 2000\n\
                 cluster:\n  redis: \"{}\"\n  node_id: \"{id}\"\n  presence_ttl: {ttl_ms}ms\n  channel_prefix: \"{PREFIX}\"\n{cluster_extra}",
                redis_url(redis_port)
            )
        });
        let node = Node {
            child: Some(node.child),
            addr: node.addr,
            dir: node.dir,
        };
        wait_for(WAIT, "the node to join", || node.healthy().then_some(()));
        node
    }

    fn get(&self, path: &str) -> Value {
        let (_, body) = http(self.addr, "GET", path, &[], "");
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    fn status(&self) -> Value {
        self.get("/api/ws/status")
    }

    fn room(&self, room: &str) -> Value {
        self.get(&format!("/api/ws/rooms/{room}"))
    }

    fn metric(&self, name: &str) -> u64 {
        common::cluster::metric(self.addr, name)
    }

    fn healthy(&self) -> bool {
        common::cluster::cluster_healthy(self.addr)
    }

    fn connect(&self, user: &str) -> Client {
        common::connect_at(self.addr, &format!("/api/ws/connect?user_id={user}"))
    }

    /// Sends `signal` without waiting (SIGSTOP / SIGCONT pause and resume).
    fn signal(&self, signal: i32) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: kill(2) on the PID of a child we started and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// SIGKILL, and waits for the process to end.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A paused process is killed all the same.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 100-byte room name, as in the issue's reproduction.
fn room(tag: &str, i: usize) -> String {
    format!("{:0<100}", format!("{tag}-{i}-"))
}

/// Joins (or leaves) each room and waits until the node has taken them.
fn rooms(client: &mut Client, kind: &str, names: impl Iterator<Item = String>) {
    for name in names {
        client.send_json(json!({"type": kind, "room": name}));
    }
    let replies = client.sync();
    assert!(replies.iter().all(|r| r["type"] != "error"), "{replies:?}");
}

/// Redis's bytes in and out since it started.
fn redis_bytes(redis: &Redis) -> u64 {
    redis.stat("total_net_input_bytes") + redis.stat("total_net_output_bytes")
}

/// One entry of a change log as XRANGE gives it: id and fields.
type Logged = (String, Vec<(String, Vec<u8>)>);

/// The sequence numbers of the entries in `node`'s change log, oldest first.
fn log_seqs(redis: &Redis, node: &str) -> Vec<u64> {
    let entries: Vec<Logged> = redis
        .query(
            redis::cmd("XRANGE")
                .arg(format!("{PREFIX}:plog:{node}"))
                .arg("-")
                .arg("+"),
        )
        .expect("XRANGE");
    entries
        .iter()
        .map(|(id, _)| {
            id.strip_prefix("0-")
                .and_then(|s| s.parse().ok())
                .expect("0-<seq>")
        })
        .collect()
}

/// The version (`<epoch>.<seq>`) of `node`'s whole entry.
fn whole_version(redis: &Redis, node: &str) -> (u64, u64) {
    let head: Vec<u8> = redis
        .query(
            redis::cmd("GETRANGE")
                .arg(format!("{PREFIX}:node:{node}"))
                .arg(0)
                .arg(127),
        )
        .expect("GETRANGE");
    let head = String::from_utf8_lossy(&head);
    let version = head.split([' ', '\n']).nth(1).expect("a header");
    let (epoch, seq) = version.split_once('.').expect("epoch.seq");
    (epoch.parse().expect("epoch"), seq.parse().expect("seq"))
}

/// Waits until `node`'s status shows `users` (sorted) and `count` sessions.
fn wait_users(node: &Node, count: usize, users: &[&str], limit: Duration) {
    wait_for(limit, &format!("status {count} {users:?}"), || {
        let status = node.status();
        (status["online_count"] == count && status["online_users"] == json!(users)).then_some(())
    });
}

/// Joins and leaves reach the other node, and cost Redis the change, not
/// the entry: an 11-change churn on a node with a ~450 KB entry moves a few
/// KB through Redis, where reading and writing the entry whole at each of
/// the ~6 refreshes would be megabytes.
#[test]
fn presence_changes_travel_as_changes_not_as_the_whole_entry() {
    let redis = Redis::start();
    let a = Node::start("a", redis.port, 2000, "");
    let b = Node::start("b", redis.port, 2000, "");
    let mut clients = Vec::new();
    for s in 0..32 {
        let mut client = a.connect(&format!("u{s:02}"));
        rooms(
            &mut client,
            "join",
            (0..64).map(|k| room(&format!("r{s}"), k)),
        );
        clients.push(client);
    }
    let last = room("r31", 63);
    wait_for(WAIT, "every room in b's view", || {
        (b.room(&last)["count"] == 1).then_some(())
    });
    let entry: usize = redis
        .query(redis::cmd("STRLEN").arg("t:node:a"))
        .expect("STRLEN");
    // At least two thirds of the ~450 KB: the joins after its last whole
    // write (less than half of it) are in the log.
    assert!(entry > 250_000, "a large entry: {entry} bytes");
    let kind: String = redis
        .query(redis::cmd("TYPE").arg("t:plog:a"))
        .expect("TYPE");
    assert_eq!(kind, "stream", "a keeps a change log");

    // Churn: one more user joins and leaves a room ten times in 3 s.
    std::thread::sleep(Duration::from_millis(1000));
    let before = redis_bytes(&redis);
    let mut churn = a.connect("churn");
    for i in 0..10 {
        let kind = if i % 2 == 0 { "join" } else { "leave" };
        rooms(&mut churn, kind, std::iter::once("churn-room".to_owned()));
        std::thread::sleep(Duration::from_millis(300));
    }
    rooms(&mut churn, "join", std::iter::once("final".to_owned()));
    wait_for(WAIT, "the last join in b's view", || {
        (b.room("final")["users"] == json!(["churn"])).then_some(())
    });
    let moved = redis_bytes(&redis) - before;
    assert!(
        (moved as usize) < entry / 4,
        "{moved} bytes through Redis for 11 changes to a {entry}-byte entry"
    );
    assert_eq!(
        b.room("churn-room"),
        json!({"room": "churn-room", "count": 0, "users": []})
    );
    assert_eq!(b.room(&room("r7", 5))["users"], json!(["u07"]));
    // Leaves and disconnects reach b too.
    rooms(&mut clients[3], "leave", (0..64).map(|k| room("r3", k)));
    drop(clients.split_off(16));
    wait_for(WAIT, "the leaves and closes in b's view", || {
        let status = b.status();
        (status["online_count"] == 17
            && b.room(&room("r3", 10))["count"] == 0
            && b.room(&last)["count"] == 0)
            .then_some(())
    });
    assert_eq!(b.room(&room("r4", 10))["users"], json!(["u04"]));
    drop(churn);
}

/// A node that misses part of another's log (paused while that node wrote
/// its entry whole twice and trimmed the log, then a flushed Redis) reads
/// the entry whole again and shows the right counts.
#[test]
fn a_node_that_misses_part_of_the_log_recovers_the_right_counts() {
    let redis = Redis::start();
    // A long TTL, so the paused node stays in the cluster.
    let a = Node::start("a", redis.port, 20_000, "");
    let b = Node::start("b", redis.port, 20_000, "");
    let mut stay = a.connect("stay");
    rooms(&mut stay, "join", (0..10).map(|k| room("stay", k)));
    wait_users(&b, 1, &["stay"], WAIT);
    wait_for(WAIT, "stay's rooms in b's view", || {
        (b.room(&room("stay", 9))["count"] == 1).then_some(())
    });
    let seen = log_seqs(&redis, "a").last().copied().unwrap_or(0);

    b.signal(libc::SIGSTOP);
    // Three batches of ~90 KB of changes, each past the log's 64 KiB:
    // a writes its entry whole after each and trims what came before the
    // previous one.
    let mut mover = a.connect("mover");
    rooms(&mut mover, "join", (0..400).map(|k| room("m1", k)));
    std::thread::sleep(Duration::from_millis(1200));
    rooms(&mut mover, "leave", (0..400).map(|k| room("m1", k)));
    rooms(&mut stay, "leave", (0..5).map(|k| room("stay", k)));
    std::thread::sleep(Duration::from_millis(1200));
    rooms(&mut mover, "join", (0..400).map(|k| room("m2", k)));
    let _late = a.connect("late");
    wait_for(WAIT, "a to trim what b still needs", || {
        let first = log_seqs(&redis, "a").first().copied()?;
        (first > seen + 1 && whole_version(&redis, "a").1 >= first).then_some(())
    });
    b.signal(libc::SIGCONT);

    wait_users(&b, 3, &["late", "mover", "stay"], WAIT);
    wait_for(WAIT, "the rooms as a holds them", || {
        (b.room(&room("m2", 399))["users"] == json!(["mover"])
            && b.room(&room("m1", 0))["count"] == 0
            && b.room(&room("stay", 2))["count"] == 0
            && b.room(&room("stay", 7))["users"] == json!(["stay"]))
        .then_some(())
    });

    // Redis loses everything: both write their entries whole again, and
    // b follows a from there.
    let () = redis.query(&mut redis::cmd("FLUSHALL")).expect("FLUSHALL");
    rooms(&mut mover, "leave", (0..400).map(|k| room("m2", k)));
    rooms(
        &mut mover,
        "join",
        std::iter::once("after-flush".to_owned()),
    );
    wait_for(WAIT, "the changes after the flush in b's view", || {
        (b.room("after-flush")["users"] == json!(["mover"]) && b.room(&room("m2", 5))["count"] == 0)
            .then_some(())
    });
    wait_users(&b, 3, &["late", "mover", "stay"], WAIT);
    assert_eq!(b.room(&room("stay", 7))["users"], json!(["stay"]));
    wait_for(WAIT, "a to see b again", || {
        (a.status()["nodes"] == 2).then_some(())
    });
}

/// The sequence number `node` gives its next change.
fn next_seq(redis: &Redis, node: &str) -> u64 {
    let logged = log_seqs(redis, node).last().copied().unwrap_or(0);
    logged.max(whole_version(redis, node).1) + 1
}

/// Appends `payload` to `node`'s log at the next sequence number, as
/// anything with access to Redis could.
fn forge_change(redis: &Redis, node: &str, payload: &[u8]) {
    let next = next_seq(redis, node);
    let _: String = redis
        .query(
            redis::cmd("XADD")
                .arg(format!("{PREFIX}:plog:{node}"))
                .arg(format!("0-{next}"))
                .arg("d")
                .arg(payload),
        )
        .expect("XADD");
}

/// With cluster.secret: an unsigned change in a node's log, a signed one
/// moved to another place in it, and a signed entry of the node's previous
/// run written back are refused and counted; none of them shows, and the
/// real presence does.
#[test]
fn forged_and_replayed_changes_and_entries_are_refused() {
    let redis = Redis::start();
    let mut a = Node::start("a", redis.port, 20_000, SECRET);
    let b = Node::start("b", redis.port, 20_000, SECRET);
    let _amy = a.connect("amy");
    let mut bob = a.connect("bob");
    rooms(&mut bob, "join", std::iter::once("r".to_owned()));
    wait_users(&b, 2, &["amy", "bob"], WAIT);
    let refused = || b.metric("wshub_cluster_presence_refused_total");
    assert_eq!(refused(), 0);

    // An unsigned change.
    let (epoch, _) = whole_version(&redis, "a");
    let next = next_seq(&redis, "a");
    forge_change(
        &redis,
        "a",
        format!(
            "wshub-presence1 {epoch}.{next}\n{{\"sessions\":1000,\"users\":{{\"ghost\":1000}}}}"
        )
        .as_bytes(),
    );
    wait_for(WAIT, "the unsigned change refused", || {
        (refused() >= 1).then_some(())
    });
    for _ in 0..4 {
        let status = b.status();
        assert_eq!(status["online_users"], json!(["amy", "bob"]), "{status}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // a's own changes still reach b (its next append finds the forged
    // id taken, and it writes its entry whole again).
    let _cat = a.connect("cat");
    wait_users(&b, 3, &["amy", "bob", "cat"], WAIT);

    // A signed change of a's, written again at the next place.
    let _eve = a.connect("eve");
    wait_users(&b, 4, &["amy", "bob", "cat", "eve"], WAIT);
    let signed: Vec<Logged> = redis
        .query(redis::cmd("XRANGE").arg("t:plog:a").arg("-").arg("+"))
        .expect("XRANGE");
    let (_, fields) = signed.last().expect("eve's change in the log");
    let before = refused();
    forge_change(&redis, "a", &fields[0].1);
    wait_for(WAIT, "the moved change refused", || {
        (refused() > before).then_some(())
    });
    for _ in 0..4 {
        let status = b.status();
        assert_eq!(
            status["online_users"],
            json!(["amy", "bob", "cat", "eve"]),
            "{status}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // An entry of a's previous run, written back over the new run's.
    let old: Vec<u8> = redis.query(redis::cmd("GET").arg("t:node:a")).expect("GET");
    a.kill();
    let a = Node::start("a", redis.port, 20_000, SECRET);
    let _dan = a.connect("dan");
    wait_users(&b, 1, &["dan"], WAIT);
    let before = refused();
    let () = redis
        .query(
            redis::cmd("SET")
                .arg("t:node:a")
                .arg(&old)
                .arg("PX")
                .arg(20_000),
        )
        .expect("SET");
    wait_for(WAIT, "the old run's entry refused", || {
        (refused() > before).then_some(())
    });
    for _ in 0..4 {
        let status = b.status();
        assert_eq!(status["online_users"], json!(["dan"]), "{status}");
        assert_eq!(status["nodes"], 2, "{status}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The node set is bounded: ids without a presence key are removed as a
/// node looks at them, and past 1000 other live nodes the rest are left
/// out and counted.
#[test]
fn the_node_set_a_node_follows_is_capped() {
    let redis = Redis::start();
    let a = Node::start("a", redis.port, 20_000, "");
    let client = redis::Client::open(redis.url()).expect("client");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connect");
    // 15,000 ids with no presence key, and 1,100 forged live nodes.
    let mut pipe = redis::pipe();
    for i in 0..15_000 {
        pipe.cmd("SADD")
            .arg("t:nodes")
            .arg(format!("gone{i}"))
            .ignore();
    }
    for i in 0..1100 {
        pipe.cmd("SET")
            .arg(format!("t:node:n{i:04}"))
            .arg(
                r#"wshub-presence1 1.1
{"sessions":1,"users":{},"rooms":{}}"#,
            )
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("SADD")
            .arg("t:nodes")
            .arg(format!("n{i:04}"))
            .ignore();
    }
    let () = pipe.query(&mut con).expect("forge the node set");
    wait_for(WAIT, "the nodes past the cap counted", || {
        (a.metric("wshub_cluster_nodes_refused_total") > 0).then_some(())
    });
    wait_for(WAIT, "the ids without a key removed", || {
        let left: usize = redis::cmd("SCARD").arg("t:nodes").query(&mut con).ok()?;
        (left <= 1101).then_some(())
    });
    wait_for(WAIT, "the view of the capped set", || {
        (a.status()["nodes"] == 1001).then_some(())
    });
    let status = a.status();
    assert_eq!(status["online_count"], 1000, "{status}");
    assert_eq!(a.metric("wshub_cluster_nodes"), 1001);
}
