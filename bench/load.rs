//! The load generator: C connections in one mio poll loop on one thread, every read and write
//! batched (one syscall carries as many commands or replies as are ready). Closed loop (the
//! default): P commands in flight on each connection, a new one sent as each reply completes, a
//! command timed from the write that carried it to the read that completed its reply. Paced
//! (`LoadSpec::paced`): commands due on a fixed schedule, the total rate spread evenly over the
//! connections, at most P in flight on each; a command is timed from when it was due, so a
//! late send (a full connection, or the generator's own lateness) counts against the server
//! instead of hiding the wait (no coordinated omission). Replies on one connection come back in
//! command order (SPEC section 2), so a FIFO of stamps per connection matches them. A
//! WHATSAT reply is checked as it is framed (AT line, a JSON object, an empty line) and its
//! JSON told apart as an error object or not by its first bytes, without parsing it. One run
//! can drive several servers at once (`LoadSpec::also`), the connections dealt out among them
//! in turn, each server with a report of its own. It knows nothing of scenarios.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;

use crate::cpu::CpuMark;
use crate::hist::Histogram;
use crate::tls::TlsClient;

/// What the reply to a command looks like, so the reader knows where it ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    /// One line: IAMAT's AT line, or `? ...`.
    Line,
    /// WHATSAT: `? ...` alone, or the AT line, the JSON, and an empty line.
    Whatsat,
}

/// How a reply ended, as far as the generator can tell without parsing its JSON.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// An AT line (IAMAT), or a whole WHATSAT reply: AT line, JSON object, empty line.
    Ok,
    /// `? ...`: the server called the command invalid.
    Invalid,
    /// A whole WHATSAT reply whose JSON is an error object (`{"error": ...}`).
    ErrorJson,
    /// A WHATSAT reply not shaped AT line, JSON object (`{` to `}`), empty line.
    Malformed,
}

/// The JSON's first non-blank bytes a WHATSAT reply keeps: enough for `{"error"`.
const JSON_PREFIX: usize = 8;

/// A source of commands.
pub trait Workload {
    /// Appends one command for connection `conn` to `out` and says what its reply looks like;
    /// `None` when a bounded run has issued everything.
    fn next_command(&mut self, conn: usize, out: &mut Vec<u8>) -> Option<Expect>;

    /// `replies` more of connection `conn`'s commands were answered, the oldest first (for a
    /// workload that records which updates were acknowledged).
    fn answered(&mut self, _conn: usize, _replies: usize) {}
}

pub struct LoadSpec {
    pub addr: SocketAddr,
    pub connections: usize,
    pub in_flight: usize,
    /// Replies before the end of the warm-up are neither timed nor counted.
    pub warmup: Duration,
    /// The measured window after the warm-up.
    pub duration: Duration,
    /// How long to wait, after the window, for the replies still owed.
    pub drain: Duration,
    /// Ends the window early when set (a load running beside another measurement).
    pub stop: Option<Arc<AtomicBool>>,
    /// The server process, whose CPU use over the window is reported when known.
    pub server_pid: Option<u32>,
    /// Paced mode: commands per second over all connections (closed loop when `None`).
    pub rate: Option<f64>,
    /// More servers driven in the same run, with their pids: connection `i` goes to server
    /// `i % n` of `addr` followed by these (see `run_load_each`).
    pub others: Vec<(SocketAddr, Option<u32>)>,
    /// Every connection over TLS (a session each, its handshake done before the run starts);
    /// in clear when `None`.
    pub tls: Option<Arc<TlsClient>>,
}

impl LoadSpec {
    pub fn new(addr: SocketAddr, connections: usize, in_flight: usize, duration: Duration) -> Self {
        LoadSpec {
            addr,
            connections,
            in_flight,
            warmup: Duration::from_millis(300),
            duration,
            drain: Duration::from_secs(2),
            stop: None,
            server_pid: None,
            rate: None,
            others: Vec::new(),
            tls: None,
        }
    }

