//! The writer mirrors the parser: every real Ceph file re-encodes byte-identically, and
//! `parse(write(x)) == x` for generated v1/v2 diffs and image streams.

mod common;
mod drivers;

use std::io::Read;

use drivers::gen::{image_spec, spec, ImageSpec, Spec};
use proptest::prelude::*;
use rbddiff::stream::{ItemKind, RecordSource};
use rbddiff::write::encode_image_header;
use rbddiff::{
    DiffReader, DiffWriter, ErrorKind, Extent, ImageSlice, Metadata, Version, WriteOptions,
};

/// Ceph 16.2 writes the v2 `p` record with length field 8.
const CEPH16: WriteOptions = WriteOptions {
    ceph16_p_length: true,
};

fn opts_for(bytes: &[u8]) -> WriteOptions {
    if bytes.starts_with(b"rbd diff v2\n") {
        CEPH16
    } else {
        WriteOptions::default()
    }
}

/// Re-encodes a diff read by the stream driver, copying payloads with `write_data_from`.
fn reencode_stream(bytes: &[u8], opts: WriteOptions) -> Vec<u8> {
    let mut r = DiffReader::new(bytes).unwrap();
    let meta = r.metadata().clone();
    let mut w = DiffWriter::with_options(Vec::new(), r.version(), &meta, opts).unwrap();
    while let Some(item) = r.next_item().unwrap() {
        match item.kind {
            ItemKind::Write { extent, mut data } => w.write_data_from(extent, &mut data).unwrap(),
            ItemKind::Zero(e) => w.zero(e).unwrap(),
            ItemKind::End => {}
            k => panic!("unexpected {k:?} in a real file"),
        }
    }
    w.finish().unwrap()
}

#[test]
fn real_diffs_reencode_byte_identically() {
    let files = common::manifest::diff_files();
    assert!(files
        .iter()
        .any(|d| d.format == common::manifest::Format::V2));
    for d in files {
        let bytes = d.read();
        let opts = opts_for(&bytes);
        let (spec, end) = Spec::decode(&bytes).unwrap_or_else(|| panic!("{} parses", d.rel));
        assert_eq!(end, bytes.len(), "{}: bytes after 'e'", d.rel);
        assert_eq!(spec.encode(opts), bytes, "{}: slice re-encode", d.rel);
        assert_eq!(
            reencode_stream(&bytes, opts),
            bytes,
            "{}: stream re-encode",
            d.rel
        );
    }
}

#[test]
fn real_image_stream_reencodes_byte_identically() {
    let bytes = std::fs::read(common::manifest::export_format2_stream()).unwrap();
    let img = ImageSlice::parse(&bytes).unwrap();
    assert_eq!(img.header().diff_count, 6);
    let mut out = Vec::new();
    encode_image_header(img.header(), &mut out);
    for d in img.diffs() {
        let d = d.unwrap();
        let start = d.start_offset() as usize;
        let (spec, _) = Spec::decode(&bytes[start..]).unwrap();
        out.extend(spec.encode(CEPH16));
    }
    assert_eq!(out, bytes);
    // The header alone, as carved next to the v2 diffs.
    let header =
        std::fs::read(common::manifest::real_dir().join("img64k/v2/export-format-2.header"))
            .unwrap();
    let mut h = Vec::new();
    encode_image_header(img.header(), &mut h);
    assert_eq!(h, header);
}

