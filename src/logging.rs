//! The server's log (SPEC section 6): `<log dir>/NAME.log` through simplelog, written through a
//! buffer that the event loop flushes at least once a second and at exit; [`Escaped`] for every
//! byte that came from the network; [`Secret`] for values that must never be printed.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use log::LevelFilter;
use simplelog::{ConfigBuilder, WriteLogger};

/// Opens (appending) `dir/NAME.log` and makes it the process's logger. Returns its path.
pub fn init(dir: &Path, name: &str, level: LevelFilter) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.log"));
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    // 64 KiB of buffer: no syscall per line; the loop's periodic flush bounds the delay.
    let writer = BufWriter::with_capacity(64 * 1024, file);
    WriteLogger::init(level, config, writer).map_err(io::Error::other)?;
    Ok(path)
}

/// Writes buffered log records to the file.
pub fn flush() {
    log::logger().flush();
}

/// Network bytes made safe for a log line: printable ASCII stays, `\` becomes `\\`, every
/// other byte (control characters, DEL, non-ASCII) becomes `\xNN`.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while !rest.is_empty() {
            let plain = rest
                .iter()
                .position(|&b| !(b' '..=b'~').contains(&b) || b == b'\\')
                .unwrap_or(rest.len());
            // The plain run is printable ASCII, so it is valid UTF-8.
            f.write_str(std::str::from_utf8(&rest[..plain]).unwrap_or_default())?;
            match rest.get(plain) {
                Some(b'\\') => f.write_str("\\\\")?,
                Some(byte) => write!(f, "\\x{byte:02x}")?,
                None => {}
            }
            rest = &rest[(plain + 1).min(rest.len())..];
        }
        Ok(())
    }
}

/// A value that must not appear in logs, replies or errors: `Debug` and `Display` print
/// `<redacted>`; only [`expose`](Secret::expose) gives it out, where it is sent.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
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
    fn secrets_do_not_print() {
        let s = Secret::new("AIzaSECRET".into());
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "AIzaSECRET");
    }
}
