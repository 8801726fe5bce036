//! `herd --all CONFIG`: one child process of this same binary per server of the config, each
//! child's stderr shown line by line behind its name, and all of them stopped on Ctrl-C or
//! SIGTERM. SIGHUP is passed on to every child that is serving (each reloads the config and
//! says how it went in one line), and SIGUSR1/SIGUSR2 are ignored, as a server ignores them.
//!
//! What it says in its terminal, and when:
//!
//! - While the herd starts (until every child has said `NAME listening on ADDR, ...` itself, or
//!   the start failed) the children's lines are held back. Then a line that every server said
//!   with the same text (a missing Places key, `peer secret none`) is said once, as
//!   `herd: all N servers: LINE`, and each server's other lines follow behind its name, server
//!   by server in config order, before `herd: started N servers ...`. The same line from a
//!   restarted child, before it listens again, is not said again.
//! - A child that exits while the herd starts fails the start: it is said once, as
//!   `herd: NAME failed to start (STATUS): ITS LAST LINE`; the others get [`SETTLE`] more to
//!   start or fail too, so that each one's own outcome is said, and then they are stopped.
//!   One that stays silent for [`START_TIMEOUT`] fails the start as well.
//! - Once started, a child that dies is said once and the others keep serving (so a killed
//!   server can be restarted by hand and rejoin); with `--restart` the supervisor starts it
//!   again itself, after 1 s, then after twice as long each time it dies again (at most
//!   [`RESTART_MAX`]), from 1 s again once it has served [`RESTART_STABLE`].
//! - On SIGHUP each server says its reload result itself (`reload herd.conf: ...` or
//!   `reload refused: ...`); for a server that cannot reload now the supervisor says why
//!   instead, and one still starting gets the SIGHUP once it listens: one line per server.
//! - At the stop, each child that was running is said once (`stopped`, `exited ... while
//!   stopping`, `killed after 5 s`), then one last line: `herd: stopped N servers`.
//!
//! Every line goes out from the main thread (the relays only read), so lines never interleave,
//! and a write that fails (the terminal closed) is ignored: the herd serves on without one.
//! The exit status is 0 only if every child exited cleanly because the supervisor stopped it,
//! 1 otherwise. Children die with the supervisor (`PR_SET_PDEATHSIG`), also when it is
//! SIGKILLed.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::LevelFilter;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::signals;

/// How long children get to exit after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long every child gets to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Once one child failed to start, how long the others still get to listen or fail, so that
/// each is said to have done one or the other (a second herd on the same ports: every server
/// fails, each for its own reason).
const SETTLE: Duration = Duration::from_secs(2);
/// How long the rest of an exited child's stderr gets to arrive.
const EOF_GRACE: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The signal a child gets when the supervisor dies: SIGTERM, the signal the supervisor sends
/// when it stops the herd, so a child flushes its log and closes its port as on Ctrl-C.
/// `herd NAME CONFIG` handles it from before it opens its port, and any child that is not yet
/// handling it dies of it anyway; SIGKILL would lose the last log lines for no gain.
const DEATH_SIGNAL: libc::c_int = libc::SIGTERM;

/// Exit status when a server failed to start or died.
const FAILED: i32 = 1;
/// `--restart`: the first restart of a server that died waits this long ...
const RESTART_MIN: Duration = Duration::from_secs(1);
/// ... and each next one twice as long as the one before, up to this ...
const RESTART_MAX: Duration = Duration::from_secs(30);
/// ... until a run of the server lasts this long, after which it starts from `RESTART_MIN`.
const RESTART_STABLE: Duration = Duration::from_secs(60);

/// What a relay thread saw on a child's stderr: the member's index and which of its children
/// (a restarted member has had several), then the line or its end.
enum Event {
    Line(usize, u32, String),
    Eof(usize, u32),
}

/// How the children are started, again when they are restarted.
struct Launch<'a> {
    exe: std::path::PathBuf,
    config_path: &'a Path,
    log_level: Option<LevelFilter>,
    restart: bool,
}

