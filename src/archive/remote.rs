//! The archive commands over a [`Store`]: an archive on object storage (`s3://BUCKET/PREFIX`)
//! works as one in a directory, with the same reports, through the same graph, base choice,
//! catalog and merge as the directory commands.
//!
//! - A file is part of the archive only once its `.sums` sidecar is there: `backup` streams
//!   `rbd export-diff` through the parser into an [`super::store::Upload`] (a multipart
//!   upload; sums taken on the way), commits it, and uploads the sidecar last. A file's
//!   snapshots, image size and length come from its sidecar (no download of the file); a
//!   file whose sidecar is missing, damaged, or disagrees with its name or length is listed
//!   as unhealthy.
//! - `restore` (and prune's merges) read the files of the chosen path with ranged reads
//!   through the merge into `rbd import-diff -` (or the new object): a plain file streams,
//!   a few reads in flight ([`super::store::READS_IN_FLIGHT`] per file); an indexed `.zst`
//!   is opened at offsets, so only its seek table, its index and the frames holding
//!   surviving data are fetched (one read per frame, 4 in flight:
//!   [`crate::merge::REMOTE_FETCHES`]). Each
//!   file's structure is checked as it is read.
//! - `verify` reads every file once and checks it against its sidecar (length, sha256,
//!   every record's CRC; for a `.zst`, the compressed file's digest too).
//! - Runs that change the archive hold its lease lock ([`super::lease`]); under it they first
//!   remove what killed runs left ([`clean`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::backup::{choose_base, export_stream, BackupOptions, BackupReport};
use super::catalog::{self, Catalog};
use super::graph::{split_lineages, Edge, Graph, Lineage, PassedOver, SumsState};
use super::lease::{with_lock, LockOptions};
use super::listing::{ImageListing, Listing, Status, StatusOptions};
use super::names::{default_snap_name, escape, file_name, is_candidate, unescape, MAX_IMAGE_NAME};
use super::restore::{RestoreOptions, RestoreReport};
use super::store::{ObjectInfo, Store, StoreObject};
use super::ChainFile;
use crate::error::{Error, Result};
use crate::rbd::{image_name, safe_arg};
use crate::sums::Sums;

/// The largest sidecar read.
const MAX_SIDECAR: u64 = 64 << 20;

