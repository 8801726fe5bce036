//! The one harness of the integration tests (tests/) and the load bench (bench/): free loopback
//! ports, temporary directories, herd config text, `herd` processes, and reading their logs
//! (one timestamp parser, one reader of `recv`/`send` records).
//!
//! It also holds the one wait of the tests and the bench: [`wait_until`] and [`wait_for`] (they
//! panic at the test's own line, saying what they waited for and how long) and [`poll`] (for a
//! helper that reports a timeout its own way), all on one polling loop, [`poll_every`]. No test
//! writes a loop of its own around a sleep. And [`skip_test`]: a test that cannot run here says
//! so on stderr.
//!
//! std only and no `use` of any other test module. Every process started here is killed and
//! reaped on drop (also while a panic unwinds), every directory removed; every wait polls what
//! it waits for (a port accepting, a log line) until a deadline.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// The `herd` binary the running test or bench is for. Cargo 1.94 and later put its path in
/// `CARGO_BIN_EXE_herd` while running the root package's tests and benches; older Cargo sets
/// that only when compiling them (not this library), so then it is the `herd` that Cargo
/// built beside the running binary (`target/PROFILE/deps/NAME-HASH` -> `target/PROFILE/herd`).
pub fn herd_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_herd") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    dir.join(format!("herd{}", std::env::consts::EXE_SUFFIX))
}

/// The env var every generated config names in `places key-env`, and the key put in it: never
/// a real key from the caller's environment, and distinctive, so a test can search replies and
/// logs for it.
pub const KEY_ENV: &str = "HERD_TEST_PLACES_KEY";
pub const API_KEY: &str = "TESTKEY-q7Zx93-do-not-leak";

/// How long a server gets to open its port.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The server flushes its log at least every 250 ms; allow for a loaded machine.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// A shell prefix that raises the open-file limit to the hard limit and execs `"$0" "$@"`
/// (the bench's scenario 4 holds 10,000 connections; a process cannot raise its own limit
/// without libc, the shell's `ulimit` can).
pub const RAISE_NOFILE: &str =
    r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@""#;

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

/// `n` distinct loopback addresses that were free a moment ago (held open together so they
/// differ, then released).
pub fn free_ports(n: usize) -> Result<Vec<SocketAddr>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

/// A `places url` directive for a loopback port nobody listens on: a lookup fails at once
/// with "connection refused", and no test or bench run ever reaches the real Google.
///
/// The port is a privileged one, below the kernel's ephemeral range, so nothing a test binds
/// (`127.0.0.1:0`: a fake Places, a server) can ever be given it. A free ephemeral port,
/// released, could be: a fake Places another test started then received this server's
/// lookups, and that test counted a call too many.
pub fn refused_places_url() -> Result<String, String> {
    static REFUSED: OnceLock<Option<SocketAddr>> = OnceLock::new();
    let addr = REFUSED
        .get_or_init(|| {
            (1..1024)
                .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
                .find(|addr| !accepts(*addr))
        })
        .ok_or("every loopback port below 1024 accepts connections")?;
    Ok(format!("places url http://{addr}/v1/places:searchNearby"))
}

/// True if something accepts TCP connections on `addr`.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// How often a wait looks again: small, so a test goes on within milliseconds of what it
/// waits for, and large enough that a look (reading a log, a request) costs little.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// What one look of a wait ([`wait_until`], [`wait_for`], [`poll`]) found: `true`, `Some(value)`
/// or `Ok(value)` when what it waits for is there, the value being what the wait returns;
/// `false`, `None` or `Err(seen)` when it is not there yet, an `Err` saying what the look saw
/// instead (a wait that times out shows the last one).
pub trait Found<T> {
    /// Ok with the value, or Err with what was seen instead (if the look said).
    fn found(self) -> Result<T, Option<String>>;
}

