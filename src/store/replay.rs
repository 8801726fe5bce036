//! Reading a store back at start-up: every complete line is an AT line, applied to the client
//! table with the table's own newest-wins rule, so the order of the lines does not matter and
//! the newest record of each client wins however the file was written (appends, compactions,
//! even two stores concatenated).
//!
//! A few lines are not records but say where the records stand in this server's history of
//! versions (see `changes`):
//! - `HERD-EPOCH HEX16`: the name of the history (the last one read counts);
//! - `HERD-VER N`: the next record line has version N; each record line after it has the
//!   version of the one before plus one (a file with no such line starts at 1);
//! - `HERD-MARK NAME HEX16 N`: this server holds neighbour NAME's history up to version N of
//!   that epoch (the last one read for NAME counts).
//!
//! A line that is not a valid AT line, or names a server the config does not know, is
//! reported and skipped; so is a last line without its newline (a write cut short by a crash:
//! even if it parses, it may be a prefix of the real record, its time cut). Reading never
//! holds more than one line, and a line is cut off at [`MAX_RECORD_BYTES`].

use std::io::{self, Read};
use std::sync::mpsc;
use std::thread;

use crate::changes::{Epoch, Version};
use crate::protocol::{fields, AtLine, AtRecord};
use crate::table::{Applied, ClientTable, Mark};

/// Longer lines are corrupt: no server makes an AT line this long.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Why a line was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not a valid AT line (or longer than [`MAX_RECORD_BYTES`]).
    Corrupt,
    /// The record's server is not in the config (it would be refused by every neighbour).
    UnknownServer,
    /// The file ends in the middle of this line.
    Truncated,
}

/// What reading a store found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Lines read, complete or not.
    pub lines: u64,
    /// Lines that were the newest of their client when read.
    pub applied: u64,
    pub skipped: u64,
    /// Where the last complete line ends: a truncated tail after it is cut off before the
    /// server appends, so the next record does not run into it.
    pub complete_bytes: u64,
    /// The history's name, if the file gives one.
    pub epoch: Option<Epoch>,
    /// The neighbours' marks, the last of each.
    pub marks: Vec<(String, Mark)>,
    /// The version a record line appended now would have without a `HERD-VER` before it.
    pub next_version: Version,
}

/// What the reading thread hands over: records parsed, lines skipped, in file order.
#[derive(Default)]
struct Batch {
    records: Vec<(AtRecord, Version)>,
    skips: Vec<(u64, Skip, Vec<u8>)>,
}

/// What a line that starts with `HERD-` says, or `None` if it is not such a line.
enum Directive {
    Epoch(Epoch),
    Version(Version),
    Mark(String, Mark),
    Malformed,
}

fn directive(line: &[u8]) -> Option<Directive> {
    if !line.starts_with(b"HERD-") {
        return None;
    }
    let words: Vec<&[u8]> = fields(line).take(5).collect();
    let number = |text: &[u8]| -> Option<Version> {
        let text = std::str::from_utf8(text).ok()?;
        text.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse().ok())?
    };
    let parsed = match words[..] {
        [b"HERD-EPOCH", epoch] => Epoch::parse(epoch).map(Directive::Epoch),
        [b"HERD-VER", version] => number(version).map(Directive::Version),
        [b"HERD-MARK", name, epoch, version] => {
            match (
                std::str::from_utf8(name),
                Epoch::parse(epoch),
                number(version),
            ) {
                (Ok(name), Some(epoch), Some(version)) => {
                    Some(Directive::Mark(name.to_string(), Mark { epoch, version }))
                }
                _ => None,
            }
        }
        _ => None,
    };
    Some(parsed.unwrap_or(Directive::Malformed))
}

/// Records per batch: large enough that handing one over costs nothing, small enough that
/// the two threads overlap from the start.
const BATCH_RECORDS: usize = 8192;

