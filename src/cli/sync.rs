//! `rbddiff sync`.

use rbddiff::archive::policy::Policy;
use rbddiff::replicate::{sync, sync_pool, Checked, SyncOptions, Verify};
use rbddiff::workflow::Rbd;
use rbddiff::Result;

use super::Status;

/// Carry a new snapshot of an image to another cluster.
///
/// Checks that the destination holds the newest snapshot the two images have in common
/// (none and no destination image: a first, full sync), creates a new snapshot on the source,
/// streams `rbd export-diff --from-snap BASE` through the parser into `rbd import-diff -` on
/// the destination, confirms the destination now has the snapshot and checks it (its own
/// export-diff must hold the same bytes; --verify full compares the sha256 of the whole
/// snapshot on both sides). A failure leaves the destination at its previous snapshot and
/// removes the source snapshot made: run it again.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The source image: POOL/IMAGE (or give --pool).
    #[arg(required_unless_present = "pool", conflicts_with = "pool")]
    source: Option<String>,
    /// The destination image: POOL/IMAGE.
    #[arg(required_unless_present = "pool")]
    destination: Option<String>,
    /// Sync every image of this source pool (or those of --images) to the same names in
    /// --dst-pool, --jobs at a time; one image's failure does not stop the others.
    #[arg(long, value_name = "POOL")]
    pool: Option<String>,
    /// With --pool: the destination pool (default: the same name).
    #[arg(long, requires = "pool", value_name = "POOL")]
    dst_pool: Option<String>,
    /// With --pool: only these images (names or globs, comma-separated).
    #[arg(long, requires = "pool", value_delimiter = ',', value_name = "A,B")]
    images: Vec<String>,
    /// With --pool: images synced at the same time.
    #[arg(long, requires = "pool", default_value_t = 2, value_name = "N")]
    jobs: usize,
    /// Ceph configuration file of the source cluster.
    #[arg(long, value_name = "CONF")]
    src_conf: Option<std::path::PathBuf>,
    /// Ceph user on the source cluster.
    #[arg(long, value_name = "USER")]
    src_id: Option<String>,
    /// Ceph configuration file of the destination cluster.
    #[arg(long, value_name = "CONF")]
    dst_conf: Option<std::path::PathBuf>,
    /// Ceph user on the destination cluster.
    #[arg(long, value_name = "USER")]
    dst_id: Option<String>,
    /// Name of the snapshot to create (default rbddiff-TAG-TIME, TAG from the destination).
    #[arg(long, value_name = "NAME")]
    snap: Option<String>,
    /// The check after the import: diff, full or none.
    #[arg(long, value_name = "CHECK", default_value = "diff")]
    verify: Verify,
    /// At most RATE bytes per second to the destination (e.g. 50M).
    #[arg(long, value_name = "RATE", value_parser = super::parse_rate)]
    limit_rate: Option<u64>,
    /// Afterwards keep only the newest K snapshots syncs to this destination made on the
    /// source (the one just made, the newest common one, is always kept).
    #[arg(long, value_name = "K")]
    keep_snaps: Option<usize>,
    /// Afterwards keep only the newest N snapshots syncs to this destination made on it
    /// (prune's retention flags, by the time in the snapshots' names; the newest common
    /// snapshot is always kept; other snapshots are never removed). `--dst-keep-snaps N` is
    /// the same flag.
    #[arg(
        long,
        value_name = "N",
        visible_alias = "dst-keep-snaps",
        default_value_t = 0
    )]
    dst_keep_last: usize,
    /// Keep the newest destination snapshot of each of the N newest hours (UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    dst_keep_hourly: usize,
    /// The same by days (UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    dst_keep_daily: usize,
    /// The same by ISO weeks (Monday to Sunday, UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    dst_keep_weekly: usize,
    /// The same by months (UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    dst_keep_monthly: usize,
    /// The same by years (UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    dst_keep_yearly: usize,
    /// Keep every destination snapshot newer than the newest one's time minus DURATION.
    #[arg(long, value_name = "DURATION")]
    dst_keep_within: Option<String>,
    /// Also write the diff carried into this backup directory or s3://BUCKET/PREFIX (the
    /// same atomic, summed file as `backup` writes; on s3 streamed into a multipart upload
    /// under the archive's lease lock; with --pool, into DIR/IMAGE).
    #[arg(long, value_name = "DIR")]
    archive: Option<std::path::PathBuf>,
    /// The directory of the destination images' locks: a second sync or replay into the
    /// same image is refused (or, with --wait, waits). Default: $RBDDIFF_LOCK_DIR, else
    /// $XDG_STATE_HOME/rbddiff/locks, else ~/.local/state/rbddiff/locks.
    #[arg(long, value_name = "DIR")]
    lock_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    wait: super::WaitArgs,
    #[command(flatten)]
    s3: super::S3Args,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// A check as text.
