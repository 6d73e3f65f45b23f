//! `rbddiff apply`.

use std::path::PathBuf;

use rbddiff::apply::{apply_chain_with_progress, ApplyOptions};
use rbddiff::size::Bytes;
use rbddiff::Result;

use super::Status;

/// Apply a chain of diffs to a raw image file or block device, like `rbd import-diff`.
///
/// The target remembers the snapshot it holds in TARGET.rbddiff-state; a diff that does not
/// start there is refused (--force overrides). Interrupted runs are resumed by running the
/// same command again.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Diff files, in chain order (`-` for stdin; zstd-compressed files are decompressed on the
    /// fly), or directories: a directory stands for its diff files, ordered by their headers
    /// into a chain. An `rbd export --export-format 2` image stream counts as its diffs in order.
    #[arg(required = true)]
    files: Vec<String>,
    /// Raw image file or block device to apply to (`--to` is its older spelling).
    #[arg(short = 'o', long = "output", alias = "to", value_name = "RAW|DEVICE")]
    to: PathBuf,
    /// Create the target as a new sparse file (for a chain starting with a full diff).
    #[arg(long)]
    create: bool,
    /// Apply even when the diff's start snapshot does not match the target.
    #[arg(short, long)]
    force: bool,
    /// Check each diff against its FILE.sums sidecar before writing anything.
    #[arg(long)]
    sums: bool,
    /// State sidecar path (default: TARGET.rbddiff-state).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let opts = ApplyOptions {
        create: a.create,
        force: a.force,
        check_sums: a.sums,
        state_file: a.state_file,
    };
    let r = super::with_progress_on(super::first(&a.files), |p| {
        apply_chain_with_progress(&a.files, &a.to, &opts, p)
    });
    let r = r?;
    super::note_skipped(&r.skipped)?;
    super::print_report(a.json, &r, |out| {
        for d in &r.diffs {
            let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
            if d.applied {
                writeln!(
                    out,
                    "applied {} ({} -> {}): {} written, {} zeroed, size {}",
                    d.file,
                    show(&d.from_snap),
                    show(&d.to_snap),
                    Bytes(d.stats.bytes_written),
                    Bytes(d.stats.bytes_zeroed),
                    Bytes(d.image_size)
                )?;
            } else {
                writeln!(out, "skipped {} (target already past it)", d.file)?;
            }
        }
        writeln!(
            out,
            "{} now holds {} ({})",
            r.target.display(),
            r.to_snap
                .clone()
                .map_or("the image HEAD".into(), |s| format!("snapshot '{s}'")),
            Bytes(r.image_size)
        )?;
        Ok(())
    })?;
    Ok(Status::Ok)
}
