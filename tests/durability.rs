//! The store (SPEC section 7, README "The store"): every update a server acknowledged, or took
//! from a neighbour, is in `DIR/NAME.store` before the reply or the flood leaves, so it outlives
//! `kill -9` of every server; a restarted server answers for it at once, before any link is up;
//! a torn or corrupt tail is skipped and named by file and line; one process per store (a
//! lock); compaction keeps the file near its live records and a crash at any moment of it
//! loses nothing; a full disk never stops serving and what was taken meanwhile is written back
//! once the disk has room again.
//!
//! Every kill here is SIGKILL (`Herd::kill`): no flush, no goodbye. A server's records are read
//! back the way a client sees them, from the AT line that starts a WHATSAT reply (then an
//! error JSON and a blank line: the test herd's Places URL is a closed port, and
//! [`CHEAP_WHATSAT`] answers most lookups at once with a 429).

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use herd_test_support::tmpfs::Tmpfs;
use herd_test_support::{
    client::{now, parse_nanos, Client},
    cluster::Herd,
    harness::{self, free_ports, herd_bin, log_event, refused_places_url, HerdConfig, TempDir},
    harness::{SPEC_LINKS, SPEC_SERVERS},
    run::run_herd,
};

/// The server of the one-server tests.
const ALONE: &str = "Campbell";

/// How long a herd gets to agree after its links come back.
const CONVERGE: Duration = Duration::from_secs(20);

/// One IAMAT a test sends.
#[derive(Clone, Debug)]
struct Update {
    id: String,
    location: String,
    time: String,
}

impl Update {
    /// Client `id` at a place picked by `step`, at `base` seconds plus `step` microseconds, so a
    /// larger step is a newer update.
    fn new(id: &str, base: i64, step: u64) -> Update {
        Update {
            id: id.to_string(),
            location: place(step),
            time: format!(
                "{}.{:06}000",
                base + (step / 1_000_000) as i64,
                step % 1_000_000
            ),
        }
    }

    fn command(&self) -> String {
        format!("IAMAT {} {} {}", self.id, self.location, self.time)
    }
}

/// A valid location that differs with `step`.
fn place(step: u64) -> String {
    format!(
        "+{}.{:06}-{}.{:06}",
        step % 89,
        step % 999_983,
        step % 179,
        (step / 7) % 999_983
    )
}

/// A time far enough in the past that every test's updates stay behind the server's clock.
fn base_secs() -> i64 {
    now().0 - 7200
}

/// The client time of an AT line (its last field), in nanoseconds.
fn time_of(at_line: &str) -> i128 {
    at_line
        .rsplit(' ')
        .next()
        .and_then(parse_nanos)
        .unwrap_or_else(|| panic!("no client time at the end of {at_line:?}"))
}

/// True if `reply` is `server`'s acknowledgement of `update`: `AT SERVER DIFF ID LOCATION TIME`.
fn acknowledges(reply: &str, server: &str, update: &Update) -> bool {
    let fields: Vec<&str> = reply.split(' ').collect();
    fields.len() == 6
        && fields[0] == "AT"
        && fields[1] == server
        && fields[3..] == [&*update.id, &*update.location, &*update.time]
}

/// Writes `text` (a command a line) to the server at `port` from a writer thread while `read`
/// takes the replies of its `count` commands in order (so a long pipeline cannot stall on
/// full socket buffers); returns what `read` made of each.
fn pipelined<T>(
    port: u16,
    text: String,
    count: usize,
    mut read: impl FnMut(&mut Client, usize) -> T,
) -> Vec<T> {
    if count == 0 {
        return Vec::new();
    }
    let mut client = Client::connect(port);
    let mut writer = client
        .stream()
        .try_clone()
        .expect("clone the client socket");
    let sender = thread::spawn(move || writer.write_all(text.as_bytes()));
    let replies = (0..count).map(|i| read(&mut client, i)).collect();
    sender
        .join()
        .expect("the pipeline's writer")
        .expect("write the pipeline");
    replies
}

/// Sends every update to `server` (at `port`) on one connection, pipelined, and returns the
/// replies in order, each checked to acknowledge its update.
fn iamat_all(port: u16, server: &str, updates: &[Update]) -> Vec<String> {
    let text: String = updates.iter().map(|u| u.command() + "\n").collect();
    pipelined(port, text, updates.len(), |client, i| {
        let reply = client.read_line();
        assert!(
            acknowledges(&reply, server, &updates[i]),
            "{} at {server} answered {reply:?}",
            updates[i].command()
        );
        reply
    })
}

/// What the server at `port` holds for each of `ids`: the AT line its WHATSAT reply starts
/// with, or None for `? ` (unknown). Pipelined on one connection.
fn held(port: u16, ids: &[String]) -> Vec<Option<String>> {
    let text: String = ids.iter().map(|id| format!("WHATSAT {id} 1 1\n")).collect();
    pipelined(port, text, ids.len(), |client, i| {
        let id = &ids[i];
        let first = client.read_line();
        if first.starts_with("? ") {
            assert_eq!(first, format!("? WHATSAT {id} 1 1"), "an unknown client");
            return None;
        }
        let fields: Vec<&str> = first.split(' ').collect();
        assert!(
            fields.len() == 6 && fields[0] == "AT" && fields[3] == id,
            "WHATSAT {id} 1 1 answered {first:?}"
        );
        let rest = client.read_until_blank_line();
        assert!(
            rest.ends_with("}\n\n"),
            "WHATSAT reply ends with JSON and a blank line: {first:?} {rest:?}"
        );
        Some(first)
    })
}

