//! The client connections part: the listener, every accepted connection (a client, or a
//! neighbour's link once its handshake is done) in a slab, when each is read
//! ([`schedule`]), its replies, the limits that bound what clients may hold, and closing. What
//! a line does is `session`'s decision; what its effects do beyond the connection (floods,
//! lookups, the store) is the conductor's, through [`Dispatch`]. This part never touches the
//! links or the Places workers.
//!
//! Closing has one door, [`Clients::close`]: it marks the connection closed and queues it, and
//! [`Clients::sweep_closed`] frees every queued one after the event batch (deregisters it,
//! frees its slot, gives up its lookups, logs once), as Redis's `freeClientAsync` does, so no
//! handler frees a connection another handler of the same batch still holds.
//!
//! With `peer tls`, neighbours' links arrive on the same listener as clients: the first byte
//! of a connection tells a TLS handshake (a neighbour's) from a client's line. A TLS
//! connection carries its [`TlsStream`] beside its stream; its handshake must finish within
//! `limit tls-handshake-ms`, a failed one is logged with the reason and closed, and a hello
//! on it must claim the server its certificate names (`session`). With `tls NAME IP:PORT CERT
//! KEY`, a second listener takes clients over TLS: the same connections, limits and protocol,
//! their bytes through a [`TlsStream`] from the first byte.

mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};
use slab::Slab;

use crate::app::App;
use crate::buffer::{Line, LineReader};
use crate::config::Limits;
use crate::conn::{ConnState, Connection, LinkSecurity, Reply};
use crate::net::{self, ReadOutcome};
use crate::peer_wire;
use crate::places::Waiter;
use crate::protocol::ClientTime;
use crate::session::{self, Effect};
use crate::table::ClientTable;
use crate::tls::{self, ClientTlsConfig, Failure, HandshakeCounts, PeerTlsConfig, TlsStream};

use schedule::{Lines, ReadState, Wait};

use super::tokens;
/// Bytes read per `read` call from a neighbour's connection (its floods).
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read per `read` call from a client: with thousands of clients pipelining, the part
/// of a read their turn does not take stays in the server, so it is kept small; a
/// line-protocol client's commands are short.
const CLIENT_READ_CHUNK: usize = 16 * 1024;
/// Most bytes one connection may read per wakeup, so a busy client cannot starve the others;
/// a connection that hits it is served again before the loop sleeps.
const READ_BUDGET: usize = 4 * READ_CHUNK;
/// How soon an accept that failed for want of descriptors is tried again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// A connection accepted in the slots kept for neighbours has this long to say its hello.
const NEIGHBOUR_HELLO_WAIT: Duration = Duration::from_secs(5);
/// Most time a turn spends reading clients again for the rest of their input: beyond it, the
/// rest wait for the next turn, after the events that came meanwhile (a client that sends one
/// command and waits for its reply should not wait for 2,000 that pipeline). Under 2,000
/// WHATSAT pipeliners on 2 cores, 2 ms here (with no time bound on the Places answers) left
/// the probing client's IAMAT p99 at 57-518 ms over 30 s; 250 µs (and the Places front's
/// bound) at 7.4-16.3 ms in five runs. Neighbours are read on regardless.
const MORE_INPUT_TIME: Duration = Duration::from_micros(250);

/// What the rest of the server does for the clients part: the conductor's answer to the
/// effects of the lines this part reads.
pub trait Dispatch {
    /// Whether new client commands must wait (a link is behind).
    fn holding_back_clients(&self, table: &ClientTable) -> bool;
    /// Carries out one effect of a line read on the connection `conn_key`.
    fn carry_out(
        &mut self,
        effect: Effect,
        conn_key: usize,
        conn: &mut Connection,
        table: &ClientTable,
    );
    /// Writes the records stored so far to the store: called before any reply leaves (SPEC
    /// section 7: no reply or flood that carries a record leaves before it is there).
    fn persist(&mut self);
    /// A connection closed: its WHATSATs still waiting on Places are given up; returns how
    /// many there were.
    fn forget_lookups(&mut self, conn_key: usize, conn_id: u64) -> usize;
}

