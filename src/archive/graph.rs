//! The files of one image in an archive as a graph over snapshots.
//!
//! Each readable file is an edge: a full diff from "empty" to its end snapshot, an
//! incremental from its start to its end snapshot (read from the header, as
//! [`super::discover_chain`] does). Forks are normal: a periodic full beside the incremental
//! ending at the same snapshot, a merged file beside the files it replaces. Files that cannot
//! be read as a diff are kept aside as unhealthy ([`Graph::unreadable`]) instead of failing
//! the whole directory; files superseded by a half-done prune are left out, as everywhere.
//!
//! A snapshot is *restorable* when a path of healthy files leads to it from "empty"; of the
//! paths, [`Graph::choose`] takes the one with the fewest bytes to read (then the fewest
//! files), verifying each file on it (structure and `.sums` sidecar) and going round any
//! file that fails. Diffs that end at the image HEAD are no snapshot and end no path.
//!
//! *Newest* is by the snapshot order of the graph: a topological order of the links between
//! snapshots (a snapshot comes after every snapshot an incremental leads from), ties broken
//! by the modification time of the oldest file touching the snapshot (the time of its first
//! backup), then by name.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use super::names::{dir_entries, is_candidate};
use super::{read_chain_file, ChainFile};
use crate::error::{Error, ErrorKind, Result};
use crate::verify::{verify, Severity, VerifyOptions};

/// One file of the graph.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    /// The file and its snapshots.
    pub file: ChainFile,
    /// Its size on disk: the bytes a restore through it reads.
    pub bytes: u64,
    /// Its modification time (the time it was committed).
    #[serde(skip)]
    pub mtime: SystemTime,
}

/// A file a restore did not use, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PassedOver {
    /// Path of the file.
    pub file: String,
    /// Why it was not used.
    pub reason: String,
}

/// The graph of one image's files in an archive.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Graph {
    /// The readable files, sorted by path.
    pub edges: Vec<Edge>,
    /// Files named as the image's that are not readable diffs, with the reason.
    pub unreadable: Vec<PassedOver>,
    /// Every snapshot a file starts or ends at, oldest first (see the module docs).
    pub snapshots: Vec<String>,
}

/// A path chosen by [`Graph::choose`].
#[derive(Clone, Debug, Serialize)]
pub struct Choice {
    /// The snapshot restored.
    pub target: String,
    /// The files of the path, in order (indexes into [`Graph::edges`]).
    pub path: Vec<usize>,
    /// Bytes of the files of the path.
    pub bytes: u64,
    /// Files not used, with the reason: damaged or unreadable ones, and healthy ones that
    /// lead to the target on a path of more bytes.
    pub passed_over: Vec<PassedOver>,
    /// Files found damaged on the way (indexes into [`Graph::edges`], with the reason).
    #[serde(skip)]
    pub damaged: BTreeMap<usize, String>,
    /// Said when the target is not the newest snapshot of the graph although none was asked
    /// for (the newer ones are not restorable).
    pub warnings: Vec<String>,
}

/// Finds the graph of `image` in `dir` (a missing directory is an empty graph). Only
/// regular files named `IMAGE@….diff[.zst]` are looked at, as by [`super::discover_chain`].
///
/// # Errors
/// `dir` or a prune journal in it cannot be read. A file that is not a valid diff is not an
/// error: it is listed in [`Graph::unreadable`].
pub fn discover(dir: &Path, image: &str) -> Result<Graph> {
    let mut g = Graph::default();
    if !dir.exists() {
        return Ok(g);
    }
    let gone = crate::journal::superseded(dir)?;
    for (name, path) in dir_entries(dir)? {
        if !is_candidate(&name, image) || gone.contains(&name) {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| Error::from(e).with_file(&path))?;
        match read_chain_file(path.clone()) {
            Ok(file) => g.edges.push(Edge {
                file,
                bytes: meta.len(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            }),
            Err(e) => g.unreadable.push(PassedOver {
                file: path.display().to_string(),
                reason: e.kind().to_string(),
            }),
        }
    }
    g.snapshots = snapshot_order(&g.edges);
    Ok(g)
}

/// The files of one image of one lineage: one image id ([`super::catalog`]).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Lineage {
    /// The image id recorded for its files (none: unknown, e.g. files written before the
    /// catalog).
    pub image_id: Option<String>,
    /// Its files.
    pub graph: Graph,
}

