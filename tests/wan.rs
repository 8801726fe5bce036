//! The WAN stand-in of the test support (`herd_test_support::wan`): a relay delays each
//! direction, jitters without reordering, caps bandwidth, holds a bounded amount while its
//! receiver does not read, counts what crosses, and is cut, blackholed and healed from test
//! code; and a herd spread over two sites floods through its relays, takes a blackholed link
//! down, and is whole again after the heal.
//!
//! The relay tests run against a plain TCP peer on loopback (an echo, a sink, a source, or one
//! that never reads). Timing figures are printed (`cargo test --test wan -- --nocapture`).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herd_test_support::client::time_from_now;
use herd_test_support::harness::{
    self, herd_bin, link_indices, log_time_nanos, read_lossy, refused_places_url, tail, traffic,
    wait_until, HerdConfig,
};
use herd_test_support::wan::{site_ip, Jitter, LinkMode, LinkShape, Relay, Wan, BUFFER_BYTES};

/// Safety net on every read of a test connection; reaching it fails the test.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn any_loopback_port() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

/// What a [`Peer`] does with each connection it accepts.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Writes back everything it reads; half-closes after the sender's EOF.
    Echo,
    /// Reads and counts everything.
    Sink,
    /// Writes this many bytes, then reads and counts everything.
    Source(usize),
    /// Never reads (its receive buffer fills, then the sender's path backs up).
    Stall,
}

/// A plain TCP peer on a loopback port: the target of a relay under test. Every thread it
/// starts ends when it is dropped.
struct Peer {
    addr: SocketAddr,
    shared: Arc<PeerShared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct PeerShared {
    stopping: AtomicBool,
    accepted: AtomicUsize,
    received: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Peer {
    fn start(behaviour: Behaviour) -> Peer {
        let listener = TcpListener::bind(any_loopback_port()).expect("bind a test peer");
        let addr = listener.local_addr().expect("local_addr");
        let shared = Arc::new(PeerShared::default());
        let for_thread = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if for_thread.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                for_thread.accepted.fetch_add(1, Ordering::SeqCst);
                let keep = stream.try_clone().expect("clone a peer stream");
                for_thread.open.lock().unwrap().push(keep);
                let shared = Arc::clone(&for_thread);
                let thread = thread::spawn(move || serve(behaviour, stream, &shared));
                for_thread.threads.lock().unwrap().push(thread);
            }
        });
        Peer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn received(&self) -> u64 {
        self.shared.received.load(Ordering::SeqCst)
    }
}

fn serve(behaviour: Behaviour, mut stream: TcpStream, shared: &PeerShared) {
    let mut buffer = vec![0u8; 64 * 1024];
    match behaviour {
        Behaviour::Stall => return,
        Behaviour::Source(bytes) => {
            if stream.write_all(&vec![b's'; bytes]).is_err() {
                return;
            }
        }
        Behaviour::Echo | Behaviour::Sink => {}
    }
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                shared.received.fetch_add(n as u64, Ordering::SeqCst);
                if matches!(behaviour, Behaviour::Echo) && stream.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wakes the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for thread in self.shared.threads.lock().unwrap().drain(..) {
            let _ = thread.join();
        }
    }
}

/// A blocking connection to `addr` with [`READ_TIMEOUT`] on reads.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `message` and reads it back (through an echo); returns how long that took.
fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Duration {
    let start = Instant::now();
    stream.write_all(message).expect("send");
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).expect("the echo");
    assert_eq!(back, message, "the echo of {message:?}");
    start.elapsed()
}

fn median(durations: &[Duration]) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// True if the connection was closed: the next read sees EOF or a reset (not a timeout).
fn is_closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// True if nothing arrives on `stream` for `window` and it stays open.
fn stays_quiet(stream: &mut TcpStream, window: Duration) -> bool {
    stream.set_read_timeout(Some(window)).unwrap();
    let mut byte = [0u8; 1];
    let quiet = matches!(
        stream.read(&mut byte),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
    );
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    quiet
}

