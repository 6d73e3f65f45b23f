//! One-pass N-way merge of a diff chain (`rbddiff merge`).
//!
//! The result is what applying the inputs in order gives: later records win over earlier ones,
//! writes and zeros alike, and image size changes follow `rbd merge-diff` exactly. A shrink
//! drops everything past the new size; a growth from size `F` to `S` adds a `z` record over
//! `[F, S)` (unless the growing diff writes there), so that a region cut by a shrink and regrown
//! reads as zeros after import, whatever the target held there. Merging `d1 … dn` in one call
//! therefore gives the same image as `rbd merge-diff` applied pairwise along the chain.
//!
//! How: [`plan`] walks only the record heads of every (memory-mapped) input, building an
//! [`ExtentMap`] in which later extents clip earlier ones; then the surviving payload ranges
//! are streamed, in image order, to the output: [`Plan::write`] from the mapped bytes,
//! [`Plan::write_from_files`] (what [`merge_files`] uses) with `pread` through one 1 MiB
//! buffer. Payloads are never held whole: memory is the map (about 50 bytes per extent,
//! measured by `benches/merge.rs`) plus that buffer. Every input is fully validated (chain, records, truncation) before the
//! first output byte is written.
//!
//! Streams (stdin, pipes) and zstd-compressed inputs are first copied to an anonymous
//! temporary file ([`Input::spill`]) and mapped, which costs their size in `$TMPDIR` disk
//! space but no memory.

use std::fs::File;
use std::io::Write;

use crate::error::{Error, ErrorKind, Result};
use crate::extent::{ExtentMap, Piece, MAX_INPUT, MAX_SRC_OFFSET};
use crate::format::{Metadata, Record, Version};
use crate::input::{Input, Kind};
use crate::output::Output;
use crate::slice::DiffSlice;
use crate::write::DiffWriter;

/// Adjacent data pieces are joined into one `w` record up to this length (the default RBD
/// object size, the largest record `rbd export-diff` writes for default images): `rbd
/// import-diff` holds a whole record in memory. Larger input records are never split.
pub const COALESCE_MAX: u64 = 4 << 20;

/// Size of the copy buffer of [`Plan::write_from_files`].
pub const COPY_BUF: usize = 1 << 20;

/// One input of a merge: its name (for messages) and its whole content.
#[derive(Clone, Copy, Debug)]
pub struct MergeInput<'a> {
    /// File name, as given by the user.
    pub name: &'a str,
    /// The whole diff (typically a memory-mapped file).
    pub bytes: &'a [u8],
}

/// Merge options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeOptions {
    /// Output format (`V1` is what `rbd import-diff` reads).
    pub version: Version,
    /// Skip the snapshot-name continuity check (for renamed snapshots).
    pub force_chain: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            version: Version::V1,
            force_chain: false,
        }
    }
}

/// What a merge did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MergeStats {
    /// Number of inputs.
    pub inputs: usize,
    /// Sum of the input sizes in bytes.
    pub input_bytes: u64,
    /// Bytes written (whole output stream).
    pub bytes_written: u64,
    /// `input_bytes - bytes_written` (negative if the output is larger).
    pub bytes_saved: i64,
    /// Data records written (`w` + `z`).
    pub records: u64,
    /// `w` records written.
    pub write_records: u64,
    /// `z` records written.
    pub zero_records: u64,
    /// Payload bytes written.
    pub data_bytes: u64,
    /// Bytes covered by `z` records.
    pub zero_bytes: u64,
    /// Extents in the merged map (before coalescing into records).
    pub extents: u64,
    /// Start snapshot of the result (none for a full diff).
    pub from_snap: Option<String>,
    /// End snapshot of the result (none for a diff to HEAD).
    pub to_snap: Option<String>,
    /// Image size of the result.
    pub image_size: u64,
}

/// The merged extent map of a chain, ready to be written.
#[derive(Debug)]
pub struct Plan<'a> {
    inputs: Vec<&'a [u8]>,
    meta: Metadata,
    map: ExtentMap,
    data_bytes: u64,
    input_bytes: u64,
}

fn show(n: Option<&[u8]>) -> String {
    match n {
        Some(b) => format!("'{}'", String::from_utf8_lossy(b)),
        None => "none".to_string(),
    }
}

