//! One process per store: an exclusive `flock` on `DIR/NAME.lock`, held while the process
//! lives. The kernel lets go of it when the process ends, however it ends (`kill -9`
//! included), so a crash never leaves a stale lock behind. The holder writes its pid into the
//! file, so a second process can say who has it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::escape::Escaped;

pub struct StoreLock {
    /// Held open: closing it would release the lock.
    _file: File,
}

impl StoreLock {
    /// Takes the lock at `path`, or says which process holds it.
    pub fn acquire(path: &Path) -> Result<StoreLock, String> {
        let shown = || Escaped(path.as_os_str().as_encoded_bytes()).to_string();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("store lock {}: {e}", shown()))?;
        // SAFETY: flock takes a descriptor we own and no pointers.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {}", Escaped(holder.as_bytes()))
                };
                return Err(format!(
                    "store {} is locked by {who}: this server is already running on this store",
                    shown()
                ));
            }
            return Err(format!("store lock {}: {error}", shown()));
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(|e| format!("store lock {}: {e}", shown()))?;
        Ok(StoreLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("herd-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("A.lock");
        let first = StoreLock::acquire(&path).unwrap();
        // flock locks belong to the open file, so a second open in this process conflicts
        // as a second process would.
        let refused = StoreLock::acquire(&path).err().unwrap();
        assert!(refused.contains("is locked by process"), "{refused}");
        assert!(
            refused.contains(&std::process::id().to_string()),
            "{refused}"
        );
        drop(first);
        assert!(StoreLock::acquire(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
