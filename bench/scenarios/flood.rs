//! Scenario 2: flooding in the SPEC's five-server herd. How long from an IAMAT at one server
//! until every other server answers WHATSAT for that client (see watch.rs for why that places
//! the arrival within the polling pace plus one round trip), idle and while a C=50 P=1 IAMAT
//! load runs against the sending server, with the servers' own log clocks beside it as a
//! cross-check; and the IAMAT rate of a server inside the herd, where every update is also
//! flooded, against the same server alone.
//!
//! Places points at a port nobody listens on, so the WHATSATs that find the client are answered
//! at once (with a Places error) and cost the servers little while the flood goes on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::commands::IamatLoad;
use crate::herd::{pid_listening_on, refused_places_url, Herd, HerdConfig};
use crate::hist::Histogram;
use crate::load::{run_load, LoadReport, LoadSpec};
use crate::logscan::scan_logs;
use crate::report::{fmt_latency, fmt_rate, fmt_stats, Row, Section, Stat};
use crate::scenarios::{distances, five_servers, load_row, Ctx, Target};
use crate::watch::Flood;

/// Each server is asked at most every 100 µs, a tenth of the 1 ms target: asking flat out
/// would take CPU the flood needs on a small machine, and the figure stays within 0.1 ms (plus
/// a round trip) of the arrival.
const PACE: Duration = Duration::from_micros(100);

/// Latencies of a series of updates: to every other server, and to the farthest ones.
#[derive(Default)]
pub struct FloodTimes {
    pub to_all: Histogram,
    pub to_farthest: Histogram,
    /// Updates some server had not learnt within the per-update timeout.
    pub lost: u64,
    /// The client id of every update sent.
    pub clients: Vec<String>,
}

/// Times up to `count` updates (for at most `budget`), each waited for at most `timeout`.
pub fn time_updates(
    flood: &mut Flood,
    kind: &str,
    farthest: &[usize],
    count: usize,
    budget: Duration,
    timeout: Duration,
) -> Result<FloodTimes, String> {
    let mut times = FloodTimes::default();
    let start = Instant::now();
    for _ in 0..count {
        if start.elapsed() >= budget {
            break;
        }
        let known = flood.sample(kind, timeout)?;
        times.clients.push(flood.last_client().to_string());
        if known.iter().any(Option::is_none) {
            times.lost += 1;
            continue;
        }
        let ns = |d: &Option<Duration>| d.unwrap_or_default().as_nanos() as u64;
        times.to_all.record(known.iter().map(ns).max().unwrap_or(0));
        times
            .to_farthest
            .record(farthest.iter().map(|&i| ns(&known[i])).max().unwrap_or(0));
    }
    Ok(times)
}

/// Waits (bounded) for the first update to reach every server: links come up after start.
pub fn first_update(
    flood: &mut Flood,
    names: &[String],
    timeout: Duration,
) -> Result<Duration, String> {
    let known = flood.sample("w", timeout)?;
    let missing: Vec<&str> = known
        .iter()
        .zip(names)
        .filter(|(k, _)| k.is_none())
        .map(|(_, n)| n.as_str())
        .collect();
    if missing.is_empty() {
        Ok(known.iter().flatten().max().copied().unwrap_or_default())
    } else {
        Err(format!(
            "the first update did not reach {} within {} s (are the herd links built?)",
            missing.join(", "),
            timeout.as_secs()
        ))
    }
}

