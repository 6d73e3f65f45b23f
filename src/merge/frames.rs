//! The decompressed frames of a merge's archive inputs: one cache for the whole merge, bounded
//! in bytes, filled ahead of the writer on other threads.
//!
//! The payload pieces a merge copies are known before they are copied: the same sweep over
//! the same layers gives the same pieces. When no input is a stream, a scheduler thread runs
//! that sweep ahead of the writer and turns each archive piece into frame accesses; it keeps
//! the only copy of the cache policy, and for each access that misses it hands the frame to a
//! decompressing worker (one per core) and sends the writer the frame's slot with the frames
//! to evict then. The writer ([`Frames::copy`]) follows those messages in order, so its cache
//! holds what the scheduler decided, and it waits only for frames not decompressed yet.
//!
//! The policy: an archive's pieces are read in ascending order, so once frame `f` of an input
//! is reached its earlier frames are dropped; past the budget, the frame whose next access
//! (within the next [`WINDOW`] accesses the scheduler has seen) is farthest goes first, and
//! among frames not accessed in the window, the least recently used. With a stream input the
//! pieces cannot be known ahead: the writer then decompresses on its own thread, with the
//! same policy and an empty window (least recently used).
//!
//! Memory: the cached frames (at most the budget, or one frame when a frame is larger), plus
//! the frames decompressed ahead and not yet reached (at most [`DEPTH`] + 2, or
//! [`REMOTE_FETCHES`] + 2 when an archive is read from a store) and [`SPARE`] buffers of
//! evicted frames kept for the workers to decompress into (so that frame-sized buffers are
//! reused, not allocated and faulted in again).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use super::{next_seekable, Layer};
use crate::error::{Error, Result};
use crate::sweep::{sweep, Ext, Layers};
use crate::zst::ZstArchive;

/// Bytes of decompressed frames a merge caches by default: this, plus
/// [`FRAME_BUDGET_PER_INPUT`] per archive input ([`frame_budget`]).
pub const FRAME_BUDGET_BASE: usize = 16 << 20;

/// What each archive input adds to the default frame budget.
pub const FRAME_BUDGET_PER_INPUT: usize = 1 << 20;

/// The bytes of decompressed frames a merge of `archives` archive inputs caches by default,
/// for all of them together: [`FRAME_BUDGET_BASE`] + [`FRAME_BUDGET_PER_INPUT`] each (116 MiB
/// for 100 archives). The frames decompressed ahead of the writer and the spare buffers come
/// on top: at most 6 frames, 24 MiB at the default frame size.
pub fn frame_budget(archives: usize) -> usize {
    FRAME_BUDGET_BASE.saturating_add(archives.saturating_mul(FRAME_BUDGET_PER_INPUT))
}

/// Accesses the scheduler looks ahead to choose which frame to evict.
pub const WINDOW: usize = 4096;

/// Frames decompressed ahead and waiting for the writer.
pub const DEPTH: usize = 2;

/// Frames fetched and decompressed at once, and how far ahead, when an archive is read from
/// a store (each frame one ranged request, whose latency the parallel requests hide).
pub const REMOTE_FETCHES: usize = 4;

/// Buffers of evicted frames kept for reuse.
const SPARE: usize = 2;

/// Frame-sized buffers to reuse.
type Spare = Arc<Mutex<Vec<Vec<u8>>>>;

/// Frame `.1` of input `.0`.
type Key = (u32, u32);

/// A decompressed frame, or why it could not be.
type Data = Result<Vec<u8>>;

/// What the scheduler tells the writer for an access that misses.
enum Msg {
    /// Evict `evict`, then cache frame `key`, whose data comes through `data`.
    Frame {
        key: Key,
        evict: Vec<Key>,
        data: Receiver<Data>,
    },
    /// The scheduler stopped (its sweep failed).
    Failed(Error),
}

/// The cache policy (see the module documentation): which frames are held.
struct Policy {
    budget: usize,
    /// Held frames: length and last access.
    held: HashMap<Key, (usize, u64)>,
    bytes: usize,
    tick: u64,
}

impl Policy {
    fn new(budget: usize) -> Self {
        Policy {
            budget,
            held: HashMap::new(),
            bytes: 0,
            tick: 0,
        }
    }

    fn drop_key(&mut self, k: &Key) {
        if let Some((n, _)) = self.held.remove(k) {
            self.bytes -= n;
        }
    }

