//! Walks a diff or image stream with either driver and records everything it reports, in a
//! form that can be compared between the slice and the stream driver.
//! Include with `mod drivers;`.

#![allow(dead_code)]

pub mod gen;

use std::io::{self, Read};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rbddiff::stream::{ItemKind, RecordSource};
use rbddiff::{
    DiffReader, DiffSlice, Error, Extent, ImageHeader, ImageReader, ImageSlice, Metadata, Version,
    Warning,
};

/// An error reduced to what both drivers must agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrSig {
    /// `ErrorKind` variant name, e.g. `Truncated`.
    pub variant: String,
    /// The kind's message.
    pub message: String,
    pub offset: Option<u64>,
    pub record: Option<u64>,
}

impl ErrSig {
    pub fn of(e: &Error) -> Self {
        let dbg = format!("{:?}", e.kind());
        let variant = dbg
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_string();
        ErrSig {
            variant,
            message: e.kind().to_string(),
            offset: e.offset(),
            record: e.record(),
        }
    }
}

/// One thing a driver reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Image(ImageHeader),
    Header {
        start: u64,
        version: Version,
        meta: Metadata,
        meta_records: Vec<(u64, u8)>,
    },
    Write {
        pos: u64,
        index: u64,
        extent: Extent,
        /// The payload bytes read (all of them, or a prefix when reading partially).
        data: Vec<u8>,
    },
    Zero {
        pos: u64,
        index: u64,
        extent: Extent,
    },
    Unknown {
        pos: u64,
        index: u64,
        tag: u8,
        len: u64,
    },
    End {
        pos: u64,
        index: u64,
        /// Offset just past `e`.
        after: u64,
    },
}

