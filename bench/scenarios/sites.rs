//! Scenario 12: the five-server herd spread over three sites of a WAN played on loopback
//! (tests/support/src/wan.rs): Bailey and Campbell in site 1, Bona and Clark in site 2, Jaquez
//! in site 3, 20 ms one way between sites 1 and 2, 30 ms between 1 and 3, 40 ms between 2 and
//! 3 (each with a little seeded jitter), links within a site direct. Every server listens on
//! its site's loopback address (127.0.0.2 to 127.0.0.4); each direction of a link between two
//! sites goes through a relay in this process.
//!
//! Three sites: an IAMAT at Campbell on the idle herd, timed until each other server answers
//! WHATSAT for it (watch.rs), beside the sum of its shortest path's one-way delays; then a
//! saturating IAMAT load at Campbell and how long until every other server shows every client
//! at its last acknowledged time (the `staleness` scenario's catch-up).
//!
//! Thin link: the same load (50 clients, whose updates need about sixty times the cap), and
//! the same load over 5,000 clients (about ten times the cap even once merged), each with the
//! link between Campbell and Jaquez capped at 1 MB/s each way, and with both links of Jaquez's
//! site capped (Jaquez then has no other way in): Campbell's IAMAT rate beside the uncapped
//! run's, the `link lagging` lines in the logs of the capped links' senders, each server's
//! staleness per client after the load (with 5,000 clients judged beside the time one record
//! per client takes at the cap), and the peak memory of every server and what the relays held.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herd_test_support::wan::{LinkShape, Wan};

use crate::herd::{own_peak_rss_bytes, peak_rss_bytes, HerdConfig};
use crate::hist::Histogram;
use crate::load::LoadSpec;
use crate::report::{fmt_bytes, fmt_duration, fmt_ns, fmt_stats, Row, Section, Stat};
use crate::scenarios::staleness::{
    cpu_row, load_and_catch_up, polled_directives, wait_for_links, Caught, Clients, CONNECTIONS,
    IN_FLIGHT, ORIGIN,
};
use crate::scenarios::{five_servers, load_row, round3, Ctx, Fleet};
use crate::watch::{first_update, Flood};

/// The far site's server, and the other end of the thin link.
const FAR: &str = "Jaquez";
const SITES: [&[&str]; 3] = [&["Bailey", "Campbell"], &["Bona", "Clark"], &[FAR]];
/// One-way delay between two sites (by index into `SITES`), in milliseconds.
const SITE_DELAY_MS: [(usize, usize, u64); 3] = [(0, 1, 20), (0, 2, 30), (1, 2, 40)];
/// Each chunk a relay passes on is delayed by its link's delay plus or minus this.
const JITTER: Duration = Duration::from_micros(500);
const SEED: u64 = 20;
/// What a relay between sites may hold each way: the bandwidth-delay product of 100 MB/s at
/// 40 ms, so that only a capped link is a bottleneck (a relay holding 64 KiB would carry
/// 64 KiB per one-way delay at most, as a small TCP window would).
const WIDE_BUFFER: usize = 4 << 20;
/// The thin link's cap, each way (its relays keep the default 64 KiB of buffer).
const THIN_BYTES_PER_SEC: u64 = 1_000_000;
/// Each server is asked at most this often while an update is timed: a tenth of the 2 ms the
/// figure may exceed its path by.
const PACE: Duration = Duration::from_micros(200);
const FLOOD_MARGIN: Duration = Duration::from_millis(2);
const STALE_MARGIN: Duration = Duration::from_millis(50);
const THIN_MARGIN: Duration = Duration::from_millis(100);
/// The load's warm-up: past `peer hold-ms` (1000 ms by default), the time a thin link holds
/// clients back before it lags, so the window measures the herd as it then runs.
const WARMUP: Duration = Duration::from_millis(1500);
/// The thin-link rows' clients: enough that conflating each client's updates into its newest
/// record does not shrink what the link must carry much (with 50, it would carry 50 records a
/// turn of the loop whatever the rate).
const THIN_CLIENTS: usize = 5_000;
/// Campbell's link to Jaquez alone, and both links of Jaquez's site.
const ONE_THIN: [(&str, &str); 1] = [(ORIGIN, FAR)];
const SITE_THIN: [(&str, &str); 2] = [(ORIGIN, FAR), ("Clark", FAR)];

