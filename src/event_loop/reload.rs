//! SIGHUP: the config read again and what may change applied while serving (what may is
//! decided in [`crate::reload`]). Anything invalid, or a change that cannot be applied, is
//! logged as `reload refused: FILE:LINE: ...` and the old config keeps running.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};
use mio::net::TcpListener;

use super::{EventLoop, MetricsServer, MAX_LINKS};
use crate::backoff::Backoff;
use crate::config::{self, Config};
use crate::conn::ConnState;
use crate::link::{Link, LinkTiming};
use crate::logging::{self, Escaped};
use crate::net;
use crate::places::{self, PlacesPool};
use crate::reload::{self, Plan};

impl EventLoop {
    pub(super) fn reload(&mut self) {
        let path = Escaped(self.config_path.as_os_str().as_bytes()).to_string();
        let bytes = match fs::read(&self.config_path) {
            Ok(bytes) => bytes,
            Err(e) => return warn!("reload refused: {path}: {e}"),
        };
        let new = match config::parse_config_bytes(&bytes) {
            Ok(new) => new,
            Err(e) => return warn!("reload refused: {path}:{e}"),
        };
        // Compared as it will run: clamped to the open-file limit as at start.
        let mut new = new;
        new.limits.max_connections = new.limits.max_connections.min(self.connections_fit);
        let text = String::from_utf8_lossy(&bytes);
        let plan = match reload::plan(&self.name, &self.config, new, &text) {
            Ok(plan) => plan,
            Err(refusal) => {
                return match refusal.line {
                    Some(line) => warn!("reload refused: {path}:{line}: {}", refusal.problem),
                    None => warn!("reload refused: {path}: {}", refusal.problem),
                };
            }
        };
        let added = self.links.len() + plan.links_added.len() + plan.links_moved.len();
        if added > MAX_LINKS {
            return warn!(
                "reload refused: {path}: more than {MAX_LINKS} links over this run; restart"
            );
        }
        // Everything that can fail is done before anything changes: a refused reload changes
        // nothing, and the config running stays the one a later SIGHUP is compared with.
        let prepared = match self.prepare(&plan) {
            Ok(prepared) => prepared,
            Err(problem) => return warn!("reload refused: {path}: {problem}"),
        };
        let summary = plan.summary();
        self.apply(plan, prepared);
        info!("reload {path}: {summary}");
    }

    /// Binds the new metrics listener and starts the new Places pool, when the plan needs
    /// them; either failing refuses the reload as a whole.
    fn prepare(&self, plan: &Plan) -> Result<Prepared, String> {
        let new = &plan.config;
        let metrics = match new
            .metrics_addr(&self.name)
            .filter(|_| plan.metrics_changed)
        {
            Some(addr) => Some(
                net::listen(addr)
                    .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?,
            ),
            None => None,
        };
        let places = match plan.places_changed {
            true => {
                let key = places::key_from_env(&new.places.key_env)
                    .map_err(|warning| warn!("{warning}"))
                    .ok();
                let pool = PlacesPool::start(&new.places, key, Arc::clone(&self.waker))
                    .map_err(|e| format!("cannot start the new Places workers: {e}"))?;
                Some(pool)
            }
            false => None,
        };
        Ok(Prepared { metrics, places })
    }

    fn apply(&mut self, plan: Plan, prepared: Prepared) {
        let now = Instant::now();
        let new = &plan.config;
        for name in plan
            .links_removed
            .iter()
            .chain(plan.links_moved.iter().map(|m| &m.name))
        {
            self.remove_link(name);
        }
        let link_timing = LinkTiming::of(&new.peer);
        let backoff = Backoff::new(new.peer.backoff_min, new.peer.backoff_max);
        for neighbour in plan.links_added.iter().chain(&plan.links_moved) {
            let id = self.app.add_neighbour(&neighbour.name);
            debug_assert_eq!(id, self.links.len());
            let link = Link::new(
                id,
                &neighbour.name,
                neighbour.addr,
                backoff.clone(),
                link_timing.clone(),
                now,
            );
            info!("link {} added ({})", neighbour.name, neighbour.addr);
            self.links.push(link);
        }
        if plan.peer_timing_changed {
            for link in self.links.iter_mut().filter(|l| !l.is_removed()) {
                link.set_timing(link_timing.clone(), backoff.clone());
            }
            self.max_owed = new.peer.max_owed;
        }
        if plan.servers_changed || plan.limits_changed {
            let servers = new.servers.iter().map(|s| s.name.clone()).collect();
            self.app.set_herd(servers, new.limits.max_future_secs);
        }
        if plan.limits_changed {
            self.limits = new.limits.clone();
        }
        if plan.limits_changed {
            if let Some(metrics) = &mut self.metrics {
                metrics.set_limits(&new.limits);
            }
        }
        if plan.metrics_changed {
            self.move_metrics(prepared.metrics);
        }
        if let Some(pool) = prepared.places {
            self.replace_places(pool, new);
        }
        if plan.log_changed {
            logging::reconfigure(new.log.level, new.log.lines, new.log.rotation);
        }
        self.config = plan.config;
    }

    /// Drops the link to `name` for good, and the connection it opened to us.
    fn remove_link(&mut self, name: &str) {
        let Some(index) = self
            .links
            .iter()
            .position(|l| l.name == name && !l.is_removed())
        else {
            return;
        };
        if let Some(mut socket) = self.links[index].remove() {
            let _ = self.poll.registry().deregister(&mut socket.stream);
        }
        self.app.remove_neighbour(index);
        for (key, entry) in self.conns.iter_mut() {
            if entry.conn.peer.as_ref().is_some_and(|p| p.link == index) {
                entry.conn.state = ConnState::Closed("link removed");
                self.marked_closed.push(key);
            }
        }
        info!("link {name} removed");
    }

    /// Serves the metrics page on `listener` from now on (or no longer, for `None`).
    fn move_metrics(&mut self, listener: Option<TcpListener>) {
        let Some(listener) = listener else {
            if self.metrics.take().is_some() {
                info!("metrics listener closed");
            }
            return;
        };
        let registry = self.poll.registry();
        let result = match &mut self.metrics {
            Some(metrics) => metrics.replace_listener(listener, registry),
            None => MetricsServer::new(listener, registry, &self.name, &self.limits)
                .map(|server| self.metrics = Some(server)),
        };
        if let Err(e) = result {
            // Registering a bound socket fails only when the kernel is out of memory.
            warn!("reload: cannot serve metrics: {e}");
        }
    }

    /// New Places settings: the new pool of workers (and a fresh cache and rate limit); the old
    /// pool's calls in flight still answer their WHATSATs.
    fn replace_places(&mut self, pool: PlacesPool, new: &Config) {
        let old = std::mem::replace(&mut self.places, pool);
        old.retire();
        self.retired_pools.push(old);
        self.places_api = new.places.api;
        self.lookups.reconfigure(
            new.places.cache_ms,
            new.places.cache_entries,
            new.places.max_per_second,
            Instant::now(),
        );
    }
}

/// What a reload made before it changed anything.
struct Prepared {
    /// The listener at the new metrics address (`None`: unchanged, or no longer served).
    metrics: Option<TcpListener>,
    /// The pool for the new Places settings, when they changed.
    places: Option<PlacesPool>,
}
