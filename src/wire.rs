//! The one door every protocol line goes out by and comes in by, for clients and neighbours
//! alike: [`send_line`] appends the line and its terminator to an output buffer and writes the
//! traffic record; [`received`] writes the record of a line that came in. No other code logs
//! traffic, so what is logged, escaped and terminated is decided here.
//!
//! One convention: a line is handed over *without* its terminator; the `\n` is added here.

use crate::buffer::OutBuffer;
use crate::logging::{traffic, Direction, Party};

/// Queues `line` and its `\n` on `out`, and logs it.
pub fn send_line(out: &mut OutBuffer, party: Party<'_>, line: &[u8]) {
    traffic(Direction::Send, party, line);
    out.push(line);
    out.push(b"\n");
}

/// Queues a reply of several lines (a WHATSAT reply: the AT line, the JSON, an empty line),
/// given without its final terminator; every line of it is logged.
pub fn send_lines(out: &mut OutBuffer, party: Party<'_>, lines: &[u8]) {
    for line in lines.split(|&b| b == b'\n') {
        traffic(Direction::Send, party, line);
    }
    out.push(lines);
    out.push(b"\n");
}

/// Logs a line that came in (without its terminator).
pub fn received(party: Party<'_>, line: &[u8]) {
    traffic(Direction::Recv, party, line);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTY: Party<'static> = Party::Link("Bona");

    #[test]
    fn every_line_gets_exactly_one_terminator() {
        let mut out = OutBuffer::default();
        send_line(&mut out, PARTY, b"AT Campbell +0.1 kiwi +1+1 1");
        send_lines(&mut out, PARTY, b"AT x\n{}\n");
        assert_eq!(out.pending(), b"AT Campbell +0.1 kiwi +1+1 1\nAT x\n{}\n\n");
    }
}
