//! WHATSAT (SPEC sections 2 and 5): the stored AT line, then the Places JSON with at most
//! `bound` results and no blank lines, then an empty line; what is sent to Places (key, field
//! mask, centre, radius in metres, result count) for both APIs; replies in command order; and
//! lookups that never hold up other work.

use herd_test_support::{
    checks::{check_at_line, check_framing, fake_ids, place_ids},
    client::Client,
    fake_places::{FakePlaces, Reply, Request},
    harness::{wait_until, API_KEY, KEY_ENV},
    server::Server,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const KIWI: &str = "+34.068930-118.445127";

fn body_json(request: &Request) -> Value {
    serde_json::from_slice(&request.body).unwrap_or_else(|e| {
        panic!(
            "Places request body is JSON ({e}): {:?}",
            request.body_text()
        )
    })
}

/// Positions of `"key"` in `text`, in the order of `keys`, must increase.
fn assert_key_order(text: &str, keys: &[&str]) {
    let positions: Vec<usize> = keys
        .iter()
        .map(|key| {
            text.find(&format!("\"{key}\""))
                .unwrap_or_else(|| panic!("key {key:?} missing from {text}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "keys keep Google's order {keys:?}; positions {positions:?} in:\n{text}"
    );
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn new_api_reply_is_at_line_then_places_json_then_blank_line() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").places(&fake).start();
    let at = server
        .client()
        .iamat("kiwi.cs.ucla.edu", KIWI, "1621464827.959498503");

    let mut client = server.client();
    client.send("WHATSAT kiwi.cs.ucla.edu 10 5");
    let reply = client.read_whatsat_reply();
    let json = check_framing(&reply, &at);
    assert_eq!(
        place_ids(&json, "places", "id"),
        fake_ids(5),
        "the fake's places, in order"
    );
    assert_eq!(
        json["places"][0]["displayName"]["text"], "Café 1",
        "UTF-8 passes through"
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/v1/places:searchNearby");
    assert_eq!(
        request.header("x-goog-api-key"),
        Some(API_KEY),
        "key from the env var named by places key-env"
    );
    assert_eq!(
        request.header("x-goog-fieldmask"),
        Some("places.id,places.displayName,places.formattedAddress,places.location,places.types"),
        "README: the default field mask asks for what a nearby list needs (Nearby Search Pro)"
    );
    assert!(
        request
            .header("content-type")
            .is_some_and(|v| v.contains("application/json")),
        "JSON content type: {:?}",
        request.header("content-type")
    );
    let body = body_json(request);
    assert_eq!(body["maxResultCount"], 5);
    let circle = &body["locationRestriction"]["circle"];
    assert_eq!(circle["center"]["latitude"].as_f64(), Some(34.068930));
    assert_eq!(circle["center"]["longitude"].as_f64(), Some(-118.445127));
    assert_eq!(
        circle["radius"].as_f64(),
        Some(10000.0),
        "10 km goes out as 10000 m"
    );
}

#[test]
fn radius_goes_out_in_metres() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1.5-2.25", "100");
    let cases = [
        ("10", 10000.0),
        ("1.5", 1500.0),
        ("50", 50000.0),
        ("0.001", 1.0),
        ("12.345", 12345.0),
    ];
    for (i, (radius_km, metres)) in cases.iter().enumerate() {
        client.send(&format!("WHATSAT c1 {radius_km} 3"));
        check_framing(&client.read_whatsat_reply(), &at);
        let body = body_json(&fake.requests()[i]);
        let radius = body["locationRestriction"]["circle"]["radius"]
            .as_f64()
            .unwrap_or_else(|| panic!("radius is a number: {body}"));
        assert!(
            (radius - metres).abs() < 1e-6,
            "{radius_km} km -> {metres} m, sent {radius}"
        );
        assert_eq!(
            body["locationRestriction"]["circle"]["center"]["latitude"].as_f64(),
            Some(1.5)
        );
        assert_eq!(
            body["locationRestriction"]["circle"]["center"]["longitude"].as_f64(),
            Some(-2.25)
        );
    }
}

#[test]
fn bound_is_sent_as_max_result_count() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1+2", "100");
    for (i, bound) in [1usize, 20, 7].into_iter().enumerate() {
        client.send(&format!("WHATSAT c1 10 {bound}"));
        let json = check_framing(&client.read_whatsat_reply(), &at);
        assert_eq!(place_ids(&json, "places", "id"), fake_ids(bound));
        assert_eq!(body_json(&fake.requests()[i])["maxResultCount"], bound);
    }
}

#[test]
fn field_mask_is_configurable() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("places field-mask places.id,places.displayName")
        .start();
    let mut client = server.client();
    client.iamat("c1", "+1+2", "100");
    client.send("WHATSAT c1 10 1");
    client.read_whatsat_reply();
    assert_eq!(
        fake.requests()[0].header("x-goog-fieldmask"),
        Some("places.id,places.displayName")
    );
}

#[test]
fn google_key_order_is_kept() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    client.iamat("c1", "+1+2", "100");
    client.send("WHATSAT c1 10 2");
    let reply = client.read_whatsat_reply();
    assert_key_order(
        &reply.json_text,
        &[
            "name",
            "id",
            "formattedAddress",
            "location",
            "displayName",
            "businessStatus",
        ],
    );
    assert_key_order(&reply.json_text, &["latitude", "longitude"]);
    assert_key_order(&reply.json_text, &["text", "languageCode"]);
}

#[test]
fn empty_new_api_answer_is_passed_through() {
    let fake = FakePlaces::start();
    fake.set_reply(Reply::NoPlaces);
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1+2", "100");
    client.send("WHATSAT c1 10 5");
    let json = check_framing(&client.read_whatsat_reply(), &at);
    assert_eq!(json, json!({}));
}

#[test]
fn legacy_api_keeps_the_first_bound_results_and_sends_key_in_query() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").legacy(&fake).start();
    let mut client = server.client();
    let at = client.iamat("kiwi.cs.ucla.edu", KIWI, "1621464827.959498503");
    client.send("WHATSAT kiwi.cs.ucla.edu 10 3");
    let reply = client.read_whatsat_reply();
    let json = check_framing(&reply, &at);
    assert_eq!(
        place_ids(&json, "results", "place_id"),
        fake_ids(3),
        "first 3 of the fake's 20"
    );
    assert_eq!(json["status"], "OK");
    assert_eq!(json["html_attributions"], json!([]));
    assert_key_order(
        &reply.json_text,
        &["name", "place_id", "geometry", "vicinity"],
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.path(), "/maps/api/place/nearbysearch/json");
    assert_eq!(
        request.query_param("key").map(|k| percent_decode(&k)),
        Some(API_KEY.to_string())
    );
    let radius = request.query_param("radius").map(|r| percent_decode(&r));
    assert_eq!(
        radius.as_deref().and_then(|r| r.parse::<f64>().ok()),
        Some(10000.0),
        "radius in metres: {radius:?}"
    );
    let location = percent_decode(&request.query_param("location").expect("location parameter"));
    let (lat, lon) = location.split_once(',').expect("location is LAT,LON");
    assert_eq!(
        lat.parse::<f64>().ok(),
        Some(34.068930),
        "location {location:?}"
    );
    assert_eq!(
        lon.parse::<f64>().ok(),
        Some(-118.445127),
        "location {location:?}"
    );

    client.send("WHATSAT kiwi.cs.ucla.edu 1.5 20");
    let json = check_framing(&client.read_whatsat_reply(), &at);
    assert_eq!(place_ids(&json, "results", "place_id"), fake_ids(20));
    let radius = fake.requests()[1]
        .query_param("radius")
        .map(|r| percent_decode(&r));
    assert_eq!(radius.and_then(|r| r.parse::<f64>().ok()), Some(1500.0));
}

