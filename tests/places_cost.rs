//! What a WHATSAT costs the key's owner (SPEC section 5, README "What a lookup costs"):
//! identical lookups in flight share one call, a good answer is reused from memory for
//! `places cache-ms`, `places max-per-second` caps the calls sent, and whatever happens every
//! WHATSAT still gets one complete reply, in its connection's order.

use herd_test_support::{
    checks::{check_at_line, check_error_shape, check_framing, fake_ids, place_ids},
    fake_places::{FakePlaces, Reply},
    harness::{report_skip, wait_for, wait_until},
    server::Server,
};
use std::time::{Duration, Instant};

fn server_with(fake: &FakePlaces, lines: &[&str]) -> Server {
    let mut builder = Server::builder("Alpha").places(fake);
    for line in lines {
        builder = builder.line(line);
    }
    builder.start()
}

#[test]
fn identical_whatsats_sent_at_once_make_one_call_and_all_get_the_answer_in_order() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(500));
    let server = server_with(&fake, &["places cache-ms 0"]);
    let mut client = server.client();
    let at = client.iamat("kiwi", "+34.068930-118.445127", "100");
    let mut burst = String::new();
    for i in 0..100 {
        burst.push_str("WHATSAT kiwi 10 5\n");
        if i == 49 {
            burst.push_str("IAMAT other +1+2 200\n");
        }
    }
    client.send_raw(burst.as_bytes());
    for i in 0..100 {
        let json = check_framing(&client.read_whatsat_reply(), &at);
        assert_eq!(place_ids(&json, "places", "id"), fake_ids(5), "reply {i}");
        if i == 49 {
            check_at_line(&client.read_line(), "Alpha", "other", "+1+2", "200");
        }
    }
    assert_eq!(fake.request_count(), 1, "100 identical lookups, one call");
}

#[test]
fn whatsats_about_different_clients_at_one_spot_share_a_call_too() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(300));
    let server = server_with(&fake, &["places cache-ms 0"]);
    let mut client = server.client();
    let at_a = client.iamat("a", "+10+20", "100");
    let at_b = client.iamat("b", "+10+20", "101");
    client.send_raw(b"WHATSAT a 5 3\nWHATSAT b 5 3\nWHATSAT b 5 4\n");
    // Each reply starts with its own client's AT line.
    check_framing(&client.read_whatsat_reply(), &at_a);
    check_framing(&client.read_whatsat_reply(), &at_b);
    let json = check_framing(&client.read_whatsat_reply(), &at_b);
    assert_eq!(place_ids(&json, "places", "id"), fake_ids(4));
    assert_eq!(fake.request_count(), 2, "bound 3 once, bound 4 once");
}

#[test]
fn a_coalesced_call_that_fails_answers_every_waiter_with_the_error() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(1000));
    let server = server_with(&fake, &["places timeout-ms 300"]);
    let mut first = server.client();
    let mut second = server.client();
    let at = first.iamat("kiwi", "+1+1", "100");
    first.send("WHATSAT kiwi 10 5");
    second.send("WHATSAT kiwi 10 5");
    for client in [&mut first, &mut second] {
        let json = check_framing(&client.read_whatsat_reply(), &at);
        assert_eq!(check_error_shape(&json), (504, "DEADLINE_EXCEEDED".into()));
    }
    assert_eq!(fake.request_count(), 1);
    // Errors are not cached: the next WHATSAT asks again, and gets the answer.
    fake.set_delay(Duration::ZERO);
    first.send("WHATSAT kiwi 10 5");
    let json = check_framing(&first.read_whatsat_reply(), &at);
    assert_eq!(place_ids(&json, "places", "id"), fake_ids(5));
    assert_eq!(fake.request_count(), 2);
}

