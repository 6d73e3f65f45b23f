//! Live tests against a real, throw-away Ceph cluster (tests/harness/).
//!
//! Everything runs inside ONE suite (tests/common/live.rs) so that the cluster is started
//! once and stopped before this test binary exits. Without ceph-mon/ceph-osd the suite is
//! reported as ignored, or fails with `RBDDIFF_REQUIRE_CEPH=1` (CI).
//!
//! Later suites (diffs written by our own merge / apply / convert code,
//! imported into the cluster and compared with the ground truth) add their
//! cases to `live_ceph_suite` below.

mod common;

use common::ceph::{rbd_merge_diff, Cluster};
use common::manifest::{self, DiffFile};
use std::time::Instant;

fn main() {
    common::live::main(&[("live_ceph_suite", live_ceph_suite)])
}

fn live_ceph_suite(cluster: std::sync::Arc<Cluster>) {
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

    // Our own outputs, judged by real Ceph.
    for chains in manifest::chains() {
        if chains.image == "img4m" {
            continue;
        }
        our_merge_imports_like_the_chain(&cluster, &chains.image, &chains.v1);
        our_merge_imports_like_the_chain(&cluster, &chains.image, &chains.v2);
    }
    our_merged_incremental_on_top(&cluster, "img64k");
    our_create_and_compress_import(&cluster, "imgstriped");
    for seed in 1..=4 {
        random_chain_three_ways(&cluster, seed);
    }

    eprintln!("live ceph suite: {:.1} s", t0.elapsed().as_secs_f64());
}

