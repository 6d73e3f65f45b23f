//! Operator workflows over a backup directory: `restore` and `prune` (and `backup`, which
//! lives in [`crate::archive::backup`], re-exported).
//!
//! The backups of one image live in a directory as a graph of diff files (plain `.diff` or
//! compressed `.diff.zst`, each with a `.sums` sidecar) over snapshots. It is found from the
//! files' own headers (start and end snapshot, [`crate::archive::graph`]); names only select the image's
//! files (`IMAGE@…` ending in `.diff` or `.diff.zst`) and are written for humans:
//! `IMAGE@TO.full.diff` for a full diff, `IMAGE@FROM..TO.diff` for an incremental.
//!
//! Discovery and names live in [`crate::archive`]; [`backup`] and [`restore`] delegate the
//! cluster side to the `rbd` CLI ([`Rbd`], [`crate::rbd`]):
//! `rbd snap create` + `rbd export-diff … -` streamed through the stream parser into an atomic
//! output, and a one-pass merge of the best path streamed into `rbd import-diff -`. [`prune`]
//! is offline: it keeps the newest N restorable snapshots ([`crate::archive::retention`]),
//! merges the path to the oldest kept one into one full diff and deletes the files no kept
//! snapshot needs only once that is committed and verified.
//!
//! Files of another image id under the same name (a recreated image, recorded in the
//! archive's [`crate::archive::catalog`]) are another lineage: `backup` never bases an
//! incremental on them, `restore` and `prune` take the newest lineage.
//!
//! Names that reach `rbd` (image specs, snapshot names from `--snap` or from diff headers)
//! are refused when `rbd` could take them for options (a leading `-`, control characters),
//! and option values are passed as single `--option=VALUE` tokens.
//!
//! # Concurrency and interrupted runs
//!
//! `backup` and `prune` hold an exclusive [`crate::dirlock`] lock on the directory, `restore`
//! a shared one; a conflicting run is refused at once. A prune is made safe against a kill
//! by a journal ([`crate::journal`]): before it commits its output it writes (atomically,
//! fsynced) `.OUTPUT.prune-journal`, naming the output and the files it deletes, and it
//! removes the journal after deleting them. Between the commit and the deletions the
//! directory holds both; chain discovery (of every command, `verify` of a directory too)
//! then ignores the superseded files as long as the journal's output exists (outputs appear
//! whole, by rename). A journal whose output does not exist is stale (the prune never
//! committed) and ignored. The next run holding the exclusive lock finishes the job: it
//! verifies the output, deletes the superseded files and their sidecars, then the journal
//! (a stale journal is just deleted), and removes the temporary files (`.NAME.XXXXXX.tmp`)
//! of killed runs of the image, which no live run can be writing while it holds the lock.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::Stdio;

use serde::Serialize;

use crate::archive::{file_id, finish_pending, read_chain_file, sync_dir, verify_chain};
use crate::compress::CompressOptions;
use crate::error::{Error, Result};
use crate::merge::{merge_files_to, merge_input, open_input, plan, MergeOptions};
use crate::rbd::{collect_stderr, image_name, is_broken_pipe, rbd_failed, safe_arg};
use crate::Version;

pub use crate::archive::backup::{backup, BackupOptions, BackupReport};
pub use crate::archive::names::{
    default_snap_name, escape, file_name, images_in, stamp, unescape, utc_stamp, MAX_IMAGE_NAME,
    SNAP_PREFIX,
};
pub use crate::archive::{discover_chain, ChainFile};
pub use crate::rbd::Rbd;

/// Options of [`restore`].
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// The image whose backups are restored (default: the only image with files in the
    /// directory, else the target's name).
    pub image: Option<String>,
    /// Restore this snapshot (default: the newest restorable one, see
    /// [`crate::archive::graph`]).
    pub to: Option<String>,
    /// Create the target image (with the size of the restored state) when it does not exist
    /// (and remove it again if the restore fails).
    pub create: bool,
    /// At most this many bytes per second into `rbd import-diff`.
    pub limit_rate: Option<u64>,
    /// How to run `rbd`.
    pub rbd: Rbd,
}

