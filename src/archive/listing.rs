//! What an archive holds, for people and monitoring: [`list`] gives, per image, every
//! restorable snapshot with the files of its best path, and the files no path uses or no
//! restore can use; [`status`] says whether each image's newest restorable snapshot is
//! recent enough.
//!
//! Both verify every file (structure, `.sums` sidecar where present) under a shared lock, as
//! restore would before using it: a snapshot is listed as restorable only when a path of
//! healthy files leads to it.
//!
//! The *time* of a snapshot is the backup time the catalog ([`super::catalog`]) records for
//! the file that ends at it on its best path; else the UTC time in its name when it is one
//! `backup` makes (`rbddiff-YYYYmmddTHHMMSS[.NNNNNNNNN]Z`); else that file's modification
//! time (when it was committed; a prune gives its merged file the catalog record and the
//! modification time of the last file it merges).
//!
//! Each file's `.sums` sidecar state is listed ([`SumsState`]: `ok`, `missing`, `stale`), and
//! each snapshot's (`ok` when every file of its path has a sidecar that matches).
//!
//! An image's files of different image ids are listed as separate lineages; [`status`]
//! looks at the newest lineage of each image for its restorable snapshots and counts the
//! files and bytes of all. It also gives the outcome of the image's last backups (from the
//! catalog), and writes them as node-exporter textfile metrics on request ([`prometheus`]).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::catalog::{Catalog, LastBackup};
pub use super::graph::SumsState;
use super::graph::{lineages, Graph, PassedOver};
use super::names::images_in;
use crate::error::{Error, Result};

/// One restorable snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Its name.
    pub name: String,
    /// Its time, seconds since the epoch (see the module docs).
    pub time: u64,
    /// Its time as `YYYYmmddTHHMMSSZ`.
    pub time_utc: String,
    /// Where the time comes from: `catalog`, `name` or `mtime`.
    pub time_from: &'static str,
    /// Image size at the snapshot.
    pub size: u64,
    /// The files of its best path, in order.
    pub files: Vec<String>,
    /// Bytes a restore of it reads.
    pub bytes: u64,
    /// `ok` when every file of its path has a sidecar that matches, else `missing`.
    pub sums: SumsState,
}

/// One file of an image's lineage.
#[derive(Clone, Debug, Serialize)]
pub struct FileState {
    /// Path of the file.
    pub file: String,
    /// Its size on disk.
    pub bytes: u64,
    /// The state of its `.sums` sidecar.
    pub sums: SumsState,
}

/// One image of an archive.
#[derive(Clone, Debug, Serialize)]
pub struct ImageListing {
    /// The image name.
    pub image: String,
    /// The image id of this lineage (none: unknown).
    pub image_id: Option<String>,
    /// Its restorable snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
    /// Healthy files no best path uses (e.g. a periodic full beside a cheaper chain, or
    /// files starting at a snapshot no healthy path reaches).
    pub unused: Vec<String>,
    /// Damaged or unreadable files, with the reason.
    pub unhealthy: Vec<PassedOver>,
    /// Every file of the lineage (unreadable ones too), sorted by path.
    pub files: Vec<FileState>,
    /// Their bytes on disk.
    pub bytes: u64,
    /// The outcome of the image's last backups (catalog; the same for each lineage).
    pub last_backup: Option<LastBackup>,
}

/// What [`list`] found.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// The images by name, each image's lineages oldest first.
    pub images: Vec<ImageListing>,
}

