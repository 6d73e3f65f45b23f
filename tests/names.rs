//! Image and snapshot names that are not good file names: one escaping, used both when a
//! file is named and when it is discovered, and long names shortened with a hash suffix.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::gen::{noise, path_str as s, restored_sha256, write_sparse, Rng};
use common::manifest::sha256_file;
use common::prune_last as prune;
use rbddiff::create::{create_diff, CreateOptions};
use rbddiff::workflow::{discover_chain, file_name, images_in};

/// Writes a chain of `snaps.len()` diffs of image `image` into `dir` (named as `backup` and
/// `prune` name them, with sidecars) and returns the sha256 of the last image state.
fn chain(dir: &Path, work: &Path, image: &str, snaps: &[&str]) -> String {
    let mut rng = Rng::new(11);
    let mut cur = vec![0u8; 1 << 20];
    let mut prev: Option<PathBuf> = None;
    for (k, snap) in snaps.iter().enumerate() {
        for _ in 0..6 {
            let at = rng.below(cur.len() as u64 - 70_000) as usize;
            let n = 1 + rng.below(65_536) as usize;
            cur[at..at + n].copy_from_slice(&noise(rng.next(), n));
        }
        let raw = work.join(format!("raw{k}"));
        write_sparse(&raw, &cur);
        let from = k.checked_sub(1).map(|j| snaps[j]);
        let path = dir.join(file_name(image, from, snap, false));
        let opts = CreateOptions {
            to_snap: Some(snap.to_string()),
            base: prev.clone(),
            from_snap: from.map(String::from),
            ..CreateOptions::default()
        };
        create_diff(&raw, &s(&path), &opts).unwrap();
        rbddiff::sums::write_sums_for(&path).unwrap();
        prev = Some(raw);
    }
    sha256_file(prev.as_ref().unwrap())
}

/// An image name with `%` (and others that need escaping) finds its own files: discovery,
/// the list of images and prune all see the chain.
#[test]
fn escaped_image_names_are_found_again() {
    for image in ["vm%41", "100%", ".dot", "tab\tname"] {
        let t = tempfile::tempdir().unwrap();
        let (dir, work) = (t.path().join("b"), t.path().join("w"));
        fs::create_dir(&dir).unwrap();
        fs::create_dir(&work).unwrap();
        let want = chain(&dir, &work, image, &["s0", "s1", "s2"]);
        assert_eq!(discover_chain(&dir, image).unwrap().len(), 3, "{image}");
        assert_eq!(
            images_in(&dir).unwrap().into_iter().collect::<Vec<_>>(),
            [image]
        );
        let r = prune(&dir, image, 1, false, &mut |_, _| {}).unwrap();
        assert_eq!(r.merged.len(), 3, "{image}: {r:?}");
        assert_eq!(discover_chain(&dir, image).unwrap().len(), 1);
        assert_eq!(restored_sha256(&dir, image, &work), want, "{image}");
        // Another image whose name is the unescaped form is not mixed in.
        assert!(discover_chain(&dir, "vmA").unwrap().is_empty());
    }
}

/// Snapshot names of 300 bytes, or holding a newline or NUL, become file names of one line,
/// within 255 bytes (with the longest image name `backup` takes, so that the temporary files
/// beside them fit too); prune works on them, run after run.
#[test]
fn long_and_control_snapshot_names_prune_run_after_run() {
    let image = "i".repeat(rbddiff::workflow::MAX_IMAGE_NAME);
    let image = image.as_str();
    let t = tempfile::tempdir().unwrap();
    let (dir, work) = (t.path().join("b"), t.path().join("w"));
    fs::create_dir(&dir).unwrap();
    fs::create_dir(&work).unwrap();
    let long_a = "a".repeat(300);
    let long_b = format!("{}b", "a".repeat(299));
    let long_c = format!("{}c", "a".repeat(299));
    let snaps = [
        long_a.as_str(),
        long_b.as_str(),
        "new\nline",
        "nul\0byte",
        long_c.as_str(),
    ];
    let want = chain(&dir, &work, image, &snaps);
    for e in fs::read_dir(&dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(n.len() <= 255 && !n.contains(['\n', '\0']), "{n:?}");
    }
    let found = discover_chain(&dir, image).unwrap();
    let ends: Vec<Option<String>> = found.iter().map(|f| f.to.clone()).collect();
    assert_eq!(
        ends,
        snaps
            .iter()
            .map(|x| Some(x.to_string()))
            .collect::<Vec<_>>()
    );
    for keep in [4, 3, 1] {
        let r = prune(&dir, image, keep, false, &mut |_, _| {}).unwrap();
        assert!(r.output.is_some(), "keep {keep}: {r:#?}");
        assert_eq!(discover_chain(&dir, image).unwrap().len(), keep, "{r:#?}");
    }
    assert_eq!(restored_sha256(&dir, image, &work), want);
}
