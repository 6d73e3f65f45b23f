//! The slice and the stream driver give identical records, payload bytes, errors, byte
//! offsets and warnings — on the real Ceph files, the hand-made broken files, generated
//! diffs and image streams, and random corruptions and truncations of them. The stream
//! driver is fed through a reader that returns random short reads.

mod common;
mod drivers;

use std::path::PathBuf;

use drivers::gen::{damage, dense_spec, image_spec, spec};
use drivers::{file_any, slice_any, stream_any, PayloadReads, RandomReader};
use proptest::prelude::*;
use rbddiff::WriteOptions;

/// Compares the slice driver with the stream driver under several read patterns.
fn assert_same(name: &str, bytes: &[u8], seeds: &[(u64, usize)]) {
    let want = slice_any(bytes, PayloadReads::All);
    for &(seed, max) in seeds {
        let got = stream_any(bytes, PayloadReads::All, seed, max);
        assert_eq!(got, want, "{name}: stream (seed {seed}, reads <= {max})");
        // Reading only part of each payload: the driver skips the rest itself.
        let got = stream_any(bytes, PayloadReads::Prefix(seed), seed, max);
        let want_p = slice_any(bytes, PayloadReads::Prefix(seed));
        assert_eq!(
            got, want_p,
            "{name}: stream, partial payloads (seed {seed})"
        );
    }
}

fn real_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = common::manifest::diff_files()
        .into_iter()
        .map(|d| d.path)
        .collect();
    v.push(common::manifest::export_format2_stream());
    v
}

#[test]
fn real_files_agree() {
    for path in real_files() {
        let bytes = std::fs::read(&path).unwrap();
        let out = slice_any(&bytes, PayloadReads::All);
        assert_eq!(out.error, None, "{}", path.display());
        assert_same(
            &path.display().to_string(),
            &bytes,
            &[(1, 3), (2, 61), (3, 4096), (4, 200_000)],
        );
    }
}

#[test]
fn real_files_agree_with_one_byte_reads() {
    // The smallest files, one byte at a time.
    let mut files = real_files();
    files.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    for path in files.iter().take(10) {
        let bytes = std::fs::read(path).unwrap();
        assert_same(&path.display().to_string(), &bytes, &[(9, 1)]);
    }
}

#[test]
fn real_files_truncated_everywhere_agree() {
    // Every truncation point of a small real diff and of the head of the image stream.
    let small = common::manifest::diff_file("img64k/v3_v4.diff").read();
    for n in 0..small.len() {
        assert_same(&format!("v3_v4.diff[..{n}]"), &small[..n], &[(n as u64, 5)]);
    }
    let img = std::fs::read(common::manifest::export_format2_stream()).unwrap();
    for n in (0..2000).chain((0..img.len()).step_by(997)) {
        let n = n.min(img.len());
        assert_same(&format!("image[..{n}]"), &img[..n], &[(n as u64, 300)]);
    }
}

#[test]
fn err_files_agree() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/err");
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "md") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let out = slice_any(&bytes, PayloadReads::All);
        assert!(
            out.error.is_some() || !out.warnings.is_empty(),
            "{}: neither error nor warning",
            path.display()
        );
        assert_same(
            &path.display().to_string(),
            &bytes,
            &[(1, 1), (2, 5), (3, 64 << 10)],
        );
    }
}

/// Sums taken while a diff streams past (as `backup` writes them) equal the sums of the file,
/// under random short reads; what is copied is the input, byte for byte; an invalid diff is
/// an error both ways.
fn assert_same_sums(name: &str, bytes: &[u8], seeds: &[(u64, usize)]) {
    let want = rbddiff::sums::compute(bytes);
    for &(seed, max) in seeds {
        let mut copy = Vec::new();
        let got = rbddiff::sums::copy_with_sums(RandomReader::new(bytes, seed, max), &mut copy);
        match (&got, &want) {
            (Ok(g), Ok(w)) => {
                assert_eq!(g, w, "{name}: sums (seed {seed}, reads <= {max})");
                assert!(copy == bytes, "{name}: copy differs");
            }
            (Err(_), Err(_)) => {}
            _ => panic!("{name}: streamed {got:?}, from the file {want:?}"),
        }
    }
}

