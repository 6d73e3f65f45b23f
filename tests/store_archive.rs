#![cfg(feature = "s3")]
//! Archive commands over the storage trait, offline: the in-memory object store and a
//! directory store, with the fake rbd of tests/common/fakerbd.rs.

mod common;

use std::io::Read;
use std::path::Path;

use common::fakerbd::{restorable, restored, FakeCluster};
use common::gen::Rng;
use rbddiff::archive::lease::{acquire, holder, LockOptions};
use rbddiff::archive::remote;
use rbddiff::archive::store::{DirStore, FailPoint, ObjStore, S3Config, Store};
use rbddiff::workflow::{BackupOptions, Rbd};
use rbddiff::ErrorKind;

fn opts(c: &FakeCluster) -> BackupOptions {
    BackupOptions {
        rbd: Rbd {
            program: c.bin.join("rbd"),
            ..Rbd::default()
        },
        ..BackupOptions::default()
    }
}

/// Copies every object of `store` into the directory `dir`.
fn download(store: &dyn Store, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for o in store.list("").unwrap() {
        let mut b = Vec::new();
        store
            .reader(&o.name, o.size)
            .unwrap()
            .read_to_end(&mut b)
            .unwrap();
        std::fs::write(dir.join(&o.name), b).unwrap();
    }
}

/// Flips bits of the byte `back` bytes before the end of object `name` (same length: only
/// its content tells); returns the object's bytes as they were.
fn damage(store: &dyn Store, name: &str, back: usize) -> Vec<u8> {
    let good = store.read_small(name, 1 << 30).unwrap().unwrap();
    let mut bad = good.clone();
    let at = bad.len() - back;
    bad[at] ^= 0x18;
    store.put_small(name, &bad).unwrap();
    good
}

fn names(store: &dyn Store) -> Vec<String> {
    store
        .list("")
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect()
}

#[test]
fn backups_into_an_object_store_restore_every_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let c = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let store = ObjStore::memory(&S3Config::default()).unwrap();
    let mut rng = Rng::new(7);
    let mut snaps = Vec::new();
    for k in 0..3 {
        let mut o = opts(&c);
        o.compress = (k == 2).then(Default::default);
        let r = remote::backup("rbd/vm", &store, &o, false).unwrap();
        assert_eq!(r.from_snap.is_none(), k == 0, "{r:?}");
        assert!(r.file.starts_with("memory://archive/vm@"), "{}", r.file);
        snaps.push(r.to_snap);
        c.write(&mut rng);
    }
    // Nothing but the files, their sidecars and the catalog; no lock, no upload marker.
    let n = names(&store);
    assert_eq!(n.len(), 7, "{n:?}");
    assert!(n.contains(&".rbddiff-catalog.json".to_string()));
    let l = remote::list(&store, None).unwrap();
    let got: Vec<&str> = l.images[0]
        .snapshots
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(got, snaps.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(l.images[0].snapshots[0].time_from, "catalog");
    let v = remote::verify(&store, None).unwrap();
    assert_eq!((v.files.len(), v.findings.len()), (3, 0), "{v:?}");
    assert!(v.files.iter().all(|f| f.valid && f.sums == "ok"), "{v:?}");
    // Restored offline straight from the store, each snapshot is what the image held; an
    // interrupted restore is finished by the same call.
    for s in &snaps {
        let raw = t.path().join(format!("{s}.raw"));
        let fopts = rbddiff::workflow::FileRestoreOptions {
            snap: Some(s.clone()),
            ..Default::default()
        };
        let r = remote::restore_to_file(&store, &raw, &fopts, &mut |_, _| {}).unwrap();
        assert!(r.created && r.snap == *s, "{r:?}");
        assert_eq!(common::manifest::sha256_file(&raw), c.snap_sha256(s), "{s}");
        let again = remote::restore_to_file(&store, &raw, &fopts, &mut |_, _| {}).unwrap();
        assert!(!again.created, "{again:?}");
        assert_eq!(common::manifest::sha256_file(&raw), c.snap_sha256(s), "{s}");
    }
    assert!(remote::restore_to_file(
        &store,
        &t.path().join("none.raw"),
        &rbddiff::workflow::FileRestoreOptions {
            snap: Some("no-such-snapshot".into()),
            ..Default::default()
        },
        &mut |_, _| {}
    )
    .is_err());
    // The objects are an ordinary archive: every snapshot restores to what it held.
    let dir = t.path().join("copy");
    download(&store, &dir);
    assert_eq!(restorable(&dir), snaps);
    for s in &snaps {
        assert_eq!(restored(&dir, t.path(), s), c.snap_sha256(s), "{s}");
    }
    // A damaged object is found by verify (same length: only the content tells).
    let name = n.iter().find(|n| n.ends_with(".full.diff")).unwrap();
    let mut b = store.read_small(name, 1 << 30).unwrap().unwrap();
    let at = b.len() / 2;
    b[at] ^= 1;
    store.put_small(name, &b).unwrap();
    let v = remote::verify(&store, None).unwrap();
    assert_eq!(v.findings.len(), 1, "{v:?}");
    assert_eq!((v.findings[0].check, v.ok()), ("sums", false), "{v:?}");
    assert_eq!(
        v.files.iter().filter(|f| f.sums == "mismatch").count(),
        1,
        "{v:?}"
    );
    // One byte more: its sidecar no longer describes it, and list says so.
    b.push(0);
    store.put_small(name, &b).unwrap();
    let l = remote::list(&store, None).unwrap();
    assert_eq!(l.images[0].unhealthy.len(), 1, "{:?}", l.images[0]);
    assert!(l.images[0].snapshots.is_empty());
}

