//! What a bench run found, and its three renderings: the table on stdout, the JSON files under
//! target/bench/, and the SVG chart of scenario 1's latency distributions. It measures nothing.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::hist::Histogram;

/// A target from the issue beside the figure it judges.
pub struct Check {
    pub goal: String,
    pub met: bool,
}

/// One line of the table: a configuration, what was measured, and the targets it meets.
pub struct Row {
    pub config: String,
    pub result: String,
    pub checks: Vec<Check>,
    pub figures: Map<String, Value>,
}

impl Row {
    pub fn new(config: impl Into<String>) -> Row {
        Row {
            config: config.into(),
            result: String::new(),
            checks: Vec::new(),
            figures: Map::new(),
        }
    }

    pub fn result(mut self, text: impl Into<String>) -> Row {
        self.result = text.into();
        self
    }

    pub fn figure(mut self, key: &str, value: impl Into<Value>) -> Row {
        self.figures.insert(key.to_string(), value.into());
        self
    }

    pub fn check(mut self, goal: impl Into<String>, met: bool) -> Row {
        self.checks.push(Check {
            goal: goal.into(),
            met,
        });
        self
    }

    /// Adds p50/p99/p99.9/max/count of a latency histogram to the JSON figures.
    pub fn latency(mut self, prefix: &str, hist: &Histogram) -> Row {
        self.add_latency(prefix, hist);
        self
    }

    pub fn add_latency(&mut self, prefix: &str, hist: &Histogram) {
        for (key, value) in [
            ("count", hist.count()),
            ("p50_ns", hist.percentile(0.50)),
            ("p99_ns", hist.percentile(0.99)),
            ("p999_ns", hist.percentile(0.999)),
            ("max_ns", hist.max()),
        ] {
            self.figures.insert(format!("{prefix}{key}"), value.into());
        }
    }
}

/// One scenario's outcome. `unavailable` says why it could not run (its rows are then those it
/// managed before).
pub struct Section {
    pub key: &'static str,
    pub title: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub unavailable: Option<String>,
    /// Latency distributions to chart (scenario 1).
    pub curves: Vec<(String, Histogram)>,
}

impl Section {
    pub fn new(key: &'static str, title: impl Into<String>) -> Section {
        Section {
            key,
            title: title.into(),
            rows: Vec::new(),
            notes: Vec::new(),
            unavailable: None,
            curves: Vec::new(),
        }
    }

    pub fn unavailable(mut self, why: impl Into<String>) -> Section {
        self.unavailable = Some(why.into());
        self
    }
}

pub struct Report {
    pub started_unix: u64,
    pub cores: usize,
    pub command: String,
    pub argv: String,
    pub binary: String,
    pub target: Option<String>,
    pub sections: Vec<Section>,
}

// ---- formatting of figures -------------------------------------------------------------

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

/// `p50 45 µs  p99 80 µs  p99.9 120 µs  max 1.20 ms`
pub fn fmt_latency(hist: &Histogram) -> String {
    if hist.count() == 0 {
        return "no replies timed".into();
    }
    format!(
        "p50 {}  p99 {}  p99.9 {}  max {}",
        fmt_ns(hist.percentile(0.5)),
        fmt_ns(hist.percentile(0.99)),
        fmt_ns(hist.percentile(0.999)),
        fmt_ns(hist.max())
    )
}

// ---- the table ---------------------------------------------------------------------------

impl Report {
    pub fn table(&self) -> String {
        let mut lines: Vec<[String; 5]> = vec![[
            "scenario".into(),
            "configuration".into(),
            "result".into(),
            "target".into(),
            "".into(),
        ]];
        for section in &self.sections {
            let label = format!("{} {}", section.key, section.title);
            let mut first = true;
            let scenario_cell = |first: &mut bool| {
                if std::mem::take(first) {
                    label.clone()
                } else {
                    String::new()
                }
            };
            for row in &section.rows {
                let mut checks = row.checks.iter();
                let (goal, met) = match checks.next() {
                    Some(c) => (c.goal.clone(), verdict(c.met)),
                    None => (String::new(), String::new()),
                };
                lines.push([
                    scenario_cell(&mut first),
                    row.config.clone(),
                    row.result.clone(),
                    goal,
                    met,
                ]);
                for c in checks {
                    lines.push([
                        String::new(),
                        String::new(),
                        String::new(),
                        c.goal.clone(),
                        verdict(c.met),
                    ]);
                }
            }
            if let Some(why) = &section.unavailable {
                lines.push([
                    scenario_cell(&mut first),
                    String::new(),
                    format!("not available: {why}"),
                    String::new(),
                    String::new(),
                ]);
            }
        }
        let mut widths = [0usize; 5];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "herd load bench: {} cores, {}",
            self.cores, self.command
        );
        let _ = writeln!(out, "argv: {}", self.argv);
        let _ = writeln!(
            out,
            "server: {}",
            self.target.as_deref().unwrap_or(&self.binary)
        );
        let _ = writeln!(out);
        for (i, line) in lines.iter().enumerate() {
            let mut text = String::new();
            for (cell, w) in line.iter().zip(widths) {
                let pad = w.saturating_sub(cell.chars().count());
                text += cell;
                text += &" ".repeat(pad + 2);
            }
            let _ = writeln!(out, "{}", text.trim_end());
            if i == 0 {
                let total: usize = widths.iter().map(|w| w + 2).sum();
                let _ = writeln!(out, "{}", "-".repeat(total.saturating_sub(2)));
            }
        }
        let notes: Vec<String> = self
            .sections
            .iter()
            .flat_map(|s| s.notes.iter().map(move |n| format!("{}: {n}", s.key)))
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(out, "\nnotes:");
            for note in notes {
                let _ = writeln!(out, "  {note}");
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let sections: Vec<Value> = self
            .sections
            .iter()
            .map(|s| {
                let rows: Vec<Value> = s
                    .rows
                    .iter()
                    .map(|r| {
                        let checks: Vec<Value> = r
                            .checks
                            .iter()
                            .map(|c| json!({"goal": c.goal, "met": c.met}))
                            .collect();
                        json!({
                            "config": r.config,
                            "result": r.result,
                            "figures": r.figures,
                            "targets": checks,
                        })
                    })
                    .collect();
                json!({
                    "scenario": s.key,
                    "title": s.title,
                    "available": s.unavailable.is_none(),
                    "unavailable": s.unavailable,
                    "rows": rows,
                    "notes": s.notes,
                })
            })
            .collect();
        json!({
            "started_unix": self.started_unix,
            "cores": self.cores,
            "command": self.command,
            "argv": self.argv,
            "server": self.target.as_deref().unwrap_or(&self.binary),
            "scenarios": sections,
        })
    }

