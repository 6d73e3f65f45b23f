//! `rbddiff compress` / `decompress`: seekable zstd archives of diffs (see [`crate::zst`]).
//!
//! Compression walks the records once (record heads by positioned reads over a file, each
//! frame read by the worker that compresses it; or streamed), cuts the
//! byte stream into frames that start on record boundaries (a frame ends at the first record
//! boundary after `frame_target` bytes; a payload longer than twice the target is split), and
//! compresses the frames on `threads` workers with a bounded number of frames in flight, so
//! memory stays bounded whatever the input size. Frames are written in order, followed by the
//! record index and the seek table.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use zstd::stream::raw::CParameter;

use crate::error::{Error, ErrorKind, Result};
use crate::format::{tag, Version};
use crate::input::{Input, Kind};
use crate::parallel::{pipeline, Feeder, Pool};
use crate::positioned::Positioned;
use crate::progress::Ticker;
use crate::stream::{ItemKind, Payload, RecordSource, MAX_UNCONSUMED};
use crate::zst::{self, encode_seek_table, ArchiveIndex, FrameEntry, IndexWriter, IndexedDiff};
use crate::{DiffReader, ImageReader};

/// Default frame-size target: 4 MiB of diff stream per frame.
pub const DEFAULT_FRAME_TARGET: u64 = 4 << 20;
/// Largest frame-size target: frames are at most twice the target, and readers decompress
/// frames up to [`zst::MAX_FRAME_LEN`] whole.
pub const MAX_FRAME_TARGET: u64 = zst::MAX_FRAME_LEN / 2;

/// Options for [`compress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressOptions {
    /// zstd level (1..=22, or negative for the fast levels).
    pub level: i32,
    /// Compression workers (at least 1).
    pub threads: usize,
    /// Diff stream bytes per frame (a frame ends at the first record boundary after this).
    pub frame_target: u64,
}

pub use crate::parallel::default_threads;

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            level: 3,
            threads: default_threads(),
            frame_target: DEFAULT_FRAME_TARGET,
        }
    }
}

/// What [`compress`] or [`decompress`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Diff stream bytes (uncompressed).
    pub diff_bytes: u64,
    /// Compressed bytes (the whole archive for `compress`, the input for `decompress`).
    pub compressed_bytes: u64,
    /// zstd data frames.
    pub frames: u64,
    /// Indexed records (`compress` only).
    pub records: u64,
}

// ---------------------------------------------------------------------------------------------
// Frame cutting

/// Bytes of one frame: a range of a file (read by the worker that compresses it, with
/// `pread`), or captured from a stream.
enum Chunk<'s> {
    At(&'s File, u64, usize),
    Owned(Vec<u8>),
}

impl Chunk<'_> {
    /// The frame's bytes (a file's read into `scratch`).
    fn bytes<'c>(&'c self, scratch: &'c mut Vec<u8>) -> Result<&'c [u8]> {
        match self {
            Chunk::At(f, at, len) => {
                let len_all = at.saturating_add(*len as u64);
                Ok(Positioned::File(f, len_all).get(*at, *len, scratch)?)
            }
            Chunk::Owned(v) => Ok(v),
        }
    }
}

/// A frame whose records' payloads are under this many times their heads' bytes is mostly
/// heads: it is compressed with a window of 2^[`zst::HEADS_WINDOW_LOG`] bytes, so that a
/// reader can walk its heads in little memory if its index block is left out (see
/// `zst::index`).
const HEADS_DENSE: u64 = 64;

/// Largest read a [`TeeReader`] passes to its input at once, so that the bytes held for the
/// current frame never exceed the frame cap by more than this.
const TEE_READ: usize = 1 << 20;

