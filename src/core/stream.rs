//! Streaming driver over any [`Read`] (stdin, pipes, decompressors).
//!
//! Memory is bounded: record heads go through a small buffer and a payload is never buffered
//! whole; it is handed out as a [`Read`], and whatever the caller leaves unread is skipped.
//! It yields the same records, errors and byte offsets as [`crate::slice`].

use std::io::{self, Read, Seek, SeekFrom};

use crate::check::{eof_error, record_name, Checker, Step, Warnings};
use crate::error::{Error, ErrorKind, Result, Warning};
use crate::format::{Extent, ImageHeader, Metadata, Version};
use crate::image::{HStep, HeaderParser};
use crate::parse::{self, PErr};

const BUF_SIZE: usize = 64 * 1024;
/// Largest item that must fit in the buffer at once (an image-meta pair is the biggest head).
const MAX_HEAD: usize = 2 * (crate::format::MAX_META_LEN as usize) + 64;
/// Most bytes a streaming parser holds read but not yet consumed: every record it has not
/// yielded yet starts at most this far before the end of what it has read.
pub(crate) const MAX_UNCONSUMED: usize = if BUF_SIZE > MAX_HEAD {
    BUF_SIZE
} else {
    MAX_HEAD
};

/// Bytes read per refill of a seekable input beyond what the parser asks for, at first: a
/// few record heads, so that walking the heads of a file of large records reads almost
/// nothing else.
const SEEK_READ: usize = 64;
/// Largest refill of a seekable input. Each refill doubles the one before (small records:
/// many heads per system call), up to this; a payload over [`BIG_SKIP`] skipped since the
/// last refill starts again at [`SEEK_READ`] (large records: little read but their heads).
const MAX_SEEK_READ: usize = 64 * 1024;
/// A payload skipped past the bytes read that is larger than this marks large records.
const BIG_SKIP: u64 = 8 * 1024;

/// Reads from a positioned input at an absolute offset; the `u64` is where the input's
/// own cursor is, so that a plain `Seek` input seeks only when it has to.
pub(crate) type ReadAtFn<R> = fn(&mut R, &mut [u8], u64, &mut u64) -> io::Result<usize>;

fn seek_read<R: Read + Seek>(
    r: &mut R,
    buf: &mut [u8],
    at: u64,
    cur: &mut u64,
) -> io::Result<usize> {
    if *cur != at {
        r.seek(SeekFrom::Start(at))?;
        *cur = at;
    }
    let n = r.read(buf)?;
    *cur += n as u64;
    Ok(n)
}

#[cfg(unix)]
fn file_read_at(f: &mut std::fs::File, buf: &mut [u8], at: u64, _: &mut u64) -> io::Result<usize> {
    // rustix issues the system call inline: a shallow call stack under the one `pread` per
    // record head is measurably cheaper (returns mispredict after every system call).
    rustix::io::pread(&*f, buf, at).map_err(io::Error::from)
}

#[cfg(not(unix))]
fn file_read_at(
    f: &mut std::fs::File,
    buf: &mut [u8],
    at: u64,
    cur: &mut u64,
) -> io::Result<usize> {
    seek_read(f, buf, at, cur)
}

/// A buffered reader that counts absolute offsets.
#[derive(Debug)]
pub(crate) struct Source<R> {
    inner: R,
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    /// Absolute offset of `buf[lo]`.
    pos: u64,
    eof: bool,
    /// For a positioned input (read from offset 0): how to read at an offset, its
    /// length, and where its own cursor is.
    seek: Option<(ReadAtFn<R>, u64)>,
    inner_pos: u64,
    /// Bytes per refill of a positioned input (see [`MAX_SEEK_READ`]).
    read_len: usize,
    /// A payload over [`BIG_SKIP`] was skipped since the last refill.
    big_skip: bool,
}

impl<R: Read> Source<R> {
    fn new(inner: R) -> Self {
        Self::with_capacity(inner, BUF_SIZE)
    }

    fn with_capacity(inner: R, capacity: usize) -> Self {
        Source {
            inner,
            buf: vec![0; capacity],
            lo: 0,
            hi: 0,
            pos: 0,
            eof: false,
            seek: None,
            inner_pos: 0,
            read_len: SEEK_READ,
            big_skip: false,
        }
    }

    /// A seekable input of `len` bytes, positioned at offset 0: skipped bytes are seeked
    /// over and refills are small.
    fn seekable(inner: R, len: u64) -> Self
    where
        R: Seek,
    {
        Self::positioned(inner, len, seek_read::<R>)
    }

