//! `rbddiff inspect`: a summary of a diff or image stream, as text or JSON.

use std::io::{self, Read, Seek, SeekFrom, Write};

use serde::Serialize;

use crate::error::{Error, Warning};
use crate::format::Extent;
use crate::input::{Input, Kind};
use crate::size::Bytes;
use crate::stream::{ItemKind, RecordSource};
use crate::zst::ZstArchive;
use crate::{DiffReader, DiffSlice, ImageReader, ImageSlice};

/// One record in a `--records` listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordInfo {
    /// Byte offset of the record in the file.
    pub pos: u64,
    /// Tag as a character (`f t p s w z e`, or `?` for a non-printable unknown tag).
    pub tag: char,
    /// Image offset (data records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Length: extent length for `w`/`z`, body length for unknown tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
}

/// Summary of one diff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffSummary {
    /// Byte offset of the banner in the file.
    pub start: u64,
    /// `v1` or `v2` (absent when the banner could not be read).
    pub version: Option<crate::Version>,
    /// Start snapshot; `None` for a full diff.
    pub from_snap: Option<String>,
    /// End snapshot; `None` for a diff to HEAD.
    pub to_snap: Option<String>,
    /// Protection flag (v2).
    pub protected: Option<bool>,
    /// Image size from `s`.
    pub image_size: Option<u64>,
    /// Number of records after the banner, `e` included.
    pub records: u64,
    /// `w` records.
    pub writes: u64,
    /// Payload bytes of `w` records.
    pub write_bytes: u64,
    /// `z` records.
    pub zeros: u64,
    /// Bytes covered by `z` records.
    pub zero_bytes: u64,
    /// Unknown (skipped) v2 records.
    pub unknown: u64,
    /// First image offset touched.
    pub first_offset: Option<u64>,
    /// One past the last image byte touched.
    pub last_end: Option<u64>,
    /// Image bytes covered by `w` and `z` records.
    pub covered_bytes: u64,
    /// Ranges those bytes form, adjacent records joined.
    pub covered_ranges: u64,
    /// The covered ranges themselves, when every record is asked for (they are as many as
    /// the records in the worst case; the counts above cost nothing per record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covered: Option<Vec<Extent>>,
    /// Byte offset just past `e` (when reached).
    pub end: Option<u64>,
    /// Tolerated problems (at most [`crate::error::MAX_WARNINGS`], then bytes after `e`).
    pub warnings: Vec<Warning>,
    /// How many more warnings were found than `warnings` lists.
    pub more_warnings: u64,
    /// The error that stopped the walk, if any.
    pub error: Option<String>,
    /// Every record, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_list: Option<Vec<RecordInfo>>,
}

impl DiffSummary {
    /// Total bytes covered by data records.
    pub fn covered_bytes(&self) -> u64 {
        self.covered_bytes
    }
}

/// Header of an image stream, for display.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// Object order.
    pub order: Option<u64>,
    /// Feature bits.
    pub features: Option<u64>,
    /// Stripe unit.
    pub stripe_unit: Option<u64>,
    /// Stripe count.
    pub stripe_count: Option<u64>,
    /// Image-meta pairs.
    pub meta: Vec<(String, String)>,
    /// Announced number of diffs.
    pub diff_count: u64,
    /// Header warnings (at most [`crate::error::MAX_WARNINGS`], then one for image-meta
    /// pairs not kept).
    pub warnings: Vec<Warning>,
    /// How many more header warnings were found than `warnings` lists.
    pub more_warnings: u64,
}

/// What `inspect` found in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// File name (`-` for stdin).
    pub file: String,
    /// `diff` or `image`.
    pub kind: &'static str,
    /// The image header (image streams only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
    /// The diff, or each embedded diff of an image stream.
    pub diffs: Vec<DiffSummary>,
    /// The error that stopped the walk, if any (also set on the diff concerned).
    pub error: Option<String>,
}

impl Report {
    /// True when no error was found.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// What `inspect` found in its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// One report per file, in argument order (a directory's diff files in name order).
    pub files: Vec<Report>,
    /// Arguments and directory entries passed over (see [`crate::dirlist`]).
    pub skipped: Vec<crate::dirlist::Skipped>,
}