    /// An access to `key` (`len` bytes), `ahead` the accesses known to follow: `None` when the
    /// frame is held, else the frames to evict before it is added.
    fn access<'k>(
        &mut self,
        key: Key,
        len: usize,
        ahead: impl Iterator<Item = &'k Key>,
    ) -> Option<Vec<Key>> {
        self.tick += 1;
        if let Some(e) = self.held.get_mut(&key) {
            e.1 = self.tick;
            return None;
        }
        let mut evict: Vec<Key> = (self.held.keys())
            .filter(|k| k.0 == key.0 && k.1 < key.1)
            .copied()
            .collect();
        evict.iter().for_each(|k| self.drop_key(k));
        if self.bytes + len > self.budget && !self.held.is_empty() {
            let mut next: HashMap<Key, usize> = HashMap::new();
            for (p, k) in ahead.enumerate() {
                if self.held.contains_key(k) {
                    next.entry(*k).or_insert(p);
                    if next.len() == self.held.len() {
                        break;
                    }
                }
            }
            let mut order: Vec<(Key, usize, u64)> = (self.held.iter())
                .map(|(k, &(_, t))| (*k, next.get(k).copied().unwrap_or(usize::MAX), t))
                .collect();
            order.sort_by_key(|&(k, n, t)| (std::cmp::Reverse(n), t, k));
            for (k, _, _) in order {
                if self.bytes + len <= self.budget {
                    break;
                }
                self.drop_key(&k);
                evict.push(k);
            }
        }
        self.held.insert(key, (len, self.tick));
        self.bytes += len;
        Some(evict)
    }
}

/// Calls `f` with each frame that holds some of the `len` bytes at `pos` of archive `a`.
fn frames_of(a: &ZstArchive<'_>, pos: u64, len: u64, f: &mut dyn FnMut(u32)) {
    let Some(mut i) = a.frame_of(pos) else { return };
    let end = pos.saturating_add(len);
    while let Some(fr) = a.frames().get(i) {
        if fr.d_offset >= end {
            break;
        }
        f(i as u32);
        i += 1;
    }
}

/// How the writer gets the frames it misses.
enum Mode {
    /// From the scheduler's messages.
    Ahead(Receiver<Msg>),
    /// Decompressed here.
    Local(Box<Policy>, Option<Decoder>),
}

