//! Compaction: the store's log rewritten as one line per client, without stalling the loop.
//!
//! The rewrite goes to `NAME.store.compacting`, a few thousand records per loop turn, walking
//! the client table by index (indices are stable; the table only grows). Every record stored
//! while it runs is appended to both files, so when the walk is done the new file holds every
//! client's newest record: either the walk copied it, or it arrived later and was appended.
//! Which of two lines of a client comes first does not matter; the newest wins on reading.
//! Then a thread syncs the new file, renames it over the old one and syncs the directory; the
//! loop keeps appending to both until it hears the rename happened.
//!
//! A crash at any moment loses nothing: before the rename the old file is whole (every record
//! was appended to it too), after it the new one is, and a leftover `.compacting` file is
//! removed at start-up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;

use crate::changes::Version;
use crate::table::{ClientTable, RecordIndex};

/// Records copied per loop turn (about 150 KiB of lines): small enough that a turn stays well
/// under a millisecond, large enough that a million clients take a few hundred turns.
pub const RECORDS_PER_STEP: usize = 2048;

/// Whether a log of `file_bytes` should be rewritten, when its clients' newest lines take
/// `live_bytes` (newlines included): once it is twice that, and past the floor.
pub fn is_due(file_bytes: u64, live_bytes: u64, min_bytes: u64) -> bool {
    file_bytes > min_bytes && file_bytes > live_bytes.saturating_mul(2)
}

enum Phase {
    /// Walking the table; `next` is the next index to copy.
    Copying { next: RecordIndex },
    /// A thread is syncing and renaming; it answers once.
    Finishing { done: Receiver<io::Result<Renamed>> },
}

/// What one step of a compaction came to.
pub enum Progress {
    Working,
    /// The new file is in place: take it with [`Compaction::into_file`] and append to it from
    /// now on (`bytes` long so far). If the
    /// directory could not be synced after the rename, `dir_unsynced` says why (the rename is
    /// done; only a power loss could undo it).
    Replaced {
        bytes: u64,
        dir_unsynced: Option<io::Error>,
    },
}

/// The rename happened; whether the directory was synced after it.
type Renamed = Option<io::Error>;

pub struct Compaction {
    file: File,
    temp_path: PathBuf,
    /// The bytes written to the new file so far.
    bytes: u64,
    phase: Phase,
    scratch: Vec<u8>,
    /// The version the next copied line has without a `HERD-VER` before it.
    next_version: Version,
}

impl Compaction {
    /// Creates the new file (replacing a leftover one), starting with the history's epoch and
    /// the neighbours' marks as `table` holds them now: every record it holds now is copied
    /// (or a newer version appended), so the marks stay true of the new file.
    pub fn start(temp_path: &Path, table: &ClientTable) -> io::Result<Compaction> {
        match fs::remove_file(temp_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(temp_path)?;
        let mut header = format!("HERD-EPOCH {}\n", table.epoch());
        for (neighbour, mark) in table.marks() {
            header += &format!("HERD-MARK {neighbour} {} {}\n", mark.epoch, mark.version);
        }
        file.write_all(header.as_bytes())?;
        Ok(Compaction {
            file,
            temp_path: temp_path.to_path_buf(),
            bytes: header.len() as u64,
            phase: Phase::Copying { next: 0 },
            scratch: Vec::with_capacity(256 * 1024),
            next_version: 0,
        })
    }

    /// With `fsync always`: once the copy is done, the rename may happen at any moment, and
    /// what was appended to the new file since the thread synced it must be on the device too.
    pub fn sync_if_finishing(&self) -> io::Result<()> {
        match self.phase {
            Phase::Finishing { .. } => self.file.sync_data(),
            Phase::Copying { .. } => Ok(()),
        }
    }

    pub fn is_copying(&self) -> bool {
        matches!(self.phase, Phase::Copying { .. })
    }

    /// Appends records stored meanwhile (the same bytes the old file got).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.bytes += bytes.len() as u64;
        // The bytes start with a `HERD-VER`: the next copied line needs one of its own.
        self.next_version = 0;
        Ok(())
    }

    /// Copies the next records of `table`; once all are copied, starts the thread that puts
    /// the file in place at `final_path`; then reports when it has.
    pub fn step(&mut self, table: &ClientTable, final_path: &Path) -> io::Result<Progress> {
        match &mut self.phase {
            Phase::Copying { next } => {
                let start = *next;
                let end = (start + RECORDS_PER_STEP).min(table.len());
                self.scratch.clear();
                for index in start..end {
                    if let Some(line) = table.line_at(index) {
                        let version = table.version_at(index);
                        if version != self.next_version {
                            self.scratch
                                .extend_from_slice(format!("HERD-VER {version}\n").as_bytes());
                        }
                        self.scratch.extend_from_slice(line);
                        self.scratch.push(b'\n');
                        self.next_version = version + 1;
                    }
                }
                self.file.write_all(&self.scratch)?;
                self.bytes += self.scratch.len() as u64;
                *next = end;
                if end >= table.len() {
                    let file = self.file.try_clone()?;
                    let (temp, target) = (self.temp_path.clone(), final_path.to_path_buf());
                    let (report, done) = mpsc::channel();
                    thread::Builder::new()
                        .name("store-compact".into())
                        .stack_size(64 * 1024)
                        .spawn(move || {
                            let _ = report.send(put_in_place(&file, &temp, &target));
                        })?;
                    self.phase = Phase::Finishing { done };
                }
                Ok(Progress::Working)
            }
            Phase::Finishing { done } => match done.try_recv() {
                Err(TryRecvError::Empty) => Ok(Progress::Working),
                Err(TryRecvError::Disconnected) => Err(io::Error::other("compaction thread died")),
                Ok(Err(e)) => Err(e),
                Ok(Ok(dir_unsynced)) => Ok(Progress::Replaced {
                    bytes: self.bytes,
                    dir_unsynced,
                }),
            },
        }
    }

    /// The new file, now the store (after [`Progress::Replaced`]).
    pub fn into_file(self) -> File {
        self.file
    }

    /// Gives up after [`Compaction::step`] failed: the old file stays as it is. (A step
    /// fails only before the rename: once it has happened, the step says `Replaced`.)
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.temp_path);
    }
}

/// Syncs the new file and renames it over the old one; then syncs the directory so the
/// rename itself survives a power loss.
fn put_in_place(file: &File, temp: &Path, target: &Path) -> io::Result<Renamed> {
    file.sync_data()?;
    fs::rename(temp, target)?;
    Ok(sync_dir(target).err())
}

/// Syncs the directory holding `path` (a new name in it is durable after this).
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_past_twice_the_live_bytes_and_past_the_floor() {
        assert!(!is_due(100, 10, 1000), "under the floor");
        assert!(!is_due(2000, 1000, 1000), "exactly twice is not past it");
        assert!(is_due(2001, 1000, 1000));
        assert!(!is_due(5000, 3000, 1000));
        assert!(
            is_due(5000, 0, 1000),
            "every record gone stale is still due"
        );
    }
}