/// The lineages of `image` in `dir`, oldest first (by the modification time of their newest
/// file): its files split by the image id the catalog records for them, each lineage a
/// graph of its own, so that files of a recreated image never chain with the old ones.
///
/// # Errors
/// As [`discover`]; the catalog cannot be read.
pub fn lineages(dir: &Path, image: &str) -> Result<Vec<Lineage>> {
    let all = discover(dir, image)?;
    if all.is_empty() {
        return Ok(Vec::new());
    }
    Ok(split_lineages(all, &super::catalog::read(dir)?))
}

/// The files of `all` split into lineages by the image id `catalog` records for them,
/// oldest first (see [`lineages`]).
pub(crate) fn split_lineages(all: Graph, catalog: &super::catalog::Catalog) -> Vec<Lineage> {
    let id_of = |p: &Path| {
        let n = p.file_name()?.to_str()?;
        catalog.files.get(n)?.image_id.clone()
    };
    let mut by_id: BTreeMap<Option<String>, Graph> = BTreeMap::new();
    for e in all.edges {
        by_id.entry(id_of(&e.file.path)).or_default().edges.push(e);
    }
    for u in all.unreadable {
        by_id
            .entry(id_of(Path::new(&u.file)))
            .or_default()
            .unreadable
            .push(u);
    }
    let mut out: Vec<Lineage> = by_id
        .into_iter()
        .map(|(image_id, mut graph)| {
            graph.snapshots = snapshot_order(&graph.edges);
            Lineage { image_id, graph }
        })
        .collect();
    out.sort_by_key(|l| l.graph.edges.iter().map(|e| e.mtime).max());
    out
}

/// The graph of the newest lineage of `image` in `dir` ([`lineages`]); with `snap`, of the
/// newest lineage holding a file that ends at it. Also returns how many other lineages there
/// are.
///
/// # Errors
/// As [`lineages`].
pub fn newest_lineage(dir: &Path, image: &str, snap: Option<&str>) -> Result<(Graph, usize)> {
    let mut all = lineages(dir, image)?;
    let n = all.len().saturating_sub(1);
    let pick = match snap {
        Some(s) => all
            .iter()
            .rposition(|l| l.graph.snapshots.iter().any(|x| x == s)),
        None => None,
    };
    let i = pick.unwrap_or(n);
    Ok(if all.is_empty() {
        (Graph::default(), 0)
    } else {
        (all.swap_remove(i).graph, n)
    })
}

/// The snapshots of `edges` in topological order of their links (see the module docs).
fn snapshot_order(edges: &[Edge]) -> Vec<String> {
    let mut first: HashMap<&str, SystemTime> = HashMap::new();
    for e in edges {
        for s in [&e.file.from, &e.file.to].into_iter().flatten() {
            let t = first.entry(s.as_str()).or_insert(e.mtime);
            *t = (*t).min(e.mtime);
        }
    }
    let mut indeg: HashMap<&str, usize> = first.keys().map(|&s| (s, 0)).collect();
    let mut next: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in edges {
        if let (Some(a), Some(b)) = (&e.file.from, &e.file.to) {
            if a != b {
                next.entry(a.as_str()).or_default().push(b.as_str());
                *indeg.entry(b.as_str()).or_default() += 1;
            }
        }
    }
    let key = |s: &str| (first[s], s.to_string());
    let mut ready: Vec<&str> = indeg
        .iter()
        .filter(|(_, &d)| d == 0)
        .map(|(&s, _)| s)
        .collect();
    let mut out: Vec<String> = Vec::with_capacity(first.len());
    while !ready.is_empty() {
        // The oldest ready snapshot first.
        ready.sort_by_key(|s| std::cmp::Reverse(key(s)));
        let Some(s) = ready.pop() else { break };
        out.push(s.to_string());
        for &n in next.get(s).into_iter().flatten() {
            if let Some(d) = indeg.get_mut(n) {
                *d -= 1;
                if *d == 0 {
                    ready.push(n);
                }
            }
        }
    }
    // Snapshots in a cycle come last, by time.
    let mut rest: Vec<&str> = first
        .keys()
        .copied()
        .filter(|s| !out.iter().any(|o| o == s))
        .collect();
    rest.sort_by_key(|s| key(s));
    out.extend(rest.into_iter().map(String::from));
    out
}