impl Ev {
    fn index(&self) -> Option<u64> {
        match self {
            Ev::Write { index, .. }
            | Ev::Zero { index, .. }
            | Ev::Unknown { index, .. }
            | Ev::End { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// Everything a walk reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Ev>,
    pub warnings: Vec<Warning>,
    pub error: Option<ErrSig>,
}

/// How much of each payload to read: all of it, or a prefix chosen by a seeded generator
/// (the rest is left to the driver to skip).
#[derive(Clone, Copy, Debug)]
pub enum PayloadReads {
    All,
    Prefix(u64),
}

struct Prefixes(Option<StdRng>);

impl Prefixes {
    fn new(p: PayloadReads) -> Self {
        match p {
            PayloadReads::All => Prefixes(None),
            PayloadReads::Prefix(seed) => Prefixes(Some(StdRng::seed_from_u64(seed))),
        }
    }
    fn limit(&mut self, len: u64) -> u64 {
        match &mut self.0 {
            None => len,
            Some(r) => r.gen_range(0..=len.min(1 << 20)),
        }
    }
}

fn walk_records(src: &mut dyn RecordSource, pre: &mut Prefixes, out: &mut Outcome) {
    loop {
        let item = match src.next_item() {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(e) => {
                out.error = Some(ErrSig::of(&e));
                break;
            }
        };
        let (pos, index) = (item.offset, item.index);
        let ev = match item.kind {
            ItemKind::Write { extent, mut data } => {
                let mut buf = Vec::new();
                let want = pre.limit(extent.len);
                if let Err(e) = (&mut data).take(want).read_to_end(&mut buf) {
                    out.error = Some(ErrSig::of(&Error::from(e)));
                    break;
                }
                Ev::Write {
                    pos,
                    index,
                    extent,
                    data: buf,
                }
            }
            ItemKind::Zero(extent) => Ev::Zero { pos, index, extent },
            ItemKind::Unknown { tag, len } => Ev::Unknown {
                pos,
                index,
                tag,
                len,
            },
            ItemKind::End => Ev::End {
                pos,
                index,
                after: src.position(),
            },
            _ => panic!("new item kind"),
        };
        out.events.push(ev);
    }
    // The slice driver reports a truncated payload at the record itself; the stream driver
    // hands the record out first and fails while its payload is read or skipped.
    if let (Some(err), Some(last)) = (&out.error, out.events.last()) {
        if last.index().is_some() && err.record == last.index() {
            out.events.pop();
        }
    }
    out.warnings.extend_from_slice(src.warnings());
}

fn header_ev(start: u64, src: &dyn RecordSource) -> Ev {
    Ev::Header {
        start,
        version: src.version(),
        meta: src.metadata().clone(),
        meta_records: src.metadata_records().to_vec(),
    }
}

/// A standalone diff through the slice driver.
pub fn diff_slice(bytes: &[u8], reads: PayloadReads) -> Outcome {
    let mut out = Outcome::default();
    match DiffSlice::parse(bytes) {
        Err(e) => out.error = Some(ErrSig::of(&e)),
        Ok(d) => {
            let mut recs = d.records();
            out.events.push(header_ev(d.start_offset(), &recs));
            walk_records(&mut recs, &mut Prefixes::new(reads), &mut out);
        }
    }
    out
}

/// A standalone diff through the stream driver.
pub fn diff_stream(r: impl Read, reads: PayloadReads) -> Outcome {
    let mut out = Outcome::default();
    match DiffReader::new(r) {
        Err(e) => out.error = Some(ErrSig::of(&e)),
        Ok(mut d) => {
            out.events.push(header_ev(d.start_offset(), &d));
            walk_records(&mut d, &mut Prefixes::new(reads), &mut out);
        }
    }
    out
}

/// An image stream through the slice driver.
pub fn image_slice(bytes: &[u8], reads: PayloadReads) -> Outcome {
    let mut out = Outcome::default();
    let img = match ImageSlice::parse(bytes) {
        Err(e) => {
            out.error = Some(ErrSig::of(&e));
            return out;
        }
        Ok(i) => i,
    };
    out.events.push(Ev::Image(img.header().clone()));
    out.warnings.extend_from_slice(img.warnings());
    let mut pre = Prefixes::new(reads);
    for d in img.diffs() {
        match d {
            Err(e) => {
                out.error = Some(ErrSig::of(&e));
                break;
            }
            Ok(d) => {
                let mut recs = d.records();
                out.events.push(header_ev(d.start_offset(), &recs));
                walk_records(&mut recs, &mut pre, &mut out);
                assert!(out.error.is_none(), "a walked embedded diff failed again");
            }
        }
    }
    out
}

/// An image stream through the stream driver. A diff that fails is reported as its error
/// only (the slice driver validates each embedded diff before handing it out).
pub fn image_stream(r: impl Read, reads: PayloadReads) -> Outcome {
    match ImageReader::new(r) {
        Err(e) => Outcome {
            error: Some(ErrSig::of(&e)),
            ..Default::default()
        },
        Ok(img) => image_walk(img, reads),
    }
}

fn image_walk<R: Read>(mut img: ImageReader<R>, reads: PayloadReads) -> Outcome {
    let mut out = Outcome::default();
    out.events.push(Ev::Image(img.header().clone()));
    out.warnings.extend_from_slice(img.warnings());
    let mut pre = Prefixes::new(reads);
    loop {
        match img.next_diff() {
            Err(e) => {
                out.error = Some(ErrSig::of(&e));
                break;
            }
            Ok(None) => break,
            Ok(Some(d)) => {
                let (events, warnings) = (out.events.len(), out.warnings.len());
                out.events.push(header_ev(d.start_offset(), d));
                walk_records(d, &mut pre, &mut out);
                if out.error.is_some() {
                    out.events.truncate(events);
                    out.warnings.truncate(warnings);
                    break;
                }
            }
        }
    }
    out
}

/// Slice driver for whatever `bytes` holds (image stream or diff).
pub fn slice_any(bytes: &[u8], reads: PayloadReads) -> Outcome {
    if bytes.starts_with(rbddiff::format::IMAGE_BANNER) {
        image_slice(bytes, reads)
    } else {
        diff_slice(bytes, reads)
    }
}

/// Stream driver for whatever `bytes` holds, fed through `RandomReader` short reads; for
/// odd seeds as a seekable input (payloads seeked over).
pub fn stream_any(bytes: &[u8], reads: PayloadReads, seed: u64, max_read: usize) -> Outcome {
    let r = RandomReader::new(bytes, seed, max_read);
    let image = bytes.starts_with(rbddiff::format::IMAGE_BANNER);
    let len = bytes.len() as u64;
    match (image, seed % 2 == 1) {
        (true, false) => image_stream(r, reads),
        (false, false) => diff_stream(r, reads),
        (true, true) => match ImageReader::seekable(r, len) {
            Ok(img) => image_walk(img, reads),
            Err(e) => Outcome {
                error: Some(ErrSig::of(&e)),
                ..Default::default()
            },
        },
        (false, true) => {
            let mut out = Outcome::default();
            match DiffReader::seekable(r, len) {
                Err(e) => out.error = Some(ErrSig::of(&e)),
                Ok(mut d) => {
                    out.events.push(header_ev(d.start_offset(), &d));
                    walk_records(&mut d, &mut Prefixes::new(reads), &mut out);
                }
            }
            out
        }
    }
}

/// Whatever `bytes` holds (image stream or diff) written to a file and walked through the
/// stream driver's positioned reads (`DiffReader::from_file`, `at_file` when `borrowed`, or
/// `ImageReader::from_file`): refills that grow from a few heads to 64 KiB.
pub fn file_any(bytes: &[u8], reads: PayloadReads, borrowed: bool) -> Outcome {
    let mut f = tempfile::tempfile().unwrap();
    io::Write::write_all(&mut f, bytes).unwrap();
    io::Seek::seek(&mut f, io::SeekFrom::Start(0)).unwrap();
    let len = bytes.len() as u64;
    if bytes.starts_with(rbddiff::format::IMAGE_BANNER) {
        return match ImageReader::from_file(f, len) {
            Ok(img) => image_walk(img, reads),
            Err(e) => Outcome {
                error: Some(ErrSig::of(&e)),
                ..Default::default()
            },
        };
    }
    let mut out = Outcome::default();
    let walk = |d: &mut dyn RecordSource, out: &mut Outcome| {
        out.events.push(header_ev(0, d));
        walk_records(d, &mut Prefixes::new(reads), out);
    };
    let r = if borrowed {
        DiffReader::at_file(&f, len).map(|mut d| walk(&mut d, &mut out))
    } else {
        DiffReader::from_file(f.try_clone().unwrap(), len).map(|mut d| walk(&mut d, &mut out))
    };
    if let Err(e) = r {
        out.error = Some(ErrSig::of(&e));
    }
    out
}

/// A reader over bytes that returns random short reads of 1..=max bytes (seeded), and now
/// and then an `Interrupted` error, as pipes and signals do.
pub struct RandomReader<'a> {
    data: &'a [u8],
    pos: usize,
    rng: StdRng,
    max: usize,
}

impl<'a> RandomReader<'a> {
    pub fn new(data: &'a [u8], seed: u64, max: usize) -> Self {
        RandomReader {
            data,
            pos: 0,
            rng: StdRng::seed_from_u64(seed),
            max: max.max(1),
        }
    }
}

impl io::Seek for RandomReader<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let io::SeekFrom::Start(p) = to else {
            panic!("the drivers seek to absolute offsets only");
        };
        // Seeking past the end is allowed, as for files; reads there return 0.
        self.pos = usize::try_from(p).unwrap_or(usize::MAX);
        Ok(p)
    }
}

impl Read for RandomReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.rng.gen_ratio(1, 50) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        let left = self.data.len().saturating_sub(self.pos);
        let n = self.rng.gen_range(1..=self.max).min(out.len()).min(left);
        if n > 0 {
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        }
        self.pos += n;
        Ok(n)
    }
}
