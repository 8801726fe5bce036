//! The load generator: C connections in one mio poll loop on one thread, P commands in flight
//! on each, every read and write batched (one syscall carries as many commands or replies as
//! are ready). A command is timed from the write that carried it to the read that completed its
//! reply; replies on one connection come back in command order (SPEC section 2), so a FIFO of
//! send times per connection matches them. It knows nothing of servers or scenarios.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::hist::Histogram;

/// What the reply to a command looks like, so the reader knows where it ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    /// One line: IAMAT's AT line, or `? ...`.
    Line,
    /// WHATSAT: `? ...` alone, or the AT line, the JSON, and an empty line.
    Whatsat,
}

/// A source of commands.
pub trait Workload {
    /// Appends one command for connection `conn` to `out` and says what its reply looks like;
    /// `None` when a bounded run has issued everything.
    fn next_command(&mut self, conn: usize, out: &mut Vec<u8>) -> Option<Expect>;
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
        }
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
    /// Commands still unanswered when the drain ran out.
    pub unanswered: u64,
    /// Why a connection ended early, when one did.
    pub closed: Option<String>,
}

impl LoadReport {
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
    out: Vec<u8>,
    written: usize,
    sent: VecDeque<(u64, Expect)>,
    line_len: usize,
    line_first: u8,
    in_whatsat_body: bool,
    open: bool,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            out: Vec::with_capacity(16 * 1024),
            written: 0,
            sent: VecDeque::new(),
            line_len: 0,
            line_first: 0,
            in_whatsat_body: false,
            open: true,
        }
    }

    /// Appends the next command; false when the workload is exhausted.
    fn issue(&mut self, index: usize, work: &mut dyn Workload, now_ns: u64) -> bool {
        match work.next_command(index, &mut self.out) {
            Some(expect) => {
                self.sent.push_back((now_ns, expect));
                true
            }
            None => false,
        }
    }

    /// Writes until everything is out or the socket is full (mio is edge-triggered: the next
    /// WRITABLE event says when to go on).
    fn flush(&mut self) -> io::Result<()> {
        while self.written < self.out.len() {
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

    /// Feeds received bytes through the reply framing; calls `done(sent_ns, is_error)` for
    /// every reply completed. Returns the number of lines that matched no command.
    fn parse(&mut self, data: &[u8], mut done: impl FnMut(u64, bool)) -> u64 {
        let mut unexpected = 0;
        for &byte in data {
            if byte != b'\n' {
                if self.line_len == 0 {
                    self.line_first = byte;
                }
                self.line_len += 1;
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
                Expect::Line => Some(first != b'A'),
                Expect::Whatsat if self.in_whatsat_body => {
                    if empty {
                        self.in_whatsat_body = false;
                        Some(false)
                    } else {
                        None
                    }
                }
                Expect::Whatsat if first == b'?' => Some(true),
                Expect::Whatsat => {
                    self.in_whatsat_body = true;
                    None
                }
            };
            if let Some(is_error) = complete {
                self.sent.pop_front();
                done(sent_ns, is_error);
            }
        }
        unexpected
    }
}

/// Opens the connections, keeps `in_flight` commands outstanding on each for the warm-up plus
/// the window, then waits (bounded) for what is still owed.
pub fn run_load(spec: &LoadSpec, work: &mut dyn Workload) -> Result<LoadReport, String> {
    let mut poll = Poll::new().map_err(|e| format!("mio poll: {e}"))?;
    let mut conns = Vec::with_capacity(spec.connections);
    for index in 0..spec.connections {
        let stream = std::net::TcpStream::connect_timeout(&spec.addr, Duration::from_secs(3))
            .map_err(|e| format!("connect to {} (connection {}): {e}", spec.addr, index + 1))?;
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
        conns.push(Conn::new(stream));
    }

    let start = Instant::now();
    let ns_since_start = |t: Instant| t.duration_since(start).as_nanos() as u64;
    let window_start = spec.warmup.as_nanos() as u64;
    let mut window_end = window_start + spec.duration.as_nanos() as u64;
    let drain_ns = spec.drain.as_nanos() as u64;
    let mut report = LoadReport::default();
    let mut scratch = vec![0u8; 256 * 1024];
    let mut events = Events::with_capacity(1024);
    let mut outstanding: u64 = 0;
    let mut exhausted = false;
    let mut draining_since: Option<u64> = None;
    let mut last_completion = 0;
    let mut open = conns.len();

    for (index, conn) in conns.iter_mut().enumerate() {
        for _ in 0..spec.in_flight {
            if !conn.issue(index, work, 0) {
                exhausted = true;
                break;
            }
            outstanding += 1;
        }
        conn.flush().map_err(|e| format!("write: {e}"))?;
    }

    loop {
        let now = ns_since_start(Instant::now());
        if draining_since.is_none() {
            let stopped = spec.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
            if stopped {
                window_end = window_end.min(now);
            }
            if now >= window_end || (exhausted && outstanding == 0) || open == 0 {
                window_end = window_end.min(now);
                draining_since = Some(now);
            }
        }
        if let Some(since) = draining_since {
            if outstanding == 0 || open == 0 || now.saturating_sub(since) >= drain_ns {
                break;
            }
        }
        let wait_ns = match draining_since {
            Some(since) => (since + drain_ns).saturating_sub(now),
            None => window_end.saturating_sub(now),
        };
        let timeout = Duration::from_nanos(wait_ns.min(50_000_000));
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("mio poll: {e}"));
        }
        for event in events.iter() {
            let index = event.token().0;
            let Some(conn) = conns.get_mut(index) else {
                continue;
            };
            if !conn.open {
                continue;
            }
            let mut failure = None;
            loop {
                match conn.stream.read(&mut scratch) {
                    Ok(0) => {
                        failure = Some("the server closed a connection".to_string());
                        break;
                    }
                    Ok(n) => {
                        let now = ns_since_start(Instant::now());
                        let mut answered = 0;
                        let unexpected = conn.parse(&scratch[..n], |sent_ns, is_error| {
                            answered += 1;
                            if sent_ns >= window_start {
                                report.latency.record(now - sent_ns);
                            }
                            if now >= window_start && now < window_end {
                                report.completed += 1;
                            }
                            if is_error {
                                report.errors += 1;
                            }
                        });
                        report.errors += unexpected;
                        outstanding -= answered;
                        last_completion = now;
                        if draining_since.is_none() && !exhausted {
                            for _ in 0..answered {
                                if !conn.issue(index, work, now) {
                                    exhausted = true;
                                    break;
                                }
                                outstanding += 1;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failure = Some(format!("read: {e}"));
                        break;
                    }
                }
            }
            if failure.is_none() {
                if let Err(e) = conn.flush() {
                    failure = Some(format!("write: {e}"));
                }
            }
            if let Some(why) = failure {
                conn.open = false;
                open -= 1;
                outstanding -= conn.sent.len() as u64;
                report.closed.get_or_insert(why);
            }
        }
    }

    let end = if exhausted {
        window_end.min(last_completion.max(window_start))
    } else {
        window_end
    };
    report.window = Duration::from_nanos(end.saturating_sub(window_start));
    report.unanswered = outstanding;
    Ok(report)
}
