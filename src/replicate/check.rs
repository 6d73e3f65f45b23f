//! `verify --replica`: the replica check of [`super::sync`] on demand, for any snapshot the
//! two images have in common.

use serde::Serialize;

use super::{compare_with_export, Checked, Verify};
use crate::error::{Error, Result};
use crate::rbd::{collect_stderr, image_name, rbd_failed, Rbd};

/// Options of [`verify_replica`].
#[derive(Clone, Debug, Default)]
pub struct ReplicaOptions {
    /// How to reach the source cluster.
    pub src: Rbd,
    /// How to reach the destination cluster.
    pub dst: Rbd,
    /// The snapshot to check (default: the newest one both hold).
    pub snap: Option<String>,
    /// `Diff` (default) or `Full`.
    pub verify: Verify,
}

/// What [`verify_replica`] found.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaReport {
    /// The source image.
    pub source: String,
    /// The destination image.
    pub destination: String,
    /// The common snapshot before the one checked (the diff compared starts there; `null`:
    /// from empty).
    pub from_snap: Option<String>,
    /// The snapshot checked.
    pub to_snap: String,
    /// True when the destination's snapshot holds what the source's does.
    pub same: bool,
    /// The check made.
    pub check: Checked,
}

/// Checks that `dst_spec@SNAP` holds what `src_spec@SNAP` does: with [`Verify::Diff`], the
/// export-diffs of both between the previous common snapshot and SNAP describe the same
/// change ([`super::compare`]); with [`Verify::Full`], `rbd export` of both has the same
/// sha256.
///
/// # Errors
/// No snapshot in common, or SNAP is not on both; an `rbd` call fails.
pub fn verify_replica(
    src_spec: &str,
    dst_spec: &str,
    opts: &ReplicaOptions,
) -> Result<ReplicaReport> {
    image_name(src_spec)?;
    image_name(dst_spec)?;
    let (src, dst) = (&opts.src, &opts.dst);
    let on_dst = dst.snapshots(dst_spec)?;
    let common: Vec<String> = src
        .snapshots(src_spec)?
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| on_dst.iter().any(|(_, d)| d == n))
        .collect();
    let at = match &opts.snap {
        Some(s) => common.iter().position(|c| c == s).ok_or_else(|| {
            Error::invalid(format!(
                "snapshot '{s}' is not on both {src_spec} and {dst_spec}"
            ))
        })?,
        None => common.len().checked_sub(1).ok_or_else(|| {
            Error::invalid(format!(
                "{src_spec} and {dst_spec} have no snapshot in common"
            ))
        })?,
    };
    let to = common[at].clone();
    let from = at.checked_sub(1).map(|i| common[i].clone());
    let (same, check) = match opts.verify {
        Verify::Full => {
            let a = src.export_sha256(src_spec, &to)?;
            let b = dst.export_sha256(dst_spec, &to)?;
            (
                a == b,
                Checked {
                    mode: Verify::Full,
                    comparison: None,
                    sha256: Some(b),
                },
            )
        }
        _ => {
            let mut child = src.spawn_export_diff(src_spec, from.as_deref(), &to)?;
            let stderr = collect_stderr(&mut child);
            let c = match child.stdout.take() {
                Some(out) => compare_with_export(dst, dst_spec, from.as_deref(), &to, out),
                None => Err(Error::invalid("internal: no pipe from rbd")),
            };
            let status = child.wait()?;
            let err = stderr.join().unwrap_or_default();
            if !status.success() {
                return Err(rbd_failed(
                    &format!("rbd export-diff {src_spec}@{to}"),
                    &err,
                ));
            }
            let c = c?;
            (
                c.same(),
                Checked {
                    mode: Verify::Diff,
                    comparison: Some(c),
                    sha256: None,
                },
            )
        }
    };
    Ok(ReplicaReport {
        source: src_spec.to_string(),
        destination: dst_spec.to_string(),
        from_snap: from,
        to_snap: to,
        same,
        check,
    })
}
