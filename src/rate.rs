//! `--limit-rate`: a writer that passes bytes on at most at a given rate.
//!
//! The rate is kept over the whole transfer: after each piece (at most a tenth of a second's
//! worth of bytes) the writer sleeps until the time that many bytes are due at the rate, so
//! that the average never runs ahead and a slow start is not made up by a burst longer than
//! one piece.

use std::io::{self, Write};
use std::time::{Duration, Instant};

/// A writer limited to `rate` bytes per second (none: unlimited).
pub struct Limited<W> {
    inner: W,
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl<W: Write> Limited<W> {
    /// Wraps `inner`; `rate` in bytes per second (none or 0: no limit).
    pub fn new(inner: W, rate: Option<u64>) -> Self {
        Limited {
            inner,
            rate: rate.filter(|&r| r > 0),
            start: Instant::now(),
            sent: 0,
        }
    }

    /// The wrapped writer.
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn pace(&self) {
        if let Some(r) = self.rate {
            let due = Duration::from_secs_f64(self.sent as f64 / r as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let piece = match self.rate {
            None => buf.len(),
            Some(r) => buf
                .len()
                .min(usize::try_from((r / 10).max(1)).unwrap_or(usize::MAX)),
        };
        let n = self.inner.write(&buf[..piece])?;
        self.sent += n as u64;
        self.pace();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate() {
        let mut w = Limited::new(Vec::new(), Some(1 << 20));
        let t = Instant::now();
        w.write_all(&vec![7u8; 300 << 10]).unwrap();
        let s = t.elapsed().as_secs_f64();
        // 300 KiB at 1 MiB/s: 0.29 s.
        assert!((0.27..0.5).contains(&s), "{s}");
        assert_eq!(w.into_inner().len(), 300 << 10);
    }

    #[test]
    fn unlimited_does_not_wait() {
        let mut w = Limited::new(Vec::new(), None);
        let t = Instant::now();
        w.write_all(&vec![7u8; 4 << 20]).unwrap();
        assert!(t.elapsed().as_secs_f64() < 0.2);
    }
}
