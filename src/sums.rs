//! Checksum sidecars: `FILE.sums` next to a diff.
//!
//! A JSON document with the format version, the file length, a sha256 of the whole file, the
//! diff's from/to/size and a CRC32 (crc32fast) of every record — header and payload — with
//! its byte offset. The records tile the file (banner, metadata records, data records, `e`,
//! trailing bytes), so every byte is covered by exactly one CRC and a flipped byte is pinned
//! to its record. The sidecar ends with `self_sha256`, a sha256 of the sidecar's own bytes
//! (taken with that value set to 64 zeros), so bit rot in the sidecar is caught too.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::input::Input;
use crate::output::AtomicFile;
use crate::slice::DiffSlice;
use crate::stream::{ItemKind, RecordSource};

/// `format` value of a sidecar.
pub const FORMAT: &str = "rbddiff-sums";
/// Current sidecar version.
pub const SUMS_VERSION: u32 = 1;
const SELF_KEY: &str = "\"self_sha256\": \"";
const ZERO_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One checksummed range of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSum {
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes (head and payload).
    pub len: u64,
    /// Tag byte as a character (`B` for the banner, `-` for bytes after `e`).
    pub tag: char,
    /// CRC32 (IEEE) of the bytes.
    pub crc32: u32,
}

/// The content of a `.sums` sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sums {
    /// Always [`FORMAT`].
    pub format: String,
    /// Sidecar version ([`SUMS_VERSION`]).
    pub version: u32,
    /// Diff version (`v1`/`v2`).
    pub diff_version: String,
    /// File length in bytes.
    pub file_len: u64,
    /// sha256 of the whole file (lowercase hex).
    pub sha256: String,
    /// Start snapshot.
    pub from: Option<String>,
    /// End snapshot.
    pub to: Option<String>,
    /// Image size.
    pub size: Option<u64>,
    /// Every record, in file order.
    pub records: Vec<RecordSum>,
    /// sha256 of this document (see the module docs).
    pub self_sha256: String,
}

/// The sidecar path of `file`: `FILE.sums`.
pub fn sums_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_os_string();
    s.push(".sums");
    PathBuf::from(s)
}

/// Record boundaries of a diff: `(offset, tag)` of the banner, every record and the trailing
/// bytes, in file order. The diff must be structurally valid.
fn boundaries(bytes: &[u8]) -> Result<(DiffSlice<'_>, Vec<(u64, char)>)> {
    let d = DiffSlice::parse(bytes)?;
    let mut v = vec![(0u64, 'B')];
    v.extend(d.metadata_records().iter().map(|&(o, t)| (o, t as char)));
    let mut recs = d.records();
    loop {
        let off = recs.position();
        let tag = match recs.next_item()? {
            None => break,
            Some(item) => match item.kind {
                ItemKind::Write { .. } => 'w',
                ItemKind::Zero(_) => 'z',
                ItemKind::End => 'e',
                ItemKind::Unknown { tag, .. } => tag as char,
            },
        };
        v.push((off, tag));
    }
    let end = recs.position();
    if end < bytes.len() as u64 {
        v.push((end, '-'));
    }
    Ok((d, v))
}

