//! The catalog of an archive: what file headers cannot say, recorded in one small hidden JSON
//! file `DIR/.rbddiff-catalog.json` (format version 2):
//!
//! ```json
//! {"version": 2, "archive_id": "6f1c…(32 hex digits)",
//!  "files": {"vm@s1.full.diff": {"image_id": "10226b8b4567", "time": 1767225600,
//!            "fsid": "5c9c5fc2-…", "rbd_version": "ceph version 16.2.15 (…) pacific (stable)"}},
//!  "images": {"vm": {"last_ok": false, "success": 1767225600, "file": "vm@s1.full.diff",
//!                    "failure": 1767139200, "error": "rbd export-diff … failed: …"}}}
//! ```
//!
//! Per file: `image_id` is the id `rbd info --format json` gave for the image at backup time,
//! `time` the UTC time of the backup in seconds since the epoch, `fsid` the cluster fsid as
//! rbd's configuration sets it (`rbd --show-config-value fsid`; none when the configuration
//! does not set it: rbd itself gives no other way to learn it), `rbd_version` the first line
//! of `rbd --version`; each is none when rbd did not say. Files of one image name with
//! different ids are different *lineages* (an image deleted and recreated under the same
//! name) and are never chained together; files without a record (archives written before
//! the catalog) form the lineage of the unknown id.
//!
//! `archive_id` (32 random hex digits, made by the first backup into the archive and never
//! changed) names the snapshots this archive's backups make, so that `--keep-snaps` only
//! ever removes its own. `images` holds, per image name, the outcome of the last backups:
//! the time and file of the last success, the time and message of the last failure.
//!
//! `backup` records its file before committing it and `prune` its merged file (with the
//! record of the last file merged) before committing that, both under the exclusive lock, so
//! a kill never leaves a committed file unrecorded; records of files that no longer exist
//! are dropped whenever the catalog is written. The catalog is written atomically (fsynced)
//! and read bounded, without following a symbolic link ([`crate::smallfile`]). Version 1
//! (no archive id, fsid, rbd version or outcomes) is read; a catalog of a newer format
//! version is refused rather than overwritten.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::AtomicFile;

/// The catalog's file name in an archive (hidden: discovery ignores it).
pub const NAME: &str = ".rbddiff-catalog.json";
/// The format version written.
pub const VERSION: u32 = 2;
/// The largest catalog read.
const MAX_BYTES: u64 = 64 << 20;

/// What is recorded of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The image's id at backup time (`rbd info`), if known.
    #[serde(default)]
    pub image_id: Option<String>,
    /// UTC time of the backup, seconds since the epoch.
    #[serde(default)]
    pub time: Option<u64>,
    /// The cluster fsid rbd's configuration sets, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsid: Option<String>,
    /// The first line of `rbd --version`, if rbd gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd_version: Option<String>,
}

/// The outcome of the last backups of one image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBackup {
    /// Whether the last backup recorded succeeded.
    #[serde(default)]
    pub last_ok: Option<bool>,
    /// Time of the last successful backup, seconds since the epoch.
    #[serde(default)]
    pub success: Option<u64>,
    /// The file it wrote.
    #[serde(default)]
    pub file: Option<String>,
    /// Time of the last failed backup.
    #[serde(default)]
    pub failure: Option<u64>,
    /// Its error message.
    #[serde(default)]
    pub error: Option<String>,
}

/// The catalog: records by file name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Format version.
    pub version: u32,
    /// The archive's id (32 hex digits; none before the first backup of version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_id: Option<String>,
    /// Records by file name (in the archive directory).
    pub files: BTreeMap<String, Record>,
    /// The outcome of the last backups, by image name.
    #[serde(default)]
    pub images: BTreeMap<String, LastBackup>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(NAME)
}

/// Reads the catalog of `dir` (empty when there is none).
///
/// # Errors
/// It cannot be read, is not a catalog, or has a newer format version.
pub fn read(dir: &Path) -> Result<Catalog> {
    let p = path(dir);
    let Some(bytes) = crate::smallfile::read_small(&p, MAX_BYTES)? else {
        return Ok(Catalog {
            version: VERSION,
            ..Catalog::default()
        });
    };
    parse(&bytes, &p)
}

