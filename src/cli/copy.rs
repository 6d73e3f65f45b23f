//! `rbddiff copy`.

use std::path::PathBuf;

use rbddiff::archive::remote::{copy, CopyOptions};
use rbddiff::archive::store::DirStore;
use rbddiff::Result;

use super::Status;

/// Copy an archive's backup files with their sidecars: directory to s3://, s3:// to
/// directory, or s3:// to s3://, e.g. to ship a local archive offsite.
///
/// Every file of SRC with a sidecar that describes it (or of --image only) is copied to DST
/// unless DST holds it already with the same sidecar; each copy is read back and checked
/// against its sidecar before its sidecar is written (a file counts at DST only then). The
/// catalog records of the files go along. DST is locked (a directory's lock, an object
/// store's lease lock, see `backup`); a file of the same name and other content at DST
/// stops the copy. The s3 flags apply to both sides.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The source: a backup directory or s3://BUCKET/PREFIX.
    src: PathBuf,
    /// The destination: a backup directory (created if missing) or s3://BUCKET/PREFIX.
    dst: PathBuf,
    /// Only this image's files.
    #[arg(long)]
    image: Option<String>,
    #[command(flatten)]
    wait: super::WaitArgs,
    /// With an s3:// destination: break its lock even when the lease has not expired.
    #[arg(long)]
    break_lock: bool,
    #[command(flatten)]
    s3: super::S3Args,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let open = |p: &PathBuf| -> Result<Box<dyn rbddiff::archive::store::Store>> {
        Ok(match a.s3.store(p)? {
            Some(s) => s,
            None => Box::new(DirStore::new(p)),
        })
    };
    let (src, dst) = (open(&a.src)?, open(&a.dst)?);
    let opts = CopyOptions {
        image: a.image.clone(),
        wait: a.wait.get()?,
        break_lock: a.break_lock,
    };
    let r = copy(&*src, &*dst, &opts)?;
    super::print_report(a.json, &r, |out| {
        for f in &r.copied {
            writeln!(out, "copied: {f}")?;
        }
        for p in &r.passed_over {
            writeln!(out, "passed over: {} ({})", p.file, p.reason)?;
        }
        writeln!(
            out,
            "{} -> {}: {} file(s) copied ({} bytes), {} already there",
            r.source,
            r.destination,
            r.copied.len(),
            r.bytes,
            r.present.len()
        )
    })?;
    Ok(if r.passed_over.is_empty() {
        Status::Ok
    } else {
        Status::Problems
    })
}
