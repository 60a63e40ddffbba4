//! The push-server workload of issue 14: broadcasts triggered over ONE
//! keep-alive HTTP connection, one `POST /api/ws/broadcast` at a time (the next
//! as soon as the previous response arrives), with at most `window` broadcasts
//! not yet received by every receiver, `count` broadcasts of ~100 bytes; the
//! rate of deliveries from the first POST to the last receipt. Also the lone
//! push at low load (one receiver, spaced POSTs): what an idle server's
//! latency is. Touches only the client it is given and this thread's rusage.

use std::time::{Duration, Instant};

use crate::broadcast::{broadcast_body, fanout, post, Window};
use crate::client::{Client, Event};
use crate::error::{BenchError, Result};
use crate::open::{open_http, open_many};
use crate::scenario::{drain_until, Plan, RunResult};
use crate::stats::{self, Samples};
use crate::wire;

/// Sequence numbers of this phase start here, so that a late message of an
/// earlier phase is never counted as one of ours.
const SEQ_BASE: u64 = 1 << 40;
/// A broadcast that makes no progress for this long fails the phase.
const STALL: Duration = Duration::from_secs(10);

/// What one serial run measured.
pub struct Serial {
    /// Deliveries per second, first POST to last receipt.
    pub dps: f64,
    /// POST to receipt, per delivery, 99th percentile in ms.
    pub p99: Option<f64>,
    /// The load tool's CPU share over the run.
    pub cpu: Option<f64>,
}

/// Runs the serial trigger against `receivers` open connections of `c`, posting on `http`.
pub fn serial(
    c: &mut Client,
    http: usize,
    receivers: usize,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> Result<Serial> {
    if receivers == 0 {
        return Err(BenchError::Scenario("serial: no receivers".into()));
    }
    drain_until(c, Instant::now() + Duration::from_millis(100))?;
    let mut w = Window::new(plan.ser_window);
    let mut lat = Samples::with_capacity(receivers * plan.ser_count);
    let mut req = Vec::new();
    let mut awaiting_response = false;
    let mut posted = 0usize;
    let mut last_progress = Instant::now();
    let cpu0 = stats::thread_cpu();
    let t0 = Instant::now();
    while (w.done as usize) < plan.ser_count {
        if !awaiting_response && posted < plan.ser_count {
            if let Some(seq) = w.take_slot() {
                let body = broadcast_body("notification", SEQ_BASE + seq, plan.msg_size);
                post(c, http, &body, &mut req)?;
                awaiting_response = true;
                posted += 1;
            }
        }
        let mut bad = None;
        let mut progressed = false;
        let done_before = w.done;
        c.poll(Duration::from_millis(5), |ev| match ev {
            Event::Message { id, at, data } if id != http => {
                if let Some((seq, _)) = wire::parse_content_seq(data) {
                    if let Some(seq) = seq.checked_sub(SEQ_BASE) {
                        w.receipt(seq, at, receivers, &mut lat);
                    }
                }
            }
            Event::Response { id, status, body } if id == http => {
                awaiting_response = false;
                progressed = true;
                if status != 200 {
                    bad = Some(format!("HTTP {status}: {}", String::from_utf8_lossy(body)));
                }
            }
            Event::Closed { id, why, .. } => {
                let who = if id == http {
                    "broadcast connection"
                } else {
                    "receiver"
                };
                bad = Some(format!("{who} closed: {why}"));
            }
            _ => {}
        })?;
        if let Some(b) = bad {
            return Err(BenchError::Scenario(format!(
                "serial: {b} after {} of {} broadcasts",
                w.done, plan.ser_count
            )));
        }
        if progressed || w.done > done_before {
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > STALL {
            return Err(BenchError::Scenario(format!(
                "serial: broadcast {} reached {} of {receivers} receivers in {STALL:?}",
                w.done,
                w.oldest_count()
            )));
        }
    }
    let wall = w.last_done.map_or(Duration::ZERO, |l| l - t0);
    if wall.is_zero() {
        notes.push("serial: no measurable wall time".into());
    }
    Ok(Serial {
        dps: receivers as f64 * w.done as f64 / wall.as_secs_f64().max(1e-9),
        p99: lat.pct_ms(0.99),
        cpu: stats::cpu_share(cpu0, stats::thread_cpu(), t0.elapsed()),
    })
}

/// Stores a serial result under `<prefix>_dps`, `_p99`, `_cpu`.
pub fn record(s: &Serial, keys: [&'static str; 3], res: &mut RunResult) {
    res.insert(keys[0], s.dps);
    if let Some(v) = s.p99 {
        res.insert(keys[1], v);
    }
    if let Some(v) = s.cpu {
        res.insert(keys[2], v);
    }
}

/// The serial trigger with `plan.sus_rx` receivers on a fresh client.
pub fn serial_small(
    addr: std::net::SocketAddr,
    plan: &Plan,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let mut c = Client::new(addr)?;
    let rx = open_many(&mut c, plan.sus_rx, plan.in_flight, notes)?.opened;
    let http = open_http(&mut c)?;
    let s = serial(&mut c, http, rx, plan, notes)?;
    record(&s, ["ser1k_dps", "ser1k_p99", "ser1k_cpu"], res);
    Ok(())
}

/// Low load: one receiver, `plan.lone_count` POSTs 10 ms apart, POST → receipt.
pub fn lone(
    addr: std::net::SocketAddr,
    plan: &Plan,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let mut c = Client::new(addr)?;
    let rx = open_many(&mut c, 1, 1, notes)?.opened;
    let http = open_http(&mut c)?;
    let mut quiet = plan.clone();
    quiet.fan_count = plan.lone_count;
    quiet.fan_spacing = Duration::from_millis(10);
    let mut fan = fanout(&mut c, rx, http, &quiet, notes)?;
    for (key, p) in [("lone_p50", 0.5), ("lone_p99", 0.99)] {
        if let Some(v) = fan.all.pct_ms(p) {
            res.insert(key, v);
        }
    }
    Ok(())
}
