//! The two broadcast measurements. Fan-out: one `POST /api/ws/broadcast` at a
//! time to N1 receivers, timed from the POST until every receiver has it.
//! Sustained: a sender keeps at most W broadcasts outstanding (a broadcast is
//! complete when every receiver has it, so a bounded server queue is never
//! overrun) and the rate of completions is measured. Sequence number and send
//! time travel inside `content`, which every server passes through unchanged.
//! Touches only the client it is given and this thread's rusage.

use std::time::{Duration, Instant};

use crate::client::{Client, Event};
use crate::error::{BenchError, Result};
use crate::open::{open_http, open_many, open_path};
use crate::scenario::{drain_until, Plan, RunResult, Via};
use crate::stats::{self, Samples};
use crate::wire;

/// Latencies of the fan-out phase.
pub struct Fan {
    /// Per broadcast: POST until the last receiver had it.
    pub all: Samples,
    /// Per delivery: POST until that receiver had it.
    pub rx: Samples,
    /// Client CPU summed over the windows from POST to last receipt.
    pub busy_cpu: Duration,
    /// Wall time of the same windows.
    pub busy_wall: Duration,
    /// Bytes on the wire per delivered message (frame head included).
    pub wire_bytes: Option<f64>,
}

/// The broadcast body of about `size` bytes with `seq` and the send time inside `content`.
pub fn broadcast_body(kind: &str, seq: u64, size: usize) -> String {
    let content = wire::content_string(seq, crate::nanos_since_start(), size);
    format!("{{\"type\":\"{kind}\",\"content\":\"{content}\",\"seq\":{seq}}}")
}

pub fn post(c: &mut Client, http: usize, body: &str, req: &mut Vec<u8>) -> Result<()> {
    req.clear();
    wire::push_post(req, c.host(), "/api/ws/broadcast", body.as_bytes());
    if c.send_raw(http, req) {
        Ok(())
    } else {
        Err(BenchError::Scenario(
            "the broadcast HTTP connection closed".into(),
        ))
    }
}

/// Sends `plan.fan_count` broadcasts, each after the previous one reached every
/// receiver and at least `plan.fan_spacing` after the previous one was sent.
pub fn fanout(
    c: &mut Client,
    receivers: usize,
    http: usize,
    plan: &Plan,
    notes: &mut Vec<String>,
) -> Result<Fan> {
    let mut fan = Fan {
        all: Samples::with_capacity(plan.fan_count),
        rx: Samples::with_capacity(plan.fan_count * receivers),
        busy_cpu: Duration::ZERO,
        busy_wall: Duration::ZERO,
        wire_bytes: None,
    };
    let mut expect = receivers;
    let mut incomplete = 0;
    let mut req = Vec::new();
    let (bytes0, msgs0) = c.rx_counts();
    for k in 0..plan.fan_count as u64 {
        let cpu0 = stats::thread_cpu();
        let t0 = Instant::now();
        post(
            c,
            http,
            &broadcast_body("notification", k, plan.msg_size),
            &mut req,
        )?;
        let (got, last) = await_all(c, http, k, t0, &mut expect, &mut fan.rx, notes)?;
        fan.busy_cpu += stats::thread_cpu().saturating_sub(cpu0);
        fan.busy_wall += last - t0;
        if got < expect {
            incomplete += 1;
            notes.push(format!(
                "broadcast {k} reached {got} of {expect} receivers within 10 s"
            ));
            if incomplete >= 3 {
                return Err(BenchError::Scenario(
                    "3 broadcasts did not reach every receiver".into(),
                ));
            }
        } else {
            fan.all.push(last - t0);
        }
        drain_until(c, t0 + plan.fan_spacing)?;
    }
    let (bytes, msgs) = c.rx_counts();
    if msgs > msgs0 {
        fan.wire_bytes = Some((bytes - bytes0) as f64 / (msgs - msgs0) as f64);
    }
    Ok(fan)
}

/// Reads until every receiver has broadcast `k` (at most 10 s); `(receipts, last receipt)`.
fn await_all(
    c: &mut Client,
    http: usize,
    k: u64,
    t0: Instant,
    expect: &mut usize,
    rx: &mut Samples,
    notes: &mut Vec<String>,
) -> Result<(usize, Instant)> {
    let (mut got, mut last, mut bad, mut reported) = (0usize, t0, None, None);
    let deadline = t0 + Duration::from_secs(10);
    while got < *expect && Instant::now() < deadline {
        c.poll(Duration::from_millis(20), |ev| match ev {
            Event::Message { at, data, .. }
                if wire::parse_content_seq(data).map(|s| s.0) == Some(k) =>
            {
                got += 1;
                last = at;
                rx.push(at - t0);
            }
            Event::Response { id, status, body } if id == http && status != 200 => {
                bad = Some(format!("HTTP {status}: {}", String::from_utf8_lossy(body)))
            }
            Event::Response { body, .. } => reported = recipients(body),
            Event::Closed { id, why, .. } if id != http => {
                *expect -= 1;
                notes.push(format!("receiver closed during fan-out: {why}"));
            }
            Event::Closed { why, .. } => bad = Some(format!("broadcast connection closed: {why}")),
            _ => {}
        })?;
        if let Some(b) = bad.take() {
            return Err(BenchError::Scenario(format!("broadcast {k} rejected: {b}")));
        }
    }
    if let Some(n) = reported.filter(|&n| n != *expect) {
        notes.push(format!(
            "broadcast {k}: the server reported {n} recipients, {} receivers were connected",
            *expect
        ));
    }
    Ok((got, last))
}

/// The recipient count in a broadcast response: wshub's `"sent"`, the peers' `"recipients"`.
fn recipients(body: &[u8]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let n = v.get("sent").or_else(|| v.get("recipients"))?.as_u64()?;
    usize::try_from(n).ok()
}

