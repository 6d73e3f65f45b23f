//! Checksum sidecars: `FILE.sums` next to a diff.
//!
//! A JSON document with the format version, the file length, a sha256 of the whole file, the
//! diff's from/to/size and CRC32s (crc32fast) with their byte offsets: one per record (head
//! and payload), or one per run of consecutive small records up to [`SEGMENT`] bytes, so that
//! the sidecar's size does not depend on how the records are cut (version 2; version 1
//! sidecars, one entry per record, are still read). The entries tile the file (banner,
//! metadata records, data records, `e`, trailing bytes), so every byte is covered by exactly
//! one CRC and a flipped byte is pinned to its record, or its run of records. The sidecar ends with `self_sha256`, a sha256 of the sidecar's own bytes
//! (taken with that value set to 64 zeros), so bit rot in the sidecar is caught too.
//! `clean: true` says that the walk that took the sums found the diff valid without a
//! warning: `verify` then takes a plain file whose bytes match the sidecar as valid without
//! walking it again (the sidecar is not signed: whoever can rewrite it can rewrite the
//! CRCs too).
//!
//! For a zstd-compressed file the sums cover the uncompressed diff stream (offsets, lengths,
//! CRCs and sha256 are those of the decompressed diff, so the same sidecar content describes
//! the diff compressed or not), plus a `compressed` section with the compressed file's
//! length and sha256. zstd's content checksums cover each frame: checking a `.zst` file
//! compares the compressed length and digest (any flipped byte, index and seek table
//! included), then decompresses it, where a damaged frame fails its zstd checksum and is
//! reported naming the frame and the record being read, and compares every record CRC.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::input::{Input, Kind};
use crate::output::AtomicFile;
use crate::positioned::{Positioned, READ_PIECE};
use crate::slice::DiffSlice;
use crate::stream::{ItemKind, RecordSource};
use crate::zst::{ZstArchive, ZstdReader};

/// `format` value of a sidecar.
pub const FORMAT: &str = "rbddiff-sums";
/// Current sidecar version: 2 sums runs of small records together ([`SEGMENT`]); version 1
/// sidecars (one entry per record) are still read.
pub const SUMS_VERSION: u32 = 2;
const SELF_KEY: &str = "\"self_sha256\": \"";
const ZERO_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One checksummed range of the file: one record, or a run of consecutive records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSum {
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes (heads and payloads).
    pub len: u64,
    /// Tag byte (of the first record) as a character (`B` for the banner, `-` for bytes
    /// after `e`).
    pub tag: char,
    /// CRC32 (IEEE) of the bytes.
    pub crc32: u32,
    /// Records in the range (absent: 1, as in version 1 sidecars).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// Consecutive records are summed together while their run is at most this long, so that a
/// sidecar costs at most one entry per 128 KiB of diff on average (two neighbouring entries
/// always hold more than this), whatever the record sizes: about 0.06 % of the diff.
pub const SEGMENT: u64 = 256 << 10;

/// True when a record (`tag`, `len` bytes) joins the run before it (`run_tag` of its first
/// record, `run_len` bytes): both are records (not the banner or trailing bytes) and the run
/// stays within [`SEGMENT`].
fn joins(run_tag: char, run_len: u64, tag: char, len: u64) -> bool {
    let plain = |t: char| t != 'B' && t != '-';
    plain(run_tag) && plain(tag) && run_len + len <= SEGMENT
}

/// The content of a `.sums` sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sums {
    /// Always [`FORMAT`].
    pub format: String,
    /// Sidecar version ([`SUMS_VERSION`]).
    pub version: u32,
    /// Diff version (`v1`/`v2`).
    pub diff_version: String,
    /// File length in bytes.
    pub file_len: u64,
    /// sha256 of the whole file (lowercase hex).
    pub sha256: String,
    /// Start snapshot.
    pub from: Option<String>,
    /// End snapshot.
    pub to: Option<String>,
    /// Image size.
    pub size: Option<u64>,
    /// Every record, in file order.
    pub records: Vec<RecordSum>,
    /// For a zstd-compressed file: the compressed file's own length and sha256. The other
    /// fields then describe the decompressed diff stream (offsets, lengths, CRCs, digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed: Option<CompressedSums>,
    /// The walk that took these sums found the diff valid, without a warning: bytes that
    /// match them need no walk of their own (absent in older sidecars: false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean: bool,
    /// sha256 of this document (see the module docs).
    pub self_sha256: String,
}

/// Length and digest of a compressed file (see [`Sums::compressed`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedSums {
    /// Compressed file length in bytes.
    pub file_len: u64,
    /// sha256 of the compressed file (lowercase hex).
    pub sha256: String,
}