#[test]
fn legacy_zero_results_is_passed_through() {
    let fake = FakePlaces::start();
    fake.set_reply(Reply::NoPlaces);
    let server = Server::builder("Alpha").legacy(&fake).start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1+2", "100");
    client.send("WHATSAT c1 10 5");
    let json = check_framing(&client.read_whatsat_reply(), &at);
    assert_eq!(json["status"], "ZERO_RESULTS");
    assert_eq!(json["results"], json!([]));
}

#[test]
fn without_the_key_variable_lookups_go_out_without_a_key() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").places(&fake).without_key().start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1+2", "100");
    client.send("WHATSAT c1 10 2");
    check_framing(&client.read_whatsat_reply(), &at);
    let key = fake.requests()[0]
        .header("x-goog-api-key")
        .map(str::to_string);
    assert!(
        key.as_deref().unwrap_or("").is_empty(),
        "no key sent: {key:?}"
    );
    // README "The Places key": the server logs a warning naming the variable.
    let log = server.wait_for_log(KEY_ENV);
    let line = log
        .lines()
        .find(|line| line.contains(KEY_ENV))
        .expect("line");
    assert!(
        line.to_ascii_lowercase().contains("warn"),
        "a warning: {line:?}"
    );
}

#[test]
fn replies_come_back_in_command_order() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(500));
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1+2", "100");
    client.send_raw(b"WHATSAT c1 10 2\nIAMAT c2 +3+4 200\n");
    let reply = client.read_whatsat_reply();
    check_framing(&reply, &at);
    let second = client.read_line();
    check_at_line(&second, "Alpha", "c2", "+3+4", "200");
}

