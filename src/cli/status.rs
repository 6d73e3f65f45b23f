//! `rbddiff status`.

use std::path::PathBuf;

use rbddiff::archive::listing::{parse_duration, status, StatusOptions};
use rbddiff::Result;

use super::Status;

/// Check that every image of an archive has a recent restorable snapshot (for cron, Nagios,
/// Prometheus).
///
/// Exit status: 0 when each image's newest restorable snapshot is at most DURATION old (or,
/// without --max-age, when each image has one), 1 when one is older or an image has none, 2
/// on error. A snapshot's time is the backup time the archive's catalog records for the file
/// ending at it on its best path, else the UTC time in its name when `backup` named it
/// (`rbddiff-[TAG-]YYYYmmddTHHMMSS…Z`), else that file's modification time. Only each image's
/// newest lineage (image id) counts. Also shows the outcome of each image's last backup.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory, or s3://BUCKET/PREFIX.
    dir: PathBuf,
    /// The largest age: a number and a unit (s, m, h, d, w), e.g. 26h or 1d12h.
    #[arg(long, value_name = "DURATION", required_unless_present = "prometheus")]
    max_age: Option<String>,
    /// Only this image (default: every image with files in DIR).
    #[arg(long)]
    image: Option<String>,
    /// Also write node-exporter textfile metrics to FILE (atomically: a temporary file beside
    /// it, renamed over it), e.g. /var/lib/node_exporter/textfile/rbddiff.prom; the metric
    /// names are in the README.
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
    #[command(flatten)]
    wait: super::WaitArgs,
    #[command(flatten)]
    s3: super::S3Args,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let opts = StatusOptions {
        image: a.image,
        max_age: a.max_age.as_deref().map(parse_duration).transpose()?,
        prometheus: a.prometheus,
        wait: a.wait.get()?,
    };
    let r = match a.s3.store(&a.dir)? {
        Some(s) => rbddiff::archive::remote::status(&*s, &opts)?,
        None => status(&a.dir, &opts)?,
    };
    super::print_report(a.json, &r, |out| {
        if r.images.is_empty() {
            writeln!(out, "{}: no backups", a.dir.display())?;
        }
        let max = r
            .max_age
            .map(|m| format!(" (max {m} s)"))
            .unwrap_or_default();
        for i in &r.images {
            let state = if i.ok { "OK" } else { "STALE" };
            match (&i.newest, i.age) {
                (Some(s), Some(age)) => writeln!(
                    out,
                    "{state} {}: newest restorable snapshot {} ({}), {age} s old{max}, \
                     {} restorable, {} file(s), {} bytes{}",
                    i.image,
                    s.name,
                    s.time_utc,
                    i.restorable,
                    i.files,
                    i.bytes,
                    if i.unhealthy > 0 {
                        format!(", {} unhealthy file(s)", i.unhealthy)
                    } else {
                        String::new()
                    }
                )?,
                _ => writeln!(out, "{state} {}: no restorable snapshot", i.image)?,
            }
            if let Some(l) = i.last_backup.as_ref().filter(|l| l.last_ok == Some(false)) {
                writeln!(
                    out,
                    "  the last backup failed ({}): {}",
                    rbddiff::workflow::stamp(l.failure.unwrap_or(0)),
                    l.error.as_deref().unwrap_or("")
                )?;
            }
        }
        if let Some(p) = &r.prometheus {
            writeln!(out, "metrics written to {p}")?;
        }
        Ok(())
    })?;
    Ok(if r.ok() { Status::Ok } else { Status::Problems })
}
