//! `herd --all CONFIG`: one child process of this same binary per server of the config, each
//! child's stderr shown line by line behind its name, and all of them stopped on Ctrl-C or
//! SIGTERM. SIGHUP is passed on to every child that is serving (each reopens its log), and
//! SIGUSR1/SIGUSR2 are ignored, as a server ignores them.
//!
//! "started" is said only once every child has said `NAME listening on ADDR, ...` itself; a
//! child that exits first, or stays silent for [`START_TIMEOUT`], stops the whole herd with
//! exit status 1 and that child's last stderr line. Once started, a child that dies is reported
//! and the others keep serving (so a killed server can be restarted by hand and rejoin); with
//! `--restart` the supervisor starts it again itself, after 1 s, then after twice as long each
//! time it dies again (at most [`RESTART_MAX`]), from 1 s again once it has served
//! [`RESTART_STABLE`]. Either way the exit status at the end is 1 if any child died: it is 0
//! only if every child exited cleanly because the supervisor stopped it. Children die with the
//! supervisor (`PR_SET_PDEATHSIG`), also when it is SIGKILLed.

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
    /// It died on its own at least once (so the herd's exit status is 1).
    died: bool,
    /// `--restart`: when it is to be started again, while it is down.
    restart_at: Option<Instant>,
    backoff: Backoff,
    status: Option<ExitStatus>,
    /// The child said `NAME listening on ...`.
    listening: bool,
    last_line: Option<String>,
    stderr_open: bool,
    /// We sent it SIGTERM.
    stopping: bool,
    /// We sent it SIGKILL after the grace period.
    killed: bool,
}

impl Member {
    /// Exited because we stopped it, and cleanly: status 0 (or our SIGTERM itself, for a child
    /// stopped before it handled signals).
    fn clean(&self) -> bool {
        !self.died
            && self.stopping
            && !self.killed
            && self
                .status
                .is_some_and(|s| s.success() || s.signal() == Some(libc::SIGTERM))
    }
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
        eprintln!("herd: cannot handle signals: {e}");
        return FAILED;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("herd: cannot find my own executable: {e}");
            return FAILED;
        }
    };
    let (sender, events) = mpsc::channel();
    let mut herd = Herd {
        members: Vec::new(),
        events,
        sender,
        hangup,
        launch: Launch {
            exe,
            config_path,
            log_level,
            restart,
        },
    };
    let mut failed = false;
    for server in &config.servers {
        match herd.launch.command(&server.name).spawn() {
            Ok(mut child) => {
                let index = herd.members.len();
                if let Some(stderr) = child.stderr.take() {
                    relay_stderr(index, 0, server.name.clone(), stderr, herd.sender.clone());
                }
                herd.members.push(Member {
                    name: server.name.clone(),
                    child,
                    generation: 0,
                    started_at: Instant::now(),
                    died: false,
                    restart_at: None,
                    backoff: Backoff::new(RESTART_MIN, RESTART_MAX),
                    status: None,
                    listening: false,
                    last_line: None,
                    stderr_open: true,
                    stopping: false,
                    killed: false,
                });
            }
            Err(e) => {
                eprintln!("herd: cannot start {}: {e}", server.name);
                failed = true;
                break;
            }
        }
    }
    if !failed {
        match herd.wait_listening(&stop) {
            Start::Listening => {
                eprintln!(
                    "herd: started {} servers from {}; Ctrl-C stops them",
                    herd.members.len(),
                    config_path.display()
                );
                herd.serve(&stop);
            }
            Start::Failed => failed = true,
            Start::Stopped => {}
        }
    }
    herd.stop_all();
    if failed || !herd.members.iter().all(Member::clean) {
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

/// Copies a child's stderr to ours, each line behind the child's name, and tells the
/// supervisor each line (after writing it) and the end.
fn relay_stderr(
    index: usize,
    generation: u32,
    name: String,
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
            let _ = writeln!(io::stderr().lock(), "{name}: {line}");
            let _ = events.send(Event::Line(index, generation, line.to_string()));
        }
        let _ = events.send(Event::Eof(index, generation));
    });
}

enum Start {
    /// Every child said it is listening.
    Listening,
    /// A child exited or stayed silent; said why.
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
}

