//! The cheap replica check: do two diffs between the same two snapshots describe the same
//! change?
//!
//! The diff sent to the destination and the destination's own `rbd export-diff` between the
//! same snapshots need not hold the same records: `rbd import-diff` cuts each `w` into
//! `--sparse-size` chunks and issues the all-zero ones as write-zeroes, so zeros written as
//! data come back as `z` (or not at all where the destination's objects were already
//! unallocated); the destination's object size and object map decide how extents are cut
//! and joined; a discard of a range that holds no data on the destination is no change
//! there. What must agree is the content: over the union of the two diffs' ranges every byte
//! is the same, a `z` reading as zeros. A range only one diff lists must read as zeros there
//! (the other side says "unchanged", and the only unchanged content that side can have been
//! made equal to without listing it is a range already zero). A range one side changes to
//! zeros over data the other side left unchanged is not told apart from that: `--verify full`
//! compares every byte.
//!
//! Both diffs are read once, side by side, in offset order (the parser refuses records out
//! of order); memory is one buffer per side.

use std::io::Read;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::stream::{DiffReader, ItemKind, RecordSource};

/// What [`compare`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Bytes both diffs list, compared.
    pub bytes_compared: u64,
    /// Bytes only the first (sent) diff lists (zeros).
    pub only_sent: u64,
    /// Bytes only the second (destination) diff lists (zeros).
    pub only_replica: u64,
    /// Bytes that differ.
    pub bytes_differing: u64,
    /// The first differing offset in the image.
    pub first_difference: Option<u64>,
    /// Header fields that differ (start, end snapshot, image size), described.
    pub header_differences: Vec<String>,
}

impl Comparison {
    /// True when both diffs describe the same change.
    pub fn same(&self) -> bool {
        self.bytes_differing == 0 && self.header_differences.is_empty()
    }

    fn differ(&mut self, at: u64, n: u64) {
        self.bytes_differing += n;
        self.first_difference.get_or_insert(at);
    }
}

const CHUNK: usize = 256 << 10;

/// One diff being read: its current data record, what is left of it.
struct Side<R: Read> {
    rd: DiffReader<R>,
    /// The unread part of the current record: `(start, end, data)`, `data` false for `z`.
    cur: Option<(u64, u64, bool)>,
    what: &'static str,
}

impl<R: Read> Side<R> {
    fn new(src: R, what: &'static str) -> Result<Self> {
        let mut s = Side {
            rd: DiffReader::new(src).map_err(|e| e.with_file(what))?,
            cur: None,
            what,
        };
        s.advance()?;
        Ok(s)
    }

    fn advance(&mut self) -> Result<()> {
        self.cur = None;
        loop {
            let item = self.rd.next_item().map_err(|e| e.with_file(self.what))?;
            match item.map(|i| i.kind) {
                None | Some(ItemKind::End) => return Ok(()),
                Some(ItemKind::Write { extent, .. }) => {
                    self.cur = Some((extent.offset, extent.offset + extent.len, true));
                    return Ok(());
                }
                Some(ItemKind::Zero(extent)) => {
                    self.cur = Some((extent.offset, extent.offset + extent.len, false));
                    return Ok(());
                }
                Some(_) => {}
            }
        }
    }

    fn start(&self) -> u64 {
        self.cur.map_or(u64::MAX, |c| c.0)
    }

    fn end(&self) -> u64 {
        self.cur.map_or(u64::MAX, |c| c.1)
    }

    /// Reads the next `buf.len()` bytes of the current record (zeros for `z`) and moves on.
    fn take(&mut self, buf: &mut [u8]) -> Result<()> {
        let Some((start, end, data)) = self.cur else {
            return Err(Error::invalid("internal: read past the last record"));
        };
        if data {
            self.rd
                .payload()
                .read_exact(buf)
                .map_err(|e| Error::from(e).with_file(self.what))?;
        } else {
            buf.fill(0);
        }
        let start = start + buf.len() as u64;
        if start >= end {
            self.advance()
        } else {
            self.cur = Some((start, end, data));
            Ok(())
        }
    }
}

