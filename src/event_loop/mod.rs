//! The server's one thread of control, as a conductor over parts that own their state: one
//! `mio` poll, and each event handed to the part whose token it is — the client connections
//! ([`clients`]), the neighbour links ([`links`]), the metrics listener ([`metrics`]) — with the
//! Places front ([`places`]) woken through a `Waker` and the store written before any reply
//! or flood leaves. The parts never reach into each other: what a client line's effects do
//! to the links, the Places front and the store is decided here ([`Others`]), and the metrics
//! page is a snapshot of every part's figures taken here when a scrape asks.
//!
//! A turn, like Redis's `aeMain`: poll; hand out the events; answer what they brought (floods
//! first, then replies); deliver a few Places answers; read again those whose turn ran out;
//! run the links' timers; free what closed; let the store compact a little. Every part of a
//! turn that grows with the load is bounded in time or count by the part that does it.

mod clients;
mod links;
mod metrics;
mod places;
mod reload;
mod tokens;

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Registry, Waker};

use crate::app::App;
use crate::changes::Epoch;
use crate::config::Config;
use crate::conn::{Connection, Reply};
use crate::logging;
use crate::metrics::page::{self, Snapshot, TlsFigures};
use crate::metrics::{process, Counters};
use crate::peer_wire::PeerAuth;
use crate::places::{LocalPlaces, Waiter};
use crate::secret::Secret;
use crate::session::Effect;
use crate::store::{self, Store};
use crate::table::ClientTable;
use crate::tls::{ClientTlsConfig, PeerTlsConfig};

use clients::{Clients, Dispatch, TlsPort};
use links::Links;
use metrics::MetricsServer;
use places::PlacesFront;
use reload::Running;

use tokens::{Owner, HANGUPS, SIGNALS, WAKER};

pub use tokens::MAX_LINKS;

/// Readiness events taken per `poll` call; more simply wait for the next call.
const EVENTS_PER_POLL: usize = 1024;
/// The log is flushed at least this often (SPEC section 6 asks for within a second); the
/// store's timers and the clients' limits are checked as often.
const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// What the loop needs from the config and the environment for one server.
pub struct ServerSetup {
    pub name: String,
    pub listener: TcpListener,
    pub config: Config,
    pub places_key: Option<Secret>,
    /// The places file, read before the port opened, with `places api local`.
    pub local_places: Option<LocalPlaces>,
    /// The herd's secret and the seed of handshake nonces; `None` with `peer secret none`.
    pub peer_auth: Option<PeerAuth>,
    /// Read end of the pipe that SIGTERM and SIGINT write to.
    pub signals: UnixStream,
    /// Read end of the pipe that SIGHUP writes to.
    pub hangups: UnixStream,
    /// The store (`store dir`), and the clients it held; `None` keeps records in memory.
    pub store: Option<store::Opened>,
    /// The name of this run's history of versions when there is no store (a store keeps its
    /// own).
    pub epoch: Epoch,
    /// The config file, read again on SIGHUP.
    pub config_path: std::path::PathBuf,
    /// The most connections the open-file limit leaves room for (a reload clamps to it too).
    pub connections_fit: usize,
    /// The metrics listener (`metrics NAME IP:PORT`), bound already.
    pub metrics: Option<TcpListener>,
    /// `peer tls DIR`: the herd's CA and this server's certificate and key, loaded.
    pub peer_tls: Option<PeerTlsConfig>,
    /// `tls NAME IP:PORT CERT KEY`: the listener for clients over TLS, bound already, and
    /// what they are shown.
    pub client_tls: Option<(TcpListener, ClientTlsConfig)>,
}

/// Who the server is and what it runs from: its name, its config (a reload is checked
/// against it), and when it started.
struct Identity {
    name: String,
    config: Config,
    config_path: std::path::PathBuf,
    connections_fit: usize,
    started_unix: f64,
    process_started_unix: Option<f64>,
}

/// The signal pipes, registered under [`SIGNALS`] and [`HANGUPS`]; owned here so they stay
/// open while the loop runs.
struct SignalPipes {
    _stop: UnixStream,
    hangups: UnixStream,
}