/// The herd laid out over the sites, started. Fields drop in order: the servers are killed
/// before the relays between them stop.
struct Sites {
    fleet: Fleet,
    wan: Wan,
    origin: usize,
    /// Per server, the sum of the one-way delays of its shortest path from the origin.
    path: Vec<Duration>,
}

impl Sites {
    /// The five servers in their sites, the links named in `thin` capped at
    /// `THIN_BYTES_PER_SEC`.
    fn start(ctx: &Ctx, label: &str, thin: &[(&str, &str)]) -> Result<Sites, String> {
        let (names, links) = five_servers();
        let mut config = HerdConfig::new(&names, &links)?;
        for directive in polled_directives()? {
            config = config.with(&directive);
        }
        // A loaded server writes its 64 MiB log several times over in a run: rotated, the
        // `link lagging` line the thin-link rows look for would be gone.
        config = config.with("log max-bytes 0");
        let shape = LinkShape {
            jitter: JITTER,
            seed: SEED,
            ..LinkShape::default()
        };
        let wan = Wan::lay_out(&mut config, &SITES, shape.with_buffer_bytes(WIDE_BUFFER))?;
        for &(a, b, ms) in &SITE_DELAY_MS {
            for relay in wan.between_sites(a, b) {
                relay.set_delay(Duration::from_millis(ms));
            }
        }
        for &(a, b) in thin {
            for relay in wan.between(a, b) {
                let capped = relay.shape().with_bytes_per_sec(THIN_BYTES_PER_SEC);
                relay.set_shape(capped.with_buffer_bytes(LinkShape::default().buffer_bytes));
            }
        }
        let fleet = Fleet::start_config(ctx, label, config)?;
        let origin = (fleet.names.iter().position(|n| n == ORIGIN)).ok_or("no Campbell")?;
        let site_of: Vec<usize> = fleet.names.iter().map(|n| wan.site(n)).collect();
        let path = path_delays(&fleet.links, &site_of, origin);
        Ok(Sites {
            fleet,
            wan,
            origin,
            path,
        })
    }

    fn others(&self) -> Vec<usize> {
        self.fleet.others(self.origin)
    }

    fn index(&self, name: &str) -> usize {
        self.fleet.names.iter().position(|n| n == name).unwrap_or(0)
    }

    /// `Bona (20 ms)`: a server and its path delay from the origin.
    fn label(&self, i: usize) -> String {
        format!("{} ({})", self.fleet.names[i], fmt_duration(self.path[i]))
    }

    /// Every server's peak RSS so far.
    fn peak_rss(&self) -> Vec<Option<u64>> {
        (self.fleet.pids.iter())
            .map(|p| p.and_then(peak_rss_bytes))
            .collect()
    }
}

fn site_delay(a: usize, b: usize) -> Duration {
    let ms = SITE_DELAY_MS
        .iter()
        .find(|&&(x, y, _)| (x, y) == (a, b) || (x, y) == (b, a))
        .map_or(0, |&(_, _, ms)| ms);
    Duration::from_millis(ms)
}

/// Per server, the least sum of one-way delays over herd links from `origin` (a link within a
/// site costs nothing), by relaxing every link as often as there are servers.
fn path_delays(links: &[(usize, usize)], site_of: &[usize], origin: usize) -> Vec<Duration> {
    let mut best: Vec<Option<Duration>> = vec![None; site_of.len()];
    best[origin] = Some(Duration::ZERO);
    for _ in 0..site_of.len() {
        for &(a, b) in links {
            for (from, to) in [(a, b), (b, a)] {
                let Some(at) = best[from] else { continue };
                let via = at + site_delay(site_of[from], site_of[to]);
                if best[to].is_none_or(|known| via < known) {
                    best[to] = Some(via);
                }
            }
        }
    }
    best.into_iter().map(Option::unwrap_or_default).collect()
}

