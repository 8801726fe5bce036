//! herd: one server of a proxy herd (README.md is the whole user documentation).
//!
//! Architecture: `main` turns arguments and the config into a [`event_loop::EventLoop`], a
//! single-threaded `mio` loop that owns every socket. Everything that decides is pure and
//! tested without sockets: the protocol (`protocol`, `peer_wire`), the client table (`table`),
//! what a command does (`app`), what a line read on a connection does (`session`, which
//! returns an `Effect` for the loop to carry out), framing and buffers (`buffer`), a
//! connection's ordered replies (`conn`), an outbound link's state machine (`link`) and what
//! it owes its neighbour (`owed`), backoff, config, and Places request/response shaping.
//! `net` is the only code that makes socket calls, `wire` the only door lines go in and out
//! by (and the only caller of the traffic log); Places calls run on the worker threads of
//! `places::pool`, whose results wake the loop through a `mio::Waker`. `store` keeps the
//! records on disk when a `store dir` is set: the loop hands it every record stored and has
//! it write them before any socket write of the turn. `metrics` writes the Prometheus page
//! (and parses the HTTP requests for it) from counters kept where things happen; the loop
//! serves it on the `metrics` address (`event_loop::metrics`). `status` is `herd status`, a
//! command-line reader of those pages, not part of the server.

pub mod allocator;
pub mod app;
pub mod backoff;
pub mod buffer;
pub mod certs;
pub mod changes;
pub mod cli;
pub mod client_index;
pub mod config;
pub mod conn;
pub mod digest;
pub mod escape;
pub mod event_loop;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod owed;
pub mod peer_secret;
pub mod peer_wire;
pub mod places;
pub mod protocol;
pub mod reload;
pub mod secret;
pub mod session;
pub mod signals;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod table;
pub mod tls;
pub mod wire;
