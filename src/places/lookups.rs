//! What a WHATSAT's lookup costs (SPEC section 5: every call is billed and counts against the
//! key's quota), decided on the loop in one place: an answer younger than `places cache-ms`
//! is reused; a lookup identical to one in flight waits for that one's answer (coalescing);
//! past `places max-per-second` a lookup is refused at once; only then is a call sent. Every
//! decision is counted in [`PlacesStats`].
//!
//! Pure: the loop passes `now` and a way to hand a call to the workers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::request::LookupKey;
use super::response::{PlacesError, ShapedJson};
use super::stats::PlacesStats;

/// A WHATSAT waiting for its lookup: where its reply goes, and its first line.
#[derive(Debug, PartialEq)]
pub struct Waiter {
    /// The connection (its slab key and its unique id, so a reply never reaches a connection
    /// that reused the slot) and the reply slot on it.
    pub conn_key: usize,
    pub conn_id: u64,
    pub seq: u64,
    /// The stored AT line at the time of the WHATSAT.
    pub at_line: Box<[u8]>,
}

/// What [`Lookups::begin`] did with a lookup.
#[derive(Debug)]
pub enum Begun {
    /// A fresh enough answer was cached: reply now.
    Cached(ShapedJson, Waiter),
    /// An identical call is in flight: the waiter gets its answer.
    Joined,
    /// A call was handed to the workers.
    Sent,
    /// Not attempted (rate limit, or a full queue): reply now with this error.
    Refused(PlacesError, Waiter),
}

/// A call handed to the workers and the WHATSATs waiting for it.
struct InFlight {
    waiters: Vec<Waiter>,
    /// Set when every waiter has gone: a worker that has not started the call skips it.
    cancel: Arc<AtomicBool>,
}

pub struct Lookups {
    in_flight: HashMap<LookupKey, InFlight>,
    cache: Cache,
    limit: Option<TokenBucket>,
    pub stats: PlacesStats,
    /// Refusals already reported, and when (see [`Lookups::refusals_report`]).
    reported: (u64, u64, Instant),
}

impl Lookups {
    /// `cache_ms` 0 turns the cache off; `max_per_second` 0 turns the rate limit off.
    pub fn new(cache_ms: u64, cache_entries: usize, max_per_second: u32, now: Instant) -> Lookups {
        Lookups {
            in_flight: HashMap::new(),
            cache: Cache::new(Duration::from_millis(cache_ms), cache_entries),
            limit: (max_per_second > 0).then(|| TokenBucket::new(max_per_second, now)),
            stats: PlacesStats::default(),
            reported: (0, 0, now),
        }
    }

    /// New cache and rate-limit settings (a reload): the cache starts empty, the limit full;
    /// calls in flight and their waiters carry on.
    pub fn reconfigure(
        &mut self,
        cache_ms: u64,
        cache_entries: usize,
        max_per_second: u32,
        now: Instant,
    ) {
        self.cache = Cache::new(Duration::from_millis(cache_ms), cache_entries);
        self.limit = (max_per_second > 0).then(|| TokenBucket::new(max_per_second, now));
    }

    /// At most once a second, when WHATSATs were refused since the last report: one log line
    /// that counts them, instead of a line per refusal.
    pub fn refusals_report(&mut self, now: Instant) -> Option<String> {
        let (rate_limited, queue_full, at) = self.reported;
        let new_rate = self.stats.rate_limited - rate_limited;
        let new_full = self.stats.queue_full - queue_full;
        if new_rate + new_full == 0 || now.duration_since(at) < Duration::from_secs(1) {
            return None;
        }
        self.reported = (self.stats.rate_limited, self.stats.queue_full, now);
        Some(format!(
            "places: {} WHATSATs answered 429 at once in the last {} ms ({new_rate} over \
             places max-per-second, {new_full} with the queue full)",
            new_rate + new_full,
            now.duration_since(at).as_millis()
        ))
    }

