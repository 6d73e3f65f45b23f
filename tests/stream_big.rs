//! A 4 GiB `w` record streams through the stream driver in bounded memory: the payload is
//! generated lazily, read in part, the rest skipped by the driver, and the next record parsed.
//! Alone in its test binary so that the process's peak memory is this test's.

use std::io::{self, Read};

use rbddiff::stream::{ItemKind, RecordSource};
use rbddiff::{DiffReader, Extent};

const GIB: u64 = 1 << 30;
const PAYLOAD: u64 = 4 * GIB;

/// Header, then the payload generated on the fly (byte i of the payload is `i % 251`), then
/// a `z` record and `e`. Nothing is stored.
struct Synthetic {
    head: Vec<u8>,
    tail: Vec<u8>,
    pos: u64,
    /// 261 periods of the payload pattern, copied from instead of computed byte by byte.
    pattern: Vec<u8>,
}

impl Synthetic {
    fn new() -> Self {
        let mut head = b"rbd diff v1\n".to_vec();
        head.push(b's');
        head.extend((8 * GIB).to_le_bytes());
        head.push(b'w');
        head.extend(0u64.to_le_bytes());
        head.extend(PAYLOAD.to_le_bytes());
        let mut tail = vec![b'z'];
        tail.extend((5 * GIB).to_le_bytes());
        tail.extend(4096u64.to_le_bytes());
        tail.push(b'e');
        let pattern = (0..251 * 261).map(|i| (i % 251) as u8).collect();
        Synthetic {
            head,
            tail,
            pos: 0,
            pattern,
        }
    }
    fn len(&self) -> u64 {
        self.head.len() as u64 + PAYLOAD + self.tail.len() as u64
    }
}

impl Read for Synthetic {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let h = self.head.len() as u64;
        let n = if self.pos < h {
            let src = &self.head[self.pos as usize..];
            let n = src.len().min(out.len());
            out[..n].copy_from_slice(&src[..n]);
            n
        } else if self.pos < h + PAYLOAD {
            let p = self.pos - h;
            let src = &self.pattern[(p % 251) as usize..];
            let n = ((h + PAYLOAD - self.pos) as usize)
                .min(out.len())
                .min(src.len());
            out[..n].copy_from_slice(&src[..n]);
            n
        } else {
            let t = (self.pos - h - PAYLOAD) as usize;
            let src = self.tail.get(t..).unwrap_or_default();
            let n = src.len().min(out.len());
            out[..n].copy_from_slice(&src[..n]);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn four_gib_write_record_streams_in_bounded_memory() {
    let src = Synthetic::new();
    let total = src.len();
    let mut r = DiffReader::new(src).unwrap();
    let item = r.next_item().unwrap().unwrap();
    assert_eq!(item.index, 1);
    let ItemKind::Write { extent, mut data } = item.kind else {
        panic!("expected the 'w' record");
    };
    assert_eq!(extent, Extent::new(0, PAYLOAD));
    // Read 1 MiB of it and check the bytes; leave the rest to the driver.
    let mut buf = vec![0u8; 1 << 20];
    data.read_exact(&mut buf).unwrap();
    assert!(buf.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    drop(buf);
    let item = r.next_item().unwrap().unwrap();
    let ItemKind::Zero(z) = item.kind else {
        panic!("expected the 'z' record");
    };
    assert_eq!(z, Extent::new(5 * GIB, 4096));
    assert_eq!(item.offset, total - 18);
    assert!(matches!(
        r.next_item().unwrap().unwrap().kind,
        ItemKind::End
    ));
    assert_eq!(r.position(), total);
    assert!(r.next_item().unwrap().is_none());
    assert!(r.warnings().is_empty());
    if let Some(kib) = peak_rss_kib() {
        // The payload alone is 4 GiB; the driver must not have held more than a few MiB.
        assert!(kib < 256 * 1024, "peak resident memory {kib} KiB");
    }
}
