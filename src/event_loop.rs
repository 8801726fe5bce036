//! The server's one thread of control: a `mio` poll loop that owns the listener, every
//! accepted connection (a slab entry whose token is derived from its key), the outbound links,
//! the Places results channel (through a `Waker`) and the signal pipes. It is the only user of
//! the `Registry`. It decides nothing about the protocol: `session` says what a line does and
//! the links say what they owe; this carries it out on the sockets.
//!
//! Handlers never close a connection in the middle of an event batch: they mark it
//! [`ConnState::Closed`] and the loop frees it after the batch, in [`EventLoop::close_marked`],
//! which deregisters, frees the slot and logs once.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::app::App;
use crate::backoff::{Backoff, Jitter};
use crate::buffer::{Line, LineReader};
use crate::config::{Config, Limits, PlacesApi};
use crate::conn::{ConnState, Connection, Reply};
use crate::link::{Backlog, Link, LinkTiming};
use crate::logging;
use crate::metrics::Counters;
use crate::net::{self, ReadOutcome, Socket};
use crate::places::{Begun, LookupDone, LookupJob, Lookups, PlacesPool, Refusals, Waiter};
use crate::protocol::ClientTime;
use crate::secret::Secret;
use crate::session::{self, Effect};
use crate::store::Store;

mod links;
mod metrics;
mod reload;

use metrics::{MetricsServer, METRICS_LISTENER};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
const HANGUPS: Token = Token(3);
/// Link `i` has token `FIRST_LINK + i`; connection tokens follow the links:
/// `FIRST_CONN + slab key`. Links are never renumbered (a reload adds at the end and leaves a
/// removed link in its place), so there is room for [`MAX_LINKS`] of them over a run.
const FIRST_LINK: usize = 4;
pub const MAX_LINKS: usize = 4096;
const FIRST_CONN: usize = FIRST_LINK + MAX_LINKS;

/// Readiness events taken per `poll` call; more simply wait for the next call.
const EVENTS_PER_POLL: usize = 1024;
/// Bytes read per `read` call, into one buffer shared by all connections: a connection keeps
/// only the unfinished tail of a line, so an idle one holds no buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read per `read` call from a client (a neighbour's floods get [`READ_CHUNK`]): with
/// thousands of clients pipelining, the part of a read their turn does not take stays in the
/// server, so it is kept small; a line-protocol client's commands are short.
const CLIENT_READ_CHUNK: usize = 16 * 1024;
/// Most bytes one connection may read per wakeup, so a busy client cannot starve the others;
/// a connection that hits it is served again before the loop sleeps.
const READ_BUDGET: usize = 4 * READ_CHUNK;
/// How soon an accept that failed for want of descriptors is tried again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// A connection accepted in the slots kept for neighbours has this long to say its hello.
const NEIGHBOUR_HELLO_WAIT: Duration = Duration::from_secs(5);
/// Finished lookups delivered per loop turn. Places answers come back in bursts (a turn that
/// reads many pipelining clients sends a burst of calls, and they are answered together), and
/// each answer is a few hundred lines to copy and log per waiting WHATSAT: taken all at once
/// they made turns of 20-50 ms in which no other client was read.
const RESULTS_PER_TURN: usize = 8;
/// Most time a turn spends delivering finished lookups, beside [`RESULTS_PER_TURN`]: a client
/// that sends one command and waits for its reply waits for the rest of the turn it arrived
/// in, so every part of a turn that grows with the load is bounded in time (see
/// [`MORE_INPUT_TIME`]). At least one is delivered per turn.
const RESULTS_TIME: Duration = Duration::from_micros(250);
/// Most time a turn spends reading clients again for the rest of their input: beyond it, the
/// rest wait for the next turn, after the events that came meanwhile (a client that sends one
/// command and waits for its reply should not wait for 2,000 that pipeline). Under 2,000
/// WHATSAT pipeliners on 2 cores, 2 ms here (with no time bound on the Places answers) left
/// the probing client's IAMAT p99 at 57-518 ms over 30 s; 250 µs (and [`RESULTS_TIME`]) at
/// 7.4-16.3 ms in five runs. Neighbours are read on regardless (`more_peer_input`).
const MORE_INPUT_TIME: Duration = Duration::from_micros(250);
/// The log is flushed at least this often (SPEC section 6 asks for within a second).
const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// Client input held back for a link (`peer max-owed`) is logged as one summary line at most
/// this often, not a line per episode: under a load the herd cannot carry there are thousands.
const HOLD_BACK_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Episodes of client input held back since the last report, and their total length.
struct HoldBacks {
    episodes: u64,
    held: Duration,
    /// When the episode under way began.
    since: Option<Instant>,
    last_report: Instant,
}

