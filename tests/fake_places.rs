//! The fake Places server itself (tests/support/src/fake_places.rs), checked with raw HTTP so the
//! other tests and the load bench can trust it: its answers, its persistent connections, and
//! its delays applied to every connection at once.

use herd_test_support::fake_places::{FakePlaces, Reply};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One answer as read off the wire.
struct Answer {
    code: u16,
    head: String,
    body: String,
}

impl Answer {
    fn closes(&self) -> bool {
        self.head.contains("Connection: close")
    }
}

/// A client connection to the fake that reads each answer by its `Content-Length`, since the
/// fake keeps the connection open after it.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(fake: &FakePlaces) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", fake.port())).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, request: &str) {
        self.stream.write_all(request.as_bytes()).expect("write");
    }

    /// The next answer; `None` when the fake closed the connection before a byte of one.
    fn answer(&mut self) -> Option<Answer> {
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.fill() == 0 {
                assert!(self.buf.is_empty(), "closed inside a head: {:?}", self.buf);
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("every answer has a Content-Length")
            .trim()
            .parse()
            .expect("length");
        while self.buf.len() < head_end + length {
            assert!(self.fill() > 0, "closed inside a body");
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).into_owned();
        self.buf.drain(..head_end + length);
        let code = head
            .split(' ')
            .nth(1)
            .expect("status")
            .parse()
            .expect("code");
        Some(Answer { code, head, body })
    }

    /// Reads more; 0 at the end of the connection.
    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// True when the fake has closed the connection (nothing more to read).
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
    }
}

/// Sends one raw HTTP request on a new connection; returns (status code, body). The answer
/// keeps the connection open (the request did not ask to close it).
fn http(fake: &FakePlaces, request: &str) -> Option<(u16, String)> {
    let mut conn = Conn::open(fake);
    conn.send(request);
    let answer = conn.answer()?;
    assert!(!answer.closes(), "{}", answer.head);
    Some((answer.code, answer.body))
}

fn post_request(count: usize, extra_headers: &str) -> String {
    let body = format!(
        "{{\"maxResultCount\": {count}, \"locationRestriction\": {{\"circle\": {{\"center\": \
         {{\"latitude\": 34.5, \"longitude\": -118.25}}, \"radius\": 1500.0}}}}}}"
    );
    format!(
        "POST /v1/places:searchNearby HTTP/1.1\r\nHost: x\r\nX-Goog-Api-Key: K1\r\n\
         X-Goog-FieldMask: *\r\nContent-Type: application/json\r\n{extra_headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn post(fake: &FakePlaces, count: usize) -> Option<(u16, String)> {
    http(fake, &post_request(count, ""))
}

/// The number of places in a new-API answer.
fn place_count(answer: &Answer) -> usize {
    let json: Value = serde_json::from_str(&answer.body).expect("JSON");
    json["places"].as_array().map_or(0, Vec::len)
}

#[test]
fn new_api_answers_max_result_count_places_and_records_the_request() {
    let fake = FakePlaces::start();
    let (code, body) = post(&fake, 3).expect("an answer");
    assert_eq!(code, 200);
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["places"].as_array().map(Vec::len), Some(3));
    assert!(
        body.contains("\n\n"),
        "blank lines for the server to squeeze"
    );
    let request = &fake.requests()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.header("X-Goog-Api-Key"), Some("K1"));
    let sent: Value = serde_json::from_slice(&request.body).expect("body");
    assert_eq!(sent["locationRestriction"]["circle"]["radius"], 1500.0);
    assert_eq!(fake.request_count(), 1);
    assert_eq!(fake.answered_count(), 1);
}

