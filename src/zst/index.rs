//! The record index of an archive: its formats, its writer and its reader.
//!
//! Version 3 (written today) keeps memory bounded on both sides. The index body holds, after
//! the magic and the stream length, a small zstd-compressed header (the image header, each
//! diff's header and record count, and one entry per data frame: the compressed length of
//! its block and how many records it holds), then one *block* per data frame: the records
//! whose head starts in that frame, delta-coded as varints and compressed as one zstd frame
//! of its own (a frame with no record head has an empty block), then a CRC-32 of the body.
//!
//! - Writing ([`IndexWriter`]): records are coded into the current block as they are walked;
//!   a finished block is compressed as a stream and kept in memory up to [`SPILL_AT`] bytes,
//!   then in an unlinked temporary file, copied after the data frames at the end. Memory:
//!   about 24 bytes per data frame for the block table, plus fixed buffers.
//! - Reading ([`IndexRecords`]): an open archive keeps the header and about 16 bytes per
//!   data frame (where each block starts, how many records come before it); a cursor decodes
//!   one block at a time as a stream (a zstd window of at most 1 MiB and a 64 KiB buffer), so
//!   walking a diff of any number of records costs the same memory.
//!
//! A record's frame is the frame of its block and its offset in that frame follows from its
//! position, so a record costs its tag, its position relative to where the record before ends,
//! its image offset relative to the end of the extent before and its length: about a byte per
//! record or less for record-dense diffs once compressed.
//!
//! Version 4 is version 3 where a block may be *left out*: when it would cost more than 1/64
//! of its data frame's compressed bytes (and at least 512 bytes), and the frame was
//! compressed with a window of 2^[`HEADS_WINDOW_LOG`] bytes (as `compress` does for frames
//! whose payloads are under 64 times their heads). Such a frame holds little but record
//! heads, which zstd compresses there as well as the block would, so keeping both would store
//! them twice (heads at random offsets and lengths made archives 1.85× `zstd`'s size). Its
//! table entry then says where the block's first record starts in the frame, and a cursor
//! reads the records from the heads there, decompressing the frame as a stream (a decoder of
//! that 256 KiB window while it is in such a block; a larger window is refused). A block is
//! left out only when its records follow each other with nothing between them and none after
//! an `e`. An archive with no block left out is written in version 3.
//!
//! Versions 1 (fixed-width records, 33 bytes each) and 2 (the whole index delta-coded as one
//! zstd stream) are still read; their records are decoded into memory when the archive is
//! opened (about 40 bytes per record: compressing such an archive again writes version 3).

use std::io::{self, Read, Seek, Write};

use zstd::stream::raw::{CParameter, DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

use super::{bad_archive, FrameEntry};
use crate::error::{Error, Result, Warning, WarningKind};
use crate::format::{tag, ImageHeader, Kind, Metadata, Version};
use crate::positioned::Positioned;

/// Magic at the start of a version 1 record index body (fixed-width records, 33 bytes each;
/// still read).
const INDEX_MAGIC: &[u8; 8] = b"RBDZIDX1";
/// Magic at the start of a version 2 record index body: the content of version 1 with each
/// record delta-coded, the whole compressed with zstd (still read).
const INDEX_MAGIC_V2: &[u8; 8] = b"RBDZIDX2";
/// Magic at the start of a version 3 record index body: one block of records per data frame
/// (see the module docs).
const INDEX_MAGIC_V3: &[u8; 8] = b"RBDZIDX3";
/// Magic at the start of a version 4 record index body: version 3 where a block may be left
/// out, its records then read from the heads in its data frame (see the module docs).
const INDEX_MAGIC_V4: &[u8; 8] = b"RBDZIDX4";
/// A block is left out when it would cost more than 1/`ELIDE_RATIO` of its data frame's
/// compressed bytes: the frame then holds little but heads (small `z` or `w` records), which
/// the frame already compresses as well as the block would.
const ELIDE_RATIO: u64 = 64;
/// Blocks shorter than this are always kept: what leaving them out saves is less than the
/// archive's own overhead, and `inspect` of a small archive reads its index alone.
const ELIDE_MIN: u64 = 512;
/// zstd window (log2) of a data frame that holds mostly heads: only such a frame's block is
/// left out, and a reader walking its heads holds a decoder of this window (256 KiB) and
/// accepts no larger one.
pub const HEADS_WINDOW_LOG: u32 = 18;
/// The reader's buffer of a data frame's compressed bytes when it reads the frame's heads.
const FRAME_READ_BUF: usize = 64 << 10;
/// zstd level of the index header and blocks.
const INDEX_LEVEL: i32 = 9;
/// zstd window of an index block (log2): a reader's window is at most this. A merge keeps
/// two cursors per archive open, each with a streaming decoder whose buffers are sized by
/// the window: 32 KiB windows cost about a third of what 128 KiB cost (520 KiB a cursor),
/// for about 0.1 % more index bytes on record-dense archives.
const BLOCK_WINDOW_LOG: u32 = 15;
/// Largest window (log2) a reader accepts in an index block.
const BLOCK_WINDOW_LOG_MAX: u32 = 20;
/// Bytes of compressed blocks the writer keeps in memory before it spills them to a
/// temporary file.
pub const SPILL_AT: usize = 1 << 20;
/// Coded records the writer buffers before it feeds them to the block's compressor, and
/// the reader's buffer of decoded block bytes.
const BLOCK_BUF: usize = 64 << 10;
/// The reader's buffers of a block's compressed and decoded bytes (a merge of many archives
/// keeps a cursor or two per archive open).
const READ_BUF: usize = 16 << 10;
/// Most bytes one coded record takes (tag and three varints).
const MAX_RECORD: usize = 31;

/// One record in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    /// Byte offset of the record (its tag) in the diff stream.
    pub pos: u64,
    /// Tag byte (`w`, `z`, `e` or an unknown v2 tag).
    pub tag: u8,
    /// Image offset (`w`, `z`; 0 otherwise).
    pub offset: u64,
    /// Extent length (`w`, `z`), body length (unknown tags), 0 for `e`.
    pub len: u64,
    /// Frame holding the record's first byte.
    pub frame: u32,
    /// Offset of the record in that frame.
    pub frame_offset: u32,
}

/// One diff of an archive, as indexed (its header; its records come from [`IndexRecords`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedDiff {
    /// Offset of the banner in the diff stream.
    pub start: u64,
    /// Diff version.
    pub version: Version,
    /// Snapshot names, protection flag, image size.
    pub metadata: Metadata,
    /// Offset and tag of each metadata record.
    pub metadata_records: Vec<(u64, u8)>,
    /// Warnings found when the archive was written.
    pub warnings: Vec<Warning>,
    /// Number of records after the banner (`e` included).
    pub record_count: u64,
    /// Offset just past `e`.
    pub end: u64,
    /// Number of records in the index (data records, unknown records and `e`).
    pub indexed: u64,
}

impl IndexedDiff {
    /// Offset in the diff stream of the payload of a `w` record (or unknown record body).
    pub fn payload_pos(&self, r: &IndexRecord) -> u64 {
        match self.version {
            Version::V1 => r.pos + 17,
            Version::V2 => {
                if r.tag == tag::WRITE {
                    r.pos + 25
                } else {
                    r.pos + 9
                }
            }
        }
    }

