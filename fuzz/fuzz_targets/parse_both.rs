//! Arbitrary bytes through both drivers (diff or image stream): no panic, and the slice
//! driver over the bytes and the stream driver over fuzz-chosen short reads report the
//! same records, payload bytes, errors, byte offsets and warnings.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use rbddiff::stream::{ItemKind, RecordSource};
use rbddiff::{DiffReader, DiffSlice, Error, ImageReader, ImageSlice};

/// Everything a walk reported, as comparable text.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    events: Vec<String>,
    warnings: Vec<String>,
    error: Option<String>,
}

fn sig(e: &Error) -> String {
    format!(
        "{:?} at {:?} record {:?}",
        e.kind().to_string(),
        e.offset(),
        e.record()
    )
}

/// Reads whole payloads or, when `partial`, only their first `(len % 7) * 3` bytes.
fn walk(src: &mut dyn RecordSource, partial: bool, out: &mut Outcome) {
    out.events.push(format!(
        "header {:?} {:?} {:?}",
        src.version(),
        src.metadata(),
        src.metadata_records()
    ));
    loop {
        let item = match src.next_item() {
            Ok(Some(i)) => i,
            Ok(None) => break,
            Err(e) => {
                out.error = Some(sig(&e));
                break;
            }
        };
        let head = format!("{} {}", item.offset, item.index);
        let index = item.index;
        let ev = match item.kind {
            ItemKind::Write { extent, mut data } => {
                let want = if partial {
                    (extent.len % 7) * 3
                } else {
                    extent.len
                };
                let mut buf = Vec::new();
                // Payloads are capped by the input size, so reading them whole is bounded.
                if let Err(e) = (&mut data).take(want).read_to_end(&mut buf) {
                    out.error = Some(sig(&Error::from(e)));
                    break;
                }
                format!("{head} w {extent:?} {buf:?}")
            }
            ItemKind::Zero(e) => format!("{head} z {e:?}"),
            ItemKind::Unknown { tag, len } => format!("{head} ? {tag} {len}"),
            ItemKind::End => format!("{head} e {}", src.position()),
            _ => format!("{head} other"),
        };
        let _ = index;
        out.events.push(ev);
    }
    out.warnings
        .extend(src.warnings().iter().map(|w| w.to_string()));
}

/// Drops the last event when the error is about that same record (the slice driver fails
/// at the record, the stream driver while its payload is read or skipped).
fn settle(out: &mut Outcome, index_of_last: Option<u64>) {
    if let (Some(e), Some(i)) = (&out.error, index_of_last) {
        if e.ends_with(&format!("record Some({i})")) {
            out.events.pop();
        }
    }
}

fn last_index(out: &Outcome) -> Option<u64> {
    let last = out.events.last()?;
    if last.starts_with("header") {
        return None;
    }
    last.split(' ').nth(1)?.parse().ok()
}

fn diff_slice(data: &[u8], partial: bool) -> Outcome {
    let mut out = Outcome::default();
    match DiffSlice::parse(data) {
        Err(e) => out.error = Some(sig(&e)),
        Ok(d) => walk(&mut d.records(), partial, &mut out),
    }
    let i = last_index(&out);
    settle(&mut out, i);
    out
}

fn diff_stream(r: impl Read, partial: bool) -> Outcome {
    let mut out = Outcome::default();
    match DiffReader::new(r) {
        Err(e) => out.error = Some(sig(&e)),
        Ok(mut d) => walk(&mut d, partial, &mut out),
    }
    let i = last_index(&out);
    settle(&mut out, i);
    out
}

fn image_slice(data: &[u8], partial: bool) -> Outcome {
    let mut out = Outcome::default();
    let img = match ImageSlice::parse(data) {
        Ok(i) => i,
        Err(e) => {
            out.error = Some(sig(&e));
            return out;
        }
    };
    out.events.push(format!("image {:?}", img.header()));
    out.warnings
        .extend(img.warnings().iter().map(|w| w.to_string()));
    for d in img.diffs() {
        match d {
            Ok(d) => {
                walk(&mut d.records(), partial, &mut out);
                assert!(
                    out.error.is_none(),
                    "an embedded diff failed on the second walk"
                );
            }
            Err(e) => {
                out.error = Some(sig(&e));
                break;
            }
        }
    }
    out
}

