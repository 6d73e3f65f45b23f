//! File names in an archive: images and snapshots escaped into one path component.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Longest escaped image name in a file name; [`crate::archive::backup::backup`] refuses longer ones.
pub const MAX_IMAGE_NAME: usize = 128;
/// Longest escaped snapshot name in a file name: a longer one is cut and given a hash suffix
/// (the real name is in the diff's header, which is what discovery reads).
const MAX_SNAP_NAME: usize = 56;

/// A name as it appears in a file name: `%`, `/`, `@`, control characters (NUL, newline…)
/// and a leading `.` are written `%XX`, so that a name never leads out of the directory,
/// never hides the file and never breaks a line; [`unescape`] reverses it.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.char_indices() {
        if matches!(c, '%' | '/' | '@') || c.is_control() || (i == 0 && c == '.') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The name [`escape`] was given (`None` when `s` is not an escaped name).
pub fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A snapshot name for a file name: escaped, and when that is longer than
/// [`MAX_SNAP_NAME`], its first bytes and `~` and 16 hex digits of the name's sha256.
fn snap_part(name: &str) -> String {
    let e = escape(name);
    if e.len() <= MAX_SNAP_NAME {
        return e;
    }
    let mut cut = MAX_SNAP_NAME - 17;
    // Never inside a character or a %XX escape.
    while !e.is_char_boundary(cut) || e[..cut].rfind('%').is_some_and(|p| p + 3 > cut) {
        cut -= 1;
    }
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(name.as_bytes());
    format!("{}~{}", &e[..cut], crate::sums::hex(&h[..8]))
}

/// The conventional file name of a diff of `image` from `from` (none: full) to `to`: names
/// are escaped ([`escape`]) and long snapshot names shortened, so that the file name is one
/// path component of at most 255 bytes for an image name of up to [`MAX_IMAGE_NAME`]
/// escaped bytes.
pub fn file_name(image: &str, from: Option<&str>, to: &str, compressed: bool) -> String {
    let (image, to) = (escape(image), snap_part(to));
    let z = if compressed { ".zst" } else { "" };
    match from {
        None => format!("{image}@{to}.full.diff{z}"),
        Some(f) => format!("{image}@{}..{to}.diff{z}", snap_part(f)),
    }
}

/// Prefix of the snapshots `backup` names itself.
pub const SNAP_PREFIX: &str = "rbddiff-";
/// Hex digits of the archive id in the names of the snapshots `backup` makes.
pub const TAG_LEN: usize = 8;

/// The name of a snapshot [`crate::archive::backup::backup`] makes when none is given:
/// `rbddiff-TAG-YYYYmmddTHHMMSS.NNNNNNNNNZ`, TAG the first [`TAG_LEN`] digits of the
/// archive's id (its owner, see [`super::catalog`]), the time UTC with nanoseconds (two
/// backups within one second get two names).
pub fn default_snap_name(archive_id: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = stamp(now.as_secs());
    let tag = archive_id.get(..TAG_LEN).unwrap_or(archive_id);
    format!(
        "{SNAP_PREFIX}{tag}-{}.{:09}Z",
        &s[..s.len() - 1],
        now.subsec_nanos()
    )
}

/// For a name `backup` makes, the tag of the archive that made it (none for the names of
/// older versions, `rbddiff-STAMP`) and the stamp (`YYYYmmddTHHMMSS[.N…]Z`, unchecked).
pub fn parse_snap_name(name: &str) -> Option<(Option<&str>, &str)> {
    let rest = name.strip_prefix(SNAP_PREFIX)?;
    let tagged = rest.as_bytes().get(TAG_LEN) == Some(&b'-')
        && rest.as_bytes()[..TAG_LEN]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    Some(if tagged {
        (Some(&rest[..TAG_LEN]), &rest[TAG_LEN + 1..])
    } else {
        (None, rest)
    })
}

/// Whether the snapshot `name` was made by a backup into the archive of id `archive_id`
/// (its default name carries the archive's tag).
pub fn is_own_snap(name: &str, archive_id: &str) -> bool {
    let tag = archive_id.get(..TAG_LEN);
    parse_snap_name(name).is_some_and(|(t, s)| t.is_some() && t == tag && s.ends_with('Z'))
}

