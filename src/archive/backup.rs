//! `backup`: one snapshot of an image streamed from `rbd export-diff` into a new file of the
//! archive.
//!
//! The base of an incremental is the restorable snapshot of the image's lineage
//! ([`super::graph::lineages`]) created last on the cluster; the backup is full when asked,
//! when a periodic-full rule is due, or when there is no such base, and the report says why.
//! The stream is parsed while it is written (atomically, with its sums taken on the way), and
//! on any failure no file is left and the snapshot made is removed again.

use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;

use super::graph::Graph;
use super::names::{default_snap_name, escape, file_name, is_own_snap, MAX_IMAGE_NAME};
use super::{catalog, finish_pending};
use crate::compress::{compress_stream, CompressOptions};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::rate::Limited;
use crate::rbd::{collect_stderr, image_name, rbd_failed, safe_arg, Rbd};

/// Options of [`backup`].
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Name of the snapshot to create (default `rbddiff-<archive tag>-<UTC time>`, see
    /// [`super::names::default_snap_name`]).
    pub snap: Option<String>,
    /// Make a full backup (also into an archive that has chains: a periodic full).
    pub full: bool,
    /// Make a full backup when the path to the base already holds this many files (a full
    /// diff and its incrementals): every Nth backup of a chain is a full.
    pub full_every: Option<usize>,
    /// Make a full backup when the newest full diff of the lineage is older than this (by
    /// its backup time in the catalog, else its modification time).
    pub full_after: Option<std::time::Duration>,
    /// Write a compressed archive (`.diff.zst`).
    pub compress: Option<CompressOptions>,
    /// Afterwards, keep only the newest K snapshots this archive's backups made (by their
    /// default names, which carry the archive's tag), besides the one just made.
    pub keep_snaps: Option<usize>,
    /// At most this many bytes per second read from `rbd export-diff`.
    pub limit_rate: Option<u64>,
    /// How to run `rbd`.
    pub rbd: Rbd,
    /// Wait up to this long for another run's lock on the archive (default: refuse at once;
    /// see [`crate::dirlock`]).
    pub wait: Option<std::time::Duration>,
}

/// What [`backup`] did.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    /// The file written.
    pub file: String,
    /// Its checksum sidecar.
    pub sums: String,
    /// The image backed up.
    pub image: String,
    /// Start snapshot (none for a full backup).
    pub from_snap: Option<String>,
    /// The snapshot created and exported.
    pub to_snap: String,
    /// True for a compressed file.
    pub compressed: bool,
    /// Bytes of the diff stream.
    pub bytes: u64,
    /// Size of the file written (differs from `bytes` when compressed).
    pub file_bytes: u64,
    /// Records in the diff (`e` included).
    pub records: u64,
    /// Image size at the snapshot.
    pub image_size: u64,
    /// Snapshots removed by `--keep-snaps`.
    pub removed_snapshots: Vec<String>,
    /// Things that went wrong after the backup was complete (e.g. a snapshot that could not be
    /// removed).
    pub warnings: Vec<String>,
    /// Files of an interrupted earlier run removed first (see [`crate::archive::prune`]).
    pub cleaned: Vec<String>,
    /// Why the backup is a full diff (none for an incremental).
    pub full_reason: Option<String>,
    /// The image's id (`rbd info`), recorded in the catalog; none when rbd gave none.
    pub image_id: Option<String>,
    /// The archive's id ([`super::catalog`]); its first digits tag the default snapshot names.
    pub archive_id: String,
    /// The cluster fsid rbd's configuration sets (none when it does not set it).
    pub fsid: Option<String>,
    /// The first line of `rbd --version`.
    pub rbd_version: Option<String>,
}

/// What the stream check of an export found.
pub(crate) struct Exported {
    pub(crate) bytes: u64,
    pub(crate) records: u64,
    pub(crate) from: Option<String>,
    pub(crate) to: Option<String>,
    pub(crate) size: u64,
    /// The sums of the diff stream, taken on the way (for the sidecar).
    pub(crate) sums: crate::sums::Sums,
}

/// Parses the diff `src` gives while copying it to `out`, taking its sums on the way (the
/// file is not read again for its sidecar); a malformed or truncated stream, or bytes after
/// `e`, is an error.
fn copy_checked(src: impl Read, out: &mut dyn Write) -> Result<Exported> {
    let sums = crate::sums::copy_with_sums(src, out)?;
    if let Some(t) = sums.records.last().filter(|r| r.tag == '-') {
        return Err(Error::invalid(format!(
            "the export has {} unexpected bytes after the end record",
            t.len
        )));
    }
    out.flush()?;
    Ok(Exported {
        bytes: sums.file_len,
        // Every record after the banner.
        records: sums
            .records
            .iter()
            .map(|r| r.count)
            .sum::<u64>()
            .saturating_sub(1),
        from: sums.from.clone(),
        to: sums.to.clone(),
        size: sums.size.unwrap_or(0),
        sums,
    })
}