/// Cuts the diff stream into frames on record boundaries (see the module docs).
///
/// A file is cut by offsets (each frame read by the worker that compresses it). A streamed input is read through a
/// [`TeeReader`], which keeps the bytes of the current frame only: whatever the parser
/// consumes in one step (the body of an unknown record it skips, bytes after `e`, a large
/// metadata record), a frame is cut as soon as it reaches the cap, so the bytes held stay
/// below `cap + TEE_READ` plus what the parser holds unconsumed.
struct Cutter<'s, 'f> {
    target: u64,
    cap: u64,
    frame_start: u64,
    frames: u32,
    /// The file and its length.
    file: Option<(&'s File, u64)>,
    /// The streamed input, and the bytes read from it since `frame_start`.
    stream: Option<Box<dyn Read + Send>>,
    data: Vec<u8>,
    /// `(start, number)` of the frames cut since the frame holding the last indexed record
    /// (that one included).
    recent: Vec<(u64, u32)>,
    /// Bytes of the heads and of the payloads of the records that start in the current
    /// frame.
    heads: u64,
    payload: u64,
    feed: &'f mut Feeder<(Chunk<'s>, bool)>,
}

type Shared<'s, 'f> = Rc<RefCell<Cutter<'s, 'f>>>;

/// Reads a streamed input for the parser, keeping the bytes for the frames (see [`Cutter`]).
struct TeeReader<'s, 'f>(Shared<'s, 'f>);

impl Read for TeeReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut c = self
            .0
            .try_borrow_mut()
            .map_err(|_| io::Error::other("internal: cutter busy"))?;
        let c = &mut *c;
        let inner = c
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("internal: no stream to read"))?;
        let want = out.len().min(TEE_READ);
        let n = inner.read(&mut out[..want])?;
        c.data.extend_from_slice(&out[..n]);
        // Cut only before the bytes the parser may not have consumed: a record it has not
        // yielded yet (and the walk has not indexed) starts after that point.
        let safe = (c.frame_start + c.data.len() as u64).saturating_sub(MAX_UNCONSUMED as u64);
        c.through(safe).map_err(io::Error::from)?;
        Ok(n)
    }
}

impl<'s> Cutter<'s, '_> {
    /// Ends the current frame at stream offset `pos`.
    fn cut(&mut self, pos: u64) -> Result<()> {
        if pos <= self.frame_start {
            return Ok(());
        }
        let chunk = if let Some((f, len)) = self.file {
            let n = usize::try_from(pos - self.frame_start)
                .ok()
                .filter(|_| pos <= len)
                .ok_or_else(|| Error::invalid("internal: frame outside the input"))?;
            Chunk::At(f, self.frame_start, n)
        } else {
            let n = usize::try_from(pos - self.frame_start)
                .ok()
                .filter(|&n| n <= self.data.len())
                .ok_or_else(|| Error::invalid("internal: frame past the bytes read"))?;
            // What was read past the cut is at most the cap plus one read.
            let mut rest = Vec::with_capacity((self.target as usize) + TEE_READ);
            rest.extend_from_slice(&self.data[n..]);
            self.data.truncate(n);
            Chunk::Owned(std::mem::replace(&mut self.data, rest))
        };
        let dense = self.heads > 0 && self.payload < self.heads.saturating_mul(HEADS_DENSE);
        self.feed.send((chunk, dense))?;
        (self.heads, self.payload) = (0, 0);
        self.frame_start = pos;
        self.frames += 1;
        self.recent.push((pos, self.frames));
        Ok(())
    }

    /// A record starts at `pos`: ends the frame there if it is big enough; returns the
    /// record's frame and offset in it.
    fn at_record(&mut self, pos: u64) -> Result<(u32, u32)> {
        if pos >= self.frame_start {
            // Bytes before the record that the walk did not see (metadata records) are
            // split like a payload.
            self.through(pos)?;
            if pos - self.frame_start >= self.target {
                self.cut(pos)?;
            }
        }
        // The parser may have read far past the record's head before yielding it (the body
        // of an unknown record): then it starts in a frame cut since.
        let k = self
            .recent
            .iter()
            .rposition(|&(start, _)| start <= pos)
            .ok_or_else(|| Error::invalid("internal: a record before the frames kept"))?;
        let (start, frame) = self.recent[k];
        self.recent.drain(..k);
        let off = u32::try_from(pos - start)
            .map_err(|_| Error::invalid("internal: frame offset overflow"))?;
        Ok((frame, off))
    }

    /// The walk has reached `pos` inside a payload: splits frames that would exceed the cap.
    fn through(&mut self, pos: u64) -> Result<()> {
        while pos.saturating_sub(self.frame_start) > self.cap {
            let at = self.frame_start + self.cap;
            self.cut(at)?;
        }
        Ok(())
    }
}

