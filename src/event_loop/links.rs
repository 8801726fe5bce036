//! The neighbour links part: every outbound link of the server with its socket (connecting,
//! the handshake, reading the neighbour's answers, writing what the link owes, taking it down
//! and retrying), and the hold-back of client input while a link is behind (`peer
//! max-owed`). The decisions (states, timers, backoff, what is owed) are `link::Link`'s; this
//! is where they meet sockets and the `Registry`. It sees the client table read-only (what a
//! link owes is a set of its records) and never touches clients' connections.
//!
//! With `peer tls`, each link's socket carries its TLS state ([`TlsStream`]): the hello waits
//! in rustls until the handshake is done, a handshake that fails or takes longer than `limit
//! tls-handshake-ms` takes the link down with the reason, and the link's own state machine
//! sees only the plaintext lines, as in clear.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Interest, Registry};

use crate::app::App;
use crate::backoff::{Backoff, Jitter};
use crate::config::{Config, PeerSettings};
use crate::digest::BUCKETS;
use crate::link::{
    Backlog, Heard, Link, LinkState, LinkTiming, PaceChange, TimerAction, GREETING_TIMEOUT,
};
use crate::metrics::page::LinkFigures;
use crate::net::{self, ReadOutcome, Socket};
use crate::owed::{CaughtUp, Start};
use crate::table::{ClientTable, LinkId};
use crate::tls::{Failure, HandshakeCounts, PeerTlsConfig, TlsStream};

use super::tokens;

/// Most bytes one link may write per loop turn, so a million-record resync shares the loop
/// with everything else.
const WRITE_BUDGET_BYTES: usize = 1024 * 1024;
/// Bytes read per `read` call from a neighbour's answers (welcomes, challenges, pongs).
const READ_CHUNK: usize = 64 * 1024;
/// Client input held back for a link (`peer max-owed`) is logged as one summary line at most
/// this often, not a line per episode: under a load the herd cannot carry there are thousands.
const HOLD_BACK_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes and lines the links moved, for the metrics page.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkTraffic {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub lines_sent: u64,
}

pub struct Links {
    /// By link id, in config order then in the order reloads added them.
    links: Vec<Link<Socket>>,
    jitter: Jitter,
    hold_backs: HoldBacks,
    max_owed: usize,
    traffic: LinkTraffic,
    scratch: Vec<u8>,
    /// `peer tls`: every link is TLS, made with this.
    tls: Option<Arc<PeerTlsConfig>>,
    /// `limit tls-handshake-ms`.
    tls_handshake_limit: Duration,
    handshakes: HandshakeCounts,
}

impl Links {
    /// The links of `name` in `config`, each making its first attempt at `now`; TLS links with
    /// `tls`.
    pub fn new(
        name: &str,
        config: &Config,
        tls: Option<Arc<PeerTlsConfig>>,
        jitter_seed: u64,
        now: Instant,
    ) -> Links {
        let peer = &config.peer;
        let links = config
            .neighbours(name)
            .into_iter()
            .enumerate()
            .map(|(id, n)| new_link(id, &n.name, n.addr, peer, now))
            .collect();
        Links {
            links,
            jitter: Jitter::new(jitter_seed),
            hold_backs: HoldBacks::new(now),
            max_owed: peer.max_owed,
            traffic: LinkTraffic::default(),
            scratch: vec![0; READ_CHUNK],
            tls,
            tls_handshake_limit: config.limits.tls_handshake,
            handshakes: HandshakeCounts::default(),
        }
    }

    /// The TLS handshakes of the links this server made, by outcome.
    pub fn handshakes(&self) -> &HandshakeCounts {
        &self.handshakes
    }

    /// With `peer tls`, each loaded certificate and when it expires (Unix seconds).
    pub fn tls_expiries(&self) -> Option<Vec<(String, i64)>> {
        self.tls.as_ref().map(|tls| tls.expiries.clone())
    }

