//! `kill -9` of a running `prune` at random points: the directory never holds a fork that
//! stops the next command, the image at the chain's end stays restorable, and a rerun finishes
//! the job (the half-done prune's journal, then the stale temporary files). A policy prune
//! that writes three merged files (a full and two incrementals) keeps every kept snapshot
//! restorable whenever it is killed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gen::{noise, path_str as s, restored_sha256, write_sparse, Rng};
use common::manifest::sha256_file;
use rbddiff::create::{create_diff, CreateOptions};
use rbddiff::workflow::{discover_chain, file_name};

/// A chain of four 8 MiB-ish diffs of image `vm` in `dir`, with sidecars; returns the sha256
/// of the last image state.
fn chain(dir: &Path, work: &Path) -> String {
    chain_of(dir, work, 4).pop().unwrap()
}

/// A chain of `n` diffs (`s0` … `s{n-1}`) as [`chain`] makes; returns the sha256 of each
/// image state.
fn chain_of(dir: &Path, work: &Path, n: usize) -> Vec<String> {
    let mut rng = Rng::new(3);
    let mut cur = vec![0u8; 24 << 20];
    let mut prev: Option<PathBuf> = None;
    let mut shas = Vec::new();
    for k in 0..n {
        for _ in 0..8 {
            let at = rng.below(cur.len() as u64 - (1 << 20)) as usize;
            cur[at..at + (1 << 20)].copy_from_slice(&noise(rng.next(), 1 << 20));
        }
        let raw = work.join(format!("raw{k}"));
        write_sparse(&raw, &cur);
        let (from, to) = ((k > 0).then(|| format!("s{}", k - 1)), format!("s{k}"));
        let path = dir.join(file_name("vm", from.as_deref(), &to, false));
        let opts = CreateOptions {
            to_snap: Some(to),
            base: prev.clone(),
            from_snap: from,
            ..CreateOptions::default()
        };
        create_diff(&raw, &s(&path), &opts).unwrap();
        rbddiff::sums::write_sums_for(&path).unwrap();
        shas.push(sha256_file(&raw));
        prev = Some(raw);
    }
    shas
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        // With the modification times: without a catalog they are the backup times, which
        // --keep-last goes by.
        let t = to.join(e.file_name());
        fs::copy(e.path(), &t).unwrap();
        let m = e.metadata().unwrap().modified().unwrap();
        fs::File::options()
            .write(true)
            .open(&t)
            .unwrap()
            .set_modified(m)
            .unwrap();
    }
}

fn prune_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbddiff"));
    c.args(["prune", &s(dir), "--image", "vm", "--keep", "1"]);
    c
}

#[test]
fn prune_killed_at_random_points_leaves_a_usable_directory() {
    let t = tempfile::tempdir().unwrap();
    let (pristine, dir, work) = (t.path().join("p"), t.path().join("d"), t.path().join("w"));
    for d in [&pristine, &work] {
        fs::create_dir_all(d).unwrap();
    }
    let want = chain(&pristine, &work);
    // How long a whole prune takes here.
    copy_dir(&pristine, &dir);
    let t0 = Instant::now();
    assert!(prune_cmd(&dir).status().unwrap().success());
    let full = t0.elapsed();
    assert_eq!(restored_sha256(&dir, "vm", &work), want);
    let mut rng = Rng::new(17);
    let (mut killed, mut half_done) = (0, 0);
    let mut rounds = 0;
    for round in 0..40 {
        if round >= 16 && half_done >= 2 {
            break;
        }
        rounds += 1;
        copy_dir(&pristine, &dir);
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 6 / 5 + 1));
        let mut child = prune_cmd(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed += 1;
        }
        let files = fs::read_dir(&dir).unwrap().count();
        if discover_chain(&dir, "vm").is_ok_and(|c| c.len() == 1)
            && fs::read_dir(&dir).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".prune-journal")
            })
        {
            half_done += 1;
        }
        // Whatever the kill left: the chain is found and restores the image.
        assert_eq!(
            restored_sha256(&dir, "vm", &work),
            want,
            "round {round} ({delay:?}, {files} files)"
        );
        // A rerun finishes the job and leaves one full diff, its sidecar and the lock file.
        let o = prune_cmd(&dir).output().unwrap();
        assert!(o.status.success(), "round {round}: {o:?}");
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [".rbddiff.lock", "vm@s3.full.diff", "vm@s3.full.diff.sums"],
            "round {round} ({delay:?})"
        );
        assert_eq!(
            restored_sha256(&dir, "vm", &work),
            want,
            "round {round}, after the rerun"
        );
    }
    eprintln!("{killed} of {rounds} runs killed, {half_done} between commit and deletion");
    assert!(
        killed >= 4,
        "the kills landed too late to test anything: {killed}"
    );
    assert!(
        half_done >= 1,
        "no kill landed between the commit and the deletions"
    );
}