fn head_len(v: Version, t: u8) -> u64 {
    match (v, t) {
        (Version::V1, _) => 17,
        (Version::V2, tag::WRITE) => 25,
        (Version::V2, _) => 9,
    }
}

/// Walks one diff, cutting frames and indexing its records into `ix`.
fn walk_diff(
    src: &mut dyn RecordSource,
    start: u64,
    cut: &Shared<'_, '_>,
    ix: &mut IndexWriter,
) -> Result<IndexedDiff> {
    let version = src.version();
    ix.set_version(version);
    let first = ix.records();
    // A file's payloads are not read here (the frames are read by the workers).
    let positioned = cut.borrow().file.is_some();
    let mut count = 0;
    let mut scratch = Vec::new();
    let through = |pos: u64| cut.borrow_mut().through(pos);
    while let Some(item) = src.next_item()? {
        count = item.index + 1;
        let (frame, _) = cut.borrow_mut().at_record(item.offset)?;
        let (t, offset, len) = zst::item_fields(&item.kind);
        ix.push(frame, item.offset, t, offset, len)?;
        {
            let mut c = cut.borrow_mut();
            c.heads += head_len(version, t);
            c.payload += if t == tag::ZERO || t == tag::END {
                0
            } else {
                len
            };
        }
        let body_start = item.offset + head_len(version, t);
        match item.kind {
            ItemKind::Write {
                data: Payload::Bytes(_),
                extent,
            } => through(body_start + extent.len)?,
            ItemKind::Write { extent, .. } if positioned => through(body_start + extent.len)?,
            ItemKind::Write {
                data: Payload::Stream(r),
                ..
            } => {
                if scratch.is_empty() {
                    scratch = vec![0u8; TEE_READ];
                }
                let mut p = body_start;
                loop {
                    let n = match r.read(&mut scratch) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    };
                    p += n as u64;
                    through(p)?;
                }
            }
            ItemKind::Unknown { len, .. } => through(body_start + len)?,
            _ => {}
        }
    }
    Ok(IndexedDiff {
        start,
        version,
        metadata: src.metadata().clone(),
        metadata_records: src.metadata_records().to_vec(),
        warnings: src.warnings().to_vec(),
        record_count: count,
        end: src.position(),
        indexed: ix.records() - first,
    })
}

/// Walks the whole input, sending frames; returns the index header and its records.
fn walk<'s>(
    kind: Kind,
    file: Option<(&'s File, u64)>,
    stream: Option<Box<dyn Read + Send>>,
    opts: &CompressOptions,
    feed: &mut Feeder<(Chunk<'s>, bool)>,
) -> Result<(ArchiveIndex, IndexWriter)> {
    let mut ix = IndexWriter::new()?;
    let streamed = stream.is_some();
    let cut: Shared<'s, '_> = Rc::new(RefCell::new(Cutter {
        target: opts.frame_target,
        cap: opts.frame_target * 2,
        frame_start: 0,
        frames: 0,
        file,
        stream,
        data: Vec::new(),
        recent: vec![(0, 0)],
        heads: 0,
        payload: 0,
        feed,
    }));
    let mut diffs = Vec::new();
    let mut image = None;
    match (file, streamed, kind) {
        // What is no known kind is parsed as a diff, whose banner error says what it is.
        (Some((f, len)), _, Kind::DiffV1 | Kind::DiffV2 | Kind::Unknown) => {
            let mut d = DiffReader::at_file(f, len)?;
            diffs.push(walk_diff(&mut d, 0, &cut, &mut ix)?);
        }
        (Some((f, len)), _, Kind::Image) => {
            let mut img = ImageReader::from_file(f.try_clone()?, len)?;
            image = Some((img.header().clone(), img.warnings().to_vec()));
            while let Some(d) = img.next_diff()? {
                let start = d.start_offset();
                cut.borrow_mut().at_record(start)?;
                diffs.push(walk_diff(d, start, &cut, &mut ix)?);
            }
        }
        (None, true, Kind::DiffV1 | Kind::DiffV2 | Kind::Unknown) => {
            let mut d = DiffReader::new(TeeReader(cut.clone()))?;
            diffs.push(walk_diff(&mut d, 0, &cut, &mut ix)?);
        }
        (None, true, Kind::Image) => {
            let mut img = ImageReader::new(TeeReader(cut.clone()))?;
            image = Some((img.header().clone(), img.warnings().to_vec()));
            while let Some(d) = img.next_diff()? {
                let start = d.start_offset();
                cut.borrow_mut().at_record(start)?;
                diffs.push(walk_diff(d, start, &cut, &mut ix)?);
            }
        }
        _ => {
            return Err(Error::invalid(
                "not an rbd diff or image stream (no 'rbd diff v1', 'rbd diff v2' or 'rbd image v2' banner)",
            ))
        }
    }
    let total = match file {
        Some((_, len)) => len,
        None => {
            // Bytes after the last embedded diff of an image stream are kept too (the
            // reader cuts frames as they come).
            let mut buf = vec![0u8; TEE_READ];
            let mut r = TeeReader(cut.clone());
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let c = cut.borrow();
            c.frame_start + c.data.len() as u64
        }
    };
    let mut c = cut.borrow_mut();
    c.through(total)?;
    c.cut(total)?;
    let index = ArchiveIndex {
        total_len: total,
        kind,
        image,
        diffs,
    };
    Ok((index, ix))
}

fn compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(CParameter::ChecksumFlag(true))?;
    c.set_parameter(CParameter::ContentSizeFlag(true))?;
    Ok(c)
}

