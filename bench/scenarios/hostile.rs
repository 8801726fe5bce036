//! Scenario 9: hostile clients. One server with its default settings (only `places url` at the
//! tests' fake Places, answering after 200 ms, and `places api new`; `log lines` on), 2,000
//! clients made known first. Then 2,000 attacker connections each write as many distinct
//! WHATSATs as their socket takes and never read, for 30 s, while one probe connection sends
//! paced IAMATs (200/s, C=1 P=1, timed from when each was due). The server's RSS, CPU and
//! threads, and the kernel's TCP memory, are read every 100 ms; the fake counts the Places
//! calls. Then every attacker is closed at once: how long until a new client's IAMAT is
//! answered, and the server's RSS 5 s later.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use herd_test_support::fake_places::FakePlaces;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use crate::commands::Names;
use crate::herd::{
    cpu_secs, machine_cpu_secs, nofile_limit, own_cpu_secs, rss_bytes, thread_count,
    thread_cpu_secs,
};
use crate::hist::Histogram;
use crate::report::{
    fmt_bytes, fmt_count, fmt_duration, fmt_latency, fmt_ns, fmt_share, fmt_stats, Row, Section,
    Stat,
};
use crate::scenarios::{round3, Ctx, Subject};

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
    let mut section = Section::new("9 hostile", "non-reading WHATSAT pipeliners");
    if ctx.target.is_some() {
        return section.unavailable(
            "needs a server of its own: the fake Places' delay and call count are the measurement",
        );
    }
    if let Err(why) = measure(ctx, &mut section) {
        return section.unavailable(why);
    }
    add_notes(&mut section);
    section
}

fn in_flight_limit() -> usize {
    herd::config::Limits::default().max_in_flight
}

fn add_notes(section: &mut Section) {
    let tcp_mem = fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").unwrap_or_default();
    let pressure = tcp_mem
        .split_whitespace()
        .map(|p| p.parse::<u64>().unwrap_or(0) * PAGE)
        .map(|b| fmt_bytes(b as f64))
        .collect::<Vec<_>>()
        .join(" / ");
    section.notes.extend([
        format!(
            "the server runs its defaults (limit in-flight {}, output-soft-bytes, \
             commands-per-turn, stall-ms, output-total-bytes, places workers / queue / cache); \
             only `places url` (the fake, {} per answer) and `places api new` are set; \
             `log lines` on",
            in_flight_limit(),
            fmt_duration(PLACES_DELAY)
        ),
        format!(
            "attackers: {} connections made before the window, then each writes `WHATSAT \
             <client> <radius> {BOUND}` lines (nonblocking, whenever the socket takes more, at \
             most {} lines each) and never reads; the lines name the {} known clients in turn, \
             the radius 1 m larger each round, so every WHATSAT is a lookup of its own (no \
             cache hit, no coalescing); attackers dropped by the server: the socket reported \
             an error or hang-up",
            fmt_count(ATTACKERS as u64),
            fmt_count(MAX_LINES_PER_ATTACKER),
            fmt_count(CLIENTS as u64),
        ),
        format!(
            "probe: IAMAT paced at {PROBE_RATE:.0}/s on one connection, one at a time, each \
             timed from when it was due (a late send counts); error: no reply {} after the \
             write, a reply that is not the AT line of the probe's client, or a closed \
             connection (a new connection is opened for the next); the probe stops at the \
             window's end, and commands due by then but not yet sent (it was still waiting on \
             an earlier reply) are counted as never sent",
            fmt_duration(PROBE_TIMEOUT)
        ),
        format!(
            "RSS, threads and CPU: /proc/PID of the server every 100 ms; peak RSS judged \
             against 300 MiB (314.6 MB) over the attack and the {} after the close; kernel \
             TCP memory: /proc/net/sockstat (both ends of every loopback connection are this \
             machine's; tcp_mem min / pressure / max here {pressure})",
            fmt_duration(AFTER_CLOSE)
        ),
        format!(
            "Places calls: the fake's requests read; bound = attackers x limit in-flight = {} \
             (calls in flight at once are also bounded by `places workers`, so at {} a call \
             at most workers / delay calls a second)",
            fmt_count((ATTACKERS * in_flight_limit()) as u64),
            fmt_duration(PLACES_DELAY)
        ),
        "recovery: timed from the moment the last attacker's socket was closed to the AT line \
         answering a new client's IAMAT on a new connection"
            .to_string(),
    ]);
}

