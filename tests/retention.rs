//! Property test of `prune` by a retention policy: random histories (a first full, periodic
//! fulls, incrementals, some from an older snapshot than the last, with random backup times)
//! and random policies. After a prune every kept snapshot restores (its best path applied to
//! the in-memory model of `common::model`) to the bytes it held before, exactly the kept
//! snapshots are restorable and every file left runs between kept snapshots; a prune stopped
//! after a random number of steps (as a kill would leave it) keeps every kept snapshot
//! restorable, and a rerun ends where an uninterrupted prune ends.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use common::gen::{noise, path_str as s, write_sparse};
use common::model::Image;
use proptest::prelude::*;
use rbddiff::archive::catalog::{record, Record};
use rbddiff::archive::policy::Policy;
use rbddiff::create::{create_diff, CreateOptions};
use rbddiff::workflow::{file_name, prune, PruneOptions};

const SIZE: usize = 64 << 10;

/// One backup: a full diff, or an incremental from `back` snapshots before the last.
#[derive(Clone, Debug)]
struct Backup {
    full: bool,
    back: usize,
    /// Seconds since the previous backup.
    gap: u64,
    /// Writes before it: (offset in 4 KiB blocks, blocks, seed).
    writes: Vec<(usize, usize, u64)>,
}

fn backup() -> impl Strategy<Value = Backup> {
    (
        prop::bool::weighted(0.2),
        prop::sample::select(vec![0usize, 0, 0, 1, 2]),
        prop::sample::select(vec![
            0u64,
            60,
            1800,
            3600,
            5400,
            86_400,
            90_000,
            7 * 86_400,
            40 * 86_400,
            400 * 86_400,
        ]),
        prop::collection::vec((0usize..16, 1usize..4, any::<u64>()), 0..4),
    )
        .prop_map(|(full, back, gap, writes)| Backup {
            full,
            back,
            gap,
            writes,
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    let n = || prop::sample::select(vec![0usize, 0, 1, 2, 3]);
    (
        n(),
        n(),
        n(),
        n(),
        n(),
        n(),
        prop::option::of(prop::sample::select(vec![3600u64, 86_400, 30 * 86_400])),
    )
        .prop_map(
            |(last, hourly, daily, weekly, monthly, yearly, within)| Policy {
                last,
                hourly,
                daily,
                weekly,
                monthly,
                yearly,
                within: within.map(std::time::Duration::from_secs),
            },
        )
}

/// Writes the history into `dir` (work files in `work`); returns each snapshot's bytes.
fn write_history(dir: &Path, work: &Path, hist: &[Backup]) -> Vec<Vec<u8>> {
    let mut cur = vec![0u8; SIZE];
    let mut states: Vec<Vec<u8>> = Vec::new();
    let mut time = 1_767_571_200u64;
    for (k, b) in hist.iter().enumerate() {
        for &(at, len, seed) in &b.writes {
            let a = at * 4096;
            let e = (a + len * 4096).min(SIZE);
            cur[a..e].copy_from_slice(&noise(seed, e - a));
        }
        let raw = work.join(format!("raw{k}"));
        write_sparse(&raw, &cur);
        let base = (!b.full && k > 0).then(|| k - 1 - b.back.min(k - 1));
        let from = base.map(|j| format!("s{j}"));
        let to = format!("s{k}");
        let path = dir.join(file_name("vm", from.as_deref(), &to, false));
        let opts = CreateOptions {
            to_snap: Some(to),
            base: base.map(|j| work.join(format!("raw{j}"))),
            from_snap: from,
            ..CreateOptions::default()
        };
        create_diff(&raw, &s(&path), &opts).unwrap();
        rbddiff::sums::write_sums_for(&path).unwrap();
        time += b.gap;
        let rec = Record {
            image_id: Some("id".into()),
            time: Some(time),
            ..Record::default()
        };
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        record(dir, &name, rec).unwrap();
        states.push(cur.clone());
    }
    states
}

/// The restorable snapshots of `vm` in `dir` and their bytes (best path, model applied).
fn restored(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let g = rbddiff::archive::graph::discover(dir, "vm").unwrap();
    g.restorable(&Default::default())
        .into_iter()
        .map(|(snap, _, path)| {
            let mut img = Image::new();
            for i in path {
                img.apply_bytes(&fs::read(&g.edges[i].file.path).unwrap());
            }
            (snap, img.data)
        })
        .collect()
}

fn diff_files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            // With the modification times, which order snapshots no link orders.
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
}

fn snap_index(s: &str) -> usize {
    s[1..].parse().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn kept_snapshots_survive_any_policy_and_any_stop(
        hist in prop::collection::vec(backup(), 1..9),
        mut pol in policy(),
        stop in 0usize..40,
    ) {
        if pol.is_empty() {
            pol.last = 1;
        }
        let t = tempfile::tempdir().unwrap();
        let (pristine, dir, work) = (t.path().join("p"), t.path().join("d"), t.path().join("w"));
        fs::create_dir_all(&pristine).unwrap();
        fs::create_dir_all(&work).unwrap();
        let mut hist = hist;
        hist[0].full = true;
        let states = write_history(&pristine, &work, &hist);
        let before = restored(&pristine);
        prop_assert_eq!(before.len(), hist.len());
        for (snap, data) in &before {
            prop_assert_eq!(data, &states[snap_index(snap)]);
        }
        let opts = PruneOptions {
            image: Some("vm".into()),
            policy: pol.clone(),
            compress: Some(false),
            ..PruneOptions::default()
        };

        // An uninterrupted prune.
        copy_dir(&pristine, &dir);
        let r = prune(&dir, &opts, &mut |_, _| {}).unwrap();
        let kept: BTreeSet<String> = r.kept_snapshots.iter().cloned().collect();
        prop_assert!(!kept.is_empty());
        prop_assert!(kept.contains(&before.last().unwrap().0), "the newest is kept: {:?}", r);
        let after = restored(&dir);
        let after_snaps: BTreeSet<String> = after.iter().map(|a| a.0.clone()).collect();
        prop_assert_eq!(&after_snaps, &kept, "exactly the kept snapshots are restorable");
        for (snap, data) in &after {
            prop_assert_eq!(data, &states[snap_index(snap)], "{} after the prune", snap);
        }
        // Nothing that no kept snapshot needs is left: every file runs between kept ones.
        let g = rbddiff::archive::graph::discover(&dir, "vm").unwrap();
        for e in &g.edges {
            let ok = e.file.to.as_ref().is_some_and(|t| kept.contains(t))
                && e.file.from.as_ref().is_none_or(|f| kept.contains(f));
            prop_assert!(ok, "{} is left but runs outside the kept snapshots", e.file.path.display());
        }
        let done = diff_files(&dir);
        // The kept set follows the rules from the times: rerunning keeps it and does nothing.
        let again = prune(&dir, &opts, &mut |_, _| {}).unwrap();
        // (As sets: snapshots no link orders are ordered by file times, which merges change.)
        let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<String>>();
        prop_assert_eq!(set(&again.kept_snapshots), kept.clone());
        prop_assert!(again.merges.is_empty() && again.delete.is_empty(), "{:?}", again);

        // A prune stopped after `stop` steps, then a rerun.
        copy_dir(&pristine, &dir);
        let stopped = PruneOptions { stop_after: Some(stop), ..opts.clone() };
        let _ = prune(&dir, &stopped, &mut |_, _| {});
        let mid: std::collections::BTreeMap<String, Vec<u8>> = restored(&dir).into_iter().collect();
        for k in &kept {
            let data = mid.get(k);
            prop_assert!(data.is_some(), "stopped after {} steps: {} not restorable", stop, k);
            prop_assert_eq!(data.unwrap(), &states[snap_index(k)], "stopped after {} steps: {}", stop, k);
        }
        let r2 = prune(&dir, &opts, &mut |_, _| {}).unwrap();
        prop_assert_eq!(set(&r2.kept_snapshots), kept.clone());
        prop_assert_eq!(diff_files(&dir), done, "the rerun ends as an uninterrupted prune");
        for (snap, data) in restored(&dir) {
            prop_assert_eq!(&data, &states[snap_index(&snap)], "{} after the rerun", snap);
        }
    }
}
