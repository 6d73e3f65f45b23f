//! Building `rbd diff v1` files from raw images.
//!
//! - Full diff: every block of the image that is not all zeros becomes data; holes
//!   (found with `SEEK_DATA`/`SEEK_HOLE`) are never read.
//! - Incremental (`base` given): `w` where the new image differs from the base, `z` where the
//!   new image reads zero and the base did not, `s` = the new size. Importing it onto the base
//!   gives the new image, exactly as `rbd import-diff` would.
//!
//! Work is done in blocks of `block_size` bytes (default 4 KiB) aligned to the image start;
//! neighbouring blocks of the same kind are coalesced (data records up to `max_record` bytes).
//! Memory: one read buffer per image plus one pending record, whatever the image size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom;
use serde::Serialize;

use crate::apply::is_zero;
use crate::error::{Error, Result};
use crate::format::{Extent, Metadata, Version};
use crate::output::Output;
use crate::progress::Ticker;
use crate::write::DiffWriter;

/// Default block size.
pub const DEFAULT_BLOCK: u64 = 4096;
/// Default largest `w` record (one default RBD object; import-diff buffers a record whole).
pub const DEFAULT_MAX_RECORD: u64 = 4 << 20;
const CHUNK: u64 = 1 << 20;

/// Options of [`create_diff`].
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// End snapshot name (`t`); `None` = a diff to the image HEAD.
    pub to_snap: Option<String>,
    /// Base image for an incremental diff.
    pub base: Option<PathBuf>,
    /// Start snapshot name (`f`), required with `base`.
    pub from_snap: Option<String>,
    /// Comparison granularity in bytes.
    pub block_size: u64,
    /// Largest `w` record in bytes.
    pub max_record: u64,
    /// Replace an existing output.
    pub force: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            to_snap: None,
            base: None,
            from_snap: None,
            block_size: DEFAULT_BLOCK,
            max_record: DEFAULT_MAX_RECORD,
            force: false,
        }
    }
}

/// What [`create_diff`] wrote.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CreateReport {
    /// Start snapshot (`f`); `None` for a full diff.
    pub from_snap: Option<String>,
    /// End snapshot (`t`); `None` for a diff to the image HEAD.
    pub to_snap: Option<String>,
    /// Image size (`s`).
    pub image_size: u64,
    /// `w` records.
    pub writes: u64,
    /// `z` records.
    pub zeros: u64,
    /// Payload bytes of `w` records.
    pub write_bytes: u64,
    /// Bytes covered by `z` records.
    pub zero_bytes: u64,
    /// Length of the diff file.
    pub diff_bytes: u64,
}

/// Size of a regular file or block device.
fn size_of(f: &File) -> io::Result<u64> {
    let m = f.metadata()?;
    if m.is_file() {
        Ok(m.len())
    } else {
        rustix::fs::seek(f, SeekFrom::End(0)).map_err(io::Error::from)
    }
}

/// Data segments of `f` within `[0, len)`, from `SEEK_DATA`/`SEEK_HOLE`; the whole range when
/// the file system cannot tell.
pub fn data_segments(f: &File, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let Ok(p) = i64::try_from(pos) else { break };
        let data = match rustix::fs::seek(f, SeekFrom::Data(p)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return vec![(0, len)],
        };
        if data >= len {
            break;
        }
        let hole = match rustix::fs::seek(f, SeekFrom::Hole(data as i64)) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        if hole <= data {
            return vec![(0, len)];
        }
        out.push((data, hole));
        pos = hole;
    }
    out
}

/// Sorted union of ranges, each widened to `block` boundaries and clipped to `len`.
fn merge_aligned(mut v: Vec<(u64, u64)>, block: u64, len: u64) -> Vec<(u64, u64)> {
    for r in &mut v {
        r.0 -= r.0 % block;
        r.1 = r.1.div_ceil(block).saturating_mul(block).min(len);
    }
    v.retain(|r| r.1 > r.0);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

/// Reads `buf.len()` bytes at `off`; bytes past `limit` read as zeros.
fn read_at(f: &File, buf: &mut [u8], off: u64, limit: u64) -> io::Result<()> {
    let n = limit.saturating_sub(off).min(buf.len() as u64) as usize;
    f.read_exact_at(&mut buf[..n], off)?;
    buf[n..].fill(0);
    Ok(())
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Kind {
    Data,
    Zero,
}

struct Emitter<'w, W: io::Write> {
    w: &'w mut DiffWriter<W>,
    report: CreateReport,
    max_record: u64,
    /// Pending `w` record: start and bytes.
    data_start: u64,
    data: Vec<u8>,
    /// Pending `z` extent.
    zero: Option<Extent>,
}

impl<W: io::Write> Emitter<'_, W> {
    fn flush_data(&mut self) -> Result<()> {
        if !self.data.is_empty() {
            self.w.write_data(self.data_start, &self.data)?;
            self.report.writes += 1;
            self.report.write_bytes += self.data.len() as u64;
            self.data.clear();
        }
        Ok(())
    }

    fn flush_zero(&mut self) -> Result<()> {
        if let Some(z) = self.zero.take() {
            self.w.zero(z)?;
            self.report.zeros += 1;
            self.report.zero_bytes += z.len;
        }
        Ok(())
    }

    fn block(&mut self, kind: Kind, off: u64, bytes: &[u8]) -> Result<()> {
        match kind {
            Kind::Data => {
                self.flush_zero()?;
                let contiguous = self.data_start + self.data.len() as u64 == off;
                if !self.data.is_empty()
                    && (!contiguous
                        || self.data.len() as u64 + bytes.len() as u64 > self.max_record)
                {
                    self.flush_data()?;
                }
                if self.data.is_empty() {
                    self.data_start = off;
                }
                self.data.extend_from_slice(bytes);
            }
            Kind::Zero => {
                self.flush_data()?;
                let len = bytes.len() as u64;
                match &mut self.zero {
                    Some(z) if z.offset + z.len == off => z.len += len,
                    _ => {
                        self.flush_zero()?;
                        self.zero = Some(Extent::new(off, len));
                    }
                }
            }
        }
        Ok(())
    }
}

