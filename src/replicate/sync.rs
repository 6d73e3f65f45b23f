//! `sync`: one new snapshot of a source image carried to a destination image on another
//! cluster, in one run, without files in between.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    compare_with_export, copy_checked, empty_again, expect_names, import_with, require_same,
    roll_back_if_changed, undo_import, Checked, Imported, Verify,
};
use crate::archive::catalog;
use crate::archive::names::{default_snap_name, file_name, is_own_snap, parse_snap_name};
use crate::archive::policy::{self, Policy};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::rbd::{collect_stderr, image_name, is_broken_pipe, rbd_failed, safe_arg, Rbd};

/// Options of [`sync`].
#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// How to reach the source cluster.
    pub src: Rbd,
    /// How to reach the destination cluster.
    pub dst: Rbd,
    /// Name of the snapshot to create on the source (default `rbddiff-TAG-TIME`, TAG taken
    /// from the destination cluster's fsid and image, see `sync_tag`).
    pub snap: Option<String>,
    /// The check after the import.
    pub verify: Verify,
    /// At most this many bytes per second into the destination.
    pub limit_rate: Option<u64>,
    /// Afterwards keep only the newest K snapshots this sync made on the source (by their
    /// names' tag); the newest common snapshot (the one just made) is always kept.
    pub keep_snaps: Option<usize>,
    /// Afterwards remove the destination's snapshots that syncs to it made (by their names'
    /// tag) and this retention policy does not keep, by the time in their names (UTC, when
    /// the snapshot was made on the source); the newest common snapshot (the one just made)
    /// is always kept. An empty policy removes nothing. See `destination_snaps_to_remove`.
    pub dst_keep: Policy,
    /// Also write the diff carried into this archive (the same atomic, summed file as
    /// `backup` writes; the snapshot names then carry the archive's tag): a directory, or
    /// `s3://BUCKET/PREFIX` (streamed into a multipart upload, under the archive's lease
    /// lock).
    pub archive: Option<std::path::PathBuf>,
    /// How to reach an `s3://` archive (else the `AWS_*` variables).
    pub s3: crate::archive::store::S3Config,
    /// How long to wait for another run's lock on the destination image or the archive
    /// (none: refuse at once).
    pub wait: Option<std::time::Duration>,
    /// The directory of the destination images' locks (default
    /// [`super::default_lock_dir`]).
    pub lock_dir: Option<PathBuf>,
}

/// What [`sync`] did.
#[derive(Clone, Debug, Serialize)]
pub struct SyncReport {
    /// The source image.
    pub source: String,
    /// The destination image.
    pub destination: String,
    /// The newest snapshot the two had in common before (none: first sync, a full diff).
    pub base: Option<String>,
    /// The snapshot made and carried.
    pub imported: Imported,
    /// True when the destination image was created.
    pub created: bool,
    /// The archive file written (with `archive`).
    pub archive_file: Option<String>,
    /// Snapshots removed by `keep_snaps` on the source.
    pub removed_source_snapshots: Vec<String>,
    /// Snapshots removed by `dst_keep` on the destination.
    pub removed_destination_snapshots: Vec<String>,
    /// Things said on the way (a HEAD rolled back, a snapshot not removed).
    pub warnings: Vec<String>,
}

/// The newest snapshot of the source (`src`, `(id, name)`) that the destination (`dst`)
/// also holds, which must be the destination's newest: a destination snapshot newer than
/// every common one means it was changed on its own and is refused. None: nothing in common.
///
/// # Errors
/// The destination has snapshots newer than the newest common one.
pub fn plan_sync(src: &[(u64, String)], dst: &[(u64, String)]) -> Result<Option<String>> {
    let mut by_src: Vec<&(u64, String)> = src.iter().collect();
    by_src.sort();
    let on_dst = |n: &str| dst.iter().find(|(_, d)| d == n).map(|(id, _)| *id);
    let Some((base, dst_id)) = by_src
        .iter()
        .rev()
        .find_map(|(_, n)| on_dst(n).map(|id| (n.clone(), id)))
    else {
        return Ok(None);
    };
    let newer: Vec<&str> = dst
        .iter()
        .filter(|(id, _)| *id > dst_id)
        .map(|(_, n)| n.as_str())
        .collect();
    if !newer.is_empty() {
        return Err(Error::invalid(format!(
            "the destination holds snapshot(s) newer than '{base}', the newest it has in common \
             with the source, that the source does not have: {}",
            newer.join(", ")
        )));
    }
    Ok(Some(base))
}

