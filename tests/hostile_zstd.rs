//! zstd inputs built to exhaust memory: small files that decompress to a huge unknown record
//! or to huge trailing bytes, archives that declare frames larger than rbddiff writes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rbddiff::zst::{encode_index, encode_seek_table, index_frame, FrameEntry, ZstArchive};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbddiff"))
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

const MIB: u64 = 1 << 20;

/// A v2 diff head: banner, `t`, `s`.
fn v2_head(size: u64) -> Vec<u8> {
    let mut d = b"rbd diff v2\n".to_vec();
    d.push(b't');
    d.extend_from_slice(&6u64.to_le_bytes());
    d.extend_from_slice(&2u32.to_le_bytes());
    d.extend_from_slice(b"s1");
    d.push(b's');
    d.extend_from_slice(&8u64.to_le_bytes());
    d.extend_from_slice(&size.to_le_bytes());
    d
}

fn v2_write(d: &mut Vec<u8>, off: u64, data: &[u8]) {
    d.push(b'w');
    d.extend_from_slice(&(16 + data.len() as u64).to_le_bytes());
    d.extend_from_slice(&off.to_le_bytes());
    d.extend_from_slice(&(data.len() as u64).to_le_bytes());
    d.extend_from_slice(data);
}

/// Writes `head`, `zeros` zero bytes and `tail` as one zstd stream into `path`, and returns
/// the sha256 of the plain content.
fn zstd_file(path: &Path, head: &[u8], zeros: u64, tail: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut z = zstd::Encoder::new(std::fs::File::create(path).unwrap(), 1).unwrap();
    z.write_all(head).unwrap();
    h.update(head);
    let block = vec![0u8; MIB as usize];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(MIB) as usize;
        z.write_all(&block[..n]).unwrap();
        h.update(&block[..n]);
        left -= n as u64;
    }
    z.write_all(tail).unwrap();
    h.update(tail);
    z.finish().unwrap();
    hex::encode(h.finalize())
}

fn sha256_of_decompressed(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut r = zstd::Decoder::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Runs `cmd` to its end, sampling the peak resident set size (`VmHWM`, KiB) of the child.
fn run_with_peak_rss(cmd: &mut Command) -> (Output, u64) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_path = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak = 0u64;
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    loop {
        if let Ok(st) = std::fs::read_to_string(&status_path) {
            if let Some(kib) = st
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child.wait().unwrap();
    let o = Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    };
    (o, peak)
}

/// A 1.5 GiB unknown v2 record and 1.5 GiB of bytes after `e`, each in a zstd file of a few
/// hundred KiB: `compress` must keep every byte (checked by digest) in memory bounded by its
/// frames in flight, not by the record or the trailing bytes.
#[test]
fn compression_bombs_are_recompressed_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let big = 1536 * MIB;
    let mut unknown = v2_head(4 * MIB);
    v2_write(&mut unknown, 0, &[7u8; 4096]);
    unknown.push(b'X');
    unknown.extend_from_slice(&big.to_le_bytes());
    let mut trailing = v2_head(4 * MIB);
    v2_write(&mut trailing, 0, &[7u8; 4096]);
    trailing.push(b'e');
    let cases: [(&str, Vec<u8>, Vec<u8>); 2] = [
        ("unknown record", unknown, {
            let mut t = Vec::new();
            v2_write(&mut t, 8192, &[9u8; 4096]);
            t.push(b'e');
            t
        }),
        ("bytes after e", trailing, Vec::new()),
    ];
    for (what, head, tail) in cases {
        let bomb = d.join("bomb.zst");
        let want = zstd_file(&bomb, &head, big, &tail);
        let z_len = std::fs::metadata(&bomb).unwrap().len();
        assert!(z_len < 8 * MIB, "{what}: the bomb is small ({z_len} bytes)");
        let out = d.join("out.zst");
        let (o, peak_kib) = run_with_peak_rss(bin().args([
            "compress",
            &s(&bomb),
            "-o",
            &s(&out),
            "--threads",
            "2",
            "--force",
        ]));
        assert!(o.status.success(), "{what}: {o:?}");
        assert_eq!(sha256_of_decompressed(&out), want, "{what}: content kept");
        // 2 threads: 24 frames of at most 8 MiB in flight, plus the frame being cut.
        assert!(
            peak_kib < 512 * 1024,
            "{what}: compress peaked at {} MiB for a {} MiB stream",
            peak_kib / 1024,
            big / MIB
        );
        // The same from stdin (the path `backup` takes through the stream compressor).
        let (o, peak_kib) = run_with_peak_rss(
            bin()
                .args(["compress", "-", "-o", &s(&out), "--threads", "2", "--force"])
                .stdin(std::fs::File::open(&bomb).unwrap()),
        );
        assert!(o.status.success(), "{what} (stdin): {o:?}");
        assert_eq!(sha256_of_decompressed(&out), want, "{what} (stdin)");
        assert!(
            peak_kib < 512 * 1024,
            "{what} (stdin): {} MiB",
            peak_kib / 1024
        );
    }
}

