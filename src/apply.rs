//! Applying a chain of diffs to a raw image file or a block device, offline, with the same
//! result as `rbd import-diff` on an image.
//!
//! - `s` resizes a regular file (a block device must already be large enough);
//! - `w` becomes positioned writes; all-zero 4 KiB blocks inside a payload are punched
//!   instead of written, so the target stays sparse;
//! - `z` punches a hole in a regular file (`fallocate(PUNCH_HOLE|KEEP_SIZE)`) or zeroes the
//!   range of a block device (`fallocate(ZERO_RANGE)`, the `BLKZEROOUT` path of the kernel);
//!   where that is unsupported, zeros are written.
//! - on a block device (which keeps its size and its old bytes), the area a diff adds to
//!   the image — all of it for a full diff, the part past the previous size when a diff
//!   grows the image — is zeroed where the diff writes nothing, so the first `size` bytes of
//!   the device equal the image. The device must be large enough for every diff (checked
//!   before anything is written), is opened `O_EXCL` (refused while mounted), needs an
//!   explicit `--state-file`, and `--create` is refused.
//!
//! An `rbd export --export-format 2` image stream is taken as the chain of its embedded
//! diffs (full diff first, the image HEAD last).
//!
//! The target remembers which snapshot it holds in a sidecar `TARGET.rbddiff-state`
//! (JSON, written atomically). A diff whose start snapshot differs from the target's is
//! refused, as `rbd import-diff` refuses a missing start snapshot. Before the first write the
//! state says "applying X→Y"; after the final fsync it says "at Y". All operations are
//! idempotent, so re-running after a crash re-applies the interrupted diff and converges.
//!
//! The target is never one of the inputs or their sidecars (same device and inode, so hard
//! links count), even with `--force`; an existing file without a state file is only written
//! with `--force`. A regular target is held under an exclusive `flock` for the whole run, so
//! a second apply to it is refused at once. `--create` checks first that the file system
//! allows a file of the image size.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::FallocateFlags;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::format::Metadata;
use crate::input::{Input, Kind, Watch};
use crate::output::AtomicFile;
use crate::positioned::Positioned;
use crate::progress::Ticker;
use crate::stream::{DiffReader, ImageReader, Item, ItemKind, Payload, RecordSource};

/// Granularity of the all-zero check inside `w` payloads.
pub const ZERO_BLOCK: u64 = 4096;
const STREAM_BUF: usize = 1 << 20;
static ZEROS: [u8; ZERO_BLOCK as usize] = [0; ZERO_BLOCK as usize];

/// True when `b` holds only zero bytes.
pub fn is_zero(b: &[u8]) -> bool {
    b.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// What the state sidecar records about a target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TargetState {
    /// The target holds this snapshot (`null`: a diff to the image HEAD was applied last).
    At {
        /// Snapshot name.
        snap: Option<String>,
        /// Image size at that snapshot (absent in state files of older versions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// A diff was being applied; the target may be partly modified.
    Applying {
        /// Its start snapshot (`null` for a full diff).
        from: Option<String>,
        /// Its end snapshot.
        to: Option<String>,
        /// The diff file (for messages).
        file: String,
        /// Image size before that diff (absent when unknown).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
}

/// The sidecar path for `target`: `TARGET.rbddiff-state`.
pub fn state_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_os_string();
    s.push(".rbddiff-state");
    PathBuf::from(s)
}

/// Largest state sidecar read (two snapshot names and a file name fit many times over).
pub const MAX_STATE_LEN: u64 = 1 << 20;

/// Reads a state sidecar; `None` when it does not exist. Only a regular file is read, not
/// through a symbolic link, and at most [`MAX_STATE_LEN`] bytes (see [`crate::smallfile`]).
///
/// # Errors
/// The file exists but is not such a file, cannot be read or is not a valid state document.
pub fn read_state(path: &Path) -> Result<Option<TargetState>> {
    let Some(b) = crate::smallfile::read_small(path, MAX_STATE_LEN)? else {
        return Ok(None);
    };
    serde_json::from_slice(&b)
        .map(Some)
        .map_err(|e| Error::invalid(format!("not a valid rbddiff state file: {e}")).with_file(path))
}

/// Writes a state sidecar atomically (temp file, fsync, rename, directory fsync), with the
/// permission bits of `target`.
///
/// # Errors
/// I/O errors.
pub fn write_state(path: &Path, state: &TargetState, target: &Path) -> Result<()> {
    let mut f = AtomicFile::create_sidecar(path, target)?;
    let mut text = serde_json::to_vec(state).map_err(|e| Error::from(io::Error::from(e)))?;
    text.push(b'\n');
    f.file()
        .write_all(&text)
        .map_err(|e| Error::from(e).with_file(path))?;
    f.commit()
}

/// Options of [`apply_chain`].
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Create the target as a new sparse file (it must not exist, unless an interrupted
    /// apply is being resumed).
    pub create: bool,
    /// Apply even when the start snapshot does not match the target's state.
    pub force: bool,
    /// Check every input against its `.sums` sidecar before the first write.
    pub check_sums: bool,
    /// Where the state sidecar lives (default: [`state_path`] of the target).
    pub state_file: Option<PathBuf>,
}

/// Counters of one apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyStats {
    /// Bytes written with positioned writes.
    pub bytes_written: u64,
    /// Bytes zeroed (`z` records and all-zero blocks of `w` payloads).
    pub bytes_zeroed: u64,
    /// `w` records applied.
    pub writes: u64,
    /// `z` records applied.
    pub zeros: u64,
}