/// The sidecar path of `file`: `FILE.sums`.
pub fn sums_path(file: &Path) -> PathBuf {
    crate::output::with_suffix(file, crate::output::SIDECAR_SUFFIX)
}

/// Computes the sums of a diff held in memory, in one walk over its records: memory is the
/// sidecar's (one entry per [`SEGMENT`] at most), not one per record.
///
/// # Errors
/// The diff is not structurally valid.
pub fn compute(bytes: &[u8]) -> Result<Sums> {
    compute_with_progress(bytes, &mut |_| {})
}

/// [`compute`], telling `progress` the bytes summed so far (by their CRCs, as the walk
/// reaches each run of records), never decreasing, last `bytes.len()`.
///
/// The whole-file sha256 (sequential by nature) is taken on a thread of its own while this
/// one walks the records and takes the CRCs, so that the two use two cores.
///
/// # Errors
/// As [`compute`].
pub fn compute_with_progress(bytes: &[u8], progress: &mut dyn FnMut(u64)) -> Result<Sums> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sha = scope.spawn(|| sha256_hex(bytes.into(), &stop).ok());
        let sums = compute_runs(bytes, progress);
        if sums.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let sha = sha
            .join()
            .map_err(|_| Error::invalid("the sha256 thread failed"))?;
        sums.map(|s| Sums {
            sha256: sha.unwrap_or_default(),
            ..s
        })
    })
}

/// The sha256 of all of `bytes` in lowercase hex, read in pieces, unless a read fails or
/// `stop` is set on the way.
fn sha256_hex(
    bytes: Positioned<'_>,
    stop: &std::sync::atomic::AtomicBool,
) -> std::io::Result<String> {
    let mut sha = Sha256::new();
    bytes.for_each(0, bytes.len(), &mut |piece| {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("stopped"));
        }
        sha.update(piece);
        Ok(())
    })?;
    Ok(hex(&sha.finalize()))
}

/// The sums of [`compute_with_progress`] without the sha256 (left empty).
fn compute_runs(bytes: &[u8], progress: &mut dyn FnMut(u64)) -> Result<Sums> {
    let d = DiffSlice::parse(bytes)?;
    let len = bytes.len() as u64;
    let mut records = Vec::new();
    // Bytes summed so far (for `progress`): the runs tile the file in order.
    let mut hashed = 0usize;
    // The run being summed, `(offset, tag of its first record, len, records)`, records
    // joined as [`joins`] says; each run's bytes are hashed once.
    let mut run: Option<(u64, char, u64, u64)> = None;
    let mut flush = |records: &mut Vec<RecordSum>, run: Option<(u64, char, u64, u64)>| {
        if let Some((offset, tag, len, count)) = run {
            let part = bytes.get(offset as usize..(offset + len) as usize);
            let end = usize::try_from(offset.saturating_add(len))
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            if end > hashed {
                hashed = end;
                progress(end as u64);
            }
            records.push(RecordSum {
                offset,
                len,
                tag,
                crc32: crc32fast::hash(part.unwrap_or_default()),
                count,
            });
        }
    };
    // The range `(offset, tag)` ending at `end`, joined to the run or starting the next one.
    let mut close = |records: &mut Vec<RecordSum>, (offset, tag): (u64, char), end: u64| {
        let len = end - offset;
        match &mut run {
            Some((_, t, l, n)) if joins(*t, *l, tag, len) => {
                *l += len;
                *n += 1;
            }
            _ => {
                flush(records, run.take());
                run = Some((offset, tag, len, 1));
            }
        }
    };
    // The banner, every record and the trailing bytes tile the file, in file order.
    let mut open = (0u64, 'B');
    for &(o, t) in d.metadata_records() {
        close(&mut records, open, o);
        open = (o, t as char);
    }
    let mut recs = d.records();
    loop {
        let off = recs.position();
        let tag = match recs.next_item()? {
            None => break,
            Some(item) => match item.kind {
                ItemKind::Write { .. } => 'w',
                ItemKind::Zero(_) => 'z',
                ItemKind::End => 'e',
                ItemKind::Unknown { tag, .. } => tag as char,
            },
        };
        close(&mut records, open, off);
        open = (off, tag);
    }
    let end = recs.position();
    if end < len {
        close(&mut records, open, end);
        open = (end, '-');
    }
    close(&mut records, open, len);
    flush(&mut records, run);
    if hashed < bytes.len() {
        progress(len);
    }
    let m = d.metadata();
    // Bytes after `e` are trailing bytes: not clean, whatever the walk said.
    let clean = recs.warnings().is_empty() && recs.more_warnings() == 0 && end == len;
    Ok(Sums {
        format: FORMAT.into(),
        version: SUMS_VERSION,
        diff_version: d.version().to_string(),
        file_len: len,
        sha256: String::new(),
        from: m.from_snap.as_ref().map(|_| m.from_name()),
        to: m.to_snap.as_ref().map(|_| m.to_name()),
        size: m.image_size,
        records,
        compressed: None,
        clean,
        self_sha256: ZERO_HEX.into(),
    })
}

