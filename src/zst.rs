//! The compressed archive format and its readers.
//!
//! An archive is a sequence of standard zstd frames (each with content size and content
//! checksum) holding the diff bytes, cut on record boundaries; then a skippable frame with the
//! record index; then the seek table of the zstd seekable format (a skippable frame ending with
//! the seekable magic, so it is always the last 9 bytes of the file). Stock `zstd -d` skips
//! both skippable frames and restores the exact diff.
//!
//! - [`ZstdReader`] decodes any zstd stream (ours or one written by `zstd`) frame by frame,
//!   naming the frame and byte offsets when a frame is corrupt or truncated.
//! - [`ZstArchive`] gives random access to an indexed archive held in memory: the record
//!   index without decompressing anything, and byte ranges of the diff stream decompressing
//!   only the frames needed.

use std::io::{self, Read, Write};

use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use crate::error::{Error, ErrorKind, Result, Warning};
use crate::format::Kind;
use crate::format::{Metadata, Version};
use crate::parallel::{pipeline, Pool};
use crate::positioned::Positioned;
use crate::progress::Ticker;

/// Magic of the skippable frame holding the seek table (zstd seekable format).
pub const SEEK_TABLE_MAGIC: u32 = 0x184D_2A5E;
/// Magic of the skippable frame holding the rbddiff record index.
pub const INDEX_FRAME_MAGIC: u32 = 0x184D_2A5C;
/// Magic at the very end of a seekable zstd file.
pub const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Size of the seek table footer.
const FOOTER_LEN: usize = 9;
/// Largest frame the random-access readers decompress whole: twice the largest frame target
/// rbddiff writes (32 MiB, `compress::MAX_FRAME_TARGET`). An archive with a larger frame
/// (from another tool, or crafted) is read as a plain zstd stream instead.
pub const MAX_FRAME_LEN: u64 = 64 << 20;
/// Bytes of decompressed frames an archive keeps cached (at least the frame just read).
pub const CACHE_BYTES: usize = 128 << 20;

/// One zstd frame of an archive, from the seek table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEntry {
    /// Offset of the frame in the compressed file.
    pub c_offset: u64,
    /// Compressed size.
    pub c_len: u32,
    /// Offset of its content in the diff stream.
    pub d_offset: u64,
    /// Decompressed size.
    pub d_len: u32,
    /// Low 32 bits of the XXH64 of the content (the frame's own content checksum).
    pub checksum: u32,
}