    fn positioned(inner: R, len: u64, read_at: ReadAtFn<R>) -> Self {
        // Reads are small here; `fill` grows the buffer for a long head.
        let mut s = Source::with_capacity(inner, 4096);
        s.seek = Some((read_at, len));
        s
    }

    /// One read into `dst` of the bytes at absolute offset `at`.
    #[inline]
    fn read_at(&mut self, dst: &mut [u8], at: u64) -> io::Result<usize> {
        match self.seek {
            Some((read_at, _)) => read_at(&mut self.inner, dst, at, &mut self.inner_pos),
            None => self.inner.read(dst),
        }
    }

    fn avail(&self) -> &[u8] {
        self.buf.get(self.lo..self.hi).unwrap_or_default()
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.hi - self.lo);
        self.lo += n;
        self.pos += n as u64;
    }

    /// [`Source::fill`] for an empty buffer, with a positioned input's read made right here:
    /// the read of every record head goes through this, and a shallow call stack under a
    /// system call is measurably cheaper (returns mispredict after it).
    #[inline(always)]
    fn refill_empty(&mut self) -> io::Result<bool> {
        if let (Some((read_at, _)), false) = (self.seek, self.eof) {
            self.next_read_len();
            if let Some(dst) = self.buf.get_mut(..self.read_len) {
                match read_at(&mut self.inner, dst, self.pos, &mut self.inner_pos) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        (self.lo, self.hi) = (0, n);
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.fill(1)
    }

    /// Sets the size of the next refill of a positioned input (see [`MAX_SEEK_READ`]).
    fn next_read_len(&mut self) {
        self.read_len = if std::mem::take(&mut self.big_skip) {
            SEEK_READ
        } else {
            (self.read_len * 2).min(MAX_SEEK_READ)
        };
        if self.buf.len() < self.read_len {
            self.buf.resize(self.read_len, 0);
        }
    }

    /// Tries to have at least `need` bytes available; false when the input ends first.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        let need = need.min(MAX_HEAD);
        while self.hi - self.lo < need {
            if self.eof {
                return Ok(false);
            }
            if self.seek.is_some() {
                self.next_read_len();
            }
            let positioned_room = self.seek.is_some() && self.hi + self.read_len > self.buf.len();
            if self.lo + need > self.buf.len() || positioned_room {
                self.buf.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
                if need > self.buf.len() {
                    self.buf.resize(need, 0);
                }
            }
            let room = match self.seek {
                // lo + need <= buf.len() here, so the bytes still needed always fit.
                Some(_) => self.hi + (need - (self.hi - self.lo)).max(self.read_len),
                None => self.buf.len(),
            };
            let room = room.min(self.buf.len());
            let at = self.pos + (self.hi - self.lo) as u64;
            let mut buf = std::mem::take(&mut self.buf);
            let dst = buf.get_mut(self.hi..room).unwrap_or_default();
            let r = self.read_at(dst, at);
            self.buf = buf;
            match r {
                Ok(0) => self.eof = true,
                Ok(n) => self.hi += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads up to `out.len()` bytes: buffered ones first, then straight from the input.
    fn read_some(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.hi - self.lo;
        if avail > 0 {
            let n = avail.min(out.len());
            out[..n].copy_from_slice(&self.buf[self.lo..self.lo + n]);
            self.consume(n);
            return Ok(n);
        }
        if self.eof {
            return Ok(0);
        }
        loop {
            match self.read_at(out, self.pos) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Skips up to `n` bytes; returns how many were skipped (fewer at end of input).
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        if n <= (self.hi - self.lo) as u64 {
            // Within the buffer (the payload of a small record).
            self.consume(n as usize);
            return Ok(n);
        }
        let mut left = n;
        if let Some((_, len)) = self.seek {
            let buffered = (self.hi - self.lo) as u64;
            if left > buffered && left > BIG_SKIP {
                self.big_skip = true;
            }
            if left > buffered {
                // Drop the buffer and move past the rest (no I/O), never beyond the end.
                self.consume(buffered as usize);
                left -= buffered;
                let target = self.pos.saturating_add(left).min(len.max(self.pos));
                left -= target - self.pos;
                self.pos = target;
                self.lo = 0;
                self.hi = 0;
                if left > 0 {
                    self.eof = true;
                }
                return Ok(n - left);
            }
        }
        while left > 0 {
            let avail = (self.hi - self.lo) as u64;
            if avail == 0 && !self.fill(1)? {
                break;
            }
            let step = left.min((self.hi - self.lo) as u64);
            self.consume(step as usize);
            left -= step;
        }
        Ok(n - left)
    }
}

/// The payload of the current `w` record, as a reader.
#[derive(Debug)]
pub(crate) struct Body<R> {
    src: Source<R>,
    /// Payload bytes not yet read.
    remaining: u64,
    /// Where the record started, for errors.
    rec_offset: u64,
    rec_index: u64,
    rec_tag: u8,
    /// Payload (or skipped body) length of the current record, for errors.
    rec_len: u64,
}

impl<R: Read> Body<R> {
    fn truncated(&self) -> Error {
        Error::at(
            ErrorKind::Truncated {
                what: format!(
                    "{} payload ({} bytes)",
                    record_name(self.rec_tag),
                    self.rec_len
                ),
            },
            self.rec_offset,
            Some(self.rec_index),
        )
    }

    /// Skips what is left of the current payload.
    fn skip_rest(&mut self) -> Result<()> {
        let left = self.remaining;
        let done = self.src.skip(left)?;
        self.remaining -= done;
        if self.remaining > 0 {
            return Err(self.truncated());
        }
        Ok(())
    }
}

impl<R: Read> Read for Body<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.src.read_some(&mut out[..want])?;
        if n == 0 {
            return Err(self.truncated().into());
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// One record from a [`RecordSource`].
#[derive(Debug)]
pub struct Item<'r> {
    /// Byte offset of the record's tag.
    pub offset: u64,
    /// Record index (0 = first record after the banner).
    pub index: u64,
    /// The record.
    pub kind: ItemKind<'r>,
}

/// What an [`Item`] holds.
#[derive(Debug)]
#[non_exhaustive]
pub enum ItemKind<'r> {
    /// `w` with its payload.
    Write {
        /// Image extent.
        extent: Extent,
        /// The payload.
        data: Payload<'r>,
    },
    /// `z`.
    Zero(Extent),
    /// v2 record with an unknown tag (already skipped).
    Unknown {
        /// Tag byte.
        tag: u8,
        /// Body length.
        len: u64,
    },
    /// `e`.
    End,
}

/// A `w` payload: borrowed bytes (slice driver) or a reader (stream driver).
pub enum Payload<'r> {
    /// Bytes borrowed from the input.
    Bytes(&'r [u8]),
    /// A reader limited to the payload; bytes left unread are skipped later.
    Stream(&'r mut dyn Read),
}

impl std::fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Bytes(b) => write!(f, "Payload::Bytes({} bytes)", b.len()),
            Payload::Stream(_) => f.write_str("Payload::Stream"),
        }
    }
}

impl Read for Payload<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Payload::Bytes(b) => b.read(out),
            Payload::Stream(r) => r.read(out),
        }
    }
}