impl SignalPipes {
    /// Drains the hangup pipe (edge-triggered: every byte, then act once however many
    /// signals came).
    fn drain_hangups(&mut self) {
        let mut bytes = [0u8; 64];
        loop {
            match self.hangups.read(&mut bytes) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
    }
}

pub struct EventLoop {
    poll: Poll,
    /// The protocol's state: the client table, the neighbours, what commands do.
    app: App,
    clients: Clients,
    links: Links,
    places: PlacesFront,
    /// Every record stored is written here before the turn's output leaves.
    store: Option<Store>,
    metrics: Option<MetricsServer>,
    signals: SignalPipes,
    identity: Identity,
    stopping: bool,
}

/// The parts a client line's effects reach, lent to the clients part for one call.
struct Others<'a> {
    links: &'a mut Links,
    places: &'a mut PlacesFront,
    store: &'a mut Option<Store>,
}

impl Dispatch for Others<'_> {
    fn holding_back_clients(&self, table: &ClientTable) -> bool {
        self.links.holding_back_clients(table, Instant::now())
    }

    /// Floods go to the store and to every link (each decides whether it owes the record);
    /// lookups go to the Places front, and a ready answer (cached, or refused at once) goes
    /// into the connection's reply slot.
    fn carry_out(
        &mut self,
        effect: Effect,
        conn_key: usize,
        conn: &mut Connection,
        table: &ClientTable,
    ) {
        match effect {
            Effect::StoreAndFlood(record) => {
                if let (Some(store), Some(line)) = (self.store.as_mut(), table.line_at(record)) {
                    store.record(line, table.version_at(record));
                }
            }
            Effect::Mark { neighbour, mark } => {
                if let Some(store) = self.store.as_mut() {
                    store.mark(&neighbour, mark);
                }
            }
            Effect::Peered => {
                if let Some(peer) = &conn.peer {
                    self.links.neighbour_is_back(peer.link, Instant::now());
                }
            }
            Effect::Lookup {
                seq,
                at_line,
                query,
            } => {
                let waiter = Waiter {
                    conn_key,
                    conn_id: conn.id,
                    seq,
                    at_line,
                };
                if let Some((waiter, json)) = self.places.begin(query, waiter, Instant::now()) {
                    let at_line = waiter.at_line;
                    conn.fill_reply(waiter.seq, Reply::Whatsat { at_line, json });
                }
            }
        }
    }

    fn persist(&mut self) {
        if let Some(store) = self.store {
            store.persist();
        }
    }

    fn forget_lookups(&mut self, conn_key: usize, conn_id: u64) -> usize {
        self.places.forget(conn_key, conn_id)
    }
}

