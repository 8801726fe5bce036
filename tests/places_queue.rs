//! `places queue N` holds what it says (README "Config reference"): with every worker busy, N
//! more lookups wait for one, and the one after is answered at once with `429`. A burst that
//! starts the workers as it comes in gets the same: `places workers` calls in flight plus
//! `places queue` waiting.

use herd_test_support::{
    checks::{check_error_shape, check_framing, fake_ids, place_ids},
    fake_places::FakePlaces,
    server::Server,
};
use std::time::Duration;

/// Sends `burst` distinct WHATSATs at once on one connection to a server with these workers
/// and queue, whose Places answers each call after a delay long enough that the whole burst
/// is read while the first call is in flight; returns how many got places and how many 429,
/// checking that the answered come first (they were read first) and the fake's call count.
fn answered_and_refused(workers: usize, queue: usize, burst: usize) -> (usize, usize) {
    let fake = FakePlaces::start();
    fake.set_delay(Duration::from_millis(400));
    let server = Server::builder("Alpha")
        .places(&fake)
        .line(&format!("places workers {workers}"))
        .line(&format!("places queue {queue}"))
        .line("places cache-ms 0")
        .start();
    let mut client = server.client();
    let at = client.iamat("kiwi", "+34.068930-118.445127", "100");
    // Distinct radii: distinct lookups, none shared with another.
    let lines: String = (1..=burst)
        .map(|n| format!("WHATSAT kiwi {n} 1\n"))
        .collect();
    client.send_raw(lines.as_bytes());
    let (mut answered, mut refused) = (0, 0);
    for n in 1..=burst {
        let json = check_framing(&client.read_whatsat_reply(), &at);
        if json.get("error").is_some() {
            assert_eq!(
                check_error_shape(&json),
                (429, "RESOURCE_EXHAUSTED".to_string()),
                "reply {n}: {json}"
            );
            refused += 1;
        } else {
            assert_eq!(refused, 0, "reply {n} answered after a refusal: {json}");
            assert_eq!(place_ids(&json, "places", "id"), fake_ids(1), "reply {n}");
            answered += 1;
        }
    }
    assert_eq!(
        fake.request_count(),
        answered,
        "one call per answered lookup"
    );
    (answered, refused)
}

#[test]
fn one_worker_and_queue_2_answer_3_of_a_burst_of_10() {
    // One call in flight, two waiting for the worker; the other seven are refused at once.
    assert_eq!(answered_and_refused(1, 2, 10), (3, 7));
}

#[test]
fn four_workers_and_queue_2_answer_6_of_a_burst_of_10() {
    assert_eq!(answered_and_refused(4, 2, 10), (6, 4));
}
