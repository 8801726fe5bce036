//! One outbound link to a neighbour (SPEC section 3): its stage, its socket, its bounded output
//! queue and its retry backoff. The link carries this server's updates to the neighbour; the
//! neighbour's updates arrive on the link it opens to us, as an accepted connection.
//!
//! Socket calls and registration are the event loop's; the decisions here are pure.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Interest;

use crate::backoff::Backoff;
use crate::buffer::{LineReader, OutBuffer};
use crate::peer_wire::PING_LINE;
use crate::store::RecordIndex;

/// How long a connect may take before the attempt counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the neighbour may take to answer the hello.
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(5);
/// A resync refills the queue only below this, so a million records stream in slices
/// instead of being copied into memory at once.
pub const SYNC_LOW_WATER_BYTES: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Down; the next attempt is due at `retry_at`.
    Waiting { retry_at: Instant },
    /// A nonblocking connect is in flight.
    Connecting { deadline: Instant },
    /// Connected and the hello sent; waiting for the neighbour's welcome.
    Greeting { deadline: Instant },
    /// Accepted. While `sync_cursor` is `Some`, the whole client table is streaming to the
    /// neighbour in index order, from that index on. A ping goes out at `ping_due`; a
    /// neighbour not heard from since `last_heard` plus the silence limit is taken for gone.
    Up {
        sync_cursor: Option<RecordIndex>,
        last_heard: Instant,
        ping_due: Instant,
    },
}

/// What a link's timers call for now.
#[derive(Debug, PartialEq, Eq)]
pub enum TimerAction {
    Nothing,
    /// The retry is due: start a connect.
    Connect,
    /// A ping was queued.
    Pinged,
    /// Take the link down, for this reason.
    GiveUp(&'static str),
}

pub struct Link {
    pub name: String,
    pub addr: SocketAddr,
    pub stage: Stage,
    pub stream: Option<TcpStream>,
    pub reader: LineReader,
    pub out: OutBuffer,
    pub backoff: Backoff,
    pub ping_interval: Duration,
    pub silence_limit: Duration,
    /// The interest the socket is registered with, if it is registered.
    pub registered: Option<Interest>,
    /// The last write stopped at `WouldBlock`: wait for a writable event before writing again.
    pub write_blocked: bool,
}

impl Link {
    /// A link that will make its first attempt at `now`.
    pub fn new(
        name: &str,
        addr: SocketAddr,
        backoff: Backoff,
        ping_interval: Duration,
        silence_limit: Duration,
        now: Instant,
    ) -> Link {
        Link {
            name: name.to_string(),
            addr,
            stage: Stage::Waiting { retry_at: now },
            stream: None,
            reader: LineReader::new(4096),
            out: OutBuffer::default(),
            backoff,
            ping_interval,
            silence_limit,
            registered: None,
            write_blocked: false,
        }
    }

