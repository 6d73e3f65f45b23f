//! `rbddiff backup`.

use std::path::PathBuf;

use rbddiff::compress::CompressOptions;
use rbddiff::workflow::{backup, BackupOptions};
use rbddiff::Result;

use super::Status;

/// Back up an image into a directory of diffs, through the `rbd` CLI.
///
/// Finds the chain already in DIR (from the files' headers), creates a snapshot and streams
/// `rbd export-diff` (incremental from the chain's last snapshot, or full when DIR has no
/// chain) through the parser into `IMAGE@FROM..TO.diff` (or `IMAGE@TO.full.diff`), written
/// atomically, with its `.sums` sidecar. On failure no file is left and the new snapshot is
/// removed again.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image: POOL/IMAGE.
    image: String,
    /// The backup directory (created if missing).
    dir: PathBuf,
    /// Name of the snapshot to create (default rbddiff-<UTC time, YYYYmmddTHHMMSSZ>).
    #[arg(long, value_name = "NAME")]
    snap: Option<String>,
    /// Make a full backup (refused when DIR already holds a chain of the image).
    #[arg(long)]
    full: bool,
    /// Write a compressed, indexed zstd archive (`.diff.zst`).
    #[arg(long)]
    compress: bool,
    /// Afterwards keep only the newest K snapshots named rbddiff-… (others are never touched).
    #[arg(long, value_name = "K")]
    keep_snaps: Option<usize>,
    #[command(flatten)]
    cluster: super::RbdArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let opts = BackupOptions {
        snap: a.snap,
        full: a.full,
        compress: a.compress.then(CompressOptions::default),
        keep_snaps: a.keep_snaps,
        rbd: a.cluster.into(),
    };
    let r = backup(&a.image, &a.dir, &opts)?;
    super::print_report(a.json, &r, |out| {
        writeln!(
            out,
            "{}: {} {} -> {}, {} bytes ({} on disk), {} records, image size {}",
            r.file,
            r.image,
            r.from_snap.as_deref().unwrap_or("(full)"),
            r.to_snap,
            r.bytes,
            r.file_bytes,
            r.records,
            r.image_size
        )?;
        for f in &r.cleaned {
            writeln!(out, "removed (left by an interrupted run): {f}")?;
        }
        if !r.removed_snapshots.is_empty() {
            writeln!(out, "removed snapshots: {}", r.removed_snapshots.join(", "))?;
        }
        for w in &r.warnings {
            writeln!(out, "warning: {w}")?;
        }
        Ok(())
    })?;
    Ok(Status::Ok)
}
