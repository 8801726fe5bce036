//! A wide-area network on loopback, for tests and benches: this machine's kernel has no netem,
//! so a thin, slow or broken link between two servers is played in user space by a [`Relay`],
//! and servers in different "sites" bind different loopback addresses ([`Wan`]). Nothing here
//! ever connects or listens outside 127.0.0.0/8.
//!
//! # One relay, one directed link
//!
//! A [`Relay`] listens on a loopback address and forwards every connection it accepts to one
//! target address, both ways, shaped by a [`LinkShape`]:
//!
//! - **delay**: each byte is passed on no sooner than `delay` after the relay read it, in each
//!   direction (a round trip through the relay costs twice the delay);
//! - **jitter**: each chunk's delay is drawn from `delay ± jitter` by a generator seeded from
//!   `seed` (the same seed draws the same delays, see [`Jitter`]); a chunk never overtakes the
//!   one before it on its connection, because TCP never reorders bytes;
//! - **bandwidth**: at most `bytes_per_sec` each way (shared by the relay's connections, as
//!   one wire is), a chunk taking `len / bytes_per_sec` on the wire before its delay starts;
//! - **bounded buffering**: at most `buffer_bytes` (64 KiB by default) of a direction are held
//!   by the relay; while that much waits, it reads nothing more from the sender, so the
//!   sender's socket fills up as it would behind a thin link. Memory stays bounded whatever the
//!   sender or a receiver that never reads does. The relay's own sockets keep a small kernel
//!   receive buffer ([`KERNEL_RECEIVE_BYTES`]): on a real path a thin link's queue is the one
//!   the bottleneck keeps, and loopback's kernel buffers (hundreds of KiB, ahead of the relay's
//!   reads and so of its cap) would add a second, larger one that no real path has.
//!
//! Test code drives the link through the handle, at any time:
//!
//! - [`Relay::cut`] closes every connection (what was held is dropped) and, until the heal,
//!   closes each new one as soon as it is accepted. A relay cannot refuse a connect (the kernel
//!   has completed it before the relay hears of it), so the sender sees a connection that ends
//!   before any reply; a target that is down looks the same.
//! - [`Relay::blackhole`] keeps every connection open, and accepts new ones, but forwards
//!   nothing either way: a stalled link, not a closed one. What was held or sent meanwhile is
//!   delivered after the heal, as TCP would retransmit it; a connection made meanwhile reaches
//!   the target only then.
//! - [`Relay::heal`] goes back to forwarding, shaped.
//! - [`Relay::set_shape`] (and `set_delay`, `set_jitter`, `set_bytes_per_sec`) changes the
//!   shape for the bytes read from then on.
//!
//! Counters say what crossed: [`Relay::bytes_to_target`] and [`Relay::bytes_from_target`]
//! count bytes written out, over every connection; [`Relay::held_bytes`] is what waits in the
//! relay now; [`Relay::accepted`], [`Relay::relayed`] and [`Relay::refused`] count
//! connections.
//!
//! Not modelled: loss (TCP would hide it as delay), resets (a closed side is passed on as a
//! close), and connection set-up time.
//!
//! ```text
//! let echo = ...;                                       // something listening on loopback
//! let relay = Relay::start(([127, 0, 0, 1], 0).into(), echo_addr,
//!                          LinkShape::delay_ms(50).with_bytes_per_sec(500_000))?;
//! let stream = TcpStream::connect(relay.addr())?;      // 100 ms round trips to the echo
//! relay.blackhole();  ...  relay.heal();
//! ```
//!
//! Threads: one accepts; each connection has a reader and a writer per direction. Dropping the
//! relay closes every connection and joins every thread it started.
//!
//! # Sites: a herd spread over a WAN
//!
//! In herd a link A->B is A's own connection to B's listen address, so two neighbours keep two
//! connections, and the WAN between their sites is two relays: A's link to B goes through
//! relay A->B (listening on B's site address, forwarding to B), B's link to A through relay
//! B->A. [`Wan::lay_out`] does this for a [`HerdConfig`]: the servers of site `k` move to
//! [`site_ip`]`(k)` (127.0.0.2, 127.0.0.3, ...; all of 127.0.0.0/8 is loopback on Linux), each
//! link between two sites gets its two relays, and the config's routes send each server's link
//! through them; links within a site stay direct.
//!
//! ```text
//! let mut config = HerdConfig::new(&names, &links)?.with("peer ping-ms 200");
//! let wan = Wan::lay_out(&mut config, &[&["Ash", "Birch"], &["Cedar"]], LinkShape::delay_ms(50))?;
//! let herd = harness::Herd::new(&herd_bin(), config, "wan")?;   // start it as usual
//! wan.relay("Birch", "Cedar").bytes_to_target();  // what Birch sent Cedar, hellos and pings too
//! for relay in wan.between("Birch", "Cedar") { relay.blackhole(); }
//! ```
//!
//! The servers then listen on their sites' addresses: talk to them at `config.addrs[i]` (the
//! port-only helpers that assume 127.0.0.1, such as [`crate::client::Client::connect`], do not
//! reach them). A test that needs no sites can put a single relay in a
//! [`crate::cluster::Herd`] instead: `Relay::start(([127, 0, 0, 1], 0).into(), ([127, 0, 0,
//! 1], herd.port("Yew")).into(), shape)`, then `herd.route("Xu", "Yew", relay.port())`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::harness::HerdConfig;

