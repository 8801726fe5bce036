//! The log (SPEC section 6, README "Logs"): `<log dir>/NAME.log`, written through one buffer that
//! the event loop flushes at least once a second and at exit; [`Escaped`] for every byte that
//! came from the network. This file is the log's public face (opening it, reconfiguring it on a
//! reload, flushing and reopening it, its counters); it formats, buffers and writes nothing
//! itself.
//!
//! Events (`accept`, `link up`, `places`, ...) go through simplelog and the `log` macros. The
//! per-line `recv`/`send` records, two or more per command, go through [`traffic`]
//! (`traffic.rs`), which writes the same record format into the same buffer without
//! simplelog's per-record formatting machinery: with every line logged, that machinery was 40%
//! of the instructions of an IAMAT (callgrind). Every record is stamped by [`Sink`]
//! (`sink.rs`, `stamp.rs`), so both kinds share one clock and one format:
//! `2026-11-23T14:16:28.018160Z [INFO] recv conn=7 ...`.
//!
//! The buffer goes to the file (`file.rs`) only when it holds [`BUFFER_BYTES`] or at a flush,
//! and that is where the file is rotated by size (`log max-bytes`, `log keep`; `rotation.rs`)
//! and where a failed write is handled: the records that cannot be written are dropped and
//! counted, never kept without bound and never a reason to stop serving; every later write-out
//! tries again. Nothing here is a syscall per record.
//!
//! `log level` is the level of herd's own records; every other target (ureq, ureq_proto,
//! rustls, ...) is held to warnings and errors ([`level_for`], `level.rs`), so no library's
//! debug or trace output, which quotes what is sent, the Places key included, reaches the file.

mod file;
mod level;
mod rotation;
mod sink;
mod stamp;
mod traffic;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use log::LevelFilter;
use simplelog::{ConfigBuilder, WriteLogger};

pub use level::{level_for, OTHERS_MAX_LEVEL};
pub use rotation::Rotation;
pub use sink::{Sink, BUFFER_BYTES};
pub use traffic::{traffic, traffic_lines, traffic_refusal, Direction, Party};

use file::LogFile;
use level::CappedLogger;
use sink::{RecordWriter, SINK};

/// Bytes of records written to the log since the server started (for metrics).
pub fn bytes_written() -> u64 {
    file::bytes_written()
}

/// Bytes of records dropped since the server started because the log could not be written
/// (a full disk, an I/O error, a log directory that is gone); for metrics.
pub fn bytes_dropped() -> u64 {
    file::bytes_dropped()
}

/// Opens (appending) `dir/NAME.log` and makes it the process's logger; `lines` turns the
/// per-line traffic records on, `rotation` says when the file is rotated. Returns the log's
/// path.
pub fn init(
    dir: &Path,
    name: &str,
    level: LevelFilter,
    lines: bool,
    rotation: Rotation,
) -> io::Result<PathBuf> {
    let mut file = LogFile::new(dir.join(format!("{name}.log")), name, rotation);
    file.open()?;
    let path = file.path().to_path_buf();
    let sink = Arc::new(Mutex::new(Sink::new(file)));
    let config = ConfigBuilder::new()
        .set_time_level(LevelFilter::Off) // the sink stamps every record
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    // Libraries are capped by a wrapper rather than simplelog's target filters: those only
    // allow or ignore target prefixes per logger (a level per target would take two loggers,
    // and the prefix `herd` also matches `herdsman`), and a WriteLogger's `enabled` ignores
    // them, so `log_enabled!(Trace)` in ureq would still say yes and it would format the URL.
    // simplelog's own filter lets everything through: the level is the capped logger's, so a
    // reload can change it.
    let writer = WriteLogger::new(
        LevelFilter::Trace,
        config,
        RecordWriter {
            sink: Arc::clone(&sink),
            record: Vec::new(),
        },
    );
    log::set_boxed_logger(Box::new(CappedLogger { inner: writer })).map_err(io::Error::other)?;
    let _ = SINK.set(sink);
    reconfigure(level, lines, rotation);
    Ok(path)
}

/// `log level`, `log lines` and the rotation settings, changed in the running process (a
/// reload on SIGHUP).
pub fn reconfigure(level: LevelFilter, lines: bool, rotation: Rotation) {
    level::set_own_level(level);
    traffic::set_on(lines);
    if let Some(Ok(mut sink)) = SINK.get().map(|sink| sink.lock()) {
        sink.set_rotation(rotation);
    }
}

/// Writes buffered records to the file (the loop calls it at least once a second and at
/// exit). A log file that was deleted under us (`rm NAME.log`) is noticed here and opened
/// afresh at its path.
pub fn flush() {
    if let Some(Ok(mut sink)) = SINK.get().map(|sink| sink.lock()) {
        sink.flush();
    }
}

/// Writes buffered records to the file as it is, then opens the log's path afresh: after
/// `mv NAME.log NAME.log.1` (logrotate's way), what follows goes to a new `NAME.log`. When
/// the path cannot be opened the records are dropped (and said so on stderr) until a later
/// write-out can open it.
pub fn reopen() -> io::Result<()> {
    let sink = SINK
        .get()
        .ok_or_else(|| io::Error::other("no log is open"))?;
    let mut sink = sink.lock().map_err(|_| io::Error::other("log poisoned"))?;
    sink.reopen()
}
