//! Live: `rbddiff sync` and `replay` between two real, throw-away Ceph clusters (two
//! single-node clusters on 127.0.0.1 with their own ports, fsids and state, started side by
//! side, see tests/common/live.rs). Without Ceph the suites are reported as ignored, or fail
//! with `RBDDIFF_REQUIRE_CEPH=1`.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use common::ceph::Cluster;
use common::gen::{noise, Rng};
use common::schema::check;
use rbddiff::replicate::{sync, SyncOptions};
use rbddiff::workflow::Rbd;

fn main() {
    common::lock_dir_for_this_run("live-replication-locks");
    common::live::main2(&[
        ("sync_chain", sync_chain),
        ("backup_then_replay", backup_then_replay),
        ("missing_base_and_reseed", missing_base_and_reseed),
        ("failures_roll_back", failures_roll_back),
        ("parallel_and_rate", parallel_and_rate),
        ("sync_with_archive", sync_with_archive),
    ])
}

/// Runs `rbddiff ARGS` (with no CEPH_CONF: every call names its clusters).
fn rbddiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(args)
        .env_remove("CEPH_CONF")
        .env_remove("CEPH_ARGS")
        .output()
        .expect("run rbddiff")
}

/// Runs `rbddiff ARGS --json`, which must succeed; the report.
fn ok(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = rbddiff(&a);
    assert!(
        out.status.success(),
        "rbddiff {} failed ({}): {}{}",
        a.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    // Every report against its section of docs/json.md.
    let section = match args[0] {
        "sync" if args.contains(&"--pool") => "--pool",
        "verify" if args.contains(&"--replica") => "--replica",
        c => c,
    };
    check(&v, args[0], section);
    v
}

/// Exit status 2; the message on stderr.
fn fails(args: &[&str]) -> String {
    common::exit_2(&rbddiff(args), args)
}

fn conf(c: &Cluster) -> String {
    c.conf().to_string_lossy().into_owned()
}

/// `rbddiff sync rbd/IMG rbd/IMG` from `a` to `b`, with `extra` flags.
fn sync_cli(a: &Cluster, b: &Cluster, img: &str, extra: &[&str]) -> serde_json::Value {
    let spec = format!("rbd/{img}");
    let (ca, cb) = (conf(a), conf(b));
    let mut args = vec!["sync", &spec, &spec, "--src-conf", &ca, "--dst-conf", &cb];
    args.extend_from_slice(extra);
    ok(&args)
}

fn size_of(c: &Cluster, img: &str) -> u64 {
    let info = c.rbd_ok(["info", "--format", "json", &format!("rbd/{img}")]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    v["size"].as_u64().unwrap()
}

/// Writes a diff to HEAD (no snapshot) into `img`: `records` of `(block, blocks, data)`,
/// `data` false for write-zeroes.
fn write_records(c: &Cluster, img: &str, recs: &[(u64, u64, Option<u64>)]) {
    let size = size_of(c, img);
    let meta = rbddiff::Metadata {
        image_size: Some(size),
        ..rbddiff::Metadata::default()
    };
    let mut w = rbddiff::DiffWriter::new(Vec::new(), rbddiff::Version::V1, &meta).unwrap();
    for &(at, n, seed) in recs {
        let e = rbddiff::Extent::new(at * 4096, n * 4096);
        match seed {
            Some(s) => w.write_data(e.offset, &noise(s, e.len as usize)).unwrap(),
            None => w.zero(e).unwrap(),
        }
    }
    let diff = w.finish().unwrap();
    let mut child = c
        .rbd_command()
        .args(["import-diff", "--no-progress", "-", &format!("rbd/{img}")])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&diff).unwrap();
    assert!(child.wait().unwrap().success(), "import-diff into {img}");
}

/// Random writes and write-zeroes all over the image HEAD.
fn scribble(c: &Cluster, img: &str, seed: u64) {
    let blocks = size_of(c, img) / 4096;
    let mut rng = Rng::new(seed);
    let mut recs = Vec::new();
    let mut at = rng.below(16);
    while at < blocks {
        let n = (1 + rng.below(16)).min(blocks - at);
        let data = (rng.below(4) != 0).then(|| rng.next());
        recs.push((at, n, data));
        at += n + rng.below(96);
    }
    write_records(c, img, &recs);
}

/// Every snapshot of `img` on `b` has the sha256 of the same snapshot on `a` (where `a` still
/// has it); returns them.
fn same_snapshots(a: &Cluster, b: &Cluster, img: &str) -> Vec<String> {
    let snaps = b.snapshots(img);
    let on_a = a.snapshots(img);
    for s in snaps.iter().filter(|s| on_a.contains(s)) {
        let at = format!("{img}@{s}");
        assert_eq!(a.export_sha256(&at), b.export_sha256(&at), "snapshot {at}");
    }
    snaps
}

/// First sync (full), then 10 incrementals with writes, write-zeroes, discards (zeroed
/// whole objects), grows and shrinks between them: after each, every snapshot on the
/// destination has the sha256 of the source's.
fn sync_chain(a: Arc<Cluster>, b: Arc<Cluster>) {
    let img = a.create_image_with("chain", 12 << 20, &["--object-size", "1M"]);
    scribble(&a, &img, 1);
    let r = sync_cli(&a, &b, &img, &[]);
    assert!(r["base"].is_null(), "{r}");
    assert_eq!(r["created"], true, "{r}");
    assert_eq!(r["imported"]["check"]["mode"], "diff", "{r}");
    assert_eq!(same_snapshots(&a, &b, &img).len(), 1);
    let mut prev = r["imported"]["to_snap"].as_str().unwrap().to_string();
    for round in 0..10u64 {
        let spec = format!("rbd/{img}");
        match round {
            3 => {
                a.rbd_ok(["resize", "--no-progress", "--size", "20M", &spec]);
            }
            6 => {
                a.rbd_ok([
                    "resize",
                    "--no-progress",
                    "--allow-shrink",
                    "--size",
                    "9M",
                    &spec,
                ]);
            }
            _ => {}
        }
        scribble(&a, &img, 100 + round);
        if round == 5 {
            // Whole objects zeroed (discarded on the OSD).
            write_records(&a, &img, &[(0, 512, None)]);
        }
        let verify = if round == 4 { "full" } else { "diff" };
        let r = sync_cli(&a, &b, &img, &["--verify", verify]);
        assert_eq!(r["base"], prev.as_str(), "round {round}: {r}");
        assert_eq!(r["imported"]["check"]["mode"], verify, "{r}");
        if verify == "full" {
            assert_eq!(r["imported"]["check"]["sha256"].as_str().unwrap().len(), 64);
        }
        prev = r["imported"]["to_snap"].as_str().unwrap().to_string();
        let snaps = same_snapshots(&a, &b, &img);
        assert_eq!(snaps.len() as u64, round + 2, "{snaps:?}");
        assert_eq!(snaps.last(), Some(&prev));
    }
    assert_eq!(size_of(&b, &img), 9 << 20);
    // --keep-snaps: only the newest 3 of the sync's snapshots stay on the source, the newest
    // common one among them.
    scribble(&a, &img, 999);
    let r = sync_cli(
        &a,
        &b,
        &img,
        &["--keep-snaps", "3", "--dst-keep-snaps", "4"],
    );
    assert_eq!(
        r["removed_source_snapshots"].as_array().unwrap().len(),
        9,
        "{r}"
    );
    let newest = r["imported"]["to_snap"].as_str().unwrap().to_string();
    assert_eq!(a.snapshots(&img).len(), 3);
    assert_eq!(a.snapshots(&img).last(), Some(&newest));
    assert_eq!(b.snapshots(&img).len(), 4);
    // The destination by prune's retention flags: --dst-keep-daily 1 keeps one snapshot of
    // the syncs (the newest, the one just made, whatever the day) and never one named
    // otherwise (here one made by a sync with --snap).
    scribble(&a, &img, 1000);
    sync_cli(&a, &b, &img, &["--snap", "manual-1"]);
    scribble(&a, &img, 1001);
    let r = sync_cli(&a, &b, &img, &["--dst-keep-daily", "1"]);
    let newest = r["imported"]["to_snap"].as_str().unwrap().to_string();
    assert_eq!(
        r["removed_destination_snapshots"].as_array().unwrap().len(),
        4,
        "{r}"
    );
    assert_eq!(b.snapshots(&img), ["manual-1", newest.as_str()]);
    same_snapshots(&a, &b, &img);
    // The next sync still finds its base.
    scribble(&a, &img, 1002);
    let r = sync_cli(&a, &b, &img, &[]);
    assert_eq!(r["base"], newest.as_str(), "{r}");
    same_snapshots(&a, &b, &img);
    a.remove_image(&img);
    b.remove_image(&img);
}

fn backup(a: &Cluster, img: &str, dir: &Path, extra: &[&str]) -> String {
    let spec = format!("rbd/{img}");
    let ca = conf(a);
    let d = dir.to_string_lossy();
    let mut args = vec!["backup", &spec, &d, "-c", &ca];
    args.extend_from_slice(extra);
    let r = ok(&args);
    r["to_snap"].as_str().unwrap().to_string()
}

fn replay(b: &Cluster, dir: &Path, img: &str, extra: &[&str]) -> serde_json::Value {
    let spec = format!("rbd/{img}");
    let cb = conf(b);
    let d = dir.to_string_lossy();
    let mut args = vec!["replay", &d, &spec, "-c", &cb];
    args.extend_from_slice(extra);
    ok(&args)
}

/// Backups on one cluster replayed on the other: the same snapshots, the same bytes;
/// compressed files and --squash too.
fn backup_then_replay(a: Arc<Cluster>, b: Arc<Cluster>) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("arch");
    let img = a.create_image("rp", 8 << 20);
    scribble(&a, &img, 1);
    let s1 = backup(&a, &img, &dir, &[]);
    scribble(&a, &img, 2);
    let s2 = backup(&a, &img, &dir, &["--compress"]);
    a.rbd_ok([
        "resize",
        "--no-progress",
        "--size",
        "10M",
        &format!("rbd/{img}"),
    ]);
    scribble(&a, &img, 3);
    let s3 = backup(&a, &img, &dir, &[]);

    // Without --create a missing image is refused.
    let cb = conf(&b);
    let d = dir.to_string_lossy().into_owned();
    let spec = format!("rbd/{img}");
    let err = fails(&["replay", &d, &spec, "-c", &cb]);
    assert!(err.contains("--create"), "{err}");

    let r = replay(&b, &dir, &img, &["--create", "--to", &s2]);
    assert_eq!(r["created"], true, "{r}");
    assert_eq!(r["imported"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(b.snapshots(&img), [s1.clone(), s2.clone()]);
    same_snapshots(&a, &b, &img);
    let r = replay(&b, &dir, &img, &["--verify", "full"]);
    assert_eq!(r["base"], s2.as_str(), "{r}");
    assert_eq!(r["imported"][0]["check"]["mode"], "full", "{r}");
    assert_eq!(b.snapshots(&img), [s1.clone(), s2.clone(), s3.clone()]);
    same_snapshots(&a, &b, &img);
    // Up to date: nothing to do.
    let r = replay(&b, &dir, &img, &[]);
    assert!(r["imported"].as_array().unwrap().is_empty(), "{r}");

    // Squashed into another image: one snapshot, the newest, and the same bytes.
    let other = b.unique_name("rpsq");
    let ospec = format!("rbd/{other}");
    let r = ok(&[
        "replay",
        &d,
        &ospec,
        "-c",
        &cb,
        "--create",
        "--squash",
        "--from-image",
        &img,
    ]);
    assert_eq!(r["imported"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(b.snapshots(&other), [s3.as_str()]);
    assert_eq!(
        a.export_sha256(&format!("{img}@{s3}")),
        b.export_sha256(&format!("{other}@{s3}"))
    );
    // A file that does not match its sidecar is not imported: the image stays at s3.
    scribble(&a, &img, 4);
    let s4 = backup(&a, &img, &dir, &[]);
    let f = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(&format!("{s4}.diff")))
        .unwrap();
    let mut bytes = fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    fs::write(&f, &bytes).unwrap();
    let err = fails(&["replay", &d, &spec, "-c", &cb]);
    assert!(
        err.contains("sums") || err.contains("damaged") || err.contains("crc"),
        "{err}"
    );
    assert_eq!(b.snapshots(&img).last(), Some(&s3));
    assert_eq!(
        b.export_sha256(&img),
        b.export_sha256(&format!("{img}@{s3}")),
        "HEAD is back at s3"
    );
    a.remove_image(&img);
    b.remove_image(&img);
    b.remove_image(&other);
}

/// An image without a snapshot in common is refused; --reseed builds a new one and swaps it
/// in, leaving the old one untouched until then (a failed reseed leaves it as it was).
fn missing_base_and_reseed(a: Arc<Cluster>, b: Arc<Cluster>) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("arch");
    let img = a.create_image("rs", 4 << 20);
    scribble(&a, &img, 5);
    let s1 = backup(&a, &img, &dir, &[]);
    // The destination: an image of the same name with data and its own snapshot.
    b.rbd_ok(["create", "--size", "4M", &format!("rbd/{img}")]);
    scribble(&b, &img, 6);
    b.rbd_ok(["snap", "create", &format!("rbd/{img}@mine")]);
    let before = b.export_sha256(&img);
    let cb = conf(&b);
    let d = dir.to_string_lossy().into_owned();
    let spec = format!("rbd/{img}");
    let err = fails(&["replay", &d, &spec, "-c", &cb]);
    assert!(err.contains("--reseed") && err.contains("mine"), "{err}");
    // sync refuses it too.
    let ca = conf(&a);
    let err = fails(&["sync", &spec, &spec, "--src-conf", &ca, "--dst-conf", &cb]);
    assert!(err.contains("no snapshot in common"), "{err}");
    assert_eq!(b.export_sha256(&img), before);
    assert_eq!(b.snapshots(&img), ["mine"]);

    // A reseed whose import fails leaves the old image as it was and no new one.
    let fake = fake_rbd(root.path(), "rbd-cut", "head -c 100000 | rbd \"$@\"");
    let opts = rbddiff::replicate::ReplayOptions {
        reseed: true,
        rbd: Rbd {
            program: fake,
            conf: Some(b.conf().to_path_buf()),
            ..Rbd::default()
        },
        ..Default::default()
    };
    let e = rbddiff::replicate::replay(&dir, &spec, &opts).unwrap_err();
    assert!(e.to_string().contains("import-diff"), "{e}");
    assert_eq!(b.export_sha256(&img), before);
    assert_eq!(b.snapshots(&img), ["mine"]);
    let left: Vec<String> = images(&b)
        .into_iter()
        .filter(|n| n.starts_with(&img))
        .collect();
    assert_eq!(left, vec![img.clone()], "no image left behind");

    let r = replay(&b, &dir, &img, &["--reseed"]);
    let old = r["replaced"].as_str().unwrap().to_string();
    assert_eq!(b.snapshots(&img), [s1.as_str()]);
    same_snapshots(&a, &b, &img);
    let old_name = old.strip_prefix("rbd/").unwrap();
    assert_eq!(b.snapshots(old_name), ["mine"]);
    assert_eq!(b.export_sha256(old_name), before);
    a.remove_image(&img);
    b.remove_image(&img);
    b.remove_image(old_name);
}

fn images(c: &Cluster) -> Vec<String> {
    let out = c.rbd_ok(["ls", "--format", "json", "rbd"]);
    let mut v: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    v.sort();
    v
}

/// A wrapper around the real `rbd` that runs `import` instead of `import-diff`.
fn fake_rbd(dir: &Path, name: &str, import: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(
        &p,
        format!(
            "#!/bin/sh\ncase \" $* \" in\n  *\" import-diff \"*) {import} ;;\n  *) exec rbd \"$@\" ;;\nesac\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// An `rbd import-diff` that dies half way, and a `sync` killed with SIGKILL mid-import,
/// leave the destination at its previous snapshot; a rerun completes (the killed run's lock
/// on the destination went with it). A second sync into the same image while one runs is
/// refused, or waits. A failed full import into an empty image leaves it empty.
fn failures_roll_back(a: Arc<Cluster>, b: Arc<Cluster>) {
    let root = tempfile::tempdir().unwrap();
    let img = a.create_image_with("fl", 16 << 20, &["--object-size", "256K"]);
    scribble(&a, &img, 7);
    let r = sync_cli(&a, &b, &img, &[]);
    let base = r["imported"]["to_snap"].as_str().unwrap().to_string();
    let spec = format!("rbd/{img}");
    let at_base = b.export_sha256(&format!("{img}@{base}"));

    scribble(&a, &img, 8);
    let fake = fake_rbd(root.path(), "rbd-cut", "head -c 300000 | rbd \"$@\"");
    let opts = SyncOptions {
        src: Rbd {
            conf: Some(a.conf().to_path_buf()),
            ..Rbd::default()
        },
        dst: Rbd {
            program: fake,
            conf: Some(b.conf().to_path_buf()),
            ..Rbd::default()
        },
        ..SyncOptions::default()
    };
    let src_before = a.snapshots(&img);
    let e = sync(&spec, &spec, &opts).unwrap_err();
    assert!(e.to_string().contains("import-diff"), "{e}");
    assert_eq!(b.snapshots(&img), [base.as_str()]);
    assert_eq!(b.export_sha256(&img), at_base, "HEAD rolled back");
    assert_eq!(
        a.snapshots(&img),
        src_before,
        "the source snapshot made is removed"
    );
    let r = sync_cli(&a, &b, &img, &[]);
    assert_eq!(r["base"], base.as_str(), "{r}");
    same_snapshots(&a, &b, &img);

    // kill -9 of a slow sync in the middle of its import.
    let base = r["imported"]["to_snap"].as_str().unwrap().to_string();
    let recs: Vec<_> = (0..256).map(|i| (i * 16, 16, Some(77 + i))).collect();
    write_records(&a, &img, &recs);
    let (ca, cb) = (conf(&a), conf(&b));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(["sync", &spec, &spec, "--src-conf", &ca, "--dst-conf", &cb])
        .args(["--limit-rate", "1M", "-q"])
        .env_remove("CEPH_CONF")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3000));
    assert!(
        child.try_wait().unwrap().is_none(),
        "sync ended before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed run's rbd import-diff sees its stdin close and fails.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(b.snapshots(&img).last(), Some(&base));
    assert_ne!(
        b.export_sha256(&img),
        b.export_sha256(&format!("{img}@{base}")),
        "the killed import wrote part of its diff"
    );
    let r = sync_cli(&a, &b, &img, &[]);
    assert_eq!(r["base"], base.as_str(), "{r}");
    let w = r["warnings"].to_string();
    assert!(w.contains("rolled back"), "{r}");
    same_snapshots(&a, &b, &img);

    // Two syncs into the same destination at once: the second is refused (exit 2, naming
    // the image) without touching either side; with --wait it waits for the first and
    // carries its own snapshot on top.
    let recs: Vec<_> = (0..64).map(|i| (i * 16, 16, Some(500 + i))).collect();
    write_records(&a, &img, &recs);
    let slow = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rbddiff"))
            .args(["sync", &spec, &spec, "--src-conf", &ca, "--dst-conf", &cb])
            .args(extra)
            .env_remove("CEPH_CONF")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = slow(&["--limit-rate", "1M", "--json"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let src_during = a.snapshots(&img);
    let err = fails(&["sync", &spec, &spec, "--src-conf", &ca, "--dst-conf", &cb]);
    assert!(
        err.contains("another sync or replay") && err.contains(&spec),
        "{err}"
    );
    assert_eq!(
        a.snapshots(&img),
        src_during,
        "the refused run made no snapshot"
    );
    let second = slow(&["--wait", "2m", "--json"]);
    let one = first.wait_with_output().unwrap();
    assert!(one.status.success(), "{one:?}");
    let two = second.wait_with_output().unwrap();
    assert!(two.status.success(), "{two:?}");
    let r1: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    let r2: serde_json::Value = serde_json::from_slice(&two.stdout).unwrap();
    assert_eq!(r2["base"], r1["imported"]["to_snap"], "{r1} {r2}");
    same_snapshots(&a, &b, &img);
    a.remove_image(&img);
    b.remove_image(&img);

    // A full import that fails into an existing image without data or snapshots: the image
    // is emptied again (no snapshot, no data, its size before), so nothing passes for a
    // replica, and a rerun imports the full diff into it.
    let img = a.create_image("empty", 4 << 20);
    // Many short records: the import dies after writing some of them.
    let recs: Vec<_> = (0..96).map(|i| (i * 8, 4, Some(90 + i))).collect();
    write_records(&a, &img, &recs);
    let spec = format!("rbd/{img}");
    b.rbd_ok(["create", "--size", "2M", &spec]);
    let e = sync(&spec, &spec, &opts).unwrap_err();
    assert!(e.to_string().contains("import-diff"), "{e}");
    assert!(b.snapshots(&img).is_empty());
    let d = b.rbd_ok(["diff", "--format", "json", &spec]);
    let d: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    assert_eq!(d, serde_json::json!([]), "data left in {spec}");
    assert_eq!(size_of(&b, &img), 2 << 20);
    assert!(
        a.snapshots(&img).is_empty(),
        "the source snapshot made is removed"
    );
    let r = sync_cli(&a, &b, &img, &[]);
    assert!(r["base"].is_null(), "{r}");
    assert_eq!(r["created"], false, "{r}");
    assert_eq!(same_snapshots(&a, &b, &img).len(), 1);
    a.remove_image(&img);
    b.remove_image(&img);
}

/// Two images synced at the same time; --limit-rate holds the rate within 10 %.
fn parallel_and_rate(a: Arc<Cluster>, b: Arc<Cluster>) {
    let imgs: Vec<String> = (0..2).map(|_| a.create_image("par", 8 << 20)).collect();
    for (i, img) in imgs.iter().enumerate() {
        scribble(&a, img, 20 + i as u64);
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = imgs
            .iter()
            .map(|img| {
                let (a, b) = (&a, &b);
                s.spawn(move || sync_cli(a, b, img, &[]))
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    for img in &imgs {
        same_snapshots(&a, &b, img);
        a.remove_image(img);
        b.remove_image(img);
    }

    // sync --pool: the images selected by a glob, two at a time; one that fails (its
    // destination holds data and no common snapshot) does not stop the others.
    let pre = a.unique_name("pool");
    let names: Vec<String> = (0..3).map(|i| format!("{pre}-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        a.rbd_ok(["create", "--size", "2M", &format!("rbd/{n}")]);
        scribble(&a, n, 40 + i as u64);
    }
    b.rbd_ok(["create", "--size", "2M", &format!("rbd/{}", names[2])]);
    scribble(&b, &names[2], 50);
    let (ca, cb) = (conf(&a), conf(&b));
    let glob = format!("{pre}-*");
    let args = ["sync", "--pool", "rbd", "--images", &glob, "--jobs", "2"];
    let out = rbddiff(&[&args[..], &["--src-conf", &ca, "--dst-conf", &cb, "--json"]].concat());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["failed"], 1, "{r}");
    let list = r["images"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{r}");
    assert!(
        list[2]["error"]
            .as_str()
            .unwrap()
            .contains("no snapshot in common"),
        "{r}"
    );
    for n in &names[..2] {
        assert_eq!(same_snapshots(&a, &b, n).len(), 1);
    }
    for n in &names {
        a.remove_image(n);
        b.remove_image(n);
    }

    // Some tens of MiB at 16 MiB/s.
    let img = a.create_image("rate", 48 << 20);
    write_records(&a, &img, &[(0, 10240, Some(5))]);
    let t0 = std::time::Instant::now();
    let r = sync_cli(&a, &b, &img, &["--limit-rate", "16M", "--verify", "none"]);
    let wall = t0.elapsed().as_secs_f64();
    let bytes = r["imported"]["bytes"].as_u64().unwrap() as f64;
    let secs = r["imported"]["seconds"].as_f64().unwrap();
    assert!(bytes > 40.0 * 1048576.0, "{r}");
    let rate = bytes / secs / 1048576.0;
    assert!((14.4..=17.6).contains(&rate), "{rate} MiB/s: {r}");
    assert!(wall >= bytes / (16.0 * 1048576.0) * 0.9, "{wall} s");
    same_snapshots(&a, &b, &img);
    a.remove_image(&img);
    b.remove_image(&img);
}

/// `sync --archive` writes the diffs it carries into an archive, as backups: a replay of that
/// archive elsewhere gives the same snapshots, and a backup continues from the sync's
/// snapshot.
fn sync_with_archive(a: Arc<Cluster>, b: Arc<Cluster>) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("arch");
    let d = dir.to_string_lossy().into_owned();
    let img = a.create_image("ar", 4 << 20);
    scribble(&a, &img, 30);
    let r1 = sync_cli(&a, &b, &img, &["--archive", &d]);
    let f1 = r1["archive_file"].as_str().unwrap().to_string();
    assert!(f1.ends_with(".full.diff"), "{r1}");
    assert!(Path::new(&format!("{f1}.sums")).exists());
    scribble(&a, &img, 31);
    let r2 = sync_cli(&a, &b, &img, &["--archive", &d]);
    assert!(r2["warnings"].as_array().unwrap().is_empty(), "{r2}");
    let s2 = r2["imported"]["to_snap"].as_str().unwrap().to_string();
    // The archive verifies, and replays into another image with the same bytes.
    ok(&["verify", &d]);
    let other = b.unique_name("arcopy");
    let cb = conf(&b);
    let ospec = format!("rbd/{other}");
    let r = ok(&[
        "replay",
        &d,
        &ospec,
        "-c",
        &cb,
        "--create",
        "--from-image",
        &img,
    ]);
    assert_eq!(r["imported"].as_array().unwrap().len(), 2, "{r}");
    for s in b.snapshots(&other) {
        assert_eq!(
            a.export_sha256(&format!("{img}@{s}")),
            b.export_sha256(&format!("{other}@{s}"))
        );
    }
    // verify --replica, by diff and by sha256.
    let (ca, spec) = (conf(&a), format!("rbd/{img}"));
    let args = [
        "verify",
        "--replica",
        &spec,
        &spec,
        "--src-conf",
        &ca,
        "--dst-conf",
        &cb,
    ];
    let r = ok(&args);
    assert_eq!(r["same"], true, "{r}");
    assert_eq!(r["to_snap"], s2.as_str(), "{r}");
    assert!(r["from_snap"].is_string(), "{r}");
    let mut full = args.to_vec();
    full.extend(["--replica-check", "full"]);
    let r = ok(&full);
    assert_eq!(r["check"]["sha256"].as_str().unwrap().len(), 64, "{r}");
    // Images with a snapshot of the same name but other content differ: exit 1.
    let x = a.create_image("vx", 1 << 20);
    b.rbd_ok(["create", "--size", "1M", &format!("rbd/{x}")]);
    write_records(&a, &x, &[(3, 2, Some(1))]);
    write_records(&b, &x, &[(3, 2, Some(2))]);
    for c in [&a, &b] {
        c.rbd_ok(["snap", "create", &format!("rbd/{x}@s")]);
    }
    let xs = format!("rbd/{x}");
    let out = rbddiff(&[
        "verify",
        "--replica",
        &xs,
        &xs,
        "--src-conf",
        &ca,
        "--dst-conf",
        &cb,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DIFFERENT"),
        "{out:?}"
    );
    a.remove_image(&x);
    b.remove_image(&x);
    // A backup into the archive is an incremental from the sync's snapshot.
    scribble(&a, &img, 32);
    let r = ok(&["backup", &spec, &d, "-c", &ca]);
    assert_eq!(r["from_snap"], s2.as_str(), "{r}");
    a.remove_image(&img);
    b.remove_image(&img);
    b.remove_image(&other);
}
