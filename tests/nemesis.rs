//! A nemesis run with a checker (Jepsen's shape; the run itself is
//! `herd_test_support::nemesis`): clients send IAMATs for a few hundred client ids to the five
//! servers of the shipped herd while a seeded nemesis kills (-9) and stops (SIGTERM) servers
//! and restarts them from their stores, cuts, blackholes and slows links (through a WAN relay
//! per direction), and removes a link by SIGHUP and restores it by another. At the end
//! everything is healed and restarted, and every server must hold, for every client, the winner
//! of every acknowledged update by the protocol's rule (none lost, none disagreeing), and no
//! server may have died but by the nemesis.
//!
//! `cargo test` runs a bounded version: 40 s of faults (at least 50 events), about a minute in
//! all. The seed comes from the clock unless `NEMESIS_SEED` gives one; a failure prints it, the
//! faults, what diverged and each concerned client's story, and keeps the full history and the
//! servers' logs in a directory it names. To run a seed again:
//!
//! ```text
//! NEMESIS_SEED=123456 cargo test --test nemesis -- --nocapture
//! ```
//!
//! The long run (half an hour of faults, for a bench run; the release build is quicker):
//!
//! ```text
//! NEMESIS_SECONDS=1800 cargo test --release --test nemesis -- --nocapture
//! ```
//!
//! The other tests here check the checker: the rule it judges by, and that it sees a lost
//! update, a disagreement and a record no IAMAT made.

use std::cmp::Ordering;
use std::io::Write;
use std::time::Duration;

use herd_test_support::nemesis::{self, At, Entry, Event, Options, Update};

/// Seconds of faults in `cargo test`, and the fewest events they must hold.
const CI_SECONDS: u64 = 40;
const CI_MIN_EVENTS: usize = 50;

#[test]
fn the_herd_comes_through_a_seeded_nemesis_with_every_acknowledged_update() {
    let options = Options::from_env(CI_SECONDS, CI_MIN_EVENTS).unwrap_or_else(|e| panic!("{e}"));
    // Said at once (not held back by the test harness), so a run that hangs still names its seed.
    let _ = std::io::stderr().write_all(
        format!(
            "nemesis: seed {} ({}={}), {:?} of faults\n",
            options.seed,
            nemesis::SEED_ENV,
            options.seed,
            options.duration
        )
        .as_bytes(),
    );
    let report = nemesis::run(&options).unwrap_or_else(|failure| panic!("{failure}"));
    let _ = std::io::stderr().write_all(format!("{report}\n").as_bytes());
    assert!(
        report.events.total() >= CI_MIN_EVENTS,
        "only {} (seed {})",
        report.events,
        report.seed
    );
    assert!(
        report.acked > 0,
        "no update was acknowledged (seed {})",
        report.seed
    );
}

fn at(line: &str) -> At {
    At::parse(line).unwrap_or_else(|| panic!("not an AT line: {line:?}"))
}

#[test]
fn the_rule_is_newest_time_then_smaller_difference_then_server_name_then_line() {
    let newer = at("AT Bona +9.000000000 c +1+1 1700000001.5");
    let older = at("AT Bailey +0.000000001 c +1+1 1700000001.4");
    assert_eq!(newer.precedence(&older), Ordering::Greater);
    assert_eq!(older.precedence(&newer), Ordering::Less);

    // Equal times (written differently): the smaller time difference, signed.
    let small = at("AT Jaquez -0.500000000 c +1+1 1700000001.5");
    let large = at("AT Bailey +0.100000000 c +2+2 1700000001.500");
    assert_eq!(small.precedence(&large), Ordering::Greater);

    // Equal differences too: the server name that sorts first.
    let bailey = at("AT Bailey +0.1 c +2+2 1700000001.5");
    let bona = at("AT Bona +0.1 c +1+1 1700000001.5");
    assert_eq!(bailey.precedence(&bona), Ordering::Greater);

    // Same server as well: the smaller line.
    let first = at("AT Bona +0.1 c +1+1 1700000001.5");
    let second = at("AT Bona +0.1 c +2+2 1700000001.5");
    assert_eq!(first.precedence(&second), Ordering::Greater);
    assert_eq!(first.precedence(&first.clone()), Ordering::Equal);
}