/// The UTC time in a name `backup` makes (`rbddiff-[TAG-]YYYYmmddTHHMMSS[.N…]Z`).
fn name_time(name: &str) -> Option<u64> {
    let (_, s) = super::names::parse_snap_name(name)?;
    let s = s.strip_suffix('Z')?;
    let (dt, frac) = s.split_once('.').unwrap_or((s, ""));
    if dt.len() != 15 || dt.as_bytes()[8] != b'T' || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| dt.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// The time of the snapshot `name` whose best path is `path` (indexes into `g`'s edges), and
/// where it comes from (`catalog`, `name` or `mtime`): see the module docs.
pub(crate) fn snapshot_time(
    g: &Graph,
    cat: &Catalog,
    name: &str,
    path: &[usize],
) -> (u64, &'static str) {
    let last = path.last().map(|&i| &g.edges[i]);
    let recorded = last.and_then(|e| {
        let n = e.file.path.file_name()?.to_str()?;
        cat.files.get(n)?.time
    });
    match (recorded, name_time(name)) {
        (Some(t), _) => (t, "catalog"),
        (None, Some(t)) => (t, "name"),
        (None, None) => (
            last.and_then(|e| e.mtime.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            "mtime",
        ),
    }
}

fn listing(image: String, image_id: Option<String>, g: &Graph, cat: &Catalog) -> ImageListing {
    let (damaged, sums) = g.check();
    listing_checked(image, image_id, g, cat, damaged, sums)
}

/// The listing of the lineage `g` whose files were checked: `damaged` (with the reason) and
/// the state of each file's sidecar.
pub(crate) fn listing_checked(
    image: String,
    image_id: Option<String>,
    g: &Graph,
    cat: &Catalog,
    damaged: std::collections::BTreeMap<usize, String>,
    sums: Vec<SumsState>,
) -> ImageListing {
    let restorable = g.restorable(&damaged);
    let mut used = std::collections::BTreeSet::new();
    let snapshots = restorable
        .into_iter()
        .map(|(name, bytes, path)| {
            used.extend(path.iter().copied());
            let last = path.last().map(|&i| &g.edges[i]);
            let (time, time_from) = snapshot_time(g, cat, &name, &path);
            Snapshot {
                time_utc: super::names::stamp(time),
                time,
                time_from,
                size: last.map_or(0, |e| e.file.size),
                files: path.iter().map(|&i| g.edges[i].file.name()).collect(),
                bytes,
                sums: if path.iter().all(|&i| sums[i] == SumsState::Ok) {
                    SumsState::Ok
                } else {
                    SumsState::Missing
                },
                name,
            }
        })
        .collect();
    let unhealthy = damaged
        .iter()
        .map(|(&i, why)| PassedOver {
            file: g.edges[i].file.name(),
            reason: why.clone(),
        })
        .chain(g.unreadable.iter().cloned())
        .collect();
    let unused = (0..g.edges.len())
        .filter(|i| !used.contains(i) && !damaged.contains_key(i))
        .map(|i| g.edges[i].file.name())
        .collect();
    let mut files: Vec<FileState> = g
        .edges
        .iter()
        .zip(&sums)
        .map(|(e, &s)| FileState {
            file: e.file.name(),
            bytes: e.bytes,
            sums: s,
        })
        .chain(g.unreadable.iter().map(|u| FileState {
            bytes: std::fs::symlink_metadata(&u.file).map_or(0, |m| m.len()),
            file: u.file.clone(),
            sums: SumsState::Unchecked,
        }))
        .collect();
    files.sort_by(|a, b| a.file.cmp(&b.file));
    ImageListing {
        last_backup: cat.images.get(&image).cloned(),
        bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        image,
        image_id,
        snapshots,
        unused,
        unhealthy,
    }
}

/// Lists the archive `dir` (every image, or only `image`) under a shared lock, waiting up to
/// `wait` for a run that changes it ([`crate::dirlock`]); see the module docs.
///
/// # Errors
/// `dir` is not a directory or cannot be read; it is locked by a run that changes it (past
/// `wait`).
pub fn list(dir: &Path, image: Option<&str>, wait: Option<Duration>) -> Result<Listing> {
    list_for(dir, image, crate::dirlock::Command::List, wait)
}

/// [`list`], locking for `command`.
fn list_for(
    dir: &Path,
    image: Option<&str>,
    command: crate::dirlock::Command,
    wait: Option<Duration>,
) -> Result<Listing> {
    if !dir.is_dir() {
        return Err(Error::invalid("not a directory").with_file(dir));
    }
    let _lock = crate::dirlock::lock(dir, false, command, wait)?;
    let images: Vec<String> = match image {
        Some(i) => vec![i.to_string()],
        None => images_in(dir)?.into_iter().collect(),
    };
    let cat = super::catalog::read(dir)?;
    let mut out = Vec::new();
    for i in images {
        let ls = lineages(dir, &i)?;
        if ls.is_empty() {
            out.push(listing(i.clone(), None, &Graph::default(), &cat));
        }
        for l in ls {
            out.push(listing(i.clone(), l.image_id, &l.graph, &cat));
        }
    }
    Ok(Listing { images: out })
}

/// The state of one image for [`status`].
#[derive(Clone, Debug, Serialize)]
pub struct ImageStatus {
    /// The image name.
    pub image: String,
    /// Its newest restorable snapshot (none when nothing is restorable).
    pub newest: Option<Snapshot>,
    /// Seconds since the newest restorable snapshot's time.
    pub age: Option<u64>,
    /// True when a snapshot is restorable and no older than the limit (if one is given).
    pub ok: bool,
    /// Restorable snapshots (of the newest lineage).
    pub restorable: usize,
    /// Damaged or unreadable files (of the newest lineage).
    pub unhealthy: usize,
    /// Files of the image (every lineage).
    pub files: usize,
    /// Their bytes on disk.
    pub bytes: u64,
    /// The outcome of the image's last backups (catalog).
    pub last_backup: Option<LastBackup>,
}

/// What [`status`] found.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The limit, in seconds (none: any restorable snapshot is ok).
    pub max_age: Option<u64>,
    /// The images, by name.
    pub images: Vec<ImageStatus>,
    /// The metrics file written, if asked.
    pub prometheus: Option<String>,
}

impl Status {
    /// True when every image is ok (and there is at least one).
    pub fn ok(&self) -> bool {
        !self.images.is_empty() && self.images.iter().all(|i| i.ok)
    }
}

/// Options of [`status`].
#[derive(Clone, Debug, Default)]
pub struct StatusOptions {
    /// Only this image (default: every image with files in the archive).
    pub image: Option<String>,
    /// The largest age of an image's newest restorable snapshot.
    pub max_age: Option<Duration>,
    /// Write node-exporter textfile metrics to this file ([`prometheus`]).
    pub prometheus: Option<std::path::PathBuf>,
    /// Wait up to this long for another run's lock on the archive (default: refuse at once).
    pub wait: Option<Duration>,
}

/// Whether each image of `dir` (or only `opts.image`) has a restorable snapshot no older than
/// `opts.max_age` (by the snapshot's time, see the module docs; a time in the future is age
/// 0), with the files, bytes and last backup outcome of each; with `opts.prometheus` also
/// writes them as metrics to that file, atomically (a temporary file beside it, fsynced and
/// renamed over it).
///
/// # Errors
/// As [`list`]; the metrics file cannot be written.
pub fn status(dir: &Path, opts: &StatusOptions) -> Result<Status> {
    let l = list_for(
        dir,
        opts.image.as_deref(),
        crate::dirlock::Command::Status,
        opts.wait,
    )?;
    status_of(l, &dir.display().to_string(), opts)
}

/// [`status`] of the listing `l` of the archive `place`.
///
/// # Errors
/// The metrics file cannot be written.
pub(crate) fn status_of(l: Listing, place: &str, opts: &StatusOptions) -> Result<Status> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The newest lineage of each image (listed last), with the files of all.
    let mut newest: Vec<(ImageListing, usize, u64)> = Vec::new();
    for i in l.images {
        let (n, b) = (i.files.len(), i.bytes);
        match newest.last_mut() {
            Some((last, files, bytes)) if last.image == i.image => {
                *last = i;
                *files += n;
                *bytes += b;
            }
            _ => newest.push((i, n, b)),
        }
    }
    let max_age = opts.max_age.map(|d| d.as_secs());
    let images = newest
        .into_iter()
        .map(|(i, files, bytes)| {
            let newest = i.snapshots.last().cloned();
            let age = newest.as_ref().map(|s| now.saturating_sub(s.time));
            ImageStatus {
                ok: age.is_some_and(|a| max_age.is_none_or(|m| a <= m)),
                image: i.image,
                newest,
                age,
                restorable: i.snapshots.len(),
                unhealthy: i.unhealthy.len(),
                files,
                bytes,
                last_backup: i.last_backup,
            }
        })
        .collect();
    let mut st = Status {
        max_age,
        images,
        prometheus: None,
    };
    if let Some(p) = &opts.prometheus {
        let text = prometheus(Path::new(place), &st);
        let mut f = crate::output::AtomicFile::create(p, true)?;
        std::io::Write::write_all(f.file(), text.as_bytes())
            .map_err(|e| Error::from(e).with_file(p))?;
        f.commit()?;
        st.prometheus = Some(p.display().to_string());
    }
    Ok(st)
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of `st` (of the archive `dir`) in the Prometheus text format, for
/// node-exporter's textfile collector. Every metric is a gauge; each has the label
/// `archive` (the directory), the per-image ones `image` too:
///
/// - `rbddiff_archive_ok`: 1 when every image is ok (what `status` exits 0 for), else 0.
/// - `rbddiff_archive_images`: images in the archive.
/// - `rbddiff_archive_max_age_seconds`: the limit, when one is given.
/// - `rbddiff_backup_ok`: 1 when the image has a restorable snapshot (no older than the
///   limit), else 0.
/// - `rbddiff_backup_age_seconds`, `rbddiff_backup_newest_timestamp_seconds`: age and time of
///   the newest restorable snapshot (only when there is one).
/// - `rbddiff_backup_restorable_snapshots`, `rbddiff_backup_unhealthy_files`: of the newest
///   lineage.
/// - `rbddiff_backup_files`, `rbddiff_backup_bytes`: the image's files and their bytes on disk
///   (every lineage).
/// - `rbddiff_backup_last_success`: 1 when the last backup recorded succeeded, 0 when it
///   failed; `rbddiff_backup_last_success_timestamp_seconds`,
///   `rbddiff_backup_last_failure_timestamp_seconds`: when (each only when recorded).
pub fn prometheus(dir: &Path, st: &Status) -> String {
    use std::fmt::Write as _;
    let archive = label(&dir.display().to_string());
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, rows: Vec<(String, u64)>| {
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let a = format!("archive=\"{archive}\"");
    metric(
        "rbddiff_archive_ok",
        "1 when every image has a recent enough restorable backup, else 0.",
        vec![(a.clone(), u64::from(st.ok()))],
    );
    metric(
        "rbddiff_archive_images",
        "Images with backup files in the archive.",
        vec![(a.clone(), st.images.len() as u64)],
    );
    metric(
        "rbddiff_archive_max_age_seconds",
        "The largest age status accepts.",
        st.max_age.map(|m| (a.clone(), m)).into_iter().collect(),
    );
    let per = |f: &dyn Fn(&ImageStatus) -> Option<u64>| -> Vec<(String, u64)> {
        st.images
            .iter()
            .filter_map(|i| Some((format!("{a},image=\"{}\"", label(&i.image)), f(i)?)))
            .collect()
    };
    let last = |i: &ImageStatus| i.last_backup.clone().unwrap_or_default();
    let rows = [
        (
            "rbddiff_backup_ok",
            "1 when the image has a restorable snapshot no older than the limit, else 0.",
            per(&|i| Some(u64::from(i.ok))),
        ),
        (
            "rbddiff_backup_age_seconds",
            "Age of the newest restorable snapshot.",
            per(&|i| i.age),
        ),
        (
            "rbddiff_backup_newest_timestamp_seconds",
            "Backup time of the newest restorable snapshot.",
            per(&|i| i.newest.as_ref().map(|s| s.time)),
        ),
        (
            "rbddiff_backup_restorable_snapshots",
            "Restorable snapshots of the newest lineage.",
            per(&|i| Some(i.restorable as u64)),
        ),
        (
            "rbddiff_backup_unhealthy_files",
            "Damaged or unreadable files of the newest lineage.",
            per(&|i| Some(i.unhealthy as u64)),
        ),
        (
            "rbddiff_backup_files",
            "Backup files of the image.",
            per(&|i| Some(i.files as u64)),
        ),
        (
            "rbddiff_backup_bytes",
            "Bytes of the image's backup files on disk.",
            per(&|i| Some(i.bytes)),
        ),
        (
            "rbddiff_backup_last_success",
            "1 when the last backup recorded succeeded, 0 when it failed.",
            per(&|i| last(i).last_ok.map(u64::from)),
        ),
        (
            "rbddiff_backup_last_success_timestamp_seconds",
            "Time of the last successful backup.",
            per(&|i| last(i).success),
        ),
        (
            "rbddiff_backup_last_failure_timestamp_seconds",
            "Time of the last failed backup.",
            per(&|i| last(i).failure),
        ),
    ];
    for (name, help, r) in rows {
        metric(name, help, r);
    }
    out
}

/// Parses a duration: a number and a unit (`s`, `m`, `h`, `d`, `w`), several in a row
/// (`1d12h`); a bare number is seconds.
///
/// # Errors
/// Anything else, or a duration that overflows.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || {
        Error::invalid(format!(
            "bad duration '{s}' (e.g. 90s, 15m, 26h, 7d, 1d12h)"
        ))
    };
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
        any = true;
    }
    if !num.is_empty() {
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = total.checked_add(n).ok_or_else(bad)?;
        any = true;
    }
    if !any {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_name_times() {
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("1d12h").unwrap().as_secs(), 129_600);
        assert_eq!(parse_duration("2w").unwrap().as_secs(), 1_209_600);
        for b in ["", "h", "1y", "-1d", "99999999999999999999w"] {
            assert!(parse_duration(b).is_err(), "{b}");
        }
        assert_eq!(
            name_time("rbddiff-19710101T010101Z"),
            Some(86_400 * 365 + 3661)
        );
        assert_eq!(
            name_time("rbddiff-20260301T000000.123456789Z"),
            Some(1_772_323_200)
        );
        assert_eq!(
            name_time("rbddiff-0123abcd-20260301T000000.5Z"),
            Some(1_772_323_200)
        );
        assert_eq!(name_time("nightly"), None);
        assert_eq!(name_time("rbddiff-20261301T000000Z"), None);
        // The name backup makes reads back as the time it was made.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = name_time(&crate::archive::names::default_snap_name(&"a".repeat(32))).unwrap();
        assert!(t <= now && now - t < 5, "{t} {now}");
    }

    #[test]
    fn metrics_escape_labels_and_leave_out_what_is_unknown() {
        let img = |name: &str, age: Option<u64>| ImageStatus {
            image: name.into(),
            newest: None,
            age,
            ok: age.is_some(),
            restorable: 0,
            unhealthy: 0,
            files: 2,
            bytes: 10,
            last_backup: None,
        };
        let st = Status {
            max_age: None,
            images: vec![img("a\"b\\c\nd", Some(5)), img("e", None)],
            prometheus: None,
        };
        let text = prometheus(Path::new("/x\"y"), &st);
        assert!(
            text.contains(
                "rbddiff_backup_age_seconds{archive=\"/x\\\"y\",image=\"a\\\"b\\\\c\\nd\"} 5\n"
            ),
            "{text}"
        );
        // An unknown value is no sample; no backup outcome recorded: no such metric.
        assert_eq!(
            text.matches("rbddiff_backup_age_seconds{").count(),
            1,
            "{text}"
        );
        assert!(!text.contains("rbddiff_backup_last_success"), "{text}");
        assert!(!text.contains("max_age"), "{text}");
        assert!(
            text.contains("rbddiff_archive_ok{archive=\"/x\\\"y\"} 0\n"),
            "{text}"
        );
        // Every sample line is `name{labels} value`, each metric typed once.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once("} ").unwrap();
            assert!(v.parse::<u64>().is_ok(), "{l}");
        }
        assert_eq!(text.matches("# TYPE rbddiff_backup_files gauge").count(), 1);
    }
}
