//! Links across a slow wide-area network (docs/operations.md, "Across sites"): with 300 ms of
//! one-way delay and 100 ms of jitter on both directions, and the default peer settings, the
//! links come up, stay up (no false link-down) while updates flow, and a link that goes
//! silent (blackholed: connected, nothing crosses) is taken down once `5 x peer ping-ms`
//! passes without a word from the neighbour, then comes back and catches up when healed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herd_test_support::client::time_from_now;
use herd_test_support::cluster::Herd;
use herd_test_support::harness::wait_until;
use herd_test_support::wan::{LinkShape, Relay};

const ONE_WAY_MS: u64 = 300;
const JITTER_MS: u64 = 100;

/// A relay toward `name` with the WAN's delay.
fn relay_to(herd: &Herd, name: &str, seed: u64) -> Relay {
    let target: SocketAddr = ([127, 0, 0, 1], herd.port(name)).into();
    let shape = LinkShape::delay_ms(ONE_WAY_MS)
        .with_jitter_ms(JITTER_MS)
        .with_seed(seed);
    Relay::start(([127, 0, 0, 1], 0).into(), target, shape).expect("a relay")
}

#[test]
fn links_over_a_slow_wan_stay_up_and_a_silent_one_is_taken_down_then_heals() {
    let mut herd = Herd::chain(&["Campbell", "Jaquez"]);
    let to_jaquez = relay_to(&herd, "Jaquez", 1);
    let to_campbell = relay_to(&herd, "Campbell", 2);
    herd.route("Campbell", "Jaquez", to_jaquez.port());
    herd.route("Jaquez", "Campbell", to_campbell.port());
    herd.start_all();
    herd.wait_all_linked();
    // A server that started before its neighbour saw its first attempts fail; none may fail
    // from here on.
    let downs_before: Vec<usize> = ["Campbell", "Jaquez"]
        .iter()
        .map(|s| herd.count_in_log(s, "link down "))
        .collect();

    // Updates flow both ways for ten seconds, ten ping intervals: each arrives, and neither
    // server ever takes its link down.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let (from, to) = match n % 2 {
            0 => ("Campbell", "Jaquez"),
            _ => ("Jaquez", "Campbell"),
        };
        let id = format!("wan-{n}.example");
        let line = herd.iamat(from, &id, "+34.068930-118.445127", &time_from_now(-1));
        wait_until(
            &format!("{to} to learn {id}"),
            Duration::from_secs(10),
            || herd.known(to, &id).as_deref() == Some(line.as_str()),
        );
        n += 1;
    }
    for (server, before) in ["Campbell", "Jaquez"].into_iter().zip(downs_before) {
        assert_eq!(
            herd.count_in_log(server, "link down "),
            before,
            "{server} took a link down over a slow but working WAN"
        );
    }

    // Blackholed both ways: connected, nothing crosses. Taken for gone after five silent
    // ping intervals (5 s by default), not before.
    to_jaquez.blackhole();
    to_campbell.blackhole();
    let silent_since = Instant::now();
    herd.wait_log_count_for(
        "Campbell",
        "link down Jaquez: neighbour silent",
        1,
        Duration::from_secs(15),
    );
    // Five ping intervals after the neighbour was last heard, which was up to a ping interval
    // and a round trip with its jitter (about 1.8 s) before the blackhole began.
    let detected_after = silent_since.elapsed();
    assert!(
        detected_after >= Duration::from_secs(3),
        "taken down after {detected_after:?}, before five silent ping intervals"
    );

    // An update made while cut off reaches the other side once the WAN heals.
    let during = herd.iamat("Campbell", "cut-off.example", "+1+1", &time_from_now(-1));
    to_jaquez.heal();
    to_campbell.heal();
    wait_until(
        "Jaquez to learn the update made while cut off",
        Duration::from_secs(30),
        || herd.known("Jaquez", "cut-off.example").as_deref() == Some(during.as_str()),
    );
}
