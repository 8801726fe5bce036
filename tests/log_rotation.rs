//! The log's size and its operator (README "Logs" and "Signals"): rotation by `log max-bytes`
//! keeping `log keep` old files, a new `NAME.log` after `mv` + SIGHUP, SIGHUP/SIGUSR1/SIGUSR2
//! never stopping a server or `herd --all`, keepalives logged only at debug, and a full disk
//! that drops log records but never stops the server from answering.

use herd_test_support::tmpfs::Tmpfs;
use herd_test_support::{
    checks::check_framing,
    client::{time_from_now, Client},
    cluster::Herd,
    harness::{
        accept_within, free_ports, read_lossy, refused_places_url, tail, wait_for_log, wait_until,
        TempDir, KEY_ENV,
    },
    raw_peer::RawPeer,
    server::Server,
};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

/// `NAME.log`, `NAME.log.1`, ... in `dir`: every file whose name starts with `NAME.log`.
fn log_files(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!("{name}.log");
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read the log dir")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|file| file.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// The client ids of the IAMATs the log's `recv` records show, in order.
fn iamat_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| line.split_once(" recv conn="))
        .filter_map(|(_, rest)| rest.split_once(" IAMAT "))
        .filter_map(|(_, rest)| rest.split(' ').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn rotation_by_size_keeps_at_most_k_old_files_of_whole_records() {
    const MAX_BYTES: u64 = 4096;
    const KEEP: usize = 2;
    let mut server = Server::builder("Alpha")
        .line(&format!("log max-bytes {MAX_BYTES}"))
        .line(&format!("log keep {KEEP}"))
        .start();
    let dir = server.dir().to_path_buf();
    let mut client = server.client();
    let time = time_from_now(0);
    // About 220 bytes of log an IAMAT: 600 of them fill the three files many times over.
    for i in 0..600 {
        let reply = client.iamat(&format!("client-{i:04}"), "+34.068930-118.445127", &time);
        assert!(reply.starts_with("AT Alpha "), "{reply}");
        if i % 50 == 0 {
            let files = log_files(&dir, "Alpha");
            assert!(files.len() <= 1 + KEEP, "after {i} IAMATs: {files:?}");
        }
    }
    drop(client);
    // SIGTERM writes out what is buffered, so every record is in a file.
    server.terminate();
    assert!(server.wait_exit(TIMEOUT).is_some(), "the server stops");

    let files = log_files(&dir, "Alpha");
    assert_eq!(files, ["Alpha.log", "Alpha.log.1", "Alpha.log.2"]);
    let mut kept = String::new();
    for file in files.iter().rev() {
        let text = read_lossy(&dir.join(file));
        let size = text.len() as u64;
        assert!(size <= MAX_BYTES, "{file} has {size} bytes");
        assert!(text.ends_with('\n'), "{file} ends with a whole record");
        for line in text.lines() {
            assert!(
                line.starts_with("20") && line.contains("Z ["),
                "{file}: every line is a whole, stamped record: {line:?}"
            );
        }
        kept += &text;
    }
    for old in &files[1..] {
        let size = read_lossy(&dir.join(old)).len() as u64;
        assert!(
            size > MAX_BYTES - 512,
            "{old} was rotated full: {size} bytes"
        );
    }
    // Oldest file first, the kept records are the newest ones, with no gap.
    let ids = iamat_ids(&kept);
    let last = ids.last().expect("IAMATs in the kept files");
    assert_eq!(last, "client-0599", "the newest record is kept");
    let first: usize = ids[0]["client-".len()..].parse().expect("an id");
    assert!(first > 0, "the oldest records were rotated away");
    let expected: Vec<String> = (first..600).map(|i| format!("client-{i:04}")).collect();
    assert_eq!(ids, expected, "the kept records follow one another");
}

#[test]
fn keep_0_starts_the_log_afresh_and_keeps_no_old_file() {
    const MAX_BYTES: u64 = 4096;
    let mut server = Server::builder("Alpha")
        .line(&format!("log max-bytes {MAX_BYTES}"))
        .line("log keep 0")
        .start();
    let mut client = server.client();
    let time = time_from_now(0);
    for i in 0..200 {
        client.iamat(&format!("client-{i:04}"), "+1+2", &time);
    }
    drop(client);
    server.terminate();
    assert!(server.wait_exit(TIMEOUT).is_some(), "the server stops");
    assert_eq!(log_files(server.dir(), "Alpha"), ["Alpha.log"]);
    let text = server.log_text();
    assert!(text.len() as u64 <= MAX_BYTES, "{} bytes", text.len());
    let ids = iamat_ids(&text);
    assert!(!ids.contains(&"client-0000".to_string()), "started afresh");
    assert!(text.lines().all(|line| line.starts_with("20")), "{text}");
}

#[test]
fn mv_then_sighup_starts_a_new_log_with_the_records_that_follow() {
    let server = Server::builder("Alpha").start();
    let log = server.log_path();
    let moved = PathBuf::from(format!("{}.1", log.display()));
    let mut client = server.client();
    let time = time_from_now(0);
    client.iamat("before-mv", "+1+2", &time);
    server.wait_for_log("IAMAT before-mv");

    fs::rename(&log, &moved).expect("mv Alpha.log Alpha.log.1");
    // Until the SIGHUP, records still go to the moved file (the buffer is written there).
    client.iamat("after-mv", "+1+2", &time);
    server.signal("HUP");
    wait_until("SIGHUP to make a new Alpha.log", TIMEOUT, || log.exists());
    client.iamat("after-hup", "+1+2", &time);
    let new_log = server.wait_for_log("IAMAT after-hup");

    let old_log = read_lossy(&moved);
    assert!(old_log.contains("IAMAT before-mv"), "{old_log}");
    assert!(old_log.contains("IAMAT after-mv"), "{old_log}");
    assert!(
        old_log.contains("reopening log on SIGHUP"),
        "the old log says where it ends:\n{old_log}"
    );
    assert!(!old_log.contains("after-hup"), "{old_log}");
    assert!(
        !new_log.contains("before-mv") && !new_log.contains("after-mv"),
        "{new_log}"
    );
}

#[test]
fn a_deleted_log_is_created_again_at_its_path() {
    let server = Server::builder("Alpha").start();
    let log = server.log_path();
    let mut client = server.client();
    let time = time_from_now(0);
    client.iamat("before-rm", "+1+2", &time);
    server.wait_for_log("IAMAT before-rm");
    fs::remove_file(&log).expect("rm Alpha.log");
    client.iamat("after-rm", "+1+2", &time);
    // No signal: the next flush sees the file is gone and makes it again.
    let text = server.wait_for_log("IAMAT after-rm");
    assert!(!text.contains("before-rm"), "{text}");
}

#[test]
fn a_log_truncated_in_place_is_written_from_its_start() {
    // logrotate's `copytruncate`: the file is emptied under the server, which appends.
    let server = Server::builder("Alpha").start();
    let log = server.log_path();
    let mut client = server.client();
    let time = time_from_now(0);
    client.iamat("before-truncate", "+1+2", &time);
    server.wait_for_log("IAMAT before-truncate");
    File::create(&log).expect("truncate Alpha.log");
    client.iamat("after-truncate", "+1+2", &time);
    server.wait_for_log("IAMAT after-truncate");
    let bytes = fs::read(&log).expect("read Alpha.log");
    assert!(
        bytes.starts_with(b"20") && !bytes.contains(&0),
        "records start at the start of the file, with no hole before them: {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
    );
}

#[test]
fn sighup_sigusr1_and_sigusr2_do_not_stop_a_server() {
    let mut server = Server::builder("Alpha").start();
    for signal in ["USR1", "USR2", "HUP", "USR1", "HUP"] {
        server.signal(signal);
        // A signal that kills is acted on before the server can run again, so an answer
        // after it means it did not.
        let reply = server.client().iamat("c1", "+1+2", &time_from_now(0));
        assert!(
            reply.starts_with("AT Alpha "),
            "after SIG{signal}: {reply:?}"
        );
    }
    assert!(
        server.wait_exit(Duration::from_millis(200)).is_none(),
        "still running; stderr: {}",
        server.stderr_text()
    );
    let log = server.wait_for_log("reopening log on SIGHUP");
    assert!(!log.contains("stopping on signal"), "{log}");
}

#[test]
fn herd_all_passes_sighup_on_and_ignores_sigusr1_and_sigusr2() {
    let dir = TempDir::new("rotation").unwrap();
    let addrs = free_ports(2).unwrap();
    let config = format!(
        "server Alpha {}\nserver Beta {}\n{}\nplaces key-env {KEY_ENV}\nlog dir {}\n",
        addrs[0],
        addrs[1],
        refused_places_url().unwrap(),
        dir.path().display()
    );
    let logs: Vec<PathBuf> = ["Alpha", "Beta"]
        .iter()
        .map(|name| dir.path().join(format!("{name}.log")))
        .collect();
    let mut supervisor = Server::start_all(dir, &config, addrs.iter().map(|a| a.port()).collect());
    // "started" is said once both servers handle signals.
    supervisor.wait_for_stderr("herd: started 2 servers", TIMEOUT);
    for signal in ["USR1", "USR2", "HUP"] {
        supervisor.signal(signal);
        for (addr, name) in addrs.iter().zip(["Alpha", "Beta"]) {
            let reply = Client::connect(addr.port()).iamat("c1", "+1+2", &time_from_now(0));
            assert!(
                reply.starts_with(&format!("AT {name} ")),
                "{name} after SIG{signal} to the supervisor: {reply:?}"
            );
        }
    }
    for log in &logs {
        wait_for_log(log, "reopening log on SIGHUP", 1, TIMEOUT); // SIGHUP reached it
    }
    assert!(
        supervisor.wait_exit(Duration::from_millis(200)).is_none(),
        "the supervisor is still running: {}",
        supervisor.stderr_text()
    );
    let stderr = supervisor.stderr_text();
    assert!(!stderr.contains("exited"), "{stderr}");
}

/// Campbell with a neighbour Bona played by the test both ways: Campbell's link goes to a
/// listener here (which answers its pings), and a raw connection says Bona's hello to
/// Campbell (and pings it). Then a client's IAMAT and `HERD-PING`. Returns Campbell's log once
/// all of it is there.
fn keepalive_scenario(level: &str) -> String {
    let fake_bona = TcpListener::bind("127.0.0.1:0").expect("bind fake Bona");
    let mut herd = Herd::chain(&["Campbell", "Bona"]);
    herd.line("peer secret none"); // plain hellos, which the test can say
    herd.line("peer ping-ms 100");
    herd.line(&format!("log level {level}"));
    herd.route("Campbell", "Bona", fake_bona.local_addr().unwrap().port());
    herd.start("Campbell");

    // Campbell's link to Bona: welcome it, answer two pings.
    let link = accept_within(&fake_bona, TIMEOUT);
    let mut link_reader = BufReader::new(link.try_clone().expect("clone"));
    let mut line = String::new();
    link_reader.read_line(&mut line).expect("the hello");
    assert_eq!(line.trim_end(), "HERD-HELLO Campbell");
    (&link).write_all(b"HERD-WELCOME Bona\n").expect("welcome");
    for _ in 0..2 {
        line.clear();
        link_reader.read_line(&mut line).expect("a ping");
        assert_eq!(line.trim_end(), "HERD-PING");
        (&link).write_all(b"HERD-PONG\n").expect("pong");
    }

    // Bona's link to Campbell: ping it, and send one update.
    let mut bona = RawPeer::connect(herd.port("Campbell"));
    bona.send_line("HERD-HELLO Bona");
    assert_eq!(bona.read_line(), "HERD-WELCOME Campbell");
    bona.send_line("HERD-PING");
    assert_eq!(bona.read_line(), "HERD-PONG");
    bona.send_line(&format!(
        "AT Bona +0.000000001 from-bona +1+2 {}",
        time_from_now(0)
    ));

    let mut client = herd.client("Campbell");
    client.send("HERD-PING");
    assert_eq!(client.read_line(), "? HERD-PING");
    let reply = client.iamat("at-campbell", "+1+2", &time_from_now(0));
    assert!(reply.starts_with("AT Campbell "), "{reply}");
    // The flood of the IAMAT to Bona is the last of it (pings answered meanwhile).
    loop {
        line.clear();
        link_reader.read_line(&mut line).expect("the flood");
        if line.contains("at-campbell") {
            break;
        }
        if line.trim_end() == "HERD-PING" {
            (&link).write_all(b"HERD-PONG\n").expect("pong");
        }
    }
    herd.wait_log_count("Campbell", "send link=Bona AT Campbell", 1)
}

/// The traffic records of `log` ending in `line`: (record, whether it is with a neighbour).
fn records_of<'a>(log: &'a str, line: &str) -> Vec<(&'a str, bool)> {
    log.lines()
        .filter(|l| l.contains("] recv ") || l.contains("] send "))
        .filter(|l| l.ends_with(&format!(" {line}")))
        .map(|l| (l, l.contains(" link=") || l.contains(" peer=")))
        .collect()
}

