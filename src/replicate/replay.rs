//! `replay`: the snapshots of an archive imported into an image of the backup cluster.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{
    compare_with_export, copy_checked, expect_names, full_diff_sha256, import_with, merged,
    require_same, roll_back_if_changed, sibling, undo_import, Checked, Imported, Sent, Verify,
};
use crate::archive::graph::{newest_lineage, Edge, Graph};
use crate::archive::store::Store;
use crate::error::{Error, Result};
use crate::rbd::{image_name, safe_arg, Rbd};
use crate::sums::Sums;

/// Options of [`replay`].
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// The image whose backups are replayed (default: the only image with files in the
    /// directory, else the target's name).
    pub image: Option<String>,
    /// Replay up to this snapshot (default: the newest restorable one).
    pub to: Option<String>,
    /// Create the target image when it does not exist (imported from the best full diff).
    pub create: bool,
    /// One merged diff, one snapshot (the last), instead of every snapshot in turn.
    pub squash: bool,
    /// When the target has no snapshot in common with the archive: import into a new image
    /// and swap it in (the old one renamed) only after success.
    pub reseed: bool,
    /// The check after each import.
    pub verify: Verify,
    /// At most this many bytes per second into `rbd import-diff`.
    pub limit_rate: Option<u64>,
    /// How to run `rbd` (the backup cluster).
    pub rbd: Rbd,
    /// How long to wait for another run's lock on the archive or the target image (none:
    /// refuse at once).
    pub wait: Option<std::time::Duration>,
    /// The directory of the target images' locks (default [`super::default_lock_dir`]).
    pub lock_dir: Option<std::path::PathBuf>,
}

/// What [`replay`] did.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    /// The target image.
    pub image: String,
    /// The newest snapshot it held that the archive can restore (none: imported from a
    /// full diff).
    pub base: Option<String>,
    /// The snapshot it now holds (the one asked for, or the archive's newest).
    pub target: String,
    /// What was imported, in order (empty when the image was up to date).
    pub imported: Vec<Imported>,
    /// True when the image was created.
    pub created: bool,
    /// With reseed: the name the old image was renamed to (it is left for the operator).
    pub replaced: Option<String>,
    /// Things said on the way.
    pub warnings: Vec<String>,
}

/// What a replay must do, from the archive's snapshots and the target's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayPlan {
    /// The newest target snapshot restorable in the archive (none: nothing in common).
    pub base: Option<String>,
    /// The snapshot to end at.
    pub target: String,
    /// True when the target already holds it.
    pub up_to_date: bool,
}

