//! Scenario 7: how far behind the rest of the herd is when load stops. In the SPEC's five-server
//! herd, a saturating IAMAT load (C=50 P=16, closed loop) runs at Campbell only, the client time
//! of every acknowledged IAMAT recorded per client; from the last reply on, every other server
//! is polled (WHATSAT, see survey.rs) until it shows every client at its last acknowledged
//! time. Four rows: 50 clients updated over and over, and 100,000 clients updated once each,
//! with `log lines` on and off. IAMAT rate and every server's RSS before and after beside it.
//!
//! With 100,000 clients, polling them all every round would take longer than the catch-up it
//! measures, so only the last `POLL_TAIL` acknowledged are polled (the last stored is among
//! them, and a link carries updates in the order they were stored), and one untimed sweep
//! afterwards checks every client at every server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use crate::commands::Names;
use crate::cpu::{CpuMark, CpuShares};
use crate::herd::refused_places_url;
use crate::hist::Histogram;
use crate::load::{run_load, Expect, LoadReport, LoadSpec, Workload};
use crate::report::{fmt_count, fmt_ns, fmt_rate, fmt_share, Row, Section};
use crate::scenarios::{five_servers, round3, Ctx, Fleet};
use crate::survey::Survey;
use crate::watch::{first_update, Flood};

pub(super) const ORIGIN: &str = "Campbell";
pub(super) const CONNECTIONS: usize = 50;
pub(super) const IN_FLIGHT: usize = 16;
const DISTINCT: usize = 100_000;
/// The 100,000-client rows poll this many of the last acknowledged: every command in flight
/// when the last stored one was sent (C x P) was acknowledged after it, so the last stored is
/// among the last C x P acknowledged.
const POLL_TAIL: usize = CONNECTIONS * IN_FLIGHT;
/// Survey connections per polled server.
const POLL_CONNECTIONS: usize = 4;
/// A server's next round starts at least this long after its previous one started: a fiftieth
/// of the 50 ms target, so polling adds little to the figure and leaves the CPU to the flood.
const PACE: Duration = Duration::from_millis(1);
/// Catch-up slower than this is reported as not caught up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);
/// The verification sweep asks this many clients of each server per round, and stops asking
/// after `SWEEP_LIMIT` (the row then says how many were checked).
const SWEEP_CHUNK: usize = 5_000;
const SWEEP_LIMIT: Duration = Duration::from_secs(60);
const TARGET_NS: u64 = 50_000_000;

/// The two kinds of row: which clients the load updates.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Clients {
    /// Connection `i` updates client `i` over and over.
    Own,
    /// Clients 0..n dealt out over the connections, one update each.
    Distinct(usize),
    /// Clients 0..n, connection `i` updating `i`, `i + C`, `i + 2C`, ... in turn, over and
    /// over (n a multiple of C).
    Cycling(usize),
}

impl Clients {
    pub(super) fn count(self) -> usize {
        match self {
            Clients::Own => CONNECTIONS,
            Clients::Distinct(n) | Clients::Cycling(n) => n,
        }
    }

    pub(super) fn label(self) -> String {
        match self {
            Clients::Own => format!("{CONNECTIONS} clients, updated over and over"),
            Clients::Distinct(n) => format!("{} clients, one update each", fmt_count(n as u64)),
            Clients::Cycling(n) => format!("{} clients, updated in turn", fmt_count(n as u64)),
        }
    }
}

/// IAMATs whose acknowledgements are recorded: per client, the tick (client time) of its last
/// acknowledged update, and in the distinct rows the order of acknowledgement.
pub(super) struct Tracked {
    names: Names,
    ids: Vec<String>,
    clients: Clients,
    next_client: usize,
    next_tick: u64,
    /// Per connection, commands sent (which of its clients is next, when cycling).
    turns: Vec<usize>,
    /// Per connection, (client, tick) of the commands sent and not yet answered, oldest first.
    unanswered: Vec<VecDeque<(u32, u64)>>,
    acked: Vec<Option<u64>>,
    ack_order: Vec<u32>,
}

