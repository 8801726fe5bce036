//! `--target`: an already running server (`HOST:PORT`), or herd (a comma-separated list, or a
//! herd.conf read with the server's own parser for its servers, links and log directory).
//! Parsing only; nothing here connects.

use std::fs;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use herd_test_support::harness::link_indices;

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
