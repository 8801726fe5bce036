//! IAMAT (SPEC section 2): the exact AT reply, the signed 9-digit time difference checked
//! against the test's own clock, fields copied as written, and newest-wins storage.

use herd_test_support::{
    checks::check_at_line,
    client::{now, parse_nanos, time_from_now, Client},
    fake_places::FakePlaces,
    server::Server,
};

/// Current POSIX time in nanoseconds.
fn now_nanos() -> i128 {
    let (secs, nanos) = now();
    secs as i128 * 1_000_000_000 + nanos as i128
}

const SECOND: i128 = 1_000_000_000;
/// Slack for the server reading a clock a little before/after our own readings.
const CLOCK_SLACK: i128 = 20_000_000;

/// Sends the IAMAT, checks the reply field by field, and checks that client time + difference
/// (the server's receive time, computed exactly) falls between our clock readings around the
/// exchange. Returns the difference in nanoseconds.
fn iamat_checked(client: &mut Client, id: &str, location: &str, time: &str) -> i128 {
    let before = now_nanos();
    let reply = client.iamat(id, location, time);
    let after = now_nanos();
    let diff = check_at_line(&reply, "Alpha", id, location, time);
    let received = parse_nanos(time).expect("test time parses") + diff;
    assert!(
        received >= before - CLOCK_SLACK && received <= after + CLOCK_SLACK,
        "time + difference = {received} ns is the server's receive time, between {before} and \
         {after} (reply {reply:?})"
    );
    diff
}

#[test]
fn past_time_gives_positive_difference_with_nine_digits() {
    let server = Server::builder("Alpha").start();
    let mut client = server.client();
    let time = time_from_now(-5);
    let diff = iamat_checked(
        &mut client,
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        &time,
    );
    assert!(
        (49 * SECOND / 10..=6 * SECOND).contains(&diff),
        "difference for a time 5 s ago is between +4.9 and +6 s: {diff} ns"
    );
}

#[test]
fn future_time_gives_negative_difference() {
    let server = Server::builder("Alpha").start();
    let mut client = server.client();
    let time = time_from_now(100);
    let before = now_nanos();
    let reply = client.iamat("kiwi.cs.ucla.edu", "+34.068930-118.445127", &time);
    let after = now_nanos();
    let diff_field = reply.split(' ').nth(2).unwrap_or_default();
    assert!(
        diff_field.starts_with('-'),
        "future time gives '-': {reply:?}"
    );
    let diff = check_at_line(
        &reply,
        "Alpha",
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        &time,
    );
    assert!(
        (-100 * SECOND..=-99 * SECOND).contains(&diff),
        "difference for a time 100 s ahead is between -100 and -99 s: {diff} ns"
    );
    let received = parse_nanos(&time).unwrap() + diff;
    assert!(received >= before - CLOCK_SLACK && received <= after + CLOCK_SLACK);
}

#[test]
fn fields_are_copied_as_written() {
    let server = Server::builder("Alpha").start();
    let mut client = server.client();
    for (id, location, time) in [
        (
            "kiwi.cs.ucla.edu",
            "+34.068930-118.445127",
            "1621464827.959498503",
        ),
        ("kiwi.cs.ucla.edu", "+34-118", "1621464827"),
        ("kiwi.cs.ucla.edu", "+34-118", "1621464827.5"),
        (
            "kiwi.cs.ucla.edu",
            "-33.8688+151.2093",
            "1621464827.000000001",
        ),
        ("a/b:c@d!", "+00.5-000.5", "0"),
        ("ünïcödé-client", "+1+2", "1621464827.10"),
        ("x", "+0+0", "000001621464827.1"),
    ] {
        iamat_checked(&mut client, id, location, time);
    }
}

#[test]
fn time_zero_gives_the_receive_time_itself() {
    let server = Server::builder("Alpha").start();
    let mut client = server.client();
    let diff = iamat_checked(&mut client, "c1", "+1+2", "0");
    assert!(
        diff > 1_600_000_000 * SECOND,
        "difference is the whole POSIX time: {diff}"
    );
}

#[test]
fn boundary_latitudes_and_longitudes_are_valid() {
    let server = Server::builder("Alpha").start();
    let mut client = server.client();
    for location in [
        "+90-180",
        "-90+180",
        "+90.0000-180.000000",
        "-90.0+180.0",
        "-0+0",
        "+0.000001-0.000001",
    ] {
        iamat_checked(&mut client, "c1", location, "1621464827");
    }
}

/// A server whose every WHATSAT makes a Places call (no cache), so [`stored`] can see what
/// each one sent.
fn uncached(fake: &FakePlaces) -> Server {
    Server::builder("Alpha")
        .places(fake)
        .line("places cache-ms 0")
        .start()
}

