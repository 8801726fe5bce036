//! A test [`Herd`] (SPEC section 3): real `herd` processes started through the harness from
//! per-server config files in one temporary directory, and waits on what servers know (their
//! WHATSAT replies) and what they log (`NAME.log`).
//!
//! Used by the `tests/herd_*.rs` files, next to the harness and the client. Every wait polls
//! observable state until a deadline (through the harness's [`wait_until`], and like it points
//! a failure at the test's line); every process is killed on drop, also when a test panics
//! (then each server's log tail and stderr are printed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::client::Client;
use crate::harness::{
    self, herd_bin, link_indices, read_lossy, refused_places_url, tail, wait_until, HerdConfig,
    LOG_TIMEOUT, SPEC_LINKS, SPEC_SERVERS,
};

/// Retry delays of every test herd: small, so a link comes back within half a second.
pub const BACKOFF_MIN_MS: u64 = 50;
pub const BACKOFF_MAX_MS: u64 = 400;

/// How long links get to come up (a few retries at most `BACKOFF_MAX_MS` apart).
const LINK_TIMEOUT: Duration = Duration::from_secs(8);
/// How long an update gets to reach every server.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(8);

/// Servers described by one set of `server` and `link` lines, each started from its own config
/// file (so one server can be told to reach a neighbour through a relay), logging into one
/// shared temporary directory. Processes are killed (SIGKILL) and reaped on drop.
pub struct Herd {
    herd: harness::Herd,
    links: Vec<(String, String)>,
}

