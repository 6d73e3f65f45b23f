//! Live: archives on object storage, against a real radosgw on a throw-away Ceph cluster
//! (tests/common/live.rs: `main_gateway`). Backups stream into `s3://BUCKET/PREFIX`, prune
//! merges there, restores read from there and are checked against `rbd export` of the
//! source's snapshots; the bucket is looked at with signed requests from curl, not through
//! the crate. Without Ceph or radosgw the suites are reported as ignored, or fail with
//! `RBDDIFF_REQUIRE_CEPH=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ceph::Cluster;
use common::schema::check;

fn main() {
    common::lock_dir_for_this_run("live-s3-locks");
    common::live::main_gateway(&[
        ("replay_from_s3", replay_from_s3),
        ("sync_with_s3_archive", sync_with_s3_archive),
        ("backup_prune_restore", backup_prune_restore),
        ("copy_dir_s3_dir", copy_dir_s3_dir),
        ("kill_during_upload", kill_during_upload),
        ("concurrent_backups", concurrent_backups),
    ])
}

/// `rbddiff ARGS` aimed at the cluster (CEPH_CONF) and the gateway (the AWS variables).
fn command(cluster: &Cluster, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbddiff"));
    c.args(args)
        .env("CEPH_CONF", cluster.conf())
        .env_remove("CEPH_ARGS")
        .envs(cluster.s3_env().iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    c
}

fn rbddiff(cluster: &Cluster, args: &[&str]) -> Output {
    command(cluster, args).output().expect("run rbddiff")
}

/// Runs `rbddiff ARGS --json`, which must succeed; the report, checked against `section` of
/// docs/json.md.
fn ok(cluster: &Cluster, args: &[&str], section: &str) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = rbddiff(cluster, &a);
    assert!(
        out.status.success(),
        "rbddiff {} failed ({}): {}{}",
        a.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    check(&v, args[0], section);
    v
}

/// Exit status 2; the message on stderr.
fn fails(cluster: &Cluster, args: &[&str]) -> String {
    common::exit_2(&rbddiff(cluster, args), args)
}

/// A signed GET of `query` on `bucket`; the XML answer.
fn s3_get(cluster: &Cluster, bucket: &str, query: &str) -> String {
    cluster.s3_request("GET", &format!("{bucket}?{query}"))
}

/// The text of every `<tag>…</tag>` in `xml`, in order.
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|s| s.split_once(close.as_str()).map(|(v, _)| v.to_string()))
        .collect()
}

/// The objects under `prefix/` in `bucket`: name (the prefix taken off) and size.
fn objects(cluster: &Cluster, bucket: &str, prefix: &str) -> BTreeMap<String, u64> {
    let xml = s3_get(
        cluster,
        bucket,
        &format!("list-type=2&max-keys=1000&prefix={prefix}%2F"),
    );
    assert!(!xml.contains("<IsTruncated>true"), "listing truncated");
    elements(&xml, "Contents")
        .iter()
        .map(|c| {
            let key = elements(c, "Key").pop().expect("Key");
            let size = elements(c, "Size").pop().expect("Size").parse().unwrap();
            let name = key
                .strip_prefix(&format!("{prefix}/"))
                .expect("key under the prefix")
                .to_string();
            (name, size)
        })
        .collect()
}

/// Keys of the multipart uploads in progress in `bucket`.
fn uploads(cluster: &Cluster, bucket: &str) -> Vec<String> {
    let xml = s3_get(cluster, bucket, "uploads=");
    elements(&xml, "Upload")
        .iter()
        .filter_map(|u| elements(u, "Key").pop())
        .collect()
}

/// A diff file's name (not a hidden object such as an upload marker).
fn is_diff(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".diff") || name.ends_with(".diff.zst"))
}

/// The diff objects of a listing.
fn diffs(objs: &BTreeMap<String, u64>) -> BTreeSet<String> {
    objs.keys().filter(|n| is_diff(n)).cloned().collect()
}

