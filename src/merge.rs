//! One-pass N-way merge of a diff chain (`rbddiff merge`).
//!
//! The result is what applying the inputs in order gives: later records win over earlier ones,
//! writes and zeros alike, and image size changes follow `rbd merge-diff` exactly. A shrink
//! drops everything past the new size; a growth from size `F` to `S` adds a `z` record over
//! `[F, S)` (unless the growing diff writes there), so that a region cut by a shrink and regrown
//! reads as zeros after import, whatever the target held there. Merging `d1 … dn` in one call
//! therefore gives the same image as `rbd merge-diff` applied pairwise along the chain.
//!
//! How: [`plan`] walks only the record heads of every input (for an indexed archive, its
//! record index, trusted only once [`open_input`] has checked it against the record heads of
//! the content: the frames holding a head are decompressed once, frames of payload bytes
//! only are not; an archive whose index does not match is read as a plain zstd stream), building an [`ExtentMap`] in which later extents
//! clip earlier ones; then [`Plan::write`] streams the surviving payload ranges, in image
//! order, to the output: from mapped files with `pread` through one 1 MiB buffer, from
//! archives with [`ZstArchive::copy_range`], which decompresses only the frames holding
//! surviving data (a small frame cache makes consecutive pieces of one frame cheap).
//! Payloads are never held whole: memory is the map (about 50 bytes per extent, measured by
//! `benches/merge.rs`) plus that buffer and the cached frames. Every input is fully validated
//! (chain, records, truncation) before the first output byte is written; a corrupt archive
//! frame is only noticed when a surviving payload is read from it (a frame holding only
//! overwritten data is never read), and fails the merge, leaving no output.
//!
//! Streams (stdin, pipes) and zstd files without an rbddiff index (written by `zstd` itself)
//! are first copied to an anonymous temporary file ([`Input::spill`]) and mapped, which costs
//! their size in `$TMPDIR` disk space but no memory. [`merge_files_to`] writes a compressed
//! archive directly (`merge … -o OUT.zst`).

use std::fs::File;
use std::io::Write;

use crate::error::{Error, ErrorKind, Result, Warning, WarningKind};
use crate::extent::{ExtentMap, Piece, MAX_INPUT, MAX_SRC_OFFSET};
use crate::format::{tag, Metadata, Record, Version};
use crate::input::{Input, Kind};
use crate::output::Output;
use crate::progress::Ticker;
use crate::slice::DiffSlice;
use crate::stream::{DiffReader, RecordSource};
use crate::write::DiffWriter;
use crate::zst::{IndexedDiff, ZstArchive};

/// Adjacent data pieces are joined into one `w` record up to this length (the default RBD
/// object size, the largest record `rbd export-diff` writes for default images): `rbd
/// import-diff` holds a whole record in memory. Larger input records are never split.
pub const COALESCE_MAX: u64 = 4 << 20;

/// Size of the copy buffer of [`Plan::write_from_files`].
pub const COPY_BUF: usize = 1 << 20;

/// Where the payloads of a merge input come from.
pub enum Source<'a> {
    /// A whole diff in memory (typically a memory-mapped file), with the file it was mapped
    /// from, if any: payloads are then read from the file with `pread`.
    Bytes {
        /// The whole diff.
        bytes: &'a [u8],
        /// The file `bytes` maps.
        file: Option<&'a File>,
    },
    /// An indexed archive ([`crate::zst`]): the plan is built from its record index without
    /// decompressing anything, and only the frames holding surviving payloads are
    /// decompressed while the output is written.
    Archive(Box<ZstArchive<'a>>),
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Bytes { bytes, file } => write!(
                f,
                "Bytes({} bytes{})",
                bytes.len(),
                if file.is_some() { ", file" } else { "" }
            ),
            Source::Archive(a) => write!(f, "{a:?}"),
        }
    }
}

/// One input of a merge: its name (for messages) and where its records and payloads are read.
#[derive(Debug)]
pub struct MergeInput<'a> {
    /// File name, as given by the user.
    pub name: &'a str,
    /// The diff.
    pub source: Source<'a>,
}

