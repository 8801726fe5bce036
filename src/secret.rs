//! [`Secret`]: a value (the Places key, the peer secret) that must never be printed. It lives
//! apart from the logging module so the pure modules that handle secrets import nothing of I/O.

use std::fmt;

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
    fn secrets_do_not_print() {
        let s = Secret::new("AIzaSECRET".into());
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "AIzaSECRET");
    }
}
