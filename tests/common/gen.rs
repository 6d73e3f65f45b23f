//! Deterministic test inputs: pseudo-random bytes and sparse raw image files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A small xorshift generator, so that a failing seed can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `len` deterministic, poorly compressible bytes for `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| (r.next() >> 24) as u8).collect()
}

/// Writes a sparse raw image file holding `data`: only non-zero 4 KiB blocks are written.
pub fn write_sparse(p: &Path, data: &[u8]) {
    let f = File::create(p).unwrap();
    f.set_len(data.len() as u64).unwrap();
    for (i, c) in data.chunks(4096).enumerate() {
        if c.iter().any(|&b| b != 0) {
            f.write_all_at(c, (i * 4096) as u64).unwrap();
        }
    }
}

/// A path as the `String` the library's file-name arguments take.
pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The sha256 of the image the chain of `image` in `dir` gives, applied offline to a new
/// file `work/restored` (replaced on each call).
pub fn restored_sha256(dir: &Path, image: &str, work: &Path) -> String {
    let files: Vec<String> = rbddiff::workflow::discover_chain(dir, image)
        .unwrap_or_else(|e| panic!("discovery of {image} in {}: {e}", dir.display()))
        .iter()
        .map(|f| path_str(&f.path))
        .collect();
    let target = work.join("restored");
    let _ = std::fs::remove_file(&target);
    let _ = std::fs::remove_file(rbddiff::apply::state_path(&target));
    let opts = rbddiff::apply::ApplyOptions {
        create: true,
        ..rbddiff::apply::ApplyOptions::default()
    };
    rbddiff::apply::apply_chain(&files, &target, &opts).unwrap();
    super::manifest::sha256_file(&target)
}

/// `z` with its record index changed by `f` (the index checksum recomputed, frames and seek
/// table kept): an archive whose content is right but whose index lies.
pub fn relabel(z: &[u8], f: impl FnOnce(&mut rbddiff::zst::DecodedIndex)) -> Vec<u8> {
    use rbddiff::zst::{encode_index, index_frame, parse_seek_table};
    let (frames, seek_start) = parse_seek_table(z).unwrap().unwrap();
    let last = frames.last().unwrap();
    let data_end = (last.c_offset + u64::from(last.c_len)) as usize;
    let mut idx = rbddiff::zst::ZstArchive::open(z)
        .unwrap()
        .unwrap()
        .decoded_index()
        .unwrap();
    f(&mut idx);
    [
        &z[..data_end],
        &index_frame(&encode_index(&idx, frames.len()).unwrap())[..],
        &z[seek_start..],
    ]
    .concat()
}