/// One-pass access to the records of a diff, shared by [`crate::DiffSlice`] and [`DiffReader`],
/// so that inspect, verify and apply are written once.
pub trait RecordSource {
    /// `v1` or `v2`.
    fn version(&self) -> Version;
    /// Header of the diff.
    fn metadata(&self) -> &Metadata;
    /// Byte offset and tag of every metadata record.
    fn metadata_records(&self) -> &[(u64, u8)];
    /// Warnings found so far (at most [`crate::error::MAX_WARNINGS`], then the bytes
    /// after `e`).
    fn warnings(&self) -> &[Warning];
    /// How many more warnings were found than [`RecordSource::warnings`] keeps.
    fn more_warnings(&self) -> u64;
    /// Byte offset of the next record (after `e`: just past it).
    fn position(&self) -> u64;
    /// The next data record or `e`; `None` after `e`.
    ///
    /// # Errors
    /// The first structural problem or I/O error; the source is finished after an error.
    fn next_item(&mut self) -> Result<Option<Item<'_>>>;

    /// Walks, in one call, the `w` and `z` records that follow while the driver can hand
    /// them out without a read, a check beyond the usual or an error (their heads and
    /// payloads in its buffer): `f(offset, index, tag, extent)` for each, payloads skipped
    /// (the unread rest of the current one first). Returns how many; 0 (the default) when
    /// there are none, and [`RecordSource::next_item`] then takes the walk on. For walks
    /// that count records rather than read them (`inspect`): a call per record, inlined.
    fn skim_data<F: FnMut(u64, u64, u8, Extent)>(&mut self, f: F) -> u64
    where
        Self: Sized,
    {
        let _ = f;
        0
    }
}

