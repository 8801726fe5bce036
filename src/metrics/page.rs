//! The metrics page as a pure function of the server's figures: the conductor gathers a
//! [`Snapshot`] from its parts when a scrape asks for the page, and [`render`] writes it in the
//! text format. A new metric is a field here and one call in `render`.
//!
//! Pure: no clock (times come in the snapshot as Unix seconds), no `/proc` (the process figures
//! come in too), no sockets.

use crate::app::CommandCounts;
use crate::places::stats::{PlacesStats, LATENCY_BUCKETS_MS};
use crate::store::StoreStats;
use crate::tls::{Failure, HandshakeCounts};

use super::process::ProcessSample;
use super::{Counters, Exposition, Kind, Value};

/// Every figure the page shows, taken at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The server's name, for `herd_info`.
    pub server: String,
    /// When the server started serving, in Unix seconds.
    pub started_unix: f64,
    /// Connections open on the server's port (clients and neighbours' links).
    pub connections_open: usize,
    /// Traffic and connection counts (lines received include those heard on our links).
    pub counters: Counters,
    pub clients_known: usize,
    /// This server's newest version (every record it stores takes the next one).
    pub version: u64,
    /// Per neighbour: the version of its history this server holds everything up to.
    pub held: Vec<(String, u64)>,
    pub commands: CommandCounts,
    /// The outbound links in config order (those a reload removed are left out).
    pub links: Vec<LinkFigures>,
    pub places: PlacesStats,
    pub log_written_bytes: u64,
    pub log_dropped_bytes: u64,
    /// `None` when the server keeps its records in memory only.
    pub store: Option<StoreStats>,
    pub process: ProcessSample,
    pub process_started_unix: Option<f64>,
    /// With `peer tls`: the links' TLS handshakes and certificates; `None` in clear.
    pub tls: Option<TlsFigures>,
}

/// TLS on links (`peer tls`).
#[derive(Clone, Debug, Default)]
pub struct TlsFigures {
    /// Handshakes of links both ways (made and accepted), by outcome.
    pub handshakes: HandshakeCounts,
    /// Each loaded certificate (`ca`, and the server's own) and when it expires, in Unix
    /// seconds.
    pub expiries: Vec<(String, i64)>,
}

/// One outbound link's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkFigures {
    pub name: String,
    /// The state's name: `waiting`, `connecting`, `greeting` or `up`.
    pub state: &'static str,
    /// When it last came up, in Unix seconds; 0 while down.
    pub up_since_unix: f64,
    pub flaps: u64,
    pub resyncs: u64,
    pub records_owed: usize,
    /// When the neighbour last sent anything on it, in Unix seconds; 0: never.
    pub last_heard_unix: f64,
    /// It owes more than `peer max-owed` for longer than `peer hold-ms`: clients are served
    /// and its neighbour lags.
    pub lagging: bool,
    pub lag_episodes: u64,
    /// Client records sent on it (catch-ups, full copies, floods and repairs).
    pub records_sent: u64,
    /// Times it came up with a full copy (the neighbour could not place our history).
    pub full_copies: u64,
    /// Digest comparisons it started, and repairs they led to.
    pub checks: u64,
    pub repairs: u64,
}

/// The states a link's `herd_link_state` family has a sample for.
const LINK_STATES: [&str; 4] = ["waiting", "connecting", "greeting", "up"];

/// The page, in the text exposition format.
pub fn render(s: &Snapshot) -> String {
    let mut page = Exposition::new();
    render_server(&mut page, s);
    render_links(&mut page, &s.links);
    render_places(&mut page, &s.places);
    render_store_and_log(&mut page, s);
    if let Some(tls) = &s.tls {
        render_tls(&mut page, tls);
    }
    render_process(&mut page, s);
    page.finish()
}

