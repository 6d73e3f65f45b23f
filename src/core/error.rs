//! Errors and warnings: every problem carries the file, byte offset and record index.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error with its position in the input (file, byte offset, record index) when known.
///
/// One pointer wide; the details live in [`ErrorKind`].
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    file: Option<PathBuf>,
    offset: Option<u64>,
    record: Option<u64>,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An operating-system I/O error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The stream does not start with a known banner.
    #[error(
        "bad banner \"{found}\", expected {expected}{}",
        .hint.map_or(String::new(), |h| format!(": {h}"))
    )]
    BadBanner {
        /// Up to the first 19 bytes found, escaped.
        found: String,
        /// What was expected, for the message.
        expected: &'static str,
        /// What the input seems to be instead, and what to do (see [`crate::format::foreign`]).
        hint: Option<&'static str>,
    },
    /// The input ended inside a record (or inside the banner).
    #[error("truncated {what}")]
    Truncated {
        /// What was being read: "'w' record", "banner", ...
        what: String,
    },
    /// The input ended at a record boundary before the `e` record.
    #[error("missing end record 'e' (input ends after the last complete record)")]
    MissingEnd,
    /// A tag byte that this format version does not define (fatal in v1).
    #[error("unknown tag byte 0x{:02x} ({})", .0, printable(*.0))]
    UnknownTag(u8),
    /// A snapshot name (or image-meta string) longer than the allowed maximum.
    #[error("{what} is {len} bytes long, more than the limit of {max}")]
    NameTooLong {
        /// Which field.
        what: &'static str,
        /// The declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// `offset + length` does not fit in 64 bits.
    #[error("'{}' extent offset {offset} + length {len} overflows 64 bits", *.tag as char)]
    ExtentOverflow {
        /// Record tag.
        tag: u8,
        /// Extent offset.
        offset: u64,
        /// Extent length.
        len: u64,
    },
    /// A `w` or `z` record of length zero (rbd merge-diff rejects these).
    #[error("zero-length '{}' record at image offset {offset}", *.tag as char)]
    ZeroLength {
        /// Record tag.
        tag: u8,
        /// Extent offset.
        offset: u64,
    },
    /// A data record that starts before the end of the previous one.
    #[error("'{}' record at image offset {offset} starts before the end {prev_end} of the previous record (out of order or overlapping)", *.tag as char)]
    OutOfOrder {
        /// Record tag.
        tag: u8,
        /// Its image offset.
        offset: u64,
        /// End of the previous data record.
        prev_end: u64,
    },
    /// A metadata record (`f`, `t`, `s`, `p`) after the first data record.
    #[error("metadata record '{}' after data records", *.0 as char)]
    MetadataAfterData(u8),
    /// No `s` record before the data records or the end.
    #[error("missing image size record 's'")]
    MissingSize,
    /// A data record reaching past the image size given by `s`.
    #[error("'{}' extent {offset}+{len} ends past the image size {size}", *.tag as char)]
    ExtentPastSize {
        /// Record tag.
        tag: u8,
        /// Extent offset.
        offset: u64,
        /// Extent length.
        len: u64,
        /// Image size from the `s` record.
        size: u64,
    },
    /// A structural problem not covered by a more specific kind.
    #[error("{0}")]
    Invalid(String),
    /// Two diffs that do not form a chain.
    #[error("{0}")]
    ChainBreak(String),
    /// Another run holds a conflicting lock on an archive ([`crate::dirlock`]), or on the
    /// destination image of a sync or replay (`replicate::lock_destination`); the message
    /// names the archive or image and the holders.
    #[error("{0}")]
    Locked(String),
}

impl ErrorKind {
    /// A stable one-word name of the kind, for JSON reports: `io`, `bad_banner`, `truncated`,
    /// `missing_end`, `unknown_tag`, `name_too_long`, `extent_overflow`, `zero_length`,
    /// `out_of_order`, `metadata_after_data`, `missing_size`, `extent_past_size`, `invalid`,
    /// `chain_break` or `locked`.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::Io(_) => "io",
            ErrorKind::BadBanner { .. } => "bad_banner",
            ErrorKind::Truncated { .. } => "truncated",
            ErrorKind::MissingEnd => "missing_end",
            ErrorKind::UnknownTag(_) => "unknown_tag",
            ErrorKind::NameTooLong { .. } => "name_too_long",
            ErrorKind::ExtentOverflow { .. } => "extent_overflow",
            ErrorKind::ZeroLength { .. } => "zero_length",
            ErrorKind::OutOfOrder { .. } => "out_of_order",
            ErrorKind::MetadataAfterData(_) => "metadata_after_data",
            ErrorKind::MissingSize => "missing_size",
            ErrorKind::ExtentPastSize { .. } => "extent_past_size",
            ErrorKind::Invalid(_) => "invalid",
            ErrorKind::ChainBreak(_) => "chain_break",
            ErrorKind::Locked(_) => "locked",
        }
    }
}

fn printable(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        "not printable".to_string()
    }
}

impl Error {
    /// A new error of this kind with no position.
    pub fn new(kind: ErrorKind) -> Self {
        Error(Box::new(Inner {
            kind,
            file: None,
            offset: None,
            record: None,
        }))
    }

    /// A new error at a byte offset and record index.
    pub fn at(kind: ErrorKind, offset: u64, record: Option<u64>) -> Self {
        let mut e = Error::new(kind);
        e.0.offset = Some(offset);
        e.0.record = record;
        e
    }