/// CRCs of consecutive segments of a stream fed in arbitrary chunks, and its sha256.
struct Segments<'b> {
    /// Segment starts and tags; the first starts at 0.
    bounds: &'b [(u64, char)],
    i: usize,
    pos: u64,
    crc: crc32fast::Hasher,
    sha: Sha256,
    done: Vec<RecordSum>,
}

impl<'b> Segments<'b> {
    fn new(bounds: &'b [(u64, char)]) -> Self {
        Segments {
            bounds,
            i: 0,
            pos: 0,
            crc: crc32fast::Hasher::new(),
            sha: Sha256::new(),
            done: Vec::new(),
        }
    }

    fn close(&mut self) {
        if let Some(&(offset, tag)) = self.bounds.get(self.i) {
            let crc = std::mem::take(&mut self.crc).finalize();
            self.done.push(RecordSum {
                offset,
                len: self.pos.saturating_sub(offset),
                tag,
                crc32: crc,
                count: 1,
            });
            self.i += 1;
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        self.sha.update(data);
        while !data.is_empty() {
            let end = self.bounds.get(self.i + 1).map_or(u64::MAX, |b| b.0);
            let n = (data.len() as u64).min(end.saturating_sub(self.pos)) as usize;
            self.crc.update(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
            if self.pos == end {
                self.close();
            }
        }
    }

    /// Feeds all of `r`; stops at the first read error, returning it.
    fn feed_all(&mut self, mut r: impl Read) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the last segment; returns the segment sums and the sha256 (hex).
    fn finish(mut self) -> (Vec<RecordSum>, String) {
        if self.i + 1 == self.bounds.len() {
            self.close();
        }
        (self.done, hex(&self.sha.finalize()))
    }
}

/// Computes the sums of the diff stream of an indexed archive: record boundaries and CRCs
/// from the decompressed stream (every frame checksum is verified on the way), never from
/// the record index, which may not match the content. `compressed` is filled in from `raw`.
///
/// # Errors
/// The archive holds an image stream, the content is not a valid diff, or a frame is corrupt.
pub fn compute_archive<'r>(raw: impl Into<Positioned<'r>>, a: &ZstArchive<'_>) -> Result<Sums> {
    let raw = raw.into();
    if a.index().kind == Kind::Image {
        return Err(Error::invalid("sums are only kept for diffs"));
    }
    let mut s = copy_with_sums(ZstdReader::new(raw.reader(0))?, &mut std::io::sink())?;
    s.compressed = Some(compressed_sums(raw)?);
    Ok(s)
}

/// The sha256 of all of `raw`, read in pieces.
fn sha256_of(raw: Positioned<'_>) -> std::io::Result<String> {
    sha256_hex(raw, &std::sync::atomic::AtomicBool::new(false))
}

fn compressed_sums(raw: Positioned<'_>) -> Result<CompressedSums> {
    Ok(CompressedSums {
        file_len: raw.len(),
        sha256: sha256_of(raw)?,
    })
}

/// Computes the sums of an opened input: a plain diff as it is read once, an indexed archive through
/// [`compute_archive`], any other zstd file as it is decompressed.
///
/// # Errors
/// The input is not a regular file or not a valid diff, or decompression fails.
pub fn compute_input(input: Input) -> Result<Sums> {
    compute_input_with_progress(input, &mut |_| {})
}

/// [`compute_input`], telling `progress` the bytes of the file summed so far: as the file is
/// read for a plain diff, once at the end for a compressed one.
///
/// # Errors
/// As [`compute_input`].
pub fn compute_input_with_progress(input: Input, progress: &mut dyn FnMut(u64)) -> Result<Sums> {
    let name = input.name().to_string();
    if !input.is_compressed() {
        // Read once, forward, through a small buffer ([`copy_with_sums`] gives what
        // [`compute`] gives for the same bytes).
        let r = Progress {
            inner: input.into_reader(),
            done: 0,
            progress,
        };
        return copy_with_sums(r, &mut std::io::sink()).map_err(|e| e.with_file(&name));
    }
    let s = compute_compressed(input, &name)?;
    if let Some(c) = &s.compressed {
        progress(c.file_len);
    }
    Ok(s)
}

/// The sums of a compressed input (see [`compute_input`]).
fn compute_compressed(input: Input, name: &str) -> Result<Sums> {
    let raw = input
        .raw()
        .ok_or_else(|| Error::invalid("sums need a regular file").with_file(name))?;
    if let Some(a) = input.archive()? {
        return compute_archive(raw, &a).map_err(|e| e.with_file(name));
    }
    // A zstd file without a (usable) index is summed as it decompresses: nothing is
    // spilled.
    let compressed = compressed_sums(raw).map_err(|e| e.with_file(name))?;
    let mut s =
        copy_with_sums(input.into_reader(), &mut std::io::sink()).map_err(|e| e.with_file(name))?;
    s.compressed = Some(compressed);
    Ok(s)
}

/// A reader telling `progress` the bytes read through it so far.
struct Progress<'p, R> {
    inner: R,
    done: u64,
    progress: &'p mut dyn FnMut(u64),
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(self.done);
        Ok(n)
    }
}