/// The state of a file's `.sums` sidecar, as a verification of the file found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SumsState {
    /// The sidecar matches the file.
    Ok,
    /// No sidecar: only the file's structure is checked.
    Missing,
    /// The sidecar does not describe the file (a length or record checksum differs, or the
    /// sidecar is unreadable): the file was damaged since, or replaced without a new
    /// sidecar. The file is damaged.
    Stale,
    /// Not checked: the file's structure failed first, or it could not be read.
    Unchecked,
}

impl SumsState {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            SumsState::Ok => "ok",
            SumsState::Missing => "missing",
            SumsState::Stale => "stale",
            SumsState::Unchecked => "unchecked",
        }
    }
}

/// Whether a verification of `path` finds a problem (an index that disagrees with its content
/// is none: readers stream the content instead). Returns the problems, and the state of the
/// sidecar.
fn check_file(path: &Path) -> (std::result::Result<(), String>, SumsState) {
    let p = path.to_string_lossy().into_owned();
    let opts = VerifyOptions {
        no_chain: true,
        ..VerifyOptions::default()
    };
    let report = match verify(&[p], &opts) {
        Ok(r) => r,
        Err(e) => return (Err(e.to_string()), SumsState::Unchecked),
    };
    let sums = match report.files.first().map(|f| f.sums) {
        Some("ok") => SumsState::Ok,
        Some("absent") => SumsState::Missing,
        Some("mismatch" | "damaged") => SumsState::Stale,
        _ => SumsState::Unchecked,
    };
    let problems: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Problem && f.check != "index")
        .map(|f| f.to_string())
        .collect();
    let result = if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    };
    (result, sums)
}

impl Graph {
    /// The graph of `edges` (files that could not be read: `unreadable`).
    pub fn from_edges(mut edges: Vec<Edge>, unreadable: Vec<PassedOver>) -> Graph {
        edges.sort_by(|a, b| a.file.path.cmp(&b.file.path));
        Graph {
            snapshots: snapshot_order(&edges),
            edges,
            unreadable,
        }
    }

    /// True when the image has no file at all.
    pub fn is_empty(&self) -> bool {
        self.edges.is_empty() && self.unreadable.is_empty()
    }

    /// Verifies every file (structure, sums sidecar where present): the damaged ones, with
    /// the reason.
    pub fn damaged(&self) -> BTreeMap<usize, String> {
        self.check().0
    }

    /// [`Graph::damaged`], and the state of each file's sidecar (by index into
    /// [`Graph::edges`]).
    pub fn check(&self) -> (BTreeMap<usize, String>, Vec<SumsState>) {
        let mut damaged = BTreeMap::new();
        let mut sums = Vec::with_capacity(self.edges.len());
        for (i, e) in self.edges.iter().enumerate() {
            let (r, s) = check_file(&e.file.path);
            if let Err(why) = r {
                damaged.insert(i, why);
            }
            sums.push(s);
        }
        (damaged, sums)
    }

