//! Reading a small sidecar file (a `.sums` sidecar, a state file) without trusting what is
//! at its path: a symbolic link is not followed, only a regular file is read (a FIFO or a
//! device is refused without blocking), and a file larger than the caller's limit is refused
//! before anything is read.

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::OFlags;

use crate::error::{Error, Result};

/// Reads the whole regular file at `path`, at most `max` bytes.
///
/// Returns `Ok(None)` when nothing is at `path`.
///
/// # Errors
/// `path` is a symbolic link, not a regular file, larger than `max` bytes, or cannot be
/// read; the error names `path`.
pub fn read_small(path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
    let err = |e: io::Error| Error::from(e).with_file(path);
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(Error::invalid("is a symbolic link (not followed)").with_file(path))
        }
        Err(e) => return Err(err(e)),
    };
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(Error::invalid("is not a regular file").with_file(path));
    }
    let too_big = |len: u64| {
        Error::invalid(format!(
            "is {len} bytes, more than the limit of {max} bytes"
        ))
        .with_file(path)
    };
    if meta.len() > max {
        return Err(too_big(meta.len()));
    }
    // The file may grow while it is read: never read more than the limit.
    let mut v = Vec::with_capacity(meta.len() as usize);
    f.take(max.saturating_add(1))
        .read_to_end(&mut v)
        .map_err(err)?;
    if v.len() as u64 > max {
        return Err(too_big(v.len() as u64));
    }
    Ok(Some(v))
}
