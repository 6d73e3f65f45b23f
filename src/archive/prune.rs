//! `prune`: apply a retention policy to an image's files in an archive, offline.
//!
//! The policy ([`super::policy`]) chooses the restorable snapshots that stay restorable
//! (by backup time, [`super::listing`]'s snapshot time); [`super::retention`] plans the files:
//! files between kept snapshots stay, each run of files across dropped snapshots is merged
//! into one new file (a full diff or an incremental between two kept snapshots), and every
//! other file a restore could use is deleted.
//!
//! # Order of the work, and a kill at any point
//!
//! 1. A journal ([`crate::journal`], `.FIRST-OUTPUT.prune-journal`, written atomically and
//!    fsynced) names every output and every file to delete.
//! 2. Each output is recorded in the catalog (with the record of the last file it merges),
//!    merged in one pass into a temporary file beside it and committed by rename (never over
//!    a file), given the modification time of the last file merged, its sidecar written and
//!    the file verified (structure, sums, the snapshots it runs between).
//! 3. The directory is fsynced; only then are the files no kept snapshot needs deleted with
//!    their sidecars, the directory fsynced again and the journal removed.
//!
//! While the journal names outputs that are not all there, it is *stale* and the old files
//! count as before: every snapshot restorable before stays restorable. Once every output is
//! there, every command passes over the files the journal supersedes (the outputs now
//! serve the kept snapshots). The next run holding the exclusive lock (`backup`, `prune`)
//! finishes a journal whose outputs are all there (verifies them, writes a missing sidecar,
//! deletes the superseded files, then the journal); of a stale one it keeps the outputs that
//! are there and verify (ordinary files of the graph, which the next prune uses instead of
//! merging again) and removes the rest and the journal. A rerun of the prune then completes:
//! a policy keeps the same snapshots when only snapshots it dropped are gone.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::catalog;
use super::graph::{Graph, PassedOver};
use super::names::{file_name, stamp};
use super::policy::{select, Policy, Snap};
use super::retention;
use super::{file_id, finish_pending, pick_image, read_chain_file, sync_dir, verify_chain};
use crate::compress::CompressOptions;
use crate::error::{Error, Result};
use crate::merge::{merge_files_to, MergeOptions};

/// Options of [`prune`].
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// The image whose files are pruned (default: the only image with files in the
    /// directory; with several, the prune is refused and names them).
    pub image: Option<String>,
    /// Which snapshots stay restorable. An empty policy is refused.
    pub policy: Policy,
    /// Print the plan only; change nothing.
    pub dry_run: bool,
    /// Compress the merged files (`Some(true)`), write them plain (`Some(false)`), or (none)
    /// compress each like the last (newest) file it merges.
    pub compress: Option<bool>,
    /// How long to wait for another run's lock on the archive (none: refuse at once, see
    /// [`crate::dirlock`]).
    pub wait: Option<std::time::Duration>,
    /// Tests only: stop (as a kill would, leaving everything as it is) after this many
    /// steps of the work (the journal, each commit, sidecar, fsync and removal).
    #[doc(hidden)]
    pub stop_after: Option<usize>,
}

/// One merge of a prune.
#[derive(Clone, Debug, Serialize)]
pub struct MergeReport {
    /// The files merged, in order.
    pub inputs: Vec<String>,
    /// The new file.
    pub output: String,
    /// Its start snapshot (none: a full diff).
    pub from_snap: Option<String>,
    /// Its end snapshot.
    pub to_snap: String,
    /// True when it is compressed.
    pub compressed: bool,
    /// Bytes of the inputs.
    pub input_bytes: u64,
    /// Its size (for a dry run: none).
    pub bytes: Option<u64>,
}

/// A kept snapshot and the rules that keep it.
#[derive(Clone, Debug, Serialize)]
pub struct KeptBy {
    /// The snapshot.
    pub snapshot: String,
    /// Its backup time, seconds since the epoch.
    pub time: u64,
    /// Its time as `YYYYmmddTHHMMSSZ`.
    pub time_utc: String,
    /// The rules (`last`, `hourly`, `daily`, `weekly`, `monthly`, `yearly`, `within`, or
    /// `newest` for the newest restorable snapshot no rule kept).
    pub rules: Vec<String>,
}

