//! Relay: `relay_pairs` pairs of chat clients talking to each other with
//! `{"type":"chat","to":..}`, one message in flight per pair (each receipt is
//! answered at once by the receiver): directed deliveries per second and the
//! one-hop latency. Touches only its own client and this thread's rusage.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::{Client, Event};
use crate::error::{BenchError, Result};
use crate::open::open_path;
use crate::scenario::{Plan, RunResult};
use crate::stats::{self, Samples};
use crate::wire;

/// Connection `i` is user `r<i>`; its partner is `i ^ 1`.
fn message_to(partner: usize, seq: u64) -> Vec<u8> {
    let content = wire::content_string(seq, crate::nanos_since_start(), 100);
    format!("{{\"type\":\"chat\",\"to\":\"r{partner}\",\"content\":\"{content}\"}}").into_bytes()
}

/// `relay_pairs` pairs, one message in flight each, for `relay_time`.
pub fn relay(
    addr: SocketAddr,
    plan: &Plan,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let n = plan.relay_pairs * 2;
    let mut c = Client::new(addr)?;
    // A fresh client numbers its connections 0, 1, 2, ... in connect order;
    // `open_path` names the k-th (from 1) connection.
    let opened = open_path(&mut c, n, plan.in_flight, notes, |k| {
        format!("/api/ws/connect?user_id=r{}", k - 1)
    })?
    .opened;
    if opened != n || c.live() != n {
        return Err(BenchError::Scenario(format!(
            "relay: {opened} of {n} clients connected"
        )));
    }
    crate::scenario::drain_until(&mut c, Instant::now() + Duration::from_millis(100))?;
    let now = Instant::now();
    let mut sent_at = vec![now; plan.relay_pairs];
    let mut lat = Samples::with_capacity(1 << 20);
    let mut ready: Vec<usize> = (0..plan.relay_pairs).map(|p| 2 * p).collect();
    let (mut count, mut seq, mut foreign) = (0u64, 0u64, 0u64);
    let cpu0 = stats::thread_cpu();
    let t0 = Instant::now();
    let mut last = t0;
    while t0.elapsed() < plan.relay_time {
        for id in ready.drain(..) {
            seq += 1;
            sent_at[id / 2] = Instant::now();
            if !c.send_text(id, &message_to(id ^ 1, seq)) {
                return Err(BenchError::Scenario(format!("relay: client {id} closed")));
            }
        }
        let mut lost = None;
        c.poll(Duration::from_millis(5), |ev| match ev {
            Event::Message { id, at, data } => {
                if wire::parse_content_seq(data).is_some() && id / 2 < sent_at.len() {
                    lat.push(at - sent_at[id / 2]);
                    count += 1;
                    last = at;
                    // The receiver answers: the pair's next message goes back.
                    ready.push(id);
                } else {
                    foreign += 1;
                }
            }
            Event::Closed { id, why, .. } => lost = Some(format!("client {id} closed: {why}")),
            _ => {}
        })?;
        if let Some(l) = lost {
            return Err(BenchError::Scenario(format!("relay: {l}")));
        }
    }
    let wall = t0.elapsed();
    if count == 0 {
        return Err(BenchError::Scenario("relay: nothing delivered".into()));
    }
    if foreign > 0 {
        notes.push(format!("relay: {foreign} messages without our content"));
    }
    res.insert("relay_mps", count as f64 / (last - t0).as_secs_f64());
    for (key, p) in [("relay_p50", 0.5), ("relay_p99", 0.99)] {
        if let Some(v) = lat.pct_ms(p) {
            res.insert(key, v);
        }
    }
    if let Some(v) = stats::cpu_share(cpu0, stats::thread_cpu(), wall) {
        res.insert("relay_cpu", v);
    }
    Ok(())
}