impl Found<()> for bool {
    fn found(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Found<T> for Option<T> {
    fn found(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: fmt::Display> Found<T> for Result<T, E> {
    fn found(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// A wait that timed out: how long it waited, and what its last look saw (if it said).
#[derive(Debug)]
pub struct TimedOut {
    pub waited: Duration,
    pub last: Option<String>,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:.1?}", self.waited)?;
        match &self.last {
            Some(last) => write!(f, "; the last look saw:\n{last}"),
            None => Ok(()),
        }
    }
}

/// Waits until `condition` holds (see [`Found`]: a `bool`, or a `Result` whose `Err` says what
/// is there instead). If `timeout` passes first it panics, at the caller's line, naming `what`
/// it waited for and for how long: `wait_until("Alpha to stop listening", TIMEOUT, || ...)`.
#[track_caller]
pub fn wait_until<F: Found<()>>(what: &str, timeout: Duration, condition: impl FnMut() -> F) {
    wait_for(what, timeout, condition)
}

/// Waits until `probe` finds what it looks for (`Some(value)` or `Ok(value)`, see [`Found`])
/// and returns it. If `timeout` passes first it panics, at the caller's line, naming `what` it
/// waited for, for how long, and what the last look saw: `let page = wait_for("a metrics page",
/// TIMEOUT, || scrape(addr))`.
#[track_caller]
pub fn wait_for<T, F: Found<T>>(what: &str, timeout: Duration, probe: impl FnMut() -> F) -> T {
    match poll(timeout, probe) {
        Ok(value) => value,
        Err(timed_out) => panic!("waiting for {what}: {timed_out}"),
    }
}

/// [`poll_every`] at [`POLL_INTERVAL`]: the wait of a helper that reports a timeout its own way
/// (an `Err`, a `bool`, a message with more than the last look).
pub fn poll<T, F: Found<T>>(timeout: Duration, probe: impl FnMut() -> F) -> Result<T, TimedOut> {
    poll_every(POLL_INTERVAL, timeout, probe)
}

/// The one polling loop of the tests and the bench, under every wait: looks with `probe` at
/// once, then every `interval`, until it finds what it waits for (Ok with the value) or
/// `timeout` has passed (Err with how long it waited and what the last look saw). It always
/// looks once, and once more at the deadline.
pub fn poll_every<T, F: Found<T>>(
    interval: Duration,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> Result<T, TimedOut> {
    let started = Instant::now();
    loop {
        let last = match probe().found() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(TimedOut { waited, last });
        }
        thread::sleep(interval.min(timeout - waited));
    }
}

/// Says on stderr, on a line of its own, that `what` did not run `because` (a tool is not
/// installed, mounting needs root): a check that cannot run here never passes silently. It
/// writes to the process's stderr, not through `eprintln!`, which the test harness keeps back
/// unless the test fails; in one write, so the line is never cut by another test's output.
pub fn report_skip(what: &str, because: &str) {
    let line = format!("skipped: {what} because {because}\n");
    let _ = io::stderr().write_all(line.as_bytes());
}

/// [`report_skip`] for the whole running test (named after its thread, as the test harness
/// names it); the test returns after it.
pub fn skip_test(because: &str) {
    let thread = thread::current();
    report_skip(thread.name().unwrap_or("a test"), because);
}

/// The path of the program `name` on `PATH`, if it is installed.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The path of the program `name`, or None after [`skip_test`] said it is not installed
/// (`hint`: how to install it): `let Some(promtool) = program_or_skip("promtool", "...") else
/// { return };`.
pub fn program_or_skip(name: &str, hint: &str) -> Option<PathBuf> {
    let found = find_program(name);
    if found.is_none() {
        skip_test(&format!("{name} is not installed ({hint})"));
    }
    found
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "herd-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in this directory and returns the full path.
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf, String> {
        let path = self.path.join(name);
        fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A herd to generate: servers on free loopback ports, links, and directives for every server.
#[derive(Clone)]
pub struct HerdConfig {
    pub names: Vec<String>,
    pub addrs: Vec<SocketAddr>,
    /// Indices into `names`, each link once.
    pub links: Vec<(usize, usize)>,
    /// Extra lines (`log lines off`, `places url ...`), after the generated ones.
    pub directives: Vec<String>,
    /// (server, neighbour, addr): in `server`'s config, `neighbour` listens on `addr` (a
    /// relay's) instead of its own address.
    pub routes: Vec<(usize, usize, SocketAddr)>,
    /// (server, line): extra lines for one server's config only, after `directives`.
    pub server_directives: Vec<(usize, String)>,
}

impl HerdConfig {
    /// `names` on distinct free loopback ports, linked by `links` (indices into `names`).
    pub fn new(names: &[impl AsRef<str>], links: &[(usize, usize)]) -> Result<HerdConfig, String> {
        Ok(HerdConfig {
            names: names.iter().map(|n| n.as_ref().to_string()).collect(),
            addrs: free_ports(names.len())?,
            links: links.to_vec(),
            directives: Vec::new(),
            routes: Vec::new(),
            server_directives: Vec::new(),
        })
    }

    /// One server, no links.
    pub fn single(name: &str) -> Result<HerdConfig, String> {
        HerdConfig::new(&[name], &[])
    }

    /// Adds a directive line for every server, e.g. `log lines off`.
    pub fn with(mut self, directive: &str) -> HerdConfig {
        self.directives.push(directive.to_string());
        self
    }

    /// The index of server `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The config `names[server]` is started with: every server (as `server` sees them, through
    /// its routes), every link, `log dir`, `places key-env`, one `peer secret-file` for the
    /// whole herd, then the directives.
    pub fn text(&self, server: usize, log_dir: &Path) -> String {
        let mut text = format!(
            "# generated by the herd test harness for {}\n",
            self.names[server]
        );
        for (i, (name, addr)) in self.names.iter().zip(&self.addrs).enumerate() {
            let addr = self
                .routes
                .iter()
                .find(|&&(from, to, _)| from == server && to == i)
                .map_or(*addr, |route| route.2);
            text += &format!("server {name} {addr}\n");
        }
        for &(a, b) in &self.links {
            text += &format!("link {} {}\n", self.names[a], self.names[b]);
        }
        text += &format!("log dir {}\n", log_dir.display());
        text += &format!("places key-env {KEY_ENV}\n");
        // Each server has its own config file, so the default secret file beside it would differ
        // per server: the herd shares one (a directive below may name another source).
        text += &format!(
            "peer secret-file {}\n",
            log_dir.join("herd.secret").display()
        );
        for directive in &self.directives {
            text += directive;
            text.push('\n');
        }
        for (_, directive) in self.server_directives.iter().filter(|(i, _)| *i == server) {
            text += directive;
            text.push('\n');
        }
        text
    }
}

/// Links given by server names as index pairs into `names`; Err names a link to a server that
/// is not there.
pub fn link_indices(
    names: &[impl AsRef<str>],
    links: &[(impl AsRef<str>, impl AsRef<str>)],
) -> Result<Vec<(usize, usize)>, String> {
    let index = |name: &str| names.iter().position(|n| n.as_ref() == name);
    links
        .iter()
        .map(|(a, b)| match (index(a.as_ref()), index(b.as_ref())) {
            (Some(i), Some(j)) => Ok((i, j)),
            _ => Err(format!(
                "link {} {} names an unknown server",
                a.as_ref(),
                b.as_ref()
            )),
        })
        .collect()
}

/// A running `herd` process (a server, or a `herd --all` supervisor), its stderr appended to a
/// file. Killed (SIGKILL) and reaped on drop; with `kill_descendants`, so are the processes it
/// started.
pub struct Process {
    child: Child,
    stderr_path: PathBuf,
    pub kill_descendants: bool,
}

impl Process {
    /// Starts `command` with stdin and stdout on /dev/null and stderr appended to `stderr_path`
    /// (a file: once the process has exited, everything it wrote is there).
    pub fn spawn(mut command: Command, stderr_path: &Path) -> Result<Process, String> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_path)
            .map_err(|e| format!("{}: {e}", stderr_path.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", command.get_program()))?;
        Ok(Process {
            child,
            stderr_path: stderr_path.to_path_buf(),
            kill_descendants: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, || self.child.try_wait().ok().flatten()).ok()
    }

    /// Sends the signal `name` (`TERM`, `INT`) through the `kill` utility.
    pub fn signal(&self, name: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{name} {} failed", self.pid()))
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Waits until every address in `addrs` accepts connections. Err says why not: the process
    /// exited first (with its stderr), or the ports stayed closed for `START_TIMEOUT`.
    /// Each address is connected to until it accepts once, and not again.
    pub fn wait_listening(&mut self, addrs: &[SocketAddr]) -> Result<(), String> {
        let mut closed = addrs.to_vec();
        let outcome = poll(START_TIMEOUT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(Err(format!(
                    "exited with {status} before listening on {addrs:?}"
                )));
            }
            closed.retain(|&addr| !accepts(addr));
            closed.is_empty().then_some(Ok(()))
        });
        let why = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(exited)) => exited,
            Err(timed_out) => format!("not listening on {closed:?} after {:.1?}", timed_out.waited),
        };
        Err(format!("{why}; stderr:\n{}", self.stderr_text()))
    }
}

impl Drop for Process {
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

/// Every process's (pid, parent pid), read from /proc (Linux).
pub fn process_parents() -> Vec<(u32, u32)> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
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
    parents
}

/// Pids of every process below `root`, read from /proc (Linux).
fn descendants_of(root: u32) -> Vec<u32> {
    let parents = process_parents();
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

/// Starts `herd --all` on `config_text` (written to `dir/herd.conf`), its stderr to
/// `dir/herd.stderr`; the servers it starts are killed on drop too.
pub fn spawn_all(dir: &TempDir, config_text: &str) -> Result<Process, String> {
    spawn_all_with(dir, config_text, &[])
}

/// [`spawn_all`] with more arguments after the config (`--restart`).
pub fn spawn_all_with(dir: &TempDir, config_text: &str, args: &[&str]) -> Result<Process, String> {
    let config = dir.write("herd.conf", config_text)?;
    let mut command = Command::new(herd_bin());
    command
        .arg("--all")
        .arg(&config)
        .args(args)
        .current_dir(dir.path())
        .env(KEY_ENV, API_KEY);
    let mut process = Process::spawn(command, &dir.path().join("herd.stderr"))?;
    process.kill_descendants = true;
    Ok(process)
}

/// The servers of one [`HerdConfig`], each started as `herd NAME NAME.conf` in one temporary
/// directory that also holds their logs (`NAME.log`) and stderr (`NAME.stderr`, appended to
/// across restarts). Nothing runs until [`start_server`](Herd::start_server); every process is
/// killed on drop.
pub struct Herd {
    pub config: HerdConfig,
    bin: PathBuf,
    /// Per server: environment variables to set (Some) or remove (None) for its process.
    pub env: Vec<Vec<(String, Option<String>)>>,
    /// Start every server through [`RAISE_NOFILE`].
    pub raise_nofile: bool,
    /// Start every server under `prlimit --nofile=N:N` (soft and hard), to see it at a low
    /// open-file limit.
    pub open_files: Option<u32>,
    processes: Vec<Option<Process>>,
    // Last: removed after every process is gone.
    pub dir: TempDir,
}

impl Herd {
    /// The herd of `config` with the `herd` binary `bin`, none of it running yet.
    pub fn new(bin: &Path, config: HerdConfig, label: &str) -> Result<Herd, String> {
        if !bin.exists() {
            return Err(format!("no herd binary at {}", bin.display()));
        }
        let n = config.names.len();
        Ok(Herd {
            config,
            bin: bin.to_path_buf(),
            env: vec![Vec::new(); n],
            raise_nofile: false,
            open_files: None,
            processes: (0..n).map(|_| None).collect(),
            dir: TempDir::new(label)?,
        })
    }

    /// The bench's way: every server started (each through [`RAISE_NOFILE`]) and listening,
    /// or Err saying which did not start and why.
    pub fn start(bin: &Path, config: HerdConfig, label: &str) -> Result<Herd, String> {
        let mut herd = Herd::new(bin, config, label)?;
        herd.raise_nofile = true;
        herd.start_all()?;
        Ok(herd)
    }

    /// The servers' addresses, in config order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.config.addrs.clone()
    }

    /// SIGTERM to every running server (they flush their logs and exit), then waits (at most
    /// 5 s in all) for them; any still running is killed. Either way all are reaped.
    pub fn terminate(&mut self) {
        for process in self.processes.iter().flatten() {
            let _ = process.signal("TERM");
        }
        let _all_exited = poll(Duration::from_secs(5), || {
            self.processes
                .iter_mut()
                .flatten()
                .all(|process| !process.is_running())
        });
        for slot in &mut self.processes {
            *slot = None;
        }
    }

    /// Writes `NAME.conf` for server `i`, starts it with `KEY_ENV` set to `API_KEY` (unless its
    /// `env` says otherwise), and waits until its port accepts. Err says why it did not start.
    pub fn start_server(&mut self, i: usize) -> Result<(), String> {
        if self.is_running(i) {
            return Err(format!("{} is already running", self.config.names[i]));
        }
        let name = &self.config.names[i];
        let config = self.dir.write(
            &format!("{name}.conf"),
            &self.config.text(i, self.dir.path()),
        )?;
        let mut command = if self.raise_nofile {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(RAISE_NOFILE).arg(&self.bin);
            sh
        } else if let Some(n) = self.open_files {
            let mut prlimit = Command::new("prlimit");
            prlimit.arg(format!("--nofile={n}:{n}")).arg(&self.bin);
            prlimit
        } else {
            Command::new(&self.bin)
        };
        command
            .arg(name)
            .arg(&config)
            .current_dir(self.dir.path())
            .env(KEY_ENV, API_KEY);
        for (var, value) in &self.env[i] {
            match value {
                Some(value) => command.env(var, value),
                None => command.env_remove(var),
            };
        }
        let mut process = Process::spawn(command, &self.stderr_path(i))?;
        let listening = process.wait_listening(&self.config.addrs[i..=i]);
        self.processes[i] = Some(process);
        listening.map_err(|why| format!("herd {name} {why}"))
    }

    /// Starts every server that is not running, in config order.
    pub fn start_all(&mut self) -> Result<(), String> {
        for i in 0..self.processes.len() {
            if !self.is_running(i) {
                self.start_server(i)?;
            }
        }
        Ok(())
    }

    /// True while server `i` was started and has not exited.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.processes[i].as_mut().is_some_and(Process::is_running)
    }

    /// Server `i`'s process, while it has one.
    pub fn process(&self, i: usize) -> Option<&Process> {
        self.processes[i].as_ref()
    }

    pub fn process_mut(&mut self, i: usize) -> Option<&mut Process> {
        self.processes[i].as_mut()
    }

    /// Server `i`'s process id, while it has one.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.process(i).map(Process::pid)
    }

    /// Stops server `i`: with SIGKILL at once (`signal` None: a crash, no flush), or with the
    /// signal named (it flushes its log and exits), then SIGKILL if it is still running after
    /// 5 s. Either way it is reaped.
    pub fn stop(&mut self, i: usize, signal: Option<&str>) {
        if let (Some(process), Some(signal)) = (self.processes[i].as_mut(), signal) {
            if process.signal(signal).is_ok() {
                process.wait_exit(Duration::from_secs(5));
            }
        }
        self.processes[i] = None;
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.config.names[i]))
    }