fn sidecar(name: &str) -> String {
    format!("{name}{}", crate::output::SIDECAR_SUFFIX)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The object name of a graph file (its path is the object's location).
fn object_of(f: &ChainFile) -> String {
    f.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Why a file without its sidecar is no backup (see [`read_sidecar`]).
const NO_SIDECAR: &str = "no .sums sidecar (an upload that never finished)";

/// The sidecar of the object `o`, checked against its name and length.
fn read_sidecar(
    store: &dyn Store,
    o: &ObjectInfo,
    image: &str,
) -> std::result::Result<Sums, String> {
    let bytes = store
        .read_small(&sidecar(&o.name), MAX_SIDECAR)
        .map_err(|e| e.to_string())?
        .ok_or(NO_SIDECAR)?;
    let s = crate::sums::decode(&bytes).map_err(|e| e.to_string())?;
    let len = s.compressed.as_ref().map_or(s.file_len, |c| c.file_len);
    if len != o.size {
        return Err(format!(
            "the sidecar says {len} bytes, the object has {}",
            o.size
        ));
    }
    let to = s.to.as_deref().unwrap_or_default();
    if file_name(image, s.from.as_deref(), to, s.compressed.is_some()) != o.name {
        return Err("its name does not match the snapshots of its sidecar".into());
    }
    Ok(s)
}

/// The graph of `image`'s files in `store`, from their sidecars.
///
/// # Errors
/// The store cannot be listed.
pub fn graph_of(store: &dyn Store, image: &str) -> Result<Graph> {
    let (mut edges, mut unreadable) = (Vec::new(), Vec::new());
    for o in store.list(&escape(image))? {
        if !is_candidate(&o.name, image) {
            continue;
        }
        let path = PathBuf::from(store.location(&o.name));
        match read_sidecar(store, &o, image) {
            Ok(s) => edges.push(Edge {
                file: ChainFile {
                    path,
                    from: s.from,
                    to: s.to,
                    size: s.size.unwrap_or(0),
                    compressed: s.compressed.is_some(),
                },
                bytes: o.size,
                mtime: UNIX_EPOCH + Duration::from_secs(o.mtime),
            }),
            Err(reason) => unreadable.push(PassedOver {
                file: path.display().to_string(),
                reason,
            }),
        }
    }
    Ok(Graph::from_edges(edges, unreadable))
}

/// The lineages of `image` in `store` (see [`super::graph::lineages`]).
///
/// # Errors
/// As [`graph_of`]; the catalog cannot be read.
pub fn lineages(store: &dyn Store, image: &str, cat: &Catalog) -> Result<Vec<Lineage>> {
    let all = graph_of(store, image)?;
    Ok(if all.is_empty() {
        Vec::new()
    } else {
        split_lineages(all, cat)
    })
}

/// The images with backup files in `store`.
///
/// # Errors
/// The store cannot be listed.
pub fn images_in(store: &dyn Store) -> Result<BTreeSet<String>> {
    Ok(store
        .list("")?
        .into_iter()
        .filter_map(|o| {
            let img = unescape(o.name.split_once('@')?.0)?;
            (!img.is_empty() && is_candidate(&o.name, &img)).then_some(img)
        })
        .collect())
}

/// As [`super::pick_image`], for `store`.
pub(crate) fn pick_image(
    store: &dyn Store,
    target: Option<&str>,
    given: Option<&str>,
) -> Result<String> {
    match given {
        Some(g) => Ok(g.to_string()),
        None => super::pick_of(images_in(store)?, &store.url(), target),
    }
}

/// Removes what killed runs left of `image` in `store`: unfinished uploads, files whose
/// sidecar never came (a backup killed between the two commits) and sidecars without their
/// file. Call it holding the lock. Returns what was removed.
///
/// # Errors
/// Listing or removing fails.
pub fn clean(store: &dyn Store, image: &str) -> Result<Vec<String>> {
    let key = format!("{}@", escape(image));
    let mut removed = store.clean_uploads(&key)?;
    let objs = store.list(&key)?;
    let names: BTreeSet<&str> = objs.iter().map(|o| o.name.as_str()).collect();
    for o in &objs {
        let orphan = match o.name.strip_suffix(crate::output::SIDECAR_SUFFIX) {
            Some(main) => is_candidate(main, image) && !names.contains(main),
            None => is_candidate(&o.name, image) && !names.contains(sidecar(&o.name).as_str()),
        };
        if orphan {
            store.delete(&o.name)?;
            removed.push(store.location(&o.name));
        }
    }
    Ok(removed)
}

/// Whether an object of this name exists, for the catalog's clean-up of its records.
pub(crate) fn present_in(store: &dyn Store) -> Result<impl Fn(&str) -> bool> {
    let names: BTreeSet<String> = store.list("")?.into_iter().map(|o| o.name).collect();
    Ok(move |n: &str| names.contains(n))
}

/// [`super::backup::backup`] into `store`: the file is streamed into a multipart upload
/// (memory: upload parts in flight × part size), its sidecar uploaded after it; the run holds
/// the archive's lease lock (`break_lock`: break a lock whose lease has not expired).
///
/// # Errors
/// As [`super::backup::backup`]; the lock is held by another run.
pub fn backup(
    spec: &str,
    store: &dyn Store,
    opts: &BackupOptions,
    break_lock: bool,
) -> Result<BackupReport> {
    let image = image_name(spec)?;
    if escape(image).len() > MAX_IMAGE_NAME {
        return Err(Error::invalid(format!(
            "image name '{image}' is too long for the backup file names (at most \
             {MAX_IMAGE_NAME} bytes, escaped)"
        )));
    }
    if opts.keep_snaps == Some(0) {
        return Err(Error::invalid("--keep-snaps must be at least 1"));
    }
    with_lock(
        store,
        &LockOptions::new("backup", opts.wait, break_lock),
        |_| {
            let r = backup_locked(spec, image, store, opts);
            let outcome = match &r {
                Ok(rep) => Ok(object_of(&ChainFile {
                    path: rep.file.clone().into(),
                    from: None,
                    to: None,
                    size: 0,
                    compressed: false,
                })),
                Err(e) => Err(e.to_string()),
            };
            // A failure to record the outcome does not change what the backup did.
            if let Ok(present) = present_in(store) {
                let _ = catalog::update_in(store, &present, |c| {
                    catalog::set_outcome(c, image, now(), outcome.as_deref().map_err(|e| &**e))
                });
            }
            r
        },
    )
}

fn backup_locked(
    spec: &str,
    image: &str,
    store: &dyn Store,
    opts: &BackupOptions,
) -> Result<BackupReport> {
    let cleaned = clean(store, image)?;
    let all = graph_of(store, image)?;
    super::backup::check_names(&all, &all.restorable(&Default::default()), opts)?;
    let rbd = &opts.rbd;
    let snaps = rbd.snapshots(spec)?;
    let present = present_in(store)?;
    let (archive_id, cat) = archive_id(store, &present)?;
    let snap = match &opts.snap {
        Some(s) => s.clone(),
        None => default_snap_name(&archive_id),
    };
    let image_id = rbd.image_id(spec)?;
    let (fsid, rbd_version) = (rbd.fsid()?, rbd.version()?);
    let graph = split_lineages(all.clone(), &cat)
        .into_iter()
        .find(|l| l.image_id == image_id)
        .map(|l| l.graph)
        .unwrap_or_default();
    let super::backup::Base {
        prev, full_reason, ..
    } = choose_base(
        opts,
        spec,
        image,
        &store.url(),
        &snap,
        &snaps,
        &all,
        &graph,
        &cat,
    )?;
    let compressed = opts.compress.is_some();
    let name = file_name(image, prev.as_deref(), &snap, compressed);
    let place = store.location(&name);
    if store.head(&name)?.is_some() {
        return Err(Error::invalid("output exists").with_file(&place));
    }
    let record = catalog::Record {
        image_id: image_id.clone(),
        time: Some(now()),
        fsid: fsid.clone(),
        rbd_version: rbd_version.clone(),
    };
    record_file(store, &present, &name, record)?;
    // Started first: a store that cannot be written is found before the snapshot is made.
    let mut upload = store.put(&name)?;
    let snap_spec = format!("{spec}@{snap}");
    rbd.run_ok(&["snap", "create", &snap_spec])?;
    let done = export_stream(
        rbd,
        spec,
        &snap_spec,
        prev.as_deref(),
        &mut *upload,
        &place,
        opts,
    )
    .and_then(|x| {
        let n = upload.commit()?;
        if let Err(e) = store.put_small(&sidecar(&name), &crate::sums::encode(&x.sums)) {
            let _ = store.delete(&name);
            return Err(e);
        }
        Ok((x, n))
    });
    match done {
        Ok((x, n)) => {
            let mut report = BackupReport {
                file: place,
                sums: store.location(&sidecar(&name)),
                image: spec.to_string(),
                from_snap: prev,
                to_snap: snap.clone(),
                compressed,
                bytes: x.bytes,
                file_bytes: n,
                records: x.records,
                image_size: x.size,
                removed_snapshots: Vec::new(),
                warnings: Vec::new(),
                cleaned,
                full_reason,
                image_id,
                archive_id,
                fsid,
                rbd_version,
            };
            if let Some(k) = opts.keep_snaps {
                super::backup::keep_snaps(rbd, spec, &snap, k, &mut report);
            }
            Ok(report)
        }
        Err(e) => match rbd.run(&["snap", "rm", "--no-progress", &snap_spec]) {
            Ok(r) if r.ok => Err(e),
            Ok(r) => Err(Error::invalid(format!(
                "{e} (and the snapshot {snap_spec} made for this backup could not be \
                 removed: {})",
                r.stderr
            ))),
            Err(e2) => Err(Error::invalid(format!(
                "{e} (and the snapshot {snap_spec} made for this backup could not be \
                 removed: {e2})"
            ))),
        },
    }
}

/// The archive's id in `store` (made and recorded in its catalog when it has none), and the
/// catalog; `present` tells the objects there (records of others are dropped on a write).
///
/// # Errors
/// The store cannot be read or written.
pub(crate) fn archive_id(
    store: &dyn Store,
    present: &dyn Fn(&str) -> bool,
) -> Result<(String, Catalog)> {
    let cat = catalog::read_from(store)?;
    if let Some(id) = cat.archive_id.clone() {
        return Ok((id, cat));
    }
    let id = catalog::new_id()?;
    let cat = catalog::update_in(store, present, |c| {
        c.archive_id.get_or_insert_with(|| id.clone());
    })?;
    Ok((cat.archive_id.clone().unwrap_or(id), cat))
}

/// Records `record` for the file `name` in the catalog of `store`, before the file is
/// committed (see the catalog's docs); `present` as for [`archive_id`].
///
/// # Errors
/// The store cannot be read or written.
pub(crate) fn record_file(
    store: &dyn Store,
    present: &dyn Fn(&str) -> bool,
    name: &str,
    record: catalog::Record,
) -> Result<()> {
    catalog::update_in(store, present, |c| {
        c.files.insert(name.to_string(), record);
    })?;
    Ok(())
}

/// The newest lineage of `image` (with `to`, the newest holding it) and how many others.
pub(crate) fn newest(store: &dyn Store, image: &str, to: Option<&str>) -> Result<(Graph, usize)> {
    let cat = catalog::read_from(store)?;
    let mut all = lineages(store, image, &cat)?;
    let n = all.len().saturating_sub(1);
    let pick = to.and_then(|s| {
        all.iter()
            .rposition(|l| l.graph.snapshots.iter().any(|x| x == s))
    });
    Ok(if all.is_empty() {
        (Graph::default(), 0)
    } else {
        (all.swap_remove(pick.unwrap_or(n)).graph, n)
    })
}

/// The newest lineage of `image` in `store` (with `to`, the newest holding it) and the best
/// path in it to `to` (default: the newest restorable snapshot). Each file was checked
/// against its sidecar when the graph was read; its structure is checked as it streams.
///
/// # Errors
/// No file of `image`; no healthy path to `to`.
fn path_to(
    store: &dyn Store,
    image: &str,
    to: Option<&str>,
) -> Result<(Graph, super::graph::Choice)> {
    let (graph, others) = newest(store, image, to)?;
    if graph.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no backup files of {image}",
            store.url()
        )));
    }
    let mut choice = graph
        .choose_with(to, &mut |_| Ok(()))
        .map_err(|e| e.with_file(store.url()))?;
    if others > 0 {
        choice.warnings.push(format!(
            "{others} other lineage(s) of {image} (files of another image id, see `list`) \
             were not used"
        ));
    }
    Ok((graph, choice))
}

