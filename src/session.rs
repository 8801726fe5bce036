//! What the lines of one read do: a client's commands answered in order (or handed to Places),
//! a neighbour's updates applied and flooded on. One `ClientSession` borrows, for the length of
//! one read, everything a line may touch; it makes no socket calls (the loop writes after).

use log::{info, warn};

use crate::app::{App, ClientOutcome, PeerOutcome};
use crate::buffer::{Line, OutBuffer};
use crate::config::PlacesApi;
use crate::conn::{ReplyQueue, Stage};
use crate::link::Link;
use crate::logging::{traffic, Direction::Recv, Direction::Send, Escaped, Party};
use crate::places::{shape_reply, LookupJob, PlacesError, PlacesOutcome, PlacesPool};
use crate::protocol::{self, ClientTime};
use crate::store::{ClientTable, RecordIndex};

/// Everything one client line may touch, borrowed from the loop for the length of one read.
pub struct ClientSession<'a> {
    pub key: usize,
    pub conn_id: u64,
    pub stage: &'a mut Stage,
    pub peer: &'a mut Option<String>,
    pub out: &'a mut OutBuffer,
    pub replies: &'a mut ReplyQueue,
    pub app: &'a mut App,
    pub links: &'a mut [Link],
    pub places: &'a PlacesPool,
    pub places_api: PlacesApi,
    pub log_lines: bool,
    pub now: ClientTime,
}

impl ClientSession<'_> {
    pub fn handle_line(&mut self, line: Line<'_>) {
        if let Stage::Closed(_) = self.stage {
            return; // the rest of the chunk from a dropped neighbour is ignored
        }
        if self.peer.is_some() {
            self.handle_peer_line(line);
            return;
        }
        let line = match line {
            Line::Complete(line) => line,
            Line::TooLong(cut) => {
                if self.log_lines {
                    traffic(Recv, self.party(), cut);
                }
                warn!(
                    "limit line-bytes conn={}: line of more than {} bytes",
                    self.conn_id,
                    cut.len()
                );
                self.deliver(protocol::format_invalid(cut));
                return;
            }
        };
        if self.log_lines {
            traffic(Recv, self.party(), line);
        }
        match self.app.handle_client_line(line, self.now) {
            ClientOutcome::Silent => {}
            ClientOutcome::Reply(reply) => self.deliver(reply),
            ClientOutcome::Stored { reply, record } => {
                self.deliver(reply);
                flood(self.links, self.app.clients(), record, None, self.log_lines);
            }
            ClientOutcome::PeerAccepted { name, reply } => {
                info!("peer conn={} is {name}", self.conn_id);
                self.deliver(reply);
                *self.peer = Some(name);
            }
            ClientOutcome::Lookup { at_line, query } => {
                let seq = self.replies.reserve();
                let job = LookupJob {
                    conn_key: self.key,
                    conn_id: self.conn_id,
                    seq,
                    at_line,
                    query,
                };
                if let Err(job) = self.places.submit(job) {
                    // Every worker is busy and the queue is full: answer at once.
                    let outcome = PlacesOutcome::Failed(PlacesError::QueueFull);
                    let shaped =
                        shape_reply(self.places_api, &job.at_line, job.query.bound, &outcome);
                    warn!(
                        "places conn={} {} {}",
                        self.conn_id,
                        self.places_api.name(),
                        shaped.summary
                    );
                    self.replies.fill(seq, shaped.bytes);
                    send_ready_replies(self.conn_id, self.out, self.replies, self.log_lines);
                }
            }
        }
    }

    /// A line on a neighbour's link: an update to apply and pass on. Anything else means the
    /// neighbour is broken, and the connection is dropped (it reconnects and resyncs).
    fn handle_peer_line(&mut self, line: Line<'_>) {
        let from = self.peer.as_deref().unwrap_or_default();
        let line = match line {
            Line::Complete(line) => line,
            Line::TooLong(_) => {
                warn!(
                    "peer conn={} {from}: line over the limit, dropping link",
                    self.conn_id
                );
                *self.stage = Stage::Closed("peer line too long");
                return;
            }
        };
        if self.log_lines {
            traffic(Recv, self.party(), line);
        }
        match self.app.handle_peer_line(line) {
            PeerOutcome::Stored(record) => {
                flood(
                    self.links,
                    self.app.clients(),
                    record,
                    Some(from),
                    self.log_lines,
                );
            }
            PeerOutcome::Stale => {}
            PeerOutcome::Ping(pong) => self.deliver(pong.to_vec()),
            PeerOutcome::Invalid => {
                warn!(
                    "peer conn={} {from}: invalid line, dropping link: {}",
                    self.conn_id,
                    Escaped(line)
                );
                *self.stage = Stage::Closed("invalid peer line");
            }
        }
    }

    /// Who this connection is, for traffic records.
    fn party(&self) -> Party<'_> {
        Party::Conn {
            id: self.conn_id,
            peer: self.peer.as_deref(),
        }
    }

    /// Sends a ready reply now, or queues it behind replies still waiting on Places.
    fn deliver(&mut self, reply: Vec<u8>) {
        if self.replies.is_empty() {
            send(self.conn_id, self.out, &reply, self.log_lines);
        } else {
            self.replies.push_ready(reply);
        }
    }
}

/// Queues the record on every link that is up, except the one toward the neighbour it came
/// from (SPEC section 3). Only stored (newer) records are flooded, which ends every flood.
fn flood(
    links: &mut [Link],
    table: &ClientTable,
    record: RecordIndex,
    from: Option<&str>,
    log_lines: bool,
) {
    let Some(line) = table.line_at(record) else {
        return;
    };
    for link in links.iter_mut() {
        if from == Some(link.name.as_str()) || !link.wants_live_update(record) {
            continue;
        }
        if log_lines {
            traffic(Send, Party::Link(&link.name), line);
        }
        link.out.push(line);
        link.out.push(b"\n");
    }
}

/// Moves every reply whose turn has come to the output buffer.
pub fn send_ready_replies(
    conn_id: u64,
    out: &mut OutBuffer,
    replies: &mut ReplyQueue,
    log_lines: bool,
) {
    while let Some(reply) = replies.pop_ready() {
        send(conn_id, out, &reply, log_lines);
    }
}

fn send(conn_id: u64, out: &mut OutBuffer, reply: &[u8], log_lines: bool) {
    if log_lines {
        let body = reply.strip_suffix(b"\n").unwrap_or(reply);
        for line in body.split(|&b| b == b'\n') {
            traffic(
                Send,
                Party::Conn {
                    id: conn_id,
                    peer: None,
                },
                line,
            );
        }
    }
    out.push(reply);
}