    /// A WHATSAT needs the answer to `key`. `send` hands the call to the workers, with the flag
    /// that cancels it, and says whether they took it (false: the queue is full).
    pub fn begin(
        &mut self,
        key: LookupKey,
        waiter: Waiter,
        now: Instant,
        send: impl FnOnce(Arc<AtomicBool>) -> bool,
    ) -> Begun {
        if let Some(json) = self.cache.get(&key, now) {
            self.stats.cache_hits += 1;
            return Begun::Cached(json.clone(), waiter);
        }
        if let Some(call) = self.in_flight.get_mut(&key) {
            self.stats.coalesced += 1;
            call.waiters.push(waiter);
            return Begun::Joined;
        }
        if let Some(limit) = &mut self.limit {
            if !limit.has_token(now) {
                self.stats.rate_limited += 1;
                return Begun::Refused(PlacesError::RateLimited, waiter);
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        if !send(Arc::clone(&cancel)) {
            self.stats.queue_full += 1;
            return Begun::Refused(PlacesError::QueueFull, waiter);
        }
        if let Some(limit) = &mut self.limit {
            limit.take();
        }
        self.stats.calls_sent += 1;
        self.in_flight.insert(
            key,
            InFlight {
                waiters: vec![waiter],
                cancel,
            },
        );
        Begun::Sent
    }

    /// The connection `(conn_key, conn_id)` closed: its WHATSATs stop waiting, and a call no
    /// one waits for any more is cancelled (a worker that has not started it skips it), so a
    /// client that sends a thousand WHATSATs and leaves does not cost a thousand calls.
    /// Returns how many of its WHATSATs were waiting.
    pub fn forget(&mut self, conn_key: usize, conn_id: u64) -> usize {
        let mut forgotten = 0;
        self.in_flight.retain(|_, call| {
            let before = call.waiters.len();
            call.waiters
                .retain(|w| (w.conn_key, w.conn_id) != (conn_key, conn_id));
            forgotten += before - call.waiters.len();
            if call.waiters.is_empty() {
                call.cancel.store(true, Ordering::Relaxed);
                return false;
            }
            true
        });
        forgotten
    }

    /// A worker skipped a call whose waiters had all gone.
    pub fn skipped(&mut self) {
        self.stats.cancelled += 1;
    }

    /// The call for `key` finished: every waiter gets `json`; a good answer is cached.
    pub fn finish(
        &mut self,
        key: LookupKey,
        json: &ShapedJson,
        elapsed: Duration,
        now: Instant,
    ) -> Vec<Waiter> {
        self.stats.finished(json.kind, elapsed);
        if json.is_reusable() {
            self.cache.insert(key, json.clone(), now);
        }
        self.in_flight
            .remove(&key)
            .map(|call| call.waiters)
            .unwrap_or_default()
    }
}

/// Answers by lookup, for `ttl`, at most `max_entries` of them. Every entry lives as long, so
/// insertion order is expiry order: the oldest is the one to evict, and expired entries are
/// dropped from the front as new ones come.
struct Cache {
    ttl: Duration,
    max_entries: usize,
    entries: HashMap<LookupKey, (ShapedJson, Instant)>,
    /// Keys in insertion order, with the time each was inserted (a key answered again is
    /// queued again; its older queue entry no longer matches and is skipped).
    order: VecDeque<(LookupKey, Instant)>,
}

impl Cache {
    fn new(ttl: Duration, max_entries: usize) -> Cache {
        Cache {
            ttl,
            max_entries,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, key: &LookupKey, now: Instant) -> Option<&ShapedJson> {
        let (json, at) = self.entries.get(key)?;
        (now.duration_since(*at) < self.ttl).then_some(json)
    }

    fn insert(&mut self, key: LookupKey, json: ShapedJson, now: Instant) {
        if self.ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        self.entries.insert(key, (json, now));
        self.order.push_back((key, now));
        while let Some(&(oldest, at)) = self.order.front() {
            let expired = now.duration_since(at) >= self.ttl;
            if !expired && self.entries.len() <= self.max_entries {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&oldest).is_some_and(|(_, t)| *t == at) {
                self.entries.remove(&oldest);
            }
        }
    }
}

/// Calls per second, with a burst of one second's worth.
struct TokenBucket {
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(per_second: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            refilled: now,
        }
    }

    fn has_token(&mut self, now: Instant) -> bool {
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.per_second);
        self.refilled = now;
        self.tokens >= 1.0
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PlacesApi;
    use crate::places::request::PlacesQuery;
    use crate::places::response::{shape_json, PlacesOutcome};

    fn key(n: u32) -> LookupKey {
        PlacesQuery {
            latitude: f64::from(n),
            longitude: 1.0,
            radius_metres: 1000.0,
            bound: 5,
        }
        .key()
    }

    fn waiter(seq: u64) -> Waiter {
        Waiter {
            conn_key: 0,
            conn_id: 1,
            seq,
            at_line: b"AT x"[..].into(),
        }
    }

    fn answer() -> ShapedJson {
        let body = r#"{"places": [{"id": "1"}]}"#.to_string();
        shape_json(
            PlacesApi::New,
            5,
            &PlacesOutcome::Answered { status: 200, body },
        )
    }

    fn failure() -> ShapedJson {
        shape_json(
            PlacesApi::New,
            5,
            &PlacesOutcome::Failed(PlacesError::Timeout),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn identical_lookups_in_flight_share_one_call_and_all_get_its_answer() {
        let now = Instant::now();
        let mut lookups = Lookups::new(0, 0, 0, now);
        let mut calls = 0;
        for seq in 0..100 {
            lookups.begin(key(1), waiter(seq), now, |_| {
                calls += 1;
                true
            });
        }
        assert_eq!(calls, 1);
        let waiters = lookups.finish(key(1), &answer(), ms(500), now + ms(500));
        let seqs: Vec<u64> = waiters.iter().map(|w| w.seq).collect();
        assert_eq!(seqs, (0..100).collect::<Vec<_>>());
        assert_eq!((lookups.stats.calls_sent, lookups.stats.coalesced), (1, 99));
        // Finished: the next one is a new call (no cache here).
        assert!(matches!(
            lookups.begin(key(1), waiter(100), now, |_| true),
            Begun::Sent
        ));
    }

    #[test]
    fn a_call_whose_waiters_all_left_is_cancelled() {
        let now = Instant::now();
        let mut lookups = Lookups::new(0, 0, 0, now);
        let mut flags = Vec::new();
        let mut begin = |lookups: &mut Lookups, key_n, conn_id, seq| {
            let waiter = Waiter {
                conn_id,
                ..waiter(seq)
            };
            lookups.begin(key(key_n), waiter, now, |cancel| {
                flags.push(cancel);
                true
            });
        };
        begin(&mut lookups, 1, 7, 0);
        begin(&mut lookups, 1, 8, 0); // another client waits for the same call
        begin(&mut lookups, 2, 7, 1);
        assert_eq!(lookups.forget(0, 7), 2);
        assert!(!flags[0].load(Ordering::Relaxed), "client 8 still waits");
        assert!(flags[1].load(Ordering::Relaxed), "nobody waits for key 2");
        let waiters = lookups.finish(key(1), &answer(), ms(1), now);
        assert_eq!(waiters.len(), 1);
        assert_eq!(waiters[0].conn_id, 8);
        assert!(lookups.finish(key(2), &answer(), ms(1), now).is_empty());
    }

    #[test]
    fn a_failed_call_answers_every_waiter_and_is_not_cached() {
        let now = Instant::now();
        let mut lookups = Lookups::new(60_000, 10, 0, now);
        lookups.begin(key(1), waiter(0), now, |_| true);
        lookups.begin(key(1), waiter(1), now, |_| true);
        assert_eq!(lookups.finish(key(1), &failure(), ms(5), now).len(), 2);
        assert_eq!(lookups.stats.timeouts, 1);
        assert!(matches!(
            lookups.begin(key(1), waiter(2), now, |_| true),
            Begun::Sent
        ));
    }

    #[test]
    fn a_good_answer_is_reused_until_it_is_cache_ms_old() {
        let now = Instant::now();
        let mut lookups = Lookups::new(1000, 10, 0, now);
        lookups.begin(key(1), waiter(0), now, |_| true);
        lookups.finish(key(1), &answer(), ms(100), now);
        let fresh = lookups.begin(key(1), waiter(1), now + ms(999), |_| panic!("no call"));
        assert!(matches!(fresh, Begun::Cached(_, Waiter { seq: 1, .. })));
        assert!(matches!(
            lookups.begin(key(2), waiter(2), now, |_| true),
            Begun::Sent
        ));
        assert!(matches!(
            lookups.begin(key(1), waiter(3), now + ms(1000), |_| true),
            Begun::Sent
        ));
        assert_eq!(lookups.stats.cache_hits, 1);
    }

    #[test]
    fn the_cache_holds_at_most_cache_entries_and_evicts_the_oldest() {
        let now = Instant::now();
        let mut lookups = Lookups::new(60_000, 2, 0, now);
        for n in 0..3 {
            lookups.begin(key(n), waiter(0), now, |_| true);
            lookups.finish(key(n), &answer(), ms(1), now + ms(u64::from(n)));
        }
        assert_eq!(lookups.cache.entries.len(), 2);
        let later = now + ms(10);
        assert!(matches!(
            lookups.begin(key(0), waiter(1), later, |_| true),
            Begun::Sent
        ));
        assert!(matches!(
            lookups.begin(key(2), waiter(2), later, |_| panic!("cached")),
            Begun::Cached(..)
        ));
    }

    #[test]
    fn a_zero_cache_period_turns_the_cache_off() {
        let now = Instant::now();
        let mut lookups = Lookups::new(0, 100, 0, now);
        lookups.begin(key(1), waiter(0), now, |_| true);
        lookups.finish(key(1), &answer(), ms(1), now);
        assert!(lookups.cache.entries.is_empty());
    }

    #[test]
    fn past_max_per_second_lookups_are_refused_and_cached_ones_do_not_count() {
        let now = Instant::now();
        let mut lookups = Lookups::new(60_000, 100, 2, now);
        for n in 0..2 {
            assert!(matches!(
                lookups.begin(key(n), waiter(0), now, |_| true),
                Begun::Sent
            ));
        }
        // Coalesced and cached lookups need no token.
        assert!(matches!(
            lookups.begin(key(0), waiter(1), now, |_| true),
            Begun::Joined
        ));
        lookups.finish(key(1), &answer(), ms(1), now);
        assert!(matches!(
            lookups.begin(key(1), waiter(2), now, |_| true),
            Begun::Cached(..)
        ));
        let refused = lookups.begin(key(9), waiter(3), now, |_| panic!("not sent"));
        assert!(matches!(
            refused,
            Begun::Refused(PlacesError::RateLimited, Waiter { seq: 3, .. })
        ));
        // Half a second later one token is back.
        assert!(matches!(
            lookups.begin(key(9), waiter(4), now + ms(500), |_| true),
            Begun::Sent
        ));
        assert!(matches!(
            lookups.begin(key(8), waiter(5), now + ms(500), |_| true),
            Begun::Refused(PlacesError::RateLimited, _)
        ));
        assert_eq!(lookups.stats.rate_limited, 2);
    }

    #[test]
    fn refusals_are_counted_in_one_line_a_second() {
        let now = Instant::now();
        let mut lookups = Lookups::new(0, 0, 1, now);
        assert_eq!(
            lookups.refusals_report(now + ms(2000)),
            None,
            "nothing refused"
        );
        lookups.begin(key(1), waiter(0), now, |_| true);
        for n in 2..5 {
            lookups.begin(key(n), waiter(0), now, |_| true);
        }
        lookups.begin(key(9), waiter(0), now + ms(1500), |_| false);
        assert_eq!(
            lookups.refusals_report(now + ms(999)),
            None,
            "within the second"
        );
        let line = lookups.refusals_report(now + ms(2000)).unwrap();
        assert!(line.contains("4 WHATSATs answered 429"), "{line}");
        assert!(
            line.contains("3 over places max-per-second, 1 with the queue full"),
            "{line}"
        );
        assert_eq!(lookups.refusals_report(now + ms(4000)), None);
    }

    #[test]
    fn a_full_queue_refuses_without_using_a_token() {
        let now = Instant::now();
        let mut lookups = Lookups::new(0, 0, 1, now);
        assert!(matches!(
            lookups.begin(key(1), waiter(0), now, |_| false),
            Begun::Refused(PlacesError::QueueFull, _)
        ));
        assert!(matches!(
            lookups.begin(key(1), waiter(1), now, |_| true),
            Begun::Sent
        ));
        assert_eq!(lookups.stats.queue_full, 1);
        assert_eq!(lookups.stats.calls_sent, 1);
    }
}