/// Default bytes a relay holds per direction of a connection (the queue of a thin link).
pub const BUFFER_BYTES: usize = 64 * 1024;
/// Largest chunk read at once; with a bandwidth cap, chunks hold about 10 ms of it, so bytes
/// trickle out at the capped rate instead of in bursts.
const MAX_CHUNK_BYTES: usize = 16 * 1024;
const MIN_CHUNK_BYTES: usize = 512;
/// The kernel receive buffer asked for on each socket the relay reads (the kernel doubles it
/// for its bookkeeping): what a sender can push past the relay's own buffer.
pub const KERNEL_RECEIVE_BYTES: usize = 16 * 1024;
/// How long the relay waits for its target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a relay shapes each direction of its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkShape {
    /// One-way delay, each direction.
    pub delay: Duration,
    /// Each chunk's delay is drawn from `delay - jitter ..= delay + jitter` (never below 0).
    pub jitter: Duration,
    /// Cap on bytes per second, each direction; None for no cap.
    pub bytes_per_sec: Option<u64>,
    /// Most bytes held per direction of a connection (at least 1).
    pub buffer_bytes: usize,
    /// Seeds the jitter draws.
    pub seed: u64,
}

impl Default for LinkShape {
    /// No delay, no jitter, no cap, [`BUFFER_BYTES`] of buffer.
    fn default() -> LinkShape {
        LinkShape {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            bytes_per_sec: None,
            buffer_bytes: BUFFER_BYTES,
            seed: 1,
        }
    }
}

impl LinkShape {
    /// A link with this one-way delay, nothing else.
    pub fn delay_ms(ms: u64) -> LinkShape {
        LinkShape {
            delay: Duration::from_millis(ms),
            ..LinkShape::default()
        }
    }

    pub fn with_jitter_ms(self, ms: u64) -> LinkShape {
        LinkShape {
            jitter: Duration::from_millis(ms),
            ..self
        }
    }

    pub fn with_bytes_per_sec(self, bytes_per_sec: u64) -> LinkShape {
        LinkShape {
            bytes_per_sec: Some(bytes_per_sec.max(1)),
            ..self
        }
    }

    pub fn with_buffer_bytes(self, buffer_bytes: usize) -> LinkShape {
        LinkShape {
            buffer_bytes: buffer_bytes.max(1),
            ..self
        }
    }

    pub fn with_seed(self, seed: u64) -> LinkShape {
        LinkShape { seed, ..self }
    }

    /// How much one read takes: about 10 ms of the capped rate, else [`MAX_CHUNK_BYTES`].
    fn chunk_bytes(&self) -> usize {
        match self.bytes_per_sec {
            Some(rate) => {
                (rate / 100).clamp(MIN_CHUNK_BYTES as u64, MAX_CHUNK_BYTES as u64) as usize
            }
            None => MAX_CHUNK_BYTES,
        }
    }

