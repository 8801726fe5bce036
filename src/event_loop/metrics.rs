//! The metrics listener (`metrics NAME IP:PORT`): its own listener and its own few HTTP
//! connections, nonblocking like everything else on the loop, each answered once and closed.
//! What a request means is `metrics::http`'s decision and the page is `metrics::page`'s, made
//! from a snapshot the conductor takes only when a scrape asks for it; this reads, writes and
//! keeps the listener's limits: at most `limit metrics-connections` open (one more is answered
//! 503 and closed), a request head of at most `limit metrics-request-bytes` (431), and `limit
//! metrics-timeout-ms` from accept to the last byte of the response (408 if the request never
//! came), so a slow or hostile scraper costs a slot for that long at most. Each limit is
//! logged when hit.

use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};
use slab::Slab;

use crate::buffer::OutBuffer;
use crate::config::Limits;
use crate::metrics::http::{self, Decision, Page, Status};
use crate::net::{self, ReadOutcome};

use super::tokens::{self, Owner};

/// After its response, a connection waits this long at most for the client to close (closing
/// first, with the client's unread bytes in our socket, would reset the connection and could
/// cost the client the end of the response).
const LINGER: Duration = Duration::from_millis(500);
/// Bytes read per `read` call (a request head is at most `limit metrics-request-bytes`).
const READ_CHUNK: usize = 16 * 1024;

/// The listener and its connections.
pub struct MetricsServer {
    listener: TcpListener,
    conns: Slab<HttpConn>,
    max_conns: usize,
    max_request_bytes: usize,
    timeout: Duration,
    /// Where requests are read.
    scratch: Vec<u8>,
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
    pub fn new(
        mut listener: TcpListener,
        registry: &Registry,
        limits: &Limits,
    ) -> std::io::Result<MetricsServer> {
        registry.register(&mut listener, tokens::METRICS_LISTENER, Interest::READABLE)?;
        let addr = listener.local_addr()?;
        info!("metrics listen {addr}");
        Ok(MetricsServer {
            listener,
            conns: Slab::new(),
            max_conns: limits.metrics_connections,
            max_request_bytes: limits.metrics_request_bytes,
            timeout: limits.metrics_timeout,
            scratch: vec![0; READ_CHUNK],
        })
    }

    /// A reload moved the metrics address: the new listener takes new scrapers; connections
    /// already accepted finish on the old one's terms.
    pub fn replace_listener(
        &mut self,
        mut listener: TcpListener,
        registry: &Registry,
    ) -> std::io::Result<()> {
        registry.register(&mut listener, tokens::METRICS_LISTENER, Interest::READABLE)?;
        let mut old = std::mem::replace(&mut self.listener, listener);
        let _ = registry.deregister(&mut old);
        if let Ok(addr) = self.listener.local_addr() {
            info!("metrics listen {addr}");
        }
        Ok(())
    }

    /// A reload changed the listener's limits (they apply to the next connections).
    pub fn set_limits(&mut self, limits: &Limits) {
        self.max_conns = limits.metrics_connections;
        self.max_request_bytes = limits.metrics_request_bytes;
        self.timeout = limits.metrics_timeout;
    }

    /// The earliest time a connection must be looked at.
    pub fn deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|(_, c)| c.deadline).min()
    }

    /// An event for the listener or one of its connections; `page` renders the metrics
    /// page, called only when a request asks for it.
    pub fn on_event(
        &mut self,
        owner: Owner,
        event: &mio::event::Event,
        registry: &Registry,
        page: impl FnOnce() -> String,
    ) {
        let key = match owner {
            Owner::MetricsListener => return self.accept(registry),
            Owner::MetricsConn(key) => key,
            _ => return,
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read_request(key, registry, page);
        }
        if event.is_writable() {
            self.write_response(key, registry);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, remote) = match net::accept(&self.listener) {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(e) => {
                    // Out of descriptors, most likely: the next scrape's connection raises a
                    // new edge, and serving clients matters more than this.
                    warn!("metrics accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= self.max_conns {
                warn!(
                    "limit metrics-connections: {} open, refusing {remote}",
                    self.conns.len()
                );
                // One try, into an empty socket buffer: it fits. Then the stream is dropped.
                let _ = std::io::Write::write(&mut stream, &http::error_response(Status::Busy));
                continue;
            }
            let entry = self.conns.vacant_entry();
            let token = tokens::metrics_conn(entry.key());
            if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
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
                deadline: Instant::now() + self.timeout,
                registered: Interest::READABLE,
            });
        }
    }

    /// Reads what the client sent: the request head (then answers it), or, after the
    /// response, anything until its close.
    fn read_request(&mut self, key: usize, registry: &Registry, page: impl FnOnce() -> String) {
        let max_bytes = self.max_request_bytes;
        let scratch = &mut self.scratch;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let decision = loop {
            match net::read_some(&mut conn.stream, None, scratch) {
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
                ReadOutcome::Eof | ReadOutcome::Failed(_) | ReadOutcome::TlsFailed(_) => {
                    if conn.phase == Phase::Reading {
                        debug!("metrics {}: closed before a whole request", conn.remote);
                    }
                    return self.close(key, registry);
                }
            }
        };
        let response = match decision {
            Decision::NeedMore => return,
            Decision::Serve {
                page: which,
                head_only,
            } => {
                let (content_type, body) = match which {
                    Page::Metrics => (http::METRICS_CONTENT_TYPE, page()),
                    Page::Index => ("text/html; charset=utf-8", http::INDEX_PAGE.to_string()),
                };
                http::frame(Status::Ok, content_type, body.as_bytes(), head_only)
            }
            Decision::Refuse(status) => {
                if status == Status::TooLarge {
                    warn!(
                        "limit metrics-request-bytes: {} sent a request head of more than {} \
                         bytes",
                        conn.remote, max_bytes
                    );
                }
                http::error_response(status)
            }
        };
        conn.request = Vec::new();
        conn.out.push(&response);
        conn.phase = Phase::Writing;
        self.write_response(key, registry);
    }

    fn write_response(&mut self, key: usize, registry: &Registry) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase != Phase::Writing {
            return;
        }
        if let Err(e) = net::write_pending(&mut conn.stream, None, &mut conn.out) {
            debug!("metrics {}: write error: {e}", conn.remote);
            return self.close(key, registry);
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
            let token = tokens::metrics_conn(key);
            if registry
                .reregister(&mut conn.stream, token, wanted)
                .is_err()
            {
                return self.close(key, registry);
            }
            conn.registered = wanted;
        }
    }

    /// Closes the connections whose time is up: one still sending its request gets a 408.
    pub fn expire(&mut self, now: Instant, registry: &Registry) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        let timeout_ms = self.timeout.as_millis();
        for key in expired {
            let conn = &mut self.conns[key];
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
            self.close(key, registry);
        }
    }

    fn close(&mut self, key: usize, registry: &Registry) {
        if self.conns.contains(key) {
            let mut conn = self.conns.remove(key);
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}
