//! The catalog of an archive: what file headers cannot say, recorded per file in one small
//! hidden JSON file `DIR/.rbddiff-catalog.json`:
//!
//! ```json
//! {"version": 1, "files": {"vm@s1.full.diff": {"image_id": "10226b8b4567", "time": 1767225600}}}
//! ```
//!
//! `image_id` is the id `rbd info --format json` gave for the image at backup time (none when
//! rbd did not say), `time` the UTC time of the backup in seconds since the epoch. Files of
//! one image name with different ids are different *lineages* (an image deleted and
//! recreated under the same name) and are never chained together; files without a record
//! (archives written before the catalog) form the lineage of the unknown id.
//!
//! `backup` records its file before committing it and `prune` its merged file (with the
//! record of the last file merged) before committing that, both under the exclusive lock, so
//! a kill never leaves a committed file unrecorded; records of files that no longer exist
//! are dropped whenever the catalog is written. The catalog is written atomically (fsynced)
//! and read bounded, without following a symbolic link ([`crate::smallfile`]). A catalog of
//! a newer format version is refused rather than overwritten.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::AtomicFile;

/// The catalog's file name in an archive (hidden: discovery ignores it).
pub const NAME: &str = ".rbddiff-catalog.json";
/// The format version written.
pub const VERSION: u32 = 1;
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
}

/// The catalog: records by file name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Format version.
    pub version: u32,
    /// Records by file name (in the archive directory).
    pub files: BTreeMap<String, Record>,
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
    let c: Catalog = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(format!("not an rbddiff catalog: {e}")).with_file(&p))?;
    if c.version == 0 || c.version > VERSION {
        return Err(Error::invalid(format!(
            "catalog format version {} is not known (this rbddiff writes {VERSION})",
            c.version
        ))
        .with_file(&p));
    }
    Ok(c)
}

/// Records `rec` for the file `name` of `dir` (replacing an older record), dropping the
/// records of files that no longer exist. Call it holding the exclusive lock.
///
/// # Errors
/// As [`read`]; writing fails.
pub fn record(dir: &Path, name: &str, rec: Record) -> Result<()> {
    let mut c = read(dir)?;
    c.files
        .retain(|n, _| std::fs::symlink_metadata(dir.join(n)).is_ok());
    c.files.insert(name.to_string(), rec);
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
}