/// Encodes the seek table skippable frame (with checksums) for `frames`.
pub fn encode_seek_table(frames: &[FrameEntry]) -> Vec<u8> {
    let body = frames.len() * 12 + FOOTER_LEN;
    let mut out = Vec::with_capacity(8 + body);
    out.extend_from_slice(&SEEK_TABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&(body as u32).to_le_bytes());
    for f in frames {
        out.extend_from_slice(&f.c_len.to_le_bytes());
        out.extend_from_slice(&f.d_len.to_le_bytes());
        out.extend_from_slice(&f.checksum.to_le_bytes());
    }
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    out.push(0x80);
    out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    out
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn bad_archive(msg: impl std::fmt::Display) -> Error {
    Error::invalid(format!("corrupt zstd archive: {msg}"))
}

/// Parses the seek table at the end of `bytes`.
///
/// Returns `None` when the file does not end with a seek table (e.g. a file written by
/// `zstd`), else the frames and the offset where the seek table frame starts.
///
/// # Errors
/// The footer is there but the table is inconsistent.
pub fn parse_seek_table(bytes: &[u8]) -> Result<Option<(Vec<FrameEntry>, usize)>> {
    Ok(seek_table(Positioned::Mem(bytes))?.map(|(f, start)| (f, start as usize)))
}

/// [`parse_seek_table`] of bytes read at offsets (a file is read with two positioned reads:
/// the footer, then the table it describes, which must lie within the file).
///
/// # Errors
/// As [`parse_seek_table`], or reading fails.
pub fn seek_table(raw: Positioned<'_>) -> Result<Option<(Vec<FrameEntry>, u64)>> {
    let len = raw.len();
    if len < (8 + FOOTER_LEN) as u64 {
        return Ok(None);
    }
    let mut footer = [0u8; FOOTER_LEN];
    raw.read_exact_at(&mut footer, len - FOOTER_LEN as u64)?;
    if le32(&footer, 5) != Some(SEEKABLE_MAGIC) {
        return Ok(None);
    }
    let n = le32(&footer, 0).unwrap_or(0) as usize;
    let desc = footer[4];
    if desc & 0x7c != 0 {
        return Err(bad_archive("seek table descriptor has reserved bits set"));
    }
    let entry = if desc & 0x80 != 0 { 12 } else { 8 };
    let body = n
        .checked_mul(entry)
        .and_then(|x| x.checked_add(FOOTER_LEN))
        .filter(|&b| (b + 8) as u64 <= len)
        .ok_or_else(|| bad_archive(format!("seek table of {n} frames larger than the file")))?;
    let start = len - body as u64 - 8;
    let mut scratch = Vec::new();
    let bytes = raw.get(start, body + 8, &mut scratch)?;
    if le32(bytes, 0) != Some(SEEK_TABLE_MAGIC) || le32(bytes, 4) != Some(body as u32) {
        return Err(bad_archive(format!(
            "seek table frame header at byte {start} does not match its footer"
        )));
    }
    let mut frames = Vec::with_capacity(n);
    let (mut c, mut d) = (0u64, 0u64);
    for i in 0..n {
        let at = 8 + i * entry;
        let c_len = le32(bytes, at).unwrap_or(0);
        let d_len = le32(bytes, at + 4).unwrap_or(0);
        let checksum = if entry == 12 {
            le32(bytes, at + 8).unwrap_or(0)
        } else {
            0
        };
        frames.push(FrameEntry {
            c_offset: c,
            c_len,
            d_offset: d,
            d_len,
            checksum,
        });
        c += u64::from(c_len);
        d += u64::from(d_len);
    }
    if c > start {
        return Err(bad_archive(format!(
            "seek table lists {c} compressed bytes but the frames end at byte {start}"
        )));
    }
    Ok(Some((frames, start)))
}

mod index;

pub use index::{
    decode_index, encode_index, encode_index_v1, encode_index_v2, index_frame, ArchiveIndex,
    DecodedIndex, IndexRecord, IndexRecords, IndexWriter, IndexedDiff, HEADS_WINDOW_LOG, SPILL_AT,
};

// ---------------------------------------------------------------------------------------------
// Errors

/// The error for a frame that fails to decompress.
pub(crate) fn corrupt_frame(frame: Option<u64>, c_offset: u64, d_offset: u64, why: &str) -> Error {
    let which = match frame {
        Some(f) => format!("zstd frame {f}"),
        None => "zstd skippable frame".to_string(),
    };
    Error::new(ErrorKind::Invalid(format!(
        "corrupt {which} at compressed byte {c_offset} (diff stream byte {d_offset}): {why}"
    )))
}

fn truncated_frame(frame: Option<u64>, c_offset: u64, d_offset: u64) -> Error {
    let which = match frame {
        Some(f) => format!("zstd frame {f}"),
        None => "zstd skippable frame".to_string(),
    };
    Error::new(ErrorKind::Truncated {
        what: format!(
            "{which} at compressed byte {c_offset} (diff stream byte {d_offset}): the compressed file ends inside it"
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Streaming decoder

const IN_BUF: usize = 256 * 1024;

/// Frame-aware streaming zstd decoder over any reader.
///
/// Accepts any sequence of zstd and skippable frames. Errors name the data frame (counted
/// from 0, skippable frames not counted), its offset in the compressed input and the offset
/// of its content in the decompressed stream.
pub struct ZstdReader<R> {
    inner: R,
    dec: Decoder<'static>,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    eof: bool,
    /// Compressed offset of `buf[lo]`.
    c_pos: u64,
    /// Decompressed bytes produced so far.
    d_pos: u64,
    in_frame: bool,
    frame_is_data: bool,
    data_frames: u64,
    frame_c_start: u64,
    frame_d_start: u64,
    failed: bool,
}

impl<R> std::fmt::Debug for ZstdReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ZstdReader(frame {}, byte {})",
            self.data_frames, self.c_pos
        )
    }
}

impl<R: Read> ZstdReader<R> {
    /// A decoder reading compressed bytes from `inner`.
    ///
    /// # Errors
    /// The zstd context cannot be created.
    pub fn new(inner: R) -> Result<Self> {
        Ok(ZstdReader {
            inner,
            dec: Decoder::new()?,
            buf: vec![0; IN_BUF],
            lo: 0,
            hi: 0,
            eof: false,
            c_pos: 0,
            d_pos: 0,
            in_frame: false,
            frame_is_data: false,
            data_frames: 0,
            frame_c_start: 0,
            frame_d_start: 0,
            failed: false,
        })
    }

    /// Number of complete data frames decoded so far.
    pub fn frames(&self) -> u64 {
        self.data_frames
    }

    /// Compressed bytes consumed so far.
    pub fn compressed_pos(&self) -> u64 {
        self.c_pos
    }

    fn frame_id(&self) -> Option<u64> {
        self.frame_is_data.then_some(self.data_frames)
    }

    /// Reads more compressed input, keeping at least the unread bytes.
    fn refill(&mut self) -> io::Result<()> {
        if self.lo > 0 {
            self.buf.copy_within(self.lo..self.hi, 0);
            self.hi -= self.lo;
            self.lo = 0;
        }
        loop {
            match self.inner.read(&mut self.buf[self.hi..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.hi += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn read_inner(&mut self, out: &mut [u8]) -> Result<usize> {
        loop {
            if !self.in_frame {
                while self.hi - self.lo < 4 && !self.eof {
                    self.refill()?;
                }
                if self.lo == self.hi {
                    return Ok(0);
                }
                // Anything but a skippable frame counts as (an attempt at) a data frame.
                let magic = self.buf.get(self.lo..self.lo + 4);
                self.frame_is_data =
                    !magic.is_some_and(|m| m[0] & 0xf0 == 0x50 && m[1..] == [0x2a, 0x4d, 0x18]);
                self.in_frame = true;
                self.frame_c_start = self.c_pos;
                self.frame_d_start = self.d_pos;
            } else if self.lo == self.hi && !self.eof {
                self.refill()?;
            }
            let mut inb = InBuffer::around(&self.buf[self.lo..self.hi]);
            let mut outb = OutBuffer::around(&mut *out);
            let hint = self.dec.run(&mut inb, &mut outb).map_err(|e| {
                corrupt_frame(
                    self.frame_id(),
                    self.frame_c_start,
                    self.frame_d_start,
                    &e.to_string(),
                )
            })?;
            let used = inb.pos();
            let n = outb.pos();
            self.lo += used;
            self.c_pos += used as u64;
            self.d_pos += n as u64;
            if hint == 0 {
                self.in_frame = false;
                if self.frame_is_data {
                    self.data_frames += 1;
                }
            } else if n == 0 && used == 0 && self.eof && self.lo == self.hi {
                return Err(truncated_frame(
                    self.frame_id(),
                    self.frame_c_start,
                    self.frame_d_start,
                ));
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

impl<R: Read> Read for ZstdReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.failed {
            return Ok(0);
        }
        match self.read_inner(out) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.failed = true;
                Err(e.into())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random access

/// Decompresses frame `i` of `bytes` (described by `f`) into a new buffer.
pub(crate) fn decompress_frame(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    bytes: &[u8],
    i: usize,
    f: &FrameEntry,
    out: &mut Vec<u8>,
) -> Result<()> {
    let fail = |why: &str| corrupt_frame(Some(i as u64), f.c_offset, f.d_offset, why);
    if u64::from(f.d_len) > MAX_FRAME_LEN {
        return Err(fail("frame larger than 64 MiB in the seek table"));
    }
    let start = usize::try_from(f.c_offset).map_err(|_| fail("offset out of range"))?;
    let src = start
        .checked_add(f.c_len as usize)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| fail("frame runs past the end of the file"))?;
    decompress_src(dctx, src, i, f, out)
}

/// Decompresses `src`, the compressed bytes of frame `i` (described by `f`), into `out`.
fn decompress_src(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    src: &[u8],
    i: usize,
    f: &FrameEntry,
    out: &mut Vec<u8>,
) -> Result<()> {
    let fail = |why: &str| corrupt_frame(Some(i as u64), f.c_offset, f.d_offset, why);
    out.clear();
    // Exactly: a cache counts frames by their length, and a reused buffer grown by
    // doubling would hold up to twice it.
    out.reserve_exact(f.d_len as usize);
    let n = dctx
        .decompress_to_buffer(src, out)
        .map_err(|e| fail(&e.to_string()))?;
    if n != f.d_len as usize {
        return Err(fail(&format!(
            "decompressed to {n} bytes, the seek table says {}",
            f.d_len
        )));
    }
    Ok(())
}

/// [`decompress_frame`] of an archive read at offsets: a file's compressed frame is read into
/// `scratch` first (its length bounded like its content, [`MAX_FRAME_LEN`]).
pub(crate) fn decompress_at(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    raw: Positioned<'_>,
    i: usize,
    f: &FrameEntry,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    if let Positioned::Mem(bytes) = raw {
        return decompress_frame(dctx, bytes, i, f, out);
    }
    let fail = |why: &str| corrupt_frame(Some(i as u64), f.c_offset, f.d_offset, why);
    if u64::from(f.d_len) > MAX_FRAME_LEN
        || u64::from(f.c_len) > MAX_FRAME_LEN + (MAX_FRAME_LEN >> 7) + 4096
    {
        return Err(fail("frame larger than 64 MiB in the seek table"));
    }
    let src = raw
        .get(f.c_offset, f.c_len as usize, scratch)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => fail("frame runs past the end of the file"),
            _ => Error::from(e),
        })?;
    decompress_src(dctx, src, i, f, out)
}

/// Decompresses the frames of `raw` (the archive `name`) to `out` on `threads` workers, in
/// order; returns the bytes written. An error of a frame names `name`, an error writing `out`
/// names no file (the caller knows it).
pub(crate) fn decompress_frames(
    name: &str,
    raw: Positioned<'_>,
    frames: &[FrameEntry],
    out: &mut dyn Write,
    threads: usize,
    tick: &mut Ticker<'_>,
) -> Result<u64> {
    let mut total = 0u64;
    let pool = Pool::default();
    pipeline(
        threads,
        || {
            let mut d = zstd::bulk::Decompressor::new();
            let mut scratch = Vec::new();
            let pool = &pool;
            move |(i, f): (usize, FrameEntry)| -> Result<Vec<u8>> {
                let d = d.as_mut().map_err(|e| Error::invalid(e.to_string()))?;
                let mut buf = pool.take();
                decompress_at(d, raw, i, &f, &mut buf, &mut scratch)
                    .map_err(|e| e.with_file(name))?;
                Ok(buf)
            }
        },
        |feed| {
            for (i, f) in frames.iter().enumerate() {
                feed.send((i, *f))?;
            }
            Ok(())
        },
        |data| {
            out.write_all(&data)?;
            total += data.len() as u64;
            tick.add(data.len() as u64);
            pool.put(data);
            Ok(())
        },
    )?;
    out.flush()?;
    tick.finish();
    Ok(total)
}

/// True when `bytes` ends with a valid seek table preceded by an rbddiff record index frame
/// (the index itself is decoded, and checked, by [`ZstArchive::open`]).
pub fn has_index<'a>(bytes: impl Into<Positioned<'a>>) -> bool {
    let raw = bytes.into();
    let Ok(Some((frames, _))) = seek_table(raw) else {
        return false;
    };
    if !frames_fit(&frames) {
        return false;
    }
    let data_end = frames.last().map_or(0, |f| f.c_offset + u64::from(f.c_len));
    let mut magic = [0u8; 4];
    raw.read_exact_at(&mut magic, data_end).is_ok() && le32(&magic, 0) == Some(INDEX_FRAME_MAGIC)
}

/// True when every frame of a seek table may be decompressed whole ([`MAX_FRAME_LEN`]).
pub fn frames_fit(frames: &[FrameEntry]) -> bool {
    frames.iter().all(|f| u64::from(f.d_len) <= MAX_FRAME_LEN)
}

/// Reads of the record index of an archive in a store: its version 3 blocks are small
/// (tens of bytes per frame), so each would cost a request; they are read through a few
/// windows of [`INDEX_WINDOW`] bytes instead (the plan and the merge's sweeps walk the
/// index at different places), at most [`INDEX_WINDOWS`] × [`INDEX_WINDOW`] bytes held.
struct IndexWindows<'a> {
    raw: Positioned<'a>,
    /// The index frame's byte range.
    range: std::ops::Range<u64>,
    /// `(start, bytes)` of each window, most recently used last.
    windows: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
}

/// Bytes of the record index read at once from a store ([`IndexWindows`]).
const INDEX_WINDOW: usize = 1 << 20;
/// Windows of the record index kept ([`IndexWindows`]).
const INDEX_WINDOWS: usize = 4;

impl std::fmt::Debug for IndexWindows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexWindows({:?})", self.range)
    }
}

impl crate::positioned::ReadAt for IndexWindows<'_> {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let end = at.saturating_add(buf.len() as u64);
        if at < self.range.start || end > self.range.end || buf.len() > INDEX_WINDOW {
            return self.raw.read_exact_at(buf, at);
        }
        let mut ws = self
            .windows
            .lock()
            .map_err(|_| io::Error::other("index windows poisoned"))?;
        let hit = ws
            .iter()
            .position(|(s, b)| *s <= at && end <= s + b.len() as u64);
        let k = match hit {
            Some(k) => k,
            None => {
                let n = (self.range.end - at).min(INDEX_WINDOW as u64) as usize;
                let mut b = if ws.len() >= INDEX_WINDOWS {
                    ws.remove(0).1
                } else {
                    Vec::new()
                };
                b.resize(n, 0);
                self.raw.read_exact_at(&mut b, at)?;
                ws.push((at, b));
                ws.len() - 1
            }
        };
        let w = ws.remove(k);
        let off = (at - w.0) as usize;
        buf.copy_from_slice(&w.1[off..off + buf.len()]);
        ws.push(w);
        Ok(())
    }
}

/// Random access to an indexed archive in memory or in a file (read with positioned reads).
pub struct ZstArchive<'a> {
    raw: Positioned<'a>,
    /// For an archive in a store: its record index read through windows.
    index_windows: Option<Box<IndexWindows<'a>>>,
    /// The compressed bytes of the frame being decompressed (read from a file).
    scratch: Vec<u8>,
    frames: Vec<FrameEntry>,
    index: ArchiveIndex,
    /// Where the records are: the block table (version 3), or the records decoded.
    records: index::Records,
    /// Made when this archive first decompresses a frame itself ([`ZstArchive::frame`]): a
    /// merge decompresses with its own contexts, and holds many archives.
    dctx: Option<zstd::bulk::Decompressor<'static>>,
    /// Recently decompressed frames, most recent last (at most `cache_frames`, and
    /// [`CACHE_BYTES`] but for the newest).
    cache: Vec<(usize, Vec<u8>)>,
    /// Most frames kept in `cache` ([`CACHE_FRAMES`] unless set).
    cache_frames: usize,
    /// Frames decompressed so far, by [`ZstArchive::frame`] or [`ZstArchive::decode_frame`].
    decompressed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ZstArchive<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ZstArchive({} frames)", self.frames.len())
    }
}