fn image_stream(r: impl Read, partial: bool) -> Outcome {
    match ImageReader::new(r) {
        Ok(img) => image_walk(img, partial),
        Err(e) => Outcome {
            error: Some(sig(&e)),
            ..Default::default()
        },
    }
}

fn image_walk<R: Read>(mut img: ImageReader<R>, partial: bool) -> Outcome {
    let mut out = Outcome::default();
    out.events.push(format!("image {:?}", img.header()));
    out.warnings
        .extend(img.warnings().iter().map(|w| w.to_string()));
    loop {
        match img.next_diff() {
            Ok(None) => break,
            Err(e) => {
                out.error = Some(sig(&e));
                break;
            }
            Ok(Some(d)) => {
                let (ev, w) = (out.events.len(), out.warnings.len());
                walk(d, partial, &mut out);
                if out.error.is_some() {
                    // The slice driver reports a failing embedded diff by its error only.
                    out.events.truncate(ev);
                    out.warnings.truncate(w);
                    break;
                }
            }
        }
    }
    out
}

/// Returns the input in reads whose sizes cycle through `sizes` (each 1..=256).
struct Chunked<'a> {
    all: &'a [u8],
    data: &'a [u8],
    sizes: &'a [u8],
    n: usize,
}

impl io::Seek for Chunked<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let io::SeekFrom::Start(p) = to else {
            panic!("absolute seeks only");
        };
        let p = usize::try_from(p).unwrap_or(usize::MAX).min(self.all.len());
        self.data = &self.all[p..];
        Ok(p as u64)
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let want = match self.sizes.get(self.n % self.sizes.len().max(1)) {
            Some(&s) => usize::from(s) + 1,
            None => 4096,
        };
        self.n += 1;
        let k = want.min(out.len()).min(self.data.len());
        out[..k].copy_from_slice(&self.data[..k]);
        self.data = &self.data[k..];
        Ok(k)
    }
}

fuzz_target!(|input: &[u8]| {
    // Layout: flags, number of read sizes, the read sizes, then the stream itself.
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, data) = rest.split_at(n);
    let partial = flags & 1 != 0;
    // Optionally prefix a banner so that the fuzzer reaches the records quickly.
    let mut owned;
    let data: &[u8] = match (flags >> 1) % 4 {
        1 => {
            owned = b"rbd diff v1\n".to_vec();
            owned.extend_from_slice(data);
            &owned
        }
        2 => {
            owned = b"rbd diff v2\n".to_vec();
            owned.extend_from_slice(data);
            &owned
        }
        3 => {
            owned = b"rbd image v2\n".to_vec();
            owned.extend_from_slice(data);
            &owned
        }
        _ => data,
    };
    let reader = || Chunked {
        all: data,
        data,
        sizes,
        n: 0,
    };
    let len = data.len() as u64;
    let (a, b, c) = if data.starts_with(rbddiff::format::IMAGE_BANNER) {
        let c = match ImageReader::seekable(reader(), len) {
            Ok(img) => image_walk(img, partial),
            Err(e) => Outcome {
                error: Some(sig(&e)),
                ..Default::default()
            },
        };
        (
            image_slice(data, partial),
            image_stream(reader(), partial),
            c,
        )
    } else {
        let mut c = Outcome::default();
        match DiffReader::seekable(reader(), len) {
            Err(e) => c.error = Some(sig(&e)),
            Ok(mut d) => walk(&mut d, partial, &mut c),
        }
        let i = last_index(&c);
        settle(&mut c, i);
        (diff_slice(data, partial), diff_stream(reader(), partial), c)
    };
    assert_eq!(a, b);
    assert_eq!(a, c);
    // inspect never panics either, mapped or streamed.
    let r1 = rbddiff::inspect::inspect_bytes("f", data, true);
    let kind = rbddiff::input::sniff(data);
    let r2 = rbddiff::inspect::inspect_reader("f", kind, data, true);
    assert_eq!(r1, r2);
});