    /// How long `bytes` take on the wire at the capped rate.
    fn wire_time(&self, bytes: usize) -> Duration {
        match self.bytes_per_sec {
            Some(rate) => {
                Duration::from_nanos((bytes as u128 * 1_000_000_000 / rate as u128) as u64)
            }
            None => Duration::ZERO,
        }
    }
}

/// The delays of one stream of chunks: `delay ± jitter`, drawn uniformly by a splitmix64
/// generator, so a seed always gives the same sequence. Each direction of each connection of a
/// relay has its own, seeded from the relay's seed, the connection's number and the direction.
#[derive(Clone, Debug)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next delay: `delay` moved by a uniform draw from `-jitter..=jitter`, at least 0.
    /// With no jitter it is `delay` and nothing is drawn.
    pub fn next_delay(&mut self, delay: Duration, jitter: Duration) -> Duration {
        let jitter_nanos = jitter.as_nanos().min(u64::MAX as u128 / 4) as i128;
        if jitter_nanos == 0 {
            return delay;
        }
        let offset = (self.next_u64() as u128 % (2 * jitter_nanos as u128 + 1)) as i128;
        let nanos = delay.as_nanos() as i128 + offset - jitter_nanos;
        Duration::from_nanos(nanos.clamp(0, u64::MAX as i128) as u64)
    }
}

/// What a relay does with connections now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Forwards, shaped.
    Open,
    /// Keeps connections (and accepts new ones) but forwards nothing either way.
    Blackholed,
    /// Has closed every connection; closes each new one as soon as it is accepted.
    Cut,
}

/// Direction indices: from the accepted connection to the target, and back.
const TO_TARGET: usize = 0;
const FROM_TARGET: usize = 1;

/// A loopback TCP relay that plays one directed WAN link (see the module header). Every
/// thread it starts ends, and every connection it holds is closed, when it is dropped.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// What the relay's threads share.
struct Shared {
    target: SocketAddr,
    /// Mirrors `State::mode == Blackholed`, for the pipes, which check it under their own
    /// lock (see [`Shared::poke_pipes`]).
    blackholed: AtomicBool,
    state: Mutex<State>,
    /// Signalled on every mode change (connections waiting out a blackhole wait on it).
    mode_changed: Condvar,
    bytes: [AtomicU64; 2],
    held_bytes: AtomicUsize,
    peak_held_bytes: AtomicUsize,
}

struct State {
    mode: LinkMode,
    shape: LinkShape,
    stopping: bool,
    /// When the wire of each direction is next free (the bandwidth cap's clock).
    wire_free_at: [Instant; 2],
    /// Connections not yet over.
    live: Vec<Arc<Conn>>,
    /// Every thread started for a connection and not yet joined.
    threads: Vec<JoinHandle<()>>,
    accepted: usize,
    relayed: usize,
    refused: usize,
}

/// One accepted connection: the socket to the sender, the one to the target once connected,
/// and a pipe per direction.
struct Conn {
    number: u64,
    accepted: TcpStream,
    upstream: Mutex<Option<TcpStream>>,
    closed: AtomicBool,
    pipes: [Pipe; 2],
    /// Directions whose end of stream has not been passed on yet.
    open_directions: AtomicUsize,
}

/// One direction of a connection: the chunks read and not yet written.
struct Pipe {
    queue: Mutex<Queue>,
    changed: Condvar,
}

struct Queue {
    chunks: VecDeque<Chunk>,
    /// Bytes held: queued, plus the chunk being written.
    bytes: usize,
    /// The connection is over: nothing more is read or written.
    closed: bool,
    /// The latest due time given so far (no chunk is due before the one ahead of it).
    last_due: Instant,
    jitter: Jitter,
}

/// Bytes to write at `due`; empty for the end of the stream (a half-close passed on).
struct Chunk {
    bytes: Vec<u8>,
    due: Instant,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Option<JoinHandle<()>> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .ok()
}