/// The tag of the snapshot names a sync to `dst_spec` on the cluster of fsid `fsid` makes:
/// the first digits of a sha256 of both, so that each destination's snapshots are told apart
/// (by [`crate::archive::names::is_own_snap`]).
pub fn sync_tag(fsid: Option<&str>, dst_spec: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("sync:{}:{dst_spec}", fsid.unwrap_or("")).as_bytes());
    crate::sums::hex(&h)
}

/// Syncs `src_spec` to `dst_spec` (both `POOL/IMAGE`, on the clusters of `opts.src` and
/// `opts.dst`): finds the newest snapshot they have in common ([`plan_sync`]; none and no
/// destination image: a first, full sync into a new image), creates a new snapshot on the
/// source, streams `rbd export-diff --from-snap BASE` through the parser into
/// `rbd import-diff -` on the destination, confirms the destination holds the new snapshot
/// and checks it ([`Verify`]). On failure the destination is left at its previous snapshot
/// (its HEAD rolled back to it, a half-made snapshot removed, an image this run created
/// removed) and the source snapshot made is removed: a rerun completes.
///
/// # Errors
/// A destination with data but no snapshot in common; an `rbd` call fails; the stream is
/// malformed; the replica check fails.
pub fn sync(src_spec: &str, dst_spec: &str, opts: &SyncOptions) -> Result<SyncReport> {
    use crate::archive::store::{open, Location};
    let remote = match &opts.archive {
        Some(a) => Some(Location::parse(&a.to_string_lossy())?).filter(Location::is_remote),
        None => None,
    };
    match remote {
        Some(loc) => sync_with_store(src_spec, dst_spec, opts, &*open(&loc, &opts.s3)?),
        None => sync_into(src_spec, dst_spec, opts, None),
    }
}

/// [`sync`] that also writes the diff into the archive in `store` (object storage; its lease
/// lock is taken for the run), whatever `opts.archive` says.
///
/// # Errors
/// As [`sync`]; the archive's lock is held by another run.
pub fn sync_with_store(
    src_spec: &str,
    dst_spec: &str,
    opts: &SyncOptions,
    store: &dyn crate::archive::store::Store,
) -> Result<SyncReport> {
    let lock = crate::archive::lease::LockOptions::new("sync", opts.wait, false);
    crate::archive::lease::with_lock(store, &lock, |_| {
        sync_into(src_spec, dst_spec, opts, Some(store))
    })
}