impl Tracked {
    fn new(names: &Names, ids: &[String], clients: Clients) -> Tracked {
        Tracked {
            names: names.clone(),
            ids: ids.to_vec(),
            clients,
            next_client: 0,
            // From the wall clock, so a target herd holds no newer time for these ids.
            next_tick: names.now_tick(),
            turns: vec![0; CONNECTIONS],
            unanswered: vec![VecDeque::new(); CONNECTIONS],
            acked: vec![None; ids.len()],
            ack_order: Vec::new(),
        }
    }
}

impl Tracked {
    /// Per client, the client time (ns since the epoch) of its last acknowledged update; the
    /// clients acknowledged at all; and those the catch-up polls (see `POLL_TAIL`).
    fn acknowledged(&self) -> (Vec<Option<u128>>, Vec<u32>, Vec<u32>) {
        let expected: Vec<Option<u128>> = (self.acked.iter())
            .map(|t| t.map(|tick| self.names.time_ns(tick)))
            .collect();
        let acked: Vec<u32> = (0..self.ids.len() as u32)
            .filter(|&c| expected[c as usize].is_some())
            .collect();
        let polled = match self.clients {
            Clients::Own | Clients::Cycling(_) => acked.clone(),
            Clients::Distinct(_) => {
                let order = &self.ack_order;
                order[order.len().saturating_sub(POLL_TAIL)..].to_vec()
            }
        };
        (expected, acked, polled)
    }
}

impl Workload for Tracked {
    fn next_command(&mut self, conn: usize, out: &mut Vec<u8>) -> Option<Expect> {
        let client = match self.clients {
            Clients::Own => conn,
            Clients::Distinct(n) if self.next_client < n => {
                self.next_client += 1;
                self.next_client - 1
            }
            Clients::Distinct(_) => return None,
            Clients::Cycling(n) => {
                let turn = self.turns[conn];
                self.turns[conn] += 1;
                conn + CONNECTIONS * (turn % (n / CONNECTIONS).max(1))
            }
        };
        let tick = self.next_tick;
        self.next_tick += 1;
        self.names.push_iamat(out, &self.ids[client], tick);
        self.unanswered[conn].push_back((client as u32, tick));
        Some(Expect::Line)
    }

    fn answered(&mut self, conn: usize, replies: usize) {
        for _ in 0..replies {
            let Some((client, tick)) = self.unanswered[conn].pop_front() else {
                return;
            };
            // One client's ticks only increase, so the latest acknowledged is the newest.
            self.acked[client as usize] = Some(tick);
            if matches!(self.clients, Clients::Distinct(_)) {
                self.ack_order.push(client);
            }
        }
    }
}

/// How the catch-up went, per polled server (in `Fleet::others` order).
pub(super) struct CatchUp {
    /// Since the last acknowledgement, when the round that found the server current ended.
    pub caught: Vec<Option<Duration>>,
    /// How long that round took (ask to last reply): the figure is late by at most this.
    pub last_round: Vec<Option<Duration>>,
    /// Polled clients still stale when the limit passed.
    pub stale: Vec<usize>,
    pub rounds: u64,
    /// Clients found with a time newer than their last acknowledged (the bench is wrong).
    pub newer: u64,
    /// Per server, each polled client's time: since the last acknowledgement, when the round
    /// that first found it current ended.
    pub per_client: Vec<Histogram>,
}

