//! # rbddiff
//!
//! Offline toolkit for Ceph RBD `export-diff` backup files: parse and write `rbd diff v1`,
//! `rbd diff v2` and the `rbd export --export-format 2` image stream; inspect, merge,
//! verify, compress and apply them; [`workflow`] keeps a directory of backups ([`archive`])
//! of images (backup, restore and prune, through the `rbd` CLI: [`rbd`]).
//!
//! Compressed inputs (seekable zstd archives written by [`compress`], or any zstd file) are read
//! transparently by [`input::Input`]; see [`zst`].
//!
//! The command line is the feature `cli` (on by default); a library user can leave out its
//! dependencies (clap, indicatif, signal-hook) with `default-features = false`.
//!
//! ## Examples
//!
//! Write a diff and parse it back (a real one would come from `rbd export-diff`, opened with
//! [`input::Input::open`]):
//!
//! ```
//! use rbddiff::{DiffSlice, DiffWriter, Extent, Metadata, Record, Version};
//!
//! # fn main() -> rbddiff::Result<()> {
//! let meta = Metadata {
//!     from_snap: None, // a full diff
//!     to_snap: Some(b"mon".to_vec()),
//!     image_size: Some(1 << 20),
//!     ..Metadata::default()
//! };
//! let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta)?;
//! w.write_data(4096, &[7u8; 512])?;
//! w.zero(Extent { offset: 65536, len: 4096 })?;
//! let bytes = w.finish()?;
//!
//! let diff = DiffSlice::parse(&bytes)?;
//! assert_eq!(diff.metadata().to_snap.as_deref(), Some(&b"mon"[..]));
//! let mut written = 0;
//! for r in diff.records() {
//!     let (_offset, record) = r?; // errors name the byte offset and record
//!     if let Record::Write { data, .. } = record {
//!         written += data.len();
//!     }
//! }
//! assert_eq!(written, 512);
//! # Ok(())
//! # }
//! ```
//!
//! Merge two diffs of a chain into one, as `rbd merge-diff` would (a later record wins; the
//! chain is checked first: the second must start where the first ends):
//!
//! ```
//! use rbddiff::merge::{merge, MergeInput, MergeOptions};
//! use rbddiff::{DiffSlice, DiffWriter, Metadata, Version};
//!
//! # fn main() -> rbddiff::Result<()> {
//! let diff = |from: Option<&str>, to: &str, byte: u8| -> rbddiff::Result<Vec<u8>> {
//!     let meta = Metadata {
//!         from_snap: from.map(|f| f.as_bytes().to_vec()),
//!         to_snap: Some(to.as_bytes().to_vec()),
//!         image_size: Some(1 << 20),
//!         ..Metadata::default()
//!     };
//!     let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta)?;
//!     w.write_data(0, &[byte; 4096])?;
//!     w.finish()
//! };
//! let (full, incr) = (diff(None, "mon", 1)?, diff(Some("mon"), "tue", 2)?);
//! let mut inputs = [MergeInput::bytes("full", &full), MergeInput::bytes("incr", &incr)];
//! let mut out = Vec::new();
//! let stats = merge(&mut inputs, &mut out, &MergeOptions::default())?;
//! assert_eq!((stats.from_snap, stats.to_snap.as_deref()), (None, Some("tue")));
//! assert_eq!(stats.data_bytes, 4096); // the second write replaced the first
//!
//! // Given the other way round, the chain check refuses them.
//! let mut wrong = [MergeInput::bytes("incr", &incr), MergeInput::bytes("full", &full)];
//! assert!(merge(&mut wrong, Vec::new(), &MergeOptions::default()).is_err());
//! # let _ = DiffSlice::parse(&out)?;
//! # Ok(())
//! # }
//! ```
//!
//! Stream a diff from any reader, such as stdin (`std::io::stdin().lock()`), never holding
//! a payload in memory:
//!
//! ```
//! use std::io::Read;
//! use rbddiff::{DiffReader, DiffWriter, ItemKind, Metadata, RecordSource, Version};
//!
//! /// Counts the bytes a diff writes and zeroes, reading it once, forward.
//! fn summarize(r: impl Read) -> rbddiff::Result<(u64, u64)> {
//!     let mut diff = DiffReader::new(r)?;
//!     let (mut written, mut zeroed) = (0, 0);
//!     while let Some(item) = diff.next_item()? {
//!         match item.kind {
//!             ItemKind::Write { extent, .. } => written += extent.len, // payload skipped
//!             ItemKind::Zero(extent) => zeroed += extent.len,
//!             _ => {}
//!         }
//!     }
//!     Ok((written, zeroed))
//! }
//!
//! # fn main() -> rbddiff::Result<()> {
//! # let meta = Metadata { image_size: Some(1 << 20), ..Metadata::default() };
//! # let mut w = DiffWriter::new(Vec::new(), Version::V2, &meta)?;
//! # w.write_data(0, &[1u8; 8192])?;
//! # w.zero(rbddiff::Extent { offset: 8192, len: 4096 })?;
//! # let bytes = w.finish()?;
//! // In a program: summarize(std::io::stdin().lock())
//! assert_eq!(summarize(&bytes[..])?, (8192, 4096));
//! # Ok(())
//! # }
//! ```
//!
//! ## Slice or stream?
//! - [`DiffSlice`] / [`ImageSlice`]: over a `&[u8]` in memory. Zero-copy: `w` payloads are
//!   borrowed sub-slices.
//! - [`DiffReader`] / [`ImageReader`]: over any [`std::io::Read`] (stdin, pipes, zstd). A payload
//!   is handed out as a reader and never buffered whole.
//!
//! Both drivers run the same nom grammar and the same checks, and give the same records,
//! errors and byte offsets. [`RecordSource`] lets code walk either. For a regular file whose
//! records only need to be listed, [`DiffReader::from_file`] reads the heads with positioned
//! reads and never reads a payload it is not asked for. Files are never memory-mapped: every
//! command reads them this way ([`input::Input`]), so a file's pages never count in the
//! process's RSS and a file truncated while it is read is an error naming it.
//!
//! ## Errors and warnings
//!
//! What is an error and what is a warning follows what rbd's readers do:
//! anything that makes `rbd merge-diff` or `rbd import-diff` fail, or that would make them
//! apply something other than what the file says, is an error; what they accept silently
//! is a warning. Errors stop the walk and carry the byte offset of the offending record (or
//! field) and its index (0 = first record after the banner); `testdata/err/README.md` has a
//! file for each case.
//!
//! | case | result | why |
//! |---|---|---|
//! | unknown banner | error `BadBanner` | every reader compares the banner byte for byte |
//! | input ends inside the banner or a record | error `Truncated` | the record cannot be read |
//! | input ends at a record boundary before `e` | error `MissingEnd` | `e` is mandatory; a cut file often ends on a boundary |
//! | unknown tag in v1 (including `p`) | error `UnknownTag` | v1 has no length fields: nothing after it can be parsed |
//! | snapshot name > 4096 bytes | error `NameTooLong` | rbd refuses it (EINVAL); checked before the name is read |
//! | `offset + length` overflows | error `ExtentOverflow` | not an extent |
//! | `w`/`z` of length 0 | error `ZeroLength` | merge-diff rejects it |
//! | data record starting before the end of the previous one | error `OutOfOrder` | merge-diff requires ascending, non-overlapping records; import-diff's result would depend on its concurrency |
//! | `f`/`t`/`p`/`s` after a data record | error `MetadataAfterData` | merge-diff accepts only `w`/`z`/`e` there |
//! | no `s` before the first data record or `e` | error `MissingSize` | the image size is needed to apply or merge (rbd always writes it) |
//! | extent ending past `s` | error `ExtentPastSize` | export-diff clips to the size; import-diff would write past the end |
//! | metadata record seen twice | warning `DuplicateMetadata` | import-diff applies each again; the later one wins |
//! | v2 length field of a known record disagrees with its body | warning `LengthMismatch` | Ceph ignores it (Ceph 16.2 writes 8 for the 1-byte `p`) |
//! | unknown v2 tag | warning `UnknownTagSkipped` | skipped by its length, as rbd import does |
//! | bytes after `e` of a standalone diff | warning `TrailingBytes` | ignored by import-diff and merge-diff |
//!
//! An unknown v2 record ends the header section: metadata after it is reported as
//! metadata after data. In an image stream the embedded diffs must be v2, and bytes after
//! the last diff are ignored, as `rbd import` does.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The format core (src/core/) depends on nothing else in the crate; its modules keep
// their old paths (`crate::format`, `rbddiff::slice`, ...).
mod core;
use self::core::{check, image, parse};
pub use self::core::{error, format, slice, stream, write};

pub mod apply;
pub mod archive;
pub mod compress;
pub mod create;
pub mod dirlist;
pub mod dirlock;
pub mod explode;
pub mod extent;
pub mod input;
pub mod inspect;
pub mod journal;
pub mod merge;
pub mod nbd;
pub mod output;
mod parallel;
pub mod positioned;
pub mod progress;
pub mod rate;
pub mod rbd;
mod readahead;
pub mod replicate;
pub mod size;
pub mod smallfile;
pub mod sums;
mod sweep;
pub mod utc;
pub mod verify;
pub mod workflow;
pub mod zst;

pub use error::{Error, ErrorKind, Result, Warning, WarningKind};
pub use format::{Extent, ImageHeader, Metadata, Record, Version};
pub use slice::{DiffSlice, ImageSlice, Records};
pub use stream::{DiffReader, ImageReader, Item, ItemKind, Payload, RecordSource};
pub use write::{DiffWriter, WriteOptions};