impl Launch<'_> {
    fn command(&self, name: &str) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .arg(name)
            .arg(self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C in a terminal reaches the supervisor only, which
            // then stops every child itself, so a child's exit is never mistaken for a crash.
            .process_group(0);
        if let Some(level) = self.log_level {
            command
                .arg("--log-level")
                .arg(level.as_str().to_lowercase());
        }
        die_with_me(&mut command);
        command
    }
}

struct Member {
    name: String,
    child: Child,
    /// Which of the member's children `child` is: 0, then one more at each restart.
    generation: u32,
    started_at: Instant,
    /// It died on its own at least once after the herd started (so the exit status is 1).
    died: bool,
    /// `--restart`: when it is to be started again, while it is down.
    restart_at: Option<Instant>,
    backoff: Backoff,
    status: Option<ExitStatus>,
    /// The child said `NAME listening on ...`.
    listening: bool,
    /// Its lines held back while the herd starts.
    held: Vec<String>,
    stderr_open: bool,
    /// It exited while the herd was starting.
    failed_start: bool,
    /// It did not say it is listening within `START_TIMEOUT`.
    timed_out: bool,
    /// A SIGHUP came while it was starting: it is passed on once it listens.
    hangup_pending: bool,
    /// We sent it SIGTERM.
    stopping: bool,
    /// We sent it SIGKILL after the grace period.
    killed: bool,
}

impl Member {
    fn new(name: &str, child: Child) -> Member {
        Member {
            name: name.to_string(),
            child,
            generation: 0,
            started_at: Instant::now(),
            died: false,
            restart_at: None,
            backoff: Backoff::new(RESTART_MIN, RESTART_MAX),
            status: None,
            listening: false,
            held: Vec::new(),
            stderr_open: true,
            failed_start: false,
            timed_out: false,
            hangup_pending: false,
            stopping: false,
            killed: false,
        }
    }

    fn running(&self) -> bool {
        self.status.is_none()
    }

    /// Exited because we stopped it, and cleanly: status 0 (or our SIGTERM itself, for a child
    /// stopped before it handled signals).
    fn stopped_cleanly(&self) -> bool {
        self.stopping
            && !self.killed
            && self
                .status
                .is_some_and(|s| s.success() || s.signal() == Some(libc::SIGTERM))
    }

    /// Counts for an exit status of 0: it never died on its own and stopped cleanly.
    fn clean(&self) -> bool {
        !self.died && self.stopped_cleanly()
    }

    fn status_text(&self) -> String {
        self.status
            .map_or_else(|| "running".into(), |s| s.to_string())
    }

    fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is shared.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// What is said when it exits during the stop.
    fn stop_line(&self) -> String {
        let name = &self.name;
        if !self.stopped_cleanly() {
            format!(
                "herd: {name} exited ({}) while stopping",
                self.status_text()
            )
        } else if self.listening {
            format!("herd: {name} stopped")
        } else if self.timed_out {
            format!(
                "herd: {name} stopped: it did not say it is listening within {} s",
                START_TIMEOUT.as_secs()
            )
        } else {
            format!("herd: {name} stopped while starting")
        }
    }
}

/// Writes one line to stderr. A failed write is ignored: with the terminal closed (SIGHUP) the
/// herd serves on, and has nowhere to say anything.
fn say(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Runs the whole herd until a signal; returns the process exit code. With `restart`, a
/// server that dies after the herd started is started again (see the module's comment).
pub fn run_all(
    config_path: &Path,
    config: &Config,
    log_level: Option<LevelFilter>,
    restart: bool,
) -> i32 {
    let stop = Arc::new(AtomicBool::new(false));
    let hangup = Arc::new(AtomicBool::new(false));
    if let Err(e) = handle_signals(&stop, &hangup) {
        say(&format!("herd: cannot handle signals: {e}"));
        return FAILED;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            say(&format!("herd: cannot find my own executable: {e}"));
            return FAILED;
        }
    };
    let (sender, events) = mpsc::channel();
    let mut herd = Herd {
        members: Vec::new(),
        events,
        sender,
        hangup,
        holding: true,
        common: Vec::new(),
        launch: Launch {
            exe,
            config_path,
            log_level,
            restart,
        },
    };
    let mut spawned = true;
    for server in &config.servers {
        match herd.launch.command(&server.name).spawn() {
            Ok(mut child) => {
                let index = herd.members.len();
                if let Some(stderr) = child.stderr.take() {
                    relay_stderr(index, 0, stderr, herd.sender.clone());
                }
                herd.members.push(Member::new(&server.name, child));
            }
            Err(e) => {
                say(&format!("herd: cannot start {}: {e}", server.name));
                spawned = false;
                break;
            }
        }
    }
    let start = match spawned {
        true => herd.wait_listening(&stop),
        false => Start::Failed,
    };
    herd.end_start_up();
    if let Start::Listening = start {
        say(&format!(
            "herd: started {} servers from {}; Ctrl-C stops them",
            herd.members.len(),
            config_path.display()
        ));
        herd.serve(&stop);
    }
    herd.stop_all();
    if matches!(start, Start::Failed) || !herd.members.iter().all(Member::clean) {
        FAILED
    } else {
        0
    }
}

