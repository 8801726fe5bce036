//! `herd --all CONFIG` tells the truth (README "On a fresh machine"): "started" only once every
//! server listens, a server that cannot start stops the herd with its own error line and exit
//! status 1, a server that dies makes the final status 1, a clean SIGTERM exits 0 after every
//! server stopped, and the servers die with the supervisor even when it is SIGKILLed. With
//! `--restart`, a server that dies is started again and serves.
//!
//! And it says what its servers did (docs/operations.md, `herd --all`), each thing once: one
//! reload line per server after a SIGHUP, each server that stopped and a last line at the stop,
//! a problem every server has once for all, and every server's fate when a start fails.

use herd_test_support::{
    client::{time_from_now, Client},
    harness::{accepts, free_ports, refused_places_url, wait_for, wait_until, TempDir, KEY_ENV},
    harness::{process_parents, spawn_all_with, Process},
    run::run_herd,
};
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

const STARTED: &str = "herd: started ";
const TIMEOUT: Duration = Duration::from_secs(10);

fn config_text(dir: &TempDir, servers: &[(&str, SocketAddr)]) -> String {
    config_text_with(dir, servers, KEY_ENV)
}

/// A config whose Places key is read from `key_env`.
fn config_text_with(dir: &TempDir, servers: &[(&str, SocketAddr)], key_env: &str) -> String {
    let mut text = String::new();
    for (name, addr) in servers {
        text += &format!("server {name} {addr}\n");
    }
    text + &format!(
        "{}\nplaces key-env {key_env}\nlog dir {}\n",
        refused_places_url().unwrap(),
        dir.path().display()
    )
}

/// The lines of `stderr` that are exactly `line`.
fn count_lines(stderr: &str, line: &str) -> usize {
    stderr.lines().filter(|l| *l == line).count()
}

/// The lines of `stderr` that mention `name` (behind its name, or in a line of the supervisor).
fn lines_about<'a>(stderr: &'a str, name: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{name}: ")) || l.starts_with(&format!("herd: {name} ")))
        .collect()
}

/// A `herd --all` supervisor, SIGKILLed on drop, and the servers it started (found by their
/// parent pid once it said "started"), SIGKILLed on drop too: they outlive a SIGKILLed
/// supervisor only if the code under test is wrong, and the test must not leave them behind.
struct Supervisor {
    process: Process,
    children: Vec<(String, u32)>,
    dir: TempDir,
}

impl Supervisor {
    /// Starts `herd --all` on `servers` and waits until it says "started".
    fn start(servers: &[(&str, SocketAddr)]) -> Supervisor {
        Supervisor::start_with(servers, &[])
    }

    /// [`start`](Supervisor::start) with more arguments (`--restart`).
    fn start_with(servers: &[(&str, SocketAddr)], args: &[&str]) -> Supervisor {
        let dir = TempDir::new("supervisor").unwrap();
        let text = config_text(&dir, servers);
        Supervisor::start_in(dir, &text, servers.len(), args)
    }

    /// Starts `herd --all` on the config `text` (of `servers` servers) in `dir`, and waits
    /// until it says "started".
    fn start_in(dir: TempDir, text: &str, servers: usize, args: &[&str]) -> Supervisor {
        let process = spawn_all_with(&dir, text, args).unwrap();
        let mut supervisor = Supervisor {
            children: Vec::new(),
            process,
            dir,
        };
        supervisor.wait_for_stderr(STARTED);
        supervisor.children = children_of(supervisor.process.pid());
        assert_eq!(
            supervisor.children.len(),
            servers,
            "one child per server: {:?}",
            supervisor.children
        );
        supervisor
    }

    fn stderr(&self) -> String {
        self.process.stderr_text()
    }

    /// Waits until stderr contains `needle`; returns the whole stderr then.
    #[track_caller]
    fn wait_for_stderr(&mut self, needle: &str) -> String {
        self.wait_for_stderr_count(needle, 1)
    }

    /// Waits until stderr contains `needle` `count` times; returns the whole stderr then.
    #[track_caller]
    fn wait_for_stderr_count(&mut self, needle: &str, count: usize) -> String {
        let what = format!("stderr to show {needle:?} {count} time(s)");
        wait_for(&what, TIMEOUT, || {
            let stderr = self.stderr();
            if stderr.matches(needle).count() >= count {
                Ok(stderr)
            } else {
                Err(stderr)
            }
        })
    }

    fn pid_of(&self, name: &str) -> u32 {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no child {name}: {:?}", self.children))
            .1
    }

    /// SIGTERM, then its exit code once it exited (None: it did not within `TIMEOUT`, or died
    /// of a signal).
    fn stop(&mut self) -> Option<i32> {
        self.stop_with("TERM")
    }

