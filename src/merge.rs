//! One-pass N-way merge of a diff chain (`rbddiff merge`).
//!
//! The result is what applying the inputs in order gives: later records win over earlier ones,
//! writes and zeros alike, and image size changes follow `rbd merge-diff` exactly. A shrink
//! drops everything past the new size; a growth from size `F` to `S` adds a `z` record over
//! `[F, S)` (unless the growing diff writes there), so that a region cut by a shrink and regrown
//! reads as zeros after import, whatever the target held there. Merging `d1 … dn` in one call
//! therefore gives the same image as `rbd merge-diff` applied pairwise along the chain.
//!
//! How: one sweep over all inputs at once in image-offset order (the crate's `sweep` module), holding only
//! the current record of each input: every input is a layer of ascending records (a growth
//! `z` extent is a layer of its own just below its input), a later layer clips the records of
//! earlier ones, and each layer is cut at the smallest image size that follows it. Each
//! surviving piece is written as it is found: adjacent `z` pieces, and adjacent data pieces up
//! to [`COALESCE_MAX`], become one record, whose payload is gathered in one buffer of at most
//! [`COALESCE_MAX`] bytes (a larger piece is copied straight through).
//!
//! Payload is read only where it survives: from files with `pread`, from indexed
//! archives with [`ZstArchive::copy_range`] (only the frames holding surviving bytes are
//! decompressed; the record index, checked by [`open_input`] against the record heads of the
//! content, gives the heads), and from streams (stdin, pipes, zstd files without an index),
//! read once, forward, skipping what does not survive: any input may be a stream, since every
//! input's payload is consumed in ascending order and a piece is final when it is emitted.
//!
//! Memory is independent of records, extents and bytes: the payload buffer (4 MiB), about 100
//! bytes per input for the sweep, plus what an input holds open: for a file, the buffer its
//! record heads are read into with `pread` (64 KiB at most; payloads are skipped, not read)
//! and a 64 KiB block for its short payload pieces (no page of the file is mapped or counted
//! in the process's RSS); a 64 KiB read buffer for a stream (and for a zstd stream, the
//! decoder's window: up to 8 MiB at the levels `rbddiff compress` and `zstd` use); for an
//! archive, a cursor over its record index (a version 3 index is decoded block by block as
//! the sweep goes: about 16 bytes per frame stay in memory) and its share of the merge's one
//! frame cache, bounded in bytes for the whole merge ([`frame_budget`]: 16 MiB + 1 MiB per
//! archive input; the `frames` module), filled ahead of the writer on the other cores.
//!
//! Checks: [`plan`] checks the chain on the headers of every input, then walks the record
//! heads of every seekable input (a dry run of the same sweep: O(records) time, O(inputs)
//! memory), so that a bad seekable input fails before the first output byte. A stream is
//! checked as it is read: a bad record in it fails the merge after output was written, and
//! [`merge_files_to`] then leaves no output (its output is a temporary file committed only on
//! success). A corrupt archive frame is found only when a surviving payload is read from it
//! (a frame holding only overwritten data is never read), and fails the merge likewise.
//! [`merge_files_to`] writes a compressed archive directly (`merge … -o OUT.zst`).

mod frames;
mod oracle;
pub use frames::{frame_budget, FRAME_BUDGET_BASE, FRAME_BUDGET_PER_INPUT, REMOTE_FETCHES};
#[doc(hidden)]
pub use oracle::merge as merge_oracle;

use std::fs::File;
use std::io::{self, Read, Write};

use crate::error::{Error, ErrorKind, Result, Warning, WarningKind};
use crate::extent::{MAX_INPUT, MAX_SRC_OFFSET};
use crate::format::{tag, Extent, Metadata, Record, Version};
use crate::input::{Input, Kind};
use crate::output::Output;
use crate::progress::Ticker;
use crate::slice::{DiffSlice, Records};
use crate::stream::{DiffReader, ItemKind, RecordSource};
use crate::sweep::{sweep, Ext, Layers};
use crate::write::DiffWriter;
use crate::zst::{IndexRecords, IndexedDiff, ZstArchive};
use frames::Frames;

/// Adjacent data pieces are joined into one `w` record up to this length (the default RBD
/// object size, the largest record `rbd export-diff` writes for default images): `rbd
/// import-diff` holds a whole record in memory. Larger input records are never split.
pub const COALESCE_MAX: u64 = 4 << 20;

/// Largest piece of a payload copied at once when it is copied straight through.
pub const COPY_BUF: usize = 1 << 20;

