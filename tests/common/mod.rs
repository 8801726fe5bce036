//! Helpers shared by the integration tests: loopback ports, temporary config directories, a
//! `Server` guard around the real `herd` binary, a line-oriented `Client`, and log polling.
//!
//! Every wait here polls observable state (a port accepting, a line arriving, a log record
//! appearing) until a deadline; nothing sleeps to "give the server time". Every process started
//! here is killed and reaped on drop.
#![allow(dead_code)]

pub mod fake_places;

use fake_places::FakePlaces;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test.
pub const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// The env var the test configs name in `places key-env`, and the key put in it. The key is
/// distinctive so a test can search replies and logs for it.
pub const KEY_ENV: &str = "HERD_TEST_PLACES_KEY";
pub const API_KEY: &str = "TESTKEY-q7Zx93-do-not-leak";

/// Safety net on every client read; a test that reaches it has already failed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server gets to open its port.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The server flushes its log within a second; allow for a loaded machine.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// True if something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Polls `condition` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Current POSIX time as (seconds, nanoseconds).
pub fn now() -> (i64, u32) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    (since.as_secs() as i64, since.subsec_nanos())
}

/// Current POSIX time in nanoseconds.
pub fn now_nanos() -> i128 {
    let (secs, nanos) = now();
    secs as i128 * 1_000_000_000 + nanos as i128
}

/// A client time string `offset_secs` from now, with 9 fractional digits.
pub fn time_from_now(offset_secs: i64) -> String {
    let (secs, nanos) = now();
    format!("{}.{:09}", secs + offset_secs, nanos)
}

/// Parses a decimal time or time difference (`+1.5`, `-0.000000001`, `1621464827`) to integer
/// nanoseconds, exactly. None if it is not sign? digits [. 1-9 digits].
pub fn parse_nanos(text: &str) -> Option<i128> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => (1, text),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: i128 = int.parse().ok()?;
    let frac_nanos: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(sign * (int * 1_000_000_000 + frac_nanos))
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "herd-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in this directory and returns the full path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Builds a one-server config and starts `herd NAME CONFIG` on a port it picks.
pub struct ServerBuilder {
    name: String,
    places_lines: Vec<String>,
    extra_lines: Vec<String>,
    with_key: bool,
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

    /// Starts the server without the key variable in its environment.
    pub fn without_key(mut self) -> ServerBuilder {
        self.with_key = false;
        self
    }

    /// The config text for a server listening on `port`, logging into `log_dir`.
    pub fn config_text(&self, port: u16, log_dir: &Path) -> String {
        let mut text = format!(
            "# written by the herd integration tests\nserver {} 127.0.0.1:{port}\n",
            self.name
        );
        for line in &self.places_lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!("places key-env {KEY_ENV}\n"));
        text.push_str(&format!("log dir {}\n", log_dir.display()));
        for line in &self.extra_lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Writes the config and starts the server; waits until its port accepts a connection.
    /// A port taken by someone else between `free_port()` and the bind is retried.
    pub fn start(self) -> Server {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let dir = TestDir::new();
            let port = free_port();
            let config = dir.write("herd.conf", &self.config_text(port, dir.path()));
            let mut command = Command::new(HERD);
            command.arg(&self.name).arg(&config).current_dir(dir.path());
            command.env_remove(KEY_ENV);
            if self.with_key {
                command.env(KEY_ENV, API_KEY);
            }
            match Server::spawn(command, dir, &self.name, vec![port], config) {
                Ok(server) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("herd {} did not start: {last_error}", self.name);
    }
}

/// A running `herd` process (one server, or a `--all` supervisor), killed and reaped on drop.
pub struct Server {
    child: Child,
    pub name: String,
    /// The port of the server (the first one for `--all`).
    pub port: u16,
    pub ports: Vec<u16>,
    pub config: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// `--all` starts children of its own; they are killed by pid on drop too.
    kill_descendants: bool,
    // Dropped after the process is gone (fields drop after `Drop::drop`).
    dir: TestDir,
}

impl Server {
    pub fn builder(name: &str) -> ServerBuilder {
        ServerBuilder {
            name: name.to_string(),
            // No fake given: the default api (new) at a closed local port, so no test ever
            // reaches the real Google.
            places_lines: vec![format!(
                "places url http://127.0.0.1:{}/v1/places:searchNearby",
                free_port()
            )],
            extra_lines: Vec::new(),
            with_key: true,
        }
    }

