//! What the bench starts and measures: herd servers through the shared harness
//! (`herd_test_support::harness`, tests/support/src/harness.rs: configs, temporary directories,
//! processes killed on drop, free loopback ports), and the /proc readings taken of a server
//! (RSS, threads, open descriptors, CPU). It sends no protocol traffic beyond the connect that shows a
//! server is listening.

use std::fs;
use std::net::SocketAddr;

pub use herd_test_support::harness::{refused_places_url, Herd, HerdConfig, RAISE_NOFILE};

/// Resident set size of a process, from /proc/PID/status.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    Some(status_field(pid, "VmRSS:")? * 1024)
}

/// The most resident memory a process has had (its high-water mark), from /proc/PID/status.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    Some(status_field(pid, "VmHWM:")? * 1024)
}

/// This process's own peak RSS.
pub fn own_peak_rss_bytes() -> Option<u64> {
    peak_rss_bytes(std::process::id())
}

/// Number of threads of a process, from /proc/PID/status.
pub fn thread_count(pid: u32) -> Option<u64> {
    status_field(pid, "Threads:")
}

/// How often a process's main thread was made to give up its core (preempted, rather than
/// waiting for something), from /proc/PID/status.
pub fn involuntary_switches(pid: u32) -> Option<u64> {
    status_field(pid, "nonvoluntary_ctxt_switches:")
}

/// The number after `key` in /proc/PID/status.
fn status_field(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Number of open descriptors of a process.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The process listening on a loopback TCP port, found through /proc/net/tcp's socket inode
/// and the descriptors of every process this user may read (for `--target`).
pub fn pid_listening_on(addr: SocketAddr) -> Option<u32> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?
        + &fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    let port = format!(":{:04X}", addr.port());
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(3) == Some(&"0A");
        if listening && fields.get(1)?.ends_with(&port) {
            fields.get(9).map(|s| s.to_string())
        } else {
            None
        }
    })?;
    let wanted = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted) {
                return Some(pid);
            }
        }
    }
    None
}

/// The soft limit on open files of this process, from /proc/self/limits.
pub fn nofile_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Whether this process may hold `wanted` descriptors; why not, when it may not.
pub fn need_open_files(wanted: u64) -> Result<(), String> {
    let limit = nofile_limit().unwrap_or(0);
    if limit >= wanted {
        return Ok(());
    }
    Err(format!(
        "this process may open only {limit} files, {wanted} wanted (raise the hard limit: \
         ulimit -Hn)"
    ))
}

/// CPU time (user + system, all threads) a process has used, from /proc/PID/stat.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// CPU time the calling thread has used.
pub fn thread_cpu_secs() -> Option<f64> {
    stat_cpu_secs("/proc/thread-self/stat")
}

/// CPU time this whole process has used.
pub fn own_cpu_secs() -> Option<f64> {
    stat_cpu_secs("/proc/self/stat")
}

/// CPU time every process on the machine has spent in user and system mode (interrupt and
/// softirq time, which no process is charged for, left out), from /proc/stat.
pub fn machine_cpu_secs() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some(fields.iter().sum::<f64>() / 100.0)
}

fn stat_cpu_secs(path: &str) -> Option<f64> {
    let stat = fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name (which may hold spaces); utime and stime
    // are fields 14 and 15 of the whole line, in clock ticks (100 a second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