/// [`sync`], with the archive in `store` when it is on object storage (locked by the caller).
fn sync_into(
    src_spec: &str,
    dst_spec: &str,
    opts: &SyncOptions,
    store: Option<&dyn crate::archive::store::Store>,
) -> Result<SyncReport> {
    image_name(src_spec)?;
    image_name(dst_spec)?;
    if let Some(s) = &opts.snap {
        safe_arg("snapshot name", s)?;
        if s.contains(['/', '@']) {
            return Err(Error::invalid(format!("bad snapshot name '{s}'")));
        }
    }
    if opts.keep_snaps == Some(0) {
        return Err(Error::invalid("--keep-snaps must be at least 1"));
    }
    let (src, dst) = (&opts.src, &opts.dst);
    let _dst_lock = super::lock_destination(
        dst,
        dst_spec,
        opts.lock_dir.as_deref(),
        crate::dirlock::Command::Sync,
        opts.wait,
    )?;
    let src_snaps = src.snapshots(src_spec)?;
    let exists = dst.exists(dst_spec)?;
    let dst_snaps = if exists {
        dst.snapshots(dst_spec)?
    } else {
        Vec::new()
    };
    let base = plan_sync(&src_snaps, &dst_snaps)?;
    let mut warnings = Vec::new();
    match &base {
        Some(b) => roll_back_if_changed(dst, dst_spec, b, &mut warnings)?,
        None if exists && (!dst_snaps.is_empty() || dst.changed(dst_spec, None)?) => {
            return Err(Error::invalid(format!(
                "{dst_spec} holds {} but no snapshot in common with {src_spec}: a full diff \
                 imported onto it would leave stale data (remove it, or rebuild it with \
                 `rbddiff replay --reseed`)",
                if dst_snaps.is_empty() {
                    "data".to_string()
                } else {
                    format!("{} snapshot(s)", dst_snaps.len())
                }
            )));
        }
        None => {}
    }
    if let Some(b) = &base {
        safe_arg("the newest common snapshot", b)?;
    }
    let image = image_name(src_spec)?;
    let archive = match (&opts.archive, store) {
        (_, Some(s)) => Some(Archive::open_store(
            s,
            src_spec,
            image,
            src,
            base.as_deref(),
            &mut warnings,
        )?),
        (Some(dir), None) => Some(Archive::open(
            dir,
            src_spec,
            image,
            src,
            base.as_deref(),
            opts.wait,
            &mut warnings,
        )?),
        (None, _) => None,
    };
    let tag = match &archive {
        Some(a) => a.id.clone(),
        None => sync_tag(dst.fsid()?.as_deref(), dst_spec),
    };
    let snap = opts.snap.clone().unwrap_or_else(|| default_snap_name(&tag));
    if src_snaps.iter().any(|(_, n)| *n == snap) {
        return Err(Error::invalid(format!(
            "snapshot '{snap}' already exists on {src_spec}"
        )));
    }
    let created = !exists;
    // An existing image without snapshots is empty (else refused above): its size, to
    // empty it again should the full import fail.
    let empty_size = match (&base, exists) {
        (None, true) => Some(dst.size(dst_spec)?),
        _ => None,
    };
    let mut archive = match archive {
        Some(a) => Some(a.start(image, base.as_deref(), &snap)?),
        None => None,
    };
    src.snap_create(src_spec, &snap)?;
    let r = (|| {
        if created {
            dst.create(dst_spec, src.size(&format!("{src_spec}@{snap}"))?.max(1))?;
        }
        carry(
            src_spec,
            dst_spec,
            base.as_deref(),
            &snap,
            opts,
            archive.as_mut(),
        )
        .and_then(|i| match archive.take() {
            Some(w) => w.commit().map(|f| (i, Some(f))),
            None => Ok((i, None)),
        })
        .map_err(|e| {
            if created {
                match dst.remove(dst_spec) {
                    Ok(()) => e,
                    Err(x) => Error::invalid(format!(
                        "{e} (and the image {dst_spec} created for this sync could not be \
                         removed: {x})"
                    )),
                }
            } else {
                let e = undo_import(dst, dst_spec, base.as_deref(), &snap, e);
                match empty_size {
                    Some(size) => empty_again(dst, dst_spec, size, e),
                    None => e,
                }
            }
        })
    })();
    let (imported, archive_file) = match r {
        Ok(i) => i,
        Err(e) => {
            return Err(match src.snap_rm(src_spec, &snap) {
                Ok(()) => e,
                Err(x) => Error::invalid(format!(
                    "{e} (and the snapshot {src_spec}@{snap} made for this sync could not be \
                     removed: {x})"
                )),
            })
        }
    };
    let mut report = SyncReport {
        source: src_spec.to_string(),
        destination: dst_spec.to_string(),
        base,
        imported,
        created,
        archive_file,
        removed_source_snapshots: Vec::new(),
        removed_destination_snapshots: Vec::new(),
        warnings,
    };
    if let Some(k) = opts.keep_snaps {
        report.removed_source_snapshots =
            keep_snaps(src, src_spec, &snap, &tag, k, &mut report.warnings);
    }
    if !opts.dst_keep.is_empty() {
        report.removed_destination_snapshots = dst_keep(
            dst,
            dst_spec,
            &snap,
            &tag,
            &opts.dst_keep,
            &mut report.warnings,
        );
    }
    Ok(report)
}

