//! Rotation by size (`log max-bytes`, `log keep`): where a write-out must stop for the file to
//! be rotated, and rotating it (renames, oldest first; the file that falls off the end removed
//! on a thread). It never writes records and never opens the log file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// When `NAME.log` is rotated (`log max-bytes`) and how many old files stay (`log keep`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// `NAME.log` never grows past this (unless one record alone is longer); 0: no limit.
    pub max_bytes: u64,
    /// Old files kept, `NAME.log.1` (the newest) to `NAME.log.K`; 0: `NAME.log` is started
    /// afresh and nothing is kept.
    pub keep: u32,
}

impl Rotation {
    /// The smallest `log max-bytes` other than 0.
    pub const MIN_MAX_BYTES: u64 = 4096;
}

impl Default for Rotation {
    /// 64 MiB x (1 + 4) files: a server's log takes at most 320 MiB, which at the busiest
    /// measured rate (about 2.5 KB of log per IAMAT across a herd) still holds minutes of
    /// every line, and hours of an ordinary herd.
    fn default() -> Self {
        Rotation {
            max_bytes: 64 << 20,
            keep: 4,
        }
    }
}

/// The next thing a write-out does with the records still `pending` when the file holds
/// `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Write this many bytes (whole records, unless a record never ended) to the file.
    Write(usize),
    /// The next record would take the file past `max-bytes`: rotate first.
    Rotate,
}

pub(super) fn next_step(pending: &[u8], size: u64, rotation: Rotation) -> Step {
    let room = rotation.max_bytes.saturating_sub(size);
    if rotation.max_bytes == 0 || pending.len() as u64 <= room {
        return Step::Write(pending.len());
    }
    // `room` is below `pending.len()` here, so it fits in a usize.
    let fits = &pending[..room as usize];
    match fits.iter().rposition(|&b| b == b'\n') {
        Some(end) => Step::Write(end + 1),
        None if size > 0 => Step::Rotate,
        // One record longer than max-bytes: it gets a file of its own rather than be cut.
        None => Step::Write(
            pending
                .iter()
                .position(|&b| b == b'\n')
                .map_or(pending.len(), |end| end + 1),
        ),
    }
}

/// Moves `path` to `path.1` (each older one up by one, the oldest past `keep` replaced), or
/// deletes it with `keep 0`. The caller opens a new file at `path`.
pub(super) fn rotate_files(path: &Path, keep: u32) -> io::Result<()> {
    let moves = rotation_moves(path, keep);
    // The file that falls off the end (NAME.log.K, or NAME.log itself with keep 0) goes
    // first, and not here: freeing a 64 MiB file's blocks takes ext4 tens of milliseconds,
    // which would stall the loop (and every thread that logs) in the middle of a turn.
    let oldest = moves
        .first()
        .map_or(path.to_path_buf(), |(_, to)| to.clone());
    discard_in_background(&oldest)?;
    for (from, to) in moves {
        ignore_missing(fs::rename(from, to))?;
    }
    Ok(())
}

/// The renames that rotate `path` keeping `keep` old files, in the order they must happen
/// (oldest first, so none overwrites a file not yet moved): `NAME.log.(K-1)` -> `NAME.log.K`,
/// ..., `NAME.log` -> `NAME.log.1`. Empty for `keep` 0.
fn rotation_moves(path: &Path, keep: u32) -> Vec<(PathBuf, PathBuf)> {
    let numbered = |n: u32| -> PathBuf {
        if n == 0 {
            return path.to_path_buf();
        }
        let mut name = path.as_os_str().to_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    (1..=keep)
        .rev()
        .map(|n| (numbered(n - 1), numbered(n)))
        .collect()
}

/// Renames `path` aside (to a hidden `.NAME.log.K.discarded` beside it, which no log glob
/// matches) and removes it on a thread of its own (inline if none can start).
fn discard_in_background(path: &Path) -> io::Result<()> {
    let Some(file_name) = path.file_name() else {
        return Ok(());
    };
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(file_name);
    hidden.push(".discarded");
    let aside = path.with_file_name(hidden);
    match fs::rename(path, &aside) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    }
    let remover = aside.clone();
    let spawned = std::thread::Builder::new()
        .name("log-discard".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = fs::remove_file(remover);
        });
    if spawned.is_err() {
        ignore_missing(fs::remove_file(&aside))?;
    }
    Ok(())
}

