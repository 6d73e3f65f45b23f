//! `rbddiff inspect`.

use rbddiff::inspect::{inspect_paths, render_reports};
use rbddiff::{Error, Result};

use super::Status;

/// Show what a diff (or image export) holds: snapshots, size, record counts and ranges.
///
/// Exit status 0 when the file is valid, 2 when it is not (the report still shows what was
/// read before the problem). Payloads are never read from a file, so this is fast.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Diff files or directories (`-` for stdin; a directory stands for its diff files).
    #[arg(required = true)]
    files: Vec<String>,
    /// List every record with its byte position.
    #[arg(long)]
    records: bool,
    /// Print one JSON document (a report per file under `files`; see docs/json.md).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let r = inspect_paths(&a.files, a.records)?;
    super::print_report(a.json, &r, |out| render_reports(&r.files, out))?;
    super::note_skipped(&r.skipped)?;
    match r.error() {
        Some(e) => Ok(Status::Failed(Error::invalid(e))),
        None => Ok(Status::Ok),
    }
}
