//! Places failures (SPEC section 2 "When Places fails", section 4 on the key, README "Places
//! failures"): the client always gets one complete reply whose JSON says what went wrong
//! (Google's own body, or README's `504 DEADLINE_EXCEEDED`, `503 UNAVAILABLE`, `502 UNKNOWN`,
//! `500 INTERNAL`, `429 RESOURCE_EXHAUSTED`), nothing hangs, and the API key never shows up in
//! a reply or the log.

use herd_test_support::{
    checks::{check_at_line, check_error_shape, check_framing, fake_ids, place_ids},
    client::Client,
    fake_places::{google_error_body, FakePlaces, Reply},
    harness::API_KEY,
    server::{conn_id, wait_for_record, Server},
};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// IAMATs a new client, sends one WHATSAT for it, checks the framing, returns the JSON; then
/// checks the connection still answers.
fn whatsat_once(server: &Server) -> Value {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let id = format!("c{}", CALLS.fetch_add(1, Ordering::SeqCst));
    let mut client = server.client();
    let at = client.iamat(&id, "+34-118", "100");
    client.send(&format!("WHATSAT {id} 10 5"));
    let json = check_framing(&client.read_whatsat_reply(), &at);
    let reply = client.iamat("other", "+1+2", "200");
    check_at_line(&reply, "Alpha", "other", "+1+2", "200");
    json
}

/// The JSON is the new API's error shape with this code and status (README "Places failures").
fn assert_error(json: &Value, code: i64, status: &str) {
    assert_eq!(
        check_error_shape(json),
        (code, status.to_string()),
        "error JSON {json}"
    );
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).expect("test body is JSON")
}

/// Which API a server speaks in a pass-through test.
#[derive(Clone, Copy)]
enum Api {
    New,
    Legacy,
}

/// Places answers `code` with `body`; the client gets exactly that body back as the JSON.
fn assert_passed_through(api: Api, code: u16, body: &str) {
    let fake = FakePlaces::start();
    fake.set_reply(Reply::Status {
        code,
        body: body.to_string(),
    });
    let builder = Server::builder("Alpha");
    let server = match api {
        Api::New => builder.places(&fake),
        Api::Legacy => builder.legacy(&fake),
    }
    .start();
    assert_eq!(whatsat_once(&server), parse(body));
}

#[test]
fn google_error_body_is_passed_through() {
    let body = google_error_body(
        403,
        "PERMISSION_DENIED",
        "API key not valid. Please pass a valid API key.",
    );
    assert_passed_through(Api::New, 403, &body);
}

#[test]
fn google_error_body_with_status_500_is_passed_through() {
    let body = google_error_body(500, "INTERNAL", "Internal error encountered.");
    assert_passed_through(Api::New, 500, &body);
}

#[test]
fn legacy_request_denied_body_is_passed_through() {
    let body = "{\n   \"error_message\" : \"The provided API key is invalid.\",\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"REQUEST_DENIED\"\n}\n";
    assert_passed_through(Api::Legacy, 200, body);
}

#[test]
fn legacy_error_status_with_google_body_is_passed_through() {
    let body = google_error_body(
        403,
        "PERMISSION_DENIED",
        "This API project is not authorized.",
    );
    assert_passed_through(Api::Legacy, 403, &body);
}

#[test]
fn non_json_body_gives_502_unknown() {
    let fake = FakePlaces::start();
    fake.set_reply(Reply::NotJson);
    let server = Server::builder("Alpha").places(&fake).start();
    assert_error(&whatsat_once(&server), 502, "UNKNOWN");
}

#[test]
fn non_json_error_body_gives_the_http_status_and_its_google_name() {
    let fake = FakePlaces::start();
    fake.set_reply(Reply::Status {
        code: 500,
        body: "<html>Internal Server Error</html>".into(),
    });
    let server = Server::builder("Alpha").places(&fake).start();
    assert_error(&whatsat_once(&server), 500, "INTERNAL");
    fake.set_reply(Reply::Status {
        code: 503,
        body: "Service Unavailable".into(),
    });
    assert_error(&whatsat_once(&server), 503, "UNAVAILABLE");
}

#[test]
fn connection_closed_without_answer_gives_503_unavailable() {
    let fake = FakePlaces::start();
    fake.set_reply(Reply::Close);
    let server = Server::builder("Alpha").places(&fake).start();
    assert_error(&whatsat_once(&server), 503, "UNAVAILABLE");
    assert_eq!(fake.request_count(), 1, "the request did reach the fake");
}

#[test]
fn unreachable_places_gives_503_unavailable() {
    // No fake: the builder points Places at a closed local port.
    let server = Server::builder("Alpha").start();
    assert_error(&whatsat_once(&server), 503, "UNAVAILABLE");
}

