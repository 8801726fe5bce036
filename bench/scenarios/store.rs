//! Scenario 10: what the store costs and how fast it comes back (`store dir`).
//!
//! - IAMAT/s on one server with the default config and no store, `store fsync everysec` and
//!   `store fsync always`, C=50 at P=1 and P=16, each run on a fresh server: three rounds of
//!   the three modes (order rotating), the median of each mode reported, so the machine's
//!   drift hits all three alike. Every IAMAT is a real update, so the store
//!   grows by every reply (and compacts past 64 MiB, inside the measured window).
//! - Start-up: a store of 1,000,000 clients written by hand, as a compaction leaves it (one
//!   line each) and as it is at worst before the next (two lines each, half of them stale),
//!   then the time from spawn to the port accepting, and the server's own `in T ms` for the
//!   read.
//! - Compaction: 1,600 clients updated until the store has compacted at least once, with
//!   `store compact-bytes 4096`: the store's size against its live records (the newest line of
//!   each client), right after the last compaction and at the end.

use std::fs;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use crate::commands::IamatLoad;
use crate::herd::{Herd, HerdConfig};
use crate::load::{run_load, LoadReport, LoadSpec};
use crate::report::{fmt_bytes, fmt_rate, Row, Section};
use crate::scenarios::{iamat_load, load_row, Ctx, Subject};

const SHAPES: [(usize, usize); 2] = [(50, 1), (50, 16)];
const MODES: [(&str, &[&str]); 3] = [
    ("no store", &[]),
    ("everysec", &["store dir store", "store fsync everysec"]),
    ("always", &["store dir store", "store fsync always"]),
];
const STARTUP_CLIENTS: u64 = 1_000_000;
/// Runs of each mode per shape; the median is reported.
const ROUNDS: usize = 3;

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("10 store", "the store: throughput, start-up, compaction");
    if ctx.target.is_some() {
        return section.unavailable("measures servers of its own; --target does not apply");
    }
    for shape in SHAPES {
        match throughput(ctx, shape) {
            Ok(rows) => section.rows.extend(rows),
            Err(why) => return section.unavailable(why),
        }
    }
    for lines_per_client in [1, 2] {
        match startup(ctx, lines_per_client) {
            Ok(row) => section.rows.push(row),
            Err(why) => section
                .rows
                .push(Row::new("start-up").result(format!("unavailable: {why}"))),
        }
    }
    match compaction(ctx) {
        Ok(row) => section.rows.push(row),
        Err(why) => section
            .rows
            .push(Row::new("compaction").result(format!("unavailable: {why}"))),
    }
    section
}

/// The three modes at one C x P: rounds of all three, the order rotating, and a row per mode
/// with the median of its runs. On a shared 2-core machine one run of a few seconds can be 30%
/// off the next.
fn throughput(ctx: &Ctx, (connections, in_flight): (usize, usize)) -> Result<Vec<Row>, String> {
    let mut runs: Vec<Vec<LoadReport>> = MODES.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for turn in 0..MODES.len() {
            let m = (turn + round) % MODES.len();
            let (mode, directives) = MODES[m];
            let subject = Subject::start(ctx, "store", directives)?;
            let load = iamat_load(ctx, subject.server(), (connections, in_flight), 3.0, None)
                .map_err(|why| format!("C={connections} P={in_flight} {mode}: {why}"))?;
            runs[m].push(load);
        }
    }
    let medians: Vec<(Vec<f64>, LoadReport)> = runs
        .into_iter()
        .map(|mut loads| {
            loads.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            let rates: Vec<f64> = loads.iter().map(LoadReport::rate).collect();
            let median = loads.swap_remove(loads.len() / 2);
            (rates, median)
        })
        .collect();
    let unset = medians[0].1.rate();
    let rows = MODES
        .iter()
        .zip(&medians)
        .map(|((mode, _), (rates, load))| {
            let config = format!("C={connections} P={in_flight} {mode}");
            let all: Vec<String> = rates.iter().map(|r| fmt_rate(*r)).collect();
            let mut row = load_row(&config, load)
                .figure("connections", connections)
                .figure("in_flight", in_flight)
                .figure("store", *mode)
                .figure(
                    "rates_per_s",
                    rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
                );
            row.result = format!("{}  (median of {})", row.result, all.join(", "));
            let ratio = load.rate() / unset;
            if *mode != "no store" {
                row = row.figure("ratio_to_no_store", (ratio * 1000.0).round() / 1000.0);
            }
            if *mode == "everysec" {
                row = row.check(
                    format!(">= 90% of no store ({:.0}%)", ratio * 100.0),
                    ratio >= 0.9,
                );
            }
            row
        });
    Ok(rows.collect())
}

/// An AT line as a server makes it, for client `n` at second `secs`.
fn at_line(out: &mut impl Write, n: u64, secs: u64) -> std::io::Result<()> {
    writeln!(
        out,
        "AT Bench +0.000123456 client{n}.startup.bench +34.068930-118.445127 {secs}.000000001"
    )
}

