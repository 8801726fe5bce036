//! The event loop's side of the outbound links: connecting, reading the neighbour's answers,
//! writing what the links owe, and taking links down. The decisions (states, timers, backoff,
//! what is owed) are `link::Link`'s; this is where they meet sockets and the `Registry`.

use std::time::Instant;

use log::{info, warn};
use mio::{Interest, Token};

use super::{EventLoop, FIRST_LINK};
use crate::link::{Backlog, Heard, LinkState, TimerAction};
use crate::net::{self, ReadOutcome, Socket};

/// Most bytes one link may write per loop turn, so a million-record resync shares the loop
/// with everything else.
const WRITE_BUDGET_BYTES: usize = 1024 * 1024;

impl EventLoop {
    /// Runs the links' timers: connects that are due, attempts that took too long, pings,
    /// neighbours that fell silent, and sockets that stopped taking bytes.
    pub(super) fn tick_links(&mut self) {
        let now = Instant::now();
        for index in 0..self.links.len() {
            match self.links[index].on_timer(now) {
                TimerAction::Nothing => {}
                TimerAction::Connect => self.start_connect(index, now),
                TimerAction::GiveUp(why) => self.link_down(index, why),
            }
            if self.links[index].backlog(self.app.clients(), now) == Backlog::Stalled {
                let why = format!(
                    "stalled: the neighbour took nothing for {} ms",
                    self.links[index].stall_limit().as_millis()
                );
                self.link_down(index, &why);
            }
        }
    }

    fn start_connect(&mut self, index: usize, now: Instant) {
        let link = &mut self.links[index];
        info!("link connecting {} {}", link.name, link.addr);
        let mut stream = match net::connect(link.addr) {
            Ok(stream) => stream,
            Err(e) => return self.link_down(index, &format!("connect: {e}")),
        };
        let token = Token(FIRST_LINK + index);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::WRITABLE)
        {
            return self.link_down(index, &format!("register: {e}"));
        }
        let socket = Socket {
            stream,
            registered: Interest::WRITABLE,
        };
        link.connecting(socket, now);
    }

    pub(super) fn on_link_event(&mut self, index: usize, event: &mio::event::Event) {
        let Some(link) = self.links.get_mut(index) else {
            return;
        };
        match link.state() {
            LinkState::Connecting { socket, .. } => match net::connect_finished(&socket.stream) {
                Ok(true) => {
                    let greeting = self.app.greeting_to(&link.name);
                    link.connected(greeting, Instant::now());
                    self.write_link(index);
                }
                Ok(false) => {}
                Err(e) => self.link_down(index, &format!("connect: {e}")),
            },
            LinkState::Greeting { .. } | LinkState::Up { .. } => {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read_link(index);
                }
                if event.is_writable() {
                    self.write_link(index);
                }
            }
            // An event for a socket already dropped.
            LinkState::Waiting { .. } | LinkState::Removed => {}
        }
    }

    /// Reads the neighbour's side of our link: its welcome, then nothing but pongs and EOF.
    fn read_link(&mut self, index: usize) {
        loop {
            let link = &mut self.links[index];
            let Some((socket, _)) = link.io() else {
                return;
            };
            match net::read_some(&mut socket.stream, &mut self.scratch) {
                ReadOutcome::Data(n) => {
                    self.counters.bytes_received += n as u64;
                    let now = Instant::now();
                    match link.on_bytes(&self.scratch[..n], self.app.clients(), now) {
                        Heard::Nothing => {}
                        Heard::Welcomed => info!("link up {}", link.name),
                        Heard::Refused(why) => return self.link_refused(index, &why),
                    }
                }
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Eof => return self.link_down(index, "closed by neighbour"),
                ReadOutcome::Failed(e) => return self.link_down(index, &e.to_string()),
            }
        }
    }

    /// Writes what the link's socket takes now and keeps its registration in step.
    fn write_link(&mut self, index: usize) {
        self.persist_records();
        let link = &mut self.links[index];
        let Some((socket, out)) = link.io() else {
            return;
        };
        let written = net::write_pending(&mut socket.stream, out);
        self.counters.lines_sent += out.take_lines();
        let took = match written {
            Ok(took) => took,
            Err(e) => return self.link_down(index, &format!("write: {e}")),
        };
        self.counters.bytes_sent += took as u64;
        link.wrote(took > 0, Instant::now());
        let wanted = link.wanted_interest();
        let Some((socket, _)) = link.io() else {
            return;
        };
        if socket.registered != wanted {
            let token = Token(FIRST_LINK + index);
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut socket.stream, token, wanted)
            {
                return self.link_down(index, &format!("reregister: {e}"));
            }
            socket.registered = wanted;
        }
    }

    /// After each loop turn: turns what each link owes into lines and writes them, until the
    /// socket is full, nothing is owed, or the link's budget for the turn is spent.
    pub(super) fn flush_links(&mut self) {
        for index in 0..self.links.len() {
            let mut budget = WRITE_BUDGET_BYTES;
            loop {
                let link = &mut self.links[index];
                let (filled, resync) = link.fill(self.app.clients());
                if let Some(count) = resync {
                    info!("link sync {}: sent {count} records", link.name);
                }
                if !link.has_pending_output() {
                    break;
                }
                self.write_link(index);
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

    /// Takes a link down, logs why, and schedules the retry.
    pub(super) fn link_down(&mut self, index: usize, reason: &str) {
        self.take_link_down(index, reason, false);
    }

    /// The neighbour answered our hello with anything but a welcome.
    fn link_refused(&mut self, index: usize, reason: &str) {
        self.take_link_down(index, reason, true);
    }

    fn take_link_down(&mut self, index: usize, reason: &str, refused: bool) {
        let link = &mut self.links[index];
        let (socket, delay) = link.down(Instant::now(), self.jitter.next_unit(), refused);
        if let Some(mut socket) = socket {
            let _ = self.poll.registry().deregister(&mut socket.stream);
        }
        warn!("link down {}: {reason}", link.name);
        info!("link retry {} in {} ms", link.name, delay.as_millis());
    }
}
