//! A tiny file system for the tests of a full disk: a tmpfs of a given size on a fresh
//! directory, unmounted on drop (also when the test panics). Mounting needs root; where it is
//! not allowed, [`Tmpfs::mount`] says on stderr that the test is skipped and why, and returns
//! `None`; the test returns.
//! Declare it before the server that uses it, so the server is gone when it unmounts.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::harness::{skip_test, TempDir};

pub struct Tmpfs {
    pub path: PathBuf,
    _parent: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`64k`, `1m`).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let parent = TempDir::new("tmpfs").expect("a temporary directory");
        let path = parent.path().join("tiny");
        fs::create_dir(&path).expect("a mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs {
                path,
                _parent: parent,
            }),
            Ok(out) => {
                let said = String::from_utf8_lossy(&out.stderr);
                skip_test(&format!(
                    "it cannot mount a tmpfs at {} (mounting needs root): {}",
                    path.display(),
                    said.lines().next().unwrap_or("").trim()
                ));
                None
            }
            Err(e) => {
                skip_test(&format!("it cannot run mount: {e}"));
                None
            }
        }
    }

    /// Grows (or shrinks) it to `size`.
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "remount {} to {size}",
            self.path.display()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process that outlived its test): detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
