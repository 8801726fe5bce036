//! One accepted connection as the protocol sees it: where it is in its life, who it is (a
//! client, or a neighbour once its hello was accepted), its output, and the reply slots that
//! keep replies in command order while a WHATSAT waits on Places (SPEC section 2).
//!
//! No socket here: the event loop holds the stream beside it and moves the bytes; `session`
//! decides what each line does to it. Every line it sends goes through `wire`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use mio::Interest;

use crate::buffer::OutBuffer;
use crate::logging::Party;
use crate::peer_wire::Challenge;
use crate::protocol;
use crate::table::LinkId;
use crate::wire;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Reading commands and answering them.
    Open,
    /// The other side half-closed: nothing more to read, but every reply owed (a pending
    /// WHATSAT included) is still sent, then the connection closes.
    Draining,
    /// Done, for the reason given; the loop frees it after the current event batch.
    Closed(&'static str),
}

/// The neighbour an accepted connection belongs to, once its hello was accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Our outbound link to the same neighbour: what it sends us is not sent back on it.
    pub link: LinkId,
    pub name: String,
}

/// What a neighbour's hello on this connection must come with (SPEC section 9, `peer tls`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LinkSecurity {
    /// Links are in clear on this server: a hello is checked as it is.
    #[default]
    Clear,
    /// Links are TLS on this server and this connection is in clear: a hello is refused.
    TlsRequired,
    /// TLS: the certificate the other side presented once the handshake is done (the
    /// handshake checked it against the herd's CA); a hello must claim the server it names.
    Tls(Option<rustls::pki_types::CertificateDer<'static>>),
}

/// One reply as a connection holds it until it is sent.
#[derive(Debug)]
pub enum Reply {
    /// Its lines, without the final terminator, as `wire` takes them.
    Lines(Vec<u8>),
    /// `? ` + a refused line, and the reason its log record gives (already shown as the log
    /// shows it: it is the reason's text, made when the reply had to wait).
    Refused { reply: Vec<u8>, why: Box<str> },
    /// A WHATSAT's answer: the AT line and the JSON shared by every WHATSAT that waited on the
    /// same Places call (kept apart, so a reply is not a copy of a few KiB of JSON of its own).
    Whatsat { at_line: Box<[u8]>, json: Arc<[u8]> },
}

impl Reply {
    /// Bytes it will take in the output (what the output limits count).
    fn bytes(&self) -> usize {
        match self {
            Reply::Lines(lines) | Reply::Refused { reply: lines, .. } => lines.len() + 1,
            Reply::Whatsat { at_line, json } => at_line.len() + json.len() + 3,
        }
    }
}

impl From<Vec<u8>> for Reply {
    fn from(lines: Vec<u8>) -> Reply {
        Reply::Lines(lines)
    }
}

/// Replies in command order. A command whose reply is ready while nothing waits goes straight
/// to the output buffer; once a WHATSAT waits, later replies queue behind it.
#[derive(Debug, Default)]
pub struct ReplyQueue {
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    /// `None` while its lookup runs.
    slots: VecDeque<Option<Reply>>,
    /// Bytes held in ready slots (counted against the output limit).
    queued_bytes: usize,
    /// Slots still waiting on a lookup.
    waiting: usize,
}

impl ReplyQueue {
    /// Whether no reply is waiting or queued: a new ready reply can be sent at once.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Holds a place for a reply that is not ready; returns its sequence number.
    pub fn reserve(&mut self) -> u64 {
        self.waiting += 1;
        self.slots.push_back(None);
        self.first_seq + self.slots.len() as u64 - 1
    }

    /// Queues a ready reply behind the waiting ones (call only when not [`is_empty`]).
    pub fn push_ready(&mut self, reply: Reply) {
        self.queued_bytes += reply.bytes();
        self.slots.push_back(Some(reply));
    }

    /// Fills the slot `seq` reserved; unknown sequence numbers are ignored.
    pub fn fill(&mut self, seq: u64, reply: Reply) {
        let Some(index) = seq.checked_sub(self.first_seq) else {
            return;
        };
        if let Some(slot @ None) = self.slots.get_mut(index as usize) {
            self.waiting -= 1;
            self.queued_bytes += reply.bytes();
            *slot = Some(reply);
        }
    }

    /// The next reply, if it is ready and every earlier one has gone.
    pub fn pop_ready(&mut self) -> Option<Reply> {
        if !matches!(self.slots.front(), Some(Some(_))) {
            return None;
        }
        let reply = self.slots.pop_front().flatten()?;
        self.first_seq += 1;
        self.queued_bytes -= reply.bytes();
        Some(reply)
    }
}

