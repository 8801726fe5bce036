//! The level filter: `log level` for herd's own records, warnings and errors at most for every
//! library, changed in the running process by a reload. It decides which records are made; it
//! never formats, buffers or writes one.

use std::sync::atomic::{AtomicUsize, Ordering};

use log::LevelFilter;

/// herd's own `log level`, as a `LevelFilter` discriminant (set by [`set_own_level`]).
static OWN_LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

/// Makes `level` herd's own level, and the most the `log` macros let through at all.
pub(super) fn set_own_level(level: LevelFilter) {
    OWN_LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level);
}

fn own_level() -> LevelFilter {
    match OWN_LEVEL.load(Ordering::Relaxed) {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// The most a target that is not herd's own may log, whatever `log level` says. ureq logs the
/// request line with its query (the legacy API's `key=`) at debug when trace is on, and
/// ureq-proto dumps every byte it sends (the `X-Goog-Api-Key` header) at trace: no library's
/// debug or trace output is let through, so a secret it handles never reaches the log.
pub const OTHERS_MAX_LEVEL: LevelFilter = LevelFilter::Warn;

/// The level a record of `target` is logged at most: `level` (the configured one) for herd's
/// own targets (`herd`, `herd::...`), at most [`OTHERS_MAX_LEVEL`] for every other one.
pub fn level_for(target: &str, level: LevelFilter) -> LevelFilter {
    let own = target
        .strip_prefix("herd")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"));
    if own {
        level
    } else {
        level.min(OTHERS_MAX_LEVEL)
    }
}

/// simplelog's logger behind [`level_for`]: a record is written only if its target may log at
/// its level. `enabled` says the same, so a library that asks first (`log_enabled!`) does not
/// even format what would be dropped.
pub(super) struct CappedLogger<L> {
    pub(super) inner: Box<L>,
}

impl<L: log::Log> log::Log for CappedLogger<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= level_for(metadata.target(), own_level())
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_targets_are_capped_at_warn_and_herd_keeps_its_level() {
        use LevelFilter::*;
        for target in ["herd", "herd::places::pool", "herd::event_loop"] {
            for level in [Off, Error, Warn, Info, Debug, Trace] {
                assert_eq!(level_for(target, level), level, "{target} {level}");
            }
        }
        for target in [
            "ureq",
            "ureq::unversioned::transport::tcp",
            "ureq_proto::util",
            "rustls",
            "herdsman",
            "herd_test_support",
            "",
            "mio::poll",
        ] {
            assert_eq!(level_for(target, Trace), Warn, "{target}");
            assert_eq!(level_for(target, Debug), Warn, "{target}");
            assert_eq!(level_for(target, Warn), Warn, "{target}");
            assert_eq!(level_for(target, Error), Error, "{target}");
            assert_eq!(level_for(target, Off), Off, "{target}");
        }
    }

    #[test]
    fn the_capped_logger_drops_what_its_target_may_not_log() {
        use log::{Level, Log, Metadata, Record};

        #[derive(Default)]
        struct Counting(AtomicUsize);
        impl Log for Counting {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn log(&self, _: &Record<'_>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
            fn flush(&self) {}
        }

        // The level is the process's (no other unit test reads it).
        OWN_LEVEL.store(LevelFilter::Trace as usize, Ordering::Relaxed);
        let logger = CappedLogger {
            inner: Box::new(Counting::default()),
        };
        let record = |target, level| {
            let metadata = Metadata::builder().target(target).level(level).build();
            (logger.enabled(&metadata), {
                logger.log(
                    &Record::builder()
                        .metadata(metadata)
                        .args(format_args!("x"))
                        .build(),
                );
                logger.inner.0.load(Ordering::Relaxed)
            })
        };
        assert_eq!(record("herd::places::pool", Level::Trace), (true, 1));
        assert_eq!(record("ureq_proto::util", Level::Trace), (false, 1));
        assert_eq!(record("ureq::run", Level::Debug), (false, 1));
        assert_eq!(record("ureq::run", Level::Warn), (true, 2));
        assert_eq!(record("rustls::conn", Level::Error), (true, 3));
    }
}
