//! The oracle: a raw image held in a `Vec<u8>`, changed exactly as `rbd import-diff` changes an
//! image (resize to `s` first, then every `w`/`z` in stream order).

#![allow(dead_code)]

use std::io::Read;

use rbddiff::{DiffSlice, ItemKind, RecordSource};
use sha2::{Digest, Sha256};

/// A raw image and the snapshot it is at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub data: Vec<u8>,
    pub snap: Option<String>,
}

impl Image {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one diff held in memory; panics on invalid input (tests only).
    pub fn apply_bytes(&mut self, diff: &[u8]) {
        let d = DiffSlice::parse(diff).expect("diff header parses");
        let mut recs = d.records();
        self.apply(&mut recs);
    }

    /// Applies every record of a source.
    pub fn apply(&mut self, src: &mut dyn RecordSource) {
        let meta = src.metadata().clone();
        let size = meta.image_size.expect("diff has a size") as usize;
        self.data.resize(size, 0);
        while let Some(item) = src.next_item().expect("valid diff") {
            match item.kind {
                ItemKind::Write { extent, mut data } => {
                    let (a, b) = (
                        extent.offset as usize,
                        (extent.offset + extent.len) as usize,
                    );
                    data.read_exact(&mut self.data[a..b]).expect("payload");
                }
                ItemKind::Zero(e) => {
                    let (a, b) = (e.offset as usize, (e.offset + e.len) as usize);
                    self.data[a..b].fill(0);
                }
                ItemKind::Unknown { .. } => {}
                ItemKind::End => break,
                _ => {}
            }
        }
        self.snap = meta
            .to_snap
            .map(|s| String::from_utf8_lossy(&s).into_owned());
    }

    /// Hex sha256 of the raw bytes.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.data))
    }
}

/// Applies a chain of diffs to an empty image.
pub fn apply_chain(diffs: &[&[u8]]) -> Image {
    let mut img = Image::new();
    for d in diffs {
        img.apply_bytes(d);
    }
    img
}
