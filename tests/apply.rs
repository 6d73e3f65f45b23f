//! `rbddiff apply`: real Ceph chains against ground truth, random chains against the model,
//! kill -9 crash/resume, snapshot checks and bad input.

mod common;
use common::gen::path_str as s;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::manifest::{chains, diff_file, sha256_file, truth};
use common::model::Image;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rbddiff::apply::{apply_chain, read_state, state_path, ApplyOptions, TargetState};
use rbddiff::{DiffWriter, Extent, Metadata, Version};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
}

fn create() -> ApplyOptions {
    ApplyOptions {
        create: true,
        ..ApplyOptions::default()
    }
}

/// Every prefix of every real chain (v1, v2 and whole-object), applied one diff at a time and
/// as one command, gives the ground-truth image.
#[test]
fn real_chains_every_prefix_matches_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for c in chains() {
        for (kind, chain) in [("v1", &c.v1), ("v2", &c.v2), ("whole", &c.whole_object)] {
            if chain.is_empty() {
                continue;
            }
            let target = dir.path().join(format!("{}-{kind}", c.image));
            let mut opts = create();
            // img4m's chain starts at v1: build that state from img64k's full diff (same data).
            if chain[0].from.is_some() {
                let full = diff_file("img64k/full_v1.diff");
                apply_chain(&[s(&full.path)], &target, &opts).unwrap();
                assert_eq!(sha256_file(&target), truth(&c.image, "v1").sha256);
                opts = ApplyOptions::default();
            }
            for d in chain {
                apply_chain(&[s(&d.path)], &target, &opts).unwrap();
                opts = ApplyOptions::default();
                let t = d.expected();
                assert_eq!(fs::metadata(&target).unwrap().len(), t.size, "{}", d.rel);
                assert_eq!(sha256_file(&target), t.sha256, "after {}", d.rel);
                let st = read_state(&state_path(&target)).unwrap().unwrap();
                assert_eq!(
                    st,
                    TargetState::At {
                        snap: d.to.clone(),
                        size: Some(t.size)
                    }
                );
                checked += 1;
            }
            // The whole chain in one command.
            if chain[0].from.is_none() {
                let one = dir.path().join(format!("{}-{kind}-one", c.image));
                let files: Vec<String> = chain.iter().map(|d| s(&d.path)).collect();
                let r = apply_chain(&files, &one, &create()).unwrap();
                assert!(r.diffs.iter().all(|d| d.applied));
                let last = chain.last().unwrap().expected();
                assert_eq!(sha256_file(&one), last.sha256);
            }
        }
    }
    assert!(checked >= 15, "only {checked} chain steps found");
}

/// The same through the CLI, each diff piped on stdin.
#[test]
fn real_chain_from_stdin_matches_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    for c in chains() {
        for chain in [&c.v1, &c.v2] {
            if chain.is_empty() || chain[0].from.is_some() {
                continue;
            }
            let target = dir
                .path()
                .join(format!("{}-{:?}", c.image, chain[0].format));
            for (i, d) in chain.iter().enumerate() {
                let mut cmd = bin();
                cmd.args(["apply", "-", "--to", &s(&target)]);
                if i == 0 {
                    cmd.arg("--create");
                }
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap();
                child.stdin.take().unwrap().write_all(&d.read()).unwrap();
                assert!(child.wait().unwrap().success(), "{}", d.rel);
                assert_eq!(sha256_file(&target), d.expected().sha256, "{}", d.rel);
            }
        }
    }
}

/// A target stays sparse: zero records and zero blocks allocate nothing.
#[test]
fn output_stays_sparse() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let meta = Metadata {
        to_snap: Some(b"s".to_vec()),
        image_size: Some(64 << 20),
        ..Metadata::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    w.write_data(0, &vec![0u8; 8 << 20]).unwrap(); // all zeros: punched, not written
    w.write_data(16 << 20, &[1u8; 4096]).unwrap();
    w.zero(Extent::new(32 << 20, 16 << 20)).unwrap();
    let diff = dir.path().join("d");
    fs::write(&diff, w.finish().unwrap()).unwrap();
    let t = dir.path().join("img");
    apply_chain(&[s(&diff)], &t, &create()).unwrap();
    let m = fs::metadata(&t).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 <= 1 << 20,
        "{} bytes allocated",
        m.blocks() * 512
    );
}