/// Polls every server in rounds, each asking only about the clients it still lacked, until
/// every server shows every polled client at its expected time or the limit passes.
fn catch_up(
    survey: &mut Survey,
    servers: usize,
    polled: &[u32],
    expected: &[Option<u128>],
    since: Instant,
) -> Result<CatchUp, String> {
    let mut result = CatchUp {
        caught: vec![None; servers],
        last_round: vec![None; servers],
        stale: vec![polled.len(); servers],
        rounds: 0,
        newer: 0,
        per_client: vec![Histogram::default(); servers],
    };
    let mut lacking: Vec<Vec<u32>> = vec![polled.to_vec(); servers];
    let mut due = vec![Instant::now(); servers];
    let deadline = since + CATCH_UP_LIMIT;
    loop {
        let now = Instant::now();
        for s in 0..servers {
            if !lacking[s].is_empty() && !survey.busy(s) && due[s] <= now {
                survey.ask(s, &lacking[s])?;
                due[s] = now + PACE;
                result.rounds += 1;
            }
        }
        if lacking.iter().all(Vec::is_empty) || now >= deadline {
            return Ok(result);
        }
        let wake = (0..servers)
            .filter(|&s| !lacking[s].is_empty() && !survey.busy(s))
            .map(|s| due[s])
            .min()
            .unwrap_or(deadline)
            .min(deadline);
        for round in survey.wait(wake)? {
            let s = round.server;
            let ended = round.last_reply.saturating_duration_since(since);
            lacking[s].clear();
            for (client, time) in round.answers {
                let want = expected[client as usize];
                if time < want {
                    lacking[s].push(client);
                    continue;
                } else if time > want {
                    result.newer += 1;
                }
                result.per_client[s].record(ended.as_nanos() as u64);
            }
            result.stale[s] = lacking[s].len();
            if lacking[s].is_empty() {
                result.caught[s] = Some(ended);
                result.last_round[s] = Some(round.last_reply - round.asked_at);
            }
        }
    }
}

/// The untimed check after the catch-up: every acknowledged client at every server, in rounds
/// of `SWEEP_CHUNK`, for at most `SWEEP_LIMIT`.
#[derive(Default)]
struct Sweep {
    checked: u64,
    missing: u64,
    stale: u64,
    newer: u64,
    complete: bool,
}

fn sweep(
    survey: &mut Survey,
    servers: usize,
    clients: &[u32],
    expected: &[Option<u128>],
) -> Result<Sweep, String> {
    let mut result = Sweep::default();
    let deadline = Instant::now() + SWEEP_LIMIT;
    let mut chunks: Vec<_> = (0..servers).map(|_| clients.chunks(SWEEP_CHUNK)).collect();
    let mut left = servers;
    for (s, chunk) in chunks.iter_mut().enumerate() {
        match chunk.next() {
            Some(asks) => survey.ask(s, asks)?,
            None => left -= 1,
        }
    }
    while left > 0 && Instant::now() < deadline {
        for round in survey.wait(deadline)? {
            for (client, time) in round.answers {
                result.checked += 1;
                let want = expected[client as usize];
                match time {
                    None => result.missing += 1,
                    Some(_) if time < want => result.stale += 1,
                    Some(_) if time > want => result.newer += 1,
                    Some(_) => {}
                }
            }
            match chunks[round.server].next() {
                Some(asks) => survey.ask(round.server, asks)?,
                None => left -= 1,
            }
        }
    }
    result.complete = left == 0;
    Ok(result)
}

pub fn run(ctx: &Ctx) -> Section {
    let mut section = Section::new("7 staleness", "herd lag when load stops");
    let modes: &[(&str, &[&str])] = if ctx.target.is_some() {
        &[("target", &[])]
    } else {
        &[("log on", &[]), ("log off", &["log lines off"])]
    };
    for clients in [Clients::Own, Clients::Distinct(ctx.count(DISTINCT))] {
        for &(mode, directives) in modes {
            match measure(ctx, clients, mode, directives) {
                Ok(rows) => section.rows.extend(rows),
                Err(why) => {
                    return section.unavailable(format!("{}, {mode}: {why}", clients.label()))
                }
            }
        }
    }
    section.notes.push(format!(
        "polled with pipelined WHATSATs ({POLL_CONNECTIONS} connections per server, each server at most every {} ms): the {CONNECTIONS}-client rows poll every client, the distinct rows the last {POLL_TAIL} acknowledged, then sweep every client untimed; a server's time is the last reply of the first round that found it current, from the last IAMAT reply",
        PACE.as_millis()
    ));
    if ctx.target.is_some() {
        section.notes.push(
            "with --target the herd's own config applies (its log lines, its Places: WHATSATs wait on it)"
                .into(),
        );
    }
    section
}

