//! The hand-made broken files in `testdata/err/`: each yields its documented error (or
//! warning) at the documented byte offset and record through both drivers, and
//! `rbddiff inspect` exits 2 naming the file and offset (0 for warnings).
//!
//! The files and `testdata/err/README.md` are generated from the table below:
//! `cargo test --test errors -- --ignored regenerate_err_files`. Every offset is worked out
//! while the bytes are laid down, never taken from the parser.

mod drivers;

use std::path::PathBuf;
use std::process::Command;

use drivers::{slice_any, stream_any, ErrSig, Outcome, PayloadReads};

/// Lays down a diff (or image stream) byte by byte, remembering where records start.
struct B {
    buf: Vec<u8>,
    v2: bool,
    rec: u64,
}

/// Offset and record index of a record just written.
type At = (u64, u64);

impl B {
    fn v1() -> B {
        B::raw_start(b"rbd diff v1\n", false)
    }
    fn v2() -> B {
        B::raw_start(b"rbd diff v2\n", true)
    }
    fn raw_start(banner: &[u8], v2: bool) -> B {
        B {
            buf: banner.to_vec(),
            v2,
            rec: 0,
        }
    }
    fn pos(&self) -> u64 {
        self.buf.len() as u64
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// Tag (and the v2 length field), counting one record.
    fn head(&mut self, tag: u8, len: u64) -> At {
        let at = (self.pos(), self.rec);
        self.rec += 1;
        self.buf.push(tag);
        if self.v2 {
            self.u64(len);
        }
        at
    }
    fn name(&mut self, tag: u8, n: &[u8]) -> At {
        let at = self.head(tag, 4 + n.len() as u64);
        self.u32(n.len() as u32).bytes(n);
        at
    }
    fn size(&mut self, s: u64) -> At {
        let at = self.head(b's', 8);
        self.u64(s);
        at
    }
    fn w(&mut self, off: u64, data: &[u8]) -> At {
        let at = self.head(b'w', 16 + data.len() as u64);
        self.u64(off).u64(data.len() as u64).bytes(data);
        at
    }
    fn z(&mut self, off: u64, len: u64) -> At {
        let at = self.head(b'z', 16);
        self.u64(off).u64(len);
        at
    }
    fn e(&mut self) -> At {
        let at = (self.pos(), self.rec);
        self.rec += 1;
        self.buf.push(b'e');
        at
    }
}

/// What a file must produce.
#[derive(Clone, Debug)]
enum Expect {
    Error {
        kind: &'static str,
        offset: u64,
        record: Option<u64>,
    },
    Warning {
        kind: &'static str,
        offset: u64,
        record: Option<u64>,
    },
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
    why: &'static str,
}

fn err(name: &'static str, b: &B, kind: &'static str, at: At, why: &'static str) -> Case {
    err_at(name, b.buf.clone(), kind, at.0, Some(at.1), why)
}

fn err_at(
    name: &'static str,
    bytes: Vec<u8>,
    kind: &'static str,
    offset: u64,
    record: Option<u64>,
    why: &'static str,
) -> Case {
    Case {
        name,
        bytes,
        expect: Expect::Error {
            kind,
            offset,
            record,
        },
        why,
    }
}

fn warn(
    name: &'static str,
    b: &B,
    kind: &'static str,
    offset: u64,
    record: Option<u64>,
    why: &'static str,
) -> Case {
    Case {
        name,
        bytes: b.buf.clone(),
        expect: Expect::Warning {
            kind,
            offset,
            record,
        },
        why,
    }
}

const MIB: u64 = 1 << 20;

/// Image stream header: banner, `O`, `E`, diffs banner, count.
fn image_head(count: u64) -> B {
    let mut b = B::raw_start(b"rbd image v2\n", true);
    b.head(b'O', 8);
    b.u64(22);
    b.buf.push(b'E');
    b.bytes(b"rbd image diffs v2\n").u64(count);
    b
}

/// A small valid v2 diff to embed (full, to HEAD).
fn small_v2() -> Vec<u8> {
    let mut d = B::v2();
    d.size(MIB);
    d.w(0, b"data");
    d.e();
    d.buf
}

#[allow(clippy::vec_init_then_push)]
fn cases() -> Vec<Case> {
    let mut c = Vec::new();

    let mut b = B::raw_start(b"rbd diff v3\n", false);
    b.size(MIB);
    b.e();
    c.push(err_at(
        "bad-banner.diff",
        b.buf,
        "BadBanner",
        0,
        None,
        "unknown banner (rbd: invalid or unexpected diff banner)",
    ));

    c.push(err_at(
        "empty.diff",
        Vec::new(),
        "Truncated",
        0,
        None,
        "empty file: the banner is missing",
    ));

    c.push(err_at(
        "truncated-banner.diff",
        b"rbd diff".to_vec(),
        "Truncated",
        0,
        None,
        "file ends inside the 12-byte banner",
    ));

    let mut b = B::v1();
    b.size(MIB);
    let at = b.head(b'w', 0);
    b.u64(4096).bytes(&[0, 0, 0]);
    c.push(err(
        "truncated-head.diff",
        &b,
        "Truncated",
        at,
        "file ends inside the offset/length of a 'w' record",
    ));

    let mut b = B::v1();
    b.size(MIB);
    let at = b.head(b'w', 0);
    b.u64(0).u64(100).bytes(&[0xAB; 10]);
    c.push(err(
        "truncated-w-payload.diff",
        &b,
        "Truncated",
        at,
        "'w' announces 100 payload bytes, 10 follow",
    ));

    let mut b = B::v1();
    b.name(b't', b"snap");
    let at = b.head(b's', 8);
    b.bytes(&[1, 2, 3]);
    c.push(err(
        "truncated-size.diff",
        &b,
        "Truncated",
        at,
        "file ends inside the le64 value of an 's' record",
    ));

    let mut b = B::v1();
    b.size(MIB);
    b.w(0, b"abcd");
    b.z(4096, 4096);
    let at = (b.pos(), b.rec);
    c.push(err(
        "missing-end.diff",
        &b,
        "MissingEnd",
        at,
        "input ends after a complete record, without 'e'",
    ));

    let mut b = B::v1();
    b.size(MIB);
    b.z(0, 512);
    let at = b.head(b'x', 0);
    b.u64(0).u64(512);
    b.e();
    c.push(err(
        "unknown-tag-v1.diff",
        &b,
        "UnknownTag",
        at,
        "v1 has no length fields, so an unknown tag cannot be skipped",
    ));

    let mut b = B::v1();
    let at = b.head(b'p', 0);
    b.buf.push(1);
    b.size(MIB);
    b.e();
    c.push(err(
        "protected-in-v1.diff",
        &b,
        "UnknownTag",
        at,
        "'p' exists only in v2",
    ));

    let mut b = B::v1();
    let at = b.name(b'f', &[b'n'; 4097]);
    b.size(MIB);
    b.e();
    c.push(err(
        "name-too-long.diff",
        &b,
        "NameTooLong",
        at,
        "snapshot name of 4097 bytes; rbd refuses more than 4096",
    ));

    let mut b = B::v2();
    let at = b.head(b't', 4 + 0xFFFF_FFFF);
    b.u32(0xFFFF_FFFF).bytes(b"abc");
    c.push(err(
        "name-length-huge.diff",
        &b,
        "NameTooLong",
        at,
        "name length field 4 GiB - 1 with 3 bytes present: refused before reading or allocating",
    ));

    let mut b = B::v1();
    b.size(u64::MAX);
    let at = b.z(u64::MAX - 100, 200);
    b.e();
    c.push(err(
        "extent-overflow.diff",
        &b,
        "ExtentOverflow",
        at,
        "offset + length does not fit in 64 bits",
    ));

    let mut b = B::v1();
    b.size(MIB);
    let at = b.w(4096, b"");
    b.e();
    c.push(err(
        "zero-length-w.diff",
        &b,
        "ZeroLength",
        at,
        "'w' of length 0 (rbd merge-diff rejects it)",
    ));

    let mut b = B::v1();
    b.size(MIB);
    b.w(0, b"abc");
    let at = b.z(8192, 0);
    b.e();
    c.push(err(
        "zero-length-z.diff",
        &b,
        "ZeroLength",
        at,
        "'z' of length 0 (rbd merge-diff rejects it)",
    ));

    let mut b = B::v1();
    b.size(MIB);
    b.z(8192, 4096);
    let at = b.z(0, 4096);
    b.e();
    c.push(err(
        "out-of-order.diff",
        &b,
        "OutOfOrder",
        at,
        "second record starts before the first (merge-diff needs ascending records)",
    ));

    let mut b = B::v1();
    b.size(MIB);
    b.w(0, b"01234567");
    let at = b.z(4, 8);
    b.e();
    c.push(err(
        "overlap.diff",
        &b,
        "OutOfOrder",
        at,
        "'z' at 4 overlaps the 'w' covering 0..8",
    ));

    let mut b = B::v1();
    b.size(MIB);
    b.z(0, 4096);
    let at = b.name(b't', b"snap");
    b.e();
    c.push(err(
        "metadata-after-data.diff",
        &b,
        "MetadataAfterData",
        at,
        "'t' after a data record (merge-diff accepts only w/z/e there)",
    ));

    let mut b = B::v1();
    b.name(b't', b"snap");
    let at = b.z(0, 4096);
    b.e();
    c.push(err(
        "missing-size.diff",
        &b,
        "MissingSize",
        at,
        "data record before any 's'",
    ));

    let mut b = B::v1();
    b.name(b'f', b"a");
    let at = b.e();
    c.push(err(
        "missing-size-empty.diff",
        &b,
        "MissingSize",
        at,
        "'e' with no 's' record at all",
    ));

    let mut b = B::v1();
    b.size(8192);
    b.z(0, 4096);
    let at = b.w(4096, &[7; 4097]);
    b.e();
    c.push(err(
        "extent-past-size.diff",
        &b,
        "ExtentPastSize",
        at,
        "'w' 4096+4097 ends past the image size 8192",
    ));

    let mut b = B::v2();
    b.size(MIB);
    let at = b.head(b'X', 100);
    b.bytes(&[1; 10]);
    c.push(err(
        "v2-unknown-tag-truncated.diff",
        &b,
        "Truncated",
        at,
        "unknown v2 tag announces 100 body bytes, 10 follow",
    ));

    let mut b = B::v2();
    let at = (b.pos(), b.rec);
    b.bytes(&[b's', 8, 0, 0]);
    c.push(err(
        "v2-truncated-length.diff",
        &b,
        "Truncated",
        at,
        "file ends inside the le64 length field of a v2 record",
    ));

    // Image streams.
    let mut b = B::raw_start(b"rbd image v2\n", true);
    b.head(b'O', 8);
    b.u64(22);
    let at = b.head(b'T', 8);
    b.bytes(&[1, 2, 3]);
    c.push(err(
        "image-truncated-header.rbdimg",
        &b,
        "Truncated",
        at,
        "file ends inside the 'T' record of the image header",
    ));

    let mut b = B::raw_start(b"rbd image v2\n", true);
    b.head(b'O', 8);
    b.u64(22);
    let at = b.head(b'Z', 1000);
    b.bytes(&[0; 20]);
    c.push(err(
        "image-header-unknown-truncated.rbdimg",
        &b,
        "Truncated",
        at,
        "unknown image header tag announces 1000 body bytes, 20 follow",
    ));

    let mut b = B::raw_start(b"rbd image v2\n", true);
    b.buf.push(b'E');
    let pos = b.pos();
    b.bytes(b"rbd image diffs v3\n").u64(1);
    b.bytes(&small_v2());
    c.push(err_at(
        "image-bad-diffs-banner.rbdimg",
        b.buf,
        "BadBanner",
        pos,
        None,
        "'rbd image diffs v2\\n' expected after 'E'",
    ));

    let mut b = image_head(1);
    let pos = b.pos();
    let mut d = B::v1();
    d.size(MIB);
    d.e();
    b.bytes(&d.buf);
    c.push(err_at(
        "image-embedded-v1.rbdimg",
        b.buf,
        "Invalid",
        pos,
        None,
        "an image stream embeds only 'rbd diff v2' diffs",
    ));

    let mut b = image_head(2);
    b.bytes(&small_v2());
    let pos = b.pos();
    c.push(err_at(
        "image-missing-diff.rbdimg",
        b.buf,
        "Truncated",
        pos,
        None,
        "the header announces 2 diffs, the file holds 1",
    ));

    let mut b = image_head(2);
    b.bytes(&small_v2());
    let base = b.pos();
    let mut d = B::v2();
    d.name(b'f', b"s1");
    d.size(MIB);
    let at = d.head(b'w', 16 + 64);
    d.u64(0).u64(64).bytes(&[9; 30]);
    b.bytes(&d.buf);
    c.push(err_at(
        "image-truncated-diff.rbdimg",
        b.buf,
        "Truncated",
        base + at.0,
        Some(at.1),
        "second embedded diff ends inside a 'w' payload (offsets are absolute)",
    ));

    // Warnings: rbd's readers accept these.
    let mut b = B::v1();
    b.size(MIB);
    let at = b.size(2 * MIB);
    b.z(MIB, MIB);
    b.e();
    c.push(warn(
        "duplicate-size.diff",
        &b,
        "DuplicateMetadata",
        at.0,
        Some(at.1),
        "two 's' records; import-diff resizes twice, the later wins",
    ));

    let mut b = B::v1();
    b.size(MIB);
    b.w(0, b"abcd");
    b.e();
    let pos = b.pos();
    b.bytes(b"trailing junk\n");
    c.push(warn(
        "trailing-bytes.diff",
        &b,
        "TrailingBytes",
        pos,
        None,
        "bytes after 'e' are ignored by import-diff and merge-diff",
    ));

    let mut b = B::v2();
    b.size(MIB);
    b.w(0, b"abcd");
    let at = b.head(b'X', 5);
    b.bytes(b"hello");
    b.z(4096, 4096);
    b.e();
    c.push(warn(
        "v2-unknown-tag.diff",
        &b,
        "UnknownTagSkipped",
        at.0,
        Some(at.1),
        "unknown v2 tag: skipped by its length field, as rbd import does",
    ));

    let mut b = B::v2();
    b.size(MIB);
    let at = b.head(b'w', 16);
    b.u64(0).u64(4).bytes(b"abcd");
    b.e();
    c.push(warn(
        "v2-length-mismatch.diff",
        &b,
        "LengthMismatch",
        at.0,
        Some(at.1),
        "'w' length field 16 instead of 20 (sparsecat writes this; Ceph ignores known tags' lengths)",
    ));

    let mut b = B::raw_start(b"rbd image v2\n", true);
    b.head(b'O', 8);
    b.u64(22);
    let at = b.head(b'F', 8);
    b.u64(2);
    b.buf.push(b'E');
    b.bytes(b"rbd image diffs v2\n").u64(1);
    b.bytes(&small_v2());
    c.push(warn(
        "image-unknown-header-tag.rbdimg",
        &b,
        "UnknownTagSkipped",
        at.0,
        Some(at.1),
        "'F' (documented, never written) in the image header: skipped by length",
    ));

    c
}

fn err_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/err")
}