    /// Spawns `command` with stderr captured, then waits until every port in `ports` accepts.
    /// Err(description) if the process exits first or the ports stay closed.
    pub fn spawn(
        mut command: Command,
        dir: TestDir,
        name: &str,
        ports: Vec<u16>,
        config: PathBuf,
    ) -> Result<Server, String> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| format!("spawn {HERD}: {e}"))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&chunk[..n]);
                }
            });
        }
        let mut server = Server {
            child,
            name: name.to_string(),
            port: ports.first().copied().unwrap_or(0),
            ports,
            config,
            stderr,
            kill_descendants: false,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if server.ports.iter().all(|&port| port_accepts(port)) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                // Let the stderr thread catch up with what the process wrote before exiting.
                thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "exited with {status}; stderr: {}",
                    server.stderr_text()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "ports {:?} not open after {START_TIMEOUT:?}; stderr: {}",
                    server.ports,
                    server.stderr_text()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `herd --all CONFIG` (`config_text` is written to `dir/herd.conf`) and waits until
    /// all `ports` accept (none: returns at once).
    pub fn start_all(dir: TestDir, config_text: &str, ports: Vec<u16>) -> Server {
        let config = dir.write("herd.conf", config_text);
        let mut command = Command::new(HERD);
        command.arg("--all").arg(&config).current_dir(dir.path());
        command.env(KEY_ENV, API_KEY);
        match Server::spawn(command, dir, "--all", ports, config) {
            Ok(mut server) => {
                server.kill_descendants = true;
                server
            }
            Err(error) => panic!("herd --all did not start: {error}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.name))
    }

    /// The log as text (invalid UTF-8 shown lossily); empty if it does not exist yet.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Waits until the log contains `needle`; returns the whole log then.
    pub fn wait_for_log(&self, needle: &str) -> String {
        wait_for_log(&self.log_path(), needle, LOG_TIMEOUT)
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits until stderr contains `needle`; returns the whole stderr then.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        if wait_until(timeout, || self.stderr_text().contains(needle)) {
            self.stderr_text()
        } else {
            panic!(
                "stderr of {} never showed {needle:?} within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr_text()
            )
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// Sends SIGTERM to the process (through the `kill` utility).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `INT`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let descendants = if self.kill_descendants {
            descendants_of(self.child.id())
        } else {
            Vec::new()
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in descendants {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Pids of every process below `root`, read from /proc (Linux).
pub fn descendants_of(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the ")" closing the command name: state, ppid, ...
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// Waits until the file at `path` contains `needle`; returns its text then, or panics with
/// what it did contain.
pub fn wait_for_log(path: &Path, needle: &str, timeout: Duration) -> String {
    let read = || String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    if wait_until(timeout, || read().contains(needle)) {
        read()
    } else {
        panic!(
            "log {} never showed {needle:?} within {timeout:?}; it holds:\n{}",
            path.display(),
            read()
        )
    }
}

/// The output of a `herd` run that is expected to exit by itself.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs `herd ARGS` in `cwd` and waits (at most 10 s) for it to exit.
pub fn run_herd(args: &[&str], cwd: &Path) -> Finished {
    let mut child = Command::new(HERD)
        .args(args)
        .current_dir(cwd)
        .env(KEY_ENV, API_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herd");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herd {args:?} did not exit within 10 s");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// One reply to WHATSAT: the AT line, the JSON text between it and the blank line, and the
/// whole reply as received (ending in the blank line).
pub struct WhatsatReply {
    pub at_line: String,
    pub json_text: String,
    pub raw: String,
}

impl WhatsatReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.json_text)
            .unwrap_or_else(|e| panic!("WHATSAT reply is not JSON ({e}):\n{}", self.raw))
    }
}

/// Checks the framing every WHATSAT reply must have (SPEC section 2): the stored AT line, JSON
/// with no blank line inside, then one empty line. Returns the parsed JSON.
pub fn check_framing(reply: &WhatsatReply, at_line: &str) -> serde_json::Value {
    assert_eq!(
        reply.at_line, at_line,
        "first line is the stored AT line:\n{}",
        reply.raw
    );
    assert!(
        reply.raw.ends_with("}\n\n"),
        "reply ends with the JSON's '}}' and a blank line: {:?}",
        reply.raw
    );
    let body = &reply.raw[..reply.raw.len() - 2];
    assert!(
        !body.contains("\n\n"),
        "no blank line inside the reply: {:?}",
        reply.raw
    );
    assert!(
        reply.json_text.starts_with('{'),
        "JSON starts right after the AT line: {:?}",
        reply.raw
    );
    reply.json()
}

/// The ids of the places in `json[list]` (`places`/`id` or `results`/`place_id`).
pub fn place_ids(json: &serde_json::Value, list: &str, id_key: &str) -> Vec<String> {
    json[list]
        .as_array()
        .unwrap_or_else(|| panic!("{list:?} is an array in {json}"))
        .iter()
        .map(|place| place[id_key].as_str().expect("place id").to_string())
        .collect()
}

/// The ids the fake gives its first `count` places.
pub fn fake_ids(count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("FAKE{i:04}")).collect()
}

/// Checks a WHATSAT failure JSON has the new API's error shape and returns (code, status).
pub fn check_error_shape(json: &serde_json::Value) -> (i64, String) {
    let object = json
        .as_object()
        .unwrap_or_else(|| panic!("error reply is an object: {json}"));
    assert_eq!(object.len(), 1, "only an \"error\" key: {json}");
    let error = &json["error"];
    let code = error["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("error.code is a number: {json}"));
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error.message is a string: {json}"));
    assert!(!message.is_empty(), "error.message says something: {json}");
    let status = error["status"]
        .as_str()
        .unwrap_or_else(|| panic!("error.status is a string: {json}"));
    (code, status.to_string())
}

/// The `conn=ID` the log gives the connection from our local `port`, from its `accept` record.
pub fn conn_id(server: &Server, local_port: u16) -> String {
    let needle = format!("from 127.0.0.1:{local_port}");
    let log = server.wait_for_log(&needle);
    let line = log
        .lines()
        .find(|line| line.contains("accept conn=") && line.ends_with(&needle))
        .unwrap_or_else(|| panic!("an `accept conn=ID {needle}` record in:\n{log}"));
    let after = &line[line.find("accept conn=").expect("accept") + "accept conn=".len()..];
    after.split(' ').next().expect("conn id").to_string()
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
pub fn wait_for_record(server: &Server, event: &str, id: &str) -> String {
    let mut log = String::new();
    let found = wait_until(LOG_TIMEOUT, || {
        log = server.log_text();
        !records(&log, event, id).is_empty()
    });
    assert!(
        found,
        "no `{event} conn={id}` record in the log within {LOG_TIMEOUT:?}:\n{log}"
    );
    log
}

/// A line-oriented client connection with a read timeout as a safety net.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set_read_timeout");
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .expect("set_write_timeout");
        let writer = stream.try_clone().expect("clone stream");
        Client {
            reader: BufReader::new(stream),
            writer,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().expect("local_addr").port()
    }

    /// Sends `line` followed by `\n`.
    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// Sends bytes exactly as given.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to server");
    }

    /// Reads one line, which must end in `\n`; returns it without the `\n`.
    pub fn read_line_bytes(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => panic!("server closed the connection; expected a line"),
            Ok(_) => {}
            Err(e) => panic!(
                "reading a line failed ({e}); got so far: {:?}",
                String::from_utf8_lossy(&line)
            ),
        }
        assert!(
            line.ends_with(b"\n"),
            "connection ended inside a line: {:?}",
            String::from_utf8_lossy(&line)
        );
        line.pop();
        line
    }

    /// Reads one UTF-8 line without its `\n`.
    pub fn read_line(&mut self) -> String {
        let line = self.read_line_bytes();
        String::from_utf8(line)
            .unwrap_or_else(|e| panic!("reply line is not UTF-8: {:?}", e.as_bytes()))
    }

    /// Reads lines up to and including the first empty line; returns them as received (each
    /// with its `\n`, so the text ends in `\n\n`).
    pub fn read_until_blank_line(&mut self) -> String {
        let mut text = String::new();
        for _ in 0..100_000 {
            let line = self.read_line();
            text.push_str(&line);
            text.push('\n');
            if line.is_empty() {
                return text;
            }
        }
        panic!("no blank line after 100000 lines:\n{text}");
    }

    /// Reads one WHATSAT reply: AT line, JSON, blank line.
    pub fn read_whatsat_reply(&mut self) -> WhatsatReply {
        let raw = self.read_until_blank_line();
        let (at_line, rest) = raw.split_once('\n').expect("reply has a first line");
        let json_text = rest.strip_suffix("\n\n").unwrap_or(rest).to_string();
        WhatsatReply {
            at_line: at_line.to_string(),
            json_text,
            raw: raw.clone(),
        }
    }

    /// Sends one command and reads its one-line reply.
    pub fn request(&mut self, line: &str) -> String {
        self.send(line);
        self.read_line()
    }

    /// Sends `IAMAT client location time` and returns the AT reply line.
    pub fn iamat(&mut self, client: &str, location: &str, time: &str) -> String {
        self.request(&format!("IAMAT {client} {location} {time}"))
    }

    /// Shuts down the sending side (the server sees EOF).
    pub fn shutdown_write(&self) {
        self.writer
            .shutdown(Shutdown::Write)
            .expect("shutdown write");
    }

    /// Expects the server to have closed the connection: the next read sees EOF (a reset is
    /// reported as such, not accepted).
    pub fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) if rest.is_empty() => {}
            Ok(_) => panic!(
                "expected EOF, got more bytes: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("expected EOF, but the connection stayed open for {READ_TIMEOUT:?}")
            }
            Err(e) => panic!("expected EOF, got error {e}"),
        }
    }

    /// True if nothing arrives within `wait` (the connection is still open and quiet).
    pub fn is_quiet_for(&mut self, wait: Duration) -> bool {
        self.reader
            .get_ref()
            .set_read_timeout(Some(wait))
            .expect("set_read_timeout");
        let quiet = match self.reader.fill_buf() {
            // Data, or EOF: either way something happened.
            Ok(_) => false,
            Err(e) => e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut,
        };
        self.reader
            .get_ref()
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set_read_timeout");
        quiet
    }
}

