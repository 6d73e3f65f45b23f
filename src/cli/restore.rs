//! `rbddiff restore`.

use std::path::PathBuf;

use rbddiff::workflow::{restore, RestoreOptions};
use rbddiff::Result;

use super::Status;

/// Restore a backup directory into an image, through `rbd import-diff`.
///
/// Takes the path of healthy files with the fewest bytes from a full diff to `--to SNAP`
/// (default: the newest restorable snapshot), verifying each file (structure, sums sidecar)
/// and going round damaged ones, merges it in one pass and streams the result into
/// `rbd import-diff - POOL/IMAGE` (no temporary file). The report lists the files used and
/// those passed over, with the reason.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory.
    dir: PathBuf,
    /// The target image: POOL/IMAGE.
    image: String,
    /// Restore this snapshot (default: the newest restorable one).
    #[arg(long, value_name = "SNAP")]
    to: Option<String>,
    /// Create the image (with the restored size) when it does not exist; a failed restore
    /// removes it again.
    #[arg(long)]
    create: bool,
    /// Whose backups to restore, when DIR holds several images' (default: the only one, else
    /// the target's name).
    #[arg(long = "from-image", value_name = "NAME")]
    from_image: Option<String>,
    #[command(flatten)]
    cluster: super::RbdArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let opts = RestoreOptions {
        image: a.from_image,
        to: a.to,
        create: a.create,
        rbd: a.cluster.into(),
    };
    let r = super::with_progress(|p| restore(&a.dir, &a.image, &opts, p));
    let r = r?;
    super::print_report(a.json, &r, |out| {
        writeln!(
            out,
            "{}: restored {} file(s), {} -> {}, {} bytes, {} records, image size {}{}",
            r.image,
            r.files.len(),
            r.from_snap.as_deref().unwrap_or("(full)"),
            r.to_snap.as_deref().unwrap_or("HEAD"),
            r.bytes,
            r.records,
            r.image_size,
            if r.created { " (created)" } else { "" }
        )?;
        for f in &r.files {
            writeln!(out, "  used: {f}")?;
        }
        for p in &r.passed_over {
            writeln!(out, "  passed over: {} ({})", p.file, p.reason)?;
        }
        for w in &r.warnings {
            writeln!(out, "warning: {w}")?;
        }
        Ok(())
    })?;
    Ok(Status::Ok)
}