/// Bytes, lines and connections the clients part counted, for the metrics page.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientTraffic {
    pub lines_received: u64,
    pub lines_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub accepted: u64,
    pub rejected: u64,
}

/// How an accepted connection's bytes travel.
enum Transport {
    /// In clear.
    Clear,
    /// `peer tls`, and nothing read yet: the first byte decides (a TLS handshake is a
    /// neighbour's link; anything else a client's line).
    Undecided,
    Tls(Box<TlsStream>),
}

impl Transport {
    fn tls(&mut self) -> Option<&mut TlsStream> {
        match self {
            Transport::Tls(tls) => Some(tls),
            Transport::Clear | Transport::Undecided => None,
        }
    }

    fn tls_ref(&self) -> Option<&TlsStream> {
        match self {
            Transport::Tls(tls) => Some(tls),
            Transport::Clear | Transport::Undecided => None,
        }
    }
}

/// An accepted connection in the slab: its socket and framing beside the protocol state.
struct Accepted {
    stream: TcpStream,
    registered: Interest,
    transport: Transport,
    reader: LineReader,
    conn: Connection,
    read: ReadState,
    /// The last time the socket took bytes, or had nothing waiting (for `limit stall-ms`).
    last_progress: Instant,
    /// The client closed its sending side; handled once the input before it is.
    eof_seen: bool,
    /// Accepted past `limit connections`, in the slots kept for neighbours: it must say a
    /// neighbour's valid hello first, by this time, or it is closed.
    probation_until: Option<Instant>,
}

/// The listener of `tls NAME IP:PORT CERT KEY` and what its clients are shown.
pub struct TlsPort {
    pub listener: TcpListener,
    pub config: Arc<ClientTlsConfig>,
}

pub struct Clients {
    listener: TcpListener,
    /// Clients over TLS (`tls NAME ...`), when the server takes them.
    tls_port: Option<TlsPort>,
    conns: Slab<Accepted>,
    next_conn_id: u64,
    limits: Limits,
    /// Where every read lands; a connection keeps only the unfinished tail of a line, so an
    /// idle one holds no buffer.
    scratch: Vec<u8>,
    /// What the lines of one read asked for, carried out right after the read.
    effects: Vec<Effect>,
    lines: Lines,
    /// Connections closed during this batch, freed by [`Clients::sweep_closed`].
    closing: Vec<usize>,
    /// Connections that read input this turn; their replies are written after the links.
    to_answer: Vec<usize>,
    /// An accept failed for want of descriptors: try again at this time.
    accept_retry_at: Option<Instant>,
    last_accept_warning: Option<Instant>,
    traffic: ClientTraffic,
    /// `peer tls`: neighbours' links to this server are TLS, accepted with this.
    tls: Option<Arc<PeerTlsConfig>>,
    handshakes: HandshakeCounts,
}

impl Clients {
    pub fn new(
        mut listener: TcpListener,
        registry: &Registry,
        limits: &Limits,
        tls: Option<Arc<PeerTlsConfig>>,
        mut tls_port: Option<TlsPort>,
    ) -> std::io::Result<Clients> {
        registry.register(&mut listener, tokens::LISTENER, Interest::READABLE)?;
        if let Some(port) = &mut tls_port {
            registry.register(&mut port.listener, tokens::TLS_LISTENER, Interest::READABLE)?;
        }
        Ok(Clients {
            listener,
            tls_port,
            conns: Slab::new(),
            next_conn_id: 1,
            limits: limits.clone(),
            scratch: vec![0; READ_CHUNK],
            effects: Vec::new(),
            lines: Lines::default(),
            closing: Vec::new(),
            to_answer: Vec::new(),
            accept_retry_at: None,
            last_accept_warning: None,
            traffic: ClientTraffic::default(),
            tls,
            handshakes: HandshakeCounts::default(),
        })
    }