    /// Number of the first indexed record among the diff's records (0 = first after the
    /// banner).
    pub fn first_indexed(&self) -> u64 {
        self.record_count.saturating_sub(self.indexed)
    }
}

/// The header of an archive's record index: what it holds besides the records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveIndex {
    /// Length of the decompressed stream.
    pub total_len: u64,
    /// What the decompressed stream is (`DiffV1`, `DiffV2` or `Image`).
    pub kind: Kind,
    /// Image header and its warnings (image streams).
    pub image: Option<(ImageHeader, Vec<Warning>)>,
    /// The diff (or each embedded diff).
    pub diffs: Vec<IndexedDiff>,
}

/// A whole record index decoded into memory (its records cost about 40 bytes each): for
/// tests and tools that rewrite an index; readers walk the records with [`IndexRecords`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedIndex {
    /// The header.
    pub index: ArchiveIndex,
    /// The records of each diff, in order (`indexed` of each diff is their number).
    pub records: Vec<Vec<IndexRecord>>,
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn var(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    /// A signed difference (wrapping), zigzag-coded.
    fn zz(&mut self, d: u64) {
        let d = d as i64;
        self.var(((d << 1) ^ (d >> 63)) as u64);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.bytes(v);
            }
            None => self.u8(0),
        }
    }
    fn warnings(&mut self, ws: &[Warning]) {
        self.u32(ws.len() as u32);
        for w in ws {
            self.u64(w.offset);
            self.opt_u64(w.record);
            match &w.kind {
                WarningKind::DuplicateMetadata { tag } => {
                    self.u8(0);
                    self.u32(u32::from(*tag));
                }
                WarningKind::LengthMismatch {
                    tag,
                    declared,
                    expected,
                } => {
                    self.u8(1);
                    self.u32(u32::from(*tag));
                    self.u64(*declared);
                    self.u64(*expected);
                }
                WarningKind::UnknownTagSkipped { tag, len } => {
                    self.u8(2);
                    self.u8(*tag);
                    self.u64(*len);
                }
                WarningKind::TrailingBytes { len } => {
                    self.u8(3);
                    self.u64(*len);
                }
                WarningKind::MetaNotKept { pairs, bytes } => {
                    self.u8(4);
                    self.u64(*pairs);
                    self.u64(*bytes);
                }
            }
        }
    }
}

struct Dec<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn err(&self) -> Error {
        bad_archive(format!(
            "record index ends early or is malformed at index byte {}",
            self.pos
        ))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| self.err())?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn flag(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err()),
        }
    }
    fn opt_u64(&mut self) -> Result<Option<u64>> {
        Ok(if self.flag()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(if self.flag()? {
            Some(self.bytes()?)
        } else {
            None
        })
    }
    /// A count of items of at least `min` bytes each, checked against what is left.
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.b.len() - self.pos {
            return Err(self.err());
        }
        Ok(n)
    }
    fn count64(&mut self, min: usize) -> Result<usize> {
        let n = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
        if n.saturating_mul(min) > self.b.len() - self.pos {
            return Err(self.err());
        }
        Ok(n)
    }
    fn var(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err())
    }
    fn zz(&mut self) -> Result<u64> {
        let v = self.var()?;
        Ok(((v >> 1) as i64 ^ -((v & 1) as i64)) as u64)
    }
    fn ch(&mut self) -> Result<char> {
        char::from_u32(self.u32()?).ok_or_else(|| self.err())
    }
    fn warnings(&mut self) -> Result<Vec<Warning>> {
        let n = self.count(10)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let offset = self.u64()?;
            let record = self.opt_u64()?;
            let kind = match self.u8()? {
                0 => WarningKind::DuplicateMetadata { tag: self.ch()? },
                1 => WarningKind::LengthMismatch {
                    tag: self.ch()?,
                    declared: self.u64()?,
                    expected: self.u64()?,
                },
                2 => WarningKind::UnknownTagSkipped {
                    tag: self.u8()?,
                    len: self.u64()?,
                },
                3 => WarningKind::TrailingBytes { len: self.u64()? },
                4 => WarningKind::MetaNotKept {
                    pairs: self.u64()?,
                    bytes: self.u64()?,
                },
                _ => return Err(self.err()),
            };
            v.push(Warning {
                offset,
                record,
                kind,
            });
        }
        Ok(v)
    }
}

/// How the records of a version of the index are coded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Coding {
    /// Version 1: fixed-width records after each diff's header.
    Fixed,
    /// Version 2: delta-coded records after each diff's header.
    Delta,
    /// Version 3: only each diff's record count (the records are in the blocks).
    Blocks,
}

/// Where the record after `r` starts when nothing lies between them in a version 2 index
/// (the delta base of its positions).
fn next_pos_v2(version: Version, r: &IndexRecord) -> u64 {
    let head: u64 = match (version, r.tag) {
        (_, tag::END) => 1,
        (Version::V1, _) => 17,
        (Version::V2, tag::WRITE | tag::ZERO) => 25,
        (Version::V2, _) => 9,
    };
    let body = match r.tag {
        tag::ZERO | tag::END => 0,
        _ => r.len,
    };
    r.pos.wrapping_add(head).wrapping_add(body)
}

/// The delta base of positions in a version 3 block: where the record after one at `pos`
/// starts in a v1 diff when nothing lies between them (in a v2 diff, 8 bytes later: the
/// delta is then 8, which costs as little).
fn next_pos(tag_byte: u8, pos: u64, len: u64) -> u64 {
    let (head, body) = match tag_byte {
        tag::END => (1, 0),
        tag::ZERO => (17, 0),
        _ => (17, len),
    };
    pos.wrapping_add(head).wrapping_add(body)
}