// ---------- random chains against the model ----------

#[derive(Clone, Debug)]
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
}

/// A random diff: sorted, non-overlapping records inside `size`.
fn gen_diff(rng: &mut impl Rng, from: Option<&str>, to: &str, size: u64) -> Vec<u8> {
    let meta = Metadata {
        from_snap: from.map(|f| f.as_bytes().to_vec()),
        to_snap: Some(to.as_bytes().to_vec()),
        image_size: Some(size),
        ..Metadata::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    let mut pos = 0u64;
    let mut ops = Vec::new();
    while pos < size {
        pos += rng.gen_range(0..size / 4 + 1);
        if pos >= size {
            break;
        }
        let len = rng.gen_range(1..=(size - pos).min(size / 3 + 1));
        if rng.gen_bool(0.35) {
            ops.push(Op::Zero(pos, len));
        } else {
            let data: Vec<u8> = match rng.gen_range(0..3) {
                0 => vec![0; len as usize],
                1 => (0..len)
                    .map(|i| if (i / 4096) % 2 == 0 { 0 } else { rng.gen() })
                    .collect(),
                _ => (0..len).map(|_| rng.gen()).collect(),
            };
            ops.push(Op::Write(pos, data));
        }
        pos += len;
    }
    for op in ops {
        match op {
            Op::Write(o, d) => w.write_data(o, &d).unwrap(),
            Op::Zero(o, l) => w.zero(Extent::new(o, l)).unwrap(),
        }
    }
    w.finish().unwrap()
}

fn gen_chain(seed: u64, n: usize, max: u64) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..n {
        let size = rng.gen_range(1..=max);
        let from = (i > 0).then(|| format!("s{}", i - 1));
        out.push(gen_diff(&mut rng, from.as_deref(), &format!("s{i}"), size));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// apply(chain) == the model, for chains with resizes, zero runs and mixed payloads.
    #[test]
    fn random_chain_matches_model(seed in any::<u64>(), n in 1usize..5, max in 1u64..200_000) {
        let chain = gen_chain(seed, n, max);
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut model = Image::new();
        for (i, d) in chain.iter().enumerate() {
            let p = dir.path().join(format!("d{i}"));
            fs::write(&p, d).unwrap();
            files.push(s(&p));
            model.apply_bytes(d);
        }
        let t = dir.path().join("img");
        // Half the time one command, half the time diff by diff (non-fresh targets).
        if seed % 2 == 0 {
            apply_chain(&files, &t, &create()).unwrap();
        } else {
            for (i, f) in files.iter().enumerate() {
                let o = if i == 0 { create() } else { ApplyOptions::default() };
                apply_chain(std::slice::from_ref(f), &t, &o).unwrap();
            }
        }
        prop_assert_eq!(fs::read(&t).unwrap(), model.data);
    }
}

// ---------- crash and resume ----------

fn big_chain(seed: u64) -> (Vec<Vec<u8>>, Image) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a = gen_diff(&mut rng, None, "a", 48 << 20);
    let b = gen_diff(&mut rng, Some("a"), "b", 40 << 20);
    let mut m = Image::new();
    m.apply_bytes(&a);
    m.apply_bytes(&b);
    (vec![a, b], m)
}