impl<'a> MergeInput<'a> {
    /// A diff held in memory.
    pub fn bytes(name: &'a str, bytes: &'a [u8]) -> Self {
        MergeInput {
            name,
            source: Source::Bytes { bytes, file: None },
        }
    }

    /// A diff mapped from `file` (payloads are read from the file with `pread`).
    pub fn mapped(name: &'a str, bytes: &'a [u8], file: &'a File) -> Self {
        MergeInput {
            name,
            source: Source::Bytes {
                bytes,
                file: Some(file),
            },
        }
    }

    /// An indexed archive.
    pub fn archive(name: &'a str, archive: ZstArchive<'a>) -> Self {
        MergeInput {
            name,
            source: Source::Archive(Box::new(archive)),
        }
    }

    /// zstd frames decompressed so far (0 unless the input is an archive).
    pub fn frames_decompressed(&self) -> u64 {
        match &self.source {
            Source::Archive(a) => a.frames_decompressed(),
            Source::Bytes { .. } => 0,
        }
    }

    /// Length of the (decompressed) diff.
    fn len(&self) -> u64 {
        match &self.source {
            Source::Bytes { bytes, .. } => bytes.len() as u64,
            Source::Archive(a) => a.len(),
        }
    }
}

/// Merge options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeOptions {
    /// Output format (`V1` is what `rbd import-diff` reads).
    pub version: Version,
    /// Skip the snapshot-name continuity check (for renamed snapshots).
    pub force_chain: bool,
    /// [`merge_files_to`]: write the checksum sidecar `OUT.sums` ([`crate::sums`]) once the
    /// output is committed (refused for stdout).
    pub sums: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            version: Version::V1,
            force_chain: false,
            sums: false,
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
    /// Bytes written (whole diff stream, before any compression).
    #[serde(rename = "diff_bytes")]
    pub bytes_written: u64,
    /// `input_bytes - diff_bytes` (negative if the output is larger).
    pub bytes_saved: i64,
    /// Data records written (`w` + `z`).
    #[serde(rename = "data_records")]
    pub records: u64,
    /// `w` records written.
    #[serde(rename = "writes")]
    pub write_records: u64,
    /// `z` records written.
    #[serde(rename = "zeros")]
    pub zero_records: u64,
    /// Payload bytes written.
    #[serde(rename = "write_bytes")]
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
    /// Warnings found in the inputs (tolerated by rbd, e.g. duplicate metadata records,
    /// unknown v2 tags, Ceph 16's `p` length field), in input order.
    pub warnings: Vec<InputWarning>,
    /// zstd frames decompressed from indexed archive inputs to copy payloads (only those
    /// holding surviving payloads; the index check of [`open_input`] is not counted).
    pub frames_decompressed: u64,
    /// Arguments and directory entries passed over (see [`crate::dirlist`]).
    pub skipped: Vec<crate::dirlist::Skipped>,
}

/// A warning found in one input of a merge.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InputWarning {
    /// The input, as named by the user.
    pub file: String,
    /// Byte offset in the (decompressed) diff.
    pub offset: u64,
    /// Record index, when the warning is about one record.
    pub record: Option<u64>,
    /// What was found.
    pub kind: WarningKind,
    /// Human-readable message (with offset and record).
    pub message: String,
}

impl InputWarning {
    fn new(file: &str, w: &Warning) -> Self {
        InputWarning {
            file: file.to_string(),
            offset: w.offset,
            record: w.record,
            kind: w.kind.clone(),
            message: w.to_string(),
        }
    }
}

impl std::fmt::Display for InputWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// The merged extent map of a chain, ready to be written.
#[derive(Debug)]
pub struct Plan {
    inputs: usize,
    meta: Metadata,
    map: ExtentMap,
    data_bytes: u64,
    input_bytes: u64,
    warnings: Vec<InputWarning>,
}

/// The headers of an input: a parsed diff in memory, or an archive's index.
enum Parsed<'x> {
    Slice(DiffSlice<'x>),
    Index(&'x IndexedDiff, u64),
}

impl Parsed<'_> {
    fn metadata(&self) -> &Metadata {
        match self {
            Parsed::Slice(d) => d.metadata(),
            Parsed::Index(d, _) => &d.metadata,
        }
    }
}