impl Inspection {
    /// The first error found in a file, if any.
    pub fn error(&self) -> Option<&str> {
        self.files.iter().find_map(|r| r.error.as_deref())
    }
}

/// Inspects every file of `paths` (`-` for stdin; a directory stands for its diff files, see
/// [`crate::dirlist`]): a regular file through [`inspect_file`], anything else streamed.
///
/// # Errors
/// A file or directory cannot be opened or read; nothing is left to inspect.
pub fn inspect_paths(paths: &[String], with_records: bool) -> crate::Result<Inspection> {
    let x = crate::dirlist::expand(paths)?;
    if x.files.is_empty() {
        return Err(Error::invalid(format!(
            "no diff files to inspect{}",
            if x.skipped.is_empty() {
                ""
            } else {
                " (every argument was passed over)"
            }
        )));
    }
    let mut files = Vec::with_capacity(x.files.len());
    for f in &x.files {
        files.push(if f == "-" {
            inspect_input(Input::open(f)?, with_records)
        } else {
            inspect_file(f, with_records)?
        });
    }
    Ok(Inspection {
        files,
        skipped: x.skipped,
    })
}

/// One record as `summarize` counts it.
struct Seen {
    pos: u64,
    index: u64,
    tag: char,
    ext: Option<Extent>,
    len: u64,
}

/// The counts of a [`DiffSummary`], kept in locals while the records are walked.
#[derive(Clone, Copy, Default)]
struct Tally {
    records: u64,
    writes: u64,
    write_bytes: u64,
    zeros: u64,
    zero_bytes: u64,
    unknown: u64,
    first_offset: Option<u64>,
    last_end: Option<u64>,
    covered_bytes: u64,
    covered_ranges: u64,
}

impl Tally {
    fn store(self, s: &mut DiffSummary) {
        s.records = self.records;
        s.writes = self.writes;
        s.write_bytes = self.write_bytes;
        s.zeros = self.zeros;
        s.zero_bytes = self.zero_bytes;
        s.unknown = self.unknown;
        s.first_offset = self.first_offset;
        s.last_end = self.last_end;
        s.covered_bytes = self.covered_bytes;
        s.covered_ranges = self.covered_ranges;
    }
}

/// Where a walk counts: the tally, and the ranges and records when they are asked for.
struct Counts {
    tally: Tally,
    covered: Option<Vec<Extent>>,
    list: Option<Vec<RecordInfo>>,
}

impl Seen {
    #[inline(always)]
    fn count<const LIST: bool>(self, c: &mut Counts) {
        let s = &mut c.tally;
        s.records = self.index + 1;
        match self.tag {
            'w' => {
                s.writes += 1;
                s.write_bytes += self.len;
            }
            'z' => {
                s.zeros += 1;
                s.zero_bytes += self.len;
            }
            'e' => {}
            _ => s.unknown += 1,
        }
        if let Some(e) = self.ext {
            s.first_offset.get_or_insert(e.offset);
            let joined = s.last_end == Some(e.offset);
            s.last_end = e.end();
            s.covered_bytes += e.len;
            if !joined {
                s.covered_ranges += 1;
            }
            if let (true, Some(cov)) = (LIST, c.covered.as_mut()) {
                match cov.last_mut() {
                    Some(last) if joined => last.len += e.len,
                    _ => cov.push(e),
                }
            }
        }
        if let (true, Some(list)) = (LIST, c.list.as_mut()) {
            list.push(RecordInfo {
                pos: self.pos,
                tag: self.tag,
                offset: self.ext.map(|e| e.offset),
                len: (self.tag != 'e').then_some(self.len),
            });
        }
    }
}

/// Walks one diff, filling a summary; stops at the first error (recorded in the summary).
/// Payloads are left unread (a streamed one is skipped by the source).
///
/// Generic so that the walk of a diff's records compiles into one loop per driver (no call
/// through a pointer per record), and runs of small records are counted in bulk
/// ([`RecordSource::skim_data`]).
pub fn summarize<S: RecordSource>(src: &mut S, start: u64, with_records: bool) -> DiffSummary {
    // One loop each: the walk for the counts alone has no per-record test of the lists.
    if with_records {
        walk::<S, true>(src, start)
    } else {
        walk::<S, false>(src, start)
    }
}

