//! A fake Google Places HTTP server for the integration tests and the load bench: std only, and
//! of the other test modules only the harness's one polling loop.
//!
//! It binds `127.0.0.1:0` and serves every accepted connection on its own thread as an
//! HTTP/1.1 server does: request after request on one connection (persistent by default), each
//! answer with `Content-Length`, until the client closes or sends `Connection: close` (answered
//! with `Connection: close`, then closed). A connection idle for `IDLE_TIMEOUT` is closed, as
//! real servers do, so no thread lingers. It understands just enough HTTP/1.1: headers up to
//! `\r\n\r\n`, a body given by `Content-Length` or chunked. Accepted sockets get `TCP_NODELAY`
//! unless told otherwise; answers go out as two writes (head, then body), like many servers, so
//! that without it Nagle's algorithm meets the client's delayed ACK.
//!
//! Public API:
//!
//! ```text
//! FakePlaces::start() -> FakePlaces        serve until dropped (drop closes every connection)
//! fake.port() -> u16
//! fake.new_api_url() -> String             http://127.0.0.1:PORT/v1/places:searchNearby
//! fake.legacy_url() -> String              http://127.0.0.1:PORT/maps/api/place/nearbysearch/json
//! fake.set_reply(Reply)                    what to answer from now on (default Reply::Places)
//! fake.set_delay(Duration)                 wait this long before each answer (default none);
//!                                          every connection waits on its own, concurrently
//! fake.set_delay_for_count(n, Duration)    new API only: this delay when maxResultCount == n
//! fake.set_nodelay(bool)                   TCP_NODELAY on connections accepted from now on
//!                                          (default true; false: Nagle + delayed-ACK stalls)
//! fake.request_count() -> usize            requests read completely so far
//! fake.answered_count() -> usize           answers begun (or connections closed, Reply::Close)
//! fake.accepted_connections() -> usize     TCP connections accepted so far
//! fake.requests() -> Vec<Request>          every request so far, in arrival order
//! fake.wait_for_requests(n, timeout) -> bool
//! Request { method, target, headers, body }, request.path(), .query_param(name),
//!          .header(name) (names lower-cased), .body_text()
//! ```
//!
//! Like Google: a `POST` (new API, any path) gets `{"places": [...]}` with `maxResultCount`
//! places (`{}` for Reply::NoPlaces); a `GET` (legacy) gets `{"html_attributions": [],
//! "results": [...20...], "status": "OK"}` (`ZERO_RESULTS` for Reply::NoPlaces), always more
//! results than asked for, since the server must keep only the first `bound`. Place objects keep
//! their keys in a deliberately non-alphabetical order (`name`, `id`, `formattedAddress`, ...;
//! legacy: `name`, `place_id`, `geometry`, ...) and the JSON is pretty-printed with blank lines
//! between places and trailing newlines, so tests can see both key order and newline squeezing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::harness::poll;

/// What the fake answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Made-up places: `maxResultCount` of them (new API) or 20 (legacy).
    Places,
    /// Nothing found: `{}` (new API) or `"status": "ZERO_RESULTS"` (legacy).
    NoPlaces,
    /// This HTTP status with this body (sent as `application/json`).
    Status { code: u16, body: String },
    /// `200 OK` with an HTML body: not JSON.
    NotJson,
    /// Read the request, then close the connection without a byte of answer.
    Close,
}

impl Reply {
    /// Google's error shape: `{"error": {"code": .., "message": .., "status": ..}}`.
    pub fn google_error(code: u16, status: &str, message: &str) -> Reply {
        Reply::Status {
            code,
            body: google_error_body(code, status, message),
        }
    }
}

/// The body Google sends with an error status.
pub fn google_error_body(code: u16, status: &str, message: &str) -> String {
    format!(
        "{{\n  \"error\": {{\n    \"code\": {code},\n    \"message\": \"{message}\",\n    \"status\": \"{status}\"\n  }}\n}}\n"
    )
}

/// One request as the fake read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path with query, as on the request line.
    pub target: String,
    /// Header names lower-cased, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The raw (still percent-encoded) value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| value.to_string())
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Behaviour {
    reply: Reply,
    delay: Duration,
    delay_for_count: Vec<(usize, Duration)>,
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Request>>,
    request_count: AtomicUsize,
    answered_count: AtomicUsize,
    accepted: AtomicUsize,
    nodelay: AtomicBool,
    /// Set on drop; `stopped` wakes every delay at once (a condvar, not polling, so 200
    /// connections waiting out a delay cost no CPU).
    stop: Mutex<bool>,
    stopped: Condvar,
    /// A clone of every open connection, by accept number, so drop can shut them all down
    /// (waking the threads blocked reading a kept-alive connection).
    open: Mutex<HashMap<usize, TcpStream>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        *lock(&self.stop)
    }

    /// What to answer `request` and after how long, as configured now.
    fn plan(&self, request: &Request) -> (Reply, Duration) {
        let behaviour = lock(&self.behaviour);
        let mut delay = behaviour.delay;
        if request.method == "POST" {
            let count = max_result_count(&request.body_text());
            if let Some((_, d)) = behaviour
                .delay_for_count
                .iter()
                .find(|(n, _)| Some(*n) == count)
            {
                delay = *d;
            }
        }
        (behaviour.reply.clone(), delay)
    }

    /// Waits `delay`, cut short by drop; false when the fake is stopping.
    fn wait_out(&self, delay: Duration) -> bool {
        let stop = lock(&self.stop);
        if delay.is_zero() {
            return !*stop;
        }
        let (stop, _) = self
            .stopped
            .wait_timeout_while(stop, delay, |stop| !*stop)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        !*stop
    }
}