pub fn run(ctx: &Ctx) -> Section {
    Section::new("12 sites", "five servers in three sites over a WAN").measured(|section| {
        if ctx.target.is_some() {
            return Err("sites starts its own herd behind WAN relays: not with --target".into());
        }
        let few = three_sites(ctx, section)?;
        thin_link(ctx, section, few)?;
        section.notes.push(format!(
            "Bailey+Campbell, Bona+Clark, Jaquez on 127.0.0.2-4; one way {} ms (jitter ±{} µs, seeded); relays between sites hold {} a direction, a thin link's 64 KiB; loads at Campbell C={CONNECTIONS} P={IN_FLIGHT}, warm-up {} ms (past `peer hold-ms`); staleness polled as in `staleness`, from the last IAMAT reply",
            SITE_DELAY_MS.map(|(a, b, ms)| format!("{}-{}: {ms}", a + 1, b + 1)).join(", "),
            JITTER.as_micros(),
            fmt_bytes(WIDE_BUFFER as f64),
            WARMUP.as_millis(),
        ));
        Ok(())
    })
}

/// One load at Campbell on started sites and the catch-up after it.
struct Run {
    sites: Sites,
    caught: Caught,
    /// Bytes a second Campbell's link to Jaquez carried over the load (warm-up included).
    far_link_bytes_per_sec: f64,
    /// Each server's peak RSS over its life, read after the catch-up.
    peak_rss: Vec<Option<u64>>,
}

/// Sites with `thin` capped, the links waited for, then `clients` updated by C=50 P=16 at
/// Campbell (closed loop) and every other server polled until current.
/// The servers are stopped at the end (their logs complete); the relays stay for their counts.
fn load_run(ctx: &Ctx, sites: Sites, clients: Clients) -> Result<Run, String> {
    let mut sites = sites;
    wait_for_links(ctx, &sites.fleet, sites.origin)?;
    let (addr, pid) = sites.fleet.server(sites.origin);
    let mut spec = LoadSpec::new(addr, CONNECTIONS, IN_FLIGHT, ctx.secs(5.0)).server(pid);
    spec.warmup = WARMUP;
    let carried = sites.wan.relay(ORIGIN, FAR).bytes_to_target();
    let caught = load_and_catch_up(ctx, &sites.fleet, sites.origin, clients, &spec)?;
    let bytes = sites.wan.relay(ORIGIN, FAR).bytes_to_target() - carried;
    let far_link_bytes_per_sec = bytes as f64 / (spec.warmup + caught.load.window).as_secs_f64();
    let peak_rss = sites.peak_rss();
    sites.fleet.terminate();
    Ok(Run {
        sites,
        caught,
        far_link_bytes_per_sec,
        peak_rss,
    })
}