#[test]
fn a_quicker_later_lookup_waits_for_the_earlier_one() {
    let fake = FakePlaces::start();
    fake.set_delay_for_count(3, Duration::from_millis(800));
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("places workers 4")
        .start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1+2", "100");
    client.send_raw(b"WHATSAT c1 10 3\nWHATSAT c1 10 2\nHELLO\nIAMAT c2 +3+4 200\n");
    let first = check_framing(&client.read_whatsat_reply(), &at);
    assert_eq!(
        place_ids(&first, "places", "id"),
        fake_ids(3),
        "the slow lookup's reply first"
    );
    let second = check_framing(&client.read_whatsat_reply(), &at);
    assert_eq!(place_ids(&second, "places", "id"), fake_ids(2));
    assert_eq!(client.read_line(), "? HELLO");
    check_at_line(&client.read_line(), "Alpha", "c2", "+3+4", "200");
}

#[test]
fn slow_lookups_do_not_hold_up_other_clients() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_secs(2));
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("places workers 50")
        .line("places queue 100")
        .start();
    let mut waiting = server.client();
    let at = waiting.iamat("c1", "+1+2", "100");
    let mut burst = String::new();
    for i in 0..50 {
        burst.push_str(&format!("WHATSAT c1 10 {}\n", i % 20 + 1));
    }
    // No lookup can be answered before Places has held the first one for 2 s.
    let sent_at = Instant::now();
    waiting.send_raw(burst.as_bytes());
    assert!(
        fake.wait_for_requests(1, Duration::from_secs(5)),
        "the lookups reach Places"
    );

    let mut other = server.client();
    let reply = other.iamat("c2", "+3+4", "200");
    check_at_line(&reply, "Alpha", "c2", "+3+4", "200");
    other.send("WHATSAT nobody 10 5");
    assert_eq!(other.read_line(), "? WHATSAT nobody 10 5");
    assert_eq!(
        fake.answered_count(),
        0,
        "the other client was answered before Places answered any lookup"
    );
    // Until well before the first answer can come, the waiting client hears nothing: a reply
    // now would not have waited for Places (or would have jumped the queue).
    assert!(
        waiting.is_quiet_until(sent_at + Duration::from_millis(1500)),
        "nothing for the waiting client before Places answers"
    );

    for i in 0..50 {
        let json = check_framing(&waiting.read_whatsat_reply(), &at);
        assert_eq!(
            place_ids(&json, "places", "id"),
            fake_ids(i % 20 + 1),
            "reply {i}"
        );
    }
    // Identical lookups in flight share one call: 50 WHATSATs, 20 distinct bounds.
    assert_eq!(fake.request_count(), 20);
}