/// Compares the diff `sent` with the diff `replica` (see the module docs): both are read to
/// their end.
///
/// # Errors
/// Either is not a valid diff (the error names which), or a read fails.
pub fn compare(sent: impl Read, replica: impl Read) -> Result<Comparison> {
    let mut a = Side::new(sent, "the diff sent")?;
    let mut b = Side::new(replica, "the replica's export-diff")?;
    let mut c = Comparison::default();
    let (ma, mb) = (a.rd.metadata().clone(), b.rd.metadata().clone());
    let name = |m: &crate::Metadata, from: bool| {
        let s = if from { &m.from_snap } else { &m.to_snap };
        s.as_ref()
            .map(|_| if from { m.from_name() } else { m.to_name() })
    };
    for (field, from) in [("start snapshot", true), ("end snapshot", false)] {
        let (x, y) = (name(&ma, from), name(&mb, from));
        if x != y {
            c.header_differences.push(format!(
                "{field}: {} sent, {} on the replica",
                show(x.as_deref()),
                show(y.as_deref())
            ));
        }
    }
    if ma.image_size != mb.image_size {
        c.header_differences.push(format!(
            "image size: {:?} sent, {:?} on the replica",
            ma.image_size, mb.image_size
        ));
    }
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    loop {
        let pos = a.start().min(b.start());
        if pos == u64::MAX {
            break;
        }
        let (ina, inb) = (a.start() == pos, b.start() == pos);
        let limit = match (ina, inb) {
            (true, true) => a.end().min(b.end()),
            (true, false) => a.end().min(b.start()),
            _ => b.end().min(a.start()),
        };
        let n = (limit - pos).min(CHUNK as u64) as usize;
        match (ina, inb) {
            (true, true) => {
                a.take(&mut x[..n])?;
                b.take(&mut y[..n])?;
                c.bytes_compared += n as u64;
                if x[..n] != y[..n] {
                    let i = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q);
                    let diff = x[..n].iter().zip(&y[..n]).filter(|(p, q)| p != q).count();
                    c.differ(pos + i.unwrap_or(0) as u64, diff as u64);
                }
            }
            (true, false) => {
                a.take(&mut x[..n])?;
                c.only_sent += n as u64;
                nonzero(&x[..n], pos, &mut c);
            }
            _ => {
                b.take(&mut y[..n])?;
                c.only_replica += n as u64;
                nonzero(&y[..n], pos, &mut c);
            }
        }
    }
    Ok(c)
}

fn nonzero(buf: &[u8], pos: u64, c: &mut Comparison) {
    if let Some(i) = buf.iter().position(|&b| b != 0) {
        let n = buf.iter().filter(|&&b| b != 0).count();
        c.differ(pos + i as u64, n as u64);
    }
}

fn show(s: Option<&str>) -> String {
    s.map_or_else(|| "none".to_string(), |s| format!("'{s}'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::DiffWriter;
    use crate::{Extent, Metadata, Version};

    enum R {
        W(u64, Vec<u8>),
        Z(u64, u64),
    }

    fn diff(from: Option<&str>, to: &str, size: u64, recs: &[R]) -> Vec<u8> {
        let meta = Metadata {
            from_snap: from.map(|f| f.as_bytes().to_vec()),
            to_snap: Some(to.as_bytes().to_vec()),
            protected: None,
            image_size: Some(size),
        };
        let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
        for r in recs {
            match r {
                R::W(o, d) => w.write_data(*o, d).unwrap(),
                R::Z(o, l) => w.zero(Extent::new(*o, *l)).unwrap(),
            }
        }
        w.finish().unwrap()
    }

    #[test]
    fn zeros_written_as_data_equal_a_zero_record() {
        let a = diff(
            Some("a"),
            "b",
            1 << 20,
            &[R::W(0, vec![0; 8192]), R::W(8192, vec![5; 10])],
        );
        let b = diff(
            Some("a"),
            "b",
            1 << 20,
            &[R::Z(0, 4096), R::W(8192, vec![5; 10])],
        );
        let c = compare(&a[..], &b[..]).unwrap();
        assert!(c.same(), "{c:?}");
        assert_eq!(c.bytes_compared, 4096 + 10);
        assert_eq!(c.only_sent, 4096);
    }

    #[test]
    fn records_cut_differently_compare_by_content() {
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8 + 1).collect();
        let a = diff(None, "s", 1 << 20, &[R::W(100, data.clone())]);
        let b = diff(
            None,
            "s",
            1 << 20,
            &[
                R::W(100, data[..7000].to_vec()),
                R::W(7100, data[7000..].to_vec()),
            ],
        );
        assert!(compare(&a[..], &b[..]).unwrap().same());
    }

    #[test]
    fn a_changed_byte_is_found() {
        let a = diff(None, "s", 1 << 20, &[R::W(100, vec![1; 1000])]);
        let mut d = vec![1; 1000];
        d[500] = 2;
        let b = diff(None, "s", 1 << 20, &[R::W(100, d)]);
        let c = compare(&a[..], &b[..]).unwrap();
        assert!(!c.same());
        assert_eq!(c.first_difference, Some(600));
        assert_eq!(c.bytes_differing, 1);
    }

    #[test]
    fn data_on_one_side_only_differs() {
        let a = diff(None, "s", 1 << 20, &[R::W(0, vec![1; 10])]);
        let b = diff(
            None,
            "s",
            1 << 20,
            &[R::W(0, vec![1; 10]), R::W(4096, vec![3; 4])],
        );
        let c = compare(&a[..], &b[..]).unwrap();
        assert_eq!(c.first_difference, Some(4096));
        assert_eq!(c.only_replica, 4);
        let c = compare(&b[..], &a[..]).unwrap();
        assert_eq!(c.only_sent, 4);
        assert!(!c.same());
    }

    #[test]
    fn headers_are_compared() {
        let a = diff(Some("a"), "b", 1 << 20, &[]);
        let b = diff(Some("a"), "c", 2 << 20, &[]);
        let c = compare(&a[..], &b[..]).unwrap();
        assert_eq!(c.header_differences.len(), 2, "{c:?}");
    }

    #[test]
    fn a_bad_diff_is_an_error_naming_the_side() {
        let a = diff(None, "s", 1 << 20, &[]);
        let e = compare(&a[..], &b"rbd diff v1\nx"[..]).unwrap_err();
        assert!(e.to_string().contains("replica"), "{e}");
    }
}
