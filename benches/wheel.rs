//! Criterion benches for the timer wheel (`src/wheel.rs`): the timer operations the event loop
//! runs per session (arm/cancel, fire, lazy re-arm). CPU only, no I/O.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wshub::internals::wheel::Wheel;

/// The loop's tick (loop-clock milliseconds) and slot count.
const TICK_MS: u64 = 10;
const SLOTS: usize = 512;
/// Session count the loop is sized for.
const SESSIONS: u64 = 100_000;
/// The ping interval used by the re-arm pattern, in milliseconds.
const REARM_MS: u64 = 54_000;

/// One arm + cancel while 100k other timers are armed over a minute.
fn insert_cancel(c: &mut Criterion) {
    let mut wheel = Wheel::new(TICK_MS, SLOTS);
    for i in 0..SESSIONS {
        wheel.insert(i * 6 / 10, i);
    }
    let mut key = 0u64;
    c.bench_function("wheel/insert_cancel (100k armed)", |b| {
        b.iter(|| {
            key = key.wrapping_add(7919);
            let id = wheel.insert(key % 60_000, key);
            black_box(wheel.cancel(id))
        })
    });
}

/// 10k timers over 10 s, then fired either tick by tick or by one late poll.
fn insert_poll(c: &mut Criterion) {
    const N: u64 = 10_000;
    let mut group = c.benchmark_group("wheel/insert_poll_10k");
    group.throughput(Throughput::Elements(N));
    for per_tick in [true, false] {
        let name = if per_tick {
            "poll_every_tick"
        } else {
            "one_late_poll"
        };
        let mut base = 0u64;
        let mut wheel = Wheel::new(TICK_MS, SLOTS);
        let mut due = Vec::with_capacity(N as usize);
        group.bench_function(name, |b| {
            b.iter(|| {
                // One per millisecond, off the tick boundaries.
                for i in 0..N {
                    wheel.insert(base + i + 1, i);
                }
                let polls = if per_tick { 1..=1000 } else { 1000..=1000 };
                for step in polls {
                    wheel.poll(base + TICK_MS * step, &mut due);
                }
                assert_eq!(due.len(), N as usize);
                due.clear();
                base += 10_000;
            })
        });
    }
    group.finish();
}

/// Steady state of 100k sessions pinging every 54 s: each iteration is one
/// 10 ms loop pass that fires ~18 timers and re-arms them 54 s later.
fn rearm(c: &mut Criterion) {
    let mut wheel = Wheel::new(TICK_MS, SLOTS);
    for i in 0..SESSIONS {
        wheel.insert(i * REARM_MS / SESSIONS, i);
    }
    let mut now = 0u64;
    let mut due = Vec::new();
    c.bench_function("wheel/rearm_tick (100k sessions, +54 s)", |b| {
        b.iter(|| {
            now += TICK_MS;
            wheel.poll(now, &mut due);
            for &session in &due {
                wheel.insert(now + REARM_MS, session);
            }
            due.clear();
            black_box(wheel.next_deadline())
        })
    });
}

criterion_group!(benches, insert_cancel, insert_poll, rearm);
criterion_main!(benches);