/// Checks the chain and builds the merged map from the record heads of every input.
///
/// # Errors
/// An input that does not parse or has a bad record (named with file, byte offset and record);
/// a broken chain (naming both files and snapshots); a full diff that is not first; more inputs
/// or bigger files than the map can address.
pub fn plan<'a>(inputs: &[MergeInput<'a>], opts: &MergeOptions) -> Result<Plan<'a>> {
    if inputs.is_empty() {
        return Err(Error::invalid("nothing to merge: no inputs"));
    }
    if inputs.len() > MAX_INPUT as usize + 1 {
        return Err(Error::invalid(format!(
            "too many inputs ({}, at most {})",
            inputs.len(),
            MAX_INPUT as usize + 1
        )));
    }
    let mut slices = Vec::with_capacity(inputs.len());
    for inp in inputs {
        if inp.bytes.len() as u64 > MAX_SRC_OFFSET {
            return Err(Error::invalid("input larger than 256 TiB").with_file(inp.name));
        }
        slices.push(DiffSlice::parse(inp.bytes).map_err(|e| e.with_file(inp.name))?);
    }
    // Chain checks, on the headers only, before anything else.
    for (i, pair) in slices.windows(2).enumerate() {
        let (a, b) = (pair[0].metadata(), pair[1].metadata());
        let (na, nb) = (inputs[i].name, inputs[i + 1].name);
        if b.from_snap.is_none() {
            return Err(Error::new(ErrorKind::ChainBreak(format!(
                "{nb} is a full diff (no start snapshot) but follows {na}: a full diff may only come first"
            ))));
        }
        if !opts.force_chain && a.to_snap != b.from_snap {
            return Err(Error::new(ErrorKind::ChainBreak(format!(
                "chain break: {na} ends at snapshot {} but {nb} starts at snapshot {} \
                 (use --force-chain if the snapshots were renamed)",
                show(a.to_snap.as_deref()),
                show(b.from_snap.as_deref()),
            ))));
        }
    }
    let mut map = ExtentMap::new();
    let mut size: Option<u64> = None;
    let mut input_bytes = 0u64;
    for (i, (inp, d)) in inputs.iter().zip(&slices).enumerate() {
        input_bytes += inp.bytes.len() as u64;
        let wrap = |e: Error| e.with_file(inp.name);
        // A missing `s` is reported by the record walk below.
        let s = d.metadata().image_size.unwrap_or(0);
        match size {
            Some(prev) if s < prev => map.truncate(s),
            Some(prev) if s > prev => map.insert(prev, s, Piece::Zero),
            _ => {}
        }
        size = Some(s);
        let base = inp.bytes.as_ptr() as usize;
        for r in d.records() {
            let (_, rec) = r.map_err(wrap)?;
            match rec {
                Record::Write { offset, data } => {
                    let src = (data.as_ptr() as usize).wrapping_sub(base) as u64;
                    let piece = Piece::Data {
                        input: i as u32,
                        src_offset: src,
                    };
                    map.insert(offset, offset + data.len() as u64, piece);
                }
                Record::Zero(e) => map.insert(e.offset, e.offset + e.len, Piece::Zero),
                Record::End => break,
                _ => {}
            }
        }
    }
    let last = slices
        .last()
        .map(|d| d.metadata().clone())
        .unwrap_or_default();
    let meta = Metadata {
        from_snap: slices.first().and_then(|d| d.metadata().from_snap.clone()),
        to_snap: last.to_snap,
        protected: last.protected,
        image_size: size,
    };
    let data_bytes = map
        .iter()
        .filter(|(_, _, p)| matches!(p, Piece::Data { .. }))
        .map(|(s, e, _)| e - s)
        .sum();
    Ok(Plan {
        inputs: inputs.iter().map(|i| i.bytes).collect(),
        meta,
        map,
        data_bytes,
        input_bytes,
    })
}

/// Copies one payload piece `(out, input, source offset, bytes)` to the output.
type CopyFn<'c, W> = dyn FnMut(&mut W, u32, u64, &[u8]) -> std::io::Result<()> + 'c;

/// A run of adjacent extents to be written as one record.
enum Run {
    None,
    Zero(u64, u64),
    Data(u64, u64),
}

