//! The archive: a backup directory holding the diff files of one or more images, each with
//! its `.sums` sidecar, named by [`names`] for humans and read by their headers.
//!
//! [`graph`] reads one image's files as a graph over snapshots (what backup, restore and
//! prune use), [`retention`] plans which files a prune keeps; [`discover_chain`] reads them
//! as a single linear chain (a fork or a gap is an error), for callers that need one.
//! [`policy`] chooses the snapshots a prune keeps, [`prune`] rewrites the graph.
//! Maintenance under the directory's exclusive lock finishes
//! what an interrupted prune left (see [`crate::journal`] and [`prune`]).

pub mod backup;
pub mod catalog;
pub mod graph;
pub mod lease;
pub mod listing;
pub mod names;
pub mod policy;
pub mod prune;
pub mod remote;
pub mod restore;
pub mod retention;
pub mod store;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::inspect::inspect_file;
use crate::verify::{verify, VerifyOptions};
use names::{dir_entries, escape, is_candidate};

/// One file of a backup chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainFile {
    /// Path of the diff file.
    pub path: PathBuf,
    /// Start snapshot (`None` for a full diff).
    pub from: Option<String>,
    /// End snapshot (`None` for a diff to the image HEAD).
    pub to: Option<String>,
    /// Image size at the end snapshot.
    pub size: u64,
    /// True for a zstd-compressed file.
    pub compressed: bool,
}

impl ChainFile {
    pub(crate) fn name(&self) -> String {
        self.path.display().to_string()
    }
}

fn not_a_diff(path: &Path) -> Error {
    Error::invalid("not a diff (an image stream cannot be part of a chain)").with_file(path)
}

/// Reads the header of one candidate file.
pub(crate) fn read_chain_file(path: PathBuf) -> Result<ChainFile> {
    let p = path.to_string_lossy().into_owned();
    let r = inspect_file(&p, false)?;
    if let Some(e) = &r.error {
        return Err(Error::invalid(format!("not a valid diff: {e}")).with_file(&path));
    }
    let [d] = r.diffs.as_slice() else {
        return Err(not_a_diff(&path));
    };
    if r.kind != "diff" {
        return Err(not_a_diff(&path));
    }
    let compressed = {
        let mut f = File::open(&path).map_err(|e| Error::from(e).with_file(&path))?;
        let mut m = [0u8; 4];
        let n = f
            .read(&mut m)
            .map_err(|e| Error::from(e).with_file(&path))?;
        n == 4 && m == [0x28, 0xb5, 0x2f, 0xfd]
    };
    Ok(ChainFile {
        path,
        from: d.from_snap.clone(),
        to: d.to_snap.clone(),
        size: d.image_size.unwrap_or(0),
        compressed,
    })
}

fn chain_error(msg: String) -> Error {
    Error::new(ErrorKind::ChainBreak(msg))
}

/// Finds the backup chain of `image` in `dir`, oldest first.
///
/// Only regular files named `IMAGE@….diff` or `IMAGE@….diff.zst` are considered (hidden
/// files, sidecars, other images' files, files superseded by a half-done prune and anything
/// else are ignored). Their order comes
/// from their headers: the chain starts at a full diff (or at the one incremental whose start
/// snapshot no other file ends at) and each next file starts at the snapshot the previous one
/// ends at. A missing directory is an empty chain.
///
/// # Errors
/// A file is not a valid diff; two files start (or end) at the same snapshot (a fork); more
/// than one file starts the chain (a gap, or a second full diff); files that no link reaches
/// (a cycle). The message names the files and snapshots.
pub fn discover_chain(dir: &Path, image: &str) -> Result<Vec<ChainFile>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    // Files a half-done prune has replaced (its output is committed) are not in the chain.
    let gone = crate::journal::superseded(dir)?;
    let mut files = Vec::new();
    for (name, path) in dir_entries(dir)? {
        if is_candidate(&name, image) && !gone.contains(&name) {
            files.push(read_chain_file(path)?);
        }
    }
    order_chain(files)
}