/// The index content after the magic (without the checksum): the stream's header, then each
/// diff's header followed by its records (`Fixed`, `Delta`) or its record count (`Blocks`).
fn encode_content(idx: &ArchiveIndex, records: &[Vec<IndexRecord>], coding: Coding) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(256));
    e.u64(idx.total_len);
    e.u8(match idx.kind {
        Kind::DiffV1 => 1,
        Kind::DiffV2 => 2,
        _ => 3,
    });
    match &idx.image {
        Some((h, w)) => {
            e.u8(1);
            e.opt_u64(h.order);
            e.opt_u64(h.features);
            e.opt_u64(h.stripe_unit);
            e.opt_u64(h.stripe_count);
            e.u32(h.meta.len() as u32);
            for (k, v) in &h.meta {
                e.bytes(k);
                e.bytes(v);
            }
            e.u64(h.diff_count);
            e.warnings(w);
        }
        None => e.u8(0),
    }
    e.u32(idx.diffs.len() as u32);
    for (i, d) in idx.diffs.iter().enumerate() {
        e.u64(d.start);
        e.u8(match d.version {
            Version::V1 => 1,
            Version::V2 => 2,
        });
        let m = &d.metadata;
        e.opt_bytes(m.from_snap.as_deref());
        e.opt_bytes(m.to_snap.as_deref());
        e.opt_u64(m.protected.map(u64::from));
        e.opt_u64(m.image_size);
        e.u32(d.metadata_records.len() as u32);
        for &(pos, tag) in &d.metadata_records {
            e.u64(pos);
            e.u8(tag);
        }
        e.warnings(&d.warnings);
        e.u64(d.record_count);
        e.u64(d.end);
        if coding == Coding::Blocks {
            e.u64(d.indexed);
            continue;
        }
        let recs = records.get(i).map_or(&[][..], |r| &r[..]);
        e.u64(recs.len() as u64);
        let mut prev: Option<&IndexRecord> = None;
        let mut prev_end = 0u64;
        for r in recs {
            if coding == Coding::Fixed {
                e.u64(r.pos);
                e.u8(r.tag);
                e.u64(r.offset);
                e.u64(r.len);
                e.u32(r.frame);
                e.u32(r.frame_offset);
                continue;
            }
            let (at, frame, in_frame) = match prev {
                Some(p) => (
                    next_pos_v2(d.version, p),
                    p.frame,
                    p.frame_offset
                        .wrapping_add(r.pos.wrapping_sub(p.pos) as u32),
                ),
                None => (d.start, 0, 0),
            };
            e.u8(r.tag);
            e.zz(r.pos.wrapping_sub(at));
            e.zz(r.offset.wrapping_sub(prev_end));
            e.var(r.len);
            let explicit = prev.is_none() || r.frame != frame || r.frame_offset != in_frame;
            let fd = u64::from(r.frame.wrapping_sub(frame));
            e.var(fd << 1 | u64::from(explicit));
            if explicit {
                e.var(u64::from(r.frame_offset));
            }
            if matches!(r.tag, tag::WRITE | tag::ZERO) {
                prev_end = r.offset.wrapping_add(r.len);
            }
            prev = Some(r);
        }
    }
    e.0
}

/// Decodes what [`encode_content`] wrote, leaving `d` after it.
fn decode_content(d: &mut Dec<'_>, coding: Coding) -> Result<DecodedIndex> {
    let total_len = d.u64()?;
    let kind = match d.u8()? {
        1 => Kind::DiffV1,
        2 => Kind::DiffV2,
        3 => Kind::Image,
        _ => return Err(d.err()),
    };
    let image = if d.flag()? {
        let mut h = ImageHeader {
            order: d.opt_u64()?,
            features: d.opt_u64()?,
            stripe_unit: d.opt_u64()?,
            stripe_count: d.opt_u64()?,
            ..Default::default()
        };
        let n = d.count(8)?;
        for _ in 0..n {
            let k = d.bytes()?;
            let v = d.bytes()?;
            h.meta.push((k, v));
        }
        h.diff_count = d.u64()?;
        let w = d.warnings()?;
        Some((h, w))
    } else {
        None
    };
    let nd = d.count(40)?;
    let mut diffs = Vec::with_capacity(nd);
    let mut all = Vec::new();
    for _ in 0..nd {
        let start = d.u64()?;
        let version = match d.u8()? {
            1 => Version::V1,
            2 => Version::V2,
            _ => return Err(d.err()),
        };
        let metadata = Metadata {
            from_snap: d.opt_bytes()?,
            to_snap: d.opt_bytes()?,
            protected: d.opt_u64()?.map(|p| p != 0),
            image_size: d.opt_u64()?,
        };
        let nm = d.count(9)?;
        let mut metadata_records = Vec::with_capacity(nm);
        for _ in 0..nm {
            metadata_records.push((d.u64()?, d.u8()?));
        }
        let warnings = d.warnings()?;
        let record_count = d.u64()?;
        let end = d.u64()?;
        let (indexed, records) = match coding {
            Coding::Blocks => (d.u64()?, Vec::new()),
            _ => {
                let r = decode_records(d, version, start, coding)?;
                (r.len() as u64, r)
            }
        };
        all.push(records);
        diffs.push(IndexedDiff {
            start,
            version,
            metadata,
            metadata_records,
            warnings,
            record_count,
            end,
            indexed,
        });
    }
    Ok(DecodedIndex {
        index: ArchiveIndex {
            total_len,
            kind,
            image,
            diffs,
        },
        records: all,
    })
}

/// The records of one diff of a version 1 or 2 index.
fn decode_records(
    d: &mut Dec<'_>,
    version: Version,
    start: u64,
    coding: Coding,
) -> Result<Vec<IndexRecord>> {
    let nr = d.count64(if coding == Coding::Delta { 5 } else { 33 })?;
    let mut records: Vec<IndexRecord> = Vec::with_capacity(nr);
    let mut prev_end = 0u64;
    for _ in 0..nr {
        if coding == Coding::Fixed {
            records.push(IndexRecord {
                pos: d.u64()?,
                tag: d.u8()?,
                offset: d.u64()?,
                len: d.u64()?,
                frame: d.u32()?,
                frame_offset: d.u32()?,
            });
            continue;
        }
        let (at, frame, base) = match records.last() {
            Some(p) => (
                next_pos_v2(version, p),
                p.frame,
                Some((p.pos, p.frame_offset)),
            ),
            None => (start, 0, None),
        };
        let tag_byte = d.u8()?;
        let pos = at.wrapping_add(d.zz()?);
        let offset = prev_end.wrapping_add(d.zz()?);
        let len = d.var()?;
        let f = d.var()?;
        let frame = frame.wrapping_add(u32::try_from(f >> 1).map_err(|_| d.err())?);
        let frame_offset = match (f & 1, base) {
            (0, Some((ppos, pfo))) => pfo.wrapping_add(pos.wrapping_sub(ppos) as u32),
            (0, None) => return Err(d.err()),
            _ => u32::try_from(d.var()?).map_err(|_| d.err())?,
        };
        if matches!(tag_byte, tag::WRITE | tag::ZERO) {
            prev_end = offset.wrapping_add(len);
        }
        records.push(IndexRecord {
            pos,
            tag: tag_byte,
            offset,
            len,
            frame,
            frame_offset,
        });
    }
    Ok(records)
}

/// Checks the magic and checksum of an index body; returns its version (1, 2 or 3) and the
/// body without its checksum.
fn check_body(body: &[u8]) -> Result<(u8, &[u8])> {
    let version = [INDEX_MAGIC, INDEX_MAGIC_V2, INDEX_MAGIC_V3, INDEX_MAGIC_V4]
        .iter()
        .position(|m| body.starts_with(&m[..]))
        .filter(|_| body.len() >= INDEX_MAGIC.len() + 4)
        .ok_or_else(|| bad_archive("record index has a wrong magic"))?;
    let (data, crc) = body.split_at(body.len() - 4);
    if crc32fast::hash(data).to_le_bytes() != crc {
        return Err(bad_archive("record index checksum mismatch"));
    }
    Ok((version as u8 + 1, data))
}

/// zstd-decompresses `src`, claimed to hold `claimed` bytes, into a buffer that grows with
/// what really comes out (the claimed length is never allocated up front).
fn inflate(src: &[u8], claimed: u64, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::with_buffer(src)
        .and_then(|dec| dec.take(claimed.saturating_add(1)).read_to_end(&mut out))
        .map_err(|e| bad_archive(format!("{what} does not decompress: {e}")))?;
    if out.len() as u64 != claimed {
        return Err(bad_archive(format!("{what} is not as long as it says")));
    }
    Ok(out)
}