fn ack(line: &str) -> Entry {
    let at = at(line);
    Entry {
        at: Duration::ZERO,
        event: Event::Ack {
            worker: 0,
            server: at.server.clone(),
            at,
        },
    }
}

fn unknown(server: &str, client: &str, location: &str, time: &str) -> Entry {
    Entry {
        at: Duration::ZERO,
        event: Event::Unknown {
            worker: 0,
            server: server.to_string(),
            update: Update {
                client: client.to_string(),
                location: location.to_string(),
                time: time.to_string(),
            },
            why: "read: connection reset".to_string(),
        },
    }
}

fn names() -> Vec<String> {
    vec!["Bailey".to_string(), "Bona".to_string()]
}

fn held(lines: &[Option<&str>]) -> Vec<Vec<Option<String>>> {
    lines
        .iter()
        .map(|line| vec![line.map(str::to_string)])
        .collect()
}

#[test]
fn the_checker_wants_the_winner_of_the_acknowledged_updates_everywhere() {
    let history = [
        ack("AT Bailey +0.000100000 c +1+1 1700000001.000000000"),
        ack("AT Bona +0.000200000 c +2+2 1700000002.000000000"),
        // An equal-time pair: Bailey's difference is smaller.
        ack("AT Bona +0.000300000 c +3+3 1700000003.000000000"),
        ack("AT Bailey +0.000200000 c +4+4 1700000003.000000000"),
    ];
    let clients = ["c".to_string()];
    let winner = "AT Bailey +0.000200000 c +4+4 1700000003.000000000";
    let verdict = nemesis::check(&history, &names(), &clients, &held(&[Some(winner); 2]));
    assert!(verdict.is_clean(), "{verdict}");

    // The loser of the pair on one server: lost there, and the servers disagree.
    let loser = "AT Bona +0.000300000 c +3+3 1700000003.000000000";
    let verdict = nemesis::check(
        &history,
        &names(),
        &clients,
        &held(&[Some(winner), Some(loser)]),
    );
    assert_eq!(
        (verdict.lost.len(), verdict.disagreeing.len()),
        (1, 1),
        "{verdict}"
    );
    assert!(verdict.lost[0].contains("Bona holds"), "{verdict}");

    // Nothing at all on both: they agree, and both lost it.
    let verdict = nemesis::check(&history, &names(), &clients, &held(&[None, None]));
    assert_eq!(
        (verdict.lost.len(), verdict.disagreeing.len()),
        (1, 0),
        "{verdict}"
    );
    assert_eq!(verdict.clients, clients);
}

#[test]
fn the_checker_takes_a_newer_unanswered_update_but_no_record_that_nobody_sent() {
    let history = [
        ack("AT Bailey +0.000100000 c +1+1 1700000001.000000000"),
        unknown("Bona", "c", "+5+5", "1700000005.000000000"),
    ];
    let clients = ["c".to_string()];
    // The unanswered update was taken: right, if everywhere.
    let taken = "AT Bona +0.000900000 c +5+5 1700000005.000000000";
    let verdict = nemesis::check(&history, &names(), &clients, &held(&[Some(taken); 2]));
    assert!(verdict.is_clean(), "{verdict}");
    // ... or not taken: right too.
    let acked = "AT Bailey +0.000100000 c +1+1 1700000001.000000000";
    let verdict = nemesis::check(&history, &names(), &clients, &held(&[Some(acked); 2]));
    assert!(verdict.is_clean(), "{verdict}");

    // A record no IAMAT made (another location, another server): unexplained.
    for made_up in [
        "AT Bona +0.000900000 c +6+6 1700000005.000000000",
        "AT Bailey +0.000900000 c +5+5 1700000005.000000000",
    ] {
        let verdict = nemesis::check(&history, &names(), &clients, &held(&[Some(made_up); 2]));
        assert_eq!(verdict.unexplained.len(), 1, "{made_up}: {verdict}");
    }
}