/// [`super::restore::restore`] from `store`: the files of the path stream with ranged
/// reads through the merge into `rbd import-diff -`. No lock is taken (only committed files
/// are read).
///
/// # Errors
/// As [`super::restore::restore`].
pub fn restore(
    store: &dyn Store,
    spec: &str,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RestoreReport> {
    let target = super::restore::checked_names(spec, opts)?;
    let image = pick_image(store, Some(target), opts.image.as_deref())?;
    let (graph, choice) = path_to(store, &image, opts.to.as_deref())?;
    let edges: Vec<&Edge> = choice.path.iter().map(|&i| &graph.edges[i]).collect();
    let names: Vec<String> = edges.iter().map(|e| e.file.name()).collect();
    let objects = store_objects(store, &edges);
    let mut inputs = merge_inputs(store, &edges, &objects, &names)?;
    let (stats, size, created) =
        super::restore::import_merged(&mut inputs, spec, &store.url(), opts, progress)?;
    drop(inputs);
    Ok(RestoreReport {
        image: spec.to_string(),
        files: names,
        bytes_read: choice.bytes,
        passed_over: choice.passed_over,
        warnings: choice.warnings,
        from_snap: stats.from_snap,
        to_snap: stats.to_snap,
        image_size: size,
        created,
        bytes: stats.bytes_written,
        records: stats.records,
    })
}

/// [`super::restore::restore_to_file`] from `store`: the files of the path are read as
/// [`restore`] reads them, merged in one pass, and applied to the raw image file or block
/// device `target` as a stream is ([`crate::apply::apply_input_with_progress`]: checked as
/// it is applied; an interrupted restore is finished by the same command). No lock is taken
/// on the archive.
///
/// # Errors
/// As [`super::restore::restore_to_file`]; the store cannot be read.
pub fn restore_to_file(
    store: &dyn Store,
    target: &std::path::Path,
    opts: &super::restore::FileRestoreOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<super::restore::FileRestoreReport> {
    if let Some(i) = &opts.image {
        safe_arg("image name", i)?;
    }
    let image = pick_image(store, None, opts.image.as_deref())?;
    let (graph, choice) = path_to(store, &image, opts.snap.as_deref())?;
    let edges: Vec<&Edge> = choice.path.iter().map(|&i| &graph.edges[i]).collect();
    let names: Vec<String> = edges.iter().map(|e| e.file.name()).collect();
    let created = !target.exists();
    let aopts = crate::apply::ApplyOptions {
        create: created,
        force: opts.force,
        check_sums: false,
        state_file: opts.state_file.clone(),
    };
    let label = names.join(" + ");
    let apply = with_merged(store, &edges, |r| {
        let input = crate::input::Input::from_reader(&label, r)?;
        crate::apply::apply_input_with_progress(input, target, &aopts, progress)
    })?;
    Ok(super::restore::FileRestoreReport {
        image,
        snap: choice.target,
        files: names,
        bytes_read: choice.bytes,
        passed_over: choice.passed_over,
        warnings: choice.warnings,
        created,
        apply,
    })
}

/// The objects of the files of `edges`, to read at offsets.
fn store_objects<'s>(store: &'s dyn Store, edges: &[&Edge]) -> Vec<StoreObject<'s>> {
    edges
        .iter()
        .map(|e| StoreObject::new(store, &object_of(&e.file), e.bytes))
        .collect()
}

