//! SIGHUP's first half: the config read again and checked whole against the one running (what
//! may change is decided in [`crate::reload`]), then everything that can fail made before
//! anything changes (the new metrics listener, the new Places workers). Either half failing
//! refuses the reload as a whole, with a reason for the `reload refused: FILE...` line; the
//! conductor then carries out the plan with what was prepared, which cannot fail.

use std::fs;
use std::os::unix::ffi::OsStrExt;

use mio::net::TcpListener;

use crate::config::{self, Config};
use crate::logging::Escaped;
use crate::net;
use crate::places::PlacesPool;
use crate::reload::{self, Plan};

use super::links::MAX_LINKS;
use super::places::PlacesFront;

/// What the running server is, as a reload checks a new config against it.
pub struct Running<'a> {
    pub name: &'a str,
    pub config: &'a Config,
    pub config_path: &'a std::path::Path,
    /// The most connections the open-file limit leaves room for.
    pub connections_fit: usize,
    /// Links made so far this run (ids are never reused).
    pub links_made: usize,
}

/// What a reload made before it changed anything.
pub struct Prepared {
    /// The listener at the new metrics address (`None`: unchanged, or no longer served).
    pub metrics: Option<TcpListener>,
    /// The pool for the new Places settings, when they changed.
    pub places: Option<PlacesPool>,
}

/// The config file, read and checked against the running one: the plan, or the whole line
/// the refusal is logged as.
pub fn read_plan(running: &Running) -> Result<Plan, String> {
    let path = Escaped(running.config_path.as_os_str().as_bytes()).to_string();
    let bytes =
        fs::read(running.config_path).map_err(|e| format!("reload refused: {path}: {e}"))?;
    let mut new =
        config::parse_config_bytes(&bytes).map_err(|e| format!("reload refused: {path}:{e}"))?;
    // Compared as it will run: clamped to the open-file limit as at start.
    new.limits.max_connections = new.limits.max_connections.min(running.connections_fit);
    let text = String::from_utf8_lossy(&bytes);
    let plan =
        reload::plan(running.name, running.config, new, &text).map_err(
            |refusal| match refusal.line {
                Some(line) => format!("reload refused: {path}:{line}: {}", refusal.problem),
                None => format!("reload refused: {path}: {}", refusal.problem),
            },
        )?;
    let links = running.links_made + plan.links_added.len() + plan.links_moved.len();
    if links > MAX_LINKS {
        return Err(format!(
            "reload refused: {path}: more than {MAX_LINKS} links over this run; restart"
        ));
    }
    Ok(plan)
}

/// Binds the new metrics listener and starts the new Places pool, when the plan needs them;
/// either failing refuses the reload as a whole.
pub fn prepare(running: &Running, plan: &Plan, places: &PlacesFront) -> Result<Prepared, String> {
    let path = Escaped(running.config_path.as_os_str().as_bytes()).to_string();
    let new = &plan.config;
    let metrics = match new
        .metrics_addr(running.name)
        .filter(|_| plan.metrics_changed)
    {
        Some(addr) => Some(net::listen(addr).map_err(|e| {
            format!("reload refused: {path}: cannot listen for metrics on {addr}: {e}")
        })?),
        None => None,
    };
    let places = match plan.places_changed {
        true => Some(
            places
                .start_pool(&new.places)
                .map_err(|e| format!("reload refused: {path}: {e}"))?,
        ),
        false => None,
    };
    Ok(Prepared { metrics, places })
}
