//! `rbddiff create`: create(base, new) applied to base == new (model and `apply`), holes are
//! not read, real corpus states round-trip, and real `rbd merge-diff` accepts the output.

mod common;
use common::gen::path_str as s;
use common::gen::write_sparse;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;

use common::ceph::{rbd_available, rbd_merge_diff};
use common::manifest::{chains, truth};
use common::model::Image;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rbddiff::apply::{apply_chain, ApplyOptions};
use rbddiff::create::{create_diff, CreateOptions};
use rbddiff::DiffSlice;

/// A random image: runs of random data, zeros and copies of `like` (so incrementals have
/// unchanged regions).
fn gen_image(rng: &mut impl Rng, like: &[u8], max: usize) -> Vec<u8> {
    let len = rng.gen_range(0..=max);
    let mut v = vec![0u8; len];
    let mut pos = 0;
    while pos < len {
        let n = rng.gen_range(1..=(len - pos).min(40_000));
        match rng.gen_range(0..4) {
            0 => rng.fill(&mut v[pos..pos + n]),
            1 => {}
            2 => v[pos..pos + n].fill(rng.gen()),
            _ => {
                for (i, b) in v.iter_mut().enumerate().skip(pos).take(n) {
                    *b = like.get(i).copied().unwrap_or(0);
                }
            }
        }
        pos += n;
    }
    v
}

fn opts(base: Option<PathBuf>, block: u64, max_record: u64) -> CreateOptions {
    CreateOptions {
        to_snap: Some("new".into()),
        from_snap: base.as_ref().map(|_| "old".to_string()),
        base,
        block_size: block,
        max_record,
        force: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// create(base, new) applied to base == new, through the model and through `apply`;
    /// the full diff of new applied to nothing == new.
    #[test]
    fn create_then_apply_round_trips(seed in any::<u64>(), bexp in 9u32..15, rec in 1u64..6) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let block = 1u64 << bexp;
        let max_record = block * rec;
        let old = gen_image(&mut rng, &[], 200_000);
        let new = gen_image(&mut rng, &old, 200_000);
        let dir = tempfile::tempdir().unwrap();
        let (po, pn) = (dir.path().join("old"), dir.path().join("new"));
        write_sparse(&po, &old);
        write_sparse(&pn, &new);

        let full = dir.path().join("full.diff");
        create_diff(&pn, &s(&full), &opts(None, block, max_record)).unwrap();
        let fb = fs::read(&full).unwrap();
        let mut m = Image::new();
        m.apply_bytes(&fb);
        prop_assert_eq!(&m.data, &new);

        let inc = dir.path().join("inc.diff");
        create_diff(&pn, &s(&inc), &opts(Some(po.clone()), block, max_record)).unwrap();
        let ib = fs::read(&inc).unwrap();
        let d = DiffSlice::parse(&ib).unwrap();
        prop_assert_eq!(d.metadata().from_name(), "old");
        prop_assert_eq!(d.metadata().image_size, Some(new.len() as u64));
        for r in d.records() {
            if let rbddiff::Record::Write { data, .. } = r.unwrap().1 {
                prop_assert!(data.len() as u64 <= max_record);
            }
        }
        let mut m = Image { data: old.clone(), snap: Some("old".into()) };
        m.apply_bytes(&ib);
        prop_assert_eq!(&m.data, &new);

        // Through apply: full onto a new file, or base copy + incremental.
        let t = dir.path().join("t");
        fs::copy(&po, &t).unwrap();
        apply_chain(&[s(&inc)], &t, &ApplyOptions { force: true, ..ApplyOptions::default() }).unwrap();
        prop_assert_eq!(fs::read(&t).unwrap(), new.clone());
        let t2 = dir.path().join("t2");
        apply_chain(&[s(&full)], &t2, &ApplyOptions { create: true, ..ApplyOptions::default() }).unwrap();
        prop_assert_eq!(fs::read(&t2).unwrap(), new);
    }
}