/// The directives of a herd whose servers are polled by WHATSAT (see survey.rs): Places at a
/// refused port, with one worker and a queue of one, so a WHATSAT beyond those is answered
/// 429 at once.
pub(super) fn polled_directives() -> Result<Vec<String>, String> {
    Ok(vec![
        refused_places_url()?,
        "places workers 1".to_string(),
        "places queue 1".to_string(),
    ])
}

/// Links come up after start: waits until an update at `origin` reaches every other server.
pub(super) fn wait_for_links(ctx: &Ctx, fleet: &Fleet, origin: usize) -> Result<(), String> {
    let others = fleet.others(origin);
    let addrs: Vec<SocketAddr> = others.iter().map(|&i| fleet.addrs[i]).collect();
    let names: Vec<String> = others.iter().map(|&i| fleet.names[i].clone()).collect();
    let mut flood = Flood::new(fleet.addrs[origin], &addrs, &ctx.names, PACE)?;
    first_update(&mut flood, &names, Duration::from_secs(10)).map(|_| ())
}

/// What one load and the catch-up after it found.
pub(super) struct Caught {
    pub load: LoadReport,
    /// CPU over the load (warm-up and drain included).
    pub cpu: CpuShares,
    pub caught: CatchUp,
    /// The survey's client ids, and per client the client time last acknowledged.
    pub ids: Vec<String>,
    pub expected: Vec<Option<u128>>,
    /// The clients acknowledged at all, and those the catch-up polled.
    pub acked: Vec<u32>,
    pub polled: Vec<u32>,
}

/// Runs `spec`'s load of `clients` (at `origin`, which `spec` names) and polls every other
/// server from the last reply until it is current (see `catch_up`).
pub(super) fn load_and_catch_up(
    ctx: &Ctx,
    fleet: &Fleet,
    origin: usize,
    clients: Clients,
    spec: &LoadSpec,
) -> Result<Caught, String> {
    let others = fleet.others(origin);
    let other_addrs: Vec<SocketAddr> = others.iter().map(|&i| fleet.addrs[i]).collect();
    let ids: Vec<String> = (0..clients.count() as u64)
        .map(|n| ctx.names.client("client", n))
        .collect();
    // Opened before the load, so polling starts the moment it ends.
    let mut survey = Survey::connect(&other_addrs, POLL_CONNECTIONS, &ids)?;
    let mut work = Tracked::new(&ctx.names, &ids, clients);
    let cpu_before = CpuMark::take(&fleet.pids);
    let load = run_load(spec, &mut work)?;
    let cpu = cpu_before.shares(&CpuMark::take(&fleet.pids));
    let since = load.last_reply.ok_or("no IAMAT was answered")?;
    let (expected, acked, polled) = work.acknowledged();
    let caught = catch_up(&mut survey, others.len(), &polled, &expected, since)?;
    Ok(Caught {
        load,
        cpu,
        caught,
        ids,
        expected,
        acked,
        polled,
    })
}