/// /proc readings of the server (and the kernel's TCP memory), `at` after the attack began.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    rss: u64,
    threads: u64,
    cpu: f64,
    tcp_bytes: u64,
}

/// The kernel's TCP buffer memory, from /proc/net/sockstat (pages).
fn tcp_mem_bytes() -> Option<u64> {
    let stat = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    Some(words.next()?.parse::<u64>().ok()? * PAGE)
}

/// Bytes queued in the kernel on the loopback connections to the server's port, from
/// /proc/net/tcp: on the server's side (input it has not read, output the attackers have not
/// taken) and on the attackers' side (what they wrote that the server's side has not taken,
/// replies they have not read).
#[derive(Clone, Copy, Default)]
struct Queues {
    server_rx: u64,
    server_tx: u64,
    client_tx: u64,
    client_rx: u64,
}

fn socket_queues(port: u16) -> Option<Queues> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let port = format!(":{port:04X}");
    let mut q = Queues::default();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(queues)) =
            (fields.get(1), fields.get(2), fields.get(4))
        else {
            continue;
        };
        let Some((tx, rx)) = queues.split_once(':') else {
            continue;
        };
        let tx = u64::from_str_radix(tx, 16).unwrap_or(0);
        let rx = u64::from_str_radix(rx, 16).unwrap_or(0);
        if local.ends_with(&port) {
            q.server_tx += tx;
            q.server_rx += rx;
        } else if remote.ends_with(&port) {
            q.client_tx += tx;
            q.client_rx += rx;
        }
    }
    Some(q)
}

fn sample_until(pid: u32, start: Instant, stop: &AtomicBool) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let (Some(rss), Some(cpu)) = (rss_bytes(pid), cpu_secs(pid)) {
            samples.push(Sample {
                at: start.elapsed(),
                rss,
                threads: thread_count(pid).unwrap_or(0),
                cpu,
                tcp_bytes: tcp_mem_bytes().unwrap_or(0),
            });
        }
        next += SAMPLE_EVERY;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    samples
}

/// What the probe saw.
#[derive(Default)]
struct Probe {
    latency: Histogram,
    /// p99 of each second of the run.
    p99_by_second: Vec<u64>,
    sent: u64,
    timeouts: u64,
    malformed: u64,
    closed: u64,
    connect_failures: u64,
    first_error: Option<String>,
    /// Commands due inside the window never sent (the probe was behind when it ended).
    unsent: u64,
    /// Each answered IAMAT from its write to its reply (how long one waited on the server,
    /// whatever the schedule).
    round_trip: Histogram,
    /// How long the probe's writes took (a write waits when the kernel has no TCP memory).
    write_time: Histogram,
}

impl Probe {
    fn errors(&self) -> u64 {
        self.timeouts + self.malformed + self.closed + self.connect_failures
    }

    fn error(&mut self, why: String) {
        self.first_error.get_or_insert(why);
    }
}

type ProbeConn = (TcpStream, BufReader<TcpStream>);

