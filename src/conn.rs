//! One accepted connection: its socket, its buffers, what stage it is at, and the reply slots
//! that keep replies in command order while a WHATSAT waits on Places (SPEC section 2).
//!
//! No I/O happens here: `net` moves bytes, `event_loop` decides; this is the state they share.

use std::collections::VecDeque;

use mio::net::TcpStream;
use mio::Interest;

use crate::buffer::{LineReader, OutBuffer};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading commands and answering them.
    Open,
    /// The other side half-closed: nothing more to read, but every reply owed (a pending
    /// WHATSAT included) is still sent, then the connection closes.
    Draining,
    /// Done, for the reason given; the loop frees it after the current event batch.
    Closed(&'static str),
}

/// Replies in command order. A command whose reply is ready while nothing waits goes straight
/// to the output buffer; once a WHATSAT waits, later replies queue behind it.
#[derive(Debug, Default)]
pub struct ReplyQueue {
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    /// `None` while its lookup runs.
    slots: VecDeque<Option<Vec<u8>>>,
    /// Bytes held in ready slots (counted against the output limit).
    queued_bytes: usize,
}

impl ReplyQueue {
    /// Whether no reply is waiting or queued: a new ready reply can be sent at once.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Replies still waiting on a lookup.
    pub fn waiting(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    /// Holds a place for a reply that is not ready; returns its sequence number.
    pub fn reserve(&mut self) -> u64 {
        self.slots.push_back(None);
        self.first_seq + self.slots.len() as u64 - 1
    }

    /// Queues a ready reply behind the waiting ones (call only when not [`is_empty`]).
    pub fn push_ready(&mut self, reply: Vec<u8>) {
        self.queued_bytes += reply.len();
        self.slots.push_back(Some(reply));
    }

    /// Fills the slot `seq` reserved; unknown sequence numbers are ignored.
    pub fn fill(&mut self, seq: u64, reply: Vec<u8>) {
        let Some(index) = seq.checked_sub(self.first_seq) else {
            return;
        };
        if let Some(slot @ None) = self.slots.get_mut(index as usize) {
            self.queued_bytes += reply.len();
            *slot = Some(reply);
        }
    }

    /// The next reply, if it is ready and every earlier one has gone.
    pub fn pop_ready(&mut self) -> Option<Vec<u8>> {
        if !matches!(self.slots.front(), Some(Some(_))) {
            return None;
        }
        let reply = self.slots.pop_front().flatten()?;
        self.first_seq += 1;
        self.queued_bytes -= reply.len();
        Some(reply)
    }
}

/// One accepted connection: a client, or a neighbour's link once its hello was accepted.
pub struct Connection {
    /// Unique for the life of the process (slab keys are reused; this is not). Logged as `conn=`.
    pub id: u64,
    pub stream: TcpStream,
    pub stage: Stage,
    /// The neighbour's name once it said a valid hello: its lines are then updates.
    pub peer: Option<String>,
    pub reader: LineReader,
    pub out: OutBuffer,
    pub replies: ReplyQueue,
    /// The interest the socket is registered with now.
    pub registered: Interest,
}

impl Connection {
    pub fn new(id: u64, stream: TcpStream, max_line_bytes: usize) -> Self {
        Connection {
            id,
            stream,
            stage: Stage::Open,
            peer: None,
            reader: LineReader::new(max_line_bytes),
            out: OutBuffer::default(),
            replies: ReplyQueue::default(),
            registered: Interest::READABLE,
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

    /// A draining connection is done once nothing is owed and everything is written.
    pub fn is_finished(&self) -> bool {
        self.stage == Stage::Draining && self.replies.is_empty() && self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_with_pending_whatsat() -> (ReplyQueue, u64) {
        let mut queue = ReplyQueue::default();
        let seq = queue.reserve();
        (queue, seq)
    }

    #[test]
    fn replies_behind_a_waiting_lookup_wait_for_it() {
        let (mut queue, seq) = queue_with_pending_whatsat();
        queue.push_ready(b"second\n".to_vec());
        assert_eq!(queue.pop_ready(), None);
        assert_eq!(queue.queued_bytes(), 7);
        queue.fill(seq, b"first\n".to_vec());
        assert_eq!(queue.pop_ready().unwrap(), b"first\n");
        assert_eq!(queue.pop_ready().unwrap(), b"second\n");
        assert_eq!(queue.pop_ready(), None);
        assert!(queue.is_empty());
        assert_eq!(queue.queued_bytes(), 0);
    }

    #[test]
    fn lookups_finishing_out_of_order_are_sent_in_order() {
        let mut queue = ReplyQueue::default();
        let a = queue.reserve();
        let b = queue.reserve();
        assert_eq!(queue.waiting(), 2);
        queue.fill(b, b"b".to_vec());
        assert_eq!(queue.pop_ready(), None);
        queue.fill(a, b"a".to_vec());
        assert_eq!(queue.pop_ready().unwrap(), b"a");
        assert_eq!(queue.pop_ready().unwrap(), b"b");
        // Sequence numbers keep counting after the queue empties.
        let c = queue.reserve();
        assert_eq!(c, b + 1);
    }

    #[test]
    fn filling_twice_or_out_of_range_is_ignored() {
        let (mut queue, seq) = queue_with_pending_whatsat();
        queue.fill(seq, b"x".to_vec());
        queue.fill(seq, b"again".to_vec());
        queue.fill(seq + 5, b"nowhere".to_vec());
        assert_eq!(queue.queued_bytes(), 1);
        assert_eq!(queue.pop_ready().unwrap(), b"x");
    }
}
