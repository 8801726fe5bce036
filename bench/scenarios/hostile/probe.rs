//! The probe beside the attack: IAMATs paced at `PROBE_RATE` on one blocking connection, one at
//! a time, each timed from when it was due; the row that shows what it saw; and, after the
//! attackers are closed, a new client's first answer. Client traffic only.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::{PROBE_RATE, PROBE_TIMEOUT, RECOVERY_DEADLINE, TARGET_P99};
use crate::commands::Names;
use crate::hist::Histogram;
use crate::report::{fmt_count, fmt_duration, fmt_latency, fmt_ns, fmt_stats, Row, Stat};

/// What the probe saw.
#[derive(Default)]
pub struct Probe {
    pub latency: Histogram,
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

/// Why a probe IAMAT got no good answer; each ends the probe's connection (a new one is
/// opened for the next).
enum Failure {
    /// No reply `PROBE_TIMEOUT` after the write began, or the write itself took that long.
    Timeout(String),
    /// A reply that is not the AT line of the probe's client.
    Malformed(String),
    Closed(String),
    /// The socket refused a setting: not the server's doing, not counted.
    Setup,
}

impl Probe {
    pub fn errors(&self) -> u64 {
        self.timeouts + self.malformed + self.closed + self.connect_failures
    }

    fn error(&mut self, why: String) {
        self.first_error.get_or_insert(why);
    }

    fn fail(&mut self, failure: Failure) {
        let (count, why) = match failure {
            Failure::Timeout(why) => (&mut self.timeouts, why),
            Failure::Malformed(why) => (&mut self.malformed, why),
            Failure::Closed(why) => (&mut self.closed, why),
            Failure::Setup => return,
        };
        *count += 1;
        self.error(why);
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
pub fn probe(addr: SocketAddr, names: &Names, until: Instant) -> Probe {
    let mut probe = Probe::default();
    let client = names.client("probe", 0);
    let start = Instant::now();
    let mut second = Histogram::default();
    let mut second_no = 0u64;
    let mut conn: Option<ProbeConn> = None;
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
        let c = match conn.take().map_or_else(|| probe_connect(addr), Ok) {
            Ok(c) => conn.insert(c),
            Err(e) => {
                probe.connect_failures += 1;
                probe.error(format!("connect: {e}"));
                continue;
            }
        };
        let command = names.iamat(&client, names.now_tick());
        match exchange(c, &command, &client, &mut probe.write_time) {
            Ok(writing) => {
                let ns = due.elapsed().as_nanos() as u64;
                probe.latency.record(ns);
                probe.round_trip.record(writing.elapsed().as_nanos() as u64);
                second.record(ns);
            }
            Err(failure) => {
                probe.fail(failure);
                conn = None;
            }
        }
    }
    if second.count() > 0 {
        probe.p99_by_second.push(second.percentile(0.99));
    }
    probe
}

/// Writes one IAMAT and reads its reply (owed within `PROBE_TIMEOUT` of the write's start);
/// when the write began, if the reply was the client's AT line. Every write's time is recorded.
fn exchange(
    (stream, reader): &mut ProbeConn,
    command: &[u8],
    client: &str,
    write_time: &mut Histogram,
) -> Result<Instant, Failure> {
    let writing = Instant::now();
    let wrote = stream.write_all(command);
    let took = writing.elapsed();
    write_time.record(took.as_nanos() as u64);
    match wrote {
        Ok(()) => {}
        Err(e) if timed_out(&e) => {
            let why = format!("the write took over {}", fmt_duration(PROBE_TIMEOUT));
            return Err(Failure::Timeout(why));
        }
        Err(e) => return Err(Failure::Closed(format!("write: {e}"))),
    }
    let left = PROBE_TIMEOUT.saturating_sub(took);
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|_| Failure::Setup)?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(Failure::Closed(
            "the server closed the probe's connection".into(),
        )),
        Ok(_) if line.starts_with("AT ") && line.contains(client) && line.ends_with('\n') => {
            Ok(writing)
        }
        Ok(_) => Err(Failure::Malformed(format!("reply: {}", line.trim_end()))),
        Err(e) if timed_out(&e) => Err(Failure::Timeout(format!(
            "no reply within {}",
            fmt_duration(PROBE_TIMEOUT)
        ))),
        Err(e) => Err(Failure::Closed(format!("read: {e}"))),
    }
}

/// A blocking socket's timeout shows as either kind, depending on the platform.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A new client's IAMAT on a new connection, tried until answered: how long that took from
/// `from`, and how many connections it needed.
pub fn first_answer(addr: SocketAddr, names: &Names, from: Instant) -> (Option<Duration>, u32) {
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

/// The probe's latency from due, its errors, and what explains a slow figure when there is
/// one (write to reply, sends never made, slow writes, the worst second).
pub fn probe_row(label: String, p: &Probe) -> Row {
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
        let stats = fmt_stats(&p.round_trip, &[Stat::P50, Stat::P99, Stat::MAX], " ");
        result += &format!("  write to reply: {stats}");
    }
    if p.unsent > 0 {
        result += &format!(
            "  {} due but never sent (each waited for the one before)",
            fmt_count(p.unsent)
        );
    }
    if p.write_time.max() >= 1_000_000 {
        let stats = fmt_stats(&p.write_time, &[Stat::P99, Stat::MAX], " ");
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
            &[Stat::P50, Stat::P99, Stat::MAX],
        )
        .stats("write_", &p.write_time, &[Stat::P99, Stat::MAX])
        .latency("", &p.latency)
}