/// Three sites, no cap: flood latency on the idle herd, then staleness after a saturating
/// load of 50 clients (the `staleness` scenario's). Returns the load's run, the uncapped
/// reference of the thin link's rows with the same load.
fn three_sites(ctx: &Ctx, section: &mut Section) -> Result<Run, String> {
    let sites = Sites::start(ctx, "sites", &[])?;
    section.rows.extend(flood_rows(ctx, &sites)?);
    let run = load_run(ctx, sites, Clients::Own)?;
    let label = "three sites: staleness after C=50 P=16 at Campbell, 50 clients";
    let others = run.sites.others();
    section
        .rows
        .push(staleness_row(label, &run, STALE_MARGIN, &others));
    section
        .rows
        .push(load_row("  the load, closed loop", &run.caught.load));
    section
        .rows
        .push(cpu_row(&run.sites.fleet.names, &run.caught.cpu));
    Ok(run)
}
/// Updates at Campbell on the idle herd: per other server, when it first answered WHATSAT for
/// each, beside its path delay.
fn flood_rows(ctx: &Ctx, sites: &Sites) -> Result<Vec<Row>, String> {
    let fleet = &sites.fleet;
    let others = sites.others();
    let addrs: Vec<SocketAddr> = others.iter().map(|&i| fleet.addrs[i]).collect();
    let names: Vec<String> = others.iter().map(|&i| fleet.names[i].clone()).collect();
    let mut flood = Flood::new(fleet.addrs[sites.origin], &addrs, &ctx.names, PACE)?;
    first_update(&mut flood, &names, Duration::from_secs(10))?;
    let mut times = vec![Histogram::default(); others.len()];
    let mut lost = 0u64;
    let (count, budget, started) = (ctx.count(300), ctx.secs(40.0), Instant::now());
    for _ in 0..count {
        if started.elapsed() >= budget {
            break;
        }
        let known = flood.sample("s", Duration::from_secs(2))?;
        lost += known.iter().any(Option::is_none) as u64;
        for (hist, time) in times.iter_mut().zip(&known) {
            if let Some(time) = time {
                hist.record(time.as_nanos() as u64);
            }
        }
    }
    let rows = others.iter().zip(&times).map(|(&i, hist)| {
        let (path, p99) = (sites.path[i], hist.percentile(0.99));
        let over = p99 as i64 - path.as_nanos() as i64;
        let result = format!(
            "{}, p99 {} the path (n={}, {lost} lost)",
            fmt_stats(hist, &[Stat::P50, Stat::P99, Stat::MAX], " "),
            signed_ms(over),
            hist.count()
        );
        Row::new(format!(
            "three sites: idle flood, Campbell -> {}",
            sites.label(i)
        ))
        .result(result)
        .figure("path_ns", path.as_nanos() as u64)
        .figure("lost", lost)
        .latency("", hist)
        .check(
            "p99 <= path + 2 ms",
            lost == 0 && p99 <= (path + FLOOD_MARGIN).as_nanos() as u64,
        )
    });
    Ok(rows.collect())
}

/// `+1.23 ms`, `-0.40 ms`.
fn signed_ms(ns: i64) -> String {
    format!("{:+.2} ms", ns as f64 / 1e6)
}

/// Each server's staleness after the load: per client (p50, max: when the round that first
/// found the client current ended, from the last IAMAT reply; late by at most the last
/// round's length, shown) beside its path; judged for `judged`: every client current within
/// the path delay plus `margin`.
fn staleness_row(config: &str, run: &Run, margin: Duration, judged: &[usize]) -> Row {
    let (sites, caught) = (&run.sites, &run.caught);
    let others = sites.others();
    let mut cells = Vec::new();
    let mut row = Row::new(config).figure("rate_per_s", caught.load.rate().round());
    let mut met =
        caught.load.errors == 0 && caught.load.unanswered == 0 && caught.caught.newer == 0;
    for (k, &i) in others.iter().enumerate() {
        let name = &sites.fleet.names[i];
        let per_client = &caught.caught.per_client[k];
        let cell = match caught.caught.caught[k] {
            Some(last) => format!(
                "{} p50 {} max {} (round {})",
                sites.label(i),
                fmt_ns(per_client.percentile(0.5)),
                fmt_duration(last),
                caught.caught.last_round[k].map_or("?".into(), fmt_duration)
            ),
            None => format!("{} {} stale", sites.label(i), caught.caught.stale[k]),
        };
        cells.push(cell);
        row = row.latency(&format!("{name}_per_client_"), per_client);
        let limit = sites.path[i] + margin;
        if judged.contains(&i) {
            met &= caught.caught.caught[k].is_some_and(|last| last <= limit);
        }
    }
    let goal = match judged {
        [one] => format!(
            "{} <= path + {} ms",
            sites.fleet.names[*one],
            margin.as_millis()
        ),
        _ => format!("each <= its path + {} ms", margin.as_millis()),
    };
    let result = format!(
        "per client: {}; {} clients",
        cells.join(", "),
        caught.polled.len()
    );
    row.result(result).check(goal, met)
}