/// Applies every record read from `input` to `table`; `on_skip` hears of each line skipped
/// (1-based line number, why, and up to 80 bytes of it).
///
/// A scoped thread reads and parses while the caller applies: on two cores a store of
/// 2,000,000 lines is read in about two thirds of the time one thread takes, the table's
/// inserts (memory-bound) and the parsing each having a core.
pub fn replay(
    input: impl Read + Send,
    known_server: impl Fn(&[u8]) -> bool + Sync,
    table: &mut ClientTable,
    mut on_skip: impl FnMut(u64, Skip, &[u8]),
) -> io::Result<Replayed> {
    let (batches, received) = mpsc::sync_channel::<Batch>(4);
    thread::scope(|scope| {
        let reader = scope.spawn(|| read_records(input, &known_server, batches));
        let mut applied = 0;
        for batch in received {
            for (record, version) in &batch.records {
                if let Applied::Stored(_) = table.restore(record, *version) {
                    applied += 1;
                }
            }
            for (line, why, text) in &batch.skips {
                on_skip(*line, *why, text);
            }
        }
        let mut found = reader
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the store reader panicked")))?;
        found.applied = applied;
        Ok(found)
    })
}

/// Reads `input` line by line into batches of parsed records (the reading half of
/// [`replay`]); the counts it returns leave `applied` to the applying half.
fn read_records(
    mut input: impl Read,
    known_server: &impl Fn(&[u8]) -> bool,
    batches: mpsc::SyncSender<Batch>,
) -> io::Result<Replayed> {
    let mut found = Replayed {
        next_version: 1,
        ..Replayed::default()
    };
    let mut batch = Batch::default();
    let mut chunk = vec![0u8; 1 << 20];
    // The line being read, and whether it has grown past the limit (its rest is skipped).
    let mut line: Vec<u8> = Vec::new();
    let mut too_long = false;
    let mut offset: u64 = 0;
    // The applying half has gone only if it panicked; stop reading then.
    let hand_over = |batch: &mut Batch| batches.send(std::mem::take(batch)).is_ok();
    loop {
        let read = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &chunk[..read];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let text = if line.is_empty() {
                &rest[..end]
            } else {
                if !too_long {
                    line.extend_from_slice(&rest[..end]);
                }
                &line[..]
            };
            let too_long_now = too_long || text.len() > MAX_RECORD_BYTES;
            take_line(text, too_long_now, known_server, &mut found, &mut batch);
            offset += end as u64 + 1;
            found.complete_bytes = offset;
            line.clear();
            too_long = false;
            rest = &rest[end + 1..];
            if batch.records.len() >= BATCH_RECORDS && !hand_over(&mut batch) {
                return Ok(found);
            }
        }
        offset += rest.len() as u64;
        if !too_long {
            line.extend_from_slice(rest);
            if line.len() > MAX_RECORD_BYTES {
                too_long = true;
                line.truncate(80);
            }
        }
    }
    if offset > found.complete_bytes {
        found.lines += 1;
        found.skipped += 1;
        let text = line[..line.len().min(80)].to_vec();
        batch.skips.push((found.lines, Skip::Truncated, text));
    }
    hand_over(&mut batch);
    Ok(found)
}

