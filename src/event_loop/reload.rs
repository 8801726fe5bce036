//! SIGHUP: the config read again and checked whole against the one running (what may change
//! is decided in [`crate::reload`]), then everything that can fail made before anything
//! changes (the new metrics listener, the new Places workers, the places file of `places api
//! local` read and indexed when it changed, the certificates and key of `peer tls` read
//! again), then the plan carried out on the parts with what was prepared,
//! which cannot fail. A reload is all or nothing: a refusal at any step changes nothing, is
//! logged (and said on stderr, for whoever sent the SIGHUP), and the config running stays
//! the one the next SIGHUP is compared with.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpListener;
use mio::Registry;

use crate::app::App;
use crate::config::{self, Config, Limits};
use crate::escape::Escaped;
use crate::logging;
use crate::net;
use crate::places::{LocalPlaces, PlacesPool};
use crate::reload::{self, Plan};
use crate::tls::{self, ClientTlsConfig, PeerTlsConfig};

use super::clients::Clients;
use super::links::Links;
use super::metrics::MetricsServer;
use super::places::PlacesFront;
use super::tokens::MAX_LINKS;

/// What the running server is, as a reload checks a new config against it.
pub struct Running<'a> {
    pub name: &'a str,
    pub config: &'a Config,
    pub config_path: &'a std::path::Path,
    /// The most connections the open-file limit leaves room for.
    pub connections_fit: usize,
}

/// The parts a reload changes, lent by the conductor.
pub struct Parts<'a> {
    pub registry: &'a Registry,
    pub app: &'a mut App,
    pub clients: &'a mut Clients,
    pub links: &'a mut Links,
    pub places: &'a mut PlacesFront,
    pub metrics: &'a mut Option<MetricsServer>,
}

/// Reads, checks, prepares and applies a reload; returns the config to run from now on, or
/// `None` when the reload was refused (logged, and said on stderr).
pub fn reload(running: Running, parts: Parts) -> Option<Config> {
    let links_made = parts.links.count();
    let ready = read_plan(&running, links_made)
        .and_then(|plan| Ok((prepare(&running, &plan, parts.places)?, plan)));
    let (prepared, plan) = match ready {
        Ok(ready) => ready,
        Err(refusal) => {
            say(&refusal);
            warn!("{refusal}");
            return None;
        }
    };
    let path = Escaped(running.config_path.as_os_str().as_bytes()).to_string();
    let mut summary = match (&prepared.local, plan.changes_nothing()) {
        (Some(file), true) => file.summary().to_string(),
        (Some(file), false) => format!("{}; {}", plan.summary(), file.summary()),
        (None, _) => plan.summary(),
    };
    if prepared.tls.is_some() {
        summary += "; peer tls certificates read";
    }
    if prepared.client_tls.is_some() {
        summary += "; tls certificate read";
    }
    let config = apply(plan, prepared, parts);
    say(&format!("reload {path}: {summary}"));
    info!("reload {path}: {summary}");
    Some(config)
}

/// What a reload made before it changed anything.
struct Prepared {
    /// The listener at the new metrics address (`None`: unchanged, or no longer served).
    metrics: Option<TcpListener>,
    /// The pool for the new Places settings, when they changed.
    places: Option<PlacesPool>,
    /// With `places api local`: the places file, read again or found unchanged.
    local: Option<PlacesFile>,
    /// With `peer tls`: the CA, certificate and key read again (SPEC section 9: SIGHUP
    /// re-reads them; new connections get the new ones, links up keep their session).
    tls: Option<PeerTlsConfig>,
    /// With `tls NAME ...`: the certificate chain and key for clients read again.
    client_tls: Option<ClientTlsConfig>,
}

/// What a reload found of the places file of `places api local`.
enum PlacesFile {
    /// Read (again), in this long.
    Read(LocalPlaces, Duration),
    /// The file answered from already, unchanged since it was read: kept, not read again (a
    /// world file takes a few hundred ms, and logrotate's SIGHUP comes daily).
    Unchanged,
}

impl PlacesFile {
    fn summary(&self) -> &'static str {
        match self {
            PlacesFile::Read(..) => "places file read",
            PlacesFile::Unchanged => "places file unchanged",
        }
    }
}

/// The config file, read and checked against the running one: the plan, or the whole line
/// the refusal is logged as.
fn read_plan(running: &Running, links_made: usize) -> Result<Plan, String> {
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
    let links = links_made + plan.links_added.len() + plan.links_moved.len();
    if links > MAX_LINKS {
        return Err(format!(
            "reload refused: {path}: more than {MAX_LINKS} links over this run; restart"
        ));
    }
    Ok(plan)
}

