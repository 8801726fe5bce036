//! Scenario 9: hostile clients. One server with its default settings (only `places url` at the
//! tests' fake Places, answering after 200 ms, and `places api new`; `log lines` on), 2,000
//! clients made known first. Then 2,000 attacker connections each write as many distinct
//! WHATSATs as their socket takes and never read, for 30 s, while one probe connection sends
//! paced IAMATs (200/s, C=1 P=1, timed from when each was due). The server's RSS, CPU and
//! threads, and the kernel's TCP memory, are read every 100 ms; the fake counts the Places
//! calls. Then every attacker is closed at once: how long until a new client's IAMAT is
//! answered, and the server's RSS 5 s later.

mod attack;
mod probe;
mod readings;
mod rows;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use herd_test_support::fake_places::FakePlaces;

use crate::cpu::{CpuMark, CpuShares};
use crate::herd::{need_open_files, rss_bytes, thread_count};
use crate::report::Section;
use crate::scenarios::{Ctx, Subject};
use crate::seed::{seed, Locations};
use attack::{attack, connect_attackers, Attack, Attacker};
use probe::{first_answer, probe, Probe};
use readings::{sample_server, socket_queues, Queues, Sample};

const ATTACKERS: usize = 2_000;
/// Clients made known first, each at its own location; the attackers' WHATSATs name them in
/// turn, each round with a radius one metre larger, so no two WHATSATs are the same lookup.
const CLIENTS: usize = 2_000;
/// Radii from 1.000 km in 1 m steps: CLIENTS x RADII distinct lookups before any repeats.
const RADII: u64 = 49_000;
/// The most results a WHATSAT may ask for: the largest reply per command.
const BOUND: u32 = 20;
const PLACES_DELAY: Duration = Duration::from_millis(200);
const ATTACK_SECS: f64 = 30.0;
/// A bound on what one attacker writes (the kernel takes far less while the server holds off).
const MAX_LINES_PER_ATTACKER: u64 = 200_000;
const PROBE_RATE: f64 = 200.0;
/// A probe IAMAT not answered this long after its write is an error (the connection is then
/// closed and a new one opened for the next).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_PROBE_SECS: f64 = 2.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long after the close the RSS is read.
const AFTER_CLOSE: Duration = Duration::from_secs(5);
/// How long a new client keeps trying to be answered after the close.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(90);
const TARGET_RSS: u64 = 300 * 1024 * 1024;
const TARGET_P99: u64 = 10_000_000;
const PAGE: u64 = 4096;

pub fn run(ctx: &Ctx) -> Section {
    let section = Section::new("9 hostile", "non-reading WHATSAT pipeliners");
    if ctx.target.is_some() {
        return section.unavailable(
            "needs a server of its own: the fake Places' delay and call count are the measurement",
        );
    }
    section.measured(|section| {
        measure(ctx, section)?;
        rows::add_notes(section);
        Ok(())
    })
}

fn in_flight_limit() -> usize {
    herd::config::Limits::default().max_in_flight
}

/// The server under attack and what counts its work: the fake's calls and its log file.
struct Server<'a> {
    addr: std::net::SocketAddr,
    pid: u32,
    log: &'a Path,
    fake: &'a FakePlaces,
}

impl Server<'_> {
    fn mark(&self) -> Mark {
        Mark::take(self.fake, self.log, self.pid)
    }
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    need_open_files(ATTACKERS as u64 + 1_000)?;
    let fake = FakePlaces::start();
    fake.set_delay(PLACES_DELAY);
    let places = format!("places url {}", fake.new_api_url());
    let subject = Subject::start(ctx, "hostile", &[&places, "places api new"])?;
    let Subject::Own(herd) = &subject else {
        return Err("needs a server of its own".into());
    };
    let log = herd.log_path(0);
    let server = Server {
        addr: subject.addr(),
        pid: subject.pid().ok_or("the server's pid is unknown")?,
        log: &log,
        fake: &fake,
    };
    let clients: Vec<String> = (0..CLIENTS as u64)
        .map(|i| ctx.names.client("h", i))
        .collect();
    seed(&ctx.names, server.addr, &clients, Locations::Distinct)?;

    let idle_probe = probe(
        server.addr,
        &ctx.names,
        Instant::now() + ctx.secs(IDLE_PROBE_SECS),
    );
    // The log is flushed at least every 250 ms: let the seeding's lines reach the file.
    thread::sleep(Duration::from_millis(400));
    let rss_idle = rss_bytes(server.pid).ok_or("cannot read the server's RSS")?;
    let threads_idle = thread_count(server.pid).unwrap_or(0);

    let connecting = Instant::now();
    let attackers = connect_attackers(server.addr)?;
    let setting = Setting {
        window: ctx.secs(ATTACK_SECS),
        connect_time: connecting.elapsed(),
        rss_idle,
        threads_idle,
    };
    let outcome = attack_then_close(ctx, &server, attackers, &clients, setting.window)?;
    rows::push_rows(section, &setting, &idle_probe, &outcome);
    Ok(())
}