    /// Every connection over TLS with `client`: connected and its handshake done before the
    /// warm-up starts; the generator's thread then encrypts and decrypts every byte.
    pub fn tls(mut self, client: Arc<TlsClient>) -> Self {
        self.tls = Some(client);
        self
    }

    /// Paced mode: `per_sec` commands a second in all, connection `i`'s `k`-th due at
    /// `(i + k * C) / per_sec` seconds after the start; still at most `in_flight` outstanding
    /// on a connection (a due command waits for a free slot, its stamp unchanged).
    pub fn paced(mut self, per_sec: f64) -> Self {
        self.rate = Some(per_sec);
        self
    }

    /// Reports this server process's CPU use over the window.
    pub fn server(mut self, pid: Option<u32>) -> Self {
        self.server_pid = pid;
        self
    }

    /// Drives one more server in the same run (its pid for its CPU use, when known): the
    /// connections are dealt out in turn, so with `paced` the servers' commands alternate in
    /// time and anything that disturbs the run falls on all of them alike.
    pub fn also(mut self, addr: SocketAddr, pid: Option<u32>) -> Self {
        self.others.push((addr, pid));
        self
    }

    /// Every server driven: `addr` first, then `others`.
    fn servers(&self) -> Vec<(SocketAddr, Option<u32>)> {
        let mut all = vec![(self.addr, self.server_pid)];
        all.extend_from_slice(&self.others);
        all
    }
}

#[derive(Default)]
pub struct LoadReport {
    /// Latency of every command sent inside the window (answered before the drain ran out).
    pub latency: Histogram,
    /// Replies that arrived inside the window.
    pub completed: u64,
    pub window: Duration,
    /// Replies of the form `? ...`: the server called the command invalid.
    pub errors: u64,
    /// WHATSAT replies whose JSON is an error object, and WHATSAT replies not shaped AT line,
    /// JSON, empty line (whole run, warm-up and drain included).
    pub error_json: u64,
    pub malformed: u64,
    /// Every reply of the run, warm-up and drain included.
    pub replies_total: u64,
    /// Commands still unanswered when the drain ran out.
    pub unanswered: u64,
    /// Why a connection ended early, when one did.
    pub closed: Option<String>,
    /// CPU used over the window, as a fraction of one core: by the server (when its pid is
    /// known) and by the generator's thread. A generator near 1.0 would be the bottleneck.
    pub server_cpu: Option<f64>,
    pub generator_cpu: Option<f64>,
    /// CPU used meanwhile by every other process on the machine (the servers driven in the
    /// same run left out).
    pub other_cpu: Option<f64>,
    /// Paced mode: the rate asked for (commands per second over this server's connections).
    pub paced_rate: Option<f64>,
    /// Paced mode: how late each command of the window was sent after it was due (waiting
    /// for a free slot on its connection, or for the generator to come round).
    pub send_lag: Histogram,
    /// Paced mode: commands due inside the window never sent, their connection still full
    /// when it ended.
    pub unsent: u64,
    /// When the run's last reply arrived (any server's), if one did.
    pub last_reply: Option<Instant>,
}

impl LoadReport {
    /// Adds another run of the same load: one report over both windows.
    pub fn absorb(&mut self, other: LoadReport) {
        let (mine, theirs) = (self.window.as_secs_f64(), other.window.as_secs_f64());
        let weigh = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some((a * mine + b * theirs) / (mine + theirs).max(1e-9)),
            (a, b) => a.or(b),
        };
        self.server_cpu = weigh(self.server_cpu, other.server_cpu);
        self.generator_cpu = weigh(self.generator_cpu, other.generator_cpu);
        self.other_cpu = weigh(self.other_cpu, other.other_cpu);
        self.latency.merge(&other.latency);
        self.send_lag.merge(&other.send_lag);
        self.paced_rate = self.paced_rate.or(other.paced_rate);
        self.unsent += other.unsent;
        self.completed += other.completed;
        self.window += other.window;
        self.errors += other.errors;
        self.error_json += other.error_json;
        self.malformed += other.malformed;
        self.replies_total += other.replies_total;
        self.unanswered += other.unanswered;
        self.closed = self.closed.take().or(other.closed);
    }

    pub fn rate(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.completed as f64 / secs
        } else {
            0.0
        }
    }
}