#[test]
fn failed_uploads_leave_no_backup_and_remove_the_snapshot() {
    let t = tempfile::tempdir().unwrap();
    // A full diff of about 12 MiB: three parts of 5 MiB.
    let c = FakeCluster::new(&t.path().join("bin"), 12 << 20);
    let cfg = S3Config {
        part_size: Some(5 << 20),
        parts_in_flight: Some(2),
        ..S3Config::default()
    };
    let store = ObjStore::memory(&cfg).unwrap();
    for f in [FailPoint::Part(1), FailPoint::Complete] {
        store.fail_at(Some(f));
        let e = remote::backup("rbd/vm", &store, &opts(&c), false).unwrap_err();
        assert!(e.to_string().contains("failed"), "{f:?}: {e}");
        let n = names(&store);
        assert_eq!(n, [".rbddiff-catalog.json"], "{f:?}");
        assert!(c.snapshots().is_empty(), "{f:?}: {:?}", c.snapshots());
        assert!(remote::list(&store, None).unwrap().images.is_empty());
    }
    store.fail_at(None);
    let r = remote::backup("rbd/vm", &store, &opts(&c), false).unwrap();
    assert!(r.file_bytes > 10 << 20, "{r:?}");
    // The failures are recorded for status, the success after them too.
    let cat = store
        .read_small(".rbddiff-catalog.json", 1 << 20)
        .unwrap()
        .unwrap();
    let cat: serde_json::Value = serde_json::from_slice(&cat).unwrap();
    assert_eq!(cat["images"]["vm"]["last_ok"], true);
    assert!(cat["images"]["vm"]["failure"].is_u64());
}

#[test]
fn a_held_lock_refuses_a_backup_until_broken_or_expired() {
    let t = tempfile::tempdir().unwrap();
    let c = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let store = ObjStore::memory(&S3Config::default()).unwrap();
    let (other, _) = acquire(&store, &LockOptions::new("prune", None, false)).unwrap();
    let e = remote::backup("rbd/vm", &store, &opts(&c), false).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Locked(_)), "{e}");
    assert!(e.to_string().contains("prune"), "{e}");
    assert!(c.snapshots().is_empty());
    // --break-lock takes it, and the lock is gone afterwards.
    remote::backup("rbd/vm", &store, &opts(&c), true).unwrap();
    assert_eq!(holder(&store).unwrap(), None);
    // An expired lease is broken without being asked.
    let mut stale = other;
    stale.expires = 1;
    store
        .put_small(".rbddiff-lock.json", &serde_json::to_vec(&stale).unwrap())
        .unwrap();
    remote::backup("rbd/vm", &store, &opts(&c), false).unwrap();
    assert_eq!(
        remote::list(&store, None).unwrap().images[0]
            .snapshots
            .len(),
        2
    );
}

