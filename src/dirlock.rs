//! Advisory locks on an archive (a backup directory): commands that change it (`backup`,
//! `prune`, `verify --write-sums` of a directory) hold an exclusive `flock` on the hidden
//! lock file `DIR/.rbddiff.lock` for their whole run, commands that only read it (`restore`,
//! `list`, `status`, `verify DIR`, `prune --dry-run`, and `serve` of an archive for the
//! server's lifetime) a shared one.
//!
//! A conflicting lock is refused at once (after retrying for 100 ms: readers emptying the
//! records hold the lock exclusively for a moment, see below), or, with a wait, polled for
//! (non-blocking attempts with short sleeps) until it is free or the wait is over. The refusal
//! ([`crate::ErrorKind::Locked`]) names the archive and its holders:
//! `archive DIR locked by PID 4711 (backup, since 2026-12-03T14:00:00Z)`.
//!
//! # The lock file's records
//!
//! The lock file holds one line per holder, `PID MODE COMMAND SINCE` (`MODE` `exclusive` or
//! `shared`, `SINCE` the UTC time the lock was taken, RFC 3339):
//!
//! ```text
//! 4711 shared restore 2026-12-03T14:00:00Z
//! 4712 shared list 2026-12-03T14:00:02Z
//! ```
//!
//! An exclusive holder empties the file and writes its line; a shared holder appends its
//! line (`O_APPEND`: holders that append at once never overwrite each other), after emptying
//! the file when it is the only holder (it briefly holds the lock exclusively then). The
//! last holder to leave empties the file again. A line can outlive its holder only when the
//! holder was killed or left while other readers held the lock: a refusal therefore names
//! only the holders whose process exists, and lines that are not well-formed are ignored
//! (the file is read bounded). With no such line (a holder in another pid namespace, or one
//! that has not written its line yet) the refusal says so.
//!
//! The lock file is opened without following a symbolic link and must be a regular file. It
//! is never removed while other runs may use it, except by [`DirLock::remove_with_dir`]; a
//! lock taken on a file that was removed or replaced meanwhile is taken again on the new one.
//! In a directory that cannot be written a shared lock is taken on an existing lock file
//! opened read-only (and records nothing), or, when there is none, not at all (nothing can
//! change that directory through this user either).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation, OFlags};

use crate::error::{Error, ErrorKind, Result};

/// Name of the lock file in a backup directory (hidden: chain discovery ignores it).
pub const LOCK_NAME: &str = ".rbddiff.lock";

/// How long a conflict is tried again without a wait (see [`lock`]).
const GRACE: Duration = Duration::from_millis(100);

/// The most bytes of a lock file read for its records.
const MAX_RECORD_BYTES: u64 = 64 << 10;

/// The command a lock is held for, as recorded in the lock file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `backup`.
    Backup,
    /// `prune`.
    Prune,
    /// `restore`.
    Restore,
    /// `list`.
    List,
    /// `status`.
    Status,
    /// `verify` of a directory.
    Verify,
    /// `serve` of an archive.
    Serve,
    /// `replay` from an archive.
    Replay,
    /// `sync --archive`.
    Sync,
    /// `copy` (of its source, shared; of its destination, exclusive).
    Copy,
}

impl Command {
    const ALL: [Command; 10] = [
        Command::Backup,
        Command::Prune,
        Command::Restore,
        Command::List,
        Command::Status,
        Command::Verify,
        Command::Serve,
        Command::Replay,
        Command::Sync,
        Command::Copy,
    ];

    /// The command's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Backup => "backup",
            Command::Prune => "prune",
            Command::Restore => "restore",
            Command::List => "list",
            Command::Status => "status",
            Command::Verify => "verify",
            Command::Serve => "serve",
            Command::Replay => "replay",
            Command::Sync => "sync",
            Command::Copy => "copy",
        }
    }

    fn parse(s: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One holder's record in a lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// True for an exclusive lock.
    pub exclusive: bool,
    /// The command it runs.
    pub command: Command,
    /// When it took the lock: UTC, RFC 3339 (`2026-12-03T14:00:00Z`).
    pub since: String,
}

impl Holder {
    /// The record's line (without the newline).
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.pid,
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            self.command.as_str(),
            self.since
        )
    }

    /// Parses a record's line; `None` for anything but a well-formed one.
    pub fn parse(line: &str) -> Option<Holder> {
        let mut w = line.split(' ');
        let pid = w.next()?;
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let exclusive = match w.next()? {
            "exclusive" => true,
            "shared" => false,
            _ => return None,
        };
        let command = Command::parse(w.next()?)?;
        let since = w.next()?;
        let shape = since.len() == 20
            && since.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b'T',
                13 | 16 => b == b':',
                19 => b == b'Z',
                _ => b.is_ascii_digit(),
            });
        if !shape || w.next().is_some() {
            return None;
        }
        Some(Holder {
            pid: pid.parse().ok().filter(|&p| p > 0)?,
            exclusive,
            command,
            since: since.to_string(),
        })
    }
}

