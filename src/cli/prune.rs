//! `rbddiff prune`.

use std::path::PathBuf;

use rbddiff::workflow::prune;
use rbddiff::Result;

use super::Status;

/// Shorten a backup chain: merge its oldest files into one (offline).
///
/// When the chain of IMAGE in DIR has more than N files, its first (len − N + 1) files are
/// merged into one new diff (with its sidecar), the new chain is verified, and only then are
/// the merged files and their sidecars deleted.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory.
    dir: PathBuf,
    /// The image whose chain is pruned (files IMAGE@…).
    #[arg(long)]
    image: String,
    /// Files to keep in the chain (at least 1).
    #[arg(long, value_name = "N")]
    keep: usize,
    /// Print the plan only; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let r = super::with_progress(|p| prune(&a.dir, &a.image, a.keep, a.dry_run, p));
    let r = r?;
    super::print_report(a.json, &r, |out| {
        for f in &r.cleaned {
            writeln!(out, "removed (left by an interrupted run): {f}")?;
        }
        let Some(o) = &r.output else {
            return writeln!(
                out,
                "{}: chain of {} file(s), at most {} to keep: nothing to do",
                a.dir.display(),
                r.chain,
                a.keep
            );
        };
        let verb = if r.dry_run { "would merge" } else { "merged" };
        writeln!(out, "{verb} {} file(s) into {o}:", r.merged.len())?;
        for f in &r.merged {
            writeln!(out, "  {f}")?;
        }
        writeln!(out, "kept {} file(s) after it", r.kept.len())?;
        if !r.dry_run {
            writeln!(
                out,
                "deleted {} file(s), new file {} bytes",
                r.deleted.len(),
                r.bytes
            )?;
        }
        Ok(())
    })?;
    Ok(Status::Ok)
}