/// Where the payloads of a merge input come from.
pub enum Source<'a> {
    /// A whole diff in memory.
    Bytes {
        /// The whole diff.
        bytes: &'a [u8],
    },
    /// A diff in a regular file: record heads and payloads are read with `pread`.
    File {
        /// The file.
        file: &'a File,
        /// Its length when it was opened.
        len: u64,
    },
    /// An indexed archive ([`crate::zst`]): the plan is built from its record index without
    /// decompressing anything, and only the frames holding surviving payloads are
    /// decompressed while the output is written.
    Archive(Box<ZstArchive<'a>>),
    /// A diff read once, forward, from a stream (stdin, a pipe, a zstd file without an index):
    /// its header is read when it is opened, its records as the merge reaches them.
    Stream(Box<StreamDiff<'a>>),
}

/// A diff read from a stream, for [`Source::Stream`].
pub type StreamDiff<'a> = DiffReader<Box<dyn Read + Send + 'a>>;

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Bytes { bytes } => write!(f, "Bytes({} bytes)", bytes.len()),
            Source::File { len, .. } => write!(f, "File({len} bytes)"),
            Source::Archive(a) => write!(f, "{a:?}"),
            Source::Stream(_) => f.write_str("Stream"),
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
            source: Source::Bytes { bytes },
        }
    }

    /// The first `len` bytes of `file` (record heads and payloads are read with `pread`).
    pub fn file(name: &'a str, file: &'a File, len: u64) -> Self {
        MergeInput {
            name,
            source: Source::File { file, len },
        }
    }

    /// An indexed archive.
    pub fn archive(name: &'a str, archive: ZstArchive<'a>) -> Self {
        MergeInput {
            name,
            source: Source::Archive(Box::new(archive)),
        }
    }

    /// A diff read from a stream (see [`Source::Stream`]).
    ///
    /// # Errors
    /// The banner or the header of the diff is invalid or cannot be read.
    pub fn stream(name: &'a str, r: Box<dyn Read + Send + 'a>) -> Result<Self> {
        let rd = DiffReader::new(r).map_err(|e| e.with_file(name))?;
        Ok(MergeInput {
            name,
            source: Source::Stream(Box::new(rd)),
        })
    }

    /// zstd frames decompressed so far (0 unless the input is an archive).
    pub fn frames_decompressed(&self) -> u64 {
        match &self.source {
            Source::Archive(a) => a.frames_decompressed(),
            Source::Bytes { .. } | Source::File { .. } | Source::Stream(_) => 0,
        }
    }

    /// Length of the (decompressed) diff; for a stream, what was read of it so far.
    fn len(&self) -> u64 {
        match &self.source {
            Source::Bytes { bytes } => bytes.len() as u64,
            Source::File { len, .. } => *len,
            Source::Archive(a) => a.len(),
            Source::Stream(r) => r.position(),
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self.source, Source::Stream(_))
    }
}

/// Merge options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeOptions {
    /// Output format (`V1` is what `rbd import-diff` reads).
    pub version: Version,
    /// Snapshots known to have been renamed, `(OLD, NEW)`: a diff starting at NEW may follow
    /// one ending at OLD. Each must match a link of the chain, and each link it lets through
    /// is reported ([`MergeStats::renames`]). Nothing else relaxes the chain check.
    pub assume_renamed: Vec<(String, String)>,
    /// [`merge_files_to`]: order the inputs into a chain by their headers (as for a
    /// directory, see [`crate::dirlist`]) instead of taking them in the order given.
    pub sort: bool,
    /// [`merge_files_to`]: write the checksum sidecar `OUT.sums` ([`crate::sums`]) once the
    /// output is committed (refused for stdout).
    pub sums: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            version: Version::V1,
            assume_renamed: Vec::new(),
            sort: false,
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
    /// Links accepted only because of [`MergeOptions::assume_renamed`].
    pub renames: Vec<Rename>,
}

/// A link of the chain accepted because a snapshot was declared renamed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rename {
    /// The input that starts at the new name.
    pub file: String,
    /// The input before it, which ends at the old name.
    pub follows: String,
    /// The old name (end snapshot of `follows`).
    pub old: String,
    /// The new name (start snapshot of `file`).
    pub new: String,
}

impl std::fmt::Display for Rename {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (from '{}') follows {} (to '{}') only because '{}' was declared renamed to '{}' \
             (--assume-renamed)",
            self.file, self.new, self.follows, self.old, self.old, self.new
        )
    }
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

/// The headers of an input: a parsed diff in memory, an archive's index, or a stream's header.
enum Parsed<'x> {
    Slice(DiffSlice<'x>),
    File(Box<DiffReader<&'x File>>),
    Index(&'x IndexedDiff, u64),
    Head(&'x Metadata),
}

impl Parsed<'_> {
    fn metadata(&self) -> &Metadata {
        match self {
            Parsed::Slice(d) => d.metadata(),
            Parsed::File(r) => r.metadata(),
            Parsed::Index(d, _) => &d.metadata,
            Parsed::Head(m) => m,
        }
    }
}

fn parse_input<'x>(inp: &'x MergeInput<'_>) -> Result<Parsed<'x>> {
    match &inp.source {
        Source::Bytes { bytes } => {
            if bytes.len() as u64 > MAX_SRC_OFFSET {
                return Err(Error::invalid("input larger than 256 TiB"));
            }
            Ok(Parsed::Slice(DiffSlice::parse(bytes)?))
        }
        Source::File { file, len } => {
            if *len > MAX_SRC_OFFSET {
                return Err(Error::invalid("input larger than 256 TiB"));
            }
            Ok(Parsed::File(Box::new(DiffReader::at_file(file, *len)?)))
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
                    "an 'rbd image v2' export cannot be merged as a diff: `rbddiff explode FILE -o DIR` \
             writes its diffs as a chain to merge",
                )),
            }
        }
        Source::Stream(r) => Ok(Parsed::Head(r.metadata())),
    }
}