/// A held lock on a directory; released when dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    /// `None` for a shared lock on a directory where no lock file exists and none can be
    /// created (nothing can change that directory through this user either).
    file: Option<File>,
    /// The lock file was opened for writing (the holder's record is in it).
    writable: bool,
    exclusive: bool,
}

fn open(path: &Path, write: bool) -> io::Result<File> {
    // O_NONBLOCK: a FIFO planted at the path must not block the open.
    let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    std::fs::OpenOptions::new()
        .read(true)
        .append(write)
        .create(write)
        .mode(0o644)
        .custom_flags(flags.bits() as i32)
        .open(path)
}

fn is_read_only(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
        || e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error())
}

/// Whether process `pid` exists (as far as this process can tell).
fn alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// The well-formed records of the lock file `f` (bounded read), live or not.
fn records(f: &mut File) -> Vec<Holder> {
    let mut buf = Vec::new();
    if f.rewind().is_err() || f.take(MAX_RECORD_BYTES).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(Holder::parse)
        .collect()
}

/// The recorded holders of the lock on `dir` whose process exists (none when there is no
/// lock file or it cannot be read). A holder may have left since.
pub fn holders(dir: &Path) -> Vec<Holder> {
    match open(&dir.join(LOCK_NAME), false) {
        Ok(mut f) if f.metadata().is_ok_and(|m| m.is_file()) => live(records(&mut f)),
        _ => Vec::new(),
    }
}

fn live(mut v: Vec<Holder>) -> Vec<Holder> {
    v.retain(|h| alive(h.pid));
    v.dedup();
    v
}

/// The message of a refused lock on `dir` held by `holders`.
pub fn locked_message(dir: &Path, holders: &[Holder]) -> String {
    if holders.is_empty() {
        return format!(
            "archive {} locked by another run (it has not recorded itself in {LOCK_NAME})",
            dir.display()
        );
    }
    let who: Vec<String> = holders
        .iter()
        .map(|h| format!("PID {} ({}, since {})", h.pid, h.command.as_str(), h.since))
        .collect();
    format!("archive {} locked by {}", dir.display(), who.join(", "))
}

/// `d` as `200ms`, `30s`, `1m30s`.
fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    let mut out = String::new();
    for (unit, n, of) in [("h", 3600, u64::MAX), ("m", 60, 60), ("s", 1, 60)] {
        if s / n % of > 0 {
            out.push_str(&format!("{}{unit}", s / n % of));
        }
    }
    out
}

/// What one attempt on the lock file gave.
enum Attempt {
    Held(DirLock),
    /// Someone holds a conflicting lock; the open file, to read the records from.
    Busy(File),
    /// The file was replaced between the open and the lock: try again at once.
    Replaced,
}

