//! Writes a synthetic, realistic `rbd diff v1` for the whole-process benchmarks:
//! a mix of text-like blocks (log lines), random (incompressible) blocks, zero-filled `w`
//! blocks and `z` records, with extents of 4 KiB to 4 MiB.
//!
//! `cargo bench --bench synth_mixed -- OUT MIB` (deterministic for a given size).

use std::fs::File;
use std::io::{BufWriter, Write};

use rbddiff::{DiffWriter, Extent, Metadata, Version};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "GET", "POST", "PUT", "request", "served", "cache", "miss", "hit", "user", "session", "backup",
    "volume", "snapshot", "object", "replica", "osd", "pool", "latency", "ok", "error", "timeout",
    "retry", "commit", "flush", "journal", "index", "shard", "client",
];

fn text(rng: &mut Rng, out: &mut Vec<u8>, len: usize) {
    out.clear();
    while out.len() < len {
        let t = 1_764_000_000 + rng.below(100_000);
        let _ = write!(
            out,
            "{t}.{:03} host-{:02} svc[{}]: ",
            rng.below(1000),
            rng.below(32),
            rng.below(65536)
        );
        for _ in 0..(3 + rng.below(8)) {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        let _ = writeln!(out, "id={:016x} took={}ms", rng.next(), rng.below(5000));
    }
    out.truncate(len);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(path), Some(mib)) = (args.first(), args.get(1)) else {
        eprintln!("usage: synth OUT MIB");
        std::process::exit(2);
    };
    let target: u64 = mib.parse::<u64>().expect("MIB") << 20;
    let size = target * 4;
    let meta = Metadata {
        from_snap: Some(b"daily-1".to_vec()),
        to_snap: Some(b"daily-2".to_vec()),
        protected: None,
        image_size: Some(size),
    };
    let f = File::create(path).expect("create output");
    let mut w =
        DiffWriter::new(BufWriter::with_capacity(1 << 20, f), Version::V1, &meta).expect("writer");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::with_capacity(4 << 20);
    let (mut pos, mut written) = (0u64, 0u64);
    while written < target {
        pos += rng.below(64) * 4096;
        let len = (4096u64 << rng.below(11)).min(4 << 20);
        if pos + len > size {
            break;
        }
        match rng.below(10) {
            0..=3 => {
                text(&mut rng, &mut buf, len as usize);
                w.write_data(pos, &buf).expect("write");
            }
            4..=6 => {
                buf.clear();
                while (buf.len() as u64) < len {
                    buf.extend_from_slice(&rng.next().to_le_bytes());
                }
                buf.truncate(len as usize);
                w.write_data(pos, &buf).expect("write");
            }
            7..=8 => {
                buf.clear();
                buf.resize(len as usize, 0);
                w.write_data(pos, &buf).expect("write");
            }
            _ => w.zero(Extent::new(pos, len)).expect("zero"),
        }
        written += len;
        pos += len;
    }
    let mut out = w.finish().expect("finish");
    out.flush().expect("flush");
}
