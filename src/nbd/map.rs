//! The merged extent map of a served chain: the data extents of the image in offset order,
//! each with the input and offset its payload is read from (zero extents and gaps are not
//! stored: they read as zeros).
//!
//! A map of up to [`MEM_EXTENTS`] extents is kept in memory (32 bytes each). A larger one is
//! written once, while it is built, to an unlinked temporary file of fixed 32-byte entries
//! and searched there with positioned reads, so a long fine-grained chain costs page cache,
//! not process memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};

/// The most extents a map keeps in memory before it moves to a temporary file (32 MiB).
pub const MEM_EXTENTS: usize = 1 << 20;

/// Bytes of one entry on disk.
const ENTRY: usize = 32;
/// Entries read at once when a disk map is walked forward.
const BLOCK_ENTRIES: usize = 256;

/// A data extent `[start, end)` whose first byte is byte `src` of input `input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ext {
    /// First image byte.
    pub start: u64,
    /// One past the last image byte.
    pub end: u64,
    /// Offset of the payload of `start` in the input (for an archive, in its diff stream).
    pub src: u64,
    /// Index of the input.
    pub input: u32,
}

impl Ext {
    fn encode(&self) -> [u8; ENTRY] {
        let mut b = [0; ENTRY];
        b[..8].copy_from_slice(&self.start.to_le_bytes());
        b[8..16].copy_from_slice(&self.end.to_le_bytes());
        b[16..24].copy_from_slice(&self.src.to_le_bytes());
        b[24..28].copy_from_slice(&self.input.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Ext {
        let u = |r: std::ops::Range<usize>| {
            let mut a = [0; 8];
            a[..r.len()].copy_from_slice(&b[r]);
            u64::from_le_bytes(a)
        };
        Ext {
            start: u(0..8),
            end: u(8..16),
            src: u(16..24),
            input: u(24..28) as u32,
        }
    }
}

/// Builds a [`Map`] from extents given in ascending order.
pub struct Builder {
    limit: usize,
    mem: Vec<Ext>,
    disk: Option<(BufWriter<File>, usize)>,
    failed: Option<Error>,
}

impl Builder {
    /// A builder that keeps at most `limit` extents in memory ([`MEM_EXTENTS`] normally).
    pub fn new(limit: usize) -> Builder {
        Builder {
            limit,
            mem: Vec::new(),
            disk: None,
            failed: None,
        }
    }

    /// Adds the next extent (ascending, not overlapping the ones before). An I/O error is
    /// kept and returned by [`Builder::finish`].
    pub fn push(&mut self, e: Ext) {
        if self.failed.is_some() {
            return;
        }
        if let Err(err) = self.try_push(e) {
            self.failed = Some(err);
        }
    }

    fn try_push(&mut self, e: Ext) -> Result<()> {
        if self.disk.is_none() && self.mem.len() >= self.limit {
            let mut w = BufWriter::with_capacity(1 << 20, tempfile::tempfile()?);
            for m in self.mem.drain(..) {
                w.write_all(&m.encode())?;
            }
            self.disk = Some((w, self.limit));
            self.mem = Vec::new();
        }
        match &mut self.disk {
            Some((w, n)) => {
                w.write_all(&e.encode())?;
                *n += 1;
            }
            None => self.mem.push(e),
        }
        Ok(())
    }

    /// The map.
    ///
    /// # Errors
    /// Writing the temporary file failed.
    pub fn finish(self) -> Result<Map> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        Ok(match self.disk {
            None => Map::Mem(self.mem),
            Some((w, n)) => Map::Disk {
                file: w.into_inner().map_err(|e| Error::from(e.into_error()))?,
                len: n,
            },
        })
    }
}

/// The data extents of a served image, in memory or in a temporary file.
#[derive(Debug)]
pub enum Map {
    /// In memory.
    Mem(Vec<Ext>),
    /// `len` entries in an unlinked temporary file.
    Disk {
        /// The file.
        file: File,
        /// Entries in it.
        len: usize,
    },
}

impl Map {
    /// Extents in the map.
    pub fn len(&self) -> usize {
        match self {
            Map::Mem(v) => v.len(),
            Map::Disk { len, .. } => *len,
        }
    }