    /// SIGHUP read the certificates again: links made from now on use these.
    pub fn set_tls(&mut self, tls: Arc<PeerTlsConfig>) {
        self.tls = Some(tls);
    }

    /// A reload changed `limit tls-handshake-ms` (for handshakes started after).
    pub fn set_tls_handshake_limit(&mut self, limit: Duration) {
        self.tls_handshake_limit = limit;
    }

    /// The neighbours' names by link id (the app numbers neighbours the same way).
    pub fn names(&self) -> Vec<String> {
        self.links.iter().map(|l| l.name.clone()).collect()
    }

    /// Links made this run (removed ones keep their id).
    pub fn count(&self) -> usize {
        self.links.len()
    }

    /// When the loop must look at a link again, whatever the sockets do.
    pub fn deadline(&self) -> Option<Instant> {
        let handshakes = self.links.iter().filter_map(|link| {
            let tls = socket_of(link)?.tls.as_ref()?;
            tls.deadline()
        });
        self.links
            .iter()
            .filter_map(Link::deadline)
            .chain(handshakes)
            .min()
    }

    pub fn traffic(&self) -> LinkTraffic {
        self.traffic
    }

    /// Lines the neighbours sent on our links.
    pub fn lines_received(&self) -> u64 {
        self.links.iter().map(|l| l.history().lines_received).sum()
    }

    /// Whether a link has records to send and room to send them: the loop must not sleep.
    pub fn have_unsent(&self, table: &ClientTable) -> bool {
        self.links.iter().any(|l| l.has_unsent(table))
    }

    /// Whether new client commands must wait: a link is behind but making progress, so this
    /// server would otherwise run ahead of its herd. Neighbours' connections are read
    /// regardless: holding them back too could deadlock a cycle of servers that each wait
    /// for the next.
    pub fn holding_back_clients(&self, table: &ClientTable, now: Instant) -> bool {
        self.links
            .iter()
            .any(|l| l.backlog(table, now) == Backlog::Behind)
    }

    /// Once a turn, before anything is read: each link's pace moves on (a link behind for
    /// longer than `peer hold-ms` lags instead of holding clients back; logged once per
    /// episode), and whether clients are held back is noted for the summary line. Returns
    /// whether they are.
    pub fn observe_pace(&mut self, table: &ClientTable, now: Instant) -> bool {
        for link in &mut self.links {
            match link.observe_pace(table, now) {
                None => {}
                Some(PaceChange::StartedLagging { owed }) => warn!(
                    "link lagging {}: {owed} updates owed after holding clients back for {} ms; \
                     clients are served, {} gets each client's newest record as the link \
                     carries it",
                    link.name,
                    link.hold_limit().as_millis(),
                    link.name
                ),
                Some(PaceChange::CaughtUp { after }) => info!(
                    "link caught up {} after {} ms lagging",
                    link.name,
                    after.as_millis()
                ),
            }
        }
        let holding = self.holding_back_clients(table, now);
        self.hold_backs.observe(holding, now);
        holding
    }

    /// The once-a-second summary of held-back client input, when there is one.
    pub fn hold_back_report(&mut self, now: Instant) -> Option<String> {
        self.hold_backs.report(now, self.max_owed)
    }

    /// The neighbour on `link` just opened its own link to us, so it is up and listening: a
    /// retry waiting out a backoff is brought forward.
    pub fn neighbour_is_back(&mut self, link: LinkId, now: Instant) {
        if let Some(link) = self.links.get_mut(link) {
            if link.neighbour_is_back(now) {
                info!("link retry {} now: it connected to us", link.name);
            }
        }
    }

