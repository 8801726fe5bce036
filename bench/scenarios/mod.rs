//! What every scenario shares: the run context (herd binary, `--target`, `--quick`), and the
//! modules each scenario draws on (the servers it measures, herd shapes, shared rows). Each
//! scenario module runs one scenario of the issue and returns its `Section`.

pub mod bigherd;
pub mod conns;
pub mod flood;
pub mod grow;
pub mod hostile;
pub mod iamat;
pub mod local;
pub mod memory;
pub mod nemesis;
pub mod places;
pub mod rejoin;
pub mod sites;
pub mod staleness;
pub mod store;
pub mod tls;
pub mod whatsat;

mod rows;
mod subject;
mod target;
mod topology;

use std::path::PathBuf;
use std::time::Duration;

use crate::commands::Names;

pub use rows::{load_row, p99_ratio, round3};
pub use subject::{iamat_load, Fleet, Subject};
pub use target::Target;
pub use topology::{cylinder, eccentricity, farthest, five_servers, grid};

/// What every scenario is given: the server binary, `--target`, and how long to run.
pub struct Ctx {
    pub bin: PathBuf,
    pub target: Option<Target>,
    pub quick: bool,
    /// Scenario 1's C x P configurations to run (empty: all).
    pub shapes: Vec<(usize, usize)>,
    /// `--clients N`: the rejoin and grow scenarios' client count instead of their defaults.
    pub clients: Option<u64>,
    pub names: Names,
}

impl Ctx {
    /// `full` seconds, or a quarter of that (at least 0.3 s) with `--quick`.
    pub fn secs(&self, full: f64) -> Duration {
        Duration::from_secs_f64(if self.quick {
            (full / 4.0).max(0.3)
        } else {
            full
        })
    }

    /// `full`, or a quarter of it with `--quick`.
    pub fn count(&self, full: usize) -> usize {
        if self.quick {
            (full / 4).max(1)
        } else {
            full
        }
    }
}
