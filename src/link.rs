//! One outbound link to a neighbour (SPEC section 3) as a state machine: its [`LinkState`]
//! (with the socket and the data each state needs inside its variant), its retry backoff, and
//! what it owes the neighbour. The link carries this server's updates to the neighbour; the
//! neighbour's updates arrive on the link it opens to us, as an accepted connection.
//!
//! Transitions are methods that take the event and `now` and say what the loop must do; the
//! socket type is a parameter, so they are tested with no socket at all. Socket calls and
//! registration are the event loop's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::Interest;

use crate::backoff::Backoff;
use crate::buffer::{Line, LineReader, OutBuffer};
use crate::changes::Version;
use crate::config::PeerSettings;
use crate::digest::BUCKETS;
use crate::escape::Escaped;
use crate::logging::Party;
use crate::owed::{CaughtUp, NextRecord, Owed, Start};
use crate::peer_wire::{
    self, Greeting, GreetingStep, Refusal, SyncLine, MAX_REPLY_LINE_BYTES, PING_LINE,
};
use crate::table::{ClientTable, LinkId, Mark};
use crate::wire;

/// How long a connect may take before the attempt counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the neighbour may take to answer the hello.
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest retry delay of a link lost after it connected (see [`Link::down`]).
pub const RECONNECT_CAP: Duration = Duration::from_millis(500);
/// Owed records are turned into bytes only while less than this is waiting for the socket, so
/// the newest version of a record is picked as late as possible and a link's buffer stays
/// small whatever it owes: on a 1 MB/s link, 16 KiB is 16 ms of lines no newer update can
/// replace (with the socket's own [`crate::net::LINK_UNSENT_BYTES`], 32 ms in all), and on
/// loopback still a couple of hundred records a write.
pub const LOW_WATER_BYTES: usize = 16 * 1024;
/// A link that keeps sending without catching up says how far it has got at least this often
/// (in records), so a neighbour that restarts in the middle is sent at most this much again.
pub const MARK_EVERY_RECORDS: usize = 4096;

/// The timing and bounds every link of a server shares (from the `peer` settings).
#[derive(Clone, Debug)]
pub struct LinkTiming {
    /// A link that has been quiet this long sends a ping.
    pub ping_interval: Duration,
    /// A neighbour not heard from for this long is taken for gone.
    pub silence_limit: Duration,
    /// A link that owes more live updates than this holds back new client commands.
    pub max_owed: usize,
    /// A link whose socket took nothing for this long, with output waiting, is dropped.
    pub stall_limit: Duration,
    /// Longest a link behind holds client commands back in one episode; past it the link
    /// lags instead (see [`Pace`]).
    pub hold_limit: Duration,
    /// How often a caught-up link compares digests with its neighbour; zero: never.
    pub check_interval: Duration,
}

impl LinkTiming {
    pub fn of(peer: &PeerSettings) -> LinkTiming {
        LinkTiming {
            ping_interval: peer.ping_interval,
            silence_limit: peer.silence_limit(),
            max_owed: peer.max_owed,
            stall_limit: peer.stall_limit,
            hold_limit: peer.hold_limit,
            check_interval: peer.check_interval,
        }
    }
}

pub enum LinkState<S> {
    /// Down; the next attempt is due at `retry_at`.
    Waiting { retry_at: Instant },
    /// A nonblocking connect is in flight.
    Connecting { socket: S, deadline: Instant },
    /// Connected and the hello sent; the handshake goes on until the neighbour's welcome.
    Greeting {
        socket: S,
        deadline: Instant,
        greeting: Greeting,
    },
    /// Accepted: the catch-up and floods go out from `owed`. A ping goes out at `ping_due`; a
    /// neighbour not heard from since `last_heard` plus the silence limit is taken for gone;
    /// `last_progress` is the last time the socket took bytes or had nothing waiting.
    /// `marked` is the version the last `HERD-MARK` named, `unmarked` the records sent since.
    Up {
        socket: S,
        owed: Owed,
        last_heard: Instant,
        ping_due: Instant,
        last_progress: Instant,
        pace: Pace,
        marked: Version,
        unmarked: usize,
        check: Check,
    },
    /// A reload unlinked the neighbour: never tried again (its id is not reused).
    Removed,
}

/// How an up link keeps up with what it owes, across turns ([`Link::observe_pace`]).
///
/// A server must not run far ahead of its herd, so a link that owes more than `peer
/// max-owed` live updates holds client commands back while it catches up. But a link that
/// keeps falling behind is thinner than the load (a WAN link to another site), and holding
/// every client back for it would cap the whole server at that link's bandwidth. So once a
/// link has held clients back for `peer hold-ms` in all since it last owed nothing, it lags
/// instead: clients are served, and the neighbour gets each client's newest record as the
/// link can carry it (what a link owes is a set of records, each sent at most once, in its
/// newest version), so what it owes is bounded by the number of clients, not of updates. It
/// holds again only after it has caught up (owes nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Owed nothing, or never more than `max-owed`, since it last owed nothing.
    Keeping,
    /// Has owed more than `max-owed` since it last owed nothing, and held clients back for
    /// `held` in all; `observed` is when that was last brought up to date, and `holding`
    /// whether it owed more than `max-owed` then (so the time since counts as held).
    Behind {
        held: Duration,
        observed: Instant,
        holding: bool,
    },
    /// Held clients back for the hold limit, since `since`: clients are not held back for it
    /// until it owes nothing.
    Lagging { since: Instant },
}

/// The periodic comparison of digests with the neighbour (anti-entropy): every check interval,
/// when the link owes nothing, it sends `HERD-DIGEST`; a neighbour whose table differs answers
/// with its bucket digests. A bucket found different twice in a row with the same digests on
/// both sides (so neither side changed it in between: not an update in flight) is sent again
/// whole, whatever its records' sources.
#[derive(Debug)]
pub struct Check {
    due: Instant,
    /// The buckets that differed at the last comparison: ours, theirs.
    suspects: Vec<(usize, u64, u64)>,
}