fn probe_connect(addr: SocketAddr) -> io::Result<ProbeConn> {
    let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

/// IAMATs paced at `PROBE_RATE` until `until`, one at a time, each timed from its due time.
fn probe(addr: SocketAddr, names: &Names, until: Instant) -> Probe {
    let mut probe = Probe::default();
    let client = names.client("probe", 0);
    let start = Instant::now();
    let mut second = Histogram::default();
    let mut second_no = 0u64;
    let mut conn: Option<ProbeConn> = None;
    let mut line = String::new();
    for n in 0u64.. {
        let due = start + Duration::from_secs_f64(n as f64 / PROBE_RATE);
        if due >= until {
            break;
        }
        thread::sleep(due.saturating_duration_since(Instant::now()));
        if Instant::now() >= until {
            // Behind schedule at the window's end: what is still due is counted, not sent.
            let due_total = (until.duration_since(start).as_secs_f64() * PROBE_RATE).ceil() as u64;
            probe.unsent = due_total.saturating_sub(n);
            break;
        }
        let due_second = due.duration_since(start).as_secs();
        if due_second != second_no {
            probe.p99_by_second.push(second.percentile(0.99));
            second = Histogram::default();
            second_no = due_second;
        }
        probe.sent += 1;
        let (stream, reader) = match conn.take().map_or_else(|| probe_connect(addr), Ok) {
            Ok(c) => conn.insert(c),
            Err(e) => {
                probe.connect_failures += 1;
                probe.error(format!("connect: {e}"));
                continue;
            }
        };
        let command = names.iamat(&client, names.now_tick());
        let writing = Instant::now();
        let wrote = stream.write_all(&command);
        let write_time = writing.elapsed();
        probe.write_time.record(write_time.as_nanos() as u64);
        match wrote {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                probe.timeouts += 1;
                probe.error(format!(
                    "the write took over {}",
                    fmt_duration(PROBE_TIMEOUT)
                ));
                conn = None;
                continue;
            }
            Err(e) => {
                probe.closed += 1;
                probe.error(format!("write: {e}"));
                conn = None;
                continue;
            }
        }
        // The reply is owed within PROBE_TIMEOUT of the write's start.
        let left = PROBE_TIMEOUT.saturating_sub(write_time);
        if stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .is_err()
        {
            conn = None;
            continue;
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => {
                probe.closed += 1;
                probe.error("the server closed the probe's connection".into());
                conn = None;
            }
            Ok(_) if line.starts_with("AT ") && line.contains(&client) && line.ends_with('\n') => {
                let ns = due.elapsed().as_nanos() as u64;
                probe.latency.record(ns);
                probe.round_trip.record(writing.elapsed().as_nanos() as u64);
                second.record(ns);
            }
            Ok(_) => {
                probe.malformed += 1;
                probe.error(format!("reply: {}", line.trim_end()));
                conn = None;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                probe.timeouts += 1;
                probe.error(format!("no reply within {}", fmt_duration(PROBE_TIMEOUT)));
                conn = None;
            }
            Err(e) => {
                probe.closed += 1;
                probe.error(format!("read: {e}"));
                conn = None;
            }
        }
    }
    if second.count() > 0 {
        probe.p99_by_second.push(second.percentile(0.99));
    }
    probe
}

/// One attacker: its socket and the lines generated but not yet taken by it.
struct Attacker {
    stream: mio::net::TcpStream,
    out: Vec<u8>,
    written: usize,
    lines: u64,
    open: bool,
}

#[derive(Default)]
struct Attack {
    bytes: u64,
    /// Lines the sockets took whole.
    lines: u64,
    dropped: usize,
    first_drop: Option<Duration>,
    last_drop: Option<Duration>,
    /// Attackers that reached `MAX_LINES_PER_ATTACKER`.
    capped: usize,
    bench_cpu: Option<f64>,
}

/// The attackers' lines: the `k`-th of the whole run names client `k mod N` with a radius of
/// 1 km + `k / N` metres.
struct Lines<'a> {
    clients: &'a [String],
    next: u64,
}

impl Lines<'_> {
    fn push(&mut self, out: &mut Vec<u8>) {
        let k = self.next;
        self.next += 1;
        let n = self.clients.len() as u64;
        let metres = 1_000 + (k / n) % RADII;
        let client = &self.clients[(k % n) as usize];
        let _ = writeln!(
            out,
            "WHATSAT {client} {}.{:03} {BOUND}",
            metres / 1000,
            metres % 1000
        );
    }
}

