//! Parsing throughput of the slice and stream drivers at 4 KiB, 64 KiB and 4 MiB extents
//! (records/s and bytes/s), on diffs synthesized with `DiffWriter`.
//!
//! `cargo bench --bench parse`

use std::hint::black_box;
use std::io::Read;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rbddiff::stream::{ItemKind, RecordSource};
use rbddiff::{DiffReader, DiffSlice, DiffWriter, Extent, Metadata, Version};

/// About 64 MiB of `w` records of `extent` bytes each, every fourth followed by a `z`.
fn synth(version: Version, extent: usize) -> (Vec<u8>, u64) {
    const TOTAL: usize = 64 << 20;
    let n = TOTAL / extent;
    let meta = Metadata {
        from_snap: Some(b"a".to_vec()),
        to_snap: Some(b"b".to_vec()),
        protected: None,
        image_size: Some((n as u64 + 1) * 2 * extent as u64),
    };
    let mut w = DiffWriter::new(Vec::with_capacity(TOTAL + n * 40), version, &meta).unwrap();
    let payload: Vec<u8> = (0..extent).map(|i| (i % 253) as u8).collect();
    let mut records = 1;
    for i in 0..n as u64 {
        let off = i * 2 * extent as u64;
        w.write_data(off, &payload).unwrap();
        records += 1;
        if i % 4 == 0 {
            w.zero(Extent::new(off + extent as u64, extent as u64))
                .unwrap();
            records += 1;
        }
    }
    (w.finish().unwrap(), records)
}

fn label(extent: usize) -> String {
    if extent >= 1 << 20 {
        format!("{}MiB", extent >> 20)
    } else {
        format!("{}KiB", extent >> 10)
    }
}

/// Slice driver: walk every record (payloads are borrowed, never touched).
fn walk_slice(bytes: &[u8]) -> u64 {
    let d = DiffSlice::parse(bytes).unwrap();
    let mut n = 0;
    for r in d.records() {
        black_box(r.unwrap());
        n += 1;
    }
    n
}

/// Stream driver: every payload read through the `Read` interface.
fn walk_stream_read(bytes: &[u8], buf: &mut [u8]) -> u64 {
    let mut r = DiffReader::new(bytes).unwrap();
    let mut sum = 0u64;
    while let Some(item) = r.next_item().unwrap() {
        if let ItemKind::Write { mut data, .. } = item.kind {
            loop {
                let k = data.read(buf).unwrap();
                if k == 0 {
                    break;
                }
                sum += u64::from(buf[0]);
            }
        }
    }
    sum
}

/// Stream driver: payloads left unread (skipped by the driver).
fn walk_stream_skip(bytes: &[u8]) -> u64 {
    let mut r = DiffReader::new(bytes).unwrap();
    let mut n = 0;
    while let Some(item) = r.next_item().unwrap() {
        black_box(&item.kind);
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    for version in [Version::V1, Version::V2] {
        for extent in [4 << 10, 64 << 10, 4 << 20] {
            let (bytes, records) = synth(version, extent);
            let id = format!("{version}/{}", label(extent));

            let mut g = c.benchmark_group("records");
            g.sample_size(10).measurement_time(Duration::from_secs(2));
            g.throughput(Throughput::Elements(records));
            g.bench_with_input(BenchmarkId::new("slice", &id), &bytes, |b, x| {
                b.iter(|| walk_slice(x))
            });
            g.bench_with_input(BenchmarkId::new("stream_skip", &id), &bytes, |b, x| {
                b.iter(|| walk_stream_skip(x))
            });
            g.finish();

            let mut g = c.benchmark_group("bytes");
            g.sample_size(10).measurement_time(Duration::from_secs(2));
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_with_input(BenchmarkId::new("slice", &id), &bytes, |b, x| {
                b.iter(|| walk_slice(x))
            });
            let mut buf = vec![0u8; 256 << 10];
            g.bench_with_input(BenchmarkId::new("stream_read", &id), &bytes, |b, x| {
                b.iter(|| walk_stream_read(x, &mut buf))
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