impl Check {
    fn new(now: Instant, interval: Duration) -> Check {
        Check {
            due: now + interval,
            suspects: Vec::new(),
        }
    }

    /// Compares the neighbour's bucket digests with ours; returns the buckets to repair.
    fn compare(&mut self, ours: &[u64; BUCKETS], theirs: &[u64; BUCKETS]) -> Vec<usize> {
        let differing: Vec<(usize, u64, u64)> = (0..BUCKETS)
            .filter(|&k| ours[k] != theirs[k])
            .map(|k| (k, ours[k], theirs[k]))
            .collect();
        let confirmed = differing
            .iter()
            .filter(|d| self.suspects.contains(d))
            .map(|&(k, _, _)| k)
            .collect();
        self.suspects = differing;
        confirmed
    }
}

/// A change of pace worth a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum PaceChange {
    /// Behind for longer than the hold limit: the link lags from now on; it owes this many.
    StartedLagging { owed: usize },
    /// A lagging link owes nothing again, after lagging this long.
    CaughtUp { after: Duration },
}

/// What a link's timers call for now.
#[derive(Debug, PartialEq, Eq)]
pub enum TimerAction {
    Nothing,
    /// The retry is due: start a connect.
    Connect,
    /// Take the link down, for this reason.
    GiveUp(&'static str),
}

/// What the neighbour's bytes came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// Nothing that changes the state (a pong, or part of a line).
    Nothing,
    /// The welcome: the link is up, and starts as this says.
    Welcomed(Start),
    /// The periodic check found these buckets different twice: they are sent again.
    Repairing(Vec<usize>),
    /// Take the link down, for this reason.
    Refused(String),
}

/// How a link stands against what it owes (see [`Link::backlog`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Backlog {
    /// Within bounds, or not up.
    Fine,
    /// Owes more than `max_owed` and is making progress: hold back new client commands.
    Behind,
    /// Owes more than `max_owed`, but has held clients back for the hold limit since it last
    /// owed nothing: clients are served, the neighbour lags (see [`Pace`]).
    Lagging,
    /// Output has waited for the socket longer than `stall_limit`: drop the link.
    Stalled,
}

/// What a link has been through, for the metrics (`herd_link_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkHistory {
    /// Times the link went down after it was up.
    pub flaps: u64,
    /// Times it came up (each with a catch-up or a full copy).
    pub resyncs: u64,
    /// Of those, full copies (the neighbour could not place our history).
    pub full_copies: u64,
    /// Digest comparisons sent, and repairs they led to (buckets sent again).
    pub checks: u64,
    pub repairs: u64,
    /// Client records sent.
    pub records_sent: u64,
    /// When it last came up, while it is up.
    pub up_since: Option<Instant>,
    /// When the neighbour last sent anything on it (its welcome, a pong).
    pub last_heard: Option<Instant>,
    /// Lines the neighbour sent on it.
    pub lines_received: u64,
    /// Times it started lagging (see [`Pace`]).
    pub lag_episodes: u64,
}

pub struct Link<S> {
    /// This link's index among the server's neighbours (config order).
    pub id: LinkId,
    pub name: String,
    pub addr: SocketAddr,
    state: LinkState<S>,
    reader: LineReader,
    out: OutBuffer,
    backoff: Backoff,
    timing: LinkTiming,
    history: LinkHistory,
}

impl<S> Link<S> {
    /// A link that will make its first attempt at `now`.
    pub fn new(
        id: LinkId,
        name: &str,
        addr: SocketAddr,
        backoff: Backoff,
        timing: LinkTiming,
        now: Instant,
    ) -> Link<S> {
        Link {
            id,
            name: name.to_string(),
            addr,
            state: LinkState::Waiting { retry_at: now },
            reader: LineReader::new(MAX_REPLY_LINE_BYTES),
            out: OutBuffer::default(),
            backoff,
            timing,
            history: LinkHistory::default(),
        }
    }

    pub fn state(&self) -> &LinkState<S> {
        &self.state
    }