/// Checks that each header starts where the one before ends (pairs with an unknown header,
/// `None`, are skipped): a full diff only first, and the start snapshot of each diff is the
/// end snapshot of the one before, or its new name by `renamed` (`(OLD, NEW)` pairs).
///
/// A break is explained without pointing at a flag that could give a wrong image: inputs
/// given out of order are named with their chain order (found from the headers), and a
/// missing diff is named by the snapshots it would link.
///
/// Returns the links accepted through `renamed`.
///
/// # Errors
/// A chain break, naming both files and snapshots; when every header is known, a rename of
/// `renamed` that matches no link.
pub fn check_links(
    names: &[&str],
    metas: &[Option<&Metadata>],
    renamed: &[(String, String)],
) -> Result<Vec<Rename>> {
    let lossy = |n: &Option<Vec<u8>>| n.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let mut renames = Vec::new();
    let mut used = vec![false; renamed.len()];
    for (i, pair) in metas.windows(2).enumerate() {
        let (Some(a), Some(b)) = (pair[0], pair[1]) else {
            continue;
        };
        let (na, nb) = (names[i], names[i + 1]);
        if b.from_snap.is_some() && a.to_snap == b.from_snap {
            continue;
        }
        let (end_name, start_name) = (lossy(&a.to_snap), lossy(&b.from_snap));
        let by_rename = match (&end_name, &start_name) {
            (Some(old), Some(new)) => renamed.iter().position(|(o, n)| o == old && n == new),
            _ => None,
        };
        if let (Some(k), Some(old), Some(new)) = (by_rename, end_name.clone(), start_name.clone()) {
            used[k] = true;
            renames.push(Rename {
                file: nb.to_string(),
                follows: na.to_string(),
                old,
                new,
            });
            continue;
        }
        let end = crate::format::show_to(end_name.as_deref());
        let start = crate::format::show_from(start_name.as_deref());
        let follows = |from: &Option<Vec<u8>>| from.is_some() && *from == a.to_snap;
        let msg = if let Some(order) = chain_order(metas) {
            let list: Vec<&str> = order.iter().map(|&k| names[k]).collect();
            format!(
                "inputs out of order: {nb} does not start where {na} ends ({end}); by their \
                 headers the chain is: {} (give them in that order, or add --sort)",
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
            format!(
                "{na} ends at the image HEAD (no end snapshot): nothing can follow it, but {nb} \
                 does"
            )
        } else {
            format!(
                "chain break: {na} ends at {end} but {nb} starts at {start}: the diff from {end} \
                 to {start} is missing (missing link: {end} -> {start}; `rbd export-diff \
                 --from-snap {} POOL/IMAGE@{}` makes it while both snapshots exist)",
                end_name.as_deref().unwrap_or_default(),
                start_name.as_deref().unwrap_or_default()
            )
        };
        return Err(Error::new(ErrorKind::ChainBreak(msg)));
    }
    if metas.iter().all(Option::is_some) {
        if let Some(k) = used.iter().position(|u| !u) {
            let (old, new) = &renamed[k];
            return Err(Error::invalid(format!(
                "--assume-renamed {old}={new} matches no link of the chain: no input ending at \
                 '{old}' is followed by one starting at '{new}'"
            )));
        }
    }
    Ok(renames)
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

/// The header of an opened input, read without spilling or consuming anything: a file's
/// header by positioned reads, a zstd file decompressed only as far as its header. `None`
/// for stdin and other streams (they can be read only once).
///
/// # Errors
/// The header is invalid.
fn header_of(input: &Input) -> Result<Option<Metadata>> {
    let wrap = |e: Error| e.with_file(input.name());
    if let Some((f, len)) = input.file() {
        let rd = DiffReader::at_file(f, len).map_err(wrap)?;
        return Ok(Some(rd.metadata().clone()));
    }
    let Some(raw) = input.raw() else {
        return Ok(None);
    };
    let z = crate::zst::ZstdReader::new(raw.reader(0)).map_err(wrap)?;
    let rd = DiffReader::new(z).map_err(wrap)?;
    Ok(Some(rd.metadata().clone()))
}

/// A checked merge, ready to be written: the merged header, the image sizes of the chain, and
/// what the dry run over the seekable inputs found.
#[derive(Debug)]
pub struct Plan {
    inputs: usize,
    meta: Metadata,
    sizes: Vec<u64>,
    /// Payload bytes of the output; `None` when an input is a stream.
    data_bytes: Option<u64>,
    /// Warnings of each seekable input (streams: found while writing).
    warnings: Vec<Vec<InputWarning>>,
    all_warnings: Vec<InputWarning>,
    renames: Vec<Rename>,
    /// Bytes of decompressed frames [`Plan::write`] caches (`None`: [`frame_budget`]).
    frame_budget: Option<usize>,
}

/// Checks the chain on the headers of every input, then every record of every seekable input
/// (a dry run of the sweep, reading record heads or an archive's index, no payload), counting
/// the payload bytes of the output. Streams are checked while [`Plan::write`] reads them.
///
/// # Errors
/// An input that does not parse or has a bad record (named with file, byte offset and record);
/// a broken chain (naming both files and snapshots); a full diff that is not first; more inputs
/// or bigger files than can be addressed.
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
    let renames = check_links(&names, &metas, &opts.assume_renamed)?;
    // A missing `s` is reported by the record walk.
    let sizes: Vec<u64> = metas
        .iter()
        .map(|m| m.and_then(|m| m.image_size).unwrap_or(0))
        .collect();
    let last = parsed
        .last()
        .map(|d| d.metadata().clone())
        .unwrap_or_default();
    let meta = Metadata {
        from_snap: parsed.first().and_then(|d| d.metadata().from_snap.clone()),
        to_snap: last.to_snap,
        protected: last.protected,
        image_size: Some(*sizes.last().unwrap_or(&0)),
    };
    let streams = inputs.iter().any(MergeInput::is_stream);
    let (layers, caps) = build_layers(inputs, &sizes, |i| !inputs[i].is_stream())?;
    let mut dry = Sweep {
        inputs: Inputs::Shared(inputs),
        layers,
        sink: Count::default(),
    };
    sweep(&mut dry, &caps)?;
    let warnings: Vec<Vec<InputWarning>> = (0..inputs.len()).map(|i| dry.warnings_of(i)).collect();
    Ok(Plan {
        inputs: inputs.len(),
        meta,
        sizes,
        data_bytes: (!streams).then_some(dry.sink.data_bytes),
        all_warnings: warnings.concat(),
        warnings,
        renames,
        frame_budget: None,
    })
}

/// Where a layer's extents come from.
enum Cursor<'a> {
    /// The `z` extent a growing input adds over the regrown range.
    Grow(Option<Ext>),
    /// The records of a diff in memory.
    Slice { recs: Records<'a>, base: usize },
    /// The records of a file, their heads read with `pread`.
    File(Box<DiffReader<&'a File>>),
    /// The record index of an archive, checked as it is walked.
    Index(IndexCursor),
    /// The records of a stream input.
    Stream,
}

/// A layer of the sweep: the input it belongs to and its cursor.
type Layer<'a> = (usize, Cursor<'a>);

/// Position in an archive's record index.
#[derive(Default)]
struct IndexCursor {
    recs: IndexRecords,
    k: usize,
    prev_end: u64,
    prev_pos: u64,
    ended: bool,
}

/// The layers of `inputs` (those `include` takes) and their caps: for each input, its growth
/// layer (when its size is larger than the one before), then its records; each cut at the
/// smallest size of the inputs after it.
fn build_layers<'a>(
    inputs: &[MergeInput<'a>],
    sizes: &[u64],
    include: impl Fn(usize) -> bool,
) -> Result<(Vec<Layer<'a>>, Vec<u64>)> {
    let mut caps_after = vec![u64::MAX; sizes.len()];
    for i in (0..sizes.len().saturating_sub(1)).rev() {
        caps_after[i] = caps_after[i + 1].min(sizes[i + 1]);
    }
    let (mut layers, mut caps) = (Vec::new(), Vec::new());
    for (i, inp) in inputs.iter().enumerate().filter(|&(i, _)| include(i)) {
        if i > 0 && sizes[i] > sizes[i - 1] {
            let grow = Ext {
                start: sizes[i - 1],
                end: sizes[i],
                src: None,
            };
            layers.push((i, Cursor::Grow(Some(grow))));
            caps.push(caps_after[i]);
        }
        let cursor = match &inp.source {
            Source::File { file, len } => {
                let f: &'a File = file;
                let rd = DiffReader::at_file(f, *len);
                Cursor::File(Box::new(rd.map_err(|e| e.with_file(inp.name))?))
            }
            Source::Bytes { bytes } => {
                let bytes: &'a [u8] = bytes;
                let d = DiffSlice::parse(bytes).map_err(|e| e.with_file(inp.name))?;
                Cursor::Slice {
                    recs: d.records(),
                    base: bytes.as_ptr() as usize,
                }
            }
            Source::Archive(_) => Cursor::Index(IndexCursor::default()),
            Source::Stream(_) => Cursor::Stream,
        };
        layers.push((i, cursor));
        caps.push(caps_after[i]);
    }
    Ok((layers, caps))
}

/// The inputs of a sweep: shared for the dry run, owned for writing (streams and archives
/// change as they are read).
enum Inputs<'m, 'a> {
    Shared(&'m [MergeInput<'a>]),
    Owned(&'m mut [MergeInput<'a>]),
}

