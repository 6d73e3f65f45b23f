//! The real Ceph files against what Ceph says about them: `inspect` reports the metadata and
//! record counts of `MANIFEST.tsv` / `record-counts.tsv`, and applying every diff to the
//! in-memory image model reproduces Ceph's raw-image sha256 at every snapshot (through both
//! drivers, and through the image-v2 stream's embedded diffs).

mod common;

use std::collections::BTreeMap;

use common::manifest::{self, DiffFile, Format};
use common::model::Image;
use rbddiff::input::Kind;
use rbddiff::inspect::{inspect_bytes, inspect_file, inspect_reader, DiffSummary};
use rbddiff::{DiffReader, ImageReader, ImageSlice, Version};

/// Per file: counts of f t p s w z e, w_bytes, z_bytes, protected.
type Counts = ([u64; 7], u64, u64, Option<bool>);

fn record_counts() -> BTreeMap<String, Counts> {
    let text = std::fs::read_to_string(manifest::real_dir().join("record-counts.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("path\t"))
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            let n = |i: usize| c[i].parse::<u64>().unwrap();
            (
                c[0].to_string(),
                (
                    [n(1), n(2), n(3), n(4), n(5), n(6), n(7)],
                    n(8),
                    n(9),
                    (c[10] != "-").then(|| c[10] == "1"),
                ),
            )
        })
        .collect()
}

fn check_summary(d: &DiffFile, s: &DiffSummary, counts: &Counts, how: &str) {
    let ctx = format!("{} ({how})", d.rel);
    assert_eq!(s.error, None, "{ctx}");
    let v = match d.format {
        Format::V1 => Version::V1,
        Format::V2 => Version::V2,
    };
    assert_eq!(s.version, Some(v), "{ctx}");
    assert_eq!(s.from_snap, d.from, "{ctx}");
    assert_eq!(s.to_snap, d.to, "{ctx}");
    assert_eq!(s.image_size, Some(d.size), "{ctx}");
    let (tags, w_bytes, z_bytes, protected) = counts;
    assert_eq!(s.protected, *protected, "{ctx}");
    let list = s.record_list.as_ref().unwrap();
    for (i, t) in "ftpswze".chars().enumerate() {
        let n = list.iter().filter(|r| r.tag == t).count() as u64;
        assert_eq!(n, tags[i], "{ctx}: '{t}' records");
    }
    assert_eq!(s.records, tags.iter().sum::<u64>(), "{ctx}: records");
    assert_eq!(s.writes, tags[4], "{ctx}");
    assert_eq!(s.zeros, tags[5], "{ctx}");
    assert_eq!(s.write_bytes, *w_bytes, "{ctx}: w_bytes");
    assert_eq!(s.zero_bytes, *z_bytes, "{ctx}: z_bytes");
    assert_eq!(s.unknown, 0, "{ctx}");
    assert_eq!(s.covered_bytes(), w_bytes + z_bytes, "{ctx}");
    assert_eq!(
        s.end,
        Some(std::fs::metadata(&d.path).unwrap().len()),
        "{ctx}"
    );
    // Only the Ceph 16.2 'p' length quirk may warn.
    for w in &s.warnings {
        assert!(
            w.to_string().contains("'p' record length field 8"),
            "{ctx}: {w}"
        );
    }
    assert_eq!(s.warnings.len() as u64, tags[2], "{ctx}");
}

#[test]
fn inspect_matches_the_manifest() {
    let counts = record_counts();
    let files = manifest::diff_files();
    assert_eq!(counts.len(), files.len());
    for d in &files {
        let bytes = d.read();
        let c = &counts[&d.rel];
        let r = inspect_bytes(&d.rel, &bytes, true);
        assert!(r.ok(), "{}: {:?}", d.rel, r.error);
        assert_eq!(r.kind, "diff");
        assert_eq!(r.diffs.len(), 1);
        check_summary(d, &r.diffs[0], c, "mapped");
        let kind = rbddiff::input::sniff(&bytes);
        let r = inspect_reader(&d.rel, kind, &bytes[..], true);
        check_summary(d, &r.diffs[0], c, "stream");
        let r = inspect_file(d.path.to_str().unwrap(), true).unwrap();
        check_summary(d, &r.diffs[0], c, "file, payloads seeked over");
    }
}