/// Binds the new metrics listener, starts the new Places pool and reads the places file, when
/// the plan needs them; any of them failing refuses the reload as a whole (a broken places
/// file included: the places answered from stay the old ones).
fn prepare(running: &Running, plan: &Plan, places: &PlacesFront) -> Result<Prepared, String> {
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
    let pool = match plan.places_changed {
        true => Some(
            places
                .start_pool(&new.places)
                .map_err(|e| format!("reload refused: {path}: {e}"))?,
        ),
        false => None,
    };
    let local = match new.places.file_path(running.config_path) {
        Some(file) if plan.check_places_file => {
            if places.local().is_some_and(|old| old.is_unchanged(&file)) {
                Some(PlacesFile::Unchanged)
            } else {
                // On the loop, like the rest of a reload: the world file takes a few hundred ms.
                let started = Instant::now();
                let loaded =
                    LocalPlaces::load(&file).map_err(|e| format!("reload refused: {e}"))?;
                Some(PlacesFile::Read(loaded, started.elapsed()))
            }
        }
        _ => None,
    };
    // Every SIGHUP: a renewed certificate is put in place by copying files, with nothing in
    // the config to say so. A broken file refuses the reload; the certificates loaded stay.
    let tls =
        match new.peer.tls.dir_path(running.config_path) {
            Some(dir) => Some(tls::load(&dir, running.name).map_err(|e| {
                format!("reload refused: {path}: {e}; the certificates loaded stay")
            })?),
            None => None,
        };
    let client_tls = match new.tls_clients(running.name) {
        Some(entry) => Some(
            tls::load_for_clients(
                &entry.cert_path(running.config_path),
                &entry.key_path(running.config_path),
            )
            .map_err(|e| format!("reload refused: {path}: {e}; the certificate loaded stays"))?,
        ),
        None => None,
    };
    Ok(Prepared {
        metrics,
        places: pool,
        local,
        tls,
        client_tls,
    })
}

/// Says a reload's result on stderr as one line in one write, for whoever sent the SIGHUP
/// (`herd --all` prefixes it with the server's name): stderr is unbuffered, and `eprintln!`
/// may write a line in pieces that a reader could see apart. A failed write is ignored: the
/// log has the same line.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Carries out a reload's plan on the parts with what was prepared for it; nothing here can
/// fail. Returns the config to run from now on.
fn apply(plan: Plan, prepared: Prepared, parts: Parts) -> Config {
    let now = Instant::now();
    let new = &plan.config;
    let Parts {
        registry,
        app,
        clients,
        links,
        places,
        metrics,
    } = parts;
    for name in plan
        .links_removed
        .iter()
        .chain(plan.links_moved.iter().map(|m| &m.name))
    {
        if let Some(link) = links.remove(name, registry) {
            app.remove_neighbour(link);
            clients.close_neighbour(link);
        }
    }
    for neighbour in plan.links_added.iter().chain(&plan.links_moved) {
        let id = app.add_neighbour(&neighbour.name);
        debug_assert_eq!(id, links.count());
        links.add(&neighbour.name, neighbour.addr, &new.peer, now);
    }
    if plan.peer_timing_changed {
        links.set_timing(&new.peer);
    }
    if plan.servers_changed || plan.limits_changed {
        let servers = new.servers.iter().map(|s| s.name.clone()).collect();
        app.set_herd(servers, new.limits.max_future_secs);
    }
    if let Some(client_tls) = prepared.client_tls {
        clients.set_client_tls(Arc::new(client_tls));
    }
    if let Some(tls) = prepared.tls {
        let tls = Arc::new(tls);
        links.set_tls(tls.clone());
        clients.set_tls(tls);
    }
    if plan.limits_changed {
        clients.set_limits(&new.limits);
        links.set_tls_handshake_limit(new.limits.tls_handshake);
        if let Some(metrics) = metrics.as_mut() {
            metrics.set_limits(&new.limits);
        }
    }
    if plan.metrics_changed {
        move_metrics(metrics, prepared.metrics, registry, &new.limits);
    }
    if let Some(pool) = prepared.places {
        places.replace_pool(pool, &new.places, now);
    }
    match prepared.local {
        Some(PlacesFile::Read(loaded, took)) => {
            info!(
                "places file {} read in {} ms",
                loaded.summary(),
                took.as_millis()
            );
            places.replace_local(Some(loaded));
        }
        Some(PlacesFile::Unchanged) => {}
        None => places.replace_local(None),
    }
    if plan.log_changed {
        logging::reconfigure(new.log.level, new.log.lines, new.log.rotation);
    }
    plan.config
}

/// Serves the metrics page on `listener` from now on (or no longer, for `None`).
fn move_metrics(
    metrics: &mut Option<MetricsServer>,
    listener: Option<TcpListener>,
    registry: &Registry,
    limits: &Limits,
) {
    let Some(listener) = listener else {
        if metrics.take().is_some() {
            info!("metrics listener closed");
        }
        return;
    };
    let result = match metrics {
        Some(server) => server.replace_listener(listener, registry),
        None => {
            MetricsServer::new(listener, registry, limits).map(|server| *metrics = Some(server))
        }
    };
    if let Err(e) = result {
        // Registering a bound socket fails only when the kernel is out of memory.
        warn!("reload: cannot serve metrics: {e}");
    }
}