#[test]
fn timeout_gives_504_before_places_answers() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_secs(2));
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("places timeout-ms 300")
        .start();
    let mut client = server.client();
    let at = client.iamat("c1", "+34-118", "100");
    let sent = Instant::now();
    client.send("WHATSAT c1 10 5");
    let reply = client.read_whatsat_reply();
    let waited = sent.elapsed();
    assert_eq!(
        fake.answered_count(),
        0,
        "the reply came before the fake answered"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "the server waited for its timeout: {waited:?}"
    );
    let json = check_framing(&reply, &at);
    assert_error(&json, 504, "DEADLINE_EXCEEDED");
    check_at_line(
        &client.iamat("c2", "+1+2", "200"),
        "Alpha",
        "c2",
        "+1+2",
        "200",
    );
}

#[test]
fn full_queue_answers_the_overflow_at_once_with_429() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(1500));
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("places workers 1")
        .line("places queue 1")
        .start();
    let mut first = server.client();
    let at = first.iamat("c1", "+34-118", "100");
    first.send("WHATSAT c1 10 1");
    assert!(
        fake.wait_for_requests(1, Duration::from_secs(5)),
        "the first lookup is in flight"
    );

    // The one worker is busy: one of these two waits in the queue, the other overflows. Which
    // is which depends on the order the server reads them, so each is read on its own thread.
    let mut second = server.client();
    let mut third = server.client();
    second.send("WHATSAT c1 10 2");
    third.send("WHATSAT c1 10 3");
    let read = |mut client: Client| {
        let reply = client.read_whatsat_reply();
        (reply, fake.answered_count())
    };
    let (second_reply, third_reply) = std::thread::scope(|scope| {
        let a = scope.spawn(|| read(second));
        let b = scope.spawn(|| read(third));
        (a.join().expect("reader"), b.join().expect("reader"))
    });
    let mut outcomes = Vec::new();
    for (bound, (reply, answered_before)) in [(2, second_reply), (3, third_reply)] {
        let json = check_framing(&reply, &at);
        if json.get("error").is_some() {
            assert_eq!(
                check_error_shape(&json),
                (429, "RESOURCE_EXHAUSTED".to_string()),
                "{json}"
            );
            assert_eq!(
                answered_before, 0,
                "the overflow is answered before any lookup finished"
            );
            outcomes.push("overflow");
        } else {
            assert_eq!(place_ids(&json, "places", "id"), fake_ids(bound));
            outcomes.push("queued");
        }
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        ["overflow", "queued"],
        "exactly one of the two overflows"
    );
    let json = check_framing(&first.read_whatsat_reply(), &at);
    assert_eq!(place_ids(&json, "places", "id"), fake_ids(1));
}

#[test]
fn api_key_never_appears_in_replies_or_log_with_legacy_failures() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha")
        .legacy(&fake)
        .line("places timeout-ms 300")
        .start();
    let mut client = server.client();
    let id = conn_id(&server, client.local_port());
    let at = client.iamat("c1", "+34-118", "100");
    let mut replies = String::new();
    let scenarios: Vec<(Reply, Duration)> = vec![
        (Reply::Places, Duration::ZERO),
        (Reply::NotJson, Duration::ZERO),
        (Reply::Close, Duration::ZERO),
        (Reply::Places, Duration::from_secs(1)),
        (
            Reply::Status {
                code: 500,
                body: "oops, key=?".into(),
            },
            Duration::ZERO,
        ),
        (
            Reply::google_error(403, "PERMISSION_DENIED", "The provided API key is invalid."),
            Duration::ZERO,
        ),
    ];
    for (reply, delay) in scenarios {
        fake.set_reply(reply);
        fake.set_delay(delay);
        client.send("WHATSAT c1 10 5");
        let reply = client.read_whatsat_reply();
        check_framing(&reply, &at);
        replies.push_str(&reply.raw);
    }
    assert!(
        fake.requests().iter().all(|r| r.target.contains(API_KEY)),
        "the key was in every request URL, so there was something to leak"
    );
    assert!(!replies.contains(API_KEY), "key in a reply:\n{replies}");
    drop(client);
    let log = wait_for_record(&server, "close", &id);
    assert!(log.contains("places"), "Places calls are logged:\n{log}");
    assert!(!log.contains(API_KEY), "key in the log:\n{log}");
    assert!(!server.stderr_text().contains(API_KEY), "key on stderr");
}

#[test]
fn api_key_never_appears_with_the_new_api_either() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("places timeout-ms 300")
        .start();
    let mut client = server.client();
    let id = conn_id(&server, client.local_port());
    let at = client.iamat("c1", "+34-118", "100");
    let mut replies = String::new();
    for reply in [Reply::Places, Reply::NotJson, Reply::Close] {
        fake.set_reply(reply);
        client.send("WHATSAT c1 10 5");
        let reply = client.read_whatsat_reply();
        check_framing(&reply, &at);
        replies.push_str(&reply.raw);
    }
    assert!(!replies.contains(API_KEY), "key in a reply:\n{replies}");
    drop(client);
    let log = wait_for_record(&server, "close", &id);
    assert!(!log.contains(API_KEY), "key in the log:\n{log}");
}