/// [`summarize`], with every record and range listed when `LIST`.
fn walk<S: RecordSource, const LIST: bool>(src: &mut S, start: u64) -> DiffSummary {
    let with_records = LIST;
    let meta = src.metadata().clone();
    let mut s = DiffSummary {
        start,
        version: Some(src.version()),
        ..Default::default()
    };
    let mut c = Counts {
        tally: Tally {
            records: src.metadata_records().len() as u64,
            ..Tally::default()
        },
        covered: with_records.then(Vec::new),
        list: with_records.then(Vec::new),
    };
    if let Some(list) = c.list.as_mut() {
        for &(pos, tag) in src.metadata_records() {
            list.push(RecordInfo {
                pos,
                tag: tag as char,
                offset: None,
                len: None,
            });
        }
    }
    // A `w` record is counted once the walk has moved past it: the stream driver hands it
    // out before its payload is skipped, and a truncated payload must not be counted (the
    // slice driver reports it at the record itself).
    let mut held: Option<Seen> = None;
    loop {
        src.skim_data(|pos, index, t, e| {
            // Once one is handed out, the walk has moved past the held record.
            if let Some(h) = held.take() {
                h.count::<LIST>(&mut c);
            }
            let tag = if t == crate::format::tag::WRITE {
                'w'
            } else {
                'z'
            };
            let seen = Seen {
                pos,
                index,
                tag,
                ext: Some(e),
                len: e.len,
            };
            seen.count::<LIST>(&mut c);
        });
        let item = match src.next_item() {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(e) => {
                if held.as_ref().is_some_and(|h| Some(h.index) == e.record()) {
                    held = None;
                }
                s.error = Some(e.to_string());
                break;
            }
        };
        if let Some(h) = held.take() {
            h.count::<LIST>(&mut c);
        }
        let (pos, index) = (item.offset, item.index);
        let (tag, ext, len) = match item.kind {
            ItemKind::Write { extent, .. } => ('w', Some(extent), extent.len),
            ItemKind::Zero(e) => ('z', Some(e), e.len),
            ItemKind::Unknown { tag, len } => {
                let c = if tag.is_ascii_graphic() {
                    tag as char
                } else {
                    '?'
                };
                (c, None, len)
            }
            ItemKind::End => ('e', None, 0),
        };
        let seen = Seen {
            pos,
            index,
            tag,
            ext,
            len,
        };
        if tag == 'w' {
            held = Some(seen);
        } else {
            seen.count::<LIST>(&mut c);
        }
        if tag == 'e' {
            s.end = Some(src.position());
        }
    }
    if let Some(h) = held.take() {
        h.count::<LIST>(&mut c);
    }
    c.tally.store(&mut s);
    s.covered = c.covered;
    s.record_list = c.list;
    let meta_now = src.metadata();
    let meta = if meta_now.image_size.is_some() {
        meta_now.clone()
    } else {
        meta
    };
    s.from_snap = meta.from_snap.as_ref().map(|_| meta.from_name());
    s.to_snap = meta.to_snap.as_ref().map(|_| meta.to_name());
    s.protected = meta.protected;
    s.image_size = meta.image_size;
    s.warnings = src.warnings().to_vec();
    s.more_warnings = src.more_warnings();
    s
}

fn report(
    file: &str,
    kind: &'static str,
    image: Option<ImageInfo>,
    diffs: Vec<DiffSummary>,
) -> Report {
    Report {
        file: file.to_string(),
        kind,
        image,
        diffs,
        error: None,
    }
}

fn failed(file: &str, kind: &'static str, e: Error) -> Report {
    Report {
        error: Some(e.with_file(file).to_string()),
        ..report(file, kind, None, Vec::new())
    }
}

fn image_info(h: &crate::ImageHeader, warnings: &[Warning], more_warnings: u64) -> ImageInfo {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    ImageInfo {
        order: h.order,
        features: h.features,
        stripe_unit: h.stripe_unit,
        stripe_count: h.stripe_count,
        meta: h.meta.iter().map(|(k, v)| (s(k), s(v))).collect(),
        diff_count: h.diff_count,
        warnings: warnings.to_vec(),
        more_warnings,
    }
}

fn finish(mut r: Report) -> Report {
    if r.error.is_none() {
        r.error = r
            .diffs
            .iter()
            .find_map(|d| d.error.as_ref().map(|e| format!("{}: {e}", r.file)));
    }
    r
}