/// One diff of the chain, as applied.
#[derive(Clone, Debug, Serialize)]
pub struct AppliedDiff {
    /// File name (`-` for stdin).
    pub file: String,
    /// Start snapshot (`None` for a full diff).
    pub from_snap: Option<String>,
    /// End snapshot (`None` for a diff to the image HEAD).
    pub to_snap: Option<String>,
    /// Image size after it.
    pub image_size: u64,
    /// False when skipped because the target already held its result.
    pub applied: bool,
    /// Counters.
    pub stats: ApplyStats,
}

/// Result of [`apply_chain`].
#[derive(Clone, Debug, Serialize)]
pub struct ApplyReport {
    /// The target.
    pub target: PathBuf,
    /// The state sidecar.
    pub state_file: PathBuf,
    /// True when the target is a block device.
    pub block_device: bool,
    /// Each diff of the chain.
    pub diffs: Vec<AppliedDiff>,
    /// Snapshot the target now holds (the end snapshot of the chain; `None`: the image HEAD).
    pub to_snap: Option<String>,
    /// Image size now.
    pub image_size: u64,
    /// Arguments and directory entries passed over (see [`crate::dirlist`]).
    pub skipped: Vec<crate::dirlist::Skipped>,
}

/// Applies records to an open target. Used by [`apply_chain`] and by `verify --against`.
#[derive(Debug)]
pub struct Applier<'f> {
    file: &'f File,
    block_device: bool,
    /// The target is known to read as zeros everywhere not written by the current diff
    /// (a file that was empty before its `s` record), so zeros need no I/O at all.
    fresh: bool,
    /// `fallocate` is used for zeroing (cleared when the target does not support it).
    use_fallocate: bool,
    /// Logical block size of a block device (1 for files): `fallocate` ranges are aligned to it.
    block_size: u64,
    /// Size of the image the target holds now, when known.
    known_size: Option<u64>,
    /// While a diff is applied: the part of the image that must read as zeros where the diff
    /// writes nothing (`cursor`, `end`); see [`Applier::apply_source`].
    fill: Option<(u64, u64)>,
    stats: ApplyStats,
    buf: Vec<u8>,
    zbuf: Vec<u8>,
    /// Write-behind for the target, see [`crate::output::WriteBack`].
    write_back: crate::output::WriteBack,
}

fn io_at(e: io::Error, what: &str, off: u64) -> Error {
    Error::new(ErrorKind::Io(io::Error::new(
        e.kind(),
        format!("{what} at image offset {off}: {e}"),
    )))
}

impl<'f> Applier<'f> {
    /// An applier over `file` (opened for writing).
    ///
    /// # Errors
    /// `fstat` fails.
    pub fn new(file: &'f File) -> Result<Self> {
        let block_device = file.metadata()?.file_type().is_block_device();
        let block_size = if block_device {
            rustix::fs::ioctl_blksszget(file).map_or(512, |n| u64::from(n.max(1)))
        } else {
            1
        };
        Ok(Applier {
            file,
            block_device,
            fresh: false,
            use_fallocate: true,
            block_size,
            known_size: None,
            fill: None,
            stats: ApplyStats::default(),
            buf: Vec::new(),
            zbuf: Vec::new(),
            write_back: crate::output::WriteBack::default(),
        })
    }

    /// True when the target is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Whether zeroing may use `fallocate` (default) or must write zero bytes. Both give the
    /// same content; turning it off exercises the fallback used where `fallocate` is not
    /// supported.
    pub fn set_fallocate(&mut self, on: bool) {
        self.use_fallocate = on;
    }

    /// Tells the applier the size of the image the target holds now (`None`: unknown).
    /// A block device keeps its size, so when a diff grows the image, the part past this
    /// size that the diff does not write is zeroed (an image reads zeros there after a
    /// shrink and a regrow, or in a freshly grown area).
    pub fn set_image_size(&mut self, size: Option<u64>) {
        self.known_size = size;
    }

    /// The image size after the last applied diff (or as set), when known.
    pub fn image_size(&self) -> Option<u64> {
        self.known_size
    }

    /// Counters so far.
    pub fn stats(&self) -> &ApplyStats {
        &self.stats
    }