/// Waits until `relay` has counted `to_target` and `from_target` bytes. A relay counts a
/// chunk once the kernel took it, so the receiver may have read it a moment before.
#[track_caller]
fn wait_counts(relay: &Relay, to_target: u64, from_target: u64) {
    let expected = (to_target, from_target);
    wait_until(
        &format!("the relay to count {expected:?} bytes (to the target, back)"),
        Duration::from_secs(5),
        || {
            let counts = (relay.bytes_to_target(), relay.bytes_from_target());
            if counts == expected {
                Ok(())
            } else {
                Err(format!(
                    "counted {counts:?} bytes (to the target, back), expected {expected:?}"
                ))
            }
        },
    );
}

#[test]
fn a_relay_delays_each_direction_by_its_one_way_delay_and_takes_a_new_delay_at_run_time() {
    let echo = Peer::start(Behaviour::Echo);
    let relay = Relay::start(any_loopback_port(), echo.addr, LinkShape::delay_ms(50)).unwrap();
    let mut stream = connect(relay.addr());

    let rtts: Vec<Duration> = (0..6)
        .map(|i| round_trip(&mut stream, format!("ping {i}\n").as_bytes()))
        .collect();
    eprintln!("50 ms each way: round trips {rtts:?}");
    for rtt in &rtts {
        assert!(*rtt >= Duration::from_millis(100), "round trip {rtt:?}");
    }
    let typical = median(&rtts);
    assert!(
        typical < Duration::from_millis(180),
        "median round trip {typical:?} for 2 x 50 ms"
    );

    relay.set_delay(Duration::ZERO);
    let rtts: Vec<Duration> = (0..6)
        .map(|i| round_trip(&mut stream, format!("quick {i}\n").as_bytes()))
        .collect();
    eprintln!("no delay: round trips {rtts:?}");
    assert!(
        median(&rtts) < Duration::from_millis(50),
        "median round trip {:?} with no delay",
        median(&rtts)
    );

    relay.set_delay(Duration::from_millis(20));
    let rtts: Vec<Duration> = (0..6)
        .map(|i| round_trip(&mut stream, format!("twenty {i}\n").as_bytes()))
        .collect();
    eprintln!("20 ms each way: round trips {rtts:?}");
    for rtt in &rtts {
        assert!(*rtt >= Duration::from_millis(40), "round trip {rtt:?}");
    }
    assert!(
        median(&rtts) < Duration::from_millis(120),
        "median round trip {:?} for 2 x 20 ms",
        median(&rtts)
    );
}

#[test]
fn jitter_draws_are_seeded_and_within_bounds() {
    let (delay, jitter) = (Duration::from_millis(40), Duration::from_millis(15));
    let draws = |seed| -> Vec<Duration> {
        let mut jitter_of = Jitter::new(seed);
        (0..1000)
            .map(|_| jitter_of.next_delay(delay, jitter))
            .collect()
    };
    let (first, again, other) = (draws(7), draws(7), draws(8));
    assert_eq!(first, again, "the same seed draws the same delays");
    assert_ne!(first, other, "another seed draws other delays");
    let (low, high) = (delay - jitter, delay + jitter);
    assert!(first.iter().all(|d| (low..=high).contains(d)));
    let mean = first.iter().sum::<Duration>() / first.len() as u32;
    let spread = *first.iter().max().unwrap() - *first.iter().min().unwrap();
    eprintln!("40 ms ± 15 ms: mean {mean:?}, spread {spread:?}");
    assert!(
        mean > Duration::from_millis(38) && mean < Duration::from_millis(42),
        "mean {mean:?}"
    );
    assert!(spread > Duration::from_millis(25), "spread {spread:?}");
    assert_eq!(
        Jitter::new(1).next_delay(delay, Duration::ZERO),
        delay,
        "no jitter, no draw"
    );
}