/// One herd, one load, one catch-up: the rows of one configuration.
fn measure(ctx: &Ctx, clients: Clients, mode: &str, extra: &[&str]) -> Result<Vec<Row>, String> {
    let mut directives = polled_directives()?;
    directives.extend(extra.iter().map(|d| d.to_string()));
    let fleet = Fleet::start(ctx, "staleness", five_servers(), &directives)?;
    let origin = fleet.names.iter().position(|n| n == ORIGIN).unwrap_or(0);
    let others = fleet.others(origin);
    let other_addrs: Vec<SocketAddr> = others.iter().map(|&i| fleet.addrs[i]).collect();
    let other_names: Vec<String> = others.iter().map(|&i| fleet.names[i].clone()).collect();

    wait_for_links(ctx, &fleet, origin)?;
    let rss_before = fleet.rss();
    let spec = load_spec(ctx, clients, fleet.server(origin));
    let Caught {
        load,
        cpu,
        caught,
        ids,
        expected,
        acked,
        polled,
    } = load_and_catch_up(ctx, &fleet, origin, clients, &spec)?;
    // Let the polling connections' buffers go before reading RSS.
    thread::sleep(Duration::from_millis(200));
    let rss_after = fleet.rss();

    let swept = match clients {
        Clients::Own | Clients::Cycling(_) => None,
        Clients::Distinct(_) => {
            let mut survey = Survey::connect(&other_addrs, POLL_CONNECTIONS, &ids)?;
            Some(sweep(&mut survey, others.len(), &acked, &expected)?)
        }
    };
    let mut rows = vec![catch_up_row(
        format!("{}, {mode}", clients.label()),
        &caught,
        &other_names,
        &load,
    )];
    let origin_name = &fleet.names[origin];
    rows.push(load_rss_row(
        format!("  load at {origin_name} (C={CONNECTIONS} P={IN_FLIGHT}), RSS"),
        &load,
        (acked.len(), polled.len()),
        &fleet.names,
        (&rss_before, &rss_after),
    ));
    rows.push(cpu_row(&fleet.names, &cpu));
    if let Some(swept) = &swept {
        rows.push(sweep_row(swept, others.len() * acked.len()));
    }
    Ok(rows)
}

fn load_spec(ctx: &Ctx, clients: Clients, (addr, pid): (SocketAddr, Option<u32>)) -> LoadSpec {
    let mut spec = LoadSpec::new(addr, CONNECTIONS, IN_FLIGHT, ctx.secs(10.0)).server(pid);
    if clients != Clients::Own {
        // Every update counts: the rate is over all of them, up to the last reply.
        spec.warmup = Duration::ZERO;
    }
    spec
}

/// The row's main figures: when the last server caught up, and each server's time.
pub(super) fn catch_up_row(
    config: String,
    caught: &CatchUp,
    names: &[String],
    load: &LoadReport,
) -> Row {
    let all = caught.caught.iter().all(Option::is_some);
    let last = caught.caught.iter().flatten().max().copied();
    let last_ns = last.map_or(u64::MAX, |d| d.as_nanos() as u64);
    let mut result = if all {
        let who = caught
            .caught
            .iter()
            .position(|c| *c == last)
            .map_or("", |i| names[i].as_str());
        format!("last caught up {} ({who})", fmt_ns(last_ns))
    } else {
        format!("not caught up after {} s", CATCH_UP_LIMIT.as_secs())
    };
    let each: Vec<String> = names
        .iter()
        .zip(caught.caught.iter().zip(&caught.last_round))
        .zip(&caught.stale)
        .map(|((name, (time, round)), stale)| match (time, round) {
            (Some(t), Some(r)) => format!(
                "{name} {} (round {})",
                fmt_ns(t.as_nanos() as u64),
                fmt_ns(r.as_nanos() as u64)
            ),
            _ => format!("{name} {stale} stale"),
        })
        .collect();
    result += &format!(": {}; {} rounds", each.join(", "), caught.rounds);
    if caught.newer > 0 {
        result += &format!("  ({} answers newer than acknowledged)", caught.newer);
    }
    let mut row = Row::new(config)
        .result(result)
        .figure("caught_up_all", all)
        .figure("rounds", caught.rounds)
        .figure("newer", caught.newer);
    if let Some(last) = last.filter(|_| all) {
        row = row.figure("last_caught_up_ns", last.as_nanos() as u64);
    }
    for (name, (time, stale)) in names.iter().zip(caught.caught.iter().zip(&caught.stale)) {
        row = match time {
            Some(t) => row.figure(&format!("caught_up_ns_{name}"), t.as_nanos() as u64),
            None => row.figure(&format!("stale_{name}"), *stale),
        };
    }
    for (name, round) in names.iter().zip(&caught.last_round) {
        if let Some(r) = round {
            row = row.figure(&format!("last_round_ns_{name}"), r.as_nanos() as u64);
        }
    }
    // A '?' or missing IAMAT reply would leave the expected times unknown: no verdict then.
    let sound = load.errors == 0 && load.unanswered == 0 && caught.newer == 0;
    row.check(
        "last caught up <= 50 ms",
        all && sound && last_ns <= TARGET_NS,
    )
}