/// The transfer of `snap` (from `base`) and its check.
fn carry(
    src_spec: &str,
    dst_spec: &str,
    base: Option<&str>,
    snap: &str,
    opts: &SyncOptions,
    mut archive: Option<&mut Writing>,
) -> Result<Imported> {
    let (src, dst) = (&opts.src, &opts.dst);
    let what = format!("rbd export-diff {src_spec}@{snap}");
    let t0 = std::time::Instant::now();
    let sent = import_with(dst, dst_spec, opts.limit_rate, |w| {
        let mut child = src.spawn_export_diff(src_spec, base, snap)?;
        let stderr = collect_stderr(&mut child);
        let copied = match child.stdout.take() {
            Some(out) => match archive.as_mut() {
                Some(a) => copy_checked(out, &mut Tee(w, &mut a.sink)),
                None => copy_checked(out, w),
            },
            None => Err(Error::invalid("internal: no pipe from rbd")),
        };
        let status = child.wait()?;
        let err = stderr.join().unwrap_or_default();
        // The import ended first: its own error says why (the export then fails on EPIPE).
        if matches!(&copied, Err(e) if is_broken_pipe(e)) {
            return copied;
        }
        if !status.success() {
            return Err(rbd_failed(&what, &err));
        }
        let sent = copied.map_err(|e| e.with_file(&what))?;
        expect_names(&sent, base, snap, &what)?;
        if let Some(a) = archive.as_mut() {
            a.sums = Some(sent.sums.clone());
        }
        Ok(sent)
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    if !dst.snapshots(dst_spec)?.iter().any(|(_, n)| n == snap) {
        return Err(Error::invalid(format!(
            "rbd import-diff into {dst_spec} succeeded but the snapshot '{snap}' is not there"
        )));
    }
    let check = match opts.verify {
        Verify::None => Checked {
            mode: Verify::None,
            comparison: None,
            sha256: None,
        },
        Verify::Diff => {
            // The source's diff again: the stream sent is gone.
            let mut child = src.spawn_export_diff(src_spec, base, snap)?;
            let stderr = collect_stderr(&mut child);
            let c = match child.stdout.take() {
                Some(out) => compare_with_export(dst, dst_spec, base, snap, out),
                None => Err(Error::invalid("internal: no pipe from rbd")),
            };
            let status = child.wait()?;
            let err = stderr.join().unwrap_or_default();
            if !status.success() {
                return Err(rbd_failed(&what, &err));
            }
            let c = c?;
            require_same(&c, dst_spec, snap)?;
            Checked {
                mode: Verify::Diff,
                comparison: Some(c),
                sha256: None,
            }
        }
        Verify::Full => {
            let a = src.export_sha256(src_spec, snap)?;
            let b = dst.export_sha256(dst_spec, snap)?;
            if a != b {
                return Err(Error::invalid(format!(
                    "replica check failed: rbd export of {dst_spec}@{snap} has sha256 {b}, of \
                     {src_spec}@{snap} {a}"
                )));
            }
            Checked {
                mode: Verify::Full,
                comparison: None,
                sha256: Some(a),
            }
        }
    };
    Ok(Imported {
        from_snap: base.map(String::from),
        to_snap: snap.to_string(),
        files: Vec::new(),
        bytes: sent.sums.file_len,
        seconds,
        check,
    })
}

/// Writes to two writers.
struct Tee<'a>(&'a mut dyn Write, &'a mut dyn Write);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// The archive a sync also writes into, locked for the run.
struct Archive<'s> {
    place: Place<'s>,
    id: String,
    image_id: Option<String>,
    fsid: Option<String>,
    rbd_version: Option<String>,
}

/// Where the archive is: a directory (locked here), or a store (locked by the caller).
enum Place<'s> {
    Dir {
        dir: PathBuf,
        _lock: crate::dirlock::DirLock,
    },
    Store(&'s dyn crate::archive::store::Store),
}

/// The file being written into the archive.
struct Writing<'s> {
    name: String,
    place: Place<'s>,
    sink: Sink<'s>,
    sums: Option<crate::sums::Sums>,
}

/// Where a [`Writing`]'s bytes go: a temporary file beside the target, or an upload.
enum Sink<'s> {
    File(Output),
    Upload(Box<dyn crate::archive::store::Upload + 's>),
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(o) => o.write(buf),
            Sink::Upload(u) => u.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(o) => o.flush(),
            Sink::Upload(u) => u.flush(),
        }
    }
}