#[test]
fn jitter_varies_the_delay_but_never_reorders_bytes() {
    let echo = Peer::start(Behaviour::Echo);
    let shape = LinkShape::delay_ms(20).with_jitter_ms(15).with_seed(99);
    let relay = Relay::start(any_loopback_port(), echo.addr, shape).unwrap();
    let stream = connect(relay.addr());
    const MESSAGES: usize = 150;

    // One message every 2 ms, each its own chunk with its own draw each way.
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut sent_at = Vec::new();
        for i in 0..MESSAGES {
            sent_at.push(Instant::now());
            writer.write_all(format!("{i:05}\n").as_bytes()).unwrap();
            thread::sleep(Duration::from_millis(2)); // the pace of the sender, not a wait
        }
        sent_at
    });
    let mut reader = BufReader::new(stream);
    let mut arrived_at = Vec::new();
    for i in 0..MESSAGES {
        let mut line = String::new();
        reader.read_line(&mut line).expect("an echoed message");
        arrived_at.push(Instant::now());
        assert_eq!(line, format!("{i:05}\n"), "message {i} in its place");
    }
    let sent_at = sender.join().unwrap();
    let rtts: Vec<Duration> = arrived_at
        .iter()
        .zip(&sent_at)
        .map(|(arrived, sent)| *arrived - *sent)
        .collect();
    let (min, max) = (*rtts.iter().min().unwrap(), *rtts.iter().max().unwrap());
    eprintln!(
        "20 ms ± 15 ms each way: round trips from {min:?} to {max:?}, median {:?}",
        median(&rtts)
    );
    // Each way takes 5 to 35 ms, so a round trip 10 to 70 ms; a message held behind an
    // earlier, slower one arrives with it, within the same bound. Only the lower bound holds
    // whatever the machine's load; the middle of the spread shows the draws are centred.
    assert!(
        min >= Duration::from_millis(10),
        "fastest round trip {min:?}"
    );
    let typical = median(&rtts);
    assert!(
        typical > Duration::from_millis(30) && typical < Duration::from_millis(70 + 30),
        "median round trip {typical:?} for 2 x (20 ± 15) ms"
    );
    assert!(
        max - min >= Duration::from_millis(15),
        "jitter shows: round trips from {min:?} to {max:?}"
    );
}

#[test]
fn a_bandwidth_cap_holds_toward_the_target() {
    let sink = Peer::start(Behaviour::Sink);
    let shape = LinkShape::default().with_bytes_per_sec(500_000);
    let relay = Relay::start(any_loopback_port(), sink.addr, shape).unwrap();
    let mut stream = connect(relay.addr());
    const BYTES: u64 = 1_000_000;

    let start = Instant::now();
    stream.write_all(&vec![b'b'; BYTES as usize]).unwrap();
    wait_until(
        &format!("the sink to get all {BYTES} bytes"),
        Duration::from_secs(8),
        || match sink.received() {
            BYTES => Ok(()),
            got => Err(format!("the sink got {got} of {BYTES} bytes")),
        },
    );
    let took = start.elapsed();
    let rate = BYTES as f64 / took.as_secs_f64();
    eprintln!("1 MB through 500 KB/s: {took:?} ({rate:.0} B/s)");
    assert!(took >= Duration::from_millis(1980), "1 MB in {took:?}");
    assert!(took < Duration::from_millis(3500), "1 MB in {took:?}");
    wait_counts(&relay, BYTES, 0);
}

#[test]
fn a_bandwidth_cap_set_at_run_time_holds_toward_the_sender() {
    const BYTES: usize = 500_000;
    let source = Peer::start(Behaviour::Source(BYTES));
    let relay = Relay::start(any_loopback_port(), source.addr, LinkShape::default()).unwrap();
    relay.set_bytes_per_sec(Some(500_000));
    let start = Instant::now();
    let mut stream = connect(relay.addr());
    let mut got = vec![0u8; BYTES];
    stream.read_exact(&mut got).expect("the source's bytes");
    let took = start.elapsed();
    eprintln!(
        "500 KB back through 500 KB/s: {took:?} ({:.0} B/s)",
        BYTES as f64 / took.as_secs_f64()
    );
    assert!(took >= Duration::from_millis(980), "500 KB in {took:?}");
    assert!(took < Duration::from_millis(2500), "500 KB in {took:?}");
    assert!(got.iter().all(|&b| b == b's'));
    wait_counts(&relay, 0, BYTES as u64);
}