fn times_row(config: String, times: &FloodTimes, limit_ns: u64, goal: &str) -> Row {
    let mut result = format!(
        "{}  (n={})",
        fmt_latency(&times.to_farthest),
        times.to_farthest.count()
    );
    if times.lost > 0 {
        result += &format!("  {} updates lost", times.lost);
    }
    Row::new(config)
        .result(result)
        .figure("lost", times.lost)
        .latency("farthest_", &times.to_farthest)
        .latency("all_", &times.to_all)
        .check(
            goal,
            times.to_farthest.percentile(0.99) <= limit_ns && times.lost == 0,
        )
}

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("2 flood", "five-server herd");
    match measure(ctx, &mut section) {
        Ok(()) => section,
        Err(why) => section.unavailable(why),
    }
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    let directives = [refused_places_url()?];
    let (names, addrs, links, mut herd) = match &ctx.target {
        Some(Target::Addr(_)) => {
            return Err("--target for flood needs a comma-separated list or a herd.conf".into())
        }
        Some(Target::Herd(t)) => (t.names.clone(), t.addrs.clone(), t.links.clone(), None),
        None => {
            let (names, links) = five_servers();
            let mut config = HerdConfig::new(&names, &links)?;
            for d in &directives {
                config = config.with(d);
            }
            let herd = Herd::start(&ctx.bin, config, "flood")?;
            (names, herd.addrs(), links, Some(herd))
        }
    };
    if addrs.len() < 2 {
        return Err("flood needs at least two servers".into());
    }
    let origin = &names[0];
    let dist = distances(names.len(), &links, 0);
    let far_hops = dist[1..].iter().flatten().max().copied();
    // Positions among the other servers (index - 1) of the farthest ones.
    let farthest: Vec<usize> = (1..names.len())
        .filter(|&i| links.is_empty() || dist[i] == far_hops)
        .map(|i| i - 1)
        .collect();
    let far_label = match far_hops {
        Some(hops) if !links.is_empty() => format!(
            "{} ({hops} hops)",
            farthest
                .iter()
                .map(|&i| names[i + 1].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "all others".to_string(),
    };

    let mut flood = Flood::new(addrs[0], &addrs[1..], &ctx.names, PACE)?;
    let first = first_update(&mut flood, &names[1..], Duration::from_secs(10))?;
    section.notes.push(format!(
        "first update after start reached every server in {:.1} ms",
        first.as_secs_f64() * 1e3
    ));

    let count = ctx.count(300);
    let budget = ctx.secs(10.0);
    let timeout = Duration::from_secs(2);
    let idle = time_updates(&mut flood, "f", &farthest, count, budget, timeout)?;
    let mut idle_row = times_row(
        format!("idle, {origin} -> {far_label}"),
        &idle,
        1_000_000,
        "p99 <= 1 ms",
    );

    let origin_pid = match &herd {
        Some(herd) => herd.pid(0),
        None => pid_listening_on(addrs[0]),
    };
    let spec = LoadSpec::new(addrs[0], 50, 1, ctx.secs(3.0)).server(origin_pid);
    let in_herd = run_load(&spec, &mut IamatLoad::cycling(&ctx.names, 50))?;

    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let mut spec = LoadSpec::new(addrs[0], 50, 1, Duration::from_secs(120));
        spec.stop = Some(stop.clone());
        let mut work = IamatLoad::cycling(&ctx.names, 50);
        thread::spawn(move || run_load(&spec, &mut work))
    };
    thread::sleep(Duration::from_millis(500));
    let loaded = time_updates(&mut flood, "l", &farthest, count, budget, timeout);
    stop.store(true, Ordering::Relaxed);
    let background = background
        .join()
        .map_err(|_| "the background load panicked".to_string())?;
    let loaded = loaded?;
    let background = background?;
    let mut loaded_row = times_row(
        format!("under C=50 P=1 IAMAT load at {origin}"),
        &loaded,
        5_000_000,
        "p99 <= 5 ms",
    );
    loaded_row.result += &format!("  load {}", fmt_rate(background.rate()));
    drop(flood);

    // The same updates by the servers' own clocks (complete once every server has flushed).
    if let Some(herd) = herd.as_mut() {
        herd.terminate();
    }
    let log_dir = match (&herd, &ctx.target) {
        (Some(herd), _) => Some(herd.dir.path().to_path_buf()),
        (None, Some(Target::Herd(t))) => t.log_dir.clone(),
        _ => None,
    };
    if let Some(scan) = log_dir.and_then(|dir| {
        scan_logs(
            &dir,
            &names,
            0,
            &[idle.clients.clone(), loaded.clients.clone()].concat(),
        )
        .ok()
    }) {
        for (row, times) in [(&mut idle_row, &idle), (&mut loaded_row, &loaded)] {
            let spreads = scan.spreads(&times.clients);
            if spreads.count() > 0 {
                let stats = fmt_stats(&spreads, &[Stat::P50, Stat::P99], " ");
                row.result += &format!("  [log clocks: {stats}]");
                row.add_latency("log_all_", &spreads);
            }
        }
    }
    section.rows.push(idle_row);
    section.rows.push(loaded_row);
    drop(herd);

    let herd_row = load_row(format!("IAMAT C=50 P=1 at {origin}, in the herd"), &in_herd);
    if ctx.target.is_some() {
        section.rows.push(herd_row);
        section
            .notes
            .push("with --target the rate alone is not measured".into());
        return Ok(());
    }
    let alone = alone_rate(ctx, &directives)?;
    let ratio = in_herd.rate() / alone.0.rate().max(1.0);
    section.rows.push(
        herd_row
            .figure("ratio_to_alone", (ratio * 1000.0).round() / 1000.0)
            .check(
                format!(">= 50% of alone (is {:.0}%)", ratio * 100.0),
                ratio >= 0.5,
            ),
    );
    section.rows.push(alone.1);
    Ok(())
}

/// The same load against one server with no links, for comparison.
fn alone_rate(ctx: &Ctx, directives: &[String]) -> Result<(LoadReport, Row), String> {
    let mut config = HerdConfig::single("Bailey")?;
    for d in directives {
        config = config.with(d);
    }
    let herd = Herd::start(&ctx.bin, config, "alone")?;
    let spec = LoadSpec::new(herd.config.addrs[0], 50, 1, ctx.secs(3.0)).server(herd.pid(0));
    let load = run_load(&spec, &mut IamatLoad::cycling(&ctx.names, 50))?;
    let row = load_row("IAMAT C=50 P=1, one server alone", &load);
    Ok((load, row))
}
