//! When an accepted connection is read: one [`ReadState`] per connection, and the lines in
//! which connections wait to be read again, in order. Pure: keys and states only, so every
//! rule of fairness here is tested without a socket.
//!
//! The rules (README, "Fairness between clients"):
//! - a connection is read when a readable edge arrives, unless it already waits in a line:
//!   then it is read when its turn comes (until `WouldBlock`, so the edge is not lost), and a
//!   pipelining client's every arrival cannot jump the line;
//! - one whose turn ran out (read budget, `limit commands-per-turn`) waits in a line: a
//!   neighbour's ([`Lines::peers`], read again first, with no time bound: a relay must keep up
//!   with its herd) or a client's ([`Lines::clients`], read again for a bounded time a turn;
//!   those not reached stay first in line);
//! - a client read while a link is behind is held ([`Lines::held`]) until no link is;
//! - a connection with as much outstanding as it may (output, lookups) is not read until that
//!   drains, and then waits in line: edges do not repeat for data already in the socket.

/// Where a connection stands for reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadState {
    /// In no line: read on its next readable edge.
    Ready,
    /// Its turn ran out with input possibly left: waits in a line to be read again.
    InLine,
    /// A client whose input waits while a link is behind (`peer max-owed`).
    Held,
    /// Not read: it has as much outstanding as it may; in line again once that drains.
    Saturated,
}

/// Why a connection is put in a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Its read budget or command quota for the turn ran out.
    More,
    /// It is a client, and a link is behind.
    Held,
}

impl ReadState {
    /// The connection has as much outstanding as it may: it is not read until that drains.
    /// One that already waits in a line keeps its place (it is read, or found saturated
    /// again, when its turn comes), so it is never in a line twice.
    pub fn saturate(&mut self) {
        if !matches!(self, ReadState::InLine | ReadState::Held) {
            *self = ReadState::Saturated;
        }
    }

    /// Whether a readable edge reads the connection now. One that waits in a line is read
    /// when its turn comes; its end (`closing`: the peer's FIN or an error) is seen at once,
    /// though, so that its lookups still queued for Places are cancelled.
    pub fn reads_on_edge(self, closing: bool) -> bool {
        closing || !matches!(self, ReadState::InLine | ReadState::Held)
    }
}

/// The lines connections wait in, by slab key, first come first served.
#[derive(Debug, Default)]
pub struct Lines {
    /// Neighbours' connections whose turn ran out.
    pub peers: Vec<usize>,
    /// Clients whose turn ran out.
    pub clients: Vec<usize>,
    /// Clients held while a link is behind.
    pub held: Vec<usize>,
}

impl Lines {
    /// Puts `key` in the line `wait` says, unless it waits in one already (so a connection is
    /// queued once however many edges arrive).
    pub fn enqueue(&mut self, state: &mut ReadState, key: usize, wait: Wait, is_peer: bool) {
        if matches!(state, ReadState::InLine | ReadState::Held) {
            return;
        }
        match wait {
            Wait::More => {
                *state = ReadState::InLine;
                if is_peer {
                    self.peers.push(key);
                } else {
                    self.clients.push(key);
                }
            }
            Wait::Held => {
                *state = ReadState::Held;
                self.held.push(key);
            }
        }
    }

    /// Output drained or a lookup finished: a saturated connection goes in line to be read.
    pub fn unsaturate(&mut self, state: &mut ReadState, key: usize, is_peer: bool) {
        if *state == ReadState::Saturated {
            *state = ReadState::Ready;
            self.enqueue(state, key, Wait::More, is_peer);
        }
    }