/// One client connection: its socket, unsent bytes, send times of unanswered commands, and the
/// state of the reply line being read.
struct Conn {
    stream: TcpStream,
    /// The connection's TLS session, when the run is over TLS: `out` is its plaintext.
    tls: Option<Box<ClientConnection>>,
    out: Vec<u8>,
    written: usize,
    sent: VecDeque<(u64, Expect)>,
    line_len: usize,
    line_first: u8,
    /// The last byte of the line being read (a `\r` left out).
    line_last: u8,
    in_whatsat_body: bool,
    /// The WHATSAT reply being read: did its first line look like an AT line, how many JSON
    /// lines came, the last byte of the last one, and the JSON's first non-blank bytes.
    at_line_ok: bool,
    json_lines: u32,
    json_last: u8,
    json_prefix: [u8; JSON_PREFIX],
    json_prefix_len: usize,
    open: bool,
    /// Paced mode: the schedule index of this connection's next command.
    next_k: u64,
}

impl Conn {
    fn new(stream: TcpStream, tls: Option<ClientConnection>) -> Conn {
        Conn {
            stream,
            tls: tls.map(Box::new),
            out: Vec::with_capacity(16 * 1024),
            written: 0,
            sent: VecDeque::new(),
            line_len: 0,
            line_first: 0,
            line_last: 0,
            in_whatsat_body: false,
            at_line_ok: false,
            json_lines: 0,
            json_last: 0,
            json_prefix: [0; JSON_PREFIX],
            json_prefix_len: 0,
            open: true,
            next_k: 0,
        }
    }

    /// Appends the next command, stamped `stamp_ns` (when it was sent, or paced, when it was
    /// due); false when the workload is exhausted.
    fn issue(&mut self, index: usize, work: &mut dyn Workload, stamp_ns: u64) -> bool {
        match work.next_command(index, &mut self.out) {
            Some(expect) => {
                self.sent.push_back((stamp_ns, expect));
                true
            }
            None => false,
        }
    }

    /// Writes until everything is out or the socket is full (mio is edge-triggered: the next
    /// WRITABLE event says when to go on).
    fn flush(&mut self) -> io::Result<()> {
        if self.tls.is_some() {
            self.flush_tls()?;
        }
        while self.tls.is_none() && self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written > 1 << 20 {
            self.out.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    /// Over TLS: hands rustls as much plaintext as it takes and writes its records until the
    /// socket is full or nothing is left.
    fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        loop {
            if self.written < self.out.len() {
                self.written += tls.writer().write(&self.out[self.written..])?;
            }
            while tls.wants_write() {
                match tls.write_tls(&mut self.stream) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.written == self.out.len() {
                return Ok(());
            }
        }
    }

    /// Reads received bytes: from the socket in clear; over TLS, plaintext rustls holds, or
    /// else records from the socket (WouldBlock once both are empty). Ok(0): the server closed.
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.stream.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut self.stream)? == 0 {
                return Ok(0);
            }
            tls.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }

    /// Feeds received bytes through the reply framing; calls `done(stamp_ns, outcome)` for
    /// every reply completed. Returns the number of lines that matched no command.
    fn parse(&mut self, data: &[u8], mut done: impl FnMut(u64, Outcome)) -> u64 {
        let mut unexpected = 0;
        for &byte in data {
            if byte != b'\n' {
                self.take_byte(byte);
                continue;
            }
            let empty = self.line_len == 0 || (self.line_len == 1 && self.line_first == b'\r');
            let first = self.line_first;
            self.line_len = 0;
            let Some(&(sent_ns, expect)) = self.sent.front() else {
                unexpected += 1;
                continue;
            };
            let complete = match expect {
                Expect::Line if empty => {
                    unexpected += 1;
                    None
                }
                // `+`: a Redis `+OK`, for scenario 16's comparison.
                Expect::Line if first == b'A' || first == b'+' => Some(Outcome::Ok),
                Expect::Line => Some(Outcome::Invalid),
                Expect::Whatsat => self.whatsat_line(empty, first),
            };
            if let Some(outcome) = complete {
                self.sent.pop_front();
                done(sent_ns, outcome);
            }
        }
        unexpected
    }

