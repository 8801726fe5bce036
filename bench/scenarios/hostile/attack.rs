//! The attackers: 2,000 connections on one mio poll, registered for writing only, each topped up
//! with distinct WHATSATs whenever its socket takes more, never read. Writes only; the measuring
//! is done beside them (readings.rs, probe.rs).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use super::{ATTACKERS, BOUND, MAX_LINES_PER_ATTACKER, RADII};
use crate::herd::thread_cpu_secs;

/// Lines added to an attacker's output at a time, when the socket has taken all it had.
const BATCH_LINES: u64 = 128;

/// One attacker: its socket and the lines generated but not yet taken by it.
pub struct Attacker {
    stream: mio::net::TcpStream,
    out: Vec<u8>,
    written: usize,
    lines: u64,
    open: bool,
}

/// What the attackers did over the window.
#[derive(Default)]
pub struct Attack {
    pub bytes: u64,
    /// Lines the sockets took whole.
    pub lines: u64,
    pub dropped: usize,
    pub first_drop: Option<Duration>,
    pub last_drop: Option<Duration>,
    /// Attackers that reached `MAX_LINES_PER_ATTACKER`.
    pub capped: usize,
    /// CPU seconds of the thread that wrote for them.
    pub bench_cpu: Option<f64>,
}

/// The attackers' lines: the `k`-th of the whole run names client `k mod N` with a radius of
/// 1 km + `k / N` metres.
struct Lines<'a> {
    clients: &'a [String],
    next: u64,
}

impl Lines<'_> {
    fn push(&mut self, out: &mut Vec<u8>) {
        let k = self.next;
        self.next += 1;
        let n = self.clients.len() as u64;
        let metres = 1_000 + (k / n) % RADII;
        let client = &self.clients[(k % n) as usize];
        let _ = writeln!(
            out,
            "WHATSAT {client} {}.{:03} {BOUND}",
            metres / 1000,
            metres % 1000
        );
    }
}

/// Opens every attacker's connection (blocking connects, then nonblocking sockets).
pub fn connect_attackers(addr: SocketAddr) -> Result<Vec<Attacker>, String> {
    let mut attackers = Vec::with_capacity(ATTACKERS);
    for i in 0..ATTACKERS {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("attacker {i}: connect: {e}"))?;
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("attacker {i}: {e}"))?;
        attackers.push(Attacker {
            stream: mio::net::TcpStream::from_std(stream),
            out: Vec::with_capacity(8 * 1024),
            written: 0,
            lines: 0,
            open: true,
        });
    }
    Ok(attackers)
}

/// Writes into every attacker as much as its socket takes, whenever it takes more, until
/// `until`; never reads.
pub fn attack(
    attackers: &mut [Attacker],
    clients: &[String],
    start: Instant,
    until: Instant,
) -> Result<Attack, String> {
    let cpu_before = thread_cpu_secs();
    let mut poll = Poll::new().map_err(|e| format!("mio poll: {e}"))?;
    for (i, a) in attackers.iter_mut().enumerate() {
        poll.registry()
            .register(&mut a.stream, Token(i), Interest::WRITABLE)
            .map_err(|e| format!("mio register: {e}"))?;
    }
    let mut lines = Lines { clients, next: 0 };
    let mut report = Attack::default();
    let mut events = Events::with_capacity(1024);
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let wait = (until - now).min(Duration::from_millis(50));
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("mio poll: {e}")),
        }
        for event in events.iter() {
            let Some(a) = attackers.get_mut(event.token().0).filter(|a| a.open) else {
                continue;
            };
            let broken = event.is_error() || event.is_write_closed() || event.is_read_closed();
            if broken || pump(a, &mut lines, &mut report, until).is_err() {
                a.open = false;
                let _ = poll.registry().deregister(&mut a.stream);
                report.dropped_at(start.elapsed());
            }
        }
    }
    for a in attackers.iter() {
        let unsent = a.out[a.written..].iter().filter(|&&b| b == b'\n').count() as u64;
        report.lines += a.lines - unsent;
        report.capped += usize::from(a.lines >= MAX_LINES_PER_ATTACKER);
    }
    report.bench_cpu = thread_cpu_secs().zip(cpu_before).map(|(b, a)| b - a);
    Ok(report)
}

impl Attack {
    /// The server dropped an attacker `at` into the window (its socket failed or hung up).
    fn dropped_at(&mut self, at: Duration) {
        self.dropped += 1;
        self.first_drop.get_or_insert(at);
        self.last_drop = Some(at);
    }
}

/// Writes until the socket takes no more (or this attacker has written its cap).
fn pump(
    a: &mut Attacker,
    lines: &mut Lines,
    report: &mut Attack,
    until: Instant,
) -> io::Result<()> {
    loop {
        if a.written == a.out.len() {
            if a.lines >= MAX_LINES_PER_ATTACKER || Instant::now() >= until {
                return Ok(());
            }
            a.out.clear();
            a.written = 0;
            let batch = BATCH_LINES.min(MAX_LINES_PER_ATTACKER - a.lines);
            for _ in 0..batch {
                lines.push(&mut a.out);
            }
            a.lines += batch;
        }
        match a.stream.write(&a.out[a.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                a.written += n;
                report.bytes += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
