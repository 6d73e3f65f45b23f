//! Writer mirroring the parser: v1/v2 diffs and the `rbd image v2` container.
//!
//! [`DiffWriter`] takes the metadata up front (so "metadata after data" cannot be written),
//! checks that data records are non-empty, ascending, non-overlapping and inside the image
//! size, and writes `e` only in [`DiffWriter::finish`]: a writer dropped early leaves a stream
//! that is detectably truncated.

use std::io::{self, Read, Write};

use crate::error::{Error, ErrorKind, Result};
use crate::format::{
    tag, Extent, ImageHeader, Metadata, Version, IMAGE_BANNER, IMAGE_DIFFS_BANNER,
};

/// Writer options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Write the v2 `p` record with length field 8, as Ceph 16.x does (default: 1, as upstream now).
    pub ceph16_p_length: bool,
}

fn put_head(out: &mut Vec<u8>, v: Version, t: u8, body_len: u64) {
    out.push(t);
    if v == Version::V2 {
        out.extend_from_slice(&body_len.to_le_bytes());
    }
}

fn put_name(out: &mut Vec<u8>, v: Version, t: u8, name: &[u8]) {
    put_head(out, v, t, 4 + name.len() as u64);
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name);
}

/// Encodes the banner and metadata records (`f`, `t`, `p` in v2 when there is a `t`, `s`).
pub fn encode_header(meta: &Metadata, v: Version, opts: WriteOptions, out: &mut Vec<u8>) {
    out.extend_from_slice(v.banner());
    if let Some(f) = &meta.from_snap {
        put_name(out, v, tag::FROM_SNAP, f);
    }
    if let Some(t) = &meta.to_snap {
        put_name(out, v, tag::TO_SNAP, t);
    }
    if v == Version::V2 {
        if let Some(p) = meta.protected {
            out.push(tag::PROTECTED);
            let len: u64 = if opts.ceph16_p_length { 8 } else { 1 };
            out.extend_from_slice(&len.to_le_bytes());
            out.push(u8::from(p));
        }
    }
    if let Some(s) = meta.image_size {
        put_head(out, v, tag::SIZE, 8);
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Encodes the head of a `w` (with `data_len` payload bytes to follow) or `z` record.
pub fn encode_extent_head(t: u8, e: Extent, v: Version, out: &mut Vec<u8>) {
    let body = if t == tag::WRITE {
        16u64.saturating_add(e.len)
    } else {
        16
    };
    put_head(out, v, t, body);
    out.extend_from_slice(&e.offset.to_le_bytes());
    out.extend_from_slice(&e.len.to_le_bytes());
}

/// Streaming diff writer.
#[derive(Debug)]
pub struct DiffWriter<W: Write> {
    inner: W,
    version: Version,
    size: Option<u64>,
    prev_end: u64,
    written: u64,
    records: u64,
    head: Vec<u8>,
}

impl<W: Write> DiffWriter<W> {
    /// Writes the banner and metadata.
    ///
    /// # Errors
    /// I/O errors, or a snapshot name longer than rbd accepts.
    pub fn new(inner: W, version: Version, meta: &Metadata) -> Result<Self> {
        Self::with_options(inner, version, meta, WriteOptions::default())
    }

    /// [`DiffWriter::new`] with options.
    ///
    /// # Errors
    /// As [`DiffWriter::new`].
    pub fn with_options(
        mut inner: W,
        version: Version,
        meta: &Metadata,
        opts: WriteOptions,
    ) -> Result<Self> {
        for n in [&meta.from_snap, &meta.to_snap].into_iter().flatten() {
            if n.len() > crate::format::MAX_NAME_LEN as usize {
                return Err(Error::new(ErrorKind::NameTooLong {
                    what: "snapshot name",
                    len: n.len() as u64,
                    max: crate::format::MAX_NAME_LEN.into(),
                }));
            }
        }
        let mut head = Vec::with_capacity(64);
        encode_header(meta, version, opts, &mut head);
        inner.write_all(&head)?;
        Ok(DiffWriter {
            inner,
            version,
            size: meta.image_size,
            prev_end: 0,
            written: head.len() as u64,
            records: 0,
            head,
        })
    }

    fn check(&mut self, t: u8, e: Extent) -> Result<()> {
        let at = |k| Error::at(k, self.written, Some(self.records));
        if e.len == 0 {
            return Err(at(ErrorKind::ZeroLength {
                tag: t,
                offset: e.offset,
            }));
        }
        let end = e.end().ok_or_else(|| {
            at(ErrorKind::ExtentOverflow {
                tag: t,
                offset: e.offset,
                len: e.len,
            })
        })?;
        if e.offset < self.prev_end {
            return Err(at(ErrorKind::OutOfOrder {
                tag: t,
                offset: e.offset,
                prev_end: self.prev_end,
            }));
        }
        // The parser rejects data records without a preceding `s`, so the writer does too.
        let size = self.size.ok_or_else(|| at(ErrorKind::MissingSize))?;
        if end > size {
            return Err(at(ErrorKind::ExtentPastSize {
                tag: t,
                offset: e.offset,
                len: e.len,
                size,
            }));
        }
        self.prev_end = end;
        Ok(())
    }

    fn put_extent_head(&mut self, t: u8, e: Extent) -> Result<()> {
        self.check(t, e)?;
        self.head.clear();
        encode_extent_head(t, e, self.version, &mut self.head);
        self.inner.write_all(&self.head)?;
        self.written += self.head.len() as u64;
        self.records += 1;
        Ok(())
    }

    /// Writes a `w` record.
    ///
    /// # Errors
    /// I/O errors; an empty, unordered, overlapping or out-of-image extent.
    pub fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.put_extent_head(tag::WRITE, Extent::new(offset, data.len() as u64))?;
        self.inner.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Writes a `w` record whose payload is copied from `src` (exactly `extent.len` bytes).
    ///
    /// # Errors
    /// As [`DiffWriter::write_data`], or `src` ending early.
    pub fn write_data_from(&mut self, extent: Extent, src: &mut dyn Read) -> Result<()> {
        self.put_extent_head(tag::WRITE, extent)?;
        let n = io::copy(&mut src.take(extent.len), &mut self.inner)?;
        self.written += n;
        if n != extent.len {
            return Err(Error::new(ErrorKind::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("payload source ended after {n} of {} bytes", extent.len),
            ))));
        }
        Ok(())
    }

    /// Writes a `z` record.
    ///
    /// # Errors
    /// As [`DiffWriter::write_data`].
    pub fn zero(&mut self, extent: Extent) -> Result<()> {
        self.put_extent_head(tag::ZERO, extent)
    }

    /// Writes a record with a tag unknown to rbd (v2 only; readers skip it by length).
    ///
    /// # Errors
    /// I/O errors, or a v1 writer.
    pub fn unknown(&mut self, t: u8, body: &[u8]) -> Result<()> {
        if self.version != Version::V2 || b"ftpswze".contains(&t) {
            return Err(Error::invalid(format!(
                "cannot write a record with tag 0x{t:02x} as an unknown record in a {} diff",
                self.version
            )));
        }
        self.head.clear();
        put_head(&mut self.head, self.version, t, body.len() as u64);
        self.inner.write_all(&self.head)?;
        self.inner.write_all(body)?;
        self.written += (self.head.len() + body.len()) as u64;
        self.records += 1;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Data records written so far.
    pub fn records_written(&self) -> u64 {
        self.records
    }

    /// Access to the underlying writer (for positioned copies such as `copy_file_range`).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Accounts for `len` payload bytes written directly through [`DiffWriter::get_mut`]
    /// after [`DiffWriter::begin_data`].
    pub fn add_written(&mut self, len: u64) {
        self.written += len;
    }

    /// Writes only the head of a `w` record; the caller then writes exactly `extent.len`
    /// payload bytes through [`DiffWriter::get_mut`] and reports them with [`DiffWriter::add_written`].
    ///
    /// # Errors
    /// As [`DiffWriter::write_data`].
    pub fn begin_data(&mut self, extent: Extent) -> Result<()> {
        self.put_extent_head(tag::WRITE, extent)
    }

    /// Writes `e`, flushes, and returns the inner writer.
    ///
    /// # Errors
    /// I/O errors, or metadata without an image size (a diff without `s` is invalid).
    pub fn finish(mut self) -> Result<W> {
        if self.size.is_none() {
            return Err(Error::at(
                ErrorKind::MissingSize,
                self.written,
                Some(self.records),
            ));
        }
        self.inner.write_all(&[tag::END])?;
        self.written += 1;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// Encodes an image stream header: banner, `O T U C` (those present), `M` pairs, `E`,
/// the diffs banner and the diff count.
pub fn encode_image_header(h: &ImageHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(IMAGE_BANNER);
    let values = [
        (tag::ORDER, h.order),
        (tag::FEATURES, h.features),
        (tag::STRIPE_UNIT, h.stripe_unit),
        (tag::STRIPE_COUNT, h.stripe_count),
    ];
    for (t, v) in values {
        if let Some(v) = v {
            out.push(t);
            out.extend_from_slice(&8u64.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    for (k, v) in &h.meta {
        out.push(tag::META);
        out.extend_from_slice(&(8 + k.len() as u64 + v.len() as u64).to_le_bytes());
        for s in [k, v] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s);
        }
    }
    out.push(tag::IMAGE_END);
    out.extend_from_slice(IMAGE_DIFFS_BANNER);
    out.extend_from_slice(&h.diff_count.to_le_bytes());
}
