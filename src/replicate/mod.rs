//! Keeping a second cluster's image in step with the primary: [`replay`] imports an
//! archive's snapshots into an image of the backup cluster, [`sync`] carries a new snapshot
//! from one cluster to the other without files in between.
//!
//! Both import through `rbd import-diff -`, in one pass, and hold back the end of each diff
//! stream (its `e` record) until the stream has been checked whole (structure, and for an
//! archived file its `.sums` sidecar): `rbd import-diff` creates the end snapshot only after
//! reading `e`, so a stream that fails its check never becomes a snapshot. An import that
//! fails part way has written into the image HEAD: the HEAD is rolled back to the base
//! snapshot (`rbd snap rollback`), so that the destination is at its previous snapshot
//! again; a run that was killed leaves such a HEAD behind, and the next run rolls it back
//! before importing (said in its warnings).
//!
//! A full diff is only ever imported into an image without data: onto an image that holds
//! data it would leave stale blocks wherever the source is unallocated. An image with data
//! but no snapshot in common is refused, or rebuilt (`reseed`) into a new image that is
//! swapped in by renames only after its import succeeded and checked.
//!
//! After each import the replica is checked ([`Verify`]): by default its own export-diff
//! between the same two snapshots is compared with what was sent ([`compare`]); `Full`
//! compares the sha256 of the whole snapshot on both sides.
//!
//! A sync or replay holds an exclusive lock on its destination image for the whole run
//! ([`lock_destination`]): a second run into the same image (of the same cluster) is
//! refused, or waits. The lock is a `flock` ([`crate::dirlock`]) in a local lock directory,
//! not an `rbd lock` on the image: a run that is killed releases it, so that a rerun can
//! complete; it therefore keeps apart only runs that share that directory (one host).

mod check;
pub mod compare;
mod pool;
mod replay;
mod sync;

use std::io::{self, BufWriter, Read, Write};
use std::sync::mpsc;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::rbd::{collect_stderr, is_broken_pipe, rbd_failed, Rbd};

pub use check::{verify_replica, ReplicaOptions, ReplicaReport};
pub use pool::{glob_match, sync_pool, PoolEntry, PoolReport};
pub use replay::{plan_replay, replay, replay_from_store, ReplayOptions, ReplayPlan, ReplayReport};
pub use sync::{plan_sync, sync, sync_tag, sync_with_store, SyncOptions, SyncReport};

/// The directory of the destination images' locks when none is given:
/// `$RBDDIFF_LOCK_DIR`, else `$XDG_STATE_HOME/rbddiff/locks`, else
/// `$HOME/.local/state/rbddiff/locks`, else `rbddiff-locks` in the temporary directory.
pub fn default_lock_dir() -> std::path::PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("RBDDIFF_LOCK_DIR") {
        return d.into();
    }
    if let Some(d) = var("XDG_STATE_HOME") {
        return std::path::PathBuf::from(d).join("rbddiff/locks");
    }
    match var("HOME") {
        Some(h) => std::path::PathBuf::from(h).join(".local/state/rbddiff/locks"),
        None => std::env::temp_dir().join("rbddiff-locks"),
    }
}

/// Locks the destination image `spec` of the cluster `rbd` for `command` (exclusively),
/// waiting up to `wait` for another run's lock: the lock file of the subdirectory
/// `image-TAG` of `lock_dir` (default [`default_lock_dir`]), TAG the first 16 digits of
/// [`sync_tag`] of the cluster's fsid and `spec`.
///
/// # Errors
/// Another run holds it ([`ErrorKind::Locked`], naming `spec` and the holder); the lock
/// directory cannot be created; the cluster's fsid cannot be asked for.
pub fn lock_destination(
    rbd: &Rbd,
    spec: &str,
    lock_dir: Option<&std::path::Path>,
    command: crate::dirlock::Command,
    wait: Option<std::time::Duration>,
) -> Result<crate::dirlock::DirLock> {
    let tag = sync_tag(rbd.fsid()?.as_deref(), spec);
    let dir = lock_dir
        .map_or_else(default_lock_dir, std::path::Path::to_path_buf)
        .join(format!("image-{}", &tag[..16]));
    std::fs::create_dir_all(&dir).map_err(|e| Error::from(e).with_file(&dir))?;
    crate::dirlock::lock(&dir, true, command, wait).map_err(|e| match e.kind() {
        ErrorKind::Locked(m) => Error::new(ErrorKind::Locked(format!(
            "{spec}: another sync or replay into this image is running ({m})"
        ))),
        _ => e,
    })
}

