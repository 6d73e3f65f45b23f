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
