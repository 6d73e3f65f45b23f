//! The format core: the wire formats, their grammar and checks, the slice and stream
//! drivers, the image stream header and the writer. It depends on nothing else in the crate
//! (every other part is built on it); `lib.rs` re-exports its modules at their old paths
//! (`crate::format`, `crate::slice`, ...).

pub(crate) mod check;
pub mod error;
pub mod format;
pub(crate) mod image;
pub(crate) mod parse;
pub mod slice;
pub mod stream;
pub mod write;
