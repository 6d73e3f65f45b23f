//! Integrity of testdata/real (no Ceph needed) and, when the `rbd` CLI is
//! installed, `rbd merge-diff` reproducing the committed rbd-merge/ files.

mod common;

use common::ceph::{rbd_available, rbd_merge_diff};
use common::manifest::{self, Format};

#[test]
fn manifest_matches_files() {
    let files = manifest::diff_files();
    assert!(
        files.len() >= 50,
        "only {} rows in MANIFEST.tsv",
        files.len()
    );
    let truth = manifest::ground_truth();
    assert_eq!(truth.len(), 18);
    for d in &files {
        let data = d.read();
        assert_eq!(manifest::sha256_hex(&data), d.sha256, "{}: sha256", d.rel);
        let banner: &[u8] = match d.format {
            Format::V1 => b"rbd diff v1\n",
            Format::V2 => b"rbd diff v2\n",
        };
        assert!(data.starts_with(banner), "{}: banner", d.rel);
        assert_eq!(d.expected().size, d.size, "{}: size vs ground truth", d.rel);
        assert_eq!(
            d.from.as_deref().unwrap_or("empty"),
            d.apply_to,
            "{}",
            d.rel
        );
        assert_eq!(d.to.as_deref().unwrap_or("head"), d.result, "{}", d.rel);
    }
    // The rebuilt export-format-2 stream is the header plus the v2 chain.
    let mut stream =
        std::fs::read(manifest::real_dir().join("img64k/v2/export-format-2.header")).unwrap();
    let chains = manifest::chains();
    let img64k = chains.iter().find(|c| c.image == "img64k").unwrap();
    for d in &img64k.v2 {
        stream.extend(d.read());
    }
    assert_eq!(
        stream,
        std::fs::read(manifest::export_format2_stream()).unwrap()
    );
}

#[test]
fn chains_are_complete() {
    let chains = manifest::chains();
    let names: Vec<&str> = chains.iter().map(|c| c.image.as_str()).collect();
    assert_eq!(names, ["img4m", "img64k", "imgstriped"]);
    for c in &chains {
        let stems =
            |v: &[manifest::DiffFile]| v.iter().map(|d| d.stem().to_string()).collect::<Vec<_>>();
        let want: &[&str] = if c.image == "img4m" {
            &["v1_v2", "v2_v3", "v3_v4", "v4_v5", "v5_head"]
        } else {
            &["full_v1", "v1_v2", "v2_v3", "v3_v4", "v4_v5", "v5_head"]
        };
        assert_eq!(stems(&c.v1), want, "{} v1 chain", c.image);
        assert_eq!(stems(&c.v2), want, "{} v2 chain", c.image);
        assert!(c.v1.iter().all(|d| d.format == Format::V1));
        assert!(c.v2.iter().all(|d| d.format == Format::V2));
        let wo = if c.image == "img64k" { want.len() } else { 0 };
        assert_eq!(c.whole_object.len(), wo, "{} whole-object chain", c.image);
    }
}

/// `rbd merge-diff`, run offline and pairwise left to right, gives exactly
/// the committed rbd-merge/ files.
#[test]
fn rbd_merge_diff_reproduces_committed_merges() {
    if !rbd_available() {
        assert!(
            !common::ceph::ceph_required(),
            "RBDDIFF_REQUIRE_CEPH=1 but rbd is not installed"
        );
        common::skipped("rbd is not installed: no merge-diff reference check");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 5] = [
        ("v1_v3", &["v1_v2", "v2_v3"]),
        ("v3_v5", &["v3_v4", "v4_v5"]),
        ("v2_v5", &["v2_v3", "v3_v4", "v4_v5"]),
        ("full_v5", &["full_v1", "v1_v2", "v2_v3", "v3_v4", "v4_v5"]),
        (
            "full_head",
            &["full_v1", "v1_v2", "v2_v3", "v3_v4", "v4_v5", "v5_head"],
        ),
    ];
    let mut n = 0;
    for image in ["img64k", "imgstriped"] {
        for (target, parts) in cases {
            let path = |stem: &str| manifest::diff_file(&format!("{image}/{stem}.diff")).path;
            let mut acc = path(parts[0]);
            for p in &parts[1..] {
                n += 1;
                let out = tmp.path().join(format!("m{n}.diff"));
                let o = rbd_merge_diff(&acc, &path(p), &out).expect("run rbd");
                assert!(
                    o.status.success(),
                    "merge-diff: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                assert!(
                    o.stdout.is_empty() && o.stderr.is_empty(),
                    "rbd -c /dev/null is not silent"
                );
                acc = out;
            }
            let want = manifest::diff_file(&format!("{image}/rbd-merge/{target}.diff"));
            assert_eq!(manifest::sha256_file(&acc), want.sha256, "{}", want.rel);
        }
    }
}