/// The sha256 of snapshot `snap` of `vm` restored offline from `dir`.
fn restored_snap(dir: &Path, snap: &str, work: &Path) -> Result<String, String> {
    let target = work.join("snap.raw");
    let _ = fs::remove_file(&target);
    let opts = rbddiff::workflow::FileRestoreOptions {
        image: Some("vm".into()),
        snap: Some(snap.into()),
        ..Default::default()
    };
    rbddiff::workflow::restore_to_file(dir, &target, &opts, &mut |_, _| {})
        .map_err(|e| e.to_string())?;
    let sha = sha256_file(&target);
    let _ = fs::remove_file(&target);
    Ok(sha)
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn policy_prune_killed_at_random_points_keeps_every_kept_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let (pristine, dir, work) = (t.path().join("p"), t.path().join("d"), t.path().join("w"));
    for d in [&pristine, &work] {
        fs::create_dir_all(d).unwrap();
    }
    let shas = chain_of(&pristine, &work, 6);
    // Two backups a day (UTC) for three days: --keep-daily 3 keeps s1, s3, s5, the newest of
    // each day; the prune writes a full to s1 and the incrementals s1..s3 and s3..s5.
    let day0 = 1_767_571_200u64;
    for k in 0..6u64 {
        let from = (k > 0).then(|| format!("s{}", k - 1));
        let name = file_name("vm", from.as_deref(), &format!("s{k}"), false);
        let rec = rbddiff::archive::catalog::Record {
            image_id: Some("id1".into()),
            time: Some(day0 + (k / 2) * 86_400 + (k % 2) * 3600),
            ..Default::default()
        };
        rbddiff::archive::catalog::record(&pristine, &name, rec).unwrap();
    }
    let kept = ["s1", "s3", "s5"];
    let prune = |dir: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbddiff"));
        c.args(["prune", &s(dir), "--keep-daily", "3", "--json"]);
        c
    };
    let done = [
        ".rbddiff-catalog.json",
        ".rbddiff.lock",
        "vm@s1..s3.diff",
        "vm@s1..s3.diff.sums",
        "vm@s1.full.diff",
        "vm@s1.full.diff.sums",
        "vm@s3..s5.diff",
        "vm@s3..s5.diff.sums",
    ];
    copy_dir(&pristine, &dir);
    let t0 = Instant::now();
    let o = prune(&dir).output().unwrap();
    let full = t0.elapsed();
    assert!(o.status.success(), "{o:?}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["kept_snapshots"], serde_json::json!(kept), "{r}");
    assert_eq!(r["merges"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(names_in(&dir), done);
    let check = |dir: &Path, what: &str| {
        for (k, snap) in [(1, "s1"), (3, "s3"), (5, "s5")] {
            assert_eq!(
                restored_snap(dir, snap, &work).as_ref(),
                Ok(&shas[k]),
                "{what}: {snap}"
            );
        }
    };
    check(&dir, "after a whole prune");
    let mut rng = Rng::new(29);
    let (mut killed, mut half_done) = (0, 0);
    for round in 0..24 {
        copy_dir(&pristine, &dir);
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 6 / 5 + 1));
        let mut child = prune(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        if !child.wait().unwrap().success() {
            killed += 1;
        }
        let files = names_in(&dir);
        if files.iter().any(|n| n.ends_with(".prune-journal")) {
            half_done += 1;
        }
        check(&dir, &format!("round {round} ({delay:?}, {files:?})"));
        // A rerun completes the job.
        let o = prune(&dir).output().unwrap();
        assert!(o.status.success(), "round {round}: {o:?}");
        assert_eq!(names_in(&dir), done, "round {round} ({delay:?})");
        check(&dir, &format!("round {round}, after the rerun"));
    }
    eprintln!("{killed} of 24 runs killed, {half_done} with a journal left");
    assert!(
        killed >= 4,
        "the kills landed too late to test anything: {killed}"
    );
    assert!(half_done >= 1, "no kill landed while the journal was there");
}

/// `kill -9` of a running `backup` (a fake `rbd`, [`common::fakerbd`]) at random points over
/// 30 rounds: every snapshot restorable before stays restorable (to the image the cluster held
/// then), no file that discovery takes for a backup is partial, the catalog stays readable,
/// a rerun completes on the newest snapshot that is both on the cluster and restorable (a
/// snapshot the killed run made but did not archive is harmless), and a later `prune` leaves
/// no temporary file.
#[test]
fn backup_killed_at_random_points_leaves_every_snapshot_restorable() {
    use common::fakerbd::{restorable, restored, FakeCluster};
    let t = tempfile::tempdir().unwrap();
    let (dir, work) = (t.path().join("backups"), t.path().join("work"));
    fs::create_dir_all(&work).unwrap();
    let ds = s(&dir);
    let cluster = FakeCluster::new(&t.path().join("bin"), 8 << 20);
    let mut rng = Rng::new(29);
    let backup = |json: bool| {
        let mut c = cluster.rbddiff(&["backup", "rbd/vm", &ds]);
        if json {
            c.arg("--json");
        }
        c
    };
    // Two backups to start with; the second one timed.
    assert!(backup(false).output().unwrap().status.success());
    cluster.write(&mut rng);
    let t0 = Instant::now();
    assert!(backup(false).output().unwrap().status.success());
    let full = t0.elapsed();
    let (mut killed, mut orphans, mut temps, mut archived) = (0, 0, 0, 0);
    for round in 0..30 {
        cluster.write(&mut rng);
        let before = restorable(&dir);
        let snaps_before = cluster.snapshots().len();
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 6 / 5 + 1));
        let mut child = backup(false)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        if !child.wait().unwrap().success() {
            killed += 1;
        }
        // A killed run's `rbd` child may still be finishing its call.
        std::thread::sleep(Duration::from_millis(20));
        let after = restorable(&dir);
        for s in &before {
            assert!(after.contains(s), "round {round} ({delay:?}): {s} lost");
        }
        if after.len() > before.len() {
            archived += 1;
        }
        // Nothing partial is taken for a backup; every restorable snapshot restores.
        let g = rbddiff::archive::graph::discover(&dir, "vm").unwrap();
        assert!(
            g.unreadable.is_empty() && g.damaged().is_empty(),
            "round {round} ({delay:?}): {:?} {:?}",
            g.unreadable,
            g.damaged()
        );
        for s in &after {
            assert_eq!(
                restored(&dir, &work, s),
                cluster.snap_sha256(s),
                "round {round} ({delay:?}): {s}"
            );
        }
        rbddiff::archive::catalog::read(&dir).unwrap();
        let on_cluster = cluster.snapshots();
        if on_cluster.len() > snaps_before && after.len() == before.len() {
            orphans += 1;
        }
        if fs::read_dir(&dir)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        {
            temps += 1;
        }
        // The rerun's base: the newest snapshot on the cluster that is restorable.
        let base = on_cluster
            .iter()
            .rev()
            .find(|(_, n)| after.contains(n))
            .map(|(_, n)| n.clone());
        let o = backup(true).output().unwrap();
        assert!(o.status.success(), "round {round}: {o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let r = &v;
        assert_eq!(
            r["from_snap"].as_str().map(String::from),
            base,
            "round {round}: {v}"
        );
        let made = r["to_snap"].as_str().unwrap();
        assert_eq!(restored(&dir, &work, made), cluster.snap_sha256(made));
        // A prune afterwards: no temporary file is left, the newest snapshots restore.
        let o = cluster
            .rbddiff(&["prune", &ds, "--image", "vm", "--keep", "3"])
            .output()
            .unwrap();
        assert!(o.status.success(), "round {round}: {o:?}");
        for e in fs::read_dir(&dir).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !n.starts_with('.') || n == ".rbddiff.lock" || n == ".rbddiff-catalog.json",
                "round {round}: {n} left"
            );
        }
        let kept = restorable(&dir);
        assert_eq!(
            kept.len(),
            3.min(after.len() + 1),
            "round {round}: {kept:?}"
        );
        assert_eq!(kept.last().map(String::as_str), Some(made), "round {round}");
    }
    eprintln!(
        "{killed} of 30 backups killed; {archived} had archived their file, {orphans} left \
         a snapshot on the cluster only, {temps} a temporary file"
    );
    assert!(
        killed >= 10,
        "the kills landed too late to test anything: {killed}"
    );
    assert!(
        orphans + temps >= 1,
        "no kill landed between the snapshot and the commit"
    );
}

