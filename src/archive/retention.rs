//! Which files of an image's graph stay when a prune keeps its newest N restorable snapshots.
//!
//! The kept snapshots are the newest N restorable ones, in the snapshot order of the graph
//! (the order restore's "newest" uses). The best path to the oldest kept snapshot K0 becomes
//! one merged full diff to K0 (none is made when that path already is a single full diff).
//! Kept are: that full, every full diff ending at K0 or a later snapshot, and every
//! incremental starting at K0 or later (so periodic fulls within the kept range stay as
//! the redundancy they are). Should a kept snapshot have no path left through these (its
//! best path ran through older snapshots only), its best path is kept as well. Every other
//! file that a restore could reach is deleted. Files a restore cannot use (damaged,
//! unreadable, starting at a snapshot no healthy path reaches, ending at the image HEAD) are
//! never deleted: they are left for the operator, and reported.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use super::graph::{Graph, PassedOver};

/// The plan of a prune of one image (indexes into [`Graph::edges`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    /// The kept snapshots, oldest first.
    pub keep: Vec<String>,
    /// The files merged into one full diff to the oldest kept snapshot, in order (empty when
    /// no merge is needed).
    pub merge: Vec<usize>,
    /// The files that stay (the merged output aside).
    pub kept: Vec<usize>,
    /// The files deleted once the merged output is committed and verified.
    pub delete: Vec<usize>,
    /// Files left alone because no restore can use them, with the reason.
    pub left: Vec<PassedOver>,
}

/// The snapshots a path of files from `edges` (of `g`) leads to from "empty".
fn reachable(g: &Graph, edges: &BTreeSet<usize>, extra_full: Option<&str>) -> HashSet<String> {
    let mut reach: HashSet<String> = extra_full.map(String::from).into_iter().collect();
    loop {
        let before = reach.len();
        for &i in edges {
            let f = &g.edges[i].file;
            if let Some(to) = &f.to {
                if f.from.as_ref().map_or(true, |s| reach.contains(s)) {
                    reach.insert(to.clone());
                }
            }
        }
        if reach.len() == before {
            return reach;
        }
    }
}