    /// One byte of a line (not its `\n`): what the framing checks need of it.
    fn take_byte(&mut self, byte: u8) {
        if self.line_len == 0 {
            self.line_first = byte;
        }
        self.line_len += 1;
        if byte != b'\r' {
            self.line_last = byte;
        }
        if self.in_whatsat_body && self.json_prefix_len < JSON_PREFIX && !byte.is_ascii_whitespace()
        {
            self.json_prefix[self.json_prefix_len] = byte;
            self.json_prefix_len += 1;
        }
    }

    /// A line of a WHATSAT reply has ended: the outcome when it was the reply's last.
    fn whatsat_line(&mut self, empty: bool, first: u8) -> Option<Outcome> {
        if self.in_whatsat_body {
            if !empty {
                self.json_lines += 1;
                self.json_last = self.line_last;
                return None;
            }
            self.in_whatsat_body = false;
            return Some(self.whatsat_outcome());
        }
        if first == b'?' && !empty {
            return Some(Outcome::Invalid);
        }
        self.in_whatsat_body = true;
        self.at_line_ok = !empty && first == b'A';
        self.json_lines = 0;
        self.json_prefix_len = 0;
        None
    }

    /// A whole WHATSAT reply: AT line, a JSON object, the empty line; which JSON it carried.
    fn whatsat_outcome(&self) -> Outcome {
        let prefix = &self.json_prefix[..self.json_prefix_len];
        let framed = self.at_line_ok
            && self.json_lines > 0
            && prefix.first() == Some(&b'{')
            && self.json_last == b'}';
        if !framed {
            Outcome::Malformed
        } else if prefix.starts_with(b"{\"error\"") {
            Outcome::ErrorJson
        } else {
            Outcome::Ok
        }
    }
}

/// Opens the connections, keeps `in_flight` commands outstanding on each (closed loop) or sends
/// them as they fall due (paced) for the warm-up plus the window, then waits (bounded) for what
/// is still owed. The report of the first server (`spec.addr`).
pub fn run_load(spec: &LoadSpec, work: &mut dyn Workload) -> Result<LoadReport, String> {
    let mut reports = run_load_each(spec, work)?;
    Ok(reports.swap_remove(0))
}

/// `run_load` over every server of `spec` (`addr`, then `others`): one report each, in that
/// order, over the same window.
pub fn run_load_each(spec: &LoadSpec, work: &mut dyn Workload) -> Result<Vec<LoadReport>, String> {
    let mut poll = Poll::new().map_err(|e| format!("mio poll: {e}"))?;
    let mut conns = connect_all(spec, &poll)?;
    let mut run = Run::new(spec, work);
    if run.pace.is_none() {
        for (index, conn) in conns.iter_mut().enumerate() {
            run.issue(conn, index, spec.in_flight, 0);
            conn.flush().map_err(|e| format!("write: {e}"))?;
        }
    }
    let mut open = conns.len();
    let mut scratch = vec![0u8; 256 * 1024];
    let mut events = Events::with_capacity(1024);
    loop {
        if run.pace.is_some() {
            let now = run.now();
            for (index, conn) in conns.iter_mut().enumerate() {
                if !conn.open || !run.issue_due(conn, index, now) {
                    continue;
                }
                if let Err(e) = conn.flush() {
                    run.close(conn, index, format!("write: {e}"));
                    open -= 1;
                }
            }
        }
        let Some(timeout) = run.next_wait(&conns, open) else {
            break;
        };
        if timeout.is_zero() && run.pace.is_some() {
            // The next send due within a millisecond: poll without blocking, and let anything
            // else that wants this core have it meanwhile.
            std::thread::yield_now();
        }
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("mio poll: {e}"));
        }
        for event in events.iter() {
            let index = event.token().0;
            let Some(conn) = conns.get_mut(index).filter(|c| c.open) else {
                continue;
            };
            let failure = run
                .read_replies(conn, index, &mut scratch)
                .or_else(|| conn.flush().err().map(|e| format!("write: {e}")));
            if let Some(why) = failure {
                run.close(conn, index, why);
                open -= 1;
            }
        }
    }
    Ok(run.finish(&conns))
}

