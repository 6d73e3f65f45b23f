//! Shared helpers for the integration tests. Include with `mod common;`.
//!
//! - [`manifest`]: the real Ceph test data in `testdata/real/` (diff files,
//!   their metadata and the expected raw-image sha256 values).
//! - [`ceph`]: `rbd merge-diff` as an offline reference, and a throw-away
//!   live Ceph cluster for `rbd import-diff` / `rbd export` checks.

// Each test binary uses only part of these helpers.
#![allow(dead_code)]

pub mod ceph;
pub mod gen;
pub mod live;
pub mod manifest;
pub mod model;