impl Relay {
    /// A relay listening on `listen` (port 0: any free port) that forwards to `target` (which
    /// need not be listening yet: a connection the target refuses is closed). Both must be
    /// loopback addresses. Err says why it could not start.
    pub fn start(
        listen: SocketAddr,
        target: SocketAddr,
        shape: LinkShape,
    ) -> Result<Relay, String> {
        for addr in [listen, target] {
            if !addr.ip().is_loopback() {
                return Err(format!("{addr} is not a loopback address"));
            }
        }
        let listener = TcpListener::bind(listen)
            .map_err(|e| format!("cannot bind a relay on {listen}: {e}"))?;
        // Accepted connections take the listener's buffer size from their first packet on.
        small_receive_buffer(&listener);
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let now = Instant::now();
        let shared = Arc::new(Shared {
            target,
            blackholed: AtomicBool::new(false),
            state: Mutex::new(State {
                mode: LinkMode::Open,
                shape: LinkShape {
                    buffer_bytes: shape.buffer_bytes.max(1),
                    ..shape
                },
                stopping: false,
                wire_free_at: [now; 2],
                live: Vec::new(),
                threads: Vec::new(),
                accepted: 0,
                relayed: 0,
                refused: 0,
            }),
            mode_changed: Condvar::new(),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            held_bytes: AtomicUsize::new(0),
            peak_held_bytes: AtomicUsize::new(0),
        });
        let for_thread = Arc::clone(&shared);
        let acceptor = spawn(&format!("relay {addr}"), move || {
            accept_loop(listener, for_thread)
        })
        .ok_or("cannot start a relay thread")?;
        Ok(Relay {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where the relay listens: what a sender connects to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Closes every connection (both sockets; what was held is dropped) and, until
    /// [`heal`](Relay::heal), closes each new connection as soon as it is accepted.
    pub fn cut(&self) {
        self.shared.set_mode(LinkMode::Cut);
    }

    /// Keeps every connection open and accepts new ones, but forwards nothing either way
    /// until [`heal`](Relay::heal); what was held, or sent meanwhile, is delivered after it.
    pub fn blackhole(&self) {
        self.shared.set_mode(LinkMode::Blackholed);
    }

    /// Back to forwarding, shaped; new connections are relayed again.
    pub fn heal(&self) {
        self.shared.set_mode(LinkMode::Open);
    }

    pub fn mode(&self) -> LinkMode {
        lock(&self.shared.state).mode
    }

    pub fn shape(&self) -> LinkShape {
        lock(&self.shared.state).shape
    }

    /// A new shape for every byte read from now on (bytes already held keep their due times);
    /// `buffer_bytes` applies to reads from now on too, `seed` to connections accepted from
    /// now on.
    pub fn set_shape(&self, shape: LinkShape) {
        let mut state = lock(&self.shared.state);
        state.shape = LinkShape {
            buffer_bytes: shape.buffer_bytes.max(1),
            ..shape
        };
        // A larger buffer may let a waiting reader go on.
        self.shared.poke_pipes(&state);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.set_shape(LinkShape {
            delay,
            ..self.shape()
        });
    }

    pub fn set_jitter(&self, jitter: Duration) {
        self.set_shape(LinkShape {
            jitter,
            ..self.shape()
        });
    }

    /// A cap in bytes per second each way; None lifts it.
    pub fn set_bytes_per_sec(&self, bytes_per_sec: Option<u64>) {
        self.set_shape(LinkShape {
            bytes_per_sec: bytes_per_sec.map(|rate| rate.max(1)),
            ..self.shape()
        });
    }

    /// Bytes written to the target so far, over every connection.
    pub fn bytes_to_target(&self) -> u64 {
        self.shared.bytes[TO_TARGET].load(Ordering::SeqCst)
    }

    /// Bytes written back to the senders so far, over every connection.
    pub fn bytes_from_target(&self) -> u64 {
        self.shared.bytes[FROM_TARGET].load(Ordering::SeqCst)
    }

    /// Bytes the relay holds now (read, not yet written), over every connection and direction.
    pub fn held_bytes(&self) -> usize {
        self.shared.held_bytes.load(Ordering::SeqCst)
    }

    /// The most [`held_bytes`](Relay::held_bytes) ever were.
    pub fn peak_held_bytes(&self) -> usize {
        self.shared.peak_held_bytes.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (relayed, held or refused).
    pub fn accepted(&self) -> usize {
        lock(&self.shared.state).accepted
    }

    /// Connections that reached the target so far.
    pub fn relayed(&self) -> usize {
        lock(&self.shared.state).relayed
    }

    /// Connections closed without reaching the target: accepted while cut, or refused by it.
    pub fn refused(&self) -> usize {
        lock(&self.shared.state).refused
    }

    /// Connections open now (relayed or held by a blackhole).
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.state).live.len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.shared.state);
            state.stopping = true;
            state.mode = LinkMode::Cut;
            self.shared.blackholed.store(false, Ordering::SeqCst);
            for conn in mem::take(&mut state.live) {
                conn.close(&self.shared);
            }
            self.shared.mode_changed.notify_all();
        }
        // The acceptor blocks in accept(2): one more connection wakes it to see `stopping`.
        // Should that fail, it is left behind rather than waited for forever.
        if let Some(acceptor) = self.acceptor.take() {
            if TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok() {
                let _ = acceptor.join();
            }
        }
        // Connection threads may start others until they see the connection closed; join
        // until none is left.
        loop {
            let threads = mem::take(&mut lock(&self.shared.state).threads);
            if threads.is_empty() {
                break;
            }
            for thread in threads {
                let _ = thread.join();
            }
        }
    }
}