/// Says in `warnings` when the archive at `place`, holding `lineages` of the image, cannot
/// restore `base` in the lineage of `image_id`: the incremental written there is then not
/// restorable until it can.
fn warn_unrestorable(
    lineages: Vec<crate::archive::graph::Lineage>,
    image_id: &Option<String>,
    place: &str,
    base: &str,
    warnings: &mut Vec<String>,
) {
    let ok = lineages
        .into_iter()
        .find(|l| l.image_id == *image_id)
        .is_some_and(|l| {
            l.graph
                .restorable(&Default::default())
                .iter()
                .any(|r| r.0 == base)
        });
    if !ok {
        warnings.push(format!(
            "{place} cannot restore '{base}': the incremental written there is not restorable \
             until it can (back up a full diff)"
        ));
    }
}

impl<'s> Archive<'s> {
    /// [`Archive::open`] of an archive in `store` (object storage).
    fn open_store(
        store: &'s dyn crate::archive::store::Store,
        src_spec: &str,
        image: &str,
        src: &Rbd,
        base: Option<&str>,
        warnings: &mut Vec<String>,
    ) -> Result<Archive<'s>> {
        // What killed runs left (an upload's marker, a file without its sidecar) goes first,
        // as a backup does.
        use crate::archive::remote;
        remote::clean(store, image)?;
        let (id, cat) = remote::archive_id(store, &remote::present_in(store)?)?;
        let image_id = src.image_id(src_spec)?;
        if let Some(b) = base {
            let lineages = remote::lineages(store, image, &cat)?;
            warn_unrestorable(lineages, &image_id, &store.url(), b, warnings);
        }
        Ok(Archive {
            place: Place::Store(store),
            id,
            image_id,
            fsid: src.fsid()?,
            rbd_version: src.version()?,
        })
    }

    /// Opens (creates) and locks the archive `dir`; says in `warnings` when it cannot
    /// restore `base`, so that the file written will not be restorable.
    fn open(
        dir: &Path,
        src_spec: &str,
        image: &str,
        src: &Rbd,
        base: Option<&str>,
        wait: Option<std::time::Duration>,
        warnings: &mut Vec<String>,
    ) -> Result<Archive<'s>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::from(e).with_file(dir))?;
        let lock = crate::dirlock::lock(dir, true, crate::dirlock::Command::Sync, wait)?;
        let id = crate::archive::catalog::archive_id(dir)?;
        let image_id = src.image_id(src_spec)?;
        if let Some(b) = base {
            let lineages = crate::archive::graph::lineages(dir, image)?;
            warn_unrestorable(lineages, &image_id, &dir.display().to_string(), b, warnings);
        }
        Ok(Archive {
            place: Place::Dir {
                dir: dir.to_path_buf(),
                _lock: lock,
            },
            id,
            image_id,
            fsid: src.fsid()?,
            rbd_version: src.version()?,
        })
    }

    /// Starts the file of the diff from `base` to `snap` (recorded in the catalog first).
    fn start(self, image: &str, base: Option<&str>, snap: &str) -> Result<Writing<'s>> {
        let name = file_name(image, base, snap, false);
        let record = catalog::Record {
            image_id: self.image_id.clone(),
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs()),
            fsid: self.fsid.clone(),
            rbd_version: self.rbd_version.clone(),
        };
        let sink = match &self.place {
            Place::Dir { dir, .. } => {
                let path = dir.join(&name);
                if path.exists() {
                    return Err(Error::invalid("output exists").with_file(&path));
                }
                let output = Output::create_like(&path.to_string_lossy(), false, None)?;
                catalog::record(dir, &name, record)?;
                Sink::File(output)
            }
            Place::Store(store) => {
                if store.head(&name)?.is_some() {
                    return Err(Error::invalid("output exists").with_file(store.location(&name)));
                }
                let present = crate::archive::remote::present_in(*store)?;
                crate::archive::remote::record_file(*store, &present, &name, record)?;
                Sink::Upload(store.put(&name)?)
            }
        };
        Ok(Writing {
            name,
            place: self.place,
            sink,
            sums: None,
        })
    }
}