#[test]
fn inspect_of_the_image_stream_matches_its_v2_diffs() {
    let counts = record_counts();
    let chains = manifest::chains();
    let v2 = &chains.iter().find(|c| c.image == "img64k").unwrap().v2;
    let bytes = std::fs::read(manifest::export_format2_stream()).unwrap();
    let carve = std::fs::read_to_string(manifest::real_dir().join("img64k/v2/carve.txt")).unwrap();
    let starts: Vec<u64> = carve
        .lines()
        .map(|l| {
            let b = l.split("bytes=[").nth(1).unwrap();
            b.split(',').next().unwrap().parse().unwrap()
        })
        .collect();
    for (how, r) in [
        ("mapped", inspect_bytes("img", &bytes, true)),
        (
            "stream",
            inspect_reader("img", Kind::Image, &bytes[..], true),
        ),
    ] {
        assert!(r.ok(), "{how}: {:?}", r.error);
        assert_eq!(r.kind, "image");
        let img = r.image.as_ref().unwrap();
        // img64k: order 16, features 0x3d, no fancy striping.
        assert_eq!(img.order, Some(16), "{how}");
        assert_eq!(img.features, Some(0x3d), "{how}");
        assert_eq!(img.stripe_unit, Some(65536), "{how}");
        assert_eq!(img.stripe_count, Some(1), "{how}");
        assert_eq!(
            img.meta,
            vec![("corpus".to_string(), "rbd-diff-toolkit".to_string())],
            "{how}"
        );
        assert_eq!(img.diff_count, 6, "{how}");
        assert_eq!(r.diffs.len(), v2.len(), "{how}");
        for ((s, d), start) in r.diffs.iter().zip(v2).zip(&starts) {
            assert_eq!(s.start, *start, "{how} {}", d.rel);
            let mut s = s.clone();
            // Offsets inside the stream are absolute; compare the rest as for the file.
            s.end = s.end.map(|e| e - start);
            let len = std::fs::metadata(&d.path).unwrap().len();
            assert_eq!(s.end, Some(len), "{how} {}", d.rel);
            check_summary(d, &s, &counts[&d.rel], how);
        }
    }
}

/// The raw image at a state, built by applying the v1 chain of `image` (img4m has no
/// `full_v1` here, so its chain starts from img64k's: the raw images are identical).
fn states() -> BTreeMap<(String, String), Image> {
    let mut out = BTreeMap::new();
    let full = manifest::diff_file("img64k/full_v1.diff").read();
    for c in manifest::chains() {
        let mut img = Image::new();
        out.insert((c.image.clone(), "empty".to_string()), img.clone());
        if c.v1[0].apply_to == "v1" {
            img.apply_bytes(&full);
            assert_eq!(img.sha256(), manifest::truth(&c.image, "v1").sha256);
            out.insert((c.image.clone(), "v1".to_string()), img.clone());
        }
        for d in &c.v1 {
            img.apply_bytes(&d.read());
            out.insert((c.image.clone(), d.result.clone()), img.clone());
        }
    }
    out
}

#[test]
fn every_real_diff_reproduces_ceph_sha256_via_slice_driver() {
    let states = states();
    let mut n = 0;
    for d in manifest::diff_files() {
        let mut img = states[&(d.image.clone(), d.apply_to.clone())].clone();
        img.apply_bytes(&d.read());
        let t = d.expected();
        assert_eq!(img.data.len() as u64, t.size, "{}", d.rel);
        assert_eq!(img.sha256(), t.sha256, "{}", d.rel);
        assert_eq!(img.snap, d.to, "{}", d.rel);
        n += 1;
    }
    assert!(n >= 50);
}

#[test]
fn every_real_chain_reproduces_ceph_sha256_via_stream_driver() {
    let full = manifest::diff_file("img64k/full_v1.diff").read();
    for c in manifest::chains() {
        for chain in [&c.v1, &c.v2, &c.whole_object] {
            if chain.is_empty() {
                continue;
            }
            let mut img = Image::new();
            if chain[0].apply_to == "v1" {
                img.apply(&mut DiffReader::new(&full[..]).unwrap());
            }
            for d in chain {
                let bytes = d.read();
                let mut r = DiffReader::new(drivers_free_reader(&bytes)).unwrap();
                img.apply(&mut r);
                assert_eq!(img.sha256(), d.expected().sha256, "{}", d.rel);
            }
        }
    }
}

/// A reader handing out at most 1000 bytes per call, so payloads cross buffer refills.
fn drivers_free_reader(bytes: &[u8]) -> impl std::io::Read + '_ {
    struct Chunky<'a>(&'a [u8]);
    impl std::io::Read for Chunky<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(out.len()).min(1000);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    Chunky(bytes)
}

#[test]
fn image_stream_reproduces_ceph_sha256_at_every_snapshot() {
    let bytes = std::fs::read(manifest::export_format2_stream()).unwrap();
    let snaps = ["v1", "v2", "v3", "v4", "v5", "head"];
    // Slice driver.
    let slice = ImageSlice::parse(&bytes).unwrap();
    let mut img = Image::new();
    let mut n = 0;
    for (d, snap) in slice.diffs().zip(snaps) {
        let d = d.unwrap();
        img.apply(&mut d.records());
        assert_eq!(
            img.sha256(),
            manifest::truth("img64k", snap).sha256,
            "{snap}"
        );
        n += 1;
    }
    assert_eq!(n, 6);
    // Stream driver.
    let mut r = ImageReader::new(drivers_free_reader(&bytes)).unwrap();
    let mut img = Image::new();
    let mut n = 0;
    while let Some(d) = r.next_diff().unwrap() {
        img.apply(d);
        assert_eq!(
            img.sha256(),
            manifest::truth("img64k", snaps[n]).sha256,
            "{}",
            snaps[n]
        );
        assert_eq!(
            img.snap.as_deref(),
            (snaps[n] != "head").then_some(snaps[n])
        );
        n += 1;
    }
    assert_eq!(n, 6);
}