fn connect_attackers(addr: SocketAddr) -> Result<Vec<Attacker>, String> {
    let mut attackers = Vec::with_capacity(ATTACKERS);
    for i in 0..ATTACKERS {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("attacker {i}: connect: {e}"))?;
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("attacker {i}: {e}"))?;
        attackers.push(Attacker {
            stream: mio::net::TcpStream::from_std(stream),
            out: Vec::with_capacity(8 * 1024),
            written: 0,
            lines: 0,
            open: true,
        });
    }
    Ok(attackers)
}

/// Writes into every attacker as much as its socket takes, whenever it takes more, until
/// `until`; never reads.
fn attack(
    attackers: &mut [Attacker],
    clients: &[String],
    start: Instant,
    until: Instant,
) -> Result<Attack, String> {
    let cpu_before = thread_cpu_secs();
    let mut poll = Poll::new().map_err(|e| format!("mio poll: {e}"))?;
    for (i, a) in attackers.iter_mut().enumerate() {
        poll.registry()
            .register(&mut a.stream, Token(i), Interest::WRITABLE)
            .map_err(|e| format!("mio register: {e}"))?;
    }
    let mut lines = Lines { clients, next: 0 };
    let mut report = Attack::default();
    let mut events = Events::with_capacity(1024);
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let wait = (until - now).min(Duration::from_millis(50));
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("mio poll: {e}")),
        }
        for event in events.iter() {
            let Some(a) = attackers.get_mut(event.token().0) else {
                continue;
            };
            if !a.open {
                continue;
            }
            let broken = event.is_error() || event.is_write_closed() || event.is_read_closed();
            if broken || pump(a, &mut lines, &mut report, until).is_err() {
                a.open = false;
                let _ = poll.registry().deregister(&mut a.stream);
                let at = start.elapsed();
                report.dropped += 1;
                report.first_drop.get_or_insert(at);
                report.last_drop = Some(at);
            }
        }
    }
    for a in attackers.iter() {
        let unsent = a.out[a.written..].iter().filter(|&&b| b == b'\n').count() as u64;
        report.lines += a.lines - unsent;
        report.capped += usize::from(a.lines >= MAX_LINES_PER_ATTACKER);
    }
    report.bench_cpu = thread_cpu_secs().zip(cpu_before).map(|(b, a)| b - a);
    Ok(report)
}