/// The merge's inputs for the files of `edges` (named `names`, their `objects`): an
/// indexed archive is opened at offsets, so a merge fetches its seek table, its index and
/// only the frames holding surviving data (one ranged read per frame,
/// [`crate::merge::REMOTE_FETCHES`] in flight); any other file streams through ranged reads of
/// [`super::store::READ_SIZE`], [`super::store::READS_IN_FLIGHT`] at once.
fn merge_inputs<'a>(
    store: &dyn Store,
    edges: &[&Edge],
    objects: &'a [StoreObject<'a>],
    names: &'a [String],
) -> Result<Vec<crate::merge::MergeInput<'a>>> {
    let mut inputs = Vec::with_capacity(edges.len());
    for ((e, obj), name) in edges.iter().zip(objects).zip(names) {
        if e.file.compressed {
            let opened = crate::zst::ZstArchive::open_at(obj.positioned())
                .map_err(|err| err.with_file(store.location(&object_of(&e.file))))?;
            if let Some(a) = opened {
                inputs.push(crate::merge::MergeInput::archive(name, a));
                continue;
            }
        }
        inputs.push(crate::merge::MergeInput::stream(
            name,
            stream_of(store, e)?,
        )?);
    }
    Ok(inputs)
}

/// The content of the file of `e`, read forward through ranged reads (decompressed when it
/// is compressed).
///
/// # Errors
/// The object cannot be read.
fn stream_of(store: &dyn Store, e: &Edge) -> Result<Box<dyn Read + Send>> {
    let r = store.reader(&object_of(&e.file), e.bytes)?;
    let r: Box<dyn Read + Send> = match sidecar_sums(store, e)? {
        Some(s) => {
            let (len, sha) = match s.compressed {
                Some(c) => (c.file_len, c.sha256),
                None => (s.file_len, s.sha256),
            };
            Box::new(SumChecked {
                inner: Digest {
                    inner: r,
                    sha: <sha2::Sha256 as sha2::Digest>::new(),
                    len: 0,
                },
                want: Some((len, sha)),
                name: e.file.name(),
            })
        }
        None => r,
    };
    Ok(crate::input::Input::from_reader(&e.file.name(), r)?.into_reader())
}