impl<'a> RecordSource for crate::slice::Records<'a> {
    fn version(&self) -> Version {
        self.checker_ref().version
    }
    fn metadata(&self) -> &Metadata {
        &self.checker_ref().meta
    }
    fn metadata_records(&self) -> &[(u64, u8)] {
        &self.checker_ref().meta_records
    }
    fn warnings(&self) -> &[Warning] {
        crate::slice::Records::warnings(self)
    }
    fn more_warnings(&self) -> u64 {
        crate::slice::Records::more_warnings(self)
    }
    fn position(&self) -> u64 {
        crate::slice::Records::offset(self)
    }
    #[inline]
    fn next_item(&mut self) -> Result<Option<Item<'_>>> {
        let index = self.index();
        let Some(r) = self.next() else {
            return Ok(None);
        };
        let (offset, rec) = r?;
        let kind = match rec {
            crate::Record::Write { offset, data } => ItemKind::Write {
                extent: Extent::new(offset, data.len() as u64),
                data: Payload::Bytes(data),
            },
            crate::Record::Zero(e) => ItemKind::Zero(e),
            crate::Record::Unknown { tag, data } => ItemKind::Unknown {
                tag,
                len: data.len() as u64,
            },
            crate::Record::End => ItemKind::End,
        };
        Ok(Some(Item {
            offset,
            index,
            kind,
        }))
    }
}

/// A diff read from a stream; see the module docs.
#[derive(Debug)]
pub struct DiffReader<R> {
    body: Body<R>,
    checker: Checker,
    /// The head that ended the metadata, not yet returned, with its check result: like the
    /// slice driver, a problem with the first data record is reported by `next_item`.
    pending: Option<(u64, Result<Step>)>,
    standalone: bool,
    done: bool,
    start: u64,
    /// Offset just past `e`, once read (the trailing-bytes check reads further).
    after_end: Option<u64>,
}

impl<R: Read> DiffReader<R> {
    /// Reads the banner and metadata records of a standalone diff.
    ///
    /// # Errors
    /// A bad banner, a truncated or invalid metadata record, or an I/O error.
    pub fn new(inner: R) -> Result<Self> {
        Self::from_source(Source::new(inner), true)
    }

    /// Like [`DiffReader::new`] for a seekable input of `len` bytes positioned at its start
    /// (a regular file): payloads left unread are seeked over and heads are read in small
    /// pieces, so walking the records costs O(records), not O(bytes).
    ///
    /// # Errors
    /// As [`DiffReader::new`].
    pub fn seekable(inner: R, len: u64) -> Result<Self>
    where
        R: Seek,
    {
        Self::from_source(Source::seekable(inner, len), true)
    }

    /// [`DiffReader::seekable`] for an input of `len` bytes that `read_at` reads at offsets
    /// (its `u64` argument is the input's own cursor, for it to keep).
    ///
    /// # Errors
    /// As [`DiffReader::new`].
    pub(crate) fn read_at_with(inner: R, len: u64, read_at: ReadAtFn<R>) -> Result<Self> {
        Self::from_source(Source::positioned(inner, len, read_at), true)
    }
}

impl DiffReader<std::fs::File> {
    /// [`DiffReader::seekable`] for a file of `len` bytes, read with positioned reads
    /// (`pread`): one system call per record head, none to skip a payload.
    ///
    /// # Errors
    /// As [`DiffReader::new`].
    pub fn from_file(file: std::fs::File, len: u64) -> Result<Self> {
        Self::from_source(Source::positioned(file, len, file_read_at), true)
    }
}

impl<'f> DiffReader<&'f std::fs::File> {
    /// [`DiffReader::from_file`] over a borrowed file (no second descriptor): record heads
    /// are read with `pread` into a buffer of at most 64 KiB, payloads are skipped unread.
    ///
    /// # Errors
    /// As [`DiffReader::new`].
    pub fn at_file(file: &'f std::fs::File, len: u64) -> Result<Self> {
        Self::from_source(Source::positioned(file, len, file_ref_read_at), true)
    }