fn readme(cases: &[Case]) -> String {
    let mut s = String::from(
        "# Hand-made broken files\n\n\
         One file per error kind (exit code 2) or warning (exit code 0: rbd's readers accept \
         the file). Generated by `cargo test --test errors -- --ignored regenerate_err_files` \
         from the table in `tests/errors.rs`; `tests/errors.rs` checks that both drivers and \
         `rbddiff inspect` report exactly this. Offsets are byte offsets in the file; record \
         indexes count from 0 after the banner (per embedded diff in an image stream, and per \
         header record in an image header); `-` means the problem is not inside a record.\n\n\
         | file | result | kind | byte offset | record | exit | what |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for c in cases {
        let (res, kind, offset, record, exit) = match &c.expect {
            Expect::Error {
                kind,
                offset,
                record,
            } => ("error", kind, offset, record, 2),
            Expect::Warning {
                kind,
                offset,
                record,
            } => ("warning", kind, offset, record, 0),
        };
        let record = record.map_or("-".to_string(), |r| r.to_string());
        s.push_str(&format!(
            "| `{}` | {res} | `{kind}` | {offset} | {record} | {exit} | {} |\n",
            c.name, c.why
        ));
    }
    s
}

#[test]
#[ignore = "writes testdata/err; run by hand after changing the table"]
fn regenerate_err_files() {
    let dir = err_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let cases = cases();
    for c in &cases {
        std::fs::write(dir.join(c.name), &c.bytes).unwrap();
    }
    std::fs::write(dir.join("README.md"), readme(&cases)).unwrap();
}