fn parse_input<'x>(inp: &'x MergeInput<'_>) -> Result<Parsed<'x>> {
    match &inp.source {
        Source::Bytes { bytes, .. } => {
            if bytes.len() as u64 > MAX_SRC_OFFSET {
                return Err(Error::invalid("input larger than 256 TiB"));
            }
            Ok(Parsed::Slice(DiffSlice::parse(bytes)?))
        }
        Source::Archive(a) => {
            let idx = a.index();
            match (idx.kind, idx.diffs.as_slice()) {
                (Kind::DiffV1 | Kind::DiffV2, [d]) if a.len() <= MAX_SRC_OFFSET => {
                    Ok(Parsed::Index(d, a.len()))
                }
                (Kind::DiffV1 | Kind::DiffV2, [_]) => {
                    Err(Error::invalid("input larger than 256 TiB"))
                }
                _ => Err(Error::invalid(
                    "an 'rbd image v2' export cannot be merged as a diff (merge its diffs instead)",
                )),
            }
        }
    }
}

/// Adds the records of an archive's index to `map`, checking them as the record walk of a
/// plain diff would (the index is checksummed, but may have been crafted): ascending,
/// non-empty, inside the image size, payloads inside the stream, `e` present.
fn insert_indexed(map: &mut ExtentMap, input: u32, d: &IndexedDiff, total: u64) -> Result<()> {
    let size = d.metadata.image_size.ok_or_else(|| {
        Error::at(
            ErrorKind::MissingSize,
            d.start,
            Some(d.record_count.saturating_sub(d.records.len() as u64)),
        )
    })?;
    let base = d.record_count.saturating_sub(d.records.len() as u64);
    let (mut prev_end, mut prev_pos, mut ended) = (0u64, d.start, false);
    for (k, r) in d.records.iter().enumerate() {
        let at = |kind: ErrorKind| Error::at(kind, r.pos, Some(base + k as u64));
        if ended || r.pos < prev_pos || (k > 0 && r.pos == prev_pos) {
            return Err(at(ErrorKind::Invalid(
                "record index: records out of stream order".into(),
            )));
        }
        prev_pos = r.pos;
        match r.tag {
            tag::WRITE | tag::ZERO => {
                if r.len == 0 {
                    return Err(at(ErrorKind::ZeroLength {
                        tag: r.tag,
                        offset: r.offset,
                    }));
                }
                if r.offset < prev_end {
                    return Err(at(ErrorKind::OutOfOrder {
                        tag: r.tag,
                        offset: r.offset,
                        prev_end,
                    }));
                }
                let end = r.offset.checked_add(r.len).filter(|&e| e <= size);
                let end = end.ok_or_else(|| {
                    at(ErrorKind::ExtentPastSize {
                        tag: r.tag,
                        offset: r.offset,
                        len: r.len,
                        size,
                    })
                })?;
                prev_end = end;
                if r.tag == tag::ZERO {
                    map.insert(r.offset, end, Piece::Zero);
                    continue;
                }
                let src = d.payload_pos(r);
                let limit = d.records.get(k + 1).map_or(d.end, |n| n.pos).min(total);
                if src.checked_add(r.len).filter(|&e| e <= limit).is_none() {
                    return Err(at(ErrorKind::Invalid(
                        "record index: payload runs past the next record".into(),
                    )));
                }
                let piece = Piece::Data {
                    input,
                    src_offset: src,
                };
                map.insert(r.offset, end, piece);
            }
            tag::END => ended = true,
            _ => {}
        }
    }
    if !ended {
        return Err(Error::at(ErrorKind::MissingEnd, d.end, None));
    }
    Ok(())
}

