//! Reading the servers' logs after a herd run (README "Logs": `TIMESTAMP LEVEL recv conn=N
//! [peer=NAME] LINE`, parsed by the shared harness's `traffic`): how many peer messages named the timed updates' clients, and when each
//! server first received each update by its own clock, measured from the origin's `recv` of the
//! IAMAT. A cross-check of the protocol-observed times that adds no traffic. Reads files only.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use herd_test_support::harness::traffic;

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
    let mut taken: HashMap<&str, i128> = HashMap::new();
    // Per client: the latest, over servers, of each server's first receipt, and how many
    // servers received it.
    let mut last_receipt: HashMap<&str, (i128, usize)> = HashMap::new();
    for (index, name) in names.iter().enumerate() {
        let path = dir.join(format!("{name}.log"));
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut first_here: HashMap<&str, i128> = HashMap::new();
        for record in text.lines().filter_map(traffic).filter(|r| r.received) {
            let mut words = record.line.split(' ');
            let command = words.next().unwrap_or("");
            let Some(client) = words.find_map(|w| wanted.get(w).copied()) else {
                continue;
            };
            if record.peer.is_some() {
                *scan.messages.entry(client.to_string()).or_insert(0) += 1;
                if index != origin {
                    first_here.entry(client).or_insert(record.nanos);
                }
            } else if command == "IAMAT" && index == origin {
                taken.entry(client).or_insert(record.nanos);
            }
        }
        for (client, ns) in first_here {
            let entry = last_receipt.entry(client).or_insert((i128::MIN, 0));
            entry.0 = entry.0.max(ns);
            entry.1 += 1;
        }
    }
    for (client, (last, servers)) in last_receipt {
        if let (true, Some(&start)) = (servers + 1 == names.len(), taken.get(client)) {
            let spread = u64::try_from(last - start).unwrap_or(0);
            scan.spread_ns.insert(client.to_string(), spread);
        }
    }
    Ok(scan)
}