#[test]
fn committed_files_match_the_table() {
    let cases = cases();
    let dir = err_dir();
    for c in &cases {
        let got = std::fs::read(dir.join(c.name)).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(got, c.bytes, "{} is stale: regenerate", c.name);
    }
    let got = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert_eq!(got, readme(&cases), "README.md is stale: regenerate");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "README.md")
        .collect();
    names.sort();
    let mut want: Vec<_> = cases.iter().map(|c| c.name.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "files in testdata/err without a table row");
}

fn both(c: &Case) -> Vec<(String, Outcome)> {
    let mut v = vec![("slice".to_string(), slice_any(&c.bytes, PayloadReads::All))];
    for (seed, max) in [(1, 1), (2, 7), (3, 4096), (4, 1 << 20)] {
        v.push((
            format!("stream(seed {seed}, reads <= {max})"),
            stream_any(&c.bytes, PayloadReads::All, seed, max),
        ));
        v.push((
            format!("stream(seed {seed}, partial payloads)"),
            stream_any(&c.bytes, PayloadReads::Prefix(seed), seed, max),
        ));
    }
    v
}

#[test]
fn every_file_gives_its_error_or_warning_in_both_drivers() {
    for c in cases() {
        for (driver, out) in both(&c) {
            let ctx = format!("{} via {driver}: {out:?}", c.name);
            match c.expect {
                Expect::Error {
                    kind,
                    offset,
                    record,
                } => {
                    let e = out
                        .error
                        .as_ref()
                        .unwrap_or_else(|| panic!("no error: {ctx}"));
                    assert_eq!(e.variant, kind, "{ctx}");
                    assert_eq!(e.offset, Some(offset), "{ctx}");
                    assert_eq!(e.record, record, "{ctx}");
                }
                Expect::Warning {
                    kind,
                    offset,
                    record,
                } => {
                    assert_eq!(out.error, None, "{ctx}");
                    let found = out.warnings.iter().any(|w| {
                        format!("{:?}", w.kind).starts_with(kind)
                            && w.offset == offset
                            && w.record == record
                    });
                    assert!(found, "warning {kind} at {offset} missing: {ctx}");
                }
            }
        }
    }
}

