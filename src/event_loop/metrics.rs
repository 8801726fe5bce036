//! The event loop's side of the metrics listener (`metrics NAME IP:PORT`): its own listener
//! and its own few HTTP connections, nonblocking like everything else on the loop, each
//! answered once and closed; and [`EventLoop::render_metrics`], the one function that turns
//! the server's figures into the page.
//!
//! What a request means is `metrics::http`'s decision and how the page is written is
//! `metrics`'s; this reads, writes and keeps the listener's limits: at most `limit
//! metrics-connections` open (one more is answered 503 and closed), a request head of at
//! most `limit metrics-request-bytes` (431), and `limit metrics-timeout-ms` from accept to
//! the last byte of the response (408 if the request never came), so a slow or hostile
//! scraper costs a slot for that long at most. Each limit is logged when hit.

use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use slab::Slab;

use super::EventLoop;
use crate::buffer::OutBuffer;
use crate::config::Limits;
use crate::link::LinkState;
use crate::metrics::http::{self, Decision, Page, Status};
use crate::metrics::{process, Exposition, Kind};
use crate::net::{self, ReadOutcome};
use crate::places::stats::LATENCY_BUCKETS_MS;

/// The metrics listener's token; its connection `key` has `FIRST_METRICS_CONN + key`. Far
/// above every client token (`first_conn + slab key`), so the two ranges never meet.
pub(super) const METRICS_LISTENER: Token = Token(1 << 40);
const FIRST_METRICS_CONN: usize = (1 << 40) + 1;

/// After its response, a connection waits this long at most for the client to close (closing
/// first, with the client's unread bytes in our socket, would reset the connection and could
/// cost the client the end of the response).
const LINGER: Duration = Duration::from_millis(500);

/// The listener, its connections and what the page says about the process.
pub(super) struct MetricsServer {
    listener: TcpListener,
    conns: Slab<HttpConn>,
    max_conns: usize,
    max_request_bytes: usize,
    timeout: Duration,
    /// The server's name, for `herd_info`.
    server: String,
    started_unix: f64,
    process_started_unix: Option<f64>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the request head.
    Reading,
    /// Writing the response.
    Writing,
    /// Response written and our side shut: waiting for the client's close.
    Lingering,
}

struct HttpConn {
    stream: TcpStream,
    remote: SocketAddr,
    request: Vec<u8>,
    out: OutBuffer,
    phase: Phase,
    /// Closed at this time, whatever the phase.
    deadline: Instant,
    registered: Interest,
}

impl MetricsServer {
    pub(super) fn new(
        mut listener: TcpListener,
        registry: &mio::Registry,
        server: &str,
        limits: &Limits,
    ) -> std::io::Result<MetricsServer> {
        registry.register(&mut listener, METRICS_LISTENER, Interest::READABLE)?;
        let addr = listener.local_addr()?;
        info!("metrics listen {addr}");
        Ok(MetricsServer {
            listener,
            conns: Slab::new(),
            max_conns: limits.metrics_connections,
            max_request_bytes: limits.metrics_request_bytes,
            timeout: limits.metrics_timeout,
            server: server.to_string(),
            started_unix: unix_now(),
            process_started_unix: process::start_time_seconds(),
        })
    }

    /// A reload moved the metrics address: the new listener takes new scrapers; connections
    /// already accepted finish on the old one's terms.
    pub(super) fn replace_listener(
        &mut self,
        mut listener: TcpListener,
        registry: &mio::Registry,
    ) -> std::io::Result<()> {
        registry.register(&mut listener, METRICS_LISTENER, Interest::READABLE)?;
        let mut old = std::mem::replace(&mut self.listener, listener);
        let _ = registry.deregister(&mut old);
        if let Ok(addr) = self.listener.local_addr() {
            info!("metrics listen {addr}");
        }
        Ok(())
    }

    /// A reload changed the listener's limits (they apply to the next connections).
    pub(super) fn set_limits(&mut self, limits: &Limits) {
        self.max_conns = limits.metrics_connections;
        self.max_request_bytes = limits.metrics_request_bytes;
        self.timeout = limits.metrics_timeout;
    }

