//! `rbddiff serve`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rbddiff::nbd::exports::{ArchiveExports, ChainExports};
use rbddiff::nbd::server::{serve, Listen, ServeOptions};
use rbddiff::nbd::Exports;
use rbddiff::{Error, Result};

use super::Status;

/// Serve snapshots read-only over NBD, without restoring them.
///
/// Given an archive directory, every restorable snapshot of its image is an export named by
/// the snapshot (`nbdinfo --list` shows them); the default export is --snap, else the newest.
/// Given diff files (a full diff and the incrementals after it, in order), their end snapshot
/// is served, under its name and as the default export. Reads return what importing the chain
/// would give; holes and zero ranges read as zeros and are reported as holes by
/// BLOCK_STATUS (`base:allocation`). Writes are refused (EPERM).
///
/// Plain NBD has no authentication and no encryption: by default only loopback addresses
/// are accepted (use --allow-remote to listen elsewhere, on a trusted network only).
/// Stops cleanly on SIGINT or SIGTERM.
///
/// Examples:
///   rbddiff serve backups/ --listen 127.0.0.1:10809 &
///   nbdinfo --list nbd://127.0.0.1:10809
///   nbdfuse mnt/disk nbd://127.0.0.1:10809/SNAP
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// An archive directory, or diff files forming a chain.
    #[arg(required = true, value_name = "DIR|FILE")]
    inputs: Vec<PathBuf>,
    /// The default export of an archive (default: the newest restorable snapshot).
    #[arg(long, value_name = "SNAP")]
    snap: Option<String>,
    /// The image of an archive that holds several.
    #[arg(long)]
    image: Option<String>,
    /// TCP address to listen on (port 0: any free port, printed on start).
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:10809",
        conflicts_with = "socket"
    )]
    listen: std::net::SocketAddr,
    /// Listen on a Unix socket instead (it must not exist; removed on exit).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Allow a non-loopback --listen address (plain NBD has no authentication).
    #[arg(long)]
    allow_remote: bool,
    /// The most clients served at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_clients: usize,
    #[command(flatten)]
    wait: super::WaitArgs,
}

pub fn run(a: Args) -> Result<Status> {
    let exports: Arc<dyn Exports> = match a.inputs.as_slice() {
        [dir] if dir.is_dir() => Arc::new(ArchiveExports::open(
            dir,
            a.image.as_deref(),
            a.snap.as_deref(),
            a.wait.get()?,
        )?),
        files => {
            if a.snap.is_some() || a.image.is_some() || a.wait.wait.is_some() {
                return Err(Error::invalid(
                    "--snap, --image and --wait apply to an archive directory",
                ));
            }
            Arc::new(ChainExports::open(files)?)
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let opts = ServeOptions {
        listen: match a.socket {
            Some(p) => Listen::Unix(p),
            None => Listen::Tcp(a.listen),
        },
        allow_remote: a.allow_remote,
        max_clients: a.max_clients.max(1),
        ..ServeOptions::default()
    };
    let names = exports.names();
    serve(exports, &opts, stop, &mut |uri| {
        if !super::quiet() {
            eprintln!(
                "rbddiff: serving read-only on {uri} (exports: {})",
                names.join(", ")
            );
        }
    })?;
    Ok(Status::Ok)
}