/// kill -9 at random points, then re-run the same command until it succeeds: the image is
/// exact and the state says "at b".
#[test]
fn kill_at_random_points_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, model) = big_chain(7);
    let files: Vec<PathBuf> = chain
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let p = dir.path().join(format!("d{i}.diff"));
            fs::write(&p, d).unwrap();
            p
        })
        .collect();
    let want = model.sha256();
    let run = |t: &Path| {
        let mut c = bin();
        c.arg("apply")
            .args(&files)
            .args(["--create", "--to"])
            .arg(t)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    // How long an uninterrupted run takes here (the faster of two), to spread the kills over
    // the first three quarters of one.
    let mut span = u64::MAX;
    for i in 0..2 {
        let full = dir.path().join(format!("ref{i}.img"));
        let t0 = Instant::now();
        assert!(run(&full).status().unwrap().success());
        span = span.min(t0.elapsed().as_micros() as u64 * 3 / 4);
        assert_eq!(sha256_file(&full), want);
        fs::remove_file(&full).unwrap();
    }
    let span = span.max(1000);

    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut interrupted = 0;
    for round in 0..8 {
        let t = dir.path().join(format!("img{round}"));
        let mut child = run(&t).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..span)));
        let _ = child.kill(); // SIGKILL
        let st = child.wait().unwrap();
        if !st.success() {
            interrupted += 1;
        }
        // Re-run until done (a second kill on some rounds).
        let mut tries = 0;
        loop {
            let mut c = run(&t).spawn().unwrap();
            if round % 3 == 0 && tries == 0 {
                std::thread::sleep(Duration::from_micros(rng.gen_range(0..span)));
                let _ = c.kill();
                c.wait().unwrap();
                tries += 1;
                continue;
            }
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "re-run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            break;
        }
        assert_eq!(sha256_file(&t), want, "round {round}");
        let st = read_state(&state_path(&t)).unwrap().unwrap();
        assert_eq!(
            st,
            TargetState::At {
                snap: Some("b".into()),
                size: Some(40 << 20)
            }
        );
    }
    assert!(interrupted > 0, "no run was actually interrupted");
}

// ---------- snapshot checks and bad input ----------

fn write_tmp(dir: &Path, name: &str, b: &[u8]) -> String {
    let p = dir.join(name);
    fs::write(&p, b).unwrap();
    s(&p)
}

#[test]
fn wrong_start_snapshot_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(3, 3, 100_000);
    let d0 = write_tmp(dir.path(), "d0", &chain[0]);
    let d2 = write_tmp(dir.path(), "d2", &chain[2]); // s1 -> s2: does not follow s0
    let t = dir.path().join("img");
    apply_chain(&[d0], &t, &create()).unwrap();
    let before = fs::read(&t).unwrap();
    let out = bin().args(["apply", &d2, "--to", &s(&t)]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'s1'") && err.contains("'s0'"), "{err}");
    assert_eq!(fs::read(&t).unwrap(), before);
    // --force applies it anyway, as import-diff would onto a renamed snapshot.
    let out = bin()
        .args(["apply", &d2, "--force", "--to", &s(&t)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut m = Image {
        data: before,
        snap: None,
    };
    m.apply_bytes(&chain[2]);
    assert_eq!(fs::read(&t).unwrap(), m.data);
}

#[test]
fn incremental_onto_a_new_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(4, 2, 50_000);
    let d1 = write_tmp(dir.path(), "d1", &chain[1]);
    let t = dir.path().join("img");
    let out = bin()
        .args(["apply", &d1, "--create", "--to", &s(&t)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'s0'"));
    assert!(!t.exists());
}

#[test]
fn missing_target_without_create_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = write_tmp(dir.path(), "d0", &gen_chain(5, 1, 1000)[0]);
    let out = bin()
        .args(["apply", &d0, "--to", &s(&dir.path().join("nope"))])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--create"));
}

/// A corrupt file is refused before anything is written: target and state unchanged.
#[test]
fn bad_file_leaves_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(6, 2, 300_000);
    let d0 = write_tmp(dir.path(), "d0", &chain[0]);
    let t = dir.path().join("img");
    apply_chain(&[d0], &t, &create()).unwrap();
    let before = fs::read(&t).unwrap();
    let state_before = fs::read(state_path(&t)).unwrap();
    for cut in [chain[1].len() - 1, chain[1].len() / 2, 20] {
        let bad = write_tmp(dir.path(), "bad", &chain[1][..cut]);
        let out = bin()
            .args(["apply", &bad, "--to", &s(&t)])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "cut {cut}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad") && err.contains("byte"), "{err}");
        assert_eq!(fs::read(&t).unwrap(), before);
        assert_eq!(fs::read(state_path(&t)).unwrap(), state_before);
    }
}

