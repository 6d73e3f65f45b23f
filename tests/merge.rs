//! `rbddiff merge`: merged chains applied to the in-memory model equal the chain applied diff
//! by diff; real Ceph chains reproduce the ground-truth sha256; `rbd merge-diff` accepts our
//! output and agrees with it; Ceph's merge_diff.sh cases offline; error handling.

mod common;
use common::gen::noise;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::ceph::{rbd_available, rbd_merge_diff};
use common::manifest::{self, DiffFile};
use common::model::Image;
use proptest::prelude::*;
use rbddiff::merge::{merge, MergeInput, MergeOptions};
use rbddiff::{DiffSlice, DiffWriter, Extent, Metadata, Version};

// ---------------------------------------------------------------------------------------------
// helpers

fn merge_bytes(diffs: &[Vec<u8>], opts: &MergeOptions) -> rbddiff::Result<Vec<u8>> {
    let names: Vec<String> = (0..diffs.len()).map(|i| format!("in{i}.diff")).collect();
    let mut inputs: Vec<MergeInput<'_>> = diffs
        .iter()
        .zip(&names)
        .map(|(d, n)| MergeInput::bytes(n, d))
        .collect();
    let mut out = Vec::new();
    merge(&mut inputs, &mut out, opts)?;
    Ok(out)
}

fn merged(diffs: &[Vec<u8>]) -> Vec<u8> {
    merge_bytes(diffs, &MergeOptions::default()).expect("merge")
}

fn apply_all(start: &Image, diffs: &[&[u8]]) -> Image {
    let mut img = start.clone();
    for d in diffs {
        img.apply_bytes(d);
    }
    img
}

/// Records of a diff must be what rbd merge-diff / import-diff accept.
fn assert_well_formed(d: &[u8]) {
    let s = DiffSlice::parse(d).expect("output parses");
    let mut n = 0;
    for r in s.records() {
        r.expect("output record valid");
        n += 1;
    }
    assert!(n >= 1);
}

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_rbddiff")
}

fn run(args: &[&str]) -> Output {
    Command::new(exe())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rbddiff")
}

fn dir_entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// random chains

#[derive(Debug, Clone)]
struct DiffSpec {
    size: u64,
    /// (gap from previous end, length, is write, payload seed)
    recs: Vec<(u64, u64, bool, u64)>,
    v2: bool,
}

#[derive(Debug, Clone)]
struct ChainSpec {
    full_first: bool,
    head_last: bool,
    init_size: usize,
    diffs: Vec<DiffSpec>,
}

fn diff_spec() -> impl Strategy<Value = DiffSpec> {
    (
        prop_oneof![Just(0u64), 1u64..3000],
        proptest::collection::vec(
            (
                prop_oneof![Just(0u64), 0u64..400],
                1u64..600,
                any::<bool>(),
                any::<u64>(),
            ),
            0..8,
        ),
        any::<bool>(),
    )
        .prop_map(|(size, recs, v2)| DiffSpec { size, recs, v2 })
}

fn chain_spec(max: usize) -> impl Strategy<Value = ChainSpec> {
    (
        any::<bool>(),
        any::<bool>(),
        0usize..3000,
        proptest::collection::vec(diff_spec(), 1..max),
    )
        .prop_map(|(full_first, head_last, init_size, diffs)| ChainSpec {
            full_first,
            head_last,
            init_size,
            diffs,
        })
}

fn build_diff(
    k: usize,
    n: usize,
    spec: &DiffSpec,
    full_first: bool,
    head_last: bool,
    v1_only: bool,
) -> Vec<u8> {
    let meta = Metadata {
        from_snap: (!(k == 0 && full_first)).then(|| format!("s{k}").into_bytes()),
        to_snap: (!(k + 1 == n && head_last)).then(|| format!("s{}", k + 1).into_bytes()),
        protected: (spec.v2 && !v1_only).then_some(k % 2 == 0),
        image_size: Some(spec.size),
    };
    let version = if spec.v2 && !v1_only {
        Version::V2
    } else {
        Version::V1
    };
    let mut w = DiffWriter::new(Vec::new(), version, &meta).unwrap();
    let mut pos = 0u64;
    for &(gap, len, write, seed) in &spec.recs {
        let start = pos + gap;
        if start >= spec.size {
            break;
        }
        let end = (start + len).min(spec.size);
        if write {
            w.write_data(start, &noise(seed, (end - start) as usize))
                .unwrap();
        } else {
            w.zero(Extent::new(start, end - start)).unwrap();
        }
        pos = end;
    }
    w.finish().unwrap()
}

fn build_chain(c: &ChainSpec, v1_only: bool) -> Vec<Vec<u8>> {
    let n = c.diffs.len();
    c.diffs
        .iter()
        .enumerate()
        .map(|(k, d)| build_diff(k, n, d, c.full_first, c.head_last, v1_only))
        .collect()
}