/// The block table of a version 3 index.
#[derive(Clone, Debug, Default)]
pub(crate) struct Blocks {
    /// Offset of the first block in the bytes the index is read from.
    at: usize,
    /// For each block: where it ends (relative to `at`) and how many records come before
    /// its end (cumulative).
    ends: Vec<(u64, u64)>,
    /// Version 4, for each block: 0 when it is written, else 1 + the offset in its data frame
    /// of its first record's head (the records are read from the frame). Empty in version 3.
    heads: Vec<u32>,
}

impl Blocks {
    /// Compressed byte range (absolute) and record range of block `b`.
    fn block(&self, b: usize) -> Option<(usize, usize, u64, u64)> {
        let &(c_end, r_end) = self.ends.get(b)?;
        let (c_start, r_start) = b
            .checked_sub(1)
            .and_then(|p| self.ends.get(p).copied())
            .unwrap_or((0, 0));
        let abs = |c: u64| usize::try_from(c).ok()?.checked_add(self.at);
        Some((abs(c_start)?, abs(c_end)?, r_start, r_end))
    }

    /// Where block `b`'s records start in its data frame when the block is left out.
    fn heads_at(&self, b: usize) -> Option<u32> {
        self.heads.get(b).and_then(|&h| h.checked_sub(1))
    }
}

/// Where the records of an index are: in version 3 blocks, or decoded (versions 1 and 2).
#[derive(Debug)]
pub(crate) enum Records {
    Blocks(Blocks),
    Decoded(Vec<Vec<IndexRecord>>),
}

/// Parses an index body (version 1, 2 or 3) whose first byte is at `base` in the bytes it
/// will be read from; `frames` are the archive's data frames.
///
/// # Errors
/// A wrong magic, a bad checksum, a malformed header or block table.
pub(crate) fn parse_index(
    body: &[u8],
    base: usize,
    frames: &[FrameEntry],
) -> Result<(ArchiveIndex, Records)> {
    let (version, data) = check_body(body)?;
    let mut d = Dec {
        b: data,
        pos: INDEX_MAGIC.len(),
    };
    if version == 1 {
        let idx = decode_content(&mut d, Coding::Fixed)?;
        if d.pos != data.len() {
            return Err(d.err());
        }
        return Ok((idx.index, Records::Decoded(idx.records)));
    }
    let total = d.u64()?;
    let raw_len = d.u64()?;
    // A record takes at least 17 bytes of the stream and at most 41 of a version 2 content;
    // a version 3 header is the stream's headers, names and warnings (at most what the
    // stream holds) and at most 20 bytes per frame. Checked before anything is decompressed.
    let bound = total
        .saturating_mul(3)
        .saturating_add((frames.len() as u64).saturating_mul(24))
        .saturating_add(1 << 20);
    if raw_len > bound {
        return Err(bad_archive(format!(
            "record index of {raw_len} bytes is too large for a stream of {total} bytes"
        )));
    }
    if version == 2 {
        let content = inflate(&data[d.pos..], raw_len, "record index")?;
        let mut c = Dec {
            b: &content,
            pos: 0,
        };
        let idx = decode_content(&mut c, Coding::Delta)?;
        if c.pos != content.len() {
            return Err(c.err());
        }
        if idx.index.total_len != total {
            return Err(bad_archive("record index lengths disagree"));
        }
        return Ok((idx.index, Records::Decoded(idx.records)));
    }
    let head_len = usize::try_from(d.u64()?).map_err(|_| d.err())?;
    let head = d.take(head_len)?;
    let content = inflate(head, raw_len, "record index header")?;
    let mut c = Dec {
        b: &content,
        pos: 0,
    };
    let idx = decode_content(&mut c, Coding::Blocks)?.index;
    if idx.total_len != total {
        return Err(bad_archive("record index lengths disagree"));
    }
    let nb = c.count64(2)?;
    if nb != frames.len() {
        return Err(bad_archive(format!(
            "record index has {nb} blocks for {} frames",
            frames.len()
        )));
    }
    let mut ends = Vec::with_capacity(nb);
    let mut heads = Vec::with_capacity(if version == 4 { nb } else { 0 });
    let (mut c_end, mut r_end) = (0u64, 0u64);
    for f in frames {
        let (c_len, n) = (c.var()?, c.var()?);
        c_end = c_end.checked_add(c_len).ok_or_else(|| c.err())?;
        r_end = r_end.checked_add(n).ok_or_else(|| c.err())?;
        ends.push((c_end, r_end));
        if version == 4 {
            let h = c.var()?;
            // A block left out takes no bytes, holds records, and they start in its frame.
            if h != 0 && (c_len != 0 || n == 0 || h > u64::from(f.d_len)) {
                return Err(bad_archive(format!(
                    "record index block {} is left out but does not say where its records are",
                    ends.len() - 1
                )));
            }
            heads.push(h as u32);
        }
    }
    if c.pos != content.len() {
        return Err(c.err());
    }
    if c_end != (data.len() - d.pos) as u64 {
        return Err(bad_archive(
            "record index blocks do not fill the index frame",
        ));
    }
    let listed = idx
        .diffs
        .iter()
        .try_fold(0u64, |n, d| n.checked_add(d.indexed));
    if listed != Some(r_end) {
        return Err(bad_archive(format!(
            "record index blocks hold {r_end} records, its diffs list {}",
            listed.unwrap_or(u64::MAX)
        )));
    }
    let blocks = Blocks {
        at: base + d.pos,
        ends,
        heads,
    };
    Ok((idx, Records::Blocks(blocks)))
}

/// Decodes a whole index body (any version) into memory; `frames` are the data frames of
/// its archive (a record's frame and offset in it follow from them in version 3).
///
/// # Errors
/// A wrong magic, a bad checksum or a malformed body; a version 4 index that leaves blocks
/// out (their records are in the data frames: [`super::ZstArchive::decoded_index`]).
pub fn decode_index(body: &[u8], frames: &[FrameEntry]) -> Result<DecodedIndex> {
    let (index, recs) = parse_index(body, 0, frames)?;
    let records = match recs {
        Records::Decoded(r) => r,
        Records::Blocks(_) => {
            let view = View {
                bytes: body.into(),
                data: None,
                records: &recs,
                frames,
                index: &index,
            };
            let mut all = Vec::with_capacity(index.diffs.len());
            for i in 0..index.diffs.len() {
                let mut c = IndexRecords::new(i);
                let mut v = Vec::new();
                while let Some(r) = c.read(&view)? {
                    v.push(r);
                }
                all.push(v);
            }
            all
        }
    };
    Ok(DecodedIndex { index, records })
}

