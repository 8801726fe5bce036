//! Scenario 15: the client table grows without stalling its clients. One server with `log lines
//! off` takes IAMATs from 10,000,000 distinct clients (C=16 P=256, closed loop) while one probe
//! connection beside the load sends an IAMAT every millisecond, one at a time, timed from its
//! write to its reply. The probe's latency is reported per million clients known (the load's
//! answered IAMATs when the probe was sent), with what else had the cores meanwhile; then the
//! server's RSS and the bytes per client at the end.
//!
//! The count: `--clients N`, else 10,000,000 (a quarter with `--quick`).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::commands::{IamatLoad, Names};
use crate::cpu::{CpuMark, CpuShares};
use crate::herd::{involuntary_switches, rss_bytes};
use crate::hist::Histogram;
use crate::load::{run_load, Expect, LoadReport, LoadSpec, Workload};
use crate::report::{fmt_bytes, fmt_count, fmt_latency, fmt_ns, fmt_share, Row, Section};
use crate::scenarios::memory::per_client_row;
use crate::scenarios::{Ctx, Subject};

const CLIENTS: usize = 10_000_000;
const CONNECTIONS: usize = 16;
const IN_FLIGHT: usize = 256;
const PER_ROW: u64 = 1_000_000;
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// A probe IAMAT not answered this long after its write ends the probe as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The target: the probe's longest wait, in every million.
const TARGET_MAX: Duration = Duration::from_millis(10);
/// The bound on the whole load (at about 500,000 IAMAT/s, 10,000,000 take 20 s).
const LOAD_LIMIT: Duration = Duration::from_secs(600);

pub fn run(ctx: &Ctx) -> Section {
    let clients = clients(ctx);
    let title = format!("{} clients, a probe beside", fmt_count(clients));
    Section::new("15 grow", title).measured(|section| measure(ctx, clients, section))
}

fn clients(ctx: &Ctx) -> u64 {
    ctx.clients
        .unwrap_or_else(|| ctx.count(CLIENTS) as u64)
        .max(1)
}

/// The IAMATs of distinct clients, counting the answered ones (each a client the server now
/// knows) where the probe reads them.
struct Counted<'a> {
    load: IamatLoad,
    answered: &'a AtomicU64,
}

impl Workload for Counted<'_> {
    fn next_command(&mut self, conn: usize, out: &mut Vec<u8>) -> Option<Expect> {
        self.load.next_command(conn, out)
    }

    fn answered(&mut self, _conn: usize, replies: usize) {
        self.answered.fetch_add(replies as u64, Ordering::Relaxed);
    }
}

/// What the probe saw in one million of clients, and what the machine did meanwhile.
struct Million {
    /// Each probe from its write to its reply.
    latency: Histogram,
    /// How late each probe was sent after its time (the probe's thread waiting for a core, or
    /// for the reply before).
    late: Histogram,
    /// The clients answered when the slowest probe was sent.
    slowest_at: u64,
    /// The server's RSS when the load's answers first reached this million.
    rss_at_start: Option<u64>,
    started: CpuMark,
    switches_at_start: Option<u64>,
    /// CPU shares over the million, and how often the server's loop was preempted.
    cpu: Option<CpuShares>,
    preempted: Option<u64>,
}

impl Million {
    fn start(pid: u32) -> Million {
        Million {
            latency: Histogram::default(),
            late: Histogram::default(),
            slowest_at: 0,
            rss_at_start: rss_bytes(pid),
            started: CpuMark::take(&[Some(pid)]),
            switches_at_start: involuntary_switches(pid),
            cpu: None,
            preempted: None,
        }
    }

    fn end(&mut self, pid: u32) {
        self.cpu = Some(self.started.shares(&CpuMark::take(&[Some(pid)])));
        self.preempted = involuntary_switches(pid)
            .zip(self.switches_at_start)
            .map(|(now, then)| now.saturating_sub(then));
    }
}

fn measure(ctx: &Ctx, clients: u64, section: &mut Section) -> Result<(), String> {
    let subject = Subject::start(ctx, "grow", &["log lines off"])?;
    let pid = subject
        .pid()
        .ok_or("cannot find the target's process to read its RSS")?;
    let rss_before = rss_bytes(pid).ok_or("cannot read the server's RSS")?;

    let answered = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let (load, probe) = thread::scope(|scope| {
        let server = (subject.addr(), pid);
        let (answered, done) = (&answered, &done);
        let prober = scope.spawn(move || probe(server, &ctx.names, clients, answered, done));
        let mut spec =
            LoadSpec::new(subject.addr(), CONNECTIONS, IN_FLIGHT, LOAD_LIMIT).server(Some(pid));
        spec.warmup = Duration::ZERO;
        spec.drain = Duration::from_secs(10);
        let mut work = Counted {
            load: IamatLoad::distinct(&ctx.names, clients),
            answered,
        };
        let load = run_load(&spec, &mut work);
        done.store(true, Ordering::Relaxed);
        let probe = prober.join().map_err(|_| "the probe panicked".to_string());
        (load, probe)
    });
    let load = load?;
    let (millions, probe_error) = probe?;
    // Let the connections' buffers go before reading RSS.
    thread::sleep(Duration::from_millis(300));
    let rss_after = rss_bytes(pid).ok_or("cannot read the server's RSS")?;

    for (m, million) in millions.iter().enumerate() {
        section.rows.push(million_row(m as u64, clients, million));
    }
    if let Some(why) = &probe_error {
        section
            .notes
            .push(format!("the probe stopped early: {why}"));
    }
    section.rows.push(end_row(
        clients,
        &load,
        (rss_before, rss_after),
        probe_error.is_none(),
    ));
    section.notes.push(
        "the probe: one IAMAT every 1 ms on its own connection, one at a time (after a slow \
         reply, the next at once), timed from its write to its reply, in the million the load \
         had reached when it was sent; CPU as shares of one core over that million (other: \
         everything outside the server and the bench); preempted: how often the server's loop \
         was made to give up its core"
            .into(),
    );
    Ok(())
}

