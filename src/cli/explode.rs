//! `rbddiff explode`.

use std::path::PathBuf;

use rbddiff::explode::explode;
use rbddiff::size::Bytes;
use rbddiff::Result;

use super::Status;

/// Write the diffs embedded in an image stream as a chain of v1 diffs.
///
/// An `rbd export --export-format 2` stream holds a full diff to its first snapshot and one
/// diff per later snapshot (and to the HEAD). Each is written to DIR as a `rbd diff v1` file
/// that `rbd import-diff` reads, numbered in chain order: `NNN-IMAGE@SNAP.full.diff`, then
/// `NNN-IMAGE@FROM..TO.diff`. Importing them in name order rebuilds the image's snapshots.
/// The image header's object order, features, striping and image-meta are not carried (the
/// report lists them). These files can be merged, verified and kept in an archive.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image stream (`-` for stdin; may be zstd-compressed).
    input: String,
    /// Directory for the diffs (created when missing).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Replace existing files of the same names.
    #[arg(short, long)]
    force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let r = super::with_progress_on(&a.input, |p| explode(&a.input, &a.output, a.force, p))?;
    super::print_report(a.json, &r, |out| {
        for d in &r.diffs {
            writeln!(
                out,
                "{}: {} -> {}, {} written, {} zeroed, size {}",
                d.file,
                rbddiff::format::show_from(d.from_snap.as_deref()),
                rbddiff::format::show_to(d.to_snap.as_deref()),
                Bytes(d.write_bytes),
                Bytes(d.zero_bytes),
                Bytes(d.image_size)
            )?;
        }
        writeln!(out, "{} diff(s) written to {}", r.diffs.len(), r.dir)?;
        if !r.not_carried.is_empty() {
            writeln!(
                out,
                "not carried by v1 diffs (set them on the target image if needed): {}",
                r.not_carried.join(", ")
            )?;
        }
        Ok(())
    })?;
    Ok(Status::Ok)
}
