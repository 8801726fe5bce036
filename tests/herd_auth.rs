//! Who may inject updates (SPEC section 3, README "Who may inject"): an AT line from a client is
//! an invalid command, a hello from anyone but a configured neighbour (or, with
//! `peer secret-env`, without a valid proof made for this server) is refused and changes
//! nothing; and an accepted neighbour that sends anything but AT lines, or an endless line, is
//! dropped and logged while the server keeps serving.

use herd_test_support::{
    client::{now, time_from_now},
    cluster::Herd,
    harness::{accept_within, accepted_conn, log_event, tail},
    raw_peer::RawPeer,
};
use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

const SECRET_ENV: &str = "HERD_PEER_SECRET";
const SECRET: &str = "herd-test-secret-8Hq2-never-on-the-wire";
const FORGED: &str = "AT Bona +0.000000000 kiwi +1+1 9999999999";

fn record(id: &str, line: &str) -> (String, String) {
    (id.to_string(), line.to_string())
}

/// Campbell - Bona - Clark: Clark belongs to the herd but is not Campbell's neighbour.
fn three_in_a_row() -> Herd {
    Herd::chain(&["Campbell", "Bona", "Clark"])
}

/// The `conn=ID` that `server` gave the connection from our local `port`.
fn conn_id(herd: &Herd, server: &str, port: u16) -> String {
    let log = herd.wait_log_count(server, &format!("from 127.0.0.1:{port}"), 1);
    accepted_conn(&log, port)
        .unwrap_or_else(|| panic!("an `accept conn=ID from 127.0.0.1:{port}` record"))
        .to_string()
}

/// Every server still holds `line` for kiwi, and no log shows the forged line sent on a link.
fn check_kiwi_untouched(herd: &Herd, line: &str) {
    for server in herd.names() {
        herd.sync_log(&server);
        let flooded = herd
            .log(&server)
            .lines()
            .map(log_event)
            .any(|e| e.starts_with("send link=") && e.ends_with(FORGED));
        assert!(!flooded, "{server} flooded the forged line");
    }
    let names = herd.names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    herd.wait_converged(&names, &[record("kiwi", line)]);
}

#[test]
fn an_at_line_or_a_hello_from_a_non_neighbour_is_an_invalid_command_and_changes_nothing() {
    let mut herd = three_in_a_row();
    herd.start_all();
    herd.wait_all_linked();
    let kiwi = herd.iamat("Bona", "kiwi", "+34.068930-118.445127", &time_from_now(-1));
    herd.wait_converged(&["Campbell", "Bona", "Clark"], &[record("kiwi", &kiwi)]);

    let mut client = herd.client("Campbell");
    assert_eq!(client.request(FORGED), format!("? {FORGED}"));
    for hello in [
        "HERD-HELLO Mallory",
        "HERD-HELLO Clark",    // in the herd, but not Campbell's neighbour
        "HERD-HELLO Campbell", // itself
    ] {
        let mut client = herd.client("Campbell");
        assert_eq!(client.request(hello), format!("? {hello}"));
        assert_eq!(
            client.request(FORGED),
            format!("? {FORGED}"),
            "after {hello:?}"
        );
        // Still an ordinary client connection.
        let line = client.iamat("plain.example", "+1+1", &time_from_now(-1));
        assert!(
            line.starts_with("AT Campbell "),
            "after {hello:?}: {line:?}"
        );
    }
    check_kiwi_untouched(&herd, &kiwi);
}

#[test]
fn with_a_peer_secret_the_herd_links_up_and_a_hello_without_a_valid_proof_is_refused() {
    let mut herd = three_in_a_row();
    herd.line(&format!("peer secret-env {SECRET_ENV}"));
    herd.env_all(SECRET_ENV, SECRET);
    herd.start_all();
    herd.wait_all_linked();
    for (server, neighbour) in [
        ("Campbell", "Bona"),
        ("Bona", "Campbell"),
        ("Bona", "Clark"),
        ("Clark", "Bona"),
    ] {
        herd.wait_log_count(server, &format!("link up {neighbour}"), 1);
    }
    let kiwi = herd.iamat(
        "Campbell",
        "kiwi",
        "+34.068930-118.445127",
        &time_from_now(-1),
    );
    herd.wait_converged(&["Campbell", "Bona", "Clark"], &[record("kiwi", &kiwi)]);

    // A hello without a nonce, and one in an old form with a forged proof: each is an invalid
    // command, and so is the AT line after it.
    let forged_proof = format!("HERD-HELLO Bona {} {}", now().0, "0".repeat(64));
    for hello in ["HERD-HELLO Bona", forged_proof.as_str()] {
        let mut client = herd.client("Campbell");
        assert_eq!(client.request(hello), format!("? {hello}"));
        assert_eq!(
            client.request(FORGED),
            format!("? {FORGED}"),
            "after {hello:?}"
        );
    }
    // Bona's handshake with Clark, as its log shows it: the proofs are redacted.
    let bona_log = herd.log("Bona");
    for (event, what) in [
        ("send link=Clark HERD-HELLO Bona ", "the hello"),
        ("recv link=Clark HERD-CHALLENGE ", "Clark's challenge"),
        ("send link=Clark HERD-PROOF <redacted>", "the proof"),
    ] {
        assert!(
            bona_log
                .lines()
                .map(log_event)
                .any(|e| e.starts_with(event)),
            "Bona logged {what}:\n{}",
            tail(&bona_log, 30)
        );
    }
    assert!(
        bona_log
            .lines()
            .map(log_event)
            .filter(|e| e.starts_with("recv link=Clark HERD-CHALLENGE "))
            .all(|e| e.ends_with(" <redacted>")),
        "Clark's proof is not logged:\n{}",
        tail(&bona_log, 30)
    );

    check_kiwi_untouched(&herd, &kiwi);
    for server in herd.names() {
        assert!(
            !herd.log(&server).contains(SECRET),
            "the secret appears in {server}'s log"
        );
    }
}

