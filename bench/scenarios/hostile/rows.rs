//! Scenario 9's table: the attack's row (what was written, RSS, threads, CPU, Places calls, log
//! growth, kernel TCP memory), the probe before and during it, the recovery after the close,
//! and the notes that say how each figure was taken. Text and figures only.

use std::fs;
use std::time::Duration;

use serde_json::{json, Value};

use super::probe::{probe_row, Probe};
use super::readings::Sample;
use super::{
    in_flight_limit, Outcome, Setting, AFTER_CLOSE, ATTACKERS, BOUND, CLIENTS,
    MAX_LINES_PER_ATTACKER, PAGE, PLACES_DELAY, PROBE_RATE, PROBE_TIMEOUT, RECOVERY_DEADLINE,
    TARGET_P99, TARGET_RSS,
};
use crate::cpu::CpuShares;
use crate::report::{fmt_bytes, fmt_count, fmt_duration, fmt_ns, fmt_share, Row, Section};
use crate::scenarios::round3;

pub fn push_rows(section: &mut Section, s: &Setting, idle: &Probe, o: &Outcome) {
    let peaks = Peaks::of(&o.samples, o.attack_end, s.rss_idle);
    section.rows.push(attack_row(s, o, &peaks));
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
    section.rows.push(recovery_row(o, &peaks));
}

/// What the 100 ms samples show: peaks during the attack and after the close, and series.
struct Peaks {
    rss_attack: u64,
    rss_recovery: u64,
    rss_peak: u64,
    threads_peak: u64,
    tcp_peak: u64,
    /// The server's CPU per second of the run.
    cpu_by_second: Vec<Value>,
    rss_mib: Vec<Value>,
}

impl Peaks {
    fn of(samples: &[Sample], attack_end: Duration, rss_idle: u64) -> Peaks {
        let peak_of = |f: &dyn Fn(&Sample) -> u64, during: bool| {
            samples
                .iter()
                .filter(|x| (x.at <= attack_end) == during)
                .map(f)
                .max()
                .unwrap_or(0)
        };
        let rss_attack = peak_of(&|x| x.rss, true).max(rss_idle);
        let rss_recovery = peak_of(&|x| x.rss, false);
        Peaks {
            rss_attack,
            rss_recovery,
            rss_peak: rss_attack.max(rss_recovery),
            threads_peak: peak_of(&|x| x.threads, true),
            tcp_peak: samples.iter().map(|x| x.tcp_bytes).max().unwrap_or(0),
            cpu_by_second: samples
                .chunks(10)
                .filter_map(|c| {
                    let (first, last) = (c.first()?, c.last()?);
                    let wall = (last.at - first.at).as_secs_f64();
                    (wall > 0.0).then(|| round3((last.cpu - first.cpu) / wall))
                })
                .collect(),
            rss_mib: samples
                .iter()
                .map(|x| json!((x.rss as f64 / 1048576.0 * 10.0).round() / 10.0))
                .collect(),
        }
    }
}

/// The attack window's marks read together: its length, Places calls, log growth and CPU.
struct Window {
    secs: f64,
    calls: usize,
    bound: usize,
    log_growth: u64,
    cpu: CpuShares,
}

impl Window {
    fn of(o: &Outcome) -> Window {
        Window {
            secs: o.before.secs_to(&o.during),
            calls: o.during.calls - o.before.calls,
            bound: ATTACKERS * in_flight_limit(),
            log_growth: o.during.log.saturating_sub(o.before.log),
            cpu: o.before.cpu_to(&o.during),
        }
    }

    fn server_cpu(&self) -> Option<f64> {
        self.cpu.servers[0]
    }

    /// CPU seconds the server used over the window.
    fn server_cpu_secs(&self) -> Option<f64> {
        self.server_cpu().map(|share| share * self.cpu.wall_secs)
    }
}

fn attack_row(s: &Setting, o: &Outcome, peaks: &Peaks) -> Row {
    let w = Window::of(o);
    let label = format!(
        "{} non-reading WHATSAT pipeliners, {:.1} s, Places {}, bound {BOUND}",
        fmt_count(ATTACKERS as u64),
        s.window.as_secs_f64(),
        fmt_duration(PLACES_DELAY)
    );
    let row = Row::new(label).result(attack_result(s, o, peaks, &w));
    attack_figures(row, s, o, peaks, &w)
        .check(
            format!(
                "peak RSS < 300 MiB, attack and {} after (is {})",
                fmt_duration(AFTER_CLOSE),
                fmt_bytes(peaks.rss_peak as f64)
            ),
            peaks.rss_peak < TARGET_RSS,
        )
        .check(
            format!(
                "Places calls <= {} x {} = {} (is {})",
                fmt_count(ATTACKERS as u64),
                in_flight_limit(),
                fmt_count(w.bound as u64),
                fmt_count(w.calls as u64)
            ),
            w.calls <= w.bound,
        )
}