/// One file compressed by [`compress_paths`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Compressed {
    /// The input (`-` for stdin).
    pub input: String,
    /// The archive written (`-` for stdout).
    pub output: String,
    /// What was done.
    #[serde(flatten)]
    pub stats: Stats,
}

/// What [`compress_paths`] (or [`decompress_paths`]) did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompressReport {
    /// The sums over every file.
    #[serde(flatten)]
    pub total: Stats,
    /// Each input, in order.
    pub files: Vec<Compressed>,
    /// Arguments and directory entries passed over (see [`crate::dirlist`]), and inputs
    /// already compressed (for [`decompress_paths`]: inputs with no `.zst` name).
    pub skipped: Vec<crate::dirlist::Skipped>,
}

impl CompressReport {
    fn add(&mut self, input: String, output: String, stats: Stats) {
        self.total.diff_bytes += stats.diff_bytes;
        self.total.compressed_bytes += stats.compressed_bytes;
        self.total.frames += stats.frames;
        self.total.records += stats.records;
        self.files.push(Compressed {
            input,
            output,
            stats,
        });
    }
}

/// Compresses `inputs` into archives, committed atomically, each with its `.sums` sidecar
/// when `sums`: one input (`-` for stdin) into `output` (`-` for stdout); several, or a
/// directory (its diff files, see [`crate::dirlist`]), each into the directory `output` as
/// `NAME.zst` (inputs already compressed are passed over).
///
/// # Errors
/// As [`compress`]; `--sums` with stdout; several inputs and `output` no directory; an
/// output exists (unless `force`) or is an input.
pub fn compress_paths(
    inputs: &[String],
    output: &str,
    force: bool,
    sums: bool,
    opts: &CompressOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CompressReport> {
    if sums && output == "-" {
        return Err(Error::invalid(
            "--sums needs an output file (a sidecar cannot follow stdout)",
        ));
    }
    let x = crate::dirlist::expand(inputs)?;
    let mut report = CompressReport {
        skipped: x.skipped,
        ..CompressReport::default()
    };
    if !x.dirs && x.files.len() == 1 {
        let stats = compress_one(&x.files[0], output, force, sums, opts, progress)?;
        report.add(x.files[0].clone(), output.to_string(), stats);
        return Ok(report);
    }
    let dir = std::path::Path::new(output);
    if output == "-" || !dir.is_dir() {
        return Err(Error::invalid(
            "several inputs (or a directory) are compressed into a directory: -o must name an \
             existing directory",
        )
        .with_file(output));
    }
    for f in x.files {
        if f == "-" {
            return Err(Error::invalid(
                "stdin ('-') cannot be compressed beside other inputs: it has no name",
            ));
        }
        let name = std::path::Path::new(&f)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".zst") {
            report.skipped.push(crate::dirlist::Skipped {
                file: f,
                reason: "already compressed (.zst)".into(),
            });
            continue;
        }
        let out = dir
            .join(format!("{name}.zst"))
            .to_string_lossy()
            .into_owned();
        let stats = compress_one(&f, &out, force, sums, opts, progress)?;
        report.add(f, out, stats);
    }
    Ok(report)
}

