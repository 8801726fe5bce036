//! The server's one thread of control: a `mio` poll loop that owns the listener, every
//! connection (a slab entry whose token is derived from its key), the Places results channel
//! (through a `Waker`) and the signal pipe. It is the only user of the `Registry`.
//!
//! Handlers never close a connection in the middle of an event batch: they mark it
//! [`Stage::Closed`] and the loop frees it after the batch, in [`EventLoop::close_marked`],
//! which deregisters, frees the slot and logs once.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::app::App;
use crate::backoff::{Backoff, Jitter};
use crate::config::{Config, Limits, PlacesApi};
use crate::conn::{Connection, Stage};
use crate::link::Link;
use crate::logging;
use crate::net::{self, ReadOutcome};
use crate::places::{LookupDone, PlacesPool};
use crate::protocol::ClientTime;
use crate::secret::Secret;
use crate::session::{send_ready_replies, ClientSession};

mod links;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Link `i` has token `FIRST_LINK + i`; connection tokens follow the links:
/// `first_conn + slab key`.
const FIRST_LINK: usize = 3;

/// Bytes read per `read` call, into one buffer shared by all connections: a connection keeps
/// only the unfinished tail of a line, so an idle one holds no buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Most bytes one connection may read per wakeup, so a busy client cannot starve the others;
/// a connection that hits it is served again before the loop sleeps.
const READ_BUDGET: usize = 4 * READ_CHUNK;
/// The log is flushed at least this often (SPEC section 6 asks for within a second).
const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Most resync bytes one link may write per loop turn, so a million-record resync shares the
/// loop with everything else.
const SYNC_BUDGET_BYTES: usize = 1024 * 1024;

/// What the loop needs from the config and the environment for one server.
pub struct ServerSetup {
    pub name: String,
    pub listener: TcpListener,
    pub config: Config,
    pub places_key: Option<Secret>,
    pub peer_secret: Option<Secret>,
    /// Read end of the pipe that SIGTERM and SIGINT write to.
    pub signals: UnixStream,
}

pub struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    /// Registered under `SIGNALS`; owned here so the pipe stays open while the loop runs.
    _signal_pipe: UnixStream,
    conns: Slab<Connection>,
    first_conn: usize,
    next_conn_id: u64,
    links: Vec<Link>,
    jitter: Jitter,
    max_link_queue_bytes: usize,
    /// A resync still has records to send: the loop must not sleep.
    sync_pending: bool,
    app: App,
    places: PlacesPool,
    places_api: PlacesApi,
    limits: Limits,
    log_lines: bool,
    scratch: Vec<u8>,
    /// Connections whose read budget ran out with input possibly left in the socket.
    more_input: Vec<usize>,
    /// Connections marked closed during this batch.
    marked_closed: Vec<usize>,
    /// Connections that read input this turn; their replies are written after the links.
    replied: Vec<usize>,
    stopping: bool,
}