#[test]
fn drivers_agree_on_every_file() {
    for c in cases() {
        let mut runs = both(&c).into_iter();
        let (_, first) = runs.next().unwrap();
        for (driver, out) in runs {
            let strip = |o: &Outcome| {
                let mut o = o.clone();
                o.events.iter_mut().for_each(|e| {
                    if let drivers::Ev::Write { data, .. } = e {
                        data.clear()
                    }
                });
                o
            };
            if driver.contains("partial") {
                assert_eq!(strip(&out), strip(&first), "{} via {driver}", c.name);
            } else {
                assert_eq!(out, first, "{} via {driver}", c.name);
            }
        }
    }
}

fn inspect(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .arg("inspect")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn inspect_exit_codes_and_messages() {
    for c in cases() {
        let path = err_dir().join(c.name);
        let out = inspect(&path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ctx = format!("{}: stdout {stdout} stderr {stderr}", c.name);
        match c.expect {
            Expect::Error { offset, .. } => {
                assert_eq!(out.status.code(), Some(2), "{ctx}");
                let line = stderr
                    .lines()
                    .find(|l| l.starts_with("rbddiff: "))
                    .unwrap_or_else(|| panic!("no error line: {ctx}"));
                assert!(line.contains(&path.display().to_string()), "{ctx}");
                assert!(line.contains(&format!("byte {offset}")), "{ctx}");
            }
            Expect::Warning { offset, .. } => {
                assert_eq!(out.status.code(), Some(0), "{ctx}");
                assert!(stdout.contains(&format!("warning: byte {offset}")), "{ctx}");
            }
        }
    }
}

/// The same through stdin, which goes through the stream driver.
#[test]
fn inspect_stdin_exit_codes() {
    use std::io::Write;
    for c in cases() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
            .args(["inspect", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // The reader may stop early on an error; a closed pipe is fine then.
        let _ = stdin.write_all(&c.bytes);
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match c.expect {
            Expect::Error { offset, .. } => {
                assert_eq!(out.status.code(), Some(2), "{}: {stderr}", c.name);
                assert!(
                    stderr.contains(&format!("-: byte {offset}")),
                    "{}: {stderr}",
                    c.name
                );
            }
            Expect::Warning { .. } => {
                assert_eq!(out.status.code(), Some(0), "{}: {stderr}", c.name)
            }
        }
    }
}

#[test]
fn errors_carry_the_file_name() {
    let path = err_dir().join("overlap.diff");
    let bytes = std::fs::read(&path).unwrap();
    let e = rbddiff::DiffSlice::parse(&bytes)
        .unwrap()
        .end_offset()
        .unwrap_err()
        .with_file(&path);
    let sig = ErrSig::of(&e);
    assert_eq!(sig.variant, "OutOfOrder");
    assert!(e
        .to_string()
        .starts_with(&format!("{}: byte ", path.display())));
}

// Bounded warnings and metadata: a hostile file of millions of tolerated oddities keeps
// at most MAX_WARNINGS of them, counts the rest exactly, and keeps a bounded amount of
// image-meta.

use rbddiff::error::MAX_WARNINGS;
use rbddiff::{DiffReader, DiffSlice, ImageSlice, RecordSource, WarningKind};

/// A v1 diff of `n` `s` records (so `n - 1` duplicates), `e`, then 3 trailing bytes.
fn many_sizes(n: u64) -> Vec<u8> {
    let mut b = B::v1();
    for _ in 0..n {
        b.size(MIB);
    }
    b.e();
    b.bytes(b"xyz");
    b.buf
}

/// Walks `src` to its end; returns (kept warnings, more).
fn walk_warnings(src: &mut dyn RecordSource) -> (Vec<rbddiff::Warning>, u64) {
    while src.next_item().unwrap().is_some() {}
    (src.warnings().to_vec(), src.more_warnings())
}

#[test]
fn duplicate_metadata_warnings_are_capped_and_counted_exactly() {
    let n = 2_000_000u64;
    let bytes = many_sizes(n);
    let d = DiffSlice::parse(&bytes).unwrap();
    assert_eq!(d.warnings().len(), MAX_WARNINGS);
    assert_eq!(d.more_warnings(), n - 1 - MAX_WARNINGS as u64);
    // The first ones are kept, in order.
    assert_eq!(d.warnings()[0].record, Some(1));
    assert_eq!(
        d.warnings()[MAX_WARNINGS - 1].record,
        Some(MAX_WARNINGS as u64)
    );
    // The last value wins, and the trailing-bytes warning is kept beyond the cap.
    assert_eq!(d.metadata().image_size, Some(MIB));
    for (name, (w, more)) in [
        ("slice", walk_warnings(&mut d.records())),
        (
            "stream",
            walk_warnings(&mut DiffReader::new(&bytes[..]).unwrap()),
        ),
    ] {
        assert_eq!(w.len(), MAX_WARNINGS + 1, "{name}");
        assert_eq!(more, n - 1 - MAX_WARNINGS as u64, "{name}");
        assert!(
            matches!(
                w.last().unwrap().kind,
                WarningKind::TrailingBytes { len: 3 }
            ),
            "{name}"
        );
    }
}

#[test]
fn unknown_tag_warnings_are_capped_and_reported_by_inspect_and_verify() {
    let n = 2_000_000u64;
    let mut b = B::v2();
    b.size(MIB);
    for _ in 0..n {
        b.head(b'X', 0);
    }
    b.e();
    let bytes = b.buf;
    let more = n - MAX_WARNINGS as u64;
    let r = rbddiff::inspect::inspect_bytes("t", &bytes, false);
    let d = &r.diffs[0];
    assert_eq!((d.unknown, d.warnings.len()), (n, MAX_WARNINGS));
    assert_eq!(d.more_warnings, more);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["diffs"][0]["more_warnings"], more);
    let mut text = Vec::new();
    rbddiff::inspect::render_text(&r, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.matches("warning: ").count(), MAX_WARNINGS + 1);
    assert!(
        text.contains(&format!("and {more} more warnings")),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("unknown.diff");
    std::fs::write(&p, &bytes).unwrap();
    let rep = rbddiff::verify::verify(
        &[p.to_string_lossy().into_owned()],
        &rbddiff::verify::VerifyOptions::default(),
    )
    .unwrap();
    assert!(rep.ok());
    assert_eq!(rep.findings.len(), MAX_WARNINGS + 1);
    let last = rep.findings.last().unwrap();
    assert!(last.message.contains(&format!("and {more} more")), "{last}");
}

#[test]
fn image_meta_pairs_are_bounded_and_the_later_value_wins() {
    use rbddiff::format::{MAX_META_KEPT, MAX_META_LEN};
    let mut b = B::raw_start(b"rbd image v2\n", true);
    let big = vec![b'v'; MAX_META_LEN as usize];
    let pair = |b: &mut B, k: &[u8], v: &[u8]| {
        b.head(b'M', 8 + k.len() as u64 + v.len() as u64);
        b.u32(k.len() as u32).bytes(k).u32(v.len() as u32).bytes(v);
    };
    pair(&mut b, b"conf_a", b"old");
    let n = 400u64;
    for i in 0..n {
        pair(&mut b, format!("key{i:03}").as_bytes(), &big);
    }
    pair(&mut b, b"conf_a", b"new");
    b.buf.push(b'E');
    b.bytes(b"rbd image diffs v2\n").u64(0);
    let img = ImageSlice::parse(&b.buf).unwrap();
    let meta = &img.header().meta;
    let kept: usize = meta.iter().map(|(k, v)| k.len() + v.len() + 64).sum();
    assert!(kept <= MAX_META_KEPT, "{kept}");
    assert_eq!(meta[0], (b"conf_a".to_vec(), b"new".to_vec()));
    let big_kept = meta.len() as u64 - 1;
    assert!(big_kept > 0 && big_kept < n);
    let dropped = n - big_kept;
    let w: Vec<_> = img.warnings().iter().map(|w| w.kind.clone()).collect();
    assert_eq!(
        w,
        vec![WarningKind::MetaNotKept {
            pairs: dropped,
            bytes: dropped * (6 + big.len() as u64)
        }]
    );
    let rd = rbddiff::ImageReader::new(&b.buf[..]).unwrap();
    assert_eq!(rd.header(), img.header());
    assert_eq!(rd.warnings(), img.warnings());
}
