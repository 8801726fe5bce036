//! Latency histogram: log-linear buckets over nanoseconds, so a run of millions of replies costs
//! a fixed array of counters and every percentile is within 1/64 (1.6 %) of the true value.
//! It only counts; it never reads the clock.

/// Each power of two is split into 2^SUB_BITS equal buckets.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values are clamped below 2^MAX_BITS ns (about 18 minutes).
const MAX_BITS: u32 = 40;
const BUCKETS: usize = (MAX_BITS - SUB_BITS + 1) as usize * SUB;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

/// Bucket of a value: exact below 64 ns, then 64 buckets per power of two.
fn bucket_of(ns: u64) -> usize {
    let ns = ns.min((1u64 << MAX_BITS) - 1);
    if ns < SUB as u64 {
        return ns as usize;
    }
    let msb = 63 - ns.leading_zeros();
    let sub = ((ns >> (msb - SUB_BITS)) as usize) & (SUB - 1);
    (msb - SUB_BITS + 1) as usize * SUB + sub
}

/// The value a bucket stands for: the middle of its range.
fn value_of(bucket: usize) -> u64 {
    if bucket < SUB {
        return bucket as u64;
    }
    let group = (bucket / SUB) as u32;
    let sub = (bucket % SUB) as u64;
    let width = 1u64 << (group - 1);
    ((SUB as u64 + sub) << (group - 1)) + width / 2
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.record_n(ns, 1);
    }

    /// Counts `n` samples of the same value (replies that arrived in one read).
    pub fn record_n(&mut self, ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[bucket_of(ns)] += n;
        self.total += n;
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max_ns
    }

    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min_ns
        }
    }

    /// The value below which a fraction `q` (0..=1) of the samples lie; 0 when empty.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return value_of(bucket).clamp(self.min_ns, self.max_ns);
            }
        }
        self.max_ns
    }

    /// (value, fraction of samples at or below it) for every non-empty bucket, in order.
    pub fn cumulative(&self) -> Vec<(u64, f64)> {
        let mut seen = 0;
        let mut points = Vec::new();
        for (bucket, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                seen += count;
                let value = value_of(bucket).clamp(self.min_ns, self.max_ns);
                points.push((value, seen as f64 / self.total as f64));
            }
        }
        points
    }
}