impl HoldBacks {
    fn new(now: Instant) -> HoldBacks {
        HoldBacks {
            episodes: 0,
            held: Duration::ZERO,
            since: None,
            // The first episode is reported at the next flush, not a second later.
            last_report: now.checked_sub(HOLD_BACK_REPORT_INTERVAL).unwrap_or(now),
        }
    }

    fn observe(&mut self, holding: bool, now: Instant) {
        match (holding, self.since) {
            (true, None) => {
                self.episodes += 1;
                self.since = Some(now);
            }
            (false, Some(since)) => {
                self.held += now.duration_since(since);
                self.since = None;
            }
            _ => {}
        }
    }

    /// The summary line, when one is due and there is something to say.
    fn report(&mut self, now: Instant, max_owed: usize) -> Option<String> {
        if self.episodes == 0 || now.duration_since(self.last_report) < HOLD_BACK_REPORT_INTERVAL {
            return None;
        }
        let ongoing = self.since.map_or(Duration::ZERO, |since| {
            self.since = Some(now);
            now.duration_since(since)
        });
        let line = format!(
            "peer max-owed: client input held back {} times for {} ms in the last {} ms \
             (a link owed more than {max_owed} updates)",
            self.episodes,
            (self.held + ongoing).as_millis(),
            now.duration_since(self.last_report).as_millis()
        );
        self.episodes = u64::from(self.since.is_some());
        self.held = Duration::ZERO;
        self.last_report = now;
        Some(line)
    }
}

/// What the loop needs from the config and the environment for one server.
pub struct ServerSetup {
    pub name: String,
    pub listener: TcpListener,
    pub config: Config,
    pub places_key: Option<Secret>,
    /// The herd's secret and the seed of handshake nonces; `None` with `peer secret none`.
    pub peer_auth: Option<crate::peer_wire::PeerAuth>,
    /// Read end of the pipe that SIGTERM and SIGINT write to.
    pub signals: UnixStream,
    /// Read end of the pipe that SIGHUP writes to.
    pub hangups: UnixStream,
    /// The store (`store dir`), and the clients it held; `None` keeps records in memory.
    pub store: Option<crate::store::Opened>,
    /// The config file, read again on SIGHUP.
    pub config_path: std::path::PathBuf,
    /// The most connections the open-file limit leaves room for (a reload clamps to it too).
    pub connections_fit: usize,
    /// The metrics listener (`metrics NAME IP:PORT`), bound already.
    pub metrics: Option<TcpListener>,
}

/// Whether a framed line is a hello (a neighbour introducing itself).
fn is_hello(line: &Line<'_>) -> bool {
    match line {
        Line::Complete(text) => crate::peer_wire::is_hello(text),
        Line::TooLong(_) => false,
    }
}

/// Where a connection's unread input waits to be read again.
enum Queue {
    /// Its read budget ran out.
    More,
    /// It is a client, and a link is behind.
    Held,
}

/// An accepted connection in the slab: its socket and framing beside the protocol state.
struct Accepted {
    stream: TcpStream,
    registered: Interest,
    reader: LineReader,
    conn: Connection,
    /// In `more_input` or `held_input` already (so it is queued once however many edges
    /// arrive).
    input_queued: bool,
    /// Not read because it has as much outstanding as it may (`Connection::is_saturated`);
    /// read again once its output drains or its lookups finish.
    saturated: bool,
    /// The last time the socket took bytes, or had nothing waiting (for `limit stall-ms`).
    last_progress: Instant,
    /// The client closed its sending side; handled once the input before it is.
    eof_seen: bool,
    /// Accepted past `limit connections`, in the slots kept for neighbours: it must say a
    /// neighbour's valid hello first, by this time, or it is closed.
    probation_until: Option<Instant>,
}

