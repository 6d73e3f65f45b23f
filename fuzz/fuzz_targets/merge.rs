//! Arbitrary bytes as a chain of two or three diffs to merge: planning and writing the merge
//! never panics, and whenever the inputs are accepted the output is a valid diff (ascending,
//! non-overlapping, no zero-length records) whose header ends where the last input ends and
//! whose payload is what the plan promised. The first byte chooses the output version,
//! `--force-chain` and two or three inputs; the next eight give the lengths of the first
//! inputs (two little-endian u32; the last input takes the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbddiff::merge::{plan, MergeInput, MergeOptions};
use rbddiff::{DiffSlice, Record, Version};

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (head, rest) = data.split_at(9);
    let v2 = head[0] & 1 == 1;
    let three = head[0] & 4 == 4;
    let len = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let cut1 = len(&head[1..5]).min(rest.len());
    let (a, rest) = rest.split_at(cut1);
    let parts: Vec<&[u8]> = if three {
        let cut2 = len(&head[5..9]).min(rest.len());
        let (b, c) = rest.split_at(cut2);
        vec![a, b, c]
    } else {
        vec![a, rest]
    };
    let names = ["a", "b", "c"];
    let mut inputs: Vec<MergeInput<'_>> = parts
        .iter()
        .zip(names)
        .map(|(p, n)| MergeInput::bytes(n, p))
        .collect();
    let opts = MergeOptions {
        version: if v2 { Version::V2 } else { Version::V1 },
        sums: false,
        ..MergeOptions::default()
    };
    let Ok(p) = plan(&inputs, &opts) else {
        return;
    };
    let promised = p.data_bytes();
    let mut meta = p.metadata().clone();
    if !v2 {
        // v1 has no 'p' record.
        meta.protected = None;
    }
    let (out, stats) = p
        .write(&mut inputs, Vec::new(), opts.version, &mut |_, _| {})
        .expect("an accepted plan writes to memory");
    assert_eq!(stats.bytes_written, out.len() as u64);
    let d = DiffSlice::parse(&out).expect("merge output has a valid header");
    assert_eq!(d.metadata(), &meta);
    assert_eq!(d.version(), opts.version);
    let mut written = 0u64;
    let mut recs = d.records();
    for r in recs.by_ref() {
        match r.expect("merge output parses").1 {
            Record::Write { data, .. } => written += data.len() as u64,
            Record::Zero(_) | Record::End => {}
            other => panic!("unexpected record in merge output: {other:?}"),
        }
    }
    assert!(recs.warnings().is_empty(), "{:?}", recs.warnings());
    assert_eq!(recs.offset(), out.len() as u64);
    assert_eq!(written, promised);
});
