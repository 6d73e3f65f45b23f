//! Writes a chain of record-dense diffs for `benches/merge-dense.sh`:
//!
//! `cargo bench --bench synth_dense -- OUTDIR N RECORDS [z|scattered|scattered-w]`
//!
//! `OUTDIR/d00.diff` … `d{N-1}.diff` hold `RECORDS` records in all: 16-byte `w` records every
//! 64 bytes (every 16th a `z` record; with `z`, `z` records only), each diff shifted by 8
//! bytes from the one before, so that every record of a later diff clips one of the diff
//! before. With `scattered`, one diff of `z` records at random gaps (< 1 MiB) and of random
//! lengths (< 64 KiB): heads that compress badly; `scattered-w`, of 512-byte `w` records (half
//! noise, half zeros) at random gaps.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use rbddiff::{DiffWriter, Extent, Metadata, Version};

fn main() -> rbddiff::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (dir, n, records, mode) = match &args[..] {
        [dir, n, records] => (dir, n, records, ""),
        [dir, n, records, m] if ["z", "scattered", "scattered-w"].contains(&m.as_str()) => {
            (dir, n, records, m.as_str())
        }
        _ => {
            eprintln!("usage: synth_dense OUTDIR N RECORDS [z|scattered|scattered-w]");
            std::process::exit(2);
        }
    };
    let zeros = mode == "z";
    let num = |s: &str| s.parse::<u64>().expect("a number");
    let (dir, n, records) = (PathBuf::from(dir), num(n), num(records));
    if mode.starts_with("scattered") {
        std::fs::create_dir_all(&dir)?;
        return scattered(&dir.join("d00.diff"), records, mode == "scattered-w");
    }
    let per = records / n;
    let size = per * 64 + 64 * n;
    std::fs::create_dir_all(&dir)?;
    for k in 0..n {
        let meta = Metadata {
            from_snap: (k > 0).then(|| format!("s{k}").into_bytes()),
            to_snap: Some(format!("s{}", k + 1).into_bytes()),
            protected: None,
            image_size: Some(size),
        };
        let f = BufWriter::with_capacity(1 << 20, File::create(dir.join(format!("d{k:02}.diff")))?);
        let mut w = DiffWriter::new(f, Version::V1, &meta)?;
        for i in 0..per {
            let at = i * 64 + k * 8;
            if zeros || i % 16 == 15 {
                w.zero(Extent::new(at, 16))?;
            } else {
                w.write_data(at, &u128::from(i ^ k).to_le_bytes())?;
            }
        }
        w.finish()?;
    }
    Ok(())
}

/// One diff of `records` records at random places (see the module docs).
fn scattered(path: &std::path::Path, records: u64, writes: bool) -> rbddiff::Result<()> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // The same sequence twice: once for the image size, once for the records.
    let mut places = Vec::with_capacity(records as usize);
    let mut at = 0u64;
    for _ in 0..records {
        at += next() % (1 << 20);
        let len = if writes { 512 } else { 1 + next() % (1 << 16) };
        places.push((at, len, next()));
        at += len;
    }
    let meta = Metadata {
        to_snap: Some(b"s1".to_vec()),
        image_size: Some(at),
        ..Metadata::default()
    };
    let f = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut w = DiffWriter::new(f, Version::V1, &meta)?;
    let mut data = [0u8; 512];
    for (at, len, seed) in places {
        if writes {
            let mut s = seed | 1;
            for b in data[..256].chunks_mut(8) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                b.copy_from_slice(&s.to_le_bytes());
            }
            w.write_data(at, &data)?;
        } else {
            w.zero(Extent::new(at, len))?;
        }
    }
    w.finish()?;
    Ok(())
}