/// Plans a replay: `order` is the archive's snapshot order, `restorable` the restorable
/// snapshots of its lineage, `target` the target image's snapshots `(id, name)`, `to` the
/// snapshot asked for (default: the newest restorable one).
///
/// # Errors
/// Nothing is restorable; `to` is not restorable; the target's snapshots are in another
/// order than the archive's (the message names both); the target holds a snapshot past
/// `to`.
pub fn plan_replay(
    order: &[String],
    restorable: &[String],
    target: &[(u64, String)],
    to: Option<&str>,
) -> Result<ReplayPlan> {
    let pos = |n: &str| order.iter().position(|o| o == n);
    let goal = match to {
        Some(t) if restorable.iter().any(|r| r == t) => t.to_string(),
        Some(t) => {
            return Err(Error::invalid(format!(
                "snapshot '{t}' is not restorable in the archive (restorable: {})",
                list(restorable)
            )))
        }
        None => restorable
            .iter()
            .max_by_key(|r| pos(r))
            .cloned()
            .ok_or_else(|| Error::invalid("no snapshot of the archive is restorable"))?,
    };
    let mut by_id: Vec<&(u64, String)> = target.iter().collect();
    by_id.sort();
    let common: Vec<&str> = by_id
        .iter()
        .map(|(_, n)| n.as_str())
        .filter(|n| restorable.iter().any(|r| r == n))
        .collect();
    for w in common.windows(2) {
        if pos(w[0]) > pos(w[1]) {
            return Err(Error::invalid(format!(
                "the target's snapshots contradict the archive: '{}' is older than '{}' on the \
                 target, newer in the archive",
                w[0], w[1]
            )));
        }
    }
    let base = common.last().map(|s| s.to_string());
    if by_id.iter().any(|(_, n)| *n == goal) {
        return Ok(ReplayPlan {
            base,
            target: goal,
            up_to_date: true,
        });
    }
    if let Some(b) = &base {
        if pos(b) > pos(&goal) {
            return Err(Error::invalid(format!(
                "the target already holds '{b}', newer in the archive than '{goal}'"
            )));
        }
    }
    Ok(ReplayPlan {
        base,
        target: goal,
        up_to_date: false,
    })
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cheapest path of files (fewest bytes) from snapshot `from` to `to` in `graph`,
/// files in `skip` not used.
fn path_between(
    graph: &Graph,
    from: &str,
    to: &str,
    skip: &BTreeMap<usize, String>,
) -> Option<Vec<usize>> {
    let mut best: BTreeMap<String, (u64, Vec<usize>)> = BTreeMap::new();
    let mut todo = vec![(0u64, from.to_string(), Vec::new())];
    while let Some(i) = (0..todo.len()).min_by_key(|&i| todo[i].0) {
        let (bytes, snap, path) = todo.swap_remove(i);
        if best.contains_key(&snap) {
            continue;
        }
        for (j, e) in graph.edges.iter().enumerate() {
            if skip.contains_key(&j) {
                continue;
            }
            if let (Some(f), Some(t)) = (&e.file.from, &e.file.to) {
                if *f == snap && !best.contains_key(t) {
                    let mut p = path.clone();
                    p.push(j);
                    todo.push((bytes + e.bytes, t.clone(), p));
                }
            }
        }
        best.insert(snap, (bytes, path));
    }
    best.remove(to).map(|(_, p)| p).filter(|p| !p.is_empty())
}

/// Replays the archive `dir` into `spec` (`POOL/IMAGE` on the backup cluster): the base is
/// the newest snapshot of the target that the archive can restore ([`plan_replay`]); every
/// archived snapshot after it up to `opts.to` is imported in order (with `opts.squash`, one
/// merged diff), each streamed in one pass into `rbd import-diff -` with the file's sums
/// checked on the way, then checked on the target ([`Verify`]). A target without a snapshot
/// in common is imported from the best full diff when it does not exist (`opts.create`) or
/// holds no data; with data it is refused, unless `opts.reseed`. A failed import leaves the
/// target at the last snapshot imported before it.
///
/// # Errors
/// As [`plan_replay`]; no path of files from the base; a file does not match its sidecar;
/// an `rbd` call fails; the replica check fails.
pub fn replay(dir: &Path, spec: &str, opts: &ReplayOptions) -> Result<ReplayReport> {
    replay_at(At::Dir(dir), spec, opts)
}

/// [`replay`] from an archive in `store` (object storage): the files are read with ranged
/// reads (as `restore` reads them), each checked against its sidecar as it streams. No lock
/// is taken on the archive (only committed files are read); the target image's is.
///
/// # Errors
/// As [`replay`]; the store cannot be read.
pub fn replay_from_store(
    store: &dyn Store,
    spec: &str,
    opts: &ReplayOptions,
) -> Result<ReplayReport> {
    replay_at(At::Store(store), spec, opts)
}

/// Where the replayed archive lives.
#[derive(Clone, Copy)]
enum At<'a> {
    Dir(&'a Path),
    Store(&'a dyn Store),
}

impl At<'_> {
    fn label(&self) -> String {
        match self {
            At::Dir(d) => d.display().to_string(),
            At::Store(s) => s.url(),
        }
    }

    /// The best path of `graph` to `to`: a directory's files are checked on the way; a
    /// store's were checked against their sidecars when the graph was read, and their
    /// content is checked as it streams.
    fn choose(&self, graph: &Graph, to: &str) -> Result<crate::archive::graph::Choice> {
        match self {
            At::Dir(_) => graph.choose(Some(to)),
            At::Store(_) => graph.choose_with(Some(to), &mut |_| Ok(())),
        }
        .map_err(|e| e.with_file(self.label()))
    }
}

fn replay_at(at: At<'_>, spec: &str, opts: &ReplayOptions) -> Result<ReplayReport> {
    let name = image_name(spec)?;
    if let Some(i) = &opts.image {
        safe_arg("image name", i)?;
    }
    let _lock = match at {
        At::Dir(dir) => {
            if !dir.is_dir() {
                return Err(Error::invalid("not a directory").with_file(dir));
            }
            Some(crate::dirlock::lock(
                dir,
                false,
                crate::dirlock::Command::Replay,
                opts.wait,
            )?)
        }
        At::Store(_) => None,
    };
    let _target_lock = super::lock_destination(
        &opts.rbd,
        spec,
        opts.lock_dir.as_deref(),
        crate::dirlock::Command::Replay,
        opts.wait,
    )?;
    let (image, (graph, others)) = match at {
        At::Dir(dir) => {
            let image = crate::archive::pick_image(dir, Some(name), opts.image.as_deref())?;
            let g = newest_lineage(dir, &image, opts.to.as_deref())?;
            (image, g)
        }
        At::Store(s) => {
            use crate::archive::remote::{newest, pick_image};
            let image = pick_image(s, Some(name), opts.image.as_deref())?;
            let g = newest(s, &image, opts.to.as_deref())?;
            (image, g)
        }
    };
    if graph.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no backup files of {image}",
            at.label()
        )));
    }
    let mut warnings = Vec::new();
    if others > 0 {
        warnings.push(format!(
            "{others} other lineage(s) of {image} (files of another image id) were not used"
        ));
    }
    let restorable: Vec<String> = graph
        .restorable(&BTreeMap::new())
        .into_iter()
        .map(|r| r.0)
        .collect();
    for s in &restorable {
        safe_arg("the end snapshot in a header", s)?;
    }
    let rbd = &opts.rbd;
    let exists = rbd.exists(spec)?;
    let snaps = if exists {
        rbd.snapshots(spec)?
    } else {
        Vec::new()
    };
    let plan = plan_replay(&graph.snapshots, &restorable, &snaps, opts.to.as_deref())?;
    let mut report = ReplayReport {
        image: spec.to_string(),
        base: plan.base.clone(),
        target: plan.target.clone(),
        imported: Vec::new(),
        created: false,
        replaced: None,
        warnings,
    };
    if plan.up_to_date {
        return Ok(report);
    }
    // Where to import, and the steps: paths of files from the base (none: a full first).
    let (into, fresh) = match &plan.base {
        Some(b) => {
            roll_back_if_changed(rbd, spec, b, &mut report.warnings)?;
            (spec.to_string(), false)
        }
        None if !exists => {
            if !opts.create {
                return Err(Error::invalid(format!(
                    "{spec} does not exist (give --create to make it)"
                )));
            }
            (spec.to_string(), true)
        }
        None if snaps.is_empty() && !rbd.changed(spec, None)? => (spec.to_string(), false),
        None if opts.reseed => {
            let stamp = crate::archive::names::utc_stamp();
            (sibling(spec, &format!("{name}.reseed-{stamp}")), true)
        }
        None => {
            return Err(Error::invalid(format!(
                "{spec} has no snapshot restorable in {} (its snapshots: {}; the archive's: \
                 {}): a full diff imported onto an image holding data would leave stale \
                 blocks; give --reseed to rebuild it into a new image",
                at.label(),
                list(&snaps.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>()),
                list(&restorable)
            )));
        }
    };
    let path = match &plan.base {
        Some(b) => path_between(&graph, b, &plan.target, &BTreeMap::new()).ok_or_else(|| {
            Error::invalid(format!(
                "no files in {} lead from '{b}' to '{}'",
                at.label(),
                plan.target
            ))
        })?,
        None => {
            let choice = at.choose(&graph, &plan.target)?;
            report.warnings.extend(choice.warnings);
            choice.path
        }
    };
    // An existing image without data or snapshots: its size, to empty it again should the
    // full import fail.
    let empty_size = match (&plan.base, fresh) {
        (None, false) => Some(rbd.size(&into)?),
        _ => None,
    };
    if fresh {
        let size = graph.edges[path[0]].file.size.max(1);
        rbd.create(&into, size)?;
        report.created = into == spec;
    }
    let r = import_steps(rbd, &into, plan.base.as_deref(), (&graph, at), &path, opts);
    let imported = match r {
        Ok(v) => v,
        Err((done, e)) => {
            // A new image is removed again; an existing one keeps what was imported.
            if fresh {
                let e = match rbd.remove(&into) {
                    Ok(()) => e,
                    Err(x) => Error::invalid(format!(
                        "{e} (and the image {into} made for this replay could not be removed: {x})"
                    )),
                };
                return Err(e);
            }
            if let (Some(size), true) = (empty_size, done.is_empty()) {
                return Err(super::empty_again(rbd, &into, size, e));
            }
            if !done.is_empty() {
                return Err(Error::invalid(format!(
                    "{e} ({spec} holds the snapshots imported before: {})",
                    done.iter()
                        .map(|i| i.to_snap.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            return Err(e);
        }
    };
    report.imported = imported;
    if into != spec {
        let old = format!("{name}.replaced-{}", crate::archive::names::utc_stamp());
        rbd.rename(spec, &sibling(spec, &old))?;
        if let Err(e) = rbd.rename(&into, spec) {
            return Err(Error::invalid(format!(
                "the new image {into} was built, but could not take the name {spec}: {e} (the \
                 old image is now {})",
                sibling(spec, &old)
            )));
        }
        report.replaced = Some(sibling(spec, &old));
    }
    Ok(report)
}

type StepsResult = std::result::Result<Vec<Imported>, (Vec<Imported>, Error)>;

/// Imports the files of `path` into `into` (from `base`): one by one, or merged.
fn import_steps(
    rbd: &Rbd,
    into: &str,
    base: Option<&str>,
    (graph, archive): (&Graph, At<'_>),
    path: &[usize],
    opts: &ReplayOptions,
) -> StepsResult {
    let mut done = Vec::new();
    let steps: Vec<(Option<String>, String, Vec<&Edge>)> = if opts.squash {
        let to = graph.edges[path[path.len() - 1]]
            .file
            .to
            .clone()
            .unwrap_or_default();
        let edges = path.iter().map(|&i| &graph.edges[i]).collect();
        vec![(base.map(String::from), to, edges)]
    } else {
        path.iter()
            .map(|&i| {
                let e = &graph.edges[i];
                (
                    e.file.from.clone(),
                    e.file.to.clone().unwrap_or_default(),
                    vec![e],
                )
            })
            .collect()
    };
    // The snapshot the target is at before each step.
    let mut at = base.map(String::from);
    for (from, to, edges) in steps {
        match import_one(
            rbd,
            into,
            from.as_deref(),
            &to,
            (graph, &edges),
            archive,
            opts,
        ) {
            Ok(i) => done.push(i),
            Err(e) => {
                let e = undo_import(rbd, into, at.as_deref(), &to, e);
                return Err((done, e));
            }
        }
        at = Some(to);
    }
    Ok(done)
}

/// Calls `f` with a reader of what a step sends: the one file of `edges`, or the files
/// merged.
fn with_stream<T>(
    at: At<'_>,
    edges: &[&Edge],
    f: impl FnOnce(Box<dyn std::io::Read + Send>) -> Result<T>,
) -> Result<T> {
    match at {
        At::Dir(_) => f(match edges {
            [one] => crate::input::Input::open(&one.file.name())?.into_reader(),
            _ => Box::new(merged(edges.iter().map(|e| e.file.name()).collect())),
        }),
        At::Store(s) => crate::archive::remote::with_merged(s, edges, f),
    }
}

/// The sums the sidecar of `e` holds (none: it has none).
fn sidecar_of(at: At<'_>, e: &Edge) -> Result<Option<Sums>> {
    match at {
        At::Dir(_) => {
            let side = crate::sums::sums_path(&e.file.path);
            let text = match std::fs::read(&side) {
                Ok(t) => t,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(err) => return Err(Error::from(err).with_file(&side)),
            };
            crate::sums::decode(&text)
                .map(Some)
                .map_err(|err| err.with_file(&side))
        }
        At::Store(s) => crate::archive::remote::sidecar_sums(s, e),
    }
}

/// One import: the files of `edges` (one file, or a chain merged) from `from` to `to`, and
/// its check.
fn import_one(
    rbd: &Rbd,
    into: &str,
    from: Option<&str>,
    to: &str,
    (graph, edges): (&Graph, &[&Edge]),
    at: At<'_>,
    opts: &ReplayOptions,
) -> Result<Imported> {
    let files: Vec<String> = edges.iter().map(|e| e.file.name()).collect();
    let what = files.join(" + ");
    let t0 = std::time::Instant::now();
    let sent: Sent = import_with(rbd, into, opts.limit_rate, |w| {
        let sent =
            with_stream(at, edges, |r| copy_checked(r, w)).map_err(|e| e.with_file(&what))?;
        expect_names(&sent, from, to, &what)?;
        if let [one] = edges {
            check_sidecar(sidecar_of(at, one)?, &sent, &what)?;
        }
        Ok(sent)
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    let check = match opts.verify {
        Verify::None => Checked {
            mode: Verify::None,
            comparison: None,
            sha256: None,
        },
        Verify::Diff => {
            let c = with_stream(at, edges, |r| compare_with_export(rbd, into, from, to, r))?;
            require_same(&c, into, to)?;
            Checked {
                mode: Verify::Diff,
                comparison: Some(c),
                sha256: None,
            }
        }
        Verify::Full => {
            let want = archive_sha256(at, graph, edges, to)?;
            let got = rbd.export_sha256(into, to)?;
            if want != got {
                return Err(Error::invalid(format!(
                    "replica check failed: rbd export of {into}@{to} has sha256 {got}, the \
                     archive's snapshot {want}"
                )));
            }
            Checked {
                mode: Verify::Full,
                comparison: None,
                sha256: Some(got),
            }
        }
    };
    Ok(Imported {
        from_snap: from.map(String::from),
        to_snap: to.to_string(),
        files,
        bytes: sent.sums.file_len,
        seconds,
        check,
    })
}

/// The sha256 of the image at snapshot `to` as the archive holds it: the files of `edges`
/// when they start with a full diff, else the best path of `graph` from a full diff to
/// `to`, merged and laid out ([`full_diff_sha256`]).
fn archive_sha256(at: At<'_>, graph: &Graph, edges: &[&Edge], to: &str) -> Result<String> {
    if edges.first().is_some_and(|e| e.file.from.is_none()) {
        return with_stream(at, edges, full_diff_sha256);
    }
    let choice = at.choose(graph, to)?;
    let full: Vec<&Edge> = choice.path.iter().map(|&i| &graph.edges[i]).collect();
    with_stream(at, &full, full_diff_sha256)
}

/// The stream read (`what`) must be what its `.sums` sidecar describes (when it has one).
fn check_sidecar(want: Option<Sums>, sent: &Sent, what: &str) -> Result<()> {
    let Some(want) = want else {
        return Ok(());
    };
    if want.sha256 != sent.sums.sha256 || want.file_len != sent.sums.file_len {
        return Err(Error::invalid(format!(
            "the diff read ({} bytes, sha256 {}) is not what its sums sidecar describes ({} \
             bytes, sha256 {}): not imported",
            sent.sums.file_len, sent.sums.sha256, want.file_len, want.sha256
        ))
        .with_file(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn t(s: &[(u64, &str)]) -> Vec<(u64, String)> {
        s.iter().map(|(i, n)| (*i, n.to_string())).collect()
    }

    #[test]
    fn base_is_the_newest_common_and_target_the_newest() {
        let order = v(&["a", "b", "c", "d"]);
        let p = plan_replay(&order, &order, &t(&[(1, "a"), (2, "b")]), None).unwrap();
        assert_eq!(p.base.as_deref(), Some("b"));
        assert_eq!(p.target, "d");
        assert!(!p.up_to_date);
    }

    #[test]
    fn a_target_holding_the_snapshot_is_up_to_date() {
        let order = v(&["a", "b"]);
        let p = plan_replay(&order, &order, &t(&[(1, "a"), (2, "b")]), None).unwrap();
        assert!(p.up_to_date);
        let p = plan_replay(&order, &order, &t(&[(1, "a"), (2, "b")]), Some("a")).unwrap();
        assert!(p.up_to_date);
    }

    #[test]
    fn nothing_in_common_has_no_base() {
        let order = v(&["a", "b"]);
        let p = plan_replay(&order, &order, &t(&[(1, "x")]), None).unwrap();
        assert_eq!(p.base, None);
        assert_eq!(p.target, "b");
    }

    #[test]
    fn snapshots_in_another_order_are_refused_naming_both() {
        let order = v(&["a", "b", "c"]);
        let e = plan_replay(&order, &order, &t(&[(1, "b"), (2, "a")]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'b'") && e.contains("'a'"), "{e}");
    }

    #[test]
    fn a_target_past_the_asked_snapshot_is_refused() {
        let order = v(&["a", "b", "c"]);
        let e = plan_replay(&order, &order, &t(&[(1, "c")]), Some("b")).unwrap_err();
        assert!(e.to_string().contains("'c'"), "{e}");
    }

    #[test]
    fn an_unrestorable_snapshot_is_refused() {
        let order = v(&["a", "b", "c"]);
        let e = plan_replay(&order, &v(&["a", "b"]), &[], Some("c")).unwrap_err();
        assert!(e.to_string().contains("not restorable"), "{e}");
        // The default is the newest restorable one.
        let p = plan_replay(&order, &v(&["a", "b"]), &[], None).unwrap();
        assert_eq!(p.target, "b");
        assert!(plan_replay(&order, &[], &[], None).is_err());
    }
}
