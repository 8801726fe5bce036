//! `herd.conf` -> [`Config`] (SPEC section 4). Every error names the line it comes from.
//!
//! Pure: it parses the bytes or text it is given; reading the file and the environment is
//! `main`'s job. Bytes from the file that an error message quotes are escaped as the log
//! escapes network bytes ([`Escaped`]), so a message is always one line of printable ASCII.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::escape::Escaped;
use crate::logging::Rotation;

/// Which Places API the server speaks (SPEC section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacesApi {
    /// Places API v1 `searchNearby`: POST with a JSON body.
    New,
    /// The legacy `nearbysearch/json`: GET with the key in the query.
    Legacy,
    /// No Places call: answered from `places file`, a file of places on the server's disk.
    Local,
}

impl PlacesApi {
    pub fn default_url(self) -> &'static str {
        match self {
            PlacesApi::New => "https://places.googleapis.com/v1/places:searchNearby",
            PlacesApi::Legacy => "https://maps.googleapis.com/maps/api/place/nearbysearch/json",
            // Nothing is asked over HTTP.
            PlacesApi::Local => "",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PlacesApi::New => "new",
            PlacesApi::Legacy => "legacy",
            PlacesApi::Local => "local",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlacesSettings {
    pub api: PlacesApi,
    /// `None` until set: the default depends on `api`, which may come later in the file.
    url: Option<String>,
    pub key_env: String,
    pub field_mask: String,
    /// The most calls in flight (threads start on demand and stop when idle).
    pub workers: usize,
    pub timeout: Duration,
    /// Calls waiting for a worker while every worker is busy; one more is refused at once.
    pub queue: usize,
    /// How long a good answer is reused for the same request (0: no cache).
    pub cache_ms: u64,
    pub cache_entries: usize,
    /// Calls sent per second at most (0: no limit).
    pub max_per_second: u32,
    /// `places file PATH`: the places `places api local` answers from, as written in the config
    /// (see [`PlacesSettings::file_path`]). May be set with another api, which ignores it, so
    /// that switching to Google and back is one line.
    pub file: Option<PathBuf>,
}

/// The default field mask: what a list of nearby places needs. Every field here bills at the
/// Nearby Search Pro SKU, the cheapest there is for Nearby Search (`*` bills at Enterprise +
/// Atmosphere).
pub const DEFAULT_FIELD_MASK: &str =
    "places.id,places.displayName,places.formattedAddress,places.location,places.types";

impl PlacesSettings {
    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(self.api.default_url())
    }

    /// Where `places file` is: a relative path is taken from the directory of the config file
    /// at `config_path`, so that a config and the places shipped beside it work from any
    /// working directory.
    pub fn file_path(&self, config_path: &Path) -> Option<PathBuf> {
        let file = self.file.as_ref()?;
        let dir = config_path.parent().unwrap_or(Path::new(""));
        Some(dir.join(file))
    }
}

impl Default for PlacesSettings {
    fn default() -> Self {
        PlacesSettings {
            api: PlacesApi::New,
            url: None,
            key_env: "GOOGLE_PLACES_API_KEY".to_string(),
            field_mask: DEFAULT_FIELD_MASK.to_string(),
            // 256 calls in flight carry 1,280 distinct lookups a second at 200 ms a call.
            workers: 256,
            timeout: Duration::from_millis(5000),
            queue: 1024,
            // Long enough that a crowd asking about one client within a few seconds costs one
            // call, short enough that the list a client sees is at most this old.
            cache_ms: 30_000,
            cache_entries: 10_000,
            max_per_second: 0,
            file: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogSettings {
    pub dir: PathBuf,
    pub lines: bool,
    pub level: log::LevelFilter,
    /// `log max-bytes` and `log keep`: when `NAME.log` is rotated and how many old ones stay.
    pub rotation: Rotation,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            dir: PathBuf::from("."),
            lines: true,
            level: log::LevelFilter::Info,
            rotation: Rotation::default(),
        }
    }
}

/// When the store's log is synced to the device (SPEC section 7), as Redis's `appendfsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before the replies and floods of a loop turn leave: nothing acknowledged is lost on
    /// power loss.
    Always,
    /// From a background thread once a second: a power loss loses at most about a second.
    EverySec,
    /// Never by herd (the kernel writes back when it likes; typically within 30 s).
    No,
}

impl FsyncPolicy {
    pub const ALL: [FsyncPolicy; 3] = [FsyncPolicy::Always, FsyncPolicy::EverySec, FsyncPolicy::No];

    /// The word of `store fsync` (and of the store's log line).
    pub fn word(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        }
    }
}

/// `store ...`: where a server keeps its records across restarts.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSettings {
    /// `store dir PATH` (relative to the working directory, like `log dir`); `None` keeps
    /// records in memory only.
    pub dir: Option<PathBuf>,
    pub fsync: FsyncPolicy,
    /// The log is compacted once it is past twice its live records and past this size.
    pub compact_min_bytes: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            dir: None,
            fsync: FsyncPolicy::EverySec,
            compact_min_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Per-connection and per-server limits; each is logged when hit.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_line_bytes: usize,
    /// Unread output past which a connection is not read further until the client reads.
    pub soft_output_bytes: usize,
    /// WHATSATs of one connection waiting on Places past which it is not read further.
    pub max_in_flight: usize,
    /// Commands of one connection handled per loop turn before the others get theirs (as
    /// memcached's `-R`): a client pipelining thousands cannot hold the loop.
    pub commands_per_turn: usize,
    /// Unread output past which a client is dropped.
    pub max_output_bytes: usize,
    /// Unread output over all connections past which those owing the most are dropped.
    pub max_output_total_bytes: usize,
    /// A connection with output waiting that takes none of it for this long is dropped.
    pub stall_limit: Duration,
    pub max_connections: usize,
    /// How far ahead of the server's clock a client time may be; a later one is invalid, since
    /// it would shadow every real update of its client for as long as that lasts.
    pub max_future_secs: u64,
    /// Open connections of the metrics listener; more are answered 503 and closed.
    pub metrics_connections: usize,
    /// Longest HTTP request head the metrics listener reads; a longer one is answered 431.
    pub metrics_request_bytes: usize,
    /// How long a metrics connection may take from accept to the end of its response, so a
    /// slow or stuck scraper cannot hold one of its few slots.
    pub metrics_timeout: Duration,
    /// How long a TLS handshake on a link (`peer tls`) may take, from the first byte to both
    /// ends authenticated; one that takes longer is dropped.
    pub tls_handshake: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 64 * 1024,
            soft_output_bytes: 16 * 1024,
            max_in_flight: 128,
            commands_per_turn: 20,
            max_output_bytes: 4 * 1024 * 1024,
            max_output_total_bytes: 256 * 1024 * 1024,
            stall_limit: Duration::from_secs(30),
            max_connections: 16384,
            max_future_secs: 86_400,
            metrics_connections: 16,
            metrics_request_bytes: 8192,
            metrics_timeout: Duration::from_secs(5),
            // A handshake is two round trips: ten seconds covers the slowest path a herd
            // spans, and bounds what a connection that never finishes one holds.
            tls_handshake: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PeerSettings {
    /// Where the shared secret that links prove comes from.
    pub secret: PeerSecret,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A link that has been quiet this long sends a ping; one that hears nothing for
    /// [`PeerSettings::silence_limit`] is taken down (a silent partition, a hung neighbour).
    pub ping_interval: Duration,
    /// While a link that is making progress owes more live updates than this, the server
    /// reads no new client commands (they wait in the kernel), so it never runs far ahead of
    /// its herd.
    pub max_owed: usize,
    /// A link whose socket takes nothing for this long while output waits is dropped (and
    /// resynced when it returns), so one stuck neighbour cannot hold the server back.
    pub stall_limit: Duration,
    /// How long in all a link that keeps falling behind may hold client commands back before
    /// it lags instead (its neighbour catches up, conflated) and clients are served, so one
    /// thin link cannot cap the whole server at its bandwidth; counted since it last owed
    /// nothing.
    pub hold_limit: Duration,
    /// How often a caught-up link compares table digests with its neighbour and repairs what
    /// differs (anti-entropy); zero: never.
    pub check_interval: Duration,
    /// `peer tls DIR` or `peer tls off` (SPEC section 9).
    pub tls: PeerTls,
}

