//! The lock of an archive in a [`Store`] without a file system (object storage): the lock
//! object `.rbddiff-lock.json`, created with a conditional put (`If-None-Match: *`: only one
//! of two runs creating it at once succeeds), names its owner (host, pid, command), the
//! time it was taken and when its lease expires:
//!
//! ```json
//! {"host": "backup1", "pid": 4711, "command": "backup", "since": 1767225600,
//!  "expires": 1767225720, "token": "6f1c…"}
//! ```
//!
//! The holder renews the lease (rewrites `expires`) every third of it while it runs
//! ([`with_lock`]) and removes the object when done. A lock whose lease has expired (its
//! holder was killed, or lost its connection for longer than the lease) is broken by the
//! next run; a lock that has not expired is broken only when asked (`--break-lock`). Runs
//! that change the archive (backup, prune, copy into it) take the lock; runs that only read
//! committed objects (restore, list, status, verify) do not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::store::Store;
use crate::error::{Error, ErrorKind, Result};

/// The lock object's name.
pub const NAME: &str = ".rbddiff-lock.json";
/// The default lease.
pub const LEASE: Duration = Duration::from_secs(120);

/// What the lock object holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The holder's host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The command it runs.
    pub command: String,
    /// When it took the lock, seconds since the epoch.
    pub since: u64,
    /// When its lease expires unless renewed, seconds since the epoch.
    pub expires: u64,
    /// A random token telling this holder from any other.
    pub token: String,
}

/// How to take the lock.
#[derive(Clone, Debug)]
pub struct LockOptions {
    /// The command recorded.
    pub command: String,
    /// The lease (default [`LEASE`]).
    pub lease: Duration,
    /// Wait up to this long for a lock held by another run (none: refuse at once).
    pub wait: Option<Duration>,
    /// Break a lock whose lease has not expired.
    pub break_lock: bool,
}