/// A whole file read forward whose end is an error unless its length and sha256 are those
/// of its sidecar: a damaged file fails the merge before the `e` record of its output, so
/// that `rbd import-diff` sees a cut stream and makes no snapshot (the structure of every
/// file is checked as it is parsed, the content of a plain file only so).
struct SumChecked {
    inner: Digest<Box<dyn Read + Send>>,
    /// The length and sha256 of the sidecar (none once compared).
    want: Option<(u64, String)>,
    name: String,
}

impl Read for SumChecked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        let want = match self.want.take() {
            Some(w) if n == 0 && !buf.is_empty() => w,
            w => {
                self.want = w;
                return Ok(n);
            }
        };
        let sha = crate::sums::hex(&std::mem::take(&mut self.inner.sha).finalize());
        if (self.inner.len, sha) != want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: damaged: its {} bytes are not the ones its sidecar sums",
                    self.name, self.inner.len
                ),
            ));
        }
        Ok(0)
    }
}

/// Calls `f` with a reader of the files of `edges` in `store`: the one file's bytes, or the
/// files merged in one pass (on a thread of this call, read as [`merge_inputs`] says).
/// An error of the merge wins over `f`'s (which then saw a truncated stream); a merge stopped
/// because `f` stopped reading gives what `f` gave (e.g. an apply with nothing left to do).
///
/// # Errors
/// A file cannot be read or does not merge, or `f` fails.
pub(crate) fn with_merged<T>(
    store: &dyn Store,
    edges: &[&Edge],
    f: impl FnOnce(Box<dyn Read + Send>) -> Result<T>,
) -> Result<T> {
    if let [one] = edges {
        return f(stream_of(store, one)?);
    }
    let names: Vec<String> = edges.iter().map(|e| e.file.name()).collect();
    let objects = store_objects(store, edges);
    let mut mi = merge_inputs(store, edges, &objects, &names)?;
    let (w, r) = crate::compress::pipe();
    std::thread::scope(|s| {
        let producer = s.spawn(move || -> Result<()> {
            let p = crate::merge::plan(&mi, &crate::merge::MergeOptions::default())?;
            let (mut w, _) = p.write(&mut mi, w, crate::Version::V1, &mut |_, _| {})?;
            std::io::Write::flush(&mut w)?;
            Ok(())
        });
        let out = f(Box::new(r));
        let produced = producer
            .join()
            .map_err(|_| Error::invalid("internal: merge thread panicked"))?;
        let stopped = |p: &Error| {
            matches!(p.kind(), crate::ErrorKind::Io(x)
                if x.kind() == std::io::ErrorKind::BrokenPipe)
        };
        match (out, produced) {
            (Ok(v), Ok(())) => Ok(v),
            // `f` stopped reading (done, or failed): the merge's broken pipe says nothing.
            (Ok(v), Err(p)) if stopped(&p) => Ok(v),
            (Err(e), Err(p)) if stopped(&p) => Err(e),
            (_, Err(p)) => Err(p),
            (Err(e), Ok(())) => Err(e),
        }
    })
}

/// The sums the sidecar of `e`'s object in `store` holds (none: it has no sidecar).
///
/// # Errors
/// The sidecar cannot be read or decoded.
pub(crate) fn sidecar_sums(store: &dyn Store, e: &Edge) -> Result<Option<Sums>> {
    let name = sidecar(&object_of(&e.file));
    match store.read_small(&name, MAX_SIDECAR)? {
        None => Ok(None),
        Some(b) => crate::sums::decode(&b)
            .map(Some)
            .map_err(|err| err.with_file(store.location(&name))),
    }
}

/// [`super::listing::list`] of `store` (every image, or only `image`); each file as its
/// sidecar describes it (see the module docs).
///
/// # Errors
/// The store cannot be read.
pub fn list(store: &dyn Store, image: Option<&str>) -> Result<Listing> {
    let images: Vec<String> = match image {
        Some(i) => vec![i.to_string()],
        None => images_in(store)?.into_iter().collect(),
    };
    let cat = catalog::read_from(store)?;
    let mut out: Vec<ImageListing> = Vec::new();
    let one = |i: &str, id: Option<String>, g: &Graph| {
        let sums = vec![SumsState::Ok; g.edges.len()];
        super::listing::listing_checked(i.to_string(), id, g, &cat, BTreeMap::new(), sums)
    };
    for i in images {
        let ls = lineages(store, &i, &cat)?;
        if ls.is_empty() {
            out.push(one(&i, None, &Graph::default()));
        }
        for l in ls {
            out.push(one(&i, l.image_id, &l.graph));
        }
    }
    Ok(Listing { images: out })
}

/// [`super::listing::status`] of `store`.
///
/// # Errors
/// As [`list`]; the metrics file cannot be written.
pub fn status(store: &dyn Store, opts: &StatusOptions) -> Result<Status> {
    let l = list(store, opts.image.as_deref())?;
    super::listing::status_of(l, &store.url(), opts)
}

