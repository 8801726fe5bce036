//! A nemesis run in Jepsen's shape: clients send IAMATs to a herd while a seeded nemesis breaks
//! it (servers killed and stopped, links cut, blackholed, slowed, removed by a reload), every
//! acknowledged update and every fault going into one [`History`]; at the end everything is
//! healed and restarted, and a checker waits (bounded) until every server holds, for every
//! client, the winner of all acknowledged updates by the protocol's rule.
//!
//! # The herd
//!
//! The five servers and six links of the shipped config, each server on a site of its own
//! ([`Wan::lay_out`]: 127.0.0.2, 127.0.0.3, ...), so every link runs through two relays the
//! nemesis can cut, blackhole or slow down. Every server keeps a store (`store dir`, compacted
//! often: `store compact-bytes 4096`), pings every 200 ms, retries within 50..400 ms, and its
//! Places URL is a closed port under a rate limit of one call a second, so a WHATSAT answers at
//! once with the stored AT line, an error JSON and a blank line. Logs record every line, and
//! rotate at 16 MiB keeping two old files, so a long run stays within a few hundred MB.
//!
//! # Clients
//!
//! [`Options::workers`] threads, each with a generator seeded from the run's seed, send IAMATs
//! for [`Options::clients`] client ids at random servers, with client times from the wall
//! clock (so a later update is newer). One operation in eight is a pair of equal-time updates
//! of one client sent at once: two locations at two servers, one IAMAT at two servers, or one
//! IAMAT twice at one server (the equal-time rule: the smaller time difference wins, then the
//! server name sorting first, then the smaller AT line; so a repeat changes nothing).
//! Each reply is checked to be the AT line of that server for that IAMAT; each outcome goes into
//! the history:
//!
//! - `ack`: the AT line came back; the update must never be lost;
//! - `unknown`: the request may have reached the server but no reply came (the server was
//!   killed, the connection was reset, or the read timed out): the update may or may not be
//!   there, and either is correct;
//! - a connection refused (the server is down) is only counted: nothing was sent.
//!
//! # The nemesis
//!
//! One thread (the caller's), a generator seeded from the seed, a pause of 0.2..0.9 s between
//! events. Each step either starts a fault (at most [`MAX_FAULTS`] at once) or ends one that is
//! active, picked at random:
//!
//! - `kill -9` of a server, then a restart from its store; `SIGTERM` (it must exit with status
//!   0), then a restart; at most [`MAX_DOWN`] servers down at once; and, one pick in 25 while
//!   all run, `kill -9` of every server at once, then a restart of each in turn. After each
//!   restart the server must hold, for every client, at least what it acknowledged before it
//!   went down (read at once, before the herd has caught it up);
//! - a link cut (both relays close every connection) or blackholed (they forward nothing),
//!   then healed; a delay of 20..250 ms with jitter added to a link, then removed (one of
//!   these at a time on a link);
//! - a SIGHUP to every running server with a link removed from the config, then a SIGHUP with
//!   it restored; each server must say on stderr that it reloaded (`reload PATH: SUMMARY`): the
//!   link's ends `links removed: OTHER` (then `links added: OTHER`), the rest `nothing changed`.
//!   A link may be cut, blackholed or slowed while it is out of the config.
//!
//! The nemesis's choices depend on the seed alone, so a seed replays the same faults in the same
//! order; the clients' timing, and so their interleaving with the faults, differs run to run.
//! Every step also checks that every server that should run still runs: a server that exits
//! by itself is a failure (its exit status and stderr are in the history).
//!
//! # The check
//!
//! Clients stop, every fault is ended, every server down is restarted. Then, until
//! [`Options::converge_timeout`], every server is read for every client (`WHATSAT id 1 1`, the
//! first line of the reply) until the verdict is clean ([`check`]):
//!
//! - **lost**: a server holds nothing, or a record the newest acknowledged update beats;
//! - **disagreeing**: servers hold different records for one client;
//! - **unexplained**: a server holds a record that no IAMAT sent in the run made.
//!
//! A record newer than every acknowledged update is right only if it is an `unknown` update.
//! Then every server is stopped with SIGTERM and must exit with status 0, and its stderr may
//! hold only where it listens (a line at each start) and its reload results.
//!
//! A failure says the seed, the env var to run it again ([`SEED_ENV`]), the faults, what
//! diverged with the whole story of each client concerned, and keeps the full history and the
//! servers' logs in a directory it names.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::{now, parse_nanos};
use crate::harness::{
    self, herd_bin, link_indices, poll, poll_every, read_lossy, refused_places_url, HerdConfig,
    SPEC_LINKS, SPEC_SERVERS,
};
use crate::wan::{LinkShape, Wan};

/// The env var that sets the seed of a run (a decimal u64); without it the seed comes from
/// the clock, and is printed.
pub const SEED_ENV: &str = "NEMESIS_SEED";
/// The env var that sets how long the nemesis runs, in seconds.
pub const SECONDS_ENV: &str = "NEMESIS_SECONDS";

/// Most faults active at once.
pub const MAX_FAULTS: usize = 3;
/// Most servers down at once.
pub const MAX_DOWN: usize = 2;

/// Pause between two nemesis events.
const EVENT_PAUSE_MS: (u64, u64) = (200, 900);
/// Pause between two operations of one client worker.
const OP_PAUSE_MS: (u64, u64) = (5, 30);
/// The most operations one worker makes (it stops long before, when told).
const MAX_OPS: usize = 10_000_000;
/// How long a client waits for a connection, and for a reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the checker waits for a WHATSAT reply (a server read is never retried mid-check).
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server gets to exit after SIGTERM, and to say it reloaded after SIGHUP.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the links of the herd get to come up at the start.
const LINKS_TIMEOUT: Duration = Duration::from_secs(30);
/// WHATSATs written at once before their replies are read.
const READ_BATCH: usize = 64;
/// Each server's log rotates at 16 MiB and keeps two old files: a long run stays within
/// 250 MB of logs.
const LOG_MAX_BYTES: u64 = 16 << 20;
const LOG_KEEP: usize = 2;
/// The ping interval of the herd: a blackholed link goes down after a second of silence.
const PING_MS: u64 = 200;

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// How long the nemesis runs (it goes on past it until `min_events` events happened).
    pub duration: Duration,
    /// The fewest nemesis events of a run.
    pub min_events: usize,
    /// Client ids the workers update.
    pub clients: usize,
    /// Client threads.
    pub workers: usize,
    /// How long the herd gets to agree once everything is healed.
    pub converge_timeout: Duration,
}

