//! `inspect` of a diff file reads ahead on another thread while its records are dense: the
//! report is the one the in-memory walk gives, for dense, mixed, damaged and cut files.

use rbddiff::format::{Extent, Metadata};
use rbddiff::inspect::{inspect_bytes, inspect_file};
use rbddiff::{DiffWriter, Version};

/// `z` records every 1 KiB from `at`, `n` of them, then `big` 1 MiB `w` records, then `n`
/// `z` records again.
fn diff(n: u64, big: u64) -> Vec<u8> {
    let meta = Metadata {
        to_snap: Some(b"s".to_vec()),
        image_size: Some(1 << 40),
        ..Default::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    let mut at = 0;
    for _ in 0..n {
        w.zero(Extent::new(at, 512)).unwrap();
        at += 1024;
    }
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for _ in 0..big {
        w.write_data(at, &data).unwrap();
        at += 2 << 20;
    }
    for _ in 0..n {
        w.zero(Extent::new(at, 512)).unwrap();
        at += 1024;
    }
    w.finish().unwrap()
}

fn same(bytes: &[u8], with_records: bool) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.diff");
    std::fs::write(&p, bytes).unwrap();
    let name = p.to_string_lossy().into_owned();
    for records in [false, with_records] {
        let file = serde_json::to_value(inspect_file(&name, records).unwrap()).unwrap();
        let mem = serde_json::to_value(inspect_bytes(&name, bytes, records)).unwrap();
        assert_eq!(file, mem, "records {records}");
    }
}

#[test]
fn dense_mixed_damaged_and_cut_files_give_the_in_memory_report() {
    // Files of 64 MiB and more are read ahead.
    let dense = diff(2_100_000, 0);
    assert!(dense.len() > 64 << 20);
    same(&dense, false);
    let mixed = diff(2_000_000, 12);
    same(&mixed, false);
    same(&diff(60_000, 12), true);
    // Cut in the middle of the dense part, and in a large payload.
    same(&dense[..dense.len() / 2 + 7], false);
    same(&mixed[..mixed.len() / 2], false);
    // A record that goes back, deep in the dense part (a `z` head's offset field).
    let list = inspect_bytes("x", &dense, true).diffs[0]
        .record_list
        .clone()
        .unwrap();
    let rec = list[list.len() * 3 / 4].pos as usize;
    let mut bad = dense.clone();
    bad[rec + 2] ^= 0x80;
    same(&bad, false);
    let r = inspect_bytes("x", &bad, false);
    assert!(r.diffs[0].error.is_some(), "{r:?}");
}
