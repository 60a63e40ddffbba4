//! Numbers: percentiles over latency samples, medians over runs, the load
//! tool's own CPU time (getrusage) and a process's resident set (/proc).
//! Reads only this process's rusage and /proc/<pid>/status of servers it started.

use std::time::Duration;

/// Latency samples in nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    v: Vec<u64>,
    sorted: bool,
}

impl Samples {
    /// An empty set with room for `n` samples.
    pub fn with_capacity(n: usize) -> Samples {
        Samples {
            v: Vec::with_capacity(n),
            sorted: true,
        }
    }

    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.v.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    /// The `p`-quantile (0..=1, nearest rank) in milliseconds; `None` when empty.
    pub fn pct_ms(&mut self, p: f64) -> Option<f64> {
        if self.v.is_empty() {
            return None;
        }
        if !self.sorted {
            self.v.sort_unstable();
            self.sorted = true;
        }
        let rank = (p * self.v.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.v.len()) - 1;
        Some(self.v[i] as f64 / 1e6)
    }
}

/// Median of the values (mean of the middle two for an even count); `None` when empty.
pub fn median(vals: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = vals.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// User + system CPU time consumed so far by the calling thread.
///
/// The load runs on one thread, so this is the load tool's CPU; the built-in
/// ceiling server runs in another process and is not counted.
pub fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_THREAD is valid on Linux.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv =
        |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds per wall second between two points.
pub fn cpu_share(cpu_before: Duration, cpu_after: Duration, wall: Duration) -> Option<f64> {
    let w = wall.as_secs_f64();
    (w > 0.0).then(|| cpu_after.saturating_sub(cpu_before).as_secs_f64() / w)
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of `pid` in clock ticks (from /proc/<pid>/stat).
pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The host's TcpExt ListenDrops counter (/proc/net/netstat): SYNs or
/// handshakes dropped because a listener's accept queue was full. System-wide,
/// so read it around a phase in which only the bench connects.
pub fn listen_drops() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_ascii_whitespace()
        .position(|n| n == "ListenDrops")?;
    values.split_ascii_whitespace().nth(at)?.parse().ok()
}

/// The host's 1-minute load average: above ~2.5 on this 2-core machine other
/// work competed with the bench and the server, and absolute figures suffer.
pub fn load_avg() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_ascii_whitespace().next()?.parse().ok()
}

/// Checks of the functions above for the self-test mode.
pub fn self_test() -> Result<usize, String> {
    let mut s = Samples::with_capacity(100);
    for i in 1..=100u64 {
        s.push(Duration::from_millis(101 - i));
    }
    let checks = [
        (s.pct_ms(0.5) == Some(50.0), "p50 of 1..=100 ms"),
        (s.pct_ms(0.99) == Some(99.0), "p99 of 1..=100 ms"),
        (s.pct_ms(1.0) == Some(100.0), "max"),
        (Samples::default().pct_ms(0.5).is_none(), "empty"),
        (median(&[3.0, 1.0, 2.0]) == Some(2.0), "odd median"),
        (median(&[4.0, 1.0, 2.0, 3.0]) == Some(2.5), "even median"),
        (median(&[]).is_none(), "empty median"),
        (
            rss_kib(std::process::id()).is_some_and(|k| k > 0),
            "own RSS readable",
        ),
        (
            proc_cpu_ticks(std::process::id()).is_some(),
            "own CPU ticks readable",
        ),
    ];
    for (ok, what) in checks {
        if !ok {
            return Err(format!("stats self-test failed: {what}"));
        }
    }
    Ok(checks.len())
}
