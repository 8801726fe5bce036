//! The store of a server (`store dir PATH`): every record the server keeps, whether a client's
//! IAMAT or a neighbour's update, appended to `PATH/NAME.store` before the reply or the flood
//! that carries it leaves the loop turn, so a process killed at any moment loses nothing it
//! acknowledged; read back at start-up before the port opens.
//!
//! The format is the herd's own: one AT line per record, exactly as servers exchange them,
//! ended by `\n` (`AT Campbell +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127
//! 1621464827.959498503`). Reading applies the newest-wins rule, so the file needs no order and
//! no checksums: a torn last line is the only damage a crash can do, and it is skipped
//! ([`replay`]). A few `HERD-` lines keep the records' versions, the history's epoch and the
//! neighbours' marks, so a restarted server resumes its links by difference (see `replay`).
//!
//! The loop calls [`Store::record`] for every record stored, [`Store::persist`] before
//! any socket write (one `write(2)` for all the records of a turn), [`Store::step`] every
//! turn (a compaction's budgeted work) and [`Store::tick`] every flush interval. Store
//! errors never stop the server: it keeps serving from memory, says so once, retries, and
//! when writes work again rewrites the whole store from memory (a compaction), so the
//! records it missed meanwhile are back on disk.

mod compact;
mod lock;
mod replay;
mod sync;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};

use crate::changes::{Epoch, Version};
use crate::config::{FsyncPolicy, StoreSettings};
use crate::escape::Escaped;
use crate::table::{ClientTable, Mark};

pub use compact::is_due as compaction_is_due;
pub use replay::{replay, Replayed, Skip};

use compact::{Compaction, Progress};
use lock::StoreLock;
use sync::Syncer;

/// Skipped lines logged one by one at start-up; past these, only their number.
const SKIPS_LOGGED: u64 = 10;
/// How long after a failed compaction the next may start.
const COMPACTION_RETRY: Duration = Duration::from_secs(10);

/// What the store reports about itself (for the operator).
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    /// The store file's length.
    pub bytes: u64,
    pub last_sync: Option<SystemTime>,
    /// Appends, syncs and compactions that failed.
    pub errors: u64,
    /// Records are not all on disk right now (a write or sync is failing, or a compaction is
    /// putting back what one missed).
    pub failing: bool,
    pub compactions: u64,
}

pub struct Store {
    path: PathBuf,
    temp_path: PathBuf,
    _lock: StoreLock,
    file: File,
    policy: FsyncPolicy,
    syncer: Option<Syncer>,
    /// Records of this turn not yet written.
    pending: Vec<u8>,
    /// The version a record appended now has in the file without a `HERD-VER` line before
    /// it; 0 when not known (after a failed write, a compaction).
    next_version: Version,
    /// The file's length up to its last complete record.
    file_len: u64,
    /// A write failed, perhaps part-way: cut the file back to `file_len` before the next.
    cut_back: bool,
    /// Some records are in memory only; a compaction puts them back.
    incomplete: bool,
    /// The error of the failing append or sync, while it fails (logged once).
    failing: Option<String>,
    /// The sync thread's failure has been logged.
    sync_failure_logged: bool,
    errors: u64,
    last_inline_sync: Option<SystemTime>,
    compaction: Option<(Compaction, Instant)>,
    /// A write to the finishing compaction's file failed: once it is in place, rewrite it.
    compaction_damaged: bool,
    compactions: u64,
    compact_min_bytes: u64,
    next_compaction_at: Option<Instant>,
}

/// A store opened at start-up, with what it held.
pub struct Opened {
    pub store: Store,
    pub clients: ClientTable,
}

fn shown(path: &Path) -> String {
    Escaped(path.as_os_str().as_encoded_bytes()).to_string()
}