/// Checks that each header starts where the one before ends (pairs with an unknown header,
/// `None`, are skipped): a full diff only first, and, unless `force_chain`, the start snapshot
/// of each diff is the end snapshot of the one before.
///
/// A break is explained without pointing at a flag that could give a wrong image: inputs
/// given out of order are named with their chain order (found from the headers), and a
/// missing diff is named by the snapshots it would link.
///
/// # Errors
/// A chain break, naming both files and snapshots.
pub fn check_links(names: &[&str], metas: &[Option<&Metadata>], force_chain: bool) -> Result<()> {
    for (i, pair) in metas.windows(2).enumerate() {
        let (Some(a), Some(b)) = (pair[0], pair[1]) else {
            continue;
        };
        let (na, nb) = (names[i], names[i + 1]);
        let lossy =
            |n: &Option<Vec<u8>>| n.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        let end = crate::format::show_to(lossy(&a.to_snap).as_deref());
        let start = crate::format::show_from(lossy(&b.from_snap).as_deref());
        let follows = |from: &Option<Vec<u8>>| from.is_some() && *from == a.to_snap;
        let broken = b.from_snap.is_none() || (!force_chain && a.to_snap != b.from_snap);
        if !broken {
            continue;
        }
        let msg = if let Some(order) = chain_order(metas) {
            let list: Vec<&str> = order.iter().map(|&k| names[k]).collect();
            format!(
                "inputs out of order: {nb} does not start where {na} ends ({end}); by their \
                 headers the chain is: {}",
                list.join(" ")
            )
        } else if let Some(k) = metas
            .iter()
            .position(|m| m.is_some_and(|m| follows(&m.from_snap)))
        {
            format!(
                "inputs out of order: {na} ends at {end}, and the input that starts there is \
                 {} (given as input {}), not {nb}",
                names[k],
                k + 1
            )
        } else if b.from_snap.is_none() {
            format!(
                "{nb} is a full diff (no start snapshot) but follows {na}: a full diff may only \
                 come first"
            )
        } else if a.to_snap.is_none() {
            format!("{na} ends at the image HEAD (no end snapshot): nothing can follow it, but {nb} does")
        } else {
            format!(
                "chain break: {na} ends at {end} but {nb} starts at {start}: the diff from {end} \
                 to {start} is missing"
            )
        };
        return Err(Error::new(ErrorKind::ChainBreak(msg)));
    }
    Ok(())
}

/// The order of all `metas` as one chain by their snapshots (a full diff, or the one diff
/// whose start no other ends at, first), when there is exactly one such order.
fn chain_order(metas: &[Option<&Metadata>]) -> Option<Vec<usize>> {
    let m: Vec<&Metadata> = metas.iter().copied().collect::<Option<_>>()?;
    let starts_at = |snap: &Option<Vec<u8>>| {
        let mut it = (0..m.len()).filter(|&k| snap.is_some() && m[k].from_snap == *snap);
        let first = it.next();
        it.next().is_none().then_some(first).flatten()
    };
    let firsts: Vec<usize> = (0..m.len())
        .filter(|&k| m[k].from_snap.is_none() || !m.iter().any(|o| o.to_snap == m[k].from_snap))
        .collect();
    let [mut cur] = firsts[..] else {
        return None;
    };
    let mut order = vec![cur];
    while order.len() < m.len() {
        cur = starts_at(&m[cur].to_snap)?;
        if order.contains(&cur) {
            return None;
        }
        order.push(cur);
    }
    Some(order)
}

/// The header of an opened input, read without spilling or consuming anything: mapped bytes
/// are parsed in place, a mapped zstd file is decompressed only as far as its header. `None`
/// for stdin and other streams (they can be read only once).
///
/// # Errors
/// The header is invalid.
fn header_of(input: &Input) -> Result<Option<Metadata>> {
    let wrap = |e: Error| e.with_file(input.name());
    if let Some(b) = input.bytes() {
        return Ok(Some(DiffSlice::parse(b).map_err(wrap)?.metadata().clone()));
    }
    let Some(raw) = input.raw_bytes() else {
        return Ok(None);
    };
    let rd = DiffReader::new(crate::zst::ZstdReader::new(raw).map_err(wrap)?).map_err(wrap)?;
    Ok(Some(rd.metadata().clone()))
}