fn startup(ctx: &Ctx, lines_per_client: u64) -> Result<Row, String> {
    let clients = ctx.count(STARTUP_CLIENTS as usize) as u64;
    let config = HerdConfig::single("Bench")?.with("store dir store");
    let mut herd = Herd::new(&ctx.bin, config, "store-startup")?;
    herd.raise_nofile = true;
    let dir = herd.dir.path().join("store");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("Bench.store");
    let file = fs::File::create(&path).map_err(|e| e.to_string())?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    // A second line of each client is stale and comes last: the read must apply the rule,
    // not the order.
    for secs in [1_700_000_100, 1_700_000_000]
        .into_iter()
        .take(lines_per_client as usize)
    {
        for n in 0..clients {
            at_line(&mut out, n, secs).map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    let bytes = fs::metadata(&path).map_err(|e| e.to_string())?.len();
    let started = Instant::now();
    herd.start_server(0)?;
    let to_listening = started.elapsed();
    // The server's own figure, once its log is flushed (within a second).
    let mut read_ms = None;
    let deadline = Instant::now() + Duration::from_secs(3);
    while read_ms.is_none() && Instant::now() < deadline {
        let log = fs::read_to_string(herd.log_path(0)).unwrap_or_default();
        read_ms = log
            .lines()
            .find(|l| l.contains("clients from"))
            .and_then(|l| l.split(" in ").nth(1))
            .and_then(|rest| rest.split(" ms").next())
            .and_then(|ms| ms.trim().parse::<u64>().ok());
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss = herd.pid(0).and_then(crate::herd::rss_bytes);
    let mut result = format!(
        "{clients} clients ({} lines, {}): listening {} ms after spawn",
        clients * lines_per_client,
        fmt_bytes(bytes as f64),
        to_listening.as_millis()
    );
    if let Some(ms) = read_ms {
        result += &format!(", read in {ms} ms");
    }
    if let Some(rss) = rss {
        result += &format!(", RSS {}", fmt_bytes(rss as f64));
    }
    let shape = match lines_per_client {
        1 => "compacted",
        _ => "2 lines each",
    };
    let mut row = Row::new(format!("start-up, {clients} clients, {shape}"))
        .result(result)
        .figure("clients", clients)
        .figure("store_bytes", bytes)
        .figure("to_listening_ms", to_listening.as_millis() as u64);
    if let Some(ms) = read_ms {
        row = row.figure("read_ms", ms);
    }
    if clients == STARTUP_CLIENTS {
        row = row.check(
            "<= 2 s to listening",
            to_listening <= Duration::from_secs(2),
        );
    }
    herd.terminate();
    Ok(row)
}

fn compaction(ctx: &Ctx) -> Result<Row, String> {
    let connections = 16;
    let subject = Subject::start(
        ctx,
        "store-compact",
        &[
            "store dir store",
            "store compact-bytes 4096",
            "log lines off",
        ],
    )?;
    let Subject::Own(herd) = &subject else {
        return Err("needs a server of its own".into());
    };
    let spec = LoadSpec::new(subject.addr(), connections, 16, ctx.secs(4.0)).server(subject.pid());
    let load = run_load(&spec, &mut IamatLoad::cycling(&ctx.names, connections))?;
    let path = herd.dir.path().join("store/Bench.store");
    let log_path = herd.log_path(0);
    // The compaction that follows the load's last updates: wait for the log to settle.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut compactions = 0;
    loop {
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let now = log.matches("compacted to").count();
        let compacting = log.matches("compacting ").count();
        if now == compacting && now > 0 && now == compactions {
            break;
        }
        compactions = now;
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let text = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let live = live_bytes(&text);
    let ratio = text.len() as f64 / live.max(1) as f64;
    let result = format!(
        "{} updates of {} clients at {}: {compactions} compactions, store {} for {} live \
         ({ratio:.2}x)",
        load.completed,
        live_clients(&text),
        fmt_rate(load.rate()),
        fmt_bytes(text.len() as f64),
        fmt_bytes(live as f64)
    );
    Ok(Row::new("compaction, store compact-bytes 4096")
        .result(result)
        .figure("updates", load.completed)
        .figure("compactions", compactions)
        .figure("store_bytes", text.len())
        .figure("live_bytes", live)
        .figure("ratio", (ratio * 100.0).round() / 100.0)
        .check("store <= 2x live", ratio <= 2.0))
}

fn live_clients(store: &[u8]) -> usize {
    let clients: std::collections::HashSet<&[u8]> = store
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(3))
        .collect();
    clients.len()
}

/// The bytes of the newest line of each client in a store (what a compaction leaves). The
/// bench's clients only move forward in time, so the last line of a client is its newest.
fn live_bytes(store: &[u8]) -> usize {
    let mut newest = std::collections::HashMap::new();
    for line in store.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let client = line.split(|&b| b == b' ').nth(3).unwrap_or_default();
        newest.insert(client, line.len() + 1);
    }
    newest.values().sum()
}
