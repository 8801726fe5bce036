//! Reading the servers' logs after a herd run (README "Logs": `TIMESTAMP LEVEL recv conn=N
//! [peer=NAME] LINE`): how many peer messages named the timed updates' clients, and when each
//! server first received each update by its own clock, measured from the origin's `recv` of the
//! IAMAT. A cross-check of the protocol-observed times that adds no traffic. Reads files only.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use crate::hist::Histogram;

#[derive(Default)]
pub struct LogScan {
    /// Per client: `recv` records that are not client commands (IAMAT, WHATSAT) naming it.
    messages: HashMap<String, u64>,
    /// Per client seen by every server: the last server's first receipt minus the origin's
    /// receipt of the IAMAT.
    spread_ns: HashMap<String, u64>,
}

impl LogScan {
    pub fn messages(&self, clients: &[String]) -> u64 {
        clients.iter().filter_map(|c| self.messages.get(c)).sum()
    }

    pub fn spreads(&self, clients: &[String]) -> Histogram {
        let mut hist = Histogram::default();
        for ns in clients.iter().filter_map(|c| self.spread_ns.get(c)) {
            hist.record(*ns);
        }
        hist
    }
}

/// Scans `NAME.log` in `dir` for every server; `origin` is the index of the server that took the
/// IAMATs for `clients`.
pub fn scan_logs(
    dir: &Path,
    names: &[String],
    origin: usize,
    clients: &[String],
) -> Result<LogScan, String> {
    let wanted: HashSet<&str> = clients.iter().map(String::as_str).collect();
    let mut scan = LogScan::default();
    let mut taken: HashMap<&str, u64> = HashMap::new();
    // Per client: the latest, over servers, of each server's first receipt, and how many
    // servers received it.
    let mut last_receipt: HashMap<&str, (u64, usize)> = HashMap::new();
    for (index, name) in names.iter().enumerate() {
        let path = dir.join(format!("{name}.log"));
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut first_here: HashMap<&str, u64> = HashMap::new();
        for line in text.lines() {
            let Some(at) = line.find(" recv ") else {
                continue;
            };
            let mut words = line[at + 6..].split_whitespace();
            let _connection = words.next();
            let message: Vec<&str> = words.filter(|w| !w.starts_with("peer=")).collect();
            let Some(client) = message.iter().find_map(|w| wanted.get(*w).copied()) else {
                continue;
            };
            let command = message.first().copied().unwrap_or("");
            let Some(ns) = line.split_whitespace().next().and_then(parse_timestamp) else {
                continue;
            };
            if command == "IAMAT" {
                if index == origin {
                    taken.entry(client).or_insert(ns);
                }
            } else if command != "WHATSAT" {
                *scan.messages.entry(client.to_string()).or_insert(0) += 1;
                if index != origin {
                    first_here.entry(client).or_insert(ns);
                }
            }
        }
        for (client, ns) in first_here {
            let entry = last_receipt.entry(client).or_insert((0, 0));
            entry.0 = entry.0.max(ns);
            entry.1 += 1;
        }
    }
    for (client, (last, servers)) in last_receipt {
        if let (true, Some(&start)) = (servers + 1 == names.len(), taken.get(client)) {
            scan.spread_ns
                .insert(client.to_string(), last.saturating_sub(start));
        }
    }
    Ok(scan)
}

/// `2026-11-23T14:24:32.47344495Z` -> nanoseconds from a fixed origin (differences only).
fn parse_timestamp(text: &str) -> Option<u64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<u64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (parts.next()??, parts.next()??, parts.next()??);
    let mut nanos = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u64::from(digit.checked_sub(b'0')?) * 10u64.pow(8 - i as u32);
    }
    // Days counted with years starting in March, so February's length falls at a year's end.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + day;
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(secs * 1_000_000_000 + nanos)
}