    /// The neighbours to read again this turn, in order.
    pub fn take_peers(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.peers)
    }

    /// The clients to read again this turn, in order: those whose turn ran out, then, unless
    /// a link is behind, the held ones.
    pub fn take_clients(&mut self, holding: bool) -> Vec<usize> {
        let mut keys = std::mem::take(&mut self.clients);
        if !holding {
            keys.append(&mut self.held);
        }
        keys
    }

    /// Clients taken but not reached this turn (their state still says they wait): first in
    /// line next turn, before any queued since.
    pub fn put_back_first(&mut self, mut rest: Vec<usize>) {
        if !rest.is_empty() {
            rest.append(&mut self.clients);
            self.clients = rest;
        }
    }

    pub fn is_empty(&self, holding: bool) -> bool {
        self.peers.is_empty() && self.clients.is_empty() && (holding || self.held.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_reads_a_connection_unless_it_waits_in_line_or_is_ending() {
        for (state, reads) in [
            (ReadState::Ready, true),
            (ReadState::Saturated, true),
            (ReadState::InLine, false),
            (ReadState::Held, false),
        ] {
            assert_eq!(state.reads_on_edge(false), reads, "{state:?}");
            assert!(
                state.reads_on_edge(true),
                "{state:?}: its end is seen at once"
            );
        }
    }

    #[test]
    fn a_connection_waits_in_one_line_once_however_often_it_is_queued() {
        let mut lines = Lines::default();
        let mut state = ReadState::Ready;
        lines.enqueue(&mut state, 4, Wait::More, false);
        lines.enqueue(&mut state, 4, Wait::More, false);
        lines.enqueue(&mut state, 4, Wait::Held, false);
        assert_eq!(state, ReadState::InLine);
        assert_eq!(lines.clients, [4]);
        assert!(lines.held.is_empty());
    }

    #[test]
    fn neighbours_and_clients_wait_in_their_own_lines() {
        let mut lines = Lines::default();
        let (mut peer, mut client, mut held) =
            (ReadState::Ready, ReadState::Ready, ReadState::Ready);
        lines.enqueue(&mut peer, 1, Wait::More, true);
        lines.enqueue(&mut client, 2, Wait::More, false);
        lines.enqueue(&mut held, 3, Wait::Held, false);
        assert_eq!(
            (peer, client, held),
            (ReadState::InLine, ReadState::InLine, ReadState::Held)
        );
        assert_eq!(lines.take_peers(), [1]);
        assert_eq!(lines.take_clients(false), [2, 3]);
        assert!(lines.is_empty(false));
    }

    #[test]
    fn held_clients_stay_held_while_a_link_is_behind() {
        let mut lines = Lines::default();
        let (mut a, mut b) = (ReadState::Ready, ReadState::Ready);
        lines.enqueue(&mut a, 1, Wait::Held, false);
        lines.enqueue(&mut b, 2, Wait::More, false);
        assert!(!lines.is_empty(false));
        assert_eq!(lines.take_clients(true), [2]);
        assert!(
            lines.is_empty(true),
            "only held ones left, and they must wait"
        );
        assert_eq!(lines.take_clients(false), [1]);
    }

    #[test]
    fn clients_not_reached_are_first_in_line_next_turn() {
        let mut lines = Lines::default();
        let mut states = [ReadState::Ready; 5];
        for (key, state) in states.iter_mut().enumerate().take(3) {
            lines.enqueue(state, key, Wait::More, false);
        }
        let mut taken = lines.take_clients(false).into_iter();
        assert_eq!(taken.next(), Some(0)); // served this turn
        states[0] = ReadState::Ready;
        lines.enqueue(&mut states[3], 3, Wait::More, false); // queued meanwhile
        lines.put_back_first(taken.collect());
        assert_eq!(lines.take_clients(false), [1, 2, 3]);
    }

    #[test]
    fn a_connection_found_saturated_while_in_line_keeps_its_place_and_is_queued_once() {
        let mut lines = Lines::default();
        let mut state = ReadState::Ready;
        lines.enqueue(&mut state, 5, Wait::More, false);
        // Its end arrives: read at once, and found saturated.
        state.saturate();
        assert_eq!(state, ReadState::InLine);
        lines.unsaturate(&mut state, 5, false);
        assert_eq!(lines.take_clients(false), [5], "in the line once");
        let mut ready = ReadState::Ready;
        ready.saturate();
        assert_eq!(ready, ReadState::Saturated);
    }

    #[test]
    fn a_saturated_connection_goes_in_line_when_it_drains_and_only_then() {
        let mut lines = Lines::default();
        let mut state = ReadState::Ready;
        lines.unsaturate(&mut state, 9, false);
        assert_eq!(state, ReadState::Ready, "not saturated: nothing to do");
        assert!(lines.is_empty(false));
        state = ReadState::Saturated;
        lines.unsaturate(&mut state, 9, true);
        assert_eq!(state, ReadState::InLine);
        assert_eq!(lines.take_peers(), [9]);
    }
}
