//! Scenario 11: WHATSAT answered from the places file (`places api local`), with the world
//! places herd ships (src/places/world/world-places.csv.gz). One server; 20,000 distinct
//! clients made known first, each near a place of the file (so a search finds places), then
//! WHATSAT closed loop, every command about the next client in turn (radius 10 km, bound 5):
//! C=50 x P=16 and C=50 x P=1, with `log lines off` and with the default `log lines on`. Then
//! the memory the file takes: the RSS of an idle server that loaded it minus that of an idle
//! server without it, and how long the load took (from the server's log). A fresh server for
//! every row.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use herd_test_support::harness::poll;

use crate::commands::WhatsatLoad;
use crate::herd::rss_bytes;
use crate::load::{run_load, LoadReport, LoadSpec};
use crate::report::{fmt_bytes, fmt_count, Row, Section};
use crate::scenarios::{load_row, Ctx, Subject};
use crate::seed::seed_at;

const CLIENTS: usize = 20_000;
const CONNECTIONS: usize = 50;
const WINDOW_SECS: f64 = 4.0;
const TARGET_RATE: f64 = 100_000.0;
const TARGET_P99_NS: u64 = 2_000_000;
const TARGET_MEMORY: f64 = 64.0 * 1024.0 * 1024.0;

/// The world places herd ships, as the shipped herd.conf names them.
fn world_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/places/world/world-places.csv.gz")
}

pub fn run(ctx: &Ctx) -> Section {
    Section::new("11 local", "WHATSAT from the places file").measured(|section| {
        let clients = client_locations(ctx, ctx.count(CLIENTS))?;
        let modes: &[(&str, bool)] = if ctx.target.is_some() {
            &[("target", true)]
        } else {
            &[("log off", false), ("log on", true)]
        };
        for &(mode, log_lines) in modes {
            for in_flight in [16, 1] {
                let load = whatsat_load(ctx, &clients, in_flight, log_lines)?;
                section.rows.push(judge(ctx, mode, in_flight, &load));
            }
        }
        if ctx.target.is_none() {
            section.rows.push(memory_row(ctx)?);
        }
        add_notes(ctx, section, clients.len());
        Ok(())
    })
}

fn add_notes(ctx: &Ctx, section: &mut Section, clients: usize) {
    section.notes.extend([
        format!(
            "{} clients, each within about 1 km of every {}th place of the world file, made \
             known first; then every WHATSAT names the next client in turn: `WHATSAT client 10 5`",
            fmt_count(clients as u64),
            places_step(clients)
        ),
        "memory: VmRSS of an idle server that loaded the world file minus that of an idle \
         server without a places file (both fresh, 300 ms after they listen); the load time is \
         the one the server logs (`places file ... read in N ms`)"
            .to_string(),
    ]);
    if ctx.target.is_some() {
        section.notes.push(
            "with --target the server's own config applies (give it `places api local`); the \
             memory row needs servers of its own"
                .to_string(),
        );
    }
}

/// A server answering from the world file, `clients` made known to it, then WHATSAT at
/// C=50 x `in_flight`.
fn whatsat_load(
    ctx: &Ctx,
    clients: &[(String, String)],
    in_flight: usize,
    log_lines: bool,
) -> Result<LoadReport, String> {
    let file = format!("places file {}", world_file().display());
    let mut directives = vec!["places api local", file.as_str()];
    if !log_lines {
        directives.push("log lines off");
    }
    let subject = Subject::start(ctx, "local", &directives)?;
    let placed: Vec<(&str, String)> = clients
        .iter()
        .map(|(client, location)| (client.as_str(), location.clone()))
        .collect();
    seed_at(&ctx.names, subject.addr(), &placed)?;
    let names: Vec<String> = clients.iter().map(|(client, _)| client.clone()).collect();
    let (addr, pid) = subject.server();
    let spec = LoadSpec::new(addr, CONNECTIONS, in_flight, ctx.secs(WINDOW_SECS)).server(pid);
    run_load(&spec, &mut WhatsatLoad::rotating(&names))
}