    /// Whether the map holds no extent (the image reads as zeros).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the map lives in a temporary file.
    pub fn on_disk(&self) -> bool {
        matches!(self, Map::Disk { .. })
    }

    fn read_at(file: &File, i: usize, n: usize, buf: &mut Vec<u8>) -> Result<()> {
        buf.resize(n * ENTRY, 0);
        file.read_exact_at(buf, (i * ENTRY) as u64)
            .map_err(|e| Error::from(e).with_file("the served map's temporary file"))
    }

    /// Calls `f` with every extent that ends after `offset`, in order, until it returns
    /// `false`.
    ///
    /// # Errors
    /// Reading a disk map failed, or `f` failed.
    pub fn walk_from(&self, offset: u64, f: &mut dyn FnMut(&Ext) -> Result<bool>) -> Result<()> {
        match self {
            Map::Mem(v) => {
                for e in &v[v.partition_point(|e| e.end <= offset)..] {
                    if !f(e)? {
                        break;
                    }
                }
                Ok(())
            }
            Map::Disk { file, len } => {
                let mut buf = Vec::new();
                // Binary search for the first entry ending after `offset`.
                let (mut lo, mut hi) = (0, *len);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    Map::read_at(file, mid, 1, &mut buf)?;
                    if Ext::decode(&buf).end <= offset {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                // Then forward in blocks, small first: most walks stop after a few entries.
                let mut n = 4;
                while lo < *len {
                    let k = n.min(*len - lo);
                    Map::read_at(file, lo, k, &mut buf)?;
                    for c in buf.chunks_exact(ENTRY) {
                        if !f(&Ext::decode(c))? {
                            return Ok(());
                        }
                    }
                    lo += k;
                    n = (n * 4).min(BLOCK_ENTRIES);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exts(n: u64) -> Vec<Ext> {
        (0..n)
            .map(|k| Ext {
                start: k * 10,
                end: k * 10 + 5,
                src: k * 7,
                input: (k % 3) as u32,
            })
            .collect()
    }

    fn walk(m: &Map, offset: u64, take: usize) -> Vec<Ext> {
        let mut got = Vec::new();
        m.walk_from(offset, &mut |e| {
            got.push(*e);
            Ok(got.len() < take)
        })
        .unwrap();
        got
    }

    #[test]
    fn a_disk_map_walks_as_the_memory_map_does() {
        let all = exts(3000);
        let build = |limit| {
            let mut b = Builder::new(limit);
            all.iter().for_each(|e| b.push(*e));
            b.finish().unwrap()
        };
        let (mem, disk) = (build(usize::MAX), build(100));
        assert!(!mem.on_disk() && disk.on_disk());
        assert_eq!((mem.len(), disk.len()), (3000, 3000));
        for offset in [0, 4, 5, 6, 9, 10, 14, 15, 12_345, 29_994, 29_995, 40_000] {
            for take in [1, 3, 500, usize::MAX] {
                let w = walk(&mem, offset, take);
                assert_eq!(w, walk(&disk, offset, take), "offset {offset} take {take}");
                let first = all.iter().position(|e| e.end > offset).unwrap_or(all.len());
                let n = take.min(all.len() - first);
                assert_eq!(w, all[first..first + n], "offset {offset} take {take}");
            }
        }
    }

    #[test]
    fn an_empty_map_walks_nothing() {
        for limit in [0, 10] {
            let m = Builder::new(limit).finish().unwrap();
            assert!(m.is_empty());
            assert!(walk(&m, 0, usize::MAX).is_empty());
        }
    }
}
