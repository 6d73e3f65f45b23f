//! `rbddiff merge`.

use std::io::{self, Write};

use rbddiff::compress::{self, CompressOptions};
use rbddiff::format::{show_from, show_to};
use rbddiff::merge::{merge_files_to, MergeOptions};
use rbddiff::size::Bytes;
use rbddiff::{Result, Version};

use super::Status;

/// Merge a chain of diffs (oldest first) into one diff, in one pass.
///
/// The result equals applying the inputs in order: later records win, image size changes are
/// honoured as `rbd merge-diff` does. Header: start snapshot of the first input, end snapshot
/// and size of the last. Each input must start at the snapshot the previous one ends at.
/// Inputs may be v1 or v2 diffs, or zstd-compressed; one may be `-` (stdin).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Diff files, oldest first (`-` for stdin, at most once), or directories: a
    /// directory stands for its diff files, ordered by their headers into a chain.
    #[arg(required = true, num_args = 1..)]
    inputs: Vec<String>,
    /// Output file (`-` for stdout).
    #[arg(short, long)]
    output: String,
    /// Output format: v1 (what `rbd import-diff` reads) or v2.
    #[arg(long, value_enum, default_value_t = Format::V1)]
    format: Format,
    /// Replace the output file if it exists.
    #[arg(short, long)]
    force: bool,
    /// Order the inputs into a chain by their headers (as for a directory), so that
    /// `merge *.diff` works whatever order the shell gives.
    #[arg(long)]
    sort: bool,
    /// Snapshot OLD was renamed to NEW: let a diff starting at NEW follow the one ending at
    /// OLD (repeatable). Each must match a link; the report warns of each link it lets through.
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_rename)]
    assume_renamed: Vec<(String, String)>,
    /// Removed: it let any diff follow any other, so that a missing diff gave a wrong image.
    #[arg(long, hide = true)]
    force_chain: bool,
    /// Also write the checksum sidecar OUT.sums (for a compressed output: sums of the
    /// merged diff stream plus the archive's length and digest); `rbddiff verify` checks it.
    #[arg(long)]
    sums: bool,
    /// Print a JSON summary on stdout (or stderr when the output is stdout).
    #[arg(long)]
    json: bool,
    /// Write a compressed, indexed zstd archive (implied by an output name ending in `.zst`).
    #[arg(long)]
    compress: bool,
    /// zstd level for a compressed output.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    level: i32,
    /// Compression threads for a compressed output (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Format {
    V1,
    V2,
}

fn parse_rename(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.is_empty() && !new.is_empty() => {
            Ok((old.to_string(), new.to_string()))
        }
        _ => Err(format!("{s:?} is not OLD=NEW (two snapshot names)")),
    }
}

pub fn run(a: Args) -> Result<Status> {
    if a.force_chain {
        return Err(rbddiff::Error::invalid(
            "--force-chain was removed: it accepted any diff after any other, and a missing \
             diff then gave a wrong image; give the inputs in chain order (or add --sort), and \
             for a snapshot that was really renamed use --assume-renamed OLD=NEW",
        ));
    }
    // With a file size limit (`ulimit -f`), fail the write with EFBIG instead of being killed,
    // so that the temporary output is removed.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let opts = MergeOptions {
        version: match a.format {
            Format::V1 => Version::V1,
            Format::V2 => Version::V2,
        },
        assume_renamed: a.assume_renamed,
        sort: a.sort,
        sums: a.sums,
    };
    let copts = (a.compress || a.output.ends_with(".zst")).then(|| CompressOptions {
        level: a.level,
        threads: a.threads.unwrap_or_else(compress::default_threads),
        ..CompressOptions::default()
    });
    let stats = super::with_progress_on(super::first(&a.inputs), |p| {
        merge_files_to(&a.inputs, &a.output, a.force, &opts, copts.as_ref(), p)
    });
    let stats = stats?;
    super::note_skipped(&stats.skipped)?;
    if !a.json {
        // Tolerated by rbd, but worth knowing: the merged output no longer carries them.
        // Ceph 16's `p` length field is known Ceph behaviour: one note for all inputs.
        let mut quirky = std::collections::BTreeSet::new();
        for w in &stats.warnings {
            if w.kind.is_ceph16_p_length() {
                quirky.insert(w.file.as_str());
            } else {
                super::warn(w)?;
            }
        }
        if !quirky.is_empty() && !super::quiet() {
            writeln!(
                io::stderr(),
                "rbddiff: {}",
                rbddiff::error::ceph16_note(quirky.len())
            )?;
        }
        for r in &stats.renames {
            super::warn(r)?;
        }
        super::summary(format_args!(
            "merged {} input(s), {} -> {}, into {}: {} ({} data records), image size {}",
            stats.inputs,
            show_from(stats.from_snap.as_deref()),
            show_to(stats.to_snap.as_deref()),
            if a.output == "-" { "stdout" } else { &a.output },
            Bytes(stats.bytes_written),
            stats.records,
            Bytes(stats.image_size)
        ))?;
    }
    super::print_report(a.json, &stats, |_| Ok(()))?;
    Ok(Status::Ok)
}
