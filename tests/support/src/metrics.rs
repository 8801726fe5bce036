//! The metrics side of a server under test: free addresses for `metrics` lines, plain HTTP
//! requests to them (std sockets, with timeouts), and reading one sample's value out of a
//! page. A test reads what the server answers; nothing here waits on time alone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::harness::free_ports;

/// Safety net on every connect, read and write.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A `metrics NAME ADDR` line for each name, on free loopback ports; and the addresses.
pub fn metrics_lines(names: &[&str]) -> (Vec<String>, Vec<SocketAddr>) {
    let addrs = free_ports(names.len()).expect("free ports");
    let lines = names
        .iter()
        .zip(&addrs)
        .map(|(name, addr)| format!("metrics {name} {addr}"))
        .collect();
    (lines, addrs)
}

/// An HTTP answer: the status code, the head, and the body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` (raw bytes) to `addr` and reads the answer to the server's close.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> Result<Answer, String> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).ok();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).ok();
    stream
        .write_all(request)
        .map_err(|e| format!("write to {addr}: {e}"))?;
    read_answer(&mut stream)
}

/// Reads an answer from `stream` until the server closes it.
pub fn read_answer(stream: &mut TcpStream) -> Result<Answer, String> {
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read: {e} (after {} bytes)", bytes.len()))?;
    parse_answer(&bytes)
}

fn parse_answer(bytes: &[u8]) -> Result<Answer, String> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// `GET path` on `addr`.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_raw(addr, request.as_bytes())
}

/// The metrics page of `addr` (a 200 answer's body).
pub fn scrape(addr: SocketAddr) -> Result<String, String> {
    let answer = http_get(addr, "/metrics")?;
    if answer.status != 200 {
        return Err(format!(
            "{addr} answered {}: {}",
            answer.status, answer.head
        ));
    }
    Ok(answer.body)
}

/// The value of the sample `name{labels}` exactly as the page writes it (`labels` as in the
/// page, e.g. `kind="iamat"`; empty for none).
pub fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    page.lines().find_map(|line| {
        let value = line.strip_prefix(&key)?.strip_prefix(' ')?;
        match value {
            "+Inf" => Some(f64::INFINITY),
            _ => value.parse().ok(),
        }
    })
}
