//! Sidecars whose size does not grow with the record count: runs of small records share one
//! CRC; version 1 sidecars (one entry per record) are still read.

use std::fs;
use std::path::Path;
use std::process::Command;

use rbddiff::sums::{self, sums_path, RecordSum, Sums};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
}

/// A v1 diff of `n` zero records of 4 KiB, 8 KiB apart.
fn zeros(n: u64) -> Vec<u8> {
    let mut d = b"rbd diff v1\ns".to_vec();
    d.extend_from_slice(&(n * 8192).to_le_bytes());
    for i in 0..n {
        d.push(b'z');
        d.extend_from_slice(&(i * 8192).to_le_bytes());
        d.extend_from_slice(&4096u64.to_le_bytes());
    }
    d.push(b'e');
    d
}

fn verify_json(p: &Path) -> (Option<i32>, serde_json::Value) {
    let o = bin()
        .args(["verify", "--json", &p.to_string_lossy()])
        .output()
        .unwrap();
    (o.status.code(), serde_json::from_slice(&o.stdout).unwrap())
}

/// 200,000 records of 17 bytes (3.4 MB): the sidecar stays within 0.1 % of the diff plus
/// 4 KiB (one entry per record took 14 MB, four times the diff), and a flipped byte is still
/// found, named with its run of records and the run's offset.
#[test]
fn a_sidecar_of_many_small_records_stays_small_and_still_finds_a_flip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.diff");
    let d = zeros(200_000);
    fs::write(&p, &d).unwrap();
    let o = bin()
        .args(["verify", "--write-sums", &p.to_string_lossy()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let side = fs::metadata(sums_path(&p)).unwrap().len();
    assert!(
        side <= d.len() as u64 / 1000 + 4096,
        "sidecar of {side} bytes for a {} byte diff",
        d.len()
    );
    assert_eq!(verify_json(&p).0, Some(0));
    // Flip a byte in the length of record 150,000 (a valid diff still: only the sums see it).
    let at = 13 + 8 + 150_000 * 17 + 9;
    let mut bad = d.clone();
    bad[at] ^= 0x01;
    fs::write(&p, &bad).unwrap();
    let (code, v) = verify_json(&p);
    assert_eq!(code, Some(1), "{v}");
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "sums")
        .unwrap_or_else(|| panic!("no sums finding: {v}"));
    let (off, rec) = (f["offset"].as_u64().unwrap(), f["record"].as_u64().unwrap());
    let msg = f["message"].as_str().unwrap();
    // The run holding the flip: it starts at a record boundary at or before the flipped byte
    // and within one run's length of it, and names the records it holds.
    assert!(off <= at as u64 && at as u64 - off < sums::SEGMENT, "{f}");
    assert_eq!((off - 21) % 17, 0, "{f}");
    assert_eq!(rec, (off - 21) / 17 + 1, "{f}");
    assert!(msg.contains(&format!("records {rec} to ")), "{msg}");
}

/// A version 1 sidecar (one entry per record, no counts) is still checked, and a flip is
/// pinned to its record as before.
#[test]
fn version_1_sidecars_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.diff");
    let d = zeros(50);
    fs::write(&p, &d).unwrap();
    let mut recs = vec![RecordSum {
        offset: 0,
        len: 12,
        tag: 'B',
        crc32: crc32fast::hash(&d[..12]),
        count: 1,
    }];
    let mut at = 12;
    for (tag, len) in std::iter::once(('s', 9))
        .chain((0..50).map(|_| ('z', 17)))
        .chain([('e', 1)])
    {
        recs.push(RecordSum {
            offset: at,
            len,
            tag,
            crc32: crc32fast::hash(&d[at as usize..(at + len) as usize]),
            count: 1,
        });
        at += len;
    }
    let mut s: Sums = sums::compute(&d).unwrap();
    assert!(s.records.len() < recs.len(), "version 2 groups the records");
    s.version = 1;
    s.records = recs;
    sums::write_sums(&p, &s).unwrap();
    assert!(fs::read_to_string(sums_path(&p))
        .unwrap()
        .contains("\"version\": 1"));
    assert_eq!(verify_json(&p).0, Some(0));
    let mut bad = d.clone();
    bad[12 + 9 + 7 * 17 + 3] ^= 0x80;
    fs::write(&p, &bad).unwrap();
    let (code, v) = verify_json(&p);
    assert_eq!(code, Some(1), "{v}");
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "sums" && f["offset"] == 12 + 9 + 7 * 17 && f["record"] == 8),
        "{v}"
    );
}
