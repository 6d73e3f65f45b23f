//! Compressed archives: byte-exact round trips (library, `rbddiff decompress` and the stock
//! `zstd` CLI), index-only inspect, random access, transparent .zst input, and corrupt or
//! truncated archives.

mod common;

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::gen::relabel;
use common::manifest::{self, diff_files, export_format2_stream, sha256_hex};
use common::model::Image;
use proptest::prelude::*;
use rbddiff::compress::{compress, compress_stream, decompress, CompressOptions};
use rbddiff::input::{Input, Kind};
use rbddiff::inspect::inspect_input;
use rbddiff::zst::ZstArchive;
use rbddiff::{DiffReader, DiffSlice, DiffWriter, Extent, Metadata, Record, RecordSource, Version};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
}

fn opts(frame_target: u64) -> CompressOptions {
    CompressOptions {
        level: 3,
        threads: 3,
        frame_target,
    }
}

/// Compresses `bytes` through the file path (positioned reads).
fn compress_file(dir: &Path, bytes: &[u8], o: &CompressOptions) -> Vec<u8> {
    let p = dir.join("in.diff");
    std::fs::write(&p, bytes).unwrap();
    let input = Input::open(p.to_str().unwrap()).unwrap();
    assert!(input.file().is_some());
    let mut out = Vec::new();
    compress(input, &mut out, o).unwrap();
    out
}

/// Compresses `bytes` through the streaming path.
fn compress_streamed(bytes: &[u8], o: &CompressOptions) -> Vec<u8> {
    let input = Input::from_reader("-", Box::new(Cursor::new(bytes.to_vec()))).unwrap();
    assert!(input.file().is_none());
    let mut out = Vec::new();
    compress(input, &mut out, o).unwrap();
    out
}

fn zstd_cli_decompress(path: &Path) -> Vec<u8> {
    let out = Command::new("zstd")
        .args(["-dcq"])
        .arg(path)
        .output()
        .expect("the zstd CLI is installed");
    assert!(out.status.success(), "zstd -dc failed: {out:?}");
    out.stdout
}

/// Every check that does not need a file name: archive records against the slice driver,
/// random access against the plain bytes, transparent reading, both decompressors.
fn check_archive(plain: &[u8], z: &[u8], dir: &Path) {
    let zp = dir.join("a.zst");
    std::fs::write(&zp, z).unwrap();
    // Stock zstd restores the exact bytes.
    assert_eq!(zstd_cli_decompress(&zp), plain, "zstd -dc");
    // Our decompressor: frame-parallel (mapped) and streamed.
    let mut out = Vec::new();
    decompress(Input::open(zp.to_str().unwrap()).unwrap(), &mut out, 2).unwrap();
    assert_eq!(out, plain, "decompress (mapped)");
    let mut out = Vec::new();
    let inp = Input::from_reader("-", Box::new(Cursor::new(z.to_vec()))).unwrap();
    decompress(inp, &mut out, 2).unwrap();
    assert_eq!(out, plain, "decompress (stream)");
    // Transparent input.
    let input = Input::open(zp.to_str().unwrap()).unwrap();
    assert!(input.is_compressed());
    assert!(input.file().is_none());
    assert_eq!(input.kind(), rbddiff::input::sniff(plain));
    let mut dec = Vec::new();
    input.into_reader().read_to_end(&mut dec).unwrap();
    assert_eq!(dec, plain);
    // The index agrees with the slice driver, and read_range with the bytes.
    let mut a = ZstArchive::open(z).unwrap().expect("indexed archive");
    assert_eq!(a.len(), plain.len() as u64);
    if rbddiff::input::sniff(plain) != Kind::Image {
        let d = DiffSlice::parse(plain).unwrap();
        let want: Vec<(u64, u8, Option<Extent>)> = d
            .records()
            .map(|r| {
                let (pos, rec) = r.unwrap();
                (pos, rec.tag(), rec.extent())
            })
            .collect();
        // Sums over the archive (boundaries from the index) equal those of the plain diff.
        let want_sums = rbddiff::sums::compute(plain).unwrap();
        let got_sums = rbddiff::sums::compute_archive(z, &a).unwrap();
        assert_eq!(got_sums.records, want_sums.records);
        assert_eq!(
            (got_sums.sha256, got_sums.file_len),
            (want_sums.sha256, want_sums.file_len)
        );
        assert_eq!(got_sums.compressed.unwrap().file_len, z.len() as u64);
        let diff = &a.index().diffs[0];
        assert_eq!(&diff.metadata, d.metadata());
        let records = a.decoded_index().unwrap().records.remove(0);
        let got: Vec<(u64, u8, Option<Extent>)> = records
            .iter()
            .map(|r| {
                let ext = matches!(r.tag, b'w' | b'z').then(|| Extent::new(r.offset, r.len));
                (r.pos, r.tag, ext)
            })
            .collect();
        assert_eq!(got, want);
        // Payloads through random access, and frame/offset of every record.
        for (r, (_, rec)) in records.iter().zip(d.records().map(|x| x.unwrap())) {
            let f = a.frames()[r.frame as usize];
            assert_eq!(f.d_offset + u64::from(r.frame_offset), r.pos);
            if let Record::Write { data, .. } = rec {
                let at = a.index().diffs[0].payload_pos(r);
                let mut buf = vec![0u8; data.len()];
                a.read_range(at, &mut buf).unwrap();
                assert_eq!(buf, data);
            }
        }
    }
    // Frames start on record boundaries, or inside a payload too big for one frame.
    let n = a.frames().len();
    assert!(n >= 1);
    let mut starts = std::collections::BTreeSet::from([0u64]);
    let mut bodies = Vec::new();
    let decoded = a.decoded_index().unwrap();
    for (d, recs) in decoded.index.diffs.iter().zip(&decoded.records) {
        starts.insert(d.start);
        starts.extend(d.metadata_records.iter().map(|&(p, _)| p));
        for r in recs {
            starts.insert(r.pos);
            if r.tag != b'z' && r.tag != b'e' {
                bodies.push((d.payload_pos(r), d.payload_pos(r) + r.len));
            }
        }
        starts.insert(d.end);
    }
    for f in a.frames() {
        let inside = bodies
            .iter()
            .any(|&(b, e)| b < f.d_offset && f.d_offset < e);
        assert!(
            starts.contains(&f.d_offset) || inside,
            "frame at diff byte {} cuts a record head",
            f.d_offset
        );
    }
    let before = a.frames_decompressed();
    let mid = plain.len() as u64 / 2;
    let mut one = [0u8; 1];
    a.read_range(mid, &mut one).unwrap();
    assert_eq!(one[0], plain[mid as usize]);
    assert!(a.frames_decompressed() <= before + 1);
}

fn inspect_json(input: Input, records: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(inspect_input(input, records)).unwrap();
    v["file"] = serde_json::Value::Null;
    v
}

fn real_inputs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = diff_files().into_iter().map(|d| d.path).collect();
    v.push(export_format2_stream());
    v
}

#[test]
fn real_corpus_round_trips_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    for path in real_inputs() {
        let plain = std::fs::read(&path).unwrap();
        for target in [1024, 64 << 10, 4 << 20] {
            let o = opts(target);
            let z = compress_file(dir.path(), &plain, &o);
            let zs = compress_streamed(&plain, &o);
            assert_eq!(
                z,
                zs,
                "{}: mapped and streamed archives differ",
                path.display()
            );
            check_archive(&plain, &z, dir.path());
        }
    }
}

