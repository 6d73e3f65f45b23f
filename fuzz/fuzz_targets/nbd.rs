//! The NBD server's session (handshake, options, requests) against arbitrary client bytes,
//! over an in-memory export of 1 MiB: no panic, no allocation beyond the limits (option
//! data and requests are bounded before anything is allocated), and every read reply
//! carries the export's bytes.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use rbddiff::nbd::proto::{serve_client, Limits};
use rbddiff::nbd::{Export, Exports, STATE_HOLE, STATE_ZERO};

struct Mem(Vec<u8>);

impl Export for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> rbddiff::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.0[o..o + buf.len()]);
        Ok(())
    }
    fn status(&self, offset: u64, len: u64) -> rbddiff::Result<Vec<(u64, u32)>> {
        let half = self.size() / 2;
        Ok(if offset < half {
            vec![((half - offset).min(len), 0)]
        } else {
            vec![(len, STATE_HOLE | STATE_ZERO)]
        })
    }
}

struct One(Arc<Mem>);

impl Exports for One {
    fn names(&self) -> Vec<String> {
        vec!["a".into()]
    }
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, String> {
        match name {
            "" | "a" => Ok(self.0.clone()),
            _ => Err("no such export".into()),
        }
    }
}

/// Counts what the server writes without keeping more than the last reply.
struct Sink(u64);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut image = vec![0u8; 1 << 20];
    for (i, b) in image.iter_mut().enumerate().take(1 << 19) {
        *b = (i % 251) as u8;
    }
    let exports = One(Arc::new(Mem(image)));
    let limits = Limits {
        max_request: 1 << 20,
    };
    let mut r = data;
    let mut w = Sink(0);
    let _ = serve_client(&mut r, &mut w, &exports, limits, &|| false);
    // Each 28-byte request yields at most one reply of at most a 1 MiB payload.
    assert!(w.0 <= 64 + (data.len() as u64 / 28 + 1) * ((1 << 20) + 64) + data.len() as u64 * 64);
});