/// Checks the chain and builds the merged map from the record heads of every input (for an
/// archive: from its record index, decompressing nothing).
///
/// # Errors
/// An input that does not parse or has a bad record (named with file, byte offset and record);
/// a broken chain (naming both files and snapshots); a full diff that is not first; more inputs
/// or bigger files than the map can address.
pub fn plan(inputs: &[MergeInput<'_>], opts: &MergeOptions) -> Result<Plan> {
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
    let parsed = inputs
        .iter()
        .map(|inp| parse_input(inp).map_err(|e| e.with_file(inp.name)))
        .collect::<Result<Vec<_>>>()?;
    // Chain checks, on the headers only, before anything else.
    let names: Vec<&str> = inputs.iter().map(|i| i.name).collect();
    let metas: Vec<Option<&Metadata>> = parsed.iter().map(|d| Some(d.metadata())).collect();
    check_links(&names, &metas, opts.force_chain)?;
    let mut map = ExtentMap::new();
    let mut size: Option<u64> = None;
    let mut input_bytes = 0u64;
    let mut warnings = Vec::new();
    for (i, (inp, d)) in inputs.iter().zip(&parsed).enumerate() {
        input_bytes += inp.len();
        let wrap = |e: Error| e.with_file(inp.name);
        // A missing `s` is reported by the record walk below.
        let s = d.metadata().image_size.unwrap_or(0);
        match size {
            Some(prev) if s < prev => map.truncate(s),
            Some(prev) if s > prev => map.insert(prev, s, Piece::Zero),
            _ => {}
        }
        size = Some(s);
        match d {
            Parsed::Slice(d) => {
                let Source::Bytes { bytes, .. } = inp.source else {
                    return Err(Error::invalid("internal: parsed input is not in memory"));
                };
                let base = bytes.as_ptr() as usize;
                let mut recs = d.records();
                for r in recs.by_ref() {
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
                        _ => {}
                    }
                }
                warnings.extend(
                    recs.warnings()
                        .iter()
                        .map(|w| InputWarning::new(inp.name, w)),
                );
            }
            Parsed::Index(d, total) => {
                insert_indexed(&mut map, i as u32, d, *total).map_err(wrap)?;
                warnings.extend(d.warnings.iter().map(|w| InputWarning::new(inp.name, w)));
            }
        }
    }
    let last = parsed
        .last()
        .map(|d| d.metadata().clone())
        .unwrap_or_default();
    let meta = Metadata {
        from_snap: parsed.first().and_then(|d| d.metadata().from_snap.clone()),
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
        inputs: inputs.len(),
        meta,
        map,
        data_bytes,
        input_bytes,
        warnings,
    })
}

/// A run of adjacent extents to be written as one record.
enum Run {
    None,
    Zero(u64, u64),
    Data(u64, u64),
}

/// Copies `len` payload bytes at `src` of `inp` to `out`: from the mapped bytes, with `pread`
/// from the mapped file through `buf` (faster than copying from the mapping, with no
/// page-table work for the payload pages, and measured no slower than `copy_file_range`,
/// which ext4 without reflinks runs through splice), or through the archive's frame cache.
fn copy_piece<W: Write>(
    inp: &mut MergeInput<'_>,
    src: u64,
    len: u64,
    out: &mut W,
    buf: &mut Vec<u8>,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let MergeInput { name, source } = inp;
    match source {
        Source::Bytes {
            file: Some(f),
            bytes,
        } => {
            if src
                .checked_add(len)
                .filter(|&e| e <= bytes.len() as u64)
                .is_none()
            {
                return Err(Error::invalid("internal: payload range outside its input"));
            }
            if buf.is_empty() {
                *buf = vec![0; COPY_BUF];
            }
            let (mut off, mut left) = (src, len);
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                let chunk = &mut buf[..n];
                f.read_exact_at(chunk, off)
                    .map_err(|e| Error::from(e).with_file(&**name))?;
                out.write_all(chunk)?;
                off += n as u64;
                left -= n as u64;
            }
            Ok(())
        }
        Source::Bytes { bytes, file: None } => {
            let data = usize::try_from(src)
                .ok()
                .zip(usize::try_from(src + len).ok())
                .and_then(|(a, b)| bytes.get(a..b))
                .ok_or_else(|| Error::invalid("internal: payload range outside its input"))?;
            Ok(out.write_all(data)?)
        }
        Source::Archive(a) => a
            .copy_range(src, len, out)
            .map_err(|e| e.with_file(&**name)),
    }
}

impl Plan {
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

    /// Warnings found in the inputs.
    pub fn warnings(&self) -> &[InputWarning] {
        &self.warnings
    }

