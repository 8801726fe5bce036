//! Scenario 8: WHATSAT at scale. One server with its default Places settings (only `places url`
//! at the tests' fake Places and `places api new`), the fake answering after 100 ms and after
//! 200 ms, driven closed loop at C=50 x P=16 of WHATSAT: (a) distinct lookups, every WHATSAT
//! about the next of 20,000 clients at locations far apart; (b) one lookup repeated, every
//! WHATSAT about the same client. Per row: WHATSAT rate and latency, Places calls and new
//! Places connections per WHATSAT (the fake's counts), the server's RSS and threads before and
//! during the load; beside (a) at 200 ms, IAMAT latency on one more connection against the same
//! IAMAT load on the idle server. A fresh server and fake for every row, so no lookup queued by
//! one row is still being made in the next.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use herd_test_support::fake_places::FakePlaces;

use crate::commands::{IamatLoad, WhatsatLoad};
use crate::herd::{rss_bytes, thread_count};
use crate::load::{run_load, LoadReport, LoadSpec};
use crate::report::{fmt_bytes, fmt_count, fmt_ns, Row, Section};
use crate::sample::sample_until;
use crate::scenarios::{load_row, p99_ratio, round3, Ctx, Subject};
use crate::seed::{seed, Locations};

const DELAYS: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(200)];
/// The delay the targets are judged at.
const JUDGED_DELAY: Duration = Duration::from_millis(200);
/// (a)'s clients: many more than the 800 WHATSATs in flight, so none is asked about twice
/// while an earlier lookup of it may still be outstanding.
const CLIENTS: usize = 20_000;
const CONNECTIONS: usize = 50;
const IN_FLIGHT: usize = 16;
const WINDOW_SECS: f64 = 5.0;
const TARGET_DISTINCT_RATE: f64 = 800.0;
const TARGET_REPEATED_RATE: f64 = 20_000.0;
const TARGET_RSS_PER_THREAD: f64 = 128.0 * 1024.0;
/// How often RSS and threads are read during a load.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookups {
    /// (a): every WHATSAT about the next client in turn.
    Distinct,
    /// (b): every WHATSAT about one client.
    Repeated,
}

impl Lookups {
    fn label(self) -> &'static str {
        match self {
            Lookups::Distinct => "distinct",
            Lookups::Repeated => "repeated",
        }
    }
}

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("8 whatsat", "WHATSAT at scale");
    if ctx.target.is_some() {
        return section.unavailable(
            "needs servers of its own: the fake Places' delays and counts are the measurement",
        );
    }
    for delay in DELAYS {
        for lookups in [Lookups::Distinct, Lookups::Repeated] {
            if let Err(why) = measure(ctx, delay, lookups, &mut section) {
                return section.unavailable(why);
            }
        }
    }
    add_notes(ctx, &mut section);
    section
}

fn add_notes(ctx: &Ctx, section: &mut Section) {
    section.notes.extend([
        "the server runs its default Places settings (workers, queue, timeout, HTTP agent); \
         only `places url` (the fake) and `places api new` are set"
            .to_string(),
        format!(
            "(a): {} clients made known first, each at its own location (>= 0.8 degrees apart), \
             then every WHATSAT names the next one in turn; (b): every WHATSAT names one client",
            fmt_count(ctx.count(CLIENTS) as u64)
        ),
        "latency: every WHATSAT answered in the run (no warm-up, drain 2 s), timed from its \
         write; those still waiting when the drain ended are counted as unanswered, not timed"
            .to_string(),
        "calls and new conns per WHATSAT: the fake's requests read and connections accepted \
         over the whole run / WHATSATs answered in it; RSS and threads: /proc/PID/status idle \
         (just before the load) and the peak during it (read every 50 ms); RSS per busy worker \
         thread = (RSS during - idle) / (threads during - idle), n/a when the load adds no \
         thread; the growth also holds the 50 connections and the lookups queued, so with few \
         threads added the estimate is mostly those"
            .to_string(),
        format!(
            "(b)'s Places calls are judged against the default `places cache-ms` ({} ms): at \
             most one call per cache period begun in the run",
            cache_period().as_millis()
        ),
        "error JSON: complete replies whose JSON is `{\"error\": ...}`; every reply is checked \
         for AT line, JSON object and empty line (malformed ones are shown)"
            .to_string(),
    ]);
}

/// What /proc says of the server: RSS and threads.
#[derive(Clone, Copy, Default)]
struct ProcMark {
    rss: u64,
    threads: u64,
}

impl ProcMark {
    fn read(pid: u32) -> Option<ProcMark> {
        Some(ProcMark {
            rss: rss_bytes(pid)?,
            threads: thread_count(pid)?,
        })
    }

    fn max(self, other: ProcMark) -> ProcMark {
        ProcMark {
            rss: self.rss.max(other.rss),
            threads: self.threads.max(other.threads),
        }
    }
}