impl Store {
    /// Opens `DIR/NAME.store` (locking it for this process), reads it into a client table and
    /// readies it for appending. `known_server` says which AT lines' servers the config knows.
    /// Returns `None` without a `store dir`. The error is one line for the operator.
    /// A store without an epoch (new, or written before epochs) starts the history `fresh`.
    pub fn open(
        settings: &StoreSettings,
        name: &str,
        fresh: Epoch,
        known_server: impl Fn(&[u8]) -> bool + Sync,
    ) -> Result<Option<Opened>, String> {
        let Some(dir) = &settings.dir else {
            return Ok(None);
        };
        fs::create_dir_all(dir).map_err(|e| format!("store dir {}: {e}", shown(dir)))?;
        let lock = StoreLock::acquire(&dir.join(format!("{name}.lock")))?;
        let path = dir.join(format!("{name}.store"));
        let temp_path = dir.join(format!("{name}.store.compacting"));
        if fs::remove_file(&temp_path).is_ok() {
            info!(
                "store {}: removed an unfinished compaction",
                shown(&temp_path)
            );
        }
        let started = Instant::now();
        let (replayed, clients, renumbered) = restore(&path, fresh, known_server)?;
        let mut file = open_for_append(&path, replayed.complete_bytes)?;
        let mut file_len = replayed.complete_bytes;
        if replayed.epoch != Some(clients.epoch()) {
            let line = format!("HERD-EPOCH {}\n", clients.epoch());
            file.write_all(line.as_bytes())
                .map_err(|e| format!("store {}: {e}", shown(&path)))?;
            file_len += line.len() as u64;
        }
        let syncer = match settings.fsync {
            FsyncPolicy::EverySec => Some(
                file.try_clone()
                    .and_then(Syncer::start)
                    .map_err(|e| format!("store {}: cannot start syncing: {e}", shown(&path)))?,
            ),
            FsyncPolicy::Always | FsyncPolicy::No => None,
        };
        info!(
            "store {}: {} clients from {} lines ({} skipped) in {} ms, fsync {}",
            shown(&path),
            clients.len(),
            replayed.lines,
            replayed.skipped,
            started.elapsed().as_millis(),
            settings.fsync.word()
        );
        let store = Store {
            path,
            temp_path,
            _lock: lock,
            file,
            policy: settings.fsync,
            syncer,
            pending: Vec::with_capacity(64 * 1024),
            next_version: if renumbered { 0 } else { replayed.next_version },
            file_len,
            cut_back: false,
            // Renumbered versions are in memory only until the store is rewritten.
            incomplete: renumbered,
            failing: None,
            sync_failure_logged: false,
            errors: 0,
            last_inline_sync: None,
            compaction: None,
            compaction_damaged: false,
            compactions: 0,
            compact_min_bytes: settings.compact_min_bytes,
            next_compaction_at: None,
        };
        Ok(Some(Opened { store, clients }))
    }

    /// Keeps `line` (a record just stored, at `version`) to be written before this turn's
    /// output. A `HERD-VER` line goes first where the version does not follow from the line
    /// before, and at the start of every write while a compaction runs (the new file gets the
    /// same bytes after records of other versions).
    pub fn record(&mut self, line: &[u8], version: Version) {
        let starts_write = self.pending.is_empty() && self.compaction.is_some();
        if version != self.next_version || starts_write {
            self.pending
                .extend_from_slice(format!("HERD-VER {version}\n").as_bytes());
        }
        self.pending.extend_from_slice(line);
        self.pending.push(b'\n');
        self.next_version = version + 1;
    }

    /// Keeps the neighbour's mark (this server holds its history up to it) after the records
    /// of this turn so far: they are on disk before it, so the mark never claims more.
    pub fn mark(&mut self, neighbour: &str, mark: Mark) {
        self.pending.extend_from_slice(
            format!("HERD-MARK {neighbour} {} {}\n", mark.epoch, mark.version).as_bytes(),
        );
    }

    /// Writes the records of this turn (and, with `fsync always`, syncs them) before any
    /// reply or flood that carries them goes out.
    pub fn persist(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some((compaction, _)) = &mut self.compaction {
            if let Err(e) = compaction.append(&self.pending) {
                self.compaction_failed(&e);
            }
        }
        self.append_pending();
        if self.policy == FsyncPolicy::Always {
            let synced = self.compaction.as_ref().map(|(c, _)| c.sync_if_finishing());
            if let Some(Err(e)) = synced {
                self.compaction_failed(&e);
            }
            match self.file.sync_data() {
                Ok(()) => self.last_inline_sync = Some(SystemTime::now()),
                Err(e) => {
                    // After a failed fsync the kernel may have dropped the pages it could not
                    // write: only a rewrite from memory is sure to put them back.
                    self.incomplete = true;
                    self.failed("sync", &e);
                }
            }
        }
        self.pending.clear();
    }

