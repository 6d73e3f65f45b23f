//! `sync --pool`: every image of a pool (or those selected) synced, several at a time.

use serde::Serialize;

use super::sync::{sync, SyncOptions, SyncReport};
use crate::error::{Error, Result};

/// One image's outcome in a [`sync_pool`].
#[derive(Clone, Debug, Serialize)]
pub struct PoolEntry {
    /// The image name.
    pub image: String,
    /// Its sync's report, when it succeeded.
    pub report: Option<SyncReport>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// What [`sync_pool`] did, image by image (sorted by name).
#[derive(Clone, Debug, Serialize)]
pub struct PoolReport {
    /// Source pool.
    pub source_pool: String,
    /// Destination pool.
    pub destination_pool: String,
    /// Every image selected.
    pub images: Vec<PoolEntry>,
    /// Images that failed.
    pub failed: usize,
}

/// Whether `name` matches the glob `pat` (`*` any run, `?` one character).
pub fn glob_match(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Syncs the images of `src_pool` selected by `select` (names or globs; empty: all) to the
/// same names in `dst_pool`, `jobs` at a time ([`sync`] each, with `opts`; a per-image
/// `opts.archive` is `ARCHIVE/IMAGE`). One image's failure does not stop the others.
///
/// # Errors
/// The pool cannot be listed; a selection matches no image.
pub fn sync_pool(
    src_pool: &str,
    dst_pool: &str,
    select: &[String],
    jobs: usize,
    opts: &SyncOptions,
) -> Result<PoolReport> {
    let all = opts.src.images(src_pool)?;
    for s in select {
        if !all.iter().any(|n| glob_match(s, n)) {
            return Err(Error::invalid(format!(
                "no image of pool {src_pool} matches '{s}'"
            )));
        }
    }
    let chosen: Vec<String> = all
        .into_iter()
        .filter(|n| select.is_empty() || select.iter().any(|s| glob_match(s, n)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, chosen.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(name) = chosen.get(i) else { break };
                let mut o = opts.clone();
                o.archive = opts.archive.as_ref().map(|a| a.join(name));
                let r = sync(
                    &format!("{src_pool}/{name}"),
                    &format!("{dst_pool}/{name}"),
                    &o,
                );
                let entry = PoolEntry {
                    image: name.clone(),
                    error: r.as_ref().err().map(|e| e.to_string()),
                    report: r.ok(),
                };
                if let Ok(mut v) = results.lock() {
                    v.push(entry);
                }
            });
        }
    });
    let mut images = results.into_inner().unwrap_or_default();
    images.sort_by(|a, b| a.image.cmp(&b.image));
    Ok(PoolReport {
        source_pool: src_pool.to_string(),
        destination_pool: dst_pool.to_string(),
        failed: images.iter().filter(|e| e.error.is_some()).count(),
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("vm-*", "vm-1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*-db-*", "x-db-1"));
        assert!(!glob_match("vm-*", "db-1"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
    }
}