    pub fn stderr_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.stderr", self.config.names[i]))
    }
}

/// A file's text (invalid UTF-8 shown lossily); empty if it does not exist (yet).
pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// Waits until at least `at_least` lines of the log at `path` (or any text file) contain
/// `needle`; returns the log then. A timeout shows how many did, and the log's last lines.
#[track_caller]
pub fn wait_for_log(path: &Path, needle: &str, at_least: usize, timeout: Duration) -> String {
    let what = format!("{at_least} line(s) with {needle:?} in {}", path.display());
    wait_for(&what, timeout, || {
        let log = read_lossy(path);
        let count = log.lines().filter(|line| line.contains(needle)).count();
        if count >= at_least {
            Ok(log)
        } else {
            Err(format!("{count} of them; it ends:\n{}", tail(&log, 60)))
        }
    })
}

/// The last `count` lines of `text` (read from its end).
pub fn tail(text: &str, count: usize) -> String {
    let mut lines: Vec<&str> = text.lines().rev().take(count).collect();
    lines.reverse();
    lines.join("\n")
}

/// The event part of a log line: what follows the `[LEVEL] ` after the timestamp.
pub fn log_event(line: &str) -> &str {
    match line.find("] ") {
        Some(at) => &line[at + 2..],
        None => line,
    }
}

