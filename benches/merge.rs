//! Criterion bench of the merge: the sweep over 2 and 10 in-memory inputs of 10^6 small
//! records in all (each input clipping the one before) against the extent-map planner it
//! replaced (`merge_oracle`), and the old extent-map build alone, with one million small
//! extents, plus the anonymous memory the map takes per extent.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rbddiff::extent::{ExtentMap, Piece};
use rbddiff::merge::{merge, merge_oracle, MergeInput, MergeOptions};
use rbddiff::{DiffWriter, Metadata, Version};

const N: u64 = 1_000_000;

/// One input's worth of ascending 4 KiB extents with 4 KiB gaps (what one diff yields).
fn ascending(m: &mut ExtentMap, input: u32, shift: u64) {
    for i in 0..N {
        let s = i * 8192 + shift;
        m.insert(
            s,
            s + 4096,
            Piece::Data {
                input,
                src_offset: 64 + i * 4113,
            },
        );
    }
}

/// 1 M extents over 10 inputs, each clipping earlier ones at pseudo-random places.
fn overlapping(m: &mut ExtentMap) {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for k in 0..N {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = (x % (1 << 33)) & !511;
        let len = 512 + (x >> 40) % 16384;
        let p = if k % 5 == 0 {
            Piece::Zero
        } else {
            Piece::Data {
                input: (k / 100_000) as u32,
                src_offset: k * 8192,
            }
        };
        m.insert(s, s + len, p);
    }
}

fn rss_anon_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn report_memory() {
    let before = rss_anon_kib();
    let mut m = ExtentMap::new();
    ascending(&mut m, 0, 0);
    let after = rss_anon_kib();
    if let (Some(a), Some(b)) = (before, after) {
        eprintln!(
            "extent map: {} extents, RssAnon +{} KiB = {:.1} bytes/extent",
            m.len(),
            b - a,
            (b - a) as f64 * 1024.0 / m.len() as f64
        );
    }
    black_box(m);
}

fn bench(c: &mut Criterion) {
    report_memory();
    let mut g = c.benchmark_group("extent_map_build");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("1M ascending extents", |b| {
        b.iter(|| {
            let mut m = ExtentMap::new();
            ascending(&mut m, 0, 0);
            black_box(m.len())
        })
    });
    g.bench_function("1M extents clipping 1M extents", |b| {
        b.iter_batched(
            || {
                let mut m = ExtentMap::new();
                ascending(&mut m, 0, 0);
                m
            },
            |mut m| {
                ascending(&mut m, 1, 2048);
                black_box(m.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("1M random overlapping extents", |b| {
        b.iter(|| {
            let mut m = ExtentMap::new();
            overlapping(&mut m);
            black_box(m.len())
        })
    });
    g.finish();
    let mut g = c.benchmark_group("merge_1M_records");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    for n in [2u64, 10] {
        let diffs = dense_chain(n, N);
        let run = |oracle: bool| {
            let mut inputs: Vec<MergeInput<'_>> =
                diffs.iter().map(|d| MergeInput::bytes("d", d)).collect();
            let opts = MergeOptions::default();
            let mut out = std::io::sink();
            if oracle {
                merge_oracle(&mut inputs, &mut out, &opts).unwrap()
            } else {
                merge(&mut inputs, &mut out, &opts).unwrap()
            }
        };
        g.bench_function(format!("sweep, {n} inputs"), |b| {
            b.iter(|| black_box(run(false)))
        });
        g.bench_function(format!("extent map, {n} inputs"), |b| {
            b.iter(|| black_box(run(true)))
        });
    }
    g.finish();
}

/// `n` diffs of `records / n` 16-byte records every 64 bytes, each shifted by 8 bytes.
fn dense_chain(n: u64, records: u64) -> Vec<Vec<u8>> {
    let per = records / n;
    (0..n)
        .map(|k| {
            let meta = Metadata {
                from_snap: (k > 0).then(|| format!("s{k}").into_bytes()),
                to_snap: Some(format!("s{}", k + 1).into_bytes()),
                protected: None,
                image_size: Some(per * 64 + 64 * n),
            };
            let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
            for i in 0..per {
                w.write_data(i * 64 + k * 8, &u128::from(i ^ k).to_le_bytes())
                    .unwrap();
            }
            w.finish().unwrap()
        })
        .collect()
}

criterion_group!(benches, bench);
criterion_main!(benches);
