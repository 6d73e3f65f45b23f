//! # rbddiff
//!
//! Offline toolkit for Ceph RBD `export-diff` backup files: parse and write `rbd diff v1`,
//! `rbd diff v2` and the `rbd export --export-format 2` image stream; inspect, merge,
//! verify, compress and apply them.
//!
//! Compressed inputs (seekable zstd archives written by [`compress`], or any zstd file) are read
//! transparently by [`input::Input`]; see [`zst`].
//!
//! ## Slice or stream?
//! - [`DiffSlice`] / [`ImageSlice`]: over a `&[u8]` such as a memory-mapped file
//!   ([`input::Input`]). Zero-copy: `w` payloads are borrowed sub-slices.
//! - [`DiffReader`] / [`ImageReader`]: over any [`std::io::Read`] (stdin, pipes, zstd). A payload
//!   is handed out as a reader and never buffered whole.
//!
//! Both drivers run the same nom grammar and the same checks, and give the same records,
//! errors and byte offsets. [`RecordSource`] lets code walk either.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod apply;
mod check;
pub mod compress;
pub mod create;
pub mod error;
pub mod extent;
pub mod format;
mod image;
pub mod input;
pub mod inspect;
pub mod merge;
pub mod output;
mod parse;
pub mod slice;
pub mod stream;
pub mod sums;
pub mod verify;
pub mod write;
pub mod zst;

pub use error::{Error, ErrorKind, Result, Warning, WarningKind};
pub use format::{Extent, ImageHeader, Metadata, Record, Version};
pub use slice::{DiffSlice, ImageSlice, Records};
pub use stream::{DiffReader, ImageReader, Item, ItemKind, Payload, RecordSource};
pub use write::{DiffWriter, WriteOptions};
