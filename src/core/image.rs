//! The `rbd image v2` header (`rbd export --export-format 2`), parsed step by step so the
//! slice and stream drivers share it.

use std::collections::HashMap;

use crate::check::Warnings;
use crate::error::{Error, ErrorKind, Result, Warning, WarningKind};
use crate::format::{tag, ImageHeader, MAX_META_KEPT};
use crate::parse::{self, ImageHead, PErr};

/// Outcome of one parser step.
pub(crate) enum HStep {
    /// `used` bytes were parsed; the next `skip` bytes are the body of an unknown record.
    Consumed {
        /// Bytes parsed.
        used: usize,
        /// Bytes to skip after them.
        skip: u64,
    },
    /// The input ended inside the next item.
    NeedMore,
    /// The diff count has been read; embedded diffs follow.
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Banner,
    Records,
    Diffs,
    Done,
}

/// What one kept image-meta pair costs in the [`MAX_META_KEPT`] budget beyond its bytes.
const META_PAIR_COST: usize = 64;

/// Push parser for the image header.
pub(crate) struct HeaderParser {
    state: State,
    header: ImageHeader,
    warnings: Warnings,
    index: u64,
    /// Position in `header.meta` of each kept key, and the budget used.
    meta_at: HashMap<Vec<u8>, usize>,
    meta_bytes: usize,
    /// Pairs (and their bytes) not kept.
    meta_dropped: (u64, u64),
}

impl HeaderParser {
    pub fn new() -> Self {
        HeaderParser {
            state: State::Banner,
            header: ImageHeader::default(),
            warnings: Warnings::default(),
            index: 0,
            meta_at: HashMap::new(),
            meta_bytes: 0,
            meta_dropped: (0, 0),
        }
    }

    fn fail(&self, kind: ErrorKind, offset: u64) -> Error {
        let rec = (self.state == State::Records).then_some(self.index);
        Error::at(kind, offset, rec)
    }

    /// Parses the next item of `input`, which starts at absolute `offset`.
    pub fn step(&mut self, input: &[u8], offset: u64) -> Result<HStep> {
        let parsed = match self.state {
            State::Banner => parse::image_banner(input).map(|(r, ())| (r, None, None)),
            State::Records => parse::image_head(input).map(|(r, h)| (r, Some(h), None)),
            State::Diffs => parse::image_diffs_start(input).map(|(r, n)| (r, None, Some(n))),
            State::Done => return Ok(HStep::Done),
        };
        let (rest, head, count) = match parsed {
            Ok(ok) => ok,
            Err(nom::Err::Incomplete(_)) => return Ok(HStep::NeedMore),
            Err(nom::Err::Failure(PErr::Fatal(k))) | Err(nom::Err::Error(PErr::Fatal(k))) => {
                return Err(self.fail(k, offset))
            }
            Err(_) => {
                return Err(self.fail(ErrorKind::Invalid("unparsable image header".into()), offset))
            }
        };
        let used = input.len() - rest.len();
        let mut skip = 0;
        match (self.state, head, count) {
            (State::Banner, _, _) => self.state = State::Records,
            (State::Records, Some(h), _) => {
                if let ImageHead::Unknown { len, .. } = h {
                    skip = len;
                }
                self.record(h, offset);
                self.index += 1;
            }
            (State::Diffs, _, Some(n)) => {
                self.header.diff_count = n;
                self.state = State::Done;
            }
            _ => {}
        }
        Ok(HStep::Consumed { used, skip })
    }

    fn record(&mut self, h: ImageHead<'_>, offset: u64) {
        let mismatch = |tag: u8, declared: u64, expected: u64, w: &mut Warnings| {
            if declared != expected {
                w.push(Warning {
                    offset,
                    record: Some(self.index),
                    kind: WarningKind::LengthMismatch {
                        tag: tag as char,
                        declared,
                        expected,
                    },
                });
            }
        };
        match h {
            ImageHead::Value {
                tag: t,
                value,
                declared,
            } => {
                mismatch(t, declared, 8, &mut self.warnings);
                let slot = match t {
                    tag::ORDER => &mut self.header.order,
                    tag::FEATURES => &mut self.header.features,
                    tag::STRIPE_UNIT => &mut self.header.stripe_unit,
                    _ => &mut self.header.stripe_count,
                };
                *slot = Some(value);
            }
            ImageHead::Meta {
                key,
                value,
                declared,
            } => {
                let expected = 8 + key.len() as u64 + value.len() as u64;
                mismatch(tag::META, declared, expected, &mut self.warnings);
                self.meta(key, value);
            }
            ImageHead::Unknown { tag, len } => self.warnings.push(Warning {
                offset,
                record: Some(self.index),
                kind: WarningKind::UnknownTagSkipped { tag, len },
            }),
            ImageHead::End => self.state = State::Diffs,
        }
    }

    /// Keeps an image-meta pair within [`MAX_META_KEPT`]: a later pair with the same key
    /// replaces the earlier one in place (the later value wins, as in `rbd import`).
    fn meta(&mut self, key: &[u8], value: &[u8]) {
        let cost = |k: &[u8], v: &[u8]| k.len() + v.len() + META_PAIR_COST;
        if let Some(&at) = self.meta_at.get(key) {
            let old = &self.header.meta[at];
            self.meta_bytes -= cost(&old.0, &old.1);
            if self.meta_bytes + cost(key, value) <= MAX_META_KEPT {
                self.meta_bytes += cost(key, value);
                self.header.meta[at].1 = value.to_vec();
                return;
            }
            // The earlier value is not the last one: it goes too.
            self.header.meta.remove(at);
            self.meta_at.remove(key);
            for i in self.meta_at.values_mut() {
                if *i > at {
                    *i -= 1;
                }
            }
        } else if self.meta_bytes + cost(key, value) <= MAX_META_KEPT {
            self.meta_bytes += cost(key, value);
            self.meta_at.insert(key.to_vec(), self.header.meta.len());
            self.header.meta.push((key.to_vec(), value.to_vec()));
            return;
        }
        self.meta_dropped.0 += 1;
        self.meta_dropped.1 += (key.len() + value.len()) as u64;
    }

    /// The error for input that ends while the next item is incomplete.
    pub fn eof_error(&self, offset: u64, partial: &[u8]) -> Error {
        let what = match self.state {
            State::Banner => "image banner".to_string(),
            State::Records => match partial.first() {
                Some(&t) => format!("image header {}", crate::check::record_name(t)),
                None => "image header (no 'E' record)".to_string(),
            },
            _ => "image diffs banner and count".to_string(),
        };
        self.fail(ErrorKind::Truncated { what }, offset)
    }

    /// The error for an unknown header record at `offset` whose `len`-byte body runs past
    /// the end of the input.
    pub fn body_truncated(&self, offset: u64, len: u64) -> Error {
        Error::at(
            ErrorKind::Truncated {
                what: format!("body of an unknown image header record ({len} bytes)"),
            },
            offset,
            Some(self.index.saturating_sub(1)),
        )
    }

    pub fn finish(mut self) -> (ImageHeader, Warnings) {
        let (pairs, bytes) = self.meta_dropped;
        if pairs > 0 {
            self.warnings.list.push(Warning {
                offset: 0,
                record: None,
                kind: WarningKind::MetaNotKept { pairs, bytes },
            });
        }
        (self.header, self.warnings)
    }
}

/// The error for an embedded diff that is not `rbd diff v2`.
pub(crate) fn not_v2(offset: u64) -> Error {
    Error::at(
        ErrorKind::Invalid("an image stream may only embed 'rbd diff v2' diffs".into()),
        offset,
        None,
    )
}