pub fn check_text(c: &Checked) -> String {
    match (c.mode, &c.comparison, &c.sha256) {
        (Verify::Diff, Some(x), _) if x.same() => {
            format!("same change, {} bytes compared", x.bytes_compared)
        }
        (Verify::Diff, Some(x), _) => format!(
            "{} bytes differ (the first at offset {}) {}",
            x.bytes_differing,
            x.first_difference.unwrap_or(0),
            x.header_differences.join("; ")
        ),
        (Verify::Full, _, Some(s)) => format!("sha256 {s} on both sides"),
        _ => "not checked".to_string(),
    }
}

pub fn run(a: Args) -> Result<Status> {
    let opts = SyncOptions {
        src: Rbd::connect(a.src_conf, a.src_id),
        dst: Rbd::connect(a.dst_conf, a.dst_id),
        snap: a.snap,
        verify: a.verify,
        limit_rate: a.limit_rate,
        keep_snaps: a.keep_snaps,
        dst_keep: Policy {
            last: a.dst_keep_last,
            hourly: a.dst_keep_hourly,
            daily: a.dst_keep_daily,
            weekly: a.dst_keep_weekly,
            monthly: a.dst_keep_monthly,
            yearly: a.dst_keep_yearly,
            within: a
                .dst_keep_within
                .as_deref()
                .map(rbddiff::archive::listing::parse_duration)
                .transpose()?,
        },
        archive: a.archive,
        s3: a.s3.config(),
        wait: a.wait.get()?,
        lock_dir: a.lock_dir,
    };
    if let Some(pool) = &a.pool {
        let dst_pool = a.dst_pool.as_deref().unwrap_or(pool);
        let r = sync_pool(pool, dst_pool, &a.images, a.jobs, &opts)?;
        super::print_report(a.json, &r, |out| {
            writeln!(
                out,
                "{:<32} {:<8} {:>14}  snapshot / error",
                "image", "result", "bytes"
            )?;
            for e in &r.images {
                match (&e.report, &e.error) {
                    (Some(x), _) => writeln!(
                        out,
                        "{:<32} {:<8} {:>14}  {}",
                        e.image, "ok", x.imported.bytes, x.imported.to_snap
                    )?,
                    (_, err) => writeln!(
                        out,
                        "{:<32} {:<8} {:>14}  {}",
                        e.image,
                        "FAILED",
                        "-",
                        err.as_deref().unwrap_or_default()
                    )?,
                }
            }
            Ok(())
        })?;
        return Ok(if r.failed == 0 {
            Status::Ok
        } else {
            Status::Failed(rbddiff::Error::invalid(format!(
                "{} of {} image(s) failed to sync",
                r.failed,
                r.images.len()
            )))
        });
    }
    let (source, destination) = (
        a.source.unwrap_or_default(),
        a.destination.unwrap_or_default(),
    );
    let r = sync(&source, &destination, &opts)?;
    super::print_report(a.json, &r, |out| {
        let i = &r.imported;
        writeln!(
            out,
            "{} -> {}: {} -> '{}', {} bytes{}, checked: {}",
            r.source,
            r.destination,
            r.base
                .as_deref()
                .map_or("(full)".to_string(), |s| format!("'{s}'")),
            i.to_snap,
            i.bytes,
            if r.created { " (created)" } else { "" },
            check_text(&i.check)
        )?;
        if let Some(f) = &r.archive_file {
            writeln!(out, "  archived: {f}")?;
        }
        for s in &r.removed_source_snapshots {
            writeln!(out, "  removed source snapshot {s}")?;
        }
        for s in &r.removed_destination_snapshots {
            writeln!(out, "  removed destination snapshot {s}")?;
        }
        for w in &r.warnings {
            writeln!(out, "warning: {w}")?;
        }
        Ok(())
    })?;
    Ok(Status::Ok)
}
