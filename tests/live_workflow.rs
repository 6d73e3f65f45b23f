//! Live: `rbddiff backup`, `restore` and `prune` against a real, throw-away Ceph cluster.
//! One suite runs every case against one cluster (see tests/common/live.rs); without Ceph it
//! is reported as ignored, or fails with `RBDDIFF_REQUIRE_CEPH=1`.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::ceph::Cluster;
use rbddiff::workflow::{backup, BackupOptions, Rbd};

/// Runs `rbddiff ARGS` against the cluster (through `CEPH_CONF`).
fn rbddiff(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .env("CEPH_CONF", cluster.conf())
        .env_remove("CEPH_ARGS")
        .output()
        .expect("run rbddiff")
}

fn ok(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let out = rbddiff(cluster, args);
    assert!(
        out.status.success(),
        "rbddiff {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    if args.contains(&"--json") {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
        // The envelope of docs/json.md.
        assert_eq!(v["schema"], "rbddiff/1", "{v}");
        assert_eq!(v["command"], args[0], "{v}");
        v
    } else {
        serde_json::Value::Null
    }
}

/// Exit status 2 and the message on stderr.
fn fails(cluster: &Cluster, args: &[&str]) -> String {
    common::exit_2(&rbddiff(cluster, args), args)
}

/// Names of the files in `dir` but its lock file (empty when it does not exist).
fn listing(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != rbddiff::dirlock::LOCK_NAME && n != rbddiff::archive::catalog::NAME)
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn main() {
    common::live::main(&[("live_workflow_suite", live_workflow_suite)])
}

fn live_workflow_suite(cluster: std::sync::Arc<Cluster>) {
    let root = tempfile::tempdir().unwrap();
    let snaps = backup_restore_prune(&cluster, root.path(), false);
    backup_restore_prune(&cluster, root.path(), true);
    keep_snaps_and_missing_previous(&cluster, root.path(), &snaps);
    failures_leave_nothing(&cluster, root.path());
    incremental_onto_an_image_without_its_start(&cluster, root.path());
    full_every_and_a_policy_prune(&cluster, root.path());
}