/// Every diff object has its sidecar; no upload marker and no lock object is left.
fn settled(objs: &BTreeMap<String, u64>) {
    for n in diffs(objs) {
        assert!(
            objs.contains_key(&format!("{n}.sums")),
            "{n}: no sidecar in {objs:?}"
        );
    }
    for n in objs.keys() {
        assert!(
            !n.contains(".rbddiff-upload."),
            "upload marker left: {objs:?}"
        );
        assert_ne!(n, rbddiff::archive::lease::NAME, "lock left: {objs:?}");
    }
}

/// Restores `snap` from `loc` into a new image and checks it against `sha` (then removes it).
fn restore_check(cluster: &Cluster, loc: &str, snap: &str, sha: &str) {
    let target = cluster.unique_name("s3-restored");
    let tspec = format!("rbd/{target}");
    let r = ok(
        cluster,
        &["restore", loc, &tspec, "--create", "--to", snap],
        "restore",
    );
    assert!(!r["files"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(
        cluster.export_sha256(&tspec),
        sha,
        "restore of {snap} from {loc} differs from the source's snapshot"
    );
    cluster.remove_image(&target);
}

/// An image of `mib` MiB with data all over it.
fn image_with_data(cluster: &Cluster, name: &str, mib: u64) -> (String, String) {
    let img = cluster.create_image(name, mib << 20);
    cluster.write_noise(&img);
    let spec = format!("rbd/{img}");
    (img, spec)
}

/// Polls `cond` every 100 ms for up to `secs`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Five backups into s3 (full, incrementals, plain and compressed), verify and list, a
/// prune by a policy, then a restore of every kept snapshot, each equal to the source's.
fn backup_prune_restore(cluster: Arc<Cluster>) {
    let c = &*cluster;
    let (img, spec) = image_with_data(c, "s3wf", 16);
    let bucket = c.create_bucket("wf");
    let loc = format!("s3://{bucket}/cluster1");
    let mut shas = BTreeMap::new();
    for i in 0..5 {
        if i > 0 {
            c.write_noise(&img);
        }
        if i == 3 {
            c.rbd_ok(["resize", "--size", "20M", &spec]);
        }
        let snap = format!("s{i}");
        let mut args = vec!["backup", &spec, &loc, "--snap", &snap];
        if i % 2 == 1 {
            args.push("--compress");
        }
        let r = ok(c, &args, "backup");
        assert_eq!(r["to_snap"], snap.as_str(), "{r}");
        let prev = (i > 0).then(|| format!("s{}", i - 1));
        assert_eq!(r["from_snap"].as_str(), prev.as_deref(), "{r}");
        let file = r["file"].as_str().unwrap();
        assert!(file.starts_with(&format!("{loc}/{img}@")), "{file}");
        shas.insert(snap.clone(), c.export_sha256(&format!("{spec}@{snap}")));
    }
    let objs = objects(c, &bucket, "cluster1");
    settled(&objs);
    assert_eq!(diffs(&objs).len(), 5, "{objs:?}");
    assert!(
        objs.contains_key(rbddiff::archive::catalog::NAME),
        "{objs:?}"
    );
    assert!(uploads(c, &bucket).is_empty());

    let v = ok(c, &["verify", &loc], "verify");
    assert!(v["findings"].as_array().unwrap().is_empty(), "{v}");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 5, "{v}");
    assert!(
        files
            .iter()
            .all(|f| f["valid"] == true && f["sums"] == "ok"),
        "{v}"
    );
    let l = ok(c, &["list", &loc], "list");
    assert_eq!(l["images"].as_array().unwrap().len(), 1, "{l}");
    ok(c, &["status", &loc, "--max-age", "1d"], "status");

    // Keep the three newest: s0..s2 merge into one full diff at s2.
    let p = ok(
        c,
        &["prune", &loc, "--image", &img, "--keep-last", "3"],
        "prune",
    );
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(strs(&p["kept_snapshots"]), ["s2", "s3", "s4"], "{p}");
    assert_eq!(strs(&p["dropped_snapshots"]), ["s0", "s1"], "{p}");
    let merges = p["merges"].as_array().unwrap();
    assert_eq!(merges.len(), 1, "{p}");
    assert_eq!(merges[0]["to_snap"], "s2", "{p}");
    assert!(merges[0]["from_snap"].is_null(), "{p}");
    assert_eq!(merges[0]["inputs"].as_array().unwrap().len(), 3, "{p}");
    let objs = objects(c, &bucket, "cluster1");
    settled(&objs);
    let names = diffs(&objs);
    assert_eq!(names.len(), 3, "{objs:?}");
    assert!(
        names
            .iter()
            .all(|n| !n.contains("s0") && !n.contains("..s1")),
        "{names:?}"
    );
    // Each kept snapshot restores to the source's bytes; a dropped one is refused.
    for s in ["s2", "s3", "s4"] {
        restore_check(c, &loc, s, &shas[s]);
    }
    let target = format!("rbd/{}", c.unique_name("s3-none"));
    fails(c, &["restore", &loc, &target, "--create", "--to", "s0"]);
    let v = ok(c, &["verify", &loc], "verify");
    assert!(v["findings"].as_array().unwrap().is_empty(), "{v}");
    c.remove_image(&img);
}

/// A directory archive copied into s3 and back is byte-identical, and restores.
fn copy_dir_s3_dir(cluster: Arc<Cluster>) {
    let c = &*cluster;
    let (img, spec) = image_with_data(c, "s3cp", 8);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("local");
    let ds = dir.to_string_lossy().into_owned();
    for (i, z) in [false, true, false].into_iter().enumerate() {
        if i > 0 {
            c.write_noise(&img);
        }
        let snap = format!("c{i}");
        let mut args = vec!["backup", &spec, &ds, "--snap", &snap];
        if z {
            args.push("--compress");
        }
        ok(c, &args, "backup");
    }
    let sha = c.export_sha256(&format!("{spec}@c2"));
    let bucket = c.create_bucket("cp");
    let loc = format!("s3://{bucket}/offsite");
    let r = ok(c, &["copy", &ds, &loc], "copy");
    assert_eq!(r["copied"].as_array().unwrap().len(), 3, "{r}");
    // Again: nothing to do.
    let r = ok(c, &["copy", &ds, &loc], "copy");
    assert_eq!(r["copied"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["present"].as_array().unwrap().len(), 3, "{r}");
    let objs = objects(c, &bucket, "offsite");
    settled(&objs);
    assert_eq!(diffs(&objs).len(), 3, "{objs:?}");
    restore_check(c, &loc, "c2", &sha);
    // Offline, into a raw image file: the same bytes as `rbd export` of each snapshot.
    for s in ["c1", "c2"] {
        let raw = root.path().join(format!("{s}.raw"));
        let rs = raw.to_string_lossy().into_owned();
        let r = ok(
            c,
            &["restore", &loc, "--to-file", &rs, "--to", s],
            "restore",
        );
        assert_eq!(r["snap"], s, "{r}");
        assert_eq!(
            common::manifest::sha256_file(&raw),
            c.export_sha256(&format!("{spec}@{s}")),
            "restore --to-file of {s} from {loc}"
        );
    }

    let back = root.path().join("back");
    let bs = back.to_string_lossy().into_owned();
    let r = ok(c, &["copy", &loc, &bs], "copy");
    assert_eq!(r["copied"].as_array().unwrap().len(), 3, "{r}");
    let files = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                is_diff(&n) || n.ends_with(".sums")
            })
            .map(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                (n, fs::read(&p).unwrap())
            })
            .collect()
    };
    let (a, b) = (files(&dir), files(&back));
    assert_eq!(a.len(), 6, "{:?}", a.keys());
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "names differ"
    );
    for (n, bytes) in &a {
        assert!(
            b[n] == *bytes,
            "{n} differs after directory -> s3 -> directory"
        );
    }
    assert!(back.join(rbddiff::archive::catalog::NAME).exists());
    restore_check(c, &bs, "c2", &sha);
    c.remove_image(&img);
}