/// Polls `server` until it holds exactly `want[i]` for each `ids[i]` (`timeout` zero: looks
/// once); panics after `timeout` with the first differences.
#[track_caller]
fn wait_holding(herd: &Herd, server: &str, ids: &[String], want: &[String], timeout: Duration) {
    let what = format!("{server} to hold the {} records", ids.len());
    harness::wait_until(&what, timeout, || {
        let now_held = held(herd.port(server), ids);
        let wrong: Vec<String> = ids
            .iter()
            .zip(want)
            .zip(&now_held)
            .filter(|((_, want), has)| has.as_deref() != Some(want.as_str()))
            .map(|((id, want), has)| format!("  {id}: want {want:?}\n    has {has:?}"))
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{server} does not hold {} of {} records; the first:\n{}",
            wrong.len(),
            ids.len(),
            wrong[..wrong.len().min(5)].join("\n")
        ))
    });
}

/// What a server said about its store at start-up:
/// `store PATH: N clients from L lines (S skipped) in T ms, fsync POLICY`.
#[derive(Debug, PartialEq)]
struct StoreStart {
    path: String,
    clients: u64,
    lines: u64,
    skipped: u64,
    fsync: String,
}

/// Every start-up line of `log`, in order (a log is appended to across restarts).
fn store_starts(log: &str) -> Vec<StoreStart> {
    log.lines()
        .filter_map(|line| {
            // (From the last `] store `: the log of a killed process may end inside a line,
            // and the next process's first line then follows on the same line.)
            let rest = &line[line.rfind("] store ")? + "] store ".len()..];
            let (path, tail) = rest.split_once(": ")?;
            let words: Vec<&str> = tail.split(' ').collect();
            match words[..] {
                [clients, "clients", "from", lines, "lines", skipped, "skipped)", "in", _, "ms,", "fsync", fsync] => {
                    Some(StoreStart {
                        path: path.to_string(),
                        clients: clients.parse().ok()?,
                        lines: lines.parse().ok()?,
                        skipped: skipped.strip_prefix('(')?.parse().ok()?,
                        fsync: fsync.to_string(),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// Starts `name` (not running) and returns what it said about its store at start-up. Counted
/// from the log as it was before the start, which is final: a SIGKILLed process's unflushed
/// last lines never reach it.
#[track_caller]
fn start_reading_store(herd: &mut Herd, name: &str) -> StoreStart {
    let before = store_starts(&herd.log(name)).len();
    herd.start(name);
    let what = format!("{name} to log its store line at start-up");
    let mut starts = harness::wait_for(&what, harness::LOG_TIMEOUT, || {
        let starts = store_starts(&herd.log(name));
        (starts.len() > before).then_some(starts)
    });
    starts.swap_remove(before)
}

/// Lets thousands of WHATSATs cost no Places call: past one lookup a second each is answered
/// at once with the framed 429 error JSON, still after the AT line this file reads.
const CHEAP_WHATSAT: &str = "places max-per-second 1";

/// A one-server herd (`ALONE`) whose store is `dir` (an absolute path), with `lines` added.
fn alone(dir: &Path, lines: &[&str]) -> Herd {
    let mut herd = Herd::new(&[ALONE], &[]);
    herd.line(CHEAP_WHATSAT);
    herd.line(&format!("store dir {}", dir.display()));
    for line in lines {
        herd.line(line);
    }
    herd
}

fn store_file(dir: &Path) -> PathBuf {
    dir.join(format!("{ALONE}.store"))
}

fn compacting_file(dir: &Path) -> PathBuf {
    dir.join(format!("{ALONE}.store.compacting"))
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// For each acknowledged update (client index, AT line): the newest per client, by time.
fn newest_per_client(acked: &[(usize, String)], clients: usize) -> Vec<Option<String>> {
    let mut newest: Vec<Option<String>> = vec![None; clients];
    for (c, line) in acked {
        if newest[*c]
            .as_ref()
            .is_none_or(|n| time_of(n) < time_of(line))
        {
            newest[*c] = Some(line.clone());
        }
    }
    newest
}

/// The acknowledged updates that `held` (per client index) does not cover: the client's held
/// record is missing or older.
fn lost(acked: &[(usize, String)], held: &[Option<String>]) -> usize {
    acked
        .iter()
        .filter(|(c, line)| held[*c].as_ref().is_none_or(|h| time_of(h) < time_of(line)))
        .count()
}

/// Item 8: five servers, 10,000 acknowledged IAMATs for 1,000 clients over all five, SIGKILL
/// of all five, and every server, restarted before any link can be up, holds every record it
/// had: those it acknowledged itself and those it was seen to hold from its neighbours.
#[test]
fn kill_9_of_all_five_loses_no_acknowledged_update() {
    const CLIENTS: usize = 1000;
    const ROUNDS: usize = 10;
    let servers = SPEC_SERVERS;
    let mut herd = Herd::new(&servers, &SPEC_LINKS);
    herd.line("store dir data"); // relative to the servers' working directory, as shipped
    herd.line("log lines off");
    herd.line(CHEAP_WHATSAT);
    herd.start_all();
    herd.wait_all_linked();

    let ids: Vec<String> = (0..CLIENTS)
        .map(|c| format!("c{c:04}.durable.example"))
        .collect();
    let base = base_secs();
    // Per client, per round: (the server that acknowledged it, its AT reply).
    let mut acked: Vec<Vec<(usize, String)>> = vec![Vec::new(); CLIENTS];
    for round in 0..ROUNDS {
        // Round r: the r-th update of every client, newer than its last, at server (c + r) % 5,
        // all five servers taking theirs at once.
        let batches: Vec<Vec<usize>> = (0..servers.len())
            .map(|s| {
                (0..CLIENTS)
                    .filter(|c| (c + round) % servers.len() == s)
                    .collect()
            })
            .collect();
        let replies: Vec<Vec<String>> = thread::scope(|scope| {
            let workers: Vec<_> = batches
                .iter()
                .enumerate()
                .map(|(s, clients)| {
                    let updates: Vec<Update> = clients
                        .iter()
                        .map(|&c| Update::new(&ids[c], base, (round * CLIENTS + c) as u64))
                        .collect();
                    let port = herd.port(servers[s]);
                    scope.spawn(move || iamat_all(port, servers[s], &updates))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("an IAMAT sender"))
                .collect()
        });
        for (s, clients) in batches.iter().enumerate() {
            for (&c, reply) in clients.iter().zip(&replies[s]) {
                acked[c].push((s, reply.clone()));
            }
        }
        if round == ROUNDS - 2 {
            // Before the last round the herd is seen to agree: from here on every server
            // held every client's round-8 record, whoever acknowledged it.
            let want: Vec<String> = acked.iter().map(|a| a[round].1.clone()).collect();
            for server in servers {
                wait_holding(&herd, server, &ids, &want, CONVERGE);
            }
        }
    }
    // The last round's replies are in: kill -9 all five, one right after the other with
    // nothing between, floods of round 9 still on their way (so each server is sure to have
    // only the round-9 records it acknowledged itself).
    for server in servers {
        herd.kill(server);
    }

    // Honest "before its links come up": each server is started alone, the other four not
    // running, so no outbound link can connect (nothing listens at a neighbour's port) and no
    // inbound one can exist (no other server process is there); whatever it answers comes
    // from its own store. Then it is killed again and the next one is started alone.
    let held_alone: Vec<Vec<Option<String>>> = servers
        .iter()
        .map(|server| {
            let start = start_reading_store(&mut herd, server);
            let held_now = held(herd.port(server), &ids);
            assert_eq!(start.clients, CLIENTS as u64, "{server}: {start:?}");
            assert_eq!(start.fsync, "everysec", "the default policy");
            herd.kill(server);
            held_now
        })
        .collect();
    let last = ROUNDS - 1;
    let (mut stale, mut invented) = (Vec::new(), Vec::new());
    for (s, server) in servers.iter().enumerate() {
        for c in 0..CLIENTS {
            // What this server certainly had: its own round-9 acknowledgement, or else the
            // round-8 record it was seen to hold.
            let must = if acked[c][last].0 == s {
                &acked[c][last].1
            } else {
                &acked[c][last - 1].1
            };
            match &held_alone[s][c] {
                Some(line) if !acked[c].iter().any(|(_, a)| a == line) => {
                    invented.push(format!("{server} {}: {line:?}", ids[c]))
                }
                Some(line) if time_of(line) >= time_of(must) => {}
                other => stale.push(format!("{server} {}: has {other:?}, had {must:?}", ids[c])),
            }
        }
    }
    // An acknowledged update is lost if a server that had it (its acknowledger; for rounds
    // 0-8, every server) holds nothing or something older for its client after the restart.
    let lost_updates = (0..CLIENTS)
        .flat_map(|c| {
            acked[c]
                .iter()
                .enumerate()
                .map(move |(round, a)| (c, round, a))
        })
        .filter(|&(c, round, (by, line))| {
            (0..servers.len())
                .filter(|&s| round < last || s == *by)
                .any(|s| {
                    held_alone[s][c]
                        .as_ref()
                        .is_none_or(|h| time_of(h) < time_of(line))
                })
        })
        .count();
    let total = CLIENTS * ROUNDS;
    println!(
        "kill -9 of all five, each restarted alone: lost updates: {lost_updates} of {total} \
         acknowledged ({} of {} server-client records missing or older than the server had)",
        stale.len(),
        CLIENTS * servers.len()
    );
    assert!(
        invented.is_empty(),
        "records nobody acknowledged: {:?}",
        &invented[..invented.len().min(5)]
    );
    assert!(
        stale.is_empty() && lost_updates == 0,
        "{} records missing or stale after the restart; the first:\n{}",
        stale.len(),
        stale[..stale.len().min(5)].join("\n")
    );

    // All five again, linked: the herd agrees on every client's newest record.
    herd.start_all();
    let newest: Vec<String> = acked.iter().map(|a| a[last].1.clone()).collect();
    for server in servers {
        wait_holding(&herd, server, &ids, &newest, CONVERGE);
    }
}

/// A client of the rolling restart: one connection per server, reconnected after a failure;
/// an IAMAT counts as acknowledged only if its whole reply line came back.
struct RollingClient {
    port: u16,
    conn: Option<(BufReader<TcpStream>, TcpStream)>,
}

impl RollingClient {
    fn iamat(&mut self, server: &str, update: &Update) -> Option<String> {
        if self.conn.is_none() {
            let addr = ([127, 0, 0, 1], self.port).into();
            let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            stream
                .set_write_timeout(Some(Duration::from_secs(3)))
                .ok()?;
            let writer = stream.try_clone().ok()?;
            self.conn = Some((BufReader::new(stream), writer));
        }
        let (reader, writer) = self.conn.as_mut()?;
        let mut reply = String::new();
        let answered = writer
            .write_all((update.command() + "\n").as_bytes())
            .and_then(|()| reader.read_line(&mut reply));
        match answered {
            Ok(_) if reply.ends_with('\n') => {
                let reply = reply.trim_end_matches('\n');
                assert!(
                    acknowledges(reply, server, update),
                    "{} at {server} answered {reply:?}",
                    update.command()
                );
                Some(reply.to_string())
            }
            // The server died under us (reset, EOF, a cut line): not acknowledged.
            _ => {
                self.conn = None;
                None
            }
        }
    }
}

/// Sets its flag when dropped: a background client stops when its test ends, failed or not.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Item 8: a rolling restart (each server in turn SIGKILLed and started again while a client
/// keeps sending IAMATs to the servers in turn) loses no acknowledged update.
#[test]
fn a_rolling_kill_9_restart_loses_no_acknowledged_update() {
    // 41 clients over 5 servers: each client's updates go round all the servers.
    const CLIENTS: usize = 41;
    let servers = SPEC_SERVERS;
    let mut herd = Herd::new(&servers, &SPEC_LINKS);
    herd.line("store dir data");
    herd.line("log lines off");
    herd.line(CHEAP_WHATSAT);
    herd.start_all();
    herd.wait_all_linked();

    let ids: Vec<String> = (0..CLIENTS)
        .map(|c| format!("roll{c:02}.example"))
        .collect();
    let ports: Vec<u16> = servers.iter().map(|s| herd.port(s)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_sender = StopOnDrop(Arc::clone(&stop));
    let acks: Arc<Vec<AtomicUsize>> =
        Arc::new(servers.iter().map(|_| AtomicUsize::new(0)).collect());
    let sender = {
        let (stop, acks, ids) = (Arc::clone(&stop), Arc::clone(&acks), ids.clone());
        thread::spawn(move || {
            let mut clients: Vec<RollingClient> = ports
                .iter()
                .map(|&port| RollingClient { port, conn: None })
                .collect();
            let base = base_secs();
            let (mut acked, mut unanswered) = (Vec::new(), 0usize);
            let mut step = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (s, c) = (step as usize % servers.len(), step as usize % CLIENTS);
                let update = Update::new(&ids[c], base, step);
                match clients[s].iamat(servers[s], &update) {
                    Some(reply) => {
                        acked.push((c, reply));
                        acks[s].fetch_add(1, Ordering::Relaxed);
                    }
                    None => unanswered += 1,
                }
                step += 1;
            }
            (acked, unanswered)
        })
    };
    let acked_at = |s: usize| acks[s].load(Ordering::Relaxed);
    let wait_acks = |s: usize, more: usize| {
        let want = acked_at(s) + more;
        let what = format!("{} to take {more} more IAMATs", servers[s]);
        harness::wait_until(&what, Duration::from_secs(10), || {
            let acked = acked_at(s);
            if acked >= want {
                Ok(())
            } else {
                Err(format!("{acked} of {want}"))
            }
        });
    };
    let neighbours = |name: &str| -> Vec<&str> {
        SPEC_LINKS
            .iter()
            .filter_map(|&(a, b)| match (a == name, b == name) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .collect()
    };

    for (s, server) in servers.iter().enumerate() {
        wait_acks(s, 50); // it acknowledged updates just before its kill
        herd.kill(server);
        // (Read after the kill: its log holds only what it flushed.)
        let syncs: Vec<(&str, usize, usize)> = neighbours(server)
            .into_iter()
            .map(|n| (n, herd.link_syncs(server, n), herd.link_syncs(n, server)))
            .collect();
        let other = (s + 1) % servers.len();
        wait_acks(other, 20); // the others go on taking updates while it is down
        herd.start(server);
        for (n, out, back) in syncs {
            herd.wait_link_syncs(server, n, out + 1);
            herd.wait_link_syncs(n, server, back + 1);
        }
        wait_acks(s, 50);
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, unanswered) = sender.join().expect("the IAMAT sender");

    // Once converged, every server holds one and the same record for each client, at least as
    // new as its newest acknowledged one (an IAMAT cut by a kill may have been stored without
    // its reply reaching us, so the herd may hold one newer than we saw acknowledged).
    let newest = newest_per_client(&acked, CLIENTS);
    let mut views: Vec<Vec<Option<String>>> = Vec::new();
    // Until they agree and lose nothing, or CONVERGE passes: the checks below read what is.
    let _ = harness::poll(CONVERGE, || {
        views = servers.iter().map(|s| held(herd.port(s), &ids)).collect();
        views.iter().all(|v| v == &views[0] && lost(&acked, v) == 0)
    });
    let agreed = views.iter().all(|v| v == &views[0]);
    if !agreed {
        for (server, view) in servers.iter().zip(&views) {
            eprintln!("{server}: {view:?}");
        }
    }
    assert!(agreed, "the herd did not agree within {CONVERGE:?}");
    let lost_updates = views.iter().map(|v| lost(&acked, v)).max().unwrap_or(0);
    println!(
        "rolling kill -9 restart: lost updates: {lost_updates} of {} acknowledged ({unanswered} \
         IAMATs unanswered while a server was down; {} clients, each held alike by all five)",
        acked.len(),
        newest.iter().flatten().count()
    );
    assert_eq!(lost_updates, 0, "acknowledged updates lost");
}

/// Items 4 and 8: a store with a torn last line and corrupt lines is read, each skipped line
/// named by file and line, the valid records answered; the torn tail is cut off, so the next
/// record starts on a line of its own and reads back after another restart.
#[test]
fn a_torn_tail_and_corrupt_lines_are_skipped_by_file_and_line() {
    let dir = TempDir::new("durability-torn").expect("a temp dir");
    let path = store_file(dir.path());
    let base = base_secs();
    let kiwi = format!("AT {ALONE} +0.000200000 kiwi.example +34.068931-118.445128 {base}.5");
    let kiwi_older = format!("AT {ALONE} +0.000100000 kiwi.example +34.068930-118.445127 {base}.1");
    let fig = format!("AT {ALONE} -0.000300000 fig.example -33.8+151.2 {base}.25");
    let torn = format!("AT {ALONE} +0.000000400 plum.example +1.5+2.5 {}", base + 1);
    let whole = format!(
        "{kiwi}\n\
         garbage \x01 not a record\n\
         AT Nobody +0.000000001 pear.example +1.5+2.5 {base}.5\n\
         {kiwi_older}\n\
         {fig}\n"
    );
    fs::write(&path, format!("{whole}{torn}")).expect("write the store");

    let mut herd = alone(dir.path(), &[]);
    let start = start_reading_store(&mut herd, ALONE);
    let shown = path.display().to_string();
    assert_eq!(
        start,
        StoreStart {
            path: shown.clone(),
            clients: 2,
            lines: 6,
            skipped: 3,
            fsync: "everysec".into()
        }
    );
    let log = herd.log(ALONE);
    for (line, why, text) in [
        (2, "not a valid AT line", "garbage "),
        (3, "names a server not in the config", "AT Nobody "),
        (6, "cut short", torn.as_str()),
    ] {
        let prefix = format!("store {shown}:{line}: skipped, {why}");
        let found = log
            .lines()
            .map(log_event)
            .find(|e| e.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in the log:\n{log}"));
        assert!(found.contains(text), "{found:?} quotes {text:?}");
    }
    let skips = log.lines().filter(|l| l.contains(": skipped, ")).count();
    assert_eq!(skips, 3, "one line per skipped line:\n{log}");

    let port = herd.port(ALONE);
    let ids = [
        "kiwi.example",
        "fig.example",
        "plum.example",
        "pear.example",
    ]
    .map(String::from);
    assert_eq!(
        held(port, &ids),
        [Some(kiwi.clone()), Some(fig.clone()), None, None],
        "the newest of the valid lines, whatever their order; nothing of the skipped ones"
    );
    let text = fs::read_to_string(&path).expect("the store");
    let epoch = text
        .strip_prefix(&whole)
        .unwrap_or_else(|| panic!("the torn tail is cut off at start-up: {text:?}"));
    assert!(
        epoch.starts_with("HERD-EPOCH ") && epoch.len() == 28,
        "a store without an epoch gets one, after its records: {epoch:?}"
    );

    // New records after start-up, one of them for the client of the torn line.
    let updates = [
        Update::new("plum.example", base, 2_000_000),
        Update::new("date.example", base, 3_000_000),
    ];
    let replies = iamat_all(port, ALONE, &updates);
    // (Each reply came after its record's write: the file holds them already.)
    assert_eq!(
        fs::read_to_string(&path).expect("the store"),
        format!("{whole}{epoch}{}\n{}\n", replies[0], replies[1]),
        "each new record on a line of its own after the valid ones"
    );

    herd.kill(ALONE);
    let again = start_reading_store(&mut herd, ALONE);
    assert_eq!((again.clients, again.lines, again.skipped), (4, 8, 2));
    let ids = ids
        .into_iter()
        .chain(["date.example".into()])
        .collect::<Vec<_>>();
    assert_eq!(
        held(herd.port(ALONE), &ids),
        [
            Some(kiwi),
            Some(fig),
            Some(replies[0].clone()),
            None,
            Some(replies[1].clone())
        ]
    );
}

/// Item 1: a second process of a server on the same store (with the same config, or another
/// port) exits 1 naming the lock and its holder; the first goes on serving and storing.
#[test]
fn a_second_process_on_one_store_is_refused_and_the_first_keeps_serving() {
    let store = TempDir::new("durability-lock-store").expect("a temp dir");
    let config = HerdConfig::single(ALONE)
        .expect("a free port")
        .with(&refused_places_url().expect("a free port"))
        .with(&format!("store dir {}", store.path().display()));
    let mut first =
        harness::Herd::new(&herd_bin(), config.clone(), "durability-lock").expect("a test herd");
    first.start_server(0).unwrap_or_else(|e| panic!("{e}"));
    let pid = first.pid(0).expect("running");
    let port = first.config.addrs[0].port();
    let base = base_secs();
    let before = iamat_all(port, ALONE, &[Update::new("first.example", base, 1)]);

    let expected = format!(
        "herd {ALONE}: store {}/{ALONE}.lock is locked by process {pid}: this server is \
         already running on this store",
        store.path().display()
    );
    // The very command the first was started with, in its directory...
    let conf = first.dir.path().join(format!("{ALONE}.conf"));
    let same = run_herd(&[ALONE, conf.to_str().unwrap()], first.dir.path());
    // ... and a config with another port (free, so only the lock can stop it) and log dir.
    let other_dir = TempDir::new("durability-lock-other").expect("a temp dir");
    let mut other = config.clone();
    other.addrs = free_ports(1).expect("a free port");
    let other_conf = other_dir
        .write("other.conf", &other.text(0, other_dir.path()))
        .expect("write the config");
    let elsewhere = run_herd(&[ALONE, other_conf.to_str().unwrap()], other_dir.path());
    for (what, run) in [("same config", &same), ("another port", &elsewhere)] {
        assert_eq!(run.status.code(), Some(1), "{what}: {}", run.stderr);
        assert_eq!(
            run.stderr_lines().last().copied(),
            Some(expected.as_str()),
            "{what}: {}",
            run.stderr
        );
    }

    // The first one never noticed: it serves, it stores, and its lock still names it.
    assert!(first.is_running(0), "the first process is still running");
    let after = iamat_all(port, ALONE, &[Update::new("second.example", base, 2)]);
    let ids = ["first.example", "second.example"].map(String::from);
    assert_eq!(
        held(port, &ids),
        [Some(before[0].clone()), Some(after[0].clone())]
    );
    let lock = fs::read_to_string(store.path().join(format!("{ALONE}.lock"))).expect("the lock");
    assert_eq!(lock.trim(), pid.to_string());
    first.stop(0, None); // SIGKILL
    first.start_server(0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        held(port, &ids),
        [Some(before[0].clone()), Some(after[0].clone())],
        "both records survived the first process's kill -9"
    );
}

/// `store compacted to B bytes for N clients in T ms` lines of `log`: (B, N).
fn compactions(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|line| {
            let (_, rest) = log_event(line).split_once(": compacted to ")?;
            let words: Vec<&str> = rest.split(' ').collect();
            match words[..] {
                [bytes, "bytes", "for", clients, "clients", ..] => {
                    Some((bytes.parse().ok()?, clients.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

/// Items 5 and 8: a few clients updated thousands of times with `store compact-bytes 4096`:
/// the store is compacted while the updates go on, every client's newest record survives a
/// kill -9 at once after the last reply, and the store's size ends near the live records, not
/// the bytes written.
#[test]
fn compaction_under_load_keeps_the_store_near_its_live_records() {
    const CLIENTS: usize = 5;
    const FLOOR: u64 = 4096;
    let dir = TempDir::new("durability-compact").expect("a temp dir");
    let mut herd = alone(
        dir.path(),
        &[&format!("store compact-bytes {FLOOR}"), "log lines off"],
    );
    herd.start(ALONE);
    let port = herd.port(ALONE);
    let ids: Vec<String> = (0..CLIENTS).map(|c| format!("busy{c}.example")).collect();
    let base = base_secs();
    let (mut acked, mut written, mut step) = (Vec::new(), 0u64, 0u64);
    // Updates in batches until three compactions have been logged (the store is checked every
    // 250 ms, so this is a second of load or so).
    let under_load = "three compactions under load";
    harness::wait_until(under_load, Duration::from_secs(20), || {
        if compactions(&herd.log(ALONE)).len() >= 3 {
            return true;
        }
        let batch: Vec<Update> = (0..500)
            .map(|i| {
                step += 1;
                Update::new(&ids[i % CLIENTS], base, step)
            })
            .collect();
        for (i, reply) in iamat_all(port, ALONE, &batch).into_iter().enumerate() {
            written += reply.len() as u64 + 1;
            acked.push((i % CLIENTS, reply));
        }
        false
    });
    let newest: Vec<String> = newest_per_client(&acked, CLIENTS)
        .into_iter()
        .map(|n| n.expect("every client updated"))
        .collect();
    // At once after the last reply, wherever the last compaction is.
    herd.kill(ALONE);
    let start = start_reading_store(&mut herd, ALONE);
    assert_eq!(start.clients, CLIENTS as u64);
    wait_holding(&herd, ALONE, &ids, &newest, Duration::ZERO);

    let live: u64 = newest.iter().map(|l| l.len() as u64 + 1).sum();
    let path = store_file(dir.path());
    // Past the floor and past twice the live bytes, the next check compacts: the file ends at
    // most at the floor, whatever was written.
    let at_most_floor = format!("the store to end at most at {FLOOR} bytes");
    harness::wait_until(&at_most_floor, Duration::from_secs(5), || {
        let size = file_len(&path);
        if size <= FLOOR {
            Ok(())
        } else {
            Err(format!(
                "the store stays at {size} bytes ({written} written, {live} live)"
            ))
        }
    });
    let size = file_len(&path);
    let log = herd.log(ALONE);
    let done = compactions(&log);
    println!(
        "compaction under load: {} updates, {written} bytes written, {} compactions (to {:?} \
         bytes), store {size} bytes for {live} bytes live",
        acked.len(),
        done.len(),
        done.iter().map(|d| d.0).collect::<Vec<_>>()
    );
    assert!(
        done.iter().all(|&(_, clients)| clients == CLIENTS as u64),
        "{done:?}"
    );
    assert!(size >= live && size * 20 < written, "{size} bytes");
    assert!(
        log.contains(": compacting "),
        "each compaction is announced:\n{log}"
    );
    let text = fs::read_to_string(&path).expect("the store");
    for line in &newest {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} is a line of the store"
        );
    }
}

/// Writes a store of `clients` clients, two records each: first every client's newest, then
/// an older, longer one (so the file is past twice its live records and order does not
/// decide). Returns each client's id and newest line.
fn write_big_store(path: &Path, clients: usize, base: i64) -> Vec<(String, String)> {
    let id = |c: usize| format!("big{c:05}.example");
    let newest = |c: usize| {
        let location = place(c as u64);
        format!("AT {ALONE} +0.000{c:06} {} {location} {base}.{c:09}", id(c))
    };
    let mut text = String::with_capacity(clients * 150);
    for c in 0..clients {
        text += &newest(c);
        text.push('\n');
    }
    for c in 0..clients {
        let location = "+12.345678901234-123.456789012345";
        text += &format!(
            "AT {ALONE} +0.000{c:06} {} {location} {}.5\n",
            id(c),
            base - 1
        );
    }
    fs::write(path, text).expect("write the store");
    (0..clients).map(|c| (id(c), newest(c))).collect()
}

/// Waits (at most 10 s) until `done` holds, looking every 200 µs: a compaction of the big
/// store is over within milliseconds, and its start must be seen before its end.
#[track_caller]
fn wait_closely(what: &str, done: impl FnMut() -> bool) {
    let every = Duration::from_micros(200);
    if let Err(timed_out) = harness::poll_every(every, Duration::from_secs(10), done) {
        panic!("waiting for {what}: {timed_out}");
    }
}

/// Item 5's test: SIGKILL at several points of a compaction (the store is past twice its live
/// records, so one starts at the first check, 250 ms after start): as soon as it begins, while
/// more acknowledged updates go to both files, right after its rename, and later; after the
/// restart every client's newest record is there, and a leftover `.compacting` file is
/// removed, never read.
#[test]
fn kill_9_at_any_point_of_a_compaction_loses_nothing() {
    const CLIENTS: usize = 8_000;
    // (whether to wait for the rename before the updates, updates before the kill)
    let points = [(false, 0), (false, 5), (false, 300), (true, 0), (true, 300)];
    let mut before_rename = 0;
    for (round, (after_rename, extra)) in points.into_iter().enumerate() {
        let dir = TempDir::new("durability-compact-kill").expect("a temp dir");
        let (path, temp) = (store_file(dir.path()), compacting_file(dir.path()));
        let base = base_secs() - 10;
        let mut newest: HashMap<String, String> =
            write_big_store(&path, CLIENTS, base).into_iter().collect();
        let written = file_len(&path);
        let mut herd = alone(dir.path(), &["store compact-bytes 4096", "log lines off"]);
        herd.start(ALONE);
        let port = herd.port(ALONE);
        // The compaction's file appears when it starts, and is renamed over the store.
        wait_closely("a compaction to start", || temp.exists());
        if after_rename {
            wait_closely("the compaction's rename", || !temp.exists());
        }
        // Updates to clients all over the table (copied already or not yet).
        let updates: Vec<Update> = (0..extra)
            .map(|i| {
                let c = (i * 7919 + round * 31) % CLIENTS;
                Update::new(&format!("big{c:05}.example"), base + 1, i as u64)
            })
            .collect();
        for (update, reply) in updates.iter().zip(iamat_all(port, ALONE, &updates)) {
            newest.insert(update.id.clone(), reply);
        }
        herd.kill(ALONE);
        let unfinished = temp.exists();
        let replaced = file_len(&path) < written;
        before_rename += usize::from(unfinished && !replaced);
        println!(
            "compaction kill {round}: {extra} updates after {}, killed {}",
            if after_rename {
                "its rename"
            } else {
                "it began"
            },
            match (unfinished, replaced) {
                (true, false) => "before the rename",
                (_, true) => "after the rename",
                (false, false) => "after the compaction failed",
            }
        );
        // A leftover `.compacting` (the real one, or one made here) holds a record nobody
        // acknowledged: it must be removed at start, not read.
        let mut leftover = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&temp)
            .expect("the leftover");
        writeln!(
            leftover,
            "AT {ALONE} +0.000000000 planted.example +1+1 {}.5",
            base + 2
        )
        .expect("plant a record");
        drop(leftover);

        let removed = herd.count_in_log(ALONE, "removed an unfinished compaction");
        let start = start_reading_store(&mut herd, ALONE);
        herd.wait_log_count(ALONE, "removed an unfinished compaction", removed + 1);
        assert_eq!(start.clients, CLIENTS as u64, "{start:?}");
        // Only a write cut by the kill may be skipped, and only as the torn last line.
        let log = herd.log(ALONE);
        for skipped in log.lines().filter(|l| l.contains(": skipped, ")) {
            assert!(
                skipped.contains(&format!(":{}: skipped, cut short", start.lines)),
                "{skipped}"
            );
        }
        // Every client updated here, a spread of the others, and the planted one.
        let mut ids: Vec<String> = updates.iter().map(|u| u.id.clone()).collect();
        ids.extend(
            (0..CLIENTS)
                .step_by(37)
                .map(|c| format!("big{c:05}.example")),
        );
        ids.sort();
        ids.dedup();
        let want: Vec<Option<String>> = ids.iter().map(|id| newest.get(id).cloned()).collect();
        let has = held(port, &ids);
        let wrong: Vec<String> = ids
            .iter()
            .zip(want.iter().zip(&has))
            .filter(|(_, (want, has))| want != has)
            .map(|(id, (want, has))| format!("  {id}: want {want:?}\n    has {has:?}"))
            .collect();
        assert!(
            wrong.is_empty(),
            "round {round}: {} of {} records wrong after the restart; the first:\n{}",
            wrong.len(),
            ids.len(),
            wrong[..wrong.len().min(5)].join("\n")
        );
        assert_eq!(
            held(port, &["planted.example".to_string()]),
            [None],
            "a leftover .compacting is never read"
        );
    }
    assert!(
        before_rename >= 1,
        "no kill landed inside a compaction (before its rename)"
    );
}

/// Item 7: a store on a tiny tmpfs fills up: the server says `cannot append` once and goes on
/// answering IAMAT and WHATSAT from memory; once the disk has room it says `writing again`
/// and rewrites the store from memory, so after a kill -9 every acknowledged record is back,
/// those taken while the disk was full included.
#[test]
fn a_full_disk_never_stops_serving_and_what_it_missed_is_written_back() {
    let Some(tmpfs) = Tmpfs::mount("64k") else {
        return; // it said why
    };
    let mut herd = alone(&tmpfs.path, &["log lines off"]);
    herd.start(ALONE);
    let port = herd.port(ALONE);
    let base = base_secs();
    let mut acked: Vec<(usize, String)> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    // A batch of new clients (each costs the store a line, and the compaction later).
    let more = |count: usize, ids: &mut Vec<String>, acked: &mut Vec<(usize, String)>| {
        let first = ids.len();
        ids.extend((first..first + count).map(|c| format!("full{c:05}.example")));
        let updates: Vec<Update> = (first..first + count)
            .map(|c| Update::new(&ids[c], base, c as u64))
            .collect();
        let replies = iamat_all(port, ALONE, &updates);
        acked.extend((first..).zip(replies));
    };
    // Every reply comes after its record's write: while the disk takes them all, the file is
    // exactly the lines acknowledged; once it is shorter, an append failed.
    let store = store_file(&tmpfs.path);
    // A new store starts with its history's epoch line.
    let mut acked_bytes = file_len(&store);
    harness::wait_until("the 64 KiB store to fill", Duration::from_secs(20), || {
        if file_len(&store) != acked_bytes {
            return true;
        }
        assert!(
            ids.len() < 20_000,
            "{} IAMATs and the 64 KiB store never filled:\n{}",
            ids.len(),
            herd.log(ALONE)
        );
        let before = acked.len();
        more(50, &mut ids, &mut acked);
        acked_bytes += acked[before..]
            .iter()
            .map(|(_, line)| line.len() as u64 + 1)
            .sum::<u64>();
        false
    });
    herd.wait_log_count(ALONE, "cannot append", 1);
    // Full: every IAMAT and WHATSAT is still answered, from memory.
    more(300, &mut ids, &mut acked);
    let text = fs::read(&store).expect("the store");
    let on_disk = text.split(|&b| b == b'\n').count() - 1;
    assert!(on_disk < acked.len(), "{on_disk} records in the store");
    let newest: Vec<String> = acked.iter().map(|(_, l)| l.clone()).collect();
    wait_holding(&herd, ALONE, &ids, &newest, Duration::ZERO);
    // Once: not a line per failed append.
    assert_eq!(herd.count_in_log(ALONE, "cannot append"), 1);
    let warning = herd
        .log(ALONE)
        .lines()
        .map(log_event)
        .find(|e| e.contains("cannot append"))
        .map(String::from)
        .expect("the warning");
    assert!(
        warning.contains("serving from memory, retrying"),
        "{warning}"
    );

    tmpfs.resize("1m");
    more(1, &mut ids, &mut acked); // the next append works
    herd.wait_log_count(ALONE, "writing again", 1);
    herd.wait_log_count(ALONE, ": compacted to ", 1);
    herd.kill(ALONE);
    let start = start_reading_store(&mut herd, ALONE);
    let newest: Vec<String> = acked.iter().map(|(_, l)| l.clone()).collect();
    let has = held(port, &ids);
    let lost_updates = lost(&acked, &has);
    println!(
        "full disk: lost updates: {lost_updates} of {} acknowledged ({} of them not in the \
         store while the disk was full)",
        acked.len(),
        acked.len() - on_disk
    );
    assert_eq!(start.clients, ids.len() as u64, "{start:?}");
    assert_eq!(lost_updates, 0);
    wait_holding(&herd, ALONE, &ids, &newest, Duration::ZERO);
    assert_eq!(herd.count_in_log(ALONE, "writing again"), 1);
    drop(herd); // the server lets go of the tmpfs before it is unmounted
}

/// Item 3: with `store fsync always` or `no`, as with the default, a write is all a process
/// kill needs: acknowledged updates are back after kill -9.
fn kill_9_keeps_acknowledged_updates_with_fsync(policy: &str) {
    const CLIENTS: usize = 100;
    let dir = TempDir::new("durability-fsync").expect("a temp dir");
    let mut herd = alone(dir.path(), &[&format!("store fsync {policy}")]);
    herd.start(ALONE);
    let ids: Vec<String> = (0..CLIENTS)
        .map(|c| format!("{policy}{c:03}.example"))
        .collect();
    let base = base_secs();
    let updates: Vec<Update> = (0..CLIENTS * 3)
        .map(|i| Update::new(&ids[i % CLIENTS], base, i as u64))
        .collect();
    let replies = iamat_all(herd.port(ALONE), ALONE, &updates);
    herd.kill(ALONE); // at once after the last reply
    let acked: Vec<(usize, String)> = replies
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i % CLIENTS, r))
        .collect();
    let start = start_reading_store(&mut herd, ALONE);
    let has = held(herd.port(ALONE), &ids);
    let lost_updates = lost(&acked, &has);
    println!(
        "fsync {policy}: lost updates: {lost_updates} of {} acknowledged",
        acked.len()
    );
    assert_eq!(start.fsync, policy, "{start:?}");
    assert_eq!(start.clients, CLIENTS as u64, "{start:?}");
    assert_eq!(lost_updates, 0);
    let newest: Vec<Option<String>> = newest_per_client(&acked, CLIENTS);
    assert_eq!(has, newest);
}

#[test]
fn fsync_always_keeps_acknowledged_updates_across_kill_9() {
    kill_9_keeps_acknowledged_updates_with_fsync("always");
}

#[test]
fn fsync_no_keeps_acknowledged_updates_across_kill_9() {
    kill_9_keeps_acknowledged_updates_with_fsync("no");
}