/// Three backups (full, then incrementals across a resize), a restore at each snapshot, a
/// prune to two files and restores again. Returns the image and its snapshot names.
fn backup_restore_prune(cluster: &Cluster, root: &Path, compress: bool) -> (String, PathBuf) {
    let img = cluster.create_image("wf", 8 << 20);
    let spec = format!("rbd/{img}");
    let dir = root.join(if compress { "zst" } else { "plain" });
    let ds = dir.to_string_lossy().into_owned();
    let z = if compress { ".zst" } else { "" };
    let extra: Vec<&str> = if compress { vec!["--compress"] } else { vec![] };
    // The compressed run passes the configuration and user explicitly (-c, --id).
    let conf = cluster.conf().to_string_lossy().into_owned();
    let conn: Vec<&str> = if compress {
        vec!["-c", &conf, "--id", "admin"]
    } else {
        vec![]
    };
    let run_backup = |snap: Option<&str>| {
        let mut args = vec!["backup", spec.as_str(), ds.as_str(), "--json"];
        if let Some(s) = snap {
            args.extend(["--snap", s]);
        }
        args.extend(&extra);
        args.extend(&conn);
        ok(cluster, &args)
    };

    cluster.write_noise(&img);
    let r1 = run_backup(Some("rbddiff-one"));
    assert_eq!(r1["from_snap"], serde_json::Value::Null);
    assert_eq!(r1["to_snap"], "rbddiff-one");
    assert!(r1["records"].as_u64().unwrap() > 3, "{r1}");
    assert_eq!(r1["compressed"], compress);
    cluster.write_noise(&img);
    cluster.rbd_ok(["resize", "--no-progress", "--size", "12M", &spec]);
    cluster.write_noise(&img);
    let r2 = run_backup(Some("rbddiff-two"));
    assert_eq!(r2["from_snap"], "rbddiff-one");
    assert_eq!(r2["image_size"], 12 << 20);
    cluster.write_noise(&img);
    let r3 = run_backup(None);
    let s3 = r3["to_snap"].as_str().unwrap().to_string();
    // The default name: the archive's tag and the UTC time.
    let tag = &r3["archive_id"].as_str().unwrap()[..8];
    assert!(
        s3.starts_with(&format!("rbddiff-{tag}-2")) && s3.ends_with('Z'),
        "{s3}"
    );
    assert_eq!(r3["from_snap"], "rbddiff-two");
    cluster.write_noise(&img); // HEAD moves on; the backups hold the snapshots

    let f1 = format!("{img}@rbddiff-one.full.diff{z}");
    let f2 = format!("{img}@rbddiff-one..rbddiff-two.diff{z}");
    let f3 = format!("{img}@rbddiff-two..{s3}.diff{z}");
    let mut want = set(&[&f1, &f2, &f3]);
    for f in [&f1, &f2, &f3] {
        want.insert(format!("{f}.sums"));
    }
    assert_eq!(listing(&dir), want);
    assert_eq!(r3["file"], dir.join(&f3).to_string_lossy().as_ref());
    // Every file verifies as a chain, sidecars included.
    ok(cluster, &["verify", "--full", "--require-sums", &ds]);

    let snaps = ["rbddiff-one", "rbddiff-two", s3.as_str()];
    let truth: Vec<String> = snaps
        .iter()
        .map(|s| cluster.export_sha256(&format!("{img}@{s}")))
        .collect();
    assert_ne!(truth[0], truth[1]);
    assert_ne!(truth[1], truth[2]);
    let restore_and_check = |k: usize, conn: &[&str]| {
        let target = cluster.unique_name("wfr");
        let tspec = format!("rbd/{target}");
        let mut args = vec![
            "restore", &ds, &tspec, "--create", "--to", snaps[k], "--json",
        ];
        args.extend(conn);
        let r = ok(cluster, &args);
        assert_eq!(r["created"], true);
        assert_eq!(r["to_snap"], snaps[k]);
        assert_eq!(
            cluster.export_sha256(&format!("{target}@{}", snaps[k])),
            truth[k],
            "restore of {} (compressed {compress})",
            snaps[k]
        );
        assert_eq!(cluster.export_sha256(&target), truth[k]);
        r
    };
    for k in 0..3 {
        let r = restore_and_check(k, &conn);
        assert_eq!(r["files"].as_array().unwrap().len(), k + 1);
    }
    // A restore to a snapshot the chain does not have.
    let restore_fails = |to: &str| {
        let target = cluster.unique_name("wfr");
        let target = format!("rbd/{target}");
        fails(cluster, &["restore", &ds, &target, "--create", "--to", to])
    };
    let err = restore_fails("nope");
    assert!(err.contains("no file ends at snapshot 'nope'"), "{err}");

    // Prune to two files: one new full diff to the second snapshot, then the third file.
    let r = ok(
        cluster,
        &["prune", &ds, "--image", &img, "--keep", "2", "--json"],
    );
    let merged = format!("{img}@rbddiff-two.full.diff{z}");
    assert_eq!(
        r["output"],
        dir.join(&merged).to_string_lossy().as_ref(),
        "{r}"
    );
    let want = set(&[
        &merged,
        &format!("{merged}.sums"),
        &f3,
        &format!("{f3}.sums"),
    ]);
    assert_eq!(listing(&dir), want);
    restore_and_check(1, &[]);
    restore_and_check(2, &[]);
    let err = restore_fails("rbddiff-one");
    assert!(
        err.contains("no file ends at snapshot 'rbddiff-one'"),
        "{err}"
    );
    (img, dir)
}