    /// SIGHUP read the certificates again: connections accepted from now on use these.
    pub fn set_tls(&mut self, tls: Arc<PeerTlsConfig>) {
        self.tls = Some(tls);
    }

    /// SIGHUP read the certificate and key for clients over TLS again: connections accepted
    /// from now on are shown these.
    pub fn set_client_tls(&mut self, config: Arc<ClientTlsConfig>) {
        if let Some(port) = &mut self.tls_port {
            port.config = config;
        }
    }

    /// When the certificate clients over TLS are shown expires (Unix seconds), if there is one.
    pub fn client_tls_expiry(&self) -> Option<i64> {
        self.tls_port.as_ref().map(|port| port.config.expiry)
    }

    /// The TLS handshakes of neighbours' links to this server, by outcome.
    pub fn handshakes(&self) -> &HandshakeCounts {
        &self.handshakes
    }

    /// Open connections (clients and neighbours' links).
    pub fn open(&self) -> usize {
        self.conns.len()
    }

    pub fn traffic(&self) -> ClientTraffic {
        self.traffic
    }

    /// A reload changed the limits (`limit line-bytes` applies to connections opened after).
    pub fn set_limits(&mut self, limits: &Limits) {
        self.limits = limits.clone();
    }

    /// When an accept that failed for want of descriptors is tried again.
    pub fn deadline(&self) -> Option<Instant> {
        self.accept_retry_at
    }

    /// Whether input waits in a line (the loop must not sleep).
    pub fn input_waits(&self, holding: bool) -> bool {
        !self.lines.is_empty(holding)
    }

    /// Accepts every connection waiting. Past `limit connections`, `reserved` more slots stay
    /// for neighbours (two per link: a reconnect may overlap the old connection's close), so
    /// a flood of clients cannot cut the herd.
    pub fn accept_all(&mut self, registry: &Registry, reserved: usize) {
        self.accept_retry_at = None;
        self.accept_from(registry, reserved, false);
        if self.tls_port.is_some() {
            // Neighbours never come by the TLS port for clients: no slot is kept there.
            self.accept_from(registry, 0, true);
        }
    }

