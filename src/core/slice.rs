//! Zero-copy driver over a byte slice in memory.
//!
//! Payloads are borrowed sub-slices of the input; walking the records reads only the record
//! heads, never the payload pages. Use [`crate::stream`] for pipes and stdin instead.

use crate::check::{eof_error, record_name, Checker, Step, Warnings};
use crate::error::{Error, ErrorKind, Result, Warning};
use crate::format::{ImageHeader, Metadata, Record, Version};
use crate::image::{HStep, HeaderParser};
use crate::parse::{self, PErr};

/// A diff (v1 or v2) over borrowed bytes; metadata parsed eagerly, data records lazily.
#[derive(Debug, Clone)]
pub struct DiffSlice<'a> {
    bytes: &'a [u8],
    /// Absolute offset of `bytes[0]` in the file (non-zero for a diff inside an image stream).
    base: u64,
    data_start: usize,
    checker: Checker,
    standalone: bool,
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl<'a> DiffSlice<'a> {
    /// Parses the banner and metadata records of a standalone diff.
    ///
    /// # Errors
    /// A bad banner, a truncated or invalid metadata record.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        Self::parse_at(bytes, 0, true)
    }

    /// Parses a diff that starts at absolute offset `base` (bytes start at the banner).
    /// `standalone` diffs report bytes after `e` as a warning; embedded ones do not.
    pub(crate) fn parse_at(bytes: &'a [u8], base: u64, standalone: bool) -> Result<Self> {
        let (mut rest, version) = match parse::diff_banner(bytes) {
            Ok(ok) => ok,
            Err(nom::Err::Incomplete(_)) => {
                return Err(Error::at(parse::truncated_banner(bytes), base, None))
            }
            Err(nom::Err::Failure(PErr::Fatal(k))) => return Err(Error::at(k, base, None)),
            Err(_) => {
                return Err(Error::at(
                    ErrorKind::Invalid("bad banner".into()),
                    base,
                    None,
                ))
            }
        };
        let mut checker = Checker::new(version);
        loop {
            let pos = bytes.len() - rest.len();
            let offset = base + pos as u64;
            let (next, ph) = head_at(&checker, rest, offset)?;
            if !matches!(
                ph.head,
                parse::Head::FromSnap(_)
                    | parse::Head::ToSnap(_)
                    | parse::Head::Protected(_)
                    | parse::Head::Size(_)
            ) {
                return Ok(DiffSlice {
                    bytes,
                    base,
                    data_start: pos,
                    checker,
                    standalone,
                });
            }
            checker.head(&ph, offset)?;
            rest = next;
        }
    }

    /// `v1` or `v2`.
    pub fn version(&self) -> Version {
        self.checker.version
    }

    /// Snapshot names, protection flag and image size.
    pub fn metadata(&self) -> &Metadata {
        &self.checker.meta
    }

    /// Warnings found in the header records (at most [`crate::error::MAX_WARNINGS`], then
    /// the bytes after `e`).
    pub fn warnings(&self) -> &[Warning] {
        &self.checker.warnings.list
    }

    /// How many more warnings the header records gave than [`DiffSlice::warnings`] keeps.
    pub fn more_warnings(&self) -> u64 {
        self.checker.warnings.more
    }

    /// Byte offset (in the file) and tag of every metadata record.
    pub fn metadata_records(&self) -> &[(u64, u8)] {
        &self.checker.meta_records
    }

    /// Absolute offset of the banner.
    pub fn start_offset(&self) -> u64 {
        self.base
    }

    /// Iterator over the data records (`w`, `z`, unknown v2 tags) and the final `e`.
    pub fn records(&self) -> Records<'a> {
        Records {
            bytes: self.bytes,
            base: self.base,
            pos: self.data_start,
            checker: self.checker.clone(),
            done: false,
            standalone: self.standalone,
        }
    }

    /// Walks every record, checking it, and returns the offset just past `e`.
    ///
    /// # Errors
    /// The first problem found.
    pub fn end_offset(&self) -> Result<u64> {
        let mut recs = self.records();
        for r in recs.by_ref() {
            r?;
        }
        Ok(recs.offset())
    }
}

/// Parses one head at `rest` (absolute `offset`), turning nom outcomes into errors.
fn head_at<'b>(
    checker: &Checker,
    rest: &'b [u8],
    offset: u64,
) -> Result<(&'b [u8], parse::ParsedHead<'b>)> {
    match parse::record_head(checker.version, rest) {
        Ok(ok) => Ok(ok),
        Err(nom::Err::Incomplete(_)) => Err(eof_error(checker, offset, rest)),
        Err(nom::Err::Failure(PErr::Fatal(k))) | Err(nom::Err::Error(PErr::Fatal(k))) => {
            Err(checker.err(k, offset))
        }
        Err(_) => Err(checker.err(ErrorKind::Invalid("unparsable record".into()), offset)),
    }
}

/// Iterator over the data records of a [`DiffSlice`]: yields `(byte offset, record)`.
///
/// Stops after `e` or after the first error.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    base: u64,
    pos: usize,
    checker: Checker,
    done: bool,
    standalone: bool,
}

impl<'a> Records<'a> {
    /// Absolute byte offset of the next record (after `e`: just past it).
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Index of the next record (0 = first record after the banner).
    pub fn index(&self) -> u64 {
        self.checker.index
    }

    /// Warnings found so far (header records included; at most
    /// [`crate::error::MAX_WARNINGS`], then the bytes after `e`).
    pub fn warnings(&self) -> &[Warning] {
        &self.checker.warnings.list
    }

    /// How many more warnings were found than [`Records::warnings`] keeps.
    pub fn more_warnings(&self) -> u64 {
        self.checker.warnings.more
    }