/// The thin link, with the three-site load itself (50 clients, `few`: its uncapped run) and
/// with many clients: Campbell's link to Jaquez at 1 MB/s, and both links of Jaquez's site at
/// 1 MB/s (Jaquez then has no other way in).
fn thin_link(ctx: &Ctx, section: &mut Section, few: Run) -> Result<(), String> {
    let many = Clients::Cycling(ctx.count(THIN_CLIENTS).max(CONNECTIONS));
    let cases: [(&str, &[(&str, &str)]); 2] = [
        ("Campbell-Jaquez at 1 MB/s", &ONE_THIN),
        ("both links of Jaquez's site at 1 MB/s", &SITE_THIN),
    ];
    let mut runs = vec![few];
    for clients in [Clients::Own, many] {
        let uncapped = match clients {
            Clients::Own => 0,
            _ => {
                let sites = Sites::start(ctx, "sites-uncapped", &[])?;
                runs.push(load_run(ctx, sites, clients)?);
                runs.len() - 1
            }
        };
        section.rows.push(need_row(ctx, clients, &runs[uncapped]));
        // One record per client across the cap: what a lagging link must carry once the
        // load stops, however well it conflates.
        let floor = Duration::from_secs_f64(
            clients.count() as f64 * at_line_bytes(ctx, &runs[uncapped].caught.ids)
                / THIN_BYTES_PER_SEC as f64,
        );
        for (label, thin) in cases {
            let sites = Sites::start(ctx, &format!("sites-thin-{}", thin.len()), thin)?;
            let run = load_run(ctx, sites, clients)?;
            let lags = clients != Clients::Own;
            section
                .rows
                .push(rate_row(label, &run, &runs[uncapped], thin, lags));
            let far = [run.sites.index(FAR)];
            let row = match lags {
                false => staleness_row("  staleness after the load", &run, THIN_MARGIN, &far),
                true => staleness_row(
                    &format!(
                        "  staleness after the load (one record per client at the cap: {})",
                        fmt_duration(floor)
                    ),
                    &run,
                    floor + THIN_MARGIN,
                    &far,
                ),
            };
            section.rows.push(row);
            runs.push(run);
        }
    }
    section.rows.push(memory_row(&runs));
    Ok(())
}

/// The thin link's load uncapped: its IAMAT rate, and the bytes a second its updates need
/// (one AT line each) beside what Campbell's uncapped link to Jaquez carried (less when
/// records of a client updated again before they left were merged).
fn need_row(ctx: &Ctx, clients: Clients, uncapped: &Run) -> Row {
    let load = &uncapped.caught.load;
    let need = load.rate() * at_line_bytes(ctx, &uncapped.caught.ids);
    let carried = uncapped.far_link_bytes_per_sec;
    let config = format!(
        "thin link: C=50 P=16 closed loop, {}, uncapped",
        clients.label()
    );
    let mut row = load_row(config, load)
        .figure("update_bytes_per_s", need.round())
        .figure("far_link_bytes_per_s", carried.round());
    row.result += &format!(
        "; the updates need {}/s, {:.1}x the 1 MB/s cap; Campbell's link to Jaquez carried {}/s",
        fmt_bytes(need),
        need / THIN_BYTES_PER_SEC as f64,
        fmt_bytes(carried),
    );
    row
}

/// The mean length of the AT line a server floods for these clients: the IAMAT line with
/// `AT Campbell +0.000000000` in place of `IAMAT`.
fn at_line_bytes(ctx: &Ctx, ids: &[String]) -> f64 {
    let extra = format!("AT {ORIGIN} +0.000000000").len() - "IAMAT".len();
    let tick = ctx.names.now_tick();
    let total: usize = (ids.iter())
        .map(|id| ctx.names.iamat(id, tick).len() + extra)
        .sum();
    total as f64 / ids.len().max(1) as f64
}

/// The IAMAT rate at Campbell with links capped beside the uncapped run's, and the `link
/// lagging` lines of the servers that send over them, which must be there when `lags` (the
/// link cannot carry one record per client as fast as they change; with few clients it can,
/// and conflation alone keeps it current).
fn rate_row(label: &str, run: &Run, uncapped: &Run, thin: &[(&str, &str)], lags: bool) -> Row {
    let ratio = run.caught.load.rate() / uncapped.caught.load.rate().max(1.0);
    let senders: Vec<&str> = thin.iter().map(|&(from, _)| from).collect();
    let lagged: Vec<String> = (senders.iter())
        .flat_map(|name| log_events(&run.sites, name, &["link lagging", "link caught up"]))
        .collect();
    let mut row = load_row(format!("thin link: {label}"), &run.caught.load)
        .figure("ratio_to_uncapped", round3(ratio))
        .figure("lagging_lines", lagged.len())
        .check(
            format!(
                ">= 80% of uncapped (is {:.0}%){}",
                ratio * 100.0,
                if lags { ", `link lagging` logged" } else { "" }
            ),
            ratio >= 0.8 && (!lags || lagged.iter().any(|l| l.contains("link lagging"))),
        );
    let logged = match lagged.is_empty() {
        true => "no `link lagging`".to_string(),
        false => lagged.join(" / "),
    };
    row.result += &format!("; logs of {}: {logged}", senders.join(", "));
    row
}