impl<'a> Inputs<'_, 'a> {
    fn get(&self, i: usize) -> &MergeInput<'a> {
        match self {
            Inputs::Shared(s) => &s[i],
            Inputs::Owned(s) => &s[i],
        }
    }

    fn all(&self) -> &[MergeInput<'a>] {
        match self {
            Inputs::Shared(s) => s,
            Inputs::Owned(s) => s,
        }
    }

    fn get_mut(&mut self, i: usize) -> Result<&mut MergeInput<'a>> {
        match self {
            Inputs::Owned(s) => Ok(&mut s[i]),
            Inputs::Shared(_) => Err(Error::invalid("internal: input read in a dry run")),
        }
    }
}

/// Where the pieces of a sweep go.
trait Sink {
    /// A piece `[start, end)`: zeros, or payload of input `src.0` at offset `src.1`.
    fn piece(
        &mut self,
        inputs: &mut Inputs<'_, '_>,
        start: u64,
        end: u64,
        src: Option<(usize, u64)>,
    ) -> Result<()>;
}

/// The dry run's sink: counts payload bytes.
#[derive(Default)]
struct Count {
    data_bytes: u64,
}

impl Sink for Count {
    fn piece(
        &mut self,
        _: &mut Inputs<'_, '_>,
        s: u64,
        e: u64,
        src: Option<(usize, u64)>,
    ) -> Result<()> {
        if src.is_some() {
            self.data_bytes += e - s;
        }
        Ok(())
    }
}

/// A sink that hands each piece to a function ([`Plan::pieces`]).
struct Collect<'f>(&'f mut dyn FnMut(u64, u64, Option<(usize, u64)>));

impl Sink for Collect<'_> {
    fn piece(
        &mut self,
        _: &mut Inputs<'_, '_>,
        s: u64,
        e: u64,
        src: Option<(usize, u64)>,
    ) -> Result<()> {
        (self.0)(s, e, src);
        Ok(())
    }
}

/// A sweep over the layers of some inputs.
struct Sweep<'m, 'a, S> {
    inputs: Inputs<'m, 'a>,
    layers: Vec<Layer<'a>>,
    sink: S,
}

impl<S> Sweep<'_, '_, S> {
    /// The warnings input `i` gave (once read to its end).
    fn warnings_of(&self, i: usize) -> Vec<InputWarning> {
        let inp = self.inputs.get(i);
        let ws: &[Warning] = match &inp.source {
            Source::Archive(a) => a.index().diffs.first().map_or(&[], |d| &d.warnings),
            Source::Stream(r) => r.warnings(),
            Source::Bytes { .. } | Source::File { .. } => self
                .layers
                .iter()
                .find_map(|(k, c)| match c {
                    Cursor::Slice { recs, .. } if *k == i => Some(recs.warnings()),
                    Cursor::File(r) if *k == i => Some(r.warnings()),
                    _ => None,
                })
                .unwrap_or(&[]),
        };
        ws.iter().map(|w| InputWarning::new(inp.name, w)).collect()
    }
}

impl<S: Sink> Layers for Sweep<'_, '_, S> {
    fn next(&mut self, k: usize) -> Result<Option<Ext>> {
        let (i, cur) = &mut self.layers[k];
        let i = *i;
        let name = self.inputs.get(i).name;
        let r = match cur {
            Cursor::Stream => match &mut self.inputs.get_mut(i)?.source {
                Source::Stream(r) => next_streamed(r),
                _ => Err(Error::invalid(
                    "internal: stream cursor over a seekable input",
                )),
            },
            cur => match &self.inputs.get(i).source {
                Source::Archive(a) => next_seekable(cur, Some(a)),
                _ => next_seekable(cur, None),
            },
        };
        r.map_err(|e| e.with_file(name))
    }

