//! `store fsync everysec`: a thread that syncs the store's file to the device once a second,
//! so the loop never waits for the disk. It syncs a duplicate of the descriptor it is handed,
//! so a compaction can hand it the new file at any time.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const INTERVAL: Duration = Duration::from_secs(1);

/// What the sync thread last saw, for the loop to log and report.
#[derive(Default)]
struct Shared {
    file: Mutex<Option<File>>,
    /// Milliseconds since the epoch of the last sync that worked; 0 before the first.
    last_sync_ms: AtomicU64,
    errors: AtomicU64,
    /// The error of the last sync, while syncs fail.
    failing: Mutex<Option<String>>,
}

pub struct Syncer {
    shared: Arc<Shared>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The state of syncing, as of the last attempt.
pub struct SyncStatus {
    pub last_sync: Option<SystemTime>,
    pub errors: u64,
    pub failing: Option<String>,
}

impl Syncer {
    pub fn start(file: File) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            file: Mutex::new(Some(file)),
            ..Shared::default()
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("store-sync".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                // Any message, or the loop's end dropping the sender, stops the thread.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    sync_once(&thread_shared);
                }
            })?;
        Ok(Syncer {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// From now on, sync `file` (after a compaction replaced the store's file).
    pub fn replace_file(&self, file: File) {
        *lock(&self.shared.file) = Some(file);
    }

    pub fn status(&self) -> SyncStatus {
        let ms = self.shared.last_sync_ms.load(Ordering::Relaxed);
        SyncStatus {
            last_sync: (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms)),
            errors: self.shared.errors.load(Ordering::Relaxed),
            failing: lock(&self.shared.failing).clone(),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sync_once(shared: &Shared) {
    // Duplicate under the lock, sync outside it: the loop never waits for a sync to swap.
    let file = lock(&shared.file).as_ref().map(File::try_clone);
    let result = match file {
        None => return,
        Some(Ok(file)) => file.sync_data(),
        Some(Err(e)) => Err(e),
    };
    match result {
        Ok(()) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            shared
                .last_sync_ms
                .store(now.as_millis() as u64, Ordering::Relaxed);
            *lock(&shared.failing) = None;
        }
        Err(e) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            *lock(&shared.failing) = Some(e.to_string());
        }
    }
}