/// Reads every file of `store` (or of `image`) once and checks it against its sidecar:
/// structure, length, sha256 and every record's CRC (for a `.zst` also the compressed
/// file's length and digest). The report has the shape of a directory's
/// ([`crate::verify::VerifyReport`]): each file with what its sidecar says of it, and a
/// finding for each problem (`sums` for a missing, damaged or disagreeing sidecar or
/// content that differs from it, `structure` for content that does not parse).
///
/// # Errors
/// The store cannot be listed.
pub fn verify(store: &dyn Store, image: Option<&str>) -> Result<crate::verify::VerifyReport> {
    use crate::verify::{FileInfo, Finding, Severity};
    let images: Vec<String> = match image {
        Some(i) => vec![i.to_string()],
        None => images_in(store)?.into_iter().collect(),
    };
    let mut report = crate::verify::VerifyReport::default();
    for i in images {
        for o in store.list(&escape(&i))? {
            if !is_candidate(&o.name, &i) {
                continue;
            }
            let place = store.location(&o.name);
            let mut info = FileInfo {
                file: place.clone(),
                kind: "unknown".into(),
                from_snap: None,
                to_snap: None,
                image_size: None,
                valid: false,
                sums: "damaged",
            };
            let found = match read_sidecar(store, &o, &i) {
                Err(reason) => {
                    info.sums = if reason == NO_SIDECAR {
                        "absent"
                    } else {
                        "damaged"
                    };
                    Some(("sums", None, None, reason))
                }
                Ok(s) => {
                    info.kind = format!("diff {}", s.diff_version);
                    (info.from_snap, info.to_snap, info.image_size) =
                        (s.from.clone(), s.to.clone(), s.size);
                    match check_content(store, &o, &s) {
                        Ok(()) => {
                            (info.valid, info.sums) = (true, "ok");
                            None
                        }
                        Err(Bad::Differs(what)) => {
                            (info.valid, info.sums) = (true, "mismatch");
                            Some((
                                "sums",
                                None,
                                None,
                                format!("{what} differs from its sidecar"),
                            ))
                        }
                        Err(Bad::Invalid(e)) => {
                            info.sums = "skipped";
                            Some(("structure", e.offset(), e.record(), e.kind().to_string()))
                        }
                    }
                }
            };
            if let Some((check, offset, record, message)) = found {
                report.findings.push(Finding {
                    severity: Severity::Problem,
                    check,
                    file: place,
                    offset,
                    record,
                    message,
                });
            }
            report.files.push(info);
        }
    }
    Ok(report)
}

/// Passes what it reads on, digesting it.
struct Digest<R> {
    inner: R,
    sha: sha2::Sha256,
    len: u64,
}

impl<R: Read> Read for Digest<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Why a file does not pass [`verify`].
enum Bad {
    /// It cannot be read, or its content does not parse.
    Invalid(Error),
    /// It parses, but this differs from its sidecar.
    Differs(&'static str),
}

impl From<Error> for Bad {
    fn from(e: Error) -> Self {
        Bad::Invalid(e)
    }
}

/// [`check_content`], any difference an error naming the object.
fn check_object(store: &dyn Store, o: &ObjectInfo, want: &Sums) -> Result<()> {
    check_content(store, o, want).map_err(|b| match b {
        Bad::Invalid(e) => e,
        Bad::Differs(what) => Error::invalid(format!("{what} differs from its sidecar"))
            .with_file(store.location(&o.name)),
    })
}

/// Streams `o` and compares it with its sidecar `want`.
fn check_content(store: &dyn Store, o: &ObjectInfo, want: &Sums) -> std::result::Result<(), Bad> {
    use sha2::Digest as _;
    let place = store.location(&o.name);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, String)>(1);
    let raw = store.reader(&o.name, o.size)?;
    let digest = DigestSend {
        inner: Digest {
            inner: raw,
            sha: sha2::Sha256::new(),
            len: 0,
        },
        tx: Some(tx),
    };
    let input = crate::input::Input::from_reader(&place, Box::new(digest))?;
    let mut rd = input.into_reader();
    let got = crate::sums::copy_with_sums(&mut rd, &mut std::io::sink())
        .map_err(|e| e.with_file(&place))?;
    // The rest of the raw object (a compressed file's seek table and index).
    std::io::copy(&mut rd, &mut std::io::sink()).map_err(|e| Error::from(e).with_file(&place))?;
    drop(rd);
    let (raw_len, raw_sha) = rx
        .recv()
        .map_err(|_| Error::invalid("internal: no digest").with_file(&place))?;
    if got.file_len != want.file_len {
        return Err(Bad::Differs("the diff's length"));
    }
    if got.records != want.records {
        return Err(Bad::Differs("a record's checksum"));
    }
    if got.sha256 != want.sha256 {
        return Err(Bad::Differs("the diff's sha256"));
    }
    if let Some(c) = &want.compressed {
        if c.file_len != raw_len || c.sha256 != raw_sha {
            return Err(Bad::Differs("the compressed file's digest"));
        }
    }
    Ok(())
}

/// A [`Digest`] that sends its length and digest when dropped (the reader is moved into the
/// decompressor).
struct DigestSend {
    inner: Digest<Box<dyn Read + Send>>,
    tx: Option<std::sync::mpsc::SyncSender<(u64, String)>>,
}

impl Read for DigestSend {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Drop for DigestSend {
    fn drop(&mut self) {
        use sha2::Digest as _;
        // What the reader did not need (a compressed file's seek table) is digested too.
        let _ = std::io::copy(&mut self.inner, &mut std::io::sink());
        let sha = std::mem::take(&mut self.inner.sha).finalize();
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send((self.inner.len, crate::sums::hex(&sha)));
        }
    }
}

