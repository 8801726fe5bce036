//! A thin link to another site must not slow the clients of this one (docs/protocol.md, "Not
//! running ahead of the herd"): a link that has held clients back for `peer hold-ms` in all
//! lags instead of holding every client back; its neighbour still gets each client's newest
//! record, as the link can carry it, and catches up once the load stops.
//!
//! Campbell's link to Jaquez goes through a relay capped at 2 MB/s; the load is 4,000
//! IAMATs of 4 KiB client ids, about 16 MB on the link, more than the kernel's buffers on the
//! way (about 8 MB) can hide. Held back for the link, Campbell could not answer the last of
//! them before the link had carried most of it; lagging, it answers them all while the link
//! has carried a small part.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use herd_test_support::client::time_from_now;
use herd_test_support::cluster::Herd;
use herd_test_support::harness::wait_until;
use herd_test_support::wan::{LinkShape, Relay};

const CLIENTS: usize = 4_000;
const ID_BYTES: usize = 4096;
const LINK_BYTES_PER_SEC: u64 = 2_000_000;

fn client_id(n: usize) -> String {
    format!("{n:05}-{}", "x".repeat(ID_BYTES))
}

#[test]
fn a_thin_link_lags_instead_of_holding_every_client_back_and_its_neighbour_catches_up() {
    let mut herd = Herd::chain(&["Campbell", "Jaquez"]);
    herd.line("peer max-owed 100");
    herd.line("peer hold-ms 300");
    // Campbell's outbound link (the one that carries its updates) crosses the thin link.
    let jaquez: SocketAddr = ([127, 0, 0, 1], herd.port("Jaquez")).into();
    let shape = LinkShape::delay_ms(20).with_bytes_per_sec(LINK_BYTES_PER_SEC);
    let relay = Relay::start(([127, 0, 0, 1], 0).into(), jaquez, shape).expect("a relay");
    herd.route("Campbell", "Jaquez", relay.port());
    herd.start_all();
    herd.wait_all_linked();

    let time = time_from_now(-1);
    let lines: Vec<String> = (0..CLIENTS)
        .map(|n| format!("IAMAT {} +10+20 {time}\n", client_id(n)))
        .collect();
    let total_link_bytes: usize = lines.iter().map(|l| l.len()).sum();
    let client = herd.client("Campbell");
    let mut writer = client.stream().try_clone().expect("a second handle");
    let sender = thread::spawn(move || {
        for line in &lines {
            writer
                .write_all(line.as_bytes())
                .expect("Campbell takes the load");
        }
    });
    let mut replies = BufReader::new(client.stream().try_clone().expect("a reader"));
    let mut last = String::new();
    for _ in 0..CLIENTS {
        last.clear();
        replies.read_line(&mut last).expect("an AT reply");
        assert!(last.starts_with("AT Campbell "), "{last:?}");
    }
    let carried_when_answered = relay.bytes_to_target();
    sender.join().expect("the sender");
    herd.sync_log("Campbell");
    for line in herd
        .log("Campbell")
        .lines()
        .filter(|l| l.contains("lagging") || l.contains("held back") || l.contains("link "))
    {
        eprintln!("DEBUG {}", &line[..line.len().min(200)]);
    }

    assert!(
        (carried_when_answered as usize) < total_link_bytes / 2,
        "Campbell answered all {CLIENTS} IAMATs only once the thin link had carried \
         {carried_when_answered} of {total_link_bytes} bytes: it held its clients back"
    );
    herd.wait_log_count("Campbell", "link lagging Jaquez: ", 1);

    // Jaquez still gets every client's newest record, and the link says it caught up.
    let last_client = client_id(CLIENTS - 1);
    let expected_last = last.trim_end().to_string();
    let timeout = Duration::from_secs(60);
    wait_until("Jaquez to know the last client", timeout, || {
        herd.known("Jaquez", &last_client).as_deref() == Some(expected_last.as_str())
    });
    herd.wait_log_count("Campbell", "link caught up Jaquez after ", 1);
    for n in (0..CLIENTS).step_by(397) {
        let id = client_id(n);
        let at_campbell = herd
            .known("Campbell", &id)
            .expect("Campbell knows its client");
        assert_eq!(herd.known("Jaquez", &id), Some(at_campbell), "client {n}");
    }
}
