//! Shared helpers for the integration tests. Include with `mod common;`.
//!
//! - [`manifest`]: the real Ceph test data in `testdata/real/` (diff files,
//!   their metadata and the expected raw-image sha256 values).
//! - [`ceph`]: `rbd merge-diff` as an offline reference, and a throw-away
//!   live Ceph cluster for `rbd import-diff` / `rbd export` checks.

// Each test binary uses only part of these helpers.
#![allow(dead_code)]

pub mod ceph;
pub mod fakerbd;
pub mod gen;
pub mod live;
pub mod manifest;
pub mod model;
pub mod schema;

/// Says on the real stderr (not captured by the test harness, so it is seen even when the
/// test passes) that the running test could not do its work, and why. Tests that need Ceph
/// run through [`live`] and are reported as ignored instead; this is for the few checks
/// inside ordinary tests that need root, a tool or a file system feature.
pub fn skipped(why: &str) {
    use std::io::Write;
    let t = std::thread::current();
    let name = t.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {name}: {why}");
}

/// The stderr of `rbddiff ARGS`, whose run `out` must have exited with status 2 (an error).
pub fn exit_2(out: &std::process::Output, args: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "rbddiff {} should fail with 2: {err}",
        args.join(" ")
    );
    err
}

/// Points `RBDDIFF_LOCK_DIR` (the target images' locks of `sync` and `replay`, the
/// library's and the binary's) at a directory `name` of this test run. Call it first in
/// `main`, before any thread starts.
pub fn lock_dir_for_this_run(name: &str) {
    std::env::set_var(
        "RBDDIFF_LOCK_DIR",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name),
    );
}

/// [`skipped`] for a check that needs the `rbd` binary: a failure with
/// `RBDDIFF_REQUIRE_CEPH=1`.
pub fn skipped_without_rbd() {
    assert!(
        !ceph::ceph_required(),
        "RBDDIFF_REQUIRE_CEPH=1 but rbd is not installed"
    );
    skipped("rbd is not installed");
}

/// `prune` of `image` by `--keep-last keep` (what `--keep N` always meant).
pub fn prune_last(
    dir: &std::path::Path,
    image: &str,
    keep: usize,
    dry_run: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> rbddiff::Result<rbddiff::workflow::PruneReport> {
    let opts = rbddiff::workflow::PruneOptions {
        image: Some(image.to_string()),
        policy: rbddiff::archive::policy::Policy {
            last: keep,
            ..Default::default()
        },
        dry_run,
        ..Default::default()
    };
    rbddiff::workflow::prune(dir, &opts, progress)
}
