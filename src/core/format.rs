//! The wire formats: banners, tags, extents and the record model (no I/O here).
//!
//! | stream | banner | records |
//! |---|---|---|
//! | `rbd diff v1` | `rbd diff v1\n` | `f t s w z e`, no length fields |
//! | `rbd diff v2` | `rbd diff v2\n` | as v1 plus `p`; every tag but `e` is followed by a le64 length |
//! | `rbd image v2` | `rbd image v2\n` | header `O T U C M E`, `rbd image diffs v2\n`, le64 count, v2 diffs |
//!
//! All integers are little-endian; names are a le32 length and raw bytes.

use std::fmt;

/// Banner of an `rbd diff v1` stream (what `rbd export-diff` writes).
pub const BANNER_V1: &[u8; 12] = b"rbd diff v1\n";
/// Banner of an `rbd diff v2` stream (embedded in `rbd export --export-format 2`).
pub const BANNER_V2: &[u8; 12] = b"rbd diff v2\n";
/// Banner of an `rbd export --export-format 2` image stream.
pub const IMAGE_BANNER: &[u8; 13] = b"rbd image v2\n";
/// Banner before the embedded diffs of an image stream.
pub const IMAGE_DIFFS_BANNER: &[u8; 19] = b"rbd image diffs v2\n";

/// What a stream that starts with no rbd banner probably is, judged from its first bytes,
/// and what to do with it: compressed data (gzip, xz, bzip2, lz4) to decompress first, or a
/// raw or qcow2 disk image to make a diff of. `None` when nothing is recognised.
pub fn foreign(prefix: &[u8]) -> Option<&'static str> {
    let at = |magic: &[u8]| prefix.starts_with(magic);
    Some(if at(&[0x1f, 0x8b]) {
        "this is gzip-compressed data; decompress it first: `gunzip -c FILE | rbddiff ... -`"
    } else if at(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "this is xz-compressed data; decompress it first: `xz -dc FILE | rbddiff ... -`"
    } else if at(b"BZh") && prefix.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        "this is bzip2-compressed data; decompress it first: `bzip2 -dc FILE | rbddiff ... -`"
    } else if at(&[0x04, 0x22, 0x4d, 0x18]) {
        "this is lz4-compressed data; decompress it first: `lz4 -dc FILE | rbddiff ... -`"
    } else if at(b"QFI\xfb") {
        "this is a qcow2 image, not a diff: convert it (`qemu-img convert -O raw FILE RAW`), \
         then `rbddiff create --raw RAW -o DIFF` makes a full diff of it"
    } else if prefix.len() >= 12 && prefix[..12].iter().all(|b| *b == 0)
        || (prefix.first() == Some(&0xeb) && prefix.get(2) == Some(&0x90))
        || at(b"LUKS\xba\xbe")
    {
        // Zeros, an x86 boot sector's jump, a LUKS header: a disk image (`rbd export`).
        "this looks like a raw image (an `rbd export` or a disk), not a diff: \
         `rbddiff create --raw RAW -o DIFF` makes a full diff of it"
    } else {
        return None;
    })
}
/// Longest snapshot name rbd's readers accept.
pub const MAX_NAME_LEN: u32 = 4096;
/// Longest image-meta key or value this crate accepts in an image stream header.
pub const MAX_META_LEN: u32 = 65536;
/// Bytes of image-meta pairs kept from one image stream header (keys and values, plus 64
/// per pair): a later pair with the same key replaces the earlier one (the later value
/// wins, as in `rbd import`); pairs beyond this are read and checked, then counted in a
/// `MetaNotKept` warning instead of being kept.
pub const MAX_META_KEPT: usize = 1 << 20;

/// Record tags.
pub mod tag {
    /// Start snapshot name.
    pub const FROM_SNAP: u8 = b'f';
    /// End snapshot name.
    pub const TO_SNAP: u8 = b't';
    /// Image size at the end point.
    pub const SIZE: u8 = b's';
    /// Protection status of the end snapshot (v2 only).
    pub const PROTECTED: u8 = b'p';
    /// Data extent with payload.
    pub const WRITE: u8 = b'w';
    /// Extent that reads as zeros.
    pub const ZERO: u8 = b'z';
    /// End of a diff.
    pub const END: u8 = b'e';
    /// Image header: object order.
    pub const ORDER: u8 = b'O';
    /// Image header: feature bits.
    pub const FEATURES: u8 = b'T';
    /// Image header: stripe unit.
    pub const STRIPE_UNIT: u8 = b'U';
    /// Image header: stripe count.
    pub const STRIPE_COUNT: u8 = b'C';
    /// Image header: one image-meta key/value pair.
    pub const META: u8 = b'M';
    /// Image header: end of header.
    pub const IMAGE_END: u8 = b'E';
}

/// Diff stream version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// `rbd diff v1`: no length fields; read and written by `rbd export-diff/import-diff/merge-diff`.
    V1,
    /// `rbd diff v2`: le64 length after every tag but `e`.
    V2,
}