fn million_row(m: u64, clients: u64, million: &Million) -> Row {
    let from = m * PER_ROW;
    let to = ((m + 1) * PER_ROW).min(clients);
    let label = format!(
        "probe from {} to {} clients",
        fmt_millions(from),
        fmt_millions(to)
    );
    let mut result = format!(
        "{}  ({} probes, the slowest at {} clients; sent late: max {})",
        fmt_latency(&million.latency),
        fmt_count(million.latency.count()),
        fmt_count(million.slowest_at),
        fmt_ns(million.late.max()),
    );
    if let Some(cpu) = &million.cpu {
        result += &format!(
            "  CPU server {}, bench {}, other {}",
            fmt_share(cpu.servers.first().copied().flatten()),
            fmt_share(cpu.process),
            fmt_share(cpu.other)
        );
    }
    if let Some(preempted) = million.preempted {
        result += &format!(", server preempted {} times", fmt_count(preempted));
    }
    if let Some(rss) = million.rss_at_start {
        result += &format!("; RSS {} at {}", fmt_bytes(rss as f64), fmt_millions(from));
    }
    let cpu = million.cpu.as_ref();
    Row::new(label)
        .result(result)
        .figure("from_clients", from)
        .figure("to_clients", to)
        .figure("slowest_at_clients", million.slowest_at)
        .figure("rss_at_start_bytes", million.rss_at_start)
        .figure(
            "server_cpu",
            cpu.and_then(|c| c.servers.first().copied().flatten()),
        )
        .figure("bench_cpu", cpu.and_then(|c| c.process))
        .figure("other_cpu", cpu.and_then(|c| c.other))
        .figure("server_preempted", million.preempted)
        .figure("sent_late_max_ns", million.late.max())
        .latency("", &million.latency)
        .check(
            "max <= 10 ms",
            million.latency.count() > 0 && million.latency.max() <= TARGET_MAX.as_nanos() as u64,
        )
}

fn end_row(clients: u64, load: &LoadReport, rss: (u64, u64), probe_ok: bool) -> Row {
    let config = format!(
        "IAMAT from {} clients, log lines off, C={CONNECTIONS} P={IN_FLIGHT}",
        fmt_count(clients)
    );
    let (row, stored, _) = per_client_row(&config, clients, load, rss);
    row.check(
        "every client stored, the probe answered throughout",
        stored == clients && probe_ok,
    )
}

/// `3 M`, `2.5 M`, `250,000`.
fn fmt_millions(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else if n % PER_ROW == 0 {
        format!("{} M", n / PER_ROW)
    } else if n >= PER_ROW {
        format!("{:.1} M", n as f64 / PER_ROW as f64)
    } else {
        fmt_count(n)
    }
}

type ProbeConn = (TcpStream, BufReader<TcpStream>);

/// IAMATs every `PROBE_INTERVAL` until `done`, one at a time, each timed from its write to its
/// reply and filed under the million of clients answered when it was sent (the last million
/// takes what comes after it). Each million's readings are taken when the probe first sees it,
/// after an exchange, so that they never delay a probe. Stops at the first failure (why,
/// beside what it saw until then).
fn probe(
    (addr, pid): (SocketAddr, u32),
    names: &Names,
    clients: u64,
    answered: &AtomicU64,
    done: &AtomicBool,
) -> (Vec<Million>, Option<String>) {
    let mut millions: Vec<Million> = Vec::new();
    let client = names.client("probe", 0);
    let mut conn = match connect(addr) {
        Ok(conn) => conn,
        Err(e) => return (millions, Some(format!("connect: {e}"))),
    };
    let last = ((clients - 1) / PER_ROW) as usize;
    let mut line = String::new();
    let mut due = Instant::now();
    let mut failure = None;
    while !done.load(Ordering::Relaxed) {
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let known = answered.load(Ordering::Relaxed);
        let m = ((known / PER_ROW) as usize).min(last);
        let command = names.iamat(&client, names.now_tick());
        let sent = Instant::now();
        if let Err(why) = exchange(&mut conn, &command, &mut line) {
            failure = Some(why);
            break;
        }
        let ns = sent.elapsed().as_nanos() as u64;
        while millions.len() <= m {
            if let Some(previous) = millions.last_mut() {
                previous.end(pid);
            }
            millions.push(Million::start(pid));
        }
        let million = &mut millions[m];
        if ns > million.latency.max() {
            million.slowest_at = known;
        }
        million.latency.record(ns);
        million
            .late
            .record(sent.saturating_duration_since(due).as_nanos() as u64);
        // The next on time; after a slow reply, at once (the times missed are not made up).
        due = (due + PROBE_INTERVAL).max(Instant::now());
    }
    if let Some(million) = millions.last_mut() {
        million.end(pid);
    }
    (millions, failure)
}

fn connect(addr: SocketAddr) -> io::Result<ProbeConn> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

/// Writes one IAMAT and reads its reply, which must be an AT line.
fn exchange(
    (stream, reader): &mut ProbeConn,
    command: &[u8],
    line: &mut String,
) -> Result<(), String> {
    stream
        .write_all(command)
        .map_err(|e| format!("write: {e}"))?;
    line.clear();
    match reader.read_line(line) {
        Ok(0) => Err("the server closed the probe's connection".into()),
        Ok(_) if line.starts_with("AT ") && line.ends_with('\n') => Ok(()),
        Ok(_) => Err(format!("reply: {}", line.trim_end())),
        Err(e) => Err(format!("read: {e}")),
    }
}
