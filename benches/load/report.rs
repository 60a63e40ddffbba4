//! Output: one line of raw numbers per server and run, and the final markdown
//! table of medians with a wshub/peer ratio column for every peer. Pure
//! formatting; prints nothing itself.

use crate::scenario::{Plan, RunResult, Via};
use crate::server::Flavor;
use crate::stats::median;

/// One table row: result key and label.
struct Row {
    key: &'static str,
    label: String,
}

fn rows(plan: &Plan) -> Vec<Row> {
    let k = |n: usize| {
        if n.is_multiple_of(1000) {
            format!("{}k", n / 1000)
        } else {
            n.to_string()
        }
    };
    let (n1, n2) = (k(plan.n1), k(plan.n2));
    let via = match plan.via {
        Via::Ws => "ws chat",
        Via::Http => "POST",
    };
    let r = |key, label: String| Row { key, label };
    vec![
        r(
            "upg10k",
            format!("upgrades/s, 0 → {n1} ({} in flight)", plan.in_flight),
        ),
        r("upg19k", format!("upgrades/s, {n1} → {n2}")),
        r(
            "backlog",
            "listen backlog (accept-queue limit, from ss)".into(),
        ),
        r(
            "drops10k",
            format!("accept-queue drops (ListenDrops), 0 → {n1}"),
        ),
        r(
            "drops19k",
            format!("accept-queue drops (ListenDrops), {n1} → {n2}"),
        ),
        r("rss10k", format!("server RSS per idle conn at {n1}, KiB")),
        r("rss19k", format!("server RSS per idle conn at {n2}, KiB")),
        r("heap10k", format!("heap per idle session at {n1}, bytes")),
        r("heap19k", format!("heap per idle session at {n2}, bytes")),
        r(
            "fan_all_p50",
            format!("broadcast → {n1}: all received, p50 ms"),
        ),
        r(
            "fan_all_p99",
            format!("broadcast → {n1}: all received, p99 ms"),
        ),
        r(
            "fan_srv_us",
            format!("broadcast → {n1}: server CPU µs per delivery"),
        ),
        r(
            "fan_rx_p50",
            format!("broadcast → {n1}: per receiver, p50 ms"),
        ),
        r(
            "fan_rx_p99",
            format!("broadcast → {n1}: per receiver, p99 ms"),
        ),
        r(
            "ser10k_dps",
            format!(
                "serial POST trigger → {n1}: deliveries/s ({} × ~100 B, ≤ {} not yet received)",
                plan.ser_count, plan.ser_window
            ),
        ),
        r(
            "ser10k_p99",
            format!("serial POST trigger → {n1}: per delivery p99 ms"),
        ),
        r(
            "ser10k_srv_us",
            format!("serial POST trigger → {n1}: server CPU µs per delivery"),
        ),
        r(
            "ser1k_dps",
            format!("serial POST trigger → {}: deliveries/s", k(plan.sus_rx)),
        ),
        r(
            "ser1k_p99",
            format!(
                "serial POST trigger → {}: per delivery p99 ms",
                k(plan.sus_rx)
            ),
        ),
        r(
            "sus_dps",
            format!(
                "sustained deliveries/s ({} rx, window {}, {via})",
                plan.sus_rx, plan.window
            ),
        ),
        r("sus_p99", "sustained: per delivery p99 ms".into()),
        r(
            "fan_bytes",
            format!(
                "bytes on the wire per broadcast delivery ({} B body)",
                plan.msg_size
            ),
        ),
        r(
            "sus_bytes",
            format!(
                "bytes on the wire per chat delivery ({} B body)",
                plan.msg_size
            ),
        ),
        r(
            "echo_rps",
            format!(
                "echo round trips/s ({} × {} B, depth 1)",
                plan.echo_clients, plan.echo_size
            ),
        ),
        r("echo_p50", "echo p50 ms".into()),
        r("echo_p99", "echo p99 ms".into()),
        r(
            "relay_mps",
            format!(
                "relay: deliveries/s ({} pairs chatting with `to`, depth 1)",
                plan.relay_pairs
            ),
        ),
        r("relay_p50", "relay: one hop p50 ms".into()),
        r("relay_p99", "relay: one hop p99 ms".into()),
        r(
            "lone_p50",
            format!(
                "lone push at low load (1 receiver, {} POSTs 10 ms apart): p50 ms",
                plan.lone_count
            ),
        ),
        r("lone_p99", "lone push at low load: p99 ms".into()),
        r(
            "flood_mps",
            format!(
                "client receive ceiling, msgs/s ({} flooding conns)",
                plan.flood_conns
            ),
        ),
        r(
            "loadavg",
            "host load average (1 min) at the end of the run; over ~2.5: contended".into(),
        ),
        r("upg_cpu", "load-tool CPU (cpu s / wall s): upgrades".into()),
        r(
            "fan_cpu",
            "load-tool CPU: fan-out (POST → last receipt)".into(),
        ),
        r("ser10k_cpu", format!("load-tool CPU: serial → {n1}")),
        r(
            "ser1k_cpu",
            format!("load-tool CPU: serial → {}", k(plan.sus_rx)),
        ),
        r("sus_cpu", "load-tool CPU: sustained".into()),
        r("echo_cpu", "load-tool CPU: echo".into()),
        r("relay_cpu", "load-tool CPU: relay".into()),
        r("flood_cpu", "load-tool CPU: flood".into()),
    ]
}

/// Formats a value with about three significant digits.
pub fn fmt_val(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r.abs() < 0.1 {
        format!("{r:.3}")
    } else {
        format!("{r:.2}")
    }
}

/// `key=value` pairs of one run.
pub fn raw_line(res: &RunResult) -> String {
    if res.is_empty() {
        return "(no result)".into();
    }
    res.iter()
        .map(|(k, v)| format!("{k}={}", fmt_val(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The markdown table of medians.
pub fn table(results: &[(Flavor, Vec<RunResult>)], plan: &Plan, runs: usize) -> String {
    let med = |runs: &[RunResult], key: &str| {
        median(
            &runs
                .iter()
                .filter_map(|r| r.get(key).copied())
                .collect::<Vec<_>>(),
        )
    };
    let wshub = results.iter().find(|(f, _)| *f == Flavor::Wshub);
    let mut head = vec![format!("metric (median of {runs})")];
    for (f, _) in results {
        head.push(f.name().to_string());
        if wshub.is_some() && *f != Flavor::Wshub {
            head.push(format!("wshub/{}", f.name()));
        }
    }
    let mut out = String::new();
    out.push_str(&format!("| {} |\n", head.join(" | ")));
    out.push_str(&format!("|{}\n", " --- |".repeat(head.len())));
    for row in rows(plan) {
        let mut cells = vec![row.label.clone()];
        let w = wshub.and_then(|(_, r)| med(r, row.key));
        let mut any = false;
        for (f, r) in results {
            let v = med(r, row.key);
            any |= v.is_some();
            cells.push(v.map_or_else(|| "n/a".into(), fmt_val));
            if wshub.is_some() && *f != Flavor::Wshub {
                // A ratio of the client's own CPU or of drop counts says nothing.
                let comparable = !["cpu", "drops", "loadavg", "backlog"]
                    .iter()
                    .any(|w| row.key.contains(w));
                cells.push(match (w, v) {
                    (Some(a), Some(b)) if b != 0.0 && comparable => fmt_ratio(a / b),
                    _ => "—".into(),
                });
            }
        }
        if any || row.key.starts_with("heap") {
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    out
}
