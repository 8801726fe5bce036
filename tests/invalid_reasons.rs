//! A line that is not a valid command gets `? ` and the line, byte for byte, and nothing more;
//! the log says why (the protocol's "Anything else"): the record right after the reply's
//! `send` record is `why conn=ID REASON`, naming the field, what is wrong and what is allowed.
//! The reason is a per-line record: `log lines off` turns it off with the others.

use herd_test_support::{
    client::{time_from_now, Client},
    fake_places::FakePlaces,
    harness::log_event,
    server::{conn_id, records, wait_for_record, Server},
};
use std::time::Duration;

/// A client of `server` and the `conn=ID` its log gives it.
fn client_of(server: &Server) -> (Client, String) {
    let client = server.client();
    let id = conn_id(server, client.local_port());
    (client, id)
}

/// The event of every record (without its time stamp and level).
fn events(log: &str) -> Vec<&str> {
    log.lines().map(log_event).collect()
}

/// Sends `line`, expects exactly `? LINE` back, and waits for the log to give `reason` on the
/// record that follows the reply's.
#[track_caller]
fn expect_refused(server: &Server, client: &mut Client, id: &str, line: &str, reason: &str) {
    assert_eq!(
        client.request(line),
        format!("? {line}"),
        "reply to {line:?}"
    );
    expect_reason(server, id, line, reason);
}

/// Waits for `why conn=ID REASON` in the log and checks that the record before it is the
/// `? ` reply to the line shown (as the log shows it: escaped, proofs redacted). Returns the
/// log.
#[track_caller]
fn expect_reason(server: &Server, id: &str, shown_line: &str, reason: &str) -> String {
    let wanted = format!("why conn={id} {reason}");
    let log = server.wait_for_log(&wanted);
    let events = events(&log);
    let at = events
        .iter()
        .position(|event| *event == wanted)
        .unwrap_or_else(|| panic!("a record {wanted:?} in:\n{log}"));
    assert_eq!(
        events[at - 1],
        format!("send conn={id} ? {shown_line}"),
        "the reason follows the reply's record\n{log}"
    );
    log
}

#[test]
fn every_kind_of_invalid_line_is_answered_as_before_and_its_reason_logged() {
    let server = Server::builder("Alpha").start();
    let (mut client, id) = client_of(&server);
    client.iamat("kiwi", "+34.068930-118.445127", "1621464827.959498503");
    for (line, reason) in [
        (
            "IAMAT kiwi +34.068930 -118.445127 T",
            "invalid IAMAT: 5 fields, IAMAT takes 4 (IAMAT CLIENT LOCATION TIME)",
        ),
        (
            "IAMAT kiwi +99-118.445127 1621464827",
            "invalid IAMAT: latitude +99 is out of range (-90 to +90)",
        ),
        (
            "IAMAT kiwi +34.068930-180.5 1621464827",
            "invalid IAMAT: longitude -180.5 is out of range (-180 to +180)",
        ),
        (
            "IAMAT kiwi +34.068930-118.445127 T",
            "invalid IAMAT: time T is not POSIX seconds (digits, optionally . and 1 to 9 digits)",
        ),
        (
            "iamat kiwi +34.068930-118.445127 1621464827",
            "unknown command 'iamat' (IAMAT or WHATSAT, upper case)",
        ),
        (
            "WHATSAT kiwi 60 5",
            "invalid WHATSAT: radius 60 is out of range (0 < km <= 50)",
        ),
        (
            "WHATSAT kiwi 10 21",
            "invalid WHATSAT: bound 21 is out of range (1 to 20)",
        ),
        (
            "WHATSAT kiwi 10",
            "invalid WHATSAT: 3 fields, WHATSAT takes 4 (WHATSAT CLIENT RADIUS BOUND)",
        ),
        (
            "WHATSAT nobody.example 10 5",
            "invalid WHATSAT: unknown client nobody.example \
             (no IAMAT for it has reached this server)",
        ),
        (
            "AT Alpha +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            "AT from a client: a line servers exchange on a link, not a client command \
             (IAMAT or WHATSAT)",
        ),
    ] {
        expect_refused(&server, &mut client, &id, line, reason);
    }
}

#[test]
fn a_time_too_far_ahead_names_the_limit() {
    let server = Server::builder("Alpha")
        .line("limit future-seconds 10")
        .start();
    let (mut client, id) = client_of(&server);
    let line = "IAMAT kiwi +34-118 253402300799";
    assert_eq!(client.request(line), format!("? {line}"));
    let log = server.wait_for_log(&format!(
        "why conn={id} invalid IAMAT: time 253402300799 is "
    ));
    let why = records(&log, "why", &id);
    assert_eq!(why.len(), 1, "{log}");
    assert!(
        why[0].ends_with(" s ahead of this server's clock (at most 10 s: limit future-seconds)"),
        "{why:?}"
    );
    // Just inside the limit is taken.
    let soon = time_from_now(5);
    assert!(client
        .iamat("kiwi", "+34-118", &soon)
        .starts_with("AT Alpha "));
}

