//! Links survive faults (SPEC section 3, README "The herd"): a neighbour that is not there is
//! retried with a growing, capped backoff while the server keeps serving; a server killed
//! mid-run is caught up by resyncs when it comes back; and a partition (a TCP relay cut between
//! the two halves of a chain) heals to the newest record of every client on every server.

use herd_test_support::{
    client::{parse_nanos, time_from_now},
    cluster::{Herd, BACKOFF_MAX_MS, BACKOFF_MIN_MS},
    harness::{log_event, log_time_nanos, wait_until, SPEC_SERVERS},
};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The servers `name` is linked with, in config order.
fn neighbours(herd: &Herd, name: &str) -> Vec<String> {
    herd.links()
        .iter()
        .filter_map(|(a, b)| match (a == name, b == name) {
            (true, _) => Some(b.clone()),
            (_, true) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

fn record(id: &str, line: &str) -> (String, String) {
    (id.to_string(), line.to_string())
}

/// Timestamps may be a little behind the loop's own clock reading, and `N ms` is truncated.
const LOG_SLACK_NANOS: i128 = 2_000_000;

/// Checks the retries `server` logged for its link to `neighbour` (which never came up in
/// `log`) against README's backoff: delays doubling from `peer backoff-min-ms` to
/// `peer backoff-max-ms`, each from the upper half of its step, each actually waited.
fn check_backoff(log: &str, server: &str, neighbour: &str) {
    let retry = format!("link retry {neighbour} in ");
    let connecting = format!("link connecting {neighbour} ");
    let down = format!("link down {neighbour}");
    let mut retries: Vec<(i128, u64)> = Vec::new(); // (logged at, delay ms)
    let mut attempts: Vec<i128> = Vec::new();
    let mut downs = 0;
    for line in log.lines() {
        let event = log_event(line);
        let at =
            || log_time_nanos(line).unwrap_or_else(|| panic!("no RFC 3339 timestamp: {line:?}"));
        if let Some(rest) = event.strip_prefix(&retry) {
            let ms = rest
                .strip_suffix(" ms")
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("`link retry NAME in N ms`: {line:?}"));
            retries.push((at(), ms));
        } else if event.starts_with(&connecting) {
            attempts.push(at());
        } else if event.starts_with(&down) {
            downs += 1;
        }
    }
    let delays: Vec<u64> = retries.iter().map(|r| r.1).collect();
    assert!(
        retries.len() >= 6,
        "{server}: retries of {neighbour}: {delays:?}"
    );
    // (The log may have been read between a `link down` and its `link retry`.)
    assert!(
        downs == retries.len() || downs == retries.len() + 1,
        "{server}: one `link down` per retry: {downs} downs, {} retries",
        retries.len()
    );
    for (i, &ms) in delays.iter().enumerate() {
        let step = (BACKOFF_MIN_MS << i.min(20)).min(BACKOFF_MAX_MS);
        assert!(
            step / 2 <= ms && ms <= step,
            "{server}: retry {i} of {neighbour} waits {ms} ms, outside the upper half of its \
             step {step} ms (doubling from {BACKOFF_MIN_MS}, capped at {BACKOFF_MAX_MS}): \
             {delays:?}"
        );
    }
    // Each retry is really waited: the next attempt starts no earlier than announced.
    assert!(
        attempts.len() == retries.len() || attempts.len() == retries.len() + 1,
        "{server}: {} attempts for {} retries",
        attempts.len(),
        retries.len()
    );
    for (i, (logged_at, ms)) in retries.iter().enumerate() {
        let Some(next) = attempts.get(i + 1) else {
            break;
        };
        let waited = next - logged_at;
        assert!(
            waited >= i128::from(*ms) * 1_000_000 - LOG_SLACK_NANOS,
            "{server}: attempt {} at {waited} ns after `retry in {ms} ms`",
            i + 1
        );
    }
    // Never a tight loop: no more attempts than the shortest delay allows.
    let span = attempts.last().unwrap_or(&0) - attempts.first().unwrap_or(&0);
    let most = 1 + span / (i128::from(BACKOFF_MIN_MS / 2) * 1_000_000);
    assert!(
        attempts.len() as i128 <= most,
        "{server}: {} attempts in {span} ns (at most {most})",
        attempts.len()
    );
}

#[test]
fn a_missing_neighbour_is_retried_with_growing_capped_backoff_and_catches_up_when_it_starts() {
    let mut herd = Herd::spec();
    for name in ["Bona", "Campbell", "Clark", "Jaquez"] {
        herd.start(name);
    }
    herd.wait_all_linked(); // the links among the four that run

    // The others keep serving while Bailey is away, and flood among themselves.
    let early = herd.iamat("Clark", "early.example", "+1.5+2.5", &time_from_now(-3));
    let moved = herd.iamat("Campbell", "mover.example", "-3.5-4.5", &time_from_now(-2));
    let running = ["Bona", "Campbell", "Clark", "Jaquez"];
    herd.wait_converged(
        &running,
        &[
            record("early.example", &early),
            record("mover.example", &moved),
        ],
    );

    // Seven failed attempts take 50+100+200+400+400+400 ms of delays at most.
    for server in ["Campbell", "Bona"] {
        let log =
            herd.wait_log_count_for(server, "link retry Bailey in ", 7, Duration::from_secs(10));
        check_backoff(&log, server, "Bailey");
    }
    let late = herd.iamat("Jaquez", "late.example", "+5.5+6.5", &time_from_now(-1));
    let moved = herd.iamat("Bona", "mover.example", "-7.5-8.5", &time_from_now(-1));
    let expected = vec![
        record("early.example", &early),
        record("mover.example", &moved),
        record("late.example", &late),
    ];
    herd.wait_converged(&running, &expected);

    // Bailey arrives: both links come up, both ways, and Bailey learns what it missed.
    herd.start("Bailey");
    for neighbour in ["Campbell", "Bona"] {
        herd.wait_link_syncs(neighbour, "Bailey", 1);
        herd.wait_link_syncs("Bailey", neighbour, 1);
    }
    herd.wait_knows("Bailey", &expected);
    let newest = herd.iamat("Bailey", "bailey.example", "+9.5+9.5", &time_from_now(0));
    herd.wait_converged(&SPEC_SERVERS, &[record("bailey.example", &newest)]);
}

#[test]
fn a_killed_server_leaves_the_herd_flooding_and_catches_up_when_restarted() {
    let mut herd = Herd::spec();
    herd.start_all();
    herd.wait_all_linked();
    let before = herd.iamat("Clark", "before.example", "+10+10", &time_from_now(-9));
    herd.wait_converged(&SPEC_SERVERS, &[record("before.example", &before)]);

    let bona_neighbours = neighbours(&herd, "Bona");
    let downs: Vec<usize> = bona_neighbours
        .iter()
        .map(|n| herd.count_in_log(n, "link down Bona"))
        .collect();
    let syncs: Vec<usize> = bona_neighbours
        .iter()
        .map(|n| herd.link_syncs(n, "Bona"))
        .collect();
    herd.kill("Bona");
    for (neighbour, before) in bona_neighbours.iter().zip(&downs) {
        herd.wait_log_count(neighbour, "link down Bona", before + 1);
    }

    // Updates everywhere else; Clark's reach Bailey through Jaquez and Campbell.
    let survivors = ["Bailey", "Campbell", "Clark", "Jaquez"];
    let mut expected = Vec::new();
    for (i, server) in survivors.iter().enumerate() {
        let id = format!("during-{server}.example");
        let line = herd.iamat(server, &id, &format!("+{i}-{i}"), &time_from_now(-5));
        expected.push(record(&id, &line));
    }
    let before = herd.iamat("Bailey", "before.example", "+11+11", &time_from_now(-4));
    expected.push(record("before.example", &before));
    herd.wait_converged(&survivors, &expected);

    // Bona comes back with an empty table: the resyncs of its neighbours fill it.
    herd.start("Bona");
    for (neighbour, before) in bona_neighbours.iter().zip(&syncs) {
        herd.wait_link_syncs(neighbour, "Bona", before + 1);
        herd.wait_link_syncs("Bona", neighbour, 2);
    }
    herd.wait_knows("Bona", &expected);
    let after = herd.iamat("Bona", "after.example", "+12+12", &time_from_now(-1));
    expected.push(record("after.example", &after));
    herd.wait_converged(&SPEC_SERVERS, &expected);
}

#[test]
fn a_chain_whose_middle_server_dies_converges_after_it_restarts() {
    let mut herd = Herd::chain(&["Alpha", "Beta", "Gamma"]);
    herd.start_all();
    herd.wait_all_linked();
    let shared = herd.iamat("Alpha", "shared.example", "+1+1", &time_from_now(-9));
    herd.wait_converged(
        &["Alpha", "Beta", "Gamma"],
        &[record("shared.example", &shared)],
    );

    let downs = [
        herd.count_in_log("Alpha", "link down Beta"),
        herd.count_in_log("Gamma", "link down Beta"),
    ];
    herd.kill("Beta");
    herd.wait_log_count("Alpha", "link down Beta", downs[0] + 1);
    herd.wait_log_count("Gamma", "link down Beta", downs[1] + 1);

    // Beta was the only path: each end knows only its own updates.
    let west = herd.iamat("Alpha", "west.example", "+2+2", &time_from_now(-5));
    let east = herd.iamat("Gamma", "east.example", "+3+3", &time_from_now(-5));
    let shared = herd.iamat("Gamma", "shared.example", "+4+4", &time_from_now(-4));
    assert_eq!(
        herd.known("Alpha", "east.example"),
        None,
        "no path to Alpha"
    );
    assert_eq!(
        herd.known("Gamma", "west.example"),
        None,
        "no path to Gamma"
    );

    herd.start("Beta");
    let expected = [
        record("shared.example", &shared),
        record("west.example", &west),
        record("east.example", &east),
    ];
    herd.wait_converged(&["Beta", "Alpha", "Gamma"], &expected);
}

/// SPEC section 2's order for two records with equal client times: the smaller time difference,
/// then the server name that sorts first, then the smaller AT line (bytes).
fn tie_winner(a: &str, b: &str) -> String {
    let key = |line: &str| {
        let fields: Vec<&str> = line.split(' ').collect();
        let diff = parse_nanos(fields[2]).unwrap_or_else(|| panic!("AT line {line:?}"));
        (diff, fields[1].to_string(), line.to_string())
    };
    if key(a) <= key(b) {
        a.to_string()
    } else {
        b.to_string()
    }
}

#[test]
fn a_healed_partition_converges_to_the_newest_record_of_every_client() {
    // Ash - Xu - Yew - Box, where Xu and Yew reach each other only through the relays.
    let mut herd = Herd::chain(&["Ash", "Xu", "Yew", "Box"]);
    let to_yew = Relay::start(herd.port("Yew"));
    let to_xu = Relay::start(herd.port("Xu"));
    herd.route("Xu", "Yew", to_yew.port);
    herd.route("Yew", "Xu", to_xu.port);
    herd.start_all();
    herd.wait_all_linked();
    assert!(
        to_yew.relayed() >= 1 && to_xu.relayed() >= 1,
        "links go through the relays"
    );

    let all = ["Ash", "Xu", "Yew", "Box"];
    let kiwi = herd.iamat("Ash", "kiwi.example", "+1+1", &time_from_now(-100));
    let ant = herd.iamat("Box", "ant.example", "+2+2", &time_from_now(-100));
    herd.wait_converged(
        &all,
        &[record("kiwi.example", &kiwi), record("ant.example", &ant)],
    );

    let downs = [
        herd.count_in_log("Xu", "link down Yew"),
        herd.count_in_log("Yew", "link down Xu"),
    ];
    to_yew.cut();
    to_xu.cut();
    herd.wait_log_count("Xu", "link down Yew", downs[0] + 1);
    herd.wait_log_count("Yew", "link down Xu", downs[1] + 1);

    // Conflicting updates on both sides of the cut, plus one-sided ones.
    let kiwi_west = herd.iamat("Ash", "kiwi.example", "+3+3", &time_from_now(-50));
    let kiwi_east = herd.iamat("Box", "kiwi.example", "+4+4", &time_from_now(-40)); // newest
    let ant_west = herd.iamat("Xu", "ant.example", "+5+5", &time_from_now(-30)); // newest
    let ant_east = herd.iamat("Yew", "ant.example", "+6+6", &time_from_now(-45));
    let tie_time = time_from_now(-20);
    let twin_west = herd.iamat("Xu", "twin.example", "+7+7", &tie_time);
    let twin_east = herd.iamat("Yew", "twin.example", "+8+8", &tie_time);
    let solo_west = herd.iamat("Ash", "west.example", "+9+9", &time_from_now(-10));
    let solo_east = herd.iamat("Box", "east.example", "+10+10", &time_from_now(-10));

    // Each half agrees on its own view, and nothing crosses the cut.
    herd.wait_converged(
        &["Ash", "Xu"],
        &[
            record("kiwi.example", &kiwi_west),
            record("ant.example", &ant_west),
            record("twin.example", &twin_west),
            record("west.example", &solo_west),
        ],
    );
    herd.wait_converged(
        &["Yew", "Box"],
        &[
            record("kiwi.example", &kiwi_east),
            record("ant.example", &ant_east),
            record("twin.example", &twin_east),
            record("east.example", &solo_east),
        ],
    );
    // The links keep trying (and failing) through the cut.
    wait_until(
        "Xu and Yew to retry during the cut",
        Duration::from_secs(5),
        || both_dropped(&to_yew, &to_xu, 2),
    );
    for (server, id) in [("Ash", "east.example"), ("Xu", "east.example")] {
        assert_eq!(
            herd.known(server, id),
            None,
            "{id} crossed the cut to {server}"
        );
    }
    for (server, id) in [("Yew", "west.example"), ("Box", "west.example")] {
        assert_eq!(
            herd.known(server, id),
            None,
            "{id} crossed the cut to {server}"
        );
    }

    to_yew.restore();
    to_xu.restore();
    let expected = [
        record("kiwi.example", &kiwi_east),
        record("ant.example", &ant_west),
        record("twin.example", &tie_winner(&twin_west, &twin_east)),
        record("west.example", &solo_west),
        record("east.example", &solo_east),
    ];
    herd.wait_converged(&all, &expected);
}

/// A TCP relay on a loopback port of its own that forwards every connection to `target`,
/// byte for byte both ways, until it is [`cut`](Relay::cut): then every relayed connection is
/// shut down and new ones are accepted and closed at once, as a network partition looks to
/// the servers (a link drops, reconnects fail) until [`restore`](Relay::restore).
pub struct Relay {
    pub port: u16,
    shared: Arc<RelayShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct RelayShared {
    target: SocketAddr,
    state: Mutex<RelayState>,
}

#[derive(Default)]
struct RelayState {
    cut: bool,
    stopping: bool,
    /// Both sockets of every relayed connection, to shut down on a cut.
    open: Vec<TcpStream>,
    relayed: usize,
    dropped: usize,
}

impl RelayShared {
    fn state(&self) -> MutexGuard<'_, RelayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Relay {
    /// A relay to 127.0.0.1:`target_port` (which need not be listening yet).
    pub fn start(target_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        let shared = Arc::new(RelayShared {
            target: ([127, 0, 0, 1], target_port).into(),
            state: Mutex::new(RelayState::default()),
        });
        let for_thread = Arc::clone(&shared);
        let acceptor = thread::spawn(move || accept_loop(listener, for_thread));
        Relay {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Shuts down every relayed connection; until [`restore`](Relay::restore), new ones are
    /// closed as soon as they are accepted.
    pub fn cut(&self) {
        let mut state = self.shared.state();
        state.cut = true;
        for stream in state.open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.shared.state().cut = false;
    }

    /// Connections relayed so far.
    pub fn relayed(&self) -> usize {
        self.shared.state().relayed
    }

    /// Connections accepted and closed at once because the relay was cut.
    pub fn dropped(&self) -> usize {
        self.shared.state().dropped
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state();
            state.stopping = true;
        }
        self.cut();
        // Wake the blocking accept so the thread sees `stopping`.
        let _ =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Ok once both relays have each dropped `at_least` connections (links retrying through a
/// cut); Err says how many so far.
fn both_dropped(a: &Relay, b: &Relay, at_least: usize) -> Result<(), String> {
    let dropped = (a.dropped(), b.dropped());
    if dropped.0 >= at_least && dropped.1 >= at_least {
        Ok(())
    } else {
        Err(format!("dropped {} and {}", dropped.0, dropped.1))
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<RelayShared>) {
    for incoming in listener.incoming() {
        let mut state = shared.state();
        if state.stopping {
            return;
        }
        let Ok(client) = incoming else {
            drop(state);
            // Not a wait: a pause, so an accept error that repeats (out of descriptors) does
            // not spin.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if state.cut {
            state.dropped += 1;
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(1)) else {
            state.dropped += 1;
            continue; // the target is down: the client sees its connection close
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let clones = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        );
        let (Ok(client_in), Ok(server_out), Ok(client_keep), Ok(server_keep)) = clones else {
            state.dropped += 1;
            continue;
        };
        state.open.push(client_keep);
        state.open.push(server_keep);
        state.relayed += 1;
        drop(state);
        thread::spawn(move || pump(client_in, server_out));
        thread::spawn(move || pump(server, client));
    }
}

/// Copies `from` to `to` until either side ends, then shuts both down (a link is one
/// conversation: when one half goes, the connection is over).
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A restarted server is brought up to date within a round trip of starting: its own link's
/// hello tells the neighbour it is back, and the neighbour's link, waiting out a long backoff,
/// retries at once.
#[test]
fn a_restarted_neighbour_is_relinked_at_once_not_at_the_next_retry() {
    let mut herd = Herd::chain(&["Campbell", "Bona"]);
    // Every retry waits 10 to 20 s: longer than any wait below.
    herd.line("peer backoff-max-ms 20000");
    herd.line("peer backoff-min-ms 20000");
    herd.start("Campbell");
    herd.start("Bona");
    herd.wait_link_syncs("Campbell", "Bona", 1);
    herd.kill("Bona");
    herd.wait_log_count("Campbell", "link retry Bona in ", 1);
    herd.start("Bona");
    herd.wait_log_count("Campbell", "link retry Bona now: it connected to us", 1);
    // The wait gives up after 8 s, before the scheduled retry (10 s at the soonest) is due.
    herd.wait_link_syncs("Campbell", "Bona", 2);
}

/// A flood of clients cannot cut the herd apart: past `limit connections`, slots stay for
/// neighbours, and a connection in them that is not a neighbour is closed at its first line.
#[test]
fn neighbours_are_admitted_past_the_connection_limit_and_clients_are_not() {
    let mut herd = Herd::chain(&["Campbell", "Bona"]);
    herd.line("limit connections 2");
    herd.start("Campbell");
    // The harness's check that the port is open was connection 1; it must be gone first.
    herd.wait_log_count("Campbell", "close conn=1 ", 1);
    let mut idle: Vec<_> = (0..2).map(|_| herd.client("Campbell")).collect();
    for (i, client) in idle.iter_mut().enumerate() {
        // Each is accepted and served: the limit is not reached before them.
        let reply = client.iamat(&format!("idle{i}"), "+1+1", &time_from_now(-1));
        assert!(reply.starts_with("AT Campbell "), "{reply:?}");
    }
    let mut extra = herd.client("Campbell");
    extra.send("IAMAT extra +1+1 1");
    extra.expect_eof();
    herd.wait_log_count(
        "Campbell",
        "limit connections: conn=4 is past the limit and not a neighbour, closing",
        1,
    );
    // Bona's link arrives while Campbell is full: it is admitted.
    herd.start("Bona");
    herd.wait_log_count("Campbell", "is Bona", 1);
    herd.wait_link_syncs("Bona", "Campbell", 1);
    drop(idle);
}

/// A healed partition is back within about half a second, however long the cut lasted: a link
/// lost after it connected (the network cut it, not the neighbour) retries at most every
/// 500 ms, while a neighbour that is down is retried with the full backoff.
#[test]
fn a_healed_partition_relinks_within_a_second_even_after_a_long_cut() {
    let mut herd = Herd::chain(&["Xu", "Yew"]);
    // Without the cap, ten failed retries would take over 25 s, the last ones 10 s apart.
    herd.line("peer backoff-max-ms 10000");
    let to_yew = Relay::start(herd.port("Yew"));
    let to_xu = Relay::start(herd.port("Xu"));
    herd.route("Xu", "Yew", to_yew.port);
    herd.route("Yew", "Xu", to_xu.port);
    herd.start_all();
    herd.wait_all_linked();
    to_yew.cut();
    to_xu.cut();
    // Let the retries fail through the cut a good number of times.
    wait_until(
        "ten retries each during the cut",
        Duration::from_secs(10),
        || both_dropped(&to_yew, &to_xu, 10),
    );
    let syncs = [herd.link_syncs("Xu", "Yew"), herd.link_syncs("Yew", "Xu")];
    to_yew.restore();
    to_xu.restore();
    let healed = std::time::Instant::now();
    herd.wait_log_count_for(
        "Xu",
        "link sync Yew: sent ",
        syncs[0] + 1,
        Duration::from_secs(2),
    );
    herd.wait_log_count_for(
        "Yew",
        "link sync Xu: sent ",
        syncs[1] + 1,
        Duration::from_secs(2),
    );
    assert!(
        healed.elapsed() < Duration::from_millis(1500),
        "relinked {:?} after the heal",
        healed.elapsed()
    );
}