/// rbddiff writes frames of at most twice the 32 MiB largest target; a larger frame target
/// is refused.
#[test]
fn frame_targets_beyond_the_readers_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut plain = v2_head(MIB);
    v2_write(&mut plain, 0, &[1u8; 4096]);
    plain.push(b'e');
    let p = d.join("p.diff");
    std::fs::write(&p, &plain).unwrap();
    let z = d.join("p.zst");
    for (size, ok) in [(32 * MIB, true), (32 * MIB + 1, false), (256 * MIB, false)] {
        let o = bin()
            .args(["compress", &s(&p), "-o", &s(&z), "--force"])
            .args(["--frame-size", &size.to_string()])
            .output()
            .unwrap();
        assert_eq!(o.status.success(), ok, "--frame-size {size}: {o:?}");
        if !ok {
            assert_eq!(o.status.code(), Some(2));
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("32 MiB"),
                "{o:?}"
            );
        }
    }
}

/// An indexed archive whose one frame holds 80 MiB (more than readers decompress whole) is
/// not used for random access: every command reads it as a zstd stream, with the same
/// results as the plain diff.
#[test]
fn an_archive_with_a_frame_too_large_is_read_as_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut plain = v2_head(128 * MIB);
    for k in 0..5u64 {
        let data: Vec<u8> = (0..16 * MIB).map(|i| (i * (k + 3) / 4096) as u8).collect();
        v2_write(&mut plain, k * 20 * MIB, &data);
    }
    plain.push(b'e');
    let p = d.join("p.diff");
    std::fs::write(&p, &plain).unwrap();
    // The index of a normal archive of the same content, relabelled to one frame.
    let normal = d.join("n.zst");
    let o = bin()
        .args(["compress", &s(&p), "-o", &s(&normal)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let nbytes = std::fs::read(&normal).unwrap();
    let mut idx = ZstArchive::open(&nbytes)
        .unwrap()
        .unwrap()
        .decoded_index()
        .unwrap();
    for r in &mut idx.records[0] {
        r.frame = 0;
        r.frame_offset = u32::try_from(r.pos).unwrap();
    }
    let mut c = zstd::bulk::Compressor::new(1).unwrap();
    c.set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))
        .unwrap();
    c.set_parameter(zstd::stream::raw::CParameter::ContentSizeFlag(true))
        .unwrap();
    let frame = c.compress(&plain).unwrap();
    let checksum = u32::from_le_bytes(frame[frame.len() - 4..].try_into().unwrap());
    let mut z = frame.clone();
    z.extend_from_slice(&index_frame(&encode_index(&idx, 1).unwrap()));
    z.extend_from_slice(&encode_seek_table(&[FrameEntry {
        c_offset: 0,
        c_len: frame.len() as u32,
        d_offset: 0,
        d_len: plain.len() as u32,
        checksum,
    }]));
    assert!(ZstArchive::open(&z).unwrap().is_none(), "not random access");
    let big = d.join("big.zst");
    std::fs::write(&big, &z).unwrap();

    let o = bin().args(["verify", &s(&big)]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = d.join("out.diff");
    let o = bin()
        .args(["decompress", &s(&big), "-o", &s(&out)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(
        std::fs::read(&out).unwrap() == plain,
        "decompressed content"
    );
    // The next diff of the chain, s1 -> s2.
    let mut next = b"rbd diff v2\n".to_vec();
    for (t, n) in [(b'f', "s1"), (b't', "s2")] {
        next.push(t);
        next.extend_from_slice(&(4 + n.len() as u64).to_le_bytes());
        next.extend_from_slice(&(n.len() as u32).to_le_bytes());
        next.extend_from_slice(n.as_bytes());
    }
    next.push(b's');
    next.extend_from_slice(&8u64.to_le_bytes());
    next.extend_from_slice(&(128 * MIB).to_le_bytes());
    v2_write(&mut next, 10 * MIB, &[5u8; 8192]);
    next.push(b'e');
    let n = d.join("n.diff");
    std::fs::write(&n, &next).unwrap();
    let (m1, m2) = (d.join("m1.diff"), d.join("m2.diff"));
    for (src, m) in [(&big, &m1), (&p, &m2)] {
        let o = bin()
            .args(["merge", &s(src), &s(&n), "-o", &s(m)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    assert!(std::fs::read(&m1).unwrap() == std::fs::read(&m2).unwrap());
    let j = |f: &Path| {
        let o = bin().args(["inspect", "--json", &s(f)]).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["files"][0]["diffs"].clone()
    };
    let (a, b) = (j(&big), j(&p));
    assert_eq!(a, b);
    assert_eq!(a[0]["writes"], 5);
}

/// A v2 diff `from` → `to` of a 64 MiB image with one write of `len` bytes at 0.
fn v2_diff(from: Option<&str>, to: &str, len: u64) -> Vec<u8> {
    let mut d = b"rbd diff v2\n".to_vec();
    for (t, n) in from.map(|f| (b'f', f)).into_iter().chain([(b't', to)]) {
        d.push(t);
        d.extend_from_slice(&(4 + n.len() as u64).to_le_bytes());
        d.extend_from_slice(&(n.len() as u32).to_le_bytes());
        d.extend_from_slice(n.as_bytes());
    }
    d.push(b's');
    d.extend_from_slice(&8u64.to_le_bytes());
    d.extend_from_slice(&(256 * MIB).to_le_bytes());
    d.push(b'w');
    d.extend_from_slice(&(16 + len).to_le_bytes());
    d.extend_from_slice(&0u64.to_le_bytes());
    d.extend_from_slice(&len.to_le_bytes());
    d
}

/// Plain zstd inputs (no index) are decompressed to `$TMPDIR` for a merge, but only once
/// the chain is known to hold: a broken chain is refused from the headers. `verify` sums
/// them as they decompress, without a temporary file.
#[test]
fn plain_zstd_inputs_are_checked_before_anything_is_spilled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a.zst"), d.join("b.zst"));
    zstd_file(&a, &v2_diff(Some("s0"), "s1", 64 * MIB), 64 * MIB, b"e");
    zstd_file(&b, &v2_diff(Some("s5"), "s6", 64 * MIB), 64 * MIB, b"e");
    // No temporary file can be made here.
    let no_tmp = d.join("not-a-dir");
    std::fs::write(&no_tmp, b"").unwrap();
    let o = bin()
        .args(["merge", &s(&a), &s(&b), "-o", &s(&d.join("m.diff"))])
        .env("TMPDIR", &no_tmp)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        err.contains("chain break") && err.contains("'s1'") && err.contains("'s5'"),
        "{err}"
    );
    assert!(!d.join("m.diff").exists());

    let o = bin()
        .args(["verify", "--write-sums", &s(&a)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = bin()
        .args(["verify", "--require-sums", &s(&a)])
        .env("TMPDIR", &no_tmp)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "verify needs no temporary file: {o:?}"
    );
}

/// Merge reads zstd files without an index as streams, never spilling them: with `$TMPDIR`
/// on a 32 MiB tmpfs, merging a small zstd file that expands to 128 MiB succeeds, gives the
/// same output as with `$TMPDIR` elsewhere, and leaves the tmpfs empty. Needs root (to mount
/// the tmpfs); required under CI.
#[test]
fn merge_streams_zstd_inputs_without_a_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mnt = d.join("tmp");
    let Some(_u) = small_tmpfs(&mnt, "merge_streams_zstd_inputs_without_a_temporary_file") else {
        return;
    };
    let (a, b) = (d.join("a.zst"), d.join("b.zst"));
    zstd_file(&a, &v2_diff(Some("s0"), "s1", 128 * MIB), 128 * MIB, b"e");
    zstd_file(&b, &v2_diff(Some("s1"), "s2", MIB), MIB, b"e");
    let merge_with = |tmp: &Path, out: &Path| {
        let o = bin()
            .args(["merge", &s(&a), &s(&b), "-o", &s(out)])
            .env("TMPDIR", tmp)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        std::fs::read(out).unwrap()
    };
    let got = merge_with(&mnt, &d.join("m.diff"));
    let want = merge_with(d, &d.join("m2.diff"));
    assert!(got.len() as u64 > 128 * MIB);
    assert!(got == want, "merged output depends on $TMPDIR");
    let o = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(&mnt)
        .output()
        .unwrap();
    let avail: u64 = String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        avail > 30 * MIB,
        "the tmpfs is left empty: {avail} bytes free"
    );
}

/// Mounts a 32 MiB tmpfs at `at` (root only; required under CI); `None` when it cannot.
fn small_tmpfs(at: &Path, test: &str) -> Option<impl Drop> {
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    std::fs::create_dir_all(at).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs", &s(at)])
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must mount a tmpfs"
        );
        // On the real stderr: seen even though the test passes.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: cannot mount a tmpfs (not root)"
        );
        return None;
    }
    Some(Unmount(at.to_path_buf()))
}

