//! The server's log (SPEC section 6): `<log dir>/NAME.log`, written through one buffer that the
//! event loop flushes at least once a second and at exit; [`Escaped`] for every byte that came
//! from the network.
//!
//! Events (`accept`, `link up`, `places`, ...) go through simplelog and the `log` macros. The
//! per-line `recv`/`send` records, two or more per command, go through [`traffic`], which
//! writes the same record format into the same buffer without simplelog's per-record
//! formatting machinery: with every line logged, that machinery was 40% of the instructions
//! of an IAMAT (callgrind). Every record is stamped by [`Sink`], so both kinds share one clock
//! and one format: `2026-11-23T14:16:28.018160Z [INFO] recv conn=7 ...`.
//!
//! `log level` is the level of herd's own records; every other target (ureq, ureq_proto,
//! rustls, ...) is held to warnings and errors ([`level_for`]), so no library's debug or trace
//! output, which quotes what is sent, the Places key included, reaches the file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter};
use simplelog::{ConfigBuilder, WriteLogger};

use crate::protocol::{decimal, MAX_DECIMAL_DIGITS};

/// The traffic records' way into the log file (set once by [`init`]).
static TRAFFIC_SINK: OnceLock<Arc<Mutex<Sink>>> = OnceLock::new();
/// `log lines on|off` (SPEC section 6): whether [`traffic`] writes anything.
static TRAFFIC_ON: AtomicBool = AtomicBool::new(false);

/// Opens (appending) `dir/NAME.log` and makes it the process's logger; `lines` turns the
/// per-line traffic records on. Returns the log's path.
pub fn init(dir: &Path, name: &str, level: LevelFilter, lines: bool) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.log"));
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    // 64 KiB of buffer: no syscall per line; the loop's periodic flush bounds the delay.
    let sink = Arc::new(Mutex::new(Sink::new(BufWriter::with_capacity(
        64 * 1024,
        file,
    ))));
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
    let writer = WriteLogger::new(level, config, SinkWriter(Arc::clone(&sink)));
    log::set_boxed_logger(Box::new(CappedLogger {
        level,
        inner: writer,
    }))
    .map_err(io::Error::other)?;
    log::set_max_level(level);
    let _ = TRAFFIC_SINK.set(sink);
    TRAFFIC_ON.store(lines, Ordering::Relaxed);
    Ok(path)
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
    level: LevelFilter,
    inner: Box<L>,
}

impl<L: log::Log> log::Log for CappedLogger<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= level_for(metadata.target(), self.level)
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

/// Writes buffered log records to the file.
pub fn flush() {
    log::logger().flush();
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
    if !TRAFFIC_ON.load(Ordering::Relaxed) || log::max_level() < level {
        return;
    }
    let Some(sink) = TRAFFIC_SINK.get() else {
        return;
    };
    let Ok(mut sink) = sink.lock() else {
        return;
    };
    let _ = sink.write_traffic(level, direction, party, line);
}

/// The log file behind its buffer, stamping the start of every record with the time.
pub struct Sink {
    out: BufWriter<File>,
    at_record_start: bool,
    clock: StampClock,
}

impl Sink {
    fn new(out: BufWriter<File>) -> Sink {
        Sink {
            out,
            at_record_start: true,
            clock: StampClock::default(),
        }
    }

    fn write_traffic(
        &mut self,
        level: Level,
        direction: Direction,
        party: Party<'_>,
        line: &[u8],
    ) -> io::Result<()> {
        self.write_stamp()?;
        self.out.write_all(match level {
            Level::Info => b"[INFO] ",
            Level::Debug => b"[DEBUG] ",
            Level::Trace => b"[TRACE] ",
            Level::Warn => b"[WARN] ",
            Level::Error => b"[ERROR] ",
        })?;
        self.out.write_all(match direction {
            Direction::Recv => b"recv ",
            Direction::Send => b"send ",
        })?;
        match party {
            Party::Conn { id, peer } => {
                self.out.write_all(b"conn=")?;
                let mut digits = [0u8; MAX_DECIMAL_DIGITS];
                self.out.write_all(decimal(id, &mut digits))?;
                if let Some(peer) = peer {
                    self.out.write_all(b" peer=")?;
                    self.out.write_all(peer.as_bytes())?;
                }
            }
            Party::Link(name) => {
                self.out.write_all(b"link=")?;
                self.out.write_all(name.as_bytes())?;
            }
        }
        self.out.write_all(b" ")?;
        write_escaped(&mut self.out, line)?;
        self.out.write_all(b"\n")
    }

    fn write_stamp(&mut self) -> io::Result<()> {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let stamp = self
            .clock
            .stamp(since_epoch.as_secs(), since_epoch.subsec_micros());
        self.out.write_all(stamp)
    }
}

/// simplelog's writer: the shared sink, stamping each record as it starts.
struct SinkWriter(Arc<Mutex<Sink>>);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut sink = self
            .0
            .lock()
            .map_err(|_| io::Error::other("log poisoned"))?;
        if sink.at_record_start && !buf.is_empty() {
            sink.write_stamp()?;
        }
        sink.out.write_all(buf)?;
        if let Some(&last) = buf.last() {
            sink.at_record_start = last == b'\n';
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut sink = self
            .0
            .lock()
            .map_err(|_| io::Error::other("log poisoned"))?;
        sink.out.flush()
    }
}

/// Formats `YYYY-MM-DDTHH:MM:SS.uuuuuuZ ` (RFC 3339, UTC), redoing the date part only when
/// the second changes.
#[derive(Default)]
struct StampClock {
    second: Option<u64>,
    text: [u8; 28],
}

impl StampClock {
    fn stamp(&mut self, unix_secs: u64, micros: u32) -> &[u8] {
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

        let logger = CappedLogger {
            level: LevelFilter::Trace,
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
