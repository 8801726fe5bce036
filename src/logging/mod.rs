//! The log (SPEC section 6, README "Logs"): `<log dir>/NAME.log`, written through one buffer that
//! the event loop flushes at least once a second and at exit; [`Escaped`] for every byte that
//! came from the network.
//!
//! Events (`accept`, `link up`, `places`, ...) go through simplelog and the `log` macros. The
//! per-line `recv`/`send` records, two or more per command, go through [`traffic`], which
//! writes the same record format into the same buffer without simplelog's per-record
//! formatting machinery: with every line logged, that machinery was 40% of the instructions
//! of an IAMAT (callgrind). Every record is stamped by [`Sink`], so both kinds share one clock
//! and one format: `2026-11-23T14:16:28.018160Z [INFO] recv conn=7 ...`.
//!
//! The buffer goes to the file only when it holds [`BUFFER_BYTES`] or at a flush, and that is
//! where the file is rotated by size (`log max-bytes`, `log keep`) and where a failed write is
//! handled: the records that cannot be written are dropped and counted, never kept without
//! bound and never a reason to stop serving; every later write-out tries again. Nothing here
//! is a syscall per record.
//!
//! `log level` is the level of herd's own records; every other target (ureq, ureq_proto,
//! rustls, ...) is held to warnings and errors ([`level_for`]), so no library's debug or trace
//! output, which quotes what is sent, the Places key included, reaches the file.

use std::borrow::Cow;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter};
use simplelog::{ConfigBuilder, WriteLogger};

use crate::protocol::{decimal, MAX_DECIMAL_DIGITS};

/// Records are held in memory until this many bytes wait (or the next flush): no syscall per
/// line, and at most this much (plus one record) lost if the process is SIGKILLed.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// The one sink every record goes into (set once by [`init`]).
static SINK: OnceLock<Arc<Mutex<Sink>>> = OnceLock::new();
/// `log lines on|off` (SPEC section 6): whether [`traffic`] writes anything.
static TRAFFIC_ON: AtomicBool = AtomicBool::new(false);
/// Bytes of records written to the log file(s) since start.
static BYTES_WRITTEN: AtomicU64 = AtomicU64::new(0);
/// Bytes of records dropped since start because they could not be written.
static BYTES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Bytes of records written to the log since the server started (for metrics).
pub fn bytes_written() -> u64 {
    BYTES_WRITTEN.load(Ordering::Relaxed)
}

/// Bytes of records dropped since the server started because the log could not be written
/// (a full disk, an I/O error, a log directory that is gone); for metrics.
pub fn bytes_dropped() -> u64 {
    BYTES_DROPPED.load(Ordering::Relaxed)
}

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
    let path = file.path.clone();
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
    OWN_LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level);
    TRAFFIC_ON.store(lines, Ordering::Relaxed);
    if let Some(Ok(mut sink)) = SINK.get().map(|sink| sink.lock()) {
        sink.file.rotation = rotation;
    }
}

/// herd's own `log level`, as a `LevelFilter` discriminant (set by [`reconfigure`]).
static OWN_LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

fn own_level() -> LevelFilter {
    match OWN_LEVEL.load(Ordering::Relaxed) {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// The most a target that is not herd's own may log, whatever `log level` says. ureq logs the
/// request line with its query (the legacy API's `key=`) at debug when trace is on, and
/// ureq-proto dumps every byte it sends (the `X-Goog-Api-Key` header) at trace: no library's
/// debug or trace output is let through, so a secret it handles never reaches the log.
pub const OTHERS_MAX_LEVEL: LevelFilter = LevelFilter::Warn;

/// The level a record of `target` is logged at most: `level` (the configured one) for herd's
/// own targets (`herd`, `herd::...`), at most [`OTHERS_MAX_LEVEL`] for every other one.
pub fn level_for(target: &str, level: LevelFilter) -> LevelFilter {
    let own = target
        .strip_prefix("herd")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
    if own {
        level
    } else {
        level.min(OTHERS_MAX_LEVEL)
    }
}

/// simplelog's logger behind [`level_for`]: a record is written only if its target may log at
/// its level. `enabled` says the same, so a library that asks first (`log_enabled!`) does not
/// even format what would be dropped.
struct CappedLogger<L> {
    inner: Box<L>,
}

impl<L: log::Log> log::Log for CappedLogger<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= level_for(metadata.target(), own_level())
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
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
    sink.write_out();
    sink.file.reopen()
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
/// [`Escaped`] does. Only `wire` calls this, so every line in and out is logged the same way,
/// in one place.
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
        sink.push_traffic(&stamp, level, direction, party, &line);
    }
}