/// The lines of `name`'s log that hold one of `events`, each from the event on and prefixed
/// with `name`, read a line at a time (a loaded server's log runs to hundreds of MiB).
fn log_events(sites: &Sites, name: &str, events: &[&str]) -> Vec<String> {
    let Some(dir) = &sites.fleet.log_dir else {
        return Vec::new();
    };
    let Ok(file) = fs::File::open(dir.join(format!("{name}.log"))) else {
        return Vec::new();
    };
    (BufReader::new(file).split(b'\n').map_while(Result::ok))
        .filter_map(|line| {
            let line = String::from_utf8_lossy(&line);
            let at = events.iter().filter_map(|e| line.find(e)).min()?;
            Some(format!("{name}: {}", &line[at..]))
        })
        .collect()
}

/// Each server's peak RSS in the three thin-link runs, what the relays held at most, and this
/// process's own peak (the load generator, the pollers and every relay).
/// Every server's peak RSS and the relays' peak held bytes over the thin-link runs, which come
/// in threes: uncapped, one link capped, the site's links capped.
fn memory_row(runs: &[Run]) -> Row {
    let mib = |b: Option<u64>| b.map_or("?".into(), |b| format!("{:.1}", b as f64 / 1048576.0));
    let names = &runs[0].sites.fleet.names;
    let mut row = Row::new("thin link: peak memory, uncapped / one link / site, by load");
    let mut cells = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let peaks: Vec<String> = (runs.chunks(3))
            .map(|three| {
                three
                    .iter()
                    .map(|r| mib(r.peak_rss[i]))
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        cells.push(format!("{name} {}", peaks.join(", ")));
        for (k, run) in runs.iter().enumerate() {
            if let Some(bytes) = run.peak_rss[i] {
                row = row.figure(&format!("peak_rss_bytes_{name}_{k}"), bytes);
            }
        }
    }
    let held = |run: &Run, thin: &[(&str, &str)]| -> usize {
        (thin.iter().flat_map(|&(a, b)| run.sites.wan.between(a, b)))
            .map(|r| r.peak_held_bytes())
            .max()
            .unwrap_or(0)
    };
    let thin = (runs.chunks(3))
        .filter_map(|three| {
            Some(held(three.get(1)?, &ONE_THIN).max(held(three.get(2)?, &SITE_THIN)))
        })
        .max()
        .unwrap_or(0);
    let widest = (runs.iter().flat_map(|r| r.sites.wan.links()))
        .map(|l| l.relay.peak_held_bytes())
        .max()
        .unwrap_or(0);
    let bounded = runs.chunks(3).all(|three| {
        (three[1..].iter())
            .flat_map(|r| r.peak_rss.iter().zip(&three[0].peak_rss))
            .all(|(p, u)| p.zip(*u).is_some_and(|(p, u)| p <= 2 * u))
    });
    let result = format!(
        "servers' peak RSS MiB: {}; capped relays held at most {}, any relay {}; bench process peak {} MiB",
        cells.join(", "),
        fmt_bytes(thin as f64),
        fmt_bytes(widest as f64),
        mib(own_peak_rss_bytes())
    );
    row.result(result)
        .figure("thin_relay_peak_held_bytes", thin)
        .figure("relay_peak_held_bytes", widest)
        .check(
            "each server <= 2x uncapped; a capped relay <= 64 KiB a direction",
            bounded && thin <= 2 * LinkShape::default().buffer_bytes,
        )
}