/// Whether links are TLS (SPEC section 9: secure by default across machines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTls {
    /// No `peer tls` line: links are in clear, and a link to an address that is not loopback
    /// is a config error ([`Config::check_links_secure`]).
    Unset,
    /// `peer tls off`: links are in clear wherever they go, as the config says on purpose.
    Off,
    /// `peer tls DIR`: every link is TLS 1.3, both ends authenticated by the herd's CA in DIR
    /// (what `herd certs` made). As written; see [`PeerTls::dir_path`].
    Dir(PathBuf),
}

impl PeerTls {
    /// The directory of `peer tls DIR`: a relative path is taken from the directory of the
    /// config file at `config_path`, as `places file` is.
    pub fn dir_path(&self, config_path: &Path) -> Option<PathBuf> {
        match self {
            PeerTls::Dir(dir) => Some(config_path.parent().unwrap_or(Path::new("")).join(dir)),
            PeerTls::Unset | PeerTls::Off => None,
        }
    }
}

/// Where the secret that links prove comes from (SPEC section 3: secure by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerSecret {
    /// No `peer secret*` line: the file beside the config, named after it (`herd.conf` ->
    /// `herd.secret`), created with random bytes on first start.
    BesideConfig,
    /// `peer secret-file PATH` (relative to the working directory, like `log dir`), created
    /// the same way if missing.
    File(PathBuf),
    /// `peer secret-env VAR`: the environment variable's value; the server refuses to start
    /// when it is unset.
    Env(String),
    /// `peer secret none`: links are not authenticated (a warning at start).
    None,
}

/// How many ping intervals of silence take a link down.
pub const SILENT_PING_INTERVALS: u32 = 5;

impl PeerSettings {
    pub fn silence_limit(&self) -> Duration {
        self.ping_interval * SILENT_PING_INTERVALS
    }
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            secret: PeerSecret::BesideConfig,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(5000),
            ping_interval: Duration::from_millis(1000),
            max_owed: 1_000,
            stall_limit: Duration::from_millis(2000),
            hold_limit: Duration::from_millis(1000),
            check_interval: Duration::from_millis(5000),
            tls: PeerTls::Unset,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerEntry {
    pub name: String,
    pub addr: SocketAddr,
}

/// `metrics NAME IP:PORT`: server NAME serves its metrics over HTTP on this address.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsEntry {
    pub name: String,
    pub addr: SocketAddr,
}

/// `tls NAME IP:PORT CERT KEY`: server NAME also takes clients over TLS on this address, with
/// the PEM certificate chain CERT and its key KEY (SPEC section 9).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsClientsEntry {
    pub name: String,
    pub addr: SocketAddr,
    /// As written; relative to the config file's directory ([`TlsClientsEntry::cert_path`]).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsClientsEntry {
    pub fn cert_path(&self, config_path: &Path) -> PathBuf {
        beside(config_path, &self.cert)
    }

    pub fn key_path(&self, config_path: &Path) -> PathBuf {
        beside(config_path, &self.key)
    }
}

/// `path` taken from the directory of the config file at `config_path` (an absolute path
/// stays as it is).
fn beside(config_path: &Path, path: &Path) -> PathBuf {
    config_path.parent().unwrap_or(Path::new("")).join(path)
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub servers: Vec<ServerEntry>,
    /// At most one per server, for the servers that serve metrics.
    pub metrics: Vec<MetricsEntry>,
    /// At most one per server, for the servers that take clients over TLS.
    pub tls_clients: Vec<TlsClientsEntry>,
    /// Each link once, as written.
    pub links: Vec<(String, String)>,
    /// The line of each of `links`, for errors found once the whole file is read.
    pub link_lines: Vec<usize>,
    pub places: PlacesSettings,
    pub log: LogSettings,
    pub limits: Limits,
    pub peer: PeerSettings,
    pub store: StoreSettings,
}

impl Config {
    pub fn server(&self, name: &str) -> Option<&ServerEntry> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The address `name` serves its metrics on, if it has a `metrics` line.
    pub fn metrics_addr(&self, name: &str) -> Option<SocketAddr> {
        self.metrics.iter().find(|m| m.name == name).map(|m| m.addr)
    }

    /// The `tls` line of `name`, if it has one.
    pub fn tls_clients(&self, name: &str) -> Option<&TlsClientsEntry> {
        self.tls_clients.iter().find(|t| t.name == name)
    }

    /// The neighbours of `name`, in config order.
    pub fn neighbours(&self, name: &str) -> Vec<&ServerEntry> {
        self.links
            .iter()
            .filter_map(|(a, b)| match (a == name, b == name) {
                (true, _) => self.server(b),
                (_, true) => self.server(a),
                _ => None,
            })
            .collect()
    }