/// The AT line a server named `server` gives for this IAMAT, checked field by field; returns
/// the time difference in nanoseconds.
pub fn check_at_line(reply: &str, server: &str, client: &str, location: &str, time: &str) -> i128 {
    let fields: Vec<&str> = reply.split(' ').collect();
    assert_eq!(
        fields.len(),
        6,
        "AT reply has 6 single-space-separated fields: {reply:?}"
    );
    assert_eq!(fields[0], "AT", "reply {reply:?}");
    assert_eq!(fields[1], server, "server name in {reply:?}");
    assert_eq!(fields[3], client, "client id copied in {reply:?}");
    assert_eq!(fields[4], location, "location copied in {reply:?}");
    assert_eq!(fields[5], time, "time copied in {reply:?}");
    check_diff_format(fields[2])
}

/// Checks `+D.DDDDDDDDD` / `-D.DDDDDDDDD` (sign, digits, exactly 9 fractional digits) and
/// returns the value in nanoseconds.
pub fn check_diff_format(diff: &str) -> i128 {
    let bytes = diff.as_bytes();
    assert!(
        matches!(bytes.first(), Some(b'+') | Some(b'-')),
        "time difference {diff:?} starts with + or -"
    );
    let (int, frac) = diff[1..]
        .split_once('.')
        .unwrap_or_else(|| panic!("time difference {diff:?} has a '.'"));
    assert!(
        !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()),
        "integer part of {diff:?} is digits"
    );
    assert!(
        frac.len() == 9 && frac.bytes().all(|b| b.is_ascii_digit()),
        "time difference {diff:?} has exactly 9 fractional digits"
    );
    parse_nanos(diff).expect("diff parses")
}