/// Locks `dir` for `command`: exclusively (to change it) or shared (to read it). With
/// `wait`, a conflicting lock is waited for up to that long (polled: non-blocking attempts
/// with sleeps of 2 ms growing to 250 ms); without, or once the wait is over, it is refused
/// (a conflict is always tried again for 100 ms: a reader emptying the records holds the
/// lock exclusively for a moment).
///
/// # Errors
/// Another run holds a conflicting lock ([`ErrorKind::Locked`]: the message names `dir` and
/// the holders, see [`locked_message`]); the lock file cannot be created (for an exclusive
/// lock: the directory is not writable), is a symbolic link or not a regular file.
pub fn lock(
    dir: &Path,
    exclusive: bool,
    command: Command,
    wait: Option<Duration>,
) -> Result<DirLock> {
    let path = dir.join(LOCK_NAME);
    let start = Instant::now();
    let asked = wait.unwrap_or_default();
    // Readers hold the lock exclusively for a moment (to empty the records): a conflict is
    // tried again for a little while before it counts.
    let wait = asked.max(GRACE);
    let mut nap = Duration::from_millis(2);
    let mut replaced = 0;
    loop {
        match attempt(&path, exclusive, command)? {
            Attempt::Held(l) => return Ok(l),
            Attempt::Replaced => {
                replaced += 1;
                if replaced > 100 {
                    return Err(
                        Error::invalid("the lock file keeps being replaced").with_file(&path)
                    );
                }
            }
            Attempt::Busy(mut f) => {
                let left = wait.saturating_sub(start.elapsed());
                if left.is_zero() {
                    let mut msg = locked_message(dir, &live(records(&mut f)));
                    if !asked.is_zero() {
                        msg.push_str(&format!("; gave up after waiting {}", show(asked)));
                    }
                    return Err(Error::new(ErrorKind::Locked(msg)));
                }
                drop(f);
                std::thread::sleep(nap.min(left));
                nap = (nap * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// One non-blocking attempt at the lock on `path`.
fn attempt(path: &Path, exclusive: bool, command: Command) -> Result<Attempt> {
    let err = |e: io::Error| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            Error::invalid("the lock file is a symbolic link (not followed)").with_file(path)
        } else {
            Error::from(e).with_file(path)
        }
    };
    let (mut f, writable) = match open(path, true) {
        Ok(f) => (f, true),
        Err(e) if !exclusive && is_read_only(&e) => match open(path, false) {
            Ok(f) => (f, false),
            Err(e2) if e2.kind() == io::ErrorKind::NotFound => {
                return Ok(Attempt::Held(DirLock {
                    path: path.to_path_buf(),
                    file: None,
                    writable: false,
                    exclusive,
                }))
            }
            Err(e2) => return Err(err(e2)),
        },
        Err(e) => return Err(err(e)),
    };
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(Error::invalid("the lock file is not a regular file").with_file(path));
    }
    let busy = |e: rustix::io::Errno| {
        if e == rustix::io::Errno::WOULDBLOCK {
            Ok(())
        } else {
            Err(err(e.into()))
        }
    };
    // A reader that is the only holder clears the records of holders gone (as an
    // exclusive holder does), then holds the lock shared.
    if exclusive {
        if let Err(e) = flock(&f, FlockOperation::NonBlockingLockExclusive) {
            busy(e)?;
            return Ok(Attempt::Busy(f));
        }
    } else {
        if writable && flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
            // Not atomic: a writer may take the lock in between, and the shared lock fails.
            let _ = f.set_len(0);
        }
        if let Err(e) = flock(&f, FlockOperation::NonBlockingLockShared) {
            busy(e)?;
            return Ok(Attempt::Busy(f));
        }
    }
    // The file may have been removed (or replaced) between the open and the lock.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => {}
        _ => return Ok(Attempt::Replaced),
    }
    if writable {
        let h = Holder {
            pid: std::process::id(),
            exclusive,
            command,
            since: crate::utc::rfc3339(crate::utc::now()),
        };
        // For the message of a refused run only: failures do not matter. One write of the
        // whole line, appended (O_APPEND): concurrent readers' lines never overlap.
        if exclusive {
            let _ = f.set_len(0);
        }
        let _ = f.write_all(format!("{}\n", h.line()).as_bytes());
    }
    Ok(Attempt::Held(DirLock {
        path: path.to_path_buf(),
        file: Some(f),
        writable,
        exclusive,
    }))
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

impl Drop for DirLock {
    /// The last holder to leave empties the records (a reader finds out by taking the lock
    /// exclusively, which only succeeds when no one else holds it).
    fn drop(&mut self) {
        if let Some(f) = self.file.as_ref().filter(|_| self.writable) {
            if self.exclusive || flock(f, FlockOperation::NonBlockingLockExclusive).is_ok() {
                let _ = f.set_len(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_print() {
        let h = Holder {
            pid: 4711,
            exclusive: true,
            command: Command::Backup,
            since: "2026-12-03T14:00:00Z".into(),
        };
        assert_eq!(h.line(), "4711 exclusive backup 2026-12-03T14:00:00Z");
        assert_eq!(Holder::parse(&h.line()), Some(h.clone()));
        for bad in [
            "",
            "4711",
            "0 shared list 2026-12-03T14:00:00Z",
            "-1 shared list 2026-12-03T14:00:00Z",
            "4711 both list 2026-12-03T14:00:00Z",
            "4711 shared rm 2026-12-03T14:00:00Z",
            "4711 shared list 2026-12-03 14:00:00Z",
            "4711 shared list 2026-12-03T14:00:00Z extra",
            "4711 shared list 2026-12-03T14:00:00\u{1b}",
            "99999999999 shared list 2026-12-03T14:00:00Z",
        ] {
            assert_eq!(Holder::parse(bad), None, "{bad:?}");
        }
        let msg = locked_message(Path::new("/b"), &[h]);
        assert_eq!(
            msg,
            "archive /b locked by PID 4711 (backup, since 2026-12-03T14:00:00Z)"
        );
    }

    #[test]
    fn durations_are_shown_short() {
        assert_eq!(show(Duration::from_secs(30)), "30s");
        assert_eq!(show(Duration::from_secs(300)), "5m");
        assert_eq!(show(Duration::from_secs(90)), "1m30s");
        assert_eq!(show(Duration::from_secs(5400)), "1h30m");
        assert_eq!(show(Duration::from_millis(200)), "200ms");
    }
}