    /// Current size of the target (file length or device size).
    ///
    /// # Errors
    /// I/O errors.
    pub fn target_size(&self) -> Result<u64> {
        if self.block_device {
            let mut f = self.file;
            Ok(f.seek(SeekFrom::End(0))?)
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    /// The `s` record: resize a file; check a block device is large enough.
    ///
    /// # Errors
    /// A block device smaller than `size`, or I/O errors.
    pub fn resize(&mut self, size: u64) -> Result<()> {
        let cur = self.target_size()?;
        if self.block_device {
            if cur < size {
                return Err(Error::invalid(format!(
                    "block device is {cur} bytes, the diff needs an image of {size} bytes"
                )));
            }
            return Ok(());
        }
        self.fresh = cur == 0;
        if cur != size {
            self.file.set_len(size).map_err(|e| too_large(e, size))?;
        }
        Ok(())
    }

    /// Makes `len` bytes at `off` read as zeros.
    ///
    /// # Errors
    /// I/O errors.
    pub fn zero_range(&mut self, off: u64, len: u64) -> Result<()> {
        self.stats.bytes_zeroed += len;
        if len == 0 || self.fresh {
            return Ok(());
        }
        self.zero_io(off, len)
    }

    /// Zeroes `len` bytes at `off`: `fallocate` on the block-aligned middle (files:
    /// `PUNCH_HOLE`, keeping them sparse; block devices: `ZERO_RANGE`, which the kernel
    /// turns into the same zero-out as the `BLKZEROOUT` ioctl, unmapping where the device
    /// can), zero bytes written for unaligned edges or where `fallocate` is unsupported.
    ///
    /// `BLKZEROOUT` itself is not issued: rustix has no safe wrapper for it and a custom
    /// ioctl needs `unsafe`, which the crate forbids.
    fn zero_io(&mut self, off: u64, len: u64) -> Result<()> {
        let end = off + len;
        if self.use_fallocate {
            let bs = self.block_size;
            let a = off.div_ceil(bs).saturating_mul(bs);
            let b = end / bs * bs;
            if a < b {
                let flags = if self.block_device {
                    FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE
                } else {
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE
                };
                match rustix::fs::fallocate(self.file, flags, a, b - a) {
                    Ok(()) => {
                        self.write_zeros(off, a)?;
                        return self.write_zeros(b, end);
                    }
                    Err(rustix::io::Errno::OPNOTSUPP)
                    | Err(rustix::io::Errno::NOSYS)
                    | Err(rustix::io::Errno::INVAL) => self.use_fallocate = false,
                    Err(e) => return Err(io_at(e.into(), "zeroing", a)),
                }
            }
        }
        self.write_zeros(off, end)
    }

    fn write_zeros(&mut self, mut pos: u64, end: u64) -> Result<()> {
        if pos >= end {
            return Ok(());
        }
        if (end - pos) as usize > ZEROS.len() && self.zbuf.is_empty() {
            self.zbuf.resize(STREAM_BUF, 0);
        }
        while pos < end {
            let z: &[u8] = if self.zbuf.is_empty() {
                &ZEROS
            } else {
                &self.zbuf
            };
            let n = (end - pos).min(z.len() as u64) as usize;
            self.file
                .write_all_at(&z[..n], pos)
                .map_err(|e| io_at(e, "write", pos))?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Zeroes the part of the fill region before `upto`, then moves its cursor to `past`.
    fn fill_gap(&mut self, upto: u64, past: u64) -> Result<()> {
        let Some((cur, end)) = self.fill else {
            return Ok(());
        };
        let stop = upto.min(end);
        if cur < stop {
            self.stats.bytes_zeroed += stop - cur;
            self.zero_io(cur, stop - cur)?;
        }
        self.fill = Some((cur.max(stop).max(past.min(end)), end));
        Ok(())
    }

    /// Writes `data` at `off`, punching all-zero 4 KiB blocks instead of writing them.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_at(&mut self, off: u64, data: &[u8]) -> Result<()> {
        let mut pos = 0usize;
        let mut run_start = 0usize;
        let mut run_zero = false;
        while pos < data.len() {
            let abs = off + pos as u64;
            let step = (ZERO_BLOCK - abs % ZERO_BLOCK) as usize;
            let next = data.len().min(pos + step);
            let z = is_zero(&data[pos..next]);
            if pos > run_start && z != run_zero {
                self.flush_run(off, data, run_start, pos, run_zero)?;
                run_start = pos;
            }
            run_zero = z;
            pos = next;
        }
        if pos > run_start {
            self.flush_run(off, data, run_start, pos, run_zero)?;
        }
        Ok(())
    }

    fn flush_run(&mut self, off: u64, data: &[u8], a: usize, b: usize, zero: bool) -> Result<()> {
        let at = off + a as u64;
        if zero {
            self.zero_range(at, (b - a) as u64)
        } else {
            self.stats.bytes_written += (b - a) as u64;
            self.file
                .write_all_at(&data[a..b], at)
                .map_err(|e| io_at(e, "write", at))?;
            self.write_back.wrote(self.file, at, at + (b - a) as u64);
            Ok(())
        }
    }

    /// Applies every record of `src` (its `s` first), up to and including `e`.
    ///
    /// The image must read as zeros wherever the diff writes nothing in the area it adds:
    /// all of it for a full diff (an image starts empty), and past the previous image size
    /// for a diff that grows the image. A regular file gets that from `ftruncate`, except
    /// when a full diff is applied to a non-empty file; a block device keeps its old bytes.
    /// In those cases the gaps between records are zeroed as the records go by (one pass,
    /// nothing written twice).
    ///
    /// # Errors
    /// The first structural problem of the diff or I/O error.
    pub fn apply_source(&mut self, src: &mut dyn RecordSource) -> Result<()> {
        let size = src
            .metadata()
            .image_size
            .ok_or_else(|| Error::new(ErrorKind::MissingSize))?;
        let full = src.metadata().from_snap.is_none();
        let prev = if full { Some(0) } else { self.known_size };
        self.resize(size)?;
        self.fill = match prev {
            Some(p) if p < size && !self.fresh && (self.block_device || full) => Some((p, size)),
            _ => None,
        };
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.walk(src, &mut buf);
        self.buf = buf;
        let r = r.and_then(|()| self.fill_gap(size, size));
        self.fill = None;
        self.fresh = false;
        if r.is_ok() {
            self.known_size = Some(size);
        }
        r
    }

    fn walk(&mut self, src: &mut dyn RecordSource, buf: &mut Vec<u8>) -> Result<()> {
        while let Some(item) = src.next_item()? {
            match item.kind {
                ItemKind::Write { extent, data } => {
                    self.fill_gap(extent.offset, extent.offset + extent.len)?;
                    self.stats.writes += 1;
                    match data {
                        Payload::Bytes(b) => self.write_at(extent.offset, b)?,
                        Payload::Stream(r) => {
                            if buf.is_empty() {
                                buf.resize(STREAM_BUF, 0);
                            }
                            let mut done = 0u64;
                            while done < extent.len {
                                let n = (extent.len - done).min(buf.len() as u64) as usize;
                                r.read_exact(&mut buf[..n])?;
                                self.write_at(extent.offset + done, &buf[..n])?;
                                done += n as u64;
                            }
                        }
                    }
                }
                ItemKind::Zero(e) => {
                    self.fill_gap(e.offset, e.offset + e.len)?;
                    self.stats.zeros += 1;
                    self.zero_range(e.offset, e.len)?;
                }
                ItemKind::End => {}
                _ => {}
            }
        }
        Ok(())
    }

    /// Flushes the target to stable storage.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&self) -> Result<()> {
        Ok(self.file.sync_all()?)
    }
}

fn name(n: &Option<Vec<u8>>) -> Option<String> {
    n.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

/// An input diff: a file (fully checked when opened), one diff embedded in an image stream
/// in a file (at this byte offset), or a stream (stdin, pipes, zstd-compressed files),
/// checked while it is applied.
enum Src {
    File(Rc<Input>, Option<u64>),
    Stream(Box<DiffReader<Box<dyn Read>>>),
}

struct Opened {
    src: Src,
    meta: Metadata,
    /// The file given (errors name it; offsets are in it).
    path: String,
    /// How the report and the state name this diff (the path, plus its place in an
    /// image stream).
    label: String,
    /// Truncation of the file while it is read (see [`crate::input::Watch`]).
    watch: Rc<Watch>,
    /// `w` payload bytes of a stream, when an archive's index tells them (for progress).
    payload_hint: Option<u64>,
}

/// A record source that reports the `w` payload bytes consumed from it.
struct Counted<'s, 't, 'p> {
    inner: &'s mut dyn RecordSource,
    /// Payload of the last item handed out (consumed once the next one is asked for).
    pending: u64,
    tick: &'t mut Ticker<'p>,
}

impl RecordSource for Counted<'_, '_, '_> {
    fn version(&self) -> crate::Version {
        self.inner.version()
    }
    fn metadata(&self) -> &Metadata {
        self.inner.metadata()
    }
    fn metadata_records(&self) -> &[(u64, u8)] {
        self.inner.metadata_records()
    }
    fn warnings(&self) -> &[crate::Warning] {
        self.inner.warnings()
    }
    fn more_warnings(&self) -> u64 {
        self.inner.more_warnings()
    }
    fn position(&self) -> u64 {
        self.inner.position()
    }
    fn next_item(&mut self) -> Result<Option<Item<'_>>> {
        self.tick.add(std::mem::take(&mut self.pending));
        let item = self.inner.next_item()?;
        if let Some(Item {
            kind: ItemKind::Write { extent, .. },
            ..
        }) = &item
        {
            self.pending = extent.len;
        }
        Ok(item)
    }
}