/// A file that is not there is one less to move.
fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(max_bytes: u64, keep: u32) -> Rotation {
        Rotation { max_bytes, keep }
    }

    #[test]
    fn records_that_fit_are_written_whole() {
        let pending = b"one\ntwo\n";
        assert_eq!(next_step(pending, 0, rotation(100, 2)), Step::Write(8));
        assert_eq!(next_step(pending, 92, rotation(100, 2)), Step::Write(8));
        // max-bytes 0: never rotated, whatever the size.
        assert_eq!(next_step(pending, u64::MAX, rotation(0, 2)), Step::Write(8));
    }

    #[test]
    fn the_file_is_cut_between_records_at_max_bytes() {
        let pending = b"one\ntwo\nthree\n";
        // 10 bytes of room: "one\ntwo\n" (8) fits, "three\n" does not.
        assert_eq!(next_step(pending, 90, rotation(100, 2)), Step::Write(8));
        assert_eq!(next_step(b"three\n", 98, rotation(100, 2)), Step::Rotate);
        // Exactly full is not past it.
        assert_eq!(next_step(b"three\n", 94, rotation(100, 2)), Step::Write(6));
        // A file already past max-bytes (appended to by an earlier run) rotates first.
        assert_eq!(next_step(pending, 500, rotation(100, 2)), Step::Rotate);
    }

    #[test]
    fn a_record_longer_than_max_bytes_gets_a_file_of_its_own() {
        let long = [vec![b'x'; 150], b"\nnext\n".to_vec()].concat();
        assert_eq!(next_step(&long, 20, rotation(100, 1)), Step::Rotate);
        assert_eq!(next_step(&long, 0, rotation(100, 1)), Step::Write(151));
        assert_eq!(next_step(b"never ends", 0, rotation(4, 1)), Step::Write(10));
    }

    #[test]
    fn rotation_moves_the_oldest_first_and_keeps_k() {
        let moves = rotation_moves(Path::new("/var/log/herd/Bona.log"), 3);
        let shown: Vec<(String, String)> = moves
            .iter()
            .map(|(from, to)| (from.display().to_string(), to.display().to_string()))
            .collect();
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            shown,
            [
                pair("/var/log/herd/Bona.log.2", "/var/log/herd/Bona.log.3"),
                pair("/var/log/herd/Bona.log.1", "/var/log/herd/Bona.log.2"),
                pair("/var/log/herd/Bona.log", "/var/log/herd/Bona.log.1"),
            ]
        );
        assert_eq!(
            rotation_moves(Path::new("Bona.log"), 1),
            [(PathBuf::from("Bona.log"), PathBuf::from("Bona.log.1"))]
        );
        assert!(rotation_moves(Path::new("Bona.log"), 0).is_empty());
    }

    #[test]
    fn no_move_overwrites_a_file_that_has_not_moved_yet() {
        for keep in 1..6 {
            let moves = rotation_moves(Path::new("A.log"), keep);
            assert_eq!(moves.len(), keep as usize);
            for (i, (_, to)) in moves.iter().enumerate() {
                let moved_later = moves[i + 1..].iter().any(|(from, _)| from == to);
                assert!(
                    !moved_later,
                    "keep {keep}: {to:?} is overwritten before it moves"
                );
            }
            // Nothing ever lands past NAME.log.K.
            let past = PathBuf::from(format!("A.log.{}", keep + 1));
            assert!(moves.iter().all(|(_, to)| *to != past));
        }
    }

    #[test]
    fn default_rotation_bounds_the_log() {
        let default = Rotation::default();
        assert_eq!(default, rotation(64 << 20, 4));
        assert!(default.max_bytes >= Rotation::MIN_MAX_BYTES);
    }
}