/// `decompress` onto a full file system names the output in its error, not the input, and
/// leaves no output behind.
#[test]
fn decompress_to_a_full_disk_names_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mnt = d.join("small");
    let Some(_u) = small_tmpfs(&mnt, "decompress_to_a_full_disk_names_the_output") else {
        return;
    };
    let plain = d.join("p.diff");
    let mut v = v2_diff(Some("s0"), "s1", 48 * MIB);
    v.extend((0..48 * MIB).map(|i| (i % 251) as u8));
    v.push(b'e');
    std::fs::write(&plain, &v).unwrap();
    let z = d.join("p.zst");
    for (src, what) in [(plain.clone(), "archive"), (d.join("p.plain.zst"), "zstd")] {
        if what == "archive" {
            let o = bin()
                .args(["compress", &s(&src), "-o", &s(&z), "--force"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
        } else {
            zstd_file(&src, &v, 0, b"");
        }
        let input = if what == "archive" {
            z.clone()
        } else {
            src.clone()
        };
        let out = mnt.join("out.diff");
        let o = bin()
            .args(["decompress", &s(&input), "-o", &s(&out)])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {o:?}");
        assert!(
            err.contains(&*s(&out)) && !err.contains(&*s(&input)),
            "{what}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(&mnt).unwrap().count(),
            0,
            "{what}: nothing left"
        );
    }
}

/// Frames are cached within `CACHE_BYTES` (always the one just read): three frames of
/// 60 MiB leave two cached, where the frame count alone would keep all three.
#[test]
fn the_frame_cache_is_bounded_in_bytes() {
    let mut plain = b"rbd diff v1\ns".to_vec();
    plain.extend_from_slice(&(256 * MIB).to_le_bytes());
    for k in 0..3u64 {
        plain.push(b'w');
        plain.extend_from_slice(&(k * 64 * MIB).to_le_bytes());
        plain.extend_from_slice(&(60 * MIB).to_le_bytes());
        plain.resize(plain.len() + 60 * MIB as usize, k as u8);
    }
    plain.push(b'e');
    let input =
        rbddiff::input::Input::from_reader("-", Box::new(std::io::Cursor::new(plain))).unwrap();
    let opts = rbddiff::compress::CompressOptions {
        level: 1,
        threads: 2,
        frame_target: 32 << 20,
    };
    let mut z = Vec::new();
    rbddiff::compress::compress(input, &mut z, &opts).unwrap();
    let mut a = ZstArchive::open(&z).unwrap().unwrap();
    let n = a.frames().len();
    assert!(n >= 3, "{n} frames");
    for i in 0..n {
        a.frame(i).unwrap();
        let (bytes, frames) = a.cached();
        assert!(
            frames == 1 || bytes <= rbddiff::zst::CACHE_BYTES,
            "{frames} frames, {bytes} bytes cached"
        );
    }
    let (_, frames) = a.cached();
    assert!(frames < n.min(4), "{frames} of {n} frames cached");
}
