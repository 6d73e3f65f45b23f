//! `rbddiff status`.

use std::path::PathBuf;

use rbddiff::archive::listing::{parse_duration, status};
use rbddiff::Result;

use super::Status;

/// Check that every image of an archive has a recent restorable snapshot (for cron, Nagios).
///
/// Exit status: 0 when each image's newest restorable snapshot is at most DURATION old, 1
/// when one is older or an image has none, 2 on error. A snapshot's time is the backup time
/// the archive's catalog records for the file ending at it on its best path, else the UTC
/// time in its name when `backup` named it (`rbddiff-YYYYmmddTHHMMSS…Z`), else that file's
/// modification time. Only each image's newest lineage (image id) counts.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The backup directory.
    dir: PathBuf,
    /// The largest age: a number and a unit (s, m, h, d, w), e.g. 26h or 1d12h.
    #[arg(long, value_name = "DURATION")]
    max_age: String,
    /// Only this image (default: every image with files in DIR).
    #[arg(long)]
    image: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let max = parse_duration(&a.max_age)?;
    let r = status(&a.dir, a.image.as_deref(), max)?;
    super::print_report(a.json, &r, |out| {
        if r.images.is_empty() {
            writeln!(out, "{}: no backups", a.dir.display())?;
        }
        for i in &r.images {
            let state = if i.ok { "OK" } else { "STALE" };
            match (&i.newest, i.age) {
                (Some(s), Some(age)) => writeln!(
                    out,
                    "{state} {}: newest restorable snapshot {} ({}), {age} s old (max {} s){}",
                    i.image,
                    s.name,
                    s.time_utc,
                    r.max_age,
                    if i.unhealthy > 0 {
                        format!(", {} unhealthy file(s)", i.unhealthy)
                    } else {
                        String::new()
                    }
                )?,
                _ => writeln!(out, "{state} {}: no restorable snapshot", i.image)?,
            }
        }
        Ok(())
    })?;
    Ok(if r.ok() { Status::Ok } else { Status::Problems })
}