fn render_server(page: &mut Exposition, s: &Snapshot) {
    page.family("herd_info", Kind::Gauge, "The server's name and version.")
        .sample(
            &[
                ("server", &s.server),
                ("version", env!("CARGO_PKG_VERSION")),
            ],
            1u64,
        );
    page.gauge(
        "herd_start_time_seconds",
        "When the server started serving, in seconds since the Unix epoch.",
        s.started_unix,
    );
    page.gauge(
        "herd_connections",
        "Open connections accepted on the server's port (clients and neighbours' links).",
        s.connections_open,
    );
    page.counter(
        "herd_connections_accepted_total",
        "Connections accepted on the server's port.",
        s.counters.connections_accepted,
    );
    page.counter(
        "herd_connections_rejected_total",
        "Connections closed at once because 'limit connections' was reached.",
        s.counters.connections_rejected,
    );
    page.gauge(
        "herd_clients_known",
        "Client records in the table.",
        s.clients_known,
    );
    page.gauge(
        "herd_version",
        "This server's newest version: every record it stores takes the next one.",
        s.version,
    );
    if !s.held.is_empty() {
        let mut family = page.family(
            "herd_neighbour_version_held",
            Kind::Gauge,
            "The version of a neighbour's history this server holds every record up to (its \
             herd_version, once caught up); a link that comes up sends only what is past it.",
        );
        for (neighbour, version) in &s.held {
            family.sample(&[("neighbour", neighbour)], *version);
        }
    }
    page.family(
        "herd_commands_total",
        Kind::Counter,
        "Client commands: IAMAT and WHATSAT answered with an AT line, invalid ones with '? '.",
    )
    .sample(&[("kind", "iamat")], s.commands.iamat)
    .sample(&[("kind", "whatsat")], s.commands.whatsat)
    .sample(&[("kind", "invalid")], s.commands.invalid);
    page.counter(
        "herd_lines_received_total",
        "Lines received from clients and neighbours.",
        s.counters.lines_received,
    );
    page.counter(
        "herd_lines_sent_total",
        "Lines sent to clients and neighbours.",
        s.counters.lines_sent,
    );
    page.counter(
        "herd_received_bytes_total",
        "Bytes read from client and neighbour connections.",
        s.counters.bytes_received,
    );
    page.counter(
        "herd_sent_bytes_total",
        "Bytes written to client and neighbour connections.",
        s.counters.bytes_sent,
    );
}

/// The families with one sample per link: name, kind, help, and the link's value.
type LinkFamily = (&'static str, Kind, &'static str, fn(&LinkFigures) -> Value);

const LINK_FAMILIES: [LinkFamily; 12] = [
    (
        "herd_link_up",
        Kind::Gauge,
        "1 while the outbound link is up.",
        |l| (l.state == "up").into(),
    ),
    (
        "herd_link_up_since_seconds",
        Kind::Gauge,
        "When the link last came up, in seconds since the Unix epoch (0 while down).",
        |l| l.up_since_unix.into(),
    ),
    (
        "herd_link_flaps_total",
        Kind::Counter,
        "Times the link went down after it was up.",
        |l| l.flaps.into(),
    ),
    (
        "herd_link_resyncs_total",
        Kind::Counter,
        "Times the link came up and started sending what its neighbour lacks.",
        |l| l.resyncs.into(),
    ),
    (
        "herd_link_full_copies_total",
        Kind::Counter,
        "Times the link came up with a full copy of the table: the neighbour could not place \
         this server's history (a new or wiped store, a server never seen).",
        |l| l.full_copies.into(),
    ),
    (
        "herd_link_records_sent_total",
        Kind::Counter,
        "Client records sent on the link: catch-ups, full copies, floods and repairs.",
        |l| l.records_sent.into(),
    ),
    (
        "herd_link_checks_total",
        Kind::Counter,
        "Times the link compared table digests with its neighbour ('peer check-ms').",
        |l| l.checks.into(),
    ),
    (
        "herd_link_repairs_total",
        Kind::Counter,
        "Times a comparison found buckets that differed twice with the same digests, and the \
         link sent their records again.",
        |l| l.repairs.into(),
    ),
    (
        "herd_link_records_owed",
        Kind::Gauge,
        "Client records the link still owes its neighbour (catch-up and live updates).",
        |l| l.records_owed.into(),
    ),
    (
        "herd_link_lagging",
        Kind::Gauge,
        "1 while the link lags: it has held clients back for 'peer hold-ms' since it last \
         owed nothing, and clients are no longer held back for it.",
        |l| l.lagging.into(),
    ),
    (
        "herd_link_lag_episodes_total",
        Kind::Counter,
        "Times the link started lagging.",
        |l| l.lag_episodes.into(),
    ),
    (
        "herd_link_last_heard_seconds",
        Kind::Gauge,
        "When the neighbour last sent anything on the link, in seconds since the Unix epoch \
         (0: never).",
        |l| l.last_heard_unix.into(),
    ),
];

