//! The worker threads that make Places calls with blocking `ureq`, so the event loop never waits
//! on the network (SPEC section 5).
//!
//! The loop hands a [`LookupJob`] to a bounded queue and goes on; a worker makes the call,
//! shapes the answer, sends a [`LookupDone`] back over a channel, then wakes the loop through
//! its `mio::Waker`. Workers are sized for Places' real latency: `places workers` is the most
//! calls in flight, threads start when there is work and no idle worker to take it (the loop
//! starts the first of a burst, and each new worker the next), and stop after a while without
//! work, so an idle server keeps none; each has a small stack. The agent keeps one idle
//! connection per worker, so in steady state a call opens no new TCP or TLS connection. This is the only module that touches `ureq` or spawns threads for lookups.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use mio::Waker;

use super::request::{legacy_query, new_api_body, LookupKey, PlacesQuery};
use super::response::{shape_json, PlacesError, PlacesOutcome, ShapedJson};
use crate::config::{PlacesApi, PlacesSettings};
use crate::secret::Secret;

/// A worker with nothing to do for this long ends; the next burst starts new ones.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// Stack of a worker thread. A call (ureq, rustls, serde_json on a reply of tens of KB) needs
/// far less than the 2 MiB default; what a thread costs in RSS is the part of it touched.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// Buffers of one kept-alive Places connection (see `PlacesPool::start`).
const CONNECTION_INPUT_BYTES: usize = 16 * 1024;
const CONNECTION_OUTPUT_BYTES: usize = 8 * 1024;

/// One call to make.
#[derive(Debug)]
pub struct LookupJob {
    pub key: LookupKey,
    pub query: PlacesQuery,
    /// Set by the loop when no WHATSAT waits for the answer any more: then it is not made.
    pub cancel: Arc<AtomicBool>,
}

/// A finished call, with its JSON already shaped: parsing and pretty-printing a Places answer
/// (tens of KB for 20 results) happens here on the worker, not on the loop.
#[derive(Debug)]
pub struct LookupDone {
    pub key: LookupKey,
    /// `None`: the call was cancelled before a worker started it.
    pub json: Option<ShapedJson>,
    pub elapsed: Duration,
}

pub struct PlacesPool {
    shared: Arc<Shared>,
    results: Receiver<LookupDone>,
}

/// What the loop and the workers share: the queue, and how many workers there are.
struct Shared {
    state: Mutex<PoolState>,
    work: Condvar,
    max_workers: usize,
    max_queue: usize,
    endpoint: Endpoint,
    results: Sender<LookupDone>,
    waker: Arc<Waker>,
}

struct PoolState {
    queue: VecDeque<LookupJob>,
    workers: usize,
    /// Workers waiting for a job.
    idle: usize,
    /// Workers holding a job (making its call, or handing its answer back). Every other worker
    /// of `places workers` (idle, starting, or not started yet) takes a job as soon as it can,
    /// so only jobs beyond those wait in the queue.
    busy: usize,
    /// A worker was started and has not run yet. It starts the next one itself if jobs are
    /// still waiting then, so a burst of lookups costs the loop one thread start, not one per
    /// worker (each start takes the process's memory-map lock, and a few hundred of them in a
    /// row held the loop for tens of milliseconds).
    starting: bool,
    closed: bool,
}

/// What every worker needs to make a call.
struct Endpoint {
    api: PlacesApi,
    url: String,
    field_mask: String,
    key: Option<Secret>,
    agent: ureq::Agent,
}

