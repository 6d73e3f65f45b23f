//! `rbddiff prune`.

use std::path::PathBuf;

use rbddiff::workflow::prune;
use rbddiff::Result;

use super::Status;

/// Prune an archive: keep the newest N restorable snapshots of IMAGE (offline).
///
/// The best path to the oldest kept snapshot is merged into one new full diff (with its
/// sidecar), which is verified; only then are the files no kept snapshot needs deleted
/// (older fulls, chains and incrementals starting before it). Full diffs and incrementals
/// from the oldest kept snapshot on stay, periodic fulls included. Files no restore can use
/// are left alone and listed. A damaged or unreadable file of IMAGE stops the prune.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory.
    dir: PathBuf,
    /// The image whose files are pruned (files IMAGE@…).
    #[arg(long)]
    image: String,
    /// Restorable snapshots to keep, newest first (at least 1). On a single chain that
    /// starts with a full diff this leaves N files, as before.
    #[arg(long, value_name = "N")]
    keep: usize,
    /// Print the plan only; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    wait: super::WaitArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let wait = a.wait.get()?;
    let r = super::with_progress(|p| prune(&a.dir, &a.image, a.keep, a.dry_run, p, wait));
    let r = r?;
    super::print_report(a.json, &r, |out| {
        for f in &r.cleaned {
            writeln!(out, "removed (left by an interrupted run): {f}")?;
        }
        let verb = if r.dry_run { "would delete" } else { "deleted" };
        writeln!(
            out,
            "{}: {} file(s); keeping {} restorable snapshot(s): {}",
            a.dir.display(),
            r.files,
            r.kept_snapshots.len(),
            r.kept_snapshots.join(", ")
        )?;
        if let Some(o) = &r.output {
            let m = if r.dry_run { "would merge" } else { "merged" };
            writeln!(out, "{m} {} file(s) into {o}:", r.merged.len())?;
            for f in &r.merged {
                writeln!(out, "  {f}")?;
            }
        }
        for f in &r.delete {
            writeln!(out, "{verb}: {f}")?;
        }
        for f in &r.kept {
            writeln!(out, "kept: {f}")?;
        }
        for l in &r.left {
            writeln!(
                out,
                "left alone (no restore can use it): {} ({})",
                l.file, l.reason
            )?;
        }
        if r.output.is_none() && r.delete.is_empty() {
            return writeln!(out, "nothing to do");
        }
        writeln!(
            out,
            "bytes before {}, after {}{}",
            r.bytes_before,
            r.bytes_after,
            if r.dry_run { " (estimated)" } else { "" }
        )?;
        Ok(())
    })?;
    Ok(Status::Ok)
}