/// Broadcasts in flight in the sustained phases, counted by sequence number.
pub struct Window {
    size: u64,
    mask: usize,
    counts: Vec<usize>,
    sent_at: Vec<Instant>,
    next: u64,
    /// Broadcasts every receiver has (they complete in order).
    pub done: u64,
    /// When the last of them completed.
    pub last_done: Option<Instant>,
}

impl Window {
    /// A window of at most `size` broadcasts outstanding.
    pub fn new(size: usize) -> Window {
        let ring = (size * 2).next_power_of_two();
        let now = Instant::now();
        Window {
            size: size as u64,
            mask: ring - 1,
            counts: vec![0; ring],
            sent_at: vec![now; ring],
            next: 0,
            done: 0,
            last_done: None,
        }
    }

    /// The sequence number to send next, if the window has room.
    pub fn take_slot(&mut self) -> Option<u64> {
        if self.next >= self.done + self.size {
            return None;
        }
        let slot = self.next as usize & self.mask;
        self.sent_at[slot] = Instant::now();
        self.counts[slot] = 0;
        self.next += 1;
        Some(self.next - 1)
    }

    /// Counts one receipt; completes broadcasts in order (per receiver they arrive in order).
    pub fn receipt(&mut self, seq: u64, at: Instant, expect: usize, lat: &mut Samples) {
        if seq < self.done || seq >= self.next {
            return;
        }
        let slot = seq as usize & self.mask;
        lat.push(at - self.sent_at[slot]);
        self.counts[slot] += 1;
        while self.done < self.next && self.counts[self.done as usize & self.mask] >= expect {
            self.done += 1;
            self.last_done = Some(at);
        }
    }

    /// Receipts of the oldest incomplete broadcast.
    pub fn oldest_count(&self) -> usize {
        self.counts[self.done as usize & self.mask]
    }
}

/// With `sus_rx` receivers, keeps at most `window` broadcasts outstanding for `sus_time`.
pub fn sustained(
    addr: std::net::SocketAddr,
    plan: &Plan,
    res: &mut RunResult,
    notes: &mut Vec<String>,
) -> Result<()> {
    let mut c = Client::new(addr)?;
    let sender = match plan.via {
        Via::Ws => match open_path(&mut c, 1, 1, notes, |_| {
            "/api/ws/connect?user_id=sender".into()
        })? {
            o if o.opened == 1 => 0,
            _ => return Err(BenchError::Scenario("sender did not connect".into())),
        },
        Via::Http => open_http(&mut c)?,
    };
    let rx = open_many(&mut c, plan.sus_rx, plan.in_flight, notes)?.opened;
    drain_until(&mut c, Instant::now() + Duration::from_millis(200))?;
    let mut w = Window::new(plan.window);
    let mut lat = Samples::with_capacity(1 << 20);
    let cpu0 = stats::thread_cpu();
    let t0 = Instant::now();
    let (bytes0, msgs0) = c.rx_counts();
    pump(&mut c, sender, rx, plan, &mut w, &mut lat)?;
    let (bytes, msgs) = c.rx_counts();
    if msgs > msgs0 {
        res.insert("sus_bytes", (bytes - bytes0) as f64 / (msgs - msgs0) as f64);
    }
    let wall = w.last_done.map_or(Duration::ZERO, |l| l - t0);
    if w.done == 0 || wall.is_zero() {
        return Err(BenchError::Scenario(
            "sustained: no broadcast completed".into(),
        ));
    }
    res.insert("sus_dps", rx as f64 * w.done as f64 / wall.as_secs_f64());
    if let Some(v) = lat.pct_ms(0.99) {
        res.insert("sus_p99", v);
    }
    if let Some(v) = stats::cpu_share(cpu0, stats::thread_cpu(), t0.elapsed()) {
        res.insert("sus_cpu", v);
    }
    Ok(())
}

/// The sustained loop: refill the window, read receipts; errors on a lost
/// connection or a broadcast that stays incomplete for 5 s.
fn pump(
    c: &mut Client,
    sender: usize,
    rx: usize,
    plan: &Plan,
    w: &mut Window,
    lat: &mut Samples,
) -> Result<()> {
    let t0 = Instant::now();
    let mut req = Vec::new();
    while t0.elapsed() < plan.sus_time {
        while let Some(seq) = w.take_slot() {
            match plan.via {
                Via::Ws => {
                    let body = broadcast_body("chat", seq, plan.msg_size);
                    if !c.send_text(sender, body.as_bytes()) {
                        return Err(BenchError::Scenario(
                            "sustained: sender connection closed".into(),
                        ));
                    }
                }
                Via::Http => {
                    let body = broadcast_body("notification", seq, plan.msg_size);
                    post(c, sender, &body, &mut req)?
                }
            }
        }
        let mut lost = None;
        c.poll(Duration::from_millis(5), |ev| match ev {
            Event::Message { id, at, data } if id != sender => {
                if let Some((seq, _)) = wire::parse_content_seq(data) {
                    w.receipt(seq, at, rx, lat);
                }
            }
            Event::Closed { id, why, .. } => {
                let who = if id == sender { "sender" } else { "receiver" };
                lost = Some(format!("{who} closed: {why}"));
            }
            _ => {}
        })?;
        if let Some(l) = lost {
            return Err(BenchError::Scenario(format!(
                "sustained: {l} after {} broadcasts",
                w.done
            )));
        }
        if w.last_done.unwrap_or(t0).elapsed() > Duration::from_secs(5) {
            let (done, got) = (w.done, w.oldest_count());
            return Err(BenchError::Scenario(format!(
                "sustained: broadcast {done} reached {got} of {rx} receivers in 5 s"
            )));
        }
    }
    Ok(())
}
