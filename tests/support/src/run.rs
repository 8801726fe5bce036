//! `herd` runs that are expected to exit by themselves (usage and config errors): their exit
//! status, stdout and stderr.

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use crate::harness::{herd_bin, poll, API_KEY, KEY_ENV};

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

    /// The one line a refused start says: the run must have exited with status 2 (bad input)
    /// and written exactly one line to stderr.
    #[track_caller]
    pub fn refusal(&self) -> &str {
        assert_eq!(self.status.code(), Some(2), "stderr: {:?}", self.stderr);
        let lines = self.stderr_lines();
        assert_eq!(lines.len(), 1, "one stderr line: {:?}", self.stderr);
        lines[0]
    }
}

/// Runs `herd ARGS` in `cwd` and waits (at most 10 s) for it to exit.
#[track_caller]
pub fn run_herd(args: &[&str], cwd: &Path) -> Finished {
    let mut child = Command::new(herd_bin())
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
    let status = match poll(Duration::from_secs(10), || child.try_wait().ok().flatten()) {
        Ok(status) => status,
        Err(timed_out) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herd {args:?} did not exit: {timed_out}");
        }
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}