/// Opens every connection (blocking connects, bounded in all to 20 s) and registers it;
/// connection `i` goes to server `i % n`.
fn connect_all(spec: &LoadSpec, poll: &Poll) -> Result<Vec<Conn>, String> {
    let servers = spec.servers();
    let mut conns = Vec::with_capacity(spec.connections);
    let deadline = Instant::now() + Duration::from_secs(20);
    for index in 0..spec.connections {
        if Instant::now() >= deadline {
            return Err(format!(
                "only {index} of {} connections to {} opened in 20 s",
                spec.connections, spec.addr
            ));
        }
        let addr = servers[index % servers.len()].0;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect to {addr} (connection {}): {e}", index + 1))?;
        let tls = match &spec.tls {
            Some(client) => Some(
                client
                    .handshake(&mut stream)
                    .map_err(|e| format!("{addr} (connection {}): {e}", index + 1))?,
            ),
            None => None,
        };
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_nonblocking(true))
            .map_err(|e| format!("socket options: {e}"))?;
        let mut stream = TcpStream::from_std(stream);
        poll.registry()
            .register(
                &mut stream,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("mio register: {e}"))?;
        conns.push(Conn::new(stream, tls));
    }
    Ok(conns)
}

/// Paced mode: the poll's timeout goes in whole milliseconds (mio rounds up), so a send due
/// sooner than this is waited for by polling without blocking.
const SPIN_WITHIN_NS: u64 = 1_100_000;

/// Paced mode's schedule: command `n` overall is due `n * ns_per_command` after the start, on
/// connection `n % connections`.
#[derive(Clone, Copy)]
struct Pace {
    ns_per_command: f64,
    connections: u64,
}

impl Pace {
    /// When the `k`-th command of connection `index` is due.
    fn due(&self, index: usize, k: u64) -> u64 {
        ((index as u64 + k * self.connections) as f64 * self.ns_per_command) as u64
    }
}

/// One run's bookkeeping: the clock, the window, what is outstanding, what was measured.
/// Times are nanoseconds since the run started.
struct Run<'a> {
    spec: &'a LoadSpec,
    work: &'a mut dyn Workload,
    pace: Option<Pace>,
    start: Instant,
    window_start: u64,
    window_end: u64,
    /// The servers' pids, and one report per server (connection `i`'s is `i % n`).
    pids: Vec<Option<u32>>,
    reports: Vec<LoadReport>,
    outstanding: u64,
    exhausted: bool,
    draining_since: Option<u64>,
    last_completion: u64,
    /// When the latest reply completed (a read may carry only part of one).
    last_reply: Option<u64>,
    cpu_at_start: Option<CpuMark>,
    cpu_at_end: Option<CpuMark>,
}