/// The load that ran (rate, counts) and every server's RSS before it and after the catch-up.
fn load_rss_row(
    config: String,
    load: &LoadReport,
    (acked, polled): (usize, usize),
    names: &[String],
    (before, after): (&[Option<u64>], &[Option<u64>]),
) -> Row {
    let mut result = format!(
        "{}, {} replies, {} clients, {polled} polled",
        fmt_rate(load.rate()),
        fmt_count(load.completed),
        fmt_count(acked as u64),
    );
    if load.errors > 0 || load.unanswered > 0 {
        result += &format!(
            " ({} '?' replies, {} unanswered)",
            load.errors, load.unanswered
        );
    }
    if let Some(why) = &load.closed {
        result += &format!(" ({why})");
    }
    let mut row = Row::new(config)
        .figure("rate_per_s", load.rate().round())
        .figure("replies", load.completed)
        .figure("clients", acked)
        .figure("polled", polled)
        .figure("iamat_errors", load.errors)
        .figure("unanswered", load.unanswered);
    let mib = |b: Option<u64>| {
        b.map_or("?".to_string(), |b| {
            format!("{:.1}", b as f64 / (1024.0 * 1024.0))
        })
    };
    let cells: Vec<String> = names
        .iter()
        .zip(before.iter().zip(after))
        .map(|(name, (&b, &a))| format!("{name} {}->{}", mib(b), mib(a)))
        .collect();
    result += &format!("; RSS MiB {}", cells.join(", "));
    for (name, (&b, &a)) in names.iter().zip(before.iter().zip(after)) {
        if let (Some(b), Some(a)) = (b, a) {
            row = row
                .figure(&format!("rss_before_bytes_{name}"), b)
                .figure(&format!("rss_after_bytes_{name}"), a);
        }
    }
    row.result(result)
}

/// Who used the CPU over the load (warm-up and drain included), as shares of one core.
pub(super) fn cpu_row(names: &[String], cpu: &CpuShares) -> Row {
    let mut cells: Vec<String> = names
        .iter()
        .zip(&cpu.servers)
        .map(|(name, &x)| format!("{name} {}", fmt_share(x)))
        .collect();
    cells.push(format!("bench {}", fmt_share(cpu.process)));
    cells.push(format!("outside {}", fmt_share(cpu.other)));
    let mut row = Row::new("  CPU over the load").result(cells.join(", "));
    let keys = names.iter().map(|name| format!("cpu_{name}"));
    let keyed = keys.zip(&cpu.servers).chain([
        ("cpu_bench".to_string(), &cpu.process),
        ("cpu_outside".to_string(), &cpu.other),
    ]);
    for (key, x) in keyed {
        if let Some(x) = x {
            row = row.figure(&key, round3(*x));
        }
    }
    row
}

/// The untimed check of every client at every server.
fn sweep_row(swept: &Sweep, wanted: usize) -> Row {
    let bad = swept.missing + swept.stale + swept.newer;
    let verdict = if bad == 0 {
        "all current".to_string()
    } else {
        format!(
            "{} missing, {} stale, {} newer",
            swept.missing, swept.stale, swept.newer
        )
    };
    let mut result = format!(
        "{} of {} (client x server) checked: {verdict}",
        fmt_count(swept.checked),
        fmt_count(wanted as u64)
    );
    if !swept.complete {
        result += &format!(" (stopped after {} s)", SWEEP_LIMIT.as_secs());
    }
    Row::new("  sweep after the catch-up, untimed")
        .result(result)
        .figure("swept", swept.checked)
        .figure("swept_missing", swept.missing)
        .figure("swept_stale", swept.stale)
        .figure("swept_newer", swept.newer)
        .check("every client current", swept.complete && bad == 0)
}
