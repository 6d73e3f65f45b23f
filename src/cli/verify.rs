//! `rbddiff verify`.

use std::path::PathBuf;

use rbddiff::size::Bytes;
use rbddiff::verify::{verify_with_progress, VerifyOptions};
use rbddiff::Result;

use super::Status;

/// Check diffs: structure, chain links, checksum sidecars, or the result against a raw image.
///
/// Exit status: 0 all good, 1 problems found (each listed), 2 could not run.
/// Several files (or a directory) are checked as one chain. An archive on object storage
/// (one argument, s3://BUCKET/PREFIX) has every file read once and checked against its
/// sidecar (structure, length, sha256, every record's CRC), with the same report.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Diff files or directories (`-` for stdin). A directory stands for its diff files;
    /// rbddiff's own files (`.sums` sidecars, state files) given by name are passed over
    /// with a note, so `verify backups/*` checks the diffs.
    #[arg(required = true)]
    files: Vec<String>,
    /// Write a FILE.sums checksum sidecar for every valid file.
    #[arg(long)]
    write_sums: bool,
    /// A missing FILE.sums sidecar is a problem.
    #[arg(long)]
    require_sums: bool,
    /// Also compare the whole-file sha256 recorded in the sidecar.
    #[arg(long)]
    digest: bool,
    /// The chain must start with a full diff.
    #[arg(long)]
    full: bool,
    /// Check each file on its own, not as a chain.
    #[arg(long)]
    no_chain: bool,
    /// Apply the chain to a scratch sparse file and compare it with this raw image.
    #[arg(long, value_name = "RAW")]
    against: Option<PathBuf>,
    #[command(flatten)]
    wait: super::WaitArgs,
    /// Check a replica instead: FILES are SRC_POOL/IMAGE DST_POOL/IMAGE, and the newest
    /// snapshot both hold (or --snap) must hold the same on the destination: their
    /// export-diffs from the common snapshot before it describe the same change
    /// (`--replica-check full`: the sha256 of `rbd export` of both).
    #[arg(long)]
    replica: bool,
    /// With --replica: the snapshot to check.
    #[arg(long, requires = "replica", value_name = "SNAP")]
    snap: Option<String>,
    /// With --replica: diff or full.
    #[arg(
        long,
        requires = "replica",
        value_name = "CHECK",
        default_value = "diff"
    )]
    replica_check: rbddiff::replicate::Verify,
    /// With --replica: the source cluster's configuration file.
    #[arg(long, requires = "replica", value_name = "CONF")]
    src_conf: Option<PathBuf>,
    /// With --replica: the Ceph user on the source cluster.
    #[arg(long, requires = "replica", value_name = "USER")]
    src_id: Option<String>,
    /// With --replica: the destination cluster's configuration file.
    #[arg(long, requires = "replica", value_name = "CONF")]
    dst_conf: Option<PathBuf>,
    /// With --replica: the Ceph user on the destination cluster.
    #[arg(long, requires = "replica", value_name = "USER")]
    dst_id: Option<String>,
    #[command(flatten)]
    s3: super::S3Args,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn run_replica(a: Args) -> Result<Status> {
    use rbddiff::replicate::{verify_replica, ReplicaOptions};
    use rbddiff::workflow::Rbd;
    let [src, dst] = a.files.as_slice() else {
        return Err(rbddiff::Error::invalid(
            "verify --replica takes two images: SRC_POOL/IMAGE DST_POOL/IMAGE",
        ));
    };
    let opts = ReplicaOptions {
        src: Rbd::connect(a.src_conf, a.src_id),
        dst: Rbd::connect(a.dst_conf, a.dst_id),
        snap: a.snap,
        verify: a.replica_check,
    };
    let r = verify_replica(src, dst, &opts)?;
    super::print_report(a.json, &r, |out| {
        writeln!(
            out,
            "{} -> {} at '{}': {} ({})",
            r.source,
            r.destination,
            r.to_snap,
            if r.same { "same" } else { "DIFFERENT" },
            super::sync::check_text(&r.check)
        )
    })?;
    Ok(if r.same { Status::Ok } else { Status::Problems })
}

pub fn run(a: Args) -> Result<Status> {
    if a.replica {
        return run_replica(a);
    }
    // An archive on object storage: every file against its sidecar, the same report.
    let store = match a.files.as_slice() {
        [one] => a.s3.store(std::path::Path::new(one))?,
        _ => None,
    };
    let opts = VerifyOptions {
        full: a.full,
        write_sums: a.write_sums,
        require_sums: a.require_sums,
        digest: a.digest,
        no_chain: a.no_chain,
        against: a.against,
        wait: a.wait.get()?,
    };
    let r = match &store {
        Some(s) => rbddiff::archive::remote::verify(&**s, None),
        None => super::with_progress_on(super::first(&a.files), |p| {
            verify_with_progress(&a.files, &opts, p)
        }),
    };
    let r = r?;
    super::note_skipped(&r.skipped)?;
    super::print_report(a.json, &r, |out| {
        for f in &r.files {
            let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
            writeln!(
                out,
                "{}: {} {} -> {} size {} structure {} sums {}",
                f.file,
                f.kind,
                show(&f.from_snap),
                show(&f.to_snap),
                f.image_size.map_or("?".into(), |s| Bytes(s).to_string()),
                if f.valid { "ok" } else { "BAD" },
                f.sums
            )?;
        }
        // Ceph 16's `p` length field: one note, not one per file.
        for f in r.findings.iter().filter(|f| !f.is_ceph16_p_length()) {
            writeln!(out, "{f}")?;
        }
        let quirky: std::collections::BTreeSet<&str> = r
            .findings
            .iter()
            .filter(|f| f.is_ceph16_p_length())
            .map(|f| f.file.as_str())
            .collect();
        if !quirky.is_empty() {
            writeln!(out, "{}", rbddiff::error::ceph16_note(quirky.len()))?;
        }
        if r.chain {
            let chain_ok = !r.findings.iter().any(|f| f.check == "chain");
            writeln!(out, "chain: {}", if chain_ok { "ok" } else { "BROKEN" })?;
        }
        writeln!(
            out,
            "{}",
            if r.ok() { "all good" } else { "PROBLEMS FOUND" }
        )?;
        Ok(())
    })?;
    Ok(if r.ok() { Status::Ok } else { Status::Problems })
}