#[test]
fn inspect_of_archive_matches_plain_and_uses_the_index_only() {
    let dir = tempfile::tempdir().unwrap();
    for path in real_inputs() {
        let plain = std::fs::read(&path).unwrap();
        let z = compress_file(dir.path(), &plain, &opts(4096));
        let zp = dir.path().join("i.zst");
        std::fs::write(&zp, &z).unwrap();
        // Corrupt every data frame's payload bytes: inspect must not notice (no frame is
        // decompressed), while the same corruption breaks a real decompression.
        let mut broken = z.clone();
        let a = ZstArchive::open(&z).unwrap().unwrap();
        for f in a.frames() {
            let mid = (f.c_offset + u64::from(f.c_len) / 2) as usize;
            broken[mid] ^= 0x55;
        }
        let bp = dir.path().join("b.zst");
        std::fs::write(&bp, &broken).unwrap();
        for records in [false, true] {
            let want = inspect_json(Input::open(path.to_str().unwrap()).unwrap(), records);
            let got = inspect_json(Input::open(zp.to_str().unwrap()).unwrap(), records);
            assert_eq!(got, want, "{}", path.display());
            let got = inspect_json(Input::open(bp.to_str().unwrap()).unwrap(), records);
            assert_eq!(
                got,
                want,
                "{}: inspect decompressed a frame",
                path.display()
            );
            // Streamed (stdin) archives are inspected by decompressing: same report.
            let inp = Input::from_reader("-", Box::new(Cursor::new(z.clone()))).unwrap();
            assert_eq!(inspect_json(inp, records), want);
        }
        let mut sink = Vec::new();
        let r = decompress(Input::open(bp.to_str().unwrap()).unwrap(), &mut sink, 1);
        assert!(r.is_err());
    }
}

#[test]
fn real_chains_apply_from_archives_to_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    for chain in manifest::chains() {
        for files in [&chain.v1, &chain.v2] {
            if files.is_empty() || files[0].apply_to != "empty" {
                continue;
            }
            let mut img = Image::new();
            for (i, f) in files.iter().enumerate() {
                let z = compress_file(dir.path(), &f.read(), &opts(8192));
                let zp = dir.path().join(format!("c{i}.zst"));
                std::fs::write(&zp, &z).unwrap();
                let input = Input::open(zp.to_str().unwrap()).unwrap();
                let mut r = DiffReader::new(input.into_reader()).unwrap();
                img.apply(&mut r);
                let truth = f.expected();
                assert_eq!(img.sha256(), truth.sha256, "{} from .zst", f.rel);
            }
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run rbddiff")
}

#[test]
fn cli_compress_decompress_and_stock_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = export_format2_stream();
    let plain = std::fs::read(&src).unwrap();
    let z = d.join("x.zst");
    let o = run(bin().arg("compress").arg(&src).arg("-o").arg(&z).args([
        "--threads",
        "2",
        "--frame-size",
        "65536",
    ]));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(zstd_cli_decompress(&z), plain);
    // Refuses to overwrite without --force.
    let o = run(bin().arg("compress").arg(&src).arg("-o").arg(&z));
    assert_eq!(o.status.code(), Some(2));
    // Decompress to a file and to stdout; stdin to stdout.
    let back = d.join("back");
    let o = run(bin().arg("decompress").arg(&z).arg("-o").arg(&back));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(&back).unwrap(), plain);
    let o = run(bin().arg("decompress").arg(&z).args(["-o", "-"]));
    assert_eq!(o.stdout, plain);
    let o = run(bin()
        .args(["compress", "-", "-o", "-"])
        .stdin(std::fs::File::open(&src).unwrap()));
    assert!(o.status.success());
    let z2 = d.join("y.zst");
    std::fs::write(&z2, &o.stdout).unwrap();
    assert_eq!(zstd_cli_decompress(&z2), plain);
    // inspect --json: the same document on .zst and plain, except the file name.
    let j = |p: &Path| {
        let o = run(bin().args(["inspect", "--json", "--records"]).arg(p));
        assert!(o.status.success(), "{o:?}");
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["files"][0]["file"] = serde_json::Value::Null;
        v
    };
    assert_eq!(j(&z), j(&src));
}

#[test]
fn plain_zstd_files_are_read_by_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in diff_files().iter().take(6) {
        let plain = f.read();
        let z = d.join("p.zst");
        // Several frames, no index: written by the zstd CLI.
        let status = Command::new("zstd")
            .args(["-qf", "-3", "--no-check"])
            .arg(&f.path)
            .arg("-o")
            .arg(&z)
            .status()
            .unwrap();
        assert!(status.success());
        let input = Input::open(z.to_str().unwrap()).unwrap();
        assert!(input.is_compressed());
        assert!(input.archive().unwrap().is_none());
        assert_eq!(
            inspect_json(input, true),
            inspect_json(Input::open(f.path.to_str().unwrap()).unwrap(), true)
        );
        let o = run(bin().arg("decompress").arg(&z).args(["-o", "-"]));
        assert!(o.status.success());
        assert_eq!(o.stdout, plain);
        // And re-compressing a plain .zst input gives an indexed archive of the same diff.
        let ours = d.join("o.zst");
        let o = run(bin()
            .arg("compress")
            .arg(&z)
            .arg("-o")
            .arg(&ours)
            .arg("--force"));
        assert!(o.status.success(), "{o:?}");
        assert_eq!(zstd_cli_decompress(&ours), plain);
        let img = {
            let mut m = Image::new();
            let input = Input::open(ours.to_str().unwrap()).unwrap();
            m.apply(&mut DiffReader::new(input.into_reader()).unwrap());
            m
        };
        let mut want = Image::new();
        if f.apply_to == "empty" {
            want.apply_bytes(&plain);
            assert_eq!(img.sha256(), want.sha256());
        }
    }
}

/// An archive of the image stream with many frames, and its frame table.
fn many_frames(d: &Path) -> (PathBuf, Vec<u8>, Vec<rbddiff::zst::FrameEntry>) {
    let src = export_format2_stream();
    let z = d.join("m.zst");
    let o = run(bin().arg("compress").arg(&src).arg("-o").arg(&z).args([
        "--frame-size",
        "16384",
        "--force",
    ]));
    assert!(o.status.success());
    let bytes = std::fs::read(&z).unwrap();
    let frames = ZstArchive::open(&bytes).unwrap().unwrap().frames().to_vec();
    assert!(frames.len() > 4);
    (z, bytes, frames)
}

#[test]
fn corrupt_frame_is_named_with_both_offsets_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, bytes, frames) = many_frames(d);
    let f = frames[3];
    let mut bad = bytes.clone();
    let at = (f.c_offset + u64::from(f.c_len) / 2) as usize;
    for b in &mut bad[at..at + 8] {
        *b ^= 0xa5;
    }
    let bp = d.join("bad.zst");
    std::fs::write(&bp, &bad).unwrap();
    let out = d.join("out.diff");
    // Mapped (frame-parallel) and streamed decompression both name the frame.
    let o = run(bin().arg("decompress").arg(&bp).arg("-o").arg(&out));
    let o2 = run(bin()
        .args(["decompress", "-", "-o"])
        .arg(&out)
        .stdin(std::fs::File::open(&bp).unwrap()));
    for o in [o, o2] {
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("zstd frame 3"), "{err}");
        assert!(
            err.contains(&format!("compressed byte {}", f.c_offset)),
            "{err}"
        );
        assert!(
            err.contains(&format!("diff stream byte {}", f.d_offset)),
            "{err}"
        );
    }
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(d).unwrap().count(),
        2,
        "no temp file is left"
    );
    // A command reading the diff through the archive fails the same way.
    let mut a = ZstArchive::open(&bad).unwrap().unwrap();
    let mut buf = vec![0u8; 10];
    let e = a.read_range(f.d_offset, &mut buf).unwrap_err().to_string();
    assert!(e.contains("zstd frame 3"), "{e}");
    assert!(a.read_range(frames[2].d_offset, &mut buf).is_ok());
}

