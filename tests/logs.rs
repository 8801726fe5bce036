//! The log (SPEC section 6, README "Logs"): `NAME.log` in `log dir` with `accept`, `recv`,
//! `send`, `close` and `places` records, network bytes escaped, `log lines off`, flushed at
//! exit.

use herd_test_support::{
    fake_places::FakePlaces,
    harness::log_time_nanos,
    server::{conn_id, records, wait_for_record, Server},
};
use std::time::Duration;

/// Every record starts with an RFC 3339 UTC timestamp (`2024-05-19T22:13:47.123456Z`), the
/// one the harness reads flood times from.
fn assert_timestamped(line: &str) {
    assert!(
        log_time_nanos(line).is_some(),
        "record starts with an RFC 3339 timestamp: {line:?}"
    );
}

/// The one record `event conn=ID ...` whose text after `conn=ID ` is `rest`.
fn assert_record(log: &str, event: &str, id: &str, rest: &str) {
    let found = records(log, event, id);
    let wanted = format!("{event} conn={id} {rest}");
    assert!(
        found.iter().any(|line| line.ends_with(&wanted)),
        "a record ending in {wanted:?}; `{event} conn={id}` records: {found:#?}\nlog:\n{log}"
    );
}

#[test]
fn log_has_listen_accept_recv_send_close_records() {
    let server = Server::builder("Alpha").start();
    let mut client = server.client();
    let port = client.local_port();
    let id = conn_id(&server, port);
    let at = client.iamat("c1", "+1+2", "100");
    client.send("HELLO");
    assert_eq!(client.read_line(), "? HELLO");
    drop(client);
    let log = wait_for_record(&server, "close", &id);

    assert!(
        log.contains(&format!("listen 127.0.0.1:{}", server.port)),
        "a listen record:\n{log}"
    );
    assert_record(&log, "recv", &id, "IAMAT c1 +1+2 100");
    assert_record(&log, "send", &id, &at);
    assert_record(&log, "recv", &id, "HELLO");
    assert_record(&log, "send", &id, "? HELLO");
    let accept = records(&log, "accept", &id);
    assert_eq!(accept.len(), 1, "one accept record:\n{log}");
    assert!(accept[0].ends_with(&format!("from 127.0.0.1:{port}")));
    let close = records(&log, "close", &id);
    assert_eq!(close.len(), 1, "one close record:\n{log}");
    assert!(
        close[0].ends_with(&format!("close conn={id} (eof)")),
        "README: a client's EOF is logged `close conn=ID (eof)`: {:?}",
        close[0]
    );

    let position = |line: &str| log.find(line).expect("line is in the log");
    let recv = records(&log, "recv", &id);
    let send = records(&log, "send", &id);
    assert!(
        position(accept[0]) < position(recv[0]),
        "accept before recv"
    );
    assert!(position(recv[0]) < position(send[0]), "recv before send");
    assert!(
        position(send[send.len() - 1]) < position(close[0]),
        "send before close"
    );
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        assert_timestamped(line);
    }
}

#[test]
fn control_characters_from_the_network_are_escaped() {
    let server = Server::builder("Alpha").start();
    let mut client = server.client();
    let id = conn_id(&server, client.local_port());
    let raw = b"HELLO \x01 \x1b[31m \x7f back\\slash \xff tab\there";
    client.send_raw(raw);
    client.send_raw(b"\n");
    let mut expected_reply = b"? ".to_vec();
    expected_reply.extend_from_slice(raw);
    assert_eq!(
        client.read_line_bytes(),
        expected_reply,
        "the reply echoes the raw bytes"
    );
    client.send_raw(b"IAMAT c\x1b1 +1+2 100\n");
    let at = client.read_line_bytes();
    assert!(at.ends_with(b" c\x1b1 +1+2 100"), "{at:?}");
    drop(client);
    wait_for_record(&server, "close", &id);

    let bytes = std::fs::read(server.log_path()).expect("log file");
    let raw_control = bytes
        .iter()
        .position(|&b| (b < 0x20 && b != b'\n') || b >= 0x7f);
    assert!(
        raw_control.is_none(),
        "no raw control or non-ASCII byte in the log; found {:?} in:\n{}",
        raw_control.map(|i| bytes[i]),
        String::from_utf8_lossy(&bytes)
    );
    // Hex digits in either case.
    let log = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    let escaped = r"hello \x01 \x1b[31m \x7f back\\slash \xff tab\x09here";
    assert_record(&log, "recv", &id, escaped);
    assert_record(&log, "send", &id, &format!("? {escaped}"));
    assert_record(&log, "recv", &id, r"iamat c\x1b1 +1+2 100");
}

