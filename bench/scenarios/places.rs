//! Scenario 3: Places isolation. With the tests' fake Places answering after 50 ms and after 2 s:
//! WHATSAT throughput at C=50 (bounded by the server's Places workers), and IAMAT latency on
//! other connections while 200 WHATSATs wait for Places, against the same load on a twin
//! server without them. Fresh servers for each, so no lookup queued by one lingers into the
//! next.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use crate::commands::{whatsat, IamatLoad, Names, WhatsatLoad};
use crate::fake_places::FakePlaces;
use crate::load::{run_load, LoadReport, LoadSpec};
use crate::report::{fmt_ns, Section};
use crate::scenarios::{load_row, Ctx, Subject};

const WAITING: usize = 200;

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
    section
}

fn measure(ctx: &Ctx, delay: Duration, section: &mut Section) -> Result<(), String> {
    let fake = FakePlaces::start();
    fake.set_delay(delay);
    let places = format!("places url {}", fake.new_api_url());
    let label = if ctx.target.is_some() {
        "target's Places".to_string()
    } else {
        format!("Places {}", fmt_ns(delay.as_nanos() as u64))
    };

    // WHATSAT throughput: 50 connections, each asking about a client of its own. No warm-up:
    // with a 2 s Places the first replies come only after 2 s.
    let subject = Subject::start(ctx, "places", &[&places])?;
    let clients: Vec<String> = (0..50).map(|i| ctx.names.client("p", i)).collect();
    seed(&ctx.names, subject.addr(), &clients)?;
    let window = ctx.secs(4.0).max(delay * 3 + Duration::from_millis(300));
    let mut spec = LoadSpec::new(subject.addr(), 50, 1, window).server(subject.pid());
    spec.warmup = Duration::ZERO;
    spec.drain = Duration::from_millis(200);
    let load = run_load(&spec, &mut WhatsatLoad::new(&clients))?;
    let row = load_row(format!("WHATSAT C=50 P=1, {label}"), &load);
    section
        .rows
        .push(row.figure("places_delay_ms", delay.as_millis() as u64));
    drop(subject);

    // IAMAT latency on a server with no WHATSAT waiting and on one with 200 waiting on other
    // connections, measured in alternation so that a disturbance from outside the bench
    // falls on both alike. With --target there is one server: without first, then with.
    let quiet = Subject::start(ctx, "places", &[&places])?;
    let busy = match ctx.target {
        Some(_) => None,
        None => Some(Subject::start(ctx, "places", &[&places])?),
    };
    let rounds = if busy.is_some() { 3 } else { 1 };
    let mut without = iamat_load(ctx, &quiet)?;
    let busy = busy.as_ref().unwrap_or(&quiet);
    let client = ctx.names.client("q", 0);
    seed(&ctx.names, busy.addr(), std::slice::from_ref(&client))?;
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
    let mut with = iamat_load(ctx, busy)?;
    for _ in 1..rounds {
        without.absorb(iamat_load(ctx, &quiet)?);
        with.absorb(iamat_load(ctx, busy)?);
    }
    let answered = answered_count(&mut waiting);
    drop(waiting);

    let p99_without = without.latency.percentile(0.99);
    let p99_with = with.latency.percentile(0.99);
    let ratio = p99_with as f64 / p99_without.max(1) as f64;
    section.rows.push(load_row(
        format!("IAMAT C=50 P=1, {label}, no WHATSAT waiting"),
        &without,
    ));
    let mut row = load_row(
        format!("IAMAT C=50 P=1, {label}, {WAITING} WHATSATs waiting"),
        &with,
    )
    .figure("whatsats_answered_meanwhile", answered)
    .figure("p99_ratio", (ratio * 1000.0).round() / 1000.0);
    row.result += &format!("  ({answered} of {WAITING} answered meanwhile)");
    if delay >= Duration::from_secs(2) || ctx.target.is_some() {
        row = row.check(
            format!("p99 <= 1.2x without (is {ratio:.2}x)"),
            ratio <= 1.2,
        );
    }
    section.rows.push(row);
    Ok(())
}

fn iamat_load(ctx: &Ctx, subject: &Subject) -> Result<LoadReport, String> {
    let spec = LoadSpec::new(subject.addr(), 50, 1, ctx.secs(2.0)).server(subject.pid());
    run_load(&spec, &mut IamatLoad::cycling(&ctx.names, 50))
}

/// Makes `clients` known to the server: one IAMAT each on one connection, every reply read.
fn seed(names: &Names, addr: SocketAddr, clients: &[String]) -> Result<(), String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut batch = Vec::new();
    for client in clients {
        batch.extend_from_slice(&names.iamat(client, names.now_tick()));
    }
    conn.write_all(&batch).map_err(|e| format!("write: {e}"))?;
    let mut reader = BufReader::new(conn);
    for client in clients {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("seeding {client}: {e}"))?;
        if !line.starts_with("AT ") {
            return Err(format!("IAMAT for {client} answered: {}", line.trim_end()));
        }
    }
    Ok(())
}

/// How many of the waiting connections have received anything (nonblocking peek).
fn answered_count(conns: &mut [TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    conns
        .iter()
        .filter(|c| c.set_nonblocking(true).is_ok() && matches!(c.peek(&mut buf), Ok(n) if n > 0))
        .count()
}