    /// SPEC section 9, secure by default: links in clear may only stay on this machine. A link
    /// with an end whose address is not loopback, without `peer tls DIR` or `peer tls off`,
    /// is an error at the line of the first such link, saying what to do. Checked apart from
    /// parsing, since `herd certs` reads the same config to make what the fix needs.
    pub fn check_links_secure(&self) -> Result<(), ConfigError> {
        if self.peer.tls != PeerTls::Unset {
            return Ok(());
        }
        for ((a, b), line) in self.links.iter().zip(&self.link_lines) {
            let remote = [a, b]
                .into_iter()
                .filter_map(|name| self.server(name))
                .find(|server| !server.addr.ip().is_loopback());
            if let Some(server) = remote {
                let problem = format!(
                    "link {a} {b} reaches {} at {}, not on this machine, and links are in \
                     clear: run `herd certs CONFIG` and add `peer tls DIR` (its files on every \
                     server), or say `peer tls off` to keep links in clear",
                    server.name, server.addr
                );
                return Err(error(*line, Escaped(problem.as_bytes()).to_string()));
            }
        }
        Ok(())
    }
}

/// A config error at a line (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.line, self.problem)
    }
}

fn error(line: usize, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        line,
        problem: problem.into(),
    }
}

/// Parses the raw bytes of a config file: text that is not UTF-8 is an error naming the line
/// of the first invalid byte (lines counted as [`parse_config`] counts them, by `\n`).
pub fn parse_config_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_config(text),
        Err(invalid) => Err(not_utf8(bytes, invalid.valid_up_to())),
    }
}

/// `not UTF-8 text (byte 0xff) in 'caf\xff'`, at the line holding `bytes[at]`: the first
/// byte that is not UTF-8 and the white-space-separated word around it, escaped.
fn not_utf8(bytes: &[u8], at: usize) -> ConfigError {
    let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
    let start = bytes[..at]
        .iter()
        .rposition(u8::is_ascii_whitespace)
        .map_or(0, |i| i + 1);
    let end = bytes[at..]
        .iter()
        .position(u8::is_ascii_whitespace)
        .map_or(bytes.len(), |i| at + i);
    error(
        line,
        format!(
            "not UTF-8 text (byte 0x{:02x}) in '{}'",
            bytes[at],
            Escaped(&bytes[start..end])
        ),
    )
}

/// Parses the whole text of a config file.
pub fn parse_config(text: &str) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    // The line of the `places api` that decides, for a check that needs the whole file.
    let mut places_api_line = 0;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let content = raw.split('#').next().unwrap_or("");
        let words: Vec<&str> = content.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if words.starts_with(&["places", "api"]) {
            places_api_line = line_no;
        }
        // The problem quotes words of the line; escaping it whole escapes every byte of them
        // (Escaped works byte by byte, and the rest of every problem is printable ASCII
        // without `\`, which Escaped leaves as is).
        apply_line(&mut config, &words)
            .map_err(|problem| error(line_no, Escaped(problem.as_bytes()).to_string()))?;
        if config.link_lines.len() < config.links.len() {
            config.link_lines.push(line_no);
        }
    }
    if config.servers.is_empty() {
        return Err(error(
            text.lines().count().max(1),
            "no 'server' line: a herd needs at least one server",
        ));
    }
    if config.places.api == PlacesApi::Local && config.places.file.is_none() {
        return Err(error(
            places_api_line,
            "places api local needs a 'places file PATH' line (a CSV or GeoJSON file of places)",
        ));
    }
    Ok(config)
}

/// One non-empty line; the error is the problem text.
fn apply_line(config: &mut Config, words: &[&str]) -> Result<(), String> {
    match words {
        ["server", name, addr] => {
            if config.server(name).is_some() {
                return Err(format!("server '{name}' is already defined"));
            }
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| format!("bad address '{addr}' for server '{name}' (want IP:PORT)"))?;
            check_address_free(config, "address", addr)?;
            config.servers.push(ServerEntry {
                name: name.to_string(),
                addr,
            });
        }
        ["server", ..] => return Err("expected 'server NAME IP:PORT'".into()),
        ["link", a, b] => {
            for name in [a, b] {
                if config.server(name).is_none() {
                    return Err(format!(
                        "link names unknown server '{name}' (servers must be defined before links)"
                    ));
                }
            }
            if a == b {
                return Err(format!("link from '{a}' to itself"));
            }
            let exists = config
                .links
                .iter()
                .any(|(x, y)| (x == a && y == b) || (x == b && y == a));
            if exists {
                return Err(format!("link {a} {b} is already defined"));
            }
            config.links.push((a.to_string(), b.to_string()));
        }
        ["link", ..] => return Err("expected 'link SERVER SERVER'".into()),
        ["metrics", name, addr] => apply_metrics(config, name, addr)?,
        ["metrics", ..] => return Err("expected 'metrics SERVER IP:PORT'".into()),
        ["tls", name, addr, cert, key] => apply_tls_clients(config, name, addr, cert, key)?,
        ["tls", ..] => return Err("expected 'tls SERVER IP:PORT CERT KEY'".into()),
        ["places", setting, value] => apply_places(&mut config.places, setting, value)?,
        ["places", ..] => return Err("expected 'places SETTING VALUE'".into()),
        ["log", setting, value] => apply_log(&mut config.log, setting, value)?,
        ["log", ..] => return Err("expected 'log SETTING VALUE'".into()),
        ["limit", setting, value] => apply_limit(&mut config.limits, setting, value)?,
        ["limit", ..] => return Err("expected 'limit SETTING NUMBER'".into()),
        ["peer", setting, value] => apply_peer(&mut config.peer, setting, value)?,
        ["peer", ..] => return Err("expected 'peer SETTING VALUE'".into()),
        ["store", setting, value] => apply_store(&mut config.store, setting, value)?,
        ["store", ..] => return Err("expected 'store SETTING VALUE'".into()),
        [directive, ..] => return Err(format!("unknown directive '{directive}'")),
        [] => {}
    }
    Ok(())
}

/// Every address a server listens on is its own: `addr` must not be a server's listen address,
/// a metrics address or a TLS address yet. The error begins with `what` (`metrics address`).
fn check_address_free(config: &Config, what: &str, addr: SocketAddr) -> Result<(), String> {
    let servers = (config.servers.iter()).map(|s| (&s.name, s.addr, "listen"));
    let metrics = (config.metrics.iter()).map(|m| (&m.name, m.addr, "metrics"));
    let tls = (config.tls_clients.iter()).map(|t| (&t.name, t.addr, "TLS"));
    match servers
        .chain(metrics)
        .chain(tls)
        .find(|taken| taken.1 == addr)
    {
        Some((other, _, kind)) => Err(format!(
            "{what} {addr} is already the {kind} address of server '{other}'"
        )),
        None => Ok(()),
    }
}