    /// [`DiffReader::at_file`] for a diff embedded in an image stream at byte `start` of the
    /// file (bytes after its `e` are the next diff's, not trailing bytes).
    ///
    /// # Errors
    /// As [`DiffReader::new`].
    pub fn embedded_at(file: &'f std::fs::File, len: u64, start: u64) -> Result<Self> {
        let mut src = Source::positioned(file, len, file_ref_read_at);
        src.pos = start;
        Self::from_source(src, false)
    }
}

#[cfg(unix)]
fn file_ref_read_at(
    f: &mut &std::fs::File,
    buf: &mut [u8],
    at: u64,
    _: &mut u64,
) -> io::Result<usize> {
    rustix::io::pread(*f, buf, at).map_err(io::Error::from)
}

#[cfg(not(unix))]
fn file_ref_read_at(
    f: &mut &std::fs::File,
    buf: &mut [u8],
    at: u64,
    cur: &mut u64,
) -> io::Result<usize> {
    seek_read(f, buf, at, cur)
}

impl<R: Read> DiffReader<R> {
    pub(crate) fn from_source(mut src: Source<R>, standalone: bool) -> Result<Self> {
        let start = src.pos;
        let version = loop {
            match parse::diff_banner(src.avail()) {
                Ok((_, v)) => break v,
                Err(nom::Err::Incomplete(_)) => {
                    if !src.fill(12)? {
                        return Err(Error::at(parse::truncated_banner(src.avail()), start, None));
                    }
                }
                Err(nom::Err::Failure(PErr::Fatal(k))) => return Err(Error::at(k, start, None)),
                Err(_) => return Err(Error::invalid("bad banner")),
            }
        };
        src.consume(12);
        let mut r = DiffReader {
            body: Body {
                src,
                remaining: 0,
                rec_offset: 0,
                rec_index: 0,
                rec_tag: 0,
                rec_len: 0,
            },
            checker: Checker::new(version),
            pending: None,
            standalone,
            done: false,
            start,
            after_end: None,
        };
        loop {
            let offset = r.body.src.pos;
            let (is_meta, checked) = r.read_head()?;
            if is_meta {
                checked?;
            } else {
                r.pending = Some((offset, checked));
                return Ok(r);
            }
        }
    }

    /// Parses one head from the buffer, refilling as needed, and checks it. Parse errors are
    /// returned as errors; the check result is returned alongside whether the head is a
    /// metadata record, so that the caller can defer it.
    #[inline(always)]
    fn read_head(&mut self) -> Result<(bool, Result<Step>)> {
        let src = &mut self.body.src;
        let offset = src.pos;
        // A whole `w`/`z` head in the buffer that passes every check: no grammar, no error.
        let version = self.checker.version;
        if let Some((t, e, declared, used)) = parse::data_head(version, src.avail()) {
            if let Some(step) = self.checker.data_fast(t, e, declared) {
                src.consume(used);
                let trailing = if t == crate::format::tag::WRITE {
                    e.len
                } else {
                    0
                };
                self.body.remaining = trailing;
                self.body.rec_len = trailing;
                self.body.rec_offset = offset;
                self.body.rec_index = self.checker.index - 1;
                self.body.rec_tag = t;
                return Ok((false, Ok(step)));
            }
        }
        // An empty buffer cannot hold a head: refill before the first parse attempt.
        if src.avail().is_empty() && !src.refill_empty()? {
            return Err(eof_error(&self.checker, offset, src.avail()));
        }
        loop {
            let avail = src.avail();
            match parse::record_head(self.checker.version, avail) {
                Ok((rest, ph)) => {
                    let used = avail.len() - rest.len();
                    let is_meta = matches!(
                        ph.head,
                        parse::Head::FromSnap(_)
                            | parse::Head::ToSnap(_)
                            | parse::Head::Protected(_)
                            | parse::Head::Size(_)
                    );
                    let step = match self.checker.head(&ph, offset) {
                        Ok(step) => step,
                        Err(e) => return Ok((is_meta, Err(e))),
                    };
                    let (trailing, tag) = (ph.head.trailing_len(), ph.head.tag());
                    src.consume(used);
                    self.body.remaining = trailing;
                    self.body.rec_len = trailing;
                    self.body.rec_offset = offset;
                    self.body.rec_index = self.checker.index - 1;
                    self.body.rec_tag = tag;
                    return Ok((is_meta, Ok(step)));
                }
                Err(nom::Err::Incomplete(needed)) => {
                    let more = match needed {
                        nom::Needed::Size(n) => n.get(),
                        nom::Needed::Unknown => 1,
                    };
                    let have = src.avail().len();
                    if !src.fill(have + more)? {
                        return Err(eof_error(&self.checker, offset, src.avail()));
                    }
                }
                Err(nom::Err::Failure(PErr::Fatal(k))) | Err(nom::Err::Error(PErr::Fatal(k))) => {
                    return Err(self.checker.err(k, offset))
                }
                Err(_) => {
                    return Err(self
                        .checker
                        .err(ErrorKind::Invalid("unparsable record".into()), offset))
                }
            }
        }
    }

