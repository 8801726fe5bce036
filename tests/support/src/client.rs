//! A line-oriented client of one `herd` server, and the client times IAMAT sends, for the
//! integration tests. Every read has a timeout as a safety net; a test that reaches it has
//! already failed.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Safety net on every client read.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Current POSIX time as (seconds, nanoseconds).
pub fn now() -> (i64, u32) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    (since.as_secs() as i64, since.subsec_nanos())
}

/// A client time string `offset_secs` from now, with 9 fractional digits.
pub fn time_from_now(offset_secs: i64) -> String {
    let (secs, nanos) = now();
    format!("{}.{:09}", secs + offset_secs, nanos)
}

/// Parses a decimal time or time difference (`+1.5`, `-0.000000001`, `1621464827`) to integer
/// nanoseconds, exactly. None if it is not sign? digits [. 1-9 digits].
pub fn parse_nanos(text: &str) -> Option<i128> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => (1, text),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: i128 = int.parse().ok()?;
    let frac_nanos: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(sign * (int * 1_000_000_000 + frac_nanos))
}

/// A line-oriented client connection with a read timeout as a safety net.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set_read_timeout");
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .expect("set_write_timeout");
        let writer = stream.try_clone().expect("clone stream");
        Client {
            reader: BufReader::new(stream),
            writer,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().expect("local_addr").port()
    }

    /// Sends `line` followed by `\n`.
    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// Sends bytes exactly as given.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to server");
    }

    /// Reads one line, which must end in `\n`; returns it without the `\n`.
    pub fn read_line_bytes(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => panic!("server closed the connection; expected a line"),
            Ok(_) => {}
            Err(e) => panic!(
                "reading a line failed ({e}); got so far: {:?}",
                String::from_utf8_lossy(&line)
            ),
        }
        assert!(
            line.ends_with(b"\n"),
            "connection ended inside a line: {:?}",
            String::from_utf8_lossy(&line)
        );
        line.pop();
        line
    }

    /// Reads one UTF-8 line without its `\n`.
    pub fn read_line(&mut self) -> String {
        let line = self.read_line_bytes();
        String::from_utf8(line)
            .unwrap_or_else(|e| panic!("reply line is not UTF-8: {:?}", e.as_bytes()))
    }

    /// Reads lines up to and including the first empty line; returns them as received (each
    /// with its `\n`, so the text ends in `\n\n`).
    pub fn read_until_blank_line(&mut self) -> String {
        let mut text = String::new();
        for _ in 0..100_000 {
            let line = self.read_line();
            text.push_str(&line);
            text.push('\n');
            if line.is_empty() {
                return text;
            }
        }
        panic!("no blank line after 100000 lines:\n{text}");
    }

    /// Sends one command and reads its one-line reply.
    pub fn request(&mut self, line: &str) -> String {
        self.send(line);
        self.read_line()
    }

    /// Sends `IAMAT client location time` and returns the AT reply line.
    pub fn iamat(&mut self, client: &str, location: &str, time: &str) -> String {
        self.request(&format!("IAMAT {client} {location} {time}"))
    }

    /// Shuts down the sending side (the server sees EOF).
    pub fn shutdown_write(&self) {
        self.writer
            .shutdown(Shutdown::Write)
            .expect("shutdown write");
    }

    /// Expects the server to have closed the connection: the next read sees EOF (a reset is
    /// reported as such, not accepted).
    pub fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) if rest.is_empty() => {}
            Ok(_) => panic!(
                "expected EOF, got more bytes: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("expected EOF, but the connection stayed open for {READ_TIMEOUT:?}")
            }
            Err(e) => panic!("expected EOF, got error {e}"),
        }
    }

    /// True if nothing arrives before `deadline` (the connection stays open and quiet). Time
    /// let pass on purpose, to see that something does not happen; not a wait for something
    /// (it blocks in a read with the time left, again if a read returns early).
    pub fn is_quiet_until(&mut self, deadline: Instant) -> bool {
        let quiet = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break true;
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            match self.reader.fill_buf() {
                // Data, or EOF: either way something happened.
                Ok(_) => break false,
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(e) => panic!("reading failed while waiting for quiet: {e}"),
            }
        };
        self.reader
            .get_ref()
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set_read_timeout");
        quiet
    }
}