#[test]
fn chunked_bodies_are_read() {
    let fake = FakePlaces::start();
    let body = "{\"maxResultCount\": 2}";
    let (code, answer) = http(
        &fake,
        &format!(
            "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ),
    )
    .expect("an answer");
    assert_eq!(code, 200);
    let json: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(json["places"].as_array().map(Vec::len), Some(2));
    assert_eq!(fake.requests()[0].body_text(), body);
}

#[test]
fn legacy_answers_twenty_results_and_parses_the_query() {
    let fake = FakePlaces::start();
    let (code, body) = http(
        &fake,
        "GET /maps/api/place/nearbysearch/json?location=34.5,-118.25&radius=1500&key=K2 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .expect("an answer");
    assert_eq!(code, 200);
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["results"].as_array().map(Vec::len), Some(20));
    assert_eq!(json["status"], "OK");
    let request = &fake.requests()[0];
    assert_eq!(request.path(), "/maps/api/place/nearbysearch/json");
    assert_eq!(request.query_param("key").as_deref(), Some("K2"));
    assert_eq!(request.query_param("radius").as_deref(), Some("1500"));
    fake.set_reply(Reply::NoPlaces);
    let (_, body) = http(&fake, "GET /?key=K HTTP/1.1\r\n\r\n").expect("an answer");
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["status"], "ZERO_RESULTS");
}

#[test]
fn configured_failures() {
    let fake = FakePlaces::start();
    fake.set_reply(Reply::google_error(403, "PERMISSION_DENIED", "nope"));
    let (code, body) = post(&fake, 1).expect("an answer");
    assert_eq!(code, 403);
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["error"]["status"], "PERMISSION_DENIED");
    fake.set_reply(Reply::NotJson);
    let (_, body) = post(&fake, 1).expect("an answer");
    assert!(serde_json::from_str::<Value>(&body).is_err());
    fake.set_reply(Reply::Close);
    assert!(post(&fake, 1).is_none(), "closed without an answer");
    fake.set_reply(Reply::NoPlaces);
    assert_eq!(post(&fake, 1).expect("an answer").1.trim(), "{}");
}

#[test]
fn delays_apply_and_dropping_the_fake_cuts_them_short() {
    let fake = FakePlaces::start();
    fake.set_delay_for_count(2, Duration::from_millis(300));
    let started = Instant::now();
    post(&fake, 1).expect("an answer");
    assert!(started.elapsed() < Duration::from_millis(300));
    post(&fake, 2).expect("an answer");
    assert!(started.elapsed() >= Duration::from_millis(300));

    fake.set_delay(Duration::from_secs(30));
    let port = fake.port();
    let waiting = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        rest.len()
    });
    assert!(fake.wait_for_requests(3, Duration::from_secs(5)));
    let dropped = Instant::now();
    drop(fake);
    assert_eq!(waiting.join().expect("thread"), 0, "no answer after drop");
    assert!(
        dropped.elapsed() < Duration::from_secs(5),
        "drop does not wait for the delay"
    );
}

#[test]
fn one_connection_serves_request_after_request() {
    let fake = FakePlaces::start();
    let mut conn = Conn::open(&fake);
    for count in 1..=5 {
        conn.send(&post_request(count, ""));
        let answer = conn.answer().expect("an answer");
        assert_eq!(answer.code, 200);
        assert!(!answer.closes(), "kept alive: {}", answer.head);
        assert_eq!(place_count(&answer), count);
    }
    // Pipelined: two requests in one write, answered in order.
    conn.send(&(post_request(2, "") + &post_request(3, "")));
    assert_eq!(place_count(&conn.answer().expect("first")), 2);
    assert_eq!(place_count(&conn.answer().expect("second")), 3);
    assert_eq!(fake.request_count(), 7);
    assert_eq!(fake.answered_count(), 7);
    assert_eq!(fake.accepted_connections(), 1);
}

