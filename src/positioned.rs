//! Bytes read at offsets: a slice in memory, or a regular file read with positioned reads
//! (`pread`) into small buffers, so that a file's pages never count in the process's memory
//! and a file truncated while it is read gives an error, not a fault; or any other source
//! of [`ReadAt`] (an object in a store, read with ranged requests).

use std::fs::File;
use std::io;

/// Largest piece read at once by [`Positioned::for_each`].
pub const READ_PIECE: usize = 1 << 20;

/// Bytes read at offsets from a source other than memory or a file.
pub trait ReadAt: Sync + std::fmt::Debug {
    /// Fills `buf` with the bytes at `at`, all of them (fewer are there: `UnexpectedEof`).
    ///
    /// # Errors
    /// The range is not all there, or reading fails.
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
}

/// Bytes to read at offsets: borrowed from memory, the first `len` bytes of a file, or of
/// another [`ReadAt`] source.
#[derive(Clone, Copy, Debug)]
pub enum Positioned<'a> {
    /// Bytes in memory.
    Mem(&'a [u8]),
    /// A regular file of `len` bytes (its length when it was opened).
    File(&'a File, u64),
    /// `len` bytes of another source.
    Other(&'a dyn ReadAt, u64),
}

impl<'a> From<&'a [u8]> for Positioned<'a> {
    fn from(b: &'a [u8]) -> Self {
        Positioned::Mem(b)
    }
}

impl<'a> From<&'a Vec<u8>> for Positioned<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        Positioned::Mem(b)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Positioned<'a> {
    fn from(b: &'a [u8; N]) -> Self {
        Positioned::Mem(b)
    }
}

/// The error for a read past the end of what is there (a file shorter than when it was
/// opened, or a range past the end).
fn short(at: u64, want: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{want} bytes at byte {at} are past the end of the file"),
    )
}

impl<'a> Positioned<'a> {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Positioned::Mem(b) => b.len() as u64,
            Positioned::File(_, n) | Positioned::Other(_, n) => *n,
        }
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `at`.
    ///
    /// # Errors
    /// The range ends past [`Positioned::len`] or past the file's end (`UnexpectedEof`), or
    /// reading fails.
    pub fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let end = at
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| short(at, buf.len()))?;
        match self {
            Positioned::Mem(b) => {
                buf.copy_from_slice(&b[at as usize..end as usize]);
                Ok(())
            }
            Positioned::File(f, _) => {
                let mut done = 0;
                while done < buf.len() {
                    let pos = at + done as u64;
                    match rustix::io::pread(*f, &mut buf[done..], pos) {
                        Ok(0) => return Err(short(pos, buf.len() - done)),
                        Ok(n) => done += n,
                        Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
            Positioned::Other(r, _) => r.read_exact_at(buf, at),
        }
    }

    /// The `len` bytes at `at`: borrowed from memory, or read into `scratch` (resized to
    /// `len`: the caller bounds it).
    ///
    /// # Errors
    /// As [`Positioned::read_exact_at`].
    pub fn get<'s>(self, at: u64, len: usize, scratch: &'s mut Vec<u8>) -> io::Result<&'s [u8]>
    where
        'a: 's,
    {
        match self {
            Positioned::Mem(b) => {
                let end = at
                    .checked_add(len as u64)
                    .filter(|&e| e <= b.len() as u64)
                    .ok_or_else(|| short(at, len))?;
                Ok(&b[at as usize..end as usize])
            }
            Positioned::File(..) | Positioned::Other(..) => {
                // Grown exactly: a scratch buffer kept for the next read stays its size.
                scratch.clear();
                scratch.reserve_exact(len);
                scratch.resize(len, 0);
                self.read_exact_at(scratch, at)?;
                Ok(scratch)
            }
        }
    }

    /// Hands the `len` bytes at `at` to `f` in order, in pieces of at most [`READ_PIECE`]
    /// (a file is read through one buffer of that size).
    ///
    /// # Errors
    /// As [`Positioned::read_exact_at`], or `f`'s error.
    pub fn for_each(
        &self,
        at: u64,
        len: u64,
        f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        match self {
            Positioned::Mem(b) => {
                let end = at
                    .checked_add(len)
                    .filter(|&e| e <= b.len() as u64)
                    .ok_or_else(|| short(at, len as usize))?;
                b[at as usize..end as usize]
                    .chunks(READ_PIECE)
                    .try_for_each(f)
            }
            Positioned::File(..) | Positioned::Other(..) => {
                let mut buf = vec![0u8; (len as usize).min(READ_PIECE)];
                let mut done = 0u64;
                while done < len {
                    let n = ((len - done) as usize).min(READ_PIECE);
                    self.read_exact_at(&mut buf[..n], at + done)?;
                    f(&buf[..n])?;
                    done += n as u64;
                }
                Ok(())
            }
        }
    }

    /// A reader of the bytes from `at` to the end.
    pub fn reader(&self, at: u64) -> Reader<'a> {
        Reader {
            src: *self,
            pos: at,
        }
    }
}

/// A forward reader over [`Positioned`] bytes (each read is one positioned read).
#[derive(Debug)]
pub struct Reader<'a> {
    src: Positioned<'a>,
    pos: u64,
}

impl io::Read for Reader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = (self.src.len().saturating_sub(self.pos)).min(out.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.src.read_exact_at(&mut out[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
