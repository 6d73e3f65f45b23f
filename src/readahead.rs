//! A regular file whose record heads are walked with positioned reads, read ahead on another
//! thread while the walk is dense: when each read starts where the one before ended and
//! asks for a full refill (small records: the walk reads the whole file), the next pieces
//! are read meanwhile, so that the kernel's copy of the file runs beside the walk instead
//! of between its steps. Any other read (a payload skipped: large records) is one `pread`
//! and stops the reading ahead, so that a walk of large records still reads little but
//! their heads.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

/// Bytes read ahead at once.
const PIECE: usize = 256 << 10;
/// Pieces read ahead and not yet taken.
const DEPTH: usize = 2;
/// A read at least this long that starts where the one before ended marks a dense walk.
const DENSE: usize = 16 << 10;
/// Files shorter than this are not read ahead: the thread and the copies cost more than they
/// save (measured on 17 MB of `z` records: 7.3 ms instead of 6.0).
const MIN_FILE: u64 = 64 << 20;

type Piece = io::Result<(u64, Vec<u8>)>;

/// The first `len` bytes of `file`, read at offsets; see the module docs.
pub(crate) struct ReadAhead<'s, 'e> {
    file: &'e File,
    len: u64,
    scope: &'s Scope<'s, 'e>,
    /// The piece being taken from, and its offset.
    piece: Vec<u8>,
    piece_at: u64,
    /// The pieces read ahead, when reading ahead.
    ahead: Option<(Receiver<Piece>, Arc<AtomicBool>)>,
    /// Buffers of pieces taken, for the thread to reuse.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Where the last read ended.
    last_end: u64,
    /// Shorter files are not read ahead ([`MIN_FILE`]).
    min_file: u64,
    /// Pieces taken from the thread so far.
    taken: u64,
}

impl<'s, 'e> ReadAhead<'s, 'e> {
    /// The first `len` bytes of `file`; reading ahead runs on threads of `scope`.
    pub(crate) fn new(file: &'e File, len: u64, scope: &'s Scope<'s, 'e>) -> Self {
        ReadAhead {
            file,
            len,
            scope,
            piece: Vec::new(),
            piece_at: 0,
            ahead: None,
            spare: Arc::default(),
            last_end: u64::MAX,
            min_file: MIN_FILE,
            taken: 0,
        }
    }

    /// Starts reading ahead from `at`.
    fn start(&mut self, at: u64) {
        let (tx, rx) = sync_channel::<Piece>(DEPTH);
        let stop = Arc::new(AtomicBool::new(false));
        let (file, len, spare, halt) = (self.file, self.len, self.spare.clone(), stop.clone());
        // The kernel may read ahead too now (the walk asked it not to, for large records).
        let _ = rustix::fs::fadvise(file, at, 0, rustix::fs::Advice::Sequential);
        self.scope.spawn(move || {
            let mut pos = at;
            while pos < len && !halt.load(Ordering::Relaxed) {
                let mut buf = spare
                    .lock()
                    .ok()
                    .and_then(|mut s| s.pop())
                    .unwrap_or_default();
                let n = PIECE.min((len - pos) as usize);
                buf.resize(n, 0);
                let r = crate::positioned::Positioned::File(file, len)
                    .read_exact_at(&mut buf, pos)
                    .map(|()| (pos, buf));
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    break;
                }
                pos += n as u64;
            }
        });
        self.ahead = Some((rx, stop));
    }

    /// Stops reading ahead (the thread ends at its next piece).
    fn stop(&mut self) {
        if let Some((rx, stop)) = self.ahead.take() {
            stop.store(true, Ordering::Relaxed);
            drop(rx);
        }
        self.piece.clear();
    }

    /// Reads up to `dst.len()` bytes at `at`; see the module docs.
    fn read(&mut self, dst: &mut [u8], at: u64) -> io::Result<usize> {
        let contiguous = at == self.last_end;
        loop {
            let end = self.piece_at + self.piece.len() as u64;
            if (self.piece_at..end).contains(&at) {
                let off = (at - self.piece_at) as usize;
                let n = dst.len().min(self.piece.len() - off);
                dst[..n].copy_from_slice(&self.piece[off..off + n]);
                self.last_end = at + n as u64;
                return Ok(n);
            }
            match &self.ahead {
                Some((rx, _)) if at == end => {
                    let (p_at, p) = match rx.recv() {
                        Ok(r) => r?,
                        Err(_) => {
                            self.stop();
                            continue;
                        }
                    };
                    let old = std::mem::replace(&mut self.piece, p);
                    if let Ok(mut s) = self.spare.lock() {
                        if s.len() < DEPTH + 1 {
                            s.push(old);
                        }
                    }
                    self.piece_at = p_at;
                    self.taken += 1;
                }
                Some(_) => self.stop(),
                None if contiguous
                    && dst.len() >= DENSE
                    && at < self.len
                    && self.len >= self.min_file =>
                {
                    self.start(at);
                    self.piece_at = at;
                }
                None => {
                    let n = dst.len().min(self.len.saturating_sub(at) as usize);
                    crate::positioned::Positioned::File(self.file, self.len)
                        .read_exact_at(&mut dst[..n], at)?;
                    self.last_end = at + n as u64;
                    return Ok(n);
                }
            }
        }
    }

    /// The read function of [`crate::DiffReader`]'s positioned source.
    pub(crate) fn read_at(
        r: &mut Self,
        dst: &mut [u8],
        at: u64,
        _cursor: &mut u64,
    ) -> io::Result<usize> {
        r.read(dst, at)
    }
}

impl Drop for ReadAhead<'_, '_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Never read forward: the walk reads at offsets ([`ReadAhead::read_at`]).
impl io::Read for ReadAhead<'_, '_> {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("internal: read ahead without an offset"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Runs of contiguous full refills (read ahead) and jumps (one `pread` each) read the
    /// bytes that are there, up to the end of the file.
    #[test]
    fn reads_give_the_file_whether_read_ahead_or_not() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
        f.write_all(&data).unwrap();
        let len = data.len() as u64;
        std::thread::scope(|s| {
            let mut r = ReadAhead::new(&f, len, s);
            r.min_file = 0;
            let mut at = 0u64;
            let mut buf = vec![0u8; 64 << 10];
            let mut step = 0u64;
            while at < len {
                step += 1;
                // Every 7th read jumps ahead; the others follow on, in full refills.
                if step % 7 == 0 {
                    at += 100_003;
                    if at >= len {
                        break;
                    }
                }
                let want = if step % 5 == 0 { 100 } else { buf.len() };
                let n = r.read(&mut buf[..want], at).unwrap();
                assert!(n > 0 && n <= want);
                assert_eq!(&buf[..n], &data[at as usize..at as usize + n], "at {at}");
                at += n as u64;
            }
            assert_eq!(r.read(&mut buf, len).unwrap(), 0);
            assert!(step > 40);
            // It did read ahead, and it also read straight after each jump.
            assert!(r.taken >= 5, "{}", r.taken);
        });
    }
}