impl Version {
    /// The banner of this version.
    pub fn banner(self) -> &'static [u8; 12] {
        match self {
            Version::V1 => BANNER_V1,
            Version::V2 => BANNER_V2,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// A byte range of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

impl Extent {
    /// A new extent.
    pub const fn new(offset: u64, len: u64) -> Self {
        Extent { offset, len }
    }

    /// One past the last byte; `None` when it overflows.
    pub fn end(self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

/// The header of a diff: snapshot names, protection flag and image size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Start snapshot (`f`); `None` for a full diff.
    pub from_snap: Option<Vec<u8>>,
    /// End snapshot (`t`); `None` for a diff to the image HEAD.
    pub to_snap: Option<Vec<u8>>,
    /// Protection status of the end snapshot (`p`, v2 only).
    pub protected: Option<bool>,
    /// Image size at the end point (`s`).
    pub image_size: Option<u64>,
}

impl Metadata {
    /// The start snapshot as text ("" when absent), lossy for non-UTF-8 names.
    pub fn from_name(&self) -> String {
        name_str(self.from_snap.as_deref())
    }

    /// The end snapshot as text ("" when absent), lossy for non-UTF-8 names.
    pub fn to_name(&self) -> String {
        name_str(self.to_snap.as_deref())
    }

    /// True when the diff has no start snapshot (a full diff).
    pub fn is_full(&self) -> bool {
        self.from_snap.is_none()
    }
}

fn name_str(n: Option<&[u8]>) -> String {
    n.map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// One data-section record of a diff, borrowing its payload from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record<'a> {
    /// `w`: the image bytes at `offset..offset+data.len()` become `data`.
    Write {
        /// Image offset.
        offset: u64,
        /// Payload (a sub-slice of the input; never copied).
        data: &'a [u8],
    },
    /// `z`: the extent reads as zeros.
    Zero(Extent),
    /// A v2 record with a tag this crate does not know, skipped by its length.
    Unknown {
        /// Tag byte.
        tag: u8,
        /// Body.
        data: &'a [u8],
    },
    /// `e`: end of the diff.
    End,
}

impl Record<'_> {
    /// The tag byte of this record.
    pub fn tag(&self) -> u8 {
        match self {
            Record::Write { .. } => tag::WRITE,
            Record::Zero(_) => tag::ZERO,
            Record::Unknown { tag, .. } => *tag,
            Record::End => tag::END,
        }
    }

    /// The image extent of a `w` or `z` record.
    pub fn extent(&self) -> Option<Extent> {
        match self {
            Record::Write { offset, data } => Some(Extent::new(*offset, data.len() as u64)),
            Record::Zero(e) => Some(*e),
            _ => None,
        }
    }
}

/// Header of an `rbd image v2` stream (`rbd export --export-format 2`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageHeader {
    /// Object order (`O`): objects are `1 << order` bytes.
    pub order: Option<u64>,
    /// Feature bits (`T`).
    pub features: Option<u64>,
    /// Stripe unit in bytes (`U`).
    pub stripe_unit: Option<u64>,
    /// Stripe count (`C`).
    pub stripe_count: Option<u64>,
    /// Image-meta pairs (`M`), in stream order, one per key (the last value), at most
    /// [`MAX_META_KEPT`] bytes of them.
    pub meta: Vec<(Vec<u8>, Vec<u8>)>,
    /// Number of embedded diffs announced after `rbd image diffs v2\n`.
    pub diff_count: u64,
}

// ---------------------------------------------------------------------------------------------
// What a stream holds

/// zstd frame magic number, little-endian.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// What a stream holds, judged from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `rbd diff v1`.
    DiffV1,
    /// `rbd diff v2`.
    DiffV2,
    /// `rbd image v2` (export format 2).
    Image,
    /// zstd-compressed data (only reported by [`sniff`], or for doubly compressed input).
    Zstd,
    /// Anything else.
    Unknown,
}

/// Classifies a stream by its first bytes (up to 13 are looked at).
pub fn sniff(prefix: &[u8]) -> Kind {
    if prefix.starts_with(BANNER_V1) {
        Kind::DiffV1
    } else if prefix.starts_with(BANNER_V2) {
        Kind::DiffV2
    } else if prefix.starts_with(IMAGE_BANNER) {
        Kind::Image
    } else if prefix.starts_with(&ZSTD_MAGIC) {
        Kind::Zstd
    } else {
        Kind::Unknown
    }
}

// ---------------------------------------------------------------------------------------------
// How messages name snapshots

/// A start snapshot as every message spells it: `'NAME'`, or `(full)` for a full diff.
pub fn show_from(name: Option<&str>) -> String {
    name.map_or_else(|| "(full)".to_string(), |n| format!("'{n}'"))
}

/// An end snapshot as every message spells it: `'NAME'`, or `(HEAD)` for a diff to the image
/// HEAD.
pub fn show_to(name: Option<&str>) -> String {
    name.map_or_else(|| "(HEAD)".to_string(), |n| format!("'{n}'"))
}
