//! The one door every protocol line goes out by and comes in by, for clients and neighbours
//! alike: [`send_line`] appends the line and its terminator to an output buffer and writes the
//! traffic record; [`received`] writes the record of a line that came in. No other code logs
//! traffic, so what is logged, escaped and terminated is decided here.
//!
//! One convention: a line is handed over *without* its terminator; the `\n` is added here.
//!
//! Every line is a traffic record at level info, except the keepalives between neighbours
//! (`HERD-PING`, `HERD-PONG`), which are debug records: a quiet herd would otherwise log two
//! lines per link every `peer ping-ms`, and they say nothing a `link down` does not.
//!
//! A hello's proof is logged as `<redacted>` whichever way it goes (our own hello, one we
//! received, and the `? ` echo of a refused one): a proof replayed to its server within the
//! allowed clock skew would be accepted, so a log reader must not find one.
//!
//! A `? ` reply is followed in the log by the reason the line was refused ([`send_refusal`]):
//! `why conn=7 invalid WHATSAT: radius 60 is out of range (0 < km <= 50)`. The reason belongs
//! with the per-line records: written exactly when the reply's record is (`log lines on`, a
//! `log level` of info or more), so a flood of garbage does not flood the log when lines are
//! off.

use std::borrow::Cow;
use std::fmt;

use log::Level;

use crate::buffer::OutBuffer;
use crate::logging::{traffic, traffic_lines, traffic_refusal, Direction, Party};
use crate::peer_wire::{is_keepalive, redact_proofs};

/// Queues `line` and its `\n` on `out`, and logs it.
pub fn send_line(out: &mut OutBuffer, party: Party<'_>, line: &[u8]) {
    log_line(Direction::Send, party, line);
    out.push(line);
    out.push(b"\n");
    out.count_lines(1);
}

/// Queues a reply of one line or several, given without its final terminator; every line of
/// it is logged.
pub fn send_lines(out: &mut OutBuffer, party: Party<'_>, lines: &[u8]) {
    let logged = lines
        .split(|&b| b == b'\n')
        .map(|line| (level_of(party, line), redact_proofs(line)));
    traffic_lines(Direction::Send, party, logged);
    out.push(lines);
    out.push(b"\n");
    out.count_lines(line_count(lines));
}

/// Queues a `? ` reply (one line, given without its terminator) and logs it, then `why` on
/// the record right after it, `why conn=ID REASON`. `why` must show network bytes as the log
/// does (a refusal's reasons pass every field through `Escaped`, and never show a proof).
pub fn send_refusal(out: &mut OutBuffer, party: Party<'_>, reply: &[u8], why: &dyn fmt::Display) {
    traffic_refusal(level_of(party, reply), party, &redact_proofs(reply), why);
    out.push(reply);
    out.push(b"\n");
    out.count_lines(1);
}

/// Queues a WHATSAT reply (SPEC section 2): `at_line`, the shaped JSON, then the empty line
/// that ends it. The JSON is the text shared by every WHATSAT that waited on one Places call,
/// so it is copied once, into the output, not into a reply of its own first. Its lines are
/// logged as they are: no line of JSON printed by serde_json begins with a hello's word (each
/// starts with indentation and a `"`, a bracket, a brace, a digit or a literal).
pub fn send_whatsat(out: &mut OutBuffer, party: Party<'_>, at_line: &[u8], json: &[u8]) {
    let logged = std::iter::once(at_line)
        .chain(json.split(|&b| b == b'\n'))
        .chain(std::iter::once(&b""[..]))
        .map(|line| (Level::Info, Cow::Borrowed(line)));
    traffic_lines(Direction::Send, party, logged);
    out.push(at_line);
    out.push(b"\n");
    out.push(json);
    out.push(b"\n\n");
    out.count_lines(line_count(json) + 2);
}

/// Lines in `text` given without its final terminator.
fn line_count(text: &[u8]) -> u64 {
    text.iter().filter(|&&b| b == b'\n').count() as u64 + 1
}

/// Logs a line that came in (without its terminator).
pub fn received(party: Party<'_>, line: &[u8]) {
    log_line(Direction::Recv, party, line);
}

fn log_line(direction: Direction, party: Party<'_>, line: &[u8]) {
    // A handshake line, or the `? ` echo of one, is logged without its proof.
    traffic(
        level_of(party, line),
        direction,
        party,
        &redact_proofs(line),
    );
}

/// The level of a line's traffic record: debug for a keepalive exchanged with a neighbour,
/// info for everything else (a client's `HERD-PING` is an invalid command, logged as any).
fn level_of(party: Party<'_>, line: &[u8]) -> Level {
    if party.is_neighbour() && is_keepalive(line) {
        Level::Debug
    } else {
        Level::Info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTY: Party<'static> = Party::Link("Bona");

    #[test]
    fn handshake_proofs_are_not_logged_either_way() {
        for (line, shown) in [
            (&b"HERD-PROOF 0123abcd"[..], &b"HERD-PROOF <redacted>"[..]),
            (b"? HERD-PROOF 0123abcd", b"? HERD-PROOF <redacted>"),
            (
                b"HERD-CHALLENGE 00ff 0123abcd",
                b"HERD-CHALLENGE 00ff <redacted>",
            ),
            (
                b"? HERD-HELLO Bona 1000 0123abcd",
                b"? HERD-HELLO Bona 1000 <redacted>",
            ),
        ] {
            assert_eq!(&*redact_proofs(line), shown);
        }
        for plain in [
            &b"HERD-HELLO Bona"[..],
            b"? IAMAT x",
            b"AT Bona +0.1 k +1+1 1",
        ] {
            assert!(
                matches!(redact_proofs(plain), Cow::Borrowed(_)),
                "{plain:?}"
            );
        }
    }

    #[test]
    fn keepalives_between_neighbours_are_debug_records_and_the_rest_info() {
        let neighbours = [
            Party::Link("Bona"),
            Party::Conn {
                id: 9,
                peer: Some("Bona"),
            },
        ];
        for party in neighbours {
            assert_eq!(level_of(party, b"HERD-PING"), Level::Debug);
            assert_eq!(level_of(party, b"HERD-PONG"), Level::Debug);
            assert_eq!(level_of(party, b"AT Bona +0.1 k +1+1 1"), Level::Info);
            assert_eq!(level_of(party, b"HERD-WELCOME Bona"), Level::Info);
        }
        let client = Party::Conn { id: 7, peer: None };
        for line in [
            &b"HERD-PING"[..],
            b"HERD-PONG",
            b"IAMAT k +1+1 1",
            b"? HERD-PING",
        ] {
            assert_eq!(level_of(client, line), Level::Info, "{line:?}");
        }
    }

    #[test]
    fn every_line_gets_exactly_one_terminator() {
        let mut out = OutBuffer::default();
        send_line(&mut out, PARTY, b"AT Campbell +0.1 kiwi +1+1 1");
        send_lines(&mut out, PARTY, b"AT x\n{}\n");
        send_refusal(&mut out, PARTY, b"? HELLO", &"unknown command 'HELLO'");
        assert_eq!(
            out.pending(),
            b"AT Campbell +0.1 kiwi +1+1 1\nAT x\n{}\n\n? HELLO\n",
            "a refusal's reason is for the log only"
        );
        assert_eq!(out.take_lines(), 5, "as many lines as terminators");
        assert_eq!(out.take_lines(), 0);
    }
}
