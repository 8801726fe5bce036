//! The fake Places server itself (tests/support/src/fake_places.rs), checked with raw HTTP so the
//! other tests and the load bench can trust it.

use herd_test_support::fake_places::{FakePlaces, Reply};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends one raw HTTP request; returns (status code, body).
fn http(fake: &FakePlaces, request: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", fake.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    if response.is_empty() {
        return None;
    }
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(head.contains("Connection: close"), "{head}");
    let code = head
        .split(' ')
        .nth(1)
        .expect("status")
        .parse()
        .expect("code");
    Some((code, body.to_string()))
}

fn post(fake: &FakePlaces, count: usize) -> Option<(u16, String)> {
    let body = format!(
        "{{\"maxResultCount\": {count}, \"locationRestriction\": {{\"circle\": {{\"center\": \
         {{\"latitude\": 34.5, \"longitude\": -118.25}}, \"radius\": 1500.0}}}}}}"
    );
    http(
        fake,
        &format!(
            "POST /v1/places:searchNearby HTTP/1.1\r\nHost: x\r\nX-Goog-Api-Key: K1\r\n\
             X-Goog-FieldMask: *\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
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