/// Inspects a diff or image stream held in memory. Never reads payloads.
pub fn inspect_bytes(file: &str, bytes: &[u8], with_records: bool) -> Report {
    if crate::input::sniff(bytes) == Kind::Image {
        let img = match ImageSlice::parse(bytes) {
            Ok(i) => i,
            Err(e) => return failed(file, "image", e),
        };
        let mut r = report(
            file,
            "image",
            Some(image_info(
                img.header(),
                img.warnings(),
                img.more_warnings(),
            )),
            Vec::new(),
        );
        // Walked here rather than through `ImageSlice::diffs` so that a diff that fails
        // still shows what was read before the problem, as with the stream driver.
        let mut pos = img.diffs_start();
        for _ in 0..img.header().diff_count {
            let rest = bytes.get(pos..).unwrap_or_default();
            let d = DiffSlice::parse_at(rest, pos as u64, false).and_then(|d| {
                if d.version() == crate::Version::V2 {
                    Ok(d)
                } else {
                    Err(crate::image::not_v2(d.start_offset()))
                }
            });
            let d = match d {
                Ok(d) => d,
                Err(e) => {
                    r.error = Some(e.with_file(file).to_string());
                    break;
                }
            };
            let mut recs = d.records();
            let s = summarize(&mut recs, d.start_offset(), with_records);
            let stop = s.error.is_some();
            pos = usize::try_from(recs.offset()).unwrap_or(usize::MAX);
            r.diffs.push(s);
            if stop {
                break;
            }
        }
        return finish(r);
    }
    match DiffSlice::parse(bytes) {
        Ok(d) => {
            let mut recs = d.records();
            let s = summarize(&mut recs, 0, with_records);
            finish(report(file, "diff", None, vec![s]))
        }
        Err(e) => failed(file, "diff", e),
    }
}

/// Inspects a diff or image stream from a reader (stdin, pipes); payloads are skipped.
pub fn inspect_reader(file: &str, kind: Kind, r: impl Read, with_records: bool) -> Report {
    inspect_with(
        file,
        kind,
        with_records,
        r,
        ImageReader::new,
        DiffReader::new,
    )
}

/// Inspects a regular file by its path: record heads are read in small pieces and payloads
/// are seeked over, so the cost is O(records) (and the access time is left as it is).
///
/// # Errors
/// The file cannot be opened or read.
pub fn inspect_file(path: &str, with_records: bool) -> crate::Result<Report> {
    let wrap = |e: io::Error| Error::from(e).with_file(path);
    let mut f = open_noatime(path).map_err(wrap)?;
    let meta = f.metadata().map_err(wrap)?;
    if !meta.is_file() {
        return Ok(inspect_input(Input::open(path)?, with_records));
    }
    let mut prefix = Vec::with_capacity(13);
    (&mut f).take(13).read_to_end(&mut prefix).map_err(wrap)?;
    f.seek(SeekFrom::Start(0)).map_err(wrap)?;
    let kind = crate::input::sniff(&prefix);
    if !matches!(kind, Kind::DiffV1 | Kind::DiffV2 | Kind::Image) {
        // zstd archives (and anything unknown) go the usual way.
        return Ok(inspect_input(Input::open(path)?, with_records));
    }
    let len = meta.len();
    // Only the heads are read: no read-ahead of payloads (matters when the file is not
    // cached). A hint only; a failure changes nothing but speed.
    let _ = rustix::fs::fadvise(&f, 0, 0, rustix::fs::Advice::Random);
    if kind == Kind::Image {
        return Ok(inspect_with(
            path,
            kind,
            with_records,
            f,
            |f| ImageReader::from_file(f, len),
            |f| DiffReader::from_file(f, len),
        ));
    }
    // A diff: read ahead on another thread while its records are dense
    // ([`crate::readahead`]).
    Ok(std::thread::scope(|scope| {
        let r = crate::readahead::ReadAhead::new(&f, len, scope);
        inspect_with(
            path,
            kind,
            with_records,
            r,
            |_| Err(Error::invalid("internal: an image read as a diff")),
            |r| DiffReader::read_at_with(r, len, crate::readahead::ReadAhead::read_at),
        )
    }))
}