#[test]
fn bytes_are_counted_each_way() {
    let source = Peer::start(Behaviour::Source(3_000));
    let relay = Relay::start(any_loopback_port(), source.addr, LinkShape::delay_ms(5)).unwrap();
    let mut first = connect(relay.addr());
    let mut second = connect(relay.addr());
    first.write_all(&[b'x'; 10_000]).unwrap();
    second.write_all(&[b'y'; 2_345]).unwrap();
    for stream in [&mut first, &mut second] {
        let mut got = vec![0u8; 3_000];
        stream.read_exact(&mut got).unwrap();
    }
    wait_until(
        "the target to get 12345 bytes",
        Duration::from_secs(5),
        || match source.received() {
            12_345 => Ok(()),
            got => Err(format!("the target got {got} bytes")),
        },
    );
    wait_counts(&relay, 12_345, 6_000);
    assert_eq!((relay.accepted(), relay.relayed()), (2, 2));
    assert_eq!(relay.open_connections(), 2);

    // A connection ended by both sides is forgotten.
    first.shutdown(Shutdown::Write).unwrap();
    assert!(
        is_closed(&mut first),
        "the source half-closes after our EOF"
    );
    wait_until(
        "1 connection open",
        Duration::from_secs(5),
        || match relay.open_connections() {
            1 => Ok(()),
            open => Err(format!("{open} connections open")),
        },
    );
}

#[test]
fn a_cut_closes_every_connection_and_refuses_new_ones_until_healed() {
    let echo = Peer::start(Behaviour::Echo);
    let relay = Relay::start(any_loopback_port(), echo.addr, LinkShape::delay_ms(10)).unwrap();
    let mut before = connect(relay.addr());
    round_trip(&mut before, b"before the cut\n");

    relay.cut();
    assert_eq!(relay.mode(), LinkMode::Cut);
    assert!(
        is_closed(&mut before),
        "a connection open at the cut is closed"
    );
    assert_eq!(relay.open_connections(), 0);

    let mut during = connect(relay.addr());
    let _ = during.write_all(b"anyone?\n");
    assert!(
        is_closed(&mut during),
        "a connection made during the cut is closed"
    );
    wait_until(
        "the relay to have refused 1 connection",
        Duration::from_secs(5),
        || match relay.refused() {
            1 => Ok(()),
            refused => Err(format!("refused {refused}")),
        },
    );
    assert_eq!(
        echo.accepted(),
        1,
        "nothing reached the target during the cut"
    );

    relay.heal();
    let mut after = connect(relay.addr());
    let rtt = round_trip(&mut after, b"after the heal\n");
    assert!(rtt >= Duration::from_millis(20), "round trip {rtt:?}");
    assert_eq!(echo.accepted(), 2);
    assert_eq!(relay.relayed(), 2);
}

#[test]
fn a_blackhole_forwards_nothing_either_way_and_keeps_connections_open_until_healed() {
    let echo = Peer::start(Behaviour::Echo);
    // A long delay, so that an answer is still in flight when the blackhole starts.
    let relay = Relay::start(any_loopback_port(), echo.addr, LinkShape::delay_ms(300)).unwrap();
    let mut held = connect(relay.addr());
    round_trip(&mut held, b"hello\n");

    // "in flight" reaches the echo, whose answer starts back: then the blackhole.
    held.write_all(b"in flight\n").unwrap();
    wait_until(
        "16 bytes to reach the echo",
        Duration::from_secs(5),
        || match relay.bytes_to_target() {
            16 => Ok(()),
            sent => Err(format!("{sent} bytes reached the echo")),
        },
    );
    relay.blackhole();
    held.write_all(b"during\n").unwrap();
    let mut late = connect(relay.addr());
    late.write_all(b"late\n").unwrap();

    // Nothing comes back, nothing goes out, no connection closes, the new one reaches nobody.
    let window = Duration::from_millis(800);
    assert!(
        stays_quiet(&mut held, window),
        "the blackhole let bytes back"
    );
    assert!(stays_quiet(&mut late, Duration::from_millis(50)));
    assert_eq!(
        (relay.bytes_to_target(), relay.bytes_from_target()),
        (16, 6),
        "bytes crossed the blackhole"
    );
    assert_eq!(echo.received(), 16);
    assert_eq!(
        echo.accepted(),
        1,
        "a connection made during the blackhole reached the target"
    );
    assert_eq!((relay.accepted(), relay.open_connections()), (2, 2));
    // The echo's answer on its way back, and what was sent after the blackhole started (the
    // late connection's bytes wait in the kernel: it has no way to the target yet).
    assert_eq!(relay.held_bytes(), "in flight\n".len() + "during\n".len());

    // After the heal, everything held is delivered, in order, on both connections.
    relay.heal();
    let mut reader = BufReader::new(held);
    for expected in ["in flight\n", "during\n"] {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, expected);
    }
    let mut line = String::new();
    BufReader::new(late).read_line(&mut line).unwrap();
    assert_eq!(line, "late\n");
    assert_eq!(echo.accepted(), 2);
    wait_counts(&relay, 16 + 7 + 5, 6 + 10 + 7 + 5);
}

