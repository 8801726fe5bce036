//! Keepalive on links (README "Link states"): a link pings a quiet neighbour, the neighbour
//! answers, and a neighbour that accepted the link but then falls silent (a silent partition,
//! a hung process) is taken down and retried instead of holding updates forever.

use herd_test_support::{cluster::Herd, harness::accept_within, raw_peer::RawPeer};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

#[test]
fn an_accepted_neighbour_answers_pings() {
    let mut herd = Herd::chain(&["Campbell", "Bona"]);
    herd.line("peer secret none"); // the test plays Bona with a plain hello
    herd.start("Campbell");
    let mut bona = RawPeer::connect(herd.port("Campbell"));
    bona.send_line("HERD-HELLO Bona");
    assert_eq!(bona.read_line(), "HERD-WELCOME Campbell");
    bona.send_line("HERD-PING");
    assert_eq!(bona.read_line(), "HERD-PONG");
    bona.send_line("HERD-PING");
    assert_eq!(bona.read_line(), "HERD-PONG");
}

#[test]
fn a_neighbour_that_welcomes_but_falls_silent_is_taken_down_and_retried() {
    // A fake Bona that welcomes Campbell's link and then never answers a ping.
    let silent_bona = TcpListener::bind("127.0.0.1:0").expect("bind fake neighbour");
    let fake_port = silent_bona.local_addr().expect("local_addr").port();
    let mut herd = Herd::chain(&["Campbell", "Bona"]);
    herd.line("peer secret none"); // the fake Bona checks a plain hello
    herd.line("peer ping-ms 100");
    herd.route("Campbell", "Bona", fake_port);
    herd.start("Campbell");

    let stream = accept_within(&silent_bona, Duration::from_secs(5));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut hello = String::new();
    reader.read_line(&mut hello).expect("hello");
    assert_eq!(hello.trim_end(), "HERD-HELLO Campbell");
    (&stream)
        .write_all(b"HERD-WELCOME Bona\n")
        .expect("welcome");
    let up_at = Instant::now();
    herd.wait_log_count("Campbell", "link up Bona", 1);

    // Pings arrive about every 100 ms while nothing answers them...
    let mut pings = 0;
    let mut line = String::new();
    while pings < 3 {
        line.clear();
        let n = reader.read_line(&mut line).expect("read a ping");
        assert!(n > 0, "Campbell closed the link before pinging");
        if line.trim_end() == "HERD-PING" {
            pings += 1;
        }
    }
    // ...and after five silent intervals Campbell gives up on the link and retries it.
    let log = herd.wait_log_count("Campbell", "link down Bona: neighbour silent", 1);
    assert!(
        up_at.elapsed() >= Duration::from_millis(450),
        "gave up after only {:?}",
        up_at.elapsed()
    );
    assert!(log.contains("link retry Bona in"), "{log}");
    // The retry reconnects to the same (fake) address.
    accept_within(&silent_bona, Duration::from_secs(5));
}