/// The current UTC time as `YYYYmmddTHHMMSSZ`.
pub fn utc_stamp() -> String {
    stamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// `secs` since the epoch as `YYYYmmddTHHMMSSZ`.
pub fn stamp(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = crate::utc::parts(secs);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

/// Whether `name` is a backup file of `image` (by the naming convention; the chain itself is
/// read from the headers).
pub(crate) fn is_candidate(name: &str, image: &str) -> bool {
    name.strip_prefix(escape(image).as_str())
        .is_some_and(|rest| rest.starts_with('@'))
        && !name.starts_with('.')
        && (name.ends_with(".diff") || name.ends_with(".diff.zst"))
}

pub(crate) fn dir_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::from(e).with_file(dir))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::from(e).with_file(dir))?;
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

/// Names of the images that have backup files in `dir` (the part of `IMAGE@….diff[.zst]`
/// before the `@`).
///
/// # Errors
/// `dir` cannot be read.
pub fn images_in(dir: &Path) -> Result<BTreeSet<String>> {
    Ok(dir_entries(dir)?
        .into_iter()
        .filter_map(|(n, _)| {
            let img = unescape(n.split_once('@')?.0)?;
            (!img.is_empty() && is_candidate(&n, &img)).then_some(img)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        assert_eq!(file_name("vm", None, "s1", false), "vm@s1.full.diff");
        assert_eq!(
            file_name("vm", Some("s1"), "s2", true),
            "vm@s1..s2.diff.zst"
        );
        assert!(is_candidate("vm@s1.full.diff", "vm"));
        assert!(is_candidate("vm@s1..s2.diff.zst", "vm"));
        assert!(!is_candidate("vm2@s1.full.diff", "vm"));
        assert!(!is_candidate("vm@s1.full.diff.sums", "vm"));
        assert!(!is_candidate("vm@notes.txt", "vm"));
        // Names from headers never leave the directory.
        let n = file_name("vm", Some("../../a"), "b/../../c%", false);
        assert_eq!(n, "vm@%2E.%2F..%2Fa..b%2F..%2F..%2Fc%25.diff");
        assert_eq!(Path::new(&n).components().count(), 1);
        // One escaping, both ways: an image name with '%' finds its own files.
        for img in ["vm%41", "a%", ".hidden", "new\nline", "nul\0x", "ü@x"] {
            let n = file_name(img, None, "s1", false);
            assert!(is_candidate(&n, img), "{n}");
            assert!(
                !n.starts_with('.') && !n.contains(['\n', '\0', '/']),
                "{n:?}"
            );
            assert_eq!(unescape(n.split_once('@').unwrap().0).as_deref(), Some(img));
        }
        assert!(!is_candidate(&file_name("vm%41", None, "s1", false), "vmA"));
        // Long snapshot names are cut with a hash suffix; distinct names stay distinct.
        let long = "x".repeat(300);
        let (a, b) = (
            file_name("vm", Some(&long), &long, true),
            file_name("vm", None, &format!("{long}y"), true),
        );
        assert!(a.len() <= 255 && b.len() <= 255, "{a}");
        assert_ne!(
            file_name("vm", None, &long, false),
            file_name("vm", None, &format!("{long}y"), false)
        );
        let m = MAX_IMAGE_NAME;
        assert!(file_name(&"i".repeat(m), Some(&long), &"%".repeat(300), true).len() <= 255);
    }

    #[test]
    fn snapshot_names_carry_their_archive() {
        let id = "0123abcd".repeat(4);
        let n = default_snap_name(&id);
        assert!(n.starts_with("rbddiff-0123abcd-20"), "{n}");
        assert!(is_own_snap(&n, &id));
        assert!(!is_own_snap(&n, &"f".repeat(32)));
        let (tag, st) = parse_snap_name(&n).unwrap();
        assert_eq!(tag, Some("0123abcd"));
        assert_eq!(st.len(), 26, "{st}");
        // The names of older versions: no owner.
        let old = "rbddiff-20260301T000000.123456789Z";
        assert_eq!(parse_snap_name(old), Some((None, &old[8..])));
        assert!(!is_own_snap(old, &id));
        for other in ["nightly", "rbddiff-0123abcd", "rbddiff-0123ABCD-x"] {
            assert!(!is_own_snap(other, &id), "{other}");
        }
        assert_ne!(default_snap_name(&id), default_snap_name(&id));
    }
}
