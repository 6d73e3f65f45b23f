//! The diffs of an `rbd export --export-format 2` image stream as a chain of v1 diffs.
//!
//! An image stream embeds the diffs of its snapshots, oldest first: a full diff to the first
//! snapshot, one from each snapshot to the next, and one from the last snapshot to the image
//! HEAD (when the export was of the HEAD). [`explode`] writes each as a `rbd diff v1` file,
//! the format `rbd import-diff` reads, with the same header (start and end snapshot, image
//! size) and the same records, so that importing the files in order gives the image and
//! snapshots the stream holds. Files are named `NNN-IMAGE@FROM..TO.diff` (`NNN-IMAGE@TO.full.diff`
//! for the first, `HEAD` for the image HEAD), numbered so that name order is chain order,
//! with snapshot names escaped as in an archive ([`crate::archive::names`]).
//!
//! One pass, forward: the stream may be stdin or zstd-compressed; payloads are copied
//! through, never held. What v1 cannot carry (the object order, features, striping and
//! image-meta of the image header) is left out; the report says so.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::input::{Input, Kind};
use crate::output::Output;
use crate::progress::Ticker;
use crate::stream::{ImageReader, ItemKind, RecordSource};
use crate::write::DiffWriter;
use crate::Version;

/// One diff written by [`explode`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExplodedDiff {
    /// The file written.
    pub file: String,
    /// Start snapshot (none: a full diff).
    pub from_snap: Option<String>,
    /// End snapshot (none: the image HEAD).
    pub to_snap: Option<String>,
    /// Image size at the end snapshot.
    pub image_size: u64,
    /// `w` records.
    pub writes: u64,
    /// Payload bytes.
    pub write_bytes: u64,
    /// `z` records.
    pub zeros: u64,
    /// Bytes covered by `z` records.
    pub zero_bytes: u64,
    /// Bytes of the file.
    pub diff_bytes: u64,
}

/// What [`explode`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExplodeReport {
    /// The image stream.
    pub input: String,
    /// The directory written to.
    pub dir: String,
    /// The diffs written, in chain order.
    pub diffs: Vec<ExplodedDiff>,
    /// What the image header held that v1 diffs cannot carry (object order, features,
    /// striping, image-meta keys), for the user to set on the target image.
    pub not_carried: Vec<String>,
}

/// Writes the embedded diffs of the image stream `input` (`-` for stdin; zstd is
/// decompressed) into `dir` (created when missing) as a chain of v1 diffs (see the module
/// docs). `progress` gets the bytes of the stream read so far and its length (0 when not
/// known: stdin, compressed).
///
/// Each file is committed (fsync, rename) when its diff is complete; on an error, the files
/// committed before are whole diffs of the chain and are kept.
///
/// # Errors
/// `input` is no image stream; a problem in it (named with byte offset and record); a file
/// exists (without `force`), or is the input; I/O errors.
pub fn explode(
    input: &str,
    dir: &Path,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExplodeReport> {
    let inp = Input::open(input)?;
    if inp.kind() != Kind::Image {
        return Err(Error::invalid(match inp.kind() {
            Kind::DiffV1 | Kind::DiffV2 => {
                "this is a diff, not an 'rbd image v2' stream: it is already what \
                 `rbd import-diff` reads"
            }
            _ => "not an 'rbd image v2' stream (what `rbd export --export-format 2` writes)",
        })
        .with_file(input));
    }
    let total = if inp.is_compressed() {
        0
    } else {
        inp.raw_len().unwrap_or(0)
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::from(e).with_file(dir))?;
    let stem = image_stem(input);
    let wrap = |e: Error| e.with_file(input);
    let mut rd = ImageReader::new(inp.into_reader()).map_err(wrap)?;
    let header = rd.header().clone();
    let mut report = ExplodeReport {
        input: input.to_string(),
        dir: dir.display().to_string(),
        not_carried: not_carried(&header),
        ..ExplodeReport::default()
    };
    let width = header.diff_count.to_string().len().max(3);
    let mut tick = Ticker::new(progress, total);
    let mut k = 0u64;
    let lossy = |n: &Option<Vec<u8>>| n.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    while let Some(d) = rd.next_diff().map_err(wrap)? {
        k += 1;
        let meta = d.metadata().clone();
        let (from, to) = (lossy(&meta.from_snap), lossy(&meta.to_snap));
        let name = format!(
            "{k:0width$}-{}",
            crate::archive::names::file_name(
                &stem,
                from.as_deref(),
                to.as_deref().unwrap_or("HEAD"),
                false
            )
        );
        let path = dir.join(&name);
        let path_s = path.to_string_lossy().into_owned();
        let mut out = Output::create_for(&path_s, force, &[Path::new(input)])?;
        let mut w =
            DiffWriter::new(&mut out, Version::V1, &meta).map_err(|e| e.with_file(&path))?;
        let mut e = ExplodedDiff {
            file: path_s.clone(),
            from_snap: from,
            to_snap: to,
            image_size: meta.image_size.unwrap_or(0),
            writes: 0,
            write_bytes: 0,
            zeros: 0,
            zero_bytes: 0,
            diff_bytes: 0,
        };
        while let Some(item) = d.next_item().map_err(wrap)? {
            match item.kind {
                ItemKind::Write { extent, mut data } => {
                    w.write_data_from(extent, &mut data)
                        .map_err(|e| e.with_file(&path))?;
                    e.writes += 1;
                    e.write_bytes += extent.len;
                }
                ItemKind::Zero(extent) => {
                    w.zero(extent).map_err(|e| e.with_file(&path))?;
                    e.zeros += 1;
                    e.zero_bytes += extent.len;
                }
                // Skipped by its length, as rbd import does; v1 cannot hold it.
                ItemKind::Unknown { .. } => {}
                ItemKind::End => break,
            }
            tick.set(d.position());
        }
        e.diff_bytes = w.bytes_written() + 1;
        w.finish().map_err(|e| e.with_file(&path))?;
        out.commit()?;
        report.diffs.push(e);
    }
    tick.finish();
    Ok(report)
}

/// The image's name for the files: the input's file name without its extensions, escaped,
/// or `image` (stdin, or a name too long for a file name).
fn image_stem(input: &str) -> String {
    let name = Path::new(input)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default();
    if input == "-" || stem.is_empty() || crate::archive::names::escape(stem).len() > 64 {
        "image".to_string()
    } else {
        stem.to_string()
    }
}

/// The header fields a v1 diff cannot carry, as `name=value`.
fn not_carried(h: &crate::ImageHeader) -> Vec<String> {
    let mut v = Vec::new();
    let mut num = |name: &str, x: Option<u64>| {
        if let Some(x) = x {
            v.push(format!("{name}={x}"));
        }
    };
    num("order", h.order);
    num("features", h.features);
    num("stripe_unit", h.stripe_unit);
    num("stripe_count", h.stripe_count);
    for (key, _) in &h.meta {
        v.push(format!("image-meta {}", String::from_utf8_lossy(key)));
    }
    v
}