    /// The cheapest path (fewest bytes, then fewest files) of files not in `skip` from
    /// "empty" to every snapshot it reaches: snapshot → (bytes, files of the path).
    fn paths(&self, skip: &BTreeMap<usize, String>) -> HashMap<String, (u64, Vec<usize>)> {
        // Dijkstra over the snapshots; the heap holds (bytes, files, snapshot).
        let mut best: HashMap<String, (u64, Vec<usize>)> = HashMap::new();
        let mut heap = BinaryHeap::new();
        let usable = |i: &usize| !skip.contains_key(i);
        for (i, e) in self.edges.iter().enumerate().filter(|(i, _)| usable(i)) {
            if let (None, Some(to)) = (&e.file.from, &e.file.to) {
                heap.push(std::cmp::Reverse((e.bytes, 1usize, to.clone(), vec![i])));
            }
        }
        while let Some(std::cmp::Reverse((bytes, n, snap, path))) = heap.pop() {
            if best.contains_key(&snap) {
                continue;
            }
            for (i, e) in self.edges.iter().enumerate().filter(|(i, _)| usable(i)) {
                if let (Some(from), Some(to)) = (&e.file.from, &e.file.to) {
                    if *from == snap && !best.contains_key(to) {
                        let mut p = path.clone();
                        p.push(i);
                        heap.push(std::cmp::Reverse((bytes + e.bytes, n + 1, to.clone(), p)));
                    }
                }
            }
            best.insert(snap, (bytes, path));
        }
        best
    }

    /// The restorable snapshots with the bytes and files of their cheapest path, oldest
    /// first; files in `skip` are not used.
    pub fn restorable(&self, skip: &BTreeMap<usize, String>) -> Vec<(String, u64, Vec<usize>)> {
        let mut paths = self.paths(skip);
        self.snapshots
            .iter()
            .filter_map(|s| paths.remove(s).map(|(b, p)| (s.clone(), b, p)))
            .collect()
    }

    /// Chooses the path to restore `target` (default: the newest restorable snapshot): the
    /// cheapest path of healthy files. Each file of a candidate path is verified (structure,
    /// sums sidecar where present); a file that fails is passed over and the next cheapest
    /// path is tried.
    ///
    /// # Errors
    /// No file; `target` is not a snapshot of the graph; no healthy path leads to it (the
    /// message names the files passed over and why).
    pub fn choose(&self, target: Option<&str>) -> Result<Choice> {
        self.choose_with(target, &mut |e| check_file(&e.file.path).0)
    }