/// `metrics NAME IP:PORT`: NAME must be a server defined above, with one metrics line at
/// most, on an address no server listens on and no other server serves metrics on.
fn apply_metrics(config: &mut Config, name: &str, addr: &str) -> Result<(), String> {
    if config.server(name).is_none() {
        return Err(format!(
            "metrics names unknown server '{name}' (servers must be defined before metrics)"
        ));
    }
    if config.metrics_addr(name).is_some() {
        return Err(format!("metrics for server '{name}' is already defined"));
    }
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("bad address '{addr}' for metrics of '{name}' (want IP:PORT)"))?;
    check_address_free(config, "metrics address", addr)?;
    config.metrics.push(MetricsEntry {
        name: name.to_string(),
        addr,
    });
    Ok(())
}

/// `tls NAME IP:PORT CERT KEY`: NAME must be a server defined above, with one `tls` line at
/// most, on an address no server listens on and no metrics or other TLS address uses.
fn apply_tls_clients(
    config: &mut Config,
    name: &str,
    addr: &str,
    cert: &str,
    key: &str,
) -> Result<(), String> {
    if config.server(name).is_none() {
        return Err(format!(
            "tls names unknown server '{name}' (servers must be defined before tls)"
        ));
    }
    if config.tls_clients(name).is_some() {
        return Err(format!("tls for server '{name}' is already defined"));
    }
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("bad address '{addr}' for tls of '{name}' (want IP:PORT)"))?;
    check_address_free(config, "tls address", addr)?;
    config.tls_clients.push(TlsClientsEntry {
        name: name.to_string(),
        addr,
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    });
    Ok(())
}

fn apply_places(places: &mut PlacesSettings, setting: &str, value: &str) -> Result<(), String> {
    match setting {
        "api" => {
            places.api = match value {
                "new" => PlacesApi::New,
                "legacy" => PlacesApi::Legacy,
                "local" => PlacesApi::Local,
                _ => {
                    return Err(format!(
                        "places api must be 'new', 'legacy' or 'local', not '{value}'"
                    ))
                }
            }
        }
        "url" => {
            if !(value.starts_with("http://") || value.starts_with("https://")) {
                return Err(format!(
                    "places url must start with http:// or https://, not '{value}'"
                ));
            }
            places.url = Some(value.to_string());
        }
        "key-env" => places.key_env = env_var_name(value)?,
        "file" => places.file = Some(PathBuf::from(value)),
        "field-mask" => places.field_mask = value.to_string(),
        "workers" => places.workers = number_in(setting, value, 1, 4096)?,
        "timeout-ms" => places.timeout = millis(setting, value)?,
        "queue" => places.queue = number_in(setting, value, 1, 1 << 20)?,
        "cache-ms" => places.cache_ms = number_in(setting, value, 0, 24 * 3600 * 1000)? as u64,
        "cache-entries" => places.cache_entries = number_in(setting, value, 1, 1 << 24)?,
        "max-per-second" => places.max_per_second = number_in(setting, value, 0, 1_000_000)? as u32,
        _ => return Err(format!("unknown places setting '{setting}'")),
    }
    Ok(())
}

fn apply_log(log_settings: &mut LogSettings, setting: &str, value: &str) -> Result<(), String> {
    match setting {
        "dir" => log_settings.dir = PathBuf::from(value),
        "lines" => log_settings.lines = on_off(setting, value)?,
        "level" => log_settings.level = parse_level(value)?,
        "max-bytes" => {
            let bytes = number_in(setting, value, 0, 1 << 50)? as u64;
            if bytes != 0 && bytes < Rotation::MIN_MAX_BYTES {
                return Err(format!(
                    "log max-bytes must be 0 (no rotation) or at least {}, not '{value}'",
                    Rotation::MIN_MAX_BYTES
                ));
            }
            log_settings.rotation.max_bytes = bytes;
        }
        "keep" => log_settings.rotation.keep = number_in(setting, value, 0, 1000)? as u32,
        _ => return Err(format!("unknown log setting '{setting}'")),
    }
    Ok(())
}

fn apply_store(store: &mut StoreSettings, setting: &str, value: &str) -> Result<(), String> {
    match setting {
        "dir" => store.dir = Some(PathBuf::from(value)),
        "fsync" => {
            store.fsync = (FsyncPolicy::ALL.into_iter())
                .find(|policy| policy.word() == value)
                .ok_or_else(|| {
                    format!("store fsync must be always, everysec or no, not '{value}'")
                })?
        }
        "compact-bytes" => {
            store.compact_min_bytes = number_in(setting, value, 4096, 1 << 40)? as u64;
        }
        _ => return Err(format!("unknown store setting '{setting}'")),
    }
    Ok(())
}

fn apply_limit(limits: &mut Limits, setting: &str, value: &str) -> Result<(), String> {
    match setting {
        "line-bytes" => limits.max_line_bytes = number_in(setting, value, 16, 1 << 30)?,
        "output-bytes" => limits.max_output_bytes = number_in(setting, value, 1024, 1 << 40)?,
        "output-soft-bytes" => limits.soft_output_bytes = number_in(setting, value, 1024, 1 << 40)?,
        "in-flight" => limits.max_in_flight = number_in(setting, value, 1, 1 << 20)?,
        "commands-per-turn" => limits.commands_per_turn = number_in(setting, value, 1, 1 << 20)?,
        "output-total-bytes" => {
            limits.max_output_total_bytes = number_in(setting, value, 1024, 1 << 40)?
        }
        "stall-ms" => limits.stall_limit = millis(setting, value)?,
        "connections" => limits.max_connections = number_in(setting, value, 1, 1 << 24)?,
        "future-seconds" => {
            limits.max_future_secs = number_in(setting, value, 0, 100 * 365 * 86_400)? as u64
        }
        "metrics-connections" => {
            limits.metrics_connections = number_in(setting, value, 1, 1024)?;
        }
        "metrics-request-bytes" => {
            limits.metrics_request_bytes = number_in(setting, value, 256, 1 << 20)?;
        }
        "metrics-timeout-ms" => limits.metrics_timeout = millis(setting, value)?,
        "tls-handshake-ms" => limits.tls_handshake = millis(setting, value)?,
        _ => return Err(format!("unknown limit '{setting}'")),
    }
    Ok(())
}