    fn append_pending(&mut self) {
        if self.cut_back {
            if let Err(e) = self.file.set_len(self.file_len) {
                return self.failed("append", &e);
            }
            self.cut_back = false;
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.file_len += self.pending.len() as u64;
                if self.failing.take().is_some() {
                    info!(
                        "store {}: writing again; rewriting it from memory to put back what \
                         it missed",
                        shown(&self.path)
                    );
                    self.next_compaction_at = None;
                }
            }
            Err(e) => {
                self.cut_back = true;
                self.incomplete = true;
                self.next_version = 0;
                self.failed("append", &e);
            }
        }
    }

    fn failed(&mut self, what: &str, error: &io::Error) {
        self.errors += 1;
        if self.failing.is_none() {
            warn!(
                "store {}: cannot {what}: {error}; serving from memory, retrying",
                shown(&self.path)
            );
            self.failing = Some(error.to_string());
        }
    }

    /// A compaction is copying records: the loop should come back at once.
    pub fn has_work(&self) -> bool {
        self.compaction
            .as_ref()
            .is_some_and(|(c, _)| c.is_copying())
    }

    /// A compaction's work for one turn, if one is running.
    pub fn step(&mut self, clients: &ClientTable) {
        let Some((compaction, started)) = &mut self.compaction else {
            return;
        };
        match compaction.step(clients, &self.path) {
            Ok(Progress::Working) => {}
            Ok(Progress::Replaced {
                bytes,
                dir_unsynced,
            }) => {
                let took = started.elapsed();
                let Some((compaction, _)) = self.compaction.take() else {
                    return;
                };
                let file = compaction.into_file();
                if let Some(syncer) = &self.syncer {
                    match file.try_clone() {
                        Ok(copy) => syncer.replace_file(copy),
                        Err(e) => self.failed("sync", &e),
                    }
                }
                self.file = file;
                self.file_len = bytes;
                self.next_version = 0;
                self.cut_back = false;
                self.incomplete = self.compaction_damaged;
                self.compaction_damaged = false;
                self.compactions += 1;
                info!(
                    "store {}: compacted to {bytes} bytes for {} clients in {} ms",
                    shown(&self.path),
                    clients.len(),
                    took.as_millis()
                );
                if let Some(e) = dir_unsynced {
                    warn!(
                        "store {}: compacted, but its directory could not be synced: {e}",
                        shown(&self.path)
                    );
                }
            }
            Err(e) => self.abandon_compaction(&e),
        }
    }

    /// A write to the new file failed. While records are still being copied, the compaction
    /// is given up; once the copy is done the thread may be renaming the file at this very
    /// moment, so it is seen through (the loop must learn which file is the store), and the
    /// records the new file may lack are put back by a rewrite from memory afterwards.
    fn compaction_failed(&mut self, error: &io::Error) {
        match &self.compaction {
            Some((compaction, _)) if compaction.is_copying() => self.abandon_compaction(error),
            Some(_) => {
                self.compaction_damaged = true;
                self.errors += 1;
                warn!(
                    "store {}: cannot write the compacted file: {error}; it will be rewritten",
                    shown(&self.temp_path)
                );
            }
            None => {}
        }
    }

    fn abandon_compaction(&mut self, error: &io::Error) {
        if let Some((compaction, _)) = self.compaction.take() {
            compaction.abandon();
            self.errors += 1;
            warn!(
                "store {}: compaction failed: {error}; the store file stays as it was",
                shown(&self.temp_path)
            );
            self.next_compaction_at = Some(Instant::now() + COMPACTION_RETRY);
        }
    }

    /// Every flush interval: notices the sync thread's failures and recoveries, and starts a
    /// compaction when the file has grown past its live records or missed some.
    pub fn tick(&mut self, clients: &ClientTable, now: Instant) {
        if let Some(syncer) = &self.syncer {
            let status = syncer.status();
            match (&status.failing, self.sync_failure_logged) {
                (Some(error), false) => {
                    warn!(
                        "store {}: cannot sync: {error}; retrying every second",
                        shown(&self.path)
                    );
                    self.sync_failure_logged = true;
                    self.incomplete = true;
                }
                (None, true) => {
                    info!("store {}: syncing again", shown(&self.path));
                    self.sync_failure_logged = false;
                }
                _ => {}
            }
        }
        if self.compaction.is_some() || self.next_compaction_at.is_some_and(|at| now < at) {
            return;
        }
        let live_bytes = clients.line_bytes() + clients.len() as u64;
        let due = compaction_is_due(self.file_len, live_bytes, self.compact_min_bytes);
        let repair = self.incomplete && self.failing.is_none() && !self.sync_failure_logged;
        if due || repair {
            match Compaction::start(&self.temp_path, clients) {
                Ok(compaction) => {
                    info!(
                        "store {}: compacting {} bytes ({} clients, {live_bytes} bytes live)",
                        shown(&self.path),
                        self.file_len,
                        clients.len()
                    );
                    self.compaction = Some((compaction, now));
                }
                Err(e) => {
                    self.errors += 1;
                    warn!(
                        "store {}: cannot start a compaction: {e}",
                        shown(&self.temp_path)
                    );
                    self.next_compaction_at = Some(now + COMPACTION_RETRY);
                }
            }
        }
    }

    /// At a clean stop: writes what is pending and, unless `fsync no`, syncs.
    pub fn close(&mut self) {
        self.persist();
        match self.policy {
            FsyncPolicy::EverySec | FsyncPolicy::Always => {
                if let Err(e) = self.file.sync_data() {
                    warn!("store {}: cannot sync at stop: {e}", shown(&self.path));
                }
            }
            FsyncPolicy::No => {}
        }
    }

    pub fn stats(&self) -> StoreStats {
        let synced = self.syncer.as_ref().map(Syncer::status);
        StoreStats {
            bytes: self.file_len,
            last_sync: synced
                .as_ref()
                .and_then(|s| s.last_sync)
                .or(self.last_inline_sync),
            errors: self.errors + synced.map_or(0, |s| s.errors),
            failing: self.failing.is_some() || self.incomplete || self.sync_failure_logged,
            compactions: self.compactions,
        }
    }
}

