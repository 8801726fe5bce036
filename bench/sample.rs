//! Readings taken on a schedule beside a load: a reading every interval (on the caller's
//! thread, usually a scoped one of its own) until told to stop. What is read is the caller's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Calls `read` every `every` (on a fixed schedule, so a slow reading does not shift the rest)
/// until `stop` is set; the readings that succeeded, in order.
pub fn sample_until<T>(
    every: Duration,
    stop: &AtomicBool,
    mut read: impl FnMut() -> Option<T>,
) -> Vec<T> {
    let mut samples = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        samples.extend(read());
        next += every;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    samples
}
