//! `cargo bench`: herd's own load benches (no criterion). Parses the arguments by hand, runs the
//! chosen scenarios one after another against servers it starts on loopback (or against
//! `--target`), and prints the table, then writes the JSON and the SVG chart under
//! target/bench/. The measuring lives in the modules below; this file only orchestrates.
//!
//!     cargo bench --bench load -- [SCENARIO...] [--target ADDR|LIST|CONF] [--quick] [--shape CxP]

mod commands;
mod cpu;
mod herd;
mod hist;
mod load;
mod logscan;
mod report;
mod sample;
mod scenarios;
mod seed;
mod survey;
mod tls;
mod watch;

use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use herd_test_support::harness::herd_bin;

use crate::commands::Names;
use crate::report::{Report, Section};
use crate::scenarios::{Ctx, Target};

type Scenario = fn(&Ctx) -> Section;

/// Every scenario: its name on the command line and the function that runs it.
/// Scenarios left out of a run that names none: they take half an hour.
const RUN_WHEN_NAMED: [&str; 1] = ["nemesis"];

const SCENARIOS: [(&str, Scenario); 17] = [
    ("iamat", scenarios::iamat::run),
    ("flood", scenarios::flood::run),
    ("places", scenarios::places::run),
    ("conns", scenarios::conns::run),
    ("memory", scenarios::memory::run),
    ("bigherd", scenarios::bigherd::run),
    ("staleness", scenarios::staleness::run),
    ("whatsat", scenarios::whatsat::run),
    ("hostile", scenarios::hostile::run),
    ("store", scenarios::store::run),
    ("local", scenarios::local::run),
    ("sites", scenarios::sites::run),
    ("herd64", scenarios::bigherd::run_64),
    ("rejoin", scenarios::rejoin::run),
    ("grow", scenarios::grow::run),
    ("tls", scenarios::tls::run),
    ("nemesis", scenarios::nemesis::run),
];

const USAGE: &str = "\
usage: cargo bench --bench load -- [SCENARIO...] [--target ADDR|LIST|CONF] [--quick]
                                   [--shape CxP]... [--clients N] [--out DIR]

scenarios (default: all but nemesis, in this order):
  iamat    IAMAT rate and latency on one server, C x P, log lines on and off
  flood    flood latency in the five-server herd, idle and loaded; IAMAT rate in the herd
  places   WHATSAT with a slow Places; IAMAT latency while 200 WHATSATs wait
  conns    10,000 idle connections: all accepted? RSS per connection
  memory   RSS per client after 1,000,000 distinct clients
  bigherd  32 servers in a 4x8 grid: time until all know an update; peer messages
  staleness  five-server herd: how far behind the others are when IAMAT load at one stops
  whatsat  WHATSAT C=50 x P=16 with Places at 100/200 ms: distinct and repeated lookups,
           Places calls and connections per WHATSAT, RSS and threads; IAMAT beside
  hostile  2,000 connections pipelining WHATSATs that never read (Places at 200 ms): RSS,
           CPU, Places calls, log growth; a paced IAMAT probe beside; recovery after close
  store    IAMAT rate with no store, fsync everysec and always; start-up with 1,000,000
           clients in the store; store size against live records after compaction
  local    WHATSAT answered from the shipped world places (places api local), C=50 x P=16
           and P=1, log lines off and on; the memory the places take
  sites    five servers in three sites over a loopback WAN (20-40 ms): flood latency
           against the path's delay, staleness after load; one link at 1 MB/s: lags?
  herd64   64 servers in an 8x8 cylinder (degree 3-4, diameter 11): time until all know
           an update, peer messages per link per update, start-and-link time, RSS
  rejoin   five servers with stores, 1,000,000 clients: Bona killed, 10,000 updates taken,
           Bona restarted from its store (and from a wiped one): records and bytes on its
           links, time to current; bytes per second on an idle link (the digest check)
  grow     IAMATs from 10,000,000 distinct clients with a probe IAMAT every 1 ms beside:
           the probe's latency per million clients, RSS per client at the end
  tls      TLS against clear, same build, same run: IAMAT C=50 x P=1 and P=16 over a client
           TLS port vs the plain port; new connections/s (full handshakes); RSS per idle
           TLS connection; flood latency and staleness with `peer tls` vs links in clear;
           Redis's plain and TLS ports driven the same way when redis-server is installed

run only when named (half an hour):
  nemesis  the nemesis with its checker for 30 minutes (--quick: 2): kills, stops, cuts,
           blackholes, delays and SIGHUPs against the five-server herd over a loopback WAN;
           every acknowledged update must be held by every server at the end

options:
  --target HOST:PORT   measure a running server instead of starting one
  --target A,B,...     a running herd (flood, bigherd, herd64: the first is the origin;
                       staleness: Campbell, else the first)
  --target herd.conf   a running herd described by its config (servers, links, log dir)
  --quick              a quarter of the durations and counts (for development)
  --shape CxP          iamat: only C connections x P in flight (repeatable)
  --clients N          rejoin: N clients known before the fault (default 1,000,000);
                       grow: N clients (default 10,000,000)
  --out DIR            where to write the JSON and SVG (default: target/bench)
";

/// Scenario 4 needs this many descriptors in this process (9 and 16 about 2,300).
const NOFILE_WANTED: u64 = 10_300;

/// The scenarios that hold thousands of sockets: conns (4), hostile (9) and tls (16).
const MANY_SOCKETS: [&str; 3] = ["conns", "hostile", "tls"];

