//! The nom grammar, written once with streaming combinators and shared by both drivers.
//!
//! A "head" is a record without its payload: the slice driver then borrows the payload, the
//! stream driver hands it out as a reader. `Incomplete` means "need more bytes".

use nom::bytes::streaming::take;
use nom::error::{ErrorKind as NomKind, ParseError};
use nom::number::streaming::{le_u32, le_u64, le_u8};
use nom::IResult;

use crate::error::ErrorKind;
use crate::format::{tag, Extent, Version, IMAGE_DIFFS_BANNER, MAX_META_LEN, MAX_NAME_LEN};

/// Grammar errors: nom's own (never surfaced) or a semantic failure.
#[derive(Debug)]
pub(crate) enum PErr {
    Nom,
    Fatal(ErrorKind),
}

impl<I> ParseError<I> for PErr {
    fn from_error_kind(_: I, _: NomKind) -> Self {
        PErr::Nom
    }
    fn append(_: I, _: NomKind, other: Self) -> Self {
        other
    }
}

pub(crate) type PResult<'a, T> = IResult<&'a [u8], T, PErr>;

fn fatal<T>(kind: ErrorKind) -> Result<T, nom::Err<PErr>> {
    Err(nom::Err::Failure(PErr::Fatal(kind)))
}

/// A diff record without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head<'a> {
    FromSnap(&'a [u8]),
    ToSnap(&'a [u8]),
    Protected(bool),
    Size(u64),
    Write(Extent),
    Zero(Extent),
    /// v2 record with an unknown tag; `len` body bytes follow.
    Unknown {
        tag: u8,
        len: u64,
    },
    End,
}

impl Head<'_> {
    pub(crate) fn tag(&self) -> u8 {
        match self {
            Head::FromSnap(_) => tag::FROM_SNAP,
            Head::ToSnap(_) => tag::TO_SNAP,
            Head::Protected(_) => tag::PROTECTED,
            Head::Size(_) => tag::SIZE,
            Head::Write(_) => tag::WRITE,
            Head::Zero(_) => tag::ZERO,
            Head::Unknown { tag, .. } => *tag,
            Head::End => tag::END,
        }
    }

    /// Body length as the record's structure defines it (what a v2 length field should say).
    pub(crate) fn body_len(&self) -> u64 {
        match self {
            Head::FromSnap(n) | Head::ToSnap(n) => 4 + n.len() as u64,
            Head::Protected(_) => 1,
            Head::Size(_) => 8,
            Head::Write(e) => 16u64.saturating_add(e.len),
            Head::Zero(_) => 16,
            Head::Unknown { len, .. } => *len,
            Head::End => 0,
        }
    }

    /// Bytes that follow the head in the stream (payload or skipped body).
    pub(crate) fn trailing_len(&self) -> u64 {
        match self {
            Head::Write(e) => e.len,
            Head::Unknown { len, .. } => *len,
            _ => 0,
        }
    }
}

/// A parsed head with the v2 length field (None in v1 and for `e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParsedHead<'a> {
    pub head: Head<'a>,
    pub declared: Option<u64>,
}

/// `rbd diff v1\n` or `rbd diff v2\n`.
pub(crate) fn diff_banner(input: &[u8]) -> PResult<'_, Version> {
    let (rest, b) = take(12usize)(input)?;
    match b {
        b"rbd diff v1\n" => Ok((rest, Version::V1)),
        b"rbd diff v2\n" => Ok((rest, Version::V2)),
        _ => fatal(bad_banner(b, "'rbd diff v1\\n' or 'rbd diff v2\\n'")),
    }
}

pub(crate) fn bad_banner(found: &[u8], expected: &'static str) -> ErrorKind {
    ErrorKind::BadBanner {
        found: found.escape_ascii().to_string(),
        expected,
        hint: crate::format::foreign(found),
    }
}

/// The error for an input that ends inside the banner (`avail` is what there is of it):
/// an empty input says so, and a few bytes of a foreign format's magic (a short gzip, xz
/// or bzip2 file) are a bad banner with the hint of [`crate::format::foreign`].
pub(crate) fn truncated_banner(avail: &[u8]) -> ErrorKind {
    if crate::format::foreign(avail).is_some() {
        return bad_banner(avail, "'rbd diff v1\\n' or 'rbd diff v2\\n'");
    }
    ErrorKind::Truncated {
        what: if avail.is_empty() {
            "banner: the input is empty (0 bytes), not an rbd diff".into()
        } else {
            "banner".into()
        },
    }
}

fn name(what: &'static str, max: u32) -> impl Fn(&[u8]) -> PResult<'_, &[u8]> {
    move |input| {
        let (i, n) = le_u32(input)?;
        if n > max {
            return fatal(ErrorKind::NameTooLong {
                what,
                len: n.into(),
                max: max.into(),
            });
        }
        take(n)(i)
    }
}

fn extent(input: &[u8]) -> PResult<'_, Extent> {
    let (i, offset) = le_u64(input)?;
    let (i, len) = le_u64(i)?;
    Ok((i, Extent { offset, len }))
}