/// Parses a catalog read from `place`.
///
/// # Errors
/// It is not a catalog, or has a newer format version.
pub(crate) fn parse(bytes: &[u8], place: impl AsRef<Path>) -> Result<Catalog> {
    let p = place.as_ref();
    let c: Catalog = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("not an rbddiff catalog: {e}")).with_file(p))?;
    if c.version == 0 || c.version > VERSION {
        return Err(Error::invalid(format!(
            "catalog format version {} is not known (this rbddiff writes {VERSION})",
            c.version
        ))
        .with_file(p));
    }
    if let Some(id) = c.archive_id.as_deref().filter(|id| !is_archive_id(id)) {
        return Err(Error::invalid(format!(
            "the archive id {id:?} is not {ID_LEN} lowercase hex digits"
        ))
        .with_file(p));
    }
    Ok(c)
}

/// The catalog in an object store `store` (empty when there is none).
///
/// # Errors
/// As [`read`].
pub(crate) fn read_from(store: &dyn super::store::Store) -> Result<Catalog> {
    match store.read_small(NAME, MAX_BYTES)? {
        Some(b) => parse(&b, store.location(NAME)),
        None => Ok(Catalog {
            version: VERSION,
            ..Catalog::default()
        }),
    }
}

/// Reads the catalog of `store`, changes it with `f` and writes it back whole (records of
/// files not in `present` are dropped). Call it holding the archive's lock.
///
/// # Errors
/// As [`read`]; writing fails.
pub(crate) fn update_in(
    store: &dyn super::store::Store,
    present: &dyn Fn(&str) -> bool,
    f: impl FnOnce(&mut Catalog),
) -> Result<Catalog> {
    let mut c = read_from(store)?;
    c.files.retain(|n, _| present(n));
    f(&mut c);
    c.version = VERSION;
    let text = serde_json::to_vec_pretty(&c).map_err(|e| Error::invalid(e.to_string()))?;
    store.put_small(NAME, &text)?;
    Ok(c)
}

/// A new archive id (32 random hex digits).
///
/// # Errors
/// The random source cannot be read.
pub(crate) fn new_id() -> Result<String> {
    let mut bytes = [0u8; ID_LEN / 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| Error::from(e).with_file("/dev/urandom"))?;
    Ok(crate::sums::hex(&bytes))
}

/// Records the outcome of a backup in `c` (see [`record_outcome`]).
pub(crate) fn set_outcome(
    c: &mut Catalog,
    image: &str,
    time: u64,
    outcome: std::result::Result<&str, &str>,
) {
    let last = c.images.entry(image.to_string()).or_default();
    match outcome {
        Ok(file) => {
            last.last_ok = Some(true);
            last.success = Some(time);
            last.file = Some(file.to_string());
        }
        Err(msg) => {
            let mut m = msg.to_string();
            if m.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
                m.push('…');
            }
            last.last_ok = Some(false);
            last.failure = Some(time);
            last.error = Some(m);
        }
    }
}

/// Digits of an archive id.
const ID_LEN: usize = 32;
/// The longest error message recorded of a failed backup.
const MAX_ERROR: usize = 2000;