#[test]
fn a_directory_store_writes_an_ordinary_archive() {
    let t = tempfile::tempdir().unwrap();
    let c = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let dir = t.path().join("arch");
    let store = DirStore::new(&dir);
    let mut rng = Rng::new(3);
    let mut snaps = Vec::new();
    for _ in 0..2 {
        snaps.push(
            remote::backup("rbd/vm", &store, &opts(&c), false)
                .unwrap()
                .to_snap,
        );
        c.write(&mut rng);
    }
    // The directory commands read it as their own.
    assert_eq!(restorable(&dir), snaps);
    let l = rbddiff::archive::listing::list(&dir, None, None).unwrap();
    assert_eq!(l.images[0].snapshots.len(), 2);
    assert!(l.images[0].files.iter().all(|f| f.sums.as_str() == "ok"));
    for s in &snaps {
        assert_eq!(restored(&dir, t.path(), s), c.snap_sha256(s));
    }
    // A diff whose sidecar never came (a kill between the two commits) is removed by the
    // next backup, under the lock.
    let left = dir.join("vm@stray.full.diff");
    std::fs::copy(dir.join(format!("vm@{}.full.diff", snaps[0])), &left).unwrap();
    let r = remote::backup("rbd/vm", &store, &opts(&c), false).unwrap();
    assert_eq!(r.cleaned, [left.display().to_string()]);
    assert!(!left.exists());
}

#[test]
fn prune_of_an_object_store_keeps_its_snapshots_restorable() {
    let t = tempfile::tempdir().unwrap();
    let c = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let store = ObjStore::memory(&S3Config::default()).unwrap();
    let mut rng = Rng::new(11);
    let mut snaps = Vec::new();
    for k in 0..5 {
        let mut o = opts(&c);
        o.compress = (k % 2 == 1).then(Default::default);
        snaps.push(remote::backup("rbd/vm", &store, &o, false).unwrap().to_snap);
        c.write(&mut rng);
    }
    let popts = |last| rbddiff::workflow::PruneOptions {
        policy: rbddiff::archive::policy::Policy {
            last,
            ..Default::default()
        },
        ..Default::default()
    };
    // A failed upload of the merged file changes nothing.
    let before = names(&store);
    store.fail_at(Some(FailPoint::Complete));
    assert!(remote::prune(&store, &popts(2), false, &mut |_, _| {}).is_err());
    store.fail_at(None);
    assert_eq!(names(&store), before);
    // A damaged input (same length: only its content tells) fails the merge: nothing is
    // deleted, and no merged file is left.
    let full = before.iter().find(|n| n.ends_with(".full.diff")).unwrap();
    let good = damage(&store, full, 1000);
    let e = remote::prune(&store, &popts(2), false, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
    assert_eq!(names(&store), before);
    store.put_small(full, &good).unwrap();
    let r = remote::prune(&store, &popts(2), false, &mut |_, _| {}).unwrap();
    assert_eq!(r.kept_snapshots, snaps[3..]);
    assert_eq!(r.merges.len(), 1, "{r:?}");
    assert!(!r.deleted.is_empty());
    let l = remote::list(&store, None).unwrap();
    let kept: Vec<&str> = l.images[0]
        .snapshots
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(kept, [snaps[3].as_str(), snaps[4].as_str()]);
    assert!(remote::verify(&store, None).unwrap().ok());
    let dir = t.path().join("copy");
    download(&store, &dir);
    for s in &snaps[3..] {
        assert_eq!(restored(&dir, t.path(), s), c.snap_sha256(s), "{s}");
    }
    assert_eq!(holder(&store).unwrap(), None);
}

#[test]
fn copy_directory_to_object_store_and_back_is_byte_identical() {
    let t = tempfile::tempdir().unwrap();
    let c = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let src = t.path().join("src");
    let mut rng = Rng::new(5);
    // Written by the directory backup itself.
    for k in 0..3 {
        let mut o = opts(&c);
        o.compress = (k == 1).then(Default::default);
        rbddiff::workflow::backup("rbd/vm", &src, &o).unwrap();
        c.write(&mut rng);
    }
    let store = ObjStore::memory(&S3Config::default()).unwrap();
    let copts = remote::CopyOptions::default();
    let r = remote::copy(&DirStore::new(&src), &store, &copts).unwrap();
    assert_eq!((r.copied.len(), r.passed_over.len()), (3, 0), "{r:?}");
    // Again: nothing to do.
    let r = remote::copy(&DirStore::new(&src), &store, &copts).unwrap();
    assert_eq!((r.copied.len(), r.present.len()), (0, 3), "{r:?}");
    assert_eq!(
        remote::list(&store, None).unwrap().images[0]
            .snapshots
            .len(),
        3
    );
    let back = t.path().join("back");
    let r = remote::copy(&store, &DirStore::new(&back), &copts).unwrap();
    assert_eq!(r.copied.len(), 3);
    let files = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("vm@")
            })
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (a, b) = (files(&src), files(&back));
    assert_eq!(a.len(), 6);
    assert!(a == b, "the copies differ");
    // The catalog went along: the snapshots' times are the backups'.
    let l = rbddiff::archive::listing::list(&back, None, None).unwrap();
    assert!(l.images[0]
        .snapshots
        .iter()
        .all(|s| s.time_from == "catalog"));
    // A different file of the same name at the destination stops the copy.
    let name = &a[0].0;
    let mut bad = a[0].1.clone();
    bad.push(0);
    store.put_small(name, &bad).unwrap();
    assert!(remote::copy(&DirStore::new(&src), &store, &copts).is_err());
}

