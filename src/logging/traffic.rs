//! The traffic records: one `recv` or `send` record per protocol line, with who the party is
//! (`log lines on|off`). It formats them straight into the sink's buffer, skipping simplelog's
//! per-record machinery; it never writes to the file and never sees a record of any other kind.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use log::Level;

use super::sink::SINK;
use super::stamp::Stamp;
use crate::escape::write_escaped;
use crate::protocol::{decimal, MAX_DECIMAL_DIGITS};

/// `log lines on|off` (SPEC section 6): whether [`traffic`] writes anything.
static TRAFFIC_ON: AtomicBool = AtomicBool::new(false);

pub(super) fn set_on(lines: bool) {
    TRAFFIC_ON.store(lines, Ordering::Relaxed);
}

/// Which way a traffic line went.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    Recv,
    Send,
}

/// Who a traffic line was exchanged with.
#[derive(Clone, Copy, Debug)]
pub enum Party<'a> {
    /// An accepted connection (a client, or a neighbour's link once it said hello).
    Conn { id: u64, peer: Option<&'a str> },
    /// Our outbound link to a neighbour.
    Link(&'a str),
}

impl Party<'_> {
    /// A neighbour: our link to it, or its link to us once it said hello.
    pub fn is_neighbour(&self) -> bool {
        match self {
            Party::Conn { peer, .. } => peer.is_some(),
            Party::Link(_) => true,
        }
    }
}

/// Logs one line received or sent, at `level` (info, or debug for keepalives): `recv conn=7
/// LINE`, `recv conn=9 peer=Bona LINE`, `send link=Bona LINE`. The line is escaped as
/// [`Escaped`](super::Escaped) does. Only `wire` calls this, so every line in and out is
/// logged the same way, in one place.
pub fn traffic(level: Level, direction: Direction, party: Party<'_>, line: &[u8]) {
    traffic_lines(direction, party, [(level, Cow::Borrowed(line))]);
}

/// Logs the lines of one message (a WHATSAT reply: its AT line, a few hundred lines of JSON,
/// the empty line) as [`traffic`] would, a record each, but under one lock and one reading
/// of the clock: the records of one message share its time stamp. With a Places answer of 20
/// results that is ~260 records per reply, and the clock and the lock per record were a fifth
/// of the loop's time under a WHATSAT flood.
pub fn traffic_lines<'l>(
    direction: Direction,
    party: Party<'_>,
    lines: impl IntoIterator<Item = (Level, Cow<'l, [u8]>)>,
) {
    if !TRAFFIC_ON.load(Ordering::Relaxed) {
        return;
    }
    let Some(sink) = SINK.get() else {
        return;
    };
    let max_level = log::max_level();
    let mut lines = lines.into_iter().filter(|(level, _)| *level <= max_level);
    let Some(first) = lines.next() else {
        return;
    };
    let Ok(mut sink) = sink.lock() else {
        return;
    };
    let stamp = sink.stamp_now();
    for (level, line) in std::iter::once(first).chain(lines) {
        sink.push(|out| write_record(out, &stamp, level, direction, party, &line));
    }
}

/// Logs a `? ` reply as [`traffic`] does and, right after it, under the same lock and time
/// stamp (so no other record can come between them), why it was refused: `why conn=7 REASON`.
/// The reason is text the caller made fit for the log (network bytes passed through
/// `Escaped`, no proof shown), written as it is. Both records follow `log lines` and `log
/// level` as every traffic record does.
pub fn traffic_refusal(level: Level, party: Party<'_>, line: &[u8], why: &dyn fmt::Display) {
    if !TRAFFIC_ON.load(Ordering::Relaxed) || level > log::max_level() {
        return;
    }
    let Some(sink) = SINK.get() else {
        return;
    };
    let Ok(mut sink) = sink.lock() else {
        return;
    };
    let stamp = sink.stamp_now();
    sink.push(|out| write_record(out, &stamp, level, Direction::Send, party, line));
    sink.push(|out| {
        out.extend_from_slice(&stamp);
        out.extend_from_slice(level_tag(level));
        out.extend_from_slice(b"why ");
        write_party(out, party);
        // Writing into a Vec cannot fail.
        let _ = writeln!(out, " {why}");
    });
}

fn level_tag(level: Level) -> &'static [u8] {
    match level {
        Level::Info => b"[INFO] ",
        Level::Debug => b"[DEBUG] ",
        Level::Trace => b"[TRACE] ",
        Level::Warn => b"[WARN] ",
        Level::Error => b"[ERROR] ",
    }
}

/// `conn=7`, `conn=9 peer=Bona` or `link=Bona`: how every traffic record names its party.
fn write_party(out: &mut Vec<u8>, party: Party<'_>) {
    match party {
        Party::Conn { id, peer } => {
            out.extend_from_slice(b"conn=");
            let mut digits = [0u8; MAX_DECIMAL_DIGITS];
            out.extend_from_slice(decimal(id, &mut digits));
            if let Some(peer) = peer {
                out.extend_from_slice(b" peer=");
                out.extend_from_slice(peer.as_bytes());
            }
        }
        Party::Link(name) => {
            out.extend_from_slice(b"link=");
            out.extend_from_slice(name.as_bytes());
        }
    }
}

/// Appends one traffic record, `STAMP [LEVEL] recv conn=7 peer=Bona LINE\n`, to `out`.
fn write_record(
    out: &mut Vec<u8>,
    stamp: &Stamp,
    level: Level,
    direction: Direction,
    party: Party<'_>,
    line: &[u8],
) {
    out.extend_from_slice(stamp);
    out.extend_from_slice(level_tag(level));
    out.extend_from_slice(match direction {
        Direction::Recv => b"recv ",
        Direction::Send => b"send ",
    });
    write_party(out, party);
    out.push(b' ');
    // Writing into a Vec cannot fail.
    let _ = write_escaped(out, line);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(level: Level, direction: Direction, party: Party<'_>, line: &[u8]) -> String {
        let mut out = Vec::new();
        write_record(
            &mut out,
            b"2026-11-23T14:16:28.018160Z ",
            level,
            direction,
            party,
            line,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_record_names_its_party_and_escapes_the_line() {
        let conn = Party::Conn { id: 7, peer: None };
        assert_eq!(
            record(Level::Info, Direction::Recv, conn, b"IAMAT a\x01 +0+0 1"),
            "2026-11-23T14:16:28.018160Z [INFO] recv conn=7 IAMAT a\\x01 +0+0 1\n"
        );
        let neighbour = Party::Conn {
            id: 9,
            peer: Some("Bona"),
        };
        assert_eq!(
            record(Level::Info, Direction::Recv, neighbour, b"AT x"),
            "2026-11-23T14:16:28.018160Z [INFO] recv conn=9 peer=Bona AT x\n"
        );
        assert_eq!(
            record(
                Level::Debug,
                Direction::Send,
                Party::Link("Bona"),
                b"HERD-PING"
            ),
            "2026-11-23T14:16:28.018160Z [DEBUG] send link=Bona HERD-PING\n"
        );
    }
}