impl LockOptions {
    /// The options for `command`, with the default lease.
    pub fn new(command: &str, wait: Option<Duration>, break_lock: bool) -> Self {
        LockOptions {
            command: command.to_string(),
            lease: LEASE,
            wait,
            break_lock,
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "?".into())
}

/// The lock object of `store`, if there is one (a damaged one reads as expired).
///
/// # Errors
/// The store cannot be read.
pub fn holder(store: &dyn Store) -> Result<Option<Owner>> {
    Ok(store.read_small(NAME, 64 << 10)?.map(|b| {
        serde_json::from_slice(&b).unwrap_or(Owner {
            host: "?".into(),
            pid: 0,
            command: "?".into(),
            since: 0,
            expires: 0,
            token: String::new(),
        })
    }))
}

fn describe(store: &dyn Store, o: &Owner) -> String {
    format!(
        "archive {} locked by {} on {} (pid {}, since {}, lease until {})",
        store.url(),
        o.command,
        o.host,
        o.pid,
        super::names::stamp(o.since),
        super::names::stamp(o.expires)
    )
}

/// Takes the lock (see the module docs): returns the owner record written, and the lock
/// broken on the way, if any.
///
/// # Errors
/// Another run holds the lock (past the wait; [`ErrorKind::Locked`], naming it); the store
/// fails.
pub fn acquire(store: &dyn Store, opts: &LockOptions) -> Result<(Owner, Option<Owner>)> {
    let start = Instant::now();
    let mut broken = None;
    loop {
        let t = now();
        let me = Owner {
            host: host(),
            pid: std::process::id(),
            command: opts.command.clone(),
            since: t,
            expires: t + opts.lease.as_secs(),
            token: super::catalog::new_id()?,
        };
        let text = serde_json::to_vec(&me).map_err(|e| Error::invalid(e.to_string()))?;
        if store.create_if_absent(NAME, &text)? {
            return Ok((me, broken));
        }
        let Some(other) = holder(store)? else {
            continue; // Removed meanwhile: try again at once.
        };
        if other.expires < t || opts.break_lock {
            // Only the lock seen is removed: a new one taken meanwhile stays.
            if holder(store)?.as_ref() == Some(&other) {
                store.delete(NAME)?;
                broken = Some(other);
            }
            continue;
        }
        match opts.wait {
            Some(w) if start.elapsed() < w => std::thread::sleep(Duration::from_millis(500)),
            _ => return Err(Error::new(ErrorKind::Locked(describe(store, &other)))),
        }
    }
}

/// Renews the lease of `me`.
///
/// # Errors
/// The lock is no longer `me`'s (it was broken), or the store fails.
pub fn renew(store: &dyn Store, me: &mut Owner, lease: Duration) -> Result<()> {
    match holder(store)? {
        Some(o) if o.token == me.token => {}
        other => {
            return Err(Error::new(ErrorKind::Locked(format!(
                "the lock of archive {} was broken{}",
                store.url(),
                other.map_or(String::new(), |o| format!("; {}", describe(store, &o)))
            ))))
        }
    }
    me.expires = now() + lease.as_secs();
    let text = serde_json::to_vec(&*me).map_err(|e| Error::invalid(e.to_string()))?;
    store.put_small(NAME, &text)
}

/// Removes the lock when it is still `me`'s.
///
/// # Errors
/// The store fails.
pub fn release(store: &dyn Store, me: &Owner) -> Result<()> {
    if holder(store)?.is_some_and(|o| o.token == me.token) {
        store.delete(NAME)?;
    }
    Ok(())
}

/// Runs `f` holding the lock of `store`, renewing its lease in the background every third
/// of it, and releases it afterwards. `f` is told of a lock broken to take it.
///
/// # Errors
/// As [`acquire`]; what `f` returns; the lease could not be renewed (another run broke the
/// lock: the work of `f` is done, but the archive may have been changed meanwhile).
pub fn with_lock<T>(
    store: &dyn Store,
    opts: &LockOptions,
    f: impl FnOnce(Option<&Owner>) -> Result<T>,
) -> Result<T> {
    let (mut me, broken) = acquire(store, opts)?;
    let stop_flag = AtomicBool::new(false);
    let stop = &stop_flag;
    let (r, lost) = std::thread::scope(|s| {
        let renewer = s.spawn(move || {
            let every = (opts.lease / 3).max(Duration::from_millis(100));
            let mut last = Instant::now();
            let mut err = None;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50).min(every));
                if last.elapsed() >= every {
                    last = Instant::now();
                    if let Err(e) = renew(store, &mut me, opts.lease) {
                        err = Some(e);
                        break;
                    }
                }
            }
            (me, err)
        });
        let r = f(broken.as_ref());
        stop.store(true, Ordering::Relaxed);
        (r, renewer.join())
    });
    let (me, lost) = lost.map_err(|_| Error::invalid("internal: lease thread panicked"))?;
    if lost.is_none() {
        release(store, &me)?;
    }
    match (r, lost) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(e)) => Err(e),
        (Ok(v), None) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::store::DirStore;

    #[test]
    fn contention_expiry_and_break() {
        let t = tempfile::tempdir().unwrap();
        let s = DirStore::new(t.path());
        let o = LockOptions::new("backup", None, false);
        let (me, broken) = acquire(&s, &o).unwrap();
        assert!(broken.is_none());
        assert_eq!(holder(&s).unwrap().unwrap(), me);
        // A second run is refused, naming the holder.
        let e = acquire(&s, &o).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Locked(_)), "{e}");
        assert!(e.to_string().contains("backup"), "{e}");
        // With a wait it waits, then is refused.
        let w = LockOptions::new("prune", Some(Duration::from_millis(600)), false);
        let t0 = Instant::now();
        assert!(acquire(&s, &w).is_err());
        assert!(t0.elapsed() >= Duration::from_millis(500));
        // --break-lock takes it.
        let b = LockOptions::new("prune", None, true);
        let (me2, broken) = acquire(&s, &b).unwrap();
        assert_eq!(broken.unwrap().token, me.token);
        // The broken holder finds out when it renews, and does not remove the new lock.
        let mut old = me;
        assert!(renew(&s, &mut old, LEASE).is_err());
        release(&s, &old).unwrap();
        assert_eq!(holder(&s).unwrap().unwrap().token, me2.token);
        release(&s, &me2).unwrap();
        assert_eq!(holder(&s).unwrap(), None);
        // An expired lease is broken without being asked.
        let mut stale = acquire(&s, &o).unwrap().0;
        stale.expires = now() - 1;
        s.put_small(NAME, &serde_json::to_vec(&stale).unwrap())
            .unwrap();
        let (_, broken) = acquire(&s, &o).unwrap();
        assert_eq!(broken.unwrap().token, stale.token);
    }

    #[test]
    fn the_lease_is_renewed_while_held() {
        let t = tempfile::tempdir().unwrap();
        let s = DirStore::new(t.path());
        let mut o = LockOptions::new("backup", None, false);
        o.lease = Duration::from_secs(3);
        let first = std::cell::Cell::new(0);
        with_lock(&s, &o, |_| {
            first.set(holder(&s)?.unwrap().expires);
            std::thread::sleep(Duration::from_millis(2100));
            let later = holder(&s)?.unwrap().expires;
            assert!(later > first.get(), "{later} {}", first.get());
            Ok(())
        })
        .unwrap();
        assert_eq!(holder(&s).unwrap(), None);
    }
}