fn judge(ctx: &Ctx, mode: &str, in_flight: usize, load: &LoadReport) -> Row {
    let config = format!("C={CONNECTIONS} P={in_flight} {mode}, distinct clients");
    let row = load_row(config, load)
        .figure("connections", CONNECTIONS)
        .figure("in_flight", in_flight)
        .figure("log_lines", mode);
    let rate = load.rate();
    let p99 = load.latency.percentile(0.99);
    let judged_rate = in_flight == 16 && (mode == "log off" || ctx.target.is_some());
    let judged_p99 = in_flight == 1 && (mode == "log on" || ctx.target.is_some());
    if judged_rate {
        row.check(
            format!(">= 100,000/s (is {rate:.0}/s)"),
            rate >= TARGET_RATE,
        )
    } else if judged_p99 {
        row.check(
            format!("p99 <= 2 ms (is {:.2} ms)", p99 as f64 / 1e6),
            p99 <= TARGET_P99_NS,
        )
    } else {
        row
    }
}

/// RSS of an idle server with the world file loaded against one without it.
fn memory_row(ctx: &Ctx) -> Result<Row, String> {
    let file = format!("places file {}", world_file().display());
    let (with, took_ms) = {
        let subject = Subject::start(ctx, "local-memory", &["places api local", &file])?;
        thread::sleep(Duration::from_millis(300));
        let rss = subject
            .pid()
            .and_then(rss_bytes)
            .ok_or("cannot read the RSS of the server with the places file")?;
        (rss, logged_load_ms(&subject))
    };
    let without = {
        let subject = Subject::start(ctx, "local-memory", &[])?;
        thread::sleep(Duration::from_millis(300));
        subject
            .pid()
            .and_then(rss_bytes)
            .ok_or("cannot read the RSS of the server without a places file")?
    };
    let taken = with as f64 - without as f64;
    let mut result = format!(
        "RSS {} with the world file, {} without: {} for the places",
        fmt_bytes(with as f64),
        fmt_bytes(without as f64),
        fmt_bytes(taken)
    );
    if let Some(ms) = took_ms {
        result += &format!("; read in {ms} ms");
    }
    Ok(Row::new("memory of the world file, idle servers")
        .result(result)
        .figure("rss_with_bytes", with)
        .figure("rss_without_bytes", without)
        .figure("places_bytes", taken.round())
        .figure("load_ms", took_ms)
        .check(
            format!("<= 64 MiB (is {})", fmt_bytes(taken)),
            taken <= TARGET_MEMORY,
        ))
}

/// The `read in N ms` of the server's `places file` log line, once the log has it (the
/// server flushes its log every 250 ms; at most 2 s).
fn logged_load_ms(subject: &Subject) -> Option<u64> {
    let Subject::Own(herd) = subject else {
        return None;
    };
    let read = || {
        let log = std::fs::read_to_string(herd.log_path(0)).ok()?;
        let line = log.lines().find(|l| l.contains("places file "))?;
        let (_, after) = line.rsplit_once(" read in ")?;
        after.strip_suffix(" ms")?.parse().ok()
    };
    poll(Duration::from_secs(2), read).ok()
}

/// How many places of the file lie between two clients' places.
fn places_step(clients: usize) -> usize {
    // The world file holds about 171,000 places.
    (171_000 / clients.max(1)).max(1)
}

/// `count` clients, each within about a kilometre of a place of the world file, every
/// `places_step`th one: (client id, ISO 6709 location).
fn client_locations(ctx: &Ctx, count: usize) -> Result<Vec<(String, String)>, String> {
    let path = world_file();
    let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = BufReader::new(MultiGzDecoder::new(file)).lines();
    let header = lines
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| format!("{}: no header", path.display()))?;
    let column = |name: &str| {
        split_csv(&header)
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| format!("{}: no {name} column", path.display()))
    };
    let (lat, lon) = (column("lat")?, column("lon")?);
    let step = places_step(count);
    let mut clients = Vec::with_capacity(count);
    for (n, line) in lines.step_by(step).enumerate() {
        if clients.len() == count {
            break;
        }
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        let fields = split_csv(&line);
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let (Some(latitude), Some(longitude)) = (number(lat), number(lon)) else {
            continue;
        };
        // Up to 0.005 degrees off (about 500 m north-south), the same every run.
        let offset = |k: usize| ((n * k) % 101) as f64 / 100.0 * 0.01 - 0.005;
        let latitude = (latitude + offset(37)).clamp(-90.0, 90.0);
        let longitude = (longitude + offset(53)).clamp(-180.0, 180.0);
        clients.push((
            ctx.names.client("local", n as u64),
            format!("{latitude:+.6}{longitude:+.6}"),
        ));
    }
    Ok(clients)
}

/// The fields of one CSV line (quotes as the world file writes them: `"a, b"`, `""`).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}
