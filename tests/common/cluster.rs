//! Helpers for the herd tests (SPEC section 3): a [`Herd`] of real `herd` processes started
//! from per-server config files in one temporary directory, a [`Relay`] that forwards TCP
//! between two servers and can be cut and restored, and waits on what servers know (their
//! WHATSAT replies) and what they log (`NAME.log`).
//!
//! Included by the `tests/herd_*.rs` files with `#[path = "common/cluster.rs"] mod cluster;`
//! next to `mod common;`. Every wait polls observable state until a deadline; every process
//! and thread started here is stopped on drop, also when a test panics.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::{free_port, port_accepts, wait_until, Client, TestDir, API_KEY, HERD, KEY_ENV};

/// The herd of SPEC section 4.
pub const SPEC_SERVERS: [&str; 5] = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"];
pub const SPEC_LINKS: [(&str, &str); 6] = [
    ("Clark", "Jaquez"),
    ("Clark", "Bona"),
    ("Campbell", "Bailey"),
    ("Campbell", "Bona"),
    ("Campbell", "Jaquez"),
    ("Bona", "Bailey"),
];

/// Retry delays of every test herd: small, so a link comes back within half a second.
pub const BACKOFF_MIN_MS: u64 = 50;
pub const BACKOFF_MAX_MS: u64 = 400;

/// How long a server gets to open its port.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long links get to come up (a few retries at most `BACKOFF_MAX_MS` apart).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(8);
/// How long an update gets to reach every server.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(8);
/// The log is flushed at least every 250 ms; allow for a loaded machine.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// One server of a test herd.
struct Node {
    name: String,
    port: u16,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// Servers described by one set of `server` and `link` lines, each started from its own config
/// file (so one server can be told to reach a neighbour through a relay), logging into one
/// shared temporary directory. Processes are killed (SIGKILL) and reaped on drop.
pub struct Herd {
    nodes: Vec<Node>,
    links: Vec<(String, String)>,
    /// (server, neighbour, port): in `server`'s config, `neighbour` listens on `port`.
    routes: Vec<(String, String, u16)>,
    lines: Vec<String>,
    // Last: removed after every process is gone.
    dir: TestDir,
}

impl Herd {
    /// A herd of `names` on free loopback ports with `links`, fast backoff, per-line logs on,
    /// and a Places URL on a closed port (a WHATSAT answers at once with an error JSON).
    pub fn new(names: &[&str], links: &[(&str, &str)]) -> Herd {
        let mut ports: Vec<u16> = Vec::new();
        for _ in names {
            let mut port = free_port();
            for _ in 0..100 {
                if !ports.contains(&port) {
                    break;
                }
                port = free_port();
            }
            assert!(!ports.contains(&port), "no distinct free port");
            ports.push(port);
        }
        let nodes = names
            .iter()
            .zip(ports)
            .map(|(name, port)| Node {
                name: name.to_string(),
                port,
                env: Vec::new(),
                child: None,
            })
            .collect();
        let lines = vec![
            format!("peer backoff-min-ms {BACKOFF_MIN_MS}"),
            format!("peer backoff-max-ms {BACKOFF_MAX_MS}"),
            "places url http://127.0.0.1:1/v1/places:searchNearby".to_string(),
            format!("places key-env {KEY_ENV}"),
            "log lines on".to_string(),
        ];
        Herd {
            nodes,
            links: links
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            routes: Vec::new(),
            lines,
            dir: TestDir::new(),
        }
    }

    /// The five servers and six links of SPEC section 4.
    pub fn spec() -> Herd {
        Herd::new(&SPEC_SERVERS, &SPEC_LINKS)
    }

    /// `names[0] - names[1] - ... ` in a line.
    pub fn chain(names: &[&str]) -> Herd {
        let links: Vec<(&str, &str)> = names.windows(2).map(|w| (w[0], w[1])).collect();
        Herd::new(names, &links)
    }

    /// Adds a config line for every server (written when a server starts).
    pub fn line(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }

