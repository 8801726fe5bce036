//! Peer authentication is on by default (SPEC section 3, README "Who may inject"): with no
//! `peer` directive the servers of a config prove a secret kept in a file beside it, created
//! on first start; a hello without a valid proof is an invalid command, logged without its
//! proof; `peer secret none` turns authentication off with a warning; a secret file that
//! cannot be read or made stops the server before it listens.

use herd_test_support::{
    client::Client,
    harness::{accepts, free_ports, log_event, refused_places_url, wait_for_log, TempDir, KEY_ENV},
    run::run_herd,
    server::Server,
};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn config(dir: &TempDir, extra: &str) -> (String, Vec<u16>) {
    let addrs = free_ports(2).unwrap();
    let text = format!(
        "server Alpha {}\nserver Beta {}\nlink Alpha Beta\n{}\nplaces key-env {KEY_ENV}\n\
         log dir {}\npeer backoff-min-ms 50\npeer backoff-max-ms 400\n{extra}\n",
        addrs[0],
        addrs[1],
        refused_places_url().unwrap(),
        dir.path().display()
    );
    (text, addrs.iter().map(|a| a.port()).collect())
}

#[track_caller]
fn wait_log(dir: &Path, server: &str, needle: &str) -> String {
    let log = dir.join(format!("{server}.log"));
    wait_for_log(&log, needle, 1, Duration::from_secs(10))
}

#[test]
fn by_default_the_herd_links_up_with_a_secret_file_it_creates_and_a_plain_hello_is_refused() {
    let dir = TempDir::new("secret").unwrap();
    let path = dir.path().to_path_buf();
    let (text, ports) = config(&dir, "");
    // Both servers start at once and race to create the file: they must agree.
    let supervisor = Server::start_all(dir, &text, ports.clone());
    wait_log(&path, "Alpha", "link up Beta");
    wait_log(&path, "Beta", "link up Alpha");
    let secret = path.join("herd.secret");
    let mode = fs::metadata(&secret)
        .expect("herd.secret beside herd.conf")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner may read it");
    let names: Vec<String> = fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains(".tmp.")),
        "no temporary file left: {names:?}"
    );

    let mut client = Client::connect(ports[0]);
    assert_eq!(client.request("HERD-HELLO Beta"), "? HERD-HELLO Beta");
    let forged = format!("HERD-HELLO Beta 1800000000 {}", "ab".repeat(32));
    assert_eq!(client.request(&forged), format!("? {forged}"));
    let forged_at = "AT Beta +0.000000000 kiwi +1+1 1";
    assert_eq!(client.request(forged_at), format!("? {forged_at}"));
    let log = wait_log(&path, "Alpha", "HERD-HELLO Beta 1800000000 <redacted>");
    assert!(
        !log.lines()
            .map(log_event)
            .any(|e| e.contains(&"ab".repeat(32))),
        "the proof is not logged"
    );
    let secret_text = fs::read_to_string(&secret).unwrap();
    assert!(
        !log.contains(secret_text.trim()),
        "the secret is not logged"
    );
    drop(supervisor);
}

#[test]
fn peer_secret_none_accepts_a_plain_hello_and_warns_at_start() {
    let server = Server::builder("Alpha")
        .line("server Beta 127.0.0.1:1")
        .line("link Alpha Beta")
        .line("peer secret none")
        .start();
    let warning = server.wait_for_stderr("peer secret none", Duration::from_secs(5));
    assert!(warning.contains("not authenticated"), "{warning}");
    server.wait_for_log("[WARN] peer secret none: links are not authenticated");
    let mut client = server.client();
    assert_eq!(client.request("HERD-HELLO Beta"), "HERD-WELCOME Alpha");
}

#[test]
fn a_secret_file_that_cannot_be_made_stops_the_server_before_it_listens() {
    let dir = TempDir::new("secret").unwrap();
    let (text, ports) = config(&dir, "peer secret-file no/such/dir/herd.secret");
    let config = dir.write("herd.conf", &text).unwrap();
    let run = run_herd(&["Alpha", config.to_str().unwrap()], dir.path());
    assert_ne!(run.status.code(), Some(0));
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(
        lines[0].contains("no/such/dir/herd.secret") && lines[0].contains("peer secret-file"),
        "names the file and the directive: {:?}",
        lines[0]
    );
    assert!(
        !accepts(([127, 0, 0, 1], ports[0]).into()),
        "no port opened"
    );
}