impl Shared {
    fn set_mode(&self, mode: LinkMode) {
        let mut state = lock(&self.state);
        if state.stopping {
            return;
        }
        state.mode = mode;
        self.blackholed
            .store(mode == LinkMode::Blackholed, Ordering::SeqCst);
        if mode == LinkMode::Cut {
            for conn in mem::take(&mut state.live) {
                conn.close(self);
            }
        }
        self.poke_pipes(&state);
        self.mode_changed.notify_all();
    }

    /// Wakes every pipe thread to look at the mode and shape again. Taking each pipe's lock
    /// before notifying means a thread that checked the old mode under it is already waiting,
    /// so the wake-up is not lost.
    fn poke_pipes(&self, state: &State) {
        for conn in &state.live {
            for pipe in &conn.pipes {
                drop(lock(&pipe.queue));
                pipe.changed.notify_all();
            }
        }
    }

    /// Forgets a connection that is over.
    fn forget(&self, conn: &Conn) {
        lock(&self.state).live.retain(|c| c.number != conn.number);
    }

    fn hold(&self, bytes: usize) {
        let now = self.held_bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak_held_bytes.fetch_max(now, Ordering::SeqCst);
    }

    fn release(&self, bytes: usize) {
        self.held_bytes.fetch_sub(bytes, Ordering::SeqCst);
    }
}

impl Conn {
    /// Ends the connection: drops what its pipes hold, wakes their threads and shuts both
    /// sockets down (which wakes a thread blocked reading or writing them).
    fn close(&self, shared: &Shared) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        for pipe in &self.pipes {
            let mut queue = lock(&pipe.queue);
            queue.closed = true;
            queue.chunks.clear();
            shared.release(mem::take(&mut queue.bytes));
            drop(queue);
            pipe.changed.notify_all();
        }
        let _ = self.accepted.shutdown(Shutdown::Both);
        if let Some(upstream) = lock(&self.upstream).as_ref() {
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }

