//! Echo round trips (clients on `/api/ws/echo`, one message outstanding each)
//! and, against the ceiling server only, the client's raw receive rate on
//! `/flood`. Touches only its own client and this thread's rusage.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client::{Client, Event};
use crate::error::{BenchError, Result};
use crate::open::open_path;
use crate::scenario::{Plan, RunResult};
use crate::stats::{self, Samples};
use crate::wire;

/// Round-trip counters of the echo phase.
struct Trips {
    sent_at: Vec<Instant>,
    lat: Samples,
    ready: Vec<usize>,
    count: u64,
    bad: u64,
    last: Instant,
}

impl Trips {
    fn on_event(&mut self, ev: Event<'_>, size: usize) {
        if let Event::Message { id, at, data } = ev {
            self.bad += u64::from(data.len() != size);
            if let Some(t) = self.sent_at.get(id) {
                self.lat.push(at - *t);
                self.count += 1;
                self.last = at;
                self.ready.push(id);
            }
        }
    }
}

/// `echo_clients` clients, one `echo_size`-byte text message outstanding each, for `echo_time`.
pub fn echo(
    addr: SocketAddr,
    plan: &Plan,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let mut c = Client::new(addr)?;
    let n = open_path(&mut c, plan.echo_clients, plan.in_flight, notes, |_| {
        "/api/ws/echo".into()
    })?
    .opened;
    if n == 0 {
        return Err(BenchError::Scenario("no echo client connected".into()));
    }
    let msg = vec![b'e'; plan.echo_size];
    let now = Instant::now();
    let mut t = Trips {
        sent_at: vec![now; plan.echo_clients],
        lat: Samples::with_capacity(1 << 20),
        ready: (0..plan.echo_clients).collect(),
        count: 0,
        bad: 0,
        last: now,
    };
    let cpu0 = stats::thread_cpu();
    let t0 = Instant::now();
    while t0.elapsed() < plan.echo_time {
        for id in t.ready.drain(..) {
            t.sent_at[id] = Instant::now();
            c.send_text(id, &msg);
        }
        c.poll(Duration::from_millis(5), |ev| t.on_event(ev, msg.len()))?;
    }
    let wall = t0.elapsed();
    if t.bad > 0 {
        notes.push(format!("echo: {} replies differed in length", t.bad));
    }
    if t.count == 0 {
        return Err(BenchError::Scenario("echo: no reply".into()));
    }
    res.insert("echo_rps", t.count as f64 / (t.last - t0).as_secs_f64());
    for (key, p) in [("echo_p50", 0.5), ("echo_p99", 0.99)] {
        if let Some(v) = t.lat.pct_ms(p) {
            res.insert(key, v);
        }
    }
    if let Some(v) = stats::cpu_share(cpu0, stats::thread_cpu(), wall) {
        res.insert("echo_cpu", v);
    }
    Ok(())
}

/// Ceiling server only: messages/s the client parses when the server floods pre-framed text.
pub fn flood(
    addr: SocketAddr,
    plan: &Plan,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let mut c = Client::new(addr)?;
    open_path(&mut c, plan.flood_conns, plan.in_flight, notes, |_| {
        "/flood".into()
    })?;
    let mut count = 0u64;
    let cpu0 = stats::thread_cpu();
    let t0 = Instant::now();
    while t0.elapsed() < plan.flood_time {
        c.poll(Duration::from_millis(5), |ev| {
            if let Event::Message { data, .. } = ev {
                count += u64::from(wire::parse_content_seq(data).is_some());
            }
        })?;
    }
    let wall = t0.elapsed();
    res.insert("flood_mps", count as f64 / wall.as_secs_f64());
    if let Some(v) = stats::cpu_share(cpu0, stats::thread_cpu(), wall) {
        res.insert("flood_cpu", v);
    }
    Ok(())
}
