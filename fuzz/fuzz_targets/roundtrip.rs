//! Arbitrary operations through `DiffWriter`: whatever the writer accepts parses back
//! (slice driver) to exactly the operations written, with the same metadata.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rbddiff::{DiffSlice, DiffWriter, Extent, Metadata, Record, Version, WriteOptions};

#[derive(Arbitrary, Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
    Unknown { tag: u8, data: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    v2: bool,
    ceph16: bool,
    from: Option<Vec<u8>>,
    to: Option<Vec<u8>>,
    protected: Option<bool>,
    size: Option<u64>,
    ops: Vec<Op>,
}

#[derive(Debug, PartialEq)]
enum Done {
    Write(u64, Vec<u8>),
    Zero(Extent),
    Unknown(u8, Vec<u8>),
}

fuzz_target!(|inp: Input| {
    let version = if inp.v2 { Version::V2 } else { Version::V1 };
    let meta = Metadata {
        from_snap: inp.from,
        to_snap: inp.to,
        protected: inp.protected,
        image_size: inp.size,
    };
    let opts = WriteOptions {
        ceph16_p_length: inp.ceph16,
    };
    let Ok(mut w) = DiffWriter::with_options(Vec::new(), version, &meta, opts) else {
        return;
    };
    let mut done = Vec::new();
    for op in inp.ops {
        // Refused operations write nothing; the stream stays valid.
        match op {
            Op::Write { offset, data } => {
                if w.write_data(offset, &data).is_ok() {
                    done.push(Done::Write(offset, data));
                }
            }
            Op::Zero { offset, len } => {
                let e = Extent::new(offset, len);
                if w.zero(e).is_ok() {
                    done.push(Done::Zero(e));
                }
            }
            Op::Unknown { tag, data } => {
                if w.unknown(tag, &data).is_ok() {
                    done.push(Done::Unknown(tag, data));
                }
            }
        }
    }
    let Ok(bytes) = w.finish() else {
        assert!(meta.image_size.is_none());
        return;
    };
    let d = DiffSlice::parse(&bytes).expect("writer output parses");
    let mut want = meta.clone();
    if version == Version::V1 {
        want.protected = None;
    }
    assert_eq!(d.metadata(), &want);
    let mut got = Vec::new();
    let mut recs = d.records();
    for r in recs.by_ref() {
        match r.expect("writer output is valid").1 {
            Record::Write { offset, data } => got.push(Done::Write(offset, data.to_vec())),
            Record::Zero(e) => got.push(Done::Zero(e)),
            Record::Unknown { tag, data } => got.push(Done::Unknown(tag, data.to_vec())),
            Record::End => {}
            _ => unreachable!(),
        }
    }
    assert_eq!(got, done);
    assert_eq!(recs.offset(), bytes.len() as u64);
    // Only unknown records, and a Ceph 16 style 'p', may warn.
    let unknown = done
        .iter()
        .filter(|d| matches!(d, Done::Unknown(..)))
        .count();
    let p16 = usize::from(inp.v2 && inp.ceph16 && meta.protected.is_some());
    // The first MAX_WARNINGS are kept; the rest are only counted.
    let kept = recs.warnings().len();
    assert!(kept <= rbddiff::error::MAX_WARNINGS);
    assert_eq!(kept as u64 + recs.more_warnings(), (unknown + p16) as u64);
});