impl Herd<'_> {
    /// Takes in the relays' events, waiting at most `wait` for the first.
    fn pump(&mut self, wait: Duration) {
        let mut next = self.events.recv_timeout(wait).ok();
        while let Some(event) = next {
            match event {
                Event::Line(i, generation, line) => {
                    let member = &mut self.members[i];
                    if line.starts_with(&format!("{} listening on ", member.name))
                        && generation == member.generation
                    {
                        member.listening = true;
                    }
                    member.last_line = Some(line);
                }
                Event::Eof(i, generation) if generation == self.members[i].generation => {
                    self.members[i].stderr_open = false;
                }
                Event::Eof(..) => {} // an earlier child's, before a restart
            }
            next = self.events.try_recv().ok();
        }
    }

    /// Notes children that exited; returns their indices.
    fn reap(&mut self) -> Vec<usize> {
        let mut exited = Vec::new();
        for (i, member) in self.members.iter_mut().enumerate() {
            if member.status.is_none() {
                if let Ok(Some(status)) = member.child.try_wait() {
                    member.status = Some(status);
                    exited.push(i);
                }
            }
        }
        exited
    }

    /// Waits (at most `EOF_GRACE`) until the stderr of every child in `members` has ended.
    fn drain(&mut self, members: &[usize]) {
        let deadline = Instant::now() + EOF_GRACE;
        while Instant::now() < deadline && members.iter().any(|&i| self.members[i].stderr_open) {
            self.pump(POLL_INTERVAL);
        }
    }

    /// Passes a SIGHUP that came on to every child that said it is listening (and so handles
    /// it: a child still starting would die of it, and opens its log afresh anyway).
    fn forward_hangup(&mut self) {
        if !self.hangup.swap(false, Ordering::SeqCst) {
            return;
        }
        for member in self
            .members
            .iter()
            .filter(|m| m.status.is_none() && m.listening)
        {
            if let Ok(pid) = i32::try_from(member.child.id()) {
                // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is shared.
                unsafe {
                    libc::kill(pid, libc::SIGHUP);
                }
            }
        }
    }

    fn running(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.status.is_none())
    }

    /// Waits until every child said it is listening, one exited, `START_TIMEOUT` passed, or a
    /// stop signal came.
    fn wait_listening(&mut self, stop: &AtomicBool) -> Start {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if stop.load(Ordering::SeqCst) {
                return Start::Stopped;
            }
            self.pump(POLL_INTERVAL);
            self.forward_hangup();
            let exited = self.reap();
            if !exited.is_empty() {
                self.drain(&exited);
                for &i in &exited {
                    let member = &self.members[i];
                    eprintln!(
                        "herd: {} failed to start ({}): {}",
                        member.name,
                        member.status.expect("reaped"),
                        member.last_line.as_deref().unwrap_or("(nothing on stderr)")
                    );
                }
                return Start::Failed;
            }
            if self.members.iter().all(|m| m.listening) {
                return Start::Listening;
            }
            if Instant::now() >= deadline {
                for member in self.members.iter().filter(|m| !m.listening) {
                    eprintln!(
                        "herd: {} did not say it is listening within {} s (last line: {})",
                        member.name,
                        START_TIMEOUT.as_secs(),
                        member.last_line.as_deref().unwrap_or("none")
                    );
                }
                return Start::Failed;
            }
        }
    }

    /// Serves until a stop signal (or until every child has exited and none is to be
    /// restarted), reporting each child that exits on its own, and restarting it with
    /// `--restart`.
    fn serve(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst)
            && (self.running().next().is_some()
                || self.members.iter().any(|m| m.restart_at.is_some()))
        {
            self.pump(POLL_INTERVAL);
            self.forward_hangup();
            let now = Instant::now();
            for i in self.reap() {
                let restart = self.launch.restart;
                let member = &mut self.members[i];
                member.died = true;
                let status = member.status.expect("reaped");
                if !restart {
                    eprintln!("herd: {} exited ({status})", member.name);
                    continue;
                }
                if now.duration_since(member.started_at) >= RESTART_STABLE {
                    member.backoff.reset();
                }
                let delay = member.backoff.next_delay(1.0);
                member.restart_at = Some(now + delay);
                eprintln!(
                    "herd: {} exited ({status}); restarting it in {} s",
                    member.name,
                    delay.as_secs()
                );
            }
            let due: Vec<usize> = (0..self.members.len())
                .filter(|&i| self.members[i].restart_at.is_some_and(|at| at <= now))
                .collect();
            for i in due {
                self.restart(i);
            }
        }
        if self.running().next().is_none() {
            eprintln!("herd: every server has exited");
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
                    relay_stderr(
                        i,
                        member.generation,
                        member.name.clone(),
                        stderr,
                        self.sender.clone(),
                    );
                }
                member.child = child;
                member.status = None;
                member.listening = false;
                member.stderr_open = true;
                member.started_at = Instant::now();
                member.restart_at = None;
                eprintln!("herd: restarted {}", member.name);
            }
            Err(e) => {
                let delay = member.backoff.next_delay(1.0);
                member.restart_at = Some(Instant::now() + delay);
                eprintln!(
                    "herd: cannot restart {}: {e}; trying again in {} s",
                    member.name,
                    delay.as_secs()
                );
            }
        }
    }

    /// SIGTERM to every running child (so each flushes its log), SIGKILL to any still running
    /// after the grace period; then the rest of their stderr.
    fn stop_all(&mut self) {
        for member in self.members.iter_mut().filter(|m| m.status.is_none()) {
            member.stopping = true;
            if let Ok(pid) = i32::try_from(member.child.id()) {
                // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is shared.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && self.running().next().is_some() {
            self.pump(POLL_INTERVAL);
            for i in self.reap() {
                let member = &self.members[i];
                if !member.clean() {
                    eprintln!(
                        "herd: {} exited ({}) while stopping",
                        member.name,
                        member.status.expect("reaped")
                    );
                }
            }
        }
        for member in self.members.iter_mut().filter(|m| m.status.is_none()) {
            let _ = member.child.kill();
            member.status = member.child.wait().ok();
            member.killed = true;
            eprintln!(
                "herd: {} killed after {} s",
                member.name,
                STOP_GRACE.as_secs()
            );
        }
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.drain(&all);
    }
}