    /// The earliest time a connection must be looked at.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|(_, c)| c.deadline).min()
    }
}

impl EventLoop {
    /// An event for the metrics listener or one of its connections.
    pub(super) fn on_metrics_event(&mut self, token: Token, event: &mio::event::Event) {
        if token == METRICS_LISTENER {
            return self.accept_metrics();
        }
        let key = token.0 - FIRST_METRICS_CONN;
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_metrics_request(key);
        }
        if event.is_writable() {
            self.write_metrics_response(key);
        }
    }

    fn accept_metrics(&mut self) {
        let Some(metrics) = &mut self.metrics else {
            return;
        };
        loop {
            let (mut stream, remote) = match net::accept(&metrics.listener) {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(e) => {
                    // Out of descriptors, most likely: the next scrape's connection raises a
                    // new edge, and serving clients matters more than this.
                    warn!("metrics accept failed: {e}");
                    return;
                }
            };
            if metrics.conns.len() >= metrics.max_conns {
                warn!(
                    "limit metrics-connections: {} open, refusing {remote}",
                    metrics.conns.len()
                );
                // One try, into an empty socket buffer: it fits. Then the stream is dropped.
                let _ = std::io::Write::write(&mut stream, &http::error_response(Status::Busy));
                continue;
            }
            let entry = metrics.conns.vacant_entry();
            let token = Token(FIRST_METRICS_CONN + entry.key());
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                warn!("metrics accept from {remote}: cannot register: {e}");
                continue;
            }
            debug!("metrics accept from {remote}");
            entry.insert(HttpConn {
                stream,
                remote,
                request: Vec::new(),
                out: OutBuffer::default(),
                phase: Phase::Reading,
                deadline: Instant::now() + metrics.timeout,
                registered: Interest::READABLE,
            });
        }
    }

    /// Reads what the client sent: the request head (then answers it), or, after the
    /// response, anything until its close.
    fn read_metrics_request(&mut self, key: usize) {
        let EventLoop {
            metrics, scratch, ..
        } = self;
        let Some(metrics) = metrics else {
            return;
        };
        let max_bytes = metrics.max_request_bytes;
        let Some(conn) = metrics.conns.get_mut(key) else {
            return;
        };
        let decision = loop {
            match net::read_some(&mut conn.stream, scratch) {
                ReadOutcome::Data(n) if conn.phase == Phase::Reading => {
                    // Only up to the limit is kept; past it the answer is 431 anyway.
                    let room = max_bytes.saturating_sub(conn.request.len());
                    conn.request.extend_from_slice(&scratch[..n.min(room)]);
                    let decision = http::decide(&conn.request, max_bytes);
                    if decision != Decision::NeedMore {
                        break decision;
                    }
                }
                ReadOutcome::Data(_) => {} // after the request: read and dropped
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Eof | ReadOutcome::Failed(_) => {
                    if conn.phase == Phase::Reading {
                        debug!("metrics {}: closed before a whole request", conn.remote);
                    }
                    return self.close_metrics(key);
                }
            }
        };
        let response = match decision {
            Decision::NeedMore => return,
            Decision::Serve { page, head_only } => {
                let (content_type, body) = match page {
                    Page::Metrics => (http::METRICS_CONTENT_TYPE, self.render_metrics()),
                    Page::Index => ("text/html; charset=utf-8", http::INDEX_PAGE.to_string()),
                };
                http::frame(Status::Ok, content_type, body.as_bytes(), head_only)
            }
            Decision::Refuse(status) => {
                if status == Status::TooLarge {
                    warn!(
                        "limit metrics-request-bytes: {} sent a request head of more than {} \
                         bytes",
                        self.metrics_remote(key),
                        max_bytes
                    );
                }
                http::error_response(status)
            }
        };
        self.respond_metrics(key, response);
    }

    fn metrics_remote(&self, key: usize) -> String {
        self.metrics
            .as_ref()
            .and_then(|m| m.conns.get(key))
            .map_or_else(String::new, |c| c.remote.to_string())
    }

    /// Queues the response and writes what the socket takes.
    fn respond_metrics(&mut self, key: usize, response: Vec<u8>) {
        let Some(conn) = self.metrics.as_mut().and_then(|m| m.conns.get_mut(key)) else {
            return;
        };
        conn.request = Vec::new();
        conn.out.push(&response);
        conn.phase = Phase::Writing;
        self.write_metrics_response(key);
    }

    fn write_metrics_response(&mut self, key: usize) {
        let Some(conn) = self.metrics.as_mut().and_then(|m| m.conns.get_mut(key)) else {
            return;
        };
        if conn.phase != Phase::Writing {
            return;
        }
        if let Err(e) = net::write_pending(&mut conn.stream, &mut conn.out) {
            debug!("metrics {}: write error: {e}", conn.remote);
            return self.close_metrics(key);
        }
        let wanted = if conn.out.is_empty() {
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.phase = Phase::Lingering;
            conn.deadline = conn.deadline.min(Instant::now() + LINGER);
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        if wanted != conn.registered {
            let token = Token(FIRST_METRICS_CONN + key);
            if self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, wanted)
                .is_err()
            {
                return self.close_metrics(key);
            }
            conn.registered = wanted;
        }
    }

    /// Closes the connections whose time is up: one still sending its request gets a 408.
    pub(super) fn expire_metrics(&mut self, now: Instant) {
        let Some(metrics) = &mut self.metrics else {
            return;
        };
        let expired: Vec<usize> = metrics
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        let timeout_ms = metrics.timeout.as_millis();
        for key in expired {
            let conn = &mut metrics.conns[key];
            match conn.phase {
                Phase::Reading => {
                    warn!(
                        "limit metrics-timeout-ms: {} sent no whole request within {timeout_ms} \
                         ms, closing",
                        conn.remote
                    );
                    let _ = std::io::Write::write(
                        &mut conn.stream,
                        &http::error_response(Status::Timeout),
                    );
                }
                Phase::Writing => warn!(
                    "limit metrics-timeout-ms: {} did not read its response within \
                     {timeout_ms} ms, closing",
                    conn.remote
                ),
                Phase::Lingering => {}
            }
            let mut conn = metrics.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn close_metrics(&mut self, key: usize) {
        let Some(metrics) = &mut self.metrics else {
            return;
        };
        if metrics.conns.contains(key) {
            let mut conn = metrics.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// The metrics page: every figure the server has, in the text format. A new metric is one
    /// more call on `page` here.
    pub(super) fn render_metrics(&self) -> String {
        let Some(metrics) = &self.metrics else {
            return String::new();
        };
        let now = Instant::now();
        let now_unix = unix_now();
        let unix_at = |at: Instant| now_unix - now.saturating_duration_since(at).as_secs_f64();
        let table = self.app.clients();
        let counters = &self.counters;
        let mut page = Exposition::new();

        page.family("herd_info", Kind::Gauge, "The server's name and version.")
            .sample(
                &[
                    ("server", &metrics.server),
                    ("version", env!("CARGO_PKG_VERSION")),
                ],
                1u64,
            );
        page.gauge(
            "herd_start_time_seconds",
            "When the server started serving, in seconds since the Unix epoch.",
            metrics.started_unix,
        );

        page.gauge(
            "herd_connections",
            "Open connections accepted on the server's port (clients and neighbours' links).",
            self.conns.len(),
        );
        page.counter(
            "herd_connections_accepted_total",
            "Connections accepted on the server's port.",
            counters.connections_accepted,
        );
        page.counter(
            "herd_connections_rejected_total",
            "Connections closed at once because 'limit connections' was reached.",
            counters.connections_rejected,
        );
        page.gauge(
            "herd_clients_known",
            "Client records in the table.",
            table.len(),
        );
        let commands = self.app.commands();
        page.family(
            "herd_commands_total",
            Kind::Counter,
            "Client commands: IAMAT and WHATSAT answered with an AT line, invalid ones with '? '.",
        )
        .sample(&[("kind", "iamat")], commands.iamat)
        .sample(&[("kind", "whatsat")], commands.whatsat)
        .sample(&[("kind", "invalid")], commands.invalid);

        let link_lines: u64 = self.links.iter().map(|l| l.history().lines_received).sum();
        page.counter(
            "herd_lines_received_total",
            "Lines received from clients and neighbours.",
            counters.lines_received + link_lines,
        );
        page.counter(
            "herd_lines_sent_total",
            "Lines sent to clients and neighbours.",
            counters.lines_sent,
        );
        page.counter(
            "herd_received_bytes_total",
            "Bytes read from client and neighbour connections.",
            counters.bytes_received,
        );
        page.counter(
            "herd_sent_bytes_total",
            "Bytes written to client and neighbour connections.",
            counters.bytes_sent,
        );

        self.render_links(&mut page, unix_at);
        self.render_places(&mut page);
        self.render_store_and_log(&mut page);

        let sample = process::sample();
        if let Some(bytes) = sample.resident_bytes {
            page.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                bytes,
            );
        }
        if let Some(fds) = sample.open_fds {
            page.gauge("process_open_fds", "Number of open file descriptors.", fds);
        }
        if let Some(started) = metrics.process_started_unix {
            page.gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                started,
            );
        }
        page.finish()
    }

    fn render_store_and_log(&self, page: &mut Exposition) {
        page.counter(
            "herd_log_written_bytes_total",
            "Bytes of records written to the log file.",
            crate::logging::bytes_written(),
        );
        page.counter(
            "herd_log_dropped_bytes_total",
            "Bytes of records dropped because the log could not be written (a full disk).",
            crate::logging::bytes_dropped(),
        );
        page.gauge(
            "herd_store_enabled",
            "1 when the server keeps its records in a store (store dir).",
            self.journal.is_some(),
        );
        let Some(journal) = &self.journal else {
            return;
        };
        let stats = journal.stats();
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

    fn render_links(&self, page: &mut Exposition, unix_at: impl Fn(Instant) -> f64) {
        let table = self.app.clients();
        // A link a reload removed keeps its place in the list, not on the page.
        let links: Vec<_> = self.links.iter().filter(|l| !l.is_removed()).collect();
        page.gauge(
            "herd_links_configured",
            "Outbound links to neighbours in the config.",
            links.len(),
        );
        if links.is_empty() {
            return; // a family without samples says nothing
        }
        let mut family = page.family(
            "herd_link_up",
            Kind::Gauge,
            "1 while the outbound link is up.",
        );
        for link in &links {
            let up = matches!(link.state(), LinkState::Up { .. });
            family.sample(&[("link", &link.name)], up);
        }
        let mut family = page.family(
            "herd_link_state",
            Kind::Gauge,
            "1 for the outbound link's current state, 0 for the others.",
        );
        for link in &links {
            for state in ["waiting", "connecting", "greeting", "up"] {
                family.sample(
                    &[("link", &link.name), ("state", state)],
                    link.state_name() == state,
                );
            }
        }
        let mut family = page.family(
            "herd_link_up_since_seconds",
            Kind::Gauge,
            "When the link last came up, in seconds since the Unix epoch (0 while down).",
        );
        for link in &links {
            let since = link.history().up_since.map_or(0.0, &unix_at);
            family.sample(&[("link", &link.name)], since);
        }
        let mut family = page.family(
            "herd_link_flaps_total",
            Kind::Counter,
            "Times the link went down after it was up.",
        );
        for link in &links {
            family.sample(&[("link", &link.name)], link.history().flaps);
        }
        let mut family = page.family(
            "herd_link_resyncs_total",
            Kind::Counter,
            "Times the link came up and started a resync of the whole table.",
        );
        for link in &links {
            family.sample(&[("link", &link.name)], link.history().resyncs);
        }
        let mut family = page.family(
            "herd_link_records_owed",
            Kind::Gauge,
            "Client records the link still owes its neighbour (resync and live updates).",
        );
        for link in &links {
            family.sample(&[("link", &link.name)], link.records_owed(table));
        }
        let mut family = page.family(
            "herd_link_last_heard_seconds",
            Kind::Gauge,
            "When the neighbour last sent anything on the link, in seconds since the Unix \
             epoch (0: never).",
        );
        for link in &links {
            let heard = link.history().last_heard.map_or(0.0, &unix_at);
            family.sample(&[("link", &link.name)], heard);
        }
    }

    fn render_places(&self, page: &mut Exposition) {
        let stats = &self.lookups.stats;
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
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