/// Bona's link to Clark goes through the test, which passes the handshake on and keeps a copy,
/// as anyone on the path (or reading a log that showed it) could: replayed to Clark and to
/// Campbell, the hello gets a fresh challenge, the captured proof does not answer it, and the AT
/// line after it is an invalid command. Nothing is stored anywhere.
#[test]
fn a_hello_and_proof_captured_from_a_real_link_are_refused_when_replayed() {
    let on_the_path = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let mut herd = three_in_a_row();
    herd.line(&format!("peer secret-env {SECRET_ENV}"));
    herd.env_all(SECRET_ENV, SECRET);
    let relay_port = on_the_path.local_addr().expect("local_addr").port();
    herd.route("Bona", "Clark", relay_port);
    herd.start_all();
    let kiwi = herd.iamat(
        "Campbell",
        "kiwi",
        "+34.068930-118.445127",
        &time_from_now(-1),
    );

    let mut bona = RawPeer::from_stream(accept_within(&on_the_path, Duration::from_secs(10)));
    let mut clark = RawPeer::connect(herd.port("Clark"));
    let hello = bona.read_line();
    clark.send_line(&hello);
    let challenge = clark.read_line();
    bona.send_line(&challenge);
    let proof = bona.read_line();
    clark.send_line(&proof);
    assert_eq!(
        clark.read_line(),
        "HERD-WELCOME Clark",
        "the relayed handshake"
    );
    assert!(hello.starts_with("HERD-HELLO Bona "), "{hello}");
    assert!(proof.starts_with("HERD-PROOF "), "{proof}");
    drop((bona, clark, on_the_path));

    // Newer than kiwi's own line: stored and flooded if it were taken.
    let forged = format!("AT Bona +0.000000000 kiwi +2+2 {}", time_from_now(0));
    for server in ["Clark", "Campbell"] {
        let mut replay = RawPeer::connect(herd.port(server));
        replay.send_line(&hello);
        let fresh = replay.read_line();
        assert!(fresh.starts_with("HERD-CHALLENGE "), "{server}: {fresh}");
        assert_ne!(
            fresh, challenge,
            "{server} challenges every connection afresh"
        );
        replay.send_line(&proof);
        assert_eq!(replay.read_line(), format!("? {proof}"), "at {server}");
        replay.send_line(&forged);
        assert_eq!(replay.read_line(), format!("? {forged}"), "at {server}");
    }
    // Campbell holds kiwi's own line; Clark never heard of kiwi (Bona's link to it went
    // through the relay, which passed on nothing but the handshake).
    assert_eq!(herd.known("Campbell", "kiwi"), Some(kiwi));
    assert_eq!(herd.known("Clark", "kiwi"), None);
    let proof_hex = proof.trim_start_matches("HERD-PROOF ");
    for server in herd.names() {
        herd.sync_log(&server);
        let log = herd.log(&server);
        assert!(!log.contains(proof_hex), "{server} logged the proof");
        assert!(!log.contains(SECRET), "{server} logged the secret");
    }
}

#[test]
fn a_neighbour_with_the_wrong_secret_is_refused() {
    let mut herd = Herd::chain(&["Campbell", "Bona"]);
    herd.line(&format!("peer secret-env {SECRET_ENV}"));
    herd.env("Campbell", SECRET_ENV, SECRET);
    herd.env("Bona", SECRET_ENV, "a-different-secret");
    herd.start_all();
    herd.wait_log_count("Campbell", "link down Bona: refused: ", 1);
    herd.wait_log_count("Bona", "link down Campbell: refused: ", 1);
    for server in ["Campbell", "Bona"] {
        herd.sync_log(server);
        let log = herd.log(server);
        assert!(!log.contains("link up "), "{server} linked up:\n{log}");
        assert!(
            !log.contains("peer conn="),
            "{server} accepted a peer:\n{log}"
        );
    }
}