    /// An event for link `index`'s socket.
    pub fn on_event(
        &mut self,
        index: LinkId,
        event: &mio::event::Event,
        registry: &Registry,
        app: &mut App,
    ) {
        let Some(link) = self.links.get_mut(index) else {
            return;
        };
        match link.state() {
            LinkState::Connecting { socket, .. } => match net::connect_finished(&socket.stream) {
                Ok(true) => {
                    // The TLS handshake comes before the hello's answer: its own limit first.
                    let allowed = match socket.tls {
                        Some(_) => GREETING_TIMEOUT + self.tls_handshake_limit,
                        None => GREETING_TIMEOUT,
                    };
                    let greeting = app.greeting_to(&link.name);
                    link.connected(greeting, Instant::now(), allowed);
                    self.write(index, registry);
                }
                Ok(false) => {}
                Err(e) => self.down(index, &format!("connect: {e}"), registry),
            },
            LinkState::Greeting { .. } | LinkState::Up { .. } => {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(index, registry, app.clients_mut());
                }
                if event.is_writable() {
                    self.write(index, registry);
                }
            }
            // An event for a socket already dropped.
            LinkState::Waiting { .. } | LinkState::Removed => {}
        }
    }

    /// Runs the links' timers: connects that are due, attempts that took too long, pings,
    /// neighbours that fell silent, and sockets that stopped taking bytes.
    pub fn tick(&mut self, registry: &Registry, table: &ClientTable) {
        let now = Instant::now();
        for index in 0..self.links.len() {
            let overdue = socket_of(&self.links[index])
                .and_then(|socket| socket.tls.as_ref())
                .is_some_and(|tls| tls.handshake_overdue(now));
            if overdue {
                self.handshakes.fail(Failure::Timeout);
                let why = format!(
                    "limit tls-handshake-ms: the TLS handshake did not finish in {} ms",
                    self.tls_handshake_limit.as_millis()
                );
                self.down(index, &why, registry);
            }
            match self.links[index].on_timer(now, table) {
                TimerAction::Nothing => {}
                TimerAction::Connect => self.start_connect(index, now, registry),
                TimerAction::GiveUp(why) => self.down(index, why, registry),
            }
            if self.links[index].backlog(table, now) == Backlog::Stalled {
                let why = format!(
                    "stalled: the neighbour took nothing for {} ms",
                    self.links[index].stall_limit().as_millis()
                );
                self.down(index, &why, registry);
            }
        }
    }

    /// Turns what each link owes into lines and writes them, until the socket is full,
    /// nothing is owed, or the link's budget for the turn is spent. The caller has written
    /// the turn's records to the store first.
    pub fn flush(&mut self, registry: &Registry, table: &mut ClientTable) {
        for index in 0..self.links.len() {
            let mut budget = WRITE_BUDGET_BYTES;
            loop {
                let link = &mut self.links[index];
                let (filled, caught_up) = link.fill(table);
                if let Some(CaughtUp { records, full }) = caught_up {
                    let how = match full {
                        true => "a full copy",
                        false => "what it lacked",
                    };
                    info!("link sync {}: sent {records} records ({how})", link.name);
                }
                if !link.has_pending_output() {
                    break;
                }
                self.write(index, registry);
                let link = &self.links[index];
                if filled == 0 || link.has_pending_output() {
                    break; // nothing new, or the socket is full: wait for WRITABLE
                }
                budget = budget.saturating_sub(filled);
                if budget == 0 {
                    break;
                }
            }
        }
    }

    /// A link to a neighbour a reload added (or moved): it takes the next id.
    pub fn add(&mut self, name: &str, addr: SocketAddr, peer: &PeerSettings, now: Instant) {
        let id = self.links.len();
        self.links.push(new_link(id, name, addr, peer, now));
        info!("link {name} added ({addr})");
    }

    /// Drops the link to `name` for good (a reload unlinked it); returns its id.
    pub fn remove(&mut self, name: &str, registry: &Registry) -> Option<LinkId> {
        let index = self
            .links
            .iter()
            .position(|l| l.name == name && !l.is_removed())?;
        if let Some(mut socket) = self.links[index].remove() {
            let _ = registry.deregister(&mut socket.stream);
        }
        info!("link {name} removed");
        Some(index)
    }

    /// New peer timing from a reload, for every link.
    pub fn set_timing(&mut self, peer: &PeerSettings) {
        let timing = LinkTiming::of(peer);
        let backoff = Backoff::new(peer.backoff_min, peer.backoff_max);
        for link in self.links.iter_mut().filter(|l| !l.is_removed()) {
            link.set_timing(timing.clone(), backoff.clone());
        }
        self.max_owed = peer.max_owed;
    }

    /// Each link's figures for the metrics page (removed links are left out).
    pub fn figures(
        &self,
        table: &ClientTable,
        unix_at: impl Fn(Instant) -> f64,
    ) -> Vec<LinkFigures> {
        self.links
            .iter()
            .filter(|l| !l.is_removed())
            .map(|link| {
                let history = link.history();
                LinkFigures {
                    name: link.name.clone(),
                    state: link.state_name(),
                    up_since_unix: history.up_since.map_or(0.0, &unix_at),
                    flaps: history.flaps,
                    resyncs: history.resyncs,
                    records_owed: link.records_owed(table),
                    last_heard_unix: history.last_heard.map_or(0.0, &unix_at),
                    lagging: link.is_lagging(),
                    lag_episodes: history.lag_episodes,
                    records_sent: history.records_sent,
                    full_copies: history.full_copies,
                    checks: history.checks,
                    repairs: history.repairs,
                }
            })
            .collect()
    }

    fn start_connect(&mut self, index: LinkId, now: Instant, registry: &Registry) {
        let link = &mut self.links[index];
        info!("link connecting {} {}", link.name, link.addr);
        let mut stream = match net::connect(link.addr) {
            Ok(stream) => stream,
            Err(e) => return self.down(index, &format!("connect: {e}"), registry),
        };
        let tls = match &self.tls {
            Some(config) => {
                match TlsStream::connect(config, &link.name, now, self.tls_handshake_limit) {
                    Ok(tls) => Some(Box::new(tls)),
                    Err(e) => return self.down(index, &e, registry),
                }
            }
            None => None,
        };
        let token = tokens::link(index);
        if let Err(e) = registry.register(&mut stream, token, Interest::WRITABLE) {
            return self.down(index, &format!("register: {e}"), registry);
        }
        let socket = Socket {
            stream,
            registered: Interest::WRITABLE,
            tls,
        };
        link.connecting(socket, now);
    }

    /// Reads the neighbour's side of our link: the rest of the handshake, then nothing but
    /// pongs and EOF.
    fn read(&mut self, index: LinkId, registry: &Registry, table: &mut ClientTable) {
        loop {
            let link = &mut self.links[index];
            let Some((socket, _)) = link.io() else {
                return;
            };
            let handshaking = socket.tls.as_ref().is_some_and(|tls| tls.is_handshaking());
            let outcome = net::read_some(
                &mut socket.stream,
                socket.tls.as_deref_mut(),
                &mut self.scratch,
            );
            let established = socket.tls.as_mut().and_then(|tls| tls.take_established());
            // The handshake may have left bytes for the socket (the hello, once it is done).
            let tls_wants_write = socket.tls.as_ref().is_some_and(|tls| tls.wants_write());
            if let Some(agreed) = established {
                self.handshakes.succeeded += 1;
                info!("link tls {}: neighbour authenticated, {agreed}", link.name);
            }
            match outcome {
                ReadOutcome::Data(n) => {
                    self.traffic.bytes_received += n as u64;
                    match link.on_bytes(&self.scratch[..n], table, Instant::now()) {
                        Heard::Nothing => {}
                        Heard::Welcomed(Start::Since(version)) => info!(
                            "link up {}: it holds our history to version {version}; sending \
                             what changed since",
                            link.name
                        ),
                        Heard::Welcomed(Start::Full) => info!(
                            "link up {}: it cannot place our history; sending everything",
                            link.name
                        ),
                        Heard::Repairing(buckets) => warn!(
                            "link check {}: {} of {} buckets differ, twice with the same \
                             digests; sending their records again",
                            link.name,
                            buckets.len(),
                            BUCKETS
                        ),
                        Heard::Refused(why) => return self.refused(index, &why, registry),
                    }
                    // The handshake may have left an answer to send (our proof).
                    if self.links[index].has_pending_output() || tls_wants_write {
                        self.write(index, registry);
                    }
                }
                ReadOutcome::WouldBlock => {
                    if tls_wants_write || self.links[index].has_pending_output() {
                        self.write(index, registry);
                    }
                    return;
                }
                ReadOutcome::Eof => return self.down(index, "closed by neighbour", registry),
                ReadOutcome::Failed(e) => return self.down(index, &e.to_string(), registry),
                ReadOutcome::TlsFailed(failure) if handshaking => {
                    self.handshakes.fail(failure.failure);
                    let why = format!("tls handshake failed: {failure}");
                    return self.refused(index, &why, registry);
                }
                ReadOutcome::TlsFailed(failure) => {
                    return self.down(index, &format!("tls failed: {failure}"), registry)
                }
            }
        }
    }

    /// Writes what the link's socket takes now and keeps its registration in step.
    fn write(&mut self, index: LinkId, registry: &Registry) {
        let link = &mut self.links[index];
        let Some((socket, out)) = link.io() else {
            return;
        };
        let written = net::write_pending(&mut socket.stream, socket.tls.as_deref_mut(), out);
        self.traffic.lines_sent += out.take_lines();
        let took = match written {
            Ok(took) => took,
            Err(e) => return self.down(index, &format!("write: {e}"), registry),
        };
        self.traffic.bytes_sent += took as u64;
        link.wrote(took > 0, Instant::now());
        let wanted = link.wanted_interest();
        let Some((socket, _)) = link.io() else {
            return;
        };
        let wanted = net::interest_with_tls(wanted, socket.tls.as_deref());
        if socket.registered != wanted {
            let token = tokens::link(index);
            if let Err(e) = registry.reregister(&mut socket.stream, token, wanted) {
                return self.down(index, &format!("reregister: {e}"), registry);
            }
            socket.registered = wanted;
        }
    }

    /// Takes a link down, logs why, and schedules the retry.
    fn down(&mut self, index: LinkId, reason: &str, registry: &Registry) {
        self.take_down(index, reason, false, registry);
    }

    /// The neighbour refused our handshake.
    fn refused(&mut self, index: LinkId, reason: &str, registry: &Registry) {
        self.take_down(index, reason, true, registry);
    }

    fn take_down(&mut self, index: LinkId, reason: &str, refused: bool, registry: &Registry) {
        let link = &mut self.links[index];
        let (socket, delay) = link.down(Instant::now(), self.jitter.next_unit(), refused);
        if let Some(mut socket) = socket {
            let _ = registry.deregister(&mut socket.stream);
        }
        warn!("link down {}: {reason}", link.name);
        info!("link retry {} in {} ms", link.name, delay.as_millis());
    }
}

/// The socket of a link that has one.
fn socket_of(link: &Link<Socket>) -> Option<&Socket> {
    match link.state() {
        LinkState::Connecting { socket, .. }
        | LinkState::Greeting { socket, .. }
        | LinkState::Up { socket, .. } => Some(socket),
        LinkState::Waiting { .. } | LinkState::Removed => None,
    }
}

fn new_link(
    id: LinkId,
    name: &str,
    addr: SocketAddr,
    peer: &PeerSettings,
    now: Instant,
) -> Link<Socket> {
    let backoff = Backoff::new(peer.backoff_min, peer.backoff_max);
    Link::new(id, name, addr, backoff, LinkTiming::of(peer), now)
}

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