/// The stored AT line and the center the server sent to Places, via WHATSAT.
fn stored(client: &mut Client, fake: &FakePlaces, id: &str) -> (String, f64, f64) {
    let before = fake.request_count();
    client.send(&format!("WHATSAT {id} 10 1"));
    let reply = client.read_whatsat_reply();
    let requests = fake.requests();
    assert_eq!(requests.len(), before + 1, "one Places request per WHATSAT");
    let body: serde_json::Value =
        serde_json::from_slice(&requests[before].body).expect("Places request body is JSON");
    let center = &body["locationRestriction"]["circle"]["center"];
    (
        reply.at_line,
        center["latitude"].as_f64().expect("latitude"),
        center["longitude"].as_f64().expect("longitude"),
    )
}

#[test]
fn older_iamat_is_answered_but_changes_nothing() {
    let fake = FakePlaces::start();
    let server = uncached(&fake);
    let mut client = server.client();
    let newer = client.iamat("c1", "+10+20", "1621464827.5");
    let older = client.iamat("c1", "-30-40", "1621464827.4");
    check_at_line(&older, "Alpha", "c1", "-30-40", "1621464827.4");
    let (at_line, lat, lon) = stored(&mut client, &fake, "c1");
    assert_eq!(at_line, newer, "WHATSAT still shows the newer location");
    assert_eq!(
        (lat, lon),
        (10.0, 20.0),
        "Places is asked about the newer location"
    );
}

#[test]
fn equal_time_is_not_newer() {
    let fake = FakePlaces::start();
    let server = uncached(&fake);
    let mut client = server.client();
    let first = client.iamat("c1", "+10+20", "1621464827.5");
    let second = client.iamat("c1", "-30-40", "1621464827.500");
    check_at_line(&second, "Alpha", "c1", "-30-40", "1621464827.500");
    let repeat = client.iamat("c1", "+10+20", "1621464827.5");
    check_at_line(&repeat, "Alpha", "c1", "+10+20", "1621464827.5");
    let (at_line, lat, lon) = stored(&mut client, &fake, "c1");
    assert_eq!(
        at_line, first,
        "WHATSAT shows the first of equal-time updates"
    );
    assert_eq!((lat, lon), (10.0, 20.0));
}

#[test]
fn newer_iamat_replaces_the_location() {
    let fake = FakePlaces::start();
    let server = uncached(&fake);
    let mut client = server.client();
    client.iamat("c1", "+10+20", "1621464827");
    let newer = client.iamat("c1", "-30-40", "1621464827.000000001");
    let (at_line, lat, lon) = stored(&mut client, &fake, "c1");
    assert_eq!(at_line, newer);
    assert_eq!((lat, lon), (-30.0, -40.0));
}

#[test]
fn times_compare_as_numbers_not_as_text() {
    let fake = FakePlaces::start();
    let server = uncached(&fake);
    let mut client = server.client();
    // "99" sorts after "100" as text; "100.5" is newer than "100.49".
    let kept = client.iamat("c1", "+1+1", "100");
    client.iamat("c1", "+2+2", "99");
    assert_eq!(stored(&mut client, &fake, "c1").0, kept);
    let kept = client.iamat("c2", "+1+1", "100.5");
    client.iamat("c2", "+2+2", "100.49");
    assert_eq!(stored(&mut client, &fake, "c2").0, kept);
    client.iamat("c3", "+1+1", "100.49");
    let kept = client.iamat("c3", "+2+2", "100.5");
    assert_eq!(stored(&mut client, &fake, "c3").0, kept);
}

#[test]
fn the_store_is_shared_by_all_connections() {
    let fake = FakePlaces::start();
    let server = uncached(&fake);
    let at = server.client().iamat("c1", "+10+20", "1621464827");
    let mut other = server.client();
    assert_eq!(stored(&mut other, &fake, "c1").0, at);
}

/// A client clock far ahead must not poison its record: one IAMAT from year 9999 would
/// otherwise shadow every real update of that client for good.
#[test]
fn a_time_more_than_a_day_ahead_is_invalid_and_not_stored() {
    let server = Server::builder("Alpha").start();
    let mut client = server.client();
    let far = time_from_now(86_400 + 600);
    let line = format!("IAMAT c1 +1+2 {far}");
    assert_eq!(client.request(&line), format!("? {line}"));
    let year_9999 = "IAMAT c1 +1+2 253402300799";
    assert_eq!(client.request(year_9999), format!("? {year_9999}"));
    assert_eq!(client.request("WHATSAT c1 10 1"), "? WHATSAT c1 10 1");
    // Just inside the limit is a valid (if odd) time; a real update after it is older.
    let near = time_from_now(86_400 - 600);
    check_at_line(
        &client.iamat("c1", "+1+2", &near),
        "Alpha",
        "c1",
        "+1+2",
        &near,
    );
}

#[test]
fn the_future_limit_is_a_setting() {
    let server = Server::builder("Alpha")
        .line("limit future-seconds 10")
        .start();
    let mut client = server.client();
    let ahead = time_from_now(60);
    let line = format!("IAMAT c1 +1+2 {ahead}");
    assert_eq!(client.request(&line), format!("? {line}"));
    let soon = time_from_now(5);
    check_at_line(
        &client.iamat("c1", "+1+2", &soon),
        "Alpha",
        "c1",
        "+1+2",
        &soon,
    );
}