/// One accepted connection: a client, or a neighbour's link once its hello was accepted.
#[derive(Debug)]
pub struct Connection {
    /// Unique for the life of the process (slab keys are reused; this is not). Logged as `conn=`.
    pub id: u64,
    pub state: ConnState,
    /// Set once the connection said a valid hello: its lines are then updates.
    pub peer: Option<Peer>,
    /// The challenge this server sent in answer to the connection's hello, for the link
    /// `LinkId`, until the next line (its proof, or not) spends it.
    pub challenged: Option<(LinkId, Challenge)>,
    /// What a hello here must come with.
    pub link_security: LinkSecurity,
    pub out: OutBuffer,
    replies: ReplyQueue,
}

impl Connection {
    pub fn new(id: u64) -> Self {
        Connection {
            id,
            state: ConnState::Open,
            peer: None,
            challenged: None,
            link_security: LinkSecurity::Clear,
            out: OutBuffer::default(),
            replies: ReplyQueue::default(),
        }
    }

    /// Who this connection is, for traffic records.
    pub fn party(&self) -> Party<'_> {
        party(self.id, &self.peer)
    }

    /// Logs a line received on this connection.
    pub fn received(&self, line: &[u8]) {
        wire::received(self.party(), line);
    }

    /// Sends a ready reply now, or queues it behind replies still waiting on Places.
    pub fn deliver(&mut self, reply: Vec<u8>) {
        if self.replies.is_empty() {
            wire::send_lines(&mut self.out, party(self.id, &self.peer), &reply);
        } else {
            self.replies.push_ready(Reply::Lines(reply));
        }
    }

    /// Answers a refused line: `? ` + the line, now or behind the replies still waiting on
    /// Places; `why` follows the reply's record in the log whenever it is sent. Its text is
    /// made only if the reply has to wait (a refusal's reason borrows from the line).
    pub fn refuse(&mut self, line: &[u8], why: &dyn fmt::Display) {
        let reply = protocol::format_invalid(line);
        if self.replies.is_empty() {
            wire::send_refusal(&mut self.out, party(self.id, &self.peer), &reply, why);
        } else {
            let why = why.to_string().into_boxed_str();
            self.replies.push_ready(Reply::Refused { reply, why });
        }
    }

    /// Holds the place of a reply that is not ready yet (a WHATSAT); returns its number.
    pub fn reserve_reply(&mut self) -> u64 {
        self.replies.reserve()
    }

    /// The reply numbered `seq` is ready: sends it and every reply behind it that is ready.
    pub fn fill_reply(&mut self, seq: u64, reply: Reply) {
        self.replies.fill(seq, reply);
        while let Some(reply) = self.replies.pop_ready() {
            let party = party(self.id, &self.peer);
            match reply {
                Reply::Lines(lines) => wire::send_lines(&mut self.out, party, &lines),
                Reply::Refused { reply, why } => {
                    wire::send_refusal(&mut self.out, party, &reply, &why);
                }
                Reply::Whatsat { at_line, json } => {
                    wire::send_whatsat(&mut self.out, party, &at_line, &json);
                }
            }
        }
    }

    /// The interest the connection's state calls for: writable only while output waits.
    pub fn wanted_interest(&self) -> Interest {
        if self.out.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// Output this connection holds that the client has not read yet.
    pub fn unread_bytes(&self) -> usize {
        self.out.len() + self.replies.queued_bytes()
    }

    /// WHATSATs of this connection still waiting on Places.
    pub fn lookups_waiting(&self) -> usize {
        self.replies.waiting
    }

    /// Whether the connection has as much outstanding as it may: its commands stay in the
    /// kernel until the client reads its output (`soft_output_bytes`) or its lookups finish
    /// (`max_in_flight`). Nothing is refused and the order is kept; a client that pipelines
    /// without reading costs the server a bounded amount, and Places calls for it stop.
    pub fn is_saturated(&self, soft_output_bytes: usize, max_in_flight: usize) -> bool {
        self.unread_bytes() > soft_output_bytes || self.lookups_waiting() >= max_in_flight
    }

    /// A draining connection is done once nothing is owed and everything is written.
    pub fn is_finished(&self) -> bool {
        self.state == ConnState::Draining && self.replies.is_empty() && self.out.is_empty()
    }
}

