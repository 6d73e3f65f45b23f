//! `rbddiff inspect`.

use rbddiff::input::Input;
use rbddiff::inspect::{inspect_file, inspect_input, render_reports};
use rbddiff::{Error, Result};

use super::Status;

/// Show what a diff (or image export) holds: snapshots, size, record counts and ranges.
///
/// Exit status 0 when the file is valid, 2 when it is not (the report still shows what was
/// read before the problem). Payloads are never read from a file, so this is fast.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Diff files (`-` for stdin).
    #[arg(required = true)]
    files: Vec<String>,
    /// List every record with its byte position.
    #[arg(long)]
    records: bool,
    /// Print one JSON document (an array with one report per file).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let mut reports = Vec::new();
    for f in &a.files {
        // A regular file is walked head by head (payloads seeked over); stdin and pipes
        // are streamed.
        let report = if f == "-" {
            inspect_input(Input::open(f)?, a.records)
        } else {
            inspect_file(f, a.records)?
        };
        reports.push(report);
    }
    super::print_report(a.json, &reports, |out| render_reports(&reports, out))?;
    match reports.iter().find_map(|r| r.error.clone()) {
        Some(e) => Err(Error::invalid(e)),
        None => Ok(Status::Ok),
    }
}