impl Options {
    /// The options of a run of `default_seconds` (or [`SECONDS_ENV`]'s) with the seed of
    /// [`SEED_ENV`] (or one from the clock). Err names a variable that is not a number.
    pub fn from_env(default_seconds: u64, min_events: usize) -> Result<Options, String> {
        let number = |var: &str| -> Result<Option<u64>, String> {
            match std::env::var(var) {
                Ok(text) => text
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{var}={text:?} is not a whole number")),
                Err(_) => Ok(None),
            }
        };
        let seed = match number(SEED_ENV)? {
            Some(seed) => seed,
            None => {
                let since = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                since.as_nanos() as u64 % 1_000_000_000
            }
        };
        let seconds = number(SECONDS_ENV)?.unwrap_or(default_seconds);
        Ok(Options {
            seed,
            duration: Duration::from_secs(seconds),
            min_events,
            clients: 300,
            workers: 3,
            converge_timeout: Duration::from_secs(60),
        })
    }
}

/// A splitmix64 generator: a seed always draws the same numbers.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True `num` times in `den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den.max(1) < num
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi.saturating_sub(lo) + 1)
    }

    /// A pause of `lo..=hi` milliseconds.
    fn pause(&mut self, (lo, hi): (u64, u64)) -> Duration {
        Duration::from_millis(self.between(lo, hi))
    }
}

/// An AT line taken apart (`AT SERVER DIFF CLIENT LOCATION TIME`), with its time difference
/// and client time in nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At {
    pub line: String,
    pub server: String,
    pub diff: i128,
    pub client: String,
    pub location: String,
    pub time: i128,
}

impl At {
    /// None if `line` is not an AT line.
    pub fn parse(line: &str) -> Option<At> {
        let fields: Vec<&str> = line.split(' ').collect();
        let [keyword, server, diff, client, location, time] = fields[..] else {
            return None;
        };
        if keyword != "AT" {
            return None;
        }
        Some(At {
            line: line.to_string(),
            server: server.to_string(),
            diff: parse_nanos(diff)?,
            client: client.to_string(),
            location: location.to_string(),
            time: parse_nanos(time)?,
        })
    }

    /// The protocol's rule: `Greater` when `self` supersedes `other`. The newer client time
    /// wins; of equal times the smaller time difference, then the server name that sorts
    /// first, then the smaller AT line (bytes).
    pub fn precedence(&self, other: &At) -> Ordering {
        self.time
            .cmp(&other.time)
            .then_with(|| other.diff.cmp(&self.diff))
            .then_with(|| other.server.as_bytes().cmp(self.server.as_bytes()))
            .then_with(|| other.line.as_bytes().cmp(self.line.as_bytes()))
    }

    /// True if this record is the one `update` (sent to `server`) made.
    fn made_by(&self, server: &str, update: &Update) -> bool {
        self.server == server
            && self.client == update.client
            && self.location == update.location
            && self.time == update.time_nanos()
    }
}

/// One IAMAT as a worker sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub client: String,
    pub location: String,
    pub time: String,
}

impl Update {
    pub fn command(&self) -> String {
        format!("IAMAT {} {} {}", self.client, self.location, self.time)
    }

    fn time_nanos(&self) -> i128 {
        parse_nanos(&self.time).unwrap_or(-1)
    }
}

/// What happened, as the history records it.
#[derive(Clone, Debug)]
pub enum Event {
    /// A worker's IAMAT at `server` was answered with this AT line.
    Ack {
        worker: usize,
        server: String,
        at: At,
    },
    /// A worker's IAMAT at `server` got no reply (`why`): it may or may not have been taken.
    Unknown {
        worker: usize,
        server: String,
        update: Update,
        why: String,
    },
    /// What the nemesis did (or saw: a restarted server's durability check).
    Nemesis(String),
    /// Something the checker fails the run for: a server that died by itself, a reply that is
    /// not the AT line of the IAMAT sent, an update lost across a restart, a reload not applied.
    Problem(String),
}

/// One history entry: when (since the run began) and what.
#[derive(Clone, Debug)]
pub struct Entry {
    pub at: Duration,
    pub event: Event,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.at.as_secs_f64();
        match &self.event {
            Event::Ack { worker, server, at } => {
                write!(f, "{secs:9.3}  w{worker} ack      {server:<8} {}", at.line)
            }
            Event::Unknown {
                worker,
                server,
                update,
                why,
            } => write!(
                f,
                "{secs:9.3}  w{worker} unknown  {server:<8} {} ({why})",
                update.command()
            ),
            Event::Nemesis(what) => write!(f, "{secs:9.3}  nemesis     {what}"),
            Event::Problem(what) => write!(f, "{secs:9.3}  PROBLEM     {what}"),
        }
    }
}

/// The history of a run, shared by the workers and the nemesis.
#[derive(Clone)]
pub struct History {
    start: Instant,
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            entries: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn push(&self, event: Event) {
        let at = self.start.elapsed();
        self.lock().push(Entry { at, event });
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    /// `look` at the entries so far, without copying them (a long run holds many).
    pub fn read<T>(&self, look: impl FnOnce(&[Entry]) -> T) -> T {
        look(&self.lock())
    }

    fn problems(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter_map(|entry| match &entry.event {
                Event::Problem(what) => Some(format!("{:.3}s {what}", entry.at.as_secs_f64())),
                _ => None,
            })
            .collect()
    }
}

impl Default for History {
    fn default() -> History {
        History::new()
    }
}

/// What [`check`] found wrong, one line per client concerned (empty: all is well).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub lost: Vec<String>,
    pub disagreeing: Vec<String>,
    pub unexplained: Vec<String>,
    /// The clients concerned, for the story of each.
    pub clients: Vec<String>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.disagreeing.is_empty() && self.unexplained.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (what, lines) in [
            ("lost", &self.lost),
            ("disagreeing", &self.disagreeing),
            ("unexplained", &self.unexplained),
        ] {
            writeln!(f, "{what}: {} client(s)", lines.len())?;
            for line in lines.iter().take(20) {
                writeln!(f, "  {line}")?;
            }
            if lines.len() > 20 {
                writeln!(f, "  ... and {} more", lines.len() - 20)?;
            }
        }
        Ok(())
    }
}

/// What every client's updates were: the acknowledged ones and the unknown ones, by client.
#[derive(Default)]
struct Updates<'a> {
    acked: HashMap<&'a str, Vec<&'a At>>,
    unknown: HashMap<&'a str, Vec<(&'a str, &'a Update)>>,
}