/// One diff record head in the given version.
pub(crate) fn record_head(version: Version, input: &[u8]) -> PResult<'_, ParsedHead<'_>> {
    let (i, t) = le_u8(input)?;
    if t == tag::END {
        return Ok((
            i,
            ParsedHead {
                head: Head::End,
                declared: None,
            },
        ));
    }
    let (i, declared) = match version {
        Version::V1 => (i, None),
        Version::V2 => {
            let (i, l) = le_u64(i)?;
            (i, Some(l))
        }
    };
    let (i, head) = match (t, version) {
        (tag::FROM_SNAP, _) => {
            let (i, n) = name("start snapshot name", MAX_NAME_LEN)(i)?;
            (i, Head::FromSnap(n))
        }
        (tag::TO_SNAP, _) => {
            let (i, n) = name("end snapshot name", MAX_NAME_LEN)(i)?;
            (i, Head::ToSnap(n))
        }
        // Ceph reads `p` as one byte whatever its length field says (16.2 writes 8).
        (tag::PROTECTED, Version::V2) => {
            let (i, b) = le_u8(i)?;
            (i, Head::Protected(b != 0))
        }
        (tag::SIZE, _) => {
            let (i, s) = le_u64(i)?;
            (i, Head::Size(s))
        }
        (tag::WRITE, _) => {
            let (i, e) = extent(i)?;
            (i, Head::Write(e))
        }
        (tag::ZERO, _) => {
            let (i, e) = extent(i)?;
            (i, Head::Zero(e))
        }
        (t, Version::V2) => (
            i,
            Head::Unknown {
                tag: t,
                len: declared.unwrap_or(0),
            },
        ),
        (t, Version::V1) => return fatal(ErrorKind::UnknownTag(t)),
    };
    Ok((i, ParsedHead { head, declared }))
}

/// One record of an image stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageHead<'a> {
    /// `O`, `T`, `U` or `C` with its le64 value.
    Value { tag: u8, value: u64, declared: u64 },
    /// `M` key/value.
    Meta {
        key: &'a [u8],
        value: &'a [u8],
        declared: u64,
    },
    /// Unknown tag, `len` bytes to skip.
    Unknown { tag: u8, len: u64 },
    /// `E`.
    End,
}

/// One image-header record.
pub(crate) fn image_head(input: &[u8]) -> PResult<'_, ImageHead<'_>> {
    let (i, t) = le_u8(input)?;
    if t == tag::IMAGE_END {
        return Ok((i, ImageHead::End));
    }
    let (i, declared) = le_u64(i)?;
    match t {
        tag::ORDER | tag::FEATURES | tag::STRIPE_UNIT | tag::STRIPE_COUNT => {
            let (i, value) = le_u64(i)?;
            Ok((
                i,
                ImageHead::Value {
                    tag: t,
                    value,
                    declared,
                },
            ))
        }
        tag::META => {
            let (i, key) = name("image-meta key", MAX_META_LEN)(i)?;
            let (i, value) = name("image-meta value", MAX_META_LEN)(i)?;
            Ok((
                i,
                ImageHead::Meta {
                    key,
                    value,
                    declared,
                },
            ))
        }
        _ => Ok((
            i,
            ImageHead::Unknown {
                tag: t,
                len: declared,
            },
        )),
    }
}

/// `rbd image diffs v2\n` and the le64 diff count.
pub(crate) fn image_diffs_start(input: &[u8]) -> PResult<'_, u64> {
    let (i, b) = take(IMAGE_DIFFS_BANNER.len())(input)?;
    if b != IMAGE_DIFFS_BANNER {
        return fatal(bad_banner(b, "'rbd image diffs v2\\n'"));
    }
    le_u64(i)
}

/// `rbd image v2\n`.
pub(crate) fn image_banner(input: &[u8]) -> PResult<'_, ()> {
    let (i, b) = take(crate::format::IMAGE_BANNER.len())(input)?;
    if b != crate::format::IMAGE_BANNER {
        return fatal(bad_banner(b, "'rbd image v2\\n'"));
    }
    Ok((i, ()))
}

/// Bytes of a `w` or `z` head: tag, (v2: le64 length,) le64 offset, le64 length.
pub(crate) const fn data_head_len(version: Version) -> usize {
    match version {
        Version::V1 => 17,
        Version::V2 => 25,
    }
}

/// A `w` or `z` head decoded straight from the bytes, for the records that make up nearly
/// all of a diff: the tag, the extent, the v2 length field and the head's length. `None`
/// when `input` starts with any other record or holds less than a whole head; the grammar
/// above then decides (same result, and the only place errors are made).
#[inline(always)]
pub(crate) fn data_head(
    version: Version,
    input: &[u8],
) -> Option<(u8, Extent, Option<u64>, usize)> {
    let n = data_head_len(version);
    let head = input.get(..n)?;
    let t = head[0];
    if t != tag::WRITE && t != tag::ZERO {
        return None;
    }
    let le = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (declared, at) = match version {
        Version::V1 => (None, 1),
        Version::V2 => (Some(le(1)), 9),
    };
    Some((t, Extent::new(le(at), le(at + 8)), declared, n))
}
