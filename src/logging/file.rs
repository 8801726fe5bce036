//! `NAME.log` itself: opening it, noticing what others did to it, writing whole records into
//! it and rotating it when `log max-bytes` says so, and dropping (and counting) what cannot be
//! written, so a full disk or a log directory that is gone never stops the server. It never
//! buffers, stamps or formats records: it writes what the sink hands it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::rotation::{next_step, rotate_files, Rotation, Step};
use crate::escape::Escaped;

/// Bytes of records written to the log file(s) since start.
static BYTES_WRITTEN: AtomicU64 = AtomicU64::new(0);
/// Bytes of records dropped since start because they could not be written.
static BYTES_DROPPED: AtomicU64 = AtomicU64::new(0);

pub(super) fn bytes_written() -> u64 {
    BYTES_WRITTEN.load(Ordering::Relaxed)
}

pub(super) fn bytes_dropped() -> u64 {
    BYTES_DROPPED.load(Ordering::Relaxed)
}

/// `NAME.log` as the sink writes it: the open file (none while it cannot be opened), how big
/// it is, when to rotate it, and whether records are being dropped.
pub(super) struct LogFile {
    path: PathBuf,
    /// The server's name, for the lines on stderr.
    name: String,
    file: Option<File>,
    /// Bytes in the file, as far as this process knows (re-read at every flush).
    size: u64,
    rotation: Rotation,
    /// A write stopped part-way through a record: the next one starts on a new line.
    mid_record: bool,
    /// Records are being dropped: bytes dropped since the last successful write-out.
    dropping: Option<u64>,
}

impl LogFile {
    pub(super) fn new(path: PathBuf, name: &str, rotation: Rotation) -> LogFile {
        LogFile {
            path,
            name: name.to_string(),
            file: None,
            size: 0,
            rotation,
            mid_record: false,
            dropping: None,
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes dropped since the last successful write-out, while records are being dropped.
    pub(super) fn dropping(&self) -> Option<u64> {
        self.dropping
    }

    /// Takes effect at the next write-out: a file already past a smaller `max-bytes` is
    /// rotated before anything more is written to it.
    pub(super) fn set_rotation(&mut self, rotation: Rotation) {
        self.rotation = rotation;
    }

    /// Opens the path, appending (creating it and its directory if need be).
    pub(super) fn open(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        self.mid_record = false;
        Ok(())
    }

    /// Closes the file and opens the path again. Until an open succeeds the size is taken
    /// as 0, so a write-out that cannot open the file retries the open rather than rotate
    /// the old files once more.
    pub(super) fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        self.size = 0;
        self.open()
    }

    /// Notices what others did to the file since the last flush: its size (logrotate's
    /// `copytruncate` empties it) and whether it was deleted, when the path is opened again.
    pub(super) fn follow_path(&mut self) {
        let Some(meta) = self.file.as_ref().and_then(|f| f.metadata().ok()) else {
            return;
        };
        self.size = meta.len();
        if meta.nlink() == 0 {
            // Writes to a deleted file succeed and are lost; a failed open is retried at
            // every write-out, dropping records meanwhile.
            let _ = self.reopen();
        }
    }

    /// Writes `pending` (whole records), rotating the file where it would pass `log
    /// max-bytes`. What cannot be written is dropped and counted; the first drop of an
    /// episode is said on stderr, and so is the write-out that ends it.
    pub(super) fn write_out(&mut self, pending: &[u8]) {
        let mut done = 0;
        while done < pending.len() {
            let rest = &pending[done..];
            // A record cut by a failed write is ended by a `\n` first: count it as written.
            let size = self.size + u64::from(self.mid_record);
            let result = match next_step(rest, size, self.rotation) {
                Step::Rotate => self.rotate(),
                Step::Write(n) => {
                    let (written, result) = self.write_bytes(&rest[..n]);
                    done += written;
                    result
                }
            };
            if let Err(e) = result {
                self.drop_bytes((pending.len() - done) as u64, &e);
                return;
            }
        }
        let Some(dropped) = self.dropping.take() else {
            return;
        };
        let _ = writeln!(
            io::stderr(),
            "herd {}: log {}: writing again, after dropping {dropped} bytes of records",
            self.name,
            Escaped(self.path.as_os_str().as_bytes())
        );
    }

    /// Writes `bytes` to the file (opening it first if it is not open); returns how many
    /// were written, and the error that stopped it.
    fn write_bytes(&mut self, bytes: &[u8]) -> (usize, io::Result<()>) {
        if self.file.is_none() {
            if let Err(e) = self.open() {
                return (0, Err(e));
            }
        }
        let Some(file) = self.file.as_mut() else {
            return (0, Err(io::Error::other("log file not open")));
        };
        if self.mid_record {
            match file.write(b"\n") {
                Ok(1) => {
                    self.mid_record = false;
                    self.size += 1;
                    BYTES_WRITTEN.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => return (0, Err(io::ErrorKind::WriteZero.into())),
                Err(e) => return (0, Err(e)),
            }
        }
        let mut written = 0;
        let result = loop {
            if written == bytes.len() {
                break Ok(());
            }
            match file.write(&bytes[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.size += written as u64;
        BYTES_WRITTEN.fetch_add(written as u64, Ordering::Relaxed);
        if written > 0 {
            self.mid_record = bytes[written - 1] != b'\n';
        }
        (written, result)
    }

    /// Moves `NAME.log` aside (`rotation.rs` says how) and opens a new `NAME.log`.
    fn rotate(&mut self) -> io::Result<()> {
        rotate_files(&self.path, self.rotation.keep)?;
        self.reopen()
    }

    fn drop_bytes(&mut self, bytes: u64, error: &io::Error) {
        BYTES_DROPPED.fetch_add(bytes, Ordering::Relaxed);
        match &mut self.dropping {
            Some(dropped) => *dropped += bytes,
            None => {
                self.dropping = Some(bytes);
                let _ = writeln!(
                    io::stderr(),
                    "herd {}: log {}: cannot write ({error}): dropping records until it can",
                    self.name,
                    Escaped(self.path.as_os_str().as_bytes())
                );
            }
        }
    }
}