/// A truncated stream is found while applying: exit 2, the target is left "applying", and
/// giving the good diff again finishes it.
#[test]
fn truncated_stream_is_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(8, 2, 300_000);
    let d0 = write_tmp(dir.path(), "d0", &chain[0]);
    let d1 = write_tmp(dir.path(), "d1", &chain[1]);
    let t = dir.path().join("img");
    apply_chain(&[d0], &t, &create()).unwrap();
    let mut child = bin()
        .args(["apply", "-", "--to", &s(&t)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cut = chain[1].len() * 2 / 3;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&chain[1][..cut])
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    let st = read_state(&state_path(&t)).unwrap().unwrap();
    assert!(matches!(st, TargetState::Applying { .. }), "{st:?}");
    // Another diff is refused while half-applied.
    let d0b = write_tmp(dir.path(), "other", &gen_chain(9, 1, 1000)[0]);
    assert!(apply_chain(&[d0b], &t, &ApplyOptions::default()).is_err());
    apply_chain(&[d1], &t, &ApplyOptions::default()).unwrap();
    let m = common::model::apply_chain(&[&chain[0], &chain[1]]);
    assert_eq!(fs::read(&t).unwrap(), m.data);
}

/// Re-running a whole chain on a target that is already part-way skips what it holds.
#[test]
fn rerun_of_a_chain_skips_applied_diffs() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(10, 3, 100_000);
    let files: Vec<String> = chain
        .iter()
        .enumerate()
        .map(|(i, d)| write_tmp(dir.path(), &format!("d{i}"), d))
        .collect();
    let t = dir.path().join("img");
    apply_chain(&files[..2], &t, &create()).unwrap();
    let r = apply_chain(&files, &t, &ApplyOptions::default()).unwrap();
    assert_eq!(
        r.diffs.iter().map(|d| d.applied).collect::<Vec<_>>(),
        [false, false, true]
    );
    let refs: Vec<&[u8]> = chain.iter().map(|c| c.as_slice()).collect();
    assert_eq!(
        fs::read(&t).unwrap(),
        common::model::apply_chain(&refs).data
    );
}

/// `--sums` refuses a diff whose bytes no longer match its sidecar.
#[test]
fn apply_with_sums_refuses_damaged_input() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(11, 1, 100_000);
    let d0 = write_tmp(dir.path(), "d0", &chain[0]);
    rbddiff::sums::write_sums_for(Path::new(&d0)).unwrap();
    let mut bad = chain[0].clone();
    let n = bad.len();
    bad[n - 10] ^= 0x40;
    if rbddiff::DiffSlice::parse(&bad)
        .and_then(|d| d.end_offset())
        .is_ok()
    {
        fs::write(&d0, &bad).unwrap();
        let t = dir.path().join("img");
        let out = bin()
            .args(["apply", &d0, "--sums", "--create", "--to", &s(&t)])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
        assert!(!t.exists());
    }
}

