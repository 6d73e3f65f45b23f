//! Proptest strategies for diffs and image streams, an encoder through the crate's writer and
//! an independent decoder through the slice driver.

use proptest::prelude::*;
use rbddiff::write::encode_image_header;
use rbddiff::{
    DiffSlice, DiffWriter, Extent, ImageHeader, ImageSlice, Metadata, Record, Version, WriteOptions,
};

/// One data-section record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write { offset: u64, data: Vec<u8> },
    Zero(Extent),
    Unknown { tag: u8, data: Vec<u8> },
}

/// A whole diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub version: Version,
    pub meta: Metadata,
    pub ops: Vec<Op>,
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(31)))
        .collect()
}

impl Spec {
    /// Encodes with [`DiffWriter`].
    pub fn encode(&self, opts: WriteOptions) -> Vec<u8> {
        let mut w = DiffWriter::with_options(Vec::new(), self.version, &self.meta, opts).unwrap();
        for op in &self.ops {
            match op {
                Op::Write { offset, data } => w.write_data(*offset, data).unwrap(),
                Op::Zero(e) => w.zero(*e).unwrap(),
                Op::Unknown { tag, data } => w.unknown(*tag, data).unwrap(),
            }
        }
        w.finish().unwrap()
    }

    /// Decodes with the slice driver; `None` on any error.
    pub fn decode(bytes: &[u8]) -> Option<(Spec, usize)> {
        let d = DiffSlice::parse(bytes).ok()?;
        let mut ops = Vec::new();
        let mut recs = d.records();
        for r in recs.by_ref() {
            match r.ok()?.1 {
                Record::Write { offset, data } => ops.push(Op::Write {
                    offset,
                    data: data.to_vec(),
                }),
                Record::Zero(e) => ops.push(Op::Zero(e)),
                Record::Unknown { tag, data } => ops.push(Op::Unknown {
                    tag,
                    data: data.to_vec(),
                }),
                Record::End => {}
                _ => return None,
            }
        }
        let end = recs.offset() as usize;
        Some((
            Spec {
                version: d.version(),
                meta: d.metadata().clone(),
                ops,
            },
            end,
        ))
    }
}

fn name() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24))
}

/// Raw op choices: kind, gap before, length, payload seed, unknown tag.
type RawOp = (u8, u64, u64, u8, u8);

fn build(version: Version, base: u64, raw: Vec<RawOp>, extra: u64) -> (Vec<Op>, u64) {
    let mut pos = base;
    let mut ops = Vec::new();
    for (kind, gap, len, seed, t) in raw {
        let kind = if version == Version::V1 {
            kind % 2
        } else {
            kind % 3
        };
        match kind {
            0 => {
                pos += gap;
                ops.push(Op::Write {
                    offset: pos,
                    data: pattern(seed, len as usize),
                });
                pos += len;
            }
            1 => {
                pos += gap;
                // Zero extents may be large: they carry no payload.
                let len = len * u64::from(seed % 4 + 1) * 4096;
                ops.push(Op::Zero(Extent::new(pos, len)));
                pos += len;
            }
            _ => {
                let tag = if b"ftpswze".contains(&t) { b'X' } else { t };
                ops.push(Op::Unknown {
                    tag,
                    data: pattern(seed, (len % 40) as usize),
                });
            }
        }
    }
    (ops, pos + extra)
}

/// Any valid diff (v1 or v2) the writer accepts.
pub fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![Just(Version::V1), Just(Version::V2)],
        name(),
        name(),
        any::<Option<bool>>(),
        prop_oneof![Just(0u64), 0..1u64 << 40],
        proptest::collection::vec(
            (
                any::<u8>(),
                0..3000u64,
                1..2000u64,
                any::<u8>(),
                any::<u8>(),
            ),
            0..12,
        ),
        prop_oneof![Just(0u64), 0..100_000u64],
    )
        .prop_map(|(version, from, to, protected, base, raw, extra)| {
            let (ops, size) = build(version, base, raw, extra);
            Spec {
                version,
                meta: Metadata {
                    from_snap: from,
                    to_snap: to,
                    protected: if version == Version::V2 {
                        protected
                    } else {
                        None
                    },
                    image_size: Some(size),
                },
                ops,
            }
        })
}