    #[inline(always)]
    fn step(&mut self) -> Result<Option<(u64, Step)>> {
        if let Some((offset, checked)) = self.pending.take() {
            return checked.map(|step| Some((offset, step)));
        }
        if self.done {
            return Ok(None);
        }
        if self.body.remaining > 0 {
            self.body.skip_rest()?;
        }
        let offset = self.body.src.pos;
        let step = self.read_head()?.1?;
        if step == Step::Meta {
            let tag = self.body.rec_tag;
            return Err(self.checker.err(ErrorKind::MetadataAfterData(tag), offset));
        }
        Ok(Some((offset, step)))
    }

    /// Reads to the end of the input and adds a warning when bytes follow `e`.
    fn check_trailing(&mut self) -> Result<()> {
        let at = self.body.src.pos;
        let n = self.body.src.skip(u64::MAX)?;
        self.checker.trailing(at, n);
        Ok(())
    }

    pub(crate) fn into_source(self) -> Source<R> {
        self.body.src
    }

    /// True once `e` has been read.
    pub fn ended(&self) -> bool {
        self.checker.ended
    }

    /// Byte offset of the next unread byte of the current `w` payload.
    pub(crate) fn payload_pos(&self) -> u64 {
        self.body.src.pos
    }

    /// The unread rest of the current `w` payload (empty after any other record).
    pub(crate) fn payload(&mut self) -> &mut dyn Read {
        &mut self.body
    }

    /// Skips `n` bytes of the current `w` payload.
    ///
    /// # Errors
    /// The input ends first, or `n` is more than is left of the payload.
    pub(crate) fn skip_payload(&mut self, n: u64) -> Result<()> {
        if n > self.body.remaining {
            return Err(Error::invalid("internal: skip past the end of a payload"));
        }
        let done = self.body.src.skip(n)?;
        self.body.remaining -= done;
        if done < n {
            return Err(self.body.truncated());
        }
        Ok(())
    }

    /// Absolute byte offset of the banner.
    pub fn start_offset(&self) -> u64 {
        self.start
    }
}

impl<R: Read> RecordSource for DiffReader<R> {
    fn version(&self) -> Version {
        self.checker.version
    }
    fn metadata(&self) -> &Metadata {
        &self.checker.meta
    }
    fn metadata_records(&self) -> &[(u64, u8)] {
        &self.checker.meta_records
    }
    fn warnings(&self) -> &[Warning] {
        &self.checker.warnings.list
    }
    fn more_warnings(&self) -> u64 {
        self.checker.warnings.more
    }
    fn position(&self) -> u64 {
        if let Some(end) = self.after_end {
            return end;
        }
        self.pending
            .as_ref()
            .map(|(o, _)| *o)
            .unwrap_or(self.body.src.pos.saturating_add(self.body.remaining))
    }

    #[inline]
    fn skim_data<F: FnMut(u64, u64, u8, Extent)>(&mut self, mut f: F) -> u64 {
        if self.pending.is_some() || self.done {
            return 0;
        }
        let src = &mut self.body.src;
        let left = self.body.remaining;
        if left > 0 {
            if left > (src.hi - src.lo) as u64 {
                return 0;
            }
            src.consume(left as usize);
            self.body.remaining = 0;
        }
        let version = self.checker.version;
        // The walk keeps its state in locals and writes it back once.
        let mut run = self.checker.run();
        let (avail, base) = (src.avail(), src.pos);
        let (mut at, mut n) = (0usize, 0);
        while let Some((t, e, declared, used)) = avail
            .get(at..)
            .and_then(|rest| parse::data_head(version, rest))
        {
            let payload = if t == crate::format::tag::WRITE {
                e.len
            } else {
                0
            };
            if payload > (avail.len() - at - used) as u64 || !run.step(t, e, declared) {
                break;
            }
            f(base + at as u64, run.index - 1, t, e);
            at += used + payload as usize;
            n += 1;
        }
        src.consume(at);
        self.checker.end_run(run);
        n
    }

