//! The token space of the loop's one `Poll`: which part an event belongs to, and which entry
//! of that part. Every token is made and read here, so the ranges can never meet. Pure.
//!
//! ```text
//! 0                 the client listener
//! 1, 2, 3           the Places waker, the stop signals, SIGHUP
//! 4                 the listener for clients over TLS (`tls NAME IP:PORT CERT KEY`)
//! 5 ..= 4100        link i (ids are never reused over a run: a reload adds at the end)
//! 4101 ..           accepted connection k (its slab key)
//! 2^40              the metrics listener
//! 2^40 + 1 ..       metrics connection k (its slab key)
//! ```

use mio::Token;

pub const LISTENER: Token = Token(0);
pub const WAKER: Token = Token(1);
pub const SIGNALS: Token = Token(2);
pub const HANGUPS: Token = Token(3);
pub const TLS_LISTENER: Token = Token(4);
const FIRST_LINK: usize = 5;
/// Links a server may make over one run (a reload that would pass it is refused).
pub const MAX_LINKS: usize = 4096;
const FIRST_CONN: usize = FIRST_LINK + MAX_LINKS;
/// Far above every connection token (slab keys stay far below 2^40).
pub const METRICS_LISTENER: Token = Token(1 << 40);
const FIRST_METRICS_CONN: usize = (1 << 40) + 1;

/// Whose an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Listener,
    Waker,
    Signals,
    Hangups,
    TlsListener,
    /// The link with this id.
    Link(usize),
    /// The accepted connection with this slab key.
    Conn(usize),
    MetricsListener,
    /// The metrics connection with this slab key.
    MetricsConn(usize),
}

pub fn owner(token: Token) -> Owner {
    match token.0 {
        0 => Owner::Listener,
        1 => Owner::Waker,
        2 => Owner::Signals,
        3 => Owner::Hangups,
        4 => Owner::TlsListener,
        t if t < FIRST_CONN => Owner::Link(t - FIRST_LINK),
        t if t < METRICS_LISTENER.0 => Owner::Conn(t - FIRST_CONN),
        t if t == METRICS_LISTENER.0 => Owner::MetricsListener,
        t => Owner::MetricsConn(t - FIRST_METRICS_CONN),
    }
}

pub fn link(id: usize) -> Token {
    Token(FIRST_LINK + id)
}

pub fn conn(key: usize) -> Token {
    Token(FIRST_CONN + key)
}

pub fn metrics_conn(key: usize) -> Token {
    Token(FIRST_METRICS_CONN + key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_made_is_read_back_as_its_owner() {
        for id in [0, 1, MAX_LINKS - 1] {
            assert_eq!(owner(link(id)), Owner::Link(id));
        }
        for key in [0, 1, 1 << 20] {
            assert_eq!(owner(conn(key)), Owner::Conn(key));
            assert_eq!(owner(metrics_conn(key)), Owner::MetricsConn(key));
        }
        assert_eq!(owner(LISTENER), Owner::Listener);
        assert_eq!(owner(WAKER), Owner::Waker);
        assert_eq!(owner(SIGNALS), Owner::Signals);
        assert_eq!(owner(HANGUPS), Owner::Hangups);
        assert_eq!(owner(TLS_LISTENER), Owner::TlsListener);
        assert_eq!(owner(link(0)), Owner::Link(0));
        assert_eq!(owner(METRICS_LISTENER), Owner::MetricsListener);
    }

    #[test]
    fn the_ranges_do_not_meet() {
        assert_eq!(owner(Token(FIRST_LINK + MAX_LINKS)), Owner::Conn(0));
        assert_eq!(owner(Token(FIRST_CONN - 1)), Owner::Link(MAX_LINKS - 1));
        assert_eq!(
            owner(Token(METRICS_LISTENER.0 - 1)),
            Owner::Conn(METRICS_LISTENER.0 - 1 - FIRST_CONN)
        );
    }
}
