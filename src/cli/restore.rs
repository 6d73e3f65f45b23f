//! `rbddiff restore`.

use std::path::PathBuf;

use rbddiff::archive::graph::PassedOver;
use rbddiff::workflow::{restore, restore_to_file, FileRestoreOptions, RestoreOptions};
use rbddiff::Result;

use super::Status;

/// Restore a backup directory into an image (through `rbd import-diff`) or a file.
///
/// Takes the path of healthy files with the fewest bytes from a full diff to `--to SNAP`
/// (default: the newest restorable snapshot), verifying each file (structure, sums sidecar)
/// and going round damaged ones, merges it in one pass and streams the result into
/// `rbd import-diff - POOL/IMAGE` (no temporary file). The report lists the files used and
/// those passed over, with the reason. With `--to-file RAW|DEVICE` instead of an image, the
/// path is applied offline to a raw image file (created sparse when missing) or a block
/// device, as `rbddiff apply` does: no cluster is needed.
///
/// From s3://BUCKET/PREFIX (into an image or, with --to-file, a file or device) the files
/// of the path are read with ranged reads into the merge:
/// a plain file streams (8 MiB, 4 in flight per file); of a compressed, indexed file only the
/// index and the frames holding surviving data are fetched. Each file's length and
/// snapshots are checked against its sidecar, its structure as it is read (`rbddiff verify
/// s3://…` checks every byte).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory, or s3://BUCKET/PREFIX.
    dir: PathBuf,
    /// The target image: POOL/IMAGE (or give --to-file).
    #[arg(required_unless_present = "to_file", conflicts_with = "to_file")]
    image: Option<String>,
    /// Restore this snapshot (default: the newest restorable one).
    #[arg(long, visible_alias = "snap", value_name = "SNAP")]
    to: Option<String>,
    /// Restore offline into this raw image file or block device instead of an image.
    #[arg(long, value_name = "RAW|DEVICE", conflicts_with = "create")]
    to_file: Option<PathBuf>,
    /// With --to-file: overwrite a target that has no state file (see `rbddiff apply`).
    #[arg(short, long, requires = "to_file")]
    force: bool,
    /// With --to-file: the target's state sidecar (needed for a block device).
    #[arg(long, requires = "to_file", value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// Create the image (with the restored size) when it does not exist; a failed restore
    /// removes it again.
    #[arg(long)]
    create: bool,
    /// Whose backups to restore, when DIR holds several images' (default: the only one, else
    /// the target's name).
    #[arg(long = "from-image", value_name = "NAME")]
    from_image: Option<String>,
    /// At most RATE bytes per second through rbd (e.g. 50M).
    #[arg(long, value_name = "RATE", value_parser = super::parse_rate, conflicts_with = "to_file")]
    limit_rate: Option<u64>,
    #[command(flatten)]
    cluster: super::RbdArgs,
    #[command(flatten)]
    wait: super::WaitArgs,
    #[command(flatten)]
    s3: super::S3Args,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let store = a.s3.store(&a.dir)?;
    if let Some(target) = &a.to_file {
        let opts = FileRestoreOptions {
            image: a.from_image,
            snap: a.to,
            force: a.force,
            state_file: a.state_file,
            wait: a.wait.get()?,
        };
        let r = super::with_progress_on(&a.dir.to_string_lossy(), |p| match &store {
            Some(s) => rbddiff::archive::remote::restore_to_file(&**s, target, &opts, p),
            None => restore_to_file(&a.dir, target, &opts, p),
        })?;
        super::print_report(a.json, &r, |out| {
            writeln!(
                out,
                "{}: restored snapshot '{}' of {} from {} file(s), {} bytes read, image size {}{}",
                target.display(),
                r.snap,
                r.image,
                r.files.len(),
                r.bytes_read,
                r.apply.image_size,
                if r.created { " (created)" } else { "" }
            )?;
            path_lines(out, &r.files, &r.passed_over, &r.warnings)
        })?;
        return Ok(Status::Ok);
    }
    let image = a.image.unwrap_or_default();
    let opts = RestoreOptions {
        image: a.from_image,
        to: a.to,
        create: a.create,
        limit_rate: a.limit_rate,
        rbd: a.cluster.into(),
        wait: a.wait.get()?,
    };
    let r = super::with_progress_on(&a.dir.to_string_lossy(), |p| match &store {
        Some(s) => rbddiff::archive::remote::restore(&**s, &image, &opts, p),
        None => restore(&a.dir, &image, &opts, p),
    });
    let r = r?;
    super::print_report(a.json, &r, |out| {
        writeln!(
            out,
            "{}: restored {} file(s), {} -> {}, {} bytes, {} records, image size {}{}",
            r.image,
            r.files.len(),
            r.from_snap.as_deref().unwrap_or("(full)"),
            r.to_snap.as_deref().unwrap_or("(HEAD)"),
            r.bytes,
            r.records,
            r.image_size,
            if r.created { " (created)" } else { "" }
        )?;
        path_lines(out, &r.files, &r.passed_over, &r.warnings)
    })?;
    Ok(Status::Ok)
}

/// The files a restore used and passed over (with the reason), and its warnings.
fn path_lines(
    out: &mut dyn std::io::Write,
    files: &[String],
    passed_over: &[PassedOver],
    warnings: &[String],
) -> std::io::Result<()> {
    for f in files {
        writeln!(out, "  used: {f}")?;
    }
    for p in passed_over {
        writeln!(out, "  passed over: {} ({})", p.file, p.reason)?;
    }
    for w in warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
