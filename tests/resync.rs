//! Resync by difference (docs/protocol.md): a server that comes back after missing U updates is
//! sent on the order of U records, not the table; a wiped store gets everything; a compacted
//! store resumes like any other; and a divergence nobody sent (a record cut out of a store
//! file) is found by the periodic digest check and repaired.
//!
//! Real processes: the five servers and six links of the shipped topology, each with a store.
//! What crossed the links is read from the senders' `herd_link_records_sent_total`; when a
//! server holds a neighbour's history from its `herd_neighbour_version_held`.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use herd_test_support::client::now;
use herd_test_support::cluster::Herd;
use herd_test_support::harness::{wait_until, TempDir};
use herd_test_support::metrics::{metrics_lines, sample, scrape};
use herd_test_support::wan::{LinkShape, Relay};

/// Clients every server knows before the fault.
const CLIENTS: usize = 2_000;
/// Updates taken while a server is away.
const MISSED: usize = 100;
const WAIT: Duration = Duration::from_secs(15);

struct Fixture {
    herd: Herd,
    metrics: HashMap<String, SocketAddr>,
    store: TempDir,
    /// The client time of the next update (each newer than the last).
    clock: (i64, u32),
}

impl Fixture {
    /// The shipped topology with a store, `peer check-ms` as given, metrics on every server;
    /// started and linked.
    fn start(label: &str, extra: &[&str]) -> Fixture {
        Fixture::start_herd(Herd::spec(), label, extra)
    }

    fn start_herd(mut herd: Herd, label: &str, extra: &[&str]) -> Fixture {
        let store = TempDir::new(label).expect("a temp dir");
        herd.line(&format!("store dir {}", store.path().display()));
        herd.line("log lines off");
        for line in extra {
            herd.line(line);
        }
        let names = herd.names();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (lines, addrs) = metrics_lines(&name_refs);
        for line in &lines {
            herd.line(line);
        }
        herd.start_all();
        herd.wait_all_linked();
        let metrics = names.iter().cloned().zip(addrs).collect();
        Fixture {
            herd,
            metrics,
            store,
            clock: now(),
        }
    }

    fn page(&self, server: &str) -> String {
        scrape(self.metrics[server]).unwrap_or_else(|e| panic!("{server} metrics: {e}"))
    }

    fn value(&self, server: &str, name: &str, labels: &str) -> f64 {
        sample(&self.page(server), name, labels).unwrap_or(0.0)
    }