/// The `conn=ID` of the `accept conn=ID from 127.0.0.1:PORT` record in `log` for a client whose
/// local port is `port`.
pub fn accepted_conn(log: &str, port: u16) -> Option<&str> {
    let needle = format!("from 127.0.0.1:{port}");
    let event = log
        .lines()
        .map(log_event)
        .find(|e| e.starts_with("accept conn=") && e.ends_with(&needle))?;
    event["accept conn=".len()..].split(' ').next()
}

/// The timestamp at the start of a log line (RFC 3339, UTC, `Z` or `+00:00`, up to 9
/// fractional digits) as nanoseconds since the Unix epoch.
pub fn log_time_nanos(line: &str) -> Option<i128> {
    let stamp = line.split(' ').next()?;
    let stamp = stamp
        .strip_suffix('Z')
        .or_else(|| stamp.strip_suffix("+00:00"))?;
    let (date, time) = stamp.split_once('T')?;
    let number = |text: &str, digits: usize| -> Option<i64> {
        let ok = text.len() == digits && text.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| text.parse().ok()).flatten()
    };
    let mut ymd = date.split('-');
    let (year, month, day) = (
        number(ymd.next()?, 4)?,
        number(ymd.next()?, 2)?,
        number(ymd.next()?, 2)?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':');
    let (hour, minute, second) = (
        number(parts.next()?, 2)?,
        number(parts.next()?, 2)?,
        number(parts.next()?, 2)?,
    );
    if ymd.next().is_some() || parts.next().is_some() {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_nanos: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    // Days since 1970-01-01 of a proleptic Gregorian date, counting years from March so
    // February's length falls at a year's end (the well-known era-based formula).
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(secs as i128 * 1_000_000_000 + frac_nanos)
}