/// What [`restore`] did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// The target image.
    pub image: String,
    /// The files restored, in order: the path of healthy files with the fewest bytes.
    pub files: Vec<String>,
    /// Bytes of those files.
    pub bytes_read: u64,
    /// Files of the image not used, and why (damaged, unreadable, or on a path of more
    /// bytes).
    pub passed_over: Vec<crate::archive::graph::PassedOver>,
    /// Said when newer snapshots than the one restored (by default) are not restorable.
    pub warnings: Vec<String>,
    /// Start snapshot of the restored range (none when it starts with a full diff).
    pub from_snap: Option<String>,
    /// The snapshot the target now holds.
    pub to_snap: Option<String>,
    /// Image size of the restored state.
    pub image_size: u64,
    /// True when the target was created.
    pub created: bool,
    /// Bytes sent to `rbd import-diff`.
    pub bytes: u64,
    /// Data records sent (`w` + `z`).
    pub records: u64,
}

/// Chooses the image whose backups `dir` holds for a restore into `target` (an image name,
/// none for a file).
pub(crate) fn pick_image(dir: &Path, target: Option<&str>, given: Option<&str>) -> Result<String> {
    if let Some(g) = given {
        return Ok(g.to_string());
    }
    let images = images_in(dir)?;
    if images.len() == 1 {
        return Ok(images.into_iter().next().unwrap_or_default());
    }
    if let Some(t) = target.filter(|t| images.contains(*t)) {
        return Ok(t.to_string());
    }
    if images.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no backup files (IMAGE@….diff[.zst])",
            dir.display()
        )));
    }
    Err(Error::invalid(format!(
        "{} holds backups of several images ({}): choose one with --image",
        dir.display(),
        images.into_iter().collect::<Vec<_>>().join(", ")
    )))
}

/// Restores a snapshot of the archive `dir` into `spec` (`POOL/IMAGE`): takes the path of
/// healthy files with the fewest bytes from a full diff to `opts.to` (default: the newest
/// restorable snapshot), verifying each file of it (structure, sums sidecar where present)
/// and taking another path round a file that fails ([`crate::archive::graph::Graph::choose`]),
/// merges the path in one pass straight into the stdin of `rbd import-diff - POOL/IMAGE` and
/// checks its status. With `opts.create` the image is created first when it does not exist,
/// and removed again if the restore fails.
///
/// `progress` receives `(payload bytes sent, payload bytes total)`.
///
/// # Errors
/// No file of the image; no healthy path leads to the snapshot (the message names the files
/// passed over and why); an `rbd` call fails (its message is passed on).
pub fn restore(
    dir: &Path,
    spec: &str,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    image_name(spec)?;
    if let Some(i) = &opts.image {
        safe_arg("image name", i)?;
    }
    if !dir.is_dir() {
        return Err(Error::invalid("not a directory").with_file(dir));
    }
    let _lock = crate::dirlock::lock(dir, false)?;
    let src_image = pick_image(dir, Some(image_name(spec)?), opts.image.as_deref())?;
    let (choice, names) = best_path(dir, &src_image, opts.to.as_deref())?;
    let opened = names
        .iter()
        .map(|p| open_input(p))
        .collect::<Result<Vec<_>>>()?;
    let mut inputs = opened.iter().map(merge_input).collect::<Result<Vec<_>>>()?;
    let p = plan(&inputs, &MergeOptions::default())?;
    let size = p.metadata().image_size.unwrap_or(0);
    let rbd = &opts.rbd;
    let mut created = false;
    if opts.create {
        let r = rbd.run(&["info", spec])?;
        if !r.ok {
            if r.code != Some(2) && !r.stderr.contains("No such file") {
                return Err(rbd_failed(&format!("rbd info {spec}"), &r.stderr));
            }
            rbd.run_ok(&["create", "--size", &format!("{size}B"), spec])?;
            created = true;
        }
    }
    let mut child = rbd
        .command()
        .args(["import-diff", "--no-progress", "-", spec])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| rbd.spawn_error(e))?;
    let stderr = collect_stderr(&mut child);
    let written = match child.stdin.take() {
        Some(stdin) => {
            let out = crate::rate::Limited::new(
                BufWriter::with_capacity(1 << 20, stdin),
                opts.limit_rate,
            );
            p.write(&mut inputs, out, Version::V1, progress)
                .and_then(|(mut w, stats)| {
                    w.flush()?;
                    Ok(stats)
                })
        }
        None => Err(Error::invalid("internal: no pipe to rbd")),
    };
    // The pipe is closed here (the writer was consumed or dropped): rbd sees the end.
    let status = child.wait()?;
    let err = stderr.join().unwrap_or_default();
    let result = match written {
        // Our side failed first (a bad input, a read error): rbd only saw a cut stream.
        Err(e) if !is_broken_pipe(&e) => Err(e),
        _ if !status.success() => Err(rbd_failed(
            &format!("rbd import-diff into {spec} (from {})", dir.display()),
            &err,
        )),
        written => written,
    };
    let result = match result {
        // An image this call created holds a partial restore: it goes again.
        Err(e) if created => match rbd.run(&["rm", "--no-progress", spec]) {
            Ok(r) if r.ok => Err(e),
            Ok(r) => Err(Error::invalid(format!(
                "{e} (and the image {spec} created for this restore could not be removed: {})",
                r.stderr
            ))),
            Err(e2) => Err(Error::invalid(format!(
                "{e} (and the image {spec} created for this restore could not be removed: {e2})"
            ))),
        },
        r => r,
    };
    result.map(|stats| RestoreReport {
        image: spec.to_string(),
        files: names,
        bytes_read: choice.bytes,
        passed_over: choice.passed_over,
        warnings: choice.warnings,
        from_snap: stats.from_snap,
        to_snap: stats.to_snap,
        image_size: size,
        created,
        bytes: stats.bytes_written,
        records: stats.records,
    })
}