/// How a replica is checked after each import.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// The destination's export-diff between the same snapshots describes the same change
    /// as the diff sent ([`compare`]).
    #[default]
    Diff,
    /// The sha256 of `rbd export` of the snapshot is the same on both sides (reads every
    /// byte of the image on both sides).
    Full,
    /// No check beyond rbd's status and the new snapshot's presence.
    None,
}

impl std::str::FromStr for Verify {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "diff" => Ok(Verify::Diff),
            "full" => Ok(Verify::Full),
            "none" => Ok(Verify::None),
            _ => Err(format!("'{s}' is not a check: give diff, full or none")),
        }
    }
}

/// The check of one imported snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Checked {
    /// `diff`, `full` or `none`.
    pub mode: Verify,
    /// For `diff`: what the comparison found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<compare::Comparison>,
    /// For `full`: the sha256 of the snapshot, the same on both sides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// One snapshot imported.
#[derive(Clone, Debug, Serialize)]
pub struct Imported {
    /// Start snapshot (none: a full diff).
    pub from_snap: Option<String>,
    /// The snapshot the destination now holds.
    pub to_snap: String,
    /// The archive files sent (none for a sync).
    pub files: Vec<String>,
    /// Bytes of the diff stream sent.
    pub bytes: u64,
    /// Seconds the transfer into `rbd import-diff` took.
    pub seconds: f64,
    /// Its check.
    pub check: Checked,
}

/// The stream sent into an import: its length and header, as the parser read it.
pub(crate) struct Sent {
    pub(crate) sums: crate::sums::Sums,
}

/// Holds back the last bytes written (the `e` record of a diff) until [`HoldTail::release`]:
/// dropped without it, the reader sees a stream cut before its end.
pub(crate) struct HoldTail<W: Write> {
    inner: W,
    tail: Vec<u8>,
}

/// Bytes held back: more than the 1-byte `e` of a v1 diff.
const TAIL: usize = 64;

impl<W: Write> HoldTail<W> {
    pub(crate) fn new(inner: W) -> Self {
        HoldTail {
            inner,
            tail: Vec::with_capacity(2 * TAIL),
        }
    }