/// [`super::prune::prune`] of the archive in `store`, holding its lease lock: each merged
/// file streams from its inputs (ranged reads) through the merge into a multipart upload,
/// then its sidecar; it is read back and checked against the sidecar before anything is
/// deleted. Deletions remove a file's sidecar first (a file without one is no backup, and is
/// removed by the next run). A run killed after its merges but before its deletions leaves
/// both (every snapshot stays restorable); the next prune deletes what the plan no longer
/// needs.
///
/// # Errors
/// As [`super::prune::prune`]; the lock is held by another run.
pub fn prune(
    store: &dyn Store,
    opts: &super::prune::PruneOptions,
    break_lock: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<super::prune::PruneReport> {
    if opts.policy.is_empty() {
        return Err(Error::invalid(
            "no retention rule: give at least one of --keep-last (--keep), --keep-hourly, \
             --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within \
             (prune never deletes every older snapshot by default)",
        ));
    }
    let mut run = |_: Option<&super::lease::Owner>| prune_locked(store, opts, progress);
    if opts.dry_run {
        return run(None);
    }
    with_lock(
        store,
        &LockOptions::new("prune", opts.wait, break_lock),
        run,
    )
}

fn prune_locked(
    store: &dyn Store,
    opts: &super::prune::PruneOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<super::prune::PruneReport> {
    let image = pick_image(store, None, opts.image.as_deref())?;
    let cleaned = if opts.dry_run {
        Vec::new()
    } else {
        clean(store, &image)?
    };
    let cat = catalog::read_from(store)?;
    let mut ls = lineages(store, &image, &cat)?;
    let graph = ls.pop().map(|l| l.graph).unwrap_or_default();
    let older = super::prune::older_lineages(&ls);
    let names: BTreeSet<String> = store.list("")?.into_iter().map(|o| o.name).collect();
    let exists = |p: &std::path::Path| {
        p.file_name()
            .is_some_and(|n| names.contains(n.to_string_lossy().as_ref()))
    };
    let place = PathBuf::from(store.url());
    let (mut report, plan, outputs) = super::prune::plan_prune(
        &place,
        &image,
        &graph,
        older,
        cleaned,
        &cat,
        opts,
        &exists,
        BTreeMap::new(),
    )?;
    let Some(plan) = plan else {
        return Ok(report);
    };
    let edge = |i: usize| &graph.edges[i];
    let mut made: Vec<String> = Vec::new();
    let merged = (|| -> Result<()> {
        for (k, m) in plan.merges.iter().enumerate() {
            let out = object_of(&ChainFile {
                path: outputs[k].clone(),
                from: None,
                to: None,
                size: 0,
                compressed: false,
            });
            if let Some(rec) = m
                .inputs
                .last()
                .and_then(|&i| cat.files.get(&object_of(&edge(i).file)))
            {
                let present = present_in(store)?;
                catalog::update_in(store, &present, |c| {
                    c.files.insert(out.clone(), rec.clone());
                })?;
            }
            let inputs: Vec<&Edge> = m.inputs.iter().map(|&i| edge(i)).collect();
            let compress = report.merges[k]
                .compressed
                .then(crate::compress::CompressOptions::default);
            made.push(out.clone());
            let n = merge_into(store, &inputs, &out, compress.as_ref(), progress)?;
            report.merges[k].bytes = Some(n);
            // Read back and checked before anything is deleted.
            let o = store.head(&out)?.ok_or_else(|| {
                Error::invalid("the merged file is gone").with_file(store.location(&out))
            })?;
            let s = read_sidecar(store, &o, &image)
                .map_err(|e| Error::invalid(e).with_file(store.location(&out)))?;
            check_object(store, &o, &s)?;
            if s.from != m.from || s.to.as_deref() != Some(m.to.as_str()) {
                return Err(
                    Error::invalid("the merged file runs between other snapshots")
                        .with_file(store.location(&out)),
                );
            }
        }
        Ok(())
    })();
    if let Err(e) = merged {
        for out in &made {
            let _ = store.delete(&sidecar(out));
            let _ = store.delete(out);
        }
        return Err(e);
    }
    report.bytes = report.merges.iter().filter_map(|m| m.bytes).sum();
    let deleted_bytes: u64 = plan.delete.iter().map(|&i| edge(i).bytes).sum();
    report.bytes_after = report.bytes_before - deleted_bytes + report.bytes;
    for &i in &plan.delete {
        let name = object_of(&edge(i).file);
        for n in [sidecar(&name), name.clone()] {
            store.delete(&n)?;
            report.deleted.push(store.location(&n));
        }
    }
    Ok(report)
}

/// Merges `inputs` (streamed from `store`) into the new object `out` and uploads its
/// sidecar; returns the object's length. On failure nothing of `out` is left.
fn merge_into(
    store: &dyn Store,
    inputs: &[&Edge],
    out: &str,
    compress: Option<&crate::compress::CompressOptions>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let mut upload = store.put(out)?;
    let place = store.location(out);
    let x = with_merged(store, inputs, |r| {
        super::backup::stream_checked(r, &mut *upload, compress, None)
    })
    .map_err(|e| e.with_file(&place))?;
    progress(x.bytes, x.bytes);
    let n = upload.commit()?;
    if let Err(e) = store.put_small(&sidecar(out), &crate::sums::encode(&x.sums)) {
        let _ = store.delete(out);
        return Err(e);
    }
    Ok(n)
}

/// Options of [`copy`].
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// Only this image's files (default: every image's).
    pub image: Option<String>,
    /// Wait up to this long for another run's lock on the destination.
    pub wait: Option<Duration>,
    /// Break the destination's lease lock even when its lease has not expired.
    pub break_lock: bool,
}

/// What [`copy`] did.
#[derive(Clone, Debug, Serialize)]
pub struct CopyReport {
    /// The source archive.
    pub source: String,
    /// The destination archive.
    pub destination: String,
    /// The files copied (their sidecars aside), as named at the destination.
    pub copied: Vec<String>,
    /// Files the destination holds already, with the same sidecar.
    pub present: Vec<String>,
    /// Source files not copied, and why (no sidecar, or one that does not describe them).
    pub passed_over: Vec<PassedOver>,
    /// Bytes copied.
    pub bytes: u64,
}

/// Copies the backup files of `src` (every image's, or `opts.image`'s) with their sidecars
/// into `dst` (a directory or an object store, either way) and verifies each copy: it is
/// read back and checked against its sidecar before the sidecar is written, so a file
/// counts at the destination only once it is whole. The catalog records of the files (and
/// the archive id, when the destination has none) go along. The destination is locked (a
/// directory's exclusive lock, an object store's lease lock), a source directory shared.
///
/// # Errors
/// A store fails; a destination file of the same name exists with another sidecar; a copy
/// does not verify (it is removed again).
pub fn copy(src: &dyn Store, dst: &dyn Store, opts: &CopyOptions) -> Result<CopyReport> {
    use crate::dirlock::{lock, Command};
    let _src_lock = match src.local_dir() {
        Some(d) if d.is_dir() => Some(lock(d, false, Command::Copy, opts.wait)?),
        Some(d) => return Err(Error::invalid("not a directory").with_file(d)),
        None => None,
    };
    match dst.local_dir() {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::from(e).with_file(d))?;
            let _l = lock(d, true, Command::Copy, opts.wait)?;
            copy_locked(src, dst, opts)
        }
        None => with_lock(
            dst,
            &LockOptions::new("copy", opts.wait, opts.break_lock),
            |_| copy_locked(src, dst, opts),
        ),
    }
}