/// Writes until the socket takes no more (or this attacker has written its cap).
fn pump(
    a: &mut Attacker,
    lines: &mut Lines,
    report: &mut Attack,
    until: Instant,
) -> io::Result<()> {
    loop {
        if a.written == a.out.len() {
            if a.lines >= MAX_LINES_PER_ATTACKER || Instant::now() >= until {
                return Ok(());
            }
            a.out.clear();
            a.written = 0;
            let batch = 128.min(MAX_LINES_PER_ATTACKER - a.lines);
            for _ in 0..batch {
                lines.push(&mut a.out);
            }
            a.lines += batch;
        }
        match a.stream.write(&a.out[a.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                a.written += n;
                report.bytes += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A new client's IAMAT on a new connection, tried until answered: how long that took from
/// `from`, and how many connections it needed.
fn first_answer(addr: SocketAddr, names: &Names, from: Instant) -> (Option<Duration>, u32) {
    let client = names.client("after", 0);
    let deadline = from + RECOVERY_DEADLINE;
    let mut attempts = 0;
    while Instant::now() < deadline {
        attempts += 1;
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = stream.set_nodelay(true);
        if stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .is_err()
            || stream
                .write_all(&names.iamat(&client, names.now_tick()))
                .is_err()
        {
            continue;
        }
        let mut line = String::new();
        if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("AT ") {
            return (Some(from.elapsed()), attempts);
        }
        thread::sleep(Duration::from_millis(10));
    }
    (None, attempts)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Readings at one moment: the fake's calls, the log's size, CPU of the server, the bench and
/// the machine.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    calls: usize,
    log: u64,
    server_cpu: Option<f64>,
    bench_cpu: Option<f64>,
    machine_cpu: Option<f64>,
}

impl Mark {
    fn take(fake: &FakePlaces, log: &Path, pid: u32) -> Mark {
        Mark {
            at: Instant::now(),
            calls: fake.request_count(),
            log: file_len(log),
            server_cpu: cpu_secs(pid),
            bench_cpu: own_cpu_secs(),
            machine_cpu: machine_cpu_secs(),
        }
    }

    fn secs_to(&self, later: &Mark) -> f64 {
        later.at.duration_since(self.at).as_secs_f64().max(1e-9)
    }

    /// Share of one core used between the marks: (server, bench, everything else).
    fn cpu_to(&self, later: &Mark) -> (Option<f64>, Option<f64>, Option<f64>) {
        let wall = self.secs_to(later);
        let used = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / wall);
        let server = used(self.server_cpu, later.server_cpu);
        let bench = used(self.bench_cpu, later.bench_cpu);
        let machine = used(self.machine_cpu, later.machine_cpu);
        let other = machine
            .zip(server)
            .zip(bench)
            .map(|((m, s), b)| (m - s - b).max(0.0));
        (server, bench, other)
    }
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    let limit = nofile_limit().unwrap_or(0);
    if limit < ATTACKERS as u64 + 1_000 {
        return Err(format!(
            "this process may open only {limit} files, {} wanted (raise the hard limit: \
             ulimit -Hn)",
            ATTACKERS + 1_000
        ));
    }
    let fake = FakePlaces::start();
    fake.set_delay(PLACES_DELAY);
    let places = format!("places url {}", fake.new_api_url());
    let subject = Subject::start(ctx, "hostile", &[&places, "places api new"])?;
    let Subject::Own(herd) = &subject else {
        return Err("needs a server of its own".into());
    };
    let log = herd.log_path(0);
    let addr = subject.addr();
    let pid = subject.pid().ok_or("the server's pid is unknown")?;
    let clients: Vec<String> = (0..CLIENTS as u64)
        .map(|i| ctx.names.client("h", i))
        .collect();
    super::whatsat::seed(&ctx.names, addr, &clients)?;

    let idle_probe = probe(addr, &ctx.names, Instant::now() + ctx.secs(IDLE_PROBE_SECS));
    // The log is flushed at least every 250 ms: let the seeding's lines reach the file.
    thread::sleep(Duration::from_millis(400));
    let rss_idle = rss_bytes(pid).ok_or("cannot read the server's RSS")?;
    let threads_idle = thread_count(pid).unwrap_or(0);

    let connecting = Instant::now();
    let mut attackers = connect_attackers(addr)?;
    let connect_time = connecting.elapsed();

    let window = ctx.secs(ATTACK_SECS);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let until = start + window;
    let before = Mark::take(&fake, &log, pid);
    let outcome = thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_until(pid, start, &stop));
        let prober = scope.spawn(|| probe(addr, &ctx.names, until));
        let attack = attack(&mut attackers, &clients, start, until);
        let during = Mark::take(&fake, &log, pid);
        let attack_end = start.elapsed();
        let queues = socket_queues(addr.port());
        // The probe's last command may still wait (at most PROBE_TIMEOUT).
        let probe = prober.join();

        // Close every attacker at once, then time a new client's first answer.
        let closing = Instant::now();
        drop(std::mem::take(&mut attackers));
        let closed = Instant::now();
        let close_time = closed - closing;
        let closed_mark = Mark::take(&fake, &log, pid);
        let (recovery, attempts) = first_answer(addr, &ctx.names, closed);
        thread::sleep((closed + AFTER_CLOSE).saturating_duration_since(Instant::now()));
        let rss_after = rss_bytes(pid);
        let after = Mark::take(&fake, &log, pid);
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.join().unwrap_or_default();
        let after_start = closed.duration_since(start);
        Ok::<_, String>(Outcome {
            attack: attack?,
            probe: probe.map_err(|_| "the probe panicked".to_string())?,
            samples,
            attack_end,
            queues,
            after_start,
            during,
            closed: closed_mark,
            after,
            close_time,
            recovery,
            attempts,
            rss_after,
        })
    })?;
    let o = outcome;
    push_rows(
        section,
        &Setting {
            window,
            connect_time,
            rss_idle,
            threads_idle,
            before,
        },
        &idle_probe,
        &o,
    );
    Ok(())
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
    before: Mark,
}