    fn emit(&mut self, k: usize, start: u64, end: u64, src: Option<u64>) -> Result<()> {
        let i = self.layers[k].0;
        self.sink
            .piece(&mut self.inputs, start, end, src.map(|s| (i, s)))
    }
}

/// The next extent of a layer of a seekable input (`archive`: the input, for an index cursor).
fn next_seekable(cur: &mut Cursor<'_>, archive: Option<&ZstArchive<'_>>) -> Result<Option<Ext>> {
    match (cur, archive) {
        (Cursor::Grow(e), _) => Ok(e.take()),
        (Cursor::Slice { recs, base }, _) => next_record(recs, *base),
        (Cursor::File(r), _) => next_streamed(r),
        (Cursor::Index(c), Some(a)) => next_indexed(c, a),
        (Cursor::Index(_), None) => {
            Err(Error::invalid("internal: index cursor over a plain input"))
        }
        (Cursor::Stream, _) => Err(Error::invalid("internal: stream read out of turn")),
    }
}

/// The next `w` or `z` record of a diff in memory (`src`: offset in the diff's bytes).
fn next_record(recs: &mut Records<'_>, base: usize) -> Result<Option<Ext>> {
    for r in recs.by_ref() {
        match r?.1 {
            Record::Write { offset, data } => {
                let src = (data.as_ptr() as usize).wrapping_sub(base) as u64;
                return Ok(Some(Ext {
                    start: offset,
                    end: offset + data.len() as u64,
                    src: Some(src),
                }));
            }
            Record::Zero(e) => {
                return Ok(Some(Ext {
                    start: e.offset,
                    end: e.offset + e.len,
                    src: None,
                }))
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The next `w` or `z` record of a stream or a file (`src`: offset of its payload).
fn next_streamed<R: Read>(r: &mut DiffReader<R>) -> Result<Option<Ext>> {
    loop {
        let ext = match r.next_item()? {
            None => return Ok(None),
            Some(item) => match item.kind {
                ItemKind::Write { extent, .. } => (extent, true),
                ItemKind::Zero(e) => (e, false),
                _ => continue,
            },
        };
        let (e, data) = ext;
        return Ok(Some(Ext {
            start: e.offset,
            end: e.offset + e.len,
            src: data.then(|| r.payload_pos()),
        }));
    }
}

/// The next `w` or `z` record of an archive's index, checked as the record walk of a plain
/// diff would (the index is checksummed, but may have been crafted): ascending, non-empty,
/// inside the image size, payloads inside the stream, `e` present.
fn next_indexed(c: &mut IndexCursor, a: &ZstArchive<'_>) -> Result<Option<Ext>> {
    let d = a
        .index()
        .diffs
        .first()
        .ok_or_else(|| Error::invalid("internal: archive without a diff"))?;
    let total = a.len();
    let base = d.first_indexed();
    let size = d
        .metadata
        .image_size
        .ok_or_else(|| Error::at(ErrorKind::MissingSize, d.start, Some(base)))?;
    if c.k == 0 {
        c.prev_pos = d.start;
    }
    while let Some(r) = c.recs.next(a)? {
        let r = &r;
        let k = c.k;
        c.k += 1;
        let at = |kind: ErrorKind| Error::at(kind, r.pos, Some(base + k as u64));
        if c.ended || r.pos < c.prev_pos || (k > 0 && r.pos == c.prev_pos) {
            return Err(at(ErrorKind::Invalid(
                "record index: records out of stream order".into(),
            )));
        }
        c.prev_pos = r.pos;
        match r.tag {
            tag::WRITE | tag::ZERO => {
                if r.len == 0 {
                    return Err(at(ErrorKind::ZeroLength {
                        tag: r.tag,
                        offset: r.offset,
                    }));
                }
                if r.offset < c.prev_end {
                    return Err(at(ErrorKind::OutOfOrder {
                        tag: r.tag,
                        offset: r.offset,
                        prev_end: c.prev_end,
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
                c.prev_end = end;
                let mut src = None;
                if r.tag == tag::WRITE {
                    let pos = d.payload_pos(r);
                    let next = c.recs.peek(a)?;
                    let limit = next.map_or(d.end, |n| n.pos).min(total);
                    if pos.checked_add(r.len).filter(|&e| e <= limit).is_none() {
                        return Err(at(ErrorKind::Invalid(
                            "record index: payload runs past the next record".into(),
                        )));
                    }
                    src = Some(pos);
                }
                return Ok(Some(Ext {
                    start: r.offset,
                    end,
                    src,
                }));
            }
            tag::END => c.ended = true,
            _ => {}
        }
    }
    if !c.ended {
        return Err(Error::at(ErrorKind::MissingEnd, d.end, None));
    }
    Ok(None)
}

/// Pieces of a file at least this long are read with `pread` straight into the output
/// buffer; shorter ones go through the input's [`Block`].
const PREAD_MIN: usize = 64 << 10;

/// Bytes of a file read at once for its short pieces (see [`Block`]).
const BLOCK_LEN: usize = 64 << 10;

/// The last bytes read from a file input for its short pieces: a piece inside them is copied
/// from here, else [`BLOCK_LEN`] bytes from the piece on are read with one `pread` (pieces
/// of an input are read in ascending order, so record-dense inputs cost one system call per
/// [`BLOCK_LEN`] bytes).
#[derive(Default)]
struct Block {
    at: u64,
    data: Vec<u8>,
}

impl Block {
    /// Appends `n` bytes at `src` of `f` (of `len` bytes) to `buf`.
    fn append(
        &mut self,
        f: &File,
        len: u64,
        src: u64,
        n: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let off = src
            .checked_sub(self.at)
            .and_then(|o| usize::try_from(o).ok());
        let inside = off.filter(|&o| o.checked_add(n).is_some_and(|e| e <= self.data.len()));
        let off = match inside {
            Some(o) => o,
            None => {
                let want = BLOCK_LEN.max(n) as u64;
                let want = want.min(len.saturating_sub(src)).max(n as u64) as usize;
                self.data.resize(want, 0);
                self.at = src;
                if let Err(e) = f.read_exact_at(&mut self.data, src) {
                    self.data.clear();
                    return Err(e);
                }
                0
            }
        };
        buf.extend_from_slice(&self.data[off..off + n]);
        Ok(())
    }
}

/// The record being gathered by [`Writer`].
enum Run {
    None,
    Zero(u64, u64),
    Data(u64, u64),
}

/// The writing sink: joins pieces into records and copies their payloads.
struct Writer<'p, W: Write> {
    w: DiffWriter<W>,
    run: Run,
    /// Data pieces in the run.
    pieces: usize,
    /// Payload of the open data run (less than [`COALESCE_MAX`] bytes); a copy buffer when
    /// a piece is copied straight through.
    buf: Vec<u8>,
    /// Each input's [`Block`] (empty until a short piece of a file is read).
    blocks: Vec<Block>,
    /// The decompressed frames of the archive inputs.
    frames: Frames,
    stats: MergeStats,
    tick: Ticker<'p>,
}

impl<W: Write> Writer<'_, W> {
    /// Writes the run gathered so far.
    fn flush(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.run, Run::None) {
            Run::None => {}
            Run::Zero(s, e) => {
                self.w.zero(Extent::new(s, e - s))?;
                self.stats.zero_records += 1;
                self.stats.zero_bytes += e - s;
            }
            Run::Data(s, e) => {
                self.w.begin_data(Extent::new(s, e - s))?;
                self.w.get_mut().write_all(&self.buf)?;
                self.w.add_written(self.buf.len() as u64);
                self.buf.clear();
                self.stats.write_records += 1;
                self.stats.data_bytes += e - s;
                self.tick.set(self.stats.data_bytes);
            }
        }
        self.pieces = 0;
        Ok(())
    }
}

impl<W: Write> Sink for Writer<'_, W> {
    fn piece(
        &mut self,
        inputs: &mut Inputs<'_, '_>,
        s: u64,
        e: u64,
        src: Option<(usize, u64)>,
    ) -> Result<()> {
        self.stats.extents += 1;
        let Some((i, at)) = src else {
            match &mut self.run {
                Run::Zero(_, re) if *re == s => *re = e,
                _ => {
                    self.flush()?;
                    self.run = Run::Zero(s, e);
                }
            }
            return Ok(());
        };
        let rs = match self.run {
            Run::Data(rs, re) if re == s && e - rs <= COALESCE_MAX && self.pieces < 1024 => rs,
            _ => {
                self.flush()?;
                s
            }
        };
        self.run = Run::Data(rs, e);
        self.pieces += 1;
        if self.blocks.len() <= i {
            self.blocks.resize_with(i + 1, Block::default);
        }
        let block = &mut self.blocks[i];
        let mut from = From {
            inputs,
            i,
            frames: &mut self.frames,
            block,
        };
        // No later piece can join a run this long: write it now, this piece straight through.
        if e - rs >= COALESCE_MAX || self.pieces >= 1024 {
            self.w.begin_data(Extent::new(rs, e - rs))?;
            self.w.get_mut().write_all(&self.buf)?;
            self.w.add_written(self.buf.len() as u64);
            self.buf.clear();
            copy_piece(&mut from, at, e - s, &mut self.w, &mut self.buf)?;
            self.buf.clear();
            self.run = Run::None;
            self.pieces = 0;
            self.stats.write_records += 1;
            self.stats.data_bytes += e - rs;
            self.tick.set(self.stats.data_bytes);
            return Ok(());
        }
        append_piece(&mut from, at, e - s, &mut self.buf)
    }
}

/// Where [`Writer`] reads the payload of input `i`: the input, its [`Block`], the frames.
struct From<'f, 'm, 'a> {
    inputs: &'f mut Inputs<'m, 'a>,
    i: usize,
    frames: &'f mut Frames,
    block: &'f mut Block,
}

/// Copies `len` payload bytes at `src` of `from` to `w` (counted as written), through `chunk`
/// for files and streams: with `pread` from a file (no page of the file counted in the
/// process's RSS), through
/// the merge's frame cache for an archive, or read from a stream after skipping to `src`.
fn copy_piece<W: Write>(
    from: &mut From<'_, '_, '_>,
    src: u64,
    len: u64,
    w: &mut DiffWriter<W>,
    chunk: &mut Vec<u8>,
) -> Result<()> {
    let inp = from.inputs.get(from.i);
    if let Source::Archive(a) = &inp.source {
        from.frames
            .copy(a, from.i, src, len, w.get_mut())
            .map_err(|e| e.with_file(inp.name))?;
        w.add_written(len);
        return Ok(());
    }
    let (mut at, mut left) = (src, len);
    while left > 0 {
        let n = left.min(COPY_BUF as u64);
        chunk.clear();
        append_piece(from, at, n, chunk)?;
        w.get_mut().write_all(chunk)?;
        w.add_written(n);
        at += n;
        left -= n;
    }
    Ok(())
}

/// Appends `len` payload bytes at `src` of `from` to `buf` (a short piece of a file through
/// its block).
fn append_piece(from: &mut From<'_, '_, '_>, src: u64, len: u64, buf: &mut Vec<u8>) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let inp = from.inputs.get(from.i);
    let name = inp.name;
    let outside = || Error::invalid("internal: payload range outside its input");
    let n = usize::try_from(len).map_err(|_| outside())?;
    match &inp.source {
        Source::Bytes { bytes } => {
            let range = usize::try_from(src)
                .ok()
                .and_then(|a| Some(a..a.checked_add(n)?))
                .filter(|r| r.end <= bytes.len())
                .ok_or_else(outside)?;
            buf.extend_from_slice(&bytes[range]);
        }
        Source::File { file, len: flen } => {
            if src.checked_add(len).is_none_or(|e| e > *flen) {
                return Err(outside());
            }
            let io = |e: io::Error| Error::from(e).with_file(name);
            if n >= PREAD_MIN {
                let old = buf.len();
                buf.resize(old + n, 0);
                file.read_exact_at(&mut buf[old..], src).map_err(io)?;
            } else {
                from.block.append(file, *flen, src, n, buf).map_err(io)?;
            }
        }
        Source::Archive(a) => from
            .frames
            .copy(a, from.i, src, len, buf)
            .map_err(|e| e.with_file(name))?,
        Source::Stream(_) => {
            let Source::Stream(r) = &mut from.inputs.get_mut(from.i)?.source else {
                return Err(outside());
            };
            let pos = r.payload_pos();
            let skip = src.checked_sub(pos).ok_or_else(outside)?;
            let wrap = |e: Error| e.with_file(name);
            r.skip_payload(skip).map_err(wrap)?;
            let old = buf.len();
            buf.resize(old + n, 0);
            r.payload()
                .read_exact(&mut buf[old..])
                .map_err(|e| wrap(Error::from(e)))?;
        }
    }
    Ok(())
}

impl Plan {
    /// Header of the merged diff: start snapshot of the first input, end snapshot, protection
    /// flag and size of the last.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Payload bytes the output will carry (0 when an input is a stream: not known before).
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes.unwrap_or(0)
    }

    /// Warnings found in the seekable inputs (those of streams are in [`MergeStats`]).
    pub fn warnings(&self) -> &[InputWarning] {
        &self.all_warnings
    }

    /// Calls `f` with every visible piece of the merged image in offset order, reading no
    /// payload: `(start, end, None)` for zeros, `(start, end, Some((input, offset)))` for the
    /// payload of input `input` at `offset` (for an archive, an offset in its decompressed
    /// diff stream). Memory is the sweep's, O(inputs).
    ///
    /// # Errors
    /// An input is a stream (its records can be walked only once), or is invalid.
    pub fn pieces(
        &self,
        inputs: &[MergeInput<'_>],
        f: &mut dyn FnMut(u64, u64, Option<(usize, u64)>),
    ) -> Result<()> {
        if inputs.len() != self.inputs || inputs.iter().any(MergeInput::is_stream) {
            return Err(Error::invalid(
                "internal: pieces of streams or of other inputs",
            ));
        }
        let (layers, caps) = build_layers(inputs, &self.sizes, |_| true)?;
        let mut sw = Sweep {
            inputs: Inputs::Shared(inputs),
            layers,
            sink: Collect(f),
        };
        sweep(&mut sw, &caps)
    }

    /// Writes the merged diff to `out` in one sweep, reading the surviving payloads from
    /// `inputs` (the inputs the plan was made from, in the same order; streams are read
    /// here). `progress` is called with the payload bytes written so far and
    /// [`Plan::data_bytes`] (see [`crate::progress`]).
    ///
    /// # Errors
    /// I/O errors from `out` or the inputs; a bad record in a stream; a corrupt archive frame
    /// holding a surviving payload (named with the input, the frame and its offsets).
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
        let stats = MergeStats {
            inputs: self.inputs,
            from_snap: self.meta.from_snap.as_deref().map(lossy),
            to_snap: self.meta.to_snap.as_deref().map(lossy),
            image_size: self.meta.image_size.unwrap_or(0),
            renames: self.renames.clone(),
            ..MergeStats::default()
        };
        let w = DiffWriter::new(out, version, &self.meta)?;
        // Without a stream the pieces are known ahead: frames are decompressed on other
        // threads (see the `frames` module); else on this one. Frames of an archive in a
        // store are fetched by more requests at once than there are cores.
        let remote = inputs
            .iter()
            .any(|m| archive_of(m).is_some_and(|a| a.is_remote()));
        let (threads, depth) = match crate::parallel::default_threads() {
            n if remote => (n.max(frames::REMOTE_FETCHES), frames::REMOTE_FETCHES),
            n => (n, frames::DEPTH),
        };
        let ahead = threads > 1
            && !inputs.iter().any(MergeInput::is_stream)
            && inputs.iter().any(|m| archive_of(m).is_some());
        let archives_n = inputs.iter().filter(|m| archive_of(m).is_some()).count();
        let budget = self
            .frame_budget
            .unwrap_or_else(|| frame_budget(archives_n));
        let (w, mut stats) = if ahead {
            let shared: &[MergeInput<'_>] = inputs;
            let archives: Vec<Option<&ZstArchive<'_>>> = shared.iter().map(archive_of).collect();
            std::thread::scope(|s| {
                let (look, caps) = build_layers(shared, &self.sizes, |_| true)?;
                let frames = Frames::ahead(s, &archives, look, caps, budget, (threads, depth));
                self.sweep_to(Inputs::Shared(shared), w, stats, frames, progress)
            })?
        } else {
            let frames = Frames::local(budget);
            self.sweep_to(Inputs::Owned(inputs), w, stats, frames, progress)?
        };
        stats.input_bytes = inputs.iter().map(MergeInput::len).sum();
        stats.records = stats.write_records + stats.zero_records;
        stats.bytes_written = w.bytes_written() + 1;
        let out = w.finish()?;
        stats.bytes_saved = stats.input_bytes as i64 - stats.bytes_written as i64;
        let after: u64 = inputs.iter().map(MergeInput::frames_decompressed).sum();
        stats.frames_decompressed = after - before;
        Ok((out, stats))
    }

    /// Caps the bytes of decompressed frames that [`Plan::write`] caches for all archive
    /// inputs together ([`frame_budget`] of their number by default; at least one frame is
    /// held). Frames decompressed ahead of the writer, at most 4, come on top.
    pub fn set_frame_budget(&mut self, bytes: usize) {
        self.frame_budget = Some(bytes);
    }

    /// The sweep of [`Plan::write`]: the merged diff to `w`, its counts in `stats`.
    fn sweep_to<W: Write>(
        &self,
        inputs: Inputs<'_, '_>,
        w: DiffWriter<W>,
        stats: MergeStats,
        frames: Frames,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(DiffWriter<W>, MergeStats)> {
        let (layers, caps) = build_layers(inputs.all(), &self.sizes, |_| true)?;
        let sink = Writer {
            w,
            run: Run::None,
            pieces: 0,
            buf: Vec::new(),
            blocks: Vec::new(),
            frames,
            stats,
            tick: Ticker::new(progress, self.data_bytes()),
        };
        let mut sw = Sweep {
            inputs,
            layers,
            sink,
        };
        sweep(&mut sw, &caps)?;
        sw.sink.flush()?;
        let mut warnings = Vec::new();
        for (i, seekable) in self.warnings.iter().enumerate() {
            match sw.inputs.get(i).is_stream() {
                true => warnings.extend(sw.warnings_of(i)),
                false => warnings.extend(seekable.iter().cloned()),
            }
        }
        let Writer {
            w,
            mut stats,
            mut tick,
            ..
        } = sw.sink;
        tick.finish();
        stats.warnings = warnings;
        Ok((w, stats))
    }
}

/// The archive of an input, if it is one.
fn archive_of<'m, 'a>(m: &'m MergeInput<'a>) -> Option<&'m ZstArchive<'a>> {
    match &m.source {
        Source::Archive(a) => Some(a),
        _ => None,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Merges `inputs` (in chain order) into `out`: [`plan`], then [`Plan::write`].
///
/// # Errors
/// As [`plan`] and [`Plan::write`]; nothing is written when a seekable input is invalid.
pub fn merge<W: Write>(
    inputs: &mut [MergeInput<'_>],
    out: W,
    opts: &MergeOptions,
) -> Result<MergeStats> {
    let p = plan(inputs, opts)?;
    let (_, stats) = p.write(inputs, out, opts.version, &mut |_, _| {})?;
    Ok(stats)
}

/// Opens an input for merging: plain files as they are (read with `pread`); indexed archives
/// ([`crate::zst`]) as they are (read through their index, see [`Source::Archive`]) once the
/// index is checked against the record heads of the content; stdin, pipes, zstd files
/// without an index and archives whose index does not match are decoded and spilled to an
/// anonymous temporary file first ([`Input::into_seekable`]).
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
            "an 'rbd image v2' export cannot be merged as a diff: `rbddiff explode FILE -o DIR` \
             writes its diffs as a chain to merge",
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
        input.into_seekable()?
    };
    refuse_image(&input)?;
    if input.kind() == Kind::Zstd {
        return Err(Error::invalid("doubly compressed input").with_file(input.name()));
    }
    Ok(input)
}

/// An opened input of [`merge_files_to`]: kept for random access, or to be read as a stream.
enum Held {
    Seekable(Input),
    Stream(Option<Box<dyn Read + Send>>),
}

/// A plain file or an indexed archive whose index matches is kept for random access;
/// anything else is read as a stream (never spilled).
fn hold(input: Input) -> Result<Held> {
    refuse_image(&input)?;
    if input.kind() == Kind::Zstd {
        return Err(Error::invalid("doubly compressed input").with_file(input.name()));
    }
    if index_checked(&input) || input.file().is_some() {
        return Ok(Held::Seekable(input));
    }
    Ok(Held::Stream(Some(input.into_reader())))
}

/// True when `input` is an indexed archive whose index matches its content
/// ([`ZstArchive::check_index`]: the frames holding record heads are read once). A damaged
/// or lying index is not used: the archive is then read as a plain zstd stream.
fn index_checked(input: &Input) -> bool {
    let indexed = input.is_compressed() && input.raw().is_some_and(crate::zst::has_index);
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
    match input.file() {
        Some((f, len)) => Ok(MergeInput::file(name, f, len)),
        // An empty file: parsed as it is (its error names the missing banner).
        None if input.raw_len() == Some(0) => Ok(MergeInput::bytes(name, &[])),
        None => Err(Error::invalid("internal: input not seekable").with_file(name)),
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
    let mut x = crate::dirlist::expand_chain(paths)?;
    if x.files.is_empty() {
        return Err(Error::invalid("no diff files to merge"));
    }
    if opts.sort {
        x.files = crate::dirlist::sort_chain(std::mem::take(&mut x.files))?;
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
    // Every input's problem is reported, not only the first one's.
    let (mut opened, mut heads, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for p in paths {
        let one = Input::open(p).and_then(|i| {
            refuse_image(&i)?;
            let h = header_of(&i)?;
            Ok((i, h))
        });
        match one {
            Ok((i, h)) => {
                opened.push(i);
                heads.push(h);
            }
            Err(e) => errors.push(e.with_file(p)),
        }
    }
    if let Some(e) = Error::of_inputs(errors) {
        return Err(e);
    }
    check_links(
        &names,
        &heads.iter().map(Option::as_ref).collect::<Vec<_>>(),
        &opts.assume_renamed,
    )?;
    // Streams (stdin, pipes, zstd files without a usable index) are read once, forward.
    let mut held = opened.into_iter().map(hold).collect::<Result<Vec<_>>>()?;
    let mut inputs = held
        .iter_mut()
        .zip(&names)
        .map(|(h, name)| match h {
            Held::Seekable(input) => merge_input(input),
            Held::Stream(r) => {
                let r = r.take().unwrap_or_else(|| Box::new(std::io::empty()));
                MergeInput::stream(name, r)
            }
        })
        .collect::<Result<Vec<_>>>()?;
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
