//! `herd status CONFIG [--watch]`: reads every server's metrics page (the `metrics` lines of
//! the config), twice about a second apart for the rates, and prints one table of the herd
//! ([`table`]). The exit status is 0 only when every server answered and every one of its
//! links is up, so scripts and health checks can use it. `--watch` redraws every second
//! until Ctrl-C, with rates since the previous redraw.
//!
//! This is a command-line tool, not the server: it uses blocking sockets with short
//! timeouts, one thread per server so that a server that does not answer costs its timeout
//! once, not once per server. What a page says and how the table looks are pure
//! ([`exposition`], [`table`]).

pub mod exposition;
pub mod table;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use exposition::Scrape;
use table::{Observed, Row};

/// How long a server gets to accept the connection, and then to send its whole page.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The most of a page read (a server's page is a few kilobytes).
const MAX_PAGE_BYTES: u64 = 4 << 20;
/// Between the two pages a single table compares, and between redraws.
const INTERVAL: Duration = Duration::from_secs(1);

/// Runs the command; returns the exit status.
pub fn run(config: &Config, watch: bool) -> u8 {
    let stop = Arc::new(AtomicBool::new(false));
    if watch {
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Without the flag Ctrl-C would still stop it, only without a clean exit status.
            let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
        }
    }
    let mut before = scrape_all(config);
    let mut before_at = Instant::now();
    // Until a table is drawn nothing is known to be well.
    let mut status = 1;
    loop {
        sleep_unless(&stop, INTERVAL);
        if stop.load(Ordering::Relaxed) {
            return status;
        }
        let now = scrape_all(config);
        let now_at = Instant::now();
        let secs = now_at.duration_since(before_at).as_secs_f64();
        let rows = rows(config, &now, &before, secs);
        status = if rows.iter().all(Row::is_well) { 0 } else { 1 };
        let mut out = std::io::stdout().lock();
        if watch {
            // Clear the screen and go home, then the table and when it was read.
            let _ = write!(out, "\x1b[H\x1b[2J");
        }
        let _ = out.write_all(table::render(&rows).as_bytes());
        if watch {
            let _ = writeln!(
                out,
                "\n{}  (every {} s; Ctrl-C stops)",
                stamp(),
                INTERVAL.as_secs()
            );
        }
        let _ = out.flush();
        if !watch || stop.load(Ordering::Relaxed) {
            return status;
        }
        (before, before_at) = (now, now_at);
    }
}

/// The rows of the table, in config order: each server's latest page against its page before.
fn rows(config: &Config, now: &[Observed], before: &[Observed], secs: f64) -> Vec<Row> {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    config
        .servers
        .iter()
        .zip(now.iter().zip(before))
        .map(|(server, (now, before))| {
            let before = match before {
                Observed::Page(page) => Some((page, secs)),
                _ => None,
            };
            table::row(&server.name, now, before, unix_now)
        })
        .collect()
}

/// Every server's page, read at once (one thread each), in config order.
fn scrape_all(config: &Config) -> Vec<Observed> {
    thread::scope(|scope| {
        let handles: Vec<_> = config
            .servers
            .iter()
            .map(|server| {
                let addr = config.metrics_addr(&server.name);
                scope.spawn(move || match addr {
                    None => Observed::NoMetrics,
                    Some(addr) => match scrape(addr) {
                        Ok(page) => Observed::Page(page),
                        Err(why) => Observed::Down(format!("{addr}: {why}")),
                    },
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Observed::Down("scrape failed".into()))
            })
            .collect()
    })
}

/// `GET /metrics` from `addr`: the page, or why not.
pub fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(READ_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let request =
        format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: herd-status\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(MAX_PAGE_BYTES)
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8(response).map_err(|_| "the answer is not UTF-8".to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "no HTTP answer".to_string())?;
    let status_line = head.lines().next().unwrap_or("");
    if status_line.split(' ').nth(1) != Some("200") {
        return Err(format!("answered '{status_line}'"));
    }
    Scrape::parse(body)
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The time of a redraw, `HH:MM:SS` UTC.
fn stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}