impl<'a> Run<'a> {
    fn new(spec: &'a LoadSpec, work: &'a mut dyn Workload) -> Run<'a> {
        let window_start = spec.warmup.as_nanos() as u64;
        let pace = spec.rate.filter(|r| *r > 0.0).map(|rate| Pace {
            ns_per_command: 1e9 / rate,
            connections: spec.connections.max(1) as u64,
        });
        let pids: Vec<Option<u32>> = spec.servers().iter().map(|s| s.1).collect();
        let n = pids.len();
        let reports = (0..n)
            .map(|i| LoadReport {
                // This server's share of the connections, and so of the rate.
                paced_rate: pace.and(spec.rate).map(|rate| {
                    let mine = (spec.connections + n - 1 - i) / n;
                    rate * mine as f64 / spec.connections.max(1) as f64
                }),
                ..LoadReport::default()
            })
            .collect();
        Run {
            spec,
            work,
            pace,
            start: Instant::now(),
            window_start,
            window_end: window_start + spec.duration.as_nanos() as u64,
            pids,
            reports,
            outstanding: 0,
            exhausted: false,
            draining_since: None,
            last_completion: 0,
            last_reply: None,
            cpu_at_start: None,
            cpu_at_end: None,
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Appends up to `count` commands to a connection's output, stamped `now`.
    fn issue(&mut self, conn: &mut Conn, index: usize, count: usize, now: u64) {
        for _ in 0..count {
            if !conn.issue(index, self.work, now) {
                self.exhausted = true;
                return;
            }
            self.outstanding += 1;
        }
    }

    /// Paced mode: appends every command of this connection that is due by `now`, while it has
    /// a free slot, each stamped when it was due; true when it appended any.
    fn issue_due(&mut self, conn: &mut Conn, index: usize, now: u64) -> bool {
        let Some(pace) = self.pace else {
            return false;
        };
        let mut issued = false;
        while self.draining_since.is_none()
            && !self.exhausted
            && conn.sent.len() < self.spec.in_flight
        {
            let due = pace.due(index, conn.next_k);
            if due > now || due >= self.window_end {
                break;
            }
            if !conn.issue(index, self.work, due) {
                self.exhausted = true;
                break;
            }
            conn.next_k += 1;
            self.outstanding += 1;
            if due >= self.window_start {
                self.report_of(index).send_lag.record(now - due);
            }
            issued = true;
        }
        issued
    }

    /// Paced mode: when the next command that could be sent now (its connection open and not
    /// full) is due.
    fn next_due(&self, conns: &[Conn]) -> Option<u64> {
        let pace = self.pace.filter(|_| !self.exhausted)?;
        conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.open && c.sent.len() < self.spec.in_flight)
            .map(|(index, c)| pace.due(index, c.next_k))
            .min()
    }

    /// Paced mode, as the window ends: counts the commands due inside it that were never sent.
    fn count_unsent(&mut self, conns: &[Conn]) {
        let Some(pace) = self.pace else {
            return;
        };
        for (index, conn) in conns.iter().enumerate().filter(|(_, c)| c.open) {
            let mut k = conn.next_k;
            loop {
                let due = pace.due(index, k);
                if due >= self.window_end {
                    break;
                }
                let in_window = due >= self.window_start;
                self.report_of(index).unsent += u64::from(in_window);
                k += 1;
            }
        }
    }

    /// Marks a connection closed: what it still owed is no longer awaited.
    fn close(&mut self, conn: &mut Conn, index: usize, why: String) {
        conn.open = false;
        self.outstanding -= conn.sent.len() as u64;
        self.report_of(index).closed.get_or_insert(why);
    }

    /// The report of connection `index`'s server.
    fn report_of(&mut self, index: usize) -> &mut LoadReport {
        let servers = self.reports.len();
        &mut self.reports[index % servers]
    }