/// A snapshot that a killed `backup` made on the cluster but never archived (the newest on
/// the cluster) is harmless: the next backup bases its incremental on the newest snapshot
/// that is both on the cluster and restorable, and `--keep-snaps` removes the orphan in time
/// like any other snapshot of the archive, never the newest restorable one.
#[test]
fn a_snapshot_a_killed_backup_left_on_the_cluster_is_harmless() {
    use common::fakerbd::{restorable, restored, FakeCluster};
    let t = tempfile::tempdir().unwrap();
    let (dir, work) = (t.path().join("backups"), t.path().join("work"));
    fs::create_dir_all(&work).unwrap();
    let ds = s(&dir);
    let cluster = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let mut rng = Rng::new(31);
    let backup = |extra: &[&str]| {
        let o = cluster
            .rbddiff(&["backup", "rbd/vm", &ds, "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v
    };
    let a = backup(&[]);
    cluster.write(&mut rng);
    let b = backup(&[]);
    let tag = &a["archive_id"].as_str().unwrap()[..8];
    let orphan = format!("rbddiff-{tag}-20261203T150000.000000000Z");
    let o = Command::new(cluster.bin.join("rbd"))
        .args(["snap", "create", &format!("rbd/vm@{orphan}")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    cluster.write(&mut rng);
    let c = backup(&["--keep-snaps", "2"]);
    assert_eq!(c["from_snap"], b["to_snap"], "{c}");
    let cs = c["to_snap"].as_str().unwrap();
    assert_eq!(restorable(&dir).last().map(String::as_str), Some(cs));
    assert_eq!(restored(&dir, &work, cs), cluster.snap_sha256(cs));
    cluster.write(&mut rng);
    let d = backup(&["--keep-snaps", "2"]);
    assert_eq!(d["from_snap"], c["to_snap"], "{d}");
    let on: Vec<String> = cluster.snapshots().into_iter().map(|(_, n)| n).collect();
    assert_eq!(on, [cs, d["to_snap"].as_str().unwrap()], "{d}");
    for s in restorable(&dir) {
        assert_eq!(restored(&dir, &work, &s), cluster.snap_sha256(&s), "{s}");
    }
}