pub struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    /// Registered under `SIGNALS`; owned here so the pipe stays open while the loop runs.
    _signal_pipe: UnixStream,
    /// Registered under `HANGUPS`: a byte per SIGHUP.
    hangups: UnixStream,
    conns: Slab<Accepted>,
    first_conn: usize,
    next_conn_id: u64,
    links: Vec<Link<Socket>>,
    jitter: Jitter,
    app: App,
    places: PlacesPool,
    /// Every record stored is written here before the turn's output leaves.
    journal: Option<Store>,
    /// What each WHATSAT's lookup costs: cache, coalescing, rate limit, counters.
    lookups: Lookups,
    places_api: PlacesApi,
    /// The JSON of refused lookups, shaped once.
    refusals: Refusals,
    /// Finished lookups may wait in the pool's channel: the waker said so, or the last turn
    /// took its [`RESULTS_PER_TURN`].
    results_pending: bool,
    limits: Limits,
    scratch: Vec<u8>,
    /// What the lines of one read asked for, carried out right after the read.
    effects: Vec<Effect>,
    /// Clients with input possibly left in the socket whose read budget ran out: read again
    /// before the loop sleeps, for at most [`MORE_INPUT_TIME`] a turn.
    more_input: Vec<usize>,
    /// The same for neighbours' connections, read again first and with no time bound: a relay
    /// must keep up with its herd (as with `limit commands-per-turn`).
    more_peer_input: Vec<usize>,
    /// Clients whose input waits while a link catches up (`peer max-owed`); read again once
    /// no link is behind. Neighbours' connections are never held.
    held_input: Vec<usize>,
    /// Connections marked closed during this batch.
    marked_closed: Vec<usize>,
    /// Connections that read input this turn; their replies are written after the links.
    read_this_turn: Vec<usize>,
    hold_backs: HoldBacks,
    max_owed: usize,
    /// An accept failed for want of descriptors: try again at this time.
    accept_retry_at: Option<Instant>,
    last_accept_warning: Option<Instant>,
    stopping: bool,
    name: String,
    /// The config running now (a reload is checked against it).
    config: Config,
    config_path: std::path::PathBuf,
    connections_fit: usize,
    waker: Arc<Waker>,
    /// Places pools a reload replaced, kept until their calls in flight have answered.
    retired_pools: Vec<PlacesPool>,
    /// What the loop counts itself for the metrics page (traffic, connections).
    counters: Counters,
    /// The metrics listener and its connections, when the config gives one.
    metrics: Option<MetricsServer>,
}