/// Encodes an index into the body of its skippable frame (header not included), in
/// version 3, for an archive of `frames` data frames.
///
/// # Errors
/// A record's frame is before the one of the record before, or not below `frames`.
pub fn encode_index(idx: &DecodedIndex, frames: usize) -> Result<Vec<u8>> {
    let mut w = IndexWriter::new()?;
    for recs in &idx.records {
        for r in recs {
            w.push(r.frame, r.pos, r.tag, r.offset, r.len)?;
        }
    }
    let mut index = idx.index.clone();
    for (d, r) in index.diffs.iter_mut().zip(&idx.records) {
        d.indexed = r.len() as u64;
    }
    let mut out = Vec::new();
    w.finish(&index, frames, &mut out, false)?;
    Ok(out)
}

/// Encodes an index in version 1 (fixed-width records), as older versions wrote it. For
/// tests of the reader.
#[doc(hidden)]
pub fn encode_index_v1(idx: &DecodedIndex) -> Vec<u8> {
    let mut e = Enc(INDEX_MAGIC.to_vec());
    e.0.extend_from_slice(&encode_content(&idx.index, &idx.records, Coding::Fixed));
    let crc = crc32fast::hash(&e.0);
    e.u32(crc);
    e.0
}

/// Encodes an index in version 2 (the whole delta-coded and compressed), as older versions
/// wrote it. For tests of the reader.
#[doc(hidden)]
pub fn encode_index_v2(idx: &DecodedIndex) -> Vec<u8> {
    let content = encode_content(&idx.index, &idx.records, Coding::Delta);
    let z = zstd::bulk::compress(&content, INDEX_LEVEL).unwrap_or_default();
    let mut e = Enc(Vec::with_capacity(z.len() + 32));
    e.0.extend_from_slice(INDEX_MAGIC_V2);
    e.u64(idx.index.total_len);
    e.u64(content.len() as u64);
    e.0.extend_from_slice(&z);
    let crc = crc32fast::hash(&e.0);
    e.u32(crc);
    e.0
}

/// Wraps an index body into its skippable frame.
pub fn index_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&super::INDEX_FRAME_MAGIC.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Where finished blocks wait until the index is written: memory up to [`SPILL_AT`] bytes,
/// then an unlinked temporary file.
struct Store {
    mem: Vec<u8>,
    file: Option<std::fs::File>,
    len: u64,
}

impl Store {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        if self.file.is_none() && self.mem.len() + b.len() > SPILL_AT {
            let mut f = tempfile::tempfile().map_err(|e| {
                Error::invalid(format!("no temporary file for the record index: {e}"))
            })?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.write_all(b)?,
            None => self.mem.extend_from_slice(b),
        }
        self.len += b.len() as u64;
        Ok(())
    }

    /// Copies what is stored to `out`, adding it to `crc`: the blocks of `table` in turn
    /// (their lengths add up to what is stored), but those left out.
    fn copy_to(
        self,
        table: &[Block],
        out: &mut dyn Write,
        crc: &mut crc32fast::Hasher,
    ) -> Result<()> {
        let mut f = self.file;
        if let Some(f) = &mut f {
            f.seek(io::SeekFrom::Start(0))?;
        }
        let mut buf = vec![0u8; if f.is_some() { 1 << 20 } else { 0 }];
        let mut at = 0usize;
        for b in table {
            let len = usize::try_from(b.c_len).map_err(|_| Error::invalid("index too large"))?;
            match &mut f {
                None => {
                    let bytes = self.mem.get(at..at + len).unwrap_or_default();
                    if b.heads == 0 {
                        crc.update(bytes);
                        out.write_all(bytes)?;
                    }
                }
                Some(f) if b.heads != 0 => {
                    f.seek(io::SeekFrom::Current(len as i64))?;
                }
                Some(f) => {
                    let mut left = len;
                    while left > 0 {
                        let n = buf.len().min(left);
                        f.read_exact(&mut buf[..n])?;
                        crc.update(&buf[..n]);
                        out.write_all(&buf[..n])?;
                        left -= n;
                    }
                }
            }
            at += len;
        }
        Ok(())
    }
}

/// Builds a version 3 index while the records are walked, in memory bounded by the number
/// of frames (see the module docs): records are pushed in stream order with the frame
/// their head starts in, then [`IndexWriter::finish`] writes the index.
pub struct IndexWriter {
    enc: Encoder<'static>,
    /// Coded records not yet fed to `enc`.
    raw: Vec<u8>,
    /// Compressed bytes of the current block not yet stored.
    z: Vec<u8>,
    /// The current block, its records and compressed length so far.
    block: usize,
    count: u64,
    c_len: u64,
    /// Delta bases: where the record after the last one starts, where its extent ended.
    at: u64,
    prev_end: u64,
    /// Each finished block.
    table: Vec<Block>,
    store: Store,
    records: u64,
    /// The version of the diff being indexed, when told ([`IndexWriter::set_version`]):
    /// blocks may then be left out ([`IndexWriter::leave_out`]).
    version: Option<Version>,
    /// The current block: where its first record starts, and whether its records follow
    /// each other with nothing between them and no `e` before the last (they can then be
    /// read from the frame's heads).
    first: u64,
    heads_ok: bool,
    /// Where the record after the last one pushed starts, as its head and body say.
    next: u64,
    ended: bool,
}

/// One finished block of an [`IndexWriter`].
#[derive(Clone, Copy, Debug)]
struct Block {
    c_len: u64,
    count: u64,
    /// Diff stream offset of its first record, and whether its records can be read from
    /// the frame's heads instead.
    first: u64,
    heads_ok: bool,
    /// Once left out: 1 + the offset of the first record in its frame (0: written).
    heads: u32,
}

impl std::fmt::Debug for IndexWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexWriter({} records)", self.records)
    }
}

impl IndexWriter {
    /// An empty index.
    ///
    /// # Errors
    /// The zstd context cannot be created.
    pub fn new() -> Result<Self> {
        let mut enc = Encoder::new(INDEX_LEVEL)?;
        enc.set_parameter(CParameter::WindowLog(BLOCK_WINDOW_LOG))?;
        enc.set_parameter(CParameter::ChecksumFlag(true))?;
        Ok(IndexWriter {
            enc,
            raw: Vec::with_capacity(BLOCK_BUF + MAX_RECORD),
            z: Vec::new(),
            block: 0,
            count: 0,
            c_len: 0,
            at: 0,
            prev_end: 0,
            table: Vec::new(),
            store: Store {
                mem: Vec::new(),
                file: None,
                len: 0,
            },
            records: 0,
            version: None,
            first: 0,
            heads_ok: true,
            next: 0,
            ended: false,
        })
    }

    /// Says that the records pushed from now on are of a diff of `version`: blocks of such
    /// records may be left out ([`IndexWriter::leave_out`]).
    pub fn set_version(&mut self, version: Version) {
        if self.version.is_some_and(|v| v != version) {
            self.heads_ok = false;
        }
        self.version = Some(version);
    }