/// Opens `path` for reading without updating its access time when the file allows it (the
/// owner's or root's files): looking at record heads is not a use of the backup, and skipping
/// the atime check makes each head read about 15% cheaper. Falls back to a plain open.
fn open_noatime(path: &str) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let noatime = rustix::fs::OFlags::NOATIME.bits() as i32;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(noatime)
        .open(path)
    {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => std::fs::File::open(path),
        r => r,
    }
}

fn inspect_with<R: Read>(
    file: &str,
    kind: Kind,
    with_records: bool,
    r: R,
    image: impl FnOnce(R) -> crate::Result<ImageReader<R>>,
    diff: impl FnOnce(R) -> crate::Result<DiffReader<R>>,
) -> Report {
    if kind == Kind::Image {
        let mut img = match image(r) {
            Ok(i) => i,
            Err(e) => return failed(file, "image", e),
        };
        let mut out = report(
            file,
            "image",
            Some(image_info(
                img.header(),
                img.warnings(),
                img.more_warnings(),
            )),
            Vec::new(),
        );
        loop {
            match img.next_diff() {
                Ok(Some(d)) => {
                    let start = d.start_offset();
                    let s = summarize(d, start, with_records);
                    let stop = s.error.is_some();
                    out.diffs.push(s);
                    if stop {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e.with_file(file).to_string());
                    break;
                }
            }
        }
        return finish(out);
    }
    match diff(r) {
        Ok(mut d) => {
            let s = summarize(&mut d, 0, with_records);
            finish(report(file, "diff", None, vec![s]))
        }
        Err(e) => failed(file, "diff", e),
    }
}

/// Inspects an indexed zstd archive from its record index: no frame is decompressed but those
/// whose index block is left out (frames of little but heads, read for their heads).
pub fn inspect_archive(file: &str, a: &mut ZstArchive<'_>, with_records: bool) -> Report {
    let idx = a.index();
    let mut r = Report {
        file: file.to_string(),
        kind: if idx.kind == Kind::Image {
            "image"
        } else {
            "diff"
        },
        image: idx.image.as_ref().map(|(h, w)| image_info(h, w, 0)),
        diffs: Vec::new(),
        error: None,
    };
    let starts: Vec<u64> = idx.diffs.iter().map(|d| d.start).collect();
    for (i, start) in starts.into_iter().enumerate() {
        if let Some(mut src) = a.diff_source(i) {
            r.diffs.push(summarize(&mut src, start, with_records));
        }
    }
    finish(r)
}

/// Inspects an opened input: files by positioned reads of their record heads, indexed zstd archives
/// through their record index, streams (and zstd files without an index) through the reader.
pub fn inspect_input(input: Input, with_records: bool) -> Report {
    let name = input.name().to_string();
    match input.archive() {
        Ok(Some(mut a)) => return inspect_archive(&name, &mut a, with_records),
        Ok(None) => {}
        Err(e) => {
            let kind = if input.kind() == Kind::Image {
                "image"
            } else {
                "diff"
            };
            return failed(&name, kind, e);
        }
    }
    let kind = input.kind();
    if let Some((f, len)) = input.file() {
        // Record heads by positioned reads, payloads skipped unread.
        if let Ok(f) = f.try_clone() {
            return inspect_with(
                &name,
                kind,
                with_records,
                f,
                |f| ImageReader::from_file(f, len),
                |f| DiffReader::from_file(f, len),
            );
        }
    }
    let compressed = input.is_compressed();
    let mut r = input.into_reader();
    let mut report = inspect_reader(&name, kind, &mut r, with_records);
    if compressed && report.error.is_none() {
        // Read what follows the diff so that a truncated or corrupt archive is noticed.
        if let Err(e) = io::copy(&mut r, &mut io::sink()) {
            report.error = Some(Error::from(e).with_file(&name).to_string());
        }
    }
    report
}

fn opt_name(n: &Option<String>, none: &str) -> String {
    n.clone().unwrap_or_else(|| none.to_string())
}

/// Writes a human-readable report (see [`render_reports`]).
///
/// # Errors
/// Writing to `out` fails.
pub fn render_text(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    render_reports(std::slice::from_ref(r), out)
}

