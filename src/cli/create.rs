//! `rbddiff create`.

use std::path::PathBuf;

use rbddiff::create::{
    create_diff_with_progress, CreateOptions, DEFAULT_BLOCK, DEFAULT_MAX_RECORD,
};
use rbddiff::size::{parse_size, Bytes};
use rbddiff::Result;

use super::Status;

/// Build an `rbd diff v1` file from a raw image (full), or from two raw images (incremental).
///
/// Holes and all-zero blocks are skipped; the output is what `rbd import-diff` accepts.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Raw image to describe: the new state (`--from` is its older spelling; "from" means
    /// the older side everywhere else, as in `--from-snap`).
    #[arg(long = "raw", alias = "from", value_name = "RAW")]
    from: PathBuf,
    /// End snapshot name to record (`t`); omitted = a diff to the image HEAD.
    #[arg(long, value_name = "NAME")]
    to_snap: Option<String>,
    /// Raw image of the old state, for an incremental diff.
    #[arg(long, value_name = "OLD_RAW", requires = "from_snap")]
    base: Option<PathBuf>,
    /// Start snapshot name (`f`) of an incremental diff.
    #[arg(long, value_name = "NAME", requires = "base")]
    from_snap: Option<String>,
    /// Comparison granularity (a power of two up to 1M; bytes, or 4K, 64K, ...).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value_t = DEFAULT_BLOCK)]
    block_size: u64,
    /// Largest data record (bytes, or 1M, 32M, ...).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value_t = DEFAULT_MAX_RECORD)]
    max_record: u64,
    /// Output file (`-` for stdout).
    #[arg(short, long)]
    output: String,
    /// Replace an existing output file.
    #[arg(short, long)]
    force: bool,
    /// Print the report as JSON (on stderr when the diff goes to stdout).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<Status> {
    let opts = CreateOptions {
        to_snap: a.to_snap,
        base: a.base,
        from_snap: a.from_snap,
        block_size: a.block_size,
        max_record: a.max_record,
        force: a.force,
    };
    let r = super::with_progress_on(&a.from.to_string_lossy(), |p| {
        create_diff_with_progress(&a.from, &a.output, &opts, p)
    });
    let r = r?;
    // With the diff on stdout, the human report is left out (a JSON one goes to stderr).
    let output = &a.output;
    super::print_report(a.json, &r, |out| {
        if output == "-" {
            return Ok(());
        }
        writeln!(
            out,
            "{output}: size {}, {} data records ({}), {} zero records ({}), {} written",
            Bytes(r.image_size),
            r.writes,
            Bytes(r.write_bytes),
            r.zeros,
            Bytes(r.zero_bytes),
            Bytes(r.diff_bytes)
        )
    })?;
    Ok(Status::Ok)
}