#[test]
fn streamed_sums_equal_file_sums() {
    for path in common::manifest::diff_files().into_iter().map(|d| d.path) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(rbddiff::sums::compute(&bytes).is_ok());
        assert_same_sums(
            &path.display().to_string(),
            &bytes,
            &[(1, 7), (2, 4096), (3, 1 << 20)],
        );
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/err");
    let mut valid = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "diff") {
            let bytes = std::fs::read(&path).unwrap();
            valid += usize::from(rbddiff::sums::compute(&bytes).is_ok());
            assert_same_sums(&path.display().to_string(), &bytes, &[(4, 1), (5, 300)]);
        }
    }
    // Trailing bytes, unknown v2 records, duplicate metadata among them.
    assert!(valid >= 3, "only {valid} valid files in testdata/err");
}

/// [`assert_same`] for a file read with positioned reads (both ways of opening it), whole
/// payloads and partial ones.
fn assert_same_file(name: &str, bytes: &[u8], seed: u64) {
    for reads in [PayloadReads::All, PayloadReads::Prefix(seed)] {
        let want = slice_any(bytes, reads);
        for borrowed in [false, true] {
            let got = file_any(bytes, reads, borrowed);
            assert_eq!(got, want, "{name}: file ({reads:?}, borrowed {borrowed})");
        }
    }
}

/// A fixed record-dense diff: `n` records of 1 to 48 bytes, some back to back.
fn dense(version: rbddiff::Version, n: u64) -> Vec<u8> {
    let meta = rbddiff::Metadata {
        to_snap: Some(b"snap".to_vec()),
        image_size: Some(n * 64),
        ..Default::default()
    };
    let mut w = rbddiff::DiffWriter::new(Vec::new(), version, &meta).unwrap();
    let mut at = 0;
    for i in 0..n {
        let len = 1 + (i * 7) % 48;
        if i % 5 == 4 {
            w.zero(rbddiff::Extent::new(at, len)).unwrap();
        } else {
            w.write_data(at, &vec![i as u8; len as usize]).unwrap();
        }
        at += len + i % 3;
    }
    w.finish().unwrap()
}

/// `inspect` of a file (positioned reads, small records counted in bulk) reports what
/// `inspect` of the same bytes through the slice driver does, with and without `--records`.
fn assert_same_inspect(name: &str, bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.diff");
    std::fs::write(&path, bytes).unwrap();
    let p = path.to_str().unwrap();
    for with_records in [false, true] {
        let want = rbddiff::inspect::inspect_bytes(p, bytes, with_records);
        let got = rbddiff::inspect::inspect_file(p, with_records).unwrap();
        assert_eq!(got, want, "{name}: inspect (records {with_records})");
    }
}

#[test]
fn dense_diffs_inspect_the_same_truncated_everywhere() {
    for version in [rbddiff::Version::V1, rbddiff::Version::V2] {
        let bytes = dense(version, 300);
        for n in 0..=bytes.len() {
            assert_same_inspect(&format!("{version}[..{n}]"), &bytes[..n]);
        }
    }
}

#[test]
fn dense_diffs_truncated_everywhere_agree() {
    // Every truncation point, with the heads at every alignment of the positioned reads'
    // refills (64 bytes at first, doubling).
    for version in [rbddiff::Version::V1, rbddiff::Version::V2] {
        let bytes = dense(version, 300);
        assert!(slice_any(&bytes, PayloadReads::All).error.is_none());
        for n in 0..=bytes.len() {
            let cut = &bytes[..n];
            let want = slice_any(cut, PayloadReads::All);
            assert_eq!(
                file_any(cut, PayloadReads::All, false),
                want,
                "{version}[..{n}]"
            );
            assert_eq!(stream_any(cut, PayloadReads::All, n as u64, 64 << 10), want);
        }
    }
}