    /// An [`ErrorKind::Invalid`] error with a message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::new(ErrorKind::Invalid(msg.into()))
    }

    /// One error for the problems of several inputs, so that all of them are reported at
    /// once: `None` for none, the only one as it is, else an [`ErrorKind::Invalid`] listing
    /// each on its own line.
    pub fn of_inputs(mut errors: Vec<Error>) -> Option<Error> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            n => {
                let list: Vec<String> = errors.iter().map(|e| format!("\n  {e}")).collect();
                Some(Error::invalid(format!(
                    "{n} inputs have problems:{}",
                    list.concat()
                )))
            }
        }
    }

    /// Attaches the file name (kept if one is already set).
    pub fn with_file(mut self, file: impl AsRef<Path>) -> Self {
        if self.0.file.is_none() {
            self.0.file = Some(file.as_ref().to_path_buf());
        }
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// The file, when known.
    pub fn file(&self) -> Option<&Path> {
        self.0.file.as_deref()
    }

    /// Byte offset in the input where the offending record (or field) starts.
    pub fn offset(&self) -> Option<u64> {
        self.0.offset
    }

    /// Index of the offending record (0 = first record after the banner).
    pub fn record(&self) -> Option<u64> {
        self.0.record
    }

    /// True for operating-system I/O errors (as opposed to bad input).
    pub fn is_io(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Io(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.0.file {
            write!(f, "{}: ", file.display())?;
        }
        match (self.0.offset, self.0.record) {
            (Some(o), Some(r)) => write!(f, "byte {o}, record {r}: ")?,
            (Some(o), None) => write!(f, "byte {o}: ")?,
            _ => {}
        }
        write!(f, "{}", self.0.kind)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({self})")
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        // An rbddiff error carried through an io::Error (e.g. from a payload reader) comes back out whole.
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(Ok(inner)) = e.into_inner().map(|b| b.downcast::<Error>()) {
                return *inner;
            }
            return Error::invalid("internal: lost error");
        }
        Error::new(ErrorKind::Io(e))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match e.kind() {
            ErrorKind::Io(io) => io.kind(),
            ErrorKind::Truncated { .. } | ErrorKind::MissingEnd => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// How many warnings are kept for one diff (or one image header); further ones are only
/// counted (see `more_warnings` on the readers), so hostile input cannot fill memory with them.
pub const MAX_WARNINGS: usize = 100;

/// A problem that readers tolerate (rbd accepts the input) but that is worth reporting.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    /// Byte offset of the record concerned.
    pub offset: u64,
    /// Record index, when the warning is about one record.
    pub record: Option<u64>,
    /// What was found.
    pub kind: WarningKind,
}

/// Kinds of [`Warning`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WarningKind {
    /// A metadata record seen twice; the later value wins, as in `rbd import-diff`.
    DuplicateMetadata {
        /// The tag.
        tag: char,
    },
    /// A v2 record whose length field disagrees with its body (Ceph ignores it for known tags).
    LengthMismatch {
        /// The tag.
        tag: char,
        /// Length field value.
        declared: u64,
        /// Length of the body as parsed.
        expected: u64,
    },
    /// A v2 record with an unknown tag, skipped by its length.
    UnknownTagSkipped {
        /// The tag byte.
        tag: u8,
        /// Body length skipped.
        len: u64,
    },
    /// Bytes after the `e` record of a standalone diff (ignored by rbd).
    TrailingBytes {
        /// How many.
        len: u64,
    },
    /// Image-meta pairs of an image stream header beyond what is kept in memory
    /// ([`crate::format::MAX_META_KEPT`] bytes); they are read and checked, not listed.
    MetaNotKept {
        /// Pairs not kept.
        pairs: u64,
        /// Their key and value bytes.
        bytes: u64,
    },
}

/// The message of [`WarningKind::is_ceph16_p_length`] warnings (after offset and record).
pub const CEPH16_P_LENGTH: &str =
    "'p' record length field 8 for a 1-byte body (as written by Ceph 16.x)";

impl WarningKind {
    /// True for the 8-byte length field of `p` records that Ceph 16 writes in every v2 diff:
    /// known Ceph behaviour, which rbd reads. Human output reports these once (see
    /// [`ceph16_note`]); JSON lists each.
    pub fn is_ceph16_p_length(&self) -> bool {
        matches!(
            self,
            WarningKind::LengthMismatch {
                tag: 'p',
                declared: 8,
                expected: 1
            }
        )
    }
}

/// The one line of human output for the Ceph 16 `p` length warnings of `files` files.
pub fn ceph16_note(files: usize) -> String {
    let what = if files == 1 {
        "1 file has".to_string()
    } else {
        format!("{files} files have")
    };
    format!(
        "note: {what} Ceph 16's 8-byte 'p' length field (known Ceph behaviour, read by rbd; \
         each is listed with --json)"
    )
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}", self.offset)?;
        if let Some(r) = self.record {
            write!(f, ", record {r}")?;
        }
        write!(f, ": ")?;
        match &self.kind {
            WarningKind::DuplicateMetadata { tag } => {
                write!(f, "duplicate '{tag}' record (the later one wins)")
            }
            WarningKind::LengthMismatch {
                tag,
                declared,
                expected,
            } => {
                if self.kind.is_ceph16_p_length() {
                    f.write_str(CEPH16_P_LENGTH)
                } else {
                    write!(
                        f,
                        "'{tag}' record length field {declared}, body is {expected} bytes"
                    )
                }
            }
            WarningKind::UnknownTagSkipped { tag, len } => {
                write!(f, "unknown tag byte 0x{tag:02x} skipped ({len} bytes)")
            }
            WarningKind::TrailingBytes { len } => {
                write!(f, "{len} trailing bytes after 'e' (ignored)")
            }
            WarningKind::MetaNotKept { pairs, bytes } => write!(
                f,
                "{pairs} image-meta pairs ({bytes} bytes) beyond the first {} KiB not kept",
                crate::format::MAX_META_KEPT >> 10
            ),
        }
    }
}