impl Opened {
    /// The diff in a file, read with positioned reads (`None` for a stream).
    fn reader(&self) -> Result<Option<DiffReader<&File>>> {
        let Src::File(inp, at) = &self.src else {
            return Ok(None);
        };
        let (f, len) = inp
            .file()
            .ok_or_else(|| Error::invalid("internal: input is not a file"))?;
        Ok(Some(match *at {
            None => DiffReader::at_file(f, len)?,
            Some(o) => DiffReader::embedded_at(f, len, o)?,
        }))
    }

    /// Bytes of `w` payload, when known before applying (record heads only, or the index
    /// of a compressed archive).
    fn payload_bytes(&self) -> Option<u64> {
        if self.payload_hint.is_some() {
            return self.payload_hint;
        }
        let mut rd = self.reader().ok()??;
        let mut total = 0u64;
        while let Some(item) = rd.next_item().ok()? {
            if let ItemKind::Write { extent, .. } = item.kind {
                total += extent.len;
            }
        }
        Some(total)
    }

    fn apply(&mut self, ap: &mut Applier<'_>, tick: &mut Ticker<'_>) -> Result<()> {
        if let Some(mut rd) = self.reader()? {
            // Payloads are copied with pread through one buffer (the records were checked
            // when the input was opened).
            return ap.apply_source(&mut Counted {
                inner: &mut rd,
                pending: 0,
                tick,
            });
        }
        match &mut self.src {
            Src::Stream(rd) => ap.apply_source(&mut Counted {
                inner: rd.as_mut(),
                pending: 0,
                tick,
            }),
            Src::File(..) => Err(Error::invalid("internal: file input without a reader")),
        }
    }
}

/// Opens one input: a diff, or an `rbd export --export-format 2` image stream, which
/// yields every embedded diff in order (a stream or compressed image is spilled to a
/// temporary file first, so all of it is checked before anything is written).
fn open_inputs(path: &str) -> Result<Vec<Opened>> {
    let input = Input::open(path)?;
    let watch = Rc::new(input.watch());
    watch.check(open_group(path, input, &watch))
}