/// Merge then apply == apply each: `rbd merge-diff` of neighbouring real diffs, applied,
/// gives the same ground truth as applying them one by one.
#[test]
fn rbd_merged_diffs_apply_to_ground_truth() {
    if !common::ceph::rbd_available() {
        common::skipped_without_rbd();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = chains().into_iter().find(|c| c.image == "img64k").unwrap();
    let t = dir.path().join("img");
    apply_chain(&[s(&c.v1[0].path)], &t, &create()).unwrap();
    for pair in c.v1[1..].chunks(2) {
        let f = if pair.len() == 2 {
            let m = dir
                .path()
                .join(format!("{}+{}", pair[0].stem(), pair[1].stem()));
            let out = common::ceph::rbd_merge_diff(&pair[0].path, &pair[1].path, &m).unwrap();
            assert!(out.status.success());
            m
        } else {
            pair[0].path.clone()
        };
        apply_chain(&[s(&f)], &t, &ApplyOptions::default()).unwrap();
        let last = pair.last().unwrap();
        assert_eq!(sha256_file(&t), last.expected().sha256, "{}", f.display());
    }
}

/// zstd-compressed diffs (written by the stock `zstd` tool) apply like the plain ones; a
/// truncated one fails with exit 2 and leaves the target resumable.
#[test]
fn zstd_compressed_chain_applies() {
    let dir = tempfile::tempdir().unwrap();
    let c = chains().into_iter().find(|c| c.image == "img64k").unwrap();
    let t = dir.path().join("img");
    for (i, d) in c.v1.iter().enumerate() {
        let z = dir.path().join(format!("{i}.zst"));
        let raw = zstd::encode_all(&d.read()[..], 3).unwrap();
        if i == 2 {
            // Truncated first: refused (exit 2); the target is either untouched or left
            // "applying" for the good file to finish.
            let before = sha256_file(&t);
            fs::write(&z, &raw[..raw.len() / 2]).unwrap();
            let out = bin()
                .args(["apply", &s(&z), "--to", &s(&t)])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2));
            assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
            match read_state(&state_path(&t)).unwrap().unwrap() {
                TargetState::Applying { .. } => {}
                TargetState::At { snap, .. } => {
                    assert_eq!(snap.as_deref(), Some("v2"));
                    assert_eq!(sha256_file(&t), before);
                }
            }
        }
        fs::write(&z, &raw).unwrap();
        let o = if i == 0 {
            create()
        } else {
            ApplyOptions::default()
        };
        apply_chain(&[s(&z)], &t, &o).unwrap();
        assert_eq!(sha256_file(&t), d.expected().sha256, "{}", d.rel);
    }
}

// ---------- image streams as input ----------

