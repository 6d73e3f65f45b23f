//! Criterion bench of the merge's extent-map build (the only per-record work of a merge),
//! with one million small extents, plus the anonymous memory the map takes per extent.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rbddiff::extent::{ExtentMap, Piece};

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
