//! What a bench run found, and its three renderings: the table on stdout (table.rs), the JSON
//! files under target/bench/, and the SVG chart of scenario 1's latency distributions (svg.rs).
//! It measures nothing.

mod format;
mod svg;
mod table;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::hist::Histogram;

pub use format::{
    fmt_bytes, fmt_count, fmt_duration, fmt_latency, fmt_ns, fmt_rate, fmt_share, fmt_stats, Stat,
    LATENCY,
};
use svg::latency_svg;

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

    /// Adds the count and the latency columns (p50/p99/p99.9/max) of a histogram to the JSON
    /// figures, each key after `prefix`.
    pub fn latency(mut self, prefix: &str, hist: &Histogram) -> Row {
        self.add_latency(prefix, hist);
        self
    }

    pub fn add_latency(&mut self, prefix: &str, hist: &Histogram) {
        self.figures
            .insert(format!("{prefix}count"), hist.count().into());
        self.add_stats(prefix, hist, &LATENCY);
    }

    /// Adds the chosen figures of a histogram to the JSON figures, each key after `prefix`.
    pub fn stats(mut self, prefix: &str, hist: &Histogram, stats: &[Stat]) -> Row {
        self.add_stats(prefix, hist, stats);
        self
    }

    fn add_stats(&mut self, prefix: &str, hist: &Histogram, stats: &[Stat]) {
        for stat in stats {
            let key = format!("{prefix}{}", stat.key());
            self.figures.insert(key, stat.of(hist).into());
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

    /// Runs `measure` into this section: the rows it added, and why it stopped if it failed.
    pub fn measured(mut self, measure: impl FnOnce(&mut Section) -> Result<(), String>) -> Section {
        match measure(&mut self) {
            Ok(()) => self,
            Err(why) => self.unavailable(why),
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

impl Report {
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
