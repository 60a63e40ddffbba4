//! Opening connections for the scenarios: many WebSocket upgrades with a bound
//! on handshakes in flight (the upgrades/s figure), and the keep-alive HTTP
//! connection broadcasts are posted on. Bounded in time; touches only the
//! client it is given. `LOAD_DEBUG=1` prints progress every 100 ms.

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use crate::client::{Client, Event, RECEIVE_SSE};
use crate::error::{BenchError, Result};

/// Result of opening connections.
pub struct Opened {
    /// Upgrades that got their 101.
    pub opened: usize,
    /// Seconds from the first connect to the last 101.
    pub secs: f64,
}

impl Opened {
    /// Upgrades per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.opened as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Counters while opening.
#[derive(Default)]
struct Tally {
    started: usize,
    opened: usize,
    failed: usize,
    pending: usize,
    lost: usize,
    last: Option<Instant>,
    first_err: Option<String>,
}

impl Tally {
    fn on_event(&mut self, ev: Event<'_>) {
        match ev {
            Event::Open { .. } => {
                self.pending -= 1;
                self.opened += 1;
                self.last = Some(Instant::now());
            }
            Event::Closed {
                was_open: false,
                why,
                ..
            } => {
                self.pending -= 1;
                self.failed += 1;
                self.first_err.get_or_insert_with(|| why.to_string());
            }
            Event::Closed { why, .. } => {
                self.lost += 1;
                self.first_err
                    .get_or_insert_with(|| format!("open connection lost: {why}"));
            }
            _ => {}
        }
    }

    fn too_many_failures(&self, n: usize) -> bool {
        self.failed > n / 20 + 10
    }
}

/// Opens `n` receivers, `/api/ws/connect?user_id=uK` (or `/api/ws/sse`
/// with `--sse` for the `wshub-sse` column) with at most `in_flight`
/// handshakes pending.
pub fn open_many(
    c: &mut Client,
    n: usize,
    in_flight: usize,
    notes: &mut Vec<String>,
) -> Result<Opened> {
    let endpoint = if RECEIVE_SSE.load(Ordering::Relaxed) {
        "sse"
    } else {
        "connect"
    };
    open_path(c, n, in_flight, notes, |k| {
        format!("/api/ws/{endpoint}?user_id=u{k}")
    })
}

/// Opens `n` WebSockets (event streams for `/api/ws/sse` paths) to `path(k)`; a few failures are noted, many are an error.
pub fn open_path(
    c: &mut Client,
    n: usize,
    in_flight: usize,
    notes: &mut Vec<String>,
    path: impl Fn(usize) -> String,
) -> Result<Opened> {
    let base = c.live();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(20) + Duration::from_millis(n as u64 * 5);
    let debug = std::env::var_os("LOAD_DEBUG").is_some();
    let mut t = Tally::default();
    let mut shown = start;
    while t.opened + t.failed < n && !t.too_many_failures(n) {
        if Instant::now() > deadline {
            let took = deadline - start;
            return Err(BenchError::Scenario(format!(
                "opened only {} of {n} connections in {took:?}",
                t.opened
            )));
        }
        while t.pending < in_flight && t.started < n {
            t.started += 1;
            let p = path(base + t.started);
            let started = if p.starts_with("/api/ws/sse") {
                c.connect_sse(&p)
            } else {
                c.connect_ws(&p)
            };
            match started {
                Ok(_) => t.pending += 1,
                Err(e) => {
                    t.failed += 1;
                    t.first_err.get_or_insert_with(|| e.to_string());
                }
            }
        }
        c.poll(Duration::from_millis(50), |ev| t.on_event(ev))?;
        if debug && shown.elapsed() > Duration::from_millis(100) {
            shown = Instant::now();
            let s = start.elapsed().as_secs_f64();
            eprintln!(
                "[load] t={s:.2} started={} opened={} pending={} failed={}",
                t.started, t.opened, t.pending, t.failed
            );
        }
    }
    if t.failed > 0 || t.lost > 0 {
        let first = t.first_err.as_deref().unwrap_or_default();
        notes.push(format!(
            "{} of {n} upgrades failed, {} open connections lost; first: {first}",
            t.failed, t.lost
        ));
    }
    if t.too_many_failures(n) {
        return Err(BenchError::Scenario(format!(
            "{} of {n} upgrades failed",
            t.failed
        )));
    }
    let secs = t.last.map_or(0.0, |l| (l - start).as_secs_f64());
    Ok(Opened {
        opened: t.opened,
        secs,
    })
}

/// Connects the keep-alive HTTP connection broadcasts are posted on.
pub fn open_http(c: &mut Client) -> Result<usize> {
    let id = c.connect_http()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut up = false;
    while !up && Instant::now() < deadline {
        c.poll(Duration::from_millis(20), |ev| {
            if let Event::Open { id: i } = ev {
                up |= i == id;
            }
        })?;
    }
    if up {
        Ok(id)
    } else {
        Err(BenchError::Scenario(
            "HTTP connection for broadcasts did not connect".into(),
        ))
    }
}
