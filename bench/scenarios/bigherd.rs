//! Scenario 6: a herd of 32 servers on loopback linked as a 4 x 8 grid (diameter 10). How long
//! from one IAMAT at a corner until all 32 know it (observed as in scenario 2, each server asked
//! at most once a millisecond), the same from the servers' own log clocks, and how many peer
//! messages one update costs, counted from the logs: `recv` records that are not client commands
//! (IAMAT or WHATSAT) and name one of the timed updates' clients.

use std::time::Duration;

use crate::herd::refused_places_url;
use crate::logscan::{scan_logs, LogScan};
use crate::report::{fmt_count, fmt_latency, fmt_ns, Row, Section};
use crate::scenarios::{eccentricity, farthest, grid, Ctx, Fleet};
use crate::watch::{first_update, time_updates, Flood, FloodTimes};

/// Each server is asked at most every millisecond, a tenth of the 10 ms target: polling 31
/// servers flat out would take the CPU the flood needs.
const PACE: Duration = Duration::from_millis(1);
const ROWS: usize = 4;
const COLS: usize = 8;

pub fn run(ctx: &Ctx) -> Section {
    Section::new("6 bigherd", "32-server herd").measured(|section| measure(ctx, section))
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    let directives = [refused_places_url()?];
    let mut fleet = Fleet::start(ctx, "bigherd", grid(ROWS, COLS), &directives)?;
    let (n, links) = (fleet.names.len(), &fleet.links);
    if n < 2 {
        return Err("bigherd needs at least two servers".into());
    }
    // Origin: a server of greatest eccentricity (a grid corner); diameter: over all pairs.
    let ecc: Vec<Option<usize>> = (0..n).map(|i| eccentricity(n, links, i)).collect();
    let diameter = if ecc.iter().all(Option::is_some) {
        ecc.iter().flatten().max().copied()
    } else {
        None
    };
    let origin = (0..n)
        .max_by_key(|&i| (ecc[i].unwrap_or(0), std::cmp::Reverse(i)))
        .unwrap_or(0);
    let (far, farthest) = farthest(n, links, origin);
    let others = fleet.others(origin);
    let other_addrs: Vec<_> = others.iter().map(|&i| fleet.addrs[i]).collect();
    let other_names: Vec<String> = others.iter().map(|&i| fleet.names[i].clone()).collect();
    let shape = match diameter {
        Some(d) => format!("{n} servers, {} links, diameter {d}", links.len()),
        None if links.is_empty() => format!("{n} servers, links unknown"),
        None => format!("{n} servers, {} links, not connected", links.len()),
    };

    let mut flood = Flood::new(fleet.addrs[origin], &other_addrs, &ctx.names, PACE)?;
    let first = first_update(&mut flood, &other_names, Duration::from_secs(20))?;
    section.notes.push(format!(
        "{shape}; first update after start reached all in {:.1} ms",
        first.as_secs_f64() * 1e3
    ));
    let (count, budget) = (ctx.count(40), ctx.secs(20.0));
    let timeout = Duration::from_secs(3);
    let times = time_updates(&mut flood, "g", &farthest, count, budget, timeout)?;
    drop(flood);
    let row = Row::new(format!("{shape}: {} -> all", fleet.names[origin]))
        .figure("servers", n)
        .figure("links", links.len())
        .figure("diameter", diameter);
    section.rows.push(add_times(row, &times, far));

    // Peer messages and the servers' own clocks: the logs are complete once every server
    // has flushed and exited.
    let links = fleet.links.len();
    fleet.terminate();
    let scan = match &fleet.log_dir {
        Some(dir) => scan_logs(dir, &fleet.names, origin, &times.clients),
        None => Err("log directory unknown".into()),
    };
    section.rows.extend(log_rows(scan, &times.clients, links));
    Ok(())
}

/// Time to all (the target's figure), with the farthest servers' p50 beside it.
fn add_times(row: Row, times: &FloodTimes, far: Option<usize>) -> Row {
    let lost = match times.lost {
        0 => String::new(),
        n => format!(", {n} lost"),
    };
    let mut result = format!(
        "{}  (n={}{lost})",
        fmt_latency(&times.to_all),
        times.to_all.count()
    );
    if let Some(hops) = far {
        result += &format!(
            "; farthest ({hops} hops) p50 {}",
            fmt_ns(times.to_farthest.percentile(0.5))
        );
    }
    row.result(result)
        .figure("lost", times.lost)
        .latency("all_", &times.to_all)
        .latency("farthest_", &times.to_farthest)
        .check(
            "p99 <= 10 ms",
            times.to_all.percentile(0.99) <= 10_000_000 && times.lost == 0,
        )
}

/// The log-clock cross-check and the peer-message count, or why they could not be read.
fn log_rows(scan: Result<LogScan, String>, clients: &[String], links: usize) -> Vec<Row> {
    let scan = match scan {
        Ok(scan) if scan.messages(clients) > 0 => scan,
        Ok(_) => {
            return vec![Row::new("peer messages per update")
                .result("not observable: no peer recv record in the logs names a timed update")]
        }
        Err(why) => {
            return vec![
                Row::new("peer messages per update").result(format!("not observable: {why}"))
            ]
        }
    };
    let spreads = scan.spreads(clients);
    let clock = Row::new("same updates, by the servers' log clocks")
        .result(format!(
            "{}  (n={}; origin's recv of the IAMAT to the last server's first recv)",
            fmt_latency(&spreads),
            spreads.count()
        ))
        .latency("log_all_", &spreads);
    let total = scan.messages(clients);
    let updates = clients.len();
    let per_update = total as f64 / updates.max(1) as f64;
    let mut messages = Row::new("peer messages per update")
        .figure("peer_messages", total)
        .figure("updates", updates)
        .figure("per_update", (per_update * 100.0).round() / 100.0);
    let mut result = format!(
        "{} messages for {updates} updates: {per_update:.1} per update",
        fmt_count(total)
    );
    if links > 0 {
        let per_link = per_update / links as f64;
        result += &format!(", {per_link:.2} per link ({links} links)");
        messages = messages
            .figure("per_link_per_update", (per_link * 1000.0).round() / 1000.0)
            .check("<= 2 per link per update", per_link <= 2.0);
    }
    vec![clock, messages.result(result)]
}