#[test]
fn a_line_over_the_limit_says_so() {
    let server = Server::builder("Alpha")
        .line("limit line-bytes 100")
        .start();
    let (mut client, id) = client_of(&server);
    let line = format!("IAMAT {} +1+1 1", "k".repeat(200));
    client.send(&line);
    assert_eq!(client.read_line(), format!("? {}", &line[..100]));
    expect_reason(
        &server,
        &id,
        &line[..100],
        "line over limit line-bytes: more than 100 bytes (the reply echoes the first 100)",
    );
}

#[test]
fn refused_hellos_and_proofs_say_why_and_never_show_a_proof() {
    // Beta is a neighbour that is not running; the herd has a secret (the default).
    let server = Server::builder("Alpha")
        .line("server Beta 127.0.0.1:1")
        .line("link Alpha Beta")
        .start();
    let (mut client, id) = client_of(&server);
    let nonce = "0123456789abcdef0123456789abcdef";
    expect_refused(
        &server,
        &mut client,
        &id,
        &format!("HERD-HELLO Stranger {nonce}"),
        "hello refused: Stranger is not a neighbour of this server (no link to it in the config)",
    );
    expect_refused(
        &server,
        &mut client,
        &id,
        "HERD-HELLO Beta",
        "hello refused: Beta sent no nonce, and links here prove a shared secret \
         (HERD-HELLO NAME NONCE)",
    );
    // An older hello's form, with a proof after the nonce.
    let old_proof = "ab".repeat(32);
    let old = format!("HERD-HELLO Beta 1800000000 {old_proof}");
    assert_eq!(client.request(&old), format!("? {old}"));
    expect_reason(
        &server,
        &id,
        "HERD-HELLO Beta 1800000000 <redacted>",
        "hello refused: 4 fields, a hello here is HERD-HELLO NAME NONCE",
    );
    // A hello Alpha takes: challenged. A proof that does not answer the challenge is refused.
    let challenge = client.request(&format!("HERD-HELLO Beta {nonce}"));
    assert!(challenge.starts_with("HERD-CHALLENGE "), "{challenge}");
    let wrong_proof = "cd".repeat(32);
    let proof_line = format!("HERD-PROOF {wrong_proof}");
    assert_eq!(client.request(&proof_line), format!("? {proof_line}"));
    expect_reason(
        &server,
        &id,
        "HERD-PROOF <redacted>",
        "proof refused: it does not answer the challenge sent to Beta",
    );
    // The challenge is spent: the same line again is a proof out of turn.
    assert_eq!(client.request(&proof_line), format!("? {proof_line}"));
    let log = expect_reason(
        &server,
        &id,
        "HERD-PROOF <redacted>",
        "HERD-PROOF out of turn: it answers a challenge, and this connection has none pending",
    );
    for proof in [&old_proof, &wrong_proof] {
        assert!(!log.contains(proof.as_str()), "no proof in the log:\n{log}");
    }
}

#[test]
fn a_reason_shows_network_bytes_escaped() {
    let server = Server::builder("Alpha").start();
    let (mut client, id) = client_of(&server);
    client.send_raw(b"iam\x1b[31mat\xff kiwi\n");
    assert_eq!(client.read_line_bytes(), b"? iam\x1b[31mat\xff kiwi");
    expect_reason(
        &server,
        &id,
        r"iam\x1b[31mat\xff kiwi",
        r"unknown command 'iam\x1b[31mat\xff' (IAMAT or WHATSAT, upper case)",
    );
    let bytes = std::fs::read(server.log_path()).expect("the log");
    assert!(
        !bytes.iter().any(|&b| (b < 0x20 && b != b'\n') || b >= 0x7f),
        "no raw control or non-ASCII byte in the log"
    );
}

#[test]
fn a_refusal_waiting_behind_a_lookup_keeps_its_reason_beside_its_reply() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(300));
    let server = Server::builder("Alpha").places(&fake).start();
    let (mut client, id) = client_of(&server);
    client.iamat("kiwi", "+34.068930-118.445127", "1621464827");
    client.send("WHATSAT kiwi 10 5");
    client.send("WHATSAT kiwi 10 0");
    let reply = client.read_whatsat_reply();
    assert!(reply.at_line.starts_with("AT Alpha "), "{}", reply.at_line);
    assert_eq!(client.read_line(), "? WHATSAT kiwi 10 0");
    expect_reason(
        &server,
        &id,
        "WHATSAT kiwi 10 0",
        "invalid WHATSAT: bound 0 is out of range (1 to 20)",
    );
}

#[test]
fn with_log_lines_off_no_reason_is_logged() {
    let server = Server::builder("Alpha").line("log lines off").start();
    let (mut client, id) = client_of(&server);
    for line in ["iamat kiwi +1+1 1", "WHATSAT nobody.example 10 5", "IAMAT"] {
        assert_eq!(client.request(line), format!("? {line}"));
    }
    drop(client);
    let log = wait_for_record(&server, "close", &id);
    assert!(
        records(&log, "why", &id).is_empty(),
        "no reasons with the lines off:\n{log}"
    );
    assert!(!log.contains("invalid"), "no reasons:\n{log}");
}
