//! `rbddiff list`.

use std::path::PathBuf;

use rbddiff::archive::listing::list;
use rbddiff::Result;

use super::Status;

/// List an archive: per image, every restorable snapshot with the files of its best path.
///
/// Every file is verified first (structure, sums sidecar), as restore would. Each file of a
/// path is shown with its bytes and the state of its sidecar (ok, missing, stale: it does not
/// match the file). Also lists the healthy files no best path uses and the damaged or
/// unreadable ones, with the reason, and the outcome of the image's last backup.
/// Files of different image ids (a recreated image) are listed as separate lineages. A
/// snapshot's time is the backup time the catalog records, else the UTC time in its name
/// when `backup` named it, else the modification time of the file ending at it.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory, or s3://BUCKET/PREFIX.
    dir: PathBuf,
    /// Only this image (default: every image with files in DIR).
    #[arg(long)]
    image: Option<String>,
    #[command(flatten)]
    wait: super::WaitArgs,
    #[command(flatten)]
    s3: super::S3Args,
    /// Print the listing as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let r = match a.s3.store(&a.dir)? {
        Some(s) => rbddiff::archive::remote::list(&*s, a.image.as_deref())?,
        None => list(&a.dir, a.image.as_deref(), a.wait.get()?)?,
    };
    super::print_report(a.json, &r, |out| {
        for i in &r.images {
            writeln!(
                out,
                "{} (image id {}): {} restorable snapshot(s), {} file(s), {} bytes",
                i.image,
                i.image_id.as_deref().unwrap_or("unknown"),
                i.snapshots.len(),
                i.files.len(),
                i.bytes
            )?;
            let state = |f: &str| i.files.iter().find(|s| s.file == f);
            for s in &i.snapshots {
                writeln!(
                    out,
                    "  {} ({} from {}) size {}: {} file(s), {} bytes to read, sums {}",
                    s.name,
                    s.time_utc,
                    s.time_from,
                    s.size,
                    s.files.len(),
                    s.bytes,
                    s.sums.as_str()
                )?;
                for f in &s.files {
                    match state(f) {
                        Some(st) => writeln!(
                            out,
                            "    {f} ({} bytes, sums {})",
                            st.bytes,
                            st.sums.as_str()
                        )?,
                        None => writeln!(out, "    {f}")?,
                    }
                }
            }
            for f in &i.unused {
                writeln!(out, "  unused: {f}")?;
            }
            for u in &i.unhealthy {
                writeln!(out, "  unhealthy: {} ({})", u.file, u.reason)?;
            }
            if let Some(l) = &i.last_backup {
                let when = |t: Option<u64>| t.map_or("never".into(), rbddiff::workflow::stamp);
                writeln!(
                    out,
                    "  last backup: {} (last success {}, last failure {})",
                    match l.last_ok {
                        Some(true) => "ok",
                        Some(false) => "FAILED",
                        None => "none",
                    },
                    when(l.success),
                    when(l.failure)
                )?;
            }
        }
        Ok(())
    })?;
    Ok(Status::Ok)
}
