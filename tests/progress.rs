//! Progress reporting: every long library entry point reports `(done, total)` rarely, with
//! `done` non-decreasing and ending at `total`; the CLI prints nothing on stderr when stderr is
//! not a terminal.

mod common;
use common::gen::noise;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rbddiff::apply::{apply_chain_with_progress, ApplyOptions};
use rbddiff::compress::{compress_with_progress, decompress_with_progress, CompressOptions};
use rbddiff::create::{create_diff_with_progress, CreateOptions};
use rbddiff::input::Input;
use rbddiff::merge::{merge_files, MergeOptions};
use rbddiff::progress::STEP;
use rbddiff::verify::{verify_with_progress, VerifyOptions};
use rbddiff::{DiffWriter, Extent, Metadata, Version};

const MIB: u64 = 1 << 20;

/// A v1 diff of a 32 MiB image: 12 data records of 1 MiB (every other MiB) and zero records
/// between them. Returns its path and its payload bytes.
fn write_diff(dir: &Path, name: &str, from: Option<&str>, to: &str, seed: u64) -> (PathBuf, u64) {
    let meta = Metadata {
        from_snap: from.map(|s| s.as_bytes().to_vec()),
        to_snap: Some(to.as_bytes().to_vec()),
        protected: None,
        image_size: Some(32 * MIB),
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    let mut payload = 0;
    for i in 0..12u64 {
        let data = noise(seed + i, MIB as usize);
        w.write_data(2 * i * MIB, &data).unwrap();
        payload += data.len() as u64;
        w.zero(Extent::new((2 * i + 1) * MIB, 4096)).unwrap();
    }
    let path = dir.join(name);
    std::fs::write(&path, w.finish().unwrap()).unwrap();
    (path, payload)
}

/// A raw image of 20 MiB: data in MiB 0..3 and 10..13, zeros (and a hole) elsewhere.
fn write_raw(dir: &Path) -> PathBuf {
    let path = dir.join("raw.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(20 * MIB).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&noise(7, 3 * MIB as usize), 0).unwrap();
    f.write_all_at(&noise(8, 3 * MIB as usize), 10 * MIB)
        .unwrap();
    path
}

/// Checks the calls made to a progress callback and returns the last one.
fn check(calls: &[(u64, u64)]) -> (u64, u64) {
    assert!(!calls.is_empty(), "progress never reported");
    for w in calls.windows(2) {
        assert!(w[0].0 <= w[1].0, "done went backwards: {calls:?}");
    }
    let (done, total) = *calls.last().unwrap();
    assert_eq!(done, total, "does not end at the total: {calls:?}");
    for &(d, t) in &calls[..calls.len() - 1] {
        // A known total never changes and is never passed; an unknown one is 0.
        assert!(t == 0 || t == total, "total changed: {calls:?}");
        assert!(t == 0 || d <= t, "done past the total: {calls:?}");
    }
    // Rare: at the start, at most once per STEP bytes, and at the end.
    assert!(
        calls.len() as u64 <= 2 + total / STEP,
        "{} calls for {total} bytes",
        calls.len()
    );
    (done, total)
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn apply_reports_payload_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (diff, payload) = write_diff(dir.path(), "full.diff", None, "s1", 1);
    let mut calls = Vec::new();
    let opts = ApplyOptions {
        create: true,
        ..ApplyOptions::default()
    };
    let target = dir.path().join("target.img");
    apply_chain_with_progress(&[s(&diff)], &target, &opts, &mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!(check(&calls), (payload, payload));
    assert_eq!(calls[0], (0, payload), "the total is known from the start");
    assert!(calls.len() >= 3, "12 MiB of payload in one call: {calls:?}");
}

#[test]
fn apply_from_a_stream_reports_an_unknown_total_then_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let (diff, payload) = write_diff(dir.path(), "full.diff", None, "s1", 2);
    // Plain zstd (no index): the payload bytes are not known before the end.
    let zst = dir.path().join("full.diff.zst");
    let plain = zstd::encode_all(&std::fs::read(&diff).unwrap()[..], 3).unwrap();
    std::fs::write(&zst, plain).unwrap();
    let mut calls = Vec::new();
    let opts = ApplyOptions {
        create: true,
        ..ApplyOptions::default()
    };
    let target = dir.path().join("target.img");
    apply_chain_with_progress(&[s(&zst)], &target, &opts, &mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!(check(&calls), (payload, payload));
    assert!(calls[..calls.len() - 1].iter().all(|&(_, t)| t == 0));
}

#[test]
fn apply_of_an_indexed_archive_knows_its_total() {
    let dir = tempfile::tempdir().unwrap();
    let (diff, payload) = write_diff(dir.path(), "full.diff", None, "s1", 2);
    let zst = dir.path().join("full.diff.zst");
    let mut out = Vec::new();
    rbddiff::compress::compress(
        Input::open(&s(&diff)).unwrap(),
        &mut out,
        &CompressOptions::default(),
    )
    .unwrap();
    std::fs::write(&zst, out).unwrap();
    let mut calls = Vec::new();
    let opts = ApplyOptions {
        create: true,
        ..ApplyOptions::default()
    };
    let target = dir.path().join("target.img");
    apply_chain_with_progress(&[s(&zst)], &target, &opts, &mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!(check(&calls), (payload, payload));
    assert_eq!(calls[0], (0, payload), "the total is known from the start");
}

#[test]
fn verify_reports_file_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = write_diff(dir.path(), "a.diff", None, "s1", 3);
    let (b, _) = write_diff(dir.path(), "b.diff", Some("s1"), "s2", 4);
    let len = std::fs::metadata(&a).unwrap().len() + std::fs::metadata(&b).unwrap().len();
    let mut calls = Vec::new();
    let r = verify_with_progress(&[s(&a), s(&b)], &VerifyOptions::default(), &mut |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    assert!(r.ok());
    assert_eq!(check(&calls), (len, len));
    assert!(calls.len() >= 3, "{calls:?}");
}

/// With --write-sums each file is read twice (structure, then sums): the structure walk
/// moves the bar over the first half of a file's bytes and the summing over the second, so
/// that the bar moves inside a large file and the rate is that of the whole work.
#[test]
fn verify_write_sums_moves_inside_a_file_while_summing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = write_diff(dir.path(), "a.diff", None, "s1", 3);
    let (b, _) = write_diff(dir.path(), "b.diff", Some("s1"), "s2", 4);
    let la = std::fs::metadata(&a).unwrap().len();
    let len = la + std::fs::metadata(&b).unwrap().len();
    let opts = VerifyOptions {
        write_sums: true,
        ..VerifyOptions::default()
    };
    let mut calls = Vec::new();
    let r = verify_with_progress(&[s(&a), s(&b)], &opts, &mut |d, t| calls.push((d, t))).unwrap();
    assert!(r.ok());
    assert!(dir.path().join("b.diff.sums").exists());
    assert_eq!(check(&calls), (len, len));
    // Inside the first file: during its structure walk, and during its summing.
    assert!(
        calls.iter().any(|&(d, _)| d > 0 && d <= la / 2),
        "no progress during the structure walk: {calls:?}"
    );
    assert!(
        calls.iter().any(|&(d, _)| d > la / 2 + 1 && d < la),
        "no progress while summing: {calls:?}"
    );
    // The sidecars written so (CRCs and sha256 as the walk goes) check out, digest too.
    let check_opts = VerifyOptions {
        digest: true,
        require_sums: true,
        ..VerifyOptions::default()
    };
    let r = verify_with_progress(&[s(&a), s(&b)], &check_opts, &mut |_, _| {}).unwrap();
    assert!(r.ok(), "{:?}", r.findings);
}

#[test]
fn compress_and_decompress_report_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (diff, _) = write_diff(dir.path(), "a.diff", None, "s1", 5);
    let len = std::fs::metadata(&diff).unwrap().len();
    let opts = CompressOptions {
        frame_target: MIB,
        ..CompressOptions::default()
    };

    let mut calls = Vec::new();
    let mut archive = Vec::new();
    compress_with_progress(
        Input::open(&s(&diff)).unwrap(),
        &mut archive,
        &opts,
        &mut |d, t| calls.push((d, t)),
    )
    .unwrap();
    assert_eq!(check(&calls), (len, len));
    assert!(calls.len() >= 3, "{calls:?}");

    // Streamed (the total is not known up front).
    let mut calls = Vec::new();
    let bytes = std::fs::read(&diff).unwrap();
    let input = Input::from_reader("-", Box::new(std::io::Cursor::new(bytes.clone()))).unwrap();
    compress_with_progress(input, &mut Vec::new(), &opts, &mut |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    assert_eq!(check(&calls), (len, len));

    // Indexed archive in a file: frame-parallel, total known.
    let zst = dir.path().join("a.diff.zst");
    std::fs::write(&zst, &archive).unwrap();
    let mut calls = Vec::new();
    let mut out = Vec::new();
    decompress_with_progress(Input::open(&s(&zst)).unwrap(), &mut out, 2, &mut |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    assert_eq!(out, bytes);
    assert_eq!(check(&calls), (len, len));
    assert_eq!(calls[0], (0, len));

    // Streamed zstd.
    let mut calls = Vec::new();
    let mut out = Vec::new();
    let input = Input::from_reader("-", Box::new(std::io::Cursor::new(archive))).unwrap();
    decompress_with_progress(input, &mut out, 2, &mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!(out, bytes);
    assert_eq!(check(&calls), (len, len));
}

#[test]
fn create_reports_image_bytes_scanned() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path());
    let out = dir.path().join("new.diff");
    let mut calls = Vec::new();
    create_diff_with_progress(&raw, &s(&out), &CreateOptions::default(), &mut |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    assert_eq!(check(&calls), (20 * MIB, 20 * MIB));
    assert_eq!(calls[0], (0, 20 * MIB));
    assert!(calls.len() >= 3, "{calls:?}");
}

#[test]
fn merge_reports_payload_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = write_diff(dir.path(), "a.diff", None, "s1", 6);
    let (b, payload) = write_diff(dir.path(), "b.diff", Some("s1"), "s2", 7);
    let out = dir.path().join("m.diff");
    let mut calls = Vec::new();
    merge_files(
        &[s(&a), s(&b)],
        &s(&out),
        false,
        &MergeOptions::default(),
        &mut |d, t| calls.push((d, t)),
    )
    .unwrap();
    // b overwrites every data extent of a.
    assert_eq!(check(&calls), (payload, payload));
}

/// Runs the binary with stdout and stderr piped; asserts success and an empty stderr.
fn quiet(args: &[&str], stdin: Option<&Path>) {
    let out = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .stdin(match stdin {
            Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
            None => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{args:?} wrote to stderr: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_progress_output_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| s(&dir.path().join(n));
    let raw = write_raw(dir.path());
    let (a, _) = write_diff(dir.path(), "a.diff", None, "s1", 9);
    let (b, _) = write_diff(dir.path(), "b.diff", Some("s1"), "s2", 10);

    quiet(&["create", "--from", &s(&raw), "-o", &d("c.diff")], None);
    quiet(&["verify", &s(&a), &s(&b)], None);
    quiet(&["verify", "-"], Some(&a));
    // merge's one-line summary is all it prints.
    let out = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(["merge", &s(&a), &s(&b), "-o", &d("m.diff")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.starts_with("rbddiff: merged ") && e.lines().count() == 1,
        "{e:?}"
    );
    assert!(!e.contains('\r') && !e.contains('\x1b'), "{e:?}");
    quiet(&["merge", &s(&a), &s(&b), "-o", &d("m2.diff"), "-q"], None);
    quiet(&["compress", &s(&a), "-o", &d("a.zst")], None);
    quiet(&["compress", "-", "-o", &d("s.zst")], Some(&a));
    quiet(&["decompress", &d("a.zst"), "-o", &d("a2.diff")], None);
    quiet(
        &["decompress", "-", "-o", &d("s2.diff")],
        Some(&dir.path().join("s.zst")),
    );
    quiet(
        &["apply", "--create", "--to", &d("t.img"), &s(&a), &s(&b)],
        None,
    );
    quiet(&["apply", "--create", "--to", &d("u.img"), "-"], Some(&a));
    assert_eq!(
        std::fs::read(d("a2.diff")).unwrap(),
        std::fs::read(&a).unwrap()
    );
}
