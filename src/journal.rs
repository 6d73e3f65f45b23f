//! The journal of a prune: a small hidden file `.OUTPUT.prune-journal` in a backup directory
//! naming the merged outputs of a prune (the first one names the journal) and the files they
//! supersede. `prune` writes it (atomically, fsynced) before it commits the first output and
//! removes it after deleting the superseded files, so a prune killed in between leaves a
//! journal that says which files are no longer part of the chain once **every** output is
//! committed (see [`crate::archive::prune`] for how it is finished).
//!
//! A journal names plain file names of its directory only (no `/`, not hidden). It is read
//! through [`crate::smallfile::read_small`] (no symbolic link, a regular file, bounded).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::output::AtomicFile;

/// How a journal's file name ends (it starts with `.` and the output's name).
pub const SUFFIX: &str = ".prune-journal";

/// The largest journal read (a name is at most 255 bytes: room for thousands of files).
const MAX_BYTES: u64 = 4 << 20;

/// What a journal records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// File name of the (first) merged output; it names the journal.
    pub output: String,
    /// File names of the further outputs of the same prune.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_outputs: Vec<String>,
    /// File names of the files the output replaces.
    pub supersedes: Vec<String>,
}

impl Journal {
    /// Every output's file name, the first one first.
    pub fn outputs(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.output).chain(&self.more_outputs)
    }

    /// True when its names are plain file names of the directory, every output is named once
    /// and no output is also superseded.
    fn well_formed(&self) -> Option<&String> {
        let outs: Vec<&String> = self.outputs().collect();
        let mut seen = HashSet::new();
        outs.iter()
            .copied()
            .find(|n| !plain(n) || !seen.insert(n.as_str()))
            .or_else(|| {
                self.supersedes
                    .iter()
                    .find(|n| !plain(n) || outs.contains(n))
            })
    }
}

/// The path of the journal of a prune into `output` (a file name in `dir`).
pub fn path_for(dir: &Path, output: &str) -> PathBuf {
    dir.join(format!(".{output}{SUFFIX}"))
}

/// A plain, visible file name of the directory itself.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\0'])
        && !name.ends_with(SUFFIX)
}

/// Writes the journal `j` into `dir` atomically (fsynced, the directory too), replacing an
/// old one of the same output.
///
/// # Errors
/// A name in `j` is not a plain file name; writing fails.
pub fn write(dir: &Path, j: &Journal) -> Result<PathBuf> {
    let path = path_for(dir, &j.output);
    if j.well_formed().is_some() {
        return Err(
            Error::invalid("internal: a journal names a file outside its directory")
                .with_file(&path),
        );
    }
    let mut f = AtomicFile::create(&path, true)?;
    let text = serde_json::to_vec_pretty(j).map_err(|e| Error::invalid(e.to_string()))?;
    f.file()
        .write_all(&text)
        .map_err(|e| Error::from(e).with_file(&path))?;
    f.commit()?;
    Ok(path)
}

/// Reads the journal at `path` (none when nothing is there).
///
/// # Errors
/// It cannot be read (see [`crate::smallfile::read_small`]), is not a journal, names a file
/// outside its directory, or its output is not the one its own name says.
pub fn read(path: &Path) -> Result<Option<Journal>> {
    let Some(bytes) = crate::smallfile::read_small(path, MAX_BYTES)? else {
        return Ok(None);
    };
    let bad = |why: String| Error::invalid(format!("not a prune journal: {why}")).with_file(path);
    let j: Journal = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let own = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if own != format!(".{}{SUFFIX}", j.output) {
        return Err(bad(format!("its output {:?} is not its name's", j.output)));
    }
    if let Some(n) = j.well_formed() {
        return Err(bad(format!("bad file name {n:?}")));
    }
    Ok(Some(j))
}

/// Every journal in `dir` (hidden regular files named `.….prune-journal`), sorted by path.
///
/// # Errors
/// `dir` cannot be listed; a journal cannot be read ([`read`]).
pub fn all(dir: &Path) -> Result<Vec<(PathBuf, Journal)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::from(e).with_file(dir))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::from(e).with_file(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with('.') && name.ends_with(SUFFIX)) {
            continue;
        }
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Some(j) = read(&e.path())? {
            out.push((e.path(), j));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// True when the output `name` is in `dir` (committed: outputs appear whole, by rename).
pub fn present(dir: &Path, name: &str) -> bool {
    std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.is_file())
}

/// True when every output `j` names is in `dir`.
pub fn output_present(dir: &Path, j: &Journal) -> bool {
    j.outputs().all(|o| present(dir, o))
}

/// The file names in `dir` that are superseded: listed by a journal whose outputs are all
/// there. A journal with an output missing is stale (its prune never committed them all)
/// and counts for nothing.
///
/// # Errors
/// As [`all`].
pub fn superseded(dir: &Path) -> Result<HashSet<String>> {
    Ok(all(dir)?
        .into_iter()
        .filter(|(_, j)| output_present(dir, j))
        .flat_map(|(_, j)| j.supersedes)
        .collect())
}