/// Sums of a diff computed while its bytes stream past once (see [`copy_with_sums`]): bytes
/// are fed in order, record starts are told as the parser finds them. Bytes beyond the end of
/// the last record told are held until the next start is known (at most the parser's
/// read-ahead); a record's payload goes straight into its CRC.
struct StreamSums {
    sha: Sha256,
    /// Bytes fed so far.
    fed: u64,
    /// The open record: start, tag, end when known.
    open: (u64, char, Option<u64>),
    /// CRC of the open record over `open.0..crc_pos`.
    crc: crc32fast::Hasher,
    crc_pos: u64,
    /// Bytes `crc_pos..fed`, not yet assigned to a record: `held[held_lo..]` (bytes taken
    /// are dropped from the front only once they are most of the buffer, so that taking
    /// them record by record moves nothing).
    held: Vec<u8>,
    held_lo: usize,
    /// The run of closed records the open one may join (see [`joins`]):
    /// `(offset, tag, len, records)`, its CRC before the open record (`before`) and with the
    /// open record's bytes so far (`group`), so that joining costs no CRC combination.
    run: Option<(u64, char, u64, u64)>,
    before: crc32fast::Hasher,
    group: crc32fast::Hasher,
    done: Vec<RecordSum>,
}

impl StreamSums {
    fn new() -> Self {
        StreamSums {
            sha: Sha256::new(),
            fed: 0,
            open: (0, 'B', None),
            crc: crc32fast::Hasher::new(),
            crc_pos: 0,
            held: Vec::new(),
            held_lo: 0,
            run: None,
            before: crc32fast::Hasher::new(),
            group: crc32fast::Hasher::new(),
            done: Vec::new(),
        }
    }

    /// How many of the next bytes at `crc_pos` belong to the open record for sure.
    fn room(&self) -> u64 {
        self.open
            .2
            .map_or(0, |end| end.saturating_sub(self.crc_pos))
    }

    fn update(&mut self, mut data: &[u8]) {
        self.sha.update(data);
        self.fed += data.len() as u64;
        self.after_end();
        if self.held_lo == self.held.len() {
            let n = self.room().min(data.len() as u64) as usize;
            self.crc.update(&data[..n]);
            self.group.update(&data[..n]);
            self.crc_pos += n as u64;
            data = &data[n..];
        }
        if self.held_lo > 0 && self.held_lo * 2 >= self.held.len() {
            self.held.drain(..self.held_lo);
            self.held_lo = 0;
        }
        self.held.extend_from_slice(data);
    }

    /// Moves `n` held bytes into the open record's CRC.
    fn take_held(&mut self, n: usize) {
        let lo = self.held_lo;
        let n = n.min(self.held.len() - lo);
        self.crc.update(&self.held[lo..lo + n]);
        self.group.update(&self.held[lo..lo + n]);
        self.held_lo += n;
        if self.held_lo == self.held.len() {
            self.held.clear();
            self.held_lo = 0;
        }
        self.crc_pos += n as u64;
    }

    /// Ends the open record at `crc_pos`: it joins the run before, or the run is summed and
    /// the record starts the next.
    fn close(&mut self) {
        let (start, tag, _) = self.open;
        let len = self.crc_pos - start;
        let rec = std::mem::take(&mut self.crc);
        match &mut self.run {
            Some((_, t, l, n)) if joins(*t, *l, tag, len) => {
                *l += len;
                *n += 1;
            }
            _ => {
                let before = std::mem::replace(&mut self.before, crc32fast::Hasher::new());
                self.flush_run(before);
                self.run = Some((start, tag, len, 1));
                self.group = rec;
            }
        }
        self.before = self.group.clone();
    }

    /// Sums the run whose CRC is `crc`.
    fn flush_run(&mut self, crc: crc32fast::Hasher) {
        if let Some((offset, tag, len, count)) = self.run.take() {
            self.done.push(RecordSum {
                offset,
                len,
                tag,
                crc32: crc.finalize(),
                count,
            });
        }
    }