impl PlacesPool {
    /// A pool of up to `settings.workers` threads, none started yet. `waker` wakes the loop
    /// after each result.
    pub fn start(
        settings: &PlacesSettings,
        key: Option<Secret>,
        waker: Arc<Waker>,
    ) -> io::Result<PlacesPool> {
        let (results_tx, results_rx) = mpsc::channel();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("herd/", env!("CARGO_PKG_VERSION")))
            // One idle connection per worker: ureq keeps 3 per host by default, so most calls
            // of a busy pool would open a new connection (and a TLS handshake) each.
            .max_idle_connections(settings.workers)
            .max_idle_connections_per_host(settings.workers)
            // Nagle plus the server's delayed ACK stall a kept-alive request for ~40 ms.
            .no_delay(true)
            // ureq gives every connection 128 KiB each way, which with one kept-alive
            // connection per worker was most of a busy worker's memory (400 KiB per worker in
            // the bench, 158 KiB with these). A request is a few hundred bytes; the input
            // buffer must hold a response's headers (Google's are a few KB) and the body
            // streams through it.
            .input_buffer_size(CONNECTION_INPUT_BYTES)
            .output_buffer_size(CONNECTION_OUTPUT_BYTES)
            .max_response_header_size(CONNECTION_INPUT_BYTES)
            .build()
            .into();
        let shared = Arc::new(Shared {
            state: Mutex::new(PoolState {
                queue: VecDeque::new(),
                workers: 0,
                idle: 0,
                busy: 0,
                starting: false,
                closed: false,
            }),
            work: Condvar::new(),
            max_workers: settings.workers,
            max_queue: settings.queue,
            endpoint: Endpoint {
                api: settings.api,
                url: settings.url().to_string(),
                field_mask: settings.field_mask.clone(),
                key,
                agent,
            },
            results: results_tx,
            waker,
        });
        Ok(PlacesPool {
            shared,
            results: results_rx,
        })
    }

    /// Queues a call, starting a worker when none is idle to take it; hands the job back at
    /// once when `places queue` jobs already wait for a worker.
    pub fn submit(&self, job: LookupJob) -> Result<(), LookupJob> {
        let mut state = lock(&self.shared.state);
        if state.closed || !has_room(&state, self.shared.max_workers, self.shared.max_queue) {
            return Err(job);
        }
        state.queue.push_back(job);
        // A woken worker leaves `idle` only when it runs, so count the jobs it has not taken.
        if state.queue.len() > state.idle
            && !state.starting
            && state.workers < self.shared.max_workers
        {
            match start_worker(&self.shared, &mut state) {
                Ok(()) => {}
                Err(e) if state.workers == 0 => {
                    log::warn!("places: cannot start a worker: {e}");
                    return Err(state.queue.pop_back().expect("pushed above"));
                }
                // Others are running; the job waits for one of them.
                Err(e) => log::warn!("places: cannot start another worker: {e}"),
            }
        }
        self.shared.work.notify_one();
        Ok(())
    }

    /// A finished lookup, if one is waiting. Wakes coalesce, so the loop drains until `None`.
    pub fn try_result(&self) -> Option<LookupDone> {
        self.results.try_recv().ok()
    }

    /// Worker threads running now.
    pub fn workers(&self) -> usize {
        lock(&self.shared.state).workers
    }
}

impl PlacesPool {
    /// Replaced by a reload: each worker ends after its current call, as at a stop.
    pub fn retire(&self) {
        lock(&self.shared.state).closed = true;
        self.shared.work.notify_all();
    }
}

impl Drop for PlacesPool {
    fn drop(&mut self) {
        // Each worker ends after its current call; stopping the server never waits on one.
        lock(&self.shared.state).closed = true;
        self.shared.work.notify_all();
    }
}

/// Whether one more job fits: `places workers` jobs are taken at once by a worker that is not
/// busy (idle, just started and not yet running, or yet to start), and `places queue` more may
/// wait for one. A job that a worker started a moment ago will take is not waiting; counting it
/// as waiting refused one lookup of every burst that the queue had room for.
fn has_room(state: &PoolState, max_workers: usize, max_queue: usize) -> bool {
    let taken_at_once = max_workers - state.busy;
    state.queue.len() < taken_at_once + max_queue
}

fn lock(state: &Mutex<PoolState>) -> MutexGuard<'_, PoolState> {
    // A worker that panicked mid-call leaves the counts as they were; carry on with them.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How much lower than the loop's a worker's scheduling priority is (`nice`): shaping a
/// Places answer can wait a little; a client's IAMAT on the loop should not wait for 256 of
/// them. On a 2-core machine under 2,000 pipelining attackers this halved the probe's p99
/// (50-78 ms -> 28-35 ms, `cargo bench --bench load -- hostile --quick`).
const WORKER_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (Linux nice values are per thread).
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; a failure only leaves the priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, WORKER_NICE);
    }
}

/// Starts a worker thread and counts it (see [`PoolState::starting`]).
fn start_worker(shared: &Arc<Shared>, state: &mut PoolState) -> io::Result<()> {
    spawn_worker(shared)?;
    state.workers += 1;
    state.starting = true;
    Ok(())
}