impl EventLoop {
    pub fn new(setup: ServerSetup) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let mut signals = setup.signals;
        let mut hangups = setup.hangups;
        let registry = poll.registry();
        registry.register(&mut signals, SIGNALS, Interest::READABLE)?;
        registry.register(&mut hangups, HANGUPS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(registry, WAKER)?);
        let config = setup.config;
        let now = Instant::now();
        let places = PlacesFront::start(
            &config.places,
            setup.places_key,
            setup.local_places,
            waker,
            now,
        )?;
        let seed = unix_now().to_bits() ^ u64::from(std::process::id()) << 32;
        let peer_tls = setup.peer_tls.map(Arc::new);
        let links = Links::new(&setup.name, &config, peer_tls.clone(), seed, now);
        // The app numbers neighbours as the links are numbered: by position, config order.
        let mut app = App::new(
            &setup.name,
            links.names(),
            config.servers.iter().map(|s| s.name.clone()).collect(),
            setup.peer_auth,
            config.limits.max_future_secs,
        );
        let tls_port = setup.client_tls.map(|(listener, config)| TlsPort {
            listener,
            config: Arc::new(config),
        });
        let clients = Clients::new(setup.listener, registry, &config.limits, peer_tls, tls_port)?;
        let metrics = match setup.metrics {
            Some(listener) => Some(MetricsServer::new(listener, registry, &config.limits)?),
            None => None,
        };
        app.clients_mut().set_epoch(setup.epoch);
        let store = setup.store.map(|opened| {
            app.restore(opened.clients);
            opened.store
        });
        Ok(EventLoop {
            poll,
            app,
            clients,
            links,
            places,
            store,
            metrics,
            signals: SignalPipes {
                _stop: signals,
                hangups,
            },
            identity: Identity {
                name: setup.name,
                config,
                config_path: setup.config_path,
                connections_fit: setup.connections_fit,
                started_unix: unix_now(),
                process_started_unix: process::start_time_seconds(),
            },
            stopping: false,
        })
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        while !self.stopping {
            let timeout = self.poll_timeout(Instant::now(), next_flush);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                self.dispatch(event);
            }
            self.end_turn();
            if Instant::now() >= next_flush {
                self.every_flush_interval();
                next_flush = Instant::now() + FLUSH_INTERVAL;
            }
        }
        info!("stopping on signal");
        if let Some(store) = &mut self.store {
            store.close();
        }
        logging::flush();
        Ok(())
    }

    /// How long the poll may sleep: not at all while work waits (input in line, Places
    /// answers, records a link may send, the store's work), else until the earliest deadline.
    fn poll_timeout(&mut self, now: Instant, next_flush: Instant) -> Duration {
        let table = self.app.clients();
        let holding = self.links.observe_pace(table, now);
        let busy = self.clients.input_waits(holding)
            || self.places.has_results()
            || self.links.have_unsent(table)
            || self.store.as_ref().is_some_and(Store::has_work);
        if busy {
            return Duration::ZERO;
        }
        let wake_at = [
            self.links.deadline(),
            self.clients.deadline(),
            self.metrics.as_ref().and_then(MetricsServer::deadline),
        ]
        .into_iter()
        .flatten()
        .fold(next_flush, Instant::min);
        wake_at.saturating_duration_since(now)
    }

    /// Hands one event to the part whose token it is. Spurious events for unknown tokens
    /// happen; each part ignores those.
    fn dispatch(&mut self, event: &mio::event::Event) {
        match tokens::owner(event.token()) {
            Owner::Listener | Owner::TlsListener => {
                let reserved = 2 * self.links.count();
                self.clients.accept_all(self.poll.registry(), reserved);
            }
            // Taken after the sockets' events (the Places front bounds them per turn).
            Owner::Waker => self.places.woken(),
            Owner::Signals => self.stopping = true,
            Owner::Hangups => self.on_hangup(),
            owner @ (Owner::MetricsListener | Owner::MetricsConn(_)) => {
                self.on_metrics_event(owner, event)
            }
            Owner::Link(link) => {
                self.links
                    .on_event(link, event, self.poll.registry(), &mut self.app)
            }
            Owner::Conn(key) => {
                let (registry, app, clients, mut others) = self.split();
                clients.on_event(key, event, registry, app, &mut others);
            }
        }
    }

    /// The rest of a turn, after its events.
    fn end_turn(&mut self) {
        // What these events brought is answered before the turn's heavier work (Places
        // answers, connections read again for the rest of their input): under 2,000
        // pipelining clients that work took up to 16 ms between reading a probing client's
        // IAMAT and writing its reply.
        self.answer_what_was_read();
        if self.places.has_results() {
            self.deliver_lookups();
        }
        if self
            .clients
            .deadline()
            .is_some_and(|at| at <= Instant::now())
        {
            let reserved = 2 * self.links.count();
            self.clients.accept_all(self.poll.registry(), reserved);
        }
        {
            let (_, app, clients, mut others) = self.split();
            clients.serve_more_input(app, &mut others);
        }
        self.links.tick(self.poll.registry(), self.app.clients());
        if let Some(metrics) = &mut self.metrics {
            metrics.expire(Instant::now(), self.poll.registry());
        }
        self.answer_what_was_read();
        let (registry, _, clients, mut others) = self.split();
        clients.sweep_closed(registry, &mut others);
        if let Some(store) = &mut self.store {
            store.step(self.app.clients());
        }
    }

    /// Every [`FLUSH_INTERVAL`]: the store's timers, the clients' output limits, the
    /// once-a-second summaries, and the log flushed.
    fn every_flush_interval(&mut self) {
        let now = Instant::now();
        if let Some(store) = &mut self.store {
            store.tick(self.app.clients(), now);
        }
        self.clients.enforce_limits(now);
        let (registry, _, clients, mut others) = self.split();
        clients.sweep_closed(registry, &mut others);
        if let Some(line) = self.links.hold_back_report(now) {
            info!("{line}");
        }
        if let Some(line) = self.places.refusals_report(now) {
            warn!("{line}");
        }
        logging::flush();
    }

    /// Writes the replies of the connections read since the last call. The turn's records go
    /// to the store first, then floods to the links, so a client never holds an AT reply for
    /// an update its server's links have not taken; one write per link and per client.
    fn answer_what_was_read(&mut self) {
        let (registry, app, clients, mut others) = self.split();
        others.persist();
        others.links.flush(registry, app.clients_mut());
        clients.answer_what_was_read(registry, &mut others);
    }

    /// Delivers this turn's share of finished lookups to every WHATSAT that waits for one.
    fn deliver_lookups(&mut self) {
        let mut answers = Vec::new();
        self.places.finish_some(|answer| answers.push(answer));
        let (registry, _, clients, mut others) = self.split();
        for (waiter, json) in answers {
            clients.deliver_whatsat(waiter, json, registry, &mut others);
        }
    }

    /// The parts a client event needs at once: the registry, the app, the clients, and the
    /// rest lent as [`Others`].
    fn split(&mut self) -> (&Registry, &mut App, &mut Clients, Others<'_>) {
        let EventLoop {
            poll,
            app,
            clients,
            links,
            places,
            store,
            ..
        } = self;
        let others = Others {
            links,
            places,
            store,
        };
        (poll.registry(), app, clients, others)
    }

    fn on_metrics_event(&mut self, owner: Owner, event: &mio::event::Event) {
        let EventLoop {
            poll,
            app,
            clients,
            links,
            places,
            store,
            metrics,
            identity,
            ..
        } = self;
        let Some(metrics) = metrics else {
            return;
        };
        let page = || {
            let snapshot = snapshot(identity, app, clients, links, places, store.as_ref());
            page::render(&snapshot)
        };
        metrics.on_event(owner, event, poll.registry(), page);
    }

    /// SIGHUP (once or more since the last event): the log is reopened at its path, so after
    /// `mv NAME.log NAME.log.1` (logrotate) the records that follow go to a new `NAME.log`;
    /// then the config is reloaded.
    fn on_hangup(&mut self) {
        self.signals.drain_hangups();
        info!("reopening log on SIGHUP");
        if let Err(e) = logging::reopen() {
            warn!("cannot reopen the log on SIGHUP: {e}");
        }
        self.reload();
    }

    /// Reads the config again and applies what changed, all or nothing (see [`reload`]).
    fn reload(&mut self) {
        let EventLoop {
            poll,
            app,
            clients,
            links,
            places,
            metrics,
            identity,
            ..
        } = self;
        let parts = reload::Parts {
            registry: poll.registry(),
            app,
            clients,
            links,
            places,
            metrics,
        };
        if let Some(config) = reload::reload(identity.running(), parts) {
            identity.config = config;
        }
    }
}