/// What [`prune`] did (or would do, for a dry run).
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    /// The image pruned.
    pub image: String,
    /// The policy applied.
    pub policy: Policy,
    /// Files of the image before pruning.
    pub files: usize,
    /// The snapshots kept restorable, oldest first.
    pub kept_snapshots: Vec<String>,
    /// Why each kept snapshot is kept, oldest first.
    pub kept_by: Vec<KeptBy>,
    /// The restorable snapshots dropped, oldest first.
    pub dropped_snapshots: Vec<String>,
    /// The merges: runs of files across dropped snapshots, each into one new file.
    pub merges: Vec<MergeReport>,
    /// The inputs of the merge into a full diff, if any (the first such merge).
    pub merged: Vec<String>,
    /// Its output.
    pub output: Option<String>,
    /// The files that stay, besides the outputs.
    pub kept: Vec<String>,
    /// The files deleted (for a dry run: to be deleted), their sidecars aside.
    pub delete: Vec<String>,
    /// Files deleted, sidecars included (none for a dry run).
    pub deleted: Vec<String>,
    /// Files left alone because no restore can use them, with the reason.
    pub left: Vec<PassedOver>,
    /// True for a dry run: nothing was changed.
    pub dry_run: bool,
    /// Size of the new files.
    pub bytes: u64,
    /// Bytes of the image's readable files before.
    pub bytes_before: u64,
    /// Bytes of them after (for a dry run an estimate: each output counted at the bytes of
    /// the files it merges).
    pub bytes_after: u64,
    /// Files of an interrupted earlier run removed first: what a half-done prune had
    /// replaced, its journal, temporary files.
    pub cleaned: Vec<String>,
}

/// The steps left before a test's stop.
struct Steps {
    left: Option<usize>,
    stopped: bool,
}

