//! Who used the CPU between two moments: each server measured, the calling thread, this whole
//! process, and everything else on the machine, as shares of one core. Reads /proc (through
//! herd.rs) and the clock; it knows nothing of what ran meanwhile.

use std::time::Instant;

use crate::herd::{cpu_secs, machine_cpu_secs, own_cpu_secs, thread_cpu_secs};

/// CPU seconds used so far by each server, this thread, this process and the whole machine,
/// and when they were read.
pub struct CpuMark {
    at: Instant,
    servers: Vec<Option<f64>>,
    thread: Option<f64>,
    process: Option<f64>,
    machine: Option<f64>,
}

/// Shares of one core between two marks (`None` where a reading failed).
pub struct CpuShares {
    pub servers: Vec<Option<f64>>,
    /// The thread that took both marks (the load generator's, when it took them).
    pub thread: Option<f64>,
    /// This process: the bench, every thread of it.
    pub process: Option<f64>,
    /// Every other process on the machine: servers not measured, or someone else's work.
    pub other: Option<f64>,
    pub wall_secs: f64,
}

impl CpuMark {
    pub fn take(server_pids: &[Option<u32>]) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            servers: server_pids
                .iter()
                .map(|pid| pid.and_then(cpu_secs))
                .collect(),
            thread: thread_cpu_secs(),
            process: own_cpu_secs(),
            machine: machine_cpu_secs(),
        }
    }

    pub fn shares(&self, later: &CpuMark) -> CpuShares {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let used = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / wall);
        let servers: Vec<Option<f64>> = (self.servers.iter().zip(&later.servers))
            .map(|(&a, &b)| used(a, b))
            .collect();
        let process = used(self.process, later.process);
        let other = (|| {
            let measured: f64 = servers.iter().flatten().sum();
            Some((used(self.machine, later.machine)? - process? - measured).max(0.0))
        })();
        CpuShares {
            thread: used(self.thread, later.thread),
            servers,
            process,
            other,
            wall_secs: wall,
        }
    }
}