    /// The neighbours of `server` in the topology.
    fn neighbours(&self, server: &str) -> Vec<String> {
        self.herd
            .links()
            .iter()
            .filter_map(|(a, b)| match (a == server, b == server) {
                (true, _) => Some(b.clone()),
                (_, true) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    /// Records `server`'s neighbours have sent it, in all, since they started.
    fn records_sent_to(&self, server: &str) -> f64 {
        self.sum_to(server, "herd_link_records_sent_total")
    }

    /// Full copies `server`'s neighbours have sent it since they started.
    fn full_copies_to(&self, server: &str) -> f64 {
        self.sum_to(server, "herd_link_full_copies_total")
    }

    /// A link counter summed over the links toward `server`.
    fn sum_to(&self, server: &str, counter: &str) -> f64 {
        let label = format!("link=\"{server}\"");
        self.neighbours(server)
            .iter()
            .map(|n| self.value(n, counter, &label))
            .sum()
    }

    /// Records `server` has sent its neighbours since it started.
    fn records_sent_by(&self, server: &str) -> f64 {
        self.neighbours(server)
            .iter()
            .map(|n| {
                let label = format!("link=\"{n}\"");
                self.value(server, "herd_link_records_sent_total", &label)
            })
            .sum()
    }

    /// Sends an IAMAT for each client, pipelined on one connection, each at a newer time;
    /// returns the replies (the AT lines every server must come to hold).
    fn iamat(&mut self, server: &str, clients: impl Iterator<Item = String>) -> Vec<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.herd.port(server))).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut batch = String::new();
        let mut count = 0;
        for client in clients {
            self.clock.1 += 1;
            if self.clock.1 == 1_000_000_000 {
                self.clock = (self.clock.0 + 1, 0);
            }
            let (secs, nanos) = self.clock;
            batch += &format!("IAMAT {client} +34.068930-118.445127 {secs}.{nanos:09}\n");
            count += 1;
        }
        stream.write_all(batch.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        (0..count)
            .map(|_| {
                let mut line = String::new();
                reader.read_line(&mut line).expect("an AT reply");
                assert!(line.starts_with("AT "), "{line:?}");
                line.trim_end().to_string()
            })
            .collect()
    }

    /// Waits until `server` knows `count` clients.
    #[track_caller]
    fn wait_clients(&self, server: &str, count: usize) {
        wait_until(
            &format!("{server} to know {count} clients"),
            WAIT,
            || match self.value(server, "herd_clients_known", "") as usize {
                n if n == count => Ok(()),
                n => Err(format!("{n} known")),
            },
        );
    }

    /// Waits until `server` holds every neighbour's history up to that neighbour's newest
    /// version (and so has it in its store).
    #[track_caller]
    fn wait_holds_neighbours(&self, server: &str) {
        wait_until(
            &format!("{server} to hold its neighbours' histories"),
            WAIT,
            || {
                for n in self.neighbours(server) {
                    let newest = self.value(&n, "herd_version", "");
                    let held = self.value(
                        server,
                        "herd_neighbour_version_held",
                        &format!("neighbour=\"{n}\""),
                    );
                    if held != newest {
                        return Err(format!("{n}: holds {held} of {newest}"));
                    }
                }
                Ok(())
            },
        );
    }

    /// Loads `CLIENTS` clients at Campbell and waits until every server has them and holds
    /// every neighbour's history.
    fn load(&mut self) {
        self.load_at("Campbell");
    }

    fn load_at(&mut self, server: &str) {
        self.iamat(server, (0..CLIENTS).map(|n| format!("client{n}")));
        for name in self.herd.names() {
            self.wait_clients(&name, CLIENTS);
        }
        for name in self.herd.names() {
            self.wait_holds_neighbours(&name);
        }
    }

    fn store_file(&self, server: &str) -> PathBuf {
        self.store.path().join(format!("{server}.store"))
    }

    /// Restarts `server` and waits until it has every update and its neighbours' links to it
    /// have finished their second sync.
    fn restart_and_wait(&mut self, server: &str, expected: &[String], clients: usize) {
        self.herd.start(server);
        for n in self.neighbours(server) {
            self.herd.wait_link_syncs(&n, server, 2);
        }
        self.wait_clients(server, clients);
        let wanted: Vec<(String, String)> = expected
            .iter()
            .map(|line| (line.split(' ').nth(3).unwrap().to_string(), line.clone()))
            .collect();
        self.herd.wait_knows(server, &wanted);
    }
}

/// Updates of `MISSED / 2` known clients and `MISSED / 2` new ones.
fn missed_clients() -> impl Iterator<Item = String> {
    (0..MISSED / 2)
        .map(|n| format!("client{}", n * 7))
        .chain((0..MISSED / 2).map(|n| format!("new{n}")))
}

#[test]
fn a_restarted_server_is_sent_what_it_missed_not_the_table() {
    let mut f = Fixture::start("resync-restart", &[]);
    f.load();
    f.herd.kill("Bona");
    let before = f.records_sent_to("Bona");
    let updates = f.iamat("Campbell", missed_clients());
    f.restart_and_wait("Bona", &updates, CLIENTS + MISSED / 2);
    let sent = f.records_sent_to("Bona") - before;
    let links = f.neighbours("Bona").len();
    println!(
        "Bona missed {MISSED} updates of {CLIENTS} clients; its {links} neighbours sent it \
         {sent} records"
    );
    assert!(
        sent <= (links * MISSED) as f64,
        "{sent} records for {MISSED} missed over {links} links"
    );
    // And Bona, which took nothing while away, sent its neighbours little: at most the
    // floods of what it was sent.
    let from_bona = f.records_sent_by("Bona");
    assert!(
        from_bona <= (links * MISSED) as f64,
        "Bona sent {from_bona} records after its restart"
    );
    assert_eq!(
        f.full_copies_to("Bona"),
        3.0,
        "only the first link-up of each was a full copy"
    );
}

#[test]
fn a_compacted_store_resumes_by_difference_and_a_wiped_one_gets_everything() {
    // Compactions as soon as a store is 4 KiB and twice its live records.
    let mut f = Fixture::start("resync-compact", &["store compact-bytes 4096"]);
    f.load();
    // Every client again: each store is past twice its live records, and compacts.
    f.iamat("Campbell", (0..CLIENTS).map(|n| format!("client{n}")));
    for name in f.herd.names() {
        f.herd.wait_log_count(&name, "compacted to", 1);
    }
    for name in f.herd.names() {
        f.wait_holds_neighbours(&name);
    }
    let text = fs::read_to_string(f.store_file("Bona")).unwrap();
    assert!(
        text.starts_with("HERD-EPOCH "),
        "a compacted store: {}",
        &text[..80]
    );

    f.herd.kill("Bona");
    let before = f.records_sent_to("Bona");
    let updates = f.iamat("Campbell", missed_clients());
    f.restart_and_wait("Bona", &updates, CLIENTS + MISSED / 2);
    let sent = f.records_sent_to("Bona") - before;
    assert!(
        sent <= (3 * MISSED) as f64,
        "{sent} records after a compaction, for {MISSED} missed"
    );

    // Wiped: Bona cannot place anyone's history, nor they its: everything, once per link.
    f.herd.kill("Bona");
    fs::remove_file(f.store_file("Bona")).unwrap();
    let before = f.records_sent_to("Bona");
    let full_before = f.full_copies_to("Bona");
    f.restart_and_wait("Bona", &updates, CLIENTS + MISSED / 2);
    let sent = f.records_sent_to("Bona") - before;
    let known = (CLIENTS + MISSED / 2) as f64;
    assert!(
        sent >= known,
        "a wiped store is sent the table: {sent} records for {known} clients"
    );
    assert_eq!(
        f.full_copies_to("Bona") - full_before,
        3.0,
        "each neighbour sent a full copy"
    );
}

#[test]
fn a_record_missing_from_a_store_is_repaired_by_the_periodic_check() {
    const CHECK_MS: u64 = 300;
    let mut f = Fixture::start("resync-repair", &[&format!("peer check-ms {CHECK_MS}")]);
    f.load();
    f.herd.kill("Bona");
    // Cut one client's record out of Bona's store: nobody will send it (its neighbours
    // resume after what Bona held), so only the check can find it.
    let path = f.store_file("Bona");
    let text = fs::read_to_string(&path).unwrap();
    let lost = "client1234";
    let needle = format!(" {lost} ");
    let kept: String = text
        .lines()
        .filter(|line| !line.contains(&needle))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(kept.len() < text.len(), "{lost} was in Bona's store");
    fs::write(&path, kept).unwrap();
    let line = f.herd.known("Campbell", lost).expect("Campbell knows it");

    f.herd.start("Bona");
    f.herd.wait_knows("Bona", &[(lost.to_string(), line)]);
    assert!(
        f.sum_to("Bona", "herd_link_repairs_total") >= 1.0,
        "a repair was counted"
    );
    wait_until("a neighbour to log the repair", WAIT, || {
        let needle = "link check Bona: 1 of 256 buckets differ";
        match f
            .neighbours("Bona")
            .iter()
            .any(|n| f.herd.count_in_log(n, needle) > 0)
        {
            true => Ok(()),
            false => Err(format!("no {needle:?} in their logs")),
        }
    });
}

#[test]
fn a_healed_partition_that_took_updates_on_both_sides_sends_only_those() {
    // Xu and Yew reach each other only through relays, which the test cuts and heals.
    let herd = Herd::chain(&["Xu", "Yew"]);
    let relay_to = |name: &str| {
        let target: SocketAddr = ([127, 0, 0, 1], herd.port(name)).into();
        Relay::start(([127, 0, 0, 1], 0).into(), target, LinkShape::delay_ms(0)).unwrap()
    };
    let (to_yew, to_xu) = (relay_to("Yew"), relay_to("Xu"));
    let mut herd = herd;
    herd.route("Xu", "Yew", to_yew.port());
    herd.route("Yew", "Xu", to_xu.port());
    let mut f = Fixture::start_herd(herd, "resync-partition", &[]);
    f.load_at("Xu");
    let sent = |f: &Fixture, from: &str, to: &str| {
        f.value(
            from,
            "herd_link_records_sent_total",
            &format!("link=\"{to}\""),
        )
    };
    let before = [sent(&f, "Xu", "Yew"), sent(&f, "Yew", "Xu")];
    to_yew.cut();
    to_xu.cut();
    f.herd.wait_log_count("Xu", "link down Yew", 1);
    f.herd.wait_log_count("Yew", "link down Xu", 1);
    // Each side takes updates the other does not see: some of the same clients, some new.
    let on_xu = f.iamat("Xu", (0..MISSED).map(|n| format!("client{}", n * 3)));
    let on_yew = f.iamat("Yew", (0..MISSED).map(|n| format!("yew{n}")));
    to_yew.heal();
    to_xu.heal();
    let all: Vec<String> = on_xu.iter().chain(&on_yew).cloned().collect();
    for name in ["Xu", "Yew"] {
        f.wait_clients(name, CLIENTS + MISSED);
        let wanted: Vec<(String, String)> = all
            .iter()
            .map(|line| (line.split(' ').nth(3).unwrap().to_string(), line.clone()))
            .collect();
        f.herd.wait_knows(name, &wanted);
    }
    let after = [sent(&f, "Xu", "Yew"), sent(&f, "Yew", "Xu")];
    println!(
        "after the heal: Xu sent {} records, Yew {}",
        after[0] - before[0],
        after[1] - before[1]
    );
    assert!(
        after[0] - before[0] <= MISSED as f64,
        "Xu sent {}",
        after[0] - before[0]
    );
    assert!(
        after[1] - before[1] <= MISSED as f64,
        "Yew sent {}",
        after[1] - before[1]
    );
}