fn is_archive_id(id: &str) -> bool {
    id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The id of the archive `dir`, made (from the system's random source) and written when it
/// has none yet. Call it holding the exclusive lock.
///
/// # Errors
/// As [`read`]; the random source cannot be read; writing fails.
pub fn archive_id(dir: &Path) -> Result<String> {
    if let Some(id) = read(dir)?.archive_id {
        return Ok(id);
    }
    let id = new_id()?;
    update(dir, |c| {
        c.archive_id.get_or_insert_with(|| id.clone());
    })?;
    Ok(id)
}

/// Records the outcome of a backup of `image` at `time`: the file written, or the error.
/// Call it holding the exclusive lock.
///
/// # Errors
/// As [`read`]; writing fails.
pub fn record_outcome(
    dir: &Path,
    image: &str,
    time: u64,
    outcome: std::result::Result<&str, &str>,
) -> Result<()> {
    update(dir, |c| set_outcome(c, image, time, outcome))
}

/// Records `rec` for the file `name` of `dir` (replacing an older record), dropping the
/// records of files that no longer exist. Call it holding the exclusive lock.
///
/// # Errors
/// As [`read`]; writing fails.
pub fn record(dir: &Path, name: &str, rec: Record) -> Result<()> {
    update(dir, |c| {
        c.files.insert(name.to_string(), rec);
    })
}

/// Reads the catalog of `dir`, changes it with `f` and writes it (as version [`VERSION`]),
/// dropping the records of files that no longer exist.
fn update(dir: &Path, f: impl FnOnce(&mut Catalog)) -> Result<()> {
    let mut c = read(dir)?;
    c.files
        .retain(|n, _| std::fs::symlink_metadata(dir.join(n)).is_ok());
    f(&mut c);
    c.version = VERSION;
    let p = path(dir);
    let mut f = AtomicFile::create(&p, true)?;
    let text = serde_json::to_vec_pretty(&c).map_err(|e| Error::invalid(e.to_string()))?;
    f.file()
        .write_all(&text)
        .map_err(|e| Error::from(e).with_file(&p))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_for_existing_files_only() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        assert!(read(d).unwrap().files.is_empty());
        let r = |id: &str| Record {
            image_id: Some(id.into()),
            time: Some(1),
            ..Record::default()
        };
        record(d, "a", r("x")).unwrap();
        std::fs::write(d.join("b"), "").unwrap();
        record(d, "b", r("y")).unwrap();
        // "a" was never committed: its record goes when the catalog is written again.
        let c = read(d).unwrap();
        assert_eq!(c.files.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(c.files["b"], r("y"));
        std::fs::write(path(d), r#"{"version": 9, "files": {}}"#).unwrap();
        assert!(read(d).unwrap_err().to_string().contains("version 9"));
        std::fs::write(path(d), "[]").unwrap();
        assert!(read(d).unwrap_err().to_string().contains(NAME));
    }

    #[test]
    fn version_1_is_read_and_the_archive_id_is_made_once() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("vm@s1.full.diff"), "").unwrap();
        std::fs::write(
            path(d),
            r#"{"version": 1, "files": {"vm@s1.full.diff": {"image_id": "ab", "time": 7}}}"#,
        )
        .unwrap();
        let c = read(d).unwrap();
        assert_eq!((c.version, c.archive_id.as_ref()), (1, None));
        assert_eq!(c.files["vm@s1.full.diff"].time, Some(7));
        let id = archive_id(d).unwrap();
        assert!(is_archive_id(&id), "{id}");
        assert_eq!(archive_id(d).unwrap(), id);
        let c = read(d).unwrap();
        assert_eq!(c.version, VERSION);
        assert_eq!(c.files["vm@s1.full.diff"].image_id.as_deref(), Some("ab"));
        // Another archive gets another id.
        let t2 = tempfile::tempdir().unwrap();
        assert_ne!(archive_id(t2.path()).unwrap(), id);
        // An id that could reach rbd in a snapshot name is checked.
        std::fs::write(
            path(d),
            r#"{"version": 2, "archive_id": "--conf=x", "files": {}}"#,
        )
        .unwrap();
        assert!(read(d).unwrap_err().to_string().contains("archive id"));
    }

    #[test]
    fn outcomes_keep_the_last_success_and_failure() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        record_outcome(d, "vm", 10, Ok("vm@a.full.diff")).unwrap();
        assert_eq!(read(d).unwrap().images["vm"].last_ok, Some(true));
        record_outcome(d, "vm", 20, Err(&"x".repeat(5000))).unwrap();
        let last = read(d).unwrap().images["vm"].clone();
        assert_eq!(last.last_ok, Some(false));
        assert_eq!((last.success, last.failure), (Some(10), Some(20)));
        assert!(last.error.unwrap().len() < 2100);
        // The last one counts, also within one second.
        record_outcome(d, "vm", 20, Ok("vm@b.full.diff")).unwrap();
        let last = read(d).unwrap().images["vm"].clone();
        assert_eq!(last.last_ok, Some(true));
        assert_eq!(last.file.as_deref(), Some("vm@b.full.diff"));
    }
}