/// A backup whose upload is in progress: `--limit-rate` keeps it running for seconds.
fn slow_backup(cluster: &Cluster, spec: &str, loc: &str, snap: &str, extra: &[&str]) -> Child {
    let mut args = vec!["backup", spec, loc, "--snap", snap, "--limit-rate", "1M"];
    args.extend_from_slice(extra);
    command(cluster, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rbddiff backup")
}

/// kill -9 during an upload leaves no visible backup; the next backup breaks the lock
/// (`--break-lock`: the lease has not expired), cleans up and succeeds.
fn kill_during_upload(cluster: Arc<Cluster>) {
    let c = &*cluster;
    let (img, spec) = image_with_data(c, "s3kill", 48);
    let bucket = c.create_bucket("kill");
    let loc = format!("s3://{bucket}/k");
    let mut child = slow_backup(c, &spec, &loc, "k1", &[]);
    wait_for(60, "the upload marker", || {
        objects(c, &bucket, "k")
            .keys()
            .any(|n| n.contains(".rbddiff-upload."))
    });
    // At 1 MiB/s the first 8 MiB part is under way or sent, the upload far from complete.
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "backup ended early");
    child.kill().unwrap();
    child.wait().unwrap();
    let objs = objects(c, &bucket, "k");
    assert!(
        diffs(&objs).is_empty(),
        "a killed upload is visible: {objs:?}"
    );
    assert!(!objs.keys().any(|n| n.ends_with(".sums")), "{objs:?}");
    let l = ok(c, &["list", &loc], "list");
    let files: usize = l["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["files"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(files, 0, "{l}");
    let target = format!("rbd/{}", c.unique_name("s3-none"));
    fails(c, &["restore", &loc, &target, "--create"]);

    // The killed run's lock is live (lease 120 s): refused without --break-lock.
    assert!(objs.contains_key(rbddiff::archive::lease::NAME), "{objs:?}");
    let err = fails(c, &["backup", &spec, &loc, "--snap", "k2"]);
    assert!(err.contains("lock"), "{err}");
    assert!(!c.snapshots(&img).contains(&"k2".to_string()));
    let r = ok(
        c,
        &["backup", &spec, &loc, "--snap", "k2", "--break-lock"],
        "backup",
    );
    assert!(r["from_snap"].is_null(), "{r}");
    let objs = objects(c, &bucket, "k");
    settled(&objs);
    assert_eq!(diffs(&objs).len(), 1, "{objs:?}");
    assert!(
        uploads(c, &bucket).is_empty(),
        "the killed run's multipart upload is still open"
    );
    restore_check(c, &loc, "k2", &c.export_sha256(&format!("{spec}@k2")));
    c.remove_image(&img);
}

/// Two backups at once: the second fails at once on the lock; one with `--wait` waits for
/// the first and then backs up incrementally from it.
fn concurrent_backups(cluster: Arc<Cluster>) {
    let c = &*cluster;
    let (img, spec) = image_with_data(c, "s3lock", 32);
    let bucket = c.create_bucket("lock");
    let loc = format!("s3://{bucket}/l");
    let first = slow_backup(c, &spec, &loc, "a1", &["--json"]);
    wait_for(60, "the lock object", || {
        objects(c, &bucket, "l").contains_key(rbddiff::archive::lease::NAME)
    });
    let err = fails(c, &["backup", &spec, &loc, "--snap", "a2"]);
    assert!(err.contains("lock"), "{err}");
    assert!(
        !c.snapshots(&img).contains(&"a2".to_string()),
        "a refused backup made a snapshot"
    );
    let waiting = command(
        c,
        &[
            "backup", &spec, &loc, "--snap", "a3", "--wait", "5m", "--json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let a = first.wait_with_output().unwrap();
    assert!(
        a.status.success(),
        "first backup: {}",
        String::from_utf8_lossy(&a.stderr)
    );
    let b = waiting.wait_with_output().unwrap();
    assert!(
        b.status.success(),
        "waiting backup: {}",
        String::from_utf8_lossy(&b.stderr)
    );
    let rb: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    check(&rb, "backup", "backup");
    assert_eq!(rb["from_snap"], "a1", "{rb}");
    let objs = objects(c, &bucket, "l");
    settled(&objs);
    assert_eq!(diffs(&objs).len(), 2, "{objs:?}");
    restore_check(c, &loc, "a3", &c.export_sha256(&format!("{spec}@a3")));
    c.remove_image(&img);
}

/// `replay` from s3 into a second image (the backup cluster's side): a new image from the
/// full and the incrementals (each checked by the sha256 of its snapshot), then only what
/// is new; every snapshot of the replica equals the source's.
fn replay_from_s3(cluster: Arc<Cluster>) {
    let c = &*cluster;
    let (img, spec) = image_with_data(c, "s3rp", 8);
    let bucket = c.create_bucket("rp");
    let loc = format!("s3://{bucket}/r");
    for i in 0..3 {
        if i > 0 {
            c.write_noise(&img);
        }
        let snap = format!("r{i}");
        let mut args = vec!["backup", &spec, &loc, "--snap", &snap];
        if i == 1 {
            args.push("--compress");
        }
        ok(c, &args, "backup");
    }
    let replica = c.unique_name("s3-replica");
    let rspec = format!("rbd/{replica}");
    let r = ok(
        c,
        &[
            "replay",
            &loc,
            &rspec,
            "--create",
            "--from-image",
            &img,
            "--verify",
            "full",
        ],
        "replay",
    );
    assert_eq!(r["imported"].as_array().unwrap().len(), 3, "{r}");
    assert!(r["base"].is_null(), "{r}");
    c.write_noise(&img);
    ok(
        c,
        &["backup", &spec, &loc, "--snap", "r3", "--compress"],
        "backup",
    );
    let r = ok(c, &["replay", &loc, &rspec, "--from-image", &img], "replay");
    assert_eq!(r["base"], "r2", "{r}");
    assert_eq!(r["imported"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["target"], "r3", "{r}");
    // Up to date now.
    let r = ok(c, &["replay", &loc, &rspec, "--from-image", &img], "replay");
    assert!(r["imported"].as_array().unwrap().is_empty(), "{r}");
    for s in ["r0", "r1", "r2", "r3"] {
        assert_eq!(
            c.export_sha256(&format!("{rspec}@{s}")),
            c.export_sha256(&format!("{spec}@{s}")),
            "replica snapshot {s}"
        );
    }
    c.remove_image(&replica);
    c.remove_image(&img);
}

/// `sync --archive s3://…` (source and destination on this one cluster): each diff carried
/// is also written into the archive, from which every snapshot then restores, equal to the
/// source's and the destination's.
fn sync_with_s3_archive(cluster: Arc<Cluster>) {
    let c = &*cluster;
    let (img, spec) = image_with_data(c, "s3sy", 8);
    let dst = c.unique_name("s3-sync-dst");
    let dspec = format!("rbd/{dst}");
    let bucket = c.create_bucket("sy");
    let loc = format!("s3://{bucket}/s");
    let mut snaps = Vec::new();
    for i in 0..2 {
        if i > 0 {
            c.write_noise(&img);
        }
        let r = ok(c, &["sync", &spec, &dspec, "--archive", &loc], "sync");
        let file = r["archive_file"].as_str().unwrap();
        assert!(file.starts_with(&format!("{loc}/{img}@")), "{r}");
        assert_eq!(r["base"].is_null(), i == 0, "{r}");
        snaps.push(r["imported"]["to_snap"].as_str().unwrap().to_string());
    }
    let objs = objects(c, &bucket, "s");
    settled(&objs);
    assert_eq!(diffs(&objs).len(), 2, "{objs:?}");
    for s in &snaps {
        let want = c.export_sha256(&format!("{spec}@{s}"));
        assert_eq!(c.export_sha256(&format!("{dspec}@{s}")), want, "{s}");
        restore_check(c, &loc, s, &want);
    }
    c.remove_image(&dst);
    c.remove_image(&img);
}
