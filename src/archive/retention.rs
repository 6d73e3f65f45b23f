//! Which files of an image's graph stay when a prune keeps a set of restorable snapshots
//! (chosen by a [`super::policy`]), and which are merged.
//!
//! Kept as they are: every usable file whose both ends are kept (a full diff ending at a kept
//! snapshot, an incremental between two kept snapshots: periodic fulls at kept snapshots
//! stay as the second path they are). Then, for each kept snapshot, oldest first, that these
//! files (and the merges planned so far) do not make restorable: its best path (fewest bytes)
//! from the last kept snapshot on it that is already restorable (else from "empty") is cut at
//! the kept snapshots it passes, and each run of two or more files across dropped snapshots
//! becomes one merge: a new full diff (a run from "empty") or a new incremental between the
//! two kept snapshots at its ends. Two merges may read the same file (two kept snapshots whose
//! paths part after a dropped one). Every other file that a restore could reach is deleted,
//! once the merges are committed and verified. Files a restore cannot use (damaged,
//! unreadable, starting at a snapshot no healthy path reaches, ending at the image HEAD) are
//! never deleted: they are left for the operator, and reported.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use super::graph::{Graph, PassedOver};

/// One merge of a plan: a run of files across dropped snapshots, merged into one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Merge {
    /// Start snapshot of the new file (none: a full diff).
    pub from: Option<String>,
    /// Its end snapshot (a kept one).
    pub to: String,
    /// The files merged, in order (indexes into [`Graph::edges`]).
    pub inputs: Vec<usize>,
}

/// The plan of a prune of one image (indexes into [`Graph::edges`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    /// The kept snapshots, oldest first (the graph's snapshot order).
    pub keep: Vec<String>,
    /// The restorable snapshots dropped, oldest first.
    pub dropped: Vec<String>,
    /// The merges, in the order of their end snapshots.
    pub merges: Vec<Merge>,
    /// The files that stay (the merged outputs aside).
    pub kept: Vec<usize>,
    /// The files deleted once the merged outputs are committed and verified.
    pub delete: Vec<usize>,
    /// Files left alone because no restore can use them, with the reason.
    pub left: Vec<PassedOver>,
}

/// The snapshots that `links` (start, end) lead to from "empty".
fn reachable<'a>(links: &[(Option<&'a str>, &'a str)]) -> HashSet<&'a str> {
    let mut reach: HashSet<&str> = HashSet::new();
    loop {
        let before = reach.len();
        for (from, to) in links {
            if from.is_none_or(|f| reach.contains(f)) {
                reach.insert(to);
            }
        }
        if reach.len() == before {
            return reach;
        }
    }
}

/// The cheapest run (fewest bytes, then fewest files) of files in `usable` to `target` from
/// "empty" or from one of `sources`: where it starts (none: "empty") and its files.
fn cheapest<'a>(
    g: &'a Graph,
    usable: &BTreeSet<usize>,
    sources: &[&'a str],
    target: &'a str,
) -> Option<(Option<&'a str>, Vec<usize>)> {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    /// A snapshot, or none for "empty".
    type Node<'a> = Option<&'a str>;
    /// Bytes and files from a source, the node, and the file that led to it.
    type Step<'a> = (u64, usize, Node<'a>, Option<usize>);
    // node -> (bytes, files, the file that led to it)
    let mut best: HashMap<Node<'a>, (u64, usize, Option<usize>)> = HashMap::new();
    let mut heap: BinaryHeap<Reverse<Step<'a>>> = BinaryHeap::new();
    heap.push(Reverse((0, 0, None, None)));
    for &s in sources {
        heap.push(Reverse((0, 0, Some(s), None)));
    }
    while let Some(Reverse((bytes, n, node, via))) = heap.pop() {
        if best.contains_key(&node) {
            continue;
        }
        best.insert(node, (bytes, n, via));
        if node == Some(target) {
            break;
        }
        for &i in usable {
            let e = &g.edges[i];
            if e.file.from.as_deref() == node {
                if let Some(to) = e.file.to.as_deref() {
                    if !best.contains_key(&Some(to)) {
                        heap.push(Reverse((bytes + e.bytes, n + 1, Some(to), Some(i))));
                    }
                }
            }
        }
    }
    let mut path = Vec::new();
    let mut at: Node<'a> = Some(target);
    loop {
        let &(_, _, via) = best.get(&at)?;
        let Some(i) = via else {
            path.reverse();
            return Some((at, path));
        };
        path.push(i);
        at = g.edges[i].file.from.as_deref();
    }
}