impl<'a> Updates<'a> {
    fn of(history: &'a [Entry]) -> Updates<'a> {
        let mut updates = Updates::default();
        for entry in history {
            match &entry.event {
                Event::Ack { at, .. } => updates.acked.entry(&at.client).or_default().push(at),
                Event::Unknown { server, update, .. } => updates
                    .unknown
                    .entry(&update.client)
                    .or_default()
                    .push((server, update)),
                _ => {}
            }
        }
        updates
    }

    /// The winner of `client`'s acknowledged updates by the protocol's rule.
    fn winner(&self, client: &str) -> Option<&'a At> {
        let acked = self.acked.get(client)?;
        acked.iter().copied().max_by(|a, b| a.precedence(b))
    }

    /// True if `held` is a record some IAMAT of the run made: acknowledged, or sent with no
    /// reply.
    fn explains(&self, held: &At) -> bool {
        let acked = self.acked.get(held.client.as_str());
        let unknown = self.unknown.get(held.client.as_str());
        acked.is_some_and(|acked| acked.iter().any(|at| at.line == held.line))
            || unknown.is_some_and(|unknown| {
                unknown
                    .iter()
                    .any(|(server, update)| held.made_by(server, update))
            })
    }
}

/// The checker: `held[s][c]` is what server `names[s]` holds for client `clients[c]` (its AT
/// line, or None). Every server must hold the same record, one that some IAMAT of the history
/// made, and not one beaten by the newest acknowledged update (by the protocol's rule).
pub fn check(
    history: &[Entry],
    names: &[String],
    clients: &[String],
    held: &[Vec<Option<String>>],
) -> Verdict {
    let updates = Updates::of(history);
    let mut verdict = Verdict::default();
    for (c, client) in clients.iter().enumerate() {
        let winner = updates.winner(client);
        let records: Vec<Option<&String>> = held.iter().map(|row| row[c].as_ref()).collect();
        let shown = || {
            names
                .iter()
                .zip(&records)
                .map(|(name, record)| format!("{name}: {record:?}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut wrong = false;
        if records.windows(2).any(|pair| pair[0] != pair[1]) {
            verdict.disagreeing.push(format!("{client}: {}", shown()));
            wrong = true;
        }
        let mut lost = Vec::new();
        let mut unexplained = Vec::new();
        for (name, record) in names.iter().zip(&records) {
            let parsed = record.map(|line| At::parse(line));
            match (winner, parsed) {
                (Some(_), None) => lost.push(format!("{name} holds nothing")),
                (_, Some(None)) => unexplained.push(format!("{name} holds {record:?}")),
                (_, Some(Some(at))) if at.client != *client || !updates.explains(&at) => {
                    unexplained.push(format!("{name} holds {:?}", at.line))
                }
                (Some(winner), Some(Some(at))) if at.precedence(winner) == Ordering::Less => {
                    lost.push(format!("{name} holds {:?}", at.line))
                }
                _ => {}
            }
        }
        if !lost.is_empty() {
            let winner = winner.map_or("", |at| at.line.as_str());
            verdict.lost.push(format!(
                "{client}: acknowledged {winner:?}, but {}",
                lost.join(", ")
            ));
            wrong = true;
        }
        if !unexplained.is_empty() {
            verdict.unexplained.push(format!(
                "{client}: no IAMAT made it: {}",
                unexplained.join(", ")
            ));
            wrong = true;
        }
        if wrong {
            verdict.clients.push(client.clone());
        }
    }
    verdict
}

/// A line connection to one server, every error returned (a server may vanish at any time).
struct LineConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineConn {
    fn connect(addr: SocketAddr, reply_timeout: Duration) -> io::Result<LineConn> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(reply_timeout))?;
        stream.set_write_timeout(Some(reply_timeout))?;
        let _ = stream.set_nodelay(true);
        Ok(LineConn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn send(&mut self, text: &str) -> io::Result<()> {
        self.writer.write_all(text.as_bytes())
    }

    /// One line without its `\n`; an end of stream is an error.
    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.pop() != Some(b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// What `addr` holds for each of `clients` (the AT line that starts its WHATSAT reply, or None
/// when it does not know the client), read over one connection, a batch at a time.
pub fn read_records(addr: SocketAddr, clients: &[String]) -> Result<Vec<Option<String>>, String> {
    let mut conn = LineConn::connect(addr, READ_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let mut records = Vec::with_capacity(clients.len());
    for batch in clients.chunks(READ_BATCH) {
        let commands: String = batch
            .iter()
            .map(|client| format!("WHATSAT {client} 1 1\n"))
            .collect();
        conn.send(&commands).map_err(|e| format!("write: {e}"))?;
        for client in batch {
            let read = |conn: &mut LineConn| conn.read_line().map_err(|e| format!("read: {e}"));
            let first = read(&mut conn)?;
            if first.starts_with("? ") {
                if first != format!("? WHATSAT {client} 1 1") {
                    return Err(format!("WHATSAT {client} 1 1 answered {first:?}"));
                }
                records.push(None);
                continue;
            }
            // The error JSON, then a blank line.
            let mut rest = 0;
            while !read(&mut conn)?.is_empty() {
                rest += 1;
                if rest > 1000 {
                    return Err(format!("WHATSAT {client}: no blank line after {first:?}"));
                }
            }
            match At::parse(&first) {
                Some(at) if at.client == *client => records.push(Some(first)),
                _ => return Err(format!("WHATSAT {client} 1 1 began with {first:?}")),
            }
        }
    }
    Ok(records)
}

/// A server as the workers reach it.
#[derive(Clone, Debug)]
struct Target {
    name: String,
    addr: SocketAddr,
}

/// What the workers did, counted.
#[derive(Default)]
struct Counts {
    acked: AtomicUsize,
    unknown: AtomicUsize,
    refused: AtomicUsize,
    pairs: AtomicUsize,
}

/// The client threads; dropping this stops and joins them.
struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    counts: Arc<Counts>,
}

impl Workers {
    fn start(options: &Options, targets: &[Target], history: &History) -> Workers {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let threads = (0..options.workers)
            .map(|k| {
                let mut worker = Worker {
                    number: k,
                    rng: Rng::new(
                        options.seed ^ (k as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
                    ),
                    targets: targets.to_vec(),
                    conns: targets.iter().map(|_| None).collect(),
                    clients: options.clients,
                    history: history.clone(),
                    counts: Arc::clone(&counts),
                };
                let stop = Arc::clone(&stop);
                thread::Builder::new()
                    .name(format!("nemesis client {k}"))
                    .spawn(move || {
                        for _ in 0..MAX_OPS {
                            if stop.load(AtomicOrdering::SeqCst) {
                                break;
                            }
                            worker.operate();
                            let pause = worker.rng.pause(OP_PAUSE_MS);
                            thread::sleep(pause); // pacing, not a wait for anything
                        }
                    })
                    .expect("a client thread")
            })
            .collect();
        Workers {
            stop,
            threads,
            counts,
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, AtomicOrdering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One client thread.
struct Worker {
    number: usize,
    rng: Rng,
    targets: Vec<Target>,
    conns: Vec<Option<LineConn>>,
    clients: usize,
    history: History,
    counts: Arc<Counts>,
}

impl Worker {
    /// One operation: an IAMAT at one server, or (one time in eight) an equal-time pair: at
    /// two servers with two locations (half the pairs), the same IAMAT at two servers (a
    /// quarter), or the same IAMAT twice at one server (a quarter: the repeat changes nothing).
    fn operate(&mut self) {
        let client = client_id(self.rng.below(self.clients));
        let (secs, nanos) = now();
        let time = format!("{secs}.{nanos:09}");
        let n = self.targets.len();
        let first = self.rng.below(n);
        let update = self.update(&client, &time);
        let mut sends = vec![(first, update.clone())];
        if self.rng.chance(1, 8) {
            let other = (first + 1 + self.rng.below(n - 1)) % n;
            sends.push(match self.rng.below(4) {
                0 | 1 => (other, self.update(&client, &time)),
                2 => (other, update),
                _ => (first, update),
            });
            self.counts.pairs.fetch_add(1, AtomicOrdering::Relaxed);
        }
        self.exchange(&sends);
    }

    fn update(&mut self, client: &str, time: &str) -> Update {
        Update {
            client: client.to_string(),
            location: location(&mut self.rng),
            time: time.to_string(),
        }
    }

    /// Sends every update to its server, then reads every reply, and records each outcome.
    fn exchange(&mut self, sends: &[(usize, Update)]) {
        let mut sent = Vec::new();
        for (s, update) in sends {
            if self.conns[*s].is_none() {
                match LineConn::connect(self.targets[*s].addr, REPLY_TIMEOUT) {
                    Ok(conn) => self.conns[*s] = Some(conn),
                    Err(_) => {
                        self.counts.refused.fetch_add(1, AtomicOrdering::Relaxed);
                        continue;
                    }
                }
            }
            let conn = self.conns[*s].as_mut().expect("connected above");
            match conn.send(&format!("{}\n", update.command())) {
                Ok(()) => sent.push((*s, update)),
                Err(e) => self.unknown(*s, update, format!("write: {e}")),
            }
        }
        for (s, update) in sent {
            let Some(conn) = self.conns[s].as_mut() else {
                // An earlier reply on this connection failed: this one is lost with it.
                self.unknown(
                    s,
                    update,
                    "the connection failed before its reply".to_string(),
                );
                continue;
            };
            match conn.read_line() {
                Ok(reply) => self.answered(s, update, reply),
                Err(e) => self.unknown(s, update, format!("read: {e}")),
            }
        }
    }

    fn answered(&mut self, s: usize, update: &Update, reply: String) {
        let server = &self.targets[s].name;
        match At::parse(&reply) {
            Some(at) if at.made_by(server, update) && at.line.ends_with(&update.time) => {
                self.counts.acked.fetch_add(1, AtomicOrdering::Relaxed);
                self.history.push(Event::Ack {
                    worker: self.number,
                    server: server.clone(),
                    at,
                });
            }
            _ => {
                self.history.push(Event::Problem(format!(
                    "{} at {server} was answered {reply:?}",
                    update.command()
                )));
                self.conns[s] = None;
            }
        }
    }

    fn unknown(&mut self, s: usize, update: &Update, why: String) {
        self.conns[s] = None;
        self.counts.unknown.fetch_add(1, AtomicOrdering::Relaxed);
        self.history.push(Event::Unknown {
            worker: self.number,
            server: self.targets[s].name.clone(),
            update: update.clone(),
            why,
        });
    }
}

/// The id of client `k`.
pub fn client_id(k: usize) -> String {
    format!("nemesis-{k:04}")
}

/// A random valid location, to the microdegree.
fn location(rng: &mut Rng) -> String {
    let degrees = |micro: i64| {
        let sign = if micro < 0 { '-' } else { '+' };
        let micro = micro.unsigned_abs();
        format!("{sign}{}.{:06}", micro / 1_000_000, micro % 1_000_000)
    };
    let lat = rng.between(0, 180_000_000) as i64 - 90_000_000;
    let lon = rng.between(0, 360_000_000) as i64 - 180_000_000;
    format!("{}{}", degrees(lat), degrees(lon))
}

/// A fault the nemesis starts and later ends. Servers and links are indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill(usize),
    /// `kill -9` of every server at once.
    KillAll,
    Term(usize),
    Cut(usize),
    Blackhole(usize),
    Delay(usize),
    Unlink(usize),
}

impl Fault {
    /// The servers it takes down, of `n`.
    fn servers(self, n: usize) -> Vec<usize> {
        match self {
            Fault::Kill(s) | Fault::Term(s) => vec![s],
            Fault::KillAll => (0..n).collect(),
            _ => Vec::new(),
        }
    }

    /// The link whose relays it changes (a cut, a blackhole, a delay).
    fn relays(self) -> Option<usize> {
        match self {
            Fault::Cut(l) | Fault::Blackhole(l) | Fault::Delay(l) => Some(l),
            _ => None,
        }
    }
}

/// How many events of each kind the nemesis made.
#[derive(Clone, Debug, Default)]
pub struct EventCounts {
    pub kills: usize,
    pub kill_alls: usize,
    pub terms: usize,
    pub restarts: usize,
    pub cuts: usize,
    pub blackholes: usize,
    pub heals: usize,
    pub delays: usize,
    pub undelays: usize,
    pub unlinks: usize,
    pub relinks: usize,
}

impl EventCounts {
    pub fn total(&self) -> usize {
        self.kills
            + self.kill_alls
            + self.terms
            + self.restarts
            + self.cuts
            + self.blackholes
            + self.heals
            + self.delays
            + self.undelays
            + self.unlinks
            + self.relinks
    }
}

impl fmt::Display for EventCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events: {} kill -9, {} kill -9 of every server, {} SIGTERM, {} restarts, {} cuts, {} blackholes, {} heals, \
             {} delays (+{} removed), {} links removed by SIGHUP (+{} restored)",
            self.total(),
            self.kills,
            self.kill_alls,
            self.terms,
            self.restarts,
            self.cuts,
            self.blackholes,
            self.heals,
            self.delays,
            self.undelays,
            self.unlinks,
            self.relinks
        )
    }
}

/// What a clean run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub events: EventCounts,
    pub acked: usize,
    pub unknown: usize,
    pub refused: usize,
    pub pairs: usize,
    pub clients_updated: usize,
    pub nemesis_time: Duration,
    pub converge_time: Duration,
    pub total_time: Duration,
    /// What the servers' logs say they went through.
    pub logged: Logged,
}

/// What the servers' logs say of a run, added over the servers.
#[derive(Clone, Debug, Default)]
pub struct Logged {
    /// `link up NAME`.
    pub links_up: usize,
    /// `store ...: compacted to ...`.
    pub compactions: usize,
    /// `store ...: removed an unfinished compaction` (a kill -9 during one).
    pub unfinished_compactions: usize,
    /// `store ...:LINE: skipped, ...` (a torn tail after a kill -9).
    pub store_lines_skipped: usize,
}

impl Logged {
    fn of(logs: &[String]) -> Logged {
        let count = |needle: &str| -> usize {
            logs.iter()
                .map(|log| log.lines().filter(|line| line.contains(needle)).count())
                .sum()
        };
        Logged {
            links_up: count("] link up "),
            compactions: count(": compacted to "),
            unfinished_compactions: count(": removed an unfinished compaction"),
            store_lines_skipped: count(": skipped, "),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nemesis seed {} ({SEED_ENV}={}): {} in {:.1?}; {} updates acknowledged ({} \
             equal-time pairs sent), {} unknown, {} refused, {} clients updated; 0 lost, 0 \
             disagreeing; converged {:.1?} after the heal; {:.1?} in all; the logs: {} links \
             up, {} compactions, {} unfinished compactions removed, {} store lines skipped",
            self.seed,
            self.seed,
            self.events,
            self.nemesis_time,
            self.acked,
            self.pairs,
            self.unknown,
            self.refused,
            self.clients_updated,
            self.converge_time,
            self.total_time,
            self.logged.links_up,
            self.logged.compactions,
            self.logged.unfinished_compactions,
            self.logged.store_lines_skipped,
        )
    }
}

/// The herd under test, its WAN, and the faults active now.
struct Cluster {
    herd: harness::Herd,
    wan: Wan,
    names: Vec<String>,
    /// Every link of the herd (indices into `names`); the config holds those not removed.
    links: Vec<(usize, usize)>,
    active: Vec<Fault>,
    /// Servers down because they died by themselves (restarted by the final heal).
    crashed: Vec<usize>,
    history: History,
    counts: EventCounts,
    clients: Vec<String>,
}

impl Cluster {
    fn start(history: &History, clients: Vec<String>) -> Result<Cluster, String> {
        let names: Vec<String> = SPEC_SERVERS.iter().map(|n| n.to_string()).collect();
        let links = link_indices(&names, &SPEC_LINKS)?;
        let mut config = HerdConfig::new(&names, &links)?
            .with("peer backoff-min-ms 50")
            .with("peer backoff-max-ms 400")
            .with(&format!("peer ping-ms {PING_MS}"))
            .with(&refused_places_url()?)
            .with("places max-per-second 1")
            .with("store compact-bytes 4096")
            .with("log lines on")
            .with(&format!("log max-bytes {LOG_MAX_BYTES}"))
            .with(&format!("log keep {LOG_KEEP}"));
        let sites: Vec<[&str; 1]> = SPEC_SERVERS.iter().map(|name| [*name]).collect();
        let sites: Vec<&[&str]> = sites.iter().map(|site| &site[..]).collect();
        let wan = Wan::lay_out(&mut config, &sites, LinkShape::default())?;
        let mut herd = harness::Herd::new(&herd_bin(), config, "nemesis")?;
        let store = herd.dir.path().join("data");
        herd.config
            .directives
            .push(format!("store dir {}", store.display()));
        herd.start_all()?;
        let cluster = Cluster {
            herd,
            wan,
            names,
            links,
            active: Vec::new(),
            crashed: Vec::new(),
            history: history.clone(),
            counts: EventCounts::default(),
            clients,
        };
        for &(a, b) in &cluster.links {
            for (from, to) in [(a, b), (b, a)] {
                let needle = format!("link sync {}: sent ", cluster.names[to]);
                let log = cluster.herd.log_path(from);
                poll(LINKS_TIMEOUT, || read_lossy(&log).contains(&needle)).map_err(|e| {
                    format!(
                        "{}'s link to {}: {e}",
                        cluster.names[from], cluster.names[to]
                    )
                })?;
            }
        }
        Ok(cluster)
    }

    fn link_name(&self, l: usize) -> String {
        let (a, b) = self.links[l];
        format!("{}-{}", self.names[a], self.names[b])
    }

    fn event(&self, what: String) {
        self.history.push(Event::Nemesis(what));
    }

    fn problem(&self, what: String) {
        self.history.push(Event::Problem(what));
    }

    fn down(&self) -> Vec<usize> {
        let n = self.names.len();
        let mut down: Vec<usize> = self.active.iter().flat_map(|f| f.servers(n)).collect();
        down.extend(&self.crashed);
        down
    }

    /// A fault to start now, drawn from those the state allows; None if none is.
    fn pick(&self, rng: &mut Rng) -> Option<Fault> {
        let down = self.down();
        let up: Vec<usize> = (0..self.names.len())
            .filter(|s| !down.contains(s))
            .collect();
        // A link's relays take one fault at a time, and its removal from the config is
        // another, which may overlap it.
        let shaped: Vec<usize> = self.active.iter().filter_map(|f| f.relays()).collect();
        let free: Vec<usize> = (0..self.links.len())
            .filter(|l| !shaped.contains(l))
            .collect();
        let linked: Vec<usize> = (0..self.links.len())
            .filter(|&l| !self.active.contains(&Fault::Unlink(l)))
            .collect();
        // Kinds 0..=5 alike; a crash of the whole herd one pick in 25.
        let first = if rng.chance(1, 25) { 6 } else { rng.below(6) };
        for k in 0..7 {
            let kind = (first + k) % 7;
            let servers_ok = !up.is_empty() && down.len() < MAX_DOWN;
            let fault = match kind {
                0 if servers_ok => Fault::Kill(up[rng.below(up.len())]),
                1 if servers_ok => Fault::Term(up[rng.below(up.len())]),
                2 if !free.is_empty() => Fault::Cut(free[rng.below(free.len())]),
                3 if !free.is_empty() => Fault::Blackhole(free[rng.below(free.len())]),
                4 if !free.is_empty() => Fault::Delay(free[rng.below(free.len())]),
                5 if !linked.is_empty() => Fault::Unlink(linked[rng.below(linked.len())]),
                6 if down.is_empty() && k == 0 => Fault::KillAll,
                _ => continue,
            };
            return Some(fault);
        }
        None
    }

    /// One step: starts a fault or ends an active one.
    fn step(&mut self, rng: &mut Rng) {
        let start = self.active.is_empty() || (self.active.len() < MAX_FAULTS && rng.chance(1, 2));
        if start {
            if let Some(fault) = self.pick(rng) {
                self.begin(fault, rng);
                self.active.push(fault);
                return;
            }
        }
        if !self.active.is_empty() {
            let fault = self.active.remove(rng.below(self.active.len()));
            self.end(fault);
        }
    }

    fn begin(&mut self, fault: Fault, rng: &mut Rng) {
        match fault {
            Fault::Kill(s) => {
                self.herd.stop(s, None);
                self.counts.kills += 1;
                self.event(format!("kill -9 {}", self.names[s]));
            }
            Fault::KillAll => {
                for s in 0..self.names.len() {
                    self.herd.stop(s, None);
                }
                self.counts.kill_alls += 1;
                self.event("kill -9 of every server".to_string());
            }
            Fault::Term(s) => {
                self.terminate(s);
                self.counts.terms += 1;
            }
            Fault::Cut(l) => {
                let (a, b) = self.links[l];
                for relay in self.wan.between(&self.names[a], &self.names[b]) {
                    relay.cut();
                }
                self.counts.cuts += 1;
                self.event(format!("cut {}", self.link_name(l)));
            }
            Fault::Blackhole(l) => {
                let (a, b) = self.links[l];
                for relay in self.wan.between(&self.names[a], &self.names[b]) {
                    relay.blackhole();
                }
                self.counts.blackholes += 1;
                self.event(format!("blackhole {}", self.link_name(l)));
            }
            Fault::Delay(l) => {
                let delay = rng.between(20, 250);
                let jitter = rng.between(0, delay / 4);
                let (a, b) = self.links[l];
                for relay in self.wan.between(&self.names[a], &self.names[b]) {
                    relay.set_delay(Duration::from_millis(delay));
                    relay.set_jitter(Duration::from_millis(jitter));
                }
                self.counts.delays += 1;
                self.event(format!(
                    "delay {} {delay} ms ± {jitter} ms each way",
                    self.link_name(l)
                ));
            }
            Fault::Unlink(l) => {
                let pair = self.links[l];
                self.herd.config.links.retain(|&link| link != pair);
                self.counts.unlinks += 1;
                self.event(format!(
                    "link {} removed from the config",
                    self.link_name(l)
                ));
                self.reload(l, "links removed");
            }
        }
    }

    fn end(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(s) | Fault::Term(s) => self.restart(s),
            Fault::KillAll => {
                for s in 0..self.names.len() {
                    self.restart(s);
                }
            }
            Fault::Cut(l) | Fault::Blackhole(l) => {
                let (a, b) = self.links[l];
                for relay in self.wan.between(&self.names[a], &self.names[b]) {
                    relay.heal();
                }
                self.counts.heals += 1;
                self.event(format!("heal {}", self.link_name(l)));
            }
            Fault::Delay(l) => {
                let (a, b) = self.links[l];
                for relay in self.wan.between(&self.names[a], &self.names[b]) {
                    relay.set_delay(Duration::ZERO);
                    relay.set_jitter(Duration::ZERO);
                }
                self.counts.undelays += 1;
                self.event(format!("delay of {} removed", self.link_name(l)));
            }
            Fault::Unlink(l) => {
                self.herd.config.links.push(self.links[l]);
                self.counts.relinks += 1;
                self.event(format!("link {} restored in the config", self.link_name(l)));
                self.reload(l, "links added");
            }
        }
    }

    /// SIGTERM to server `s`: it must exit with status 0 within [`EXIT_TIMEOUT`].
    fn terminate(&mut self, s: usize) {
        let name = self.names[s].clone();
        let outcome = match self.herd.process_mut(s) {
            None => Err("no process".to_string()),
            Some(process) => process
                .signal("TERM")
                .and_then(|()| {
                    process
                        .wait_exit(EXIT_TIMEOUT)
                        .ok_or(format!("still running {EXIT_TIMEOUT:?} after SIGTERM"))
                })
                .and_then(|status| {
                    if status.success() {
                        Ok(())
                    } else {
                        Err(format!("exited with {status} after SIGTERM"))
                    }
                }),
        };
        self.herd.stop(s, None);
        match outcome {
            Ok(()) => self.event(format!("SIGTERM {name} (exited with status 0)")),
            Err(why) => {
                let stderr = read_lossy(&self.herd.stderr_path(s));
                self.problem(format!("{name}: {why}; stderr:\n{stderr}"));
            }
        }
    }

    /// Starts server `s` again, from its store, and checks it holds at least what it
    /// acknowledged before it went down.
    fn restart(&mut self, s: usize) {
        let name = self.names[s].clone();
        if let Err(why) = self.herd.start_server(s) {
            self.problem(format!("{name} did not start again: {why}"));
            self.crashed.push(s);
            return;
        }
        self.counts.restarts += 1;
        // What it acknowledged, newest first by the rule (copied out: the workers go on).
        let acked: HashMap<String, At> = self.history.read(|entries| {
            let mut acked: HashMap<&str, &At> = HashMap::new();
            for entry in entries {
                if let Event::Ack { server, at, .. } = &entry.event {
                    if *server == name {
                        let best = acked.entry(&at.client).or_insert(at);
                        if at.precedence(best) == Ordering::Greater {
                            *best = at;
                        }
                    }
                }
            }
            acked
                .into_iter()
                .map(|(client, at)| (client.to_string(), at.clone()))
                .collect()
        });
        let clients: Vec<String> = self
            .clients
            .iter()
            .filter(|c| acked.contains_key(c.as_str()))
            .cloned()
            .collect();
        match read_records(self.herd.config.addrs[s], &clients) {
            Err(why) => self.problem(format!("{name} restarted, but reading it failed: {why}")),
            Ok(records) => {
                let mut lost = Vec::new();
                for (client, record) in clients.iter().zip(&records) {
                    let want = &acked[client.as_str()];
                    let kept = record
                        .as_deref()
                        .and_then(At::parse)
                        .is_some_and(|at| at.precedence(want) != Ordering::Less);
                    if !kept {
                        lost.push(format!(
                            "{client}: holds {record:?}, acknowledged {:?}",
                            want.line
                        ));
                    }
                }
                let held = clients.len() - lost.len();
                self.event(format!(
                    "restart {name}: read at once, it holds what it acknowledged for {held} of \
                     {} clients",
                    clients.len()
                ));
                if !lost.is_empty() {
                    self.problem(format!(
                        "{name} restarted from its store lost what it acknowledged before it \
                         went down, for {} clients:\n    {}",
                        lost.len(),
                        lost.join("\n    ")
                    ));
                }
            }
        }
    }

    /// Writes every server's config (links as they are now, link `l` just `change`d: `links
    /// removed` or `links added`) and sends SIGHUP to every server running; each must say on
    /// stderr that it reloaded: the ends of `l` with that change and the other end's name, the
    /// others that nothing changed.
    fn reload(&mut self, l: usize, change: &str) {
        let dir = self.herd.dir.path().to_path_buf();
        for s in 0..self.names.len() {
            let text = self.herd.config.text(s, &dir);
            if let Err(why) = self
                .herd
                .dir
                .write(&format!("{}.conf", self.names[s]), &text)
            {
                self.problem(format!("cannot write a config: {why}"));
            }
        }
        let mut signalled = Vec::new();
        for s in 0..self.names.len() {
            if let Some(process) = self.herd.process(s) {
                let before = reloads(&process.stderr_text());
                match process.signal("HUP") {
                    Ok(()) => signalled.push((s, before)),
                    Err(why) => self.problem(format!("SIGHUP {}: {why}", self.names[s])),
                }
            }
        }
        let (a, b) = self.links[l];
        let mut said = Vec::new();
        for (s, before) in signalled {
            let path = self.herd.stderr_path(s);
            let expected = match s {
                _ if s == a => format!("{change}: {}", self.names[b]),
                _ if s == b => format!("{change}: {}", self.names[a]),
                _ => "nothing changed".to_string(),
            };
            match poll(RELOAD_TIMEOUT, || {
                let stderr = read_lossy(&path);
                let lines = reloads(&stderr);
                (lines.len() > before.len()).then(|| lines[before.len()].clone())
            }) {
                Ok(line) if line.ends_with(&format!(".conf: {expected}")) => {
                    said.push(format!("{}: {expected}", self.names[s]))
                }
                Ok(line) => self.problem(format!(
                    "{} said {line:?} after SIGHUP, not {expected:?}",
                    self.names[s]
                )),
                Err(e) => self.problem(format!(
                    "{} did not say it reloaded after SIGHUP: {e}; stderr:\n{}",
                    self.names[s],
                    read_lossy(&path)
                )),
            }
        }
        self.event(format!("SIGHUP -> {}", said.join(" | ")));
    }

    /// Records, once, every server that should run and has exited by itself.
    fn check_alive(&mut self) {
        let down = self.down();
        for s in 0..self.names.len() {
            if down.contains(&s) {
                continue;
            }
            let status = self
                .herd
                .process_mut(s)
                .map(|process| process.wait_exit(Duration::ZERO));
            let why = match status {
                None => "has no process".to_string(),
                Some(Some(status)) => format!("exited by itself with {status}"),
                Some(None) => continue,
            };
            let stderr = read_lossy(&self.herd.stderr_path(s));
            self.problem(format!("{} {why}; stderr:\n{stderr}", self.names[s]));
            self.herd.stop(s, None);
            self.crashed.push(s);
        }
    }

    /// Ends every fault and restarts every server down.
    fn heal_all(&mut self) {
        self.event("heal everything".to_string());
        for fault in std::mem::take(&mut self.active) {
            self.end(fault);
        }
        for s in std::mem::take(&mut self.crashed) {
            self.restart(s);
        }
        self.check_alive();
    }

    /// Every server's records of every client, or Err saying which server could not be read.
    fn read_all(&self) -> Result<Vec<Vec<Option<String>>>, String> {
        (0..self.names.len())
            .map(|s| {
                read_records(self.herd.config.addrs[s], &self.clients)
                    .map_err(|e| format!("{}: {e}", self.names[s]))
            })
            .collect()
    }

    /// SIGTERM to every server: each must exit with status 0, and have said nothing on stderr
    /// but where it listens (at each start) and its reloads.
    fn stop_all(&mut self) {
        for s in 0..self.names.len() {
            if self.herd.process(s).is_some() {
                self.terminate(s);
            }
            let stderr = read_lossy(&self.herd.stderr_path(s));
            let listening = format!("{} listening on ", self.names[s]);
            let odd: Vec<&str> = stderr
                .lines()
                .filter(|line| !line.starts_with("reload ") && !line.starts_with(&listening))
                .collect();
            if !odd.is_empty() {
                self.problem(format!(
                    "{} said on stderr:\n{}",
                    self.names[s],
                    odd.join("\n")
                ));
            }
        }
    }

    /// Every server's log so far, the rotated files (`NAME.log.K`) included.
    fn logs(&self) -> Vec<String> {
        let mut logs = Vec::new();
        for s in 0..self.names.len() {
            let path = self.herd.log_path(s);
            logs.push(read_lossy(&path));
            for k in 1..=LOG_KEEP {
                let mut rotated = path.clone().into_os_string();
                rotated.push(format!(".{k}"));
                logs.push(read_lossy(&PathBuf::from(rotated)));
            }
        }
        logs
    }

    /// Keeps the history and the servers' logs in a directory that outlives the run.
    fn keep(&self, seed: u64, history: &[Entry]) -> Option<PathBuf> {
        let dir = std::env::temp_dir().join(format!(
            "herd-nemesis-seed-{seed}-pid-{}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).ok()?;
        let text: String = history.iter().map(|entry| format!("{entry}\n")).collect();
        fs::write(dir.join("history.txt"), text).ok()?;
        for s in 0..self.names.len() {
            for path in [self.herd.log_path(s), self.herd.stderr_path(s)] {
                if let Some(file) = path.file_name() {
                    let _ = fs::copy(&path, dir.join(file));
                }
            }
        }
        Some(dir)
    }
}

/// The reload results in a server's stderr, each a whole line: a line being written is left
/// out (stderr is unbuffered, and a line can reach the file in pieces).
fn reloads(stderr: &str) -> Vec<String> {
    let whole = &stderr[..stderr.rfind('\n').map_or(0, |end| end + 1)];
    whole
        .lines()
        .filter(|line| line.starts_with("reload "))
        .map(str::to_string)
        .collect()
}

/// Prints the seed and the history if the run panics (a panic skips the failure report).
struct PanicReport {
    seed: u64,
    history: History,
}

impl Drop for PanicReport {
    fn drop(&mut self) {
        if thread::panicking() {
            let mut text = format!(
                "the nemesis run with seed {} panicked; run it again with {SEED_ENV}={}\n",
                self.seed, self.seed
            );
            for entry in self.history.entries() {
                if !matches!(entry.event, Event::Ack { .. } | Event::Unknown { .. }) {
                    let _ = writeln!(text, "{entry}");
                }
            }
            let _ = io::stderr().write_all(text.as_bytes());
        }
    }
}

/// A nemesis run (see the module header): Ok with what it did when the herd came through, Err
/// with the failure report (seed, faults, what diverged, each client's story, where the full
/// history and the logs are kept).
pub fn run(options: &Options) -> Result<Report, String> {
    let began = Instant::now();
    let history = History::new();
    let _panic_report = PanicReport {
        seed: options.seed,
        history: history.clone(),
    };
    let clients: Vec<String> = (0..options.clients).map(client_id).collect();
    let mut cluster = Cluster::start(&history, clients.clone())?;
    cluster.event(format!(
        "seed {}: {} servers, {} links, {} clients, {} workers",
        options.seed,
        cluster.names.len(),
        cluster.links.len(),
        options.clients,
        options.workers
    ));
    let targets: Vec<Target> = cluster
        .names
        .iter()
        .zip(&cluster.herd.config.addrs)
        .map(|(name, addr)| Target {
            name: name.clone(),
            addr: *addr,
        })
        .collect();
    let mut workers = Workers::start(options, &targets, &history);

    let mut rng = Rng::new(options.seed);
    let nemesis_began = Instant::now();
    let hard_stop = options.duration * 3 + Duration::from_secs(60);
    for _ in 0..1_000_000 {
        let elapsed = nemesis_began.elapsed();
        let enough = elapsed >= options.duration && cluster.counts.total() >= options.min_events;
        if enough || elapsed >= hard_stop {
            break;
        }
        cluster.check_alive();
        cluster.step(&mut rng);
        thread::sleep(rng.pause(EVENT_PAUSE_MS)); // pacing between faults
    }
    let nemesis_time = nemesis_began.elapsed();
    cluster.check_alive();
    workers.stop();
    cluster.heal_all();

    let healed = Instant::now();
    let mut last = Err("not read yet".to_string());
    let converged = poll_every(Duration::from_millis(250), options.converge_timeout, || {
        let verdict = cluster
            .read_all()
            .map(|held| history.read(|entries| check(entries, &cluster.names, &clients, &held)));
        let clean = matches!(&verdict, Ok(v) if v.is_clean());
        last = verdict;
        clean
    });
    let converge_time = healed.elapsed();
    cluster.check_alive();
    cluster.stop_all();

    let entries = history.entries();
    let problems = history.problems();
    let verdict = match (&converged, &last) {
        (Ok(()), Ok(verdict)) => Ok(verdict.clone()),
        (_, Ok(verdict)) => Ok(verdict.clone()),
        (_, Err(why)) => Err(why.clone()),
    };
    let clean = matches!(&verdict, Ok(v) if v.is_clean()) && problems.is_empty();
    let count =
        |pick: fn(&Counts) -> &AtomicUsize| pick(&workers.counts).load(AtomicOrdering::SeqCst);
    let report = Report {
        seed: options.seed,
        events: cluster.counts.clone(),
        acked: count(|c| &c.acked),
        unknown: count(|c| &c.unknown),
        refused: count(|c| &c.refused),
        pairs: count(|c| &c.pairs),
        clients_updated: Updates::of(&entries).acked.len(),
        nemesis_time,
        converge_time,
        total_time: began.elapsed(),
        logged: Logged::of(&cluster.logs()),
    };
    if clean {
        return Ok(report);
    }

    let mut text = format!(
        "the nemesis run with seed {seed} failed; run it again with {SEED_ENV}={seed} \
         (the faults come back in the same order; the clients' timing differs)\n\
         what it did: {events}; {acked} acknowledged, {unknown} unknown, {refused} refused\n",
        seed = options.seed,
        events = report.events,
        acked = report.acked,
        unknown = report.unknown,
        refused = report.refused,
    );
    if !problems.is_empty() {
        let _ = writeln!(text, "problems seen during the run:");
        for problem in problems.iter().take(10) {
            let mut lines = problem.lines();
            let _ = writeln!(text, "  {}", lines.next().unwrap_or_default());
            let rest: Vec<&str> = lines.collect();
            for line in rest.iter().take(10) {
                let _ = writeln!(text, "  {line}");
            }
            if rest.len() > 10 {
                let _ = writeln!(text, "      ... {} more lines", rest.len() - 10);
            }
        }
        if problems.len() > 10 {
            let _ = writeln!(text, "  ... and {} more problems", problems.len() - 10);
        }
    }
    let concerned: Vec<String> = match &verdict {
        Ok(verdict) if verdict.is_clean() => {
            let _ = writeln!(
                text,
                "the herd converged in {converge_time:.1?} after the heal"
            );
            Vec::new()
        }
        Ok(verdict) => {
            let _ = writeln!(
                text,
                "the herd did not converge within {:?} after the heal; the last look:\n{verdict}",
                options.converge_timeout
            );
            verdict.clients.clone()
        }
        Err(why) => {
            let _ = writeln!(text, "the servers could not be read at the end: {why}");
            Vec::new()
        }
    };
    let _ = writeln!(text, "the nemesis's history (a problem's first line):");
    for entry in &entries {
        if matches!(entry.event, Event::Nemesis(_) | Event::Problem(_)) {
            let entry = entry.to_string();
            let _ = writeln!(text, "{}", entry.lines().next().unwrap_or_default());
        }
    }
    for client in concerned.iter().take(5) {
        let _ = writeln!(text, "the history of {client}, with the faults:");
        for entry in &entries {
            let about = match &entry.event {
                Event::Ack { at, .. } => at.client == *client,
                Event::Unknown { update, .. } => update.client == *client,
                Event::Nemesis(_) | Event::Problem(_) => true,
            };
            if about {
                let entry = entry.to_string();
                let _ = writeln!(text, "{}", entry.lines().next().unwrap_or_default());
            }
        }
    }
    match cluster.keep(options.seed, &entries) {
        Some(dir) => {
            let _ = writeln!(
                text,
                "the full history and every server's log and stderr are kept in {}",
                dir.display()
            );
        }
        None => {
            let _ = writeln!(text, "(the full history could not be kept in a file)");
        }
    }
    Err(text)
}
