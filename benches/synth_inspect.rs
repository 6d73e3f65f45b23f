//! Writes a synthetic diff for the whole-process benchmarks (not a measurement itself):
//! `cargo bench --bench synth_inspect -- OUT SIZE_MIB EXTENT_KIB` writes an `rbd diff v1` of
//! SIZE_MIB MiB of `w` records of EXTENT_KIB KiB each, with `DiffWriter`.

use std::io::BufWriter;

use rbddiff::{DiffWriter, Metadata, Version};

fn main() {
    // `cargo bench` adds `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [out, size_mib, extent_kib] = &args[..] else {
        eprintln!("usage: cargo bench --bench synth_inspect -- OUT SIZE_MIB EXTENT_KIB");
        std::process::exit(2);
    };
    let size: u64 = size_mib.parse::<u64>().expect("SIZE_MIB") << 20;
    let extent: u64 = extent_kib.parse::<u64>().expect("EXTENT_KIB") << 10;
    let meta = Metadata {
        from_snap: Some(b"base".to_vec()),
        to_snap: Some(b"next".to_vec()),
        protected: None,
        image_size: Some(2 * size),
    };
    let file = std::fs::File::create(out).expect("create OUT");
    let mut w =
        DiffWriter::new(BufWriter::with_capacity(4 << 20, file), Version::V1, &meta).unwrap();
    let mut payload: Vec<u8> = (0..extent).map(|i| (i % 251) as u8).collect();
    for i in 0..size / extent {
        payload[0] = i as u8;
        // Every other extent of the image: records are not contiguous.
        w.write_data(2 * i * extent, &payload).unwrap();
    }
    w.finish().unwrap();
}