#[test]
fn log_lines_off_keeps_accept_and_close_only() {
    let server = Server::builder("Alpha").line("log lines off").start();
    let mut client = server.client();
    let id = conn_id(&server, client.local_port());
    client.iamat("quiet-client", "+1+2", "100");
    client.send("HELLO");
    assert_eq!(client.read_line(), "? HELLO");
    drop(client);
    let log = wait_for_record(&server, "close", &id);
    assert_eq!(records(&log, "accept", &id).len(), 1, "accept kept:\n{log}");
    assert!(
        records(&log, "recv", &id).is_empty(),
        "no recv records:\n{log}"
    );
    assert!(
        records(&log, "send", &id).is_empty(),
        "no send records:\n{log}"
    );
    assert!(
        !log.contains("quiet-client"),
        "no traffic in the log:\n{log}"
    );
}

#[test]
fn places_calls_are_logged_with_outcome_and_duration() {
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("places timeout-ms 300")
        .line("places cache-ms 0")
        .start();
    let mut client = server.client();
    let id = conn_id(&server, client.local_port());
    client.iamat("c1", "+1+2", "100");
    client.send("WHATSAT c1 10 5");
    client.read_until_blank_line();
    fake.set_delay(Duration::from_secs(1));
    client.send("WHATSAT c1 10 5");
    client.read_until_blank_line();
    drop(client);
    let log = wait_for_record(&server, "close", &id);
    let places = records(&log, "places", &id);
    assert_eq!(places.len(), 2, "one record per Places call:\n{log}");
    assert!(
        places[0].contains(&format!("places conn={id} new ok status=200 results=5 in ")),
        "{:?}",
        places[0]
    );
    assert!(places[0].ends_with(" ms"), "duration: {:?}", places[0]);
    assert!(
        places[1].contains(&format!("places conn={id} new error timeout in ")),
        "{:?}",
        places[1]
    );
    assert!(places[1].ends_with(" ms"), "duration: {:?}", places[1]);
}

fn check_flushed_at_exit(signal: &str) {
    let mut server = Server::builder("Alpha").start();
    let mut client = server.client();
    client.iamat("flushed-at-exit", "+1+2", "100");
    server.signal(signal);
    assert!(
        server.wait_exit(Duration::from_secs(10)).is_some(),
        "exits on SIG{signal}"
    );
    let log = server.log_text();
    assert!(
        log.contains("recv conn=") && log.contains("IAMAT flushed-at-exit +1+2 100"),
        "the last records were flushed at exit on SIG{signal}:\n{log}"
    );
}

#[test]
fn log_is_flushed_at_exit_on_sigterm() {
    check_flushed_at_exit("TERM");
}

#[test]
fn log_is_flushed_at_exit_on_sigint() {
    check_flushed_at_exit("INT");
}

#[test]
fn log_goes_to_name_dot_log_in_log_dir() {
    let server = Server::builder("Alpha").start();
    drop(server.client());
    let log = server.wait_for_log("accept conn=");
    assert!(!log.is_empty());
    assert!(server.dir().join("Alpha.log").is_file());
}

/// A log record's view of a line: printable ASCII kept, `\` doubled, other bytes `\xNN`
/// (README "Logs").
fn escaped(line: &str) -> String {
    line.bytes()
        .map(|b| match b {
            b'\\' => r"\\".to_string(),
            b' '..=b'~' => char::from(b).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect()
}

#[test]
fn every_line_of_a_whatsat_reply_is_a_send_record_in_order() {
    // SPEC section 6: a record for every line sent, the AT line, each line of the JSON and
    // the empty line that ends the reply included.
    let fake = FakePlaces::start();
    let server = Server::builder("Alpha").places(&fake).start();
    let mut client = server.client();
    let id = conn_id(&server, client.local_port());
    let at = client.iamat("kiwi", "+34.068930-118.445127", "100");
    client.send("WHATSAT kiwi 10 3");
    let reply = client.read_until_blank_line();
    drop(client);
    let log = wait_for_record(&server, "close", &id);

    let prefix = format!("send conn={id} ");
    let sent: Vec<&str> = records(&log, "send", &id)
        .into_iter()
        .map(|record| record.split_once(&prefix).expect("a send record").1)
        .collect();
    let mut wanted = vec![escaped(&at)];
    wanted.extend(reply.lines().map(escaped));
    assert!(
        reply.lines().count() > 10,
        "a reply of many lines: {reply:?}"
    );
    assert_eq!(
        sent, wanted,
        "send records of the IAMAT and the WHATSAT\n{log}"
    );
}