fn spawn_worker(shared: &Arc<Shared>) -> io::Result<()> {
    let for_worker = Arc::clone(shared);
    thread::Builder::new()
        .name("places".to_string())
        .stack_size(WORKER_STACK_BYTES)
        .spawn(move || work(&for_worker))
        .map(drop)
}

/// Run by a worker as it starts: it takes one of the waiting jobs itself, and starts the next
/// worker for any others that no idle worker will take. The thread is started outside the
/// lock, which the loop takes for every lookup: a worker runs at a lower priority, and one
/// preempted while holding it would hold up the loop.
fn start_next_worker(shared: &Arc<Shared>) {
    {
        let mut state = lock(&shared.state);
        state.starting = false;
        let wanted = !state.closed
            && state.queue.len() > state.idle + 1
            && state.workers < shared.max_workers;
        if !wanted {
            return;
        }
        // Counted before it runs, as the loop counts the workers it starts.
        state.workers += 1;
        state.starting = true;
    }
    if let Err(e) = spawn_worker(shared) {
        log::warn!("places: cannot start another worker: {e}");
        let mut state = lock(&shared.state);
        state.workers -= 1;
        state.starting = false;
    }
}

fn work(shared: &Arc<Shared>) {
    lower_priority();
    start_next_worker(shared);
    let mut finished_one = false;
    loop {
        let Some(job) = next_job(shared, finished_one) else {
            return;
        };
        finished_one = true;
        let started = Instant::now();
        let json = (!job.cancel.load(Ordering::Relaxed)).then(|| {
            let outcome = shared.endpoint.call(&job.query);
            shape_json(shared.endpoint.api, job.query.bound, &outcome)
        });
        let done = LookupDone {
            key: job.key,
            json,
            elapsed: started.elapsed(),
        };
        if shared.results.send(done).is_err() {
            return;
        }
        // A failed wake leaves the result queued; the loop's next tick picks it up.
        let _ = shared.waker.wake();
    }
}

/// The next job, or `None` when the pool closes or this worker has idled for [`IDLE_EXIT`].
/// `finished_one`: this worker is done with the job it took last (it is no longer busy).
fn next_job(shared: &Shared, finished_one: bool) -> Option<LookupJob> {
    let mut state = lock(&shared.state);
    if finished_one {
        state.busy -= 1;
    }
    loop {
        if state.closed {
            state.workers -= 1;
            return None;
        }
        if let Some(job) = state.queue.pop_front() {
            state.busy += 1;
            return Some(job);
        }
        state.idle += 1;
        let (guard, wait) = shared
            .work
            .wait_timeout(state, IDLE_EXIT)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state = guard;
        state.idle -= 1;
        if wait.timed_out() && state.queue.is_empty() {
            state.workers -= 1;
            return None;
        }
    }
}

impl Endpoint {
    fn call(&self, query: &PlacesQuery) -> PlacesOutcome {
        let key = self.key.as_ref().map_or("", |k| k.expose());
        let sent = match self.api {
            PlacesApi::New => {
                let mut request = self
                    .agent
                    .post(&self.url)
                    .header("X-Goog-FieldMask", &self.field_mask)
                    .content_type("application/json");
                if !key.is_empty() {
                    request = request.header("X-Goog-Api-Key", key);
                }
                request.send(new_api_body(query))
            }
            PlacesApi::Legacy => {
                let separator = if self.url.contains('?') { '&' } else { '?' };
                let mut url = format!("{}{separator}{}", self.url, legacy_query(query));
                if !key.is_empty() {
                    url.push_str("&key=");
                    url.push_str(&percent_encode(key));
                }
                self.agent.get(&url).call()
            }
            // Answered on the loop from the places file (`LocalPlaces::search`); a lookup
            // handed to the pool anyway says so instead of calling anyone.
            PlacesApi::Local => {
                return PlacesOutcome::Failed(PlacesError::Transport(
                    "places api local is answered from the places file, not by a worker"
                        .to_string(),
                ))
            }
        };
        let outcome = match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                match response.body_mut().read_to_string() {
                    Ok(body) => PlacesOutcome::Answered { status, body },
                    Err(error) => PlacesOutcome::Failed(describe(&error)),
                }
            }
            Err(error) => PlacesOutcome::Failed(describe(&error)),
        };
        scrub(outcome, key)
    }
}

