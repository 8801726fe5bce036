//! The helpers of herd's integration tests (`tests/*.rs`) and load bench (`bench/`), as one
//! library: every test binary and the bench use what they need of it with
//! `use herd_test_support::{...}`, so nothing is compiled per binary and nothing is dead code.
//!
//! - [`harness`]: free loopback ports, temporary directories, herd configs, `herd` processes
//!   (killed on drop), reading their logs (the bench uses it too); the one wait of every test
//!   (`wait_until`, `wait_for`), and `skip_test` for a test that cannot run here;
//! - [`server`]: one server under test (or a `herd --all` supervisor) and its log records;
//! - [`cluster`]: a test herd of several servers and waits on what they know and log;
//! - [`client`]: a line-oriented client and the client times IAMAT sends;
//! - [`checks`]: checks of replies (AT lines, WHATSAT framing, Places JSON);
//! - [`metrics`]: `metrics` lines on free ports, HTTP requests to them, samples of a page;
//! - [`raw_peer`]: a raw connection that plays a neighbour by hand;
//! - [`run`]: `herd` runs expected to exit by themselves;
//! - [`fake_places`]: a fake Google Places HTTP server (the bench uses it too);
//! - [`tmpfs`]: a tiny file system, for the tests of a full disk;
//! - [`wan`]: a WAN on loopback (relays with delay, jitter, a bandwidth cap, cuts, blackholes);
//! - [`nemesis`]: a nemesis run with a checker (clients, seeded faults, the final verdict).

pub mod checks;
pub mod client;
pub mod cluster;
pub mod fake_places;
pub mod harness;
pub mod metrics;
pub mod nemesis;
pub mod raw_peer;
pub mod run;
pub mod server;
pub mod tmpfs;
pub mod wan;
