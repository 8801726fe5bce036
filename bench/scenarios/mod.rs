//! What every scenario shares: the run context (herd binary, `--target`, `--quick`), the server
//! a single-server scenario measures, herd topologies and their distances, and the table row of
//! one load run. Each scenario module runs one scenario of the issue and returns its `Section`.

pub mod bigherd;
pub mod conns;
pub mod flood;
pub mod hostile;
pub mod iamat;
pub mod memory;
pub mod places;
pub mod staleness;
pub mod store;
pub mod whatsat;

use std::collections::VecDeque;
use std::fs;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_test_support::harness::{link_indices, SPEC_LINKS, SPEC_SERVERS};
use serde_json::json;

use crate::commands::Names;
use crate::herd::{pid_listening_on, Herd, HerdConfig};
use crate::load::LoadReport;
use crate::report::{fmt_latency, fmt_ns, fmt_rate, Row};

pub struct Ctx {
    pub bin: PathBuf,
    pub target: Option<Target>,
    pub quick: bool,
    /// Scenario 1's C x P configurations to run (empty: all).
    pub shapes: Vec<(usize, usize)>,
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

/// An already running server or herd given with `--target`.
pub enum Target {
    Addr(SocketAddr),
    Herd(TargetHerd),
}

pub struct TargetHerd {
    pub names: Vec<String>,
    pub addrs: Vec<SocketAddr>,
    pub links: Vec<(usize, usize)>,
    pub log_dir: Option<PathBuf>,
}

impl Target {
    /// `HOST:PORT`, a comma-separated list of them, or a herd.conf naming servers and links.
    pub fn parse(text: &str) -> Result<Target, String> {
        if text.contains(',') {
            let addrs = text
                .split(',')
                .map(resolve)
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Target::Herd(TargetHerd {
                names: (1..=addrs.len()).map(|i| format!("server{i}")).collect(),
                addrs,
                links: Vec::new(),
                log_dir: None,
            }));
        }
        if !Path::new(text).is_file() {
            return resolve(text).map(Target::Addr);
        }
        parse_config(Path::new(text)).map(Target::Herd)
    }

    /// The server a single-server scenario measures: the address, or a herd's first server.
    pub fn first_addr(&self) -> SocketAddr {
        match self {
            Target::Addr(addr) => *addr,
            Target::Herd(herd) => herd.addrs[0],
        }
    }
}

fn resolve(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .to_socket_addrs()
        .map_err(|e| format!("--target {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("--target {text}: no address"))
}

/// The servers, links and log directory of a herd.conf, read with the server's own parser.
fn parse_config(path: &Path) -> Result<TargetHerd, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = ::herd::config::parse_config(&text)
        .map_err(|e| format!("{}:{}: {}", path.display(), e.line, e.problem))?;
    let names: Vec<String> = config.servers.iter().map(|s| s.name.clone()).collect();
    let links =
        link_indices(&names, &config.links).map_err(|e| format!("{}: {e}", path.display()))?;
    // A relative `log dir` is relative to where the servers run: take the config's directory.
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(TargetHerd {
        addrs: config.servers.iter().map(|s| s.addr).collect(),
        names,
        links,
        log_dir: Some(base.join(&config.log.dir)),
    })
}

/// The server a single-server scenario measures: `--target`, or a fresh herd of one.
pub enum Subject {
    Target { addr: SocketAddr, pid: Option<u32> },
    Own(Herd),
}

impl Subject {
    pub fn start(ctx: &Ctx, label: &str, directives: &[&str]) -> Result<Subject, String> {
        if let Some(target) = &ctx.target {
            let addr = target.first_addr();
            return Ok(Subject::Target {
                addr,
                pid: pid_listening_on(addr),
            });
        }
        let mut config = HerdConfig::single("Bench")?;
        for directive in directives {
            config = config.with(directive);
        }
        Herd::start(&ctx.bin, config, label).map(Subject::Own)
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Subject::Target { addr, .. } => *addr,
            Subject::Own(herd) => herd.config.addrs[0],
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Subject::Target { pid, .. } => *pid,
            Subject::Own(herd) => herd.pid(0),
        }
    }
}

/// The table row of one load run: rate, latency percentiles, and who used the CPU.
pub fn load_row(config: impl Into<String>, load: &LoadReport) -> Row {
    let mut result = format!("{}  {}", fmt_rate(load.rate()), fmt_latency(&load.latency));
    let mut row = Row::new(config);
    if let Some(server) = load.server_cpu {
        result += &format!("  srv {:.0}%", server * 100.0);
        row = row.figure("server_cpu", round3(server));
    }
    if let Some(generator) = load.generator_cpu {
        result += &format!(" gen {:.0}%", generator * 100.0);
        row = row.figure("generator_cpu", round3(generator));
    }
    if let Some(other) = load.other_cpu {
        result += &format!(" other {:.0}%", other * 100.0);
        row = row.figure("other_cpu", round3(other));
    }
    if let Some(rate) = load.paced_rate {
        // How late the generator sent (a full connection included): already in the latency.
        let lag = load.send_lag.percentile(0.99);
        result += &format!("  sent late p99 {}", fmt_ns(lag));
        row = row
            .figure("paced_rate_per_s", rate.round())
            .figure("send_lag_p99_ns", lag)
            .figure("unsent", load.unsent);
        // One command at the window's edge whose connection was still waiting is routine.
        if load.unsent * 1000 > load.completed {
            result += &format!("  {} due but never sent", load.unsent);
        }
    }
    if load.errors > 0 {
        result += &format!("  {} '?' replies", load.errors);
    }
    if load.error_json > 0 {
        result += &format!("  {} error JSON", load.error_json);
    }
    if load.malformed > 0 {
        result += &format!("  {} malformed WHATSAT replies", load.malformed);
    }
    if let Some(why) = &load.closed {
        result += &format!("  ({why})");
    }
    row.result(result)
        .figure("rate_per_s", load.rate().round())
        .figure("replies", load.completed)
        .figure("window_s", round3(load.window.as_secs_f64()))
        .figure("errors", load.errors)
        .figure("error_json", load.error_json)
        .figure("malformed", load.malformed)
        .figure("unanswered", load.unanswered)
        .latency("", &load.latency)
}

pub fn round3(x: f64) -> serde_json::Value {
    json!((x * 1000.0).round() / 1000.0)
}

/// Hop counts from `from` to every server (None: unreachable), by breadth-first search.
pub fn distances(n: usize, links: &[(usize, usize)], from: usize) -> Vec<Option<usize>> {
    let mut dist = vec![None; n];
    dist[from] = Some(0);
    let mut queue = VecDeque::from([from]);
    while let Some(at) = queue.pop_front() {
        let d = dist[at].unwrap_or(0);
        for &(a, b) in links {
            let next = if a == at {
                b
            } else if b == at {
                a
            } else {
                continue;
            };
            if dist[next].is_none() {
                dist[next] = Some(d + 1);
                queue.push_back(next);
            }
        }
    }
    dist
}

/// The most hops from `from` to any server; `None` when one cannot be reached.
pub fn eccentricity(n: usize, links: &[(usize, usize)], from: usize) -> Option<usize> {
    let hops: Option<Vec<usize>> = distances(n, links, from).into_iter().collect();
    hops?.into_iter().max()
}

/// The SPEC's five-server herd (section 4).
pub fn five_servers() -> (Vec<String>, Vec<(usize, usize)>) {
    let names: Vec<String> = SPEC_SERVERS.iter().map(|s| s.to_string()).collect();
    let links = link_indices(&names, &SPEC_LINKS).unwrap_or_default();
    (names, links)
}
