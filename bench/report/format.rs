//! How figures read in the table: durations, counts, rates, bytes, CPU shares and the
//! percentile columns of a latency histogram. Text only; it measures nothing.

use std::time::Duration;

use crate::hist::Histogram;

/// One figure of a latency histogram: its quantile (1.0: the largest value, exact rather than
/// a bucket's middle), its name in the table, and its key in the JSON (after a row's prefix).
#[derive(Clone, Copy)]
pub struct Stat(f64, &'static str, &'static str);

impl Stat {
    pub const P50: Stat = Stat(0.50, "p50", "p50_ns");
    pub const P99: Stat = Stat(0.99, "p99", "p99_ns");
    pub const P999: Stat = Stat(0.999, "p99.9", "p999_ns");
    pub const MAX: Stat = Stat(1.0, "max", "max_ns");

    pub fn key(self) -> &'static str {
        self.2
    }

    /// Its value in `hist`, in nanoseconds.
    pub fn of(self, hist: &Histogram) -> u64 {
        if self.0 >= 1.0 {
            hist.max()
        } else {
            hist.percentile(self.0)
        }
    }
}

/// The columns of every latency the bench prints: `p50 .. p99 .. p99.9 .. max ..`.
pub const LATENCY: [Stat; 4] = [Stat::P50, Stat::P99, Stat::P999, Stat::MAX];

/// Three significant digits: `812 ns`, `77.3 µs`, `1.20 ms`, `2.01 s`.
pub fn fmt_ns(ns: u64) -> String {
    let (value, unit) = match ns {
        n if n < 1_000 => return format!("{n} ns"),
        n if n < 1_000_000 => (n as f64 / 1e3, "µs"),
        n if n < 1_000_000_000 => (n as f64 / 1e6, "ms"),
        n => (n as f64 / 1e9, "s"),
    };
    let decimals = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.decimals$} {unit}")
}

/// `fmt_ns` of a `Duration`.
pub fn fmt_duration(d: Duration) -> String {
    fmt_ns(d.as_nanos() as u64)
}

pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn fmt_rate(per_sec: f64) -> String {
    format!("{}/s", fmt_count(per_sec.round() as u64))
}

pub fn fmt_bytes(bytes: f64) -> String {
    if bytes.abs() < 10_000.0 {
        format!("{bytes:.0} B")
    } else if bytes.abs() < 1024.0 * 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    }
}

/// A share of one core as a whole percentage, `?` when it could not be read.
pub fn fmt_share(share: Option<f64>) -> String {
    share.map_or("?".into(), |s| format!("{:.0}%", s * 100.0))
}

/// `p50 45 µs p99 80 µs max 1.20 ms`: the chosen figures of `hist`, joined by `sep`.
pub fn fmt_stats(hist: &Histogram, stats: &[Stat], sep: &str) -> String {
    let cells: Vec<String> = stats
        .iter()
        .map(|s| format!("{} {}", s.1, fmt_ns(s.of(hist))))
        .collect();
    cells.join(sep)
}

/// `p50 45 µs  p99 80 µs  p99.9 120 µs  max 1.20 ms`
pub fn fmt_latency(hist: &Histogram) -> String {
    if hist.count() == 0 {
        return "no replies timed".into();
    }
    fmt_stats(hist, &LATENCY, "  ")
}
