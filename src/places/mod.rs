//! Places lookups (SPEC section 5): what to ask ([`request`]), how to turn the answer into a
//! WHATSAT reply ([`response`]), what a lookup costs: cache, coalescing and rate limit
//! ([`lookups`], counted in [`stats`]), and the worker threads that ask without blocking the
//! event loop ([`pool`]); or, with `places api local`, a file of places searched in memory on
//! the loop itself ([`local`]).

pub mod local;
pub mod lookups;
pub mod pool;
pub mod request;
pub mod response;
pub mod stats;

pub use lookups::{Begun, Lookups, Waiter};

use crate::secret::Secret;

/// The Places key from the environment variable `places key-env` names; without one, the
/// warning to give (lookups then go out without a key).
pub fn key_from_env(var: &str) -> Result<Secret, String> {
    match std::env::var(var) {
        Ok(key) if !key.is_empty() => Ok(Secret::new(key)),
        _ => Err(format!(
            "{var} is not set: Places lookups go out without a key"
        )),
    }
}
pub use local::{LocalPlaces, LocalPlacesError};
pub use pool::{LookupDone, LookupJob, PlacesPool};
pub use request::PlacesQuery;
pub use response::{shape_json, PlacesError, PlacesOutcome, Refusals};