    /// True once `e` has been read.
    pub fn ended(&self) -> bool {
        self.checker.ended
    }

    #[inline(always)]
    fn step(&mut self) -> Result<(u64, Record<'a>)> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let offset = self.offset();
        // A `w`/`z` head that passes every check, with all of its payload present: no
        // grammar, no error (anything else takes the general path below).
        if let Some((t, e, declared, used)) = parse::data_head(self.checker.version, rest) {
            let payload = if t == crate::format::tag::WRITE {
                rest.get(used..)
                    .and_then(|r| r.get(..usize::try_from(e.len).ok()?))
            } else {
                Some(&[][..])
            };
            if let Some(data) = payload {
                if let Some(step) = self.checker.data_fast(t, e, declared) {
                    self.pos += used + data.len();
                    let rec = match step {
                        Step::Write(e) => Record::Write {
                            offset: e.offset,
                            data,
                        },
                        _ => Record::Zero(e),
                    };
                    return Ok((offset, rec));
                }
            }
        }
        let (next, ph) = head_at(&self.checker, rest, offset)?;
        let step = self.checker.head(&ph, offset)?;
        let head_len = rest.len() - next.len();
        let body = |n: u64| -> Result<&'a [u8]> {
            let start = self.pos + head_len;
            let end = start
                .checked_add(to_usize(n))
                .filter(|&e| e <= self.bytes.len());
            match end {
                Some(end) => Ok(self.bytes.get(start..end).unwrap_or_default()),
                None => Err(Error::at(
                    ErrorKind::Truncated {
                        what: format!("{} payload ({n} bytes)", record_name(ph.head.tag())),
                    },
                    offset,
                    Some(self.checker.index - 1),
                )),
            }
        };
        let (rec, body_len) = match step {
            Step::Meta => {
                return Err(self
                    .checker
                    .err(ErrorKind::MetadataAfterData(ph.head.tag()), offset))
            }
            Step::Write(e) => (
                Record::Write {
                    offset: e.offset,
                    data: body(e.len)?,
                },
                e.len,
            ),
            Step::Zero(e) => (Record::Zero(e), 0),
            Step::Unknown { tag, len } => (
                Record::Unknown {
                    tag,
                    data: body(len)?,
                },
                len,
            ),
            Step::End => (Record::End, 0),
        };
        self.pos += head_len + to_usize(body_len);
        if rec == Record::End {
            self.done = true;
            if self.standalone {
                let trailing = (self.bytes.len() - self.pos) as u64;
                let at = self.offset();
                self.checker.trailing(at, trailing);
            }
        }
        Ok((offset, rec))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u64, Record<'a>)>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// An `rbd image v2` stream over borrowed bytes: the header and the embedded v2 diffs.
#[derive(Debug, Clone)]
pub struct ImageSlice<'a> {
    bytes: &'a [u8],
    header: ImageHeader,
    diffs_start: usize,
    warnings: Warnings,
}

impl<'a> ImageSlice<'a> {
    /// Parses the image header up to and including the diff count.
    ///
    /// # Errors
    /// A bad banner or a truncated/invalid header record.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut hp = HeaderParser::new();
        let mut pos = 0usize;
        loop {
            let rest = bytes.get(pos..).unwrap_or_default();
            let offset = pos as u64;
            match hp.step(rest, offset)? {
                HStep::Consumed { used, skip } => {
                    pos += used;
                    if skip > 0 {
                        let end = pos
                            .checked_add(to_usize(skip))
                            .filter(|&e| e <= bytes.len());
                        pos = end.ok_or_else(|| hp.body_truncated(offset, skip))?;
                    }
                }
                HStep::NeedMore => return Err(hp.eof_error(pos as u64, rest)),
                HStep::Done => break,
            }
        }
        let (header, warnings) = hp.finish();
        Ok(ImageSlice {
            bytes,
            header,
            diffs_start: pos,
            warnings,
        })
    }

    /// The image header.
    pub fn header(&self) -> &ImageHeader {
        &self.header
    }

    /// Offset of the first embedded diff.
    pub(crate) fn diffs_start(&self) -> usize {
        self.diffs_start
    }

    /// Warnings from the header (unknown tags, length mismatches; at most
    /// [`crate::error::MAX_WARNINGS`]).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings.list
    }

    /// How many more header warnings were found than [`ImageSlice::warnings`] keeps.
    pub fn more_warnings(&self) -> u64 {
        self.warnings.more
    }

    /// The embedded diffs, each walked to its end to find the next.
    pub fn diffs(&self) -> EmbeddedDiffs<'a> {
        EmbeddedDiffs {
            bytes: self.bytes,
            pos: self.diffs_start,
            remaining: self.header.diff_count,
        }
    }
}

/// Iterator over the diffs of an [`ImageSlice`]; stops after the first error.
#[derive(Debug, Clone)]
pub struct EmbeddedDiffs<'a> {
    bytes: &'a [u8],
    pos: usize,
    remaining: u64,
}

impl<'a> Iterator for EmbeddedDiffs<'a> {
    type Item = Result<DiffSlice<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let r = (|| {
            let rest = self.bytes.get(self.pos..).unwrap_or_default();
            let d = DiffSlice::parse_at(rest, self.pos as u64, false)?;
            // Checked before walking the records, as the stream driver does.
            if d.version() != Version::V2 {
                return Err(crate::image::not_v2(d.start_offset()));
            }
            let end = d.end_offset()?;
            self.pos = to_usize(end);
            Ok(d)
        })();
        if r.is_err() {
            self.remaining = 0;
        }
        Some(r)
    }
}

impl Records<'_> {
    pub(crate) fn checker_ref(&self) -> &Checker {
        &self.checker
    }
}
