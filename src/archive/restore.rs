//! `restore` of an archive: the best path to a snapshot merged in one pass and streamed into
//! `rbd import-diff -` ([`restore`]), or applied offline to a raw file or block device
//! ([`restore_to_file`]). Both hold the archive's shared [`crate::dirlock`] lock for their
//! whole run (waiting up to the `wait` asked for). Snapshot names that reach `rbd` are
//! refused when it could take them for options ([`crate::rbd`]).

use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::archive::pick_image;
use crate::dirlock::Command;
use crate::error::{Error, Result};
use crate::merge::{merge_input, open_input, plan, MergeOptions};
use crate::rbd::Rbd;
use crate::rbd::{collect_stderr, image_name, is_broken_pipe, rbd_failed, safe_arg};
use crate::Version;

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
    /// Wait up to this long for another run's lock on the archive (default: refuse at once).
    pub wait: Option<std::time::Duration>,
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

/// The name of the target image `spec`, once it and the image asked for are known to be
/// safe to pass to `rbd`.
///
/// # Errors
/// Either could be taken for an option, or `spec` is not an image.
pub(crate) fn checked_names<'s>(spec: &'s str, opts: &RestoreOptions) -> Result<&'s str> {
    let target = image_name(spec)?;
    if let Some(i) = &opts.image {
        safe_arg("image name", i)?;
    }
    Ok(target)
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
    let target = checked_names(spec, opts)?;
    if !dir.is_dir() {
        return Err(Error::invalid("not a directory").with_file(dir));
    }
    let _lock = crate::dirlock::lock(dir, false, Command::Restore, opts.wait)?;
    let src_image = pick_image(dir, Some(target), opts.image.as_deref())?;
    let (choice, names) = best_path(dir, &src_image, opts.to.as_deref())?;
    let opened = names
        .iter()
        .map(|p| open_input(p))
        .collect::<Result<Vec<_>>>()?;
    let mut inputs = opened.iter().map(merge_input).collect::<Result<Vec<_>>>()?;
    let (stats, size, created) = import_merged(
        &mut inputs,
        spec,
        &dir.display().to_string(),
        opts,
        progress,
    )?;
    Ok(RestoreReport {
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

/// Merges `inputs` (a path of the archive `place`) in one pass into `rbd import-diff - spec`
/// (creating the image first when `opts.create` asks and it does not exist; removed again
/// when the restore then fails): the merge's stats, the restored image size and whether the
/// image was created.
///
/// # Errors
/// The merge or an `rbd` call fails.
pub(crate) fn import_merged(
    inputs: &mut [crate::merge::MergeInput<'_>],
    spec: &str,
    place: &str,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(crate::merge::MergeStats, u64, bool)> {
    let p = plan(inputs, &MergeOptions::default())?;
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
    let mut child = rbd.spawn_import_diff(spec)?;
    let stderr = collect_stderr(&mut child);
    let written = match child.stdin.take() {
        Some(stdin) => {
            let out = crate::rate::Limited::new(
                BufWriter::with_capacity(1 << 20, stdin),
                opts.limit_rate,
            );
            p.write(inputs, out, Version::V1, progress)
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
            &format!("rbd import-diff into {spec} (from {place})"),
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
    result.map(|stats| (stats, size, created))
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
    /// Wait up to this long for another run's lock on the archive (default: refuse at once).
    pub wait: Option<std::time::Duration>,
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
    let _lock = crate::dirlock::lock(dir, false, Command::Restore, opts.wait)?;
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

#[cfg(test)]
mod tests {
    use crate::archive::names::{stamp, utc_stamp};

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
