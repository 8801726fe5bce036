//! Scenario 3: Places isolation. With the tests' fake Places answering after 50 ms and after 2 s:
//! WHATSAT throughput at C=50 (bounded by the server's Places workers), and IAMAT latency on
//! other connections while 200 WHATSATs wait for Places, against the same load on a twin
//! server without them. Fresh servers for each, so no lookup queued by one lingers into the
//! next. The IAMAT load is first the saturating closed loop, then (2 s case) paced well below
//! saturation with both servers driven in the same run: a saturated server's p99 is mostly
//! CPU-contention jitter, and runs one after the other each meet their own disturbances, so
//! whether the event loop notices the waiting lookups is judged on the paced pair.

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use herd_test_support::fake_places::FakePlaces;

use crate::commands::{whatsat, IamatLoad, WhatsatLoad};
use crate::load::{run_load, run_load_each, LoadReport, LoadSpec};
use crate::report::{fmt_duration, fmt_rate, Row, Section};
use crate::scenarios::{iamat_load, load_row, p99_ratio, Ctx, Subject};
use crate::seed::{seed, Locations};

const WAITING: usize = 200;

/// The paced comparison's rate on each server, as a share of the saturated rate without
/// WHATSATs waiting. Both servers are driven at once, so the machine carries twice this; the
/// generator keeps a core busy besides (it polls without blocking between close sends).
const PACED_SHARE: f64 = 0.2;

/// Paced rounds (both servers driven at once in each) and the length of each.
const PACED_ROUNDS: usize = 10;
const PACED_SECS: f64 = 1.0;

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("3 places", "Places isolation");
    for delay in [Duration::from_millis(50), Duration::from_secs(2)] {
        if let Err(why) = measure(ctx, delay, &mut section) {
            return section.unavailable(why);
        }
        if ctx.target.is_some() {
            section.notes.push(
                "with --target the server's own Places answered (the fake's delays do not apply)"
                    .into(),
            );
            break;
        }
    }
    section.notes.push(
        "WHATSAT throughput is bounded by `places workers` (default 4) / Places delay".into(),
    );
    let how = match ctx.target {
        Some(_) => "one run before the WHATSATs were sent, one after".to_string(),
        None => format!(
            "both servers driven at once, {PACED_ROUNDS} rounds of {:.1} s",
            ctx.secs(PACED_SECS).as_secs_f64()
        ),
    };
    section.notes.push(format!(
        "paced rows: IAMAT due on a fixed schedule at {:.0}% of the saturated rate without on \
         each server ({how}), each timed from when it was due; the p99 target is judged there \
         (a saturated p99 is mostly CPU-contention jitter)",
        PACED_SHARE * 100.0
    ));
    section
}

fn measure(ctx: &Ctx, delay: Duration, section: &mut Section) -> Result<(), String> {
    let fake = FakePlaces::start();
    fake.set_delay(delay);
    let places = format!("places url {}", fake.new_api_url());
    let label = if ctx.target.is_some() {
        "target's Places".to_string()
    } else {
        format!("Places {}", fmt_duration(delay))
    };
    section
        .rows
        .push(whatsat_throughput(ctx, &places, delay, &label)?);

    // IAMAT latency on a server with no WHATSAT waiting and on one with 200 waiting on other
    // connections. Saturated first, measured in alternation so that a disturbance from outside
    // the bench falls on both alike; then (2 s case) paced at a share of the saturated rate
    // without, both servers in the same runs (below). With --target there is one server:
    // without first (saturated, then paced), then with.
    let quiet = Subject::start(ctx, "places", &[&places])?;
    let busy = match ctx.target {
        Some(_) => None,
        None => Some(Subject::start(ctx, "places", &[&places])?),
    };
    let twins = busy.is_some();
    let rounds = if twins { 3 } else { 1 };
    let judged = delay >= Duration::from_secs(2) || !twins;
    let mut without = iamat(ctx, &quiet, None)?;
    let mut paced_without = None;
    if judged && !twins {
        let rate = paced_rate(&without);
        paced_without = Some((rate, iamat(ctx, &quiet, Some(rate))?));
    }
    let busy = busy.as_ref().unwrap_or(&quiet);
    let mut waiting = make_waiting(ctx, busy, &fake)?;
    let mut with = iamat(ctx, busy, None)?;
    for _ in 1..rounds {
        without.absorb(iamat(ctx, &quiet, None)?);
        with.absorb(iamat(ctx, busy, None)?);
    }
    let answered = answered_count(&mut waiting);
    let saturated_ratio = p99_ratio(&with, &without);
    section.rows.push(load_row(
        format!("IAMAT C=50 P=1, {label}, no WHATSAT waiting"),
        &without,
    ));
    let mut row = load_row(
        format!("IAMAT C=50 P=1, {label}, {WAITING} WHATSATs waiting"),
        &with,
    )
    .figure("whatsats_answered_meanwhile", answered)
    .figure("p99_ratio", saturated_ratio);
    row.result += &format!(
        "  p99 {saturated_ratio:.2}x without  ({answered} of {WAITING} answered meanwhile)"
    );
    section.rows.push(row);
    if !judged {
        return Ok(());
    }
    let (rate, first_without) = match paced_without {
        Some((rate, run)) => (rate, Some(run)),
        None => (paced_rate(&without), None),
    };
    let paced = paced_runs(ctx, (&quiet, busy), rate, first_without)?;
    let answered = answered_count(&mut waiting);
    drop(waiting);
    paced_rows(section, &label, &paced, (answered, saturated_ratio));
    Ok(())
}

