//! Scenario 1: IAMAT throughput and latency on one server, for C connections x P commands in
//! flight, with every line logged (the default config) and again with `log lines off`. Every
//! command is a real update (a client of the connection's own, at a newer time). A fresh
//! server per configuration, so no run inherits another's log file or client table.

use crate::report::Section;
use crate::scenarios::{iamat_load, load_row, Ctx, Subject};

const SHAPES: [(usize, usize); 6] = [(1, 1), (1, 16), (50, 1), (50, 16), (500, 1), (500, 16)];

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("1 iamat", "IAMAT on one server");
    let modes: &[(&str, &[&str])] = if ctx.target.is_some() {
        &[("target", &[])]
    } else {
        &[("log on", &[]), ("log off", &["log lines off"])]
    };
    for &(mode, directives) in modes {
        let shapes = SHAPES
            .iter()
            .filter(|shape| ctx.shapes.is_empty() || ctx.shapes.contains(shape));
        for &(connections, in_flight) in shapes {
            let config = format!("C={connections} P={in_flight} {mode}");
            let subject = match Subject::start(ctx, "iamat", directives) {
                Ok(subject) => subject,
                Err(why) => return section.unavailable(why),
            };
            let load = match iamat_load(ctx, subject.server(), (connections, in_flight), 4.0, None)
            {
                Ok(load) => load,
                Err(why) => return section.unavailable(format!("{config}: {why}")),
            };
            let mut row = load_row(&config, &load)
                .figure("connections", connections)
                .figure("in_flight", in_flight)
                .figure("log_lines", mode);
            let p50 = load.latency.percentile(0.5);
            let p99 = load.latency.percentile(0.99);
            let default_config = mode != "log off";
            match (connections, in_flight) {
                (50, 1) if default_config => {
                    row = row
                        .check(">= 130,000/s", load.rate() >= 130_000.0)
                        .check("p99 <= 1 ms", p99 <= 1_000_000);
                }
                (1, 1) if default_config => {
                    row = row.check("p50 <= 77 µs", p50 <= 77_000);
                }
                (50, 16) if !default_config => {
                    row = row.check(">= 500,000/s", load.rate() >= 500_000.0);
                }
                _ => {}
            }
            section.rows.push(row);
            section.curves.push((config, load.latency));
        }
    }
    if ctx.target.is_some() {
        section.notes.push(
            "with --target the server's own config applies; the targets for the default config are checked against it"
                .into(),
        );
    }
    section
}
