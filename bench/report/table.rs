//! The table on stdout: a header naming the machine and the command, a line per row and per
//! further target of a row, columns padded to their widest cell, then the notes. Text only.

use std::fmt::Write as _;

use super::{Report, Section};

/// scenario, configuration, result, target, verdict.
type Line = [String; 5];

const HEADER: [&str; 5] = ["scenario", "configuration", "result", "target", ""];

impl Report {
    pub fn table(&self) -> String {
        let mut lines: Vec<Line> = vec![HEADER.map(String::from)];
        for section in &self.sections {
            lines.extend(section_lines(section));
        }
        let server = self.target.as_deref().unwrap_or(&self.binary);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "herd load bench: {} cores, {}",
            self.cores, self.command
        );
        let _ = writeln!(out, "argv: {}", self.argv);
        let _ = writeln!(out, "server: {server}");
        let _ = writeln!(out);
        out += &render(&lines);
        out += &self.notes();
        out
    }

    /// Every section's notes, each after its scenario's key; nothing when there are none.
    fn notes(&self) -> String {
        let notes: Vec<String> = self
            .sections
            .iter()
            .flat_map(|s| s.notes.iter().map(move |n| format!("{}: {n}", s.key)))
            .collect();
        if notes.is_empty() {
            return String::new();
        }
        let mut out = "\nnotes:\n".to_string();
        for note in notes {
            let _ = writeln!(out, "  {note}");
        }
        out
    }
}

/// A section's lines: one per row, one more per further target of a row, and why it was not
/// available; the scenario is named on the first only.
fn section_lines(section: &Section) -> Vec<Line> {
    let mut lines = Vec::new();
    for row in &section.rows {
        let mut checks = row.checks.iter();
        let (goal, met) = checks.next().map_or((String::new(), String::new()), |c| {
            (c.goal.clone(), verdict(c.met))
        });
        lines.push([
            String::new(),
            row.config.clone(),
            row.result.clone(),
            goal,
            met,
        ]);
        for c in checks {
            let mut line = Line::default();
            line[3] = c.goal.clone();
            line[4] = verdict(c.met);
            lines.push(line);
        }
    }
    if let Some(why) = &section.unavailable {
        let mut line = Line::default();
        line[2] = format!("not available: {why}");
        lines.push(line);
    }
    if let Some(first) = lines.first_mut() {
        first[0] = format!("{} {}", section.key, section.title);
    }
    lines
}

/// The lines with every column as wide as its widest cell, a rule under the header.
fn render(lines: &[Line]) -> String {
    let mut widths = [0usize; 5];
    for line in lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let mut text = String::new();
        for (cell, w) in line.iter().zip(widths) {
            text += cell;
            text += &" ".repeat(w.saturating_sub(cell.chars().count()) + 2);
        }
        let _ = writeln!(out, "{}", text.trim_end());
        if i == 0 {
            let total: usize = widths.iter().map(|w| w + 2).sum();
            let _ = writeln!(out, "{}", "-".repeat(total.saturating_sub(2)));
        }
    }
    out
}

fn verdict(met: bool) -> String {
    if met { "met" } else { "MISSED" }.to_string()
}