    /// [`Graph::choose`], checking each file of a candidate path with `check` (which gives
    /// the reason a file is damaged).
    ///
    /// # Errors
    /// As [`Graph::choose`].
    pub fn choose_with(
        &self,
        target: Option<&str>,
        check: &mut dyn FnMut(&Edge) -> std::result::Result<(), String>,
    ) -> Result<Choice> {
        let mut damaged: BTreeMap<usize, String> = BTreeMap::new();
        let mut good: HashSet<usize> = HashSet::new();
        if let Some(t) = target {
            if !self.snapshots.iter().any(|s| s == t) {
                return Err(Error::new(ErrorKind::ChainBreak(format!(
                    "no file ends at snapshot '{t}' (snapshots: {})",
                    self.snapshots
                        .iter()
                        .map(|s| format!("'{s}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))));
            }
        }
        loop {
            let restorable = self.restorable(&damaged);
            let found = match target {
                Some(t) => restorable.into_iter().find(|(s, _, _)| s == t),
                None => restorable.into_iter().last(),
            };
            let Some((snap, bytes, path)) = found else {
                return Err(self.no_path(target, &damaged));
            };
            let mut ok = true;
            for &i in &path {
                if good.contains(&i) {
                    continue;
                }
                match check(&self.edges[i]) {
                    Ok(()) => {
                        good.insert(i);
                    }
                    Err(why) => {
                        damaged.insert(i, why);
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                return Ok(self.choice(snap, bytes, path, damaged, target.is_none()));
            }
        }
    }

    fn choice(
        &self,
        target: String,
        bytes: u64,
        path: Vec<usize>,
        damaged: BTreeMap<usize, String>,
        newest: bool,
    ) -> Choice {
        let mut passed_over = self.unhealthy(&damaged);
        // Healthy files that lead to the target too, on a path of more bytes.
        let leads = self.leading_to(&target);
        let reachable: HashSet<String> = self
            .restorable(&damaged)
            .into_iter()
            .map(|(s, _, _)| s)
            .collect();
        for (i, e) in self.edges.iter().enumerate() {
            let start_ok = e.file.from.as_ref().is_none_or(|f| reachable.contains(f));
            let to_leads = e.file.to.as_ref().is_some_and(|t| leads.contains(t));
            if !path.contains(&i) && !damaged.contains_key(&i) && start_ok && to_leads {
                passed_over.push(PassedOver {
                    file: e.file.path.display().to_string(),
                    reason: "another path reads fewer bytes".into(),
                });
            }
        }
        let mut warnings = Vec::new();
        if newest {
            let later: Vec<String> = self
                .snapshots
                .iter()
                .skip_while(|s| **s != target)
                .skip(1)
                .filter(|s| self.edges.iter().any(|e| e.file.to.as_ref() == Some(s)))
                .map(|s| format!("'{s}'"))
                .collect();
            if !later.is_empty() {
                warnings.push(format!(
                    "newer snapshots are not restorable: {}",
                    later.join(", ")
                ));
            }
        }
        Choice {
            target,
            path,
            bytes,
            passed_over,
            damaged,
            warnings,
        }
    }

    /// The damaged and the unreadable files, with their reasons.
    fn unhealthy(&self, damaged: &BTreeMap<usize, String>) -> Vec<PassedOver> {
        damaged
            .iter()
            .map(|(&i, why)| PassedOver {
                file: self.edges[i].file.path.display().to_string(),
                reason: why.clone(),
            })
            .chain(self.unreadable.iter().cloned())
            .collect()
    }

    /// `target` and every snapshot from which a file chain leads to it.
    fn leading_to(&self, target: &str) -> HashSet<String> {
        let mut set: HashSet<String> = HashSet::from([target.to_string()]);
        loop {
            let before = set.len();
            for e in &self.edges {
                if let (Some(f), Some(t)) = (&e.file.from, &e.file.to) {
                    if set.contains(t) {
                        set.insert(f.clone());
                    }
                }
            }
            if set.len() == before {
                return set;
            }
        }
    }

    /// The error when no healthy path leads to `target` (or to any snapshot).
    fn no_path(&self, target: Option<&str>, damaged: &BTreeMap<usize, String>) -> Error {
        let what = match target {
            Some(t) => format!("snapshot '{t}'"),
            None => "any snapshot".to_string(),
        };
        let bad = self.unhealthy(damaged);
        let mut msg = format!("no path of healthy files leads to {what} from a full diff");
        if bad.is_empty() {
            let reach: HashSet<String> = self
                .restorable(damaged)
                .into_iter()
                .map(|(s, _, _)| s)
                .collect();
            let gaps: Vec<String> = self
                .edges
                .iter()
                .filter(|e| target.is_none_or(|t| e.file.to.as_deref() == Some(t)))
                .filter_map(|e| {
                    let f = e.file.from.as_ref().filter(|f| !reach.contains(*f))?;
                    Some(format!("'{f}', where {} starts", e.file.name()))
                })
                .collect();
            msg.push_str(&format!(
                " (a gap: no full diff or chain of incrementals reaches {})",
                gaps.join("; ")
            ));
        } else {
            let list: Vec<String> = bad
                .iter()
                .map(|b| format!("{} ({})", b.file, b.reason))
                .collect();
            msg.push_str(&format!("; broken: {}", list.join("; ")));
        }
        Error::new(ErrorKind::ChainBreak(msg))
    }
}
