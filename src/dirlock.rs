//! Advisory locks on a backup directory: commands that change it (`backup`, `prune`) hold an
//! exclusive `flock` on a hidden lock file in it, commands that only read it (`restore`,
//! `verify` of a directory) a shared one. A conflicting lock is refused at once (never
//! waited for), naming the directory and the pid of the last holder written in the file.
//!
//! The lock file is opened without following a symbolic link and must be a regular file. It
//! is never removed while other runs may use it, except by [`DirLock::remove_with_dir`]; a
//! lock taken on a file that was removed or replaced meanwhile is taken again on the new one.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation, OFlags};

use crate::error::{Error, Result};

/// Name of the lock file in a backup directory (hidden: chain discovery ignores it).
pub const LOCK_NAME: &str = ".rbddiff.lock";

/// A held lock on a directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    /// `None` for a shared lock on a directory where no lock file exists and none can be
    /// created (nothing can change that directory through this user either).
    file: Option<File>,
}

fn open(path: &Path, write: bool) -> io::Result<File> {
    // O_NONBLOCK: a FIFO planted at the path must not block the open.
    let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .mode(0o644)
        .custom_flags(flags.bits() as i32)
        .open(path)
}

fn is_read_only(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        || e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error())
}

/// The pid recorded in a lock file (its first line), if any.
fn holder(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.take(64).read_to_string(&mut s).ok()?;
    s.lines().next()?.trim().parse().ok()
}

/// Locks `dir`: exclusively (to change it) or shared (to read it).
///
/// # Errors
/// Another run holds a conflicting lock (the message names `dir` and the holder's pid); the
/// lock file cannot be created (for an exclusive lock: the directory is not writable), is a
/// symbolic link or not a regular file.
pub fn lock(dir: &Path, exclusive: bool) -> Result<DirLock> {
    let path = dir.join(LOCK_NAME);
    let err = |e: io::Error| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            Error::invalid("the lock file is a symbolic link (not followed)").with_file(&path)
        } else {
            Error::from(e).with_file(&path)
        }
    };
    for _ in 0..100 {
        let (mut f, writable) = match open(&path, true) {
            Ok(f) => (f, true),
            Err(e) if !exclusive && is_read_only(&e) => match open(&path, false) {
                Ok(f) => (f, false),
                Err(e2) if e2.kind() == io::ErrorKind::NotFound => {
                    return Ok(DirLock { path, file: None })
                }
                Err(e2) => return Err(err(e2)),
            },
            Err(e) => return Err(err(e)),
        };
        let meta = f.metadata().map_err(err)?;
        if !meta.is_file() {
            return Err(Error::invalid("the lock file is not a regular file").with_file(&path));
        }
        let op = if exclusive {
            FlockOperation::NonBlockingLockExclusive
        } else {
            FlockOperation::NonBlockingLockShared
        };
        if let Err(e) = flock(&f, op) {
            if e != rustix::io::Errno::WOULDBLOCK {
                return Err(err(e.into()));
            }
            let who = holder(&mut f).map_or(String::new(), |p| format!(" (pid {p})"));
            return Err(Error::invalid(format!(
                "{} is in use by another rbddiff run{who}: try again when it has finished",
                dir.display()
            ))
            .with_file(dir));
        }
        // The file may have been removed (or replaced) between the open and the lock.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => {}
            _ => continue,
        }
        if writable {
            // For the message of a refused run only: failures do not matter.
            let _ = f
                .set_len(0)
                .and_then(|()| f.rewind())
                .and_then(|()| writeln!(f, "{}", std::process::id()));
        }
        return Ok(DirLock {
            path,
            file: Some(f),
        });
    }
    Err(Error::invalid("the lock file keeps being replaced").with_file(&path))
}

impl DirLock {
    /// Removes the lock file and then the directory, if it holds nothing else (for a run that
    /// created the directory and failed). The lock is held until the file is gone.
    pub fn remove_with_dir(self) {
        if self.file.is_some() && std::fs::remove_file(&self.path).is_ok() {
            if let Some(d) = self.path.parent() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}
