//! Timing a flood through the client protocol only: an IAMAT at one server, then WHATSAT for that
//! client at every other server, each asked again as soon as it answers `? ...`, until it answers
//! with an AT line instead (after at least the pacing interval since the previous ask).
//!
//! A server that answers a WHATSAT with AT learnt the update after it answered the previous one
//! and before it read this one, so the time recorded (the write of its first positive WHATSAT)
//! is within one loopback round trip (or the pacing interval, if longer) of the real arrival. The AT line of a positive WHATSAT
//! comes only once Places has answered, so the bench points Places at a port nobody listens on:
//! the lookup fails at once and costs the server little. Every server is polled on its own
//! connection, driven by one mio poll, so a slow answer from one delays no other; the
//! connections are opened afresh, outside the timing, for every update. A series of updates
//! gives latency histograms: to every other server, and to the farthest ones.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::commands::{whatsat, Names};
use crate::hist::Histogram;

/// A reply or connect slower than this means the server is stuck, not slow.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

fn connect(addr: SocketAddr) -> Result<StdStream, String> {
    let stream = StdStream::connect_timeout(&addr, REPLY_TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(stream)
}

/// Takes one complete line (without its `\n`) off the front of `buf`.
fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = buf[..end].to_vec();
    buf.drain(..=end);
    Some(line)
}

/// One polled server: its connection, unparsed reply bytes, and when the WHATSAT now
/// outstanding was written.
struct Watcher {
    stream: TcpStream,
    buf: Vec<u8>,
    asked_at: Instant,
    /// When to ask again, after a `? ` that came sooner than the pacing interval.
    ask_due: Option<Instant>,
}

impl Watcher {
    /// Reads what the server sent: when the WHATSAT it answered with AT was asked, if it did.
    /// A `? ` is asked again, at once or when the pace allows.
    fn hear(
        &mut self,
        chunk: &mut [u8],
        ask: &[u8],
        pace: Duration,
    ) -> Result<Option<Instant>, String> {
        loop {
            match self.stream.read(chunk) {
                Ok(0) => return Err("connection closed".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        while let Some(line) = take_line(&mut self.buf) {
            if line.starts_with(b"AT ") {
                return Ok(Some(self.asked_at));
            }
            if !line.starts_with(b"? ") {
                return Err(format!(
                    "unexpected reply to WHATSAT: {}",
                    String::from_utf8_lossy(&line)
                ));
            }
            let now = Instant::now();
            let due = self.asked_at + pace;
            if due <= now {
                self.asked_at = now;
                write_small(&mut self.stream, ask)?;
            } else {
                self.ask_due = Some(due);
            }
        }
        Ok(None)
    }
}

/// How long to poll until `wake`: epoll waits in whole milliseconds (mio rounds up), so the
/// whole milliseconds are waited there and what is left below one is slept here.
fn poll_wait(wake: Instant, now: Instant) -> Duration {
    let wait = wake.saturating_duration_since(now);
    if wait < Duration::from_millis(1) {
        thread::sleep(wait);
        Duration::ZERO
    } else {
        Duration::from_millis(wait.as_millis() as u64)
    }
}

/// An origin server and the servers whose learning of its updates is timed.
pub struct Flood {
    origin: StdStream,
    origin_buf: Vec<u8>,
    addrs: Vec<SocketAddr>,
    poll: Poll,
    names: Names,
    /// Each server is asked at most once per this interval, so that on a small machine the
    /// polling does not take the CPU the flood needs; it adds at most this much to a time.
    pace: Duration,
    sent: u64,
    last_client: String,
}

impl Flood {
    pub fn new(
        origin: SocketAddr,
        others: &[SocketAddr],
        names: &Names,
        pace: Duration,
    ) -> Result<Flood, String> {
        let origin = connect(origin)?;
        origin
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        Ok(Flood {
            origin,
            origin_buf: Vec::new(),
            addrs: others.to_vec(),
            poll: Poll::new().map_err(|e| format!("mio poll: {e}"))?,
            names: names.clone(),
            pace,
            sent: 0,
            last_client: String::new(),
        })
    }

    /// The client id of the latest update sent.
    pub fn last_client(&self) -> &str {
        &self.last_client
    }

    /// Sends one IAMAT for a new client (`{kind}{n}`) at the origin and returns, per other
    /// server, the time from that write until the server was seen to know it; `None` for a
    /// server that did not within `timeout`.
    pub fn sample(
        &mut self,
        kind: &str,
        timeout: Duration,
    ) -> Result<Vec<Option<Duration>>, String> {
        let mut watchers = Vec::with_capacity(self.addrs.len());
        for (i, &addr) in self.addrs.iter().enumerate() {
            let std = connect(addr)?;
            std.set_nonblocking(true).map_err(|e| e.to_string())?;
            let mut stream = TcpStream::from_std(std);
            self.poll
                .registry()
                .register(&mut stream, Token(i), Interest::READABLE)
                .map_err(|e| format!("mio register: {e}"))?;
            watchers.push(Watcher {
                stream,
                buf: Vec::new(),
                asked_at: Instant::now(),
                ask_due: None,
            });
        }
        self.sent += 1;
        let client = self.names.client(kind, self.sent);
        let iamat = self.names.iamat(&client, self.names.now_tick());
        let ask = whatsat(&client, 1, 1);
        self.last_client = client;

        let t0 = Instant::now();
        self.origin
            .write_all(&iamat)
            .map_err(|e| format!("write: {e}"))?;
        for watcher in &mut watchers {
            watcher.asked_at = Instant::now();
            write_small(&mut watcher.stream, &ask)?;
        }
        let mut known: Vec<Option<Duration>> = vec![None; watchers.len()];
        let result = self.watch(&mut watchers, &mut known, &ask, t0, t0 + timeout);
        for watcher in &mut watchers {
            let _ = self.poll.registry().deregister(&mut watcher.stream);
        }
        result?;
        self.read_origin_reply()?;
        Ok(known)
    }

    fn watch(
        &mut self,
        watchers: &mut [Watcher],
        known: &mut [Option<Duration>],
        ask: &[u8],
        t0: Instant,
        deadline: Instant,
    ) -> Result<(), String> {
        let mut events = Events::with_capacity(256);
        let mut chunk = [0u8; 4096];
        let mut pending = watchers.len();
        while pending > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            for watcher in watchers.iter_mut() {
                if watcher.ask_due.is_some_and(|due| due <= now) {
                    watcher.ask_due = None;
                    watcher.asked_at = now;
                    write_small(&mut watcher.stream, ask)?;
                }
            }
            let wake = watchers
                .iter()
                .filter_map(|w| w.ask_due)
                .min()
                .unwrap_or(deadline)
                .min(deadline);
            match self.poll.poll(&mut events, Some(poll_wait(wake, now))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("mio poll: {e}")),
            }
            for event in events.iter() {
                let i = event.token().0;
                let Some(watcher) = watchers.get_mut(i).filter(|_| known[i].is_none()) else {
                    continue;
                };
                let heard = watcher.hear(&mut chunk, ask, self.pace);
                if let Some(asked_at) = heard.map_err(|e| format!("{}: {e}", self.addrs[i]))? {
                    known[i] = Some(asked_at - t0);
                    pending -= 1;
                }
            }
        }
        Ok(())
    }

    fn read_origin_reply(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(line) = take_line(&mut self.origin_buf) {
                if line.starts_with(b"AT ") {
                    return Ok(());
                }
                return Err(format!(
                    "origin answered IAMAT with: {}",
                    String::from_utf8_lossy(&line)
                ));
            }
            match self.origin.read(&mut chunk) {
                Ok(0) => return Err("the origin closed the connection".into()),
                Ok(n) => self.origin_buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("origin: read: {e}")),
            }
        }
    }
}