fn probe_row(label: String, p: &Probe) -> Row {
    let mut result = format!(
        "{}  ({} sent, {} errors",
        fmt_latency(&p.latency),
        fmt_count(p.sent),
        p.errors()
    );
    if p.errors() > 0 {
        result += &format!(
            ": {} timeouts, {} malformed, {} closed, {} connects failed; first: {}",
            p.timeouts,
            p.malformed,
            p.closed,
            p.connect_failures,
            p.first_error.as_deref().unwrap_or("?")
        );
    }
    result += ")";
    if p.unsent > 0 || p.round_trip.percentile(0.99) >= TARGET_P99 {
        let stats = fmt_stats(&p.round_trip, &[Stat::P50, Stat::P99, Stat::Max], " ");
        result += &format!("  write to reply: {stats}");
    }
    if p.unsent > 0 {
        result += &format!(
            "  {} due but never sent (each waited for the one before)",
            fmt_count(p.unsent)
        );
    }
    if p.write_time.max() >= 1_000_000 {
        let stats = fmt_stats(&p.write_time, &[Stat::P99, Stat::Max], " ");
        result += &format!("  probe writes: {stats}");
    }
    let worst_second = p.p99_by_second.iter().copied().max().unwrap_or(0);
    if p.p99_by_second.len() > 1 {
        result += &format!("  worst second's p99 {}", fmt_ns(worst_second));
    }
    Row::new(label)
        .result(result)
        .figure("rate_per_s", PROBE_RATE)
        .figure("sent", p.sent)
        .figure("unsent", p.unsent)
        .figure("errors", p.errors())
        .figure("timeouts", p.timeouts)
        .figure("malformed", p.malformed)
        .figure("closed", p.closed)
        .figure("connect_failures", p.connect_failures)
        .figure("first_error", p.first_error.clone())
        .figure("p99_by_second_ns", p.p99_by_second.clone())
        .stats(
            "round_trip_",
            &p.round_trip,
            &[Stat::P50, Stat::P99, Stat::Max],
        )
        .stats("write_", &p.write_time, &[Stat::P99, Stat::Max])
        .latency("", &p.latency)
}

