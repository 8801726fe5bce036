//! A raw TCP connection that plays a neighbour (or an impostor) by hand, for the herd tests
//! that speak the link protocol themselves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A raw connection that plays a neighbour (or an impostor) by hand.
pub struct RawPeer {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl RawPeer {
    pub fn connect(port: u16) -> RawPeer {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        RawPeer::from_stream(stream)
    }

    /// A connection the test accepted (a server's link that it plays the neighbour of).
    pub fn from_stream(stream: TcpStream) -> RawPeer {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set_read_timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .expect("set_write_timeout");
        RawPeer {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local_addr").port()
    }

    /// Sends `line` and `\n`.
    pub fn send_line(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to server");
    }

    /// Reads one line (without `\n`); panics on EOF, error or timeout.
    pub fn read_line(&mut self) -> String {
        let mut chunk = [0u8; 4096];
        for _ in 0..10_000 {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "server closed the connection; expected a line (have {:?})",
                    String::from_utf8_lossy(&self.pending)
                ),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading a line failed: {e}"),
            }
        }
        panic!("no line after 10000 reads");
    }

    /// Waits for the server to drop the connection: EOF or a reset, with nothing more sent.
    /// Returns how it ended ("eof" or the error), or panics if the connection stays open or
    /// the server sends bytes.
    pub fn expect_dropped(&mut self) -> String {
        assert!(
            self.pending.is_empty(),
            "unread bytes before the drop: {:?}",
            String::from_utf8_lossy(&self.pending)
        );
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => "eof".to_string(),
            Ok(n) => panic!(
                "expected the connection to be dropped, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => format!("{e}"),
            Err(e) => panic!("expected the connection to be dropped, got error {e}"),
        }
    }
}
