//! The `process_*` figures Prometheus' own clients export on Linux, read from `/proc/self`:
//! resident memory (`statm`), open descriptors (`fd/`) and the start time (`stat` and the
//! boot time in `/proc/stat`). These files live in memory; reading them takes microseconds,
//! so the loop reads them when it renders a page. The parsers are pure and tested on sample
//! text; only [`sample`] and [`start_time_seconds`] touch the file system.

use std::fs;

/// What changes from page to page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

/// Reads resident memory and the open descriptors now; a figure that cannot be read is `None`
/// (and left off the page).
pub fn sample() -> ProcessSample {
    let resident_pages = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| resident_pages(&text));
    ProcessSample {
        resident_bytes: resident_pages.map(|pages| pages * page_size()),
        // The directory's own descriptor, open while it is read, is one of the entries.
        open_fds: fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| (entries.count() as u64).saturating_sub(1)),
    }
}

/// When the process started, in seconds since the Unix epoch (read once: it does not change).
pub fn start_time_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    let boot = fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf reads a constant of the system; it has no other effect.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        return None;
    }
    let ticks = start_ticks(&stat)?;
    Some(boot_time(&boot)? as f64 + ticks as f64 / ticks_per_second as f64)
}

fn page_size() -> u64 {
    // SAFETY: as above.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// `statm`: `size resident shared text lib data dt`, in pages.
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// `stat`: `pid (comm) state ppid ...`; field 22, `starttime`, is in clock ticks after boot.
/// The command name may hold spaces and parentheses, so fields are counted after its last `)`.
fn start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: starttime is the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// `/proc/stat`: the line `btime SECONDS`, the boot time.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_gives_resident_pages() {
        assert_eq!(resident_pages("5432 811 602 180 0 330 0\n"), Some(811));
        assert_eq!(resident_pages("5432"), None);
    }

    #[test]
    fn stat_gives_the_start_ticks_even_with_a_strange_command_name() {
        let stat = "4242 (my (odd) herd) S 1 4242 4242 0 -1 4194560 372 0 0 0 1 2 0 0 20 0 \
                    3 0 987654 1234567 811 18446744073709551615";
        assert_eq!(start_ticks(stat), Some(987_654));
        assert_eq!(start_ticks("4242 (herd) S 1"), None);
    }

    #[test]
    fn proc_stat_gives_the_boot_time() {
        let text = "cpu  1 2 3\nintr 5\nctxt 77\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(boot_time(text), Some(1_700_000_000));
        assert_eq!(boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = start_time_seconds().expect("a start time");
        assert!(
            started <= now + 1.0 && started > now - 24.0 * 3600.0,
            "{started} vs {now}"
        );
        let sample = sample();
        assert!(sample.resident_bytes.unwrap() > 100_000, "{sample:?}");
        assert!(sample.open_fds.unwrap() >= 3, "{sample:?}");
    }
}