    /// Moves the run through warm-up, window and drain; returns how long to wait for events,
    /// or `None` when the run is over.
    fn next_wait(&mut self, conns: &[Conn], open: usize) -> Option<Duration> {
        let now = self.now();
        if self.cpu_at_start.is_none() && now >= self.window_start {
            self.cpu_at_start = Some(CpuMark::take(&self.pids));
        }
        if self.draining_since.is_none() {
            let stopped = self
                .spec
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed));
            let done = self.exhausted && self.outstanding == 0;
            if stopped || now >= self.window_end || done || open == 0 {
                self.window_end = self.window_end.min(now);
                self.draining_since = Some(now);
                self.cpu_at_end = Some(CpuMark::take(&self.pids));
                self.count_unsent(conns);
            }
        }
        let until = match self.draining_since {
            Some(since) => {
                let drain_end = since + self.spec.drain.as_nanos() as u64;
                if self.outstanding == 0 || open == 0 || now >= drain_end {
                    return None;
                }
                drain_end
            }
            None => match self.next_due(conns) {
                Some(due) if due < self.window_end => {
                    let gap = due.saturating_sub(now);
                    if gap < SPIN_WITHIN_NS {
                        return Some(Duration::ZERO);
                    }
                    // Whole milliseconds, rounded down, so the poll does not overshoot.
                    let millis = (gap - 100_000) / 1_000_000;
                    return Some(Duration::from_millis(millis.min(50)));
                }
                _ => self.window_end,
            },
        };
        Some(Duration::from_nanos(
            until.saturating_sub(now).min(50_000_000),
        ))
    }

    /// Reads what a connection has received, times the replies it completes and sends as
    /// many new commands; returns why the connection must close, if it must.
    fn read_replies(
        &mut self,
        conn: &mut Conn,
        index: usize,
        scratch: &mut [u8],
    ) -> Option<String> {
        loop {
            match conn.read_some(scratch) {
                Ok(0) => return Some("the server closed a connection".into()),
                Ok(n) => {
                    let now = self.now();
                    let (window_start, window_end) = (self.window_start, self.window_end);
                    let report = self.report_of(index);
                    let mut answered = 0;
                    let unexpected = conn.parse(&scratch[..n], |stamp_ns, outcome| {
                        answered += 1;
                        if stamp_ns >= window_start {
                            report.latency.record(now - stamp_ns);
                        }
                        if now >= window_start && now < window_end {
                            report.completed += 1;
                        }
                        report.errors += u64::from(outcome == Outcome::Invalid);
                        report.error_json += u64::from(outcome == Outcome::ErrorJson);
                        report.malformed += u64::from(outcome == Outcome::Malformed);
                    });
                    report.replies_total += answered;
                    report.errors += unexpected;
                    self.outstanding -= answered;
                    self.last_completion = now;
                    if answered > 0 {
                        self.work.answered(index, answered as usize);
                        self.last_reply = Some(now);
                    }
                    if self.pace.is_some() {
                        self.issue_due(conn, index, now);
                    } else if self.draining_since.is_none() && !self.exhausted {
                        self.issue(conn, index, answered as usize, now);
                    }
                    // A short read emptied the socket; on Linux the next arrival raises a new
                    // edge, so the read that would only say WouldBlock is skipped (one syscall
                    // less per reply at P=1). Over TLS a short read says only that rustls
                    // held no more plaintext, so the socket is read until WouldBlock.
                    if n < scratch.len() && conn.tls.is_none() {
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(format!("read: {e}")),
            }
        }
    }

    fn finish(mut self, conns: &[Conn]) -> Vec<LoadReport> {
        // A bounded workload that ran out early ends its window at its last reply.
        let end = if self.exhausted {
            self.window_end
                .min(self.last_completion.max(self.window_start))
        } else {
            self.window_end
        };
        let window = Duration::from_nanos(end.saturating_sub(self.window_start));
        for (index, conn) in conns.iter().enumerate().filter(|(_, c)| c.open) {
            self.report_of(index).unanswered += conn.sent.len() as u64;
        }
        let shares = match (&self.cpu_at_start, &self.cpu_at_end) {
            (Some(first), Some(last)) => Some(first.shares(last)),
            _ => None,
        };
        let last_reply = self
            .last_reply
            .map(|ns| self.start + Duration::from_nanos(ns));
        for (i, report) in self.reports.iter_mut().enumerate() {
            report.window = window;
            report.last_reply = last_reply;
            if let Some(shares) = &shares {
                report.server_cpu = shares.servers[i];
                report.generator_cpu = shares.thread;
                report.other_cpu = shares.other;
            }
        }
        self.reports
    }
}