    /// The state's name, as the metrics label it.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            LinkState::Waiting { .. } => "waiting",
            LinkState::Connecting { .. } => "connecting",
            LinkState::Greeting { .. } => "greeting",
            LinkState::Up { .. } => "up",
            LinkState::Removed => "removed",
        }
    }

    pub fn history(&self) -> &LinkHistory {
        &self.history
    }

    /// Records the link still owes while it is up: the rest of a resync and every live
    /// update (records from the neighbour itself count until they are skipped); 0 when down.
    pub fn records_owed(&self, table: &ClientTable) -> usize {
        match &self.state {
            LinkState::Up { owed, .. } => owed.count(table),
            _ => 0,
        }
    }

    /// Lines queued on the link since the last call (for `herd_lines_sent_total`).
    pub fn take_lines_sent(&mut self) -> u64 {
        self.out.take_lines()
    }

    /// Whether bytes wait for the socket.
    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn stall_limit(&self) -> Duration {
        self.timing.stall_limit
    }

    pub fn hold_limit(&self) -> Duration {
        self.timing.hold_limit
    }

    /// The socket and the bytes waiting for it, while there is a socket.
    pub fn io(&mut self) -> Option<(&mut S, &mut OutBuffer)> {
        match &mut self.state {
            LinkState::Waiting { .. } | LinkState::Removed => None,
            LinkState::Connecting { socket, .. }
            | LinkState::Greeting { socket, .. }
            | LinkState::Up { socket, .. } => Some((socket, &mut self.out)),
        }
    }

    /// When the loop must look at this link again, whatever the sockets do.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            LinkState::Removed => None,
            LinkState::Waiting { retry_at } => Some(*retry_at),
            LinkState::Connecting { deadline, .. } | LinkState::Greeting { deadline, .. } => {
                Some(*deadline)
            }
            LinkState::Up {
                last_heard,
                ping_due,
                last_progress,
                check,
                ..
            } => {
                let mut due = (*ping_due).min(*last_heard + self.timing.silence_limit);
                if !self.timing.check_interval.is_zero() {
                    due = due.min(check.due);
                }
                if self.out.is_empty() {
                    Some(due)
                } else {
                    Some(due.min(*last_progress + self.timing.stall_limit))
                }
            }
        }
    }

    /// Acts on whichever of the link's deadlines has passed.
    pub fn on_timer(&mut self, now: Instant, table: &ClientTable) -> TimerAction {
        let silence_limit = self.timing.silence_limit;
        let ping_interval = self.timing.ping_interval;
        let check_interval = self.timing.check_interval;
        if let LinkState::Up { owed, check, .. } = &mut self.state {
            if !check_interval.is_zero() && check.due <= now {
                check.due = now + check_interval;
                // Only a link that owes nothing compares: otherwise the digests differ by
                // what it is still sending.
                if owed.is_empty(table) && self.out.is_empty() {
                    self.history.checks += 1;
                    let line = peer_wire::format_digest(table.digest().whole());
                    wire::send_line(&mut self.out, Party::Link(&self.name), &line);
                }
            }
        }
        match &mut self.state {
            LinkState::Waiting { retry_at } if *retry_at <= now => TimerAction::Connect,
            LinkState::Connecting { deadline, .. } if *deadline <= now => {
                TimerAction::GiveUp("connect timed out")
            }
            LinkState::Greeting { deadline, .. } if *deadline <= now => {
                TimerAction::GiveUp("no welcome in time")
            }
            LinkState::Up { last_heard, .. } if *last_heard + silence_limit <= now => {
                TimerAction::GiveUp("neighbour silent, no answer to pings")
            }
            LinkState::Up { ping_due, .. } if *ping_due <= now => {
                *ping_due = now + ping_interval;
                wire::send_line(&mut self.out, Party::Link(&self.name), PING_LINE);
                TimerAction::Nothing
            }
            _ => TimerAction::Nothing,
        }
    }

    /// A reload unlinked the neighbour: the link is dropped for good. Returns its socket, to
    /// be deregistered and closed.
    pub fn remove(&mut self) -> Option<S> {
        self.out = OutBuffer::default();
        match std::mem::replace(&mut self.state, LinkState::Removed) {
            LinkState::Connecting { socket, .. }
            | LinkState::Greeting { socket, .. }
            | LinkState::Up { socket, .. } => Some(socket),
            LinkState::Waiting { .. } | LinkState::Removed => None,
        }
    }

    pub fn is_removed(&self) -> bool {
        matches!(self.state, LinkState::Removed)
    }

    /// New peer timing from a reload; the backoff starts again from its new shortest delay.
    pub fn set_timing(&mut self, timing: LinkTiming, backoff: Backoff) {
        self.timing = timing;
        self.backoff = backoff;
    }

    /// The neighbour just opened its own link to us, so it is up and listening: a link that is
    /// waiting out a backoff tries again at once, from the shortest delay. (A restarted server
    /// is then brought up to date within a round trip, not at our next retry.) Returns whether
    /// the retry was brought forward.
    pub fn neighbour_is_back(&mut self, now: Instant) -> bool {
        match &mut self.state {
            LinkState::Waiting { retry_at } if *retry_at > now => {
                *retry_at = now;
                self.backoff.reset();
                true
            }
            _ => false,
        }
    }

    /// The retry is due and a connect has started on `socket`.
    pub fn connecting(&mut self, socket: S, now: Instant) {
        self.state = LinkState::Connecting {
            socket,
            deadline: now + CONNECT_TIMEOUT,
        };
    }

    /// The connect finished: send the hello and go on with the handshake, which has `allowed`
    /// to finish ([`GREETING_TIMEOUT`], plus the TLS handshake's limit when one comes first).
    pub fn connected(&mut self, greeting: Greeting, now: Instant, allowed: Duration) {
        if let LinkState::Connecting { .. } = self.state {
            let LinkState::Connecting { socket, .. } = self.take_state(now) else {
                unreachable!("matched above");
            };
            wire::send_line(&mut self.out, Party::Link(&self.name), &greeting.hello());
            self.state = LinkState::Greeting {
                socket,
                deadline: now + allowed,
                greeting,
            };
        }
    }

    /// Bytes from the neighbour: the rest of the handshake (a challenge, the welcome), then
    /// pongs and bucket digests. Anything arriving counts as a sign of life.
    pub fn on_bytes(&mut self, bytes: &[u8], table: &mut ClientTable, now: Instant) -> Heard {
        let mut greeting = match &mut self.state {
            LinkState::Greeting { greeting, .. } => Some(greeting),
            _ => None,
        };
        let mut answers = Vec::new();
        let mut ended: Option<Result<Option<Mark>, Refusal>> = None;
        let mut their_buckets = None;
        let party = Party::Link(&self.name);
        let lines = &mut self.history.lines_received;
        self.history.last_heard = Some(now);
        self.reader.feed(bytes, |line| {
            *lines += 1;
            let line = match line {
                Line::Complete(line) | Line::TooLong(line) => line,
            };
            wire::received(party, line);
            if let Some(greeting) = greeting.as_mut().filter(|_| ended.is_none()) {
                match greeting.on_line(line) {
                    GreetingStep::Send(answer) => answers.push(answer),
                    GreetingStep::Welcomed(held) => ended = Some(Ok(held)),
                    GreetingStep::Refused(why) => ended = Some(Err(why)),
                }
            } else if let Some(SyncLine::Buckets(buckets)) = peer_wire::parse_sync_line(line) {
                their_buckets = Some(buckets);
            }
        });
        for answer in answers {
            wire::send_line(&mut self.out, Party::Link(&self.name), &answer);
        }
        match ended {
            Some(Ok(held)) => Heard::Welcomed(self.welcomed(held, table, now)),
            Some(Err(why)) => Heard::Refused(refusal_reason(why)),
            None => {
                let LinkState::Up {
                    last_heard,
                    owed,
                    check,
                    ..
                } = &mut self.state
                else {
                    return Heard::Nothing;
                };
                *last_heard = now;
                let Some(theirs) = their_buckets else {
                    return Heard::Nothing;
                };
                let repair = check.compare(table.digest().buckets(), &theirs);
                if repair.is_empty() {
                    return Heard::Nothing;
                }
                self.history.repairs += 1;
                owed.repair(&repair);
                Heard::Repairing(repair)
            }
        }
    }

    /// The neighbour accepted us, holding our history up to `held` if it can place it: from
    /// there the link catches up, or it sends everything. Then every update.
    fn welcomed(&mut self, held: Option<Mark>, table: &mut ClientTable, now: Instant) -> Start {
        let start = start_from(held, table);
        if let LinkState::Greeting { .. } = self.state {
            let LinkState::Greeting { socket, .. } = self.take_state(now) else {
                unreachable!("matched above");
            };
            self.backoff.reset();
            self.history.resyncs += 1;
            if start == Start::Full {
                self.history.full_copies += 1;
            }
            self.history.up_since = Some(now);
            let owed = Owed::open(self.id, start, table);
            self.state = LinkState::Up {
                socket,
                marked: owed.passed(table),
                owed,
                last_heard: now,
                ping_due: now + self.timing.ping_interval,
                last_progress: now,
                pace: Pace::Keeping,
                unmarked: 0,
                check: Check::new(now, self.timing.check_interval),
            };
        }
        start
    }

    /// Turns owed records into lines, the newest version of each, until the buffer reaches
    /// [`LOW_WATER_BYTES`] or nothing is owed; then, if it caught up or sent
    /// [`MARK_EVERY_RECORDS`] since the last, a `HERD-MARK` saying how far it has got.
    /// Returns the bytes added, and, once, what the catch-up sent.
    pub fn fill(&mut self, table: &mut ClientTable) -> (usize, Option<CaughtUp>) {
        let LinkState::Up {
            owed,
            marked,
            unmarked,
            ..
        } = &mut self.state
        else {
            return (0, None);
        };
        let before = self.out.len();
        while self.out.len() < LOW_WATER_BYTES {
            let NextRecord::Send(record) = owed.next_record(table) else {
                break;
            };
            if let Some(line) = table.line_at(record) {
                wire::send_line(&mut self.out, Party::Link(&self.name), line);
                *unmarked += 1;
                self.history.records_sent += 1;
            }
        }
        let passed = owed.passed(table);
        if passed > *marked && (owed.is_empty(table) || *unmarked >= MARK_EVERY_RECORDS) {
            let line = peer_wire::format_mark(table.epoch(), passed);
            wire::send_line(&mut self.out, Party::Link(&self.name), &line);
            (*marked, *unmarked) = (passed, 0);
        }
        (self.out.len() - before, owed.take_caught_up(table))
    }

    /// After a write: `took` is whether the socket accepted any bytes.
    pub fn wrote(&mut self, took: bool, now: Instant) {
        if let LinkState::Up { last_progress, .. } = &mut self.state {
            if took || self.out.is_empty() {
                *last_progress = now;
            }
        }
    }

    /// Whether the link has records to send and room to send them: the loop must not sleep.
    pub fn has_unsent(&self, table: &ClientTable) -> bool {
        match &self.state {
            LinkState::Up { owed, .. } => self.out.is_empty() && !owed.is_empty(table),
            _ => false,
        }
    }

    /// How the link stands against what it owes. A server must not run ahead of its herd, but
    /// one stuck neighbour must not stall it either (SPEC section 3: links survive faults),
    /// nor one thin link slow every client (see [`Pace`]).
    pub fn backlog(&self, table: &ClientTable, now: Instant) -> Backlog {
        let LinkState::Up {
            owed,
            last_progress,
            pace,
            ..
        } = &self.state
        else {
            return Backlog::Fine;
        };
        if !self.out.is_empty() && now.duration_since(*last_progress) >= self.timing.stall_limit {
            Backlog::Stalled
        } else if owed.live_count(table) <= self.timing.max_owed {
            Backlog::Fine
        } else if matches!(pace, Pace::Lagging { .. }) {
            Backlog::Lagging
        } else {
            Backlog::Behind
        }
    }

    /// Once a turn: moves the link's [`Pace`] on by what it owes now; returns a change worth
    /// a log line.
    pub fn observe_pace(&mut self, table: &ClientTable, now: Instant) -> Option<PaceChange> {
        let (hold_limit, max_owed) = (self.timing.hold_limit, self.timing.max_owed);
        // Caught up is owing nothing with nothing left in the buffer: `fill` moves hundreds of
        // records at a time into the buffer, so the count alone touches 0 between hold-backs
        // of a link that is far behind.
        let drained = self.out.is_empty();
        let LinkState::Up { owed, pace, .. } = &mut self.state else {
            return None;
        };
        let owing = owed.live_count(table);
        let caught_up = owing == 0 && drained;
        let (next, change) = match *pace {
            Pace::Keeping if owing > max_owed => (
                Pace::Behind {
                    held: Duration::ZERO,
                    observed: now,
                    holding: true,
                },
                None,
            ),
            Pace::Keeping => (Pace::Keeping, None),
            Pace::Behind { .. } if caught_up => (Pace::Keeping, None),
            Pace::Behind {
                held,
                observed,
                holding,
            } => {
                // Clients were held back since the last look if it owed too much then.
                let held = match holding {
                    true => held + now.duration_since(observed),
                    false => held,
                };
                match held >= hold_limit {
                    true => (
                        Pace::Lagging { since: now },
                        Some(PaceChange::StartedLagging { owed: owing }),
                    ),
                    false => (
                        Pace::Behind {
                            held,
                            observed: now,
                            holding: owing > max_owed,
                        },
                        None,
                    ),
                }
            }
            Pace::Lagging { since } if caught_up => (
                Pace::Keeping,
                Some(PaceChange::CaughtUp {
                    after: now.duration_since(since),
                }),
            ),
            Pace::Lagging { since } => (Pace::Lagging { since }, None),
        };
        *pace = next;
        if matches!(change, Some(PaceChange::StartedLagging { .. })) {
            self.history.lag_episodes += 1;
        }
        change
    }

    /// Whether the link lags (see [`Pace`]).
    pub fn is_lagging(&self) -> bool {
        matches!(
            self.state,
            LinkState::Up {
                pace: Pace::Lagging { .. },
                ..
            }
        )
    }

    pub fn wanted_interest(&self) -> Interest {
        match self.state {
            LinkState::Connecting { .. } => Interest::WRITABLE,
            _ if self.out.is_empty() => Interest::READABLE,
            _ => Interest::READABLE | Interest::WRITABLE,
        }
    }

    /// Takes the link down: everything queued and owed is dropped (a resync follows the next
    /// welcome) and the next attempt is scheduled. Returns the socket, for the caller to
    /// deregister, and the delay.
    ///
    /// A link that was connected (greeting or up) and is lost for any reason but the
    /// neighbour's own refusal of our hello was cut by the network or a restart, not turned
    /// away: its retries wait at most [`RECONNECT_CAP`], so a healed partition is back within
    /// half a second instead of at a backoff grown to seconds. A neighbour that is down
    /// (connect refused) or refuses us is retried with the full backoff.
    pub fn down(&mut self, now: Instant, jitter: f64, refused: bool) -> (Option<S>, Duration) {
        let was_connected = matches!(
            self.state,
            LinkState::Greeting { .. } | LinkState::Up { .. }
        );
        if let LinkState::Up { .. } = self.state {
            self.history.flaps += 1;
        }
        self.history.up_since = None;
        let mut delay = self.backoff.next_delay(jitter);
        if was_connected && !refused {
            delay = delay.min(RECONNECT_CAP);
        }
        let old = std::mem::replace(
            &mut self.state,
            LinkState::Waiting {
                retry_at: now + delay,
            },
        );
        self.out = OutBuffer::default();
        self.reader = LineReader::new(MAX_REPLY_LINE_BYTES);
        let socket = match old {
            LinkState::Waiting { .. } => None,
            LinkState::Removed => {
                self.state = LinkState::Removed; // a removed link stays removed
                None
            }
            LinkState::Connecting { socket, .. }
            | LinkState::Greeting { socket, .. }
            | LinkState::Up { socket, .. } => Some(socket),
        };
        (socket, delay)
    }

    /// Moves the state out, leaving a placeholder the caller overwrites at once.
    fn take_state(&mut self, now: Instant) -> LinkState<S> {
        std::mem::replace(&mut self.state, LinkState::Waiting { retry_at: now })
    }
}