fn render_links(page: &mut Exposition, links: &[LinkFigures]) {
    page.gauge(
        "herd_links_configured",
        "Outbound links to neighbours in the config.",
        links.len(),
    );
    if links.is_empty() {
        return; // a family without samples says nothing
    }
    for (name, kind, help, value) in LINK_FAMILIES {
        let mut family = page.family(name, kind, help);
        for link in links {
            family.sample(&[("link", &link.name)], value(link));
        }
    }
    let mut family = page.family(
        "herd_link_state",
        Kind::Gauge,
        "1 for the outbound link's current state, 0 for the others.",
    );
    for link in links {
        for state in LINK_STATES {
            family.sample(
                &[("link", &link.name), ("state", state)],
                link.state == state,
            );
        }
    }
}

fn render_places(page: &mut Exposition, stats: &PlacesStats) {
    page.counter(
        "herd_places_calls_total",
        "Places calls handed to the workers (each one billed once it reaches Google).",
        stats.calls_sent,
    );
    page.counter(
        "herd_places_cache_hits_total",
        "WHATSATs answered from the cache.",
        stats.cache_hits,
    );
    page.counter(
        "herd_places_coalesced_total",
        "WHATSATs that shared an identical call in flight.",
        stats.coalesced,
    );
    page.counter(
        "herd_places_rate_limited_total",
        "WHATSATs answered 429 at once: 'places max-per-second' reached.",
        stats.rate_limited,
    );
    page.counter(
        "herd_places_queue_full_total",
        "WHATSATs answered 429 at once: every worker busy and 'places queue' full.",
        stats.queue_full,
    );
    page.counter(
        "herd_places_cancelled_total",
        "Calls skipped because every WHATSAT waiting for them had left.",
        stats.cancelled,
    );
    page.counter(
        "herd_places_local_total",
        "WHATSATs answered from the places file (places api local): no call, nothing billed.",
        stats.local_answers,
    );
    page.counter(
        "herd_places_local_seconds_total",
        "Time spent searching the places file for those WHATSATs.",
        stats.local_time.as_secs_f64(),
    );
    page.family(
        "herd_places_errors_total",
        Kind::Counter,
        "Places calls that failed, by kind.",
    )
    .sample(&[("kind", "status")], stats.error_status)
    .sample(&[("kind", "bad_body")], stats.bad_body)
    .sample(&[("kind", "timeout")], stats.timeouts)
    .sample(&[("kind", "transport")], stats.transport_errors);
    let bounds: Vec<f64> = LATENCY_BUCKETS_MS
        .iter()
        .map(|&ms| ms as f64 / 1000.0)
        .collect();
    page.histogram(
        "herd_places_latency_seconds",
        "How long finished Places calls took.",
        &bounds,
        &stats.latency_buckets,
        stats.latency_sum.as_secs_f64(),
    );
}

fn render_tls(page: &mut Exposition, tls: &TlsFigures) {
    let mut family = page.family(
        "herd_tls_handshakes_total",
        Kind::Counter,
        "TLS handshakes of links, made and accepted: 'ok', or why one failed.",
    );
    family.sample(&[("result", "ok")], tls.handshakes.succeeded);
    for (failure, count) in Failure::ALL.iter().zip(tls.handshakes.failed) {
        family.sample(&[("result", failure.label())], count);
    }
    let mut family = page.family(
        "herd_tls_certificate_expiry_seconds",
        Kind::Gauge,
        "When each certificate 'peer tls' loaded expires (the herd's CA and the server's own), \
         in seconds since the Unix epoch.",
    );
    for (certificate, expiry) in &tls.expiries {
        family.sample(&[("certificate", certificate)], *expiry as f64);
    }
}

