//! The servers a scenario measures: one (`Subject`) or a herd (`Fleet`), either `--target` or
//! started here from a generated config and killed when dropped; and the IAMAT load most
//! scenarios run against one of them.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Ctx, Target};
use crate::commands::IamatLoad;
use crate::herd::{pid_listening_on, rss_bytes, Herd, HerdConfig};
use crate::load::{run_load, LoadReport, LoadSpec};

/// The server a single-server scenario measures: `--target`, or a fresh herd of one.
pub enum Subject {
    Target { addr: SocketAddr, pid: Option<u32> },
    Own(Box<Herd>),
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
        Herd::start(&ctx.bin, config, label).map(|herd| Subject::Own(Box::new(herd)))
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

    /// Its address and pid, as a load is given them.
    pub fn server(&self) -> (SocketAddr, Option<u32>) {
        (self.addr(), self.pid())
    }
}

/// IAMAT closed loop (or paced at `rate` commands a second) at C x P for `secs` (a quarter with
/// `--quick`), each connection cycling through clients of its own, the server's CPU read.
pub fn iamat_load(
    ctx: &Ctx,
    (addr, pid): (SocketAddr, Option<u32>),
    (connections, in_flight): (usize, usize),
    secs: f64,
    rate: Option<f64>,
) -> Result<LoadReport, String> {
    let mut spec = LoadSpec::new(addr, connections, in_flight, ctx.secs(secs)).server(pid);
    if let Some(rate) = rate {
        spec = spec.paced(rate);
    }
    run_load(&spec, &mut IamatLoad::cycling(&ctx.names, connections))
}

/// The herd a multi-server scenario measures: `--target` (a list or a herd.conf), or one
/// started from `names` and `links` (killed when dropped).
pub struct Fleet {
    pub names: Vec<String>,
    pub addrs: Vec<SocketAddr>,
    /// Known from a herd.conf or the generated config; empty for a bare list.
    pub links: Vec<(usize, usize)>,
    pub pids: Vec<Option<u32>>,
    pub log_dir: Option<PathBuf>,
    herd: Option<Herd>,
}

impl Fleet {
    pub fn start(
        ctx: &Ctx,
        scenario: &str,
        (names, links): (Vec<String>, Vec<(usize, usize)>),
        directives: &[String],
    ) -> Result<Fleet, String> {
        match &ctx.target {
            Some(Target::Addr(_)) => Err(format!(
                "--target for {scenario} needs a comma-separated list or a herd.conf"
            )),
            Some(Target::Herd(t)) => Ok(Fleet {
                names: t.names.clone(),
                addrs: t.addrs.clone(),
                links: t.links.clone(),
                pids: t.addrs.iter().map(|&a| pid_listening_on(a)).collect(),
                log_dir: t.log_dir.clone(),
                herd: None,
            }),
            None => {
                let mut config = HerdConfig::new(&names, &links)?;
                for d in directives {
                    config = config.with(d);
                }
                Fleet::start_config(ctx, scenario, config)
            }
        }
    }

    /// The herd of a config prepared by the scenario (its servers moved to other addresses,
    /// its links routed through relays), started here and killed when dropped.
    pub fn start_config(ctx: &Ctx, scenario: &str, config: HerdConfig) -> Result<Fleet, String> {
        let (names, links) = (config.names.clone(), config.links.clone());
        let herd = Herd::start(&ctx.bin, config, scenario)?;
        Ok(Fleet {
            addrs: herd.addrs(),
            pids: (0..names.len()).map(|i| herd.pid(i)).collect(),
            log_dir: Some(herd.dir.path().to_path_buf()),
            names,
            links,
            herd: Some(herd),
        })
    }

    /// Stops the servers the bench started with SIGTERM, so their logs are complete (a
    /// target's are left running).
    pub fn terminate(&mut self) {
        if let Some(herd) = self.herd.as_mut() {
            herd.terminate();
        }
    }

    /// Every server's RSS (`None` where the pid or the reading is missing).
    pub fn rss(&self) -> Vec<Option<u64>> {
        self.pids.iter().map(|p| p.and_then(rss_bytes)).collect()
    }

    /// Server `i`'s address and pid, as a load is given them.
    pub fn server(&self, i: usize) -> (SocketAddr, Option<u32>) {
        (self.addrs[i], self.pids[i])
    }

    /// Every server but `origin`, by index.
    pub fn others(&self, origin: usize) -> Vec<usize> {
        (0..self.names.len()).filter(|&i| i != origin).collect()
    }
}