    /// Closes the open record where the next starts (`offset`) and opens that one.
    fn record(&mut self, offset: u64, tag: char, end: Option<u64>) {
        let n = offset.saturating_sub(self.crc_pos) as usize;
        self.take_held(n);
        self.close();
        self.open = (self.crc_pos, tag, end);
        let n = self.room() as usize;
        self.take_held(n);
        self.after_end();
    }

    /// Bytes after `e` are one trailing record (`-`) that runs to the end of the stream.
    fn after_end(&mut self) {
        if let (_, 'e', Some(end)) = self.open {
            if self.crc_pos == end && self.fed > end {
                self.record(end, '-', Some(u64::MAX));
            }
        }
    }

    /// Closes the last record.
    fn finish(mut self) -> (Vec<RecordSum>, String, u64) {
        let n = self.held.len() - self.held_lo;
        self.take_held(n);
        self.close();
        let group = std::mem::replace(&mut self.group, crc32fast::Hasher::new());
        self.flush_run(group);
        (self.done, hex(&self.sha.finalize()), self.fed)
    }
}

/// Feeds what is read through it to a [`StreamSums`] and copies it to `out`.
struct SumsTee<'a, R> {
    inner: R,
    out: &'a mut dyn Write,
    sums: &'a std::cell::RefCell<StreamSums>,
}

impl<R: Read> Read for SumsTee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        self.sums.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

/// Copies the diff `src` gives to `out` while parsing it, and returns its sums: the same as
/// [`compute`] gives for the bytes copied, without reading them again. Everything `src`
/// gives is copied (bytes after `e` are a `-` record, as in [`compute`]).
///
/// # Errors
/// The stream is not a valid diff (the error locates it in the stream), or I/O.
pub fn copy_with_sums(src: impl Read, out: &mut dyn Write) -> Result<Sums> {
    let sums = std::cell::RefCell::new(StreamSums::new());
    let mut tee = SumsTee {
        inner: src,
        out,
        sums: &sums,
    };
    let (version, meta, clean) = {
        let mut rd = crate::DiffReader::new(&mut tee)?;
        for &(offset, tag) in rd.metadata_records() {
            sums.borrow_mut().record(offset, tag as char, None);
        }
        loop {
            let (offset, tag) = match rd.next_item()? {
                None => break,
                Some(item) => (item.offset, item_tag(&item.kind)),
            };
            // Just past the record (its payload is still to be read).
            let end = rd.position();
            sums.borrow_mut().record(offset, tag, Some(end));
        }
        let clean = rd.warnings().is_empty() && rd.more_warnings() == 0;
        (rd.version(), rd.metadata().clone(), clean)
    };
    std::io::copy(&mut tee, &mut std::io::sink())?;
    let (records, sha256, len) = sums.into_inner().finish();
    let clean = clean && !records.iter().any(|r| r.tag == '-');
    Ok(Sums {
        format: FORMAT.into(),
        version: SUMS_VERSION,
        diff_version: version.to_string(),
        file_len: len,
        sha256,
        from: meta.from_snap.as_ref().map(|_| meta.from_name()),
        to: meta.to_snap.as_ref().map(|_| meta.to_name()),
        size: meta.image_size,
        records,
        compressed: None,
        clean,
        self_sha256: ZERO_HEX.into(),
    })
}

fn item_tag(kind: &ItemKind<'_>) -> char {
    match kind {
        ItemKind::Write { .. } => 'w',
        ItemKind::Zero(_) => 'z',
        ItemKind::End => 'e',
        ItemKind::Unknown { tag, .. } => *tag as char,
    }
}

