//! `herd --all CONFIG`: one child process of this same binary per server of the config, each
//! child's stderr shown line by line behind its name, and all of them stopped on Ctrl-C or
//! SIGTERM. A child that dies is reported and the others keep serving, so a killed server can
//! be restarted by hand (`herd NAME CONFIG`) and rejoin the herd.

use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::LevelFilter;

use crate::config::Config;

/// How long children get to exit after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

struct Member {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

/// Runs the whole herd until a signal; returns the process exit code.
pub fn run_all(config_path: &Path, config: &Config, log_level: Option<LevelFilter>) -> i32 {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("herd: cannot handle signals: {e}");
            return 1;
        }
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("herd: cannot find my own executable: {e}");
            return 1;
        }
    };
    let mut members = Vec::new();
    for server in &config.servers {
        let mut command = Command::new(&exe);
        command
            .arg(&server.name)
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(level) = log_level {
            command
                .arg("--log-level")
                .arg(level.as_str().to_lowercase());
        }
        match command.spawn() {
            Ok(mut child) => {
                if let Some(stderr) = child.stderr.take() {
                    relay_stderr(server.name.clone(), stderr);
                }
                members.push(Member {
                    name: server.name.clone(),
                    child,
                    status: None,
                });
            }
            Err(e) => {
                eprintln!("herd: cannot start {}: {e}", server.name);
                stop.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    eprintln!(
        "herd: started {} servers from {}; Ctrl-C stops them",
        members.len(),
        config_path.display()
    );
    while !stop.load(Ordering::SeqCst) && members.iter().any(|m| m.status.is_none()) {
        reap(&mut members);
        thread::sleep(POLL_INTERVAL);
    }
    stop_all(&mut members);
    0
}

/// Copies a child's stderr to ours, each line behind the child's name.
fn relay_stderr(name: String, stderr: impl io::Read + Send + 'static) {
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(io::stderr().lock(), "{name}: {line}");
        }
    });
}

/// Notes children that exited on their own.
fn reap(members: &mut [Member]) {
    for member in members.iter_mut().filter(|m| m.status.is_none()) {
        if let Ok(Some(status)) = member.child.try_wait() {
            eprintln!("herd: {} exited ({status})", member.name);
            member.status = Some(status);
        }
    }
}

/// SIGTERM to every running child (so each flushes its log), SIGKILL to any still running
/// after the grace period.
fn stop_all(members: &mut [Member]) {
    for member in members.iter().filter(|m| m.status.is_none()) {
        if let Ok(pid) = i32::try_from(member.child.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is shared.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && members.iter().any(|m| m.status.is_none()) {
        reap(members);
        thread::sleep(POLL_INTERVAL);
    }
    for member in members.iter_mut().filter(|m| m.status.is_none()) {
        let _ = member.child.kill();
        let _ = member.child.wait();
        eprintln!(
            "herd: {} killed after {} s",
            member.name,
            STOP_GRACE.as_secs()
        );
    }
}
