//! A server's figures for Prometheus: the counters the loop keeps as plain fields
//! ([`Counters`]) and the writer of the text exposition format, version 0.0.4
//! ([`Exposition`]), which one function of the loop (`event_loop::metrics`) feeds with every
//! figure it holds. Adding a metric is one call there: `page.counter(NAME, HELP, value)`.
//!
//! Pure: this module builds a string from the values it is given. The HTTP side is
//! [`http`] (pure too); reading `/proc/self` is [`process`]; the sockets are the loop's.
//!
//! The format (Prometheus' "Exposition formats" page): per metric family one `# HELP` and one
//! `# TYPE` line, then its samples `name{label="value",...} number`, each family in one
//! block; label values escape `\`, `"` and newline; a histogram has cumulative
//! `_bucket{le="..."}` samples ending at `le="+Inf"`, then `_sum` and `_count`.

pub mod http;
pub mod page;
pub mod process;

use std::fmt::Write as _;

/// What the loop counts as it goes, besides what other parts count where they decide (the
/// client table, the links, the Places lookups). Only the loop thread touches these, and the
/// same thread renders the page, so plain integers do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Lines read from clients and neighbours (framed lines, over-long ones included).
    pub lines_received: u64,
    /// Lines handed to client and neighbour sockets.
    pub lines_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Client and neighbour connections accepted on the server's port.
    pub connections_accepted: u64,
    /// Connections closed at once because `limit connections` was reached.
    pub connections_rejected: u64,
}

/// The kinds of metric the page uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A value as the format writes it: integers exactly, others as Rust prints an `f64` (plain
/// decimal, never an exponent), with the format's `+Inf`, `-Inf` and `NaN`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(v as u64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

fn write_value(out: &mut String, value: Value) {
    match value {
        Value::Int(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Float(v) if v.is_nan() => out.push_str("NaN"),
        Value::Float(v) if v == f64::INFINITY => out.push_str("+Inf"),
        Value::Float(v) if v == f64::NEG_INFINITY => out.push_str("-Inf"),
        Value::Float(v) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// The page being written, one family after another.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// A family whose header is written; its samples follow (see [`Exposition::family`]).
pub struct Family<'a> {
    text: &'a mut String,
    name: &'a str,
}

impl Family<'_> {
    /// One sample with these labels (`&[]` for none).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        write_sample(self.text, self.name, "", labels, value.into());
        self
    }
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Write all its samples before the
    /// next family (the format wants a family in one block).
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help),
            kind.name()
        );
        Family {
            text: &mut self.text,
            name,
        }
    }

    /// A counter without labels (its name should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: impl Into<Value>) {
        self.family(name, Kind::Counter, help).sample(&[], value);
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Into<Value>) {
        self.family(name, Kind::Gauge, help).sample(&[], value);
    }

    /// A histogram without labels: `bounds` are the buckets' upper bounds, ascending;
    /// `counts[i]` counts observations in bucket `i` alone (not cumulative), and one more
    /// slot at the end counts those above the last bound.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
        debug_assert_eq!(counts.len(), bounds.len() + 1);
        let _ = writeln!(
            self.text,
            "# HELP {name} {}\n# TYPE {name} histogram",
            escape_help(help)
        );
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (i, &count) in counts.iter().enumerate() {
            cumulative += count;
            le.clear();
            write_value(
                &mut le,
                Value::Float(bounds.get(i).copied().unwrap_or(f64::INFINITY)),
            );
            write_sample(
                &mut self.text,
                name,
                "_bucket",
                &[("le", &le)],
                Value::Int(cumulative),
            );
        }
        write_sample(&mut self.text, name, "_sum", &[], Value::Float(sum));
        write_sample(&mut self.text, name, "_count", &[], Value::Int(cumulative));
    }

    /// The page.
    pub fn finish(self) -> String {
        self.text
    }
}

fn write_sample(out: &mut String, name: &str, suffix: &str, labels: &[(&str, &str)], value: Value) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, text)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, text);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

/// Label values escape backslash, double quote and newline.
fn escape_label_value(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Help text escapes backslash and newline.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_and_a_gauge_are_a_help_a_type_and_a_sample() {
        let mut page = Exposition::new();
        page.counter("herd_lines_received_total", "Lines read.", 42u64);
        page.gauge("herd_start_time_seconds", "Start.", 1_700_000_000.25);
        assert_eq!(
            page.finish(),
            "# HELP herd_lines_received_total Lines read.\n\
             # TYPE herd_lines_received_total counter\n\
             herd_lines_received_total 42\n\
             # HELP herd_start_time_seconds Start.\n\
             # TYPE herd_start_time_seconds gauge\n\
             herd_start_time_seconds 1700000000.25\n"
        );
    }

    #[test]
    fn labelled_samples_share_one_family_block() {
        let mut page = Exposition::new();
        page.family("herd_commands_total", Kind::Counter, "Commands.")
            .sample(&[("kind", "iamat")], 3u64)
            .sample(&[("kind", "whatsat")], 0u64);
        page.family("herd_link_state", Kind::Gauge, "State.")
            .sample(&[("link", "Bona"), ("state", "up")], true);
        assert_eq!(
            page.finish(),
            "# HELP herd_commands_total Commands.\n\
             # TYPE herd_commands_total counter\n\
             herd_commands_total{kind=\"iamat\"} 3\n\
             herd_commands_total{kind=\"whatsat\"} 0\n\
             # HELP herd_link_state State.\n\
             # TYPE herd_link_state gauge\n\
             herd_link_state{link=\"Bona\",state=\"up\"} 1\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut page = Exposition::new();
        page.family("x", Kind::Gauge, "a \\ b\nc")
            .sample(&[("server", "q\"u\\o\nte")], 1u64);
        let text = page.finish();
        assert!(text.starts_with("# HELP x a \\\\ b\\nc\n"), "{text}");
        assert!(
            text.ends_with("x{server=\"q\\\"u\\\\o\\nte\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn special_floats_use_the_format_spelling() {
        let mut out = String::new();
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 0.005, 1e21] {
            write_value(&mut out, Value::Float(v));
            out.push(' ');
        }
        assert_eq!(out, "+Inf -Inf NaN 0.005 1000000000000000000000 ");
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_ending_at_inf_then_sum_and_count() {
        let mut page = Exposition::new();
        page.histogram("lat_seconds", "Latency.", &[0.1, 0.5], &[2, 0, 1], 3.25);
        assert_eq!(
            page.finish(),
            "# HELP lat_seconds Latency.\n\
             # TYPE lat_seconds histogram\n\
             lat_seconds_bucket{le=\"0.1\"} 2\n\
             lat_seconds_bucket{le=\"0.5\"} 2\n\
             lat_seconds_bucket{le=\"+Inf\"} 3\n\
             lat_seconds_sum 3.25\n\
             lat_seconds_count 3\n"
        );
    }
}
