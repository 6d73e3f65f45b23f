//! The image of a snapshot, read through a chain of diff files without materialising it.
//!
//! [`ChainView::open`] plans the merge of the chain ([`crate::merge::plan`]: every input is
//! validated, the chain checked) and keeps the data extents of the merged diff in a
//! [`Map`] (32 bytes each, in memory up to [`MEM_EXTENTS`], else in a temporary file). A read takes, for every byte, the newest record covering
//! it: payload bytes with `pread` from plain files, or from the frames of an indexed `.zst`
//! archive that hold them (read with `pread` and decompressed on demand, kept in a cache of
//! at most [`CACHE_BYTES`] per view); holes and `z` ranges read as zeros. Reads go through
//! the files, not their mappings, so served data does not count in the process's RSS beyond
//! the cache and the request buffers.
//!
//! Block status is by content at 4 KiB granularity, as [`crate::apply`] leaves a raw file: a
//! block reads as a hole (`HOLE | ZERO`) when it is all zeros (a gap, a `z` range, or
//! zero payload), else as data. Finding zero payload reads it; one status call reads at
//! most [`STATUS_READ`] bytes and reports that far.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::map::{Builder, Ext, Map, MEM_EXTENTS};
use super::{Export, STATE_HOLE, STATE_ZERO};
use crate::error::{Error, Result};
use crate::merge::{merge_input, open_input, plan, MergeInput, MergeOptions, Source};
use crate::zst::FrameEntry;

/// The bytes of decompressed frames a view keeps.
pub const CACHE_BYTES: usize = 64 << 20;
/// The most payload bytes one status call reads to find zero blocks.
pub const STATUS_READ: u64 = 64 << 20;
const BLOCK: u64 = 4096;

/// A serving thread's decompression context (made on its first frame) and buffer for the
/// compressed bytes of a frame.
type Work = (Option<zstd::bulk::Decompressor<'static>>, Vec<u8>);

thread_local! {
    static WORK: std::cell::RefCell<Work> = const { std::cell::RefCell::new((None, Vec::new())) };
}

/// The image at the end snapshot of a chain of diff files.
pub struct ChainView {
    to_snap: Option<String>,
    size: u64,
    /// Name and file of each input (a zstd file without an index: its decompressed copy).
    files: Vec<(String, File)>,
    /// The seek table of each input read through its index (payload offsets are then
    /// offsets in the decompressed diff stream); `None` for plain files.
    frames: Vec<Option<Vec<FrameEntry>>>,
    map: Map,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for ChainView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainView")
            .field("to_snap", &self.to_snap)
            .field("size", &self.size)
            .field("inputs", &self.files.len())
            .field("extents", &self.map.len())
            .finish()
    }
}

/// The slot of one frame in the cache: filled by the first reader that wants it while the
/// others wait on its lock, so a frame is decompressed once however many clients read it.
type Slot = Arc<Mutex<Option<Arc<Vec<u8>>>>>;

/// Frames in the cache, oldest first: (input, frame), decompressed length, slot.
#[derive(Default)]
struct Cache {
    bytes: usize,
    frames: VecDeque<((usize, usize), usize, Slot)>,
}