    /// Writes the held bytes and flushes.
    pub(crate) fn release(mut self) -> io::Result<W> {
        self.inner.write_all(&self.tail)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for HoldTail<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() >= TAIL {
            self.inner.write_all(&self.tail)?;
            self.tail.clear();
            let cut = buf.len() - TAIL;
            self.inner.write_all(&buf[..cut])?;
            self.tail.extend_from_slice(&buf[cut..]);
        } else {
            self.tail.extend_from_slice(buf);
            if self.tail.len() > TAIL {
                let cut = self.tail.len() - TAIL;
                self.inner.write_all(&self.tail[..cut])?;
                self.tail.drain(..cut);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Runs `rbd import-diff - SPEC` with what `feed` writes (at most `rate` bytes per second).
/// The last bytes `feed` writes reach rbd only when `feed` succeeds: a failed feed leaves rbd
/// a cut stream, which it refuses without creating the end snapshot.
///
/// # Errors
/// `feed` fails (its error), or rbd fails (its message).
pub(crate) fn import_with<T>(
    rbd: &Rbd,
    spec: &str,
    rate: Option<u64>,
    feed: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let mut child = rbd.spawn_import_diff(spec)?;
    let stderr = collect_stderr(&mut child);
    let fed = match child.stdin.take() {
        Some(stdin) => {
            let out = BufWriter::with_capacity(1 << 20, stdin);
            let mut w = HoldTail::new(crate::rate::Limited::new(out, rate));
            match feed(&mut w) {
                Ok(v) => w.release().map(|_| v).map_err(Error::from),
                Err(e) => Err(e),
            }
        }
        None => Err(Error::invalid("internal: no pipe to rbd")),
    };
    // The pipe is closed here: rbd sees the end (or a cut stream).
    let status = child.wait()?;
    let err = stderr.join().unwrap_or_default();
    match fed {
        Err(e) if !is_broken_pipe(&e) => Err(e),
        _ if !status.success() => Err(rbd_failed(&format!("rbd import-diff into {spec}"), &err)),
        r => r,
    }
}

/// Parses the diff `src` gives while copying it to `out`, taking its sums on the way; bytes
/// after `e` are refused.
pub(crate) fn copy_checked(src: impl Read, out: &mut dyn Write) -> Result<Sent> {
    let sums = crate::sums::copy_with_sums(src, out)?;
    if let Some(t) = sums.records.last().filter(|r| r.tag == '-') {
        return Err(Error::invalid(format!(
            "the diff has {} unexpected bytes after the end record",
            t.len
        )));
    }
    Ok(Sent { sums })
}

/// The end snapshot and start of `sent` must be `to` and `from`.
pub(crate) fn expect_names(sent: &Sent, from: Option<&str>, to: &str, what: &str) -> Result<()> {
    if sent.sums.to.as_deref() != Some(to) || sent.sums.from.as_deref() != from {
        return Err(Error::invalid(format!(
            "{what} is a diff from {} to {}, expected from {} to '{to}'",
            crate::format::show_from(sent.sums.from.as_deref()),
            crate::format::show_to(sent.sums.to.as_deref()),
            crate::format::show_from(from),
        )));
    }
    Ok(())
}

/// Compares `sent` (read again) with `rbd export-diff` of `spec` between `from` and `to`.
pub(crate) fn compare_with_export(
    rbd: &Rbd,
    spec: &str,
    from: Option<&str>,
    to: &str,
    sent: impl Read,
) -> Result<compare::Comparison> {
    let mut child = rbd.spawn_export_diff(spec, from, to)?;
    let stderr = collect_stderr(&mut child);
    let c = match child.stdout.take() {
        Some(out) => compare::compare(sent, out),
        None => Err(Error::invalid("internal: no pipe from rbd")),
    };
    let status = child.wait()?;
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(rbd_failed(&format!("rbd export-diff {spec}@{to}"), &err));
    }
    c
}

/// An error unless `c` says the same change.
pub(crate) fn require_same(c: &compare::Comparison, spec: &str, to: &str) -> Result<()> {
    if c.same() {
        return Ok(());
    }
    let mut what = c.header_differences.clone();
    if c.bytes_differing > 0 {
        what.push(format!(
            "{} byte(s) differ, the first at image offset {}",
            c.bytes_differing,
            c.first_difference.unwrap_or(0)
        ));
    }
    Err(Error::invalid(format!(
        "replica check failed: {spec}@{to} does not hold the change that was sent: {}",
        what.join("; ")
    )))
}

/// A reader of what a writer produces on another thread (bounded: a few chunks in flight),
/// for a stream produced by a function that writes (a merge) read by one that reads.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<std::result::Result<Vec<u8>, String>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

struct ChannelWriter {
    tx: mpsc::SyncSender<std::result::Result<Vec<u8>, String>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .send(Ok(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader gone"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ChannelReader {
    /// Runs `produce` on a thread, writing into the returned reader; its error is the
    /// reader's error at the end.
    pub(crate) fn spawn(
        produce: impl FnOnce(&mut dyn Write) -> Result<()> + Send + 'static,
    ) -> ChannelReader {
        let (tx, rx) = mpsc::sync_channel(4);
        std::thread::spawn(move || {
            let mut w = BufWriter::with_capacity(1 << 20, ChannelWriter { tx: tx.clone() });
            let r = produce(&mut w).and_then(|()| w.flush().map_err(Error::from));
            drop(w);
            if let Err(e) = r {
                let _ = tx.send(Err(e.to_string()));
            }
        });
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(io::Error::other(e));
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A merged stream of the diff files `paths` (a chain), produced on a thread.
pub(crate) fn merged(paths: Vec<String>) -> ChannelReader {
    ChannelReader::spawn(move |w| {
        let opened = paths
            .iter()
            .map(|p| crate::merge::open_input(p))
            .collect::<Result<Vec<_>>>()?;
        let mut inputs = opened
            .iter()
            .map(crate::merge::merge_input)
            .collect::<Result<Vec<_>>>()?;
        let p = crate::merge::plan(&inputs, &crate::merge::MergeOptions::default())?;
        p.write(&mut inputs, w, crate::Version::V1, &mut |_, _| {})?;
        Ok(())
    })
}

/// The sha256 of the raw image a full diff in offset order describes (zeros where it has no
/// data, up to its image size), read once: what `rbd export` of its end snapshot gives.
///
/// # Errors
/// Not a valid full diff; a read fails.
pub fn full_diff_sha256(src: impl Read) -> Result<String> {
    use crate::stream::{DiffReader, ItemKind, RecordSource};
    use sha2::{Digest, Sha256};
    let mut rd = DiffReader::new(src)?;
    if rd.metadata().from_snap.is_some() {
        return Err(Error::invalid(
            "the image digest needs a full diff (this one has a start snapshot)",
        ));
    }
    let size = rd.metadata().image_size.unwrap_or(0);
    let mut sha = Sha256::new();
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    let zero_to = |sha: &mut Sha256, pos: &mut u64, end: u64| {
        while *pos < end {
            let n = (end - *pos).min(zeros.len() as u64) as usize;
            sha.update(&zeros[..n]);
            *pos += n as u64;
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let (extent, data) = match rd.next_item()?.map(|i| i.kind) {
            None | Some(ItemKind::End) => break,
            Some(ItemKind::Write { extent, .. }) => (extent, true),
            Some(ItemKind::Zero(extent)) => (extent, false),
            Some(_) => continue,
        };
        zero_to(&mut sha, &mut pos, extent.offset);
        if data {
            let mut left = extent.len;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                rd.payload().read_exact(&mut buf[..n])?;
                sha.update(&buf[..n]);
                left -= n as u64;
            }
            pos += extent.len;
        } else {
            zero_to(&mut sha, &mut pos, extent.offset + extent.len);
        }
    }
    zero_to(&mut sha, &mut pos, size);
    Ok(crate::sums::hex(&sha.finalize()))
}

/// Makes the destination's HEAD equal to its snapshot `base` again when it differs (a
/// partial import of a failed or killed run); says so in `warnings`.
pub(crate) fn roll_back_if_changed(
    rbd: &Rbd,
    spec: &str,
    base: &str,
    warnings: &mut Vec<String>,
) -> Result<()> {
    if rbd.changed(spec, Some(base))? {
        rbd.snap_rollback(spec, base)?;
        warnings.push(format!(
            "{spec} had changed since its snapshot '{base}' (an interrupted import): rolled back \
             to it"
        ));
    }
    Ok(())
}

/// After a failed import of `to` into `spec`: removes `to` if it was made, rolls the HEAD
/// back to `base` (none: the import was a full one into an image without data, which is left
/// for the caller). What fails here is added to the error.
pub(crate) fn undo_import(rbd: &Rbd, spec: &str, base: Option<&str>, to: &str, e: Error) -> Error {
    let mut also = Vec::new();
    match rbd.snapshots(spec) {
        Ok(s) if s.iter().any(|(_, n)| n == to) => {
            if let Err(x) = rbd.snap_rm(spec, to) {
                also.push(format!(
                    "the snapshot {spec}@{to} could not be removed: {x}"
                ));
            }
        }
        Ok(_) => {}
        Err(x) => also.push(format!("the snapshots of {spec} could not be listed: {x}")),
    }
    if let Some(b) = base {
        if let Err(x) = rbd.snap_rollback(spec, b) {
            also.push(format!("{spec} could not be rolled back to '{b}': {x}"));
        }
    }
    if also.is_empty() {
        e
    } else {
        Error::invalid(format!("{e} ({})", also.join("; ")))
    }
}

/// After a failed full import into `spec`, an existing image that held neither data nor a
/// snapshot before (its end snapshot, if made, already removed by [`undo_import`]): its
/// HEAD emptied again by shrinking it to nothing (which removes every object) and growing it
/// back to its `size` before, so that nothing of the import is left to pass for a replica,
/// and a rerun finds an empty image again and imports the full diff anew.
pub(crate) fn empty_again(rbd: &Rbd, spec: &str, size: u64, e: Error) -> Error {
    match rbd.resize(spec, 0).and_then(|()| rbd.resize(spec, size)) {
        Ok(()) => e,
        Err(x) => Error::invalid(format!(
            "{e} (and {spec}, empty before, could not be emptied again: {x}; it holds part of \
             a full diff and no snapshot: remove it before a rerun)"
        )),
    }
}

/// `POOL/IMAGE` with the image name replaced by `name`.
pub(crate) fn sibling(spec: &str, name: &str) -> String {
    match spec.rsplit_once('/') {
        Some((p, _)) => format!("{p}/{name}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_tail_keeps_the_end_until_released() {
        let mut w = HoldTail::new(Vec::new());
        w.write_all(&[1; 100]).unwrap();
        w.write_all(&[2; 10]).unwrap();
        w.write_all(b"e").unwrap();
        assert_eq!(w.inner.len(), 111 - TAIL);
        let out = w.release().unwrap();
        assert_eq!(out.len(), 111);
        assert_eq!(out.last(), Some(&b'e'));
    }

    #[test]
    fn channel_reader_passes_bytes_and_errors() {
        let mut r = ChannelReader::spawn(|w| {
            w.write_all(&[3; 5000])?;
            Ok(())
        });
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        assert_eq!(v, vec![3; 5000]);
        let mut r = ChannelReader::spawn(|w| {
            w.write_all(&[3; 10])?;
            Err(Error::invalid("boom"))
        });
        let mut v = Vec::new();
        assert!(r
            .read_to_end(&mut v)
            .unwrap_err()
            .to_string()
            .contains("boom"));
    }

    #[test]
    fn sibling_replaces_the_image_name() {
        assert_eq!(sibling("rbd/a", "b"), "rbd/b");
        assert_eq!(sibling("rbd/ns/a", "b"), "rbd/ns/b");
        assert_eq!(sibling("a", "b"), "b");
    }
}