fn open_group(path: &str, input: Input, watch: &Rc<Watch>) -> Result<Vec<Opened>> {
    let wrap = |e: Error| e.with_file(path);
    let stream = |r: Box<dyn Read>, payload_hint: Option<u64>| -> Result<Vec<Opened>> {
        let rd = DiffReader::new(r).map_err(wrap)?;
        Ok(vec![Opened {
            meta: rd.metadata().clone(),
            src: Src::Stream(Box::new(rd)),
            path: path.to_string(),
            label: path.to_string(),
            watch: Rc::clone(watch),
            payload_hint,
        }])
    };
    match input.kind() {
        Kind::Zstd => {
            let z = crate::zst::ZstdReader::new(input.into_reader()).map_err(wrap)?;
            return stream(Box::new(z), None);
        }
        Kind::Image => {
            let input = Rc::new(input.into_seekable()?);
            let (f, len) = input
                .file()
                .ok_or_else(|| Error::invalid("the image stream is empty").with_file(path))?;
            let mut img = ImageReader::from_file(f.try_clone()?, len).map_err(wrap)?;
            let count = img.header().diff_count;
            let mut out = Vec::new();
            // Every record of every embedded diff is checked here (heads only).
            while let Some(d) = img.next_diff().map_err(wrap)? {
                let k = out.len();
                out.push(Opened {
                    meta: d.metadata().clone(),
                    src: Src::File(Rc::clone(&input), Some(d.start_offset())),
                    path: path.to_string(),
                    label: format!("{path} (diff {} of {count})", k + 1),
                    watch: Rc::clone(watch),
                    payload_hint: None,
                });
            }
            if out.is_empty() {
                return Err(Error::invalid("the image stream holds no diffs").with_file(path));
            }
            return Ok(out);
        }
        Kind::DiffV1 | Kind::DiffV2 | Kind::Unknown => {}
    }
    match input.file() {
        Some((f, len)) => {
            let mut d = DiffReader::at_file(f, len).map_err(wrap)?;
            // Check every record before anything is written (heads only: payloads are
            // skipped unread).
            while d.next_item().map_err(wrap)?.is_some() {}
            let meta = d.metadata().clone();
            Ok(vec![Opened {
                src: Src::File(Rc::new(input), None),
                meta,
                path: path.to_string(),
                label: path.to_string(),
                watch: Rc::clone(watch),
                payload_hint: None,
            }])
        }
        None => {
            // An indexed archive of one diff knows its payload bytes: the progress has a total.
            let hint = input
                .archive()
                .ok()
                .flatten()
                .and_then(|a| match &a.index().diffs[..] {
                    [_] => {
                        let (mut c, mut n) = (a.diff_records(0), 0u64);
                        while let Ok(Some(r)) = c.next(&a) {
                            if r.tag == crate::format::tag::WRITE {
                                n += r.len;
                            }
                        }
                        Some(n)
                    }
                    _ => None,
                });
            stream(input.into_reader(), hint)
        }
    }
}

/// Opens an existing target for the whole run: a regular file under an exclusive `flock`
/// (a second apply to it is refused at once), a block device `O_EXCL` (refused while mounted
/// or claimed).
fn open_target(target: &Path, block_device: bool) -> Result<Held> {
    let mut oo = OpenOptions::new();
    oo.read(true).write(true);
    if block_device {
        oo.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
    }
    let file = oo
        .open(target)
        .map_err(|e| Error::from(e).with_file(target))?;
    if !block_device {
        lock(&file, target)?;
    }
    Ok(Held(file))
}

/// The open target. Its lock is released explicitly when it is dropped: a child process
/// forked meanwhile by another thread shares the open file, and would otherwise keep the
/// lock until it execs.
struct Held(File);

impl Drop for Held {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

/// Takes the exclusive lock of a regular target, without waiting.
fn lock(file: &File, target: &Path) -> Result<()> {
    use rustix::fs::FlockOperation;
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::invalid(
            "the target is locked by another process (an apply to it is running); \
             nothing was done",
        )
        .with_file(target)),
        Err(e) => Err(Error::from(io::Error::from(e)).with_file(target)),
    }
}

/// Creates a new target for `--create`, locked, with the permission bits of `like` (the
/// first input) or 0600. The file system must allow a file of `size` bytes (a trial
/// `ftruncate`): otherwise the new file is removed and the error says what to use instead.
fn create_target(target: &Path, size: u64, like: Option<&Path>) -> Result<Held> {
    let mode = crate::output::mode_of(like);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(|e| Error::from(e).with_file(target))?;
    // Not removed if locked: another run took the new file first and is using it.
    lock(&file, target)?;
    let file = Held(file);
    let r = crate::output::set_mode(&file.0, mode)
        .map_err(|e| e.with_file(target))
        .and_then(|()| {
            file.0
                .set_len(size)
                .and_then(|()| file.0.set_len(0))
                .map_err(|e| too_large(e, size).with_file(target))
        });
    if let Err(e) = r {
        drop(file);
        let _ = std::fs::remove_file(target);
        return Err(e);
    }
    Ok(file)
}

/// The error of a resize to `size`, with advice when the file system cannot hold a file
/// that large.
fn too_large(e: io::Error, size: u64) -> Error {
    let big = e.raw_os_error() == Some(rustix::io::Errno::FBIG.raw_os_error())
        || e.kind() == io::ErrorKind::InvalidInput
        || e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error());
    if !big {
        return Error::from(e);
    }
    Error::from(io::Error::new(
        e.kind(),
        format!(
            "{e}: this file system cannot hold a file of {size} bytes (the image size); \
             apply to a file system that allows larger files (such as XFS) or to a block \
             device; nothing was written"
        ),
    ))
}

