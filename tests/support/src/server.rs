//! One `herd` server under test (or a `herd --all` supervisor), started through the harness
//! from a generated config, with its log and stderr at hand; and the per-connection records
//! of its log (`accept conn=ID`, `recv conn=ID ...`).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::client::Client;
use crate::fake_places::FakePlaces;
use crate::harness::{
    self, herd_bin, refused_places_url, wait_for, Herd, HerdConfig, Process, TempDir, KEY_ENV,
    LOG_TIMEOUT,
};

/// Builds a one-server config and starts `herd NAME CONFIG` on a port it picks.
pub struct ServerBuilder {
    name: String,
    places_lines: Vec<String>,
    extra_lines: Vec<String>,
    with_key: bool,
    open_files: Option<u32>,
}

impl ServerBuilder {
    /// Points `places` at the fake with the new API.
    pub fn places(mut self, fake: &FakePlaces) -> ServerBuilder {
        self.places_lines = vec![
            "places api new".to_string(),
            format!("places url {}", fake.new_api_url()),
        ];
        self
    }

    /// Points `places` at the fake with the legacy API.
    pub fn legacy(mut self, fake: &FakePlaces) -> ServerBuilder {
        self.places_lines = vec![
            "places api legacy".to_string(),
            format!("places url {}", fake.legacy_url()),
        ];
        self
    }

    /// Adds one config line (`limit line-bytes 100`, `log lines off`, ...).
    pub fn line(mut self, line: &str) -> ServerBuilder {
        self.extra_lines.push(line.to_string());
        self
    }

    /// Starts the server with this open-file limit, soft and hard (through `prlimit`).
    pub fn open_files(mut self, limit: u32) -> ServerBuilder {
        self.open_files = Some(limit);
        self
    }

    /// Starts the server without the key variable in its environment.
    pub fn without_key(mut self) -> ServerBuilder {
        self.with_key = false;
        self
    }

    /// Writes the config and starts the server; waits until its port accepts a connection.
    /// A port taken by someone else between picking it and the bind is retried.
    #[track_caller]
    pub fn start(self) -> Server {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let mut config = HerdConfig::single(&self.name).expect("a free port");
            for line in self.places_lines.iter().chain(&self.extra_lines) {
                config = config.with(line);
            }
            let mut herd = Herd::new(&herd_bin(), config, "test").expect("a test herd");
            if !self.with_key {
                herd.env[0].push((KEY_ENV.to_string(), None));
            }
            herd.open_files = self.open_files;
            match herd.start_server(0) {
                Ok(()) => {
                    return Server {
                        port: herd.config.addrs[0].port(),
                        kind: Kind::One(herd),
                    }
                }
                Err(error) => last_error = error,
            }
        }
        panic!("{last_error}");
    }
}

enum Kind {
    One(Herd),
    All { process: Process, _dir: TempDir },
}

/// A running `herd` process (one server, or a `--all` supervisor), killed and reaped on drop.
pub struct Server {
    kind: Kind,
    /// The port of the server (the first one for `--all`).
    pub port: u16,
}

impl Server {
    pub fn builder(name: &str) -> ServerBuilder {
        ServerBuilder {
            name: name.to_string(),
            // No fake given: the default api (new) at a closed local port.
            places_lines: vec![refused_places_url().expect("a free port")],
            extra_lines: Vec::new(),
            with_key: true,
            open_files: None,
        }
    }

    /// Starts `herd --all CONFIG` (`config_text` is written to `dir/herd.conf`) and waits until
    /// all `ports` accept (none: returns at once). The servers it starts are killed on drop too.
    #[track_caller]
    pub fn start_all(dir: TempDir, config_text: &str, ports: Vec<u16>) -> Server {
        let mut process = harness::spawn_all(&dir, config_text).expect("spawn herd --all");
        let addrs: Vec<_> = ports.iter().map(|&p| ([127, 0, 0, 1], p).into()).collect();
        if let Err(why) = process.wait_listening(&addrs) {
            panic!("herd --all {why}");
        }
        Server {
            port: ports.first().copied().unwrap_or(0),
            kind: Kind::All { process, _dir: dir },
        }
    }

    fn process(&self) -> &Process {
        match &self.kind {
            Kind::One(herd) => herd.process(0).expect("the server was started"),
            Kind::All { process, .. } => process,
        }
    }

    fn process_mut(&mut self) -> &mut Process {
        match &mut self.kind {
            Kind::One(herd) => herd.process_mut(0).expect("the server was started"),
            Kind::All { process, .. } => process,
        }
    }

    pub fn dir(&self) -> &Path {
        match &self.kind {
            Kind::One(herd) => herd.dir.path(),
            Kind::All { _dir, .. } => _dir.path(),
        }
    }

    /// `NAME.log` of a single server (a `--all` supervisor has no log of its own).
    pub fn log_path(&self) -> PathBuf {
        match &self.kind {
            Kind::One(herd) => herd.log_path(0),
            Kind::All { .. } => panic!("herd --all writes no log of its own"),
        }
    }

    /// The log as text (invalid UTF-8 shown lossily); empty if it does not exist yet.
    pub fn log_text(&self) -> String {
        harness::read_lossy(&self.log_path())
    }

    /// Waits until the log contains `needle`; returns the whole log then.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str) -> String {
        harness::wait_for_log(&self.log_path(), needle, 1, LOG_TIMEOUT)
    }

    pub fn stderr_text(&self) -> String {
        self.process().stderr_text()
    }

    /// Waits until stderr contains `needle`; returns the whole stderr then.
    #[track_caller]
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        wait_for(&format!("stderr to show {needle:?}"), timeout, || {
            let stderr = self.stderr_text();
            if stderr.contains(needle) {
                Ok(stderr)
            } else {
                Err(stderr)
            }
        })
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// Sends SIGTERM to the process.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `INT`) to the process.
    #[track_caller]
    pub fn signal(&self, name: &str) {
        if let Err(why) = self.process().signal(name) {
            panic!("{why}");
        }
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process_mut().wait_exit(timeout)
    }
}

/// The `conn=ID` the log gives the connection from our local `port`, from its `accept` record.
#[track_caller]
pub fn conn_id(server: &Server, local_port: u16) -> String {
    let log = server.wait_for_log(&format!("from 127.0.0.1:{local_port}"));
    harness::accepted_conn(&log, local_port)
        .unwrap_or_else(|| panic!("an `accept conn=ID from 127.0.0.1:{local_port}` in:\n{log}"))
        .to_string()
}

/// Log lines holding `event conn=ID` exactly (not `conn=ID7`).
pub fn records<'a>(log: &'a str, event: &str, id: &str) -> Vec<&'a str> {
    let needle = format!("{event} conn={id}");
    log.lines()
        .filter(|line| {
            line.match_indices(&needle).any(|(at, _)| {
                let rest = &line[at + needle.len()..];
                !rest.starts_with(|c: char| c.is_ascii_alphanumeric())
            })
        })
        .collect()
}

/// Waits until the log holds an `event conn=ID` record; returns the log then.
#[track_caller]
pub fn wait_for_record(server: &Server, event: &str, id: &str) -> String {
    let what = format!("a `{event} conn={id}` record in the log");
    wait_for(&what, LOG_TIMEOUT, || {
        let log = server.log_text();
        if records(&log, event, id).is_empty() {
            Err(log)
        } else {
            Ok(log)
        }
    })
}