    /// In `server`'s config, `neighbour` listens on `port` (a relay's), not on its own port.
    pub fn route(&mut self, server: &str, neighbour: &str, port: u16) {
        self.node(server);
        self.node(neighbour);
        self.routes
            .push((server.to_string(), neighbour.to_string(), port));
    }

    /// Sets an environment variable for `server`'s process.
    pub fn env(&mut self, server: &str, var: &str, value: &str) {
        let node = self.node_mut(server);
        node.env.retain(|(v, _)| v != var);
        node.env.push((var.to_string(), value.to_string()));
    }

    /// Sets an environment variable for every server's process.
    pub fn env_all(&mut self, var: &str, value: &str) {
        for name in self.names() {
            self.env(&name, var, value);
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn links(&self) -> &[(String, String)] {
        &self.links
    }

    pub fn port(&self, name: &str) -> u16 {
        self.node(name).port
    }

    /// The servers `name` is linked with, in config order.
    pub fn neighbours(&self, name: &str) -> Vec<String> {
        self.links
            .iter()
            .filter_map(|(a, b)| {
                if a == name {
                    Some(b.clone())
                } else if b == name {
                    Some(a.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no server {name} in this test herd"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no server {name} in this test herd"))
    }

    /// The config `name` is started with.
    pub fn config_text(&self, name: &str) -> String {
        let mut text = format!("# written by the herd integration tests for {name}\n");
        for node in &self.nodes {
            let port = self
                .routes
                .iter()
                .find(|(server, neighbour, _)| server == name && *neighbour == node.name)
                .map_or(node.port, |route| route.2);
            text.push_str(&format!("server {} 127.0.0.1:{port}\n", node.name));
        }
        for (a, b) in &self.links {
            text.push_str(&format!("link {a} {b}\n"));
        }
        text.push_str(&format!("log dir {}\n", self.dir.path().display()));
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Starts `name` (again, after [`kill`](Herd::kill)) and waits until its port accepts.
    pub fn start(&mut self, name: &str) {
        assert!(!self.is_running(name), "{name} is already running");
        let config = self
            .dir
            .write(&format!("{name}.conf"), &self.config_text(name));
        let stderr_path = self.stderr_path(name);
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("open stderr file");
        let node = self.node(name);
        let mut command = Command::new(HERD);
        command
            .arg(name)
            .arg(&config)
            .current_dir(self.dir.path())
            .env(KEY_ENV, API_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        for (var, value) in &node.env {
            command.env(var, value);
        }
        let port = node.port;
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {HERD}: {e}"));
        self.node_mut(name).child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if port_accepts(port) {
                return;
            }
            let exited = match self.node_mut(name).child.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                self.node_mut(name).child = None;
                panic!(
                    "herd {name} exited with {status} before opening 127.0.0.1:{port}; \
                     stderr:\n{}",
                    self.stderr_text(name)
                );
            }
            assert!(
                Instant::now() < deadline,
                "herd {name} did not open 127.0.0.1:{port} within {START_TIMEOUT:?}; stderr:\n{}",
                self.stderr_text(name)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts every server that is not running, in config order.
    pub fn start_all(&mut self) {
        for name in self.names() {
            if !self.is_running(&name) {
                self.start(&name);
            }
        }
    }

    /// Kills `name` with SIGKILL (no flush, no goodbye: a crash) and reaps it.
    pub fn kill(&mut self, name: &str) {
        let node = self.node_mut(name);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("{name} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// True while `name` was started and has not exited.
    pub fn is_running(&mut self, name: &str) -> bool {
        match self.node_mut(name).child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A new client connection to `name`.
    pub fn client(&self, name: &str) -> Client {
        Client::connect(self.port(name))
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn stderr_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.stderr"))
    }

    fn stderr_text(&self, name: &str) -> String {
        read_lossy(&self.stderr_path(name))
    }

    /// `name`'s log as text so far (across restarts: the log is appended to).
    pub fn log(&self, name: &str) -> String {
        read_lossy(&self.log_path(name))
    }

    /// How many lines of `name`'s log contain `needle`.
    pub fn count_in_log(&self, name: &str, needle: &str) -> usize {
        self.log(name)
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits until at least `at_least` lines of `name`'s log contain `needle`; returns the log.
    pub fn wait_log_count(&self, name: &str, needle: &str, at_least: usize) -> String {
        self.wait_log_count_for(name, needle, at_least, LOG_TIMEOUT)
    }

    pub fn wait_log_count_for(
        &self,
        name: &str,
        needle: &str,
        at_least: usize,
        timeout: Duration,
    ) -> String {
        let mut log = String::new();
        let found = wait_until(timeout, || {
            log = self.log(name);
            log.lines().filter(|line| line.contains(needle)).count() >= at_least
        });
        assert!(
            found,
            "{name}'s log did not get {at_least} line(s) with {needle:?} within {timeout:?}; \
             it holds:\n{}",
            tail(&log, 60)
        );
        log
    }

    /// How many times `from`'s outbound link to `to` came up and finished its resync.
    pub fn link_syncs(&self, from: &str, to: &str) -> usize {
        self.count_in_log(from, &format!("link sync {to}: sent "))
    }

    /// Waits until `from`'s link to `to` has come up and finished its resync `at_least` times.
    pub fn wait_link_syncs(&self, from: &str, to: &str, at_least: usize) {
        self.wait_log_count_for(
            from,
            &format!("link sync {to}: sent "),
            at_least,
            LINK_TIMEOUT,
        );
    }

    /// Waits until every link between two running servers is up and resynced, both ways
    /// (for a herd started once: each direction's first `link sync`).
    pub fn wait_all_linked(&mut self) {
        let links = self.links.clone();
        for (a, b) in &links {
            if self.is_running(a) && self.is_running(b) {
                self.wait_link_syncs(a, b, 1);
                self.wait_link_syncs(b, a, 1);
            }
        }
    }

    /// Waits until `name`'s log holds every line logged before this call: sends a unique
    /// invalid command and waits for its logged `? ` reply (needs `log lines on`).
    pub fn sync_log(&self, name: &str) {
        static MARKS: AtomicUsize = AtomicUsize::new(0);
        let mark = format!(
            "HERD-TEST-MARK-{}-{}",
            std::process::id(),
            MARKS.fetch_add(1, Ordering::SeqCst)
        );
        let mut client = self.client(name);
        assert_eq!(client.request(&mark), format!("? {mark}"), "mark at {name}");
        self.wait_log_count(name, &format!("? {mark}"), 1);
    }

    /// Waits until `server` holds exactly `line` for each `(client id, line)`.
    pub fn wait_knows(&self, server: &str, expected: &[(String, String)]) {
        let mut client = self.client(server);
        let mut pending: Vec<&(String, String)> = expected.iter().collect();
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let mut report = String::new();
            pending.retain(|(id, want)| {
                let held = known_line(&mut client, id);
                let done = held.as_deref() == Some(want.as_str());
                if !done {
                    report.push_str(&format!("  {id}: want {want:?}\n        has  {held:?}\n"));
                }
                !done
            });
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{server} did not converge within {CONVERGE_TIMEOUT:?}:\n{report}\
                 {server}'s log:\n{}",
                tail(&self.log(server), 60)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every server in `servers` holds exactly the expected lines.
    pub fn wait_converged(&self, servers: &[&str], expected: &[(String, String)]) {
        for server in servers {
            self.wait_knows(server, expected);
        }
    }

    /// What `server` holds for `id` now (see [`known_line`]).
    pub fn known(&self, server: &str, id: &str) -> Option<String> {
        known_line(&mut self.client(server), id)
    }

    /// Sends `IAMAT id location time` to `server`; checks the reply is that server's AT line
    /// for it and returns the line.
    pub fn iamat(&self, server: &str, id: &str, location: &str, time: &str) -> String {
        let reply = self.client(server).iamat(id, location, time);
        let fields: Vec<&str> = reply.split(' ').collect();
        assert!(
            fields.len() == 6
                && fields[0] == "AT"
                && fields[1] == server
                && fields[3..] == [id, location, time],
            "IAMAT {id} {location} {time} at {server} answered {reply:?}"
        );
        reply
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            // Shown with the failed test's output: what each server saw.
            for node in &self.nodes {
                eprintln!(
                    "----- {} (port {}) log tail -----\n{}\n----- {} stderr -----\n{}",
                    node.name,
                    node.port,
                    tail(&read_lossy(&self.log_path(&node.name)), 40),
                    node.name,
                    read_lossy(&self.stderr_path(&node.name)),
                );
            }
        }
    }
}

/// What the server behind `client` holds for `id`: the AT line its WHATSAT reply starts with,
/// or None when it answers `? ` (an unknown client). The herd's Places URL is a closed port, so
/// the reply is the AT line, an error JSON and a blank line.
pub fn known_line(client: &mut Client, id: &str) -> Option<String> {
    let command = format!("WHATSAT {id} 1 1");
    let first = client.request(&command);
    if first.starts_with("? ") {
        assert_eq!(first, format!("? {command}"), "an unknown client's reply");
        return None;
    }
    let rest = client.read_until_blank_line();
    assert!(
        rest.ends_with("}\n\n"),
        "WHATSAT reply ends with JSON and a blank line: {first:?} {rest:?}"
    );
    Some(first)
}

/// The last `count` lines of `text`.
pub fn tail(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

fn read_lossy(path: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// The event part of a log line: what follows the `[LEVEL] ` after the timestamp.
pub fn log_event(line: &str) -> &str {
    match line.find("] ") {
        Some(at) => &line[at + 2..],
        None => line,
    }
}

/// The timestamp at the start of a log line (RFC 3339, UTC, `Z` or `+00:00`, any number of
/// fractional digits up to 9) as nanoseconds since the Unix epoch.
pub fn log_time_nanos(line: &str) -> Option<i128> {
    let stamp = line.split(' ').next()?;
    let stamp = stamp
        .strip_suffix('Z')
        .or_else(|| stamp.strip_suffix("+00:00"))?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (parts.next()??, parts.next()??, parts.next()??);
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_nanos: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(secs as i128 * 1_000_000_000 + frac_nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the well-known era-based formula).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

fn accept_loop(listener: TcpListener, shared: Arc<RelayShared>) {
    for incoming in listener.incoming() {
        let mut state = shared.state();
        if state.stopping {
            return;
        }
        let Ok(client) = incoming else {
            drop(state);
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

/// A raw connection that plays a neighbour (or an impostor) by hand.
pub struct RawPeer {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl RawPeer {
    pub fn connect(port: u16) -> RawPeer {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set_read_timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .expect("set_write_timeout");
        RawPeer {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local_addr").port()
    }

    /// Sends `line` and `\n`.
    pub fn send_line(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to server");
    }

    /// Reads one line (without `\n`); panics on EOF, error or timeout.
    pub fn read_line(&mut self) -> String {
        let mut chunk = [0u8; 4096];
        for _ in 0..10_000 {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "server closed the connection; expected a line (have {:?})",
                    String::from_utf8_lossy(&self.pending)
                ),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading a line failed: {e}"),
            }
        }
        panic!("no line after 10000 reads");
    }

    /// Waits for the server to drop the connection: EOF or a reset, with nothing more sent.
    /// Returns how it ended ("eof" or the error), or panics if the connection stays open or
    /// the server sends bytes.
    pub fn expect_dropped(&mut self) -> String {
        assert!(
            self.pending.is_empty(),
            "unread bytes before the drop: {:?}",
            String::from_utf8_lossy(&self.pending)
        );
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => "eof".to_string(),
            Ok(n) => panic!(
                "expected the connection to be dropped, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => format!("{e}"),
            Err(e) => panic!("expected the connection to be dropped, got error {e}"),
        }
    }
}