/// Decompresses `inputs` (see [`decompress`]), each output committed atomically: one input
/// (`-` for stdin) into `output` (`-` for stdout); several, or a directory (its diff files,
/// see [`crate::dirlist`]), each `NAME.zst` into the directory `output` as `NAME` (inputs
/// with no `.zst` name are passed over, as `zstd -d` does).
///
/// # Errors
/// As [`decompress`] (an error of writing an output names it); several inputs and
/// `output` no directory; an output exists (unless `force`) or is an input.
pub fn decompress_paths(
    inputs: &[String],
    output: &str,
    force: bool,
    threads: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CompressReport> {
    let x = crate::dirlist::expand(inputs)?;
    let mut report = CompressReport {
        skipped: x.skipped,
        ..CompressReport::default()
    };
    if !x.dirs && x.files.len() == 1 {
        let stats = decompress_one(&x.files[0], output, force, threads, progress)?;
        report.add(x.files[0].clone(), output.to_string(), stats);
        return Ok(report);
    }
    let dir = std::path::Path::new(output);
    if output == "-" || !dir.is_dir() {
        return Err(Error::invalid(
            "several inputs (or a directory) are decompressed into a directory: -o must name \
             an existing directory",
        )
        .with_file(output));
    }
    if x.files.iter().any(|f| f == "-") {
        return Err(Error::invalid(
            "stdin ('-') cannot be decompressed beside other inputs: it has no name",
        ));
    }
    for f in x.files {
        let name = std::path::Path::new(&f)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(stem) = name.strip_suffix(".zst").filter(|s| !s.is_empty()) else {
            report.skipped.push(crate::dirlist::Skipped {
                file: f,
                reason: "no .zst name (not decompressed; give it alone with -o OUTPUT)".into(),
            });
            continue;
        };
        let out = dir.join(stem).to_string_lossy().into_owned();
        let stats = decompress_one(&f, &out, force, threads, progress)?;
        report.add(f, out, stats);
    }
    Ok(report)
}

/// Decompresses the file `input` into `output` (`-`: stdout), committed atomically.
fn decompress_one(
    input: &str,
    output: &str,
    force: bool,
    threads: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Stats> {
    let inp = Input::open(input)?;
    let mut out = crate::output::Output::create_for(output, force, &[std::path::Path::new(input)])?;
    let watch = inp.watch();
    let r = decompress_with_progress(inp, &mut out, threads, progress);
    // A truncated input names the input; any other error that names no file is one of
    // writing the output.
    let stats = watch.check(r).map_err(|e| {
        if output == "-" {
            e
        } else {
            e.with_file(output)
        }
    })?;
    out.commit()?;
    Ok(stats)
}

/// Compresses the file `input` into `output`, committed atomically, with its sidecar when
/// `sums`.
fn compress_one(
    input: &str,
    output: &str,
    force: bool,
    sums: bool,
    opts: &CompressOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Stats> {
    let inp = Input::open(input)?;
    let mut out = crate::output::Output::create_for(output, force, &[std::path::Path::new(input)])?;
    let watch = inp.watch();
    let stats = watch.check(compress_with_progress(inp, &mut out, opts, progress))?;
    out.commit()?;
    if sums {
        crate::sums::write_sums_for(std::path::Path::new(output))?;
    }
    Ok(stats)
}

/// Compresses a diff (v1, v2 or image stream; a file or a stream) into a seekable, indexed
/// zstd archive written to `out`. The input is validated while walking; an invalid diff is
/// an error (and `out` must then be discarded).
///
/// # Errors
/// Invalid input, bad options, or an I/O error.
pub fn compress(input: Input, out: &mut dyn Write, opts: &CompressOptions) -> Result<Stats> {
    compress_with_progress(input, out, opts, &mut |_, _| {})
}

/// [`compress`], reporting `(input bytes compressed, total)` to `progress` once per frame
/// (see [`crate::progress`]; the total is known for an uncompressed file).
///
/// # Errors
/// As [`compress`].
pub fn compress_with_progress(
    input: Input,
    out: &mut dyn Write,
    opts: &CompressOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Stats> {
    if !(1024..=MAX_FRAME_TARGET).contains(&opts.frame_target) {
        return Err(Error::invalid(format!(
            "frame target must be between 1 KiB and {} MiB",
            MAX_FRAME_TARGET >> 20
        )));
    }
    let (lo, hi) = (*zstd::compression_level_range().start(), 22);
    if !(lo..=hi).contains(&opts.level) {
        return Err(Error::invalid(format!(
            "compression level {} out of range {lo}..={hi}",
            opts.level
        )));
    }
    let name = input.name().to_string();
    let kind = input.kind();
    let r = if let Some((f, len)) = input.file() {
        let mut tick = Ticker::new(progress, len);
        compress_from(kind, Some((f, len)), None, out, opts, &mut tick)
    } else {
        let mut tick = Ticker::new(progress, 0);
        compress_from(kind, None, Some(input.into_reader()), out, opts, &mut tick)
    };
    r.map_err(|e| e.with_file(name))
}

fn compress_from(
    kind: Kind,
    file: Option<(&File, u64)>,
    stream: Option<Box<dyn Read + Send>>,
    out: &mut dyn Write,
    opts: &CompressOptions,
    tick: &mut Ticker<'_>,
) -> Result<Stats> {
    let level = opts.level;
    let mut frames: Vec<FrameEntry> = Vec::new();
    let (mut c_off, mut d_off) = (0u64, 0u64);
    // Frames compressed with the small window of heads ([`HEADS_DENSE`]).
    let mut heads = Vec::new();
    let pool = Pool::default();
    let (index, ix) = pipeline(
        opts.threads,
        || {
            let mut c = compressor(level);
            let mut scratch = Vec::new();
            let pool = &pool;
            move |(chunk, dense): (Chunk<'_>, bool)| -> Result<(Vec<u8>, u32, bool)> {
                let c = c.as_mut().map_err(|e| Error::invalid(e.to_string()))?;
                let data = chunk.bytes(&mut scratch)?;
                let mut z = pool.take();
                z.reserve(zstd::zstd_safe::compress_bound(data.len()));
                // 0: the level's own window.
                let window = if dense { zst::HEADS_WINDOW_LOG } else { 0 };
                c.set_parameter(CParameter::WindowLog(window))?;
                c.compress_to_buffer(data, &mut z)?;
                Ok((z, data.len() as u32, dense))
            }
        },
        |feed| walk(kind, file, stream, opts, feed),
        |(z, d_len, dense)| {
            heads.push(dense);
            out.write_all(&z)?;
            let n = z.len();
            let checksum = match z.get(n.saturating_sub(4)..) {
                Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
                _ => 0,
            };
            frames.push(FrameEntry {
                c_offset: c_off,
                c_len: n as u32,
                d_offset: d_off,
                d_len,
                checksum,
            });
            c_off += n as u64;
            d_off += u64::from(d_len);
            tick.add(u64::from(d_len));
            pool.put(z);
            Ok(())
        },
    )?;
    tick.finish();
    let records = ix.records();
    let mut ix = ix;
    ix.leave_out(&frames, &heads)?;
    let idx_len = ix.finish(&index, frames.len(), out, true)?;
    let table = encode_seek_table(&frames);
    out.write_all(&table)?;
    out.flush()?;
    Ok(Stats {
        diff_bytes: d_off,
        compressed_bytes: c_off + idx_len + table.len() as u64,
        frames: frames.len() as u64,
        records: index
            .diffs
            .iter()
            .map(|d| d.metadata_records.len() as u64)
            .sum::<u64>()
            + records,
    })
}

/// Decompresses any zstd input (an rbddiff archive or a file written by `zstd`) to `out`.
///
/// An indexed archive in a file is decompressed frame-parallel on `threads` workers;
/// anything else is streamed. Every frame's content checksum is verified.
///
/// # Errors
/// The input is not zstd, or a frame is corrupt or truncated (the error names the input and
/// the offsets); writing `out` fails (that error names no file: the caller knows it).
pub fn decompress(input: Input, out: &mut dyn Write, threads: usize) -> Result<Stats> {
    decompress_with_progress(input, out, threads, &mut |_, _| {})
}

/// [`decompress`], reporting `(bytes decompressed, total)` to `progress` (see
/// [`crate::progress`]; the total is known for an indexed archive in a regular file).
///
/// # Errors
/// As [`decompress`].
pub fn decompress_with_progress(
    input: Input,
    out: &mut dyn Write,
    threads: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Stats> {
    let name = input.name().to_string();
    if !input.is_compressed() {
        return Err(Error::invalid("not a zstd-compressed file").with_file(name));
    }
    if let Some(raw) = input.raw() {
        if let Ok(Some((frames, _))) =
            zst::seek_table(raw).map(|t| t.filter(|(f, _)| zst::frames_fit(f)))
        {
            let total = frames.iter().map(|f| u64::from(f.d_len)).sum();
            let mut tick = Ticker::new(progress, total);
            let total = zst::decompress_frames(&name, raw, &frames, out, threads, &mut tick)?;
            return Ok(Stats {
                diff_bytes: total,
                compressed_bytes: raw.len(),
                frames: frames.len() as u64,
                records: 0,
            });
        }
    }
    let mut tick = Ticker::new(progress, 0);
    let mut r = input.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::from(e).with_file(name)),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
        tick.add(n as u64);
    }
    out.flush()?;
    tick.finish();
    Ok(Stats {
        diff_bytes: total,
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Compressed output for writers of diffs

const CHANNEL_CHUNK: usize = 1 << 20;

/// The writing end handed to the producer of [`compress_stream`].
struct ChannelWriter {
    tx: Option<SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHANNEL_CHUNK));
        match &self.tx {
            Some(tx) => tx
                .send(chunk)
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "compressor stopped")),
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed")),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > CHANNEL_CHUNK {
            self.send()?;
        }
        if data.len() >= CHANNEL_CHUNK {
            self.buf.extend_from_slice(data);
            self.send()?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A pipe between two threads: what is written to the first end (in chunks of 1 MiB, 4 in
/// flight; flushed, then dropped, to end the stream) is read from the second.
pub(crate) fn pipe() -> (impl Write + Send, impl Read + Send) {
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    (
        ChannelWriter {
            tx: Some(tx),
            buf: Vec::with_capacity(CHANNEL_CHUNK),
        },
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        },
    )
}

/// The reading end used by the compressor thread of [`compress_stream`].
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Compresses a diff while it is being written: `produce` writes a diff (v1, v2 or image
/// stream, e.g. through a [`crate::DiffWriter`]) to the writer it is given, and the archive
/// (frames on record boundaries, record index, seek table) goes to `out`. Memory stays
/// bounded: the producer blocks while the compressor is behind.
///
/// Returns what `produce` returned and the compression statistics. An error from `produce`
/// wins over the compressor's (which then only sees a truncated diff).
///
/// # Errors
/// `produce` fails, the diff it writes is invalid, or writing `out` fails.
pub fn compress_stream<R>(
    out: &mut (dyn Write + Send),
    opts: &CompressOptions,
    produce: impl FnOnce(&mut dyn Write) -> Result<R>,
) -> Result<(R, Stats)> {
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    std::thread::scope(|s| {
        let worker = s.spawn(move || -> Result<Stats> {
            let reader = ChannelReader {
                rx,
                cur: Vec::new(),
                pos: 0,
            };
            let input = Input::from_reader("-", Box::new(reader))?;
            compress(input, out, opts)
        });
        let mut w = ChannelWriter {
            tx: Some(tx),
            buf: Vec::with_capacity(CHANNEL_CHUNK),
        };
        let produced = produce(&mut w).and_then(|r| {
            w.send()?;
            Ok(r)
        });
        w.tx = None;
        drop(w);
        let compressed = worker
            .join()
            .map_err(|_| Error::invalid("internal: compressor thread panicked"))?;
        match (produced, compressed) {
            (Ok(r), Ok(stats)) => Ok((r, stats)),
            (Err(pe), Err(ce)) => {
                // The producer only saw the compressor go away: report why it did.
                let broken = matches!(pe.kind(), ErrorKind::Io(io) if io.kind() == io::ErrorKind::BrokenPipe);
                Err(if broken { ce } else { pe })
            }
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        }
    })
}
