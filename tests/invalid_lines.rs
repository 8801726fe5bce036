//! Anything that is not a valid IAMAT or WHATSAT (SPEC section 2, "Anything else") gets `? `
//! and the line as received, and the connection stays open for the next command.

use herd_test_support::{
    checks::check_at_line, client::Client, fake_places::FakePlaces, server::Server,
};

/// Sends each line and expects `? LINE` back, all on one connection, then checks the
/// connection still answers a valid command.
fn expect_all_invalid(client: &mut Client, lines: &[&str]) {
    for line in lines {
        client.send(line);
        assert_eq!(client.read_line(), format!("? {line}"), "reply to {line:?}");
    }
    let reply = client.iamat("still-open", "+1+2", "100");
    check_at_line(&reply, "Alpha", "still-open", "+1+2", "100");
}

#[test]
fn unknown_commands_and_wrong_case() {
    let server = Server::builder("Alpha").start();
    expect_all_invalid(
        &mut server.client(),
        &[
            "HELLO",
            "iamat c1 +1+2 100",
            "Iamat c1 +1+2 100",
            "whatsat c1 10 5",
            "IAMATX c1 +1+2 100",
            "?",
            "? HELLO",
        ],
    );
}

#[test]
fn wrong_field_counts() {
    let server = Server::builder("Alpha").start();
    expect_all_invalid(
        &mut server.client(),
        &[
            "IAMAT",
            "IAMAT c1",
            "IAMAT c1 +1+2",
            "IAMAT c1 +1+2 100 extra",
            "WHATSAT",
            "WHATSAT c1",
            "WHATSAT c1 10",
            "WHATSAT c1 10 5 extra",
        ],
    );
}

#[test]
fn bad_locations() {
    let server = Server::builder("Alpha").start();
    expect_all_invalid(
        &mut server.client(),
        &[
            "IAMAT c1 34-118 100",          // no sign on the latitude
            "IAMAT c1 +34118 100",          // no longitude
            "IAMAT c1 +34-118+100 100",     // altitude
            "IAMAT c1 +34-118/ 100",        // trailing '/'
            "IAMAT c1 +90.0001-118 100",    // latitude out of range
            "IAMAT c1 -90.0001-118 100",    // latitude out of range
            "IAMAT c1 +34-180.1 100",       // longitude out of range
            "IAMAT c1 +34+180.0000001 100", // longitude out of range
            "IAMAT c1 +91+0 100",           // latitude out of range
            "IAMAT c1 +34.-118 100",        // '.' without digits
            "IAMAT c1 +.5-118 100",         // no digits before '.'
            "IAMAT c1 ++34-118 100",        // two signs
            "IAMAT c1 +3a-118 100",         // not a digit
            "IAMAT c1 +34,5-118 100",       // comma
            "IAMAT c1 +34.5.5-118 100",     // two dots
            "IAMAT c1 +-118 100",           // empty latitude
            "IAMAT c1 +34- 100",            // empty longitude
            "IAMAT c1 +1e1-118 100",        // exponent
        ],
    );
}

#[test]
fn bad_times() {
    let server = Server::builder("Alpha").start();
    expect_all_invalid(
        &mut server.client(),
        &[
            "IAMAT c1 +1+2 -5",
            "IAMAT c1 +1+2 +5",
            "IAMAT c1 +1+2 1e9",
            "IAMAT c1 +1+2 nan",
            "IAMAT c1 +1+2 NaN",
            "IAMAT c1 +1+2 inf",
            "IAMAT c1 +1+2 1.",
            "IAMAT c1 +1+2 .5",
            "IAMAT c1 +1+2 1621464827.1234567890",
            "IAMAT c1 +1+2 0x10",
            "IAMAT c1 +1+2 1_000",
            "IAMAT c1 +1+2 12:30",
        ],
    );
}

#[test]
fn bad_whatsat_numbers_for_a_known_client() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    // The client is known, so only the number can make these invalid.
    let at = client.iamat("c1", "+34-118", "100");
    client.send("WHATSAT c1 50 20");
    assert_eq!(
        client.read_whatsat_reply().at_line,
        at,
        "the limits themselves are valid"
    );
    expect_all_invalid(
        &mut client,
        &[
            "WHATSAT c1 0 5",
            "WHATSAT c1 0.0 5",
            "WHATSAT c1 50.1 5",
            "WHATSAT c1 50.0000001 5",
            "WHATSAT c1 -1 5",
            "WHATSAT c1 abc 5",
            "WHATSAT c1 nan 5",
            "WHATSAT c1 inf 5",
            "WHATSAT c1 10 0",
            "WHATSAT c1 10 21",
            "WHATSAT c1 10 1.5",
            "WHATSAT c1 10 -1",
            "WHATSAT c1 10 five",
            "WHATSAT c1 10 99999999999999999999999",
        ],
    );
    assert_eq!(
        fake.request_count(),
        1,
        "no Places lookup for an invalid WHATSAT"
    );
}

#[test]
fn whatsat_for_an_unknown_client() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    client.iamat("c1", "+34-118", "100");
    expect_all_invalid(
        &mut client,
        &["WHATSAT nobody.example 10 5", "WHATSAT C1 10 5"],
    );
    assert_eq!(
        fake.request_count(),
        0,
        "no Places lookup for an unknown client"
    );
}

#[test]
fn an_at_line_from_a_client_is_invalid_and_changes_nothing() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    let line = "AT Alpha +0.263873386 c9 +34.068930-118.445127 1621464827.959498503";
    let other = "AT Beta +0.263873386 c9 +34.068930-118.445127 1621464827.959498503";
    expect_all_invalid(&mut client, &[line, other]);
    // c9 is still unknown.
    client.send("WHATSAT c9 10 5");
    assert_eq!(client.read_line(), "? WHATSAT c9 10 5");
}

#[test]
fn the_connection_stays_open_after_many_invalid_lines() {
    let server = Server::builder("Alpha").start();
    let mut client = server.client();
    let lines: Vec<String> = (0..100).map(|i| format!("NOPE {i}")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    expect_all_invalid(&mut client, &refs);
}