/// Campbell alone, configured with Bona as its neighbour (Bona never runs; a test plays it,
/// with a plain hello: these tests are about what an accepted neighbour sends).
fn campbell_with_absent_bona() -> Herd {
    let mut herd = Herd::chain(&["Campbell", "Bona"]);
    herd.line("peer secret none");
    herd.start("Campbell");
    herd
}

/// Connects to Campbell as Bona and checks the welcome; returns the connection and its conn id.
fn fake_bona(herd: &Herd) -> (RawPeer, String) {
    let mut peer = RawPeer::connect(herd.port("Campbell"));
    peer.send_line("HERD-HELLO Bona");
    assert_eq!(peer.read_line(), "HERD-WELCOME Campbell");
    let id = conn_id(herd, "Campbell", peer.local_port());
    herd.wait_log_count("Campbell", &format!("peer conn={id} is Bona"), 1);
    (peer, id)
}

/// Campbell still takes and answers clients.
fn check_serving(herd: &Herd, id: &str) {
    let line = herd.iamat("Campbell", id, "+1.5+1.5", &time_from_now(-1));
    assert_eq!(herd.known("Campbell", id), Some(line));
}

#[test]
fn a_neighbour_that_sends_anything_but_at_lines_is_dropped_and_the_server_keeps_serving() {
    let herd = campbell_with_absent_bona();

    // The fake neighbour is a real one until it misbehaves: its AT line is taken.
    let (mut peer, _) = fake_bona(&herd);
    let injected = format!(
        "AT Bona +0.500000000 fake.example +10+10 {}",
        time_from_now(-2)
    );
    peer.send_line(&injected);
    herd.wait_knows("Campbell", &[record("fake.example", &injected)]);
    drop(peer);

    // A well-formed update naming a server outside the herd is forged, like the rest.
    let unknown_origin = format!(
        "AT Nobody +0.500000000 forged.example +10+10 {}",
        time_from_now(-2)
    );
    let garbage = [
        "this is garbage",
        "AT Bona +x fake.example +10+10 1",
        "IAMAT kiwi +1+1 1",
        "WHATSAT fake.example 10 1",
        "HERD-HELLO Bona",
        &unknown_origin,
    ];
    for (i, line) in garbage.iter().enumerate() {
        let (mut peer, id) = fake_bona(&herd);
        peer.send_line(line);
        // Everything sent was read, so the close is a clean EOF, with no reply.
        assert_eq!(peer.expect_dropped(), "eof", "after {line:?}");
        let log = herd.wait_log_count("Campbell", &format!("close conn={id} "), 1);
        assert!(
            log.lines().map(log_event).any(|e| e
                .starts_with(&format!("peer conn={id} Bona: invalid line"))
                && e.ends_with(line)),
            "Campbell logged why it dropped conn={id} after {line:?}:\n{}",
            tail(&log, 20)
        );
        check_serving(&herd, &format!("client-{i}.example"));
    }
    herd.wait_knows("Campbell", &[record("fake.example", &injected)]);
    assert_eq!(herd.known("Campbell", "forged.example"), None);
}

#[test]
fn a_neighbour_that_sends_an_endless_line_is_dropped_and_the_server_keeps_serving() {
    let herd = campbell_with_absent_bona();
    let (mut peer, id) = fake_bona(&herd);
    let chunk = [b'x'; 16 * 1024];
    for _ in 0..(200 * 1024 / chunk.len()) {
        // Campbell may drop the connection before it has everything: a write error is fine.
        if peer.stream.write_all(&chunk).is_err() {
            break;
        }
    }
    peer.expect_dropped();
    let log = herd.wait_log_count("Campbell", &format!("close conn={id} "), 1);
    assert!(
        log.contains(&format!("peer conn={id} Bona: line over the limit")),
        "Campbell logged why it dropped conn={id}:\n{}",
        tail(&log, 20)
    );
    check_serving(&herd, "after-endless.example");
}

#[test]
fn a_neighbours_update_from_far_ahead_is_not_stored_and_the_link_stays_up() {
    let herd = campbell_with_absent_bona();
    let (mut peer, id) = fake_bona(&herd);
    let far = format!(
        "AT Bona +0.500000000 clock.example +10+10 {}",
        time_from_now(2 * 86_400)
    );
    peer.send_line(&far);
    let fine = format!(
        "AT Bona +0.500000000 fine.example +10+10 {}",
        time_from_now(-2)
    );
    peer.send_line(&fine);
    // Taken after the refused one, on the same connection: the link stayed up.
    herd.wait_knows("Campbell", &[record("fine.example", &fine)]);
    assert_eq!(herd.known("Campbell", "clock.example"), None);
    let log = herd.wait_log_count(
        "Campbell",
        &format!("limit future-seconds peer conn={id} Bona: not stored: {far}"),
        1,
    );
    assert!(
        !log.contains(&format!("close conn={id} ")),
        "the link was not dropped:\n{}",
        tail(&log, 20)
    );
}