fn copy_locked(src: &dyn Store, dst: &dyn Store, opts: &CopyOptions) -> Result<CopyReport> {
    let images: Vec<String> = match &opts.image {
        Some(i) => vec![i.clone()],
        None => images_in(src)?.into_iter().collect(),
    };
    let mut report = CopyReport {
        source: src.url(),
        destination: dst.url(),
        copied: Vec::new(),
        present: Vec::new(),
        passed_over: Vec::new(),
        bytes: 0,
    };
    let mut copied_names = Vec::new();
    for image in &images {
        for o in src.list(&escape(image))? {
            if !is_candidate(&o.name, image) {
                continue;
            }
            let sums = match read_sidecar(src, &o, image) {
                Ok(s) => s,
                Err(reason) => {
                    report.passed_over.push(PassedOver {
                        file: src.location(&o.name),
                        reason,
                    });
                    continue;
                }
            };
            let sc = sidecar(&o.name);
            let text = crate::sums::encode(&sums);
            if let Some(there) = dst.head(&o.name)? {
                let same = there.size == o.size
                    && dst.read_small(&sc, MAX_SIDECAR)?.is_some_and(|t| t == text);
                if same {
                    report.present.push(dst.location(&o.name));
                    continue;
                }
                return Err(Error::invalid(
                    "exists at the destination with other content (not replaced)",
                )
                .with_file(dst.location(&o.name)));
            }
            let mut up = dst.put(&o.name)?;
            let mut r = src.reader(&o.name, o.size)?;
            std::io::copy(&mut r, &mut up)
                .map_err(|e| Error::from(e).with_file(src.location(&o.name)))?;
            let n = up.commit()?;
            let checked = dst
                .head(&o.name)?
                .ok_or_else(|| Error::invalid("the copy is gone").with_file(dst.location(&o.name)))
                .and_then(|info| check_object(dst, &info, &sums))
                .and_then(|()| dst.put_small(&sc, &text));
            if let Err(e) = checked {
                let _ = dst.delete(&sc);
                let _ = dst.delete(&o.name);
                return Err(e);
            }
            report.bytes += n;
            report.copied.push(dst.location(&o.name));
            copied_names.push(o.name.clone());
        }
    }
    if !copied_names.is_empty() {
        let from = catalog::read_from(src)?;
        let present = present_in(dst)?;
        let merge = |c: &mut Catalog| {
            for n in &copied_names {
                if let Some(r) = from.files.get(n) {
                    c.files.insert(n.clone(), r.clone());
                }
            }
            if c.archive_id.is_none() {
                c.archive_id.clone_from(&from.archive_id);
            }
            for (i, last) in &from.images {
                c.images.entry(i.clone()).or_insert_with(|| last.clone());
            }
        };
        catalog::update_in(dst, &present, merge)?;
    }
    Ok(report)
}