    /// When the loop must look at this link again, whatever the sockets do.
    pub fn deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Waiting { retry_at } => Some(retry_at),
            Stage::Connecting { deadline } | Stage::Greeting { deadline } => Some(deadline),
            Stage::Up {
                last_heard,
                ping_due,
                ..
            } => Some(ping_due.min(last_heard + self.silence_limit)),
        }
    }

    /// Acts on whichever of the link's deadlines has passed.
    pub fn on_timer(&mut self, now: Instant) -> TimerAction {
        match &mut self.stage {
            Stage::Waiting { retry_at } if *retry_at <= now => TimerAction::Connect,
            Stage::Connecting { deadline } if *deadline <= now => {
                TimerAction::GiveUp("connect timed out")
            }
            Stage::Greeting { deadline } if *deadline <= now => {
                TimerAction::GiveUp("no welcome in time")
            }
            Stage::Up { last_heard, .. } if *last_heard + self.silence_limit <= now => {
                TimerAction::GiveUp("neighbour silent, no answer to pings")
            }
            Stage::Up { ping_due, .. } if *ping_due <= now => {
                *ping_due = now + self.ping_interval;
                self.out.push(PING_LINE);
                TimerAction::Pinged
            }
            _ => TimerAction::Nothing,
        }
    }

    /// Something arrived from the neighbour: it is alive.
    pub fn heard(&mut self, now: Instant) {
        if let Stage::Up { last_heard, .. } = &mut self.stage {
            *last_heard = now;
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.stage, Stage::Up { .. })
    }

    /// Whether a live update of `record` must be queued: only on a link that is up, and not
    /// when a resync still to reach `record` will send it anyway (each update crosses a link
    /// a bounded number of times).
    pub fn wants_live_update(&self, record: RecordIndex) -> bool {
        match self.stage {
            Stage::Up {
                sync_cursor: None, ..
            } => true,
            Stage::Up {
                sync_cursor: Some(cursor),
                ..
            } => record < cursor,
            _ => false,
        }
    }

    pub fn wanted_interest(&self) -> Interest {
        match self.stage {
            Stage::Connecting { .. } => Interest::WRITABLE,
            _ if self.out.is_empty() => Interest::READABLE,
            _ => Interest::READABLE | Interest::WRITABLE,
        }
    }

    /// The connect finished: queue the hello and wait for the welcome.
    pub fn connected(&mut self, hello: &[u8], now: Instant) {
        self.out.push(hello);
        self.stage = Stage::Greeting {
            deadline: now + GREETING_TIMEOUT,
        };
    }

    /// The neighbour accepted us: start the resync from the first record.
    pub fn welcomed(&mut self, now: Instant) {
        self.backoff.reset();
        self.stage = Stage::Up {
            sync_cursor: Some(0),
            last_heard: now,
            ping_due: now + self.ping_interval,
        };
    }

    /// Where a running resync has got to (`None` when none runs).
    pub fn sync_cursor(&self) -> Option<RecordIndex> {
        match self.stage {
            Stage::Up { sync_cursor, .. } => sync_cursor,
            _ => None,
        }
    }

    /// Moves a running resync on to `cursor`, or ends it (`None`).
    pub fn set_sync_cursor(&mut self, cursor: Option<RecordIndex>) {
        if let Stage::Up { sync_cursor, .. } = &mut self.stage {
            *sync_cursor = cursor;
        }
    }

    /// Takes the link down: the socket (already deregistered by the caller) is dropped with
    /// everything queued, and the next attempt is scheduled. Returns the delay.
    pub fn down(&mut self, now: Instant, jitter: f64) -> Duration {
        self.stream = None;
        self.registered = None;
        self.write_blocked = false;
        self.out = OutBuffer::default();
        self.reader = LineReader::new(4096);
        let delay = self.backoff.next_delay(jitter);
        self.stage = Stage::Waiting {
            retry_at: now + delay,
        };
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: Duration = Duration::from_millis(1000);
    const SILENCE: Duration = Duration::from_millis(5000);

    fn link(now: Instant) -> Link {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(5000));
        Link::new(
            "Bona",
            "127.0.0.1:1".parse().unwrap(),
            backoff,
            PING,
            SILENCE,
            now,
        )
    }

    fn link_up_and_synced(now: Instant) -> Link {
        let mut l = link(now);
        l.connected(b"HERD-HELLO A\n", now);
        l.welcomed(now);
        l.set_sync_cursor(None);
        l.out = OutBuffer::default();
        l
    }

    #[test]
    fn a_new_link_tries_at_once() {
        let now = Instant::now();
        assert_eq!(link(now).deadline(), Some(now));
    }

    #[test]
    fn connected_sends_the_hello_and_waits_for_a_welcome() {
        let now = Instant::now();
        let mut l = link(now);
        l.connected(b"HERD-HELLO A\n", now);
        assert_eq!(l.out.pending(), b"HERD-HELLO A\n");
        assert_eq!(l.deadline(), Some(now + GREETING_TIMEOUT));
        assert!(!l.is_up());
        assert!(!l.wants_live_update(0));
    }

    #[test]
    fn welcomed_starts_a_resync_from_the_first_record() {
        let now = Instant::now();
        let mut l = link(now);
        l.connected(b"x\n", now);
        l.welcomed(now);
        assert_eq!(l.sync_cursor(), Some(0));
        assert_eq!(l.deadline(), Some(now + PING));
    }

    #[test]
    fn live_updates_skip_records_the_resync_will_send() {
        let now = Instant::now();
        let mut l = link_up_and_synced(now);
        assert!(l.wants_live_update(7));
        l.set_sync_cursor(Some(5));
        assert!(l.wants_live_update(4));
        assert!(!l.wants_live_update(5));
        assert!(!l.wants_live_update(9));
    }

    #[test]
    fn down_drops_the_queue_and_backs_off() {
        let now = Instant::now();
        let mut l = link_up_and_synced(now);
        l.out.push(b"AT ...\n");
        let first = l.down(now, 0.5);
        assert!(l.out.is_empty());
        assert_eq!(l.deadline(), Some(now + first));
        let second = l.down(now, 0.5);
        assert!(second > first);
        l.welcomed(now);
        let after_up = l.down(now, 0.5);
        assert_eq!(after_up, first);
    }

    #[test]
    fn a_quiet_link_pings_and_a_silent_one_gives_up() {
        let now = Instant::now();
        let mut l = link_up_and_synced(now);
        assert_eq!(l.on_timer(now), TimerAction::Nothing);
        assert_eq!(l.on_timer(now + PING), TimerAction::Pinged);
        assert_eq!(l.out.pending(), b"HERD-PING\n");
        assert_eq!(l.deadline(), Some(now + 2 * PING));
        l.heard(now + PING + Duration::from_millis(1));
        assert_eq!(l.on_timer(now + SILENCE), TimerAction::Pinged);
        let later = now + PING + Duration::from_millis(1) + SILENCE;
        assert!(matches!(l.on_timer(later), TimerAction::GiveUp(_)));
    }

    #[test]
    fn timers_before_the_link_is_up() {
        let now = Instant::now();
        let mut l = link(now);
        assert_eq!(l.on_timer(now), TimerAction::Connect);
        l.stage = Stage::Connecting { deadline: now };
        assert!(matches!(l.on_timer(now), TimerAction::GiveUp(_)));
        l.connected(b"x\n", now);
        assert_eq!(l.on_timer(now), TimerAction::Nothing);
        assert!(matches!(
            l.on_timer(now + GREETING_TIMEOUT),
            TimerAction::GiveUp(_)
        ));
    }

    #[test]
    fn interest_follows_the_stage_and_the_queue() {
        let now = Instant::now();
        let mut l = link(now);
        l.stage = Stage::Connecting { deadline: now };
        assert_eq!(l.wanted_interest(), Interest::WRITABLE);
        let mut l = link_up_and_synced(now);
        l.out = OutBuffer::default();
        assert_eq!(l.wanted_interest(), Interest::READABLE);
        l.out.push(b"x");
        assert_eq!(l.wanted_interest(), Interest::READABLE | Interest::WRITABLE);
    }
}