impl Identity {
    fn running(&self) -> Running<'_> {
        Running {
            name: &self.name,
            config: &self.config,
            config_path: &self.config_path,
            connections_fit: self.connections_fit,
        }
    }
}

/// Every part's figures for the metrics page, at this moment.
fn snapshot(
    identity: &Identity,
    app: &App,
    clients: &Clients,
    links: &Links,
    places: &PlacesFront,
    store: Option<&Store>,
) -> Snapshot {
    let now = Instant::now();
    let now_unix = unix_now();
    let unix_at = |at: Instant| now_unix - now.saturating_duration_since(at).as_secs_f64();
    let (from_clients, from_links) = (clients.traffic(), links.traffic());
    Snapshot {
        server: identity.name.clone(),
        started_unix: identity.started_unix,
        connections_open: clients.open(),
        counters: Counters {
            lines_received: from_clients.lines_received + links.lines_received(),
            lines_sent: from_clients.lines_sent + from_links.lines_sent,
            bytes_received: from_clients.bytes_received + from_links.bytes_received,
            bytes_sent: from_clients.bytes_sent + from_links.bytes_sent,
            connections_accepted: from_clients.accepted,
            connections_rejected: from_clients.rejected,
        },
        clients_known: app.clients().len(),
        version: app.clients().latest_version(),
        held: app
            .clients()
            .marks()
            .map(|(name, mark)| (name.to_string(), mark.version))
            .collect(),
        commands: app.commands(),
        links: links.figures(app.clients(), unix_at),
        places: places.stats().clone(),
        log_written_bytes: logging::bytes_written(),
        log_dropped_bytes: logging::bytes_dropped(),
        store: store.map(Store::stats),
        process: process::sample(),
        process_started_unix: identity.process_started_unix,
        tls: tls_figures(clients, links),
    }
}

/// The TLS figures, with `peer tls` or `tls NAME ...`: the links' handshakes both ways, and
/// when each loaded certificate expires (`ca` and the server's own for links, `clients` for
/// the one clients over TLS are shown).
fn tls_figures(clients: &Clients, links: &Links) -> Option<TlsFigures> {
    let mut expiries = links.tls_expiries();
    if let Some(expiry) = clients.client_tls_expiry() {
        expiries
            .get_or_insert_with(Vec::new)
            .push(("clients".to_string(), expiry));
    }
    let mut handshakes = links.handshakes().clone();
    handshakes.add(clients.handshakes());
    expiries.map(|expiries| TlsFigures {
        handshakes,
        expiries,
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
