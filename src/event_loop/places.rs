//! The Places front: every WHATSAT's lookup goes through here, and every answer comes back
//! through here. It owns the pool of workers (and the pools a reload replaced, until their
//! calls in flight have answered), the lookups' cache, coalescing and rate limit, the shaped
//! JSON of refusals, and with `places api local` the places file. It knows nothing of
//! connections: a lookup comes with its [`Waiter`], and answers go back as (waiter, JSON)
//! pairs for the conductor to deliver.
//!
//! With `places api local` a lookup is a search of the file in memory, tens of microseconds,
//! answered at once on the loop: no worker, no cache, no coalescing, no rate limit (they
//! exist to save Google calls, and there are none).
//!
//! Answers are delivered a few per turn ([`RESULTS_PER_TURN`], [`RESULTS_TIME`]); the waker
//! coalesces wakes, so when a turn stops early the rest are taken next turn without one.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::Waker;

use crate::config::{PlacesApi, PlacesSettings};
use crate::places::stats::PlacesStats;
use crate::places::{
    self, Begun, LocalPlaces, LookupDone, LookupJob, Lookups, PlacesPool, PlacesQuery, Refusals,
    Waiter,
};

/// Finished lookups delivered per loop turn. Places answers come back in bursts (a turn that
/// reads many pipelining clients sends a burst of calls, and they are answered together), and
/// each answer is a few hundred lines to copy and log per waiting WHATSAT: taken all at once
/// they made turns of 20-50 ms in which no other client was read.
const RESULTS_PER_TURN: usize = 8;
/// Most time a turn spends delivering finished lookups, beside [`RESULTS_PER_TURN`]: a client
/// that sends one command and waits for its reply waits for the rest of the turn it arrived
/// in, so every part of a turn that grows with the load is bounded in time. At least one is
/// delivered per turn.
const RESULTS_TIME: Duration = Duration::from_micros(250);

/// A WHATSAT's answer, ready for its connection.
pub type Answer = (Waiter, Arc<[u8]>);

pub struct PlacesFront {
    pool: PlacesPool,
    /// Pools a reload replaced, kept until their calls in flight have answered.
    retired: Vec<PlacesPool>,
    /// What each WHATSAT's lookup costs: cache, coalescing, rate limit, counters.
    lookups: Lookups,
    api: PlacesApi,
    /// The JSON of refused lookups, shaped once.
    refusals: Refusals,
    /// Finished lookups may wait in the pool's channel: the waker said so, or the last turn
    /// took its share.
    results_pending: bool,
    waker: Arc<Waker>,
    /// With `places api local`: the places file, searched on the loop. `Some` exactly when
    /// `api` is `Local`.
    local: Option<LocalPlaces>,
}

impl PlacesFront {
    /// `local` is the places file, loaded already, when `settings.api` is `Local`.
    pub fn start(
        settings: &PlacesSettings,
        key: Option<crate::secret::Secret>,
        local: Option<LocalPlaces>,
        waker: Arc<Waker>,
        now: Instant,
    ) -> io::Result<PlacesFront> {
        Ok(PlacesFront {
            pool: PlacesPool::start(settings, key, Arc::clone(&waker))?,
            retired: Vec::new(),
            lookups: Lookups::new(
                settings.cache_ms,
                settings.cache_entries,
                settings.max_per_second,
                now,
            ),
            api: settings.api,
            refusals: Refusals::new(),
            results_pending: false,
            waker,
            local: local.filter(|_| settings.api == PlacesApi::Local),
        })
    }

    /// The workers for new Places settings, started before a reload changes anything (the
    /// reload is refused if they cannot be).
    pub fn start_pool(&self, settings: &PlacesSettings) -> Result<PlacesPool, String> {
        let key = match settings.api {
            // No call is made: no key needed, and no warning that there is none.
            PlacesApi::Local => None,
            _ => places::key_from_env(&settings.key_env)
                .map_err(|warning| warn!("{warning}"))
                .ok(),
        };
        PlacesPool::start(settings, key, Arc::clone(&self.waker))
            .map_err(|e| format!("cannot start the new Places workers: {e}"))
    }

