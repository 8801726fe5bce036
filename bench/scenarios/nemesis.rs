//! Scenario 17: the long nemesis run, with its checker (`herd_test_support::nemesis`, the run
//! `cargo test --test nemesis` makes for a minute): the five servers of the shipped herd, each
//! on its own loopback address, every link through WAN relays, stores on; client threads send
//! IAMATs for 300 client ids at random servers and record every acknowledged update, while a
//! seeded nemesis kills, stops and restarts servers, cuts, blackholes and slows links, and
//! removes and restores links by SIGHUP. At the end everything is healed, and every server must
//! hold, for every client, the winner of the acknowledged updates (none lost, none disagreeing)
//! and no server may have died but by the nemesis.
//!
//! Half an hour of faults (`--quick`: two minutes; `NEMESIS_SECONDS` and `NEMESIS_SEED` as for
//! the test), so it runs only when named: `cargo bench --bench load -- nemesis`.

use herd_test_support::nemesis::{self, Options};

use crate::report::{fmt_count, Row, Section};
use crate::scenarios::Ctx;

/// Seconds of faults, and the fewest events a run must hold.
const SECONDS: u64 = 1800;
const QUICK_SECONDS: u64 = 120;
const MIN_EVENTS: usize = 50;

pub fn run(ctx: &Ctx) -> Section {
    Section::new("17 nemesis", "faults with a checker").measured(|section| measure(ctx, section))
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    if ctx.target.is_some() {
        return Err("the nemesis starts and kills its own herd: --target does not apply".into());
    }
    let seconds = if ctx.quick { QUICK_SECONDS } else { SECONDS };
    let options = Options::from_env(seconds, MIN_EVENTS)?;
    eprintln!(
        "nemesis: seed {} ({}={}), {:?} of faults",
        options.seed,
        nemesis::SEED_ENV,
        options.seed,
        options.duration
    );
    // A failure is the checker's verdict, with the seed and the history to replay it.
    let report = nemesis::run(&options).map_err(|failure| failure.to_string())?;
    let row = Row::new(format!(
        "seed {}, {:.0?} of faults",
        report.seed, report.nemesis_time
    ))
    .result(format!(
        "{}; {} updates acknowledged, 0 lost, 0 disagreeing; converged {:.0?} after the final \
         heal",
        report.events,
        fmt_count(report.acked as u64),
        report.converge_time
    ))
    .figure("seed", report.seed)
    .figure("events", report.events.total())
    .figure("acked", report.acked)
    .figure("converge_ms", report.converge_time.as_millis() as u64)
    .check(
        format!("every acknowledged update kept, >= {MIN_EVENTS} events"),
        report.events.total() >= MIN_EVENTS,
    );
    section.rows.push(row);
    section.notes.push(report.to_string());
    Ok(())
}