#[test]
fn truncated_archives_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, bytes, frames) = many_frames(d);
    let f = frames[2];
    let out = d.join("out.diff");
    // Cut inside a data frame, inside the seek table, and inside the index frame.
    let cuts = [
        (f.c_offset + 10) as usize,
        bytes.len() - 3,
        (frames
            .last()
            .map(|f| f.c_offset + u64::from(f.c_len))
            .unwrap()
            + 20) as usize,
    ];
    for (i, cut) in cuts.into_iter().enumerate() {
        let tp = d.join(format!("t{i}.zst"));
        std::fs::write(&tp, &bytes[..cut]).unwrap();
        for cmd in ["decompress", "inspect"] {
            let mut c = bin();
            c.arg(cmd).arg(&tp);
            if cmd == "decompress" {
                c.arg("-o").arg(&out);
            }
            let o = run(&mut c);
            assert_eq!(o.status.code(), Some(2), "{cmd} cut at {cut}: {o:?}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("truncated"), "{cmd}: {err}");
            assert!(!out.exists());
        }
    }
    let o = run(bin().arg("inspect").arg(d.join("t0.zst")));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("zstd frame 2"), "{err}");
    assert!(
        err.contains(&format!("compressed byte {}", f.c_offset)),
        "{err}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<u8>),
    Zero(u64),
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (1usize..20000).prop_map(|n| vec![0u8; n]),
        prop::collection::vec(any::<u8>(), 1..20000),
        (1usize..20000).prop_map(|n| b"rbd diff text block\n"
            .iter()
            .cycle()
            .take(n)
            .copied()
            .collect()),
    ]
}

fn diff_strategy() -> impl Strategy<Value = (bool, Vec<(u64, Op)>)> {
    let op = prop_oneof![
        payload().prop_map(Op::Write),
        (1u64..100000).prop_map(Op::Zero),
    ];
    (
        any::<bool>(),
        prop::collection::vec((0u64..50000, op), 0..40),
    )
}

fn build(v2: bool, ops: &[(u64, Op)]) -> Vec<u8> {
    build_named(v2, ops, "a", "b")
}

fn build_named(v2: bool, ops: &[(u64, Op)], from: &str, to: &str) -> Vec<u8> {
    let meta = Metadata {
        from_snap: Some(from.as_bytes().to_vec()),
        to_snap: Some(to.as_bytes().to_vec()),
        protected: v2.then_some(false),
        image_size: Some(16 << 20),
    };
    let version = if v2 { Version::V2 } else { Version::V1 };
    let mut w = DiffWriter::new(Vec::new(), version, &meta).unwrap();
    let mut pos = 0u64;
    for (gap, op) in ops {
        pos += gap;
        match op {
            Op::Write(data) => {
                w.write_data(pos, data).unwrap();
                pos += data.len() as u64;
            }
            Op::Zero(len) => {
                w.zero(Extent::new(pos, *len)).unwrap();
                pos += len;
            }
        }
    }
    w.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_diffs_round_trip(
        (v2, ops) in diff_strategy(),
        target in 1024u64..40000,
        threads in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let plain = build(v2, &ops);
        let o = CompressOptions { level: 1, threads, frame_target: target };
        let z = compress_file(dir.path(), &plain, &o);
        prop_assert_eq!(&z, &compress_streamed(&plain, &o));
        check_archive(&plain, &z, dir.path());
        // Applying the archive gives the same image as applying the plain diff.
        let mut want = Image::new();
        want.apply_bytes(&plain);
        let zp = dir.path().join("a.zst");
        let mut got = Image::new();
        let input = Input::open(zp.to_str().unwrap()).unwrap();
        got.apply(&mut DiffReader::new(input.into_reader()).unwrap());
        prop_assert_eq!(got.sha256(), want.sha256());
        prop_assert_eq!(sha256_hex(&plain), sha256_hex(&zstd_cli_decompress(&zp)));
    }
}