/// One whole line of the store (`too_long`: it was cut at the limit): a directive read into
/// `found`, a record into `batch` with its version, or a skip with its reason.
fn take_line(
    line: &[u8],
    too_long: bool,
    known_server: &impl Fn(&[u8]) -> bool,
    found: &mut Replayed,
    batch: &mut Batch,
) {
    found.lines += 1;
    let mut skip = None;
    match directive(line) {
        Some(Directive::Epoch(epoch)) => found.epoch = Some(epoch),
        Some(Directive::Version(version)) => found.next_version = version,
        Some(Directive::Mark(name, mark)) => match found.marks.iter_mut().find(|m| m.0 == name) {
            Some(known) => known.1 = mark,
            None => found.marks.push((name, mark)),
        },
        Some(Directive::Malformed) => skip = Some(Skip::Corrupt),
        None => {
            // Every record line had a version when it was written, even one unreadable now.
            let version = found.next_version;
            found.next_version += 1;
            let at = if too_long { None } else { AtLine::parse(line) };
            skip = match at {
                None => Some(Skip::Corrupt),
                Some(at) if !known_server(at.server) => Some(Skip::UnknownServer),
                Some(at) => {
                    batch
                        .records
                        .push((AtRecord::from_parsed(&at, line), version));
                    None
                }
            };
        }
    }
    if let Some(skip) = skip {
        found.skipped += 1;
        let text = line[..line.len().min(80)].to_vec();
        batch.skips.push((found.lines, skip, text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `text` in pieces of `piece` bytes, as a file read in chunks would arrive.
    struct Pieces<'a> {
        text: &'a [u8],
        piece: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.piece.min(buf.len()).min(self.text.len());
            buf[..n].copy_from_slice(&self.text[..n]);
            self.text = &self.text[n..];
            Ok(n)
        }
    }

    fn run(text: &str, piece: usize) -> (ClientTable, Replayed, Vec<(u64, Skip)>) {
        let mut table = ClientTable::new();
        let mut skips = Vec::new();
        let input = Pieces {
            text: text.as_bytes(),
            piece,
        };
        let known = |s: &[u8]| s == b"A" || s == b"B";
        let found = replay(input, known, &mut table, |n, why, _| skips.push((n, why))).unwrap();
        (table, found, skips)
    }

    fn known(table: &ClientTable, client: &str) -> Option<String> {
        table
            .line_of(client.as_bytes())
            .map(|l| String::from_utf8_lossy(l).into_owned())
    }

    #[test]
    fn the_newest_record_of_each_client_wins_whatever_the_order() {
        let text = "AT A +0.100000000 kiwi +1+1 20\n\
                    AT B +0.000000000 pear +2+2 5\n\
                    AT B +0.200000000 kiwi +3+3 10\n";
        for piece in [1, 3, 7, 1 << 20] {
            let (table, found, skips) = run(text, piece);
            assert_eq!(table.len(), 2);
            assert_eq!(
                known(&table, "kiwi").as_deref(),
                Some("AT A +0.100000000 kiwi +1+1 20")
            );
            assert_eq!(found.lines, 3);
            assert_eq!(found.applied, 2, "the older kiwi line came last and lost");
            assert_eq!(found.complete_bytes, text.len() as u64);
            assert!(skips.is_empty());
        }
    }

    #[test]
    fn equal_times_follow_the_tie_rule_in_either_order() {
        let a = "AT B +0.300000000 kiwi +1+1 20";
        let b = "AT A +0.100000000 kiwi +5+5 20"; // smaller difference wins
        for text in [format!("{a}\n{b}\n"), format!("{b}\n{a}\n")] {
            let (table, _, _) = run(&text, 4);
            assert_eq!(known(&table, "kiwi").as_deref(), Some(b));
        }
    }

    #[test]
    fn corrupt_lines_and_unknown_servers_are_skipped_by_line_number() {
        let text = "AT A +0.000000000 kiwi +1+1 1\n\
                    garbage \x01 here\n\
                    AT Nobody +0.000000000 pear +1+1 1\n\
                    \n\
                    AT A +0.000000000 fig +91+1 1\n\
                    AT B +0.000000000 plum +1+1 2\n";
        let (table, found, skips) = run(text, 5);
        assert_eq!(
            skips,
            [
                (2, Skip::Corrupt),
                (3, Skip::UnknownServer),
                (4, Skip::Corrupt),
                (5, Skip::Corrupt)
            ]
        );
        assert_eq!(table.len(), 2);
        assert_eq!(found.skipped, 4);
        assert_eq!(found.complete_bytes, text.len() as u64);
    }

    #[test]
    fn a_cut_last_line_is_skipped_even_when_it_parses() {
        // The real record ended "... 1621464827.959"; the crash kept "... 1621464827.9".
        let good = "AT A +0.000000000 kiwi +1+1 1621464800\n";
        let text = format!("{good}AT A +0.000000000 kiwi +1+1 1621464827.9");
        let (table, found, skips) = run(&text, 6);
        assert_eq!(skips, [(2, Skip::Truncated)]);
        assert_eq!(
            known(&table, "kiwi").as_deref(),
            Some("AT A +0.000000000 kiwi +1+1 1621464800")
        );
        assert_eq!(found.complete_bytes, good.len() as u64);
        assert_eq!(found.lines, 2);
    }

    #[test]
    fn an_endless_line_is_cut_off_not_held() {
        let mut text = "X".repeat(MAX_RECORD_BYTES + 10);
        text.push('\n');
        text.push_str("AT A +0.000000000 kiwi +1+1 1\n");
        let (table, found, skips) = run(&text, 64 * 1024);
        assert_eq!(skips, [(1, Skip::Corrupt)]);
        assert_eq!(table.len(), 1);
        assert_eq!(found.complete_bytes, text.len() as u64);
    }

    #[test]
    fn an_empty_store_is_empty() {
        let (table, found, skips) = run("", 10);
        assert!(table.is_empty());
        assert_eq!(
            found,
            Replayed {
                next_version: 1,
                ..Replayed::default()
            }
        );
        assert!(skips.is_empty());
    }
}