/// Writes human-readable reports, one after the other. The 8-byte `p` length field that
/// Ceph 16 writes in every v2 diff is known Ceph behaviour: instead of a warning per diff,
/// one note at the end counts the files that have it (the JSON report lists each).
///
/// # Errors
/// Writing to `out` fails.
pub fn render_reports(reports: &[Report], out: &mut dyn Write) -> io::Result<()> {
    for r in reports {
        render_one(r, out)?;
    }
    let quirky = reports
        .iter()
        .filter(|r| {
            r.diffs
                .iter()
                .any(|d| d.warnings.iter().any(|w| w.kind.is_ceph16_p_length()))
        })
        .count();
    if quirky > 0 {
        writeln!(out, "{}", crate::error::ceph16_note(quirky))?;
    }
    Ok(())
}

fn render_one(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{}: {}",
        r.file,
        if r.kind == "image" {
            "rbd image v2 (export format 2)"
        } else {
            "rbd diff"
        }
    )?;
    if let Some(img) = &r.image {
        let o = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        writeln!(
            out,
            "  order {}  features {}  stripe unit {}  stripe count {}  diffs {}",
            o(img.order),
            img.features.map_or("-".into(), |f| format!("0x{f:x}")),
            img.stripe_unit.map_or("-".into(), |v| Bytes(v).to_string()),
            o(img.stripe_count),
            img.diff_count
        )?;
        for (k, v) in &img.meta {
            writeln!(out, "  meta {k} = {v}")?;
        }
        for w in &img.warnings {
            writeln!(out, "  warning: {w}")?;
        }
        if img.more_warnings > 0 {
            let m = crate::check::more_warnings(img.more_warnings);
            writeln!(out, "  warning: {m}")?;
        }
    }
    for (i, d) in r.diffs.iter().enumerate() {
        let indent = if r.kind == "image" {
            writeln!(out, "  diff {} at byte {}:", i + 1, d.start)?;
            "    "
        } else {
            "  "
        };
        let version = d.version.map_or("?".to_string(), |v| v.to_string());
        writeln!(
            out,
            "{indent}format {version}  from {}  to {}  size {}{}",
            opt_name(&d.from_snap, "(full)"),
            opt_name(&d.to_snap, "(HEAD)"),
            d.image_size.map_or("-".into(), |s| Bytes(s).to_string()),
            d.protected
                .map_or(String::new(), |p| format!("  protected {p}"))
        )?;
        writeln!(
            out,
            "{indent}records {}  w {} ({})  z {} ({}){}",
            d.records,
            d.writes,
            Bytes(d.write_bytes),
            d.zeros,
            Bytes(d.zero_bytes),
            if d.unknown > 0 {
                format!("  unknown {}", d.unknown)
            } else {
                String::new()
            }
        )?;
        match (d.first_offset, d.last_end) {
            (Some(a), Some(b)) => writeln!(
                out,
                "{indent}covers {} in {} ranges, image offsets {a}..{b}",
                Bytes(d.covered_bytes),
                d.covered_ranges
            )?,
            _ => writeln!(out, "{indent}no data records")?,
        }
        if let Some(list) = &d.record_list {
            for rec in list {
                match (rec.offset, rec.len) {
                    (Some(o), Some(l)) => {
                        writeln!(out, "{indent}  @{:<10} {} {o:#x}+{l:#x}", rec.pos, rec.tag)?
                    }
                    (None, Some(l)) => writeln!(
                        out,
                        "{indent}  @{:<10} {} ({l} bytes skipped)",
                        rec.pos, rec.tag
                    )?,
                    _ => writeln!(out, "{indent}  @{:<10} {}", rec.pos, rec.tag)?,
                }
            }
        }
        for w in d.warnings.iter().filter(|w| !w.kind.is_ceph16_p_length()) {
            writeln!(out, "{indent}warning: {w}")?;
        }
        if d.more_warnings > 0 {
            let m = crate::check::more_warnings(d.more_warnings);
            writeln!(out, "{indent}warning: {m}")?;
        }
        if let Some(e) = &d.error {
            writeln!(out, "{indent}error: {e}")?;
        }
    }
    if let Some(e) = &r.error {
        if r.diffs.iter().all(|d| d.error.is_none()) {
            writeln!(out, "  error: {e}")?;
        }
    }
    Ok(())
}