    /// Records pushed so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Adds the record at diff stream byte `pos` (tag, image offset, length as in
    /// [`IndexRecord`]), whose head starts in data frame `frame`.
    ///
    /// # Errors
    /// `frame` is before the frame of the record before; compressing fails.
    pub fn push(
        &mut self,
        frame: u32,
        pos: u64,
        tag_byte: u8,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let frame = frame as usize;
        if frame < self.block {
            return Err(Error::invalid(format!(
                "internal: index record in frame {frame} after one in frame {}",
                self.block
            )));
        }
        while self.block < frame {
            self.end_block()?;
        }
        // Records whose heads follow each other can be read back from the frame.
        if self.count == 0 {
            self.first = pos;
        } else if self.ended || pos != self.next {
            self.heads_ok = false;
        }
        let rec = IndexRecord {
            pos,
            tag: tag_byte,
            offset,
            len,
            frame: 0,
            frame_offset: 0,
        };
        match self.version {
            Some(v) => self.next = next_pos_v2(v, &rec),
            None => self.heads_ok = false,
        }
        self.ended |= tag_byte == tag::END;
        let mut e = Enc(std::mem::take(&mut self.raw));
        e.u8(tag_byte);
        e.zz(pos.wrapping_sub(self.at));
        e.zz(offset.wrapping_sub(self.prev_end));
        e.var(len);
        self.raw = e.0;
        self.at = next_pos(tag_byte, pos, len);
        if matches!(tag_byte, tag::WRITE | tag::ZERO) {
            self.prev_end = offset.wrapping_add(len);
        }
        self.count += 1;
        self.records += 1;
        if self.raw.len() >= BLOCK_BUF {
            self.feed(false)?;
        }
        Ok(())
    }

    /// Feeds the coded records to the compressor (and ends its frame when `end`), storing
    /// what comes out.
    fn feed(&mut self, end: bool) -> Result<()> {
        let mut inb = InBuffer::around(&self.raw);
        loop {
            self.z.reserve(BLOCK_BUF);
            let at = self.z.len();
            let mut out = OutBuffer::around_pos(&mut self.z, at);
            if inb.pos() < self.raw.len() {
                self.enc.run(&mut inb, &mut out)?;
            } else if end {
                if self.enc.finish(&mut out, true)? == 0 {
                    break;
                }
            } else {
                break;
            }
        }
        self.raw.clear();
        self.store.put(&self.z)?;
        self.c_len += self.z.len() as u64;
        self.z.clear();
        Ok(())
    }

    /// Ends the current block (an empty one takes no bytes).
    fn end_block(&mut self) -> Result<()> {
        if self.count > 0 {
            self.feed(true)?;
        }
        self.table.push(Block {
            c_len: self.c_len,
            count: self.count,
            first: self.first,
            heads_ok: self.heads_ok && self.count > 0,
            heads: 0,
        });
        self.block += 1;
        (self.count, self.c_len, self.at, self.prev_end) = (0, 0, 0, 0);
        (self.heads_ok, self.ended) = (self.version.is_some(), false);
        Ok(())
    }

