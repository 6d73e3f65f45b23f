//! Progress reporting of long operations.
//!
//! The `*_with_progress` entry points ([`crate::apply::apply_chain_with_progress`],
//! [`crate::verify::verify_with_progress`], [`crate::compress::compress_with_progress`],
//! [`crate::compress::decompress_with_progress`], [`crate::create::create_diff_with_progress`],
//! and [`crate::merge::merge_files`]) take a callback `&mut dyn FnMut(done, total)`. It is
//! called once at the start, then at most once per [`STEP`] bytes (or once per record or
//! frame, whichever is rarer), and last with `done == total`. `done` never decreases.
//! `total` is 0 while it is not known (stdin, pipes, compressed inputs); the last call then
//! gives the final count as both `done` and `total`.

/// Progress is reported at most once per this many bytes.
pub const STEP: u64 = 4 << 20;

/// Throttles a progress callback (see the module docs).
pub(crate) struct Ticker<'p> {
    f: &'p mut dyn FnMut(u64, u64),
    total: u64,
    done: u64,
    reported: u64,
}

impl<'p> Ticker<'p> {
    /// Starts reporting: calls `f(0, total)`.
    pub(crate) fn new(f: &'p mut dyn FnMut(u64, u64), total: u64) -> Self {
        f(0, total);
        Ticker {
            f,
            total,
            done: 0,
            reported: 0,
        }
    }

    /// Bytes done so far.
    pub(crate) fn done(&self) -> u64 {
        self.done
    }

    /// `n` more bytes done.
    pub(crate) fn add(&mut self, n: u64) {
        self.set(self.done.saturating_add(n));
    }

    /// `done` bytes done in all (a smaller value than before is ignored).
    pub(crate) fn set(&mut self, done: u64) {
        self.done = self.done.max(done);
        if self.total != 0 {
            self.done = self.done.min(self.total);
        }
        if self.done - self.reported >= STEP {
            self.reported = self.done;
            (self.f)(self.done, self.total);
        }
    }

    /// The work is complete: reports `done == total` (the count so far when the total was
    /// not known).
    pub(crate) fn finish(&mut self) {
        if self.total == 0 {
            self.total = self.done;
        }
        self.done = self.total;
        self.reported = self.done;
        (self.f)(self.done, self.total);
    }
}