/// A burst of distinct lookups is in flight at once, one call per worker up to `places
/// workers` (workers start one another as a burst comes, so the loop starts only the first),
/// and the rest wait for a worker to be free.
#[test]
fn a_burst_of_lookups_is_in_flight_at_once_up_to_places_workers() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_secs(3));
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("places workers 12")
        .line("places cache-ms 0")
        .start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1+2", "100");
    let burst: String = (1..=16).map(|n| format!("WHATSAT c1 10 {n}\n")).collect();
    client.send_raw(burst.as_bytes());
    // Each call is held for 3 s, so 12 calls seen within 2.5 s were in flight together.
    assert!(
        fake.wait_for_requests(12, Duration::from_millis(2500)),
        "{} calls in flight",
        fake.request_count()
    );
    assert_eq!(fake.answered_count(), 0);
    assert_eq!(fake.request_count(), 12, "no more calls than workers");
    for n in 1..=16 {
        let json = check_framing(&client.read_whatsat_reply(), &at);
        assert_eq!(place_ids(&json, "places", "id"), fake_ids(n), "reply {n}");
    }
    assert_eq!(fake.request_count(), 16);
}

#[test]
fn client_gone_before_places_answers_does_not_hurt_the_server() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(300));
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    client.iamat("c1", "+1+2", "100");
    client.send("WHATSAT c1 10 2");
    assert!(fake.wait_for_requests(1, Duration::from_secs(5)));
    drop(client);
    wait_until("the fake to answer", Duration::from_secs(5), || {
        fake.answered_count() == 1
    });
    // The answer has nowhere to go; the server carries on.
    let mut other = server.client();
    let at = other.iamat("c2", "+3+4", "200");
    other.send("WHATSAT c2 10 1");
    let json = check_framing(&other.read_whatsat_reply(), &at);
    assert_eq!(place_ids(&json, "places", "id"), fake_ids(1));
}

#[test]
fn half_close_still_gets_every_reply_then_eof() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(300));
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1+2", "100");
    client.send_raw(b"WHATSAT c1 10 2\nIAMAT c2 +3+4 200\nWHATSAT c1 10 1\n");
    client.shutdown_write();
    let json = check_framing(&client.read_whatsat_reply(), &at);
    assert_eq!(place_ids(&json, "places", "id"), fake_ids(2));
    check_at_line(&client.read_line(), "Alpha", "c2", "+3+4", "200");
    let json = check_framing(&client.read_whatsat_reply(), &at);
    assert_eq!(place_ids(&json, "places", "id"), fake_ids(1));
    client.expect_eof();
}

#[test]
fn half_close_right_after_iamat_gets_the_reply_then_eof() {
    let server = Server::builder("Alpha").start();
    let mut client = Client::connect(server.port);
    client.send("IAMAT c1 +1+2 100");
    client.shutdown_write();
    check_at_line(&client.read_line(), "Alpha", "c1", "+1+2", "100");
    client.expect_eof();
}

#[test]
fn an_unterminated_whatsat_before_a_half_close_gets_its_whole_reply() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(200));
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    let at = client.iamat("c1", "+1+2", "100");
    client.send_raw(b"WHATSAT c1 10 3");
    client.shutdown_write();
    let json = check_framing(&client.read_whatsat_reply(), &at);
    assert_eq!(place_ids(&json, "places", "id"), fake_ids(3));
    client.expect_eof();
}