    /// [`stop`](Supervisor::stop) with the signal `name` (`INT`: Ctrl-C).
    fn stop_with(&mut self, name: &str) -> Option<i32> {
        self.process.signal(name).unwrap();
        self.process.wait_exit(TIMEOUT).and_then(|s| s.code())
    }

    fn config_path(&self) -> String {
        self.dir.path().join("herd.conf").display().to_string()
    }

    fn child_pids(&self) -> Vec<u32> {
        self.children.iter().map(|&(_, pid)| pid).collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for &pid in self.child_pids().iter().filter(|&&pid| alive(pid)) {
            kill(pid, "KILL");
        }
    }
}

/// (server name, pid) of every live process whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<(String, u32)> {
    let mut children = Vec::new();
    for (pid, ppid) in process_parents() {
        if ppid != parent {
            continue;
        }
        // `herd NAME CONFIG`: the name is the first argument.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let name = cmdline
            .split(|&b| b == 0)
            .nth(1)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .unwrap_or_default();
        children.push((name, pid));
    }
    children
}

/// True while `pid` exists and is not a zombie (an orphan that has exited is a zombie until
/// whoever adopted it reaps it).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

fn answers_as(port: u16, name: &str) {
    let reply = Client::connect(port).iamat("c1", "+1+2", &time_from_now(0));
    assert!(
        reply.starts_with(&format!("AT {name} ")),
        "{name} answers: {reply:?}"
    );
}

#[test]
fn a_second_herd_on_the_same_ports_says_each_servers_own_error_once_and_the_first_serves_on() {
    let addrs = free_ports(3).unwrap();
    let servers: Vec<(&str, SocketAddr)> =
        ["Alpha", "Beta", "Gamma"].into_iter().zip(addrs).collect();
    let mut first = Supervisor::start(&servers);

    let second = run_herd(&["--all", "herd.conf"], first.dir.path());
    assert_eq!(
        second.status.code(),
        Some(1),
        "the second herd fails: {}",
        second.stderr
    );
    assert!(
        !second.stderr.contains(STARTED),
        "the second herd does not claim it started:\n{}",
        second.stderr
    );
    for (name, addr) in &servers {
        let own_line = format!("herd {name}: cannot listen on {addr}: Address already in use");
        assert_eq!(
            second.stderr.matches(&own_line).count(),
            1,
            "{name}'s own error line, once:\n{}",
            second.stderr
        );
        let about = lines_about(&second.stderr, name);
        assert_eq!(about.len(), 1, "{name} is said once:\n{}", second.stderr);
        assert!(
            about[0].starts_with(&format!(
                "herd: {name} failed to start (exit status: 1): {own_line}"
            )),
            "{name}'s report carries its own error line: {:?}",
            about[0]
        );
    }
    assert_eq!(
        second.stderr_lines().last().copied(),
        Some("herd: stopped 0 of 3 servers; Alpha, Beta and Gamma failed to start"),
        "the last line covers every server:\n{}",
        second.stderr
    );

    for (name, addr) in &servers {
        answers_as(addr.port(), name);
    }
    assert!(first.process.is_running(), "the first herd runs on");
    assert!(
        first.child_pids().into_iter().all(alive),
        "and so do its servers"
    );
    assert!(
        !first.stderr().contains("exited"),
        "no server of the first herd exited:\n{}",
        first.stderr()
    );
}

#[test]
fn a_server_that_cannot_listen_stops_the_others_and_fails_the_herd() {
    let dir = TempDir::new("supervisor").unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let beta = taken.local_addr().unwrap();
    let alpha = free_ports(1).unwrap()[0];
    dir.write(
        "herd.conf",
        &config_text(&dir, &[("Alpha", alpha), ("Beta", beta)]),
    )
    .unwrap();
    let run = run_herd(&["--all", "herd.conf"], dir.path());
    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(!run.stderr.contains(STARTED), "stderr:\n{}", run.stderr);
    let own_line = format!("herd Beta: cannot listen on {beta}: Address already in use");
    assert!(
        run.stderr_lines()
            .iter()
            .any(|l| l.starts_with("herd: Beta failed to start") && l.contains(&own_line)),
        "Beta's failure is reported with its own line:\n{}",
        run.stderr
    );
    // run_herd returned: the supervisor has exited, and it reaps its children before that.
    assert!(!accepts(alpha), "Alpha was stopped:\n{}", run.stderr);
    // Each server's fate said once: Beta failed, Alpha (listening, or nearly) was stopped.
    let beta_said: Vec<&str> = lines_about(&run.stderr, "Beta");
    assert_eq!(beta_said.len(), 1, "Beta is said once:\n{}", run.stderr);
    let alpha_said: Vec<&str> = run
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("herd: Alpha "))
        .collect();
    assert_eq!(alpha_said.len(), 1, "Alpha is said once:\n{}", run.stderr);
    assert!(
        alpha_said[0].starts_with("herd: Alpha stopped"),
        "{alpha_said:?}"
    );
    assert_eq!(
        run.stderr_lines().last().copied(),
        Some("herd: stopped 1 of 2 servers; Beta failed to start"),
        "stderr:\n{}",
        run.stderr
    );
}