/// SIGTERM and SIGINT set `stop`, SIGHUP sets `hangup`, SIGUSR1 and SIGUSR2 are ignored.
fn handle_signals(stop: &Arc<AtomicBool>, hangup: &Arc<AtomicBool>) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for (signal, flag) in [(SIGTERM, stop), (SIGINT, stop), (SIGHUP, hangup)] {
        signal_hook::flag::register(signal, Arc::clone(flag))?;
    }
    signals::ignore_user_signals()
}

/// Makes the child get [`DEATH_SIGNAL`] when the supervisor dies, however it dies.
fn die_with_me(command: &mut Command) {
    // Taken before the fork, so the child can tell whether its parent is still this process.
    let supervisor = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it calls prctl(2) and getppid(2) (plain system calls), allocates
    // nothing (an `io::Error` from an OS error code is a tagged integer, no heap), takes no
    // lock and touches no memory shared with the parent. The death signal is tied to the
    // thread that forks, which is the supervisor's main thread: it lives until the process
    // exits, so the signal fires only when the supervisor itself is gone.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                DEATH_SIGNAL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
            {
                return Err(io::Error::last_os_error());
            }
            // The supervisor may have died between the fork and the prctl, when no death
            // signal was set yet: then the child has been re-parented and must not run on.
            if libc::getppid() != supervisor {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Reads a child's stderr line by line and hands each line, then the end, to the supervisor
/// (which says them: see [`Herd::take_line`]).
fn relay_stderr(
    index: usize,
    generation: u32,
    stderr: impl io::Read + Send + 'static,
    events: Sender<Event>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            match reader.read_until(b'\n', &mut bytes) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&bytes);
            let line = text.trim_end_matches(['\n', '\r']);
            let _ = events.send(Event::Line(index, generation, line.to_string()));
        }
        let _ = events.send(Event::Eof(index, generation));
    });
}

/// The lines that every list in `held` has (at least once), in the order of the first list:
/// the problems common to every server, said once.
fn common_lines(held: &[&[String]]) -> Vec<String> {
    let Some((first, others)) = held.split_first() else {
        return Vec::new();
    };
    let mut common: Vec<String> = Vec::new();
    for line in first.iter() {
        if !common.contains(line) && others.iter().all(|lines| lines.contains(line)) {
            common.push(line.clone());
        }
    }
    common
}

/// `lines` without the first copy of each line in `common` (said once for every server).
fn own_lines(lines: &[String], common: &[String]) -> Vec<String> {
    let mut left: Vec<&String> = common.iter().collect();
    let mut own = Vec::new();
    for line in lines {
        match left.iter().position(|&c| c == line) {
            Some(at) => {
                left.remove(at);
            }
            None => own.push(line.clone()),
        }
    }
    own
}

/// `A`, `A and B`, `A, B and C`.
fn names_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The last line: how many of the `total` servers were stopped, and which were not running
/// to be stopped (failed to start, or exited before the stop).
fn stop_summary(total: usize, stopped: usize, failed: &[&str], exited: &[&str]) -> String {
    let mut line = if stopped == total {
        let s = if total == 1 { "" } else { "s" };
        format!("herd: stopped {total} server{s}")
    } else {
        format!("herd: stopped {stopped} of {total} servers")
    };
    if !failed.is_empty() {
        line += &format!("; {} failed to start", names_list(failed));
    }
    if !exited.is_empty() {
        line += &format!("; {} had exited", names_list(exited));
    }
    line
}