/// The attack for `window` with the probe and the sampler beside it, then every attacker
/// closed at once, a new client's first answer timed, and the server read `AFTER_CLOSE` later.
fn attack_then_close(
    ctx: &Ctx,
    server: &Server,
    mut attackers: Vec<Attacker>,
    clients: &[String],
    window: Duration,
) -> Result<Outcome, String> {
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let until = start + window;
    let before = server.mark();
    thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_server(server.pid, start, &stop));
        let prober = scope.spawn(|| probe(server.addr, &ctx.names, until));
        let attack = attack(&mut attackers, clients, start, until);
        let during = server.mark();
        let attack_end = start.elapsed();
        let queues = socket_queues(server.addr.port());
        // The probe's last command may still wait (at most PROBE_TIMEOUT).
        let probe = prober.join();

        // Close every attacker at once, then time a new client's first answer.
        let closing = Instant::now();
        drop(std::mem::take(&mut attackers));
        let closed = Instant::now();
        let closed_mark = server.mark();
        let (recovery, attempts) = first_answer(server.addr, &ctx.names, closed);
        thread::sleep((closed + AFTER_CLOSE).saturating_duration_since(Instant::now()));
        let rss_after = rss_bytes(server.pid);
        let after = server.mark();
        stop.store(true, Ordering::Relaxed);
        Ok(Outcome {
            attack: attack?,
            probe: probe.map_err(|_| "the probe panicked".to_string())?,
            samples: sampler.join().unwrap_or_default(),
            attack_end,
            queues,
            after_start: closed.duration_since(start),
            before,
            during,
            closed: closed_mark,
            after,
            close_time: closed - closing,
            recovery,
            attempts,
            rss_after,
        })
    })
}

/// Everything measured from the attack on.
struct Outcome {
    attack: Attack,
    probe: Probe,
    samples: Vec<Sample>,
    attack_end: Duration,
    queues: Option<Queues>,
    /// When the close ended, from the attack's start.
    after_start: Duration,
    /// Marks at the attack's start and end, when the attackers were closed, and after.
    before: Mark,
    during: Mark,
    closed: Mark,
    after: Mark,
    close_time: Duration,
    recovery: Option<Duration>,
    attempts: u32,
    rss_after: Option<u64>,
}

/// What was read before the attack.
struct Setting {
    window: Duration,
    connect_time: Duration,
    rss_idle: u64,
    threads_idle: u64,
}

/// Readings at one moment: the fake's calls, the log's size, CPU of the server, the bench and
/// the machine.
struct Mark {
    at: Instant,
    calls: usize,
    log: u64,
    cpu: CpuMark,
}

impl Mark {
    fn take(fake: &FakePlaces, log: &Path, pid: u32) -> Mark {
        Mark {
            at: Instant::now(),
            calls: fake.request_count(),
            log: fs::metadata(log).map_or(0, |m| m.len()),
            cpu: CpuMark::take(&[Some(pid)]),
        }
    }

    fn secs_to(&self, later: &Mark) -> f64 {
        later.at.duration_since(self.at).as_secs_f64().max(1e-9)
    }

    /// Shares of one core used between the marks: the server, the bench, everything else.
    fn cpu_to(&self, later: &Mark) -> CpuShares {
        self.cpu.shares(&later.cpu)
    }
}