#[test]
fn dense_diffs_across_many_refills_agree() {
    // Dozens of 64 KiB refills, and damage in the middle of them (each check of the fast path
    // falls back to the grammar, which names the same record and byte).
    for version in [rbddiff::Version::V1, rbddiff::Version::V2] {
        let bytes = dense(version, 200_000);
        assert_same_file(&format!("dense {version}"), &bytes, 1);
        assert_same_inspect(&format!("dense {version}"), &bytes);
        let mid = bytes.len() / 2;
        // The start of the record holding byte `mid`, from the slice driver.
        let d = rbddiff::DiffSlice::parse(&bytes).unwrap();
        let rec = d
            .records()
            .map(|r| r.unwrap().0 as usize)
            .find(|&o| o >= mid)
            .unwrap();
        let at = |k: usize| {
            rec + 1
                + if version == rbddiff::Version::V2 {
                    8
                } else {
                    0
                }
                + k
        };
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut set = |what, i: usize, v: u64| {
            let mut b = bytes.clone();
            b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            cases.push((what, b));
        };
        set("zero length", at(8), 0);
        set("out of order", at(0), 0);
        set("past the size", at(0), u64::MAX / 2);
        set("overflow", at(8), u64::MAX);
        if version == rbddiff::Version::V2 {
            set("length field", rec + 1, 3);
        }
        let mut tag = bytes.clone();
        tag[rec] = b'Q';
        cases.push(("unknown tag", tag));
        for (what, b) in &cases {
            let out = slice_any(b, PayloadReads::All);
            assert!(out.error.is_some() || !out.warnings.is_empty(), "{what}");
            assert_same_file(&format!("dense {version}, {what}"), b, 2);
            assert_same_inspect(&format!("dense {version}, {what}"), b);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dense_diffs_agree(
        s in dense_spec(3000),
        dmg in proptest::collection::vec(damage(), 0..3),
        seed in any::<u64>(),
        max in 1usize..100_000,
    ) {
        let mut bytes = s.encode(WriteOptions::default());
        for d in &dmg {
            d.apply(&mut bytes);
        }
        assert_same_file("dense", &bytes, seed);
        assert_same_inspect("dense", &bytes);
        assert_same("dense", &bytes, &[(seed, max)]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_diffs_agree(s in spec(), seed in any::<u64>(), max in 1usize..5000) {
        let bytes = s.encode(WriteOptions::default());
        let out = slice_any(&bytes, PayloadReads::All);
        prop_assert_eq!(&out.error, &None);
        assert_same("generated", &bytes, &[(seed, max)]);
        assert_same_sums("generated", &bytes, &[(seed, max)]);
    }

    #[test]
    fn damaged_diffs_agree(
        s in spec(),
        dmg in proptest::collection::vec(damage(), 1..4),
        seed in any::<u64>(),
        max in 1usize..300,
    ) {
        let mut bytes = s.encode(WriteOptions { ceph16_p_length: seed % 2 == 0 });
        for d in &dmg {
            d.apply(&mut bytes);
        }
        assert_same("damaged", &bytes, &[(seed, max)]);
        assert_same_sums("damaged", &bytes, &[(seed, max)]);
    }

    #[test]
    fn generated_images_agree(img in image_spec(), seed in any::<u64>(), max in 1usize..5000) {
        let bytes = img.encode();
        let out = slice_any(&bytes, PayloadReads::All);
        prop_assert_eq!(&out.error, &None);
        assert_same("image", &bytes, &[(seed, max)]);
    }

    #[test]
    fn damaged_images_agree(
        img in image_spec(),
        dmg in proptest::collection::vec(damage(), 1..4),
        seed in any::<u64>(),
        max in 1usize..300,
    ) {
        let mut bytes = img.encode();
        for d in &dmg {
            d.apply(&mut bytes);
        }
        assert_same("damaged image", &bytes, &[(seed, max)]);
    }

    #[test]
    fn arbitrary_bytes_agree(
        prefix in prop_oneof![
            Just(b"rbd diff v1\n".to_vec()),
            Just(b"rbd diff v2\n".to_vec()),
            Just(b"rbd image v2\n".to_vec()),
            Just(Vec::new()),
        ],
        tail in proptest::collection::vec(any::<u8>(), 0..200),
        seed in any::<u64>(),
    ) {
        let mut bytes = prefix;
        bytes.extend(tail);
        assert_same("arbitrary", &bytes, &[(seed, 7)]);
    }
}