/// The one record of `log` containing all of `parts`.
fn record_with<'a>(log: &'a str, parts: &[&str]) -> &'a str {
    log.lines()
        .find(|l| parts.iter().all(|part| l.contains(part)))
        .unwrap_or_else(|| panic!("a record with {parts:?} in:\n{}", tail(log, 60)))
}

#[test]
fn keepalives_are_not_logged_at_info_but_every_client_and_flood_line_is() {
    let log = keepalive_scenario("info");
    for keepalive in ["HERD-PING", "HERD-PONG"] {
        let between_neighbours: Vec<_> = records_of(&log, keepalive)
            .into_iter()
            .filter(|&(_, neighbour)| neighbour)
            .collect();
        assert!(
            between_neighbours.is_empty(),
            "no {keepalive} between neighbours at info: {between_neighbours:#?}"
        );
    }
    // A client's HERD-PING is an invalid command like any other, and logged.
    let client_ping = records_of(&log, "HERD-PING");
    assert_eq!(
        client_ping.len(),
        2,
        "recv and `? ` reply: {client_ping:#?}"
    );
    assert!(client_ping.iter().all(|&(_, neighbour)| !neighbour));
    record_with(&log, &["[INFO] recv conn=", " HERD-PING"]);
    record_with(&log, &["[INFO] send conn=", " ? HERD-PING"]);
    record_with(&log, &["[INFO] recv conn=", " IAMAT at-campbell +1+2 "]);
    record_with(
        &log,
        &["[INFO] send conn=", " AT Campbell ", " at-campbell "],
    );
    // Floods both ways, and the link's hello and welcome.
    record_with(
        &log,
        &["[INFO] send link=Bona AT Campbell ", " at-campbell "],
    );
    record_with(
        &log,
        &[
            "[INFO] recv conn=",
            " peer=Bona AT Bona +0.000000001 from-bona ",
        ],
    );
    record_with(&log, &["[INFO] send link=Bona HERD-HELLO Campbell"]);
    record_with(&log, &["[INFO] recv link=Bona HERD-WELCOME Bona"]);
}