/// One `recv` or `send` record of a server's log (README "Logs"): `recv conn=ID LINE` (a
/// client's line), `recv conn=ID peer=NAME LINE` (a neighbour's), `send conn=ID LINE` (a
/// reply), `send link=NAME LINE` (on the link to NAME).
pub struct Traffic<'a> {
    /// From the record's timestamp.
    pub nanos: i128,
    /// `recv` (true) or `send`.
    pub received: bool,
    /// The neighbour: `peer=NAME` (its link to us) or `link=NAME` (our link to it); None for
    /// a client.
    pub peer: Option<&'a str>,
    /// On our outbound link (`link=NAME`: what we send, and its hello's answers).
    pub on_link: bool,
    /// The line received or sent, as logged (escaped).
    pub line: &'a str,
}

/// The `recv`/`send` record in a log line; None for other records and unparseable lines.
pub fn traffic(log_line: &str) -> Option<Traffic<'_>> {
    let nanos = log_time_nanos(log_line)?;
    let event = log_event(log_line);
    let (received, rest) = match (event.strip_prefix("recv "), event.strip_prefix("send ")) {
        (Some(rest), _) => (true, rest),
        (_, Some(rest)) => (false, rest),
        _ => return None,
    };
    let (first, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let on_link = first.starts_with("link=");
    let (peer, line) = if let Some(link) = first.strip_prefix("link=") {
        (Some(link), rest)
    } else {
        first.strip_prefix("conn=")?;
        match rest.strip_prefix("peer=") {
            Some(peer_rest) => {
                let (peer, line) = peer_rest.split_once(' ').unwrap_or((peer_rest, ""));
                (Some(peer), line)
            }
            None => (None, rest),
        }
    };
    Some(Traffic {
        nanos,
        received,
        peer,
        on_link,
        line,
    })
}

/// The next connection `listener` accepts within `timeout` (a test that never gets one fails
/// instead of hanging), as a blocking stream whose reads time out after `timeout` too.
#[track_caller]
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking accept");
    let address = listener.local_addr().expect("the listener's address");
    let stream = wait_for(
        &format!("a connection to {address}"),
        timeout,
        || match listener.accept() {
            Ok((stream, _)) => Some(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("accept on {address} failed: {e}"),
        },
    );
    // Not every platform's accept(2) clears the listener's O_NONBLOCK on the new socket.
    stream.set_nonblocking(false).expect("blocking stream");
    stream
        .set_read_timeout(Some(timeout))
        .expect("set_read_timeout");
    stream
}