/// Computes the sums of a diff held in memory.
///
/// # Errors
/// The diff is not structurally valid.
pub fn compute(bytes: &[u8]) -> Result<Sums> {
    let (d, b) = boundaries(bytes)?;
    let len = bytes.len() as u64;
    let records = b
        .iter()
        .enumerate()
        .map(|(i, &(offset, tag))| {
            let end = b.get(i + 1).map_or(len, |n| n.0);
            let part = bytes.get(offset as usize..end as usize).unwrap_or_default();
            RecordSum {
                offset,
                len: end - offset,
                tag,
                crc32: crc32fast::hash(part),
            }
        })
        .collect();
    let m = d.metadata();
    Ok(Sums {
        format: FORMAT.into(),
        version: SUMS_VERSION,
        diff_version: d.version().to_string(),
        file_len: len,
        sha256: hex(&Sha256::digest(bytes)),
        from: m.from_snap.as_ref().map(|_| m.from_name()),
        to: m.to_snap.as_ref().map(|_| m.to_name()),
        size: m.image_size,
        records,
        self_sha256: ZERO_HEX.into(),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Serializes sums with their self digest filled in.
pub fn encode(s: &Sums) -> Vec<u8> {
    let mut s = s.clone();
    s.self_sha256 = ZERO_HEX.into();
    let mut text = serde_json::to_vec_pretty(&s).unwrap_or_default();
    text.push(b'\n');
    if let Some(at) = find_self(&text) {
        let digest = hex(&Sha256::digest(&text));
        text[at..at + 64].copy_from_slice(digest.as_bytes());
    }
    text
}

fn find_self(text: &[u8]) -> Option<usize> {
    let key = SELF_KEY.as_bytes();
    let at = text.windows(key.len()).rposition(|w| w == key)? + key.len();
    (text.len() >= at + 64).then_some(at)
}

/// Parses a sidecar and checks its self digest.
///
/// # Errors
/// The sidecar is damaged (digest mismatch, not JSON, wrong format).
pub fn decode(text: &[u8]) -> Result<Sums> {
    let at =
        find_self(text).ok_or_else(|| Error::invalid("sums sidecar damaged: no self_sha256"))?;
    let mut copy = text.to_vec();
    copy[at..at + 64].copy_from_slice(ZERO_HEX.as_bytes());
    let want = hex(&Sha256::digest(&copy));
    if text[at..at + 64] != *want.as_bytes() {
        return Err(Error::invalid(
            "sums sidecar damaged: its own digest does not match its content",
        ));
    }
    let s: Sums = serde_json::from_slice(text)
        .map_err(|e| Error::invalid(format!("sums sidecar damaged: {e}")))?;
    if s.format != FORMAT || s.version != SUMS_VERSION {
        return Err(Error::invalid(format!(
            "not a supported sums sidecar ({} version {})",
            s.format, s.version
        )));
    }
    Ok(s)
}

/// Computes the sums of the diff at `path` and writes `PATH.sums` atomically.
/// For merge, compress and apply to call after writing a diff.
///
/// # Errors
/// The file cannot be read, is not a valid diff, or the sidecar cannot be written.
pub fn write_sums_for(path: &Path) -> Result<PathBuf> {
    let p = path.to_string_lossy();
    let input = Input::open(&p)?;
    let bytes = input
        .bytes()
        .ok_or_else(|| Error::invalid("sums need a regular file").with_file(path))?;
    let s = compute(bytes).map_err(|e| e.with_file(path))?;
    let sp = sums_path(path);
    let mut f = AtomicFile::create(&sp, true)?;
    f.file()
        .write_all(&encode(&s))
        .map_err(|e| Error::from(e).with_file(&sp))?;
    f.commit()?;
    Ok(sp)
}

/// One mismatch between a file and its sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// Byte offset in the file of the damaged record (or of the length change).
    pub offset: u64,
    /// Record index as in errors (0 = first record after the banner; `None` for the
    /// banner, trailing bytes or a length change).
    pub record: Option<u64>,
    /// What differs.
    pub message: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.message)
    }
}

/// Checks `bytes` (the content of `path`) against `PATH.sums`: file length and every record
/// CRC (the whole-file sha256 too when `digest`). Returns the mismatches (empty = all good).
///
/// # Errors
/// The sidecar is missing, unreadable or damaged.
pub fn check_sums_with(path: &Path, bytes: &[u8], digest: bool) -> Result<Vec<Mismatch>> {
    let sp = sums_path(path);
    let text = std::fs::read(&sp).map_err(|e| Error::from(e).with_file(&sp))?;
    let s = decode(&text).map_err(|e| e.with_file(&sp))?;
    let mut out = Vec::new();
    let len = bytes.len() as u64;
    if len != s.file_len {
        out.push(Mismatch {
            offset: len.min(s.file_len),
            record: None,
            message: format!(
                "file is {len} bytes, the sidecar recorded {} bytes",
                s.file_len
            ),
        });
    }
    let mut expect = 0u64;
    for (i, r) in s.records.iter().enumerate() {
        if r.offset != expect {
            return Err(
                Error::invalid("sums sidecar damaged: records do not tile the file").with_file(&sp),
            );
        }
        expect = r.offset.saturating_add(r.len);
        let part = bytes
            .get(r.offset as usize..(expect as usize).min(bytes.len()))
            .unwrap_or_default();
        if part.len() as u64 != r.len || crc32fast::hash(part) != r.crc32 {
            let what = match r.tag {
                'B' => "banner".to_string(),
                '-' => "trailing bytes".to_string(),
                t => format!("'{t}' record"),
            };
            let record = match r.tag {
                'B' | '-' => None,
                _ => Some(i as u64 - 1),
            };
            out.push(Mismatch {
                offset: r.offset,
                record,
                message: format!(
                    "checksum mismatch in {what} ({} bytes at byte {})",
                    r.len, r.offset
                ),
            });
        }
    }
    if expect != s.file_len {
        return Err(
            Error::invalid("sums sidecar damaged: records do not cover the file").with_file(&sp),
        );
    }
    if digest && out.is_empty() && hex(&Sha256::digest(bytes)) != s.sha256 {
        out.push(Mismatch {
            offset: 0,
            record: None,
            message: "whole-file sha256 differs from the sidecar".into(),
        });
    }
    Ok(out)
}

/// [`check_sums_with`] without the whole-file sha256 (the CRCs cover every byte).
///
/// # Errors
/// As [`check_sums_with`].
pub fn check_sums(path: &Path, bytes: &[u8]) -> Result<Vec<Mismatch>> {
    check_sums_with(path, bytes, false)
}

/// True when `PATH.sums` exists.
pub fn has_sums(path: &Path) -> bool {
    sums_path(path).exists()
}
