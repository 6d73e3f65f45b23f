//! Loads `testdata/real/MANIFEST.tsv` and `testdata/real/ground-truth.tsv`.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The order in which snapshot states follow each other.
pub const STATES: [&str; 7] = ["empty", "v1", "v2", "v3", "v4", "v5", "head"];

/// Diff wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    V1,
    V2,
}

/// One row of `MANIFEST.tsv`: a diff file written by Ceph.
#[derive(Clone, Debug)]
pub struct DiffFile {
    /// Path relative to `testdata/real`, e.g. `img64k/v2/v1_v2.diff`.
    pub rel: String,
    /// Absolute path.
    pub path: PathBuf,
    /// First path component: `img64k`, `imgstriped` or `img4m`.
    pub image: String,
    /// Directory inside the image: `""`, `"v2"`, `"rbd-merge"` or `"whole-object"`.
    pub kind: String,
    pub format: Format,
    /// Snapshot name in the `f` record, if any.
    pub from: Option<String>,
    /// Snapshot name in the `t` record, if any.
    pub to: Option<String>,
    /// Image size from the `s` record.
    pub size: u64,
    /// State the image must be in before applying: `empty` or `v1`..`v5`.
    pub apply_to: String,
    /// State after applying: `v1`..`v5` or `head`.
    pub result: String,
    /// sha256 of the diff file itself (lowercase hex).
    pub sha256: String,
}

impl DiffFile {
    pub fn read(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap_or_else(|e| panic!("read {}: {e}", self.path.display()))
    }

    /// File name without `.diff`, e.g. `v1_v2`.
    pub fn stem(&self) -> &str {
        let name = self.rel.rsplit('/').next().unwrap();
        name.strip_suffix(".diff").unwrap_or(name)
    }

    /// The expected raw image after applying this diff.
    pub fn expected(&self) -> Truth {
        truth(&self.image, &self.result)
    }
}

/// Raw image at one snapshot state, from `ground-truth.tsv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    pub size: u64,
    pub sha256: String,
}

/// One image's chains, each ordered so that every file applies to the
/// previous file's result.
#[derive(Clone, Debug)]
pub struct Chains {
    pub image: String,
    /// `rbd export-diff` files: full_v1, v1_v2, ..., v5_head (img4m has no
    /// full_v1, so its chain starts at v1_v2).
    pub v1: Vec<DiffFile>,
    /// The v2 diffs carved from `rbd export --export-format 2`, same order.
    pub v2: Vec<DiffFile>,
    /// The `--whole-object` chain (img64k only, empty otherwise).
    pub whole_object: Vec<DiffFile>,
}

/// `<crate>/testdata/real`.
pub fn real_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join("real")
}

/// Every row of `MANIFEST.tsv`, in file order.
pub fn diff_files() -> Vec<DiffFile> {
    let dir = real_dir();
    let text = fs::read_to_string(dir.join("MANIFEST.tsv")).expect("read MANIFEST.tsv");
    let mut out = Vec::new();
    let mut header_seen = false;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let c: Vec<&str> = line.split('\t').collect();
        assert_eq!(c.len(), 8, "MANIFEST.tsv: bad line {line:?}");
        if !header_seen {
            assert_eq!(c[0], "path", "MANIFEST.tsv: header expected");
            header_seen = true;
            continue;
        }
        let opt = |s: &str| (s != "-").then(|| s.to_string());
        let parts: Vec<&str> = c[0].split('/').collect();
        out.push(DiffFile {
            rel: c[0].to_string(),
            path: dir.join(c[0]),
            image: parts[0].to_string(),
            kind: if parts.len() > 2 {
                parts[1..parts.len() - 1].join("/")
            } else {
                String::new()
            },
            format: match c[1] {
                "v1" => Format::V1,
                "v2" => Format::V2,
                f => panic!("MANIFEST.tsv: unknown format {f:?}"),
            },
            from: opt(c[2]),
            to: opt(c[3]),
            size: c[4].parse().expect("MANIFEST.tsv: size"),
            apply_to: c[5].to_string(),
            result: c[6].to_string(),
            sha256: c[7].to_string(),
        });
    }
    out
}

/// The row for `rel` (path relative to `testdata/real`).
pub fn diff_file(rel: &str) -> DiffFile {
    diff_files()
        .into_iter()
        .find(|d| d.rel == rel)
        .unwrap_or_else(|| panic!("{rel} is not in MANIFEST.tsv"))
}

/// `ground-truth.tsv`: (image, snap) -> raw image size and sha256.
pub fn ground_truth() -> BTreeMap<(String, String), Truth> {
    let text =
        fs::read_to_string(real_dir().join("ground-truth.tsv")).expect("read ground-truth.tsv");
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split('\t').collect();
        assert_eq!(c.len(), 4, "ground-truth.tsv: bad line {line:?}");
        out.insert(
            (c[0].to_string(), c[1].to_string()),
            Truth {
                size: c[2].parse().expect("ground-truth.tsv: size"),
                sha256: c[3].to_string(),
            },
        );
    }
    out
}

/// Raw image of `image` at `snap` (`v1`..`v5` or `head`).
pub fn truth(image: &str, snap: &str) -> Truth {
    ground_truth()
        .remove(&(image.to_string(), snap.to_string()))
        .unwrap_or_else(|| panic!("no ground truth for {image}@{snap}"))
}

/// Orders `files` into a chain: starting at the earliest `apply_to`, each
/// next file applies to the previous result.
fn order_chain(mut files: Vec<DiffFile>) -> Vec<DiffFile> {
    let rank = |s: &str| STATES.iter().position(|x| *x == s).unwrap_or(usize::MAX);
    files.sort_by_key(|d| rank(&d.apply_to));
    let mut chain: Vec<DiffFile> = Vec::new();
    for f in files {
        let follows = match chain.last() {
            None => true,
            Some(prev) => prev.result == f.apply_to,
        };
        if follows {
            chain.push(f);
        }
    }
    chain
}

/// Per image (sorted by name): the v1, v2 and whole-object chains. Skip
/// diffs such as `v1_v3` and the `rbd-merge/` files are not part of any chain.
pub fn chains() -> Vec<Chains> {
    let files = diff_files();
    let mut images: Vec<String> = files.iter().map(|d| d.image.clone()).collect();
    images.sort();
    images.dedup();
    let step = |d: &DiffFile| {
        let a = STATES.iter().position(|x| *x == d.apply_to);
        let r = STATES.iter().position(|x| *x == d.result);
        matches!((a, r), (Some(a), Some(r)) if r == a + 1)
    };
    images
        .into_iter()
        .map(|image| {
            let pick = |kind: &str| {
                order_chain(
                    files
                        .iter()
                        .filter(|d| d.image == image && d.kind == kind && step(d))
                        .cloned()
                        .collect(),
                )
            };
            Chains {
                v1: pick(""),
                v2: pick("v2"),
                whole_object: pick("whole-object"),
                image,
            }
        })
        .collect()
}

/// `img64k/export-format-2.rbdimg`: the complete `rbd export --export-format 2`
/// stream (header + the six v2 diffs).
pub fn export_format2_stream() -> PathBuf {
    real_dir().join("img64k").join("export-format-2.rbdimg")
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lowercase hex sha256 of everything `r` yields.
pub fn sha256_reader(mut r: impl Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> String {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    sha256_reader(f).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