fn apply_peer(peer: &mut PeerSettings, setting: &str, value: &str) -> Result<(), String> {
    match setting {
        "secret-env" => peer.secret = PeerSecret::Env(env_var_name(value)?),
        "secret-file" => peer.secret = PeerSecret::File(PathBuf::from(value)),
        "secret" if value == "none" => peer.secret = PeerSecret::None,
        "secret" => {
            return Err(format!(
                "peer secret takes only 'none' (or use secret-file PATH / secret-env VAR), not '{value}'"
            ))
        }
        "backoff-min-ms" => peer.backoff_min = millis(setting, value)?,
        "backoff-max-ms" => peer.backoff_max = millis(setting, value)?,
        "ping-ms" => peer.ping_interval = millis(setting, value)?,
        "max-owed" => peer.max_owed = number_in(setting, value, 1, 1 << 30)?,
        "stall-ms" => peer.stall_limit = millis(setting, value)?,
        "hold-ms" => peer.hold_limit = millis(setting, value)?,
        "check-ms" => {
            let ms = number_in(setting, value, 0, 24 * 3600 * 1000)?;
            peer.check_interval = Duration::from_millis(ms as u64);
        }
        "tls" if value == "off" => peer.tls = PeerTls::Off,
        "tls" => peer.tls = PeerTls::Dir(PathBuf::from(value)),
        "queue-bytes" => {
            return Err(
                "peer queue-bytes is gone: a link now owes records, not bytes \
                        (see peer max-owed)"
                    .into(),
            )
        }
        _ => return Err(format!("unknown peer setting '{setting}'")),
    }
    if peer.backoff_min > peer.backoff_max {
        return Err(format!(
            "peer backoff-min-ms ({} ms) is above backoff-max-ms ({} ms)",
            peer.backoff_min.as_millis(),
            peer.backoff_max.as_millis()
        ));
    }
    Ok(())
}

/// Parses the level names `log` knows, as the `--log-level` flag does too.
pub fn parse_level(value: &str) -> Result<log::LevelFilter, String> {
    match value {
        "off" => Ok(log::LevelFilter::Off),
        "error" => Ok(log::LevelFilter::Error),
        "warn" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        "trace" => Ok(log::LevelFilter::Trace),
        _ => Err(format!(
            "log level must be off, error, warn, info, debug or trace, not '{value}'"
        )),
    }
}

fn env_var_name(value: &str) -> Result<String, String> {
    let valid = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid && !value.as_bytes()[0].is_ascii_digit() {
        Ok(value.to_string())
    } else {
        Err(format!("'{value}' is not an environment variable name"))
    }
}

fn on_off(setting: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{setting} must be 'on' or 'off', not '{value}'")),
    }
}

fn number_in(setting: &str, value: &str, min: usize, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{setting} must be a whole number from {min} to {max}, not '{value}'"
        )),
    }
}