impl Steps {
    fn step(&mut self) -> Result<()> {
        match &mut self.left {
            Some(0) => {
                self.stopped = true;
                Err(Error::invalid("stopped (test)"))
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

fn base(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Prunes the files of one image in `dir` by `opts.policy` (see the module docs): the kept
/// snapshots stay restorable, from the files left and the merged files. Files no restore can
/// use are left alone and reported; older lineages (a recreated image's files) are left
/// alone. With `opts.dry_run` nothing is changed.
///
/// `progress` receives `(payload bytes, total)` of each merge in turn.
///
/// # Errors
/// The policy is empty; `dir` holds files of several images and `opts.image` says none; a
/// file of the image is damaged or unreadable (prune rewrites only a healthy archive; the
/// message names the files and why); no snapshot is restorable; a new file's name is taken,
/// or it cannot be written or verified (then every original file is left as it was).
pub fn prune(
    dir: &Path,
    opts: &PruneOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PruneReport> {
    if opts.policy.is_empty() {
        return Err(Error::invalid(
            "no retention rule: give at least one of --keep-last (--keep), --keep-hourly, \
             --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within \
             (prune never deletes every older snapshot by default)",
        ));
    }
    if !dir.is_dir() {
        return Err(Error::invalid("not a directory").with_file(dir));
    }
    let dry_run = opts.dry_run;
    // A dry run changes nothing: it only needs the directory not to change meanwhile.
    let _lock = crate::dirlock::lock(dir, !dry_run, crate::dirlock::Command::Prune, opts.wait)?;
    let image = pick_image(dir, None, opts.image.as_deref())?;
    let cleaned = if dry_run {
        Vec::new()
    } else {
        finish_pending(dir, &image)?
    };
    // The newest lineage is pruned; older ones (a recreated image's) are left alone.
    let mut lineages = super::graph::lineages(dir, &image)?;
    let graph = lineages.pop().map(|l| l.graph).unwrap_or_default();
    let older = older_lineages(&lineages);
    let cat = catalog::read(dir)?;
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let (mut report, plan, outputs) = plan_prune(
        dir,
        &image,
        &graph,
        older,
        cleaned,
        &cat,
        opts,
        &exists,
        graph.damaged(),
    )?;
    let Some(plan) = plan else {
        return Ok(report);
    };
    let bytes_before = report.bytes_before;
    let edge = |i: usize| &graph.edges[i];
    let deleted_bytes: u64 = plan.delete.iter().map(|&i| edge(i).bytes).sum();
    // Deletions go from the latest end snapshot back: a run stopped in between never leaves
    // a file to delete whose start no path reaches any more (which the next run would have
    // to leave alone).
    let pos = |i: usize| {
        let to = edge(i).file.to.as_deref();
        graph.snapshots.iter().position(|s| Some(s.as_str()) == to)
    };
    let mut delete = plan.delete.clone();
    delete.sort_by_key(|&i| std::cmp::Reverse((pos(i), i)));
    let mut steps = Steps {
        left: opts.stop_after,
        stopped: false,
    };
    let journal = if outputs.is_empty() {
        None
    } else {
        let j = crate::journal::write(
            dir,
            &crate::journal::Journal {
                output: base(&outputs[0]),
                more_outputs: outputs[1..].iter().map(|o| base(o)).collect(),
                supersedes: delete.iter().map(|&i| base(&edge(i).file.path)).collect(),
            },
        )?;
        steps.step()?;
        Some(j)
    };
    let mut made: Vec<(PathBuf, (u64, u64))> = Vec::new();
    for (k, m) in plan.merges.iter().enumerate() {
        let r = merge_one(
            dir,
            &graph,
            m,
            &outputs[k],
            report.merges[k].compressed,
            &cat,
            &mut steps,
            &mut made,
            progress,
        )
        .and_then(|()| steps.step());
        if let Err(e) = r {
            if !steps.stopped {
                // Nothing of this run is left: its outputs (never one that replaced them
                // meanwhile), then the journal (a journal without its outputs is stale,
                // never the reverse).
                for (out, id) in &made {
                    if file_id(out).ok() == Some(*id) {
                        let _ = std::fs::remove_file(crate::sums::sums_path(out));
                        let _ = std::fs::remove_file(out);
                    }
                }
                if let Some(j) = &journal {
                    let _ = std::fs::remove_file(j);
                }
            }
            return Err(e);
        }
        report.merges[k].bytes = std::fs::metadata(&outputs[k]).ok().map(|m| m.len());
    }
    sync_dir(dir)?;
    steps.step()?;
    report.bytes = report.merges.iter().filter_map(|m| m.bytes).sum();
    report.bytes_after = bytes_before - deleted_bytes + report.bytes;
    for &i in &delete {
        let f = &edge(i).file.path;
        // The sidecar first: a file left without it (by a kill in between) is still found,
        // and deleted, by the next run; a sidecar left alone would not be.
        for p in [crate::sums::sums_path(f), f.clone()] {
            match std::fs::remove_file(&p) {
                Ok(()) => report.deleted.push(p.to_string_lossy().into_owned()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::from(e).with_file(&p)),
            }
            steps.step()?;
        }
    }
    sync_dir(dir)?;
    if let Some(j) = journal {
        std::fs::remove_file(&j).map_err(|e| Error::from(e).with_file(&j))?;
        sync_dir(dir)?;
    }
    Ok(report)
}

/// The plan of a prune of `graph` (the newest lineage of `image` in the archive `dir`; the
/// files of older ones in `older`) by `opts`: the report, and the retention plan with its
/// outputs' paths when there is work to do (not for a dry run). `exists` tells whether an
/// output's name is taken; `damaged` holds the files found damaged, with the reason.
///
/// # Errors
/// As [`prune`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_prune(
    dir: &Path,
    image: &str,
    graph: &Graph,
    older: Vec<PassedOver>,
    cleaned: Vec<String>,
    cat: &catalog::Catalog,
    opts: &PruneOptions,
    exists: &dyn Fn(&Path) -> bool,
    damaged: std::collections::BTreeMap<usize, String>,
) -> Result<(PruneReport, Option<retention::Plan>, Vec<PathBuf>)> {
    let dry_run = opts.dry_run;
    let mut outputs: Vec<PathBuf> = Vec::new();
    let bytes_before: u64 = graph.edges.iter().map(|e| e.bytes).sum();
    let mut report = PruneReport {
        image: image.to_string(),
        policy: opts.policy.clone(),
        files: graph.edges.len() + graph.unreadable.len(),
        kept_snapshots: Vec::new(),
        kept_by: Vec::new(),
        dropped_snapshots: Vec::new(),
        merges: Vec::new(),
        merged: Vec::new(),
        output: None,
        kept: graph.edges.iter().map(|e| e.file.name()).collect(),
        delete: Vec::new(),
        deleted: Vec::new(),
        left: older,
        dry_run,
        bytes: 0,
        bytes_before,
        bytes_after: bytes_before,
        cleaned,
    };
    if graph.is_empty() {
        return Ok((report, None, outputs));
    }
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
    let no_snapshot =
        || Error::invalid(format!("no snapshot of {image} is restorable")).with_file(dir);
    let restorable = graph.restorable(&damaged);
    if restorable.is_empty() {
        return Err(no_snapshot());
    }
    let snaps: Vec<Snap> = restorable
        .iter()
        .map(|(name, _, path)| Snap {
            name: name.clone(),
            time: super::listing::snapshot_time(graph, cat, name, path).0,
        })
        .collect();
    let mut kept_by = select(&opts.policy, &snaps);
    let keep: BTreeSet<String> = kept_by.keys().cloned().collect();
    let plan = retention::plan(graph, &damaged, &keep).ok_or_else(no_snapshot)?;
    let edge = |i: usize| &graph.edges[i];
    let names = |v: &[usize]| v.iter().map(|&i| edge(i).file.name()).collect::<Vec<_>>();
    report.kept_by = plan
        .keep
        .iter()
        .map(|s| {
            let time = snaps.iter().find(|x| x.name == *s).map_or(0, |x| x.time);
            KeptBy {
                snapshot: s.clone(),
                time,
                time_utc: stamp(time),
                rules: kept_by
                    .remove(s)
                    .unwrap_or_default()
                    .into_iter()
                    .map(String::from)
                    .collect(),
            }
        })
        .collect();
    report.kept_snapshots = plan.keep.clone();
    report.dropped_snapshots = plan.dropped.clone();
    report.kept = names(&plan.kept);
    report.delete = names(&plan.delete);
    report.left.extend(plan.left.iter().cloned());
    for m in &plan.merges {
        let last = m.inputs.last().map(|&i| edge(i));
        let compressed = opts
            .compress
            .unwrap_or_else(|| last.is_some_and(|e| e.file.compressed));
        let out = dir.join(file_name(image, m.from.as_deref(), &m.to, compressed));
        if exists(&out) || outputs.contains(&out) {
            return Err(Error::invalid(format!(
                "the merged output exists already (merging {})",
                names(&m.inputs).join(", ")
            ))
            .with_file(&out));
        }
        report.merges.push(MergeReport {
            inputs: names(&m.inputs),
            output: out.to_string_lossy().into_owned(),
            from_snap: m.from.clone(),
            to_snap: m.to.clone(),
            compressed,
            input_bytes: m.inputs.iter().map(|&i| edge(i).bytes).sum(),
            bytes: None,
        });
        outputs.push(out);
    }
    if let Some(full) = report.merges.iter().find(|m| m.from_snap.is_none()) {
        report.merged = full.inputs.clone();
        report.output = Some(full.output.clone());
    }
    let deleted_bytes: u64 = plan.delete.iter().map(|&i| edge(i).bytes).sum();
    let merged_bytes: u64 = report.merges.iter().map(|m| m.input_bytes).sum();
    report.bytes_after = bytes_before - deleted_bytes + merged_bytes;
    if dry_run || (plan.merges.is_empty() && plan.delete.is_empty()) {
        return Ok((report, None, outputs));
    }
    Ok((report, Some(plan), outputs))
}

/// The files of older lineages, each with why it is left alone.
pub(crate) fn older_lineages(lineages: &[super::graph::Lineage]) -> Vec<PassedOver> {
    lineages
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
                .map(move |file| PassedOver {
                    file,
                    reason: why.clone(),
                })
        })
        .collect()
}

/// Merges the inputs of `m` into `out`: records it in the catalog (with the record of the
/// last input), commits it (never clobbering; pushed on `made`), gives it the modification
/// time of the last input, writes its sidecar and verifies it. On a failure the caller
/// removes what `made` holds.
#[allow(clippy::too_many_arguments)]
fn merge_one(
    dir: &Path,
    graph: &Graph,
    m: &retention::Merge,
    out: &Path,
    compressed: bool,
    cat: &catalog::Catalog,
    steps: &mut Steps,
    made: &mut Vec<(PathBuf, (u64, u64))>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let edge = |i: usize| &graph.edges[i];
    // The merged file is of the lineage of what it merges, recorded before its commit.
    if let Some(rec) = m
        .inputs
        .last()
        .and_then(|&i| cat.files.get(&base(&edge(i).file.path)))
    {
        catalog::record(dir, &base(out), rec.clone())?;
    }
    let inputs: Vec<String> = m.inputs.iter().map(|&i| edge(i).file.name()).collect();
    let copts = compressed.then(CompressOptions::default);
    merge_files_to(
        &inputs,
        &out.to_string_lossy(),
        false,
        &MergeOptions::default(),
        copts.as_ref(),
        progress,
    )?;
    made.push((out.to_path_buf(), file_id(out)?));
    steps.step()?;
    // The merged file keeps the time of the backup of its end snapshot (the last input),
    // which snapshot order and times read.
    let when = m
        .inputs
        .last()
        .map_or_else(SystemTime::now, |&i| edge(i).mtime);
    std::fs::File::options()
        .write(true)
        .open(out)
        .and_then(|f| f.set_modified(when))
        .map_err(|e| Error::from(e).with_file(out))?;
    crate::sums::write_sums_for(out)?;
    let f = read_chain_file(out.to_path_buf())?;
    if f.from != m.from || f.to.as_deref() != Some(m.to.as_str()) {
        return Err(Error::invalid(format!(
            "the merged file runs from {} to {}, not from {} to '{}'",
            crate::format::show_from(f.from.as_deref()),
            crate::format::show_to(f.to.as_deref()),
            crate::format::show_from(m.from.as_deref()),
            m.to
        ))
        .with_file(out));
    }
    verify_chain(&[f])
}
