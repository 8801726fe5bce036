//! Scenario 6: a herd of 32 servers on loopback linked as a 4 x 8 grid (diameter 10). How long
//! from one IAMAT at a corner until all 32 know it (observed as in scenario 2, each server asked
//! at most once a millisecond), the same from the servers' own log clocks, and how many peer
//! messages one update costs, counted from the logs: `recv` records that are not client commands
//! (IAMAT or WHATSAT) and name one of the timed updates' clients.

use std::time::Duration;

use crate::herd::{refused_places_url, Herd, HerdConfig};
use crate::logscan::{scan_logs, LogScan};
use crate::report::{fmt_count, fmt_latency, fmt_ns, Row, Section};
use crate::scenarios::flood::{first_update, time_updates};
use crate::scenarios::{distances, eccentricity, Ctx, Target};
use crate::watch::Flood;

/// Each server is asked at most every millisecond, a tenth of the 10 ms target: polling 31
/// servers flat out would take the CPU the flood needs.
const PACE: Duration = Duration::from_millis(1);
const ROWS: usize = 4;
const COLS: usize = 8;

/// The grid: server (r, c) links to (r, c + 1) and (r + 1, c).
fn grid() -> (Vec<String>, Vec<(usize, usize)>) {
    let names = (0..ROWS * COLS)
        .map(|i| format!("G{}x{}", i / COLS, i % COLS))
        .collect();
    let mut links = Vec::new();
    for r in 0..ROWS {
        for c in 0..COLS {
            let i = r * COLS + c;
            if c + 1 < COLS {
                links.push((i, i + 1));
            }
            if r + 1 < ROWS {
                links.push((i, i + COLS));
            }
        }
    }
    (names, links)
}

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("6 bigherd", "32-server herd");
    match measure(ctx, &mut section) {
        Ok(()) => section,
        Err(why) => section.unavailable(why),
    }
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    let (names, addrs, links, log_dir, mut herd) = match &ctx.target {
        Some(Target::Addr(_)) => {
            return Err("--target for bigherd needs a herd.conf (or a comma-separated list)".into())
        }
        Some(Target::Herd(t)) => (
            t.names.clone(),
            t.addrs.clone(),
            t.links.clone(),
            t.log_dir.clone(),
            None,
        ),
        None => {
            let (names, links) = grid();
            let config = HerdConfig::new(&names, &links)?.with(&refused_places_url()?);
            let herd = Herd::start(&ctx.bin, config, "bigherd")?;
            let dir = herd.dir.path().to_path_buf();
            (names, herd.addrs(), links, Some(dir), Some(herd))
        }
    };
    let n = names.len();
    if n < 2 {
        return Err("bigherd needs at least two servers".into());
    }
    // Origin: a server of greatest eccentricity (a grid corner); diameter: over all pairs.
    let ecc: Vec<Option<usize>> = (0..n).map(|i| eccentricity(n, &links, i)).collect();
    let diameter = if ecc.iter().all(Option::is_some) {
        ecc.iter().flatten().max().copied()
    } else {
        None
    };
    let origin = (0..n)
        .max_by_key(|&i| (ecc[i].unwrap_or(0), std::cmp::Reverse(i)))
        .unwrap_or(0);
    let dist = distances(n, &links, origin);
    let others: Vec<usize> = (0..n).filter(|&i| i != origin).collect();
    let far = others.iter().filter_map(|&i| dist[i]).max();
    let farthest: Vec<usize> = others
        .iter()
        .enumerate()
        .filter(|&(_, &i)| links.is_empty() || dist[i] == far)
        .map(|(k, _)| k)
        .collect();
    let other_addrs: Vec<_> = others.iter().map(|&i| addrs[i]).collect();
    let other_names: Vec<String> = others.iter().map(|&i| names[i].clone()).collect();
    let shape = match diameter {
        Some(d) => format!("{n} servers, {} links, diameter {d}", links.len()),
        None if links.is_empty() => format!("{n} servers, links unknown"),
        None => format!("{n} servers, {} links, not connected", links.len()),
    };

    let mut flood = Flood::new(addrs[origin], &other_addrs, &ctx.names, PACE)?;
    let first = first_update(&mut flood, &other_names, Duration::from_secs(20))?;
    section.notes.push(format!(
        "{shape}; first update after start reached all in {:.1} ms",
        first.as_secs_f64() * 1e3
    ));
    let updates = ctx.count(40);
    let times = time_updates(
        &mut flood,
        "g",
        &farthest,
        updates,
        ctx.secs(20.0),
        Duration::from_secs(3),
    )?;
    drop(flood);
    let timed = times.to_all.count();
    let mut row = Row::new(format!("{shape}: {} -> all", names[origin]))
        .result(format!(
            "{}  (n={timed}{})",
            fmt_latency(&times.to_all),
            if times.lost > 0 {
                format!(", {} lost", times.lost)
            } else {
                String::new()
            }
        ))
        .figure("servers", n)
        .figure("links", links.len())
        .figure("diameter", diameter)
        .figure("lost", times.lost)
        .latency("all_", &times.to_all)
        .latency("farthest_", &times.to_farthest)
        .check(
            "p99 <= 10 ms",
            times.to_all.percentile(0.99) <= 10_000_000 && times.lost == 0,
        );
    if let Some(hops) = far {
        row.result += &format!(
            "; farthest ({hops} hops) p50 {}",
            fmt_ns(times.to_farthest.percentile(0.5))
        );
    }
    section.rows.push(row);

    // Peer messages and the servers' own clocks: the logs are complete once every server
    // has flushed and exited.
    if let Some(herd) = herd.as_mut() {
        herd.terminate();
    }
    let scan = match &log_dir {
        Some(dir) => scan_logs(dir, &names, origin, &times.clients),
        None => Err("log directory unknown".into()),
    };
    section
        .rows
        .extend(log_rows(scan, &times.clients, links.len()));
    Ok(())
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
