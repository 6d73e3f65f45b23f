//! One sweep in offset order over stacked layers of extents, later layers winning: the core of
//! the streaming merge ([`crate::merge`]).
//!
//! Each layer yields ascending, non-overlapping extents ([`Layers::next`]); a layer's extents
//! are clipped by every later layer's and cut at the layer's cap (the smallest image size that
//! follows it). The sweep hands out the visible pieces in offset order ([`Layers::emit`]):
//! each one is a maximal run of one extent left uncovered, exactly the entries the extent map
//! of the old planner ([`crate::extent::ExtentMap`], kept as a test oracle) ends with.
//!
//! Only each layer's current extent is held: memory is O(layers), about 56 bytes each, whatever
//! the number of extents; time is O(log layers) per extent. A layer is asked for its next
//! extent only once the sweep has passed the end of its current one, so a layer read from a
//! stream is read forward once, and a piece is emitted only when it is final.

use std::collections::BinaryHeap;

use crate::error::Result;

const NONE: u64 = u64::MAX;

/// An extent `[start, end)` of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ext {
    /// First image byte.
    pub start: u64,
    /// One past the last image byte.
    pub end: u64,
    /// Where the byte at `start` comes from (an offset in the layer's input), or `None` for
    /// zeros.
    pub src: Option<u64>,
}

/// The layers of a sweep: where extents come from and where visible pieces go.
pub trait Layers {
    /// The next extent of `layer` (ascending, not overlapping the one before), or `None` once
    /// the layer is exhausted. Empty extents are ignored. Called until `None` for every layer
    /// (so that a layer can check its whole input), in no particular order across layers.
    ///
    /// # Errors
    /// The layer's input is invalid or unreadable; the sweep stops.
    fn next(&mut self, layer: usize) -> Result<Option<Ext>>;

    /// A visible piece `[start, end)` of the current extent of `layer`, in offset order; `src`
    /// is already moved to `start`.
    ///
    /// # Errors
    /// Passed on; the sweep stops.
    fn emit(&mut self, layer: usize, start: u64, end: u64, src: Option<u64>) -> Result<()>;
}

/// Runs the sweep over `caps.len()` layers, layer `k` cut at `caps[k]`.
///
/// # Errors
/// The first error of [`Layers::next`] or [`Layers::emit`].
pub fn sweep<L: Layers + ?Sized>(l: &mut L, caps: &[u64]) -> Result<()> {
    let n = caps.len();
    let mut cur: Vec<Ext> = vec![
        Ext {
            start: NONE,
            end: NONE,
            src: None
        };
        n
    ];
    // Start of each layer's current extent while it lies ahead of `pos` (else NONE).
    let mut pending = MinTree::new(n);
    // Layers whose current extent started at or before `pos`; the top one is checked to
    // still reach past `pos` before it is used (layers below it may be stale).
    let mut active: BinaryHeap<usize> = BinaryHeap::with_capacity(n);
    let mut pos = 0u64;
    for (k, &cap) in caps.iter().enumerate() {
        load(l, k, cap, pos, &mut cur, &mut pending)?;
    }
    loop {
        loop {
            while pending.min() <= pos {
                let k = pending.argmin();
                pending.set(k, NONE);
                active.push(k);
            }
            match active.peek() {
                Some(&t) if cur[t].end <= pos => {
                    active.pop();
                    load(l, t, caps[t], pos, &mut cur, &mut pending)?;
                }
                _ => break,
            }
        }
        let Some(&t) = active.peek() else {
            match pending.min() {
                NONE => return Ok(()),
                next => pos = next,
            }
            continue;
        };
        let e = cur[t];
        let end = e.end.min(pending.min_from(t + 1));
        l.emit(t, pos, end, e.src.map(|s| s + (pos - e.start)))?;
        pos = end;
    }
}

/// Makes the next extent of layer `k` that is still visible past `pos` (cut at `cap`) its
/// current one; extents that end before are read and dropped.
fn load<L: Layers + ?Sized>(
    l: &mut L,
    k: usize,
    cap: u64,
    pos: u64,
    cur: &mut [Ext],
    pending: &mut MinTree,
) -> Result<()> {
    cur[k].end = NONE;
    while let Some(e) = l.next(k)? {
        let end = e.end.min(cap);
        if end > e.start.max(pos) {
            cur[k] = Ext { end, ..e };
            pending.set(k, e.start);
            return Ok(());
        }
    }
    pending.set(k, NONE);
    Ok(())
}

/// Minimum over layers of a value, with the layer holding it and the minimum of a suffix.
struct MinTree {
    leaves: usize,
    v: Vec<u64>,
}

impl MinTree {
    fn new(n: usize) -> Self {
        let leaves = n.max(1).next_power_of_two();
        MinTree {
            leaves,
            v: vec![NONE; 2 * leaves],
        }
    }

