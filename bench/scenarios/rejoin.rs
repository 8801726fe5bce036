//! Scenario 14: rejoin at scale (resync by difference, docs/protocol.md "Coming back up to
//! date"). The five servers and six links of the shipped topology, each with `store dir`,
//! `log lines off` and a metrics port; each direction of each of Bona's three links goes
//! through a byte-counting relay in this process (tests/support/src/wan.rs, no delay), so what
//! crossed Bona's links is counted on the wire, hellos, marks and pings included.
//!
//! 1. 1,000,000 clients (`--clients N` for another count, a quarter with `--quick`) are loaded
//!    at Campbell, pipelined (C=16 P=256, every IAMAT a new client), until every server knows
//!    them all and holds every neighbour's history up to that neighbour's newest version
//!    (`herd_neighbour_version_held{neighbour}` = the neighbour's `herd_version`).
//! 2. Idle: 20 s with no load and `peer check-ms` at its default: bytes a second on each of
//!    Bona's links (both connections, both ways, from the relays), and every server's
//!    `herd_sent_bytes_total` summed over the herd and divided by its six links.
//! 3. Rejoin: Bona is killed (SIGKILL); 10,000 updates are taken at Campbell (5,000 of known
//!    clients, 5,000 new ones) and reach the four others; Bona is restarted from its store.
//!    Figures: records its neighbours sent it after the restart (their
//!    `herd_link_records_sent_total{link="Bona"}`, before and after), records Bona sent, bytes
//!    on its links (the relays), the time from spawn to listening, from spawn to current (it
//!    knows every client and holds each neighbour's history up to that neighbour's newest
//!    version), and its own store-read time (`store ...: N clients from M lines ... in X ms`).
//! 4. The same again with Bona's store deleted before the restart: a full copy, for
//!    comparison.

use std::fs;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use herd_test_support::harness::{free_ports, poll_every, read_lossy};
use herd_test_support::metrics::{sample, scrape};
use herd_test_support::wan::{LinkShape, Relay};

use crate::commands::{IamatLoad, Names};
use crate::cpu::CpuMark;
use crate::herd::{cpu_secs, refused_places_url, Herd, HerdConfig};
use crate::load::{run_load, Expect, LoadSpec, Workload};
use crate::report::{fmt_bytes, fmt_count, fmt_rate, Row, Section};
use crate::scenarios::{five_servers, Ctx};

/// Clients known before the fault (`--clients` overrides it).
const CLIENTS: u64 = 1_000_000;
/// Updates taken while Bona is down: of clients every server knows, and of new ones.
const MISSED_KNOWN: u64 = 5_000;
const MISSED_NEW: u64 = 5_000;
const REJOINING: &str = "Bona";
const ORIGIN: &str = "Campbell";
/// The idle window.
const IDLE_SECS: f64 = 20.0;
/// Targets of issue 18.
const CURRENT_TARGET: Duration = Duration::from_secs(1);
const IDLE_TARGET_BYTES_PER_SEC: f64 = 1000.0;
/// The initial load: connections x commands in flight.
const LOAD: (usize, usize) = (16, 256);
/// How long the herd gets to take and spread the clients (the load included).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often "caught up" and "current" are looked for.
const CONVERGE_POLL: Duration = Duration::from_millis(50);
const CURRENT_POLL: Duration = Duration::from_millis(2);

pub fn run(ctx: &Ctx) -> Section {
    Section::new(
        "14 rejoin",
        "a server restarted after missing 10,000 updates",
    )
    .measured(|section| measure(ctx, section))
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    if ctx.target.is_some() {
        return Err(
            "starts, kills and restarts servers of its own; --target does not apply".into(),
        );
    }
    let clients = ctx.clients.unwrap_or(ctx.count(CLIENTS as usize) as u64);
    if clients < MISSED_KNOWN {
        return Err(format!("needs at least {MISSED_KNOWN} clients (--clients)"));
    }
    let mut herd = Rejoin::start(ctx)?;
    let loaded = herd.load(ctx, clients)?;
    section.notes.push(loaded);
    section.rows.extend(herd.idle(ctx.secs(IDLE_SECS))?);
    let mut total = clients;
    for (round, wipe) in [(1, false), (2, true)] {
        total += MISSED_NEW;
        let row = herd.rejoin(&ctx.names, clients, total, round, wipe)?;
        section.rows.push(row);
        if round == 1 {
            let all: Vec<usize> = (0..herd.names.len()).collect();
            herd.wait_caught_up(&all, total, CONVERGE_TIMEOUT)?;
        }
    }
    section.notes.push(format!(
        "each link of {REJOINING} runs through two relays of this process (one per \
         connection, no delay): its bytes count every line, pings and marks included"
    ));
    Ok(())
}

