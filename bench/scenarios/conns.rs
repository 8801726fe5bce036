//! Scenario 4: 10,000 idle connections held open on one server (`limit connections 20000`).
//! Are they all accepted (the server's open descriptors, then one `? ` round trip on each), what
//! does each cost in RSS (measured before any of them speaks), and what is IAMAT latency on one
//! more connection beside them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::herd::{fd_count, need_open_files, rss_bytes};
use crate::report::{fmt_bytes, fmt_count, Row, Section};
use crate::scenarios::{iamat_load, load_row, Ctx, Subject};

const IDLE: usize = 10_000;

pub fn run(ctx: &Ctx) -> Section {
    Section::new("4 conns", "10,000 idle connections").measured(|section| measure(ctx, section))
}

/// The idle connections opened, how long that took, and the connects that failed.
struct Idle {
    streams: Vec<TcpStream>,
    took: Duration,
    failures: usize,
    first_failure: Option<String>,
}

/// Opens up to `IDLE` connections in at most 60 s, giving up after 100 failed connects.
fn open_idle(addr: SocketAddr) -> Idle {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut idle = Idle {
        streams: Vec::with_capacity(IDLE),
        took: Duration::ZERO,
        failures: 0,
        first_failure: None,
    };
    while idle.streams.len() < IDLE && Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(stream) => idle.streams.push(stream),
            Err(e) => {
                idle.failures += 1;
                let after = idle.streams.len();
                idle.first_failure
                    .get_or_insert_with(|| format!("after {after}: {e}"));
            }
        }
        if idle.failures > 100 {
            break;
        }
    }
    idle.took = started.elapsed();
    idle
}

/// How many of `connected` connections the server holds a descriptor for, beyond the
/// `before` it held (waiting at most 10 s while it catches up); `None` without its pid.
fn accepted(pid: Option<u32>, before: Option<usize>, connected: usize) -> Option<usize> {
    let pid = pid?;
    let wait_until = Instant::now() + Duration::from_secs(10);
    loop {
        let held = fd_count(pid)?.saturating_sub(before?);
        if held >= connected || Instant::now() >= wait_until {
            return Some(held.min(connected));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    need_open_files(IDLE as u64 + 200)?;
    let subject = Subject::start(ctx, "conns", &["limit connections 20000"])?;
    let addr = subject.addr();
    let pid = subject.pid();
    let rss_before = pid.and_then(rss_bytes);
    let fds_before = pid.and_then(fd_count);

    let Idle {
        streams: mut idle,
        took: connecting,
        failures,
        first_failure,
    } = open_idle(addr);
    let connected = idle.len();
    // Accepted: the server holds a descriptor for each.
    let accepted = accepted(pid, fds_before, connected);
    thread::sleep(Duration::from_millis(200));
    let rss_after = pid.and_then(rss_bytes);

    let beside = iamat_load(ctx, subject.server(), (1, 1), 2.0, None)?;

    let answered = probe_all(&mut idle);
    drop(idle);

    let per_conn = match (rss_before, rss_after) {
        (Some(before), Some(after)) => Some((after as f64 - before as f64) / IDLE as f64),
        _ => None,
    };
    let mut result = format!(
        "connected {} in {:.1} s, accepted {}, answered {}",
        fmt_count(connected as u64),
        connecting.as_secs_f64(),
        accepted.map_or("?".into(), |a| fmt_count(a as u64)),
        fmt_count(answered as u64)
    );
    if let Some(per_conn) = per_conn {
        result += &format!("  RSS {} per connection", fmt_bytes(per_conn));
    }
    if let Some(why) = first_failure {
        result += &format!("  ({failures} connects failed, the first {why})");
    }
    let all_accepted = connected == IDLE && answered == IDLE && accepted.is_none_or(|a| a == IDLE);
    let mut row = Row::new("10,000 idle connections")
        .result(result)
        .figure("connected", connected)
        .figure("accepted", accepted)
        .figure("answered", answered)
        .figure("rss_before_bytes", rss_before)
        .figure("rss_after_bytes", rss_after)
        .figure("rss_per_connection_bytes", per_conn.map(|b| b.round()))
        .check("all 10,000 accepted", all_accepted);
    row = match per_conn {
        Some(bytes) => row.check("<= 4 KiB RSS each", bytes <= 4096.0),
        None => row.check("<= 4 KiB RSS each (no server pid: not measured)", false),
    };
    section.rows.push(row);
    section
        .rows
        .push(load_row("IAMAT C=1 P=1 beside them", &beside));
    Ok(())
}

/// Sends one invalid line on every connection and counts the `? ` replies: each connection
/// is served, not just queued in the kernel.
fn probe_all(conns: &mut [TcpStream]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    for conn in conns.iter_mut() {
        let _ = conn.write_all(b"PING\n");
    }
    let mut answered = 0;
    let mut buf = [0u8; 64];
    for conn in conns.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            break;
        }
        let mut got = Vec::new();
        while !got.contains(&b'\n') {
            match conn.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        if got.starts_with(b"? PING") {
            answered += 1;
        }
    }
    answered
}