/// Says that `others` other lineages of `image` were not looked at.
/// The path of healthy files with the fewest bytes to `to` (default: the newest restorable
/// snapshot) in the newest lineage of `image` that holds it, and its files' names; other
/// lineages are a warning of the choice.
pub(crate) fn best_path(
    dir: &Path,
    image: &str,
    to: Option<&str>,
) -> Result<(crate::archive::graph::Choice, Vec<String>)> {
    let (graph, others) = crate::archive::graph::newest_lineage(dir, image, to)?;
    if graph.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no backup files of {image}",
            dir.display()
        )));
    }
    let mut choice = graph.choose(to).map_err(|e| e.with_file(dir))?;
    lineage_warning(&mut choice.warnings, others, image);
    let files = choice
        .path
        .iter()
        .map(|&i| graph.edges[i].file.name())
        .collect();
    Ok((choice, files))
}

fn lineage_warning(warnings: &mut Vec<String>, others: usize, image: &str) {
    if others > 0 {
        warnings.push(format!(
            "{others} other lineage(s) of {image} (files of another image id, see `list`) \
             were not used"
        ));
    }
}

/// Options of [`restore_to_file`].
#[derive(Clone, Debug, Default)]
pub struct FileRestoreOptions {
    /// The image whose backups are restored (default: the only image with files in the
    /// directory).
    pub image: Option<String>,
    /// Restore this snapshot (default: the newest restorable one).
    pub snap: Option<String>,
    /// Overwrite a target that exists without a state file saying it holds a snapshot of
    /// this chain (see [`crate::apply`]).
    pub force: bool,
    /// Where the target's state sidecar lives (needed for a block device).
    pub state_file: Option<std::path::PathBuf>,
}

/// What [`restore_to_file`] did.
#[derive(Clone, Debug, Serialize)]
pub struct FileRestoreReport {
    /// The image whose backups were restored.
    pub image: String,
    /// The snapshot restored.
    pub snap: String,
    /// The files of the path, in order.
    pub files: Vec<String>,
    /// Bytes of those files.
    pub bytes_read: u64,
    /// Files of the image not used, and why.
    pub passed_over: Vec<crate::archive::graph::PassedOver>,
    /// Said when newer snapshots than the one restored (by default) are not restorable.
    pub warnings: Vec<String>,
    /// True when the target file was created.
    pub created: bool,
    /// What the apply did.
    pub apply: crate::apply::ApplyReport,
}

