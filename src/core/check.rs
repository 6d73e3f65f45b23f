//! Record-order and limit checks shared by the slice and stream drivers.
//!
//! Which problems are errors and which are warnings, and why: see the crate docs.

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result, Warning, WarningKind, MAX_WARNINGS};
use crate::format::{tag, Extent, Metadata, Version};
use crate::parse::{Head, ParsedHead};

/// What a head turned out to be, without borrowing the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Meta,
    Write(Extent),
    Zero(Extent),
    Unknown { tag: u8, len: u64 },
    End,
}

/// The warnings of one diff or image header: the first [`MAX_WARNINGS`] are kept, the
/// rest only counted, so that a hostile input of millions of tolerated oddities costs no
/// memory beyond its count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Warnings {
    /// The warnings kept, in input order.
    pub list: Vec<Warning>,
    /// How many more were found and not kept.
    pub more: u64,
}

impl Warnings {
    /// Keeps `w` while fewer than [`MAX_WARNINGS`] are kept, else counts it.
    pub fn push(&mut self, w: Warning) {
        if self.list.len() < MAX_WARNINGS {
            self.list.push(w);
        } else {
            self.more += 1;
        }
    }
}

/// "and N more warnings of these kinds", for warnings counted but not kept.
pub(crate) fn more_warnings(n: u64) -> String {
    format!("and {n} more warnings of these kinds (not listed)")
}

/// The checks of [`Checker::data_fast`] over a run of `w`/`z` records, its state in locals.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run {
    prev_end: u64,
    /// Index of the next record.
    pub index: u64,
    size: Option<u64>,
}

impl Run {
    /// Advances past a `w` or `z` head that passes every check and gives no warning; false,
    /// with nothing changed, for anything else.
    #[inline(always)]
    pub fn step(&mut self, t: u8, e: Extent, declared: Option<u64>) -> bool {
        let body = if t == tag::WRITE {
            16u64.saturating_add(e.len)
        } else {
            16
        };
        let Some(end) = e.offset.checked_add(e.len) else {
            return false;
        };
        let fits = self.size.is_some_and(|size| end <= size);
        let ok =
            fits && e.len != 0 && e.offset >= self.prev_end && declared.is_none_or(|d| d == body);
        if ok {
            self.prev_end = end;
            self.index += 1;
        }
        ok
    }
}

/// Validation state of one diff stream.
#[derive(Debug, Clone)]
pub(crate) struct Checker {
    pub version: Version,
    pub meta: Metadata,
    /// Byte offset and tag of every metadata record seen (shared: a checker is cloned for
    /// each walk of the records, and no metadata record follows the header).
    pub meta_records: Arc<Vec<(u64, u8)>>,
    pub warnings: Warnings,
    /// Index of the next record.
    pub index: u64,
    in_data: bool,
    prev_end: u64,
    pub ended: bool,
}

impl Checker {
    pub fn new(version: Version) -> Self {
        Checker {
            version,
            meta: Metadata::default(),
            meta_records: Arc::default(),
            warnings: Warnings::default(),
            index: 0,
            in_data: false,
            prev_end: 0,
            ended: false,
        }
    }

    pub fn err(&self, kind: ErrorKind, offset: u64) -> Error {
        Error::at(kind, offset, Some(self.index))
    }

    fn warn(&mut self, offset: u64, kind: WarningKind) {
        self.warnings.push(Warning {
            offset,
            record: Some(self.index),
            kind,
        });
    }

    /// Checks one head found at `offset` and advances the record index.
    pub fn head(&mut self, ph: &ParsedHead<'_>, offset: u64) -> Result<Step> {
        let step = self.check(ph, offset)?;
        self.index += 1;
        Ok(step)
    }

    /// [`Checker::head`] for a `w` or `z` head (from [`crate::parse::data_head`]) that passes
    /// every check and gives no warning; `None`, with nothing changed, for anything else, so
    /// that the caller takes the general path (which builds the error or warning).
    #[inline(always)]
    pub fn data_fast(&mut self, t: u8, e: Extent, declared: Option<u64>) -> Option<Step> {
        let mut run = self.run();
        if !run.step(t, e, declared) {
            return None;
        }
        self.end_run(run);
        Some(if t == tag::WRITE {
            Step::Write(e)
        } else {
            Step::Zero(e)
        })
    }