/// Snapshot ownership: `--keep-snaps` removes only the snapshots the archive's own backups
/// named (with its tag), so backing one image into two archives never removes the base the
/// other needs; other snapshots (given names, manual ones) stay. Each archive restores to the
/// `rbd export` of its snapshots. A backup whose restorable snapshots are all gone from the
/// image is a full diff.
fn keep_snaps_and_missing_previous(cluster: &Cluster, root: &Path, prev: &(String, PathBuf)) {
    let (img, dir) = prev;
    let spec = format!("rbd/{img}");
    let ds = dir.to_string_lossy().into_owned();
    let second = root.join("second");
    let ss = second.to_string_lossy().into_owned();
    let before = cluster.snapshots(img);
    assert_eq!(before.len(), 3, "{before:?}");
    let s3 = before[2].clone();
    cluster.rbd_ok(["snap", "create", &format!("{spec}@manual")]);
    let names = |r: &serde_json::Value, key: &str| -> Vec<String> {
        r[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let backup = |d: &str| {
        cluster.write_noise(img);
        ok(
            cluster,
            &["backup", &spec, d, "--keep-snaps", "1", "--json"],
        )
    };
    // The first archive's own default-named snapshot goes; the given names and manual stay.
    let p4 = backup(&ds);
    let tag_p = p4["archive_id"].as_str().unwrap()[..8].to_string();
    let p4s = p4["to_snap"].as_str().unwrap().to_string();
    assert!(p4s.starts_with(&format!("rbddiff-{tag_p}-")), "{p4}");
    assert!(s3.starts_with(&format!("rbddiff-{tag_p}-")), "{s3}");
    assert_eq!(names(&p4, "removed_snapshots"), [s3.as_str()]);
    assert_eq!(
        cluster.snapshots(img),
        ["rbddiff-one", "rbddiff-two", "manual", p4s.as_str()]
    );
    // A second archive of the same image: its own full, and it removes none of the first's.
    let q1 = backup(&ss);
    let q1s = q1["to_snap"].as_str().unwrap().to_string();
    assert!(q1["from_snap"].is_null(), "{q1}");
    assert_ne!(q1["archive_id"], p4["archive_id"]);
    assert!(names(&q1, "removed_snapshots").is_empty(), "{q1}");
    // Each one's next backup is an incremental from its own base, which the other left.
    let p5 = backup(&ds);
    assert_eq!(p5["from_snap"].as_str(), Some(p4s.as_str()), "{p5}");
    assert_eq!(names(&p5, "removed_snapshots"), [p4s.as_str()]);
    let q2 = backup(&ss);
    assert_eq!(q2["from_snap"].as_str(), Some(q1s.as_str()), "{q2}");
    assert_eq!(names(&q2, "removed_snapshots"), [q1s.as_str()]);
    let p5s = p5["to_snap"].as_str().unwrap().to_string();
    let q2s = q2["to_snap"].as_str().unwrap().to_string();
    assert_eq!(
        cluster.snapshots(img),
        [
            "rbddiff-one",
            "rbddiff-two",
            "manual",
            p5s.as_str(),
            q2s.as_str()
        ]
    );
    for (d, snap) in [(&ds, &p5s), (&ss, &q2s)] {
        let target = cluster.unique_name("own");
        let tspec = format!("rbd/{target}");
        ok(cluster, &["restore", d, &tspec, "--create", "--json"]);
        assert_eq!(
            cluster.export_sha256(&target),
            cluster.export_sha256(&format!("{img}@{snap}")),
            "restore of {snap} from {d}"
        );
    }
    // list and status see the catalog's times; the metrics name the last backup's success.
    let l = ok(cluster, &["list", &ds, "--json"]);
    let snaps = l["images"][0]["snapshots"].as_array().unwrap();
    assert!(
        snaps
            .iter()
            .all(|s| s["time_from"] == "catalog" && s["sums"] == "ok"),
        "{l}"
    );
    let prom = root.join("metrics.prom");
    let st = ok(
        cluster,
        &[
            "status",
            &ds,
            "--max-age",
            "1h",
            "--prometheus",
            &prom.to_string_lossy(),
            "--json",
        ],
    );
    assert_eq!(
        st["images"][0]["newest"]["name"].as_str(),
        Some(p5s.as_str()),
        "{st}"
    );
    let text = fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains(&format!(
            "rbddiff_backup_last_success{{archive=\"{ds}\",image=\"{img}\"}} 1\n"
        )),
        "{text}"
    );
    let cat = rbddiff::archive::catalog::read(dir).unwrap();
    let fsid = fs::read_to_string(cluster.conf())
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("fsid = ").map(String::from))
        .unwrap();
    let rec = &cat.files[&format!("{img}@{p4s}..{p5s}.diff")];
    assert_eq!(rec.fsid.as_deref(), Some(fsid.as_str()), "{rec:?}");
    assert!(
        rec.rbd_version
            .as_deref()
            .unwrap()
            .starts_with("ceph version"),
        "{rec:?}"
    );

    // Delete the first archive's restorable snapshots from the image: the next backup is a
    // full diff, and says why.
    for s in ["rbddiff-two", p5s.as_str()] {
        cluster.rbd_ok(["snap", "rm", "--no-progress", &format!("{spec}@{s}")]);
    }
    cluster.write_noise(img);
    let r = ok(
        cluster,
        &["backup", &spec, &ds, "--snap", "rbddiff-five", "--json"],
    );
    assert!(r["from_snap"].is_null(), "{r}");
    assert!(
        r["full_reason"].as_str().unwrap().contains("any more"),
        "{r}"
    );
    assert!(listing(dir).contains(&format!("{img}@rbddiff-five.full.diff")));
    assert_eq!(
        cluster.snapshots(img),
        ["rbddiff-one", "manual", q2s.as_str(), "rbddiff-five"]
    );
}

