//! `rbddiff backup`.

use std::path::PathBuf;

use rbddiff::compress::CompressOptions;
use rbddiff::workflow::{backup, BackupOptions};
use rbddiff::Result;

use super::Status;

/// Back up an image into a directory of diffs, through the `rbd` CLI.
///
/// Reads the image's files in DIR as a graph (from the files' headers), creates a snapshot and
/// streams `rbd export-diff` (incremental from the newest snapshot that exists on the cluster
/// and is restorable in DIR, else full, and the report says why) through the parser into
/// `IMAGE@FROM..TO.diff` (or `IMAGE@TO.full.diff`), written atomically, with its `.sums`
/// sidecar. On failure no file is left and the new snapshot is removed again. The archive's
/// catalog records the backup time, image id, cluster fsid (as rbd's configuration sets it)
/// and rbd version of the file, and the outcome of the run (for `status`).
///
/// Into s3://BUCKET/PREFIX (S3, Ceph RGW) the export streams into a multipart upload (8 MiB
/// parts, 4 in flight: at most 32 MiB held), the sidecar is uploaded after it, and the run
/// holds the archive's lock object with a lease of 120 s, renewed while it runs; a lock
/// whose lease expired is broken, a live one only with --break-lock.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image: POOL/IMAGE.
    image: String,
    /// The backup directory (created if missing), or s3://BUCKET/PREFIX.
    dir: PathBuf,
    /// Name of the snapshot to create (default rbddiff-<TAG>-<UTC time,
    /// YYYYmmddTHHMMSS.NNNNNNNNNZ>, TAG the first 8 hex digits of the archive's id).
    #[arg(long, value_name = "NAME")]
    snap: Option<String>,
    /// Make a full backup (into an archive with chains too: a periodic full).
    #[arg(long)]
    full: bool,
    /// Make a full backup when the path to the base already holds N files (every Nth backup
    /// of a chain is a full).
    #[arg(long, value_name = "N")]
    full_every: Option<usize>,
    /// Make a full backup when the newest full diff of the lineage is older than DURATION
    /// (by its backup time in the catalog, else its modification time), e.g. 7d or 1w.
    #[arg(long, value_name = "DURATION")]
    full_after: Option<String>,
    /// Write a compressed, indexed zstd archive (`.diff.zst`).
    #[arg(long)]
    compress: bool,
    /// Afterwards keep only the newest K snapshots this archive's backups made (default names
    /// with its tag; the one just made is always kept; other snapshots, those of other
    /// archives and of older rbddiff versions, are never touched).
    #[arg(long, value_name = "K")]
    keep_snaps: Option<usize>,
    /// At most RATE bytes per second through rbd (e.g. 50M).
    #[arg(long, value_name = "RATE", value_parser = super::parse_rate)]
    limit_rate: Option<u64>,
    #[command(flatten)]
    cluster: super::RbdArgs,
    #[command(flatten)]
    wait: super::WaitArgs,
    /// With s3://: break the archive's lock even when its lease has not expired (only when
    /// its holder is known to be gone; an expired lease is broken without it).
    #[arg(long)]
    break_lock: bool,
    #[command(flatten)]
    s3: super::S3Args,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let opts = BackupOptions {
        snap: a.snap,
        full: a.full,
        full_every: a.full_every,
        full_after: a
            .full_after
            .as_deref()
            .map(rbddiff::archive::listing::parse_duration)
            .transpose()?,
        compress: a.compress.then(CompressOptions::default),
        keep_snaps: a.keep_snaps,
        limit_rate: a.limit_rate,
        rbd: a.cluster.into(),
        wait: a.wait.get()?,
    };
    let r = match a.s3.store(&a.dir)? {
        Some(store) => rbddiff::archive::remote::backup(&a.image, &*store, &opts, a.break_lock)?,
        None => backup(&a.image, &a.dir, &opts)?,
    };
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
        if let Some(why) = &r.full_reason {
            writeln!(out, "full backup: {why}")?;
        }
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