#[test]
fn compress_stream_equals_compressing_the_written_diff() {
    let ops: Vec<(u64, Op)> = (0..60u64)
        .map(|i| {
            let op = match i % 3 {
                0 => Op::Write(vec![i as u8; 5000 + i as usize]),
                1 => Op::Zero(7000),
                _ => Op::Write((0..9000u32).map(|x| (x * 7 + i as u32) as u8).collect()),
            };
            (i * 11, op)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for v2 in [false, true] {
        let plain = build(v2, &ops);
        let o = opts(16384);
        let want = compress_file(dir.path(), &plain, &o);
        let mut got = Vec::new();
        let (n, stats) = compress_stream(&mut got, &o, |w| {
            // Written in odd-sized pieces, as a diff writer would.
            for piece in plain.chunks(777) {
                w.write_all(piece)?;
            }
            Ok(plain.len())
        })
        .unwrap();
        assert_eq!(n, plain.len());
        assert_eq!(stats.diff_bytes, plain.len() as u64);
        assert_eq!(got, want);
        // A producer error wins; an invalid diff is the compressor's error.
        let mut sink = Vec::new();
        let e = compress_stream(&mut sink, &o, |w| {
            w.write_all(&plain[..plain.len() / 2])?;
            Err::<(), _>(rbddiff::Error::invalid("producer failed"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("producer failed"), "{e}");
        let e = compress_stream(&mut sink, &o, |w| {
            w.write_all(&plain[..plain.len() / 2])?;
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = compress_stream(&mut sink, &o, |w| {
            w.write_all(&vec![b'x'; 10 << 20])?;
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("bad banner"), "{e}");
    }
}

#[test]
fn archive_record_source_reads_only_the_frames_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    for f in diff_files() {
        let plain = f.read();
        let z = compress_file(dir.path(), &plain, &opts(4096));
        let mut a = ZstArchive::open(&z).unwrap().unwrap();
        // Walking without reading payloads decompresses nothing.
        {
            let mut src = a.diff_source(0).unwrap();
            let mut plain_src = DiffReader::new(Cursor::new(&plain)).unwrap();
            assert_eq!(src.metadata(), plain_src.metadata());
            loop {
                let (x, y) = (src.next_item().unwrap(), plain_src.next_item().unwrap());
                match (x, y) {
                    (None, None) => break,
                    (Some(x), Some(y)) => {
                        assert_eq!((x.offset, x.index), (y.offset, y.index));
                        assert_eq!(
                            format!("{:?}", x.kind).split('{').next(),
                            format!("{:?}", y.kind).split('{').next()
                        );
                    }
                    (x, y) => panic!("{}: {x:?} vs {y:?}", f.rel),
                }
            }
            assert_eq!(src.position(), plain_src.position());
            assert_eq!(src.warnings(), plain_src.warnings());
        }
        assert_eq!(a.frames_decompressed(), 0);
        // Applying from the archive source gives the plain diff's image.
        let mut want = Image::new();
        if f.apply_to == "empty" {
            want.apply_bytes(&plain);
            let mut got = Image::new();
            got.apply(&mut a.diff_source(0).unwrap());
            assert_eq!(got.sha256(), want.sha256(), "{}", f.rel);
        }
    }
    // One payload: only the frames holding it.
    let f = diff_files()
        .into_iter()
        .max_by_key(|f| f.read().len())
        .unwrap();
    let plain = f.read();
    let z = compress_file(dir.path(), &plain, &opts(4096));
    let mut a = ZstArchive::open(&z).unwrap().unwrap();
    let diff = a.index().diffs[0].clone();
    let records = a.decoded_index().unwrap().records.remove(0);
    let w = records.iter().rfind(|r| r.tag == b'w').unwrap();
    let (from, to) = (diff.payload_pos(w), diff.payload_pos(w) + w.len);
    let needed = a
        .frames()
        .iter()
        .filter(|fr| fr.d_offset < to && fr.d_offset + u64::from(fr.d_len) > from)
        .count() as u64;
    let mut src = a.diff_source(0).unwrap();
    let mut got = Vec::new();
    while let Some(item) = src.next_item().unwrap() {
        if item.offset == w.pos {
            if let rbddiff::ItemKind::Write { mut data, .. } = item.kind {
                data.read_to_end(&mut got).unwrap();
            }
        }
    }
    assert_eq!(got, plain[from as usize..to as usize]);
    assert_eq!(a.frames_decompressed(), needed);
    assert!(needed < a.frames().len() as u64);
}

fn merge_to(paths: &[PathBuf], out: &Path, compress: bool) -> rbddiff::Result<()> {
    let paths: Vec<String> = paths
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    let c = compress.then(|| opts(8192));
    rbddiff::merge::merge_files_to(
        &paths,
        out.to_str().unwrap(),
        true,
        &rbddiff::merge::MergeOptions::default(),
        c.as_ref(),
        &mut |_, _| {},
    )
    .map(|_| ())
}

/// merge(.zst inputs) == merge(plain inputs), and `merge -o OUT.zst` restores (with stock
/// zstd) to the plain merge output.
fn check_merge_equivalence(plains: &[Vec<u8>], dir: &Path) {
    let mut plain_paths = Vec::new();
    let mut zst_paths = Vec::new();
    for (i, p) in plains.iter().enumerate() {
        let pp = dir.join(format!("d{i}.diff"));
        std::fs::write(&pp, p).unwrap();
        let z = compress_file(dir, p, &opts(4096));
        let zp = dir.join(format!("d{i}.zst"));
        std::fs::write(&zp, z).unwrap();
        plain_paths.push(pp);
        zst_paths.push(zp);
    }
    let reference = dir.join("ref.diff");
    merge_to(&plain_paths, &reference, false).unwrap();
    let want = std::fs::read(&reference).unwrap();
    let out = dir.join("out.diff");
    merge_to(&zst_paths, &out, false).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), want, "merge of .zst inputs");
    for inputs in [&plain_paths, &zst_paths] {
        let oz = dir.join("out.zst");
        merge_to(inputs, &oz, true).unwrap();
        assert_eq!(zstd_cli_decompress(&oz), want, "merge -o OUT.zst");
        assert!(ZstArchive::open(&std::fs::read(&oz).unwrap())
            .unwrap()
            .is_some());
    }
}

#[test]
fn merge_of_real_chains_from_archives_and_to_archives() {
    let dir = tempfile::tempdir().unwrap();
    for chain in manifest::chains() {
        if chain.v1.len() < 2 {
            continue;
        }
        let plains: Vec<Vec<u8>> = chain.v1.iter().map(|f| f.read()).collect();
        check_merge_equivalence(&plains, dir.path());
    }
    // The CLI: an output named .zst is compressed, and nothing is left on error.
    let chain = &manifest::chains()[0].v1;
    let out = dir.path().join("cli.zst");
    let o = run(bin()
        .arg("merge")
        .args(chain.iter().map(|f| &f.path))
        .arg("-o")
        .arg(&out));
    assert!(o.status.success(), "{o:?}");
    let reference = dir.path().join("cli.diff");
    let o = run(bin()
        .arg("merge")
        .args(chain.iter().map(|f| &f.path))
        .arg("-o")
        .arg(&reference));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        zstd_cli_decompress(&out),
        std::fs::read(&reference).unwrap()
    );
    let bad = dir.path().join("bad.zst");
    let o = run(bin()
        .arg("merge")
        .args(chain.iter().rev().map(|f| &f.path))
        .arg("-o")
        .arg(&bad));
    assert_eq!(o.status.code(), Some(2));
    assert!(!bad.exists());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn merge_of_archives_equals_merge_of_plain(
        chain in prop::collection::vec(diff_strategy(), 2..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let plains: Vec<Vec<u8>> = chain
            .iter()
            .enumerate()
            .map(|(i, (v2, ops))| {
                build_named(*v2, ops, &format!("s{i}"), &format!("s{}", i + 1))
            })
            .collect();
        check_merge_equivalence(&plains, dir.path());
    }
}

fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes of incompressible data written at `at`, in records of 4 KiB.
fn writes(at: u64, len: u64, seed: u64) -> Vec<(u64, Op)> {
    let mut ops = vec![];
    let mut pos = 0;
    let mut off = at;
    while off < at + len {
        ops.push((off - pos, Op::Write(random_bytes(seed + off, 4096))));
        off += 4096;
        pos = off;
    }
    ops
}

/// Merges archives through the library, returning the output and the frames decompressed
/// from each input.
fn merge_archives(paths: &[&Path]) -> (Vec<u8>, Vec<u64>, rbddiff::merge::MergeStats) {
    use rbddiff::merge::{merge, merge_input, open_input, MergeOptions};
    let opened: Vec<Input> = paths
        .iter()
        .map(|p| open_input(p.to_str().unwrap()).unwrap())
        .collect();
    let mut inputs: Vec<_> = opened.iter().map(|i| merge_input(i).unwrap()).collect();
    assert!(inputs
        .iter()
        .all(|i| matches!(i.source, rbddiff::merge::Source::Archive(_))));
    let mut out = Vec::new();
    let stats = merge(&mut inputs, &mut out, &MergeOptions::default()).unwrap();
    let frames = inputs.iter().map(|i| i.frames_decompressed()).collect();
    (out, frames, stats)
}

/// The merge of plain diffs by the extent-map planner the sweep replaced (the sweep must
/// agree with it byte for byte).
fn merge_plain(plains: &[&[u8]]) -> Vec<u8> {
    use rbddiff::merge::{merge, merge_oracle, MergeInput, MergeOptions};
    let mut inputs: Vec<_> = plains.iter().map(|p| MergeInput::bytes("p", p)).collect();
    let (mut out, mut want) = (Vec::new(), Vec::new());
    merge(&mut inputs, &mut out, &MergeOptions::default()).unwrap();
    merge_oracle(&mut inputs, &mut want, &MergeOptions::default()).unwrap();
    assert!(out == want, "the sweep differs from the oracle");
    want
}

/// Merge reads archives through their index: after the index check (which reads the frames
/// holding record heads), frames whose payload bytes are overwritten later in the chain are
/// never decompressed, so the corruption of a frame holding only such bytes does not matter;
/// a corrupt frame whose data survives fails the merge (exit 2, frame and file named, no
/// output).
#[test]
fn merge_decompresses_only_frames_with_surviving_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = opts(4096);
    // Records of 16 KiB: their middle frames hold payload bytes only.
    let a_ops: Vec<(u64, Op)> = (0..4u64)
        .map(|i| (0, Op::Write(random_bytes(i + 1, 16 << 10))))
        .collect();
    let a = build_named(false, &a_ops, "s0", "s1");
    let b_all = build_named(true, &writes(0, 64 << 10, 2), "s1", "s2");
    let b_head = build_named(false, &writes(0, 4096, 3), "s1", "s2");
    let save = |name: &str, plain: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, compress_file(d, plain, &o)).unwrap();
        p
    };
    let (za, zb_all, zb_head) = (
        save("a.zst", &a),
        save("b.zst", &b_all),
        save("h.zst", &b_head),
    );
    let abytes = std::fs::read(&za).unwrap();
    let arch = ZstArchive::open(&abytes).unwrap().unwrap();
    assert!(arch.frames().len() > 8);

    // A is entirely overwritten by B: none of A's frames is decompressed to copy payloads.
    let (out, frames, stats) = merge_archives(&[&za, &zb_all]);
    assert_eq!(out, merge_plain(&[&a, &b_all]));
    assert_eq!(frames[0], 0);
    assert!(frames[1] > 0);
    assert_eq!(stats.frames_decompressed, frames[0] + frames[1]);

    // Only B's first 4 KiB overwrite A: A's frames holding the rest are decompressed, each once.
    let (out, frames, _) = merge_archives(&[&za, &zb_head]);
    assert_eq!(out, merge_plain(&[&a, &b_head]));
    let diff = &arch.index().diffs[0];
    let records = arch.decoded_index().unwrap().records.remove(0);
    let surviving: std::collections::BTreeSet<usize> = records
        .iter()
        .filter(|r| r.tag == b'w' && r.offset + r.len > 4096)
        .flat_map(|r| {
            let p = diff.payload_pos(r);
            let first = p + 4096u64.saturating_sub(r.offset);
            arch.frame_of(first).unwrap()..=arch.frame_of(p + r.len - 1).unwrap()
        })
        .collect();
    assert_eq!(frames[0], surviving.len() as u64);

    // Corrupt a frame of A that holds payload bytes of record 2 and no record head.
    let r2 = records.iter().filter(|r| r.tag == b'w').nth(2).unwrap();
    let k = arch.frame_of(diff.payload_pos(r2) + r2.len / 2).unwrap();
    let f = arch.frames()[k];
    let heads = records.iter().map(|r| r.pos);
    assert!(!heads
        .chain(diff.metadata_records.iter().map(|m| m.0))
        .any(|p| (f.d_offset..f.d_offset + u64::from(f.d_len)).contains(&p)));
    let mut bad = abytes.clone();
    let at = (f.c_offset + u64::from(f.c_len) / 2) as usize;
    for x in &mut bad[at..at + 8] {
        *x ^= 0x5a;
    }
    let zbad = d.join("bad.zst");
    std::fs::write(&zbad, &bad).unwrap();

    // Overwritten: the corruption is never read, the merge succeeds.
    let out = d.join("out.diff");
    let o = run(bin()
        .arg("merge")
        .arg(&zbad)
        .arg(&zb_all)
        .arg("-o")
        .arg(&out));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(&out).unwrap(), merge_plain(&[&a, &b_all]));

    // Surviving: exit 2, the frame and the file are named, no output is left.
    let out2 = d.join("out2.diff");
    let o = run(bin()
        .arg("merge")
        .arg(&zbad)
        .arg(&zb_head)
        .arg("-o")
        .arg(&out2));
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("zstd frame {k}")), "{err}");
    assert!(err.contains("bad.zst"), "{err}");
    assert!(
        err.contains(&format!("compressed byte {}", f.c_offset)),
        "{err}"
    );
    assert!(!out2.exists());
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".zst") && !n.ends_with(".diff"))
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}

