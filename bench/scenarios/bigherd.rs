//! Scenario 6: a herd of 32 servers on loopback linked as a 4 x 8 grid (diameter 10); and
//! scenario 13, 64 servers as an 8 x 8 cylinder (rows are rings: degree 3 or 4, diameter 11).
//! How long from one IAMAT at a server of greatest eccentricity until all know it (observed as
//! in scenario 2, each server asked at most once a millisecond), the same from the servers' own
//! log clocks, and how many peer messages one update costs, counted from the logs: `recv`
//! records that are not client commands (IAMAT or WHATSAT) and name one of the timed updates'
//! clients. With 64 servers, also how long the herd takes to start and link, and each
//! server's RSS.

use std::time::{Duration, Instant};

use crate::herd::refused_places_url;
use crate::logscan::{scan_logs, LogScan};
use crate::report::{fmt_count, fmt_latency, fmt_ns, Row, Section};
use crate::scenarios::{cylinder, eccentricity, farthest, grid, Ctx, Fleet};
use crate::watch::{first_update, time_updates, Flood, FloodTimes};

/// Each server is asked at most every millisecond, a tenth of the 10 ms target: polling 31
/// servers flat out would take the CPU the flood needs.
const PACE: Duration = Duration::from_millis(1);

/// One herd size this scenario measures, and its targets.
struct Shape {
    scenario: &'static str,
    topology: (Vec<String>, Vec<(usize, usize)>),
    /// The target for an update's time to reach every server (p99).
    p99_ms: u64,
    /// The target for peer messages per link per update.
    per_link: f64,
}

pub fn run(ctx: &Ctx) -> Section {
    let size = Shape {
        scenario: "bigherd",
        topology: grid(4, 8),
        p99_ms: 10,
        per_link: 2.0,
    };
    Section::new("6 bigherd", "32-server herd").measured(|section| measure(ctx, section, size))
}

pub fn run_64(ctx: &Ctx) -> Section {
    let size = Shape {
        scenario: "herd64",
        topology: cylinder(8, 8),
        p99_ms: 20,
        per_link: 1.5,
    };
    Section::new("13 herd64", "64-server herd").measured(|section| measure(ctx, section, size))
}

fn measure(ctx: &Ctx, section: &mut Section, size: Shape) -> Result<(), String> {
    let directives = [refused_places_url()?];
    let started = Instant::now();
    let mut fleet = Fleet::start(ctx, size.scenario, size.topology, &directives)?;
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
    let linked = started.elapsed();
    let (count, budget) = (ctx.count(40), ctx.secs(20.0));
    let timeout = Duration::from_secs(3);
    let times = time_updates(&mut flood, "g", &farthest, count, budget, timeout)?;
    drop(flood);
    let row = Row::new(format!("{shape}: {} -> all", fleet.names[origin]))
        .figure("servers", n)
        .figure("links", links.len())
        .figure("diameter", diameter);
    section.rows.push(add_times(row, &times, far, size.p99_ms));
    if n >= 64 {
        section.rows.push(start_and_memory(&fleet, linked));
    }

    // Peer messages and the servers' own clocks: the logs are complete once every server
    // has flushed and exited.
    let links = fleet.links.len();
    fleet.terminate();
    let scan = match &fleet.log_dir {
        Some(dir) => scan_logs(dir, &fleet.names, origin, &times.clients),
        None => Err("log directory unknown".into()),
    };
    section
        .rows
        .extend(log_rows(scan, &times.clients, links, size.per_link));
    Ok(())
}

/// How long the herd took from the first process started to an update known by all (every
/// link up), and the servers' RSS after the timed updates.
fn start_and_memory(fleet: &Fleet, linked: Duration) -> Row {
    let rss: Vec<u64> = fleet.rss().into_iter().flatten().collect();
    let (max, sum) = (
        rss.iter().copied().max().unwrap_or(0),
        rss.iter().sum::<u64>(),
    );
    let mean = sum / rss.len().max(1) as u64;
    Row::new("start, link, memory")
        .result(format!(
            "all {} started and linked in {:.2} s; RSS per server {:.1} MiB mean, {:.1} MiB max",
            fleet.names.len(),
            linked.as_secs_f64(),
            mean as f64 / 1048576.0,
            max as f64 / 1048576.0
        ))
        .figure("start_and_link_ms", linked.as_millis() as u64)
        .figure("rss_mean_bytes", mean)
        .figure("rss_max_bytes", max)
}

/// Time to all (the target's figure), with the farthest servers' p50 beside it.
fn add_times(row: Row, times: &FloodTimes, far: Option<usize>, p99_ms: u64) -> Row {
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
            format!("p99 <= {p99_ms} ms"),
            times.to_all.percentile(0.99) <= p99_ms * 1_000_000 && times.lost == 0,
        )
}

/// The log-clock cross-check and the peer-message count, or why they could not be read.
fn log_rows(
    scan: Result<LogScan, String>,
    clients: &[String],
    links: usize,
    per_link_target: f64,
) -> Vec<Row> {
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
            .check(
                format!("<= {per_link_target} per link per update"),
                per_link <= per_link_target,
            );
    }
    vec![clock, messages.result(result)]
}