fn rbddiff(args: &[&std::ffi::OsStr]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .output()
        .expect("run rbddiff");
    assert!(
        out.status.success(),
        "rbddiff {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rbddiff merge` of every prefix of a chain (full_v1 + ... + x), imported into a fresh
/// image, must give the ground truth at x's end snapshot.
fn our_merge_imports_like_the_chain(cluster: &Cluster, image: &str, chain: &[DiffFile]) {
    let tmp = tempfile::tempdir().unwrap();
    for n in 2..=chain.len() {
        let prefix = &chain[..n];
        let out = tmp.path().join(format!("merged-{n}.diff"));
        let mut args: Vec<&std::ffi::OsStr> = vec!["merge".as_ref()];
        args.extend(prefix.iter().map(|d| d.path.as_os_str()));
        args.extend(["-o".as_ref(), out.as_os_str()]);
        rbddiff(&args);
        let img = cluster.create_image(&format!("ourmerge-{image}"), 1);
        let r = cluster.import_diff(&out, &img);
        assert!(
            r.status.success(),
            "import-diff of our merge of {n} files failed: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let last = &prefix[n - 1];
        assert_eq!(
            cluster.export_sha256(&result_spec(&img, last)),
            last.expected().sha256,
            "{image}: our merge of {} files ({}) imported != raw@{}",
            n,
            prefix.first().map(|d| d.rel.as_str()).unwrap_or(""),
            last.result
        );
        cluster.remove_image(&img);
    }
}

/// Our merge of the incrementals v1_v2 + ... + v4_v5, imported on top of full_v1.
fn our_merged_incremental_on_top(cluster: &Cluster, image: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v1_v5.diff");
    let files: Vec<DiffFile> = ["v1_v2", "v2_v3", "v3_v4", "v4_v5"]
        .iter()
        .map(|s| manifest::diff_file(&format!("{image}/{s}.diff")))
        .collect();
    let mut args: Vec<&std::ffi::OsStr> = vec!["merge".as_ref()];
    args.extend(files.iter().map(|d| d.path.as_os_str()));
    args.extend(["-o".as_ref(), out.as_os_str()]);
    rbddiff(&args);
    let img = cluster.create_image(&format!("ourinc-{image}"), 1);
    import_ok(
        cluster,
        &manifest::diff_file(&format!("{image}/full_v1.diff")),
        &img,
    );
    let r = cluster.import_diff(&out, &img);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        cluster.export_sha256(&format!("{img}@v5")),
        manifest::truth(image, "v5").sha256
    );
    cluster.remove_image(&img);
}

/// `rbddiff create` from raw exports (full v3, then incremental v3 -> v4 -> v5) imported by
/// real Ceph; and a compressed archive restored with stock `zstd -dc | rbd import-diff -`.
fn our_create_and_compress_import(cluster: &Cluster, image: &str) {
    let tmp = tempfile::tempdir().unwrap();
    // Raw images of v3, v4 and v5 from the cluster.
    let src = cluster.create_image(&format!("raw-{image}"), 1);
    for s in ["full_v1", "v1_v2", "v2_v3", "v3_v4", "v4_v5"] {
        import_ok(
            cluster,
            &manifest::diff_file(&format!("{image}/{s}.diff")),
            &src,
        );
    }
    let raw = |snap: &str| {
        let p = tmp.path().join(format!("{snap}.raw"));
        cluster.rbd_ok([
            "export".as_ref(),
            format!("{src}@{snap}").as_ref(),
            p.as_os_str(),
        ]);
        p
    };
    let (r3, r4, r5) = (raw("v3"), raw("v4"), raw("v5"));
    let full = tmp.path().join("full_v3.diff");
    rbddiff(&[
        "create".as_ref(),
        "--from".as_ref(),
        r3.as_os_str(),
        "--to-snap".as_ref(),
        "v3".as_ref(),
        "-o".as_ref(),
        full.as_os_str(),
    ]);
    let mut incs = Vec::new();
    for (base, new, from, to) in [(&r3, &r4, "v3", "v4"), (&r4, &r5, "v4", "v5")] {
        let p = tmp.path().join(format!("{from}_{to}.diff"));
        rbddiff(&[
            "create".as_ref(),
            "--base".as_ref(),
            base.as_os_str(),
            "--from".as_ref(),
            new.as_os_str(),
            "--from-snap".as_ref(),
            from.as_ref(),
            "--to-snap".as_ref(),
            to.as_ref(),
            "-o".as_ref(),
            p.as_os_str(),
        ]);
        incs.push((p, to));
    }
    let img = cluster.create_image(&format!("created-{image}"), 1);
    let r = cluster.import_diff(&full, &img);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        cluster.export_sha256(&format!("{img}@v3")),
        manifest::truth(image, "v3").sha256
    );
    for (p, to) in &incs {
        let r = cluster.import_diff(p, &img);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(
            cluster.export_sha256(&format!("{img}@{to}")),
            manifest::truth(image, to).sha256,
            "created incremental to {to}"
        );
    }
    cluster.remove_image(&img);

    // Compressed archive of the real full_v1, restored through stock zstd and a pipe.
    let zst = tmp.path().join("full_v1.diff.zst");
    let full_v1 = manifest::diff_file(&format!("{image}/full_v1.diff"));
    rbddiff(&[
        "compress".as_ref(),
        full_v1.path.as_os_str(),
        "-o".as_ref(),
        zst.as_os_str(),
    ]);
    let img = cluster.create_image(&format!("zst-{image}"), 1);
    let script = format!(
        "zstd -dc '{}' | rbd import-diff --no-progress - rbd/{img}",
        zst.display()
    );
    let r = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("CEPH_CONF", cluster.conf())
        .output()
        .expect("sh");
    assert!(
        r.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        cluster.export_sha256(&format!("{img}@v1")),
        manifest::truth(image, "v1").sha256
    );
    cluster.remove_image(&img);
    cluster.remove_image(&src);
}

/// Writes a random chain with `rbddiff::DiffWriter`: a full diff to `s0`, then incrementals
/// `s0 -> s1 -> ...`, with resizes up and down, unaligned writes, zero records and all-zero
/// payloads. Returns the file paths.
fn random_chain(dir: &std::path::Path, seed: u64, len: usize) -> Vec<std::path::PathBuf> {
    use rbddiff::{DiffWriter, Extent, Metadata, Version};
    let mut rng = common::gen::Rng::new(seed);
    let mut size = 1 << 20;
    let mut files = Vec::new();
    for i in 0..len {
        if i > 0 {
            size = match rng.below(4) {
                0 => size / 2 + rng.below(size / 2),
                1 => size + rng.below(1 << 20),
                _ => size,
            }
            .max(4096);
        }
        let meta = Metadata {
            from_snap: (i > 0).then(|| format!("s{}", i - 1).into_bytes()),
            to_snap: Some(format!("s{i}").into_bytes()),
            image_size: Some(size),
            ..Default::default()
        };
        // v1: the only version `rbd import-diff` reads.
        let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
        let mut at = rng.below(8192);
        while at < size {
            let len = (1 + rng.below(96 << 10)).min(size - at);
            match rng.below(5) {
                0 => w.zero(Extent::new(at, len)).unwrap(),
                1 => w.write_data(at, &vec![0; len as usize]).unwrap(),
                _ => {
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    w.write_data(at, &data).unwrap();
                }
            }
            at += len + rng.below(128 << 10);
        }
        let p = dir.join(format!("r{seed}-{i}.diff"));
        std::fs::write(&p, w.finish().unwrap()).unwrap();
        files.push(p);
    }
    files
}

/// A random chain restored three ways must give the same image at the end: real
/// `rbd import-diff` of every file in turn, `rbd import-diff` of our one-pass merge, and our
/// offline `apply` of the chain to a raw file (compared with `rbd export`).
fn random_chain_three_ways(cluster: &Cluster, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let files = random_chain(tmp.path(), seed, 6);
    let last = format!("s{}", files.len() - 1);

    let chained = cluster.create_image(&format!("rnd{seed}-chain"), 1);
    for f in &files {
        let r = cluster.import_diff(f, &chained);
        assert!(
            r.status.success(),
            "seed {seed}: rbd import-diff {}: {}",
            f.display(),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    let want = cluster.export_sha256(&format!("{chained}@{last}"));

    let merged = tmp.path().join("merged.diff");
    let mut args: Vec<&std::ffi::OsStr> = vec!["merge".as_ref()];
    args.extend(files.iter().map(|p| p.as_os_str()));
    args.extend(["-o".as_ref(), merged.as_os_str()]);
    rbddiff(&args);
    let one = cluster.create_image(&format!("rnd{seed}-merged"), 1);
    let r = cluster.import_diff(&merged, &one);
    assert!(
        r.status.success(),
        "seed {seed}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        cluster.export_sha256(&format!("{one}@{last}")),
        want,
        "seed {seed}: import of our merge != import of the chain"
    );

    let raw = tmp.path().join("applied.raw");
    let mut args: Vec<&std::ffi::OsStr> = vec!["apply".as_ref()];
    args.extend(files.iter().map(|p| p.as_os_str()));
    args.extend(["--create".as_ref(), "--to".as_ref(), raw.as_os_str()]);
    rbddiff(&args);
    assert_eq!(
        manifest::sha256_file(&raw),
        want,
        "seed {seed}: our apply != rbd import-diff of the chain"
    );
    cluster.remove_image(&chained);
    cluster.remove_image(&one);
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
