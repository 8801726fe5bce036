//! How glibc's malloc is set up for this process: one event loop and up to `places workers`
//! (4,096 at most) blocking Places workers that run at a lower priority than the loop.
//!
//! glibc hands out arenas from a pool of eight per core; once that pool is used up, threads
//! share arenas, and the loop's own (the main arena) is shared too. A worker preempted while it
//! holds a shared arena's lock keeps the loop waiting until the worker runs again, and the
//! workers run at `nice` 10 beside busy attackers: under 2,000 WHATSAT pipeliners (`cargo bench
//! --bench load -- hostile`) the loop's longest waits, 15-65 ms by `perf sched`, were in
//! `malloc` and `free` behind such locks. The rest were in `brk`, which takes the process's
//! memory-map lock that every worker's thread start and arena growth takes too.
//!
//! So every thread gets an arena of its own (the loop never shares one), and the main arena
//! grows in steps of [`TOP_PAD`] instead of glibc's 128 KiB, so the loop calls `brk` rarely.

/// More arenas than threads this process can have: the workers, the loop and a few helpers.
const ARENAS: i32 = 4_096 + 64;

/// What the main arena asks of `brk` beyond each request, and keeps when it trims.
const TOP_PAD: i32 = 8 << 20;

/// Sets malloc up as described above. Call first in `main`, before any thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers; a refused setting leaves glibc's default.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
    }
}