    /// What [`Checker::data_fast`] checks against, to walk a run of records in locals.
    #[inline(always)]
    pub fn run(&self) -> Run {
        Run {
            prev_end: self.prev_end,
            index: self.index,
            size: self.meta.image_size,
        }
    }

    /// Takes back the state of a run (its records passed [`Run::step`]).
    #[inline(always)]
    pub fn end_run(&mut self, run: Run) {
        if run.index != self.index {
            self.in_data = true;
            self.prev_end = run.prev_end;
            self.index = run.index;
        }
    }

    fn check(&mut self, ph: &ParsedHead<'_>, offset: u64) -> Result<Step> {
        let head = &ph.head;
        let t = head.tag();
        if let (Some(declared), false) = (ph.declared, matches!(head, Head::Unknown { .. })) {
            let expected = head.body_len();
            if declared != expected {
                self.warn(
                    offset,
                    WarningKind::LengthMismatch {
                        tag: t as char,
                        declared,
                        expected,
                    },
                );
            }
        }
        match *head {
            Head::FromSnap(_) | Head::ToSnap(_) | Head::Protected(_) | Head::Size(_) => {
                if self.in_data {
                    return Err(self.err(ErrorKind::MetadataAfterData(t), offset));
                }
                let dup = self.meta_records.iter().any(|&(_, seen)| seen == t);
                if dup {
                    self.warn(offset, WarningKind::DuplicateMetadata { tag: t as char });
                }
                Arc::make_mut(&mut self.meta_records).push((offset, t));
                match *head {
                    Head::FromSnap(n) => self.meta.from_snap = Some(n.to_vec()),
                    Head::ToSnap(n) => self.meta.to_snap = Some(n.to_vec()),
                    Head::Protected(p) => self.meta.protected = Some(p),
                    Head::Size(s) => self.meta.image_size = Some(s),
                    _ => {}
                }
                Ok(Step::Meta)
            }
            Head::Write(e) | Head::Zero(e) => {
                self.in_data = true;
                let size = self
                    .meta
                    .image_size
                    .ok_or_else(|| self.err(ErrorKind::MissingSize, offset))?;
                if e.len == 0 {
                    return Err(self.err(
                        ErrorKind::ZeroLength {
                            tag: t,
                            offset: e.offset,
                        },
                        offset,
                    ));
                }
                let end = e.end().ok_or_else(|| {
                    self.err(
                        ErrorKind::ExtentOverflow {
                            tag: t,
                            offset: e.offset,
                            len: e.len,
                        },
                        offset,
                    )
                })?;
                if e.offset < self.prev_end {
                    return Err(self.err(
                        ErrorKind::OutOfOrder {
                            tag: t,
                            offset: e.offset,
                            prev_end: self.prev_end,
                        },
                        offset,
                    ));
                }
                if end > size {
                    return Err(self.err(
                        ErrorKind::ExtentPastSize {
                            tag: t,
                            offset: e.offset,
                            len: e.len,
                            size,
                        },
                        offset,
                    ));
                }
                self.prev_end = end;
                Ok(if t == tag::WRITE {
                    Step::Write(e)
                } else {
                    Step::Zero(e)
                })
            }
            Head::Unknown { tag, len } => {
                self.warn(offset, WarningKind::UnknownTagSkipped { tag, len });
                Ok(Step::Unknown { tag, len })
            }
            Head::End => {
                if self.meta.image_size.is_none() {
                    return Err(self.err(ErrorKind::MissingSize, offset));
                }
                self.ended = true;
                Ok(Step::End)
            }
        }
    }

    /// Adds the "bytes after `e`" warning, kept even past the cap: there is at most one,
    /// and `verify` counts it as a problem.
    pub fn trailing(&mut self, offset: u64, len: u64) {
        if len > 0 {
            self.warnings.list.push(Warning {
                offset,
                record: None,
                kind: WarningKind::TrailingBytes { len },
            });
        }
    }
}

/// The error for input that ends at `offset` while `need` is being read.
pub(crate) fn eof_error(checker: &Checker, offset: u64, partial: &[u8]) -> Error {
    let kind = match partial.first() {
        None => ErrorKind::MissingEnd,
        Some(&t) => ErrorKind::Truncated {
            what: record_name(t),
        },
    };
    checker.err(kind, offset)
}

/// "'w' record" or "record with tag 0x.." for messages.
pub(crate) fn record_name(t: u8) -> String {
    if t.is_ascii_graphic() {
        format!("'{}' record", t as char)
    } else {
        format!("record with tag byte 0x{t:02x}")
    }
}
