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
use std::time::Duration;

use crate::commands::IamatLoad;
use crate::herd::{refused_places_url, Herd, HerdConfig};
use crate::load::{run_load, LoadReport, LoadSpec};
use crate::logscan::scan_logs;
use crate::report::{fmt_latency, fmt_rate, fmt_stats, Row, Section, Stat};
use crate::scenarios::{farthest, five_servers, iamat_load, load_row, Ctx, Fleet, Subject};
use crate::watch::{first_update, time_updates, Flood, FloodTimes};

/// Each server is asked at most every 100 µs, a tenth of the 1 ms target: asking flat out
/// would take CPU the flood needs on a small machine, and the figure stays within 0.1 ms (plus
/// a round trip) of the arrival.
const PACE: Duration = Duration::from_micros(100);

/// IAMAT load at the origin while updates are timed, and for the herd-vs-alone rate.
const LOAD: (usize, usize) = (50, 1);

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
    Section::new("2 flood", "five-server herd").measured(|section| measure(ctx, section))
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    let directives = [refused_places_url()?];
    let mut fleet = Fleet::start(ctx, "flood", five_servers(), &directives)?;
    let names = &fleet.names;
    if names.len() < 2 {
        return Err("flood needs at least two servers".into());
    }
    let origin = names[0].clone();
    let (far_hops, farthest) = farthest(names.len(), &fleet.links, 0);
    let far_label = match far_hops {
        Some(hops) => format!(
            "{} ({hops} hops)",
            farthest
                .iter()
                .map(|&i| names[i + 1].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "all others".to_string(),
    };

    let mut flood = Flood::new(fleet.addrs[0], &fleet.addrs[1..], &ctx.names, PACE)?;
    let first = first_update(&mut flood, &names[1..], Duration::from_secs(10))?;
    section.notes.push(format!(
        "first update after start reached every server in {:.1} ms",
        first.as_secs_f64() * 1e3
    ));
    let series = |flood: &mut Flood, kind: &str| {
        let (count, budget) = (ctx.count(300), ctx.secs(10.0));
        time_updates(
            flood,
            kind,
            &farthest,
            count,
            budget,
            Duration::from_secs(2),
        )
    };
    let idle = series(&mut flood, "f")?;
    let in_herd = iamat_load(ctx, fleet.server(0), LOAD, 3.0, None)?;
    let (loaded, background) = under_load(ctx, &fleet, || series(&mut flood, "l"))?;
    drop(flood);

    let mut idle_row = times_row(
        format!("idle, {origin} -> {far_label}"),
        &idle,
        1_000_000,
        "p99 <= 1 ms",
    );
    let mut loaded_row = times_row(
        format!("under C=50 P=1 IAMAT load at {origin}"),
        &loaded,
        5_000_000,
        "p99 <= 5 ms",
    );
    loaded_row.result += &format!("  load {}", fmt_rate(background.rate()));
    // The same updates by the servers' own clocks (complete once every server has flushed).
    fleet.terminate();
    add_log_clocks(&fleet, [(&mut idle_row, &idle), (&mut loaded_row, &loaded)]);
    section.rows.extend([idle_row, loaded_row]);
    drop(fleet);
    herd_vs_alone(ctx, section, &in_herd, &origin, &directives)
}

/// Runs `timed` while a C=50 P=1 IAMAT load runs at the origin on another thread: what
/// `timed` returned, and the load's report.
fn under_load(
    ctx: &Ctx,
    fleet: &Fleet,
    timed: impl FnOnce() -> Result<FloodTimes, String>,
) -> Result<(FloodTimes, LoadReport), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let mut spec = LoadSpec::new(fleet.addrs[0], LOAD.0, LOAD.1, Duration::from_secs(120));
        spec.stop = Some(stop.clone());
        let mut work = IamatLoad::cycling(&ctx.names, LOAD.0);
        thread::spawn(move || run_load(&spec, &mut work))
    };
    thread::sleep(Duration::from_millis(500));
    let times = timed();
    stop.store(true, Ordering::Relaxed);
    let background = background
        .join()
        .map_err(|_| "the background load panicked".to_string())?;
    Ok((times?, background?))
}

/// Beside each row, the same updates timed by the servers' own log clocks, when the logs can
/// be read.
fn add_log_clocks(fleet: &Fleet, rows: [(&mut Row, &FloodTimes); 2]) {
    let clients: Vec<String> = rows.iter().flat_map(|(_, t)| t.clients.clone()).collect();
    let Some(scan) =
        (fleet.log_dir.as_ref()).and_then(|dir| scan_logs(dir, &fleet.names, 0, &clients).ok())
    else {
        return;
    };
    for (row, times) in rows {
        let spreads = scan.spreads(&times.clients);
        if spreads.count() > 0 {
            let stats = fmt_stats(&spreads, &[Stat::P50, Stat::P99], " ");
            row.result += &format!("  [log clocks: {stats}]");
            row.add_latency("log_all_", &spreads);
        }
    }
}

/// The IAMAT rate at the origin inside the herd, against one server with no links (not with
/// `--target`).
fn herd_vs_alone(
    ctx: &Ctx,
    section: &mut Section,
    in_herd: &LoadReport,
    origin: &str,
    directives: &[String],
) -> Result<(), String> {
    let herd_row = load_row(format!("IAMAT C=50 P=1 at {origin}, in the herd"), in_herd);
    if ctx.target.is_some() {
        section.rows.push(herd_row);
        section
            .notes
            .push("with --target the rate alone is not measured".into());
        return Ok(());
    }
    let mut config = HerdConfig::single("Bailey")?;
    for d in directives {
        config = config.with(d);
    }
    let alone = Subject::Own(Box::new(Herd::start(&ctx.bin, config, "alone")?));
    let load = iamat_load(ctx, alone.server(), LOAD, 3.0, None)?;
    let ratio = in_herd.rate() / load.rate().max(1.0);
    section.rows.push(
        herd_row
            .figure("ratio_to_alone", (ratio * 1000.0).round() / 1000.0)
            .check(
                format!(">= 50% of alone (is {:.0}%)", ratio * 100.0),
                ratio >= 0.5,
            ),
    );
    section
        .rows
        .push(load_row("IAMAT C=50 P=1, one server alone", &load));
    Ok(())
}