#[test]
fn the_servers_die_with_a_sigkilled_supervisor() {
    let [alpha, beta] = free_ports(2).unwrap()[..] else {
        unreachable!()
    };
    let mut supervisor = Supervisor::start(&[("Alpha", alpha), ("Beta", beta)]);
    kill(supervisor.process.pid(), "KILL");
    assert!(
        supervisor.process.wait_exit(TIMEOUT).is_some(),
        "the supervisor is gone"
    );
    let pids = supervisor.child_pids();
    wait_until(
        "every server to exit once the supervisor is killed",
        TIMEOUT,
        || {
            let alive: Vec<u32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
            if alive.is_empty() {
                Ok(())
            } else {
                Err(format!("still alive: {alive:?}"))
            }
        },
    );
    wait_until("their ports to close", TIMEOUT, || {
        !accepts(alpha) && !accepts(beta)
    });
}

#[test]
fn a_server_killed_while_the_herd_runs_is_reported_and_fails_the_exit_status() {
    let [alpha, beta] = free_ports(2).unwrap()[..] else {
        unreachable!()
    };
    let mut supervisor = Supervisor::start(&[("Alpha", alpha), ("Beta", beta)]);
    kill(supervisor.pid_of("Beta"), "KILL");
    let stderr = supervisor.wait_for_stderr("herd: Beta exited (signal: 9");
    assert!(supervisor.process.is_running(), "the supervisor runs on");
    answers_as(alpha.port(), "Alpha");

    // A SIGHUP now: Alpha reloads, and the supervisor says for Beta why it does not.
    supervisor.process.signal("HUP").unwrap();
    let path = supervisor.config_path();
    supervisor.wait_for_stderr(&format!("Alpha: reload {path}: nothing changed"));
    supervisor.wait_for_stderr("herd: Beta not reloaded: it has exited");

    assert_eq!(
        supervisor.stop(),
        Some(1),
        "a server died, so the herd exits 1 even after a clean SIGTERM:\n{stderr}"
    );
    assert!(!alive(supervisor.pid_of("Alpha")), "Alpha was stopped");
    let stderr = supervisor.stderr();
    assert_eq!(
        stderr.matches("herd: Beta exited").count(),
        1,
        "Beta's death is said once:\n{stderr}"
    );
    assert_eq!(count_lines(&stderr, "herd: Alpha stopped"), 1, "{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("herd: stopped 1 of 2 servers; Beta had exited"),
        "{stderr}"
    );
}

#[test]
fn with_restart_a_killed_server_is_started_again_and_serves() {
    let [alpha, beta] = free_ports(2).unwrap()[..] else {
        unreachable!()
    };
    let mut supervisor =
        Supervisor::start_with(&[("Alpha", alpha), ("Beta", beta)], &["--restart"]);
    let first = supervisor.pid_of("Beta");
    kill(first, "KILL");
    supervisor.wait_for_stderr("herd: Beta exited (signal: 9 (SIGKILL)); restarting it in 1 s");
    supervisor.wait_for_stderr("herd: restarted Beta");
    let listening = "Beta: Beta listening on ";
    supervisor.wait_for_stderr_count(listening, 2); // Beta said it listens again
    supervisor.children = children_of(supervisor.process.pid());
    let second = supervisor.pid_of("Beta");
    assert_ne!(second, first, "a new process");
    answers_as(beta.port(), "Beta");
    answers_as(alpha.port(), "Alpha");

    // Dying again soon after: the next restart waits twice as long.
    kill(second, "KILL");
    supervisor.wait_for_stderr("restarting it in 2 s");

    assert_eq!(
        supervisor.stop(),
        Some(1),
        "a server died, so the herd exits 1 even after a clean SIGTERM:\n{}",
        supervisor.stderr()
    );
    assert!(!alive(supervisor.pid_of("Alpha")), "Alpha was stopped");
}