/// A wrapper around the real `rbd` that damages what `export-diff` writes.
fn fake_rbd(dir: &Path, name: &str, export: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(
        &p,
        format!(
            "#!/bin/sh\ncase \" $* \" in\n  *\" export-diff \"*) {export} ;;\n  *) exec rbd \"$@\" ;;\nesac\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Failed backups leave no file and no new snapshot.
fn failures_leave_nothing(cluster: &Cluster, root: &Path) {
    // A missing image: nothing is created anywhere.
    let dir = root.join("missing");
    let ds = dir.to_string_lossy().into_owned();
    let err = fails(cluster, &["backup", "rbd/no-such-image", &ds]);
    assert!(err.contains("no-such-image"), "{err}");
    assert!(listing(&dir).is_empty());

    // rbd writes a truncated stream (and succeeds), writes garbage, or fails after writing
    // everything: the file is not kept and the snapshot is removed again.
    std::env::set_var("CEPH_CONF", cluster.conf());
    std::env::remove_var("CEPH_ARGS");
    let img = cluster.create_image("wff", 4 << 20);
    cluster.write_noise(&img);
    let spec = format!("rbd/{img}");
    let cases = [
        ("cut", "rbd \"$@\" | head -c 3000", "truncated"),
        ("junk", "echo 'rbd diff v9'", "banner"),
        ("status", "rbd \"$@\"; exit 3", "export-diff"),
    ];
    for (name, script, what) in cases {
        let program = fake_rbd(root, &format!("rbd-{name}"), script);
        let dir = root.join(format!("fail-{name}"));
        let opts = BackupOptions {
            snap: Some("rbddiff-x".into()),
            rbd: Rbd {
                program,
                ..Rbd::default()
            },
            ..BackupOptions::default()
        };
        let e = backup(&spec, &dir, &opts).unwrap_err().to_string();
        assert!(e.contains(what), "{name}: {e}");
        assert!(listing(&dir).is_empty(), "{name}: {:?}", listing(&dir));
        assert!(cluster.snapshots(&img).is_empty(), "{name}");
    }
    // The same backup with the real rbd works.
    let dir = root.join("fail-none");
    let opts = BackupOptions {
        snap: Some("rbddiff-x".into()),
        ..BackupOptions::default()
    };
    let r = backup(&spec, &dir, &opts).unwrap();
    assert_eq!(r.to_snap, "rbddiff-x");
    assert_eq!(cluster.snapshots(&img), ["rbddiff-x"]);
    assert_eq!(listing(&dir).len(), 2);
}

/// An archive holding only an incremental has no restorable snapshot: restore refuses it
/// before rbd runs.
fn incremental_onto_an_image_without_its_start(cluster: &Cluster, root: &Path) {
    let img = cluster.create_image("wfi", 4 << 20);
    let spec = format!("rbd/{img}");
    let dir = root.join("inc");
    let ds = dir.to_string_lossy().into_owned();
    cluster.write_noise(&img);
    ok(cluster, &["backup", &spec, &ds, "--snap", "a"]);
    cluster.write_noise(&img);
    ok(cluster, &["backup", &spec, &ds, "--snap", "b"]);
    let only = root.join("inc-only");
    fs::create_dir(&only).unwrap();
    let f = format!("{img}@a..b.diff");
    fs::copy(dir.join(&f), only.join(&f)).unwrap();
    let target = cluster.create_image("wfi-target", 4 << 20);
    let err = fails(
        cluster,
        &["restore", &only.to_string_lossy(), &format!("rbd/{target}")],
    );
    // Nothing leads to 'b' from a full diff: refused before rbd runs.
    assert!(err.contains("no path") && err.contains("'a'"), "{err}");
    assert!(cluster.snapshots(&target).is_empty());
    // With --create, no image is made.
    let new = cluster.unique_name("wfi-new");
    let new_spec = format!("rbd/{new}");
    let err = fails(
        cluster,
        &["restore", &only.to_string_lossy(), &new_spec, "--create"],
    );
    assert!(err.contains("no path"), "{err}");
    assert!(
        !cluster.rbd(["info", new_spec.as_str()]).status.success(),
        "{new_spec} was left behind"
    );
}

/// 22 backups with `--full-every 5` and writes between them. A middle incremental deleted:
/// the snapshots after the next periodic full still restore through it. Then the backups
/// are given times six hours apart (the catalog's `time`, as a history of five and a half
/// days would have) and pruned by `--keep-daily 3 --keep-last 2`: exactly s15, s19, s20 and
/// s21 stay restorable, each restores to the `rbd export` of its source snapshot, and the
/// dropped ones are gone.
fn full_every_and_a_policy_prune(cluster: &Cluster, root: &Path) {
    let img = cluster.create_image("fe", 4 << 20);
    let spec = format!("rbd/{img}");
    let dir = root.join("full-every");
    let ds = dir.to_string_lossy().into_owned();
    let mut files: Vec<String> = Vec::new();
    let mut snaps: Vec<String> = Vec::new();
    let mut truth: Vec<String> = Vec::new();
    let mut fulls = Vec::new();
    for k in 0..22 {
        cluster.write_noise(&img);
        let snap = format!("s{k}");
        let r = ok(
            cluster,
            &[
                "backup",
                &spec,
                &ds,
                "--full-every",
                "5",
                "--snap",
                &snap,
                "--json",
            ],
        );
        assert_eq!(r["to_snap"], snap.as_str(), "{r}");
        if r["from_snap"].is_null() {
            fulls.push(k);
        }
        let f = Path::new(r["file"].as_str().unwrap());
        files.push(f.file_name().unwrap().to_string_lossy().into_owned());
        truth.push(cluster.export_sha256(&format!("{img}@{snap}")));
        snaps.push(snap);
    }
    assert_eq!(fulls, [0, 5, 10, 15, 20], "every 5th backup is a full");
    let restore = |dir: &str, k: usize| -> serde_json::Value {
        let target = cluster.unique_name("fer");
        let tspec = format!("rbd/{target}");
        let r = ok(
            cluster,
            &[
                "restore", dir, &tspec, "--create", "--to", &snaps[k], "--json",
            ],
        );
        assert_eq!(
            cluster.export_sha256(&format!("{target}@{}", snaps[k])),
            truth[k],
            "restore of s{k} from {dir}"
        );
        cluster.remove_image(&target);
        r
    };

    // A middle incremental lost (in a copy): s13 and later restore through the full at s10.
    let lost = root.join("full-every-lost");
    fs::create_dir_all(&lost).unwrap();
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), lost.join(e.file_name())).unwrap();
        }
    }
    fs::remove_file(lost.join(&files[7])).unwrap();
    let ls = lost.to_string_lossy().into_owned();
    for (k, full) in [(13, 10), (17, 15), (21, 20)] {
        let r = restore(&ls, k);
        assert_eq!(
            r["files"][0],
            lost.join(&files[full]).to_string_lossy().as_ref(),
            "{r}"
        );
    }
    let target = format!("rbd/{}", cluster.unique_name("fer"));
    let err = fails(
        cluster,
        &["restore", &ls, &target, "--create", "--to", "s8"],
    );
    assert!(err.contains("s8"), "{err}");

    // Backup times six hours apart, from a midnight (UTC) on.
    let cat_path = dir.join(rbddiff::archive::catalog::NAME);
    let mut cat: serde_json::Value = serde_json::from_slice(&fs::read(&cat_path).unwrap()).unwrap();
    let t0 = 1_767_571_200u64;
    for (k, f) in files.iter().enumerate() {
        cat["files"][f]["time"] = serde_json::json!(t0 + k as u64 * 6 * 3600);
    }
    fs::write(&cat_path, serde_json::to_vec(&cat).unwrap()).unwrap();
    let policy = ["--keep-daily", "3", "--keep-last", "2"];
    let mut args = vec!["prune", ds.as_str(), "--json"];
    args.extend(policy);
    args.push("--dry-run");
    let before = listing(&dir);
    let plan = ok(cluster, &args);
    assert_eq!(listing(&dir), before, "a dry run changes nothing");
    let kept = serde_json::json!(["s15", "s19", "s20", "s21"]);
    assert_eq!(plan["kept_snapshots"], kept, "{plan}");
    // s16..s19 become one incremental s15..s19; the fulls at s15 and s20 stay.
    assert_eq!(plan["merges"].as_array().unwrap().len(), 1, "{plan}");
    assert_eq!(plan["merges"][0]["from_snap"], "s15", "{plan}");
    assert_eq!(plan["merges"][0]["to_snap"], "s19", "{plan}");
    args.pop();
    let r = ok(cluster, &args);
    assert_eq!(r["kept_snapshots"], kept, "{r}");
    assert_eq!(
        r["kept_by"][1]["rules"],
        serde_json::json!(["daily"]),
        "{r}"
    );
    let left = listing(&dir);
    let merged = format!("{img}@s15..s19.diff");
    let want = set(&[
        &files[15],
        &merged,
        &files[20],
        &files[21],
        &format!("{}.sums", files[15]),
        &format!("{merged}.sums"),
        &format!("{}.sums", files[20]),
        &format!("{}.sums", files[21]),
    ]);
    assert_eq!(left, want);
    ok(cluster, &["verify", "--full", "--require-sums", &ds]);
    for k in [15, 19, 20, 21] {
        restore(&ds, k);
    }
    let target = format!("rbd/{}", cluster.unique_name("fer"));
    let err = fails(
        cluster,
        &["restore", &ds, &target, "--create", "--to", "s18"],
    );
    assert!(err.contains("no file ends at snapshot 's18'"), "{err}");
}