/// The running fake; dropping it stops the accept thread, closes every connection and cuts
/// short any pending delay.
pub struct FakePlaces {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// A connection with no request in progress is closed after this long (real servers close idle
/// keep-alive connections too), so no thread lingers.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How many results every legacy answer has, whatever the bound asked for.
const LEGACY_RESULTS: usize = 20;
/// A connection thread only parses and formats small texts; hundreds of them may run at once.
const CONN_STACK_BYTES: usize = 256 * 1024;

impl FakePlaces {
    pub fn start() -> FakePlaces {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake places: bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("fake places: local_addr")
            .port();
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour {
                reply: Reply::Places,
                delay: Duration::ZERO,
                delay_for_count: Vec::new(),
            }),
            requests: Mutex::new(Vec::new()),
            request_count: AtomicUsize::new(0),
            answered_count: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            nodelay: AtomicBool::new(true),
            stop: Mutex::new(false),
            stopped: Condvar::new(),
            open: Mutex::new(HashMap::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("fake-places-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))
            .expect("fake places: spawn accept thread");
        FakePlaces {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn new_api_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/places:searchNearby", self.port)
    }

    pub fn legacy_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/maps/api/place/nearbysearch/json",
            self.port
        )
    }

    pub fn set_reply(&self, reply: Reply) {
        self.behaviour().reply = reply;
    }

    pub fn set_delay(&self, delay: Duration) {
        self.behaviour().delay = delay;
    }

    pub fn set_delay_for_count(&self, count: usize, delay: Duration) {
        let mut behaviour = self.behaviour();
        behaviour.delay_for_count.retain(|(n, _)| *n != count);
        behaviour.delay_for_count.push((count, delay));
    }

    /// `TCP_NODELAY` on the connections accepted from now on (those open keep theirs).
    pub fn set_nodelay(&self, nodelay: bool) {
        self.shared.nodelay.store(nodelay, Ordering::SeqCst);
    }

    pub fn request_count(&self) -> usize {
        self.shared.request_count.load(Ordering::SeqCst)
    }

    pub fn answered_count(&self) -> usize {
        self.shared.answered_count.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far (a client that reuses its connections opens few).
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    /// Polls until at least `count` requests have been read; false if `timeout` passes first.
    pub fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        poll(timeout, || self.request_count() >= count).is_ok()
    }

    fn behaviour(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        lock(&self.shared.behaviour)
    }
}

impl Drop for FakePlaces {
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.stopped.notify_all();
        for stream in lock(&self.shared.open).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(500),
        );
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(shared.nodelay.load(Ordering::SeqCst));
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        lock(&shared.open).insert(id, clone);
        if shared.stopping() {
            // Drop may have shut the open connections down just before this one was listed.
            let _ = stream.shutdown(Shutdown::Both);
        }
        let conn_shared = Arc::clone(&shared);
        // Detached: a connection thread ends by itself (client close, idle timeout, or drop
        // shutting its socket down).
        let spawned = thread::Builder::new()
            .name("fake-places-conn".into())
            .stack_size(CONN_STACK_BYTES)
            .spawn(move || {
                serve_connection(stream, &conn_shared);
                lock(&conn_shared.open).remove(&id);
            });
        if spawned.is_err() {
            lock(&shared.open).remove(&id);
        }
    }
}

/// Serves requests one after another until the client closes, asks to close, or goes idle.
fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(clone) => clone,
        Err(_) => return,
    });
    let mut stream = stream;
    while let Some(incoming) = read_request(&mut reader) {
        if !answer(&mut stream, incoming, shared) {
            break;
        }
    }
}

/// Records one request, waits its delay and answers it; true when the connection stays open.
fn answer(stream: &mut TcpStream, incoming: Incoming, shared: &Shared) -> bool {
    let Incoming {
        request,
        keep_alive,
    } = incoming;
    let (reply, delay) = shared.plan(&request);
    let new_api = request.method == "POST";
    let result_count = max_result_count(&request.body_text()).unwrap_or(20);
    lock(&shared.requests).push(request);
    shared.request_count.fetch_add(1, Ordering::SeqCst);
    if !shared.wait_out(delay) {
        return false;
    }
    // Counted before the first byte goes out, so a test that has read an answer always sees it
    // counted, and a count of 0 means no answer has started.
    shared.answered_count.fetch_add(1, Ordering::SeqCst);
    let Some((code, content_type, body)) = answer_body(&reply, new_api, result_count) else {
        let _ = stream.shutdown(Shutdown::Both);
        return false;
    };
    let written = respond(stream, code, content_type, &body, keep_alive);
    if !keep_alive {
        let _ = stream.shutdown(Shutdown::Write);
    }
    written && keep_alive
}