#[test]
fn sigterm_exits_0_once_every_server_has_stopped() {
    let [alpha, beta] = free_ports(2).unwrap()[..] else {
        unreachable!()
    };
    let mut supervisor = Supervisor::start(&[("Alpha", alpha), ("Beta", beta)]);
    let stderr = supervisor.stderr();
    let started_at = stderr.find(STARTED).unwrap();
    for (name, addr) in [("Alpha", alpha), ("Beta", beta)] {
        let listening = format!("{name}: {name} listening on {addr}");
        let at = stderr
            .find(&listening)
            .unwrap_or_else(|| panic!("{listening:?} in:\n{stderr}"));
        assert!(
            at < started_at,
            "{name} listened before `started`:\n{stderr}"
        );
    }
    answers_as(alpha.port(), "Alpha");
    answers_as(beta.port(), "Beta");

    assert_eq!(supervisor.stop(), Some(0), "{}", supervisor.stderr());
    // Already exited: the supervisor exits only after it reaped every server.
    assert!(
        supervisor.child_pids().into_iter().all(|pid| !alive(pid)),
        "every server stopped before the supervisor exited"
    );
    assert!(!accepts(alpha) && !accepts(beta), "their ports are closed");
    let stderr = supervisor.stderr();
    for name in ["Alpha", "Beta"] {
        assert_eq!(
            count_lines(&stderr, &format!("herd: {name} stopped")),
            1,
            "{name}'s stop is said once:\n{stderr}"
        );
    }
    assert_eq!(
        stderr.lines().last(),
        Some("herd: stopped 2 servers"),
        "the last line says it stopped them all:\n{stderr}"
    );
}

#[test]
fn sighup_gets_one_reload_line_from_each_server_applied_then_refused_with_the_reason() {
    let [alpha, beta] = free_ports(2).unwrap()[..] else {
        unreachable!()
    };
    let mut supervisor = Supervisor::start(&[("Alpha", alpha), ("Beta", beta)]);
    let path = supervisor.config_path();
    let mut text = fs::read_to_string(&path).unwrap();

    text += "link Alpha Beta\n";
    fs::write(&path, &text).unwrap();
    supervisor.process.signal("HUP").unwrap();
    let applied = [
        format!("Alpha: reload {path}: links added: Beta"),
        format!("Beta: reload {path}: links added: Alpha"),
    ];
    for line in &applied {
        supervisor.wait_for_stderr(line);
    }

    text += "lnk Alpha Beta\n";
    let bad_line = text.lines().count();
    fs::write(&path, &text).unwrap();
    supervisor.process.signal("HUP").unwrap();
    let refused = ["Alpha", "Beta"]
        .map(|name| format!("{name}: reload refused: {path}:{bad_line}: unknown directive 'lnk'"));
    for line in &refused {
        supervisor.wait_for_stderr(line);
    }

    assert_eq!(
        supervisor.stop_with("INT"),
        Some(0),
        "{}",
        supervisor.stderr()
    );
    let stderr = supervisor.stderr();
    for (i, name) in ["Alpha", "Beta"].into_iter().enumerate() {
        let reloads: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with(&format!("{name}: reload")))
            .collect();
        assert_eq!(
            reloads,
            [applied[i].as_str(), refused[i].as_str()],
            "one reload line from {name} per SIGHUP:\n{stderr}"
        );
    }
    assert_eq!(
        stderr.lines().last(),
        Some("herd: stopped 2 servers"),
        "{stderr}"
    );
}

#[test]
fn a_problem_every_server_has_is_said_once_for_all_of_them() {
    let addrs = free_ports(3).unwrap();
    let servers: Vec<(&str, SocketAddr)> =
        ["Alpha", "Beta", "Gamma"].into_iter().zip(addrs).collect();
    let dir = TempDir::new("supervisor").unwrap();
    let unset = "HERD_TEST_PLACES_KEY_NOBODY_SETS";
    let text = config_text_with(&dir, &servers, unset) + "peer secret none\n";
    let mut supervisor = Supervisor::start_in(dir, &text, servers.len(), &["--restart"]);
    let stderr = supervisor.stderr();
    let started_at = stderr.find(STARTED).unwrap();

    let no_key = format!("{unset} is not set: Places lookups go out without a key");
    let no_secret = "peer secret none: links are not authenticated";
    for problem in [no_key.as_str(), no_secret] {
        let said = format!("herd: all 3 servers: {problem}");
        let at = stderr
            .find(&said)
            .unwrap_or_else(|| panic!("{said:?} in:\n{stderr}"));
        assert!(at < started_at, "said before `started`:\n{stderr}");
        assert_eq!(
            stderr.matches(problem).count(),
            1,
            "said once, not once per server:\n{stderr}"
        );
    }
    for (name, addr) in &servers {
        let listening = format!("{name}: {name} listening on {addr}");
        assert!(stderr.contains(&listening), "{listening:?} in:\n{stderr}");
    }

    // A restarted server says it again as it starts: not said again.
    kill(supervisor.pid_of("Beta"), "KILL");
    supervisor.wait_for_stderr_count("Beta: Beta listening on ", 2);
    let stderr = supervisor.stderr();
    assert_eq!(stderr.matches(&no_key).count(), 1, "{stderr}");
}
