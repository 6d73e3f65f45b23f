//! `rbddiff compress` and `rbddiff decompress`.

use rbddiff::compress::{self, CompressOptions};
use rbddiff::size::parse_size;
use rbddiff::Result;

use super::Status;

/// Compress a diff into a seekable, indexed zstd archive.
///
/// Frames start on record boundaries and carry zstd content checksums; a record index and
/// the zstd seek table follow in skippable frames. `zstd -d` restores the exact diff, and
/// every rbddiff command reads the archive directly.
#[derive(clap::Args, Debug)]
pub struct CompressArgs {
    /// Diff or image stream (`-` for stdin; may itself be zstd-compressed); or several, or
    /// directories (their diff files), each compressed into the directory OUTPUT as NAME.zst.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Output archive (`-` for stdout), or the directory for several inputs.
    #[arg(short, long)]
    output: String,
    /// zstd compression level.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    level: i32,
    /// Compression threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Diff bytes per zstd frame (frames end at the first record boundary after this;
    /// 1K to 32M; bytes, or with a binary unit: 64K, 4M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size,
          default_value_t = compress::DEFAULT_FRAME_TARGET)]
    frame_size: u64,
    /// Replace an existing output file.
    #[arg(short, long)]
    force: bool,
    /// Also write the checksum sidecar OUT.sums: sums of the uncompressed diff stream plus
    /// the archive's length and digest; `rbddiff verify` checks it.
    #[arg(long)]
    sums: bool,
    /// Print statistics as JSON on stdout (on stderr when the archive goes to stdout).
    #[arg(long)]
    json: bool,
}

/// Decompress a zstd file (an rbddiff archive or any file written by `zstd`).
#[derive(clap::Args, Debug)]
pub struct DecompressArgs {
    /// Compressed input (`-` for stdin); or several, or directories (their diff files), each
    /// NAME.zst decompressed into the directory OUTPUT as NAME.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Output (`-` for stdout), or the directory for several inputs.
    #[arg(short, long)]
    output: String,
    /// Decompression threads for indexed archives (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Replace an existing output file.
    #[arg(short, long)]
    force: bool,
    /// Print statistics as JSON on stdout (on stderr when the output is stdout).
    #[arg(long)]
    json: bool,
}

pub fn run_compress(a: CompressArgs) -> Result<Status> {
    let opts = CompressOptions {
        level: a.level,
        threads: a.threads.unwrap_or_else(compress::default_threads),
        frame_target: a.frame_size,
    };
    let r = super::with_progress_on(super::first(&a.inputs), |p| {
        compress::compress_paths(&a.inputs, &a.output, a.force, a.sums, &opts, p)
    })?;
    super::note_skipped(&r.skipped)?;
    super::print_report(a.json, &r, |_| Ok(()))?;
    Ok(Status::Ok)
}

pub fn run_decompress(a: DecompressArgs) -> Result<Status> {
    let threads = a.threads.unwrap_or_else(compress::default_threads);
    let r = super::with_progress_on(super::first(&a.inputs), |p| {
        compress::decompress_paths(&a.inputs, &a.output, a.force, threads, p)
    })?;
    super::note_skipped(&r.skipped)?;
    super::print_report(a.json, &r, |_| Ok(()))?;
    Ok(Status::Ok)
}