/// One relayed direction of one of Bona's links: `from`'s connection to `to`.
struct Relayed {
    from: usize,
    to: usize,
    relay: Relay,
}

/// What the relays had carried at one moment: per relay, to its target and back.
type RelayBytes = Vec<(u64, u64)>;

/// The herd, Bona's links relayed. Fields drop in order: the servers are killed before the
/// relays between them stop.
struct Rejoin {
    herd: Herd,
    relays: Vec<Relayed>,
    metrics: Vec<SocketAddr>,
    names: Vec<String>,
    links: Vec<(usize, usize)>,
    bona: usize,
    origin: usize,
}

impl Rejoin {
    fn start(ctx: &Ctx) -> Result<Rejoin, String> {
        let (names, links) = five_servers();
        let index = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .ok_or(format!("no {name} in the herd"))
        };
        let (bona, origin) = (index(REJOINING)?, index(ORIGIN)?);
        let mut config = HerdConfig::new(&names, &links)?;
        // Servers and metrics ports drawn together, so that no two are the same.
        let ports = free_ports(2 * names.len())?;
        config.addrs = ports[..names.len()].to_vec();
        let metrics = ports[names.len()..].to_vec();
        config = config
            .with(&refused_places_url()?)
            .with("store dir store")
            .with("log lines off");
        for (name, addr) in names.iter().zip(&metrics) {
            config = config.with(&format!("metrics {name} {addr}"));
        }
        let mut relays = Vec::new();
        for &(a, b) in &links {
            if a != bona && b != bona {
                continue;
            }
            for (from, to) in [(a, b), (b, a)] {
                let listen = SocketAddr::from(([127, 0, 0, 1], 0));
                let relay = Relay::start(listen, config.addrs[to], LinkShape::delay_ms(0))?;
                config.routes.push((from, to, relay.addr()));
                relays.push(Relayed { from, to, relay });
            }
        }
        let herd = Herd::start(&ctx.bin, config, "rejoin")?;
        Ok(Rejoin {
            herd,
            relays,
            metrics,
            names,
            links,
            bona,
            origin,
        })
    }

    fn neighbours(&self, i: usize) -> Vec<usize> {
        self.links
            .iter()
            .filter_map(|&(a, b)| match (a == i, b == i) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn page(&self, i: usize) -> Result<String, String> {
        scrape(self.metrics[i]).map_err(|e| format!("{} metrics: {e}", self.names[i]))
    }

    fn value(page: &str, name: &str, labels: &str) -> f64 {
        sample(page, name, labels).unwrap_or(0.0)
    }

    /// Whether each of `servers` knows `total` clients and holds the history of each of its
    /// neighbours among `servers` up to that neighbour's newest version; Err says who is not.
    fn caught_up(&self, servers: &[usize], total: u64) -> Result<(), String> {
        let mut pages = vec![None; self.names.len()];
        for &i in servers {
            pages[i] = Some(self.page(i)?);
        }
        for &i in servers {
            let page = pages[i].as_deref().unwrap_or_default();
            let known = Self::value(page, "herd_clients_known", "") as u64;
            if known != total {
                return Err(format!("{} knows {known} of {total}", self.names[i]));
            }
            for n in self.neighbours(i) {
                let Some(theirs) = pages[n].as_deref() else {
                    continue;
                };
                let newest = Self::value(theirs, "herd_version", "");
                let label = format!("neighbour=\"{}\"", self.names[n]);
                let held = Self::value(page, "herd_neighbour_version_held", &label);
                if held != newest {
                    return Err(format!(
                        "{} holds {}'s history to {held} of {newest}",
                        self.names[i], self.names[n]
                    ));
                }
            }
        }
        Ok(())
    }

    fn wait_caught_up(
        &self,
        servers: &[usize],
        total: u64,
        timeout: Duration,
    ) -> Result<(), String> {
        poll_every(CONVERGE_POLL, timeout, || self.caught_up(servers, total))
            .map_err(|e| format!("waiting for the herd to catch up: {e}"))
    }

    /// Loads `clients` new clients at Campbell and waits until the herd has caught up.
    fn load(&self, ctx: &Ctx, clients: u64) -> Result<String, String> {
        let origin = self.origin;
        let started = Instant::now();
        let mut spec = LoadSpec::new(
            self.herd.config.addrs[origin],
            LOAD.0,
            LOAD.1,
            CONVERGE_TIMEOUT,
        )
        .server(self.herd.pid(origin));
        spec.warmup = Duration::ZERO;
        spec.drain = Duration::from_secs(60);
        let load = run_load(&spec, &mut IamatLoad::distinct(&ctx.names, clients))?;
        let loaded = started.elapsed();
        if load.replies_total != clients || load.errors > 0 {
            return Err(format!(
                "{} replies to {clients} IAMATs ({} '?', {} unanswered{})",
                load.replies_total,
                load.errors,
                load.unanswered,
                load.closed
                    .as_ref()
                    .map_or(String::new(), |why| format!(", {why}"))
            ));
        }
        let all: Vec<usize> = (0..self.names.len()).collect();
        self.wait_caught_up(&all, clients, CONVERGE_TIMEOUT)?;
        let converged = started.elapsed();
        Ok(format!(
            "{} clients loaded at {ORIGIN} (C={} P={}) in {:.1} s ({}); every server current \
             {:.1} s after the load began",
            fmt_count(clients),
            LOAD.0,
            LOAD.1,
            loaded.as_secs_f64(),
            fmt_rate(clients as f64 / loaded.as_secs_f64().max(1e-9)),
            converged.as_secs_f64()
        ))
    }

    fn relay_bytes(&self) -> RelayBytes {
        self.relays
            .iter()
            .map(|r| (r.relay.bytes_to_target(), r.relay.bytes_from_target()))
            .collect()
    }

    /// Bytes that crossed the link between Bona and `neighbour` from `before` to `after`:
    /// (toward Bona, from Bona), over both of the link's connections.
    fn link_bytes(&self, neighbour: usize, before: &RelayBytes, after: &RelayBytes) -> (u64, u64) {
        let (mut to_bona, mut from_bona) = (0, 0);
        for (k, r) in self.relays.iter().enumerate() {
            let sent = after[k].0 - before[k].0;
            let answered = after[k].1 - before[k].1;
            if (r.from, r.to) == (neighbour, self.bona) {
                to_bona += sent;
                from_bona += answered;
            } else if (r.from, r.to) == (self.bona, neighbour) {
                from_bona += sent;
                to_bona += answered;
            }
        }
        (to_bona, from_bona)
    }

    /// A link counter of every server: per server, per neighbour (in `neighbours` order).
    fn link_counters(&self, counter: &str) -> Result<Vec<Vec<f64>>, String> {
        (0..self.names.len())
            .map(|i| {
                let page = self.page(i)?;
                Ok(self
                    .neighbours(i)
                    .iter()
                    .map(|&n| {
                        let label = format!("link=\"{}\"", self.names[n]);
                        Self::value(&page, counter, &label)
                    })
                    .collect())
            })
            .collect()
    }

    /// The idle herd for `window`: bytes a second on each of Bona's links (the relays), and
    /// over the whole herd from the servers' own byte counters.
    fn idle(&self, window: Duration) -> Result<Vec<Row>, String> {
        // A moment for the last marks of the load to go out.
        thread::sleep(Duration::from_secs(1));
        let sent_bytes = |i: usize| -> Result<f64, String> {
            Ok(Self::value(&self.page(i)?, "herd_sent_bytes_total", ""))
        };
        let n = self.names.len();
        let relays_before = self.relay_bytes();
        let sent_before = (0..n).map(sent_bytes).collect::<Result<Vec<_>, _>>()?;
        let checks_before = self.link_counters("herd_link_checks_total")?;
        let started = Instant::now();
        thread::sleep(window);
        let relays_after = self.relay_bytes();
        let secs = started.elapsed().as_secs_f64();
        let sent_after = (0..n).map(sent_bytes).collect::<Result<Vec<_>, _>>()?;
        let checks_after = self.link_counters("herd_link_checks_total")?;
        let checks: f64 = checks_after
            .iter()
            .flatten()
            .zip(checks_before.iter().flatten())
            .map(|(a, b)| a - b)
            .sum();
        let mut rows = Vec::new();
        for n in self.neighbours(self.bona) {
            let (to_bona, from_bona) = self.link_bytes(n, &relays_before, &relays_after);
            let per_sec = (to_bona + from_bona) as f64 / secs;
            let pair = format!("{}-{}", self.names[self.bona], self.names[n]);
            rows.push(
                Row::new(format!("idle link {pair}, {:.0} s", secs))
                    .result(format!(
                        "{per_sec:.0} B/s ({:.0} B/s toward {REJOINING}, {:.0} B/s from it)",
                        to_bona as f64 / secs,
                        from_bona as f64 / secs
                    ))
                    .figure("link", pair)
                    .figure("window_s", (secs * 10.0).round() / 10.0)
                    .figure("bytes_per_s", per_sec.round())
                    .figure("to_rejoining_bytes", to_bona)
                    .figure("from_rejoining_bytes", from_bona)
                    .check("<= 1 KB/s", per_sec <= IDLE_TARGET_BYTES_PER_SEC),
            );
        }
        let herd_sent: f64 = sent_after
            .iter()
            .zip(&sent_before)
            .map(|(a, b)| a - b)
            .sum();
        let per_link = herd_sent / self.links.len() as f64 / secs;
        rows.push(
            Row::new(format!(
                "idle herd, {} links, {:.0} s",
                self.links.len(),
                secs
            ))
            .result(format!(
                "{per_link:.0} B/s per link (herd_sent_bytes_total of all {n} servers: \
                     {}), {checks:.0} digest checks",
                fmt_bytes(herd_sent)
            ))
            .figure("herd_sent_bytes", herd_sent)
            .figure("bytes_per_s_per_link", per_link.round())
            .figure("checks", checks)
            .check("<= 1 KB/s", per_link <= IDLE_TARGET_BYTES_PER_SEC),
        );
        Ok(rows)
    }

    /// Kills Bona, takes the missed updates at Campbell, (wipes its store,) restarts it and
    /// measures its way back.
    fn rejoin(
        &mut self,
        names: &Names,
        clients: u64,
        total: u64,
        round: u32,
        wipe: bool,
    ) -> Result<Row, String> {
        let bona = self.bona;
        let neighbours = self.neighbours(bona);
        self.herd.stop(bona, None);
        let others: Vec<usize> = (0..self.names.len()).filter(|&i| i != bona).collect();
        let missed = MISSED_KNOWN + MISSED_NEW;
        let mut spec = LoadSpec::new(
            self.herd.config.addrs[self.origin],
            4,
            64,
            Duration::from_secs(120),
        );
        spec.warmup = Duration::ZERO;
        let load = run_load(&spec, &mut Missed::new(names, clients, round))?;
        if load.replies_total != missed || load.errors > 0 {
            return Err(format!(
                "{} replies to {missed} IAMATs while {REJOINING} was down ({} '?')",
                load.replies_total, load.errors
            ));
        }
        self.wait_caught_up(&others, total, CONVERGE_TIMEOUT)?;

        let sent_to = |this: &Rejoin| -> Result<Vec<(f64, f64)>, String> {
            neighbours
                .iter()
                .map(|&n| {
                    let page = this.page(n)?;
                    let label = format!("link=\"{REJOINING}\"");
                    Ok((
                        Self::value(&page, "herd_link_records_sent_total", &label),
                        Self::value(&page, "herd_link_full_copies_total", &label),
                    ))
                })
                .collect()
        };
        let before = sent_to(self)?;
        let relays_before = self.relay_bytes();
        let sync_needle = format!("link sync {REJOINING}: sent ");
        let syncs_before: Vec<usize> = neighbours
            .iter()
            .map(|&n| self.log_count(n, &sync_needle))
            .collect();
        let bona_syncs_before = self.log_count(bona, "link sync ");
        let reads_before = self.log_count(bona, " clients from ");
        let store = self
            .herd
            .dir
            .path()
            .join(format!("store/{REJOINING}.store"));
        if wipe {
            fs::remove_file(&store).map_err(|e| format!("{}: {e}", store.display()))?;
        }
        let store_bytes = fs::metadata(&store).map_or(0, |m| m.len());

        let other_pids: Vec<Option<u32>> = others.iter().map(|&i| self.herd.pid(i)).collect();
        let cpu_before = CpuMark::take(&other_pids);
        let spawned = Instant::now();
        self.herd.start_server(bona)?;
        let listening = spawned.elapsed();
        let current = poll_every(CURRENT_POLL, Duration::from_secs(120), || {
            self.bona_current(total).map(|()| spawned.elapsed())
        })
        .map_err(|e| format!("waiting for {REJOINING} to be current: {e}"))?;
        // Bona's CPU over its whole life so far, its neighbours' and the rest of the machine's
        // over the same window, in shares of one core.
        let bona_cpu = self.herd.pid(bona).and_then(cpu_secs);
        let cpu = cpu_before.shares(&CpuMark::take(&other_pids));
        let herd_cpu: f64 = cpu.servers.iter().flatten().sum();
        let bona_share = bona_cpu.map(|secs| secs / cpu.wall_secs);
        let elsewhere = cpu
            .other
            .zip(bona_share)
            .map(|(other, bona)| (other - bona).max(0.0));

        // Every link of Bona's, both ways, has logged the end of its sync.
        poll_every(CONVERGE_POLL, Duration::from_secs(60), || {
            let theirs = neighbours
                .iter()
                .zip(&syncs_before)
                .all(|(&n, &was)| self.log_count(n, &sync_needle) > was);
            let ours = self.log_count(bona, "link sync ") >= bona_syncs_before + neighbours.len();
            theirs && ours
        })
        .map_err(|e| format!("waiting for the link syncs to be logged: {e}"))?;
        let read_line = poll_every(CONVERGE_POLL, Duration::from_secs(5), || {
            let log = read_lossy(&self.herd.log_path(bona));
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(" clients from "))
                .collect();
            (lines.len() > reads_before).then(|| lines.last().map(|l| l.to_string()))
        })
        .ok()
        .flatten();
        let read_ms = read_line.as_deref().and_then(store_read_ms);
        let store_lines = read_line.as_deref().and_then(store_lines);

        let after = sent_to(self)?;
        let relays_after = self.relay_bytes();
        let page = self.page(bona)?;
        let bona_sent: f64 = neighbours
            .iter()
            .map(|&n| {
                let label = format!("link=\"{}\"", self.names[n]);
                Self::value(&page, "herd_link_records_sent_total", &label)
            })
            .sum();
        let bona_full: f64 = neighbours
            .iter()
            .map(|&n| {
                let label = format!("link=\"{}\"", self.names[n]);
                Self::value(&page, "herd_link_full_copies_total", &label)
            })
            .sum();
        let per_neighbour: Vec<u64> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| (a.0 - b.0) as u64)
            .collect();
        let records: u64 = per_neighbour.iter().sum();
        let full_copies: f64 = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).sum();
        let (mut to_bona, mut from_bona) = (0, 0);
        for &n in &neighbours {
            let (to, from) = self.link_bytes(n, &relays_before, &relays_after);
            to_bona += to;
            from_bona += from;
        }
        let by_neighbour = neighbours
            .iter()
            .zip(&per_neighbour)
            .map(|(&n, r)| format!("{} {}", self.names[n], fmt_count(*r)))
            .collect::<Vec<_>>()
            .join(", ");

        let what = if wipe {
            "store deleted"
        } else {
            "from its store"
        };
        let mut result = format!(
            "sent to {REJOINING}: {} records ({by_neighbour}; {full_copies:.0} full copies); \
             {REJOINING} sent {} ({bona_full:.0} full copies); its links carried {} ({} toward \
             it, {} from it); listening {} ms, current {} ms after spawn ({} ms after \
             listening)",
            fmt_count(records),
            fmt_count(bona_sent as u64),
            fmt_bytes((to_bona + from_bona) as f64),
            fmt_bytes(to_bona as f64),
            fmt_bytes(from_bona as f64),
            listening.as_millis(),
            current.as_millis(),
            current.saturating_sub(listening).as_millis(),
        );
        if let Some(ms) = read_ms {
            result += &format!(" (store read {ms} ms");
            if let Some(lines) = store_lines {
                result += &format!(
                    ": {} lines, {}",
                    fmt_count(lines),
                    fmt_bytes(store_bytes as f64)
                );
            }
            result += ")";
        }
        let share = |s: Option<f64>| s.map_or("?".to_string(), |s| format!("{:.0}%", s * 100.0));
        result += &format!(
            "; CPU from spawn to current: {REJOINING} {}, the other servers {:.0}%, elsewhere {}",
            share(bona_share),
            herd_cpu * 100.0,
            share(elsewhere)
        );
        let mut row = Row::new(format!(
            "{REJOINING} rejoins {what}, {} missed of {} clients",
            fmt_count(missed),
            fmt_count(total)
        ))
        .result(result)
        .figure("clients", total)
        .figure("missed", missed)
        .figure("wiped", wipe)
        .figure("records_to_rejoining", records)
        .figure("records_to_rejoining_by_neighbour", per_neighbour.clone())
        .figure("full_copies_to_rejoining", full_copies)
        .figure("records_from_rejoining", bona_sent)
        .figure("full_copies_from_rejoining", bona_full)
        .figure("bytes_to_rejoining", to_bona)
        .figure("bytes_from_rejoining", from_bona)
        .figure("listening_ms", listening.as_millis() as u64)
        .figure("current_ms", current.as_millis() as u64)
        .figure(
            "current_after_listening_ms",
            current.saturating_sub(listening).as_millis() as u64,
        );
        if let Some(ms) = read_ms {
            row = row.figure("store_read_ms", ms);
        }
        if let Some(lines) = store_lines {
            row = row.figure("store_lines", lines);
        }
        row = row
            .figure("store_bytes", store_bytes)
            .figure(
                "cpu_rejoining",
                bona_share.map(|s| (s * 1000.0).round() / 1000.0),
            )
            .figure("cpu_other_servers", (herd_cpu * 1000.0).round() / 1000.0)
            .figure(
                "cpu_elsewhere",
                elsewhere.map(|s| (s * 1000.0).round() / 1000.0),
            );
        if !wipe {
            let links = neighbours.len() as u64;
            row = row
                .check(
                    format!("<= {} records", fmt_count(links * missed)),
                    records <= links * missed,
                )
                .check("current <= 1 s after start", current <= CURRENT_TARGET);
        }
        Ok(row)
    }

    /// Whether Bona knows `total` clients and holds each neighbour's history up to that
    /// neighbour's newest version.
    fn bona_current(&self, total: u64) -> Result<(), String> {
        let page = self.page(self.bona)?;
        let known = Self::value(&page, "herd_clients_known", "") as u64;
        if known != total {
            return Err(format!("{REJOINING} knows {known} of {total}"));
        }
        for n in self.neighbours(self.bona) {
            let newest = Self::value(&self.page(n)?, "herd_version", "");
            let label = format!("neighbour=\"{}\"", self.names[n]);
            let held = Self::value(&page, "herd_neighbour_version_held", &label);
            if held != newest {
                return Err(format!(
                    "{REJOINING} holds {}'s history to {held} of {newest}",
                    self.names[n]
                ));
            }
        }
        Ok(())
    }

    fn log_count(&self, i: usize, needle: &str) -> usize {
        read_lossy(&self.herd.log_path(i))
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// The `X` of a store's `... in X ms, fsync ...` line.
fn store_read_ms(line: &str) -> Option<u64> {
    let rest = line.rsplit(" in ").next()?;
    rest.split(" ms").next()?.trim().parse().ok()
}

/// The `M` of a store's `... N clients from M lines ...` line.
fn store_lines(line: &str) -> Option<u64> {
    let rest = line.split(" clients from ").nth(1)?;
    rest.split(" lines").next()?.trim().parse().ok()
}

/// The updates taken while Bona is down: `MISSED_KNOWN` of the loaded clients (spread evenly
/// over them), then `MISSED_NEW` clients of this round's own, each at a client time newer than
/// the load's.
struct Missed {
    names: Names,
    clients: u64,
    round: u32,
    tick: u64,
    issued: u64,
}

impl Missed {
    fn new(names: &Names, clients: u64, round: u32) -> Missed {
        Missed {
            names: names.clone(),
            clients,
            round,
            tick: names.now_tick(),
            issued: 0,
        }
    }
}

impl Workload for Missed {
    fn next_command(&mut self, _conn: usize, out: &mut Vec<u8>) -> Option<Expect> {
        let k = self.issued;
        if k >= MISSED_KNOWN + MISSED_NEW {
            return None;
        }
        self.issued += 1;
        // The load's clients are `m1` to `m{clients}` (IamatLoad::distinct).
        let client = if k < MISSED_KNOWN {
            self.names.client("m", 1 + k * self.clients / MISSED_KNOWN)
        } else {
            let kind = format!("rejoin{}-", self.round);
            self.names.client(&kind, k - MISSED_KNOWN)
        };
        self.names.push_iamat(out, &client, self.tick + k);
        Some(Expect::Line)
    }
}
