//! herd: one server of a proxy herd (see ../shared/SPEC.md and README.md).
//!
//! Architecture: `main` turns arguments and the config into a [`event_loop::EventLoop`], a
//! single-threaded `mio` loop that owns every socket. Protocol rules live in pure modules
//! (`protocol`, `store`, `app`, `buffer`, `config`, `places::request`, `places::response`) that
//! are tested without sockets; `net` is the only code that makes socket calls; `session` decides
//! what the lines of one read do, `event_loop` (with `event_loop::links` for the outbound links)
//! owns the sockets and the `Registry`; Places calls run on the worker threads of
//! `places::pool`, whose results wake the loop through a `mio::Waker`.

pub mod app;
pub mod backoff;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod conn;
pub mod event_loop;
pub mod link;
pub mod logging;
pub mod net;
pub mod owed;
pub mod peer_wire;
pub mod places;
pub mod protocol;
pub mod secret;
pub mod session;
pub mod store;
pub mod supervisor;
pub mod wire;
