//! `verify`: structural checks, chain checks, checksum sidecars and comparison with a raw
//! image. The result is a list of findings; "problems" make the command exit 1.
//!
//! - Structure: a full parse with every rule of the format core, `e` present, every `w`
//!   payload fully present, no bytes after `e`. O(records) on a file: record heads are read
//!   with positioned reads, payloads not at all unless sums are checked.
//! - Chain: consecutive diffs must link (the `t` of one is the `f` of the next); `--full` asks
//!   for a full diff first. A directory (held under a shared [`crate::dirlock`] lock while it
//!   is read) is checked as a graph per image (the part of the names before `@`): every diff
//!   must start at a snapshot a path of healthy files reaches from a full diff (from the
//!   first file's start for an image without one, unless `--full`); forks are fine. The diffs embedded in an
//!   `rbd export --export-format 2` stream are checked the same way (the first must be a full
//!   diff, each next one must start where the previous ends), as `rbd import` needs.
//!
//!   Sizes are not checked across diffs, because nothing about them is checkable offline: a
//!   diff's `s` record is the image size at its *end* snapshot, and the format records no
//!   size for its start. Every record is already checked against the diff's own size; a
//!   size that differs from the previous diff's is an ordinary resize (growth, or a shrink
//!   that discards the tail, possibly followed by a regrow that reads zeros), and records
//!   anywhere inside the new size are legitimate in both directions. A rule such as "an
//!   incremental diff may not write past the previous size" would reject real Ceph chains
//!   (the test data's v2→v3 diff grows the image and writes in the grown area).
//! - Sums: a `FILE.sums` sidecar ([`crate::sums`]) is checked when present (or required); a
//!   zstd-compressed file is checked against the sums of its decompressed stream.
//! - Against: the chain is applied to a scratch sparse file and compared with a raw image.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result, WarningKind, MAX_WARNINGS};
use crate::format::Metadata;
use crate::input::{Input, Kind};
use crate::positioned::Positioned;
use crate::progress::Ticker;
use crate::stream::{DiffReader, ImageReader, RecordSource};
use crate::sums;
use crate::zst::{IndexCheck, ZstArchive, ZstdReader};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something is wrong: `verify` exits 1.
    Problem,
    /// Worth knowing, tolerated by rbd (e.g. Ceph 16's `p` length field).
    Note,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Problem or note.
    pub severity: Severity,
    /// Which check: `structure`, `index` (an archive's record index against its content),
    /// `sums`, `chain` or `against`.
    pub check: &'static str,
    /// The file concerned (empty for chain-wide findings).
    pub file: String,
    /// Byte offset in the file (or in the image, for `against`).
    pub offset: Option<u64>,
    /// Record index (0 = first record after the banner; for sums: index in the sidecar).
    pub record: Option<u64>,
    /// What was found.
    pub message: String,
}

