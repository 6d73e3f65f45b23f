//! Directory arguments: which files of a directory are diff files, one rule for every
//! command that takes diff files (`inspect`, `merge`, `apply`, `compress`, `verify`, …).
//!
//! A directory stands for its regular files (symbolic links and subdirectories are not
//! followed), in name order, that are
//! - named `*.diff` or `*.diff.zst` (then always taken: a damaged one is reported as such), or
//! - recognised by their first bytes: an `rbd diff v1`/`v2` banner, an `rbd image v2` stream,
//!   or one of these compressed with zstd.
//!
//! Never taken: hidden files (rbddiff's lock, catalog, journals and temporary files are
//! hidden), `.sums` sidecars, `.rbddiff-state` files, and the files a half-done prune has
//! replaced ([`crate::journal`]). Files of a directory that are none of these and no diff are
//! skipped with a note ([`Skipped`]), as are rbddiff's own files named as arguments (so
//! that `verify backups/*` checks the diffs and passes over their sidecars).
//!
//! [`expand_chain`] also orders each directory's files by their headers into one chain, for
//! the commands that apply or merge them in order.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::input::{Input, Kind};
use crate::stream::RecordSource;

/// An argument or directory entry passed over, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file.
    pub file: String,
    /// Why it is no diff input.
    pub reason: String,
}

/// The arguments with every directory replaced by its diff files.
#[derive(Clone, Debug, Default)]
pub struct Expanded {
    /// The inputs, in order (`-` kept as given).
    pub files: Vec<String>,
    /// What was passed over.
    pub skipped: Vec<Skipped>,
    /// True when an argument was a directory.
    pub dirs: bool,
}

/// What rbddiff's own file `name` is, when it is one (by its name): a checksum sidecar, an
/// apply state file, or a hidden file of an archive (lock, catalog, journal, temporary file).
pub fn own_file(name: &str) -> Option<&'static str> {
    if name.ends_with(crate::output::SIDECAR_SUFFIX) {
        Some("a checksum sidecar")
    } else if name.ends_with(".rbddiff-state") {
        Some("an apply state file")
    } else if name.ends_with(crate::journal::SUFFIX) {
        Some("a prune journal")
    } else if name.starts_with(".rbddiff") {
        Some("an archive's lock or catalog")
    } else if name.starts_with('.') && name.ends_with(".tmp") {
        Some("a temporary file")
    } else {
        None
    }
}

fn is_diff_name(name: &str) -> bool {
    name.ends_with(".diff") || name.ends_with(".diff.zst")
}

/// The diff files of `dir` (see the module documentation), in name order; unrelated files
/// are added to `skipped`.
///
/// # Errors
/// The directory or a prune journal in it cannot be read.
pub fn diff_files(dir: &Path, skipped: &mut Vec<Skipped>) -> Result<Vec<String>> {
    let gone: HashSet<String> = crate::journal::superseded(dir)?;
    let rd = std::fs::read_dir(dir).map_err(|e| Error::from(e).with_file(dir))?;
    let mut entries = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::from(e).with_file(dir))?;
        if e.file_type().is_ok_and(|t| t.is_file()) {
            entries.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
    }
    entries.sort();
    let mut out = Vec::new();
    for (name, path) in entries {
        let p = path.to_string_lossy().into_owned();
        if name.starts_with('.') || own_file(&name).is_some() || gone.contains(&name) {
            continue;
        }
        if is_diff_name(&name) {
            out.push(p);
            continue;
        }
        match Input::open(&p).map(|i| i.kind()) {
            Ok(Kind::DiffV1 | Kind::DiffV2 | Kind::Image) => out.push(p),
            Ok(_) => skipped.push(Skipped {
                file: p,
                reason: "not a diff (no .diff name, no diff or image banner)".into(),
            }),
            Err(e) => skipped.push(Skipped {
                file: p,
                reason: format!("not a diff (no .diff name, unreadable: {})", e.kind()),
            }),
        }
    }
    Ok(out)
}