#[test]
fn upstream_p_length_is_one() {
    // Current upstream writes `p` with length 1: the default.
    let meta = Metadata {
        to_snap: Some(b"s".to_vec()),
        protected: Some(true),
        image_size: Some(4096),
        ..Default::default()
    };
    let out = DiffWriter::new(Vec::new(), Version::V2, &meta)
        .unwrap()
        .finish()
        .unwrap();
    let p = out.iter().position(|&b| b == b'p').unwrap();
    assert_eq!(&out[p..p + 10], &[b'p', 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    let d = rbddiff::DiffSlice::parse(&out).unwrap();
    assert!(d.warnings().is_empty());
    assert_eq!(d.metadata(), &meta);
}

#[test]
fn writer_refuses_what_the_parser_rejects() {
    let meta = Metadata {
        image_size: Some(8192),
        ..Default::default()
    };
    let kind = |r: rbddiff::Result<()>| format!("{:?}", r.unwrap_err().kind());
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    assert!(kind(w.write_data(0, b"")).starts_with("ZeroLength"));
    assert!(kind(w.zero(Extent::new(0, 0))).starts_with("ZeroLength"));
    assert!(kind(w.zero(Extent::new(u64::MAX, 2))).starts_with("ExtentOverflow"));
    assert!(kind(w.zero(Extent::new(4096, 8192))).starts_with("ExtentPastSize"));
    w.write_data(100, b"abc").unwrap();
    assert!(kind(w.zero(Extent::new(102, 1))).starts_with("OutOfOrder"));
    assert!(kind(w.zero(Extent::new(0, 1))).starts_with("OutOfOrder"));
    assert!(kind(w.unknown(b'X', b"")).starts_with("Invalid"));
    w.zero(Extent::new(103, 1)).unwrap();
    let out = w.finish().unwrap();
    let (spec, _) = Spec::decode(&out).unwrap();
    assert_eq!(spec.ops.len(), 2);

    let long = Metadata {
        from_snap: Some(vec![b'a'; 4097]),
        image_size: Some(1),
        ..Default::default()
    };
    let e = DiffWriter::new(Vec::new(), Version::V1, &long).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::NameTooLong { .. }));

    let no_size = Metadata::default();
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &no_size).unwrap();
    assert!(kind(w.zero(Extent::new(0, 1))).starts_with("MissingSize"));
    assert!(matches!(
        w.finish().unwrap_err().kind(),
        ErrorKind::MissingSize
    ));

    // write_data_from with a short source is an error.
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    let e = w
        .write_data_from(Extent::new(0, 10), &mut &b"abc"[..])
        .unwrap_err();
    assert!(e.is_io());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_of_write_is_identity(s in spec()) {
        let bytes = s.encode(WriteOptions::default());
        let (back, end) = Spec::decode(&bytes).expect("parses");
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(end, bytes.len());
        // The stream driver sees the same, with no warnings (only unknown tags warn).
        let mut r = DiffReader::new(&bytes[..]).unwrap();
        prop_assert_eq!(r.metadata(), &s.meta);
        let mut n = 0;
        while let Some(item) = r.next_item().unwrap() {
            if let ItemKind::Write { mut data, .. } = item.kind {
                let mut v = Vec::new();
                data.read_to_end(&mut v).unwrap();
                let drivers::gen::Op::Write { data: want, .. } = &s.ops[n] else {
                    panic!("op {n} is not a write");
                };
                prop_assert_eq!(&v, want);
            }
            n += 1;
        }
        prop_assert_eq!(n, s.ops.len() + 1);
        let unknown = s.ops.iter().filter(|o| matches!(o, drivers::gen::Op::Unknown { .. })).count();
        prop_assert_eq!(r.warnings().len(), unknown);
    }

    #[test]
    fn parse_of_write_is_identity_ceph16(s in spec()) {
        let bytes = s.encode(CEPH16);
        let (back, _) = Spec::decode(&bytes).expect("parses");
        prop_assert_eq!(&back, &s);
        // And it re-encodes to the same bytes.
        prop_assert_eq!(back.encode(CEPH16), bytes);
    }

    /// Identity for an image header with distinct image-meta keys; with a repeated key the
    /// parser keeps one pair per key, where the key first appeared, with the last value
    /// (as `rbd import` leaves it).
    #[test]
    fn image_parse_of_write_is_identity(img in image_spec()) {
        let bytes = img.encode();
        let back = ImageSpec::decode(&bytes).expect("parses");
        let mut want = img.clone();
        want.header.meta.clear();
        for (k, v) in &img.header.meta {
            match want.header.meta.iter_mut().find(|(wk, _)| wk == k) {
                Some(kept) => kept.1 = v.clone(),
                None => want.header.meta.push((k.clone(), v.clone())),
            }
        }
        prop_assert_eq!(&back, &want);
        if want == img {
            prop_assert_eq!(back.encode(), bytes);
        } else {
            prop_assert_eq!(ImageSpec::decode(&back.encode()), Some(back));
        }
    }
}
