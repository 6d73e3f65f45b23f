//! Arbitrary bytes as a compressed archive, the way every command meets one: opened through
//! its seek table and record index (inspect, merge), records and payloads read through the
//! index, byte ranges copied, and the same bytes streamed through the zstd reader and the
//! stream parser (apply, verify). Nothing may panic or allocate by an unchecked length.
//! The first byte chooses the mode; mode 1 also feeds the rest, with a valid checksum
//! appended, to the record-index decoder (for an archive of four 1 MiB frames), whose result
//! must survive re-encoding.
#![no_main]

use std::io::{Cursor, Read};

use libfuzzer_sys::fuzz_target;
use rbddiff::input::Input;
use rbddiff::zst::{decode_index, encode_index, FrameEntry, ZstArchive};
use rbddiff::{DiffReader, ItemKind, RecordSource};

/// Reads at most 1 MiB of a payload (lengths come from the input).
fn drain(r: &mut dyn Read) {
    let mut buf = [0u8; 4096];
    let mut left = 1usize << 20;
    while left > 0 {
        match r.read(&mut buf[..left.min(4096)]) {
            Ok(0) | Err(_) => break,
            Ok(n) => left -= n,
        }
    }
}

fn walk(src: &mut dyn RecordSource) {
    for _ in 0..10_000 {
        match src.next_item() {
            Ok(Some(item)) => {
                if let ItemKind::Write { mut data, .. } = item.kind {
                    drain(&mut data);
                }
            }
            _ => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == 1 {
        let mut body = rest.to_vec();
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let frames: Vec<FrameEntry> = (0..4u64)
            .map(|i| FrameEntry {
                c_offset: 0,
                c_len: 1,
                d_offset: i << 20,
                d_len: 1 << 20,
                checksum: 0,
            })
            .collect();
        if let Ok(idx) = decode_index(&body, &frames) {
            // A version 3 index re-encodes to itself; an older one whose records are in frame
            // order re-encodes and decodes (its offsets in frames then follow from positions).
            match encode_index(&idx, frames.len()) {
                Ok(b) => {
                    let again = decode_index(&b, &frames);
                    if body.starts_with(b"RBDZIDX3") {
                        assert_eq!(again.expect("re-encoded index decodes"), idx);
                    }
                }
                Err(_) => assert!(!body.starts_with(b"RBDZIDX3")),
            }
        }
        return;
    }
    if let Ok(Some(mut a)) = ZstArchive::open(rest) {
        let len = a.len();
        for i in 0..a.index().diffs.len().min(16) {
            if let Some(mut src) = a.diff_source(i) {
                walk(&mut src);
            }
        }
        let _ = a.copy_range(0, len.min(1 << 20), &mut std::io::sink());
        let _ = a.copy_range(len / 2, 1 << 16, &mut std::io::sink());
    }
    if let Ok(input) = Input::from_reader("fuzz", Box::new(Cursor::new(rest.to_vec()))) {
        if let Ok(mut d) = DiffReader::new(input.into_reader()) {
            walk(&mut d);
        }
    }
});