impl Writing<'_> {
    /// Commits the file and writes its sidecar (last); returns its location.
    fn commit(self) -> Result<String> {
        let sums = self
            .sums
            .ok_or_else(|| Error::invalid("internal: no sums of the archived diff"))?;
        match (self.sink, &self.place) {
            (Sink::File(output), Place::Dir { dir, .. }) => {
                let path = dir.join(&self.name);
                output.commit()?;
                if let Err(e) = crate::sums::write_sums(&path, &sums) {
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(crate::sums::sums_path(&path));
                    return Err(e);
                }
                Ok(path.display().to_string())
            }
            (Sink::Upload(upload), Place::Store(store)) => {
                upload.commit()?;
                let side = format!("{}{}", self.name, crate::output::SIDECAR_SUFFIX);
                if let Err(e) = store.put_small(&side, &crate::sums::encode(&sums)) {
                    let _ = store.delete(&self.name);
                    return Err(e);
                }
                Ok(store.location(&self.name))
            }
            _ => Err(Error::invalid("internal: archive sink and place disagree")),
        }
    }
}

/// Removes the snapshots of `spec` named with `tag` beyond the newest `k`, never `keep`.
/// What fails is a warning.
fn keep_snaps(
    rbd: &Rbd,
    spec: &str,
    keep: &str,
    tag: &str,
    k: usize,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let snaps = match rbd.snapshots(spec) {
        Ok(s) => s,
        Err(e) => {
            warnings.push(format!("--keep-snaps: {e}"));
            return Vec::new();
        }
    };
    let ours: Vec<&String> = snaps
        .iter()
        .map(|(_, n)| n)
        .filter(|n| n.as_str() != keep && is_own_snap(n, tag))
        .collect();
    let keep_others = if is_own_snap(keep, tag) { k - 1 } else { k };
    let excess = ours.len().saturating_sub(keep_others);
    let mut removed = Vec::new();
    for name in ours.into_iter().take(excess) {
        match rbd.snap_rm(spec, name) {
            Ok(()) => removed.push(name.clone()),
            Err(e) => warnings.push(format!("could not remove snapshot {spec}@{name}: {e}")),
        }
    }
    removed
}

/// The snapshots of the destination (`snaps`, oldest first) that the retention `policy`
/// removes: of those named with `tag` (made by syncs to this destination, see
/// [`sync_tag`]), the ones the policy does not keep ([`policy::select`]), by the UTC time
/// their names carry (when the snapshot was made on the source; `rbd snap ls` gives the
/// time it was imported, in the rbd client's local time zone). `keep` (the newest common
/// snapshot) and every other snapshot (not made by a sync, or with a time that does not
/// parse) are never removed; the newest of the tagged ones is always kept.
pub fn destination_snaps_to_remove(
    snaps: &[String],
    tag: &str,
    keep: &str,
    policy: &Policy,
) -> Vec<String> {
    let ours: Vec<policy::Snap> = snaps
        .iter()
        .filter(|n| is_own_snap(n, tag))
        .filter_map(|n| {
            let time = crate::utc::parse_stamp(parse_snap_name(n)?.1)?;
            Some(policy::Snap {
                name: n.clone(),
                time,
            })
        })
        .collect();
    let kept = policy::select(policy, &ours);
    ours.into_iter()
        .map(|s| s.name)
        .filter(|n| n != keep && !kept.contains_key(n))
        .collect()
}

