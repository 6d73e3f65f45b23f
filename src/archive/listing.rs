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
//! An image's files of different image ids are listed as separate lineages; [`status`]
//! looks at the newest lineage of each image only.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::catalog::Catalog;
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

fn listing(image: String, image_id: Option<String>, g: &Graph, cat: &Catalog) -> ImageListing {
    let damaged = g.damaged();
    let restorable = g.restorable(&damaged);
    let mut used = std::collections::BTreeSet::new();
    let snapshots = restorable
        .into_iter()
        .map(|(name, bytes, path)| {
            used.extend(path.iter().copied());
            let last = path.last().map(|&i| &g.edges[i]);
            let recorded = last.and_then(|e| {
                let n = e.file.path.file_name()?.to_str()?;
                cat.files.get(n)?.time
            });
            let (time, time_from) = match (recorded, name_time(&name)) {
                (Some(t), _) => (t, "catalog"),
                (None, Some(t)) => (t, "name"),
                (None, None) => (
                    last.and_then(|e| e.mtime.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs()),
                    "mtime",
                ),
            };
            Snapshot {
                time_utc: super::names::stamp(time),
                time,
                time_from,
                size: last.map_or(0, |e| e.file.size),
                files: path.iter().map(|&i| g.edges[i].file.name()).collect(),
                bytes,
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
    ImageListing {
        image,
        image_id,
        snapshots,
        unused,
        unhealthy,
    }
}

/// Lists the archive `dir` (every image, or only `image`); see the module docs.
///
/// # Errors
/// `dir` is not a directory or cannot be read; it is locked by a run that changes it.
pub fn list(dir: &Path, image: Option<&str>) -> Result<Listing> {
    if !dir.is_dir() {
        return Err(Error::invalid("not a directory").with_file(dir));
    }
    let _lock = crate::dirlock::lock(dir, false)?;
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
    /// True when a snapshot is restorable and no older than the limit.
    pub ok: bool,
    /// Damaged or unreadable files.
    pub unhealthy: usize,
}

/// What [`status`] found.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The limit, in seconds.
    pub max_age: u64,
    /// The images, by name.
    pub images: Vec<ImageStatus>,
}

impl Status {
    /// True when every image is ok (and there is at least one).
    pub fn ok(&self) -> bool {
        !self.images.is_empty() && self.images.iter().all(|i| i.ok)
    }
}

/// Whether each image of `dir` (or only `image`) has a restorable snapshot no older than
/// `max_age` (by the snapshot's time, see the module docs; a time in the future is age 0).
///
/// # Errors
/// As [`list`].
pub fn status(dir: &Path, image: Option<&str>, max_age: Duration) -> Result<Status> {
    let l = list(dir, image)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The newest lineage of each image (listed last).
    let mut newest: Vec<ImageListing> = Vec::new();
    for i in l.images {
        match newest.last_mut() {
            Some(n) if n.image == i.image => *n = i,
            _ => newest.push(i),
        }
    }
    let images = newest
        .into_iter()
        .map(|i| {
            let newest = i.snapshots.last().cloned();
            let age = newest.as_ref().map(|s| now.saturating_sub(s.time));
            ImageStatus {
                ok: age.is_some_and(|a| a <= max_age.as_secs()),
                image: i.image,
                newest,
                age,
                unhealthy: i.unhealthy.len(),
            }
        })
        .collect();
    Ok(Status {
        max_age: max_age.as_secs(),
        images,
    })
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
}