/// A record-dense diff (v1 or v2): up to `max` small `w` records (1 to 48 bytes) and `z`
/// records, often back to back, now and then an unknown v2 record: what the drivers' fast
/// path for `w`/`z` heads decodes, with heads and payloads at every alignment of their
/// buffer refills.
pub fn dense_spec(max: usize) -> impl Strategy<Value = Spec> {
    (
        prop_oneof![Just(Version::V1), Just(Version::V2)],
        name(),
        proptest::collection::vec((any::<u8>(), 0..3u64, 1..49u64, any::<u8>()), 1..max),
    )
        .prop_map(|(version, to, raw)| {
            let mut pos = 0;
            let mut ops = Vec::new();
            for (kind, gap, len, seed) in raw {
                pos += gap;
                match kind % 16 {
                    15 if version == Version::V2 => ops.push(Op::Unknown {
                        tag: b'X',
                        data: pattern(seed, (len % 5) as usize),
                    }),
                    k if k % 4 == 3 => {
                        ops.push(Op::Zero(Extent::new(pos, len)));
                        pos += len;
                    }
                    _ => {
                        ops.push(Op::Write {
                            offset: pos,
                            data: pattern(seed, len as usize),
                        });
                        pos += len;
                    }
                }
            }
            Spec {
                version,
                meta: Metadata {
                    from_snap: None,
                    to_snap: to,
                    protected: None,
                    image_size: Some(pos + 1),
                },
                ops,
            }
        })
}

/// Any v2 diff.
pub fn spec_v2() -> impl Strategy<Value = Spec> {
    spec().prop_map(|mut s| {
        if s.version == Version::V1 {
            s.version = Version::V2;
        }
        s
    })
}

/// An image stream: header and embedded v2 diffs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    pub header: ImageHeader,
    pub diffs: Vec<Spec>,
}

impl ImageSpec {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_image_header(&self.header, &mut out);
        for d in &self.diffs {
            out.extend(d.encode(WriteOptions::default()));
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<ImageSpec> {
        let img = ImageSlice::parse(bytes).ok()?;
        let mut diffs = Vec::new();
        for d in img.diffs() {
            let d = d.ok()?;
            let start = d.start_offset() as usize;
            diffs.push(Spec::decode(&bytes[start..])?.0);
        }
        Some(ImageSpec {
            header: img.header().clone(),
            diffs,
        })
    }
}

pub fn image_spec() -> impl Strategy<Value = ImageSpec> {
    let kv = proptest::collection::vec(any::<u8>(), 0..12);
    (
        any::<[Option<u64>; 4]>(),
        proptest::collection::vec((kv.clone(), kv), 0..3),
        proptest::collection::vec(spec_v2(), 1..4),
    )
        .prop_map(|(v, meta, diffs)| ImageSpec {
            header: ImageHeader {
                order: v[0],
                features: v[1],
                stripe_unit: v[2],
                stripe_count: v[3],
                meta,
                diff_count: diffs.len() as u64,
            },
            diffs,
        })
}

/// A way to damage an encoded stream.
#[derive(Clone, Debug)]
pub enum Damage {
    Truncate(usize),
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Overwrite 8 bytes with a large little-endian value (lengths and offsets).
    Huge(usize, u64),
}

pub fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Damage::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..20)
        )
            .prop_map(|(i, b)| Damage::Insert(i, b)),
        (any::<usize>(), 1..40usize).prop_map(|(i, n)| Damage::Remove(i, n)),
        (
            any::<usize>(),
            prop_oneof![
                Just(u64::MAX),
                Just(u64::MAX - 7),
                Just(1u64 << 32),
                Just(4097u64),
                any::<u64>()
            ]
        )
            .prop_map(|(i, v)| Damage::Huge(i, v)),
    ]
}

impl Damage {
    pub fn apply(&self, b: &mut Vec<u8>) {
        if b.is_empty() {
            return;
        }
        let at = |i: usize| i % b.len();
        match self {
            Damage::Truncate(i) => {
                let n = at(*i);
                b.truncate(n)
            }
            Damage::Flip(i, x) => {
                let n = at(*i);
                b[n] ^= x
            }
            Damage::Set(i, x) => {
                let n = at(*i);
                b[n] = *x
            }
            Damage::Insert(i, x) => {
                let n = at(*i);
                b.splice(n..n, x.iter().copied());
            }
            Damage::Remove(i, k) => {
                let n = at(*i);
                let e = (n + k).min(b.len());
                b.drain(n..e);
            }
            Damage::Huge(i, v) => {
                let n = at(*i);
                for (j, byte) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = b.get_mut(n + j) {
                        *x = *byte;
                    }
                }
            }
        }
    }
}