    /// Accepts every connection waiting on the server's port, or on its port for clients
    /// over TLS (`over_tls`).
    fn accept_from(&mut self, registry: &Registry, reserved: usize, over_tls: bool) {
        loop {
            let listener = match (&self.tls_port, over_tls) {
                (Some(port), true) => &port.listener,
                _ => &self.listener,
            };
            let (mut stream, remote) = match net::accept(listener) {
                Ok(Some(accepted)) => accepted,
                Ok(None) => return,
                Err(e) if net::is_out_of_descriptors(&e) => return self.retry_accept_later(&e),
                Err(e) => {
                    warn!("accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= self.limits.max_connections + reserved {
                warn!(
                    "limit connections: {} open, refusing {remote}",
                    self.conns.len()
                );
                self.traffic.rejected += 1;
                continue; // dropping the stream closes it
            }
            let probation_until = (self.conns.len() >= self.limits.max_connections)
                .then(|| Instant::now() + NEIGHBOUR_HELLO_WAIT);
            let entry = self.conns.vacant_entry();
            let token = tokens::conn(entry.key());
            if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
                warn!("accept from {remote}: cannot register: {e}");
                continue;
            }
            let id = self.next_conn_id;
            self.next_conn_id += 1;
            self.traffic.accepted += 1;
            let (mut transport, link_security) = match self.tls {
                Some(_) => (Transport::Undecided, LinkSecurity::TlsRequired),
                None => (Transport::Clear, LinkSecurity::Clear),
            };
            match self.tls_port.as_ref().filter(|_| over_tls) {
                Some(port) => {
                    info!("accept conn={id} from {remote} over TLS");
                    let limit = self.limits.tls_handshake;
                    match TlsStream::accept_client(&port.config, Instant::now(), limit) {
                        Ok(tls) => transport = Transport::Tls(Box::new(tls)),
                        Err(e) => {
                            warn!("tls conn={id}: {e}");
                            let _ = registry.deregister(&mut stream);
                            continue;
                        }
                    }
                }
                None => info!("accept conn={id} from {remote}"),
            }
            let mut conn = Connection::new(id);
            conn.link_security = link_security;
            // The address is in the `accept` record; later records name the connection by id.
            entry.insert(Accepted {
                stream,
                registered: Interest::READABLE,
                transport,
                reader: LineReader::new(self.limits.max_line_bytes),
                conn,
                read: ReadState::Ready,
                last_progress: Instant::now(),
                eof_seen: false,
                probation_until,
            });
        }
    }

    /// The connection stays in the backlog, and epoll raises no new edge for it: retry on a
    /// timer until the backlog drains (as others close).
    fn retry_accept_later(&mut self, error: &std::io::Error) {
        let now = Instant::now();
        self.accept_retry_at = Some(now + ACCEPT_RETRY);
        if self
            .last_accept_warning
            .is_none_or(|at| now - at >= Duration::from_secs(1))
        {
            warn!(
                "accept failed: {error}; retrying every {} ms",
                ACCEPT_RETRY.as_millis()
            );
            self.last_accept_warning = Some(now);
        }
    }

    /// An event for connection `key`.
    pub fn on_event(
        &mut self,
        key: usize,
        event: &mio::event::Event,
        registry: &Registry,
        app: &mut App,
        dispatch: &mut impl Dispatch,
    ) {
        let closing = event.is_read_closed() || event.is_error();
        let reads = self
            .conns
            .get(key)
            .is_some_and(|e| e.read.reads_on_edge(closing));
        if reads && (closing || event.is_readable()) {
            self.read(key, closing, app, dispatch);
        }
        if event.is_writable() {
            self.write(key, registry, dispatch);
        }
    }

    /// Reads and answers what a connection sent, up to its budget; the replies are written at
    /// the end of the turn, after the floods ([`Clients::answer_what_was_read`]).
    ///
    /// A read that returns less than the buffer has emptied the socket, and with epoll every
    /// later arrival raises a new edge, so it stops there instead of paying one more `read`
    /// for `WouldBlock` (a third of the syscalls of a one-command round trip). When the event
    /// also reported the peer's FIN or an error, it reads on until the EOF or the error
    /// shows, since no new edge would come for them.
    fn read(
        &mut self,
        key: usize,
        until_would_block: bool,
        app: &mut App,
        dispatch: &mut impl Dispatch,
    ) {
        let now = wall_clock();
        let mut budget = READ_BUDGET;
        let mut commands_left = self.limits.commands_per_turn;
        let (soft_output, in_flight) = self.saturation_limits();
        while let Some(entry) = self.conns.get_mut(key) {
            if entry.conn.state != ConnState::Open {
                break;
            }
            if entry.conn.is_saturated(soft_output, in_flight) {
                entry.read.saturate();
                break;
            }
            let is_client = entry.conn.peer.is_none();
            if is_client && dispatch.holding_back_clients(app.clients()) {
                self.lines.enqueue(&mut entry.read, key, Wait::Held, false);
                break;
            }
            let stop = self.read_once(
                key,
                until_would_block,
                &mut budget,
                &mut commands_left,
                app,
                now,
            );
            let Some(entry) = self.conns.get_mut(key) else {
                break;
            };
            for effect in self.effects.drain(..) {
                if effect == Effect::Peered {
                    if let Err(e) = net::size_link_receive_buffer(&entry.stream) {
                        warn!("peer conn={}: cannot size its buffer: {e}", entry.conn.id);
                    }
                }
                dispatch.carry_out(effect, key, &mut entry.conn, app.clients());
            }
            if let ConnState::Closed(_) = entry.conn.state {
                self.closing.push(key);
                break;
            }
            if stop || entry.conn.state != ConnState::Open {
                break;
            }
            if budget == 0 || commands_left == 0 {
                // Its turn is over; the rest (in the reader or the socket) comes next turn.
                let is_peer = entry.conn.peer.is_some();
                self.lines
                    .enqueue(&mut entry.read, key, Wait::More, is_peer);
                break;
            }
        }
        self.to_answer.push(key);
    }

    /// One step of a read: the lines held in the reader, the last line after an EOF, or one
    /// `read` from the socket, each line handled until the connection's quota or saturation
    /// stops it. Returns whether the socket is empty for now.
    fn read_once(
        &mut self,
        key: usize,
        until_would_block: bool,
        budget: &mut usize,
        commands_left: &mut usize,
        app: &mut App,
        now: ClientTime,
    ) -> bool {
        let (soft_output, in_flight) = self.saturation_limits();
        let Clients {
            conns,
            effects,
            scratch,
            traffic,
            tls: tls_config,
            handshakes,
            limits,
            ..
        } = self;
        let Some(Accepted {
            stream,
            transport,
            reader,
            conn,
            eof_seen,
            probation_until,
            ..
        }) = conns.get_mut(key)
        else {
            return true;
        };
        let is_client = conn.peer.is_none();
        // Lines are handled until the connection has as much outstanding as it may; the
        // rest waits in the reader, and is handled first when the connection goes on.
        let mut lines = LineHandler {
            conn,
            probation_until,
            app,
            effects,
            lines_received: &mut traffic.lines_received,
            commands_left,
            saturation: (soft_output, in_flight),
            now,
        };
        if *eof_seen && !reader.has_held() {
            lines.finish(reader);
            return false;
        }
        if reader.has_held() {
            reader.resume(|line: Line<'_>| lines.handle(line));
            return false;
        }
        if let (Transport::Undecided, Some(config)) = (&*transport, tls_config.as_ref()) {
            if !decide_transport(stream, transport, config, limits.tls_handshake, lines.conn) {
                return false;
            }
        }
        let chunk = read_chunk(is_client);
        let handshaking = transport.tls().is_some_and(|tls| tls.is_handshaking());
        let link = transport.tls().is_some_and(|tls| tls.is_link());
        let outcome = net::read_some(stream, transport.tls(), &mut scratch[..chunk]);
        if let Some(tls) = transport.tls() {
            note_established(tls, lines.conn, handshakes);
        }
        match outcome {
            ReadOutcome::Data(n) => {
                traffic.bytes_received += n as u64;
                reader.feed_until(&scratch[..n], |line: Line<'_>| lines.handle(line));
                *budget = budget.saturating_sub(n);
                n < chunk && !until_would_block && !reader.has_held()
            }
            ReadOutcome::WouldBlock => true,
            ReadOutcome::Eof => {
                *eof_seen = true;
                false
            }
            ReadOutcome::Failed(e) => {
                info!("conn={} read error: {e}", lines.conn.id);
                lines.conn.state = ConnState::Closed("read error");
                false
            }
            ReadOutcome::TlsFailed(failure) => {
                let why = tls_failed(lines.conn.id, &failure, handshaking, link, handshakes);
                lines.conn.state = ConnState::Closed(why);
                false
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

    /// Reads again from connections whose turn ran out (every neighbour, then clients for
    /// [`MORE_INPUT_TIME`]), and from held clients once no link is behind. A client read
    /// while a link is behind goes (back) to the held line.
    pub fn serve_more_input(&mut self, app: &mut App, dispatch: &mut impl Dispatch) {
        for key in self.lines.take_peers() {
            if let Some(entry) = self.conns.get_mut(key) {
                entry.read = ReadState::Ready;
                self.read(key, true, app, dispatch);
            }
        }
        let started = Instant::now();
        let holding = dispatch.holding_back_clients(app.clients());
        let mut keys = self.lines.take_clients(holding).into_iter();
        for key in keys.by_ref() {
            if let Some(entry) = self.conns.get_mut(key) {
                entry.read = ReadState::Ready;
                self.read(key, true, app, dispatch);
            }
            if started.elapsed() >= MORE_INPUT_TIME {
                break;
            }
        }
        // Those not served this turn (still waiting in line) are first in line next turn.
        self.lines.put_back_first(keys.collect());
    }

    /// Writes the replies of the connections read since the last call (the conductor has
    /// handed the turn's floods to the links first, so a client never holds an AT reply for
    /// an update its server's links have not taken).
    pub fn answer_what_was_read(&mut self, registry: &Registry, dispatch: &mut impl Dispatch) {
        for key in std::mem::take(&mut self.to_answer) {
            self.write(key, registry, dispatch);
        }
    }

    /// A WHATSAT's answer: into its reply slot, if its connection is still there (the slot's
    /// id tells a reused one), and out.
    pub fn deliver_whatsat(
        &mut self,
        waiter: Waiter,
        json: std::sync::Arc<[u8]>,
        registry: &Registry,
        dispatch: &mut impl Dispatch,
    ) {
        let Some(entry) = self
            .conns
            .get_mut(waiter.conn_key)
            .filter(|e| e.conn.id == waiter.conn_id)
        else {
            return; // the client left; its reply has nowhere to go
        };
        let reply = Reply::Whatsat {
            at_line: waiter.at_line,
            json,
        };
        entry.conn.fill_reply(waiter.seq, reply);
        self.write(waiter.conn_key, registry, dispatch);
    }

    /// Writes what the socket takes, then settles the connection's fate and interest.
    fn write(&mut self, key: usize, registry: &Registry, dispatch: &mut impl Dispatch) {
        dispatch.persist();
        let (soft_output, in_flight) = self.saturation_limits();
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let conn = &mut entry.conn;
        if let ConnState::Closed(reason) = conn.state {
            return self.close(key, reason);
        }
        let written = net::write_pending(&mut entry.stream, entry.transport.tls(), &mut conn.out);
        self.traffic.lines_sent += conn.out.take_lines();
        self.traffic.bytes_sent += *written.as_ref().unwrap_or(&0) as u64;
        match written {
            Ok(took) if took > 0 || conn.out.is_empty() => entry.last_progress = Instant::now(),
            Ok(_) => {}
            Err(e) => {
                info!("conn={} write error: {e}", conn.id);
                return self.close(key, "write error");
            }
        }
        let tls_unsent = entry.transport.tls_ref().is_some_and(|t| t.wants_write());
        if conn.is_finished() && !tls_unsent {
            return self.close(key, "eof");
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
            return self.close(key, "output limit");
        }
        let wanted = net::interest_with_tls(conn.wanted_interest(), entry.transport.tls_ref());
        if wanted != entry.registered {
            let token = tokens::conn(key);
            if let Err(e) = registry.reregister(&mut entry.stream, token, wanted) {
                warn!("conn={} reregister failed: {e}", conn.id);
                return self.close(key, "reregister failed");
            }
            entry.registered = wanted;
        }
        // Its input waited for this: the client read enough, or a lookup finished. (Edges do
        // not repeat for data already in the socket, so it is queued to be read again.)
        if !entry.conn.is_saturated(soft_output, in_flight) {
            let is_peer = entry.conn.peer.is_some();
            self.lines.unsaturate(&mut entry.read, key, is_peer);
        }
    }

    /// The one way a connection is closed: marked now, freed by [`Clients::sweep_closed`].
    pub fn close(&mut self, key: usize, reason: &'static str) {
        if let Some(entry) = self.conns.get_mut(key) {
            entry.conn.state = ConnState::Closed(reason);
            self.closing.push(key);
        }
    }

    /// A reload removed the link `link`: the connection its neighbour opened to us goes too.
    pub fn close_neighbour(&mut self, link: usize) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.peer.as_ref().is_some_and(|p| p.link == link))
            .map(|(key, _)| key)
            .collect();
        for key in keys {
            self.close(key, "link removed");
        }
    }

    /// Every flush interval: a connection whose client has taken none of its output for
    /// `limit stall-ms` is dropped, one on probation past its time too, and while all
    /// clients together have more than `limit output-total-bytes` unread, those owing the
    /// most are dropped first. (Per connection the soft limit already stops reading; this
    /// bounds the clients that stop reading together.)
    pub fn enforce_limits(&mut self, now: Instant) {
        let mut total = 0;
        let mut owing = Vec::new();
        let mut to_close = Vec::new();
        for (key, entry) in self.conns.iter() {
            if entry
                .transport
                .tls_ref()
                .is_some_and(|tls| tls.handshake_overdue(now))
            {
                warn!(
                    "limit tls-handshake-ms conn={}: the TLS handshake did not finish in {} ms, \
                     closing",
                    entry.conn.id,
                    self.limits.tls_handshake.as_millis()
                );
                if entry.transport.tls_ref().is_some_and(TlsStream::is_link) {
                    self.handshakes.fail(Failure::Timeout);
                }
                to_close.push((key, "tls handshake timed out"));
                continue;
            }
            if entry.probation_until.is_some_and(|until| until <= now) {
                warn!(
                    "limit connections: conn={} is past the limit and said no hello, closing",
                    entry.conn.id
                );
                to_close.push((key, "limit connections"));
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
                to_close.push((key, "stalled"));
                continue;
            }
            total += unread;
            owing.push((unread, key));
        }
        if total > self.limits.max_output_total_bytes {
            owing.sort_unstable_by(|a, b| b.cmp(a));
            for (unread, key) in owing {
                if total <= self.limits.max_output_total_bytes {
                    break;
                }
                warn!(
                    "limit output-total-bytes: {total} bytes unread over all clients, dropping \
                     conn={} ({unread} bytes unread)",
                    self.conns[key].conn.id
                );
                to_close.push((key, "output total limit"));
                total -= unread;
            }
        }
        for (key, reason) in to_close {
            self.close(key, reason);
        }
    }

    /// Frees every connection closed since the last sweep: deregisters it, frees its slot,
    /// gives up its lookups, and logs once.
    pub fn sweep_closed(&mut self, registry: &Registry, dispatch: &mut impl Dispatch) {
        for key in std::mem::take(&mut self.closing) {
            let closed = matches!(
                self.conns.get(key),
                Some(e) if matches!(e.conn.state, ConnState::Closed(_))
            );
            if !closed {
                continue; // already freed earlier in this sweep
            }
            let mut entry = self.conns.remove(key);
            let _ = registry.deregister(&mut entry.stream);
            let forgotten = match entry.conn.lookups_waiting() {
                0 => 0,
                _ => dispatch.forget_lookups(key, entry.conn.id),
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

/// With `peer tls`, an accepted connection's first byte tells a neighbour's TLS handshake from
/// a client's line; nothing there yet leaves it undecided. False: its TLS could not be set
/// up, and it is closed.
fn decide_transport(
    stream: &TcpStream,
    transport: &mut Transport,
    config: &PeerTlsConfig,
    handshake_limit: Duration,
    conn: &mut Connection,
) -> bool {
    match net::peek_first_byte(stream) {
        Ok(Some(tls::HANDSHAKE_RECORD)) => {
            match TlsStream::accept(config, Instant::now(), handshake_limit) {
                Ok(tls) => {
                    *transport = Transport::Tls(Box::new(tls));
                    conn.link_security = LinkSecurity::Tls(None);
                }
                Err(e) => {
                    warn!("tls conn={}: {e}", conn.id);
                    conn.state = ConnState::Closed("tls failed");
                    return false;
                }
            }
        }
        Ok(Some(_)) => *transport = Transport::Clear,
        // Nothing yet, or the end: the read says which.
        Ok(None) | Err(_) => {}
    }
    true
}

/// Once a handshake is done: what was agreed goes to the log, and a neighbour's link counts
/// it and keeps the certificate its hello will be checked against.
fn note_established(tls: &mut TlsStream, conn: &mut Connection, handshakes: &mut HandshakeCounts) {
    let Some(agreed) = tls.take_established() else {
        return;
    };
    info!("tls conn={}: handshake done, {agreed}", conn.id);
    if tls.is_link() {
        handshakes.succeeded += 1;
        conn.link_security = LinkSecurity::Tls(tls.peer_certificate());
    }
}

/// A TLS failure logged (a neighbour's failed handshake counted and warned of; a client's only
/// noted: anything on the internet may knock) and the reason the connection closes with.
fn tls_failed(
    id: u64,
    failure: &tls::TlsFailure,
    handshaking: bool,
    link: bool,
    handshakes: &mut HandshakeCounts,
) -> &'static str {
    if handshaking && link {
        handshakes.fail(failure.failure);
        warn!("tls conn={id}: handshake failed: {failure}");
    } else if handshaking {
        info!("tls conn={id}: handshake failed: {failure}");
    } else {
        warn!("tls conn={id}: {failure}");
    }
    if handshaking {
        "tls handshake failed"
    } else {
        "tls failed"
    }
}

/// Bytes one `read` takes. A client's read is smaller than a neighbour's: what a read brings
/// beyond the commands its turn takes is held in the server, per connection.
fn read_chunk(is_client: bool) -> usize {
    if is_client {
        CLIENT_READ_CHUNK
    } else {
        READ_CHUNK
    }
}

/// What handles the lines of one read of one connection.
struct LineHandler<'a> {
    conn: &'a mut Connection,
    probation_until: &'a mut Option<Instant>,
    app: &'a mut App,
    effects: &'a mut Vec<Effect>,
    lines_received: &'a mut u64,
    commands_left: &'a mut usize,
    /// The soft output limit and the in-flight cap.
    saturation: (usize, usize),
    now: ClientTime,
}

impl LineHandler<'_> {
    /// The input ended: what follows the last `\n` is one last line (SPEC section 2), after
    /// all the input before it; then the connection drains its replies.
    fn finish(&mut self, reader: &mut LineReader) {
        reader.finish(|line| {
            self.handle(line);
        });
        if self.conn.state == ConnState::Open {
            self.conn.state = ConnState::Draining;
        }
    }

    /// Handles one line; returns whether the next may be handled in this turn (the
    /// connection's command quota is not spent, and it is not saturated).
    fn handle(&mut self, line: Line<'_>) -> bool {
        let conn = &mut *self.conn;
        *self.lines_received += 1;
        if self.probation_until.is_some() && !may_be_a_neighbour(conn, &line) {
            warn!(
                "limit connections: conn={} is past the limit and not a neighbour, closing",
                conn.id
            );
            conn.state = ConnState::Closed("limit connections");
            return false;
        }
        let is_client = conn.peer.is_none();
        self.effects
            .extend(session::handle_line(conn, self.app, line, self.now));
        if conn.peer.is_some() {
            *self.probation_until = None; // a neighbour: admitted
        }
        // A neighbour's updates are not capped: a relay must keep up with its herd.
        if is_client {
            *self.commands_left = self.commands_left.saturating_sub(1);
        }
        let (soft_output, in_flight) = self.saturation;
        *self.commands_left > 0 && !conn.is_saturated(soft_output, in_flight)
    }
}

/// Whether a line on a connection on probation (accepted past `limit connections`) may come
/// from a neighbour: a neighbour's link says a hello first, then its proof.
fn may_be_a_neighbour(conn: &Connection, line: &Line<'_>) -> bool {
    let is_hello = match line {
        Line::Complete(text) => peer_wire::is_hello(text),
        Line::TooLong(_) => false,
    };
    conn.peer.is_some() || conn.challenged.is_some() || is_hello
}

/// The receive time of SPEC section 2, as exact seconds and nanoseconds.
fn wall_clock() -> ClientTime {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    ClientTime {
        secs: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos(),
    }
}
