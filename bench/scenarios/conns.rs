//! Scenario 4: 10,000 idle connections held open on one server (`limit connections 20000`).
//! Are they all accepted (the server's open descriptors, then one `? ` round trip on each), what
//! does each cost in RSS (measured before any of them speaks), and what is IAMAT latency on one
//! more connection beside them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::commands::IamatLoad;
use crate::herd::{fd_count, need_open_files, rss_bytes};
use crate::load::{run_load, LoadSpec};
use crate::report::{fmt_bytes, fmt_count, Row, Section};
use crate::scenarios::{load_row, Ctx, Subject};

const IDLE: usize = 10_000;

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("4 conns", "10,000 idle connections");
    match measure(ctx, &mut section) {
        Ok(()) => section,
        Err(why) => section.unavailable(why),
    }
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    need_open_files(IDLE as u64 + 200)?;
    let subject = Subject::start(ctx, "conns", &["limit connections 20000"])?;
    let addr = subject.addr();
    let pid = subject.pid();
    let rss_before = pid.and_then(rss_bytes);
    let fds_before = pid.and_then(fd_count);

    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut idle = Vec::with_capacity(IDLE);
    let mut failures = 0;
    let mut first_failure = None;
    while idle.len() < IDLE && Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(stream) => idle.push(stream),
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert_with(|| format!("after {}: {e}", idle.len()));
            }
        }
        if failures > 100 {
            break;
        }
    }
    let connected = idle.len();
    let connecting = started.elapsed();

    // Accepted: the server holds a descriptor for each (bounded wait while it catches up).
    let accepted = pid.and_then(|pid| {
        let wait_until = Instant::now() + Duration::from_secs(10);
        loop {
            let held = fd_count(pid)?.saturating_sub(fds_before?);
            if held >= connected || Instant::now() >= wait_until {
                return Some(held.min(connected));
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    thread::sleep(Duration::from_millis(200));
    let rss_after = pid.and_then(rss_bytes);

    let spec = LoadSpec::new(addr, 1, 1, ctx.secs(2.0)).server(pid);
    let beside = run_load(&spec, &mut IamatLoad::cycling(&ctx.names, 1))?;

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