/// Restores a snapshot of the archive `dir` offline into the raw image file or block device
/// `target`: takes the path of healthy files with the fewest bytes, as [`restore`] does, and
/// applies it with [`crate::apply`] (a missing target is created as a sparse file; an
/// interrupted run is resumed by running it again). No cluster is needed.
///
/// # Errors
/// No file of the image; no healthy path leads to the snapshot; the apply refuses the
/// target (it exists with no state file, without `opts.force`; a block device without
/// `opts.state_file`) or fails.
pub fn restore_to_file(
    dir: &Path,
    target: &Path,
    opts: &FileRestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<FileRestoreReport> {
    if !dir.is_dir() {
        return Err(Error::invalid("not a directory").with_file(dir));
    }
    let _lock = crate::dirlock::lock(dir, false)?;
    let image = pick_image(dir, None, opts.image.as_deref())?;
    let (choice, files) = best_path(dir, &image, opts.snap.as_deref())?;
    let created = !target.exists();
    let aopts = crate::apply::ApplyOptions {
        create: created,
        force: opts.force,
        check_sums: false,
        state_file: opts.state_file.clone(),
    };
    let apply = crate::apply::apply_chain_with_progress(&files, target, &aopts, progress)?;
    Ok(FileRestoreReport {
        image,
        snap: choice.target,
        files,
        bytes_read: choice.bytes,
        passed_over: choice.passed_over,
        warnings: choice.warnings,
        created,
        apply,
    })
}

// ---------------------------------------------------------------------------------------------
// prune

/// What [`prune`] did (or would do, for a dry run).
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    /// Files of the image before pruning.
    pub files: usize,
    /// The snapshots kept restorable, oldest first.
    pub kept_snapshots: Vec<String>,
    /// The files merged into [`PruneReport::output`], in order.
    pub merged: Vec<String>,
    /// The new full diff to the oldest kept snapshot (none when no merge is needed).
    pub output: Option<String>,
    /// The files that stay, besides the output.
    pub kept: Vec<String>,
    /// The files deleted (for a dry run: to be deleted), their sidecars aside.
    pub delete: Vec<String>,
    /// Files deleted, sidecars included (none for a dry run).
    pub deleted: Vec<String>,
    /// Files left alone because no restore can use them, with the reason.
    pub left: Vec<crate::archive::graph::PassedOver>,
    /// True for a dry run: nothing was changed.
    pub dry_run: bool,
    /// Size of the new file.
    pub bytes: u64,
    /// Bytes of the image's readable files before.
    pub bytes_before: u64,
    /// Bytes of them after (for a dry run an estimate: the output counted at the bytes of
    /// the files it merges).
    pub bytes_after: u64,
    /// Files of an interrupted earlier run removed first: what a half-done prune had
    /// replaced, its journal, temporary files.
    pub cleaned: Vec<String>,
}

