//! The event loop's side of the outbound links: connecting, greeting, reading the neighbour's
//! answers, writing floods and resyncs, and taking links down. The decisions (stages, timers,
//! backoff) are `link::Link`'s; this is where they meet sockets and the `Registry`.

use std::time::Instant;

use log::{info, warn};
use mio::{Interest, Token};

use super::{wall_clock, EventLoop, FIRST_LINK, SYNC_BUDGET_BYTES};
use crate::buffer::Line;
use crate::link::{self, TimerAction};
use crate::logging::{traffic, Direction::Recv, Direction::Send, Escaped, Party};
use crate::net::{self, ReadOutcome};
use crate::peer_wire;

impl EventLoop {
    /// Runs the links' timers: connects that are due, attempts that took too long, pings,
    /// and neighbours that fell silent.
    pub(super) fn tick_links(&mut self) {
        let now = Instant::now();
        for index in 0..self.links.len() {
            match self.links[index].on_timer(now) {
                TimerAction::Nothing => {}
                TimerAction::Connect => self.start_connect(index, now),
                TimerAction::Pinged => {
                    if self.log_lines {
                        let name = &self.links[index].name;
                        let ping = peer_wire::PING_LINE.strip_suffix(b"\n").unwrap_or_default();
                        traffic(Send, Party::Link(name), ping);
                    }
                }
                TimerAction::GiveUp(why) => self.link_down(index, why),
            }
        }
    }

    pub(super) fn start_connect(&mut self, index: usize, now: Instant) {
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
        link.stream = Some(stream);
        link.registered = Some(Interest::WRITABLE);
        link.stage = link::Stage::Connecting {
            deadline: now + link::CONNECT_TIMEOUT,
        };
    }

    pub(super) fn on_link_event(&mut self, index: usize, event: &mio::event::Event) {
        let Some(link) = self.links.get_mut(index) else {
            return;
        };
        match link.stage {
            link::Stage::Connecting { .. } => {
                let Some(stream) = &link.stream else { return };
                match net::connect_finished(stream) {
                    Ok(true) => {
                        let hello = self.app.hello_to(&link.name, wall_clock());
                        if self.log_lines {
                            let shown = hello.strip_suffix(b"\n").unwrap_or(&hello);
                            traffic(Send, Party::Link(&link.name), shown);
                        }
                        link.connected(&hello, Instant::now());
                        self.write_link(index);
                    }
                    Ok(false) => {}
                    Err(e) => self.link_down(index, &format!("connect: {e}")),
                }
            }
            link::Stage::Greeting { .. } | link::Stage::Up { .. } => {
                if event.is_writable() {
                    link.write_blocked = false;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read_link(index);
                }
                if event.is_writable() {
                    self.write_link(index);
                }
            }
            link::Stage::Waiting { .. } => {} // an event for a socket already dropped
        }
    }

    /// Reads the neighbour's side of our link: its welcome, then nothing but EOF.
    pub(super) fn read_link(&mut self, index: usize) {
        let link = &mut self.links[index];
        let mut verdict: Option<Result<(), String>> = None;
        loop {
            let Some(stream) = link.stream.as_mut() else {
                return;
            };
            match net::read_some(stream, &mut self.scratch) {
                ReadOutcome::Data(n) => {
                    let now = Instant::now();
                    link.heard(now);
                    let greeting = matches!(link.stage, link::Stage::Greeting { .. });
                    let name = &link.name;
                    let log_lines = self.log_lines;
                    link.reader.feed(&self.scratch[..n], |line| {
                        let line = match line {
                            Line::Complete(line) | Line::TooLong(line) => line,
                        };
                        if log_lines {
                            traffic(Recv, Party::Link(name), line);
                        }
                        if verdict.is_some() || !greeting {
                            return; // after the welcome only pongs come back
                        }
                        verdict = Some(match peer_wire::parse_welcome(line) {
                            Some(_) => Ok(()),
                            None => Err(format!("refused: {}", Escaped(line))),
                        });
                    });
                    match verdict.take() {
                        Some(Ok(())) => {
                            link.welcomed(now);
                            info!("link up {}", link.name);
                            self.sync_pending = true;
                        }
                        Some(Err(why)) => return self.link_down(index, &why),
                        None => {}
                    }
                }
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Eof => return self.link_down(index, "closed by neighbour"),
                ReadOutcome::Failed(e) => return self.link_down(index, &e.to_string()),
            }
        }
    }

    /// Writes what the link's socket takes now and keeps its registration in step.
    pub(super) fn write_link(&mut self, index: usize) {
        let link = &mut self.links[index];
        let Some(stream) = link.stream.as_mut() else {
            return;
        };
        if let Err(e) = net::write_pending(stream, &mut link.out) {
            return self.link_down(index, &format!("write: {e}"));
        }
        link.write_blocked = !link.out.is_empty();
        let wanted = link.wanted_interest();
        if link.registered != Some(wanted) {
            let token = Token(FIRST_LINK + index);
            let Some(stream) = link.stream.as_mut() else {
                return;
            };
            if let Err(e) = self.poll.registry().reregister(stream, token, wanted) {
                return self.link_down(index, &format!("reregister: {e}"));
            }
            link.registered = Some(wanted);
        }
    }

    /// After each loop turn: streams resyncs, drops links whose queue overflowed, and writes
    /// what floods queued (one write per link per turn, however many updates).
    pub(super) fn flush_links(&mut self) {
        self.sync_pending = false;
        for index in 0..self.links.len() {
            let mut budget = SYNC_BUDGET_BYTES;
            loop {
                let filled = self.fill_sync(index);
                budget = budget.saturating_sub(filled);
                let link = &self.links[index];
                if link.out.len() > self.max_link_queue_bytes {
                    let why = format!("queue over {} bytes", self.max_link_queue_bytes);
                    self.link_down(index, &why);
                    break;
                }
                if link.out.is_empty() || link.write_blocked {
                    break;
                }
                self.write_link(index);
                if filled == 0 {
                    break;
                }
                if budget == 0 {
                    self.sync_pending = true;
                    break;
                }
            }
        }
    }

    /// Tops up a resyncing link's queue from the client table; returns the bytes added.
    pub(super) fn fill_sync(&mut self, index: usize) -> usize {
        let link = &mut self.links[index];
        let Some(mut cursor) = link.sync_cursor() else {
            return 0;
        };
        let table = self.app.clients();
        let before = link.out.len();
        while link.out.len() < link::SYNC_LOW_WATER_BYTES {
            let Some(line) = table.line_at(cursor) else {
                break;
            };
            if self.log_lines {
                traffic(Send, Party::Link(&link.name), line);
            }
            link.out.push(line);
            link.out.push(b"\n");
            cursor += 1;
        }
        let done = cursor >= table.len();
        link.set_sync_cursor((!done).then_some(cursor));
        if done {
            // The stream starts at record 0, so where it ends is how many it sent.
            info!("link sync {}: sent {cursor} records", link.name);
        }
        link.out.len() - before
    }

    /// Takes a link down, logs why, and schedules the retry.
    pub(super) fn link_down(&mut self, index: usize, reason: &str) {
        let link = &mut self.links[index];
        if let Some(mut stream) = link.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        let delay = link.down(Instant::now(), self.jitter.next_unit());
        warn!("link down {}: {reason}", link.name);
        info!("link retry {} in {} ms", link.name, delay.as_millis());
    }
}
