//! Operator workflows over a backup directory, in one place: `backup`, `restore` and
//! `prune`, re-exported from [`crate::archive`] where they live.
//!
//! The backups of one image live in a directory as a graph of diff files (plain `.diff` or
//! compressed `.diff.zst`, each with a `.sums` sidecar) over snapshots. It is found from the
//! files' own headers (start and end snapshot, [`crate::archive::graph`]); names only select the image's
//! files (`IMAGE@…` ending in `.diff` or `.diff.zst`) and are written for humans:
//! `IMAGE@TO.full.diff` for a full diff, `IMAGE@FROM..TO.diff` for an incremental.
//!
//! Discovery and names live in [`crate::archive`]; [`backup`] and [`restore`] delegate the
//! cluster side to the `rbd` CLI ([`Rbd`], [`crate::rbd`]):
//! `rbd snap create` + `rbd export-diff … -` streamed through the stream parser into an atomic
//! output, and a one-pass merge of the best path streamed into `rbd import-diff -`. `prune`
//! (offline) lives in [`crate::archive::prune`], re-exported.
//!
//! Files of another image id under the same name (a recreated image, recorded in the
//! archive's [`crate::archive::catalog`]) are another lineage: `backup` never bases an
//! incremental on them, `restore` and `prune` take the newest lineage.
//!
//! Names that reach `rbd` (image specs, snapshot names from `--snap` or from diff headers)
//! are refused when `rbd` could take them for options (a leading `-`, control characters),
//! and option values are passed as single `--option=VALUE` tokens.
//!
//! # Concurrency and interrupted runs
//!
//! `backup` and `prune` hold an exclusive [`crate::dirlock`] lock on the directory for their
//! whole run, `restore` (and `prune --dry-run`) a shared one; a conflicting run is refused at
//! once, or waited for up to the `wait` asked for. How a prune survives a kill (its journal)
//! is described in [`crate::archive::prune`].

pub use crate::archive::backup::{backup, BackupOptions, BackupReport};
pub use crate::archive::names::{
    default_snap_name, escape, file_name, images_in, stamp, unescape, utc_stamp, MAX_IMAGE_NAME,
    SNAP_PREFIX,
};
pub use crate::archive::prune::{prune, PruneOptions, PruneReport};
pub use crate::archive::restore::{
    restore, restore_to_file, FileRestoreOptions, FileRestoreReport, RestoreOptions, RestoreReport,
};
pub use crate::archive::{discover_chain, ChainFile};
pub use crate::rbd::Rbd;