/// The client table read back from the store at `path`, its versions in order (renumbered
/// under `fresh` when records share one: true then) and each neighbour's mark set, with what
/// the reading found.
fn restore(
    path: &Path,
    fresh: Epoch,
    known_server: impl Fn(&[u8]) -> bool + Sync,
) -> Result<(Replayed, ClientTable, bool), String> {
    let (replayed, mut clients) = read_back(path, known_server)?;
    let renumbered = clients.finish_restore(replayed.epoch.unwrap_or(fresh), fresh);
    if renumbered {
        warn!(
            "store {}: records share versions (two stores in one file?); renumbered as a new \
             history, and neighbours will send everything once",
            shown(path)
        );
    }
    for (neighbour, mark) in &replayed.marks {
        clients.set_mark(neighbour, *mark);
    }
    Ok((replayed, clients, renumbered))
}

/// The records of the store file at `path` (none when there is no file yet), with what the
/// replay found: each skipped line logged (the first [`SKIPS_LOGGED`]), then a count.
fn read_back(
    path: &Path,
    known_server: impl Fn(&[u8]) -> bool + Sync,
) -> Result<(Replayed, ClientTable), String> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let nothing = Replayed {
                next_version: 1,
                ..Replayed::default()
            };
            return Ok((nothing, ClientTable::new()));
        }
        Err(e) => return Err(format!("store {}: {e}", shown(path))),
    };
    // An index for every line the file can hold (about 80 bytes each): one allocation
    // instead of a re-hash of every client at each doubling.
    let lines = file.metadata().map_or(0, |m| m.len() / 80);
    let mut clients = ClientTable::with_capacity(lines.min(1 << 26) as usize);
    let mut skips = 0;
    let replayed = replay(file, known_server, &mut clients, |line, why, text| {
        skips += 1;
        if skips <= SKIPS_LOGGED {
            let why = match why {
                Skip::Corrupt => "not a valid AT line",
                Skip::UnknownServer => "names a server not in the config",
                Skip::Truncated => "cut short (the last write before a crash)",
            };
            warn!(
                "store {}:{line}: skipped, {why}: {}",
                shown(path),
                Escaped(text)
            );
        }
    })
    .map_err(|e| format!("store {}: {e}", shown(path)))?;
    if replayed.skipped > SKIPS_LOGGED {
        warn!(
            "store {}: {} lines skipped in all",
            shown(path),
            replayed.skipped
        );
    }
    Ok((replayed, clients))
}