impl Finding {
    /// True for a note of Ceph 16's 8-byte `p` length field (see
    /// [`crate::WarningKind::is_ceph16_p_length`]).
    pub fn is_ceph16_p_length(&self) -> bool {
        self.severity == Severity::Note
            && self.check == "structure"
            && self.message == crate::error::CEPH16_P_LENGTH
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Problem => "problem",
            Severity::Note => "note",
        };
        write!(f, "{sev} [{}] ", self.check)?;
        if !self.file.is_empty() {
            write!(f, "{}: ", self.file)?;
        }
        match (self.offset, self.record) {
            (Some(o), Some(r)) => write!(f, "byte {o}, record {r}: ")?,
            (Some(o), None) => write!(f, "byte {o}: ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

/// Options of [`verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// The chain must start with a full diff.
    pub full: bool,
    /// Write `FILE.sums` for every valid file (instead of checking existing ones).
    pub write_sums: bool,
    /// A missing sidecar is a problem.
    pub require_sums: bool,
    /// Also compare the whole-file sha256 of the sidecar (the CRCs already cover every byte).
    pub digest: bool,
    /// Do not check the files as a chain.
    pub no_chain: bool,
    /// Apply the chain to a scratch file and compare with this raw image.
    pub against: Option<PathBuf>,
    /// Wait up to this long for another run's lock on a directory verified (default: refuse
    /// at once; see [`crate::dirlock`]).
    pub wait: Option<std::time::Duration>,
}

/// What was learnt about one file.
#[derive(Clone, Debug, Serialize)]
pub struct FileInfo {
    /// File name.
    pub file: String,
    /// `diff v1`, `diff v2`, `image v2`, ...
    pub kind: String,
    /// Start snapshot (`None` for a full diff).
    pub from_snap: Option<String>,
    /// End snapshot (`None` for a diff to the image HEAD).
    pub to_snap: Option<String>,
    /// Image size.
    pub image_size: Option<u64>,
    /// True when the structure is valid.
    pub valid: bool,
    /// `ok`, `mismatch`, `absent`, `written`, `damaged` or `skipped` (streams).
    pub sums: &'static str,
}

/// The result of [`verify`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Files in the order checked (chain order for a directory).
    pub files: Vec<FileInfo>,
    /// True when the files were checked as a chain.
    pub chain: bool,
    /// Every finding.
    pub findings: Vec<Finding>,
    /// First differing image offset found by `against` (None when identical or not run).
    pub first_difference: Option<u64>,
    /// Arguments and directory entries that are no diff, passed over (see
    /// [`crate::dirlist`]): rbddiff's own files named as arguments, unrelated files of a
    /// directory.
    pub skipped: Vec<crate::dirlist::Skipped>,
}

impl VerifyReport {
    /// True when no finding is a problem.
    pub fn ok(&self) -> bool {
        !self
            .findings
            .iter()
            .any(|f| f.severity == Severity::Problem)
    }
}

fn problem(check: &'static str, file: &str, e: &Error) -> Finding {
    // The error already names the position; keep the message without the file prefix.
    let msg = e.kind().to_string();
    Finding {
        severity: Severity::Problem,
        check,
        file: file.to_string(),
        offset: e.offset(),
        record: e.record(),
        message: msg,
    }
}

fn name(n: &Option<Vec<u8>>) -> Option<String> {
    n.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The structure findings of one file, with at most [`MAX_WARNINGS`] notes kept (an image
/// stream has a list of warnings per embedded diff); the rest are counted.
#[derive(Default)]
struct Notes {
    findings: Vec<Finding>,
    kept: usize,
    more: u64,
    /// Problems pushed so far (never dropped).
    problems: usize,
}

impl Notes {
    fn push(&mut self, f: Finding) {
        if f.severity == Severity::Note {
            if self.kept == MAX_WARNINGS {
                self.more += 1;
                return;
            }
            self.kept += 1;
        } else {
            self.problems += 1;
        }
        self.findings.push(f);
    }

    /// The findings, ending with an "and N more" note when some were not kept.
    fn finish(mut self, file: &str) -> Vec<Finding> {
        if self.more > 0 {
            self.findings.push(Finding {
                severity: Severity::Note,
                check: "structure",
                file: file.to_string(),
                offset: None,
                record: None,
                message: crate::check::more_warnings(self.more),
            });
        }
        self.findings
    }
}

/// Structural check of one diff source; adds its findings to `out`. `at` is told the
/// source's position after each record.
fn walk<S: RecordSource + ?Sized>(
    src: &mut S,
    file: &str,
    standalone: bool,
    at: &mut dyn FnMut(u64),
    out: &mut Notes,
) {
    walk_checked(src, file, standalone, at, None, out)
}

/// [`walk`], comparing every record with an archive's index on the way.
fn walk_checked<S: RecordSource + ?Sized>(
    src: &mut S,
    file: &str,
    standalone: bool,
    at: &mut dyn FnMut(u64),
    mut index: Option<&mut IndexCheck<'_>>,
    out: &mut Notes,
) {
    let r = loop {
        match src.next_item() {
            Ok(Some(item)) => {
                if let Some(c) = index.as_deref_mut() {
                    c.item(&item);
                }
                at(src.position())
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    for w in src.warnings() {
        let sev = match w.kind {
            WarningKind::TrailingBytes { .. } if standalone => Severity::Problem,
            _ => Severity::Note,
        };
        out.push(Finding {
            severity: sev,
            check: "structure",
            file: file.to_string(),
            offset: Some(w.offset),
            record: w.record,
            message: w
                .to_string()
                .split_once(": ")
                .map_or(w.to_string(), |x| x.1.to_string()),
        });
    }
    out.more += src.more_warnings();
    if let Err(e) = r {
        out.push(problem("structure", file, &e));
    }
}

struct Checked {
    info: FileInfo,
    meta: Option<Metadata>,
    findings: Vec<Finding>,
}

/// A plain diff whose sidecar comes from a clean walk ([`sums::clean_sums`]) and whose bytes
/// match it, with its metadata (from the sidecar) and length: those are the bytes that walk
/// found valid, so they are not walked again (one pass of CRCs over all cores). `None` for
/// anything else, a mismatch included: the full check then runs and reports it.
fn matches_clean_sums(path: &str, input: &Input, opts: &VerifyOptions) -> Option<(Metadata, u64)> {
    if opts.write_sums || path == "-" || !matches!(input.kind(), Kind::DiffV1 | Kind::DiffV2) {
        return None;
    }
    let (f, len) = input.file()?;
    let s = sums::clean_sums(Path::new(path), len)?;
    let ok = sums::check_against(&s, Positioned::File(f, len), opts.digest);
    if !ok.is_ok_and(|m| m.is_empty()) {
        return None;
    }
    let meta = Metadata {
        from_snap: s.from.map(String::into_bytes),
        to_snap: s.to.map(String::into_bytes),
        protected: None,
        image_size: s.size,
    };
    Some((meta, len))
}

/// Checks one file; `tick` advances by the file's bytes.
fn check_file(path: &str, opts: &VerifyOptions, tick: &mut Ticker<'_>) -> Result<Checked> {
    let input = Input::open(path)?;
    // A file truncated while it is read reads as zeros past its new end: not a finding.
    let watch = input.watch();
    watch.check(check_opened(path, input, opts, tick))
}

fn check_opened(
    path: &str,
    input: Input,
    opts: &VerifyOptions,
    tick: &mut Ticker<'_>,
) -> Result<Checked> {
    let base = tick.done();
    // When a sidecar is written or checked, all of the file is read again for its sums, so
    // that the rate shown is that of the whole work: a sidecar written, the structure walk
    // counts for the first half of the file's bytes and the summing for the second; one
    // checked, the file's bytes count once that is done.
    let sums_pass = path != "-" && (opts.write_sums || sums::has_sums(Path::new(path)));
    let halves = path != "-" && opts.write_sums;
    let mut at = |p: u64| {
        if halves {
            tick.set(base + p / 2)
        } else if !sums_pass {
            tick.set(base + p)
        }
    };
    let len = input.raw_len();
    let kind = input.kind();
    let mut info = FileInfo {
        file: path.to_string(),
        kind: match kind {
            Kind::DiffV1 => "diff v1",
            Kind::DiffV2 => "diff v2",
            Kind::Image => "image v2",
            Kind::Zstd => "zstd",
            Kind::Unknown => "unknown",
        }
        .to_string(),
        from_snap: None,
        to_snap: None,
        image_size: None,
        valid: false,
        sums: "skipped",
    };
    if let Some(c) = matches_clean_sums(path, &input, opts) {
        tick.set(base + c.1);
        info.valid = true;
        info.sums = "ok";
        info.from_snap = name(&c.0.from_snap);
        info.to_snap = name(&c.0.to_snap);
        info.image_size = c.0.image_size;
        return Ok(Checked {
            info,
            meta: Some(c.0),
            findings: Vec::new(),
        });
    }
    let mut findings = Notes::default();
    let mut meta = None;
    // Record heads are read with positioned reads, payloads skipped unread; the input is
    // closed once its records are checked, before the sums check below opens it again.
    let mut check = |input: Input| match (kind, input.file()) {
        (Kind::Image, Some((f, len))) => {
            let img = f
                .try_clone()
                .map_err(Error::from)
                .and_then(|f| ImageReader::from_file(f, len));
            match img {
                Ok(mut img) => {
                    let mut ok = true;
                    let mut prev: Option<Option<String>> = None;
                    for k in 0.. {
                        let d = match img.next_diff() {
                            Ok(Some(d)) => d,
                            Ok(None) => break,
                            Err(e) => {
                                ok = false;
                                findings.push(problem("structure", path, &e));
                                break;
                            }
                        };
                        let from = name(&d.metadata().from_snap);
                        let to = name(&d.metadata().to_snap);
                        if let Some(m) = embedded_link(k, prev.as_ref(), &from) {
                            findings.push(Finding {
                                severity: Severity::Problem,
                                check: "chain",
                                file: path.to_string(),
                                offset: Some(d.start_offset()),
                                record: None,
                                message: m,
                            });
                        }
                        prev = Some(to);
                        walk(d, path, false, &mut at, &mut findings);
                    }
                    info.valid = ok;
                }
                Err(e) => findings.push(problem("structure", path, &e)),
            }
        }
        (Kind::Zstd, _) => {
            let dec = crate::zst::ZstdReader::new(input.into_reader());
            match dec.and_then(DiffReader::new) {
                Ok(mut rd) => {
                    walk(&mut rd, path, true, &mut |_| {}, &mut findings);
                    meta = Some(rd.metadata().clone());
                }
                Err(e) => findings.push(problem("structure", path, &e)),
            }
        }
        (_, Some((f, len))) => match DiffReader::at_file(f, len) {
            Ok(mut rd) => {
                walk(&mut rd, path, true, &mut at, &mut findings);
                meta = Some(rd.metadata().clone());
            }
            Err(e) => findings.push(problem("structure", path, &e)),
        },
        (_, None) if input.is_compressed() && input.raw().is_some() => {
            if let Some(raw) = input.raw() {
                meta = check_archive(path, raw, &mut at, &mut findings);
            }
        }
        (_, None) => match DiffReader::new(input.into_reader()) {
            Ok(mut rd) => {
                walk(&mut rd, path, true, &mut at, &mut findings);
                meta = Some(rd.metadata().clone());
            }
            Err(e) => findings.push(problem("structure", path, &e)),
        },
    };
    check(input);
    if let (Some(len), false) = (len, sums_pass) {
        tick.set(base + len);
    }
    let mut findings = findings.finish(path);
    if kind != Kind::Image {
        info.valid = !findings.iter().any(|f| f.severity == Severity::Problem);
    }
    if let Some(m) = &meta {
        info.from_snap = name(&m.from_snap);
        info.to_snap = name(&m.to_snap);
        info.image_size = m.image_size;
    }
    if path != "-" {
        let p = Path::new(path);
        if opts.write_sums {
            if info.valid && matches!(kind, Kind::DiffV1 | Kind::DiffV2) {
                let half = len.map_or(0, |l| l / 2);
                sums::write_sums_for_with_progress(p, &mut |s| tick.set(base + half + s / 2))?;
                info.sums = "written";
            }
        } else if sums::has_sums(p) {
            // Re-open: the checks above may have consumed a stream.
            let input = Input::open(path)?;
            let checked = match (input.file(), input.raw()) {
                (Some((f, len)), _) => Some(sums::check_sums_with(
                    p,
                    Positioned::File(f, len),
                    opts.digest,
                )),
                (None, Some(raw)) if input.is_compressed() => {
                    Some(sums::check_sums_compressed(p, raw, opts.digest))
                }
                _ => None,
            };
            input.check_truncated(Ok(()))?;
            match checked {
                Some(r) => match r {
                    Ok(m) if m.is_empty() => info.sums = "ok",
                    Ok(m) => {
                        info.sums = "mismatch";
                        findings.extend(m.into_iter().map(|m| Finding {
                            severity: Severity::Problem,
                            check: "sums",
                            file: path.to_string(),
                            offset: Some(m.offset),
                            record: m.record,
                            message: m.message,
                        }));
                    }
                    Err(e) => {
                        info.sums = "damaged";
                        findings.push(Finding {
                            severity: Severity::Problem,
                            check: "sums",
                            file: sums::sums_path(p).to_string_lossy().into_owned(),
                            offset: None,
                            record: None,
                            message: e.kind().to_string(),
                        });
                    }
                },
                None => info.sums = "skipped",
            }
        } else {
            info.sums = "absent";
            if opts.require_sums {
                findings.push(Finding {
                    severity: Severity::Problem,
                    check: "sums",
                    file: path.to_string(),
                    offset: None,
                    record: None,
                    message: format!("no sidecar {}", sums::sums_path(p).display()),
                });
            }
        }
    }
    if let (Some(len), true) = (len, sums_pass) {
        tick.set(base + len);
    }
    Ok(Checked {
        info,
        meta,
        findings,
    })
}

/// Structure of a compressed diff in a file, streamed, with its findings added to
/// `out`; for an rbddiff archive, its record index is compared with the content on the way
/// (check `index`). Returns the diff's metadata when its header could be read.
fn check_archive(
    path: &str,
    raw: Positioned<'_>,
    at: &mut dyn FnMut(u64),
    out: &mut Notes,
) -> Option<Metadata> {
    let archive = ZstArchive::open_at(raw).unwrap_or_else(|e| {
        out.push(problem("index", path, &e));
        None
    });
    // A damaged image stream's index is not checked here: image streams are not merged.
    let mut index = archive
        .as_ref()
        .filter(|a| a.index().kind != Kind::Image)
        .map(IndexCheck::new);
    let len = std::cell::Cell::new(0u64);
    let counted = ZstdReader::new(raw.reader(0)).map(|inner| Counted { inner, n: &len });
    match counted.and_then(DiffReader::new) {
        Ok(mut rd) => {
            let problems = out.problems;
            walk_checked(&mut rd, path, true, at, index.as_mut(), out);
            if let (Some(c), true) = (index, out.problems == problems) {
                if let Err(e) = c.finish(&rd, Some(len.get())) {
                    out.push(problem("index", path, &e));
                }
            }
            Some(rd.metadata().clone())
        }
        Err(e) => {
            out.push(problem("structure", path, &e));
            None
        }
    }
}

/// A zstd stream that counts the bytes it gives.
struct Counted<'c, R> {
    inner: ZstdReader<R>,
    n: &'c std::cell::Cell<u64>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(out)?;
        self.n.set(self.n.get() + k as u64);
        Ok(k)
    }
}

/// The link problem of embedded diff `k` (0-based) of an image stream, if any: the first
/// must be a full diff, each next one must start at the snapshot the previous one ends at.
fn embedded_link(
    k: usize,
    prev_to: Option<&Option<String>>,
    from: &Option<String>,
) -> Option<String> {
    let show = |s: &Option<String>| {
        s.as_ref()
            .map_or("no snapshot (image HEAD)".into(), |s| format!("'{s}'"))
    };
    match prev_to {
        None => from.as_ref().map(|f| {
            format!(
                "embedded diff 1 starts at snapshot '{f}': an image stream starts with a full diff"
            )
        }),
        Some(to) if to.is_none() || to != from => Some(format!(
            "broken link: embedded diff {} starts at {} but embedded diff {k} ends at {}",
            k + 1,
            show(from),
            show(to)
        )),
        Some(_) => None,
    }
}

/// Orders diffs by their links (full diff, or the one nobody leads to, first).
fn chain_order(v: Vec<Checked>) -> Vec<Checked> {
    let mut left = v;
    let mut out: Vec<Checked> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let next = match out.last().and_then(|c| c.info.to_snap.clone()) {
            Some(to) => left
                .iter()
                .position(|c| c.info.from_snap.as_deref() == Some(to.as_str())),
            None => None,
        };
        let i = next.unwrap_or_else(|| {
            // A start: a full diff, else a diff whose start no remaining diff ends at.
            left.iter()
                .position(|c| c.info.from_snap.is_none() && c.meta.is_some())
                .or_else(|| {
                    left.iter().position(|c| {
                        !left
                            .iter()
                            .any(|o| o.info.to_snap.is_some() && o.info.to_snap == c.info.from_snap)
                    })
                })
                .unwrap_or(0)
        });
        out.push(left.remove(i));
    }
    out
}

/// The image a file of a directory belongs to: its name before the first `@` (names
/// without one form one group).
fn group_of(c: &Checked) -> String {
    Path::new(&c.info.file)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('@'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

/// The files of a directory by image ([`group_of`]), each image's in link order.
fn graph_order(v: Vec<Checked>) -> Vec<Checked> {
    let mut groups: std::collections::BTreeMap<String, Vec<Checked>> = Default::default();
    for c in v {
        groups.entry(group_of(&c)).or_default().push(c);
    }
    groups.into_values().flat_map(chain_order).collect()
}

/// A diff whose checks found no problem (an index that disagrees with the content is none:
/// readers stream the content instead).
fn healthy(c: &Checked) -> bool {
    c.meta.is_some()
        && !c
            .findings
            .iter()
            .any(|f| f.severity == Severity::Problem && f.check != "index")
}

/// The chain findings of a directory, as a graph per image: a file is reachable when it is
/// a full diff or starts at a snapshot a path of healthy files leads to from a full diff
/// (from the first file's start, for an image without a full diff, unless `full`). Every
/// diff not reachable is a problem, naming its start and the snapshots that are reached.
fn graph_findings(files: &[Checked], healthy: &[bool], full: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < files.len() {
        let g = group_of(&files[start]);
        let end = start
            + files[start..]
                .iter()
                .take_while(|c| group_of(c) == g)
                .count();
        let (group, ok) = (&files[start..end], &healthy[start..end]);
        start = end;
        let is_full = |c: &Checked| c.meta.is_some() && c.info.from_snap.is_none();
        let mut reached: Vec<String> = Vec::new();
        if !group.iter().any(is_full) {
            if full {
                out.push(chain_problem(
                    &group[0].info.file,
                    "the chain does not start with a full diff (none of these files is one)".into(),
                ));
            } else if let Some(f) = &group[0].info.from_snap {
                // A chain that starts with an incremental (restored onto its start).
                reached.push(f.clone());
            }
        }
        loop {
            let before = reached.len();
            for (c, &h) in group.iter().zip(ok) {
                let from_ok = c
                    .info
                    .from_snap
                    .as_ref()
                    .is_none_or(|f| reached.contains(f));
                if let (true, true, Some(to)) = (h, from_ok, &c.info.to_snap) {
                    if !reached.contains(to) {
                        reached.push(to.clone());
                    }
                }
            }
            if reached.len() == before {
                break;
            }
        }
        let shown: Vec<String> = reached
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(|s| format!("'{s}'"))
            .collect();
        let more = if reached.len() > 5 { "…, " } else { "" };
        for c in group.iter().filter(|c| c.meta.is_some()) {
            if let Some(f) = c.info.from_snap.as_ref().filter(|f| !reached.contains(*f)) {
                let reach = if reached.is_empty() {
                    "none".to_string()
                } else {
                    format!("{more}{}", shown.join(", "))
                };
                out.push(chain_problem(
                    &c.info.file,
                    format!(
                        "broken link: {} starts at '{f}', which no path of healthy files \
                         reaches (snapshots reached: {reach})",
                        c.info.file
                    ),
                ));
            }
        }
    }
    out
}

/// A problem with the links between files.
fn chain_problem(file: &str, msg: String) -> Finding {
    Finding {
        severity: Severity::Problem,
        check: "chain",
        file: file.to_string(),
        offset: None,
        record: None,
        message: msg,
    }
}

fn chain_findings(files: &[Checked], full: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    if full {
        if let Some(f) = files.first() {
            if f.info.from_snap.is_some() || f.meta.is_none() {
                out.push(chain_problem(
                    &f.info.file,
                    "the chain does not start with a full diff (it has a start snapshot)".into(),
                ));
            }
        }
    }
    for w in files.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.meta.is_none() || b.meta.is_none() {
            continue;
        }
        let ok = b.info.from_snap.is_some() && a.info.to_snap == b.info.from_snap;
        if !ok {
            let show = |s: &Option<String>| {
                s.as_ref()
                    .map_or("no snapshot (image HEAD / full)".into(), |s| {
                        format!("'{s}'")
                    })
            };
            out.push(chain_problem(
                &b.info.file,
                format!(
                    "broken link: {} ends at {} but {} starts at {}",
                    a.info.file,
                    show(&a.info.to_snap),
                    b.info.file,
                    show(&b.info.from_snap)
                ),
            ));
            break;
        }
    }
    out
}

/// Verifies `paths` (files, `-`, or directories); see the module docs.
///
/// # Errors
/// Only when it could not run: a file or sidecar cannot be opened or written, or the
/// comparison image cannot be read. Problems in the files are findings, not errors.
pub fn verify(paths: &[String], opts: &VerifyOptions) -> Result<VerifyReport> {
    verify_with_progress(paths, opts, &mut |_, _| {})
}

/// [`verify`], reporting `(input bytes checked, total)` to `progress` (see
/// [`crate::progress`]; the total is unknown when stdin is among the inputs). Bytes count
/// as checked once their structure is, and their sums when a sidecar is written or checked
/// (`--against` adds no progress).
///
/// # Errors
/// As [`verify`].
pub fn verify_with_progress(
    paths: &[String],
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    // A directory is locked while it is read (exclusively when sidecars are written into it).
    let _locks = paths
        .iter()
        .filter(|p| *p != "-" && Path::new(p).is_dir())
        .map(|p| {
            let verify = crate::dirlock::Command::Verify;
            crate::dirlock::lock(Path::new(p), opts.write_sums, verify, opts.wait)
        })
        .collect::<Result<Vec<_>>>()?;
    let crate::dirlist::Expanded {
        files,
        skipped,
        dirs: dir,
    } = crate::dirlist::expand(paths)?;
    if opts.against.is_some() && files.iter().any(|f| f == "-") {
        return Err(Error::invalid(
            "--against needs diff files (stdin can only be read once)",
        ));
    }
    if files.is_empty() {
        return Err(Error::invalid(if skipped.is_empty() {
            "no files to verify".to_string()
        } else {
            format!(
                "no files to verify ({} passed over: {})",
                skipped.len(),
                skipped
                    .iter()
                    .map(|s| s.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }));
    }
    let total = if files.iter().any(|f| f == "-") {
        0
    } else {
        files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum()
    };
    let mut tick = Ticker::new(progress, total);
    let mut checked = Vec::with_capacity(files.len());
    for f in &files {
        checked.push(check_file(f, opts, &mut tick)?);
    }
    let chain = !opts.no_chain && (checked.len() > 1 || opts.full);
    let graph = chain && dir;
    if graph {
        checked = graph_order(checked);
    }
    let healthy: Vec<bool> = checked.iter().map(healthy).collect();
    let mut report = VerifyReport {
        chain,
        skipped,
        ..VerifyReport::default()
    };
    for c in &mut checked {
        report.findings.append(&mut c.findings);
    }
    if graph {
        report
            .findings
            .extend(graph_findings(&checked, &healthy, opts.full));
    } else if chain {
        report.findings.extend(chain_findings(&checked, opts.full));
    }
    // A directory that is no single chain has no one image to compare.
    let linear = !graph || {
        let mut ends: Vec<&Option<String>> = checked.iter().map(|c| &c.info.to_snap).collect();
        ends.sort();
        ends.dedup();
        ends.len() == checked.len()
            && checked
                .iter()
                .map(group_of)
                .all(|g| g == group_of(&checked[0]))
            && checked
                .iter()
                .filter(|c| c.info.from_snap.is_none())
                .count()
                <= 1
    };
    if let Some(raw) = &opts.against {
        let not_compared = |why: &str| Finding {
            severity: Severity::Note,
            check: "against",
            file: raw.to_string_lossy().into_owned(),
            offset: None,
            record: None,
            message: format!("not compared: {why}"),
        };
        if !linear {
            report.findings.push(not_compared(
                "the directory holds no single chain (forks or several images); give the \
                 files of one path",
            ));
        } else if report.ok() {
            let order: Vec<String> = checked.iter().map(|c| c.info.file.clone()).collect();
            let (diff, finding) = against(&order, raw)?;
            report.first_difference = diff;
            report.findings.extend(finding);
        } else {
            report.findings.push(not_compared("the chain has problems"));
        }
    }
    report.files = checked.into_iter().map(|c| c.info).collect();
    tick.finish();
    Ok(report)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// First offset where two readers differ (a length difference counts at the shorter end).
///
/// # Errors
/// I/O errors.
pub fn first_difference(mut a: impl Read, mut b: impl Read) -> io::Result<Option<u64>> {
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut a, &mut ba)?;
        let nb = read_full(&mut b, &mut bb)?;
        let n = na.min(nb);
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            return Ok(Some(pos + i as u64));
        }
        if na != nb {
            return Ok(Some(pos + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        pos += n as u64;
    }
}

/// Applies `files` to a scratch sparse file and compares it with `raw`.
fn against(files: &[String], raw: &Path) -> Result<(Option<u64>, Vec<Finding>)> {
    let rawf = File::open(raw).map_err(|e| Error::from(e).with_file(raw))?;
    let dir = raw
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = tempfile::tempfile_in(dir)
        .or_else(|_| tempfile::tempfile())
        .map_err(Error::from)?;
    crate::apply::apply_files_to(&scratch, files)?;
    let mut s = &scratch;
    io::Seek::seek(&mut s, io::SeekFrom::Start(0))?;
    let diff = first_difference(&scratch, &rawf).map_err(|e| Error::from(e).with_file(raw))?;
    let rlen = rawf.metadata()?.len();
    let slen = scratch.metadata()?.len();
    let findings = match diff {
        None => vec![],
        Some(off) => vec![Finding {
            severity: Severity::Problem,
            check: "against",
            file: raw.to_string_lossy().into_owned(),
            offset: Some(off),
            record: None,
            message: if off == rlen.min(slen) && rlen != slen {
                format!("sizes differ: the chain gives {slen} bytes, the image has {rlen}")
            } else {
                format!("the chain's image differs from the raw image at byte {off}")
            },
        }],
    };
    Ok((diff, findings))
}