/// Holes and zero blocks cost nothing: a 1 GiB sparse image with two data blocks gives a tiny
/// diff, and creating it does not read the holes.
#[test]
fn holes_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
    f.write_all_at(&[0u8; 8192], 1 << 25).unwrap(); // allocated zeros
    f.write_all_at(&[9u8; 10], (1 << 30) - 10).unwrap();
    drop(f);
    let out = dir.path().join("d");
    let r = create_diff(&p, &s(&out), &opts(None, 4096, 4 << 20)).unwrap();
    assert_eq!(r.writes, 2);
    assert_eq!(r.write_bytes, 8192);
    assert!(fs::metadata(&out).unwrap().len() < 9000);
    let t = dir.path().join("t");
    apply_chain(
        &[s(&out)],
        &t,
        &ApplyOptions {
            create: true,
            ..ApplyOptions::default()
        },
    )
    .unwrap();
    let (a, b) = (fs::read(&p).unwrap(), fs::read(&t).unwrap());
    assert!(a == b);
}

/// Raw images of the real chain (built by the model, checked against the manifest sha256):
/// create(v_k, v_k+1) applied onto v_k gives the ground truth of v_k+1.
#[test]
fn real_states_round_trip_to_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let c = chains().into_iter().find(|c| c.image == "img64k").unwrap();
    let mut img = Image::new();
    let mut prev: Option<(PathBuf, String)> = None;
    for d in &c.v1 {
        img.apply_bytes(&d.read());
        let want = truth("img64k", &d.result);
        assert_eq!(img.sha256(), want.sha256);
        let raw = dir.path().join(&d.result);
        write_sparse(&raw, &img.data);
        let snap = d.to.clone().unwrap_or_else(|| "head".into());
        let out = dir.path().join(format!("{}.diff", d.result));
        let mut o = opts(prev.as_ref().map(|p| p.0.clone()), 4096, 4 << 20);
        o.to_snap = Some(snap.clone());
        o.from_snap = prev.as_ref().map(|p| p.1.clone());
        create_diff(&raw, &s(&out), &o).unwrap();
        let t = dir.path().join("target");
        let ao = ApplyOptions {
            create: prev.is_none(),
            ..ApplyOptions::default()
        };
        apply_chain(&[s(&out)], &t, &ao).unwrap();
        assert_eq!(common::manifest::sha256_file(&t), want.sha256, "{}", d.rel);
        prev = Some((raw, snap));
    }
}

/// Real `rbd merge-diff` accepts our output: merge(full, incremental) and merge(full, empty
/// incremental) apply to the expected images.
#[test]
fn rbd_merge_diff_accepts_created_diffs() {
    if !rbd_available() {
        common::skipped_without_rbd();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let old = gen_image(&mut rng, &[], 3 << 20);
    let new = gen_image(&mut rng, &old, 3 << 20);
    let (po, pn) = (dir.path().join("old"), dir.path().join("new"));
    write_sparse(&po, &old);
    write_sparse(&pn, &new);
    let full = dir.path().join("full.diff");
    let mut o = opts(None, 4096, 4 << 20);
    o.to_snap = Some("old".into());
    create_diff(&po, &s(&full), &o).unwrap();
    let inc = dir.path().join("inc.diff");
    create_diff(&pn, &s(&inc), &opts(Some(po.clone()), 4096, 4 << 20)).unwrap();
    let empty = dir.path().join("empty.diff");
    let mut o = opts(Some(po.clone()), 4096, 4 << 20);
    o.to_snap = Some("same".into());
    create_diff(&po, &s(&empty), &o).unwrap();

    for (second, want) in [(&inc, &new), (&empty, &old)] {
        let merged = dir.path().join(format!(
            "m-{}",
            second.file_name().unwrap().to_string_lossy()
        ));
        let out = rbd_merge_diff(&full, second, &merged).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut m = Image::new();
        m.apply_bytes(&fs::read(&merged).unwrap());
        assert!(&m.data == want, "merge with {}", second.display());
    }
    // And the CLI accepts the same files.
    let out = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(["verify", "--full", &s(&full), &s(&inc)])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn bad_options_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img");
    write_sparse(&p, &[1u8; 10000]);
    let bin = env!("CARGO_BIN_EXE_rbddiff");
    for args in [
        vec!["--block-size", "3000"],
        vec!["--block-size", "0"],
        vec!["--base", "/nonexistent", "--from-snap", "a"],
    ] {
        let out = Command::new(bin)
            .args(["create", "--from", &s(&p), "-o", &s(&dir.path().join("o"))])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!dir.path().join("o").exists());
    }
    // An existing output is not replaced without --force.
    fs::write(dir.path().join("o"), b"keep").unwrap();
    let out = Command::new(bin)
        .args(["create", "--from", &s(&p), "-o", &s(&dir.path().join("o"))])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(fs::read(dir.path().join("o")).unwrap(), b"keep");
}