/// One row's measurement: the load, the fake's counts over it, /proc idle and during.
struct Measured {
    load: LoadReport,
    run: Duration,
    calls: usize,
    new_conns: usize,
    idle: ProcMark,
    peak: ProcMark,
}

impl Measured {
    /// Per WHATSAT answered in the run.
    fn per_whatsat(&self, count: usize) -> f64 {
        count as f64 / self.load.replies_total.max(1) as f64
    }

    /// RSS added per thread added under the load; `None` when no thread was added.
    fn rss_per_busy_thread(&self) -> Option<f64> {
        let threads = self.peak.threads.checked_sub(self.idle.threads)?;
        let rss = self.peak.rss.saturating_sub(self.idle.rss);
        (threads > 0).then(|| rss as f64 / threads as f64)
    }
}

fn measure(
    ctx: &Ctx,
    delay: Duration,
    lookups: Lookups,
    section: &mut Section,
) -> Result<(), String> {
    let fake = FakePlaces::start();
    fake.set_delay(delay);
    let places = format!("places url {}", fake.new_api_url());
    let subject = Subject::start(ctx, "whatsat", &[&places, "places api new"])?;
    let pid = subject.pid().ok_or("the server's pid is unknown")?;
    let count = match lookups {
        Lookups::Distinct => ctx.count(CLIENTS),
        Lookups::Repeated => 1,
    };
    let clients: Vec<String> = (0..count as u64)
        .map(|i| ctx.names.client("w", i))
        .collect();
    seed(&ctx.names, subject.addr(), &clients, Locations::Distinct)?;

    // IAMAT beside the WHATSATs: where the targets are judged, with the most lookups waiting.
    let beside = lookups == Lookups::Distinct && delay == JUDGED_DELAY;
    let iamat_idle = if beside {
        Some(iamat_side_load(ctx, subject.addr(), Duration::ZERO)?)
    } else {
        None
    };
    let mut workload = match lookups {
        Lookups::Distinct => WhatsatLoad::rotating(&clients),
        Lookups::Repeated => WhatsatLoad::new(&clients),
    };
    let (measured, iamat_busy) = load_and_watch(ctx, &subject, &fake, pid, &mut workload, beside)?;

    let label = format!(
        "({}) {} lookups C={CONNECTIONS} P={IN_FLIGHT}, Places {}",
        if lookups == Lookups::Distinct {
            'a'
        } else {
            'b'
        },
        lookups.label(),
        fmt_ns(delay.as_nanos() as u64)
    );
    let row = whatsat_row(label, delay, lookups, count, &measured);
    section.rows.push(judge(row, delay, lookups, &measured));
    if let (Some(idle), Some(busy)) = (iamat_idle, iamat_busy) {
        push_iamat_rows(section, delay, &idle, &busy);
    }
    Ok(())
}

/// Runs the WHATSAT load (and, with `beside`, the IAMAT side load on another thread) while a
/// third thread samples the server's RSS and threads.
fn load_and_watch(
    ctx: &Ctx,
    subject: &Subject,
    fake: &FakePlaces,
    pid: u32,
    workload: &mut WhatsatLoad,
    beside: bool,
) -> Result<(Measured, Option<LoadReport>), String> {
    // Let the seeding's replies and allocations settle before the idle reading.
    thread::sleep(Duration::from_millis(200));
    let idle = ProcMark::read(pid).ok_or("cannot read the server's /proc status")?;
    let (calls, conns) = (fake.request_count(), fake.accepted_connections());
    let window = ctx.secs(WINDOW_SECS);
    let mut spec = LoadSpec::new(subject.addr(), CONNECTIONS, IN_FLIGHT, window).server(Some(pid));
    // No warm-up: at a Places delay of 200 ms nothing is answered in the first 200 ms anyway,
    // and with a fixed pool the first replies are most of those there will be.
    spec.warmup = Duration::ZERO;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (load, peak, side) = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let readings = sample_until(SAMPLE_EVERY, &stop, || ProcMark::read(pid));
            readings.into_iter().fold(idle, ProcMark::max)
        });
        let side = beside.then(|| scope.spawn(|| iamat_side_load(ctx, subject.addr(), window)));
        let load = run_load(&spec, workload);
        stop.store(true, Ordering::Relaxed);
        let peak = sampler.join().unwrap_or(idle);
        let side = side.map(|s| {
            s.join()
                .unwrap_or_else(|_| Err("side load panicked".into()))
        });
        (load, peak, side)
    });
    let run = started.elapsed();
    let measured = Measured {
        load: load?,
        run,
        calls: fake.request_count() - calls,
        new_conns: fake.accepted_connections() - conns,
        idle,
        peak,
    };
    Ok((measured, side.transpose()?))
}