impl EventLoop {
    pub fn new(setup: ServerSetup) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let mut listener = setup.listener;
        let mut signals = setup.signals;
        let mut hangups = setup.hangups;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        poll.registry()
            .register(&mut hangups, HANGUPS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let places = PlacesPool::start(&setup.config.places, setup.places_key, Arc::clone(&waker))?;
        let config = &setup.config;
        let now = Instant::now();
        let peer = &config.peer;
        let timing = LinkTiming::of(peer);
        let links: Vec<Link<Socket>> = config
            .neighbours(&setup.name)
            .into_iter()
            .enumerate()
            .map(|(id, n)| {
                let backoff = Backoff::new(peer.backoff_min, peer.backoff_max);
                Link::new(id, &n.name, n.addr, backoff, timing.clone(), now)
            })
            .collect();
        // The app numbers neighbours as the links are numbered: by position, config order.
        let neighbours = links.iter().map(|l| l.name.clone()).collect();
        let seed = wall_clock().as_nanos() as u64 ^ u64::from(std::process::id()) << 32;
        let mut app = App::new(
            &setup.name,
            neighbours,
            config.servers.iter().map(|s| s.name.clone()).collect(),
            setup.peer_auth,
            config.limits.max_future_secs,
        );
        let metrics = match setup.metrics {
            Some(listener) => Some(MetricsServer::new(
                listener,
                poll.registry(),
                &setup.name,
                &config.limits,
            )?),
            None => None,
        };
        let journal = setup.store.map(|opened| {
            app.restore(opened.clients);
            opened.store
        });
        Ok(EventLoop {
            poll,
            listener,
            _signal_pipe: signals,
            hangups,
            conns: Slab::new(),
            first_conn: FIRST_CONN,
            next_conn_id: 1,
            links,
            jitter: Jitter::new(seed),
            app,
            places,
            journal,
            lookups: Lookups::new(
                config.places.cache_ms,
                config.places.cache_entries,
                config.places.max_per_second,
                now,
            ),
            places_api: config.places.api,
            refusals: Refusals::new(),
            results_pending: false,
            limits: config.limits.clone(),
            scratch: vec![0; READ_CHUNK],
            effects: Vec::new(),
            more_input: Vec::new(),
            more_peer_input: Vec::new(),
            held_input: Vec::new(),
            marked_closed: Vec::new(),
            read_this_turn: Vec::new(),
            hold_backs: HoldBacks::new(now),
            max_owed: peer.max_owed,
            accept_retry_at: None,
            last_accept_warning: None,
            stopping: false,
            name: setup.name.clone(),
            config: setup.config.clone(),
            config_path: setup.config_path,
            connections_fit: setup.connections_fit,
            waker,
            retired_pools: Vec::new(),
            counters: Counters::default(),
            metrics,
        })
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        while !self.stopping {
            let now = Instant::now();
            let wake_at = self
                .links
                .iter()
                .filter_map(Link::deadline)
                .chain(self.accept_retry_at)
                .chain(self.metrics.as_ref().and_then(MetricsServer::deadline))
                .fold(next_flush, Instant::min);
            let holding = self.holding_back_clients(now);
            self.hold_backs.observe(holding, now);
            let input_waits = !self.more_input.is_empty()
                || !self.more_peer_input.is_empty()
                || (!self.held_input.is_empty() && !holding)
                || self.results_pending;
            let table = self.app.clients();
            let links_have_work = self.links.iter().any(|l| l.has_unsent(table));
            let store_has_work = self.journal.as_ref().is_some_and(Store::has_work);
            let timeout = if input_waits || links_have_work || store_has_work {
                Duration::ZERO
            } else {
                wake_at.saturating_duration_since(now)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    // Taken after the sockets' events (see `RESULTS_PER_TURN`).
                    WAKER => self.results_pending = true,
                    SIGNALS => self.stopping = true,
                    HANGUPS => self.on_hangup(),
                    Token(t) if t >= METRICS_LISTENER.0 => self.on_metrics_event(Token(t), event),
                    Token(t) if t >= FIRST_LINK && t < self.first_conn => {
                        self.on_link_event(t - FIRST_LINK, event);
                    }
                    Token(t) if t >= self.first_conn => {
                        let key = t - self.first_conn;
                        let closing = event.is_read_closed() || event.is_error();
                        // A connection already in line for a read waits for its turn there: a
                        // pipelining client's every new arrival would otherwise jump the line,
                        // and the turn's events alone took tens of milliseconds under 2,000 of
                        // them. It is read until `WouldBlock` then, so this edge is not lost.
                        // Its end is seen at once, though: until then its lookups still queued
                        // for Places would be sent (a second's worth after 2,000 closed).
                        let queued = self.conns.get(key).is_some_and(|e| e.input_queued);
                        if closing || (event.is_readable() && !queued) {
                            self.read_input(key, closing);
                        }
                        if event.is_writable() {
                            self.write_output(key);
                        }
                    }
                    // Spurious events for unknown tokens happen; ignore them.
                    Token(_) => {}
                }
            }
            // What these events brought is answered before the turn's heavier work (Places
            // answers, connections read again for the rest of their input): under 2,000
            // pipelining clients that work took up to 16 ms between reading a probing
            // client's IAMAT and writing its reply.
            self.answer_what_was_read();
            if self.results_pending {
                self.finish_lookups();
            }
            if self.accept_retry_at.is_some_and(|at| at <= Instant::now()) {
                self.accept_retry_at = None;
                self.accept_all();
            }
            self.serve_more_input();
            self.tick_links();
            self.expire_metrics(Instant::now());
            self.answer_what_was_read();
            self.close_marked();
            if let Some(journal) = &mut self.journal {
                journal.step(self.app.clients());
            }
            if Instant::now() >= next_flush {
                if let Some(journal) = &mut self.journal {
                    journal.tick(self.app.clients(), Instant::now());
                }
                self.drop_stalled_and_biggest(Instant::now());
                self.close_marked();
                if let Some(line) = self.hold_backs.report(Instant::now(), self.max_owed) {
                    info!("{line}");
                }
                if let Some(line) = self.lookups.refusals_report(Instant::now()) {
                    warn!("{line}");
                }
                logging::flush();
                next_flush = Instant::now() + FLUSH_INTERVAL;
            }
        }
        info!("stopping on signal");
        if let Some(journal) = &mut self.journal {
            journal.close();
        }
        logging::flush();
        Ok(())
    }

    /// Writes the replies of the connections read since the last call. Floods are handed to
    /// the links first, so a client never holds an AT reply for an update its server's links
    /// have not taken; one write per link and per client per call either way.
    fn answer_what_was_read(&mut self) {
        self.flush_links();
        for key in std::mem::take(&mut self.read_this_turn) {
            self.write_output(key);
        }
    }

    /// SIGHUP (once or more since the last event): the log is reopened at its path, so after
    /// `mv NAME.log NAME.log.1` (logrotate) the records that follow go to a new `NAME.log`.
    fn on_hangup(&mut self) {
        // Edge-triggered: drain every byte, then act once however many signals came.
        let mut bytes = [0u8; 64];
        loop {
            match self.hangups.read(&mut bytes) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        info!("reopening log on SIGHUP");
        if let Err(e) = logging::reopen() {
            warn!("cannot reopen the log on SIGHUP: {e}");
        }
        self.reload();
    }

    fn accept_all(&mut self) {
        loop {
            let (mut stream, remote) = match net::accept(&self.listener) {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(e) if net::is_out_of_descriptors(&e) => {
                    // The connection stays in the backlog, and epoll raises no new edge for
                    // it: retry on a timer until the backlog drains (as others close).
                    let now = Instant::now();
                    self.accept_retry_at = Some(now + ACCEPT_RETRY);
                    if self
                        .last_accept_warning
                        .is_none_or(|at| now - at >= Duration::from_secs(1))
                    {
                        warn!(
                            "accept failed: {e}; retrying every {} ms",
                            ACCEPT_RETRY.as_millis()
                        );
                        self.last_accept_warning = Some(now);
                    }
                    return;
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    return;
                }
            };
            // Past the limit, a few slots stay for neighbours (two per link: a reconnect may
            // overlap the old connection's close), so a flood of clients cannot cut the herd.
            let reserved = 2 * self.links.len();
            if self.conns.len() >= self.limits.max_connections + reserved {
                warn!(
                    "limit connections: {} open, refusing {remote}",
                    self.conns.len()
                );
                self.counters.connections_rejected += 1;
                continue; // dropping the stream closes it
            }
            let probation_until = (self.conns.len() >= self.limits.max_connections)
                .then(|| Instant::now() + NEIGHBOUR_HELLO_WAIT);
            let entry = self.conns.vacant_entry();
            let token = Token(self.first_conn + entry.key());
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE)
            {
                warn!("accept from {remote}: cannot register: {e}");
                continue;
            }
            let id = self.next_conn_id;
            self.next_conn_id += 1;
            self.counters.connections_accepted += 1;
            info!("accept conn={id} from {remote}");
            // The address is in the `accept` record; later records name the connection by id.
            entry.insert(Accepted {
                stream,
                registered: Interest::READABLE,
                reader: LineReader::new(self.limits.max_line_bytes),
                conn: Connection::new(id),
                input_queued: false,
                saturated: false,
                last_progress: Instant::now(),
                eof_seen: false,
                probation_until,
            });
        }
    }

    /// Whether new client commands must wait: a link is behind but making progress, so this
    /// server would otherwise run ahead of its herd. Neighbours' connections are read
    /// regardless: holding them back too could deadlock a cycle of servers that each wait
    /// for the next.
    fn holding_back_clients(&self, now: Instant) -> bool {
        let table = self.app.clients();
        self.links
            .iter()
            .any(|l| l.backlog(table, now) == Backlog::Behind)
    }

    /// Reads and answers what a connection sent, up to its budget; the replies are written at
    /// the end of the turn, after the floods (see `run`).
    ///
    /// A read that returns less than the buffer has emptied the socket, and with epoll every
    /// later arrival raises a new edge, so the loop stops there instead of paying one more
    /// `read` for `WouldBlock` (a third of the syscalls of a one-command round trip). When the
    /// event also reported the peer's FIN or an error, it reads on until the EOF or the error
    /// shows, since no new edge would come for them.
    fn read_input(&mut self, key: usize, until_would_block: bool) {
        let now = wall_clock();
        let mut budget = READ_BUDGET;
        let mut commands_left = self.limits.commands_per_turn;
        loop {
            let (soft_output, in_flight) = self.saturation_limits();
            let is_client = match self.conns.get_mut(key) {
                Some(entry) if entry.conn.state == ConnState::Open => {
                    if entry.conn.is_saturated(soft_output, in_flight) {
                        entry.saturated = true;
                        break;
                    }
                    entry.conn.peer.is_none()
                }
                _ => break,
            };
            if is_client && self.holding_back_clients(Instant::now()) {
                self.queue_input(key, Queue::Held);
                break;
            }
            let EventLoop {
                conns,
                app,
                effects,
                scratch,
                counters,
                ..
            } = self;
            let Some(entry) = conns.get_mut(key) else {
                break;
            };
            let Accepted {
                stream,
                reader,
                conn,
                eof_seen,
                probation_until,
                ..
            } = entry;
            // Lines are handled until the connection has as much outstanding as it may; the
            // rest waits in the reader, and is handled first when the connection goes on.
            let lines_received = &mut counters.lines_received;
            let mut handle = |line: Line<'_>| {
                *lines_received += 1;
                let neighbour_or_greeting =
                    conn.peer.is_some() || conn.challenged.is_some() || is_hello(&line);
                if probation_until.is_some() && !neighbour_or_greeting {
                    warn!(
                        "limit connections: conn={} is past the limit and not a neighbour, \
                         closing",
                        conn.id
                    );
                    conn.state = ConnState::Closed("limit connections");
                    return false;
                }
                effects.extend(session::handle_line(conn, app, line, now));
                if conn.peer.is_some() {
                    *probation_until = None; // a neighbour: admitted
                }
                // A neighbour's updates are not capped: a relay must keep up with its herd.
                if is_client {
                    commands_left = commands_left.saturating_sub(1);
                }
                commands_left > 0 && !conn.is_saturated(soft_output, in_flight)
            };
            let mut stop = false;
            if reader.has_held() {
                reader.resume(&mut handle);
            } else if *eof_seen {
                // SPEC section 2: what follows the last `\n` is one last line; after all the
                // input before it.
                reader.finish(|line| {
                    handle(line);
                });
                if conn.state == ConnState::Open {
                    conn.state = ConnState::Draining;
                }
            } else {
                // A client's read is smaller than a neighbour's: what a read brings beyond the
                // commands its turn takes is held in the server, per connection.
                let chunk = if is_client {
                    CLIENT_READ_CHUNK
                } else {
                    READ_CHUNK
                };
                match net::read_some(stream, &mut scratch[..chunk]) {
                    ReadOutcome::Data(n) => {
                        counters.bytes_received += n as u64;
                        reader.feed_until(&scratch[..n], &mut handle);
                        budget = budget.saturating_sub(n);
                        stop = n < chunk && !until_would_block && !reader.has_held();
                    }
                    ReadOutcome::WouldBlock => stop = true,
                    ReadOutcome::Eof => *eof_seen = true,
                    ReadOutcome::Failed(e) => {
                        info!("conn={} read error: {e}", conn.id);
                        conn.state = ConnState::Closed("read error");
                    }
                }
            }
            self.carry_out_effects(key);
            let Some(entry) = self.conns.get(key) else {
                break;
            };
            if stop || entry.conn.state != ConnState::Open {
                break;
            }
            if budget == 0 || commands_left == 0 {
                // Its turn is over; the rest (in the reader or the socket) comes next turn.
                self.queue_input(key, Queue::More);
                break;
            }
        }
        self.read_this_turn.push(key);
    }

    /// Floods go to every link (each decides whether it owes the record); lookups go to the
    /// Places pool, or are answered at once when its queue is full.
    fn carry_out_effects(&mut self, key: usize) {
        let table = self.app.clients();
        for effect in self.effects.drain(..) {
            match effect {
                Effect::Flood(record) => {
                    if let (Some(journal), Some(line)) = (&mut self.journal, table.line_at(record))
                    {
                        journal.record(line);
                    }
                    for link in &mut self.links {
                        link.owe(record, table);
                    }
                }
                Effect::Peered => {
                    let Some(entry) = self.conns.get(key) else {
                        continue;
                    };
                    if let Err(e) = net::limit_link_receive_buffer(&entry.stream) {
                        warn!("peer conn={}: cannot size its buffer: {e}", entry.conn.id);
                    }
                    let link = entry.conn.peer.as_ref().map(|p| p.link);
                    if let Some(link) = link.and_then(|l| self.links.get_mut(l)) {
                        if link.neighbour_is_back(Instant::now()) {
                            info!("link retry {} now: it connected to us", link.name);
                        }
                    }
                }
                Effect::Lookup {
                    seq,
                    at_line,
                    query,
                } => {
                    let Some(entry) = self.conns.get_mut(key) else {
                        continue;
                    };
                    let waiter = Waiter {
                        conn_key: key,
                        conn_id: entry.conn.id,
                        seq,
                        at_line,
                    };
                    let lookup = query.key();
                    let places = &self.places;
                    let begun = self
                        .lookups
                        .begin(lookup, waiter, Instant::now(), |cancel| {
                            let job = LookupJob {
                                key: lookup,
                                query,
                                cancel,
                            };
                            places.submit(job).is_ok()
                        });
                    match begun {
                        Begun::Sent | Begun::Joined => {}
                        Begun::Cached(json, waiter) => {
                            let reply = Reply::Whatsat {
                                at_line: waiter.at_line,
                                json: json.text,
                            };
                            entry.conn.fill_reply(waiter.seq, reply);
                        }
                        Begun::Refused(why, waiter) => session::refuse_lookup(
                            &mut entry.conn,
                            &self.refusals,
                            waiter.seq,
                            waiter.at_line,
                            why,
                        ),
                    }
                }
            }
        }
    }

    /// The soft output limit (never above the hard one) and the in-flight cap.
    fn saturation_limits(&self) -> (usize, usize) {
        let limits = &self.limits;
        (
            limits.soft_output_bytes.min(limits.max_output_bytes),
            limits.max_in_flight,
        )
    }

    fn queue_input(&mut self, key: usize, queue: Queue) {
        if let Some(entry) = self.conns.get_mut(key) {
            if !entry.input_queued {
                entry.input_queued = true;
                match queue {
                    Queue::More if entry.conn.peer.is_some() => self.more_peer_input.push(key),
                    Queue::More => self.more_input.push(key),
                    Queue::Held => self.held_input.push(key),
                }
            }
        }
    }

    /// Reads again from connections that used up their budget (every neighbour, then clients
    /// for [`MORE_INPUT_TIME`]), and from held clients once no link is behind. A client read
    /// while a link is behind goes (back) to `held_input`.
    fn serve_more_input(&mut self) {
        for key in std::mem::take(&mut self.more_peer_input) {
            if let Some(entry) = self.conns.get_mut(key) {
                entry.input_queued = false;
                self.read_input(key, true);
            }
        }
        let started = Instant::now();
        let mut keys = std::mem::take(&mut self.more_input);
        if !self.holding_back_clients(started) {
            keys.append(&mut self.held_input);
        }
        let mut keys = keys.into_iter();
        for key in keys.by_ref() {
            if let Some(entry) = self.conns.get_mut(key) {
                entry.input_queued = false;
                self.read_input(key, true);
            }
            if started.elapsed() >= MORE_INPUT_TIME {
                break;
            }
        }
        // Those not served this turn (still marked queued) are first in line next turn.
        let mut rest: Vec<usize> = keys.collect();
        if !rest.is_empty() {
            rest.append(&mut self.more_input);
            self.more_input = rest;
        }
    }

    /// Writes the records stored so far this turn to the store: no reply or flood that
    /// carries a record may leave before it is there (SPEC section 7).
    fn persist_records(&mut self) {
        if let Some(journal) = &mut self.journal {
            journal.persist();
        }
    }

    /// Writes what the socket takes, then settles the connection's fate and interest.
    fn write_output(&mut self, key: usize) {
        self.persist_records();
        let (soft_output, in_flight) = self.saturation_limits();
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let conn = &mut entry.conn;
        if let ConnState::Closed(_) = conn.state {
            self.marked_closed.push(key);
            return;
        }
        let written = net::write_pending(&mut entry.stream, &mut conn.out);
        self.counters.lines_sent += conn.out.take_lines();
        self.counters.bytes_sent += *written.as_ref().unwrap_or(&0) as u64;
        match written {
            Ok(took) if took > 0 || conn.out.is_empty() => entry.last_progress = Instant::now(),
            Ok(_) => {}
            Err(e) => {
                info!("conn={} write error: {e}", conn.id);
                conn.state = ConnState::Closed("write error");
                self.marked_closed.push(key);
                return;
            }
        }
        if conn.is_finished() {
            conn.state = ConnState::Closed("eof");
            self.marked_closed.push(key);
            return;
        }
        // Checked here, after the socket took what it would, so it covers replies from reads
        // and from finished lookups alike: a client that keeps asking but never reads is
        // dropped rather than buffered without end.
        if conn.unread_bytes() > self.limits.max_output_bytes {
            warn!(
                "limit output-bytes conn={}: {} bytes unread, dropping client",
                conn.id,
                conn.unread_bytes()
            );
            conn.state = ConnState::Closed("output limit");
            self.marked_closed.push(key);
            return;
        }
        let wanted = conn.wanted_interest();
        if wanted != entry.registered {
            let token = Token(self.first_conn + key);
            match self
                .poll
                .registry()
                .reregister(&mut entry.stream, token, wanted)
            {
                Ok(()) => entry.registered = wanted,
                Err(e) => {
                    warn!("conn={} reregister failed: {e}", conn.id);
                    conn.state = ConnState::Closed("reregister failed");
                    self.marked_closed.push(key);
                    return;
                }
            }
        }
        // Its input waited for this: the client read enough, or a lookup finished. (Edges do
        // not repeat for data already in the socket, so it is queued to be read again.)
        if entry.saturated && !entry.conn.is_saturated(soft_output, in_flight) {
            entry.saturated = false;
            self.queue_input(key, Queue::More);
        }
    }

    /// Every flush interval: a connection whose client has taken none of its output for
    /// `limit stall-ms` is dropped, and while all clients together have more than `limit
    /// output-total-bytes` unread, those owing the most are dropped first. (Per connection the
    /// soft limit already stops reading; this bounds the clients that stop reading together.)
    fn drop_stalled_and_biggest(&mut self, now: Instant) {
        let mut total = 0;
        let mut owing = Vec::new();
        for (key, entry) in self.conns.iter_mut() {
            if entry.probation_until.is_some_and(|until| until <= now) {
                warn!(
                    "limit connections: conn={} is past the limit and said no hello, closing",
                    entry.conn.id
                );
                entry.conn.state = ConnState::Closed("limit connections");
                self.marked_closed.push(key);
                continue;
            }
            let unread = entry.conn.unread_bytes();
            if unread == 0 || matches!(entry.conn.state, ConnState::Closed(_)) {
                continue;
            }
            let stalled = !entry.conn.out.is_empty()
                && now.duration_since(entry.last_progress) >= self.limits.stall_limit;
            if stalled {
                warn!(
                    "limit stall-ms conn={}: {unread} bytes unread for {} ms, dropping client",
                    entry.conn.id,
                    self.limits.stall_limit.as_millis()
                );
                entry.conn.state = ConnState::Closed("stalled");
                self.marked_closed.push(key);
                continue;
            }
            total += unread;
            owing.push((unread, key));
        }
        if total <= self.limits.max_output_total_bytes {
            return;
        }
        owing.sort_unstable_by(|a, b| b.cmp(a));
        for (unread, key) in owing {
            if total <= self.limits.max_output_total_bytes {
                break;
            }
            if let Some(entry) = self.conns.get_mut(key) {
                warn!(
                    "limit output-total-bytes: {total} bytes unread over all clients, dropping \
                     conn={} ({unread} bytes unread)",
                    entry.conn.id
                );
                entry.conn.state = ConnState::Closed("output total limit");
                self.marked_closed.push(key);
                total -= unread;
            }
        }
    }

    /// Delivers finished lookups to every connection that waits for one, at most
    /// [`RESULTS_PER_TURN`] of them; the waker coalesces wakes, so when that many were taken
    /// the rest are taken next turn without one (`results_pending`).
    fn finish_lookups(&mut self) {
        self.results_pending = false;
        // Pools a reload replaced answer their calls in flight, then go.
        let mut retired_results = Vec::new();
        self.retired_pools.retain(|pool| {
            // Counted first: once no worker is left, every result it will ever send is sent.
            let working = pool.workers() > 0;
            while let Some(done) = pool.try_result() {
                retired_results.push(done);
            }
            working
        });
        let mut retired_results = retired_results.into_iter();
        let mut taken = 0;
        let started = Instant::now();
        while let Some(done) = retired_results.next().or_else(|| {
            if taken >= RESULTS_PER_TURN || started.elapsed() >= RESULTS_TIME {
                self.results_pending = true;
                return None;
            }
            self.places.try_result()
        }) {
            taken += 1;
            let LookupDone { key, json, elapsed } = done;
            let Some(json) = json else {
                self.lookups.skipped();
                continue;
            };
            let waiters = self.lookups.finish(key, &json, elapsed, Instant::now());
            if let Some(first) = waiters.first() {
                let shared = match waiters.len() {
                    1 => String::new(),
                    n => format!(" for {n} WHATSATs"),
                };
                info!(
                    "places conn={} {} {} in {:.1} ms{shared}",
                    first.conn_id,
                    self.places_api.name(),
                    json.summary,
                    elapsed.as_secs_f64() * 1000.0
                );
            }
            for waiter in waiters {
                let Some(entry) = self
                    .conns
                    .get_mut(waiter.conn_key)
                    .filter(|e| e.conn.id == waiter.conn_id)
                else {
                    continue; // the client left; its reply has nowhere to go
                };
                let reply = Reply::Whatsat {
                    at_line: waiter.at_line,
                    json: json.text.clone(),
                };
                entry.conn.fill_reply(waiter.seq, reply);
                self.write_output(waiter.conn_key);
            }
        }
    }

    fn close_marked(&mut self) {
        for key in std::mem::take(&mut self.marked_closed) {
            let closed = matches!(
                self.conns.get(key),
                Some(e) if matches!(e.conn.state, ConnState::Closed(_))
            );
            if !closed {
                continue; // already freed earlier in this pass
            }
            let mut entry = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut entry.stream);
            let forgotten = match entry.conn.lookups_waiting() {
                0 => 0,
                _ => self.lookups.forget(key, entry.conn.id),
            };
            if let ConnState::Closed(reason) = entry.conn.state {
                match forgotten {
                    0 => info!("close conn={} ({reason})", entry.conn.id),
                    n => info!(
                        "close conn={} ({reason}), {n} WHATSATs left waiting on Places",
                        entry.conn.id
                    ),
                }
            }
        }
    }
}

/// The receive time of SPEC section 2, as exact seconds and nanoseconds.
fn wall_clock() -> ClientTime {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    ClientTime {
        secs: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_input_is_summed_up_once_a_second() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut holds = HoldBacks::new(start);
        assert_eq!(holds.report(at(0), 10), None, "nothing to report");
        holds.observe(true, at(0));
        holds.observe(true, at(5));
        holds.observe(false, at(10));
        holds.observe(true, at(20));
        let first = holds.report(at(30), 10).unwrap();
        assert!(first.contains("held back 2 times for 20 ms"), "{first}");
        assert_eq!(holds.report(at(500), 10), None, "at most once a second");
        holds.observe(false, at(600));
        let second = holds.report(at(1030), 10).unwrap();
        assert!(
            second.contains("held back 1 times for 570 ms in the last 1000 ms"),
            "{second}"
        );
        assert_eq!(holds.report(at(2100), 10), None, "quiet since");
    }
}
