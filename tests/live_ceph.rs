//! Live tests against a real, throw-away Ceph cluster (tests/harness/).
//!
//! Everything runs inside ONE `#[test]` so that the cluster is started once
//! and stopped before this test binary exits. Without ceph-mon/ceph-osd the
//! test prints a note and passes, unless `RBDDIFF_REQUIRE_CEPH=1` (CI).
//!
//! Later suites (diffs written by our own merge / apply / convert code,
//! imported into the cluster and compared with the ground truth) add their
//! cases to `live_ceph_suite` below.

mod common;

use common::ceph::{rbd_merge_diff, Cluster};
use common::manifest::{self, DiffFile};
use std::time::Instant;

#[test]
fn live_ceph_suite() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let t0 = Instant::now();

    for chains in manifest::chains() {
        if chains.image == "img4m" {
            continue; // no full_v1 here: its chain cannot start from an empty image
        }
        import_chain(&cluster, &chains.image, &chains.v1);
        if !chains.whole_object.is_empty() {
            import_chain(&cluster, &chains.image, &chains.whole_object);
        }
    }
    for image in ["img64k", "imgstriped"] {
        rbd_merge_then_import(&cluster, image);
        import_skip_and_merged_diffs(&cluster, image);
    }
    import_export_format2_stream(&cluster);

    // Later suites: import the output of our own merge/apply/convert code
    // here, e.g. import_chain(&cluster, "img64k", &our_merged_files).

    eprintln!("live ceph suite: {:.1} s", t0.elapsed().as_secs_f64());
}

/// `rbd export` spec for the state after `d`: `image@to`, or the image
/// itself for a diff to HEAD.
fn result_spec(image: &str, d: &DiffFile) -> String {
    match &d.to {
        Some(to) => format!("{image}@{to}"),
        None => image.to_string(),
    }
}

fn import_ok(cluster: &Cluster, d: &DiffFile, image: &str) {
    let out = cluster.import_diff(&d.path, image);
    assert!(
        out.status.success(),
        "rbd import-diff {} into {image} failed ({}): {}",
        d.rel,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Imports `chain` (starting from an empty image) into a fresh 1-byte image
/// and checks the exported image against the ground truth after each step.
fn import_chain(cluster: &Cluster, image_name: &str, chain: &[DiffFile]) {
    assert_eq!(
        chain.first().map(|d| d.apply_to.as_str()),
        Some("empty"),
        "{image_name}: chain must start empty"
    );
    let img = cluster.create_image(&format!("chain-{image_name}"), 1);
    for d in chain {
        import_ok(cluster, d, &img);
        let want = d.expected();
        let got = cluster.export_sha256(&result_spec(&img, d));
        assert_eq!(
            got, want.sha256,
            "{}: image after import-diff != raw@{}",
            d.rel, d.result
        );
    }
    cluster.remove_image(&img);
}

/// `rbd merge-diff` (offline) of two consecutive real diffs, then import of
/// the merged diff on top of the first one's base state.
fn rbd_merge_then_import(cluster: &Cluster, image: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let a = manifest::diff_file(&format!("{image}/v1_v2.diff"));
    let b = manifest::diff_file(&format!("{image}/v2_v3.diff"));
    let merged = tmp.path().join("v1_v3.diff");
    let out = rbd_merge_diff(&a.path, &b.path, &merged).expect("run rbd merge-diff");
    assert!(
        out.status.success(),
        "rbd merge-diff: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        manifest::sha256_file(&merged),
        manifest::diff_file(&format!("{image}/rbd-merge/v1_v3.diff")).sha256,
        "{image}: rbd merge-diff output differs from the committed rbd-merge/v1_v3.diff"
    );

    let img = cluster.create_image(&format!("merge-{image}"), 1);
    import_ok(
        cluster,
        &manifest::diff_file(&format!("{image}/full_v1.diff")),
        &img,
    );
    let out = cluster.import_diff(&merged, &img);
    assert!(
        out.status.success(),
        "import-diff merged: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cluster.export_sha256(&format!("{img}@v3")),
        manifest::truth(image, "v3").sha256
    );
    cluster.remove_image(&img);
}

/// The skip diff v1_v3 and the rbd-merge files, each imported onto its base.
fn import_skip_and_merged_diffs(cluster: &Cluster, image: &str) {
    let full_v1 = manifest::diff_file(&format!("{image}/full_v1.diff"));
    for rel in [
        "v1_v3.diff",
        "rbd-merge/v1_v3.diff",
        "rbd-merge/full_head.diff",
    ] {
        let d = manifest::diff_file(&format!("{image}/{rel}"));
        let img = cluster.create_image(&format!("skip-{image}"), 1);
        if d.apply_to == "v1" {
            import_ok(cluster, &full_v1, &img);
        }
        import_ok(cluster, &d, &img);
        assert_eq!(
            cluster.export_sha256(&result_spec(&img, &d)),
            d.expected().sha256,
            "{}",
            d.rel
        );
        cluster.remove_image(&img);
    }
}

/// `rbd import --export-format 2` of the rebuilt img64k stream reproduces
/// every snapshot and HEAD (the only way Ceph 16 reads `rbd diff v2`).
fn import_export_format2_stream(cluster: &Cluster) {
    let (img, out) =
        cluster.import_export_format2(&manifest::export_format2_stream(), "exp2-img64k");
    assert!(
        out.status.success(),
        "rbd import --export-format 2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cluster.snapshots(&img), ["v1", "v2", "v3", "v4", "v5"]);
    for snap in ["v1", "v2", "v3", "v4", "v5", "head"] {
        let spec = if snap == "head" {
            img.clone()
        } else {
            format!("{img}@{snap}")
        };
        assert_eq!(
            cluster.export_sha256(&spec),
            manifest::truth("img64k", snap).sha256,
            "exp2 @{snap}"
        );
    }
    cluster.remove_image(&img);
}