    /// Leaves out the blocks of 512 bytes or more that would cost more than 1/64 of their
    /// data frame's compressed bytes, when their records can be read from the frame's heads
    /// (readers then do): `frames` are the archive's data frames, all pushed, and
    /// `small_window` tells those compressed with a window of at most 2^[`HEADS_WINDOW_LOG`]
    /// bytes (only their blocks are left out). Returns how many blocks are left out.
    ///
    /// # Errors
    /// As [`IndexWriter::finish`].
    pub fn leave_out(&mut self, frames: &[FrameEntry], small_window: &[bool]) -> Result<usize> {
        while self.table.len() < frames.len() {
            self.end_block()?;
        }
        let mut n = 0;
        for ((b, f), _) in self
            .table
            .iter_mut()
            .zip(frames)
            .zip(small_window)
            .filter(|x| *x.1)
        {
            let in_frame = b
                .first
                .checked_sub(f.d_offset)
                .filter(|&o| o < u64::from(f.d_len));
            if let (true, Some(o)) = (b.heads_ok, in_frame) {
                if b.c_len >= ELIDE_MIN && b.c_len.saturating_mul(ELIDE_RATIO) > u64::from(f.c_len)
                {
                    b.heads = o as u32 + 1;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Writes the index of an archive of `frames` data frames with the header `idx` (each
    /// diff's `indexed` the number of its records pushed) to `out`: its skippable frame
    /// when `framed`, else its body. Returns the bytes written.
    ///
    /// # Errors
    /// A record was pushed with a frame not below `frames`; the index is larger than a
    /// skippable frame holds (4 GiB); writing fails.
    pub fn finish(
        mut self,
        idx: &ArchiveIndex,
        frames: usize,
        out: &mut dyn Write,
        framed: bool,
    ) -> Result<u64> {
        while self.table.len() < frames {
            self.end_block()?;
        }
        if self.table.len() > frames || self.count > 0 {
            return Err(Error::invalid(format!(
                "internal: index records in frame {} of {frames}",
                self.block
            )));
        }
        // Version 3 unless a block is left out (older readers still read the archive then).
        let v4 = self.table.iter().any(|b| b.heads != 0);
        let mut e = Enc(encode_content(idx, &[], Coding::Blocks));
        e.u64(self.table.len() as u64);
        let mut written = 0;
        for b in &self.table {
            let c = if b.heads == 0 { b.c_len } else { 0 };
            written += c;
            e.var(c);
            e.var(b.count);
            if v4 {
                e.var(u64::from(b.heads));
            }
        }
        let head = zstd::bulk::compress(&e.0, INDEX_LEVEL)?;
        let mut pre = Enc(Vec::with_capacity(head.len() + 32));
        pre.0
            .extend_from_slice(if v4 { INDEX_MAGIC_V4 } else { INDEX_MAGIC_V3 });
        pre.u64(idx.total_len);
        pre.u64(e.0.len() as u64);
        pre.u64(head.len() as u64);
        pre.0.extend_from_slice(&head);
        let body = pre.0.len() as u64 + written + 4;
        let body32 = u32::try_from(body).map_err(|_| {
            Error::invalid(format!(
                "record index of {body} bytes is larger than a zstd skippable frame holds"
            ))
        })?;
        if framed {
            out.write_all(&super::INDEX_FRAME_MAGIC.to_le_bytes())?;
            out.write_all(&body32.to_le_bytes())?;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&pre.0);
        out.write_all(&pre.0)?;
        self.store.copy_to(&self.table, out, &mut crc)?;
        out.write_all(&crc.finalize().to_le_bytes())?;
        Ok(body + if framed { 8 } else { 0 })
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// What a cursor reads an index from.
pub(crate) struct View<'x> {
    /// The bytes the block table's offsets point into (in memory or read at offsets).
    pub bytes: Positioned<'x>,
    /// The archive's data frames, when they can be read (records of blocks left out are
    /// read from their heads there).
    pub data: Option<Positioned<'x>>,
    pub records: &'x Records,
    pub frames: &'x [FrameEntry],
    pub index: &'x ArchiveIndex,
}

/// One version 3 block being decoded as a stream.
struct BlockDec {
    z: Decoder<'static>,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    /// Compressed bytes read from the archive and not yet decompressed (`inb[in_lo..in_hi]`).
    inb: Vec<u8>,
    in_lo: usize,
    in_hi: usize,
    /// The block's compressed bytes not yet read: `src..end` of the archive.
    src: usize,
    end: usize,
    /// The block's zstd frame has ended.
    done: bool,
    block: usize,
    /// The block holds records (an empty one has no zstd frame).
    live: bool,
    /// Compressed bytes read at once.
    read_len: usize,
    /// Frames follow each other in `src..end` (data frames): one ending is not the end.
    multi: bool,
    /// For data frames: where the first starts, compressed and in the diff stream.
    frame_at: (u64, u64),
}

impl BlockDec {
    /// A decoder of index blocks.
    fn new() -> Result<Self> {
        Self::with(BLOCK_WINDOW_LOG_MAX, READ_BUF, false)
    }

    /// A decoder of data frames, to read their heads.
    fn frames() -> Result<Self> {
        Self::with(HEADS_WINDOW_LOG, FRAME_READ_BUF, true)
    }

    fn with(window_log_max: u32, read_len: usize, multi: bool) -> Result<Self> {
        let mut z = Decoder::new()?;
        z.set_parameter(DParameter::WindowLogMax(window_log_max))?;
        Ok(BlockDec {
            z,
            buf: vec![0; READ_BUF],
            lo: 0,
            hi: 0,
            inb: Vec::new(),
            in_lo: 0,
            in_hi: 0,
            src: 0,
            end: 0,
            done: true,
            block: 0,
            live: false,
            read_len,
            multi,
            frame_at: (0, 0),
        })
    }

    fn bad(&self, why: &str) -> Error {
        if self.multi {
            let (c, d) = self.frame_at;
            return super::corrupt_frame(Some(self.block as u64), c, d, why);
        }
        bad_archive(format!("record index block {} {why}", self.block))
    }

    fn begin(&mut self, block: usize, src: usize, end: usize, live: bool) -> Result<()> {
        if live {
            self.z.reinit()?;
        }
        (self.block, self.src, self.end, self.live) = (block, src, end, live);
        (self.lo, self.hi, self.done) = (0, 0, !live);
        (self.in_lo, self.in_hi) = (0, 0);
        Ok(())
    }

    /// Decompresses until `need` bytes are buffered or the block ends.
    fn ensure(&mut self, bytes: Positioned<'_>, need: usize) -> Result<()> {
        while self.hi - self.lo < need && !self.done {
            if self.lo > 0 {
                self.buf.copy_within(self.lo..self.hi, 0);
                (self.hi, self.lo) = (self.hi - self.lo, 0);
            }
            if self.in_lo == self.in_hi && self.src < self.end {
                let n = (self.end - self.src).min(self.read_len);
                self.inb.resize(self.read_len, 0);
                bytes
                    .read_exact_at(&mut self.inb[..n], self.src as u64)
                    .map_err(|_| self.bad("lies outside the archive"))?;
                (self.src, self.in_lo, self.in_hi) = (self.src + n, 0, n);
            }
            let mut inb = InBuffer::around(&self.inb[self.in_lo..self.in_hi]);
            let mut out = OutBuffer::around(&mut self.buf[self.hi..]);
            let hint = self.z.run(&mut inb, &mut out);
            let (used, made) = (inb.pos(), out.pos());
            let hint = hint.map_err(|e| self.bad(&format!("does not decompress: {e}")))?;
            self.in_lo += used;
            self.hi += made;
            if hint == 0 {
                // Data frames go on into the next one (the decoder starts it by itself).
                self.done = !self.multi || (self.src == self.end && self.in_lo == self.in_hi);
            } else if used == 0 && made == 0 {
                return Err(self.bad("ends early"));
            }
        }
        Ok(())
    }

    /// Checks that nothing follows the block's last record.
    fn finish(&mut self, bytes: Positioned<'_>) -> Result<()> {
        let unread = self.src != self.end || self.in_lo != self.in_hi;
        if !self.live {
            return if !unread {
                Ok(())
            } else {
                Err(self.bad("holds bytes but no record"))
            };
        }
        self.ensure(bytes, 1)?;
        if self.hi > self.lo || self.src != self.end || self.in_lo != self.in_hi {
            return Err(self.bad("holds more than its records"));
        }
        Ok(())
    }
}

/// Most bytes of a data record's head (a v2 `w` or `z`).
const MAX_DATA_HEAD: usize = 25;

/// Passes `n` decompressed bytes of a frame decoder (the diff stream offset it is at is
/// `h.1`).
fn skip_decoded(h: &mut (Box<BlockDec>, u64), data: Positioned<'_>, mut n: u64) -> Result<()> {
    while n > 0 {
        if h.0.lo == h.0.hi {
            h.0.ensure(data, 1)?;
            if h.0.lo == h.0.hi {
                return Err(bad_archive(format!(
                    "zstd frame {} ends inside a record its index lists",
                    h.0.block
                )));
            }
        }
        let k = ((h.0.hi - h.0.lo) as u64).min(n);
        h.0.lo += k as usize;
        h.1 += k;
        n -= k;
    }
    Ok(())
}

/// A cursor over the records of one diff of an archive's index, decoding them as they are
/// asked for (see the module docs): memory does not grow with the records. Each call takes
/// the archive the cursor was made for.
#[derive(Default)]
pub struct IndexRecords {
    diff: usize,
    started: bool,
    /// Records of the diff not yet read.
    left: u64,
    /// Next record of a decoded (version 1 or 2) index.
    next: usize,
    /// Records left in the current block.
    block_left: u64,
    dec: Option<Box<BlockDec>>,
    at: u64,
    prev_end: u64,
    ahead: Option<IndexRecord>,
    /// In a block left out: the decoder of its data frame, and the diff stream offset of
    /// the next byte it gives.
    heads: Option<(Box<BlockDec>, u64)>,
}

impl std::fmt::Debug for IndexRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexRecords(diff {}, {} left)", self.diff, self.left)
    }
}

impl IndexRecords {
    /// A cursor at the first record of diff `diff`.
    pub fn new(diff: usize) -> Self {
        IndexRecords {
            diff,
            ..IndexRecords::default()
        }
    }

    /// The next record, if any.
    ///
    /// # Errors
    /// The index is corrupt (a block does not decompress or decode, or a record lies
    /// outside the stream).
    pub fn next(&mut self, a: &super::ZstArchive<'_>) -> Result<Option<IndexRecord>> {
        match self.ahead.take() {
            Some(r) => Ok(Some(r)),
            None => self.read(&a.view()),
        }
    }

    /// The record [`IndexRecords::next`] gives next, without moving.
    ///
    /// # Errors
    /// As [`IndexRecords::next`].
    pub fn peek(&mut self, a: &super::ZstArchive<'_>) -> Result<Option<IndexRecord>> {
        if self.ahead.is_none() {
            self.ahead = self.read(&a.view())?;
        }
        Ok(self.ahead)
    }

    pub(crate) fn read(&mut self, v: &View<'_>) -> Result<Option<IndexRecord>> {
        let blocks = match v.records {
            Records::Decoded(r) => {
                let r = r.get(self.diff).and_then(|d| d.get(self.next)).copied();
                self.next += 1;
                return Ok(r);
            }
            Records::Blocks(b) => b,
        };
        if !self.started {
            self.started = true;
            self.start(v, blocks)?;
        }
        if self.left == 0 {
            return Ok(None);
        }
        let r = self.decode(v, blocks)?;
        self.left -= 1;
        Ok(Some(r))
    }

    /// Finds the block of the diff's first record and moves to it.
    fn start(&mut self, v: &View<'_>, blocks: &Blocks) -> Result<()> {
        let Some(d) = v.index.diffs.get(self.diff) else {
            return Ok(());
        };
        let first: u64 = v.index.diffs[..self.diff].iter().map(|d| d.indexed).sum();
        self.left = d.indexed;
        if self.left == 0 {
            return Ok(());
        }
        let b = blocks.ends.partition_point(|&(_, r_end)| r_end <= first);
        let (_, _, r_start, _) = blocks
            .block(b)
            .ok_or_else(|| bad_archive("record index lists more records than its blocks"))?;
        self.enter(v, blocks, b)?;
        for _ in r_start..first {
            self.decode(v, blocks)?;
        }
        Ok(())
    }

    fn enter(&mut self, v: &View<'_>, blocks: &Blocks, b: usize) -> Result<()> {
        let (c0, c1, r0, r1) = blocks
            .block(b)
            .ok_or_else(|| bad_archive("record index lists more records than its blocks"))?;
        let dec = match &mut self.dec {
            Some(d) => d,
            None => self.dec.insert(Box::new(BlockDec::new()?)),
        };
        dec.begin(b, c0, c1, r1 > r0 && blocks.heads_at(b).is_none())?;
        if c0 as u64 > v.bytes.len() || c1 as u64 > v.bytes.len() || c0 > c1 {
            return Err(dec.bad("lies outside the archive"));
        }
        (self.block_left, self.at, self.prev_end) = (r1 - r0, 0, 0);
        match blocks.heads_at(b) {
            Some(o) => self.enter_frame(v, b, o),
            None => {
                // The frame decoder (a window of the data's size) is not kept for long.
                self.heads = None;
                Ok(())
            }
        }
    }

    /// Moves to the first record of block `b`, left out: `o` bytes into data frame `b`.
    fn enter_frame(&mut self, v: &View<'_>, b: usize, o: u32) -> Result<()> {
        let data = v
            .data
            .ok_or_else(|| bad_archive("record index block left out, and no frames to read"))?;
        let f = v
            .frames
            .get(b)
            .ok_or_else(|| bad_archive(format!("record index block {b} has no frame")))?;
        // A head that starts near the frame's end goes on into the next frame.
        let end = v.frames.get(b + 1).unwrap_or(f);
        let end = end.c_offset.saturating_add(u64::from(end.c_len));
        let (c0, c1) = (usize::try_from(f.c_offset), usize::try_from(end));
        let (Ok(c0), Ok(c1)) = (c0, c1) else {
            return Err(bad_archive(format!(
                "zstd frame {b} lies outside the archive"
            )));
        };
        if end > data.len() {
            return Err(bad_archive(format!(
                "zstd frame {b} lies outside the archive"
            )));
        }
        let (mut dec, _) = match self.heads.take() {
            Some(h) => h,
            None => (Box::new(BlockDec::frames()?), 0),
        };
        dec.begin(b, c0, c1, true)?;
        dec.frame_at = (f.c_offset, f.d_offset);
        let mut h = (dec, f.d_offset);
        skip_decoded(&mut h, data, u64::from(o))?;
        self.heads = Some(h);
        Ok(())
    }

    /// Reads the next record of a block left out from its frame's heads.
    fn decode_head(&mut self, v: &View<'_>, version: Version) -> Result<IndexRecord> {
        let (Some(h), Some(data)) = (self.heads.as_mut(), v.data) else {
            return Err(bad_archive("internal: no frame decoder"));
        };
        let block = h.0.block;
        h.0.ensure(data, MAX_DATA_HEAD)?;
        let avail = &h.0.buf[h.0.lo..h.0.hi];
        use crate::parse::Head;
        let fields = match crate::parse::record_head(version, avail) {
            Ok((rest, ph)) => {
                let used = avail.len() - rest.len();
                match ph.head {
                    Head::Write(e) => Ok((used, tag::WRITE, e.offset, e.len)),
                    Head::Zero(e) => Ok((used, tag::ZERO, e.offset, e.len)),
                    Head::Unknown { tag, len } => Ok((used, tag, 0, len)),
                    Head::End => Ok((used, tag::END, 0, 0)),
                    _ => Err("hold a metadata record"),
                }
            }
            Err(_) => Err("do not parse"),
        };
        let (used, tag_byte, offset, len) =
            fields.map_err(|why| h.0.bad(&format!("its record heads {why}")))?;
        let pos = h.1;
        h.0.lo += used;
        h.1 += used as u64;
        self.block_left -= 1;
        // The payload is decompressed only when another record of the block follows it.
        if self.block_left > 0 {
            let body = if tag_byte == tag::ZERO { 0 } else { len };
            skip_decoded(h, data, body)?;
        }
        if pos >= v.index.total_len {
            return Err(bad_archive(format!(
                "record at diff stream byte {pos} points outside the archive"
            )));
        }
        let d_offset = v.frames.get(block).map_or(0, |f| f.d_offset);
        Ok(IndexRecord {
            pos,
            tag: tag_byte,
            offset,
            len,
            frame: block as u32,
            frame_offset: pos.wrapping_sub(d_offset) as u32,
        })
    }

    /// Decodes the next record of the blocks.
    fn decode(&mut self, v: &View<'_>, blocks: &Blocks) -> Result<IndexRecord> {
        while self.block_left == 0 {
            let next = match &mut self.dec {
                Some(d) => {
                    d.finish(v.bytes)?;
                    d.block + 1
                }
                None => 0,
            };
            self.enter(v, blocks, next)?;
        }
        if self.heads.is_some() {
            let version = v
                .index
                .diffs
                .get(self.diff)
                .map_or(Version::V1, |d| d.version);
            return self.decode_head(v, version);
        }
        let dec = self
            .dec
            .as_mut()
            .ok_or_else(|| bad_archive("internal: no block decoder"))?;
        dec.ensure(v.bytes, MAX_RECORD)?;
        let mut d = Dec {
            b: &dec.buf[dec.lo..dec.hi],
            pos: 0,
        };
        let fields = (|| Ok::<_, Error>((d.u8()?, d.zz()?, d.zz()?, d.var()?)))();
        let used = d.pos;
        let (tag_byte, dp, doff, len) = fields.map_err(|_| dec.bad("is malformed"))?;
        dec.lo += used;
        let block = dec.block;
        let pos = self.at.wrapping_add(dp);
        let offset = self.prev_end.wrapping_add(doff);
        self.at = next_pos(tag_byte, pos, len);
        if matches!(tag_byte, tag::WRITE | tag::ZERO) {
            self.prev_end = offset.wrapping_add(len);
        }
        self.block_left -= 1;
        if pos >= v.index.total_len {
            return Err(bad_archive(format!(
                "record at diff stream byte {pos} points outside the archive"
            )));
        }
        let d_offset = v.frames.get(block).map_or(0, |f| f.d_offset);
        Ok(IndexRecord {
            pos,
            tag: tag_byte,
            offset,
            len,
            frame: block as u32,
            frame_offset: pos.wrapping_sub(d_offset) as u32,
        })
    }
}