fn millis(setting: &str, value: &str) -> Result<Duration, String> {
    number_in(setting, value, 1, 24 * 3600 * 1000).map(|ms| Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_CONFIG: &str = "\
server Bailey   127.0.0.1:12000     # one line per server: name and listen address
server Bona     127.0.0.1:12001
server Campbell 127.0.0.1:12002
server Clark    127.0.0.1:12003
server Jaquez   127.0.0.1:12004

link Clark Jaquez                   # neighbours, both ways
link Clark Bona
link Campbell Bailey
link Campbell Bona
link Campbell Jaquez
link Bona Bailey

places api new
places url https://places.googleapis.com/v1/places:searchNearby
places key-env GOOGLE_PLACES_API_KEY
log dir .
log lines on
# peer secret-env HERD_PEER_SECRET
";

    fn err(text: &str) -> ConfigError {
        parse_config(text).expect_err("config should be rejected")
    }

    fn with_server(extra: &str) -> Result<Config, ConfigError> {
        parse_config(&format!("server A 127.0.0.1:1\n{extra}\n"))
    }

    #[test]
    fn the_spec_config_parses() {
        let config = parse_config(SPEC_CONFIG).unwrap();
        assert_eq!(config.servers.len(), 5);
        assert_eq!(config.server("Campbell").unwrap().addr.port(), 12002);
        assert_eq!(config.links.len(), 6);
        let names: Vec<&str> = config
            .neighbours("Campbell")
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["Bailey", "Bona", "Jaquez"]);
        assert_eq!(config.places.api, PlacesApi::New);
        assert_eq!(config.places.key_env, "GOOGLE_PLACES_API_KEY");
        assert!(config.log.lines);
        assert_eq!(config.peer.secret, PeerSecret::BesideConfig);
    }

    #[test]
    fn defaults() {
        let config = with_server("").unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.limits.max_line_bytes, 65536);
        assert_eq!(config.places.workers, 256);
        assert_eq!(config.places.field_mask, DEFAULT_FIELD_MASK);
        assert_eq!(config.places.cache_ms, 30_000);
        assert_eq!(config.places.max_per_second, 0);
        assert_eq!(config.places.url(), PlacesApi::New.default_url());
        assert_eq!(config.log.dir, PathBuf::from("."));
        assert_eq!(config.log.rotation, Rotation::default());
    }

    #[test]
    fn url_default_follows_the_api_even_when_set_later() {
        let config = with_server("places api legacy").unwrap();
        assert_eq!(config.places.url(), PlacesApi::Legacy.default_url());
        let config = with_server("places url http://127.0.0.1:9/x\nplaces api legacy").unwrap();
        assert_eq!(config.places.url(), "http://127.0.0.1:9/x");
    }

    #[test]
    fn places_api_local_reads_its_file_beside_the_config() {
        let config = with_server("places api local\nplaces file world.csv.gz").unwrap();
        assert_eq!(config.places.api, PlacesApi::Local);
        assert_eq!(config.places.api.name(), "local");
        assert_eq!(config.places.file, Some(PathBuf::from("world.csv.gz")));
        assert_eq!(
            config.places.file_path(Path::new("/etc/herd/herd.conf")),
            Some(PathBuf::from("/etc/herd/world.csv.gz"))
        );
        assert_eq!(
            config.places.file_path(Path::new("conf/herd.conf")),
            Some(PathBuf::from("conf/world.csv.gz"))
        );
        assert_eq!(
            config.places.file_path(Path::new("herd.conf")),
            Some(PathBuf::from("world.csv.gz"))
        );
        // An absolute path stays as it is; the file may come before the api.
        let config = with_server("places file /data/places.geojson\nplaces api local").unwrap();
        assert_eq!(
            config.places.file_path(Path::new("/etc/herd/herd.conf")),
            Some(PathBuf::from("/data/places.geojson"))
        );
        assert_eq!(
            with_server("")
                .unwrap()
                .places
                .file_path(Path::new("herd.conf")),
            None
        );
    }

    #[test]
    fn places_api_local_without_a_file_names_the_api_line() {
        let e = err("server A 127.0.0.1:1\n# places\nplaces api local\nlog lines off\n");
        assert_eq!(
            e.to_string(),
            "3: places api local needs a 'places file PATH' line (a CSV or GeoJSON file of places)"
        );
        // The last `places api` decides, and names its line.
        let e = err("server A 127.0.0.1:1\nplaces api new\nplaces api local\n");
        assert_eq!(e.line, 3);
        let e = err("server A 127.0.0.1:1\nplaces api local\nplaces api new\nplaces api local\n");
        assert_eq!(e.line, 4);
        // Switching to Google is one line: the file may stay, and is not needed.
        let config = with_server("places api local\nplaces api new\nplaces file w.csv").unwrap();
        assert_eq!(config.places.api, PlacesApi::New);
        assert_eq!(config.places.file, Some(PathBuf::from("w.csv")));
        assert!(with_server("places api local\nplaces api legacy").is_ok());
        let e = err("server A 127.0.0.1:1\nplaces api newest\n");
        assert_eq!(
            e.problem,
            "places api must be 'new', 'legacy' or 'local', not 'newest'"
        );
    }

    #[test]
    fn every_setting_is_read() {
        let config = with_server(
            "places workers 8\nplaces timeout-ms 250\nplaces queue 10\nplaces key-env K_1\n\
             places cache-ms 0\nplaces cache-entries 7\nplaces max-per-second 3\n\
             places field-mask places.displayName\nlog dir /tmp/x\nlog lines off\nlog level debug\n\
             limit line-bytes 100\nlimit output-bytes 2048\nlimit connections 3\n\
             limit future-seconds 60\nlimit output-soft-bytes 4096\nlimit in-flight 9\nlimit commands-per-turn 5\n\
             limit output-total-bytes 65536\nlimit stall-ms 1500\n\
             peer secret-env S\npeer backoff-min-ms 10\npeer backoff-max-ms 20\npeer max-owed 4096\n\
             peer ping-ms 300\npeer stall-ms 700",
        )
        .unwrap();
        assert_eq!(config.places.workers, 8);
        assert_eq!(config.places.timeout, Duration::from_millis(250));
        assert_eq!(config.places.queue, 10);
        assert_eq!(config.places.cache_ms, 0);
        assert_eq!(config.places.cache_entries, 7);
        assert_eq!(config.places.max_per_second, 3);
        assert_eq!(config.places.key_env, "K_1");
        assert_eq!(config.places.field_mask, "places.displayName");
        assert_eq!(config.log.dir, PathBuf::from("/tmp/x"));
        assert!(!config.log.lines);
        assert_eq!(config.log.level, log::LevelFilter::Debug);
        assert_eq!(config.limits.max_line_bytes, 100);
        assert_eq!(config.limits.max_output_bytes, 2048);
        assert_eq!(config.limits.max_connections, 3);
        assert_eq!(config.peer.secret, PeerSecret::Env("S".into()));
        assert_eq!(config.peer.backoff_min, Duration::from_millis(10));
        assert_eq!(config.peer.backoff_max, Duration::from_millis(20));
        assert_eq!(config.limits.max_future_secs, 60);
        assert_eq!(config.limits.soft_output_bytes, 4096);
        assert_eq!(config.limits.max_in_flight, 9);
        assert_eq!(config.limits.commands_per_turn, 5);
        assert_eq!(config.limits.max_output_total_bytes, 65536);
        assert_eq!(config.limits.stall_limit, Duration::from_millis(1500));
        assert_eq!(config.peer.max_owed, 4096);
        assert_eq!(config.peer.stall_limit, Duration::from_millis(700));
        assert_eq!(config.peer.ping_interval, Duration::from_millis(300));
        assert_eq!(config.peer.silence_limit(), Duration::from_millis(1500));
    }

    #[test]
    fn the_shipped_config_parses_and_keeps_a_store() {
        let config = parse_config(include_str!("../herd.conf")).unwrap();
        assert_eq!(config.servers.len(), 5);
        assert_eq!(config.store.dir, Some(PathBuf::from("data")));
    }

    #[test]
    fn log_rotation_settings_are_read() {
        let config = with_server("log max-bytes 1048576\nlog keep 9").unwrap();
        assert_eq!(
            config.log.rotation,
            Rotation {
                max_bytes: 1 << 20,
                keep: 9
            }
        );
        let config = with_server("log max-bytes 0\nlog keep 0").unwrap();
        assert_eq!(
            config.log.rotation,
            Rotation {
                max_bytes: 0,
                keep: 0
            }
        );
        let config = with_server("log max-bytes 4096").unwrap();
        assert_eq!(config.log.rotation.max_bytes, 4096);
    }

    #[test]
    fn store_settings_are_read_and_default_to_memory_only() {
        let config = with_server("").unwrap();
        assert_eq!(config.store, StoreSettings::default());
        assert_eq!(config.store.dir, None);
        let config =
            with_server("store dir data\nstore fsync always\nstore compact-bytes 8192").unwrap();
        assert_eq!(config.store.dir, Some(PathBuf::from("data")));
        assert_eq!(config.store.fsync, FsyncPolicy::Always);
        assert_eq!(config.store.compact_min_bytes, 8192);
        for (text, policy) in [("no", FsyncPolicy::No), ("everysec", FsyncPolicy::EverySec)] {
            let config = with_server(&format!("store fsync {text}")).unwrap();
            assert_eq!(config.store.fsync, policy);
        }
    }

    #[test]
    fn metrics_lines_give_each_server_its_own_address() {
        let config = parse_config(
            "server A 127.0.0.1:1\nserver B 127.0.0.1:2\nmetrics A 127.0.0.1:9100\n\
             metrics B 0.0.0.0:9101\nlimit metrics-connections 4\n\
             limit metrics-request-bytes 1024\nlimit metrics-timeout-ms 250\n",
        )
        .unwrap();
        assert_eq!(
            config.metrics_addr("A"),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            config.metrics_addr("B"),
            Some("0.0.0.0:9101".parse().unwrap())
        );
        assert_eq!(config.limits.metrics_connections, 4);
        assert_eq!(config.limits.metrics_request_bytes, 1024);
        assert_eq!(config.limits.metrics_timeout, Duration::from_millis(250));
        let config = with_server("").unwrap();
        assert_eq!(config.metrics_addr("A"), None);
        assert_eq!(config.limits.metrics_connections, 16);
    }

    #[test]
    fn metrics_lines_that_cannot_work_are_errors() {
        let cases = [
            ("metrics A", "expected 'metrics SERVER IP:PORT'"),
            (
                "metrics Nobody 127.0.0.1:9",
                "metrics names unknown server 'Nobody'",
            ),
            (
                "metrics A localhost:9",
                "bad address 'localhost:9' for metrics of 'A'",
            ),
            (
                "metrics A 127.0.0.1:1",
                "metrics address 127.0.0.1:1 is already the listen address of server 'A'",
            ),
            (
                "metrics A 127.0.0.1:9\nmetrics A 127.0.0.1:8",
                "metrics for server 'A' is already defined",
            ),
            (
                "server B 127.0.0.1:2\nmetrics A 127.0.0.1:9\nmetrics B 127.0.0.1:9",
                "metrics address 127.0.0.1:9 is already the metrics address of server 'A'",
            ),
            (
                "metrics A 127.0.0.1:9\nserver B 127.0.0.1:9",
                "address 127.0.0.1:9 is already the metrics address of server 'A'",
            ),
            ("limit metrics-connections 0", "metrics-connections must be"),
            (
                "limit metrics-request-bytes 10",
                "metrics-request-bytes must be",
            ),
            ("limit metrics-timeout-ms 0", "metrics-timeout-ms must be"),
        ];
        for (extra, problem) in cases {
            let e = with_server(extra).expect_err(extra);
            assert_eq!(e.line, 1 + extra.lines().count(), "{extra}: {e}");
            assert!(e.problem.starts_with(problem), "{extra}: {e}");
        }
    }

    #[test]
    fn the_last_peer_secret_line_decides() {
        let config = with_server("peer secret-file /tmp/s\npeer secret none").unwrap();
        assert_eq!(config.peer.secret, PeerSecret::None);
        let config = with_server("peer secret none\npeer secret-file keys/herd.secret").unwrap();
        assert_eq!(
            config.peer.secret,
            PeerSecret::File(PathBuf::from("keys/herd.secret"))
        );
    }

    #[test]
    fn peer_tls_is_a_directory_or_off() {
        let config = with_server("").unwrap();
        assert_eq!(config.peer.tls, PeerTls::Unset);
        assert_eq!(config.limits.tls_handshake, Duration::from_secs(10));
        let config = with_server("peer tls tls\nlimit tls-handshake-ms 250").unwrap();
        assert_eq!(config.peer.tls, PeerTls::Dir(PathBuf::from("tls")));
        assert_eq!(config.limits.tls_handshake, Duration::from_millis(250));
        assert_eq!(
            config.peer.tls.dir_path(Path::new("/etc/herd/herd.conf")),
            Some(PathBuf::from("/etc/herd/tls"))
        );
        let config = with_server("peer tls /srv/certs").unwrap();
        assert_eq!(
            config.peer.tls.dir_path(Path::new("conf/herd.conf")),
            Some(PathBuf::from("/srv/certs"))
        );
        let config = with_server("peer tls off").unwrap();
        assert_eq!(config.peer.tls, PeerTls::Off);
        assert_eq!(config.peer.tls.dir_path(Path::new("herd.conf")), None);
        assert_eq!(with_server("peer tls").unwrap_err().line, 2);
        assert_eq!(with_server("limit tls-handshake-ms 0").unwrap_err().line, 2);
    }

    #[test]
    fn links_in_clear_off_this_machine_are_refused_with_the_fix() {
        let herd = "server A 127.0.0.1:1\nserver B 127.0.0.2:2\nserver C 192.0.2.7:3\n\
                    server D [::1]:4\nlink A B\nlink A D\n# c\nlink B C\nlink A C\n";
        let config = parse_config(herd).unwrap();
        let e = config.check_links_secure().unwrap_err();
        assert_eq!(e.line, 8, "the first link that leaves the machine: {e}");
        assert!(
            e.problem.starts_with("link B C reaches C at 192.0.2.7:3"),
            "{e}"
        );
        for fix in ["herd certs", "peer tls DIR", "peer tls off"] {
            assert!(e.problem.contains(fix), "{e}");
        }
        for setting in ["peer tls off", "peer tls tls"] {
            let config = parse_config(&format!("{herd}{setting}\n")).unwrap();
            assert_eq!(config.check_links_secure(), Ok(()), "{setting}");
        }
        // On one machine, nothing to set up; a server off it with no link is no link in clear.
        let local = "server A 127.0.0.1:1\nserver B 127.0.0.1:2\nserver C 10.0.0.1:3\nlink A B\n";
        assert_eq!(parse_config(local).unwrap().check_links_secure(), Ok(()));
        // The unspecified address listens on every interface: not this machine only.
        let any = "server A 127.0.0.1:1\nserver B 0.0.0.0:2\nlink B A\n";
        assert_eq!(
            parse_config(any)
                .unwrap()
                .check_links_secure()
                .unwrap_err()
                .line,
            3
        );
    }

    #[test]
    fn tls_lines_give_a_server_a_port_for_clients_over_tls() {
        let config = parse_config(
            "server A 127.0.0.1:1\nserver B 127.0.0.1:2\ntls A 0.0.0.0:443 certs/a.pem certs/a.key\n",
        )
        .unwrap();
        let entry = config.tls_clients("A").unwrap();
        assert_eq!(entry.addr, "0.0.0.0:443".parse().unwrap());
        assert_eq!(
            entry.cert_path(Path::new("/etc/herd/herd.conf")),
            PathBuf::from("/etc/herd/certs/a.pem")
        );
        assert_eq!(
            entry.key_path(Path::new("herd.conf")),
            PathBuf::from("certs/a.key")
        );
        assert_eq!(config.tls_clients("B"), None);
        let cases = [
            (
                "tls A 127.0.0.1:9 c",
                "expected 'tls SERVER IP:PORT CERT KEY'",
            ),
            (
                "tls Nobody 127.0.0.1:9 c k",
                "tls names unknown server 'Nobody'",
            ),
            (
                "tls A localhost:9 c k",
                "bad address 'localhost:9' for tls of 'A'",
            ),
            (
                "tls A 127.0.0.1:1 c k",
                "tls address 127.0.0.1:1 is already the listen address",
            ),
            (
                "tls A 127.0.0.1:9 c k\ntls A 127.0.0.1:8 c k",
                "tls for server 'A' is already defined",
            ),
            (
                "metrics A 127.0.0.1:9\ntls A 127.0.0.1:9 c k",
                "tls address 127.0.0.1:9 is already the metrics address of server 'A'",
            ),
            (
                "tls A 127.0.0.1:9 c k\nmetrics A 127.0.0.1:9",
                "metrics address 127.0.0.1:9 is already the TLS address of server 'A'",
            ),
            (
                "tls A 127.0.0.1:9 c k\nserver C 127.0.0.1:9",
                "address 127.0.0.1:9 is already the TLS address of server 'A'",
            ),
        ];
        for (extra, problem) in cases {
            let e = with_server(extra).expect_err(extra);
            assert_eq!(e.line, 1 + extra.lines().count(), "{extra}: {e}");
            assert!(e.problem.starts_with(problem), "{extra}: {e}");
        }
    }

    #[test]
    fn unknown_directive_names_its_line() {
        let e = err("server A 127.0.0.1:1\n\n# c\nlnk A B\n");
        assert_eq!(e.line, 4);
        assert_eq!(e.problem, "unknown directive 'lnk'");
        assert_eq!(e.to_string(), "4: unknown directive 'lnk'");
    }

    #[test]
    fn malformed_lines_are_errors() {
        let cases = [
            ("server A", 2),
            ("server A 127.0.0.1", 2),
            ("server B localhost:80", 2),
            ("server A 127.0.0.1:2", 2),
            ("server B 127.0.0.1:1", 2),
            ("link A", 2),
            ("link A Nobody", 2),
            ("link A A", 2),
            ("places api newest", 2),
            ("places api local", 2),
            ("places api local\nplaces file", 3),
            ("places file", 2),
            ("places file a b", 2),
            ("places url ftp://x", 2),
            ("places workers 0", 2),
            ("places workers many", 2),
            ("places workers 5000", 2),
            ("places cache-ms -1", 2),
            ("places cache-entries 0", 2),
            ("places max-per-second x", 2),
            ("places timeout-ms -1", 2),
            ("places colour blue", 2),
            ("places key-env", 2),
            ("places key-env 1BAD", 2),
            ("log lines maybe", 2),
            ("log level loud", 2),
            ("log colour on", 2),
            ("log max-bytes 4095", 2),
            ("log max-bytes 1MB", 2),
            ("log max-bytes -1", 2),
            ("log keep 1001", 2),
            ("log keep x", 2),
            ("log keep 1\nlog keep", 3),
            ("limit line-bytes 1", 2),
            ("limit sockets 5", 2),
            ("limit connections 5 6", 2),
            ("peer secret-env", 2),
            ("peer secret some", 2),
            ("peer secret-file", 2),
            ("peer backoff-min-ms 900\npeer backoff-max-ms 100", 3),
            ("peer flavour x", 2),
            ("peer queue-bytes 4096", 2),
            ("peer max-owed 0", 2),
            ("limit future-seconds -1", 2),
            ("store fsync sometimes", 2),
            ("store compact-bytes 10", 2),
            ("store dir", 2),
            ("store colour x", 2),
        ];
        for (extra, line) in cases {
            let e = with_server(extra).expect_err(extra);
            assert_eq!(e.line, line, "{extra}: {e}");
        }
    }

    #[test]
    fn duplicate_links_either_way_are_errors() {
        let e = err("server A 127.0.0.1:1\nserver B 127.0.0.1:2\nlink A B\nlink B A\n");
        assert_eq!(e.line, 4);
    }

    #[test]
    fn a_config_without_servers_is_an_error() {
        assert!(parse_config("# nothing\n").is_err());
        assert!(parse_config("").is_err());
    }

    #[test]
    fn bytes_that_are_utf8_parse_as_the_text_does() {
        assert_eq!(
            parse_config_bytes(SPEC_CONFIG.as_bytes()),
            parse_config(SPEC_CONFIG)
        );
        let e = parse_config_bytes(b"server A 127.0.0.1:1\nlnk A B\n").unwrap_err();
        assert_eq!(e.to_string(), "2: unknown directive 'lnk'");
    }

    #[test]
    fn bytes_that_are_not_utf8_name_the_line_and_the_byte() {
        let e =
            parse_config_bytes(b"# ok\nserver A 127.0.0.1:1\nlink A caf\xff\nlink\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.problem, "not UTF-8 text (byte 0xff) in 'caf\\xff'");
        // In a comment too, with CRLF line ends, on the first line, at the very end.
        let e = parse_config_bytes(b"a\r\nb\r\n\r\n# caf\xe9 au lait\r\n").unwrap_err();
        assert_eq!(e.line, 4);
        assert_eq!(e.problem, "not UTF-8 text (byte 0xe9) in 'caf\\xe9'");
        let e = parse_config_bytes(b"\x80server").unwrap_err();
        assert_eq!(
            (e.line, e.problem.as_str()),
            (1, "not UTF-8 text (byte 0x80) in '\\x80server'")
        );
        // A sequence cut short by the end of the file: its first byte is the one named.
        let e = parse_config_bytes(b"server A 127.0.0.1:1\n\xe2\x82").unwrap_err();
        assert_eq!(
            (e.line, e.problem.as_str()),
            (2, "not UTF-8 text (byte 0xe2) in '\\xe2\\x82'")
        );
        // The word is escaped as a whole, valid multi-byte characters and control bytes too.
        let e = parse_config_bytes(b"server \xc3\xa9\x1b\\\xff x").unwrap_err();
        assert_eq!(
            e.problem,
            "not UTF-8 text (byte 0xff) in '\\xc3\\xa9\\x1b\\\\\\xff'"
        );
    }

    #[test]
    fn bytes_from_the_file_are_escaped_in_every_problem() {
        let e = err("server A 127.0.0.1:1\nlnk\x1b[2J A B\n");
        assert_eq!(e.to_string(), "2: unknown directive 'lnk\\x1b[2J'");
        let e = err("server A\x07 127.0.0.1:1\nserver A\x07 127.0.0.1:2\n");
        assert_eq!(e.problem, "server 'A\\x07' is already defined");
        let e = err("server A 127.0.0.1:1\nplaces workers 1\u{e9}\\\x7f\n");
        assert_eq!(
            e.problem,
            "workers must be a whole number from 1 to 4096, not '1\\xc3\\xa9\\\\\\x7f'"
        );
        let e = err("server A 127.0.0.1:1\nlink A \x1b]0;pwned\x07\n");
        assert!(e.problem.contains("'\\x1b]0;pwned\\x07'"), "{e}");
    }

    #[test]
    fn problems_are_printable_ascii() {
        // The fixed text of every problem is printable ASCII without `\`, so escaping a whole
        // problem escapes exactly the bytes that came from the file.
        for extra in [
            "server A",
            "server B localhost:80",
            "server B 127.0.0.1:1",
            "link A Nobody",
            "link A A",
            "places api newest",
            "places api local",
            "places url ftp://x",
            "places workers 0",
            "places colour blue",
            "places key-env 1BAD",
            "log lines maybe",
            "log level loud",
            "log colour on",
            "log max-bytes 10",
            "log keep many",
            "limit sockets 5",
            "peer queue-bytes 4096",
            "peer flavour x",
            "peer backoff-min-ms 900\npeer backoff-max-ms 100",
            "frobnicate",
        ] {
            let e = with_server(extra).expect_err(extra);
            assert!(
                e.problem
                    .bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'\\'),
                "{extra}: {e}"
            );
        }
        let e = parse_config("").unwrap_err();
        assert!(e.problem.is_ascii());
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let config = parse_config("  # lead\n\n\tserver A 127.0.0.1:1 # trailing\n   \n").unwrap();
        assert_eq!(config.servers[0].name, "A");
    }
}
