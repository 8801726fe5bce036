//! The Places counters, in one place: what lookups cost and how they went. The loop's
//! [`Lookups`](super::lookups::Lookups) counts as it decides; the metrics endpoint of a later
//! version renders these. Pure.

use std::time::Duration;

use super::response::OutcomeKind;

/// Upper bounds (inclusive) of the latency histogram's buckets, in milliseconds, chosen around
/// Places' real latency (100-300 ms), the default timeout (5 s) and twice that.
pub const LATENCY_BUCKETS_MS: [u64; 12] =
    [5, 10, 25, 50, 100, 200, 300, 500, 1000, 2500, 5000, 10_000];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacesStats {
    /// Calls handed to a worker (each one a billed request once it reaches Google).
    pub calls_sent: u64,
    /// WHATSATs answered from the cache.
    pub cache_hits: u64,
    /// WHATSATs that waited on an identical call already in flight.
    pub coalesced: u64,
    /// WHATSATs refused at once: `places max-per-second` reached.
    pub rate_limited: u64,
    /// WHATSATs refused at once: every worker busy and the queue full.
    pub queue_full: u64,
    /// Calls handed to the workers but skipped: every WHATSAT waiting for them had left.
    pub cancelled: u64,
    /// WHATSATs answered from the places file (`places api local`): no call, nothing billed,
    /// so neither in `calls_sent` nor in the calls' outcomes and latency below.
    pub local_answers: u64,
    /// The time those searches took, all together.
    pub local_time: Duration,
    /// Finished calls by outcome.
    pub ok: u64,
    pub error_status: u64,
    pub bad_body: u64,
    pub timeouts: u64,
    pub transport_errors: u64,
    /// Finished calls by duration: `latency_buckets[i]` counts calls of at most
    /// `LATENCY_BUCKETS_MS[i]` (not cumulative); the last slot counts the slower ones.
    pub latency_buckets: [u64; LATENCY_BUCKETS_MS.len() + 1],
    pub latency_sum: Duration,
}

impl PlacesStats {
    /// A call finished with `kind` after `elapsed`.
    pub fn finished(&mut self, kind: OutcomeKind, elapsed: Duration) {
        match kind {
            OutcomeKind::Ok => self.ok += 1,
            OutcomeKind::ErrorStatus => self.error_status += 1,
            OutcomeKind::BadBody => self.bad_body += 1,
            OutcomeKind::Timeout => self.timeouts += 1,
            OutcomeKind::Transport => self.transport_errors += 1,
            OutcomeKind::Refused => return, // never sent: no latency either
        }
        // Compared as durations: 5.4 ms is over the 5 ms bound (whole milliseconds would not say).
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&bound| elapsed <= Duration::from_millis(bound))
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[bucket] += 1;
        self.latency_sum += elapsed;
    }

    /// A WHATSAT answered from the places file after a search of `elapsed`. Kept apart from
    /// the calls: a search takes microseconds and cannot fail, and in the calls' histogram
    /// (buckets from 5 ms, for a network's latency) it would read as milliseconds.
    pub fn answered_locally(&mut self, elapsed: Duration) {
        self.local_answers += 1;
        self.local_time += elapsed;
    }

    /// Finished calls.
    pub fn calls_finished(&self) -> u64 {
        self.latency_buckets.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_calls_are_counted_by_outcome_and_duration() {
        let mut stats = PlacesStats::default();
        stats.finished(OutcomeKind::Ok, Duration::from_millis(150));
        stats.finished(OutcomeKind::Ok, Duration::from_millis(200));
        stats.finished(OutcomeKind::Timeout, Duration::from_secs(11));
        stats.finished(OutcomeKind::Ok, Duration::from_micros(5_400));
        stats.finished(OutcomeKind::Refused, Duration::ZERO);
        assert_eq!((stats.ok, stats.timeouts), (3, 1));
        assert_eq!(stats.calls_finished(), 4);
        let bucket = |ms| LATENCY_BUCKETS_MS.iter().position(|&b| b == ms).unwrap();
        assert_eq!(stats.latency_buckets[bucket(200)], 2);
        assert_eq!(stats.latency_buckets[bucket(10)], 1, "5.4 ms is over 5 ms");
        assert_eq!(stats.latency_buckets[LATENCY_BUCKETS_MS.len()], 1);
        assert_eq!(stats.latency_sum, Duration::from_micros(11_355_400));
    }

    #[test]
    fn local_answers_are_counted_apart_from_calls() {
        let mut stats = PlacesStats::default();
        stats.answered_locally(Duration::from_micros(30));
        stats.answered_locally(Duration::from_micros(50));
        assert_eq!(stats.local_answers, 2);
        assert_eq!(stats.local_time, Duration::from_micros(80));
        assert_eq!(
            (stats.calls_sent, stats.ok, stats.calls_finished()),
            (0, 0, 0)
        );
    }
}
