//! Flooding in a healthy herd (SPEC section 3): the five servers and six links of SPEC section
//! 4, each started from a generated config. Every update reaches every server with the AT line
//! its taking server made, only newer updates travel, and each update crosses each direction
//! of each link at most once (no loops, no storms), with only AT lines on the links.

use herd_test_support::{
    client::time_from_now,
    cluster::Herd,
    harness::{traffic, SPEC_SERVERS},
};

/// (client id, AT line) pairs, as the convergence waits take them.
fn record(id: &str, line: &str) -> (String, String) {
    (id.to_string(), line.to_string())
}

fn others(server: &str) -> Vec<&'static str> {
    SPEC_SERVERS
        .iter()
        .copied()
        .filter(|s| *s != server)
        .collect()
}

#[test]
fn an_iamat_at_each_server_reaches_every_other_server_with_its_original_at_line() {
    let mut herd = Herd::spec();
    herd.start_all();
    herd.wait_all_linked();

    let mut expected = Vec::new();
    for (i, server) in SPEC_SERVERS.iter().enumerate() {
        let id = format!("flood-{server}.example");
        let location = format!("+{}.25-{}.5", 10 + i, 100 + i);
        let line = herd.iamat(server, &id, &location, &time_from_now(-(i as i64) - 1));
        // The line every other server shows is this one: the taking server's name and time
        // difference, unchanged by the trip.
        herd.wait_converged(&others(server), &[record(&id, &line)]);
        expected.push(record(&id, &line));
    }
    herd.wait_converged(&SPEC_SERVERS, &expected);
}

#[test]
fn a_moving_client_is_seen_at_its_newest_place_everywhere_and_stale_updates_stay_put() {
    let mut herd = Herd::spec();
    herd.start_all();
    herd.wait_all_linked();

    let id = "wanderer.example";
    let mut newest = String::new();
    for (i, server) in SPEC_SERVERS.iter().enumerate() {
        // Each move is newer than the last: every server must switch to it.
        let time = time_from_now(i as i64 - 10);
        let location = format!("+{}.5+{}.5", 20 + i, 30 + i);
        newest = herd.iamat(server, id, &location, &time);
        herd.wait_converged(&SPEC_SERVERS, &[record(id, &newest)]);
    }

    // An older report at Clark is answered but changes nothing anywhere and is not flooded;
    // a repeat of the newest IAMAT at the server that took it is not newer either.
    let stale = herd.iamat("Clark", id, "-45.5+170.5", &time_from_now(-60));
    let newest_fields: Vec<&str> = newest.split(' ').collect();
    let repeat = herd.iamat(newest_fields[1], id, newest_fields[4], newest_fields[5]);
    assert_ne!(
        repeat, newest,
        "a repeat is taken later: a larger time difference"
    );
    for server in SPEC_SERVERS {
        herd.sync_log(server);
        let (sent, _) = link_records(&herd, server);
        let sent_stale = sent.iter().filter(|r| r.line.ends_with(&stale)).count();
        let sent_repeat = sent.iter().filter(|r| r.line.ends_with(&repeat)).count();
        assert_eq!(sent_stale, 0, "{server} flooded the stale update {stale:?}");
        assert_eq!(sent_repeat, 0, "{server} flooded the repeat {repeat:?}");
    }
    herd.wait_converged(&SPEC_SERVERS, &[record(id, &newest)]);
}

/// One `send link=NAME LINE` or `recv conn=ID peer=NAME LINE` record of a server's log.
struct LinkRecord {
    server: String,
    neighbour: String,
    line: String,
}

/// The records of what `server` sent on its links and received from its neighbours, in log
/// order.
fn link_records(herd: &Herd, server: &str) -> (Vec<LinkRecord>, Vec<LinkRecord>) {
    let log = herd.log(server);
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for record in log.lines().filter_map(traffic) {
        let Some(neighbour) = record.peer else {
            continue; // a client's line, or a reply to one
        };
        let link = LinkRecord {
            server: server.to_string(),
            neighbour: neighbour.to_string(),
            line: record.line.to_string(),
        };
        // Only our link's sends and a neighbour's link's lines: not the answers to hellos and
        // pings going the other way.
        match (record.received, record.on_link) {
            (true, false) => received.push(link),
            (false, true) => sent.push(link),
            _ => {}
        }
    }
    (sent, received)
}

