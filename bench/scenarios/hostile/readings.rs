//! What /proc says during the attack: the server's RSS, threads and CPU, the kernel's TCP
//! buffer memory (every 100 ms), and the bytes queued on the loopback connections to the
//! server's port (at the window's end). Reads files only.

use std::fs;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::{PAGE, SAMPLE_EVERY};
use crate::herd::{cpu_secs, rss_bytes, thread_count};
use crate::sample::sample_until;

/// /proc readings of the server (and the kernel's TCP memory), `at` after the attack began.
#[derive(Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub rss: u64,
    pub threads: u64,
    /// CPU seconds the server has used so far.
    pub cpu: f64,
    pub tcp_bytes: u64,
}

/// Samples the server every `SAMPLE_EVERY` until `stop`.
pub fn sample_server(pid: u32, start: Instant, stop: &AtomicBool) -> Vec<Sample> {
    sample_until(SAMPLE_EVERY, stop, || {
        Some(Sample {
            rss: rss_bytes(pid)?,
            cpu: cpu_secs(pid)?,
            at: start.elapsed(),
            threads: thread_count(pid).unwrap_or(0),
            tcp_bytes: tcp_mem_bytes().unwrap_or(0),
        })
    })
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
pub struct Queues {
    pub server_rx: u64,
    pub server_tx: u64,
    pub client_tx: u64,
    pub client_rx: u64,
}

pub fn socket_queues(port: u16) -> Option<Queues> {
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
