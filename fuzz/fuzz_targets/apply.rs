//! `apply` and `create` against an in-memory image model. The first byte chooses the mode:
//! 0. a chain of up to three diffs of arbitrary writes, zeros and resizes (those
//!    `DiffWriter` takes) applied to a new file equals the model image, and the state file says
//!    the chain's end snapshot;
//! 1. an arbitrary state file beside an existing target: reading it and applying a diff to
//!    the target may fail, never panic;
//! 2. `create` of an arbitrary image (optionally against an arbitrary base) applied to the
//!    base gives the image back.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rbddiff::apply::{apply_chain, read_state, state_path, ApplyOptions, TargetState};
use rbddiff::create::{create_diff, CreateOptions};
use rbddiff::{DiffWriter, Extent, Metadata, Version};

const MAX_IMAGE: u64 = 256 << 10;

fn scratch() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| std::env::temp_dir().join(format!("rbddiff-fuzz-apply-{}", std::process::id())))
}

#[derive(Arbitrary, Debug)]
enum Op {
    Write { at: u32, len: u16, byte: u8 },
    Zero { at: u32, len: u32 },
}

#[derive(Arbitrary, Debug)]
struct Diff {
    v2: bool,
    size: u32,
    ops: Vec<Op>,
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn fresh() -> PathBuf {
    let d = scratch();
    let _ = std::fs::remove_dir_all(d);
    std::fs::create_dir_all(d).unwrap();
    d.clone()
}

/// Writes `diffs` as a chain s0 → s1 → …, applying them to `model` as it goes.
fn write_chain(dir: &Path, diffs: &[Diff], model: &mut Vec<u8>) -> Vec<String> {
    let mut files = Vec::new();
    for (k, d) in diffs.iter().enumerate() {
        let size = u64::from(d.size) % MAX_IMAGE;
        let meta = Metadata {
            from_snap: (k > 0).then(|| format!("s{}", k - 1).into_bytes()),
            to_snap: Some(format!("s{k}").into_bytes()),
            protected: d.v2.then_some(false),
            image_size: Some(size),
        };
        let v = if d.v2 { Version::V2 } else { Version::V1 };
        let mut w = DiffWriter::new(Vec::new(), v, &meta).unwrap();
        model.resize(size as usize, 0);
        for op in &d.ops {
            match *op {
                Op::Write { at, len, byte } => {
                    let at = u64::from(at) % size.max(1);
                    let len = u64::from(len).min(size - at.min(size));
                    if len == 0 {
                        continue;
                    }
                    let data = vec![byte; len as usize];
                    // The writer refuses records out of order or overlapping.
                    if w.write_data(at, &data).is_ok() {
                        model[at as usize..(at + len) as usize].copy_from_slice(&data);
                    }
                }
                Op::Zero { at, len } => {
                    let at = u64::from(at) % size.max(1);
                    let len = u64::from(len).min(size - at.min(size));
                    if len == 0 {
                        continue;
                    }
                    if w.zero(Extent::new(at, len)).is_ok() {
                        model[at as usize..(at + len) as usize].fill(0);
                    }
                }
            }
        }
        let p = dir.join(format!("d{k}.diff"));
        std::fs::write(&p, w.finish().unwrap()).unwrap();
        files.push(s(&p));
    }
    files
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    let dir = fresh();
    let target = dir.join("img");
    let create = ApplyOptions {
        create: true,
        ..ApplyOptions::default()
    };
    match mode % 3 {
        0 => {
            let Ok(diffs) = Vec::<Diff>::arbitrary(&mut u) else {
                return;
            };
            let diffs = &diffs[..diffs.len().min(3)];
            if diffs.is_empty() {
                return;
            }
            let mut model = Vec::new();
            let files = write_chain(&dir, diffs, &mut model);
            apply_chain(&files, &target, &create).expect("a valid chain applies");
            assert!(std::fs::read(&target).unwrap() == model, "image differs from the model");
            let st = read_state(&state_path(&target)).unwrap();
            assert!(
                matches!(&st, Some(TargetState::At { snap: Some(s), .. }) if *s == format!("s{}", diffs.len() - 1)),
                "{st:?}"
            );
        }
        1 => {
            let Ok(d) = Diff::arbitrary(&mut u) else {
                return;
            };
            let mut model = Vec::new();
            let files = write_chain(&dir, &[d], &mut model);
            std::fs::write(&target, b"").unwrap();
            std::fs::write(state_path(&target), u.take_rest()).unwrap();
            let _ = read_state(&state_path(&target));
            let _ = apply_chain(&files, &target, &ApplyOptions::default());
        }
        _ => {
            let (Ok(new), Ok(base)) = (Vec::<u8>::arbitrary(&mut u), Option::<Vec<u8>>::arbitrary(&mut u)) else {
                return;
            };
            // Sparse images: runs of the bytes given, with zero gaps.
            let spread = |b: &[u8]| -> Vec<u8> { b.iter().flat_map(|&x| vec![x; 97]).collect() };
            let (new, base) = (spread(&new), base.map(|b| spread(&b)));
            let raw = dir.join("new.raw");
            std::fs::write(&raw, &new).unwrap();
            let mut files = Vec::new();
            let mut opts = CreateOptions {
                to_snap: Some("s1".into()),
                block_size: 512,
                ..CreateOptions::default()
            };
            if let Some(b) = &base {
                let braw = dir.join("base.raw");
                std::fs::write(&braw, b).unwrap();
                let full = dir.join("base.diff");
                let bo = CreateOptions {
                    to_snap: Some("s0".into()),
                    block_size: 512,
                    ..CreateOptions::default()
                };
                create_diff(&braw, &s(&full), &bo).expect("create of the base");
                files.push(s(&full));
                opts.base = Some(braw);
                opts.from_snap = Some("s0".into());
            }
            let d = dir.join("new.diff");
            create_diff(&raw, &s(&d), &opts).expect("create");
            files.push(s(&d));
            apply_chain(&files, &target, &create).expect("created diffs apply");
            assert!(std::fs::read(&target).unwrap() == new, "create + apply is not the image");
        }
    }
});
