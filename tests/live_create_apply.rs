//! Live: diffs built by `rbddiff create` are accepted by real `rbd import-diff`, and the
//! image Ceph exports equals both the source raw image and what `rbddiff apply` produces.
//! Reported as ignored when no Ceph daemons are installed (see tests/common/live.rs).

mod common;
use common::gen::path_str as s;
use common::gen::write_sparse;

use std::fs;

use common::ceph::Cluster;
use common::manifest::{sha256_file, sha256_hex};
use rand::{Rng, SeedableRng};
use rbddiff::apply::{apply_chain, ApplyOptions};
use rbddiff::create::{create_diff, CreateOptions};

/// Three states with data, zeroed regions, a grow and a shrink.
fn states() -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut a = vec![0u8; 6 << 20];
    for _ in 0..40 {
        let at = rng.gen_range(0..a.len() - 70_000);
        let n = rng.gen_range(1..70_000);
        rng.fill(&mut a[at..at + n]);
    }
    let mut b = a.clone();
    b.resize(9 << 20, 0);
    for _ in 0..20 {
        let at = rng.gen_range(0..b.len() - 300_000);
        let n = rng.gen_range(1..300_000);
        if rng.gen_bool(0.5) {
            b[at..at + n].fill(0);
        } else {
            rng.fill(&mut b[at..at + n]);
        }
    }
    let mut c = b.clone();
    c.truncate((5 << 20) + 12_345 * 512);
    c[100..5000].fill(0);
    c[(3 << 20)..(3 << 20) + 4096].fill(0xee);
    vec![a, b, c]
}

fn main() {
    common::live::main(&[
        (
            "created_diffs_import_into_ceph",
            created_diffs_import_into_ceph,
        ),
        (
            "exploded_image_stream_imports_into_ceph",
            exploded_image_stream_imports_into_ceph,
        ),
    ])
}

/// `rbddiff explode` of a real `rbd export --export-format 2` stream: `rbd import-diff` of
/// the files in name order gives, at every snapshot and at the HEAD, the image that
/// `rbd import --export-format 2` of the stream gives.
fn exploded_image_stream_imports_into_ceph(cluster: std::sync::Arc<Cluster>) {
    let stream = format!(
        "{}/testdata/real/img64k/export-format-2.rbdimg",
        env!("CARGO_MANIFEST_DIR")
    );
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("chain");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(["explode", &stream, "-o", &s(&chain), "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (reference, out) = cluster.import_export_format2(std::path::Path::new(&stream), "ref");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = cluster.create_image("exploded", 1);
    let mut files: Vec<_> = fs::read_dir(&chain)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        let out = cluster.import_diff(f, &image);
        assert!(
            out.status.success(),
            "rbd import-diff {} failed: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let snaps = cluster.snapshots(&reference);
    assert!(snaps.len() >= 2, "{snaps:?}");
    assert_eq!(cluster.snapshots(&image), snaps);
    for snap in &snaps {
        assert_eq!(
            cluster.export_sha256(&format!("{image}@{snap}")),
            cluster.export_sha256(&format!("{reference}@{snap}")),
            "snapshot {snap}"
        );
    }
    assert_eq!(
        cluster.export_sha256(&image),
        cluster.export_sha256(&reference),
        "HEAD"
    );
    cluster.remove_image(&image);
    cluster.remove_image(&reference);
}

fn created_diffs_import_into_ceph(cluster: std::sync::Arc<Cluster>) {
    let dir = tempfile::tempdir().unwrap();
    let image = cluster.create_image("created", 1);
    let target = dir.path().join("target.img");
    let mut prev: Option<(std::path::PathBuf, String)> = None;
    for (i, data) in states().iter().enumerate() {
        let raw = dir.path().join(format!("raw{i}"));
        write_sparse(&raw, data);
        let snap = format!("s{i}");
        let diff = dir.path().join(format!("d{i}.diff"));
        let opts = CreateOptions {
            to_snap: Some(snap.clone()),
            base: prev.as_ref().map(|p| p.0.clone()),
            from_snap: prev.as_ref().map(|p| p.1.clone()),
            ..CreateOptions::default()
        };
        create_diff(&raw, &s(&diff), &opts).unwrap();
        let out = cluster.import_diff(&diff, &image);
        assert!(
            out.status.success(),
            "rbd import-diff of created diff {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = sha256_hex(data);
        assert_eq!(
            cluster.export_sha256(&format!("{image}@{snap}")),
            want,
            "state {i}"
        );
        let ao = ApplyOptions {
            create: i == 0,
            ..ApplyOptions::default()
        };
        apply_chain(&[s(&diff)], &target, &ao).unwrap();
        assert_eq!(sha256_file(&target), want, "apply of state {i}");
        prev = Some((raw, snap));
    }
    assert_eq!(cluster.snapshots(&image), ["s0", "s1", "s2"]);
    let _ = fs::remove_dir_all(dir.path());
}