/// A writer that passes everything on and digests it: the compressed side of the sums of an
/// archive being written (see [`Sums::compressed`]).
pub struct DigestWriter<W> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        DigestWriter {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }

    /// Length and sha256 of what was written.
    pub fn compressed_sums(self) -> CompressedSums {
        CompressedSums {
            file_len: self.len,
            sha256: hex(&self.sha.finalize()),
        }
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Lowercase hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Serializes sums with their self digest filled in.
pub fn encode(s: &Sums) -> Vec<u8> {
    let mut s = s.clone();
    s.self_sha256 = ZERO_HEX.into();
    let mut text = serde_json::to_vec_pretty(&s).unwrap_or_default();
    text.push(b'\n');
    if let Some(at) = find_self(&text) {
        let digest = hex(&Sha256::digest(&text));
        text[at..at + 64].copy_from_slice(digest.as_bytes());
    }
    text
}

fn find_self(text: &[u8]) -> Option<usize> {
    let key = SELF_KEY.as_bytes();
    let at = text.windows(key.len()).rposition(|w| w == key)? + key.len();
    (text.len() >= at + 64).then_some(at)
}

/// Parses a sidecar and checks its self digest.
///
/// # Errors
/// The sidecar is damaged (digest mismatch, not JSON, wrong format).
pub fn decode(text: &[u8]) -> Result<Sums> {
    let at =
        find_self(text).ok_or_else(|| Error::invalid("sums sidecar damaged: no self_sha256"))?;
    let mut copy = text.to_vec();
    copy[at..at + 64].copy_from_slice(ZERO_HEX.as_bytes());
    let want = hex(&Sha256::digest(&copy));
    if text[at..at + 64] != *want.as_bytes() {
        return Err(Error::invalid(
            "sums sidecar damaged: its own digest does not match its content",
        ));
    }
    let s: Sums = serde_json::from_slice(text)
        .map_err(|e| Error::invalid(format!("sums sidecar damaged: {e}")))?;
    if s.format != FORMAT || !(1..=SUMS_VERSION).contains(&s.version) {
        return Err(Error::invalid(format!(
            "not a supported sums sidecar ({} version {})",
            s.format, s.version
        )));
    }
    Ok(s)
}

/// Computes the sums of the diff at `path` (plain or zstd-compressed, see [`compute_input`])
/// and writes `PATH.sums` atomically. For merge, compress and apply to call after writing a
/// diff.
///
/// # Errors
/// The file cannot be read, is not a valid diff, or the sidecar cannot be written.
pub fn write_sums_for(path: &Path) -> Result<PathBuf> {
    write_sums_for_with_progress(path, &mut |_| {})
}

/// [`write_sums_for`], telling `progress` the bytes of the file summed so far (see
/// [`compute_input_with_progress`]).
///
/// # Errors
/// As [`write_sums_for`].
pub fn write_sums_for_with_progress(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<PathBuf> {
    let p = path.to_string_lossy();
    let s = compute_input_with_progress(Input::open(&p)?, progress)?;
    write_sums(path, &s)
}

/// Writes `sums` as the sidecar `PATH.sums` of `path`, atomically.
///
/// # Errors
/// The sidecar cannot be written.
pub fn write_sums(path: &Path, s: &Sums) -> Result<PathBuf> {
    let sp = sums_path(path);
    let mut f = AtomicFile::create_sidecar(&sp, path)?;
    f.file()
        .write_all(&encode(s))
        .map_err(|e| Error::from(e).with_file(&sp))?;
    f.commit()?;
    Ok(sp)
}

/// One mismatch between a file and its sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// Byte offset in the file of the damaged record (or of the length change).
    pub offset: u64,
    /// Record index as in errors (0 = first record after the banner; `None` for the
    /// banner, trailing bytes or a length change).
    pub record: Option<u64>,
    /// What differs.
    pub message: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.message)
    }
}

/// Largest sidecar accepted for a file whose (decompressed) diff stream is `len` bytes.
///
/// A diff record is at least 5 bytes (a v1 `f` of an empty name; only `e` and the bytes
/// after it can be shorter, once each), and one record takes at most about 130 bytes of the
/// pretty-printed sidecar; with the snapshot names (4096 bytes each, escaped) this gives
/// 1 MiB plus 32 bytes per byte of the stream. The cap is checked before the sidecar is read.
pub fn max_sidecar_len(len: u64) -> u64 {
    len.saturating_mul(32).saturating_add(1 << 20)
}

/// Sidecar cap for a compressed file whose decompressed length is not known before it is
/// decompressed (a zstd file without a seek table; rbddiff's own archives have one).
pub const MAX_SIDECAR_UNINDEXED: u64 = 256 << 20;

/// Reads `PATH.sums` (a regular file, not through a symbolic link, at most `max` bytes) and
/// checks that its records tile the file it describes.
fn load(path: &Path, max: u64) -> Result<Sums> {
    let sp = sums_path(path);
    let text = crate::smallfile::read_small(&sp, max)?.ok_or_else(|| {
        Error::from(std::io::Error::from(std::io::ErrorKind::NotFound)).with_file(&sp)
    })?;
    let s = decode(&text).map_err(|e| e.with_file(&sp))?;
    let mut expect = 0u64;
    for r in &s.records {
        if r.offset != expect {
            return Err(
                Error::invalid("sums sidecar damaged: records do not tile the file").with_file(&sp),
            );
        }
        expect = r.offset.saturating_add(r.len);
    }
    if expect != s.file_len {
        return Err(
            Error::invalid("sums sidecar damaged: records do not cover the file").with_file(&sp),
        );
    }
    Ok(s)
}

fn what(r: &RecordSum) -> String {
    match r.tag {
        'B' => "banner".to_string(),
        '-' => "trailing bytes".to_string(),
        t => format!("'{t}' record"),
    }
}

