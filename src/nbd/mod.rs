//! A read-only NBD server over diff chains and archives (`rbddiff serve`).
//!
//! [`proto`] speaks the protocol (fixed newstyle handshake; `NBD_OPT_GO`, `INFO`, `LIST`,
//! `ABORT`, `EXPORT_NAME`, `STRUCTURED_REPLY`, `LIST_META_CONTEXT`/`SET_META_CONTEXT` for
//! `base:allocation`; commands `READ`, `BLOCK_STATUS`, `FLUSH`, `DISC`; writes, trims and
//! write-zeroes refused with `EPERM`) over any stream, against an [`Exports`] table.
//! [`view`] is an export: the image of a snapshot as a chain of diff files gives it, read
//! through the merged extent map without materialising it. [`server`] listens on TCP or a
//! Unix socket, one thread per client, and stops on SIGINT/SIGTERM.

pub mod exports;
pub mod map;
pub mod proto;
pub mod server;
pub mod view;

use std::sync::Arc;

/// `base:allocation` status bit: the block is not allocated.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` status bit: the block reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// One export: a read-only image.
pub trait Export: Send + Sync {
    /// The image size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the image bytes at `offset` (the range lies within the image).
    ///
    /// # Errors
    /// A file of the chain cannot be read or a compressed frame is corrupt.
    fn read(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()>;
    /// The `base:allocation` status of `[offset, offset + len)` (within the image) as
    /// consecutive `(length, flags)` runs from `offset`, each non-empty; they may cover less
    /// than `len`, never more.
    ///
    /// # Errors
    /// As [`Export::read`] (data may be read to find zero blocks).
    fn status(&self, offset: u64, len: u64) -> crate::Result<Vec<(u64, u32)>>;
}

/// The exports a server offers.
pub trait Exports: Send + Sync {
    /// The export names, for `NBD_OPT_LIST`.
    fn names(&self) -> Vec<String>;
    /// Opens the export `name` (`""`: the default one).
    ///
    /// # Errors
    /// A message for the client: no such export, or it cannot be opened.
    fn open(&self, name: &str) -> std::result::Result<Arc<dyn Export>, String>;
}