fn push_rows(section: &mut Section, s: &Setting, idle: &Probe, o: &Outcome) {
    let in_attack = |x: &&Sample| x.at <= o.attack_end;
    let peak_of = |f: &dyn Fn(&Sample) -> u64, during: bool| {
        o.samples
            .iter()
            .filter(|x| in_attack(x) == during)
            .map(f)
            .max()
            .unwrap_or(0)
    };
    let rss_attack = peak_of(&|x| x.rss, true).max(s.rss_idle);
    let rss_recovery = peak_of(&|x| x.rss, false);
    let rss_peak = rss_attack.max(rss_recovery);
    let threads_peak = peak_of(&|x| x.threads, true);
    let tcp_peak = o.samples.iter().map(|x| x.tcp_bytes).max().unwrap_or(0);
    // The server's CPU per second of the run, from the 100 ms samples.
    let cpu_by_second: Vec<serde_json::Value> = o
        .samples
        .chunks(10)
        .filter_map(|c| {
            let (first, last) = (c.first()?, c.last()?);
            let wall = (last.at - first.at).as_secs_f64();
            (wall > 0.0).then(|| round3((last.cpu - first.cpu) / wall))
        })
        .collect();
    let rss_series: Vec<serde_json::Value> = o
        .samples
        .iter()
        .map(|x| json!((x.rss as f64 / 1048576.0 * 10.0).round() / 10.0))
        .collect();

    let a = &o.attack;
    let secs = s.before.secs_to(&o.during);
    let calls = o.during.calls - s.before.calls;
    let bound = ATTACKERS * in_flight_limit();
    let log_growth = o.during.log.saturating_sub(s.before.log);
    let (srv, bench, other) = s.before.cpu_to(&o.during);
    let srv_secs = o
        .during
        .server_cpu
        .zip(s.before.server_cpu)
        .map(|(b, a)| b - a);
    let mut result = format!(
        "{} WHATSATs written ({}) in {secs:.1} s; {} attackers dropped by the server",
        fmt_count(a.lines),
        fmt_bytes(a.bytes as f64),
        fmt_count(a.dropped as u64),
    );
    if let (Some(first), Some(last)) = (a.first_drop, a.last_drop) {
        result += &format!(
            " (from {:.1} s to {:.1} s)",
            first.as_secs_f64(),
            last.as_secs_f64()
        );
    }
    result += &format!(
        "  RSS idle {} -> peak {}  threads {} -> {}  CPU srv {} ({:.1} s) bench {} other {}  \
         Places calls {} ({:.0}/s; bound {})  log +{} ({}/s)  kernel TCP memory peak {}",
        fmt_bytes(s.rss_idle as f64),
        fmt_bytes(rss_attack as f64),
        s.threads_idle,
        threads_peak,
        fmt_share(srv),
        srv_secs.unwrap_or(0.0),
        fmt_share(bench),
        fmt_share(other),
        fmt_count(calls as u64),
        calls as f64 / secs,
        fmt_count(bound as u64),
        fmt_bytes(log_growth as f64),
        fmt_bytes(log_growth as f64 / secs),
        fmt_bytes(tcp_peak as f64),
    );
    if let Some(q) = o.queues {
        result += &format!(
            " (at the end: server side {} unread input + {} output untaken, attackers' side {} \
             unsent + {} unread)",
            fmt_bytes(q.server_rx as f64),
            fmt_bytes(q.server_tx as f64),
            fmt_bytes(q.client_tx as f64),
            fmt_bytes(q.client_rx as f64)
        );
    }
    let label = format!(
        "{} non-reading WHATSAT pipeliners, {:.1} s, Places {}, bound {BOUND}",
        fmt_count(ATTACKERS as u64),
        s.window.as_secs_f64(),
        fmt_duration(PLACES_DELAY)
    );
    section.rows.push(
        Row::new(label)
            .result(result)
            .figure("attackers", ATTACKERS)
            .figure("connect_s", round3(s.connect_time.as_secs_f64()))
            .figure("window_s", round3(secs))
            .figure("whatsats_written", a.lines)
            .figure("bytes_written", a.bytes)
            .figure("attackers_capped", a.capped)
            .figure("attackers_dropped", a.dropped)
            .figure(
                "first_drop_s",
                a.first_drop.map(|d| round3(d.as_secs_f64())),
            )
            .figure("last_drop_s", a.last_drop.map(|d| round3(d.as_secs_f64())))
            .figure("rss_idle_bytes", s.rss_idle)
            .figure("rss_peak_attack_bytes", rss_attack)
            .figure("rss_peak_bytes", rss_peak)
            .figure("threads_idle", s.threads_idle)
            .figure("threads_peak", threads_peak)
            .figure("server_cpu", srv.map(round3))
            .figure("server_cpu_s", srv_secs.map(round3))
            .figure("bench_cpu", bench.map(round3))
            .figure("attack_thread_cpu_s", a.bench_cpu.map(round3))
            .figure("other_cpu", other.map(round3))
            .figure("server_cpu_by_second", cpu_by_second)
            .figure("rss_mib_every_100ms", rss_series)
            .figure("places_calls", calls)
            .figure("places_calls_per_s", calls as f64 / secs)
            .figure("places_calls_bound", bound)
            .figure("log_growth_bytes", log_growth)
            .figure("kernel_tcp_mem_peak_bytes", tcp_peak)
            .figure("queued_server_rx_bytes", o.queues.map(|q| q.server_rx))
            .figure("queued_server_tx_bytes", o.queues.map(|q| q.server_tx))
            .figure("queued_attackers_tx_bytes", o.queues.map(|q| q.client_tx))
            .figure("queued_attackers_rx_bytes", o.queues.map(|q| q.client_rx))
            .check(
                format!(
                    "peak RSS < 300 MiB, attack and {} after (is {})",
                    fmt_duration(AFTER_CLOSE),
                    fmt_bytes(rss_peak as f64)
                ),
                rss_peak < TARGET_RSS,
            )
            .check(
                format!(
                    "Places calls <= {} x {} = {} (is {})",
                    fmt_count(ATTACKERS as u64),
                    in_flight_limit(),
                    fmt_count(bound as u64),
                    fmt_count(calls as u64)
                ),
                calls <= bound,
            ),
    );

    section.rows.push(probe_row(
        format!("probe IAMAT C=1 P=1 paced {PROBE_RATE:.0}/s, idle server (before)"),
        idle,
    ));
    let p = &o.probe;
    let p99 = p.latency.percentile(0.99);
    section.rows.push(
        probe_row(
            format!("probe IAMAT C=1 P=1 paced {PROBE_RATE:.0}/s, during the attack"),
            p,
        )
        .check(
            format!("probe p99 < 10 ms (is {})", fmt_ns(p99)),
            p.latency.count() > 0 && p99 < TARGET_P99,
        )
        .check(
            format!("no probe error (is {})", p.errors()),
            p.errors() == 0,
        ),
    );

    let calls_after = o.after.calls - o.closed.calls;
    let log_after = o.after.log.saturating_sub(o.during.log);
    let (srv_after, _, _) = o.closed.cpu_to(&o.after);
    let mut result = format!(
        "closed in {}; a new client's IAMAT answered {}",
        fmt_duration(o.close_time),
        match o.recovery {
            Some(d) => format!("after {} ({} connection(s))", fmt_duration(d), o.attempts),
            None => format!(
                "not within {} ({} connections tried)",
                fmt_duration(RECOVERY_DEADLINE),
                o.attempts
            ),
        }
    );
    result += &format!(
        "  RSS {} after: {} (peak {} meanwhile)  srv CPU {}  Places calls {}  log +{}",
        fmt_duration(AFTER_CLOSE),
        o.rss_after.map_or("?".into(), |r| fmt_bytes(r as f64)),
        fmt_bytes(rss_recovery as f64),
        fmt_share(srv_after),
        fmt_count(calls_after as u64),
        fmt_bytes(log_after as f64)
    );
    section.rows.push(
        Row::new(format!(
            "recovery: all {} closed at once",
            fmt_count(ATTACKERS as u64)
        ))
        .result(result)
        .figure("close_ms", round3(o.close_time.as_secs_f64() * 1e3))
        .figure("closed_at_s", round3(o.after_start.as_secs_f64()))
        .figure(
            "first_answer_ms",
            o.recovery.map(|d| round3(d.as_secs_f64() * 1e3)),
        )
        .figure("first_answer_connections", o.attempts)
        .figure("rss_after_bytes", o.rss_after)
        .figure("rss_peak_after_close_bytes", rss_recovery)
        .figure("server_cpu_after_close", srv_after.map(round3))
        .figure("places_calls_after_close", calls_after)
        .figure("log_growth_after_bytes", log_after),
    );
}
