//! Reading what servers store about many clients, through the client protocol: WHATSATs
//! pipelined on a few connections per server (one mio poll over all of them), each reply's
//! first line (the stored AT line, or `? ` for a client the server does not know) reduced to
//! the client time it carries. Asks are grouped in rounds per server; a round is done when its
//! last reply has arrived, and says when that was.
//!
//! The bench points Places at a refused port with one worker and a queue of one, so a WHATSAT
//! that finds its client is answered at once (with an error JSON, mostly `429`) and a round of
//! hundreds costs a server about what as many IAMATs would.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::commands::{parse_client_time, whatsat};

/// WHATSATs outstanding on one connection at most: enough to keep a server busy, few enough
/// that the replies waiting (~250 bytes each) stay far below the server's output limit.
const WINDOW: usize = 256;

/// One finished round: each asked client (an index into the survey's ids) with the client time
/// the server stored for it (`None`: unknown to it), when it was asked, and when the last reply
/// arrived.
pub struct Round {
    pub server: usize,
    pub answers: Vec<(u32, Option<u128>)>,
    pub asked_at: Instant,
    pub last_reply: Instant,
}

/// One connection: bytes to write, clients still to ask, clients asked in order, the reply
/// line being read, and whether the current reply is in its JSON part.
struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    written: usize,
    queued: VecDeque<u32>,
    asked: VecDeque<u32>,
    line: Vec<u8>,
    time: Option<u128>,
    in_body: bool,
}

/// A server's current round: when it was asked, replies still owed and those received.
struct Pending {
    asked_at: Instant,
    owed: usize,
    answers: Vec<(u32, Option<u128>)>,
    last_reply: Option<Instant>,
}

impl Pending {
    fn new(owed: usize) -> Pending {
        Pending {
            asked_at: Instant::now(),
            owed,
            answers: Vec::with_capacity(owed),
            last_reply: None,
        }
    }
}

pub struct Survey {
    poll: Poll,
    conns: Vec<Conn>,
    per_server: usize,
    pending: Vec<Pending>,
    /// The client ids an ask refers to by index.
    ids: Vec<String>,
    /// Connection of a server the next ask goes to, so asks are dealt out in turn.
    next_conn: Vec<usize>,
}