#[test]
fn keepalives_are_logged_at_debug() {
    let log = keepalive_scenario("debug");
    record_with(&log, &["[DEBUG] send link=Bona HERD-PING"]);
    record_with(&log, &["[DEBUG] recv link=Bona HERD-PONG"]);
    record_with(&log, &["[DEBUG] recv conn=", " peer=Bona HERD-PING"]);
    record_with(&log, &["[DEBUG] send conn=", " peer=Bona HERD-PONG"]);
    record_with(
        &log,
        &["[INFO] send link=Bona AT Campbell ", " at-campbell "],
    );
    record_with(&log, &["[INFO] recv conn=", " HERD-PING"]);
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = File::create(path).expect("create the filler");
    let chunk = [b'x'; 4096];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    written
}

#[test]
fn a_full_disk_drops_log_records_and_the_server_keeps_answering() {
    let Some(tmpfs) = Tmpfs::mount("256k") else {
        return;
    };
    let server = Server::builder("Alpha")
        .line(&format!("log dir {}", tmpfs.path.display()))
        .start();
    let log = tmpfs.path.join("Alpha.log");
    let mut client = server.client();
    let time = time_from_now(0);
    client.iamat("before-full", "+1+2", &time);
    wait_for_log(&log, "IAMAT before-full", 1, TIMEOUT); // logged before the disk fills

    let filler = tmpfs.path.join("filler");
    assert!(fill(&filler) > 0, "the filler took the free space");
    // Records now fail to be written: the server answers all the same.
    let mut i = 0;
    let dropping = "cannot write (No space left on device";
    wait_until("stderr to report dropped records", TIMEOUT, || {
        if server.stderr_text().contains(dropping) {
            return true;
        }
        assert!(i < 20_000, "no drop reported: {}", server.stderr_text());
        let reply = client.iamat(&format!("while-full-{i}"), "+1+2", &time);
        assert!(reply.starts_with("AT Alpha "), "{reply}");
        i += 1;
        false
    });
    // A second of records while full: several write-outs fail, and stderr says so once. (Not
    // a wait: the load itself lasts a second.)
    let full_since = Instant::now();
    let mut j = 0;
    while full_since.elapsed() < Duration::from_secs(1) {
        j += 1;
        let id = format!("still-full-{j}");
        let at_line = client.iamat(&id, "+34.068930-118.445127", &time);
        assert!(at_line.starts_with("AT Alpha "), "{at_line}");
        client.send(&format!("WHATSAT {id} 10 2"));
        check_framing(&client.read_whatsat_reply(), &at_line);
    }
    let sent_while_full = i + j;

    fs::remove_file(&filler).expect("free the space");
    client.iamat("after-full", "+1+2", &time);
    let recovered = "writing again, after dropping ";
    let stderr = server.wait_for_stderr(recovered, TIMEOUT);
    wait_for_log(&log, "IAMAT after-full", 1, TIMEOUT); // logging resumed by itself
    assert_eq!(stderr.matches(dropping).count(), 1, "one line: {stderr}");
    assert_eq!(stderr.matches(recovered).count(), 1, "one line: {stderr}");
    let dropped: u64 = stderr
        .split(recovered)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a byte count: {stderr}"));
    assert!(dropped > 10_000, "{dropped} bytes dropped");

    let text = read_lossy(&log);
    assert!(
        text.contains(&format!("[WARN] log: {dropped} bytes of records")),
        "the log says what it lost:\n{}",
        tail(&text, 20)
    );
    let logged_while_full = iamat_ids(&text)
        .iter()
        .filter(|id| id.starts_with("while-full-") || id.starts_with("still-full-"))
        .count();
    assert!(
        logged_while_full < sent_while_full,
        "some of the {sent_while_full} IAMATs made while the disk was full are not in the log"
    );
    for line in text.lines() {
        assert!(
            line.starts_with("20") && line.contains("Z ["),
            "a cut record does not run into the next one: {line:?}"
        );
    }
    drop(client);
    drop(server);
    drop(tmpfs);
}