/// The index (as in errors) of the first record of each entry of a sidecar: the banner is
/// not counted.
fn first_records(recs: &[RecordSum]) -> Vec<u64> {
    let mut n = 0u64;
    recs.iter()
        .map(|r| {
            let first = n;
            n = n.saturating_add(r.count.max(1));
            first
        })
        .collect()
}

/// The record index of an entry whose records start at `first` (see [`first_records`]).
/// `None` for the banner, trailing bytes, or a sidecar that lies about its first entry.
fn record_of(first: u64, r: &RecordSum) -> Option<u64> {
    match r.tag {
        'B' | '-' => None,
        _ => first.checked_sub(1),
    }
}

fn crc_mismatch(first: u64, r: &RecordSum) -> Mismatch {
    let record = record_of(first, r);
    let what = match (record, r.count) {
        (Some(a), n) if n > 1 => format!("records {a} to {}", a + n - 1),
        _ => what(r),
    };
    Mismatch {
        offset: r.offset,
        record,
        message: format!(
            "checksum mismatch in {what} ({} bytes at byte {})",
            r.len, r.offset
        ),
    }
}

fn len_mismatch(len: u64, recorded: u64) -> Mismatch {
    Mismatch {
        offset: len.min(recorded),
        record: None,
        message: format!("file is {len} bytes, the sidecar recorded {recorded} bytes"),
    }
}

/// Checks `bytes` (the content of `path`, in memory or read at offsets) against `PATH.sums`:
/// file length and every record CRC (the whole-file sha256 too when `digest`). Returns the
/// mismatches (empty = all good).
///
/// # Errors
/// The sidecar is missing, unreadable, damaged, a symbolic link, not a regular file or
/// larger than [`max_sidecar_len`] of the file.
pub fn check_sums_with<'a>(
    path: &Path,
    bytes: impl Into<Positioned<'a>>,
    digest: bool,
) -> Result<Vec<Mismatch>> {
    let bytes = bytes.into();
    let s = load(path, max_sidecar_len(bytes.len()))?;
    check_against(&s, bytes, digest)
}

/// The sidecar of `path` (a plain diff of `len` bytes) when it was taken from a clean walk
/// ([`Sums::clean`]) and names its snapshots as they are (UTF-8): bytes that match it are
/// the bytes that walk found valid. `None` for any other sidecar, or none.
pub fn clean_sums(path: &Path, len: u64) -> Option<Sums> {
    let s = load(path, max_sidecar_len(len)).ok()?;
    let plain = |n: &Option<String>| n.as_ref().is_none_or(|n| !n.contains('\u{fffd}'));
    (s.clean && s.compressed.is_none() && plain(&s.from) && plain(&s.to)).then_some(s)
}

