//! The `.sums` sidecar against arbitrary bytes. The first byte chooses the mode:
//! 0. the sidecar decoder on arbitrary text: no panic, and what decodes re-encodes to itself;
//! 1. a lying sidecar: the true sums of a diff with one field changed must be reported (a
//!    mismatch or a "damaged" error), never pass; the true sums must pass;
//! 2. the streaming sums (`copy_with_sums`) in arbitrary read sizes equal [`sums::compute`]
//!    of the same bytes, and the bytes are copied unchanged.
#![no_main]

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rbddiff::sums::{self, check_sums, compute, copy_with_sums, decode, encode};

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("rbddiff-fuzz-sums-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join("f.diff")
    })
}

/// Reads in the sizes given (1..=256, cycling).
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    k: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let want = self
            .sizes
            .get(self.k % self.sizes.len().max(1))
            .map_or(4096, |&s| usize::from(s) + 1);
        self.k += 1;
        let n = want.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(s) = decode(rest) {
                let again = decode(&encode(&s)).expect("an encoded sidecar decodes");
                assert_eq!(again, s);
            }
        }
        1 => {
            let Some((pick, diff)) = rest.split_first_chunk::<4>() else {
                return;
            };
            let Ok(truth) = compute(diff) else {
                return;
            };
            let path = scratch();
            std::fs::write(path, diff).unwrap();
            sums::write_sums(path, &truth).unwrap();
            assert!(check_sums(path, diff).unwrap().is_empty(), "true sums pass");
            // One lie: a record's CRC, length or offset, or the file length.
            let mut lie = truth.clone();
            let n = lie.records.len();
            let i = usize::from(pick[1]) % n.max(1);
            let d = u64::from(pick[2]) + 1;
            match pick[0] % 4 {
                0 if n > 0 => lie.records[i].crc32 ^= u32::from(pick[3]) | 1,
                1 if n > 0 => lie.records[i].len += d,
                2 if n > 0 => lie.records[i].offset += d,
                _ => lie.file_len += d,
            }
            sums::write_sums(path, &lie).unwrap();
            match check_sums(path, diff) {
                Ok(m) => assert!(!m.is_empty(), "a lying sidecar passed: {lie:?}"),
                Err(_) => {}
            }
        }
        _ => {
            let Some((&k, rest)) = rest.split_first() else {
                return;
            };
            let (sizes, diff) = rest.split_at(usize::from(k % 16).min(rest.len()));
            let mut copy = Vec::new();
            let streamed = copy_with_sums(
                Chunked {
                    data: diff,
                    sizes,
                    k: 0,
                },
                &mut copy,
            );
            match (streamed, compute(diff)) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b);
                    assert!(copy == diff, "copied unchanged");
                }
                (Err(_), Err(_)) => {}
                (a, b) => panic!("streamed {:?} but computed {:?}", a.is_ok(), b.is_ok()),
            }
        }
    }
});
