//! Clients that pipeline without end or stop reading cost the server a bounded amount
//! (README "Limits"): a connection with `limit in-flight` lookups waiting, or more than
//! `limit output-soft-bytes` unread, is not read further until that drains (its commands wait
//! in the kernel, in order); one whose client takes nothing for `limit stall-ms` is dropped;
//! past `limit output-total-bytes` over all clients, those owing the most are dropped.

use herd_test_support::{
    checks::{check_framing, fake_ids, place_ids},
    client::Client,
    fake_places::FakePlaces,
    harness::wait_until,
    server::{conn_id, Server},
};
use std::io::Write;
use std::thread;
use std::time::Duration;

/// Sends `text` from a thread (its writes block once the server stops reading).
fn send_in_background(client: &Client, text: String) -> thread::JoinHandle<()> {
    let mut stream = client.stream().try_clone().expect("clone");
    thread::spawn(move || {
        // The server may drop the connection (that is what some tests wait for).
        let _ = stream.write_all(text.as_bytes());
    })
}

/// `count` lines that each get a `? ` reply of about `bytes` bytes.
fn long_invalid_lines(count: usize, bytes: usize) -> String {
    format!("{}\n", "x".repeat(bytes)).repeat(count)
}

#[test]
fn a_client_pipelining_whatsats_gets_them_all_in_order_with_at_most_in_flight_calls_at_once() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(200));
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("limit in-flight 8")
        .line("places cache-ms 0")
        .start();
    let mut client = server.client();
    let at = client.iamat("kiwi", "+1+1", "100");
    // 200 distinct lookups (radius 0.1 km to 20 km), sent at once.
    let burst: String = (1..=200)
        .map(|n| format!("WHATSAT kiwi {}.{} 1\n", n / 10, n % 10))
        .collect();
    let sender = send_in_background(&client, burst);
    assert!(fake.wait_for_requests(8, Duration::from_secs(5)));
    // Until Places answers, no ninth call starts: the rest wait in the kernel and the reader.
    // (Calls counted before answers: a count taken while none was answered has no ninth.)
    wait_until("Places to answer a call", Duration::from_secs(5), || {
        let calls = fake.request_count();
        let answered = fake.answered_count() > 0;
        assert!(answered || calls <= 8, "{calls} calls in flight");
        answered
    });
    for n in 1..=200 {
        let json = check_framing(&client.read_whatsat_reply(), &at);
        assert_eq!(place_ids(&json, "places", "id"), fake_ids(1), "reply {n}");
    }
    sender.join().expect("sender");
    assert_eq!(fake.request_count(), 200);
}

#[test]
fn a_client_that_takes_nothing_for_stall_ms_is_dropped() {
    let server = Server::builder("Alpha")
        .line("limit stall-ms 300")
        .line("log lines off")
        .start();
    let stuck = server.client();
    let id = conn_id(&server, stuck.local_port());
    // 5 MB of replies: more than the kernel's buffers hold, so output waits in the server.
    let sender = send_in_background(&stuck, long_invalid_lines(80, 60_000));
    let log = server.wait_for_log(&format!("close conn={id} (stalled)"));
    assert!(
        log.contains(&format!("limit stall-ms conn={id}: ")),
        "logged why"
    );
    sender.join().expect("sender");
    // The others are served.
    let reply = server.client().iamat("c1", "+1+2", "100");
    assert!(reply.starts_with("AT Alpha "), "{reply:?}");
}

#[test]
fn past_output_total_bytes_the_client_owing_the_most_is_dropped() {
    let server = Server::builder("Alpha")
        .line("limit output-total-bytes 1048576")
        .line("limit output-soft-bytes 900000")
        .line("limit stall-ms 60000")
        .line("log lines off")
        .start();
    let first = server.client();
    let second = server.client();
    let senders = [
        send_in_background(&first, long_invalid_lines(80, 60_000)),
        send_in_background(&second, long_invalid_lines(80, 60_000)),
    ];
    let log = server.wait_for_log("limit output-total-bytes:");
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("limit output-total-bytes:"))
        .collect();
    assert!(!dropped.is_empty());
    for sender in senders {
        sender.join().expect("sender");
    }
    let reply = server.client().iamat("c1", "+1+2", "100");
    assert!(reply.starts_with("AT Alpha "), "{reply:?}");
}

/// A client that sends many WHATSATs and leaves does not cost a call for each: once its
/// connection is gone, the lookups no one waits for are not sent.
#[test]
fn lookups_of_a_client_that_left_are_not_sent() {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(300));
    let server = Server::builder("Alpha")
        .places(&fake)
        .line("places workers 4")
        .line("limit in-flight 1000")
        .line("places cache-ms 0")
        .start();
    let mut client = server.client();
    client.iamat("kiwi", "+1+1", "100");
    let id = conn_id(&server, client.local_port());
    let burst: String = (1..=300)
        .map(|n| format!("WHATSAT kiwi {}.{} 1\n", n / 10, n % 10))
        .collect();
    client.send_raw(burst.as_bytes());
    assert!(fake.wait_for_requests(4, Duration::from_secs(5)));
    drop(client);
    // The first answers find the client gone; the rest of its lookups are dropped.
    let log = server.wait_for_log(&format!("close conn={id} "));
    let close = log
        .lines()
        .find(|l| l.contains(&format!("close conn={id} ")))
        .expect("the close record");
    assert!(close.contains("WHATSATs left waiting on Places"), "{close}");
    // Every call begun is answered; no more begin.
    wait_until(
        "every call begun to be answered",
        Duration::from_secs(5),
        || fake.answered_count() == fake.request_count(),
    );
    let calls = fake.request_count();
    assert!(calls <= 12, "{calls} Places calls for a client that left");
}

/// One client pipelining thousands of commands does not hold the loop: each turn it gets
/// `limit commands-per-turn` of them, and another client's command is answered between.
#[test]
fn a_pipelining_client_gets_its_turn_and_others_get_theirs() {
    let server = Server::builder("Alpha")
        .line("limit commands-per-turn 10")
        .start();
    let mut greedy = server.client();
    let mut probe = server.client();
    let greedy_id = conn_id(&server, greedy.local_port());
    let probe_id = conn_id(&server, probe.local_port());
    let burst: String = (0..5000)
        .map(|n| format!("IAMAT greedy{n} +1+1 100\n"))
        .collect();
    greedy.send_raw(burst.as_bytes());
    let reply = probe.iamat("probe", "+2+2", "100");
    assert!(reply.starts_with("AT Alpha "), "{reply:?}");
    for _ in 0..5000 {
        greedy.read_line();
    }
    let log = server.wait_for_log(&format!("send conn={probe_id} AT Alpha "));
    let greedy_before_probe = log
        .lines()
        .take_while(|l| !l.contains(&format!("send conn={probe_id} AT Alpha ")))
        .filter(|l| l.contains(&format!("send conn={greedy_id} AT Alpha ")))
        .count();
    assert!(
        greedy_before_probe < 4000,
        "the probe waited for {greedy_before_probe} of the greedy client's replies"
    );
}