    /// Writes results-<unix time>.json, latest.json and (when scenario 1 ran) latency.svg.
    pub fn write_files(&self, dir: &Path) -> Result<Vec<PathBuf>, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let text = serde_json::to_string_pretty(&self.json()).map_err(|e| e.to_string())? + "\n";
        let mut written = Vec::new();
        for name in [
            format!("results-{}.json", self.started_unix),
            "latest.json".to_string(),
        ] {
            let path = dir.join(name);
            fs::write(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
            written.push(path);
        }
        let curves: Vec<&(String, Histogram)> =
            self.sections.iter().flat_map(|s| &s.curves).collect();
        if !curves.is_empty() {
            let path = dir.join("latency.svg");
            fs::write(&path, latency_svg(&curves, &self.command))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }
}

fn verdict(met: bool) -> String {
    if met { "met" } else { "MISSED" }.to_string()
}

// ---- the chart ---------------------------------------------------------------------------

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Percentile as "nines": 0 at 0 %, 1 at 90 %, 2 at 99 %, ... capped at 5 (99.999 %).
fn nines(fraction: f64) -> f64 {
    (-(1.0 - fraction).max(1e-5).log10()).clamp(0.0, 5.0)
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `1 µs`, `10 µs`, `100 µs`, `1 ms`, ... for 10^exponent nanoseconds.
fn decade_label(exponent: u32) -> String {
    let unit = ["ns", "µs", "ms", "s"][(exponent / 3).min(3) as usize];
    let scale = exponent - 3 * (exponent / 3).min(3);
    format!("{} {unit}", 10u64.pow(scale))
}

/// Latency (log scale, up) against percentile (nines, across), one step line per curve.
fn latency_svg(curves: &[&(String, Histogram)], command: &str) -> String {
    let (width, height) = (980.0, 580.0);
    let (left, right, top, bottom) = (80.0, 720.0, 50.0, 510.0);
    let lo = curves
        .iter()
        .filter(|c| c.1.count() > 0)
        .map(|c| c.1.min().max(1))
        .min()
        .unwrap_or(1_000);
    let hi = curves.iter().map(|c| c.1.max()).max().unwrap_or(1_000_000);
    let lo_decade = (lo as f64).log10().floor();
    let hi_decade = (hi.max(lo * 10) as f64).log10().ceil();
    let x_of = |n: f64| left + (right - left) * n / 5.0;
    let y_of = |ns: f64| {
        let d = ns.max(1.0).log10();
        bottom - (bottom - top) * (d - lo_decade) / (hi_decade - lo_decade)
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="24" font-size="15">herd IAMAT latency by percentile (scenario 1)</text>"#
    );
    let _ = writeln!(
        svg,
        r##"<text x="{left}" y="40" fill="#666">{}</text>"##,
        escape_xml(command)
    );
    // Grid and axes.
    let mut decade = lo_decade;
    while decade <= hi_decade {
        let y = y_of(10f64.powf(decade));
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 6.0,
            y + 4.0,
            decade_label(decade as u32)
        );
        decade += 1.0;
    }
    for (n, label) in [
        (0.0, "0%"),
        (nines(0.5), "50%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ] {
        let x = x_of(n);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            bottom + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        right - left,
        bottom - top
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1 - p)</text>"#,
        (left + right) / 2.0,
        bottom + 40.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency, write to reply (log scale)</text>"#,
        (top + bottom) / 2.0
    );
    // One step line per curve, coloured by C x P (the label before " log"), dashed when
    // logging is off; the legend at the right.
    let mut shapes: Vec<&str> = Vec::new();
    for (i, (label, hist)) in curves.iter().enumerate() {
        if hist.count() == 0 {
            continue;
        }
        let shape = label.split(" log").next().unwrap_or(label);
        let color_index = shapes.iter().position(|s| *s == shape).unwrap_or_else(|| {
            shapes.push(shape);
            shapes.len() - 1
        });
        let color = COLORS[color_index % COLORS.len()];
        let dash = if label.contains("off") {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let mut points = String::new();
        let mut before = 0.0;
        for (value, fraction) in hist.cumulative() {
            let y = y_of(value as f64);
            let _ = write!(
                points,
                "{:.1},{:.1} {:.1},{:.1} ",
                x_of(nines(before)),
                y,
                x_of(nines(fraction)),
                y
            );
            before = fraction;
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.6"{dash} points="{}"/>"#,
            points.trim_end()
        );
        let ly = top + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            right + 16.0,
            right + 46.0,
            right + 52.0,
            ly + 4.0,
            escape_xml(label)
        );
    }
    svg += "</svg>\n";
    svg
}