/// Records waiting to be written, stamped with the time as each one starts, in front of the
/// log file.
pub struct Sink {
    buf: Vec<u8>,
    clock: StampClock,
    file: LogFile,
}

impl Sink {
    fn new(file: LogFile) -> Sink {
        Sink {
            buf: Vec::with_capacity(BUFFER_BYTES),
            clock: StampClock::default(),
            file,
        }
    }

    fn push_traffic(
        &mut self,
        stamp: &Stamp,
        level: Level,
        direction: Direction,
        party: Party<'_>,
        line: &[u8],
    ) {
        let out = &mut self.buf;
        out.extend_from_slice(stamp);
        out.extend_from_slice(match level {
            Level::Info => b"[INFO] ",
            Level::Debug => b"[DEBUG] ",
            Level::Trace => b"[TRACE] ",
            Level::Warn => b"[WARN] ",
            Level::Error => b"[ERROR] ",
        });
        out.extend_from_slice(match direction {
            Direction::Recv => b"recv ",
            Direction::Send => b"send ",
        });
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
        out.push(b' ');
        // Writing into a Vec cannot fail.
        let _ = write_escaped(out, line);
        out.push(b'\n');
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

    fn stamp_now(&mut self) -> Stamp {
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

    fn flush(&mut self) {
        self.file.follow_path();
        self.write_out();
    }

    /// Hands the buffer to the file and empties it, whether the file took it or not. After
    /// records were dropped, a note of how much goes first, stamped as the first record after
    /// the gap (so the stamps stay in order).
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let (Some(dropped), Some(stamp)) = (self.file.dropping, self.buf.get(..STAMP_BYTES)) {
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
struct RecordWriter {
    sink: Arc<Mutex<Sink>>,
    record: Vec<u8>,
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

/// `NAME.log` as the sink writes it: the open file (none while it cannot be opened), how big
/// it is, when to rotate it, and whether records are being dropped.
struct LogFile {
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
    fn new(path: PathBuf, name: &str, rotation: Rotation) -> LogFile {
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

    /// Opens the path, appending (creating it and its directory if need be).
    fn open(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
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
    fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        self.size = 0;
        self.open()
    }

    /// Notices what others did to the file since the last flush: its size (logrotate's
    /// `copytruncate` empties it) and whether it was deleted, when the path is opened again.
    fn follow_path(&mut self) {
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
    fn write_out(&mut self, pending: &[u8]) {
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

    /// Moves `NAME.log` to `NAME.log.1` (each older one up by one, the oldest past `keep`
    /// replaced), or deletes it with `keep 0`, and opens a new `NAME.log`.
    fn rotate(&mut self) -> io::Result<()> {
        let moves = rotation_moves(&self.path, self.rotation.keep);
        // The file that falls off the end (NAME.log.K, or NAME.log itself with keep 0) goes
        // first, and not here: freeing a 64 MiB file's blocks takes ext4 tens of milliseconds,
        // which would stall the loop (and every thread that logs) in the middle of a turn.
        let oldest = moves
            .first()
            .map_or(self.path.clone(), |(_, to)| to.clone());
        discard_in_background(&oldest)?;
        for (from, to) in moves {
            ignore_missing(fs::rename(from, to))?;
        }
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

/// The next thing a write-out does with the records still `pending` when the file holds
/// `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Write this many bytes (whole records, unless a record never ended) to the file.
    Write(usize),
    /// The next record would take the file past `max-bytes`: rotate first.
    Rotate,
}

fn next_step(pending: &[u8], size: u64, rotation: Rotation) -> Step {
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

/// Formats `YYYY-MM-DDTHH:MM:SS.uuuuuuZ ` (RFC 3339, UTC), redoing the date part only when
/// the second changes.
#[derive(Default)]
struct StampClock {
    second: Option<u64>,
    text: [u8; STAMP_BYTES],
}

/// `2026-11-23T14:16:28.018160Z ` (with its space): every record starts with one.
const STAMP_BYTES: usize = 28;

type Stamp = [u8; STAMP_BYTES];

impl StampClock {
    fn stamp(&mut self, unix_secs: u64, micros: u32) -> &Stamp {
        if self.second != Some(unix_secs) {
            let (year, month, day) = civil_from_days((unix_secs / 86_400) as i64);
            let of_day = unix_secs % 86_400;
            let head = format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
                of_day / 3600,
                of_day / 60 % 60,
                of_day % 60
            );
            self.text[..20].copy_from_slice(&head.as_bytes()[..20]);
            self.text[26] = b'Z';
            self.text[27] = b' ';
            self.second = Some(unix_secs);
        }
        let mut rest = micros.min(999_999);
        for i in (20..26).rev() {
            self.text[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        &self.text
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (the well-known era-based conversion: 400-year eras of 146,097 days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes network bytes escaped: printable ASCII as is, `\` as `\\`, any other byte as `\xNN`.
fn write_escaped(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let plain = rest
            .iter()
            .position(|&b| needs_escape(b))
            .unwrap_or(rest.len());
        out.write_all(&rest[..plain])?;
        let Some(&byte) = rest.get(plain) else {
            break;
        };
        if byte == b'\\' {
            out.write_all(b"\\\\")?;
        } else {
            let hex = b"0123456789abcdef";
            out.write_all(&[
                b'\\',
                b'x',
                hex[usize::from(byte >> 4)],
                hex[usize::from(byte & 15)],
            ])?;
        }
        rest = &rest[plain + 1..];
    }
    Ok(())
}

fn needs_escape(byte: u8) -> bool {
    !(b' '..=b'~').contains(&byte) || byte == b'\\'
}

/// Network bytes made safe for a log line: printable ASCII stays, `\` becomes `\\`, every
/// other byte (control characters, DEL, non-ASCII) becomes `\xNN`.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(self.0.len());
        let _ = write_escaped(&mut text, self.0);
        // Escaped output is printable ASCII.
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_and_backslashes_are_escaped() {
        let shown = Escaped(b"IAMAT a\x01b\x1b[2J \\ \x7f\xff\tz").to_string();
        assert_eq!(shown, "IAMAT a\\x01b\\x1b[2J \\\\ \\x7f\\xff\\x09z");
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            Escaped(b"AT Campbell +0.1 kiwi").to_string(),
            "AT Campbell +0.1 kiwi"
        );
        assert_eq!(Escaped(b"").to_string(), "");
    }

    #[test]
    fn other_targets_are_capped_at_warn_and_herd_keeps_its_level() {
        use LevelFilter::*;
        for target in ["herd", "herd::places::pool", "herd::event_loop"] {
            for level in [Off, Error, Warn, Info, Debug, Trace] {
                assert_eq!(level_for(target, level), level, "{target} {level}");
            }
        }
        for target in [
            "ureq",
            "ureq::unversioned::transport::tcp",
            "ureq_proto::util",
            "rustls",
            "herdsman",
            "herd_test_support",
            "",
            "mio::poll",
        ] {
            assert_eq!(level_for(target, Trace), Warn, "{target}");
            assert_eq!(level_for(target, Debug), Warn, "{target}");
            assert_eq!(level_for(target, Warn), Warn, "{target}");
            assert_eq!(level_for(target, Error), Error, "{target}");
            assert_eq!(level_for(target, Off), Off, "{target}");
        }
    }

    #[test]
    fn the_capped_logger_drops_what_its_target_may_not_log() {
        use log::{Level, Log, Metadata, Record};
        use std::sync::atomic::AtomicUsize;

        #[derive(Default)]
        struct Counting(AtomicUsize);
        impl Log for Counting {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn log(&self, _: &Record<'_>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
            fn flush(&self) {}
        }

        // The level is the process's (no other unit test reads it).
        OWN_LEVEL.store(LevelFilter::Trace as usize, Ordering::Relaxed);
        let logger = CappedLogger {
            inner: Box::new(Counting::default()),
        };
        let record = |target, level| {
            let metadata = Metadata::builder().target(target).level(level).build();
            (logger.enabled(&metadata), {
                logger.log(
                    &Record::builder()
                        .metadata(metadata)
                        .args(format_args!("x"))
                        .build(),
                );
                logger.inner.0.load(Ordering::Relaxed)
            })
        };
        assert_eq!(record("herd::places::pool", Level::Trace), (true, 1));
        assert_eq!(record("ureq_proto::util", Level::Trace), (false, 1));
        assert_eq!(record("ureq::run", Level::Debug), (false, 1));
        assert_eq!(record("ureq::run", Level::Warn), (true, 2));
        assert_eq!(record("rustls::conn", Level::Error), (true, 3));
    }

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

    #[test]
    fn stamps_are_rfc3339_utc_with_microseconds() {
        let mut clock = StampClock::default();
        assert_eq!(clock.stamp(0, 0), b"1970-01-01T00:00:00.000000Z ");
        assert_eq!(
            clock.stamp(1_621_464_827, 959_498),
            b"2021-05-19T22:53:47.959498Z "
        );
        assert_eq!(
            clock.stamp(1_621_464_827, 7),
            b"2021-05-19T22:53:47.000007Z "
        );
        // 2024-02-29 (leap day) and 2100-03-01 (century, not leap)
        assert_eq!(&clock.stamp(1_709_164_800, 0)[..10], b"2024-02-29");
        assert_eq!(&clock.stamp(4_107_542_400, 0)[..10], b"2100-03-01");
    }
}
