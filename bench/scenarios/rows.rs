//! Table rows and figures more than one scenario builds: a load run's row, p99 ratios, and
//! figures rounded for the JSON. Text and figures only.

use serde_json::json;

use crate::load::LoadReport;
use crate::report::{fmt_latency, fmt_ns, fmt_rate, Row};

/// The table row of one load run: rate, latency percentiles, and who used the CPU.
pub fn load_row(config: impl Into<String>, load: &LoadReport) -> Row {
    let mut result = format!("{}  {}", fmt_rate(load.rate()), fmt_latency(&load.latency));
    let mut row = Row::new(config);
    if let Some(server) = load.server_cpu {
        result += &format!("  srv {:.0}%", server * 100.0);
        row = row.figure("server_cpu", round3(server));
    }
    if let Some(generator) = load.generator_cpu {
        result += &format!(" gen {:.0}%", generator * 100.0);
        row = row.figure("generator_cpu", round3(generator));
    }
    if let Some(other) = load.other_cpu {
        result += &format!(" other {:.0}%", other * 100.0);
        row = row.figure("other_cpu", round3(other));
    }
    if let Some(rate) = load.paced_rate {
        // How late the generator sent (a full connection included): already in the latency.
        let lag = load.send_lag.percentile(0.99);
        result += &format!("  sent late p99 {}", fmt_ns(lag));
        row = row
            .figure("paced_rate_per_s", rate.round())
            .figure("send_lag_p99_ns", lag)
            .figure("unsent", load.unsent);
        // One command at the window's edge whose connection was still waiting is routine.
        if load.unsent * 1000 > load.completed {
            result += &format!("  {} due but never sent", load.unsent);
        }
    }
    if load.errors > 0 {
        result += &format!("  {} '?' replies", load.errors);
    }
    if load.error_json > 0 {
        result += &format!("  {} error JSON", load.error_json);
    }
    if load.malformed > 0 {
        result += &format!("  {} malformed WHATSAT replies", load.malformed);
    }
    if let Some(why) = &load.closed {
        result += &format!("  ({why})");
    }
    row.result(result)
        .figure("rate_per_s", load.rate().round())
        .figure("replies", load.completed)
        .figure("window_s", round3(load.window.as_secs_f64()))
        .figure("errors", load.errors)
        .figure("error_json", load.error_json)
        .figure("malformed", load.malformed)
        .figure("unanswered", load.unanswered)
        .latency("", &load.latency)
}

pub fn round3(x: f64) -> serde_json::Value {
    json!((x * 1000.0).round() / 1000.0)
}

/// p99 with over p99 without, to three decimals.
pub fn p99_ratio(with: &LoadReport, without: &LoadReport) -> f64 {
    let ratio =
        with.latency.percentile(0.99) as f64 / without.latency.percentile(0.99).max(1) as f64;
    (ratio * 1000.0).round() / 1000.0
}