struct Args {
    scenarios: Vec<usize>,
    target: Option<String>,
    quick: bool,
    shapes: Vec<(usize, usize)>,
    clients: Option<u64>,
    out: Option<PathBuf>,
}

fn parse_args(argv: &[String]) -> Result<Option<Args>, String> {
    let mut args = Args {
        scenarios: Vec::new(),
        target: None,
        quick: false,
        shapes: Vec::new(),
        clients: None,
        out: None,
    };
    let mut words = argv.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            // cargo passes --bench to every bench target.
            "--bench" => {}
            "--help" | "-h" => return Ok(None),
            "--quick" => args.quick = true,
            "--target" => {
                let value = words.next().ok_or("--target needs a value")?;
                args.target = Some(value.clone());
            }
            "--shape" => {
                let value = words.next().ok_or("--shape needs CxP, e.g. 50x16")?;
                let shape = value
                    .split_once('x')
                    .and_then(|(c, p)| Some((c.parse().ok()?, p.parse().ok()?)))
                    .filter(|&(c, p)| c > 0 && p > 0)
                    .ok_or_else(|| format!("--shape {value}: expected CxP, e.g. 50x16"))?;
                args.shapes.push(shape);
            }
            "--clients" => {
                let value = words.next().ok_or("--clients needs a number")?;
                let clients = value
                    .replace(['_', ','], "")
                    .parse()
                    .ok()
                    .filter(|&n: &u64| n > 0)
                    .ok_or_else(|| format!("--clients {value}: expected a count, e.g. 200000"))?;
                args.clients = Some(clients);
            }
            "--out" => {
                let value = words.next().ok_or("--out needs a directory")?;
                args.out = Some(PathBuf::from(value));
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            name => match SCENARIOS.iter().position(|(n, _)| *n == name) {
                Some(i) if !args.scenarios.contains(&i) => args.scenarios.push(i),
                Some(_) => {}
                None => return Err(format!("unknown scenario '{name}'")),
            },
        }
    }
    if args.scenarios.is_empty() {
        args.scenarios = (0..SCENARIOS.len())
            .filter(|&i| !RUN_WHEN_NAMED.contains(&SCENARIOS[i].0))
            .collect();
    }
    args.scenarios.sort_unstable();
    Ok(Some(args))
}

/// Scenario 4 holds 10,000 sockets (9: 2,000): with a low soft limit, run again under a shell that raises
/// it (a process cannot raise its own limit without libc; the shell's `ulimit` can).
fn raise_nofile_or_continue(argv: &[String]) {
    const GUARD: &str = "HERD_BENCH_NOFILE_RAISED";
    let low = herd::nofile_limit().is_some_and(|n| n < NOFILE_WANTED);
    if !low || std::env::var_os(GUARD).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = Command::new("sh")
        .arg("-c")
        .arg(herd::RAISE_NOFILE)
        .arg(exe)
        .args(argv)
        .env(GUARD, "1")
        .exec();
    eprintln!("cannot re-run under a raised open-file limit: {error}");
}

/// target/bench beside the bench binary (target/release/deps/load-*).
fn default_out_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(|t| t.join("bench")))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"))
}

/// The command line as the user would type it (cargo's own `--bench` left out).
fn shown_command(argv: &[String]) -> String {
    let shown: Vec<&str> = argv
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    if shown.is_empty() {
        "cargo bench --bench load".to_string()
    } else {
        format!("cargo bench --bench load -- {}", shown.join(" "))
    }
}

/// Runs the chosen scenarios one after another, saying on stderr when each starts.
fn run_scenarios(ctx: &Ctx, chosen: &[usize]) -> Vec<Section> {
    let started = Instant::now();
    let mut sections = Vec::new();
    for &i in chosen {
        let (name, scenario) = SCENARIOS[i];
        eprintln!("[{:6.1} s] {name} ...", started.elapsed().as_secs_f64());
        // Server guards are dropped while the panic unwinds, so nothing is left running.
        let section = panic::catch_unwind(AssertUnwindSafe(|| scenario(ctx)))
            .unwrap_or_else(|_| Section::new("?", name).unavailable("the scenario panicked"));
        sections.push(section);
    }
    eprintln!("[{:6.1} s] done", started.elapsed().as_secs_f64());
    sections
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("load bench: {why}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let target = match args.target.as_deref().map(Target::parse).transpose() {
        Ok(target) => target,
        Err(why) => {
            eprintln!("load bench: {why}");
            return ExitCode::from(2);
        }
    };
    if args
        .scenarios
        .iter()
        .any(|&i| MANY_SOCKETS.contains(&SCENARIOS[i].0))
    {
        raise_nofile_or_continue(&argv);
    }

    let ctx = Ctx {
        bin: herd_bin(),
        target,
        quick: args.quick,
        shapes: args.shapes.clone(),
        clients: args.clients,
        names: Names::new(),
    };
    let report = Report {
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        command: shown_command(&argv),
        argv: std::env::args().collect::<Vec<_>>().join(" "),
        binary: ctx.bin.display().to_string(),
        target: args.target.clone(),
        sections: run_scenarios(&ctx, &args.scenarios),
    };

    println!("{}", report.table());
    let out = args.out.unwrap_or_else(default_out_dir);
    match report.write_files(&out) {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("load bench: {why}");
            ExitCode::FAILURE
        }
    }
}
