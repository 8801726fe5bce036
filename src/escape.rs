//! Escaping of network bytes for the log and for every message that quotes them: what any peer
//! sent becomes printable ASCII before it is written, so no line can forge a record or drive a
//! terminal. Pure: it never writes to the
//! log itself and never decides what is logged.

use std::fmt;
use std::io::{self, Write};

/// Writes network bytes escaped: printable ASCII as is, `\` as `\\`, any other byte as `\xNN`.
pub(crate) fn write_escaped(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
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
}