fn open(p: &Path) -> Result<(File, u64)> {
    let f = File::open(p).map_err(|e| Error::from(e).with_file(p))?;
    let len = size_of(&f).map_err(|e| Error::from(e).with_file(p))?;
    Ok((f, len))
}

/// Builds a v1 diff of the raw image `new` (incremental against `opts.base` when given) and
/// writes it to `out` (`-` = stdout) atomically.
///
/// # Errors
/// Bad options, unreadable images, or an output that exists (without `force`).
pub fn create_diff(new: &Path, out: &str, opts: &CreateOptions) -> Result<CreateReport> {
    create_diff_with_progress(new, out, opts, &mut |_, _| {})
}

/// [`create_diff`], reporting `(bytes of the raw image scanned, its length)` to `progress`
/// (see [`crate::progress`]; holes count as scanned when they are skipped).
///
/// # Errors
/// As [`create_diff`].
pub fn create_diff_with_progress(
    new: &Path,
    out: &str,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CreateReport> {
    let block = opts.block_size;
    if block == 0 || block > CHUNK || CHUNK % block != 0 {
        return Err(Error::invalid(format!(
            "block size must be a power of two between 1 and {CHUNK} bytes, not {block}"
        )));
    }
    if opts.max_record < block {
        return Err(Error::invalid("largest record must be at least one block"));
    }
    if opts.base.is_some() != opts.from_snap.is_some() {
        return Err(Error::invalid(
            "an incremental diff needs both the base image and its snapshot name (--base and --from-snap)",
        ));
    }
    let mut inputs = vec![new];
    inputs.extend(opts.base.as_deref());
    crate::output::check_output(out, &inputs)?;
    let (nf, nlen) = open(new)?;
    let base = match &opts.base {
        Some(b) => Some(open(b)?),
        None => None,
    };
    let mut ranges = data_segments(&nf, nlen);
    if let Some((bf, blen)) = &base {
        ranges.extend(data_segments(bf, (*blen).min(nlen)));
    }
    let ranges = merge_aligned(ranges, block, nlen);

    let meta = Metadata {
        from_snap: opts.from_snap.as_ref().map(|s| s.as_bytes().to_vec()),
        to_snap: opts.to_snap.as_ref().map(|s| s.as_bytes().to_vec()),
        protected: None,
        image_size: Some(nlen),
    };
    let mut output = Output::create_for(out, opts.force, &inputs)?;
    let mut w = DiffWriter::new(&mut output, Version::V1, &meta)?;
    let mut em = Emitter {
        w: &mut w,
        report: CreateReport {
            from_snap: opts.from_snap.clone(),
            to_snap: opts.to_snap.clone(),
            image_size: nlen,
            ..CreateReport::default()
        },
        max_record: opts.max_record,
        data_start: 0,
        data: Vec::new(),
        zero: None,
    };
    let mut nbuf = vec![0u8; CHUNK as usize];
    let mut bbuf = vec![0u8; if base.is_some() { CHUNK as usize } else { 0 }];
    let mut tick = Ticker::new(progress, nlen);
    for (start, end) in ranges {
        let mut pos = start;
        while pos < end {
            tick.set(pos);
            let n = (end - pos).min(CHUNK) as usize;
            read_at(&nf, &mut nbuf[..n], pos, nlen).map_err(|e| Error::from(e).with_file(new))?;
            if let (Some((bf, blen)), Some(bp)) = (&base, &opts.base) {
                read_at(bf, &mut bbuf[..n], pos, *blen)
                    .map_err(|e| Error::from(e).with_file(bp))?;
            }
            let mut i = 0usize;
            while i < n {
                let j = n.min(i + block as usize);
                let nb = &nbuf[i..j];
                let kind = if base.is_some() {
                    let bb = &bbuf[i..j];
                    if nb == bb {
                        None
                    } else if is_zero(nb) {
                        Some(Kind::Zero)
                    } else {
                        Some(Kind::Data)
                    }
                } else if is_zero(nb) {
                    None
                } else {
                    Some(Kind::Data)
                };
                if let Some(k) = kind {
                    em.block(k, pos + i as u64, nb)?;
                }
                i = j;
            }
            pos += n as u64;
        }
    }
    em.flush_data()?;
    em.flush_zero()?;
    let mut report = em.report;
    w.finish()?;
    output.commit()?;
    tick.finish();
    if out != "-" {
        report.diff_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    }
    Ok(report)
}