/// `rbd export --export-format 2` streams: every embedded diff is applied in order, from a
/// file and from stdin, giving the ground truth of the image HEAD; the state then holds
/// the HEAD (no snapshot name) and its size.
#[test]
fn image_stream_applies_every_embedded_diff() {
    let dir = tempfile::tempdir().unwrap();
    let img = common::manifest::export_format2_stream();
    let head = truth("img64k", "head");

    let t = dir.path().join("from-file.raw");
    let out = bin()
        .args(["apply", &s(&img), "--create", "--to", &s(&t), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sha256_file(&t), head.sha256);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let diffs = rep["diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 6);
    assert!(diffs.iter().all(|d| d["applied"] == true));
    assert!(rep["to_snap"].is_null());
    assert_eq!(
        read_state(&state_path(&t)).unwrap().unwrap(),
        TargetState::At {
            snap: None,
            size: Some(head.size)
        }
    );

    let t = dir.path().join("from-stdin.raw");
    let mut child = bin()
        .args(["apply", "-", "--create", "--to", &s(&t)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(&img).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(sha256_file(&t), head.sha256);

    // A target already at v1 skips the stream's full diff and applies the rest.
    let t = dir.path().join("at-v1.raw");
    let full = diff_file("img64k/full_v1.diff");
    apply_chain(&[s(&full.path)], &t, &create()).unwrap();
    let r = apply_chain(&[s(&img)], &t, &ApplyOptions::default()).unwrap();
    let applied: Vec<bool> = r.diffs.iter().map(|d| d.applied).collect();
    assert_eq!(applied, [false, true, true, true, true, true]);
    assert_eq!(sha256_file(&t), head.sha256);

    // The stateless path (`verify --against`) takes image streams too.
    let t = dir.path().join("stateless.raw");
    let file = fs::File::create(&t).unwrap();
    rbddiff::apply::apply_files_to(&file, &[s(&img)]).unwrap();
    assert_eq!(sha256_file(&t), head.sha256);

    // A truncated stream is refused before anything is written: no target, no state.
    let bytes = fs::read(&img).unwrap();
    let cut = dir.path().join("cut.rbdimg");
    fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let t = dir.path().join("cut.raw");
    let out = bin()
        .args(["apply", &s(&cut), "--create", "--to", &s(&t)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut.rbdimg"));
    assert!(!t.exists() && !state_path(&t).exists());
}

// ---------- a target that must not be written ----------

/// Runs `cmd`, killing it after `secs` seconds: (exit code, stderr, seconds taken).
fn run_within(mut cmd: Command, secs: u64) -> (Option<i32>, String, f64) {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err, t0.elapsed().as_secs_f64())
}

/// `apply X --to X` (or to a hard link or symbolic link of X, or with X on stdin) is
/// refused even with `--force`, and so is a state file that is an input or the target:
/// the backup is left intact.
#[test]
fn target_that_is_an_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(21, 2, 200_000);
    let d0 = write_tmp(dir.path(), "d0", &chain[0]);
    let d1 = write_tmp(dir.path(), "d1", &chain[1]);
    let hard = dir.path().join("hard");
    fs::hard_link(&d0, &hard).unwrap();
    let sym = dir.path().join("sym");
    std::os::unix::fs::symlink(&d0, &sym).unwrap();
    let img = s(&dir.path().join("img"));
    let side = rbddiff::sums::write_sums_for(Path::new(&d0)).unwrap();
    let side_bytes = fs::read(&side).unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec![d0.clone(), "--to".into(), s(&side), "--force".into()],
        vec![d0.clone(), "--to".into(), d0.clone()],
        vec![d0.clone(), "--to".into(), d0.clone(), "--force".into()],
        vec![d0.clone(), "--to".into(), d0.clone(), "--create".into()],
        vec![d0.clone(), "--to".into(), s(&hard), "--force".into()],
        vec![d0.clone(), "--to".into(), s(&sym), "--force".into()],
        vec![
            d0.clone(),
            d1.clone(),
            "--to".into(),
            d1.clone(),
            "--force".into(),
        ],
        vec!["-".into(), "--to".into(), s(&hard), "--force".into()],
        // The state file is an input, or the target itself.
        vec![
            d0.clone(),
            "--create".into(),
            "--to".into(),
            img.clone(),
            "--state-file".into(),
            s(&hard),
        ],
        vec![
            d0.clone(),
            "--create".into(),
            "--to".into(),
            img.clone(),
            "--state-file".into(),
            img.clone(),
        ],
    ];
    for args in cases {
        let mut cmd = bin();
        cmd.arg("apply").args(&args);
        cmd.stdin(fs::File::open(&d0).unwrap());
        let (code, err, _) = run_within(cmd, 60);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("is the input") || err.contains("is the target itself"),
            "{args:?}: {err}"
        );
        assert_eq!(fs::read(&d0).unwrap(), chain[0], "{args:?}");
        assert_eq!(fs::read(&d1).unwrap(), chain[1], "{args:?}");
        assert_eq!(fs::read(&side).unwrap(), side_bytes, "{args:?}");
        assert!(!Path::new(&img).exists(), "{args:?}");
        assert!(!state_path(Path::new(&d0)).exists(), "{args:?}");
    }
}

/// An existing file without a state file is not taken as an image (it may be a backup or
/// anything else) unless `--force` says so.
#[test]
fn existing_file_without_state_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(22, 1, 200_000);
    let d0 = write_tmp(dir.path(), "d0", &chain[0]);
    let t = dir.path().join("precious");
    let mine = vec![7u8; 10_000];
    fs::write(&t, &mine).unwrap();
    for extra in [&[][..], &["--create"][..]] {
        let out = bin()
            .args(["apply", &d0, "--to", &s(&t)])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no state file") || err.contains("exists"),
            "{err}"
        );
        assert_eq!(fs::read(&t).unwrap(), mine);
        assert!(!state_path(&t).exists());
    }
    let out = bin()
        .args(["apply", &d0, "--force", "--to", &s(&t)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        fs::read(&t).unwrap(),
        common::model::apply_chain(&[&chain[0]]).data
    );
}

/// A second apply to a target that another holds locked is refused at once (exit 2), and
/// writes nothing.
#[test]
fn locked_target_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(23, 2, 200_000);
    let d0 = write_tmp(dir.path(), "d0", &chain[0]);
    let d1 = write_tmp(dir.path(), "d1", &chain[1]);
    let t = dir.path().join("img");
    apply_chain(&[d0], &t, &create()).unwrap();
    let before = fs::read(&t).unwrap();
    let state_before = fs::read(state_path(&t)).unwrap();
    let holder = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&t)
        .unwrap();
    rustix::fs::flock(
        &holder,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .unwrap();
    let mut cmd = bin();
    cmd.args(["apply", &d1, "--to", &s(&t)]);
    let (code, err, secs) = run_within(cmd, 30);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("locked") && err.contains("img"), "{err}");
    assert!(secs < 10.0, "took {secs} s");
    assert_eq!(fs::read(&t).unwrap(), before);
    assert_eq!(fs::read(state_path(&t)).unwrap(), state_before);
    drop(holder);
    apply_chain(&[d1], &t, &ApplyOptions::default()).unwrap();
}