/// Status, content type and body of a reply; `None` for `Reply::Close` (no answer at all).
fn answer_body(
    reply: &Reply,
    new_api: bool,
    result_count: usize,
) -> Option<(u16, &'static str, String)> {
    const JSON: &str = "application/json";
    Some(match reply {
        Reply::Close => return None,
        Reply::Places if new_api => (200, JSON, new_places(result_count)),
        Reply::Places => (200, JSON, legacy_places(LEGACY_RESULTS)),
        Reply::NoPlaces if new_api => (200, JSON, "{}\n".to_string()),
        Reply::NoPlaces => (
            200,
            JSON,
            "{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"ZERO_RESULTS\"\n}\n"
                .to_string(),
        ),
        Reply::Status { code, body } => (*code, JSON, body.clone()),
        Reply::NotJson => (
            200,
            "text/html",
            "<html><body><h1>Bad Gateway</h1>\n<p>not JSON</p></body></html>\n".to_string(),
        ),
    })
}

/// A request and whether the client lets the connection stay open after its answer.
struct Incoming {
    request: Request,
    keep_alive: bool,
}

/// Reads the next request off a connection; `None` at its end (closed, idle too long, or not
/// HTTP).
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Incoming> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let before = head.len();
        reader
            .by_ref()
            .take((MAX_HEAD_BYTES - before) as u64)
            .read_until(b'\n', &mut head)
            .ok()?;
        if head.len() == before || head.len() >= MAX_HEAD_BYTES {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let http_1_0 = request_line.next() == Some("HTTP/1.0");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).ok()?;
            let size_text = size_line.trim().split(';').next()?;
            let size = usize::from_str_radix(size_text, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().ok()?;
        body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
    }
    // HTTP/1.1 connections persist unless either side says `close`; 1.0 ones only on request.
    let connection = header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let keep_alive = if http_1_0 {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    Some(Incoming {
        request: Request {
            method,
            target,
            headers,
            body,
        },
        keep_alive,
    })
}

/// Writes one answer: the head, then the body in a second write (as many servers do, so that
/// without `TCP_NODELAY` the body waits for the client's ACK of the head). False when the
/// client is gone.
fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
    keep_alive: bool,
) -> bool {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}; charset=UTF-8\r\nContent-Length: {}\r\n{connection}\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .and_then(|()| stream.flush())
        .is_ok()
}

/// `maxResultCount` from a new-API request body, read without a JSON parser.
fn max_result_count(body: &str) -> Option<usize> {
    let after = &body[body.find("\"maxResultCount\"")? + "\"maxResultCount\"".len()..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// `{"places": [...]}` with `count` places, pretty-printed with a blank line between places.
pub fn new_places(count: usize) -> String {
    let places: Vec<String> = (1..=count)
        .map(|i| {
            format!(
                "    {{\n      \"name\": \"places/FAKE{i:04}\",\n      \"id\": \"FAKE{i:04}\",\n      \"formattedAddress\": \"{i} Fake Street, Testville\",\n      \"location\": {{\n        \"latitude\": 34.{i:04},\n        \"longitude\": -118.{i:04}\n      }},\n      \"displayName\": {{\n        \"text\": \"Café {i}\",\n        \"languageCode\": \"en\"\n      }},\n      \"businessStatus\": \"OPERATIONAL\"\n    }}"
            )
        })
        .collect();
    format!(
        "{{\n  \"places\": [\n{}\n  ]\n}}\n\n\n",
        places.join(",\n\n\n")
    )
}

/// Legacy `nearbysearch/json` body with `count` results, in Google's old three-space style.
pub fn legacy_places(count: usize) -> String {
    let results: Vec<String> = (1..=count)
        .map(|i| {
            format!(
                "      {{\n         \"name\" : \"Café {i}\",\n         \"place_id\" : \"FAKE{i:04}\",\n         \"geometry\" : {{\n            \"location\" : {{\n               \"lat\" : 34.{i:04},\n               \"lng\" : -118.{i:04}\n            }}\n         }},\n         \"vicinity\" : \"{i} Fake Street, Testville\",\n         \"business_status\" : \"OPERATIONAL\"\n      }}"
            )
        })
        .collect();
    format!(
        "{{\n   \"html_attributions\" : [],\n\n   \"results\" : [\n{}\n   ],\n   \"status\" : \"OK\"\n}}\n\n",
        results.join(",\n\n")
    )
}