/// IAMAT C=1 P=1 on one more connection. Beside a WHATSAT load of `window` (non-zero), it
/// starts a fifth into that window (the WHATSATs are all sent by then) and ends before it
/// does; on the idle server (`window` zero) it is the same length.
fn iamat_side_load(ctx: &Ctx, addr: SocketAddr, window: Duration) -> Result<LoadReport, String> {
    let whatsat_window = ctx.secs(WINDOW_SECS);
    let mut spec = LoadSpec::new(addr, 1, 1, whatsat_window * 3 / 5);
    spec.warmup = if window.is_zero() {
        Duration::from_millis(100)
    } else {
        window / 5
    };
    run_load(&spec, &mut IamatLoad::cycling(&ctx.names, 1))
}

fn whatsat_row(
    label: String,
    delay: Duration,
    lookups: Lookups,
    clients: usize,
    m: &Measured,
) -> Row {
    let calls_per = m.per_whatsat(m.calls);
    let conns_per = m.per_whatsat(m.new_conns);
    let per_thread = m.rss_per_busy_thread();
    let mut row = load_row(label, &m.load);
    row.result += &format!(
        "  ({} answered, {} unanswered at the end)  {calls_per:.2} Places calls and {conns_per:.3} \
         new Places conns per WHATSAT  RSS {} -> {}, threads {} -> {}",
        fmt_count(m.load.replies_total),
        fmt_count(m.load.unanswered),
        fmt_bytes(m.idle.rss as f64),
        fmt_bytes(m.peak.rss as f64),
        m.idle.threads,
        m.peak.threads,
    );
    if m.load.error_json == 0 {
        row.result += "  0 error JSON";
    }
    row.figure("places_delay_ms", delay.as_millis() as u64)
        .figure("lookups", lookups.label())
        .figure("clients", clients)
        .figure("replies_total", m.load.replies_total)
        .figure("run_s", round3(m.run.as_secs_f64()))
        .figure("places_calls", m.calls)
        .figure("places_calls_per_whatsat", round3(calls_per))
        .figure("places_new_connections", m.new_conns)
        .figure("places_new_connections_per_whatsat", round3(conns_per))
        .figure("rss_idle_bytes", m.idle.rss)
        .figure("rss_peak_bytes", m.peak.rss)
        .figure("threads_idle", m.idle.threads)
        .figure("threads_peak", m.peak.threads)
        .figure("rss_per_busy_thread_bytes", per_thread.map(f64::round))
}

/// The targets, at the judged delay only.
fn judge(row: Row, delay: Duration, lookups: Lookups, m: &Measured) -> Row {
    if delay != JUDGED_DELAY {
        return row;
    }
    let rate = m.load.rate();
    match lookups {
        Lookups::Distinct => {
            let per_thread = m.rss_per_busy_thread();
            let shown = match per_thread {
                Some(bytes) => fmt_bytes(bytes),
                None => format!(
                    "n/a: no thread added under load ({} -> {})",
                    m.idle.threads, m.peak.threads
                ),
            };
            row.check(
                format!(">= 800 WHATSAT/s (is {rate:.0}/s)"),
                rate >= TARGET_DISTINCT_RATE,
            )
            .check(
                format!("workers' RSS per busy thread <= 128 KiB (is {shown})"),
                per_thread.is_some_and(|b| b <= TARGET_RSS_PER_THREAD),
            )
        }
        Lookups::Repeated => {
            let periods = m.run.as_secs_f64() / cache_period().as_secs_f64();
            let allowed = periods.ceil().max(1.0) as usize;
            row.check(
                format!(">= 20,000 WHATSAT/s (is {rate:.0}/s)"),
                rate >= TARGET_REPEATED_RATE,
            )
            .check(
                format!(
                    "Places calls <= ceil({:.1} s / 30 s) = {allowed} (is {})",
                    m.run.as_secs_f64(),
                    m.calls
                ),
                m.calls <= allowed,
            )
        }
    }
}

fn push_iamat_rows(section: &mut Section, delay: Duration, idle: &LoadReport, busy: &LoadReport) {
    let ratio = p99_ratio(busy, idle);
    section.rows.push(
        load_row("IAMAT C=1 P=1, idle server (same clients known)", idle)
            .figure("places_delay_ms", delay.as_millis() as u64),
    );
    let label = format!(
        "IAMAT C=1 P=1 beside (a) at Places {}",
        fmt_ns(delay.as_nanos() as u64)
    );
    let mut row = load_row(label, busy)
        .figure("places_delay_ms", delay.as_millis() as u64)
        .figure("p99_ratio", round3(ratio));
    row.result += &format!("  p99 {ratio:.2}x idle");
    section.rows.push(row);
}

/// The server's default `places cache-ms`, which (b) is judged against.
fn cache_period() -> Duration {
    Duration::from_millis(herd::config::PlacesSettings::default().cache_ms)
}
