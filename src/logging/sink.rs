//! The one buffer every record goes into: stamped as it starts, gathered in memory and handed
//! to the file [`BUFFER_BYTES`] at a time or at a flush, with a note of what was dropped
//! before it. It never touches the file system itself (`file.rs` does) and never decides
//! whether a record is made (`level.rs`, `traffic.rs`).

use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::file::LogFile;
use super::rotation::Rotation;
use super::stamp::{Stamp, StampClock, STAMP_BYTES};

/// Records are held in memory until this many bytes wait (or the next flush): no syscall per
/// line, and at most this much (plus one record) lost if the process is SIGKILLed.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// The one sink every record goes into (set once by `logging::init`).
pub(super) static SINK: OnceLock<Arc<Mutex<Sink>>> = OnceLock::new();

/// Records waiting to be written, stamped with the time as each one starts, in front of the
/// log file.
pub struct Sink {
    buf: Vec<u8>,
    clock: StampClock,
    file: LogFile,
}

impl Sink {
    pub(super) fn new(file: LogFile) -> Sink {
        Sink {
            buf: Vec::with_capacity(BUFFER_BYTES),
            clock: StampClock::default(),
            file,
        }
    }

    pub(super) fn set_rotation(&mut self, rotation: Rotation) {
        self.file.set_rotation(rotation);
    }

    /// One whole record (stamp included) written by `write` straight into the buffer, so a
    /// traffic record costs no allocation of its own.
    pub(super) fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.buf);
        self.record_done();
    }

    /// One whole record made by simplelog (its level, its text, its `\n`).
    fn push_record(&mut self, record: &[u8]) {
        self.push_stamp();
        self.buf.extend_from_slice(record);
        self.record_done();
    }

    fn push_stamp(&mut self) {
        let stamp = self.stamp_now();
        self.buf.extend_from_slice(&stamp);
    }

    pub(super) fn stamp_now(&mut self) -> Stamp {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        *self
            .clock
            .stamp(since_epoch.as_secs(), since_epoch.subsec_micros())
    }

    /// Records are written out only between records, so the file is rotated between them.
    fn record_done(&mut self) {
        if self.buf.len() >= BUFFER_BYTES {
            self.write_out();
        }
    }

    pub(super) fn flush(&mut self) {
        self.file.follow_path();
        self.write_out();
    }

    /// Writes what waits to the file as it is, then opens the log's path afresh.
    pub(super) fn reopen(&mut self) -> io::Result<()> {
        self.write_out();
        self.file.reopen()
    }

    /// Hands the buffer to the file and empties it, whether the file took it or not. After
    /// records were dropped, a note of how much goes first, stamped as the first record after
    /// the gap (so the stamps stay in order).
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let (Some(dropped), Some(stamp)) = (self.file.dropping(), self.buf.get(..STAMP_BYTES)) {
            let mut note = stamp.to_vec();
            let _ = writeln!(
                note,
                "[WARN] log: {dropped} bytes of records before this one could not be written \
                 and were dropped"
            );
            self.file.write_out(&note);
        }
        self.file.write_out(&self.buf);
        self.buf.clear();
    }
}

/// simplelog's writer: it collects one record's pieces and hands the sink the whole record,
/// so no record is cut by another thread's (a Places worker's) or by a rotation.
pub(super) struct RecordWriter {
    pub(super) sink: Arc<Mutex<Sink>>,
    pub(super) record: Vec<u8>,
}

impl Write for RecordWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.record.extend_from_slice(buf);
        if self.record.ends_with(b"\n") {
            let mut sink = self
                .sink
                .lock()
                .map_err(|_| io::Error::other("log poisoned"))?;
            sink.push_record(&self.record);
            self.record.clear();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut sink = self
            .sink
            .lock()
            .map_err(|_| io::Error::other("log poisoned"))?;
        sink.flush();
        Ok(())
    }
}