/// A failure in words that never quote the request: ureq's own messages may hold the URL,
/// and with `api legacy` the URL holds the key.
fn describe(error: &ureq::Error) -> PlacesError {
    let why = match error {
        ureq::Error::Timeout(_) => return PlacesError::Timeout,
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => return PlacesError::Timeout,
        ureq::Error::Io(e) => e.to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::BodyExceedsLimit(_) => "answer too large".to_string(),
        ureq::Error::Protocol(_) => "HTTP protocol error".to_string(),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "TLS error".to_string(),
        ureq::Error::BadUri(_) => "bad places url".to_string(),
        _ => "request failed".to_string(),
    };
    PlacesError::Transport(why)
}

/// Belt and braces: whatever came back, the key is not in it.
fn scrub(outcome: PlacesOutcome, key: &str) -> PlacesOutcome {
    if key.is_empty() {
        return outcome;
    }
    match outcome {
        PlacesOutcome::Answered { status, body } if body.contains(key) => PlacesOutcome::Answered {
            status,
            body: body.replace(key, "<redacted>"),
        },
        PlacesOutcome::Failed(PlacesError::Transport(why)) if why.contains(key) => {
            PlacesOutcome::Failed(PlacesError::Transport(why.replace(key, "<redacted>")))
        }
        other => other,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use std::net::TcpListener;

    /// A pool whose calls go to a loopback port that accepts connections (the kernel completes
    /// them) but never answers, so every call it starts stays in flight for `timeout-ms`.
    fn pool_that_never_hears_back(workers: usize, queue: usize) -> (PlacesPool, TcpListener) {
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let config = parse_config(&format!(
            "server A 127.0.0.1:1\nplaces url http://127.0.0.1:{port}/\n\
             places workers {workers}\nplaces queue {queue}\nplaces timeout-ms 5000\n"
        ))
        .unwrap();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let pool = PlacesPool::start(&config.places, None, waker).unwrap();
        (pool, silent)
    }

    fn job(n: u32) -> LookupJob {
        let query = PlacesQuery {
            latitude: 1.0,
            longitude: 1.0,
            radius_metres: f64::from(n),
            bound: 1,
        };
        LookupJob {
            key: query.key(),
            query,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    fn accepted_of(pool: &PlacesPool, burst: u32) -> usize {
        (1..=burst).filter(|&n| pool.submit(job(n)).is_ok()).count()
    }

    #[test]
    fn a_burst_takes_one_job_per_worker_and_queue_more() {
        // However far the workers got through starting while the burst came in, each job is
        // either held by a worker or waiting in the queue: workers + queue are taken.
        for (workers, queue) in [(1, 2), (1, 1), (4, 2), (3, 5)] {
            let (pool, _silent) = pool_that_never_hears_back(workers, queue);
            assert_eq!(
                accepted_of(&pool, 20),
                workers + queue,
                "places workers {workers}, places queue {queue}"
            );
        }
    }

    #[test]
    fn a_job_for_a_worker_just_started_is_not_counted_as_queued() {
        // The first job starts the one worker, which has not run yet when the next come in:
        // it will take that job at once, so two more still fit in `places queue 2`.
        let state = PoolState {
            queue: VecDeque::from([job(1), job(2)]),
            workers: 1,
            idle: 0,
            busy: 0,
            starting: true,
            closed: false,
        };
        assert!(has_room(&state, 1, 2));
        let state = PoolState {
            queue: VecDeque::from([job(1), job(2), job(3)]),
            ..state
        };
        assert!(!has_room(&state, 1, 2));
        // Once the worker holds its job, two wait and the pool is full.
        let state = PoolState {
            queue: VecDeque::from([job(2), job(3)]),
            busy: 1,
            ..state
        };
        assert!(!has_room(&state, 1, 2));
    }

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(percent_encode("AIza-_.~09"), "AIza-_.~09");
        assert_eq!(percent_encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn the_key_is_scrubbed_from_what_came_back() {
        let outcome = PlacesOutcome::Answered {
            status: 400,
            body: "bad key SECRET123".to_string(),
        };
        assert_eq!(
            scrub(outcome, "SECRET123"),
            PlacesOutcome::Answered {
                status: 400,
                body: "bad key <redacted>".to_string()
            }
        );
    }
}