#[test]
fn connection_close_is_honoured() {
    let fake = FakePlaces::start();
    let mut conn = Conn::open(&fake);
    conn.send(&post_request(1, ""));
    assert!(!conn.answer().expect("an answer").closes());
    conn.send(&post_request(1, "Connection: close\r\n"));
    let answer = conn.answer().expect("an answer");
    assert_eq!(answer.code, 200);
    assert!(answer.closes(), "says it closes: {}", answer.head);
    assert!(conn.closed(), "and closes");

    // HTTP/1.0 closes unless the client asks to keep the connection.
    let mut old = Conn::open(&fake);
    old.send("GET /?key=K HTTP/1.0\r\n\r\n");
    assert!(old.answer().expect("an answer").closes());
    assert!(old.closed());
    let mut kept = Conn::open(&fake);
    kept.send("GET /?key=K HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(!kept.answer().expect("an answer").closes());
    assert_eq!(fake.accepted_connections(), 3);
}

#[test]
fn close_reply_ends_a_kept_alive_connection_without_an_answer() {
    let fake = FakePlaces::start();
    let mut conn = Conn::open(&fake);
    conn.send(&post_request(1, ""));
    assert!(conn.answer().is_some());
    fake.set_reply(Reply::Close);
    conn.send(&post_request(1, ""));
    assert!(conn.answer().is_none(), "closed without an answer");
    assert_eq!(fake.request_count(), 2);
}

#[test]
fn delay_applies_to_every_connection_at_once() {
    const CONNS: u32 = 20;
    let delay = Duration::from_millis(200);
    let fake = FakePlaces::start();
    fake.set_delay(delay);
    let started = Instant::now();
    let waits: Vec<Duration> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CONNS)
            .map(|_| {
                scope.spawn(|| {
                    let sent = Instant::now();
                    post(&fake, 1).expect("an answer");
                    sent.elapsed()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client"))
            .collect()
    });
    let all = started.elapsed();
    assert!(waits.iter().all(|w| *w >= delay), "each waited: {waits:?}");
    assert!(
        all < delay * CONNS / 4,
        "{CONNS} x {delay:?} concurrently took {all:?}"
    );
    assert_eq!(fake.accepted_connections(), CONNS as usize);
}

#[test]
fn serves_a_thousand_requests_a_second_on_200_kept_alive_connections() {
    const CONNS: usize = 200;
    const EACH: usize = 10;
    let fake = FakePlaces::start();
    let mut conns: Vec<Conn> = (0..CONNS).map(|_| Conn::open(&fake)).collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for conn in &mut conns {
            scope.spawn(move || {
                for _ in 0..EACH {
                    conn.send(&post_request(1, ""));
                    assert_eq!(conn.answer().expect("an answer").code, 200);
                }
            });
        }
    });
    let rate = (CONNS * EACH) as f64 / started.elapsed().as_secs_f64();
    assert!(rate >= 1000.0, "{rate:.0} requests/s");
    assert_eq!(fake.request_count(), CONNS * EACH);
    assert_eq!(
        fake.accepted_connections(),
        CONNS,
        "every connection reused"
    );
}

/// The median time of `n` requests one after another on one kept-alive connection.
fn median_round_trip(fake: &FakePlaces, n: usize) -> Duration {
    let mut conn = Conn::open(fake);
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let sent = Instant::now();
            conn.send(&post_request(1, ""));
            assert_eq!(conn.answer().expect("an answer").code, 200);
            sent.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
fn nodelay_off_reproduces_the_nagle_and_delayed_ack_stall() {
    let fake = FakePlaces::start();
    let quick = median_round_trip(&fake, 12);
    fake.set_nodelay(false);
    // The answer's body (the second write) waits for the ACK of its head, which Linux delays
    // by about 40 ms once a connection has left its quick-ACK start.
    let stalled = median_round_trip(&fake, 12);
    assert!(quick < Duration::from_millis(20), "nodelay on: {quick:?}");
    assert!(
        stalled >= Duration::from_millis(30),
        "nodelay off: {stalled:?}"
    );
    assert_eq!(fake.accepted_connections(), 2);
}