/// Orders the files of a chain by their links; see [`discover_chain`].
fn order_chain(files: Vec<ChainFile>) -> Result<Vec<ChainFile>> {
    if files.is_empty() {
        return Ok(files);
    }
    let mut by_from: HashMap<Option<String>, usize> = HashMap::new();
    let mut by_to: HashMap<Option<String>, usize> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        if let Some(&j) = by_from.get(&f.from) {
            let what = match &f.from {
                None => "are both full diffs".to_string(),
                Some(s) => format!("both start at snapshot '{s}'"),
            };
            return Err(chain_error(format!(
                "fork in the chain: {} and {} {what}",
                files[j].name(),
                f.name()
            )));
        }
        by_from.insert(f.from.clone(), i);
        if let Some(&j) = by_to.get(&f.to) {
            return Err(chain_error(format!(
                "fork in the chain: {} and {} both end at snapshot {}",
                files[j].name(),
                f.name(),
                crate::format::show_to(f.to.as_deref())
            )));
        }
        by_to.insert(f.to.clone(), i);
    }
    // Starts: full diffs, and incrementals whose start snapshot no file ends at.
    let starts: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].from.is_none() || !by_to.contains_key(&files[i].from))
        .collect();
    match starts.as_slice() {
        [_] => {}
        [] => {
            return Err(chain_error(format!(
                "the files form a cycle, no file starts the chain: {}",
                files
                    .iter()
                    .map(ChainFile::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        many => {
            // Report the first start after the real one (a full diff, else the first).
            let first = many
                .iter()
                .copied()
                .find(|&i| files[i].from.is_none())
                .unwrap_or(many[0]);
            let other = many.iter().copied().find(|&i| i != first).unwrap_or(first);
            let o = &files[other];
            let msg = match &o.from {
                None => format!(
                    "two chains: {} and {} are both full diffs",
                    files[first].name(),
                    o.name()
                ),
                Some(s) => format!(
                    "gap in the chain: {} starts at snapshot '{s}', but no file ends at it \
                     (the chain starts with {})",
                    o.name(),
                    files[first].name()
                ),
            };
            return Err(chain_error(msg));
        }
    }
    let mut order = vec![starts[0]];
    while let Some(to) = files[*order.last().unwrap_or(&0)].to.clone() {
        match by_from.get(&Some(to)) {
            Some(&n) if !order.contains(&n) => order.push(n),
            _ => break,
        }
    }
    if order.len() != files.len() {
        let left: Vec<String> = (0..files.len())
            .filter(|i| !order.contains(i))
            .map(|i| files[i].name())
            .collect();
        return Err(chain_error(format!(
            "files not reachable from the start of the chain (a cycle): {}",
            left.join(", ")
        )));
    }
    let mut slots: Vec<Option<ChainFile>> = files.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// Chooses the image whose backups `dir` holds: `given`, else the only image with files in
/// `dir`, else `target` (an image name) when `dir` has files of it.
///
/// # Errors
/// `dir` has no backup files, or files of several images and neither says which.
pub(crate) fn pick_image(dir: &Path, target: Option<&str>, given: Option<&str>) -> Result<String> {
    match given {
        Some(g) => Ok(g.to_string()),
        None => pick_of(names::images_in(dir)?, &dir.display().to_string(), target),
    }
}

/// [`pick_image`] among `images`, those of the archive at `place` (named in errors): the only
/// one, else `target` when it is one of them.
///
/// # Errors
/// No image; several, and `target` is none of them.
pub(crate) fn pick_of(
    images: std::collections::BTreeSet<String>,
    place: &str,
    target: Option<&str>,
) -> Result<String> {
    if images.len() == 1 {
        return Ok(images.into_iter().next().unwrap_or_default());
    }
    if let Some(t) = target.filter(|t| images.contains(*t)) {
        return Ok(t.to_string());
    }
    if images.is_empty() {
        return Err(Error::invalid(format!(
            "{place}: no backup files (IMAGE@….diff[.zst])"
        )));
    }
    Err(Error::invalid(format!(
        "{place} holds backups of several images ({}): choose one with --image",
        images.into_iter().collect::<Vec<_>>().join(", ")
    )))
}

/// Files left by an interrupted run, removed under the exclusive lock: the files a committed
/// prune output supersedes (with their sidecars, once the output verifies), stale journals
/// and rbddiff's temporary files (`.NAME.XXXXXX.tmp`) of `image` and of the catalog. Returns what was removed.
///
/// # Errors
/// A journal cannot be read; the output of a half-done prune does not verify (then nothing
/// of it is removed); a removal fails.
pub(crate) fn finish_pending(dir: &Path, image: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let remove = |p: &Path, removed: &mut Vec<String>| match std::fs::remove_file(p) {
        Ok(()) => {
            removed.push(p.to_string_lossy().into_owned());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from(e).with_file(p)),
    };
    let key = escape(image);
    let ours = |n: &str| {
        n.strip_prefix(key.as_str())
            .is_some_and(|r| r.starts_with('@'))
    };
    for (jpath, j) in crate::journal::all(dir)? {
        if !ours(&j.output) {
            continue;
        }
        if crate::journal::output_present(dir, &j) {
            for o in j.outputs() {
                let out = dir.join(o);
                verify_chain(&[read_chain_file(out.clone())?]).map_err(|e| {
                    Error::invalid(format!(
                        "an interrupted prune (journal {}) left {}, which does not verify: \
                         {e}; the files it replaces are kept",
                        jpath.display(),
                        out.display()
                    ))
                })?;
                if !crate::sums::sums_path(&out).exists() {
                    // Killed before its sidecar was written.
                    crate::sums::write_sums_for(&out)?;
                }
            }
            for n in &j.supersedes {
                let p = dir.join(n);
                remove(&crate::sums::sums_path(&p), &mut removed)?;
                remove(&p, &mut removed)?;
            }
            sync_dir(dir)?;
        } else {
            // Killed before every output was committed: the superseded files were never
            // passed over. An output that is there is an ordinary file of the graph once it
            // verifies (the next prune uses it); one that does not goes.
            for o in j.outputs().filter(|o| crate::journal::present(dir, o)) {
                let out = dir.join(o);
                let ok = read_chain_file(out.clone()).and_then(|f| verify_chain(&[f]));
                if ok.is_ok() {
                    if !crate::sums::sums_path(&out).exists() {
                        crate::sums::write_sums_for(&out)?;
                    }
                } else {
                    remove(&crate::sums::sums_path(&out), &mut removed)?;
                    remove(&out, &mut removed)?;
                }
            }
            sync_dir(dir)?;
        }
        // Done, or stale (its prune never committed every output).
        remove(&jpath, &mut removed)?;
        sync_dir(dir)?;
    }
    // Temporary files of killed runs: no live rbddiff writes here while the lock is held.
    for (name, path) in dir_entries(dir)? {
        let of = stale_temp_of(&name);
        let base = of.map(|b| b.strip_prefix('.').unwrap_or(b));
        if base.is_some_and(ours) || of == Some(catalog::NAME) {
            remove(&path, &mut removed)?;
        }
    }
    Ok(removed)
}

/// For the name of a temporary file of [`crate::output`] (`.NAME.XXXXXX.tmp`), `NAME`.
pub(crate) fn stale_temp_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (base, rand) = rest.rsplit_once('.')?;
    (rand.len() == 6 && rand.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(base)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::from(e).with_file(dir))?;
    d.sync_all().map_err(|e| Error::from(e).with_file(dir))
}

/// Verifies `files` as a chain (structure, links, sums sidecars where present). An archive
/// whose record index disagrees with its content (an `index` finding) is no reason to stop:
/// merging does not use such an index ([`open_input`] streams the content instead).
pub(crate) fn verify_chain(files: &[ChainFile]) -> Result<()> {
    let paths: Vec<String> = files
        .iter()
        .map(|f| f.path.to_string_lossy().into_owned())
        .collect();
    let opts = VerifyOptions {
        no_chain: paths.len() < 2,
        ..VerifyOptions::default()
    };
    let report = verify(&paths, &opts)?;
    let problems: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.severity == crate::verify::Severity::Problem && f.check != "index")
        .map(|f| f.to_string())
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "the chain does not verify ({} problem{}): {}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.join("; ")
    )))
}

/// The (device, inode) of the file at `path` (not following a symbolic link).
pub(crate) fn file_id(path: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).map_err(|e| Error::from(e).with_file(path))?;
    Ok((m.dev(), m.ino()))
}