    #[inline]
    fn next_item(&mut self) -> Result<Option<Item<'_>>> {
        let r = self.step();
        let (offset, step) = match r {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        let index = self.body.rec_index;
        let kind = match step {
            Step::Write(extent) => ItemKind::Write {
                extent,
                data: Payload::Stream(&mut self.body),
            },
            Step::Zero(e) => ItemKind::Zero(e),
            Step::Unknown { tag, len } => {
                if let Err(e) = self.body.skip_rest() {
                    self.done = true;
                    return Err(e);
                }
                ItemKind::Unknown { tag, len }
            }
            Step::Meta => return Err(Error::invalid("internal: metadata step after data")),
            Step::End => {
                self.done = true;
                self.after_end = Some(self.body.src.pos);
                if self.standalone {
                    self.check_trailing()?;
                }
                ItemKind::End
            }
        };
        Ok(Some(Item {
            offset,
            index,
            kind,
        }))
    }
}

/// An `rbd image v2` stream read from a [`Read`]: the header, then the embedded diffs in turn.
#[derive(Debug)]
pub struct ImageReader<R> {
    header: ImageHeader,
    warnings: Warnings,
    src: Option<Source<R>>,
    cur: Option<DiffReader<R>>,
    remaining: u64,
}

impl<R: Read> ImageReader<R> {
    /// Reads the image header up to the diff count.
    ///
    /// # Errors
    /// A bad banner, a truncated or invalid header, or an I/O error.
    pub fn new(inner: R) -> Result<Self> {
        Self::from_source(Source::new(inner))
    }

    /// Like [`ImageReader::new`] for a seekable input of `len` bytes positioned at its
    /// start; see [`DiffReader::seekable`].
    ///
    /// # Errors
    /// As [`ImageReader::new`].
    pub fn seekable(inner: R, len: u64) -> Result<Self>
    where
        R: Seek,
    {
        Self::from_source(Source::seekable(inner, len))
    }
}

impl ImageReader<std::fs::File> {
    /// [`ImageReader::seekable`] for a file of `len` bytes, read with positioned reads.
    ///
    /// # Errors
    /// As [`ImageReader::new`].
    pub fn from_file(file: std::fs::File, len: u64) -> Result<Self> {
        Self::from_source(Source::positioned(file, len, file_read_at))
    }
}

impl<R: Read> ImageReader<R> {
    fn from_source(mut src: Source<R>) -> Result<Self> {
        let mut hp = HeaderParser::new();
        loop {
            let offset = src.pos;
            match hp.step(src.avail(), offset)? {
                HStep::Consumed { used, skip } => {
                    src.consume(used);
                    if src.skip(skip)? < skip {
                        return Err(hp.body_truncated(offset, skip));
                    }
                }
                HStep::NeedMore => {
                    let have = src.avail().len();
                    if !src.fill(have + 1)? {
                        return Err(hp.eof_error(offset, src.avail()));
                    }
                }
                HStep::Done => break,
            }
        }
        let (header, warnings) = hp.finish();
        let remaining = header.diff_count;
        Ok(ImageReader {
            header,
            warnings,
            src: Some(src),
            cur: None,
            remaining,
        })
    }

    /// The image header.
    pub fn header(&self) -> &ImageHeader {
        &self.header
    }

    /// Warnings from the header (at most [`crate::error::MAX_WARNINGS`]).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings.list
    }

    /// How many more header warnings were found than [`ImageReader::warnings`] keeps.
    pub fn more_warnings(&self) -> u64 {
        self.warnings.more
    }

    /// The next embedded diff; the previous one is read to its end first.
    ///
    /// # Errors
    /// A problem in the previous or the next diff.
    pub fn next_diff(&mut self) -> Result<Option<&mut DiffReader<R>>> {
        if let Some(mut prev) = self.cur.take() {
            while prev.next_item()?.is_some() {}
            self.src = Some(prev.into_source());
        }
        if self.remaining == 0 {
            return Ok(None);
        }
        let Some(src) = self.src.take() else {
            return Ok(None);
        };
        self.remaining -= 1;
        let d = DiffReader::from_source(src, false)?;
        if d.version() != Version::V2 {
            return Err(crate::image::not_v2(d.start_offset()));
        }
        Ok(Some(self.cur.insert(d)))
    }
}
