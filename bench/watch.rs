//! Timing a flood through the client protocol only: an IAMAT at one server, then WHATSAT for that
//! client at every other server until each answers with an AT line instead of `? ...`.
//!
//! Polls go out in rounds: one WHATSAT to every server that does not know the client yet, then
//! one reply read from each. A server that answers a round with AT learnt the update after it
//! answered the previous round and before it read this one, so the time recorded (the send of
//! its first AT round) is within one loopback round trip of the real arrival. A positive
//! WHATSAT starts a Places lookup the watcher never waits for: that connection is dropped and
//! opened afresh, outside the timing, before the next update.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::commands::{whatsat, Names};

/// A reply slower than this means the server is stuck, not slow.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

struct Line {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Line {
    fn connect(addr: SocketAddr) -> Result<Line, String> {
        let stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| format!("socket options: {e}"))?;
        Ok(Line {
            stream,
            buf: Vec::with_capacity(256),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads one reply line (without its `\n`). Only one command is ever outstanding, so
    /// nothing after the line is lost that a later call would need.
    fn read_line(&mut self) -> Result<Vec<u8>, String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf[..end].to_vec();
                self.buf.drain(..=end);
                return Ok(line);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// An origin server and the servers whose learning of its updates is timed.
pub struct Flood {
    origin: Line,
    addrs: Vec<SocketAddr>,
    watchers: Vec<Option<Line>>,
    names: Names,
    sent: u64,
}

impl Flood {
    pub fn new(origin: SocketAddr, others: &[SocketAddr], names: &Names) -> Result<Flood, String> {
        Ok(Flood {
            origin: Line::connect(origin)?,
            addrs: others.to_vec(),
            watchers: others.iter().map(|_| None).collect(),
            names: names.clone(),
            sent: 0,
        })
    }

    /// Sends one IAMAT for a new client (`{kind}{n}`) at the origin and returns, per other
    /// server, the time from that write until the server was seen to know it; `None` for a
    /// server that did not within `timeout`.
    pub fn sample(&mut self, kind: &str, timeout: Duration) -> Result<Vec<Option<Duration>>, String> {
        for (slot, &addr) in self.watchers.iter_mut().zip(&self.addrs) {
            if slot.is_none() {
                *slot = Some(Line::connect(addr)?);
            }
        }
        self.sent += 1;
        let client = self.names.client(kind, self.sent);
        let iamat = self.names.iamat(&client, self.sent);
        let poll = whatsat(&client, 1, 1);
        let mut known: Vec<Option<Duration>> = vec![None; self.addrs.len()];

        let t0 = Instant::now();
        self.origin.send(&iamat)?;
        let deadline = t0 + timeout;
        loop {
            let round_start = Instant::now();
            let pending: Vec<usize> = (0..known.len()).filter(|&i| known[i].is_none()).collect();
            if pending.is_empty() || round_start >= deadline {
                break;
            }
            for &i in &pending {
                if let Some(line) = &mut self.watchers[i] {
                    line.send(&poll)?;
                }
            }
            for &i in &pending {
                let Some(line) = &mut self.watchers[i] else {
                    continue;
                };
                let reply = line.read_line()?;
                if reply.starts_with(b"AT ") {
                    known[i] = Some(round_start - t0);
                    self.watchers[i] = None;
                } else if !reply.starts_with(b"? ") {
                    return Err(format!(
                        "{}: unexpected reply to WHATSAT: {}",
                        self.addrs[i],
                        String::from_utf8_lossy(&reply)
                    ));
                }
            }
        }
        let reply = self.origin.read_line()?;
        if !reply.starts_with(b"AT ") {
            return Err(format!(
                "origin answered IAMAT with: {}",
                String::from_utf8_lossy(&reply)
            ));
        }
        Ok(known)
    }
}