impl EventLoop {
    pub fn new(setup: ServerSetup) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let mut listener = setup.listener;
        let mut signals = setup.signals;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let places = PlacesPool::start(&setup.config.places, setup.places_key, waker)?;
        let config = &setup.config;
        let now = Instant::now();
        let links: Vec<Link> = config
            .neighbours(&setup.name)
            .into_iter()
            .map(|n| {
                let peer = &config.peer;
                let backoff = Backoff::new(peer.backoff_min, peer.backoff_max);
                Link::new(
                    &n.name,
                    n.addr,
                    backoff,
                    peer.ping_interval,
                    peer.silence_limit(),
                    now,
                )
            })
            .collect();
        let neighbours = links.iter().map(|l| l.name.clone()).collect();
        let seed = wall_clock().as_nanos() as u64 ^ u64::from(std::process::id()) << 32;
        Ok(EventLoop {
            poll,
            listener,
            _signal_pipe: signals,
            conns: Slab::new(),
            first_conn: FIRST_LINK + links.len(),
            next_conn_id: 1,
            links,
            jitter: Jitter::new(seed),
            max_link_queue_bytes: config.peer.max_queue_bytes,
            sync_pending: false,
            app: App::new(&setup.name, neighbours, setup.peer_secret),
            places,
            places_api: setup.config.places.api,
            limits: setup.config.limits.clone(),
            log_lines: setup.config.log.lines,
            scratch: vec![0; READ_CHUNK],
            more_input: Vec::new(),
            marked_closed: Vec::new(),
            replied: Vec::new(),
            stopping: false,
        })
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_flush = Instant::now() + FLUSH_INTERVAL;
        while !self.stopping {
            let wake_at = self
                .links
                .iter()
                .filter_map(Link::deadline)
                .fold(next_flush, Instant::min);
            let timeout = if self.more_input.is_empty() && !self.sync_pending {
                wake_at.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.finish_lookups(),
                    SIGNALS => self.stopping = true,
                    Token(t) if t >= FIRST_LINK && t < self.first_conn => {
                        self.on_link_event(t - FIRST_LINK, event);
                    }
                    Token(t) if t >= self.first_conn => {
                        let key = t - self.first_conn;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            let until_would_block = event.is_read_closed() || event.is_error();
                            self.read_input(key, until_would_block);
                        }
                        if event.is_writable() {
                            self.write_output(key);
                        }
                    }
                    // Spurious events for unknown tokens happen; ignore them.
                    Token(_) => {}
                }
            }
            self.serve_more_input();
            self.tick_links();
            // Floods are handed to the links before the replies that acknowledge them go out,
            // so a client never holds an AT reply for an update its server's links have not
            // taken; one write per link and per client per turn either way.
            self.flush_links();
            for key in std::mem::take(&mut self.replied) {
                self.write_output(key);
            }
            self.close_marked();
            if Instant::now() >= next_flush {
                logging::flush();
                next_flush = Instant::now() + FLUSH_INTERVAL;
            }
        }
        info!("stopping on signal");
        logging::flush();
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            let (mut stream, remote) = match net::accept(&self.listener) {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the backlog until a later
                    // accept; say so rather than spin.
                    warn!("accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= self.limits.max_connections {
                warn!(
                    "limit connections: {} open, refusing {remote}",
                    self.conns.len()
                );
                continue; // dropping the stream closes it
            }
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
            info!("accept conn={id} from {remote}");
            // The address is in the `accept` record; later records name the connection by id.
            entry.insert(Connection::new(id, stream, self.limits.max_line_bytes));
        }
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
        let EventLoop {
            conns,
            app,
            places,
            links,
            scratch,
            more_input,
            limits,
            places_api,
            log_lines,
            ..
        } = self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let mut budget = READ_BUDGET;
        while conn.stage == Stage::Open {
            match net::read_some(&mut conn.stream, scratch) {
                ReadOutcome::Data(n) => {
                    let mut session = ClientSession {
                        key,
                        conn_id: conn.id,
                        stage: &mut conn.stage,
                        peer: &mut conn.peer,
                        out: &mut conn.out,
                        replies: &mut conn.replies,
                        app,
                        links,
                        places,
                        places_api: *places_api,
                        log_lines: *log_lines,
                        now,
                    };
                    conn.reader
                        .feed(&scratch[..n], |line| session.handle_line(line));
                    if conn.stage != Stage::Open {
                        break;
                    }
                    if conn.unread_bytes() > limits.max_output_bytes {
                        // No more input until the turn's writes: then either the client took
                        // enough to go on, or `write_output` drops it.
                        more_input.push(key);
                        break;
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        more_input.push(key);
                        break;
                    }
                    if n < scratch.len() && !until_would_block {
                        break;
                    }
                }
                ReadOutcome::WouldBlock => break,
                ReadOutcome::Eof => {
                    conn.stage = Stage::Draining;
                }
                ReadOutcome::Failed(e) => {
                    info!("conn={} read error: {e}", conn.id);
                    conn.stage = Stage::Closed("read error");
                }
            }
        }
        self.replied.push(key);
    }

    /// Reads again from connections that used up their budget last time.
    fn serve_more_input(&mut self) {
        for key in std::mem::take(&mut self.more_input) {
            self.read_input(key, true);
        }
    }

    /// Writes what the socket takes, then settles the connection's fate and interest.
    fn write_output(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Stage::Closed(_) = conn.stage {
            self.marked_closed.push(key);
            return;
        }
        if let Err(e) = net::write_pending(&mut conn.stream, &mut conn.out) {
            info!("conn={} write error: {e}", conn.id);
            conn.stage = Stage::Closed("write error");
            self.marked_closed.push(key);
            return;
        }
        if conn.is_finished() {
            conn.stage = Stage::Closed("eof");
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
            conn.stage = Stage::Closed("output limit");
            self.marked_closed.push(key);
            return;
        }
        let wanted = conn.wanted_interest();
        if wanted != conn.registered {
            let token = Token(self.first_conn + key);
            match self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, wanted)
            {
                Ok(()) => conn.registered = wanted,
                Err(e) => {
                    warn!("conn={} reregister failed: {e}", conn.id);
                    conn.stage = Stage::Closed("reregister failed");
                    self.marked_closed.push(key);
                }
            }
        }
    }

    /// Delivers finished lookups to the connections that wait for them. The waker coalesces
    /// wakes, so this drains the channel.
    fn finish_lookups(&mut self) {
        while let Some(done) = self.places.try_result() {
            let LookupDone {
                job,
                reply: shaped,
                elapsed,
            } = done;
            info!(
                "places conn={} {} {} in {:.1} ms",
                job.conn_id,
                self.places_api.name(),
                shaped.summary,
                elapsed.as_secs_f64() * 1000.0
            );
            let Some(conn) = self
                .conns
                .get_mut(job.conn_key)
                .filter(|c| c.id == job.conn_id)
            else {
                continue; // the client left; its reply has nowhere to go
            };
            conn.replies.fill(job.seq, shaped.bytes);
            send_ready_replies(conn.id, &mut conn.out, &mut conn.replies, self.log_lines);
            self.write_output(job.conn_key);
        }
    }

    fn close_marked(&mut self) {
        for key in std::mem::take(&mut self.marked_closed) {
            let closed =
                matches!(self.conns.get(key), Some(c) if matches!(c.stage, Stage::Closed(_)));
            if !closed {
                continue; // already freed earlier in this pass
            }
            let mut conn = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if let Stage::Closed(reason) = conn.stage {
                info!("close conn={} ({reason})", conn.id);
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