/// How a link starts from what the neighbour holds of our history: after it, if the mark is of
/// this table's epoch and not past its newest version (a store restored from an old copy
/// would be); otherwise with everything.
pub fn start_from(held: Option<Mark>, table: &ClientTable) -> Start {
    match held {
        Some(mark) if mark.epoch == table.epoch() && mark.version <= table.latest_version() => {
            Start::Since(mark.version)
        }
        _ => Start::Full,
    }
}

/// Why a link went down in its handshake, as the `link down` record says it (proofs in a
/// refusal's echo are redacted already).
fn refusal_reason(why: Refusal) -> String {
    match why {
        Refusal::Line(line) => format!("refused: {}", Escaped(&line)),
        Refusal::NoProof => "refused: the neighbour did not prove the shared secret".to_string(),
        Refusal::Misnamed(name) => format!(
            "refused: the neighbour says it is {}",
            Escaped(name.as_bytes())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{store_for_test as store, Source};

    const PING: Duration = Duration::from_millis(1000);
    const SILENCE: Duration = Duration::from_millis(5000);
    const STALL: Duration = Duration::from_millis(2000);
    const HOLD: Duration = Duration::from_millis(500);

    /// Stands in for a socket: the link only carries it from state to state.
    #[derive(Debug, PartialEq)]
    struct FakeSocket(u32);

    /// The handshake of a herd without a secret: hello, then the welcome.
    fn plain_greeting() -> Greeting {
        Greeting::new("Campbell", "Bona", None)
    }

    fn link(now: Instant) -> Link<FakeSocket> {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(5000));
        let timing = LinkTiming {
            ping_interval: PING,
            silence_limit: SILENCE,
            max_owed: 2,
            stall_limit: STALL,
            hold_limit: HOLD,
            check_interval: Duration::ZERO,
        };
        Link::new(
            1,
            "Bona",
            "127.0.0.1:1".parse().unwrap(),
            backoff,
            timing,
            now,
        )
    }

    fn link_greeting(now: Instant) -> Link<FakeSocket> {
        let mut l = link(now);
        l.connecting(FakeSocket(7), now);
        l.connected(plain_greeting(), now, GREETING_TIMEOUT);
        l
    }

    fn link_up(table: &mut ClientTable, now: Instant) -> Link<FakeSocket> {
        let mut l = link_greeting(now);
        assert_eq!(
            l.on_bytes(b"HERD-WELCOME Bona\n", table, now),
            Heard::Welcomed(Start::Full)
        );
        l.out = OutBuffer::default();
        l
    }

    fn sent(l: &mut Link<FakeSocket>) -> String {
        let text = String::from_utf8_lossy(l.out.pending()).into_owned();
        l.out = OutBuffer::default();
        text
    }

    #[test]
    fn a_new_link_tries_at_once() {
        let now = Instant::now();
        let mut l = link(now);
        assert_eq!(l.deadline(), Some(now));
        assert_eq!(l.on_timer(now, &ClientTable::new()), TimerAction::Connect);
        assert!(l.io().is_none());
    }

    #[test]
    fn connected_sends_the_hello_and_waits_for_a_welcome() {
        let now = Instant::now();
        let mut l = link_greeting(now);
        assert_eq!(sent(&mut l), "HERD-HELLO Campbell\n");
        assert_eq!(l.deadline(), Some(now + GREETING_TIMEOUT));
        assert!(!matches!(l.state(), LinkState::Up { .. }));
        assert_eq!(l.io().map(|(s, _)| s.0), Some(7));
    }

    #[test]
    fn a_welcome_brings_the_link_up_owing_the_whole_table() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        store(&mut table, "a", 1, Source::Client);
        store(&mut table, "b", 1, Source::Neighbour(1));
        let mut l = link_greeting(now);
        sent(&mut l);
        // The welcome may arrive in pieces.
        assert_eq!(l.on_bytes(b"HERD-WEL", &mut table, now), Heard::Nothing);
        assert!(!matches!(l.state(), LinkState::Up { .. }));
        assert_eq!(
            l.on_bytes(b"COME Bona\n", &mut table, now),
            Heard::Welcomed(Start::Full)
        );
        assert!(matches!(l.state(), LinkState::Up { .. }));
        assert_eq!(l.deadline(), Some(now + PING));
        let (bytes, resync) = l.fill(&mut table);
        assert_eq!(
            resync,
            Some(CaughtUp {
                records: 2,
                full: true
            })
        );
        assert_eq!(
            sent(&mut l),
            "AT S +0.000000000 a +1+1 1\nAT S +0.000000000 b +1+1 1\n\
             HERD-MARK 0000000000000000 2\n",
            "the records, then how far the neighbour holds our history now"
        );
        assert_eq!(bytes, 54 + 29);
    }

    #[test]
    fn anything_but_a_welcome_is_a_refusal() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link_greeting(now);
        assert_eq!(
            l.on_bytes(b"? HERD-HELLO Campbell\n", &mut table, now),
            Heard::Refused("refused: ? HERD-HELLO Campbell".into())
        );
    }

    /// A refusal echoes our line back; the reason the `link down` record gives never carries a
    /// proof (one was once logged there in full, and could be replayed).
    #[test]
    fn a_refusal_reason_carries_no_proof() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link_greeting(now);
        assert_eq!(
            l.on_bytes(b"? HERD-PROOF 0123abcd\n", &mut table, now),
            Heard::Refused("refused: ? HERD-PROOF <redacted>".into())
        );
        let mut l = link_greeting(now);
        assert_eq!(
            l.on_bytes(
                b"? HERD-HELLO Campbell 1796516821 a7d58eaf\n",
                &mut table,
                now
            ),
            Heard::Refused("refused: ? HERD-HELLO Campbell 1796516821 <redacted>".into())
        );
    }

    #[test]
    fn floods_wait_as_owed_records_and_go_out_as_the_newest_version() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link_up(&mut table, now);
        l.fill(&mut table);
        for time in 1..=100 {
            store(&mut table, "kiwi", time, Source::Client);
        }
        assert!(l.has_unsent(&table));
        l.fill(&mut table);
        assert_eq!(
            sent(&mut l),
            "AT S +0.000000000 kiwi +1+1 100\nHERD-MARK 0000000000000000 100\n"
        );
        assert!(!l.has_unsent(&table));
        // From the neighbour itself: nothing to send back, but it holds that version now.
        store(&mut table, "kiwi", 101, Source::Neighbour(1));
        l.fill(&mut table);
        assert_eq!(sent(&mut l), "HERD-MARK 0000000000000000 101\n");
    }

    #[test]
    fn a_link_that_is_down_owes_nothing() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link_greeting(now);
        sent(&mut l);
        store(&mut table, "kiwi", 1, Source::Client);
        assert_eq!(l.fill(&mut table), (0, None));
        assert!(!l.has_unsent(&table));
    }

    #[test]
    fn the_buffer_stops_at_the_low_water_mark() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        for n in 0..5000 {
            store(&mut table, &format!("client{n}"), 1, Source::Client);
        }
        let mut l = link_up(&mut table, now);
        let (first, resync) = l.fill(&mut table);
        assert!((LOW_WATER_BYTES..LOW_WATER_BYTES + 100).contains(&first));
        assert_eq!(resync, None);
        assert!(
            !l.has_unsent(&table),
            "the buffer is full: wait for the socket"
        );
        assert_eq!(l.fill(&mut table).0, 0);
        let mut text = sent(&mut l);
        assert!(l.has_unsent(&table));
        let mut total = first;
        loop {
            let (bytes, resync) = l.fill(&mut table);
            total += bytes;
            text += &sent(&mut l);
            if let Some(caught_up) = resync {
                assert_eq!(caught_up.records, 5000);
                break;
            }
        }
        assert_eq!(total, text.len());
        // Every record once, in order, with a mark at the end of the fill that passed
        // MARK_EVERY_RECORDS (a line is well over 16 bytes) and one at the end.
        let (mut records, mut since_mark) = (Vec::new(), 0);
        for line in text.lines() {
            if line.starts_with("HERD-MARK ") {
                since_mark = 0;
            } else {
                records.push(line);
                since_mark += 1;
                assert!(since_mark <= MARK_EVERY_RECORDS + LOW_WATER_BYTES / 16);
            }
        }
        let expected: Vec<String> = (0..5000)
            .map(|i| String::from_utf8_lossy(table.line_at(i).unwrap()).into_owned())
            .collect();
        assert_eq!(records, expected);
        assert_eq!(text.lines().last(), Some("HERD-MARK 0000000000000000 5000"));
    }

    #[test]
    fn a_link_owing_too_much_is_behind_until_it_drains() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link_up(&mut table, now);
        l.fill(&mut table);
        for n in 0..3 {
            store(&mut table, &format!("c{n}"), 1, Source::Client);
        }
        assert_eq!(l.backlog(&table, now), Backlog::Behind);
        l.fill(&mut table);
        assert_eq!(l.backlog(&table, now), Backlog::Fine);
    }

    /// New clients, one per name: every up link owes them.
    fn owe_new(table: &mut ClientTable, names: &[&str]) {
        for name in names {
            store(table, name, 1, Source::Client);
        }
    }

    /// A link that keeps falling behind holds clients back for the hold limit in all, then
    /// lags (clients are served) until it owes nothing; then it may hold again.
    #[test]
    fn a_link_that_held_clients_for_the_hold_limit_lags_until_it_owes_nothing() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut table = ClientTable::new();
        let mut l = link_up(&mut table, start);
        l.fill(&mut table);
        owe_new(&mut table, &["a", "b", "c"]);
        assert_eq!(l.observe_pace(&table, at(0)), None);
        assert_eq!(l.backlog(&table, at(0)), Backlog::Behind);
        assert_eq!(l.observe_pace(&table, at(300)), None, "held 300 ms");
        // It drains to under the bound but not to nothing: not holding, not caught up either.
        l.fill(&mut table);
        owe_new(&mut table, &["d"]);
        assert_eq!(l.backlog(&table, at(310)), Backlog::Fine);
        assert_eq!(l.observe_pace(&table, at(310)), None, "held 310 ms");
        assert_eq!(
            l.observe_pace(&table, at(900)),
            None,
            "no hold since: 310 ms"
        );
        owe_new(&mut table, &["e", "f"]);
        assert_eq!(
            l.observe_pace(&table, at(1000)),
            None,
            "holding again, 310 ms"
        );
        assert_eq!(l.backlog(&table, at(1000)), Backlog::Behind);
        assert_eq!(l.observe_pace(&table, at(1100)), None, "held 410 ms");
        assert_eq!(
            l.observe_pace(&table, at(1200)),
            Some(PaceChange::StartedLagging { owed: 3 }),
            "held 510 ms in all"
        );
        assert!(l.is_lagging());
        assert_eq!(
            l.backlog(&table, at(1200)),
            Backlog::Lagging,
            "clients served"
        );
        owe_new(&mut table, &["g"]);
        assert_eq!(l.observe_pace(&table, at(1500)), None, "still lagging");
        l.fill(&mut table);
        assert_eq!(
            l.observe_pace(&table, at(1550)),
            None,
            "owes nothing, but its buffer still holds what it owed: not caught up yet"
        );
        sent(&mut l); // the socket took it
        assert_eq!(
            l.observe_pace(&table, at(1600)),
            Some(PaceChange::CaughtUp {
                after: Duration::from_millis(400)
            })
        );
        assert_eq!(l.history().lag_episodes, 1);
        // Behind again: held again, from a new episode.
        owe_new(&mut table, &["h", "i", "j"]);
        assert_eq!(l.observe_pace(&table, at(1700)), None);
        assert_eq!(l.backlog(&table, at(1700)), Backlog::Behind);
    }

    #[test]
    fn a_link_behind_for_a_moment_only_holds_and_never_lags() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut table = ClientTable::new();
        let mut l = link_up(&mut table, start);
        l.fill(&mut table);
        for round in 0..10 {
            let names: Vec<String> = (0..3).map(|n| format!("r{round}c{n}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            owe_new(&mut table, &names);
            assert_eq!(l.observe_pace(&table, at(round * 1000)), None);
            // Caught up (owes nothing) 100 ms later: each episode holds 100 ms at most.
            assert_eq!(l.observe_pace(&table, at(round * 1000 + 100)), None);
            l.fill(&mut table);
            sent(&mut l);
            assert_eq!(l.observe_pace(&table, at(round * 1000 + 150)), None);
        }
        assert!(!l.is_lagging());
        assert_eq!(l.history().lag_episodes, 0);
    }

    #[test]
    fn a_resync_alone_does_not_hold_clients_back() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        for n in 0..10 {
            store(&mut table, &format!("c{n}"), 1, Source::Client);
        }
        let l = link_up(&mut table, now);
        assert_eq!(l.backlog(&table, now), Backlog::Fine);
    }

    #[test]
    fn a_socket_that_takes_nothing_for_the_stall_limit_is_stalled() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link_up(&mut table, now);
        store(&mut table, "c", 1, Source::Client);
        l.fill(&mut table);
        l.wrote(false, now);
        assert_eq!(l.deadline(), Some(now + PING));
        assert_eq!(l.backlog(&table, now + STALL / 2), Backlog::Fine);
        l.wrote(true, now + STALL / 2);
        assert_eq!(l.backlog(&table, now + STALL), Backlog::Fine);
        assert_eq!(l.backlog(&table, now + STALL / 2 + STALL), Backlog::Stalled);
        // With nothing waiting for the socket there is nothing to stall on.
        sent(&mut l);
        assert_eq!(l.backlog(&table, now + 10 * STALL), Backlog::Fine);
    }

    #[test]
    fn down_drops_everything_returns_the_socket_and_backs_off() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link_up(&mut table, now);
        wire::send_line(&mut l.out, Party::Link("Bona"), b"AT ...");
        let (socket, first) = l.down(now, 0.5, false);
        assert_eq!(socket, Some(FakeSocket(7)));
        assert!(l.out.is_empty());
        assert_eq!(l.deadline(), Some(now + first));
        let (socket, second) = l.down(now, 0.5, false);
        assert_eq!(socket, None);
        assert!(second > first);
        let mut l2 = link_up(&mut table, now);
        let (_, after_up) = l2.down(now, 0.5, false);
        assert_eq!(after_up, first);
    }

    #[test]
    fn a_link_lost_after_connecting_retries_within_the_cap_and_a_refused_one_backs_off() {
        let now = Instant::now();
        let backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(30));
        let timing = link(now).timing.clone();
        let mut l: Link<FakeSocket> = Link::new(
            1,
            "Bona",
            "127.0.0.1:1".parse().unwrap(),
            backoff,
            timing,
            now,
        );
        for _ in 0..6 {
            // Connected, then the network cut it before the welcome (a cut relay does this).
            l.connecting(FakeSocket(1), now);
            l.connected(plain_greeting(), now, GREETING_TIMEOUT);
            let (_, delay) = l.down(now, 0.99, false);
            assert!(delay <= RECONNECT_CAP, "{delay:?}");
        }
        // Turned away by the neighbour: the backoff, grown meanwhile, applies.
        l.connecting(FakeSocket(1), now);
        l.connected(plain_greeting(), now, GREETING_TIMEOUT);
        let (_, delay) = l.down(now, 0.99, true);
        assert!(delay > Duration::from_secs(10), "{delay:?}");
        // Not connected at all (connect refused: the neighbour is down): the backoff too.
        l.connecting(FakeSocket(1), now);
        let (_, delay) = l.down(now, 0.99, false);
        assert!(delay > Duration::from_secs(10), "{delay:?}");
    }

    #[test]
    fn a_neighbour_that_connects_to_us_is_retried_at_once() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link_up(&mut table, now);
        for _ in 0..5 {
            l.down(now, 0.9, false);
        }
        let waiting_until = l.deadline().unwrap();
        assert!(waiting_until > now + Duration::from_secs(1));
        assert!(l.neighbour_is_back(now));
        assert_eq!(l.deadline(), Some(now));
        assert_eq!(l.on_timer(now, &ClientTable::new()), TimerAction::Connect);
        // The backoff starts over too.
        l.connecting(FakeSocket(2), now);
        let (_, delay) = l.down(now, 0.9, false);
        assert!(delay <= Duration::from_millis(100), "{delay:?}");
        // Nothing to bring forward while connecting or up.
        let mut up = link_up(&mut table, now);
        assert!(!up.neighbour_is_back(now));
    }

    #[test]
    fn a_quiet_link_pings_and_a_silent_one_gives_up() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link_up(&mut table, now);
        assert_eq!(l.on_timer(now, &ClientTable::new()), TimerAction::Nothing);
        assert_eq!(sent(&mut l), "");
        assert_eq!(
            l.on_timer(now + PING, &ClientTable::new()),
            TimerAction::Nothing
        );
        assert_eq!(sent(&mut l), "HERD-PING\n");
        assert_eq!(l.deadline(), Some(now + 2 * PING));
        let later = now + PING + Duration::from_millis(1);
        assert_eq!(
            l.on_bytes(b"HERD-PONG\n", &mut table, later),
            Heard::Nothing
        );
        assert_eq!(
            l.on_timer(now + SILENCE, &ClientTable::new()),
            TimerAction::Nothing
        );
        assert_eq!(sent(&mut l), "HERD-PING\n");
        assert!(matches!(
            l.on_timer(later + SILENCE, &ClientTable::new()),
            TimerAction::GiveUp(_)
        ));
    }

    #[test]
    fn timers_before_the_link_is_up() {
        let now = Instant::now();
        let mut l = link(now);
        l.connecting(FakeSocket(1), now);
        assert_eq!(l.on_timer(now, &ClientTable::new()), TimerAction::Nothing);
        assert!(matches!(
            l.on_timer(now + CONNECT_TIMEOUT, &ClientTable::new()),
            TimerAction::GiveUp(_)
        ));
        l.connected(plain_greeting(), now, GREETING_TIMEOUT);
        assert_eq!(l.on_timer(now, &ClientTable::new()), TimerAction::Nothing);
        assert!(matches!(
            l.on_timer(now + GREETING_TIMEOUT, &ClientTable::new()),
            TimerAction::GiveUp(_)
        ));
    }

    #[test]
    fn interest_follows_the_state_and_the_buffer() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        let mut l = link(now);
        l.connecting(FakeSocket(1), now);
        assert_eq!(l.wanted_interest(), Interest::WRITABLE);
        let mut l = link_up(&mut table, now);
        assert_eq!(l.wanted_interest(), Interest::READABLE);
        l.on_timer(now + PING, &ClientTable::new());
        assert_eq!(l.wanted_interest(), Interest::READABLE | Interest::WRITABLE);
    }

    #[test]
    fn history_counts_flaps_and_resyncs_and_keeps_the_last_heard_time() {
        let start = Instant::now();
        let later = start + Duration::from_secs(3);
        let mut table = ClientTable::new();
        let mut l = link(start);
        assert_eq!(l.state_name(), "waiting");
        assert_eq!(l.history(), &LinkHistory::default());
        // A connect that fails before the link is up is no flap.
        l.connecting(FakeSocket(1), start);
        assert_eq!(l.state_name(), "connecting");
        l.down(start, 0.5, false);
        assert_eq!(l.history().flaps, 0);
        let mut l = link_up(&mut table, start);
        assert_eq!(l.state_name(), "up");
        assert_eq!(l.history().resyncs, 1);
        assert_eq!(l.history().up_since, Some(start));
        assert_eq!(l.history().lines_received, 1, "the welcome");
        assert_eq!(
            l.on_bytes(b"HERD-PONG\nHERD-PONG\n", &mut table, later),
            Heard::Nothing
        );
        assert_eq!(l.history().last_heard, Some(later));
        assert_eq!(l.history().lines_received, 3);
        l.down(later, 0.5, false);
        assert_eq!((l.history().flaps, l.history().up_since), (1, None));
        assert_eq!(l.history().last_heard, Some(later), "kept while down");
        l.connecting(FakeSocket(2), later);
        l.connected(plain_greeting(), later, GREETING_TIMEOUT);
        assert_eq!(l.state_name(), "greeting");
        l.on_bytes(b"HERD-WELCOME Bona\n", &mut table, later);
        assert_eq!(
            (l.history().resyncs, l.history().up_since),
            (2, Some(later))
        );
    }

    #[test]
    fn records_owed_count_the_resync_and_the_live_updates() {
        let now = Instant::now();
        let mut table = ClientTable::new();
        store(&mut table, "a", 1, Source::Client);
        store(&mut table, "b", 1, Source::Client);
        let mut down = link(now);
        assert_eq!(down.records_owed(&table), 0, "a down link owes nothing yet");
        down.take_lines_sent();
        let mut l = link_up(&mut table, now);
        assert_eq!(l.records_owed(&table), 2, "the resync");
        l.fill(&mut table);
        assert_eq!(l.records_owed(&table), 0);
        assert_eq!(l.take_lines_sent(), 3, "two AT lines and a mark queued");
        store(&mut table, "a", 2, Source::Client);
        store(&mut table, "c", 1, Source::Client);
        assert_eq!(l.records_owed(&table), 2, "one update and one new client");
    }
}
