//! `rbddiff replay`.

use std::path::PathBuf;

use rbddiff::replicate::{replay, replay_from_store, ReplayOptions, Verify};
use rbddiff::Result;

use super::Status;

/// Replay an archive's snapshots into an image of the backup cluster.
///
/// Finds the newest snapshot of POOL/IMAGE that the archive DIR can restore (same name, same
/// lineage; snapshots in another order than the archive's are refused) and imports every
/// archived snapshot after it up to --to SNAP (default: the newest), in order, each streamed
/// into `rbd import-diff -` with the file's sums checked on the way, so that the image ends
/// up with the same snapshots as the primary. Each import is checked: the image's own
/// export-diff between the same snapshots must hold the same bytes (--verify full compares
/// the sha256 of the whole snapshot with the archive's). A failed import is rolled back to
/// the snapshot before it. A full diff is never imported onto an image that holds data.
///
/// From s3://BUCKET/PREFIX the files are read with ranged reads, as `restore` reads them
/// (only committed files: no lock is taken on the archive, the target image's is).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory, or s3://BUCKET/PREFIX.
    dir: PathBuf,
    /// The target image on the backup cluster: POOL/IMAGE.
    image: String,
    /// Replay up to this snapshot (default: the newest restorable one).
    #[arg(long, value_name = "SNAP")]
    to: Option<String>,
    /// Create the image when it does not exist (imported from the best full diff).
    #[arg(long)]
    create: bool,
    /// Import one merged diff (one snapshot, the last) instead of every snapshot.
    #[arg(long)]
    squash: bool,
    /// When the image has no snapshot in common with the archive: build a new image and
    /// swap it in (the old one renamed to IMAGE.replaced-TIME) only after success.
    #[arg(long)]
    reseed: bool,
    /// The check after each import: diff (compare the image's export-diff with what was
    /// sent), full (sha256 of the whole snapshot) or none.
    #[arg(long, value_name = "CHECK", default_value = "diff")]
    verify: Verify,
    /// At most RATE bytes per second into rbd (e.g. 50M).
    #[arg(long, value_name = "RATE", value_parser = super::parse_rate)]
    limit_rate: Option<u64>,
    /// Whose backups to replay, when DIR holds several images' (default: the only one, else
    /// the target's name).
    #[arg(long = "from-image", value_name = "NAME")]
    from_image: Option<String>,
    #[command(flatten)]
    cluster: super::RbdArgs,
    /// The directory of the target images' locks (as for sync).
    #[arg(long, value_name = "DIR")]
    lock_dir: Option<PathBuf>,
    #[command(flatten)]
    wait: super::WaitArgs,
    #[command(flatten)]
    s3: super::S3Args,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let opts = ReplayOptions {
        image: a.from_image,
        to: a.to,
        create: a.create,
        squash: a.squash,
        reseed: a.reseed,
        verify: a.verify,
        limit_rate: a.limit_rate,
        rbd: a.cluster.into(),
        wait: a.wait.get()?,
        lock_dir: a.lock_dir,
    };
    let r = match a.s3.store(&a.dir)? {
        Some(store) => replay_from_store(&*store, &a.image, &opts)?,
        None => replay(&a.dir, &a.image, &opts)?,
    };
    super::print_report(a.json, &r, |out| {
        if r.imported.is_empty() {
            writeln!(out, "{}: up to date at '{}'", r.image, r.target)?;
        }
        for i in &r.imported {
            writeln!(
                out,
                "{}: imported {} -> '{}', {} bytes, checked: {}",
                r.image,
                i.from_snap
                    .as_deref()
                    .map_or("(full)".to_string(), |s| format!("'{s}'")),
                i.to_snap,
                i.bytes,
                super::sync::check_text(&i.check)
            )?;
        }
        if r.created {
            writeln!(out, "  created {}", r.image)?;
        }
        if let Some(old) = &r.replaced {
            writeln!(out, "  rebuilt; the old image is now {old}")?;
        }
        for w in &r.warnings {
            writeln!(out, "warning: {w}")?;
        }
        Ok(())
    })?;
    Ok(Status::Ok)
}
