//! Writes a chain of record-dense diffs for `benches/merge-dense.sh`:
//!
//! `cargo bench --bench synth_dense -- OUTDIR N RECORDS [z]`
//!
//! `OUTDIR/d00.diff` … `d{N-1}.diff` hold `RECORDS` records in all: 16-byte `w` records every
//! 64 bytes (every 16th a `z` record; with `z`, `z` records only), each diff shifted by 8
//! bytes from the one before, so that every record of a later diff clips one of the diff
//! before.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use rbddiff::{DiffWriter, Extent, Metadata, Version};

fn main() -> rbddiff::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (dir, n, records, zeros) = match &args[..] {
        [dir, n, records] => (dir, n, records, false),
        [dir, n, records, z] if z == "z" => (dir, n, records, true),
        _ => {
            eprintln!("usage: synth_dense OUTDIR N RECORDS [z]");
            std::process::exit(2);
        }
    };
    let num = |s: &str| s.parse::<u64>().expect("a number");
    let (dir, n, records) = (PathBuf::from(dir), num(n), num(records));
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
