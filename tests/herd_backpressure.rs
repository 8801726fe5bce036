//! A server does not run ahead of its herd (README "Not running ahead of the herd"): while a
//! link owes its neighbour more than `peer max-owed` updates, client commands wait in the
//! kernel and are answered once the neighbour catches up; a neighbour that takes nothing for
//! `peer stall-ms` is dropped instead, so clients are answered again.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use herd_test_support::client::{time_from_now, Client};
use herd_test_support::cluster::Herd;
use herd_test_support::harness::{self, accept_within};

/// Updates with long client ids, so that a few hundred fill the link's socket buffers (a few
/// hundred KiB) and the link then owes more than `peer max-owed`.
const UPDATES: usize = 2000;
const ID_BYTES: usize = 2000;

fn client_id(n: usize) -> String {
    format!("{n:05}-{}", "x".repeat(ID_BYTES))
}

/// Campbell, whose link to Bona goes to a fake Bona played by the test: it welcomes the link
/// and then reads nothing until told to.
fn campbell_with_a_fake_bona(settings: &[&str]) -> (Herd, TcpStream) {
    let fake_bona = TcpListener::bind("127.0.0.1:0").expect("bind the fake neighbour");
    let mut herd = Herd::chain(&["Campbell", "Bona"]);
    herd.line("peer secret none"); // the fake Bona checks a plain hello
    for line in settings {
        herd.line(line);
    }
    herd.route(
        "Campbell",
        "Bona",
        fake_bona.local_addr().expect("local_addr").port(),
    );
    herd.start("Campbell");
    let stream = accept_within(&fake_bona, Duration::from_secs(5)); // Campbell's link
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut hello = String::new();
    BufReader::new(&stream)
        .read_line(&mut hello)
        .expect("the hello");
    assert_eq!(hello.trim_end(), "HERD-HELLO Campbell");
    (&stream)
        .write_all(b"HERD-WELCOME Bona\n")
        .expect("welcome");
    herd.wait_log_count("Campbell", "link sync Bona: sent 0 records", 1);
    (herd, stream)
}

/// Sends every IAMAT from a thread (its writes block while Campbell holds input back).
fn send_updates(client: &Client) -> JoinHandle<()> {
    let mut stream = client.stream().try_clone().expect("clone");
    let time = time_from_now(-1);
    thread::spawn(move || {
        for n in 0..UPDATES {
            let line = format!("IAMAT {} +1+1 {time}\n", client_id(n));
            stream.write_all(line.as_bytes()).expect("send an IAMAT");
        }
    })
}

/// Reads replies until `UPDATES` have come or none comes for `quiet`; returns the count.
fn read_replies(client: &mut Client, already: usize, quiet: Duration) -> usize {
    client
        .stream()
        .set_read_timeout(Some(quiet))
        .expect("read timeout");
    let mut count = already;
    let mut reader = BufReader::new(client.stream());
    let mut line = String::new();
    while count < UPDATES {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => panic!("Campbell closed the client connection"),
            Ok(_) => {
                assert!(line.starts_with("AT Campbell "), "{line:?}");
                count += 1;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("reading replies: {e}"),
        }
    }
    count
}

#[test]
fn a_link_owing_more_than_max_owed_holds_clients_until_the_neighbour_reads() {
    let (herd, mut bona) = campbell_with_a_fake_bona(&["peer max-owed 10", "peer stall-ms 60000"]);
    let mut client = herd.client("Campbell");
    let sender = send_updates(&client);
    herd.wait_log_count("Campbell", "peer max-owed: client input held back", 1);
    // Held: the replies stop short of the commands sent, for as long as Bona reads nothing.
    let answered = read_replies(&mut client, 0, Duration::from_millis(300));
    assert!(
        answered < UPDATES,
        "all {UPDATES} IAMATs were answered while the link owed more than max-owed"
    );

    // Bona reads: everything is answered, and Bona gets every client once, newest version.
    let reader = thread::spawn(move || {
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        bona.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        while let Ok(n) = bona.read(&mut chunk) {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
            // Pings share the link: count the updates, not the lines; and only whole lines
            // (the chunk may end inside one).
            let whole = received
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(&received[..0], |end| &received[..end]);
            let updates = whole
                .split(|&b| b == b'\n')
                .filter(|line| line.starts_with(b"AT Campbell "))
                .count();
            if updates >= UPDATES {
                break;
            }
        }
        received
    });
    assert_eq!(
        read_replies(&mut client, answered, Duration::from_secs(10)),
        UPDATES,
        "every IAMAT is answered once the neighbour reads"
    );
    sender.join().expect("the sender");
    let received = String::from_utf8_lossy(&reader.join().expect("Bona's reader")).into_owned();
    let updates: Vec<&str> = received
        .lines()
        .filter(|l| l.starts_with("AT Campbell "))
        .collect();
    assert_eq!(updates.len(), UPDATES, "one update per client reached Bona");
    for n in [0, UPDATES / 2, UPDATES - 1] {
        let id = client_id(n);
        assert_eq!(
            updates.iter().filter(|l| l.contains(&id)).count(),
            1,
            "client {n}"
        );
    }
}

#[test]
fn a_neighbour_that_takes_nothing_for_stall_ms_is_dropped_and_clients_go_on() {
    let (herd, _bona) = campbell_with_a_fake_bona(&["peer max-owed 10", "peer stall-ms 300"]);
    let mut client = herd.client("Campbell");
    let sender = send_updates(&client);
    let log = herd.wait_log_count("Campbell", "link down Bona: stalled", 1);
    assert!(
        log.contains("the neighbour took nothing for 300 ms"),
        "{}",
        harness::tail(&log, 10)
    );
    assert_eq!(
        read_replies(&mut client, 0, Duration::from_secs(10)),
        UPDATES,
        "every IAMAT is answered after the stuck link is dropped"
    );
    sender.join().expect("the sender");
}