impl ChainView {
    /// Opens the chain `paths` (a full diff and the incrementals after it, in order; or any
    /// chain whose merge is wanted): plain files are read with `pread`, indexed archives
    /// through their index, other zstd files decompressed to a temporary file once.
    ///
    /// # Errors
    /// As [`crate::merge::open_input`] and [`crate::merge::plan`]: an input cannot be read or
    /// is invalid, or the files do not form a chain.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<ChainView> {
        ChainView::open_with(paths, MEM_EXTENTS)
    }

    /// [`ChainView::open`], keeping at most `mem_extents` extents of the map in memory (more
    /// move it to a temporary file, [`super::map`]).
    ///
    /// # Errors
    /// As [`ChainView::open`], or the map's temporary file cannot be written.
    pub fn open_with<P: AsRef<Path>>(paths: &[P], mem_extents: usize) -> Result<ChainView> {
        if paths.is_empty() {
            return Err(Error::invalid("no diff file to serve"));
        }
        let inputs = paths
            .iter()
            .map(|p| open_input(&p.as_ref().to_string_lossy()))
            .collect::<Result<Vec<_>>>()?;
        let (map, meta, frames) = {
            let mis = inputs
                .iter()
                .map(merge_input)
                .collect::<Result<Vec<MergeInput<'_>>>>()?;
            let p = plan(&mis, &MergeOptions::default())?;
            let mut map = Builder::new(mem_extents);
            p.pieces(&mis, &mut |start, end, src| {
                if let Some((input, src)) = src {
                    map.push(Ext {
                        start,
                        end,
                        src,
                        input: input as u32,
                    });
                }
            })?;
            // The seek table of each archive the plan read, taken from the archive as opened.
            let frames = mis
                .iter()
                .map(|m| match &m.source {
                    Source::Archive(a) => Some(a.frames().to_vec()),
                    _ => None,
                })
                .collect();
            (map.finish()?, p.metadata().clone(), frames)
        };
        let files = inputs
            .iter()
            .map(|i| {
                let (f, _) = i.raw_file().ok_or_else(|| {
                    Error::invalid("internal: input not a file").with_file(i.name())
                })?;
                Ok((i.name().to_string(), f.try_clone()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ChainView {
            to_snap: meta
                .to_snap
                .as_deref()
                .map(|s| String::from_utf8_lossy(s).into_owned()),
            size: meta.image_size.unwrap_or(0),
            files,
            frames,
            map,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The end snapshot of the chain (`None`: the image HEAD).
    pub fn to_snap(&self) -> Option<&str> {
        self.to_snap.as_deref()
    }

    /// Data extents of the merged map.
    pub fn extents(&self) -> usize {
        self.map.len()
    }

    /// Whether the merged map lives in a temporary file.
    pub fn map_on_disk(&self) -> bool {
        self.map.on_disk()
    }

    /// The decompressed frame `f` of input `i`, from the cache or decompressed now.
    fn frame(&self, i: usize, f: usize, entry: &FrameEntry) -> Result<Arc<Vec<u8>>> {
        let poisoned = || Error::invalid("internal: a reader of the frame cache panicked");
        let slot = {
            let mut c = self.cache.lock().map_err(|_| poisoned())?;
            match c.frames.iter().find(|(k, _, _)| *k == (i, f)) {
                Some((_, _, slot)) => slot.clone(),
                None => {
                    let slot = Slot::default();
                    let len = entry.d_len as usize;
                    c.frames.push_back(((i, f), len, slot.clone()));
                    c.bytes += len;
                    while c.bytes > CACHE_BYTES && c.frames.len() > 1 {
                        if let Some((_, n, _)) = c.frames.pop_front() {
                            c.bytes -= n;
                        }
                    }
                    slot
                }
            }
        };
        let mut held = slot.lock().map_err(|_| poisoned())?;
        if let Some(d) = held.as_ref() {
            return Ok(d.clone());
        }
        let (name, file) = &self.files[i];
        let at_start = FrameEntry {
            c_offset: 0,
            ..*entry
        };
        let mut out = Vec::new();
        WORK.with(|w| -> Result<()> {
            let (dctx, raw) = &mut *w.borrow_mut();
            if dctx.is_none() {
                *dctx = Some(zstd::bulk::Decompressor::new()?);
            }
            let dctx = dctx.as_mut().ok_or_else(poisoned)?;
            // The seek table's frames lie within the file (checked when it was parsed).
            raw.resize(entry.c_len as usize, 0);
            file.read_exact_at(raw, entry.c_offset)?;
            crate::zst::decompress_frame(dctx, raw, f, &at_start, &mut out)
        })
        .map_err(|e| e.with_file(name))?;
        let out = Arc::new(out);
        // An error above leaves the slot empty: the next reader tries again.
        *held = Some(out.clone());
        Ok(out)
    }

    /// Copies payload bytes of input `i` from `src` into `out`.
    fn payload(&self, i: usize, src: u64, out: &mut [u8]) -> Result<()> {
        let (name, file) = self
            .files
            .get(i)
            .ok_or_else(|| Error::invalid("internal: piece of an unknown input"))?;
        match &self.frames[i] {
            Some(frames) => {
                let mut done = 0usize;
                while done < out.len() {
                    let at = src + done as u64;
                    let f = crate::zst::frame_at(frames, at).ok_or_else(|| {
                        Error::invalid(format!("diff stream byte {at} is past the archive's end"))
                            .with_file(name)
                    })?;
                    let data = self.frame(i, f, &frames[f])?;
                    let from = (at - frames[f].d_offset) as usize;
                    let part = data.get(from..).unwrap_or_default();
                    let n = part.len().min(out.len() - done);
                    if n == 0 {
                        return Err(
                            Error::invalid("a frame is shorter than its seek table says")
                                .with_file(name),
                        );
                    }
                    out[done..done + n].copy_from_slice(&part[..n]);
                    done += n;
                }
                Ok(())
            }
            None => file
                .read_exact_at(out, src)
                .map_err(|e| Error::from(e).with_file(name)),
        }
    }

    /// Start of the first data extent that ends after `offset`, or `offset` inside it
    /// (`u64::MAX`: none).
    fn next_data(&self, offset: u64) -> Result<u64> {
        let mut at = u64::MAX;
        self.map.walk_from(offset, &mut |e| {
            at = e.start.max(offset);
            Ok(false)
        })?;
        Ok(at)
    }
}

impl Export for ChainView {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let end = offset + buf.len() as u64;
        // Bytes up to `done` are filled; gaps between data extents read as zeros.
        let mut done = offset;
        self.map.walk_from(offset, &mut |e| {
            if e.start >= end {
                return Ok(false);
            }
            let (a, b) = (e.start.max(offset), e.end.min(end));
            buf[(done - offset) as usize..(a - offset) as usize].fill(0);
            let out = &mut buf[(a - offset) as usize..(b - offset) as usize];
            self.payload(e.input as usize, e.src + (a - e.start), out)?;
            done = b;
            Ok(true)
        })?;
        buf[(done - offset) as usize..].fill(0);
        Ok(())
    }

    fn status(&self, offset: u64, len: u64) -> Result<Vec<(u64, u32)>> {
        let end = offset.saturating_add(len).min(self.size);
        let mut runs: Vec<(u64, u32)> = Vec::new();
        let mut push = |n: u64, flags: u32| match runs.last_mut() {
            Some((l, f)) if *f == flags => *l += n,
            _ => runs.push((n, flags)),
        };
        let hole = STATE_HOLE | STATE_ZERO;
        let mut pos = offset;
        let mut budget = STATUS_READ;
        let mut buf = Vec::new();
        while pos < end {
            let block_end = ((pos / BLOCK + 1) * BLOCK).min(end);
            let data = self.next_data(pos)?;
            if data >= block_end {
                // Every block wholly before the next data extent reads as zeros.
                let to = (data / BLOCK * BLOCK).clamp(block_end, end);
                push(to - pos, hole);
                pos = to;
                continue;
            }
            if budget == 0 {
                break;
            }
            // Read up to 1 MiB of whole blocks and classify each.
            let to = ((pos + (1 << 20)) / BLOCK * BLOCK).clamp(block_end, end);
            buf.resize((to - pos) as usize, 0);
            self.read(pos, &mut buf)?;
            let mut at = pos;
            while at < to {
                let be = ((at / BLOCK + 1) * BLOCK).min(to);
                let chunk = &buf[(at - pos) as usize..(be - pos) as usize];
                push(
                    be - at,
                    if crate::apply::is_zero(chunk) {
                        hole
                    } else {
                        0
                    },
                );
                at = be;
            }
            budget = budget.saturating_sub(to - pos);
            pos = to;
        }
        Ok(runs)
    }
}
