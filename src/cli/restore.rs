//! `rbddiff restore`.

use std::path::PathBuf;

use rbddiff::workflow::{restore, RestoreOptions};
use rbddiff::Result;

use super::Status;

/// Restore a backup directory into an image, through `rbd import-diff`.
///
/// Finds and verifies the chain in DIR (structure, links, sums sidecars), merges the files up
/// to `--to SNAP` in one pass and streams the result into `rbd import-diff - POOL/IMAGE` (no
/// temporary file).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory.
    dir: PathBuf,
    /// The target image: POOL/IMAGE.
    image: String,
    /// Restore up to this snapshot (default: the end of the chain).
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
        )
    })?;
    Ok(Status::Ok)
}
