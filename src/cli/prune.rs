//! `rbddiff prune`.

use std::path::PathBuf;

use rbddiff::archive::listing::parse_duration;
use rbddiff::archive::policy::Policy;
use rbddiff::archive::prune::{prune, PruneOptions};
use rbddiff::Result;

use super::Status;

/// Prune an archive by a retention policy (restic's flags and meaning, by backup time, UTC;
/// offline).
///
/// Snapshots are walked newest first by backup time. --keep-last N keeps the N newest;
/// --keep-hourly/-daily/-weekly/-monthly/-yearly N keep the newest snapshot of each of the N
/// newest hours, days, ISO weeks (from Monday), months or years that hold one; --keep-within
/// D keeps every snapshot newer than the newest one's time minus D. The kept set is their
/// union, and the newest restorable snapshot is always kept. At least one rule is required.
///
/// Files between kept snapshots stay (periodic fulls at kept snapshots included); each run
/// of files across dropped snapshots is merged in one pass into one new file (a full diff,
/// or an incremental between two kept snapshots) with its sidecar, verified; only then are
/// the files no kept snapshot needs deleted. Files no restore can use are left alone and
/// listed. A damaged or unreadable file of the image stops the prune.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory, or s3://BUCKET/PREFIX (merged files are streamed into new
    /// objects and read back before any delete; the lease lock is held, see `backup`).
    dir: PathBuf,
    /// The image whose files are pruned (files IMAGE@…); optional when DIR holds one image.
    /// With several images it is required (prune refuses and names them).
    #[arg(long)]
    image: Option<String>,
    /// Keep the N newest snapshots. `--keep N` is the same flag (its old name).
    #[arg(long, value_name = "N", visible_alias = "keep", default_value_t = 0)]
    keep_last: usize,
    /// Keep the newest snapshot of each of the N newest hours (UTC) that hold one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: usize,
    /// Keep the newest snapshot of each of the N newest days (UTC) that hold one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: usize,
    /// Keep the newest snapshot of each of the N newest ISO weeks (Monday to Sunday, UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: usize,
    /// Keep the newest snapshot of each of the N newest months (UTC) that hold one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: usize,
    /// Keep the newest snapshot of each of the N newest years (UTC) that hold one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_yearly: usize,
    /// Keep every snapshot newer than the newest one's time minus DURATION (e.g. 36h, 2w).
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<String>,
    /// Compress the merged files (default: like the newest file each one merges).
    #[arg(long, conflicts_with = "no_compress")]
    compress: bool,
    /// Write the merged files uncompressed.
    #[arg(long)]
    no_compress: bool,
    /// Print the plan only; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    wait: super::WaitArgs,
    /// With s3://: break the archive's lock even when its lease has not expired.
    #[arg(long)]
    break_lock: bool,
    #[command(flatten)]
    s3: super::S3Args,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let opts = PruneOptions {
        image: a.image.clone(),
        policy: Policy {
            last: a.keep_last,
            hourly: a.keep_hourly,
            daily: a.keep_daily,
            weekly: a.keep_weekly,
            monthly: a.keep_monthly,
            yearly: a.keep_yearly,
            within: a.keep_within.as_deref().map(parse_duration).transpose()?,
        },
        dry_run: a.dry_run,
        compress: (a.compress || a.no_compress).then_some(a.compress),
        stop_after: None,
        wait: a.wait.get()?,
    };
    let store = a.s3.store(&a.dir)?;
    let r = super::with_progress(|p| match &store {
        Some(s) => rbddiff::archive::remote::prune(&**s, &opts, a.break_lock, p),
        None => prune(&a.dir, &opts, p),
    })?;
    super::print_report(a.json, &r, |out| {
        for f in &r.cleaned {
            writeln!(out, "removed (left by an interrupted run): {f}")?;
        }
        let (would, verb) = if r.dry_run {
            ("would ", "would delete")
        } else {
            ("", "deleted")
        };
        writeln!(
            out,
            "{} ({}): {} file(s); keeping {} restorable snapshot(s), dropping {}",
            a.dir.display(),
            r.image,
            r.files,
            r.kept_snapshots.len(),
            r.dropped_snapshots.len()
        )?;
        for k in &r.kept_by {
            writeln!(
                out,
                "keep {} ({}): {}",
                k.snapshot,
                k.time_utc,
                k.rules.join(", ")
            )?;
        }
        for s in &r.dropped_snapshots {
            writeln!(out, "drop {s}")?;
        }
        for m in &r.merges {
            writeln!(
                out,
                "{would}merge {} file(s) ({} bytes) into {}{}:",
                m.inputs.len(),
                m.input_bytes,
                m.output,
                m.bytes.map(|b| format!(" ({b} bytes)")).unwrap_or_default()
            )?;
            for f in &m.inputs {
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
        if r.merges.is_empty() && r.delete.is_empty() {
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
