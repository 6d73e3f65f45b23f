//! What `rbddiff serve` offers: a chain of files, or every restorable snapshot of an archive.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::view::ChainView;
use super::{Export, Exports};
use crate::dirlock::DirLock;
use crate::error::{Error, Result};

/// A chain of files: one export named by its end snapshot, also the default export.
#[derive(Debug)]
pub struct ChainExports {
    name: String,
    view: Arc<ChainView>,
}

impl ChainExports {
    /// Opens the chain `paths` ([`ChainView::open`]).
    ///
    /// # Errors
    /// As [`ChainView::open`]; a chain that ends at the image HEAD is served as `HEAD`.
    pub fn open(paths: &[PathBuf]) -> Result<ChainExports> {
        let view = ChainView::open(paths)?;
        Ok(ChainExports {
            name: view.to_snap().unwrap_or("HEAD").to_string(),
            view: Arc::new(view),
        })
    }
}

impl Exports for ChainExports {
    fn names(&self) -> Vec<String> {
        vec![self.name.clone()]
    }

    fn open(&self, name: &str) -> std::result::Result<Arc<dyn Export>, String> {
        if name.is_empty() || name == self.name {
            Ok(self.view.clone())
        } else {
            Err(format!(
                "no export '{name}' (this server has '{}')",
                self.name
            ))
        }
    }
}

/// Every restorable snapshot of one image of an archive, each an export named by its
/// snapshot; the default export is the chosen snapshot, else the newest restorable one.
/// The archive's shared lock ([`crate::dirlock`]) is held for as long as this lives (the
/// server's lifetime): no `backup` or `prune` changes the archive while it is served, they
/// wait or are refused. The list is read for each `NBD_OPT_LIST`; an export's path is chosen
/// ([`crate::archive::graph::Graph::choose`]: its files verified, damaged ones gone round)
/// when a client first opens it, and kept for later clients.
#[derive(Debug)]
pub struct ArchiveExports {
    _lock: DirLock,
    dir: PathBuf,
    image: String,
    default: Option<String>,
    open: Mutex<HashMap<String, Arc<ChainView>>>,
}

impl ArchiveExports {
    /// The exports of `image` in `dir` (default: the one image `dir` holds); `snap` is the
    /// default export. Takes the archive's shared lock, waiting up to `wait` for a run that
    /// changes it.
    ///
    /// # Errors
    /// `dir` is not a directory, is locked by a run that changes it (past `wait`), holds no
    /// backup of the image, or several images and none was named; `snap` is not restorable.
    pub fn open(
        dir: &Path,
        image: Option<&str>,
        snap: Option<&str>,
        wait: Option<Duration>,
    ) -> Result<ArchiveExports> {
        if !dir.is_dir() {
            return Err(Error::invalid("not a directory").with_file(dir));
        }
        let lock = crate::dirlock::lock(dir, false, crate::dirlock::Command::Serve, wait)?;
        let image = crate::archive::pick_image(dir, None, image)?;
        let e = ArchiveExports {
            _lock: lock,
            dir: dir.to_path_buf(),
            image,
            default: snap.map(String::from),
            open: Mutex::new(HashMap::new()),
        };
        let names = e.restorable()?;
        if names.is_empty() {
            return Err(
                Error::invalid(format!("no snapshot of {} is restorable", e.image)).with_file(dir),
            );
        }
        if let Some(s) = snap {
            if !names.iter().any(|n| n == s) {
                return Err(Error::invalid(format!(
                    "snapshot '{s}' of {} is not restorable (restorable: {})",
                    e.image,
                    names.join(", ")
                ))
                .with_file(dir));
            }
        }
        Ok(e)
    }

    /// The image served.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The restorable snapshots, oldest first (file headers only: nothing is verified).
    pub fn restorable(&self) -> Result<Vec<String>> {
        let (g, _) = crate::archive::graph::newest_lineage(&self.dir, &self.image, None)?;
        Ok(g.restorable(&Default::default())
            .into_iter()
            .map(|r| r.0)
            .collect())
    }

    fn view(&self, name: &str) -> Result<Arc<ChainView>> {
        let name = match (name, &self.default) {
            ("", Some(d)) => d.clone(),
            ("", None) => self.restorable()?.pop().unwrap_or_default(),
            (n, _) => n.to_string(),
        };
        if let Some(v) = self.open.lock().ok().and_then(|m| m.get(&name).cloned()) {
            return Ok(v);
        }
        let (_, files) = crate::archive::restore::best_path(&self.dir, &self.image, Some(&name))?;
        let view = Arc::new(ChainView::open(&files)?);
        if let Ok(mut m) = self.open.lock() {
            m.insert(name, view.clone());
        }
        Ok(view)
    }
}

impl Exports for ArchiveExports {
    fn names(&self) -> Vec<String> {
        self.restorable().unwrap_or_default()
    }

    fn open(&self, name: &str) -> std::result::Result<Arc<dyn Export>, String> {
        self.view(name)
            .map(|v| v as Arc<dyn Export>)
            .map_err(|e| e.to_string())
    }
}