fn render_store_and_log(page: &mut Exposition, s: &Snapshot) {
    page.counter(
        "herd_log_written_bytes_total",
        "Bytes of records written to the log file.",
        s.log_written_bytes,
    );
    page.counter(
        "herd_log_dropped_bytes_total",
        "Bytes of records dropped because the log could not be written (a full disk).",
        s.log_dropped_bytes,
    );
    page.gauge(
        "herd_store_enabled",
        "1 when the server keeps its records in a store (store dir).",
        s.store.is_some(),
    );
    let Some(stats) = &s.store else {
        return;
    };
    page.gauge(
        "herd_store_bytes",
        "Length of the store file, in bytes.",
        stats.bytes,
    );
    page.gauge(
        "herd_store_failing",
        "1 while records are not all on disk (a write or sync is failing, or a rewrite is \
         putting back what one missed).",
        stats.failing,
    );
    page.counter(
        "herd_store_errors_total",
        "Store appends, syncs and compactions that failed.",
        stats.errors,
    );
    page.counter(
        "herd_store_compactions_total",
        "Times the store was rewritten as one line per client.",
        stats.compactions,
    );
    let synced = stats.last_sync.map_or(0.0, |at| {
        at.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    page.gauge(
        "herd_store_last_sync_seconds",
        "When the store was last synced to the device, in seconds since the Unix epoch \
         (0: never).",
        synced,
    );
}

fn render_process(page: &mut Exposition, s: &Snapshot) {
    if let Some(bytes) = s.process.resident_bytes {
        page.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            bytes,
        );
    }
    if let Some(fds) = s.process.open_fds {
        page.gauge("process_open_fds", "Number of open file descriptors.", fds);
    }
    if let Some(started) = s.process_started_unix {
        page.gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            started,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn snapshot() -> Snapshot {
        Snapshot {
            server: "Campbell".into(),
            started_unix: 1_800_000_000.5,
            connections_open: 3,
            counters: Counters {
                lines_received: 10,
                lines_sent: 9,
                bytes_received: 800,
                bytes_sent: 700,
                connections_accepted: 5,
                connections_rejected: 1,
            },
            clients_known: 2,
            version: 7,
            held: vec![("Bona".into(), 5)],
            commands: CommandCounts {
                iamat: 4,
                whatsat: 2,
                invalid: 1,
            },
            links: vec![
                LinkFigures {
                    name: "Bona".into(),
                    state: "up",
                    up_since_unix: 1_800_000_001.0,
                    flaps: 1,
                    resyncs: 2,
                    records_owed: 7,
                    last_heard_unix: 1_800_000_002.0,
                    lagging: true,
                    lag_episodes: 3,
                    records_sent: 11,
                    full_copies: 1,
                    checks: 4,
                    repairs: 1,
                },
                LinkFigures {
                    name: "Clark".into(),
                    state: "waiting",
                    ..LinkFigures::default()
                },
            ],
            ..Snapshot::default()
        }
    }

    /// The page's lines that start with `prefix`.
    fn lines<'a>(page: &'a str, prefix: &str) -> Vec<&'a str> {
        page.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn every_family_has_its_help_and_type_once_before_its_samples() {
        let page = render(&snapshot());
        let mut seen = Vec::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!seen.contains(&name.to_string()), "{name} twice");
                seen.push(name.to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = seen.last().expect("a sample after a TYPE line");
                assert!(name.starts_with(family.as_str()), "{line} outside {family}");
            }
        }
        assert!(page.ends_with('\n'));
    }

    #[test]
    fn server_figures_are_written_as_counters_and_gauges() {
        let page = render(&snapshot());
        let version = env!("CARGO_PKG_VERSION");
        assert!(page.contains(&format!(
            "herd_info{{server=\"Campbell\",version=\"{version}\"}} 1\n"
        )));
        assert!(page.contains("# TYPE herd_connections gauge\nherd_connections 3\n"));
        assert!(page.contains("# TYPE herd_connections_accepted_total counter\n"));
        assert_eq!(
            lines(&page, "herd_commands_total{"),
            [
                "herd_commands_total{kind=\"iamat\"} 4",
                "herd_commands_total{kind=\"whatsat\"} 2",
                "herd_commands_total{kind=\"invalid\"} 1"
            ]
        );
        assert!(page.contains("herd_start_time_seconds 1800000000.5\n"));
    }

    #[test]
    fn each_link_has_one_state_set_and_its_history() {
        let page = render(&snapshot());
        assert!(page.contains("herd_links_configured 2\n"));
        assert_eq!(
            lines(&page, "herd_link_up{"),
            [
                "herd_link_up{link=\"Bona\"} 1",
                "herd_link_up{link=\"Clark\"} 0"
            ]
        );
        let states = lines(&page, "herd_link_state{link=\"Clark\"");
        assert_eq!(states.len(), LINK_STATES.len());
        assert_eq!(
            states
                .iter()
                .filter(|l| l.ends_with(" 1"))
                .collect::<Vec<_>>(),
            [&"herd_link_state{link=\"Clark\",state=\"waiting\"} 1"]
        );
        assert!(page.contains("herd_link_records_owed{link=\"Bona\"} 7\n"));
        assert!(page.contains("herd_link_up_since_seconds{link=\"Clark\"} 0\n"));
        assert!(page.contains("herd_link_flaps_total{link=\"Bona\"} 1\n"));
        assert!(page.contains("herd_link_lagging{link=\"Bona\"} 1\n"));
        assert!(page.contains("herd_link_lagging{link=\"Clark\"} 0\n"));
        assert!(page.contains("herd_link_lag_episodes_total{link=\"Bona\"} 3\n"));
    }

    #[test]
    fn without_links_or_a_store_their_families_are_left_out() {
        let page = render(&Snapshot::default());
        assert!(page.contains("herd_links_configured 0\n"));
        assert!(!page.contains("herd_link_up"));
        assert!(page.contains("herd_store_enabled 0\n"));
        assert!(!page.contains("herd_store_bytes"));
        assert!(!page.contains("process_resident_memory_bytes"));
    }

    #[test]
    fn the_store_and_process_figures_appear_when_known() {
        let s = Snapshot {
            store: Some(StoreStats {
                bytes: 4096,
                last_sync: Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
                errors: 2,
                failing: true,
                compactions: 3,
            }),
            process: ProcessSample {
                resident_bytes: Some(1 << 20),
                open_fds: Some(12),
            },
            process_started_unix: Some(1_799_999_999.0),
            ..snapshot()
        };
        let page = render(&s);
        for line in [
            "herd_store_enabled 1",
            "herd_store_bytes 4096",
            "herd_store_failing 1",
            "herd_store_errors_total 2",
            "herd_store_compactions_total 3",
            "herd_store_last_sync_seconds 1800000000",
            "process_resident_memory_bytes 1048576",
            "process_open_fds 12",
            "process_start_time_seconds 1799999999",
        ] {
            assert!(page.contains(&format!("{line}\n")), "{line} in\n{page}");
        }
    }

    #[test]
    fn places_latency_is_a_cumulative_histogram_in_seconds() {
        let mut places = PlacesStats::default();
        places.latency_buckets[4] = 2; // <= 100 ms
        places.latency_buckets[LATENCY_BUCKETS_MS.len()] = 1; // slower than the last bound
        places.latency_sum = Duration::from_millis(11_150);
        let page = render(&Snapshot {
            places,
            ..Snapshot::default()
        });
        assert!(page.contains("herd_places_latency_seconds_bucket{le=\"0.05\"} 0\n"));
        assert!(page.contains("herd_places_latency_seconds_bucket{le=\"0.1\"} 2\n"));
        assert!(page.contains("herd_places_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(page.contains("herd_places_latency_seconds_sum 11.15\n"));
        assert!(page.contains("herd_places_latency_seconds_count 3\n"));
    }

    #[test]
    fn local_answers_are_their_own_counters() {
        let mut places = PlacesStats::default();
        places.answered_locally(Duration::from_micros(250));
        places.answered_locally(Duration::from_micros(250));
        let page = render(&Snapshot {
            places,
            ..Snapshot::default()
        });
        assert!(page.contains("herd_places_local_total 2\n"), "{page}");
        assert!(
            page.contains("herd_places_local_seconds_total 0.0005\n"),
            "{page}"
        );
        assert!(page.contains("herd_places_calls_total 0\n"), "{page}");
        assert!(
            page.contains("herd_places_latency_seconds_count 0\n"),
            "{page}"
        );
    }

    #[test]
    fn tls_handshakes_and_certificate_expiries_are_shown_with_peer_tls_only() {
        let page = render(&Snapshot::default());
        assert!(!page.contains("herd_tls"), "{page}");
        let mut handshakes = HandshakeCounts {
            succeeded: 4,
            ..HandshakeCounts::default()
        };
        handshakes.fail(Failure::WrongName);
        let page = render(&Snapshot {
            tls: Some(TlsFigures {
                handshakes,
                expiries: vec![
                    ("ca".into(), 2_100_000_000),
                    ("Campbell".into(), 1_900_000_000),
                ],
            }),
            ..Snapshot::default()
        });
        assert!(
            page.contains("herd_tls_handshakes_total{result=\"ok\"} 4\n"),
            "{page}"
        );
        assert!(
            page.contains("herd_tls_handshakes_total{result=\"wrong_name\"} 1\n"),
            "{page}"
        );
        assert!(
            page.contains("herd_tls_handshakes_total{result=\"timeout\"} 0\n"),
            "{page}"
        );
        assert!(
            page.contains(
                "herd_tls_certificate_expiry_seconds{certificate=\"Campbell\"} 1900000000\n"
            ),
            "{page}"
        );
    }
}