#[test]
fn each_update_crosses_each_link_direction_at_most_once() {
    const UPDATES: usize = 20;
    let mut herd = Herd::spec();
    herd.start_all();
    herd.wait_all_linked();
    // Links that were refused while the herd started are fine; none may drop from here on.
    let link_events = |herd: &Herd| -> Vec<(usize, usize)> {
        SPEC_SERVERS
            .iter()
            .map(|s| {
                (
                    herd.count_in_log(s, "link up "),
                    herd.count_in_log(s, "link down "),
                )
            })
            .collect()
    };
    let links_before = link_events(&herd);

    // K updates spread over the servers, sent as fast as the servers answer.
    let mut clients: Vec<_> = SPEC_SERVERS.iter().map(|s| herd.client(s)).collect();
    let mut updates = Vec::new(); // (taking server, id, line)
    for i in 0..UPDATES {
        let server = SPEC_SERVERS[i % SPEC_SERVERS.len()];
        let id = format!("storm-{i:02}.example");
        let location = format!("+{}.0-{}.0", i, 2 * i);
        let time = time_from_now(-1);
        let line = clients[i % SPEC_SERVERS.len()].iamat(&id, &location, &time);
        assert!(
            line.starts_with(&format!("AT {server} ")),
            "IAMAT at {server}: {line:?}"
        );
        updates.push((server, id, line));
    }
    let expected: Vec<(String, String)> = updates
        .iter()
        .map(|(_, id, line)| record(id, line))
        .collect();
    herd.wait_converged(&SPEC_SERVERS, &expected);
    for server in SPEC_SERVERS {
        herd.sync_log(server);
    }

    // No link flapped, so no resync sent any of these updates again.
    assert_eq!(
        link_events(&herd),
        links_before,
        "(link up, link down) counts of {SPEC_SERVERS:?}: the links stayed up"
    );

    let mut sent = Vec::new();
    let mut received = Vec::new();
    for server in SPEC_SERVERS {
        let (s, r) = link_records(&herd, server);
        sent.extend(s);
        received.extend(r);
    }
    // Only locations travel (never Places results): links carry AT lines and the link's own
    // control lines (the handshake, marks, digest checks and keepalive pings) only.
    for record in &sent {
        assert!(
            record.line.starts_with("AT ")
                || record.line.starts_with("HERD-HELLO ")
                || record.line == "HERD-PROOF <redacted>"
                || record.line == "HERD-PING"
                || record.line.starts_with("HERD-MARK ")
                || record.line.starts_with("HERD-DIGEST "),
            "{} sent {:?} on its link to {}",
            record.server,
            record.line,
            record.neighbour
        );
    }
    for record in &received {
        assert!(
            record.line.starts_with("AT ")
                || record.line == "HERD-PING"
                || record.line.starts_with("HERD-MARK ")
                || record.line.starts_with("HERD-DIGEST "),
            "{} received {:?} from {}",
            record.server,
            record.line,
            record.neighbour
        );
    }

    for (taker, id, line) in &updates {
        let copies: Vec<&LinkRecord> = sent.iter().filter(|r| &r.line == line).collect();
        for (a, b) in herd.links() {
            for (from, to) in [(a, b), (b, a)] {
                let n = copies
                    .iter()
                    .filter(|r| &r.server == from && &r.neighbour == to)
                    .count();
                assert!(
                    n <= 1,
                    "{id} crossed {from} -> {to} {n} times (at most once): {line:?}"
                );
            }
        }
        assert!(
            copies.len() >= SPEC_SERVERS.len() - 1,
            "{id} needs at least one send per other server, saw {}",
            copies.len()
        );
        for server in others(taker) {
            assert!(
                received
                    .iter()
                    .any(|r| r.server == server && &r.line == line),
                "{server} never received {id} from a neighbour: {line:?}"
            );
        }
        // README "Flooding": a server that stores an update from a neighbour queues it on
        // every link but the one toward that neighbour (the per-direction count above allows
        // that one echo).
        for server in others(taker) {
            let Some(from) = received
                .iter()
                .find(|r| r.server == server && &r.line == line)
            else {
                continue; // checked above
            };
            assert!(
                !copies
                    .iter()
                    .any(|r| r.server == server && r.neighbour == from.neighbour),
                "{server} sent {id} back to {}, which it first had it from: {line:?}",
                from.neighbour
            );
        }
    }
}