#[test]
fn a_good_answer_is_reused_for_cache_ms_and_then_asked_again() {
    let fake = FakePlaces::start();
    let server = server_with(&fake, &["places cache-ms 400"]);
    let mut client = server.client();
    let at = client.iamat("kiwi", "+1+1", "100");
    let asked_at = Instant::now();
    for _ in 0..20 {
        client.send("WHATSAT kiwi 10 5");
        let json = check_framing(&client.read_whatsat_reply(), &at);
        assert_eq!(place_ids(&json, "places", "id"), fake_ids(5));
    }
    let took = asked_at.elapsed();
    if took < Duration::from_millis(400) {
        assert_eq!(fake.request_count(), 1, "19 of 20 from the cache");
    } else {
        report_skip(
            "the check that 19 of 20 WHATSATs are answered from the cache",
            &format!("the 20 took {took:?}, longer than cache-ms (400 ms)"),
        );
    }
    // Another radius is another request.
    client.send("WHATSAT kiwi 11 5");
    check_framing(&client.read_whatsat_reply(), &at);
    let before = fake.request_count();
    // Once the answer is older than cache-ms, Places is asked again.
    wait_until("Places to be asked again", Duration::from_secs(5), || {
        client.send("WHATSAT kiwi 10 5");
        check_framing(&client.read_whatsat_reply(), &at);
        fake.request_count() != before
    });
    assert_eq!(fake.request_count(), before + 1, "asked again after 400 ms");
    assert!(asked_at.elapsed() >= Duration::from_millis(400));
}

#[test]
fn an_error_answer_is_never_cached() {
    let fake = FakePlaces::start();
    fake.set_reply(Reply::google_error(403, "PERMISSION_DENIED", "no"));
    let server = server_with(&fake, &[]);
    let mut client = server.client();
    let at = client.iamat("kiwi", "+1+1", "100");
    for _ in 0..3 {
        client.send("WHATSAT kiwi 10 5");
        let json = check_framing(&client.read_whatsat_reply(), &at);
        assert_eq!(check_error_shape(&json).0, 403);
    }
    assert_eq!(fake.request_count(), 3);
}

#[test]
fn past_max_per_second_whatsats_get_429_at_once_and_in_order() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(300));
    let server = server_with(&fake, &["places max-per-second 2", "places cache-ms 0"]);
    let mut client = server.client();
    let at = client.iamat("kiwi", "+1+1", "100");
    // Three distinct lookups within a second: the third is over the limit.
    client.send_raw(b"WHATSAT kiwi 1 1\nWHATSAT kiwi 2 1\nWHATSAT kiwi 3 1\nIAMAT x +1+1 5\n");
    for _ in 0..2 {
        let json = check_framing(&client.read_whatsat_reply(), &at);
        assert_eq!(place_ids(&json, "places", "id"), fake_ids(1));
    }
    let json = check_framing(&client.read_whatsat_reply(), &at);
    assert_eq!(
        check_error_shape(&json),
        (429, "RESOURCE_EXHAUSTED".to_string()),
        "{json}"
    );
    check_at_line(&client.read_line(), "Alpha", "x", "+1+1", "5");
    assert_eq!(fake.request_count(), 2, "the refused one was not sent");
    // Refusals are counted in one log line a second, not a line each.
    let log = server.wait_for_log("WHATSATs answered 429 at once");
    assert!(log.contains("over places max-per-second"), "{log}");
    // A second later the bucket has refilled.
    let mut other = server.client();
    let answered = wait_for("the bucket to refill", Duration::from_secs(5), || {
        other.send("WHATSAT kiwi 4 1");
        let json = check_framing(&other.read_whatsat_reply(), &at);
        if json.get("places").is_some() {
            Ok(json)
        } else {
            Err(json)
        }
    });
    assert_eq!(place_ids(&answered, "places", "id"), fake_ids(1));
}

/// In steady state a lookup opens no new connection: the HTTP client keeps one idle kept-alive
/// connection per worker (its own default is 3 per host).
#[test]
fn two_hundred_lookups_by_eight_workers_use_at_most_eight_connections() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(20));
    let server = server_with(&fake, &["places workers 8", "places cache-ms 0"]);
    let mut client = server.client();
    let at = client.iamat("kiwi", "+1+1", "100");
    // 200 distinct lookups (radius 0.1 km to 20 km), all in flight at once, 8 at a time.
    let mut burst = String::new();
    for n in 1..=200 {
        burst.push_str(&format!("WHATSAT kiwi {}.{} 1\n", n / 10, n % 10));
    }
    client.send_raw(burst.as_bytes());
    for n in 1..=200 {
        let json = check_framing(&client.read_whatsat_reply(), &at);
        assert_eq!(place_ids(&json, "places", "id"), fake_ids(1), "reply {n}");
    }
    assert_eq!(fake.request_count(), 200);
    assert!(
        fake.accepted_connections() <= 8,
        "{} connections for 200 lookups",
        fake.accepted_connections()
    );
}