/// An index altered with a recomputed checksum (payload positions swapped, an extent moved, a
/// length or the size changed, a record's frame offset or a metadata record moved) is found
/// by `verify` (exit 1, check `index`, naming the file, record and offset) even with
/// `--full --digest --require-sums`; sidecars of such an archive are those of its content;
/// merge does not trust it and gives what merging the plain diff gives.
#[test]
fn a_lying_record_index_is_found_and_not_used() {
    use rbddiff::merge::{merge_files, open_input};
    use rbddiff::verify::{verify, VerifyOptions};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut ops = writes(0, 16 << 10, 7);
    ops.push((4096, Op::Zero(8192)));
    ops.extend(writes(4096, 8192, 8));
    let plain = build_named(true, &ops, "s0", "s1");
    let z = compress_file(d, &plain, &opts(4096));
    let idx = ZstArchive::open(&z)
        .unwrap()
        .unwrap()
        .decoded_index()
        .unwrap();
    let diff = &idx.index.diffs[0];
    let recs = &idx.records[0];
    let base = diff.first_indexed();
    let ws: Vec<usize> = (0..recs.len()).filter(|&k| recs[k].tag == b'w').collect();
    let zk = recs.iter().position(|r| r.tag == b'z').unwrap();
    let last_w = *ws.last().unwrap();
    // (name, alteration, first record that differs, if a record does)
    type Alter = Box<dyn Fn(&mut rbddiff::zst::DecodedIndex)>;
    let (a, b) = (ws[0], ws[1]);
    let variants: Vec<(&str, Alter, Option<usize>)> = vec![
        (
            "payload positions swapped",
            Box::new(move |i| {
                let r = &mut i.records[0];
                let (pa, pb) = (r[a].pos, r[b].pos);
                (r[a].pos, r[b].pos) = (pb, pa);
            }),
            Some(a),
        ),
        (
            "extent moved",
            Box::new(move |i| i.records[0][last_w].offset += 1 << 20),
            Some(last_w),
        ),
        (
            "zero length changed",
            Box::new(move |i| i.records[0][zk].len -= 4096),
            Some(zk),
        ),
        (
            "size changed",
            Box::new(|i| i.index.diffs[0].metadata.image_size = Some(32 << 20)),
            None,
        ),
        (
            "position moved",
            Box::new(move |i| i.records[0][b].pos += 1),
            Some(b),
        ),
        (
            "metadata record moved",
            Box::new(|i| i.index.diffs[0].metadata_records[1].0 += 1),
            None,
        ),
    ];
    let plain_path = d.join("plain.diff");
    std::fs::write(&plain_path, &plain).unwrap();
    let want_sums = rbddiff::sums::compute(&plain).unwrap();
    // Merges one input on its own into `out`.
    let merge_one = |input: &Path, out: &Path| {
        merge_files(
            &[s(input)],
            &s(out),
            true,
            &Default::default(),
            &mut |_, _| {},
        )
    };
    let reference = d.join("ref.diff");
    merge_one(&plain_path, &reference).unwrap();
    let want = std::fs::read(&reference).unwrap();
    // The honest archive passes and is merged through its index.
    let good = d.join("good.diff.zst");
    std::fs::write(&good, &z).unwrap();
    assert!(verify(&[s(&good)], &VerifyOptions::default()).unwrap().ok());
    assert!(open_input(&s(&good)).unwrap().archive().unwrap().is_some());
    for (name, alter, record) in variants {
        let p = d.join("lying.diff.zst");
        std::fs::write(&p, relabel(&z, alter)).unwrap();
        rbddiff::sums::write_sums_for(&p).unwrap();
        let sidecar = rbddiff::sums::compute_input(Input::open(&s(&p)).unwrap()).unwrap();
        assert_eq!(sidecar.records, want_sums.records, "{name}: sidecar");
        let o = VerifyOptions {
            full: true,
            digest: true,
            require_sums: true,
            ..Default::default()
        };
        let r = verify(&[s(&p)], &o).unwrap();
        assert!(!r.ok(), "{name}: {:?}", r.findings);
        let f = r.findings.iter().find(|f| f.check == "index");
        let f = f.unwrap_or_else(|| panic!("{name}: {:?}", r.findings));
        assert_eq!(f.file, s(&p), "{name}");
        assert!(f.message.contains("record index"), "{name}: {f}");
        if let Some(k) = record {
            assert_eq!(f.record, Some(base + k as u64), "{name}: {f}");
            assert_eq!(f.offset, Some(recs[k].pos), "{name}: {f}");
        }
        let out = bin()
            .args(["verify", "--full", "--digest", "--require-sums"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        // Merge falls back to the content.
        let opened = open_input(&s(&p)).unwrap();
        assert!(opened.archive().unwrap().is_none(), "{name}: index used");
        drop(opened);
        let merged = d.join("merged.diff");
        merge_one(&p, &merged).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(std::fs::read(&merged).unwrap(), want, "{name}: merge");
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `z` with its record index rewritten in version 1 (fixed-width records) or 2 (one
/// delta-coded stream), as older versions wrote it.
fn with_old_index(z: &[u8], version: u8) -> Vec<u8> {
    use rbddiff::zst::{encode_index_v1, encode_index_v2, index_frame, parse_seek_table};
    let (frames, seek_start) = parse_seek_table(z).unwrap().unwrap();
    let last = frames.last().unwrap();
    let data_end = (last.c_offset + u64::from(last.c_len)) as usize;
    let idx = ZstArchive::open(z)
        .unwrap()
        .unwrap()
        .decoded_index()
        .unwrap();
    let body = if version == 1 {
        encode_index_v1(&idx)
    } else {
        encode_index_v2(&idx)
    };
    [&z[..data_end], &index_frame(&body)[..], &z[seek_start..]].concat()
}

#[test]
fn archives_with_a_version_1_or_2_index_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    for (path, version) in real_inputs()
        .into_iter()
        .flat_map(|p| [(p.clone(), 1), (p, 2)])
    {
        let plain = std::fs::read(&path).unwrap();
        let z = compress_file(dir.path(), &plain, &opts(4096));
        let old = with_old_index(&z, version);
        assert_ne!(old, z, "{}", path.display());
        let (a_old, a_new) = (
            ZstArchive::open(&old).unwrap().unwrap(),
            ZstArchive::open(&z).unwrap().unwrap(),
        );
        assert_eq!(a_old.index(), a_new.index(), "{}", path.display());
        assert_eq!(
            a_old.decoded_index().unwrap(),
            a_new.decoded_index().unwrap(),
            "{}",
            path.display()
        );
        let (zp, op) = (dir.path().join("new.zst"), dir.path().join("old.zst"));
        std::fs::write(&zp, &z).unwrap();
        std::fs::write(&op, &old).unwrap();
        for records in [false, true] {
            assert_eq!(
                inspect_json(Input::open(op.to_str().unwrap()).unwrap(), records),
                inspect_json(Input::open(zp.to_str().unwrap()).unwrap(), records),
                "{}",
                path.display()
            );
        }
        check_archive(&plain, &old, dir.path());
    }
}

/// A diff of `n` records of `len` bytes every 1 KiB (`z` records when `len` is `None`).
fn dense(n: u64, len: Option<usize>) -> Vec<u8> {
    let meta = Metadata {
        from_snap: None,
        to_snap: Some(b"s".to_vec()),
        protected: None,
        image_size: Some(n * 1024),
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    let data: Vec<u8> = (0..len.unwrap_or(0)).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..n {
        match len {
            Some(_) => w.write_data(i * 1024, &data).unwrap(),
            None => w.zero(Extent::new(i * 1024, 512)).unwrap(),
        }
    }
    w.finish().unwrap()
}

/// The record index of record-dense diffs stays a small part of the archive: within 2 % of
/// what `zstd` at the same level makes of the diff (version 1 of the index cost 33 bytes a
/// record, 40 times `zstd`'s size for `z` records).
#[test]
fn index_of_record_dense_diffs_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    for (what, plain) in [
        ("z records", dense(200_000, None)),
        ("512-byte records", dense(100_000, Some(512))),
        // Heads that compress badly: their blocks are left out of the index.
        ("z records at random places", scattered(200_000)),
        (
            "512-byte records at random places",
            scattered_mix(100_000, 1, 0),
        ),
        ("a mix at random places", scattered_mix(100_000, 3, 0)),
    ] {
        let z = compress_file(dir.path(), &plain, &CompressOptions::default());
        let reference = zstd::bulk::compress(&plain, 3).unwrap();
        let ratio = z.len() as f64 / reference.len() as f64;
        assert!(
            ratio <= 1.02,
            "{what}: archive {} bytes, zstd -3 {} bytes ({ratio:.3}x)",
            z.len(),
            reference.len()
        );
        check_archive(&plain, &z, dir.path());
    }
}

/// A `z`-only diff of `n` records at random gaps and of random lengths (a record index that
/// compresses badly).
fn scattered(n: u64) -> Vec<u8> {
    scattered_mix(n, 0, 0)
}

/// `n` records at random gaps and of random lengths, `z` records but every `w_every`th a
/// `w` of `w_len` bytes (half noise, half zeros), then `tail` writes of 4 KiB of noise at
/// random gaps (records whose index costs little next to their payload).
fn scattered_mix(n: u64, w_every: u64, tail: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut exts = Vec::new();
    let mut at = 0u64;
    for i in 0..n + tail {
        at += next() % (1 << 20);
        let write = i >= n || (w_every > 0 && i % w_every == 0);
        let len = match (i >= n, write) {
            (true, _) => 4096,
            (false, true) => w_len_of(w_every),
            (false, false) => 1 + next() % (1 << 16),
        };
        exts.push((Extent::new(at, len), write, next()));
        at += len;
    }
    let meta = Metadata {
        to_snap: Some(b"s".to_vec()),
        image_size: Some(at),
        ..Metadata::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    for (e, write, seed) in exts {
        if write {
            let mut data = random_bytes(seed, e.len as usize);
            if e.len < 4096 {
                data[e.len as usize / 2..].fill(0);
            }
            w.write_data(e.offset, &data).unwrap();
        } else {
            w.zero(e).unwrap();
        }
    }
    w.finish().unwrap()
}

/// The length of the `w` records of [`scattered_mix`].
fn w_len_of(w_every: u64) -> u64 {
    if w_every == 1 {
        512
    } else {
        256
    }
}

/// True when the archive's record index leaves blocks out (version 4: their records are
/// read from the heads in the data frames).
fn leaves_blocks_out(z: &[u8]) -> bool {
    let (frames, _) = rbddiff::zst::parse_seek_table(z).unwrap().unwrap();
    let last = frames.last().unwrap();
    let at = (last.c_offset + u64::from(last.c_len)) as usize;
    z.get(at + 8..at + 16) == Some(&b"RBDZIDX4"[..])
}

/// Length of the record index frame of an archive.
fn index_len(z: &[u8]) -> u64 {
    let (frames, seek_start) = rbddiff::zst::parse_seek_table(z).unwrap().unwrap();
    let last = frames.last().unwrap();
    seek_start as u64 - (last.c_offset + u64::from(last.c_len))
}

/// A record index larger than what the writer keeps in memory goes through its temporary
/// file and reads back record for record, through every path that reads an archive: the
/// blocks of 400,000 `z` records at random places (about 2.3 MB) are stored while the diff
/// is walked, then left out, and those of the 4 KiB writes after them are kept.
#[test]
fn record_index_spilled_to_a_temporary_file_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let plain = scattered_mix(400_000, 0, 20_000);
    let z = compress_file(dir.path(), &plain, &CompressOptions::default());
    assert!(leaves_blocks_out(&z));
    let reference = zstd::bulk::compress(&plain, 3).unwrap();
    assert!(z.len() as f64 <= reference.len() as f64 * 1.02);
    // The writes' blocks are kept: the index holds about 6 bytes for each of them.
    assert!(index_len(&z) > 60_000, "index of {} bytes", index_len(&z));
    check_archive(&plain, &z, dir.path());
    // Streamed input, the same archive.
    let inp = Input::from_reader("-", Box::new(Cursor::new(plain.clone()))).unwrap();
    let mut streamed = Vec::new();
    compress(inp, &mut streamed, &CompressOptions::default()).unwrap();
    assert_eq!(streamed, z);
}

/// A damaged block of the record index (the index checksum made to match) is an error naming
/// the block when the records are walked, never a panic; verify reports it.
#[test]
fn damaged_record_index_block_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dense(200_000, None);
    let z = compress_file(dir.path(), &plain, &opts(256 << 10));
    let (frames, seek_start) = rbddiff::zst::parse_seek_table(&z).unwrap().unwrap();
    let last = frames.last().unwrap();
    let body_at = (last.c_offset + u64::from(last.c_len)) as usize + 8;
    let head_len = u64::from_le_bytes(z[body_at + 24..body_at + 32].try_into().unwrap()) as usize;
    let blocks_at = body_at + 32 + head_len;
    let body_end = seek_start - 4;
    assert!(
        body_end > blocks_at + 64,
        "blocks of {} bytes",
        body_end - blocks_at
    );
    let mut damaged = 0;
    for at in [blocks_at + 5, (blocks_at + body_end) / 2, body_end - 3] {
        let mut bad = z.clone();
        bad[at] ^= 0x21;
        let crc = crc32fast::hash(&bad[body_at..body_end]);
        bad[body_end..seek_start].copy_from_slice(&crc.to_le_bytes());
        let mut a = ZstArchive::open(&bad)
            .unwrap()
            .expect("the header is intact");
        let mut src = a.diff_source(0).unwrap();
        let mut walked = Ok(());
        loop {
            match src.next_item() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    walked = Err(e);
                    break;
                }
            }
        }
        drop(src);
        let p = dir.path().join("bad.zst");
        std::fs::write(&p, &bad).unwrap();
        let r = rbddiff::verify::verify(&[s(&p)], &Default::default()).unwrap();
        let Err(e) = walked else {
            // Damage the block's own checksum does not catch gives records that verify
            // finds wrong.
            let want = ZstArchive::open(&z)
                .unwrap()
                .unwrap()
                .decoded_index()
                .unwrap();
            if a.decoded_index().ok() != Some(want) {
                assert!(!r.ok(), "byte {at}: {:?}", r.findings);
            }
            continue;
        };
        damaged += 1;
        assert!(
            e.to_string().contains("record index block"),
            "byte {at}: {e}"
        );
        assert!(!r.ok(), "byte {at}: {:?}", r.findings);
    }
    assert!(damaged > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every version of the index codes any records (even ones no diff has: wrapping deltas,
    /// odd offsets in frames; version 3 derives a record's frame offset from its position, and
    /// takes records in frame order) of one or two diffs, and decodes them to the same
    /// records.
    #[test]
    fn index_codes_any_records(
        recs in prop::collection::vec(
            (any::<u64>(), prop_oneof![Just(b'w'), Just(b'z'), Just(b'e'), any::<u8>()],
             any::<u64>(), any::<u64>(), 0u32..6, any::<u32>(), any::<bool>()),
            0..60),
        frame_lens in prop::collection::vec(1u32..1 << 20, 6),
        split in any::<prop::sample::Index>(),
        v2 in any::<bool>(),
    ) {
        use rbddiff::zst::{
            decode_index, encode_index, encode_index_v1, encode_index_v2, ArchiveIndex,
            DecodedIndex, FrameEntry, IndexRecord, IndexedDiff,
        };
        let total = 1u64 << 40;
        let mut frames = Vec::new();
        let mut d_offset = 0;
        for &d_len in &frame_lens {
            frames.push(FrameEntry { c_offset: 0, c_len: 1, d_offset, d_len, checksum: 0 });
            d_offset += u64::from(d_len);
        }
        let mut pos = 100u64;
        let records: Vec<IndexRecord> = recs
            .iter()
            .map(|&(p, tag, offset, len, frame, frame_offset, near)| {
                // Mostly plausible positions, sometimes anything.
                pos = if near { pos.wrapping_add(p % 64) } else { p };
                IndexRecord { pos, tag, offset, len, frame, frame_offset }
            })
            .collect();
        let at = split.index(records.len() + 1);
        let diff = |n: usize| IndexedDiff {
            start: 0,
            version: if v2 { Version::V2 } else { Version::V1 },
            metadata: Metadata::default(),
            metadata_records: vec![(12, b's')],
            warnings: Vec::new(),
            record_count: n as u64 + 1,
            end: 1 << 39,
            indexed: n as u64,
        };
        let index = ArchiveIndex {
            total_len: total,
            kind: if v2 { Kind::DiffV2 } else { Kind::DiffV1 },
            image: None,
            diffs: vec![diff(at), diff(records.len() - at)],
        };
        let idx = DecodedIndex {
            index,
            records: vec![records[..at].to_vec(), records[at..].to_vec()],
        };
        prop_assert_eq!(&decode_index(&encode_index_v1(&idx), &frames).unwrap(), &idx);
        prop_assert_eq!(&decode_index(&encode_index_v2(&idx), &frames).unwrap(), &idx);
        // Version 3: records in frame order, inside the stream, their offsets in frames
        // following from their positions.
        let mut v3 = idx.clone();
        let mut frame_of: Vec<u32> = records.iter().map(|r| r.frame).collect();
        frame_of.sort_unstable();
        for (r, f) in v3.records.iter_mut().flatten().zip(frame_of) {
            r.pos %= total;
            r.frame = f;
            r.frame_offset = r.pos.wrapping_sub(frames[f as usize].d_offset) as u32;
        }
        let body = encode_index(&v3, frames.len()).unwrap();
        prop_assert_eq!(&decode_index(&body, &frames).unwrap(), &v3);
        // Records out of frame order are refused.
        let mut bad = v3.clone();
        let flat = bad.records.concat();
        let earlier = flat.iter().rev().skip(1).map(|r| r.frame).max().unwrap_or(0);
        if let Some(r) = bad.records.iter_mut().flatten().last() {
            r.frame = 0;
        }
        if earlier > 0 {
            prop_assert!(encode_index(&bad, frames.len()).is_err());
        }
    }
}

/// Merges in-memory archives `zs` (input `stream`, if any, read as a plain stream of
/// `plains[stream]` instead) with a frame budget of `budget` bytes: the output and the frames
/// decompressed.
fn merge_budget(
    zs: &[Vec<u8>],
    plains: &[Vec<u8>],
    stream: Option<usize>,
    budget: Option<usize>,
) -> (Vec<u8>, u64) {
    use rbddiff::merge::{plan, MergeInput, MergeOptions};
    let mut inputs: Vec<MergeInput<'_>> = zs
        .iter()
        .enumerate()
        .map(|(i, z)| match stream {
            Some(s) if s == i => MergeInput::stream("s", Box::new(&plains[i][..])).unwrap(),
            _ => MergeInput::archive("z", ZstArchive::open(z).unwrap().unwrap()),
        })
        .collect();
    let mut p = plan(&inputs, &MergeOptions::default()).unwrap();
    if let Some(b) = budget {
        p.set_frame_budget(b);
    }
    let (out, stats) = p
        .write(&mut inputs, Vec::new(), Version::V1, &mut |_, _| {})
        .unwrap();
    (out, stats.frames_decompressed)
}

/// A chain of `n` diffs of 4 KiB records at scattered offsets of a 4 MiB range, so that the
/// frames of every input are read in turns.
fn interleaved_chain(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    (0..n)
        .map(|k| {
            let mut ops = vec![];
            let mut pos = 0u64;
            while pos < (4 << 20) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let gap = (x % 48) * 4096;
                let op = match x % 7 {
                    0 => Op::Zero(8192),
                    _ => Op::Write(random_bytes(x, 4096)),
                };
                pos += gap + 4096 + u64::from(matches!(op, Op::Zero(_))) * 4096;
                ops.push((gap, op));
            }
            build_named(k % 2 == 1, &ops, &format!("s{k}"), &format!("s{}", k + 1))
        })
        .collect()
}

/// The frames' cache is one for the whole merge, bounded in bytes: whatever the budget (one
/// frame at a time, a few, the default), decompressed ahead (archives only) or on the writing
/// thread (a stream among the inputs), the merge of interleaved archives is the plain merge;
/// within the default budget each frame holding surviving data is decompressed once, and a
/// budget of one frame decompresses some again.
#[test]
fn merge_of_interleaved_archives_within_any_frame_budget() {
    let dir = tempfile::tempdir().unwrap();
    let plains = interleaved_chain(6, 7);
    let zs: Vec<Vec<u8>> = plains
        .iter()
        .map(|p| compress_file(dir.path(), p, &opts(16 << 10)))
        .collect();
    let refs: Vec<&[u8]> = plains.iter().map(Vec::as_slice).collect();
    let want = merge_plain(&refs);
    // The frames holding surviving bytes, from the plan's pieces.
    let needed = {
        use rbddiff::merge::{plan, MergeInput, MergeOptions};
        let inputs: Vec<MergeInput<'_>> = zs
            .iter()
            .map(|z| MergeInput::archive("z", ZstArchive::open(z).unwrap().unwrap()))
            .collect();
        let p = plan(&inputs, &MergeOptions::default()).unwrap();
        let mut set = std::collections::BTreeSet::new();
        let archives: Vec<ZstArchive<'_>> = zs
            .iter()
            .map(|z| ZstArchive::open(z).unwrap().unwrap())
            .collect();
        p.pieces(&inputs, &mut |s, e, src| {
            if let Some((i, at)) = src {
                let (a, b) = (
                    archives[i].frame_of(at),
                    archives[i].frame_of(at + e - s - 1),
                );
                for f in a.unwrap()..=b.unwrap() {
                    set.insert((i, f));
                }
            }
        })
        .unwrap();
        set.len() as u64
    };
    assert!(zs
        .iter()
        .all(|z| ZstArchive::open(z).unwrap().unwrap().frames().len() > 4));
    let (out, frames) = merge_budget(&zs, &plains, None, None);
    assert!(out == want, "default budget, decompressed ahead");
    assert_eq!(frames, needed);
    let (out, frames) = merge_budget(&zs, &plains, None, Some(1));
    assert!(out == want, "one frame at a time");
    assert!(frames > needed, "{frames} {needed}");
    for budget in [1, 40 << 10, 100 << 10] {
        let (out, _) = merge_budget(&zs, &plains, None, Some(budget));
        assert!(out == want, "budget {budget}, decompressed ahead");
        let (out, _) = merge_budget(&zs, &plains, Some(2), Some(budget));
        assert!(out == want, "budget {budget}, with a stream");
    }
    let (out, _) = merge_budget(&zs, &plains, Some(0), None);
    assert!(out == want, "default budget, with a stream");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random chains of archives with small frames, merged within a random frame budget,
    /// with or without a stream input, give the plain merge.
    #[test]
    fn merge_of_archives_within_a_random_budget_is_the_plain_merge(
        chain in prop::collection::vec(diff_strategy(), 1..5),
        target in 1024u64..20000,
        budget in prop_oneof![Just(1usize), 1usize..100000, Just(64usize << 20)],
        stream in any::<Option<prop::sample::Index>>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let plains: Vec<Vec<u8>> = chain
            .iter()
            .enumerate()
            .map(|(k, (v2, ops))| build_named(*v2, ops, &format!("s{k}"), &format!("s{}", k + 1)))
            .collect();
        let o = CompressOptions { level: 1, threads: 1, frame_target: target };
        let zs: Vec<Vec<u8>> = plains.iter().map(|p| compress_file(dir.path(), p, &o)).collect();
        let refs: Vec<&[u8]> = plains.iter().map(Vec::as_slice).collect();
        let want = merge_plain(&refs);
        let stream = stream.map(|s| s.index(plains.len()));
        let (out, _) = merge_budget(&zs, &plains, stream, Some(budget));
        prop_assert!(out == want);
    }
}

/// `n` records at random places from `seed`: `z` records, and `w` records (of up to 300
/// bytes, noise or zeros) where `writes`; v2 when `v2`.
fn scattered_seeded(seed: u64, n: usize, writes: bool, v2: bool) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let gap = next() % 1500;
        let op = if writes && next() % 3 == 0 {
            let len = 1 + (next() % 300) as usize;
            if next() % 2 == 0 {
                Op::Write(random_bytes(next(), len))
            } else {
                Op::Write(vec![0; len])
            }
        } else {
            Op::Zero(1 + next() % 1000)
        };
        ops.push((gap, op));
    }
    build(v2, &ops)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Archives whose index leaves blocks out (their records read from the frames' heads)
    /// round-trip, index every record where the slice driver finds it, and merge as the
    /// plain diffs do, at any frame size.
    #[test]
    fn archives_with_blocks_left_out_read_as_the_plain_diffs(
        seed in any::<u64>(),
        n in 3000usize..6000,
        writes in any::<bool>(),
        v2 in any::<bool>(),
        target in 8192u64..65536,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let plain = scattered_seeded(seed, n, writes, v2);
        let o = CompressOptions { level: 3, threads: 2, frame_target: target };
        let z = compress_file(dir.path(), &plain, &o);
        prop_assert!(leaves_blocks_out(&z));
        prop_assert_eq!(&z, &compress_streamed(&plain, &o));
        check_archive(&plain, &z, dir.path());
        let want = inspect_json(Input::from_reader("-", Box::new(Cursor::new(plain.clone()))).unwrap(), true);
        let zp = dir.path().join("a.zst");
        prop_assert_eq!(inspect_json(Input::open(zp.to_str().unwrap()).unwrap(), true), want);
        // A merge over two such archives equals the merge of the plain diffs.
        let next = build_named(v2, &[(7, Op::Zero(100)), (10_000, Op::Write(vec![7; 5000]))], "b", "c");
        let zn = compress_file(dir.path(), &next, &o);
        let (p1, p2) = (dir.path().join("p1.zst"), dir.path().join("p2.zst"));
        std::fs::write(&p1, &z).unwrap();
        std::fs::write(&p2, &zn).unwrap();
        let (merged, _, _) = merge_archives(&[&p1, &p2]);
        prop_assert_eq!(merged, merge_plain(&[&plain, &next]));
    }
}

/// A damaged data frame of an archive whose index leaves its block out is an error naming
/// the frame when its records are walked, never a panic; `verify` reports the archive.
#[test]
fn damaged_frame_of_a_block_left_out_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let plain = scattered(50_000);
    let o = CompressOptions {
        frame_target: 64 << 10,
        ..CompressOptions::default()
    };
    let mut z = compress_file(dir.path(), &plain, &o);
    assert!(leaves_blocks_out(&z));
    let f = ZstArchive::open(&z).unwrap().unwrap().frames()[3];
    z[(f.c_offset + u64::from(f.c_len) / 2) as usize] ^= 0x5a;
    let zp = dir.path().join("d.zst");
    std::fs::write(&zp, &z).unwrap();
    let out = run(bin().arg("inspect").arg(&zp));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("frame 3"), "{err}");
    let out = run(bin().args(["verify", "--quiet"]).arg(&zp));
    assert_ne!(out.status.code(), Some(0));
}