#[test]
fn memory_stays_bounded_while_the_receiver_does_not_read() {
    let stall = Peer::start(Behaviour::Stall);
    let relay = Relay::start(any_loopback_port(), stall.addr, LinkShape::default()).unwrap();
    let mut stream = connect(relay.addr());
    stream.set_nonblocking(true).unwrap();

    // Writes until the whole path backs up: the relay holds its buffer's worth and the
    // sender's writes have stopped going anywhere. Each look writes until the sender's socket
    // is full (or 64 MiB went in: then the path never backs up, and an assertion below says so).
    let chunk = vec![b'm'; 64 * 1024];
    let mut written = 0usize;
    let mut last_progress = Instant::now();
    wait_until(
        "the path to back up: no write went in for 300 ms and the relay's buffer is full",
        Duration::from_secs(10),
        || {
            while written < 64 << 20 {
                match stream.write(&chunk) {
                    Ok(n) => {
                        written += n;
                        last_progress = Instant::now();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            let stuck = last_progress.elapsed() > Duration::from_millis(300);
            if stuck && relay.held_bytes() == BUFFER_BYTES {
                Ok(())
            } else {
                Err(format!(
                    "no back-up after {written} bytes: the relay holds {}",
                    relay.held_bytes()
                ))
            }
        },
    );
    eprintln!(
        "a receiver that never reads: the sender got {written} bytes in before blocking, the \
         relay holds {} (peak {}), {} forwarded",
        relay.held_bytes(),
        relay.peak_held_bytes(),
        relay.bytes_to_target()
    );
    assert!(relay.peak_held_bytes() <= BUFFER_BYTES);
    assert!(written < 64 << 20, "{written} bytes went in");
    assert_eq!(stall.received(), 0);

    // Dropping the relay closes the connection and ends its threads (the drop joins them).
    drop(relay);
    stream.set_nonblocking(false).unwrap();
    assert!(
        is_closed(&mut stream),
        "the sender's connection outlived the relay"
    );
}

/// A herd of servers on their sites' addresses, started from `config`; prints each server's
/// log tail if the test fails.
struct SiteHerd {
    herd: harness::Herd,
}

impl SiteHerd {
    fn start(config: HerdConfig) -> SiteHerd {
        let mut herd = harness::Herd::new(&herd_bin(), config, "wan").unwrap();
        herd.start_all().unwrap_or_else(|e| panic!("{e}"));
        SiteHerd { herd }
    }

    fn index(&self, name: &str) -> usize {
        self.herd.config.index(name).unwrap()
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.herd.config.addrs[self.index(name)]
    }

    fn log(&self, name: &str) -> String {
        read_lossy(&self.herd.log_path(self.index(name)))
    }

    fn count_in_log(&self, name: &str, needle: &str) -> usize {
        self.log(name)
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `at_least` lines of `name`'s log contain `needle`; returns the log.
    #[track_caller]
    fn wait_log(&self, name: &str, needle: &str, at_least: usize, timeout: Duration) -> String {
        let path = self.herd.log_path(self.index(name));
        harness::wait_for_log(&path, needle, at_least, timeout)
    }

    /// One command to `name`, its first reply line.
    fn ask(&self, name: &str, command: &str) -> String {
        let mut stream = connect(self.addr(name));
        stream.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// The AT line `name` holds for `id`, or None.
    fn known(&self, name: &str, id: &str) -> Option<String> {
        let first = self.ask(name, &format!("WHATSAT {id} 1 1"));
        (!first.starts_with("? ")).then_some(first)
    }

    /// Waits until `name` holds `at` for `id` (`what`: what that means); a timeout shows what
    /// it held instead.
    #[track_caller]
    fn wait_known(&self, what: &str, name: &str, id: &str, at: &str, timeout: Duration) {
        wait_until(what, timeout, || match self.known(name, id) {
            Some(held) if held == at => Ok(()),
            held => Err(format!("{name} holds {held:?} for {id}")),
        });
    }
}

impl Drop for SiteHerd {
    fn drop(&mut self) {
        if thread::panicking() {
            for (i, name) in self.herd.config.names.clone().iter().enumerate() {
                self.herd.stop(i, None);
                eprintln!(
                    "----- {name} ({}) log tail -----\n{}",
                    self.herd.config.addrs[i],
                    tail(&read_lossy(&self.herd.log_path(i)), 40)
                );
            }
        }
    }
}

/// The time of the first `recv` (`received`) or `send` record of `log` that carries `line`
/// from or to `peer`'s link.
fn traffic_stamp(log: &str, peer: &str, received: bool, line: &str) -> Option<i128> {
    log.lines().find_map(|record| {
        let t = traffic(record)?;
        (t.received == received && t.peer == Some(peer) && t.line == line).then_some(t.nanos)
    })
}

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// The ping interval of the herd test: a blackholed link is silent for 5 of them (1 s) before
/// herd takes it down (README, `peer ping-ms`).
const PING_MS: u64 = 200;

#[test]
fn a_herd_over_two_sites_floods_through_the_wan_and_rides_out_a_blackhole() {
    // West: Ash and Birch, linked directly. East: Cedar, linked to Birch across the WAN.
    let names = ["Ash", "Birch", "Cedar"];
    let links = link_indices(&names, &[("Ash", "Birch"), ("Birch", "Cedar")]).unwrap();
    let mut config = HerdConfig::new(&names, &links)
        .unwrap()
        .with("peer backoff-min-ms 50")
        .with("peer backoff-max-ms 400")
        .with(&format!("peer ping-ms {PING_MS}"))
        .with(&refused_places_url().unwrap())
        .with("log lines on");
    let wan = Wan::lay_out(
        &mut config,
        &[&["Ash", "Birch"], &["Cedar"]],
        LinkShape::delay_ms(50),
    )
    .unwrap();
    assert_eq!(wan.links().len(), 2, "one relay each way between the sites");
    assert_eq!(config.addrs[0].ip(), site_ip(0));
    assert_eq!(config.addrs[2].ip(), site_ip(1));
    let herd = SiteHerd::start(config);
    let link_timeout = Duration::from_secs(10);
    for (from, to) in [
        ("Ash", "Birch"),
        ("Birch", "Ash"),
        ("Birch", "Cedar"),
        ("Cedar", "Birch"),
    ] {
        herd.wait_log(from, &format!("link sync {to}: sent "), 1, link_timeout);
    }
    for relay in wan.between("Birch", "Cedar") {
        assert!(
            relay.relayed() >= 1,
            "the link to {} is relayed",
            relay.target()
        );
    }

    // An update at Ash reaches Cedar through Birch and the WAN: no sooner than its delay.
    let to_cedar = wan.relay("Birch", "Cedar");
    let sent_before = to_cedar.bytes_to_target();
    let started = Instant::now();
    let kiwi = herd.ask(
        "Ash",
        &format!("IAMAT kiwi.example +34-118 {}", time_from_now(-5)),
    );
    assert!(kiwi.starts_with("AT Ash "), "{kiwi}");
    herd.wait_known(
        &format!("Cedar to learn {kiwi}"),
        "Cedar",
        "kiwi.example",
        &kiwi,
        Duration::from_secs(8),
    );
    let arrived = started.elapsed();
    assert!(
        arrived >= Duration::from_millis(50),
        "at Cedar after {arrived:?}"
    );
    let line_bytes = format!("{kiwi}\n").len() as u64;
    let crossed = || to_cedar.bytes_to_target() - sent_before;
    wait_until(
        &format!("{line_bytes} bytes to cross to Cedar"),
        Duration::from_secs(5),
        || match crossed() {
            bytes if bytes >= line_bytes => Ok(()),
            bytes => Err(format!("{bytes} bytes crossed to Cedar")),
        },
    );
    // The records say the same: sent by Birch, received by Cedar at least 50 ms later (a
    // record's stamp may lag its loop's clock by a millisecond or two).
    let cedar_log = herd.wait_log("Cedar", "peer=Birch AT Ash ", 1, link_timeout);
    let birch_log = herd.wait_log("Birch", "send link=Cedar AT Ash ", 1, link_timeout);
    let sent = traffic_stamp(&birch_log, "Cedar", false, &kiwi).expect("Birch's send record");
    let received = traffic_stamp(&cedar_log, "Birch", true, &kiwi).expect("Cedar's recv record");
    let crossing_ms = (received - sent) as f64 / 1e6;
    eprintln!(
        "Ash -> Cedar: known at Cedar {arrived:?} after the IAMAT; Birch -> Cedar crossing \
         {crossing_ms:.1} ms by the logs"
    );
    assert!(crossing_ms >= 48.0, "crossed in {crossing_ms} ms");

    // A blackholed WAN: both servers take the link down after the pings go unanswered.
    let downs = [
        herd.count_in_log("Birch", "link down Cedar"),
        herd.count_in_log("Cedar", "link down Birch"),
    ];
    let blackholed_at = unix_nanos();
    for relay in wan.between("Birch", "Cedar") {
        relay.blackhole();
    }
    let mut detected_ms = Vec::new();
    for (server, neighbour, before) in [("Birch", "Cedar", downs[0]), ("Cedar", "Birch", downs[1])]
    {
        let needle = format!("link down {neighbour}");
        let log = herd.wait_log(server, &needle, before + 1, Duration::from_secs(10));
        let down = log
            .lines()
            .filter(|l| l.contains(&needle))
            .nth(before)
            .unwrap();
        assert!(down.contains("neighbour silent"), "{down}");
        let at = log_time_nanos(down).unwrap();
        detected_ms.push((at - blackholed_at) as f64 / 1e6);
    }
    eprintln!("blackhole detected after {detected_ms:?} ms (Birch, Cedar)");
    for ms in &detected_ms {
        // Silence is counted from the last answer heard, at most a ping interval and a round
        // trip before the blackhole.
        assert!(
            *ms >= 3.0 * PING_MS as f64,
            "down {ms} ms after the blackhole"
        );
    }

    // What happens meanwhile stays on its side...
    let dusk = herd.ask(
        "Ash",
        &format!("IAMAT dusk.example +1+1 {}", time_from_now(-1)),
    );
    herd.wait_known(
        &format!("Birch to learn {dusk}"),
        "Birch",
        "dusk.example",
        &dusk,
        Duration::from_secs(5),
    );
    assert_eq!(herd.known("Cedar", "dusk.example"), None);

    // ...until the heal: the link comes back up and Cedar catches up.
    let syncs = [
        herd.count_in_log("Birch", "link sync Cedar: sent "),
        herd.count_in_log("Cedar", "link sync Birch: sent "),
    ];
    let healed = Instant::now();
    for relay in wan.between("Birch", "Cedar") {
        relay.heal();
    }
    herd.wait_log(
        "Birch",
        "link sync Cedar: sent ",
        syncs[0] + 1,
        link_timeout,
    );
    herd.wait_log(
        "Cedar",
        "link sync Birch: sent ",
        syncs[1] + 1,
        link_timeout,
    );
    herd.wait_known(
        &format!("Cedar to catch up with {dusk}"),
        "Cedar",
        "dusk.example",
        &dusk,
        Duration::from_secs(8),
    );
    eprintln!(
        "healed: links resynced and Cedar caught up {:?} after the heal",
        healed.elapsed()
    );
}