/// Plans a prune of `g` to its newest `keep` restorable snapshots; files in `damaged` are
/// not used (see the module docs). Returns `None` when no snapshot is restorable.
pub fn plan(g: &Graph, damaged: &BTreeMap<usize, String>, keep: usize) -> Option<Plan> {
    let restorable = g.restorable(damaged);
    if restorable.is_empty() {
        return None;
    }
    let ord: HashMap<&str, usize> = g
        .snapshots
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let first = restorable.len().saturating_sub(keep.max(1));
    let kept_snaps = &restorable[first..];
    let (k0, _, p0) = &kept_snaps[0];
    let k0_ord = ord[k0.as_str()];
    let reach: HashSet<&str> = restorable.iter().map(|r| r.0.as_str()).collect();
    let mut plan = Plan {
        keep: kept_snaps.iter().map(|r| r.0.clone()).collect(),
        ..Plan::default()
    };
    // Files a restore can use: healthy, and a full or starting at a restorable snapshot.
    let mut usable = BTreeSet::new();
    for (i, e) in g.edges.iter().enumerate() {
        if let Some(why) = damaged.get(&i) {
            plan.left.push(PassedOver {
                file: e.file.name(),
                reason: why.clone(),
            });
        } else if e.file.to.is_none() {
            plan.left.push(PassedOver {
                file: e.file.name(),
                reason: "ends at the image HEAD, no snapshot".into(),
            });
        } else if e.file.from.as_deref().map_or(true, |f| reach.contains(f)) {
            usable.insert(i);
        } else {
            plan.left.push(PassedOver {
                file: e.file.name(),
                reason: format!(
                    "starts at snapshot '{}', which no path of healthy files reaches",
                    e.file.from.as_deref().unwrap_or_default()
                ),
            });
        }
    }
    plan.left.extend(g.unreadable.iter().cloned());
    let at_or_after = |s: &Option<String>| s.as_deref().is_some_and(|s| ord[s] >= k0_ord);
    let mut kept: BTreeSet<usize> = usable
        .iter()
        .copied()
        .filter(|&i| {
            let f = &g.edges[i].file;
            match &f.from {
                None => at_or_after(&f.to),
                from => at_or_after(from),
            }
        })
        .collect();
    if p0.len() > 1 {
        plan.merge = p0.clone();
    }
    // A kept snapshot with no path left keeps its best path.
    for (s, _, path) in kept_snaps {
        if !reachable(g, &kept, Some(k0)).contains(s) {
            kept.extend(path.iter().copied());
        }
    }
    plan.delete = usable.difference(&kept).copied().collect();
    plan.kept = kept.into_iter().collect();
    Some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::graph::Edge;
    use crate::archive::ChainFile;

    fn graph(files: &[(Option<&str>, Option<&str>, u64)], snaps: &[&str]) -> Graph {
        let edges = files
            .iter()
            .enumerate()
            .map(|(i, (from, to, bytes))| Edge {
                file: ChainFile {
                    path: format!("f{i}").into(),
                    from: from.map(String::from),
                    to: to.map(String::from),
                    size: 1,
                    compressed: false,
                },
                bytes: *bytes,
                mtime: std::time::SystemTime::UNIX_EPOCH,
            })
            .collect();
        Graph {
            edges,
            unreadable: Vec::new(),
            snapshots: snaps.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_kept_snapshot_that_skips_the_oldest_kept_one_keeps_its_path() {
        // s3's backup was based on s1 (s2 had gone from the cluster).
        let g = graph(
            &[
                (None, Some("s0"), 100),
                (Some("s0"), Some("s1"), 10),
                (Some("s1"), Some("s2"), 10),
                (Some("s1"), Some("s3"), 10),
            ],
            &["s0", "s1", "s2", "s3"],
        );
        let p = plan(&g, &BTreeMap::new(), 2).unwrap();
        assert_eq!(p.keep, ["s2", "s3"]);
        assert_eq!(p.merge, [0, 1, 2]);
        assert_eq!(p.kept, [0, 1, 3]);
        assert_eq!(p.delete, [2]);
    }

    #[test]
    fn periodic_fulls_in_range_stay_and_unusable_files_are_left() {
        let g = graph(
            &[
                (None, Some("s0"), 100),
                (Some("s0"), Some("s1"), 10),
                (Some("s1"), Some("s2"), 10),
                (None, Some("s2"), 100),
                (Some("s2"), Some("s3"), 10),
                (Some("s9"), Some("s10"), 10),
                (Some("s3"), None, 10),
                (None, Some("s1"), 100),
            ],
            &["s0", "s1", "s2", "s3", "s9", "s10"],
        );
        let damaged = BTreeMap::from([(7, "bad sums".to_string())]);
        let p = plan(&g, &damaged, 2).unwrap();
        assert_eq!(p.keep, ["s2", "s3"]);
        // The best path to s2 is the periodic full itself: nothing to merge.
        assert!(p.merge.is_empty());
        assert_eq!(p.kept, [3, 4]);
        assert_eq!(p.delete, [0, 1, 2]);
        let left: Vec<&str> = p.left.iter().map(|l| l.file.as_str()).collect();
        assert_eq!(left, ["f5", "f6", "f7"]);
        // Keeping more than there are keeps everything usable.
        let p = plan(&g, &damaged, 10).unwrap();
        assert_eq!(p.keep, ["s0", "s1", "s2", "s3"]);
        assert!(p.merge.is_empty() && p.delete.is_empty(), "{p:?}");
        assert!(plan(
            &graph(&[(Some("a"), Some("b"), 1)], &["a", "b"]),
            &damaged,
            1
        )
        .is_none());
    }
}