/// Plans a prune of `g` that keeps the snapshots of `keep` that are restorable; files in
/// `damaged` are not used (see the module docs). Returns `None` when no snapshot of `keep`
/// is restorable.
pub fn plan(g: &Graph, damaged: &BTreeMap<usize, String>, keep: &BTreeSet<String>) -> Option<Plan> {
    let restorable = g.restorable(damaged);
    let reach: HashSet<&str> = restorable.iter().map(|r| r.0.as_str()).collect();
    let kept_snaps: Vec<&(String, u64, Vec<usize>)> =
        restorable.iter().filter(|r| keep.contains(&r.0)).collect();
    if kept_snaps.is_empty() {
        return None;
    }
    let mut plan = Plan {
        keep: kept_snaps.iter().map(|r| r.0.clone()).collect(),
        dropped: restorable
            .iter()
            .filter(|r| !keep.contains(&r.0))
            .map(|r| r.0.clone())
            .collect(),
        ..Plan::default()
    };
    let is_kept = |s: &str| keep.contains(s) && reach.contains(s);
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
        } else if e.file.from.as_deref().is_none_or(|f| reach.contains(f)) {
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
    let kept: BTreeSet<usize> = usable
        .iter()
        .copied()
        .filter(|&i| {
            let f = &g.edges[i].file;
            f.to.as_deref().is_some_and(is_kept) && f.from.as_deref().is_none_or(is_kept)
        })
        .collect();
    let mut links: Vec<(Option<&str>, &str)> = kept
        .iter()
        .filter_map(|&i| {
            let f = &g.edges[i].file;
            Some((f.from.as_deref(), f.to.as_deref()?))
        })
        .collect();
    let keep_names = plan.keep.clone();
    for s in &keep_names {
        let done = reachable(&links);
        if done.contains(s.as_str()) {
            continue;
        }
        let sources: Vec<&str> = keep_names
            .iter()
            .map(String::as_str)
            .filter(|k| done.contains(k))
            .collect();
        let Some((mut from, path)) = cheapest(g, &usable, &sources, s) else {
            continue;
        };
        // Cut at kept snapshots (none is passed when the sources are all the restorable
        // ones; kept for safety).
        let mut run: Vec<usize> = Vec::new();
        for &i in &path {
            run.push(i);
            let Some(end) = g.edges[i].file.to.as_deref() else {
                break;
            };
            if is_kept(end) {
                if run.len() > 1 {
                    plan.merges.push(Merge {
                        from: from.map(String::from),
                        to: end.to_string(),
                        inputs: std::mem::take(&mut run),
                    });
                }
                run.clear();
                links.push((from, end));
                from = Some(end);
            }
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

    fn set(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn merge(from: Option<&str>, to: &str, inputs: &[usize]) -> Merge {
        Merge {
            from: from.map(String::from),
            to: to.into(),
            inputs: inputs.to_vec(),
        }
    }

    #[test]
    fn kept_snapshots_whose_paths_part_at_a_dropped_one_get_a_merge_each() {
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
        let p = plan(&g, &BTreeMap::new(), &set(&["s2", "s3"])).unwrap();
        assert_eq!(p.keep, ["s2", "s3"]);
        assert_eq!(p.dropped, ["s0", "s1"]);
        assert_eq!(
            p.merges,
            [merge(None, "s2", &[0, 1, 2]), merge(None, "s3", &[0, 1, 3])]
        );
        assert!(p.kept.is_empty());
        assert_eq!(p.delete, [0, 1, 2, 3]);
        // Keeping s1 too: one full to s1, the two incrementals from it stay.
        let p = plan(&g, &BTreeMap::new(), &set(&["s1", "s2", "s3"])).unwrap();
        assert_eq!(p.merges, [merge(None, "s1", &[0, 1])]);
        assert_eq!(p.kept, [2, 3]);
        assert_eq!(p.delete, [0, 1]);
    }

    #[test]
    fn runs_between_kept_snapshots_become_incrementals() {
        // s0 full, s1..s6 incrementals, a periodic full at s4; keep s0, s3, s6.
        let g = graph(
            &[
                (None, Some("s0"), 100),
                (Some("s0"), Some("s1"), 10),
                (Some("s1"), Some("s2"), 10),
                (Some("s2"), Some("s3"), 10),
                (Some("s3"), Some("s4"), 10),
                (None, Some("s4"), 100),
                (Some("s4"), Some("s5"), 10),
                (Some("s5"), Some("s6"), 10),
            ],
            &["s0", "s1", "s2", "s3", "s4", "s5", "s6"],
        );
        let p = plan(&g, &BTreeMap::new(), &set(&["s0", "s3", "s6"])).unwrap();
        assert_eq!(p.keep, ["s0", "s3", "s6"]);
        assert_eq!(
            p.merges,
            [
                merge(Some("s0"), "s3", &[1, 2, 3]),
                merge(Some("s3"), "s6", &[4, 6, 7])
            ]
        );
        assert_eq!(p.kept, [0]);
        assert_eq!(p.delete, [1, 2, 3, 4, 5, 6, 7]);
        // Keeping s4 (the periodic full's) and s6: the full stays, s4..s6 is merged.
        let p = plan(&g, &BTreeMap::new(), &set(&["s4", "s6"])).unwrap();
        assert_eq!(p.merges, [merge(Some("s4"), "s6", &[6, 7])]);
        assert_eq!(p.kept, [5]);
        assert_eq!(p.delete, [0, 1, 2, 3, 4, 6, 7]);
        // A kept snapshot outside the restorable ones is no reason to keep anything.
        assert!(plan(&g, &BTreeMap::new(), &set(&["nope"])).is_none());
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
        let p = plan(&g, &damaged, &set(&["s2", "s3"])).unwrap();
        assert_eq!(p.keep, ["s2", "s3"]);
        // The periodic full to s2 is kept: nothing to merge.
        assert!(p.merges.is_empty());
        assert_eq!(p.kept, [3, 4]);
        assert_eq!(p.delete, [0, 1, 2]);
        let left: Vec<&str> = p.left.iter().map(|l| l.file.as_str()).collect();
        assert_eq!(left, ["f5", "f6", "f7"]);
        // Keeping everything keeps everything usable.
        let p = plan(&g, &damaged, &set(&["s0", "s1", "s2", "s3"])).unwrap();
        assert_eq!(p.keep, ["s0", "s1", "s2", "s3"]);
        assert!(p.merges.is_empty() && p.delete.is_empty(), "{p:?}");
        assert!(plan(
            &graph(&[(Some("a"), Some("b"), 1)], &["a", "b"]),
            &damaged,
            &set(&["b"])
        )
        .is_none());
    }
}