fn attack_result(s: &Setting, o: &Outcome, peaks: &Peaks, w: &Window) -> String {
    let a = &o.attack;
    let secs = w.secs;
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
        fmt_bytes(peaks.rss_attack as f64),
        s.threads_idle,
        peaks.threads_peak,
        fmt_share(w.server_cpu()),
        w.server_cpu_secs().unwrap_or(0.0),
        fmt_share(w.cpu.process),
        fmt_share(w.cpu.other),
        fmt_count(w.calls as u64),
        w.calls as f64 / secs,
        fmt_count(w.bound as u64),
        fmt_bytes(w.log_growth as f64),
        fmt_bytes(w.log_growth as f64 / secs),
        fmt_bytes(peaks.tcp_peak as f64),
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
    result
}

fn attack_figures(row: Row, s: &Setting, o: &Outcome, peaks: &Peaks, w: &Window) -> Row {
    let a = &o.attack;
    let secs_of = |d: Option<Duration>| d.map(|d| round3(d.as_secs_f64()));
    row.figure("attackers", ATTACKERS)
        .figure("connect_s", round3(s.connect_time.as_secs_f64()))
        .figure("window_s", round3(w.secs))
        .figure("whatsats_written", a.lines)
        .figure("bytes_written", a.bytes)
        .figure("attackers_capped", a.capped)
        .figure("attackers_dropped", a.dropped)
        .figure("first_drop_s", secs_of(a.first_drop))
        .figure("last_drop_s", secs_of(a.last_drop))
        .figure("rss_idle_bytes", s.rss_idle)
        .figure("rss_peak_attack_bytes", peaks.rss_attack)
        .figure("rss_peak_bytes", peaks.rss_peak)
        .figure("threads_idle", s.threads_idle)
        .figure("threads_peak", peaks.threads_peak)
        .figure("server_cpu", w.server_cpu().map(round3))
        .figure("server_cpu_s", w.server_cpu_secs().map(round3))
        .figure("bench_cpu", w.cpu.process.map(round3))
        .figure("attack_thread_cpu_s", a.bench_cpu.map(round3))
        .figure("other_cpu", w.cpu.other.map(round3))
        .figure("server_cpu_by_second", peaks.cpu_by_second.clone())
        .figure("rss_mib_every_100ms", peaks.rss_mib.clone())
        .figure("places_calls", w.calls)
        .figure("places_calls_per_s", w.calls as f64 / w.secs)
        .figure("places_calls_bound", w.bound)
        .figure("log_growth_bytes", w.log_growth)
        .figure("kernel_tcp_mem_peak_bytes", peaks.tcp_peak)
        .figure("queued_server_rx_bytes", o.queues.map(|q| q.server_rx))
        .figure("queued_server_tx_bytes", o.queues.map(|q| q.server_tx))
        .figure("queued_attackers_tx_bytes", o.queues.map(|q| q.client_tx))
        .figure("queued_attackers_rx_bytes", o.queues.map(|q| q.client_rx))
}

/// After every attacker closed at once: how soon a new client was answered, and what the
/// server holds and does in the following `AFTER_CLOSE`.
fn recovery_row(o: &Outcome, peaks: &Peaks) -> Row {
    let calls_after = o.after.calls - o.closed.calls;
    let log_after = o.after.log.saturating_sub(o.during.log);
    let srv_after = o.closed.cpu_to(&o.after).servers[0];
    let answered = match o.recovery {
        Some(d) => format!("after {} ({} connection(s))", fmt_duration(d), o.attempts),
        None => format!(
            "not within {} ({} connections tried)",
            fmt_duration(RECOVERY_DEADLINE),
            o.attempts
        ),
    };
    let result = format!(
        "closed in {}; a new client's IAMAT answered {answered}  RSS {} after: {} (peak {} \
         meanwhile)  srv CPU {}  Places calls {}  log +{}",
        fmt_duration(o.close_time),
        fmt_duration(AFTER_CLOSE),
        o.rss_after.map_or("?".into(), |r| fmt_bytes(r as f64)),
        fmt_bytes(peaks.rss_recovery as f64),
        fmt_share(srv_after),
        fmt_count(calls_after as u64),
        fmt_bytes(log_after as f64)
    );
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
    .figure("rss_peak_after_close_bytes", peaks.rss_recovery)
    .figure("server_cpu_after_close", srv_after.map(round3))
    .figure("places_calls_after_close", calls_after)
    .figure("log_growth_after_bytes", log_after)
}

pub fn add_notes(section: &mut Section) {
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