/// The store file opened for appending (made, and its directory synced, when new), cut back
/// to its `complete_bytes`: a torn last record would otherwise run into the next append.
fn open_for_append(path: &Path, complete_bytes: u64) -> Result<File, String> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("store {}: {e}", shown(path)))?;
    let on_disk = file.metadata().map(|m| m.len()).unwrap_or(0);
    if on_disk > complete_bytes {
        file.set_len(complete_bytes)
            .map_err(|e| format!("store {}: cannot cut its torn end: {e}", shown(path)))?;
    }
    if !existed {
        compact::sync_dir(path).map_err(|e| format!("store {}: {e}", shown(path)))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AtLine, AtRecord};
    use crate::table::Source;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(label: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("herd-store-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Dir(dir)
    }

    fn settings(dir: &Path) -> StoreSettings {
        StoreSettings {
            dir: Some(dir.to_path_buf()),
            fsync: FsyncPolicy::No,
            compact_min_bytes: 4096,
        }
    }

    fn open(settings: &StoreSettings) -> Opened {
        Store::open(settings, "A", Epoch(7), |s| s == b"A")
            .unwrap()
            .unwrap()
    }

    /// Stores the update in the table and hands it to the store, as the loop does.
    fn record(store: &mut Store, table: &mut ClientTable, client: &str, secs: u64) {
        let line = format!("AT A +0.000000000 {client} +1+1 {secs}");
        let at = AtLine::parse(line.as_bytes()).unwrap();
        let record = AtRecord::from_parsed(&at, line.as_bytes());
        if let crate::table::Applied::Stored(i) = table.apply(&record, Source::Client) {
            store.record(table.line_at(i).unwrap(), table.version_at(i));
        }
    }

    #[test]
    fn records_persisted_are_read_back_by_the_next_process() {
        let dir = temp_dir("reopen");
        let settings = settings(&dir.0);
        let Opened {
            mut store,
            mut clients,
        } = open(&settings);
        record(&mut store, &mut clients, "kiwi", 1);
        record(&mut store, &mut clients, "pear", 2);
        record(&mut store, &mut clients, "kiwi", 3);
        store.persist();
        assert_eq!(
            store.stats().bytes,
            fs::metadata(&store.path).unwrap().len()
        );
        drop(store);
        let reopened = open(&settings);
        assert_eq!(reopened.clients.len(), 2);
        assert_eq!(
            reopened.clients.line_of(b"kiwi"),
            Some(&b"AT A +0.000000000 kiwi +1+1 3"[..])
        );
    }

    #[test]
    fn a_compaction_keeps_the_newest_record_of_every_client_and_what_arrives_meanwhile() {
        let dir = temp_dir("compact");
        let settings = settings(&dir.0);
        let Opened {
            mut store,
            mut clients,
        } = open(&settings);
        for secs in 1..=300 {
            for client in ["kiwi", "pear", "plum"] {
                record(&mut store, &mut clients, client, secs);
            }
        }
        store.persist();
        let before = store.stats().bytes;
        store.tick(&clients, Instant::now());
        assert!(
            store.compaction.is_some(),
            "{before} bytes for 3 clients is due"
        );
        // Records stored while it runs go to both files.
        record(&mut store, &mut clients, "fig", 1);
        record(&mut store, &mut clients, "kiwi", 301);
        store.persist();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.compaction.is_some() {
            assert!(Instant::now() < deadline, "the compaction did not finish");
            store.step(&clients);
            std::thread::sleep(Duration::from_millis(1));
        }
        let after = store.stats();
        assert_eq!(after.compactions, 1);
        let text = fs::read_to_string(&store.path).unwrap();
        assert_eq!(after.bytes, text.len() as u64);
        assert!(
            after.bytes < before / 50,
            "{} bytes after, {before} before",
            after.bytes
        );
        assert!(!store.temp_path.exists());
        // Appends go to the new file from now on.
        record(&mut store, &mut clients, "pear", 302);
        store.persist();
        drop(store);
        let reopened = open(&settings);
        for (client, line) in [
            ("kiwi", "AT A +0.000000000 kiwi +1+1 301"),
            ("pear", "AT A +0.000000000 pear +1+1 302"),
            ("plum", "AT A +0.000000000 plum +1+1 300"),
            ("fig", "AT A +0.000000000 fig +1+1 1"),
        ] {
            assert_eq!(
                reopened.clients.line_of(client.as_bytes()),
                Some(line.as_bytes()),
                "{client}"
            );
        }
    }

    #[test]
    fn a_torn_tail_is_cut_off_so_the_next_record_starts_its_own_line() {
        let dir = temp_dir("torn");
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(
            dir.0.join("A.store"),
            "AT A +0.000000000 kiwi +1+1 1\nAT A +0.000000000 pear +1+1 1",
        )
        .unwrap();
        let settings = settings(&dir.0);
        let Opened {
            mut store,
            mut clients,
        } = open(&settings);
        assert_eq!(clients.len(), 1);
        record(&mut store, &mut clients, "plum", 5);
        store.persist();
        let text = fs::read_to_string(dir.0.join("A.store")).unwrap();
        assert_eq!(
            text,
            "AT A +0.000000000 kiwi +1+1 1\nHERD-EPOCH 0000000000000007\n\
             AT A +0.000000000 plum +1+1 5\n",
            "a store without an epoch gets one (and plum's version follows kiwi's)"
        );
    }
}
