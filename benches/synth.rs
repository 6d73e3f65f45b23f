//! Writes a synthetic diff chain for `benches/merge-vs-cat.sh`:
//!
//! `cargo bench --bench synth -- OUTDIR N FULL_MIB INC_MIB IMAGE_MIB`
//!
//! `OUTDIR/d00.diff` is a full diff of `FULL_MIB` MiB in 4 MiB records (as `rbd export-diff`
//! writes for 4 MiB objects); `d01.diff` … are incrementals of about `INC_MIB` MiB each:
//! 64 KiB–1 MiB writes (and some zero records) at random places of an `IMAGE_MIB` MiB image.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use rbddiff::{DiffWriter, Extent, Metadata, Version};

const MIB: u64 = 1 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() -> rbddiff::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() != 5 {
        eprintln!("usage: synth OUTDIR N FULL_MIB INC_MIB IMAGE_MIB");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[0]);
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let (n, full, inc, image) = (num(1), num(2) * MIB, num(3) * MIB, num(4) * MIB);
    std::fs::create_dir_all(&dir)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let pool: Vec<u8> = (0..(8 * MIB / 8))
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    for k in 0..n {
        let meta = Metadata {
            from_snap: (k > 0).then(|| format!("snap{k}").into_bytes()),
            to_snap: Some(format!("snap{}", k + 1).into_bytes()),
            protected: None,
            image_size: Some(image),
        };
        let path = dir.join(format!("d{k:02}.diff"));
        let file = BufWriter::with_capacity(1 << 20, File::create(&path)?);
        let mut w = DiffWriter::new(file, Version::V1, &meta)?;
        if k == 0 {
            let mut off = 0;
            while off < full.min(image) {
                let len = (4 * MIB).min(full - off);
                let from = (rng.next() % (4 * MIB)) as usize;
                w.write_data(off, &pool[from..from + len as usize])?;
                off += len;
            }
        } else {
            // One record in each of `inc / 512 KiB` distinct random 1 MiB slots.
            let slots = image / MIB;
            let want = (inc / (512 * 1024)).min(slots);
            let mut chosen: Vec<u64> = Vec::new();
            let mut taken = vec![false; slots as usize];
            while (chosen.len() as u64) < want {
                let s = rng.next() % slots;
                if !taken[s as usize] {
                    taken[s as usize] = true;
                    chosen.push(s);
                }
            }
            chosen.sort_unstable();
            for s in chosen {
                let len = (16 + rng.next() % 241) * 4096;
                let at = s * MIB + (rng.next() % ((MIB - len) / 4096 + 1)) * 4096;
                if rng.next() % 20 == 0 {
                    w.zero(Extent::new(at, len))?;
                } else {
                    let from = (rng.next() % (4 * MIB)) as usize;
                    w.write_data(at, &pool[from..from + len as usize])?;
                }
            }
        }
        w.finish()?;
    }
    Ok(())
}