impl Herd {
    /// A herd of `names` on free loopback ports with `links`, fast backoff, per-line logs on,
    /// and a Places URL on a closed port (a WHATSAT answers at once with an error JSON).
    pub fn new(names: &[&str], links: &[(&str, &str)]) -> Herd {
        let indices = link_indices(names, links).unwrap_or_else(|e| panic!("{e}"));
        let config = HerdConfig::new(names, &indices)
            .expect("free ports")
            .with(&format!("peer backoff-min-ms {BACKOFF_MIN_MS}"))
            .with(&format!("peer backoff-max-ms {BACKOFF_MAX_MS}"))
            .with(&refused_places_url().expect("a free port"))
            .with("log lines on");
        Herd {
            herd: harness::Herd::new(&herd_bin(), config, "herd").expect("a test herd"),
            links: links
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
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

    #[track_caller]
    fn index(&self, name: &str) -> usize {
        match self.herd.config.index(name) {
            Some(i) => i,
            None => panic!("no server {name} in this test herd"),
        }
    }

    /// Adds a config line for every server (written when a server starts).
    pub fn line(&mut self, line: &str) {
        self.herd.config.directives.push(line.to_string());
    }

    /// Adds a config line for `server` only (after the lines for every server).
    pub fn line_for(&mut self, server: &str, line: &str) {
        let i = self.index(server);
        self.herd
            .config
            .server_directives
            .push((i, line.to_string()));
    }

    /// The directory the servers' configs and logs are in (a relative path in a config, such
    /// as `peer tls`'s, is taken from it).
    pub fn dir(&self) -> &std::path::Path {
        self.herd.dir.path()
    }

    /// Runs `herd certs` for this herd's servers into `dir` (relative to [`Herd::dir`]) and
    /// checks that it succeeded.
    #[track_caller]
    pub fn make_certs(&self, dir: &str) {
        let text = self.herd.config.text(0, self.dir());
        let config = self
            .herd
            .dir
            .write("certs.conf", &text)
            .expect("certs.conf");
        let output = std::process::Command::new(herd_bin())
            .arg("certs")
            .arg(&config)
            .arg(self.dir().join(dir))
            .output()
            .expect("herd certs runs");
        assert!(
            output.status.success(),
            "herd certs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// In `server`'s config, `neighbour` listens on `port` (a relay's), not on its own port.
    pub fn route(&mut self, server: &str, neighbour: &str, port: u16) {
        let (from, to) = (self.index(server), self.index(neighbour));
        let addr = ([127, 0, 0, 1], port).into();
        self.herd.config.routes.push((from, to, addr));
    }

    /// Sets an environment variable for `server`'s process.
    pub fn env(&mut self, server: &str, var: &str, value: &str) {
        let i = self.index(server);
        let env = &mut self.herd.env[i];
        env.retain(|(v, _)| v != var);
        env.push((var.to_string(), Some(value.to_string())));
    }

    /// Sets an environment variable for every server's process.
    pub fn env_all(&mut self, var: &str, value: &str) {
        for name in self.names() {
            self.env(&name, var, value);
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.herd.config.names.clone()
    }

    pub fn links(&self) -> &[(String, String)] {
        &self.links
    }

    pub fn port(&self, name: &str) -> u16 {
        self.herd.config.addrs[self.index(name)].port()
    }

    /// Starts `name` (again, after [`kill`](Herd::kill)) and waits until its port accepts.
    #[track_caller]
    pub fn start(&mut self, name: &str) {
        let i = self.index(name);
        if let Err(why) = self.herd.start_server(i) {
            panic!("{why}");
        }
    }

    /// Starts every server that is not running, in config order.
    #[track_caller]
    pub fn start_all(&mut self) {
        if let Err(why) = self.herd.start_all() {
            panic!("{why}");
        }
    }

    /// Kills `name` with SIGKILL (no flush, no goodbye: a crash) and reaps it.
    #[track_caller]
    pub fn kill(&mut self, name: &str) {
        let i = self.index(name);
        assert!(self.herd.is_running(i), "{name} is not running");
        self.herd.stop(i, None);
    }

    fn is_running(&mut self, name: &str) -> bool {
        let i = self.index(name);
        self.herd.is_running(i)
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) to `name`'s process.
    #[track_caller]
    pub fn signal(&self, name: &str, signal: &str) {
        let i = self.index(name);
        let process = self.herd.process(i).expect("the server is running");
        if let Err(why) = process.signal(signal) {
            panic!("{why}");
        }
    }

    /// A new client connection to `name`.
    pub fn client(&self, name: &str) -> Client {
        Client::connect(self.port(name))
    }

    /// `name`'s log as text so far (across restarts: the log is appended to).
    pub fn log(&self, name: &str) -> String {
        read_lossy(&self.herd.log_path(self.index(name)))
    }

    /// How many lines of `name`'s log contain `needle`.
    pub fn count_in_log(&self, name: &str, needle: &str) -> usize {
        self.log(name)
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits until at least `at_least` lines of `name`'s log contain `needle`; returns the log.
    #[track_caller]
    pub fn wait_log_count(&self, name: &str, needle: &str, at_least: usize) -> String {
        self.wait_log_count_for(name, needle, at_least, LOG_TIMEOUT)
    }

    #[track_caller]
    pub fn wait_log_count_for(
        &self,
        name: &str,
        needle: &str,
        at_least: usize,
        timeout: Duration,
    ) -> String {
        harness::wait_for_log(
            &self.herd.log_path(self.index(name)),
            needle,
            at_least,
            timeout,
        )
    }

    /// How many times `from`'s outbound link to `to` came up and finished its resync.
    pub fn link_syncs(&self, from: &str, to: &str) -> usize {
        self.count_in_log(from, &format!("link sync {to}: sent "))
    }

    /// Waits until `from`'s link to `to` has come up and finished its resync `at_least` times.
    #[track_caller]
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
    #[track_caller]
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
    #[track_caller]
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

    /// Waits until `server` holds exactly `line` for each `(client id, line)`; a timeout shows
    /// the ids it does not hold so (and, as the herd is dropped, every server's log tail).
    #[track_caller]
    pub fn wait_knows(&self, server: &str, expected: &[(String, String)]) {
        let mut client = self.client(server);
        let mut pending: Vec<&(String, String)> = expected.iter().collect();
        wait_until(&format!("{server} to converge"), CONVERGE_TIMEOUT, || {
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
                Ok(())
            } else {
                Err(report)
            }
        });
    }

    /// Waits until every server in `servers` holds exactly the expected lines.
    #[track_caller]
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
    #[track_caller]
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
        if thread::panicking() {
            // Shown with the failed test's output: what each server saw (once it is gone).
            for i in 0..self.herd.config.names.len() {
                self.herd.stop(i, None);
            }
            for (i, name) in self.herd.config.names.iter().enumerate() {
                eprintln!(
                    "----- {name} (port {}) log tail -----\n{}\n----- {name} stderr -----\n{}",
                    self.herd.config.addrs[i].port(),
                    tail(&read_lossy(&self.herd.log_path(i)), 40),
                    read_lossy(&self.herd.stderr_path(i)),
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