    /// Writes the merged diff to `out`, reading the surviving payloads from `inputs` (the
    /// inputs the plan was made from, in the same order). Adjacent `z` extents, and adjacent
    /// data extents up to [`COALESCE_MAX`], become one record. `progress` is called with the
    /// payload bytes written so far and [`Plan::data_bytes`] (see [`crate::progress`]).
    ///
    /// # Errors
    /// I/O errors from `out` or the inputs; a corrupt archive frame holding a surviving
    /// payload (named with the input, the frame and its offsets).
    pub fn write<W: Write>(
        &self,
        inputs: &mut [MergeInput<'_>],
        out: W,
        version: Version,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(W, MergeStats)> {
        if inputs.len() != self.inputs {
            return Err(Error::invalid("internal: plan written with other inputs"));
        }
        let before: u64 = inputs.iter().map(MergeInput::frames_decompressed).sum();
        let mut w = DiffWriter::new(out, version, &self.meta)?;
        let mut stats = MergeStats {
            inputs: self.inputs,
            input_bytes: self.input_bytes,
            extents: self.map.len() as u64,
            from_snap: self.meta.from_snap.as_deref().map(lossy),
            to_snap: self.meta.to_snap.as_deref().map(lossy),
            image_size: self.meta.image_size.unwrap_or(0),
            warnings: self.warnings.clone(),
            ..MergeStats::default()
        };
        let mut tick = Ticker::new(progress, self.data_bytes);
        let mut buf = Vec::new();
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
                        if let Piece::Data { input, src_offset } = p {
                            let inp = inputs.get_mut(input as usize).ok_or_else(|| {
                                Error::invalid("internal: piece of an unknown input")
                            })?;
                            copy_piece(inp, src_offset, pe - ps, w.get_mut(), &mut buf)?;
                            w.add_written(pe - ps);
                        }
                    }
                    stats.write_records += 1;
                    stats.data_bytes += e - s;
                    tick.set(stats.data_bytes);
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
        tick.finish();
        stats.records = stats.write_records + stats.zero_records;
        stats.bytes_written = w.bytes_written() + 1;
        let out = w.finish()?;
        stats.bytes_saved = stats.input_bytes as i64 - stats.bytes_written as i64;
        let after: u64 = inputs.iter().map(MergeInput::frames_decompressed).sum();
        stats.frames_decompressed = after - before;
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
    inputs: &mut [MergeInput<'_>],
    out: W,
    opts: &MergeOptions,
) -> Result<MergeStats> {
    let p = plan(inputs, opts)?;
    let (_, stats) = p.write(inputs, out, opts.version, &mut |_, _| {})?;
    Ok(stats)
}

/// Opens an input for merging: plain files are mapped; indexed archives ([`crate::zst`]) are
/// mapped as they are (read through their index, see [`Source::Archive`]) once the index
/// is checked against the record heads of the content; stdin, pipes, zstd files without an
/// index and archives whose index does not match are decoded and spilled to an anonymous
/// temporary file first ([`Input::into_mapped`]).
///
/// # Errors
/// Opening, reading or decompressing fails, or the input is an image export.
pub fn open_input(path: &str) -> Result<Input> {
    prepare(Input::open(path)?)
}

/// An image export is refused.
fn refuse_image(input: &Input) -> Result<()> {
    if input.kind() == Kind::Image {
        return Err(Error::invalid(
            "an 'rbd image v2' export cannot be merged as a diff (merge its diffs instead)",
        )
        .with_file(input.name()));
    }
    Ok(())
}

/// An opened input made ready for merging (see [`open_input`]).
fn prepare(input: Input) -> Result<Input> {
    refuse_image(&input)?;
    let input = if index_checked(&input) {
        input
    } else {
        input.into_mapped()?
    };
    refuse_image(&input)?;
    if input.kind() == Kind::Zstd {
        return Err(Error::invalid("doubly compressed input").with_file(input.name()));
    }
    Ok(input)
}

/// True when `input` is an indexed archive whose index matches its content
/// ([`ZstArchive::check_index`]: the frames holding record heads are read once). A damaged
/// or lying index is not used: the archive is then read as a plain zstd stream.
fn index_checked(input: &Input) -> bool {
    let indexed = input.is_compressed() && input.raw_bytes().is_some_and(crate::zst::has_index);
    indexed && matches!(input.archive(), Ok(Some(a)) if a.check_index().is_ok())
}

/// The merge input for an input opened with [`open_input`].
///
/// # Errors
/// An archive's seek table or record index is corrupt.
pub fn merge_input(input: &Input) -> Result<MergeInput<'_>> {
    let name = input.name();
    if let Some(a) = input.archive()? {
        return Ok(MergeInput::archive(name, a));
    }
    let bytes = input
        .bytes()
        .ok_or_else(|| Error::invalid("internal: input not mapped").with_file(name))?;
    Ok(match input.file() {
        Some(f) => MergeInput::mapped(name, bytes, f),
        None => MergeInput::bytes(name, bytes),
    })
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
    merge_files_to(paths, out, force, opts, None, progress)
}

/// [`merge_files`], writing a compressed archive (see [`crate::compress`]) when `compress`
/// is given: the merged diff is compressed while it is written, never stored uncompressed.
/// With [`MergeOptions::sums`], `OUT.sums` is written after the output is committed (for an
/// archive: sums of the merged diff stream, see [`crate::sums`]).
///
/// # Errors
/// As [`merge_files`] and [`crate::compress::compress_stream`].
pub fn merge_files_to(
    paths: &[String],
    out: &str,
    force: bool,
    opts: &MergeOptions,
    compress: Option<&crate::compress::CompressOptions>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeStats> {
    // A directory stands for its diff files in chain order (see [`crate::dirlist`]).
    let x = crate::dirlist::expand_chain(paths)?;
    if x.files.is_empty() {
        return Err(Error::invalid("no diff files to merge"));
    }
    let mut stats = merge_paths(&x.files, out, force, opts, compress, progress)?;
    stats.skipped = x.skipped;
    Ok(stats)
}

fn merge_paths(
    paths: &[String],
    out: &str,
    force: bool,
    opts: &MergeOptions,
    compress: Option<&crate::compress::CompressOptions>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MergeStats> {
    if paths.iter().filter(|p| *p == "-").count() > 1 {
        return Err(Error::invalid("stdin ('-') can be given only once"));
    }
    if opts.sums && out == "-" {
        return Err(Error::invalid(
            "--sums needs an output file (a sidecar cannot follow stdout)",
        ));
    }
    let files: Vec<&std::path::Path> = paths.iter().map(std::path::Path::new).collect();
    crate::output::check_output(out, &files)?;
    let names: Vec<&str> = paths.iter().map(String::as_str).collect();
    // The chain is checked on the headers before any input is decompressed to a
    // temporary file: each file is opened once.
    let opened = paths
        .iter()
        .map(|p| Input::open(p))
        .collect::<Result<Vec<_>>>()?;
    opened.iter().try_for_each(refuse_image)?;
    let heads = opened.iter().map(header_of).collect::<Result<Vec<_>>>()?;
    check_links(
        &names,
        &heads.iter().map(Option::as_ref).collect::<Vec<_>>(),
        opts.force_chain,
    )?;
    let opened = opened
        .into_iter()
        .map(prepare)
        .collect::<Result<Vec<_>>>()?;
    let mut inputs = opened.iter().map(merge_input).collect::<Result<Vec<_>>>()?;
    let p = plan(&inputs, opts)?;
    let mut output = Output::create_for(out, force, &files)?;
    let wrap = |e: Error| {
        if out == "-" {
            e
        } else {
            e.with_file(out)
        }
    };
    if compress.is_none() {
        output.reserve(p.data_bytes()).map_err(wrap)?;
    }
    let stats = match compress {
        Some(c) => {
            let (stats, _) = crate::compress::compress_stream(&mut output, c, |w| {
                p.write(&mut inputs, w, opts.version, progress)
                    .map(|(_, s)| s)
            })
            .map_err(wrap)?;
            stats
        }
        None => {
            let (o, stats) = p
                .write(&mut inputs, output, opts.version, progress)
                .map_err(wrap)?;
            output = o;
            stats
        }
    };
    output.commit().map_err(wrap)?;
    if opts.sums {
        crate::sums::write_sums_for(std::path::Path::new(out))?;
    }
    Ok(stats)
}
