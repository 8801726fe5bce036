//! `herd`: arguments -> config -> logging -> event loop. Every error becomes one line on
//! stderr; a bad config, an unknown server name or bad arguments exit with status 2 before any
//! port is opened (SPEC section 1).

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use herd::changes::Epoch;
use herd::cli::{self, Invocation};
use herd::config::{self, Config, PlacesApi};
use herd::escape::Escaped;
use herd::event_loop::{EventLoop, ServerSetup};
use herd::logging;
use herd::store::{Opened, Store};
use herd::{allocator, net, peer_secret, places, signals, supervisor, tls};

/// Exit status for usage and config errors.
const BAD_INPUT: u8 = 2;
/// Exit status for failures at run time (a port in use, an unwritable log).
const FAILED: u8 = 1;

fn main() -> ExitCode {
    allocator::tune();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let invocation = match cli::parse_args(args) {
        Ok(invocation) => invocation,
        Err(problem) => return fail(BAD_INPUT, &format!("herd: {problem}")),
    };
    match invocation {
        Invocation::Help(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Invocation::Version => {
            println!("herd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Invocation::Certs { config, dir } => match load_config(&config) {
            Ok(parsed) => ExitCode::from(herd::certs::run(&config, &parsed, dir.as_deref())),
            Err(problem) => fail(BAD_INPUT, &problem),
        },
        Invocation::Status { config, watch } => match load_config(&config) {
            Ok(parsed) => ExitCode::from(herd::status::run(&parsed, watch)),
            Err(problem) => fail(BAD_INPUT, &problem),
        },
        Invocation::All {
            config,
            log_level,
            restart,
        } => match load_config(&config).and_then(|parsed| {
            parsed
                .check_links_secure()
                .map_err(|e| format!("{}:{e}", config.display()))?;
            Ok(parsed)
        }) {
            Ok(parsed) => {
                ExitCode::from(supervisor::run_all(&config, &parsed, log_level, restart) as u8)
            }
            Err(problem) => fail(BAD_INPUT, &problem),
        },
        Invocation::Serve {
            name,
            config,
            log_level,
        } => serve_one(&name, &config, log_level),
    }
}

/// `herd NAME CONFIG`: the config, the server's name in it, and its places file are checked
/// before any port opens (exit 2, as a config error), then the server runs.
fn serve_one(name: &str, config: &Path, log_level: Option<log::LevelFilter>) -> ExitCode {
    let parsed = match load_config(config) {
        Ok(parsed) => parsed,
        Err(problem) => return fail(BAD_INPUT, &problem),
    };
    if parsed.server(name).is_none() {
        // Names from the file (and the argument) shown escaped, like a config error.
        let known: Vec<String> = parsed
            .servers
            .iter()
            .map(|s| Escaped(s.name.as_bytes()).to_string())
            .collect();
        return fail(
            BAD_INPUT,
            &format!(
                "{}: no server named '{}' (servers: {})",
                config.display(),
                Escaped(name.as_bytes()),
                known.join(", ")
            ),
        );
    }
    if let Err(e) = parsed.check_links_secure() {
        return fail(BAD_INPUT, &format!("{}:{e}", config.display()));
    }
    let local_places = match load_local_places(&parsed, config) {
        Ok(loaded) => loaded,
        Err(problem) => return fail(BAD_INPUT, &problem),
    };
    // Like the places file: what `peer tls` names is read before any port opens.
    let peer_tls = match parsed.peer.tls.dir_path(config) {
        Some(dir) => match tls::load(&dir, name) {
            Ok(loaded) => Some(loaded),
            Err(problem) => return fail(BAD_INPUT, &format!("{}: {problem}", config.display())),
        },
        None => None,
    };
    let client_tls = match parsed.tls_clients(name) {
        Some(entry) => {
            let (cert, key) = (entry.cert_path(config), entry.key_path(config));
            match tls::load_for_clients(&cert, &key) {
                Ok(loaded) => Some(loaded),
                Err(problem) => {
                    return fail(BAD_INPUT, &format!("{}: {problem}", config.display()))
                }
            }
        }
        None => None,
    };
    let tls = Tls {
        peers: peer_tls,
        clients: client_tls,
    };
    match serve(name, config, parsed, log_level, local_places, tls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            logging::flush();
            fail(FAILED, &format!("herd {name}: {problem}"))
        }
    }
}

/// The server's log, opened as `log` in the config says; its path.
fn open_log(name: &str, config: &Config) -> Result<std::path::PathBuf, String> {
    let settings = &config.log;
    logging::init(
        &settings.dir,
        name,
        settings.level,
        settings.lines,
        settings.rotation,
    )
    .map_err(|e| {
        let dir = Escaped(settings.dir.as_os_str().as_bytes());
        format!("cannot open log in {dir}: {e}")
    })
}

/// The store (`store dir`, or none), read, and a new history's name: kept by a new store, this
/// run's own without a store (a store that has a history keeps its own).
fn open_store(name: &str, config: &Config) -> Result<(Option<Opened>, Epoch), String> {
    let servers: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    let epoch = peer_secret::random_bytes()
        .map(|bytes| Epoch(u64::from_le_bytes(bytes)))
        .map_err(|e| format!("/dev/urandom: {e} (history epoch)"))?;
    let store = Store::open(&config.store, name, epoch, |server| {
        servers.iter().any(|s| s.as_bytes() == server)
    })
    .inspect_err(|e| error!("{e}"))?;
    Ok((store, epoch))
}

/// The addresses the server listens on, in its log, and its one line on stderr.
fn announce(name: &str, addr: std::net::SocketAddr, config: &Config, log_path: &Path) {
    info!("listen {addr}");
    if let Some(entry) = config.tls_clients(name) {
        info!("listen {} for TLS clients", entry.addr);
    }
    eprintln!(
        "{} listening on {addr}, log {}",
        Escaped(name.as_bytes()),
        Escaped(log_path.as_os_str().as_bytes())
    );
}

/// A listening socket at `addr` (`what`: "" or " for metrics"); a failure is logged and is
/// the server's one line on stderr.
fn listen(addr: std::net::SocketAddr, what: &str) -> Result<mio::net::TcpListener, String> {
    net::listen(addr).map_err(|e| {
        let line = format!("cannot listen{what} on {addr}: {e}");
        error!("{line}");
        line
    })
}

/// The pipes SIGTERM and SIGINT (stop) and SIGHUP (reload) write to; SIGUSR1 and SIGUSR2
/// ignored.
fn signal_pipes() -> Result<(mio::net::UnixStream, mio::net::UnixStream), String> {
    let signal_error = |e: std::io::Error| format!("cannot handle signals: {e}");
    let stop = signals::pipe(&[signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .map_err(signal_error)?;
    let hangups = signals::pipe(&[signal_hook::consts::SIGHUP]).map_err(signal_error)?;
    signals::ignore_user_signals().map_err(signal_error)?;
    Ok((stop, hangups))
}

/// The Places key from the environment, warned of (log and stderr) when missing; `places api
/// local` makes no call: it needs no key, and warns of none.
fn places_key(config: &Config) -> Option<herd::secret::Secret> {
    match config.places.api {
        PlacesApi::Local => None,
        _ => places::key_from_env(&config.places.key_env)
            .map_err(|warning| {
                warn!("{warning}");
                eprintln!("{warning}");
            })
            .ok(),
    }
}

/// Descriptors the server needs besides its connections: standard streams, the log, the poll,
/// the waker, the two signal pipes, the listener, and a margin for Places calls and the secret
/// file.
const FIXED_DESCRIPTORS: u64 = 16;

/// Raises the open-file limit as far as allowed and clamps `limit connections` to what fits
/// (each link also holds one outbound and one accepted descriptor, and the metrics listener
/// one plus its connections), logged when it bites. Returns the most connections that fit,
/// for a reload to clamp to as well.
fn fit_connections_to_open_files(name: &str, config: &mut Config) -> usize {
    let open_files = match net::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(e) => {
            warn!("cannot read the open-file limit: {e}");
            return usize::MAX;
        }
    };
    let links = config.neighbours(name).len() as u64;
    let metrics = match config.metrics_addr(name) {
        Some(_) => 1 + config.limits.metrics_connections as u64,
        None => 0,
    };
    let fits = open_files
        .saturating_sub(FIXED_DESCRIPTORS + 4 * links + metrics)
        .max(1);
    let limit = &mut config.limits.max_connections;
    if (*limit as u64) > fits {
        let message = format!(
            "limit connections: {limit} lowered to {fits}, what the open-file limit of \
             {open_files} leaves room for"
        );
        warn!("{message}");
        eprintln!("{message}");
        *limit = fits as usize;
    }
    usize::try_from(fits).unwrap_or(usize::MAX)
}

/// With `places api local`, the places file (found beside the config) read and indexed, and
/// how long that took; the error names the file and the line or feature.
fn load_local_places(
    config: &Config,
    config_path: &Path,
) -> Result<Option<(places::LocalPlaces, Duration)>, String> {
    if config.places.api != PlacesApi::Local {
        return Ok(None);
    }
    // The config parser refuses `places api local` without a `places file` line.
    let Some(path) = config.places.file_path(config_path) else {
        return Ok(None);
    };
    let started = Instant::now();
    let loaded = places::LocalPlaces::load(&path).map_err(|e| e.to_string())?;
    Ok(Some((loaded, started.elapsed())))
}

/// What `peer tls` and `tls NAME ...` loaded before the ports opened.
struct Tls {
    peers: Option<tls::PeerTlsConfig>,
    clients: Option<tls::ClientTlsConfig>,
}

fn fail(code: u8, line: &str) -> ExitCode {
    eprintln!("{line}");
    ExitCode::from(code)
}

/// Reads and parses a config file; the error is `PATH:LINE: problem` (also for a file that is
/// not UTF-8) or `PATH: problem` (it cannot be read).
fn load_config(path: &Path) -> Result<Config, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    config::parse_config_bytes(&bytes).map_err(|e| format!("{}:{e}", path.display()))
}

fn serve(
    name: &str,
    config_path: &Path,
    mut config: Config,
    log_level: Option<log::LevelFilter>,
    local_places: Option<(places::LocalPlaces, Duration)>,
    tls: Tls,
) -> Result<(), String> {
    if let Some(level) = log_level {
        config.log.level = level;
    }
    let addr = config
        .server(name)
        .map(|s| s.addr)
        .ok_or_else(|| format!("no server named '{name}'"))?;
    // Before the port opens: a server that cannot prove the herd's secret must not run.
    let peer_secret = peer_secret::load(&config.peer.secret, config_path)?;
    let log_path = open_log(name, &config)?;
    // The store is read before the port opens, so the first client is answered from it; a
    // second process of this server on the same store stops here, on the store's lock.
    let (store, epoch) = open_store(name, &config)?;
    let listener = listen(addr, "")?;
    let client_tls = match (config.tls_clients(name), tls.clients) {
        (Some(entry), Some(loaded)) => Some((listen(entry.addr, " for TLS clients")?, loaded)),
        _ => None,
    };
    let metrics = match config.metrics_addr(name) {
        Some(addr) => Some(listen(addr, " for metrics")?),
        None => None,
    };
    let connections_fit = fit_connections_to_open_files(name, &mut config);
    let (stop_signals, hangups) = signal_pipes()?;
    let places_key = places_key(&config);
    let local_places = local_places.map(|(loaded, took)| {
        info!(
            "places file {} read in {} ms",
            loaded.summary(),
            took.as_millis()
        );
        loaded
    });
    if let Some(warning) = &peer_secret.warning {
        warn!("{warning}");
        eprintln!("{warning}");
    }
    announce(name, addr, &config, &log_path);
    let mut event_loop = EventLoop::new(ServerSetup {
        name: name.to_string(),
        listener,
        config,
        places_key,
        local_places,
        peer_auth: peer_secret.auth,
        signals: stop_signals,
        hangups,
        store,
        epoch,
        config_path: config_path.to_path_buf(),
        connections_fit,
        metrics,
        peer_tls: tls.peers,
        client_tls,
    })
    .map_err(|e| format!("cannot start: {e}"))?;
    let result = event_loop
        .run()
        .map_err(|e| format!("event loop failed: {e}"));
    logging::flush();
    result
}