/// Copies the diff `src` gives into `output` as [`copy_checked`] does, compressed when
/// `compress` asks (the sums then also hold the compressed file's digest), at most `limit`
/// bytes per second.
pub(crate) fn stream_checked(
    src: impl Read,
    output: &mut (dyn Write + Send),
    compress: Option<&CompressOptions>,
    limit: Option<u64>,
) -> Result<Exported> {
    match compress {
        Some(c) => {
            // The sidecar of an archive also holds the digest of the compressed file.
            let mut digest = crate::sums::DigestWriter::new(&mut *output);
            compress_stream(&mut digest, c, |w| {
                copy_checked(src, &mut Limited::new(w, limit))
            })
            .map(|(mut x, _)| {
                x.sums.compressed = Some(digest.compressed_sums());
                x
            })
        }
        None => copy_checked(src, &mut Limited::new(&mut *output, limit)),
    }
}

/// Backs up `spec` (`POOL/IMAGE`) into the archive `dir`: reads the image's files as a graph
/// ([`crate::archive::graph`]), creates a snapshot, streams `rbd export-diff` through the
/// stream parser into a new file written atomically, checks rbd's status and writes the
/// `.sums` sidecar. The base of the incremental is the restorable snapshot (by the files'
/// structure; sums are checked by restore and verify) created last on the cluster; the backup
/// is full when `opts.full` asks, when `opts.full_every` or `opts.full_after` is reached, or
/// when there is no such snapshot ([`BackupReport::full_reason`] says which). On any failure
/// no file is left and the snapshot made by this call is removed again. The outcome (the
/// file, or the error of a run that got the lock) is recorded in the catalog for `status`,
/// unless the run created the directory and failed (then the directory is removed again).
///
/// # Errors
/// A snapshot name from a header that `rbd` could read as an option; the snapshot to create
/// exists (on the image or in `dir`); an `rbd` call fails; the exported stream is malformed
/// or truncated; writing fails.
pub fn backup(spec: &str, dir: &Path, opts: &BackupOptions) -> Result<BackupReport> {
    let image = image_name(spec)?;
    if escape(image).len() > MAX_IMAGE_NAME {
        return Err(Error::invalid(format!(
            "image name '{image}' is too long for the backup file names (at most \
             {MAX_IMAGE_NAME} bytes, escaped)"
        )));
    }
    if opts.keep_snaps == Some(0) {
        return Err(Error::invalid("--keep-snaps must be at least 1"));
    }
    let existed = dir.is_dir();
    std::fs::create_dir_all(dir).map_err(|e| Error::from(e).with_file(dir))?;
    // Creating the lock file also finds out, before any snapshot, that `dir` is not writable.
    let lock = match crate::dirlock::lock(dir, true, crate::dirlock::Command::Backup, opts.wait) {
        Ok(l) => l,
        Err(e) => {
            if !existed {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    let r = backup_locked(spec, image, dir, opts);
    match &r {
        Err(_) if !existed => {
            // Nothing but what this run made: its catalog goes with the directory.
            let _ = std::fs::remove_file(dir.join(catalog::NAME));
            lock.remove_with_dir();
        }
        // A failure to record the outcome does not change what the backup did.
        Err(e) => {
            let _ = catalog::record_outcome(dir, image, now(), Err(&e.to_string()));
        }
        Ok(rep) => {
            let name = Path::new(&rep.file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = catalog::record_outcome(dir, image, now(), Ok(&name));
        }
    }
    r
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a backup must be a full diff by `opts.full_every` / `opts.full_after`: `path` leads
/// to the base, `graph` is the lineage.
fn periodic_full(
    opts: &BackupOptions,
    graph: &Graph,
    path: &[usize],
    cat: &catalog::Catalog,
) -> Option<String> {
    if let Some(n) = opts.full_every.filter(|&n| path.len() >= n) {
        return Some(format!(
            "the path to the base holds {} file(s) since its full diff (--full-every {n})",
            path.len()
        ));
    }
    let limit = opts.full_after?;
    let time = |e: &super::graph::Edge| {
        let recorded = e
            .file
            .path
            .file_name()
            .and_then(|n| cat.files.get(n.to_str()?)?.time);
        recorded.unwrap_or_else(|| {
            e.mtime
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    };
    let newest = graph
        .edges
        .iter()
        .filter(|e| e.file.from.is_none())
        .map(|e| (time(e), e))
        .max_by_key(|(t, _)| *t)?;
    let age = now().saturating_sub(newest.0);
    (age > limit.as_secs()).then(|| {
        format!(
            "the newest full diff of the lineage ({}, backed up {}) is {} old (--full-after {})",
            newest.1.file.name(),
            super::names::stamp(newest.0),
            show_secs(age),
            show_secs(limit.as_secs())
        )
    })
}

/// `secs` as days, hours, minutes and seconds (`1d2h`, `90s` → `1m30s`).
fn show_secs(secs: u64) -> String {
    let mut out = String::new();
    let mut rest = secs;
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= n {
            out.push_str(&format!("{}{unit}", rest / n));
            rest %= n;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Refuses what must not reach `rbd` or the file names: a hostile end snapshot in a header of
/// the files a backup may start from (`restorable`, of `graph`), a bad `--snap`; and bad
/// `--full-every` / `--full-after` values.
///
/// # Errors
/// As said.
pub(crate) fn check_names(
    graph: &Graph,
    restorable: &[(String, u64, Vec<usize>)],
    opts: &BackupOptions,
) -> Result<()> {
    for (s, _, path) in restorable {
        let last = path.last().map(|&i| &graph.edges[i].file);
        if let (Err(e), Some(f)) = (safe_arg("the end snapshot in the header", s), last) {
            return Err(e.with_file(&f.path));
        }
    }
    if let Some(s) = &opts.snap {
        safe_arg("snapshot name", s)?;
        if s.contains(['/', '@']) || s.starts_with('.') {
            return Err(Error::invalid(format!("bad snapshot name '{s}'")));
        }
    }
    if opts.full_every == Some(0) {
        return Err(Error::invalid("--full-every must be at least 1"));
    }
    if opts.full_after.is_some_and(|d| d.as_secs() == 0) {
        return Err(Error::invalid("--full-after must be longer than 0 s"));
    }
    Ok(())
}

/// [`backup`], with `dir` locked.
fn backup_locked(
    spec: &str,
    image: &str,
    dir: &Path,
    opts: &BackupOptions,
) -> Result<BackupReport> {
    let cleaned = finish_pending(dir, image)?;
    let graph = crate::archive::graph::discover(dir, image)?;
    let restorable = graph.restorable(&Default::default());
    check_names(&graph, &restorable, opts)?;
    let rbd = &opts.rbd;
    let snaps = rbd.snapshots(spec)?;
    // Made once per archive (after rbd has found the image): it tags the snapshot names.
    let archive_id = catalog::archive_id(dir)?;
    let snap = match &opts.snap {
        Some(s) => s.clone(),
        None => default_snap_name(&archive_id),
    };
    // Only files of this image id (its lineage) are a base: a recreated image starts anew.
    let image_id = rbd.image_id(spec)?;
    let (fsid, rbd_version) = (rbd.fsid()?, rbd.version()?);
    let cat = catalog::read(dir)?;
    let all = graph;
    let graph = crate::archive::graph::lineages(dir, image)?
        .into_iter()
        .find(|l| l.image_id == image_id)
        .map(|l| l.graph)
        .unwrap_or_default();
    let super::backup::Base {
        prev,
        full_reason,
        path: base,
    } = choose_base(
        opts,
        spec,
        image,
        &dir.display().to_string(),
        &snap,
        &snaps,
        &all,
        &graph,
        &cat,
    )?;
    // The new file takes the permission bits of the base's newest file, else of the
    // archive's newest file (a new archive: 0600).
    let like = base
        .as_ref()
        .and_then(|p| p.last())
        .map(|&i| &graph.edges[i])
        .or_else(|| graph.edges.iter().max_by_key(|e| e.mtime))
        .map(|e| e.file.path.clone());
    let compressed = opts.compress.is_some();
    let path = dir.join(file_name(image, prev.as_deref(), &snap, compressed));
    if path.exists() {
        return Err(Error::invalid("output exists").with_file(&path));
    }
    // Created first: an output that cannot be written is found before the snapshot is made.
    let output = Output::create_like(&path.to_string_lossy(), false, like.as_deref())?;
    // Recorded before the file is committed: a kill never leaves it unrecorded (a record of
    // a file that never came goes when the catalog is written next).
    catalog::record(
        dir,
        &file_name(image, prev.as_deref(), &snap, compressed),
        catalog::Record {
            image_id: image_id.clone(),
            time: Some(now()),
            fsid: fsid.clone(),
            rbd_version: rbd_version.clone(),
        },
    )?;
    let snap_spec = format!("{spec}@{snap}");
    rbd.run_ok(&["snap", "create", &snap_spec])?;
    match export_to(rbd, spec, &snap_spec, prev.as_deref(), output, &path, opts) {
        Ok(x) => {
            let mut report = BackupReport {
                file: path.display().to_string(),
                sums: crate::sums::sums_path(&path).display().to_string(),
                image: spec.to_string(),
                from_snap: prev,
                to_snap: snap.clone(),
                compressed,
                bytes: x.bytes,
                file_bytes: std::fs::metadata(&path).map_or(0, |m| m.len()),
                records: x.records,
                image_size: x.size,
                removed_snapshots: Vec::new(),
                warnings: Vec::new(),
                cleaned,
                full_reason,
                image_id,
                archive_id,
                fsid,
                rbd_version,
            };
            if let Some(k) = opts.keep_snaps {
                keep_snaps(rbd, spec, &snap, k, &mut report);
            }
            Ok(report)
        }
        Err(e) => {
            // export_to left no file (a failed commit was someone else's name).
            match rbd.run(&["snap", "rm", "--no-progress", &snap_spec]) {
                Ok(r) if r.ok => Err(e),
                Ok(r) => Err(Error::invalid(format!(
                    "{e} (and the snapshot {snap_spec} made for this backup could not be \
                     removed: {})",
                    r.stderr
                ))),
                Err(e2) => Err(Error::invalid(format!(
                    "{e} (and the snapshot {snap_spec} made for this backup could not be \
                     removed: {e2})"
                ))),
            }
        }
    }
}

/// The base of a backup, as [`choose_base`] chose it.
pub(crate) struct Base {
    /// Its start snapshot (none: a full backup).
    pub(crate) prev: Option<String>,
    /// Why the backup is full.
    pub(crate) full_reason: Option<String>,
    /// The files of the base's path.
    pub(crate) path: Option<Vec<usize>>,
}

/// The base of a backup of `spec` to the new snapshot `snap`: its start snapshot (none: a
/// full backup), why it is full, and the base's path in `graph` (the image's lineage; `all`
/// holds every file of the image in the archive `place`).
///
/// # Errors
/// `snap` exists on the image or ends a file of the archive.
#[allow(clippy::too_many_arguments)]
pub(crate) fn choose_base(
    opts: &BackupOptions,
    spec: &str,
    image: &str,
    place: &str,
    snap: &str,
    snaps: &[(u64, String)],
    all: &Graph,
    graph: &Graph,
    cat: &catalog::Catalog,
) -> Result<Base> {
    let restorable = graph.restorable(&Default::default());
    let has = |n: &str| snaps.iter().any(|(_, s)| s == n);
    if has(snap) {
        return Err(Error::invalid(format!(
            "snapshot '{snap}' already exists on {spec}"
        )));
    }
    if all.snapshots.iter().any(|s| s == snap) {
        return Err(Error::invalid(format!(
            "{} already holds a file ending at snapshot '{snap}'",
            place
        )));
    }
    // The base: the restorable snapshot created last on the cluster.
    let id = |n: &str| snaps.iter().find(|(_, s)| s == n).map(|(id, _)| *id);
    let base = restorable
        .iter()
        .filter_map(|r| Some((id(&r.0)?, r)))
        .max_by_key(|(id, _)| *id)
        .map(|(_, r)| r);
    let full_reason = if opts.full {
        Some("--full was asked".to_string())
    } else if graph.is_empty() && !all.is_empty() {
        Some(format!(
            "the files of {image} in {} are of another image id (the image was recreated): \
             a new lineage starts",
            place
        ))
    } else if graph.is_empty() {
        Some(format!("{} holds no backup of {image}", place))
    } else if restorable.is_empty() {
        Some(format!("no snapshot of {image} in {} is restorable", place))
    } else if base.is_none() {
        Some(format!(
            "no restorable snapshot of {} exists on {spec} any more",
            place
        ))
    } else {
        base.and_then(|(_, _, path)| periodic_full(opts, graph, path, cat))
    };
    let prev = if full_reason.is_some() {
        None
    } else {
        base.map(|(s, _, _)| s.clone())
    };
    Ok(Base {
        prev,
        full_reason,
        path: base.map(|(_, _, p)| p.clone()),
    })
}

/// Runs the export of `snap_spec` into `output` (for `path`) and writes its sidecar. On
/// failure no file of this call is left.
fn export_to(
    rbd: &Rbd,
    spec: &str,
    snap_spec: &str,
    prev: Option<&str>,
    mut output: Output,
    path: &Path,
    opts: &BackupOptions,
) -> Result<Exported> {
    let x = export_stream(
        rbd,
        spec,
        snap_spec,
        prev,
        &mut output,
        &path.display().to_string(),
        opts,
    )?;
    output.commit()?;
    // Committed without clobbering: the file is this call's.
    if let Err(e) = crate::sums::write_sums(path, &x.sums) {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(crate::sums::sums_path(path));
        return Err(e);
    }
    Ok(x)
}

/// Streams `rbd export-diff` of `snap_spec` (from `prev`) through the parser into `output`
/// (named `path` in messages), compressed as `opts` asks, checks rbd's status and the
/// snapshots of the stream; returns what was exported, with its sums.
pub(crate) fn export_stream(
    rbd: &Rbd,
    spec: &str,
    snap_spec: &str,
    prev: Option<&str>,
    output: &mut (dyn Write + Send),
    path: &str,
    opts: &BackupOptions,
) -> Result<Exported> {
    let snap = snap_spec.rsplit('@').next().unwrap_or_default();
    // `--from-snap=PREV` is one token: the name can never be read as an option of its own.
    let mut child = rbd.spawn_export_diff(spec, prev, snap)?;
    let stderr = collect_stderr(&mut child);
    // The pipe is dropped when the copy ends, so rbd cannot block on it after an error.
    let copied = match child.stdout.take() {
        Some(src) => stream_checked(src, output, opts.compress.as_ref(), opts.limit_rate),
        None => Err(Error::invalid("internal: no pipe from rbd")),
    };
    let status = child.wait()?;
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        // rbd's own failure explains a cut stream better than the parser can.
        let mut e = rbd_failed(&format!("rbd export-diff {snap_spec}"), &err);
        if let Err(c) = copied {
            if c.is_io() {
                e = Error::invalid(format!("{e} (while writing {path}: {c})"));
            }
        }
        return Err(e);
    }
    // A stream error is located in the stream rbd wrote.
    let x =
        copied.map_err(|e| e.with_file(format!("rbd export-diff {snap_spec} (into {path})")))?;
    if x.to.as_deref() != Some(snap) || x.from.as_deref() != prev {
        return Err(Error::invalid(format!(
            "rbd export-diff of {spec} wrote a diff from {} to {}, expected from {} to '{snap}'",
            crate::format::show_from(x.from.as_deref()),
            crate::format::show_to(x.to.as_deref()),
            crate::format::show_from(prev),
        ))
        .with_file(path));
    }
    Ok(x)
}

/// Removes the snapshots of `spec` this archive's backups made (named with its tag,
/// [`super::names::is_own_snap`]) beyond the newest `k` of them, never `made` (the newest
/// restorable snapshot, the base of the next incremental) nor any other snapshot. The
/// backup is complete: what fails here is a warning.
pub(crate) fn keep_snaps(rbd: &Rbd, spec: &str, made: &str, k: usize, report: &mut BackupReport) {
    let snaps = match rbd.snapshots(spec) {
        Ok(s) => s,
        Err(e) => {
            report.warnings.push(format!("--keep-snaps: {e}"));
            return;
        }
    };
    let ours: Vec<&String> = snaps
        .iter()
        .map(|(_, n)| n)
        .filter(|n| n.as_str() != made && is_own_snap(n, &report.archive_id))
        .collect();
    // `made` is kept besides the others when it is one of ours.
    let keep = if is_own_snap(made, &report.archive_id) {
        k - 1
    } else {
        k
    };
    let excess = ours.len().saturating_sub(keep);
    for name in ours.into_iter().take(excess) {
        if let Err(e) = safe_arg("snapshot name", name) {
            report.warnings.push(format!("not removed: {e}"));
            continue;
        }
        let s = format!("{spec}@{name}");
        match rbd.run(&["snap", "rm", "--no-progress", &s]) {
            Ok(r) if r.ok => report.removed_snapshots.push(name.clone()),
            Ok(r) => report
                .warnings
                .push(format!("could not remove snapshot {s}: {}", r.stderr)),
            Err(e) => report
                .warnings
                .push(format!("could not remove snapshot {s}: {e}")),
        }
    }
}