/// A state file that is a symbolic link (here to /dev/zero) or a FIFO is refused at once,
/// not read without end or waited on.
#[test]
fn state_file_link_or_fifo_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let chain = gen_chain(24, 2, 100_000);
    let d0 = write_tmp(dir.path(), "d0", &chain[0]);
    let d1 = write_tmp(dir.path(), "d1", &chain[1]);
    let t = dir.path().join("img");
    apply_chain(&[d0], &t, &create()).unwrap();
    let before = fs::read(&t).unwrap();
    let sp = state_path(&t);
    for kind in ["symlink", "fifo"] {
        fs::remove_file(&sp).unwrap();
        if kind == "symlink" {
            std::os::unix::fs::symlink("/dev/zero", &sp).unwrap();
        } else {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &sp,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
        }
        let mut cmd = bin();
        cmd.args(["apply", &d1, "--to", &s(&t)]);
        let (code, err, secs) = run_within(cmd, 20);
        assert_eq!(code, Some(2), "{kind}: {err}");
        assert!(err.contains("rbddiff-state"), "{kind}: {err}");
        assert!(secs < 10.0, "{kind}: took {secs} s");
        assert_eq!(fs::read(&t).unwrap(), before);
        assert!(read_state(&sp).is_err());
    }
}

/// A full diff of an image larger than the file system allows for one file: refused before
/// anything is written, with advice, and nothing of the new target is left behind.
#[test]
fn create_too_large_for_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    // 2^63 bytes is past any file size (off_t); 64 TiB is past ext4's limit (not XFS's or
    // tmpfs's: checked below).
    let mut ran = 0;
    for size in [1u64 << 63, 64 << 40] {
        let probe = dir.path().join("probe");
        let f = fs::File::create(&probe).unwrap();
        let refused = f.set_len(size).is_err();
        drop(f);
        fs::remove_file(&probe).unwrap();
        if !refused {
            eprintln!("skipped: this file system allows a file of {size} bytes");
            continue;
        }
        let meta = Metadata {
            to_snap: Some(b"s".to_vec()),
            image_size: Some(size),
            ..Metadata::default()
        };
        let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
        w.write_data(4096, &[1u8; 4096]).unwrap();
        let d = write_tmp(dir.path(), "big", &w.finish().unwrap());
        let t = dir.path().join("img");
        let out = bin()
            .args(["apply", &d, "--create", "--to", &s(&t)])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{size}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("XFS") && err.contains("block device"), "{err}");
        assert!(
            !t.exists() && !state_path(&t).exists(),
            "{size}: left behind"
        );
        ran += 1;
    }
    assert!(ran > 0, "no size was refused by this file system");
}
