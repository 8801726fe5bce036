//! Places lookups (SPEC section 5): what to ask ([`request`]), how to turn the answer into a
//! WHATSAT reply ([`response`]), and the worker threads that ask without blocking the event
//! loop ([`pool`]).

pub mod pool;
pub mod request;
pub mod response;

pub use pool::{LookupDone, LookupJob, PlacesPool};
pub use request::PlacesQuery;
pub use response::{shape_reply, PlacesError, PlacesOutcome};
