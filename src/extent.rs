//! Ordered map of non-overlapping image extents, each pointing at where its bytes come from.
//!
//! [`ExtentMap::insert`] lets a later extent clip earlier ones (splitting them and moving
//! their source offsets along), which is exactly "apply the diffs in order". Each entry is a
//! `BTreeMap<u64, (u64, u64)>` slot: start, end and a packed [`Piece`], 24 bytes of payload
//! plus B-tree node overhead: about 50 bytes per extent in total (measured by
//! `benches/merge.rs`). Every insert removes each clipped entry at most once, so a build costs
//! O(log n) amortized per insert; appends past the last extent take a fast path.

use std::collections::BTreeMap;

/// Largest source offset a [`Piece::Data`] can hold (inputs up to 256 TiB).
pub const MAX_SRC_OFFSET: u64 = (1 << 48) - 1;
/// Largest input index a [`Piece::Data`] can hold.
pub const MAX_INPUT: u32 = (1 << 16) - 2;

const ZERO: u64 = u64::MAX;

/// Where the bytes of an extent come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Piece {
    /// Payload bytes of input `input`, starting at byte `src_offset` of that input's file.
    Data {
        /// Index of the input.
        input: u32,
        /// Byte offset in the input of the payload byte for the extent's first image byte.
        src_offset: u64,
    },
    /// The extent reads as zeros.
    Zero,
}

impl Piece {
    /// The piece for the part of an extent that starts `by` bytes later.
    pub fn advance(self, by: u64) -> Piece {
        match self {
            Piece::Data { input, src_offset } => Piece::Data {
                input,
                src_offset: src_offset + by,
            },
            Piece::Zero => Piece::Zero,
        }
    }

    fn pack(self) -> u64 {
        match self {
            Piece::Data { input, src_offset } => {
                debug_assert!(input <= MAX_INPUT && src_offset <= MAX_SRC_OFFSET);
                (u64::from(input) << 48) | (src_offset & MAX_SRC_OFFSET)
            }
            Piece::Zero => ZERO,
        }
    }

    fn unpack(v: u64) -> Piece {
        if v == ZERO {
            Piece::Zero
        } else {
            Piece::Data {
                input: (v >> 48) as u32,
                src_offset: v & MAX_SRC_OFFSET,
            }
        }
    }
}

fn advance_packed(v: u64, by: u64) -> u64 {
    if v == ZERO {
        ZERO
    } else {
        v + by
    }
}

/// Ordered, non-overlapping extents `[start, end)` with their [`Piece`].
///
/// Data pieces must satisfy `input <= MAX_INPUT` and `src_offset + len <= MAX_SRC_OFFSET`
/// (callers check their inputs once; the merge refuses larger ones).
#[derive(Clone, Debug, Default)]
pub struct ExtentMap {
    map: BTreeMap<u64, (u64, u64)>,
}

impl ExtentMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no extents.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sets `[start, end)` to `piece`, clipping whatever was there. Empty ranges are ignored.
    pub fn insert(&mut self, start: u64, end: u64, piece: Piece) {
        if start >= end {
            return;
        }
        // Fast path: appending past the last extent (the whole first input, typically).
        let appends = match self.map.last_key_value() {
            None => true,
            Some((_, &(e, _))) => e <= start,
        };
        if appends {
            self.map.insert(start, (end, piece.pack()));
            return;
        }
        // An extent starting before `start` that reaches into the new one.
        if let Some((&s, v)) = self.map.range_mut(..start).next_back() {
            let (e, p) = *v;
            if e > start {
                v.0 = start;
                if e > end {
                    self.map.insert(end, (e, advance_packed(p, end - s)));
                }
            }
        }
        // Extents starting inside the new one.
        while let Some((&s, &(e, p))) = self.map.range(start..end).next() {
            self.map.remove(&s);
            if e > end {
                self.map.insert(end, (e, advance_packed(p, end - s)));
                break;
            }
        }
        self.map.insert(start, (end, piece.pack()));
    }

    /// Drops everything at or beyond `size`.
    pub fn truncate(&mut self, size: u64) {
        drop(self.map.split_off(&size));
        if let Some((_, v)) = self.map.range_mut(..size).next_back() {
            if v.0 > size {
                v.0 = size;
            }
        }
    }

    /// The extents in ascending order: `(start, end, piece)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, Piece)> + '_ {
        self.map
            .iter()
            .map(|(&s, &(e, p))| (s, e, Piece::unpack(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(input: u32, src_offset: u64) -> Piece {
        Piece::Data { input, src_offset }
    }

    fn all(m: &ExtentMap) -> Vec<(u64, u64, Piece)> {
        m.iter().collect()
    }

    #[test]
    fn later_clips_earlier_and_splits() {
        let mut m = ExtentMap::new();
        m.insert(10, 30, data(0, 100));
        m.insert(15, 20, Piece::Zero);
        assert_eq!(
            all(&m),
            [
                (10, 15, data(0, 100)),
                (15, 20, Piece::Zero),
                (20, 30, data(0, 110))
            ]
        );
        m.insert(5, 25, data(1, 7));
        assert_eq!(all(&m), [(5, 25, data(1, 7)), (25, 30, data(0, 115))]);
        m.insert(0, 100, Piece::Zero);
        assert_eq!(all(&m), [(0, 100, Piece::Zero)]);
        m.insert(3, 3, data(2, 0));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn truncate_clips_and_drops() {
        let mut m = ExtentMap::new();
        m.insert(0, 10, data(0, 0));
        m.insert(20, 30, data(0, 50));
        m.insert(40, 50, Piece::Zero);
        m.truncate(25);
        assert_eq!(all(&m), [(0, 10, data(0, 0)), (20, 25, data(0, 50))]);
        m.truncate(20);
        assert_eq!(all(&m), [(0, 10, data(0, 0))]);
        m.truncate(0);
        assert!(m.is_empty());
    }

    #[test]
    fn packing_round_trips_limits() {
        for p in [
            Piece::Zero,
            data(0, 0),
            data(MAX_INPUT, MAX_SRC_OFFSET - 1),
            data(3, 1 << 40),
        ] {
            assert_eq!(Piece::unpack(p.pack()), p);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64, Option<(u32, u64)>),
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u64..200, 1u64..60, proptest::option::of((0u32..4, 0u64..1000)))
                .prop_map(|(s, l, p)| Op::Insert(s, s + l, p)),
            1 => (0u64..260).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        #[test]
        fn matches_byte_model(ops in proptest::collection::vec(op(), 0..60)) {
            let mut m = ExtentMap::new();
            let mut model: Vec<Option<Piece>> = vec![None; 260];
            for o in &ops {
                match *o {
                    Op::Insert(s, e, p) => {
                        let piece = p.map_or(Piece::Zero, |(i, o)| data(i, o));
                        m.insert(s, e, piece);
                        for x in s..e {
                            model[x as usize] = Some(piece.advance(x - s));
                        }
                    }
                    Op::Truncate(n) => {
                        m.truncate(n);
                        for b in model.iter_mut().skip(n as usize) {
                            *b = None;
                        }
                    }
                }
            }
            let mut got: Vec<Option<Piece>> = vec![None; 260];
            let mut prev_end = 0;
            for (s, e, p) in m.iter() {
                prop_assert!(s < e, "empty extent");
                prop_assert!(s >= prev_end, "overlap or disorder");
                prev_end = e;
                for x in s..e {
                    got[x as usize] = Some(p.advance(x - s));
                }
            }
            prop_assert_eq!(got, model);
        }
    }
}