enum Start {
    /// Every child said it is listening.
    Listening,
    /// A child exited or stayed silent.
    Failed,
    /// SIGTERM or SIGINT came first.
    Stopped,
}

struct Herd<'a> {
    members: Vec<Member>,
    events: Receiver<Event>,
    /// For the relays of restarted children; also keeps `events` from disconnecting (so
    /// `recv_timeout` always waits).
    sender: Sender<Event>,
    launch: Launch<'a>,
    /// Set by SIGHUP; cleared when it has been passed on.
    hangup: Arc<AtomicBool>,
    /// The herd is starting: the children's lines are held back (see the module's comment).
    holding: bool,
    /// The lines every server said as the herd started, said once.
    common: Vec<String>,
}

impl Herd<'_> {
    /// Takes in the relays' events, waiting at most `wait` for the first.
    fn pump(&mut self, wait: Duration) {
        let mut next = self.events.recv_timeout(wait).ok();
        while let Some(event) = next {
            match event {
                Event::Line(i, generation, line) => self.take_line(i, generation, line),
                Event::Eof(i, generation) if generation == self.members[i].generation => {
                    self.members[i].stderr_open = false;
                }
                Event::Eof(..) => {} // an earlier child's, before a restart
            }
            next = self.events.try_recv().ok();
        }
    }

    /// One line of a child's stderr: held back while the herd starts, left out when it
    /// repeats a common line as a restarted child starts, otherwise said behind its name.
    fn take_line(&mut self, i: usize, generation: u32, line: String) {
        let member = &mut self.members[i];
        if generation != member.generation {
            // The last words of an earlier child, before a restart.
            say(&format!("{}: {line}", member.name));
            return;
        }
        let was_listening = member.listening;
        if line.starts_with(&format!("{} listening on ", member.name)) {
            member.listening = true;
        }
        if self.holding {
            member.held.push(line);
            return;
        }
        if was_listening || generation == 0 || !self.common.contains(&line) {
            say(&format!("{}: {line}", member.name));
        }
        if member.listening && !was_listening && member.hangup_pending {
            member.hangup_pending = false;
            member.signal(libc::SIGHUP);
        }
    }

    /// Notes children that exited; returns their indices.
    fn reap(&mut self) -> Vec<usize> {
        let mut exited = Vec::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            if member.running() {
                if let Ok(Some(status)) = member.child.try_wait() {
                    member.status = Some(status);
                    exited.push(i);
                }
            }
        }
        exited
    }

    /// Waits (at most `EOF_GRACE`) until the stderr of every child in `members` has ended, so
    /// that a child's last lines are said before what the supervisor says about its end.
    fn drain(&mut self, members: &[usize]) {
        let deadline = Instant::now() + EOF_GRACE;
        while Instant::now() < deadline && members.iter().any(|&i| self.members[i].stderr_open) {
            self.pump(POLL_INTERVAL);
        }
    }

    /// Passes a SIGHUP that came on to every child that is listening; each says its reload
    /// result itself. For the others the supervisor says why they do not reload now, or, for a
    /// child still starting (a restarted one), passes it on once it listens: either way one
    /// line per server. While the herd starts, SIGHUP waits: it is passed on once every child
    /// listens (each has read the config by then, perhaps before it changed).
    fn forward_hangup(&mut self) {
        if !self.hangup.swap(false, Ordering::SeqCst) {
            return;
        }
        for member in &mut self.members {
            if member.listening && member.running() {
                member.signal(libc::SIGHUP);
            } else if member.running() {
                member.hangup_pending = true;
            } else if member.restart_at.is_some() {
                say(&format!(
                    "herd: {} not reloaded: it is down, and reads the config when it starts again",
                    member.name
                ));
            } else {
                say(&format!(
                    "herd: {} not reloaded: it has exited",
                    member.name
                ));
            }
        }
    }

    fn running(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.running())
    }

    /// Waits until every child said it is listening, one exited (then the others get
    /// [`SETTLE`] to listen or exit too), `START_TIMEOUT` passed, or a stop signal came.
    fn wait_listening(&mut self, stop: &AtomicBool) -> Start {
        let mut deadline = Instant::now() + START_TIMEOUT;
        loop {
            if stop.load(Ordering::SeqCst) {
                return Start::Stopped;
            }
            self.pump(POLL_INTERVAL);
            let exited = self.reap();
            if !exited.is_empty() {
                self.drain(&exited);
                for &i in &exited {
                    self.members[i].failed_start = true;
                }
                deadline = deadline.min(Instant::now() + SETTLE);
            }
            let failed = self.members.iter().any(|m| m.failed_start);
            if self.members.iter().all(|m| m.listening || !m.running()) {
                return if failed {
                    Start::Failed
                } else {
                    Start::Listening
                };
            }
            if Instant::now() >= deadline {
                if !failed {
                    for member in self.members.iter_mut().filter(|m| !m.listening) {
                        member.timed_out = true;
                    }
                }
                return Start::Failed;
            }
        }
    }

    /// Says what was held back while the herd started: the lines every server said, once;
    /// then each server's own lines behind its name, and for one that failed to start, why
    /// (its last line).
    fn end_start_up(&mut self) {
        if !self.holding {
            return;
        }
        self.holding = false;
        let reasons: Vec<Option<String>> = self
            .members
            .iter_mut()
            .map(|m| if m.failed_start { m.held.pop() } else { None })
            .collect();
        if self.members.len() >= 2 {
            let held: Vec<&[String]> = self.members.iter().map(|m| m.held.as_slice()).collect();
            self.common = common_lines(&held);
        }
        for line in &self.common {
            say(&format!("herd: all {} servers: {line}", self.members.len()));
        }
        for (member, reason) in self.members.iter_mut().zip(reasons) {
            for line in own_lines(&std::mem::take(&mut member.held), &self.common) {
                say(&format!("{}: {line}", member.name));
            }
            if member.failed_start {
                say(&format!(
                    "herd: {} failed to start ({}): {}",
                    member.name,
                    member.status_text(),
                    reason.as_deref().unwrap_or("(nothing on stderr)")
                ));
            }
        }
    }

    /// Serves until a stop signal (or until every child has exited and none is to be
    /// restarted), saying each child that exits on its own, and restarting it with
    /// `--restart`.
    fn serve(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst)
            && (self.running().next().is_some()
                || self.members.iter().any(|m| m.restart_at.is_some()))
        {
            self.pump(POLL_INTERVAL);
            self.forward_hangup();
            let exited = self.reap();
            self.drain(&exited);
            let now = Instant::now();
            for i in exited {
                let restart = self.launch.restart;
                let member = &mut self.members[i];
                member.died = true;
                member.hangup_pending = false;
                let status = member.status_text();
                if !restart {
                    say(&format!("herd: {} exited ({status})", member.name));
                    continue;
                }
                if now.duration_since(member.started_at) >= RESTART_STABLE {
                    member.backoff.reset();
                }
                let delay = member.backoff.next_delay(1.0);
                member.restart_at = Some(now + delay);
                say(&format!(
                    "herd: {} exited ({status}); restarting it in {} s",
                    member.name,
                    delay.as_secs()
                ));
            }
            let due: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].restart_at.is_some_and(|at| at <= now))
                .collect();
            for i in due {
                self.restart(i);
            }
        }
        if self.running().next().is_none() {
            say("herd: every server has exited");
        }
    }

    /// Starts member `i` again; when that fails, tries again after the next delay.
    fn restart(&mut self, i: usize) {
        let command = self.launch.command(&self.members[i].name).spawn();
        let member = &mut self.members[i];
        match command {
            Ok(mut child) => {
                member.generation += 1;
                if let Some(stderr) = child.stderr.take() {
                    relay_stderr(i, member.generation, stderr, self.sender.clone());
                }
                member.child = child;
                member.status = None;
                member.listening = false;
                member.stderr_open = true;
                member.started_at = Instant::now();
                member.restart_at = None;
                say(&format!("herd: restarted {}", member.name));
            }
            Err(e) => {
                let delay = member.backoff.next_delay(1.0);
                member.restart_at = Some(Instant::now() + delay);
                say(&format!(
                    "herd: cannot restart {}: {e}; trying again in {} s",
                    member.name,
                    delay.as_secs()
                ));
            }
        }
    }

    /// SIGTERM to every running child (so each flushes its log), SIGKILL to any still running
    /// after the grace period; each said once as it ends, after the rest of its stderr. Then
    /// the last line.
    fn stop_all(&mut self) {
        for member in &mut self.members {
            member.restart_at = None; // one waiting to be restarted stays down
            if member.running() {
                member.stopping = true;
                member.signal(libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && self.running().next().is_some() {
            self.pump(POLL_INTERVAL);
            let exited = self.reap();
            self.drain(&exited);
            for i in exited {
                say(&self.members[i].stop_line());
            }
        }
        let mut killed = Vec::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            if member.running() {
                let _ = member.child.kill();
                member.status = member.child.wait().ok();
                member.killed = true;
                killed.push(i);
            }
        }
        self.drain(&killed);
        for i in killed {
            say(&format!(
                "herd: {} killed after {} s",
                self.members[i].name,
                STOP_GRACE.as_secs()
            ));
        }
        let names = |keep: fn(&Member) -> bool| -> Vec<&str> {
            self.members
                .iter()
                .filter(|m| keep(m))
                .map(|m| m.name.as_str())
                .collect()
        };
        let stopped = self.members.iter().filter(|m| m.stopping).count();
        say(&stop_summary(
            self.members.len(),
            stopped,
            &names(|m| m.failed_start),
            &names(|m| m.died && !m.stopping),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|l| l.to_string()).collect()
    }

    const NO_KEY: &str = "GOOGLE_PLACES_API_KEY is not set: Places lookups go out without a key";

    #[test]
    fn a_line_every_server_said_is_common_and_said_once() {
        let a = lines(&[NO_KEY, "A listening on 127.0.0.1:1, log ./A.log"]);
        let b = lines(&[NO_KEY, "B listening on 127.0.0.1:2, log ./B.log"]);
        let common = common_lines(&[&a, &b]);
        assert_eq!(common, lines(&[NO_KEY]));
        assert_eq!(
            own_lines(&a, &common),
            lines(&["A listening on 127.0.0.1:1, log ./A.log"])
        );
    }

    #[test]
    fn a_line_some_servers_did_not_say_is_their_own() {
        let a = lines(&[NO_KEY, "peer secret none: ..."]);
        let b = lines(&["peer secret none: ...", NO_KEY]);
        let c = lines(&[NO_KEY]);
        assert_eq!(common_lines(&[&a, &b, &c]), lines(&[NO_KEY]));
        assert_eq!(common_lines(&[&a, &[]]), Vec::<String>::new());
        assert_eq!(common_lines(&[]), Vec::<String>::new());
    }

    #[test]
    fn a_common_line_said_twice_by_one_server_is_taken_out_once() {
        let a = lines(&[NO_KEY, NO_KEY]);
        let b = lines(&[NO_KEY]);
        let common = common_lines(&[&a, &b]);
        assert_eq!(common, lines(&[NO_KEY]));
        assert_eq!(own_lines(&a, &common), lines(&[NO_KEY]));
        assert_eq!(own_lines(&b, &common), Vec::<String>::new());
    }

    #[test]
    fn the_last_line_counts_the_servers_stopped_and_names_the_others() {
        assert_eq!(stop_summary(5, 5, &[], &[]), "herd: stopped 5 servers");
        assert_eq!(stop_summary(1, 1, &[], &[]), "herd: stopped 1 server");
        assert_eq!(
            stop_summary(5, 4, &[], &["Bona"]),
            "herd: stopped 4 of 5 servers; Bona had exited"
        );
        assert_eq!(
            stop_summary(3, 0, &["A", "B", "C"], &[]),
            "herd: stopped 0 of 3 servers; A, B and C failed to start"
        );
        assert_eq!(
            stop_summary(4, 1, &["A", "B"], &["C"]),
            "herd: stopped 1 of 4 servers; A and B failed to start; C had exited"
        );
    }
}
