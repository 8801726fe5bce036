//! Scenario 5: memory per client. One server with `log lines off` takes IAMATs from 1,000,000
//! distinct clients, pipelined hard; its RSS growth divided by the client count is the figure.

use std::thread;
use std::time::Duration;

use crate::commands::IamatLoad;
use crate::herd::rss_bytes;
use crate::load::{run_load, LoadReport, LoadSpec};
use crate::report::{fmt_bytes, fmt_count, fmt_rate, Row, Section};
use crate::scenarios::{Ctx, Subject};

const CLIENTS: u64 = 1_000_000;

pub fn run(ctx: &Ctx) -> Section {
    Section::new("5 memory", "1,000,000 clients").measured(|section| measure(ctx, section))
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    let subject = Subject::start(ctx, "memory", &["log lines off"])?;
    let pid = subject
        .pid()
        .ok_or("cannot find the target's process to read its RSS")?;
    let rss_before = rss_bytes(pid).ok_or("cannot read the server's RSS")?;

    let mut spec =
        LoadSpec::new(subject.addr(), 16, 256, Duration::from_secs(90)).server(Some(pid));
    spec.warmup = Duration::ZERO;
    spec.drain = Duration::from_secs(5);
    let load = run_load(&spec, &mut IamatLoad::distinct(&ctx.names, CLIENTS))?;
    // Let the connections' buffers go before reading RSS.
    thread::sleep(Duration::from_millis(300));
    let rss_after = rss_bytes(pid).ok_or("cannot read the server's RSS")?;

    let config = "IAMAT from 1,000,000 clients, log lines off, C=16 P=256";
    let (row, stored, per_client) = per_client_row(config, CLIENTS, &load, (rss_before, rss_after));
    section.rows.push(row.check(
        "<= 256 B RSS each",
        per_client <= 256.0 && stored == CLIENTS,
    ));
    Ok(())
}

/// A load of `clients` new clients and the server's RSS before and after it: the row with the
/// clients stored, the rate, the RSS and the growth per client (and any refused or unanswered
/// IAMATs), for the caller to judge; with the clients stored and the bytes per client.
pub(super) fn per_client_row(
    config: &str,
    clients: u64,
    load: &LoadReport,
    (before, after): (u64, u64),
) -> (Row, u64, f64) {
    let stored = load.completed - load.errors;
    let per_client = (after as f64 - before as f64) / clients as f64;
    let mut result = format!(
        "{} clients at {}: RSS {} -> {}, {} per client",
        fmt_count(stored),
        fmt_rate(load.rate()),
        fmt_bytes(before as f64),
        fmt_bytes(after as f64),
        fmt_bytes(per_client)
    );
    if load.errors > 0 || load.unanswered > 0 {
        result += &format!(
            "  ({} '?' replies, {} unanswered)",
            load.errors, load.unanswered
        );
    }
    let row = Row::new(config)
        .result(result)
        .figure("clients", stored)
        .figure("rate_per_s", load.rate().round())
        .figure("rss_before_bytes", before)
        .figure("rss_after_bytes", after)
        .figure("rss_per_client_bytes", per_client.round());
    (row, stored, per_client)
}