/// Removes the snapshots of the destination `spec` that [`destination_snaps_to_remove`]
/// names. What fails is a warning.
fn dst_keep(
    rbd: &Rbd,
    spec: &str,
    keep: &str,
    tag: &str,
    policy: &Policy,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let snaps = match rbd.snapshots(spec) {
        Ok(s) => s.into_iter().map(|(_, n)| n).collect::<Vec<_>>(),
        Err(e) => {
            warnings.push(format!("--dst-keep-*: {e}"));
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for name in destination_snaps_to_remove(&snaps, tag, keep, policy) {
        match rbd.snap_rm(spec, &name) {
            Ok(()) => removed.push(name),
            Err(e) => warnings.push(format!("could not remove snapshot {spec}@{name}: {e}")),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sync's snapshot name of tag `t` made at `stamp` (`YYYYmmddTHHMMSS`).
    fn named(t: &str, stamp: &str) -> String {
        format!("rbddiff-{}-{stamp}.000000001Z", &t[..8])
    }

    #[test]
    fn destination_retention_removes_only_what_the_policy_drops() {
        let tag = sync_tag(Some("f"), "rbd/a");
        let other = sync_tag(Some("g"), "rbd/a");
        // Two a day for four days, oldest first, with others' snapshots between.
        let mut snaps = vec!["manual".to_string(), named(&other, "20261101T000000")];
        for day in 1..=4 {
            for hour in ["01", "13"] {
                snaps.push(named(&tag, &format!("2026110{day}T{hour}0000")));
            }
        }
        snaps.push(format!("rbddiff-{}-garbageZ", &tag[..8]));
        let newest = snaps[snaps.len() - 2].clone();
        let daily = Policy {
            daily: 2,
            ..Policy::default()
        };
        let gone = destination_snaps_to_remove(&snaps, &tag, &newest, &daily);
        // Kept: the newest of days 4 and 3; removed: the rest of ours, oldest first.
        let expect: Vec<String> = [
            "20261101T010000",
            "20261101T130000",
            "20261102T010000",
            "20261102T130000",
            "20261103T010000",
            "20261104T010000",
        ]
        .iter()
        .map(|s| named(&tag, s))
        .collect();
        assert_eq!(gone, expect);
        // keep-last 3 and keep-within 1d (relative to the newest): the union.
        let p = Policy {
            last: 3,
            within: Some(std::time::Duration::from_secs(86_400)),
            ..Policy::default()
        };
        let gone = destination_snaps_to_remove(&snaps, &tag, &newest, &p);
        assert_eq!(gone.len(), 5, "{gone:?}");
        assert!(!gone.contains(&named(&tag, "20261103T130000")), "{gone:?}");
        // The newest common snapshot is never removed, even when the policy would.
        let base = named(&tag, "20261102T010000");
        let last = Policy {
            last: 1,
            ..Policy::default()
        };
        let gone = destination_snaps_to_remove(&snaps, &tag, &base, &last);
        assert_eq!(gone.len(), 6, "{gone:?}");
        assert!(!gone.contains(&base) && !gone.contains(&newest), "{gone:?}");
        // Never another's snapshot, nor one whose time does not parse.
        for p in [&daily, &p, &last] {
            let gone = destination_snaps_to_remove(&snaps, &tag, &newest, p);
            assert!(gone
                .iter()
                .all(|n| is_own_snap(n, &tag) && n.ends_with("1Z")));
        }
    }

    fn s(v: &[(u64, &str)]) -> Vec<(u64, String)> {
        v.iter().map(|(i, n)| (*i, n.to_string())).collect()
    }

    #[test]
    fn base_is_the_newest_common_snapshot() {
        let src = s(&[(1, "a"), (2, "b"), (3, "c")]);
        let dst = s(&[(7, "a"), (9, "b")]);
        assert_eq!(plan_sync(&src, &dst).unwrap().as_deref(), Some("b"));
    }

    #[test]
    fn nothing_in_common_is_none() {
        let src = s(&[(1, "a")]);
        assert_eq!(plan_sync(&src, &[]).unwrap(), None);
        assert_eq!(plan_sync(&src, &s(&[(1, "x")])).unwrap(), None);
    }

    #[test]
    fn a_destination_snapshot_past_the_base_is_refused() {
        let src = s(&[(1, "a"), (2, "b")]);
        let dst = s(&[(1, "a"), (2, "b"), (3, "local")]);
        let e = plan_sync(&src, &dst).unwrap_err().to_string();
        assert!(e.contains("local") && e.contains("'b'"), "{e}");
    }

    #[test]
    fn tags_differ_by_destination() {
        assert_ne!(sync_tag(Some("f"), "rbd/a"), sync_tag(Some("f"), "rbd/b"));
        assert_ne!(sync_tag(Some("f"), "rbd/a"), sync_tag(Some("g"), "rbd/a"));
        assert!(sync_tag(None, "x").len() >= crate::archive::names::TAG_LEN);
    }
}