impl Survey {
    /// Opens `per_server` connections to each server (blocking connects, 3 s each at most).
    pub fn connect(
        addrs: &[SocketAddr],
        per_server: usize,
        ids: &[String],
    ) -> Result<Survey, String> {
        let poll = Poll::new().map_err(|e| format!("mio poll: {e}"))?;
        let mut conns = Vec::new();
        for &addr in addrs {
            for _ in 0..per_server {
                let std = StdStream::connect_timeout(&addr, Duration::from_secs(3))
                    .map_err(|e| format!("connect to {addr}: {e}"))?;
                std.set_nodelay(true)
                    .and_then(|()| std.set_nonblocking(true))
                    .map_err(|e| format!("socket options: {e}"))?;
                let mut stream = TcpStream::from_std(std);
                poll.registry()
                    .register(
                        &mut stream,
                        Token(conns.len()),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(|e| format!("mio register: {e}"))?;
                conns.push(Conn {
                    stream,
                    out: Vec::new(),
                    written: 0,
                    queued: VecDeque::new(),
                    asked: VecDeque::new(),
                    line: Vec::new(),
                    time: None,
                    in_body: false,
                });
            }
        }
        Ok(Survey {
            poll,
            conns,
            per_server,
            pending: (0..addrs.len()).map(|_| Pending::new(0)).collect(),
            ids: ids.to_vec(),
            next_conn: vec![0; addrs.len()],
        })
    }

    /// Starts a round at `server` asking about `clients` (indices into the ids); the server
    /// must have no round in progress.
    pub fn ask(&mut self, server: usize, clients: &[u32]) -> Result<(), String> {
        let pending = &mut self.pending[server];
        if pending.owed > 0 {
            return Err(format!("server {server} still owes a round"));
        }
        *pending = Pending::new(clients.len());
        for &client in clients {
            let at = server * self.per_server + self.next_conn[server];
            self.next_conn[server] = (self.next_conn[server] + 1) % self.per_server;
            self.conns[at].queued.push_back(client);
        }
        for at in server * self.per_server..(server + 1) * self.per_server {
            self.fill_and_flush(at)?;
        }
        Ok(())
    }

    /// Whether `server` has a round in progress.
    pub fn busy(&self, server: usize) -> bool {
        self.pending[server].owed > 0
    }

    /// Waits until at least one round is done or `until` passes; the rounds done (none when
    /// `until` passed first).
    pub fn wait(&mut self, until: Instant) -> Result<Vec<Round>, String> {
        let mut events = Events::with_capacity(256);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let done = self.take_done();
            let now = Instant::now();
            if !done.is_empty() || now >= until {
                return Ok(done);
            }
            match self.poll.poll(&mut events, Some(until - now)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("mio poll: {e}")),
            }
            for event in events.iter() {
                let at = event.token().0;
                self.read(at, &mut chunk)?;
                self.fill_and_flush(at)?;
            }
        }
    }

    fn take_done(&mut self) -> Vec<Round> {
        let mut done = Vec::new();
        for (server, pending) in self.pending.iter_mut().enumerate() {
            if pending.owed == 0 {
                if let Some(last_reply) = pending.last_reply.take() {
                    done.push(Round {
                        server,
                        answers: std::mem::take(&mut pending.answers),
                        asked_at: pending.asked_at,
                        last_reply,
                    });
                }
            }
        }
        done
    }

    /// Moves queued asks into the output while the window allows, and writes what it can.
    fn fill_and_flush(&mut self, at: usize) -> Result<(), String> {
        let conn = &mut self.conns[at];
        while conn.asked.len() < WINDOW {
            let Some(client) = conn.queued.pop_front() else {
                break;
            };
            conn.out
                .extend_from_slice(&whatsat(&self.ids[client as usize], 1, 1));
            conn.asked.push_back(client);
        }
        while conn.written < conn.out.len() {
            match conn.stream.write(&conn.out[conn.written..]) {
                Ok(0) => return Err("write: connection closed".into()),
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if conn.written == conn.out.len() {
            conn.out.clear();
            conn.written = 0;
        }
        Ok(())
    }

    /// Reads everything a connection has received and completes the replies in it.
    fn read(&mut self, at: usize, chunk: &mut [u8]) -> Result<(), String> {
        let server = at / self.per_server;
        loop {
            let n = match self.conns[at].stream.read(chunk) {
                Ok(0) => return Err("a server closed a survey connection".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let now = Instant::now();
            for &byte in &chunk[..n] {
                if byte != b'\n' {
                    self.conns[at].line.push(byte);
                    continue;
                }
                if let Some(answer) = self.end_line(at)? {
                    let pending = &mut self.pending[server];
                    pending.answers.push(answer);
                    pending.owed -= 1;
                    pending.last_reply = Some(now);
                }
            }
        }
    }

    /// Handles one complete reply line; the answer when it ends a reply.
    fn end_line(&mut self, at: usize) -> Result<Option<(u32, Option<u128>)>, String> {
        let conn = &mut self.conns[at];
        let mut line = std::mem::take(&mut conn.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let Some(&client) = conn.asked.front() else {
            return Err(format!(
                "a reply nobody asked for: {}",
                String::from_utf8_lossy(&line)
            ));
        };
        let finished = if conn.in_body {
            // The error JSON, up to the empty line that ends a WHATSAT reply.
            conn.in_body = !line.is_empty();
            (!conn.in_body).then_some(conn.time)
        } else if line.starts_with(b"? ") {
            Some(None)
        } else if line.starts_with(b"AT ") {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let id = self.ids[client as usize].as_bytes();
            if fields.len() != 6 || fields[3] != id {
                return Err(format!(
                    "WHATSAT {} answered with {}",
                    self.ids[client as usize],
                    String::from_utf8_lossy(&line)
                ));
            }
            conn.time = parse_client_time(fields[5]);
            conn.in_body = true;
            None
        } else {
            return Err(format!(
                "unexpected reply to WHATSAT: {}",
                String::from_utf8_lossy(&line)
            ));
        };
        line.clear();
        conn.line = line;
        Ok(finished.map(|time| {
            conn.asked.pop_front();
            conn.time = None;
            (client, time)
        }))
    }
}