/// Prunes the files of `image` in `dir` so that its newest `keep` restorable snapshots stay
/// restorable ([`crate::archive::retention`] says which files stay): the best path to the
/// oldest kept snapshot is merged into one new full diff (compressed like the last file
/// merged), written atomically with its sidecar and verified, the directory fsynced, and
/// only then are the files no kept snapshot needs deleted, with their sidecars. A journal
/// written before the commit names them, so that the next run finishes a prune killed in
/// between (see the module docs); what an interrupted run left is cleaned up first. Files no
/// restore can use (unreachable ones) are left alone and reported. With `dry_run` nothing
/// is changed.
///
/// # Errors
/// `keep` is 0; a file of the image is damaged or unreadable (prune rewrites only a healthy
/// archive; the message names the files and why); no snapshot is restorable; the new file
/// exists or cannot be written or verified (then every original file is left as it was).
pub fn prune(
    dir: &Path,
    image: &str,
    keep: usize,
    dry_run: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PruneReport> {
    if keep == 0 {
        return Err(Error::invalid("--keep must be at least 1"));
    }
    if !dir.is_dir() {
        return Err(Error::invalid("not a directory").with_file(dir));
    }
    // A dry run changes nothing: it only needs the directory not to change meanwhile.
    let _lock = crate::dirlock::lock(dir, !dry_run)?;
    let cleaned = if dry_run {
        Vec::new()
    } else {
        finish_pending(dir, image)?
    };
    // The newest lineage is pruned; older ones (a recreated image's) are left alone.
    let mut lineages = crate::archive::graph::lineages(dir, image)?;
    let graph = lineages.pop().map(|l| l.graph).unwrap_or_default();
    let older: Vec<crate::archive::graph::PassedOver> = lineages
        .iter()
        .flat_map(|l| {
            let why = format!(
                "an older lineage (image id {})",
                l.image_id.as_deref().unwrap_or("unknown")
            );
            l.graph
                .edges
                .iter()
                .map(|e| e.file.name())
                .chain(l.graph.unreadable.iter().map(|u| u.file.clone()))
                .map(move |file| crate::archive::graph::PassedOver {
                    file,
                    reason: why.clone(),
                })
        })
        .collect();
    let bytes_before: u64 = graph.edges.iter().map(|e| e.bytes).sum();
    let mut report = PruneReport {
        files: graph.edges.len() + graph.unreadable.len(),
        kept_snapshots: Vec::new(),
        merged: Vec::new(),
        output: None,
        kept: graph.edges.iter().map(|e| e.file.name()).collect(),
        delete: Vec::new(),
        deleted: Vec::new(),
        left: older.clone(),
        dry_run,
        bytes: 0,
        bytes_before,
        bytes_after: bytes_before,
        cleaned,
    };
    if graph.is_empty() {
        return Ok(report);
    }
    let damaged = graph.damaged();
    let bad: Vec<String> = damaged
        .iter()
        .map(|(&i, why)| format!("{} ({why})", graph.edges[i].file.name()))
        .chain(
            graph
                .unreadable
                .iter()
                .map(|u| format!("{} ({})", u.file, u.reason)),
        )
        .collect();
    if !bad.is_empty() {
        return Err(Error::invalid(format!(
            "prune rewrites only a healthy archive; damaged or unreadable files of {image}: {} \
             (restore goes round them; move them away to prune)",
            bad.join("; ")
        ))
        .with_file(dir));
    }
    let plan = crate::archive::retention::plan(&graph, &damaged, keep).ok_or_else(|| {
        Error::invalid(format!("no snapshot of {image} is restorable")).with_file(dir)
    })?;
    let edge = |i: usize| &graph.edges[i];
    let names = |v: &[usize]| v.iter().map(|&i| edge(i).file.name()).collect::<Vec<_>>();
    report.kept_snapshots = plan.keep.clone();
    report.kept = names(&plan.kept);
    report.delete = names(&plan.delete);
    report.left.extend(plan.left.iter().cloned());
    let k0 = plan.keep[0].clone();
    let mut merge = plan.merge.clone();
    let mut out = None;
    if let Some(&last) = merge.last() {
        let p = dir.join(file_name(image, None, &k0, edge(last).file.compressed));
        // A kept full diff to the snapshot under that name already: nothing to merge.
        if plan.kept.iter().any(|&i| edge(i).file.path == p) {
            merge.clear();
        } else {
            out = Some(p);
        }
    }
    report.merged = names(&merge);
    report.output = out.as_ref().map(|p| p.to_string_lossy().into_owned());
    let deleted_bytes: u64 = plan.delete.iter().map(|&i| edge(i).bytes).sum();
    let merged_bytes: u64 = merge.iter().map(|&i| edge(i).bytes).sum();
    report.bytes_after = bytes_before - deleted_bytes + merged_bytes;
    if dry_run || (out.is_none() && plan.delete.is_empty()) {
        return Ok(report);
    }
    let journal = match &out {
        None => None,
        Some(out) => {
            if std::fs::symlink_metadata(out).is_ok() {
                return Err(Error::invalid("the merged output exists already").with_file(out));
            }
            Some(merge_output(
                dir,
                &graph,
                &merge,
                &plan.delete,
                out,
                &k0,
                progress,
            )?)
        }
    };
    if let Some(o) = &out {
        report.bytes = std::fs::metadata(o).map_or(0, |m| m.len());
        report.bytes_after = bytes_before - deleted_bytes + report.bytes;
    }
    for &i in &plan.delete {
        let f = &edge(i).file.path;
        for p in [f.clone(), crate::sums::sums_path(f)] {
            match std::fs::remove_file(&p) {
                Ok(()) => report.deleted.push(p.to_string_lossy().into_owned()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::from(e).with_file(&p)),
            }
        }
    }
    sync_dir(dir)?;
    if let Some(j) = journal {
        std::fs::remove_file(&j).map_err(|e| Error::from(e).with_file(&j))?;
        sync_dir(dir)?;
    }
    Ok(report)
}

/// Merges the files `merge` of `graph` into the full diff `out` to snapshot `k0` under a
/// journal naming `delete` as superseded: commits it (never clobbering), writes its sidecar,
/// verifies it and fsyncs the directory. Returns the journal's path. On failure nothing of
/// this run is left.
fn merge_output(
    dir: &Path,
    graph: &crate::archive::graph::Graph,
    merge: &[usize],
    delete: &[usize],
    out: &Path,
    k0: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<std::path::PathBuf> {
    let base = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let edge = |i: usize| &graph.edges[i].file;
    let compressed = merge.last().is_some_and(|&i| edge(i).compressed);
    let journal = crate::journal::write(
        dir,
        &crate::journal::Journal {
            output: base(out),
            supersedes: delete.iter().map(|&i| base(&edge(i).path)).collect(),
        },
    )?;
    // The merged file is of the lineage of what it merges, recorded before its commit.
    let catalog = crate::archive::catalog::read(dir)?;
    if let Some(rec) = merge
        .last()
        .and_then(|&i| catalog.files.get(&base(&edge(i).path)))
    {
        if let Err(e) = crate::archive::catalog::record(dir, &base(out), rec.clone()) {
            let _ = std::fs::remove_file(&journal);
            return Err(e);
        }
    }
    let inputs: Vec<String> = merge.iter().map(|&i| edge(i).name()).collect();
    let out_s = out.to_string_lossy().into_owned();
    let copts = compressed.then(CompressOptions::default);
    // The commit does not clobber: when it fails, the name is someone else's file and
    // nothing of this run is left (the temporary file goes with the error).
    if let Err(e) = merge_files_to(
        &inputs,
        &out_s,
        false,
        &MergeOptions::default(),
        copts.as_ref(),
        progress,
    ) {
        let _ = std::fs::remove_file(&journal);
        return Err(e);
    }
    let made = file_id(out)?;
    // The merged file keeps the time of the backup of its snapshot (the last file merged),
    // which snapshot order and times ([`crate::archive::listing`]) read.
    let when = merge
        .last()
        .map(|&i| graph.edges[i].mtime)
        .unwrap_or_else(std::time::SystemTime::now);
    let checked = std::fs::File::options()
        .write(true)
        .open(out)
        .and_then(|f| f.set_modified(when))
        .map_err(|e| Error::from(e).with_file(out))
        .and_then(|()| crate::sums::write_sums_for(out))
        .and_then(|_| {
            let f = read_chain_file(out.to_path_buf())?;
            if f.from.is_some() || f.to.as_deref() != Some(k0) {
                return Err(Error::invalid(format!(
                    "the merged file runs from {} to {}, not from a full diff to '{k0}'",
                    crate::format::show_from(f.from.as_deref()),
                    crate::format::show_to(f.to.as_deref())
                ))
                .with_file(out));
            }
            verify_chain(&[f])?;
            sync_dir(dir)
        });
    if let Err(e) = checked {
        // Only the file this run committed goes (never one that replaced it meanwhile).
        if file_id(out).ok() == Some(made) {
            let _ = std::fs::remove_file(crate::sums::sums_path(out));
            let _ = std::fs::remove_file(out);
        }
        // After the output: a journal without its output is stale, never the reverse.
        let _ = std::fs::remove_file(&journal);
        return Err(e);
    }
    Ok(journal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_has_the_format() {
        let s = utc_stamp();
        assert_eq!(s.len(), 16, "{s}");
        assert_eq!(&s[8..9], "T");
        assert!(s.ends_with('Z'));
        assert!(s.starts_with("20"));
        assert_eq!(stamp(86_400 * 365 + 3661), "19710101T010101Z");
    }
}