const CACHE_FRAMES: usize = 4;

impl<'a> ZstArchive<'a> {
    /// Opens an archive: reads the seek table and the record index, decompressing nothing.
    ///
    /// Returns `None` when `bytes` has no seek table or no rbddiff record index (a file
    /// written by `zstd`, or a seekable file from another tool): stream it instead.
    ///
    /// # Errors
    /// The seek table or index is present but corrupt or inconsistent.
    pub fn open(bytes: &'a [u8]) -> Result<Option<Self>> {
        Self::open_at(Positioned::Mem(bytes))
    }

    /// [`ZstArchive::open`] over the first `len` bytes of `file`, read with positioned reads:
    /// the seek table and the record index are read when it is opened, a frame's compressed
    /// bytes when the frame is decompressed.
    ///
    /// # Errors
    /// As [`ZstArchive::open`], or reading fails.
    pub fn open_file(file: &'a std::fs::File, len: u64) -> Result<Option<Self>> {
        Self::open_at(Positioned::File(file, len))
    }

    /// [`ZstArchive::open`] over bytes in memory or in a file.
    ///
    /// # Errors
    /// As [`ZstArchive::open_file`].
    pub fn open_at(raw: Positioned<'a>) -> Result<Option<Self>> {
        let Some((frames, seek_start)) = seek_table(raw)? else {
            return Ok(None);
        };
        if !frames_fit(&frames) {
            return Ok(None);
        }
        let data_end = frames.last().map_or(0, |f| f.c_offset + u64::from(f.c_len));
        let mut head = [0u8; 8];
        if data_end.saturating_add(8) > seek_start
            || raw.read_exact_at(&mut head, data_end).is_err()
        {
            return Ok(None);
        }
        if le32(&head, 0) != Some(INDEX_FRAME_MAGIC) {
            return Ok(None);
        }
        let body_len = u64::from(le32(&head, 4).unwrap_or(0));
        if data_end + 8 + body_len != seek_start {
            return Err(bad_archive(format!(
                "record index frame at byte {data_end} does not end where the seek table starts"
            )));
        }
        // The index lies within the file (checked above): reading it allocates no more.
        let mut scratch = Vec::new();
        let body = raw.get(data_end + 8, body_len as usize, &mut scratch)?;
        let total: u64 = frames.iter().map(|f| u64::from(f.d_len)).sum();
        // Every version of the index starts with the stream length: checked against the seek
        // table before anything is decoded (it bounds what decoding may allocate).
        let declared = body.get(8..16).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        });
        if declared.is_some_and(|t| t != total) {
            return Err(bad_archive(format!(
                "seek table frames hold {total} bytes, the record index says {}",
                declared.unwrap_or(0)
            )));
        }
        let base = usize::try_from(data_end + 8)
            .map_err(|_| bad_archive("record index beyond the addressable range"))?;
        let (index, records) = index::parse_index(body, base, &frames)?;
        if total != index.total_len {
            return Err(bad_archive(format!(
                "seek table frames hold {total} bytes, the record index says {}",
                index.total_len
            )));
        }
        if let index::Records::Decoded(diffs) = &records {
            let nframes = frames.len() as u64;
            for r in diffs.iter().flatten() {
                if u64::from(r.frame) >= nframes.max(1) || r.pos >= total {
                    return Err(bad_archive(format!(
                        "record at diff stream byte {} points outside the archive",
                        r.pos
                    )));
                }
            }
        }
        let index_windows = matches!(raw, Positioned::Other(..)).then(|| {
            Box::new(IndexWindows {
                raw,
                range: data_end..seek_start,
                windows: Default::default(),
            })
        });
        Ok(Some(ZstArchive {
            raw,
            index_windows,
            scratch: Vec::new(),
            frames,
            index,
            records,
            dctx: None,
            cache: Vec::new(),
            cache_frames: CACHE_FRAMES,
            decompressed: Default::default(),
        }))
    }

    /// The frames, from the seek table.
    pub fn frames(&self) -> &[FrameEntry] {
        &self.frames
    }

    /// The header of the record index (its records: [`ZstArchive::diff_records`]).
    pub fn index(&self) -> &ArchiveIndex {
        &self.index
    }

    /// A cursor over the indexed records of diff `diff` (see [`IndexRecords`]).
    pub fn diff_records(&self, diff: usize) -> IndexRecords {
        IndexRecords::new(diff)
    }

    /// The whole record index decoded into memory (about 40 bytes per record): for tests
    /// and tools; readers walk [`ZstArchive::diff_records`].
    ///
    /// # Errors
    /// The index is corrupt.
    pub fn decoded_index(&self) -> Result<DecodedIndex> {
        let mut records = Vec::with_capacity(self.index.diffs.len());
        let view = self.view();
        for i in 0..self.index.diffs.len() {
            let mut c = IndexRecords::new(i);
            let mut v = Vec::new();
            while let Some(r) = c.read(&view)? {
                v.push(r);
            }
            records.push(v);
        }
        Ok(DecodedIndex {
            index: self.index.clone(),
            records,
        })
    }

    pub(crate) fn view(&self) -> index::View<'_> {
        index::View {
            bytes: match &self.index_windows {
                Some(w) => Positioned::Other(&**w, self.raw.len()),
                None => self.raw,
            },
            data: Some(self.raw),
            records: &self.records,
            frames: &self.frames,
            index: &self.index,
        }
    }

    /// Length of the decompressed stream.
    pub fn len(&self) -> u64 {
        self.index.total_len
    }

    /// True when the archive is read from a source other than memory or a file (a store):
    /// each frame read is then a request.
    pub fn is_remote(&self) -> bool {
        matches!(self.raw, Positioned::Other(..))
    }

    /// True when the decompressed stream is empty.
    pub fn is_empty(&self) -> bool {
        self.index.total_len == 0
    }

    /// Bytes of decompressed frames held in the cache, and how many frames.
    pub fn cached(&self) -> (usize, usize) {
        let bytes = self.cache.iter().map(|(_, d)| d.capacity()).sum();
        (bytes, self.cache.len())
    }

    /// Number of frames decompressed so far (cache misses).
    pub fn frames_decompressed(&self) -> u64 {
        self.decompressed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Decompresses frame `i` into `out` with `dctx`, bypassing the cache: for readers that
    /// keep frames themselves, on any thread (a merge decompresses ahead this way). A file's
    /// (or a store's) compressed frame is read into `scratch` first: keep it for the next
    /// call, so that frame-sized buffers are not allocated again for every frame.
    ///
    /// # Errors
    /// There is no frame `i`, or it is corrupt (the error names the frame and its offsets).
    pub fn decode_frame(
        &self,
        i: usize,
        dctx: &mut zstd::bulk::Decompressor<'static>,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        let f = self
            .frames
            .get(i)
            .ok_or_else(|| Error::invalid(format!("no zstd frame {i} in the archive")))?;
        decompress_at(dctx, self.raw, i, f, out, scratch)?;
        self.decompressed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The frame holding diff stream byte `pos`.
    pub fn frame_of(&self, pos: u64) -> Option<usize> {
        frame_at(&self.frames, pos)
    }

    /// The decompressed content of frame `i` (cached).
    ///
    /// # Errors
    /// The frame is corrupt (the error names the frame and its offsets).
    pub fn frame(&mut self, i: usize) -> Result<&[u8]> {
        if let Some(p) = self.cache.iter().position(|(n, _)| *n == i) {
            let hit = self.cache.remove(p);
            self.cache.push(hit);
        } else {
            let f = *self
                .frames
                .get(i)
                .ok_or_else(|| Error::invalid(format!("no zstd frame {i} in the archive")))?;
            let mut data = if self.cache.len() >= self.cache_frames {
                self.cache.remove(0).1
            } else {
                Vec::new()
            };
            let dctx = match &mut self.dctx {
                Some(d) => d,
                None => self.dctx.insert(zstd::bulk::Decompressor::new()?),
            };
            decompress_at(dctx, self.raw, i, &f, &mut data, &mut self.scratch)?;
            *self.decompressed.get_mut() += 1;
            self.cache.push((i, data));
            while self.cache.len() > 1
                && self.cache.iter().map(|(_, d)| d.capacity()).sum::<usize>() > CACHE_BYTES
            {
                self.cache.remove(0);
            }
        }
        Ok(self
            .cache
            .last()
            .map(|(_, d)| d.as_slice())
            .unwrap_or_default())
    }

    /// Keeps at most `n` (at least 1) decompressed frames cached from now on (4 by default):
    /// a reader that reads the stream in ascending order, as a merge does, needs only the
    /// frame it is in.
    pub fn set_cache_frames(&mut self, n: usize) {
        self.cache_frames = n.max(1);
        let drop = self.cache.len().saturating_sub(self.cache_frames);
        self.cache.drain(..drop);
    }

    /// Fills `out` with the diff stream bytes starting at `pos`, decompressing only the
    /// frames that hold them.
    ///
    /// # Errors
    /// The range runs past the end of the stream, or a frame is corrupt.
    pub fn read_range(&mut self, pos: u64, out: &mut [u8]) -> Result<()> {
        let len = out.len() as u64;
        self.copy_range(pos, len, &mut &mut out[..])
    }

    /// Writes `len` diff stream bytes starting at `pos` to `w`, frame by frame.
    ///
    /// # Errors
    /// As [`ZstArchive::read_range`], or writing fails.
    pub fn copy_range(&mut self, pos: u64, len: u64, w: &mut dyn Write) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            let at = pos + done;
            let i = self.frame_of(at).ok_or_else(|| {
                Error::invalid(format!(
                    "diff stream byte {at} is past the end of the archive ({} bytes)",
                    self.index.total_len
                ))
            })?;
            let d_offset = self.frames[i].d_offset;
            let frame = self.frame(i)?;
            let src = frame.get((at - d_offset) as usize..).unwrap_or_default();
            let n = (src.len() as u64).min(len - done) as usize;
            if n == 0 {
                return Err(Error::invalid("internal: empty frame slice"));
            }
            w.write_all(&src[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A `w` payload of an archive, read through [`ZstArchive::read_range`] only when asked.
pub struct ArchivePayload<'s, 'a> {
    arch: &'s mut ZstArchive<'a>,
    pos: u64,
    remaining: u64,
}

impl Read for ArchivePayload<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(out.len());
        if n == 0 {
            return Ok(0);
        }
        self.arch.read_range(self.pos, &mut out[..n])?;
        self.pos += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The records of one diff of an archive as a [`crate::RecordSource`], straight from the
/// index: walking it decompresses nothing; reading a payload decompresses only the frames
/// that hold it (through the archive's frame cache).
pub struct ArchiveRecords<'s, 'a> {
    payload: ArchivePayload<'s, 'a>,
    diff: usize,
    cursor: IndexRecords,
    /// The record [`crate::RecordSource::next_item`] gives next (read ahead, so that
    /// `position` can name it), or the error reading it gave.
    ahead: Result<Option<IndexRecord>>,
    next: u64,
}

impl<'a> ZstArchive<'a> {
    /// Diff `i` of the archive (0 for a plain diff; one per embedded diff of an image stream)
    /// as a record source.
    pub fn diff_source(&mut self, i: usize) -> Option<ArchiveRecords<'_, 'a>> {
        let next = self.index.diffs.get(i)?.first_indexed();
        let mut cursor = IndexRecords::new(i);
        let ahead = cursor.next(self);
        Some(ArchiveRecords {
            payload: ArchivePayload {
                arch: self,
                pos: 0,
                remaining: 0,
            },
            diff: i,
            cursor,
            ahead,
            next,
        })
    }
}

impl ArchiveRecords<'_, '_> {
    fn diff(&self) -> &IndexedDiff {
        &self.payload.arch.index.diffs[self.diff]
    }
}

impl crate::RecordSource for ArchiveRecords<'_, '_> {
    fn version(&self) -> Version {
        self.diff().version
    }
    fn metadata(&self) -> &Metadata {
        &self.diff().metadata
    }
    fn metadata_records(&self) -> &[(u64, u8)] {
        &self.diff().metadata_records
    }
    fn warnings(&self) -> &[Warning] {
        &self.diff().warnings
    }
    /// The record index keeps the warnings it lists, not a count of more.
    fn more_warnings(&self) -> u64 {
        0
    }
    fn position(&self) -> u64 {
        match &self.ahead {
            Ok(Some(r)) => r.pos,
            _ => self.diff().end,
        }
    }
    fn next_item(&mut self) -> Result<Option<crate::Item<'_>>> {
        let Some(r) = std::mem::replace(&mut self.ahead, Ok(None))? else {
            return Ok(None);
        };
        self.ahead = self.cursor.next(self.payload.arch);
        let body = self.payload.arch.index.diffs[self.diff].payload_pos(&r);
        let index = self.next;
        self.next += 1;
        let extent = crate::Extent::new(r.offset, r.len);
        let kind = match r.tag {
            crate::format::tag::WRITE => {
                self.payload.pos = body;
                self.payload.remaining = r.len;
                crate::ItemKind::Write {
                    extent,
                    data: crate::Payload::Stream(&mut self.payload),
                }
            }
            crate::format::tag::ZERO => crate::ItemKind::Zero(extent),
            crate::format::tag::END => crate::ItemKind::End,
            tag => crate::ItemKind::Unknown { tag, len: r.len },
        };
        Ok(Some(crate::Item {
            offset: r.pos,
            index,
            kind,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Checking the index against the content

/// Tag, image offset and length of a record as the index holds them (see [`IndexRecord`]).
pub(crate) fn item_fields(kind: &crate::ItemKind<'_>) -> (u8, u64, u64) {
    use crate::format::tag;
    match kind {
        crate::ItemKind::Write { extent, .. } => (tag::WRITE, extent.offset, extent.len),
        crate::ItemKind::Zero(e) => (tag::ZERO, e.offset, e.len),
        crate::ItemKind::Unknown { tag, len } => (*tag, 0, *len),
        crate::ItemKind::End => (tag::END, 0, 0),
    }
}

/// The frame of `frames` holding diff stream byte `pos`.
pub(crate) fn frame_at(frames: &[FrameEntry], pos: u64) -> Option<usize> {
    let i = frames
        .partition_point(|f| f.d_offset <= pos)
        .checked_sub(1)?;
    let f = frames.get(i)?;
    (pos < f.d_offset + u64::from(f.d_len)).then_some(i)
}

fn describe(r: &IndexRecord) -> String {
    let t = r.tag as char;
    let what = match r.tag {
        crate::format::tag::WRITE | crate::format::tag::ZERO => {
            format!("'{t}' [{}, +{})", r.offset, r.len)
        }
        crate::format::tag::END => "'e'".to_string(),
        _ => format!("'{t}' of {} bytes", r.len),
    };
    format!(
        "{what} at diff stream byte {} (frame {} + {})",
        r.pos, r.frame, r.frame_offset
    )
}

/// Compares the record index of an archive with its content, record by record, while the
/// content is walked (streamed by `verify`, or head by head by [`ZstArchive::check_index`]):
/// every record's position, tag, extent or length, frame and offset in it, then the header
/// (version, snapshots, protection, size, metadata records), the record count, the end and
/// the stream length. Warnings in the index are not compared (they are only reported).
#[derive(Debug)]
pub struct IndexCheck<'i> {
    arch: &'i ZstArchive<'i>,
    index: &'i ArchiveIndex,
    frames: &'i [FrameEntry],
    cursor: IndexRecords,
    count: u64,
    bad: Option<Error>,
}

impl<'i> IndexCheck<'i> {
    /// A check of `archive`'s index.
    pub fn new(archive: &'i ZstArchive<'_>) -> Self {
        IndexCheck {
            arch: archive,
            index: &archive.index,
            frames: &archive.frames,
            cursor: IndexRecords::new(0),
            count: 0,
            bad: None,
        }
    }

    fn diff(&self) -> Option<&'i IndexedDiff> {
        match (self.index.kind, self.index.diffs.as_slice()) {
            (Kind::DiffV1 | Kind::DiffV2, [d]) => Some(d),
            _ => None,
        }
    }

    fn fail(&mut self, offset: u64, record: Option<u64>, msg: String) {
        if self.bad.is_none() {
            let msg = format!("record index does not match the content: {msg}");
            self.bad = Some(Error::at(ErrorKind::Invalid(msg), offset, record));
        }
    }

    /// True once a mismatch was found (the rest of the walk can be skipped).
    pub fn failed(&self) -> bool {
        self.bad.is_some()
    }

    /// The walk of the content has reached `item`.
    pub fn item(&mut self, item: &crate::Item<'_>) {
        if self.bad.is_some() {
            return;
        }
        self.count = item.index + 1;
        let (tag, offset, len) = item_fields(&item.kind);
        let frame = frame_at(self.frames, item.offset);
        let got = IndexRecord {
            pos: item.offset,
            tag,
            offset,
            len,
            frame: frame.map_or(u32::MAX, |f| f as u32),
            frame_offset: frame.map_or(0, |f| (item.offset - self.frames[f].d_offset) as u32),
        };
        let want = match self.diff().map(|_| self.cursor.next(self.arch)) {
            Some(Ok(w)) => w,
            Some(Err(e)) => return self.fail(item.offset, Some(item.index), e.to_string()),
            None => None,
        };
        match want {
            Some(w) if w == got => {}
            Some(w) => self.fail(
                item.offset,
                Some(item.index),
                format!(
                    "the index has {}, the content {}",
                    describe(&w),
                    describe(&got)
                ),
            ),
            None => self.fail(
                item.offset,
                Some(item.index),
                format!("the content has {} that the index lacks", describe(&got)),
            ),
        }
    }

    /// Ends the check once `src` (the walk of the content) has ended; `len` is the length of
    /// the content when the walk read all of it.
    ///
    /// # Errors
    /// The first mismatch, naming the record and its offset in the diff stream.
    pub fn finish(mut self, src: &dyn crate::RecordSource, len: Option<u64>) -> Result<()> {
        let Some(d) = self.diff() else {
            return Err(bad_archive(format!(
                "record index describes {:?} with {} diffs, the content is one diff",
                self.index.kind,
                self.index.diffs.len()
            )));
        };
        let end = src.position();
        if let Ok(Some(r)) = self.cursor.next(self.arch) {
            self.fail(
                r.pos,
                None,
                format!(
                    "the index has {} after the end of the content",
                    describe(&r)
                ),
            );
        }
        let want_kind = match src.version() {
            crate::Version::V1 => Kind::DiffV1,
            crate::Version::V2 => Kind::DiffV2,
        };
        let header = [
            (
                "kind",
                self.index.kind == want_kind && d.version == src.version(),
            ),
            ("start", d.start == 0),
            (
                "snapshots, protection or size",
                &d.metadata == src.metadata(),
            ),
            (
                "metadata records",
                d.metadata_records == src.metadata_records(),
            ),
            ("record count", d.record_count == self.count),
            ("end of the diff", d.end == end),
            (
                "stream length",
                len.is_none_or(|n| n == self.index.total_len),
            ),
        ];
        if let Some((what, _)) = header.iter().find(|(_, ok)| !ok) {
            self.fail(0, None, format!("its {what} differs"));
        }
        self.bad.map_or(Ok(()), Err)
    }
}

/// The diff stream of an archive as a seekable reader, decompressing one frame at a time
/// (for walking the record heads with [`crate::DiffReader::seekable`]).
struct FrameReader<'a> {
    raw: Positioned<'a>,
    scratch: Vec<u8>,
    frames: &'a [FrameEntry],
    dctx: zstd::bulk::Decompressor<'static>,
    cur: Option<usize>,
    buf: Vec<u8>,
    pos: u64,
}

impl Read for FrameReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(i) = frame_at(self.frames, self.pos) else {
            return Ok(0);
        };
        if self.cur != Some(i) {
            self.cur = None;
            decompress_at(
                &mut self.dctx,
                self.raw,
                i,
                &self.frames[i],
                &mut self.buf,
                &mut self.scratch,
            )?;
            self.cur = Some(i);
        }
        let at = (self.pos - self.frames[i].d_offset) as usize;
        let src = self.buf.get(at..).unwrap_or_default();
        let n = src.len().min(out.len());
        out[..n].copy_from_slice(&src[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for FrameReader<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        match to {
            io::SeekFrom::Start(p) => self.pos = p,
            _ => return Err(io::Error::other("internal: relative seek in an archive")),
        }
        Ok(self.pos)
    }
}

impl ZstArchive<'_> {
    /// Checks the record index against the content with [`IndexCheck`], reading only the
    /// record heads: the frames holding a head (or the banner and metadata) are decompressed,
    /// frames holding nothing but payload bytes are not. Every rule of the record walk of a
    /// plain diff applies.
    ///
    /// # Errors
    /// The content is not a valid diff, a frame holding a record head is corrupt, or the
    /// index does not match (the error names the record and its offset).
    pub fn check_index(&self) -> Result<()> {
        let reader = FrameReader {
            raw: self.raw,
            scratch: Vec::new(),
            frames: &self.frames,
            dctx: zstd::bulk::Decompressor::new()?,
            cur: None,
            buf: Vec::new(),
            pos: 0,
        };
        use crate::RecordSource;
        let mut rd = crate::DiffReader::seekable(reader, self.len())?;
        let mut check = IndexCheck::new(self);
        while let Some(item) = rd.next_item()? {
            check.item(&item);
            if check.failed() {
                break;
            }
        }
        check.finish(&rd, None)
    }
}