/// The writer's side: the cached frames of all archive inputs.
pub(super) struct Frames {
    cache: HashMap<Key, Vec<u8>>,
    spare: Spare,
    last: Option<Key>,
    mode: Mode,
    stop: Arc<AtomicBool>,
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Frames {
    /// Frames decompressed on the writer's thread, within `budget` bytes.
    pub(super) fn local(budget: usize) -> Self {
        Frames {
            cache: HashMap::new(),
            spare: Spare::default(),
            last: None,
            mode: Mode::Local(Box::new(Policy::new(budget)), None),
            stop: Arc::default(),
        }
    }

    /// Frames decompressed ahead: starts, in `scope`, a scheduler thread running the sweep of
    /// `layers` (the same layers, cut at `caps`, that the writer sweeps) and `threads`
    /// decompressing workers, for the archive inputs `archives` (by input), at most `depth`
    /// messages ahead of the writer.
    pub(super) fn ahead<'s, 'e, 'a: 's>(
        scope: &'s std::thread::Scope<'s, 'e>,
        archives: &'s [Option<&'s ZstArchive<'a>>],
        layers: Vec<Layer<'a>>,
        caps: Vec<u64>,
        budget: usize,
        (threads, depth): (usize, usize),
    ) -> Self
    where
        Layer<'a>: Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let (msg_tx, msg_rx) = sync_channel::<Msg>(depth.max(1));
        let (job_tx, job_rx) = sync_channel::<(Key, SyncSender<Data>)>(depth.max(1));
        let job_rx = Arc::new(Mutex::new(job_rx));
        let spare = Spare::default();
        for _ in 0..threads.max(1) {
            let job_rx = job_rx.clone();
            let spare = spare.clone();
            scope.spawn(move || {
                let mut dctx = None;
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok(((i, f), tx)) = job else { break };
                    let _ = tx.send(decode(archives, &mut dctx, i, f, take(&spare)));
                }
            });
        }
        let stop2 = stop.clone();
        scope.spawn(move || {
            let mut look = Look {
                layers,
                archives,
                ahead: VecDeque::with_capacity(WINDOW + 1),
                last: None,
                policy: Policy::new(budget),
                jobs: job_tx,
                msgs: msg_tx.clone(),
                stop: stop2,
            };
            let r = sweep(&mut look, &caps).and_then(|()| {
                while !look.ahead.is_empty() {
                    look.decide()?;
                }
                Ok(())
            });
            if let Err(e) = r {
                let _ = msg_tx.send(Msg::Failed(e));
            }
        });
        Frames {
            cache: HashMap::new(),
            spare,
            last: None,
            mode: Mode::Ahead(msg_rx),
            stop,
        }
    }

    /// Frame `f` of archive `a` (input `i`), from the cache or as the mode gets it.
    fn get(&mut self, a: &ZstArchive<'_>, i: u32, f: u32) -> Result<&[u8]> {
        let key = (i, f);
        let fresh = self.last != Some(key);
        self.last = Some(key);
        match &mut self.mode {
            Mode::Local(policy, dctx) if fresh => {
                let len = a.frames().get(f as usize).map_or(0, |fr| fr.d_len as usize);
                if let Some(evict) = policy.access(key, len, std::iter::empty()) {
                    evict_all(&mut self.cache, &self.spare, &evict);
                    let (dctx, scratch) = match dctx {
                        Some(d) => d,
                        None => dctx.insert((zstd::bulk::Decompressor::new()?, Vec::new())),
                    };
                    let mut data = take(&self.spare);
                    a.decode_frame(f as usize, dctx, &mut data, scratch)?;
                    fit(&mut data);
                    self.cache.insert(key, data);
                }
            }
            Mode::Ahead(rx) if !self.cache.contains_key(&key) => {
                let gone = || Error::invalid("internal: the frames decompressed ahead stopped");
                match rx.recv().map_err(|_| gone())? {
                    Msg::Failed(e) => return Err(e),
                    Msg::Frame {
                        key: k,
                        evict,
                        data,
                    } => {
                        if k != key {
                            return Err(Error::invalid(format!(
                                "internal: frame {f} of input {i} read out of the planned order"
                            )));
                        }
                        evict_all(&mut self.cache, &self.spare, &evict);
                        let data = data.recv().map_err(|_| gone())??;
                        self.cache.insert(key, data);
                    }
                }
            }
            _ => {}
        }
        self.cache
            .get(&key)
            .map(Vec::as_slice)
            .ok_or_else(|| Error::invalid("internal: a frame left the cache while in use"))
    }

    /// Writes `len` bytes of the diff stream of archive `a` (input `i`) at `pos` to `w`.
    ///
    /// # Errors
    /// A frame is corrupt, the range runs past the archive, or writing fails.
    pub(super) fn copy(
        &mut self,
        a: &ZstArchive<'_>,
        i: usize,
        pos: u64,
        len: u64,
        w: &mut dyn Write,
    ) -> Result<()> {
        let i = u32::try_from(i).map_err(|_| Error::invalid("internal: input number"))?;
        let mut done = 0u64;
        while done < len {
            let at = pos + done;
            let f = a.frame_of(at).ok_or_else(|| {
                Error::invalid(format!(
                    "diff stream byte {at} is past the end of the archive ({} bytes)",
                    a.len()
                ))
            })?;
            let d_offset = a.frames()[f].d_offset;
            let frame = self.get(a, i, f as u32)?;
            let src = frame.get((at - d_offset) as usize..).unwrap_or_default();
            let n = (src.len() as u64).min(len - done) as usize;
            if n == 0 {
                return Err(Error::invalid(
                    "a frame is shorter than its seek table says",
                ));
            }
            w.write_all(&src[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A spare buffer, or a new one.
fn take(spare: &Spare) -> Vec<u8> {
    spare
        .lock()
        .ok()
        .and_then(|mut s| s.pop())
        .unwrap_or_default()
}

/// Drops `evict` from `cache`, keeping up to [`SPARE`] of their buffers.
fn evict_all(cache: &mut HashMap<Key, Vec<u8>>, spare: &Spare, evict: &[Key]) {
    for k in evict {
        if let (Some(buf), Ok(mut s)) = (cache.remove(k), spare.lock()) {
            if s.len() < SPARE {
                s.push(buf);
            }
        }
    }
}

/// Decompresses frame `f` of input `i` into `out` (a worker's job).
/// Gives back what a reused buffer holds beyond its frame: the cache counts frames by their
/// length, so a small frame decompressed into a large spare buffer must not keep it.
fn fit(data: &mut Vec<u8>) {
    if data.capacity() > data.len() + data.len() / 8 + (64 << 10) {
        data.shrink_to_fit();
    }
}

/// A decompressing thread's state: its zstd context and the buffer compressed frames are
/// read into (kept from frame to frame).
type Decoder = (zstd::bulk::Decompressor<'static>, Vec<u8>);

fn decode(
    archives: &[Option<&ZstArchive<'_>>],
    dctx: &mut Option<Decoder>,
    i: u32,
    f: u32,
    mut out: Vec<u8>,
) -> Data {
    let a = archives
        .get(i as usize)
        .copied()
        .flatten()
        .ok_or_else(|| Error::invalid("internal: frame of an input that is no archive"))?;
    let (dctx, scratch) = match dctx {
        Some(d) => d,
        None => dctx.insert((zstd::bulk::Decompressor::new()?, Vec::new())),
    };
    a.decode_frame(f as usize, dctx, &mut out, scratch)?;
    fit(&mut out);
    Ok(out)
}

/// The scheduler: the sweep run ahead of the writer, deciding each access.
struct Look<'s, 'a> {
    layers: Vec<Layer<'a>>,
    archives: &'s [Option<&'s ZstArchive<'a>>],
    /// Accesses seen and not decided yet (at most [`WINDOW`]).
    ahead: VecDeque<Key>,
    last: Option<Key>,
    policy: Policy,
    jobs: SyncSender<(Key, SyncSender<Data>)>,
    msgs: SyncSender<Msg>,
    stop: Arc<AtomicBool>,
}

impl Look<'_, '_> {
    fn stopped() -> Error {
        Error::invalid("internal: the merge stopped")
    }

    /// Decides the oldest access seen: a miss sends its frame to a worker and its message to
    /// the writer (waiting while [`DEPTH`] messages wait).
    fn decide(&mut self) -> Result<()> {
        let Some(key) = self.ahead.pop_front() else {
            return Ok(());
        };
        let len = (self.archives.get(key.0 as usize).copied().flatten())
            .and_then(|a| a.frames().get(key.1 as usize))
            .map_or(0, |fr| fr.d_len as usize);
        if let Some(evict) = self.policy.access(key, len, self.ahead.iter()) {
            let (tx, rx) = sync_channel(1);
            self.jobs.send((key, tx)).map_err(|_| Self::stopped())?;
            let msg = Msg::Frame {
                key,
                evict,
                data: rx,
            };
            self.msgs.send(msg).map_err(|_| Self::stopped())?;
        }
        Ok(())
    }
}

impl Layers for Look<'_, '_> {
    fn next(&mut self, k: usize) -> Result<Option<Ext>> {
        let (i, cur) = &mut self.layers[k];
        next_seekable(cur, self.archives.get(*i).copied().flatten())
    }

    fn emit(&mut self, k: usize, start: u64, end: u64, src: Option<u64>) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Self::stopped());
        }
        let i = self.layers[k].0;
        let (Some(a), Some(src)) = (self.archives.get(i).copied().flatten(), src) else {
            return Ok(());
        };
        let mut keys = Vec::new();
        frames_of(a, src, end - start, &mut |f| keys.push((i as u32, f)));
        for key in keys {
            if self.last != Some(key) {
                self.last = Some(key);
                self.ahead.push_back(key);
                while self.ahead.len() > WINDOW {
                    self.decide()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_drops_passed_frames_then_the_farthest_next_use() {
        let mut p = Policy::new(3);
        assert_eq!(p.access((0, 0), 1, [].iter()), Some(vec![]));
        assert_eq!(p.access((0, 0), 1, [].iter()), None);
        // Frame 1 of input 0 makes its frame 0 dead.
        assert_eq!(p.access((0, 1), 1, [].iter()), Some(vec![(0, 0)]));
        assert_eq!(p.access((1, 0), 1, [].iter()), Some(vec![]));
        assert_eq!(p.access((2, 0), 1, [].iter()), Some(vec![]));
        // Full: (3, 0) comes in; (1, 0) is used next, (0, 1) later, (2, 0) never.
        let ahead = [(1, 0), (0, 1)];
        assert_eq!(p.access((3, 0), 1, ahead.iter()), Some(vec![(2, 0)]));
        // Nothing ahead: least recently used first.
        assert_eq!(p.access((4, 0), 1, [].iter()), Some(vec![(0, 1)]));
        // A frame larger than the budget is held alone.
        assert_eq!(
            p.access((5, 0), 10, [].iter()).map(|mut v| {
                v.sort();
                v
            }),
            Some(vec![(1, 0), (3, 0), (4, 0)])
        );
        assert_eq!(p.bytes, 10);
    }
}