fn initial(c: &ChainSpec) -> Image {
    Image {
        data: noise(c.init_size as u64 + 7, c.init_size),
        snap: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Merged chain applied to any starting image == the inputs applied one by one.
    #[test]
    fn merged_chain_equals_chain(c in chain_spec(7), v2_out in any::<bool>()) {
        let diffs = build_chain(&c, false);
        let opts = MergeOptions {
            version: if v2_out { Version::V2 } else { Version::V1 },
            sums: false,
            ..MergeOptions::default()
        };
        let out = merge_bytes(&diffs, &opts).unwrap();
        assert_well_formed(&out);
        let refs: Vec<&[u8]> = diffs.iter().map(|d| d.as_slice()).collect();
        for start in [initial(&c), Image::new()] {
            let want = apply_all(&start, &refs);
            let got = apply_all(&start, &[&out]);
            prop_assert_eq!(got.data.len(), want.data.len());
            prop_assert!(got.data == want.data, "merged image differs");
            prop_assert_eq!(got.snap, want.snap);
        }
        let meta = DiffSlice::parse(&out).unwrap().metadata().clone();
        let first = DiffSlice::parse(&diffs[0]).unwrap().metadata().clone();
        let last = DiffSlice::parse(diffs.last().unwrap()).unwrap().metadata().clone();
        prop_assert_eq!(meta.from_snap, first.from_snap);
        prop_assert_eq!(meta.to_snap, last.to_snap);
        prop_assert_eq!(meta.image_size, last.image_size);
        // Merging is associative: merging a merged prefix with the rest gives the same image.
        if diffs.len() >= 3 {
            let head = merged(&diffs[..2]);
            let mut rest = vec![head];
            rest.extend(diffs[2..].iter().cloned());
            let again = merged(&rest);
            let start = initial(&c);
            prop_assert!(apply_all(&start, &[&again]).data == apply_all(&start, &[&out]).data);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the sweep against the extent-map planner it replaced (byte-identical output)

/// The merge of `diffs` by the sweep, with its inputs in memory, or read as streams when
/// `streams[k]` holds, and by the old planner (the oracle); both must be byte-identical.
fn sweep_and_oracle(
    diffs: &[Vec<u8>],
    streams: &[bool],
    opts: &MergeOptions,
) -> (Vec<u8>, Vec<u8>) {
    let names: Vec<String> = (0..diffs.len()).map(|i| format!("in{i}.diff")).collect();
    let mut inputs: Vec<MergeInput<'_>> = diffs
        .iter()
        .zip(&names)
        .zip(streams.iter().chain(std::iter::repeat(&false)))
        .map(|((d, n), &s)| {
            if s {
                MergeInput::stream(n, Box::new(std::io::Cursor::new(d.clone()))).unwrap()
            } else {
                MergeInput::bytes(n, d)
            }
        })
        .collect();
    let mut got = Vec::new();
    let stats = merge(&mut inputs, &mut got, opts).unwrap();
    let mut plain: Vec<MergeInput<'_>> = diffs
        .iter()
        .zip(&names)
        .map(|(d, n)| MergeInput::bytes(n, d))
        .collect();
    let mut want = Vec::new();
    let oracle = rbddiff::merge::merge_oracle(&mut plain, &mut want, opts).unwrap();
    assert_eq!(stats, oracle, "statistics of the sweep and of the oracle");
    (got, want)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random chains of up to 20 diffs (shrinks, regrowth, zero records, empty diffs), some
    /// inputs read as streams: the sweep writes exactly what the extent-map planner wrote.
    #[test]
    fn sweep_is_byte_identical_to_the_oracle(
        c in chain_spec(21),
        streams in proptest::collection::vec(any::<bool>(), 21),
        v2_out in any::<bool>(),
    ) {
        let diffs = build_chain(&c, false);
        let opts = MergeOptions {
            version: if v2_out { Version::V2 } else { Version::V1 },
            ..MergeOptions::default()
        };
        let (got, want) = sweep_and_oracle(&diffs, &streams, &opts);
        prop_assert!(got == want, "sweep output differs from the oracle's");
    }
}

/// Runs of records joined up to 4 MiB and 1024 pieces, and records larger than that, cut and
/// clipped by later inputs: the sweep (from memory and from streams) matches the oracle.
#[test]
fn sweep_matches_oracle_at_the_coalescing_limits() {
    let mib = 1u64 << 20;
    let size = 24 * mib;
    let diff = |k: usize, recs: &[(u64, u64, bool)]| {
        let meta = Metadata {
            from_snap: (k > 0).then(|| format!("s{k}").into_bytes()),
            to_snap: Some(format!("s{}", k + 1).into_bytes()),
            protected: None,
            image_size: Some(size),
        };
        let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
        for &(s, l, write) in recs {
            if write {
                w.write_data(s, &noise(s ^ k as u64, l as usize)).unwrap();
            } else {
                w.zero(Extent::new(s, l)).unwrap();
            }
        }
        w.finish().unwrap()
    };
    // 3000 adjacent one-byte writes, then adjacent 700 KiB writes, then one 9 MiB write.
    let mut a: Vec<(u64, u64, bool)> = (0..3000).map(|i| (i, 1, true)).collect();
    a.extend((0..12).map(|i| (mib + i * 700 * 1024, 700 * 1024, true)));
    a.push((10 * mib, 9 * mib, true));
    // Later inputs cut those runs and the big record, with writes and zeros.
    let b = vec![
        (1500, 3, true),
        (2 * mib, 5, false),
        (12 * mib, mib, true),
        (15 * mib, 4 * mib + 1, true),
    ];
    let c = vec![
        (0, 1, true),
        (3 * mib + 1, 2 * mib, true),
        (14 * mib, 10, false),
        (20 * mib, 1, true),
    ];
    let diffs = vec![diff(0, &a), diff(1, &b), diff(2, &c)];
    for streams in [
        [false, false, false],
        [true, true, true],
        [true, false, true],
    ] {
        let (got, want) = sweep_and_oracle(&diffs, &streams, &MergeOptions::default());
        assert!(
            got == want,
            "sweep output differs from the oracle's ({streams:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// real Ceph chains

/// The state `d` applies to, built from the img64k v1 chain (all images share their contents).
fn state_before(d: &DiffFile) -> Image {
    if d.apply_to == "empty" {
        return Image::new();
    }
    let chains = manifest::chains();
    let base = chains.iter().find(|c| c.image == "img64k").unwrap();
    let mut img = Image::new();
    for f in &base.v1 {
        img.apply_bytes(&f.read());
        if f.result == d.apply_to {
            break;
        }
    }
    assert_eq!(img.sha256(), manifest::truth(&d.image, &d.apply_to).sha256);
    img
}

#[test]
fn real_chains_every_prefix_reproduces_ground_truth() {
    let mut checked = 0;
    for c in manifest::chains() {
        for chain in [&c.v1, &c.v2, &c.whole_object] {
            if chain.len() < 2 {
                continue;
            }
            let data: Vec<Vec<u8>> = chain.iter().map(|d| d.read()).collect();
            // Every sub-chain [i, j], which includes every prefix.
            for i in 0..chain.len() {
                let start = state_before(&chain[i]);
                for j in i + 1..chain.len() {
                    let out = merged(&data[i..=j]);
                    assert_well_formed(&out);
                    // Byte-identical to the extent-map planner, from memory and from streams.
                    let sub = &data[i..=j];
                    for streams in [vec![false; sub.len()], vec![true; sub.len()]] {
                        let (got, want) = sweep_and_oracle(sub, &streams, &MergeOptions::default());
                        assert!(
                            got == want && got == out,
                            "{}..{}",
                            chain[i].rel,
                            chain[j].rel
                        );
                    }
                    let img = apply_all(&start, &[&out]);
                    let truth = chain[j].expected();
                    assert_eq!(
                        img.data.len() as u64,
                        truth.size,
                        "{}..{}",
                        chain[i].rel,
                        chain[j].rel
                    );
                    assert_eq!(
                        img.sha256(),
                        truth.sha256,
                        "{}..{}",
                        chain[i].rel,
                        chain[j].rel
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 60, "only {checked} sub-chains checked");
}

#[test]
fn real_chain_through_the_cli() {
    let chains = manifest::chains();
    let c = chains.iter().find(|c| c.image == "img64k").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("full_head.diff");
    let mut args: Vec<String> = vec!["merge".into()];
    args.extend(c.v1.iter().map(|d| d.path.display().to_string()));
    args.extend(["-o".into(), out.display().to_string(), "--json".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(&argv);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let bytes = fs::read(&out).unwrap();
    assert_eq!(stats["diff_bytes"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(stats["inputs"].as_u64(), Some(c.v1.len() as u64));
    let input_bytes: u64 = c.v1.iter().map(|d| d.read().len() as u64).sum();
    assert_eq!(stats["input_bytes"].as_u64(), Some(input_bytes));
    assert_eq!(
        stats["bytes_saved"].as_i64(),
        Some(input_bytes as i64 - bytes.len() as i64)
    );
    let img = apply_all(&Image::new(), &[&bytes]);
    assert_eq!(img.sha256(), manifest::truth("img64k", "head").sha256);
    assert_eq!(dir_entries(dir.path()), ["full_head.diff"]);
    // Mixed v1 and v2 inputs, v2 output.
    let out2 = dir.path().join("mixed.diff");
    let r = run(&[
        "merge",
        c.v1[0].path.to_str().unwrap(),
        c.v2[1].path.to_str().unwrap(),
        c.v1[2].path.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
        "--format",
        "v2",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let bytes = fs::read(&out2).unwrap();
    assert!(bytes.starts_with(b"rbd diff v2\n"));
    let img = apply_all(&Image::new(), &[&bytes]);
    assert_eq!(img.sha256(), c.v1[2].expected().sha256);
}

// ---------------------------------------------------------------------------------------------
// against rbd merge-diff

fn rbd_merge(dir: &Path, a: &[u8], b: &[u8], tag: &str) -> (Output, Option<Vec<u8>>) {
    let pa = dir.join(format!("{tag}.a"));
    let pb = dir.join(format!("{tag}.b"));
    let po = dir.join(format!("{tag}.out"));
    fs::write(&pa, a).unwrap();
    fs::write(&pb, b).unwrap();
    let _ = fs::remove_file(&po);
    let r = rbd_merge_diff(&pa, &pb, &po).expect("run rbd");
    let out = r.status.success().then(|| fs::read(&po).unwrap());
    (r, out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Where rbd is installed: our merge of two diffs applies like rbd's own merge, and rbd
    /// merge-diff accepts our output as an input.
    #[test]
    fn agrees_with_rbd_merge_diff(mut c in chain_spec(4)) {
        if !rbd_available() {
            return Ok(());
        }
        c.head_last = false;
        while c.diffs.len() < 3 {
            c.diffs.push(c.diffs[0].clone());
        }
        c.diffs.truncate(3);
        let diffs = build_chain(&c, true);
        let dir = tempfile::tempdir().unwrap();
        let ours = merged(&diffs[..2]);
        let (r, theirs) = rbd_merge(dir.path(), &diffs[0], &diffs[1], "x");
        let theirs = theirs.unwrap_or_else(|| panic!("rbd merge-diff failed: {}", String::from_utf8_lossy(&r.stderr)));
        let start = initial(&c);
        let chain = apply_all(&start, &[&diffs[0], &diffs[1]]);
        prop_assert!(apply_all(&start, &[&theirs]).data == chain.data, "rbd's merge differs from the chain");
        prop_assert!(apply_all(&start, &[&ours]).data == chain.data);
        // rbd reads our output.
        let (r, again) = rbd_merge(dir.path(), &ours, &diffs[2], "y");
        let again = again.unwrap_or_else(|| panic!("rbd merge-diff refused our output: {}", String::from_utf8_lossy(&r.stderr)));
        let chain3 = apply_all(&start, &[&diffs[0], &diffs[1], &diffs[2]]);
        prop_assert!(apply_all(&start, &[&again]).data == chain3.data);
    }
}

// ---------------------------------------------------------------------------------------------
// Ceph's qa/workunits/rbd/merge_diff.sh, offline: a "MiB" of the script is UNIT bytes here.

const UNIT: usize = 1024;
const BLOCK: usize = 256;

/// A source image with snapshots, and an export-diff that compares snapshot contents.
struct Gen {
    data: Vec<u8>,
    snaps: HashMap<String, Vec<u8>>,
    seed: u64,
    diffs: HashMap<String, Vec<u8>>,
}

impl Gen {
    fn new() -> Self {
        Gen {
            data: vec![0; 100 * UNIT],
            snaps: HashMap::new(),
            seed: 1,
            diffs: HashMap::new(),
        }
    }
    fn write(&mut self, a: usize, b: usize) {
        self.seed += 1;
        let bytes = noise(self.seed, b * UNIT);
        self.data[a * UNIT..(a + b) * UNIT].copy_from_slice(&bytes);
    }
    fn resize(&mut self, n: usize) {
        self.data.resize(n * UNIT, 0);
    }
    fn snap(&mut self, name: &str) {
        self.snaps.insert(name.into(), self.data.clone());
    }
    fn state(&self, name: &str) -> &[u8] {
        if name == "head" {
            &self.data
        } else {
            &self.snaps[name]
        }
    }
    /// `export_diff A B` of the script: `null` = full, `head` = HEAD (no `t`).
    fn export_diff(&mut self, from: &str, to: &str) {
        let a: &[u8] = if from == "null" {
            &[]
        } else {
            self.state(from)
        };
        let b = self.state(to);
        let meta = Metadata {
            from_snap: (from != "null").then(|| from.as_bytes().to_vec()),
            to_snap: (to != "head").then(|| to.as_bytes().to_vec()),
            protected: None,
            image_size: Some(b.len() as u64),
        };
        let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
        for off in (0..b.len()).step_by(BLOCK) {
            let end = (off + BLOCK).min(b.len());
            let nb = &b[off..end];
            let changed = (off..end).any(|i| a.get(i).copied().unwrap_or(0) != b[i]);
            if !changed {
                continue;
            }
            if nb.iter().all(|&x| x == 0) {
                w.zero(Extent::new(off as u64, nb.len() as u64)).unwrap();
            } else {
                w.write_data(off as u64, nb).unwrap();
            }
        }
        self.diffs
            .insert(format!("{from}.{to}"), w.finish().unwrap());
    }
    /// `merge_diff A B C`: A.B + B.C -> A.C (with our merge).
    fn merge_diff(&mut self, a: &str, b: &str, c: &str) {
        let x = self.diffs[&format!("{a}.{b}")].clone();
        let y = self.diffs[&format!("{b}.{c}")].clone();
        let out = merged(&[x, y]);
        assert_well_formed(&out);
        self.diffs.insert(format!("{a}.{c}"), out);
    }
}

/// The target image `out` of the script (created with 1 "MiB").
struct Target(Image);

impl Target {
    fn new() -> Self {
        Target(Image {
            data: vec![0; UNIT],
            snap: None,
        })
    }
    /// `check A B`: import A.B into out; out must equal gen@B and have snapshot B.
    fn check(&mut self, g: &Gen, a: &str, b: &str) {
        self.0.apply_bytes(&g.diffs[&format!("{a}.{b}")]);
        assert!(self.0.data == g.state(b), "check {a} {b}: image differs");
        if b != "head" {
            assert_eq!(self.0.snap.as_deref(), Some(b));
        }
    }
}

/// Also merges the whole chain in one call and checks it against the final state.
fn check_n_way(g: &Gen, names: &[&str]) {
    let diffs: Vec<Vec<u8>> = names
        .windows(2)
        .map(|w| g.diffs[&format!("{}.{}", w[0], w[1])].clone())
        .collect();
    let out = merged(&diffs);
    let mut t = Target::new();
    t.0.apply_bytes(&out);
    assert!(t.0.data == g.state(names.last().unwrap()));
}

#[test]
fn qa_cases_1_to_4_header_and_chaining() {
    // 1: merged diff without `t`.
    let mut g = Gen::new();
    g.write(0, 1);
    g.snap("a");
    g.write(1, 1);
    g.export_diff("null", "a");
    g.export_diff("a", "head");
    g.merge_diff("null", "a", "head");
    let m = DiffSlice::parse(&g.diffs["null.head"])
        .unwrap()
        .metadata()
        .clone();
    assert_eq!((m.from_snap, m.to_snap), (None, None));
    Target::new().check(&g, "null", "head");

    // 2 and 3.
    let mut g = Gen::new();
    g.write(0, 1);
    g.snap("a");
    g.write(1, 1);
    g.snap("b");
    g.write(2, 1);
    g.export_diff("null", "a");
    g.export_diff("a", "b");
    g.export_diff("b", "head");
    g.merge_diff("null", "a", "b");
    Target::new().check(&g, "null", "b");
    g.merge_diff("a", "b", "head");
    let m = DiffSlice::parse(&g.diffs["a.head"])
        .unwrap()
        .metadata()
        .clone();
    assert_eq!((m.from_snap.as_deref(), m.to_snap), (Some(&b"a"[..]), None));
    let mut t = Target::new();
    t.check(&g, "null", "a");
    t.check(&g, "a", "head");
    check_n_way(&g, &["null", "a", "b", "head"]);

    // 4: `merge null.a a.b -o - | merge - b.head -o null.head` through the CLI.
    let dir = tempfile::tempdir().unwrap();
    for k in ["null.a", "a.b", "b.head"] {
        fs::write(dir.path().join(k), &g.diffs[k]).unwrap();
    }
    let p = |n: &str| dir.path().join(n).display().to_string();
    let mut first = Command::new(exe())
        .args(["merge", &p("null.a"), &p("a.b"), "-o", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let second = Command::new(exe())
        .args(["merge", "-", &p("b.head"), "-o", &p("null.head")])
        .stdin(first.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(first.wait().unwrap().success());
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    g.diffs
        .insert("null.head".into(), fs::read(p("null.head")).unwrap());
    Target::new().check(&g, "null", "head");
}

/// Cases 5–9 and 12–24: writes before snapshot s1, writes before s2; merge null.s1 + s1.s2.
#[test]
fn qa_cases_5_to_9_and_12_to_24_overlaps() {
    let x = |offs: &[usize], len: usize| offs.iter().map(|&o| (o, len)).collect::<Vec<_>>();
    type Writes = Vec<(usize, usize)>;
    let cases: Vec<(Writes, Writes)> = vec![
        (vec![(4, 2)], vec![(0, 3), (8, 2)]),
        (vec![(0, 3), (2, 5), (8, 2)], vec![(0, 2), (6, 3)]),
        (vec![(0, 4), (12, 6)], vec![(0, 6), (10, 5), (16, 4)]),
        (
            vec![(0, 12), (14, 2), (18, 2)],
            vec![(1, 2), (5, 6), (13, 3), (18, 2)],
        ),
        (
            vec![(2, 4), (10, 12), (27, 6), (36, 4)],
            vec![(0, 24), (28, 4), (36, 4)],
        ),
        (x(&[0, 2, 4, 6], 1), x(&[1, 3, 5], 1)),
        (x(&[1, 3, 5], 1), x(&[0, 2, 4, 6], 1)),
        (x(&[0, 6, 12], 3), x(&[1, 7, 13], 1)),
        (x(&[0, 6, 12], 3), x(&[0, 6, 12], 1)),
        (x(&[0, 6, 12], 3), x(&[2, 8, 14], 1)),
        (x(&[1, 7, 13], 1), x(&[0, 6, 12], 3)),
        (x(&[0, 6, 12], 1), x(&[0, 6, 12], 3)),
        (x(&[2, 8, 14], 1), x(&[0, 6, 12], 3)),
        (x(&[0, 6, 12], 3), x(&[0, 6, 12], 3)),
        (x(&[2, 8, 14], 4), x(&[0, 6, 12], 3)),
        (x(&[0, 6, 12], 4), x(&[0, 6, 12], 3)),
        (x(&[0, 6, 12], 6), x(&[0, 6, 12], 3)),
        (x(&[3, 9, 15], 6), x(&[0, 6, 12], 3)),
    ];
    for (first, second) in cases {
        let mut g = Gen::new();
        for (a, b) in first {
            g.write(a, b);
        }
        g.snap("s1");
        for (a, b) in second {
            g.write(a, b);
        }
        g.snap("s2");
        g.export_diff("null", "s1");
        g.export_diff("s1", "s2");
        g.merge_diff("null", "s1", "s2");
        Target::new().check(&g, "null", "s2");
    }
}

#[test]
fn qa_cases_10_11_resize_chain() {
    let mut g = Gen::new();
    g.write(0, 8);
    g.resize(5);
    g.snap("r1");
    g.resize(20);
    g.write(12, 8);
    g.snap("r2");
    g.resize(8);
    g.write(4, 4);
    g.snap("r3");
    g.export_diff("null", "r1");
    g.export_diff("r1", "r2");
    g.export_diff("r2", "r3");
    g.merge_diff("null", "r1", "r2");
    g.merge_diff("null", "r2", "r3");
    Target::new().check(&g, "null", "r3");
    // 11
    g.resize(10);
    g.snap("r4");
    g.export_diff("r3", "r4");
    g.merge_diff("null", "r3", "r4");
    Target::new().check(&g, "null", "r4");
    check_n_way(&g, &["null", "r1", "r2", "r3", "r4"]);
}

#[test]
fn qa_cases_25_26_shrink_then_regrow() {
    let mut g = Gen::new();
    g.write(0, 8);
    g.snap("s1");
    g.resize(2);
    g.resize(100);
    g.snap("s2");
    g.export_diff("null", "s1");
    g.export_diff("s1", "s2");
    g.merge_diff("null", "s1", "s2");
    Target::new().check(&g, "null", "s2");
    // 26
    g.write(20, 2);
    g.snap("s3");
    g.export_diff("s2", "s3");
    g.merge_diff("s1", "s2", "s3");
    let mut t = Target::new();
    t.check(&g, "null", "s1");
    t.check(&g, "s1", "s3");
    check_n_way(&g, &["null", "s1", "s2", "s3"]);
}

/// A shrink that hides data in the middle of a chain: the regrown part must read as zeros on
/// a target that still holds the old bytes, even though the diffs themselves never say so.
#[test]
fn shrink_in_the_middle_zeroes_regrown_region() {
    let mk = |from: Option<&str>, to: &str, size: u64, w: Option<(u64, Vec<u8>)>| {
        let meta = Metadata {
            from_snap: from.map(|s| s.as_bytes().to_vec()),
            to_snap: Some(to.as_bytes().to_vec()),
            protected: None,
            image_size: Some(size),
        };
        let mut d = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
        if let Some((o, data)) = w {
            d.write_data(o, &data).unwrap();
        }
        d.finish().unwrap()
    };
    let a = mk(Some("s0"), "s1", 4096, Some((1000, vec![7; 2000])));
    let b = mk(Some("s1"), "s2", 1500, None);
    let c = mk(Some("s2"), "s3", 4096, Some((3000, vec![9; 10])));
    let start = Image {
        data: vec![0xAA; 4096],
        snap: None,
    };
    let out = merged(&[a.clone(), b.clone(), c.clone()]);
    let want = apply_all(&start, &[&a, &b, &c]);
    assert!(want.data[1500..3000].iter().all(|&x| x == 0));
    assert!(apply_all(&start, &[&out]).data == want.data);
}

// ---------------------------------------------------------------------------------------------
// errors

fn small_diff(from: Option<&str>, to: Option<&str>, recs: usize) -> Vec<u8> {
    let meta = Metadata {
        from_snap: from.map(|s| s.as_bytes().to_vec()),
        to_snap: to.map(|s| s.as_bytes().to_vec()),
        protected: None,
        image_size: Some(1 << 20),
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    for i in 0..recs as u64 {
        if i % 2 == 0 {
            w.write_data(i * 8192, &noise(i, 4096)).unwrap();
        } else {
            w.zero(Extent::new(i * 8192, 4096)).unwrap();
        }
    }
    w.finish().unwrap()
}

fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> Vec<String> {
    files
        .iter()
        .map(|(n, d)| {
            let p = dir.join(n);
            fs::write(&p, d).unwrap();
            p.display().to_string()
        })
        .collect()
}

/// Runs `rbddiff merge FILES... -o DIR/out.diff`; expects exit 2, no output and no temp file.
fn expect_failure(dir: &Path, files: &[String]) -> String {
    let before = dir_entries(dir);
    let out = dir.join("out.diff");
    let mut args = vec!["merge".to_string()];
    args.extend(files.iter().cloned());
    args.extend(["-o".into(), out.display().to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run(&argv);
    let err = String::from_utf8_lossy(&r.stderr).into_owned();
    assert_eq!(r.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("rbddiff: "), "{err}");
    assert!(!out.exists());
    assert_eq!(dir_entries(dir), before, "leftover files");
    err
}

#[test]
fn broken_chain_names_both_files_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let a = small_diff(None, Some("mon"), 3);
    let b = small_diff(Some("tue"), Some("wed"), 3);
    let f = write_files(dir.path(), &[("first.diff", &a), ("second.diff", &b)]);
    let err = expect_failure(dir.path(), &f);
    for s in [
        "first.diff",
        "second.diff",
        "'mon'",
        "'tue'",
        "the diff from 'mon' to 'tue' is missing",
    ] {
        assert!(err.contains(s), "{s} missing from {err}");
    }
    // The hint never points at a flag that would give a wrong image.
    assert!(!err.contains("force"), "{err}");
    // Inputs out of order (as a shell sorts s10 before s2): the message gives the order.
    let names: Vec<String> = (0..11).map(|k| format!("s{k}")).collect();
    let chain: Vec<(String, Vec<u8>)> = (1..11)
        .map(|k| {
            let from = (k > 1).then(|| names[k - 1].as_str());
            (
                format!("vm@{}.diff", names[k]),
                small_diff(from, Some(&names[k]), 1),
            )
        })
        .collect();
    let mut shell: Vec<&(String, Vec<u8>)> = chain.iter().collect();
    shell.sort_by(|a, b| a.0.cmp(&b.0));
    let files = write_files(
        dir.path(),
        &shell
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect::<Vec<_>>(),
    );
    let err = expect_failure(dir.path(), &files);
    let order: Vec<String> = chain
        .iter()
        .map(|(n, _)| dir.path().join(n).display().to_string())
        .collect();
    assert!(
        err.contains("out of order") && err.contains(&order.join(" ")),
        "{err}"
    );
    assert!(!err.contains("force"), "{err}");
    // Given in that order, they merge.
    let r = run(&[
        &["merge"],
        &order.iter().map(String::as_str).collect::<Vec<_>>()[..],
        &["-o", dir.path().join("all.diff").to_str().unwrap()],
    ]
    .concat());
    assert!(r.status.success(), "{r:?}");
    // --assume-renamed accepts a real rename, with a warning naming it.
    let out = dir.path().join("forced.diff");
    let r = run(&[
        "merge",
        &f[0],
        &f[1],
        "-o",
        out.to_str().unwrap(),
        "--assume-renamed",
        "mon=tue",
    ]);
    assert!(r.status.success(), "{r:?}");
    let warned = String::from_utf8_lossy(&r.stderr);
    assert!(
        warned.contains("warning") && warned.contains("'mon' was declared renamed to 'tue'"),
        "{warned}"
    );
    let img = apply_all(&Image::new(), &[&fs::read(&out).unwrap()]);
    assert!(img.data == apply_all(&Image::new(), &[&a, &b]).data);
    // A full diff after the first input.
    let c = small_diff(None, Some("thu"), 1);
    let f = write_files(dir.path(), &[("third.diff", &c)]);
    let err = expect_failure(
        dir.path(),
        &[
            dir.path().join("second.diff").display().to_string(),
            f[0].clone(),
        ],
    );
    assert!(
        err.contains("full diff") && err.contains("third.diff"),
        "{err}"
    );
    // Existing output without --force.
    let r = run(&[
        "merge",
        &dir.path().join("first.diff").display().to_string(),
        &dir.path().join("second.diff").display().to_string(),
        "-o",
        out.to_str().unwrap(),
        "--assume-renamed",
        "mon=tue",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("exists"),
        "{r:?}"
    );
}

#[test]
fn unordered_and_overlapping_input_records() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_diff(None, Some("a"), 2);
    for (name, offs) in [
        ("unordered.diff", [8192u64, 0]),
        ("overlap.diff", [0u64, 100]),
    ] {
        let mut d = b"rbd diff v1\n".to_vec();
        d.push(b'f');
        d.extend(1u32.to_le_bytes());
        d.push(b'a');
        d.push(b's');
        d.extend((1u64 << 20).to_le_bytes());
        for o in offs {
            d.push(b'w');
            d.extend(o.to_le_bytes());
            d.extend(200u64.to_le_bytes());
            d.extend(noise(o, 200));
        }
        d.push(b'e');
        let f = write_files(dir.path(), &[("good.diff", &good), (name, &d)]);
        let err = expect_failure(dir.path(), &f);
        assert!(
            err.contains(name) && err.contains("out of order or overlapping"),
            "{err}"
        );
        assert!(err.contains("record 3"), "{err}");
    }
}

#[test]
fn truncated_input_at_every_record_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let a = small_diff(None, Some("a"), 2);
    let b = small_diff(Some("a"), Some("b"), 5);
    let s = DiffSlice::parse(&b).unwrap();
    let mut cuts: Vec<usize> = s
        .metadata_records()
        .iter()
        .map(|&(o, _)| o as usize)
        .collect();
    cuts.extend(s.records().map(|r| r.unwrap().0 as usize));
    cuts.push(b.len() - 1);
    // Also inside each record head and payload.
    let mids: Vec<usize> = cuts
        .iter()
        .map(|c| c + 3)
        .filter(|&c| c < b.len())
        .collect();
    cuts.extend(mids);
    let fa = write_files(dir.path(), &[("a.diff", &a)]).remove(0);
    for (i, cut) in cuts.iter().enumerate() {
        let fb = write_files(dir.path(), &[(&format!("b{i}.diff"), &b[..*cut])]).remove(0);
        let err = expect_failure(dir.path(), &[fa.clone(), fb]);
        assert!(err.contains(&format!("b{i}.diff")), "{err}");
        assert!(
            err.contains("truncated")
                || err.contains("missing end record")
                || err.contains("missing image size"),
            "cut at {cut}: {err}"
        );
        // Also as the first input.
        let cut_a = &a[..a.len().min(*cut)];
        if cut_a.len() < a.len() {
            let fa2 = write_files(dir.path(), &[("acut.diff", cut_a)]).remove(0);
            let fb = write_files(dir.path(), &[("bfull.diff", &b)]).remove(0);
            expect_failure(dir.path(), &[fa2, fb]);
        }
    }
}

#[test]
fn unwritable_output_location() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_files(
        dir.path(),
        &[
            ("a.diff", &small_diff(None, Some("a"), 2)),
            ("b.diff", &small_diff(Some("a"), None, 2)),
        ],
    );
    for out in [
        dir.path().join("no/such/dir/out.diff"),
        PathBuf::from("/proc/rbddiff-merge-test.diff"),
    ] {
        let r = run(&["merge", &f[0], &f[1], "-o", out.to_str().unwrap()]);
        assert_eq!(r.status.code(), Some(2));
        assert!(!out.exists());
        assert!(String::from_utf8_lossy(&r.stderr).contains(out.to_str().unwrap()));
    }
    assert_eq!(dir_entries(dir.path()), ["a.diff", "b.diff"]);
}

/// Two chained diffs in `dir` (`a.diff`, `b.diff`) whose merge is about 640 KiB.
fn big_pair(dir: &Path) -> Vec<String> {
    let meta = Metadata {
        from_snap: None,
        to_snap: Some(b"a".to_vec()),
        protected: None,
        image_size: Some(1 << 20),
    };
    let mut big = Vec::new();
    let mut w = DiffWriter::new(&mut big, Version::V1, &meta).unwrap();
    w.write_data(0, &noise(3, 640 << 10)).unwrap();
    w.finish().unwrap();
    write_files(
        dir,
        &[
            ("a.diff", &big),
            ("b.diff", &small_diff(Some("a"), Some("b"), 3)),
        ],
    )
}

#[test]
fn disk_full_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let f = big_pair(dir.path());
    let out = dir.path().join("out.diff");
    // `ulimit -f` counts 512-byte blocks in POSIX sh: 128 blocks = 64 KiB.
    let script = format!(
        "ulimit -f 128 && exec '{}' merge '{}' '{}' -o '{}'",
        exe(),
        f[0],
        f[1],
        out.display()
    );
    let r = Command::new("sh").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("out.diff"), "{err}");
    assert!(!out.exists());
    assert_eq!(dir_entries(dir.path()), ["a.diff", "b.diff"]);
}

/// A full file system (a 256 KiB tmpfs; needs root to mount, skipped with a note otherwise):
/// the output's space is reserved before anything is written, so the merge stops at once
/// with a clear error, and nothing is left behind.
#[test]
fn full_file_system_is_found_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "rbddiff-test"])
        .arg(&small)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            common::skipped(&format!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
            return;
        }
        Err(e) => {
            common::skipped(&format!("no mount: {e}"));
            return;
        }
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&small);

    let f = big_pair(dir.path());
    let out = small.join("out.diff");
    let r = run(&["merge", &f[0], &f[1], "-o", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("out.diff"), "{err}");
    assert!(err.contains("no room for the"), "{err}");
    assert!(dir_entries(&small).is_empty());
    // A merge that fits still works there.
    let fits = write_files(
        dir.path(),
        &[
            ("c.diff", &small_diff(None, Some("a"), 3)),
            ("d.diff", &small_diff(Some("a"), Some("b"), 3)),
        ],
    );
    let r = run(&["merge", &fits[0], &fits[1], "-o", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(dir_entries(&small), ["out.diff"]);
}

#[test]
fn stdin_input_and_stdout_output() {
    let a = small_diff(None, Some("a"), 4);
    let b = small_diff(Some("a"), Some("b"), 5);
    let dir = tempfile::tempdir().unwrap();
    let f = write_files(dir.path(), &[("b.diff", &b)]);
    let mut child = Command::new(exe())
        .args(["merge", "-", &f[0], "-o", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&a).unwrap();
    let r = child.wait_with_output().unwrap();
    assert!(r.status.success());
    assert_eq!(r.stdout, merged(&[a, b]));
    // stdin twice is refused.
    let r = run(&["merge", "-", "-", "-o", "-"]);
    assert_eq!(r.status.code(), Some(2));
}

/// A stdin input is checked as it streams: one truncated after output began fails the merge
/// (exit 2, the error names `-` and the record), and no output file is left.
#[test]
fn a_bad_stdin_input_found_late_leaves_no_output() {
    let mib = 1u64 << 20;
    let meta = |from: Option<&str>, to: &str| Metadata {
        from_snap: from.map(|f| f.as_bytes().to_vec()),
        to_snap: Some(to.as_bytes().to_vec()),
        protected: None,
        image_size: Some(64 * mib),
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta(None, "a")).unwrap();
    w.write_data(0, &noise(1, 8 * mib as usize)).unwrap();
    let a = w.finish().unwrap();
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta(Some("a"), "b")).unwrap();
    for k in 0..6 {
        w.write_data(k * 9 * mib, &noise(k + 2, mib as usize))
            .unwrap();
    }
    let b = w.finish().unwrap();
    let b = &b[..b.len() - mib as usize / 2];
    let dir = tempfile::tempdir().unwrap();
    let f = write_files(dir.path(), &[("a.diff", &a)]);
    let out = dir.path().join("m.diff");
    let mut child = Command::new(exe())
        .args(["merge", &f[0], "-", "-o", out.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b).unwrap();
    let r = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains('-') && err.contains("record"), "{err}");
    assert_eq!(dir_entries(dir.path()), ["a.diff"]);
}

/// The `rbd merge-diff` results committed in testdata/real/*/rbd-merge: our N-way merge of the
/// same span applies to the same image; and rbd merge-diff accepts our merged prefixes.
#[test]
fn real_chains_agree_with_rbd_merge_files() {
    let files = manifest::diff_files();
    let chains = manifest::chains();
    let mut checked = 0;
    for m in files.iter().filter(|d| d.kind == "rbd-merge") {
        let c = chains.iter().find(|c| c.image == m.image).unwrap();
        let i = c.v1.iter().position(|d| d.apply_to == m.apply_to).unwrap();
        let j = c.v1.iter().position(|d| d.result == m.result).unwrap();
        let data: Vec<Vec<u8>> = c.v1[i..=j].iter().map(|d| d.read()).collect();
        let ours = merged(&data);
        let start = state_before(&c.v1[i]);
        let theirs = apply_all(&start, &[&m.read()]);
        let got = apply_all(&start, &[&ours]);
        assert!(got.data == theirs.data, "{}", m.rel);
        assert_eq!(got.sha256(), m.expected().sha256, "{}", m.rel);
        let (om, tm) = (
            DiffSlice::parse(&ours).unwrap().metadata().clone(),
            DiffSlice::parse(&m.read()).unwrap().metadata().clone(),
        );
        assert_eq!(
            (om.from_snap, om.to_snap, om.image_size),
            (tm.from_snap, tm.to_snap, tm.image_size)
        );
        checked += 1;
    }
    assert!(checked >= 10);
    if !rbd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for c in &chains {
        let data: Vec<Vec<u8>> = c.v1.iter().map(|d| d.read()).collect();
        let start = state_before(&c.v1[0]);
        for j in 1..data.len() - 1 {
            let ours = merged(&data[..=j]);
            let (r, out) = rbd_merge(dir.path(), &ours, &data[j + 1], "real");
            let out = out.unwrap_or_else(|| {
                panic!(
                    "rbd refused our merge of {}: {}",
                    c.image,
                    String::from_utf8_lossy(&r.stderr)
                )
            });
            let img = apply_all(&start, &[&out]);
            assert_eq!(
                img.sha256(),
                c.v1[j + 1].expected().sha256,
                "{} 0..={}",
                c.image,
                j + 1
            );
        }
    }
}

/// zstd-compressed inputs and stdin are decoded/spilled and merge like the plain files.
#[test]
fn compressed_and_stdin_inputs() {
    let chains = manifest::chains();
    let c = chains.iter().find(|c| c.image == "img64k").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let zst = dir.path().join("v1_v2.diff.zst");
    fs::write(&zst, zstd::encode_all(&c.v1[1].read()[..], 3).unwrap()).unwrap();
    let out = dir.path().join("out.diff");
    let mut child = Command::new(exe())
        .args([
            "merge",
            c.v1[0].path.to_str().unwrap(),
            zst.to_str().unwrap(),
            "-",
        ])
        .args(["-o", out.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&c.v1[2].read())
        .unwrap();
    let r = child.wait_with_output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let img = apply_all(&Image::new(), &[&fs::read(&out).unwrap()]);
    assert_eq!(img.sha256(), c.v1[2].expected().sha256);
}

/// Warnings found in the inputs (here Ceph 16's `p` length field of the v2 diffs, and a
/// duplicated `s` record) are reported by the merge summary, in JSON and on stderr, with the
/// file, byte offset and record; plain and compressed inputs alike.
#[test]
fn input_warnings_are_reported() {
    let chains = manifest::chains();
    let c = chains.iter().find(|c| c.v2.len() >= 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The chain's second diff with its `s` record duplicated (the later one wins).
    let second = c.v2[1].read();
    let meta = DiffSlice::parse(&second).unwrap();
    let s_at = meta
        .metadata_records()
        .iter()
        .find(|(_, t)| *t == b's')
        .unwrap()
        .0 as usize;
    let s_len = 1 + 8 + 8; // v2: tag, length, size
    let mut dup = second[..s_at + s_len].to_vec();
    dup.extend_from_slice(&second[s_at..]);
    let dup_path = dir.path().join("dup.diff");
    fs::write(&dup_path, &dup).unwrap();
    let first_zst = dir.path().join("first.zst");
    let o = Command::new(exe())
        .arg("compress")
        .arg(&c.v2[0].path)
        .arg("-o")
        .arg(&first_zst)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let expected_p = DiffSlice::parse(&c.v2[0].read()).unwrap().warnings().len();
    let out = dir.path().join("out.diff");
    for json in [true, false] {
        let mut cmd = Command::new(exe());
        cmd.arg("merge")
            .arg(&first_zst)
            .arg(&dup_path)
            .arg("-o")
            .arg(&out)
            .arg("--force");
        if json {
            cmd.arg("--json");
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        if json {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let ws = v["warnings"].as_array().unwrap();
            let first: Vec<_> = ws
                .iter()
                .filter(|w| w["file"] == first_zst.to_str().unwrap())
                .collect();
            assert!(!first.is_empty() && first.len() == expected_p, "{v}");
            assert!(first.iter().all(|w| w["kind"]["kind"] == "length_mismatch"));
            let d: Vec<_> = ws
                .iter()
                .filter(|w| w["file"] == dup_path.to_str().unwrap())
                .filter(|w| w["kind"]["kind"] == "duplicate_metadata")
                .collect();
            assert_eq!(d.len(), 1, "{v}");
            assert_eq!(d[0]["offset"], (s_at + s_len) as u64);
            assert!(err.is_empty(), "{err}");
        } else {
            assert!(err.contains("rbddiff: warning: "), "{err}");
            assert!(err.contains("duplicate 's' record"), "{err}");
            // Ceph 16's 'p' length field: one note, not a warning per record.
            assert!(!err.contains("first.zst: byte"), "{err}");
            assert_eq!(
                err.matches("Ceph 16's 8-byte 'p' length").count(),
                1,
                "{err}"
            );
        }
    }
}

/// Merging files reads them with `pread` (record heads and short payload pieces through
/// small buffers), so no page of an input is mapped: the peak RSS of a merge of two diffs of
/// 1.6 M small records (40 MB each) stays a small part of their size. When the heads were
/// walked through a mapping, the peak RSS was the size of the inputs.
#[test]
fn merge_of_record_dense_files_maps_no_input_page() {
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        common::skipped("no /usr/bin/time to measure the peak RSS");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = 1_600_000u64;
    let mut paths = Vec::new();
    for k in 0..2u64 {
        let meta = Metadata {
            from_snap: (k > 0).then(|| b"a".to_vec()),
            to_snap: Some(if k == 0 { b"a".to_vec() } else { b"b".to_vec() }),
            protected: None,
            image_size: Some(n * 64 + 64),
        };
        let p = dir.path().join(format!("d{k}.diff"));
        let f = std::io::BufWriter::new(fs::File::create(&p).unwrap());
        let mut w = DiffWriter::new(f, Version::V1, &meta).unwrap();
        for i in 0..n {
            w.write_data(i * 64 + k * 4, &(i ^ k).to_le_bytes())
                .unwrap();
        }
        w.finish().unwrap().flush().unwrap();
        paths.push(p);
    }
    let (out, rss) = (dir.path().join("out.diff"), dir.path().join("rss"));
    let r = Command::new(time)
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(exe())
        .args(["merge", "-q", "--no-progress"])
        .args(&paths)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = fs::read_to_string(&rss).unwrap();
    let kib: u64 = text.trim().lines().last().unwrap().parse().unwrap();
    let input: u64 = paths.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert!(
        kib * 1024 < input / 4,
        "peak RSS {kib} KiB for {input} bytes of input"
    );
    // Each record of the second input clips one of the first, the two pieces joined.
    let merged = fs::read(&out).unwrap();
    let d = DiffSlice::parse(&merged).unwrap();
    let exts: Vec<Extent> = d.records().filter_map(|r| r.unwrap().1.extent()).collect();
    assert_eq!(exts.len() as u64, n);
    assert!(exts
        .iter()
        .enumerate()
        .all(|(i, e)| *e == Extent::new(i as u64 * 64, 12)));
}