/// A free function so that it borrows only the fields it reads (the output buffer is
/// borrowed mutably beside it when sending).
fn party(id: u64, peer: &Option<Peer>) -> Party<'_> {
    Party::Conn {
        id,
        peer: peer.as_ref().map(|p| p.name.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reply puts in the output.
    fn sent_bytes(reply: Reply) -> Vec<u8> {
        let mut conn = Connection::new(1);
        let seq = conn.reserve_reply();
        conn.fill_reply(seq, reply);
        conn.out.pending().to_vec()
    }

    fn queue_with_pending_whatsat() -> (ReplyQueue, u64) {
        let mut queue = ReplyQueue::default();
        let seq = queue.reserve();
        (queue, seq)
    }

    #[test]
    fn replies_behind_a_waiting_lookup_wait_for_it() {
        let (mut queue, seq) = queue_with_pending_whatsat();
        queue.push_ready(b"second".to_vec().into());
        assert!(queue.pop_ready().is_none());
        assert_eq!(queue.queued_bytes(), 7);
        queue.fill(seq, b"first".to_vec().into());
        assert_eq!(sent_bytes(queue.pop_ready().unwrap()), b"first\n");
        assert_eq!(sent_bytes(queue.pop_ready().unwrap()), b"second\n");
        assert!(queue.pop_ready().is_none());
        assert!(queue.is_empty());
        assert_eq!(queue.queued_bytes(), 0);
    }

    #[test]
    fn lookups_finishing_out_of_order_are_sent_in_order() {
        let mut queue = ReplyQueue::default();
        let a = queue.reserve();
        let b = queue.reserve();
        queue.fill(b, b"b".to_vec().into());
        assert!(queue.pop_ready().is_none());
        queue.fill(a, b"a".to_vec().into());
        assert_eq!(sent_bytes(queue.pop_ready().unwrap()), b"a\n");
        assert_eq!(sent_bytes(queue.pop_ready().unwrap()), b"b\n");
        // Sequence numbers keep counting after the queue empties.
        let c = queue.reserve();
        assert_eq!(c, b + 1);
    }

    #[test]
    fn filling_twice_or_out_of_range_is_ignored() {
        let (mut queue, seq) = queue_with_pending_whatsat();
        queue.fill(seq, b"x".to_vec().into());
        queue.fill(seq, b"again".to_vec().into());
        queue.fill(seq + 5, b"nowhere".to_vec().into());
        assert_eq!(queue.queued_bytes(), 2);
        assert_eq!(sent_bytes(queue.pop_ready().unwrap()), b"x\n");
    }

    #[test]
    fn a_whatsat_reply_is_framed_as_its_lines_would_be() {
        let at_line = b"AT Campbell +0.1 kiwi +34.0-118.4 1621464827.9";
        let json: Arc<[u8]> = Arc::from(&b"{\n  \"places\": []\n}"[..]);
        let whatsat = Reply::Whatsat {
            at_line: at_line[..].into(),
            json: json.clone(),
        };
        let mut lines = at_line.to_vec();
        lines.push(b'\n');
        lines.extend_from_slice(&json);
        lines.push(b'\n');
        let counted = whatsat.bytes();
        let sent = sent_bytes(whatsat);
        assert_eq!(sent, sent_bytes(Reply::Lines(lines)));
        assert_eq!(sent.len(), counted);
        assert!(sent.ends_with(b"]\n}\n\n"), "the JSON, then the empty line");
    }

    #[test]
    fn a_refusal_behind_a_lookup_waits_with_its_reason() {
        let mut conn = Connection::new(7);
        conn.refuse(b"HELLO", &"unknown command 'HELLO'");
        assert_eq!(conn.out.pending(), b"? HELLO\n", "sent at once");
        let seq = conn.reserve_reply();
        conn.refuse(b"iamat x", &"unknown command 'iamat'");
        let Some(Some(Reply::Refused { reply, why })) = conn.replies.slots.back() else {
            panic!("the refusal waits in its slot: {:?}", conn.replies);
        };
        assert_eq!(
            (&reply[..], &why[..]),
            (&b"? iamat x"[..], "unknown command 'iamat'")
        );
        assert_eq!(conn.unread_bytes(), 8 + 10);
        conn.fill_reply(seq, b"AT x\n{}\n".to_vec().into());
        assert_eq!(conn.out.pending(), b"? HELLO\nAT x\n{}\n\n? iamat x\n");
        assert_eq!(conn.out.take_lines(), 5);
    }

    #[test]
    fn a_connection_sends_ready_replies_at_once_and_the_rest_in_order() {
        let mut conn = Connection::new(7);
        conn.deliver(b"first".to_vec());
        assert_eq!(conn.out.pending(), b"first\n");
        let seq = conn.reserve_reply();
        assert_eq!(conn.lookups_waiting(), 1);
        assert!(conn.is_saturated(1000, 1), "one lookup of one allowed");
        assert!(!conn.is_saturated(1000, 2));
        conn.deliver(b"third".to_vec());
        assert!(conn.is_saturated(11, 2), "12 bytes unread of 11 allowed");
        assert_eq!(conn.out.pending(), b"first\n");
        assert_eq!(conn.unread_bytes(), 6 + 6);
        conn.fill_reply(seq, b"AT x\n{}\n".to_vec().into());
        assert_eq!(conn.out.pending(), b"first\nAT x\n{}\n\nthird\n");
        assert_eq!(conn.lookups_waiting(), 0);
        conn.deliver(b"fourth".to_vec());
        assert!(
            conn.out.pending().ends_with(b"third\nfourth\n"),
            "sent at once"
        );
    }
}
