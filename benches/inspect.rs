//! `inspect` of a diff (as `rbddiff inspect FILE` does it: heads read, payloads seeked over;
//! and over a memory map) against reading the same file (summing its bytes): inspect must
//! cost at most 1% of reading the file from page cache, since it touches only record heads.
//!
//! `cargo bench --bench inspect` uses a 1.5 GiB diff of 1 MiB extents in a temporary
//! directory (RBDDIFF_BENCH_MIB changes the size).

use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Read};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rbddiff::inspect::{inspect_bytes, inspect_file};
use rbddiff::{DiffWriter, Metadata, Version};

fn synth(path: &std::path::Path, size: u64, extent: u64) {
    let meta = Metadata {
        image_size: Some(2 * size),
        ..Default::default()
    };
    let file = File::create(path).unwrap();
    let mut w =
        DiffWriter::new(BufWriter::with_capacity(4 << 20, file), Version::V1, &meta).unwrap();
    let payload: Vec<u8> = (0..extent).map(|i| (i % 251) as u8).collect();
    for i in 0..size / extent {
        w.write_data(2 * i * extent, &payload).unwrap();
    }
    w.finish().unwrap();
}

fn bench(c: &mut Criterion) {
    let mib: u64 = std::env::var("RBDDIFF_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1536);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.diff");
    synth(&path, mib << 20, 1 << 20);
    let len = std::fs::metadata(&path).unwrap().len();
    let p = path.to_str().unwrap().to_string();

    let mut g = c.benchmark_group(format!("inspect-vs-read/{mib}MiB-of-1MiB-extents"));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(len));
    let bytes = std::fs::read(&path).unwrap();
    g.bench_function("inspect_slice_in_memory", |b| {
        b.iter(|| {
            let r = inspect_bytes(&p, &bytes, false);
            assert!(r.ok());
            black_box(r)
        })
    });
    g.bench_function("inspect_file_seek", |b| {
        b.iter(|| {
            let r = inspect_file(&p, false).unwrap();
            assert!(r.ok());
            black_box(r)
        })
    });
    g.bench_function("read_only", |b| {
        let mut buf = vec![0u8; 1 << 20];
        b.iter(|| {
            let mut f = File::open(&p).unwrap();
            let mut total = 0usize;
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n;
            }
            black_box(total)
        })
    });
    g.bench_function("read_sum", |b| {
        let mut buf = vec![0u8; 1 << 20];
        b.iter(|| {
            let mut f = File::open(&p).unwrap();
            let mut sum = 0u64;
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                sum = buf[..n]
                    .iter()
                    .fold(sum, |s, &x| s.wrapping_add(u64::from(x)));
            }
            black_box(sum)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