/// Replaces each directory of `args` by its diff files ([`diff_files`]) and passes over
/// rbddiff's own files given by name ([`own_file`]).
///
/// # Errors
/// A directory cannot be read.
pub fn expand(args: &[String]) -> Result<Expanded> {
    let mut x = Expanded::default();
    for a in args {
        let path = Path::new(a);
        if a != "-" && path.is_dir() {
            x.dirs = true;
            let files = diff_files(path, &mut x.skipped)?;
            x.files.extend(files);
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name.as_deref().and_then(own_file) {
            Some(what) if a != "-" && path.is_file() => x.skipped.push(Skipped {
                file: a.clone(),
                reason: format!("{what} (rbddiff's own file, not a diff)"),
            }),
            _ => x.files.push(a.clone()),
        }
    }
    Ok(x)
}

/// [`expand`], with each directory's files ordered by their headers into one chain (a full
/// diff, or the one diff whose start no other file ends at, first; each next one starting
/// where the one before ends). Files named as arguments keep their place.
///
/// # Errors
/// A directory cannot be read; a header cannot be read; a directory's files are no single
/// chain (a fork, a gap, two images): the message lists them with their snapshots.
pub fn expand_chain(args: &[String]) -> Result<Expanded> {
    let mut x = Expanded::default();
    for a in args {
        let one = expand(std::slice::from_ref(a))?;
        x.skipped.extend(one.skipped);
        if one.dirs {
            x.dirs = true;
            x.files.extend(order(&format!("{a}: its"), one.files)?);
        } else {
            x.files.extend(one.files);
        }
    }
    Ok(x)
}

/// Start and end snapshot of a diff (`None`: a full diff, a diff to HEAD).
type Ends = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The [`Ends`] of a diff file, read from its header only.
fn ends(path: &str) -> Result<Ends> {
    let input = Input::open(path)?;
    if input.kind() == Kind::Image {
        return Err(Error::invalid(
            "an image stream in a directory cannot be ordered into a chain of diffs: give the \
             files one by one",
        )
        .with_file(path));
    }
    let wrap = |e: Error| e.with_file(path);
    // Only the header is read (a compressed file is decompressed that far).
    let meta = crate::DiffReader::new(input.into_reader())
        .map_err(wrap)?
        .metadata()
        .clone();
    Ok((meta.from_snap, meta.to_snap))
}

/// `files` (diff files, no `-`) as one chain ordered by their headers: a full diff, or the
/// one diff whose start no other file ends at, first; each next one starting where the one
/// before ends. For `merge --sort`, so that `merge *.diff` works whatever the shell's order.
///
/// # Errors
/// stdin among the files (its header cannot be read twice); a header cannot be read; the
/// files are no single chain (the message lists them with their snapshots).
pub fn sort_chain(files: Vec<String>) -> Result<Vec<String>> {
    if files.iter().any(|f| f == "-") {
        return Err(Error::invalid(
            "stdin ('-') cannot be ordered by its header: give the files in chain order \
             without --sort",
        ));
    }
    order("the", files)
}

/// `files` as one chain by their headers; `what` starts the message when they are none
/// ("DIR: its", or "the").
fn order(what: &str, files: Vec<String>) -> Result<Vec<String>> {
    let heads = files.iter().map(|f| ends(f)).collect::<Result<Vec<_>>>()?;
    if let Some(order) = chain_order(&heads) {
        return Ok(order.into_iter().map(|i| files[i].clone()).collect());
    }
    let lossy = |n: &Option<Vec<u8>>| n.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let list: Vec<String> = files
        .iter()
        .zip(&heads)
        .map(|(f, (from, to))| {
            format!(
                "{f} ({} -> {})",
                crate::format::show_from(lossy(from).as_deref()),
                crate::format::show_to(lossy(to).as_deref())
            )
        })
        .collect();
    let gap = match one_gap(&heads) {
        Some((end, start)) => format!(
            "; the diff from '{}' to '{}' is missing (missing link: '{}' -> '{}')",
            String::from_utf8_lossy(&end),
            String::from_utf8_lossy(&start),
            String::from_utf8_lossy(&end),
            String::from_utf8_lossy(&start)
        ),
        None => String::new(),
    };
    Err(Error::new(ErrorKind::ChainBreak(format!(
        "{what} {} diff files are no single chain (a fork, a gap, a second full diff or \
         several images){gap}; give the files of one chain in order{}{}",
        files.len(),
        if list.is_empty() { "" } else { ": " },
        list.join(", ")
    ))))
}

/// The one missing link `(end, start)` of `heads` when they are a chain but for one gap:
/// exactly one start that no diff ends at, and one end (besides the chain's last) that no
/// diff starts at.
fn one_gap(heads: &[Ends]) -> Option<(Vec<u8>, Vec<u8>)> {
    let starts_at = |snap: &Vec<u8>| heads.iter().filter(|h| h.0.as_ref() == Some(snap)).count();
    let ends_at = |snap: &Vec<u8>| heads.iter().filter(|h| h.1.as_ref() == Some(snap)).count();
    if heads.iter().filter(|h| h.0.is_none()).count() > 1 {
        return None;
    }
    let loose_starts: Vec<&Vec<u8>> = heads
        .iter()
        .filter_map(|h| h.0.as_ref())
        .filter(|s| ends_at(s) == 0)
        .collect();
    let loose_ends: Vec<&Vec<u8>> = heads
        .iter()
        .filter_map(|h| h.1.as_ref())
        .filter(|e| starts_at(e) == 0)
        .collect();
    let full = heads.iter().any(|h| h.0.is_none());
    let ([start], [e1, e2]) = (&loose_starts[..], &loose_ends[..]) else {
        return None;
    };
    if !full
        || heads
            .iter()
            .any(|h| h.0.as_ref().is_some_and(|s| starts_at(s) > 1))
    {
        return None;
    }
    // The segment from the loose start ends at one of the loose ends: the other is the gap's.
    let mut cur: &Vec<u8> = start;
    for _ in 0..heads.len() {
        match heads.iter().find(|h| h.0.as_ref() == Some(cur)) {
            Some((_, Some(to))) => cur = to,
            _ => break,
        }
    }
    let end = if cur == *e1 {
        e2
    } else if cur == *e2 {
        e1
    } else {
        return None;
    };
    Some(((*end).clone(), (*start).clone()))
}

/// The one order of `heads` (start, end) as a chain, when there is exactly one.
fn chain_order(heads: &[Ends]) -> Option<Vec<usize>> {
    let n = heads.len();
    if n == 0 {
        return None;
    }
    let firsts: Vec<usize> = (0..n)
        .filter(|&k| {
            heads[k].0.is_none() || !heads.iter().any(|o| o.1.is_some() && o.1 == heads[k].0)
        })
        .collect();
    let [mut cur] = firsts[..] else {
        return None;
    };
    let mut order = vec![cur];
    while order.len() < n {
        let end = heads[cur].1.as_ref()?;
        let mut next = (0..n).filter(|&k| heads[k].0.as_ref() == Some(end));
        cur = next.next()?;
        if next.next().is_some() || order.contains(&cur) {
            return None;
        }
        order.push(cur);
    }
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(from: Option<&str>, to: Option<&str>) -> Ends {
        (from.map(|s| s.into()), to.map(|s| s.into()))
    }

    #[test]
    fn a_chain_is_ordered_by_its_links_whatever_the_names_say() {
        let heads = [
            h(Some("s10"), Some("s11")),
            h(Some("s2"), Some("s10")),
            h(None, Some("s2")),
        ];
        assert_eq!(chain_order(&heads), Some(vec![2, 1, 0]));
    }

    #[test]
    fn forks_gaps_and_two_fulls_have_no_order() {
        let fork = [
            h(None, Some("a")),
            h(Some("a"), Some("b")),
            h(Some("a"), Some("c")),
        ];
        assert_eq!(chain_order(&fork), None);
        let gap = [h(None, Some("a")), h(Some("b"), Some("c"))];
        assert_eq!(chain_order(&gap), None);
        let fulls = [h(None, Some("a")), h(None, Some("b"))];
        assert_eq!(chain_order(&fulls), None);
        let cycle = [h(Some("a"), Some("b")), h(Some("b"), Some("a"))];
        assert_eq!(chain_order(&cycle), None);
        assert_eq!(chain_order(&[]), None);
    }

    #[test]
    fn a_single_gap_is_named() {
        let heads = [
            h(None, Some("s1")),
            h(Some("s1"), Some("s2")),
            h(Some("s3"), Some("s4")),
            h(Some("s4"), Some("s5")),
        ];
        assert_eq!(one_gap(&heads), Some((b"s2".to_vec(), b"s3".to_vec())));
        let fork = [
            h(None, Some("a")),
            h(Some("a"), Some("b")),
            h(Some("a"), Some("c")),
        ];
        assert_eq!(one_gap(&fork), None);
        let two_gaps = [
            h(None, Some("a")),
            h(Some("b"), Some("c")),
            h(Some("d"), Some("e")),
        ];
        assert_eq!(one_gap(&two_gaps), None);
    }

    #[test]
    fn own_files_are_named() {
        assert!(own_file("img@a.full.diff.sums").is_some());
        assert!(own_file("disk.raw.rbddiff-state").is_some());
        assert!(own_file(".rbddiff.lock").is_some());
        assert!(own_file(".rbddiff-catalog.json").is_some());
        assert!(own_file(".img@x.diff.prune-journal").is_some());
        assert!(own_file(".img@x.diff.AbC123.tmp").is_some());
        assert_eq!(own_file("img@a.full.diff"), None);
        assert_eq!(own_file("notes.txt"), None);
    }
}