    /// New Places settings: the new pool (and a fresh cache and rate limit); the old pool's
    /// calls in flight still answer their WHATSATs.
    pub fn replace_pool(&mut self, pool: PlacesPool, settings: &PlacesSettings, now: Instant) {
        let old = std::mem::replace(&mut self.pool, pool);
        old.retire();
        self.retired.push(old);
        self.api = settings.api;
        self.lookups.reconfigure(
            settings.cache_ms,
            settings.cache_entries,
            settings.max_per_second,
            now,
        );
    }

    /// The places file answered from (`places api local`).
    pub fn local(&self) -> Option<&LocalPlaces> {
        self.local.as_ref()
    }

    /// The places file to answer from after a reload: the one just read when the new
    /// settings say `places api local` (set after [`PlacesFront::replace_pool`]), else none.
    pub fn replace_local(&mut self, local: Option<LocalPlaces>) {
        self.local = local.filter(|_| self.api == PlacesApi::Local);
    }

    /// Starts the lookup of one WHATSAT: returns its answer when it is ready now (from the
    /// places file, from the cache, or a refusal when the queue is full or the rate limit
    /// reached), `None` while a call runs for it.
    pub fn begin(&mut self, query: PlacesQuery, waiter: Waiter, now: Instant) -> Option<Answer> {
        if let Some(local) = &self.local {
            let started = Instant::now();
            let json = local.search(&query);
            let elapsed = started.elapsed();
            self.lookups.stats.answered_locally(elapsed);
            info!(
                "places conn={} local {} in {:.3} ms",
                waiter.conn_id,
                json.summary,
                elapsed.as_secs_f64() * 1000.0
            );
            return Some((waiter, json.text));
        }
        let key = query.key();
        let pool = &self.pool;
        let begun = self.lookups.begin(key, waiter, now, |cancel| {
            pool.submit(LookupJob { key, query, cancel }).is_ok()
        });
        match begun {
            Begun::Sent | Begun::Joined => None,
            Begun::Cached(json, waiter) => Some((waiter, json.text)),
            Begun::Refused(why, waiter) => Some((waiter, self.refusals.json(why))),
        }
    }

    /// A connection with `waiting` lookups closed: its place among the waiters is given up
    /// (a call no one waits for any more is skipped). Returns how many were waiting.
    pub fn forget(&mut self, conn_key: usize, conn_id: u64) -> usize {
        self.lookups.forget(conn_key, conn_id)
    }

    /// The waker said results are waiting.
    pub fn woken(&mut self) {
        self.results_pending = true;
    }

    pub fn has_results(&self) -> bool {
        self.results_pending
    }

    /// Takes this turn's share of finished lookups; each comes with every WHATSAT that waited
    /// on it (`deliver` is called once per waiter).
    pub fn finish_some(&mut self, mut deliver: impl FnMut(Answer)) {
        self.results_pending = false;
        let mut retired_results = Vec::new();
        self.retired.retain(|pool| {
            // Counted first: once no worker is left, every result it will ever send is sent.
            let working = pool.workers() > 0;
            while let Some(done) = pool.try_result() {
                retired_results.push(done);
            }
            working
        });
        let mut retired_results = retired_results.into_iter();
        let mut taken = 0;
        let started = Instant::now();
        while let Some(done) = retired_results.next().or_else(|| {
            if taken >= RESULTS_PER_TURN || started.elapsed() >= RESULTS_TIME {
                self.results_pending = true;
                return None;
            }
            self.pool.try_result()
        }) {
            taken += 1;
            self.finish(done, &mut deliver);
        }
    }

    fn finish(&mut self, done: LookupDone, deliver: &mut impl FnMut(Answer)) {
        let LookupDone { key, json, elapsed } = done;
        let Some(json) = json else {
            self.lookups.skipped();
            return;
        };
        let waiters = self.lookups.finish(key, &json, elapsed, Instant::now());
        if let Some(first) = waiters.first() {
            let shared = match waiters.len() {
                1 => String::new(),
                n => format!(" for {n} WHATSATs"),
            };
            info!(
                "places conn={} {} {} in {:.1} ms{shared}",
                first.conn_id,
                self.api.name(),
                json.summary,
                elapsed.as_secs_f64() * 1000.0
            );
        }
        for waiter in waiters {
            deliver((waiter, Arc::clone(&json.text)));
        }
    }

    /// The once-a-second summary of refused lookups, when there is one.
    pub fn refusals_report(&mut self, now: Instant) -> Option<String> {
        self.lookups.refusals_report(now)
    }

    pub fn stats(&self) -> &PlacesStats {
        &self.lookups.stats
    }
}
