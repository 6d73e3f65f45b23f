//! `rbddiff apply` onto real block devices (loop devices): real Ceph chains against ground
//! truth, random chains against the model, a device that is too small, zeroing (with
//! `fallocate` and with the write-zeros fallback), and refused options.
//!
//! Needs root (`losetup`); each test prints a note and passes when no loop device can be set
//! up. A device larger than the image is compared on its first `size` bytes.

mod common;
use common::gen::path_str as s;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::manifest::{chains, diff_file, sha256_hex};
use common::model::Image;
use rand::{Rng, SeedableRng};
use rbddiff::apply::{apply_chain, read_state, Applier, ApplyOptions, TargetState};
use rbddiff::{DiffSlice, DiffWriter, Extent, Metadata, Version};

const MIB: u64 = 1 << 20;

/// A loop device over a sparse backing file; detached on drop (also when a test panics).
struct Loop {
    dev: PathBuf,
    dir: tempfile::TempDir,
}

impl Loop {
    /// A `size`-byte loop device, or `None` (with a note) when `losetup` is unavailable.
    fn new(size: u64) -> Option<Loop> {
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        File::create(&backing).unwrap().set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&backing)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
                Some(Loop {
                    dev: PathBuf::from(dev),
                    dir,
                })
            }
            Ok(o) => {
                common::skipped(&format!(
                    "losetup failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                common::skipped(&format!("no losetup: {e}"));
                None
            }
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn opts(&self) -> ApplyOptions {
        ApplyOptions {
            state_file: Some(self.state()),
            ..ApplyOptions::default()
        }
    }

    /// Fills the whole device with `byte`, so that zeroing is observable.
    fn fill(&self, byte: u8) {
        let mut f = OpenOptions::new().write(true).open(&self.dev).unwrap();
        let size = self.size();
        let buf = vec![byte; MIB as usize];
        let mut done = 0;
        while done < size {
            let n = (size - done).min(MIB) as usize;
            f.write_all(&buf[..n]).unwrap();
            done += n as u64;
        }
        f.sync_all().unwrap();
    }

    fn size(&self) -> u64 {
        use std::io::Seek;
        File::open(&self.dev)
            .unwrap()
            .seek(std::io::SeekFrom::End(0))
            .unwrap()
    }

    /// The first `n` bytes of the device.
    fn head(&self, n: u64) -> Vec<u8> {
        let mut v = vec![0u8; n as usize];
        File::open(&self.dev).unwrap().read_exact(&mut v).unwrap();
        v
    }

    fn apply_cli(&self, files: &[&Path]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_rbddiff"))
            .arg("apply")
            .args(files)
            .arg("--to")
            .arg(&self.dev)
            .arg("--state-file")
            .arg(self.state())
            .output()
            .unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Every real chain, diff by diff through the CLI onto a device full of 0xff, gives the
/// ground truth in the first `size` bytes after every step (shrinks and regrows included);
/// then the whole chain in one command onto a refilled device.
#[test]
fn real_chains_on_a_loop_device_match_ground_truth() {
    let Some(lo) = Loop::new(32 * MIB) else {
        return;
    };
    let mut steps = 0;
    for c in chains() {
        for chain in [&c.v1, &c.v2, &c.whole_object] {
            if chain.is_empty() {
                continue;
            }
            lo.fill(0xff);
            let _ = fs::remove_file(lo.state());
            // img4m's chain starts at v1: restore img64k's full diff first (same data).
            if chain[0].from.is_some() {
                let full = diff_file("img64k/full_v1.diff");
                let out = lo.apply_cli(&[&full.path]);
                assert!(out.status.success(), "{out:?}");
            }
            for d in chain {
                let out = lo.apply_cli(&[&d.path]);
                assert!(
                    out.status.success(),
                    "{}: {}",
                    d.rel,
                    String::from_utf8_lossy(&out.stderr)
                );
                let t = d.expected();
                assert_eq!(sha256_hex(&lo.head(t.size)), t.sha256, "after {}", d.rel);
                let st = read_state(&lo.state()).unwrap().unwrap();
                assert_eq!(
                    st,
                    TargetState::At {
                        snap: d.to.clone(),
                        size: Some(t.size)
                    }
                );
                steps += 1;
            }
            if chain[0].from.is_none() {
                lo.fill(0xff);
                let _ = fs::remove_file(lo.state());
                let files: Vec<&Path> = chain.iter().map(|d| d.path.as_path()).collect();
                let out = lo.apply_cli(&files);
                assert!(out.status.success(), "{out:?}");
                let t = chain.last().unwrap().expected();
                assert_eq!(sha256_hex(&lo.head(t.size)), t.sha256, "{}", chain[0].rel);
            }
        }
    }
    assert!(steps >= 15, "only {steps} steps");
}

/// A random diff with resizes, zero records, all-zero and mixed payloads, unaligned extents.
fn gen_diff(rng: &mut impl Rng, from: Option<&str>, to: &str, size: u64) -> Vec<u8> {
    let meta = Metadata {
        from_snap: from.map(|f| f.as_bytes().to_vec()),
        to_snap: Some(to.as_bytes().to_vec()),
        image_size: Some(size),
        ..Metadata::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    let mut pos = 0u64;
    while pos < size {
        pos += rng.gen_range(0..size / 4 + 1);
        if pos >= size {
            break;
        }
        let len = rng.gen_range(1..=(size - pos).min(size / 3 + 1));
        if rng.gen_bool(0.35) {
            w.zero(Extent::new(pos, len)).unwrap();
        } else {
            let data: Vec<u8> = match rng.gen_range(0..3) {
                0 => vec![0; len as usize],
                1 => (0..len)
                    .map(|i| if (i / 4096) % 2 == 0 { 0 } else { rng.gen() })
                    .collect(),
                _ => (0..len).map(|_| rng.gen()).collect(),
            };
            w.write_data(pos, &data).unwrap();
        }
        pos += len;
    }
    w.finish().unwrap()
}

/// Random chains (sizes up and down, never beyond the device) against the model, both
/// as one command and diff by diff, on a device full of 0xff.
#[test]
fn random_chains_on_a_loop_device_match_the_model() {
    let dev_size = 4 * MIB;
    let Some(lo) = Loop::new(dev_size) else {
        return;
    };
    for seed in 0..12u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let n = rng.gen_range(1..5);
        let mut files = Vec::new();
        let mut model = Image::new();
        for i in 0..n {
            let size = rng.gen_range(1..=dev_size);
            let from = (i > 0).then(|| format!("s{}", i - 1));
            let d = gen_diff(&mut rng, from.as_deref(), &format!("s{i}"), size);
            model.apply_bytes(&d);
            let p = dir.path().join(format!("d{i}"));
            fs::write(&p, &d).unwrap();
            files.push(s(&p));
        }
        lo.fill(0xff);
        let _ = fs::remove_file(lo.state());
        if seed % 2 == 0 {
            apply_chain(&files, &lo.dev, &lo.opts()).unwrap();
        } else {
            for f in &files {
                apply_chain(std::slice::from_ref(f), &lo.dev, &lo.opts()).unwrap();
            }
        }
        let size = model.data.len() as u64;
        assert!(
            lo.head(size) == model.data,
            "seed {seed}: device differs from the model"
        );
    }
}

/// An `s` record larger than the device: exit 2, a clear message, device and state untouched.
#[test]
fn image_larger_than_the_device_is_refused_untouched() {
    let Some(lo) = Loop::new(MIB) else {
        return;
    };
    lo.fill(0xa5);
    let dir = tempfile::tempdir().unwrap();
    let meta = Metadata {
        to_snap: Some(b"s".to_vec()),
        image_size: Some(2 * MIB),
        ..Metadata::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    w.write_data(0, &[1u8; 4096]).unwrap();
    let d = dir.path().join("big.diff");
    fs::write(&d, w.finish().unwrap()).unwrap();
    let out = lo.apply_cli(&[&d]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("block device is 1048576 bytes") && err.contains("2097152"),
        "{err}"
    );
    assert!(
        lo.head(MIB).iter().all(|&b| b == 0xa5),
        "device was modified"
    );
    assert!(!lo.state().exists(), "state file written");
}

/// `z` records, all-zero payload blocks and unaligned zero ranges zero the device, with
/// `fallocate(ZERO_RANGE)` and with the write-zeros fallback alike.
#[test]
fn zeroing_paths_produce_zeros_on_the_device() {
    let Some(lo) = Loop::new(4 * MIB) else {
        return;
    };
    let size = 3 * MIB + 1234;
    let meta = Metadata {
        from_snap: Some(b"a".to_vec()),
        to_snap: Some(b"b".to_vec()),
        image_size: Some(size),
        ..Metadata::default()
    };
    let mut w = DiffWriter::new(Vec::new(), Version::V1, &meta).unwrap();
    w.zero(Extent::new(1000, 5000)).unwrap(); // unaligned both ends
    w.write_data(8192, &[7u8; 100]).unwrap();
    w.zero(Extent::new(MIB, MIB)).unwrap(); // aligned
    let mut mixed = vec![9u8; 64 << 10];
    mixed[4096..40960].fill(0); // all-zero 4 KiB blocks inside a payload
    w.write_data(2 * MIB + 512, &mixed).unwrap();
    w.zero(Extent::new(3 * MIB, 1234)).unwrap(); // the image's unaligned tail
    let diff = w.finish().unwrap();

    for fallocate in [true, false] {
        lo.fill(0xff);
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&lo.dev)
            .unwrap();
        let mut ap = Applier::new(&dev).unwrap();
        assert!(ap.is_block_device());
        ap.set_fallocate(fallocate);
        ap.set_image_size(Some(size)); // no growth: only the records act
        let d = DiffSlice::parse(&diff).unwrap();
        ap.apply_source(&mut d.records()).unwrap();
        ap.sync().unwrap();
        drop(dev);

        let mut want = vec![0xffu8; lo.size() as usize];
        want[1000..6000].fill(0);
        want[8192..8292].fill(7);
        want[MIB as usize..2 * MIB as usize].fill(0);
        let at = (2 * MIB + 512) as usize;
        want[at..at + mixed.len()].copy_from_slice(&mixed);
        want[3 * MIB as usize..size as usize].fill(0);
        let got = lo.head(lo.size());
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first, None, "fallocate={fallocate}: first difference");
    }
}

/// `--create` on a device and a device without `--state-file` are refused, device untouched.
#[test]
fn create_and_missing_state_file_are_refused() {
    let Some(lo) = Loop::new(MIB) else {
        return;
    };
    lo.fill(0x5a);
    let full = diff_file("img64k/full_v1.diff");
    let out = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(["apply", &s(&full.path), "--create", "--to", &s(&lo.dev)])
        .arg("--state-file")
        .arg(lo.state())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--create") && err.contains("block device"),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_rbddiff"))
        .args(["apply", &s(&full.path), "--to", &s(&lo.dev)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--state-file"), "{err}");
    assert!(lo.head(MIB).iter().all(|&b| b == 0x5a));
    assert!(!lo.state().exists());
}

/// kill -9 at random points of an apply onto a device, then the same command again until it
/// succeeds: the device holds the image exactly and the state file says "at" the last
/// snapshot (the resume logic shared with files, here with device writes and zeroing).
#[test]
fn kill_at_random_points_then_resume_on_a_device() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let Some(lo) = Loop::new(64 * MIB) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let a = gen_diff(&mut rng, None, "a", 48 * MIB);
    let b = gen_diff(&mut rng, Some("a"), "b", 40 * MIB);
    let mut model = Image::new();
    model.apply_bytes(&a);
    model.apply_bytes(&b);
    let files: Vec<PathBuf> = [("a.diff", &a), ("b.diff", &b)]
        .iter()
        .map(|(name, d)| {
            let p = dir.path().join(name);
            fs::write(&p, d).unwrap();
            p
        })
        .collect();
    let run = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbddiff"));
        c.arg("apply")
            .args(&files)
            .arg("--to")
            .arg(&lo.dev)
            .arg("--state-file")
            .arg(lo.state())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    // Uninterrupted runs (the faster of two), to spread the kills over the first three
    // quarters of one.
    let mut span = u64::MAX;
    for _ in 0..2 {
        lo.fill(0xff);
        let _ = fs::remove_file(lo.state());
        let t0 = Instant::now();
        let out = run().output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        span = span.min(t0.elapsed().as_micros() as u64 * 3 / 4);
        assert!(lo.head(40 * MIB) == model.data);
    }
    let span = span.max(1000);

    let mut interrupted = 0;
    for round in 0..6 {
        lo.fill(0xff);
        let _ = fs::remove_file(lo.state());
        let mut child = run().spawn().unwrap();
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..span)));
        let _ = child.kill(); // SIGKILL
        if !child.wait().unwrap().success() {
            interrupted += 1;
        }
        let out = run().output().unwrap();
        assert!(
            out.status.success(),
            "round {round}: re-run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            lo.head(40 * MIB) == model.data,
            "round {round}: device differs from the model"
        );
        assert_eq!(
            read_state(&lo.state()).unwrap().unwrap(),
            TargetState::At {
                snap: Some("b".into()),
                size: Some(40 * MIB)
            },
            "round {round}"
        );
    }
    assert!(interrupted > 0, "no run was actually interrupted");
}