/// A merge of indexed archives in an object store fetches their indexes and only the frames
/// holding surviving data: a full of 32 MiB whose first 24 MiB a later file overwrites is
/// read for about its last quarter.
#[test]
fn merges_of_archives_fetch_only_the_frames_they_need() {
    let t = tempfile::tempdir().unwrap();
    let c = FakeCluster::new(&t.path().join("bin"), 32 << 20);
    let raw = c.bin.join("image.raw");
    let store = ObjStore::memory(&S3Config::default()).unwrap();
    let mut snaps = Vec::new();
    let mut o = opts(&c);
    o.compress = Some(Default::default());
    // Incompressible data all over, then new data over the first 24 MiB, then a little.
    for (k, range) in [(1u64, 0..32usize << 20), (2, 0..24 << 20), (3, 0..1 << 20)] {
        let mut img = std::fs::read(&raw).unwrap();
        img[range.clone()].copy_from_slice(&common::gen::noise(k, range.len()));
        std::fs::write(&raw, img).unwrap();
        snaps.push(remote::backup("rbd/vm", &store, &o, false).unwrap().to_snap);
    }
    let sizes: u64 = store
        .list("")
        .unwrap()
        .iter()
        .filter(|o| o.name.ends_with(".zst"))
        .map(|o| o.size)
        .sum();
    let opts = rbddiff::workflow::PruneOptions {
        policy: rbddiff::archive::policy::Policy {
            last: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let (before, reads) = (store.bytes_fetched(), store.ranged_reads());
    let r = remote::prune(&store, &opts, false, &mut |_, _| {}).unwrap();
    let fetched = store.bytes_fetched() - before;
    let reads = store.ranged_reads() - reads;
    // At most one read per frame of the three archives (15) and a few to open each: the
    // index is read through windows, not one request per block (per frame) and sweep.
    assert!(reads <= 30, "{reads} ranged reads");
    assert_eq!(r.kept_snapshots, snaps[2..]);
    assert_eq!(r.merges.len(), 1, "{r:?}");
    let out = r.merges[0].bytes.unwrap();
    // The inputs but the full's dead frames (about 24 MiB), and the merged file read back.
    assert!(
        fetched < sizes + out - (16 << 20),
        "fetched {fetched} bytes for inputs of {sizes} and an output of {out}"
    );
    assert!(
        fetched >= out,
        "the merged file is read back: {fetched} < {out}"
    );
    let dir = t.path().join("copy");
    download(&store, &dir);
    assert_eq!(
        restored(&dir, t.path(), &snaps[2]),
        c.snap_sha256(&snaps[2])
    );
}

/// Three backups of `c`'s image into `store` (the second compressed), the image written
/// between them: the snapshots, oldest first.
fn three_backups(c: &FakeCluster, store: &dyn Store) -> Vec<String> {
    let mut rng = Rng::new(11);
    (0..3)
        .map(|k| {
            if k > 0 {
                c.write(&mut rng);
            }
            let mut o = opts(c);
            o.compress = (k == 1).then(Default::default);
            remote::backup("rbd/vm", store, &o, false).unwrap().to_snap
        })
        .collect()
}

#[test]
fn restore_from_an_object_store_into_an_image() {
    use rbddiff::workflow::RestoreOptions;
    let t = tempfile::tempdir().unwrap();
    let c = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let store = ObjStore::memory(&S3Config::default()).unwrap();
    let snaps = three_backups(&c, &store);
    let ropts = |to: &str, create: bool| RestoreOptions {
        image: Some("vm".into()),
        to: Some(to.into()),
        create,
        rbd: opts(&c).rbd,
        ..RestoreOptions::default()
    };
    // Each snapshot into a new image: the bytes the image held, and the snapshot made.
    for (k, s) in snaps.iter().enumerate() {
        let name = format!("r{k}");
        let r = remote::restore(
            &store,
            &format!("rbd/{name}"),
            &ropts(s, true),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(r.created, "{r:?}");
        assert_eq!(r.files.len(), k + 1, "{r:?}");
        assert_eq!(r.to_snap.as_deref(), Some(s.as_str()), "{r:?}");
        assert_eq!(c.image_sha256(&name), c.snap_sha256(s), "{s}");
        assert_eq!(c.snaps_of(&name), std::slice::from_ref(s));
    }
    // rbd refuses an end snapshot the image has: the restore fails, the image stays as it was.
    let e = remote::restore(&store, "rbd/r2", &ropts(&snaps[2], true), &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert_eq!(c.image_sha256("r2"), c.snap_sha256(&snaps[2]));
    // Without --create a missing image is not made.
    let e =
        remote::restore(&store, "rbd/none", &ropts(&snaps[0], false), &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("import-diff"), "{e}");
    assert!(!c.has_image("none"));
    // A damaged file (same length: only its content tells) fails the restore, and the image
    // made for it is removed again.
    let names = names(&store);
    let last = names
        .iter()
        .find(|n| n.ends_with(&format!("..{}.diff", snaps[2])))
        .unwrap();
    damage(&store, last, 40);
    let r = remote::restore(&store, "rbd/bad", &ropts(&snaps[2], true), &mut |_, _| {});
    assert!(!c.has_image("bad"), "{r:?}");
    let e = r.unwrap_err().to_string();
    assert!(e.contains("damaged") && e.contains(last.as_str()), "{e}");
}

#[test]
fn replay_from_an_object_store_brings_an_image_up_to_date() {
    use rbddiff::replicate::{replay_from_store, ReplayOptions, Verify};
    let t = tempfile::tempdir().unwrap();
    let c = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let store = ObjStore::memory(&S3Config::default()).unwrap();
    let snaps = three_backups(&c, &store);
    let ropts = |to: Option<&String>, verify: Verify| ReplayOptions {
        image: Some("vm".into()),
        to: to.cloned(),
        create: true,
        verify,
        rbd: opts(&c).rbd,
        lock_dir: Some(t.path().join("locks")),
        ..ReplayOptions::default()
    };
    // A new image up to the second snapshot: the full, then the incremental.
    let r = replay_from_store(&store, "rbd/copy", &ropts(Some(&snaps[1]), Verify::Diff)).unwrap();
    assert!(r.created && r.base.is_none(), "{r:?}");
    assert_eq!(r.imported.len(), 2, "{r:?}");
    assert_eq!(c.snaps_of("copy"), snaps[..2]);
    assert_eq!(c.image_sha256("copy"), c.snap_sha256(&snaps[1]));
    // Then on from there, checked by a full export; then nothing left to do.
    let r = replay_from_store(&store, "rbd/copy", &ropts(None, Verify::Full)).unwrap();
    assert_eq!(r.base.as_deref(), Some(snaps[1].as_str()), "{r:?}");
    assert_eq!(r.imported.len(), 1, "{r:?}");
    assert_eq!(c.snaps_of("copy"), snaps);
    assert_eq!(c.image_sha256("copy"), c.snap_sha256(&snaps[2]));
    let r = replay_from_store(&store, "rbd/copy", &ropts(None, Verify::Diff)).unwrap();
    assert!(r.imported.is_empty(), "{r:?}");
    // Data written on the replica since its snapshot is rolled back before the import.
    let mut rng = Rng::new(3);
    c.write(&mut rng);
    let snap4 = remote::backup("rbd/vm", &store, &opts(&c), false)
        .unwrap()
        .to_snap;
    std::fs::write(
        c.image_dir("copy").join("image.raw"),
        common::gen::noise(9, 1 << 20),
    )
    .unwrap();
    let r = replay_from_store(&store, "rbd/copy", &ropts(None, Verify::Full)).unwrap();
    assert!(!r.warnings.is_empty(), "{r:?}");
    assert_eq!(c.image_sha256("copy"), c.snap_sha256(&snap4));
    // A damaged file: the replay onto a new image fails and removes it.
    let names = names(&store);
    let f = names.iter().find(|n| n.ends_with(".full.diff")).unwrap();
    damage(&store, f, 1000);
    let e = replay_from_store(&store, "rbd/fresh", &ropts(None, Verify::Diff)).unwrap_err();
    assert!(!c.has_image("fresh"), "{e}");
    assert!(e.to_string().contains("damaged"), "{e}");
}

#[test]
fn sync_writes_each_diff_into_an_object_store_archive() {
    use rbddiff::replicate::{sync_with_store, SyncOptions};
    let t = tempfile::tempdir().unwrap();
    let c = FakeCluster::new(&t.path().join("bin"), 1 << 20);
    let store = ObjStore::memory(&S3Config::default()).unwrap();
    let so = SyncOptions {
        src: opts(&c).rbd,
        dst: opts(&c).rbd,
        lock_dir: Some(t.path().join("locks")),
        ..SyncOptions::default()
    };
    let mut rng = Rng::new(5);
    let mut snaps = Vec::new();
    for k in 0..2 {
        if k > 0 {
            c.write(&mut rng);
        }
        let r = sync_with_store("rbd/vm", "rbd/dst", &so, &store).unwrap();
        assert_eq!(r.base.is_none(), k == 0, "{r:?}");
        let file = r.archive_file.clone().unwrap();
        assert!(file.starts_with("memory://archive/vm@"), "{file}");
        snaps.push(r.imported.to_snap.clone());
    }
    assert_eq!(c.snaps_of("dst"), snaps);
    assert_eq!(c.image_sha256("dst"), c.snap_sha256(&snaps[1]));
    // The archive holds both diffs with their sidecars, verified and restorable, and no lock.
    let v = remote::verify(&store, None).unwrap();
    assert_eq!((v.files.len(), v.findings.len()), (2, 0), "{v:?}");
    assert_eq!(holder(&store).unwrap(), None);
    for s in &snaps {
        let raw = t.path().join(format!("{s}.raw"));
        let fopts = rbddiff::workflow::FileRestoreOptions {
            snap: Some(s.clone()),
            ..Default::default()
        };
        remote::restore_to_file(&store, &raw, &fopts, &mut |_, _| {}).unwrap();
        assert_eq!(common::manifest::sha256_file(&raw), c.snap_sha256(s), "{s}");
    }
    // A held lock refuses the sync before any snapshot is made.
    let before = c.snapshots();
    let _held = acquire(&store, &LockOptions::new("prune", None, false)).unwrap();
    c.write(&mut rng);
    let e = sync_with_store("rbd/vm", "rbd/dst", &so, &store).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Locked(_)), "{e}");
    assert_eq!(c.snapshots(), before);
    assert_eq!(c.snaps_of("dst"), snaps);
}
