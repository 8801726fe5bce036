//! Retry delays for links: exponential backoff with jitter, and the small random source that
//! feeds the jitter. Pure: callers pass the randomness and the time in.

use std::time::Duration;

/// Doubling delays from `min` to `max`; each delay is drawn from the upper half of the current
/// step ("equal jitter"), so servers that lost a neighbour together do not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The delay before the next attempt; `jitter` is uniform in [0, 1).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self
            .min
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
            .max(self.min.min(step))
    }

    /// A link that came up starts again from the shortest delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// xorshift64*: plenty for jitter, seeded from the clock and the pid by the caller.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// Uniform in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        bits as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay(0.999_999)).collect();
        let rounded: Vec<u128> = delays
            .iter()
            .map(|d| (d.as_millis() + 5) / 10 * 10)
            .collect();
        assert_eq!(rounded, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_the_upper_half_and_above_min() {
        let mut backoff = Backoff::new(ms(100), ms(5000));
        for _ in 0..4 {
            backoff.next_delay(0.5);
        }
        let d = backoff.next_delay(0.0);
        assert!(d >= ms(800) && d <= ms(1600), "{d:?}");
        let mut fresh = Backoff::new(ms(100), ms(5000));
        assert!(fresh.next_delay(0.0) >= ms(100));
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(ms(100), ms(5000));
        for _ in 0..10 {
            backoff.next_delay(0.5);
        }
        backoff.reset();
        assert!(backoff.next_delay(0.999) <= ms(100));
    }

    #[test]
    fn jitter_is_in_the_unit_interval_and_varies() {
        let mut jitter = Jitter::new(42);
        let draws: Vec<f64> = (0..1000).map(|_| jitter.next_unit()).collect();
        assert!(draws.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
