//! The worker threads that make Places calls with blocking `ureq`, so the event loop never waits
//! on the network (SPEC section 5).
//!
//! The loop hands a [`LookupJob`] to a bounded queue and goes on; a worker makes the call and
//! sends a [`LookupDone`] back over a channel, then wakes the loop through its `mio::Waker`.
//! This is the only module that touches `ureq` or spawns threads for lookups.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mio::Waker;

use super::request::{legacy_query, new_api_body, PlacesQuery};
use super::response::{shape_reply, PlacesError, PlacesOutcome, ShapedReply};
use crate::config::{PlacesApi, PlacesSettings};
use crate::secret::Secret;

/// One lookup to make, and where its reply goes.
#[derive(Debug)]
pub struct LookupJob {
    /// Which connection asked (its slab key and its unique id, so a reply never reaches a
    /// connection that reused the slot) and which reply slot on it waits.
    pub conn_key: usize,
    pub conn_id: u64,
    pub seq: u64,
    /// The stored AT line at the time of the WHATSAT: the first line of the reply.
    pub at_line: Box<[u8]>,
    pub query: PlacesQuery,
}

/// A finished lookup, with its WHATSAT reply already built: parsing and pretty-printing a
/// Places answer (tens of KB for 20 results) happens here on the worker, not on the loop.
#[derive(Debug)]
pub struct LookupDone {
    pub job: LookupJob,
    pub reply: ShapedReply,
    pub elapsed: Duration,
}

pub struct PlacesPool {
    jobs: Option<SyncSender<LookupJob>>,
    results: Receiver<LookupDone>,
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
    /// Starts `settings.workers` threads. `waker` wakes the loop after each result.
    pub fn start(
        settings: &PlacesSettings,
        key: Option<Secret>,
        waker: Arc<Waker>,
    ) -> io::Result<PlacesPool> {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<LookupJob>(settings.queue);
        let (results_tx, results_rx) = mpsc::channel();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("herd/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let endpoint = Arc::new(Endpoint {
            api: settings.api,
            url: settings.url().to_string(),
            field_mask: settings.field_mask.clone(),
            key,
            agent,
        });
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        for n in 0..settings.workers {
            let endpoint = Arc::clone(&endpoint);
            let jobs = Arc::clone(&jobs_rx);
            let results = results_tx.clone();
            let waker = Arc::clone(&waker);
            // Detached: a worker ends when the queue closes (the pool is dropped) or with the
            // process; stopping the server never waits on a Places call in flight.
            thread::Builder::new()
                .name(format!("places-{n}"))
                .spawn(move || work(&endpoint, &jobs, &results, &waker))?;
        }
        Ok(PlacesPool {
            jobs: Some(jobs_tx),
            results: results_rx,
        })
    }

    /// Queues a lookup, or hands it back at once when the queue is full.
    pub fn submit(&self, job: LookupJob) -> Result<(), LookupJob> {
        let Some(jobs) = &self.jobs else {
            return Err(job);
        };
        match jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Err(job),
        }
    }

    /// A finished lookup, if one is waiting. Wakes coalesce, so the loop drains until `None`.
    pub fn try_result(&self) -> Option<LookupDone> {
        self.results.try_recv().ok()
    }
}

impl Drop for PlacesPool {
    fn drop(&mut self) {
        // Closing the queue ends each worker after its current call.
        self.jobs = None;
    }
}

fn work(
    endpoint: &Endpoint,
    jobs: &Mutex<Receiver<LookupJob>>,
    results: &Sender<LookupDone>,
    waker: &Waker,
) {
    loop {
        // The lock is held only while waiting for the next job, never during a call.
        let next = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        let started = Instant::now();
        let outcome = endpoint.call(&job.query);
        let elapsed = started.elapsed();
        let reply = shape_reply(endpoint.api, &job.at_line, job.query.bound, &outcome);
        let done = LookupDone {
            job,
            reply,
            elapsed,
        };
        if results.send(done).is_err() {
            return;
        }
        // A failed wake leaves the result queued; the loop's next tick picks it up.
        let _ = waker.wake();
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