/// Latencies of a series of updates: to every other server, and to the farthest ones.
#[derive(Default)]
pub struct FloodTimes {
    pub to_all: Histogram,
    pub to_farthest: Histogram,
    /// Updates some server had not learnt within the per-update timeout.
    pub lost: u64,
    /// The client id of every update sent.
    pub clients: Vec<String>,
}

/// Times up to `count` updates (for at most `budget`), each waited for at most `timeout`.
pub fn time_updates(
    flood: &mut Flood,
    kind: &str,
    farthest: &[usize],
    count: usize,
    budget: Duration,
    timeout: Duration,
) -> Result<FloodTimes, String> {
    let mut times = FloodTimes::default();
    let start = Instant::now();
    for _ in 0..count {
        if start.elapsed() >= budget {
            break;
        }
        let known = flood.sample(kind, timeout)?;
        times.clients.push(flood.last_client().to_string());
        if known.iter().any(Option::is_none) {
            times.lost += 1;
            continue;
        }
        let ns = |d: &Option<Duration>| d.unwrap_or_default().as_nanos() as u64;
        times.to_all.record(known.iter().map(ns).max().unwrap_or(0));
        times
            .to_farthest
            .record(farthest.iter().map(|&i| ns(&known[i])).max().unwrap_or(0));
    }
    Ok(times)
}

/// Waits (bounded) for the first update to reach every server: links come up after start.
pub fn first_update(
    flood: &mut Flood,
    names: &[String],
    timeout: Duration,
) -> Result<Duration, String> {
    let known = flood.sample("w", timeout)?;
    let missing: Vec<&str> = known
        .iter()
        .zip(names)
        .filter(|(k, _)| k.is_none())
        .map(|(_, n)| n.as_str())
        .collect();
    if missing.is_empty() {
        Ok(known.iter().flatten().max().copied().unwrap_or_default())
    } else {
        Err(format!(
            "the first update did not reach {} within {} s (are the herd links built?)",
            missing.join(", "),
            timeout.as_secs()
        ))
    }
}

/// Writes a short command on a nonblocking socket whose send buffer is empty (one command is
/// outstanding at a time), so it goes out whole or the connection is broken.
fn write_small(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    match stream.write(bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => Err(format!("short write of {n} bytes")),
        Err(e) => Err(format!("write: {e}")),
    }
}