/// [`check_sums_with`] against the sums `s` already read.
///
/// # Errors
/// A checksum thread fails.
pub fn check_against(s: &Sums, bytes: Positioned<'_>, digest: bool) -> Result<Vec<Mismatch>> {
    let len = bytes.len();
    let mut out = Vec::new();
    if len != s.file_len {
        out.push(len_mismatch(len, s.file_len));
    }
    // The records are checked by as many threads as there are cores (in record order).
    let firsts = first_records(&s.records);
    // A record's CRC, `None` when its bytes are not all there.
    let crc = |r: &RecordSum, scratch: &mut Vec<u8>| -> Option<u32> {
        if r.len <= READ_PIECE as u64 {
            let part = bytes.get(r.offset, r.len as usize, scratch).ok()?;
            return Some(crc32fast::hash(part));
        }
        let mut h = crc32fast::Hasher::new();
        bytes
            .for_each(r.offset, r.len, &mut |b| {
                h.update(b);
                Ok(())
            })
            .ok()?;
        Some(h.finalize())
    };
    let bad = |i: usize, r: &RecordSum, scratch: &mut Vec<u8>| {
        (crc(r, scratch) != Some(r.crc32)).then(|| crc_mismatch(firsts[i], r))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = s.records.len().div_ceil(threads).max(1);
    // The whole-file sha256, when asked for, runs beside the CRC threads (it is sequential).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (found, sha) = std::thread::scope(|scope| {
        let sha = digest.then(|| scope.spawn(|| sha256_hex(bytes, &stop).ok()));
        let workers: Vec<_> = s
            .records
            .chunks(chunk)
            .enumerate()
            .map(|(k, recs)| {
                scope.spawn(move || {
                    let mut scratch = Vec::new();
                    recs.iter()
                        .enumerate()
                        .filter_map(|(j, r)| bad(k * chunk + j, r, &mut scratch))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let failed = || Error::invalid("a checksum thread failed");
        let found = workers
            .into_iter()
            .map(|w| w.join().map_err(|_| failed()))
            .collect::<Result<Vec<_>>>();
        // The digest only matters when every CRC matched.
        if !matches!(&found, Ok(f) if f.iter().all(Vec::is_empty)) || !out.is_empty() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let sha = sha.map(|t| t.join().map_err(|_| failed())).transpose();
        Ok::<_, Error>((found?, sha?))
    })?;
    out.extend(found.into_iter().flatten());
    if out.is_empty() && sha.is_some_and(|h| h.as_ref() != Some(&s.sha256)) {
        out.push(Mismatch {
            offset: 0,
            record: None,
            message: "whole-file sha256 differs from the sidecar".into(),
        });
    }
    Ok(out)
}

/// Checks a zstd-compressed file (`raw`, the content of `path`) against `PATH.sums`: the
/// compressed file's length and sha256 when the sidecar has them (any flipped byte,
/// including in the index or seek table), then the decompressed stream's length and every
/// record CRC (and its sha256 when `digest`). A frame that fails to decompress (zstd's own
/// content checksum) is reported as a mismatch naming the frame and the record being read;
/// records after it are not checked.
///
/// A sidecar written for the uncompressed diff checks its compressed form too.
///
/// # Errors
/// The sidecar is missing, unreadable or damaged.
pub fn check_sums_compressed<'a>(
    path: &Path,
    raw: impl Into<Positioned<'a>>,
    digest: bool,
) -> Result<Vec<Mismatch>> {
    let raw = raw.into();
    // The seek table gives the decompressed length (a lie is caught when decompressing).
    let max = match crate::zst::seek_table(raw) {
        Ok(Some((frames, _))) => max_sidecar_len(frames.iter().map(|f| u64::from(f.d_len)).sum()),
        _ => MAX_SIDECAR_UNINDEXED,
    };
    let s = load(path, max)?;
    let mut out = Vec::new();
    if let Some(c) = &s.compressed {
        let len = raw.len();
        if len != c.file_len {
            out.push(Mismatch {
                message: format!(
                    "compressed file is {len} bytes, the sidecar recorded {} bytes",
                    c.file_len
                ),
                ..len_mismatch(len, c.file_len)
            });
        } else if sha256_of(raw).ok().as_ref() != Some(&c.sha256) {
            out.push(Mismatch {
                offset: 0,
                record: None,
                message: "compressed file's sha256 differs from the sidecar".into(),
            });
        }
    }
    let bounds: Vec<(u64, char)> = s.records.iter().map(|r| (r.offset, r.tag)).collect();
    let mut seg = Segments::new(&bounds);
    let read = ZstdReader::new(raw.reader(0)).and_then(|z| Ok(seg.feed_all(z)?));
    let (len, failed_at) = (seg.pos, seg.i);
    let (got, sha) = match read {
        Ok(()) => seg.finish(),
        Err(_) => (seg.done, String::new()),
    };
    let firsts = first_records(&s.records);
    for (i, (r, g)) in s.records.iter().zip(&got).enumerate() {
        if g.len != r.len || g.crc32 != r.crc32 {
            out.push(crc_mismatch(firsts[i], r));
        }
    }
    if let Err(e) = read {
        let i = failed_at.min(s.records.len().saturating_sub(1));
        let r = s.records.get(i);
        out.push(Mismatch {
            offset: len,
            record: r.and_then(|r| record_of(firsts.get(i).copied().unwrap_or(0), r)),
            message: format!(
                "cannot decompress{}: {}",
                r.map(|r| format!(" {} at diff stream byte {}", what(r), r.offset))
                    .unwrap_or_default(),
                e.kind()
            ),
        });
        return Ok(out);
    }
    if len != s.file_len {
        out.push(Mismatch {
            message: format!(
                "decompressed stream is {len} bytes, the sidecar recorded {} bytes",
                s.file_len
            ),
            ..len_mismatch(len, s.file_len)
        });
    }
    if digest && out.is_empty() && sha != s.sha256 {
        out.push(Mismatch {
            offset: 0,
            record: None,
            message: "sha256 of the decompressed stream differs from the sidecar".into(),
        });
    }
    Ok(out)
}

/// [`check_sums_with`] without the whole-file sha256 (the CRCs cover every byte).
///
/// # Errors
/// As [`check_sums_with`].
pub fn check_sums<'a>(path: &Path, bytes: impl Into<Positioned<'a>>) -> Result<Vec<Mismatch>> {
    check_sums_with(path, bytes, false)
}

/// True when something is at `PATH.sums` (a symbolic link too, even a dangling one: it is
/// then reported when checked, not taken as a missing sidecar).
pub fn has_sums(path: &Path) -> bool {
    sums_path(path).symlink_metadata().is_ok()
}