    /// Ends the connection from one of its own threads (an error on either socket: one half
    /// of a conversation gone means the conversation is over).
    fn abort(&self, shared: &Shared) {
        self.close(shared);
        shared.forget(self);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut number = 0u64;
    for incoming in listener.incoming() {
        let mut state = lock(&shared.state);
        if state.stopping {
            return;
        }
        reap_finished(&mut state.threads);
        let Ok(accepted) = incoming else {
            drop(state);
            thread::sleep(Duration::from_millis(10)); // out of descriptors: let some close
            continue;
        };
        state.accepted += 1;
        if state.mode == LinkMode::Cut {
            state.refused += 1;
            continue; // dropped: the sender sees its connection end
        }
        let Ok(accepted_handle) = accepted.try_clone() else {
            state.refused += 1;
            continue;
        };
        number += 1;
        let now = Instant::now();
        let pipe = |direction: u64| Pipe {
            queue: Mutex::new(Queue {
                chunks: VecDeque::new(),
                bytes: 0,
                closed: false,
                last_due: now,
                jitter: Jitter::new(
                    state.shape.seed ^ number.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ direction,
                ),
            }),
            changed: Condvar::new(),
        };
        let conn = Arc::new(Conn {
            number,
            accepted: accepted_handle,
            upstream: Mutex::new(None),
            closed: AtomicBool::new(false),
            pipes: [pipe(TO_TARGET as u64), pipe(FROM_TARGET as u64)],
            open_directions: AtomicUsize::new(2),
        });
        state.live.push(Arc::clone(&conn));
        let for_thread = Arc::clone(&shared);
        match spawn(&format!("relay conn {number}"), move || {
            run_connection(for_thread, conn, accepted)
        }) {
            Some(thread) => state.threads.push(thread),
            None => {
                if let Some(conn) = state.live.pop() {
                    conn.close(&shared);
                }
            }
        }
    }
}

/// Joins the connection threads that have ended, so a long-lived relay keeps no handles of
/// connections long gone.
fn reap_finished(threads: &mut Vec<JoinHandle<()>>) {
    let (finished, running): (Vec<_>, Vec<_>) = mem::take(threads)
        .into_iter()
        .partition(|t| t.is_finished());
    *threads = running;
    for thread in finished {
        let _ = thread.join();
    }
}

/// Connects one accepted connection to the target (after a blackhole, if one is on: until
/// then the connection is held, as a stalled network holds it), then starts its four pipe
/// threads.
fn run_connection(shared: Arc<Shared>, conn: Arc<Conn>, accepted: TcpStream) {
    {
        let mut state = lock(&shared.state);
        while state.mode == LinkMode::Blackholed && !conn.closed.load(Ordering::SeqCst) {
            state = wait(&shared.mode_changed, state);
        }
        if conn.closed.load(Ordering::SeqCst) {
            return;
        }
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
        lock(&shared.state).refused += 1;
        conn.abort(&shared);
        return;
    };
    // Each chunk goes out when it is due: Nagle's wait for an ACK would add to the delay.
    let _ = upstream.set_nodelay(true);
    small_receive_buffer(&upstream);
    let _ = accepted.set_nodelay(true);
    let clones = (
        accepted.try_clone(),
        upstream.try_clone(),
        upstream.try_clone(),
    );
    let (Ok(accepted_out), Ok(upstream_in), Ok(upstream_handle)) = clones else {
        conn.abort(&shared);
        return;
    };
    let mut state = lock(&shared.state);
    if conn.closed.load(Ordering::SeqCst) {
        // Cut (or dropped) while connecting.
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    }
    *lock(&conn.upstream) = Some(upstream_handle);
    state.relayed += 1;
    // (direction, writes to the stream (else reads it), stream)
    let ends = [
        (TO_TARGET, false, accepted),
        (TO_TARGET, true, upstream),
        (FROM_TARGET, false, upstream_in),
        (FROM_TARGET, true, accepted_out),
    ];
    for (direction, writes, stream) in ends {
        let (for_shared, for_conn) = (Arc::clone(&shared), Arc::clone(&conn));
        let role = if writes { "write" } else { "read" };
        let name = format!("relay conn {} {role} {direction}", conn.number);
        let thread = if writes {
            spawn(&name, move || {
                write_pipe(&for_shared, &for_conn, direction, stream)
            })
        } else {
            spawn(&name, move || {
                read_pipe(&for_shared, &for_conn, direction, stream)
            })
        };
        match thread {
            Some(thread) => state.threads.push(thread),
            None => {
                drop(state);
                conn.abort(&shared);
                return;
            }
        }
    }
}

/// Asks for [`KERNEL_RECEIVE_BYTES`] of kernel receive buffer on `socket`; a failure leaves
/// the kernel's default (a looser relay, never a broken one).
fn small_receive_buffer(socket: &impl std::os::fd::AsRawFd) {
    let value = KERNEL_RECEIVE_BYTES as libc::c_int;
    // SAFETY: the descriptor is open for the life of `socket`, and the option value is a
    // c_int whose size is passed along with its address.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Reads one direction's sender into its pipe: while the pipe has room and the link is not
/// blackholed, a chunk at a time, each given the time it is due at the other end.
fn read_pipe(shared: &Shared, conn: &Conn, direction: usize, mut from: TcpStream) {
    let pipe = &conn.pipes[direction];
    let mut buffer = vec![0u8; MAX_CHUNK_BYTES];
    loop {
        let shape = lock(&shared.state).shape;
        let room = {
            let mut queue = lock(&pipe.queue);
            loop {
                if queue.closed {
                    return;
                }
                let blackholed = shared.blackholed.load(Ordering::SeqCst);
                if !blackholed && queue.bytes < shape.buffer_bytes {
                    break shape.buffer_bytes - queue.bytes;
                }
                queue = wait(&pipe.changed, queue);
            }
        };
        let want = room.min(shape.chunk_bytes());
        let read = match from.read(&mut buffer[..want]) {
            Ok(read) => read,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                conn.abort(shared);
                return;
            }
        };
        // The shape as it is now: a change made while the read waited applies to its bytes.
        let mut state = lock(&shared.state);
        let shape = state.shape;
        let now = Instant::now();
        let start = now.max(state.wire_free_at[direction]);
        let off_the_wire = start + shape.wire_time(read);
        state.wire_free_at[direction] = off_the_wire;
        drop(state);
        let mut queue = lock(&pipe.queue);
        if queue.closed {
            return;
        }
        let delay = queue.jitter.next_delay(shape.delay, shape.jitter);
        let due = (off_the_wire + delay).max(queue.last_due);
        queue.last_due = due;
        queue.chunks.push_back(Chunk {
            bytes: buffer[..read].to_vec(),
            due,
        });
        queue.bytes += read;
        shared.hold(read);
        drop(queue);
        pipe.changed.notify_all();
        if read == 0 {
            return; // the end of the stream is queued behind the last bytes
        }
    }
}

/// Writes one direction's pipe to its receiver, each chunk when it is due and the link is not
/// blackholed; passes the end of the stream on as a half-close.
fn write_pipe(shared: &Shared, conn: &Conn, direction: usize, mut to: TcpStream) {
    let pipe = &conn.pipes[direction];
    loop {
        let chunk = {
            let mut queue = lock(&pipe.queue);
            loop {
                if queue.closed {
                    return;
                }
                let head_due = queue.chunks.front().map(|chunk| chunk.due);
                match head_due {
                    Some(due) if !shared.blackholed.load(Ordering::SeqCst) => {
                        let now = Instant::now();
                        if due <= now {
                            break queue.chunks.pop_front();
                        }
                        queue = pipe
                            .changed
                            .wait_timeout(queue, due - now)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0;
                    }
                    _ => queue = wait(&pipe.changed, queue),
                }
            }
        };
        let Some(chunk) = chunk else { continue };
        if chunk.bytes.is_empty() {
            let _ = to.shutdown(Shutdown::Write);
            if conn.open_directions.fetch_sub(1, Ordering::SeqCst) == 1 {
                shared.forget(conn); // both ways ended: the connection is over
            }
            return;
        }
        if to.write_all(&chunk.bytes).is_err() {
            conn.abort(shared);
            return;
        }
        shared.bytes[direction].fetch_add(chunk.bytes.len() as u64, Ordering::SeqCst);
        let mut queue = lock(&pipe.queue);
        if queue.closed {
            return; // closing released what the queue held, this chunk included
        }
        queue.bytes -= chunk.bytes.len();
        shared.release(chunk.bytes.len());
        drop(queue);
        pipe.changed.notify_all();
    }
}

/// The loopback address of site `k` (from 0): 127.0.0.(k + 2), so no site shares 127.0.0.1
/// with the tests that run beside it.
pub fn site_ip(k: usize) -> Ipv4Addr {
    assert!(k < 250, "at most 250 sites");
    Ipv4Addr::new(127, 0, 0, k as u8 + 2)
}

/// `n` distinct ports of `ip` that were free a moment ago (held together, then released).
pub fn free_ports_on(ip: Ipv4Addr, n: usize) -> Result<Vec<SocketAddr>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((ip, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot bind a port on {ip}: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

/// One direction of a herd link that crosses the WAN: `from`'s link to `to`, through `relay`.
pub struct WanLink {
    pub from: String,
    pub to: String,
    pub relay: Relay,
}

/// A herd's servers spread over sites, with a [`Relay`] for each direction of each link
/// between two sites (see the module header). Dropping it stops every relay.
pub struct Wan {
    links: Vec<WanLink>,
    /// Per server, in config order: its site.
    sites: Vec<usize>,
    names: Vec<String>,
}

impl Wan {
    /// Puts the servers of `sites[k]` on [`site_ip`]`(k)`, each on a free port (every server
    /// of `config` must be in exactly one site), starts two relays shaped by `shape` for each
    /// of its links between different sites, each listening on its target's site address,
    /// and routes the links through them (no route of the config may already name such a
    /// pair). Each relay's jitter has its own seed, derived from `shape.seed`.
    pub fn lay_out(
        config: &mut HerdConfig,
        sites: &[&[&str]],
        shape: LinkShape,
    ) -> Result<Wan, String> {
        let mut site_of = vec![None; config.names.len()];
        for (k, site) in sites.iter().enumerate() {
            for name in site.iter() {
                let i = config
                    .index(name)
                    .ok_or_else(|| format!("site {k} names {name}, not a server of the herd"))?;
                if site_of[i].replace(k).is_some() {
                    return Err(format!("{name} is in two sites"));
                }
            }
        }
        let site_of = site_of
            .iter()
            .zip(&config.names)
            .map(|(site, name)| site.ok_or_else(|| format!("{name} is in no site")))
            .collect::<Result<Vec<usize>, String>>()?;
        for k in 0..sites.len() {
            let members: Vec<usize> = (0..site_of.len()).filter(|&i| site_of[i] == k).collect();
            for (i, addr) in members
                .iter()
                .zip(free_ports_on(site_ip(k), members.len())?)
            {
                config.addrs[*i] = addr;
            }
        }
        let mut links = Vec::new();
        for &(a, b) in &config.links.clone() {
            if site_of[a] == site_of[b] {
                continue;
            }
            for (from, to) in [(a, b), (b, a)] {
                if config.routes.iter().any(|r| (r.0, r.1) == (from, to)) {
                    return Err(format!(
                        "{} already has a route to {}",
                        config.names[from], config.names[to]
                    ));
                }
                let seed = shape.seed ^ ((links.len() as u64 + 1).wrapping_mul(0x9E37_79B9));
                let listen = SocketAddr::from((site_ip(site_of[to]), 0));
                let relay = Relay::start(listen, config.addrs[to], shape.with_seed(seed))?;
                config.routes.push((from, to, relay.addr()));
                links.push(WanLink {
                    from: config.names[from].clone(),
                    to: config.names[to].clone(),
                    relay,
                });
            }
        }
        Ok(Wan {
            links,
            sites: site_of,
            names: config.names.clone(),
        })
    }

    /// Every relayed direction of every link between sites.
    pub fn links(&self) -> &[WanLink] {
        &self.links
    }

    /// The relay `from`'s link to `to` goes through; panics if that link is not relayed.
    pub fn relay(&self, from: &str, to: &str) -> &Relay {
        self.links
            .iter()
            .find(|link| link.from == from && link.to == to)
            .map(|link| &link.relay)
            .unwrap_or_else(|| panic!("no relayed link from {from} to {to}"))
    }

    /// Both relays of the link between `a` and `b` (`a`'s to `b`, then `b`'s to `a`).
    pub fn between(&self, a: &str, b: &str) -> [&Relay; 2] {
        [self.relay(a, b), self.relay(b, a)]
    }

    /// The site of server `name`.
    pub fn site(&self, name: &str) -> usize {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no server {name}"));
        self.sites[i]
    }

    /// Every relay on a link between site `a` and site `b`, both directions: cutting or
    /// blackholing them all splits the two sites apart.
    pub fn between_sites(&self, a: usize, b: usize) -> Vec<&Relay> {
        self.links
            .iter()
            .filter(|link| {
                let sites = (self.site(&link.from), self.site(&link.to));
                sites == (a, b) || sites == (b, a)
            })
            .map(|link| &link.relay)
            .collect()
    }
}