    fn set(&mut self, k: usize, x: u64) {
        let mut i = self.leaves + k;
        self.v[i] = x;
        while i > 1 {
            i /= 2;
            self.v[i] = self.v[2 * i].min(self.v[2 * i + 1]);
        }
    }

    fn min(&self) -> u64 {
        self.v[1]
    }

    /// A layer holding [`MinTree::min`] (meaningful when the minimum is not NONE).
    fn argmin(&self) -> usize {
        let mut i = 1;
        while i < self.leaves {
            i = if self.v[2 * i] == self.v[i] {
                2 * i
            } else {
                2 * i + 1
            };
        }
        i - self.leaves
    }

    /// Minimum over layers `from..`.
    fn min_from(&self, from: usize) -> u64 {
        let (mut lo, mut hi) = (self.leaves + from, 2 * self.leaves);
        let mut m = NONE;
        while lo < hi {
            if lo & 1 == 1 {
                m = m.min(self.v[lo]);
                lo += 1;
            }
            if hi & 1 == 1 {
                hi -= 1;
                m = m.min(self.v[hi]);
            }
            lo /= 2;
            hi /= 2;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extent::{ExtentMap, Piece};
    use proptest::prelude::*;

    /// Layers from vectors; records every call.
    struct Vecs {
        layers: Vec<std::vec::IntoIter<Ext>>,
        out: Vec<(u64, u64, usize, Option<u64>)>,
        exhausted: Vec<bool>,
    }

    impl Layers for Vecs {
        fn next(&mut self, k: usize) -> Result<Option<Ext>> {
            let e = self.layers[k].next();
            self.exhausted[k] = e.is_none();
            Ok(e)
        }
        fn emit(&mut self, k: usize, s: u64, e: u64, src: Option<u64>) -> Result<()> {
            self.out.push((s, e, k, src));
            Ok(())
        }
    }

    /// Ascending, non-overlapping extents from (gap, len, is_zero) triples.
    fn layer() -> impl Strategy<Value = Vec<Ext>> {
        proptest::collection::vec((0u64..40, 0u64..30, any::<bool>()), 0..12).prop_map(|v| {
            let mut at = 0;
            v.into_iter()
                .map(|(gap, len, z)| {
                    let start = at + gap;
                    at = start + len;
                    Ext {
                        start,
                        end: start + len,
                        src: (!z).then_some(start * 7 + 3),
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// The sweep gives exactly the entries of the extent map built by inserting every
        /// layer in order and truncating at its cap.
        #[test]
        fn matches_extent_map(
            layers in proptest::collection::vec((layer(), proptest::option::of(0u64..400)), 0..20)
        ) {
            // Caps as a chain of image sizes gives them: never smaller for a later layer.
            let mut caps: Vec<u64> = layers.iter().map(|(_, c)| c.unwrap_or(NONE)).collect();
            if let Some(last) = caps.last_mut() {
                *last = NONE;
            }
            for k in (0..caps.len().saturating_sub(1)).rev() {
                caps[k] = caps[k].min(caps[k + 1]);
            }
            let mut map = ExtentMap::new();
            for (k, (exts, _)) in layers.iter().enumerate() {
                for e in exts {
                    let p = e.src.map_or(Piece::Zero, |s| Piece::Data { input: k as u32, src_offset: s });
                    map.insert(e.start, e.end, p);
                }
                if caps[k] != NONE {
                    map.truncate(caps[k]);
                }
            }
            let want: Vec<_> = map.iter().map(|(s, e, p)| match p {
                Piece::Zero => (s, e, None),
                Piece::Data { input, src_offset } => (s, e, Some((input as usize, src_offset))),
            }).collect();
            let mut v = Vecs {
                layers: layers.iter().map(|(x, _)| x.clone().into_iter()).collect(),
                out: Vec::new(),
                exhausted: vec![false; layers.len()],
            };
            sweep(&mut v, &caps).unwrap();
            prop_assert!(v.exhausted.iter().all(|&x| x), "every layer read to its end");
            // A zero piece's layer is not compared: the map does not know it.
            let got: Vec<_> = v.out.iter().map(|&(s, e, k, src)| (s, e, src.map(|o| (k, o)))).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn suffix_minimum_and_argmin() {
        let mut t = MinTree::new(5);
        for (k, x) in [9, 4, 7, 4, 8].into_iter().enumerate() {
            t.set(k, x);
        }
        assert_eq!(t.min(), 4);
        assert_eq!(t.argmin(), 1);
        assert_eq!(t.min_from(2), 4);
        assert_eq!(t.min_from(4), 8);
        assert_eq!(t.min_from(5), NONE);
        t.set(1, NONE);
        t.set(3, NONE);
        assert_eq!((t.min(), t.argmin()), (7, 2));
    }
}