/// The identity (device, inode) of an open file or of the file at a path.
type FileId = (u64, u64);

fn id_of(m: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

fn id_at(p: &Path) -> Option<FileId> {
    std::fs::metadata(p).ok().map(|m| id_of(&m))
}

/// `p` with its directory resolved (the file itself need not exist), to compare names.
fn resolved(p: &Path) -> Option<PathBuf> {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(dir.canonicalize().ok()?.join(p.file_name()?))
}

/// Refuses a target, or a state file, that is one of the inputs or their `.sums` sidecars
/// (same device and inode: hard links and symbolic links included), and a state file that
/// is the target: applying would overwrite the backup being read.
fn refuse_overlap(files: &[String], target: &Path, held: Option<&File>, sp: &Path) -> Result<()> {
    let mut inputs: Vec<(FileId, String)> = Vec::new();
    for f in files {
        let id = if f == "-" {
            use std::os::fd::AsFd;
            rustix::fs::fstat(io::stdin().as_fd())
                .ok()
                .map(|st| (st.st_dev, st.st_ino))
        } else {
            id_at(Path::new(f))
        };
        inputs.extend(id.map(|id| (id, f.clone())));
        if f != "-" {
            let side = crate::sums::sums_path(Path::new(f));
            inputs.extend(id_at(&side).map(|id| (id, side.display().to_string())));
        }
    }
    let target_id = match held {
        Some(f) => Some(id_of(
            &f.metadata().map_err(|e| Error::from(e).with_file(target))?,
        )),
        None => None,
    };
    let refuse = |what: &str, name: &str| {
        Err(Error::invalid(format!(
            "{what} is the input {name}: applying would overwrite it; nothing was done"
        ))
        .with_file(target))
    };
    let state_id = id_at(sp);
    for (id, name) in &inputs {
        if Some(*id) == target_id {
            return refuse("the target", name);
        }
        if Some(*id) == state_id {
            return refuse(&format!("the state file {}", sp.display()), name);
        }
    }
    let same_name = resolved(sp).is_some() && resolved(sp) == resolved(target);
    if same_name || (state_id.is_some() && state_id == target_id) {
        return Err(Error::invalid(format!(
            "the state file {} is the target itself; give another --state-file",
            sp.display()
        ))
        .with_file(target));
    }
    Ok(())
}

/// Applies `files` in order to `target`; see the module docs.
///
/// Files are fully checked (structure and chain links) before the first write, so bad
/// input leaves the target as it was. Streams (`-`, pipes, zstd-compressed files) are checked
/// while they are applied: a bad one leaves the target "applying", and the same command with
/// good input resumes it.
///
/// # Errors
/// Bad input, a start snapshot that does not match the target, I/O errors.
pub fn apply_chain(files: &[String], target: &Path, opts: &ApplyOptions) -> Result<ApplyReport> {
    apply_chain_with_progress(files, target, opts, &mut |_, _| {})
}

/// [`apply_chain`], reporting `(w payload bytes applied, total)` to `progress` (see
/// [`crate::progress`]; the total is known when no input is a stream).
///
/// # Errors
/// As [`apply_chain`].
pub fn apply_chain_with_progress(
    paths: &[String],
    target: &Path,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ApplyReport> {
    // A directory stands for its diff files in chain order (see [`crate::dirlist`]).
    let x = crate::dirlist::expand_chain(paths)?;
    let mut report = apply_files(&x.files, target, opts, progress, None)?;
    report.skipped = x.skipped;
    Ok(report)
}

/// [`apply_chain_with_progress`] of one diff already opened (e.g. a stream merged from an
/// archive in a store, named by `input`'s name): applied as a stream (`-`) is, checked while
/// it is applied, and resumed by the same diff given again.
///
/// # Errors
/// As [`apply_chain`].
pub fn apply_input_with_progress(
    input: Input,
    target: &Path,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ApplyReport> {
    let files = [input.name().to_string()];
    apply_files(&files, target, opts, progress, Some(input))
}

/// Applies `files`; `given` is the input of the file of its name, already opened.
fn apply_files(
    files: &[String],
    target: &Path,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(u64, u64),
    mut given: Option<Input>,
) -> Result<ApplyReport> {
    if files.is_empty() {
        return Err(Error::invalid("no diff given"));
    }
    if files.iter().filter(|f| *f == "-").count() > 1 {
        return Err(Error::invalid("stdin (`-`) can be given only once"));
    }
    let sp = opts
        .state_file
        .clone()
        .unwrap_or_else(|| state_path(target));
    let meta = match std::fs::metadata(target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::from(e).with_file(target)),
    };
    let exists = meta.is_some();
    // A file with nothing in it, as a `--create` killed before its state file was written
    // leaves it: nothing to lose by writing it.
    let blank = meta.as_ref().is_some_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.is_file() && (m.len() == 0 || m.blocks() == 0)
    });
    let block_device = meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    if block_device {
        if opts.create {
            return Err(Error::invalid(
                "--create makes a new sparse image file, but the target is a block device; \
                 drop --create to restore onto the device",
            )
            .with_file(target));
        }
        if opts.state_file.is_none() {
            return Err(Error::invalid(
                "the target is a block device: give --state-file PATH (a state file beside \
                 the device node would live in /dev and vanish at reboot)",
            )
            .with_file(target));
        }
    } else if meta.as_ref().is_some_and(|m| !m.is_file()) {
        return Err(
            Error::invalid("the target is neither a regular file nor a block device")
                .with_file(target),
        );
    }
    if !exists && !opts.create {
        return Err(Error::from(io::Error::new(
            io::ErrorKind::NotFound,
            "target does not exist (use --create to start a new image from a full diff)",
        ))
        .with_file(target));
    }
    // An existing target is opened (and locked) before its state is read, and held for the
    // whole run; a new one is created once every check has passed.
    let held = if exists {
        Some(open_target(target, block_device)?)
    } else {
        None
    };
    refuse_overlap(files, target, held.as_ref().map(|h| &h.0), &sp)?;
    let mut state = read_state(&sp)?;
    if !exists {
        // A new image: nothing applied yet.
        state = None;
    } else if state.is_none() && !block_device && !(opts.force || opts.create && blank) {
        return Err(Error::invalid(format!(
            "the target exists but has no state file {}, so it is not known to hold an image \
             of this chain (it may be another file, or a backup); use --force to overwrite it",
            sp.display()
        ))
        .with_file(target));
    }

    // Every input's problem is reported, not only the first one's.
    let mut groups = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for f in files {
        let opened = match given.take_if(|i| i.name() == f) {
            Some(input) => {
                let watch = Rc::new(input.watch());
                watch.check(open_group(f, input, &watch))
            }
            None => open_inputs(f),
        };
        match opened {
            Ok(g) => groups.push(g),
            Err(e) => errors.push(e.with_file(f)),
        }
    }
    if let Some(e) = Error::of_inputs(errors) {
        return Err(e);
    }
    let mut opened = Vec::with_capacity(files.len());
    for (f, group) in files.iter().zip(groups) {
        if opts.check_sums {
            match group.first().map(|o| &o.src) {
                Some(Src::File(inp, _)) if f != "-" && Path::new(f).is_file() => {
                    let raw = inp.raw().unwrap_or(Positioned::Mem(&[]));
                    let findings = crate::sums::check_sums(Path::new(f), raw);
                    let findings = group[0].watch.check(findings)?;
                    if let Some(first) = findings.first() {
                        return Err(Error::invalid(format!(
                            "checksum mismatch, not applying: {first}"
                        ))
                        .with_file(f));
                    }
                }
                _ => {
                    return Err(Error::invalid(
                        "--sums needs a plain diff file, not a stream or a compressed file",
                    )
                    .with_file(f))
                }
            }
        }
        opened.extend(group);
    }
    let files: Vec<String> = opened.iter().map(|o| o.label.clone()).collect();
    let metas: Vec<Metadata> = opened.iter().map(|o| o.meta.clone()).collect();
    for (i, m) in metas.iter().enumerate() {
        if m.image_size.is_none() {
            return Err(Error::new(ErrorKind::MissingSize).with_file(&opened[i].path));
        }
    }
    // The chain itself must link up.
    if !opts.force {
        for i in 1..metas.len() {
            let (a, b) = (&metas[i - 1], &metas[i]);
            if b.from_snap.is_some() && (a.to_snap.is_none() || b.from_snap != a.to_snap) {
                return Err(Error::new(ErrorKind::ChainBreak(format!(
                    "{} starts at snapshot {} but {} ends at {}",
                    files[i],
                    crate::format::show_from(name(&b.from_snap).as_deref()),
                    files[i - 1],
                    crate::format::show_to(name(&a.to_snap).as_deref())
                ))));
            }
        }
    }

    // Where to start: resume an interrupted diff, or skip diffs the target already holds.
    let mut start = 0;
    match &state {
        Some(TargetState::Applying { from, to, file, .. }) => {
            match metas
                .iter()
                .position(|m| name(&m.from_snap) == *from && name(&m.to_snap) == *to)
            {
                Some(i) => start = i,
                None if opts.force => {}
                None => {
                    return Err(Error::invalid(format!(
                        "target was left half-way through applying {file} ({} -> {}); \
                         give that diff again to finish it (or --force)",
                        crate::format::show_from(from.as_deref()),
                        crate::format::show_to(to.as_deref())
                    ))
                    .with_file(target))
                }
            }
        }
        Some(TargetState::At { snap, .. }) => {
            if let Some(i) = metas
                .iter()
                .rposition(|m| snap.is_some() && name(&m.to_snap) == *snap)
            {
                // The target already holds the result of diffs ..=i.
                start = i + 1;
            } else if let Some(from) = metas.first().and_then(|m| name(&m.from_snap)) {
                if !opts.force && Some(&from) != snap.as_ref() {
                    return Err(Error::invalid(format!(
                        "start snapshot '{from}' of {} does not match the target, which holds {} \
                         (like rbd import-diff's \"start snapshot does not exist\"); use --force to apply anyway",
                        files[0],
                        crate::format::show_to(snap.as_deref())
                    ))
                    .with_file(target));
                }
            }
        }
        None => {
            if let Some(from) = metas.first().and_then(|m| name(&m.from_snap)) {
                if !opts.force {
                    let what = if exists {
                        format!(
                            "the target has no state file {} saying it holds a snapshot",
                            sp.display()
                        )
                    } else {
                        "the target is a new, empty image".to_string()
                    };
                    return Err(Error::invalid(format!(
                        "start snapshot '{from}' of {} does not exist in the target: {what}; \
                         use --force to apply anyway",
                        files[0]
                    ))
                    .with_file(target));
                }
            }
        }
    }

    // `--create` onto an existing target is only a resume of an earlier run of this chain.
    let resuming = match &state {
        Some(TargetState::Applying { .. }) => true,
        Some(TargetState::At { .. }) => start > 0,
        None => blank,
    };
    if opts.create && exists && !resuming && !opts.force {
        return Err(Error::from(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "target exists (--create makes a new image; drop it to apply onto this one)",
        ))
        .with_file(target));
    }

    let mut report_diffs: Vec<AppliedDiff> = metas
        .iter()
        .zip(&files)
        .map(|(m, f)| AppliedDiff {
            file: f.clone(),
            from_snap: name(&m.from_snap),
            to_snap: name(&m.to_snap),
            image_size: m.image_size.unwrap_or(0),
            applied: false,
            stats: ApplyStats::default(),
        })
        .collect();

    // The image size the target holds now (a block device's own size says nothing).
    let known_size = match &state {
        Some(TargetState::At { size, .. }) | Some(TargetState::Applying { size, .. }) => *size,
        None => None,
    };
    let Some(first) = report_diffs.get(start) else {
        // Nothing left to apply: the target already holds the end of the chain.
        let size = report_diffs.last().map_or(0, |d| d.image_size);
        let snap = report_diffs.last().and_then(|d| d.to_snap.clone());
        return Ok(ApplyReport {
            target: target.to_path_buf(),
            state_file: sp,
            block_device,
            diffs: report_diffs,
            to_snap: snap,
            image_size: size,
            skipped: Vec::new(),
        });
    };
    let largest = report_diffs[start..]
        .iter()
        .map(|d| d.image_size)
        .max()
        .unwrap_or(0);
    let file = match held {
        Some(f) => f,
        None => create_target(target, largest, files.first().map(Path::new))?,
    };
    if block_device {
        // A device cannot grow: check it holds every image of the chain before anything
        // (the state file included) is written.
        let dev_size = (&file.0)
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::from(e).with_file(target))?;
        if largest > dev_size {
            let d = report_diffs[start..]
                .iter()
                .find(|d| d.image_size > dev_size);
            return Err(Error::invalid(format!(
                "block device is {dev_size} bytes, but {} needs an image of {largest} bytes; \
                 nothing was written",
                d.map_or("", |d| d.file.as_str()),
            ))
            .with_file(target));
        }
    }
    write_state(
        &sp,
        &TargetState::Applying {
            from: first.from_snap.clone(),
            to: first.to_snap.clone(),
            file: first.file.clone(),
            size: known_size,
        },
        target,
    )?;
    let mut ap = Applier::new(&file.0)?;
    ap.set_image_size(known_size);
    let total = opened[start..]
        .iter()
        .map(Opened::payload_bytes)
        .sum::<Option<u64>>();
    let mut tick = Ticker::new(progress, total.unwrap_or(0));
    for i in start..metas.len() {
        if i > start {
            let d = &report_diffs[i];
            write_state(
                &sp,
                &TargetState::Applying {
                    from: d.from_snap.clone(),
                    to: d.to_snap.clone(),
                    file: d.file.clone(),
                    size: ap.image_size(),
                },
                target,
            )?;
        }
        let before = ap.stats().clone();
        let f = opened[i].path.clone();
        let r = opened[i].apply(&mut ap, &mut tick);
        opened[i].watch.check(r).map_err(|e| {
            if e.is_io() && e.file().is_none() && e.offset().is_none() {
                e.with_file(target)
            } else {
                e.with_file(&f)
            }
        })?;
        ap.sync().map_err(|e| e.with_file(target))?;
        let d = &mut report_diffs[i];
        d.applied = true;
        let s = ap.stats();
        d.stats = ApplyStats {
            bytes_written: s.bytes_written - before.bytes_written,
            bytes_zeroed: s.bytes_zeroed - before.bytes_zeroed,
            writes: s.writes - before.writes,
            zeros: s.zeros - before.zeros,
        };
        write_state(
            &sp,
            &TargetState::At {
                snap: d.to_snap.clone(),
                size: Some(d.image_size),
            },
            target,
        )?;
    }
    tick.finish();
    let last = report_diffs
        .last()
        .map(|d| (d.to_snap.clone(), d.image_size));
    let (snap, size) = last.unwrap_or((None, 0));
    Ok(ApplyReport {
        target: target.to_path_buf(),
        state_file: sp,
        block_device: ap.block_device,
        diffs: report_diffs,
        to_snap: snap,
        image_size: size,
        skipped: Vec::new(),
    })
}

/// Applies `files` in order to an already open file, without any state sidecar or snapshot
/// checks (the caller owns the file; used for scratch copies).
///
/// # Errors
/// Bad input or I/O errors.
pub fn apply_files_to(file: &File, files: &[String]) -> Result<ApplyStats> {
    let mut ap = Applier::new(file)?;
    let mut none = |_, _| {};
    let mut tick = Ticker::new(&mut none, 0);
    for f in files {
        for mut o in open_inputs(f)? {
            let r = o.apply(&mut ap, &mut tick);
            o.watch.check(r).map_err(|e| e.with_file(f))?;
        }
    }
    Ok(ap.stats().clone())
}