impl<'a> Plan<'a> {
    /// Header of the merged diff: start snapshot of the first input, end snapshot, protection
    /// flag and size of the last.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The merged extent map.
    pub fn extents(&self) -> &ExtentMap {
        &self.map
    }

    /// Payload bytes the output will carry.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    fn payload(&self, start: u64, end: u64, piece: Piece) -> Result<&'a [u8]> {
        let Piece::Data { input, src_offset } = piece else {
            return Ok(&[]);
        };
        let len = end - start;
        let bytes = self.inputs.get(input as usize).copied().unwrap_or_default();
        usize::try_from(src_offset)
            .ok()
            .zip(usize::try_from(src_offset + len).ok())
            .and_then(|(a, b)| bytes.get(a..b))
            .ok_or_else(|| Error::invalid("internal: payload range outside its input"))
    }

    /// Writes the merged diff to `out` (adjacent `z` extents, and adjacent data extents up to
    /// [`COALESCE_MAX`], become one record). `progress` is called with the payload bytes
    /// written so far and [`Plan::data_bytes`].
    ///
    /// # Errors
    /// I/O errors from `out`.
    pub fn write<W: Write>(
        &self,
        out: W,
        version: Version,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(W, MergeStats)> {
        self.write_with(out, version, progress, &mut |o: &mut W, _, _, data| {
            o.write_all(data)
        })
    }

    /// [`Plan::write`], reading payloads with `pread` from `sources[input]` (the file each
    /// input was mapped from) into one reused buffer of [`COPY_BUF`] bytes instead of copying
    /// from the mapping: measured faster than both the mapping (no page-table work for the
    /// payload pages) and `copy_file_range` (which ext4 without reflinks runs through splice).
    /// Inputs without a file are copied from their bytes.
    ///
    /// # Errors
    /// As [`Plan::write`].
    pub fn write_from_files<W: Write>(
        &self,
        out: W,
        sources: &[Option<&File>],
        version: Version,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(W, MergeStats)> {
        use std::os::unix::fs::FileExt;
        let mut buf: Vec<u8> = Vec::new();
        self.write_with(
            out,
            version,
            progress,
            &mut |o: &mut W, input, src, data| {
                let Some(f) = sources.get(input as usize).copied().flatten() else {
                    return o.write_all(data);
                };
                if buf.is_empty() {
                    buf = vec![0; COPY_BUF];
                }
                let (mut off, mut left) = (src, data.len());
                while left > 0 {
                    let n = left.min(buf.len());
                    let chunk = &mut buf[..n];
                    f.read_exact_at(chunk, off)?;
                    o.write_all(chunk)?;
                    off += n as u64;
                    left -= n;
                }
                Ok(())
            },
        )
    }

    fn write_with<W: Write>(
        &self,
        out: W,
        version: Version,
        progress: &mut dyn FnMut(u64, u64),
        copy: &mut CopyFn<'_, W>,
    ) -> Result<(W, MergeStats)> {
        let mut w = DiffWriter::new(out, version, &self.meta)?;
        let mut stats = MergeStats {
            inputs: self.inputs.len(),
            input_bytes: self.input_bytes,
            extents: self.map.len() as u64,
            from_snap: self.meta.from_snap.as_deref().map(lossy),
            to_snap: self.meta.to_snap.as_deref().map(lossy),
            image_size: self.meta.image_size.unwrap_or(0),
            ..MergeStats::default()
        };
        let mut run = Run::None;
        let mut pieces: Vec<(u64, u64, Piece)> = Vec::new();
        let mut flush = |run: &mut Run,
                         pieces: &mut Vec<(u64, u64, Piece)>,
                         w: &mut DiffWriter<W>,
                         stats: &mut MergeStats|
         -> Result<()> {
            match std::mem::replace(run, Run::None) {
                Run::None => {}
                Run::Zero(s, e) => {
                    w.zero(crate::Extent::new(s, e - s))?;
                    stats.zero_records += 1;
                    stats.zero_bytes += e - s;
                }
                Run::Data(s, e) => {
                    w.begin_data(crate::Extent::new(s, e - s))?;
                    for &(ps, pe, p) in pieces.iter() {
                        let data = self.payload(ps, pe, p)?;
                        if let Piece::Data { input, src_offset } = p {
                            copy(w.get_mut(), input, src_offset, data)?;
                        }
                        w.add_written(data.len() as u64);
                    }
                    stats.write_records += 1;
                    stats.data_bytes += e - s;
                    progress(stats.data_bytes, self.data_bytes);
                }
            }
            pieces.clear();
            Ok(())
        };
        for (s, e, p) in self.map.iter() {
            let joins = match (&run, p) {
                (Run::Zero(_, re), Piece::Zero) => *re == s,
                (Run::Data(rs, re), Piece::Data { .. }) => {
                    *re == s && e - rs <= COALESCE_MAX && pieces.len() < 1024
                }
                _ => false,
            };
            if joins {
                match &mut run {
                    Run::Zero(_, re) | Run::Data(_, re) => *re = e,
                    Run::None => {}
                }
            } else {
                flush(&mut run, &mut pieces, &mut w, &mut stats)?;
                run = match p {
                    Piece::Zero => Run::Zero(s, e),
                    Piece::Data { .. } => Run::Data(s, e),
                };
            }
            if matches!(p, Piece::Data { .. }) {
                pieces.push((s, e, p));
            }
        }
        flush(&mut run, &mut pieces, &mut w, &mut stats)?;
        stats.records = stats.write_records + stats.zero_records;
        stats.bytes_written = w.bytes_written() + 1;
        let out = w.finish()?;
        stats.bytes_saved = stats.input_bytes as i64 - stats.bytes_written as i64;
        Ok((out, stats))
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Merges `inputs` (in chain order) into `out`: [`plan`], then [`Plan::write`].
///
/// # Errors
/// As [`plan`] and [`Plan::write`]; nothing is written when the inputs are invalid.
pub fn merge<W: Write>(
    inputs: &[MergeInput<'_>],
    out: W,
    opts: &MergeOptions,
) -> Result<MergeStats> {
    let p = plan(inputs, opts)?;
    let (_, stats) = p.write(out, opts.version, &mut |_, _| {})?;
    Ok(stats)
}

/// Opens an input for merging: plain files are mapped; stdin, pipes and zstd-compressed
/// inputs are decoded and spilled to an anonymous temporary file first ([`Input::into_mapped`]).
///
/// # Errors
/// Opening, reading or decompressing fails, or the input is an image export.
pub fn open_input(path: &str) -> Result<Input> {
    let input = Input::open(path)?.into_mapped()?;
    match input.kind() {
        Kind::Image => Err(Error::invalid(
            "an 'rbd image v2' export cannot be merged as a diff (merge its diffs instead)",
        )
        .with_file(path)),
        Kind::Zstd => Err(Error::invalid("doubly compressed input").with_file(path)),
        _ => Ok(input),
    }
}

/// `rbddiff merge`: opens `paths` (at most one `-` = stdin), checks and plans the merge, then
/// writes `out` (`-` = stdout) atomically (temporary file beside it, fsync, rename; refused if
/// it exists unless `force`). On any error no output file is left.
///
/// `progress` receives `(payload bytes written, payload bytes total)`.
///
/// # Errors
/// As [`open_input`], [`plan`] and [`Output::create`], and I/O errors while writing.
pub fn merge_files(
    paths: &[String],
    out: &str,
    force: bool,
    opts: &MergeOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeStats> {
    if paths.iter().filter(|p| *p == "-").count() > 1 {
        return Err(Error::invalid("stdin ('-') can be given only once"));
    }
    let opened = paths
        .iter()
        .map(|p| open_input(p))
        .collect::<Result<Vec<_>>>()?;
    let inputs: Vec<MergeInput<'_>> = opened
        .iter()
        .map(|i| MergeInput {
            name: i.name(),
            bytes: i.bytes().unwrap_or_default(),
        })
        .collect();
    let p = plan(&inputs, opts)?;
    let output = Output::create(out, force)?;
    let wrap = |e: Error| {
        if out == "-" {
            e
        } else {
            e.with_file(out)
        }
    };
    let sources: Vec<Option<&File>> = opened.iter().map(Input::file).collect();
    let (output, stats) = p
        .write_from_files(output, &sources, opts.version, progress)
        .map_err(wrap)?;
    output.commit().map_err(wrap)?;
    Ok(stats)
}