/// WHATSAT throughput: 50 connections, each asking about a client of its own, on a fresh
/// server. No warm-up: with a 2 s Places the first replies come only after 2 s.
fn whatsat_throughput(
    ctx: &Ctx,
    places: &str,
    delay: Duration,
    label: &str,
) -> Result<Row, String> {
    let subject = Subject::start(ctx, "places", &[places])?;
    let clients: Vec<String> = (0..50).map(|i| ctx.names.client("p", i)).collect();
    seed(&ctx.names, subject.addr(), &clients, Locations::Same)?;
    let window = ctx.secs(4.0).max(delay * 3 + Duration::from_millis(300));
    let mut spec = LoadSpec::new(subject.addr(), 50, 1, window).server(subject.pid());
    spec.warmup = Duration::ZERO;
    spec.drain = Duration::from_millis(200);
    let load = run_load(&spec, &mut WhatsatLoad::new(&clients))?;
    let row = load_row(format!("WHATSAT C=50 P=1, {label}"), &load);
    Ok(row.figure("places_delay_ms", delay.as_millis() as u64))
}

/// `WAITING` connections to `busy`, each with a WHATSAT written that waits on Places (a
/// client of their own made known first); returns once the fake has seen a request.
fn make_waiting(ctx: &Ctx, busy: &Subject, fake: &FakePlaces) -> Result<Vec<TcpStream>, String> {
    let client = ctx.names.client("q", 0);
    seed(
        &ctx.names,
        busy.addr(),
        std::slice::from_ref(&client),
        Locations::Same,
    )?;
    let mut waiting = Vec::with_capacity(WAITING);
    for _ in 0..WAITING {
        let mut conn = TcpStream::connect_timeout(&busy.addr(), Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        conn.write_all(&whatsat(&client, 10, 5))
            .map_err(|e| format!("write: {e}"))?;
        waiting.push(conn);
    }
    if ctx.target.is_none() && !fake.wait_for_requests(1, Duration::from_secs(2)) {
        return Err("the server sent no request to the fake Places".into());
    }
    thread::sleep(Duration::from_millis(50));
    Ok(waiting)
}

/// The paced comparison: reports without and with over every counted round, each round's
/// p99 ratio, and the rate.
struct Paced {
    without: LoadReport,
    with: LoadReport,
    by_round: Vec<f64>,
    rate: f64,
    twins: bool,
}

/// The paced pair, at the same rate on both. With twins, each round drives both servers in
/// one run, their connections dealt out in turn so that their commands alternate in time: a
/// disturbance from outside (another process, the host's scheduling) then falls on both
/// alike, where runs one after the other each get their own. Which server's connection goes
/// first alternates from round to round. With --target (one server, no twins) the run
/// without was made before the WHATSATs were sent: `first_without`.
fn paced_runs(
    ctx: &Ctx,
    (quiet, busy): (&Subject, &Subject),
    rate: f64,
    mut first_without: Option<LoadReport>,
) -> Result<Paced, String> {
    let twins = first_without.is_none();
    let rounds = if twins { PACED_ROUNDS } else { 1 };
    if twins {
        // A round not counted: the first one after the saturated runs came out worse for the
        // busy server (the last to run saturated) more often than not.
        paced_pair(ctx, quiet, busy, rate, true)?;
    }
    let mut paced = Paced {
        without: LoadReport::default(),
        with: LoadReport::default(),
        by_round: Vec::with_capacity(rounds),
        rate,
        twins,
    };
    for round in 0..rounds {
        let (quiet_run, busy_run) = match first_without.take() {
            Some(run) => (run, iamat(ctx, busy, Some(rate))?),
            None => paced_pair(ctx, quiet, busy, rate, round % 2 == 1)?,
        };
        paced.by_round.push(p99_ratio(&busy_run, &quiet_run));
        paced.without.absorb(quiet_run);
        paced.with.absorb(busy_run);
    }
    Ok(paced)
}

fn paced_rows(
    section: &mut Section,
    label: &str,
    paced: &Paced,
    (answered, saturated): (usize, f64),
) {
    let ratio = p99_ratio(&paced.with, &paced.without);
    let shape = format!(
        "IAMAT C=50 P=1 paced {} ({:.0}% of saturated without{})",
        fmt_rate(paced.rate),
        PACED_SHARE * 100.0,
        if paced.twins {
            ", both servers at once"
        } else {
            ""
        }
    );
    section.rows.push(
        load_row(
            format!("{shape}, {label}, no WHATSAT waiting"),
            &paced.without,
        )
        .figure("paced_share", PACED_SHARE),
    );
    let (low, high) =
        (paced.by_round.iter()).fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let mut row = load_row(
        format!("{shape}, {label}, {WAITING} WHATSATs waiting"),
        &paced.with,
    )
    .figure("paced_share", PACED_SHARE)
    .figure("whatsats_answered_by_end", answered)
    .figure("p99_ratio", ratio)
    .figure("p99_ratio_by_round", paced.by_round.clone())
    .figure("saturated_p99_ratio", saturated);
    row.result += &format!("  p99 {ratio:.2}x without");
    if paced.by_round.len() > 1 {
        row.result += &format!(" ({} rounds {low:.2}-{high:.2}x)", paced.by_round.len());
    }
    row.result +=
        &format!(", saturated {saturated:.2}x  ({answered} of {WAITING} answered by the end)");
    section.rows.push(row.check(
        format!("paced p99 <= 1.2x without (is {ratio:.2}x)"),
        ratio <= 1.2,
    ));
}

/// One paced round over both servers at once, C=50 P=1 on each: the reports (without, with).
/// `busy_first`: the busy server gets the even connections, whose commands fall due first.
fn paced_pair(
    ctx: &Ctx,
    quiet: &Subject,
    busy: &Subject,
    rate: f64,
    busy_first: bool,
) -> Result<(LoadReport, LoadReport), String> {
    let (first, second) = if busy_first {
        (busy, quiet)
    } else {
        (quiet, busy)
    };
    let spec = LoadSpec::new(first.addr(), 100, 1, ctx.secs(PACED_SECS))
        .server(first.pid())
        .also(second.addr(), second.pid())
        .paced(2.0 * rate);
    let mut reports = run_load_each(&spec, &mut IamatLoad::cycling(&ctx.names, 100))?;
    let (Some(second_run), Some(first_run)) = (reports.pop(), reports.pop()) else {
        return Err("the load generator reported fewer servers than it drove".into());
    };
    Ok(if busy_first {
        (second_run, first_run)
    } else {
        (first_run, second_run)
    })
}

/// `PACED_SHARE` of the saturated rate, to two significant digits (at least 1/s).
fn paced_rate(saturated: &LoadReport) -> f64 {
    let raw = saturated.rate() * PACED_SHARE;
    if raw < 10.0 {
        return raw.round().max(1.0);
    }
    let step = 10f64.powi(raw.log10().floor() as i32 - 1);
    (raw / step).round() * step
}

/// IAMAT at C=50 P=1 for 2 s: closed loop, or paced at `rate` commands per second.
fn iamat(ctx: &Ctx, subject: &Subject, rate: Option<f64>) -> Result<LoadReport, String> {
    iamat_load(ctx, subject.server(), (50, 1), 2.0, rate)
}

/// How many of the waiting connections have received anything (nonblocking peek).
fn answered_count(conns: &mut [TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    conns
        .iter()
        .filter(|c| c.set_nonblocking(true).is_ok() && matches!(c.peek(&mut buf), Ok(n) if n > 0))
        .count()
}
